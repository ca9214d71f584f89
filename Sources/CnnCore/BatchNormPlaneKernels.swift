import CBF16

// Shapes as in BatchNormKernels.swift: x, y, dy, dx are (N, C, S); mean, invStd, gamma, beta
// and all sums are (C).
//
// The per-plane loops of every BatchNorm, generic in how a plane of the input is read: as it
// is (`PlainPlane`: the public kernels of BatchNormKernels.swift), or through a transformation,
// with the same passes and summation order, so that the bits are those of the plain kernels
// run on the transformed input:
// - rectified: the input is a ReLU's input x, and BatchNorm sees max(x, 0) as `reluForward`
//   computes it (x > 0 ? x : +0; NaN gives +0). Backward multiplies dL/dx by (x > 0), which is
//   what `reluBackward` does with the ReLU's output. ReLU followed by BatchNorm then needs no
//   ReLU pass and no ReLU tensor, forward or backward.
// - bf16: BatchNorm keeps its input for backward as bf16 (`batchNormRoundBF16ChannelMoments`
//   writes the copy in its first pass, rectified first when the ReLU before it is fused, and
//   sums the rounded values and their squares in the same pass), and every later pass reads
//   the copy: the layer is BatchNorm of the rounded input (statistics from those sums, see
//   there), and its backward the gradient of that passed straight through the rounding. The rounding is
//   to nearest even, except that a nonzero never becomes zero (a magnitude below half the
//   smallest bf16 subnormal keeps that subnormal), so (x > 0) can be read back from the copy.
//
// Every loop is SIMD8 with unconditional loads (a conditional load keeps a loop scalar), and
// each lane computes the scalar expression of the plain kernels.

/// How a BatchNorm reads one element of its input from saved storage.
protocol BatchNormInputPlane {
    associatedtype Element
    static func load8(_ p: UnsafePointer<Element>, _ j: Int) -> SIMD8<Float>
    static func load(_ p: UnsafePointer<Element>, _ j: Int) -> Float
}

/// fp32 values as they are.
enum PlainPlane: BatchNormInputPlane {
    @inline(__always)
    static func load8(_ p: UnsafePointer<Float>, _ j: Int) -> SIMD8<Float> {
        UnsafeRawPointer(p).loadUnaligned(fromByteOffset: j * 4, as: SIMD8<Float>.self)
    }
    @inline(__always)
    static func load(_ p: UnsafePointer<Float>, _ j: Int) -> Float { p[j] }
}

/// fp32 values read as max(x, 0).
enum RectifiedPlane: BatchNormInputPlane {
    @inline(__always)
    static func load8(_ p: UnsafePointer<Float>, _ j: Int) -> SIMD8<Float> {
        let v = UnsafeRawPointer(p).loadUnaligned(fromByteOffset: j * 4, as: SIMD8<Float>.self)
        return SIMD8<Float>().replacing(with: v, where: v .> SIMD8<Float>())
    }
    @inline(__always)
    static func load(_ p: UnsafePointer<Float>, _ j: Int) -> Float { p[j] > 0 ? p[j] : 0 }
}

/// bf16 bit patterns read as the Floats they are (exact).
enum BF16Plane: BatchNormInputPlane {
    @inline(__always)
    static func load8(_ p: UnsafePointer<UInt16>, _ j: Int) -> SIMD8<Float> {
        let h = UnsafeRawPointer(p).loadUnaligned(fromByteOffset: j * 2, as: SIMD8<UInt16>.self)
        return unsafeBitCast(SIMD8<UInt32>(truncatingIfNeeded: h) &<< 16, to: SIMD8<Float>.self)
    }
    @inline(__always)
    static func load(_ p: UnsafePointer<UInt16>, _ j: Int) -> Float { Float(bitPattern: UInt32(p[j]) << 16) }
}

