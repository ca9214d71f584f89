import CnnCore

/// 1-D convolution over (N, C, L), as PyTorch's `nn.Conv1d`: the 2-D path with
/// H = 1 and a 1×k kernel (same memory layout, so no copies).
///
/// Parameters in state_dict order: "weight" [K, C/groups, k], "bias" [K].
public final class Conv1D: Layer, InputGradientOptional {
    /// The 2-D convolution doing the work on (N, C, 1, L).
    private let inner: Conv2D
    /// C, the input channels.
    public var inChannels: Int { inner.inChannels }
    /// K, the output channels.
    public var outChannels: Int { inner.outChannels }
    /// k, the kernel length.
    public var kernelSize: Int { inner.kernelSize.width }
    /// Name used in error messages.
    public var name: String { inner.name }
    public var typeName: String { "Conv1d" }
    /// Scratch memory of the kernels.
    public var workspace: ConvolutionWorkspace { inner.workspace }
    private var savedInput: Tensor?

    /// `padding` is `.valid`, `.same` (TensorFlow's rule along L) or
    /// `.explicit(top: 0, bottom: 0, left:, right:)` — top and bottom must be 0.
    public init(inChannels: Int, outChannels: Int, kernelSize: Int, stride: Int = 1,
                padding: ConvPadding = .valid, dilation: Int = 1, groups: Int = 1, bias: Bool = true,
                paddingMode: PaddingMode = .zeros, name: String = "Conv1d",
                panelBudgetBytes: Int = convolutionPanelBudgetBytes) throws {
        if case let .explicit(top, bottom, _, _) = padding, top != 0 || bottom != 0 {
            throw CnnError.invalidArgument(layer: name, argument: "padding", value: "\(padding)",
                                           reason: "a 1-D convolution pads only left and right")
        }
        inner = try Conv2D(inChannels: inChannels, outChannels: outChannels, kernelSize: (1, kernelSize),
                           stride: (1, stride), padding: padding, dilation: (1, dilation), groups: groups,
                           bias: bias, paddingMode: paddingMode, name: name, panelBudgetBytes: panelBudgetBytes)
    }

    /// `nn.Conv1d(in, out, kernel_size, stride, padding, dilation, groups, bias)`.
    public convenience init(_ inChannels: Int, _ outChannels: Int, kernelSize: Int, stride: Int = 1,
                            padding: Int = 0, dilation: Int = 1, groups: Int = 1, bias: Bool = true) throws {
        try self.init(inChannels: inChannels, outChannels: outChannels, kernelSize: kernelSize, stride: stride,
                      padding: .explicit(top: 0, bottom: 0, left: padding, right: padding),
                      dilation: dilation, groups: groups, bias: bias)
    }

    public var parameterSpecs: [TensorSpec] {
        inner.parameterSpecs.map { spec in
            var s = spec
            if s.name == "weight" { s.shape = [spec.shape[0], spec.shape[1], spec.shape[3]] }
            return s
        }
    }

    public func bind(parameters: [UnsafeMutablePointer<Float>], gradients: [UnsafeMutablePointer<Float>],
                     buffers: [UnsafeMutablePointer<Float>]) {
        inner.bind(parameters: parameters, gradients: gradients, buffers: buffers)
    }

    public func outputShape(for input: [Int]) throws -> [Int] {
        try requireRank(input, 3, layer: name, layout: "(N, C, L)")
        let s = try inner.outputShape(for: [input[0], input[1], 1, input[2]])
        return [s[0], s[1], s[3]]
    }

    public func multiplyAccumulates(for input: [Int]) -> Int {
        guard input.count == 3 else { return 0 }
        return inner.multiplyAccumulates(for: [input[0], input[1], 1, input[2]])
    }

    public func forward(_ input: Tensor, context: ExecutionContext) -> Tensor {
        let shape: [Int]
        do { shape = try outputShape(for: input.shape) } catch { preconditionFailure("\(error)") }
        savedInput = input
        inner.workspace.use(context.arithmetic)
        return inner.runForward(input.data, batch: input.shape[0], height: 1, width: input.shape[2],
                                outputShape: shape)
    }

    public func backward(_ gradOutput: Tensor, context: ExecutionContext) -> Tensor {
        guard let x = savedInput else { preconditionFailure("\(name): backward before forward") }
        inner.workspace.use(context.arithmetic)
        return inner.runBackward(gradOutput.data, input: x.data, batch: x.shape[0], height: 1,
                                 width: x.shape[2], gradInputShape: x.shape, inputGradient: context.needsInputGradient)
    }
}
