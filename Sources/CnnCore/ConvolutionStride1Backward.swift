// Backward-data of a stride-1, zero-padded convolution whose images fit in one
// panel block (small planes with few input channels: LeNet-5's 6-channel layer,
// 1-channel first layers), by gathering each dx row instead of col2im's scatter-adds.
//
// dcol = W_gᵀ · dY (rows × m·hw over m whole images) as on the panel path; then
//   dx[c, y, x] = Σ_a Σ_b dcol[(c·kh + a)·kw + b, oy·outW + ox],
//   oy = y + padTop − a·dh,  ox = x + padLeft − b·dw,  over oy ∈ [0, outH), ox ∈ [0, outW).
// For fixed (a, b), ox is x shifted by a constant, so a dx row is a sum of shifted
// dcol row segments: unaligned vector loads whose lanes with ox outside [0, outW)
// are masked off (one mask per b and vector, built once per pass), summed in
// registers and stored once. No zeroing pass, no read-modify-write of dx, and
// dcol is read while the block is still in L2. (col2im added runs of outW floats
// into dx, a call and a tail per run: LeNet-5's 6×14×14 layer spent three times
// the GEMM's time there.)

extension Conv2DGeometry {
    /// Stride 1 with zero (or no) padding: backward-data can gather per dx row.
    var isStride1ZeroPadded: Bool {
        strideHeight == 1 && strideWidth == 1
            && (paddingMode == .zeros || padTop + padBottom + padLeft + padRight == 0)
    }

    /// Floats the row gather may read before the first and after the last dcol entry
    /// (in lanes it masks off); the workspace's panels keep this much slack on both sides.
    var rowGatherSlack: Int {
        ((kernelWidth - 1) * dilationWidth + padLeft + 2 * rowGatherChunkVectors * 8 + 15) / 16 * 16
    }
}

/// Vectors of 8 floats summed together per dx row chunk (32 floats, 8 accumulators).
let rowGatherChunkVectors = 4

/// dcol floats that stay in the 32 KiB L1 beside the gather's other data.
let rowGatherL1Floats = 8192

/// Backward-data of an `isStride1ZeroPadded` convolution for images `images`, in blocks
/// of whole images (blockPixels ≥ outH·outW). dcol holds rows × blockPixels floats and
/// `rowGatherSlack` readable floats before and after; blockOutput Kg × blockPixels when a
/// block holds several images.
func stride1GatherBackwardData(
    gradOutput dy: UnsafePointer<Float>, weight w: UnsafePointer<Float>, gradInput dx: UnsafeMutablePointer<Float>,
    images: Range<Int>, geometry g: Conv2DGeometry, blockPixels p: Int,
    dcol: UnsafeMutablePointer<Float>, blockOutput: UnsafeMutablePointer<Float>?
) {
    let hw = g.outPixels, K = g.outChannels, Kg = g.groupOutChannels, rows = g.panelRows
    let vectorsPerRow = (g.width + 7) / 8
    withUnsafeTemporaryAllocation(of: SIMD8<UInt32>.self, capacity: g.kernelWidth * vectorsPerRow) { masks in
        // masks[b · vectorsPerRow + v], lane i: all ones when x = 8v + i has its tap b inside the row.
        for b in 0..<g.kernelWidth {
            for v in 0..<vectorsPerRow {
                var m = SIMD8<UInt32>()
                for i in 0..<8 {
                    let ox = 8 * v + i + g.padLeft - b * g.dilationWidth
                    m[i] = ox >= 0 && ox < g.outWidth ? ~0 : 0
                }
                masks[b * vectorsPerRow + v] = m
            }
        }
        let maskBase = UnsafePointer(masks.baseAddress!)
        // Images per block: when one image's dcol fits in L1, only as many as fit (the gather
        // then reads L1: fashion-cnn/0 0.70 → 0.83 of its GEMM); otherwise the whole panel
        // block (dcol is read from L2 either way, and a wider GEMM wastes less of its edge tile).
        let imageFloats = rows * hw
        let perBlock = imageFloats <= rowGatherL1Floats ? max(1, min(p / hw, rowGatherL1Floats / imageFloats)) : p / hw
        var n0 = images.lowerBound
        while n0 < images.upperBound {
            let m = min(perBlock, images.upperBound - n0), count = m * hw
            for grp in 0..<g.groups {
                let (dyBlock, ld) = gradOutputBlock(dy, inside: m == 1, firstImage: n0, channels: K, group: grp,
                                                    groupChannels: Kg, outPixels: hw, start: n0 * hw, count: count,
                                                    blockOutput: blockOutput)
                // dcol (rows × count) = W_gᵀ (rows × Kg) · dY block (Kg × count).
                sgemm(.transposed, .none, m: rows, n: count, k: Kg, alpha: 1, a: w + grp * Kg * rows, lda: rows,
                      b: dyBlock, ldb: ld, beta: 0, c: dcol, ldc: count)
                for i in 0..<m {
                    gatherImageRows(dcol + i * hw, ld: count, gradInput: dx, image: n0 + i, group: grp,
                                    geometry: g, masks: maskBase, vectorsPerRow: vectorsPerRow)
                }
            }
            n0 += m
        }
    }
}

