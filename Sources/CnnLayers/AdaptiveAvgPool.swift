import CnnCore

/// Average over adaptive windows, [N, C, H, W] → [N, C, OH, OW], as PyTorch's
/// nn.AdaptiveAvgPool2d((OH, OW)): output row i averages input rows
/// ⌊i·H/OH⌋ ..< ⌈(i+1)·H/OH⌉ (columns likewise), so windows may overlap and differ in
/// size. torchvision's GoogLeNet auxiliary heads pool 14×14 to 4×4 this way (windows of
/// 4 at 0, 3, 7, 10), which no fixed kernel and stride reproduce.
public final class AdaptiveAvgPool2d: Layer {
    public let outputHeight: Int
    public let outputWidth: Int
    public var typeName: String { "AdaptiveAvgPool2d" }
    private let output = Tensor(shape: [0])
    var gradInput = Tensor(shape: [0])
    private var inputShape: [Int] = []

    /// A pool to `outputHeight` × `outputWidth` (both > 0).
    public init(outputHeight: Int, outputWidth: Int) throws {
        try requirePositive(outputHeight, layer: "AdaptiveAvgPool2d", argument: "output height")
        try requirePositive(outputWidth, layer: "AdaptiveAvgPool2d", argument: "output width")
        self.outputHeight = outputHeight
        self.outputWidth = outputWidth
    }

    public func outputShape(for input: [Int]) throws -> [Int] {
        try requireRank(input, 4, layer: typeName, layout: "(N, C, H, W)")
        return [input[0], input[1], outputHeight, outputWidth]
    }

    public func forward(_ input: Tensor, context: ExecutionContext) -> Tensor {
        inputShape = input.shape
        let s = input.shape
        ensureShape(output, [s[0], s[1], outputHeight, outputWidth])
        adaptiveAvgPoolForward(x: input.data, y: output.data, planes: s[0] * s[1], h: s[2], w: s[3],
                               oh: outputHeight, ow: outputWidth)
        return output
    }

    public func backward(_ gradOutput: Tensor, context: ExecutionContext) -> Tensor {
        precondition(gradOutput.count == output.count, "AdaptiveAvgPool2d: gradient does not match output")
        ensureShape(gradInput, inputShape)
        gradInput.zero()
        let s = inputShape
        adaptiveAvgPoolBackward(dy: gradOutput.data, dx: gradInput.data, planes: s[0] * s[1], h: s[2], w: s[3],
                                oh: outputHeight, ow: outputWidth)
        return gradInput
    }
}

/// Window of output index `i` of `o` over an input extent `n`: ⌊i·n/o⌋ ..< ⌈(i+1)·n/o⌉.
@inline(__always)
func adaptiveWindow(_ i: Int, _ o: Int, _ n: Int) -> Range<Int> {
    (i * n / o) ..< (((i + 1) * n + o - 1) / o)
}

/// x: (planes, H, W) → y: (planes, OH, OW), each the mean of its window.
func adaptiveAvgPoolForward(x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, planes: Int, h: Int, w: Int,
                            oh: Int, ow: Int) {
    for p in 0..<planes {
        let xp = x + p * h * w, yp = y + p * oh * ow
        for i in 0..<oh {
            let rows = adaptiveWindow(i, oh, h)
            for j in 0..<ow {
                let cols = adaptiveWindow(j, ow, w)
                var sum: Float = 0
                for r in rows { for c in cols { sum += xp[r * w + c] } }
                yp[i * ow + j] = sum / Float(rows.count * cols.count)
            }
        }
    }
}

/// dy: (planes, OH, OW) → dx: (planes, H, W) (zeroed by the caller), each dy spread evenly over its window.
func adaptiveAvgPoolBackward(dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, planes: Int, h: Int, w: Int,
                             oh: Int, ow: Int) {
    for p in 0..<planes {
        let dxp = dx + p * h * w, dyp = dy + p * oh * ow
        for i in 0..<oh {
            let rows = adaptiveWindow(i, oh, h)
            for j in 0..<ow {
                let cols = adaptiveWindow(j, ow, w)
                let g = dyp[i * ow + j] / Float(rows.count * cols.count)
                for r in rows { for c in cols { dxp[r * w + c] += g } }
            }
        }
    }
}

extension AdaptiveAvgPool2d: MemoryPlanned {
    func planBackward(_ plan: MemoryPlan, input: [Int], incoming: Set<Int>, busy: Set<Int>) -> Set<Int> {
        plan.leaf(input: input, incoming: incoming, busy: busy) { gradInput = $0 }
    }
}
