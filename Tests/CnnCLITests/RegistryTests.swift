import ArgumentParser
import Foundation
import XCTest
import CnnCLI
import CnnCore
import CnnData
import CnnLayers
import CnnModels
import CnnTraining
import CnnDistributed

/// The typed registries: one list of names per choice, used alike by the
/// config, the flags and every command.
final class RegistryTests: XCTestCase {
    private func temporaryDirectory() throws -> String {
        let dir = NSTemporaryDirectory() + "cnn-registry-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        return dir
    }

    private func message(_ body: () throws -> Void) -> String {
        do { try body(); return "" } catch { return "\(error)" }
    }

    /// `train --dataset mnist` without --data used to train on Fashion-MNIST (the
    /// default folder was Fashion-MNIST's); each dataset now has its own folder,
    /// and a missing one is named with the folder and how to get it.
    func testEachDatasetHasItsOwnDefaultFolder() throws {
        let mnist = try XCTUnwrap(DatasetKind.mnist.defaultDirectory)
        XCTAssertNotEqual(mnist, DatasetKind.fashionMNIST.defaultDirectory)
        if FileManager.default.fileExists(atPath: mnist) { throw XCTSkip("\(mnist) exists on this machine") }
        let dir = try temporaryDirectory()
        let train = message {
            try TrainCommand.parse(["--dataset", "mnist", "--max-steps", "1", "--run-dir", dir + "/run"]).run()
        }
        let eval = message {
            try EvalCommand.parse(["--checkpoint", dir + "/none.safetensors", "--dataset", "mnist"]).run()
        }
        for text in [train] {
            XCTAssertTrue(text.contains("mnist") && text.contains(mnist) && text.contains("To get it"), text)
            XCTAssertFalse(text.contains("fashion"), text)
        }
        XCTAssertFalse(eval.isEmpty)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/run/model.safetensors"), "trained on something")
    }

    /// Every dataset with files names them and how to get them; its loader
    /// reads what the registry says (checked on a folder the test writes).
    func testDatasetRegistryDrivesPreflightAndLoading() throws {
        for kind in DatasetKind.allCases {
            XCTAssertEqual(kind.hasFiles, kind != .synthetic, kind.rawValue)
            XCTAssertEqual(kind.requiredFiles.isEmpty, !kind.hasFiles, kind.rawValue)
            // Built-in datasets have a folder of their own; a user's folder or CSV files are always named.
            XCTAssertEqual(kind.defaultDirectory != nil, [.fashionMNIST, .mnist, .cifar10].contains(kind), kind.rawValue)
            XCTAssertFalse(kind.howToGet.isEmpty)
        }
        let dir = try temporaryDirectory()
        let images = ImageDataset.synthetic(count: 6, classCount: 3, seed: 2)
        for (split, count) in [("train", 4), ("t10k", 2)] {
            let part = images.subset(split == "train" ? 0..<4 : 4..<6)
            try part.writeIDX(imagesPath: "\(dir)/\(split)-images-idx3-ubyte", labelsPath: "\(dir)/\(split)-labels-idx1-ubyte")
            XCTAssertEqual(part.count, count)
        }
        XCTAssertNoThrow(try DatasetKind.mnist.checkFiles(directory: dir))
        let loaded = try DatasetKind.mnist.load(DatasetRequest(directory: dir))
        XCTAssertEqual([loaded.train.count, loaded.test.count], [4, 2])
        try FileManager.default.removeItem(atPath: "\(dir)/t10k-labels-idx1-ubyte")
        let missing = message { try DatasetKind.mnist.checkFiles(directory: dir) }
        XCTAssertTrue(missing.contains("config field 'data'") && missing.contains("t10k-labels-idx1-ubyte")
                      && missing.contains("mnist"), missing)
    }

