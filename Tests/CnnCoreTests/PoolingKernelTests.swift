import XCTest
import CnnCore

/// The pooling kernels (vectorised interiors, planes split over threads) against the plain
/// loops they replace, bit for bit: values, argmax and gradients, on shapes whose rows reach
/// the 8-window vector blocks, with padding on every edge, ties, −∞ and NaN.
final class PoolingKernelTests: XCTestCase {
    struct Shape {
        var planes: Int, h: Int, w: Int, kh: Int, kw: Int, sh: Int, sw: Int, ph: Int, pw: Int
        var oh: Int { (h + 2 * ph - kh) / sh + 1 }
        var ow: Int { (w + 2 * pw - kw) / sw + 1 }
    }

    /// The general loops: max (first maximum in row-major order, a NaN wins and stays), then
    /// dx[argmax] += dy in output order.
    func referenceMax(_ x: [Float], _ s: Shape) -> ([Float], [Int32]) {
        var y = [Float](repeating: 0, count: s.planes * s.oh * s.ow), a = [Int32](repeating: 0, count: y.count)
        for p in 0..<s.planes {
            for i in 0..<s.oh {
                let h0 = i * s.sh - s.ph, hs = max(h0, 0), he = min(h0 + s.kh, s.h)
                for j in 0..<s.ow {
                    let w0 = j * s.sw - s.pw, ws = max(w0, 0), we = min(w0 + s.kw, s.w)
                    var best = -Float.infinity, at = hs * s.w + ws
                    for r in hs..<he {
                        for c in ws..<we {
                            let v = x[p * s.h * s.w + r * s.w + c]
                            if (v > best) != v.isNaN { best = v; at = r * s.w + c }
                        }
                    }
                    y[(p * s.oh + i) * s.ow + j] = best
                    a[(p * s.oh + i) * s.ow + j] = Int32(at)
                }
            }
        }
        return (y, a)
    }

    func referenceAvg(_ x: [Float], _ s: Shape) -> [Float] {
        var y = [Float](repeating: 0, count: s.planes * s.oh * s.ow)
        let scale = 1 / Float(s.kh * s.kw)
        for p in 0..<s.planes {
            for i in 0..<s.oh {
                let h0 = i * s.sh - s.ph, hs = max(h0, 0), he = min(h0 + s.kh, s.h)
                for j in 0..<s.ow {
                    let w0 = j * s.sw - s.pw, ws = max(w0, 0), we = min(w0 + s.kw, s.w)
                    var acc: Float = 0
                    for r in hs..<he { for c in ws..<we { acc += x[p * s.h * s.w + r * s.w + c] } }
                    y[(p * s.oh + i) * s.ow + j] = acc * scale
                }
            }
        }
        return y
    }

    func referenceAvgBackward(_ dy: [Float], _ s: Shape) -> [Float] {
        var dx = [Float](repeating: 0, count: s.planes * s.h * s.w)
        let scale = 1 / Float(s.kh * s.kw)
        for p in 0..<s.planes {
            for i in 0..<s.oh {
                let h0 = i * s.sh - s.ph, hs = max(h0, 0), he = min(h0 + s.kh, s.h)
                for j in 0..<s.ow {
                    let w0 = j * s.sw - s.pw, ws = max(w0, 0), we = min(w0 + s.kw, s.w)
                    let g = dy[(p * s.oh + i) * s.ow + j] * scale
                    for r in hs..<he { for c in ws..<we { dx[p * s.h * s.w + r * s.w + c] += g } }
                }
            }
        }
        return dx
    }

    /// Inputs with few distinct values (ties), and with `special` some −∞, NaN and −0.
    func input(_ count: Int, seed: UInt64, special: Bool) -> [Float] {
        var rng = SplitMix64(seed: seed)
        return (0..<count).map { _ in
            let u = rng.nextUnitFloat()
            if special && u < 0.04 { return -.infinity }
            if special && u < 0.06 { return .nan }
            if special && u < 0.08 { return -0.0 }
            return Float(Int(u * 7)) - 3 + (u > 0.5 ? 0.25 : 0)
        }
    }

