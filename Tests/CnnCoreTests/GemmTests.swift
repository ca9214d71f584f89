import Dispatch
import XCTest
import CnnCore

/// sgemm against sgemmReference: every transpose form, odd and blocking-crossing sizes,
/// padded leading dimensions, alpha/beta cases and empty problems.
final class GemmTests: XCTestCase {
    static let allTransposes: [(Transpose, Transpose)] =
        [(.none, .none), (.none, .transposed), (.transposed, .none), (.transposed, .transposed)]

    func testOddSizesAllTransposes() {
        let sizes: [(Int, Int, Int)] = [
            (1, 1, 1), (7, 13, 17), (13, 7, 31), (17, 31, 7), (31, 65, 13), (65, 17, 127),
            (127, 65, 31), (1, 257, 65), (257, 1, 65), (13, 17, 1), (65, 257, 127), (257, 127, 65),
            (16, 48, 27), (6, 16, 8), (12, 32, 256), (257, 257, 257),
        ]
        for (ta, tb) in Self.allTransposes {
            for (m, n, k) in sizes {
                checkAgainstReference(ta, tb, m: m, n: n, k: k)
            }
        }
    }

    func testCrossesBlockSizes() {
        let kc = GemmBlocking.KC, mc = GemmBlocking.MC, nc = GemmBlocking.NC
        for (ta, tb) in Self.allTransposes {
            checkAgainstReference(ta, tb, m: 13, n: 31, k: 2 * kc + 37)           // K > KC, uneven split
            checkAgainstReference(ta, tb, m: 7, n: nc + 37, k: 19)                // N > NC
            checkAgainstReference(ta, tb, m: mc + 23, n: 33, k: 45)               // M > MC
            checkAgainstReference(ta, tb, m: mc + 5, n: 65, k: kc + 1, beta: 1)   // M > MC and K > KC
        }
    }

    func testLeadingDimensionsLargerThanWidth() {
        for (ta, tb) in Self.allTransposes {
            checkAgainstReference(ta, tb, m: 31, n: 17, k: 65, padA: 3, padB: 5, padC: 7)
            checkAgainstReference(ta, tb, m: 65, n: 127, k: 13, padA: 16, padB: 1, padC: 33, beta: 0.5)
        }
    }

    func testBetaZeroIgnoresNaNInC() {
        for (ta, tb) in Self.allTransposes {
            checkAgainstReference(ta, tb, m: 17, n: 31, k: 13, beta: 0, nanC: true)
            checkAgainstReference(ta, tb, m: 13, n: 16, k: 300, alpha: 2, beta: 0, nanC: true)
        }
    }

    func testBetaOneAccumulates() {
        for (ta, tb) in Self.allTransposes {
            checkAgainstReference(ta, tb, m: 31, n: 65, k: 17, beta: 1)
            checkAgainstReference(ta, tb, m: 12, n: 32, k: 7, beta: 1)
        }
    }

    func testAlphaAndGeneralBeta() {
        for (ta, tb) in Self.allTransposes {
            checkAgainstReference(ta, tb, m: 19, n: 23, k: 29, alpha: -0.75, beta: 0.5)
            checkAgainstReference(ta, tb, m: 18, n: 48, k: 29, alpha: 3, beta: -2)
            checkAgainstReference(ta, tb, m: 7, n: 9, k: 5, alpha: 0, beta: 0.25)
        }
    }

    func testEmptyProblems() {
        // m or n zero: nothing to write. k zero: C = beta · C (zeros when beta == 0).
        for (ta, tb) in Self.allTransposes {
            checkAgainstReference(ta, tb, m: 0, n: 5, k: 3)
            checkAgainstReference(ta, tb, m: 5, n: 0, k: 3)
            checkAgainstReference(ta, tb, m: 5, n: 7, k: 0, beta: 0, nanC: true)
            checkAgainstReference(ta, tb, m: 5, n: 7, k: 0, beta: 2)
            checkAgainstReference(ta, tb, m: 0, n: 0, k: 0)
        }
    }

