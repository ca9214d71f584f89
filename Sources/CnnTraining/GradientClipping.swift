import CnnCore

/// Gradient clipping by global L2 norm, as `torch.nn.utils.clip_grad_norm_`
/// with `norm_type = 2` over all parameters at once:
///
///     total_norm = sqrt(Σ g²)                   (accumulated in Double)
///     scale      = max_norm / (total_norm + 1e-6)
///     g          = g · scale                    (only if scale < 1)
///
/// Run it after the allreduce, when every rank holds the same gradients, so
/// every rank computes the same norm and scale.
///
/// Unlike PyTorch (which multiplies every gradient by NaN when the norm is
/// not finite), a non-finite norm leaves the gradients untouched; the caller
/// checks the returned norm and locates the culprit with `firstNonFinite`.
///
/// Reference: Pascanu, Mikolov, Bengio, "On the difficulty of training
/// recurrent neural networks", ICML 2013.
public struct GradientClipping: Equatable, Sendable {
    /// The largest global L2 norm gradients may have after clipping (> 0).
    public let maxNorm: Float

    /// Throws `CnnError.invalidConfig` unless `maxNorm` is finite and > 0.
    public init(maxNorm: Float) throws {
        guard maxNorm.isFinite, maxNorm > 0 else {
            throw CnnError.invalidConfig(field: "clip_grad_norm", value: "\(maxNorm)", allowed: "clip_grad_norm > 0")
        }
        self.maxNorm = maxNorm
    }

    /// Scales `gradients[0..<count]` down to at most `maxNorm` and returns the
    /// global norm before clipping.
    @discardableResult
    public func apply(_ gradients: UnsafeMutablePointer<Float>, count: Int) -> Double {
        clipGradientNorm(gradients, count: count, maxNorm: maxNorm)
    }

    /// Clips a gradient tensor (e.g. `ParameterStore.gradients`); returns the norm before clipping.
    @discardableResult
    public func apply(_ gradients: Tensor) -> Double {
        apply(gradients.data, count: gradients.count)
    }
}

/// The L2 norm of `values[0..<count]`, squares summed in Double.
public func globalL2Norm(_ values: UnsafePointer<Float>, count: Int) -> Double {
    // Four independent accumulators so the adds pipeline.
    var s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0
    var i = 0
    while i + 4 <= count {
        let a = Double(values[i]), b = Double(values[i + 1]), c = Double(values[i + 2]), d = Double(values[i + 3])
        s0 += a * a; s1 += b * b; s2 += c * c; s3 += d * d
        i += 4
    }
    while i < count {
        let a = Double(values[i])
        s0 += a * a
        i += 1
    }
    return ((s0 + s1) + (s2 + s3)).squareRoot()
}

/// `torch.nn.utils.clip_grad_norm_(max_norm, norm_type=2)` over one flat
/// buffer; returns the total norm before clipping. See `GradientClipping`.
@discardableResult
public func clipGradientNorm(_ gradients: UnsafeMutablePointer<Float>, count: Int, maxNorm: Float) -> Double {
    let totalNorm = globalL2Norm(gradients, count: count)
    guard totalNorm.isFinite else { return totalNorm }
    let scale = Double(maxNorm) / (totalNorm + 1e-6)
    if scale < 1 {
        let s = Float(scale)
        for i in 0..<count { gradients[i] *= s }
    }
    return totalNorm
}

/// The offset of the first NaN or infinity in `values[0..<count]`, or nil
/// if all are finite. (`globalL2Norm` is non-finite exactly when some value
/// is, since squares of finite Floats cannot overflow a Double sum; so a
/// trainer that clips can call this only when the norm is not finite.) Map the offset to a tensor name with the store's
/// `parameterEntries` (offset ..< offset + count).
public func firstNonFinite(_ values: UnsafePointer<Float>, count: Int) -> Int? {
    // Fast pass per block: x·0 is ±0 for finite x and NaN for NaN or ±∞,
    // so a block's sum of x·0 is NaN exactly when the block holds one.
    let block = 1024
    var start = 0
    while start < count {
        let end = Swift.min(start + block, count)
        var probe = FloatVector()
        var i = start
        while i + FloatVector.scalarCount <= end {
            probe += UnsafeRawPointer(values + i).loadUnaligned(as: FloatVector.self) * 0
            i += FloatVector.scalarCount
        }
        var tail: Float = 0
        while i < end { tail += values[i] * 0; i += 1 }
        if (probe.sum() + tail).isNaN {
            for i in start..<end where !values[i].isFinite { return i }
        }
        start = end
    }
    return nil
}

/// `firstNonFinite` over a tensor (e.g. `ParameterStore.gradients`).
public func firstNonFinite(_ tensor: Tensor) -> Int? {
    firstNonFinite(tensor.data, count: tensor.count)
}
