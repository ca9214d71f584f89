import XCTest
import CnnCore
import CnnLayers

/// Finite-difference gradient checks for every layer.
final class GradientCheckTests: XCTestCase {
    func testLinear() throws {
        assertGradients(try Linear(7, 5), input: randomTensor([4, 7], seed: 1))
        assertGradients(try Linear(7, 5, bias: false), input: randomTensor([3, 7], seed: 2))
        // Unflattened input [N, C, H, W] with C·H·W = inFeatures.
        assertGradients(try Linear(12, 4), input: randomTensor([2, 3, 2, 2], seed: 3))
    }

    func testBatchNorm2dTraining() throws {
        for affine in [true, false] {
            assertGradients(try BatchNorm2d(3, affine: affine), input: randomTensor([4, 3, 3, 3], seed: 4, offset: 0.5),
                            tolerance: 2e-3, storeSetup: { randomizeParameters($0, seed: 9) })
        }
    }

    func testBatchNorm2dTrainingWiderPlanes() throws {
        assertGradients(try BatchNorm2d(2), input: randomTensor([2, 2, 6, 5], seed: 26, offset: 0.2),
                        tolerance: 2e-3, maxChecks: 80, storeSetup: { randomizeParameters($0, seed: 12) })
    }

    func testBatchNorm1dTraining() throws {
        for affine in [true, false] {
            assertGradients(try BatchNorm1d(5, affine: affine), input: randomTensor([6, 5], seed: 5, offset: -0.3),
                            tolerance: 2e-3, storeSetup: { randomizeParameters($0, seed: 10) })
        }
    }

    func testBatchNormEval() throws {
        let bn = try BatchNorm2d(2)
        assertGradients(bn, input: randomTensor([3, 2, 2, 2], seed: 6), training: false,
                        storeSetup: { store in
                            randomizeParameters(store, seed: 3)
                            // Non-trivial running statistics.
                            for i in 0..<4 { store.buffers[i] = 0.3 + Float(i) * 0.2 }
                        })
    }

    func testActivations() throws {
        let input = distinctTensor([3, 2, 3, 3], seed: 7)
        for layer: Layer in [ReLU(), LeakyReLU(negativeSlope: 0.1), ELU(alpha: 0.7), Sigmoid(), Tanh()] {
            assertGradients(layer, input: input, maxChecks: 200)
        }
    }

    func testMaxPool() throws {
        // Non-overlapping, overlapping with padding, odd sizes, rectangular windows.
        assertGradients(try MaxPool2d(kernelSize: 2), input: distinctTensor([2, 2, 4, 4], seed: 8), maxChecks: 200)
        assertGradients(try MaxPool2d(kernelSize: 3, stride: 2, padding: 1), input: distinctTensor([2, 2, 5, 5], seed: 9),
                        maxChecks: 200)
        assertGradients(try MaxPool2d(kernelSize: 3, stride: 1), input: distinctTensor([1, 3, 5, 6], seed: 10), maxChecks: 200)
        assertGradients(try MaxPool2d(kernelSize: (2, 3), stride: (1, 2), padding: (1, 1)),
                        input: distinctTensor([2, 1, 5, 7], seed: 11), maxChecks: 200)
        // Rows wide enough for the 8-window vector blocks (and their overlapping last block).
        assertGradients(try MaxPool2d(kernelSize: 3, stride: 2, padding: 1), input: distinctTensor([1, 2, 5, 23], seed: 41),
                        maxChecks: 200)
        assertGradients(try MaxPool2d(kernelSize: 3, stride: 1, padding: 1), input: distinctTensor([1, 2, 4, 13], seed: 42),
                        maxChecks: 200)
    }

    func testAvgPool() throws {
        assertGradients(try AvgPool2d(kernelSize: 2), input: randomTensor([2, 2, 4, 4], seed: 12), maxChecks: 200)
        assertGradients(try AvgPool2d(kernelSize: 3, stride: 2, padding: 1), input: randomTensor([2, 2, 5, 5], seed: 13),
                        maxChecks: 200)
        assertGradients(try AvgPool2d(kernelSize: (3, 2), stride: (1, 2), padding: (1, 0)),
                        input: randomTensor([1, 2, 5, 7], seed: 14), maxChecks: 200)
        // Rows wide enough for the 8-window vector blocks; odd sizes leave an uncovered row and column.
        assertGradients(try AvgPool2d(kernelSize: 2), input: randomTensor([1, 2, 5, 19], seed: 43), maxChecks: 200)
        assertGradients(try AvgPool2d(kernelSize: 3, stride: 2, padding: 1), input: randomTensor([1, 2, 5, 21], seed: 44),
                        maxChecks: 200)
    }

