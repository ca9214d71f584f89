import Foundation
import XCTest
import CnnCore
import CnnLayers
import CnnModels

/// The model-file format: every option reaches the layer, composite blocks name their
/// children as PyTorch would, and bad or hostile files fail with file, line and field.
final class ModelFileTests: XCTestCase {
    func parse(_ text: String) throws -> ModelDefinition { try ModelFile.parse(yaml: text, file: "test.yaml") }

    func names(_ model: Model) -> [String] { model.store.parameterEntries.map(\.name) }

    /// The error's text, or a failure when there was none.
    func errorText(_ text: String, input: [Int] = [3, 16, 16], classes: Int = 4,
                   file: StaticString = #filePath, line: UInt = #line) -> String {
        do {
            let d = try parse(text)
            _ = try Model(definition: d, inputShape: input, classCount: classes)
            XCTFail("expected an error", file: file, line: line)
            return ""
        } catch {
            return "\(error)"
        }
    }

    func testEveryConvolutionOption() throws {
        let d = try parse("""
            name: options
            layers:
              - {type: conv, out: 8, kernel: [3, 5], stride: [1, 2], padding: same, dilation: [2, 1], groups: 1, bias: false, activation: relu}
              - {type: conv, out: 8, kernel: 3, padding: [0, 1, 2, 1], padding_mode: reflect, groups: 4}
              - {type: conv, out: 6, kernel: 2, padding: valid, flip: true, padding_mode: circular}
              - {type: conv, name: tail, out: classes, kernel: 1, activation: {type: leaky_relu, slope: 0.2}}
              - {type: global_maxpool, name: gmp}
              - flatten
            """)
        let model = try Model(definition: d, inputShape: [3, 16, 16], classCount: 5)
        XCTAssertEqual(model.name, "options")
        XCTAssertEqual(names(model), ["0.weight", "2.weight", "2.bias", "3.weight", "3.bias", "tail.weight", "tail.bias"])
        let seq = try XCTUnwrap(model.root as? Sequential)
        XCTAssertEqual(seq.names, ["0", "1", "2", "3", "tail", "5", "gmp", "7"])
        let c0 = try XCTUnwrap(seq.layers[0] as? Conv2D)
        XCTAssertEqual(c0.padding, .same)
        XCTAssertEqual(c0.dilation.height, 2)
        XCTAssertEqual(c0.stride.width, 2)
        XCTAssertFalse(c0.hasBias)
        XCTAssertTrue(seq.layers[1] is ReLU)
        let c2 = try XCTUnwrap(seq.layers[2] as? Conv2D)
        XCTAssertEqual(c2.padding, .explicit(top: 0, bottom: 1, left: 2, right: 1))
        XCTAssertEqual(c2.paddingMode, .reflect)
        XCTAssertEqual(c2.groups, 4)
        let c3 = try XCTUnwrap(seq.layers[3] as? Conv2D)
        XCTAssertTrue(c3.flipKernel)
        XCTAssertEqual(c3.paddingMode, .circular)
        XCTAssertEqual((seq.layers[5] as? LeakyReLU)?.negativeSlope, 0.2)
        // Shapes: 16x16 → same/stride (1, 2) → 16x8 → pad (0+1, 2+1) k3 → 15x9 → k2 → 14x8.
        XCTAssertEqual(try seq.layers[0].outputShape(for: [1, 3, 16, 16]), [1, 8, 16, 8])
        XCTAssertEqual(try Sequential(Array(seq.layers[0...3])).outputShape(for: [1, 3, 16, 16]), [1, 6, 14, 8])
    }

