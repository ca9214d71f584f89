import CnnCore

/// Mean-squared-error loss, L = Σ (ŷ − y)² / normalizer (PyTorch's nn.MSELoss).
/// Not a `Layer`: like `SoftmaxCrossEntropy` it ends the network and starts backward.
///
/// The normalizer defaults to PyTorch's reduction: the element count for
/// `.mean`, 1 for `.sum`. A data-parallel caller passes the GLOBAL element count
/// so the ranks' local sums add up to the global mean.
public final class MeanSquaredError {
    public enum Reduction: String, Sendable { case mean, sum }
    public let reduction: Reduction
    /// The last forward's sum of squared errors before division.
    public private(set) var lastLossSum = 0.0
    private let difference = Tensor(shape: [0])
    private let gradient = Tensor(shape: [0])
    private var scale: Float = 1

    /// An MSE loss with PyTorch's `reduction` ("mean" or "sum").
    public init(reduction: Reduction = .mean) {
        self.reduction = reduction
    }

    /// Loss of `prediction` against `target` (same element count).
    /// Throws `shapeMismatch` when the counts differ, `invalidArgument` for a non-positive normalizer.
    public func forward(prediction: Tensor, target: Tensor, normalizer: Int? = nil) throws -> Double {
        guard prediction.count == target.count else {
            throw CnnError.shapeMismatch(layer: "MSELoss", expected: "a target of \(formatShape(prediction.shape))",
                                         got: formatShape(target.shape))
        }
        let divisor = normalizer ?? (reduction == .mean ? prediction.count : 1)
        guard divisor > 0 else {
            throw CnnError.invalidArgument(layer: "MSELoss", argument: "normalizer", value: String(divisor), reason: "must be positive")
        }
        ensureShape(difference, prediction.shape)
        var sum = 0.0
        for i in 0..<prediction.count {
            let d = prediction.data[i] - target.data[i]
            difference.data[i] = d
            sum += Double(d) * Double(d)
        }
        lastLossSum = sum
        scale = 2 / Float(divisor)
        return sum / Double(divisor)
    }

    /// dL/dŷ = 2·(ŷ − y) / normalizer of the last forward; owned and reused.
    public func backward() -> Tensor {
        ensureShape(gradient, difference.shape)
        for i in 0..<difference.count { gradient.data[i] = scale * difference.data[i] }
        return gradient
    }
}
