import XCTest
import CnnCore
import CnnLayers

/// BatchNorm keeping its input as bf16 (bf16 arithmetic, input a convolution's output): the
/// layer is, bit for bit, BatchNorm of the convolution's output rounded to bf16 (rectified
/// first when the ReLU between them is fused), and backward the exact gradient of that passed
/// straight through the rounding. Checked against the layers run one by one on the rounded
/// tensor, and in fp32 arithmetic nothing changes.
final class BatchNormBF16InputTests: XCTestCase {
    override func tearDown() {
        ComputeThreads.count = 1
        super.tearDown()
    }

    struct Bits: Equatable {
        var output: [UInt32]
        var gradInput: [UInt32]
        var gradients: [UInt32]
        var buffers: [UInt32]
    }

    static let portable = GemmArithmetic(.bf16, bf16Kernel: .portable)

    static func setParameters(_ store: ParameterStore, seed: UInt64) {
        randomizeParameters(store, seed: seed)
        var rng = SplitMix64(seed: seed + 1)
        let bc = (store.buffers.count - 1) / 2
        for i in 0..<bc {
            store.buffers[i] = rng.nextUnitFloat() * 0.6
            store.buffers[bc + i] = 0.5 + rng.nextUnitFloat()
        }
    }

    /// [conv, ReLU?, BatchNorm2d, ReLU?] planned, in `arithmetic`; two steps, the last one's bits.
    func runChain(channels: (Int, Int), kernel: Int, shape: [Int], before: Bool, after: Bool, training: Bool,
                  arithmetic: GemmArithmetic, plan: Bool = true, threads: Int = 1) throws -> (Bits, MemoryPlan?) {
        ComputeThreads.count = threads
        defer { ComputeThreads.count = 1 }
        let conv = try Conv2D(channels.0, channels.1, kernelSize: kernel, padding: kernel / 2)
        var layers: [Layer] = [conv]
        if before { layers.append(ReLU()) }
        layers.append(try BatchNorm2d(channels.1))
        if after { layers.append(ReLU()) }
        let chain = Sequential(layers)
        let memoryPlan = plan ? MemoryPlan.apply(to: chain, inputShape: shape) : nil
        let store = ParameterStore(root: chain)
        store.initialize(seed: 1)
        Self.setParameters(store, seed: 5)
        let x = randomTensor(shape, seed: 21, scale: 1.5, offset: 0.1)
        let dy = randomTensor(try chain.outputShape(for: shape), seed: 22)
        let context = ExecutionContext(training: training)
        context.arithmetic = arithmetic
        var bits = Bits(output: [], gradInput: [], gradients: [], buffers: [])
        for _ in 0..<2 {
            store.zeroGradients()
            bits.output = chain.forward(x, context: context).toArray().map(\.bitPattern)
            bits.gradInput = chain.backward(dy, context: context).toArray().map(\.bitPattern)
            bits.gradients = store.gradients.toArray().map(\.bitPattern)
            bits.buffers = store.buffers.toArray().map(\.bitPattern)
        }
        return (bits, memoryPlan)
    }

    /// The same computation one layer at a time with the rounding made explicit: the convolution
    /// alone (bf16 GEMMs), its output z rounded (of max(z, 0) with `before`), BatchNorm[, ReLU]
    /// unplanned in fp32 on that tensor, its dL/dx masked by z > 0 with `before`, and the
    /// convolution's backward from that.
    func runReference(channels: (Int, Int), kernel: Int, shape: [Int], before: Bool, after: Bool, training: Bool,
                      arithmetic: GemmArithmetic, threads: Int = 1) throws -> Bits {
        // The convolution's backward-weights splits images over threads: same thread count as the run.
        ComputeThreads.count = threads
        defer { ComputeThreads.count = 1 }
        let conv = try Conv2D(channels.0, channels.1, kernelSize: kernel, padding: kernel / 2)
        let norm = try BatchNorm2d(channels.1)
        let tail = Sequential(after ? [norm, ReLU()] : [norm])
        // The same parameters as `runChain`'s: one store over the same layer order.
        var layers: [Layer] = [conv]
        if before { layers.append(ReLU()) }
        layers.append(norm)
        if after { layers.append(ReLU()) }
        let all = Sequential(layers)
        let store = ParameterStore(root: all)
        store.initialize(seed: 1)
        Self.setParameters(store, seed: 5)
        let x = randomTensor(shape, seed: 21, scale: 1.5, offset: 0.1)
        let dy = randomTensor(try all.outputShape(for: shape), seed: 22)
        let convContext = ExecutionContext(training: training)
        convContext.arithmetic = arithmetic
        let fp32 = ExecutionContext(training: training)
        var bits = Bits(output: [], gradInput: [], gradients: [], buffers: [])
        for _ in 0..<2 {
            store.zeroGradients()
            let z = conv.forward(x, context: convContext)
            let rounded = Tensor(shape: z.shape)
            for i in 0..<z.count {
                let v = before ? (z[i] > 0 ? z[i] : 0) : z[i]
                rounded[i] = Float(bitPattern: UInt32(bf16KeepingNonzero(v)) << 16)
            }
            bits.output = tail.forward(rounded, context: fp32).toArray().map(\.bitPattern)
            let dRounded = tail.backward(dy, context: fp32)
            let dz = Tensor(shape: z.shape)
            for i in 0..<z.count { dz[i] = before ? (z[i] > 0 ? dRounded[i] : 0) : dRounded[i] }
            bits.gradInput = conv.backward(dz, context: convContext).toArray().map(\.bitPattern)
            bits.gradients = store.gradients.toArray().map(\.bitPattern)
            bits.buffers = store.buffers.toArray().map(\.bitPattern)
        }
        return bits
    }

