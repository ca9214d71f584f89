import XCTest
import CnnCore

/// All three convolution passes and the linear kernels in bf16 (`GemmArithmetic(.bf16)`),
/// on every path bf16 takes, against direct loops over the bf16-rounded operands.
///
/// Tolerance, per output element: the kernels round each operand to bf16 (8 significant
/// bits, round to nearest even) exactly as the reference does, and the product of two bf16
/// values has at most 16 significant bits, so it is exact in fp32. What remains is the fp32
/// summation of the n products that reach the element (forward n ≤ Cg·kh·kw, backward-data
/// n ≤ Kg·kh·kw, backward-weights n ≤ N·outH·outW, linear n = the GEMM's K), in whatever
/// order the blocking, K steps, col2im adds and per-task partial sums choose: any order is
/// within (n − 1)·2⁻²⁴·Σ|products| of the exact sum, so we allow 2(n + 2)·2⁻²⁴·Σ|products|.
/// A kernel that rounded an operand differently (truncation, no rounding, the other half of
/// a pair) errs by up to 2⁻⁸ relative per product, 2¹⁶/n times the bound.
final class ConvolutionBF16Tests: XCTestCase {
    /// The kernels to run: the native one where the CPU has it, and always the portable one.
    var kernels: [BF16Kernel] { CPUFeatures.current.bf16GEMM ? [.native, .portable] : [.portable] }

    func square(_ c: Int, _ h: Int, _ k: Int, kernel: Int, stride: Int = 1, padding: Int = 0,
                mode: PaddingMode = .zeros) throws -> Conv2DGeometry {
        try Conv2DGeometry(inChannels: c, height: h, width: h, outChannels: k, kernelHeight: kernel,
                           kernelWidth: kernel, strideHeight: stride, strideWidth: stride,
                           padding: .explicit(top: padding, bottom: padding, left: padding, right: padding),
                           paddingMode: mode)
    }

    func rect(_ c: Int, _ h: Int, _ w: Int, _ k: Int, kernel: Int, padding: Int) throws -> Conv2DGeometry {
        try Conv2DGeometry(inChannels: c, height: h, width: w, outChannels: k, kernelHeight: kernel,
                           kernelWidth: kernel, padding: .explicit(top: padding, bottom: padding, left: padding, right: padding))
    }

    /// Largest |got − ref| / (2(n + 2)·2⁻²⁴·scale) over the elements (≤ 1 passes).
    func worst(_ got: [Float], _ ref: [Double], _ scale: [Double], terms n: Int) -> Double {
        let bound = 2 * Double(n + 2) * 0x1p-24
        var w = 0.0
        for i in got.indices { w = max(w, abs(Double(got[i]) - ref[i]) / (bound * scale[i] + 1e-30)) }
        return w
    }

