import CnnCore

/// The outcome of a finite-difference gradient check.
public struct GradientCheckResult: CustomStringConvertible {
    /// Largest |analytic - numeric| / max(1, |analytic|, |numeric|) seen.
    public var worstError: Double
    /// Where it was: "input[i]" or a parameter name with index.
    public var worstLocation: String
    /// How many derivatives were compared.
    public var checked: Int
    public var description: String { "worst relative error \(worstError) at \(worstLocation) over \(checked) checks" }
}

/// Central-difference gradient check of one layer (Caffe's
/// test_gradient_check_util, in Double where it matters).
///
/// The scalar loss is L = Σ yᵢ·rᵢ for a fixed random r, so dL/dy = r.
/// Compares backward's dL/dx and parameter gradients with
/// (L(θ+h) − L(θ−h)) / 2h at up to `maxChecks` positions of each tensor.
/// The layer must already be bound (e.g. through a `ParameterStore`).
public func checkGradients(
    layer: Layer, store: ParameterStore?, input: Tensor, context: ExecutionContext,
    step h: Float = 1e-2, maxChecks: Int = 60, seed: UInt64 = 7
) -> GradientCheckResult {
    var rng = SplitMix64(seed: seed)
    let y0 = layer.forward(input, context: context)
    let r = Tensor(shape: y0.shape)
    for i in 0..<r.count { r[i] = rng.nextUnitFloat() * 2 - 1 }

    func loss() -> Double {
        let y = layer.forward(input, context: context)
        var s = 0.0
        for i in 0..<y.count { s += Double(y[i]) * Double(r[i]) }
        return s
    }

    // Analytic gradients.
    store?.zeroGradients()
    _ = layer.forward(input, context: context)
    let dx = layer.backward(r, context: context).clone()
    let paramGrads = store.map { $0.gradients.clone() }

    var worst = 0.0, worstAt = "none", checked = 0
    func compare(_ analytic: Float, _ numeric: Double, _ location: String) {
        let a = Double(analytic)
        let err = abs(a - numeric) / max(1.0, abs(a), abs(numeric))
        checked += 1
        if err > worst || worstAt == "none" { worst = max(worst, err); if err >= worst { worstAt = location } }
    }
    func indices(_ count: Int) -> [Int] {
        if count <= maxChecks { return Array(0..<count) }
        var g = SplitMix64(seed: UInt64(count) &* 31 &+ seed)
        return (0..<maxChecks).map { _ in Int(g.next() % UInt64(count)) }
    }

    for i in indices(input.count) {
        let saved = input[i]
        input[i] = saved + h; let lp = loss()
        input[i] = saved - h; let lm = loss()
        input[i] = saved
        compare(dx[i], (lp - lm) / Double(2 * h), "input[\(i)]")
    }
    if let store, let paramGrads {
        for entry in store.parameterEntries {
            for j in indices(entry.count) {
                let idx = entry.offset + j
                let saved = store.parameters[idx]
                store.parameters[idx] = saved + h; let lp = loss()
                store.parameters[idx] = saved - h; let lm = loss()
                store.parameters[idx] = saved
                compare(paramGrads[idx], (lp - lm) / Double(2 * h), "\(entry.name)[\(j)]")
            }
        }
    }
    return GradientCheckResult(worstError: worst, worstLocation: worstAt, checked: checked)
}
