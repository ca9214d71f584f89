import CnnCore

/// Which dL/dx tensors of a model's backward share storage, and which ReLUs run in place.
///
/// Unplanned, every layer owns its dL/dx for the life of the model, so backward alone holds
/// as many bytes as all activations together. But a dL/dx is dead as soon as the layer before
/// it has read it: in a chain two buffers (ping-pong) serve every layer. The plan walks the
/// layer tree once, in backward order, and gives each layer's dL/dx a *slot*: a tensor shared
/// with the layers whose dL/dx is never live at the same time. A slot is never one that
/// - holds the dL/dy the layer is reading (`incoming`), or
/// - an enclosing block still needs (`busy`): a Residual's accumulated dL/dx while its branch
///   runs, a Concat's dL/dy while its branches run, and so on.
/// Slots grow to their largest user on the first step and are reused after that, so a
/// steady-state step still allocates nothing. Layers the plan does not know keep their own
/// tensors; it assumes they may hand back the dL/dy they were given (as Identity does).
///
/// In-place ReLU: a ReLU's backward needs only its output (y > 0), so when the layer before it
/// in a Sequential or a Residual branch is one whose backward does not read its own output
/// (convolution, BatchNorm, linear, pooling, Concat, Residual), the ReLU overwrites that
/// layer's output instead of holding its own. Nobody else reads that tensor: inside a chain a
/// layer's output goes only to the next layer.
///
/// BatchNorm + ReLU fused: a ReLU right after a BatchNorm in a chain is applied by that
/// BatchNorm (`BatchNormEngine.fusedReLU`) in its own passes, and the ReLU passes its tensors
/// through; the layer tree, its names and its parameters stay as built, so state_dicts,
/// checkpoints and summaries are unchanged (the profiler times the pair under the BatchNorm).
///
/// ReLU + BatchNorm fused: a ReLU between a layer that owns its output (convolution, linear,
/// pooling, Concat, Residual) and a BatchNorm is applied by that BatchNorm
/// (`BatchNormEngine.fusedInputReLU`): it reads the ReLU's input as max(x, 0) in its passes
/// and masks its dL/dx by (x > 0), and the ReLU passes its tensors through. Nobody else reads
/// the producer's output, and the BatchNorm does not write it, so it holds x until backward.
/// A BatchNorm can take both ReLUs (ReLU, BatchNorm, ReLU).
///
/// bf16 inputs: a BatchNorm whose input is a convolution's output (possibly through a fused
/// ReLU) is read by nobody else, so with bf16 arithmetic it keeps that input for backward as
/// bf16 (`BatchNormEngine.mayKeepInputBF16`), and the convolution writes its fp32 output into
/// one buffer shared by all such convolutions (`bf16ProducerBuffer`): the BatchNorm reads it
/// in its forward, right after the convolution, and never again. Where the kernels can, the
/// two pass bf16 instead (`BF16OutputHandoff`, `BF16GradHandoff`): the convolution's epilogue
/// writes the BatchNorm's bf16 copy and its sums, and the BatchNorm's backward hands dL/dy to
/// the convolution as bf16. A BatchNorm whose output the next convolution alone reads (no
/// ReLU after it) hands that output over as bf16 too (`bf16OutputConsumer`). Same bits as
/// passing fp32, half the bytes or none. In fp32 nothing changes.
///
/// Recompute (optional): a fused BatchNorm + ReLU whose output goes straight into a
/// convolution writes it into one buffer shared by all such BatchNorms instead of its own,
/// and writes it again (`BatchNormEngine.recomputeOutput`, one normalize pass) right before
/// that convolution's backward reads it; the BatchNorm's own backward follows at once (the
/// fused ReLU between them passes through) and reads its mask from the same buffer. The
/// convolution reads its input only in its forward and backward, and nothing runs between
/// the recompute and those two backwards, so the values are the forward's: same bits.
///
/// Concatenation without copies (`shareConcat`, default on): consecutive `cat(x, f(x))`
/// blocks of a chain whose f starts with a BatchNorm (DenseNet's dense layers) share one
/// block-wide output tensor and one block-wide dL/dx slot (see `ConcatRun`); a ReLU right
/// after such a run keeps its own output (the run's tensor is read again in backward).
///
/// Residual sums (`scratchSumInputs`, default on): a BatchNorm that ends a Residual's branch
/// or shortcut (no ReLU fused after it) is read only by the block's sum, in forward, and its
/// backward does not read its output, so it writes into one of two scratch tensors (branch,
/// shortcut) shared by all such BatchNorms instead of holding its own: the branch's is
/// written, then the shortcut's, then both are summed before any other block runs. Not where
/// the shortcut holds a Residual of its own (it would write the branch scratch in between).
///
/// Convolutions of one geometry also share their workspace (`sharedWorkspace`).
///
/// Arithmetic is unchanged (every planned kernel overwrites all of its dL/dx), so results are
/// bit-identical with and without a plan.
public final class MemoryPlan {
    /// The shared dL/dx tensors, one per slot.
    public private(set) var slots: [Tensor] = []
    /// Elements of each slot's largest user at the planned shape.
    public private(set) var slotElements: [Int] = []
    /// Elements of every dL/dx the plan placed, summed: what they hold without a plan.
    public private(set) var unplannedElements = 0
    /// dL/dx tensors placed in slots.
    public private(set) var plannedTensors = 0
    /// ReLUs switched to run in place, and the elements of the outputs they no longer hold.
    public private(set) var inPlaceReLUs = 0
    public private(set) var inPlaceElements = 0
    /// ReLUs applied by the BatchNorm before them (BatchNorm + ReLU fused).
    public private(set) var fusedReLUs = 0
    /// BatchNorms whose output is recomputed in backward, the buffer they share, and the
    /// elements of their outputs at the planned shape (what they hold without recompute).
    public private(set) var recomputedBatchNorms = 0
    public let recomputeBuffer = Tensor(shape: [0])
    /// The scratch outputs of BatchNorms read only by a Residual's sum (branch, shortcut), how
    /// many BatchNorms write them and the elements those outputs hold without the plan.
    public let sumBranchScratch = Tensor(shape: [0]), sumShortcutScratch = Tensor(shape: [0])
    public private(set) var sumBranchScratchElements = 0, sumShortcutScratchElements = 0
    public private(set) var scratchBatchNorms = 0
    public private(set) var scratchElements = 0
    /// ReLUs applied by the BatchNorm after them (ReLU + BatchNorm fused).
    public private(set) var fusedInputReLUs = 0
    /// BatchNorms that keep their input as bf16 with bf16 arithmetic; the buffer their
    /// producers share (sized by the first bf16 forward), its elements at the planned shape,
    /// and the producers' output elements (what they hold without it).
    public private(set) var bf16InputBatchNorms = 0
    public let bf16ProducerBuffer = Tensor(shape: [0])
    public private(set) var bf16ProducerBufferElements = 0
    public private(set) var bf16InputElements = 0
    /// BatchNorms whose output the convolution after them alone reads: with bf16 arithmetic it
    /// goes to that convolution as bf16 (`BatchNormEngine.bf16OutputConsumer`).
    public private(set) var bf16OutputBatchNorms = 0
    public private(set) var recomputeBufferElements = 0
    public private(set) var recomputedElements = 0
    /// Concats in runs that share storage, the runs, the elements of those Concats' own outputs
    /// (what the copying layout holds) and of the runs' block-wide tensors (what they hold).
    public private(set) var sharedConcats = 0
    public private(set) var concatRuns = 0
    public private(set) var sharedConcatElements = 0
    public private(set) var concatBlockElements = 0

