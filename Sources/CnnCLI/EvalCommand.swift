import ArgumentParser
import Foundation
import CnnCore
import CnnData
import CnnDistributed
import CnnTraining

/// `cnn-dist eval --checkpoint PATH`: loss and accuracy on a test split.
public struct EvalCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "eval",
        abstract: "Evaluate a checkpoint on a dataset's test split (loss, accuracy).",
        discussion: """
            The model, its input shape, classes and normalisation come from the checkpoint's metadata.
            Under mpirun every test image is evaluated exactly once, on one rank, and rank 0 prints.
            The loss is plain cross-entropy unless --label-smoothing is given; a run's metrics.jsonl
            test_loss uses the training config's label_smoothing (0.1 by default).
            """)

    @Option(help: "Model checkpoint (.safetensors written by cnn-dist train).") var checkpoint: String
    @Option(help: "Dataset: fashion-mnist, mnist, cifar10, synthetic (default: fashion-mnist for 1-channel models, cifar10 for 3).")
    var dataset: String?
    @Option(help: "Dataset directory (default \(ImageDataset.defaultFashionMNISTDirectory) for fashion-mnist).") var data: String?
    @Option(name: .customLong("batch-size"), help: "Images per forward pass on each rank.") var batchSize = 256
    @Option(name: .customLong("test-limit"), help: "Evaluate only the first N test images (0 = all).") var testLimit = 0
    @Option(name: .customLong("label-smoothing"), help: "Label smoothing of the reported loss.") var labelSmoothing: Double = 0
    @Option(name: .customLong("synthetic-count"), help: "Training-set size of the synthetic dataset, as in the training config.")
    var syntheticCount = TrainingConfig().synthetic_count
    @Option(help: "Seed of the synthetic dataset, as in the training config.") var seed = TrainingConfig().seed
    @Flag(help: "Print one JSON object instead of a line of text.") var json = false

    public init() {}

    public func validate() throws {
        if batchSize < 1 { throw ValidationError("--batch-size must be at least 1, got \(batchSize)") }
        if testLimit < 0 { throw ValidationError("--test-limit must be >= 0, got \(testLimit)") }
        if !(0..<1).contains(labelSmoothing) { throw ValidationError("--label-smoothing must lie in [0, 1), got \(labelSmoothing)") }
        if syntheticCount < 1 { throw ValidationError("--synthetic-count must be at least 1, got \(syntheticCount)") }
        if let d = dataset, !Self.datasets.contains(d) {
            throw ValidationError("--dataset must be one of \(Self.datasets.joined(separator: ", ")), got '\(d)'")
        }
    }

    static let datasets = ["fashion-mnist", "mnist", "cifar10", "synthetic"]

    public func run() throws {
        let comm = try makeWorldCommunicator()
        do {
            let line = try evaluateAndFormat(communicator: comm)
            if comm.rank == 0 { print(line); fflush(stdout) }
        } catch {
            if comm.size > 1 {
                // Take the job down rather than leave the other ranks in the allreduce.
                FileHandle.standardError.write("Error: rank \(comm.rank): \(error)\n".data(using: .utf8)!)
                Foundation.exit(1)
            }
            throw error
        }
        try finalizeWorldCommunicator(comm)
    }

    /// Loads the checkpoint and the test split, evaluates on `communicator`'s
    /// ranks and returns what rank 0 prints (JSON or text).
    public func evaluateAndFormat(communicator: Communicator) throws -> String {
        let loaded = try loadModelCheckpoint(path: checkpoint)
        let model = loaded.model
        let name = dataset ?? (model.inputShape[0] == 3 ? "cifar10" : "fashion-mnist")
        var test = try loadTestSplit(name, imageShape: model.inputShape, classes: model.classCount)
        if testLimit > 0 && testLimit < test.count { test = test.subset(0..<testLimit, name: test.name) }
        let result = try evaluate(model: model, dataset: test, statistics: loaded.statistics, communicator: communicator,
                                  batchSize: batchSize, labelSmoothing: Float(labelSmoothing))
        if json {
            let object: [String: Any] = [
                "loss": result.loss, "accuracy": result.accuracy, "correct": result.correct, "count": result.count,
                "checkpoint": checkpoint, "dataset": name, "model": model.name, "label_smoothing": labelSmoothing,
            ]
            let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
            return String(decoding: data, as: UTF8.self)
        }
        return String(format: "%@ on %@ (%d images): loss %.4f accuracy %.4f (%d correct)",
                      checkpoint, test.name, result.count, result.loss, result.accuracy, result.correct)
    }

    /// The test split of `name`; synthetic is regenerated exactly as the trainer
    /// does, in the model's input shape with min(10, classes) classes.
    func loadTestSplit(_ name: String, imageShape: [Int], classes: Int) throws -> ImageDataset {
        switch name {
        case "synthetic":
            return Trainer.syntheticSplits(count: syntheticCount, shape: imageShape, classes: classes, seed: seed).test
        case "cifar10":
            guard let data else { throw ValidationError("--data DIR is required for cifar10 (the directory of test_batch.bin)") }
            return try ImageDataset.loadCIFAR10(directory: data, split: .test)
        case "mnist":
            guard let data else { throw ValidationError("--data DIR is required for mnist (the directory of t10k-images-idx3-ubyte)") }
            return try ImageDataset.loadFashionMNIST(directory: data, split: .test)
        default:
            return try ImageDataset.loadFashionMNIST(directory: data ?? ImageDataset.defaultFashionMNISTDirectory, split: .test)
        }
    }
}
