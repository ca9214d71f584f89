import Foundation
import CnnCore
import CnnLayers
import CnnModels
import CnnData
import CnnDistributed

/// Metrics of one epoch, as written to metrics.jsonl.
public struct EpochMetrics: Codable, Equatable {
    public var epoch: Int
    public var lr: Double
    public var trainLoss: Double
    public var trainAccuracy: Double
    public var testLoss: Double
    public var testAccuracy: Double
    public var imagesPerSecond: Double
    public var seconds: Double
    /// Fractions of the epoch's training time (coordinator's view): exposed
    /// allreduce wait, data wait, and the compute phases.
    public var allreduceWaitFraction: Double
    public var dataWaitFraction: Double
    public var forwardFraction: Double
    public var backwardFraction: Double
    public var optimizerFraction: Double
    /// The file format's keys (snake_case, as PyTorch users and older runs write them).
    public enum CodingKeys: String, CodingKey, CaseIterable {
        case epoch, lr, trainLoss = "train_loss", trainAccuracy = "train_accuracy", testLoss = "test_loss"
        case testAccuracy = "test_accuracy", imagesPerSecond = "images_per_second", seconds
        case allreduceWaitFraction = "allreduce_wait_fraction", dataWaitFraction = "data_wait_fraction"
        case forwardFraction = "forward_fraction", backwardFraction = "backward_fraction"
        case optimizerFraction = "optimizer_fraction"
    }
}

/// Loss and accuracy over a test split.
public struct Evaluation: Equatable {
    public var loss: Double
    public var accuracy: Double
    public var count: Int
    public var correct: Int
    /// Samples whose label is among the 5 highest logits (ties count against).
    public var top5Correct = 0
    /// confusion[true class][predicted class], for up to 1,000 classes (else empty).
    public var confusion: [[Int]] = []
    /// Unreadable images left out (shards with on_bad_image: skip), all ranks together.
    public var skippedImages = 0
    /// The first one's error on this rank, if any.
    public var firstSkipped: String?

    /// Accuracy within each true class (nil for a class with no sample).
    public var perClassAccuracy: [Double?] {
        confusion.enumerated().map { k, row in
            let total = row.reduce(0, +)
            return total == 0 ? nil : Double(row[k]) / Double(total)
        }
    }
    public var top5Accuracy: Double { Double(top5Correct) / Double(max(1, count)) }
}

/// Seconds spent in each phase of training steps (one rank's view).
/// Backward excludes the exposed allreduce wait: communication that overlaps
/// backward costs nothing here; what is left after backward is `allreduceWait`.
public struct StepProfile: Equatable, Sendable {
    public var data = 0.0
    public var forward = 0.0
    public var backward = 0.0
    public var allreduceWait = 0.0
    public var optimizer = 0.0
    public var steps = 0
    public init() {}
    public var total: Double { data + forward + backward + allreduceWait + optimizer }
    /// One line: seconds per step and share of each phase.
    public var summary: String {
        let t = max(total, 1e-12), n = Double(max(steps, 1))
        return String(format: "%.1f ms/step: forward %.0f%%, backward %.0f%%, allreduce wait %.1f%%, optimizer %.1f%%, data %.1f%%",
                      1000 * total / n, 100 * forward / t, 100 * backward / t, 100 * allreduceWait / t,
                      100 * optimizer / t, 100 * data / t)
    }
}

/// Where a resumed run continues: the checkpoint's files, read by rank 0 and
/// broadcast to every rank.
public struct ResumePoint {
    public var folder: String
    public var state: TrainingState
    public var model: [SafeTensor]
    public var optimizer: [SafeTensor]
    public var optimizerMetadata: [String: String]
}

