import XCTest
import CnnCore
import CnnLayers

/// Hand-computed and seed-document answers.
final class KnownAnswerTests: XCTestCase {
    /// Seed 004's 4x4 example.
    let seedInput: [Float] = [1, 4, 2, 1,
                              5, 8, 3, 4,
                              7, 6, 4, 5,
                              1, 3, 1, 2]

    func testMaxPoolSeed004Stride2() throws {
        let pool = try MaxPool2d(kernelSize: 2, stride: 2)
        let x = Tensor(shape: [1, 1, 4, 4], values: seedInput)
        let y = pool.forward(x, context: ExecutionContext())
        XCTAssertEqual(y.shape, [1, 1, 2, 2])
        XCTAssertEqual(y.toArray(), [8, 4, 7, 5])
        // The gradient goes to each window's maximum only.
        let dx = pool.backward(Tensor(shape: [1, 1, 2, 2], values: [1, 2, 3, 4]), context: ExecutionContext())
        XCTAssertEqual(dx.toArray(), [0, 0, 0, 0,
                                      0, 1, 0, 2,
                                      3, 0, 0, 4,
                                      0, 0, 0, 0])
    }

    func testMaxPoolSeed004Stride1() throws {
        let pool = try MaxPool2d(kernelSize: 2, stride: 1)
        let x = Tensor(shape: [1, 1, 4, 4], values: seedInput)
        XCTAssertEqual(try pool.outputShape(for: [1, 1, 4, 4]), [1, 1, 3, 3])
        let y = pool.forward(x, context: ExecutionContext())
        XCTAssertEqual(y.toArray(), [8, 8, 4, 8, 8, 5, 7, 6, 5])
        // Overlapping windows accumulate: the 8 wins four windows.
        let dx = pool.backward(Tensor(shape: [1, 1, 3, 3], values: Array(repeating: 1, count: 9)), context: ExecutionContext())
        XCTAssertEqual(dx[5], 4)
        XCTAssertEqual(dx.toArray().reduce(0, +), 9)
    }

    func testMaxPoolTwoChannelsAndPadding() throws {
        // Two feature maps (as in seed 003) pooled independently; padding counts as −∞.
        let second = seedInput.map { -$0 }
        let x = Tensor(shape: [1, 2, 4, 4], values: seedInput + second)
        let y = try MaxPool2d(kernelSize: 2).forward(x, context: ExecutionContext())
        XCTAssertEqual(y.toArray(), [8, 4, 7, 5, -1, -1, -1, -1])
        let padded = try MaxPool2d(kernelSize: 2, stride: 2, padding: 1).forward(x, context: ExecutionContext())
        XCTAssertEqual(padded.shape, [1, 2, 3, 3])
        XCTAssertEqual(Array(padded.toArray()[9..<18]), [-1, -2, -1, -5, -3, -4, -1, -1, -2])
    }