    func testEveryPathInBF16AgainstRoundedReference() throws {
        // (geometry, batch, packed im2col allowed); the paths they take in bf16 are pinned below.
        let cases: [(Conv2DGeometry, Int, Bool, String)] = [
            (try square(16, 16, 32, kernel: 1), 3, true, "pointwise/pointwise/pointwise"),
            // 1×1 on a plane under 128 pixels: packed im2col, backward-data with the transposed weights.
            (try square(16, 7, 32, kernel: 1), 3, true, "packedIm2col/flip:packedIm2col/pointwise"),
            (try square(16, 32, 16, kernel: 3, padding: 1, mode: .reflect), 2, true, "panel/col2im/panel"),
            (try square(3, 8, 8, kernel: 3, padding: 1, mode: .reflect), 3, true,
             "panelImageSegments/col2imImageSegments/panelImageSegments"),
            (try square(8, 8, 400, kernel: 1, stride: 2), 2, true, "packedIm2col/stridedPointwise/gatheredPointwise"),
            // fp32 scatters sgemmTiles' tiles here; bf16 has no tile kernel and takes the dcol path.
            (try square(16, 12, 8, kernel: 1, stride: 2), 2, true, "packedIm2col/stridedPointwise/gatheredPointwise"),
            (try square(6, 12, 8, kernel: 3, stride: 2, padding: 1), 2, true,
             "packedIm2col/stride2Kernel3Gather/packedIm2col"),
            (try square(6, 14, 16, kernel: 5), 2, true, "packedIm2col/stride1RowGather/packedIm2col"),
            // fp32: implicit B forward and flipped implicit-B backward-data; bf16 has neither.
            (try square(1, 28, 6, kernel: 5, padding: 2), 2, true, "packedIm2col/stride1RowGather/packedIm2col"),
            (try square(25, 14, 50, kernel: 3, padding: 1), 2, true, "packedIm2col/flip:packedIm2col/packedIm2col"),
            (try square(16, 8, 16, kernel: 3, padding: 1), 2, true, "packedIm2col/flip:packedIm2col/packedIm2col"),
            // 32-wide rows: whole bf16 micro-panels packed straight from the rows (cnn_bf16_pack_runs).
            (try square(8, 32, 16, kernel: 3, padding: 1), 2, true, "packedIm2col/flip:packedIm2col/packedIm2col"),
            // Stride 2 with 8-wide output rows: bf16 panels from 8-pixel chunks of the phase planes
            // (cnn_bf16_pack_chunks, and cnn_bf16_pack_chunks_t for backward-weights, 36 = 32 + 4 columns).
            (try square(4, 16, 16, kernel: 3, stride: 2, padding: 1), 2, true,
             "packedIm2col/stride2Kernel3Gather/packedIm2col"),
            // Stride 1, 8-wide rows, two K steps of 288 (576 panel rows) in forward, chunk packers.
            (try square(64, 8, 16, kernel: 3, padding: 1), 2, true, "packedIm2col/flip:packedIm2col/packedIm2col"),
            // 16-wide rows and 27 panel rows (an odd K in forward, a 27-column backward-weights
            // panel with 5 zero columns read from the zero row).
            (try square(3, 16, 8, kernel: 3, padding: 1), 2, true, "packedIm2col/stride1RowGather/packedIm2col"),
            // With the native kernel the cases above with output rows a multiple of 8 wide copy x
            // (and dY, in the flipped backward-data) into bf16 phase planes (cnn_bf16_round_rows,
            // and cnn_bf16_round_rows_deinterleave for stride 2) and pack from them
            // (cnn_bf16_pack_runs_h, cnn_bf16_pack_chunks_h, cnn_bf16_pack_chunks_t_h); these add:
            // a 40-pixel plane, 7 images per forward block, 3 given (120 columns: a last panel of
            // 3 chunks), and 40-pixel backward-weights steps (4 chunks, then 1);
            (try rect(8, 5, 8, 16, kernel: 3, padding: 1), 3, true, "packedIm2col/flip:packedIm2col/packedIm2col"),
            // stride 2 on a 15-wide input (odd: one more even column than odd ones in the split copy);
            (try square(4, 15, 8, kernel: 3, stride: 2, padding: 1), 2, true,
             "packedIm2col/stride2Kernel3Gather/packedIm2col"),
            // stride 3 (the element-by-element bf16 copy);
            (try square(3, 24, 8, kernel: 3, stride: 3), 2, true, "packedIm2col/col2imImageSegments/packedIm2col"),
            // 520 pixels: backward-weights K steps of 260 are not whole 8-pixel chunks, so that pass
            // keeps fp32 planes while the forward of the same plan takes bf16 ones.
            (try rect(2, 65, 8, 4, kernel: 3, padding: 1), 1, true, "packedIm2col/stride1RowGather/packedIm2col"),
            // Backward-weights of planes up to 128 pixels runs one GEMM per block of images (K =
            // images × pixels rounded up to a pair): 12 images of 7×7 (odd: a zero pixel after
            // each) in 2 GEMMs of 6, from fp32 planes; the 8×8 cases above take bf16 planes, the
            // 6×6 output of the 12×12 stride-2 case fp32 planes with 36-pixel (not 8k) images.
            (try square(4, 7, 8, kernel: 3, padding: 1), 12, true, "packedIm2col/stride1RowGather/packedIm2col"),
            // 160 output channels (more than one row block): blocks of at most 256 pixels, 2 × 3 images.
            (try square(4, 7, 160, kernel: 3, padding: 1), 6, true, "packedIm2col/stride1RowGather/packedIm2col"),
        ]
        var forward = Set<String>(), data = Set<String>(), weights = Set<String>()
        let previous = ComputeThreads.count
        defer { ComputeThreads.count = previous }
        for (g, batch, packed, expected) in cases {
            var rng = SplitMix64(seed: UInt64(g.inChannels * 1000 + g.height * 10 + g.outChannels))
            // Some inputs are exact ties between two bf16 values (low 16 bits 0x8000: round to even)
            // and some subnormal (flushed to zero), where wrong rounding shows.
            let x = (0..<(batch * g.inChannels * g.height * g.width)).map { i -> Float in
                let v = rng.nextUnitFloat() * 2 - 1
                switch i % 7 {
                case 1: return Float(bitPattern: v.bitPattern & 0xFFFF_0000 | 0x8000)
                case 4: return Float(bitPattern: v.bitPattern & 0x807F_FFFF)
                default: return v
                }
            }
            let w = (0..<(g.outChannels * g.panelRows)).map { _ in rng.nextUnitFloat() * 2 - 1 }
            let bias = (0..<g.outChannels).map { _ in rng.nextUnitFloat() * 2 - 1 }
            let outCount = batch * g.outChannels * g.outPixels
            let dy = (0..<outCount).map { i -> Float in
                let v = rng.nextUnitFloat() * 2 - 1
                return i % 5 == 2 ? Float(bitPattern: v.bitPattern & 0xFFFF_0000 | 0x8000) : v
            }
            // References over the rounded operands: exact products, Double sums, and Σ|products|.
            var yRef = [Double](repeating: 0, count: outCount), yScale = yRef
            var dxRef = [Double](repeating: 0, count: x.count), dxScale = dxRef
            var dwRef = [Double](repeating: 0, count: w.count), dwScale = dwRef
            ConvolutionBlockedTests.Naive(g: g).forEachTap(batch: batch) { o, xi, wi in
                let xr = Double(bf16Rounded(x[xi])), wr = Double(bf16Rounded(w[wi])), dr = Double(bf16Rounded(dy[o]))
                yRef[o] += xr * wr; yScale[o] += abs(xr * wr)
                dxRef[xi] += dr * wr; dxScale[xi] += abs(dr * wr)
                dwRef[wi] += xr * dr; dwScale[wi] += abs(xr * dr)
            }
            var dbRef = [Double](repeating: 0, count: g.outChannels)
            for i in 0..<outCount {
                let k = i / g.outPixels % g.outChannels
                yRef[i] += Double(bias[k]); yScale[i] += abs(Double(bias[k]))
                dbRef[k] += Double(dy[i])
            }
            let taps = g.kernelHeight * g.kernelWidth
            var oneThread: [[Float]] = []
            for kernel in kernels {
                for threads in kernel == .native ? [1, 2] : [1] {
                    ComputeThreads.count = threads
                    let ws = ConvolutionWorkspace(allowsPackedIm2col: packed, precision: .bf16, bf16Kernel: kernel)
                    var y = [Float](repeating: .nan, count: outCount)
                    var dx = [Float](repeating: .nan, count: x.count)
                    var dw = [Float](repeating: 0, count: w.count), db = [Float](repeating: 0, count: g.outChannels)
                    x.withUnsafeBufferPointer { xp in w.withUnsafeBufferPointer { wp in dy.withUnsafeBufferPointer { dyp in
                        bias.withUnsafeBufferPointer { bp in
                            y.withUnsafeMutableBufferPointer { yp in
                                convolution2DForward(input: xp.baseAddress!, weight: wp.baseAddress!, bias: bp.baseAddress!,
                                                     output: yp.baseAddress!, batch: batch, geometry: g, workspace: ws)
                            }
                        }
                        dx.withUnsafeMutableBufferPointer { dxp in
                            convolution2DBackwardData(gradOutput: dyp.baseAddress!, weight: wp.baseAddress!,
                                                      gradInput: dxp.baseAddress!, batch: batch, geometry: g, workspace: ws)
                        }
                        dw.withUnsafeMutableBufferPointer { dwp in db.withUnsafeMutableBufferPointer { dbp in
                            convolution2DBackwardWeights(input: xp.baseAddress!, gradOutput: dyp.baseAddress!,
                                                         gradWeight: dwp.baseAddress!, gradBias: dbp.baseAddress!,
                                                         batch: batch, geometry: g, workspace: ws)
                        } }
                    } } }
                    let label = "\(expected) C\(g.inChannels) K\(g.outChannels) \(g.height)x\(g.width) \(kernel) threads \(threads)"
                    XCTAssertEqual(ws.path.description, expected, label)
                    XCTAssertEqual(ws.path, ConvolutionPath(g, blockPixels: ws.blockPixels, allowsPackedIm2col: packed,
                                                            precision: .bf16), label)
                    XCTAssertLessThanOrEqual(worst(y, yRef, yScale, terms: g.panelRows), 1, "forward \(label)")
                    XCTAssertLessThanOrEqual(worst(dx, dxRef, dxScale, terms: g.groupOutChannels * taps), 1,
                                             "backward-data \(label)")
                    XCTAssertLessThanOrEqual(worst(dw, dwRef, dwScale, terms: batch * g.outPixels), 1,
                                             "backward-weights \(label)")
                    if threads == 1 { oneThread.append(y + dx + dw) }
                    // The bias gradient is a plain fp32 sum of dY (not rounded to bf16).
                    for k in 0..<g.outChannels {
                        XCTAssertEqual(Double(db[k]), dbRef[k], accuracy: 1e-5 * Double(batch * g.outPixels), "db \(label)")
                    }
                }
            }
            // vdpbf16ps and the portable tile add in the same order, and the native packers round
            // as the portable ones: the same bits.
            if oneThread.count == 2 { XCTAssertEqual(oneThread[0], oneThread[1], "native == portable, \(expected)") }
            forward.insert(part(expected, 0)); data.insert(part(expected, 1)); weights.insert(part(expected, 2))
        }
        // Every forward and backward-weights path, and every backward-data path bf16 can take.
        XCTAssertEqual(forward, Set(ConvolutionPath.Forward.allCases.map(\.rawValue)).subtracting(["implicitB", "subsampledPointwise"]))
        XCTAssertEqual(weights, Set(ConvolutionPath.BackwardWeights.allCases.map(\.rawValue)))
        XCTAssertEqual(data, ["flip:packedIm2col", "pointwise", "stridedPointwise", "stride2Kernel3Gather",
                              "stride1RowGather", "col2im", "col2imImageSegments"])
    }

