import XCTest
import CnnCore
import CnnLayers

/// BatchNorm followed by ReLU, fused by the memory plan (one pass forward, the ReLU mask
/// inside BatchNorm's backward), against the same two layers apart: bitwise in values,
/// dL/dx, dγ, dβ and running statistics, in training and eval, on one and two threads.
final class BatchNormReLUFusionTests: XCTestCase {
    override func tearDown() {
        ComputeThreads.count = 1
        super.tearDown()
    }

    enum Mode: CaseIterable { case unplanned, inPlace, fused }

    struct Bits: Equatable {
        var output: [UInt32]
        var gradInput: [UInt32]
        var gradients: [UInt32]
        var buffers: [UInt32]
    }

    /// γ of both signs away from 0, β in ±0.5 (so about half the outputs are cut by the ReLU),
    /// running statistics random (eval uses them).
    static func setParameters(_ store: ParameterStore, seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        let c = store.parameters.count / 2
        for i in 0..<store.parameters.count {
            let u = rng.nextUnitFloat()
            store.parameters[i] = i < c ? (u < 0.5 ? -0.5 - u : u) * 1.5 : u - 0.5
        }
        let bc = (store.buffers.count - 1) / 2
        for i in 0..<bc {
            store.buffers[i] = rng.nextUnitFloat() * 0.6 - 0.3
            store.buffers[bc + i] = 0.5 + rng.nextUnitFloat()
        }
    }

    /// Two steps of [BatchNorm, ReLU] on the same input under `mode`; the last step's bits.
    func run(_ makeNorm: () throws -> Layer, shape: [Int], mode: Mode, training: Bool, threads: Int = 1) throws -> Bits {
        ComputeThreads.count = threads
        defer { ComputeThreads.count = 1 }
        let relu = ReLU()
        let pair = Sequential([try makeNorm(), relu])
        switch mode {
        case .unplanned: break
        case .inPlace:
            let plan = MemoryPlan.apply(to: pair, inputShape: shape, fuse: false)
            XCTAssertEqual(plan.fusedReLUs, 0); XCTAssertEqual(plan.inPlaceReLUs, 1)
        case .fused:
            let plan = MemoryPlan.apply(to: pair, inputShape: shape)
            XCTAssertEqual(plan.fusedReLUs, 1); XCTAssertEqual(plan.inPlaceReLUs, 0)
            XCTAssertTrue(relu.fusedIntoBatchNorm)
        }
        let store = ParameterStore(root: pair)
        store.initialize(seed: 1)
        Self.setParameters(store, seed: 5)
        let x = randomTensor(shape, seed: 21, scale: 2, offset: 0.7)
        let dy = randomTensor(shape, seed: 22)
        var bits = Bits(output: [], gradInput: [], gradients: [], buffers: [])
        for step in 0..<2 {
            let context = ExecutionContext(training: training, seed: 1, step: step)
            store.zeroGradients()
            bits.output = pair.forward(x, context: context).toArray().map(\.bitPattern)
            bits.gradInput = pair.backward(dy, context: context).toArray().map(\.bitPattern)
            bits.gradients = store.gradients.toArray().map(\.bitPattern)
            bits.buffers = store.buffers.toArray().map(\.bitPattern)
        }
        return bits
    }

    func assertFusedMatches(_ makeNorm: () throws -> Layer, shape: [Int], threads: [Int] = [1],
                            file: StaticString = #filePath, line: UInt = #line) throws {
        for training in [true, false] {
            let reference = try run(makeNorm, shape: shape, mode: .unplanned, training: training)
            // Not vacuous: the ReLU cuts some outputs and passes others, and dL/dx is not zero.
            let cut = reference.output.filter { $0 == 0 }.count
            XCTAssertGreaterThan(cut, reference.output.count / 10, "ReLU cuts too few", file: file, line: line)
            XCTAssertLessThan(cut, reference.output.count * 9 / 10, "ReLU cuts too many", file: file, line: line)
            XCTAssertTrue(reference.gradInput.contains { Float(bitPattern: $0) != 0 }, file: file, line: line)
            for threadCount in threads {
                for mode in [Mode.inPlace, .fused] {
                    let other = try run(makeNorm, shape: shape, mode: mode, training: training, threads: threadCount)
                    let what = "\(formatShape(shape)) \(mode) training \(training) threads \(threadCount)"
                    XCTAssertEqual(reference.output, other.output, "values \(what)", file: file, line: line)
                    XCTAssertEqual(reference.gradInput, other.gradInput, "dL/dx \(what)", file: file, line: line)
                    XCTAssertEqual(reference.gradients, other.gradients, "dγ, dβ \(what)", file: file, line: line)
                    XCTAssertEqual(reference.buffers, other.buffers, "running statistics \(what)", file: file, line: line)
                }
            }
        }
    }

    func testSmallShapesBitwise() throws {
        // Planes of 25 (SIMD8 tail), 1 (each value its own plane), 64; BatchNorm1d 2-D and 3-D.
        try assertFusedMatches({ try BatchNorm2d(3) }, shape: [4, 3, 5, 5])
        try assertFusedMatches({ try BatchNorm2d(16) }, shape: [6, 16, 1, 1])
        try assertFusedMatches({ try BatchNorm2d(5, affine: false) }, shape: [3, 5, 8, 8])
        try assertFusedMatches({ try BatchNorm1d(10) }, shape: [32, 10])
        try assertFusedMatches({ try BatchNorm1d(6) }, shape: [8, 6, 9])
    }

