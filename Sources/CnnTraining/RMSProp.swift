import CnnCore

/// RMSProp, exactly as `torch.optim.RMSprop` (no bias correction; ε added
/// outside the square root).
///
/// Per element, learning rate lr, smoothing α, weight decay wd (0 where the
/// mask exempts the element), momentum μ:
///
///     g = grad + wd·p                       (only if wd ≠ 0)
///     s = α·s + (1 − α)·g²
///     if centered:
///         a = α·a + (1 − α)·g               (as torch's lerp: a + (1 − α)·(g − a))
///         d = √(s − a²) + ε
///     else:
///         d = √s + ε
///     if μ > 0:
///         b = μ·b + g / d
///         p = p − lr·b
///     else:
///         p = p − lr·g / d
///
/// State: "square_avg" (s), then "momentum_buffer" (b) if μ > 0, then
/// "grad_avg" (a) if centered; all start at zero.
///
/// Reference: Tieleman & Hinton, "Lecture 6.5 — RMSProp: Divide the gradient
/// by a running average of its recent magnitude", COURSERA: Neural Networks
/// for Machine Learning, 2012; centered variant: Graves, "Generating
/// Sequences With Recurrent Neural Networks", arXiv:1308.0850, 2013.
public final class RMSProp: Optimizer {
    /// Smoothing constant α in [0, 1).
    public let alpha: Float
    /// Added to the denominator (> 0).
    public let eps: Float
    /// Momentum factor μ in [0, 1).
    public let momentum: Float
    /// Normalise by the estimated variance instead of the raw second moment.
    public let centered: Bool
    /// L2 penalty added to the gradient (≥ 0).
    public let weightDecay: Float
    public var weightDecayMask = WeightDecayMask.all
    public private(set) var stepCount = 0
    private let state: OptimizerStateBuffers

    /// Throws `CnnError.invalidConfig` naming the field for out-of-range values.
    public init(alpha: Float = 0.99, eps: Float = 1e-8, momentum: Float = 0, centered: Bool = false,
                weightDecay: Float = 0) throws {
        try checkHyperParameter("alpha", alpha, in: 0 ..< 1, allowed: "0 <= alpha < 1")
        try HyperParameterCheck.eps(eps)
        try HyperParameterCheck.momentum(momentum)
        try HyperParameterCheck.weightDecay(weightDecay)
        self.alpha = alpha
        self.eps = eps
        self.momentum = momentum
        self.centered = centered
        self.weightDecay = weightDecay
        var names = ["square_avg"]
        if momentum > 0 { names.append("momentum_buffer") }
        if centered { names.append("grad_avg") }
        state = OptimizerStateBuffers(names: names)
    }

    public var name: String { "rmsprop" }

    public var hyperParameters: [(name: String, value: Double)] {
        [("alpha", decimal(alpha)), ("eps", decimal(eps)), ("momentum", decimal(momentum)),
         ("centered", centered ? 1 : 0), ("weight_decay", decimal(weightDecay))]
    }

    public var stateTensors: [(name: String, tensor: Tensor)] { state.named }

    public func loadState(stepCount: Int, tensors: [(name: String, tensor: Tensor)]) throws {
        try state.restore(stepCount: stepCount, tensors, optimizer: name)
        self.stepCount = stepCount
    }

    public func step(parameters p: UnsafeMutablePointer<Float>, gradients grad: UnsafePointer<Float>, count: Int,
                     learningRate lr: Float) {
        state.ensure(count: count, optimizer: name)
        let s = state.tensors[0].data
        let b: UnsafeMutablePointer<Float>? = momentum > 0 ? state.tensors[1].data : nil
        let a: UnsafeMutablePointer<Float>? = centered ? state.tensors[momentum > 0 ? 2 : 1].data : nil
        let alpha = self.alpha, oneMinusAlpha = Float(1 - decimal(alpha)), eps = self.eps, mu = momentum
        for segment in weightDecayMask.segments(count: count) {
            let wd = segment.decay ? weightDecay : 0
            forEachChunk(segment.range) { i, n in
                var g = loadLanes(grad, i, n)
                if wd != 0 { g = g + wd * loadLanes(p, i, n) }
                let si = loadLanes(s, i, n) * alpha + oneMinusAlpha * g * g
                storeLanes(si, s, i, n)
                let d: FloatVector
                if let a = a {
                    let aOld = loadLanes(a, i, n)
                    let ai = aOld + oneMinusAlpha * (g - aOld)
                    storeLanes(ai, a, i, n)
                    d = (si + -1 * ai * ai).squareRoot() + eps
                } else {
                    d = si.squareRoot() + eps
                }
                if let b = b {
                    let bi = loadLanes(b, i, n) * mu + g / d
                    storeLanes(bi, b, i, n)
                    storeLanes(loadLanes(p, i, n) + -lr * bi, p, i, n)
                } else {
                    storeLanes(loadLanes(p, i, n) + -lr * g / d, p, i, n)
                }
            }
        }
        stepCount += 1
    }
}
