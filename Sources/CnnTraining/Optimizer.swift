import CnnCore
import CnnLayers
import Foundation

// Optimizers update one flat parameter buffer from one flat gradient buffer
// (the `ParameterStore` layout). Their state mirrors that buffer, so each
// update is one flat loop and a checkpoint stores each state buffer as raw
// floats under its PyTorch state name ("momentum_buffer", "exp_avg", ...).
//
// The learning rate is passed to every `step`: it comes from a
// `LearningRateSchedule`, a pure function of the global step.

/// A first-order optimizer over a flat parameter buffer.
///
/// Update rules follow `torch.optim` exactly (single-tensor path, same
/// operation order, scalars such as 1 − β derived in Double from the decimal
/// hyper-parameter as Python does); each conforming type states its rule in
/// its doc comment. Results agree with PyTorch to rounding (its vectorized
/// CPU kernels may fuse multiply-adds; ours never do), and bitwise with
/// themselves across checkpoint resume and any split into chunks. State
/// buffers are allocated at the first `step` (or by `loadState`) with the
/// parameter count.
public protocol Optimizer: AnyObject {
    /// Short name for checkpoint headers and logs: "sgd", "adam", "adamw", "rmsprop", "lars", "lamb".
    var name: String { get }
    /// The hyper-parameters by their PyTorch names, for checkpoint headers and logs.
    var hyperParameters: [(name: String, value: Double)] { get }
    /// Steps taken so far (PyTorch's `state["step"]`); 0 before the first step.
    var stepCount: Int { get }
    /// Which elements weight decay applies to; all of them by default, as in PyTorch.
    var weightDecayMask: WeightDecayMask { get set }

    /// Updates `parameters[0..<count]` from `gradients[0..<count]` with the
    /// given learning rate (≥ 0; a schedule may reach 0) and counts one step.
    func step(parameters: UnsafeMutablePointer<Float>, gradients: UnsafePointer<Float>, count: Int,
              learningRate: Float)

    /// The state buffers by name, in a fixed order, each `count` elements;
    /// empty before the first step or for stateless settings (plain SGD).
    /// The tensors are the optimizer's own storage: write them, don't keep them.
    var stateTensors: [(name: String, tensor: Tensor)] { get }

    /// Restores the step counter and state buffers saved from `stepCount` and
    /// `stateTensors` of an optimizer of the same kind and settings, so the
    /// next step is bitwise the step the saved optimizer would have taken.
    /// Throws `CnnError.invalidCheckpoint` if names or sizes do not match.
    func loadState(stepCount: Int, tensors: [(name: String, tensor: Tensor)]) throws

    /// Tells a layer-wise optimizer (LARS, LAMB) where each parameter tensor lies in the
    /// flat buffer and which are conv/linear weights; the others ignore it.
    func setParameterLayout(_ entries: [ParameterEntry])
}

extension Optimizer {
    public func setParameterLayout(_ entries: [ParameterEntry]) {}

    /// Updates the store's parameters from its gradients.
    public func step(_ store: ParameterStore, learningRate: Float) {
        step(parameters: store.parameters.data, gradients: UnsafePointer(store.gradients.data),
             count: store.parameterCount, learningRate: learningRate)
    }

    /// Sets the weight-decay mask from the store's entry table: all
    /// parameters, or (with `excludeBiasAndNormalization`) weights of
    /// convolutions and linear layers only.
    public func configureWeightDecay(for store: ParameterStore, excludeBiasAndNormalization: Bool) {
        weightDecayMask = excludeBiasAndNormalization
            ? WeightDecayMask(entries: store.parameterEntries, excludeBiasAndNormalization: true)
            : .all
    }
}

/// Which elements of the flat parameter buffer receive weight decay.
///
/// PyTorch decays every parameter unless parameter groups say otherwise; the
/// common alternative (Goyal et al. 2017, "no bias decay") exempts biases and
/// BatchNorm scale/shift. The mask is a sorted list of exempt ranges, so the
/// optimizer runs one flat loop per contiguous segment.
public struct WeightDecayMask: Equatable, Sendable {
    /// Sorted, disjoint, non-adjacent ranges of elements exempt from weight decay.
    public private(set) var excluded: [Range<Int>]

    /// Decay applies to every element (PyTorch's default).
    public static let all = WeightDecayMask(excluded: [])

    /// Exempts the given ranges (sorted and merged here).
    public init(excluded ranges: [Range<Int>]) {
        var merged: [Range<Int>] = []
        for r in ranges.filter({ !$0.isEmpty }).sorted(by: { $0.lowerBound < $1.lowerBound }) {
            if let last = merged.last, r.lowerBound <= last.upperBound {
                merged[merged.count - 1] = last.lowerBound ..< Swift.max(last.upperBound, r.upperBound)
            } else {
                merged.append(r)
            }
        }
        excluded = merged
    }

