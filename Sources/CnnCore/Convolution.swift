// Blocked im2col convolution: forward, backward-data, backward-weights.
//
// Shapes: x (N, C, H, W); w (K, Cg, kh, kw) viewed as K × (Cg·kh·kw), group g
// owning rows g·Kg ..< (g+1)·Kg; bias (K); y (N, K, outH, outW).
//
// For each block of P output pixels (workspace.forEachBlock) and each group:
//   forward          panel = im2col(x)            (Cg·kh·kw × P, ≤ the panel budget)
//                    Y_blk = W_g · panel           (Kg × P)
//   backward-data    dcol  = W_gᵀ · dY_blk         (Cg·kh·kw × P), dx += col2im(dcol)
//   backward-weights dW_g += dY_blk · panelᵀ       (Kg × Cg·kh·kw, beta = 1)
// A block inside one image reads/writes Y_blk in place in the NCHW tensor
// (row stride outH·outW); a block spanning images (small planes) goes through
// the workspace's block-output buffer and is scattered / gathered per image.
// 1×1, stride-1, unpadded convolutions skip im2col: the NCHW input of one
// image already is the Cg × H·W panel. Backward-data writes each dx row once,
// without zeroing dx or col2im adds, for strided 1×1 convolutions (tile by tile
// as the GEMM finishes them, stridedPointwiseBackwardDataTiles), 3×3 / stride-2 /
// zero pad-1 ones (stride2Kernel3BackwardData, ConvolutionStride2Backward.swift)
// and stride-1 zero-padded ones whose images fit a block (a gather per dx row from
// dcol, stride1GatherBackwardData, ConvolutionStride1Backward.swift).
//
// Threads (ComputeThreads.count = T > 1): the batch is split into T contiguous
// image ranges (workspace.taskCount tasks), each with its own panel and
// block-output buffer; ranges write disjoint parts of y and dx, and
// backward-weights accumulates task t > 0 into its own zeroed partial dW,
// added to dW in task order at the end. With one image the GEMMs themselves
// split instead.

/// y = conv(x, w) + bias. `bias` may be nil. Overwrites `output`; or, with `handoff` where
/// the pass supports it (bf16 packed im2col, native kernel), leaves `output` alone, hands the
/// output off (see `BF16OutputHandoff`) and returns true.
/// With `inputBF16` (where `convolutionTakesBF16Input`), the input is read from those bf16
/// bits (x unused).
@discardableResult
public func convolution2DForward(
    input x: UnsafePointer<Float>, weight w: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
    output y: UnsafeMutablePointer<Float>, batch: Int, geometry g: Conv2DGeometry,
    workspace ws: ConvolutionWorkspace, handoff: BF16OutputHandoff? = nil, inputBF16: UnsafePointer<UInt16>? = nil
) -> Bool {
    guard let inputBF16 else {
        return convolutionForward(input: x, weight: w, bias: bias, output: y, batch: batch, geometry: g, workspace: ws,
                                  flippedFrom: false, handoff: handoff)
    }
    ws.prepare(for: g, batch: batch)
    guard let plan = ws.packedPlan, plan.takesBF16Input else { preconditionFailure("bf16 input: no bf16 input planes") }
    plan.inputBF16 = inputBF16
    defer { plan.inputBF16 = nil }
    return convolutionForward(input: x, weight: w, bias: bias, output: y, batch: batch, geometry: g, workspace: ws,
                              flippedFrom: false, handoff: handoff)
}

/// Whether the forward and backward-weights passes of `g` (bf16 with the native kernel, as
/// `ws` is set) can read their input as bf16 bits (N, C, H, W) rounded as their phase planes
/// round it: packed im2col with bf16 phase planes of stride 1 along W, backward-weights image
/// by image from such planes.
public func convolutionTakesBF16Input(geometry g: Conv2DGeometry, batch: Int, workspace ws: ConvolutionWorkspace) -> Bool {
    guard ws.precision == .bf16 && ws.arithmetic.bf16Kernel == .native && CPUFeatures.current.bf16GEMM else { return false }
    ws.prepare(for: g, batch: batch)
    guard ws.path.forward.usesPackedPlan && ws.path.forward != .subsampledPointwise,
          ws.path.backwardWeights == .packedIm2col, let plan = ws.packedPlan else { return false }
    return plan.takesBF16Input && plan.backwardWeightsPlanesAreBF16(ws.arithmetic) && plan.gradImagesPerGemm == 1
}

/// `convolution2DForward`; with `flippedFrom` (a packed plan, fp32), `w` holds the weights of
/// the convolution whose flipped backward-data `g` is, and the plan packs the flip straight
/// from them (W_gᵀ for a 1×1 kernel) instead of reading a flipped copy (same packed bits).
@discardableResult
func convolutionForward(
    input x: UnsafePointer<Float>, weight w: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
    output y: UnsafeMutablePointer<Float>, batch: Int, geometry g: Conv2DGeometry,
    workspace ws: ConvolutionWorkspace, flippedFrom: Bool, handoff: BF16OutputHandoff? = nil
) -> Bool {
    ws.prepare(for: g, batch: batch)
    let tasks = ws.prepareTasks(min(availableComputeThreads(), batch), gradWeightCount: 0)
    // Packed im2col (with a single image and several threads, its GEMMs split instead).
    if ws.path.forward.usesPackedPlan, let plan = ws.packedPlan {
        if ws.precision == .bf16 {
            plan.packWeightsBF16(w, kernel: ws.arithmetic.bf16Kernel)
        } else if flippedFrom {
            if g.kernelHeight == 1 && g.kernelWidth == 1 {
                plan.packTransposedPointwiseWeights(w)
            } else {
                plan.packFlippedWeights(w)
            }
        } else {
            plan.packWeights(w)
        }
        plan.reservePlanes(tasks, always: plan.usesImplicitB,
                           bf16: plan.forwardPlanesAreBF16(ws.precision, kernel: ws.arithmetic.bf16Kernel))
        let precision = ws.precision
        let subsampled = ws.path.forward == .subsampledPointwise
        let handoff = precision == .bf16 && ws.arithmetic.bf16Kernel == .native && !subsampled && !plan.usesImplicitB
            ? handoff : nil
        plan.reserveBlockOutputs(tasks, handoff: handoff != nil)
        plan.reserveVirtualOutputs(tasks)
        if subsampled { plan.reserveSubsamples(tasks, images: (batch + tasks - 1) / tasks) }
        let pass: (Range<Int>, UnsafePointer<Float>, UnsafePointer<Float>?, UnsafeMutablePointer<Float>,
                   PackedIm2colPlan, Int) -> Void
        if subsampled {
            pass = { $4.stridedPointwiseForward($0, $1, $2, $3, task: $5) }
        } else if plan.usesImplicitB {
            pass = implicitForward
        } else {
            pass = { packedIm2colForward($0, $1, $2, $3, $4, task: $5, precision: precision, handoff: handoff) }
        }
        if tasks == 1 {
            pass(0..<batch, x, bias, y, plan, 0)
        } else {
            parallelTasks(tasks) { t in pass(taskRange(t, of: batch, tasks: tasks), x, bias, y, plan, t) }
        }
        return handoff != nil
    }
    if tasks == 1 {
        forwardImages(0..<batch, x, w, bias, y, g, ws, panel: ws.panel.pointer, blockOutput: ws.blockOutput.base)
        return false
    }
    parallelTasks(tasks) { t in
        forwardImages(taskRange(t, of: batch, tasks: tasks), x, w, bias, y, g, ws,
                      panel: ws.taskPanel(t), blockOutput: ws.taskBlockOutput(t))
    }
    return false
}

