// Scratch memory of the blocked im2col convolution, owned by a layer and
// reused from step to step.

/// Upper bound on the bytes of one im2col column panel (Cg·kh·kw rows ×
/// P output pixels, Float).
///
/// Why 256 KiB: the panel is written by im2col and immediately read by the
/// GEMM as its B operand; at this size it is still in the core's L2 (256 KiB
/// to 2 MiB per core on current x86) when the GEMM packs it, so im2col costs
/// one pass over L2 instead of a round trip through DRAM, and the memory does
/// not grow with the batch (Caffe's "one image at a time" taken further).
///
/// Measured (`cnn-dist bench conv`, batch 64, all reference shapes): budgets of
/// 256 KiB, 1 MiB and 2 MiB gave the same pass / sgemm ratios within the noise
/// of the shared machine: the GEMM's small-M path packs the weights
/// once per call and streams 128-column B panels, so a few hundred columns per
/// block already amortise the per-call setup, and the time lost was in
/// im2col / col2im and the block copies, not in the block width. So the
/// smallest budget stays: it keeps the panel in L2 next to the GEMM's packed
/// buffers and the workspace 4–10× smaller.
public let convolutionPanelBudgetBytes = 256 * 1024

/// Column-count granularity of a panel block: a multiple of the GEMM
/// micro-kernel widths (NR = 8 or 16 floats), so only the last block has a ragged edge.
let panelColumnQuantum = 16

/// Scratch buffers for `convolution2DForward` / `...BackwardData` /
/// `...BackwardWeights`: the column panel, a block-output buffer for blocks
/// that span images, and the padding index tables. Grows only when a larger
/// geometry arrives, so a training step allocates nothing in steady state.
public final class ConvolutionWorkspace {
    /// Largest panel this workspace builds, in bytes (see `convolutionPanelBudgetBytes`).
    public let panelBudgetBytes: Int
    /// Bytes currently held (panel, block output, index tables, packed im2col
    /// planes and weights, and the backward-data workspace).
    public var bytes: Int {
        panel.bytes + blockOutput.bytes + yTable.bytes + xTable.bytes + xInterior.bytes
            + taskScratch.reduce(0) { $0 + $1.panel.bytes + $1.blockOutput.bytes + $1.gradWeight.bytes }
            + (packedPlan?.bytes ?? 0) + flippedWeights.bytes + (backwardDataWorkspace?.bytes ?? 0)
            + transposedWeights.reduce(0) { $0 + $1.storage.bytes }
    }
    /// Output pixels per block (P), the panel's column count; set by `prepare`.
    public private(set) var blockPixels: Int = 0
    /// Output pixels per dcol block of the backward-data paths that store dcol and gather from
    /// it (3×3 stride 2, strided 1×1): `blockPixels`, or wider for long reductions
    /// (`wideBackwardDataBlock`); set by `prepare`.
    public private(set) var backwardDataBlockPixels: Int = 0

    var panel = GrowableBuffer<Float>()
    var blockOutput = GrowableBuffer<Float>()
    /// yTable[a·outH + oy]: input row read by kernel row a at output row oy (−1: zero).
    var yTable = GrowableBuffer<Int32>()
    /// xTable[b·outW + ox]: input column read by kernel column b at output column ox (−1: zero).
    var xTable = GrowableBuffer<Int32>()
    /// For kernel column b, the output columns [xInterior[2b], xInterior[2b+1]) whose
    /// input column ox·sw + b·dw − padLeft lies inside the input (no mapping needed).
    var xInterior = GrowableBuffer<Int>()
    /// Scratch of tasks 1 ..< taskCount of a threaded pass (task 0 uses the
    /// buffers above): a panel and block output each, and a partial dW.
    private var taskScratch: [TaskScratch] = []
    /// Tasks the last `prepareTasks` set up.
    public private(set) var taskCount = 1
    /// Tables of the packed im2col forward (PackedIm2col.swift), nil when it does not apply.
    var packedPlan: PackedIm2colPlan?
    /// Backward-data as a forward convolution of dY with the flipped weights
    /// (`flippedBackwardDataGeometry`), nil when that does not apply.
    var backwardDataGeometry: Conv2DGeometry?
    var backwardDataWorkspace: ConvolutionWorkspace?
    var flippedWeights = GrowableBuffer<Float>()
    /// W_gᵀ of each group packed for strided 1×1 backward-data (`sgemmTiles`).
    var transposedWeights: [PackedGemmA] = []
    /// Largest phase-plane copy of packed im2col (`packedIm2colApplies`): the default, or
    /// `flippedBackwardDataPlaneLimitBytes` for the workspace of a flipped backward-data.
    var planeLimitBytes = packedIm2colPlaneLimitBytes
    private var preparedGeometry: Conv2DGeometry?
    private var preparedBatch = 0