/// Synchronous data-parallel training on any communicator: every rank holds
/// the model, trains on its slice of each global batch, allreduces gradients
/// (bucketed, overlapped with backward) and BatchNorm statistics, and takes
/// the same optimizer step. Rank 0 writes the run directory.
public final class Trainer {
    public let config: TrainingConfig
    public let communicator: Communicator
    public let model: Model
    public let optimizer: Optimizer
    public let schedule: LearningRateSchedule
    /// The images in memory; for a streamed dataset (shards) these hold no image, only
    /// the shape, classes and names, and `shards` reads the files.
    public let trainSet: ImageDataset
    public let testSet: ImageDataset
    /// The shard folder a streamed dataset reads (nil: the images are in memory).
    public let shards: ShardSet?
    /// Samples in the training and test splits.
    public private(set) var trainCount = 0
    public private(set) var testCount = 0
    /// Global batches per epoch (for shards: the same on every rank, see ShardDataset.swift).
    public private(set) var stepsPerEpoch = 0
    public let statistics: ChannelStatistics
    /// Normalises and augments the training images of each batch.
    let assembler: BatchAssembler
    /// Where rank 0 writes config, metrics and checkpoints; nil writes nothing.
    public let runDirectory: String?
    /// Rank 0's writer of `runDirectory` (nil on the other ranks).
    let runFolder: RunDirectory?
    /// Optimizer steps taken (global batches trained).
    public internal(set) var step = 0
    /// The epoch in progress and how many of its global batches are done.
    public internal(set) var epoch = 0
    public internal(set) var stepInEpoch = 0
    public private(set) var history: [EpochMetrics] = []
    /// The shard filler of the epoch in progress (its count of skipped bad images).
    var shardFilling: ShardBatchFilling?
    /// Steps skipped for non-finite gradients (on_nonfinite: skip).
    public private(set) var skippedSteps = 0
    /// Phase times of all steps of this run (this rank).
    public private(set) var profile = StepProfile()
    /// Phase times of the steps from `profileSkipSteps` on (benchmarks skip warm-up steps).
    public private(set) var measuredProfile = StepProfile()
    public var profileSkipSteps = 0
    /// Per-layer forward/backward times of the measured steps, when set.
    public var layerProfiler: LayerProfiler?
    let log: (String) -> Void
    let loss: ModelLoss
    let reducer: StatisticsAllreducer
    let bucketer: GradientBucketer
    let clipping: GradientClipping?
    /// Flat-buffer ranges of frozen parameters (fine-tuning).
    let frozen: [Range<Int>]
    var earlyStopping: EarlyStopping
    /// This epoch's sums so far on this rank; after a resume rank 0 starts
    /// from the checkpoint's global sums, the others from zero.
    var totals = EpochTotals()
    /// The learning rate of the last step taken.
    private(set) var learningRate: Float = 0
    /// Check every N steps that all ranks hold identical parameters.
    public var consistencyCheckEvery = 100
    /// The bf16 tile kernel when `config.precision` is bf16 (tests force `.portable`).
    public var bf16Kernel = BF16Kernel.automatic
    /// The GEMM arithmetic of training and evaluation, from `config.precision`.
    var arithmetic: GemmArithmetic { GemmArithmetic(config.precision, bf16Kernel: bf16Kernel) }
    /// Plain progress line every N steps (coordinator only) when `progress` is nil.
    public var progressEvery = 50
    /// Asked after every step on every rank; if any rank answers true (a
    /// preemption or interrupt signal reached it), all ranks stop after the
    /// same step, rank 0 writes a checkpoint, and `run()` throws
    /// `TrainingInterrupted`. Nil: never asked (no extra collective).
    public var stopRequested: (() -> Bool)?
    /// Called on the coordinator about twice a second with a progress line
    /// (rate, ETA) meant to overwrite itself on a terminal; nil: plain log lines.
    public var progress: ((String) -> Void)?

