import XCTest
import CnnCore
import CnnLayers
import CnnTraining

/// Runs `optimizer` on `p` with one gradient vector per step at `lr`.
private func stepAll(_ optimizer: Optimizer, _ p: inout [Float], gradients: [[Float]], lr: Float) {
    for g in gradients {
        precondition(g.count == p.count)
        p.withUnsafeMutableBufferPointer { pb in
            g.withUnsafeBufferPointer { gb in
                optimizer.step(parameters: pb.baseAddress!, gradients: gb.baseAddress!, count: pb.count, learningRate: lr)
            }
        }
    }
}

private func assertClose(_ a: [Float], _ b: [Float], tolerance: Float = 1e-6,
                         file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(a.count, b.count, file: file, line: line)
    for (x, y) in zip(a, b) {
        XCTAssertEqual(x, y, accuracy: tolerance * max(1, abs(y)), "\(a) vs \(b)", file: file, line: line)
    }
}

private func assertInvalidConfig(field: String, file: StaticString = #filePath, line: UInt = #line,
                                 _ body: () throws -> Void) {
    do {
        try body()
        XCTFail("expected invalidConfig for \(field)", file: file, line: line)
    } catch let CnnError.invalidConfig(f, _, allowed) {
        XCTAssertEqual(f, field, file: file, line: line)
        XCTAssertFalse(allowed.isEmpty, file: file, line: line)
    } catch {
        XCTFail("unexpected error \(error)", file: file, line: line)
    }
}

final class OptimizerTests: XCTestCase {
    // MARK: SGD

    func testSGDMomentumAndWeightDecayThreeSteps() throws {
        // lr 0.1, momentum 0.9, wd 0.1; the same gradient at every step.
        // Element 0: p = 1, grad 0.5
        //   1: g = 0.5 + 0.1·1 = 0.6;        b = 0.6;                        p = 1 − 0.06 = 0.94
        //   2: g = 0.5 + 0.094 = 0.594;      b = 0.54 + 0.594 = 1.134;       p = 0.94 − 0.1134 = 0.8266
        //   3: g = 0.5 + 0.08266 = 0.58266;  b = 1.0206 + 0.58266 = 1.60326; p = 0.8266 − 0.160326 = 0.666274
        // Element 1: p = −2, grad 0.1
        //   1: g = 0.1 − 0.2 = −0.1;         b = −0.1;                       p = −2 + 0.01 = −1.99
        //   2: g = 0.1 − 0.199 = −0.099;     b = −0.09 − 0.099 = −0.189;     p = −1.99 + 0.0189 = −1.9711
        //   3: g = 0.1 − 0.19711 = −0.09711; b = −0.1701 − 0.09711 = −0.26721; p = −1.9711 + 0.026721 = −1.944379
        // Element 2: p = 0.5, grad −1
        //   1: g = −1 + 0.05 = −0.95;        b = −0.95;                      p = 0.5 + 0.095 = 0.595
        //   2: g = −1 + 0.0595 = −0.9405;    b = −0.855 − 0.9405 = −1.7955;  p = 0.595 + 0.17955 = 0.77455
        //   3: g = −1 + 0.077455 = −0.922545; b = −1.61595 − 0.922545 = −2.538495; p = 0.77455 + 0.2538495 = 1.0283995
        let sgd = try SGD(momentum: 0.9, weightDecay: 0.1)
        var p: [Float] = [1, -2, 0.5]
        let g: [Float] = [0.5, 0.1, -1]
        stepAll(sgd, &p, gradients: [g], lr: 0.1)
        assertClose(p, [0.94, -1.99, 0.595])
        stepAll(sgd, &p, gradients: [g], lr: 0.1)
        assertClose(p, [0.8266, -1.9711, 0.77455])
        stepAll(sgd, &p, gradients: [g], lr: 0.1)
        assertClose(p, [0.666274, -1.944379, 1.0283995])
        XCTAssertEqual(sgd.stepCount, 3)
        XCTAssertEqual(sgd.stateTensors.map(\.name), ["momentum_buffer"])
        assertClose(sgd.stateTensors[0].tensor.toArray(), [1.60326, -0.26721, -2.538495])
    }

