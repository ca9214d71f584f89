// Shapes: x is (P, H, W) with P = N·C planes, y is (P, OH, OW); windows are
// KH×KW with strides SH, SW and zero/-inf padding PH, PW; floor-mode output
// OH = (H + 2·PH − KH) / SH + 1 (likewise OW).

/// Max over each window (padded cells count as −∞); argmax[o] is the flat
/// index h·W + w of the winner within its plane (the first one on ties).
public func maxPoolForward(x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, argmax: UnsafeMutablePointer<Int32>,
                           planes: Int, h: Int, w: Int, oh: Int, ow: Int,
                           kh: Int, kw: Int, sh: Int, sw: Int, ph: Int, pw: Int) {
    if ph == 0 && pw == 0 && kh == 2 && kw == 2 {
        maxPool2x2(x: x, y: y, argmax: argmax, planes: planes, h: h, w: w, oh: oh, ow: ow, sh: sh, sw: sw)
        return
    }
    for p in 0..<planes {
        let xp = x + p * h * w
        let yp = y + p * oh * ow
        let ap = argmax + p * oh * ow
        for i in 0..<oh {
            let h0 = i * sh - ph
            let hs = max(h0, 0), he = min(h0 + kh, h)
            for j in 0..<ow {
                let w0 = j * sw - pw
                let ws = max(w0, 0), we = min(w0 + kw, w)
                var best = -Float.infinity, at = hs * w + ws
                for r in hs..<he {
                    for c in ws..<we {
                        // Branch-free select; a NaN wins (and then stays), as in PyTorch.
                        // `>` and isNaN are never both true, so != is their exclusive or.
                        let v = xp[r * w + c]
                        let take = (v > best) != v.isNaN
                        best = take ? v : best
                        at = take ? r * w + c : at
                    }
                }
                yp[i * ow + j] = best
                ap[i * ow + j] = Int32(truncatingIfNeeded: at)
            }
        }
    }
}

/// The common unpadded 2×2 window: same results (values and argmax) as the general loop.
@inline(__always)
func maxPool2x2(x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, argmax: UnsafeMutablePointer<Int32>,
                planes: Int, h: Int, w: Int, oh: Int, ow: Int, sh: Int, sw: Int) {
    @inline(__always) func pick(_ best: inout Float, _ at: inout Int32, _ v: Float, _ idx: Int32) {
        let take = (v > best) != v.isNaN
        best = take ? v : best
        at = take ? idx : at
    }
    for p in 0..<planes {
        let xp = x + p * h * w
        let yp = y + p * oh * ow
        let ap = argmax + p * oh * ow
        for i in 0..<oh {
            let r0 = i * sh * w
            if sw == 2 && ow >= 8 {
                maxPool2x2Stride2Row(xp + r0, w: w, ow: ow, y: yp + i * ow, argmax: ap + i * ow,
                                     rowStart: r0, windows: Windows8.self)
                continue
            }
            if sw == 2 && ow >= 4 {
                maxPool2x2Stride2Row(xp + r0, w: w, ow: ow, y: yp + i * ow, argmax: ap + i * ow,
                                     rowStart: r0, windows: Windows4.self)
                continue
            }
            if sw == 2 {
                maxPool2x2Stride2ShortRow(xp, rowStart: r0, w: w, ow: ow, y: yp + i * ow, argmax: ap + i * ow)
                continue
            }
            for j in 0..<ow {
                let i0 = r0 + j * sw
                var best = xp[i0], at = Int32(truncatingIfNeeded: i0)
                pick(&best, &at, xp[i0 + 1], Int32(truncatingIfNeeded: i0 + 1))
                pick(&best, &at, xp[i0 + w], Int32(truncatingIfNeeded: i0 + w))
                pick(&best, &at, xp[i0 + w + 1], Int32(truncatingIfNeeded: i0 + w + 1))
                yp[i * ow + j] = best
                ap[i * ow + j] = at
            }
        }
    }
}

/// A block of `count` adjacent 2×2 stride-2 windows, reduced with concrete SIMD types: generic
/// code over `SIMD` would get the stdlib's element-by-element fallbacks of `.>`, `&+`, ….
///
/// Each row pair is reduced first (left, then right), then top against bottom; taking the
/// bottom only when strictly larger (or NaN) keeps the first maximum in row-major order and
/// the last NaN, as the general loop does.
protocol MaxPoolWindows {
    /// 2·count consecutive inputs of one input row.
    associatedtype Row
    associatedtype Values
    associatedtype Indices
    static var count: Int { get }
    /// Max and argmax of the windows whose top-left cells are at topLeft, topLeft + 2, ….
    static func maxOfWindows(top: Row, bottom: Row, topLeft: Int32, w: Int32) -> (Values, Indices)
}

