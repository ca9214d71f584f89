import CnnCore

/// The shared engine of `BatchNorm1d` and `BatchNorm2d` over (N, C, S) data.
///
/// PyTorch semantics: training normalises with the biased batch variance and
/// updates running_var with the unbiased one, running = (1 − momentum)·running
/// + momentum·batch, and counts num_batches_tracked; eval uses the running
/// statistics.
///
/// Synchronized BatchNorm: with a `statisticsReducer` in the context, forward
/// sums [Σx per channel (as hi + lo Floats), local count] across ranks, then Σ(x − mean)² per
/// channel (two passes, stable; with the bf16 copy, Σx and Σx² of it in one pass and one
/// collective, see `momentStatistics`), and backward sums [Σdy, Σdy·x̂] per channel,
/// so the result equals one BatchNorm over the global batch even when ranks
/// hold different local batch sizes. Parameter gradients stay local sums (the
/// gradient allreduce adds them). The backward formula is in BatchNormKernels.swift:
///   dx = γ·invStd · (dy − Σdy / M − x̂ · Σ(dy·x̂) / M),  M = global N·S.
public final class BatchNormEngine {
    let layer: String
    let channels: Int
    let eps: Float
    let momentum: Float
    let affine: Bool

    private var gamma: UnsafeMutablePointer<Float>?
    private var beta: UnsafeMutablePointer<Float>?
    private var gammaGrad: UnsafeMutablePointer<Float>?
    private var betaGrad: UnsafeMutablePointer<Float>?
    private var runningMean: UnsafeMutablePointer<Float>?
    private var runningVar: UnsafeMutablePointer<Float>?
    private var batchesTracked: UnsafeMutablePointer<Float>?

    // Per-channel scratch, allocated once: statistics of the last forward and reduction buffers.
    private let mean: UnsafeMutablePointer<Float>
    private let invStd: UnsafeMutablePointer<Float>
    private let meanDy: UnsafeMutablePointer<Float>
    private let meanDyXhat: UnsafeMutablePointer<Float>
    private let sumsA: UnsafeMutablePointer<Double>
    private let sumsB: UnsafeMutablePointer<Double>
    private let reduceBuffer: UnsafeMutablePointer<Float>   // 4C + 1

    /// Applies the ReLU that follows in the same passes (set by `MemoryPlan`, which then
    /// makes that ReLU pass its tensors through): forward writes max(y, 0) as the output, and
    /// backward takes the ReLU's dL/dy and masks it by that output while forming the sums and
    /// dL/dx. Same bits as the two layers apart.
    public internal(set) var fusedReLU = false

    /// Applies the ReLU before it (set by `MemoryPlan`, which makes that ReLU pass its tensors
    /// through): the input is the ReLU's input x, every pass reads it as max(x, 0), and backward
    /// multiplies dL/dx by (x > 0). Same bits as the two layers apart.
    public internal(set) var fusedInputReLU = false

    /// The input is read by nobody else (set by `MemoryPlan`: a convolution's output, possibly
    /// through a fused ReLU), so with bf16 arithmetic the layer keeps it for backward as bf16
    /// (see `keepsInputBF16`) and the producer writes into a buffer shared with others.
    public internal(set) var mayKeepInputBF16 = false

    /// The last forward kept its input as bf16 (`mayKeepInputBF16` and bf16 arithmetic): the
    /// layer computes BatchNorm of the input rounded to bf16 (BatchNormPlaneKernels.swift),
    /// exactly, and does not hold the fp32 input.
    public private(set) var keepsInputBF16 = false

    /// The output lives in a buffer shared with other BatchNorms (set by `MemoryPlan` with
    /// `recompute`) and is written again from the kept input and statistics by
    /// `recomputeOutput()` before the backward of the layer that reads it; the values are the
    /// forward's, bit for bit (same kernel, same operands).
    public private(set) var recomputesOutput = false