    func testPlainSGDHasNoState() throws {
        // p = 1 − 0.1·0.5 = 0.95
        let sgd = try SGD()
        var p: [Float] = [1]
        stepAll(sgd, &p, gradients: [[0.5]], lr: 0.1)
        assertClose(p, [0.95])
        XCTAssertTrue(sgd.stateTensors.isEmpty)
    }

    func testSGDNesterov() throws {
        // lr 0.1, μ 0.9, p = 1, grad 0.5 twice.
        //   1: b = 0.5;              g = 0.5 + 0.9·0.5 = 0.95;   p = 1 − 0.095 = 0.905
        //   2: b = 0.45 + 0.5 = 0.95; g = 0.5 + 0.855 = 1.355;   p = 0.905 − 0.1355 = 0.7695
        let sgd = try SGD(momentum: 0.9, nesterov: true)
        var p: [Float] = [1]
        stepAll(sgd, &p, gradients: [[0.5]], lr: 0.1)
        assertClose(p, [0.905])
        stepAll(sgd, &p, gradients: [[0.5]], lr: 0.1)
        assertClose(p, [0.7695])
    }

    func testSGDDampeningSkipsFirstStep() throws {
        // lr 0.1, μ 0.9, τ 0.5, p = 1, grad 0.5 twice.
        //   1: b = 0.5 (no dampening at the first step); p = 0.95
        //   2: b = 0.45 + 0.5·0.5 = 0.7;                 p = 0.95 − 0.07 = 0.88
        let sgd = try SGD(momentum: 0.9, dampening: 0.5)
        var p: [Float] = [1]
        stepAll(sgd, &p, gradients: [[0.5], [0.5]], lr: 0.1)
        assertClose(p, [0.88])
    }

    // MARK: Adam

    func testAdamTwoSteps() throws {
        // lr 0.1, β1 0.9, β2 0.999, ε 1e-8, p = 1; grad 0.5 then −1.
        // 1: m = 0.05, v = 0.001·0.25 = 0.00025; m̂ = 0.05/0.1 = 0.5, v̂ = 0.00025/0.001 = 0.25
        //    p = 1 − 0.1·0.5/(0.5 + 1e-8) = 0.900000002
        // 2: m = 0.045 − 0.1 = −0.055; v = 0.00024975 + 0.001 = 0.00124975
        //    m̂ = −0.055/0.19 = −0.28947368; √v̂ = √(0.00124975/0.001999) = √0.62518759 = 0.79068805
        //    p = 0.9 − 0.1·(−0.28947368/0.79068805) = 0.9 + 0.036610354 = 0.936610354
        let adam = try Adam()
        var p: [Float] = [1]
        stepAll(adam, &p, gradients: [[0.5]], lr: 0.1)
        assertClose(p, [0.9])
        stepAll(adam, &p, gradients: [[-1]], lr: 0.1)
        assertClose(p, [0.936610354])
        XCTAssertEqual(adam.name, "adam")
        XCTAssertEqual(adam.stateTensors.map(\.name), ["exp_avg", "exp_avg_sq"])
        assertClose(adam.stateTensors[0].tensor.toArray(), [-0.055])
        assertClose(adam.stateTensors[1].tensor.toArray(), [0.00124975])
    }

    func testAdamL2VersusAdamWDecoupled() throws {
        // lr 0.1, wd 0.1, p = 1, grad 0.5, one step.
        // Adam (L2):  g = 0.5 + 0.1 = 0.6; m̂ = 0.6, √v̂ = 0.6 → p = 1 − 0.1·1 = 0.9
        // AdamW:      p = 1·(1 − 0.1·0.1) = 0.99; m̂ = 0.5, √v̂ = 0.5 → p = 0.99 − 0.1 = 0.89
        let adam = try Adam(weightDecay: 0.1)
        var p1: [Float] = [1]
        stepAll(adam, &p1, gradients: [[0.5]], lr: 0.1)
        assertClose(p1, [0.9])

        let adamw = try AdamW(weightDecay: 0.1)
        var p2: [Float] = [1, 1]
        // The second element is exempt from decay: 1 − 0.1 = 0.9.
        adamw.weightDecayMask = WeightDecayMask(excluded: [1 ..< 2])
        stepAll(adamw, &p2, gradients: [[0.5, 0.5]], lr: 0.1)
        assertClose(p2, [0.89, 0.9])
        XCTAssertEqual(adamw.name, "adamw")
        XCTAssertEqual(try AdamW().weightDecay, 0.01)
    }

