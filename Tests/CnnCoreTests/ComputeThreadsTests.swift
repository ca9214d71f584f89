import XCTest
import CnnCore

/// ComputeThreads.count = 2 against 1: sgemm and the three convolution passes give the
/// same results (to a tight tolerance) and the same bits on every threaded run.
final class ComputeThreadsTests: XCTestCase {

    override func tearDown() {
        ComputeThreads.count = 1
        super.tearDown()
    }

    func random(_ count: Int, seed: UInt64) -> [Float] {
        var rng = SplitMix64(seed: seed)
        return (0..<count).map { _ in rng.nextUnitFloat() * 2 - 1 }
    }

    /// Runs `body` with `threads` compute threads and returns what it produced.
    func with<T>(threads: Int, _ body: () -> T) -> T {
        ComputeThreads.count = threads
        defer { ComputeThreads.count = 1 }
        return body()
    }

    func assertClose(_ a: [Float], _ b: [Float], tolerance: Float, _ what: String,
                     file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, what, file: file, line: line)
        var worst: Float = 0
        for i in 0..<a.count { worst = max(worst, abs(a[i] - b[i]) / max(1, abs(b[i]))) }
        XCTAssertLessThanOrEqual(worst, tolerance, "\(what): largest relative difference \(worst)", file: file, line: line)
    }

    func testDefaultIsOneThread() {
        XCTAssertEqual(ComputeThreads.count, 1)
    }

    func testSgemmTwoThreadsMatchesOne() {
        // Wide (split over columns), tall (split over rows), transposed operands, beta 0 / 1 / 0.5.
        let cases: [(m: Int, n: Int, k: Int, ta: Transpose, tb: Transpose, beta: Float)] = [
            (32, 4000, 147, .none, .none, 0), (300, 70, 200, .none, .transposed, 1),
            (64, 1031, 77, .transposed, .none, 0.5), (17, 2500, 400, .transposed, .transposed, 0),
        ]
        for s in cases {
            let a = random(s.m * s.k, seed: 1), b = random(s.k * s.n, seed: 2), c0 = random(s.m * s.n, seed: 3)
            let lda = s.ta == .none ? s.k : s.m, ldb = s.tb == .none ? s.n : s.k
            func run() -> [Float] {
                var c = c0
                c.withUnsafeMutableBufferPointer { cp in
                    sgemm(s.ta, s.tb, m: s.m, n: s.n, k: s.k, alpha: 1.5, a: a, lda: lda, b: b, ldb: ldb,
                          beta: s.beta, c: cp.baseAddress!, ldc: s.n)
                }
                return c
            }
            let one = with(threads: 1, run)
            let two = with(threads: 2, run), twoAgain = with(threads: 2, run)
            let three = with(threads: 3, run)
            assertClose(two, one, tolerance: 1e-6, "sgemm \(s) threads 2 vs 1")
            assertClose(three, one, tolerance: 1e-6, "sgemm \(s) threads 3 vs 1")
            XCTAssertEqual(two, twoAgain, "sgemm \(s): threaded runs differ")
        }
    }

    /// y, dx, dW, db of one batch.
    func passes(_ g: Conv2DGeometry, batch: Int, ws: ConvolutionWorkspace) -> [[Float]] {
        let x = random(batch * g.inChannels * g.height * g.width, seed: 11)
        let w = random(g.outChannels * g.panelRows, seed: 12)
        let bias = random(g.outChannels, seed: 13)
        let dy = random(batch * g.outChannels * g.outPixels, seed: 14)
        var y = [Float](repeating: .nan, count: dy.count)
        var dx = [Float](repeating: .nan, count: x.count)
        var dw = [Float](repeating: 0.25, count: w.count)
        var db = [Float](repeating: 0.25, count: g.outChannels)
        y.withUnsafeMutableBufferPointer { yp in
            convolution2DForward(input: x, weight: w, bias: bias, output: yp.baseAddress!, batch: batch,
                                 geometry: g, workspace: ws)
        }
        dx.withUnsafeMutableBufferPointer { dxp in
            convolution2DBackwardData(gradOutput: dy, weight: w, gradInput: dxp.baseAddress!, batch: batch,
                                      geometry: g, workspace: ws)
        }
        dw.withUnsafeMutableBufferPointer { dwp in db.withUnsafeMutableBufferPointer { dbp in
            convolution2DBackwardWeights(input: x, gradOutput: dy, gradWeight: dwp.baseAddress!,
                                         gradBias: dbp.baseAddress!, batch: batch, geometry: g, workspace: ws)
        } }
        return [y, dx, dw, db]
    }

    func testConvolutionTwoThreadsMatchesOne() throws {
        let shapes: [(Conv2DGeometry, Int, Int)] = [
            // Blocks inside images (small budget), odd batch.
            (try Conv2DGeometry(inChannels: 3, height: 13, width: 11, outChannels: 5, kernelHeight: 3, kernelWidth: 3,
                                padding: .explicit(top: 1, bottom: 1, left: 1, right: 1)), 3, 1024),
            // Blocks spanning images, stride 2.
            (try Conv2DGeometry(inChannels: 8, height: 8, width: 8, outChannels: 16, kernelHeight: 3, kernelWidth: 3,
                                strideHeight: 2, strideWidth: 2, padding: .explicit(top: 1, bottom: 1, left: 1, right: 1)),
             5, convolutionPanelBudgetBytes),
            // ResNet shortcut (strided 1×1) and pointwise, groups.
            (try Conv2DGeometry(inChannels: 16, height: 16, width: 16, outChannels: 32, kernelHeight: 1, kernelWidth: 1,
                                strideHeight: 2, strideWidth: 2), 4, convolutionPanelBudgetBytes),
            (try Conv2DGeometry(inChannels: 8, height: 10, width: 10, outChannels: 12, kernelHeight: 1, kernelWidth: 1,
                                groups: 2), 3, convolutionPanelBudgetBytes),
            // One image: the GEMMs split instead of the batch.
            (try Conv2DGeometry(inChannels: 32, height: 32, width: 32, outChannels: 32, kernelHeight: 3, kernelWidth: 3,
                                padding: .same), 1, convolutionPanelBudgetBytes),
        ]
        for (g, batch, budget) in shapes {
            let one = with(threads: 1) { passes(g, batch: batch, ws: ConvolutionWorkspace(panelBudgetBytes: budget)) }
            let ws2 = ConvolutionWorkspace(panelBudgetBytes: budget)
            let two = with(threads: 2) { passes(g, batch: batch, ws: ws2) }
            let twoAgain = with(threads: 2) { passes(g, batch: batch, ws: ws2) }
            for (i, name) in ["y", "dx", "dW", "db"].enumerated() {
                assertClose(two[i], one[i], tolerance: 1e-5, "\(g.inChannels)x\(g.height)x\(g.width) k\(g.kernelHeight) \(name)")
                XCTAssertEqual(two[i], twoAgain[i], "\(name): threaded runs differ")
            }
        }
    }
}