    /// A fresh run (or, with `resume`, the continuation of one). `model`
    /// replaces the zoo model named by the config (tests, custom models).
    public init(config: TrainingConfig, communicator: Communicator, runDirectory: String?,
                model customModel: Model? = nil, resume: ResumePoint? = nil,
                bucketBytes: Int = 4 << 20, overlap: Bool = true, log: @escaping (String) -> Void = { print($0) }) throws {
        try config.validate()
        self.config = config
        self.communicator = communicator
        self.runDirectory = runDirectory
        runFolder = communicator.rank == 0 ? runDirectory.map(RunDirectory.init(path:)) : nil
        self.log = log
        guard config.batchSize >= communicator.size * config.accumulationSteps else {
            throw CnnError.invalidConfig(field: "batch_size", value: String(config.batchSize),
                                         allowed: "at least ranks x accumulation_steps (\(communicator.size) x \(config.accumulationSteps))")
        }

        // Data: every rank reads the files and the sampler gives each its slice; or, for
        // shards, each rank streams its own shards (see ShardDataset.swift).
        var (train, test): (ImageDataset, ImageDataset)
        if config.dataset.isStreamed {
            guard let dir = config.data else {
                throw CnnError.invalidConfig(field: "data", value: "(none)", allowed: "a shard folder: \(config.dataset.howToGet)")
            }
            let set = try ShardSet(directory: dir, shape: try config.datasetRequest.imageShape ?? config.dataset.defaultShape)
            if let classes = config.classes, classes != set.classCount {
                throw CnnError.invalidConfig(field: "classes", value: String(classes),
                                             allowed: "the shards' \(set.classCount) classes (shards take no class subset)")
            }
            func placeholder(_ split: DatasetSplit) -> ImageDataset {
                var d = ImageDataset(name: "shards \(split == .train ? "train" : "val")", source: set.directory, pixels: [],
                                     labels: [], channels: set.imageShape[0], height: set.imageShape[1],
                                     width: set.imageShape[2], classCount: set.classCount)
                d.classNames = set.classNames
                return d
            }
            (train, test) = (placeholder(.train), placeholder(.test))
            shards = set
            trainCount = set.count(.train)
            testCount = set.count(.test)
            stepsPerEpoch = try set.stepsPerEpoch(globalBatchSize: config.batchSize, worldSize: communicator.size)
        } else {
            (train, test) = try config.dataset.load(config.datasetRequest)
            shards = nil
            for split in [train, test] where !split.skippedFiles.isEmpty && communicator.rank == 0 {
                log("\(split.name): skipped \(split.skippedFiles.count) unreadable image(s) (on_bad_image: skip), "
                    + "the same on every rank; first: \(split.skippedFiles[0])")
            }
        }
        if shards == nil && config.trainLimit > 0 && config.trainLimit < train.count { train = train.subset(0..<config.trainLimit) }
        if shards == nil && config.testLimit > 0 && config.testLimit < test.count { test = test.subset(0..<config.testLimit) }
        let classes = customModel?.classCount ?? config.classes ?? train.classCount
        if classes < train.classCount {
            // Fine-tuning onto fewer classes: keep the samples of classes 0..<classes.
            let keep = Int32(classes)
            var trainSubset = train.subset(train.labels.indices.filter { train.labels[$0] < keep }, name: train.name)
            var testSubset = test.subset(test.labels.indices.filter { test.labels[$0] < keep }, name: test.name)
            trainSubset.classCount = classes
            testSubset.classCount = classes
            guard trainSubset.count >= config.batchSize, testSubset.count > 0 else {
                throw CnnError.invalidConfig(field: "classes", value: String(classes),
                                             allowed: "a class count whose classes 0..<classes leave at least a batch of "
                                                + "training samples (\(trainSubset.count) left) and a test sample")
            }
            if communicator.rank == 0 {
                log("classes: \(classes) of the dataset's \(train.classCount); training on the "
                    + "\(trainSubset.count) training and \(testSubset.count) test samples of classes 0-\(classes - 1)")
            }
            train = trainSubset
            test = testSubset
        }
        guard test.count > 0 || shards != nil else {
            throw CnnError.invalidConfig(field: "test_limit", value: String(config.testLimit),
                                         allowed: "a test split with at least one image (\(config.dataset.rawValue)'s test split is empty)")
        }
        guard test.imageShape == train.imageShape, test.classCount == train.classCount else {
            throw CnnError.invalidData(file: test.source,
                                       reason: "test images are \(formatShape(test.imageShape)) with \(test.classCount) classes, "
                                           + "training images \(formatShape(train.imageShape)) with \(train.classCount)")
        }
        guard train.count >= config.batchSize || shards != nil else {
            throw CnnError.invalidConfig(field: "batch_size", value: String(config.batchSize),
                                         allowed: "at most the \(train.count) training samples")
        }
        trainSet = train
        testSet = test
        if shards == nil { (trainCount, testCount, stepsPerEpoch) = (train.count, test.count, train.count / config.batchSize) }
        statistics = shards?.statistics ?? ChannelStatistics.compute(train)
        var augmentation = Augmentation(cropPadding: config.cropPadding, horizontalFlip: config.flip,
                                        maxTranslation: config.translate)
        augmentation.photometric = config.augment
        assembler = BatchAssembler(dataset: train, statistics: statistics, augmentation: augmentation, seed: config.seed)

        if let customModel {
            model = customModel
        } else {
            let inputShape = try config.input.map { try parseShapeField($0, field: "input") } ?? train.imageShape
            model = try Model(name: config.model, inputShape: inputShape, classCount: config.classes ?? train.classCount)
        }
        guard model.inputShape == train.imageShape else {
            throw CnnError.invalidConfig(field: "input", value: formatShape(model.inputShape),
                                         allowed: "the dataset's image shape \(formatShape(train.imageShape))")
        }
        if customModel == nil {
            model.store.initialize(scheme: config.initScheme, seed: config.seed)
        }
        if config.recompute {
            // Planned at the micro-batch each rank runs (the buffers grow if a batch is larger).
            model.planMemory(batch: max(1, config.batchSize / max(communicator.size, 1) / max(config.accumulationSteps, 1)),
                             recompute: true)
        }

        optimizer = try config.optimizer.make(config)
        optimizer.setParameterLayout(model.store.parameterEntries)
        frozen = try Trainer.frozenRanges(config.freeze, store: model.store)
        if !frozen.isEmpty {
            // Frozen elements get zero gradients and no weight decay, so every optimizer leaves them unchanged.
            optimizer.weightDecayMask = WeightDecayMask(excluded: optimizer.weightDecayMask.excluded + frozen)
        }
        schedule = try config.schedule.make(config, stepsPerEpoch: stepsPerEpoch)
        clipping = try config.clipNorm.map { try GradientClipping(maxNorm: $0) }
        loss = try ModelLoss(model: model, labelSmoothing: config.labelSmoothing)
        reducer = StatisticsAllreducer(communicator: communicator)
        bucketer = GradientBucketer(store: model.store, communicator: communicator,
                                    bucketElements: max(1, bucketBytes / 4), overlap: overlap,
                                    dtype: config.allreduceDtype)
        earlyStopping = try EarlyStopping(patience: max(1, config.earlyStoppingPatience), mode: .max)

        if let resume {
            try restore(resume)
        } else if let path = config.initFrom {
            try initialize(fromFile: path)
        }
        try synchronizeInitialState()
    }