    /// The input shape (batch included) the plan was made for.
    public private(set) var inputShape: [Int] = []

    /// Bytes of the slots at the planned shape.
    public var plannedBytes: Int { slotElements.reduce(0, +) * MemoryLayout<Float>.stride }
    /// Bytes the placed dL/dx tensors take without a plan.
    public var unplannedBytes: Int { unplannedElements * MemoryLayout<Float>.stride }

    /// Plans `root`'s backward for inputs of `inputShape` (batch dimension included) and
    /// hands each planned layer its slot tensor. Call once, before training; planning
    /// again (another batch size) replaces the slots. `inPlace: false` keeps every ReLU's
    /// own output; `fuse: false` keeps BatchNorm and the ReLU after it apart; `recompute: true`
    /// (with fusion) recomputes fused BatchNorm + ReLU outputs read by a convolution;
    /// `bf16Inputs: false` keeps every BatchNorm's input fp32 in bf16 arithmetic too.
    @discardableResult
    public static func apply(to root: Layer, inputShape: [Int], inPlace: Bool = true, fuse: Bool = true,
                             recompute: Bool = false, shareConcat: Bool = true, bf16Inputs: Bool = true,
                             scratchSumInputs: Bool = true) -> MemoryPlan {
        let plan = MemoryPlan()
        plan.inputShape = inputShape
        plan.allowsConcatSharing = shareConcat
        plan.allowsInPlace = inPlace
        plan.allowsFusion = fuse
        plan.allowsRecompute = fuse && recompute
        plan.allowsBF16Inputs = bf16Inputs
        plan.allowsSumScratch = scratchSumInputs
        plan.resetInPlace(root)
        if inPlace || fuse || shareConcat || scratchSumInputs { plan.markInPlace(root, input: inputShape) }
        _ = plan.place(root, input: inputShape, incoming: [], busy: [])
        for (tensor, elements) in zip(plan.slots, plan.slotElements) { tensor.resize(to: [elements]) }
        plan.recomputeBuffer.resize(to: [plan.recomputeBufferElements])
        plan.sumBranchScratch.resize(to: [plan.sumBranchScratchElements])
        plan.sumShortcutScratch.resize(to: [plan.sumShortcutScratchElements])
        return plan
    }

