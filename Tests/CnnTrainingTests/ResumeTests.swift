import Foundation
import XCTest
import CnnCore
import CnnDistributed
import CnnTraining

/// Checkpoints and resume: crash-consistent folders, verification, bitwise continuation.
final class ResumeTests: XCTestCase {
    /// Stopped after step k and resumed, the run at step 2k is bitwise the
    /// uninterrupted run (weights, BatchNorm buffers, optimizer state, test metrics),
    /// on 2 in-process ranks, with the stop inside an epoch.
    func testResumeIsBitwiseIdentical() throws {
        var config = syntheticConfig(steps: 6, batch: 32)   // 6 steps per epoch
        config.epochs = 3
        config.schedule = .onecycle
        config.lr = 0.05
        config.maxSteps = 14
        let straightDir = temporaryFolder("straight")
        let straight = try trainLocally(config, ranks: 2, runDirectory: straightDir)

        let dir = temporaryFolder("resumed")
        var first = config
        first.maxSteps = 7
        _ = try trainLocally(first, ranks: 2, runDirectory: dir)
        XCTAssertTrue(FileManager.default.fileExists(atPath: CheckpointStore.folder(runDirectory: dir, step: 7) + "/manifest.json"))
        var second = config
        second.maxSteps = 14
        let resumed = try trainLocally(second, ranks: 2, runDirectory: dir, resume: true)

        XCTAssertEqual(resumed.params, straight.params, "parameters must be bitwise equal")
        XCTAssertEqual(resumed.buffers, straight.buffers, "BatchNorm buffers must be bitwise equal")
        XCTAssertEqual(resumed.optimizerState, straight.optimizerState, "optimizer state must be bitwise equal")
        // Epoch 1 ended before the stop, epoch 2 was split by it: both runs report the same metrics.
        let a = try metrics(straightDir), b = try metrics(dir)
        XCTAssertEqual(a.count, 2)
        // Weights are bitwise equal; the split epoch's loss sum is added in another order (checkpointed
        // global sum + the rest), so it may differ in the last bit of a Double.
        for (x, y) in zip(a, b) { XCTAssertEqual(x.trainLoss, y.trainLoss, accuracy: 1e-12 * abs(x.trainLoss)) }
        XCTAssertEqual(a.map(\.trainAccuracy), b.map(\.trainAccuracy))
        XCTAssertEqual(a.map(\.testAccuracy), b.map(\.testAccuracy))
        XCTAssertEqual(a.map(\.testLoss), b.map(\.testLoss))
    }

    /// Resume works on another rank count: 2 ranks stop, 1 rank continues, and
    /// the result matches the uninterrupted 2-rank run to rounding.
    /// A run's config.json written before a key existed (here `recompute` and `precision`)
    /// decodes with that key's default; a complete one decodes to itself.
    func testRunConfigWithoutNewerKeysDecodesWithDefaults() throws {
        var config = TrainingConfig()
        config.model = "resnet20"
        config.batchSize = 48
        let full = try JSONSerialization.jsonObject(with: JSONEncoder().encode(config)) as! [String: Any]
        XCTAssertEqual(try decodeRunConfig(Array(JSONSerialization.data(withJSONObject: full))), config)
        var old = full
        XCTAssertNotNil(old.removeValue(forKey: "recompute"))
        XCTAssertNotNil(old.removeValue(forKey: "precision"))
        let bytes = Array(try JSONSerialization.data(withJSONObject: old))
        XCTAssertThrowsError(try JSONDecoder().decode(TrainingConfig.self, from: Data(bytes)))
        XCTAssertEqual(try decodeRunConfig(bytes), config)
        XCTAssertThrowsError(try decodeRunConfig(Array("{\"batch_size\": \"many\"}".utf8)))
    }