    func same(_ a: [Float], _ b: [Float]) -> Bool { a.map(\.bitPattern) == b.map(\.bitPattern) }

    let shapes: [Shape] = [
        Shape(planes: 3, h: 17, w: 29, kh: 3, kw: 3, sh: 2, sw: 2, ph: 1, pw: 1),   // ResNet's stem pool
        Shape(planes: 2, h: 16, w: 32, kh: 3, kw: 3, sh: 2, sw: 2, ph: 1, pw: 1),   // even sizes
        Shape(planes: 3, h: 9, w: 21, kh: 3, kw: 3, sh: 1, sw: 1, ph: 1, pw: 1),    // GoogLeNet's branch pool
        Shape(planes: 2, h: 7, w: 19, kh: 2, kw: 2, sh: 2, sw: 2, ph: 0, pw: 0),    // DenseNet's transition, odd sizes
        Shape(planes: 2, h: 8, w: 40, kh: 2, kw: 3, sh: 1, sw: 2, ph: 1, pw: 1),    // rectangular window
        Shape(planes: 2, h: 6, w: 30, kh: 3, kw: 2, sh: 3, sw: 1, ph: 1, pw: 1),
        Shape(planes: 2, h: 5, w: 25, kh: 5, kw: 5, sh: 2, sw: 2, ph: 2, pw: 2),
        Shape(planes: 2, h: 6, w: 24, kh: 3, kw: 1, sh: 2, sw: 2, ph: 1, pw: 0),    // kw = 1 at stride 2: scalar
        Shape(planes: 2, h: 5, w: 9, kh: 3, kw: 3, sh: 2, sw: 2, ph: 1, pw: 1),     // fewer than 8 interior windows
        Shape(planes: 40, h: 12, w: 20, kh: 3, kw: 3, sh: 2, sw: 2, ph: 1, pw: 1),  // enough work to split planes
        Shape(planes: 3, h: 32, w: 32, kh: 2, kw: 2, sh: 2, sw: 2, ph: 0, pw: 0),   // minivgg's pools: 2x2/2 backward
        Shape(planes: 2, h: 6, w: 7, kh: 2, kw: 2, sh: 2, sw: 2, ph: 0, pw: 0),     // short rows, odd width
        Shape(planes: 2, h: 17, w: 16, kh: 2, kw: 2, sh: 2, sw: 2, ph: 0, pw: 0),   // one 8-window block, odd height
        Shape(planes: 64, h: 32, w: 33, kh: 2, kw: 2, sh: 2, sw: 2, ph: 0, pw: 0),  // 2x2/2 split over threads
    ]

