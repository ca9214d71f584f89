import XCTest
import Foundation
import CnnCore
import CnnLayers
import CnnModels

/// A DenseNet-shaped model small enough to step often: a stem, a dense block of three layers
/// (growth 3), a transition, and a dense block of two layers followed directly by a ReLU in the
/// same chain (the case where an in-place ReLU would overwrite the run's shared tensor). 9x9
/// input: planes of 81 and 16 elements (SIMD tails).
private func smallDenseNet() throws -> Layer {
    func dense(_ c: Int) throws -> Concat {
        Concat(branches: [("input", Identity()),
                          ("new", Sequential([try BatchNorm2d(c), ReLU(), try Conv2D(c, 6, kernelSize: 1, bias: false),
                                              try BatchNorm2d(6), ReLU(), try Conv2D(6, 3, kernelSize: 3, padding: 1, bias: false)]))])
    }
    return Sequential([
        try Conv2D(3, 6, kernelSize: 3, padding: 1, bias: false), try BatchNorm2d(6), ReLU(),
        Sequential([try dense(6), try dense(9), try dense(12)]),
        Sequential([try BatchNorm2d(15), ReLU(), try Conv2D(15, 8, kernelSize: 1, bias: false), try AvgPool2d(kernelSize: 2)]),
        Sequential([try dense(8), try dense(11), ReLU()]),
        GlobalAvgPool2d(), Flatten(), try Linear(14, 5),
    ])
}

/// Everything a few SGD steps produce, bitwise.
private struct Bits: Equatable {
    var logits: [UInt32] = []
    var evalLogits: [UInt32] = []
    var inputGradient: [UInt32] = []
    var gradients: [UInt32] = []
    var buffers: [UInt32] = []
    var parameters: [UInt32] = []

    /// The fields that differ (empty: same bits), so a failure names them instead of printing arrays.
    func differences(from other: Bits) -> [String] {
        var names: [String] = []
        if logits != other.logits { names.append("logits") }
        if evalLogits != other.evalLogits { names.append("evaluation logits") }
        if inputGradient != other.inputGradient { names.append("dL/dx") }
        if gradients != other.gradients { names.append("parameter gradients") }
        if buffers != other.buffers { names.append("running statistics") }
        if parameters != other.parameters { names.append("parameters after the steps") }
        return names
    }
}

private func assertSameBits(_ a: Bits, _ b: Bits, _ label: String, file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(a.differences(from: b), [], label, file: file, line: line)
}

/// `steps` training steps (forward, backward from a fixed dL/dy, plain SGD update) of `root`
/// on `x`, then an evaluation forward; `reducer` makes BatchNorm synchronized.
private func sgdSteps(_ root: Layer, x: Tensor, dy: Tensor, steps: Int = 3, reducer: StatisticsReducer? = nil,
                      sampleOffset: Int = 0) -> Bits {
    let store = ParameterStore(root: root)
    store.initialize(seed: 5)
    var rng = SplitMix64(seed: 8)
    // Perturbed so BatchNorm's γ, β are not exactly 1, 0.
    for i in 0..<store.parameters.count { store.parameters[i] += 0.1 * (rng.nextUnitFloat() - 0.5) }
    var bits = Bits()
    for step in 0..<steps {
        let context = ExecutionContext(training: true, seed: 4, step: step, sampleOffset: sampleOffset)
        context.statisticsReducer = reducer
        store.zeroGradients()
        bits.logits = root.forward(x, context: context).toArray().map(\.bitPattern)
        bits.inputGradient = root.backward(dy, context: context).toArray().map(\.bitPattern)
        bits.gradients = store.gradients.toArray().map(\.bitPattern)
        for i in 0..<store.parameters.count { store.parameters[i] -= 0.05 * store.gradients[i] }
    }
    let eval = ExecutionContext(training: false)
    bits.evalLogits = root.forward(x, context: eval).toArray().map(\.bitPattern)
    bits.buffers = store.buffers.toArray().map(\.bitPattern)
    bits.parameters = store.parameters.toArray().map(\.bitPattern)
    return bits
}

private func randomTensor(_ shape: [Int], seed: UInt64) -> Tensor {
    var rng = SplitMix64(seed: seed)
    let t = Tensor(shape: shape)
    for i in 0..<t.count { t[i] = rng.nextUnitFloat() * 2 - 1 }
    return t
}

