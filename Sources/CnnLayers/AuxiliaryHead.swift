import CnnCore

/// An auxiliary classifier attached to the trunk (GoogLeNet's aux1 and aux2): in the
/// main path it is the identity; in training mode it also runs its head on its input and
/// keeps the head's logits (`output`) for the training loss, which adds `weight` times
/// their loss to the main one. Evaluation and prediction (training off) never run the head.
///
/// Its children are the head's children, so parameters get torchvision's names
/// (`aux1.conv.weight`, `aux1.fc1.weight`). Backward: when the loss has handed the head its
/// gradient (`setOutputGradient`), the head's backward runs and its dL/dx is added to the
/// trunk's gradient at this point; otherwise the gradient passes through unchanged.
public final class AuxiliaryHead: Layer {
    /// The classifier layers (input: the trunk's activation here; output: N x classes).
    public let head: Sequential
    /// Weight of this head's loss in the training objective (0.3 in the GoogLeNet paper).
    public let weight: Float
    public var typeName: String { "AuxiliaryHead" }
    /// The head's logits of the last training-mode forward; nil after an evaluation forward.
    public private(set) var output: Tensor?
    private var outputGradient: Tensor?
    private let gradInput = Tensor(shape: [0])

    /// A head from its layers and loss weight (finite, >= 0).
    public init(head: Sequential, weight: Float) throws {
        guard weight.isFinite, weight >= 0 else {
            throw CnnError.invalidArgument(layer: "AuxiliaryHead", argument: "weight", value: "\(weight)",
                                           reason: "must be finite and >= 0")
        }
        self.head = head
        self.weight = weight
    }

    public var children: [(name: String, layer: Layer)] { head.children }

    /// The trunk's shape passes through; the head must map it to N x classes (checked here).
    public func outputShape(for input: [Int]) throws -> [Int] {
        let out = try head.outputShape(for: input)
        guard out.count == 2, out[0] == input[0] else {
            throw CnnError.shapeMismatch(layer: typeName, expected: "head output N x classes", got: formatShape(out))
        }
        return input
    }

    /// Shape of the head's logits for a trunk input of `input`.
    public func headOutputShape(for input: [Int]) throws -> [Int] { try head.outputShape(for: input) }

    /// Zero: the head runs only in training, so it adds nothing at inference.
    public func multiplyAccumulates(for input: [Int]) -> Int { 0 }

    public func forward(_ input: Tensor, context: ExecutionContext) -> Tensor {
        outputGradient = nil
        output = context.training ? head.forward(input, context: context) : nil
        return input
    }

    /// Hands the head dL/d(its logits) for the next `backward` (the loss has scaled it by `weight`).
    public func setOutputGradient(_ gradient: Tensor) {
        guard let output else { preconditionFailure("AuxiliaryHead: gradient given without a training forward") }
        precondition(gradient.shape == output.shape, "AuxiliaryHead: gradient \(formatShape(gradient.shape)) != logits \(formatShape(output.shape))")
        outputGradient = gradient
    }

    public func backward(_ gradOutput: Tensor, context: ExecutionContext) -> Tensor {
        guard let g = outputGradient else { return gradOutput }
        outputGradient = nil
        let wanted = context.needsInputGradient
        context.needsInputGradient = true
        let dh = head.backward(g, context: context)
        context.needsInputGradient = wanted
        ensureShape(gradInput, gradOutput.shape)
        precondition(dh.count == gradInput.count, "AuxiliaryHead: head gradient does not match its input")
        for i in 0..<gradInput.count { gradInput.data[i] = gradOutput.data[i] + dh.data[i] }
        return gradInput
    }
}