    private var input: Tensor?
    private var inputShape: [Int] = []
    /// The input as bf16 bit patterns, (N, C, S), when `keepsInputBF16`.
    let inputBF16 = BF16Buffer()
    /// A handed-off input's Σv and Σv² per (image, channel) plane, 2·N·C (`bf16Handoff`).
    private var planeMoments = UnsafeMutablePointer<Double>.allocate(capacity: 1)
    private var planeMomentsCapacity = 1
    /// The input tensor whose values the convolution before handed off (`didHandOff`); the
    /// next forward takes them from `inputBF16` and `planeMoments` if it is given this tensor.
    private weak var handedOffInput: Tensor?
    private var usedBatchStatistics = false
    private var globalCount = 0.0
    private let ownOutput = Tensor(shape: [0])
    private(set) var output: Tensor
    var gradInput = Tensor(shape: [0])

    init(layer: String, channels: Int, eps: Float, momentum: Float, affine: Bool) throws {
        try requirePositive(channels, layer: layer, argument: "channels")
        guard eps > 0, eps.isFinite else {
            throw CnnError.invalidArgument(layer: layer, argument: "eps", value: "\(eps)", reason: "must be positive and finite")
        }
        guard momentum >= 0, momentum <= 1 else {
            throw CnnError.invalidArgument(layer: layer, argument: "momentum", value: "\(momentum)", reason: "must lie in [0, 1]")
        }
        self.layer = layer
        self.channels = channels
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        output = ownOutput
        mean = .allocate(capacity: channels); mean.initialize(repeating: 0, count: channels)
        invStd = .allocate(capacity: channels); invStd.initialize(repeating: 1, count: channels)
        meanDy = .allocate(capacity: channels); meanDy.initialize(repeating: 0, count: channels)
        meanDyXhat = .allocate(capacity: channels); meanDyXhat.initialize(repeating: 0, count: channels)
        sumsA = .allocate(capacity: channels); sumsA.initialize(repeating: 0, count: channels)
        sumsB = .allocate(capacity: channels); sumsB.initialize(repeating: 0, count: channels)
        reduceBuffer = .allocate(capacity: 4 * channels + 1); reduceBuffer.initialize(repeating: 0, count: 4 * channels + 1)
    }

    deinit {
        for p in [mean, invStd, meanDy, meanDyXhat, reduceBuffer] { p.deallocate() }
        sumsA.deallocate(); sumsB.deallocate()
        planeMoments.deallocate()
    }

    /// Where the convolution before may hand off its output for an input of `shape` (see
    /// `BF16OutputHandoff`): into the bf16 copy this layer keeps, with the planes' sums. Nil
    /// unless the next forward keeps its input as bf16 with the native kernel (the handoff
    /// runs the C kernel of `batchNormRoundBF16ChannelMoments`).
    func bf16Handoff(for shape: [Int], arithmetic: GemmArithmetic) -> BF16OutputHandoff? {
        guard mayKeepInputBF16, arithmetic.precision == .bf16, arithmetic.bf16Kernel == .native,
              shape.count >= 2, shape[1] == channels else { return nil }
        let count = shape.reduce(1, *), planes = shape[0] * channels
        inputBF16.reserve(count)
        if 2 * planes > planeMomentsCapacity {
            planeMoments.deallocate()
            planeMomentsCapacity = 2 * planes
            planeMoments = .allocate(capacity: planeMomentsCapacity)
        }
        return BF16OutputHandoff(bits: inputBF16.data, planeSums: planeMoments, planeSquares: planeMoments + planes,
                                 rectify: fusedInputReLU)
    }

    /// The convolution before (set by `MemoryPlan` with `mayKeepInputBF16`): backward hands
    /// dL/dx to it as bf16 where it takes that (`Conv2D.takesBF16GradOutput`).
    weak var bf16GradConsumer: Conv2D?

    /// The convolution right after (set by `MemoryPlan` when it alone reads the output: no
    /// fused ReLU after, the output not shared): with the bf16 copy kept, forward hands the
    /// output to it as bf16 where it takes that (`Conv2D.takesBF16Input`).
    weak var bf16OutputConsumer: Conv2D?

    /// The convolution before handed `tensor`'s values off (its data was not written), or
    /// wrote them (nil).
    func didHandOff(_ tensor: Tensor?) { handedOffInput = tensor }

    var parameterSpecs: [TensorSpec] {
        affine ? [TensorSpec("weight", shape: [channels], role: .ones), TensorSpec("bias", shape: [channels], role: .zeros)] : []
    }