/// The forward pass over images `images` with the given scratch buffers.
private func forwardImages(
    _ images: Range<Int>, _ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>, _ bias: UnsafePointer<Float>?,
    _ y: UnsafeMutablePointer<Float>, _ g: Conv2DGeometry, _ ws: ConvolutionWorkspace,
    panel: UnsafeMutablePointer<Float>, blockOutput: UnsafeMutablePointer<Float>?
) {
    let hw = g.outPixels, C = g.inChannels, K = g.outChannels
    let Cg = g.groupInChannels, Kg = g.groupOutChannels, rows = g.panelRows
    if ws.path.forward == .pointwise {
        for n in images {
            for grp in 0..<g.groups {
                gemm(ws.arithmetic, .none, .none, m: Kg, n: hw, k: Cg, alpha: 1, a: w + grp * Kg * rows, lda: rows,
                     b: x + (n * C + grp * Cg) * hw, ldb: hw,
                     beta: 0, c: y + (n * K + grp * Kg) * hw, ldc: hw)
                if let bias { addBias(bias + grp * Kg, to: y + (n * K + grp * Kg) * hw, rows: Kg, count: hw, ld: hw) }
            }
        }
        return
    }
    let direct = ws.path.forward == .panelImageSegments
    ws.forEachBlock(images: images, outPixels: hw) { start, count in
        let n0 = start / hw
        let inside = (start + count - 1) / hw == n0
        for grp in 0..<g.groups {
            im2col(input: x, geometry: g, group: grp, pixelStart: start, pixelCount: count,
                   panel: panel, workspace: ws)
            let wg = w + grp * Kg * rows
            if inside {
                gemm(ws.arithmetic, .none, .none, m: Kg, n: count, k: rows, alpha: 1, a: wg, lda: rows,
                     b: panel, ldb: count, beta: 0,
                     c: y + (n0 * K + grp * Kg) * hw + (start - n0 * hw), ldc: hw)
                // Bias while the block is still in cache.
                if let bias {
                    addBias(bias + grp * Kg, to: y + (n0 * K + grp * Kg) * hw + (start - n0 * hw),
                            rows: Kg, count: count, ld: hw)
                }
            } else if direct {
                // One GEMM per image segment, straight into the NCHW output.
                forEachImageSegment(start: start, count: count, outPixels: hw) { n, p, j, run in
                    let c = y + (n * K + grp * Kg) * hw + p
                    gemm(ws.arithmetic, .none, .none, m: Kg, n: run, k: rows, alpha: 1, a: wg, lda: rows,
                         b: panel + j, ldb: count, beta: 0, c: c, ldc: hw)
                    if let bias { addBias(bias + grp * Kg, to: c, rows: Kg, count: run, ld: hw) }
                }
            } else {
                let out = blockOutput!
                gemm(ws.arithmetic, .none, .none, m: Kg, n: count, k: rows, alpha: 1, a: wg, lda: rows,
                     b: panel, ldb: count, beta: 0, c: out, ldc: count)
                if let bias { addBias(bias + grp * Kg, to: out, rows: Kg, count: count, ld: count) }
                blockTransfer(block: out, tensor: y, channels: K, channelOffset: grp * Kg,
                              channelCount: Kg, outPixels: hw, start: start, count: count, toTensor: true)
            }
        }
    }
}

/// c[r · ld + j] += bias[r] for r < rows, j < count.
@inline(__always)
func addBias(_ bias: UnsafePointer<Float>, to c: UnsafeMutablePointer<Float>, rows: Int, count: Int, ld: Int) {
    for r in 0..<rows {
        let row = c + r * ld, b = bias[r]
        for j in 0..<count { row[j] += b }
    }
}

/// dL/dy of a bf16 convolution handed over as bf16 by the BatchNorm after it (which computes it,
/// `batchNormBF16BackwardInputHandoff`), instead of fp32 that both backward passes would read
/// and round again: `bits` (N, K, outPixels) are dL/dy rounded as the passes round it
/// (`cnn_bf16_round_rows`: nearest even, subnormals flushed), and `planeSums[n·K + k]` =
/// `sumFloats` of plane (n, k) of the fp32 dL/dy, the bias gradient's terms. The same bits as
/// the passes reading the fp32 dL/dy; taken where `convolutionTakesBF16GradOutput` says.
public struct BF16GradHandoff {
    public let bits: UnsafeMutablePointer<UInt16>
    public let planeSums: UnsafeMutablePointer<Float>

    public init(bits: UnsafeMutablePointer<UInt16>, planeSums: UnsafeMutablePointer<Float>) {
        self.bits = bits
        self.planeSums = planeSums
    }
}

/// Whether the backward passes of `g` (bf16 with the native kernel, as `ws` is set) can take
/// dL/dy as a `BF16GradHandoff`: backward-weights on packed im2col image by image, and
/// backward-data (when `inputGradient`) as a packed-im2col forward of the flipped kernel over
/// bf16 phase planes of stride 1 along W.
public func convolutionTakesBF16GradOutput(geometry g: Conv2DGeometry, batch: Int, workspace ws: ConvolutionWorkspace,
                                           inputGradient: Bool) -> Bool {
    guard ws.precision == .bf16 && ws.arithmetic.bf16Kernel == .native && CPUFeatures.current.bf16GEMM else { return false }
    ws.prepare(for: g, batch: batch)
    guard ws.path.backwardWeights == .packedIm2col, let plan = ws.packedPlan, plan.gatherStride == 1,
          plan.gradImagesPerGemm == 1 else { return false }
    guard inputGradient else { return true }
    guard case .flippedForward = ws.path.backwardData, let bg = ws.backwardDataGeometry,
          let bws = ws.backwardDataWorkspace else { return false }
    bws.prepare(for: bg, batch: batch)
    guard bws.path.forward.usesPackedPlan && bws.path.forward != .subsampledPointwise,
          let forward = bws.packedPlan else { return false }
    return forward.takesBF16Input
}

