import CnnCore

/// Runs every branch on the same input and concatenates their outputs along
/// the channel dimension (Inception modules; DenseNet with an `Identity()`
/// branch beside the dense layer). Outputs must agree in every dimension but
/// the second. Backward splits dy by channel, runs the branches in reverse
/// order (calling `context.gradientsReady` after each), and sums their input
/// gradients.
///
/// Shared storage (DenseNet's memory-efficient layout, Pleiss et al. 2017; set by a
/// `MemoryPlan`, see `ConcatRun`): in a chain of `cat(x, f(x))` blocks the outputs are
/// channel prefixes of one block-wide tensor, so each block writes only f's channels, and
/// backward keeps the gradient of the shared features in one block-wide tensor too.
public final class Concat: Layer {
    public let branches: [(name: String, layer: Layer)]
    public var typeName: String { "Concat" }
    private let output = Tensor(shape: [0])
    var gradInput = Tensor(shape: [0])
    var branchGrads: [Tensor]
    private var branchChannels: [Int]
    private var input: Tensor?
    /// The branches' outputs of the last forward (kept in place: no per-step array).
    private var outs: [Tensor]
    /// The run of blocks sharing storage this one belongs to, and its position in it (set by
    /// `MemoryPlan`; nil: this block copies).
    var run: ConcatRun?
    var runIndex = 0
    /// This block's output (a prefix of `run.block`) and dL/dx (a prefix of `run.gradient`)
    /// as views, rebound at every call.
    private let outputView = Tensor(shape: [0])
    private let gradientView = Tensor(shape: [0])

    /// Branches whose own children are named as children of this block (no prefix of their
    /// own): torchvision's _DenseLayer is an nn.Sequential whose forward concatenates.
    public let inlined: Set<String>

    /// A concatenation of the named branches, in channel order; the branches named in
    /// `inlined` give their children unprefixed state_dict names.
    public init(branches: [(String, Layer)], inlined: Set<String> = []) {
        precondition(!branches.isEmpty, "Concat: needs at least one branch")
        self.branches = branches.map { (name: $0.0, layer: $0.1) }
        self.inlined = inlined
        branchGrads = branches.map { _ in Tensor(shape: [0]) }
        branchChannels = Array(repeating: 0, count: branches.count)
        outs = branches.map { _ in Tensor(shape: [0]) }
    }

    public var children: [(name: String, layer: Layer)] {
        inlined.isEmpty ? branches : branches.flatMap { inlined.contains($0.name) ? $0.layer.children : [$0] }
    }

    public func outputShape(for input: [Int]) throws -> [Int] {
        var result: [Int]? = nil
        for (name, layer) in branches {
            let s = try layer.outputShape(for: input)
            guard s.count >= 2 else {
                throw CnnError.shapeMismatch(layer: typeName, expected: "branch \(name) output with a channel dimension",
                                             got: formatShape(s))
            }
            if var r = result {
                guard r.count == s.count, r[0] == s[0], r.dropFirst(2).elementsEqual(s.dropFirst(2)) else {
                    throw CnnError.shapeMismatch(layer: typeName, expected: "branch \(name) output matching \(formatShape(r)) except in channels",
                                                 got: formatShape(s))
                }
                r[1] += s[1]
                result = r
            } else {
                result = s
            }
        }
        return result!
    }

    public func multiplyAccumulates(for input: [Int]) -> Int {
        branches.reduce(0) { $0 + $1.layer.multiplyAccumulates(for: input) }
    }

    public func forward(_ input: Tensor, context: ExecutionContext) -> Tensor {
        self.input = input
        if let run { return sharedForward(input, run: run, context: context) }
        for b in branches.indices { outs[b] = branches[b].layer.forward(input, context: context) }
        // A branch may return the input itself (Identity); all outputs are read before anything is written.
        let first = outs[0].shape
        let n = first[0], inner = first.dropFirst(2).reduce(1, *)
        var totalC = 0
        for b in outs.indices {
            let o = outs[b]
            precondition(o.shape.count == first.count && o.shape[0] == n && o.shape.dropFirst(2).elementsEqual(first.dropFirst(2)),
                         "Concat: branch \(branches[b].name) output \(formatShape(o.shape)) does not match \(formatShape(first))")
            branchChannels[b] = o.shape[1]
            totalC += o.shape[1]
        }
        ensureShape(output, like: first, channels: totalC)
        var c0 = 0
        for b in outs.indices {
            let o = outs[b], cb = branchChannels[b]
            for i in 0..<n {
                (output.data + (i * totalC + c0) * inner).update(from: o.data + i * cb * inner, count: cb * inner)
            }
            c0 += cb
        }
        return output
    }

