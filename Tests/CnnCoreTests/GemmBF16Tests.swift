import XCTest
import CnnCore

/// The bf16 GEMM (`gemmBF16`) against the portable reference (`gemmBF16Reference`) and
/// against fp32 `sgemm`, on shapes that reach every edge of the blocking.
///
/// Tolerances, per element of C, with S = |alpha| · Σ_p |a_ip|·|b_pj| + |beta·c_ij|:
/// - against the reference (same bf16 operands, exact fp32 products): only the order of
///   the fp32 sums differs (pairs, K steps, the final alpha / beta), so each side is within
///   γ = (K + 2)·u32 · S of the exact sum of the rounded products, u32 = 2⁻²⁴, and the two
///   within 2γ.
/// - against fp32 sgemm: bf16 keeps 8 significant bits, so rounding an operand changes it by
///   at most u16 = 2⁻⁸ relative, a product by at most 2·u16 + u16²; plus both GEMMs' own
///   fp32 summation error (2γ as above).
final class GemmBF16Tests: XCTestCase {
    struct Shape { var m: Int, n: Int, k: Int, ta: Transpose = .none, tb: Transpose = .none }

    /// Small and ragged shapes (every tail of 12/8/4 rows and 32 columns, odd K), K split in
    /// steps (K > 512), M past one MC block (144), N past the small-M panel (256), transposes.
    static let shapes: [Shape] = {
        var list: [Shape] = []
        for (m, n, k) in [(1, 1, 1), (1, 33, 3), (3, 5, 2), (4, 32, 16), (5, 31, 7), (6, 64, 25), (8, 40, 9),
                          (9, 17, 1), (12, 32, 64), (13, 65, 33), (16, 100, 144), (25, 70, 225), (32, 96, 288),
                          (50, 300, 450), (64, 257, 576), (75, 49, 450), (7, 40, 1025), (150, 70, 600),
                          (300, 45, 100), (20, 2100, 30), (13, 530, 1031), (36, 291, 27), (64, 100, 2100)] {
            list.append(Shape(m: m, n: n, k: k))
        }
        for (ta, tb) in [(Transpose.none, Transpose.transposed), (.transposed, .none), (.transposed, .transposed)] {
            // (13, 530, 1031): small M with odd K in three steps and three column panels (the
            // last ragged), so the prefetch of the next block crosses K steps and panels.
            // (64, 100, 2100): a linear layer's A packed whole (over 192 KiB) in five K steps.
            for (m, n, k) in [(5, 31, 7), (16, 100, 144), (64, 70, 513), (150, 40, 33), (13, 530, 1031),
                              (64, 100, 2100)] {
                list.append(Shape(m: m, n: n, k: k, ta: ta, tb: tb))
            }
        }
        return list
    }()

    struct Operands {
        var a: [Float], b: [Float], c: [Float]
        let lda: Int, ldb: Int, ldc: Int
        let s: Shape
        init(_ s: Shape, seed: UInt64) {
            self.s = s
            var rng = SplitMix64(seed: seed)
            lda = (s.ta == .none ? s.k : s.m) + 3   // leading dimensions past the operand
            ldb = (s.tb == .none ? s.n : s.k) + 1
            ldc = s.n + 2
            a = (0..<((s.ta == .none ? s.m : s.k) * lda)).map { _ in rng.nextUnitFloat() * 2 - 1 }
            b = (0..<((s.tb == .none ? s.k : s.n) * ldb)).map { _ in rng.nextUnitFloat() * 2 - 1 }
            c = (0..<(s.m * ldc)).map { _ in rng.nextUnitFloat() * 2 - 1 }
        }
        func A(_ i: Int, _ p: Int) -> Float { s.ta == .none ? a[i * lda + p] : a[p * lda + i] }
        func B(_ p: Int, _ j: Int) -> Float { s.tb == .none ? b[p * ldb + j] : b[j * ldb + p] }

        /// C after `gemm` with alpha, beta (C starts as `c`).
        func run(alpha: Float, beta: Float,
                 _ gemm: (UnsafePointer<Float>, UnsafePointer<Float>, UnsafeMutablePointer<Float>) -> Void) -> [Float] {
            var out = c
            a.withUnsafeBufferPointer { pa in b.withUnsafeBufferPointer { pb in out.withUnsafeMutableBufferPointer { pc in
                gemm(pa.baseAddress!, pb.baseAddress!, pc.baseAddress!)
            } } }
            return out
        }