    func testGlobalAvgPool() {
        assertGradients(GlobalAvgPool2d(), input: randomTensor([2, 3, 3, 5], seed: 15), maxChecks: 200)
    }

    func testDropoutTraining() throws {
        assertGradients(try Dropout(p: 0.4, key: 3), input: randomTensor([3, 4, 2, 2], seed: 16), maxChecks: 200)
        assertGradients(try Dropout(p: 0.4, key: 3), input: randomTensor([3, 4], seed: 17), training: false)
    }

    func testFlattenAndIdentity() {
        assertGradients(Flatten(), input: randomTensor([2, 3, 2, 2], seed: 18))
        assertGradients(Identity(), input: randomTensor([2, 3, 2, 2], seed: 19))
    }

    func testResidualWithShortcut() throws {
        let block = Residual(
            branch: [("b1", try BatchNorm2d(2)), ("act", Tanh()), ("p", try AvgPool2d(kernelSize: 3, stride: 1, padding: 1))],
            shortcut: ("sc", Sequential([try BatchNorm2d(2), Sigmoid()])),
            activation: Tanh())
        let store = assertGradients(block, input: randomTensor([3, 2, 3, 3], seed: 20), tolerance: 2e-3,
                                    storeSetup: { randomizeParameters($0, seed: 4) })
        XCTAssertEqual(store.parameterEntries.map(\.name), ["b1.weight", "b1.bias", "sc.0.weight", "sc.0.bias"])
        XCTAssertEqual(store.bufferEntries.map(\.name),
                       ["b1.running_mean", "b1.running_var", "b1.num_batches_tracked",
                        "sc.0.running_mean", "sc.0.running_var", "sc.0.num_batches_tracked"])
    }

    func testResidualLinearShortcut() throws {
        let block = Residual(branch: [("l1", try Linear(6, 6)), ("t", Tanh()), ("l2", try Linear(6, 6))],
                             shortcut: ("sc", try Linear(6, 6, bias: false)), activation: nil)
        assertGradients(block, input: randomTensor([4, 6], seed: 21))
    }

    func testResidualIdentityShortcut() throws {
        let block = Residual(branch: [("l1", try Linear(5, 5)), ("t", Sigmoid()), ("l2", try Linear(5, 5))],
                             shortcut: nil, activation: Tanh())
        assertGradients(block, input: randomTensor([3, 5], seed: 22))
        let plain = Residual(branch: [("b", try BatchNorm1d(5))], shortcut: nil, activation: nil)
        assertGradients(plain, input: randomTensor([4, 5], seed: 23), tolerance: 2e-3)
    }

    func testConcat() throws {
        // DenseNet-style (identity beside a layer) plus an Inception-style pooling branch.
        let concat = Concat(branches: [
            ("id", Identity()),
            ("dense", Sequential([try BatchNorm2d(2), Tanh()])),
            ("pool", try AvgPool2d(kernelSize: 3, stride: 1, padding: 1)),
        ])
        let input = randomTensor([3, 2, 3, 3], seed: 24)
        XCTAssertEqual(try concat.outputShape(for: [3, 2, 3, 3]), [3, 6, 3, 3])
        let store = assertGradients(concat, input: input, tolerance: 2e-3, maxChecks: 100,
                                    storeSetup: { randomizeParameters($0, seed: 5) })
        XCTAssertEqual(store.parameterEntries.map(\.name), ["dense.0.weight", "dense.0.bias"])
        // Channels 0..<2 are the input itself.
        let y = concat.forward(input, context: ExecutionContext())
        for n in 0..<3 {
            for j in 0..<18 { XCTAssertEqual(y[n * 54 + j], input[n * 18 + j]) }
        }
    }

