import ArgumentParser
import Foundation
import Yams
import CnnCore
import CnnData
import CnnModels
import CnnDistributed
import CnnTraining

/// Options shared by commands that build a training configuration.
struct ConfigOptions: ParsableArguments {
    @Option(help: "YAML (or JSON) config file; flags override it.")
    var config: String?
    @Option(help: "Model: \(ZooModel.names.joined(separator: ", ")), or a model file (.yaml) (default \(TrainingConfig().model)).")
    var model: String?
    @Option(help: "Dataset (default \(TrainingConfig().dataset.rawValue)).") var dataset: DatasetKind?
    @Option(help: "Dataset folder (default: the dataset's own folder).") var data: String?
    @Option(help: "Epochs (default \(TrainingConfig().epochs)).") var epochs: Int?
    @Option(name: .customLong("batch-size"), help: "Global batch size, split over ranks (default \(TrainingConfig().batchSize)).") var batchSize: Int?
    @Option(help: "Base learning rate (default \(TrainingConfig().lr)).") var lr: Float?
    @Option(help: "Optimizer (default \(TrainingConfig().optimizer.rawValue)).") var optimizer: OptimizerKind?
    @Option(help: "Learning-rate schedule (default \(TrainingConfig().schedule.rawValue)).") var schedule: ScheduleKind?
    @Option(help: "Random seed (default \(TrainingConfig().seed)).") var seed: UInt64?
    @Option(name: .customLong("train-limit"), help: "Use only the first N training images.") var trainLimit: Int?
    @Option(name: .customLong("test-limit"), help: "Use only the first N test images.") var testLimit: Int?
    @Option(name: .customLong("accumulation-steps"), help: "Micro-batches per global batch (gradient accumulation).")
    var accumulationSteps: Int?
    @Option(name: .customLong("checkpoint-every"), help: "Checkpoint every N steps (0: epoch ends only).") var checkpointEvery: Int?
    @Option(name: .customLong("max-steps"), help: "Stop after N optimizer steps in all (0: no limit).") var maxSteps: Int?
    @Option(help: "Compute threads inside each rank (default: the node's cores shared among its ranks).") var threads: Int?
    @Option(help: "Classes of the model's head (default: the dataset's; fewer trains on classes 0..<N).") var classes: Int?
    @Option(help: ArgumentHelp("Input shape (default: the dataset's images).", valueName: "CxHxW")) var input: String?
    @Option(name: .customLong("init-from"), help: "Fine-tuning: start from this safetensors file's weights.") var initFrom: String?
    @Option(help: "Fine-tuning: freeze parameters whose names start with this prefix (repeatable).") var freeze: [String] = []
    @Flag(name: .customLong("replace-head"), help: "Fine-tuning: keep a fresh classifier head instead of loading it.")
    var replaceHead = false
    @Flag(name: .customLong("local-bn"), help: "BatchNorm statistics per rank instead of synchronized.") var localBN = false
    @Option(help: "GEMM arithmetic of convolution and linear layers: bf16 needs AVX512_BF16 (default \(TrainingConfig().precision.rawValue)).")
    var precision: ComputePrecision?
    @Option(name: .customLong("allreduce-dtype"),
            help: "What the gradient allreduce sends: bf16 halves the bytes, summed in fp32 (default \(TrainingConfig().allreduceDtype.rawValue)).")
    var allreduceDtype: AllreduceDType?

    /// Defaults, then the file, then the flags.
    func resolve() throws -> TrainingConfig {
        var c = TrainingConfig()
        if let path = config { c = try loadTrainingConfig(path: path) }
        try apply(to: &c)
        return c
    }

