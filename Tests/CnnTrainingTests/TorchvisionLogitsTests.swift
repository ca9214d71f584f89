import Foundation
import XCTest
import CnnCore
import CnnLayers
import CnnModels
import CnnTraining

/// torchvision's resnet50, vgg19, densenet121 and googlenet (also with aux_logits=True, whose
/// heads load into googlenet-aux and are ignored in evaluation) with random weights, exported by
/// Tests/pytorch/torchvision_logits.py (run by hand; the files live outside the repository),
/// loaded strictly into our model files: logits on torchvision's fixed batch within 1e-4 of
/// torchvision's, as max |ours − theirs| / max |theirs|. Skipped unless
/// CNN_DIST_TORCHVISION_DIR names the export folder.
final class TorchvisionLogitsTests: XCTestCase {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().path
    static let models = [("resnet50", "configs/models/resnet50.yaml"), ("vgg19", "configs/models/vgg19.yaml"),
                         ("densenet121", "configs/models/densenet121-torchvision.yaml"), ("googlenet", "googlenet"),
                         ("googlenet_aux", "configs/models/googlenet-aux.yaml")]

    func testTorchvisionLogits() throws {
        guard let dir = ProcessInfo.processInfo.environment["CNN_DIST_TORCHVISION_DIR"] else {
            throw XCTSkip("set CNN_DIST_TORCHVISION_DIR to the folder Tests/pytorch/torchvision_logits.py wrote")
        }
        var found = 0
        for (name, ours) in Self.models {
            let weights = "\(dir)/\(name).safetensors", io = "\(dir)/\(name)-io.safetensors"
            guard FileManager.default.fileExists(atPath: weights), FileManager.default.fileExists(atPath: io) else { continue }
            found += 1
            let model = try Model(name: ours.hasSuffix(".yaml") ? "\(Self.root)/\(ours)" : ours, inputShape: [3, 224, 224],
                                  classCount: 1000)
            try model.store.load(try readStateDict(path: weights).tensors, strict: true)
            let batch = try readStateDict(path: io).tensors
            let input = try XCTUnwrap(batch["input"]), expected = try XCTUnwrap(batch["logits"])
            let x = Tensor(shape: input.shape)
            let values = input.floats()
            for i in 0..<x.count { x[i] = values[i] }
            let t0 = Date()
            let logits = model.forward(x, context: ExecutionContext(training: false))
            let reference = expected.floats()
            XCTAssertEqual(logits.shape, expected.shape, name)
            var worst = 0.0, scale = 0.0
            for i in 0..<reference.count {
                worst = max(worst, abs(Double(logits[i]) - Double(reference[i])))
                scale = max(scale, abs(Double(reference[i])))
            }
            let relative = worst / max(scale, 1e-30)
            print(String(format: "%@ (%@): %d tensors loaded strictly, max |diff| %.3e, max |logit| %.4g, relative %.2e, forward %.1fs",
                         name, ours, model.store.parameterEntries.count + model.store.bufferEntries.count,
                         worst, scale, relative, Date().timeIntervalSince(t0)))
            XCTAssertLessThanOrEqual(relative, 1e-4, name)
            if let aux1 = batch["aux1_logits"], let aux2 = batch["aux2_logits"] {
                try checkHeads(model, input: x, expected: [aux1.floats(), aux2.floats()])
            }
        }
        XCTAssertGreaterThan(found, 0, "no exports in \(dir)")
    }

    /// The auxiliary heads in eval mode (dropout off, BatchNorm running statistics) on the
    /// trunk's activations where they sit, against torchvision's aux1/aux2 on the same.
    func checkHeads(_ model: Model, input: Tensor, expected: [[Float]]) throws {
        let root = try XCTUnwrap(model.root as? Sequential)
        let eval = ExecutionContext(training: false)
        var x = input, heads = 0
        for layer in root.layers {
            if let head = layer as? AuxiliaryHead {
                let logits = head.head.forward(x, context: eval)
                let reference = expected[heads]
                var worst = 0.0, scale = 0.0
                for i in 0..<reference.count {
                    worst = max(worst, abs(Double(logits[i]) - Double(reference[i])))
                    scale = max(scale, abs(Double(reference[i])))
                }
                print(String(format: "  aux%d head: max |diff| %.3e, max |logit| %.4g, relative %.2e", heads + 1, worst, scale, worst / scale))
                XCTAssertLessThanOrEqual(worst / scale, 1e-4, "aux\(heads + 1)")
                heads += 1
            }
            x = layer.forward(x, context: eval)
        }
        XCTAssertEqual(heads, expected.count)
    }
}
