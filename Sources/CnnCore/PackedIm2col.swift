// Packed im2col: the forward GEMM's B panels are built straight from the input,
// so no im2col matrix is ever stored and the GEMM does not re-pack one.
//
// The input of one image and group is first copied into a zero-bordered plane
// stack xp (Cg × Hp × Wp, Hp = H + padTop + padBottom, Wp = W + padLeft + padRight);
// the borders are written once when the buffer is set up and only the interior
// is copied per image. Without padding and with stride 1 the input itself is xp.
// Every panel entry is then one load:
//   B[r, j] = xp[rowOffset[r] + pixelOffset[j]]
//   rowOffset[r]   = (c·Hp + a·dh)·Wp + b·dw        r = (c·kh + a)·kw + b
//   pixelOffset[j] = oy·sh·Wp + ox·sw              j = oy·outW + ox
// Consecutive pixels of one output row are sw apart in xp, so a row of a
// 16-column micro-panel is one run of loads (two 8-float copies for stride 1
// and outW ≥ 16) or a few (one per output row it touches). The runs of every
// micro-panel of an image are computed once per geometry.
//
// The weights are packed once per pass (PackedGemmA, one per group) and
// reused for every image: one GEMM per image and group, C = the image's NCHW
// output (Kg × outH·outW), N = outH·outW.
//
// Backward-weights (stride 1) runs over "virtual pixels" v = oy·Wp + ox with
// ox < Wp instead of ox < outW: then B[v, r] = xp[rowOffset[r] + v] is
// contiguous in v for every r, so the Bᵀ-shaped panel is packed with 8×8
// register transposes, and dY is copied into rows of Wp whose extra columns
// stay zero (they cancel the extra pixels). dW_g += dY_v (Kg × V) · B (V × rows),
// V = outH·Wp; the extra work is Wp/outW − 1 (6 % at 32×32, 29 % at 7×7).

/// Largest zero-bordered input copy (Cg·Hp·Wp floats) the packed path uses;
/// larger planes (VGG at 224×224 past the first layer) keep the panel path.
let packedIm2colPlaneLimitBytes = 4 << 20

/// Whether `g` runs through packed im2col: zero (or no) padding and not a
/// 1×1 convolution (stride 1 reads the input directly; a strided one reads a
/// quarter of its input or less, which the panel path gathers without a copy).
func packedIm2colApplies(_ g: Conv2DGeometry) -> Bool {
    let padded = g.padTop + g.padBottom + g.padLeft + g.padRight > 0
    if g.isPointwise || g.isStridedPointwise || (padded && g.paddingMode != .zeros) { return false }
    let planeBytes = g.groupInChannels * (g.height + g.padTop + g.padBottom)
        * (g.width + g.padLeft + g.padRight) * MemoryLayout<Float>.stride
    return planeBytes <= packedIm2colPlaneLimitBytes
}

/// Index tables of one geometry, plus the zero-bordered input copies of each task.
final class PackedIm2colPlan {
    let geometry: Conv2DGeometry
    /// Padded plane size; xp of one group holds Cg · paddedHeight · paddedWidth floats.
    let paddedHeight: Int, paddedWidth: Int
    /// False when xp is the input itself (no padding, stride 1).
    let copiesInput: Bool
    /// rowOffset[r] for r < Cg·kh·kw.
    var rowOffset = GrowableBuffer<Int32>()
    /// Runs of micro-panel s (global within an image) are runStart[s] ..< runStart[s + 1].
    var runStart = GrowableBuffer<Int32>()
    /// Per run: xp offset of its first pixel (pixelOffset), its first column in the
    /// micro-panel, and its length.
    var runSource = GrowableBuffer<Int32>()
    var runColumn = GrowableBuffer<Int32>()
    var runLength = GrowableBuffer<Int32>()
    /// Zero-bordered input copies, one per task.
    private var planes: [GrowableBuffer<Float>] = []
    /// Backward-weights, per task: dY in rows of Wp (extra columns zero), and its packed form.
    private var gradOutputRows: [GrowableBuffer<Float>] = []
    private var packedGradOutputs: [PackedGemmA] = []
    /// Packed weights, one per group.
    var packedWeights: [PackedGemmA] = []