/// The bf16 bits BatchNorm keeps of x: round to nearest even (subnormals included, not
/// flushed), NaN a quiet NaN, and a nonzero x that would round to a zero keeps the smallest
/// subnormal of its sign, so that x > 0 exactly when the kept value is > 0.
@inline(__always)
public func bf16KeepingNonzero(_ x: Float) -> UInt16 {
    // Branch-free (selects), so that a plain loop over it vectorises; SIMD8<UInt32> code with
    // the same operations and a narrowing to SIMD8<UInt16> ran element by element.
    let u = x.bitPattern
    let magnitude = u & 0x7FFF_FFFF
    var r = (u &+ 0x7FFF &+ ((u >> 16) & 1)) >> 16
    r = magnitude > 0x7F80_0000 ? (u | 0x0040_0000) >> 16 : r
    r = r & 0x7FFF == 0 && magnitude != 0 ? r | 1 : r
    return UInt16(truncatingIfNeeded: r)
}

// MARK: generic per-plane loops (SIMD8 Float partials over blocks of 1024, Double across blocks)

@inline(__always)
func planeSum<P: BatchNormInputPlane>(_: P.Type, _ p: UnsafePointer<P.Element>, _ count: Int) -> Double {
    var total = 0.0
    var j = 0
    while j < count {
        let end = min(j + 1024, count)
        var acc = SIMD8<Float>()
        while j + 8 <= end { acc += P.load8(p, j); j += 8 }
        var tail = acc.sum()
        while j < end { tail += P.load(p, j); j += 1 }
        total += Double(tail)
    }
    return total
}

@inline(__always)
func planeCentredSquares<P: BatchNormInputPlane>(_: P.Type, _ p: UnsafePointer<P.Element>, _ count: Int, _ m: Float) -> Double {
    var total = 0.0
    var j = 0
    let mv = SIMD8<Float>(repeating: m)
    while j < count {
        let end = min(j + 1024, count)
        var acc = SIMD8<Float>()
        while j + 8 <= end {
            let d = P.load8(p, j) - mv
            acc.addProduct(d, d)
            j += 8
        }
        var tail = acc.sum()
        while j < end { let d = P.load(p, j) - m; tail += d * d; j += 1 }
        total += Double(tail)
    }
    return total
}

/// q = (p − m)·scale + shift, rectified with `relu` (as `batchNormNormalize`).
@inline(__always)
func planeNormalize<P: BatchNormInputPlane>(_: P.Type, _ p: UnsafePointer<P.Element>, _ q: UnsafeMutablePointer<Float>,
                                            _ s: Int, m: Float, scale: Float, shift: Float, relu: Bool) {
    let rq = UnsafeMutableRawPointer(q)
    let zero = SIMD8<Float>(), mv = SIMD8<Float>(repeating: m)
    let sv = SIMD8<Float>(repeating: scale), bv = SIMD8<Float>(repeating: shift)
    var j = 0
    if relu {
        while j + 8 <= s {
            let v = (P.load8(p, j) - mv) * sv + bv
            rq.storeBytes(of: zero.replacing(with: v, where: v .> zero), toByteOffset: j * 4, as: SIMD8<Float>.self)
            j += 8
        }
        while j < s { let v = (P.load(p, j) - m) * scale + shift; q[j] = v > 0 ? v : 0; j += 1 }
    } else {
        while j + 8 <= s {
            rq.storeBytes(of: (P.load8(p, j) - mv) * sv + bv, toByteOffset: j * 4, as: SIMD8<Float>.self)
            j += 8
        }
        while j < s { q[j] = (P.load(p, j) - m) * scale + shift; j += 1 }
    }
}

