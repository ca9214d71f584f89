import Foundation
import XCTest
import CnnCore
import CnnLayers
import CnnModels
import CnnData
import CnnTraining

/// Hand-run halves of the PyTorch interop check (Tests/pytorch/compare_logits.py).
/// Both skip unless their environment variable is set.
final class PyTorchInteropTests: XCTestCase {
    /// CNN_DIST_INTEROP_DIR=DIR: trains each reference model a few SGD steps on
    /// synthetic data of its input shape (so weights and BatchNorm running
    /// statistics are non-trivial), writes DIR/MODEL.safetensors and 500 held-out
    /// images as DIR/MODEL-images.idx + MODEL-labels.idx (IDX, 0x803 or 0x804)
    /// and, for 3-channel models, DIR/MODEL-test_batch.bin (CIFAR-10 binary),
    /// for `compare_logits.py compare`.
    func testWriteCheckpointsForPyTorch() throws {
        guard let dir = ProcessInfo.processInfo.environment["CNN_DIST_INTEROP_DIR"] else {
            throw XCTSkip("set CNN_DIST_INTEROP_DIR to write interop checkpoints")
        }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        for name in ["lenet5", "fashion-cnn", "minivgg", "resnet20"] {
            let model = try Model(name: name)
            model.store.initialize(seed: 7)
            let (c, h, w) = (model.inputShape[0], model.inputShape[1], model.inputShape[2])
            // One synthetic stream (one set of class templates): 12 batches to train, 500 images to test.
            let all = ImageDataset.synthetic(count: 12 * 32 + 500, channels: c, height: h, width: w, seed: 3)
            let train = all.subset(0..<(12 * 32)), test = all.subset((12 * 32)..<all.count)
            let statistics = ChannelStatistics.compute(train)
            let assembler = BatchAssembler(dataset: train, statistics: statistics)
            let optimizer = try SGD(momentum: 0.9)
            let loss = try SoftmaxCrossEntropy()
            let context = ExecutionContext(training: true, seed: 1)
            for step in 0..<12 {
                context.step = step
                let (images, labels) = assembler.batch(indices: (step * 32)..<(step * 32 + 32), epoch: 0)
                let logits = model.forward(images, context: context)
                let l = labels.withUnsafeBufferPointer { loss.forward(logits: logits, labels: $0, normalizer: 32) }
                model.store.zeroGradients()
                _ = model.backward(loss.backward(), context: context)
                optimizer.step(model.store, learningRate: 0.02)
                if step == 11 { print("\(name): loss after 12 steps \(l)") }
            }
            try writeModelCheckpoint(model: model, statistics: statistics, step: 12, to: "\(dir)/\(name).safetensors")
            try test.writeIDX(imagesPath: "\(dir)/\(name)-images.idx", labelsPath: "\(dir)/\(name)-labels.idx")
            if c == 3 { try test.writeCIFAR10Batch(path: "\(dir)/\(name)-test_batch.bin") }
        }
    }

    /// CNN_DIST_TORCH_EXPORTS=a.safetensors,b.safetensors: files saved by
    /// `compare_logits.py export` load strictly through loadModelCheckpoint.
    func testLoadPyTorchExports() throws {
        guard let list = ProcessInfo.processInfo.environment["CNN_DIST_TORCH_EXPORTS"] else {
            throw XCTSkip("set CNN_DIST_TORCH_EXPORTS to load PyTorch-saved state_dicts")
        }
        for path in list.split(separator: ",").map(String.init) {
            let (tensors, metadata) = try readStateDict(path: path)
            let loaded = try loadModelCheckpoint(path: path)
            let counters = loaded.model.store.bufferEntries.filter { $0.role == .counter }
                .map { loaded.model.store.buffers[$0.offset] }
            print("\(path): \(metadata["model"] ?? "?") loaded \(tensors.count) tensors "
                  + "(\(Set(tensors.values.map(\.dtype.rawValue)).sorted())), \(loaded.model.parameterCount) parameters, "
                  + "num_batches_tracked \(Set(counters).sorted())")
            XCTAssertEqual(tensors.count, loaded.model.store.parameterEntries.count + loaded.model.store.bufferEntries.count)
        }
    }
}
