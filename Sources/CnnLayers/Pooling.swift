import CnnCore

/// Window geometry shared by the 2-D pools, with PyTorch's argument checks
/// and floor-mode output size OH = (H + 2·PH − KH) / SH + 1.
struct PoolGeometry {
    let kh: Int, kw: Int, sh: Int, sw: Int, ph: Int, pw: Int

    init(layer: String, kernelSize: (Int, Int), stride: (Int, Int)?, padding: (Int, Int)) throws {
        try requirePositive(kernelSize.0, layer: layer, argument: "kernelSize.height")
        try requirePositive(kernelSize.1, layer: layer, argument: "kernelSize.width")
        let stride = stride ?? kernelSize
        try requirePositive(stride.0, layer: layer, argument: "stride.height")
        try requirePositive(stride.1, layer: layer, argument: "stride.width")
        for (value, name, k) in [(padding.0, "padding.height", kernelSize.0), (padding.1, "padding.width", kernelSize.1)] {
            guard value >= 0, value <= k / 2 else {
                throw CnnError.invalidArgument(layer: layer, argument: name, value: String(value),
                                               reason: "must lie in 0...\(k / 2) (at most half the kernel size \(k))")
            }
        }
        (kh, kw) = kernelSize
        (sh, sw) = stride
        (ph, pw) = padding
    }

    func outputShape(for input: [Int], layer: String) throws -> [Int] {
        guard input.count == 4, input.allSatisfy({ $0 > 0 }) else {
            throw CnnError.shapeMismatch(layer: layer, expected: "4-D [N, C, H, W]", got: formatShape(input))
        }
        let h = input[2] + 2 * ph - kh, w = input[3] + 2 * pw - kw
        guard h >= 0, w >= 0 else {
            throw CnnError.shapeMismatch(layer: layer, expected: "H ≥ \(kh - 2 * ph) and W ≥ \(kw - 2 * pw) for a \(kh)x\(kw) window",
                                         got: formatShape(input))
        }
        return [input[0], input[1], h / sh + 1, w / sw + 1]
    }

    /// Output (OH, OW) for an input of H×W; traps with the layer name on inputs too small.
    func outputSize(h: Int, w: Int, layer: String) -> (Int, Int) {
        precondition(h + 2 * ph >= kh && w + 2 * pw >= kw, "\(layer): input \(h)x\(w) smaller than the \(kh)x\(kw) window")
        return ((h + 2 * ph - kh) / sh + 1, (w + 2 * pw - kw) / sw + 1)
    }
}

/// Max over KH×KW windows (PyTorch's nn.MaxPool2d, floor mode, dilation 1);
/// padded cells count as −∞. The argmax is cached for backward.
public final class MaxPool2d: Layer {
    let geometry: PoolGeometry
    public var typeName: String { "MaxPool2d" }
    private let output = Tensor(shape: [0])
    var gradInput = Tensor(shape: [0])
    private let argmax = IndexBuffer()
    private var inputShape: [Int] = []

    /// A max pool with a `kernelSize`×`kernelSize` window, stride defaulting to
    /// the kernel size, and `padding` ≤ kernelSize / 2.
    public convenience init(kernelSize: Int, stride: Int? = nil, padding: Int = 0) throws {
        try self.init(kernelSize: (kernelSize, kernelSize), stride: stride.map { ($0, $0) }, padding: (padding, padding))
    }

    /// A max pool with a (height, width) window, stride and padding.
    public init(kernelSize: (Int, Int), stride: (Int, Int)?, padding: (Int, Int) = (0, 0)) throws {
        geometry = try PoolGeometry(layer: "MaxPool2d", kernelSize: kernelSize, stride: stride, padding: padding)
    }

    public func outputShape(for input: [Int]) throws -> [Int] { try geometry.outputShape(for: input, layer: typeName) }

    public func forward(_ input: Tensor, context: ExecutionContext) -> Tensor {
        precondition(input.shape.count == 4, "MaxPool2d: expected [N, C, H, W], got \(formatShape(input.shape))")
        let g = geometry
        let h = input.shape[2], w = input.shape[3]
        let (oh, ow) = g.outputSize(h: h, w: w, layer: typeName)
        if inputShape != input.shape {
            inputShape = input.shape
            output.resize(to: [input.shape[0], input.shape[1], oh, ow])
            argmax.reserve(output.count)
        }
        maxPoolForward(x: input.data, y: output.data, argmax: argmax.data, planes: input.shape[0] * input.shape[1],
                       h: h, w: w, oh: oh, ow: ow, kh: g.kh, kw: g.kw, sh: g.sh, sw: g.sw, ph: g.ph, pw: g.pw)
        return output
    }

    public func backward(_ gradOutput: Tensor, context: ExecutionContext) -> Tensor {
        precondition(gradOutput.count == output.count, "MaxPool2d: gradient \(formatShape(gradOutput.shape)) does not match output")
        ensureShape(gradInput, inputShape)
        let g = geometry
        if g.kh == 2 && g.kw == 2 && g.sh == 2 && g.sw == 2 && g.ph == 0 && g.pw == 0 {
            maxPool2x2Stride2Backward(dy: gradOutput.data, argmax: argmax.data, dx: gradInput.data,
                                      planes: inputShape[0] * inputShape[1], h: inputShape[2], w: inputShape[3],
                                      oh: output.shape[2], ow: output.shape[3])
            return gradInput
        }
        maxPoolBackward(dy: gradOutput.data, argmax: argmax.data, dx: gradInput.data, planes: inputShape[0] * inputShape[1],
                        h: inputShape[2], w: inputShape[3], oh: output.shape[2], ow: output.shape[3])
        return gradInput
    }
}

