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
    @Option(help: "Dataset (default: fashion-mnist for 1-channel models, cifar10 for 3).")
    var dataset: DatasetKind?
    @Option(help: "Dataset folder (default: the dataset's own folder).") var data: String?
    @Option(name: .customLong("batch-size"), help: "Images per forward pass on each rank.") var batchSize = 256
    @Option(name: .customLong("test-limit"), help: "Evaluate only the first N test images (0 = all).") var testLimit = 0
    @Option(name: .customLong("label-smoothing"), help: "Label smoothing of the reported loss.") var labelSmoothing: Double = 0
    @Option(name: .customLong("synthetic-count"), help: "Training-set size of the synthetic dataset, as in the training config.")
    var syntheticCount = TrainingConfig().syntheticCount
    @Option(help: "Seed of the synthetic dataset, as in the training config.") var seed = TrainingConfig().seed
    @Flag(help: "Print one JSON object instead of a line of text.") var json = false
    @Option(help: ArgumentHelp("Write the confusion matrix (true x predicted class, with class names): a .png picture, else JSON.",
                               valueName: "OUT.json|OUT.png")) var confusion: String?
    @Option(help: ArgumentHelp("Write a grid (PNG) of misclassified test images labelled true>predicted.",
                               valueName: "OUT.png")) var misclassified: String?
    @Option(name: .customLong("misclassified-limit"), help: "Most images in the --misclassified grid.")
    var misclassifiedLimit = 64
    @Option(help: "GEMM arithmetic of convolution and linear layers (bf16 needs AVX512_BF16).")
    var precision: ComputePrecision = .fp32
    @OptionGroup var world: WorldOptions

    public init() {}

    public func validate() throws {
        if batchSize < 1 { throw ValidationError("--batch-size must be at least 1, got \(batchSize)") }
        if testLimit < 0 { throw ValidationError("--test-limit must be >= 0, got \(testLimit)") }
        if !(0..<1).contains(labelSmoothing) { throw ValidationError("--label-smoothing must lie in [0, 1), got \(labelSmoothing)") }
        if syntheticCount < 1 { throw ValidationError("--synthetic-count must be at least 1, got \(syntheticCount)") }
        if misclassifiedLimit < 1 { throw ValidationError("--misclassified-limit must be at least 1, got \(misclassifiedLimit)") }
    }

    public func run() throws {
        if let line = try withWorld(world, { comm in try evaluateAndFormat(communicator: comm) }) {
            print(line)
            fflush(stdout)
        }
    }

    /// Loads the checkpoint and the test split, evaluates on `communicator`'s
    /// ranks and returns what rank 0 prints (JSON or text).
    public func evaluateAndFormat(communicator: Communicator) throws -> String {
        try Preflight.checkPrecision(precision, what: "eval --precision bf16")
        let loaded = try loadModelCheckpoint(path: checkpoint)
        let model = loaded.model
        let kind = dataset ?? (model.inputShape[0] == 3 ? .cifar10 : .fashionMNIST)
        // Synthetic data is regenerated exactly as the trainer made it, in the model's shape.
        let request = DatasetRequest(directory: data, imageShape: model.inputShape, classes: model.classCount,
                                     syntheticCount: syntheticCount, seed: seed)
        var test = try kind.load(.test, request)
        if testLimit > 0 && testLimit < test.count { test = test.subset(0..<testLimit, name: test.name) }
        // A progress bar on a terminal only (never carriage returns in a log).
        let terminal = communicator.rank == 0 && isatty(STDERR_FILENO) != 0 && !launchedByMPI()
        let result = try evaluate(model: model, dataset: test, statistics: loaded.statistics, communicator: communicator,
                                  batchSize: batchSize, labelSmoothing: Float(labelSmoothing),
                                  arithmetic: GemmArithmetic(precision),
                                  progress: terminal ? { line in fputs("\r\u{1B}[K" + line, stderr) } : nil)
        if terminal { fputs("\r\u{1B}[K", stderr) }
        let names = loaded.classNames ?? (0..<model.classCount).map(String.init)
        if let confusion, communicator.rank == 0 {
            guard !result.confusion.isEmpty else {
                throw ValidationError("--confusion: the matrix is kept for models of up to 1,000 classes")
            }
            if confusion.lowercased().hasSuffix(".png") {
                let picture = confusionPicture(matrix: result.confusion, names: names,
                                               title: "confusion matrix of \(checkpoint) on \(kind.rawValue): true x predicted")
                try writeFileAtomically(try picture.png(), to: confusion)
            } else {
                let object: [String: Any] = ["classes": names, "matrix": result.confusion, "checkpoint": checkpoint,
                                             "dataset": kind.rawValue, "rows": "true class", "columns": "predicted class"]
                try writeFileAtomically(Array(try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])), to: confusion)
            }
        }
        if let misclassified, communicator.rank == 0 {
            // Rank 0 alone runs the whole test split again, keeping every image's prediction.
            let logits = try predictLogits(model: model, pixels: test.pixels, count: test.count, statistics: loaded.statistics,
                                           batchSize: batchSize, arithmetic: GemmArithmetic(precision))
            let (picture, wrong) = misclassifiedPicture(dataset: test, logits: logits, classes: model.classCount, names: names,
                                                        limit: misclassifiedLimit, zoom: nil)
            if let picture { try writeFileAtomically(try picture.png(), to: misclassified) }
            FileHandle.standardError.write(Data("eval: \(wrong) misclassified test images\(picture == nil ? "; no picture written" : ", the first \(min(wrong, misclassifiedLimit)) drawn in \(misclassified)")\n".utf8))
        }
        if json {
            let perClass = result.perClassAccuracy.map { $0.map { $0 as Any } ?? NSNull() }
            let object: [String: Any] = [
                "loss": result.loss, "accuracy": result.accuracy, "correct": result.correct, "count": result.count,
                "checkpoint": checkpoint, "dataset": kind.rawValue, "model": model.name, "label_smoothing": labelSmoothing,
                "precision": precision.rawValue,
                "top5_accuracy": result.top5Accuracy, "per_class_accuracy": perClass, "classes": names,
            ]
            let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
            return String(decoding: data, as: UTF8.self)
        }
        return String(format: "%@ on %@ (%d images): loss %.4f accuracy %.4f (%d correct), top-5 %.4f",
                      checkpoint, test.name, result.count, result.loss, result.accuracy, result.correct, result.top5Accuracy)
    }
}
