import CnnCore

/// Runs every branch on the same input and concatenates their outputs along
/// the channel dimension (Inception modules; DenseNet with an `Identity()`
/// branch beside the dense layer). Outputs must agree in every dimension but
/// the second. Backward splits dy by channel, runs the branches in reverse
/// order (calling `context.gradientsReady` after each), and sums their input
/// gradients.
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