        /// S of the tolerance comment for element (i, j).
        func scale(_ i: Int, _ j: Int, alpha: Float, beta: Float) -> Double {
            var sum = 0.0
            for p in 0..<s.k { sum += Double(abs(A(i, p))) * Double(abs(B(p, j))) }
            return Double(abs(alpha)) * sum * 1.01 + Double(abs(beta * c[i * ldc + j]))
        }
    }

    /// Worst |x − y| / bound over C, where bound = factor · S (+ 1e-30); entries past N untouched.
    func worst(_ x: [Float], _ y: [Float], _ o: Operands, alpha: Float, beta: Float, factor: Double) -> Double {
        var worst = 0.0
        for i in 0..<o.s.m {
            for j in 0..<o.ldc {
                let e = i * o.ldc + j
                if j >= o.s.n {
                    if x[e] != o.c[e] || y[e] != o.c[e] { return .infinity }
                    continue
                }
                let bound = factor * o.scale(i, j, alpha: alpha, beta: beta) + 1e-30
                worst = max(worst, abs(Double(x[e]) - Double(y[e])) / bound)
            }
        }
        return worst
    }

    func gemm(_ o: Operands, alpha: Float, beta: Float, kernel: BF16Kernel) -> [Float] {
        let s = o.s
        return o.run(alpha: alpha, beta: beta) { a, b, c in
            gemmBF16(s.ta, s.tb, m: s.m, n: s.n, k: s.k, alpha: alpha, a: a, lda: o.lda, b: b, ldb: o.ldb,
                     beta: beta, c: c, ldc: o.ldc, kernel: kernel)
        }
    }

    func reference(_ o: Operands, alpha: Float, beta: Float) -> [Float] {
        let s = o.s
        return o.run(alpha: alpha, beta: beta) { a, b, c in
            gemmBF16Reference(s.ta, s.tb, m: s.m, n: s.n, k: s.k, alpha: alpha, a: a, lda: o.lda, b: b, ldb: o.ldb,
                              beta: beta, c: c, ldc: o.ldc)
        }
    }

    static let u32 = 0x1p-24, u16 = 0x1p-8

    func checkAgainstReference(kernel: BF16Kernel) {
        for (index, s) in Self.shapes.enumerated() {
            let o = Operands(s, seed: UInt64(index + 1))
            for (alpha, beta) in [(Float(1), Float(0)), (0.5, 1), (-1.5, 0.25)] {
                let factor = 2 * Double(s.k + 2) * Self.u32
                let w = worst(gemm(o, alpha: alpha, beta: beta, kernel: kernel), reference(o, alpha: alpha, beta: beta),
                              o, alpha: alpha, beta: beta, factor: factor)
                XCTAssertLessThanOrEqual(w, 1, "\(kernel) \(s) alpha \(alpha) beta \(beta): \(w) of the bound")
            }
        }
    }

    func testPortableKernelMatchesReference() {
        checkAgainstReference(kernel: .portable)
    }

    func testNativeKernelMatchesReference() throws {
        try XCTSkipUnless(CPUFeatures.current.bf16GEMM, "no AVX512_BF16 here: \(CPUFeatures.current.summary)")
        checkAgainstReference(kernel: .native)
    }

    /// The native kernel and its Swift model give the same bits (same pair order, exact products).
    func testNativeKernelEqualsPortableKernel() throws {
        try XCTSkipUnless(CPUFeatures.current.bf16GEMM, "no AVX512_BF16 here: \(CPUFeatures.current.summary)")
        for (index, s) in Self.shapes.enumerated() {
            let o = Operands(s, seed: UInt64(index + 100))
            XCTAssertEqual(gemm(o, alpha: 1, beta: 0.5, kernel: .native), gemm(o, alpha: 1, beta: 0.5, kernel: .portable),
                           "\(s)")
        }
    }