    /// Runs `body` with every ReLU a BatchNorm applies (before or after it) as a layer of its
    /// own again, then fuses them back: for runs that read a fused ReLU's own tensors or stop
    /// between the two layers (a layer-by-layer probe); bits are the same either way.
    public static func unfused<T>(_ root: Layer, _ body: () throws -> T) rethrows -> T {
        var engines: [(BatchNormEngine, Bool, Bool)] = []
        var relus: [(ReLU, Bool)] = []
        func visit(_ layer: Layer) {
            if let relu = layer as? ReLU, relu.fusedIntoBatchNorm {
                relus.append((relu, relu.fusedIntoNextBatchNorm))
                relu.fusedIntoBatchNorm = false; relu.fusedIntoNextBatchNorm = false
            }
            if let batchNorm = layer as? BatchNormLayer, batchNorm.engine.fusedReLU || batchNorm.engine.fusedInputReLU {
                engines.append((batchNorm.engine, batchNorm.engine.fusedReLU, batchNorm.engine.fusedInputReLU))
                batchNorm.engine.fusedReLU = false; batchNorm.engine.fusedInputReLU = false
            }
            if let residual = layer as? Residual, let activation = residual.activation { visit(activation) }
            for child in layer.children { visit(child.layer) }
        }
        visit(root)
        defer {
            for (relu, next) in relus { relu.fusedIntoBatchNorm = true; relu.fusedIntoNextBatchNorm = next }
            for (engine, after, before) in engines { engine.fusedReLU = after; engine.fusedInputReLU = before }
        }
        return try body()
    }

    /// Convolution workspaces by geometry and settings.
    private var workspaces: [String: ConvolutionWorkspace] = [:]
    /// Convolutions that took another one's workspace.
    public private(set) var sharedWorkspaces = 0

    /// The workspace a convolution of geometry `g` uses: the first one planned with the same
    /// geometry and settings. A workspace holds scratch only (everything in it is rewritten by
    /// each call, and its tables and paths depend on the geometry and batch alone), and layers
    /// run one at a time, so such layers can share one and it is prepared once.
    func sharedWorkspace(_ own: ConvolutionWorkspace, geometry g: Conv2DGeometry) -> ConvolutionWorkspace {
        let key = "\(g) \(own.panelBudgetBytes) \(own.allowsPackedIm2col) \(String(describing: own.implicitB)) \(own.arithmetic)"
        if let shared = workspaces[key] {
            if shared !== own { sharedWorkspaces += 1 }
            return shared
        }
        workspaces[key] = own
        return own
    }

