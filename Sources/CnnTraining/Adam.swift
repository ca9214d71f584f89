import CnnCore
import Foundation

/// Adam with L2 weight decay added to the gradient, exactly as `torch.optim.Adam`
/// (amsgrad off). `AdamW` is the same update with decoupled weight decay.
///
/// Per element at step t (counting from 1), learning rate lr, weight decay wd
/// (0 where the mask exempts the element):
///
///     g = grad + wd·p                              (Adam, only if wd ≠ 0)
///     p = p·(1 − lr·wd)                            (AdamW instead)
///     m = β1·m + (1 − β1)·g                        (as torch's lerp: m + (1 − β1)·(g − m))
///     v = β2·v + (1 − β2)·g²
///     p = p − (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + ε)
///
/// The bias corrections and step size are computed in Double, as PyTorch
/// computes them in Python floats, then rounded to Float. State:
/// "exp_avg" (m) and "exp_avg_sq" (v), both starting at zero.
///
/// Reference: Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.
public class Adam: Optimizer {
    /// Decay of the first moment, in [0, 1).
    public let beta1: Float
    /// Decay of the second moment, in [0, 1).
    public let beta2: Float
    /// Added to the denominator (> 0).
    public let eps: Float
    /// Weight decay (≥ 0): L2 added to the gradient for Adam, decoupled for AdamW.
    public let weightDecay: Float
    /// True for AdamW's decoupled decay.
    public let decoupledWeightDecay: Bool
    public var weightDecayMask = WeightDecayMask.all
    public private(set) var stepCount = 0
    private let state = OptimizerStateBuffers(names: ["exp_avg", "exp_avg_sq"])

    /// Adam (L2 weight decay). Throws `CnnError.invalidConfig` naming the field
    /// for out-of-range values.
    public convenience init(beta1: Float = 0.9, beta2: Float = 0.999, eps: Float = 1e-8, weightDecay: Float = 0) throws {
        try self.init(beta1: beta1, beta2: beta2, eps: eps, weightDecay: weightDecay, decoupled: false)
    }

    init(beta1: Float, beta2: Float, eps: Float, weightDecay: Float, decoupled: Bool) throws {
        try HyperParameterCheck.beta(beta1, field: "beta1")
        try HyperParameterCheck.beta(beta2, field: "beta2")
        try HyperParameterCheck.eps(eps)
        try HyperParameterCheck.weightDecay(weightDecay)
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.weightDecay = weightDecay
        self.decoupledWeightDecay = decoupled
    }

    public var name: String { decoupledWeightDecay ? "adamw" : "adam" }

    public var hyperParameters: [(name: String, value: Double)] {
        [("beta1", decimal(beta1)), ("beta2", decimal(beta2)), ("eps", decimal(eps)),
         ("weight_decay", decimal(weightDecay))]
    }

    public var stateTensors: [(name: String, tensor: Tensor)] { state.named }

    public func loadState(stepCount: Int, tensors: [(name: String, tensor: Tensor)]) throws {
        try state.restore(stepCount: stepCount, tensors, optimizer: name)
        self.stepCount = stepCount
    }

    public func step(parameters p: UnsafeMutablePointer<Float>, gradients grad: UnsafePointer<Float>, count: Int,
                     learningRate lr: Float) {
        state.ensure(count: count, optimizer: name)
        let m = state.tensors[0].data, v = state.tensors[1].data
        let t = Double(stepCount + 1)
        let b1 = decimal(beta1), b2 = decimal(beta2)
        let biasCorrection1 = 1 - pow(b1, t)
        let biasCorrection2Sqrt = (1 - pow(b2, t)).squareRoot()
        let stepSize = Float(Double(lr) / biasCorrection1)
        let bc2 = Float(biasCorrection2Sqrt)
        let oneMinusBeta1 = Float(1 - b1), oneMinusBeta2 = Float(1 - b2)
        let beta2 = self.beta2, eps = self.eps, decoupled = decoupledWeightDecay
        for segment in weightDecayMask.segments(count: count) {
            let wd = segment.decay ? weightDecay : 0
            let shrink = Float(1 - Double(lr) * decimal(wd))
            forEachChunk(segment.range) { i, n in
                var g = loadLanes(grad, i, n)
                var pi = loadLanes(p, i, n)
                if wd != 0 {
                    if decoupled { pi = pi * shrink } else { g = g + wd * pi }
                }
                let mOld = loadLanes(m, i, n)
                let mi = mOld + oneMinusBeta1 * (g - mOld)
                let vi = loadLanes(v, i, n) * beta2 + oneMinusBeta2 * g * g
                storeLanes(mi, m, i, n)
                storeLanes(vi, v, i, n)
                let denom = vi.squareRoot() / bc2 + eps
                storeLanes(pi + -stepSize * mi / denom, p, i, n)   // torch addcdiv: p + value·m / d
            }
        }
        stepCount += 1
    }
}

/// Adam with decoupled weight decay, exactly as `torch.optim.AdamW`: the
/// parameter shrinks by p·(1 − lr·wd) before the Adam update, and the
/// gradient is not changed. See `Adam` for the full rule.
///
/// Reference: Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
public final class AdamW: Adam {
    /// Throws `CnnError.invalidConfig` naming the field for out-of-range values.
    public init(beta1: Float = 0.9, beta2: Float = 0.999, eps: Float = 1e-8, weightDecay: Float = 0.01) throws {
        try super.init(beta1: beta1, beta2: beta2, eps: eps, weightDecay: weightDecay, decoupled: true)
    }
}
