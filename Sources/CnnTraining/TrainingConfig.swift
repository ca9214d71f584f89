import CnnCore
import CnnData
import CnnLayers
import CnnModels

/// Everything a training run depends on. Read from YAML (`configs/*.yaml`),
/// overridden by command-line flags, written back resolved into the run
/// directory. Field names are the YAML keys.
public struct TrainingConfig: Codable, Equatable {
    public var model = "fashion-cnn"
    /// C x H x W as "1x28x28"; nil means the model's default.
    public var input: String? = nil
    public var classes: Int? = nil
    public var dataset = DatasetKind.fashionMNIST
    /// Folder holding the dataset files; nil: the dataset's default folder.
    public var data: String? = nil
    public var epochs = 20
    /// Global batch size, split over the ranks.
    public var batchSize = 128
    public var optimizer = OptimizerKind.sgd
    public var lr: Float = 0.05
    public var momentum: Float = 0.9
    public var nesterov = true
    public var weightDecay: Float = 5e-4
    public var beta1: Float = 0.9
    public var beta2: Float = 0.999
    /// LARS's trust coefficient η: a layer's step is at most about η·lr times its weight norm.
    public var trustCoefficient: Float = 0.001
    public var schedule = ScheduleKind.onecycle
    public var stepEpochs = 10
    public var milestones: [Int] = []
    public var gamma: Float = 0.1
    public var warmupEpochs: Float = 0
    public var clipNorm: Float? = nil
    public var labelSmoothing: Float = 0.1
    /// Augmentation: zero-padding for random crops (0 = off).
    public var cropPadding = 0
    public var flip = true
    /// Random translation in pixels (0 = off).
    public var translate = 0
    /// torchvision's augmentations, a mapping under `augment:` (all off by default).
    public var augment = TorchvisionAugmentation()
    public var initScheme = InitScheme.pytorchDefault
    public var seed: UInt64 = 1
    /// Stop when test accuracy has not improved for this many epochs (0 = off).
    public var earlyStoppingPatience = 0
    /// Limit the training split (0 = all), for quick runs.
    public var trainLimit = 0
    public var testLimit = 0
    /// Synthetic dataset size (dataset = synthetic).
    public var syntheticCount = 2048
    /// Gradient accumulation: each rank's part of a global batch runs as this
    /// many micro-batches; gradients are communicated once per global batch.
    public var accumulationSteps = 1
    /// Synchronized BatchNorm across ranks (false: each rank normalises with its own batch).
    public var syncBatchNorm = true
    /// Write a checkpoint every N optimizer steps (0: only at epoch ends and at the end).
    public var checkpointEvery = 0
    /// Checkpoints kept in RUN_DIR/checkpoints (the newest ones).
    public var keepCheckpoints = 3
    /// Stop after this many optimizer steps in all (0: run all epochs).
    public var maxSteps = 0
    /// Threads for the compute kernels inside each rank (hybrid MPI + threads);
    /// nil: this node's cores shared among its ranks.
    public var threads: Int? = nil
    /// Fine-tuning: start from the weights of this safetensors file (a cnn-dist
    /// checkpoint or a PyTorch state_dict saved with safetensors).
    public var initFrom: String? = nil
    /// Fine-tuning: do not load the classifier head from `init_from` (it keeps
    /// its fresh initialisation, e.g. for a different class count).
    public var replaceHead = false
    /// Fine-tuning: parameters whose state_dict names start with one of these
    /// prefixes are frozen (no update, no weight decay), e.g. ["0.", "1."].
    public var freeze: [String] = []
    /// Non-finite gradients after the allreduce: stop (error naming the step
    /// and the first parameter, in layer order, where they appear) or skip the step.
    public var onNonFinite = NonFiniteAction.stop
    /// The arithmetic of the convolution and linear GEMMs: fp32, or bf16 operands with fp32
    /// sums (AVX512_BF16; refused before training on a CPU without it). Everything else,
    /// including the parameters and checkpoints, stays fp32.
    public var precision = ComputePrecision.fp32
    /// Recompute each BatchNorm + ReLU output that feeds a convolution in backward (one more
    /// normalize pass per such layer) instead of holding it: less activation memory, same bits.
    public var recompute = false
    /// What the gradient allreduce sends: fp32, or bf16 (half the bytes; each rank's gradients
    /// rounded to bf16, summed in fp32 in rank order and rounded once, so every rank gets the
    /// same bits). BatchNorm statistics and everything else are still communicated in fp32.
    public var allreduceDtype = AllreduceDType.fp32
    /// Threads inside each rank that decode and augment the next batches (prefetched
    /// two ahead) while the compute threads train: 2 by default, enough for small
    /// images; raise it when data_wait_fraction in metrics.jsonl is above a few percent
    /// (JPEGs at 224). Results do not depend on it.
    public var dataThreads = 2
    /// An image that cannot be decoded (shards: read at training time): stop with an
    /// error naming it, or skip it, count it and report at the end of the epoch.
    public var onBadImage = BadImageAction.error
    /// Shards: samples in each rank's shuffle buffer (see ShardDataset.swift); it holds
    /// encoded images, so memory is about this times the mean file size.
    public var shuffleBuffer = 1000

