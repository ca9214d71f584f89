import XCTest
import CnnCore
import CnnLayers

/// ReLU followed by BatchNorm, fused by the memory plan (the BatchNorm reads the ReLU's input as
/// max(x, 0) and masks its own dL/dx by x > 0; no ReLU pass), against the same layers apart:
/// bitwise in values, dL/dx, every parameter gradient and the running statistics, in training
/// and eval, on one and two threads; with the ReLU after the BatchNorm fused as well.
final class ReLUBatchNormFusionTests: XCTestCase {
    override func tearDown() {
        ComputeThreads.count = 1
        super.tearDown()
    }

    enum Mode: CaseIterable { case unplanned, inPlace, fused }

    typealias Bits = BatchNormReLUFusionTests.Bits

    /// Two steps of `make()` (a producer, ReLU, BatchNorm[, ReLU]) on the same input under
    /// `mode`; the last step's bits.
    func run(_ make: () throws -> Sequential, shape: [Int], mode: Mode, training: Bool, threads: Int = 1,
             offset: Float = 0.2) throws -> Bits {
        ComputeThreads.count = threads
        defer { ComputeThreads.count = 1 }
        let chain = try make()
        let trailing = chain.layers.count == 4 ? 1 : 0
        switch mode {
        case .unplanned: break
        case .inPlace:
            let plan = MemoryPlan.apply(to: chain, inputShape: shape, fuse: false)
            XCTAssertEqual(plan.fusedInputReLUs + plan.fusedReLUs, 0); XCTAssertEqual(plan.inPlaceReLUs, 1 + trailing)
        case .fused:
            let plan = MemoryPlan.apply(to: chain, inputShape: shape)
            XCTAssertEqual(plan.fusedInputReLUs, 1); XCTAssertEqual(plan.fusedReLUs, trailing); XCTAssertEqual(plan.inPlaceReLUs, 0)
            XCTAssertTrue((chain.layers[1] as! ReLU).fusedIntoNextBatchNorm)
            XCTAssertTrue((chain.layers[2] as! BatchNormLayer).engine.fusedInputReLU)
        }
        let store = ParameterStore(root: chain)
        store.initialize(seed: 1)
        randomizeParameters(store, seed: 5)
        // Running statistics random (eval uses them), variances positive.
        var rng = SplitMix64(seed: 6)
        let bc = (store.buffers.count - 1) / 2
        for i in 0..<bc {
            store.buffers[i] = rng.nextUnitFloat() * 0.6
            store.buffers[bc + i] = 0.5 + rng.nextUnitFloat()
        }
        let x = randomTensor(shape, seed: 21, scale: 2, offset: offset)
        let outShape = try chain.outputShape(for: shape)
        let dy = randomTensor(outShape, seed: 22)
        var bits = Bits(output: [], gradInput: [], gradients: [], buffers: [])
        let context = ExecutionContext(training: training)
        context.needsInputGradient = true
        for _ in 0..<2 {
            store.zeroGradients()
            bits.output = chain.forward(x, context: context).toArray().map(\.bitPattern)
            bits.gradInput = chain.backward(dy, context: context).toArray().map(\.bitPattern)
            bits.gradients = store.gradients.toArray().map(\.bitPattern)
            bits.buffers = store.buffers.toArray().map(\.bitPattern)
        }
        return bits
    }

    func assertFusedMatches(_ make: () throws -> Sequential, shape: [Int], threads: [Int] = [1],
                            file: StaticString = #filePath, line: UInt = #line) throws {
        for training in [true, false] {
            let reference = try run(make, shape: shape, mode: .unplanned, training: training)
            // Not vacuous: the ReLU before the BatchNorm cuts some of dL/dx and passes the rest.
            let cut = reference.gradInput.filter { $0 == 0 }.count
            let producerIsIdentity = (try make()).layers[0] is AvgPool2d
            if producerIsIdentity {
                XCTAssertGreaterThan(cut, reference.gradInput.count / 10, "ReLU cuts too few", file: file, line: line)
                XCTAssertLessThan(cut, reference.gradInput.count * 9 / 10, "ReLU cuts too many", file: file, line: line)
            }
            XCTAssertTrue(reference.gradInput.contains { Float(bitPattern: $0) != 0 }, file: file, line: line)
            for threadCount in threads {
                for mode in [Mode.inPlace, .fused] {
                    let other = try run(make, shape: shape, mode: mode, training: training, threads: threadCount)
                    let what = "\(formatShape(shape)) \(mode) training \(training) threads \(threadCount)"
                    XCTAssertEqual(reference.output, other.output, "values \(what)", file: file, line: line)
                    XCTAssertEqual(reference.gradInput, other.gradInput, "dL/dx \(what)", file: file, line: line)
                    XCTAssertEqual(reference.gradients, other.gradients, "parameter gradients \(what)", file: file, line: line)
                    XCTAssertEqual(reference.buffers, other.buffers, "running statistics \(what)", file: file, line: line)
                }
            }
        }
    }