    init(_ g: Conv2DGeometry) {
        geometry = g
        paddedHeight = g.height + g.padTop + g.padBottom
        paddedWidth = g.width + g.padLeft + g.padRight
        copiesInput = paddedHeight != g.height || paddedWidth != g.width || g.strideWidth != 1
        let kh = g.kernelHeight, kw = g.kernelWidth, Wp = paddedWidth
        rowOffset.reserve(g.panelRows)
        for c in 0..<g.groupInChannels {
            for a in 0..<kh {
                for b in 0..<kw {
                    rowOffset[(c * kh + a) * kw + b] =
                        Int32((c * paddedHeight + a * g.dilationHeight) * Wp + b * g.dilationWidth)
                }
            }
        }
        let NR = GemmBlocking.NR, hw = g.outPixels, outW = g.outWidth
        let panels = (hw + NR - 1) / NR
        runStart.reserve(panels + 1)
        // At most one run per output row a panel touches, plus one.
        let runCapacity = panels * (NR / max(1, min(outW, NR)) + 2)
        runSource.reserve(runCapacity)
        runColumn.reserve(runCapacity)
        runLength.reserve(runCapacity)
        var runs = 0
        for s in 0..<panels {
            runStart[s] = Int32(runs)
            var j = s * NR
            let end = min(hw, j + NR)
            while j < end {
                let oy = j / outW, ox = j - oy * outW
                let length = min(outW - ox, end - j)
                runSource[runs] = Int32(oy * g.strideHeight * Wp + ox * g.strideWidth)
                runColumn[runs] = Int32(j - s * NR)
                runLength[runs] = Int32(length)
                runs += 1
                j += length
            }
        }
        runStart[panels] = Int32(runs)
    }

    /// Bytes of the tables, input copies and packed weights.
    var bytes: Int {
        rowOffset.bytes + runStart.bytes + runSource.bytes + runColumn.bytes + runLength.bytes
            + planes.reduce(0) { $0 + $1.bytes } + packedWeights.reduce(0) { $0 + $1.storage.bytes }
            + gradOutputRows.reduce(0) { $0 + $1.bytes } + packedGradOutputs.reduce(0) { $0 + $1.storage.bytes }
    }

    /// Whether backward-weights can run over virtual pixels (stride 1).
    var supportsBackwardWeights: Bool { geometry.strideHeight == 1 && geometry.strideWidth == 1 }

    /// Virtual pixels of one image in backward-weights: outH rows of Wp.
    var virtualPixels: Int { geometry.outHeight * paddedWidth }

    /// Makes sure tasks 0 ..< tasks have a zero-bordered plane stack (backward-weights
    /// always copies: its virtual pixels read a few floats past the image).
    func reservePlanes(_ tasks: Int, always: Bool = false) {
        guard copiesInput || always else { return }
        // Slack past the end: the stride-2 gather loads 32 floats for 16 pixels.
        let count = geometry.groupInChannels * paddedHeight * paddedWidth + 32
        while planes.count < tasks {
            var plane = GrowableBuffer<Float>()
            plane.reserve(count)
            plane.pointer.update(repeating: 0, count: count)
            planes.append(plane)
        }
    }

    /// Packs each group's weights (Kg × Cg·kh·kw) for this pass.
    func packWeights(_ w: UnsafePointer<Float>) {
        let g = geometry, Kg = g.groupOutChannels, rows = g.panelRows
        while packedWeights.count < g.groups { packedWeights.append(PackedGemmA()) }
        for grp in 0..<g.groups {
            packedWeights[grp].pack(.none, m: Kg, k: rows, a: w + grp * Kg * rows, lda: rows)
        }
    }

    /// Makes sure tasks 0 ..< tasks have backward-weights buffers.
    func reserveGradOutputRows(_ tasks: Int) {
        let count = geometry.groupOutChannels * virtualPixels
        while gradOutputRows.count < tasks {
            var rows = GrowableBuffer<Float>()
            rows.reserve(count)
            rows.pointer.update(repeating: 0, count: count)
            gradOutputRows.append(rows)
            packedGradOutputs.append(PackedGemmA())
        }
    }