    /// Parameter ranges whose names start with one of `prefixes`; a prefix
    /// that matches nothing is a config error naming it.
    static func frozenRanges(_ prefixes: [String], store: ParameterStore) throws -> [Range<Int>] {
        var ranges: [Range<Int>] = []
        for prefix in prefixes {
            let hits = store.parameterEntries.filter { $0.name.hasPrefix(prefix) }
            guard !hits.isEmpty else {
                throw CnnError.invalidConfig(field: "freeze", value: prefix,
                                             allowed: "prefixes of parameter names, e.g. "
                                                + store.parameterEntries.prefix(4).map(\.name).joined(separator: ", "))
            }
            ranges += hits.map { $0.offset ..< $0.offset + $0.count }
        }
        return ranges
    }

    /// Rank 0's parameters and buffers go to every rank; then all check a checksum.
    func synchronizeInitialState() throws {
        for t in [model.store.parameters, model.store.buffers] where t.count > 0 {
            try communicator.broadcast(UnsafeMutableRawBufferPointer(start: t.data, count: t.count * 4), root: 0)
        }
        try checkConsistency(what: "initial parameters")
    }

    /// FNV-1a over the parameter and buffer bits: equal on all ranks or we stop.
    func checkConsistency(what: String) throws {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for t in [model.store.parameters, model.store.buffers] {
            let words = UnsafeRawPointer(t.data).assumingMemoryBound(to: UInt32.self)
            for i in 0..<t.count { hash = (hash ^ UInt64(words[i])) &* 0x100_0000_01b3 }
        }
        let all = try communicator.allgather(Int64(bitPattern: hash))
        if let bad = all.firstIndex(where: { $0 != all[0] }) {
            throw CnnError.communication(rank: bad, call: "parameter consistency check (\(what), step \(step))",
                                         reason: "rank \(bad)'s parameters differ from rank 0's")
        }
    }