    /// A pooling window of 1: hands on its input exactly, in a tensor of its own.
    static func passThrough() throws -> Layer { try AvgPool2d(kernelSize: 1) }

    func testSmallShapesBitwise() throws {
        // Planes of 25 (SIMD8 tail), 1, 64; BatchNorm1d after a linear layer, 2-D and 3-D.
        try assertFusedMatches({ Sequential([try Self.passThrough(), ReLU(), try BatchNorm2d(3)]) }, shape: [4, 3, 5, 5])
        try assertFusedMatches({ Sequential([try Self.passThrough(), ReLU(), try BatchNorm2d(16)]) }, shape: [6, 16, 1, 1])
        try assertFusedMatches({ Sequential([try Self.passThrough(), ReLU(), try BatchNorm2d(5, affine: false)]) },
                               shape: [3, 5, 8, 8])
        try assertFusedMatches({ Sequential([try Conv2D(inChannels: 3, outChannels: 4, kernelSize: (3, 3),
                                                         padding: .explicit(top: 1, bottom: 1, left: 1, right: 1)),
                                             ReLU(), try BatchNorm2d(4)]) }, shape: [4, 3, 5, 5])
        try assertFusedMatches({ Sequential([try Linear(7, 10), ReLU(), try BatchNorm1d(10)]) },
                               shape: [32, 7])
    }

    func testBothReLUsOnOneBatchNorm() throws {
        try assertFusedMatches({ Sequential([try Self.passThrough(), ReLU(), try BatchNorm2d(3), ReLU()]) }, shape: [4, 3, 5, 5])
        try assertFusedMatches({ Sequential([try Conv2D(inChannels: 2, outChannels: 5, kernelSize: (1, 1)), ReLU(),
                                             try BatchNorm2d(5, affine: false), ReLU()]) }, shape: [3, 2, 7, 9])
        try assertFusedMatches({ Sequential([try Linear(6, 8), ReLU(), try BatchNorm1d(8), ReLU()]) },
                               shape: [24, 6])
    }

    func testThreadedShapesBitwise() throws {
        // From 2^21 elements BatchNorm splits channels over the threads: 7 channels of 3x1001
        // (uneven ranges, a plane not a multiple of 8), both ReLUs fused.
        try assertFusedMatches({ Sequential([try Self.passThrough(), ReLU(), try BatchNorm2d(7), ReLU()]) },
                               shape: [100, 7, 3, 1001], threads: [1, 2])
    }

    /// Exact zeros, -0, NaN, infinities and subnormals go through the fused layers as through
    /// the layers apart (eval, so that a NaN stays in its own element).
    func testSpecialValuesBitwise() throws {
        func bits(_ mode: Mode) throws -> Bits {
            let chain = Sequential([try Self.passThrough(), ReLU(), try BatchNorm2d(2), ReLU()])
            if mode == .fused { XCTAssertEqual(MemoryPlan.apply(to: chain, inputShape: [2, 2, 3, 3]).fusedInputReLUs, 1) }
            let store = ParameterStore(root: chain)
            store.initialize(seed: 1)
            // Channel 0: a cut input normalises to a positive output, so only the mask of the ReLU
            // before zeroes its dL/dx; channel 1: the input 0.25 normalises to exactly 0.
            store.buffers[0] = -0.5; store.buffers[1] = 0.25
            let values: [Float] = [0.5, -0.0, 0, .nan, .infinity, -.infinity, 0.25, 1, -1,
                                   -0.25, 0, -0.0, .nan, 3, -3, .greatestFiniteMagnitude, .leastNonzeroMagnitude, 2,
                                   0.5, 0.5, -.leastNonzeroMagnitude, -0.25, 1e-30, -1e-30, 4, -4, 0.75,
                                   0, 1, 2, 3, -1, -2, -3, .nan, .infinity]
            let x = Tensor(shape: [2, 2, 3, 3], values: values)
            let dy = randomTensor([2, 2, 3, 3], seed: 3)
            let context = ExecutionContext(training: false)
            context.needsInputGradient = true
            let y = chain.forward(x, context: context).toArray().map(\.bitPattern)
            let dx = chain.backward(dy, context: context).toArray().map(\.bitPattern)
            return Bits(output: y, gradInput: dx, gradients: store.gradients.toArray().map(\.bitPattern), buffers: [])
        }
        let a = try bits(.unplanned), b = try bits(.fused)
        XCTAssertTrue(a.gradInput.contains(0))
        XCTAssertEqual(a, b)
    }