    /// An unknown name in a config file is refused naming the field and the
    /// registry's names; the flag's help lists the same names.
    func testConfigAndFlagsShareTheNames() throws {
        let dir = try temporaryDirectory()
        for (field, value, kindNames) in [("dataset", "imagenet", DatasetKind.allowedNames),
                                          ("optimizer", "adagrad", OptimizerKind.allowedNames),
                                          ("schedule", "linear", ScheduleKind.allowedNames),
                                          ("on_nonfinite", "ignore", NonFiniteAction.allowedNames),
                                          ("init_scheme", "orthogonal", InitScheme.allowedNames),
                                          ("precision", "fp16", ComputePrecision.allowedNames)] {
            let path = "\(dir)/\(field).yaml"
            try "\(field): \(value)\n".write(toFile: path, atomically: true, encoding: .utf8)
            let text = message { _ = try loadTrainingConfig(path: path) }
            XCTAssertTrue(text.contains("config field '\(field)'") && text.contains(value) && text.contains(kindNames), text)
        }
        let help = TrainCommand.helpMessage()
        for name in DatasetKind.allCases.map(\.rawValue) + OptimizerKind.allCases.map(\.rawValue)
            + ScheduleKind.allCases.map(\.rawValue) + ZooModel.names {
            XCTAssertTrue(help.contains(name), "\(name) not in train --help")
        }
        XCTAssertThrowsError(try TrainCommand.parse(["--optimizer", "adagrad"]))
        XCTAssertThrowsError(try TrainCommand.parse(["--precision", "fp16"]))
        XCTAssertTrue(help.contains("--precision"), help)
        for command in [EvalCommand.helpMessage(), PredictCommand.helpMessage(), BenchTrainCommand.helpMessage()] {
            XCTAssertTrue(command.contains("--precision"), command)
        }
        let bf16 = "\(dir)/bf16.yaml"
        try "precision: bf16\n".write(toFile: bf16, atomically: true, encoding: .utf8)
        XCTAssertEqual(try loadTrainingConfig(path: bf16).precision, .bf16)
        let typo = "\(dir)/typo.yaml"
        try "batch_sise: 64\n".write(toFile: typo, atomically: true, encoding: .utf8)
        let hint = message { _ = try loadTrainingConfig(path: typo) }
        XCTAssertTrue(hint.contains("did you mean 'batch_size'"), hint)
    }

    /// A config written by an older run (snake_case keys, names as strings)
    /// reads back into the same values, and writes back the same keys.
    func testConfigFileKeysAreUnchanged() throws {
        var config = TrainingConfig()
        config.batchSize = 96
        config.optimizer = .adamw
        config.onNonFinite = .skip
        let json = String(decoding: try JSONEncoder().encode(config), as: UTF8.self)
        for key in ["\"batch_size\":96", "\"optimizer\":\"adamw\"", "\"on_nonfinite\":\"skip\"", "\"sync_batchnorm\""] {
            XCTAssertTrue(json.contains(key), json)
        }
        XCTAssertEqual(try JSONDecoder().decode(TrainingConfig.self, from: Data(json.utf8)), config)
    }

    /// A folder given where a file is expected is refused by name (it used to
    /// fail allocating the "size" of a directory).
    func testDirectoryGivenAsFileIsNamed() throws {
        let dir = try temporaryDirectory()
        let text = message { _ = try FileBytes.read(dir) }
        XCTAssertTrue(text.contains(dir) && text.contains("is a directory"), text)
        let eval = message { try EvalCommand.parse(["--checkpoint", dir, "--dataset", "synthetic"]).run() }
        XCTAssertTrue(eval.contains(dir) && eval.contains("directory"), eval)
    }
}

/// A run directory where a model file is expected means its model.
final class RunDirectoryAsModelTests: XCTestCase {
    func testRunDirectoryMeansItsNewestModel() throws {
        let dir = NSTemporaryDirectory() + "cnn-rundir-model-\(UUID().uuidString)"
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        var config = TrainingConfig()
        config.model = "lenet5"; config.dataset = .synthetic; config.syntheticCount = 64; config.batchSize = 32
        config.epochs = 2; config.testLimit = 16; config.threads = 1; config.maxSteps = 3
        try CnnDistributed.LocalWorld.run(size: 1) { comm in
            _ = try Trainer(config: config, communicator: comm, runDirectory: dir, log: { _ in }).run()
        }
        XCTAssertEqual(try modelFile(dir), dir + "/model.safetensors")
        // Interrupted runs have no final model: the newest verified checkpoint's.
        try FileManager.default.removeItem(atPath: dir + "/model.safetensors")
        XCTAssertEqual(try modelFile(dir), CheckpointStore.folder(runDirectory: dir, step: 3) + "/model.safetensors")
        let line = try EvalCommand.parse(["--checkpoint", dir, "--dataset", "synthetic", "--synthetic-count", "64"])
            .evaluateAndFormat(communicator: CnnDistributed.SingleProcessCommunicator())
        XCTAssertTrue(line.contains("accuracy"), line)
    }
}