/// Writes dx of image n, group `group` (all Cg planes) from its dcol columns
/// (`dcol[r · ld + oy · outW + ox]`).
@inline(__always)
private func gatherImageRows(_ dcol: UnsafePointer<Float>, ld: Int, gradInput dx: UnsafeMutablePointer<Float>,
                             image n: Int, group grp: Int, geometry g: Conv2DGeometry,
                             masks: UnsafePointer<SIMD8<UInt32>>, vectorsPerRow: Int) {
    let H = g.height, W = g.width, Cg = g.groupInChannels, taps = g.kernelHeight * g.kernelWidth
    for cl in 0..<Cg {
        let plane = dx + (n * g.inChannels + grp * Cg + cl) * H * W
        let channel = dcol + cl * taps * ld
        for y in 0..<H {
            var v0 = 0
            while v0 < vectorsPerRow {
                let nv = min(rowGatherChunkVectors, vectorsPerRow - v0)
                let dst = plane + y * W + 8 * v0
                // Whole vectors may run into the next row (written after this one) but not past the plane.
                let whole = y * W + 8 * (v0 + nv) <= H * W
                let valid = min(8 * nv, W - 8 * v0)
                // nv is a constant in each call, so each is compiled for its vector count.
                switch nv {
                case 1: gatherRowChunk(1, dst, valid, whole, channel, ld, y, v0, g, masks, vectorsPerRow)
                case 2: gatherRowChunk(2, dst, valid, whole, channel, ld, y, v0, g, masks, vectorsPerRow)
                case 3: gatherRowChunk(3, dst, valid, whole, channel, ld, y, v0, g, masks, vectorsPerRow)
                default: gatherRowChunk(4, dst, valid, whole, channel, ld, y, v0, g, masks, vectorsPerRow)
                }
                v0 += nv
            }
        }
    }
}

/// dx row y, vectors v0 ..< v0 + nv: the masked sum over every tap (a, b) reaching the
/// row. Taps with even and odd b go to separate accumulators, so consecutive adds into
/// one register are independent (a 25-tap row is not one 25-add latency chain).
/// Stores nv whole vectors when `whole`, else the first `valid` floats.
@inline(__always)
private func gatherRowChunk(_ nv: Int, _ dst: UnsafeMutablePointer<Float>, _ valid: Int, _ whole: Bool,
                            _ channel: UnsafePointer<Float>, _ ld: Int, _ y: Int, _ v0: Int, _ g: Conv2DGeometry,
                            _ masks: UnsafePointer<SIMD8<UInt32>>, _ vectorsPerRow: Int) {
    let kh = g.kernelHeight, kw = g.kernelWidth, dh = g.dilationHeight, dw = g.dilationWidth
    let outH = g.outHeight, outW = g.outWidth
    var e0 = SIMD8<Float>(), e1 = SIMD8<Float>(), e2 = SIMD8<Float>(), e3 = SIMD8<Float>()
    var o0 = SIMD8<Float>(), o1 = SIMD8<Float>(), o2 = SIMD8<Float>(), o3 = SIMD8<Float>()
    // Tap (a, b) reads dcol row (a·kw + b) at oy·outW + x + padLeft − b·dw for lane x.
    let step = ld - dw
    for a in 0..<kh {
        let oy = y + g.padTop - a * dh
        if oy < 0 || oy >= outH { continue }
        let first = channel + a * kw * ld + oy * outW + g.padLeft + 8 * v0
        var b = 0
        while b < kw {
            let s = UnsafeRawPointer(first + b * step), m = masks + b * vectorsPerRow + v0
            e0 += maskedLoad(s, 0, m[0])
            if nv > 1 { e1 += maskedLoad(s, 32, m[1]) }
            if nv > 2 { e2 += maskedLoad(s, 64, m[2]) }
            if nv > 3 { e3 += maskedLoad(s, 96, m[3]) }
            if b + 1 < kw {
                let s = UnsafeRawPointer(first + (b + 1) * step), m = m + vectorsPerRow
                o0 += maskedLoad(s, 0, m[0])
                if nv > 1 { o1 += maskedLoad(s, 32, m[1]) }
                if nv > 2 { o2 += maskedLoad(s, 64, m[2]) }
                if nv > 3 { o3 += maskedLoad(s, 96, m[3]) }
            }
            b += 2
        }
    }
    let sums = (e0 + o0, e1 + o1, e2 + o2, e3 + o3)
    if whole {
        let d = UnsafeMutableRawPointer(dst)
        d.storeBytes(of: sums.0, as: SIMD8<Float>.self)
        if nv > 1 { d.storeBytes(of: sums.1, toByteOffset: 32, as: SIMD8<Float>.self) }
        if nv > 2 { d.storeBytes(of: sums.2, toByteOffset: 64, as: SIMD8<Float>.self) }
        if nv > 3 { d.storeBytes(of: sums.3, toByteOffset: 96, as: SIMD8<Float>.self) }
        return
    }
    withUnsafeTemporaryAllocation(of: SIMD8<Float>.self, capacity: 4) { lanes in
        lanes[0] = sums.0; lanes[1] = sums.1; lanes[2] = sums.2; lanes[3] = sums.3
        let values = UnsafeRawPointer(lanes.baseAddress!).assumingMemoryBound(to: Float.self)
        for i in 0..<valid { dst[i] = values[i] }
    }
}

/// The 8 floats at s + offset with the lanes outside `mask` cleared (bitwise, so
/// whatever those lanes hold, NaN included, contributes an exact 0).
@inline(__always)
private func maskedLoad(_ s: UnsafeRawPointer, _ offset: Int, _ mask: SIMD8<UInt32>) -> SIMD8<Float> {
    unsafeBitCast(s.loadUnaligned(fromByteOffset: offset, as: SIMD8<UInt32>.self) & mask, to: SIMD8<Float>.self)
}