/// (Σ g, Σ g·(p − m)) over one plane, g masked by the ReLU output r when given (as
/// `batchNormBackwardSums`).
@inline(__always)
func planeBackwardSums<P: BatchNormInputPlane>(_: P.Type, _ p: UnsafePointer<P.Element>, _ g: UnsafePointer<Float>,
                                               _ r: UnsafePointer<Float>?, _ s: Int, _ m: Float) -> (Double, Double) {
    var a = 0.0, b = 0.0
    var j = 0
    let rg = UnsafeRawPointer(g)
    let mv = SIMD8<Float>(repeating: m)
    let zero = SIMD8<Float>()
    while j < s {
        let end = min(j + 1024, s)
        var va = SIMD8<Float>(), vb = SIMD8<Float>()
        if let r {
            let rr = UnsafeRawPointer(r)
            while j + 8 <= end {
                let positive = rr.loadUnaligned(fromByteOffset: j * 4, as: SIMD8<Float>.self) .> zero
                let gv = zero.replacing(with: rg.loadUnaligned(fromByteOffset: j * 4, as: SIMD8<Float>.self), where: positive)
                va += gv
                vb.addProduct(gv, P.load8(p, j) - mv)
                j += 8
            }
            var ta = va.sum(), tb = vb.sum()
            while j < end { let gj: Float = r[j] > 0 ? g[j] : 0; ta += gj; tb += gj * (P.load(p, j) - m); j += 1 }
            a += Double(ta); b += Double(tb)
        } else {
            while j + 8 <= end {
                let gv = rg.loadUnaligned(fromByteOffset: j * 4, as: SIMD8<Float>.self)
                va += gv
                vb.addProduct(gv, P.load8(p, j) - mv)
                j += 8
            }
            var ta = va.sum(), tb = vb.sum()
            while j < end { ta += g[j]; tb += g[j] * (P.load(p, j) - m); j += 1 }
            a += Double(ta); b += Double(tb)
        }
    }
    return (a, b)
}

/// A choice fixed at compile time (each combination of `planeBackwardInput` is its own loop).
protocol StaticFlag { static var on: Bool { get } }
enum FlagOn: StaticFlag { static var on: Bool { true } }
enum FlagOff: StaticFlag { static var on: Bool { false } }

/// One plane of dx = k·(g − meanDy − (p − m)·inv·meanDyXhat) (k·g without the means: eval),
/// g masked by the ReLU output r with `Masked` (the ReLU after), and dx masked by (p > 0) with
/// `MaskInput` (the ReLU before).
@inline(__always)
func planeBackwardInput<P: BatchNormInputPlane, Masked: StaticFlag, Centred: StaticFlag, MaskInput: StaticFlag>(
    _: P.Type, _: Masked.Type, _: Centred.Type, _: MaskInput.Type,
    _ p: UnsafePointer<P.Element>, _ g: UnsafePointer<Float>, _ r: UnsafePointer<Float>?, _ q: UnsafeMutablePointer<Float>,
    _ s: Int, k: Float, mean m: Float, invStd inv: Float, meanDy md: Float, meanDyXhat mdx: Float
) {
    let rg = UnsafeRawPointer(g), rq = UnsafeMutableRawPointer(q)
    let zero = SIMD8<Float>(), kv = SIMD8<Float>(repeating: k)
    let mv = SIMD8<Float>(repeating: m), invv = SIMD8<Float>(repeating: inv)
    let mdv = SIMD8<Float>(repeating: md), mdxv = SIMD8<Float>(repeating: mdx)
    var j = 0
    while j + 8 <= s {
        var gv = rg.loadUnaligned(fromByteOffset: j * 4, as: SIMD8<Float>.self)
        if Masked.on {
            gv = zero.replacing(with: gv, where: UnsafeRawPointer(r!).loadUnaligned(fromByteOffset: j * 4, as: SIMD8<Float>.self) .> zero)
        }
        let xv = P.load8(p, j)
        var d = Centred.on ? kv * (gv - mdv - (xv - mv) * invv * mdxv) : kv * gv
        if MaskInput.on { d = zero.replacing(with: d, where: xv .> zero) }
        rq.storeBytes(of: d, toByteOffset: j * 4, as: SIMD8<Float>.self)
        j += 8
    }
    while j < s {
        var gj = g[j]
        if Masked.on { gj = r![j] > 0 ? gj : 0 }
        let xj = P.load(p, j)
        var d = Centred.on ? k * (gj - md - (xj - m) * inv * mdx) : k * gj
        if MaskInput.on { d = xj > 0 ? d : 0 }
        q[j] = d
        j += 1
    }
}

