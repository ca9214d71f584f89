import Foundation
import XCTest
import CnnCLI
import CnnCore
import CnnData
import CnnDistributed
import CnnTraining

/// The fault campaign's defects, one test each: values that overflow or
/// mean nothing are refused naming the field, non-finite values are caught
/// where they enter and named.
final class HardeningTests: XCTestCase {
    private func folder(_ name: String) -> String {
        let dir = NSTemporaryDirectory() + "cnn-harden-\(name)-\(UUID().uuidString)"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        return dir
    }

    private func small() -> TrainingConfig {
        var c = TrainingConfig()
        c.model = "lenet5"; c.dataset = .synthetic; c.syntheticCount = 64; c.batchSize = 32
        c.epochs = 2; c.testLimit = 16; c.threads = 1
        return c
    }

    private func message(_ body: () throws -> Void) -> String {
        do { try body(); return "" } catch { return "\(error)" }
    }

    /// Each (YAML line, field, fragment of what is allowed) is refused naming the field.
    func testValuesThatOverflowOrMeanNothingAreRefusedByName() throws {
        let dir = folder("values")
        let cases: [(String, String, String)] = [
            ("epochs: 4611686018427387904", "epochs", "an integer from 1"),
            ("early_stopping_patience: -1", "early_stopping_patience", "(0 = off)"),
            ("warmup_epochs: 1e30", "warmup_epochs", "a finite number from 0.0"),
            ("crop_padding: 4611686018427387904", "crop_padding", "an integer from 0 to 1024"),
            ("translate: 1000000000", "translate", "an integer from 0 to 1024"),
            ("test_limit: -1", "test_limit", "(0 = all)"),
            ("accumulation_steps: 4611686018427387904", "accumulation_steps", "an integer from 1"),
            ("classes: 100000000", "classes", "an integer from 2 to 100000"),
            ("synthetic_count: 100000000", "synthetic_count", "an integer from 1"),
            ("lr: .nan", "lr", "a finite number"),
            ("momentum: .inf", "momentum", "a finite number"),
            ("seed: 2001-12-14", "seed", "a string, a finite number"),
            ("epochs: 2.5", "epochs", "an integer (no fraction"),
            ("epochs: 9223372036854775808", "epochs", "an integer (no fraction"),
            ("flip: !!binary aGk=", "flip", "a string, a finite number"),
        ]
        for (i, (line, field, fragment)) in cases.enumerated() {
            let path = "\(dir)/c\(i).yaml"
            try (line + "\n").write(toFile: path, atomically: true, encoding: .utf8)
            let text = message {
                let config = try loadTrainingConfig(path: path)
                try config.validate()
            }
            XCTAssertTrue(text.contains("config field '\(field)'") && text.contains(fragment), "\(line): \(text)")
        }
        XCTAssertThrowsError(try TrainCommand.parse(["--bucket-mb", "1e15"]))
        XCTAssertThrowsError(try SelfTestCommand.parse(["--large-count", "4611686018427387904"]))
    }

    /// Trains one step into a run folder, damages its resume point with `edit`,
    /// and returns what resuming from it throws ("" if it is accepted).
    private func resumeMessage(_ edit: @escaping (inout ResumePoint) -> Void) throws -> String {
        let dir = folder("resume")
        var c = small()
        c.maxSteps = 1
        var text = ""
        try LocalWorld.run(size: 1) { comm in _ = try Trainer(config: c, communicator: comm, runDirectory: dir, log: { _ in }).run() }
        try LocalWorld.run(size: 1) { comm in
            var point = try Trainer.loadResumePoint(runDirectory: dir, communicator: comm, log: { _ in })
            edit(&point)
            text = self.message { _ = try Trainer(config: c, communicator: comm, runDirectory: nil, resume: point, log: { _ in }) }
        }
        return text
    }

    /// A state.json whose epoch or step could never be reached is refused naming the field.
    func testAbsurdResumePositionIsRefused() throws {
        let text = try resumeMessage { $0.state.epoch = 1 << 62 }
        XCTAssertTrue(text.contains("state.json") && text.contains("epoch"), text)
    }

    /// A NaN optimizer buffer on resume is named with its file and tensor when
    /// loaded, not a step later as a gradient.
    func testNonFiniteOptimizerStateOnResumeIsNamed() throws {
        var name = ""
        let text = try resumeMessage { point in
            XCTAssertFalse(point.optimizer.isEmpty)
            name = point.optimizer[0].name
            point.optimizer[0].bytes.withUnsafeMutableBytes { $0.storeBytes(of: Float.nan, toByteOffset: 8, as: Float.self) }
        }
        XCTAssertTrue(text.contains("optimizer.safetensors") && text.contains(name) && text.contains("non-finite"), text)
    }

