// PLACEHOLDER until the packed GEMM lands: forwards to the reference loop.

/// C (M×N) = alpha · op(A) (M×K) · op(B) (K×N) + beta · C, all row-major.
/// op(A) is A (M×K, lda ≥ K) or Aᵀ where A is stored K×M (lda ≥ M);
/// op(B) is B (K×N, ldb ≥ N) or Bᵀ where B is stored N×K (ldb ≥ K).
/// beta == 0 overwrites C without reading it (C may hold NaN).
public func sgemm(
    _ transA: Transpose, _ transB: Transpose, m: Int, n: Int, k: Int,
    alpha: Float, a: UnsafePointer<Float>, lda: Int,
    b: UnsafePointer<Float>, ldb: Int,
    beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int
) {
    sgemmReference(transA, transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb,
                   beta: beta, c: c, ldc: ldc)
}
