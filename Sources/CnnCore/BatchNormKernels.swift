// Shapes: x, y, dy, dx are (N, C, S) with S = H·W for BatchNorm2d and S = 1
// (or L) for BatchNorm1d; mean, invStd, gamma, beta and all sums are (C).
// x may be a channel prefix of wider images: `xImageStride` elements from one image of x
// to the next (nil: C·S, contiguous); y, dy and dx are always contiguous.
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
//
// BatchNorm followed by ReLU fused (`relu: true` forward, `reluOutput:` backward): forward
// writes max(y, 0) in the same pass, and backward reads dy masked by that output (dy where
// max(y, 0) > 0, else +0) inside the sums and dx, instead of a ReLU pass writing the masked
// dy to memory and BatchNorm reading it back. Per element the arithmetic is the unfused
// pair's (the same select, the same expressions, the same summation order), so the bits
// are the same.

/// Σ p[j] for j < count: SIMD8 Float partials over blocks of 1024, Double across blocks.
@inline(__always)
func blockSum(_ p: UnsafePointer<Float>, _ count: Int) -> Double {
    var total = 0.0
    var j = 0
    let raw = UnsafeRawPointer(p)
    while j < count {
        let end = min(j + 1024, count)
        var acc = SIMD8<Float>()
        while j + 8 <= end {
            acc += raw.loadUnaligned(fromByteOffset: j * 4, as: SIMD8<Float>.self)
            j += 8
        }
        var tail = acc.sum()
        while j < end { tail += p[j]; j += 1 }
        total += Double(tail)
    }
    return total
}

/// Σ (p[j] − m)² for j < count, blocked like `blockSum`.
@inline(__always)
func blockCentredSquares(_ p: UnsafePointer<Float>, _ count: Int, _ m: Float) -> Double {
    var total = 0.0
    var j = 0
    let raw = UnsafeRawPointer(p)
    let mv = SIMD8<Float>(repeating: m)
    while j < count {
        let end = min(j + 1024, count)
        var acc = SIMD8<Float>()
        while j + 8 <= end {
            let d = raw.loadUnaligned(fromByteOffset: j * 4, as: SIMD8<Float>.self) - mv
            acc.addProduct(d, d)
            j += 8
        }
        var tail = acc.sum()
        while j < end { let d = p[j] - m; tail += d * d; j += 1 }
        total += Double(tail)
    }
    return total
}

/// sums[c] = Σ over (n, s) of x[n, c, s], accumulated in Double.
public func batchNormChannelSums(x: UnsafePointer<Float>, n: Int, c: Int, s: Int, sums: UnsafeMutablePointer<Double>,
                                 xImageStride: Int? = nil) {
    let xs = xImageStride ?? c * s
    forEachRange(c, work: n * s, minimum: streamingSplitMinimum) { channels in
        for ch in channels { sums[ch] = 0 }
        for i in 0..<n {
            for ch in channels { sums[ch] += blockSum(x + i * xs + ch * s, s) }
        }
    }
}

/// sums[c] = Σ over (n, s) of (x[n, c, s] − mean[c])², accumulated in Double.
public func batchNormCenteredSquares(x: UnsafePointer<Float>, mean: UnsafePointer<Float>, n: Int, c: Int, s: Int,
                                     sums: UnsafeMutablePointer<Double>, xImageStride: Int? = nil) {
    let xs = xImageStride ?? c * s
    forEachRange(c, work: n * s, minimum: streamingSplitMinimum) { channels in
        for ch in channels { sums[ch] = 0 }
        for i in 0..<n {
            for ch in channels { sums[ch] += blockCentredSquares(x + i * xs + ch * s, s, mean[ch]) }
        }
    }
}

/// y = (x − mean)·invStd·γ + β per channel; γ = 1 and β = 0 when nil (affine = false).
/// With `relu`, y = max(that, 0) (as `reluForward` computes it: NaN gives 0).
public func batchNormNormalize(x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>,
                               mean: UnsafePointer<Float>, invStd: UnsafePointer<Float>,
                               gamma: UnsafePointer<Float>?, beta: UnsafePointer<Float>?,
                               n: Int, c: Int, s: Int, relu: Bool = false, xImageStride: Int? = nil) {
    let xs = xImageStride ?? c * s
    forEachRange(c, work: n * s, minimum: streamingSplitMinimum) { channels in
        for i in 0..<n {
            for ch in channels {
                // (x − mean)·scale + β rather than x·scale + shift: no cancellation when |mean| ≫ std.
                let scale = invStd[ch] * (gamma?[ch] ?? 1)
                let shift = beta?[ch] ?? 0, m = mean[ch]
                let off = (i * c + ch) * s
                let p = x + i * xs + ch * s, q = y + off
                if relu {
                    for j in 0..<s { let v = (p[j] - m) * scale + shift; q[j] = v > 0 ? v : 0 }
                } else {
                    for j in 0..<s { q[j] = (p[j] - m) * scale + shift }
                }
            }
        }
    }
}

