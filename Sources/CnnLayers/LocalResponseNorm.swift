import CnnCore

#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// Local response normalisation across channels (AlexNet, GoogLeNet), with
/// PyTorch's `nn.LocalResponseNorm(size, alpha, beta, k)` semantics:
///
///   y_c = x_c / d_c^β,   d_c = k + α/size · Σ_{c' = c − ⌊size/2⌋ … c + ⌊(size−1)/2⌋} x_{c'}²
///
/// with channels outside 0..<C contributing zero (PyTorch zero-pads and average-pools
/// the squares with the padding counted, hence the division by `size`).
/// Takes (N, C, ...) of rank ≥ 3, as PyTorch does; no parameters.
public final class LocalResponseNorm: Layer {
    public let size: Int
    public let alpha: Float
    public let beta: Float
    public let k: Float
    public var typeName: String { "LocalResponseNorm" }
    private let output = Tensor(shape: [0])
    private let gradInput = Tensor(shape: [0])
    /// d_c per element, kept for backward.
    private let denominator = Tensor(shape: [0])
    private var input: Tensor?

    /// `nn.LocalResponseNorm(size, alpha=1e-4, beta=0.75, k=1)`.
    public init(size: Int, alpha: Float = 1e-4, beta: Float = 0.75, k: Float = 1) throws {
        try requirePositive(size, layer: "LocalResponseNorm", argument: "size")
        for (name, value) in [("alpha", alpha), ("beta", beta), ("k", k)] where !value.isFinite {
            throw CnnError.invalidArgument(layer: "LocalResponseNorm", argument: name, value: "\(value)", reason: "must be finite")
        }
        guard k > 0 else {
            throw CnnError.invalidArgument(layer: "LocalResponseNorm", argument: "k", value: "\(k)",
                                           reason: "must be positive (the denominator must stay positive)")
        }
        guard alpha >= 0 else {
            throw CnnError.invalidArgument(layer: "LocalResponseNorm", argument: "alpha", value: "\(alpha)",
                                           reason: "must be non-negative")
        }
        self.size = size
        self.alpha = alpha
        self.beta = beta
        self.k = k
    }

    public func outputShape(for input: [Int]) throws -> [Int] {
        guard input.count >= 3, input.allSatisfy({ $0 > 0 }) else {
            throw CnnError.shapeMismatch(layer: typeName, expected: "(N, C, H, W) or (N, C, L)", got: formatShape(input))
        }
        return input
    }

    public func multiplyAccumulates(for input: [Int]) -> Int { input.dropFirst().reduce(1, *) * size }

    public func forward(_ input: Tensor, context: ExecutionContext) -> Tensor {
        precondition(input.shape.count >= 3, "LocalResponseNorm: expected (N, C, ...), got \(formatShape(input.shape))")
        self.input = input
        ensureShape(output, input.shape)
        ensureShape(denominator, input.shape)
        let n = input.shape[0], c = input.shape[1], s = input.shape.dropFirst(2).reduce(1, *)
        localResponseNormForward(x: input.data, y: output.data, d: denominator.data, n: n, c: c, s: s,
                                 size: size, alpha: alpha, beta: beta, k: k)
        return output
    }

    public func backward(_ gradOutput: Tensor, context: ExecutionContext) -> Tensor {
        guard let input else { preconditionFailure("LocalResponseNorm: backward before forward") }
        precondition(gradOutput.count == output.count, "LocalResponseNorm: gradient does not match output")
        ensureShape(gradInput, input.shape)
        let n = input.shape[0], c = input.shape[1], s = input.shape.dropFirst(2).reduce(1, *)
        localResponseNormBackward(x: input.data, d: denominator.data, dy: gradOutput.data, dx: gradInput.data,
                                  n: n, c: c, s: s, size: size, alpha: alpha, beta: beta)
        return gradInput
    }
}

/// Window of channels that normalise channel `c`: [c − ⌊size/2⌋, c + ⌊(size−1)/2⌋] ∩ [0, C).
@inline(__always)
private func lrnWindow(_ c: Int, channels: Int, size: Int) -> Range<Int> {
    max(0, c - size / 2) ..< min(channels, c + (size - 1) / 2 + 1)
}

/// x, y, d: (N, C, S). Writes d = k + α/size·Σ_window x² and y = x·d^(−β).
func localResponseNormForward(x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, d: UnsafeMutablePointer<Float>,
                              n: Int, c: Int, s: Int, size: Int, alpha: Float, beta: Float, k: Float) {
    let scale = alpha / Float(size)
    for i in 0..<n {
        let base = i * c * s
        for ch in 0..<c {
            let window = lrnWindow(ch, channels: c, size: size)
            let dp = d + base + ch * s
            for p in 0..<s { dp[p] = 0 }
            for w in window {
                let xp = x + base + w * s
                for p in 0..<s { dp[p] += xp[p] * xp[p] }
            }
            let xp = x + base + ch * s, yp = y + base + ch * s
            for p in 0..<s {
                dp[p] = k + scale * dp[p]
                yp[p] = xp[p] * powf(dp[p], -beta)
            }
        }
    }
}

/// dx_j = dy_j·d_j^(−β) − (2αβ/size)·x_j·Σ_{c : j ∈ window(c)} dy_c·x_c·d_c^(−β−1).
/// Channel j lies in window(c) exactly when c ∈ [j − ⌊(size−1)/2⌋, j + ⌊size/2⌋].
func localResponseNormBackward(x: UnsafePointer<Float>, d: UnsafePointer<Float>, dy: UnsafePointer<Float>,
                               dx: UnsafeMutablePointer<Float>, n: Int, c: Int, s: Int,
                               size: Int, alpha: Float, beta: Float) {
    let factor = 2 * alpha * beta / Float(size)
    // t_c = dy_c·x_c·d_c^(−β−1) for one sample, reused by every j whose window contains c.
    let t = UnsafeMutablePointer<Float>.allocate(capacity: c * s)
    defer { t.deallocate() }
    for i in 0..<n {
        let base = i * c * s
        for e in 0..<(c * s) { t[e] = dy[base + e] * x[base + e] * powf(d[base + e], -beta - 1) }
        for j in 0..<c {
            let lo = max(0, j - (size - 1) / 2), hi = min(c, j + size / 2 + 1)
            let dxp = dx + base + j * s, xp = x + base + j * s, dyp = dy + base + j * s, dp = d + base + j * s
            for p in 0..<s {
                var acc: Float = 0
                for cc in lo..<hi { acc += t[cc * s + p] }
                dxp[p] = dyp[p] * powf(dp[p], -beta) - factor * xp[p] * acc
            }
        }
    }
}
