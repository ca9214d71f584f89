import XCTest
import CnnCore
import CnnLayers
import CnnModels

/// GoogLeNet's auxiliary classifiers: counted in the parameters, trained through a
/// 0.3-weighted loss whose gradient reaches the trunk, and ignored by evaluation.
final class AuxiliaryHeadTests: XCTestCase {
    /// A small net with one head on the first convolution's output (no dropout or BN, so
    /// training-mode forwards are deterministic and smooth for finite differences).
    static func smallNet(aux: Bool, weight: Float = 0.3) -> String {
        """
        name: aux-small
        input: [2, 6, 6]
        classes: 3
        layers:
          - {type: conv, name: c1, out: 4, kernel: 3, padding: 1, activation: tanh}
        \(aux ? """
          - type: aux
            name: aux1
            weight: \(weight)
            layers:
              - {type: avgpool, kernel: 2}
              - flatten
              - {type: linear, name: fc1, out: 5, activation: tanh}
              - {type: linear, name: fc2, out: classes}
        """ : "")
          - {type: conv, name: c2, out: 5, kernel: 3, activation: tanh}
          - {type: global_avgpool, name: pool}
          - {type: flatten, name: flatten}
          - {type: linear, name: fc, out: classes}
        """
    }

    func build(aux: Bool, weight: Float = 0.3) throws -> Model {
        let d = try ModelFile.parse(yaml: Self.smallNet(aux: aux, weight: weight), file: "aux-small.yaml")
        let model = try Model(definition: d)
        model.store.initialize(seed: 11)
        return model
    }

    func input(_ n: Int, _ shape: [Int], seed: UInt64) -> Tensor {
        let x = Tensor(shape: [n] + shape)
        var rng = SplitMix64(seed: seed)
        for i in 0..<x.count { x[i] = rng.nextUnitFloat() * 2 - 1 }
        return x
    }

