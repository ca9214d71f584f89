// Shapes: x is (P, H, W) with P = N·C planes, y is (P, OH, OW); windows are
// KH×KW with strides SH, SW and zero/-inf padding PH, PW; floor-mode output
// OH = (H + 2·PH − KH) / SH + 1 (likewise OW).

/// Max over each window (padded cells count as −∞); argmax[o] is the flat
/// index h·W + w of the winner within its plane (the first one on ties).
public func maxPoolForward(x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, argmax: UnsafeMutablePointer<Int32>,
                           planes: Int, h: Int, w: Int, oh: Int, ow: Int,
                           kh: Int, kw: Int, sh: Int, sw: Int, ph: Int, pw: Int) {
    forEachRange(planes, work: oh * ow * kh * kw) { range in
        let xr = x + range.lowerBound * h * w, yr = y + range.lowerBound * oh * ow
        let ar = argmax + range.lowerBound * oh * ow
        if ph == 0 && pw == 0 && kh == 2 && kw == 2 {
            maxPool2x2(x: xr, y: yr, argmax: ar, planes: range.count, h: h, w: w, oh: oh, ow: ow, sh: sh, sw: sw)
            return
        }
        let wins = PoolWindows(h: h, w: w, oh: oh, ow: ow, kh: kh, kw: kw, sh: sh, sw: sw, ph: ph, pw: pw)
        for p in 0..<range.count {
            maxPoolPlane(xr + p * h * w, yr + p * oh * ow, ar + p * oh * ow, wins)
        }
    }
}

/// A pooling geometry and its interior output columns: windows jInterior, whose columns
/// j·sw − pw ..< j·sw − pw + kw all lie inside the input row, so 8 adjacent ones can be
/// read as vectors with no padding test.
struct PoolWindows {
    let h: Int, w: Int, oh: Int, ow: Int, kh: Int, kw: Int, sh: Int, sw: Int, ph: Int, pw: Int
    let jInterior: Range<Int>
    /// Whether the interior is read 8 windows at a time: stride 1, or stride 2 with kw ≥ 2
    /// (whose loads then never read past the last window's last column), and ≥ 8 windows.
    let vectorized: Bool

    init(h: Int, w: Int, oh: Int, ow: Int, kh: Int, kw: Int, sh: Int, sw: Int, ph: Int, pw: Int) {
        (self.h, self.w, self.oh, self.ow, self.kh, self.kw, self.sh, self.sw, self.ph, self.pw)
            = (h, w, oh, ow, kh, kw, sh, sw, ph, pw)
        let lo = min((pw + sw - 1) / sw, ow)
        let hi = w >= kw - pw ? min((w - kw + pw) / sw + 1, ow) : lo
        jInterior = lo ..< max(lo, hi)
        vectorized = (sw == 1 || (sw == 2 && kw >= 2)) && jInterior.count >= 8
    }

    /// Cell c of the windows j ..< j + 8 in input row `row` (the row's first cell): row[(j + l)·sw − pw + c].
    /// With stride 2 the 16-float load of the even cells ends on the last window's last column
    /// (kw ≥ 2), and the odd cells' load starts one cell earlier: no read past the row's windows.
    @inline(__always)
    func cells(_ row: UnsafePointer<Float>, _ j: Int, _ c: Int) -> SIMD8<Float> {
        let first = row + j * sw - pw
        if sw == 1 { return UnsafeRawPointer(first + c).loadUnaligned(as: SIMD8<Float>.self) }
        if c == 0 {
            let v = UnsafeRawPointer(first).loadUnaligned(as: SIMD16<Float>.self)
            return SIMD8(v[0], v[2], v[4], v[6], v[8], v[10], v[12], v[14])
        }
        let v = UnsafeRawPointer(first + c - 1).loadUnaligned(as: SIMD16<Float>.self)
        return SIMD8(v[1], v[3], v[5], v[7], v[9], v[11], v[13], v[15])
    }