    var bufferSpecs: [TensorSpec] {
        [TensorSpec("running_mean", shape: [channels], role: .zeros),
         TensorSpec("running_var", shape: [channels], role: .ones),
         TensorSpec("num_batches_tracked", shape: [], role: .counter)]
    }

    func bind(parameters: [UnsafeMutablePointer<Float>], gradients: [UnsafeMutablePointer<Float>],
              buffers: [UnsafeMutablePointer<Float>]) {
        if affine {
            gamma = parameters[0]; beta = parameters[1]
            gammaGrad = gradients[0]; betaGrad = gradients[1]
        }
        runningMean = buffers[0]; runningVar = buffers[1]; batchesTracked = buffers[2]
    }

    func forward(_ x: Tensor, context: ExecutionContext) -> Tensor {
        guard let runningMean, let runningVar, batchesTracked != nil else {
            preconditionFailure("\(layer): forward before bind (create a ParameterStore)")
        }
        precondition(x.shape.count >= 2 && x.shape[1] == channels,
                     "\(layer): input \(formatShape(x.shape)) does not have \(channels) channels in dimension 1")
        let n = x.n, c = channels, s = x.count / (n * c)
        precondition(x !== output, "\(layer): input is this layer's own (shared) output")
        // x may be a channel prefix of a wider tensor (a Concat's shared storage): the plain
        // kernels take its image stride; the rectified and bf16-copy paths read only a
        // producer's own (contiguous) output.
        precondition(x.isContiguous || !(fusedInputReLU || mayKeepInputBF16),
                     "\(layer): a strided input with a fused input ReLU or a bf16 copy")
        keepsInputBF16 = mayKeepInputBF16 && context.arithmetic.precision == .bf16
        // With the bf16 copy the input may be a shared buffer that is overwritten after this call.
        input = keepsInputBF16 ? nil : x
        inputShape = x.shape
        ensureShape(output, x.shape)
        usedBatchStatistics = context.training
        let handedOff = handedOffInput === x
        handedOffInput = nil
        precondition(!handedOff || keepsInputBF16, "\(layer): a bf16 handoff without a bf16 copy")
        if handedOff {
            // The convolution wrote the copy and each plane's sums: add them in image order,
            // as the pass below does.
            let planes = planeMoments, squares = planeMoments + n * c
            for ch in 0..<c { sumsA[ch] = 0; sumsB[ch] = 0 }
            for i in 0..<n {
                for ch in 0..<c { sumsA[ch] += planes[i * c + ch]; sumsB[ch] += squares[i * c + ch] }
            }
        } else if keepsInputBF16 {
            // The copy, rectified first when the ReLU before is fused, with Σx and Σx² of it
            // (exact products, Double sums): the statistics need no second pass.
            inputBF16.reserve(x.count)
            batchNormRoundBF16ChannelMoments(x: x.data, rectify: fusedInputReLU, bf16: inputBF16.data, n: n, c: c, s: s,
                                             sums: sumsA, squares: sumsB, native: context.arithmetic.bf16Kernel == .native)
        }
        if context.training, keepsInputBF16 {
            globalCount = momentStatistics(reducer: context.statisticsReducer, localCount: Double(n * s))
            updateRunningStatistics()
        } else if context.training {
            let reducer = context.statisticsReducer
            let localCount = Double(n * s)
            // Pass 1: mean over the (global) batch.
            if fusedInputReLU {
                batchNormRectifiedChannelSums(x: x.data, n: n, c: c, s: s, sums: sumsA)
            } else {
                batchNormChannelSums(x: x.data, n: n, c: c, s: s, sums: sumsA, xImageStride: x.imageStride)
            }
            var total = localCount
            if let reducer {
                // The reducer sums Floats: send each Double sum as hi + lo so the
                // global mean keeps ~Double precision (matters when |mean| ≫ std).
                for ch in 0..<c {
                    let hi = Float(sumsA[ch])
                    reduceBuffer[ch] = hi
                    reduceBuffer[c + ch] = Float(sumsA[ch] - Double(hi))
                }
                reduceBuffer[2 * c] = Float(localCount)
                reducer.allreduceSum(UnsafeMutableBufferPointer(start: reduceBuffer, count: 2 * c + 1))
                total = Double(reduceBuffer[2 * c])
                for ch in 0..<c { mean[ch] = Float((Double(reduceBuffer[ch]) + Double(reduceBuffer[c + ch])) / total) }
            } else {
                for ch in 0..<c { mean[ch] = Float(sumsA[ch] / total) }
            }
            // Pass 2: centred sum of squares about that mean.
            if fusedInputReLU {
                batchNormRectifiedCenteredSquares(x: x.data, mean: mean, n: n, c: c, s: s, sums: sumsB)
            } else {
                batchNormCenteredSquares(x: x.data, mean: mean, n: n, c: c, s: s, sums: sumsB,
                                         xImageStride: x.imageStride)
            }
            if let reducer {
                for ch in 0..<c { reduceBuffer[ch] = Float(sumsB[ch]) }
                reducer.allreduceSum(UnsafeMutableBufferPointer(start: reduceBuffer, count: c))
                for ch in 0..<c { sumsB[ch] = Double(reduceBuffer[ch]) }
            }
            globalCount = total
            updateRunningStatistics()
        } else {
            for ch in 0..<c {
                mean[ch] = runningMean[ch]
                invStd[ch] = 1 / (runningVar[ch] + eps).squareRoot()
            }
        }
        // To the convolution after as bf16 where it takes that, rounded as its phase planes round it.
        let roundedForNext = keepsInputBF16 && !fusedReLU && !recomputesOutput
            && bf16OutputConsumer?.acceptsBF16Input(shape: x.shape, arithmetic: context.arithmetic) == true
        normalize(x, n: n, c: c, s: s, rounded: roundedForNext)
        bf16OutputConsumer?.didHandOverInput(roundedForNext ? output : nil)
        return output
    }