    /// xp of image n, group grp for task t: the input itself, or its interior
    /// copied into the task's zero-bordered planes (always with `copy`).
    func source(_ x: UnsafePointer<Float>, image n: Int, group grp: Int, task t: Int,
                copy: Bool = false) -> UnsafePointer<Float> {
        let g = geometry, H = g.height, W = g.width, Cg = g.groupInChannels
        let image = x + (n * g.inChannels + grp * Cg) * H * W
        guard copiesInput || copy else { return image }
        let xp = planes[t].pointer, Wp = paddedWidth
        for c in 0..<Cg {
            let src = image + c * H * W
            let dst = xp + (c * paddedHeight + g.padTop) * Wp + g.padLeft
            for yy in 0..<H { copyFloats(dst + yy * Wp, src + yy * W, W) }
        }
        return UnsafePointer(xp)
    }

    /// Writes rows r0 ..< r0 + kc, columns j0 ..< j0 + nc of the image's panel
    /// (xp = `source`) as NR-column micro-panels (the GemmPanelPacker contract).
    @inline(__always)
    func packPanel(_ xp: UnsafePointer<Float>, r0: Int, kc: Int, j0: Int, nc: Int, dst: UnsafeMutablePointer<Float>) {
        let NR = GemmBlocking.NR, sw = geometry.strideWidth
        let offsets = rowOffset.pointer + r0
        let starts = runStart.pointer, sources = runSource.pointer
        let columns = runColumn.pointer, lengths = runLength.pointer
        let panels = (nc + NR - 1) / NR
        for s in 0..<panels {
            let global = j0 / NR + s
            let first = Int(starts[global]), last = Int(starts[global + 1])
            let out = dst + s * NR * kc
            let valid = min(NR, nc - s * NR)
            if last - first == 1 && valid == NR && sw == 1 && NR == 16 {
                // The common case: one output row covers the whole micro-panel.
                let base = xp + Int(sources[first])
                for p in 0..<kc {
                    let src = UnsafeRawPointer(base + Int(offsets[p]))
                    let o = UnsafeMutableRawPointer(out + p * 16)
                    o.storeBytes(of: src.loadUnaligned(as: SIMD8<Float>.self), as: SIMD8<Float>.self)
                    o.storeBytes(of: src.loadUnaligned(fromByteOffset: 32, as: SIMD8<Float>.self),
                                 toByteOffset: 32, as: SIMD8<Float>.self)
                }
                continue
            }
            // Several runs (narrow output rows, or a row boundary inside the panel): one
            // pass over the panel rows per run, each copy exactly the run's length.
            for q in first..<last {
                let base = xp + Int(sources[q]), column = out + Int(columns[q]), length = Int(lengths[q])
                if sw == 1 {
                    for p in 0..<kc { copyShortRun(column + p * NR, base + Int(offsets[p]), length) }
                } else if sw == 2 {
                    for p in 0..<kc { gatherStride2Run(column + p * NR, base + Int(offsets[p]), length) }
                } else {
                    for p in 0..<kc {
                        let d = column + p * NR, src = base + Int(offsets[p])
                        for i in 0..<length { d[i] = src[i * sw] }
                    }
                }
            }
            if valid < NR {
                for p in 0..<kc { (out + p * NR + valid).update(repeating: 0, count: NR - valid) }
            }
        }
    }
}

extension PackedIm2colPlan {
    /// Packs dY of image n, group grp (Kg × outH·outW) as the A operand of
    /// backward-weights: rows of Wp virtual pixels, extra columns zero.
    func packGradOutput(_ dy: UnsafePointer<Float>, image n: Int, group grp: Int, task t: Int) -> PackedGemmA {
        let g = geometry, hw = g.outPixels, outW = g.outWidth, Kg = g.groupOutChannels
        let V = virtualPixels, Wp = paddedWidth
        let rows = gradOutputRows[t].pointer
        let src = dy + (n * g.outChannels + grp * Kg) * hw
        for k in 0..<Kg {
            for oy in 0..<g.outHeight { copyFloats(rows + k * V + oy * Wp, src + k * hw + oy * outW, outW) }
        }
        let packed = packedGradOutputs[t]
        packed.pack(.none, m: Kg, k: V, a: rows, lda: V)
        return packed
    }