/// BatchNorm, ReLU and the elementwise add split channels (or blocks of elements) over the
/// compute threads; every channel's sums keep their order, so 2 threads give 1 thread's bits.
final class ElementwiseThreadsTests: XCTestCase {
    override func tearDown() {
        ComputeThreads.count = 1
        super.tearDown()
    }

    func testBatchNormAndReLUAndAddSplitOverThreadsGiveTheSameBits() {
        // 7 channels of 3x1001 values per image, 100 images: 2,102,100 elements (past streamingSplitMinimum),
        // an odd channel count (uneven ranges) and a plane that is not a multiple of 8.
        let (n, c, s) = (100, 7, 3003), count = n * c * s
        var rng = SplitMix64(seed: 11)
        let x = (0..<count).map { _ in rng.nextUnitFloat() * 4 - 1 }
        let dy = (0..<count).map { _ in rng.nextUnitFloat() * 2 - 1 }
        let mean = (0..<c).map { Float($0) * 0.1 }, invStd = (0..<c).map { 1 / (1 + Float($0)) }
        let gamma = (0..<c).map { 0.5 + Float($0) }, beta = (0..<c).map { Float($0) - 3 }
        func run(threads: Int) -> [[Double]] {
            ComputeThreads.count = threads
            defer { ComputeThreads.count = 1 }
            var sums = [Double](repeating: .nan, count: c), squares = sums, sumDy = sums, sumDyXhat = sums
            var y = [Float](repeating: .nan, count: count), dx = y, relu = y, reluBack = y
            var added = dy
            batchNormChannelSums(x: x, n: n, c: c, s: s, sums: &sums)
            batchNormCenteredSquares(x: x, mean: mean, n: n, c: c, s: s, sums: &squares)
            batchNormNormalize(x: x, y: &y, mean: mean, invStd: invStd, gamma: gamma, beta: beta, n: n, c: c, s: s)
            batchNormBackwardSums(x: x, dy: dy, mean: mean, invStd: invStd, n: n, c: c, s: s,
                                  sumDy: &sumDy, sumDyXhat: &sumDyXhat)
            let md = sumDy.map { Float($0 / Double(n * s)) }, mdx = sumDyXhat.map { Float($0 / Double(n * s)) }
            batchNormBackwardInput(x: x, dy: dy, dx: &dx, mean: mean, invStd: invStd, gamma: gamma,
                                   meanDy: md, meanDyXhat: mdx, n: n, c: c, s: s)
            reluForward(x: x, y: &relu, count: count)
            reluBackward(y: relu, dy: dy, dx: &reluBack, count: count)
            added.withUnsafeMutableBufferPointer { addInPlace($0.baseAddress!, x, count: count) }
            var sum = y, copy = y
            add(x, dy, into: &sum, count: count)
            copyElements(dy, into: &copy, count: count)
            return [sums, squares, sumDy, sumDyXhat] + [y, dx, relu, reluBack, added, sum, copy].map { $0.map(Double.init) }
        }
        let one = run(threads: 1), two = run(threads: 2)
        let names = ["channel sums", "centred squares", "sum dy", "sum dy·x̂", "normalize", "backward input",
                     "relu", "relu backward", "add in place", "add into", "copy"]
        for (k, name) in names.enumerated() {
            XCTAssertFalse(one[k].contains { $0.isNaN }, "\(name): unwritten values")
            XCTAssertEqual(one[k].map(\.bitPattern), two[k].map(\.bitPattern), "\(name): 2 threads differ from 1")
        }
        // The sums are real sums (not zeros): channel 0's by hand.
        var direct = 0.0
        for i in 0..<n { for j in 0..<s { direct += Double(x[i * c * s + j]) } }
        XCTAssertEqual(one[0][0], direct, accuracy: 1e-6 * Double(count))
        // The residual kernels against their definitions.
        XCTAssertEqual(one[9].map(\.bitPattern), (0..<count).map { Double(x[$0] + dy[$0]).bitPattern }, "add into")
        XCTAssertEqual(one[10].map(\.bitPattern), dy.map { Double($0).bitPattern }, "copy")
        XCTAssertGreaterThanOrEqual(count, streamingSplitMinimum, "the test must reach the threaded split")
    }
}