    func assertMatchesReference(channels: (Int, Int), kernel: Int, shape: [Int], threads: [Int] = [1],
                                file: StaticString = #filePath, line: UInt = #line) throws {
        for (before, after) in [(false, false), (true, false), (false, true), (true, true)] {
            for training in [true, false] {
                let what = "\(formatShape(shape)) ReLU before \(before) after \(after) training \(training)"
                for t in threads {
                    let reference = try runReference(channels: channels, kernel: kernel, shape: shape, before: before, after: after,
                                                     training: training, arithmetic: Self.portable, threads: t)
                    let (bits, plan) = try runChain(channels: channels, kernel: kernel, shape: shape, before: before, after: after,
                                                    training: training, arithmetic: Self.portable, threads: t)
                    XCTAssertEqual(plan?.bf16InputBatchNorms, 1, what, file: file, line: line)
                    XCTAssertEqual(bits.output, reference.output, "values \(what) threads \(t)", file: file, line: line)
                    XCTAssertEqual(bits.gradInput, reference.gradInput, "dL/dx \(what) threads \(t)", file: file, line: line)
                    XCTAssertEqual(bits.gradients, reference.gradients, "parameter gradients \(what) threads \(t)", file: file, line: line)
                    XCTAssertEqual(bits.buffers, reference.buffers, "running statistics \(what) threads \(t)", file: file, line: line)
                }
                // Not vacuous: keeping fp32 gives other bits (the rounding is there).
                let (fp32Kept, _) = try runChain(channels: channels, kernel: kernel, shape: shape, before: before, after: after,
                                                 training: training, arithmetic: Self.portable, plan: false)
                let reference = try runReference(channels: channels, kernel: kernel, shape: shape, before: before, after: after,
                                                 training: training, arithmetic: Self.portable)
                XCTAssertNotEqual(fp32Kept.output, reference.output, what, file: file, line: line)
            }
        }
    }

    func testMatchesLayersOnRoundedInput() throws {
        // Planes of 25 (SIMD8 tail) and 64.
        try assertMatchesReference(channels: (3, 4), kernel: 3, shape: [4, 3, 5, 5])
        try assertMatchesReference(channels: (2, 5), kernel: 1, shape: [3, 2, 8, 8])
    }

    func testThreadedMatchesLayersOnRoundedInput() throws {
        // 2^21 elements and more: BatchNorm splits channels over the threads; planes of 3x1001.
        try assertMatchesReference(channels: (2, 7), kernel: 1, shape: [100, 2, 3, 1001], threads: [1, 2])
    }

    /// With `recompute` the BatchNorm + ReLU output read by the next convolution is written
    /// again from the bf16 copy before that convolution's backward: same bits as held.
    func testRecomputeFromTheBF16Copy() throws {
        func bits(recompute: Bool) throws -> Bits {
            // Two recomputed BatchNorms: the second overwrites the first's output in the shared buffer.
            let chain = Sequential([try Conv2D(3, 6, kernelSize: 3, padding: 1), ReLU(), try BatchNorm2d(6), ReLU(),
                                    try Conv2D(6, 5, kernelSize: 3, padding: 1), try BatchNorm2d(5), ReLU(),
                                    try Conv2D(5, 4, kernelSize: 1)])
            let shape = [4, 3, 6, 6]
            let plan = MemoryPlan.apply(to: chain, inputShape: shape, recompute: recompute)
            XCTAssertEqual(plan.bf16InputBatchNorms, 2)
            XCTAssertEqual(plan.recomputedBatchNorms, recompute ? 2 : 0)
            let store = ParameterStore(root: chain)
            store.initialize(seed: 1)
            Self.setParameters(store, seed: 5)
            let x = randomTensor(shape, seed: 21, scale: 1.5, offset: 0.1)
            let dy = randomTensor(try chain.outputShape(for: shape), seed: 22)
            let context = ExecutionContext(training: true)
            context.arithmetic = Self.portable
            store.zeroGradients()
            let y = chain.forward(x, context: context).toArray().map(\.bitPattern)
            let dx = chain.backward(dy, context: context).toArray().map(\.bitPattern)
            return Bits(output: y, gradInput: dx, gradients: store.gradients.toArray().map(\.bitPattern),
                        buffers: store.buffers.toArray().map(\.bitPattern))
        }
        let held = try bits(recompute: false)
        XCTAssertTrue(held.gradInput.contains { Float(bitPattern: $0) != 0 })
        XCTAssertEqual(held, try bits(recompute: true))
    }

