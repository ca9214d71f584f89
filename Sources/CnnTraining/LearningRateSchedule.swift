import CnnCore
import Foundation

/// A learning rate as a pure function of the global optimizer step.
///
/// Nothing is stepped or stored: `learningRate(step:stepsPerEpoch:)` depends
/// only on the global step (counting from 0, the step about to be taken) and
/// the number of steps per epoch, so a run resumed from a checkpoint — on any
/// number of ranks, as long as the global batch is the same — sees the same
/// rates. Arithmetic is in Double, as PyTorch's schedulers compute in Python
/// floats; the result is rounded to Float.
///
/// The rate is `decay(step) · warmupFactor(step)`, i.e. a linear warm-up
/// multiplies whichever decay is chosen (PyTorch's
/// `ChainedScheduler([LinearLR(...), main])`).
///
/// `step`, `multiStep` and `cosine` with a length in epochs change at epoch
/// boundaries, epoch = ⌊step / stepsPerEpoch⌋, as a PyTorch scheduler
/// stepped once per epoch; `cosine` with a length in steps, `oneCycle` and the
/// warm-up change every step, as PyTorch schedulers stepped once per batch.
public struct LearningRateSchedule: Equatable, Sendable {
    /// A duration in optimizer steps or in epochs.
    public enum Length: Equatable, Sendable {
        case steps(Int)
        case epochs(Int)

        /// The duration in steps.
        public func steps(stepsPerEpoch: Int) -> Int {
            switch self {
            case let .steps(n): return n
            case let .epochs(n): return n * stepsPerEpoch
            }
        }

        var value: Int {
            switch self {
            case let .steps(n), let .epochs(n): return n
            }
        }
    }

    /// How the base rate η changes over training.
    public enum Decay: Equatable, Sendable {
        /// η throughout.
        case constant
        /// `StepLR`: η·γ^⌊epoch / every⌋.
        case step(everyEpochs: Int, gamma: Double)
        /// `MultiStepLR`: η·γ^(number of milestones ≤ epoch); milestones in epochs.
        case multiStep(milestones: [Int], gamma: Double)
        /// `CosineAnnealingLR`: η_min + (η − η_min)·(1 + cos(π·t/T))/2, with t
        /// the epoch (length in epochs) or the step (length in steps). Holds
        /// η_min for t ≥ T (PyTorch's closed form would rise again).
        case cosine(length: Length, etaMin: Double)
        /// `OneCycleLR` with cosine annealing, η the maximum rate: from η/div
        /// up to η at step pct·total − 1, then down to η/(div·finalDiv) at
        /// step total − 1; held there afterwards (PyTorch raises). Momentum
        /// is not cycled.
        case oneCycle(length: Length, pctStart: Double, divFactor: Double, finalDivFactor: Double)

        /// One-cycle with PyTorch's defaults (pct_start 0.3, div_factor 25, final_div_factor 1e4).
        public static func oneCycle(length: Length) -> Decay {
            .oneCycle(length: length, pctStart: 0.3, divFactor: 25, finalDivFactor: 1e4)
        }
    }

    /// A linear ramp of the rate's factor from `startFactor` to 1 over `length`
    /// (PyTorch's `LinearLR(start_factor, end_factor=1, total_iters)` stepped per step).
    public struct Warmup: Equatable, Sendable {
        public var length: Length
        public var startFactor: Double

        public init(length: Length, startFactor: Double = 1.0 / 3.0) {
            self.length = length
            self.startFactor = startFactor
        }
    }

    /// η: the configured rate (the maximum rate for one-cycle).
    public let baseLearningRate: Float
    public let decay: Decay
    public let warmup: Warmup?