    func testMaxPoolMatchesBruteForce() throws {
        // Shapes that exercise the 8-wide 2x2 path and its scalar tail, odd sizes, overlap and padding.
        let cases: [(k: (Int, Int), s: (Int, Int), p: (Int, Int), h: Int, w: Int)] = [
            ((2, 2), (2, 2), (0, 0), 9, 37), ((2, 2), (1, 1), (0, 0), 5, 21), ((3, 3), (2, 2), (1, 1), 7, 19),
            ((2, 3), (2, 1), (1, 0), 6, 11),
            // 2x2 stride 2: 4-wide blocks (OW 7 overlapping, OW 4 exact), gathered short rows (OW 3, 2, 1),
            // 8-wide overlapping (OW 12).
            ((2, 2), (2, 2), (0, 0), 7, 14), ((2, 2), (2, 2), (0, 0), 4, 9), ((2, 2), (2, 2), (0, 0), 6, 6),
            ((2, 2), (2, 2), (0, 0), 5, 4), ((2, 2), (2, 2), (0, 0), 3, 3), ((2, 2), (2, 2), (0, 0), 5, 24),
        ]
        for (k, st, pad, h, w) in cases { for ties in [false, true] {
            let pool = try MaxPool2d(kernelSize: k, stride: st, padding: pad)
            let x = distinctTensor([2, 3, h, w], seed: UInt64(h * w))
            // Coarse values make equal maxima within windows: the first one (row-major) must win.
            if ties { for i in 0..<x.count { x[i] = (x[i] * 3).rounded() } }
            x[5] = .nan
            let y = pool.forward(x, context: ExecutionContext())
            let oh = (h + 2 * pad.0 - k.0) / st.0 + 1, ow = (w + 2 * pad.1 - k.1) / st.1 + 1
            XCTAssertEqual(y.shape, [2, 3, oh, ow])
            let dy = randomTensor(y.shape, seed: 3)
            let dx = pool.backward(dy, context: ExecutionContext())
            var expectedDx = [Float](repeating: 0, count: x.count)
            for plane in 0..<6 {
                for i in 0..<oh {
                    for j in 0..<ow {
                        var best = -Float.infinity, at = -1
                        for r in (i * st.0 - pad.0)..<(i * st.0 - pad.0 + k.0) where r >= 0 && r < h {
                            for c in (j * st.1 - pad.1)..<(j * st.1 - pad.1 + k.1) where c >= 0 && c < w {
                                let v = x[plane * h * w + r * w + c]
                                if at < 0 || v > best || (v.isNaN && !best.isNaN) { best = v; at = r * w + c }
                            }
                        }
                        let o = (plane * oh + i) * ow + j
                        if best.isNaN { XCTAssertTrue(y[o].isNaN, "NaN propagates") } else { XCTAssertEqual(y[o], best) }
                        expectedDx[plane * h * w + at] += dy[o]
                    }
                }
            }
            assertClose(dx.toArray(), expectedDx, accuracy: 1e-6, "max pool \(k) \(st) \(pad) \(h)x\(w) ties \(ties)")
        } }
    }

    func testAvgPoolByHand() throws {
        let x = Tensor(shape: [1, 1, 4, 4], values: seedInput)
        let y = try AvgPool2d(kernelSize: 2).forward(x, context: ExecutionContext())
        XCTAssertEqual(y.toArray(), [4.5, 2.5, 4.25, 3])
        // Padding 1: zeros count in the divisor 4 (count_include_pad = true).
        let p = try AvgPool2d(kernelSize: 2, stride: 2, padding: 1).forward(x, context: ExecutionContext())
        XCTAssertEqual(p.shape, [1, 1, 3, 3])
        XCTAssertEqual(p.toArray(), [0.25, 1.5, 0.25, 3, 5.25, 2.25, 0.25, 1, 0.5])
        let g = GlobalAvgPool2d().forward(x, context: ExecutionContext())
        XCTAssertEqual(g.shape, [1, 1, 1, 1])
        XCTAssertEqual(g[0], 57.0 / 16.0)
    }

    func testBatchNormByHand() throws {
        // One channel holding [1, 2, 3, 4]: mean 2.5, biased variance 1.25, unbiased 5/3.
        let bn = try BatchNorm1d(1)
        let store = ParameterStore(root: bn)
        store.initialize(seed: 0)
        XCTAssertEqual(store.parameterEntries.map(\.name), ["weight", "bias"])
        XCTAssertEqual(store.bufferEntries.map(\.name), ["running_mean", "running_var", "num_batches_tracked"])
        let x = Tensor(shape: [4, 1], values: [1, 2, 3, 4])
        let y = bn.forward(x, context: ExecutionContext(training: true))
        // (x − 2.5) / sqrt(1.25 + 1e-5)
        assertClose(y.toArray(), [-1.3416354, -0.44721181, 0.44721181, 1.3416354], accuracy: 1e-6)
        // running = 0.9·running + 0.1·batch; running_var takes the unbiased variance.
        let expectedVar: Float = 0.9 + 0.1 * (5.0 / 3.0)
        assertClose(store.buffers.toArray(), [0.25, expectedVar, 1], accuracy: 1e-6)
        let eval = bn.forward(x, context: ExecutionContext(training: false))
        assertClose(eval.toArray(), [0.72618097, 1.6944223, 2.6626636, 3.6309049], accuracy: 1e-5)
        XCTAssertEqual(store.buffers[2], 1, "eval does not count batches")
    }