    struct TaskScratch {
        var panel = GrowableBuffer<Float>()
        var blockOutput = GrowableBuffer<Float>()
        var gradWeight = GrowableBuffer<Float>()
    }

    /// Whether forward (and stride-1 backward-data) may use packed im2col
    /// (PackedIm2col.swift); false keeps every pass on the stored panel.
    public let allowsPackedIm2col: Bool
    /// Forces implicit B on or off wherever packed im2col applies; nil: chosen per geometry.
    public let implicitB: Bool?
    /// The GEMM arithmetic of all three passes (set per pass from the layer's
    /// `ExecutionContext` with `use(_:)`); only the GEMMs change, everything else stays fp32.
    public private(set) var arithmetic: GemmArithmetic
    /// `arithmetic.precision`.
    public var precision: ComputePrecision { arithmetic.precision }
    /// The strategy of each pass for the prepared geometry and batch (set by `prepare`).
    public private(set) var path = ConvolutionPath(forward: .panel, backwardData: .col2im, backwardWeights: .panel)

    /// A workspace whose panels stay within `panelBudgetBytes`.
    /// `precision` .bf16 with the native kernel needs `CPUFeatures.current.bf16GEMM` (check
    /// `requireBF16()` first).
    public init(panelBudgetBytes: Int = convolutionPanelBudgetBytes, allowsPackedIm2col: Bool = true,
                implicitB: Bool? = nil, precision: ComputePrecision = .fp32, bf16Kernel: BF16Kernel = .automatic) {
        self.panelBudgetBytes = panelBudgetBytes
        self.allowsPackedIm2col = allowsPackedIm2col
        self.implicitB = implicitB
        self.arithmetic = GemmArithmetic(precision, bf16Kernel: bf16Kernel)
    }

    /// Switches the passes to `arithmetic`; a change re-chooses the paths at the next `prepare`
    /// (bf16 has no implicit-B or tile-scatter kernels). Free when it is already in use.
    public func use(_ arithmetic: GemmArithmetic) {
        guard arithmetic != self.arithmetic else { return }
        self.arithmetic = arithmetic
        preparedGeometry = nil
        preparedBatch = 0
        backwardDataWorkspace?.use(arithmetic)
    }

