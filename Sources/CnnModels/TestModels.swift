import CnnCore
import CnnLayers

/// Small models that are not part of the zoo, for equivalence tests and
/// self-tests (reachable from the command line as `cnn-dist train --test-model NAME`).
public enum TestModels {
    /// Names accepted by `model(named:)`.
    public static let names = ["smooth-bn"]

    /// The model `name`, initialised from `seed`; nil for an unknown name.
    public static func model(named name: String, seed: UInt64) throws -> Model? {
        switch name {
        case "smooth-bn": return try smoothBatchNorm(seed: seed)
        default: return nil
        }
    }

    /// A BatchNorm CNN for 1x28x28 inputs and 10 classes with smooth
    /// activations (ELU, tanh), average pooling and dropout: no kinks, so the
    /// rounding differences between rank counts stay rounding-sized over many
    /// steps (with ReLU and max-pool one pre-activation within rounding of a
    /// kink switches a sample's gradient path and the runs drift apart).
    public static func smoothBatchNorm(seed: UInt64) throws -> Model {
        let root = Sequential([
            try Conv2D(1, 8, kernelSize: 3, padding: 1), try BatchNorm2d(8), ELU(), try AvgPool2d(kernelSize: 2),
            try Conv2D(8, 16, kernelSize: 3, padding: 1), try BatchNorm2d(16), Tanh(), try AvgPool2d(kernelSize: 2),
            Flatten(), try Dropout(p: 0.2), try Linear(16 * 7 * 7, 10),
        ])
        let model = try Model(name: "smooth-bn", root: root, inputShape: [1, 28, 28], classCount: 10)
        model.store.initialize(seed: seed)
        return model
    }
}