    /// Plans `layer`'s backward: its input shape, the slots its dL/dy may be in, the slots live
    /// around it. Returns the slots its dL/dx may be in.
    func place(_ layer: Layer, input: [Int], incoming: Set<Int>, busy: Set<Int>) -> Set<Int> {
        if let planned = layer as? MemoryPlanned {
            return planned.planBackward(self, input: input, incoming: incoming, busy: busy)
        }
        // Unknown layer: its dL/dx is its own tensor or, possibly, the dL/dy it got.
        return incoming
    }

    /// A slot for a dL/dx of `shape` that is none of `avoiding`: the smallest free slot that
    /// is large enough, else the largest free one (grown), else a new one.
    func slot(for shape: [Int], avoiding: Set<Int>) -> Int {
        let elements = shape.reduce(1, *)
        unplannedElements += elements
        plannedTensors += 1
        var fit: Int?, largest: Int?
        for s in slots.indices where !avoiding.contains(s) {
            if slotElements[s] >= elements {
                if fit == nil || slotElements[s] < slotElements[fit!] { fit = s }
            } else if largest == nil || slotElements[s] > slotElements[largest!] {
                largest = s
            }
        }
        if let s = fit ?? largest {
            slotElements[s] = max(slotElements[s], elements)
            return s
        }
        slots.append(Tensor(shape: [0]))
        slotElements.append(elements)
        return slots.count - 1
    }

    /// The common leaf: one dL/dx of the input's shape in a slot that is neither read nor busy.
    func leaf(input: [Int], incoming: Set<Int>, busy: Set<Int>, use: (Tensor) -> Void) -> Set<Int> {
        let s = slot(for: input, avoiding: busy.union(incoming))
        use(slots[s])
        return [s]
    }

    /// A chain of layers run in order on `input` (Sequential, a Residual branch), planned from the last.
    func placeChain(_ layers: [Layer], input: [Int], incoming: Set<Int>, busy: Set<Int>) -> Set<Int> {
        // Layers whose shapes cannot be followed are not planned: they keep their own tensors.
        guard let shapes = chainShapes(layers, input: input) else { return incoming }
        var current = incoming
        var i = layers.count - 1
        while i >= 0 {
            if let concat = layers[i] as? Concat, let run = concat.run, concat.runIndex == run.count - 1,
               i - concat.runIndex >= 0,
               (0..<run.count).allSatisfy({ (layers[i - concat.runIndex + $0] as? Concat)?.run === run }) {
                let first = i - concat.runIndex
                current = placeConcatRun(run, members: layers[first...i].map { $0 as! Concat }, inputs: Array(shapes[first...i]),
                                         output: shapes[i + 1], incoming: current, busy: busy)
                i = first - 1
            } else {
                current = place(layers[i], input: shapes[i], incoming: current, busy: busy)
                i -= 1
            }
        }
        return current
    }

    /// A run of Concats sharing storage, planned from the last: one slot for the block-wide
    /// dL/dx (live across the run: each block reads its part and adds into the prefix), each
    /// branch's dL/dy and internals around it, and the first block's own dL/dx (read from
    /// that slot and the branch's dL/dx).
    private func placeConcatRun(_ run: ConcatRun, members: [Concat], inputs: [[Int]], output: [Int], incoming: Set<Int>,
                                busy: Set<Int>) -> Set<Int> {
        // The last block copies dL/dy into the gradient slot first; after that dL/dy is dead.
        let g = slot(for: output, avoiding: busy.union(incoming))
        run.gradient = slots[g]
        let live = busy.union([g])
        var result: Set<Int> = []
        for l in members.indices.reversed() {
            let concat = members[l], branch = concat.branches[1].layer
            guard let out = try? branch.outputShape(for: inputs[l]) else { continue }
            let part = slot(for: out, avoiding: live)
            concat.branchGrads[1] = slots[part]
            let dx = place(branch, input: inputs[l], incoming: [part], busy: live)
            if l == 0 {
                let own = slot(for: inputs[0], avoiding: live.union(dx))
                concat.gradInput = slots[own]
                result = [own]
            }
        }
        return result
    }