    /// From mean and sumsB = the centred sums of squares over the global batch of `globalCount`
    /// elements: invStd, and the running statistics updated.
    private func updateRunningStatistics() {
        guard let runningMean, let runningVar, let batchesTracked else { preconditionFailure("\(layer): not bound") }
        let total = globalCount
        let unbias = total > 1 ? total / (total - 1) : 1
        let m = Double(momentum)
        for ch in 0..<channels {
            let variance = sumsB[ch] / total
            invStd[ch] = Float(1 / (variance + Double(eps)).squareRoot())
            runningMean[ch] = Float((1 - m) * Double(runningMean[ch]) + m * Double(mean[ch]))
            runningVar[ch] = Float((1 - m) * Double(runningVar[ch]) + m * variance * unbias)
        }
        batchesTracked[0] += 1
    }

    /// From the local sumsA = Σx and sumsB = Σx² (of the bf16 copy): mean, and sumsB = the centred
    /// sum of squares, over the global batch; returns its element count. Synchronized, both sums
    /// and the count go in one collective, each Double sum as hi + lo Floats. The centred sum is
    /// Σx² − Σx·mean in Double (clamped at 0); the Float collective's rounding of the hi parts
    /// (2⁻²⁴ of each) makes that err by ~2⁻²³·(1 + mean²/var) of it, still far inside what the
    /// input's rounding to bf16 changes (see batchNormRoundBF16ChannelMoments).
    private func momentStatistics(reducer: StatisticsReducer?, localCount: Double) -> Double {
        let c = channels
        var total = localCount
        if let reducer {
            for ch in 0..<c {
                let hi = Float(sumsA[ch]), hi2 = Float(sumsB[ch])
                reduceBuffer[ch] = hi
                reduceBuffer[c + ch] = Float(sumsA[ch] - Double(hi))
                reduceBuffer[2 * c + ch] = hi2
                reduceBuffer[3 * c + ch] = Float(sumsB[ch] - Double(hi2))
            }
            reduceBuffer[4 * c] = Float(localCount)
            reducer.allreduceSum(UnsafeMutableBufferPointer(start: reduceBuffer, count: 4 * c + 1))
            total = Double(reduceBuffer[4 * c])
            for ch in 0..<c {
                sumsA[ch] = Double(reduceBuffer[ch]) + Double(reduceBuffer[c + ch])
                sumsB[ch] = Double(reduceBuffer[2 * c + ch]) + Double(reduceBuffer[3 * c + ch])
            }
        }
        for ch in 0..<c {
            let m = sumsA[ch] / total
            mean[ch] = Float(m)
            sumsB[ch] = max(sumsB[ch] - sumsA[ch] * m, 0)
        }
        return total
    }