    func testEveryOtherLayer() throws {
        let d = try parse("""
            input: 3x12x12
            classes: 7
            layers:
              - {type: pad, padding: [1, 0, 2, 3], mode: constant, value: -1}
              - {type: pad, padding: 1, mode: replicate}
              - {type: lrn, size: 5, alpha: 0.0001, beta: 0.75, k: 2}
              - {type: batchnorm, eps: 0.001, momentum: 0.3}
              - {type: elu, alpha: 0.5}
              - {type: maxpool, kernel: [2, 3], stride: [2, 1], padding: [1, 1]}
              - {type: avgpool, kernel: 3, stride: 2, padding: 1}
              - sigmoid
              - tanh
              - global_avgpool
              - flatten
              - {type: dropout, p: 0.1}
              - {type: linear, out: 9, bias: false}
              - batchnorm
              - identity
              - {type: linear, out: classes}
              - softmax
            """)
        XCTAssertEqual(d.defaultInput, [3, 12, 12])
        XCTAssertEqual(d.defaultClasses, 7)
        XCTAssertEqual(d.name, "model")
        let model = try Model(definition: d)
        let seq = try XCTUnwrap(model.root as? Sequential)
        let pad = try XCTUnwrap(seq.layers[0] as? Pad2d)
        XCTAssertEqual([pad.top, pad.bottom, pad.left, pad.right], [1, 0, 2, 3])
        XCTAssertEqual(pad.value, -1)
        XCTAssertEqual((seq.layers[1] as? Pad2d)?.mode, .replicate)
        let lrn = try XCTUnwrap(seq.layers[2] as? LocalResponseNorm)
        XCTAssertEqual([Float(lrn.size), lrn.alpha, lrn.beta, lrn.k], [5, 0.0001, 0.75, 2])
        XCTAssertTrue(seq.layers[3] is BatchNorm2d)
        XCTAssertTrue(seq.layers[13] is BatchNorm1d)
        XCTAssertEqual((seq.layers[11] as? Dropout)?.p, 0.1)
        XCTAssertEqual((seq.layers[11] as? Dropout)?.key, 1)
        XCTAssertTrue(seq.layers[16] is Softmax)
        XCTAssertEqual(model.classCount, 7)
        // BatchNorm eps/momentum reach the layer: one training step moves running_mean by momentum·mean.
        model.store.initialize(seed: 1)
        let x = Tensor(shape: [2, 3, 12, 12])
        for i in 0..<x.count { x[i] = Float(i % 13) * 0.1 }
        let y = model.forward(x, context: ExecutionContext(training: true))
        XCTAssertEqual((0..<7).reduce(Float(0)) { $0 + y[$1] }, 1, accuracy: 1e-5)
    }

    func testCompositeBlocksAndNames() throws {
        let d = try parse("""
            define:
              unit:
                params: {out: ~, stride: 1}
                layer:
                  type: residual
                  shortcut: auto
                  shortcut_name: sc
                  activation: relu
                  branch:
                    - {type: conv, name: c1, out: $out, kernel: 3, stride: $stride, padding: 1, bias: false}
                    - {type: batchnorm, name: b1}
              pair:
                params: {width: 4}
                layers:
                  - {type: conv, out: $width, kernel: 1}
                  - relu
            layers:
              - {type: repeat, count: 2, layer: {type: unit, out: 4}}
              - {type: repeat, count: 2, first: {stride: 2}, layer: {type: unit, out: 8, name: "u$i"}}
              - {type: pair, width: 6}
              - type: concat
                name: mix
                branches:
                  - {type: identity, name: skip}
                  - [{type: conv, out: 2, kernel: 3, padding: 1}, relu]
                  - {type: maxpool, name: pool, kernel: 3, stride: 1, padding: 1}
              - type: residual
                name: proj
                shortcut: projection
                branch: [{type: conv, out: 14, kernel: 3, padding: 1}]
              - {type: repeat, count: 2, layers: [{type: conv, name: "r$i", out: 3, kernel: 1}, {type: relu, name: "a$i0"}]}
              - global_avgpool
              - {type: linear, out: classes}
            """)
        let model = try Model(definition: d, inputShape: [4, 8, 8], classCount: 3)
        let seq = try XCTUnwrap(model.root as? Sequential)
        XCTAssertEqual(seq.names, ["0", "1", "u1", "u2", "4", "5", "mix", "proj", "r1", "a0", "r2", "a1", "12", "13"])
        XCTAssertEqual(names(model), [
            "0.c1.weight", "0.b1.weight", "0.b1.bias", "1.c1.weight", "1.b1.weight", "1.b1.bias",
            "u1.c1.weight", "u1.b1.weight", "u1.b1.bias", "u1.sc.0.weight", "u1.sc.1.weight", "u1.sc.1.bias",
            "u2.c1.weight", "u2.b1.weight", "u2.b1.bias",
            "4.weight", "4.bias", "mix.1.0.weight", "mix.1.0.bias",
            "proj.0.weight", "proj.0.bias", "proj.shortcut.0.weight", "proj.shortcut.1.weight", "proj.shortcut.1.bias",
            "r1.weight", "r1.bias", "r2.weight", "r2.bias", "13.weight", "13.bias",
        ])
        // The projection shortcut of u1 is a strided 1x1 convolution to 8 channels.
        XCTAssertEqual(model.store.parameterEntries.first { $0.name == "u1.sc.0.weight" }?.shape, [8, 4, 1, 1])
        XCTAssertEqual(try seq.layers[6].outputShape(for: [1, 6, 4, 4]), [1, 14, 4, 4])
    }

