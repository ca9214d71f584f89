import CnnCore

/// Inverted dropout (PyTorch's nn.Dropout): in training each element is kept
/// with probability 1 − p and scaled by 1 / (1 − p); in eval it is the identity.
///
/// The mask is a pure function of (context.seed, `key`, context.step, the
/// global sample index context.sampleOffset + n, the element index within the
/// sample), through `counterHash`. So it is the same in every process and does
/// not depend on how the global batch is split across ranks. Model builders
/// pass a distinct `key` per dropout layer. Backward reuses forward's mask.
public final class Dropout: Layer {
    public let p: Float
    public let key: UInt64
    public var typeName: String { "Dropout" }
    private let output = Tensor(shape: [0])
    var gradInput = Tensor(shape: [0])
    private let mask = Tensor(shape: [0])
    private var maskActive = false
    /// counterMix(j) for the element indices j of one sample: the same every step and sample.
    private var mixedElementIndices: [UInt64] = []

    /// Dropout with drop probability `p` in [0, 1) and a per-layer mask `key`.
    public init(p: Float, key: UInt64 = 0) throws {
        guard p >= 0, p < 1 else {
            throw CnnError.invalidArgument(layer: "Dropout", argument: "p", value: "\(p)", reason: "must lie in [0, 1)")
        }
        self.p = p
        self.key = key
    }

    public func outputShape(for input: [Int]) throws -> [Int] { try requireNonEmpty(input, layer: typeName); return input }

    public func forward(_ input: Tensor, context: ExecutionContext) -> Tensor {
        maskActive = context.training && p > 0
        guard maskActive else { return input }   // identity: no copy
        ensureShape(output, input.shape)
        ensureShape(mask, input.shape)
        let n = input.n, per = input.sampleCount
        let scale = 1 / (1 - p)
        let stepKey = counterHash(counterHash(context.seed, key), UInt64(truncatingIfNeeded: context.step))
        if mixedElementIndices.count != per { mixedElementIndices = (0..<per).map { counterMix(UInt64($0)) } }
        mixedElementIndices.withUnsafeBufferPointer { mixed in
            for i in 0..<n {
                let sampleKey = counterHash(stepKey, UInt64(truncatingIfNeeded: context.sampleOffset + i))
                let m = mask.data + i * per, x = input.data + i * per, y = output.data + i * per
                for j in 0..<per {
                    let u = Float(counterHash(sampleKey, mixedCounter: mixed[j]) >> 40) * (1.0 / 16_777_216.0)
                    let keep: Float = u >= p ? scale : 0
                    m[j] = keep
                    y[j] = x[j] * keep
                }
            }
        }
        return output
    }

    public func backward(_ gradOutput: Tensor, context: ExecutionContext) -> Tensor {
        guard maskActive else { return gradOutput }
        precondition(gradOutput.count == mask.count, "Dropout: gradient \(formatShape(gradOutput.shape)) does not match output")
        ensureShape(gradInput, mask.shape)
        // Pointers in locals, so the loop need not reload them from the tensors (the stores could alias them).
        let dx = gradInput.data, dy = gradOutput.data, m = mask.data
        for j in 0..<mask.count { dx[j] = dy[j] * m[j] }
        return gradInput
    }
}

extension Dropout: MemoryPlanned {
    func planBackward(_ plan: MemoryPlan, input: [Int], incoming: Set<Int>, busy: Set<Int>) -> Set<Int> {
        // Inactive (eval, p = 0) it hands back dL/dy itself.
        plan.leaf(input: input, incoming: incoming, busy: busy) { gradInput = $0 }.union(incoming)
    }
}