/// sumDy[c] = Σ dy and sumDyXhat[c] = Σ dy·x̂ over (n, s), in Double (overwritten).
/// With `reluOutput` (the forward's max(y, 0)), dy is taken as 0 where that output is not
/// positive: the sums of BatchNorm followed by ReLU, from the ReLU's dL/dy.
public func batchNormBackwardSums(x: UnsafePointer<Float>, dy: UnsafePointer<Float>,
                                  mean: UnsafePointer<Float>, invStd: UnsafePointer<Float>,
                                  n: Int, c: Int, s: Int,
                                  sumDy: UnsafeMutablePointer<Double>, sumDyXhat: UnsafeMutablePointer<Double>,
                                  reluOutput: UnsafePointer<Float>? = nil, xImageStride: Int? = nil) {
    let xs = xImageStride ?? c * s
    forEachRange(c, work: n * s, minimum: streamingSplitMinimum) { channels in
        for ch in channels { sumDy[ch] = 0; sumDyXhat[ch] = 0 }
        for i in 0..<n {
            for ch in channels {
                let off = (i * c + ch) * s, p = x + i * xs + ch * s
                let (a, b) = reluOutput.map { channelBackwardSums(p, dy + off, $0 + off, s, mean[ch]) }
                    ?? channelBackwardSums(p, dy + off, s, mean[ch])
                sumDy[ch] += a
                sumDyXhat[ch] += b * Double(invStd[ch])
            }
        }
    }
}

/// (Σ g, Σ g·(p − m)) over one channel plane of `s` elements: SIMD8 Float partials over
/// blocks of 1024, Double across blocks.
@inline(__always)
func channelBackwardSums(_ p: UnsafePointer<Float>, _ g: UnsafePointer<Float>, _ s: Int, _ m: Float) -> (Double, Double) {
    var a = 0.0, b = 0.0
    var j = 0
    let rx = UnsafeRawPointer(p), rg = UnsafeRawPointer(g)
    let mv = SIMD8<Float>(repeating: m)
    while j < s {
        let end = min(j + 1024, s)
        var va = SIMD8<Float>(), vb = SIMD8<Float>()
        while j + 8 <= end {
            let gv = rg.loadUnaligned(fromByteOffset: j * 4, as: SIMD8<Float>.self)
            va += gv
            vb.addProduct(gv, rx.loadUnaligned(fromByteOffset: j * 4, as: SIMD8<Float>.self) - mv)
            j += 8
        }
        var ta = va.sum(), tb = vb.sum()
        while j < end { ta += g[j]; tb += g[j] * (p[j] - m); j += 1 }
        a += Double(ta); b += Double(tb)
    }
    return (a, b)
}

/// `channelBackwardSums` of g masked by the ReLU output r: g where r > 0, else +0 (the
/// value `reluBackward` writes), in the same order.
@inline(__always)
func channelBackwardSums(_ p: UnsafePointer<Float>, _ g: UnsafePointer<Float>, _ r: UnsafePointer<Float>,
                         _ s: Int, _ m: Float) -> (Double, Double) {
    var a = 0.0, b = 0.0
    var j = 0
    let rx = UnsafeRawPointer(p), rg = UnsafeRawPointer(g), rr = UnsafeRawPointer(r)
    let mv = SIMD8<Float>(repeating: m)
    let zero = SIMD8<Float>()
    while j < s {
        let end = min(j + 1024, s)
        var va = SIMD8<Float>(), vb = SIMD8<Float>()
        while j + 8 <= end {
            let positive = rr.loadUnaligned(fromByteOffset: j * 4, as: SIMD8<Float>.self) .> zero
            let gv = zero.replacing(with: rg.loadUnaligned(fromByteOffset: j * 4, as: SIMD8<Float>.self), where: positive)
            va += gv
            vb.addProduct(gv, rx.loadUnaligned(fromByteOffset: j * 4, as: SIMD8<Float>.self) - mv)
            j += 8
        }
        var ta = va.sum(), tb = vb.sum()
        while j < end { let gj: Float = r[j] > 0 ? g[j] : 0; ta += gj; tb += gj * (p[j] - m); j += 1 }
        a += Double(ta); b += Double(tb)
    }
    return (a, b)
}