    /// Optimizer state that overflowed is never written into a checkpoint.
    func testNonFiniteOptimizerStateIsNotCheckpointed() throws {
        let dir = folder("infstate")
        var c = small()
        c.optimizer = .adam
        c.lr = 1e-3
        try LocalWorld.run(size: 1) { comm in
            let trainer = try Trainer(config: c, communicator: comm, runDirectory: dir, log: { _ in })
            trainer.stopRequested = {
                // After the first step: Adam's second moment overflows (as weight_decay 1e30 did).
                if let state = trainer.optimizer.stateTensors.last { state.tensor.data[3] = .infinity }
                return false
            }
            let text = self.message { try trainer.run() }
            XCTAssertTrue(text.contains("optimizer state") && text.contains("checkpoint not written"), text)
        }
        XCTAssertTrue(CheckpointStore.list(runDirectory: dir).isEmpty)
    }

    /// An empty test split, or test images of another shape, end the run before it starts.
    func testEmptyOrMismatchedTestSplitIsRefused() throws {
        let dir = folder("split")
        let train = ImageDataset.synthetic(count: 64, seed: 1)
        try train.writeIDX(imagesPath: dir + "/train-images-idx3-ubyte", labelsPath: dir + "/train-labels-idx1-ubyte")
        let other = ImageDataset.synthetic(count: 8, channels: 1, height: 14, width: 14, seed: 2)
        try other.writeIDX(imagesPath: dir + "/t10k-images-idx3-ubyte", labelsPath: dir + "/t10k-labels-idx1-ubyte")
        var c = small()
        c.dataset = .mnist
        c.data = dir
        try LocalWorld.run(size: 1) { comm in
            let text = self.message { _ = try Trainer(config: c, communicator: comm, runDirectory: nil, log: { _ in }) }
            XCTAssertTrue(text.contains("t10k-images") && text.contains("1x14x14"), text)
        }
        try ImageDataset.synthetic(count: 0, seed: 2)
            .writeIDX(imagesPath: dir + "/t10k-images-idx3-ubyte", labelsPath: dir + "/t10k-labels-idx1-ubyte")
        try LocalWorld.run(size: 1) { comm in
            let text = self.message { _ = try Trainer(config: c, communicator: comm, runDirectory: nil, log: { _ in }) }
            XCTAssertTrue(text.contains("test split is empty"), text)
        }
    }

    /// A diverged epoch's metrics line is written (non-finite values as
    /// strings) and read back, not lost to a JSON encoding error.
    func testNonFiniteMetricsLineIsKept() throws {
        let dir = folder("metrics")
        let run = RunDirectory(path: dir)
        _ = try run.start(config: small(), keepingEpochsThrough: 0)
        var m = try EpochMetrics.decoder.decode(EpochMetrics.self, from: Data("""
            {"epoch": 1, "lr": 0.1, "train_loss": 2, "train_accuracy": 0.1, "test_loss": 3, "test_accuracy": 0.1,
             "images_per_second": 1, "seconds": 1, "allreduce_wait_fraction": 0, "data_wait_fraction": 0,
             "forward_fraction": 0, "backward_fraction": 0, "optimizer_fraction": 0}
            """.utf8))
        m.testLoss = .infinity
        m.optimizerFraction = .nan
        try run.append(m)
        try run.close()
        let kept = try RunDirectory(path: dir).start(config: small(), keepingEpochsThrough: 1)
        XCTAssertEqual(kept.count, 1)
        XCTAssertEqual(kept.first?.testLoss, .infinity)
        XCTAssertTrue(kept.first?.optimizerFraction.isNaN ?? false)
    }

    /// A checkpoint whose model metadata contradicts its state.json's config
    /// (re-signed, so only the content check stands) is refused on resume.
    func testResumeRefusesContradictingModelMetadata() throws {
        let dir = folder("contradict")
        var c = small()
        c.maxSteps = 1
        try LocalWorld.run(size: 1) { comm in _ = try Trainer(config: c, communicator: comm, runDirectory: dir, log: { _ in }).run() }
        let source = CheckpointStore.folder(runDirectory: dir, step: 1)
        let decoded = try SafeTensors.decode(try FileBytes.read(source + "/model.safetensors"), file: "m")
        var metadata = decoded.metadata
        metadata["model"] = "fashion-cnn"
        let other = folder("contradict-run")
        try CheckpointStore.write(runDirectory: other, step: 1, files: [
            ("model.safetensors", try SafeTensors.encode(decoded.tensors, metadata: metadata)),
            ("optimizer.safetensors", try FileBytes.read(source + "/optimizer.safetensors")),
            ("state.json", try FileBytes.read(source + "/state.json")),
        ], keep: 1)
        try LocalWorld.run(size: 1) { comm in
            let text = self.message { _ = try Trainer.loadResumePoint(runDirectory: other, communicator: comm, log: { _ in }) }
            XCTAssertTrue(text.contains("model.safetensors") && text.contains("contradicts state.json"), text)
        }
    }
}