    func testTilesReachSinkOnceEachAndMatchReference() {
        // sgemmTiles: every C element arrives in exactly one tile, equal to sgemm's C; M with a
        // 4-row tail panel and more than MC rows, N not a multiple of NR, several B panels.
        for (m, n, k) in [(16, 37, 32), (6, 16, 1), (150, 300, 384), (3, 129, 17), (20, 70, 700), (7, 33, 1024)] {
            var rng = TestLCG(state: UInt64(m * 1000 + n))
            let a = (0..<(m * k)).map { _ in rng.next() }
            let b = (0..<(k * n)).map { _ in rng.next() }
            var expected = [Float](repeating: 0, count: m * n)
            var got = [Float](repeating: .nan, count: m * n)
            var visits = [Int](repeating: 0, count: m * n)
            let packed = PackedGemmA()
            a.withUnsafeBufferPointer { pa in
                b.withUnsafeBufferPointer { pb in
                    expected.withUnsafeMutableBufferPointer { pc in
                        sgemmReference(.none, .none, m: m, n: n, k: k, alpha: 1, a: pa.baseAddress!, lda: k,
                                       b: pb.baseAddress!, ldb: n, beta: 0, c: pc.baseAddress!, ldc: n)
                    }
                    packed.pack(.none, m: m, k: k, a: pa.baseAddress!, lda: k, depth: sgemmTilesDepthLimit)
                    sgemmTiles(packed, n: n, b: pb.baseAddress!, ldb: n) { tile, ld, row, rows, col, cols in
                        XCTAssertLessThanOrEqual(cols, ld)
                        for i in 0..<rows {
                            for j in 0..<cols {
                                got[(row + i) * n + col + j] = tile[i * ld + j]
                                visits[(row + i) * n + col + j] += 1
                            }
                        }
                    }
                }
            }
            XCTAssertEqual(Set(visits), [1], "\(m)x\(n)x\(k): an element missed or sent twice")
            let worst = zip(got, expected).map { abs($0 - $1) / max(1, abs($1)) }.max() ?? 0
            XCTAssertLessThan(worst, 1e-5 * Float(k).squareRoot() + 1e-6, "\(m)x\(n)x\(k)")
        }
    }

    func testRowBlocksFinishInOrderWithTheBitsOfSgemmPackedA() {
        // sgemmPackedARowBlocks: rowsDone sees each row block once, in order, when its rows are
        // final (they equal sgemmPackedA's C bit for bit then); several row blocks (M > MC) with
        // a 4-row tail panel, 1-3 K steps, N not a multiple of NR, padded ldb / ldc.
        for (m, n, k) in [(300, 37, 100), (145, 200, 700), (10, 17, 1030), (288, 49, 512)] {
            var rng = TestLCG(state: UInt64(m * 7 + n * 13 + k))
            let ldb = n + 3, ldc = n + 5
            let a = (0..<(m * k)).map { _ in rng.next() }
            let b = (0..<(k * ldb)).map { _ in rng.next() }
            var expected = [Float](repeating: .nan, count: m * ldc)
            var got = [Float](repeating: .nan, count: m * ldc)
            var blocks: [(Int, Int)] = []
            let packed = PackedGemmA()
            a.withUnsafeBufferPointer { pa in
                b.withUnsafeBufferPointer { pb in
                    packed.pack(.transposed, m: m, k: k, a: pa.baseAddress!, lda: m)
                    expected.withUnsafeMutableBufferPointer { pc in
                        sgemmPackedA(packed, n: n, beta: 0, c: pc.baseAddress!, ldc: ldc) { r0, kc, j0, nc, dst in
                            for p in 0..<kc {
                                for j in 0..<((nc + GemmBlocking.NR - 1) / GemmBlocking.NR * GemmBlocking.NR) {
                                    dst[(j / GemmBlocking.NR) * GemmBlocking.NR * kc + p * GemmBlocking.NR + j % GemmBlocking.NR]
                                        = j < nc ? pb[(r0 + p) * ldb + j0 + j] : 0
                                }
                            }
                        }
                    }
                    got.withUnsafeMutableBufferPointer { pc in
                        sgemmPackedARowBlocks(packed, n: n, b: pb.baseAddress!, ldb: ldb, c: pc.baseAddress!, ldc: ldc) { ic, mc in
                            XCTAssertEqual(ic, blocks.last.map { $0.0 + $0.1 } ?? 0, "\(m)x\(n)x\(k): blocks in order")
                            blocks.append((ic, mc))
                            for i in ic..<(ic + mc) {
                                for j in 0..<n {
                                    XCTAssertEqual(pc[i * ldc + j].bitPattern, expected[i * ldc + j].bitPattern,
                                                   "\(m)x\(n)x\(k) row \(i) col \(j) at its block's end")
                                }
                            }
                        }
                    }
                }
            }
            XCTAssertEqual(blocks.last.map { $0.0 + $0.1 }, m, "\(m)x\(n)x\(k): every row")
            XCTAssertEqual(blocks.count, (m + GemmBlocking.MC - 1) / GemmBlocking.MC)
            for i in 0..<m {
                for j in n..<ldc { XCTAssertTrue(got[i * ldc + j].isNaN, "column \(j) past N written") }
            }
            // And the values: against the reference loops.
            var reference = [Float](repeating: 0, count: m * ldc)
            a.withUnsafeBufferPointer { pa in b.withUnsafeBufferPointer { pb in reference.withUnsafeMutableBufferPointer { pc in
                sgemmReference(.transposed, .none, m: m, n: n, k: k, alpha: 1, a: pa.baseAddress!, lda: m,
                               b: pb.baseAddress!, ldb: ldb, beta: 0, c: pc.baseAddress!, ldc: ldc)
            } } }
            var worst: Float = 0
            for i in 0..<m { for j in 0..<n { worst = max(worst, abs(got[i * ldc + j] - reference[i * ldc + j]) / max(1, abs(reference[i * ldc + j]))) } }
            XCTAssertLessThan(worst, 1e-5 * Float(k).squareRoot() + 1e-6, "\(m)x\(n)x\(k)")
        }
    }

