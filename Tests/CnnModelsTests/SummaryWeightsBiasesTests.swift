import XCTest
import CnnCore
import CnnLayers
import CnnModels

/// `summary` splits parameters into weights and biases as seed 004's AlexNet table does.
final class SummaryWeightsBiasesTests: XCTestCase {
    func testAlexNetWeightsAndBiasesMatchSeedTable() throws {
        let rows = try summaryRows(of: Model(name: "alexnet")).filter { $0.parameters > 0 }
        XCTAssertEqual(rows.map(\.weights), [34_848, 614_400, 884_736, 1_327_104, 884_736, 37_748_736, 16_777_216, 4_096_000])
        XCTAssertEqual(rows.map(\.biases), [96, 256, 384, 384, 256, 4096, 4096, 1000])
        for row in rows { XCTAssertEqual(row.weights + row.biases, row.parameters) }
    }

    func testModelFileRowsIncludeBlocksAndMACs() throws {
        let model = try Model(name: modelFilePath("mnist-cnn"))
        let rows = try summaryRows(of: model)
        let withParameters = rows.filter { $0.parameters > 0 }
        XCTAssertEqual(withParameters.map(\.weights), [250, 5000, 32_000, 1000])
        XCTAssertEqual(withParameters.map(\.biases), [10, 20, 100, 10])
        // MACs: 24·24·10·25 + 8·8·20·250 + 320·100 + 100·10.
        XCTAssertEqual(rows.reduce(0) { $0 + $1.multiplyAccumulates }, 144_000 + 320_000 + 32_000 + 1000)
        // A residual block is one row carrying its sub-layers' biases (none: convolutions without bias; BN shifts).
        let resnet = try summaryRows(of: Model(name: "resnet20"))
        let block = try XCTUnwrap(resnet.first { $0.type == "Block" })
        XCTAssertEqual(block.biases, 2 * 16)       // b1.bias and b2.bias
        XCTAssertEqual(block.weights, 2 * 16 * 16 * 9 + 2 * 16)
    }
}
