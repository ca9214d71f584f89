import CBF16

// Packed im2col: the GEMM's B panels are built straight from the input, so no
// im2col matrix is ever stored and the GEMM does not re-pack one.
//
// The input of one image and group is first copied into a zero-bordered
// "phase plane" stack xs: the padded input (Hp = H + padTop + padBottom,
// Wp = W + padLeft + padRight) split by stride phase, plane (py, px, c) holding
// padded rows py, py + sh, … and columns px, px + sw, … of channel c
// (Hs = ⌈Hp / sh⌉ × Ws = ⌈Wp / sw⌉ each). Borders are written once when the
// buffer is set up; per image only the input's own positions are copied, and
// only the phases some kernel tap reads. Without padding and with stride 1
// the input itself is xs. In phase coordinates every convolution has stride 1,
// so each panel entry is one load:
//   B[r, j] = xs[rowOffset[r] + pixelOffset[j]]
//   rowOffset[r]   = ((py·sw + px)·Cg + c)·Hs·Ws + ⌊a·dh / sh⌋·Ws + ⌊b·dw / sw⌋,
//                    py = a·dh mod sh, px = b·dw mod sw,  r = (c·kh + a)·kw + b
//   pixelOffset[j] = oy·Ws + ox                          j = oy·outW + ox
// and the pixels of one output row are contiguous: a row of a 16-column
// micro-panel is one run (two 8-float copies when outW ≥ 16) or a few (one per
// output row it touches). The runs of every micro-panel are computed once per geometry.
//
// Forward: the weights are packed once per pass (PackedGemmA, one per group)
// and reused for every image: one GEMM per image and group, C = the image's
// NCHW output (Kg × outH·outW), N = outH·outW.
//
// Backward-weights: dW_g += dY (Kg × outH·outW, packed in place) · B (outH·outW × rows),
// B[q, r] = xs[rowOffset[r] + oy·Ws + ox] for q = oy·outW + ox. Along an output row the
// pixels are contiguous in xs for every r, so the Bᵀ-shaped panel is packed with 8×8
// register transposes, 8 pixels of one row at a time (a row's last step may read past its
// end; those panel rows are overwritten by the next row's); 1×1 strided convolutions
// gather them from the input in place (packGatheredTransposedPanel). Reducing over "virtual
// pixels" instead (rows of Ws, dY copied with zero columns, one contiguous run) did
// Ws / outW − 1 more work: 40 % on LeNet-5's 10-wide rows, 29 % on 7×7.
//
// In bf16 (`GemmArithmetic`) both passes pack the same way: the weights / dY are rounded to
// bf16 pairs once per pass / image (PackedGemmABF16), and the fp32 B micro-panels the packers
// write are rounded to bf16 pairs as they are consumed (gemmBF16PackedA). With the native
// kernel most panels skip the fp32 panel: they are rounded to bf16 pairs straight from xs
// (16-pixel runs, or 8-pixel chunks when output rows are a multiple of 8 wide). Where the input
// is copied anyway and output rows are a multiple of 8 wide, the copy itself rounds to bf16
// (`sourceBF16`): the copy writes, and the packers read, half the bytes, and each value is
// rounded once, to the same bits. The portable kernel keeps fp32 planes. Reading the
// NCHW input itself with masked loads for the padding instead of the phase-plane copy was
// measured slower (`bench conv --precision bf16`: 30-60 % on 32- and 16-wide rows, 5-10 % on
// 8-wide ones): the per-load mask and bounds work costs more than the copy it saves.

import CBF16

/// Largest phase-plane input copy (about Cg·Hp·Wp floats) the packed path uses;
/// larger planes (VGG at 224×224 past the first layer) keep the panel path. VGG's
/// 128×112×112 layer (6.8 MB of planes per task) measured about 1.45x faster forward on
/// packed im2col than on the stored panel.
let packedIm2colPlaneLimitBytes = 8 << 20

/// Whether `g` runs through packed im2col: zero (or no) padding and not a
/// 1×1 stride-1 convolution (those read the input directly). 1×1 strided
/// convolutions (ResNet shortcuts) read only every sw-th input pixel, so they
/// skip the phase-plane copy and gather their runs from the input in place
/// (`gatherStride`); with a 16-32 long reduction the copy would cost as much
/// as the arithmetic.
func packedIm2colApplies(_ g: Conv2DGeometry, planeLimitBytes: Int = packedIm2colPlaneLimitBytes) -> Bool {
    let padded = g.padTop + g.padBottom + g.padLeft + g.padRight > 0
    if (g.isPointwise && !pointwiseUsesPackedPlan(g)) || (padded && g.paddingMode != .zeros) { return false }
    let planeBytes = g.groupInChannels * (g.height + g.padTop + g.padBottom + g.strideHeight)
        * (g.width + g.padLeft + g.padRight + g.strideWidth) * MemoryLayout<Float>.stride
    return planeBytes <= planeLimitBytes
}

/// The phase-plane limit of a flipped backward-data (`flippedBackwardDataGeometry`): larger
/// than the forward's, so that VGG's 112×112 and 224×224 layers gather dx from a padded copy
/// of dY (up to 128 × 114 × 114 floats per task) instead of zeroing dx and adding col2im into
/// it, which ran at about half their GEMM's rate.
let flippedBackwardDataPlaneLimitBytes = 16 << 20

/// Whether a 1×1 stride-1 convolution runs its forward (and its backward-data, as the forward
/// of the transposed weights) through packed im2col instead of one plain GEMM per image: on
/// planes under 128 pixels (the last stage of ImageNet networks: 7×7). There a per-image
/// GEMM has 49 columns and re-packs all of its Kg × Cg weights for them (512 × 2048 on
/// ResNet-50's last stage); the plan packs them once per pass and its blocks hold several
/// images (xs = the input itself, no copy: `imagesPerBlock`). 14×14 planes measured no
/// faster this way (196 columns amortise the packing), and the plan's copies of the weights
/// and block outputs cost memory per layer.
func pointwiseUsesPackedPlan(_ g: Conv2DGeometry) -> Bool {
    g.isPointwise && g.outPixels < 128
}

/// Index tables of one geometry, plus the phase-plane input copies of each task.
final class PackedIm2colPlan {
    let geometry: Conv2DGeometry
    /// Size of one phase plane: xs of one group holds sh·sw·Cg planes of Hs × Ws floats.
    let phaseHeight: Int, phaseWidth: Int
    /// False when xs is the input itself (no padding and stride 1, or a 1×1 strided convolution).
    let copiesInput: Bool
    /// 1, or the stride of a 1×1 strided convolution, whose runs are gathered from the
    /// input in place (input pixel (oy·sh, ox·sw) for output pixel (oy, ox)).
    let gatherStride: Int
    /// Whether a gathered run may read stride − 1 floats past its last input pixel: true
    /// when the input width is a multiple of the stride (they are in the same row).
    private var gatherOverreadIsSafe: Bool { geometry.width % geometry.strideWidth == 0 }
    /// usedPhase[py·sw + px]: some kernel tap reads phase (py, px).
    private let usedPhase: [Bool]
    /// rowOffset[r] for r < Cg·kh·kw.
    var rowOffset = GrowableBuffer<Int32>()
    /// Runs of micro-panel s (global within an image) are runStart[s] ..< runStart[s + 1].
    var runStart = GrowableBuffer<Int32>()
    /// Per run: xs offset of its first pixel (pixelOffset), its first column in the
    /// micro-panel, and its length.
    var runSource = GrowableBuffer<Int32>()
    var runColumn = GrowableBuffer<Int32>()
    var runLength = GrowableBuffer<Int32>()
    /// Phase-plane input copies, one per task.
    private var planes: [GrowableBuffer<Float>] = []
    /// The same rounded to bf16, for the passes whose bf16 packers read them
    /// (`forwardPlanesAreBF16`, `backwardWeightsPlanesAreBF16`).
    private var planesBF16: [GrowableBuffer<UInt16>] = []
    /// Backward-weights, per task: dY packed as the GEMM's A operand.
    private var packedGradOutputs: [PackedGemmA] = []
    /// The same rounded to bf16, for a bf16 backward-weights.
    private var packedGradOutputsBF16: [PackedGemmABF16] = []
    /// bf16 backward-weights of small planes (`gradImagesPerGemm` > 1), per task: dY of the
    /// block's images side by side (Kg × images·evenPixels, see `packGradOutputsBF16`)…
    private var gradBlocks: [GrowableBuffer<Float>] = []
    /// … and one zero-bordered phase-plane stack per image of the block (bf16 or fp32 words,
    /// as the single-image path uses `planesBF16` or `planes`).
    private var gradPlanesBF16: [[GrowableBuffer<UInt16>]] = []
    private var gradPlanes: [[GrowableBuffer<Float>]] = []
    /// … and one image's fp32 B panel (evenGradPixels × 32), for the packers without a bf16 form.
    private var gradPanels: [GrowableBuffer<Float>] = []
    /// Packed weights, one per group.
    var packedWeights: [PackedGemmA] = []
    /// The same rounded to bf16, for a bf16 forward.
    var packedWeightsBF16: [PackedGemmABF16] = []
    /// Images per forward GEMM: 1, or several for small planes whose output row count is not
    /// a multiple of the 16-column micro-panel (a 7×7 plane alone fills 49 of 64 columns):
    /// enough for 256 columns, or as many as fit in 400 (at most 8; 7×7: 8 images, 392 columns,
    /// whose last panel wastes less than 294's and whose blocks pay their fixed costs half as often).
    let imagesPerBlock: Int
    /// Floats between consecutive images of one block in xs.
    let imageStride: Int
    /// Per task: the block's output (Kg × imagesPerBlock·outH·outW) when imagesPerBlock > 1.
    private var blockOutputs: [GrowableBuffer<Float>] = []
    /// Whether forward runs with implicit B (`sgemmImplicitB` over virtual pixels, no
    /// packing) instead of packed panels, as the workspace's `ConvolutionPath` says.
    let usesImplicitB: Bool
    /// Per task, with implicit B: the output over virtual pixels, Kg × virtualOutputStride.
    private var virtualOutputs: [GrowableBuffer<Float>] = []
    /// Per task, for the fp32 strided 1×1 forward (`stridedPointwiseForward`): the subsampled
    /// input of a block of images, and the block's output when it holds several images.
    var subsamples: [GrowableBuffer<Float>] = []
    var subsampleOutputs: [GrowableBuffer<Float>] = []
    /// For the bf16 packers, when output rows are a multiple of 8 wide (stride-1 runs):
    /// chunkSource[c] is the xs offset of column 8c of a block (every 8 columns one run);
    /// empty (capacity 0) otherwise.
    var chunkSource = GrowableBuffer<Int32>()