/// dx = ∂L/∂x from dy = ∂L/∂y. Overwrites `gradInput` (N, C, H, W). With `gradOutputBF16`
/// (where `convolutionTakesBF16GradOutput`), dy is read from it instead (dy unused).
public func convolution2DBackwardData(
    gradOutput dy: UnsafePointer<Float>, weight w: UnsafePointer<Float>,
    gradInput dx: UnsafeMutablePointer<Float>, batch: Int, geometry g: Conv2DGeometry,
    workspace ws: ConvolutionWorkspace, gradOutputBF16: BF16GradHandoff? = nil
) {
    ws.prepare(for: g, batch: batch)
    if case .flippedForward = ws.path.backwardData, let bg = ws.backwardDataGeometry, let bws = ws.backwardDataWorkspace {
        bws.prepare(for: bg, batch: batch)
        if bws.precision == .fp32 && bws.path.forward.usesPackedPlan {
            // The flipped weights packed straight from w (for a 1×1 kernel the flip is W_gᵀ):
            // a copy of the whole weight tensor with strided reads cost about a sixth of the
            // pass on 7×7 planes, and packing the copy was a second pass over it.
            convolutionForward(input: dy, weight: w, bias: nil, output: dx, batch: batch, geometry: bg, workspace: bws,
                               flippedFrom: true)
            return
        }
        flipWeightsForBackwardData(w, into: ws.flippedWeights.pointer, geometry: g)
        convolution2DForward(input: dy, weight: ws.flippedWeights.pointer, bias: nil, output: dx,
                             batch: batch, geometry: bg, workspace: bws, inputBF16: gradOutputBF16.map { UnsafePointer($0.bits) })
        return
    }
    precondition(gradOutputBF16 == nil, "bf16 dL/dy: backward-data is not a flipped forward")
    let tasks = ws.prepareTasks(min(availableComputeThreads(), batch), gradWeightCount: 0)
    if ws.path.backwardData == .stridedPointwiseTiles {
        // W_gᵀ (Cg × Kg) packed once for every image and task.
        while ws.transposedWeights.count < g.groups { ws.transposedWeights.append(PackedGemmA()) }
        for grp in 0..<g.groups {
            ws.transposedWeights[grp].pack(.transposed, m: g.groupInChannels, k: g.groupOutChannels,
                                           a: w + grp * g.groupOutChannels * g.groupInChannels, lda: g.groupInChannels,
                                           depth: sgemmTilesDepthLimit)
        }
    } else if (ws.path.backwardData == .stride2Kernel3Gather || ws.path.backwardData == .stridedPointwise
                || ws.path.backwardData == .stride1RowGather) && ws.precision == .fp32 {
        // W_gᵀ (Cg·9 × Kg) packed once for every block and task: each dcol GEMM re-packing it
        // (4608 × 512 on ResNet's last stage, for blocks of a few hundred columns) took about
        // a quarter of the pass. Strided 1×1: W_gᵀ is Cg × Kg.
        let rows = g.panelRows, Kg = g.groupOutChannels
        while ws.transposedWeights.count < g.groups { ws.transposedWeights.append(PackedGemmA()) }
        for grp in 0..<g.groups {
            ws.transposedWeights[grp].pack(.transposed, m: rows, k: Kg, a: w + grp * Kg * rows, lda: rows)
        }
    }
    if tasks == 1 {
        backwardDataImages(0..<batch, dy, w, dx, g, ws, dcol: ws.panel.pointer, blockOutput: ws.blockOutput.base)
        return
    }
    parallelTasks(tasks) { t in
        backwardDataImages(taskRange(t, of: batch, tasks: tasks), dy, w, dx, g, ws,
                           dcol: ws.taskPanel(t), blockOutput: ws.taskBlockOutput(t))
    }
}

/// Backward-data over images `images` (only their part of dx is written).
private func backwardDataImages(
    _ images: Range<Int>, _ dy: UnsafePointer<Float>, _ w: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>,
    _ g: Conv2DGeometry, _ ws: ConvolutionWorkspace,
    dcol: UnsafeMutablePointer<Float>, blockOutput: UnsafeMutablePointer<Float>?
) {
    let hw = g.outPixels, C = g.inChannels, K = g.outChannels
    let Cg = g.groupInChannels, Kg = g.groupOutChannels, rows = g.panelRows
    switch ws.path.backwardData {
    case .pointwise:
        for n in images {
            for grp in 0..<g.groups {
                gemm(ws.arithmetic, .transposed, .none, m: Cg, n: hw, k: Kg, alpha: 1, a: w + grp * Kg * rows, lda: rows,
                     b: dy + (n * K + grp * Kg) * hw, ldb: hw,
                     beta: 0, c: dx + (n * C + grp * Cg) * hw, ldc: hw)
            }
        }
        return
    case .stridedPointwiseTiles:
        stridedPointwiseBackwardDataTiles(gradOutput: dy, packedWeights: ws.transposedWeights, gradInput: dx,
                                          images: images, geometry: g)
        return
    case .stridedPointwise:
        stridedPointwiseBackwardData(gradOutput: dy, weight: w, gradInput: dx, images: images, geometry: g,
                                     dcol: dcol, dcolCapacity: ws.panel.capacity, blockPixels: ws.backwardDataBlockPixels,
                                     blockOutput: blockOutput, arithmetic: ws.arithmetic,
                                     packedWeights: ws.precision == .fp32 ? ws.transposedWeights : nil)
        return
    case .stride2Kernel3Gather:
        stride2Kernel3BackwardData(gradOutput: dy, weight: w, gradInput: dx, images: images, geometry: g,
                                   blockPixels: ws.backwardDataBlockPixels, dcol: dcol, blockOutput: blockOutput,
                                   arithmetic: ws.arithmetic,
                                   packedWeights: ws.precision == .fp32 ? ws.transposedWeights : nil)
        return
    case .stride1RowGather:
        stride1GatherBackwardData(gradOutput: dy, weight: w, gradInput: dx, images: images, geometry: g,
                                  blockPixels: ws.backwardDataBlockPixels, dcol: dcol + g.rowGatherSlack, blockOutput: blockOutput,
                                  arithmetic: ws.arithmetic,
                                  packedWeights: ws.precision == .fp32 ? ws.transposedWeights : nil)
        return
    case .col2im, .col2imImageSegments, .flippedForward:
        break
    }
    let plane = C * g.height * g.width
    (dx + images.lowerBound * plane).update(repeating: 0, count: images.count * plane)
    let direct = ws.path.backwardData == .col2imImageSegments
    ws.forEachBlock(images: images, outPixels: hw) { start, count in
        let n0 = start / hw
        let inside = (start + count - 1) / hw == n0
        for grp in 0..<g.groups {
            if !inside && direct {
                // One GEMM per image segment, reading dY in place.
                forEachImageSegment(start: start, count: count, outPixels: hw) { n, p, j, run in
                    gemm(ws.arithmetic, .transposed, .none, m: rows, n: run, k: Kg, alpha: 1, a: w + grp * Kg * rows,
                         lda: rows, b: dy + (n * K + grp * Kg) * hw + p, ldb: hw, beta: 0, c: dcol + j, ldc: count)
                }
                col2im(panel: dcol, geometry: g, group: grp, pixelStart: start, pixelCount: count,
                       gradInput: dx, workspace: ws)
                continue
            }
            let (dyBlock, ld) = gradOutputBlock(dy, inside: inside, firstImage: n0, channels: K, group: grp,
                                                groupChannels: Kg, outPixels: hw, start: start, count: count,
                                                blockOutput: blockOutput)
            gemm(ws.arithmetic, .transposed, .none, m: rows, n: count, k: Kg, alpha: 1, a: w + grp * Kg * rows,
                 lda: rows, b: dyBlock, ldb: ld, beta: 0, c: dcol, ldc: count)
            col2im(panel: dcol, geometry: g, group: grp, pixelStart: start, pixelCount: count,
                   gradInput: dx, workspace: ws)
        }
    }
}

