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
    dcol: UnsafeMutablePointer<Float>, blockOutput: UnsafeMutablePointer<Float>?, arithmetic: GemmArithmetic = .fp32,
    packedWeights: [PackedGemmA]? = nil
) {
    let hw = g.outPixels, rows = g.panelRows
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
        // then reads L1, measurably faster on fashion-cnn/0); otherwise the whole panel
        // block (dcol is read from L2 either way, and a wider GEMM wastes less of its edge tile).
        let imageFloats = rows * hw
        var perBlock = imageFloats <= rowGatherL1Floats ? max(1, min(p / hw, rowGatherL1Floats / imageFloats)) : p / hw
        if packedWeights != nil {
            // Blocks of equal size (W_gᵀ is packed once, so narrower blocks cost only their edge tiles).
            let blocks = (images.count + perBlock - 1) / perBlock
            perBlock = (images.count + blocks - 1) / max(blocks, 1)
        }
        forEachWholeImageDcol(images: images, perBlock: perBlock, gradOutput: dy, weight: w, geometry: g, dcol: dcol,
                              blockOutput: blockOutput, arithmetic: arithmetic,
                              packedWeights: packedWeights) { imageDcol, ld, n, grp in
            gatherImageRows(imageDcol, ld: ld, gradInput: dx, image: n, group: grp, geometry: g, masks: maskBase,
                            vectorsPerRow: vectorsPerRow)
        }
    }
}

/// Writes dx of image n, group `group` (all Cg planes) from its dcol columns
/// (`dcol[r · ld + oy · outW + ox]`): per plane, blocks of R rows × nv vectors
/// (R·nv ≤ 8 accumulators: 4 rows of up to 2 vectors, or 2 rows of 3-4).
@inline(__always)
private func gatherImageRows(_ dcol: UnsafePointer<Float>, ld: Int, gradInput dx: UnsafeMutablePointer<Float>,
                             image n: Int, group grp: Int, geometry g: Conv2DGeometry,
                             masks: UnsafePointer<SIMD8<UInt32>>, vectorsPerRow: Int) {
    let H = g.height, W = g.width, Cg = g.groupInChannels, taps = g.kernelHeight * g.kernelWidth
    for cl in 0..<Cg {
        let plane = dx + (n * g.inChannels + grp * Cg + cl) * H * W
        let channel = dcol + cl * taps * ld
        var v0 = 0
        while v0 < vectorsPerRow {
            let nv = min(rowGatherChunkVectors, vectorsPerRow - v0)
            var y = 0
            while y < H {
                // R and nv are constants in each call, so each is compiled for its block shape.
                switch nv {
                case 1: y += gatherRowBlock(4, 1, plane, y, v0, channel, ld, g, masks, vectorsPerRow)
                case 2: y += gatherRowBlock(4, 2, plane, y, v0, channel, ld, g, masks, vectorsPerRow)
                case 3: y += gatherRowBlock(2, 3, plane, y, v0, channel, ld, g, masks, vectorsPerRow)
                default: y += gatherRowBlock(2, 4, plane, y, v0, channel, ld, g, masks, vectorsPerRow)
                }
            }
            v0 += nv
        }
    }
}

/// dx rows y ..< y + R (fewer at the bottom of the plane), vectors v0 ..< v0 + nv: the
/// masked sum over every tap (a, b) reaching each row. Each tap's masks are loaded once
/// for all R rows, and the R·nv accumulators are independent add chains. Stores
/// whole vectors where that overwrites nothing already written, else the row's valid
/// floats. Returns the rows written.
@inline(__always)
private func gatherRowBlock(_ R: Int, _ nv: Int, _ plane: UnsafeMutablePointer<Float>, _ y: Int, _ v0: Int,
                            _ channel: UnsafePointer<Float>, _ ld: Int, _ g: Conv2DGeometry,
                            _ masks: UnsafePointer<SIMD8<UInt32>>, _ vectorsPerRow: Int) -> Int {
    let H = g.height, W = g.width, kh = g.kernelHeight, kw = g.kernelWidth
    let dh = g.dilationHeight, dw = g.dilationWidth, outH = g.outHeight, outW = g.outWidth
    let rows = min(R, H - y)
    return withUnsafeTemporaryAllocation(of: SIMD8<Float>.self, capacity: 8) { accBuffer in
        let acc = accBuffer.baseAddress!
        for i in 0..<(R * nv) { acc[i] = SIMD8<Float>() }
        // Tap (a, b) reads dcol row (a·kw + b) at oy·outW + x + padLeft − b·dw for lane x.
        for a in 0..<kh {
            let oy0 = y + g.padTop - a * dh
            // Rows r of the block with oy0 + r inside the output.
            let rFirst = max(0, -oy0), rEnd = min(rows, outH - oy0)
            if rFirst >= rEnd { continue }
            let first = channel + a * kw * ld + oy0 * outW + g.padLeft + 8 * v0
            // Every row of the block reached (the usual case): no per-row test in the tap loop.
            if rFirst == 0 && rEnd == R {
                for b in 0..<kw {
                    let s = first + b * (ld - dw), m = masks + b * vectorsPerRow + v0
                    for v in 0..<nv {
                        let mask = m[v]
                        for r in 0..<R { acc[r * nv + v] += maskedLoad(UnsafeRawPointer(s + r * outW), 32 * v, mask) }
                    }
                }
            } else {
                for b in 0..<kw {
                    let s = first + b * (ld - dw), m = masks + b * vectorsPerRow + v0
                    for v in 0..<nv {
                        let mask = m[v]
                        // Constant r (unrolled), so the accumulators stay in registers.
                        for r in 0..<R where r >= rFirst && r < rEnd {
                            acc[r * nv + v] += maskedLoad(UnsafeRawPointer(s + r * outW), 32 * v, mask)
                        }
                    }
                }
            }
        }
        for r in 0..<rows {
            let dst = plane + (y + r) * W + 8 * v0
            // Whole vectors when they end inside the row, or, for rows that are one chunk, when
            // they end inside the plane: the overrun then lands in the next row, stored after
            // this one. (With several chunks the next row's first chunk is already written.)
            let ends = 8 * (v0 + nv)
            if ends <= W || (nv == vectorsPerRow && (y + r) * W + ends <= H * W) {
                for v in 0..<nv { UnsafeMutableRawPointer(dst + 8 * v).storeBytes(of: acc[r * nv + v], as: SIMD8<Float>.self) }
            } else {
                let values = UnsafeRawPointer(acc + r * nv).assumingMemoryBound(to: Float.self)
                for i in 0..<min(8 * nv, W - 8 * v0) { dst[i] = values[i] }
            }
        }
        return rows
    }
}

/// The 8 floats at s + offset with the lanes outside `mask` cleared (bitwise, so
/// whatever those lanes hold, NaN included, contributes an exact 0).
@inline(__always)
private func maskedLoad(_ s: UnsafeRawPointer, _ offset: Int, _ mask: SIMD8<UInt32>) -> SIMD8<Float> {
    unsafeBitCast(s.loadUnaligned(fromByteOffset: offset, as: SIMD8<UInt32>.self) & mask, to: SIMD8<Float>.self)
}