    func testResumeOnAnotherRankCount() throws {
        var config = syntheticConfig(steps: 6, batch: 32, model: "lenet5")
        config.epochs = 2
        config.lr = 0.1
        config.maxSteps = 10
        let straight = try trainLocally(config, ranks: 2)
        let dir = temporaryFolder("rerank")
        var first = config
        first.maxSteps = 4
        _ = try trainLocally(first, ranks: 2, runDirectory: dir)
        let resumed = try trainLocally(config, ranks: 1, runDirectory: dir, resume: true)
        XCTAssertLessThan(maxRelativeDifference(straight.params, resumed.params, label: "2 -> 1 rank"), 1e-5)
    }

    /// Resume skips a damaged newest checkpoint, says why, and uses the one before.
    func testResumeSkipsDamagedCheckpoint() throws {
        var config = syntheticConfig(steps: 6, batch: 32, model: "lenet5")
        config.epochs = 2
        config.checkpointEvery = 2
        config.keepCheckpoints = 2
        config.maxSteps = 5
        let dir = temporaryFolder("damaged")
        _ = try trainLocally(config, ranks: 1, runDirectory: dir)
        // Kept: the newest two, steps 4 and 5 (the stop).
        XCTAssertEqual(CheckpointStore.list(runDirectory: dir).map(\.step), [5, 4])
        let newest = CheckpointStore.folder(runDirectory: dir, step: 5) + "/model.safetensors"
        var bytes = Array(FileManager.default.contents(atPath: newest)!)
        bytes[bytes.count - 3] ^= 0x40
        FileManager.default.createFile(atPath: newest, contents: Data(bytes))

        let found = try CheckpointStore.latestVerified(runDirectory: dir)
        XCTAssertEqual(found.manifest.step, 4)
        XCTAssertEqual(found.skipped.count, 1)
        XCTAssertTrue(found.skipped[0].reason.contains("SHA-256"), found.skipped[0].reason)
        XCTAssertTrue(found.skipped[0].reason.contains("model.safetensors"), found.skipped[0].reason)
        var lines: [String] = []
        try LocalWorld.run(size: 1) { comm in
            let point = try Trainer.loadResumePoint(runDirectory: dir, communicator: comm, log: { lines.append($0) })
            XCTAssertEqual(point.state.step, 4)
        }
        XCTAssertTrue(lines.contains { $0.contains("skipping") && $0.contains("step-00000005") }, "\(lines)")
    }

    /// A folder left by a writer that died mid-checkpoint is never picked, and
    /// no checkpoint at all is a clear error naming the folder.
    func testPartialCheckpointIsIgnoredAndEmptyIsAnError() throws {
        let dir = temporaryFolder("partial")
        try FileManager.default.createDirectory(atPath: dir + "/checkpoints/.partial-step-00000009-1", withIntermediateDirectories: true)
        XCTAssertThrowsError(try CheckpointStore.latestVerified(runDirectory: dir)) { error in
            XCTAssertTrue("\(error)".contains("checkpoints"), "\(error)")
        }
        try CheckpointStore.write(runDirectory: dir, step: 3, files: [("a.bin", [1, 2, 3])], keep: 3)
        let found = try CheckpointStore.latestVerified(runDirectory: dir, requiredFiles: ["a.bin"])
        XCTAssertEqual(found.files["a.bin"], [1, 2, 3])
        XCTAssertEqual(found.manifest.files[0].sha256, "039058c6f2c0cb492c533b0a4d14ef77cc0f78abccced5287d84a1a2011cfb81")
    }

    func metrics(_ dir: String) throws -> [EpochMetrics] {
        let text = try String(contentsOfFile: dir + "/metrics.jsonl", encoding: .utf8)
        return try text.split(separator: "\n").map { try JSONDecoder().decode(EpochMetrics.self, from: Data($0.utf8)) }
    }
}