/// The geometry that computes backward-data of `g` as a forward convolution,
/// or nil. For stride 1, dx = conv(dY, W̃) with W̃[c, k, a, b] = W[k, c, kh−1−a, kw−1−b]
/// per group and padding (kh−1)·dh − padTop etc. ("full" correlation): then
/// backward-data is the packed im2col forward, with no col2im scatter-add.
/// Needs zero padding not larger than the dilated kernel minus one, and at
/// least 8 input channels per group (M of its GEMM: with LeNet-5's 6 the panel path
/// measured faster, with 16 and more this one; fewer waste the micro-tile),
/// or exactly 1 where implicit B applies (its M = 1 kernel; first layers, whose input
/// gradient training skips, but `bench conv` and callers may ask for it). A 1×1 stride-1
/// convolution qualifies where its forward takes packed im2col (`pointwiseUsesPackedPlan`):
/// its flip is the transposed weights, dx = W_gᵀ·dY with W_gᵀ packed once per pass.
func flippedBackwardDataGeometry(_ g: Conv2DGeometry, implicitB: Bool? = nil) -> Conv2DGeometry? {
    guard g.strideHeight == 1, g.strideWidth == 1, !g.isPointwise || pointwiseUsesPackedPlan(g),
          g.groupInChannels >= 8 || g.groupInChannels < 4,
          g.paddingMode == .zeros || g.padTop + g.padBottom + g.padLeft + g.padRight == 0 else { return nil }
    let spanH = (g.kernelHeight - 1) * g.dilationHeight, spanW = (g.kernelWidth - 1) * g.dilationWidth
    guard max(g.padTop, g.padBottom) <= spanH, max(g.padLeft, g.padRight) <= spanW else { return nil }
    guard let bg = try? Conv2DGeometry(
        layer: g.layer, inChannels: g.outChannels, height: g.outHeight, width: g.outWidth,
        outChannels: g.inChannels, kernelHeight: g.kernelHeight, kernelWidth: g.kernelWidth,
        dilationHeight: g.dilationHeight, dilationWidth: g.dilationWidth,
        padding: .explicit(top: spanH - g.padTop, bottom: spanH - g.padBottom,
                           left: spanW - g.padLeft, right: spanW - g.padRight),
        groups: g.groups, paddingMode: .zeros),
        bg.outHeight == g.height, bg.outWidth == g.width,
        // The larger plane limit only where the flip's GEMM has 8 or more rows per group (a
        // 3-channel first layer's flip over a 224×224 dY measured far slower than col2im).
        packedIm2colApplies(bg, planeLimitBytes: g.groupInChannels >= 8 ? flippedBackwardDataPlaneLimitBytes
                                                                          : packedIm2colPlaneLimitBytes) else { return nil }
    // One input channel: only with implicit B, whose M = 1 kernel keeps the FMAs busy, and
    // kernels of at least 16 taps. With 3×3 the zero-bordered copy of dY costs more than
    // the 9 multiply-adds per element (fashion-cnn/0 measured slower, LeNet-5's 5×5 faster).
    if g.groupInChannels < 4 && (g.groupInChannels * g.kernelHeight * g.kernelWidth < 16
        || !implicitForwardPays(bg, override: implicitB)) { return nil }
    return bg
}

/// w̃ (C, Kg, kh, kw) from w (K, Cg, kh, kw): w̃[grp·Cg + c, k, a, b] = w[grp·Kg + k, c, kh−1−a, kw−1−b].
func flipWeightsForBackwardData(_ w: UnsafePointer<Float>, into flipped: UnsafeMutablePointer<Float>,
                                geometry g: Conv2DGeometry) {
    let kh = g.kernelHeight, kw = g.kernelWidth, taps = kh * kw
    let Cg = g.groupInChannels, Kg = g.groupOutChannels
    for grp in 0..<g.groups {
        for c in 0..<Cg {
            for k in 0..<Kg {
                let src = w + ((grp * Kg + k) * Cg + c) * taps
                let dst = flipped + ((grp * Cg + c) * Kg + k) * taps
                for t in 0..<taps { dst[t] = src[taps - 1 - t] }
            }
        }
    }
}

