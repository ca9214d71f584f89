import CnnCore

/// Flattens [N, d1, d2, ...] to [N, d1·d2·...] (PyTorch's nn.Flatten with start_dim 1).
///
/// Copies into its own tensor (tensors have no views); a `Linear` accepts
/// unflattened input directly when the copy matters.
public final class Flatten: Layer {
    public var typeName: String { "Flatten" }
    private let output = Tensor(shape: [0])
    var gradInput = Tensor(shape: [0])
    private var inputShape: [Int] = []

    /// A flatten layer.
    public init() {}

    public func outputShape(for input: [Int]) throws -> [Int] {
        guard input.count >= 1, input.allSatisfy({ $0 > 0 }) else {
            throw CnnError.shapeMismatch(layer: typeName, expected: "[N, ...] with positive sizes", got: formatShape(input))
        }
        return [input[0], input.dropFirst().reduce(1, *)]
    }

    public func forward(_ input: Tensor, context: ExecutionContext) -> Tensor {
        let n = input.shape.first ?? 1
        if output.shape.count != 2 || output.shape[0] != n || output.shape[1] != input.sampleCount {
            output.resize(to: [n, input.sampleCount])
        }
        if inputShape != input.shape { inputShape = input.shape }
        output.data.update(from: input.data, count: input.count)
        return output
    }

    public func backward(_ gradOutput: Tensor, context: ExecutionContext) -> Tensor {
        ensureShape(gradInput, inputShape)
        gradInput.data.update(from: gradOutput.data, count: gradInput.count)
        return gradInput
    }

}

extension Flatten: MemoryPlanned {
    func planBackward(_ plan: MemoryPlan, input: [Int], incoming: Set<Int>, busy: Set<Int>) -> Set<Int> {
        plan.leaf(input: input, incoming: incoming, busy: busy) { gradInput = $0 }
    }
}
