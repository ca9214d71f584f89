import CnnCore

#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// Softmax over dimension 1 (PyTorch's nn.Softmax(dim=1)): for (N, K) each row, for
/// (N, C, H, W) the C values at each position. An output layer for models whose
/// probabilities are read directly; to train on labels use logits with
/// `SoftmaxCrossEntropy`, which fuses the two stably.
public final class Softmax: Layer {
    public var typeName: String { "Softmax" }
    private let output = Tensor(shape: [0])
    private let gradInput = Tensor(shape: [0])

    /// A softmax over channels.
    public init() {}

    public func outputShape(for input: [Int]) throws -> [Int] {
        guard input.count >= 2, input.allSatisfy({ $0 > 0 }) else {
            throw CnnError.shapeMismatch(layer: typeName, expected: "(N, K) or (N, C, ...)", got: formatShape(input))
        }
        return input
    }

    public func forward(_ input: Tensor, context: ExecutionContext) -> Tensor {
        precondition(input.shape.count >= 2, "Softmax: expected (N, K, ...), got \(formatShape(input.shape))")
        ensureShape(output, input.shape)
        softmaxForward(x: input.data, y: output.data, n: input.shape[0], c: input.shape[1],
                       s: input.shape.dropFirst(2).reduce(1, *))
        return output
    }

    public func backward(_ gradOutput: Tensor, context: ExecutionContext) -> Tensor {
        precondition(gradOutput.count == output.count, "Softmax: gradient does not match output")
        ensureShape(gradInput, output.shape)
        softmaxBackward(y: output.data, dy: gradOutput.data, dx: gradInput.data, n: output.shape[0],
                        c: output.shape[1], s: output.shape.dropFirst(2).reduce(1, *))
        return gradInput
    }
}

/// x, y: (N, C, S); softmax over C at each (n, s), shifted by the maximum so large inputs do not overflow.
func softmaxForward(x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, n: Int, c: Int, s: Int) {
    for i in 0..<n {
        let xb = x + i * c * s, yb = y + i * c * s
        for p in 0..<s {
            var m = xb[p]
            for ch in 1..<max(c, 1) { m = max(m, xb[ch * s + p]) }
            var sum: Float = 0
            for ch in 0..<c { let e = expf(xb[ch * s + p] - m); yb[ch * s + p] = e; sum += e }
            let inv = 1 / sum
            for ch in 0..<c { yb[ch * s + p] *= inv }
        }
    }
}

/// dx_c = y_c·(dy_c − Σ_c' y_c'·dy_c') at each (n, s).
func softmaxBackward(y: UnsafePointer<Float>, dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>,
                     n: Int, c: Int, s: Int) {
    for i in 0..<n {
        let base = i * c * s
        for p in 0..<s {
            var dot: Float = 0
            for ch in 0..<c { dot += y[base + ch * s + p] * dy[base + ch * s + p] }
            for ch in 0..<c {
                let e = base + ch * s + p
                dx[e] = y[e] * (dy[e] - dot)
            }
        }
    }
}