    // MARK: in-place ReLU, BatchNorm + ReLU fusion

    private var allowsConcatSharing = true
    private var allowsInPlace = true
    private var allowsFusion = true
    private var allowsRecompute = false
    private var allowsBF16Inputs = true
    private var allowsSumScratch = true

    /// Fuses each ReLU into the BatchNorm before it, else switches it to in place where the
    /// layer before it allows (see the type's comment).
    func markInPlace(_ layer: Layer, input: [Int]) {
        if let sequential = layer as? Sequential {
            sequential.recomputeBeforeBackward = markChain(sequential.layers, input: input)
        } else if let residual = layer as? Residual {
            residual.recomputeBeforeBackward = markChain(residual.branch.map(\.layer), input: input)
            if let shortcut = residual.shortcut { markInPlace(shortcut.layer, input: input) }
            // The activation reads the block's own sum, which backward does not need.
            if allowsInPlace, let relu = residual.activation as? ReLU, let out = try? residual.branch.reduce(input, { try $1.layer.outputShape(for: $0) }) {
                switchToInPlace(relu, elements: out.reduce(1, *))
            }
            if allowsSumScratch { markSumInputs(residual, input: input) }
        } else if let concat = layer as? Concat {
            for (_, branch) in concat.branches { markInPlace(branch, input: input) }
        }
    }

    /// Every ReLU back to its own output (a previous plan's choices undone).
    private func resetInPlace(_ layer: Layer) {
        if let relu = layer as? ReLU { relu.inPlace = false; relu.fusedIntoBatchNorm = false }
        if let relu = layer as? ReLU { relu.fusedIntoNextBatchNorm = false }
        if let batchNorm = layer as? BatchNormLayer {
            batchNorm.engine.fusedReLU = false; batchNorm.engine.shareOutput(nil)
            batchNorm.engine.fusedInputReLU = false; batchNorm.engine.mayKeepInputBF16 = false
            batchNorm.engine.bf16GradConsumer = nil; batchNorm.engine.bf16OutputConsumer = nil
        }
        (layer as? Conv2D)?.bf16SharedOutput = nil
        (layer as? Conv2D)?.bf16Consumer = nil
        (layer as? Sequential)?.recomputeBeforeBackward = [:]
        if let concat = layer as? Concat { concat.run = nil; concat.runIndex = 0 }
        (layer as? Residual)?.recomputeBeforeBackward = [:]
        // A Residual's activation is not among its children.
        if let residual = layer as? Residual, let activation = residual.activation { resetInPlace(activation) }
        for child in layer.children { resetInPlace(child.layer) }
    }

