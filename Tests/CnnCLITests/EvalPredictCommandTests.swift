import Foundation
import XCTest
import CnnCLI
import CnnCore
import CnnLayers
import CnnModels
import CnnData
import CnnDistributed
import CnnTraining

/// `cnn-dist eval` and `cnn-dist predict` against the trainer and the model.
final class EvalPredictCommandTests: XCTestCase {
    func temporaryDirectory() throws -> String {
        let path = NSTemporaryDirectory() + "cnn-cli-ckpt-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        return path
    }

    func syntheticConfig() -> TrainingConfig {
        var c = TrainingConfig()
        c.model = "lenet5"; c.dataset = .synthetic; c.syntheticCount = 256; c.seed = 5
        c.epochs = 1; c.batchSize = 32; c.schedule = .constant; c.lr = 0.1; c.testLimit = 50
        return c
    }

    func assertError(_ body: () throws -> Void, _ fragments: [String], line: UInt = #line) {
        do {
            try body()
            XCTFail("expected an error containing \(fragments)", line: line)
        } catch {
            let text = "\(error)"
            for fragment in fragments { XCTAssertTrue(text.contains(fragment), "'\(fragment)' not in: \(text)", line: line) }
        }
    }

    /// A tiny model trained a few steps, checkpointed, evaluated by `eval`:
    /// the same loss and accuracy as Trainer.evaluate, on 1 and 2 ranks.
    func testEvalMatchesTrainerEvaluate() throws {
        let dir = try temporaryDirectory()
        let config = syntheticConfig()
        let trainer = try Trainer(config: config, communicator: SingleProcessCommunicator(), runDirectory: dir, log: { _ in })
        let history = try trainer.run()
        let expected = try trainer.evaluate()
        XCTAssertEqual(history.last?.testAccuracy, expected.accuracy)
        XCTAssertEqual(expected.count, 50)

        let arguments = ["--checkpoint", dir + "/model.safetensors", "--dataset", "synthetic", "--synthetic-count", "256",
                         "--seed", "5", "--test-limit", "50", "--batch-size", "32", "--label-smoothing", "0.1", "--json"]
        let command = try EvalCommand.parse(arguments)
        let text = try command.evaluateAndFormat(communicator: SingleProcessCommunicator())
        let object = try JSONSerialization.jsonObject(with: Data(text.utf8)) as! [String: Any]
        XCTAssertEqual(object["count"] as? Int, expected.count)
        XCTAssertEqual(object["correct"] as? Int, expected.correct)
        XCTAssertEqual(object["accuracy"] as! Double, expected.accuracy, accuracy: 1e-12)
        XCTAssertEqual(object["loss"] as! Double, expected.loss, accuracy: 1e-9)
        XCTAssertEqual(object["dataset"] as? String, "synthetic")
        XCTAssertEqual(object["checkpoint"] as? String, dir + "/model.safetensors")
        print("eval: \(text); trainer: \(expected)")

        // Two in-process ranks: each image once, the same totals.
        let lock = NSLock()
        var results: [String] = []
        try LocalWorld.run(size: 2) { comm in
            let out = try command.evaluateAndFormat(communicator: comm)
            lock.lock(); results.append(out); lock.unlock()
        }
        for out in results {
            let o = try JSONSerialization.jsonObject(with: Data(out.utf8)) as! [String: Any]
            XCTAssertEqual(o["count"] as? Int, expected.count)
            XCTAssertEqual(o["correct"] as? Int, expected.correct)
            XCTAssertEqual(o["loss"] as! Double, expected.loss, accuracy: 1e-6)
        }

        // The plain-text form, and plain cross-entropy by default.
        let plain = try EvalCommand.parse(Array(arguments.dropLast(3)))
        let line = try plain.evaluateAndFormat(communicator: SingleProcessCommunicator())
        XCTAssertTrue(line.contains("accuracy \(String(format: "%.4f", expected.accuracy))"), line)
    }