/// Backward-data of a 1×1, unpadded, strided convolution (ResNet shortcuts)
/// for images `images`: each input pixel receives at most one contribution,
/// so instead of zeroing dx and adding col2im into it, every dx row is written
/// once: rows y = oy·sh get dcol interleaved with zeros, the others zeros.
/// dcol (Cg × rows·outW per block of whole output rows) holds dcolCapacity floats. When
/// `blockPixels` holds two or more whole images (small planes, or `wideBackwardDataBlock`),
/// blocks are whole images instead, dY copied through blockOutput (Kg × blockPixels).
func stridedPointwiseBackwardData(
    gradOutput dy: UnsafePointer<Float>, weight w: UnsafePointer<Float>, gradInput dx: UnsafeMutablePointer<Float>,
    images: Range<Int>, geometry g: Conv2DGeometry, dcol: UnsafeMutablePointer<Float>, dcolCapacity: Int,
    blockPixels: Int = 0, blockOutput: UnsafeMutablePointer<Float>? = nil, arithmetic: GemmArithmetic = .fp32,
    packedWeights: [PackedGemmA]? = nil
) {
    let hw = g.outPixels, C = g.inChannels, K = g.outChannels, H = g.height, W = g.width
    let outH = g.outHeight, outW = g.outWidth, sh = g.strideHeight, sw = g.strideWidth
    let Cg = g.groupInChannels, Kg = g.groupOutChannels
    if blockPixels >= 2 * hw, blockOutput != nil {
        // Blocks of equal size.
        let blocks = (images.count + blockPixels / hw - 1) / (blockPixels / hw)
        let perBlock = (images.count + blocks - 1) / max(blocks, 1)
        if let packedWeights, Cg > GemmBlocking.MC {
            // dcol row block by row block (MC input channels), each written into dx while in cache.
            forEachWholeImageDcolRowBlock(images: images, perBlock: perBlock, gradOutput: dy, geometry: g, dcol: dcol,
                                          blockOutput: blockOutput, packedWeights: packedWeights) { imageDcol, ld, n, grp, channels in
                for oy in 0..<outH {
                    let y = oy * sh
                    writeStridedRuns(dx + (n * C + grp * Cg + channels.lowerBound) * H * W + y * W, planeStride: H * W,
                                     imageDcol + channels.lowerBound * ld + oy * outW, sourceStride: ld,
                                     channels: channels.count, count: outW, width: W, stride: sw,
                                     zeroRows: min(y + sh, H) - y - 1, rowStride: W)
                }
            }
            return
        }
        forEachWholeImageDcol(images: images, perBlock: perBlock, gradOutput: dy, weight: w, geometry: g,
                              dcol: dcol, blockOutput: blockOutput, arithmetic: arithmetic,
                              packedWeights: packedWeights) { imageDcol, ld, n, grp in
            for oy in 0..<outH {
                let y = oy * sh
                writeStridedRuns(dx + (n * C + grp * Cg) * H * W + y * W, planeStride: H * W,
                                 imageDcol + oy * outW, sourceStride: ld, channels: Cg, count: outW,
                                 width: W, stride: sw, zeroRows: min(y + sh, H) - y - 1, rowStride: W)
            }
        }
        return
    }
    let blockRows = max(1, min(outH, dcolCapacity / (Cg * outW)))
    for n in images {
        for grp in 0..<g.groups {
            var oy0 = 0
            while oy0 < outH {
                let rows = min(blockRows, outH - oy0), count = rows * outW
                // dcol (Cg × count) = W_gᵀ (Cg × Kg) · dY rows oy0 ..< oy0 + rows (Kg × count).
                let dyRows = dy + (n * K + grp * Kg) * hw + oy0 * outW
                if let packedWeights {
                    sgemmPackedA(packedWeights[grp], n: count, beta: 0, c: dcol, ldc: count) { r0, kc, j0, nc, dst in
                        packContiguousPanel(kc: kc, nc: nc, src: dyRows + r0 * hw + j0, ld: hw, dst: dst)
                    }
                } else {
                    gemm(arithmetic, .transposed, .none, m: Cg, n: count, k: Kg, alpha: 1, a: w + grp * Kg * Cg, lda: Cg,
                         b: dyRows, ldb: hw, beta: 0, c: dcol, ldc: count)
                }
                for oy in oy0 ..< oy0 + rows {
                    let y = oy * sh
                    writeStridedRuns(dx + (n * C + grp * Cg) * H * W + y * W, planeStride: H * W,
                                     dcol + (oy - oy0) * outW, sourceStride: count, channels: Cg, count: outW,
                                     width: W, stride: sw, zeroRows: min(y + sh, H) - y - 1, rowStride: W)
                }
                oy0 += rows
            }
        }
    }
}

/// Backward-data of a 1×1, unpadded, strided convolution whose Kg fits one GEMM K step,
/// for images `images`: the GEMM (W_gᵀ prepacked, one per group) hands each finished tile
/// of Cg-rows × 16 output pixels to the scatter (sgemmTiles), which writes the dx rows the
/// tile reaches: row oy·sh with the values interleaved with zeros, the rows below it up to
/// the next output row's zeros (`writeStridedRun`). Every dx float (4x the GEMM's output
/// with stride 2) is written once, from the tile while it is in L1, with no dcol stored.
func stridedPointwiseBackwardDataTiles(
    gradOutput dy: UnsafePointer<Float>, packedWeights: [PackedGemmA], gradInput dx: UnsafeMutablePointer<Float>,
    images: Range<Int>, geometry g: Conv2DGeometry
) {
    let hw = g.outPixels, C = g.inChannels, K = g.outChannels, H = g.height, W = g.width
    let outH = g.outHeight, outW = g.outWidth, sh = g.strideHeight, sw = g.strideWidth
    let Cg = g.groupInChannels, Kg = g.groupOutChannels
    for n in images {
        for grp in 0..<g.groups {
            let planes = dx + (n * C + grp * Cg) * H * W
            sgemmTiles(packedWeights[grp], n: hw, b: dy + (n * K + grp * Kg) * hw, ldb: hw) { tile, ld, row, rows, col, cols in
                // The tile's output-row runs: pixels col ..< col + cols of the image (one division).
                var oy = col / outW, ox0 = col - oy * outW, j = 0
                while j < cols {
                    let ox1 = min(outW, ox0 + cols - j)
                    let y = oy * sh, x0 = ox0 * sw
                    // The last run of an output row also covers the input columns past it.
                    let width = ox1 == outW ? W - x0 : (ox1 - ox0) * sw
                    let nextRow = oy == outH - 1 ? H : min(y + sh, H)
                    writeStridedRuns(planes + row * H * W + y * W + x0, planeStride: H * W, tile + j,
                                     sourceStride: ld, channels: rows, count: ox1 - ox0, width: width,
                                     stride: sw, zeroRows: nextRow - y - 1, rowStride: W)
                    j += ox1 - ox0
                    ox0 = 0
                    oy += 1
                }
            }
        }
    }
}

