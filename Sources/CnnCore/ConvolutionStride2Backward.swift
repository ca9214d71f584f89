// Backward-data of a 3×3, stride-2, zero-padded (top/left 1) convolution, the
// ResNet down-sampling shape, by gathering instead of col2im's scatter-adds.
//
// With y = 2·oy − 1 + a and x = 2·ox − 1 + b, every dx pixel is reached by fixed taps:
//   y even (y = 2t):      a = 1 at oy = t
//   y odd  (y = 2t + 1):  a = 2 at oy = t,  a = 0 at oy = t + 1
//   x even (x = 2m):      b = 1 at ox = m
//   x odd  (x = 2m + 1):  b = 2 at ox = m,  b = 0 at ox = m + 1
// (taps with oy ≥ outH or ox ≥ outW absent). So one dx row is the sum of one or
// two kernel rows' dcol rows, each giving even lanes r1[m] and odd lanes
// r2[m] + r0[m + 1]: eight of each per vector step, interleaved and stored
// once. No zeroing pass and no read-modify-write of dx, except the one dx row
// on a block boundary inside an image (the next block adds its a = 0 tap).

extension Conv2DGeometry {
    /// True for a 3×3, stride-2, undilated convolution with zero padding 1 at
    /// top and left (any bottom / right): backward-data can gather per dx row.
    public var isStride2Kernel3Pad1: Bool {
        kernelHeight == 3 && kernelWidth == 3 && strideHeight == 2 && strideWidth == 2
            && dilationHeight == 1 && dilationWidth == 1 && padTop == 1 && padLeft == 1
            && paddingMode == .zeros
    }
}

/// Backward-data of an `isStride2Kernel3Pad1` convolution for images `images`.
/// Blocks are whole images (blockPixels / outH·outW of them, dY copied through
/// `blockOutput` when more than one) or, for planes larger than a block, whole
/// output rows of one image (blockPixels ≥ outW required). dcol holds
/// Cg·9 × blockPixels floats; blockOutput Kg × blockPixels when blocks hold
/// several images.
func stride2Kernel3BackwardData(
    gradOutput dy: UnsafePointer<Float>, weight w: UnsafePointer<Float>, gradInput dx: UnsafeMutablePointer<Float>,
    images: Range<Int>, geometry g: Conv2DGeometry, blockPixels p: Int,
    dcol: UnsafeMutablePointer<Float>, blockOutput: UnsafeMutablePointer<Float>?, arithmetic: GemmArithmetic = .fp32,
    packedWeights: [PackedGemmA]? = nil
) {
    let hw = g.outPixels, K = g.outChannels, outH = g.outHeight, outW = g.outWidth
    let Kg = g.groupOutChannels, rows = g.panelRows
    // Row blocks of the packed weights cover whole input channels (9 rows each).
    let rowBlocked = packedWeights != nil && rows > GemmBlocking.MC && GemmBlocking.MC % 9 == 0
    if hw <= p {
        // Blocks of equal size (8 images of 7×7 at 6 per block: 4 + 4, not 6 + 2).
        let perBlock = p / hw, blocks = (images.count + perBlock - 1) / perBlock
        if rowBlocked, let packedWeights {
            // dcol row block by row block, each gathered into dx while it is in cache (a whole
            // dcol of these layers, 2304-4608 rows, is several MB and was gathered from L3).
            forEachWholeImageDcolRowBlock(images: images, perBlock: (images.count + blocks - 1) / max(blocks, 1),
                                          gradOutput: dy, geometry: g, dcol: dcol, blockOutput: blockOutput,
                                          packedWeights: packedWeights) { imageDcol, ld, n, grp, rows in
                stride2Kernel3GatherRows(imageDcol, ld: ld, gradInput: dx, image: n, group: grp, outRows: 0..<outH,
                                         geometry: g, channels: rows.lowerBound / 9 ..< rows.upperBound / 9)
            }
            return
        }
        forEachWholeImageDcol(images: images, perBlock: (images.count + blocks - 1) / max(blocks, 1), gradOutput: dy,
                              weight: w, geometry: g, dcol: dcol, blockOutput: blockOutput, arithmetic: arithmetic,
                              packedWeights: packedWeights) { imageDcol, ld, n, grp in
            stride2Kernel3GatherRows(imageDcol, ld: ld, gradInput: dx, image: n, group: grp, outRows: 0..<outH, geometry: g)
        }
        return
    }
    let blockRows = max(1, p / outW)
    for n in images {
        for grp in 0..<g.groups {
            var oy0 = 0
            while oy0 < outH {
                let oy1 = min(outH, oy0 + blockRows), count = (oy1 - oy0) * outW
                let dyRows = dy + (n * K + grp * Kg) * hw + oy0 * outW
                if rowBlocked, let packedWeights {
                    sgemmPackedARowBlocks(packedWeights[grp], n: count, b: dyRows, ldb: hw, c: dcol, ldc: count) { ic, mc in
                        stride2Kernel3GatherRows(dcol - oy0 * outW, ld: count, gradInput: dx, image: n, group: grp,
                                                 outRows: oy0..<oy1, geometry: g, channels: ic / 9 ..< (ic + mc) / 9)
                    }
                    oy0 = oy1
                    continue
                } else if let packedWeights {
                    sgemmPackedA(packedWeights[grp], n: count, beta: 0, c: dcol, ldc: count) { r0, kc, j0, nc, dst in
                        packContiguousPanel(kc: kc, nc: nc, src: dyRows + r0 * hw + j0, ld: hw, dst: dst)
                    }
                } else {
                    gemm(arithmetic, .transposed, .none, m: rows, n: count, k: Kg, alpha: 1, a: w + grp * Kg * rows,
                         lda: rows, b: dyRows, ldb: hw, beta: 0, c: dcol, ldc: count)
                }
                stride2Kernel3GatherRows(dcol - oy0 * outW, ld: count, gradInput: dx, image: n, group: grp,
                                         outRows: oy0..<oy1, geometry: g)
                oy0 = oy1
            }
        }
    }
}