    /// Component i of a "forward/data/weights" path description.
    private func part(_ description: String, _ i: Int) -> String {
        String(description.split(separator: "/")[i])
    }

    /// A workspace switched from fp32 to bf16 and back re-chooses its paths and gives fp32's
    /// bits again (the layers switch with `ExecutionContext.arithmetic`).
    func testSwitchingArithmeticRechoosesPaths() throws {
        let g = try square(1, 28, 6, kernel: 5, padding: 2)
        var rng = SplitMix64(seed: 3)
        let x = (0..<(2 * 28 * 28)).map { _ in rng.nextUnitFloat() * 2 - 1 }
        let w = (0..<(6 * 25)).map { _ in rng.nextUnitFloat() * 2 - 1 }
        let ws = ConvolutionWorkspace()
        func run() -> [Float] {
            var y = [Float](repeating: .nan, count: 2 * 6 * 28 * 28)
            y.withUnsafeMutableBufferPointer { yp in
                convolution2DForward(input: x, weight: w, bias: nil, output: yp.baseAddress!, batch: 2, geometry: g, workspace: ws)
            }
            return y
        }
        let fp32 = run()
        XCTAssertEqual(ws.path.forward, .implicitB)
        ws.use(GemmArithmetic(.bf16, bf16Kernel: kernels[0]))
        let bf16 = run()
        XCTAssertEqual(ws.path.forward, .packedIm2col)
        XCTAssertNotEqual(fp32, bf16, "bf16 rounds the operands")
        ws.use(.fp32)
        XCTAssertEqual(run(), fp32)
        XCTAssertEqual(ws.path.forward, .implicitB)
    }

