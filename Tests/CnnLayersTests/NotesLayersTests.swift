import XCTest
import CnnCore
import CnnLayers

/// The layers the notes use beyond the reference models: local response
/// normalisation, padding layers, global max pooling, softmax, MSE loss and
/// true (flipped-kernel) convolution. Gradient checks plus hand-computed answers.
final class NotesLayersTests: XCTestCase {
    // MARK: Local response normalisation

    func testLocalResponseNormKnownAnswer() throws {
        // One pixel, C = 3, size 2 (window c−1…c), α = 1, β = 1, k = 1:
        // d = 1 + (x²_{c−1} + x²_c)/2 → d = 1.5, 3.5, 7.5 for x = 1, 2, 3.
        let lrn = try LocalResponseNorm(size: 2, alpha: 1, beta: 1, k: 1)
        let y = lrn.forward(Tensor(shape: [1, 3, 1, 1], values: [1, 2, 3]), context: ExecutionContext())
        assertClose(y.toArray(), [1 / 1.5, 2 / 3.5, 3 / 7.5], accuracy: 1e-6)
        // Size 3 (window c−1…c+1), β = 0.5, k = 2, α = 3: d_0 = 2 + (1 + 4)·1 = 7, d_1 = 2 + 14 = 16, d_2 = 2 + 13 = 15.
        let lrn3 = try LocalResponseNorm(size: 3, alpha: 3, beta: 0.5, k: 2)
        let y3 = lrn3.forward(Tensor(shape: [1, 3, 1], values: [1, 2, 3]), context: ExecutionContext())
        assertClose(y3.toArray(), [1 / Float(7).squareRoot(), 2 / 4, 3 / Float(15).squareRoot()], accuracy: 1e-6)
    }

    func testLocalResponseNormGradients() throws {
        // Odd and even window sizes, windows wider than the channel count, AlexNet's and GoogLeNet's constants.
        for (size, alpha, beta, k) in [(5, Float(1e-4), Float(0.75), Float(2)), (2, 0.5, 0.75, 1), (4, 0.9, 1.3, 0.5),
                                       (7, 0.3, 0.6, 1)] {
            assertGradients(try LocalResponseNorm(size: size, alpha: alpha, beta: beta, k: k),
                            input: randomTensor([2, 5, 3, 2], seed: 40, scale: 1.5), maxChecks: 120)
        }
    }

    func testLocalResponseNormRejectsBadArguments() {
        XCTAssertThrowsError(try LocalResponseNorm(size: 0))
        XCTAssertThrowsError(try LocalResponseNorm(size: 5, k: 0))
        XCTAssertThrowsError(try LocalResponseNorm(size: 5).outputShape(for: [4, 10]))
    }

    // MARK: Padding

    func testPaddingModesKnownAnswer() throws {
        // x = [[1 2 3], [4 5 6]], pad top 1, bottom 0, left 2, right 1.
        let x = Tensor(shape: [1, 1, 2, 3], values: [1, 2, 3, 4, 5, 6])
        func pad(_ mode: PaddingMode, value: Float = 0) throws -> [Float] {
            try Pad2d(top: 1, bottom: 0, left: 2, right: 1, mode: mode, value: value).forward(x, context: ExecutionContext()).toArray()
        }
        XCTAssertEqual(try pad(.zeros, value: -7), [-7, -7, -7, -7, -7, -7,
                                                    -7, -7, 1, 2, 3, -7,
                                                    -7, -7, 4, 5, 6, -7])
        XCTAssertEqual(try pad(.reflect), [6, 5, 4, 5, 6, 5,
                                           3, 2, 1, 2, 3, 2,
                                           6, 5, 4, 5, 6, 5])
        XCTAssertEqual(try pad(.replicate), [1, 1, 1, 2, 3, 3,
                                             1, 1, 1, 2, 3, 3,
                                             4, 4, 4, 5, 6, 6])
        XCTAssertEqual(try pad(.circular), [5, 6, 4, 5, 6, 4,
                                            2, 3, 1, 2, 3, 1,
                                            5, 6, 4, 5, 6, 4])
        // Backward of replicate: the corner 1 is read by 6 padded cells.
        let layer = try Pad2d(top: 1, bottom: 0, left: 2, right: 1, mode: .replicate)
        _ = layer.forward(x, context: ExecutionContext())
        let dx = layer.backward(Tensor(shape: [1, 1, 3, 6], values: Array(repeating: 1, count: 18)), context: ExecutionContext())
        XCTAssertEqual(dx.toArray(), [6, 2, 4, 3, 1, 2])
        XCTAssertEqual(layer.typeName, "ReplicationPad2d")
    }

