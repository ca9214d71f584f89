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

/// One row segment of a block: output pixels ox0 ..< ox1 of row oy of image n,
/// at panel columns j ..< j + (ox1 − ox0).
@usableFromInline
struct PixelRun {
    var n: Int, oy: Int, ox0: Int, ox1: Int, j: Int
}

/// Calls `body` for each row segment of output pixels start ..< start + count,
/// in order. One division for the first pixel; later segments advance
/// incrementally (row by row, image by image).
@inline(__always)
func forEachPixelRun(start: Int, count: Int, outPixels hw: Int, outWidth outW: Int, outHeight outH: Int,
                     _ body: (PixelRun) -> Void) {
    var n = start / hw
    let rem = start - n * hw
    var oy = rem / outW
    var ox0 = rem - oy * outW
    var j = 0
    while j < count {
        let ox1 = min(outW, ox0 + (count - j))
        body(PixelRun(n: n, oy: oy, ox0: ox0, ox1: ox1, j: j))
        j += ox1 - ox0
        ox0 = 0
        oy += 1
        if oy == outH { oy = 0; n += 1 }
    }
}

/// dst[i] = src[i] for i < count; an inline loop, since runs are usually one
/// short output row (8–32 floats) where a memmove call costs more than the copy.
@inline(__always)
func copyFloats(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, _ count: Int) {
    if count >= 64 { dst.update(from: src, count: count); return }
    var i = 0
    while i + 8 <= count {
        UnsafeMutableRawPointer(dst + i).storeBytes(
            of: UnsafeRawPointer(src + i).loadUnaligned(as: SIMD8<Float>.self), as: SIMD8<Float>.self)
        i += 8
    }
    if i + 4 <= count {
        UnsafeMutableRawPointer(dst + i).storeBytes(
            of: UnsafeRawPointer(src + i).loadUnaligned(as: SIMD4<Float>.self), as: SIMD4<Float>.self)
        i += 4
    }
    while i < count { dst[i] = src[i]; i += 1 }
}

/// dst[i] += src[i] for i < count.
@inline(__always)
func addFloats(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, _ count: Int) {
    var i = 0
    while i + 8 <= count {
        let d = UnsafeMutableRawPointer(dst + i)
        let v = d.loadUnaligned(as: SIMD8<Float>.self) + UnsafeRawPointer(src + i).loadUnaligned(as: SIMD8<Float>.self)
        d.storeBytes(of: v, as: SIMD8<Float>.self)
        i += 8
    }
    if i + 4 <= count {
        let d = UnsafeMutableRawPointer(dst + i)
        let v = d.loadUnaligned(as: SIMD4<Float>.self) + UnsafeRawPointer(src + i).loadUnaligned(as: SIMD4<Float>.self)
        d.storeBytes(of: v, as: SIMD4<Float>.self)
        i += 4
    }
    while i < count { dst[i] += src[i]; i += 1 }
}

/// dst[2i] += src[i] for i < count: 8 at a time as one 16-float read-modify-write of dst
/// that adds +0 to the odd lanes between (dst[2i + 1] for i < count − 1, which are left as
/// they were: a sum that starts from +0 is never −0), the last 8 element by element.
@inline(__always)
func addFloatsStride2(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, _ count: Int) {
    var i = 0
    while i + 8 < count {
        let s = UnsafeRawPointer(src + i).loadUnaligned(as: SIMD8<Float>.self)
        let d = UnsafeMutableRawPointer(dst + 2 * i)
        var v = d.loadUnaligned(as: SIMD16<Float>.self)
        v += SIMD16<Float>(s[0], 0, s[1], 0, s[2], 0, s[3], 0, s[4], 0, s[5], 0, s[6], 0, s[7], 0)
        d.storeBytes(of: v, as: SIMD16<Float>.self)
        i += 8
    }
    while i < count { dst[2 &* i] += src[i]; i &+= 1 }
}