    /// The file format's keys (snake_case, as PyTorch users and older runs write them).
    public enum CodingKeys: String, CodingKey, CaseIterable {
        case model, input, classes, dataset, data, epochs, batchSize = "batch_size", optimizer, lr, momentum
        case nesterov, weightDecay = "weight_decay", beta1, beta2, trustCoefficient = "trust_coefficient"
        case schedule, stepEpochs = "step_epochs", milestones
        case gamma, warmupEpochs = "warmup_epochs", clipNorm = "clip_norm", labelSmoothing = "label_smoothing"
        case cropPadding = "crop_padding", flip, translate, augment, initScheme = "init_scheme", seed
        case earlyStoppingPatience = "early_stopping_patience", trainLimit = "train_limit", testLimit = "test_limit"
        case syntheticCount = "synthetic_count", accumulationSteps = "accumulation_steps"
        case syncBatchNorm = "sync_batchnorm", checkpointEvery = "checkpoint_every"
        case keepCheckpoints = "keep_checkpoints", maxSteps = "max_steps", threads, initFrom = "init_from"
        case replaceHead = "replace_head", freeze, onNonFinite = "on_nonfinite"
        case precision, allreduceDtype = "allreduce_dtype", recompute
        case dataThreads = "data_threads", onBadImage = "on_bad_image", shuffleBuffer = "shuffle_buffer"
    }

    public init() {}