/// Two in-process ranks meeting at a barrier to sum their statistics.
private final class Hub: @unchecked Sendable {
    private let condition = NSCondition()
    private var slots: [[Float]] = [[], []]
    private var arrived = 0, generation = 0
    private var result: [Float] = []

    func allreduce(rank: Int, _ values: UnsafeMutableBufferPointer<Float>) {
        condition.lock()
        defer { condition.unlock() }
        slots[rank] = Array(values)
        arrived += 1
        if arrived == 2 {
            result = zip(slots[0], slots[1]).map { $0 + $1 }
            arrived = 0
            generation += 1
            condition.broadcast()
        } else {
            let g = generation
            while generation == g { condition.wait() }
        }
        for i in 0..<values.count { values[i] = result[i] }
    }
}

private final class Reducer: StatisticsReducer {
    let hub: Hub, rank: Int
    init(hub: Hub, rank: Int) { self.hub = hub; self.rank = rank }
    func allreduceSum(_ values: UnsafeMutableBufferPointer<Float>) { hub.allreduce(rank: rank, values) }
}

/// Concatenation without copies (DenseNet's shared storage): the same bits as the copying
/// layout in every setting, and the copies' memory gone from the account.
final class ConcatSharingTests: XCTestCase {
    override func tearDown() { ComputeThreads.count = 1 }

    func testSharedRunsMatchCopyingBitwise() throws {
        let input = [4, 3, 9, 9]
        let x = randomTensor(input, seed: 1), dy = randomTensor([4, 5], seed: 2)
        for threads in [1, 2] {
            ComputeThreads.count = threads
            // No plan at all: every Concat copies. (Thread counts may differ in bits: convolutions
            // sum dW over image ranges per thread.)
            let reference = sgdSteps(try smallDenseNet(), x: x, dy: dy)
            XCTAssertTrue(reference.inputGradient.contains { Float(bitPattern: $0) != 0 }, "vacuous: dL/dx all zero")
            for (fuse, recompute) in [(false, false), (true, false), (true, true)] {
                let label = "threads \(threads) fuse \(fuse) recompute \(recompute)"
                let copying = try smallDenseNet(), shared = try smallDenseNet()
                let copyPlan = MemoryPlan.apply(to: copying, inputShape: input, fuse: fuse, recompute: recompute, shareConcat: false)
                let plan = MemoryPlan.apply(to: shared, inputShape: input, fuse: fuse, recompute: recompute)
                XCTAssertEqual(copyPlan.sharedConcats, 0, label)
                XCTAssertEqual(plan.sharedConcats, 5, label)
                XCTAssertEqual(plan.concatRuns, 2, label)
                if recompute { XCTAssertGreaterThan(plan.recomputedBatchNorms, 5, label) }
                // Unfused, the ReLU after the second run runs in place only in the copying layout.
                XCTAssertEqual(copyPlan.inPlaceReLUs - plan.inPlaceReLUs, 1, label)
                let a = sgdSteps(copying, x: x, dy: dy), b = sgdSteps(shared, x: x, dy: dy)
                assertSameBits(a, reference, "copying, " + label)
                assertSameBits(b, reference, "shared, " + label)
                // Another batch size than planned: the run's tensors grow.
                let x6 = randomTensor([6, 3, 9, 9], seed: 3), dy6 = randomTensor([6, 5], seed: 4)
                assertSameBits(sgdSteps(shared, x: x6, dy: dy6, steps: 2), sgdSteps(copying, x: x6, dy: dy6, steps: 2), "batch 6, " + label)
            }
        }
    }

    /// Large enough (>= 2^21 elements per BatchNorm) that the strided BatchNorm kernels and the
    /// gradient sums split over two threads.
    func testSharedRunsMatchCopyingOnTwoThreadsLarge() throws {
        ComputeThreads.count = 2
        let input = [16, 3, 128, 128]
        let x = randomTensor(input, seed: 11), dy = randomTensor([16, 5], seed: 12)
        for recompute in [false, true] {
            let copying = try smallDenseNet(), shared = try smallDenseNet()
            MemoryPlan.apply(to: copying, inputShape: input, recompute: recompute, shareConcat: false)
            XCTAssertEqual(MemoryPlan.apply(to: shared, inputShape: input, recompute: recompute).sharedConcats, 5)
            assertSameBits(sgdSteps(shared, x: x, dy: dy, steps: 1), sgdSteps(copying, x: x, dy: dy, steps: 1),
                           "recompute \(recompute)")
        }
    }