    var totalSteps: Int {
        let all = stepsPerEpoch * config.epochs
        return config.maxSteps > 0 ? min(all, config.maxSteps) : all
    }

    /// Trains until the last epoch, `max_steps`, or early stopping; rank 0
    /// writes metrics, checkpoints and the final model.
    @discardableResult
    public func run() throws -> [EpochMetrics] {
        let context = ExecutionContext(training: true, seed: config.seed)
        if communicator.size > 1 && config.syncBatchNorm { context.statisticsReducer = reducer }
        context.needsInputGradient = false   // dL/d(images) is discarded: the first conv can skip it
        context.arithmetic = arithmetic
        if let runFolder { history = try runFolder.start(config: config, keepingEpochsThrough: epoch, step: step) }
        let progress = ProgressReporter(trainer: self)
        logStart()

        while epoch < config.epochs && step < totalSteps {
            let loader = try makeLoader(epoch: epoch)
            defer { loader.close() }
            var epochProfile = StepProfile()
            let epochStart = monotonicSeconds()
            while step < totalSteps {
                if step == profileSkipSteps { layerProfiler?.reset() }
                context.layerProfiler = layerProfiler
                var phases = StepProfile()
                guard let stepLoss = try trainStep(loader, context: context, phases: &phases) else { break }
                try runFolder?.addStep(step, loss: stepLoss, learningRate: Double(learningRate))
                epochProfile.add(phases)
                if step >= profileSkipSteps { measuredProfile.add(phases) }
                step += 1
                stepInEpoch += 1
                if step % consistencyCheckEvery == 0 { try checkConsistency(what: "periodic check") }
                progress.report()
                if try stopAgreed() {
                    try saveCheckpoint()
                    try runFolder?.close()
                    throw TrainingInterrupted(step: step, runDirectory: runDirectory)
                }
                if config.checkpointEvery > 0 && step % config.checkpointEvery == 0 && stepInEpoch < stepsPerEpoch {
                    try saveCheckpoint()
                }
            }
            profile.add(epochProfile)
            if stepInEpoch < stepsPerEpoch {
                // Stopped by max_steps inside the epoch.
                try saveCheckpoint()
                break
            }
            try finishEpoch(profile: epochProfile, seconds: monotonicSeconds() - epochStart)
            if config.earlyStoppingPatience > 0 && earlyStopping.shouldStop {
                if communicator.rank == 0 {
                    log("early stopping: test accuracy has not improved for \(config.earlyStoppingPatience) epochs")
                }
                break
            }
        }
        try runFolder?.writeModel(try modelBytes())
        try runFolder?.markCompleted(step: step)
        try runFolder?.close()
        try communicator.barrier()
        return history
    }