/// dx = γ·invStd·(dy − meanDy − x̂·meanDyXhat) per channel, where meanDy = Σdy / M and
/// meanDyXhat = Σ(dy·x̂) / M over the global batch. Pass nil for both means in eval mode
/// (dx = γ·invStd·dy). γ = 1 when nil. With `reluOutput`, dy is masked as in `batchNormBackwardSums`.
public func batchNormBackwardInput(x: UnsafePointer<Float>, dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>,
                                   mean: UnsafePointer<Float>, invStd: UnsafePointer<Float>,
                                   gamma: UnsafePointer<Float>?,
                                   meanDy: UnsafePointer<Float>?, meanDyXhat: UnsafePointer<Float>?,
                                   n: Int, c: Int, s: Int, reluOutput: UnsafePointer<Float>? = nil,
                                   xImageStride: Int? = nil) {
    let xs = xImageStride ?? c * s
    forEachRange(c, work: n * s, minimum: streamingSplitMinimum) { channels in
        for i in 0..<n {
            for ch in channels {
                let off = (i * c + ch) * s
                let p = x + i * xs + ch * s, g = dy + off, q = dx + off
                let k = invStd[ch] * (gamma?[ch] ?? 1)
                if let r = reluOutput.map({ $0 + off }) {
                    maskedBackwardInput(p, g, r, q, s, k: k, mean: mean[ch], invStd: invStd[ch],
                                        meanDy: meanDy?[ch], meanDyXhat: meanDyXhat?[ch])
                } else if let meanDy, let meanDyXhat {
                    let m = mean[ch], inv = invStd[ch], md = meanDy[ch], mdx = meanDyXhat[ch]
                    for j in 0..<s { q[j] = k * (g[j] - md - (p[j] - m) * inv * mdx) }
                } else {
                    for j in 0..<s { q[j] = k * g[j] }
                }
            }
        }
    }
}

/// One channel plane of `batchNormBackwardInput` with g masked by the ReLU output r (g where
/// r > 0, else +0), in SIMD8 with unconditional loads (a conditional load of g keeps the
/// compiler from vectorising the plain loop); each lane computes the scalar expression.
@inline(__always)
func maskedBackwardInput(_ p: UnsafePointer<Float>, _ g: UnsafePointer<Float>, _ r: UnsafePointer<Float>,
                         _ q: UnsafeMutablePointer<Float>, _ s: Int, k: Float, mean m: Float, invStd inv: Float,
                         meanDy: Float?, meanDyXhat: Float?) {
    let rx = UnsafeRawPointer(p), rg = UnsafeRawPointer(g), rr = UnsafeRawPointer(r), rq = UnsafeMutableRawPointer(q)
    let zero = SIMD8<Float>(), kv = SIMD8<Float>(repeating: k)
    var j = 0
    if let md = meanDy, let mdx = meanDyXhat {
        let mv = SIMD8<Float>(repeating: m), invv = SIMD8<Float>(repeating: inv)
        let mdv = SIMD8<Float>(repeating: md), mdxv = SIMD8<Float>(repeating: mdx)
        while j + 8 <= s {
            let positive = rr.loadUnaligned(fromByteOffset: j * 4, as: SIMD8<Float>.self) .> zero
            let gv = zero.replacing(with: rg.loadUnaligned(fromByteOffset: j * 4, as: SIMD8<Float>.self), where: positive)
            let xv = rx.loadUnaligned(fromByteOffset: j * 4, as: SIMD8<Float>.self)
            rq.storeBytes(of: kv * (gv - mdv - (xv - mv) * invv * mdxv), toByteOffset: j * 4, as: SIMD8<Float>.self)
            j += 8
        }
        while j < s { let gj: Float = r[j] > 0 ? g[j] : 0; q[j] = k * (gj - md - (p[j] - m) * inv * mdx); j += 1 }
    } else {
        while j + 8 <= s {
            let positive = rr.loadUnaligned(fromByteOffset: j * 4, as: SIMD8<Float>.self) .> zero
            let gv = zero.replacing(with: rg.loadUnaligned(fromByteOffset: j * 4, as: SIMD8<Float>.self), where: positive)
            rq.storeBytes(of: kv * gv, toByteOffset: j * 4, as: SIMD8<Float>.self)
            j += 8
        }
        while j < s { let gj: Float = r[j] > 0 ? g[j] : 0; q[j] = k * gj; j += 1 }
    }
}