    func testAgainstFP32WithinBF16Rounding() {
        let kernel: BF16Kernel = CPUFeatures.current.bf16GEMM ? .native : .portable
        for (index, s) in Self.shapes.enumerated() {
            let o = Operands(s, seed: UInt64(index + 200))
            let fp32 = o.run(alpha: 1, beta: 0.5) { a, b, c in
                sgemm(s.ta, s.tb, m: s.m, n: s.n, k: s.k, alpha: 1, a: a, lda: o.lda, b: b, ldb: o.ldb,
                      beta: 0.5, c: c, ldc: o.ldc)
            }
            let factor = 2 * Self.u16 + Self.u16 * Self.u16 + 2 * Double(s.k + 2) * Self.u32
            let bf16 = gemm(o, alpha: 1, beta: 0.5, kernel: kernel)
            XCTAssertLessThanOrEqual(worst(bf16, fp32, o, alpha: 1, beta: 0.5, factor: factor), 1, "\(s)")
            // And bf16 is really in use: the fp32 result is not reproduced within fp32 rounding alone.
            // (K ≤ 300: beyond that the loose worst-case fp32 bound approaches bf16's typical error.)
            if s.k >= 16 && s.k <= 300 {
                XCTAssertGreaterThan(worst(bf16, fp32, o, alpha: 1, beta: 0.5, factor: 2 * Double(s.k + 2) * Self.u32), 1,
                                     "\(s)")
            }
        }
    }

    /// Two threads split the columns or rows; every element keeps its K loop, so the bits match.
    func testThreadsGiveTheSameBits() throws {
        let kernel: BF16Kernel = CPUFeatures.current.bf16GEMM ? .native : .portable
        let previous = ComputeThreads.count
        defer { ComputeThreads.count = previous }
        for s in [Shape(m: 64, n: 700, k: 600), Shape(m: 300, n: 40, k: 200, ta: .transposed)] {
            let o = Operands(s, seed: 7)
            ComputeThreads.count = 1
            let one = gemm(o, alpha: 1, beta: 0, kernel: kernel)
            ComputeThreads.count = 2
            XCTAssertEqual(gemm(o, alpha: 1, beta: 0, kernel: kernel), one, "\(s)")
        }
    }

    func testBetaZeroDoesNotReadC() throws {
        let kernel: BF16Kernel = CPUFeatures.current.bf16GEMM ? .native : .portable
        var o = Operands(Shape(m: 13, n: 40, k: 9), seed: 3)
        for i in 0..<o.s.m { for j in 0..<o.s.n { o.c[i * o.ldc + j] = .nan } }
        let out = gemm(o, alpha: 1, beta: 0, kernel: kernel)
        for i in 0..<o.s.m { for j in 0..<o.s.n { XCTAssertTrue(out[i * o.ldc + j].isFinite) } }
    }

    /// Round to nearest, ties to even, at bf16's 8 significant bits (ulp 2⁻⁷ at 1).
    func testRoundingToNearestEven() {
        XCTAssertEqual(bf16Rounded(1), 1)
        XCTAssertEqual(bf16Rounded(1 + 0x1p-8), 1)                          // tie → even (1.0)
        XCTAssertEqual(bf16Rounded(1 + 3 * 0x1p-8), 1 + 0x1p-6)             // tie → even (1 + 2⁻⁶)
        XCTAssertEqual(bf16Rounded(1 + 0x1p-8 + 0x1p-20), 1 + 0x1p-7)       // above the tie → up
        XCTAssertEqual(bf16Rounded(-(1 + 0x1p-8 + 0x1p-20)), -(1 + 0x1p-7))
        XCTAssertEqual(bf16Rounded(1 + 0x1p-9), 1)                          // below the tie → down
        XCTAssertEqual(bf16Rounded(3.14159265), 3.140625)
        XCTAssertEqual(bf16Rounded(.greatestFiniteMagnitude), .infinity)    // past bf16's largest
        XCTAssertEqual(bf16Rounded(-.infinity), -.infinity)
        XCTAssertEqual(bf16Rounded(0x1p-130).bitPattern, 0)                 // subnormals flush to zero,
        XCTAssertEqual(bf16Rounded(-0x1p-140).bitPattern, 0x8000_0000)      // keeping the sign (as the hardware)
        XCTAssertEqual(bf16Rounded(0x1p-126), 0x1p-126)                     // the smallest normal stays
        XCTAssertTrue(bf16Rounded(.nan).isNaN)
        XCTAssertTrue(bf16Rounded(Float(bitPattern: 0x7F80_0001)).isNaN)    // a NaN whose payload would round to inf
        XCTAssertEqual(bf16Bits(1.5), 0x3FC0)
    }