    /// output = the normalised input (rectified when the ReLU after is fused), with the current
    /// statistics, from the bf16 copy when kept (`x` unused then), else from x; with `rounded`
    /// (from the copy, no fused ReLU), its bf16 bits in the output's storage instead.
    private func normalize(_ x: Tensor?, n: Int, c: Int, s: Int, rounded: Bool = false) {
        let g = gamma.map { UnsafePointer($0) }, b = beta.map { UnsafePointer($0) }
        if rounded {
            precondition(keepsInputBF16 && !fusedReLU, "\(layer): a rounded output needs the bf16 copy and no ReLU after")
            batchNormBF16NormalizeRounded(x: inputBF16.data, bits: output.bf16Storage, mean: mean, invStd: invStd,
                                          gamma: g, beta: b, n: n, c: c, s: s)
        } else if keepsInputBF16 {
            batchNormBF16Normalize(x: inputBF16.data, y: output.data, mean: mean, invStd: invStd, gamma: g, beta: b,
                                   n: n, c: c, s: s, relu: fusedReLU)
        } else if let x, fusedInputReLU {
            batchNormRectifiedNormalize(x: x.data, y: output.data, mean: mean, invStd: invStd, gamma: g, beta: b,
                                        n: n, c: c, s: s, relu: fusedReLU)
        } else if let x {
            batchNormNormalize(x: x.data, y: output.data, mean: mean, invStd: invStd, gamma: g, beta: b,
                               n: n, c: c, s: s, relu: fusedReLU, xImageStride: x.imageStride)
        } else {
            preconditionFailure("\(layer): no input kept")
        }
    }

    /// Writes into `shared` (nil: the layer's own tensor) from now on; see `recomputesOutput`.
    func shareOutput(_ shared: Tensor?) {
        output = shared ?? ownOutput
        recomputesOutput = shared != nil
        outputIsScratch = false
    }

    /// The output lives in a scratch buffer that later layers overwrite (set by `MemoryPlan`
    /// when the only reader is a Residual's sum, in forward): backward does not read it (no
    /// fused ReLU after the layer), so it is not kept.
    public private(set) var outputIsScratch = false

    /// Writes into `scratch` from now on (see `outputIsScratch`).
    func writeOutput(into scratch: Tensor) {
        precondition(!fusedReLU, "\(layer): a fused ReLU reads the output in backward")
        output = scratch
        recomputesOutput = false
        outputIsScratch = true
    }

    /// Writes the last forward's output again (the shared buffer has been overwritten since).
    func recomputeOutput() {
        guard input != nil || keepsInputBF16, let n = inputShape.first else { preconditionFailure("\(layer): recompute before forward") }
        let count = inputShape.reduce(1, *), c = channels, s = count / (n * c)
        ensureShape(output, inputShape)
        normalize(input, n: n, c: c, s: s)
    }

