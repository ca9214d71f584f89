import CnnCore

/// Softmax followed by cross-entropy against integer labels, with optional
/// label smoothing as in PyTorch (target = (1 − ε)·onehot + ε / classes).
/// Not a `Layer`: it ends the network and starts backward.
///
/// `forward` returns the SUM of the local per-sample losses divided by
/// `normalizer`, the GLOBAL batch size, so ranks with different local batch
/// sizes add up to the exact global mean; `backward` gives
/// dL/dlogits = (softmax − target) / normalizer to match.
public final class SoftmaxCrossEntropy {
    public let labelSmoothing: Float
    /// Samples of the last forward whose highest logit (first on ties) was the label.
    public private(set) var lastCorrect = 0
    /// The last forward's local loss sum before division by the normalizer.
    public private(set) var lastLossSum = 0.0
    private let probabilities = Tensor(shape: [0])
    private let gradient = Tensor(shape: [0])
    private let labels = IndexBuffer()
    private var normalizer = 1
    private var batch = 0
    private var classes = 0

    /// A softmax cross-entropy with label smoothing ε in [0, 1).
    public init(labelSmoothing: Float = 0) throws {
        guard labelSmoothing >= 0, labelSmoothing < 1 else {
            throw CnnError.invalidArgument(layer: "SoftmaxCrossEntropy", argument: "labelSmoothing", value: "\(labelSmoothing)",
                                           reason: "must lie in [0, 1)")
        }
        self.labelSmoothing = labelSmoothing
    }

    /// Loss of `logits` [N, K] (or [N, K, 1, 1]) against `labels` (N values in 0..<K),
    /// summed over the N samples and divided by `normalizer`. Sets `lastCorrect`.
    /// Labels out of range stop the program with a message; validate them upstream.
    public func forward(logits: Tensor, labels: UnsafeBufferPointer<Int32>, normalizer: Int) -> Double {
        let n = logits.n, k = logits.sampleCount
        precondition(labels.count == n, "SoftmaxCrossEntropy: \(labels.count) labels for a batch of \(n)")
        precondition(normalizer > 0, "SoftmaxCrossEntropy: normalizer \(normalizer) must be positive")
        batch = n
        classes = k
        self.normalizer = normalizer
        if probabilities.shape != logits.shape { probabilities.resize(to: logits.shape) }
        self.labels.reserve(n)
        if n > 0 { self.labels.data.update(from: labels.baseAddress!, count: n) }
        let (sum, correct) = softmaxCrossEntropyForward(logits: logits.data, labels: self.labels.data,
                                                         probabilities: probabilities.data, n: n, k: k,
                                                         smoothing: labelSmoothing)
        lastCorrect = correct
        lastLossSum = sum
        return sum / Double(normalizer)
    }

    /// dL/dlogits of the last forward, shaped like its logits; owned and reused.
    public func backward() -> Tensor {
        if gradient.shape != probabilities.shape { gradient.resize(to: probabilities.shape) }
        softmaxCrossEntropyBackward(probabilities: probabilities.data, labels: labels.data, gradient: gradient.data,
                                    n: batch, k: classes, smoothing: labelSmoothing, scale: 1 / Float(normalizer))
        return gradient
    }
}