/// dst[i] = src[i·stride] for i < count, where `available` floats from src are readable:
/// with stride 2, 8 outputs per 16-float load while the load stays inside them.
@inline(__always)
func gatherStrided(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, count: Int, stride: Int,
                   available: Int) {
    var i = 0
    if stride == 2 {
        while i + 8 <= count && 2 * i + 16 <= available {
            let v = UnsafeRawPointer(src + 2 * i).loadUnaligned(as: SIMD16<Float>.self)
            UnsafeMutableRawPointer(dst + i).storeBytes(
                of: SIMD8<Float>(v[0], v[2], v[4], v[6], v[8], v[10], v[12], v[14]), as: SIMD8<Float>.self)
            i += 8
        }
    }
    while i < count { dst[i] = src[i &* stride]; i &+= 1 }
}

/// One output-row segment of an im2col row: dst[ox] for ox in ox0 ..< ox1 from
/// input row `src` (nil: a padded row, all zeros). Columns inside [lo, hi) read
/// src[ox·sw + offset] directly; the rest go through the padding table xt.
@inline(__always)
func gatherRowSegment(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>?, width: Int, ox0: Int, ox1: Int,
                      lo: Int, hi: Int, offset: Int, sw: Int, xt: UnsafePointer<Int32>) {
    guard let src else {
        (dst + ox0).update(repeating: 0, count: ox1 - ox0)
        return
    }
    let i0 = min(max(lo, ox0), ox1), i1 = min(max(hi, i0), ox1)
    var ox = ox0
    while ox < i0 { let s = Int(xt[ox]); dst[ox] = s < 0 ? 0 : src[s]; ox += 1 }
    if sw == 1 {
        copyFloats(dst + i0, src + (i0 + offset), i1 - i0)
    } else if i1 > i0 {
        let first = i0 * sw + offset   // inside the row: i0 ≥ lo
        gatherStrided(dst + i0, src + first, count: i1 - i0, stride: sw, available: width - first)
    }
    ox = i1
    while ox < ox1 { let s = Int(xt[ox]); dst[ox] = s < 0 ? 0 : src[s]; ox += 1 }
}

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
            let ya = yTable + a * outH
            for b in 0..<kw {
                let row = panel + ((cl * kh + a) * kw + b) * count
                let lo = interior[2 * b], hi = interior[2 * b + 1]
                let offset = b * g.dilationWidth - g.padLeft
                let xt = xTable + b * outW
                forEachPixelRun(start: start, count: count, outPixels: hw, outWidth: outW, outHeight: outH) { r in
                    let y = Int(ya[r.oy])
                    let src: UnsafePointer<Float>? = y < 0 ? nil : x + ((r.n * C + c) * H + y) * W
                    // dst[ox] for ox in ox0 ..< ox1.
                    gatherRowSegment(row + (r.j - r.ox0), src, width: W, ox0: r.ox0, ox1: r.ox1,
                                     lo: lo, hi: hi, offset: offset, sw: sw, xt: xt)
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
            let ya = yTable + a * outH
            for b in 0..<kw {
                let row = panel + ((cl * kh + a) * kw + b) * count
                let lo = interior[2 * b], hi = interior[2 * b + 1]
                let offset = b * g.dilationWidth - g.padLeft
                let xt = xTable + b * outW
                forEachPixelRun(start: start, count: count, outPixels: hw, outWidth: outW, outHeight: outH) { r in
                    let ox0 = r.ox0, ox1 = r.ox1
                    let y = Int(ya[r.oy])
                    if y < 0 { return }
                    let src = row + (r.j - ox0)          // src[ox] for ox in ox0 ..< ox1
                    let dst = dx + ((r.n * C + c) * H + y) * W
                    let i0 = min(max(lo, ox0), ox1), i1 = min(max(hi, i0), ox1)
                    var ox = ox0
                    while ox < i0 { let s = Int(xt[ox]); if s >= 0 { dst[s] += src[ox] }; ox += 1 }
                    if sw == 1 {
                        addFloats(dst + (i0 + offset), src + i0, i1 - i0)
                    } else if sw == 2 {
                        addFloatsStride2(dst + (2 * i0 + offset), src + i0, i1 - i0)
                    } else {
                        let d0 = dst + offset
                        var o = i0
                        while o < i1 { d0[o &* sw] += src[o]; o &+= 1 }
                    }
                    ox = i1
                    while ox < ox1 { let s = Int(xt[ox]); if s >= 0 { dst[s] += src[ox] }; ox += 1 }
                }
            }
        }
    }
}