    func testPaddingGradients() throws {
        for mode in PaddingMode.allCases {
            assertGradients(try Pad2d(top: 2, bottom: 1, left: 0, right: 3, mode: mode, value: 0.5),
                            input: randomTensor([2, 2, 4, 5], seed: 41), maxChecks: 200)
        }
    }

    func testPaddingLimits() throws {
        XCTAssertThrowsError(try Pad2d(top: -1, bottom: 0, left: 0, right: 0))
        XCTAssertThrowsError(try Pad2d(3, mode: .reflect).outputShape(for: [1, 1, 3, 8]))   // reflect needs pad < size
        XCTAssertEqual(try Pad2d(3, mode: .circular).outputShape(for: [1, 1, 3, 3]), [1, 1, 9, 9])
        XCTAssertThrowsError(try Pad2d(4, mode: .circular).outputShape(for: [1, 1, 3, 8]))
        XCTAssertEqual(try Pad2d(5, mode: .replicate).outputShape(for: [1, 1, 1, 1]), [1, 1, 11, 11])
    }

    // MARK: Global max pooling

    func testGlobalMaxPool() throws {
        let pool = GlobalMaxPool2d()
        let x = Tensor(shape: [1, 2, 2, 2], values: [1, 9, 3, 9, -4, -2, -8, -3])
        XCTAssertEqual(pool.forward(x, context: ExecutionContext()).toArray(), [9, -2])
        // Ties: the first maximum takes the gradient.
        XCTAssertEqual(pool.backward(Tensor(shape: [1, 2, 1, 1], values: [5, 7]), context: ExecutionContext()).toArray(),
                       [0, 5, 0, 0, 0, 7, 0, 0])
        assertGradients(pool, input: distinctTensor([3, 2, 3, 4], seed: 42), maxChecks: 200)
    }

    // MARK: Adaptive average pooling

    func testAdaptiveAvgPool() throws {
        // H = 5 to 2 rows: windows 0..<3 and 2..<5 (they overlap on row 2).
        let pool = try AdaptiveAvgPool2d(outputHeight: 2, outputWidth: 1)
        let y = pool.forward(Tensor(shape: [1, 1, 5, 1], values: [1, 2, 3, 4, 5]), context: ExecutionContext())
        XCTAssertEqual(y.toArray(), [2, 4])
        XCTAssertEqual(pool.backward(Tensor(shape: [1, 1, 2, 1], values: [3, 6]), context: ExecutionContext()).toArray(),
                       [1, 1, 3, 2, 2])
        // 14 to 4 (torchvision's GoogLeNet heads): windows of 4 starting at 0, 3, 7, 10.
        let columns = Tensor(shape: [1, 1, 1, 14], values: (0..<14).map(Float.init))
        XCTAssertEqual(try AdaptiveAvgPool2d(outputHeight: 1, outputWidth: 4).forward(columns, context: ExecutionContext()).toArray(),
                       [1.5, 4.5, 8.5, 11.5])
        for (oh, ow) in [(4, 4), (2, 3), (5, 7)] {
            assertGradients(try AdaptiveAvgPool2d(outputHeight: oh, outputWidth: ow), input: randomTensor([2, 3, 7, 5], seed: 44),
                            maxChecks: 150)
        }
        XCTAssertThrowsError(try AdaptiveAvgPool2d(outputHeight: 0, outputWidth: 2))
        XCTAssertThrowsError(try AdaptiveAvgPool2d(outputHeight: 2, outputWidth: 2).outputShape(for: [1, 4]))
    }