    func testThreadedShapesBitwise() throws {
        // From 2^21 elements BatchNorm splits channels over the threads: 7 channels of 3x1001
        // (uneven ranges, a plane not a multiple of 8) and 9 channels of 120x122.
        try assertFusedMatches({ try BatchNorm2d(7) }, shape: [100, 7, 3, 1001], threads: [1, 2])
        try assertFusedMatches({ try BatchNorm2d(9) }, shape: [16, 9, 120, 122], threads: [2])
    }

    /// Exact zeros, -0, NaN and infinities go through the fused pair as through the two layers
    /// (eval, so that a NaN stays in its own element instead of spreading through the statistics).
    func testSpecialValuesBitwise() throws {
        func bits(_ mode: Mode) throws -> Bits {
            let pair = Sequential([try BatchNorm2d(2), ReLU()])
            if mode == .fused { XCTAssertEqual(MemoryPlan.apply(to: pair, inputShape: [2, 2, 3, 3]).fusedReLUs, 1) }
            let store = ParameterStore(root: pair)
            store.initialize(seed: 1)
            // running_mean (0.5, -0.25): the inputs 0.5 and -0.25 normalise to exactly 0.
            store.buffers[0] = 0.5; store.buffers[1] = -0.25
            let values: [Float] = [0.5, -0.0, 0, .nan, .infinity, -.infinity, 0.25, 1, -1,
                                   -0.25, 0, -0.0, .nan, 3, -3, .greatestFiniteMagnitude, .leastNonzeroMagnitude, 2,
                                   0.5, 0.5, -0.25, -0.25, 1e-30, -1e-30, 4, -4, 0.75,
                                   0, 1, 2, 3, -1, -2, -3, .nan, .infinity]
            let x = Tensor(shape: [2, 2, 3, 3], values: values)
            let dy = randomTensor([2, 2, 3, 3], seed: 3)
            let context = ExecutionContext(training: false)
            let y = pair.forward(x, context: context).toArray().map(\.bitPattern)
            let dx = pair.backward(dy, context: context).toArray().map(\.bitPattern)
            return Bits(output: y, gradInput: dx, gradients: store.gradients.toArray().map(\.bitPattern), buffers: [])
        }
        let a = try bits(.unplanned), b = try bits(.fused)
        XCTAssertTrue(a.output.contains(0))
        XCTAssertEqual(a, b)
    }

    /// Finite differences through the fused pair (training: the batch statistics depend on
    /// every input). β puts the ReLU's kink in the middle of a wide gap between a channel's
    /// normalised values, so no output crosses it within a step.
    func testFusedGradientCheck() throws {
        for (makeNorm, shape) in [({ try BatchNorm2d(3) } as () throws -> Layer, [4, 3, 3, 3]),
                                  ({ try BatchNorm1d(5) }, [12, 5])] {
            let norm = try makeNorm()
            let pair = Sequential([norm, ReLU()])
            XCTAssertEqual(MemoryPlan.apply(to: pair, inputShape: shape).fusedReLUs, 1)
            let store = ParameterStore(root: pair)
            store.initialize(seed: 1)
            Self.setParameters(store, seed: 9)
            let c = shape[1], planeCount = shape.dropFirst(2).reduce(1, *)
            let input = distinctTensor(shape, seed: 4, gap: 0.07)
            // The same BatchNorm without the ReLU gives the values the kink must avoid.
            let alone = try makeNorm()
            let aloneStore = ParameterStore(root: alone)
            func preActivations() -> [Float] {
                aloneStore.parameters.data.update(from: store.parameters.data, count: store.parameters.count)
                return alone.forward(input, context: ExecutionContext(training: true)).toArray()
            }
            for ch in 0..<c { store.parameters[c + ch] = 0 }
            let centred = preActivations()
            for ch in 0..<c {
                var values: [Float] = []
                for i in 0..<shape[0] { for j in 0..<planeCount { values.append(centred[(i * c + ch) * planeCount + j]) } }
                values.sort()
                let middle = (values.count / 4)..<(3 * values.count / 4)
                let k = middle.max { values[$0 + 1] - values[$0] < values[$1 + 1] - values[$1] }!
                store.parameters[c + ch] = -(values[k] + values[k + 1]) / 2
            }
            let pre = preActivations()
            let margin = pre.map(abs).min()!
            XCTAssertGreaterThan(margin, 0.02, "an output too near the kink for the check")
            XCTAssertGreaterThan(pre.filter { $0 < 0 }.count, pre.count / 5)
            XCTAssertGreaterThan(pre.filter { $0 > 0 }.count, pre.count / 5)
            let context = ExecutionContext(training: true, seed: 5, step: 3)
            let result = checkGradients(layer: pair, store: store, input: input, context: context, step: 2e-3, maxChecks: 200)
            print("gradient check fused \(norm.typeName)+ReLU: \(result), kink margin \(margin)")
            XCTAssertGreaterThan(result.checked, shape.reduce(1, *))
            XCTAssertLessThan(result.worstError, 2e-3, "\(result)")
        }
    }
}
