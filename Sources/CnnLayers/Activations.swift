import CnnCore

/// The tensors an elementwise activation owns: its output and dL/dx, plus
/// the input of the last forward (for the activations whose derivative needs it).
final class ElementwiseState {
    let output = Tensor(shape: [0])
    var gradInput = Tensor(shape: [0])
    var input: Tensor?

    func prepareForward(_ x: Tensor) {
        input = x
        ensureShape(output, x.shape)
    }

    func prepareBackward(_ dy: Tensor, layer: String) {
        precondition(dy.count == output.count, "\(layer): gradient \(formatShape(dy.shape)) does not match output \(formatShape(output.shape))")
        ensureShape(gradInput, output.shape)
    }
}

/// max(x, 0), elementwise (PyTorch's nn.ReLU).
public final class ReLU: Layer {
    public var typeName: String { "ReLU" }
    let state = ElementwiseState()

    /// A ReLU activation.
    public init() {}

    public func outputShape(for input: [Int]) throws -> [Int] { try requireNonEmpty(input, layer: typeName); return input }

    /// Overwrite the input with the output instead of holding an output of its own (set by
    /// `MemoryPlan` when no other reader of the input remains: backward needs only y > 0).
    public internal(set) var inPlace = false

    /// A BatchNorm applies this ReLU (set by `MemoryPlan`): the one before it
    /// (`BatchNormEngine.fusedReLU`: forward hands on its input, already max(·, 0), and backward
    /// hands on dL/dy, which that BatchNorm masks), or the one after it (`fusedIntoNextBatchNorm`).
    public internal(set) var fusedIntoBatchNorm = false

    /// Fused into the BatchNorm after it (`BatchNormEngine.fusedInputReLU`): forward hands on
    /// its input unrectified, and the BatchNorm reads it as max(x, 0) and masks its own dL/dx.
    public internal(set) var fusedIntoNextBatchNorm = false

    public func forward(_ input: Tensor, context: ExecutionContext) -> Tensor {
        if fusedIntoBatchNorm { return input }
        if inPlace {
            state.input = input
            reluForward(x: input.data, y: input.data, count: input.count)
            return input
        }
        state.prepareForward(input)
        reluForward(x: input.data, y: state.output.data, count: input.count)
        return state.output
    }

    public func backward(_ gradOutput: Tensor, context: ExecutionContext) -> Tensor {
        if fusedIntoBatchNorm { return gradOutput }
        if inPlace {
            guard let y = state.input else { preconditionFailure("ReLU: backward before forward") }
            precondition(gradOutput.count == y.count, "ReLU: gradient \(formatShape(gradOutput.shape)) does not match output \(formatShape(y.shape))")
            ensureShape(state.gradInput, y.shape)
            reluBackward(y: y.data, dy: gradOutput.data, dx: state.gradInput.data, count: gradOutput.count)
            return state.gradInput
        }
        state.prepareBackward(gradOutput, layer: typeName)
        reluBackward(y: state.output.data, dy: gradOutput.data, dx: state.gradInput.data, count: gradOutput.count)
        return state.gradInput
    }
}

/// x for x > 0, negativeSlope·x otherwise (PyTorch's nn.LeakyReLU).
public final class LeakyReLU: Layer {
    public let negativeSlope: Float
    public var typeName: String { "LeakyReLU" }
    let state = ElementwiseState()

    /// A leaky ReLU with the given slope for negative inputs.
    public init(negativeSlope: Float = 0.01) {
        self.negativeSlope = negativeSlope
    }

    public func outputShape(for input: [Int]) throws -> [Int] { try requireNonEmpty(input, layer: typeName); return input }

    public func forward(_ input: Tensor, context: ExecutionContext) -> Tensor {
        state.prepareForward(input)
        leakyReLUForward(x: input.data, y: state.output.data, count: input.count, slope: negativeSlope)
        return state.output
    }

    public func backward(_ gradOutput: Tensor, context: ExecutionContext) -> Tensor {
        guard let x = state.input else { preconditionFailure("LeakyReLU: backward before forward") }
        state.prepareBackward(gradOutput, layer: typeName)
        leakyReLUBackward(x: x.data, dy: gradOutput.data, dx: state.gradInput.data, count: gradOutput.count,
                          slope: negativeSlope)
        return state.gradInput
    }
}

