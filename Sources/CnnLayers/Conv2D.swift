import CnnCore

/// 2-D convolution over (N, C, H, W), as PyTorch's `nn.Conv2d` (cross-correlation),
/// on the blocked im2col kernels of CnnCore.
///
/// Parameters in state_dict order: "weight" [K, C/groups, kh, kw], "bias" [K].
/// Forward keeps a reference to its input for backward (the caller must not
/// change it in between). The output, dL/dx and the im2col workspace are owned
/// by the layer and reused, so a steady-state step allocates nothing.
public final class Conv2D: Layer, InputGradientOptional {
    /// C, the input channels.
    public let inChannels: Int
    /// K, the output channels.
    public let outChannels: Int
    /// kh × kw.
    public let kernelSize: (height: Int, width: Int)
    /// Step of the window along H and W.
    public let stride: (height: Int, width: Int)
    /// Padding amounts, or the `.same` / `.valid` rule resolved per input size.
    public let padding: ConvPadding
    /// Spacing of kernel taps along H and W.
    public let dilation: (height: Int, width: Int)
    /// Channel groups; `groups == inChannels` is a depthwise convolution.
    public let groups: Int
    /// Whether the layer has a "bias" parameter.
    public let hasBias: Bool
    /// What the padded border holds (zeros, reflect, replicate, circular).
    public let paddingMode: PaddingMode
    /// True convolution: the kernel is flipped in H and W before it slides (the
    /// textbook definition; PyTorch's Conv2d is cross-correlation). The stored
    /// weight stays in PyTorch's layout; only the arithmetic sees it flipped.
    public let flipKernel: Bool
    /// Name used in error messages.
    public let name: String
    public var typeName: String { "Conv2d" }
    /// Scratch memory of the kernels; `workspace.bytes` is its current size. Pure scratch
    /// between calls, so a `MemoryPlan` lets convolutions of one geometry share it.
    public internal(set) var workspace: ConvolutionWorkspace

    private var weight: UnsafeMutablePointer<Float>?
    private var bias: UnsafeMutablePointer<Float>?
    private var gradWeight: UnsafeMutablePointer<Float>?
    private var gradBias: UnsafeMutablePointer<Float>?
    private let output = Tensor(shape: [0])
    /// With bf16 arithmetic the output goes into this buffer instead, shared with other
    /// convolutions (set by `MemoryPlan` when the only reader is a BatchNorm that keeps its
    /// input as bf16: it reads this output in its forward only, right after this layer).
    var bf16SharedOutput: Tensor?
    /// That BatchNorm (set with `bf16SharedOutput`): where the kernel can, it hands the output
    /// off to it as bf16 with the statistics' sums instead of writing the fp32 buffer
    /// (`BF16OutputHandoff`: the same bits, without the buffer's round trip through memory).
    weak var bf16Consumer: BatchNormEngine?
    /// Whether the handoff above is used where possible (default); off, the output goes
    /// through the fp32 buffer as before: same bits, for side-by-side checks.
    public var handsOffBF16Output = true
    /// Whether the last forward handed its output off as bf16 instead of writing it.
    public private(set) var handedOffLastForward = false
    /// The other way in backward: that BatchNorm hands dL/dy over as bf16 (`BF16GradHandoff`)
    /// where the backward passes can take it, instead of fp32 that they would read and round
    /// again. Off, fp32 as before: same bits, for side-by-side checks.
    public var takesBF16GradOutput = true
    /// Whether the last backward took dL/dy as bf16.
    public private(set) var tookBF16GradLastBackward = false
    private weak var handedOffGradOutput: Tensor?
    /// The last handoff offered (`bf16GradHandoff`), and whether it was offered for a backward with dL/dx.
    private var offeredGradHandoff: BF16GradHandoff?
    private var offeredWithInputGradient = false
    private var gradPlaneSums = UnsafeMutablePointer<Float>.allocate(capacity: 1)
    private var gradPlaneSumsCapacity = 1
    /// The BatchNorm right before (set by `MemoryPlan` when nothing else reads its output) hands
    /// its output over as bf16 where the forward and backward-weights passes take it
    /// (`convolutionTakesBF16Input`), instead of fp32 that both would read and round. Off, fp32
    /// as before: same bits, for side-by-side checks.
    public var takesBF16Input = true
    /// Whether the last forward read its input as bf16.
    public private(set) var tookBF16InputLastForward = false
    private weak var handedOverInput: Tensor?
    /// Whether the last backward wanted dL/dx (the first layer's does not): a handoff offered
    /// before a backward assumes the same, which is fixed by the layer's place in its model.
    private var lastBackwardNeededInputGradient = true
    var gradInput = Tensor(shape: [0])
    private let noGradient = Tensor(shape: [0])
    private var savedInput: Tensor?
    private var cachedGeometry: Conv2DGeometry?
    /// With `flipKernel`: the flipped weight the kernels read, and the gradient they write.
    private var flippedWeight: UnsafeMutablePointer<Float>?
    private var flippedGradient: UnsafeMutablePointer<Float>?

