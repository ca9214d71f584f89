import XCTest
import CnnCore
import CnnLayers

final class ArgumentTests: XCTestCase {
    /// Asserts `body` throws a CnnError whose message names `layer` and `value`.
    func assertThrows(_ layer: String, _ value: String, file: StaticString = #filePath, line: UInt = #line,
                      _ body: () throws -> Any) {
        do {
            _ = try body()
            XCTFail("expected an error from \(layer)", file: file, line: line)
        } catch let error as CnnError {
            let text = error.description
            XCTAssertTrue(text.contains(layer) && text.contains(value), "message: \(text)", file: file, line: line)
        } catch {
            XCTFail("unexpected error \(error)", file: file, line: line)
        }
    }

    func testBadConstructorArguments() {
        assertThrows("Linear", "-1") { try Linear(-1, 3) }
        assertThrows("Linear", "0") { try Linear(3, 0) }
        assertThrows("BatchNorm2d", "0") { try BatchNorm2d(0) }
        assertThrows("BatchNorm1d", "-4") { try BatchNorm1d(-4) }
        assertThrows("BatchNorm2d", "1.5") { try BatchNorm2d(3, momentum: 1.5) }
        assertThrows("Dropout", "1.0") { try Dropout(p: 1) }
        assertThrows("Dropout", "-0.1") { try Dropout(p: -0.1) }
        assertThrows("MaxPool2d", "2") { try MaxPool2d(kernelSize: 2, padding: 2) }
        assertThrows("MaxPool2d", "-2") { try MaxPool2d(kernelSize: -2) }
        assertThrows("MaxPool2d", "0") { try MaxPool2d(kernelSize: 2, stride: 0) }
        assertThrows("AvgPool2d", "2") { try AvgPool2d(kernelSize: 3, padding: 2) }
        assertThrows("AvgPool2d", "-1") { try AvgPool2d(kernelSize: 3, padding: -1) }
        assertThrows("SoftmaxCrossEntropy", "1.0") { try SoftmaxCrossEntropy(labelSmoothing: 1) }
    }

    func testShapeMismatches() throws {
        assertThrows("Linear", "2x5") { try Linear(4, 3).outputShape(for: [2, 5]) }
        assertThrows("BatchNorm2d", "2x4x5x5") { try BatchNorm2d(3).outputShape(for: [2, 4, 5, 5]) }
        assertThrows("BatchNorm2d", "2x3") { try BatchNorm2d(3).outputShape(for: [2, 3]) }
        assertThrows("BatchNorm1d", "2x3x4x4") { try BatchNorm1d(3).outputShape(for: [2, 3, 4, 4]) }
        assertThrows("MaxPool2d", "1x1x1x1") { try MaxPool2d(kernelSize: 2).outputShape(for: [1, 1, 1, 1]) }
        assertThrows("AvgPool2d", "3x4") { try AvgPool2d(kernelSize: 2).outputShape(for: [3, 4]) }
        assertThrows("AdaptiveAvgPool2d", "3x4") { try GlobalAvgPool2d().outputShape(for: [3, 4]) }
        assertThrows("ReLU", "0x4") { try ReLU().outputShape(for: [0, 4]) }
        let block = Residual(branch: [("l", try Linear(4, 3))], shortcut: nil, activation: ReLU())
        assertThrows("Block", "2x4") { try block.outputShape(for: [2, 4]) }
        let concat = Concat(branches: [("a", try MaxPool2d(kernelSize: 2)), ("b", Identity())])
        assertThrows("Concat", "1x2x4x4") { try concat.outputShape(for: [1, 2, 4, 4]) }
    }

