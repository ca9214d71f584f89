import CnnCore

/// A fully connected layer, y = x·Wᵀ + b (PyTorch's nn.Linear).
///
/// Takes [N, inFeatures] or any [N, ...] whose trailing sizes multiply to
/// inFeatures (flattened implicitly); gives [N, outFeatures]. Forward and
/// backward are three GEMMs (`sgemm`, or bf16 ones as `context.arithmetic` says).
public final class Linear: Layer {
    public let inFeatures: Int
    public let outFeatures: Int
    public let hasBias: Bool
    public var typeName: String { "Linear" }

    private var weight: UnsafeMutablePointer<Float>?
    private var bias: UnsafeMutablePointer<Float>?
    private var weightGrad: UnsafeMutablePointer<Float>?
    private var biasGrad: UnsafeMutablePointer<Float>?
    private var input: Tensor?
    private let output = Tensor(shape: [0, 0])
    var gradInput = Tensor(shape: [0])

    /// A linear layer from `inFeatures` to `outFeatures`, with a bias unless `bias` is false.
    public init(_ inFeatures: Int, _ outFeatures: Int, bias: Bool = true) throws {
        try requirePositive(inFeatures, layer: "Linear", argument: "inFeatures")
        try requirePositive(outFeatures, layer: "Linear", argument: "outFeatures")
        self.inFeatures = inFeatures
        self.outFeatures = outFeatures
        self.hasBias = bias
    }

    public var parameterSpecs: [TensorSpec] {
        var specs = [TensorSpec("weight", shape: [outFeatures, inFeatures],
                                role: .weight(fanIn: inFeatures, fanOut: outFeatures))]
        if hasBias { specs.append(TensorSpec("bias", shape: [outFeatures], role: .bias(fanIn: inFeatures))) }
        return specs
    }

    public func bind(parameters: [UnsafeMutablePointer<Float>], gradients: [UnsafeMutablePointer<Float>],
                     buffers: [UnsafeMutablePointer<Float>]) {
        weight = parameters[0]
        weightGrad = gradients[0]
        if hasBias { bias = parameters[1]; biasGrad = gradients[1] }
    }

    public func outputShape(for input: [Int]) throws -> [Int] {
        guard input.count >= 2, input.allSatisfy({ $0 > 0 }), input.dropFirst().reduce(1, *) == inFeatures else {
            throw CnnError.shapeMismatch(layer: typeName, expected: "[N, \(inFeatures)] (or [N, ...] of \(inFeatures) per sample)",
                                         got: formatShape(input))
        }
        return [input[0], outFeatures]
    }

    public func multiplyAccumulates(for input: [Int]) -> Int { inFeatures * outFeatures }

    public func forward(_ input: Tensor, context: ExecutionContext) -> Tensor {
        guard let weight else { preconditionFailure("Linear: forward before bind (create a ParameterStore)") }
        let n = input.n
        precondition(input.sampleCount == inFeatures,
                     "Linear: input \(formatShape(input.shape)) has \(input.sampleCount) features per sample, expected \(inFeatures)")
        self.input = input
        if output.shape[0] != n || output.shape[1] != outFeatures { output.resize(to: [n, outFeatures]) }
        linearForward(x: input.data, weight: weight, bias: bias.map { UnsafePointer($0) }, y: output.data,
                      n: n, inFeatures: inFeatures, outFeatures: outFeatures, arithmetic: context.arithmetic)
        return output
    }

    public func backward(_ gradOutput: Tensor, context: ExecutionContext) -> Tensor {
        guard let input, let weight, let weightGrad else { preconditionFailure("Linear: backward before forward") }
        ensureShape(gradInput, input.shape)
        linearBackward(x: input.data, weight: weight, dy: gradOutput.data, dx: gradInput.data,
                       dWeight: weightGrad, dBias: biasGrad, n: input.n, inFeatures: inFeatures, outFeatures: outFeatures,
                       arithmetic: context.arithmetic)
        return gradInput
    }
}

extension Linear: MemoryPlanned {
    func planBackward(_ plan: MemoryPlan, input: [Int], incoming: Set<Int>, busy: Set<Int>) -> Set<Int> {
        plan.leaf(input: input, incoming: incoming, busy: busy) { gradInput = $0 }
    }
}