/// `planeBackwardInput` with the flags chosen at run time.
@inline(__always)
func planeBackwardInput<P: BatchNormInputPlane>(_ kind: P.Type, _ p: UnsafePointer<P.Element>, _ g: UnsafePointer<Float>,
                                                _ r: UnsafePointer<Float>?, _ q: UnsafeMutablePointer<Float>, _ s: Int,
                                                k: Float, mean m: Float, invStd inv: Float, meanDy: Float?, meanDyXhat: Float?,
                                                maskInput: Bool) {
    func run<M: StaticFlag, C: StaticFlag, I: StaticFlag>(_ masked: M.Type, _ centred: C.Type, _ input: I.Type) {
        planeBackwardInput(kind, masked, centred, input, p, g, r, q, s, k: k, mean: m, invStd: inv,
                           meanDy: meanDy ?? 0, meanDyXhat: meanDyXhat ?? 0)
    }
    let centred = meanDy != nil && meanDyXhat != nil
    switch (r != nil, centred, maskInput) {
    case (true, true, true): run(FlagOn.self, FlagOn.self, FlagOn.self)
    case (true, true, false): run(FlagOn.self, FlagOn.self, FlagOff.self)
    case (true, false, true): run(FlagOn.self, FlagOff.self, FlagOn.self)
    case (true, false, false): run(FlagOn.self, FlagOff.self, FlagOff.self)
    case (false, true, true): run(FlagOff.self, FlagOn.self, FlagOn.self)
    case (false, true, false): run(FlagOff.self, FlagOn.self, FlagOff.self)
    case (false, false, true): run(FlagOff.self, FlagOff.self, FlagOn.self)
    case (false, false, false): run(FlagOff.self, FlagOff.self, FlagOff.self)
    }
}

// MARK: the passes over (N, C, S), generic in the input plane

@inline(__always)
func planesChannelSums<P: BatchNormInputPlane>(_ kind: P.Type, x: UnsafePointer<P.Element>, n: Int, c: Int, s: Int,
                                               sums: UnsafeMutablePointer<Double>, xImageStride: Int? = nil) {
    let xs = xImageStride ?? c * s
    forEachRange(c, work: n * s, minimum: streamingSplitMinimum) { channels in
        for ch in channels { sums[ch] = 0 }
        for i in 0..<n {
            for ch in channels { sums[ch] += planeSum(kind, x + i * xs + ch * s, s) }
        }
    }
}

@inline(__always)
func planesCenteredSquares<P: BatchNormInputPlane>(_ kind: P.Type, x: UnsafePointer<P.Element>, mean: UnsafePointer<Float>,
                                                   n: Int, c: Int, s: Int, sums: UnsafeMutablePointer<Double>,
                                                   xImageStride: Int? = nil) {
    let xs = xImageStride ?? c * s
    forEachRange(c, work: n * s, minimum: streamingSplitMinimum) { channels in
        for ch in channels { sums[ch] = 0 }
        for i in 0..<n {
            for ch in channels { sums[ch] += planeCentredSquares(kind, x + i * xs + ch * s, s, mean[ch]) }
        }
    }
}

@inline(__always)
func planesNormalize<P: BatchNormInputPlane>(_ kind: P.Type, x: UnsafePointer<P.Element>, y: UnsafeMutablePointer<Float>,
                                             mean: UnsafePointer<Float>, invStd: UnsafePointer<Float>,
                                             gamma: UnsafePointer<Float>?, beta: UnsafePointer<Float>?,
                                             n: Int, c: Int, s: Int, relu: Bool, xImageStride: Int? = nil) {
    let xs = xImageStride ?? c * s
    forEachRange(c, work: n * s, minimum: streamingSplitMinimum) { channels in
        for i in 0..<n {
            for ch in channels {
                // (x − mean)·scale + β rather than x·scale + shift: no cancellation when |mean| ≫ std.
                let off = (i * c + ch) * s
                planeNormalize(kind, x + i * xs + ch * s, y + off, s, m: mean[ch], scale: invStd[ch] * (gamma?[ch] ?? 1),
                               shift: beta?[ch] ?? 0, relu: relu)
            }
        }
    }
}