    /// The tables of `g`, whose forward runs with implicit B when `usesImplicitB`
    /// (`ConvolutionPath.Forward.implicitB`; never for 1×1 strided convolutions).
    init(_ g: Conv2DGeometry, usesImplicitB: Bool) {
        geometry = g
        let sh = g.strideHeight, sw = g.strideWidth
        let Hp = g.height + g.padTop + g.padBottom, Wp = g.width + g.padLeft + g.padRight
        phaseHeight = (Hp + sh - 1) / sh
        phaseWidth = (Wp + sw - 1) / sw
        gatherStride = g.isStridedPointwise ? sw : 1
        copiesInput = gatherStride == 1 && (Hp != g.height || Wp != g.width || sh != 1 || sw != 1)
        let kh = g.kernelHeight, kw = g.kernelWidth, Ws = phaseWidth
        let plane = phaseHeight * phaseWidth, Cg = g.groupInChannels
        var used = [Bool](repeating: false, count: sh * sw)
        rowOffset.reserve(g.panelRows)
        for c in 0..<Cg {
            for a in 0..<kh {
                for b in 0..<kw {
                    let y = a * g.dilationHeight, x = b * g.dilationWidth
                    let phase = (y % sh) * sw + x % sw
                    used[phase] = true
                    rowOffset[(c * kh + a) * kw + b] = gatherStride > 1
                        ? Int32(c * g.height * g.width)
                        : Int32((phase * Cg + c) * plane + (y / sh) * Ws + x / sw)
                }
            }
        }
        usedPhase = used
        let NR = GemmBlocking.NR, hw = g.outPixels, outW = g.outWidth
        self.usesImplicitB = usesImplicitB && gatherStride == 1
        imagesPerBlock = self.usesImplicitB || hw % NR == 0 || hw >= 256 ? 1 : min(8, max((256 + hw - 1) / hw, 400 / hw))
        imageStride = copiesInput ? sh * sw * Cg * plane : g.inChannels * g.height * g.width
        let columns = imagesPerBlock * hw
        let panels = (columns + NR - 1) / NR
        runStart.reserve(panels + 1)
        // At most one run per output row a panel touches, plus one.
        let runCapacity = panels * (NR / max(1, min(outW, NR)) + 2)
        runSource.reserve(runCapacity)
        runColumn.reserve(runCapacity)
        runLength.reserve(runCapacity)
        var runs = 0
        // Where the rows of xs are as wide as the output's (1×1 kernels: xs is the input itself),
        // a run goes on through the image's next rows: a 7×7 plane packs one run per panel
        // instead of three (whole 16-float moves, `packPanel`'s common case).
        let contiguousRows = gatherStride == 1 && Ws == outW
        for s in 0..<panels {
            runStart[s] = Int32(runs)
            var j = s * NR
            let end = min(columns, j + NR)
            while j < end {
                let image = j / hw, pixel = j - image * hw
                let oy = pixel / outW, ox = pixel - oy * outW
                let length = min(contiguousRows ? hw - pixel : outW - ox, end - j)
                let source = gatherStride > 1
                    ? Int32(image * imageStride + oy * sh * g.width + ox * sw)
                    : Int32(image * imageStride + oy * Ws + ox)
                runSource[runs] = source
                runColumn[runs] = Int32(j - s * NR)
                runLength[runs] = Int32(length)
                runs += 1
                j += length
            }
        }
        runStart[panels] = Int32(runs)
        if gatherStride == 1 && outW % 8 == 0 {
            chunkSource.reserve(columns / 8)
            for c in 0..<(columns / 8) {
                let image = 8 * c / hw, pixel = 8 * c - image * hw
                let oy = pixel / outW, ox = pixel - oy * outW
                chunkSource[c] = Int32(image * imageStride + oy * Ws + ox)
            }
        }
    }

    /// Bytes of the tables, input copies and packed weights.
    var bytes: Int {
        rowOffset.bytes + runStart.bytes + runSource.bytes + runColumn.bytes + runLength.bytes + chunkSource.bytes
            + planes.reduce(0) { $0 + $1.bytes } + planesBF16.reduce(0) { $0 + $1.bytes }
            + packedWeights.reduce(0) { $0 + $1.storage.bytes }
            + packedWeightsBF16.reduce(0) { $0 + $1.storage.bytes }
            + packedGradOutputs.reduce(0) { $0 + $1.storage.bytes }
            + packedGradOutputsBF16.reduce(0) { $0 + $1.storage.bytes }
            + blockOutputs.reduce(0) { $0 + $1.bytes } + virtualOutputs.reduce(0) { $0 + $1.bytes }
            + gradBlocks.reduce(0) { $0 + $1.bytes } + gradPanels.reduce(0) { $0 + $1.bytes }
            + gradPlanesBF16.joined().reduce(0) { $0 + $1.bytes } + gradPlanes.joined().reduce(0) { $0 + $1.bytes }
            + subsamples.reduce(0) { $0 + $1.bytes } + subsampleOutputs.reduce(0) { $0 + $1.bytes }
    }

    /// Row stride of a virtual output: the virtual pixels rounded up to whole micro-tiles.
    var virtualOutputStride: Int { (virtualPixels + GemmBlocking.NR - 1) / GemmBlocking.NR * GemmBlocking.NR }

    /// Virtual-output buffer of task t (after `reserveVirtualOutputs`).
    func virtualOutput(_ t: Int) -> UnsafeMutablePointer<Float> { virtualOutputs[t].pointer }

    /// Makes sure tasks 0 ..< tasks have a virtual-output buffer (implicit B only).
    func reserveVirtualOutputs(_ tasks: Int) {
        guard usesImplicitB else { return }
        while virtualOutputs.count < tasks {
            var buffer = GrowableBuffer<Float>()
            buffer.reserve(geometry.groupOutChannels * virtualOutputStride)
            virtualOutputs.append(buffer)
        }
    }

    /// Block-output buffer of task t.
    func blockOutput(_ t: Int) -> UnsafeMutablePointer<Float> { blockOutputs[t].pointer }

    /// Makes sure tasks 0 ..< tasks have a block-output buffer (when blocks hold several images).
    func reserveBlockOutputs(_ tasks: Int, handoff: Bool = false) {
        guard imagesPerBlock > 1 || handoff else { return }
        while blockOutputs.count < tasks {
            var buffer = GrowableBuffer<Float>()
            buffer.reserve(geometry.groupOutChannels * imagesPerBlock * geometry.outPixels)
            blockOutputs.append(buffer)
        }
    }

    /// Where the zero row of a phase-plane buffer starts (see `reservePlanes`).
    var zeroRowOffset: Int {
        let g = geometry
        return imagesPerBlock * g.strideHeight * g.strideWidth * g.groupInChannels * phaseHeight * phaseWidth
            + 32 + g.kernelWidth * g.dilationWidth
    }

    /// Virtual pixels of one image (outH rows of Ws): implicit-B forward computes them all.
    var virtualPixels: Int { geometry.outHeight * phaseWidth }