    // MARK: Softmax

    func testSoftmax() throws {
        let softmax = Softmax()
        let y = softmax.forward(Tensor(shape: [2, 3], values: [0, 0, 0, 1000, 1000, 1000 + Float(log(2.0))]),
                                context: ExecutionContext())
        assertClose(y.toArray(), [1 / 3, 1 / 3, 1 / 3, 0.25, 0.25, 0.5], accuracy: 1e-5)
        assertGradients(Softmax(), input: randomTensor([3, 5], seed: 43, scale: 2))
        // Over channels of (N, C, H, W): every position sums to one.
        let z = Softmax().forward(randomTensor([2, 4, 3, 2], seed: 44), context: ExecutionContext())
        for n in 0..<2 { for p in 0..<6 {
            XCTAssertEqual((0..<4).reduce(Float(0)) { $0 + z[n * 24 + $1 * 6 + p] }, 1, accuracy: 1e-6)
        } }
        assertGradients(Softmax(), input: randomTensor([2, 4, 3, 2], seed: 45, scale: 2), maxChecks: 100)
    }

    // MARK: Mean squared error

    func testMeanSquaredErrorValueAndGradient() throws {
        let prediction = Tensor(shape: [2, 2], values: [1, 2, 3, 4])
        let target = Tensor(shape: [2, 2], values: [0, 2, 5, 1])
        let mean = MeanSquaredError()
        XCTAssertEqual(try mean.forward(prediction: prediction, target: target), (1 + 0 + 4 + 9) / 4.0)
        XCTAssertEqual(mean.backward().toArray(), [0.5, 0, -1, 1.5])
        let sum = MeanSquaredError(reduction: .sum)
        XCTAssertEqual(try sum.forward(prediction: prediction, target: target), 14)
        XCTAssertEqual(sum.backward().toArray(), [2, 0, -4, 6])
        XCTAssertThrowsError(try mean.forward(prediction: prediction, target: Tensor(shape: [3])))
        // Finite differences.
        let p = randomTensor([3, 4], seed: 46), t = randomTensor([3, 4], seed: 47)
        _ = try mean.forward(prediction: p, target: t, normalizer: 7)
        let grad = mean.backward().clone()
        for i in 0..<p.count {
            let saved = p[i], h: Float = 1e-2
            p[i] = saved + h; let lp = try mean.forward(prediction: p, target: t, normalizer: 7)
            p[i] = saved - h; let lm = try mean.forward(prediction: p, target: t, normalizer: 7)
            p[i] = saved
            XCTAssertEqual(Double(grad[i]), (lp - lm) / Double(2 * h), accuracy: 1e-4)
        }
    }