    /// One optimizer step of synchronous data-parallel SGD. For each
    /// micro-batch of this rank's share of the global batch: forward and loss,
    /// zero the gradients (before the first), backward; the last backward
    /// allreduces the gradients bucket by bucket as layers finish. Then wait
    /// for what is still in flight and update, the same on every rank.
    /// Returns the step's mean loss over this rank's samples, or nil if the
    /// loader has no batch left.
    func trainStep(_ loader: BatchLoader, context: ExecutionContext, phases: inout StepProfile) throws -> Double? {
        let micro = config.accumulationSteps
        var lossSum = 0.0, samples = 0
        for m in 0..<micro {
            guard let batch = loader.next() else {
                if let failure = loader.failure { throw failure }
                return nil
            }
            phases.data += loader.lastWaitSeconds
            var t = monotonicSeconds()
            context.training = true
            context.step = step
            communicator.currentStep = step  // named in deadline and schedule reports
            context.sampleOffset = batch.sampleOffset
            let logits = model.forward(batch.images, context: context)
            let batchLoss = batch.labels.withUnsafeBufferPointer {
                loss.forward(logits: logits, labels: $0, normalizer: batch.globalBatchSize)
            }
            totals.add(loss: batchLoss, batchSize: batch.globalBatchSize, correct: loss.lastCorrect, seen: batch.count)
            lossSum += batchLoss * Double(batch.globalBatchSize)
            samples += batch.count
            phases.forward += lap(&t)
            if m == 0 { model.store.zeroGradients() }
            let last = m == micro - 1
            if last { bucketer.beginStep() }
            context.gradientsReady = last ? { [bucketer] layer in bucketer.layerReady(layer) } : nil
            _ = model.backward(loss.backward(), context: context)
            phases.backward += lap(&t)
        }
        phases.allreduceWait += try bucketer.finish()
        try reducer.checkFailure()
        var t = monotonicSeconds()
        try update()
        phases.optimizer += lap(&t)
        phases.steps = 1
        return lossSum / Double(max(1, samples))
    }

    /// The optimizer step on the reduced gradients: frozen parameters get no
    /// gradient, then clipping, then the update (or, for non-finite gradients,
    /// a stop or a skip). Every rank holds the same gradients, so every rank
    /// decides the same.
    func update() throws {
        for r in frozen { model.store.gradients.data.advanced(by: r.lowerBound).update(repeating: 0, count: r.count) }
        if let clipping { clipping.apply(model.store.gradients) }
        learningRate = schedule.learningRate(step: step, stepsPerEpoch: stepsPerEpoch)
        guard let bad = firstNonFinite(model.store.gradients) else {
            optimizer.step(model.store, learningRate: learningRate)
            return
        }
        let name = model.store.parameterEntries.last { $0.offset <= bad }?.name ?? "offset \(bad)"
        guard config.onNonFinite == .skip else {
            throw CnnError.nonFinite(step: step, location: "gradient of \(name) (the first non-finite one in layer order)")
        }
        skippedSteps += 1
        if communicator.rank == 0 { log("step \(step): non-finite gradient of \(name); step skipped (on_nonfinite: skip)") }
    }

    /// Whether any rank was asked to stop (one small collective, so all ranks
    /// stop after the same step).
    func stopAgreed() throws -> Bool {
        guard let stopRequested else { return false }
        return try communicator.allreduceMax(stopRequested() ? 1 : 0) > 0
    }

    /// This rank's batches of `epoch` from the current step on, split into
    /// micro-batches and assembled ahead on the loader's thread.
    func makeLoader(epoch: Int) throws -> BatchLoader {
        if let shards { return try makeShardLoader(shards, epoch: epoch) }
        let sampler = EpochSampler(datasetCount: trainSet.count, seed: config.seed, epoch: epoch)
        let batches = sampler.rankBatches(globalBatchSize: config.batchSize, rank: communicator.rank,
                                          worldSize: communicator.size, dropLast: true)
        let microBatches = batches[stepInEpoch...].flatMap { splitIntoMicroBatches($0, count: config.accumulationSteps) }
        return BatchLoader(assembler: assembler, epoch: epoch, batches: microBatches, threads: config.dataThreads)
    }

    /// The loader of a streamed epoch: this rank's share b_r of every global batch
    /// from the current step on, read from its shard stream (see ShardDataset.swift).
    func makeShardLoader(_ set: ShardSet, epoch: Int) throws -> BatchLoader {
        let (rank, size) = (communicator.rank, communicator.size)
        let share = evenShare(count: config.batchSize, rank: rank, size: size)
        let batches = (stepInEpoch..<stepsPerEpoch).map { step in
            RankBatch(step: step, indices: Array(0..<share.count), sampleOffset: step * config.batchSize + share.lowerBound,
                      globalBatchSize: config.batchSize)
        }
        let filling = try ShardBatchFilling(set: set, rank: rank, worldSize: size, statistics: statistics,
                                            augmentation: assembler.augmentation, seed: config.seed, epoch: epoch,
                                            shuffleBuffer: config.shuffleBuffer, threads: config.dataThreads,
                                            onBadImage: config.onBadImage, skipSamples: stepInEpoch * share.count)
        shardFilling = filling
        return BatchLoader(filling: filling, epoch: epoch,
                           batches: batches.flatMap { splitIntoMicroBatches($0, count: config.accumulationSteps) })
    }

