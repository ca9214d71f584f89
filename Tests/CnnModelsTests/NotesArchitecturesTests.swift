import XCTest
import CnnCore
import CnnLayers
import CnnModels

/// The architectures of the notes as model files in configs/models/, each with its
/// published parameter count (counted from the layer tree: no storage for VGG-19's 143 M).
final class NotesArchitecturesTests: XCTestCase {
    func definition(_ name: String) throws -> ModelDefinition { try ModelFile.load(path: modelFilePath(name)) }

    func count(_ name: String) throws -> Int {
        let d = try definition(name)
        return parameterCount(of: try d.build(input: try XCTUnwrap(d.defaultInput), classes: try XCTUnwrap(d.defaultClasses)))
    }

    func testPublishedParameterCounts() throws {
        let expected: [(String, Int, String)] = [
            // Seed 002: (5·5+1)·10 + (5·5·10+1)·20 + (320+1)·100 + (100+1)·10.
            ("mnist-cnn", 260 + 5020 + 32_100 + 1010, "seed 002"),
            // LeCun et al. 1998 with a fully connected C3: 156 + 2416 + 48120 + 10164 + 850 ("about 60,000").
            ("lenet5-1998", 61_706, "LeNet-5 1998"),
            // d2l's AlexNet: 11712 + 614656 + 885120 + 1327488 + 884992 + 26218496 + 16781312 + 40970.
            ("alexnet-d2l", 46_764_746, "d2l AlexNet"),
            ("vgg11", 132_863_336, "torchvision"), ("vgg13", 133_047_848, "torchvision"),
            ("vgg16", 138_357_544, "torchvision"), ("vgg19", 143_667_240, "torchvision"),
            // He et al. 2016 CIFAR nets, 0.27 M / 0.85 M / 1.7 M; option A (parameter-free
            // shortcuts) gives 269,722 / 853,018 / 1,727,962, the plain nets the same, and
            // option B adds the two projections' 16·32 + 64 + 32·64 + 128 = 2,752.
            ("plain20", 269_722, "He et al."), ("plain56", 853_018, "He et al."),
            ("resnet20", 269_722 + 2752, "He et al."), ("resnet56", 853_018 + 2752, "He et al."),
            ("resnet110", 1_727_962 + 2752, "He et al."),
            ("resnet18", 11_689_512, "torchvision"), ("resnet34", 21_797_672, "torchvision"),
            ("resnet50", 25_557_032, "torchvision"), ("resnet101", 44_549_160, "torchvision"),
            ("resnet152", 60_192_808, "torchvision"),
            ("densenet121", 7_978_856, "torchvision"), ("googlenet", 6_624_904, "torchvision, no aux heads"),
            ("alexnet", 62_378_344, "seed 004's table"),
            // Caffe's bvlc_googlenet: 6,998,552 without the auxiliary classifiers (the paper's
            // table: ~6.8 M) plus two heads of 512·128+128 (528·128+128) + 2048·1024+1024 + 1024·1000+1000.
            ("googlenet-paper", 6_998_552 + 3_188_840 + 3_190_888, "Szegedy et al. / Caffe"),
            ("googlenet-aux", 13_004_888, "torchvision aux_logits=True"),
            // Zeiler & Fergus Fig. 3: 14208 + 614656 + 885120 + 1327488 + 884992 + 37752832
            // (6·6·256 → 4096) + 16781312 + 4097000.
            ("zfnet", 62_357_608, "Zeiler & Fergus"),
            // Seed 000's create_vgg (PyTorch counts 2,205,802 after the lazy layers materialise):
            // 896 + 64 + 9248 + 64 + 18496 + 128 + 2·(36928 + 128) + 4096·512 + 512 + 5130.
            ("minivgg-code", 2_205_802, "seed 000's code"),
        ]
        for (name, total, source) in expected {
            XCTAssertEqual(try count(name), total, "\(name) (\(source))")
        }
    }

    /// torchvision's state_dict keys for the bottleneck ResNets.
    func testResNet50StateDictNames() throws {
        let d = try definition("resnet50")
        let root = try d.build(input: [3, 224, 224], classes: 1000)
        let table = tensorTable(root)
        XCTAssertEqual(table.count, 320)   // len(torchvision.models.resnet50().state_dict())
        for key in ["conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer1.0.conv3.weight",
                    "layer1.0.downsample.0.weight", "layer1.0.downsample.1.num_batches_tracked",
                    "layer2.0.conv2.weight", "layer3.5.bn3.bias", "layer4.2.bn3.running_mean", "fc.weight", "fc.bias"] {
            XCTAssertTrue(table.contains { $0.hasPrefix("P \(key) ") || $0.hasPrefix("B \(key) ") }, key)
        }
        XCTAssertFalse(table.contains { $0.contains("layer1.1.downsample") })
        // torchvision v1.5: the stride sits on the 3x3 convolution; layer2.0.conv2 halves 56 to 28.
        let seq = try XCTUnwrap(root as? Sequential)
        XCTAssertEqual(try Sequential(Array(seq.layers[0...5])).outputShape(for: [1, 3, 224, 224]), [1, 512, 28, 28])
    }