    func testMaxPoolMatchesTheLoopsBitForBit() {
        for (n, s) in shapes.enumerated() {
            for special in [false, true] {
                for threads in [1, 2] {
                    let previous = ComputeThreads.count
                    ComputeThreads.count = threads
                    defer { ComputeThreads.count = previous }
                    let x = input(s.planes * s.h * s.w, seed: UInt64(n * 2 + (special ? 1 : 0)), special: special)
                    let (yRef, aRef) = referenceMax(x, s)
                    var y = [Float](repeating: 7, count: yRef.count), a = [Int32](repeating: -1, count: yRef.count)
                    maxPoolForward(x: x, y: &y, argmax: &a, planes: s.planes, h: s.h, w: s.w, oh: s.oh, ow: s.ow,
                                   kh: s.kh, kw: s.kw, sh: s.sh, sw: s.sw, ph: s.ph, pw: s.pw)
                    XCTAssertTrue(same(y, yRef), "values \(s) special \(special) threads \(threads)")
                    XCTAssertEqual(a, aRef, "argmax \(s) special \(special) threads \(threads)")

                    // dx of the reference: each dy added at its window's argmax.
                    func scattered(_ dy: [Float]) -> [Float] {
                        var dx = [Float](repeating: 0, count: x.count)
                        for p in 0..<s.planes {
                            for o in 0..<(s.oh * s.ow) { dx[p * s.h * s.w + Int(aRef[p * s.oh * s.ow + o])] += dy[p * s.oh * s.ow + o] }
                        }
                        return dx
                    }
                    let dy = input(yRef.count, seed: UInt64(100 + n), special: false)
                    let dxRef = scattered(dy)
                    var dx = [Float](repeating: .nan, count: x.count)
                    maxPoolBackward(dy: dy, argmax: a, dx: &dx, planes: s.planes, h: s.h, w: s.w, oh: s.oh, ow: s.ow)
                    XCTAssertTrue(same(dx, dxRef), "gradient \(s) threads \(threads)")

                    // Unpadded 2x2/2: the pass without zeroing, with −0 and NaN gradients too (0 + dy at the argmax).
                    guard s.kh == 2, s.kw == 2, s.sh == 2, s.sw == 2, s.ph == 0, s.pw == 0 else { continue }
                    var dy2 = dy
                    for o in stride(from: 0, to: dy2.count, by: 7) { dy2[o] = -0.0 }
                    for o in stride(from: 3, to: dy2.count, by: 29) { dy2[o] = .nan }
                    let dx2Ref = scattered(dy2)
                    var dx2 = [Float](repeating: .nan, count: x.count)
                    maxPool2x2Stride2Backward(dy: dy2, argmax: a, dx: &dx2, planes: s.planes, h: s.h, w: s.w, oh: s.oh, ow: s.ow)
                    XCTAssertTrue(same(dx2, dx2Ref), "2x2/2 gradient \(s) special \(special) threads \(threads)")
                    var dxGeneral = [Float](repeating: .nan, count: x.count)
                    maxPoolBackward(dy: dy2, argmax: a, dx: &dxGeneral, planes: s.planes, h: s.h, w: s.w, oh: s.oh, ow: s.ow)
                    XCTAssertTrue(same(dx2, dxGeneral), "2x2/2 against the general pass \(s) special \(special) threads \(threads)")
                }
            }
        }
    }

    func testAvgPoolMatchesTheLoopsBitForBit() {
        for (n, s) in shapes.enumerated() {
            for threads in [1, 2] {
                let previous = ComputeThreads.count
                ComputeThreads.count = threads
                defer { ComputeThreads.count = previous }
                var rng = SplitMix64(seed: UInt64(200 + n))
                let x = (0..<(s.planes * s.h * s.w)).map { _ in rng.nextUnitFloat() * 2 - 1 }
                var y = [Float](repeating: .nan, count: s.planes * s.oh * s.ow)
                avgPoolForward(x: x, y: &y, planes: s.planes, h: s.h, w: s.w, oh: s.oh, ow: s.ow,
                               kh: s.kh, kw: s.kw, sh: s.sh, sw: s.sw, ph: s.ph, pw: s.pw)
                XCTAssertTrue(same(y, referenceAvg(x, s)), "values \(s) threads \(threads)")
                // Gradients with −0 entries: the loops write 0 + (−0) = +0.
                var dy = (0..<y.count).map { _ in rng.nextUnitFloat() * 2 - 1 }
                for i in stride(from: 0, to: dy.count, by: 5) { dy[i] = -0.0 }
                var dx = [Float](repeating: .nan, count: x.count)
                avgPoolBackward(dy: dy, dx: &dx, planes: s.planes, h: s.h, w: s.w, oh: s.oh, ow: s.ow,
                                kh: s.kh, kw: s.kw, sh: s.sh, sw: s.sw, ph: s.ph, pw: s.pw)
                XCTAssertTrue(same(dx, referenceAvgBackward(dy, s)), "gradient \(s) threads \(threads)")
            }
        }
    }
}