/// Fine-tuning: start from a checkpoint, replace the head, freeze layers.
final class FineTuningTests: XCTestCase {
    func testInitFromCheckpointReplaceHeadAndFreeze() throws {
        var config = syntheticConfig(steps: 4, batch: 32)
        let dir = temporaryFolder("pretrained")
        let pretrained = try trainLocally(config, ranks: 1, runDirectory: dir)

        // A 12-class head cannot load the 10-class one: a clear error, then --replace-head.
        config.classes = 12
        config.initFrom = dir + "/model.safetensors"
        XCTAssertThrowsError(try trainLocally(config, ranks: 1)) { error in
            XCTAssertTrue("\(error)".contains("replace_head"), "\(error)")
        }
        config.replaceHead = true
        config.freeze = ["0.", "1."]   // first convolution and its BatchNorm
        config.maxSteps = 3
        var before: [Float] = [], after: [Float] = []
        var names: [(String, Range<Int>)] = []
        try LocalWorld.run(size: 1) { comm in
            let trainer = try Trainer(config: config, communicator: comm, runDirectory: nil, log: { _ in })
            before = trainer.model.store.parameters.toArray()
            names = trainer.model.store.parameterEntries.map { ($0.name, $0.offset ..< $0.offset + $0.count) }
            try trainer.run()
            after = trainer.model.store.parameters.toArray()
        }
        let frozen = names.filter { $0.0.hasPrefix("0.") || $0.0.hasPrefix("1.") }
        XCTAssertEqual(frozen.count, 4)  // 0.weight, 0.bias, 1.weight, 1.bias
        for (name, range) in frozen {
            XCTAssertEqual(Array(after[range]), Array(before[range]), "\(name) is frozen")
            XCTAssertEqual(Array(before[range]), Array(pretrained.params[range]), "\(name) loaded from the checkpoint")
        }
        let trainable = names.first { $0.0 == "4.weight" }!.1
        XCTAssertEqual(Array(before[trainable]), Array(pretrained.params[trainable]), "4.weight loaded")
        XCTAssertNotEqual(Array(after[trainable]), Array(before[trainable]), "4.weight trains")

        config.freeze = ["nonexistent."]
        XCTAssertThrowsError(try trainLocally(config, ranks: 1)) { error in
            XCTAssertTrue("\(error)".contains("freeze"), "\(error)")
        }
    }
}

/// Non-finite gradients: stop naming the step and parameter, or skip the step;
/// a non-finite checkpoint is never written.
final class NonFiniteTests: XCTestCase {
    func explodingConfig() -> TrainingConfig {
        var c = syntheticConfig(steps: 6, batch: 32, model: "lenet5")
        c.lr = 1e38
        c.momentum = 0
        c.nesterov = false
        return c
    }

    func testNonFiniteGradientsStopNamingStepAndParameter() throws {
        let dir = temporaryFolder("nonfinite-stop")
        XCTAssertThrowsError(try trainLocally(explodingConfig(), ranks: 2, runDirectory: dir)) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains("step") && text.contains("weight"), text)
        }
        XCTAssertTrue(CheckpointStore.list(runDirectory: dir).isEmpty, "no checkpoint may be written")
    }

    func testSkipModeSkipsStepsButNeverWritesANonFiniteCheckpoint() throws {
        var config = explodingConfig()
        config.onNonFinite = .skip
        let dir = temporaryFolder("nonfinite-skip")
        XCTAssertThrowsError(try trainLocally(config, ranks: 1, runDirectory: dir)) { error in
            XCTAssertTrue("\(error)".contains("checkpoint not written"), "\(error)")
        }
        XCTAssertTrue(CheckpointStore.list(runDirectory: dir).isEmpty, "no checkpoint may be written")

        // A run whose gradients are finite is unaffected by the setting.
        var fine = syntheticConfig(steps: 3, batch: 32, model: "lenet5")
        fine.onNonFinite = .skip
        let run = try trainLocally(fine, ranks: 1)
        XCTAssertEqual(run.history.count, 1)
    }
}