    /// A convolution with PyTorch's arguments. Throws `CnnError.invalidArgument`
    /// naming the layer for non-positive sizes, negative padding, or channels
    /// not divisible by `groups`; input-dependent checks happen in `outputShape`.
    public init(inChannels: Int, outChannels: Int, kernelSize: (Int, Int), stride: (Int, Int) = (1, 1),
                padding: ConvPadding = .explicit(top: 0, bottom: 0, left: 0, right: 0),
                dilation: (Int, Int) = (1, 1), groups: Int = 1, bias: Bool = true,
                paddingMode: PaddingMode = .zeros, flipKernel: Bool = false, name: String = "Conv2d",
                panelBudgetBytes: Int = convolutionPanelBudgetBytes) throws {
        try Conv2DGeometry.checkHyperparameters(
            layer: name, inChannels: inChannels, outChannels: outChannels,
            kernelHeight: kernelSize.0, kernelWidth: kernelSize.1, strideHeight: stride.0, strideWidth: stride.1,
            dilationHeight: dilation.0, dilationWidth: dilation.1, padding: padding, groups: groups)
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.kernelSize = kernelSize
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.groups = groups
        self.hasBias = bias
        self.paddingMode = paddingMode
        self.flipKernel = flipKernel
        self.name = name
        self.workspace = ConvolutionWorkspace(panelBudgetBytes: panelBudgetBytes)
    }

    /// `nn.Conv2d(in, out, kernel_size, stride, padding, dilation, groups, bias)` with square sizes.
    public convenience init(_ inChannels: Int, _ outChannels: Int, kernelSize: Int, stride: Int = 1,
                            padding: Int = 0, dilation: Int = 1, groups: Int = 1, bias: Bool = true) throws {
        try self.init(inChannels: inChannels, outChannels: outChannels, kernelSize: (kernelSize, kernelSize),
                      stride: (stride, stride),
                      padding: .explicit(top: padding, bottom: padding, left: padding, right: padding),
                      dilation: (dilation, dilation), groups: groups, bias: bias)
    }

    public var parameterSpecs: [TensorSpec] {
        let receptive = kernelSize.height * kernelSize.width
        let fanIn = inChannels / groups * receptive
        // PyTorch: fan_in = weight.size(1)·receptive field, fan_out = weight.size(0)·receptive field.
        var specs = [TensorSpec("weight", shape: [outChannels, inChannels / groups, kernelSize.height, kernelSize.width],
                                role: .weight(fanIn: fanIn, fanOut: outChannels * receptive))]
        if hasBias { specs.append(TensorSpec("bias", shape: [outChannels], role: .bias(fanIn: fanIn))) }
        return specs
    }

    public func bind(parameters: [UnsafeMutablePointer<Float>], gradients: [UnsafeMutablePointer<Float>],
                     buffers: [UnsafeMutablePointer<Float>]) {
        weight = parameters[0]
        gradWeight = gradients[0]
        if hasBias { bias = parameters[1]; gradBias = gradients[1] }
        if flipKernel && flippedWeight == nil {
            let count = parameterSpecs[0].count
            flippedWeight = .allocate(capacity: count); flippedWeight!.initialize(repeating: 0, count: count)
            flippedGradient = .allocate(capacity: count); flippedGradient!.initialize(repeating: 0, count: count)
        }
    }

    deinit {
        flippedWeight?.deallocate()
        flippedGradient?.deallocate()
        gradPlaneSums.deallocate()
    }

    /// Where the BatchNorm after this layer may hand dL/dy over as bf16 (see
    /// `takesBF16GradOutput`): into `gradOutput`'s own storage (bf16 bits take half of it; the
    /// fp32 values are never written) and this layer's plane sums. Nil where the passes, as
    /// the last forward set them up, cannot take it.
    func bf16GradHandoff(into gradOutput: Tensor, arithmetic: GemmArithmetic) -> BF16GradHandoff? {
        guard takesBF16GradOutput, arithmetic.precision == .bf16, arithmetic.bf16Kernel == .native,
              let x = savedInput, x.shape.count == 4, let g = try? geometry(height: x.shape[2], width: x.shape[3]),
              gradOutput.count == x.shape[0] * g.outChannels * g.outPixels else { return nil }
        workspace.use(arithmetic)
        guard convolutionTakesBF16GradOutput(geometry: g, batch: x.shape[0], workspace: workspace,
                                             inputGradient: lastBackwardNeededInputGradient) else { return nil }
        let planes = x.shape[0] * outChannels
        if planes > gradPlaneSumsCapacity {
            gradPlaneSums.deallocate()
            gradPlaneSumsCapacity = planes
            gradPlaneSums = .allocate(capacity: planes)
        }
        offeredGradHandoff = BF16GradHandoff(bits: gradOutput.bf16Storage, planeSums: gradPlaneSums)
        offeredWithInputGradient = lastBackwardNeededInputGradient
        return offeredGradHandoff
    }