@inline(__always)
func planesBackwardSums<P: BatchNormInputPlane>(_ kind: P.Type, x: UnsafePointer<P.Element>, dy: UnsafePointer<Float>,
                                                mean: UnsafePointer<Float>, invStd: UnsafePointer<Float>, n: Int, c: Int, s: Int,
                                                sumDy: UnsafeMutablePointer<Double>, sumDyXhat: UnsafeMutablePointer<Double>,
                                                reluOutput: UnsafePointer<Float>?, xImageStride: Int? = nil) {
    let xs = xImageStride ?? c * s
    forEachRange(c, work: n * s, minimum: streamingSplitMinimum) { channels in
        for ch in channels { sumDy[ch] = 0; sumDyXhat[ch] = 0 }
        for i in 0..<n {
            for ch in channels {
                let off = (i * c + ch) * s
                let (a, b) = planeBackwardSums(kind, x + i * xs + ch * s, dy + off, reluOutput.map { $0 + off }, s, mean[ch])
                sumDy[ch] += a
                sumDyXhat[ch] += b * Double(invStd[ch])
            }
        }
    }
}

@inline(__always)
func planesBackwardInput<P: BatchNormInputPlane>(_ kind: P.Type, x: UnsafePointer<P.Element>, dy: UnsafePointer<Float>,
                                                 dx: UnsafeMutablePointer<Float>, mean: UnsafePointer<Float>,
                                                 invStd: UnsafePointer<Float>, gamma: UnsafePointer<Float>?,
                                                 meanDy: UnsafePointer<Float>?, meanDyXhat: UnsafePointer<Float>?,
                                                 n: Int, c: Int, s: Int, reluOutput: UnsafePointer<Float>?, maskInput: Bool,
                                                 xImageStride: Int? = nil) {
    let xs = xImageStride ?? c * s
    forEachRange(c, work: n * s, minimum: streamingSplitMinimum) { channels in
        for i in 0..<n {
            for ch in channels {
                let off = (i * c + ch) * s
                planeBackwardInput(kind, x + i * xs + ch * s, dy + off, reluOutput.map { $0 + off }, dx + off, s,
                                   k: invStd[ch] * (gamma?[ch] ?? 1), mean: mean[ch], invStd: invStd[ch],
                                   meanDy: meanDy?[ch], meanDyXhat: meanDyXhat?[ch], maskInput: maskInput)
            }
        }
    }
}

// MARK: ReLU before BatchNorm (rectified fp32 input)

/// `batchNormChannelSums` of max(x, 0).
public func batchNormRectifiedChannelSums(x: UnsafePointer<Float>, n: Int, c: Int, s: Int, sums: UnsafeMutablePointer<Double>) {
    planesChannelSums(RectifiedPlane.self, x: x, n: n, c: c, s: s, sums: sums)
}

/// `batchNormCenteredSquares` of max(x, 0).
public func batchNormRectifiedCenteredSquares(x: UnsafePointer<Float>, mean: UnsafePointer<Float>, n: Int, c: Int, s: Int,
                                              sums: UnsafeMutablePointer<Double>) {
    planesCenteredSquares(RectifiedPlane.self, x: x, mean: mean, n: n, c: c, s: s, sums: sums)
}