    // MARK: RMSProp

    func testRMSPropTwoSteps() throws {
        // lr 0.01, α 0.99, ε 1e-8, p = 1, grad 0.5 twice.
        // 1: s = 0.01·0.25 = 0.0025; √s = 0.05; p = 1 − 0.01·0.5/0.05 = 0.9
        // 2: s = 0.002475 + 0.0025 = 0.004975; √s = 0.07053368; p = 0.9 − 0.005/0.07053368 = 0.9 − 0.07088812 = 0.82911188
        let rms = try RMSProp()
        var p: [Float] = [1]
        stepAll(rms, &p, gradients: [[0.5]], lr: 0.01)
        assertClose(p, [0.9])
        stepAll(rms, &p, gradients: [[0.5]], lr: 0.01)
        assertClose(p, [0.82911188])
        XCTAssertEqual(rms.stateTensors.map(\.name), ["square_avg"])
    }

    func testRMSPropMomentumAndCentered() throws {
        // Momentum 0.9 (same s as above):
        // 1: b = 0.5/0.05 = 10;               p = 1 − 0.01·10 = 0.9
        // 2: b = 9 + 0.5/0.07053368 = 16.088812; p = 0.9 − 0.16088812 = 0.73911188
        let rms = try RMSProp(momentum: 0.9)
        var p: [Float] = [1]
        stepAll(rms, &p, gradients: [[0.5], [0.5]], lr: 0.01)
        assertClose(p, [0.73911188])
        XCTAssertEqual(rms.stateTensors.map(\.name), ["square_avg", "momentum_buffer"])

        // Centered, one step: s = 0.0025, a = 0.01·0.5 = 0.005;
        // √(s − a²) = √0.002475 = 0.04974937; p = 1 − 0.005/0.04974937 = 1 − 0.10050378 = 0.89949622
        let centered = try RMSProp(centered: true)
        var q: [Float] = [1]
        stepAll(centered, &q, gradients: [[0.5]], lr: 0.01)
        assertClose(q, [0.89949622])
        XCTAssertEqual(centered.stateTensors.map(\.name), ["square_avg", "grad_avg"])
    }

    // MARK: Weight-decay mask from the entry table

    func testWeightDecayMaskExcludesBiasAndBatchNorm() throws {
        let store = ParameterStore(root: StubLayer())
        // weight [2,3] at 0..<6, bias [2] at 6..<8, bn.weight [2] at 8..<10, bn.bias [2] at 10..<12
        let mask = WeightDecayMask(entries: store.parameterEntries, excludeBiasAndNormalization: true)
        XCTAssertEqual(mask.excluded, [6 ..< 12])
        XCTAssertEqual(WeightDecayMask(entries: store.parameterEntries, excludeBiasAndNormalization: false), .all)

        // SGD lr 1, wd 0.5, zero gradient: decayed elements p = 1 − 0.5 = 0.5, exempt ones stay 1.
        let sgd = try SGD(weightDecay: 0.5)
        sgd.configureWeightDecay(for: store, excludeBiasAndNormalization: true)
        store.parameters.fill(1)
        store.zeroGradients()
        sgd.step(store, learningRate: 1)
        XCTAssertEqual(store.parameters.toArray(), [Float](repeating: 0.5, count: 6) + [Float](repeating: 1, count: 6))
    }

    func testMaskSegments() {
        let mask = WeightDecayMask(excluded: [8 ..< 10, 2 ..< 4, 3 ..< 5, 20 ..< 30])
        XCTAssertEqual(mask.excluded, [2 ..< 5, 8 ..< 10, 20 ..< 30])
        let segments = mask.segments(count: 25)
        XCTAssertEqual(segments.map(\.range), [0 ..< 2, 2 ..< 5, 5 ..< 8, 8 ..< 10, 10 ..< 20, 20 ..< 25])
        XCTAssertEqual(segments.map(\.decay), [true, false, true, false, true, false])
    }

