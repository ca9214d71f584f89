import XCTest
import Foundation
import CnnCore
import CnnLayers

/// Two in-process "ranks" that meet at a barrier and sum their vectors.
final class TwoRankHub: @unchecked Sendable {
    private let condition = NSCondition()
    private var slots: [[Float]] = [[], []]
    private var arrived = 0
    private var generation = 0
    private var result: [Float] = []
    private(set) var calls = 0

    func allreduce(rank: Int, _ values: UnsafeMutableBufferPointer<Float>) {
        condition.lock()
        defer { condition.unlock() }
        slots[rank] = Array(values)
        arrived += 1
        if arrived == 2 {
            precondition(slots[0].count == slots[1].count, "ranks reduced different lengths")
            result = zip(slots[0], slots[1]).map { $0 + $1 }
            arrived = 0
            generation += 1
            calls += 1
            condition.broadcast()
        } else {
            let g = generation
            while generation == g { condition.wait() }
        }
        for i in 0..<values.count { values[i] = result[i] }
    }
}

final class RankReducer: StatisticsReducer {
    let hub: TwoRankHub
    let rank: Int
    init(hub: TwoRankHub, rank: Int) { self.hub = hub; self.rank = rank }
    func allreduceSum(_ values: UnsafeMutableBufferPointer<Float>) { hub.allreduce(rank: rank, values) }
}

final class SyncBatchNormTests: XCTestCase {
    /// Everything one rank produced.
    struct RankResult {
        var output: [Float] = []
        var gradInput: [Float] = []
        var gradients: [Float] = []
        var buffers: [Float] = []
    }

    func makeStore(_ layer: Layer) -> ParameterStore {
        let store = ParameterStore(root: layer)
        store.initialize(seed: 1)
        randomizeParameters(store, seed: 77)
        return store
    }

    func runSplit(make: () throws -> Layer, shape: [Int], split: Int, offset: Float = 3, scale: Float = 2,
                  accuracy: Float = 1e-5, arithmetic: GemmArithmetic = .fp32, forwardCollectives: Int = 2) throws {
        let total = shape[0]
        let per = shape.dropFirst().reduce(1, *)
        let x = randomTensor(shape, seed: 31, scale: scale, offset: offset)
        let dy = randomTensor(shape, seed: 32)

        // One BatchNorm over the whole batch.
        let whole = try make()
        let wholeStore = makeStore(whole)
        let context = ExecutionContext(training: true)
        context.arithmetic = arithmetic
        let yWhole = whole.forward(x, context: context).toArray()
        wholeStore.zeroGradients()
        let dxWhole = whole.backward(dy, context: context).toArray()

        // Two ranks with different local batch sizes, on two threads.
        let hub = TwoRankHub()
        let sizes = [split, total - split]
        let layers = try [make(), make()]
        let stores = layers.map(makeStore)
        final class Results: @unchecked Sendable { var value = [RankResult(), RankResult()] }
        let box = Results()
        let done = DispatchGroup()
        let lock = NSLock()
        for rank in 0..<2 {
            let start = rank == 0 ? 0 : split
            var localShape = shape
            localShape[0] = sizes[rank]
            let xr = Tensor(shape: localShape, values: Array(x.toArray()[(start * per)..<((start + sizes[rank]) * per)]))
            let dyr = Tensor(shape: localShape, values: Array(dy.toArray()[(start * per)..<((start + sizes[rank]) * per)]))
            let layer = layers[rank], store = stores[rank]
            let ctx = ExecutionContext(training: true, sampleOffset: start)
            ctx.arithmetic = arithmetic
            ctx.statisticsReducer = RankReducer(hub: hub, rank: rank)
            done.enter()
            let thread = Thread {
                var r = RankResult()
                r.output = layer.forward(xr, context: ctx).toArray()
                store.zeroGradients()
                r.gradInput = layer.backward(dyr, context: ctx).toArray()
                r.gradients = store.gradients.toArray()
                r.buffers = store.buffers.toArray()
                lock.lock(); box.value[rank] = r; lock.unlock()
                done.leave()
            }
            thread.start()
        }
        XCTAssertEqual(done.wait(timeout: .now() + 30), .success, "ranks deadlocked")
        XCTAssertEqual(hub.calls, forwardCollectives + 1, "forward reduces sums then squares (bf16 copy: both at once); backward once")

        let results = box.value
        assertClose(results[0].output + results[1].output, yWhole, accuracy: accuracy, "outputs")
        assertClose(results[0].gradInput + results[1].gradInput, dxWhole, accuracy: accuracy, "input gradients")
        let summed = zip(results[0].gradients, results[1].gradients).map { $0 + $1 }
        assertClose(summed, wholeStore.gradients.toArray(), accuracy: accuracy, "parameter gradients")
        for r in results {
            assertClose(r.buffers, wholeStore.buffers.toArray(), accuracy: accuracy, "running statistics")
        }
    }

