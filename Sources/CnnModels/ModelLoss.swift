import CnnCore
import CnnLayers

/// The training objective of a model: softmax cross-entropy of its logits, plus, for each
/// auxiliary head that ran in this forward (training mode), its weight times the same loss
/// of the head's logits (GoogLeNet: main + 0.3·(aux1 + aux2)). Without heads it is exactly
/// `SoftmaxCrossEntropy`.
///
/// `backward` returns dL/d(main logits) and hands each head its weighted gradient, so the
/// model's backward carries both into the trunk. Accuracy (`lastCorrect`) is the main
/// classifier's; evaluation never runs the heads.
public final class ModelLoss {
    /// The heads of the model, in model order.
    public let heads: [AuxiliaryHead]
    private let main: SoftmaxCrossEntropy
    private let auxiliary: [SoftmaxCrossEntropy]
    private var ran: [Bool]

    /// The loss for `model` with label smoothing ε in [0, 1) on every classifier.
    public init(model: Model, labelSmoothing: Float = 0) throws {
        heads = model.auxiliaryHeads
        main = try SoftmaxCrossEntropy(labelSmoothing: labelSmoothing)
        auxiliary = try heads.map { _ in try SoftmaxCrossEntropy(labelSmoothing: labelSmoothing) }
        ran = heads.map { _ in false }
    }

    /// Samples of the last forward the main classifier got right.
    public var lastCorrect: Int { main.lastCorrect }

    /// The objective for `logits` (the model's last forward) against `labels`, each loss
    /// summed over the local samples and divided by `normalizer` (the global batch size).
    public func forward(logits: Tensor, labels: UnsafeBufferPointer<Int32>, normalizer: Int) -> Double {
        var total = main.forward(logits: logits, labels: labels, normalizer: normalizer)
        for (i, head) in heads.enumerated() {
            ran[i] = head.output != nil
            guard let out = head.output else { continue }
            total += Double(head.weight) * auxiliary[i].forward(logits: out, labels: labels, normalizer: normalizer)
        }
        return total
    }

    /// dL/d(main logits); each head that ran gets its weight times its loss's gradient.
    public func backward() -> Tensor {
        for (i, head) in heads.enumerated() where ran[i] {
            let g = auxiliary[i].backward()
            let w = head.weight
            for j in 0..<g.count { g.data[j] *= w }
            head.setOutputGradient(g)
        }
        return main.backward()
    }
}