    // MARK: Validation

    func testValidationNamesTheField() {
        assertInvalidConfig(field: "momentum") { _ = try SGD(momentum: 1) }
        assertInvalidConfig(field: "momentum") { _ = try SGD(momentum: -0.1) }
        assertInvalidConfig(field: "weight_decay") { _ = try SGD(weightDecay: -1e-4) }
        assertInvalidConfig(field: "dampening") { _ = try SGD(momentum: 0.9, dampening: 1.5) }
        assertInvalidConfig(field: "nesterov") { _ = try SGD(nesterov: true) }
        assertInvalidConfig(field: "nesterov") { _ = try SGD(momentum: 0.9, dampening: 0.1, nesterov: true) }
        assertInvalidConfig(field: "beta1") { _ = try Adam(beta1: 1) }
        assertInvalidConfig(field: "beta2") { _ = try AdamW(beta2: -0.1) }
        assertInvalidConfig(field: "eps") { _ = try Adam(eps: 0) }
        assertInvalidConfig(field: "weight_decay") { _ = try AdamW(weightDecay: -0.01) }
        assertInvalidConfig(field: "alpha") { _ = try RMSProp(alpha: 1) }
        assertInvalidConfig(field: "eps") { _ = try RMSProp(eps: -1) }
        assertInvalidConfig(field: "momentum") { _ = try RMSProp(momentum: .nan) }
        assertInvalidConfig(field: "lr") { try validateLearningRate(0) }
        assertInvalidConfig(field: "lr") { _ = try LearningRateSchedule(baseLearningRate: -0.1) }
        XCTAssertNoThrow(try SGD(momentum: 0.9, nesterov: true, weightDecay: 5e-4))
    }

    // MARK: Construction from a configuration

    func testOptimizerRegistryBuildsFromConfig() throws {
        var config = TrainingConfig()
        config.momentum = 0.9
        config.nesterov = true
        config.weightDecay = 5e-4
        let sgd = try XCTUnwrap(try OptimizerKind.sgd.make(config) as? SGD)
        XCTAssertEqual(sgd.momentum, 0.9)
        XCTAssertTrue(sgd.nesterov)
        XCTAssertEqual(sgd.weightDecay, 5e-4)
        XCTAssertEqual(sgd.hyperParameters.map(\.value), [0.9, 0, 1, 0.0005])
        config.weightDecay = 0.01
        XCTAssertEqual((try OptimizerKind.adamw.make(config) as? AdamW)?.weightDecay, 0.01)
        for kind in OptimizerKind.allCases { XCTAssertEqual(try kind.make(config).name, kind.rawValue) }
        assertInvalidConfig(field: "optimizer") { _ = try OptimizerKind.named("lion", field: "optimizer") }
        config.momentum = 1.2
        assertInvalidConfig(field: "momentum") { _ = try OptimizerKind.sgd.make(config) }
    }

    // MARK: Eight-lane loop

    /// Every element must get the same update whether it falls in an
    /// eight-wide chunk or in the short tail.
    func testChunkedAndTailUpdatesAgreeBitwise() throws {
        let makers: [() throws -> Optimizer] = [
            { try SGD(momentum: 0.9, nesterov: true, weightDecay: 1e-2) },
            { try Adam(weightDecay: 1e-2) }, { try AdamW() },
            { try RMSProp(momentum: 0.9, centered: true, weightDecay: 1e-2) },
        ]
        let n = 19
        let grads = (0..<3).map { s in (0..<n).map { Float(sin(Double($0 * 5 + s * 11))) } }
        for make in makers {
            var whole = (0..<n).map { Float(cos(Double($0) * 0.7)) }
            stepAll(try make(), &whole, gradients: grads, lr: 0.01)
            for k in 0..<n {
                var single = [Float(cos(Double(k) * 0.7))]
                stepAll(try make(), &single, gradients: grads.map { [$0[k]] }, lr: 0.01)
                XCTAssertEqual(single[0].bitPattern, whole[k].bitPattern, "element \(k)")
            }
        }
    }