    func testConcatUnequalChannels() throws {
        // Branches of 2 and 4 channels (a nested concat), DenseNet-like growth.
        let inner = Concat(branches: [("p", try MaxPool2d(kernelSize: 3, stride: 1, padding: 1)), ("t", Tanh())])
        let concat = Concat(branches: [("bn", try BatchNorm2d(2)), ("inner", inner)])
        XCTAssertEqual(try concat.outputShape(for: [2, 2, 4, 4]), [2, 6, 4, 4])
        assertGradients(concat, input: distinctTensor([2, 2, 4, 4], seed: 27), tolerance: 2e-3, maxChecks: 100,
                        storeSetup: { randomizeParameters($0, seed: 6) })
    }

    func testSoftmaxCrossEntropyGradient() throws {
        for smoothing: Float in [0, 0.1] {
            let loss = try SoftmaxCrossEntropy(labelSmoothing: smoothing)
            let logits = randomTensor([5, 7], seed: 25, scale: 2)
            let labels: [Int32] = [0, 6, 3, 3, 1]
            let normalizer = 8
            func value() -> Double {
                labels.withUnsafeBufferPointer { loss.forward(logits: logits, labels: $0, normalizer: normalizer) }
            }
            _ = value()
            let grad = loss.backward().clone()
            XCTAssertEqual(grad.shape, [5, 7])
            let h: Float = 1e-2
            var worst = 0.0
            for i in 0..<logits.count {
                let saved = logits[i]
                logits[i] = saved + h; let lp = value()
                logits[i] = saved - h; let lm = value()
                logits[i] = saved
                let numeric = (lp - lm) / Double(2 * h)
                worst = max(worst, abs(numeric - Double(grad[i])))
            }
            XCTAssertLessThan(worst, 1e-4, "smoothing \(smoothing)")
        }
    }
}

/// Gradient checks of the layers whose GEMMs run in bf16 (`ExecutionContext.arithmetic`).
///
/// A finite difference of a bf16 forward measures the bf16 rounding steps (2⁻⁸ relative)
/// rather than the derivative, so the numeric gradient is taken of the fp32 forward, and the
/// analytic one is the bf16 backward. Rounding an operand to bf16 (8-bit significand, nearest
/// even) changes it by at most 2⁻⁹ relative, roughly uniformly, so a product of two rounded
/// operands errs by e·p with e of standard deviation about 2⁻⁹·√(2/3) ≈ 1.6e-3. The errors of
/// the n products summed into one gradient element are independent with mean zero: their sum
/// has standard deviation 1.6e-3·√(Σp²). The largest here is dW of the 8→8 3×3 convolution,
/// n = 2·6·6 = 72 products x·r of two U(−1, 1) values (E p² = 1/9), σ ≈ 1.6e-3·√8 ≈ 4.5e-3
/// against max(1, |g|); the worst of ~600 elements lies near 3.3σ ≈ 1.5e-2 (measured 2.0e-2,
/// with the fp32 finite difference's own ~1e-3). Tolerance 3e-2 (about 6σ). A kernel that
/// dropped a bit more (7-bit rounding) doubles σ; one that paired or placed operands wrongly
/// errs by O(1).
final class BF16GradientCheckTests: XCTestCase {
    @discardableResult
    func assertBF16Gradients(_ layer: Layer, input: Tensor, tolerance: Double = 3e-2, h: Float = 1e-2,
                             file: StaticString = #filePath, line: UInt = #line) -> Double {
        let store = ParameterStore(root: layer)
        store.initialize(seed: 11)
        let fp32 = ExecutionContext(training: true, seed: 5, step: 3, sampleOffset: 0)
        let bf16 = ExecutionContext(training: true, seed: 5, step: 3, sampleOffset: 0)
        bf16.arithmetic = GemmArithmetic(.bf16)
        var rng = SplitMix64(seed: 7)
        let y0 = layer.forward(input, context: fp32)
        let r = Tensor(shape: y0.shape)
        for i in 0..<r.count { r[i] = rng.nextUnitFloat() * 2 - 1 }
        func analytic(_ context: ExecutionContext) -> (dx: [Float], dp: [Float]) {
            store.zeroGradients()
            _ = layer.forward(input, context: context)
            let dx = layer.backward(r, context: context).toArray()
            return (dx, store.gradients.toArray())
        }
        let (dx, dp) = analytic(bf16)
        let (dx32, dp32) = analytic(fp32)
        XCTAssertNotEqual(dx + dp, dx32 + dp32, "the bf16 backward differs from fp32 (bf16 arithmetic ran)", file: file, line: line)
        func loss() -> Double {
            let y = layer.forward(input, context: fp32)
            var s = 0.0
            for i in 0..<y.count { s += Double(y[i]) * Double(r[i]) }
            return s
        }
        var worst = 0.0, at = ""
        func compare(_ a: Float, _ numeric: Double, _ where_: String) {
            let e = abs(Double(a) - numeric) / max(1, abs(Double(a)), abs(numeric))
            if e > worst { worst = e; at = where_ }
        }
        for i in 0..<input.count {
            let saved = input[i]
            input[i] = saved + h; let lp = loss()
            input[i] = saved - h; let lm = loss()
            input[i] = saved
            compare(dx[i], (lp - lm) / Double(2 * h), "input[\(i)]")
        }
        for i in 0..<store.parameters.count {
            let saved = store.parameters[i]
            store.parameters[i] = saved + h; let lp = loss()
            store.parameters[i] = saved - h; let lm = loss()
            store.parameters[i] = saved
            compare(dp[i], (lp - lm) / Double(2 * h), "parameter[\(i)]")
        }
        print("bf16 gradient check \(layer.typeName): worst relative error \(worst) at \(at)")
        XCTAssertLessThan(worst, tolerance, "\(layer.typeName) at \(at)", file: file, line: line)
        return worst
    }

