/// Whether a GEMM operand is used as stored or transposed.
public enum Transpose: Sendable {
    case none
    case transposed
}

/// The plain triple loop, in Double accumulation: the yardstick that tests
/// compare the packed GEMM against. Same contract as `sgemm`.
public func sgemmReference(
    _ transA: Transpose, _ transB: Transpose, m: Int, n: Int, k: Int,
    alpha: Float, a: UnsafePointer<Float>, lda: Int,
    b: UnsafePointer<Float>, ldb: Int,
    beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int
) {
    referenceGEMM(transA, transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc,
                  accumulator: Double.self, operand: { $0 })
}

/// The triple loop of the reference GEMMs: each C element is the sum, in
/// increasing K and in `Acc`, of the products of its row of A and column of B
/// (each operand first passed through `operand`), then alpha · sum + beta · C
/// (beta == 0 never reads C).
@inline(__always)
func referenceGEMM<Acc: BinaryFloatingPoint>(
    _ transA: Transpose, _ transB: Transpose, m: Int, n: Int, k: Int,
    alpha: Float, a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
    beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int, accumulator: Acc.Type, operand: (Float) -> Float
) {
    for i in 0..<m {
        for j in 0..<n {
            var sum: Acc = 0
            for p in 0..<k {
                let av = transA == .none ? a[i * lda + p] : a[p * lda + i]
                let bv = transB == .none ? b[p * ldb + j] : b[j * ldb + p]
                sum += Acc(operand(av)) * Acc(operand(bv))
            }
            let old: Acc = beta == 0 ? 0 : Acc(beta) * Acc(c[i * ldc + j])
            c[i * ldc + j] = Float(Acc(alpha) * sum + old)
        }
    }
}