    /// The kernels alone: the rectified passes equal the plain passes run on max(x, 0), and the
    /// rectified dL/dx equals the plain one masked by x > 0, on a plane with a SIMD8 tail.
    func testRectifiedKernelsAgainstPlainOnRectifiedInput() {
        let n = 3, c = 2, s = 29, count = n * c * s
        let x = randomTensor([count], seed: 8, scale: 1.5, offset: 0.1), dy = randomTensor([count], seed: 9)
        let r = Tensor(shape: [count]); reluForward(x: x.data, y: r.data, count: count)
        var sumsA = [Double](repeating: 0, count: c), sumsB = sumsA
        batchNormChannelSums(x: r.data, n: n, c: c, s: s, sums: &sumsA)
        batchNormRectifiedChannelSums(x: x.data, n: n, c: c, s: s, sums: &sumsB)
        XCTAssertEqual(sumsA, sumsB)
        let mean: [Float] = [0.3, 0.6], invStd: [Float] = [1.7, 0.9], gamma: [Float] = [0.8, -1.2], beta: [Float] = [0.1, -0.3]
        batchNormCenteredSquares(x: r.data, mean: mean, n: n, c: c, s: s, sums: &sumsA)
        batchNormRectifiedCenteredSquares(x: x.data, mean: mean, n: n, c: c, s: s, sums: &sumsB)
        XCTAssertEqual(sumsA, sumsB)
        for relu in [false, true] {
            let y1 = Tensor(shape: [count]), y2 = Tensor(shape: [count])
            batchNormNormalize(x: r.data, y: y1.data, mean: mean, invStd: invStd, gamma: gamma, beta: beta, n: n, c: c, s: s, relu: relu)
            batchNormRectifiedNormalize(x: x.data, y: y2.data, mean: mean, invStd: invStd, gamma: gamma, beta: beta, n: n, c: c, s: s, relu: relu)
            XCTAssertEqual(y1.toArray().map(\.bitPattern), y2.toArray().map(\.bitPattern))
            let out: UnsafePointer<Float>? = relu ? UnsafePointer(y1.data) : nil
            var a1 = sumsA, a2 = sumsA, b1 = sumsB, b2 = sumsB
            batchNormBackwardSums(x: r.data, dy: dy.data, mean: mean, invStd: invStd, n: n, c: c, s: s, sumDy: &a1, sumDyXhat: &b1, reluOutput: out)
            batchNormRectifiedBackwardSums(x: x.data, dy: dy.data, mean: mean, invStd: invStd, n: n, c: c, s: s, sumDy: &a2, sumDyXhat: &b2, reluOutput: out)
            XCTAssertEqual(a1, a2); XCTAssertEqual(b1, b2)
            let md = UnsafeMutablePointer<Float>.allocate(capacity: 2), mdx = UnsafeMutablePointer<Float>.allocate(capacity: 2)
            defer { md.deallocate(); mdx.deallocate() }
            md[0] = 0.05; md[1] = -0.02; mdx[0] = 0.3; mdx[1] = -0.1
            for centred in [false, true] {
                let d1 = Tensor(shape: [count]), d2 = Tensor(shape: [count]), masked = Tensor(shape: [count])
                let pmd: UnsafePointer<Float>? = centred ? UnsafePointer(md) : nil
                let pmdx: UnsafePointer<Float>? = centred ? UnsafePointer(mdx) : nil
                batchNormBackwardInput(x: r.data, dy: dy.data, dx: d1.data, mean: mean, invStd: invStd, gamma: gamma,
                                       meanDy: pmd, meanDyXhat: pmdx, n: n, c: c, s: s, reluOutput: out)
                reluBackward(y: r.data, dy: d1.data, dx: masked.data, count: count)
                batchNormRectifiedBackwardInput(x: x.data, dy: dy.data, dx: d2.data, mean: mean, invStd: invStd, gamma: gamma,
                                                meanDy: pmd, meanDyXhat: pmdx, n: n, c: c, s: s, reluOutput: out)
                XCTAssertEqual(masked.toArray().map(\.bitPattern), d2.toArray().map(\.bitPattern), "relu \(relu) centred \(centred)")
                XCTAssertTrue(masked.toArray().contains(0) && masked.toArray().contains { $0 != 0 })
            }
        }
    }
}