    /// From the entry table: with `excludeBiasAndNormalization`, every entry
    /// whose role is not `.weight` (biases, BatchNorm scale and shift) is exempt.
    public init(entries: [ParameterEntry], excludeBiasAndNormalization: Bool) {
        guard excludeBiasAndNormalization else { self.init(excluded: []); return }
        let exempt = entries.filter { entry in
            if case .weight = entry.role { return false }
            return true
        }
        self.init(excluded: exempt.map { $0.offset ..< $0.offset + $0.count })
    }

    /// Whether decay applies to all of `range` (no exempt element in it).
    public func decays(_ range: Range<Int>) -> Bool {
        !excluded.contains { $0.overlaps(range) }
    }

    /// Splits `0..<count` into contiguous segments with and without decay.
    public func segments(count: Int) -> [(range: Range<Int>, decay: Bool)] {
        var result: [(range: Range<Int>, decay: Bool)] = []
        var start = 0
        for r in excluded where r.lowerBound < count {
            if start < r.lowerBound { result.append((start ..< r.lowerBound, true)) }
            let end = Swift.min(r.upperBound, count)
            result.append((Swift.max(start, r.lowerBound) ..< end, false))
            start = end
        }
        if start < count { result.append((start ..< count, true)) }
        return result
    }
}

// MARK: - Shared helpers

/// The parameter tensors of the flat buffer for layer-wise optimizers: each entry's range,
/// and whether it is adapted (a convolution or linear weight) or excluded (bias, BatchNorm).
struct LayerwiseLayout {
    private var entries: [(range: Range<Int>, adapted: Bool)] = []

    init() {}

    init(entries list: [ParameterEntry]) {
        entries = list.filter(\.isTrainable).map { entry in
            if case .weight = entry.role { return (entry.offset ..< entry.offset + entry.count, true) }
            return (entry.offset ..< entry.offset + entry.count, false)
        }
    }

    /// The tensors covering `0..<count`, in order; with no layout (or one for another
    /// buffer size), one adapted tensor.
    func tensors(count: Int) -> [(range: Range<Int>, adapted: Bool)] {
        guard !entries.isEmpty, entries.last!.range.upperBound == count else { return [(0 ..< count, true)] }
        return entries
    }
}

/// √(Σ x²) over `range`, summed in Double in element order.
func l2Norm(_ x: UnsafePointer<Float>, _ range: Range<Int>) -> Double {
    var s = 0.0
    for i in range { let d = Double(x[i]); s += d * d }
    return s.squareRoot()
}

/// Named state buffers of one optimizer, allocated lazily with the parameter count.
final class OptimizerStateBuffers {
    let names: [String]
    private(set) var tensors: [Tensor] = []

    init(names: [String]) { self.names = names }

    /// Zero-filled buffers of `count` elements, allocated on first use.
    func ensure(count: Int, optimizer: String) {
        if tensors.isEmpty {
            tensors = names.map { _ in Tensor(shape: [count]) }
        } else {
            precondition(tensors[0].count == count,
                         "\(optimizer): state has \(tensors[0].count) elements but step was given \(count)")
        }
    }

    var named: [(name: String, tensor: Tensor)] {
        tensors.isEmpty ? [] : zip(names, tensors).map { ($0, $1) }
    }

    /// A checkpoint's state of an optimizer that has buffers from its first
    /// step on: a step count >= 0 and, past step 0, the buffers; then `load`.
    func restore(stepCount: Int, _ saved: [(name: String, tensor: Tensor)], optimizer: String) throws {
        guard stepCount >= 0 else {
            throw CnnError.invalidCheckpoint(file: "optimizer state", reason: "negative step count \(stepCount)")
        }
        if stepCount > 0 && saved.isEmpty {
            throw CnnError.invalidCheckpoint(file: "optimizer state",
                                             reason: "\(optimizer) at step \(stepCount) has no \(names.joined(separator: "/"))")
        }
        try load(saved, optimizer: optimizer)
    }

    /// Copies saved buffers in; an empty list restores "no state yet".
    func load(_ saved: [(name: String, tensor: Tensor)], optimizer: String) throws {
        if saved.isEmpty { tensors = []; return }
        let savedNames = saved.map(\.name)
        guard savedNames == names else {
            throw CnnError.invalidCheckpoint(
                file: "optimizer state",
                reason: "\(optimizer) expects state [\(names.joined(separator: ", "))], found [\(savedNames.joined(separator: ", "))]")
        }
        let count = saved[0].tensor.count
        guard saved.allSatisfy({ $0.tensor.count == count }) else {
            throw CnnError.invalidCheckpoint(file: "optimizer state",
                                             reason: "\(optimizer) state buffers differ in size")
        }
        tensors = saved.map { s in
            let t = Tensor(shape: [count])
            t.data.update(from: s.tensor.data, count: count)
            return t
        }
    }
}

/// Throws `invalidConfig` unless `value` is finite and in `range`.
func checkHyperParameter(_ field: String, _ value: Float, in range: Range<Float>, allowed: String) throws {
    guard value.isFinite, range.contains(value) else {
        throw CnnError.invalidConfig(field: field, value: "\(value)", allowed: allowed)
    }
}