/// `batchNormNormalize` of max(x, 0).
public func batchNormRectifiedNormalize(x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>,
                                        mean: UnsafePointer<Float>, invStd: UnsafePointer<Float>,
                                        gamma: UnsafePointer<Float>?, beta: UnsafePointer<Float>?,
                                        n: Int, c: Int, s: Int, relu: Bool = false) {
    planesNormalize(RectifiedPlane.self, x: x, y: y, mean: mean, invStd: invStd, gamma: gamma, beta: beta,
                    n: n, c: c, s: s, relu: relu)
}

/// `batchNormBackwardSums` of max(x, 0).
public func batchNormRectifiedBackwardSums(x: UnsafePointer<Float>, dy: UnsafePointer<Float>,
                                           mean: UnsafePointer<Float>, invStd: UnsafePointer<Float>,
                                           n: Int, c: Int, s: Int,
                                           sumDy: UnsafeMutablePointer<Double>, sumDyXhat: UnsafeMutablePointer<Double>,
                                           reluOutput: UnsafePointer<Float>? = nil) {
    planesBackwardSums(RectifiedPlane.self, x: x, dy: dy, mean: mean, invStd: invStd, n: n, c: c, s: s,
                       sumDy: sumDy, sumDyXhat: sumDyXhat, reluOutput: reluOutput)
}

/// `batchNormBackwardInput` of max(x, 0), times (x > 0): dL/dx of the ReLU's input.
public func batchNormRectifiedBackwardInput(x: UnsafePointer<Float>, dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>,
                                            mean: UnsafePointer<Float>, invStd: UnsafePointer<Float>,
                                            gamma: UnsafePointer<Float>?,
                                            meanDy: UnsafePointer<Float>?, meanDyXhat: UnsafePointer<Float>?,
                                            n: Int, c: Int, s: Int, reluOutput: UnsafePointer<Float>? = nil) {
    planesBackwardInput(RectifiedPlane.self, x: x, dy: dy, dx: dx, mean: mean, invStd: invStd, gamma: gamma,
                        meanDy: meanDy, meanDyXhat: meanDyXhat, n: n, c: c, s: s, reluOutput: reluOutput, maskInput: true)
}

// MARK: bf16 copy of the input

/// Σ of 16 Double lanes as a tree: l + (l + 8), then + 4, + 2, + 1 (cnn_bf16_round_moments' order).
@inline(__always)
func laneTree(_ v: SIMD16<Double>) -> Double {
    let s8 = v.lowHalf + v.highHalf
    let s4 = s8.lowHalf + s8.highHalf
    let s2 = s4.lowHalf + s4.highHalf
    return s2[0] + s2[1]
}

/// Writes o = bf16KeepingNonzero(x read as P) over one plane and returns the Σ and Σ² of the
/// rounded values in Double, in cnn_bf16_round_moments' order (element j in lane j mod 16,
/// then `laneTree`): per block of 256, a plain (vectorised) rounding loop, then the block just
/// written (in L1) read back 16 at a time.
@inline(__always)
func planeRoundMoments<P: BatchNormInputPlane>(_: P.Type, _ p: UnsafePointer<Float>, _ o: UnsafeMutablePointer<UInt16>,
                                               _ count: Int) -> (Double, Double) where P.Element == Float {
    var a = SIMD16<Double>(), b = SIMD16<Double>()
    var j = 0
    while j < count {
        let end = min(j + 256, count)
        for k in j..<end { o[k] = bf16KeepingNonzero(P.load(p, k)) }
        while j + 16 <= end {
            let h = UnsafeRawPointer(o).loadUnaligned(fromByteOffset: j * 2, as: SIMD16<UInt16>.self)
            let d = SIMD16<Double>(unsafeBitCast(SIMD16<UInt32>(truncatingIfNeeded: h) &<< 16, to: SIMD16<Float>.self))
            a += d
            b += d * d   // exact: 8-bit significands
            j += 16
        }
        // Only the plane's last block has a tail, from a multiple of 16.
        while j < end {
            let d = Double(BF16Plane.load(o, j))
            a[j & 15] += d
            b[j & 15] += d * d
            j += 1
        }
    }
    return (laneTree(a), laneTree(b))
}