    /// Whether the BatchNorm before may hand an input of `shape` over as bf16 (see `takesBF16Input`).
    func acceptsBF16Input(shape: [Int], arithmetic: GemmArithmetic) -> Bool {
        guard takesBF16Input, arithmetic.precision == .bf16, arithmetic.bf16Kernel == .native, shape.count == 4,
              shape[1] == inChannels, let g = try? geometry(height: shape[2], width: shape[3]) else { return false }
        workspace.use(arithmetic)
        return convolutionTakesBF16Input(geometry: g, batch: shape[0], workspace: workspace)
    }

    /// The BatchNorm before handed `input` over as bf16 bits in its storage (nil: fp32).
    func didHandOverInput(_ input: Tensor?) { handedOverInput = input }

    /// The BatchNorm handed `gradOutput` over as bf16 (nil: it wrote fp32).
    func didHandOffGradOutput(_ gradOutput: Tensor?) { handedOffGradOutput = gradOutput }

    /// The weight the kernels read: the stored one, or its spatially flipped copy.
    private func kernelWeight(_ weight: UnsafeMutablePointer<Float>) -> UnsafeMutablePointer<Float> {
        guard flipKernel, let flipped = flippedWeight else { return weight }
        flipKernelPlanes(weight, into: flipped, planes: outChannels * (inChannels / groups),
                         height: kernelSize.height, width: kernelSize.width)
        return flipped
    }

    /// The geometry for one input plane, validated (throws naming the layer).
    public func geometry(height: Int, width: Int) throws -> Conv2DGeometry {
        if let g = cachedGeometry, g.height == height, g.width == width { return g }
        let g = try Conv2DGeometry(
            layer: name, inChannels: inChannels, height: height, width: width, outChannels: outChannels,
            kernelHeight: kernelSize.height, kernelWidth: kernelSize.width,
            strideHeight: stride.height, strideWidth: stride.width,
            dilationHeight: dilation.height, dilationWidth: dilation.width,
            padding: padding, groups: groups, paddingMode: paddingMode)
        cachedGeometry = g
        return g
    }

    public func outputShape(for input: [Int]) throws -> [Int] {
        try requireRank(input, 4, layer: name, layout: "(N, C, H, W)")
        guard input[1] == inChannels else {
            throw CnnError.shapeMismatch(layer: name, expected: "\(inChannels) input channels",
                                         got: formatShape(input))
        }
        let g = try geometry(height: input[2], width: input[3])
        return [input[0], outChannels, g.outHeight, g.outWidth]
    }

    public func multiplyAccumulates(for input: [Int]) -> Int {
        guard input.count == 4, let g = try? geometry(height: input[2], width: input[3]) else { return 0 }
        return g.multiplyAccumulates
    }

    public func forward(_ input: Tensor, context: ExecutionContext) -> Tensor {
        let shape: [Int]
        do { shape = try outputShape(for: input.shape) } catch { preconditionFailure("\(error)") }
        savedInput = input
        workspace.use(context.arithmetic)
        tookBF16InputLastForward = handedOverInput === input
        handedOverInput = nil
        let bf16 = context.arithmetic.precision == .bf16
        return runForward(input.data, batch: input.shape[0], height: input.shape[2], width: input.shape[3],
                          outputShape: shape, into: bf16 ? bf16SharedOutput : nil,
                          handoffTo: bf16SharedOutput != nil ? bf16Consumer : nil, arithmetic: context.arithmetic,
                          inputBF16: tookBF16InputLastForward ? UnsafePointer(input.bf16Storage) : nil)
    }

    public func backward(_ gradOutput: Tensor, context: ExecutionContext) -> Tensor {
        guard let x = savedInput else { preconditionFailure("\(name): backward before forward") }
        workspace.use(context.arithmetic)
        tookBF16GradLastBackward = handedOffGradOutput === gradOutput
        handedOffGradOutput = nil
        lastBackwardNeededInputGradient = context.needsInputGradient
        let handoff = tookBF16GradLastBackward ? offeredGradHandoff : nil
        precondition(handoff == nil || !context.needsInputGradient || offeredWithInputGradient,
                     "\(name): dL/dy was handed over as bf16 for a backward without dL/dx")
        return runBackward(gradOutput.data, input: x.data, batch: x.shape[0], height: x.shape[2],
                           width: x.shape[3], gradInputShape: x.shape, inputGradient: context.needsInputGradient,
                           gradOutputBF16: handoff, inputBF16: tookBF16InputLastForward ? UnsafePointer(x.bf16Storage) : nil)
    }