/// Writes the dx rows of image n, group `group` that output rows `outRows`
/// reach: rows 2·oy0 − 1 (added to, when oy0 > 0: the previous block stored
/// its a = 2 tap) through 2·oy1 − 1, or through H − 1 for the last block.
/// `dcol[r · ld + oy · outW + ox]` is panel row r at output pixel (oy, ox). Only the input
/// channels `channels` of the group when given (their dcol rows are final), else all.
@inline(__always)
func stride2Kernel3GatherRows(_ dcol: UnsafePointer<Float>, ld: Int, gradInput dx: UnsafeMutablePointer<Float>,
                              image n: Int, group grp: Int, outRows: Range<Int>, geometry g: Conv2DGeometry,
                              channels: Range<Int>? = nil) {
    let H = g.height, W = g.width, C = g.inChannels, Cg = g.groupInChannels
    let outH = g.outHeight, outW = g.outWidth
    let oy0 = outRows.lowerBound, oy1 = outRows.upperBound
    let yStart = oy0 == 0 ? 0 : 2 * oy0 - 1
    let yEnd = oy1 == outH ? H : min(H, 2 * oy1)
    for cl in channels ?? 0..<Cg {
        let plane = dx + (n * C + grp * Cg + cl) * H * W
        // The b = 0 dcol row of kernel row a at output row oy, if oy is in this block.
        func tap(_ a: Int, _ oy: Int) -> UnsafePointer<Float>? {
            outRows.contains(oy) ? dcol + (cl * 3 + a) * 3 * ld + oy * outW : nil
        }
        var y = yStart
        while y < yEnd {
            let t = y >> 1
            var p: UnsafePointer<Float>?, q: UnsafePointer<Float>?
            if y & 1 == 0 {
                p = tap(1, t)
            } else {
                p = tap(2, t); q = tap(0, t + 1)
                if p == nil { p = q; q = nil }
            }
            stride2Kernel3Row(plane + y * W, width: W, outWidth: outW, p, q, ld: ld,
                              accumulate: oy0 > 0 && y == yStart)
            y += 1
        }
    }
}

/// One dx row from the taps p and q (b = 0 dcol rows of up to two kernel rows;
/// b = 1, 2 at +ld, +2·ld): dst[2m] = Σ r1[m], dst[2m + 1] = Σ r2[m] + r0[m + 1].
/// p nil: no taps (a zero row). Stores, or adds when `accumulate`.
@inline(__always)
func stride2Kernel3Row(_ dst: UnsafeMutablePointer<Float>, width W: Int, outWidth ow: Int,
                       _ p: UnsafePointer<Float>?, _ q: UnsafePointer<Float>?, ld: Int, accumulate: Bool) {
    guard let p else {
        if !accumulate { dst.update(repeating: 0, count: W) }
        return
    }
    var m = 0
    while m + 8 <= ow && 2 * m + 16 <= W {
        var (e, o) = stride2Kernel3Taps(p, ld: ld, m, outWidth: ow)
        if let q {
            let (e2, o2) = stride2Kernel3Taps(q, ld: ld, m, outWidth: ow)
            e += e2; o += o2
        }
        var v = SIMD16<Float>(e[0], o[0], e[1], o[1], e[2], o[2], e[3], o[3],
                              e[4], o[4], e[5], o[5], e[6], o[6], e[7], o[7])
        let d = UnsafeMutableRawPointer(dst + 2 * m)
        if accumulate { v += d.loadUnaligned(as: SIMD16<Float>.self) }
        d.storeBytes(of: v, as: SIMD16<Float>.self)
        m += 8
    }
    var x = 2 * m
    while x < W {
        var s = stride2Kernel3Tap(p, ld: ld, x, outWidth: ow)
        if let q { s += stride2Kernel3Tap(q, ld: ld, x, outWidth: ow) }
        dst[x] = accumulate ? dst[x] + s : s
        x += 1
    }
}

/// Even lanes r1[m ..< m + 8] and odd lanes r2[m ..< m + 8] + r0[m + 1 ..< m + 9]
/// of one tap (m + 8 ≤ outWidth). When m + 8 = outWidth, r0[m + 8] does not
/// exist: the load reads one float past the b = 0 row (still inside dcol, the
/// b = 1 row follows) and that lane is zeroed.
@inline(__always)
func stride2Kernel3Taps(_ p: UnsafePointer<Float>, ld: Int, _ m: Int, outWidth ow: Int)
    -> (SIMD8<Float>, SIMD8<Float>) {
    var r0 = UnsafeRawPointer(p + m + 1).loadUnaligned(as: SIMD8<Float>.self)
    if m + 8 == ow { r0[7] = 0 }
    let r1 = UnsafeRawPointer(p + ld + m).loadUnaligned(as: SIMD8<Float>.self)
    let r2 = UnsafeRawPointer(p + 2 * ld + m).loadUnaligned(as: SIMD8<Float>.self)
    return (r1, r2 + r0)
}

/// dst[x] of one tap, scalar: r1[x / 2] for even x, r2[m] + r0[m + 1] for x = 2m + 1.
@inline(__always)
func stride2Kernel3Tap(_ p: UnsafePointer<Float>, ld: Int, _ x: Int, outWidth ow: Int) -> Float {
    let m = x >> 1
    if x & 1 == 0 { return m < ow ? p[ld + m] : 0 }
    return (m < ow ? p[2 * ld + m] : 0) + (m + 1 < ow ? p[m + 1] : 0)
}
