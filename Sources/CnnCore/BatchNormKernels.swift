// Shapes: x, y, dy, dx are (N, C, S) with S = H·W for BatchNorm2d and S = 1
// (or L) for BatchNorm1d; mean, invStd, gamma, beta and all sums are (C).
//
// Plain kernels so that a fused BN+ReLU can reuse them. Statistics are split
// into local sums (accumulated in Double) so a caller can reduce them across
// ranks between the passes (synchronized BatchNorm):
//   pass 1: Σx per channel            → global mean   = Σx / M
//   pass 2: Σ(x − mean)² per channel  → global var    = Σ(x − mean)² / M   (biased)
// where M = N·S summed over ranks. Two passes keep the variance stable when
// |mean| ≫ std.
//
// Backward, with x̂ = (x − mean)·invStd, y = γ·x̂ + β, and sums over the global batch:
//   dβ = Σ dy,  dγ = Σ dy·x̂
//   dx = γ·invStd · (dy − Σdy / M − x̂ · Σ(dy·x̂) / M)
// In eval mode the statistics are constants, so dx = γ·invStd·dy.

/// sums[c] = Σ over (n, s) of x[n, c, s], accumulated in Double.
public func batchNormChannelSums(x: UnsafePointer<Float>, n: Int, c: Int, s: Int, sums: UnsafeMutablePointer<Double>) {
    for ch in 0..<c { sums[ch] = 0 }
    for i in 0..<n {
        for ch in 0..<c {
            let p = x + (i * c + ch) * s
            var acc: Float = 0, total = 0.0
            var j = 0
            // Float partial sums over short runs, Double across them.
            while j < s {
                let end = min(j + 256, s)
                acc = 0
                while j < end { acc += p[j]; j += 1 }
                total += Double(acc)
            }
            sums[ch] += total
        }
    }
}

/// sums[c] = Σ over (n, s) of (x[n, c, s] − mean[c])², accumulated in Double.
public func batchNormCenteredSquares(x: UnsafePointer<Float>, mean: UnsafePointer<Float>, n: Int, c: Int, s: Int,
                                     sums: UnsafeMutablePointer<Double>) {
    for ch in 0..<c { sums[ch] = 0 }
    for i in 0..<n {
        for ch in 0..<c {
            let p = x + (i * c + ch) * s
            let m = mean[ch]
            var acc: Float = 0, total = 0.0
            var j = 0
            while j < s {
                let end = min(j + 256, s)
                acc = 0
                while j < end { let d = p[j] - m; acc += d * d; j += 1 }
                total += Double(acc)
            }
            sums[ch] += total
        }
    }
}

/// y = (x − mean)·invStd·γ + β per channel; γ = 1 and β = 0 when nil (affine = false).
public func batchNormNormalize(x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>,
                               mean: UnsafePointer<Float>, invStd: UnsafePointer<Float>,
                               gamma: UnsafePointer<Float>?, beta: UnsafePointer<Float>?,
                               n: Int, c: Int, s: Int) {
    for i in 0..<n {
        for ch in 0..<c {
            // (x − mean)·scale + β rather than x·scale + shift: no cancellation when |mean| ≫ std.
            let scale = invStd[ch] * (gamma?[ch] ?? 1)
            let shift = beta?[ch] ?? 0, m = mean[ch]
            let off = (i * c + ch) * s
            let p = x + off, q = y + off
            for j in 0..<s { q[j] = (p[j] - m) * scale + shift }
        }
    }
}

/// sumDy[c] = Σ dy and sumDyXhat[c] = Σ dy·x̂ over (n, s), in Double (overwritten).
public func batchNormBackwardSums(x: UnsafePointer<Float>, dy: UnsafePointer<Float>,
                                  mean: UnsafePointer<Float>, invStd: UnsafePointer<Float>,
                                  n: Int, c: Int, s: Int,
                                  sumDy: UnsafeMutablePointer<Double>, sumDyXhat: UnsafeMutablePointer<Double>) {
    for ch in 0..<c { sumDy[ch] = 0; sumDyXhat[ch] = 0 }
    for i in 0..<n {
        for ch in 0..<c {
            let off = (i * c + ch) * s
            let p = x + off, g = dy + off
            let m = mean[ch]
            var a: Float = 0, b: Float = 0
            for j in 0..<s { a += g[j]; b += g[j] * (p[j] - m) }
            sumDy[ch] += Double(a)
            sumDyXhat[ch] += Double(b) * Double(invStd[ch])
        }
    }
}

/// dx = γ·invStd·(dy − meanDy − x̂·meanDyXhat) per channel, where meanDy = Σdy / M and
/// meanDyXhat = Σ(dy·x̂) / M over the global batch. Pass nil for both means in eval mode
/// (dx = γ·invStd·dy). γ = 1 when nil.
public func batchNormBackwardInput(x: UnsafePointer<Float>, dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>,
                                   mean: UnsafePointer<Float>, invStd: UnsafePointer<Float>,
                                   gamma: UnsafePointer<Float>?,
                                   meanDy: UnsafePointer<Float>?, meanDyXhat: UnsafePointer<Float>?,
                                   n: Int, c: Int, s: Int) {
    for i in 0..<n {
        for ch in 0..<c {
            let off = (i * c + ch) * s
            let p = x + off, g = dy + off, q = dx + off
            let k = invStd[ch] * (gamma?[ch] ?? 1)
            if let meanDy, let meanDyXhat {
                let m = mean[ch], inv = invStd[ch], md = meanDy[ch], mdx = meanDyXhat[ch]
                for j in 0..<s { q[j] = k * (g[j] - md - (p[j] - m) * inv * mdx) }
            } else {
                for j in 0..<s { q[j] = k * g[j] }
            }
        }
    }
}