enum Windows8: MaxPoolWindows {
    static var count: Int { 8 }
    @inline(__always)
    static func maxOfWindows(top: SIMD16<Float>, bottom: SIMD16<Float>, topLeft: Int32, w: Int32) -> (SIMD8<Float>, SIMD8<Int32>) {
        // Element-wise splits: LLVM turns them into one shuffle each (the stdlib's evenHalf loop goes through the stack).
        @inline(__always) func evens(_ v: SIMD16<Float>) -> SIMD8<Float> { SIMD8(v[0], v[2], v[4], v[6], v[8], v[10], v[12], v[14]) }
        @inline(__always) func odds(_ v: SIMD16<Float>) -> SIMD8<Float> { SIMD8(v[1], v[3], v[5], v[7], v[9], v[11], v[13], v[15]) }
        @inline(__always) func pick(_ l: SIMD8<Float>, _ r: SIMD8<Float>, _ il: SIMD8<Int32>, _ ir: SIMD8<Int32>) -> (SIMD8<Float>, SIMD8<Int32>) {
            let take = (r .> l) .| (r .!= r)
            return (l.replacing(with: r, where: take), il.replacing(with: ir, where: take))
        }
        let t = SIMD8<Int32>(0, 2, 4, 6, 8, 10, 12, 14) &+ topLeft, b = t &+ w
        let (upper, iu) = pick(evens(top), odds(top), t, t &+ 1)
        let (lower, il) = pick(evens(bottom), odds(bottom), b, b &+ 1)
        return pick(upper, lower, iu, il)
    }
}

enum Windows4: MaxPoolWindows {
    static var count: Int { 4 }
    @inline(__always)
    static func maxOfWindows(top: SIMD8<Float>, bottom: SIMD8<Float>, topLeft: Int32, w: Int32) -> (SIMD4<Float>, SIMD4<Int32>) {
        @inline(__always) func evens(_ v: SIMD8<Float>) -> SIMD4<Float> { SIMD4(v[0], v[2], v[4], v[6]) }
        @inline(__always) func odds(_ v: SIMD8<Float>) -> SIMD4<Float> { SIMD4(v[1], v[3], v[5], v[7]) }
        @inline(__always) func pick(_ l: SIMD4<Float>, _ r: SIMD4<Float>, _ il: SIMD4<Int32>, _ ir: SIMD4<Int32>) -> (SIMD4<Float>, SIMD4<Int32>) {
            let take = (r .> l) .| (r .!= r)
            return (l.replacing(with: r, where: take), il.replacing(with: ir, where: take))
        }
        return maxOfWindows(topEven: evens(top), topOdd: odds(top), bottomEven: evens(bottom), bottomOdd: odds(bottom),
                            topLeft: SIMD4<Int32>(0, 2, 4, 6) &+ topLeft, w: w)
    }

    /// The same from the four cells of each window and each window's top-left index.
    @inline(__always)
    static func maxOfWindows(topEven: SIMD4<Float>, topOdd: SIMD4<Float>, bottomEven: SIMD4<Float>, bottomOdd: SIMD4<Float>,
                             topLeft t: SIMD4<Int32>, w: Int32) -> (SIMD4<Float>, SIMD4<Int32>) {
        @inline(__always) func pick(_ l: SIMD4<Float>, _ r: SIMD4<Float>, _ il: SIMD4<Int32>, _ ir: SIMD4<Int32>) -> (SIMD4<Float>, SIMD4<Int32>) {
            let take = (r .> l) .| (r .!= r)
            return (l.replacing(with: r, where: take), il.replacing(with: ir, where: take))
        }
        let b = t &+ w
        let (upper, iu) = pick(topEven, topOdd, t, t &+ 1)
        let (lower, il) = pick(bottomEven, bottomOdd, b, b &+ 1)
        return pick(upper, lower, iu, il)
    }
}

/// An output row of fewer than 4 windows (2×2, stride 2): the windows gathered into the lanes
/// of Windows4 (spare lanes repeat the last window). The scalar loop compiles to branches,
/// which real activations mispredict (several times slower on ReLU outputs).
@inline(__always)
func maxPool2x2Stride2ShortRow(_ xp: UnsafePointer<Float>, rowStart r0: Int, w: Int, ow: Int,
                               y: UnsafeMutablePointer<Float>, argmax: UnsafeMutablePointer<Int32>) {
    var topEven = SIMD4<Float>(), topOdd = SIMD4<Float>(), bottomEven = SIMD4<Float>(), bottomOdd = SIMD4<Float>()
    var topLeft = SIMD4<Int32>()
    for lane in 0..<4 {
        let i0 = r0 + 2 * min(lane, ow - 1)
        topEven[lane] = xp[i0]; topOdd[lane] = xp[i0 + 1]
        bottomEven[lane] = xp[i0 + w]; bottomOdd[lane] = xp[i0 + w + 1]
        topLeft[lane] = Int32(truncatingIfNeeded: i0)
    }
    let (m, im) = Windows4.maxOfWindows(topEven: topEven, topOdd: topOdd, bottomEven: bottomEven, bottomOdd: bottomOdd,
                                        topLeft: topLeft, w: Int32(truncatingIfNeeded: w))
    for j in 0..<ow { y[j] = m[j]; argmax[j] = im[j] }
}

