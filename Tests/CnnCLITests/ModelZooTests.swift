import XCTest
import CnnCore
import CnnLayers
import CnnModels

final class ModelZooTests: XCTestCase {
    /// Totals from seed 004's AlexNet table and the well-known torchvision counts.
    func testParameterTotalsMatchPublishedFigures() throws {
        let expected: [(String, [Int]?, Int?, Int)] = [
            ("alexnet", [3, 227, 227], 1000, 62_378_344),   // seed 004's table total
            ("resnet18", [3, 224, 224], 1000, 11_689_512),  // torchvision
            ("vgg16", [3, 224, 224], 1000, 138_357_544),    // torchvision
            ("vgg11", [3, 224, 224], 1000, 132_863_336),    // torchvision
            ("googlenet", [3, 224, 224], 1000, 6_624_904),  // torchvision, aux_logits=False
            ("densenet121", [3, 224, 224], 1000, 7_978_856), // torchvision
            ("resnet20", nil, nil, 272_474),                 // He et al.: 0.27M
        ]
        for (name, input, classes, total) in expected {
            let model = try Model(name: name, inputShape: input, classCount: classes)
            XCTAssertEqual(model.parameterCount, total, name)
        }
    }

    /// Sums of p.numel() of ../shared/reference/torch_models.py, worked out per layer:
    /// minivgg: 896+64+9248+64+18496+128+36928+128+2097664+1024+5130.
    func testReferenceModelTotals() throws {
        XCTAssertEqual(try Model(name: "minivgg").parameterCount,
                       896 + 64 + 9248 + 64 + 18496 + 128 + 36928 + 128 + 2_097_664 + 1024 + 5130)
        // fashion-cnn: conv 250, bn 50, conv 11300, bn 100, conv 33825, bn 150, fc 345600+512, fc 5130.
        XCTAssertEqual(try Model(name: "fashion-cnn").parameterCount,
                       250 + 50 + 11300 + 100 + 33825 + 150 + 346_112 + 5130)
        // lenet5: 156 + 2416 + 48120 + 10164 + 850.
        XCTAssertEqual(try Model(name: "lenet5").parameterCount, 156 + 2416 + 48120 + 10164 + 850)
    }

    func testAlexNetRowsMatchSeedTable() throws {
        let rows = try summaryRows(of: Model(name: "alexnet"))
        let convAndFC = rows.filter { $0.parameters > 0 }
        // Seed 004: Conv-1..5, FC-1..3 parameters and tensor sizes.
        XCTAssertEqual(convAndFC.map(\.parameters),
                       [34_944, 614_656, 885_120, 1_327_488, 884_992, 37_752_832, 16_781_312, 4_097_000])
        XCTAssertEqual(convAndFC.map(\.outputShape),
                       [[96, 55, 55], [256, 27, 27], [384, 13, 13], [384, 13, 13], [256, 13, 13], [4096], [4096], [1000]])
        XCTAssertEqual(rows.first { $0.type == "MaxPool2d" && $0.name == "12" }?.outputShape, [256, 6, 6])
    }

    /// The state_dict names of the PyTorch reference definitions.
    func testStateDictNamesMatchReference() throws {
        func names(_ model: Model) -> Set<String> {
            Set((model.store.parameterEntries + model.store.bufferEntries).map(\.name))
        }
        func bn(_ p: String) -> [String] {
            ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"].map { "\(p).\($0)" }
        }
        let fashion = Set(["0.weight", "0.bias", "4.weight", "4.bias", "9.weight", "9.bias",
                           "14.weight", "14.bias", "17.weight", "17.bias"] + bn("1") + bn("5") + bn("10"))
        XCTAssertEqual(names(try Model(name: "fashion-cnn")), fashion)

        var resnet = Set(["0.weight", "14.weight", "14.bias"] + bn("1"))
        for block in 3...11 {
            resnet.formUnion(["\(block).c1.weight", "\(block).c2.weight"] + bn("\(block).b1") + bn("\(block).b2"))
        }
        for block in [6, 9] { resnet.formUnion(["\(block).sc.0.weight"] + bn("\(block).sc.1")) }
        XCTAssertEqual(names(try Model(name: "resnet20")), resnet)

        let minivgg = try Model(name: "minivgg")
        XCTAssertEqual(minivgg.store.parameterEntries.first { $0.name == "17.weight" }?.shape, [512, 4096])
        XCTAssertTrue(names(minivgg).isSuperset(of: bn("19")))
    }

    func testUnknownModelAndBadInputAreNamed() {
        XCTAssertThrowsError(try Model(name: "resnet99")) { error in
            XCTAssertTrue("\(error)".contains("model") && "\(error)".contains("resnet99"), "\(error)")
        }
        // lenet5's second 5x5 convolution cannot take an 8x8 input after pooling to 4x4.
        XCTAssertThrowsError(try Model(name: "lenet5", inputShape: [1, 8, 8])) { error in
            XCTAssertTrue("\(error)".contains("input") && "\(error)".contains("1x8x8"), "\(error)")
        }
    }

    func testModelsRunForwardOnSmallInputs() throws {
        let context = ExecutionContext(training: true, seed: 1)
        for (name, input) in [("lenet5", [1, 28, 28]), ("fashion-cnn", [1, 28, 28]), ("minivgg", [3, 32, 32]),
                              ("resnet20", [3, 32, 32]), ("googlenet", [3, 64, 64]), ("densenet121", [3, 64, 64]),
                              ("resnet18", [3, 64, 64]), ("nin", [3, 96, 96])] {
            let model = try Model(name: name, inputShape: input, classCount: 10)
            model.store.initialize(seed: 3)
            let x = Tensor(shape: [2] + input)
            var rng = SplitMix64(seed: 5)
            for i in 0..<x.count { x[i] = rng.nextUnitFloat() }
            let y = model.forward(x, context: context)
            XCTAssertEqual(y.shape, [2, 10], name)
            XCTAssertTrue(y.toArray().allSatisfy { $0.isFinite }, name)
            model.store.zeroGradients()
            let dx = model.backward(Tensor(shape: [2, 10], values: (0..<20).map { Float($0 % 3) - 1 }), context: context)
            XCTAssertEqual(dx.shape, [2] + input, name)
        }
    }
}