    func testDenseNet121SharedMatchesCopyingAndHoldsLess() throws {
        let input = [2, 3, 32, 32]
        let x = randomTensor(input, seed: 5), dy = randomTensor([2, 10], seed: 6)
        for recompute in [false, true] {
            let copying = try ZooModel.densenet121.build(input: [3, 32, 32], classes: 10)
            let shared = try ZooModel.densenet121.build(input: [3, 32, 32], classes: 10)
            let copyPlan = MemoryPlan.apply(to: copying, inputShape: input, recompute: recompute, shareConcat: false)
            let plan = MemoryPlan.apply(to: shared, inputShape: input, recompute: recompute)
            XCTAssertEqual(plan.sharedConcats, 6 + 12 + 24 + 16)
            XCTAssertEqual(plan.concatRuns, 4)
            assertSameBits(sgdSteps(copying, x: x, dy: dy, steps: 2), sgdSteps(shared, x: x, dy: dy, steps: 2), "recompute \(recompute)")
            // The account: the Concats' own outputs are gone but one block-wide tensor per run.
            let held = MemoryAccount(root: copying, inputShape: input, plan: copyPlan).activations
            let less = MemoryAccount(root: shared, inputShape: input, plan: plan).activations
            XCTAssertEqual(held - less, (plan.sharedConcatElements - plan.concatBlockElements) * MemoryLayout<Float>.stride)
            XCTAssertGreaterThan(plan.sharedConcatElements, 5 * plan.concatBlockElements)
        }
        // Planning again without sharing gives every Concat its own output back.
        let root = try ZooModel.densenet121.build(input: [3, 32, 32], classes: 10)
        let first = MemoryPlan.apply(to: root, inputShape: input)
        XCTAssertEqual(first.sharedConcats, 58)
        let again = MemoryPlan.apply(to: root, inputShape: input, shareConcat: false)
        XCTAssertEqual(again.sharedConcats, 0)
        let plain = try ZooModel.densenet121.build(input: [3, 32, 32], classes: 10)
        assertSameBits(sgdSteps(root, x: x, dy: dy, steps: 1), sgdSteps(plain, x: x, dy: dy, steps: 1), "replanned")
        // At 224, batch 16 (planned only): what the block-wide tensors replace.
        let big = try ZooModel.densenet121.build(input: [3, 224, 224], classes: 1000)
        let p224 = MemoryPlan.apply(to: big, inputShape: [16, 3, 224, 224])
        print("shared concat densenet121 batch 16: \(p224.sharedConcats) Concats' outputs of "
              + "\((p224.sharedConcatElements * 4) >> 20) MiB in \(p224.concatRuns) block-wide tensors of "
              + "\((p224.concatBlockElements * 4) >> 20) MiB")
    }