    /// Writes B[v, r] = xp[rowOffset[r] + v] for v in v0 ..< v0 + kc, r in r0 ..< r0 + nc
    /// as NR-column micro-panels (the GemmPanelPacker contract, with the virtual
    /// pixels as the reduction): 8×8 blocks transposed in registers.
    @inline(__always)
    func packTransposedPanel(_ xp: UnsafePointer<Float>, v0: Int, kc: Int, r0: Int, nc: Int,
                             dst: UnsafeMutablePointer<Float>) {
        let NR = GemmBlocking.NR
        let base = xp + v0
        let panels = (nc + NR - 1) / NR
        for s in 0..<panels {
            let offsets = rowOffset.pointer + r0 + s * NR
            let out = dst + s * NR * kc
            let valid = min(NR, nc - s * NR)
            var p = 0
            if valid == NR {
                while p + 8 <= kc {
                    for h in 0..<(NR / 8) {
                        transpose8x8(base + p, offsets + 8 * h, out + p * NR + 8 * h, dstStride: NR)
                    }
                    p += 8
                }
            }
            while p < kc {
                let o = out + p * NR
                for j in 0..<valid { o[j] = base[Int(offsets[j]) + p] }
                for j in valid..<NR { o[j] = 0 }
                p += 1
            }
        }
    }
}

/// dst[q·dstStride + i] = src[offsets[i] + q] for i, q < 8: eight rows at
/// arbitrary offsets, transposed with unpack / shuffle / lane-permute steps.
@inline(__always)
private func transpose8x8(_ src: UnsafePointer<Float>, _ offsets: UnsafePointer<Int32>,
                          _ dst: UnsafeMutablePointer<Float>, dstStride: Int) {
    @inline(__always) func row(_ i: Int) -> SIMD8<Float> {
        UnsafeRawPointer(src + Int(offsets[i])).loadUnaligned(as: SIMD8<Float>.self)
    }
    let r0 = row(0), r1 = row(1), r2 = row(2), r3 = row(3), r4 = row(4), r5 = row(5), r6 = row(6), r7 = row(7)
    // a0 b0 a1 b1 | a4 b4 a5 b5  and  a2 b2 a3 b3 | a6 b6 a7 b7
    @inline(__always) func lo(_ a: SIMD8<Float>, _ b: SIMD8<Float>) -> SIMD8<Float> {
        SIMD8(a[0], b[0], a[1], b[1], a[4], b[4], a[5], b[5])
    }
    @inline(__always) func hi(_ a: SIMD8<Float>, _ b: SIMD8<Float>) -> SIMD8<Float> {
        SIMD8(a[2], b[2], a[3], b[3], a[6], b[6], a[7], b[7])
    }
    // a0 a1 b0 b1 | a4 a5 b4 b5  and  a2 a3 b2 b3 | a6 a7 b6 b7
    @inline(__always) func lo2(_ a: SIMD8<Float>, _ b: SIMD8<Float>) -> SIMD8<Float> {
        SIMD8(a[0], a[1], b[0], b[1], a[4], a[5], b[4], b[5])
    }
    @inline(__always) func hi2(_ a: SIMD8<Float>, _ b: SIMD8<Float>) -> SIMD8<Float> {
        SIMD8(a[2], a[3], b[2], b[3], a[6], a[7], b[6], b[7])
    }
    let t0 = lo(r0, r1), t1 = hi(r0, r1), t2 = lo(r2, r3), t3 = hi(r2, r3)
    let t4 = lo(r4, r5), t5 = hi(r4, r5), t6 = lo(r6, r7), t7 = hi(r6, r7)
    let u0 = lo2(t0, t2), u1 = hi2(t0, t2), u2 = lo2(t1, t3), u3 = hi2(t1, t3)
    let u4 = lo2(t4, t6), u5 = hi2(t4, t6), u6 = lo2(t5, t7), u7 = hi2(t5, t7)
    @inline(__always) func store(_ v: SIMD8<Float>, _ q: Int) {
        UnsafeMutableRawPointer(dst + q * dstStride).storeBytes(of: v, as: SIMD8<Float>.self)
    }
    store(SIMD8(lowHalf: u0.lowHalf, highHalf: u4.lowHalf), 0)
    store(SIMD8(lowHalf: u1.lowHalf, highHalf: u5.lowHalf), 1)
    store(SIMD8(lowHalf: u2.lowHalf, highHalf: u6.lowHalf), 2)
    store(SIMD8(lowHalf: u3.lowHalf, highHalf: u7.lowHalf), 3)
    store(SIMD8(lowHalf: u0.highHalf, highHalf: u4.highHalf), 4)
    store(SIMD8(lowHalf: u1.highHalf, highHalf: u5.highHalf), 5)
    store(SIMD8(lowHalf: u2.highHalf, highHalf: u6.highHalf), 6)
    store(SIMD8(lowHalf: u3.highHalf, highHalf: u7.highHalf), 7)
}

