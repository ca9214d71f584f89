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
    }

    /// Makes sure tasks 0 ..< tasks have a zero-bordered plane stack.
    func reservePlanes(_ tasks: Int) {
        guard copiesInput else { return }
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

    /// xp of image n, group grp for task t: the input itself, or its interior
    /// copied into the task's zero-bordered planes.
    func source(_ x: UnsafePointer<Float>, image n: Int, group grp: Int, task t: Int) -> UnsafePointer<Float> {
        let g = geometry, H = g.height, W = g.width, Cg = g.groupInChannels
        let image = x + (n * g.inChannels + grp * Cg) * H * W
        guard copiesInput else { return image }
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
            for p in 0..<kc {
                let row = xp + Int(offsets[p])
                let o = out + p * NR
                for q in first..<last {
                    let src = row + Int(sources[q]), d = o + Int(columns[q]), length = Int(lengths[q])
                    if sw == 1 {
                        copyFloats(d, src, length)
                    } else if sw == 2 {
                        gatherStride2Run(d, src, length)
                    } else {
                        for i in 0..<length { d[i] = src[i * sw] }
                    }
                }
                if valid < NR { (o + valid).update(repeating: 0, count: NR - valid) }
            }
        }
    }
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