    /// torchvision googlenet(aux_logits=True): 13,004,888 parameters, 6,624,904 without the
    /// heads (aux_logits=False); the paper's (Caffe bvlc_googlenet) 13,378,280 and 6,998,552.
    func testParameterCountsWithAndWithoutHeads() throws {
        for (name, total, trunk) in [("googlenet-aux", 13_004_888, 6_624_904), ("googlenet-paper", 13_378_280, 6_998_552)] {
            let d = try ModelFile.load(path: modelFilePath(name))
            let root = try d.build(input: [3, 224, 224], classes: 1000)
            let rows = tensorTable(root).filter { $0.hasPrefix("P ") }
            XCTAssertEqual(parameterCount(of: root), total, name)
            let heads = rows.filter { $0.hasPrefix("P aux") }
            let headCount = heads.reduce(0) { sum, row in
                let shape = row.split(separator: "[")[1].split(separator: "]")[0]
                return sum + shape.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces))! }.reduce(1, *)
            }
            XCTAssertEqual(total - headCount, trunk, name)
        }
    }

    /// googlenet-aux's state_dict is torchvision's (len 364 with aux_logits=True, the heads'
    /// keys and shapes as InceptionAux names them).
    func testTorchvisionAuxNames() throws {
        let root = try ModelFile.load(path: modelFilePath("googlenet-aux")).build(input: [3, 224, 224], classes: 1000)
        let table = tensorTable(root)
        XCTAssertEqual(table.count, 364)
        for (key, shape) in [("aux1.conv.conv.weight", [128, 512, 1, 1]), ("aux1.conv.bn.running_var", [128]),
                             ("aux1.fc1.weight", [1024, 2048]), ("aux1.fc2.bias", [1000]),
                             ("aux2.conv.conv.weight", [128, 528, 1, 1]), ("aux2.fc2.weight", [1000, 1024])] {
            XCTAssertTrue(table.contains { $0.hasPrefix("\(key) \(shape) ") || $0.contains(" \(key) \(shape) ") }, key)
        }
        // The trunk is googlenet's, name for name.
        let zoo = tensorTable(try ZooModel.googlenet.build(input: [3, 224, 224], classes: 1000))
        XCTAssertEqual(table.filter { !$0.dropFirst(2).hasPrefix("aux") }, zoo)
    }

    /// The objective main + 0.3·aux: its value from separate losses, and its gradient (trunk,
    /// head and input) against central differences in Double.
    func testCombinedLossGradientCheck() throws {
        let model = try build(aux: true)
        let x = input(3, model.inputShape, seed: 5)
        let labels: [Int32] = [2, 0, 1]
        let ctx = ExecutionContext(training: true, seed: 1)
        let loss = try ModelLoss(model: model, labelSmoothing: 0.1)
        XCTAssertEqual(loss.heads.count, 1)
        func objective() -> Double {
            let logits = model.forward(x, context: ctx)
            return labels.withUnsafeBufferPointer { loss.forward(logits: logits, labels: $0, normalizer: 4) }
        }
        // Known decomposition: the main loss plus 0.3 times the head's loss of its own logits.
        let value = objective()
        let logits = model.forward(x, context: ctx)
        let head = try XCTUnwrap(model.auxiliaryHeads.first?.output)
        let separate = try SoftmaxCrossEntropy(labelSmoothing: 0.1)
        let mainPart = labels.withUnsafeBufferPointer { separate.forward(logits: logits, labels: $0, normalizer: 4) }
        let auxPart = labels.withUnsafeBufferPointer { separate.forward(logits: head, labels: $0, normalizer: 4) }
        XCTAssertEqual(value, mainPart + Double(Float(0.3)) * auxPart, accuracy: 1e-12)
        XCTAssertGreaterThan(auxPart, 0)

        // Analytic gradients.
        _ = objective()
        model.store.zeroGradients()
        let dx = model.backward(loss.backward(), context: ctx).clone()
        let analytic = model.store.gradients.clone()

        var worst = 0.0, checked = 0
        func compare(_ a: Float, _ numeric: Double, _ what: String) {
            let err = abs(Double(a) - numeric) / max(1e-2, abs(Double(a)), abs(numeric))
            worst = max(worst, err)
            checked += 1
            XCTAssertLessThan(err, 2e-2, "\(what): analytic \(a), numeric \(numeric)")
        }
        let h: Float = 1e-2
        for entry in model.store.parameterEntries {
            for k in stride(from: 0, to: entry.count, by: max(1, entry.count / 6)) {
                let i = entry.offset + k
                let p = model.store.parameters.data
                let saved = p[i]
                p[i] = saved + h; let up = objective()
                p[i] = saved - h; let down = objective()
                p[i] = saved
                compare(analytic[i], (up - down) / Double(2 * h), "\(entry.name)[\(k)]")
            }
        }
        for i in stride(from: 0, to: x.count, by: 7) {
            let saved = x[i]
            x[i] = saved + h; let up = objective()
            x[i] = saved - h; let down = objective()
            x[i] = saved
            compare(dx[i], (up - down) / Double(2 * h), "input[\(i)]")
        }
        XCTAssertGreaterThan(checked, 40)

        // The head's gradient reaches the trunk: c1's gradient differs from the one of the
        // same net trained without the head's loss (weight 0).
        let plain = try build(aux: true, weight: 0)
        let plainLoss = try ModelLoss(model: plain, labelSmoothing: 0.1)
        let plainLogits = plain.forward(x, context: ctx)
        _ = labels.withUnsafeBufferPointer { plainLoss.forward(logits: plainLogits, labels: $0, normalizer: 4) }
        plain.store.zeroGradients()
        _ = plain.backward(plainLoss.backward(), context: ctx)
        let c1 = try XCTUnwrap(model.store.parameterEntries.first { $0.name == "c1.weight" })
        let differs = (c1.offset ..< c1.offset + c1.count).contains { analytic[$0] != plain.store.gradients[$0] }
        XCTAssertTrue(differs, "the auxiliary loss must change the trunk's gradient")
    }

    /// Evaluation never runs the heads: logits equal, bit for bit, those of the same net
    /// without heads holding the same trunk weights, whatever the heads' weights are.
    func testEvaluationIgnoresHeads() throws {
        let withHeads = try build(aux: true)
        let without = try build(aux: false)
        for entry in without.store.parameterEntries {
            let source = try XCTUnwrap(withHeads.store.parameterEntries.first { $0.name == entry.name })
            without.store.parameters.data.advanced(by: entry.offset)
                .update(from: withHeads.store.parameters.data.advanced(by: source.offset), count: entry.count)
        }
        let x = input(4, withHeads.inputShape, seed: 9)
        let eval = ExecutionContext(training: false)
        let reference = bits(without.forward(x, context: eval))
        XCTAssertEqual(bits(withHeads.forward(x, context: eval)), reference)
        XCTAssertNil(withHeads.auxiliaryHeads[0].output)
        // Scrambling the head's weights changes nothing at evaluation.
        for entry in withHeads.store.parameterEntries where entry.name.hasPrefix("aux1.") {
            for k in 0..<entry.count { withHeads.store.parameters[entry.offset + k] = Float(k % 7) - 3 }
        }
        XCTAssertEqual(bits(withHeads.forward(x, context: eval)), reference)
        // An evaluation loss is the main loss alone.
        let loss = try ModelLoss(model: withHeads)
        let main = try SoftmaxCrossEntropy()
        let labels: [Int32] = [0, 1, 2, 0]
        let logits = withHeads.forward(x, context: eval)
        let a = labels.withUnsafeBufferPointer { loss.forward(logits: logits, labels: $0, normalizer: 4) }
        let b = labels.withUnsafeBufferPointer { main.forward(logits: logits, labels: $0, normalizer: 4) }
        XCTAssertEqual(a, b)
        // In training the head runs and the main path is still the identity there.
        let train = ExecutionContext(training: true)
        XCTAssertEqual(bits(withHeads.forward(x, context: train)), reference)
        XCTAssertEqual(withHeads.auxiliaryHeads[0].output?.shape, [4, 3])
    }

    func testAuxFileErrors() throws {
        let bad = """
        input: [1, 4, 4]
        classes: 3
        layers:
          - {type: aux, layers: [flatten, {type: linear, out: 5}]}
          - flatten
          - {type: linear, out: classes}
        """
        XCTAssertThrowsError(try ModelFile.parse(yaml: bad, file: "bad.yaml").build(input: [1, 4, 4], classes: 3)) { e in
            XCTAssertTrue("\(e)".contains("bad.yaml:4"), "\(e)")
            XCTAssertTrue("\(e)".contains("classes"), "\(e)")
        }
    }
}