/// One output row of 2×2 stride-2 windows (ow ≥ W.count) in blocks of W.count; `x` is the
/// top input row, which starts at `rowStart` in its plane. The last block starts at
/// ow − W.count and may overlap the one before, rewriting the same values: no scalar tail.
@inline(__always)
func maxPool2x2Stride2Row<W: MaxPoolWindows>(_ x: UnsafePointer<Float>, w: Int, ow: Int,
                                             y: UnsafeMutablePointer<Float>, argmax: UnsafeMutablePointer<Int32>,
                                             rowStart: Int, windows: W.Type) {
    let raw = UnsafeRawPointer(x)
    var j = 0
    while true {
        let jj = min(j, ow - W.count)
        let (m, im) = W.maxOfWindows(top: raw.loadUnaligned(fromByteOffset: 2 * jj * 4, as: W.Row.self),
                                     bottom: raw.loadUnaligned(fromByteOffset: (2 * jj + w) * 4, as: W.Row.self),
                                     topLeft: Int32(truncatingIfNeeded: rowStart + 2 * jj), w: Int32(truncatingIfNeeded: w))
        UnsafeMutableRawPointer(y + jj).storeBytes(of: m, as: W.Values.self)
        UnsafeMutableRawPointer(argmax + jj).storeBytes(of: im, as: W.Indices.self)
        if jj == ow - W.count { break }
        j += W.count
    }
}

/// dx = 0, then dx[argmax[o]] += dy[o] (overlapping windows accumulate).
public func maxPoolBackward(dy: UnsafePointer<Float>, argmax: UnsafePointer<Int32>, dx: UnsafeMutablePointer<Float>,
                            planes: Int, h: Int, w: Int, oh: Int, ow: Int) {
    dx.update(repeating: 0, count: planes * h * w)
    for p in 0..<planes {
        let dxp = dx + p * h * w
        let off = p * oh * ow
        for o in 0..<(oh * ow) { dxp[Int(argmax[off + o])] += dy[off + o] }
    }
}

/// Mean over each window, dividing by KH·KW including padded cells
/// (PyTorch's count_include_pad = true; in floor mode no window reaches past the padding).
public func avgPoolForward(x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>,
                           planes: Int, h: Int, w: Int, oh: Int, ow: Int,
                           kh: Int, kw: Int, sh: Int, sw: Int, ph: Int, pw: Int) {
    let scale = 1 / Float(kh * kw)
    for p in 0..<planes {
        let xp = x + p * h * w
        let yp = y + p * oh * ow
        for i in 0..<oh {
            let h0 = i * sh - ph
            let hs = max(h0, 0), he = min(h0 + kh, h)
            for j in 0..<ow {
                let w0 = j * sw - pw
                let ws = max(w0, 0), we = min(w0 + kw, w)
                var acc: Float = 0
                for r in hs..<he { for c in ws..<we { acc += xp[r * w + c] } }
                yp[i * ow + j] = acc * scale
            }
        }
    }
}

/// dx = 0, then every input cell of a window gets dy / (KH·KW).
public func avgPoolBackward(dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>,
                            planes: Int, h: Int, w: Int, oh: Int, ow: Int,
                            kh: Int, kw: Int, sh: Int, sw: Int, ph: Int, pw: Int) {
    dx.update(repeating: 0, count: planes * h * w)
    let scale = 1 / Float(kh * kw)
    for p in 0..<planes {
        let dxp = dx + p * h * w
        let dyp = dy + p * oh * ow
        for i in 0..<oh {
            let h0 = i * sh - ph
            let hs = max(h0, 0), he = min(h0 + kh, h)
            for j in 0..<ow {
                let w0 = j * sw - pw
                let ws = max(w0, 0), we = min(w0 + kw, w)
                let g = dyp[i * ow + j] * scale
                for r in hs..<he { for c in ws..<we { dxp[r * w + c] += g } }
            }
        }
    }
}

/// y[p] = mean of plane p (global average pooling); x is (P, S) with S = H·W.
public func globalAvgPoolForward(x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, planes: Int, s: Int) {
    let scale = 1 / Float(s)
    for p in 0..<planes {
        y[p] = Float(blockSum(x + p * s, s)) * scale
    }
}

/// dx[p, :] = dy[p] / S.
public func globalAvgPoolBackward(dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, planes: Int, s: Int) {
    let scale = 1 / Float(s)
    for p in 0..<planes {
        let g = dy[p] * scale
        let dxp = dx + p * s
        for j in 0..<s { dxp[j] = g }
    }
}
