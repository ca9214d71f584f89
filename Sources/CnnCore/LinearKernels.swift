// Shapes: x is (N, IN), weight is (OUT, IN) as in PyTorch, bias is (OUT), y is (N, OUT).

// With `arithmetic` bf16 the three GEMMs take bf16 operands with fp32 sums (`gemmBF16`);
// the bias and its gradient stay fp32.

/// y = x · weightᵀ + bias, through `sgemm` (row-major).
public func linearForward(
    x: UnsafePointer<Float>, weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
    y: UnsafeMutablePointer<Float>, n: Int, inFeatures: Int, outFeatures: Int, arithmetic: GemmArithmetic = .fp32
) {
    gemm(arithmetic, .none, .transposed, m: n, n: outFeatures, k: inFeatures, alpha: 1,
          a: x, lda: inFeatures, b: weight, ldb: inFeatures, beta: 0, c: y, ldc: outFeatures)
    if let bias {
        for row in 0..<n {
            let yr = y + row * outFeatures
            for o in 0..<outFeatures { yr[o] += bias[o] }
        }
    }
}

/// Adds dL/dweight = dyᵀ · x and dL/dbias = Σₙ dy into the gradients and
/// overwrites dx = dy · weight.
public func linearBackward(
    x: UnsafePointer<Float>, weight: UnsafePointer<Float>, dy: UnsafePointer<Float>,
    dx: UnsafeMutablePointer<Float>, dWeight: UnsafeMutablePointer<Float>, dBias: UnsafeMutablePointer<Float>?,
    n: Int, inFeatures: Int, outFeatures: Int, arithmetic: GemmArithmetic = .fp32
) {
    // dW (OUT×IN) += dyᵀ (OUT×N) · x (N×IN)
    gemm(arithmetic, .transposed, .none, m: outFeatures, n: inFeatures, k: n, alpha: 1,
          a: dy, lda: outFeatures, b: x, ldb: inFeatures, beta: 1, c: dWeight, ldc: inFeatures)
    if let dBias {
        for row in 0..<n {
            let dyr = dy + row * outFeatures
            for o in 0..<outFeatures { dBias[o] += dyr[o] }
        }
    }
    // dx (N×IN) = dy (N×OUT) · W (OUT×IN)
    gemm(arithmetic, .none, .none, m: n, n: inFeatures, k: outFeatures, alpha: 1,
          a: dy, lda: outFeatures, b: weight, ldb: inFeatures, beta: 0, c: dx, ldc: inFeatures)
}
