import ArgumentParser
import Foundation
import Yams
import CnnCore
import CnnModels
import CnnDistributed
import CnnTraining

/// Options shared by commands that build a training configuration.
struct ConfigOptions: ParsableArguments {
    @Option(help: "YAML (or JSON) config file; flags override it.")
    var config: String?
    @Option(help: "Model: \(ModelZoo.names.joined(separator: ", ")).") var model: String?
    @Option(help: "Dataset: fashion-mnist, mnist, cifar10, synthetic.") var dataset: String?
    @Option(help: "Dataset directory.") var data: String?
    @Option(help: "Epochs.") var epochs: Int?
    @Option(name: .customLong("batch-size"), help: "Global batch size (split over ranks).") var batchSize: Int?
    @Option(help: "Base learning rate.") var lr: Float?
    @Option(help: "Optimizer: sgd, adam, adamw, rmsprop.") var optimizer: String?
    @Option(help: "LR schedule: constant, step, multistep, cosine, onecycle.") var schedule: String?
    @Option(help: "Random seed.") var seed: UInt64?
    @Option(name: .customLong("train-limit"), help: "Use only the first N training images.") var trainLimit: Int?
    @Option(name: .customLong("test-limit"), help: "Use only the first N test images.") var testLimit: Int?

    /// Defaults, then the file, then the flags.
    func resolve() throws -> TrainingConfig {
        var c = TrainingConfig()
        if let path = config { c = try loadTrainingConfig(path: path) }
        if let v = model { c.model = v }
        if let v = dataset { c.dataset = v }
        if let v = data { c.data = v }
        if let v = epochs { c.epochs = v }
        if let v = batchSize { c.batch_size = v }
        if let v = lr { c.lr = v }
        if let v = optimizer { c.optimizer = v }
        if let v = schedule { c.schedule = v }
        if let v = seed { c.seed = v }
        if let v = trainLimit { c.train_limit = v }
        if let v = testLimit { c.test_limit = v }
        try c.validate(modelNames: ModelZoo.names)
        return c
    }
}

/// Reads a config file over the defaults; unknown keys are errors naming the key.
func loadTrainingConfig(path: String) throws -> TrainingConfig {
    guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
        throw CnnError.io(file: path, reason: "cannot read the config file")
    }
    let loaded: Any?
    do { loaded = try Yams.load(yaml: text) } catch {
        throw CnnError.invalidConfig(field: path, value: "unparseable YAML", allowed: "\(error)")
    }
    guard let overlay = loaded as? [String: Any] else {
        throw CnnError.invalidConfig(field: path, value: "not a mapping", allowed: "a YAML mapping of config fields")
    }
    let known = Set(Mirror(reflecting: TrainingConfig()).children.compactMap(\.label))
    for key in overlay.keys where !known.contains(key) {
        throw CnnError.invalidConfig(field: key, value: "(unknown field in \(path))",
                                     allowed: known.sorted().joined(separator: ", "))
    }
    var base = try JSONSerialization.jsonObject(with: JSONEncoder().encode(TrainingConfig())) as! [String: Any]
    for (k, v) in overlay { base[k] = v }
    do {
        return try JSONDecoder().decode(TrainingConfig.self, from: JSONSerialization.data(withJSONObject: base))
    } catch let DecodingError.typeMismatch(_, context), let DecodingError.valueNotFound(_, context) {
        let field = context.codingPath.map(\.stringValue).joined(separator: ".")
        throw CnnError.invalidConfig(field: field, value: "\(overlay[field] ?? "?") in \(path)",
                                     allowed: context.debugDescription)
    }
}

/// `cnn-dist train`: data-parallel training (mpirun, batch jobs, or --local-ranks).
public struct TrainCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train a model; with no arguments, fashion-cnn on Fashion-MNIST.",
        discussion: "Under mpirun each process is a rank; --local-ranks N runs N ranks in this process.")

    @OptionGroup var options: ConfigOptions
    @Option(name: .customLong("run-dir"), help: "Run directory (default runs/MODEL-TIMESTAMP).") var runDir: String?
    @Option(name: .customLong("local-ranks"), help: "Single-node test mode: N ranks as threads, no mpirun.")
    var localRanks: Int?
    @Option(name: .customLong("bucket-mb"), help: "Gradient allreduce bucket size in MiB.") var bucketMB: Double = 4
    @Flag(name: .customLong("no-overlap"), help: "Allreduce all gradients after backward instead of overlapping.")
    var noOverlap = false
    // issue 6 (rely): collective deadline.
    @Option(help: "Seconds a rank waits in one collective before naming the missing ranks and stopping the job (default $CNN_DIST_DEADLINE, else 60).")
    var deadline: Double?

    public init() {}

    public func validate() throws {
        if let n = localRanks, n < 1 { throw ValidationError("--local-ranks must be at least 1, got \(n)") }
        if bucketMB <= 0 { throw ValidationError("--bucket-mb must be positive, got \(bucketMB)") }
        if let d = deadline, !(d > 0) { throw ValidationError("--deadline must be positive seconds, got \(d)") } // issue 6 (rely)
    }

    public func run() throws {
        let config = try options.resolve()
        let stamp = ISO8601DateFormatter().string(from: Date()).replacingOccurrences(of: ":", with: "")
        let dir = runDir ?? "runs/\(config.model)-\(stamp)"
        let bucketBytes = Int(bucketMB * 1_048_576)
        let deadline = self.deadline ?? deadlineFromEnvironment() ?? 60 // issue 6 (rely)
        let body: (Communicator) throws -> Void = { comm in
            try Preflight.check(config, runDirectory: dir, communicator: comm) // issue 6 (rely)
            let trainer = try Trainer(config: config, communicator: comm, runDirectory: dir,
                                      bucketBytes: bucketBytes, overlap: !noOverlap,
                                      log: { line in if comm.rank == 0 { print(line); fflush(stdout) } })
            let history = try trainer.run()
            if comm.rank == 0, let last = history.last {
                print(String(format: "done: test accuracy %.4f after %d epochs; run directory %@",
                             last.test_accuracy, last.epoch, dir))
            }
        }
        if let n = localRanks {
            try LocalWorld.run(size: n, timeout: deadline, body) // issue 6 (rely): timeout = deadline
        } else {
            let comm = try makeWorldCommunicator(deadline: deadline) // issue 6 (rely)
            do { try body(comm) } catch {
                // A failing rank must take the job down, not leave the others waiting:
                // mpirun ends the job when a rank exits non-zero without finalizing.
                FileHandle.standardError.write("Error: rank \(comm.rank): \(error)\n".data(using: .utf8)!)
                Foundation.exit(1)
            }
            try finalizeWorldCommunicator(comm)
        }
    }
}
