import XCTest
import CnnCore
import CnnLayers

/// BatchNorm keeping its input as bf16 (bf16 arithmetic, input a convolution's output): the
/// layer is BatchNorm of the convolution's output rounded to bf16 (rectified first when the
/// ReLU between them is fused), and backward the gradient of that passed straight through the
/// rounding. Checked against the layers run one by one on the rounded tensor: bit for bit in
/// evaluation; in training the statistics come from one-pass Double sums of the copy instead
/// of the fp32 layer's two passes, so a few ulps apart (tolerances below). The one-pass kernel
/// is checked on its own: its two implementations give the same bits, and its sums are those
/// of the rounded values. In fp32 arithmetic nothing changes.
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

    /// The largest |a − b| over the largest |b|, of the Floats behind two bit arrays.
    static func relativeDifference(_ a: [UInt32], _ b: [UInt32]) -> Float {
        precondition(a.count == b.count)
        var worst: Float = 0, scale: Float = 0
        for (x, y) in zip(a, b) {
            worst = max(worst, abs(Float(bitPattern: x) - Float(bitPattern: y)))
            scale = max(scale, abs(Float(bitPattern: y)))
        }
        return worst / max(scale, .leastNormalMagnitude)
    }

    /// The fraction of elements whose |a − b| exceeds `relative` times the largest |b|.
    static func fractionApart(_ a: [UInt32], _ b: [UInt32], relative: Float) -> Double {
        precondition(a.count == b.count)
        let scale = b.map { abs(Float(bitPattern: $0)) }.max() ?? 0
        let apart = zip(a, b).filter { abs(Float(bitPattern: $0) - Float(bitPattern: $1)) > relative * scale }.count
        return Double(apart) / Double(max(a.count, 1))
    }

    /// In training, how far the one-pass statistics may take the chain from the fp32 layers
    /// (relative to the largest magnitude). Outputs and running statistics: the mean is the
    /// same or an ulp apart, the variance a few ulps (fp32 partial sums in the reference):
    /// measured ≤ 2e-7, allowed 2e-6. dL/dx and the parameter gradients go on through the
    /// convolution's bf16 backward, which rounds dL/dz to bf16: an ulp of dL/dz moves a rounding
    /// across a tie now and then, changing that operand by 2⁻⁸ relative. dL/dx: the elements such
    /// a flip reaches move by up to ~2⁻⁸ of their size (measured 1.4e-3 on 2^21 elements), all
    /// others stay within 1e-5: at most 1e-2 anywhere and at most 0.1 % of the elements beyond
    /// 1e-5 (measured 6e-5 of them). Parameter gradients sum many such terms (measured 1.6e-5):
    /// 1e-4. Leaving the rounding out moves every output by ~3e-3.
    static let statisticsTolerance: Float = 2e-6
    static let gradientTolerance: Float = 1e-4
    static let flipTolerance: Float = 1e-2
    static let closeTolerance: Float = 1e-5
    static let farFraction = 1e-3

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
                    if training {
                        XCTAssertLessThanOrEqual(Self.relativeDifference(bits.output, reference.output), Self.statisticsTolerance,
                                                 "values \(what) threads \(t)", file: file, line: line)
                        XCTAssertLessThanOrEqual(Self.relativeDifference(bits.buffers, reference.buffers), Self.statisticsTolerance,
                                                 "running statistics \(what) threads \(t)", file: file, line: line)
                        XCTAssertLessThanOrEqual(Self.relativeDifference(bits.gradInput, reference.gradInput), Self.flipTolerance,
                                                 "dL/dx \(what) threads \(t)", file: file, line: line)
                        XCTAssertLessThanOrEqual(Self.fractionApart(bits.gradInput, reference.gradInput, relative: Self.closeTolerance),
                                                 Self.farFraction, "dL/dx \(what) threads \(t)", file: file, line: line)
                        XCTAssertLessThanOrEqual(Self.relativeDifference(bits.gradients, reference.gradients), Self.gradientTolerance,
                                                 "parameter gradients \(what) threads \(t)", file: file, line: line)
                    } else {
                        XCTAssertEqual(bits.output, reference.output, "values \(what) threads \(t)", file: file, line: line)
                        XCTAssertEqual(bits.gradInput, reference.gradInput, "dL/dx \(what) threads \(t)", file: file, line: line)
                        XCTAssertEqual(bits.gradients, reference.gradients, "parameter gradients \(what) threads \(t)", file: file, line: line)
                        XCTAssertEqual(bits.buffers, reference.buffers, "running statistics \(what) threads \(t)", file: file, line: line)
                    }
                }
                // Not vacuous: keeping fp32 gives other bits (the rounding is there), and in
                // training by more than the tolerance.
                let (fp32Kept, _) = try runChain(channels: channels, kernel: kernel, shape: shape, before: before, after: after,
                                                 training: training, arithmetic: Self.portable, plan: false)
                let reference = try runReference(channels: channels, kernel: kernel, shape: shape, before: before, after: after,
                                                 training: training, arithmetic: Self.portable)
                XCTAssertNotEqual(fp32Kept.output, reference.output, what, file: file, line: line)
                if training {
                    XCTAssertGreaterThan(Self.relativeDifference(fp32Kept.output, reference.output), 50 * Self.statisticsTolerance,
                                         what, file: file, line: line)
                }
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

    static let native = GemmArithmetic(.bf16, bf16Kernel: .native)

    /// The handoffs between a bf16 convolution, the BatchNorm after it and the convolution after
    /// that give the bits of the layers passing fp32: forward, the convolution's epilogue rounds
    /// into the BatchNorm's copy and sums each plane (the BatchNorm adds the planes); backward,
    /// the BatchNorm hands dL/dy over as bf16 with each plane's sum, and the convolution's
    /// passes and bias read those; and the BatchNorm's output goes to the next convolution as
    /// bf16 (no ReLU after it), which its forward and backward-weights read. Every output,
    /// gradient and running statistic, each handoff on and off, in
    /// training and evaluation, with and without the ReLUs and the bias, with and without
    /// dL/dx of the convolution (a first layer), on planes with a tail (5x5), whole vectors
    /// (8x8), several images per GEMM block (4x4), groups, 16x16 and 32x32 planes (backward
    /// takes bf16 there), and images split over two threads.
    func testConvolutionHandoffsGiveTheSameBits() throws {
        try XCTSkipUnless(CPUFeatures.current.bf16GEMM, "needs AVX512_BF16 (the handoffs run the native kernel only)")
        struct Run { var bits: Bits; var handedOff: Bool; var tookGrad: Bool; var tookInput: Bool }
        func run(_ cin: Int, _ cout: Int, kernel: Int, groups: Int, bias: Bool, shape: [Int], before: Bool, after: Bool,
                 training: Bool, inputGradient: Bool, threads: Int, forward: Bool, backward: Bool, input: Bool) throws -> Run {
            ComputeThreads.count = threads
            defer { ComputeThreads.count = 1 }
            let conv = try Conv2D(cin, cout, kernelSize: kernel, padding: kernel / 2, groups: groups, bias: bias)
            conv.handsOffBF16Output = forward
            conv.takesBF16GradOutput = backward
            var layers: [Layer] = [conv]
            if before { layers.append(ReLU()) }
            layers.append(try BatchNorm2d(cout))
            if after { layers.append(ReLU()) }
            let next = try Conv2D(cout, 3, kernelSize: 3, padding: 1)
            next.takesBF16Input = input
            layers.append(next)
            let chain = Sequential(layers)
            let plan = MemoryPlan.apply(to: chain, inputShape: shape)
            XCTAssertEqual(plan.bf16InputBatchNorms, 1)
            XCTAssertEqual(plan.bf16OutputBatchNorms, after ? 0 : 1)
            let store = ParameterStore(root: chain)
            store.initialize(seed: 1)
            Self.setParameters(store, seed: 5)
            let x = randomTensor(shape, seed: 21, scale: 1.5, offset: 0.1)
            let dy = randomTensor(try chain.outputShape(for: shape), seed: 22)
            let context = ExecutionContext(training: training)
            context.arithmetic = Self.native
            var result = Run(bits: Bits(output: [], gradInput: [], gradients: [], buffers: []), handedOff: true, tookGrad: true,
                             tookInput: true)
            // Three steps: the first backward learns whether the layer wants dL/dx.
            for _ in 0..<3 {
                store.zeroGradients()
                result.bits.output = chain.forward(x, context: context).toArray().map(\.bitPattern)
                result.handedOff = conv.handedOffLastForward
                result.tookInput = next.tookBF16InputLastForward
                context.needsInputGradient = inputGradient
                result.bits.gradInput = chain.backward(dy, context: context).toArray().map(\.bitPattern)
                context.needsInputGradient = true
                result.tookGrad = conv.tookBF16GradLastBackward
                result.bits.gradients = store.gradients.toArray().map(\.bitPattern)
                result.bits.buffers = store.buffers.toArray().map(\.bitPattern)
            }
            return result
        }
        let cases: [(Int, Int, Int, Int, Bool, [Int], Int)] = [
            (3, 4, 3, 1, true, [4, 3, 5, 5], 1), (2, 5, 1, 1, false, [3, 2, 8, 8], 1),
            (8, 16, 3, 1, true, [16, 8, 4, 4], 1), (4, 6, 3, 2, true, [4, 4, 6, 6], 1),
            (3, 8, 3, 1, true, [6, 3, 16, 16], 2), (16, 16, 3, 1, false, [4, 16, 16, 16], 1),
            (8, 32, 3, 1, true, [3, 8, 32, 32], 1),
        ]
        var tookGrad = Set<String>(), tookInput = Set<String>()
        for (cin, cout, kernel, groups, bias, shape, threads) in cases {
            for (before, after) in [(false, false), (true, false), (false, true), (true, true)] {
                for (training, inputGradient) in [(true, true), (false, true), (true, false)] {
                    let what = "\(cin)->\(cout) k\(kernel) groups \(groups) bias \(bias) \(formatShape(shape)) "
                        + "threads \(threads) ReLU before \(before) after \(after) training \(training) dL/dx \(inputGradient)"
                    func go(_ forward: Bool, _ backward: Bool, _ input: Bool) throws -> Run {
                        try run(cin, cout, kernel: kernel, groups: groups, bias: bias, shape: shape, before: before, after: after,
                                training: training, inputGradient: inputGradient, threads: threads,
                                forward: forward, backward: backward, input: input)
                    }
                    let off = try go(false, false, false)
                    XCTAssertFalse(off.handedOff || off.tookGrad || off.tookInput, what)
                    XCTAssertTrue(off.bits.gradients.contains { Float(bitPattern: $0) != 0 }, what)
                    for (forward, backward, input) in [(true, false, false), (false, true, false), (false, false, true),
                                                       (true, true, true)] {
                        let on = try go(forward, backward, input)
                        XCTAssertEqual(on.handedOff, forward, "handed off: \(what)")
                        XCTAssertFalse(on.tookGrad && !backward, what)
                        XCTAssertFalse(on.tookInput && (!input || after), what)
                        XCTAssertEqual(on.bits, off.bits, "forward \(forward) backward \(backward) input \(input): \(what)")
                        if on.tookGrad { tookGrad.insert("\(formatShape(shape)) dL/dx \(inputGradient)") }
                        if on.tookInput { tookInput.insert(formatShape(shape)) }
                    }
                }
            }
        }
        // Not vacuous: backward took bf16 on the larger planes, with and without dL/dx.
        for expected in ["4x16x16x16 dL/dx true", "4x16x16x16 dL/dx false", "3x8x32x32 dL/dx true", "6x3x16x16 dL/dx false"] {
            XCTAssertTrue(tookGrad.contains(expected), "bf16 dL/dy taken: \(expected) (took: \(tookGrad.sorted()))")
        }
        // … and the next convolution its input (16x16 and 32x32 planes; 8x8 too: forward and
        // backward-weights image by image there).
        for expected in ["4x16x16x16", "3x8x32x32", "6x3x16x16"] {
            XCTAssertTrue(tookInput.contains(expected), "bf16 input taken: \(expected) (took: \(tookInput.sorted()))")
        }
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
        var sums = [Double](repeating: 0, count: 2), squares = sums
        for native in Self.kernels {
            for rectify in [false, true] {
                out.initialize(repeating: 0xAAAA, count: special.count)
                batchNormRoundBF16ChannelMoments(x: x.data, rectify: rectify, bf16: out, n: 3, c: 2, s: 37,
                                                 sums: &sums, squares: &squares, native: native)
                for i in special.indices {
                    let v = rectify ? (special[i] > 0 ? special[i] : 0) : special[i]
                    XCTAssertEqual(out[i], bf16KeepingNonzero(v), "element \(i) rectify \(rectify) native \(native)")
                    XCTAssertEqual(rectify && v > 0, rectify && Int16(bitPattern: out[i]) > 0)
                }
            }
        }
    }

    /// The one-pass kernel's implementations: portable Swift, and cnn_bf16_round_moments where
    /// the CPU has AVX512_BF16.
    static var kernels: [Bool] { CPUFeatures.current.bf16GEMM ? [false, true] : [false] }

    /// Random bit patterns of every class (subnormals, NaNs, infinities, ±0, ties) and ordinary
    /// values, rounded by both implementations of the copy: every bit pattern bf16KeepingNonzero's.
    func testRoundMomentsNativeRoundsAsScalar() throws {
        guard CPUFeatures.current.bf16GEMM else { throw XCTSkip("no AVX512_BF16 on this CPU: the portable path only") }
        var rng = SplitMix64(seed: 9)
        let count = 4099
        var values = [Float]()
        while values.count < count {
            let u = UInt32(truncatingIfNeeded: rng.next())
            switch values.count % 6 {
            case 0: values.append(Float(bitPattern: u))                                 // anything
            case 1: values.append(Float(bitPattern: u & 0x807F_FFFF))                   // subnormal or ±0
            case 2: values.append(Float(bitPattern: (u & 0x8000_FFFF) | 0x0000_8000))   // tiny, ties
            case 3: values.append(Float(bitPattern: (u & 0xFFFF_0000) | 0x8000))         // ties everywhere
            case 4: values.append(Float(bitPattern: u | 0x7F80_0000))                    // NaN or ±inf
            default: values.append((rng.nextUnitFloat() - 0.5) * 8)
            }
        }
        let x = Tensor(shape: [count], values: values)
        let out = UnsafeMutablePointer<UInt16>.allocate(capacity: count)
        defer { out.deallocate() }
        var sums = [0.0], squares = [0.0]
        for rectify in [false, true] {
            batchNormRoundBF16ChannelMoments(x: x.data, rectify: rectify, bf16: out, n: 1, c: 1, s: count,
                                             sums: &sums, squares: &squares, native: true)
            for i in 0..<count {
                let v = rectify ? (values[i] > 0 ? values[i] : 0) : values[i]
                XCTAssertEqual(out[i], bf16KeepingNonzero(v), "element \(i) (\(String(values[i].bitPattern, radix: 16))) rectify \(rectify)")
            }
        }
    }

    /// Both implementations: the same copy, sums and squares, bit for bit, over plane sizes with
    /// and without a 16-element tail (1, 15, 37, 1029), rectified and not, with a split over two
    /// threads; and the sums those of the rounded values (a Double reference in plain order:
    /// equal to ~1e-15).
    func testRoundMomentsImplementationsAgree() {
        for (n, c, s, threads) in [(3, 2, 37, 1), (2, 3, 1, 1), (4, 5, 15, 1), (2, 2, 1029, 1), (16, 4, 32771, 2)] {
            let count = n * c * s
            let x = randomTensor([count], seed: UInt64(count), scale: 3, offset: 0.5)
            for i in stride(from: 0, to: count, by: 97) { x[i] = -0.0 }
            var results: [([UInt16], [Double], [Double])] = []
            for native in Self.kernels {
                for rectify in [false, true] {
                    ComputeThreads.count = threads
                    let out = UnsafeMutablePointer<UInt16>.allocate(capacity: count)
                    defer { out.deallocate() }
                    var sums = [Double](repeating: .nan, count: c), squares = sums
                    batchNormRoundBF16ChannelMoments(x: x.data, rectify: rectify, bf16: out, n: n, c: c, s: s,
                                                     sums: &sums, squares: &squares, native: native)
                    ComputeThreads.count = 1
                    let copy = Array(UnsafeBufferPointer(start: out, count: count))
                    results.append((copy, sums, squares))
                    for ch in 0..<c {
                        var refSum = 0.0, refSquares = 0.0
                        for i in 0..<n {
                            for j in 0..<s {
                                let v = Double(Float(bitPattern: UInt32(copy[(i * c + ch) * s + j]) << 16))
                                refSum += v; refSquares += v * v
                            }
                        }
                        XCTAssertEqual(sums[ch], refSum, accuracy: 1e-13 * max(refSquares, 1), "\(n)x\(c)x\(s) Σ channel \(ch)")
                        XCTAssertEqual(squares[ch], refSquares, accuracy: 1e-13 * refSquares, "\(n)x\(c)x\(s) Σ² channel \(ch)")
                    }
                }
            }
            if results.count == 4 {
                for r in 0..<2 {
                    XCTAssertEqual(results[r].0, results[r + 2].0, "\(n)x\(c)x\(s) copy, rectify \(r == 1)")
                    XCTAssertEqual(results[r].1.map(\.bitPattern), results[r + 2].1.map(\.bitPattern), "\(n)x\(c)x\(s) sums")
                    XCTAssertEqual(results[r].2.map(\.bitPattern), results[r + 2].2.map(\.bitPattern), "\(n)x\(c)x\(s) squares")
                }
            }
        }
    }

    /// |mean| ≫ std: the one-pass variance of the copy (Σx²/M − mean², as the layer forms it)
    /// against the two-pass one in Double over the same rounded values. At mean 60 and std ~0.6
    /// (about 7 bf16 steps of 0.25 across ±1σ) they agree to 1e-9 relative.
    func testOnePassVarianceWithLargeMean() throws {
        let (n, c, s) = (8, 2, 1000)
        let count = n * c * s
        let x = randomTensor([count], seed: 4, scale: 1, offset: 60)
        let out = UnsafeMutablePointer<UInt16>.allocate(capacity: count)
        defer { out.deallocate() }
        for native in Self.kernels {
            var sums = [Double](repeating: 0, count: c), squares = sums
            batchNormRoundBF16ChannelMoments(x: x.data, rectify: false, bf16: out, n: n, c: c, s: s,
                                             sums: &sums, squares: &squares, native: native)
            for ch in 0..<c {
                let m = Double(n * s)
                let onePass = (squares[ch] - sums[ch] * (sums[ch] / m)) / m
                var mean = 0.0, centred = 0.0
                for i in 0..<n { for j in 0..<s { mean += Double(Float(bitPattern: UInt32(out[(i * c + ch) * s + j]) << 16)) } }
                mean /= m
                for i in 0..<n {
                    for j in 0..<s {
                        let d = Double(Float(bitPattern: UInt32(out[(i * c + ch) * s + j]) << 16)) - mean
                        centred += d * d
                    }
                }
                XCTAssertGreaterThan(centred / m, 0.1)
                XCTAssertEqual(onePass, centred / m, accuracy: 1e-9 * centred / m, "channel \(ch) native \(native)")
            }
        }
    }
}