    /// Throws `CnnError.invalidConfig` naming the field for out-of-range values.
    public init(baseLearningRate: Float, decay: Decay = .constant, warmup: Warmup? = nil) throws {
        try validateLearningRate(baseLearningRate)
        func positive(_ field: String, _ v: Double) throws {
            guard v.isFinite, v > 0 else { throw CnnError.invalidConfig(field: field, value: "\(v)", allowed: "\(field) > 0") }
        }
        func length(_ field: String, _ l: Length, minimum: Int) throws {
            guard l.value >= minimum else {
                throw CnnError.invalidConfig(field: field, value: "\(l.value)", allowed: "integer >= \(minimum)")
            }
        }
        switch decay {
        case .constant:
            break
        case let .step(every, gamma):
            guard every >= 1 else {
                throw CnnError.invalidConfig(field: "lr_schedule.every", value: "\(every)", allowed: "epochs >= 1")
            }
            try positive("lr_schedule.gamma", gamma)
        case let .multiStep(milestones, gamma):
            guard !milestones.isEmpty, milestones.allSatisfy({ $0 >= 1 }),
                  zip(milestones, milestones.dropFirst()).allSatisfy({ $0 < $1 }) else {
                throw CnnError.invalidConfig(field: "lr_schedule.milestones", value: "\(milestones)",
                                             allowed: "strictly increasing epochs >= 1")
            }
            try positive("lr_schedule.gamma", gamma)
        case let .cosine(l, etaMin):
            try length("lr_schedule.length", l, minimum: 1)
            guard etaMin.isFinite, etaMin >= 0, etaMin <= Double(baseLearningRate) else {
                throw CnnError.invalidConfig(field: "lr_schedule.eta_min", value: "\(etaMin)",
                                             allowed: "0 <= eta_min <= lr (\(baseLearningRate))")
            }
        case let .oneCycle(l, pctStart, divFactor, finalDivFactor):
            try length("lr_schedule.length", l, minimum: 2)
            guard pctStart.isFinite, pctStart > 0, pctStart < 1 else {
                throw CnnError.invalidConfig(field: "lr_schedule.pct_start", value: "\(pctStart)",
                                             allowed: "0 < pct_start < 1")
            }
            try positive("lr_schedule.div_factor", divFactor)
            try positive("lr_schedule.final_div_factor", finalDivFactor)
        }
        if let w = warmup {
            try length("lr_schedule.warmup", w.length, minimum: 0)
            guard w.startFactor.isFinite, w.startFactor > 0, w.startFactor <= 1 else {
                throw CnnError.invalidConfig(field: "lr_schedule.warmup_start_factor", value: "\(w.startFactor)",
                                             allowed: "0 < warmup_start_factor <= 1")
            }
        }
        self.baseLearningRate = baseLearningRate
        self.decay = decay
        self.warmup = warmup
    }

    /// The rate for global step `step` (0 = the first step) with
    /// `stepsPerEpoch` (≥ 1) optimizer steps per epoch.
    public func learningRate(step: Int, stepsPerEpoch: Int) -> Float {
        precondition(step >= 0 && stepsPerEpoch >= 1, "step \(step), stepsPerEpoch \(stepsPerEpoch)")
        let eta = Double(baseLearningRate)
        let epoch = step / stepsPerEpoch
        var lr: Double
        switch decay {
        case .constant:
            lr = eta
        case let .step(every, gamma):
            lr = eta * pow(gamma, Double(epoch / every))
        case let .multiStep(milestones, gamma):
            lr = eta * pow(gamma, Double(milestones.filter { $0 <= epoch }.count))
        case let .cosine(length, etaMin):
            let t: Int
            switch length {
            case .steps: t = step
            case .epochs: t = epoch
            }
            let T = length.value
            lr = etaMin + (eta - etaMin) * (1 + cos(Double.pi * Double(Swift.min(t, T)) / Double(T))) / 2
        case let .oneCycle(length, pctStart, divFactor, finalDivFactor):
            lr = LearningRateSchedule.oneCycle(step: step, totalSteps: length.steps(stepsPerEpoch: stepsPerEpoch),
                                               maxLR: eta, pctStart: pctStart, divFactor: divFactor,
                                               finalDivFactor: finalDivFactor)
        }
        if let w = warmup {
            let W = w.length.steps(stepsPerEpoch: stepsPerEpoch)
            if W > 0 && step < W {
                lr *= w.startFactor + (1 - w.startFactor) * Double(step) / Double(W)
            }
        }
        return Float(lr)
    }