/// Throws `invalidConfig` unless `value` is finite and in `range`.
func checkHyperParameter(_ field: String, _ value: Float, in range: ClosedRange<Float>, allowed: String) throws {
    guard value.isFinite, range.contains(value) else {
        throw CnnError.invalidConfig(field: field, value: "\(value)", allowed: allowed)
    }
}

/// Shared checks: momentum in [0, 1), weight decay ≥ 0, eps > 0, beta in [0, 1).
enum HyperParameterCheck {
    static func momentum(_ v: Float, field: String = "momentum") throws {
        try checkHyperParameter(field, v, in: 0 ..< 1, allowed: "0 <= \(field) < 1")
    }
    static func weightDecay(_ v: Float) throws {
        try checkHyperParameter("weight_decay", v, in: 0 ... Float.greatestFiniteMagnitude,
                                allowed: "weight_decay >= 0")
    }
    static func eps(_ v: Float) throws {
        guard v.isFinite, v > 0 else { throw CnnError.invalidConfig(field: "eps", value: "\(v)", allowed: "eps > 0") }
    }
    static func trustCoefficient(_ v: Float) throws {
        guard v.isFinite, v > 0, v <= 1e3 else {
            throw CnnError.invalidConfig(field: "trust_coefficient", value: "\(v)", allowed: "0 < trust_coefficient <= 1000")
        }
    }
    static func beta(_ v: Float, field: String) throws {
        try checkHyperParameter(field, v, in: 0 ..< 1, allowed: "0 <= \(field) < 1")
    }
}

/// Checks a learning rate given in a configuration: finite and > 0.
public func validateLearningRate(_ lr: Float, field: String = "lr") throws {
    guard lr.isFinite, lr > 0 else {
        throw CnnError.invalidConfig(field: field, value: "\(lr)", allowed: "\(field) > 0")
    }
}

// MARK: - Eight-lane loop

/// The vector the update loops work in: 8 floats, one AVX register.
typealias FloatVector = SIMD8<Float>

/// Loads `n` (1...8) floats at `p + i`; missing lanes are zero.
@inline(__always)
func loadLanes(_ p: UnsafePointer<Float>, _ i: Int, _ n: Int) -> FloatVector {
    if n == FloatVector.scalarCount { return UnsafeRawPointer(p + i).loadUnaligned(as: FloatVector.self) }
    var v = FloatVector()
    for k in 0..<n { v[k] = p[i + k] }
    return v
}

/// Loads `n` (1...8) floats at `p + i`; missing lanes are zero.
@inline(__always)
func loadLanes(_ p: UnsafeMutablePointer<Float>, _ i: Int, _ n: Int) -> FloatVector {
    loadLanes(UnsafePointer(p), i, n)
}

/// Stores the first `n` (1...8) lanes of `v` at `p + i`.
@inline(__always)
func storeLanes(_ v: FloatVector, _ p: UnsafeMutablePointer<Float>, _ i: Int, _ n: Int) {
    if n == FloatVector.scalarCount { UnsafeMutableRawPointer(p + i).storeBytes(of: v, as: FloatVector.self); return }
    for k in 0..<n { p[i + k] = v[k] }
}

/// Calls `body(i, n)` for consecutive chunks of `range`, eight elements at a
/// time and a shorter last chunk. The update formula is written once, on
/// vectors; every lane computes exactly what scalar code would (no fused
/// multiply-add), so results do not depend on where a chunk boundary falls.
@inline(__always)
func forEachChunk(_ range: Range<Int>, _ body: (_ i: Int, _ n: Int) -> Void) {
    var i = range.lowerBound
    let end = range.upperBound
    while i + FloatVector.scalarCount <= end {
        body(i, FloatVector.scalarCount)
        i += FloatVector.scalarCount
    }
    if i < end { body(i, end - i) }
}

/// A Float hyper-parameter as the decimal it was written as (0.9, not 0.8999999762).
func decimal(_ v: Float) -> Double { Double("\(v)") ?? Double(v) }

/// The optimizers a config can name; each case builds its optimizer from the
/// config's hyper-parameters. A new optimizer is its file, a case here and its test.
public enum OptimizerKind: String, ConfigChoice {
    case sgd, adam, adamw, rmsprop, lars, lamb

    /// The optimizer with `config`'s hyper-parameters (checked by its initializer).
    public func make(_ config: TrainingConfig) throws -> Optimizer {
        let c = config
        switch self {
        case .sgd: return try SGD(momentum: c.momentum, nesterov: c.nesterov && c.momentum > 0, weightDecay: c.weightDecay)
        case .adam: return try Adam(beta1: c.beta1, beta2: c.beta2, weightDecay: c.weightDecay)
        case .adamw: return try AdamW(beta1: c.beta1, beta2: c.beta2, weightDecay: c.weightDecay)
        case .rmsprop: return try RMSProp(momentum: c.momentum, weightDecay: c.weightDecay)
        case .lars: return try LARS(momentum: c.momentum, weightDecay: c.weightDecay, trustCoefficient: c.trustCoefficient)
        case .lamb: return try LAMB(beta1: c.beta1, beta2: c.beta2, weightDecay: c.weightDecay)
        }
    }
}