    /// Input rows of output row i: hs ..< he (clipped to the input).
    @inline(__always)
    func rows(_ i: Int) -> Range<Int> {
        let h0 = i * sh - ph
        return max(h0, 0) ..< max(max(h0, 0), min(h0 + kh, h))
    }
}

/// One plane of the general max pool. Edge windows run the scalar loop; interior windows
/// 8 at a time with the same visiting order (rows, then columns) and the same select per
/// lane, so values and argmax equal the scalar loop's bit for bit.
@inline(__always)
private func maxPoolPlane(_ xp: UnsafePointer<Float>, _ yp: UnsafeMutablePointer<Float>,
                          _ ap: UnsafeMutablePointer<Int32>, _ g: PoolWindows) {
    let w = g.w, ow = g.ow
    for i in 0..<g.oh {
        let rows = g.rows(i)
        @inline(__always) func scalarWindow(_ j: Int) {
            let w0 = j * g.sw - g.pw
            let ws = max(w0, 0), we = min(w0 + g.kw, w)
            var best = -Float.infinity, at = rows.lowerBound * w + ws
            for r in rows {
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
        guard g.vectorized else {
            for j in 0..<ow { scalarWindow(j) }
            continue
        }
        for j in 0..<g.jInterior.lowerBound { scalarWindow(j) }
        let lanes = SIMD8<Int32>(0, 1, 2, 3, 4, 5, 6, 7) &* Int32(truncatingIfNeeded: g.sw)
        var j = g.jInterior.lowerBound
        while true {
            // The last block may overlap the one before and rewrite the same values.
            let jj = min(j, g.jInterior.upperBound - 8)
            let w0 = jj * g.sw - g.pw
            var best = SIMD8<Float>(repeating: -.infinity)
            var at = lanes &+ Int32(truncatingIfNeeded: rows.lowerBound * w + w0)
            for r in rows {
                let row = xp + r * w
                for c in 0..<g.kw {
                    let v = g.cells(row, jj, c)
                    let take = (v .> best) .| (v .!= v)
                    best = best.replacing(with: v, where: take)
                    at = at.replacing(with: lanes &+ Int32(truncatingIfNeeded: r * w + w0 + c), where: take)
                }
            }
            UnsafeMutableRawPointer(yp + i * ow + jj).storeBytes(of: best, as: SIMD8<Float>.self)
            UnsafeMutableRawPointer(ap + i * ow + jj).storeBytes(of: at, as: SIMD8<Int32>.self)
            if jj == g.jInterior.upperBound - 8 { break }
            j += 8
        }
        for j in g.jInterior.upperBound..<ow { scalarWindow(j) }
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
    forEachRange(planes, work: h * w + oh * ow) { range in
        (dx + range.lowerBound * h * w).update(repeating: 0, count: range.count * h * w)
        for p in range {
            let dxp = dx + p * h * w
            let off = p * oh * ow
            for o in 0..<(oh * ow) { dxp[Int(argmax[off + o])] += dy[off + o] }
        }
    }
}

/// `maxPoolBackward` for unpadded 2×2 windows at stride 2 (the argmax of `maxPoolForward` with
/// that geometry). The windows do not overlap, so each cell of dx is written once and there is
/// no zeroing pass: 0 + dy (what the general loop computes: +0 for a −0 gradient) at its
/// window's argmax, +0 at the window's other cells and at the last row / column an odd H / W
/// leaves out. Same bits as `maxPoolBackward`.
public func maxPool2x2Stride2Backward(dy: UnsafePointer<Float>, argmax: UnsafePointer<Int32>, dx: UnsafeMutablePointer<Float>,
                                      planes: Int, h: Int, w: Int, oh: Int, ow: Int) {
    precondition(oh == h / 2 && ow == w / 2, "maxPool2x2Stride2Backward: \(oh)x\(ow) is not the 2x2/2 output of \(h)x\(w)")
    forEachRange(planes, work: h * w + oh * ow) { range in
        for p in range {
            maxPool2x2Stride2BackwardPlane(dy + p * oh * ow, argmax + p * oh * ow, dx + p * h * w, h: h, w: w, oh: oh, ow: ow)
        }
    }
}

@inline(__always)
private func maxPool2x2Stride2BackwardPlane(_ dyp: UnsafePointer<Float>, _ ap: UnsafePointer<Int32>, _ dxp: UnsafeMutablePointer<Float>,
                                           h: Int, w: Int, oh: Int, ow: Int) {
    // Lane 2l and 2l + 1 of a row pair's 16 cells belong to window l: each window's dy and
    // argmax duplicated into both (a pairing shuffle; building the rows from two selected SIMD8s
    // instead compiled to element-by-element code, 40 times slower).
    let zero = SIMD16<Float>()
    let cells = SIMD16<Int32>(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
    let bottomCells = cells &+ Int32(truncatingIfNeeded: w)
    @inline(__always) func pairs(_ v: SIMD8<Float>) -> SIMD16<Float> {
        SIMD16(v[0], v[0], v[1], v[1], v[2], v[2], v[3], v[3], v[4], v[4], v[5], v[5], v[6], v[6], v[7], v[7])
    }
    @inline(__always) func pairs(_ v: SIMD8<Int32>) -> SIMD16<Int32> {
        SIMD16(v[0], v[0], v[1], v[1], v[2], v[2], v[3], v[3], v[4], v[4], v[5], v[5], v[6], v[6], v[7], v[7])
    }
    for i in 0..<oh {
        let top = dxp + 2 * i * w, bottom = top + w, g = dyp + i * ow, a = ap + i * ow
        var j = 0
        while j + 8 <= ow {
            let v = pairs(UnsafeRawPointer(g + j).loadUnaligned(as: SIMD8<Float>.self)) + zero
            // The argmax as a cell of the row pair from column 2j: c in the top row, w + c in the bottom one.
            let at = pairs(UnsafeRawPointer(a + j).loadUnaligned(as: SIMD8<Int32>.self)) &- Int32(truncatingIfNeeded: 2 * i * w + 2 * j)
            UnsafeMutableRawPointer(top + 2 * j).storeBytes(of: zero.replacing(with: v, where: at .== cells), as: SIMD16<Float>.self)
            UnsafeMutableRawPointer(bottom + 2 * j).storeBytes(of: zero.replacing(with: v, where: at .== bottomCells),
                                                                as: SIMD16<Float>.self)
            j += 8
        }
        while j < ow {
            let v = g[j] + 0
            let at = Int(a[j]) - (2 * i * w + 2 * j)
            top[2 * j] = at == 0 ? v : 0
            top[2 * j + 1] = at == 1 ? v : 0
            bottom[2 * j] = at == w ? v : 0
            bottom[2 * j + 1] = at == w + 1 ? v : 0
            j += 1
        }
        if w > 2 * ow { top[w - 1] = 0; bottom[w - 1] = 0 }
    }
    if h > 2 * oh { (dxp + (h - 1) * w).update(repeating: 0, count: w) }
}

/// Mean over each window, dividing by KH·KW including padded cells
/// (PyTorch's count_include_pad = true; in floor mode no window reaches past the padding).
public func avgPoolForward(x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>,
                           planes: Int, h: Int, w: Int, oh: Int, ow: Int,
                           kh: Int, kw: Int, sh: Int, sw: Int, ph: Int, pw: Int) {
    let g = PoolWindows(h: h, w: w, oh: oh, ow: ow, kh: kh, kw: kw, sh: sh, sw: sw, ph: ph, pw: pw)
    forEachRange(planes, work: oh * ow * kh * kw) { range in
        for p in range { avgPoolPlane(x + p * h * w, y + p * oh * ow, g) }
    }
}

/// One plane of the average pool. Interior windows run 8 at a time, each lane summing its
/// cells from 0 in the scalar loop's order (rows, then columns), so the sums are the same.
@inline(__always)
private func avgPoolPlane(_ xp: UnsafePointer<Float>, _ yp: UnsafeMutablePointer<Float>, _ g: PoolWindows) {
    let w = g.w, ow = g.ow
    let scale = 1 / Float(g.kh * g.kw)
    for i in 0..<g.oh {
        let rows = g.rows(i)
        @inline(__always) func scalarWindow(_ j: Int) {
            let w0 = j * g.sw - g.pw
            let ws = max(w0, 0), we = min(w0 + g.kw, w)
            var acc: Float = 0
            for r in rows { for c in ws..<we { acc += xp[r * w + c] } }
            yp[i * ow + j] = acc * scale
        }
        guard g.vectorized else {
            for j in 0..<ow { scalarWindow(j) }
            continue
        }
        for j in 0..<g.jInterior.lowerBound { scalarWindow(j) }
        var j = g.jInterior.lowerBound
        while true {
            let jj = min(j, g.jInterior.upperBound - 8)
            var acc = SIMD8<Float>()
            for r in rows {
                let row = xp + r * w
                for c in 0..<g.kw { acc += g.cells(row, jj, c) }
            }
            UnsafeMutableRawPointer(yp + i * ow + jj).storeBytes(of: acc * scale, as: SIMD8<Float>.self)
            if jj == g.jInterior.upperBound - 8 { break }
            j += 8
        }
        for j in g.jInterior.upperBound..<ow { scalarWindow(j) }
    }
}

/// dx = 0, then every input cell of a window gets dy / (KH·KW).
public func avgPoolBackward(dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>,
                            planes: Int, h: Int, w: Int, oh: Int, ow: Int,
                            kh: Int, kw: Int, sh: Int, sw: Int, ph: Int, pw: Int) {
    let scale = 1 / Float(kh * kw)
    forEachRange(planes, work: h * w + oh * ow * kh * kw) { range in
        (dx + range.lowerBound * h * w).update(repeating: 0, count: range.count * h * w)
        for p in range {
            let dxp = dx + p * h * w
            let dyp = dy + p * oh * ow
            if kh == 2 && kw == 2 && sh == 2 && sw == 2 && ph == 0 && pw == 0 {
                avgPool2x2Stride2BackwardPlane(dyp, dxp, w: w, oh: oh, ow: ow, scale: scale)
                continue
            }
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
}

/// Unpadded 2×2 stride-2 windows do not overlap: each covered cell of the zeroed plane gets one
/// addition, 0 + dy·scale (which is what the general loop computes; +0 for a −0 gradient),
/// written 8 windows (16 cells) of a row at a time; the uncovered last row / column stays 0.
@inline(__always)
private func avgPool2x2Stride2BackwardPlane(_ dyp: UnsafePointer<Float>, _ dxp: UnsafeMutablePointer<Float>,
                                           w: Int, oh: Int, ow: Int, scale: Float) {
    for i in 0..<oh {
        let top = dxp + 2 * i * w, bottom = top + w, g = dyp + i * ow
        var j = 0
        while j + 8 <= ow {
            let v = UnsafeRawPointer(g + j).loadUnaligned(as: SIMD8<Float>.self) * scale + SIMD8<Float>()
            let pairs = SIMD16<Float>(v[0], v[0], v[1], v[1], v[2], v[2], v[3], v[3],
                                      v[4], v[4], v[5], v[5], v[6], v[6], v[7], v[7])
            UnsafeMutableRawPointer(top + 2 * j).storeBytes(of: pairs, as: SIMD16<Float>.self)
            UnsafeMutableRawPointer(bottom + 2 * j).storeBytes(of: pairs, as: SIMD16<Float>.self)
            j += 8
        }
        while j < ow {
            let v = 0 + g[j] * scale
            top[2 * j] = v; top[2 * j + 1] = v; bottom[2 * j] = v; bottom[2 * j + 1] = v
            j += 1
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
