import CnnCore

/// Everything a training run depends on. Read from YAML (`configs/*.yaml`),
/// overridden by command-line flags, written back resolved into the run
/// directory. Field names are the YAML keys.
public struct TrainingConfig: Codable, Equatable {
    public var model = "fashion-cnn"
    /// C x H x W as "1x28x28"; nil means the model's default.
    public var input: String? = nil
    public var classes: Int? = nil
    /// fashion-mnist, mnist, cifar10 or synthetic.
    public var dataset = "fashion-mnist"
    /// Directory holding the dataset files.
    public var data = "/usr/share/datasets/fashion-mnist"
    public var epochs = 20
    /// Global batch size, split over the ranks.
    public var batch_size = 128
    public var optimizer = "sgd"
    public var lr: Float = 0.05
    public var momentum: Float = 0.9
    public var nesterov = true
    public var weight_decay: Float = 5e-4
    public var beta1: Float = 0.9
    public var beta2: Float = 0.999
    /// constant, step, multistep, cosine, onecycle.
    public var schedule = "onecycle"
    public var step_epochs = 10
    public var milestones: [Int] = []
    public var gamma: Float = 0.1
    public var warmup_epochs: Float = 0
    public var clip_norm: Float? = nil
    public var label_smoothing: Float = 0.1
    /// Augmentation: zero-padding for random crops (0 = off).
    public var crop_padding = 2
    public var flip = true
    /// Random translation in pixels (0 = off).
    public var translate = 0
    public var init_scheme = "pytorch"
    public var seed: UInt64 = 1
    /// Stop when test accuracy has not improved for this many epochs (0 = off).
    public var early_stopping_patience = 0
    /// Limit the training split (0 = all), for quick runs.
    public var train_limit = 0
    public var test_limit = 0
    /// Synthetic dataset size (dataset = synthetic).
    public var synthetic_count = 2048
    /// Gradient accumulation: each rank's part of a global batch runs as this
    /// many micro-batches; gradients are communicated once per global batch.
    public var accumulation_steps = 1
    /// Synchronized BatchNorm across ranks (false: each rank normalises with its own batch).
    public var sync_batchnorm = true
    /// Write a checkpoint every N optimizer steps (0: only at epoch ends and at the end).
    public var checkpoint_every = 0
    /// Checkpoints kept in RUN_DIR/checkpoints (the newest ones).
    public var keep_checkpoints = 3
    /// Stop after this many optimizer steps in all (0: run all epochs).
    public var max_steps = 0
    /// Threads for the compute kernels inside each rank (hybrid MPI + threads).
    public var threads = 1
    /// Fine-tuning: start from the weights of this safetensors file (a cnn-dist
    /// checkpoint or a PyTorch state_dict saved with safetensors).
    public var init_from: String? = nil
    /// Fine-tuning: do not load the classifier head from `init_from` (it keeps
    /// its fresh initialisation, e.g. for a different class count).
    public var replace_head = false
    /// Fine-tuning: parameters whose state_dict names start with one of these
    /// prefixes are frozen (no update, no weight decay), e.g. ["0.", "1."].
    public var freeze: [String] = []

    public init() {}

    /// Throws naming the first field out of range and what is allowed.
    public func validate(modelNames: [String]) throws {
        func fail(_ field: String, _ value: Any, _ allowed: String) -> CnnError {
            CnnError.invalidConfig(field: field, value: "\(value)", allowed: allowed)
        }
        guard modelNames.contains(model) else { throw fail("model", model, modelNames.joined(separator: ", ")) }
        guard ["fashion-mnist", "mnist", "cifar10", "synthetic"].contains(dataset) else {
            throw fail("dataset", dataset, "fashion-mnist, mnist, cifar10, synthetic")
        }
        guard epochs >= 1 else { throw fail("epochs", epochs, "an integer >= 1") }
        guard batch_size >= 1 else { throw fail("batch_size", batch_size, "an integer >= 1") }
        guard lr > 0, lr.isFinite else { throw fail("lr", lr, "a number > 0") }
        guard ["sgd", "adam", "adamw", "rmsprop"].contains(optimizer) else {
            throw fail("optimizer", optimizer, "sgd, adam, adamw, rmsprop")
        }
        guard ["constant", "step", "multistep", "cosine", "onecycle"].contains(schedule) else {
            throw fail("schedule", schedule, "constant, step, multistep, cosine, onecycle")
        }
        guard (0..<1).contains(momentum) else { throw fail("momentum", momentum, "0 <= momentum < 1") }
        guard weight_decay >= 0 else { throw fail("weight_decay", weight_decay, "a number >= 0") }
        guard (0..<1).contains(label_smoothing) else { throw fail("label_smoothing", label_smoothing, "0 <= x < 1") }
        guard crop_padding >= 0, translate >= 0 else { throw fail("crop_padding/translate", max(crop_padding, translate), ">= 0") }
        guard warmup_epochs >= 0 else { throw fail("warmup_epochs", warmup_epochs, ">= 0") }
        if let c = clip_norm, !(c > 0) { throw fail("clip_norm", c, "a number > 0") }
        guard ["pytorch", "kaiming", "xavier"].contains(init_scheme) else {
            throw fail("init_scheme", init_scheme, "pytorch, kaiming, xavier")
        }
        guard train_limit >= 0, test_limit >= 0 else { throw fail("train_limit", train_limit, ">= 0") }
        guard accumulation_steps >= 1 else { throw fail("accumulation_steps", accumulation_steps, "an integer >= 1") }
        guard checkpoint_every >= 0 else { throw fail("checkpoint_every", checkpoint_every, "an integer >= 0 (0 = epoch ends only)") }
        guard keep_checkpoints >= 1 else { throw fail("keep_checkpoints", keep_checkpoints, "an integer >= 1") }
        guard max_steps >= 0 else { throw fail("max_steps", max_steps, "an integer >= 0 (0 = no limit)") }
        guard (1...256).contains(threads) else { throw fail("threads", threads, "an integer from 1 to 256") }
    }
}