/// `--model PATH.yaml` wherever `--model NAME` works; the checkpoint carries the file.
final class ModelFileCommandTests: XCTestCase {
    func testModelFileTrainsAndItsCheckpointStandsAlone() throws {
        let dir = NSTemporaryDirectory() + "cnn-modelfile-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        let file = dir + "/tiny.yaml"
        try """
            name: tiny
            input: [1, 28, 28]
            classes: 10
            layers:
              - {type: conv, out: 4, kernel: 3, padding: same, activation: relu}
              - {type: maxpool, kernel: 2}
              - flatten
              - {type: linear, out: classes}
            """.write(toFile: file, atomically: true, encoding: .utf8)
        let run = dir + "/run"
        let train = try runCnnDist(["train", "--model", file, "--dataset", "synthetic", "--max-steps", "3", "--threads", "1",
                                    "--run-dir", run])
        XCTAssertEqual(train.status, 0, train.stderr + train.stdout)
        try FileManager.default.removeItem(atPath: file)
        let (_, metadata) = try readStateDict(path: run + "/model.safetensors")
        XCTAssertTrue(metadata["model_file"]?.contains("{type: linear, out: classes}") ?? false)
        let eval = try runCnnDist(["eval", "--checkpoint", run, "--dataset", "synthetic"])
        XCTAssertEqual(eval.status, 0, eval.stderr)
        XCTAssertTrue(eval.stdout.contains("accuracy"), eval.stdout)
    }
}

/// eval's top-5, per-class accuracy and confusion matrix agree with its
/// accuracy, and with each other across rank counts.
final class EvalReportTests: XCTestCase {
    func testConfusionMatrixAndTopFive() throws {
        let dir = NSTemporaryDirectory() + "cnn-confusion-\(UUID().uuidString)"
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        var config = TrainingConfig()
        config.model = "lenet5"; config.dataset = .synthetic; config.syntheticCount = 256; config.batchSize = 32
        config.epochs = 1; config.threads = 1
        try CnnDistributed.LocalWorld.run(size: 1) { comm in
            _ = try Trainer(config: config, communicator: comm, runDirectory: dir, log: { _ in }).run()
        }
        var reports: [[String: Any]] = []
        for ranks in ["1", "3"] {
            let out = dir + "/confusion-\(ranks).json"
            let line = try XCTUnwrap(try withWorldForTest(ranks: Int(ranks)!) {
                try EvalCommand.parse(["--checkpoint", dir, "--dataset", "synthetic", "--synthetic-count", "256", "--json",
                                       "--confusion", out]).evaluateAndFormat(communicator: $0)
            })
            var report = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            let confusion = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out))) as? [String: Any])
            let matrix = try XCTUnwrap(confusion["matrix"] as? [[Int]])
            let count = try XCTUnwrap(report["count"] as? Int), correct = try XCTUnwrap(report["correct"] as? Int)
            XCTAssertEqual(matrix.count, 10)
            XCTAssertEqual(matrix.joined().reduce(0, +), count)
            XCTAssertEqual(matrix.indices.map { matrix[$0][$0] }.reduce(0, +), correct, "trace = correct")
            XCTAssertGreaterThanOrEqual(try XCTUnwrap(report["top5_accuracy"] as? Double), try XCTUnwrap(report["accuracy"] as? Double))
            report["matrix"] = matrix
            reports.append(report)
        }
        XCTAssertEqual(reports[0]["matrix"] as? [[Int]], reports[1]["matrix"] as? [[Int]], "1 rank vs 3 ranks")
        XCTAssertEqual(reports[0]["top5_accuracy"] as? Double, reports[1]["top5_accuracy"] as? Double)
    }

    /// Runs `body` on every rank of an in-process world; rank 0's result.
    private func withWorldForTest(ranks: Int, _ body: @escaping (Communicator) throws -> String) throws -> String? {
        let lock = NSLock()
        var result: String?
        try CnnDistributed.LocalWorld.run(size: ranks) { comm in
            let value = try body(comm)
            if comm.rank == 0 { lock.lock(); result = value; lock.unlock() }
        }
        return result
    }
}
