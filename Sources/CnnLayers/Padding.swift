import CnnCore

/// Pads the H×W planes of (N, C, H, W) by (top, bottom, left, right), as PyTorch's
/// ConstantPad2d (with a value), ReflectionPad2d, ReplicationPad2d and CircularPad2d
/// (PyTorch's tuple order is (left, right, top, bottom)). No parameters.
///
/// Backward sends each padded cell's gradient to the input cell it was read from
/// (the constant border reads nothing, so its gradient is dropped); reflect and
/// circular need pad < size and pad ≤ size, as `F.pad` does.
public final class Pad2d: Layer {
    public let top: Int, bottom: Int, left: Int, right: Int
    /// `.zeros` is PyTorch's "constant" mode, filled with `value`.
    public let mode: PaddingMode
    public let value: Float
    public var typeName: String {
        switch mode {
        case .zeros: return "ConstantPad2d"
        case .reflect: return "ReflectionPad2d"
        case .replicate: return "ReplicationPad2d"
        case .circular: return "CircularPad2d"
        }
    }
    private let output = Tensor(shape: [0])
    private let gradInput = Tensor(shape: [0])
    private var inputShape: [Int] = []

    /// A padding layer; amounts must be non-negative.
    public init(top: Int, bottom: Int, left: Int, right: Int, mode: PaddingMode = .zeros, value: Float = 0) throws {
        for (name, amount) in [("top", top), ("bottom", bottom), ("left", left), ("right", right)] where amount < 0 {
            throw CnnError.invalidArgument(layer: "Pad2d", argument: name, value: String(amount), reason: "must be non-negative")
        }
        guard value.isFinite else {
            throw CnnError.invalidArgument(layer: "Pad2d", argument: "value", value: "\(value)", reason: "must be finite")
        }
        self.top = top; self.bottom = bottom; self.left = left; self.right = right
        self.mode = mode
        self.value = value
    }

    /// The same amount on all four sides.
    public convenience init(_ amount: Int, mode: PaddingMode = .zeros, value: Float = 0) throws {
        try self.init(top: amount, bottom: amount, left: amount, right: amount, mode: mode, value: value)
    }

    public func outputShape(for input: [Int]) throws -> [Int] {
        try requireRank(input, 4, layer: typeName, layout: "(N, C, H, W)")
        let h = input[2], w = input[3]
        switch mode {
        case .zeros, .replicate: break
        case .reflect:
            guard max(top, bottom) < h, max(left, right) < w else {
                throw CnnError.shapeMismatch(layer: typeName, expected: "H > \(max(top, bottom)) and W > \(max(left, right)) (reflect padding must be smaller than the input)",
                                             got: formatShape(input))
            }
        case .circular:
            guard max(top, bottom) <= h, max(left, right) <= w else {
                throw CnnError.shapeMismatch(layer: typeName, expected: "H ≥ \(max(top, bottom)) and W ≥ \(max(left, right)) (circular padding wraps once)",
                                             got: formatShape(input))
            }
        }
        return [input[0], input[1], top + h + bottom, left + w + right]
    }

    public func forward(_ input: Tensor, context: ExecutionContext) -> Tensor {
        let shape: [Int]
        do { shape = try outputShape(for: input.shape) } catch { preconditionFailure("\(error)") }
        if inputShape != input.shape { inputShape = input.shape }
        ensureShape(output, shape)
        let h = input.shape[2], w = input.shape[3], planes = input.shape[0] * input.shape[1]
        let inPlane = h * w, outPlane = shape[2] * shape[3]
        for p in 0..<planes {
            padPlane(input.data + p * inPlane, height: h, width: w, top: top, bottom: bottom, left: left, right: right,
                     mode: mode, value: value, into: output.data + p * outPlane)
        }
        return output
    }

    public func backward(_ gradOutput: Tensor, context: ExecutionContext) -> Tensor {
        precondition(gradOutput.count == output.count, "\(typeName): gradient \(formatShape(gradOutput.shape)) does not match output")
        ensureShape(gradInput, inputShape)
        let h = inputShape[2], w = inputShape[3], planes = inputShape[0] * inputShape[1]
        padPlaneBackward(dy: gradOutput.data, dx: gradInput.data, planes: planes, height: h, width: w,
                         top: top, bottom: bottom, left: left, right: right, mode: mode)
        return gradInput
    }
}

/// dy: (planes, top+H+bottom, left+W+right) → dx: (planes, H, W); dx = Σ of dy over the
/// padded cells that read each input cell (constant-mode border cells read none).
func padPlaneBackward(dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, planes: Int, height h: Int, width w: Int,
                      top: Int, bottom: Int, left: Int, right: Int, mode: PaddingMode) {
    let oh = top + h + bottom, ow = left + w + right
    dx.update(repeating: 0, count: planes * h * w)
    // Source column of each padded column, computed once.
    let columns = (0..<ow).map { paddedSourceIndex($0 - left, size: w, mode: mode) }
    for p in 0..<planes {
        let src = dy + p * oh * ow, dst = dx + p * h * w
        for py in 0..<oh {
            let y = paddedSourceIndex(py - top, size: h, mode: mode)
            if y < 0 { continue }
            for px in 0..<ow where columns[px] >= 0 {
                dst[y * w + columns[px]] += src[py * ow + px]
            }
        }
    }
}
