import CnnCore
import CnnLayers

/// Layer-wise Adaptive Rate Scaling: SGD with momentum whose learning rate is scaled, per
/// parameter tensor, by a trust ratio η·‖w‖ / (‖∇L‖ + β·‖w‖), so that every layer moves by
/// about the same fraction of its weights whatever the batch size.
///
/// Per tensor of the layout (`setParameterLayout`), with global learning rate γ, trust
/// coefficient η, weight decay β and momentum m:
///
///     adapted (conv / linear weights):
///         λ = η·‖w‖ / (‖g‖ + β·‖w‖)        (1 if ‖w‖ or ‖g‖ is 0)
///         d = g + β·w
///     excluded (biases, BatchNorm scale and shift), as in You et al.'s ImageNet runs:
///         λ = 1, d = g                     (no adaptation, no weight decay)
///     v = m·v + γ·λ·d
///     w = w − v
///
/// Norms are summed in Double in element order; γ·λ is rounded to Float once per tensor.
/// A tensor the weight-decay mask exempts (a frozen one) gets β = 0. Without a layout
/// the whole buffer is one adapted tensor. State: "momentum_buffer" (v), from zero.
///
/// Reference: You, Gitman, Ginsburg, "Large Batch Training of Convolutional Networks",
/// arXiv:1708.03888, 2017 (Algorithm 1); You et al., "ImageNet Training in Minutes", ICPP 2018.
public final class LARS: Optimizer {
    /// Momentum m in [0, 1).
    public let momentum: Float
    /// Weight decay β (≥ 0) of adapted tensors.
    public let weightDecay: Float
    /// Trust coefficient η (> 0): how far a layer may move relative to its weights.
    public let trustCoefficient: Float
    public var weightDecayMask = WeightDecayMask.all
    public private(set) var stepCount = 0
    private var layout = LayerwiseLayout()
    private let state = OptimizerStateBuffers(names: ["momentum_buffer"])

    /// Throws `CnnError.invalidConfig` naming the field for out-of-range values.
    public init(momentum: Float = 0.9, weightDecay: Float = 5e-4, trustCoefficient: Float = 0.001) throws {
        try HyperParameterCheck.momentum(momentum)
        try HyperParameterCheck.weightDecay(weightDecay)
        try HyperParameterCheck.trustCoefficient(trustCoefficient)
        self.momentum = momentum
        self.weightDecay = weightDecay
        self.trustCoefficient = trustCoefficient
    }

    public var name: String { "lars" }

    public var hyperParameters: [(name: String, value: Double)] {
        [("momentum", decimal(momentum)), ("weight_decay", decimal(weightDecay)),
         ("trust_coefficient", decimal(trustCoefficient))]
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
        let v = state.tensors[0].data
        let mu = momentum
        for tensor in layout.tensors(count: count) {
            let r = tensor.range
            let wd: Float = tensor.adapted && weightDecayMask.decays(r) ? weightDecay : 0
            var scaled = lr
            if tensor.adapted {
                let wNorm = l2Norm(UnsafePointer(p), r), gNorm = l2Norm(grad, r)
                if wNorm > 0 && gNorm > 0 {
                    let trust = decimal(trustCoefficient) * wNorm / (gNorm + decimal(wd) * wNorm)
                    scaled = Float(Double(lr) * trust)
                }
            }
            forEachChunk(r) { i, n in
                var d = loadLanes(grad, i, n)
                if wd != 0 { d = d + wd * loadLanes(p, i, n) }
                let vi = mu * loadLanes(v, i, n) + scaled * d
                storeLanes(vi, v, i, n)
                storeLanes(loadLanes(p, i, n) - vi, p, i, n)
            }
        }
        stepCount += 1
    }
}