    /// Throws naming the first field out of range and what is allowed.
    public func validate() throws {
        func fail(_ field: String, _ value: Any, _ allowed: String) -> CnnError {
            CnnError.invalidConfig(field: field, value: "\(value)", allowed: allowed)
        }
        // Integers: every count has an upper bound, so products of counts
        // (steps = epochs x steps per epoch, ranks x micro-batches) cannot overflow.
        func integer(_ field: String, _ value: Int, _ range: ClosedRange<Int>, _ meaning: String = "") throws {
            guard range.contains(value) else {
                throw fail(field, value, "an integer from \(range.lowerBound) to \(range.upperBound)" + meaning)
            }
        }
        func number(_ field: String, _ value: Float, _ range: ClosedRange<Float>, open upper: Bool = false) throws {
            guard value.isFinite, range.contains(value), !(upper && value == range.upperBound) else {
                throw fail(field, value, "a finite number from \(range.lowerBound) to \(range.upperBound)\(upper ? " (exclusive)" : "")")
            }
        }
        if ModelFile.isPath(model) { _ = try ModelFile.load(path: model) } else { _ = try ZooModel.named(model) }
        if let input { _ = try parseShapeField(input, field: "input") }
        if let classes { try integer("classes", classes, 2...100_000) }
        try integer("epochs", epochs, 1...100_000)
        try integer("batch_size", batchSize, 1...1 << 20)
        guard lr > 0, lr.isFinite else { throw fail("lr", lr, "a number > 0") }
        try number("momentum", momentum, 0...1, open: true)
        try number("weight_decay", weightDecay, 0...1e3)
        try number("beta1", beta1, 0...1, open: true)
        try number("beta2", beta2, 0...1, open: true)
        guard trustCoefficient > 0, trustCoefficient <= 1e3 else {
            throw fail("trust_coefficient", trustCoefficient, "a finite number > 0 and <= 1000")
        }
        try integer("step_epochs", stepEpochs, 1...100_000)
        for m in milestones { try integer("milestones", m, 1...100_000) }
        try number("gamma", gamma, 0...1e3)
        try number("warmup_epochs", warmupEpochs, 0...Float(epochs))
        if let c = clipNorm, !(c > 0 && c.isFinite) { throw fail("clip_norm", c, "a finite number > 0") }
        try number("label_smoothing", labelSmoothing, 0...1, open: true)
        try integer("crop_padding", cropPadding, 0...1024)
        try integer("translate", translate, 0...1024)
        try augment.validate()
        try integer("early_stopping_patience", earlyStoppingPatience, 0...100_000, " (0 = off)")
        try integer("train_limit", trainLimit, 0...1 << 40, " (0 = all)")
        try integer("test_limit", testLimit, 0...1 << 40, " (0 = all)")
        try integer("synthetic_count", syntheticCount, 1...1 << 22)
        if dataset == .synthetic {
            // Generated images live in memory: keep them under 4 GiB of floats.
            let shape = try input.map { try parseShapeField($0, field: "input") } ?? [1, 28, 28]
            let bytes = Double(syntheticCount) * 1.25 * Double(shape.reduce(1, *)) * 4
            guard bytes <= 4 * 1_073_741_824 else {
                throw fail("synthetic_count", syntheticCount, "at most \(Int(4 * 1_073_741_824 / (1.25 * 4 * Double(shape.reduce(1, *))))) "
                           + "images of \(formatShape(shape)) (4 GiB)")
            }
        }
        try integer("accumulation_steps", accumulationSteps, 1...1 << 16)
        try integer("checkpoint_every", checkpointEvery, 0...1 << 40, " (0 = epoch ends only)")
        try integer("keep_checkpoints", keepCheckpoints, 1...1000)
        try integer("max_steps", maxSteps, 0...1 << 40, " (0 = no limit)")
        if let threads { try integer("threads", threads, 1...256) }
        try integer("data_threads", dataThreads, 1...256)
        try integer("shuffle_buffer", shuffleBuffer, 1...1 << 20)
        if dataset.isStreamed {
            if trainLimit > 0 { throw fail("train_limit", trainLimit, "0 with dataset shards (repack a part instead)") }
            if testLimit > 0 { throw fail("test_limit", testLimit, "0 with dataset shards (repack a part instead)") }
        }
    }

    /// The dataset folder this config reads (its own, else the dataset's default).
    public var dataDirectory: String? { data ?? dataset.defaultDirectory }

    /// What the dataset registry needs to load this config's data.
    public var datasetRequest: DatasetRequest {
        get throws {
            var request = DatasetRequest(directory: data, imageShape: try input.map { try parseShapeField($0, field: "input") },
                                         classes: classes, syntheticCount: syntheticCount, seed: seed)
            request.onBadImage = onBadImage
            return request
        }
    }
}

/// The element type the gradient allreduce sends (`allreduce_dtype`).
public enum AllreduceDType: String, ConfigChoice {
    /// Floats, summed by the communicator (MPI's order under mpirun).
    case fp32
    /// bf16, summed in fp32 in rank order and rounded once (`Communicator.startAllreduceSumBF16`).
    case bf16
}

/// What training does with non-finite gradients after the allreduce.
public enum NonFiniteAction: String, ConfigChoice {
    /// End the run naming the step and the first parameter (in layer order).
    case stop
    /// Skip the step and count it.
    case skip
}