    /// Marks a chain's layers; returns its recomputed BatchNorms by the index of their reader.
    private func markChain(_ layers: [Layer], input: [Int]) -> [Int: BatchNormEngine] {
        guard let shapes = chainShapes(layers, input: input) else { return [:] }
        if allowsConcatSharing { markConcatRuns(layers, shapes: shapes) }
        var recomputed: [Int: BatchNormEngine] = [:]
        for i in layers.indices {
            markInPlace(layers[i], input: shapes[i])
            if let batchNorm = layers[i] as? BatchNormLayer { markBF16Input(layers, i, batchNorm, shapes: shapes) }
            guard i > 0, let relu = layers[i] as? ReLU else { continue }
            if allowsFusion, let batchNorm = layers[i - 1] as? BatchNormLayer {
                // Only this ReLU reads the BatchNorm's output (inside a chain a layer's output
                // goes to the next layer alone), so it may be rectified where it is.
                batchNorm.engine.fusedReLU = true
                relu.fusedIntoBatchNorm = true
                fusedReLUs += 1
                if allowsRecompute, i + 1 < layers.count, layers[i + 1] is Conv2D {
                    let elements = shapes[i].reduce(1, *)
                    batchNorm.engine.shareOutput(recomputeBuffer)
                    recomputed[i + 1] = batchNorm.engine
                    recomputedBatchNorms += 1
                    recomputedElements += elements
                    recomputeBufferElements = max(recomputeBufferElements, elements)
                }
            } else if allowsFusion, i + 1 < layers.count, let batchNorm = layers[i + 1] as? BatchNormLayer,
                      ownsOutput(layers[i - 1]) {
                // The producer's output goes to this ReLU alone, and the BatchNorm only reads it.
                batchNorm.engine.fusedInputReLU = true
                relu.fusedIntoBatchNorm = true
                relu.fusedIntoNextBatchNorm = true
                fusedInputReLUs += 1
            } else if allowsInPlace, backwardIgnoresOwnOutput(layers[i - 1]) {
                switchToInPlace(relu, elements: shapes[i].reduce(1, *))
            }
        }
        if allowsBF16Inputs {
            // A BatchNorm's output read by the convolution after it alone (inside a chain a
            // layer's output goes to the next layer; a fused ReLU reads it back in backward).
            for i in layers.indices.dropLast() {
                guard let batchNorm = layers[i] as? BatchNormLayer, let conv = layers[i + 1] as? Conv2D,
                      !batchNorm.engine.fusedReLU, !batchNorm.engine.recomputesOutput,
                      !batchNorm.engine.outputIsScratch else { continue }
                batchNorm.engine.bf16OutputConsumer = conv
                bf16OutputBatchNorms += 1
            }
        }
        return recomputed
    }

    /// Points the BatchNorms that end `residual`'s branch and shortcut at the sum scratch tensors
    /// (see the type's comment).
    private func markSumInputs(_ residual: Residual, input: [Int]) {
        guard let out = try? residual.branch.reduce(input, { try $1.layer.outputShape(for: $0) }) else { return }
        let elements = out.reduce(1, *)
        if let shortcut = residual.shortcut, containsResidual(shortcut.layer) { return }
        func finalBatchNorm(_ layer: Layer?) -> BatchNormEngine? {
            let last = (layer as? Sequential)?.layers.last ?? layer
            guard let batchNorm = last as? BatchNormLayer, !batchNorm.engine.fusedReLU,
                  !batchNorm.engine.recomputesOutput else { return nil }
            return batchNorm.engine
        }
        if let engine = finalBatchNorm(residual.branch.last?.layer) {
            engine.writeOutput(into: sumBranchScratch)
            sumBranchScratchElements = max(sumBranchScratchElements, elements)
            scratchBatchNorms += 1
            scratchElements += elements
        }
        if let engine = finalBatchNorm(residual.shortcut?.layer) {
            engine.writeOutput(into: sumShortcutScratch)
            sumShortcutScratchElements = max(sumShortcutScratchElements, elements)
            scratchBatchNorms += 1
            scratchElements += elements
        }
    }

    private func containsResidual(_ layer: Layer) -> Bool {
        layer is Residual || layer.children.contains { containsResidual($0.layer) }
    }

    /// Gives each maximal run (two or more) of consecutive Concats of the `cat(x, f(x))` form
    /// in a chain one `ConcatRun`. The run's blocks see only each other's outputs (inside a
    /// chain a layer's output goes to the next layer alone); the last one's is contiguous.
    private func markConcatRuns(_ layers: [Layer], shapes: [[Int]]) {
        var i = 0
        while i < layers.count {
            var j = i
            while j < layers.count, let concat = layers[j] as? Concat, concat.sharesStorageForm, shapes[j].count == 4 { j += 1 }
            if j - i >= 2 {
                let members = layers[i..<j].map { $0 as! Concat }
                let run = ConcatRun(count: members.count, width: shapes[j][1])
                for (index, concat) in members.enumerated() {
                    concat.run = run
                    concat.runIndex = index
                    sharedConcatElements += shapes[i + index + 1].reduce(1, *)
                }
                sharedConcats += members.count
                concatRuns += 1
                concatBlockElements += shapes[j].reduce(1, *)
            }
            i = max(j, i + 1)
        }
    }

