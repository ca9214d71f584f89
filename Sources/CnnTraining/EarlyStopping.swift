import CnnCore

/// Stops training when a validation metric has not improved for `patience`
/// consecutive evaluations (as PyTorch Lightning's `EarlyStopping`).
///
/// An evaluation improves on the best so far if
///
///     mode .min:  metric < best − minDelta
///     mode .max:  metric > best + minDelta
///
/// (the first finite metric always improves). An improvement resets the count
/// of bad evaluations and becomes the best; anything else, including a NaN or
/// infinite metric, counts one bad evaluation. `update` returns true once the
/// count reaches `patience`.
///
/// The state (`best`, `badEpochs`) is plain values so a checkpoint can save
/// and restore it.
public struct EarlyStopping: Equatable, Sendable {
    /// Whether smaller (loss) or larger (accuracy) is better.
    public enum Mode: String, Equatable, Sendable, CaseIterable {
        case min
        case max
    }

    /// What a checkpoint stores.
    public struct State: Equatable, Sendable, Codable {
        /// The best metric so far; nil before the first finite one.
        public var best: Double?
        /// Consecutive evaluations without improvement.
        public var badEpochs: Int

        public init(best: Double? = nil, badEpochs: Int = 0) {
            self.best = best
            self.badEpochs = badEpochs
        }
    }

    /// Bad evaluations tolerated before stopping (≥ 0; 0 stops at the first one).
    public let patience: Int
    /// Smallest change that counts as an improvement (≥ 0).
    public let minDelta: Double
    public let mode: Mode
    /// Current state; assign a saved one to resume.
    public var state = State()

    /// The best metric so far.
    public var best: Double? { state.best }
    /// Consecutive evaluations without improvement.
    public var badEpochs: Int { state.badEpochs }

    /// Throws `CnnError.invalidConfig` naming the field for out-of-range values.
    public init(patience: Int, minDelta: Double = 0, mode: Mode = .min) throws {
        guard patience >= 0 else {
            throw CnnError.invalidConfig(field: "early_stopping.patience", value: "\(patience)", allowed: "patience >= 0")
        }
        guard minDelta.isFinite, minDelta >= 0 else {
            throw CnnError.invalidConfig(field: "early_stopping.min_delta", value: "\(minDelta)",
                                         allowed: "min_delta >= 0")
        }
        self.patience = patience
        self.minDelta = minDelta
        self.mode = mode
    }

    /// Whether `metric` improves on the best so far.
    public func isImprovement(_ metric: Double) -> Bool {
        guard metric.isFinite else { return false }
        guard let best = state.best else { return true }
        switch mode {
        case .min: return metric < best - minDelta
        case .max: return metric > best + minDelta
        }
    }

    /// Records one evaluation; returns true if training should stop.
    @discardableResult
    public mutating func update(_ metric: Double) -> Bool {
        if isImprovement(metric) {
            state.best = metric
            state.badEpochs = 0
        } else {
            state.badEpochs += 1
        }
        return shouldStop
    }

    /// True once `patience` consecutive evaluations have not improved.
    public var shouldStop: Bool { state.badEpochs > 0 && state.badEpochs >= patience }
}