    /// Epoch totals, evaluation, metrics line, epoch-end checkpoint.
    func finishEpoch(profile p: StepProfile, seconds: Double) throws {
        try checkFiniteState()
        // Loss was normalised by the global batch. After a resume rank 0's
        // sums start from the checkpoint's global sums, so this is still the epoch total.
        let epochTotals = try totals.reduced(over: communicator)
        let trainImages = Double(stepsPerEpoch * config.batchSize)
        let evaluation = try evaluate()
        if shards != nil {
            // Bad images skipped by every rank this epoch (on_bad_image: skip), training and evaluation.
            let train: (count: Int, first: String?) = shardFilling?.skipped ?? (0, nil)
            var counts = [Double(train.count)]
            try communicator.allreduceSum(&counts)
            if communicator.rank == 0 && Int(counts[0]) + evaluation.skippedImages > 0 {
                log("epoch \(epoch + 1): skipped \(Int(counts[0])) unreadable training and \(evaluation.skippedImages) validation "
                    + "image(s) (on_bad_image: skip); the first on rank 0: \(train.first ?? evaluation.firstSkipped ?? "(none)")")
            }
            shardFilling = nil
        }
        let t = max(seconds, 1e-9)
        let metrics = EpochMetrics(
            epoch: epoch + 1, lr: Double(learningRate),
            trainLoss: epochTotals.lossSum / trainImages, trainAccuracy: epochTotals.correct / max(1, epochTotals.seen),
            testLoss: evaluation.loss, testAccuracy: evaluation.accuracy,
            imagesPerSecond: Double(p.steps * config.batchSize) / t, seconds: seconds,
            allreduceWaitFraction: p.allreduceWait / t, dataWaitFraction: p.data / t,
            forwardFraction: p.forward / t, backwardFraction: p.backward / t, optimizerFraction: p.optimizer / t)
        history.append(metrics)
        _ = earlyStopping.update(evaluation.accuracy)
        epoch += 1
        stepInEpoch = 0
        totals = EpochTotals()
        if communicator.rank == 0 {
            log(String(format: "epoch %d: train loss %.4f acc %.4f | test loss %.4f acc %.4f | %.0f img/s, %.1fs | %@",
                       metrics.epoch, metrics.trainLoss, metrics.trainAccuracy, metrics.testLoss,
                       metrics.testAccuracy, metrics.imagesPerSecond, metrics.seconds, p.summary))
            try runFolder?.append(metrics)
            if testSet.count > 0 {
                // The first test image, the same every epoch.
                let size = testSet.imageShape.reduce(1, *)
                try runFolder?.addEpochPictures(model: model, testImage: Array(testSet.pixels[0..<size]),
                                                statistics: statistics, epoch: metrics.epoch)
            }
        }
        try saveCheckpoint()
        // The weights are finite (checked above), so the epoch is kept; a
        // non-finite test loss still means the model diverged on some input.
        if !evaluation.loss.isFinite && config.onNonFinite == .stop {
            throw CnnError.nonFinite(step: step, location: "test loss of epoch \(metrics.epoch) (\(evaluation.loss)); "
                                     + "the epoch's metrics line and checkpoint were written")
        }
    }

