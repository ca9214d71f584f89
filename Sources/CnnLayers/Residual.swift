import CnnCore

/// A residual block, y = activation(branch(x) + shortcut(x)), with the
/// shortcut the identity when absent (the ResNet basic block).
///
/// Children are the branch entries then the shortcut, under the names given,
/// so a ResNet block gets PyTorch's names (c1, b1, c2, b2, sc.0, sc.1 with a
/// `Sequential` shortcut named "sc"). The activation is applied functionally
/// (F.relu in the reference) and is not a child, so it must hold no
/// parameters or buffers. Backward runs the shortcut first, then the branch
/// in reverse, calling `context.gradientsReady` after each child (reverse
/// state_dict order), and sums the two paths' input gradients.
public final class Residual: Layer {
    public let branch: [(name: String, layer: Layer)]
    public let shortcut: (name: String, layer: Layer)?
    public let activation: Layer?
    public var typeName: String { "Block" }
    private let sum = Tensor(shape: [0])
    var gradInput = Tensor(shape: [0])
    private var input: Tensor?
    /// Recomputed BatchNorms by the index of the branch layer that reads their output (see
    /// `Sequential.recomputeBeforeBackward`).
    var recomputeBeforeBackward: [Int: BatchNormEngine] = [:]

    /// A block from its branch layers, optional shortcut, and optional parameter-free activation.
    public init(branch: [(String, Layer)], shortcut: (String, Layer)?, activation: Layer?) {
        precondition(!branch.isEmpty, "Residual: the branch needs at least one layer")
        if let activation {
            precondition(activation.parameterSpecs.isEmpty && activation.bufferSpecs.isEmpty && activation.children.isEmpty,
                         "Residual: the activation \(activation.typeName) must hold no parameters or buffers")
        }
        self.branch = branch.map { (name: $0.0, layer: $0.1) }
        self.shortcut = shortcut.map { (name: $0.0, layer: $0.1) }
        self.activation = activation
    }

    public var children: [(name: String, layer: Layer)] {
        branch + (shortcut.map { [$0] } ?? [])
    }

    public func outputShape(for input: [Int]) throws -> [Int] {
        let b = try branch.reduce(input) { try $1.layer.outputShape(for: $0) }
        let s = try shortcut?.layer.outputShape(for: input) ?? input
        guard b == s else {
            throw CnnError.shapeMismatch(layer: typeName, expected: "branch output \(formatShape(b)) to equal shortcut output",
                                         got: formatShape(s))
        }
        return try activation?.outputShape(for: b) ?? b
    }

    public func multiplyAccumulates(for input: [Int]) -> Int {
        var shape = input, total = 0
        for (_, layer) in branch {
            total += layer.multiplyAccumulates(for: shape)
            shape = (try? layer.outputShape(for: shape)) ?? shape
        }
        if let shortcut { total += shortcut.layer.multiplyAccumulates(for: input) }
        return total
    }

    public func forward(_ input: Tensor, context: ExecutionContext) -> Tensor {
        self.input = input
        var b = input
        for (_, layer) in branch { b = layer.forward(b, context: context) }
        let s = shortcut?.layer.forward(input, context: context) ?? input
        precondition(b.shape == s.shape, "Block: branch output \(formatShape(b.shape)) != shortcut output \(formatShape(s.shape))")
        ensureShape(sum, b.shape)
        add(b.data, s.data, into: sum.data, count: sum.count)
        return activation?.forward(sum, context: context) ?? sum
    }

    public func backward(_ gradOutput: Tensor, context: ExecutionContext) -> Tensor {
        guard let input else { preconditionFailure("Block: backward before forward") }
        let d = activation?.backward(gradOutput, context: context) ?? gradOutput
        // Shortcut path first: its parameters come last in state_dict order.
        var ds = d
        if let shortcut {
            ds = shortcut.layer.backward(d, context: context)
            context.gradientsReady?(shortcut.layer)
        }
        ensureShape(gradInput, input.shape)
        precondition(ds.count == gradInput.count, "Block: shortcut gradient does not match input")
        // Copy now: the identity shortcut hands back `d`, which a branch layer may own and overwrite.
        copyElements(ds.data, into: gradInput.data, count: gradInput.count)
        var db = d
        for (index, (_, layer)) in branch.enumerated().reversed() {
            recomputeBeforeBackward[index]?.recomputeOutput()
            db = layer.backward(db, context: context)
            context.gradientsReady?(layer)
        }
        precondition(db.count == gradInput.count, "Block: branch gradient does not match input")
        addInPlace(gradInput.data, db.data, count: gradInput.count)
        return gradInput
    }
}

extension Residual: MemoryPlanned {
    func planBackward(_ plan: MemoryPlan, input: [Int], incoming: Set<Int>, busy: Set<Int>) -> Set<Int> {
        let layers = branch.map(\.layer)
        guard let shapes = chainShapes(layers, input: input) else { return incoming }
        // dL/d(sum), read by the shortcut and then by the branch.
        let d = activation.map { plan.place($0, input: shapes[shapes.count - 1], incoming: incoming, busy: busy) } ?? incoming
        let ds = shortcut.map { plan.place($0.layer, input: input, incoming: d, busy: busy.union(d)) } ?? d
        // The block's dL/dx accumulates the shortcut's part while the branch runs.
        let own = plan.slot(for: input, avoiding: busy.union(d).union(ds))
        gradInput = plan.slots[own]
        _ = plan.placeChain(layers, input: input, incoming: d, busy: busy.union([own]))
        return [own]
    }
}