    /// densenet121-torchvision is the zoo's densenet121 under torchvision's names (727
    /// tensors, as len(torchvision.models.densenet121().state_dict())): same tensors in the
    /// same order, ".new." gone, and bitwise the same logits from the same initialisation.
    func testDenseNetTorchvisionNames() throws {
        let tv = try definition("densenet121-torchvision").build(input: [3, 224, 224], classes: 1000)
        let zoo = try ZooModel.densenet121.build(input: [3, 224, 224], classes: 1000)
        let table = tensorTable(tv)
        XCTAssertEqual(table.count, 727)
        XCTAssertEqual(table, tensorTable(zoo).map { $0.replacingOccurrences(of: ".new.", with: ".") })
        XCTAssertTrue(table.contains { $0.hasPrefix("P features.denseblock1.denselayer1.norm1.weight ") })
        XCTAssertEqual(try count("densenet121-torchvision"), 7_978_856)
        let a = try Model(definition: try definition("densenet121-torchvision"), inputShape: [3, 32, 32], classCount: 10)
        let b = try Model(name: "densenet121", inputShape: [3, 32, 32], classCount: 10)
        a.store.initialize(seed: 5)
        b.store.initialize(seed: 5)
        let x = Tensor(shape: [2, 3, 32, 32])
        var rng = SplitMix64(seed: 6)
        for i in 0..<x.count { x[i] = rng.nextUnitFloat() }
        for training in [false, true] {
            let ctx = ExecutionContext(training: training, seed: 1)
            XCTAssertEqual(bits(a.forward(x, context: ctx)), bits(b.forward(x, context: ctx)), "training \(training)")
        }
    }

    /// Seed 000's create_vgg: nn.Sequential indices as state_dict keys (39, as PyTorch's).
    func testMiniVGGCodeNames() throws {
        let table = tensorTable(try definition("minivgg-code").build(input: [3, 32, 32], classes: 10))
        XCTAssertEqual(table.count, 39)
        for key in ["P 0.weight [32, 3, 3, 3]", "B 1.running_mean [32]", "P 14.weight [64, 64, 3, 3]", "B 15.running_var [64]",
                    "P 20.weight [512, 4096]", "P 22.bias [10]"] {
            XCTAssertTrue(table.contains { $0.hasPrefix(key) }, key)
        }
    }

    /// The paper's "1.5 billion multiply-adds at inference time", LRN in the stem, 5x5 branches.
    func testGoogLeNetPaperStructure() throws {
        let model = try Model(definition: try definition("googlenet-paper"))
        let rows = try summaryRows(of: model)
        let macs = rows.reduce(0) { $0 + $1.multiplyAccumulates }
        XCTAssertGreaterThan(macs, 1_500_000_000)
        XCTAssertLessThan(macs, 1_600_000_000)
        XCTAssertEqual(rows.filter { $0.type == "LocalResponseNorm" }.map(\.name), ["norm1", "norm2"])
        XCTAssertEqual(model.store.parameterEntries.first { $0.name == "inception3a.2.2.weight" }?.shape, [32, 16, 5, 5])
        XCTAssertEqual(model.store.parameterEntries.first { $0.name == "inception3a.branch1.0.weight" }?.shape, [64, 192, 1, 1])
        XCTAssertEqual(rows.first { $0.name == "inception5b" }?.outputShape, [1024, 7, 7])
    }

    func testSmallArchitecturesTrainOneStep() throws {
        for name in ["mnist-cnn", "lenet5-1998", "plain20", "resnet56"] {
            let model = try Model(definition: try definition(name))
            model.store.initialize(seed: 3)
            let x = Tensor(shape: [2] + model.inputShape)
            var rng = SplitMix64(seed: 4)
            for i in 0..<x.count { x[i] = rng.nextUnitFloat() }
            let ctx = ExecutionContext(training: true, seed: 1)
            let logits = model.forward(x, context: ctx)
            XCTAssertEqual(logits.shape, [2, 10], name)
            let loss = try SoftmaxCrossEntropy()
            let labels: [Int32] = [3, 7]
            let value = labels.withUnsafeBufferPointer { loss.forward(logits: logits, labels: $0, normalizer: 2) }
            XCTAssertTrue(value.isFinite, name)
            model.store.zeroGradients()
            _ = model.backward(loss.backward(), context: ctx)
            XCTAssertGreaterThan(model.store.gradients.toArray().reduce(0) { $0 + abs($1) }, 0, name)
        }
    }
}