/// xb = bf16KeepingNonzero(x), or of max(x, 0) with `rectify`, and, per channel c over (n, s)
/// of the rounded values v, sums[c] = Σ v and squares[c] = Σ v² (overwritten), in the pass
/// that writes the copy. A bf16 value has an 8-bit significand, so v and v² are exact in
/// Double and each sum errs by at most about (n·s / 16)·2⁻⁵³ of Σ|v| (of Σ v²): Σv²/M − (Σv/M)²
/// then gives the biased variance to within ~2⁻³⁰·(1 + mean²/var) relative even for 2²⁴
/// elements, far inside what rounding the input to bf16 changes it by (~2⁻¹⁷·(1 + mean²/var));
/// past |mean| ≈ 2⁸·std the copy no longer resolves the spread at all. `native` (the CPU has
/// AVX512_BF16) runs cnn_bf16_round_moments, else the portable Swift loops: the same bits.
public func batchNormRoundBF16ChannelMoments(x: UnsafePointer<Float>, rectify: Bool, bf16 xb: UnsafeMutablePointer<UInt16>,
                                             n: Int, c: Int, s: Int, sums: UnsafeMutablePointer<Double>,
                                             squares: UnsafeMutablePointer<Double>, native: Bool) {
    forEachRange(c, work: n * s, minimum: streamingSplitMinimum) { channels in
        if native {
            cnn_bf16_round_moments(n, c, s, channels.lowerBound, channels.upperBound, x, rectify ? 1 : 0, xb, sums, squares)
            return
        }
        for ch in channels { sums[ch] = 0; squares[ch] = 0 }
        for i in 0..<n {
            for ch in channels {
                let off = (i * c + ch) * s
                let (a, b) = rectify ? planeRoundMoments(RectifiedPlane.self, x + off, xb + off, s)
                    : planeRoundMoments(PlainPlane.self, x + off, xb + off, s)
                sums[ch] += a
                squares[ch] += b
            }
        }
    }
}

/// `batchNormNormalize` of the bf16 copy.
public func batchNormBF16Normalize(x: UnsafePointer<UInt16>, y: UnsafeMutablePointer<Float>,
                                   mean: UnsafePointer<Float>, invStd: UnsafePointer<Float>,
                                   gamma: UnsafePointer<Float>?, beta: UnsafePointer<Float>?,
                                   n: Int, c: Int, s: Int, relu: Bool = false) {
    planesNormalize(BF16Plane.self, x: x, y: y, mean: mean, invStd: invStd, gamma: gamma, beta: beta,
                    n: n, c: c, s: s, relu: relu)
}

/// `batchNormBF16Normalize` with the output handed to the convolution after as bf16: each
/// plane formed in a scratch row as that kernel forms it, then rounded into `bits` by
/// `cnn_bf16_round_rows`, as the convolution's bf16 phase planes round their input (same
/// bits, without the fp32 output's round trip through memory). Needs AVX512_BF16.
public func batchNormBF16NormalizeRounded(x: UnsafePointer<UInt16>, bits: UnsafeMutablePointer<UInt16>,
                                          mean: UnsafePointer<Float>, invStd: UnsafePointer<Float>,
                                          gamma: UnsafePointer<Float>?, beta: UnsafePointer<Float>?,
                                          n: Int, c: Int, s: Int) {
    forEachPlaneThroughRow(n: n, c: c, s: s) { ch, off, row in
        planeNormalize(BF16Plane.self, x + off, row, s, m: mean[ch], scale: invStd[ch] * (gamma?[ch] ?? 1),
                       shift: beta?[ch] ?? 0, relu: false)
        cnn_bf16_round_rows(1, 1, s, row, 0, 0, bits + off, 0, 0)
    }
}