/// reluBackward (SIMD8 body, scalar tail) against its definition, dx = y > 0 ? dy : +0, bit
/// for bit: every length 0 ... 37 (tails of every size) and one past 2^21 (threaded), with
/// NaN, ±0, ±inf and subnormals in y and dy.
final class ReLUBackwardTests: XCTestCase {
    func testMatchesDefinitionForEveryTailAndSpecialValue() {
        let specials: [Float] = [.nan, 0, -0.0, .infinity, -.infinity, .leastNonzeroMagnitude,
                                 -.leastNonzeroMagnitude, 1, -1, 3.5]
        var rng = SplitMix64(seed: 7)
        for count in Array(0...37) + [(1 << 21) + 13] {
            let y = (0..<count).map { i in i % 5 == 0 ? specials[(i / 5) % specials.count] : rng.nextUnitFloat() - 0.5 }
            let dy = (0..<count).map { i in i % 7 == 0 ? specials[(i / 7) % specials.count] : rng.nextUnitFloat() - 0.5 }
            var dx = [Float](repeating: .nan, count: count)
            for threads in [1, 2] {
                ComputeThreads.count = threads
                reluBackward(y: y, dy: dy, dx: &dx, count: count)
                for i in 0..<count {
                    let expected: Float = y[i] > 0 ? dy[i] : 0
                    if dx[i].bitPattern != expected.bitPattern {
                        XCTFail("count \(count), \(threads) thread(s), element \(i): y \(y[i]) dy \(dy[i]) gave \(dx[i]), expected \(expected)")
                        break
                    }
                }
            }
            ComputeThreads.count = 1
        }
    }
}