    func testConv2DInBF16() throws {
        // Paths: flipped backward-data with packed im2col; stride-2 row gather; 1×1 strided dcol;
        // pointwise; reflect padding through the stored panel and col2im.
        assertBF16Gradients(try Conv2D(8, 8, kernelSize: 3, padding: 1), input: randomTensor([2, 8, 6, 6], seed: 31))
        assertBF16Gradients(try Conv2D(4, 6, kernelSize: 3, stride: 2, padding: 1), input: randomTensor([2, 4, 7, 7], seed: 32))
        assertBF16Gradients(try Conv2D(6, 8, kernelSize: 1, stride: 2), input: randomTensor([2, 6, 6, 6], seed: 33))
        assertBF16Gradients(try Conv2D(6, 5, kernelSize: 1), input: randomTensor([2, 6, 4, 4], seed: 34))
        assertBF16Gradients(try Conv2D(inChannels: 3, outChannels: 4, kernelSize: (3, 3),
                                       padding: .explicit(top: 1, bottom: 1, left: 1, right: 1), paddingMode: .reflect),
                            input: randomTensor([2, 3, 5, 5], seed: 35))
    }

    /// A convolution feeding a BatchNorm that keeps its input as bf16 (planned; training), beside
    /// the same chain keeping it fp32. BatchNorm makes the loss invariant to the scale of each
    /// output channel's weights, so dL/dW comes out orthogonal to W: it is a difference of terms
    /// of the size of invStd·Σ|x·dy|, and the GEMMs' rounding (σ ≈ 4.5e-3 of those terms, see
    /// above) is relative to them, not to the result: the fp32-kept chain already errs by up
    /// to 5.3e-2 (measured). The bf16 copy adds an error of at most 2⁻⁹·|z|·invStd to x̂ (a few
    /// 1e-3 here: |x̂| ≤ 3, mean near 0), so: below 8e-2, and no worse than 1.5x the fp32-kept
    /// chain plus 1e-2.
    func testConvBatchNormWithBF16InputInBF16() throws {
        for (k, shape) in [(3, [2, 4, 6, 6]), (1, [3, 3, 5, 5])] {
            var worst: [Double] = []
            for bf16Inputs in [false, true] {
                let chain = Sequential([try Conv2D(shape[1], 6, kernelSize: k, padding: k / 2), try BatchNorm2d(6)])
                XCTAssertEqual(MemoryPlan.apply(to: chain, inputShape: shape, bf16Inputs: bf16Inputs).bf16InputBatchNorms,
                               bf16Inputs ? 1 : 0)
                worst.append(assertBF16Gradients(chain, input: randomTensor(shape, seed: 38), tolerance: 8e-2))
            }
            XCTAssertLessThan(worst[1], 1.5 * worst[0] + 1e-2, "bf16 copy \(worst[1]) against fp32 kept \(worst[0])")
        }
    }

    func testLinearInBF16() throws {
        assertBF16Gradients(try Linear(40, 7), input: randomTensor([5, 40], seed: 36))
        assertBF16Gradients(try Linear(12, 4, bias: false), input: randomTensor([3, 12], seed: 37))
    }
}