    func backward(_ dy: Tensor, context: ExecutionContext) -> Tensor {
        guard input != nil || keepsInputBF16, let n = inputShape.first else { preconditionFailure("\(layer): backward before forward") }
        let count = inputShape.reduce(1, *)
        precondition(dy.count == count, "\(layer): gradient \(formatShape(dy.shape)) does not match input \(formatShape(inputShape))")
        let c = channels, s = count / (n * c)
        ensureShape(gradInput, inputShape)
        // The ReLU mask: the output is max(y, 0) and nothing overwrites it before this backward.
        let relu = fusedReLU ? UnsafePointer(output.data) : nil
        if keepsInputBF16 {
            batchNormBF16BackwardSums(x: inputBF16.data, dy: dy.data, mean: mean, invStd: invStd, n: n, c: c, s: s,
                                      sumDy: sumsA, sumDyXhat: sumsB, reluOutput: relu)
        } else if let x = input, fusedInputReLU {
            batchNormRectifiedBackwardSums(x: x.data, dy: dy.data, mean: mean, invStd: invStd, n: n, c: c, s: s,
                                           sumDy: sumsA, sumDyXhat: sumsB, reluOutput: relu)
        } else if let x = input {
            batchNormBackwardSums(x: x.data, dy: dy.data, mean: mean, invStd: invStd, n: n, c: c, s: s,
                                  sumDy: sumsA, sumDyXhat: sumsB, reluOutput: relu, xImageStride: x.imageStride)
        }
        if let gammaGrad, let betaGrad {
            for ch in 0..<c {
                gammaGrad[ch] += Float(sumsB[ch])
                betaGrad[ch] += Float(sumsA[ch])
            }
        }
        let g = gamma.map { UnsafePointer($0) }
        // dL/dx to the convolution before as bf16, where it takes that.
        let handoff = keepsInputBF16 ? bf16GradConsumer?.bf16GradHandoff(into: gradInput, arithmetic: context.arithmetic) : nil
        defer { bf16GradConsumer?.didHandOffGradOutput(handoff != nil ? gradInput : nil) }
        if usedBatchStatistics {
            if let reducer = context.statisticsReducer {
                for ch in 0..<c { reduceBuffer[ch] = Float(sumsA[ch]); reduceBuffer[c + ch] = Float(sumsB[ch]) }
                reducer.allreduceSum(UnsafeMutableBufferPointer(start: reduceBuffer, count: 2 * c))
                for ch in 0..<c { sumsA[ch] = Double(reduceBuffer[ch]); sumsB[ch] = Double(reduceBuffer[c + ch]) }
            }
            for ch in 0..<c {
                meanDy[ch] = Float(sumsA[ch] / globalCount)
                meanDyXhat[ch] = Float(sumsB[ch] / globalCount)
            }
            backwardInput(dy, g, meanDy: meanDy, meanDyXhat: meanDyXhat, n: n, c: c, s: s, reluOutput: relu, handoff: handoff)
        } else {
            backwardInput(dy, g, meanDy: nil, meanDyXhat: nil, n: n, c: c, s: s, reluOutput: relu, handoff: handoff)
        }
        return gradInput
    }

    /// gradInput from dy, from the kept input as it is held.
    private func backwardInput(_ dy: Tensor, _ g: UnsafePointer<Float>?, meanDy: UnsafePointer<Float>?,
                               meanDyXhat: UnsafePointer<Float>?, n: Int, c: Int, s: Int, reluOutput relu: UnsafePointer<Float>?,
                               handoff: BF16GradHandoff? = nil) {
        if let handoff {
            batchNormBF16BackwardInputHandoff(x: inputBF16.data, dy: dy.data, handoff: handoff, mean: mean, invStd: invStd,
                                              gamma: g, meanDy: meanDy, meanDyXhat: meanDyXhat, n: n, c: c, s: s,
                                              reluOutput: relu, rectified: fusedInputReLU)
        } else if keepsInputBF16 {
            batchNormBF16BackwardInput(x: inputBF16.data, dy: dy.data, dx: gradInput.data, mean: mean, invStd: invStd, gamma: g,
                                       meanDy: meanDy, meanDyXhat: meanDyXhat, n: n, c: c, s: s, reluOutput: relu,
                                       rectified: fusedInputReLU)
        } else if let x = input, fusedInputReLU {
            batchNormRectifiedBackwardInput(x: x.data, dy: dy.data, dx: gradInput.data, mean: mean, invStd: invStd, gamma: g,
                                            meanDy: meanDy, meanDyXhat: meanDyXhat, n: n, c: c, s: s, reluOutput: relu)
        } else if let x = input {
            batchNormBackwardInput(x: x.data, dy: dy.data, dx: gradInput.data, mean: mean, invStd: invStd, gamma: g,
                                   meanDy: meanDy, meanDyXhat: meanDyXhat, n: n, c: c, s: s, reluOutput: relu,
                                   xImageStride: x.imageStride)
        }
    }
}

/// The bf16 bit patterns a BatchNorm keeps of its input.
typealias BF16Buffer = ScratchBuffer<UInt16>