    // Shared with Conv1D, which runs as H = 1 and reshapes.

    func runForward(_ x: UnsafeMutablePointer<Float>, batch: Int, height: Int, width: Int,
                    outputShape: [Int], into shared: Tensor? = nil, handoffTo consumer: BatchNormEngine? = nil,
                    arithmetic: GemmArithmetic = .fp32, inputBF16: UnsafePointer<UInt16>? = nil) -> Tensor {
        guard let weight else { preconditionFailure("\(name): forward before bind") }
        let output = shared ?? self.output
        let g: Conv2DGeometry
        do { g = try geometry(height: height, width: width) } catch { preconditionFailure("\(error)") }
        output.resize(to: outputShape)
        let handoff = handsOffBF16Output ? consumer?.bf16Handoff(for: outputShape, arithmetic: arithmetic) : nil
        handedOffLastForward = convolution2DForward(input: x, weight: kernelWeight(weight), bias: bias, output: output.data,
                                                    batch: batch, geometry: g, workspace: workspace, handoff: handoff,
                                                    inputBF16: inputBF16)
        consumer?.didHandOff(handedOffLastForward ? output : nil)
        return output
    }

    func runBackward(_ dy: UnsafeMutablePointer<Float>, input x: UnsafeMutablePointer<Float>, batch: Int,
                     height: Int, width: Int, gradInputShape: [Int], inputGradient: Bool,
                     gradOutputBF16: BF16GradHandoff? = nil, inputBF16: UnsafePointer<UInt16>? = nil) -> Tensor {
        guard let weight, let gradWeight else { preconditionFailure("\(name): backward before bind") }
        let g: Conv2DGeometry
        do { g = try geometry(height: height, width: width) } catch { preconditionFailure("\(error)") }
        if flipKernel, let flippedGradient {
            // dL/dW[i, j] = dL/dW_flipped[kh−1−i, kw−1−j]: compute the flipped one, add it back un-flipped.
            let planes = outChannels * (inChannels / groups), kh = kernelSize.height, kw = kernelSize.width
            flippedGradient.update(repeating: 0, count: planes * kh * kw)
            convolution2DBackwardWeights(input: x, gradOutput: dy, gradWeight: flippedGradient, gradBias: gradBias,
                                         batch: batch, geometry: g, workspace: workspace, gradOutputBF16: gradOutputBF16,
                                         inputBF16: inputBF16)
            for p in 0..<planes {
                let src = flippedGradient + p * kh * kw, dst = gradWeight + p * kh * kw
                for i in 0..<(kh * kw) { dst[kh * kw - 1 - i] += src[i] }
            }
        } else {
            convolution2DBackwardWeights(input: x, gradOutput: dy, gradWeight: gradWeight, gradBias: gradBias,
                                         batch: batch, geometry: g, workspace: workspace, gradOutputBF16: gradOutputBF16,
                                         inputBF16: inputBF16)
        }
        guard inputGradient else { return noGradient }
        gradInput.resize(to: gradInputShape)
        convolution2DBackwardData(gradOutput: dy, weight: kernelWeight(weight), gradInput: gradInput.data, batch: batch,
                                  geometry: g, workspace: workspace, gradOutputBF16: gradOutputBF16)
        return gradInput
    }
}

/// w: (planes, kh, kw) → flipped: the same planes rotated by 180° (index i of a plane ↦ kh·kw − 1 − i).
func flipKernelPlanes(_ w: UnsafePointer<Float>, into flipped: UnsafeMutablePointer<Float>, planes: Int,
                      height kh: Int, width kw: Int) {
    let size = kh * kw
    for p in 0..<planes {
        let src = w + p * size, dst = flipped + p * size
        for i in 0..<size { dst[size - 1 - i] = src[i] }
    }
}

extension Conv2D: MemoryPlanned {
    func planBackward(_ plan: MemoryPlan, input: [Int], incoming: Set<Int>, busy: Set<Int>) -> Set<Int> {
        if input.count == 4, let g = try? geometry(height: input[2], width: input[3]) {
            workspace = plan.sharedWorkspace(workspace, geometry: g)
        }
        return plan.leaf(input: input, incoming: incoming, busy: busy) { gradInput = $0 }
    }
}