    public func backward(_ gradOutput: Tensor, context: ExecutionContext) -> Tensor {
        guard let input else { preconditionFailure("Concat: backward before forward") }
        if let run { return sharedBackward(gradOutput, input: input, run: run, context: context) }
        precondition(gradOutput.count == output.count, "Concat: gradient \(formatShape(gradOutput.shape)) does not match output")
        let n = output.shape[0], totalC = output.shape[1], inner = output.shape.dropFirst(2).reduce(1, *)
        ensureShape(gradInput, input.shape)
        gradInput.zero()
        var c0 = totalC
        for b in branches.indices.reversed() {
            let cb = branchChannels[b]
            c0 -= cb
            let g = branchGrads[b]
            ensureShape(g, like: output.shape, channels: cb)
            for i in 0..<n {
                (g.data + i * cb * inner).update(from: gradOutput.data + (i * totalC + c0) * inner, count: cb * inner)
            }
            let dx = branches[b].layer.backward(g, context: context)
            context.gradientsReady?(branches[b].layer)
            precondition(dx.count == gradInput.count, "Concat: branch \(branches[b].name) input gradient does not match input")
            addInPlace(gradInput.data, dx.data, count: gradInput.count)
        }
        return gradInput
    }
}

// MARK: shared storage

/// Consecutive blocks `cat(x, f(x))` of a chain (Concat of an Identity and one branch whose
/// first layer reads strided input, e.g. a BatchNorm) that share storage, found by
/// `MemoryPlan`. With x₀ the run's input and kᵢ the channels of block i's branch:
/// - forward: `block` is [N, C₀ + Σk, H, W]; the first block copies x₀ into its first C₀
///   channels, block i writes f(x) into the kᵢ channels after its input's, and returns the
///   channel prefix it covers as a view (the last block: `block` itself, contiguous). The next
///   block's Identity hands that view on, and its branch reads it with the image stride. The
///   copying layout writes Σ over blocks of their whole output instead: quadratic in the
///   run's length, in time and in memory held for backward.
/// - backward: `gradient` (same shape) takes the last block's dL/dy once; block i copies
///   its branch's kᵢ channels out, runs the branch, and adds the branch's dL/dx into the
///   channel prefix in place, which is the previous block's dL/dy; the first block writes
///   that sum to its own contiguous dL/dx. Same operations, in the same order, on the same
///   values as the copying layout ((0 + dx_branch) + dy_identity per element): same bits.
/// Nothing may write `block` between forward and backward (the branches' BatchNorms read
/// their inputs from it again): `MemoryPlan` keeps ReLUs after the run out of place.
final class ConcatRun {
    /// How many blocks (each knows its `runIndex`; the run holds no reference to them, which
    /// would make a cycle), and the channels of the last one's output.
    let count: Int
    let width: Int
    let block = Tensor(shape: [0])
    /// dL/d`block`: the plan's slot for it, else its own tensor.
    var gradient = Tensor(shape: [0])

    init(count: Int, width: Int) {
        self.count = count
        self.width = width
    }
}

extension Concat {
    /// Whether this block has the form a `ConcatRun` takes: an Identity beside one branch
    /// whose first layer reads strided input.
    var sharesStorageForm: Bool {
        branches.count == 2 && branches[0].layer is Identity && readsStridedInput(branches[1].layer)
    }

    private func sharedForward(_ input: Tensor, run: ConcatRun, context: ExecutionContext) -> Tensor {
        let block = run.block
        let n = input.shape[0], cIn = input.shape[1], inner = input.shape.dropFirst(2).reduce(1, *)
        if runIndex == 0 {
            precondition(input.isContiguous, "Concat: the input of a shared run must be contiguous")
            ensureShape(block, like: input.shape, channels: run.width)
            copyChannels(from: input.data, imageStride: cIn * inner, to: block.data, imageStride: run.width * inner,
                         n: n, elements: cIn * inner)
        } else {
            precondition(input.data == block.data && input.imageStride == block.sampleCount,
                         "Concat: block \(runIndex) of a shared run did not get the previous block's output")
        }
        outs[0] = branches[0].layer.forward(input, context: context)
        precondition(outs[0] === input, "Concat: the first branch of a shared run must hand on its input")
        let o = branches[1].layer.forward(input, context: context)
        outs[1] = o
        precondition(o.isContiguous && o.shape.count == input.shape.count && o.shape[0] == n
                     && o.shape.dropFirst(2).elementsEqual(input.shape.dropFirst(2)) && cIn + o.shape[1] <= run.width,
                     "Concat: branch \(branches[1].name) output \(formatShape(o.shape)) does not fit the shared run")
        branchChannels[0] = cIn
        branchChannels[1] = o.shape[1]
        let cOut = cIn + o.shape[1]
        copyChannels(from: o.data, imageStride: o.shape[1] * inner, to: block.data + cIn * inner,
                     imageStride: run.width * inner, n: n, elements: o.shape[1] * inner)
        if runIndex == run.count - 1 {
            precondition(cOut == run.width, "Concat: a shared run ends at \(cOut) channels, planned \(run.width)")
            return block
        }
        outputView.viewChannelPrefix(of: block, channels: cOut)
        return outputView
    }