    func testSynchronizedBatchNorm2dMatchesWholeBatch() throws {
        try runSplit(make: { try BatchNorm2d(3) }, shape: [16, 3, 2, 3], split: 7)
    }

    func testSynchronizedBatchNorm1dMatchesWholeBatch() throws {
        try runSplit(make: { try BatchNorm1d(4, affine: false) }, shape: [16, 4], split: 7)
        try runSplit(make: { try BatchNorm1d(4) }, shape: [16, 4], split: 9)
    }

    func testSynchronizedBatchNormReLUFusedMatchesWholeBatch() throws {
        // BatchNorm with the ReLU after it fused: the ranks reduce sums of the masked dL/dy.
        for affine in [true, false] {
            try runSplit(make: {
                let pair = Sequential([try BatchNorm2d(3, affine: affine), ReLU()])
                XCTAssertEqual(MemoryPlan.apply(to: pair, inputShape: [16, 3, 2, 3]).fusedReLUs, 1)
                return pair
            }, shape: [16, 3, 2, 3], split: 7, offset: 0.3)
        }
    }

    func testSynchronizedReLUBatchNormFusedMatchesWholeBatch() throws {
        // The ReLU before the BatchNorm fused (alone and with the one after): the ranks reduce
        // sums of max(x, 0), and dL/dx is masked by x > 0.
        for trailing in [false, true] {
            try runSplit(make: {
                let chain = Sequential([try AvgPool2d(kernelSize: 1), ReLU(), try BatchNorm2d(3)] + (trailing ? [ReLU()] : []))
                let plan = MemoryPlan.apply(to: chain, inputShape: [16, 3, 2, 3])
                XCTAssertEqual(plan.fusedInputReLUs, 1); XCTAssertEqual(plan.fusedReLUs, trailing ? 1 : 0)
                return chain
            }, shape: [16, 3, 2, 3], split: 7, offset: 0.3)
        }
    }

    /// bf16 arithmetic, the BatchNorm keeping the convolution's output as bf16 with both ReLUs
    /// fused: each rank rounds its own elements (elementwise, so as the whole batch does) and
    /// reduces Σx and Σx² of the rounded values, as hi + lo Floats, in one collective; what
    /// differs is the order of sums (statistics, the convolution's dW over images) and the Float
    /// rounding of the summed hi parts, a few ulps of values of order 1-10: 1e-4.
    func testSynchronizedBatchNormWithBF16InputMatchesWholeBatch() throws {
        for kernel in Self.bf16Kernels {
            try runSplit(make: Self.convReLUBatchNormReLU, shape: [16, 3, 2, 3], split: 7, offset: 0.3, accuracy: 1e-4,
                         arithmetic: GemmArithmetic(.bf16, bf16Kernel: kernel), forwardCollectives: 1)
        }
    }

    /// The same with |mean| ≫ std (inputs 20 ± 1, so the convolution's outputs ~60 ± 2): the
    /// hi parts of Σx² summed as Floats lose up to 2⁻²⁴ of it, ~2⁻²³·(1 + mean²/var) of the
    /// variance (here ~1e-4), which the outputs and the running variance show to about that
    /// (rounding the inputs to bf16 changes the variance by ~1e-2 here); 1e-3.
    func testSynchronizedBatchNormWithBF16InputLargeMean() throws {
        for kernel in Self.bf16Kernels {
            try runSplit(make: Self.convReLUBatchNormReLU, shape: [16, 3, 2, 3], split: 7, offset: 20, scale: 1, accuracy: 1e-3,
                         arithmetic: GemmArithmetic(.bf16, bf16Kernel: kernel), forwardCollectives: 1)
        }
    }

    static var bf16Kernels: [BF16Kernel] { CPUFeatures.current.bf16GEMM ? [.portable, .native] : [.portable] }

    static func convReLUBatchNormReLU() throws -> Layer {
        // (runSplit's dL/dy has the input's shape: a convolution keeping the channels.)
        let chain = Sequential([try Conv2D(3, 3, kernelSize: 1), ReLU(), try BatchNorm2d(3), ReLU()])
        let plan = MemoryPlan.apply(to: chain, inputShape: [16, 3, 2, 3])
        XCTAssertEqual(plan.bf16InputBatchNorms, 1); XCTAssertEqual(plan.fusedInputReLUs, 1)
        return chain
    }

    func testSynchronizedBatchNormLargeMean() throws {
        // |mean| ≫ std: the global mean must not lose precision in the Float reduction.
        try runSplit(make: { try BatchNorm2d(2) }, shape: [16, 2, 3, 3], split: 7, offset: 1000, scale: 1, accuracy: 1e-4)
    }
}