    /// linearForward / linearBackward in bf16 against the rounded reference (bound as above).
    func testLinearInBF16AgainstRoundedReference() {
        for (n, inF, outF) in [(1, 1, 1), (3, 7, 5), (64, 300, 10), (33, 50, 70)] {
            var rng = SplitMix64(seed: UInt64(n * 10_000 + inF * 100 + outF))
            let x = (0..<(n * inF)).map { _ in rng.nextUnitFloat() * 2 - 1 }
            let w = (0..<(outF * inF)).map { _ in rng.nextUnitFloat() * 2 - 1 }
            let b = (0..<outF).map { _ in rng.nextUnitFloat() * 2 - 1 }
            let dy = (0..<(n * outF)).map { _ in rng.nextUnitFloat() * 2 - 1 }
            func r(_ v: Float) -> Double { Double(bf16Rounded(v)) }
            var yRef = [Double](repeating: 0, count: n * outF), yScale = yRef
            var dxRef = [Double](repeating: 0, count: n * inF), dxScale = dxRef
            var dwRef = [Double](repeating: 0, count: outF * inF), dwScale = dwRef
            for i in 0..<n {
                for o in 0..<outF {
                    for j in 0..<inF {
                        let p = r(x[i * inF + j]) * r(w[o * inF + j])
                        yRef[i * outF + o] += p; yScale[i * outF + o] += abs(p)
                        let q = r(dy[i * outF + o]) * r(w[o * inF + j])
                        dxRef[i * inF + j] += q; dxScale[i * inF + j] += abs(q)
                        let s = r(dy[i * outF + o]) * r(x[i * inF + j])
                        dwRef[o * inF + j] += s; dwScale[o * inF + j] += abs(s)
                    }
                    yRef[i * outF + o] += Double(b[o]); yScale[i * outF + o] += abs(Double(b[o]))
                }
            }
            for kernel in kernels {
                let arithmetic = GemmArithmetic(.bf16, bf16Kernel: kernel)
                var y = [Float](repeating: .nan, count: n * outF), dx = [Float](repeating: .nan, count: n * inF)
                var dw = [Float](repeating: 0, count: outF * inF), db = [Float](repeating: 0, count: outF)
                y.withUnsafeMutableBufferPointer { yp in
                    linearForward(x: x, weight: w, bias: b, y: yp.baseAddress!, n: n, inFeatures: inF, outFeatures: outF,
                                  arithmetic: arithmetic)
                }
                dx.withUnsafeMutableBufferPointer { dxp in dw.withUnsafeMutableBufferPointer { dwp in
                    db.withUnsafeMutableBufferPointer { dbp in
                        linearBackward(x: x, weight: w, dy: dy, dx: dxp.baseAddress!, dWeight: dwp.baseAddress!,
                                       dBias: dbp.baseAddress!, n: n, inFeatures: inF, outFeatures: outF, arithmetic: arithmetic)
                    }
                } }
                let label = "linear \(n)x\(inF)->\(outF) \(kernel)"
                XCTAssertLessThanOrEqual(worst(y, yRef, yScale, terms: inF), 1, "forward \(label)")
                XCTAssertLessThanOrEqual(worst(dx, dxRef, dxScale, terms: outF), 1, "dx \(label)")
                XCTAssertLessThanOrEqual(worst(dw, dwRef, dwScale, terms: n), 1, "dW \(label)")
            }
        }
    }
}