    func testPackFlippedKernelGivesThePackOfTheFlippedCopy() {
        // A[c][q·taps + t] = w[(q·m + c)·taps + taps − 1 − t] packed from w gives the products
        // of `pack(.none)` on that copy bit for bit: M with a 4-row tail panel and more than MC
        // rows, 1, 9 and 25 taps.
        for (m, kg, taps) in [(150, 7, 9), (10, 100, 9), (13, 30, 25), (5, 3, 1)] {
            let k = kg * taps, n = 37
            var rng = TestLCG(state: UInt64(m * 100 + kg))
            let w = (0..<(kg * m * taps)).map { _ in rng.next() }
            let b = (0..<(k * n)).map { _ in rng.next() }
            var flipped = [Float](repeating: .nan, count: m * k)
            for c in 0..<m {
                for q in 0..<kg {
                    for t in 0..<taps { flipped[c * k + q * taps + t] = w[(q * m + c) * taps + taps - 1 - t] }
                }
            }
            func product(_ pack: (PackedGemmA) -> Void) -> [Float] {
                let packed = PackedGemmA()
                pack(packed)
                var c = [Float](repeating: .nan, count: m * n)
                b.withUnsafeBufferPointer { pb in
                    sgemmTiles(packed, n: n, b: pb.baseAddress!, ldb: n) { tile, ld, row, rows, col, cols in
                        for i in 0..<rows { for j in 0..<cols { c[(row + i) * n + col + j] = tile[i * ld + j] } }
                    }
                }
                return c
            }
            let direct = product { p in w.withUnsafeBufferPointer {
                p.packFlippedKernel(m: m, k: k, taps: taps, w: $0.baseAddress!, depth: sgemmTilesDepthLimit)
            } }
            let copied = product { p in flipped.withUnsafeBufferPointer {
                p.pack(.none, m: m, k: k, a: $0.baseAddress!, lda: k, depth: sgemmTilesDepthLimit)
            } }
            XCTAssertFalse(direct.contains { $0.isNaN }, "\(m)x\(k) taps \(taps)")
            XCTAssertEqual(direct, copied, "\(m)x\(k) taps \(taps)")
        }
    }

    func testConcurrentCallersGetIndependentWorkspaces() {
        // The in-process ranks call sgemm from several threads at once.
        let shapes = [(37, 129, 300), (64, 200, 27), (5, 500, 64), (100, 40, 513)]
        DispatchQueue.concurrentPerform(iterations: 8) { i in
            let (m, n, k) = shapes[i % shapes.count]
            checkAgainstReference(i % 2 == 0 ? .none : .transposed, i % 3 == 0 ? .none : .transposed,
                                  m: m, n: n, k: k, beta: 0.5, seed: UInt64(i + 1))
        }
    }
}

/// Deterministic floats in [-1, 1).
private struct TestLCG {
    var state: UInt64
    mutating func next() -> Float {
        state = state &* 6364136223846793005 &+ 1442695040888963407
        return Float(Int32(truncatingIfNeeded: state >> 32)) * 0x1p-31
    }
}