    func testBatchNormStableWithLargeMean() throws {
        let bn = try BatchNorm2d(1)
        let store = ParameterStore(root: bn)
        store.initialize(seed: 0)
        let x = Tensor(shape: [2, 1, 2, 2], values: [10000, 10001, 10002, 10003, 10004, 10005, 10006, 10007])
        let y = bn.forward(x, context: ExecutionContext())
        // Variance 5.25: a naive E[x²] − E[x]² in Float would lose it entirely.
        let s = (5.25 + 1e-5 as Double).squareRoot()
        assertClose(y.toArray(), (0..<8).map { Float((Double($0) - 3.5) / s) }, accuracy: 1e-5)
    }

    func testBatchNormMatchesDoubleReferenceOnLargePlanes() throws {
        // 33x33 planes cross the kernels' SIMD blocks and 1024-element Double blocks.
        let bn = try BatchNorm2d(2)
        let store = ParameterStore(root: bn)
        store.initialize(seed: 0)
        randomizeParameters(store, seed: 8)
        let x = randomTensor([3, 2, 33, 33], seed: 12, scale: 3, offset: 1)
        let dy = randomTensor([3, 2, 33, 33], seed: 13)
        let y = bn.forward(x, context: ExecutionContext())
        let dx = bn.backward(dy, context: ExecutionContext())
        let s = 33 * 33, m = Double(3 * s)
        for ch in 0..<2 {
            let idx = (0..<3).flatMap { n in (0..<s).map { (n * 2 + ch) * s + $0 } }
            let mean = idx.reduce(0.0) { $0 + Double(x[$1]) } / m
            let variance = idx.reduce(0.0) { $0 + (Double(x[$1]) - mean) * (Double(x[$1]) - mean) } / m
            let inv = 1 / (variance + 1e-5).squareRoot()
            let gamma = Double(store.parameters[ch]), beta = Double(store.parameters[2 + ch])
            let sumDy = idx.reduce(0.0) { $0 + Double(dy[$1]) }
            let sumDyXhat = idx.reduce(0.0) { $0 + Double(dy[$1]) * (Double(x[$1]) - mean) * inv }
            for i in idx {
                let xhat = (Double(x[i]) - mean) * inv
                XCTAssertEqual(Double(y[i]), gamma * xhat + beta, accuracy: 1e-5)
                let ref = gamma * inv * (Double(dy[i]) - sumDy / m - xhat * sumDyXhat / m)
                XCTAssertEqual(Double(dx[i]), ref, accuracy: 1e-5)
            }
            XCTAssertEqual(Double(store.buffers[ch]), 0.1 * mean, accuracy: 1e-6)
            XCTAssertEqual(Double(store.buffers[2 + ch]), 0.9 + 0.1 * variance * m / (m - 1), accuracy: 1e-5)
        }
    }

    func testSoftmaxCrossEntropyByHand() throws {
        let loss = try SoftmaxCrossEntropy()
        let logits = Tensor(shape: [1, 3], values: [1, 2, 3])
        let value = [Int32(2)].withUnsafeBufferPointer { loss.forward(logits: logits, labels: $0, normalizer: 1) }
        XCTAssertEqual(value, 0.40760596, accuracy: 1e-6)   // log(e + e² + e³) − 3
        XCTAssertEqual(loss.lastCorrect, 1)
        assertClose(loss.backward().toArray(), [0.09003057, 0.24472847, 0.66524096 - 1], accuracy: 1e-6)

        let smooth = try SoftmaxCrossEntropy(labelSmoothing: 0.1)
        let v2 = [Int32(2)].withUnsafeBufferPointer { smooth.forward(logits: logits, labels: $0, normalizer: 1) }
        XCTAssertEqual(v2, 0.50760596, accuracy: 1e-6)   // lse − 0.9·3 − (0.1/3)·(1+2+3)
        assertClose(smooth.backward().toArray(),
                    [0.09003057 - 0.1 / 3, 0.24472847 - 0.1 / 3, 0.66524096 - 0.9 - 0.1 / 3], accuracy: 1e-6)
    }

