import XCTest
import CnnCore
import CnnLayers
import CnnTraining

/// LARS and LAMB: one and two steps against answers worked by hand, the per-tensor trust
/// ratio with biases and BatchNorm excluded, and bitwise continuation from saved state.
final class LayerwiseOptimizerTests: XCTestCase {
    /// A weight [3, 4] (‖w‖ = 5) with gradient [0.6, 0.8] (‖g‖ = 1), then a bias 1 with gradient 0.5.
    let entries = [
        ParameterEntry(name: "fc.weight", shape: [1, 2], role: .weight(fanIn: 2, fanOut: 1), offset: 0, isTrainable: true),
        ParameterEntry(name: "fc.bias", shape: [1], role: .bias(fanIn: 2), offset: 2, isTrainable: true),
    ]
    let gradient: [Float] = [0.6, 0.8, 0.5]

    func run(_ optimizer: Optimizer, steps: Int, lr: Float) -> [Float] {
        var p: [Float] = [3, 4, 1]
        for _ in 0..<steps {
            p.withUnsafeMutableBufferPointer { pb in
                gradient.withUnsafeBufferPointer { gb in
                    optimizer.step(parameters: pb.baseAddress!, gradients: gb.baseAddress!, count: 3, learningRate: lr)
                }
            }
        }
        return p
    }

