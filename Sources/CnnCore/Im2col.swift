// im2col / col2im over a block of output pixels.
//
// Panel layout (row-major, the B operand of the forward GEMM as `sgemm` wants it):
//   panel[r · P + j],  r = (c · kh + a) · kw + b  over the group's Cg channels c,
//                      j = 0 ..< P for global output pixels q = start + j,
//                      q = n · outH·outW + oy · outW + ox.
//   panel[r, j] = padded input (n, group·Cg + c, oy·sh − padTop + a·dh, ox·sw − padLeft + b·dw),
// where "padded" reads through the padding mode (zeros, reflect, replicate, circular).
// The weight tensor [K, Cg, kh, kw] viewed as a K × (Cg·kh·kw) matrix has the
// same row order r, so the block output is W_g · panel.

/// Builds the column panel of one group for output pixels start ..< start + count
/// (which may span images). `input` is (N, C, H, W); `panel` holds
/// Cg·kh·kw × count floats, row stride `count`. `workspace` must be prepared for `g`.
public func im2col(input x: UnsafePointer<Float>, geometry g: Conv2DGeometry, group: Int,
                   pixelStart start: Int, pixelCount count: Int,
                   panel: UnsafeMutablePointer<Float>, workspace ws: ConvolutionWorkspace) {
    let hw = g.outPixels, outW = g.outWidth, outH = g.outHeight
    let H = g.height, W = g.width, C = g.inChannels, Cg = g.groupInChannels
    let kh = g.kernelHeight, kw = g.kernelWidth, sw = g.strideWidth
    let yTable = ws.yTable.pointer, xTable = ws.xTable.pointer, interior = ws.xInterior.pointer
    for cl in 0..<Cg {
        let c = group * Cg + cl
        for a in 0..<kh {
            for b in 0..<kw {
                let row = panel + ((cl * kh + a) * kw + b) * count
                let lo = interior[2 * b], hi = interior[2 * b + 1]
                let offset = b * g.dilationWidth - g.padLeft
                let xt = xTable + b * outW
                var q = start, j = 0
                while j < count {
                    // One run of output pixels along a row of one image.
                    let n = q / hw, rem = q - n * hw
                    let oy = rem / outW, ox0 = rem - oy * outW
                    let ox1 = min(outW, ox0 + (count - j))
                    let dst = row + (j - ox0)          // dst[ox] for ox in ox0 ..< ox1
                    let y = Int(yTable[a * outH + oy])
                    if y < 0 {
                        (dst + ox0).update(repeating: 0, count: ox1 - ox0)
                    } else {
                        let src = x + ((n * C + c) * H + y) * W
                        let i0 = min(max(lo, ox0), ox1), i1 = min(max(hi, i0), ox1)
                        var ox = ox0
                        while ox < i0 { let s = Int(xt[ox]); dst[ox] = s < 0 ? 0 : src[s]; ox += 1 }
                        if sw == 1 {
                            (dst + i0).update(from: src + (i0 + offset), count: i1 - i0)
                        } else {
                            var o = i0
                            while o < i1 { dst[o] = src[o * sw + offset]; o += 1 }
                        }
                        ox = i1
                        while ox < ox1 { let s = Int(xt[ox]); dst[ox] = s < 0 ? 0 : src[s]; ox += 1 }
                    }
                    j += ox1 - ox0
                    q += ox1 - ox0
                }
            }
        }
    }
}

/// The adjoint of `im2col`: adds each panel entry into the input position it
/// was read from (`gradInput` is (N, C, H, W)). Padded positions of the
/// reflect / replicate / circular modes route their gradient to the source
/// pixel they copied; zero padding drops it.
public func col2im(panel: UnsafePointer<Float>, geometry g: Conv2DGeometry, group: Int,
                   pixelStart start: Int, pixelCount count: Int,
                   gradInput dx: UnsafeMutablePointer<Float>, workspace ws: ConvolutionWorkspace) {
    let hw = g.outPixels, outW = g.outWidth, outH = g.outHeight
    let H = g.height, W = g.width, C = g.inChannels, Cg = g.groupInChannels
    let kh = g.kernelHeight, kw = g.kernelWidth, sw = g.strideWidth
    let yTable = ws.yTable.pointer, xTable = ws.xTable.pointer, interior = ws.xInterior.pointer
    for cl in 0..<Cg {
        let c = group * Cg + cl
        for a in 0..<kh {
            for b in 0..<kw {
                let row = panel + ((cl * kh + a) * kw + b) * count
                let lo = interior[2 * b], hi = interior[2 * b + 1]
                let offset = b * g.dilationWidth - g.padLeft
                let xt = xTable + b * outW
                var q = start, j = 0
                while j < count {
                    let n = q / hw, rem = q - n * hw
                    let oy = rem / outW, ox0 = rem - oy * outW
                    let ox1 = min(outW, ox0 + (count - j))
                    let src = row + (j - ox0)          // src[ox] for ox in ox0 ..< ox1
                    let y = Int(yTable[a * outH + oy])
                    if y >= 0 {
                        let dst = dx + ((n * C + c) * H + y) * W
                        let i0 = min(max(lo, ox0), ox1), i1 = min(max(hi, i0), ox1)
                        var ox = ox0
                        while ox < i0 { let s = Int(xt[ox]); if s >= 0 { dst[s] += src[ox] }; ox += 1 }
                        if sw == 1 {
                            let d = dst + offset
                            var o = i0
                            while o < i1 { d[o] += src[o]; o += 1 }
                        } else {
                            var o = i0
                            while o < i1 { dst[o * sw + offset] += src[o]; o += 1 }
                        }
                        ox = i1
                        while ox < ox1 { let s = Int(xt[ox]); if s >= 0 { dst[s] += src[ox] }; ox += 1 }
                    }
                    j += ox1 - ox0
                    q += ox1 - ox0
                }
            }
        }
    }
}
