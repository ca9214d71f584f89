import Foundation
import XCTest
import CnnCore
import CnnLayers
import CnnModels

/// The package root, from this file's path (Tests/CnnModelsTests/…).
let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()

func modelFilePath(_ name: String) -> String { packageRoot.appendingPathComponent("configs/models/\(name).yaml").path }

/// (full state_dict name, shape, role, trainable) of every tensor, in state_dict order,
/// walked as ParameterStore walks (no storage allocated, so VGG-16 costs nothing).
func tensorTable(_ root: Layer) -> [String] {
    var rows: [String] = []
    func visit(_ layer: Layer, _ prefix: String) {
        for s in layer.parameterSpecs { rows.append("P \(prefix)\(s.name) \(s.shape) \(s.role)") }
        for s in layer.bufferSpecs { rows.append("B \(prefix)\(s.name) \(s.shape) \(s.role)") }
        for c in layer.children { visit(c.layer, prefix + c.name + ".") }
    }
    visit(root, "")
    return rows
}

/// The layer tree's types and child names, nested.
func treeSignature(_ layer: Layer) -> String {
    let kids = layer.children
    if kids.isEmpty { return layer.typeName }
    return layer.typeName + "(" + kids.map { "\($0.name):\(treeSignature($0.layer))" }.joined(separator: ",") + ")"
}

func bits(_ t: Tensor) -> [UInt32] { t.toArray().map(\.bitPattern) }

/// Each zoo model's file builds exactly what its Swift builder built: same tree, same
/// state_dict names, shapes, roles and counts at the default input, and bitwise the same
/// initial parameters, logits (eval and training mode, so dropout keys and BatchNorm eps
/// count) and running statistics on a fixed input with the same seed.
final class ZooFileEquivalenceTests: XCTestCase {
    /// A smaller input than the default for the ImageNet models (the forward pass at 224x224
    /// costs seconds on this machine); the structure is compared at the default input.
    let forwardInput: [String: [Int]] = [
        "alexnet": [3, 99, 99], "vgg11": [3, 32, 32], "vgg16": [3, 32, 32], "nin": [3, 67, 67],
        "googlenet": [3, 32, 32], "resnet18": [3, 32, 32], "densenet121": [3, 32, 32],
    ]

    func testEveryZooModelHasAFile() {
        XCTAssertEqual(ZooModel.names, ["lenet5", "fashion-cnn", "minivgg", "resnet20", "alexnet", "vgg11", "vgg16",
                                        "nin", "googlenet", "resnet18", "densenet121"])
        for name in ZooModel.names {
            XCTAssertTrue(FileManager.default.fileExists(atPath: modelFilePath(name)), name)
        }
    }

    func testFileBuildsMatchSwiftBuilders() throws {
        for name in ZooModel.names {
            let definition = try ModelFile.load(path: modelFilePath(name))
            XCTAssertEqual(definition.name, name)
            let swift = try XCTUnwrap(swiftZooBuilder(name), name)
            let entry = try ZooModel.named(name)
            XCTAssertEqual(definition.defaultInput, entry.defaultInput, name)
            XCTAssertEqual(definition.defaultClasses, entry.defaultClasses, name)

            // Structure at the default input and class count.
            let input = entry.defaultInput, classes = entry.defaultClasses
            let a = try swift(input, classes), b = try definition.build(input: input, classes: classes)
            XCTAssertEqual(treeSignature(a), treeSignature(b), name)
            XCTAssertEqual(tensorTable(a), tensorTable(b), name)
            XCTAssertEqual(parameterCount(of: a), parameterCount(of: b), name)
            XCTAssertEqual(try a.outputShape(for: [1] + input), try b.outputShape(for: [1] + input), name)

            // Values on a fixed input.
            let small = forwardInput[name] ?? input
            let ma = try Model(name: name, root: try swift(small, 10), inputShape: small, classCount: 10)
            let mb = try Model(definition: definition, inputShape: small, classCount: 10)
            XCTAssertEqual(ma.store.parameterEntries, mb.store.parameterEntries, name)
            XCTAssertEqual(ma.store.bufferEntries, mb.store.bufferEntries, name)
            ma.store.initialize(seed: 2024)
            mb.store.initialize(seed: 2024)
            XCTAssertEqual(bits(ma.store.parameters), bits(mb.store.parameters), name)
            var rng = SplitMix64(seed: 99)
            let x = Tensor(shape: [2] + small)
            for i in 0..<x.count { x[i] = rng.nextUnitFloat() * 2 - 1 }
            for training in [false, true] {
                let ctx = ExecutionContext(training: training, seed: 5, step: 3, sampleOffset: 0)
                let ya = bits(ma.forward(x, context: ctx)), yb = bits(mb.forward(x, context: ctx))
                XCTAssertEqual(ya.count, 20, name)
                XCTAssertEqual(ya, yb, "\(name) logits, training \(training)")
            }
            XCTAssertEqual(bits(ma.store.buffers), bits(mb.store.buffers), "\(name) running statistics")
            print("zoo file \(name): \(tensorTable(b).count) tensors, \(parameterCount(of: b)) parameters, logits bitwise equal")
        }
    }

    /// The model files are also compiled into the binary (ZooModelFiles.swift), so an
    /// installed binary needs no configs folder; the two copies must not drift.
    func testEmbeddedCopiesMatchFiles() throws {
        for model in ZooModel.allCases {
            let onDisk = try String(contentsOfFile: modelFilePath(model.rawValue), encoding: .utf8)
            XCTAssertEqual(ZooModelFiles.yaml(for: model), onDisk,
                           "\(model.rawValue).yaml differs from its copy in Sources/CnnModels/ZooModelFiles.swift; "
                               + "regenerate it (see the comment at the top of that file)")
        }
    }

    /// Model(name:) builds the zoo through the same files.
    func testZooBuildIsTheFileBuild() throws {
        for name in ZooModel.names {
            let zoo = try ZooModel.named(name).build(input: ZooModel.named(name).defaultInput,
                                                     classes: ZooModel.named(name).defaultClasses)
            let file = try ModelFile.load(path: modelFilePath(name))
                .build(input: ZooModel.named(name).defaultInput, classes: ZooModel.named(name).defaultClasses)
            XCTAssertEqual(tensorTable(zoo), tensorTable(file), name)
            XCTAssertEqual(treeSignature(zoo), treeSignature(file), name)
        }
    }

    func testSmoothBatchNormFile() throws {
        let path = packageRoot.appendingPathComponent("Tests/models/smooth-bn.yaml").path
        let fileModel = try Model(name: path)
        XCTAssertEqual(fileModel.name, "smooth-bn")
        XCTAssertEqual(fileModel.inputShape, [1, 28, 28])
        XCTAssertEqual(fileModel.classCount, 10)
        let swiftModel = try Model(name: "smooth-bn", root: try swiftSmoothBatchNorm(), inputShape: [1, 28, 28], classCount: 10)
        XCTAssertEqual(fileModel.store.parameterEntries, swiftModel.store.parameterEntries)
        XCTAssertEqual(treeSignature(fileModel.root), treeSignature(swiftModel.root))
        fileModel.store.initialize(seed: 7)
        swiftModel.store.initialize(seed: 7)
        let x = Tensor(shape: [3, 1, 28, 28])
        var rng = SplitMix64(seed: 1)
        for i in 0..<x.count { x[i] = rng.nextUnitFloat() }
        for training in [false, true] {
            let ctx = ExecutionContext(training: training, seed: 11, step: 2)
            XCTAssertEqual(bits(fileModel.forward(x, context: ctx)), bits(swiftModel.forward(x, context: ctx)))
        }
    }
}