/// x for x > 0, alpha·(eˣ − 1) otherwise (PyTorch's nn.ELU).
public final class ELU: Layer {
    public let alpha: Float
    public var typeName: String { "ELU" }
    let state = ElementwiseState()

    /// An ELU with the given saturation value −alpha.
    public init(alpha: Float = 1) {
        self.alpha = alpha
    }

    public func outputShape(for input: [Int]) throws -> [Int] { try requireNonEmpty(input, layer: typeName); return input }

    public func forward(_ input: Tensor, context: ExecutionContext) -> Tensor {
        state.prepareForward(input)
        eluForward(x: input.data, y: state.output.data, count: input.count, alpha: alpha)
        return state.output
    }

    public func backward(_ gradOutput: Tensor, context: ExecutionContext) -> Tensor {
        guard let x = state.input else { preconditionFailure("ELU: backward before forward") }
        state.prepareBackward(gradOutput, layer: typeName)
        eluBackward(x: x.data, y: state.output.data, dy: gradOutput.data, dx: state.gradInput.data,
                    count: gradOutput.count, alpha: alpha)
        return state.gradInput
    }
}

/// 1 / (1 + e⁻ˣ), elementwise (PyTorch's nn.Sigmoid).
public final class Sigmoid: Layer {
    public var typeName: String { "Sigmoid" }
    let state = ElementwiseState()

    /// A sigmoid activation.
    public init() {}

    public func outputShape(for input: [Int]) throws -> [Int] { try requireNonEmpty(input, layer: typeName); return input }

    public func forward(_ input: Tensor, context: ExecutionContext) -> Tensor {
        state.prepareForward(input)
        sigmoidForward(x: input.data, y: state.output.data, count: input.count)
        return state.output
    }

    public func backward(_ gradOutput: Tensor, context: ExecutionContext) -> Tensor {
        state.prepareBackward(gradOutput, layer: typeName)
        sigmoidBackward(y: state.output.data, dy: gradOutput.data, dx: state.gradInput.data, count: gradOutput.count)
        return state.gradInput
    }
}

/// tanh(x), elementwise (PyTorch's nn.Tanh).
public final class Tanh: Layer {
    public var typeName: String { "Tanh" }
    let state = ElementwiseState()

    /// A tanh activation.
    public init() {}

    public func outputShape(for input: [Int]) throws -> [Int] { try requireNonEmpty(input, layer: typeName); return input }

    public func forward(_ input: Tensor, context: ExecutionContext) -> Tensor {
        state.prepareForward(input)
        tanhForward(x: input.data, y: state.output.data, count: input.count)
        return state.output
    }

    public func backward(_ gradOutput: Tensor, context: ExecutionContext) -> Tensor {
        state.prepareBackward(gradOutput, layer: typeName)
        tanhBackward(y: state.output.data, dy: gradOutput.data, dx: state.gradInput.data, count: gradOutput.count)
        return state.gradInput
    }
}

/// The elementwise activations: dL/dx has the input's shape and may take any free slot.
protocol ElementwiseLayer: MemoryPlanned {
    var state: ElementwiseState { get }
}

extension ElementwiseLayer {
    func planBackward(_ plan: MemoryPlan, input: [Int], incoming: Set<Int>, busy: Set<Int>) -> Set<Int> {
        plan.leaf(input: input, incoming: incoming, busy: busy) { state.gradInput = $0 }
    }
}

extension ReLU: ElementwiseLayer {
    func planBackward(_ plan: MemoryPlan, input: [Int], incoming: Set<Int>, busy: Set<Int>) -> Set<Int> {
        // Fused: dL/dx is the dL/dy it was given.
        if fusedIntoBatchNorm { return incoming }
        return plan.leaf(input: input, incoming: incoming, busy: busy) { state.gradInput = $0 }
    }
}
extension LeakyReLU: ElementwiseLayer {}
extension ELU: ElementwiseLayer {}
extension Sigmoid: ElementwiseLayer {}
extension Tanh: ElementwiseLayer {}