/// Mean over KH×KW windows (PyTorch's nn.AvgPool2d, floor mode,
/// count_include_pad = true: padded zeros count in the divisor KH·KW).
public final class AvgPool2d: Layer {
    let geometry: PoolGeometry
    public var typeName: String { "AvgPool2d" }
    private let output = Tensor(shape: [0])
    var gradInput = Tensor(shape: [0])
    private var inputShape: [Int] = []

    /// An average pool with a `kernelSize`×`kernelSize` window, stride defaulting
    /// to the kernel size, and `padding` ≤ kernelSize / 2.
    public convenience init(kernelSize: Int, stride: Int? = nil, padding: Int = 0) throws {
        try self.init(kernelSize: (kernelSize, kernelSize), stride: stride.map { ($0, $0) }, padding: (padding, padding))
    }

    /// An average pool with a (height, width) window, stride and padding.
    public init(kernelSize: (Int, Int), stride: (Int, Int)?, padding: (Int, Int) = (0, 0)) throws {
        geometry = try PoolGeometry(layer: "AvgPool2d", kernelSize: kernelSize, stride: stride, padding: padding)
    }

    public func outputShape(for input: [Int]) throws -> [Int] { try geometry.outputShape(for: input, layer: typeName) }

    public func forward(_ input: Tensor, context: ExecutionContext) -> Tensor {
        precondition(input.shape.count == 4, "AvgPool2d: expected [N, C, H, W], got \(formatShape(input.shape))")
        let g = geometry
        let h = input.shape[2], w = input.shape[3]
        let (oh, ow) = g.outputSize(h: h, w: w, layer: typeName)
        if inputShape != input.shape {
            inputShape = input.shape
            output.resize(to: [input.shape[0], input.shape[1], oh, ow])
        }
        avgPoolForward(x: input.data, y: output.data, planes: input.shape[0] * input.shape[1],
                       h: h, w: w, oh: oh, ow: ow, kh: g.kh, kw: g.kw, sh: g.sh, sw: g.sw, ph: g.ph, pw: g.pw)
        return output
    }

    public func backward(_ gradOutput: Tensor, context: ExecutionContext) -> Tensor {
        precondition(gradOutput.count == output.count, "AvgPool2d: gradient \(formatShape(gradOutput.shape)) does not match output")
        let g = geometry
        ensureShape(gradInput, inputShape)
        avgPoolBackward(dy: gradOutput.data, dx: gradInput.data, planes: inputShape[0] * inputShape[1],
                        h: inputShape[2], w: inputShape[3], oh: output.shape[2], ow: output.shape[3],
                        kh: g.kh, kw: g.kw, sh: g.sh, sw: g.sw, ph: g.ph, pw: g.pw)
        return gradInput
    }
}

/// Mean over each whole H×W plane, [N, C, H, W] → [N, C, 1, 1]
/// (PyTorch's nn.AdaptiveAvgPool2d(1)).
public final class GlobalAvgPool2d: Layer {
    public var typeName: String { "AdaptiveAvgPool2d" }
    private let output = Tensor(shape: [0])
    var gradInput = Tensor(shape: [0])
    private var inputShape: [Int] = []

    /// A global average pool.
    public init() {}

    public func outputShape(for input: [Int]) throws -> [Int] {
        guard input.count == 4, input.allSatisfy({ $0 > 0 }) else {
            throw CnnError.shapeMismatch(layer: typeName, expected: "4-D [N, C, H, W]", got: formatShape(input))
        }
        return [input[0], input[1], 1, 1]
    }

    public func forward(_ input: Tensor, context: ExecutionContext) -> Tensor {
        prepareGlobalPool(input, output: output, inputShape: &inputShape, layer: typeName)
        globalAvgPoolForward(x: input.data, y: output.data, planes: output.count, s: input.shape[2] * input.shape[3])
        return output
    }

    public func backward(_ gradOutput: Tensor, context: ExecutionContext) -> Tensor {
        precondition(gradOutput.count == output.count, "AdaptiveAvgPool2d: gradient does not match output")
        ensureShape(gradInput, inputShape)
        globalAvgPoolBackward(dy: gradOutput.data, dx: gradInput.data, planes: output.count, s: inputShape[2] * inputShape[3])
        return gradInput
    }
}

/// A global pool's forward set-up: `output` becomes [N, C, 1, 1] for `input`
/// [N, C, H, W] when the input's shape changed (then true: buffers sized by
/// the output need resizing too).
@discardableResult
func prepareGlobalPool(_ input: Tensor, output: Tensor, inputShape: inout [Int], layer: String) -> Bool {
    precondition(input.shape.count == 4, "\(layer): expected [N, C, H, W], got \(formatShape(input.shape))")
    guard inputShape != input.shape else { return false }
    inputShape = input.shape
    output.resize(to: [input.shape[0], input.shape[1], 1, 1])
    return true
}

extension MaxPool2d: MemoryPlanned {
    func planBackward(_ plan: MemoryPlan, input: [Int], incoming: Set<Int>, busy: Set<Int>) -> Set<Int> {
        plan.leaf(input: input, incoming: incoming, busy: busy) { gradInput = $0 }
    }
}

extension AvgPool2d: MemoryPlanned {
    func planBackward(_ plan: MemoryPlan, input: [Int], incoming: Set<Int>, busy: Set<Int>) -> Set<Int> {
        plan.leaf(input: input, incoming: incoming, busy: busy) { gradInput = $0 }
    }
}

extension GlobalAvgPool2d: MemoryPlanned {
    func planBackward(_ plan: MemoryPlan, input: [Int], incoming: Set<Int>, busy: Set<Int>) -> Set<Int> {
        plan.leaf(input: input, incoming: incoming, busy: busy) { gradInput = $0 }
    }
}