/// Runs sgemm and sgemmReference on the same random operands and compares C, including
/// that the padding columns of C (between n and ldc) are left untouched.
/// Tolerance: float rounding of a k-term dot product grows like sqrt(k).
private func checkAgainstReference(
    _ ta: Transpose, _ tb: Transpose, m: Int, n: Int, k: Int,
    alpha: Float = 1, padA: Int = 0, padB: Int = 0, padC: Int = 0,
    beta: Float = 0, nanC: Bool = false, seed: UInt64 = 42,
    file: StaticString = #filePath, line: UInt = #line
) {
    var rng = TestLCG(state: seed)
    // Stored shapes: A is m×k (or k×m), B is k×n (or n×k).
    let (aRows, aCols) = ta == .none ? (m, k) : (k, m)
    let (bRows, bCols) = tb == .none ? (k, n) : (n, k)
    let lda = aCols + padA, ldb = bCols + padB, ldc = n + padC
    let a = (0..<max(1, aRows * lda)).map { _ in rng.next() }
    let b = (0..<max(1, bRows * ldb)).map { _ in rng.next() }
    let sentinel: Float = 12345
    var c0 = [Float](repeating: sentinel, count: max(1, m * ldc))
    for i in 0..<m {
        for j in 0..<n { c0[i * ldc + j] = nanC ? .nan : rng.next() }
    }
    var ours = c0, expected = c0
    a.withUnsafeBufferPointer { pa in
        b.withUnsafeBufferPointer { pb in
            ours.withUnsafeMutableBufferPointer { pc in
                sgemm(ta, tb, m: m, n: n, k: k, alpha: alpha, a: pa.baseAddress!, lda: max(1, lda),
                      b: pb.baseAddress!, ldb: max(1, ldb), beta: beta, c: pc.baseAddress!, ldc: max(1, ldc))
            }
            expected.withUnsafeMutableBufferPointer { pc in
                sgemmReference(ta, tb, m: m, n: n, k: k, alpha: alpha, a: pa.baseAddress!, lda: max(1, lda),
                               b: pb.baseAddress!, ldb: max(1, ldb), beta: beta, c: pc.baseAddress!,
                               ldc: max(1, ldc))
            }
        }
    }
    let tolerance = 1e-5 * Float(k).squareRoot() * max(1, abs(alpha)) + 1e-6
    var worst: Float = 0, mismatches = 0
    for i in 0..<m {
        for j in 0..<ldc {
            let idx = i * ldc + j
            if j >= n {
                if ours[idx] != sentinel { mismatches += 1 }
                continue
            }
            let err = abs(ours[idx] - expected[idx])
            let scale = max(1, abs(expected[idx]))
            if !(err <= tolerance * scale) { mismatches += 1 }
            worst = max(worst, err.isNaN ? .infinity : err / scale)
        }
    }
    XCTAssertEqual(mismatches, 0,
                   "sgemm(\(ta), \(tb), m: \(m), n: \(n), k: \(k), alpha: \(alpha), beta: \(beta), "
                   + "lda: \(lda), ldb: \(ldb), ldc: \(ldc)): worst relative error \(worst), tolerance \(tolerance)",
                   file: file, line: line)
}

/// The AVX-512 fp32 tile against the SIMD tiles: same per-element arithmetic, so the same
/// bits, on shapes with every kind of edge (ragged rows and columns, one or several column
/// panels, K steps, M blocks, all transposes, alpha and beta). The other GemmTests run with
/// whichever kernel is the default here.
final class GemmKernelTests: XCTestCase {
    func testAVX512TileGivesTheSIMDBits() throws {
        try XCTSkipUnless(CPUFeatures.current.avx512FP32, "no AVX-512 here: \(CPUFeatures.current.summary)")
        let previous = GemmKernel.current
        defer { GemmKernel.current = previous }
        var rng = SplitMix64(seed: 11)
        let transposes: [(Transpose, Transpose)] = [(.none, .none), (.none, .transposed), (.transposed, .none),
                                                    (.transposed, .transposed)]
        for (m, n, k) in [(6, 32, 8), (4, 32, 3), (7, 33, 17), (13, 64, 31), (16, 48, 27), (65, 257, 127),
                          (150, 100, 400), (12, 4100, 20), (33, 2100, 800)] {
            for (ta, tb) in transposes {
                let a = (0..<(m * k)).map { _ in rng.nextUnitFloat() * 2 - 1 }
                let b = (0..<(k * n)).map { _ in rng.nextUnitFloat() * 2 - 1 }
                let c0 = (0..<(m * n)).map { _ in rng.nextUnitFloat() * 2 - 1 }
                func run(_ kernel: GemmKernel, beta: Float) -> [Float] {
                    GemmKernel.current = kernel
                    var c = c0
                    sgemm(ta, tb, m: m, n: n, k: k, alpha: 0.75, a: a, lda: ta == .none ? k : m, b: b,
                          ldb: tb == .none ? n : k, beta: beta, c: &c, ldc: n)
                    return c
                }
                for beta: Float in [0, 0.5] {
                    let simd = run(.simd, beta: beta), wide = run(.avx512, beta: beta)
                    XCTAssertEqual(GemmKernel.current, .avx512)
                    XCTAssertEqual(simd, wide, "\(m)x\(n)x\(k) \(ta) \(tb) beta \(beta)")
                }
            }
        }
    }
}