    /// Sizes the buffers, builds the index tables and chooses the `path` for this geometry
    /// and batch; free when called again with the same ones.
    public func prepare(for g: Conv2DGeometry, batch: Int) {
        if preparedGeometry == g && preparedBatch == batch { return }
        let geometryChanged = preparedGeometry != g
        preparedGeometry = g
        preparedBatch = batch
        let hw = g.outPixels
        let total = batch * hw
        if g.isPointwise {
            blockPixels = hw   // no panel: the GEMM reads the input directly
            panel.reserve(GemmBlocking.NR)   // only so that callers can pass its pointer
        } else {
            // A block's column costs Cg·kh·kw panel floats, and Kg block-output floats
            // when the block spans images; keep each of the two within the budget.
            let rowBytes = max(g.panelRows, g.groupOutChannels) * MemoryLayout<Float>.stride
            var p = panelBudgetBytes / rowBytes / panelColumnQuantum * panelColumnQuantum
            p = max(p, panelColumnQuantum)
            p = min(p, total)
            if hw >= p {
                // Blocks stay inside one image: split the image into equal chunks ≤ p.
                // Rounded up to the quantum when that still fits the budget.
                let chunks = (hw + p - 1) / p
                let even = (hw + chunks - 1) / chunks
                p = min(p, (even + panelColumnQuantum - 1) / panelColumnQuantum * panelColumnQuantum)
            }
            blockPixels = p
            // Slack on both sides for the stride-1 backward-data row gather's masked reads.
            panel.reserve(g.panelRows * p + 2 * g.rowGatherSlack)
            if hw < p { blockOutput.reserve(max(g.groupOutChannels, 1) * p) }
        }
        path = ConvolutionPath(g, blockPixels: blockPixels, allowsPackedIm2col: allowsPackedIm2col,
                               implicitB: implicitB, precision: precision, planeLimitBytes: planeLimitBytes)
        backwardDataBlockPixels = blockPixels
        // The row gather takes wide blocks on the layers of more than 16 input channels that the
        // path rules send to it (planes under 64 pixels; the narrow layers keep their blocks).
        let wideRowGather = path.backwardData == .stride1RowGather && precision == .fp32 && g.groupInChannels > 16
        if path.backwardData == .stride2Kernel3Gather || path.backwardData == .stridedPointwise || wideRowGather,
           let wide = wideBackwardDataBlock(g, columns: path.backwardData == .stridedPointwise ? min(blockPixels, hw) : blockPixels,
                                            total: total, minInputChannels: wideRowGather ? 17 : 64) {
            backwardDataBlockPixels = wide
            panel.reserve(g.panelRows * wide + 2 * g.rowGatherSlack)
            if hw < wide { blockOutput.reserve(max(g.groupOutChannels, 1) * wide) }
        }
        if geometryChanged {
            packedPlan = path.forward.usesPackedPlan
                ? PackedIm2colPlan(g, usesImplicitB: path.forward == .implicitB) : nil
            if case .flippedForward = path.backwardData {
                backwardDataGeometry = flippedBackwardDataGeometry(g, implicitB: implicitB)
                if backwardDataWorkspace == nil {
                    backwardDataWorkspace = ConvolutionWorkspace(panelBudgetBytes: panelBudgetBytes, implicitB: implicitB,
                                                                 precision: precision, bf16Kernel: arithmetic.bf16Kernel)
                    backwardDataWorkspace!.planeLimitBytes = flippedBackwardDataPlaneLimitBytes
                }
                flippedWeights.reserve(g.outChannels * g.panelRows)
            } else {
                backwardDataGeometry = nil
            }
        }
        yTable.reserve(g.kernelHeight * g.outHeight)
        xTable.reserve(g.kernelWidth * g.outWidth)
        xInterior.reserve(2 * g.kernelWidth)
        for a in 0..<g.kernelHeight {
            for oy in 0..<g.outHeight {
                let y = oy * g.strideHeight - g.padTop + a * g.dilationHeight
                yTable[a * g.outHeight + oy] = Int32(paddedSourceIndex(y, size: g.height, mode: g.paddingMode))
            }
        }
        for b in 0..<g.kernelWidth {
            let offset = b * g.dilationWidth - g.padLeft
            var lo = g.outWidth, hi = 0
            for ox in 0..<g.outWidth {
                let x = ox * g.strideWidth + offset
                xTable[b * g.outWidth + ox] = Int32(paddedSourceIndex(x, size: g.width, mode: g.paddingMode))
                if x >= 0 && x < g.width { lo = min(lo, ox); hi = max(hi, ox + 1) }
            }
            if lo >= hi { lo = 0; hi = 0 }
            xInterior[2 * b] = lo
            xInterior[2 * b + 1] = hi
        }
    }

    /// Sizes the scratch of `tasks` concurrent tasks (after `prepare`): each
    /// task past the first gets a panel and block output as large as the main
    /// ones, and `gradWeightCount` floats of partial dW. Returns `tasks`.
    func prepareTasks(_ tasks: Int, gradWeightCount: Int) -> Int {
        taskCount = max(tasks, 1)
        guard tasks > 1 else { return 1 }
        while taskScratch.count < tasks - 1 { taskScratch.append(TaskScratch()) }
        for i in 0..<(tasks - 1) {
            taskScratch[i].panel.reserve(panel.capacity)
            taskScratch[i].blockOutput.reserve(blockOutput.capacity)
            taskScratch[i].gradWeight.reserve(gradWeightCount)
        }
        return tasks
    }

    /// Panel of task t (t = 0: the main one).
    func taskPanel(_ t: Int) -> UnsafeMutablePointer<Float> {
        t == 0 ? panel.pointer : taskScratch[t - 1].panel.pointer
    }

    /// Block-output buffer of task t, nil when the geometry needs none.
    func taskBlockOutput(_ t: Int) -> UnsafeMutablePointer<Float>? {
        t == 0 ? blockOutput.base : taskScratch[t - 1].blockOutput.base
    }