/// One output-row run of a strided 1×1 backward-data, for `channels` planes (dst and src
/// advance by planeStride and sourceStride): dst[x] = src[x / stride] where x is a multiple of
/// the stride (x / stride < count), else 0, for x < width, and zeros in the same columns of
/// the `zeroRows` rows below (input rows no output row reads). The ResNet shortcut case
/// (stride 2, one zero row, runs ending on a stride boundary) is straight-line code, chosen
/// once for all channels: through the general loops the 16-channel shortcut's backward-data
/// ran well below plain stores of the same bytes; this runs at about their speed.
@inline(__always)
func writeStridedRuns(_ dst: UnsafeMutablePointer<Float>, planeStride: Int, _ src: UnsafePointer<Float>,
                      sourceStride: Int, channels: Int, count: Int, width: Int, stride: Int, zeroRows: Int,
                      rowStride: Int) {
    if stride == 2 && zeroRows == 1 && width == 2 * count {
        for i in 0..<channels {
            interleaveZerosStride2(dst + i * planeStride, src + i * sourceStride, count: count, rowStride: rowStride)
        }
        return
    }
    for i in 0..<channels {
        let d = dst + i * planeStride
        scatterStridedRow(d, src + i * sourceStride, width: width, outWidth: count, stride: stride)
        for z in 1 ..< zeroRows + 1 { zeroFloats(d + z * rowStride, width) }
    }
}

/// dst[2i] = src[i], dst[2i + 1] = 0, and dst[rowStride + x] = 0 for i < count,
/// x < 2·count: a stride-2 run of dx and the row below it. Reads src[0 ..< count] only.
@inline(__always)
func interleaveZerosStride2(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, count: Int,
                            rowStride: Int) {
    let d = UnsafeMutableRawPointer(dst), below = UnsafeMutableRawPointer(dst + rowStride)
    let zero = SIMD8<Float>()
    var o = 0
    while o + 8 <= count {
        let v = UnsafeRawPointer(src + o).loadUnaligned(as: SIMD8<Float>.self)
        d.storeBytes(of: SIMD8(v[0], 0, v[1], 0, v[2], 0, v[3], 0), toByteOffset: 8 * o, as: SIMD8<Float>.self)
        d.storeBytes(of: SIMD8(v[4], 0, v[5], 0, v[6], 0, v[7], 0), toByteOffset: 8 * o + 32, as: SIMD8<Float>.self)
        below.storeBytes(of: zero, toByteOffset: 8 * o, as: SIMD8<Float>.self)
        below.storeBytes(of: zero, toByteOffset: 8 * o + 32, as: SIMD8<Float>.self)
        o += 8
    }
    if o + 4 <= count {
        let v = UnsafeRawPointer(src + o).loadUnaligned(as: SIMD4<Float>.self)
        d.storeBytes(of: SIMD8(v[0], 0, v[1], 0, v[2], 0, v[3], 0), toByteOffset: 8 * o, as: SIMD8<Float>.self)
        below.storeBytes(of: zero, toByteOffset: 8 * o, as: SIMD8<Float>.self)
        o += 4
    }
    while o < count {
        dst[2 * o] = src[o]
        dst[2 * o + 1] = 0
        dst[rowStride + 2 * o] = 0
        dst[rowStride + 2 * o + 1] = 0
        o += 1
    }
}

/// dst[i] = 0 for i < count, in vector stores (runs of 16-64 floats: cheaper inline than a memset call).
@inline(__always)
func zeroFloats(_ dst: UnsafeMutablePointer<Float>, _ count: Int) {
    var i = 0
    while i + 8 <= count {
        UnsafeMutableRawPointer(dst + i).storeBytes(of: SIMD8<Float>(), as: SIMD8<Float>.self)
        i += 8
    }
    while i < count { dst[i] = 0; i += 1 }
}

/// dst[x] = src[x / s] where x is a multiple of s (x / s < outWidth), else 0, for x < width.
@inline(__always)
func scatterStridedRow(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, width: Int,
                       outWidth: Int, stride s: Int) {
    var o = 0
    if s == 2 {
        // 8 values → 16 outputs, zeros in the odd lanes.
        while o + 8 <= outWidth && 2 * o + 16 <= width {
            let v = UnsafeRawPointer(src + o).loadUnaligned(as: SIMD8<Float>.self)
            let z = SIMD16<Float>(v[0], 0, v[1], 0, v[2], 0, v[3], 0, v[4], 0, v[5], 0, v[6], 0, v[7], 0)
            UnsafeMutableRawPointer(dst + 2 * o).storeBytes(of: z, as: SIMD16<Float>.self)
            o += 8
        }
    }
    var x = o * s
    while x < width {
        dst[x] = x % s == 0 && x / s < outWidth ? src[x / s] : 0
        x += 1
    }
}

/// dW += ∂L/∂W and, if `gradBias` is given, db += ∂L/∂b (both accumulate). With
/// `gradOutputBF16` (where `convolutionTakesBF16GradOutput`), dy is read from it instead.
public func convolution2DBackwardWeights(
    input x: UnsafePointer<Float>, gradOutput dy: UnsafePointer<Float>,
    gradWeight dw: UnsafeMutablePointer<Float>, gradBias db: UnsafeMutablePointer<Float>?,
    batch: Int, geometry g: Conv2DGeometry, workspace ws: ConvolutionWorkspace,
    gradOutputBF16: BF16GradHandoff? = nil, inputBF16: UnsafePointer<UInt16>? = nil
) {
    ws.prepare(for: g, batch: batch)
    if let inputBF16 {
        guard let plan = ws.packedPlan, ws.path.backwardWeights == .packedIm2col, plan.gradImagesPerGemm == 1,
              plan.backwardWeightsPlanesAreBF16(ws.arithmetic) else { preconditionFailure("bf16 input: no bf16 planes") }
        plan.inputBF16 = inputBF16
    }
    defer { if inputBF16 != nil { ws.packedPlan?.inputBF16 = nil } }
    let hw = g.outPixels, K = g.outChannels
    let dwCount = K * g.panelRows
    let tasks = ws.prepareTasks(min(availableComputeThreads(), batch), gradWeightCount: dwCount)
    let packed = ws.path.backwardWeights == .packedIm2col || ws.path.backwardWeights == .gatheredPointwise
        ? ws.packedPlan : nil
    if let plan = packed {
        plan.reservePlanes(tasks, always: plan.gatherStride == 1, bf16: plan.backwardWeightsPlanesAreBF16(ws.arithmetic))
        plan.reservePackedGradOutputs(tasks, arithmetic: ws.arithmetic)
    }
    let dyBits = gradOutputBF16.map { UnsafePointer($0.bits) }
    precondition(dyBits == nil || packed != nil, "bf16 dL/dy: not packed im2col")
    if let plan = packed, tasks == 1 {
        packedIm2colBackwardWeights(0..<batch, x, dy, dw, plan, task: 0, arithmetic: ws.arithmetic, dyBits: dyBits)
    } else if tasks == 1 {
        backwardWeightsImages(0..<batch, x, dy, dw, g, ws, panel: ws.panel.pointer, blockOutput: ws.blockOutput.base)
    } else {
        // Task 0 adds into dW itself, task t > 0 into its own zeroed partial.
        parallelTasks(tasks) { t in
            let target = t == 0 ? dw : ws.taskGradWeight(t)
            if t > 0 { target.update(repeating: 0, count: dwCount) }
            if let plan = packed {
                packedIm2colBackwardWeights(taskRange(t, of: batch, tasks: tasks), x, dy, target, plan, task: t,
                                            arithmetic: ws.arithmetic, dyBits: dyBits)
                return
            }
            backwardWeightsImages(taskRange(t, of: batch, tasks: tasks), x, dy, target, g, ws,
                                  panel: ws.taskPanel(t), blockOutput: ws.taskBlockOutput(t))
        }
        // Fixed order, so the sum does not depend on which task finished first.
        for t in 1..<tasks { addFloats(dw, ws.taskGradWeight(t), dwCount) }
    }
    if let db, let sums = gradOutputBF16?.planeSums {
        for n in 0..<batch {
            for k in 0..<K { db[k] += sums[n * K + k] }
        }
    } else if let db {
        for n in 0..<batch {
            for k in 0..<K { db[k] += sumFloats(dy + (n * K + k) * hw, hw) }
        }
    }
}