    func testZooNameOrPathBothWork() throws {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("model-file-test-\(getpid()).yml")
        try """
            name: tiny
            input: [1, 8, 8]
            classes: 3
            layers: [flatten, {type: linear, out: classes}]
            """.write(to: url, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: url) }
        let m = try Model(name: url.path)
        XCTAssertEqual(m.name, "tiny")
        XCTAssertEqual(m.parameterCount, 64 * 3 + 3)
        XCTAssertEqual(try Model(name: url.path, inputShape: [2, 4, 4], classCount: 5).parameterCount, 32 * 5 + 5)
        XCTAssertThrowsError(try Model(name: "/nonexistent/model.yaml")) { error in
            XCTAssertTrue("\(error)".contains("/nonexistent/model.yaml"), "\(error)")
        }
        XCTAssertThrowsError(try Model(name: FileManager.default.temporaryDirectory.path + "/")) // not a zoo name either
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("model-dir-\(getpid()).yaml")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        XCTAssertThrowsError(try Model(name: dir.path)) { XCTAssertTrue("\($0)".contains("directory"), "\($0)") }
        let fifo = FileManager.default.temporaryDirectory.appendingPathComponent("model-fifo-\(getpid()).yaml").path
        XCTAssertEqual(mkfifo(fifo, 0o600), 0)
        defer { unlink(fifo) }
        XCTAssertThrowsError(try Model(name: fifo)) { XCTAssertTrue("\($0)".contains("not a regular file"), "\($0)") }
    }

    // MARK: Errors name file, line and field

    func testErrorsNameFileLineAndField() {
        let unknownOption = errorText("""
            layers:
              - flatten
              - {type: linear, out: 4, bais: false}
            """)
        XCTAssertTrue(unknownOption.contains("test.yaml:3") && unknownOption.contains("layers[1].bais"), unknownOption)

        let badKernel = errorText("""
            layers:
              - type: conv
                out: 4
                kernel: -3
              - flatten
            """)
        XCTAssertTrue(badKernel.contains("test.yaml:4") && badKernel.contains("layers[0].kernel"), badKernel)

        let unknownType = errorText("layers:\n  - flatten\n  - {type: dense, out: 4}\n")
        XCTAssertTrue(unknownType.contains("test.yaml:3") && unknownType.contains("unknown layer type 'dense'"), unknownType)

        // A shape that does not fit names the layer's line and the input it got.
        let shape = errorText("""
            layers:
              - {type: conv, out: 4, kernel: 3}
              - {type: maxpool, kernel: 20}
              - flatten
              - {type: linear, out: classes}
            """)
        XCTAssertTrue(shape.contains("test.yaml:3") && shape.contains("layers[1]") && shape.contains("4x14x14"), shape)

        let missing = errorText("layers:\n  - {type: conv, kernel: 3}\n")
        XCTAssertTrue(missing.contains("test.yaml:2") && missing.contains("layers[0].out"), missing)

        let duplicate = errorText("layers:\n  - flatten\n  - {type: linear, name: fc, out: 3}\n  - {type: linear, name: fc, out: 4}\n")
        XCTAssertTrue(duplicate.contains("test.yaml:4") && duplicate.contains("duplicate child name 'fc'"), duplicate)

        let badYAML = errorText("layers:\n  - {type: conv, out: 4\n  - relu\n")
        XCTAssertTrue(badYAML.contains("test.yaml") && badYAML.contains("not valid YAML"), badYAML)

        let noLayers = errorText("name: x\n")
        XCTAssertTrue(noLayers.contains("layers"), noLayers)

        let topLevel = errorText("layer:\n  - flatten\n")
        XCTAssertTrue(topLevel.contains("test.yaml:1") && topLevel.contains("unknown field"), topLevel)

        let missingParam = errorText("""
            define:
              b: {params: {out: ~}, layer: {type: conv, out: $out, kernel: 1}}
            layers:
              - {type: b}
            """)
        XCTAssertTrue(missingParam.contains("test.yaml:4") && missingParam.contains("needs parameter 'out'"), missingParam)

        let wrongOutput = errorText("layers:\n  - flatten\n  - {type: linear, out: 6}\n", classes: 4)
        XCTAssertTrue(wrongOutput.contains("output 1x4"), wrongOutput)
    }

    // MARK: Hostile files

    func testHostileFilesAreRefusedWithoutCrashing() {
        // Deep flow nesting: refused before the YAML composer recurses.
        let deep = "layers: " + String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)
        XCTAssertTrue(errorText(deep).contains("nesting deeper"), errorText(deep))
        // Deep block nesting.
        let block = "layers:\n" + (0..<300).map { String(repeating: " ", count: 2 * $0 + 2) + "- " }.joined(separator: "\n") + "relu\n"
        XCTAssertTrue(errorText(block).contains("nesting deeper"), String(errorText(block).prefix(200)))
        let dashes = "layers:\n  " + String(repeating: "- ", count: 50_000) + "relu\n"
        XCTAssertTrue(errorText(dashes).contains("nesting deeper"), String(errorText(dashes).prefix(200)))
        // Billion laughs: aliases multiply the node count.
        var laughs = "a: &a [relu, relu, relu, relu, relu, relu, relu, relu, relu, relu]\n"
        for i in 1...9 {
            laughs += "l\(i): &l\(i) [" + Array(repeating: i == 1 ? "*a" : "*l\(i - 1)", count: 10).joined(separator: ", ") + "]\n"
        }
        laughs += "layers: *l9\n"
        XCTAssertTrue(errorText(laughs).contains("YAML nodes"), String(errorText(laughs).prefix(300)))
        // Too large.
        let huge = "layers: [" + String(repeating: "relu, ", count: 300_000) + "flatten]\n"
        XCTAssertTrue(errorText(huge).contains("exceeds the limit"), String(errorText(huge).prefix(200)))
        // Repetition counts and self-reference.
        XCTAssertTrue(errorText("layers:\n  - {type: repeat, count: 100000000, layer: relu}\n").contains("layers[0].count"))
        let nested = errorText("layers:\n  - {type: repeat, count: 1000, layer: {type: repeat, count: 1000, layer: relu}}\n")
        XCTAssertTrue(nested.contains("more than"), nested)
        let selfUse = errorText("define:\n  loop: {layer: {type: loop}}\nlayers:\n  - {type: loop}\n")
        XCTAssertTrue(selfUse.contains("deeper than"), selfUse)
        // Sizes that would overflow or exhaust memory.
        XCTAssertTrue(errorText("layers:\n  - {type: conv, out: 4, kernel: 3, padding: 4611686018427387904}\n").contains("layers[0].padding"))
        XCTAssertTrue(errorText("layers:\n  - {type: conv, out: in*4611686018427387904, kernel: 1}\n").contains("layers[0].out"))
        XCTAssertTrue(errorText("layers:\n  - flatten\n  - {type: linear, out: 16000000}\n  - {type: linear, out: 16000000}\n")
            .contains("parameter and buffer elements"))
        XCTAssertTrue(errorText("layers:\n  - {type: pad, padding: 60000}\n  - {type: conv, out: 16000000, kernel: 1}\n")
            .contains("elements per sample"))
        // Not a mapping, empty, binary junk.
        XCTAssertTrue(errorText("- relu\n").contains("mapping"))
        XCTAssertTrue(errorText("").contains("empty"))
        XCTAssertFalse(errorText("layers: [\u{0}\u{1}]").isEmpty)
    }
}