/// body(channel, offset, row) for every plane of (n, c, s) in the plane kernels' order and
/// thread split (channels over threads), with a scratch row of s floats per thread: for the
/// passes that form a plane in fp32 and hand it on as bf16.
private func forEachPlaneThroughRow(n: Int, c: Int, s: Int, _ body: (Int, Int, UnsafeMutablePointer<Float>) -> Void) {
    forEachRange(c, work: n * s, minimum: streamingSplitMinimum) { channels in
        withUnsafeTemporaryAllocation(of: Float.self, capacity: s) { scratch in
            for i in 0..<n {
                for ch in channels { body(ch, (i * c + ch) * s, scratch.baseAddress!) }
            }
        }
    }
}

/// `batchNormBackwardSums` of the bf16 copy.
public func batchNormBF16BackwardSums(x: UnsafePointer<UInt16>, dy: UnsafePointer<Float>,
                                      mean: UnsafePointer<Float>, invStd: UnsafePointer<Float>,
                                      n: Int, c: Int, s: Int,
                                      sumDy: UnsafeMutablePointer<Double>, sumDyXhat: UnsafeMutablePointer<Double>,
                                      reluOutput: UnsafePointer<Float>? = nil) {
    planesBackwardSums(BF16Plane.self, x: x, dy: dy, mean: mean, invStd: invStd, n: n, c: c, s: s,
                       sumDy: sumDy, sumDyXhat: sumDyXhat, reluOutput: reluOutput)
}

/// `batchNormBF16BackwardInput` with dL/dx handed to the convolution before as bf16
/// (`BF16GradHandoff`) instead of written as fp32: each plane is formed in a scratch row as
/// that kernel forms it, then `handoff.planeSums[plane]` = `sumFloats` of it and
/// `handoff.bits` = its `cnn_bf16_round_rows` rounding: what the convolution's passes would
/// compute from the fp32 dL/dx. Needs the native bf16 kernel (AVX512_BF16).
public func batchNormBF16BackwardInputHandoff(x: UnsafePointer<UInt16>, dy: UnsafePointer<Float>, handoff: BF16GradHandoff,
                                              mean: UnsafePointer<Float>, invStd: UnsafePointer<Float>,
                                              gamma: UnsafePointer<Float>?,
                                              meanDy: UnsafePointer<Float>?, meanDyXhat: UnsafePointer<Float>?,
                                              n: Int, c: Int, s: Int, reluOutput: UnsafePointer<Float>? = nil, rectified: Bool) {
    forEachPlaneThroughRow(n: n, c: c, s: s) { ch, off, row in
        planeBackwardInput(BF16Plane.self, x + off, dy + off, reluOutput.map { $0 + off }, row, s,
                           k: invStd[ch] * (gamma?[ch] ?? 1), mean: mean[ch], invStd: invStd[ch],
                           meanDy: meanDy?[ch], meanDyXhat: meanDyXhat?[ch], maskInput: rectified)
        handoff.planeSums[off / s] = sumFloats(row, s)
        cnn_bf16_round_rows(1, 1, s, row, 0, 0, handoff.bits + off, 0, 0)
    }
}

/// `batchNormBackwardInput` of the bf16 copy; with `rectified` (the copy is of max(x, 0): the
/// ReLU before is fused), times (copy > 0), which is (x > 0) since no nonzero rounds to zero.
public func batchNormBF16BackwardInput(x: UnsafePointer<UInt16>, dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>,
                                       mean: UnsafePointer<Float>, invStd: UnsafePointer<Float>,
                                       gamma: UnsafePointer<Float>?,
                                       meanDy: UnsafePointer<Float>?, meanDyXhat: UnsafePointer<Float>?,
                                       n: Int, c: Int, s: Int, reluOutput: UnsafePointer<Float>? = nil, rectified: Bool) {
    planesBackwardInput(BF16Plane.self, x: x, dy: dy, dx: dx, mean: mean, invStd: invStd, gamma: gamma,
                        meanDy: meanDy, meanDyXhat: meanDyXhat, n: n, c: c, s: s, reluOutput: reluOutput, maskInput: rectified)
}