/// The sum of p[0 ..< count], in 8 lanes × 2 vectors: a scalar loop is one dependent add
/// per element (4 cycles each), which made the bias gradient cost as much as a small layer's
/// weight gradient.
@inline(__always)
func sumFloats(_ p: UnsafePointer<Float>, _ count: Int) -> Float {
    var a0 = SIMD8<Float>(), a1 = SIMD8<Float>()
    var i = 0
    let raw = UnsafeRawPointer(p)
    while i + 16 <= count {
        a0 += raw.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
        a1 += raw.loadUnaligned(fromByteOffset: 4 * i + 32, as: SIMD8<Float>.self)
        i += 16
    }
    if i + 8 <= count {
        a0 += raw.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
        i += 8
    }
    var s = (a0 + a1).sum()
    while i < count { s += p[i]; i += 1 }
    return s
}

/// Backward-weights over images `images`, accumulating into `dw`.
private func backwardWeightsImages(
    _ images: Range<Int>, _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dw: UnsafeMutablePointer<Float>,
    _ g: Conv2DGeometry, _ ws: ConvolutionWorkspace,
    panel: UnsafeMutablePointer<Float>, blockOutput: UnsafeMutablePointer<Float>?
) {
    let hw = g.outPixels, C = g.inChannels, K = g.outChannels
    let Cg = g.groupInChannels, Kg = g.groupOutChannels, rows = g.panelRows
    if ws.path.backwardWeights == .pointwise {
        for n in images {
            for grp in 0..<g.groups {
                gemm(ws.arithmetic, .none, .transposed, m: Kg, n: Cg, k: hw, alpha: 1, a: dy + (n * K + grp * Kg) * hw,
                     lda: hw, b: x + (n * C + grp * Cg) * hw, ldb: hw,
                     beta: 1, c: dw + grp * Kg * rows, ldc: rows)
            }
        }
        return
    }
    let direct = ws.path.backwardWeights == .panelImageSegments
    ws.forEachBlock(images: images, outPixels: hw) { start, count in
        let n0 = start / hw
        let inside = (start + count - 1) / hw == n0
        for grp in 0..<g.groups {
            if !inside && direct {
                im2col(input: x, geometry: g, group: grp, pixelStart: start, pixelCount: count,
                       panel: panel, workspace: ws)
                // One GEMM per image segment, reading dY in place.
                forEachImageSegment(start: start, count: count, outPixels: hw) { n, p, j, run in
                    gemm(ws.arithmetic, .none, .transposed, m: Kg, n: rows, k: run, alpha: 1,
                         a: dy + (n * K + grp * Kg) * hw + p, lda: hw,
                         b: panel + j, ldb: count, beta: 1, c: dw + grp * Kg * rows, ldc: rows)
                }
                continue
            }
            let (dyBlock, ld) = gradOutputBlock(dy, inside: inside, firstImage: n0, channels: K, group: grp,
                                                groupChannels: Kg, outPixels: hw, start: start, count: count,
                                                blockOutput: blockOutput)
            im2col(input: x, geometry: g, group: grp, pixelStart: start, pixelCount: count,
                   panel: panel, workspace: ws)
            gemm(ws.arithmetic, .none, .transposed, m: Kg, n: rows, k: count, alpha: 1, a: dyBlock, lda: ld,
                 b: panel, ldb: count, beta: 1, c: dw + grp * Kg * rows, ldc: rows)
        }
    }
}

/// Whether blocks that span images run one GEMM per image segment directly on
/// the NCHW tensor instead of copying the block output through the workspace.
/// The per-segment GEMMs re-pack the Kg × Cg·kh·kw weights (or re-read dW)
/// once per image, the copy moves Kg × outH·outW floats per image; so direct
/// wins when the reduction is shorter than the plane (Cg·kh·kw < outH·outW),
/// e.g. first layers (rows 9–27) and 1×1 shortcuts. Planes narrower than two
/// micro-tiles (32 columns) keep the copy: their ragged GEMM edges cost more.
@inline(__always)
func spanningBlocksUseDirectGemm(_ g: Conv2DGeometry) -> Bool {
    g.panelRows < g.outPixels && g.outPixels >= 32
}

/// Calls `body(n, p, j, run)` for each per-image piece of global output pixels
/// start ..< start + count: image n, pixels p ..< p + run of its plane, block
/// columns j ..< j + run.
@inline(__always)
func forEachImageSegment(start: Int, count: Int, outPixels hw: Int,
                         _ body: (_ n: Int, _ p: Int, _ j: Int, _ run: Int) -> Void) {
    var j = 0
    var n = start / hw, p = start - n * hw
    while j < count {
        let run = min(hw - p, count - j)
        body(n, p, j, run)
        j += run
        n += 1
        p = 0
    }
}