    func testShapesAndNames() throws {
        XCTAssertEqual(try Linear(12, 5).outputShape(for: [7, 3, 2, 2]), [7, 5])
        XCTAssertEqual(try MaxPool2d(kernelSize: 3, stride: 2, padding: 1).outputShape(for: [2, 4, 7, 7]), [2, 4, 4, 4])
        XCTAssertEqual(try AvgPool2d(kernelSize: 2).outputShape(for: [2, 4, 5, 5]), [2, 4, 2, 2])
        XCTAssertEqual(try Flatten().outputShape(for: [2, 4, 5, 5]), [2, 100])
        XCTAssertEqual(try GlobalAvgPool2d().outputShape(for: [2, 4, 5, 5]), [2, 4, 1, 1])
        XCTAssertEqual(GlobalAvgPool2d().typeName, "AdaptiveAvgPool2d")
        let bn = try BatchNorm2d(3, affine: false)
        XCTAssertEqual(bn.parameterSpecs, [])
        XCTAssertEqual(bn.bufferSpecs.map(\.name), ["running_mean", "running_var", "num_batches_tracked"])
        XCTAssertEqual(bn.bufferSpecs[2].shape, [])
        XCTAssertEqual(bn.bufferSpecs[2].count, 1)
        XCTAssertEqual(try Linear(3, 4).parameterSpecs[0].role, .weight(fanIn: 3, fanOut: 4))
    }

    func testResidualCallsGradientsReadyInReverseOrder() throws {
        let b1 = try BatchNorm1d(3), b2 = try BatchNorm1d(3), sc = try Linear(3, 3)
        let block = Residual(branch: [("b1", b1), ("r", ReLU()), ("b2", b2)], shortcut: ("sc", sc), activation: ReLU())
        let store = ParameterStore(root: block)
        store.initialize(seed: 2)
        XCTAssertEqual(store.parameterEntries.map(\.name), ["b1.weight", "b1.bias", "b2.weight", "b2.bias", "sc.weight", "sc.bias"])
        let context = ExecutionContext()
        var order: [ObjectIdentifier] = []
        context.gradientsReady = { order.append(ObjectIdentifier($0)) }
        let y = block.forward(randomTensor([4, 3], seed: 3), context: context)
        _ = block.backward(randomTensor(y.shape, seed: 4), context: context)
        let withParams = order.filter { store.layerRanges[$0] != nil }
        XCTAssertEqual(withParams, [ObjectIdentifier(sc), ObjectIdentifier(b2), ObjectIdentifier(b1)])
    }
}

final class DropoutTests: XCTestCase {
    func testMaskDoesNotDependOnBatchSplit() throws {
        let x = randomTensor([10, 50], seed: 1, offset: 2)
        let whole = try Dropout(p: 0.3, key: 17)
        let y = whole.forward(x, context: ExecutionContext(training: true, seed: 9, step: 4, sampleOffset: 0)).toArray()
        let part = try Dropout(p: 0.3, key: 17)
        let first = Tensor(shape: [4, 50], values: Array(x.toArray()[0..<200]))
        let second = Tensor(shape: [6, 50], values: Array(x.toArray()[200..<500]))
        let a = part.forward(first, context: ExecutionContext(training: true, seed: 9, step: 4, sampleOffset: 0)).toArray()
        let b = part.forward(second, context: ExecutionContext(training: true, seed: 9, step: 4, sampleOffset: 4)).toArray()
        XCTAssertEqual(a + b, y)
    }

    func testMaskStatisticsScalingAndVariation() throws {
        let x = Tensor(shape: [20, 1000])
        x.fill(1)
        let d = try Dropout(p: 0.25, key: 1)
        let y = d.forward(x, context: ExecutionContext(training: true, seed: 3, step: 0)).toArray()
        let kept = y.filter { $0 != 0 }
        XCTAssertTrue(kept.allSatisfy { abs($0 - 1 / 0.75) < 1e-6 })
        XCTAssertEqual(Double(kept.count) / 20000, 0.75, accuracy: 0.02)
        // Backward reuses the mask.
        let dx = d.backward(x, context: ExecutionContext(training: true, seed: 3, step: 0)).toArray()
        XCTAssertEqual(dx, y)
        // Another step, another key, another seed: different masks.
        let y2 = d.forward(x, context: ExecutionContext(training: true, seed: 3, step: 1)).toArray()
        XCTAssertNotEqual(y, y2)
        let other = try Dropout(p: 0.25, key: 2)
        XCTAssertNotEqual(y, other.forward(x, context: ExecutionContext(training: true, seed: 3, step: 0)).toArray())
        // Eval: identity.
        let e = d.forward(x, context: ExecutionContext(training: false))
        XCTAssertTrue(e === x)
    }
}
