import CnnCore
import CnnLayers
import Foundation

/// Layer-wise Adaptive Moments for Batch training: Adam's bias-corrected direction plus
/// decoupled weight decay, rescaled per parameter tensor so its step is the learning rate
/// times ‖w‖ (the trust ratio ‖w‖ / ‖u‖).
///
/// At step t (from 1), learning rate η, weight decay λ, per tensor of the layout:
///
///     m = β1·m + (1 − β1)·g                       (as torch's lerp, like `Adam`)
///     v = β2·v + (1 − β2)·g²
///     r = (m / (1 − β1^t)) / (√(v / (1 − β2^t)) + ε)
///     adapted (conv / linear weights):  u = r + λ·w,  τ = ‖w‖ / ‖u‖   (1 if either is 0)
///     excluded (biases, BatchNorm):     u = r,        τ = 1            (no decay, no adaptation)
///     w = w − η·τ·u
///
/// φ (the paper's scaling of ‖w‖) is the identity. Bias corrections in Double, norms summed
/// in Double in element order, η·τ rounded to Float once per tensor. A tensor the weight-
/// decay mask exempts (a frozen one) gets λ = 0. Without a layout the whole buffer is one
/// adapted tensor. State: "exp_avg" (m) and "exp_avg_sq" (v), from zero.
///
/// Reference: You et al., "Large Batch Optimization for Deep Learning: Training BERT in
/// 76 minutes", ICLR 2020 (arXiv:1904.00962, Algorithm 2).
public final class LAMB: Optimizer {
    /// Decay of the first moment, in [0, 1).
    public let beta1: Float
    /// Decay of the second moment, in [0, 1).
    public let beta2: Float
    /// Added to the denominator (> 0); the paper's 1e-6.
    public let eps: Float
    /// Decoupled weight decay λ (≥ 0) of adapted tensors.
    public let weightDecay: Float
    public var weightDecayMask = WeightDecayMask.all
    public private(set) var stepCount = 0
    private var layout = LayerwiseLayout()
    private let state = OptimizerStateBuffers(names: ["exp_avg", "exp_avg_sq"])
    /// The update direction u of the current tensor (scratch, reused).
    private var direction: [Float] = []

    /// Throws `CnnError.invalidConfig` naming the field for out-of-range values.
    public init(beta1: Float = 0.9, beta2: Float = 0.999, eps: Float = 1e-6, weightDecay: Float = 0.01) throws {
        try HyperParameterCheck.beta(beta1, field: "beta1")
        try HyperParameterCheck.beta(beta2, field: "beta2")
        try HyperParameterCheck.eps(eps)
        try HyperParameterCheck.weightDecay(weightDecay)
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.weightDecay = weightDecay
    }

    public var name: String { "lamb" }

    public var hyperParameters: [(name: String, value: Double)] {
        [("beta1", decimal(beta1)), ("beta2", decimal(beta2)), ("eps", decimal(eps)), ("weight_decay", decimal(weightDecay))]
    }

    public func setParameterLayout(_ entries: [ParameterEntry]) { layout = LayerwiseLayout(entries: entries) }

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
        let bc1 = Float(1 - pow(b1, t)), bc2 = Float((1 - pow(b2, t)).squareRoot())
        let oneMinusBeta1 = Float(1 - b1), oneMinusBeta2 = Float(1 - b2)
        let beta2 = self.beta2, eps = self.eps
        for tensor in layout.tensors(count: count) {
            let r = tensor.range
            let wd: Float = tensor.adapted && weightDecayMask.decays(r) ? weightDecay : 0
            if direction.count < r.count { direction = [Float](repeating: 0, count: r.count) }
            direction.withUnsafeMutableBufferPointer { ub in
                let u = ub.baseAddress!, lo = r.lowerBound   // u[i − lo] for i in r
                forEachChunk(r) { i, n in
                    let g = loadLanes(grad, i, n)
                    let mOld = loadLanes(m, i, n)
                    let mi = mOld + oneMinusBeta1 * (g - mOld)
                    let vi = loadLanes(v, i, n) * beta2 + oneMinusBeta2 * g * g
                    storeLanes(mi, m, i, n)
                    storeLanes(vi, v, i, n)
                    var ui = (mi / bc1) / (vi.squareRoot() / bc2 + eps)
                    if wd != 0 { ui = ui + wd * loadLanes(p, i, n) }
                    storeLanes(ui, u, i - lo, n)
                }
                var scaled = lr
                if tensor.adapted {
                    let wNorm = l2Norm(UnsafePointer(p), r), uNorm = l2Norm(UnsafePointer(u), 0 ..< r.count)
                    if wNorm > 0 && uNorm > 0 { scaled = Float(Double(lr) * wNorm / uNorm) }
                }
                forEachChunk(r) { i, n in
                    storeLanes(loadLanes(p, i, n) - scaled * loadLanes(u, i - lo, n), p, i, n)
                }
            }
        }
        stepCount += 1
    }
}