    /// Marks the BatchNorm at `i` to keep its input as bf16 when that input is a convolution's
    /// output, directly or through a fused ReLU, and points the convolution at the shared buffer.
    private func markBF16Input(_ layers: [Layer], _ i: Int, _ batchNorm: BatchNormLayer, shapes: [[Int]]) {
        guard allowsBF16Inputs, i > 0 else { return }
        var producer = i - 1
        if let relu = layers[producer] as? ReLU, relu.fusedIntoNextBatchNorm { producer -= 1 }
        guard producer >= 0, let conv = layers[producer] as? Conv2D else { return }
        let elements = shapes[i].reduce(1, *)
        batchNorm.engine.mayKeepInputBF16 = true
        conv.bf16SharedOutput = bf16ProducerBuffer
        conv.bf16Consumer = batchNorm.engine
        batchNorm.engine.bf16GradConsumer = conv
        bf16InputBatchNorms += 1
        bf16InputElements += elements
        bf16ProducerBufferElements = max(bf16ProducerBufferElements, elements)
    }

    /// Whether `layer`'s output is a tensor of its own that it does not overwrite later.
    private func ownsOutput(_ layer: Layer) -> Bool {
        layer is Conv2D || layer is Linear || layer is MaxPool2d || layer is AvgPool2d || layer is Concat || layer is Residual
    }

    private func switchToInPlace(_ relu: ReLU, elements: Int) {
        relu.inPlace = true
        inPlaceReLUs += 1
        inPlaceElements += elements
    }

    /// Whether `layer`'s output is its own tensor, read by no part of its backward but its shape.
    private func backwardIgnoresOwnOutput(_ layer: Layer) -> Bool {
        layer is Conv2D || layer is BatchNorm2d || layer is BatchNorm1d || layer is Linear || layer is MaxPool2d
            || layer is AvgPool2d || ((layer as? Concat).map { $0.run == nil } ?? false)
            || ((layer as? Residual).map { $0.activation == nil || $0.activation is ReLU } ?? false)
    }
}

/// The input shape of each layer of a chain (one more entry: the chain's output), or nil
/// when a layer rejects its input.
func chainShapes(_ layers: [Layer], input: [Int]) -> [[Int]]? {
    var shapes = [input]
    for layer in layers {
        guard let next = try? layer.outputShape(for: shapes[shapes.count - 1]) else { return nil }
        shapes.append(next)
    }
    return shapes
}

/// A layer that tells a `MemoryPlan` where its dL/dx (and any other backward tensor) may live.
protocol MemoryPlanned: Layer {
    /// Takes slots for this layer's backward tensors (`plan.leaf`, `plan.slot`) given its input
    /// shape, the slots dL/dy may be in, and the slots live around it; returns the slots its
    /// dL/dx may be in.
    func planBackward(_ plan: MemoryPlan, input: [Int], incoming: Set<Int>, busy: Set<Int>) -> Set<Int>
}

extension Sequential: MemoryPlanned {
    func planBackward(_ plan: MemoryPlan, input: [Int], incoming: Set<Int>, busy: Set<Int>) -> Set<Int> {
        plan.placeChain(layers, input: input, incoming: incoming, busy: busy)
    }
}

extension Identity: MemoryPlanned {
    func planBackward(_ plan: MemoryPlan, input: [Int], incoming: Set<Int>, busy: Set<Int>) -> Set<Int> { incoming }
}

/// Where a model's step memory goes, by category, in bytes (an account from the layer
/// shapes, not a heap census: allocator slack and the data pipeline are outside it).
public struct MemoryAccount: Sendable {
    /// Forward outputs the layers hold for backward (in-place ReLUs hold none; max-pool
    /// argmax and dropout masks included).
    public var activations = 0
    /// dL/dx storage: the plan's slots, or every layer's own tensor without a plan.
    public var inputGradients = 0
    /// Convolution scratch (im2col panels, packed planes and weights), as last sized.
    public var convolutionWorkspaces = 0