    func testMissingFeatureIsAClearError() {
        let cpu = CPUFeatures(name: "Example CPU 1234", avx2: true, fma: true, avx512f: true, avx512bw: true, avx512bf16: false,
                              osSavesAVX512State: true)
        XCTAssertFalse(cpu.bf16GEMM)
        XCTAssertThrowsError(try cpu.requireBF16()) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains("avx512_bf16"), text)
            XCTAssertTrue(text.contains("Example CPU 1234"), text)
            XCTAssertTrue(text.contains("precision bf16"), text)
        }
        let noAVX512 = CPUFeatures(name: "Old CPU", avx2: true, fma: true, avx512f: false, avx512bw: false, avx512bf16: false,
                                   osSavesAVX512State: false)
        XCTAssertEqual(noAVX512.missingBF16Features, ["avx512f", "avx512bw", "avx512_bf16"])
        let noOS = CPUFeatures(name: "VM", avx2: true, fma: true, avx512f: true, avx512bw: true, avx512bf16: true, osSavesAVX512State: false)
        XCTAssertFalse(noOS.bf16GEMM)
        XCTAssertNoThrow(try CPUFeatures(name: "New CPU", avx2: true, fma: true, avx512f: true, avx512bw: true,
                                         avx512bf16: true, osSavesAVX512State: true).requireBF16())
    }
}

/// The prepacked-A bf16 GEMM and the bf16 convolution forward.
final class BF16PackedAndConvolutionTests: XCTestCase {
    var kernels: [BF16Kernel] { CPUFeatures.current.bf16GEMM ? [.native, .portable] : [.portable] }

    /// gemmBF16PackedA (B from a GemmPanelPacker in fp32 micro-panels) gives gemmBF16's bits:
    /// same K steps, row blocks and tiles, so the same sums; with beta 0 and with beta 1 (the
    /// backward-weights accumulation, whose short K loops prefetch the next tile's C).
    func testPackedAGivesGemmBF16Bits() {
        var rng = SplitMix64(seed: 5)
        let NR = GemmBlocking.NR
        for (m, n, k) in [(1, 1, 1), (6, 33, 25), (16, 70, 144), (50, 300, 451), (75, 49, 1100), (150, 64, 40),
                          (300, 79, 49)] {
            let a = (0..<(m * k)).map { _ in rng.nextUnitFloat() * 2 - 1 }
            let b = (0..<(k * n)).map { _ in rng.nextUnitFloat() * 2 - 1 }
            let c0 = (0..<(m * n)).map { _ in rng.nextUnitFloat() * 2 - 1 }
            for kernel in kernels {
                for beta: Float in [0, 1] {
                    let packed = PackedGemmABF16()
                    a.withUnsafeBufferPointer { packed.pack(.none, m: m, k: k, a: $0.baseAddress!, lda: k, kernel: kernel) }
                    var viaPacker = beta == 0 ? [Float](repeating: .nan, count: m * n) : c0
                    viaPacker.withUnsafeMutableBufferPointer { c in
                        gemmBF16PackedA(packed, n: n, beta: beta, c: c.baseAddress!, ldc: n) { row, kc, col, nc, dst in
                            for j in 0..<((nc + NR - 1) / NR * NR) {
                                for p in 0..<kc {
                                    dst[(j / NR) * NR * kc + p * NR + j % NR] = j < nc ? b[(row + p) * n + col + j] : 0
                                }
                            }
                        }
                    }
                    var direct = beta == 0 ? [Float](repeating: .nan, count: m * n) : c0
                    direct.withUnsafeMutableBufferPointer { c in
                        gemmBF16(.none, .none, m: m, n: n, k: k, alpha: 1, a: a, lda: k, b: b, ldb: n, beta: beta,
                                 c: c.baseAddress!, ldc: n, kernel: kernel)
                    }
                    XCTAssertEqual(viaPacker, direct, "\(m)x\(n)x\(k) \(kernel) beta \(beta)")
                }
            }
        }
    }