    func assertClose(_ a: [Float], _ b: [Double], _ message: String, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, line: line)
        for (x, y) in zip(a, b) { XCTAssertEqual(Double(x), y, accuracy: 2e-6 * max(1, abs(y)), "\(message): \(a) vs \(b)", line: line) }
    }

    func testLARSTwoStepsByHand() throws {
        // γ = 2, η = 0.02, β = 0.1, m = 0.9.
        // Step 1, weight: λ = 0.02·5 / (1 + 0.1·5) = 1/15; d = g + 0.1·w = [0.9, 1.2];
        //   v = (2/15)·d = [0.12, 0.16]; w = [2.88, 3.84].
        // Step 1, bias (excluded: λ = 1, no decay): v = 2·0.5 = 1; b = 0.
        // Step 2, weight: ‖w‖ = 4.8, λ = 0.096 / 1.48; d = [0.888, 1.184];
        //   v = 0.9·[0.12, 0.16] + (0.192/1.48)·d = [0.2232, 0.2976]; w = [2.6568, 3.5424].
        // Step 2, bias: v = 0.9·1 + 1 = 1.9; b = −1.9.
        let lars = try LARS(momentum: 0.9, weightDecay: 0.1, trustCoefficient: 0.02)
        lars.setParameterLayout(entries)
        assertClose(run(lars, steps: 1, lr: 2), [2.88, 3.84, 0], "LARS step 1")
        XCTAssertEqual(lars.stateTensors.map(\.name), ["momentum_buffer"])
        assertClose(lars.stateTensors[0].tensor.toArray(), [0.12, 0.16, 1], "LARS momentum after step 1")
        let again = try LARS(momentum: 0.9, weightDecay: 0.1, trustCoefficient: 0.02)
        again.setParameterLayout(entries)
        assertClose(run(again, steps: 2, lr: 2), [2.6568, 3.5424, -1.9], "LARS step 2")
        XCTAssertEqual(again.stepCount, 2)
    }

    /// Without the layout every element is one adapted tensor: the bias is then scaled and
    /// decayed too, which is what the layout prevents.
    func testLARSWithoutLayoutAdaptsEverything() throws {
        let lars = try LARS(momentum: 0.9, weightDecay: 0.1, trustCoefficient: 0.02)
        // ‖w‖ = √26, ‖g‖ = √1.25: λ = 0.02·√26 / (√1.25 + 0.1·√26).
        let trust = 0.02 * 26.0.squareRoot() / (1.25.squareRoot() + 0.1 * 26.0.squareRoot())
        let p = run(lars, steps: 1, lr: 2)
        assertClose(p, [3 - 2 * trust * 0.9, 4 - 2 * trust * 1.2, 1 - 2 * trust * 0.6], "LARS one tensor")
    }

    func testLAMBTwoStepsByHand() throws {
        // η = 0.01, β1 = 0.9, β2 = 0.999, ε = 1e-6, λ = 0.1, same gradient twice.
        // Step 1: m̂ = g, v̂ = g², r = g / (|g| + ε) = [0.99999833, 0.99999875];
        //   u = r + 0.1·w = [1.29999833, 1.39999875], ‖u‖ = 1.9104952, τ = 5 / ‖u‖ = 2.6171224;
        //   w = w − 0.01·τ·u = [2.96597745, 3.96336032]; bias: r = 0.99999800, b = 0.99000002.
        // Step 2 (m̂ = g, v̂ = g² again, so r is the same; u = r + 0.1·w with the new w):
        //   w = [2.93229324, 3.92708500]; b = 0.98000004.
        let lamb = try LAMB(beta1: 0.9, beta2: 0.999, eps: 1e-6, weightDecay: 0.1)
        lamb.setParameterLayout(entries)
        assertClose(run(lamb, steps: 1, lr: 0.01), [2.9659774521420648, 3.9633603188161453, 0.99000001999996], "LAMB step 1")
        XCTAssertEqual(lamb.stateTensors.map(\.name), ["exp_avg", "exp_avg_sq"])
        assertClose(lamb.stateTensors[0].tensor.toArray(), [0.06, 0.08, 0.05], "LAMB exp_avg")
        assertClose(lamb.stateTensors[1].tensor.toArray(), [0.00036, 0.00064, 0.00025], "LAMB exp_avg_sq")
        let again = try LAMB(beta1: 0.9, beta2: 0.999, eps: 1e-6, weightDecay: 0.1)
        again.setParameterLayout(entries)
        assertClose(run(again, steps: 2, lr: 0.01), [2.932293241555031, 3.9270850009889156, 0.9800000399999201], "LAMB step 2")
    }

    /// The trust ratio is per tensor: scaling one tensor's weights and gradients by 10 leaves
    /// the other's update unchanged (bitwise), and its own relative step unchanged.
    func testTrustRatioIsPerTensor() throws {
        let layout = [
            ParameterEntry(name: "a.weight", shape: [3], role: .weight(fanIn: 3, fanOut: 1), offset: 0, isTrainable: true),
            ParameterEntry(name: "b.weight", shape: [3], role: .weight(fanIn: 3, fanOut: 1), offset: 3, isTrainable: true),
        ]
        for make in [{ try LARS(momentum: 0, weightDecay: 0, trustCoefficient: 0.01) as Optimizer },
                     { try LAMB(weightDecay: 0) as Optimizer }] {
            func update(scale: Float) throws -> [Float] {
                let o = try make()
                o.setParameterLayout(layout)
                var p: [Float] = [1, -2, 0.5, 3 * scale, 1 * scale, -1 * scale]
                let g: [Float] = [0.1, 0.3, -0.2, 0.4 * scale, -0.1 * scale, 0.2 * scale]
                p.withUnsafeMutableBufferPointer { pb in g.withUnsafeBufferPointer { gb in
                    o.step(parameters: pb.baseAddress!, gradients: gb.baseAddress!, count: 6, learningRate: 0.5) } }
                return p
            }
            let one = try update(scale: 1), ten = try update(scale: 10)
            XCTAssertEqual(Array(one[0..<3]).map(\.bitPattern), Array(ten[0..<3]).map(\.bitPattern))
            for k in 3..<6 { XCTAssertEqual(ten[k] / 10, one[k], accuracy: 1e-5) }
        }
    }

    /// Saved after 3 steps and restored into a fresh optimizer, the next 2 steps are bitwise
    /// those of the uninterrupted one; a wrong state is refused.
    func testStateRestoreContinuesBitwise() throws {
        let n = 23
        let layout = [
            ParameterEntry(name: "c.weight", shape: [2, 5], role: .weight(fanIn: 5, fanOut: 2), offset: 0, isTrainable: true),
            ParameterEntry(name: "c.bias", shape: [2], role: .bias(fanIn: 5), offset: 10, isTrainable: true),
            ParameterEntry(name: "bn.weight", shape: [3], role: .ones, offset: 12, isTrainable: true),
            ParameterEntry(name: "bn.bias", shape: [3], role: .zeros, offset: 15, isTrainable: true),
            ParameterEntry(name: "fc.weight", shape: [5], role: .weight(fanIn: 5, fanOut: 1), offset: 18, isTrainable: true),
        ]
        func grads(_ s: Int) -> [Float] { (0..<n).map { Float(sin(Double($0 * 7 + s * 13))) } }
        func steps(_ o: Optimizer, _ p: inout [Float], _ range: Range<Int>, lr: Float) {
            for s in range {
                let g = grads(s)
                p.withUnsafeMutableBufferPointer { pb in g.withUnsafeBufferPointer { gb in
                    o.step(parameters: pb.baseAddress!, gradients: gb.baseAddress!, count: n, learningRate: lr) } }
            }
        }
        for make in [{ try LARS(momentum: 0.9, weightDecay: 1e-3, trustCoefficient: 0.01) as Optimizer },
                     { try LAMB(weightDecay: 0.01) as Optimizer }] {
            let a = try make()
            a.setParameterLayout(layout)
            var p = (0..<n).map { Float(cos(Double($0))) }
            steps(a, &p, 0..<3, lr: 0.1)
            let saved = a.stateTensors.map { (name: $0.name, tensor: $0.tensor.clone()) }
            var q = p
            steps(a, &p, 3..<5, lr: 0.07)
            let b = try make()
            b.setParameterLayout(layout)
            try b.loadState(stepCount: 3, tensors: saved)
            steps(b, &q, 3..<5, lr: 0.07)
            XCTAssertEqual(p.map(\.bitPattern), q.map(\.bitPattern), a.name)
            XCTAssertEqual(b.stepCount, 5)
            XCTAssertThrowsError(try make().loadState(stepCount: 3, tensors: []), a.name)
        }
        let lamb = try LAMB()
        XCTAssertThrowsError(try LARS().loadState(stepCount: 1, tensors: [("exp_avg", Tensor(shape: [3])), ("exp_avg_sq", Tensor(shape: [3]))]))
        XCTAssertEqual(lamb.name, "lamb")
    }

    /// Through the trainer: stopped after step 5 and resumed from the checkpoint, the run at
    /// step 10 is bitwise the uninterrupted one (weights and optimizer state), with BatchNorm
    /// and biases in the model so both kinds of tensor are in the layout; and the loss falls.
    func testTrainerCheckpointResumeIsBitwise() throws {
        for kind in [OptimizerKind.lars, .lamb] {
            var config = syntheticConfig(steps: 4, batch: 32)
            config.optimizer = kind
            config.lr = kind == .lars ? 2 : 0.01
            config.trustCoefficient = 0.02
            config.weightDecay = 1e-4
            config.epochs = 3
            config.maxSteps = 10
            config.schedule = .constant
            let straight = try trainLocally(config, ranks: 2, runDirectory: temporaryFolder("\(kind)-straight"))
            let dir = temporaryFolder("\(kind)-resumed")
            var first = config
            first.maxSteps = 5
            _ = try trainLocally(first, ranks: 2, runDirectory: dir)
            let resumed = try trainLocally(config, ranks: 2, runDirectory: dir, resume: true)
            XCTAssertEqual(resumed.params.map(\.bitPattern), straight.params.map(\.bitPattern), "\(kind)")
            XCTAssertEqual(resumed.optimizerState.map { $0.map(\.bitPattern) }, straight.optimizerState.map { $0.map(\.bitPattern) },
                           "\(kind)")
            XCTAssertEqual(straight.optimizerState.count, kind == .lars ? 1 : 2)
            let losses = straight.history.map(\.trainLoss)
            XCTAssertLessThan(try XCTUnwrap(losses.last), try XCTUnwrap(losses.first), "\(kind): \(losses)")
        }
    }

    func testValidationNamesTheField() {
        for (field, body) in [("trust_coefficient", { _ = try LARS(trustCoefficient: 0) }),
                              ("trust_coefficient", { _ = try LARS(trustCoefficient: .nan) }),
                              ("momentum", { _ = try LARS(momentum: 1) }),
                              ("weight_decay", { _ = try LAMB(weightDecay: -1) }),
                              ("beta2", { _ = try LAMB(beta2: 1) })] as [(String, () throws -> Void)] {
            XCTAssertThrowsError(try body()) { error in
                guard case CnnError.invalidConfig(let f, _, _) = error else { return XCTFail("\(error)") }
                XCTAssertEqual(f, field)
            }
        }
        var config = TrainingConfig()
        config.trustCoefficient = -1
        XCTAssertThrowsError(try config.validate())
    }
}