    private func sharedBackward(_ gradOutput: Tensor, input: Tensor, run: ConcatRun, context: ExecutionContext) -> Tensor {
        let g = run.gradient
        let n = input.shape[0], cIn = branchChannels[0], k = branchChannels[1]
        let inner = input.shape.dropFirst(2).reduce(1, *), stride = run.width * inner
        if runIndex == run.count - 1 {
            precondition(gradOutput.isContiguous && gradOutput.count == run.block.count && gradOutput !== g,
                         "Concat: gradient \(formatShape(gradOutput.shape)) does not match the shared run's output")
            ensureShape(g, run.block.shape)
            g.data.update(from: gradOutput.data, count: g.count)
        } else {
            precondition(gradOutput.data == g.data && gradOutput.shape[1] == cIn + k,
                         "Concat: block \(runIndex) of a shared run did not get the next block's dL/dx")
        }
        let part = branchGrads[1]
        ensureShape(part, like: input.shape, channels: k)
        copyChannels(from: g.data + cIn * inner, imageStride: stride, to: part.data, imageStride: k * inner,
                     n: n, elements: k * inner)
        let dx = branches[1].layer.backward(part, context: context)
        context.gradientsReady?(branches[1].layer)
        precondition(dx.isContiguous && dx.count == n * cIn * inner,
                     "Concat: branch \(branches[1].name) input gradient does not match input")
        let result: Tensor
        if runIndex == 0 {
            ensureShape(gradInput, input.shape)
            result = gradInput
        } else {
            gradientView.viewChannelPrefix(of: g, channels: cIn)
            result = gradientView
        }
        // The copying layout sums into zeros: (0 + dx) + dy, which differs from dx + dy in the sign of some zeros.
        accumulateChannels(dx.data, imageStride: cIn * inner, plus: g.data, imageStride: stride,
                           into: result.data, imageStride: result.imageStride, n: n, elements: cIn * inner)
        // The Identity branch's backward hands dL/dy on (its part is already in place).
        _ = branches[0].layer.backward(result, context: context)
        context.gradientsReady?(branches[0].layer)
        return result
    }
}

/// Whether `layer` reads its input only through kernels that take an image stride (so it may
/// be given a channel-prefix view): a BatchNorm2d, or a chain starting with one.
func readsStridedInput(_ layer: Layer) -> Bool {
    if layer is BatchNorm2d { return true }
    if let sequential = layer as? Sequential, let first = sequential.layers.first { return readsStridedInput(first) }
    return false
}

/// Copies `elements` floats per image for `n` images between tensors of different image strides.
func copyChannels(from src: UnsafePointer<Float>, imageStride srcStride: Int, to dst: UnsafeMutablePointer<Float>,
                  imageStride dstStride: Int, n: Int, elements: Int) {
    for i in 0..<n { (dst + i * dstStride).update(from: src + i * srcStride, count: elements) }
}

/// out = (0 + a) + b elementwise over `elements` floats per image for `n` images (each with its
/// own image stride; `out` may be `b`).
func accumulateChannels(_ a: UnsafePointer<Float>, imageStride aStride: Int, plus b: UnsafePointer<Float>, imageStride bStride: Int,
                        into out: UnsafeMutablePointer<Float>, imageStride outStride: Int, n: Int, elements: Int) {
    forEachRange(n * elementBlocksPerImage(elements), work: 4096, minimum: streamingSplitMinimum) { range in
        let blocks = elementBlocksPerImage(elements)
        for r in range {
            let i = r / blocks, start = (r % blocks) * 4096, end = min(start + 4096, elements)
            let p = a + i * aStride, q = b + i * bStride, o = out + i * outStride
            for j in start..<end { o[j] = (0 + p[j]) + q[j] }
        }
    }
}

@inline(__always) private func elementBlocksPerImage(_ elements: Int) -> Int { (elements + 4095) / 4096 }

/// Resizes `tensor` to `shape` with dimension 1 replaced by `channels`, building
/// the new shape array only when the tensor's shape differs.
func ensureShape(_ tensor: Tensor, like shape: [Int], channels: Int) {
    let current = tensor.shape
    var same = current.count == shape.count
    if same {
        for d in shape.indices where current[d] != (d == 1 ? channels : shape[d]) { same = false; break }
    }
    if !same {
        var s = shape
        s[1] = channels
        tensor.resize(to: s)
    }
}

extension Concat: MemoryPlanned {
    func planBackward(_ plan: MemoryPlan, input: [Int], incoming: Set<Int>, busy: Set<Int>) -> Set<Int> {
        // dL/dy is read by every branch's copy and dL/dx accumulates over all branches.
        let own = plan.slot(for: input, avoiding: busy.union(incoming))
        gradInput = plan.slots[own]
        let live = busy.union(incoming).union([own])
        for b in branches.indices {
            guard let out = try? branches[b].layer.outputShape(for: input) else { continue }
            let part = plan.slot(for: out, avoiding: live)
            branchGrads[b] = plan.slots[part]
            _ = plan.place(branches[b].layer, input: input, incoming: [part], busy: live)
        }
        return [own]
    }
}