    /// Makes sure tasks 0 ..< tasks have a zero-bordered phase-plane stack (backward-weights
    /// always copies: its 8-pixel steps read a few floats past a row, and past the image).
    /// With `bf16`, the stacks hold bf16 words (`sourceBF16`) instead.
    func reservePlanes(_ tasks: Int, always: Bool = false, bf16: Bool = false) {
        guard copiesInput || always else { return }
        // Slack past the end for reads past the last row, then a zero row of V floats
        // that stands in for the missing rows of a partial Bᵀ micro-panel.
        let count = zeroRowOffset + virtualPixels + 64
        while bf16 && planesBF16.count < tasks {
            var plane = GrowableBuffer<UInt16>()
            plane.reserve(count)
            plane.pointer.update(repeating: 0, count: count)
            planesBF16.append(plane)
        }
        while !bf16 && planes.count < tasks {
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

    /// Packs each group's weights from the weights `w` of the 1×1 convolution whose
    /// backward-data this plan's geometry computes (`flippedBackwardDataGeometry`): that
    /// flip is W_gᵀ per group, so packing W_g (Cg × Kg here: rows × Kg of the original)
    /// transposed gives the bits `packWeights` gives on the flipped copy, without the copy.
    func packTransposedPointwiseWeights(_ w: UnsafePointer<Float>) {
        let g = geometry, Kg = g.groupOutChannels, rows = g.panelRows
        precondition(g.kernelHeight == 1 && g.kernelWidth == 1, "packTransposedPointwiseWeights: \(g.kernelHeight)×\(g.kernelWidth) kernel")
        while packedWeights.count < g.groups { packedWeights.append(PackedGemmA()) }
        for grp in 0..<g.groups {
            // The original's group grp: rows (its Kg) × Kg (its Cg), stored row-major.
            packedWeights[grp].pack(.transposed, m: Kg, k: rows, a: w + grp * Kg * rows, lda: Kg)
        }
    }

    /// Packs each group's weights from the weights `w` of the convolution whose backward-data
    /// this plan's geometry computes (`flippedBackwardDataGeometry`, any kernel): the bits
    /// `packWeights` gives on `flipWeightsForBackwardData`'s copy, without the copy.
    func packFlippedWeights(_ w: UnsafePointer<Float>) {
        let g = geometry, Kg = g.groupOutChannels, rows = g.panelRows
        while packedWeights.count < g.groups { packedWeights.append(PackedGemmA()) }
        for grp in 0..<g.groups {
            // The original's group grp: rows / taps output channels × Kg input channels × taps.
            packedWeights[grp].packFlippedKernel(m: Kg, k: rows, taps: g.kernelHeight * g.kernelWidth,
                                                 w: w + grp * Kg * rows)
        }
    }

    /// Packs each group's weights (Kg × Cg·kh·kw) rounded to bf16 for this pass.
    func packWeightsBF16(_ w: UnsafePointer<Float>, kernel: BF16Kernel) {
        let g = geometry, Kg = g.groupOutChannels, rows = g.panelRows
        while packedWeightsBF16.count < g.groups { packedWeightsBF16.append(PackedGemmABF16()) }
        for grp in 0..<g.groups {
            packedWeightsBF16[grp].pack(.none, m: Kg, k: rows, a: w + grp * Kg * rows, lda: rows, kernel: kernel)
        }
    }

    /// Makes sure tasks 0 ..< tasks have a packed-dY operand for backward-weights (and, for a
    /// bf16 one of small planes, the buffers of `gradImagesPerGemm` images).
    func reservePackedGradOutputs(_ tasks: Int, arithmetic: GemmArithmetic = .fp32) {
        switch arithmetic.precision {
        case .fp32: while packedGradOutputs.count < tasks { packedGradOutputs.append(PackedGemmA()) }
        case .bf16:
            while packedGradOutputsBF16.count < tasks { packedGradOutputsBF16.append(PackedGemmABF16()) }
            let images = gradImagesPerGemm
            guard images > 1 else { return }
            let count = zeroRowOffset + virtualPixels + 64
            let bf16 = backwardWeightsPlanesAreBF16(arithmetic)
            while gradBlocks.count < tasks {
                var block = GrowableBuffer<Float>()
                block.reserve(geometry.groupOutChannels * images * evenGradPixels)
                gradBlocks.append(block)
                var panel = GrowableBuffer<Float>()
                panel.reserve(evenGradPixels * 32)
                gradPanels.append(panel)
                gradPlanesBF16.append([])
                gradPlanes.append([])
            }
            guard gatherStride == 1 else { return }
            for t in 0..<tasks {
                while bf16 && gradPlanesBF16[t].count < images {
                    var plane = GrowableBuffer<UInt16>()
                    plane.reserve(count)
                    plane.pointer.update(repeating: 0, count: count)
                    gradPlanesBF16[t].append(plane)
                }
                while !bf16 && gradPlanes[t].count < images {
                    var plane = GrowableBuffer<Float>()
                    plane.reserve(count)
                    plane.pointer.update(repeating: 0, count: count)
                    gradPlanes[t].append(plane)
                }
            }
        }
    }

    /// Output pixels of one image rounded up to whole bf16 pairs: in a bf16 backward-weights of
    /// several images, each image's pixels start on a pair, so no pair mixes two images.
    var evenGradPixels: Int { (geometry.outPixels + 1) / 2 * 2 }

    /// Images per bf16 backward-weights GEMM: as many whole images as fit one K step
    /// (BF16GemmBlocking.KC), so dW is read and written once per block of images, not once per
    /// image; 1 when two do not fit. When Kg exceeds one row block (BF16GemmBlocking.MC) the
    /// B panel is read once per row block, and a K step of the whole KC cost more than the dW
    /// traffic it saved (resnet18's 512-channel 7×7 layers): there blocks stop at 256 pixels.
    /// Blocks of 2 or 3 images (16×16 planes) measured no faster than one image at a time
    /// (the copy of dY into one operand eats the saving), so those stay at 1.
    var gradImagesPerGemm: Int {
        let images = (geometry.groupOutChannels > BF16GemmBlocking.MC ? BF16GemmBlocking.KC / 2 : BF16GemmBlocking.KC)
            / evenGradPixels
        return images >= 4 ? images : 1
    }

    /// dY of images n ..< n + count, group grp, as one A operand (Kg × count·evenGradPixels,
    /// image i's pixels in columns i·evenGradPixels ..<, a zero column after an odd count)
    /// rounded to bf16 pairs.
    func packGradOutputsBF16(_ dy: UnsafePointer<Float>, images n: Int, count: Int, group grp: Int, task t: Int,
                             kernel: BF16Kernel) -> PackedGemmABF16 {
        let g = geometry, hw = g.outPixels, Kg = g.groupOutChannels, even = evenGradPixels
        let k = count * even, block = gradBlocks[t].pointer
        for i in 0..<count {
            let src = dy + ((n + i) * g.outChannels + grp * Kg) * hw
            for m in 0..<Kg {
                let row = block + m * k + i * even
                row.update(from: src + m * hw, count: hw)
                if even > hw { row[hw] = 0 }
            }
        }
        let packed = packedGradOutputsBF16[t]
        packed.pack(.none, m: Kg, k: k, a: block, lda: k, kernel: kernel)
        return packed
    }

    /// xs of images n ..< n + count (≤ imagesPerBlock), group grp, for task t: the
    /// input itself, or their phase planes copied into the task's zero-bordered
    /// buffer, imageStride apart (always with `copy`, then count is 1).
    func source(_ x: UnsafePointer<Float>, image n: Int, count: Int = 1, group grp: Int, task t: Int,
                copy: Bool = false) -> UnsafePointer<Float> {
        let g = geometry, H = g.height, W = g.width, Cg = g.groupInChannels
        let first = x + (n * g.inChannels + grp * Cg) * H * W
        guard copiesInput || copy else { return first }
        for i in 0..<count {
            copyPhasePlanes(first + i * g.inChannels * H * W, to: planes[t].pointer + i * imageStride)
        }
        return UnsafePointer(planes[t].pointer)
    }

    /// Copies one image's group (Cg × H × W at `image`) into its phase planes at xs.
    private func copyPhasePlanes(_ image: UnsafePointer<Float>, to xs: UnsafeMutablePointer<Float>) {
        let g = geometry, H = g.height, W = g.width, Cg = g.groupInChannels
        let sh = g.strideHeight, sw = g.strideWidth
        let Ws = phaseWidth, plane = phaseHeight * Ws
        if sh == 1 && sw == 1 {
            // Stride 1: one phase, each input row copied to its padded place by a loop with
            // nothing else in it (the general loop's per-row phase bookkeeping cost more than
            // copying a 7-float row).
            let first = xs + g.padTop * Ws + g.padLeft, total = Cg * H * W
            for c in 0..<Cg {
                let src = image + c * H * W, dst = first + c * plane
                for yy in 0..<H {
                    copyPaddedRow(dst + yy * Ws, src + yy * W, W, rightPadding: g.padRight,
                                  readable: total - (c * H + yy) * W)
                }
            }
            return
        }
        withUnsafeTemporaryAllocation(of: Int.self, capacity: 3 * sw) { columns in
            // Per column phase px (row-independent, so no divisions in the row loop): the first
            // input column xx with (xx + padLeft) mod sw == px, its phase column, and the count.
            for px in 0..<sw {
                let first = ((px - g.padLeft) % sw + sw) % sw
                columns[3 * px] = first
                columns[3 * px + 1] = (first + g.padLeft) / sw
                columns[3 * px + 2] = first < W ? (W - first + sw - 1) / sw : 0
            }
            usedPhase.withUnsafeBufferPointer { used in
                for c in 0..<Cg {
                    let src = image + c * H * W
                    var py = g.padTop % sh, phaseRow = g.padTop / sh
                    for yy in 0..<H {
                        let row = src + yy * W
                        if sw == 2 && used[py * 2] && used[py * 2 + 1] {
                            // Both column phases: split even and odd input columns in one pass.
                            let rowBase = xs + (py * 2 * Cg + c) * plane + phaseRow * Ws
                            let evenPhase = columns[0]   // the phase of input column 0: padLeft mod 2
                            deinterleaveRow(row, count: W,
                                            even: rowBase + evenPhase * Cg * plane + columns[3 * evenPhase + 1],
                                            odd: rowBase + (1 - evenPhase) * Cg * plane + columns[3 * (1 - evenPhase) + 1])
                        } else {
                            for px in 0..<sw where used[py * sw + px] {
                                let first = columns[3 * px], count = columns[3 * px + 2]
                                let dst = xs + ((py * sw + px) * Cg + c) * plane + phaseRow * Ws + columns[3 * px + 1]
                                if sw == 1 {
                                    copyPaddedRow(dst, row, W, rightPadding: g.padRight,
                                                  readable: (Cg - c) * H * W - yy * W)
                                } else {
                                    gatherStrided(dst, row + first, count: count, stride: sw, available: W - first)
                                }
                            }
                        }
                        py += 1
                        if py == sh { py = 0; phaseRow += 1 }
                    }
                }
            }
        }
    }

    /// Whether a forward in `precision` with `kernel` copies its input into bf16 phase planes
    /// (`sourceBF16`) and packs from them (`packPanelFromBF16`): with the native kernel, where
    /// the input is copied anyway and output rows are a multiple of 8 wide, so that every
    /// micro-panel, the narrow last one included, is whole 8-pixel runs. The copy writes, and
    /// the packers read, half the bytes of fp32 planes; each value is rounded once, to the
    /// bits the fp32 planes' packers give it, so the results are the same.
    func forwardPlanesAreBF16(_ precision: ComputePrecision, kernel: BF16Kernel) -> Bool {
        precision == .bf16 && kernel == .native && copiesInput && !usesImplicitB && chunkSource.capacity > 0
            && CNN_BF16_NR == 32
    }

    /// The same for backward-weights (`packTransposedPanelFromBF16`), which always copies: also
    /// needs every K step of its GEMM (the pixels of one image, split in equal even steps of at
    /// most BF16GemmBlocking.KC as `PackedGemmABF16.pack` splits K) to be whole 8-pixel chunks.
    func backwardWeightsPlanesAreBF16(_ arithmetic: GemmArithmetic) -> Bool {
        guard arithmetic.precision == .bf16 && arithmetic.bf16Kernel == .native && gatherStride == 1
            && chunkSource.capacity > 0 && CNN_BF16_NR == 32 else { return false }
        let hw = geometry.outPixels, steps = (hw + BF16GemmBlocking.KC - 1) / BF16GemmBlocking.KC
        return ((hw + steps - 1) / steps + 1) / 2 * 2 % 8 == 0
    }

    /// `source` (always a copy) into the task's bf16 phase planes: each value rounded to bf16 as
    /// it is copied (`bf16Bits`), or copied from `inputBF16` when that is set.
    func sourceBF16(_ x: UnsafePointer<Float>, image n: Int, count: Int = 1, group grp: Int, task t: Int)
        -> UnsafePointer<UInt16> {
        let g = geometry, H = g.height, W = g.width, Cg = g.groupInChannels
        let offset = (n * g.inChannels + grp * Cg) * H * W
        for i in 0..<count {
            if let bits = inputBF16 {
                copyPhasePlanesBF16(bits: bits + offset + i * g.inChannels * H * W, to: planesBF16[t].pointer + i * imageStride)
            } else {
                copyPhasePlanesBF16(x + offset + i * g.inChannels * H * W, to: planesBF16[t].pointer + i * imageStride)
            }
        }
        return UnsafePointer(planesBF16[t].pointer)
    }

    /// The input of the bf16 forward as bf16 bits (N, C, H, W), already rounded as
    /// `copyPhasePlanesBF16` rounds (a convolution's backward-data taking dL/dy handed off as
    /// bf16, `BF16GradHandoff`): the phase planes are copied from it and x is not read. Stride 1
    /// along W only (`takesBF16Input`). Set around one pass.
    var inputBF16: UnsafePointer<UInt16>?

    /// Whether the forward can take `inputBF16`: bf16 phase planes (`forwardPlanesAreBF16`), its
    /// row copy (stride 1 along W), no implicit B.
    var takesBF16Input: Bool {
        forwardPlanesAreBF16(.bf16, kernel: .native) && geometry.strideWidth == 1
    }

    /// The stride-1 row copy of `copyPhasePlanesBF16` from words already rounded.
    private func copyPhasePlanesBF16(bits image: UnsafePointer<UInt16>, to xs: UnsafeMutablePointer<UInt16>) {
        let g = geometry, H = g.height, W = g.width, Cg = g.groupInChannels, sh = g.strideHeight
        precondition(g.strideWidth == 1, "bf16 input planes: stride 1 along W only")
        let Ws = phaseWidth, plane = phaseHeight * Ws
        usedPhase.withUnsafeBufferPointer { used in
            for py in 0..<sh where used[py] {
                let first = ((py - g.padTop) % sh + sh) % sh
                guard first < H else { continue }
                let rows = (H - first + sh - 1) / sh, phaseRow = (first + g.padTop) / sh
                cnn_bf16_copy_rows(Cg, rows, W, image + first * W, H * W, sh * W,
                                   xs + phaseRow * Ws + py * Cg * plane + g.padLeft, plane, Ws)
            }
        }
    }

    /// `copyPhasePlanes` into bf16 planes: per row phase, all channels' rows in one call (stride 1
    /// in x, or both column phases of stride 2); other strides element by element.
    private func copyPhasePlanesBF16(_ image: UnsafePointer<Float>, to xs: UnsafeMutablePointer<UInt16>) {
        let g = geometry, H = g.height, W = g.width, Cg = g.groupInChannels
        let sh = g.strideHeight, sw = g.strideWidth
        let Ws = phaseWidth, plane = phaseHeight * Ws
        usedPhase.withUnsafeBufferPointer { used in
            for py in 0..<sh {
                // Input rows first, first + sh, … (padded row ≡ py mod sh) fill phase rows from phaseRow.
                let first = ((py - g.padTop) % sh + sh) % sh
                guard first < H else { continue }
                let rows = (H - first + sh - 1) / sh, phaseRow = (first + g.padTop) / sh
                let rowSrc = image + first * W
                let base = xs + phaseRow * Ws
                if sw == 1 {
                    if used[py] {
                        cnn_bf16_round_rows(Cg, rows, W, rowSrc, H * W, sh * W, base + py * Cg * plane + g.padLeft, plane, Ws)
                    }
                } else if sw == 2 && used[py * 2] && used[py * 2 + 1] {
                    // Even input columns are in column phase padLeft mod 2, odd ones in the other.
                    let evenPhase = g.padLeft % 2
                    cnn_bf16_round_rows_deinterleave(
                        Cg, rows, W, rowSrc, H * W, sh * W,
                        base + (py * 2 + evenPhase) * Cg * plane + g.padLeft / 2,
                        base + (py * 2 + 1 - evenPhase) * Cg * plane + (g.padLeft + 1) / 2, plane, Ws)
                } else {
                    for c in 0..<Cg {
                        for px in 0..<sw where used[py * sw + px] {
                            let fx = ((px - g.padLeft) % sw + sw) % sw
                            let count = fx < W ? (W - fx + sw - 1) / sw : 0
                            let dst = base + ((py * sw + px) * Cg + c) * plane + (fx + g.padLeft) / sw
                            for r in 0..<rows {
                                let row = rowSrc + c * H * W + r * sh * W + fx
                                for i in 0..<count { dst[r * Ws + i] = bf16Bits(row[i * sw]) }
                            }
                        }
                    }
                }
            }
        }
    }

    /// One bf16 micro-panel (`GemmBF16PanelPacker`: rows r0 ..< r0 + kc, columns j0 ..< j0 + width,
    /// width ≤ 32 a multiple of 8, the rest zero) from bf16 phase planes (`forwardPlanesAreBF16`):
    /// cnn_bf16_pack_runs_h when each 16-column half is one run, else cnn_bf16_pack_chunks_h.
    @inline(__always)
    func packPanelFromBF16(_ xs: UnsafePointer<UInt16>, r0: Int, kc: Int, j0: Int, width: Int,
                           dst: UnsafeMutablePointer<UInt32>) -> Bool {
        let offsets = rowOffset.pointer + r0
        if width == 32 && GemmBlocking.NR == 16 {
            let starts = runStart.pointer, g0 = j0 / 16
            let first = Int(starts[g0]), middle = Int(starts[g0 + 1]), last = Int(starts[g0 + 2])
            if middle - first == 1 && last - middle == 1 {
                cnn_bf16_pack_runs_h(kc, xs + Int(runSource[first]), xs + Int(runSource[middle]), offsets, dst)
                return true
            }
        }
        cnn_bf16_pack_chunks_h(kc, Int32((width + 7) / 8), xs, chunkSource.pointer + j0 / 8, offsets, dst)
        return true
    }

    /// `packTransposedPanelBF16` from bf16 phase planes (`backwardWeightsPlanesAreBF16`, which
    /// makes q0 and kc multiples of 8).
    @inline(__always)
    func packTransposedPanelFromBF16(_ xs: UnsafePointer<UInt16>, q0: Int, kc: Int, r0: Int, width: Int,
                                     dst: UnsafeMutablePointer<UInt32>) -> Bool {
        precondition(q0 % 8 == 0 && kc % 8 == 0, "bf16 phase planes need 8-pixel K steps (q0 \(q0), kc \(kc))")
        if width == 32 {
            cnn_bf16_pack_chunks_t_h(kc, xs, chunkSource.pointer + q0 / 8, rowOffset.pointer + r0, dst)
            return true
        }
        // Missing columns read the zero row.
        return withUnsafeTemporaryAllocation(of: Int32.self, capacity: 32) { offsets in
            for j in 0..<32 { offsets[j] = j < width ? rowOffset[r0 + j] : Int32(zeroRowOffset) }
            cnn_bf16_pack_chunks_t_h(kc, xs, chunkSource.pointer + q0 / 8, offsets.baseAddress!, dst)
            return true
        }
    }

    /// `packPanel`'s common case straight into one bf16 micro-panel (32 columns from j0, a
    /// multiple of 32): when each of its two 16-column halves is one run of a single output
    /// row (stride 1), cnn_bf16_pack_runs rounds the rows to bf16 pairs as it reads them,
    /// with no fp32 panel in between; when output rows are a multiple of 8 wide,
    /// cnn_bf16_pack_chunks does the same from four 8-column runs. Returns false (nothing
    /// written) otherwise.
    @inline(__always)
    func packPanelBF16(_ xs: UnsafePointer<Float>, r0: Int, kc: Int, j0: Int, width: Int,
                       dst: UnsafeMutablePointer<UInt32>) -> Bool {
        guard gatherStride == 1 && width == 32 && GemmBlocking.NR == 16 && CNN_BF16_NR == 32 else { return false }
        let starts = runStart.pointer, g0 = j0 / 16
        let first = Int(starts[g0]), middle = Int(starts[g0 + 1]), last = Int(starts[g0 + 2])
        if middle - first == 1 && last - middle == 1 {
            cnn_bf16_pack_runs(kc, xs + Int(runSource[first]), xs + Int(runSource[middle]), rowOffset.pointer + r0, dst)
            return true
        }
        guard chunkSource.capacity > 0 else { return false }
        cnn_bf16_pack_chunks(kc, xs, chunkSource.pointer + j0 / 8, rowOffset.pointer + r0, dst)
        return true
    }

    /// `packTransposedPanel` straight into one bf16 micro-panel (panel rows r0 ..< r0 + width
    /// as its columns, width ≤ 32, the rest zero; output pixels q0 ..< q0 + kc as K) when
    /// output rows are a multiple of 8 wide and q0, kc multiples of 8: each pair of pixels is
    /// two neighbours of one output row, rounded by cnn_bf16_pack_chunks_t as it reads them.
    /// Returns false (nothing written) otherwise.
    @inline(__always)
    func packTransposedPanelBF16(_ xs: UnsafePointer<Float>, q0: Int, kc: Int, r0: Int, width: Int,
                                 dst: UnsafeMutablePointer<UInt32>) -> Bool {
        guard gatherStride == 1 && chunkSource.capacity > 0 && q0 % 8 == 0 && kc % 8 == 0 && CNN_BF16_NR == 32 else {
            return false
        }
        if width == 32 {
            cnn_bf16_pack_chunks_t(kc, xs, chunkSource.pointer + q0 / 8, rowOffset.pointer + r0, dst)
            return true
        }
        // Missing columns read the zero row.
        return withUnsafeTemporaryAllocation(of: Int32.self, capacity: 32) { offsets in
            for j in 0..<32 { offsets[j] = j < width ? rowOffset[r0 + j] : Int32(zeroRowOffset) }
            cnn_bf16_pack_chunks_t(kc, xs, chunkSource.pointer + q0 / 8, offsets.baseAddress!, dst)
            return true
        }
    }

    /// Writes rows r0 ..< r0 + kc, columns j0 ..< j0 + nc of the image's panel
    /// (xs = `source`) as NR-column micro-panels (the GemmPanelPacker contract).
    @inline(__always)
    func packPanel(_ xs: UnsafePointer<Float>, r0: Int, kc: Int, j0: Int, nc: Int, dst: UnsafeMutablePointer<Float>) {
        let NR = GemmBlocking.NR
        let offsets = rowOffset.pointer + r0
        let starts = runStart.pointer, sources = runSource.pointer
        let columns = runColumn.pointer, lengths = runLength.pointer
        let panels = (nc + NR - 1) / NR
        for s in 0..<panels {
            let global = j0 / NR + s
            let first = Int(starts[global]), last = Int(starts[global + 1])
            let out = dst + s * NR * kc
            let valid = min(NR, nc - s * NR)
            if gatherStride == 1 && last - first == 1 && valid == NR && NR == 16 {
                // The common case: one output row covers the whole micro-panel.
                let base = xs + Int(sources[first])
                for p in 0..<kc {
                    let src = UnsafeRawPointer(base + Int(offsets[p]))
                    let o = UnsafeMutableRawPointer(out + p * 16)
                    o.storeBytes(of: src.loadUnaligned(as: SIMD8<Float>.self), as: SIMD8<Float>.self)
                    o.storeBytes(of: src.loadUnaligned(fromByteOffset: 32, as: SIMD8<Float>.self),
                                 toByteOffset: 32, as: SIMD8<Float>.self)
                }
                continue
            }
            // Several runs (narrow output rows, a row boundary inside the panel, or gathered
            // 1×1 strided runs): one pass over the panel rows per run. A run followed by
            // another in the panel may copy whole 8-float vectors (fewer moves for 7-, 10-,
            // 14-wide rows): its extra columns belong to a later run, which overwrites them,
            // as long as they stay inside the panel row and the read stays inside the
            // phase-plane copy.
            for q in first..<last {
                // Runs come in column order; a block of fewer images than the plan's ends before
                // the table does, and reading on would read past the input (1×1: xs is x itself).
                let col = Int(columns[q])
                if col >= valid { break }
                let base = xs + Int(sources[q]), length = min(Int(lengths[q]), valid - col)
                let column = out + col
                let vectors = (length + 7) / 8
                if gatherStride > 1 {
                    let readable = gatherOverreadIsSafe ? length * gatherStride : (length - 1) * gatherStride + 1
                    for p in 0..<kc {
                        gatherStrided(column + p * NR, base + Int(offsets[p]), count: length, stride: gatherStride,
                                      available: readable)
                    }
                } else if copiesInput && q + 1 < last && col + 8 * vectors <= NR {
                    for p in 0..<kc { copyVectors(column + p * NR, base + Int(offsets[p]), vectors) }
                } else {
                    for p in 0..<kc { copyShortRun(column + p * NR, base + Int(offsets[p]), length) }
                }
            }
            if valid < NR {
                for p in 0..<kc { (out + p * NR + valid).update(repeating: 0, count: NR - valid) }
            }
        }
    }
}

extension PackedIm2colPlan {
    /// Packs dY of image n, group grp (Kg × outH·outW, read in place) as the A operand of
    /// backward-weights: the reduction runs over the real output pixels.
    func packGradOutput(_ dy: UnsafePointer<Float>, image n: Int, group grp: Int, task t: Int) -> PackedGemmA {
        let g = geometry, hw = g.outPixels, Kg = g.groupOutChannels
        let packed = packedGradOutputs[t]
        packed.pack(.none, m: Kg, k: hw, a: dy + (n * g.outChannels + grp * Kg) * hw, lda: hw)
        return packed
    }

    /// `packGradOutput` rounded to bf16 pairs along the pixels, for a bf16 backward-weights.
    func packGradOutputBF16(_ dy: UnsafePointer<Float>, bits: UnsafePointer<UInt16>? = nil, image n: Int, group grp: Int,
                            task t: Int, kernel: BF16Kernel) -> PackedGemmABF16 {
        let g = geometry, hw = g.outPixels, Kg = g.groupOutChannels
        let packed = packedGradOutputsBF16[t], offset = (n * g.outChannels + grp * Kg) * hw
        if let bits {
            packed.packBits(m: Kg, k: hw, a: bits + offset, lda: hw)
        } else {
            packed.pack(.none, m: Kg, k: hw, a: dy + offset, lda: hw, kernel: kernel)
        }
        return packed
    }

    /// Writes B[q, r] = xs[rowOffset[r] + oy·Ws + ox] for output pixels q = oy·outW + ox in
    /// q0 ..< q0 + kc and r in r0 ..< r0 + nc as NR-column micro-panels (the GemmPanelPacker
    /// contract, with the pixels as the reduction). Within an output row, pixels are
    /// contiguous in xs, so 8 at a time are transposed in registers for 8 r; a row's last
    /// step may take pixels past its end: their panel rows are overwritten by the next row's
    /// first step, and at the end of the K block the step goes through a scratch tile.
    @inline(__always)
    func packTransposedPanel(_ xs: UnsafePointer<Float>, q0: Int, kc: Int, r0: Int, nc: Int,
                             dst: UnsafeMutablePointer<Float>) {
        let NR = GemmBlocking.NR, outW = geometry.outWidth, Ws = phaseWidth
        let panels = (nc + NR - 1) / NR
        withUnsafeTemporaryAllocation(of: Int32.self, capacity: NR) { partial in
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 8 * NR) { scratch in
            for s in 0..<panels {
                var offsets = UnsafePointer(rowOffset.pointer + r0 + s * NR)
                let out = dst + s * NR * kc
                let valid = min(NR, nc - s * NR)
                if valid < NR {
                    // Missing rows read the zero row (first layers: 9, 25 or 27 rows).
                    for j in 0..<NR { partial[j] = j < valid ? offsets[j] : Int32(zeroRowOffset) }
                    offsets = UnsafePointer(partial.baseAddress!)
                }
                var p = 0, oy = q0 / outW, ox = q0 - oy * outW
                while p < kc {
                    let run = min(outW - ox, kc - p)
                    let pixels = xs + oy * Ws + ox
                    var i = 0
                    while i < run {
                        if p + i + 8 <= kc {
                            for h in 0..<(NR / 8) {
                                transpose8x8(pixels + i, offsets + 8 * h, out + (p + i) * NR + 8 * h, dstStride: NR)
                            }
                        } else {
                            let tile = scratch.baseAddress!
                            for h in 0..<(NR / 8) { transpose8x8(pixels + i, offsets + 8 * h, tile + 8 * h, dstStride: NR) }
                            (out + (p + i) * NR).update(from: tile, count: (kc - p - i) * NR)
                        }
                        i += 8
                    }
                    p += run
                    ox = 0
                    oy += 1
                }
            }
        }
        }
    }
}

extension PackedIm2colPlan {
    /// `packTransposedPanel` for 1×1 strided convolutions, read from the input in place
    /// (xs = the image's group): B[q, r] = xs[rowOffset[r] + oy·sh·W + ox·sw]. With stride 2,
    /// 8 pixels of an output row per 16-float load, 8 channels at a time transposed in registers.
    @inline(__always)
    func packGatheredTransposedPanel(_ xs: UnsafePointer<Float>, q0: Int, kc: Int, r0: Int, nc: Int,
                                     dst: UnsafeMutablePointer<Float>) {
        let NR = GemmBlocking.NR, g = geometry, outW = g.outWidth, W = g.width
        let sh = g.strideHeight, sw = gatherStride
        let panels = (nc + NR - 1) / NR
        for s in 0..<panels {
            let offsets = rowOffset.pointer + r0 + s * NR
            let out = dst + s * NR * kc
            let valid = min(NR, nc - s * NR)
            @inline(__always) func gathered(_ j: Int, _ pixel: Int) -> SIMD8<Float> {
                guard j < valid else { return SIMD8<Float>() }
                let v = UnsafeRawPointer(xs + Int(offsets[j]) + pixel).loadUnaligned(as: SIMD16<Float>.self)
                return SIMD8(v[0], v[2], v[4], v[6], v[8], v[10], v[12], v[14])
            }
            var p = 0, oy = q0 / outW, ox = q0 - oy * outW
            while p < kc {
                let run = min(outW - ox, kc - p)
                let first = oy * sh * W + ox * sw
                var i = 0
                while sw == 2 && i + 8 <= run && 2 * (ox + i) + 16 <= W {
                    let pixel = first + 2 * i
                    for h in 0..<(NR / 8) {
                        let j = 8 * h
                        transposeRows(gathered(j, pixel), gathered(j + 1, pixel), gathered(j + 2, pixel),
                                      gathered(j + 3, pixel), gathered(j + 4, pixel), gathered(j + 5, pixel),
                                      gathered(j + 6, pixel), gathered(j + 7, pixel), out + (p + i) * NR + j, dstStride: NR)
                    }
                    i += 8
                }
                while i < run {
                    let o = out + (p + i) * NR
                    for j in 0..<NR { o[j] = j < valid ? xs[Int(offsets[j]) + first + i * sw] : 0 }
                    i += 1
                }
                p += run
                ox = 0
                oy += 1
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
    transposeRows(row(0), row(1), row(2), row(3), row(4), row(5), row(6), row(7), dst, dstStride: dstStride)
}

/// dst[q·dstStride + i] = r_i[q] for i, q < 8. The same network as Gemm.swift's
/// `transpose8x8Rows`, kept here on purpose: calling that one from this file made
/// LeNet-5's 6-channel forward (which does not transpose) measurably slower side by side,
/// a code-layout effect of the whole-module build, not of the transpose.
@inline(__always)
private func transposeRows(_ r0: SIMD8<Float>, _ r1: SIMD8<Float>, _ r2: SIMD8<Float>, _ r3: SIMD8<Float>,
                           _ r4: SIMD8<Float>, _ r5: SIMD8<Float>, _ r6: SIMD8<Float>, _ r7: SIMD8<Float>,
                           _ dst: UnsafeMutablePointer<Float>, dstStride: Int) {
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

/// Backward-weights over images `images` for task t, accumulating into `dw` (K × Cg·kh·kw).
func packedIm2colBackwardWeights(
    _ images: Range<Int>, _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>,
    _ dw: UnsafeMutablePointer<Float>, _ plan: PackedIm2colPlan, task t: Int, arithmetic: GemmArithmetic = .fp32,
    dyBits: UnsafePointer<UInt16>? = nil
) {
    let g = plan.geometry, Kg = g.groupOutChannels, rows = g.panelRows
    let bf16Planes = plan.backwardWeightsPlanesAreBF16(arithmetic)
    let block = plan.gradImagesPerGemm
    precondition(dyBits == nil || (arithmetic.precision == .bf16 && arithmetic.bf16Kernel == .native && block == 1),
                 "bf16 dL/dy bits: the per-image bf16 pass with the native kernel only")
    if arithmetic.precision == .bf16 && block > 1 && images.count > 1 && plan.gatherStride == 1
        && (!bf16Planes || g.outPixels % 8 == 0) {
        // Blocks of equal size (16 images of 7×7 in 2 GEMMs of 8, not 10 + 6).
        let blocks = (images.count + block - 1) / block
        for b in 0..<blocks {
            let r = taskRange(b, of: images.count, tasks: blocks)
            for grp in 0..<g.groups {
                plan.backwardWeightsBF16Block(x, dy, images: images.lowerBound + r.lowerBound, count: r.count,
                                              group: grp, dw: dw + grp * Kg * rows, task: t, arithmetic: arithmetic)
            }
        }
        return
    }
    for n in images {
        for grp in 0..<g.groups {
            if bf16Planes {
                let xs = plan.sourceBF16(x, image: n, group: grp, task: t)
                let a = plan.packGradOutputBF16(dy, bits: dyBits, image: n, group: grp, task: t, kernel: arithmetic.bf16Kernel)
                gemmBF16PackedA(a, n: rows, beta: 1, c: dw + grp * Kg * rows, ldc: rows,
                                packBF16: { q0, kc, r0, width, dst in
                                    plan.packTransposedPanelFromBF16(xs, q0: q0, kc: kc, r0: r0, width: width, dst: dst)
                                }) { _, _, _, _, _ in
                    preconditionFailure("bf16 phase planes: every panel is packed from them")
                }
                continue
            }
            // 1×1 strided: B gathered from the input in place; else transposed from phase planes.
            let gathered = plan.gatherStride > 1
            let xs = gathered ? plan.source(x, image: n, group: grp, task: t)
                              : plan.source(x, image: n, group: grp, task: t, copy: true)
            let packB: GemmPanelPacker = { q0, kc, r0, nc, dst in
                if gathered {
                    plan.packGatheredTransposedPanel(xs, q0: q0, kc: kc, r0: r0, nc: nc, dst: dst)
                } else {
                    plan.packTransposedPanel(xs, q0: q0, kc: kc, r0: r0, nc: nc, dst: dst)
                }
            }
            switch arithmetic.precision {
            case .fp32:
                let a = plan.packGradOutput(dy, image: n, group: grp, task: t)
                sgemmPackedA(a, n: rows, beta: 1, c: dw + grp * Kg * rows, ldc: rows, packB: packB)
            case .bf16:
                let a = plan.packGradOutputBF16(dy, bits: dyBits, image: n, group: grp, task: t, kernel: arithmetic.bf16Kernel)
                gemmBF16PackedA(a, n: rows, beta: 1, c: dw + grp * Kg * rows, ldc: rows,
                                packBF16: gathered ? nil : { q0, kc, r0, width, dst in
                                    plan.packTransposedPanelBF16(xs, q0: q0, kc: kc, r0: r0, width: width, dst: dst)
                                }, packB: packB)
            }
        }
    }
}

/// even[i] = src[2·i], odd[i] = src[2·i + 1] for the count floats of src.
@inline(__always)
private func deinterleaveRow(_ src: UnsafePointer<Float>, count: Int,
                             even: UnsafeMutablePointer<Float>, odd: UnsafeMutablePointer<Float>) {
    var i = 0
    while i + 16 <= count {
        let v = UnsafeRawPointer(src + i).loadUnaligned(as: SIMD16<Float>.self)
        UnsafeMutableRawPointer(even + i / 2).storeBytes(
            of: SIMD8<Float>(v[0], v[2], v[4], v[6], v[8], v[10], v[12], v[14]), as: SIMD8<Float>.self)
        UnsafeMutableRawPointer(odd + i / 2).storeBytes(
            of: SIMD8<Float>(v[1], v[3], v[5], v[7], v[9], v[11], v[13], v[15]), as: SIMD8<Float>.self)
        i += 16
    }
    while i < count {
        if i & 1 == 0 { even[i / 2] = src[i] } else { odd[i / 2] = src[i] }
        i += 1
    }
}

/// dst[i] = src[i] for i < 8 · vectors (1 or 2).
@inline(__always)
private func copyVectors(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, _ vectors: Int) {
    let s = UnsafeRawPointer(src), d = UnsafeMutableRawPointer(dst)
    d.storeBytes(of: s.loadUnaligned(as: SIMD8<Float>.self), as: SIMD8<Float>.self)
    if vectors > 1 {
        d.storeBytes(of: s.loadUnaligned(fromByteOffset: 32, as: SIMD8<Float>.self), toByteOffset: 32, as: SIMD8<Float>.self)
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

/// Forward over images `images` for task t through packed im2col (the plan's
/// weights are already packed): y = conv(x, w) + bias; or, with `handoff` (bf16, native
/// kernel), y untouched and the output handed off as bf16 (see `BF16OutputHandoff`).
func packedIm2colForward(
    _ images: Range<Int>, _ x: UnsafePointer<Float>, _ bias: UnsafePointer<Float>?,
    _ y: UnsafeMutablePointer<Float>, _ plan: PackedIm2colPlan, task t: Int, precision: ComputePrecision = .fp32,
    handoff: BF16OutputHandoff? = nil
) {
    let g = plan.geometry, hw = g.outPixels, K = g.outChannels, Kg = g.groupOutChannels
    let bf16Planes = precision == .bf16 && plan.forwardPlanesAreBF16(precision, kernel: plan.packedWeightsBF16[0].kernel)
    // Blocks of equal size (8 images of 7×7 at 6 per block: 4 + 4, not 6 + 2).
    let blocks = (images.count + plan.imagesPerBlock - 1) / plan.imagesPerBlock
    let perBlock = blocks > 0 ? (images.count + blocks - 1) / blocks : 1
    var n = images.lowerBound
    while n < images.upperBound {
        let count = min(perBlock, images.upperBound - n)
        for grp in 0..<g.groups {
            let columns = count * hw
            // One image: straight into its NCHW output; several, or a handoff: through the
            // block buffer (a handoff's fp32 output then never leaves the cache).
            let out = plan.imagesPerBlock == 1 && handoff == nil ? y + (n * K + grp * Kg) * hw : plan.blockOutput(t)
            if bf16Planes {
                let xs = plan.sourceBF16(x, image: n, count: count, group: grp, task: t)
                gemmBF16PackedA(plan.packedWeightsBF16[grp], n: columns, beta: 0, c: out, ldc: columns,
                                packBF16: { r0, kc, j0, width, dst in
                                    plan.packPanelFromBF16(xs, r0: r0, kc: kc, j0: j0, width: width, dst: dst)
                                }) { _, _, _, _, _ in
                    preconditionFailure("bf16 phase planes: every panel is packed from them")
                }
            } else {
                let xs = plan.source(x, image: n, count: count, group: grp, task: t)
                switch precision {
                case .fp32:
                    sgemmPackedA(plan.packedWeights[grp], n: columns, beta: 0, c: out, ldc: columns) { r0, kc, j0, nc, dst in
                        plan.packPanel(xs, r0: r0, kc: kc, j0: j0, nc: nc, dst: dst)
                    }
                case .bf16:
                    gemmBF16PackedA(plan.packedWeightsBF16[grp], n: columns, beta: 0, c: out, ldc: columns,
                                    packBF16: { r0, kc, j0, width, dst in
                                        plan.packPanelBF16(xs, r0: r0, kc: kc, j0: j0, width: width, dst: dst)
                                    }) {
                        r0, kc, j0, nc, dst in
                        plan.packPanel(xs, r0: r0, kc: kc, j0: j0, nc: nc, dst: dst)
                    }
                }
            }
            if let handoff {
                for i in 0..<count {
                    for k in 0..<Kg {
                        let plane = (n + i) * K + grp * Kg + k
                        cnn_bf16_round_plane_moments(hw, out + k * columns + i * hw, bias.map { $0 + grp * Kg + k },
                                                     handoff.rectify ? 1 : 0, handoff.bits + plane * hw,
                                                     handoff.planeSums + plane, handoff.planeSquares + plane)
                    }
                }
                continue
            }
            if plan.imagesPerBlock > 1 {
                for i in 0..<count {
                    for k in 0..<Kg {
                        copyFloats(y + ((n + i) * K + grp * Kg + k) * hw, out + k * columns + i * hw, hw)
                    }
                }
            }
            if let bias {
                for i in 0..<count { addBias(bias + grp * Kg, to: y + ((n + i) * K + grp * Kg) * hw, rows: Kg, count: hw, ld: hw) }
            }
        }
        n += count
    }
}

/// A bf16 convolution's output handed straight to the BatchNorm after it, which keeps its
/// input as bf16 (`batchNormRoundBF16ChannelMoments`): per plane p = (image, channel) of
/// (N, K, outPixels), v = output + bias (max(·, +0) with `rectify`, the ReLU between them
/// fused into the BatchNorm) rounded to `bits`, and the plane's Σv and Σv² (the C kernel's
/// lanes and tree) in `planeSums[p]` / `planeSquares[p]`. The BatchNorm adds the planes in
/// image order: the same bits as its own pass over an fp32 output, without that output's
/// round trip through memory (written by the convolution, read back by the BatchNorm).
/// Only the packed-im2col forward with the native bf16 kernel hands off
/// (`convolution2DForward` says whether it did); other paths write y as usual.
public struct BF16OutputHandoff {
    public let bits: UnsafeMutablePointer<UInt16>
    public let planeSums: UnsafeMutablePointer<Double>
    public let planeSquares: UnsafeMutablePointer<Double>
    public let rectify: Bool

    public init(bits: UnsafeMutablePointer<UInt16>, planeSums: UnsafeMutablePointer<Double>,
                planeSquares: UnsafeMutablePointer<Double>, rectify: Bool) {
        self.bits = bits
        self.planeSums = planeSums
        self.planeSquares = planeSquares
        self.rectify = rectify
    }
}

/// Whether a forward pass of `g` is faster with implicit B than with packed panels
/// (`override`, when given, decides instead: `bench conv --implicit-b`).
/// Implicit B skips packing but computes Ws − outW extra columns per row (Ws the phase-plane
/// width), copies the output once more, and loads each B row as two unaligned cache lines
/// once per row panel of A. Measured side by side with `bench conv`, it wins only where
/// packing splits every micro-panel into several runs (output rows not a multiple of 16
/// wide) and little is wasted (lenet5/0 forward, fashion-cnn/4 backward-data as a flipped
/// forward); it loses with ≥ 64 output channels, a reduction of 9, and on 7×7 / 8×8 planes
/// (22-25 % extra columns).
func implicitForwardPays(_ g: Conv2DGeometry, override: Bool? = nil) -> Bool {
    // 1×1 stride 1: its packed panels are whole runs already; implicit B would only add the copy.
    if g.isPointwise { return false }
    if let override { return override }
    let Ws = (g.width + g.padLeft + g.padRight + g.strideWidth - 1) / g.strideWidth
    guard g.panelRows >= 16 && g.groupOutChannels <= 32 && (Ws - g.outWidth) * 8 <= Ws else { return false }
    // Fewer than 4 output channels (backward-data of 1- and 3-channel first layers): a
    // packed panel would feed a single, mostly empty micro-tile.
    return g.outWidth % GemmBlocking.NR != 0 || g.groupOutChannels < 4
}

/// Forward over images `images` for task t with implicit B: one GEMM per image and
/// group over its virtual pixels (outH rows of Ws), then the outW real columns of
/// each row copied to the NCHW output.
func implicitForward(
    _ images: Range<Int>, _ x: UnsafePointer<Float>, _ bias: UnsafePointer<Float>?,
    _ y: UnsafeMutablePointer<Float>, _ plan: PackedIm2colPlan, task t: Int
) {
    let g = plan.geometry, hw = g.outPixels, K = g.outChannels, Kg = g.groupOutChannels
    let outW = g.outWidth, Ws = plan.phaseWidth, stride = plan.virtualOutputStride
    let virtual = plan.virtualOutput(t)
    for n in images {
        for grp in 0..<g.groups {
            let xs = plan.source(x, image: n, group: grp, task: t, copy: true)
            sgemmImplicitB(plan.packedWeights[grp], n: plan.virtualPixels, b: xs, rowOffsets: plan.rowOffset.pointer,
                           beta: 0, c: virtual, ldc: stride)
            let out = y + (n * K + grp * Kg) * hw
            for k in 0..<Kg {
                for oy in 0..<g.outHeight { copyFloats(out + k * hw + oy * outW, virtual + k * stride + oy * Ws, outW) }
            }
            if let bias { addBias(bias + grp * Kg, to: out, rows: Kg, count: hw, ld: hw) }
        }
    }
}

extension PackedIm2colPlan {
    /// bf16 backward-weights of images n ..< n + count (count ≤ `gradImagesPerGemm`), group grp,
    /// as one GEMM with K = count·evenGradPixels, accumulating into dw (Kg × panelRows): A is
    /// their dY side by side (`packGradOutputsBF16`), each B micro-panel the images' transposed
    /// panels one after the other, every image starting on a bf16 pair (a zero pixel after an
    /// odd count, as in A). Needs gatherStride 1; with bf16 planes, outPixels a multiple of 8.
    func backwardWeightsBF16Block(_ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, images n: Int, count: Int,
                                  group grp: Int, dw: UnsafeMutablePointer<Float>, task t: Int,
                                  arithmetic: GemmArithmetic) {
        let g = geometry, H = g.height, W = g.width, Cg = g.groupInChannels, rows = g.panelRows
        let hw = g.outPixels, even = evenGradPixels, k = count * even
        let bf16Planes = backwardWeightsPlanesAreBF16(arithmetic)
        let first = x + (n * g.inChannels + grp * Cg) * H * W, imageFloats = g.inChannels * H * W
        for i in 0..<count {
            if bf16Planes {
                copyPhasePlanesBF16(first + i * imageFloats, to: gradPlanesBF16[t][i].pointer)
            } else {
                copyPhasePlanes(first + i * imageFloats, to: gradPlanes[t][i].pointer)
            }
        }
        let a = packGradOutputsBF16(dy, images: n, count: count, group: grp, task: t, kernel: arithmetic.bf16Kernel)
        let scratch = gradPanels[t].pointer, fp32NR = GemmBlocking.NR
        let bf16Words = Int(CNN_BF16_NR)
        let packBF16: GemmBF16PanelPacker? = fp32NR != 16 ? nil : { q0, kc, r0, width, dst in
            precondition(q0 == 0 && kc == k, "one K step per block of images (q0 \(q0), kc \(kc), k \(k))")
            for i in 0..<count {
                let out = dst + i * (even / 2) * bf16Words
                if bf16Planes {
                    _ = self.packTransposedPanelFromBF16(UnsafePointer(self.gradPlanesBF16[t][i].pointer), q0: 0, kc: hw,
                                                         r0: r0, width: width, dst: out)
                    continue
                }
                let xs = UnsafePointer(self.gradPlanes[t][i].pointer)
                if self.packTransposedPanelBF16(xs, q0: 0, kc: hw, r0: r0, width: width, dst: out) { continue }
                self.packTransposedPanel(xs, q0: 0, kc: hw, r0: r0, nc: width, dst: scratch)
                cnn_bf16_from_fp32_panels(hw, (width + fp32NR - 1) / fp32NR, scratch, out)
            }
            return true
        }
        gemmBF16PackedA(a, n: rows, beta: 1, c: dw, ldc: rows, packBF16: packBF16) { q0, kc, r0, nc, dst in
            // The portable kernel's fp32 panels: each image's rows copied to its place in the K block.
            precondition(!bf16Planes && q0 == 0 && kc == k, "fp32 panels of a block of images from fp32 planes")
            let panels = (nc + fp32NR - 1) / fp32NR
            for i in 0..<count {
                self.packTransposedPanel(UnsafePointer(self.gradPlanes[t][i].pointer), q0: 0, kc: hw, r0: r0, nc: nc,
                                         dst: scratch)
                for p in 0..<panels {
                    let to = dst + p * fp32NR * k + i * even * fp32NR
                    to.update(from: scratch + p * fp32NR * hw, count: hw * fp32NR)
                    if even > hw { (to + hw * fp32NR).update(repeating: 0, count: fp32NR) }
                }
            }
        }
    }
}

// MARK: - Strided 1×1 forward through a subsampled copy

/// Output columns the fp32 strided 1×1 forward aims for per GEMM (`subsampleImagesPerGemm`):
/// on 14×14 and 7×7 output planes one image's GEMM has 196 or 49 columns, ragged against the
/// 16- and 32-column tiles; several images side by side fill them.
let subsampleTargetColumns = 512

extension PackedIm2colPlan {
    /// Images per GEMM of `stridedPointwiseForward`: 1 for planes of at least
    /// `subsampleTargetColumns` output pixels (the GEMM writes the image's NCHW output
    /// directly), else enough images for about that many columns (through a block buffer).
    var subsampleImagesPerGemm: Int {
        let hw = geometry.outPixels
        return hw >= subsampleTargetColumns ? 1 : (subsampleTargetColumns + hw - 1) / hw
    }

    /// Makes sure tasks 0 ..< tasks, each with at most `images` images, have the subsample
    /// (Cg × block·outH·outW, plus 8 floats of slack for `subsampleRow`'s over-store) and, for
    /// blocks of several images, block-output buffers (Kg × block·outH·outW) of
    /// `stridedPointwiseForward`, block = min(subsampleImagesPerGemm, images).
    func reserveSubsamples(_ tasks: Int, images: Int) {
        let g = geometry, block = max(1, min(subsampleImagesPerGemm, images)), columns = block * g.outPixels
        while subsamples.count < tasks {
            subsamples.append(GrowableBuffer<Float>())
            subsampleOutputs.append(GrowableBuffer<Float>())
        }
        for t in 0..<tasks {
            subsamples[t].reserve(g.groupInChannels * columns + 8)
            if block > 1 { subsampleOutputs[t].reserve(g.groupOutChannels * columns) }
        }
    }

    /// The fp32 forward of a 1×1 strided convolution over images `images` for task t (the
    /// plan's weights already packed): per block of `subsampleImagesPerGemm` images (blocks of
    /// equal size) and group, the input pixels the convolution reads (every sh-th row, every
    /// sw-th column) are copied once into a contiguous Cg × images·outH·outW matrix, and one
    /// GEMM with plainly packed B panels computes the block. Gathering the strided runs inside
    /// each B micro-panel instead split every panel row into runs of 7-28 floats, mostly moved
    /// one float at a time. Each output's sum runs over the same K steps in the same order as
    /// packed im2col's, so the bits are the same.
    func stridedPointwiseForward(_ images: Range<Int>, _ x: UnsafePointer<Float>, _ bias: UnsafePointer<Float>?,
                                 _ y: UnsafeMutablePointer<Float>, task t: Int) {
        let g = geometry, hw = g.outPixels, K = g.outChannels, Kg = g.groupOutChannels, Cg = g.groupInChannels
        let H = g.height, W = g.width, outH = g.outHeight, outW = g.outWidth
        let sh = g.strideHeight, sw = g.strideWidth, plane = H * W
        let block = subsampleImagesPerGemm
        let blocks = (images.count + block - 1) / block
        let sub = subsamples[t].pointer
        for b in 0..<blocks {
            let r = taskRange(b, of: images.count, tasks: blocks)
            let n = images.lowerBound + r.lowerBound, count = r.count, columns = count * hw
            for grp in 0..<g.groups {
                // Ascending addresses, so each row's over-store is overwritten by the next row.
                for c in 0..<Cg {
                    for i in 0..<count {
                        let src = x + ((n + i) * g.inChannels + grp * Cg + c) * plane
                        let dst = sub + c * columns + i * hw
                        for oy in 0..<outH {
                            subsampleRow(dst + oy * outW, src + oy * sh * W, count: outW, stride: sw,
                                         available: plane - oy * sh * W)
                        }
                    }
                }
                let direct = count == 1
                let out = direct ? y + (n * K + grp * Kg) * hw : subsampleOutputs[t].pointer
                sgemmPackedA(packedWeights[grp], n: columns, beta: 0, c: out, ldc: columns) { r0, kc, j0, nc, dst in
                    packContiguousPanel(kc: kc, nc: nc, src: sub + r0 * columns + j0, ld: columns, dst: dst)
                }
                for i in 0..<count {
                    let yi = y + ((n + i) * K + grp * Kg) * hw
                    if !direct {
                        for k in 0..<Kg { copyFloats(yi + k * hw, out + k * columns + i * hw, hw) }
                    }
                    if let bias { addBias(bias + grp * Kg, to: yi, rows: Kg, count: hw, ld: hw) }
                }
            }
        }
    }
}

/// dst[i] = src[i·stride] for i < count, where `available` floats from src are readable.
/// Stride 2: runs of 8 or more in 16-float loads, the last one overlapping the one before
/// (no read past src[2·count − 1], no store past dst[count − 1]); a shorter run in one
/// load when 16 floats are readable, storing 8 (dst[count ..< 8] gets values the next row
/// overwrites: the caller's buffer needs 8 − count floats of slack after the last row).
@inline(__always)
func subsampleRow(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, count: Int, stride: Int,
                  available: Int) {
    @inline(__always) func evens(_ p: UnsafePointer<Float>) -> SIMD8<Float> {
        let v = UnsafeRawPointer(p).loadUnaligned(as: SIMD16<Float>.self)
        return SIMD8<Float>(v[0], v[2], v[4], v[6], v[8], v[10], v[12], v[14])
    }
    guard stride == 2 else {
        gatherStrided(dst, src, count: count, stride: stride, available: available)
        return
    }
    if count >= 8 {
        var i = 0
        while i + 8 <= count {
            UnsafeMutableRawPointer(dst + i).storeBytes(of: evens(src + 2 * i), as: SIMD8<Float>.self)
            i += 8
        }
        if i < count {
            UnsafeMutableRawPointer(dst + count - 8).storeBytes(of: evens(src + 2 * (count - 8)), as: SIMD8<Float>.self)
        }
    } else if available >= 16 {
        UnsafeMutableRawPointer(dst).storeBytes(of: evens(src), as: SIMD8<Float>.self)
    } else {
        gatherStrided(dst, src, count: count, stride: stride, available: available)
    }
}


/// dst[i] = src[i] for i < count, one input row into a phase-plane row that has `rightPadding`
/// zeros after it, where `readable` floats from src may be read. Rows of 8 or more in whole
/// vectors, the last one overlapping the one before; a shorter row (7×7 planes) in one vector
/// whose lanes past the row are zeroed (landing on the row's own right padding) when the
/// padding and the source allow, else element by element. The short rows of 7×7 and 14×14
/// planes had gone through a 4-float move and scalar moves.
@inline(__always)
func copyPaddedRow(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, _ count: Int, rightPadding: Int,
                   readable: Int) {
    if count >= 64 { dst.update(from: src, count: count); return }
    let s = UnsafeRawPointer(src), d = UnsafeMutableRawPointer(dst)
    if count >= 8 {
        var i = 0
        while i + 8 <= count {
            d.storeBytes(of: s.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self), toByteOffset: 4 * i,
                         as: SIMD8<Float>.self)
            i += 8
        }
        if i < count {
            d.storeBytes(of: s.loadUnaligned(fromByteOffset: 4 * (count - 8), as: SIMD8<Float>.self),
                         toByteOffset: 4 * (count - 8), as: SIMD8<Float>.self)
        }
    } else if count + rightPadding >= 8 && readable >= 8 {
        let v = s.loadUnaligned(as: SIMD8<Float>.self)
        let keep = SIMD8<Int32>(0, 1, 2, 3, 4, 5, 6, 7) .< SIMD8<Int32>(repeating: Int32(count))
        d.storeBytes(of: SIMD8<Float>(repeating: 0).replacing(with: v, where: keep), as: SIMD8<Float>.self)
    } else {
        copyFloats(dst, src, count)
    }
}