    /// The opening line (coordinator only).
    func logStart() {
        guard communicator.rank == 0 else { return }
        let micro = config.accumulationSteps
        log("train: \(config.model) on \(trainSet.name) (\(trainCount) train, \(testCount) test), "
            + "\(model.parameterCount) parameters, \(communicator.size) rank(s), global batch \(config.batchSize)"
            + (micro > 1 ? " in \(micro) micro-batches" : "")
            + ", \(config.epochs) epochs x \(stepsPerEpoch) steps"
            + (shards != nil && trainCount - stepsPerEpoch * config.batchSize >= config.batchSize
                ? "; each epoch drops \(trainCount - stepsPerEpoch * config.batchSize) samples (equal steps on every rank)" : "")
            + (step > 0 ? "; resuming at step \(step) (epoch \(epoch + 1), batch \(stepInEpoch))" : ""))
    }

    /// Splits a rank batch into `count` consecutive micro-batches (as even as
    /// possible); sample offsets stay global, so dropout and augmentation are
    /// those of the whole batch.
    func splitIntoMicroBatches(_ batch: RankBatch, count: Int) -> [RankBatch] {
        guard count > 1 else { return [batch] }
        return (0..<count).map { m in
            let part = evenShare(count: batch.indices.count, rank: m, size: count)
            return RankBatch(step: batch.step, indices: Array(batch.indices[part]),
                             sampleOffset: batch.sampleOffset + part.lowerBound, globalBatchSize: batch.globalBatchSize)
        }
    }

    /// Exactly-once evaluation: each test sample on one rank, sums reduced
    /// (with the training loss's label smoothing, as metrics.jsonl reports it).
    public func evaluate() throws -> Evaluation {
        if let shards {
            return try CnnTraining.evaluate(model: model, shards: shards, statistics: statistics, communicator: communicator,
                                            batchSize: max(1, config.batchSize), labelSmoothing: config.labelSmoothing,
                                            threads: config.dataThreads, onBadImage: config.onBadImage,
                                            arithmetic: arithmetic, progress: communicator.rank == 0 ? progress : nil)
        }
        return try CnnTraining.evaluate(model: model, dataset: testSet, statistics: statistics, communicator: communicator,
                                        batchSize: max(1, config.batchSize), labelSmoothing: config.labelSmoothing,
                                        arithmetic: arithmetic, progress: communicator.rank == 0 ? progress : nil)
    }
}

/// Training stopped on request (a signal) after `step`, with a checkpoint of
/// that step written: the run continues with `cnn-dist train --resume`.
public struct TrainingInterrupted: Error, CustomStringConvertible {
    public var step: Int
    public var runDirectory: String?
    /// The exit status of an interrupted, resumable run (BSD's EX_TEMPFAIL).
    public static let exitCode: Int32 = 75
    public var description: String {
        "interrupted after step \(step); checkpoint written"
            + (runDirectory.map { "; continue with: cnn-dist train --resume \($0)" } ?? "")
    }
}

extension StepProfile {
    /// Adds another profile's phase times and steps.
    public mutating func add(_ o: StepProfile) {
        data += o.data; forward += o.forward; backward += o.backward
        allreduceWait += o.allreduceWait; optimizer += o.optimizer; steps += o.steps
    }
}

/// Seconds since `t`, and moves `t` to now.
@inline(__always) func lap(_ t: inout Double) -> Double {
    let now = monotonicSeconds()
    defer { t = now }
    return now - t
}

/// "1h02m", "3m05s", "42s".
func formatDuration(_ seconds: Double) -> String {
    guard seconds.isFinite, seconds >= 0 else { return "?" }
    let s = Int(seconds.rounded())
    if s >= 3600 { return String(format: "%dh%02dm", s / 3600, (s % 3600) / 60) }
    if s >= 60 { return String(format: "%dm%02ds", s / 60, s % 60) }
    return "\(s)s"
}

/// Parses "1x28x28"; throws naming the field.
public func parseShapeField(_ text: String, field: String) throws -> [Int] {
    let parts = text.lowercased().split(separator: "x").map { Int($0) }
    // Bounded so that a batch's tensors cannot overflow a size computation.
    guard parts.count == 3, parts.allSatisfy({ (1...65_536).contains($0 ?? 0) }), parts[0]! <= 4096 else {
        throw CnnError.invalidConfig(field: field, value: text,
                                     allowed: "C x H x W of positive integers (C up to 4096, H and W up to 65536), e.g. 3x32x32")
    }
    return parts.map { $0! }
}
