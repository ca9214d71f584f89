import CnnCore

/// Maximum over each whole H×W plane, [N, C, H, W] → [N, C, 1, 1]
/// (PyTorch's nn.AdaptiveMaxPool2d(1)). The first maximum of a plane takes the
/// gradient, as PyTorch's argmax does.
public final class GlobalMaxPool2d: Layer {
    public var typeName: String { "AdaptiveMaxPool2d" }
    private let output = Tensor(shape: [0])
    private let gradInput = Tensor(shape: [0])
    private let argmax = IndexBuffer()
    private var inputShape: [Int] = []

    /// A global max pool.
    public init() {}

    public func outputShape(for input: [Int]) throws -> [Int] {
        try requireRank(input, 4, layer: typeName, layout: "(N, C, H, W)")
        return [input[0], input[1], 1, 1]
    }

    public func forward(_ input: Tensor, context: ExecutionContext) -> Tensor {
        if prepareGlobalPool(input, output: output, inputShape: &inputShape, layer: typeName) { argmax.reserve(output.count) }
        globalMaxPoolForward(x: input.data, y: output.data, argmax: argmax.data, planes: output.count,
                             s: input.shape[2] * input.shape[3])
        return output
    }

    public func backward(_ gradOutput: Tensor, context: ExecutionContext) -> Tensor {
        precondition(gradOutput.count == output.count, "AdaptiveMaxPool2d: gradient does not match output")
        ensureShape(gradInput, inputShape)
        let s = inputShape[2] * inputShape[3]
        gradInput.zero()
        for p in 0..<output.count { gradInput.data[p * s + Int(argmax.data[p])] = gradOutput.data[p] }
        return gradInput
    }
}

/// x: (planes, S) → y: (planes), argmax: index of the first maximum in each plane.
func globalMaxPoolForward(x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, argmax: UnsafeMutablePointer<Int32>,
                          planes: Int, s: Int) {
    for p in 0..<planes {
        let xp = x + p * s
        var best = xp[0], at = 0
        for i in 1..<max(s, 1) where xp[i] > best || best.isNaN { best = xp[i]; at = i }
        y[p] = best
        argmax[p] = Int32(at)
    }
}