/// Backward-weights over images `images` for task t over virtual pixels,
/// accumulating into `dw` (K × Cg·kh·kw).
func packedIm2colBackwardWeights(
    _ images: Range<Int>, _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>,
    _ dw: UnsafeMutablePointer<Float>, _ plan: PackedIm2colPlan, task t: Int
) {
    let g = plan.geometry, Kg = g.groupOutChannels, rows = g.panelRows
    for n in images {
        for grp in 0..<g.groups {
            let xp = plan.source(x, image: n, group: grp, task: t, copy: true)
            let a = plan.packGradOutput(dy, image: n, group: grp, task: t)
            sgemmPackedA(a, n: rows, beta: 1, c: dw + grp * Kg * rows, ldc: rows) { v0, kc, r0, nc, dst in
                plan.packTransposedPanel(xp, v0: v0, kc: kc, r0: r0, nc: nc, dst: dst)
            }
        }
    }
}

/// dst[i] = src[i] for i < count ≤ 16, in at most four vector / scalar moves.
@inline(__always)
private func copyShortRun(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, _ count: Int) {
    let s = UnsafeRawPointer(src), d = UnsafeMutableRawPointer(dst)
    var i = 0
    if count >= 16 {
        d.storeBytes(of: s.loadUnaligned(as: SIMD8<Float>.self), as: SIMD8<Float>.self)
        d.storeBytes(of: s.loadUnaligned(fromByteOffset: 32, as: SIMD8<Float>.self), toByteOffset: 32, as: SIMD8<Float>.self)
        return
    }
    if count & 8 != 0 {
        d.storeBytes(of: s.loadUnaligned(as: SIMD8<Float>.self), as: SIMD8<Float>.self)
        i = 8
    }
    if count & 4 != 0 {
        d.storeBytes(of: s.loadUnaligned(fromByteOffset: 4 * i, as: SIMD4<Float>.self), toByteOffset: 4 * i, as: SIMD4<Float>.self)
        i += 4
    }
    if count & 2 != 0 {
        d.storeBytes(of: s.loadUnaligned(fromByteOffset: 4 * i, as: SIMD2<Float>.self), toByteOffset: 4 * i, as: SIMD2<Float>.self)
        i += 2
    }
    if count & 1 != 0 { dst[i] = src[i] }
}

/// dst[i] = src[2·i] for i < count ≤ 16: whole 8-output steps load 16 floats,
/// which the zero-bordered copy's slack keeps inside the buffer.
@inline(__always)
private func gatherStride2Run(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, _ count: Int) {
    var i = 0
    while i + 8 <= count {
        let v = UnsafeRawPointer(src + 2 * i).loadUnaligned(as: SIMD16<Float>.self)
        let even = SIMD8<Float>(v[0], v[2], v[4], v[6], v[8], v[10], v[12], v[14])
        UnsafeMutableRawPointer(dst + i).storeBytes(of: even, as: SIMD8<Float>.self)
        i += 8
    }
    while i < count { dst[i] = src[2 * i]; i += 1 }
}

/// Forward over images `images` for task t through packed im2col (the plan's
/// weights are already packed): y = conv(x, w) + bias.
func packedIm2colForward(
    _ images: Range<Int>, _ x: UnsafePointer<Float>, _ bias: UnsafePointer<Float>?,
    _ y: UnsafeMutablePointer<Float>, _ plan: PackedIm2colPlan, task t: Int
) {
    let g = plan.geometry, hw = g.outPixels, K = g.outChannels, Kg = g.groupOutChannels
    for n in images {
        for grp in 0..<g.groups {
            let xp = plan.source(x, image: n, group: grp, task: t)
            let c = y + (n * K + grp * Kg) * hw
            sgemmPackedA(plan.packedWeights[grp], n: hw, beta: 0, c: c, ldc: hw) { r0, kc, j0, nc, dst in
                plan.packPanel(xp, r0: r0, kc: kc, j0: j0, nc: nc, dst: dst)
            }
            if let bias { addBias(bias + grp * Kg, to: c, rows: Kg, count: hw, ld: hw) }
        }
    }
}