extension Tensor {
    /// The storage as the bf16 words a handoff between a convolution and a BatchNorm writes
    /// there instead of the fp32 values (half of it; only the C kernels read and write them).
    var bf16Storage: UnsafeMutablePointer<UInt16> {
        UnsafeMutableRawPointer(data).assumingMemoryBound(to: UInt16.self)
    }
}

/// Batch normalisation over [N, C, H, W], per channel (PyTorch's nn.BatchNorm2d),
/// synchronized across ranks when the context has a `statisticsReducer`.
public final class BatchNorm2d: BatchNormLayer {
    public let engine: BatchNormEngine
    public var typeName: String { "BatchNorm2d" }

    /// BatchNorm over `channels` channels; `affine` adds the learnable scale ("weight") and shift ("bias").
    public init(_ channels: Int, eps: Float = 1e-5, momentum: Float = 0.1, affine: Bool = true) throws {
        engine = try BatchNormEngine(layer: "BatchNorm2d", channels: channels, eps: eps, momentum: momentum, affine: affine)
    }

    public func outputShape(for input: [Int]) throws -> [Int] {
        guard input.count == 4, input.allSatisfy({ $0 > 0 }), input[1] == channels else {
            throw CnnError.shapeMismatch(layer: typeName, expected: "[N, \(channels), H, W]", got: formatShape(input))
        }
        return input
    }

}

/// Batch normalisation over [N, C] (or [N, C, L]), per channel (PyTorch's nn.BatchNorm1d),
/// synchronized across ranks when the context has a `statisticsReducer`.
public final class BatchNorm1d: BatchNormLayer {
    public let engine: BatchNormEngine
    public var typeName: String { "BatchNorm1d" }

    /// BatchNorm over `channels` features; `affine` adds the learnable scale ("weight") and shift ("bias").
    public init(_ channels: Int, eps: Float = 1e-5, momentum: Float = 0.1, affine: Bool = true) throws {
        engine = try BatchNormEngine(layer: "BatchNorm1d", channels: channels, eps: eps, momentum: momentum, affine: affine)
    }

    public func outputShape(for input: [Int]) throws -> [Int] {
        guard input.count == 2 || input.count == 3, input.allSatisfy({ $0 > 0 }), input[1] == channels else {
            throw CnnError.shapeMismatch(layer: typeName, expected: "[N, \(channels)] or [N, \(channels), L]", got: formatShape(input))
        }
        return input
    }

}

/// BatchNorm1d and BatchNorm2d: one engine, two input layouts. Everything but
/// the shape check forwards to the engine.
public protocol BatchNormLayer: Layer {
    var engine: BatchNormEngine { get }
}

extension BatchNormLayer {
    public var channels: Int { engine.channels }
    public var eps: Float { engine.eps }
    public var momentum: Float { engine.momentum }
    public var affine: Bool { engine.affine }
    public var parameterSpecs: [TensorSpec] { engine.parameterSpecs }
    public var bufferSpecs: [TensorSpec] { engine.bufferSpecs }

    public func bind(parameters: [UnsafeMutablePointer<Float>], gradients: [UnsafeMutablePointer<Float>],
                     buffers: [UnsafeMutablePointer<Float>]) {
        engine.bind(parameters: parameters, gradients: gradients, buffers: buffers)
    }

    public func forward(_ input: Tensor, context: ExecutionContext) -> Tensor { engine.forward(input, context: context) }
    public func backward(_ gradOutput: Tensor, context: ExecutionContext) -> Tensor { engine.backward(gradOutput, context: context) }
}

extension BatchNorm2d: MemoryPlanned {
    func planBackward(_ plan: MemoryPlan, input: [Int], incoming: Set<Int>, busy: Set<Int>) -> Set<Int> {
        plan.leaf(input: input, incoming: incoming, busy: busy) { engine.gradInput = $0 }
    }
}

extension BatchNorm1d: MemoryPlanned {
    func planBackward(_ plan: MemoryPlan, input: [Int], incoming: Set<Int>, busy: Set<Int>) -> Set<Int> {
        plan.leaf(input: input, incoming: incoming, busy: busy) { engine.gradInput = $0 }
    }
}