    /// The account of `root` for inputs of `inputShape` (batch included) under `plan`, which
    /// may have been made for another batch size: every tensor it places scales with the batch.
    /// With `arithmetic` bf16, the BatchNorms that keep their input as bf16 hold 2 bytes an
    /// element of it and their producers' outputs share one buffer.
    public init(root: Layer, inputShape: [Int], plan: MemoryPlan, arithmetic: GemmArithmetic = .fp32) {
        let float = MemoryLayout<Float>.stride
        let bf16 = arithmetic.precision == .bf16
        activations = MemoryAccount.outputBytes(root, input: inputShape, bf16: bf16)
        inputGradients = plan.plannedBytes / max(plan.inputShape.first ?? 1, 1) * (inputShape.first ?? 1)
        let scratch = plan.recomputeBufferElements + plan.sumBranchScratchElements + plan.sumShortcutScratchElements
        activations += float * scratch / max(plan.inputShape.first ?? 1, 1) * (inputShape.first ?? 1)
        if bf16 {
            activations += float * plan.bf16ProducerBufferElements / max(plan.inputShape.first ?? 1, 1) * (inputShape.first ?? 1)
        }
        var seen = Set<ObjectIdentifier>()
        MemoryAccount.visit(root) { layer in
            if let conv = layer as? Conv2D, seen.insert(ObjectIdentifier(conv.workspace)).inserted {
                convolutionWorkspaces += conv.workspace.bytes
            }
        }
    }

    private static func visit(_ layer: Layer, _ body: (Layer) -> Void) {
        body(layer)
        for child in layer.children { visit(child.layer, body) }
    }

    /// Bytes of the forward tensors `layer` and its children keep, given its input shape (with
    /// `bf16`: as bf16 arithmetic holds them).
    static func outputBytes(_ layer: Layer, input: [Int], bf16: Bool) -> Int {
        guard let output = try? layer.outputShape(for: input) else { return 0 }
        let float = MemoryLayout<Float>.stride
        let own = float * output.reduce(1, *)
        switch layer {
        case let sequential as Sequential:
            guard let shapes = chainShapes(sequential.layers, input: input) else { return 0 }
            return zip(sequential.layers, shapes).reduce(0) { $0 + outputBytes($1.0, input: $1.1, bf16: bf16) }
        case let residual as Residual:
            let layers = residual.branch.map(\.layer)
            guard let shapes = chainShapes(layers, input: input) else { return 0 }
            var total = zip(layers, shapes).reduce(0) { $0 + outputBytes($1.0, input: $1.1, bf16: bf16) } + own   // the sum
            if let shortcut = residual.shortcut { total += outputBytes(shortcut.layer, input: input, bf16: bf16) }
            if let activation = residual.activation { total += outputBytes(activation, input: shapes[shapes.count - 1], bf16: bf16) }
            return total
        case let concat as Concat:
            // In a shared run only the first block holds a tensor: the run's block-wide one.
            let kept = concat.run.map { concat.runIndex == 0 ? own / output[1] * $0.width : 0 } ?? own
            return concat.branches.reduce(kept) { $0 + outputBytes($1.layer, input: input, bf16: bf16) }
        case is Identity:
            return 0
        case let relu as ReLU:
            return relu.inPlace || relu.fusedIntoBatchNorm ? 0 : own
        case let batchNorm as BatchNormLayer:
            // The shared buffers are counted once; the bf16 copy of the input is 2 bytes an element.
            let copy = bf16 && batchNorm.engine.mayKeepInputBF16 ? 2 * input.reduce(1, *) : 0
            return (batchNorm.engine.recomputesOutput || batchNorm.engine.outputIsScratch ? 0 : own) + copy
        case let conv as Conv2D:
            return bf16 && conv.bf16SharedOutput != nil ? 0 : own
        case let dropout as Dropout:
            return dropout.p > 0 ? 2 * own : 0   // output and mask
        case is MaxPool2d:
            return 2 * own   // output and Int32 argmax
        default:
            return layer.children.isEmpty ? own
                : layer.children.reduce(own) { $0 + outputBytes($1.layer, input: input, bf16: bf16) }
        }
    }
}
