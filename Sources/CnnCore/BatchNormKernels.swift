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
//
// The loops are the generic ones of BatchNormPlaneKernels.swift over fp32 planes read as
// they are (`PlainPlane`).

/// Σ p[j] for j < count: SIMD8 Float partials over blocks of 1024, Double across blocks.
@inline(__always)
func blockSum(_ p: UnsafePointer<Float>, _ count: Int) -> Double { planeSum(PlainPlane.self, p, count) }

/// sums[c] = Σ over (n, s) of x[n, c, s], accumulated in Double.
public func batchNormChannelSums(x: UnsafePointer<Float>, n: Int, c: Int, s: Int, sums: UnsafeMutablePointer<Double>,
                                 xImageStride: Int? = nil) {
    planesChannelSums(PlainPlane.self, x: x, n: n, c: c, s: s, sums: sums, xImageStride: xImageStride)
}

/// sums[c] = Σ over (n, s) of (x[n, c, s] − mean[c])², accumulated in Double.
public func batchNormCenteredSquares(x: UnsafePointer<Float>, mean: UnsafePointer<Float>, n: Int, c: Int, s: Int,
                                     sums: UnsafeMutablePointer<Double>, xImageStride: Int? = nil) {
    planesCenteredSquares(PlainPlane.self, x: x, mean: mean, n: n, c: c, s: s, sums: sums, xImageStride: xImageStride)
}

/// y = (x − mean)·invStd·γ + β per channel; γ = 1 and β = 0 when nil (affine = false).
/// With `relu`, y = max(that, 0) (as `reluForward` computes it: NaN gives 0).
public func batchNormNormalize(x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>,
                               mean: UnsafePointer<Float>, invStd: UnsafePointer<Float>,
                               gamma: UnsafePointer<Float>?, beta: UnsafePointer<Float>?,
                               n: Int, c: Int, s: Int, relu: Bool = false, xImageStride: Int? = nil) {
    planesNormalize(PlainPlane.self, x: x, y: y, mean: mean, invStd: invStd, gamma: gamma, beta: beta,
                    n: n, c: c, s: s, relu: relu, xImageStride: xImageStride)
}

/// sumDy[c] = Σ dy and sumDyXhat[c] = Σ dy·x̂ over (n, s), in Double (overwritten).
/// With `reluOutput` (the forward's max(y, 0)), dy is taken as 0 where that output is not
/// positive: the sums of BatchNorm followed by ReLU, from the ReLU's dL/dy.
public func batchNormBackwardSums(x: UnsafePointer<Float>, dy: UnsafePointer<Float>,
                                  mean: UnsafePointer<Float>, invStd: UnsafePointer<Float>,
                                  n: Int, c: Int, s: Int,
                                  sumDy: UnsafeMutablePointer<Double>, sumDyXhat: UnsafeMutablePointer<Double>,
                                  reluOutput: UnsafePointer<Float>? = nil, xImageStride: Int? = nil) {
    planesBackwardSums(PlainPlane.self, x: x, dy: dy, mean: mean, invStd: invStd, n: n, c: c, s: s,
                       sumDy: sumDy, sumDyXhat: sumDyXhat, reluOutput: reluOutput, xImageStride: xImageStride)
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
    planesBackwardInput(PlainPlane.self, x: x, dy: dy, dx: dx, mean: mean, invStd: invStd, gamma: gamma,
                        meanDy: meanDy, meanDyXhat: meanDyXhat, n: n, c: c, s: s, reluOutput: reluOutput,
                        maskInput: false, xImageStride: xImageStride)
}