    /// The flags given on the command line, over `c`.
    func apply(to c: inout TrainingConfig) throws {
        if let v = model { c.model = v }
        if let v = dataset { c.dataset = v }
        if let v = data { c.data = v }
        if let v = epochs { c.epochs = v }
        if let v = batchSize { c.batchSize = v }
        if let v = lr { c.lr = v }
        if let v = optimizer { c.optimizer = v }
        if let v = schedule { c.schedule = v }
        if let v = seed { c.seed = v }
        if let v = trainLimit { c.trainLimit = v }
        if let v = testLimit { c.testLimit = v }
        if let v = accumulationSteps { c.accumulationSteps = v }
        if let v = checkpointEvery { c.checkpointEvery = v }
        if let v = maxSteps { c.maxSteps = v }
        if let v = threads { c.threads = v }
        if let v = classes { c.classes = v }
        if let v = input { c.input = v }
        if let v = initFrom { c.initFrom = v }
        if !freeze.isEmpty { c.freeze = freeze }
        if replaceHead { c.replaceHead = true }
        if localBN { c.syncBatchNorm = false }
        if let v = precision { c.precision = v }
        if let v = allreduceDtype { c.allreduceDtype = v }
        try c.validate()
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
    @OptionGroup var world: WorldOptions
    @Option(name: .customLong("bucket-mb"), help: "Gradient allreduce bucket size in MiB.") var bucketMB: Double = 4
    @Flag(name: .customLong("no-overlap"), help: "Allreduce all gradients after backward instead of overlapping.")
    var noOverlap = false
    @Flag(help: "Remove the run in --run-dir first (a fresh run refuses a folder that is not empty).")
    var overwrite = false
    @Option(help: ArgumentHelp("Continue the run in RUN_DIR from its newest verified checkpoint, on any number of ranks; "
                               + "flags given override its config.", valueName: "RUN_DIR"))
    var resume: String?

    public init() {}

    public func validate() throws {
        guard bucketMB > 0, bucketMB <= 65_536 else {
            throw ValidationError("--bucket-mb must be a positive size in MiB up to 65536, got \(bucketMB)")
        }
    }

    public func run() throws {
        if resume != nil && (runDir != nil || options.config != nil) {
            throw ValidationError("--resume RUN_DIR continues that run with its own config: drop --run-dir and --config")
        }
        let fresh = resume == nil ? try options.resolve() : nil
        let stamp = ISO8601DateFormatter().string(from: Date()).replacingOccurrences(of: ":", with: "")
        let dir = resume ?? runDir ?? "runs/\(fresh!.model)-\(stamp)"
        let bucketBytes = Int(bucketMB * 1_048_576)
        // Under mpirun a rank's output is a pseudo-terminal, but it ends up in a log: plain lines.
        let terminal = isatty(STDOUT_FILENO) != 0 && !launchedByMPI()
        // Without a launcher, --local-ranks or --threads: the node's cores as in-process ranks
        // where each keeps a batch share a GEMM runs well on (see automaticLocalRanks). Not when
        // a launcher announces tasks it did not connect: withWorld refuses that.
        var chosen = self.world
        var planned = fresh ?? resume.flatMap { try? decodeRunConfig(FileBytes.read($0 + "/config.json")) }
        if planned != nil && fresh == nil { try? options.apply(to: &planned!) }
        let cores = ProcessInfo.processInfo.activeProcessorCount
        if chosen.localRanks == nil && !launchedByMPI() && launcherTaskCount() == nil, let planned, planned.threads == nil {
            let ranks = automaticLocalRanks(cores: cores, batchSize: planned.batchSize)
            if ranks > 1 {
                chosen.localRanks = ranks
                print("world: \(ranks) in-process ranks x \(max(1, cores / ranks)) thread(s) on this node's \(cores) cores "
                      + "(faster than one rank's threads; --local-ranks or --threads sets it)")
            }
        }
        let world = chosen
        StopSignals.install()
        try withWorld(world) { comm in
            let log: (String) -> Void = { line in
                guard comm.rank == 0 else { return }
                print((terminal ? "\r\u{1B}[K" : "") + line)
                fflush(stdout)
            }
            var config: TrainingConfig
            var point: ResumePoint? = nil
            if let resume {
                point = try Trainer.loadResumePoint(runDirectory: resume, communicator: comm, log: log)
                config = point!.state.config
                try options.apply(to: &config)
            } else {
                config = fresh!
            }
            try Preflight.check(config, runDirectory: dir, communicator: comm,
                                reuse: resume != nil ? .resume : overwrite ? .overwrite : .refuse)
            // Threads of the compute kernels: one process-wide setting, the same for in-process ranks.
            let threads = config.threads ?? automaticThreads(ranksInProcess: world.localRanks ?? 1)
            if comm.rank == 0 || world.localRanks == nil { ComputeThreads.count = threads }
            if comm.rank == 0 && config.threads == nil {
                log("threads: \(threads) per rank (this node's \(ProcessInfo.processInfo.activeProcessorCount) cores; --threads sets it)")
            }
            let trainer = try Trainer(config: config, communicator: comm, runDirectory: dir, resume: point,
                                      bucketBytes: bucketBytes, overlap: !noOverlap, log: log)
            trainer.stopRequested = { StopSignals.requested != 0 }
            if terminal && comm.rank == 0 {
                trainer.progress = { line in print("\r\u{1B}[K" + line, terminator: ""); fflush(stdout) }
            }
            let history = try trainer.run()
            if comm.rank == 0, let last = history.last {
                print(String(format: "done: test accuracy %.4f after %d epochs; run directory %@",
                             last.testAccuracy, last.epoch, dir))
            }
        }
    }
}

/// In-process ranks for a run started without a launcher, `--local-ranks` or
/// `--threads`: the most ranks that divide the cores while each keeps a batch
/// share of at least 64 images. Ranks beat threads on small models (each
/// rank's kernels run unsynchronised: fashion-cnn, batch 128 on 2 cores,
/// `bench train` measured 2 ranks x 1 thread 1.2x one rank x 2 threads),
/// while too small a share per rank would starve the GEMMs.
public func automaticLocalRanks(cores: Int, batchSize: Int) -> Int {
    var best = 1
    for ranks in 1...max(1, min(cores, 256)) where cores % ranks == 0 && batchSize / ranks >= 64 { best = ranks }
    return best
}

/// Compute threads per rank when none are configured: the CPUs Slurm gave
/// each task (`--cpus-per-task`), else this node's cores (the ones this
/// process may run on) shared among the ranks on it.
public func automaticThreads(ranksInProcess: Int, environment: [String: String] = ProcessInfo.processInfo.environment,
                      cores: Int = ProcessInfo.processInfo.activeProcessorCount) -> Int {
    if let perTask = environment["SLURM_CPUS_PER_TASK"].flatMap(Int.init), perTask >= 1 {
        return min(256, max(1, perTask / max(1, ranksInProcess)))
    }
    let ranksOnNode = ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "PMI_LOCAL_SIZE"]
        .lazy.compactMap { environment[$0].flatMap(Int.init) }.first
        ?? slurmTasksOnThisNode(environment) ?? 1
    return max(1, min(256, cores / max(1, ranksOnNode * ranksInProcess)))
}

/// The tasks of this Slurm job step on this node: srun sets
/// SLURM_STEP_TASKS_PER_NODE to a compressed list per node ("2(x3),1" is
/// 2, 2, 2, 1) and SLURM_NODEID to this node's index in it.
public func slurmTasksOnThisNode(_ environment: [String: String]) -> Int? {
    guard let list = environment["SLURM_STEP_TASKS_PER_NODE"] ?? environment["SLURM_TASKS_PER_NODE"] else { return nil }
    var perNode: [Int] = []
    for item in list.split(separator: ",") {
        let parts = item.split(separator: "(")
        guard let count = Int(parts[0]) else { return nil }
        var repeats = 1
        if parts.count == 2 {
            guard parts[1].hasPrefix("x"), parts[1].hasSuffix(")"),
                  let r = Int(parts[1].dropFirst().dropLast()), (1...1_000_000).contains(r) else { return nil }
            repeats = r
        }
        perNode += Array(repeating: count, count: min(repeats, 1_000_000 - perNode.count))
    }
    let node = environment["SLURM_NODEID"].flatMap(Int.init) ?? 0
    return perNode.indices.contains(node) ? perNode[node] : perNode.first
}
