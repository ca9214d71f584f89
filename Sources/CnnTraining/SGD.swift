import CnnCore

/// Stochastic gradient descent with optional momentum, dampening, Nesterov
/// momentum and L2 weight decay, exactly as `torch.optim.SGD`.
///
/// Per element, with learning rate lr, weight decay wd (0 where the mask
/// exempts the element), momentum μ and dampening τ:
///
///     g = grad + wd·p                      (only if wd ≠ 0)
///     if μ ≠ 0:
///         b = g                            at the first step
///         b = μ·b + (1 − τ)·g              afterwards
///         g = nesterov ? g + μ·b : b
///     p = p − lr·g
///
/// State: "momentum_buffer" (b) when μ ≠ 0.
///
/// Reference: Sutskever, Martens, Dahl, Hinton, "On the importance of
/// initialization and momentum in deep learning", ICML 2013 (momentum and
/// Nesterov as formulated by PyTorch).
public final class SGD: Optimizer {
    /// Momentum factor μ in [0, 1).
    public let momentum: Float
    /// Dampening τ in [0, 1] of the gradient's share in the momentum buffer.
    public let dampening: Float
    /// Nesterov momentum; requires μ > 0 and τ = 0.
    public let nesterov: Bool
    /// L2 penalty added to the gradient (≥ 0).
    public let weightDecay: Float
    public var weightDecayMask = WeightDecayMask.all
    public private(set) var stepCount = 0
    private let state = OptimizerStateBuffers(names: ["momentum_buffer"])

    /// Throws `CnnError.invalidConfig` naming the field for out-of-range values.
    public init(momentum: Float = 0, dampening: Float = 0, nesterov: Bool = false, weightDecay: Float = 0) throws {
        try HyperParameterCheck.momentum(momentum)
        try checkHyperParameter("dampening", dampening, in: 0 ... 1, allowed: "0 <= dampening <= 1")
        try HyperParameterCheck.weightDecay(weightDecay)
        if nesterov && (momentum <= 0 || dampening != 0) {
            throw CnnError.invalidConfig(field: "nesterov", value: "true (momentum \(momentum), dampening \(dampening))",
                                         allowed: "nesterov requires momentum > 0 and dampening = 0")
        }
        self.momentum = momentum
        self.dampening = dampening
        self.nesterov = nesterov
        self.weightDecay = weightDecay
    }

    public var name: String { "sgd" }

    public var hyperParameters: [(name: String, value: Double)] {
        [("momentum", decimal(momentum)), ("dampening", decimal(dampening)),
         ("nesterov", nesterov ? 1 : 0), ("weight_decay", decimal(weightDecay))]
    }

    public var stateTensors: [(name: String, tensor: Tensor)] { momentum != 0 ? state.named : [] }

    public func loadState(stepCount: Int, tensors: [(name: String, tensor: Tensor)]) throws {
        guard stepCount >= 0 else {
            throw CnnError.invalidCheckpoint(file: "optimizer state", reason: "negative step count \(stepCount)")
        }
        if momentum != 0 {
            try state.load(tensors, optimizer: name)
            if stepCount > 0 && tensors.isEmpty {
                throw CnnError.invalidCheckpoint(file: "optimizer state",
                                                 reason: "sgd with momentum at step \(stepCount) has no momentum_buffer")
            }
        } else if !tensors.isEmpty {
            throw CnnError.invalidCheckpoint(file: "optimizer state",
                                             reason: "sgd without momentum keeps no state, found \(tensors.map(\.name))")
        }
        self.stepCount = stepCount
    }

    public func step(parameters p: UnsafeMutablePointer<Float>, gradients grad: UnsafePointer<Float>, count: Int,
                     learningRate lr: Float) {
        let mu = momentum, damp = Float(1 - decimal(dampening))
        var buf: UnsafeMutablePointer<Float>? = nil
        // PyTorch: the buffer is created as a copy of g at the first step.
        var firstMomentumStep = false
        if mu != 0 {
            firstMomentumStep = state.tensors.isEmpty
            state.ensure(count: count, optimizer: name)
            buf = state.tensors[0].data
        }
        let nesterov = self.nesterov
        for segment in weightDecayMask.segments(count: count) {
            let wd = segment.decay ? weightDecay : 0
            forEachChunk(segment.range) { i, n in
                var g = loadLanes(grad, i, n)
                if wd != 0 { g = g + wd * loadLanes(p, i, n) }
                if let b = buf {
                    let bi = firstMomentumStep ? g : mu * loadLanes(b, i, n) + damp * g
                    storeLanes(bi, b, i, n)
                    g = nesterov ? g + mu * bi : bi
                }
                storeLanes(loadLanes(p, i, n) - lr * g, p, i, n)
            }
        }
        stepCount += 1
    }
}