    /// In fp32 arithmetic the plan changes nothing: bits as without a plan.
    func testFP32Unchanged() throws {
        for (before, after) in [(false, false), (true, true)] {
            for training in [true, false] {
                let (planned, plan) = try runChain(channels: (3, 4), kernel: 3, shape: [4, 3, 5, 5], before: before, after: after,
                                                   training: training, arithmetic: .fp32)
                XCTAssertEqual(plan?.bf16InputBatchNorms, 1)
                let (unplanned, _) = try runChain(channels: (3, 4), kernel: 3, shape: [4, 3, 5, 5], before: before, after: after,
                                                  training: training, arithmetic: .fp32, plan: false)
                XCTAssertEqual(planned, unplanned)
            }
        }
    }

    /// The rounding: nearest even on ties, NaN stays NaN, infinities stay, a nonzero never
    /// becomes zero, and the SIMD8 pass writes the scalar function's bits.
    func testRoundingKeepsNonzeroAndMatchesScalar() {
        XCTAssertEqual(bf16KeepingNonzero(1), 0x3F80)
        XCTAssertEqual(bf16KeepingNonzero(Float(bitPattern: 0x3F80_8000)), 0x3F80)   // tie, even below
        XCTAssertEqual(bf16KeepingNonzero(Float(bitPattern: 0x3F81_8000)), 0x3F82)   // tie, even above
        XCTAssertEqual(bf16KeepingNonzero(Float(bitPattern: 0x3F80_8001)), 0x3F81)
        XCTAssertEqual(bf16KeepingNonzero(.infinity), 0x7F80)
        XCTAssertEqual(bf16KeepingNonzero(.greatestFiniteMagnitude), 0x7F80)
        XCTAssertEqual(bf16KeepingNonzero(-0.0), 0x8000)
        XCTAssertEqual(bf16KeepingNonzero(0), 0)
        XCTAssertEqual(bf16KeepingNonzero(Float(bitPattern: 0x7F80_0001)) & 0x7FC0, 0x7FC0)   // quiet NaN, not infinity
        XCTAssertEqual(bf16KeepingNonzero(.leastNonzeroMagnitude), 0x0001)
        XCTAssertEqual(bf16KeepingNonzero(-.leastNonzeroMagnitude), 0x8001)
        XCTAssertEqual(bf16KeepingNonzero(Float(bitPattern: 0x0001_8000)), 0x0002)   // subnormals rounded, not flushed
        // Through the pass that writes the copy, rectified and not, every tail length.
        var special: [Float] = [0, -0.0, .nan, .infinity, -.infinity, .leastNonzeroMagnitude, -.leastNonzeroMagnitude,
                                Float(bitPattern: 0x3F80_8000), Float(bitPattern: 0x3F81_8000), 1e-40, -1e-40, 3.14159]
        var rng = SplitMix64(seed: 3)
        while special.count < 3 * 2 * 37 { special.append((rng.nextUnitFloat() - 0.5) * 100) }
        let x = Tensor(shape: [special.count], values: special)
        let out = UnsafeMutablePointer<UInt16>.allocate(capacity: special.count)
        defer { out.deallocate() }
        var sums = [Double](repeating: 0, count: 2)
        for rectify in [false, true] {
            batchNormRoundBF16ChannelSums(x: x.data, rectify: rectify, bf16: out, n: 3, c: 2, s: 37, sums: &sums)
            for i in special.indices {
                let v = rectify ? (special[i] > 0 ? special[i] : 0) : special[i]
                XCTAssertEqual(out[i], bf16KeepingNonzero(v), "element \(i) rectify \(rectify)")
                XCTAssertEqual(rectify && v > 0, rectify && Int16(bitPattern: out[i]) > 0)
            }
        }
    }
}