    // MARK: Checkpoint state

    /// Steps an optimizer 3 times, saves, continues 2 steps; a fresh optimizer
    /// loaded from the save must continue bitwise identically.
    private func checkResume(_ make: () throws -> Optimizer, file: StaticString = #filePath, line: UInt = #line) throws {
        let n = 37
        func grads(_ step: Int) -> [Float] { (0..<n).map { Float(sin(Double($0 * 7 + step * 13))) } }
        var p = (0..<n).map { Float(cos(Double($0))) }
        let a = try make()
        a.weightDecayMask = WeightDecayMask(excluded: [5 ..< 9])
        stepAll(a, &p, gradients: (0..<3).map(grads), lr: 0.05)

        // "Checkpoint": copies of the state and the parameters.
        let saved = a.stateTensors.map { (name: $0.name, tensor: $0.tensor.clone()) }
        let savedStep = a.stepCount
        var q = p

        stepAll(a, &p, gradients: (3..<5).map(grads), lr: 0.03)

        let b = try make()
        b.weightDecayMask = WeightDecayMask(excluded: [5 ..< 9])
        try b.loadState(stepCount: savedStep, tensors: saved)
        XCTAssertEqual(b.stepCount, 3, file: file, line: line)
        stepAll(b, &q, gradients: (3..<5).map(grads), lr: 0.03)

        XCTAssertEqual(p.map(\.bitPattern), q.map(\.bitPattern), "\(a.name) resume differs", file: file, line: line)
        XCTAssertEqual(a.stepCount, b.stepCount, file: file, line: line)
        for (x, y) in zip(a.stateTensors, b.stateTensors) {
            XCTAssertEqual(x.name, y.name, file: file, line: line)
            XCTAssertEqual(x.tensor.toArray().map(\.bitPattern), y.tensor.toArray().map(\.bitPattern),
                           file: file, line: line)
        }
    }

    func testStateRestoreContinuesBitwise() throws {
        try checkResume { try SGD(momentum: 0.9, weightDecay: 1e-3) }
        try checkResume { try SGD(momentum: 0.9, nesterov: true, weightDecay: 1e-3) }
        try checkResume { try SGD(weightDecay: 1e-3) }
        try checkResume { try Adam(weightDecay: 1e-3) }
        try checkResume { try AdamW() }
        try checkResume { try RMSProp(momentum: 0.5, centered: true, weightDecay: 1e-3) }
    }

    func testLoadStateRejectsMismatch() throws {
        let adam = try Adam()
        var p: [Float] = [1, 2]
        stepAll(adam, &p, gradients: [[0.1, 0.2]], lr: 0.1)
        let rms = try RMSProp()
        XCTAssertThrowsError(try rms.loadState(stepCount: 1, tensors: adam.stateTensors)) { error in
            guard case CnnError.invalidCheckpoint = error else { return XCTFail("\(error)") }
        }
        XCTAssertThrowsError(try Adam().loadState(stepCount: 4, tensors: []))
        XCTAssertThrowsError(try SGD().loadState(stepCount: 1, tensors: adam.stateTensors))
    }
}

/// A leaf with a weight, a bias and BatchNorm-like scale and shift, for the entry table.
private final class StubLayer: Layer {
    var typeName: String { "Stub" }
    var parameterSpecs: [TensorSpec] {
        [TensorSpec("weight", shape: [2, 3], role: .weight(fanIn: 3, fanOut: 2)),
         TensorSpec("bias", shape: [2], role: .bias(fanIn: 3)),
         TensorSpec("bn_weight", shape: [2], role: .ones),
         TensorSpec("bn_bias", shape: [2], role: .zeros)]
    }
    func outputShape(for input: [Int]) throws -> [Int] { input }
    func forward(_ input: Tensor, context: ExecutionContext) -> Tensor { input }
    func backward(_ gradOutput: Tensor, context: ExecutionContext) -> Tensor { gradOutput }
}