    /// Two ranks with synchronized BatchNorm: each rank's bits equal the copying layout's, and
    /// together they match one rank over the whole batch.
    func testTwoRanksSyncBatchNormMatchOneRank() throws {
        let input = [6, 3, 9, 9]
        let x = randomTensor(input, seed: 7), dy = randomTensor([6, 5], seed: 8)
        let whole = try smallDenseNet()
        MemoryPlan.apply(to: whole, inputShape: input)
        let one = sgdSteps(whole, x: x, dy: dy, steps: 1)
        let per = 3 * 9 * 9
        func part(_ t: Tensor, _ rank: Int, _ size: Int) -> Tensor {
            let shape = [size] + Array(t.shape.dropFirst()), each = t.count / t.shape[0]
            return Tensor(shape: shape, values: Array(t.toArray()[(rank * 3 * each)..<((rank * 3 + size) * each)]))
        }
        XCTAssertEqual(per * 6, x.count)
        var results: [[Bits]] = []
        for share in [true, false] {
            let hub = Hub()
            let models = try [smallDenseNet(), smallDenseNet()]
            for m in models { MemoryPlan.apply(to: m, inputShape: [3, 3, 9, 9], shareConcat: share) }
            final class Box: @unchecked Sendable { var value = [Bits(), Bits()] }
            let box = Box(), lock = NSLock(), done = DispatchGroup()
            for rank in 0..<2 {
                let xr = part(x, rank, 3), dyr = part(dy, rank, 3), model = models[rank]
                done.enter()
                Thread {
                    let bits = sgdSteps(model, x: xr, dy: dyr, steps: 1, reducer: Reducer(hub: hub, rank: rank), sampleOffset: rank * 3)
                    lock.lock(); box.value[rank] = bits; lock.unlock()
                    done.leave()
                }.start()
            }
            XCTAssertEqual(done.wait(timeout: .now() + 60), .success, "ranks deadlocked")
            results.append(box.value)
        }
        for rank in 0..<2 { assertSameBits(results[0][rank], results[1][rank], "shared vs copying, rank \(rank)") }
        let floats = { (u: [UInt32]) in u.map(Float.init(bitPattern:)) }
        let logits = floats(results[0][0].logits) + floats(results[0][1].logits)
        for (a, b) in zip(logits, floats(one.logits)) { XCTAssertEqual(a, b, accuracy: 1e-4) }
        let gradients = zip(floats(results[0][0].gradients), floats(results[0][1].gradients)).map { $0 + $1 }
        let scale = floats(one.gradients).map(abs).max() ?? 1
        for (a, b) in zip(gradients, floats(one.gradients)) { XCTAssertEqual(a, b, accuracy: 1e-4 * scale) }
        XCTAssertEqual(results[0][0].buffers.count, one.buffers.count)
        for (a, b) in zip(floats(results[0][0].buffers), floats(one.buffers)) { XCTAssertEqual(a, b, accuracy: 1e-4) }
    }

    /// Finite differences through a planned shared run (smooth: Tanh, not ReLU): dL/dx and
    /// every parameter gradient.
    func testGradientCheckThroughSharedRun() throws {
        func dense(_ c: Int) throws -> Concat {
            Concat(branches: [("input", Identity()), ("new", Sequential([try BatchNorm2d(c), Tanh(), try Conv2D(c, 2, kernelSize: 3, padding: 1)]))])
        }
        let chain = Sequential([try dense(2), try dense(4), try dense(6)])
        let input = [3, 2, 3, 3]
        XCTAssertEqual(MemoryPlan.apply(to: chain, inputShape: input).sharedConcats, 3)
        let store = ParameterStore(root: chain)
        store.initialize(seed: 3)
        let result = checkGradients(layer: chain, store: store, input: randomTensor(input, seed: 9),
                                    context: ExecutionContext(training: true), maxChecks: 100)
        print("gradient check shared run: \(result)")
        XCTAssertGreaterThan(result.checked, 100)
        XCTAssertLessThan(result.worstError, 2e-3)
    }

    /// A planned model that has run a step is freed with its last reference (no reference cycle
    /// between a run and its blocks).
    func testPlannedModelIsFreed() throws {
        weak var block: Layer?
        do {
            let root = try smallDenseNet()
            XCTAssertEqual(MemoryPlan.apply(to: root, inputShape: [2, 3, 9, 9]).sharedConcats, 5)
            block = ((root as? Sequential)?.layers[3] as? Sequential)?.layers[1]
            XCTAssertNotNil(block)
            _ = sgdSteps(root, x: randomTensor([2, 3, 9, 9], seed: 13), dy: randomTensor([2, 5], seed: 14), steps: 1)
        }
        XCTAssertNil(block)
    }

    /// A channel-prefix view reads the base's storage with the base's image stride, and copies
    /// out in logical order.
    func testChannelPrefixView() {
        let base = Tensor(shape: [2, 3, 1, 2], values: (0..<12).map(Float.init))
        let view = Tensor(shape: [0])
        view.viewChannelPrefix(of: base, channels: 2)
        XCTAssertEqual(view.shape, [2, 2, 1, 2])
        XCTAssertEqual(view.imageStride, 6)
        XCTAssertFalse(view.isContiguous)
        XCTAssertEqual(view.toArray(), [0, 1, 2, 3, 6, 7, 8, 9])
        XCTAssertEqual(view.clone().toArray(), [0, 1, 2, 3, 6, 7, 8, 9])
        view.viewChannelPrefix(of: base, channels: 3)
        XCTAssertTrue(view.isContiguous)
        XCTAssertEqual(view.toArray(), base.toArray())
    }
}