    /// The notes' "Learning a Kernel" (seed 003, d2l 7.2): X is 6x8 ones with columns 2…5
    /// zero, Y = corr2d(X, [1, −1]); a bias-free 1x2 Conv2d trained with the summed squared
    /// error and lr 3e-2 learns the kernel back. d2l prints loss ≈ 0.06 after 10 steps and
    /// a kernel near [1.01, −0.96]; the start is random, so we check the limit tightly
    /// after more steps and the shape of the descent after 10.
    func testLearningAKernel() throws {
        for flip in [false, true] {
            var x = [Float](repeating: 1, count: 48)
            for r in 0..<6 { for c in 2..<6 { x[r * 8 + c] = 0 } }
            var y = [Float](repeating: 0, count: 42)
            for r in 0..<6 { for c in 0..<7 { y[r * 7 + c] = x[r * 8 + c] - x[r * 8 + c + 1] } }
            XCTAssertEqual(Array(y[0..<7]), [0, 1, 0, 0, 0, -1, 0])
            let X = Tensor(shape: [1, 1, 6, 8], values: x), Y = Tensor(shape: [1, 1, 6, 7], values: y)
            let conv = try Conv2D(inChannels: 1, outChannels: 1, kernelSize: (1, 2), bias: false, flipKernel: flip)
            let store = ParameterStore(root: conv)
            store.initialize(seed: 3)
            let loss = MeanSquaredError(reduction: .sum)
            let context = ExecutionContext()
            var losses: [Double] = []
            for _ in 0..<60 {
                let yHat = conv.forward(X, context: context)
                losses.append(try loss.forward(prediction: yHat, target: Y))
                store.zeroGradients()
                _ = conv.backward(loss.backward(), context: context)
                for i in 0..<store.parameters.count { store.parameters[i] -= 3e-2 * store.gradients[i] }
            }
            print("learning a kernel (flip \(flip)): losses at steps 2,4,6,8,10:",
                  [1, 3, 5, 7, 9].map { losses[$0] }, "kernel", store.parameters.toArray())
            for i in 1..<losses.count { XCTAssertLessThan(losses[i], losses[i - 1]) }
            XCTAssertLessThan(losses[9], 0.5)
            // True convolution learns the flipped kernel [−1, 1] for the same data.
            let expected: [Float] = flip ? [-1, 1] : [1, -1]
            assertClose(store.parameters.toArray(), expected, accuracy: 1e-3)
        }
    }

    // MARK: True convolution

    func testFlippedKernelEqualsCrossCorrelationWithFlippedWeights() throws {
        let flipped = try Conv2D(inChannels: 2, outChannels: 3, kernelSize: (2, 3), stride: (1, 2),
                                 padding: .explicit(top: 1, bottom: 0, left: 1, right: 2), flipKernel: true)
        let plain = try Conv2D(inChannels: 2, outChannels: 3, kernelSize: (2, 3), stride: (1, 2),
                               padding: .explicit(top: 1, bottom: 0, left: 1, right: 2))
        let s1 = ParameterStore(root: flipped), s2 = ParameterStore(root: plain)
        s1.initialize(seed: 9)
        s2.parameters.copy(from: s1.parameters)
        // Rotate each 2x3 plane of the plain layer's weight by 180°.
        for p in 0..<6 { for i in 0..<6 { s2.parameters[p * 6 + i] = s1.parameters[p * 6 + 5 - i] } }
        let x = randomTensor([2, 2, 4, 5], seed: 48)
        let a = flipped.forward(x, context: ExecutionContext()).toArray()
        let b = plain.forward(x, context: ExecutionContext()).toArray()
        assertClose(a, b, accuracy: 1e-5)
        // A hand-computed 1-D case: x = [1, 2, 3], w = [1, 10] → true convolution [1·10+2·1, 2·10+3·1].
        let conv = try Conv2D(inChannels: 1, outChannels: 1, kernelSize: (1, 2), bias: false, flipKernel: true)
        let store = ParameterStore(root: conv)
        store.parameters[0] = 1; store.parameters[1] = 10
        XCTAssertEqual(conv.forward(Tensor(shape: [1, 1, 1, 3], values: [1, 2, 3]), context: ExecutionContext()).toArray(), [12, 23])
    }

    func testFlippedKernelGradients() throws {
        assertGradients(try Conv2D(inChannels: 3, outChannels: 4, kernelSize: (3, 2), stride: (2, 1),
                                   padding: .explicit(top: 1, bottom: 1, left: 0, right: 1), groups: 1, flipKernel: true),
                        input: randomTensor([2, 3, 5, 4], seed: 49), maxChecks: 120)
        assertGradients(try Conv2D(inChannels: 4, outChannels: 4, kernelSize: (3, 3), padding: .same, groups: 2,
                                   paddingMode: .reflect, flipKernel: true),
                        input: randomTensor([2, 4, 4, 4], seed: 50), maxChecks: 120)
    }
}