    /// torch.optim.lr_scheduler.OneCycleLR (anneal_strategy "cos", two phases).
    static func oneCycle(step: Int, totalSteps: Int, maxLR: Double, pctStart: Double, divFactor: Double,
                         finalDivFactor: Double) -> Double {
        let initialLR = maxLR / divFactor
        let minLR = initialLR / finalDivFactor
        func anneal(_ start: Double, _ end: Double, _ pct: Double) -> Double {
            end + (start - end) / 2 * (cos(Double.pi * pct) + 1)
        }
        let stepNum = Double(Swift.min(step, totalSteps - 1))
        let end1 = pctStart * Double(totalSteps) - 1
        let end2 = Double(totalSteps - 1)
        if stepNum <= end1 {
            return end1 > 0 ? anneal(initialLR, maxLR, stepNum / end1) : maxLR
        }
        return end2 > end1 ? anneal(maxLR, minLR, (stepNum - end1) / (end2 - end1)) : minLR
    }
}

// MARK: - Parsing

extension LearningRateSchedule {
    /// Parses `name[:key=value,key=value...]`, e.g.
    /// `"multistep:milestones=30/60/80,gamma=0.1,warmup_epochs=5"`.
    /// See `init(name:baseLearningRate:options:)` for names and keys.
    public static func parse(_ spec: String, baseLearningRate: Float) throws -> LearningRateSchedule {
        let parts = spec.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
        var options: [String: String] = [:]
        if parts.count > 1 {
            for item in parts[1].split(separator: ",") {
                let kv = item.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
                guard kv.count == 2, !kv[0].isEmpty else {
                    throw CnnError.invalidConfig(field: "lr_schedule", value: "'\(item)'", allowed: "key=value pairs")
                }
                options[kv[0]] = kv[1]
            }
        }
        return try LearningRateSchedule(name: parts.first ?? "", baseLearningRate: baseLearningRate, options: options)
    }