    /// Partial dW of task t ≥ 1.
    func taskGradWeight(_ t: Int) -> UnsafeMutablePointer<Float> {
        taskScratch[t - 1].gradWeight.pointer
    }

    /// Calls `body(start, count)` for each block of global output pixels
    /// (pixel q = n·outH·outW + oy·outW + ox). With large planes a block stays
    /// inside one image; with small planes (e.g. 8×8) a block spans images.
    /// Only images `images` are covered (a task's share of the batch).
    func forEachBlock(images: Range<Int>, outPixels hw: Int, _ body: (_ start: Int, _ count: Int) -> Void) {
        let p = blockPixels
        if hw >= p {
            for n in images {
                var s = 0
                while s < hw {
                    let c = min(p, hw - s)
                    body(n * hw + s, c)
                    s += c
                }
            }
        } else {
            let end = images.upperBound * hw
            var s = images.lowerBound * hw
            while s < end {
                let c = min(p, end - s)
                body(s, c)
                s += c
            }
        }
    }
}

/// Columns a dcol block of a gathering backward-data path (`stride2Kernel3Gather`,
/// `stridedPointwise`) needs at least when its reduction is long: its GEMM
/// (dcol = W_gᵀ · dY, M = Cg·kh·kw rows, N = the block) re-packs all of W_gᵀ on every call,
/// so narrow blocks pay that packing per few columns (the 256 KiB panel budget leaves 14
/// columns for 512 channels × 3×3: ResNet's last stride-2 layers ran at a tenth of their
/// GEMM's rate). 256 columns bring the packing under a tenth of the arithmetic.
let wideBackwardDataColumns = 256

/// Columns a wide dcol block aims at (whole output rows up to this many, or whole images
/// down to it, when that keeps at least `wideBackwardDataColumns`): W_gᵀ is packed once per
/// pass, but every block streams all of it through the cache again (4-9 MB on ResNet-50's last
/// stride-2 layers), and the edge tiles of narrow blocks waste more.
let wideBackwardDataTargetColumns = 400

/// The wider dcol block of `g` (whole images when they fit, else whole output rows), or nil
/// to keep `blockPixels`: only for reductions of at least 256 rows from at least
/// `minInputChannels` (64) input channels (the ImageNet networks' stride-2 layers; the small
/// reference models keep their blocks), and only when the GEMMs of the default blocks have fewer than
/// `wideBackwardDataColumns` columns (`columns`: `blockPixels`, or for strided 1×1, whose
/// default blocks stay inside one image, at most outH·outW).
func wideBackwardDataBlock(_ g: Conv2DGeometry, columns: Int, total: Int, minInputChannels: Int = 64) -> Int? {
    guard g.panelRows >= 256 && g.groupInChannels >= minInputChannels && columns < wideBackwardDataColumns else { return nil }
    let hw = g.outPixels, outW = g.outWidth
    if hw <= wideBackwardDataTargetColumns {
        // Whole images: as many as fit the target, at least enough for the wide block, at most the batch.
        let images = max((wideBackwardDataColumns + hw - 1) / hw, wideBackwardDataTargetColumns / hw)
        return min(images * hw, max(total, hw))
    }
    // Whole output rows of one image.
    let rows = (wideBackwardDataTargetColumns + outW - 1) / outW
    return min(rows * outW, hw)
}

/// A 64-byte aligned buffer that grows (never shrinks) on `reserve`.
struct GrowableBuffer<Element> {
    private(set) var base: UnsafeMutablePointer<Element>?
    private(set) var capacity = 0
    private var owner: Owner?

    /// Frees the storage when the last copy of the buffer goes.
    final class Owner {
        let pointer: UnsafeMutableRawPointer
        init(_ pointer: UnsafeMutableRawPointer) { self.pointer = pointer }
        deinit { pointer.deallocate() }
    }

    var bytes: Int { capacity * MemoryLayout<Element>.stride }
    var pointer: UnsafeMutablePointer<Element> { base! }

    mutating func reserve(_ count: Int) {
        guard count > capacity else { return }
        let raw = UnsafeMutableRawPointer.allocate(byteCount: count * MemoryLayout<Element>.stride, alignment: 64)
        owner = Owner(raw)
        base = raw.bindMemory(to: Element.self, capacity: count)
        capacity = count
    }

    subscript(i: Int) -> Element {
        get { base![i] }
        nonmutating set { base![i] = newValue }
    }
}