    /// `predict` on an IDX file the test writes gives model.forward's logits.
    func testPredictOnIDXMatchesForward() throws {
        let dir = try temporaryDirectory()
        let model = try Model(name: "fashion-cnn")
        model.store.initialize(seed: 11)
        let stats = ChannelStatistics(mean: [0.3], std: [0.35])
        let checkpoint = dir + "/m.safetensors"
        try writeModelCheckpoint(model: model, statistics: stats, to: checkpoint)
        let images = ImageDataset.synthetic(count: 37, seed: 9)

        for compressed in [false, true] {
            let input = dir + "/images-\(compressed).idx", output = dir + "/pred-\(compressed).safetensors"
            try images.writeIDX(imagesPath: input, labelsPath: dir + "/labels.idx", compressed: compressed)
            try PredictCommand.parse(["--checkpoint", checkpoint, "--input", input, "--output", output]).run()

            let (tensors, metadata) = try readStateDict(path: output)
            XCTAssertEqual(metadata["model"], "fashion-cnn")
            let logits = try XCTUnwrap(tensors["logits"]), predictions = try XCTUnwrap(tensors["predictions"])
            XCTAssertEqual(logits.shape, [37, 10])
            XCTAssertEqual(predictions.dtype, .i64)
            XCTAssertEqual(predictions.shape, [37])

            let (batch, _) = BatchAssembler(dataset: images, statistics: stats).batch(indices: 0..<37, epoch: 0)
            let expected = model.forward(batch, context: ExecutionContext(training: false)).toArray()
            XCTAssertEqual(logits.floats(), expected)
            let argmax = (0..<37).map { i -> Float in
                let row = expected[(i * 10)..<(i * 10 + 10)]
                return Float(row.firstIndex(of: row.max()!)! - i * 10)
            }
            XCTAssertEqual(predictions.floats(), argmax)
        }
    }

    /// A 3-channel model on a CIFAR-10 binary file; labels in the file are ignored.
    func testPredictOnCIFARFile() throws {
        let dir = try temporaryDirectory()
        let model = try Model(name: "resnet20")
        model.store.initialize(seed: 2)
        let stats = ChannelStatistics(mean: [0.49, 0.48, 0.45], std: [0.25, 0.24, 0.26])
        let checkpoint = dir + "/r.safetensors"
        try writeModelCheckpoint(model: model, statistics: stats, to: checkpoint)
        let images = ImageDataset.synthetic(count: 5, channels: 3, height: 32, width: 32, seed: 4)
        let input = dir + "/batch.bin", output = dir + "/out.safetensors"
        var bytes = images.cifar10Bytes()
        bytes[0] = 200   // a label outside 0..<10: ignored
        try FileBytes.write(bytes, to: input)
        try PredictCommand.parse(["--checkpoint", checkpoint, "--input", input, "--output", output, "--batch-size", "2"]).run()
        let logits = try XCTUnwrap(try readStateDict(path: output).tensors["logits"])
        let (batch, _) = BatchAssembler(dataset: images, statistics: stats).batch(indices: 0..<5, epoch: 0)
        let expected = model.forward(batch, context: ExecutionContext(training: false)).toArray()
        let worst = zip(logits.floats(), expected).map { abs($0 - $1) }.max()!
        XCTAssertLessThan(worst, 1e-5)   // batches of 2 against one of 5: blocking may differ in the last bits

        // A 1-channel file for a 3-channel model names the input file.
        let idx = dir + "/gray.idx"
        try ImageDataset.synthetic(count: 2).writeIDX(imagesPath: idx, labelsPath: dir + "/l.idx")
        assertError({ try PredictCommand.parse(["--checkpoint", checkpoint, "--input", idx, "--output", output]).run() }, [idx, "1x28x28", "3x32x32"])
    }

    /// Damaged checkpoints and inputs: errors name the file.
    func testDamagedFilesAreNamed() throws {
        let dir = try temporaryDirectory()
        let model = try Model(name: "lenet5")
        model.store.initialize(seed: 1)
        let checkpoint = dir + "/c.safetensors"
        try writeModelCheckpoint(model: model, statistics: ChannelStatistics(mean: [0.3], std: [0.3]), to: checkpoint)
        let good = try FileBytes.read(checkpoint)
        let truncated = dir + "/truncated.safetensors"
        try FileBytes.write(Array(good[0..<(good.count / 2)]), to: truncated)
        let badHeader = dir + "/badheader.safetensors"
        var garbled = good
        garbled[9] = UInt8(ascii: "}")
        try FileBytes.write(garbled, to: badHeader)
        let images = dir + "/i.idx"
        try ImageDataset.synthetic(count: 3).writeIDX(imagesPath: images, labelsPath: dir + "/l.idx")

        for bad in [truncated, badHeader] {
            assertError({ try PredictCommand.parse(["--checkpoint", bad, "--input", images, "--output", dir + "/o"]).run() }, [bad])
            assertError({ _ = try EvalCommand.parse(["--checkpoint", bad, "--dataset", "synthetic"])
                .evaluateAndFormat(communicator: SingleProcessCommunicator()) }, [bad])
        }
        XCTAssertFalse(FileBytes.exists(dir + "/o"))

        // A truncated images file.
        let short = dir + "/short.idx"
        let idxBytes = try FileBytes.read(images)
        try FileBytes.write(Array(idxBytes[0..<(idxBytes.count - 7)]), to: short)
        assertError({ _ = try readImageFile(path: short) }, [short, "truncated"])
        assertError({ _ = try readImageFile(path: dir + "/l.idx") }, [dir + "/l.idx"])
        assertError({ _ = try readImageFile(path: dir + "/l.idx", format: .idx) }, ["labels file"])
    }
}