    /// Builds a schedule from a name and string options (a config section).
    ///
    /// Names and keys (defaults in brackets):
    /// - `constant`
    /// - `step`: `every` (alias `step_size`, epochs), `gamma` [0.1]
    /// - `multistep`: `milestones` (epochs separated by `/`, `;` or spaces), `gamma` [0.1]
    /// - `cosine`: `epochs` or `steps` (T), `eta_min` [0]
    /// - `onecycle`: `epochs` or `steps` (total), `pct_start` [0.3], `div_factor` [25], `final_div_factor` [1e4]
    /// - any: `warmup_steps` or `warmup_epochs` [none], `warmup_start_factor` [1/3]
    public init(name: String, baseLearningRate: Float, options: [String: String]) throws {
        var used: Set<String> = []
        func text(_ key: String) -> String? {
            guard let v = options[key] else { return nil }
            used.insert(key)
            return v
        }
        func double(_ key: String, _ defaultValue: Double? = nil) throws -> Double {
            guard let s = text(key) else {
                if let d = defaultValue { return d }
                throw CnnError.invalidConfig(field: "lr_schedule.\(key)", value: "missing", allowed: "a number")
            }
            guard let v = Double(s) else {
                throw CnnError.invalidConfig(field: "lr_schedule.\(key)", value: "'\(s)'", allowed: "a number")
            }
            return v
        }
        func int(_ key: String) throws -> Int? {
            guard let s = text(key) else { return nil }
            guard let v = Int(s) else {
                throw CnnError.invalidConfig(field: "lr_schedule.\(key)", value: "'\(s)'", allowed: "an integer")
            }
            return v
        }
        func length() throws -> Length {
            let e = try int("epochs"), s = try int("steps")
            switch (e, s) {
            case let (e?, nil): return .epochs(e)
            case let (nil, s?): return .steps(s)
            default:
                throw CnnError.invalidConfig(field: "lr_schedule.epochs", value: e == nil ? "missing" : "given with steps",
                                             allowed: "exactly one of epochs=N or steps=N")
            }
        }

        let decay: Decay
        switch name.lowercased() {
        case "constant", "none", "":
            decay = .constant
        case "step":
            guard let every = try int("every") ?? int("step_size") else {
                throw CnnError.invalidConfig(field: "lr_schedule.every", value: "missing", allowed: "epochs >= 1")
            }
            decay = .step(everyEpochs: every, gamma: try double("gamma", 0.1))
        case "multistep", "multi_step", "multi-step":
            let raw = text("milestones") ?? ""
            let items = raw.split(whereSeparator: { "/; ".contains($0) })
            let milestones = items.compactMap { Int($0) }
            guard milestones.count == items.count else {
                throw CnnError.invalidConfig(field: "lr_schedule.milestones", value: "'\(raw)'",
                                             allowed: "epochs separated by '/', e.g. 30/60/80")
            }
            decay = .multiStep(milestones: milestones, gamma: try double("gamma", 0.1))
        case "cosine", "cos":
            decay = .cosine(length: try length(), etaMin: try double("eta_min", 0))
        case "onecycle", "one_cycle", "one-cycle":
            decay = .oneCycle(length: try length(), pctStart: try double("pct_start", 0.3),
                              divFactor: try double("div_factor", 25), finalDivFactor: try double("final_div_factor", 1e4))
        default:
            throw CnnError.invalidConfig(field: "lr_schedule", value: "'\(name)'",
                                         allowed: "constant, step, multistep, cosine, onecycle")
        }

        var warmup: Warmup? = nil
        let ws = try int("warmup_steps"), we = try int("warmup_epochs")
        if ws != nil && we != nil {
            throw CnnError.invalidConfig(field: "lr_schedule.warmup_steps", value: "given with warmup_epochs",
                                         allowed: "one of warmup_steps or warmup_epochs")
        }
        let startFactor = try double("warmup_start_factor", 1.0 / 3.0)
        if let ws = ws { warmup = Warmup(length: .steps(ws), startFactor: startFactor) }
        if let we = we { warmup = Warmup(length: .epochs(we), startFactor: startFactor) }

        if let unknown = options.keys.sorted().first(where: { !used.contains($0) }) {
            throw CnnError.invalidConfig(field: "lr_schedule.\(unknown)", value: "'\(options[unknown]!)'",
                                         allowed: "a key of schedule '\(name)'")
        }
        try self.init(baseLearningRate: baseLearningRate, decay: decay, warmup: warmup)
    }
}

/// The learning-rate schedules a config can name; each case builds its decay
/// from the config (PyTorch's scheduler of the same name).
public enum ScheduleKind: String, ConfigChoice {
    case constant, step, multistep, cosine, onecycle

    /// The schedule for `config` with `stepsPerEpoch` optimizer steps per epoch,
    /// with `warmup_epochs` of linear warm-up.
    public func make(_ c: TrainingConfig, stepsPerEpoch: Int) throws -> LearningRateSchedule {
        let decay: LearningRateSchedule.Decay
        switch self {
        case .constant: decay = .constant
        case .step: decay = .step(everyEpochs: c.stepEpochs, gamma: Double(c.gamma))
        case .multistep: decay = .multiStep(milestones: c.milestones, gamma: Double(c.gamma))
        case .cosine: decay = .cosine(length: .epochs(c.epochs), etaMin: 0)
        case .onecycle: decay = .oneCycle(length: .steps(c.epochs * stepsPerEpoch))
        }
        let warmupSteps = Int((c.warmupEpochs * Float(stepsPerEpoch)).rounded())
        return try LearningRateSchedule(baseLearningRate: c.lr, decay: decay,
                                        warmup: warmupSteps > 0 ? .init(length: .steps(warmupSteps)) : nil)
    }
}