/// Copies a block (channelCount × count, row stride count) of global output
/// pixels start ..< start + count to (`toTensor`) or from an NCHW tensor with
/// `channels` channels, starting at channel `channelOffset`; each row splits
/// into one contiguous run per image.
@inline(__always)
func blockTransfer(block: UnsafeMutablePointer<Float>, tensor: UnsafeMutablePointer<Float>, channels: Int,
                   channelOffset: Int, channelCount: Int, outPixels hw: Int, start: Int, count: Int,
                   toTensor: Bool) {
    var j = 0
    while j < count {
        let q = start + j
        let n = q / hw, p = q - n * hw
        let run = min(hw - p, count - j)
        for k in 0..<channelCount {
            let t = tensor + (n * channels + channelOffset + k) * hw + p
            let b = block + k * count + j
            if toTensor { t.update(from: b, count: run) } else { b.update(from: t, count: run) }
        }
        j += run
    }
}

/// Backward-data in blocks of whole images: for each block of at most `perBlock` images of
/// `images` and each group, dcol (rows × m·hw) = W_gᵀ · dY of the block (dY read in place for
/// one image, else copied through blockOutput), then `gather(dcol + i·hw, ld, n0 + i, group)`
/// for each image of the block, which writes that image's dx from its dcol columns.
/// `packedWeights` (fp32): W_gᵀ of each group already packed (`PackedGemmA.pack(.transposed, …)`),
/// used instead of packing it in every block's GEMM (the same sums in the same order).
@inline(__always)
func forEachWholeImageDcol(
    images: Range<Int>, perBlock: Int, gradOutput dy: UnsafePointer<Float>, weight w: UnsafePointer<Float>,
    geometry g: Conv2DGeometry, dcol: UnsafeMutablePointer<Float>, blockOutput: UnsafeMutablePointer<Float>?,
    arithmetic: GemmArithmetic = .fp32, packedWeights: [PackedGemmA]? = nil,
    gather: (_ imageDcol: UnsafePointer<Float>, _ ld: Int, _ n: Int, _ group: Int) -> Void
) {
    let hw = g.outPixels, Kg = g.groupOutChannels, rows = g.panelRows
    forEachImageBlockGradOutput(images: images, perBlock: perBlock, gradOutput: dy, geometry: g,
                                blockOutput: blockOutput) { n0, m, grp, dyBlock, ld in
        let count = m * hw
        // dcol (rows × count) = W_gᵀ (rows × Kg) · dY block (Kg × count).
        if let packedWeights {
            sgemmPackedA(packedWeights[grp], n: count, beta: 0, c: dcol, ldc: count) { r0, kc, j0, nc, dst in
                packContiguousPanel(kc: kc, nc: nc, src: dyBlock + r0 * ld + j0, ld: ld, dst: dst)
            }
        } else {
            gemm(arithmetic, .transposed, .none, m: rows, n: count, k: Kg, alpha: 1, a: w + grp * Kg * rows,
                 lda: rows, b: dyBlock, ldb: ld, beta: 0, c: dcol, ldc: count)
        }
        for i in 0..<m { gather(dcol + i * hw, count, n0 + i, grp) }
    }
}

/// `forEachWholeImageDcol` with the packed W_gᵀ finished one row block (MC rows) at a time
/// (`sgemmPackedARowBlocks`): `gather(dcol + i·hw, ld, n0 + i, group, rows)` runs for each
/// image of the block as soon as dcol's rows `rows` are final, while they are in cache.
@inline(__always)
func forEachWholeImageDcolRowBlock(
    images: Range<Int>, perBlock: Int, gradOutput dy: UnsafePointer<Float>, geometry g: Conv2DGeometry,
    dcol: UnsafeMutablePointer<Float>, blockOutput: UnsafeMutablePointer<Float>?, packedWeights: [PackedGemmA],
    gather: (_ imageDcol: UnsafePointer<Float>, _ ld: Int, _ n: Int, _ group: Int, _ rows: Range<Int>) -> Void
) {
    let hw = g.outPixels
    forEachImageBlockGradOutput(images: images, perBlock: perBlock, gradOutput: dy, geometry: g,
                                blockOutput: blockOutput) { n0, m, grp, dyBlock, ld in
        let count = m * hw
        sgemmPackedARowBlocks(packedWeights[grp], n: count, b: dyBlock, ldb: ld, c: dcol, ldc: count) { ic, mc in
            for i in 0..<m { gather(dcol + i * hw, count, n0 + i, grp, ic ..< ic + mc) }
        }
    }
}

/// The blocks both whole-image dcol loops walk: for each block of at most `perBlock` images of
/// `images` (first image n0, m images) and each group, `body(n0, m, group, dyBlock, ld)` with
/// the block's dY as a [Kg, m·hw] matrix (`gradOutputBlock`: in place for one image, else
/// copied through blockOutput).
@inline(__always)
func forEachImageBlockGradOutput(
    images: Range<Int>, perBlock: Int, gradOutput dy: UnsafePointer<Float>, geometry g: Conv2DGeometry,
    blockOutput: UnsafeMutablePointer<Float>?,
    _ body: (_ n0: Int, _ m: Int, _ group: Int, _ dyBlock: UnsafePointer<Float>, _ ld: Int) -> Void
) {
    let hw = g.outPixels, K = g.outChannels, Kg = g.groupOutChannels
    var n0 = images.lowerBound
    while n0 < images.upperBound {
        let m = min(perBlock, images.upperBound - n0)
        for grp in 0..<g.groups {
            let (dyBlock, ld) = gradOutputBlock(dy, inside: m == 1, firstImage: n0, channels: K, group: grp,
                                                groupChannels: Kg, outPixels: hw, start: n0 * hw, count: m * hw,
                                                blockOutput: blockOutput)
            body(n0, m, grp, dyBlock, ld)
        }
        n0 += m
    }
}

/// dY for output pixels start..<start+count of one group, as a [Kg, count]
/// matrix with leading dimension `ld`: read in place when the block lies in
/// one image (ld = outPixels), else gathered into `blockOutput` (ld = count).
@inline(__always)
func gradOutputBlock(_ dy: UnsafePointer<Float>, inside: Bool, firstImage n0: Int, channels K: Int, group grp: Int,
                     groupChannels Kg: Int, outPixels hw: Int, start: Int, count: Int,
                     blockOutput: UnsafeMutablePointer<Float>?) -> (UnsafePointer<Float>, Int) {
    if inside { return (dy + (n0 * K + grp * Kg) * hw + (start - n0 * hw), hw) }
    let buf = blockOutput!
    blockTransfer(block: buf, tensor: UnsafeMutablePointer(mutating: dy), channels: K,
                  channelOffset: grp * Kg, channelCount: Kg, outPixels: hw,
                  start: start, count: count, toTensor: false)
    return (UnsafePointer(buf), count)
}