    func testSoftmaxCrossEntropyNormalizerAndStability() throws {
        let loss = try SoftmaxCrossEntropy()
        // Huge logits must not overflow; two samples over a global batch of 4.
        let logits = Tensor(shape: [2, 3], values: [1001, 1002, 1003, 3, 2, 1])
        let labels: [Int32] = [2, 1]
        let value = labels.withUnsafeBufferPointer { loss.forward(logits: logits, labels: $0, normalizer: 4) }
        XCTAssertEqual(value, (0.40760596 + 1.40760596) / 4, accuracy: 1e-5)
        XCTAssertEqual(loss.lastCorrect, 1)
        let g = loss.backward()
        XCTAssertEqual(g[2], (0.66524096 - 1) / 4, accuracy: 1e-6)
        XCTAssertTrue(g.toArray().allSatisfy { $0.isFinite })
    }

    func testLinearByHand() throws {
        let linear = try Linear(2, 2)
        let store = ParameterStore(root: linear)
        XCTAssertEqual(store.parameterEntries.map(\.name), ["weight", "bias"])
        for (i, v) in [Float(1), 2, 3, 4, 0.5, -1].enumerated() { store.parameters[i] = v }
        let y = linear.forward(Tensor(shape: [1, 2], values: [1, 1]), context: ExecutionContext())
        XCTAssertEqual(y.toArray(), [3.5, 6])
        XCTAssertEqual(linear.multiplyAccumulates(for: [1, 2]), 4)
    }

    func testActivationValues() {
        let x = Tensor(shape: [4], values: [-2, -0.5, 0.5, 2])
        let c = ExecutionContext()
        XCTAssertEqual(ReLU().forward(x, context: c).toArray(), [0, 0, 0.5, 2])
        XCTAssertEqual(LeakyReLU(negativeSlope: 0.1).forward(x, context: c).toArray(), [-0.2, -0.05, 0.5, 2])
        assertClose(ELU().forward(x, context: c).toArray(), [expm1f(-2), expm1f(-0.5), 0.5, 2], accuracy: 1e-7)
        assertClose(Sigmoid().forward(x, context: c).toArray(), [0.11920292, 0.37754067, 0.62245933, 0.88079708], accuracy: 1e-6)
        assertClose(Tanh().forward(x, context: c).toArray(), [-0.96402758, -0.46211716, 0.46211716, 0.96402758], accuracy: 1e-6)
        XCTAssertEqual(Sigmoid().forward(Tensor(shape: [2], values: [-200, 200]), context: c).toArray(), [0, 1])
        XCTAssertEqual([ReLU().typeName, LeakyReLU().typeName, ELU().typeName, Sigmoid().typeName, Tanh().typeName],
                       ["ReLU", "LeakyReLU", "ELU", "Sigmoid", "Tanh"])
    }

    func testOutputTensorsAreReused() throws {
        let layers: [Layer] = [try Linear(4, 3), try BatchNorm1d(4), ReLU(), try Dropout(p: 0.5), Flatten()]
        let model = Sequential(layers)
        let store = ParameterStore(root: model)
        store.initialize(seed: 1)
        let x = randomTensor([5, 4], seed: 1)
        let c = ExecutionContext()
        for layer in layers.dropFirst() {
            let a = layer.forward(x, context: c), pa = a.data
            let da = layer.backward(a, context: c), pda = da.data
            let b = layer.forward(x, context: c)
            let db = layer.backward(b, context: c)
            XCTAssertTrue(a === b && pa == b.data, layer.typeName)
            XCTAssertTrue(da === db && pda == db.data, layer.typeName)
        }
        withExtendedLifetime(store) {}
    }
}
