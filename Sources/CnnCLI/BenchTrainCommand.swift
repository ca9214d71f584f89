import ArgumentParser
import Foundation
import CnnCore
import CnnLayers
import CnnModels
import CnnDistributed
import CnnTraining

/// `cnn-dist bench train`: training throughput of a model on synthetic data,
/// over the whole world (mpirun or --local-ranks), with the per-step profile.
public struct BenchTrainCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Training throughput: images/s, per-step profile, GFLOP/s, peak memory per rank.",
        discussion: """
            Same work as ../shared/bench/torch_ref_bench.py: SGD (lr 0.01, momentum 0.9, weight decay 5e-4), \
            cross-entropy, --batch images per rank, no augmentation; plus synchronized BatchNorm and the \
            bucketed gradient allreduce when there is more than one rank. Data come from the (prefetching) \
            loader over synthetic images of the model's input shape.
            """)

    @Option(help: "Model name.") var model = "fashion-cnn"
    @Option(help: "Images per rank per step.") var batch = 64
    @Option(help: "Timed steps.") var steps = 30
    @Option(help: "Untimed warm-up steps.") var warmup = 3
    @Option(help: "Compute threads inside each rank.") var threads = 1
    @OptionGroup var world: WorldOptions
    @Option(name: .customLong("bucket-mb"), help: "Gradient allreduce bucket size in MiB.") var bucketMB: Double = 4
    @Flag(name: .customLong("no-overlap"), help: "Allreduce after backward instead of overlapping.") var noOverlap = false
    @Flag(help: "Print one JSON object.") var json = false
    @Flag(help: "Also time each top-level layer's forward and backward.") var layers = false
    @Option(help: "GEMM arithmetic of convolution and linear layers (bf16 needs AVX512_BF16).")
    var precision: ComputePrecision = .fp32
    @Option(name: .customLong("allreduce-dtype"), help: "What the gradient allreduce sends (bf16: half the bytes, summed in fp32).")
    var allreduceDtype: AllreduceDType = .fp32
    @Flag(help: "Recompute BatchNorm + ReLU outputs that feed a convolution in backward instead of holding them (config: recompute).")
    var recompute = false

    public init() {}

    public func validate() throws {
        guard ZooModel(rawValue: model) != nil || ModelFile.isPath(model) else {
            throw ValidationError("--model \(model) is not one of \(ZooModel.names.joined(separator: ", ")) nor a model file (.yaml)")
        }
        guard bucketMB > 0, bucketMB <= 65_536 else {
            throw ValidationError("--bucket-mb must be a positive size in MiB up to 65536, got \(bucketMB)")
        }
        guard batch >= 1, steps >= 1, warmup >= 0, threads >= 1 else {
            throw ValidationError("--batch, --steps, --threads must be >= 1 and --warmup >= 0")
        }
    }

    public func run() throws {
        try Preflight.checkPrecision(precision, what: "bench train --precision bf16")
        let definition = try modelDefinition(model)
        guard let input = definition.defaultInput else {
            throw ValidationError("\(model) has no 'input': bench train needs the model's input shape in its file")
        }
        try withWorld(world) { comm in try measure(comm, input: input) }
    }

    func measure(_ comm: Communicator, input: [Int]) throws {
        let size = comm.size
        var c = TrainingConfig()
        c.model = model
        c.dataset = .synthetic
        c.input = input.map(String.init).joined(separator: "x")
        c.batchSize = batch * size
        c.syntheticCount = c.batchSize * (steps + warmup)
        c.epochs = 1
        c.lr = 0.01
        c.schedule = .constant
        c.nesterov = false
        c.labelSmoothing = 0
        c.cropPadding = 0
        c.flip = false
        c.testLimit = 1
        c.threads = threads
        c.precision = precision
        c.allreduceDtype = allreduceDtype
        c.recompute = recompute
        if comm.rank == 0 || world.localRanks == nil { ComputeThreads.count = threads }
        let trainer = try Trainer(config: c, communicator: comm, runDirectory: nil,
                                  bucketBytes: Int(bucketMB * 1_048_576), overlap: !noOverlap, log: { _ in })
        trainer.profileSkipSteps = warmup
        let layerProfiler = layers ? LayerProfiler() : nil
        trainer.layerProfiler = layerProfiler
        try comm.barrier()
        try trainer.run()
        let p = trainer.measuredProfile
        // The world's step time is its slowest rank's.
        let seconds = try comm.allreduceMax(p.total)
        let imagesPerSecond = Double(steps * batch * size) / seconds

        // Model FLOPs: forward, backward-data and backward-weights ≈ 3 x 2 x MACs per image.
        let macs = try summaryRows(of: trainer.model).reduce(0) { $0 + $1.multiplyAccumulates }
        let gflops = 6 * Double(macs) * imagesPerSecond / 1e9
        // The machine's sgemm rate with every rank running it at once.
        try comm.barrier()
        var sgemmRates = [measureSgemm()]
        try comm.allreduceSum(&sgemmRates)
        let sgemmRate = sgemmRates[0]
        let rss = try comm.allgather(Int64(peakResidentBytes()))
        // Where the bytes go (rank 0's model): parameters, gradients and the momentum buffer
        // are one parameter count each; the rest from the layer shapes at this batch.
        let trained = trainer.model
        let account = MemoryAccount(root: trained.root, inputShape: [batch] + trained.inputShape,
                                    plan: trained.memoryPlan, arithmetic: GemmArithmetic(precision))
        let mib = { (bytes: Int) in (Double(bytes) / 1_048_576 * 10).rounded() / 10 }
        let memory: [(String, Double)] = [
            ("parameters_gradients_momentum", mib(3 * trained.parameterCount * MemoryLayout<Float>.stride)),
            ("activations", mib(account.activations)), ("input_gradients", mib(account.inputGradients)),
            ("convolution_workspaces", mib(account.convolutionWorkspaces)),
        ]

        guard comm.rank == 0 else { return }
        let fractions: [(String, Double)] = [("forward", p.forward), ("backward", p.backward),
                                             ("allreduce_wait", p.allreduceWait), ("optimizer", p.optimizer), ("data", p.data)]
        if json {
            var object: [String: Any] = [
                "model": model, "precision": precision.rawValue, "allreduce_dtype": allreduceDtype.rawValue, "ranks": size, "threads": threads, "batch_per_rank": batch, "steps": steps,
                "mode": world.localRanks != nil ? "local-ranks" : (size > 1 ? "mpi" : "single"),
                "images_per_second": imagesPerSecond, "step_ms": 1000 * seconds / Double(steps),
                "gflops": gflops, "sgemm_gflops": sgemmRate, "sgemm_share": gflops / sgemmRate,
                "peak_rss_mib_per_rank": rss.map { Double($0) / 1_048_576 },
                "multiply_accumulates_per_image": macs, "overlap": !noOverlap, "recompute": recompute,
            ]
            object["memory_account_mib"] = Dictionary(uniqueKeysWithValues: memory)
            var profile: [String: Double] = [:]
            for (name, value) in fractions { profile[name] = value / max(p.total, 1e-12) }
            object["profile_fraction"] = profile
            if let layerProfiler {
                object["layers"] = layerProfiler.entries.map {
                    ["name": $0.name, "type": $0.type, "forward_ms": 1000 * $0.forward / Double(steps),
                     "backward_ms": 1000 * $0.backward / Double(steps)] as [String: Any]
                }
            }
            let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        } else {
            print("bench train: \(model), \(precision.rawValue), allreduce \(allreduceDtype.rawValue), \(size) rank(s) x \(threads) thread(s), batch \(batch)/rank, \(steps) steps (+\(warmup) warm-up)")
            print(String(format: "  images/s %.1f   step %.1f ms   %@", imagesPerSecond, 1000 * seconds / Double(steps), p.summary))
            print(String(format: "  %.2f GFLOP/s model FLOPs (6 x %@ MACs/image) = %.0f%% of the measured sgemm rate %.1f GFLOP/s",
                         gflops, groupedDigits(macs), 100 * gflops / sgemmRate, sgemmRate))
            print("  peak resident memory per rank: " + rss.map { String(format: "%.0f MiB", Double($0) / 1_048_576) }.joined(separator: ", ")
                  + (world.localRanks != nil ? " (one process: in-process ranks share it)" : ""))
            print("  memory account (MiB): " + memory.map { "\($0.0) \($0.1)" }.joined(separator: ", "))
            if let layerProfiler {
                let total = layerProfiler.entries.reduce(0) { $0 + $1.forward + $1.backward }
                print("  per layer (rank 0, ms per step)       forward  backward   share")
                for e in layerProfiler.entries {
                    let label = "    " + e.name.padding(toLength: max(8, e.name.count + 1), withPad: " ", startingAt: 0)
                        + e.type.padding(toLength: max(18, e.type.count + 1), withPad: " ", startingAt: 0)
                    print(label + String(format: "%8.2f  %8.2f  %5.1f%%",
                                         1000 * e.forward / Double(steps), 1000 * e.backward / Double(steps),
                                         100 * (e.forward + e.backward) / max(total, 1e-12)))
                }
            }
        }
    }
}

/// GFLOP/s of our sgemm on a 256 x 3136 x 288 problem (a mid-sized convolution's GEMM), best of a few.
func measureSgemm() -> Double {
    let m = 256, n = 3136, k = 288
    let a = Tensor(shape: [m, k]), b = Tensor(shape: [k, n]), c = Tensor(shape: [m, n])
    for i in 0..<a.count { a.data[i] = Float(i % 7) * 0.01 }
    for i in 0..<b.count { b.data[i] = Float(i % 5) * 0.01 }
    var best = Double.infinity
    for _ in 0..<5 {
        let t0 = monotonicSeconds()
        sgemm(.none, .none, m: m, n: n, k: k, alpha: 1, a: a.data, lda: k, b: b.data, ldb: n, beta: 0, c: c.data, ldc: n)
        best = min(best, monotonicSeconds() - t0)
    }
    return 2 * Double(m * n * k) / best / 1e9
}

/// Peak resident set size of this process in bytes (ru_maxrss is in KiB on Linux).
func peakResidentBytes() -> Int {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return usage.ru_maxrss * 1024
}
