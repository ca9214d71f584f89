import XCTest
import CnnCore
import CnnLayers
import CnnModels
import CnnTraining

/// The trainer optimises main + weight·aux: the auxiliary head's parameters are trained
/// (they get gradients only from its loss), and 1 rank equals 2 ranks.
final class TrainerAuxiliaryLossTests: XCTestCase {
    static let net = """
    input: [1, 28, 28]
    classes: 10
    layers:
      - {type: conv, name: c1, out: 4, kernel: 5, stride: 2, activation: tanh}
      - type: aux
        name: aux1
        layers:
          - {type: avgpool, kernel: 4}
          - flatten
          - {type: linear, name: fc, out: classes}
      - {type: conv, name: c2, out: 8, kernel: 3, stride: 2, activation: tanh}
      - {type: global_avgpool, name: pool}
      - {type: flatten, name: flatten}
      - {type: linear, name: fc, out: classes}
    """

    func makeModel() throws -> Model {
        let model = try Model(definition: try ModelFile.parse(yaml: Self.net, file: "aux-net.yaml"))
        model.store.initialize(seed: 3)
        return model
    }

    func testHeadIsTrainedAndRanksAgree() throws {
        var config = syntheticConfig(steps: 4, batch: 32)
        config.lr = 0.1
        config.weightDecay = 0   // else decay alone would move the head
        let initial = try makeModel()
        let one = try trainLocally(config, ranks: 1, makeModel: makeModel)
        let two = try trainLocally(config, ranks: 2, makeModel: makeModel)
        let head = try XCTUnwrap(initial.store.parameterEntries.first { $0.name == "aux1.fc.weight" })
        let before = initial.store.parameters.toArray()
        let moved = (head.offset ..< head.offset + head.count).filter { one.params[$0] != before[$0] }.count
        XCTAssertEqual(moved, head.count, "every weight of the auxiliary head must be updated by its loss")
        for (a, b) in zip(one.params, two.params) { XCTAssertEqual(a, b, accuracy: 1e-5 * max(1, abs(a))) }
    }
}