    /// The bf16 forward of every forward path against direct loops over the bf16-rounded input
    /// and weights (exact products, Double sums): only the fp32 summation differs, so
    /// |y − ref| ≤ 2(K + 2)·2⁻²⁴·(Σ|x·w| + |bias|) per output, K = Cg·kh·kw.
    func testBF16ForwardAgainstRoundedReference() throws {
        try XCTSkipUnless(CPUFeatures.current.bf16GEMM, "no AVX512_BF16 here: \(CPUFeatures.current.summary)")
        func square(_ c: Int, _ h: Int, _ k: Int, kernel: Int, stride: Int = 1, padding: Int = 0,
                    mode: PaddingMode = .zeros) throws -> Conv2DGeometry {
            try Conv2DGeometry(inChannels: c, height: h, width: h, outChannels: k, kernelHeight: kernel,
                               kernelWidth: kernel, strideHeight: stride, strideWidth: stride,
                               padding: .explicit(top: padding, bottom: padding, left: padding, right: padding),
                               paddingMode: mode)
        }
        let cases: [(Conv2DGeometry, Int, ConvolutionPath.Forward)] = [
            (try square(16, 16, 32, kernel: 1), 3, .pointwise),
            (try square(16, 8, 32, kernel: 1), 3, .packedIm2col),                // 1x1 on a small plane
            (try square(16, 32, 16, kernel: 3, padding: 1, mode: .reflect), 2, .panel),
            (try square(3, 8, 8, kernel: 3, padding: 1, mode: .reflect), 3, .panelImageSegments),
            (try square(1, 28, 6, kernel: 5, padding: 2), 2, .packedIm2col),      // implicit B in fp32
            (try square(25, 14, 50, kernel: 3, padding: 1), 3, .packedIm2col),
            (try square(50, 7, 75, kernel: 3, padding: 1), 3, .packedIm2col),     // several images per GEMM
            (try square(16, 32, 32, kernel: 3, stride: 2, padding: 1), 2, .packedIm2col),
            (try square(16, 16, 32, kernel: 1, stride: 2), 2, .packedIm2col),
        ]
        let previous = ComputeThreads.count
        defer { ComputeThreads.count = previous }
        for (g, batch, expected) in cases {
            var rng = SplitMix64(seed: UInt64(g.inChannels * 100 + g.height))
            let x = (0..<(batch * g.inChannels * g.height * g.width)).map { _ in rng.nextUnitFloat() * 2 - 1 }
            let w = (0..<(g.outChannels * g.panelRows)).map { _ in rng.nextUnitFloat() * 2 - 1 }
            let bias = (0..<g.outChannels).map { _ in rng.nextUnitFloat() * 2 - 1 }
            let outCount = batch * g.outChannels * g.outPixels
            var ref = [Double](repeating: 0, count: outCount), scale = [Double](repeating: 0, count: outCount)
            ConvolutionBlockedTests.Naive(g: g).forEachTap(batch: batch) { out, xi, wi in
                let product = Double(bf16Rounded(x[xi])) * Double(bf16Rounded(w[wi]))
                ref[out] += product
                scale[out] += abs(product)
            }
            for i in 0..<outCount {
                let b = Double(bias[i / g.outPixels % g.outChannels])
                ref[i] += b
                scale[i] += abs(b)
            }
            var results: [[Float]] = []
            for threads in [1, 2] {
                ComputeThreads.count = threads
                let ws = ConvolutionWorkspace(precision: .bf16)
                var y = [Float](repeating: .nan, count: outCount)
                x.withUnsafeBufferPointer { xp in w.withUnsafeBufferPointer { wp in bias.withUnsafeBufferPointer { bp in
                    y.withUnsafeMutableBufferPointer { yp in
                        convolution2DForward(input: xp.baseAddress!, weight: wp.baseAddress!, bias: bp.baseAddress!,
                                             output: yp.baseAddress!, batch: batch, geometry: g, workspace: ws)
                    }
                } } }
                XCTAssertEqual(ws.path.forward, expected, "\(g)")
                let bound = 2 * Double(g.panelRows + 2) * 0x1p-24
                var worst = 0.0
                for i in 0..<outCount { worst = max(worst, abs(Double(y[i]) - ref[i]) / (bound * scale[i] + 1e-30)) }
                XCTAssertLessThanOrEqual(worst, 1, "\(expected) C\(g.inChannels) K\(g.outChannels) \(g.height)x\(g.width) threads \(threads)")
                results.append(y)
            }
            XCTAssertEqual(results[0], results[1], "1 thread == 2 threads, \(expected)")
        }
    }
}
