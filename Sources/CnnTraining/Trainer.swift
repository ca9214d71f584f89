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
    public let trainSet: ImageDataset
    public let testSet: ImageDataset
    public let statistics: ChannelStatistics
    /// Where rank 0 writes config, metrics and checkpoints; nil writes nothing.
    public let runDirectory: String?
    /// Optimizer steps taken (global batches trained).
    public private(set) var step = 0
    /// The epoch in progress and how many of its global batches are done.
    public private(set) var epoch = 0
    public private(set) var stepInEpoch = 0
    public private(set) var history: [EpochMetrics] = []
    /// Steps skipped for non-finite gradients (on_nonfinite: skip).
    public private(set) var skippedSteps = 0
    /// Phase times of all steps of this run (this rank).
    public private(set) var profile = StepProfile()
    /// Phase times of the steps from `profileSkipSteps` on (benchmarks skip warm-up steps).
    public private(set) var measuredProfile = StepProfile()
    public var profileSkipSteps = 0
    /// Per-layer forward/backward times of the measured steps, when set.
    public var layerProfiler: LayerProfiler?
    private let log: (String) -> Void
    private let loss: SoftmaxCrossEntropy
    private let reducer: StatisticsAllreducer
    private let bucketer: GradientBucketer
    private let clipping: GradientClipping?
    /// Flat-buffer ranges of frozen parameters (fine-tuning).
    private let frozen: [Range<Int>]
    private var earlyStopping: EarlyStopping
    /// This epoch's (loss x batch, correct, seen) so far on this rank; after a
    /// resume rank 0 starts from the checkpoint's global sums, the others from zero.
    private var epochSums = [0.0, 0.0, 0.0]
    /// Check every N steps that all ranks hold identical parameters.
    public var consistencyCheckEvery = 100
    /// Plain progress line every N steps (coordinator only) when `progress` is nil.
    public var progressEvery = 50
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
        self.log = log
        guard config.batchSize >= communicator.size * config.accumulationSteps else {
            throw CnnError.invalidConfig(field: "batch_size", value: String(config.batchSize),
                                         allowed: "at least ranks x accumulation_steps (\(communicator.size) x \(config.accumulationSteps))")
        }

        // Data: every rank reads the files; the sampler gives each its slice.
        var (train, test) = try config.dataset.load(config.datasetRequest)
        if config.trainLimit > 0 && config.trainLimit < train.count { train = train.subset(0..<config.trainLimit) }
        if config.testLimit > 0 && config.testLimit < test.count { test = test.subset(0..<config.testLimit) }
        guard train.count >= config.batchSize else {
            throw CnnError.invalidConfig(field: "batch_size", value: String(config.batchSize),
                                         allowed: "at most the \(train.count) training samples")
        }
        trainSet = train
        testSet = test
        statistics = ChannelStatistics.compute(train)

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
        guard model.classCount >= train.classCount else {
            throw CnnError.invalidConfig(field: "classes", value: String(model.classCount),
                                         allowed: ">= the dataset's \(train.classCount) classes")
        }
        if customModel == nil {
            model.store.initialize(scheme: config.initScheme, seed: config.seed)
        }

        optimizer = try config.optimizer.make(config)
        frozen = try Trainer.frozenRanges(config.freeze, store: model.store)
        if !frozen.isEmpty {
            // Frozen elements get zero gradients and no weight decay, so every optimizer leaves them unchanged.
            optimizer.weightDecayMask = WeightDecayMask(excluded: optimizer.weightDecayMask.excluded + frozen)
        }
        schedule = try config.schedule.make(config, stepsPerEpoch: train.count / config.batchSize)
        clipping = try config.clipNorm.map { try GradientClipping(maxNorm: $0) }
        loss = try SoftmaxCrossEntropy(labelSmoothing: config.labelSmoothing)
        reducer = StatisticsAllreducer(communicator: communicator)
        bucketer = GradientBucketer(store: model.store, communicator: communicator,
                                    bucketElements: max(1, bucketBytes / 4), overlap: overlap)
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

    var stepsPerEpoch: Int { trainSet.count / config.batchSize }
    var totalSteps: Int {
        let all = stepsPerEpoch * config.epochs
        return config.maxSteps > 0 ? min(all, config.maxSteps) : all
    }

    /// Trains until the last epoch, `max_steps`, or early stopping; rank 0
    /// writes metrics, checkpoints and the final model.
    @discardableResult
    public func run() throws -> [EpochMetrics] {
        let rank = communicator.rank, size = communicator.size
        let context = ExecutionContext(training: true, seed: config.seed)
        if size > 1 && config.syncBatchNorm { context.statisticsReducer = reducer }
        context.needsInputGradient = false   // dL/d(images) is discarded: the first conv can skip it
        let assembler = BatchAssembler(dataset: trainSet, statistics: statistics,
                                       augmentation: Augmentation(cropPadding: config.cropPadding,
                                                                  horizontalFlip: config.flip,
                                                                  maxTranslation: config.translate),
                                       seed: config.seed)
        try prepareRunDirectory()
        let micro = config.accumulationSteps
        let runStart = monotonicSeconds(), stepAtStart = step
        var lastProgress = runStart
        if rank == 0 {
            log("train: \(config.model) on \(trainSet.name) (\(trainSet.count) train, \(testSet.count) test), "
                + "\(model.parameterCount) parameters, \(size) rank(s), global batch \(config.batchSize)"
                + (micro > 1 ? " in \(micro) micro-batches" : "")
                + ", \(config.epochs) epochs x \(stepsPerEpoch) steps"
                + (step > 0 ? "; resuming at step \(step) (epoch \(epoch + 1), batch \(stepInEpoch))" : ""))
        }

        while epoch < config.epochs && step < totalSteps {
            let sampler = EpochSampler(datasetCount: trainSet.count, seed: config.seed, epoch: epoch)
            let batches = sampler.rankBatches(globalBatchSize: config.batchSize, rank: rank, worldSize: size, dropLast: true)
            let microBatches = batches[stepInEpoch...].flatMap { splitIntoMicroBatches($0, count: micro) }
            let loader = BatchLoader(assembler: assembler, epoch: epoch, batches: microBatches)
            defer { loader.close() }
            var epochProfile = StepProfile()
            var stepPhases = StepProfile()
            let epochStart = monotonicSeconds()
            var lr: Float = 0
            var microIndex = 0
            while step < totalSteps, let batch = loader.next() {
                stepPhases.data += loader.lastWaitSeconds
                let last = microIndex == micro - 1
                if step == profileSkipSteps && microIndex == 0 { layerProfiler?.reset() }
                context.layerProfiler = layerProfiler
                var t = monotonicSeconds()
                context.training = true
                context.step = step
                communicator.currentStep = step // issue 6 (rely): named in deadline and schedule reports
                context.sampleOffset = batch.sampleOffset
                let logits = model.forward(batch.images, context: context)
                let batchLoss = batch.labels.withUnsafeBufferPointer {
                    loss.forward(logits: logits, labels: $0, normalizer: batch.globalBatchSize)
                }
                epochSums[0] += batchLoss * Double(batch.globalBatchSize)
                epochSums[1] += Double(loss.lastCorrect)
                epochSums[2] += Double(batch.count)
                stepPhases.forward += lap(&t)
                if microIndex == 0 { model.store.zeroGradients() }
                // Gradients are communicated once, during the last micro-batch's backward.
                if last { bucketer.beginStep() }
                context.gradientsReady = last ? { [bucketer] layer in bucketer.layerReady(layer) } : nil
                _ = model.backward(loss.backward(), context: context)
                stepPhases.backward += lap(&t)
                microIndex += 1
                if !last { continue }
                microIndex = 0

                stepPhases.allreduceWait += try bucketer.finish()
                try reducer.checkFailure()
                t = monotonicSeconds()
                for r in frozen { model.store.gradients.data.advanced(by: r.lowerBound).update(repeating: 0, count: r.count) }
                if let clipping { clipping.apply(model.store.gradients) }
                lr = schedule.learningRate(step: step, stepsPerEpoch: stepsPerEpoch)
                // Every rank sees the same reduced gradients, so every rank decides the same.
                if let bad = firstNonFinite(model.store.gradients) {
                    let name = model.store.parameterEntries.last { $0.offset <= bad }?.name ?? "offset \(bad)"
                    guard config.onNonFinite == .skip else {
                        throw CnnError.nonFinite(step: step, location: "gradient of \(name) (the first non-finite one in layer order)")
                    }
                    skippedSteps += 1
                    if rank == 0 { log("step \(step): non-finite gradient of \(name); step skipped (on_nonfinite: skip)") }
                } else {
                    optimizer.step(model.store, learningRate: lr)
                }
                stepPhases.optimizer += lap(&t)
                stepPhases.steps = 1
                epochProfile.add(stepPhases)
                if step >= profileSkipSteps { measuredProfile.add(stepPhases) }
                stepPhases = StepProfile()
                step += 1
                stepInEpoch += 1
                if step % consistencyCheckEvery == 0 { try checkConsistency(what: "periodic check") }
                let now = monotonicSeconds()
                if rank == 0 && ((progress != nil && now - lastProgress >= 0.5) || (progress == nil && step % progressEvery == 0)) {
                    lastProgress = now
                    let rate = Double((step - stepAtStart) * config.batchSize) / (now - runStart)
                    let eta = Double(totalSteps - step) * (now - runStart) / Double(step - stepAtStart)
                    let line = String(format: "epoch %d/%d step %d/%d loss %.4f lr %.4g %.0f img/s eta %@",
                                      epoch + 1, config.epochs, step, totalSteps,
                                      epochSums[0] / max(1, epochSums[2]),
                                      Double(lr), rate, formatDuration(eta))
                    if let progress { progress(line) } else { log(line) }
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
            try finishEpoch(profile: epochProfile, seconds: monotonicSeconds() - epochStart, lr: lr)
            if config.earlyStoppingPatience > 0 && earlyStopping.shouldStop {
                if rank == 0 { log("early stopping: test accuracy has not improved for \(config.earlyStoppingPatience) epochs") }
                break
            }
        }
        if rank == 0 { try writeModel(to: runDirectory.map { $0 + "/model.safetensors" }) }
        try tensorBoard?.close()
        try communicator.barrier()
        return history
    }

    /// Epoch totals, evaluation, metrics line, epoch-end checkpoint.
    func finishEpoch(profile p: StepProfile, seconds: Double, lr: Float) throws {
        try checkFiniteState()
        // Epoch totals over all ranks: loss was normalised by the global batch.
        // After a resume rank 0's sums start from the checkpoint's global sums, so this is still the epoch total.
        var totals = epochSums
        try communicator.allreduceSum(&totals)
        let trainImages = Double(stepsPerEpoch * config.batchSize)
        let evaluation = try evaluate()
        let t = max(seconds, 1e-9)
        let metrics = EpochMetrics(
            epoch: epoch + 1, lr: Double(lr),
            trainLoss: totals[0] / trainImages, trainAccuracy: totals[1] / max(1, totals[2]),
            testLoss: evaluation.loss, testAccuracy: evaluation.accuracy,
            imagesPerSecond: Double(p.steps * config.batchSize) / t, seconds: seconds,
            allreduceWaitFraction: p.allreduceWait / t, dataWaitFraction: p.data / t,
            forwardFraction: p.forward / t, backwardFraction: p.backward / t, optimizerFraction: p.optimizer / t)
        history.append(metrics)
        _ = earlyStopping.update(evaluation.accuracy)
        epoch += 1
        stepInEpoch = 0
        epochSums = [0, 0, 0]
        if communicator.rank == 0 {
            log(String(format: "epoch %d: train loss %.4f acc %.4f | test loss %.4f acc %.4f | %.0f img/s, %.1fs | %@",
                       metrics.epoch, metrics.trainLoss, metrics.trainAccuracy, metrics.testLoss,
                       metrics.testAccuracy, metrics.imagesPerSecond, metrics.seconds, p.summary))
            try appendMetrics(metrics)
        }
        try saveCheckpoint()
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
        try CnnTraining.evaluate(model: model, dataset: testSet, statistics: statistics, communicator: communicator,
                                 batchSize: max(1, config.batchSize), labelSmoothing: config.labelSmoothing)
    }

    // MARK: - Checkpoints and resume

    /// The training state now, with this epoch's sums reduced over all ranks
    /// (a collective: every rank calls it).
    func currentState() throws -> TrainingState {
        var sums = epochSums
        try communicator.allreduceSum(&sums)
        return TrainingState(step: step, epoch: epoch, stepInEpoch: stepInEpoch, worldSize: communicator.size,
                             epochLossSum: sums[0], epochCorrect: sums[1], epochSeen: sums[2],
                             earlyStopping: earlyStopping.state, config: config)
    }

    /// Never a non-finite checkpoint (or metrics line): all ranks hold the same
    /// values, so all stop together, naming the first bad tensor.
    func checkFiniteState() throws {
        for (what, t, entries) in [("parameter", model.store.parameters, model.store.parameterEntries),
                                   ("buffer", model.store.buffers, model.store.bufferEntries)] {
            if let bad = firstNonFinite(t) {
                let name = entries.last { $0.offset <= bad }?.name ?? "offset \(bad)"
                throw CnnError.nonFinite(step: step, location: "\(what) \(name); checkpoint not written")
            }
        }
    }

    /// Every rank joins (the state needs a reduction); rank 0 writes.
    public func saveCheckpoint() throws {
        try checkFiniteState()
        let state = try currentState()
        guard communicator.rank == 0, let dir = runDirectory else { return }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        var optimizerMetadata = ["optimizer": optimizer.name, "step": String(optimizer.stepCount)]
        for (name, value) in optimizer.hyperParameters { optimizerMetadata[name] = String(value) }
        let optimizerTensors = optimizer.stateTensors.map {
            SafeTensor(name: $0.name, floats: UnsafeBufferPointer(start: $0.tensor.data, count: $0.tensor.count), shape: [$0.tensor.count])
        }
        let folder = try CheckpointStore.write(runDirectory: dir, step: step, files: [
            ("model.safetensors", try modelBytes()),
            ("optimizer.safetensors", try SafeTensors.encode(optimizerTensors, metadata: optimizerMetadata)),
            ("state.json", Array(try encoder.encode(state))),
        ], keep: config.keepCheckpoints)
        log("checkpoint: \(folder) (step \(step))")
    }

    /// Rank 0 finds the newest verified checkpoint of `runDirectory` and sends
    /// its files to every rank; all ranks return the same resume point.
    public static func loadResumePoint(runDirectory: String, communicator: Communicator,
                                       log: (String) -> Void = { print($0) }) throws -> ResumePoint {
        var payload: [UInt8] = []
        var failure: String? = nil
        if communicator.rank == 0 {
            do {
                let found = try CheckpointStore.latestVerified(runDirectory: runDirectory)
                for (folder, reason) in found.skipped { log("resume: skipping \(folder): \(reason)") }
                log("resume: using \(found.folder) (verified: \(found.manifest.files.count) files, SHA-256)")
                payload = try packFiles(folder: found.folder, files: found.files)
            } catch { failure = "\(error)" }
        }
        // Length first (-1: rank 0 failed, so every rank throws the same error).
        var length: [Int64] = [failure == nil ? Int64(payload.count) : -1]
        try length.withUnsafeMutableBytes { try communicator.broadcast($0, root: 0) }
        guard length[0] >= 0 else {
            throw CnnError.invalidCheckpoint(file: runDirectory, reason: failure ?? "rank 0 could not read a checkpoint")
        }
        if communicator.rank != 0 { payload = [UInt8](repeating: 0, count: Int(length[0])) }
        if !payload.isEmpty { try payload.withUnsafeMutableBytes { try communicator.broadcast($0, root: 0) } }
        return try unpackResumePoint(payload, runDirectory: runDirectory)
    }

    /// Files as one buffer: JSON {folder, names, sizes} header line, then the bytes.
    static func packFiles(folder: String, files: [String: [UInt8]]) throws -> [UInt8] {
        let names = files.keys.sorted()
        let header: [String: Any] = ["folder": folder, "names": names, "sizes": names.map { files[$0]!.count }]
        var out = Array(try JSONSerialization.data(withJSONObject: header)) + [0x0A]
        for n in names { out += files[n]! }
        return out
    }

    static func unpackResumePoint(_ payload: [UInt8], runDirectory: String) throws -> ResumePoint {
        guard let newline = payload.firstIndex(of: 0x0A),
              let header = try JSONSerialization.jsonObject(with: Data(payload[..<newline])) as? [String: Any],
              let folder = header["folder"] as? String, let names = header["names"] as? [String], let sizes = header["sizes"] as? [Int]
        else { throw CnnError.invalidCheckpoint(file: runDirectory, reason: "garbled checkpoint broadcast") }
        var files: [String: [UInt8]] = [:]
        var at = newline + 1
        for (n, s) in zip(names, sizes) { files[n] = Array(payload[at ..< at + s]); at += s }
        func need(_ name: String) throws -> [UInt8] {
            guard let b = files[name] else { throw CnnError.invalidCheckpoint(file: folder + "/" + name, reason: "missing") }
            return b
        }
        let state: TrainingState
        do { state = try JSONDecoder().decode(TrainingState.self, from: Data(try need("state.json"))) } catch let e as CnnError { throw e } catch {
            throw CnnError.invalidCheckpoint(file: folder + "/state.json", reason: "\(error)")
        }
        let model = try SafeTensors.decode(try need("model.safetensors"), file: folder + "/model.safetensors")
        let opt = try SafeTensors.decode(try need("optimizer.safetensors"), file: folder + "/optimizer.safetensors")
        return ResumePoint(folder: folder, state: state, model: model.tensors, optimizer: opt.tensors, optimizerMetadata: opt.metadata)
    }

    /// Loads weights, buffers, optimizer state and position from a resume point.
    func restore(_ point: ResumePoint) throws {
        try model.store.load(Dictionary(point.model.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a }),
                             strict: true, source: point.folder + "/model.safetensors")
        guard point.optimizerMetadata["optimizer"] == optimizer.name else {
            throw CnnError.invalidCheckpoint(file: point.folder + "/optimizer.safetensors",
                                             reason: "holds \(point.optimizerMetadata["optimizer"] ?? "?") state, the run uses \(optimizer.name)")
        }
        let count = model.store.parameterCount
        var states: [(name: String, tensor: Tensor)] = []
        for t in point.optimizer {
            guard t.dtype == .f32, t.bytes.count == count * 4 else {
                throw CnnError.invalidCheckpoint(file: point.folder + "/optimizer.safetensors",
                                                 reason: "\(t.name) has \(t.bytes.count / 4) elements, the model has \(count) parameters")
            }
            let tensor = Tensor(shape: [count])
            t.bytes.withUnsafeBytes { tensor.data.update(from: $0.bindMemory(to: Float.self).baseAddress!, count: count) }
            states.append((t.name, tensor))
        }
        try optimizer.loadState(stepCount: Int(point.optimizerMetadata["step"] ?? "0") ?? 0, tensors: states)
        let s = point.state
        step = s.step
        epoch = s.epoch
        stepInEpoch = s.stepInEpoch
        earlyStopping.state = s.earlyStopping
        // Sums so far are global: rank 0 carries them, the others start from zero.
        epochSums = communicator.rank == 0 ? [s.epochLossSum, s.epochCorrect, s.epochSeen] : [0, 0, 0]
        guard stepInEpoch <= stepsPerEpoch else {
            throw CnnError.invalidCheckpoint(file: point.folder + "/state.json",
                                             reason: "step_in_epoch \(stepInEpoch) is past the epoch's \(stepsPerEpoch) steps (different data or batch size?)")
        }
    }

    /// Fine-tuning: weights from a cnn-dist checkpoint or a PyTorch state_dict
    /// saved with safetensors; with `replace_head` the classifier keeps its
    /// fresh initialisation.
    func initialize(fromFile path: String) throws {
        let (tensors, _) = try readStateDict(path: path)
        let head = config.replaceHead ? Trainer.headNames(model.store) : []
        do {
            try model.store.load(tensors, strict: true, skip: { head.contains($0) }, source: path)
        } catch let error as CnnError where head.isEmpty && Trainer.headNames(model.store).contains(where: { "\(error)".contains($0) }) {
            throw CnnError.invalidCheckpoint(file: path, reason: "\(error) (a different class count? use replace_head / --replace-head)")
        }
        if communicator.rank == 0 {
            log("init_from: \(path): loaded \(model.store.parameterEntries.count + model.store.bufferEntries.count - head.count) tensors"
                + (head.isEmpty ? "" : ", classifier head \(head.sorted().joined(separator: ", ")) left fresh"))
        }
    }

    /// Names of the last layer's parameters (the classifier head).
    static func headNames(_ store: ParameterStore) -> Set<String> {
        guard let last = store.layerRanges.values.max(by: { $0.lowerBound < $1.lowerBound }) else { return [] }
        return Set(store.parameterEntries.filter { last.contains($0.offset) }.map(\.name))
    }

    // MARK: - Run directory (rank 0)

    /// Rank 0's TensorBoard event file in the run directory, from `prepareRunDirectory()`.
    private var tensorBoard: TensorBoardWriter?

    func prepareRunDirectory() throws {
        guard communicator.rank == 0, let dir = runDirectory else { return }
        try CheckpointStore.createDirectory(dir)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try writeFileAtomically(Array(try encoder.encode(config)), to: dir + "/config.json")
        // A resumed run keeps the epochs it completed and drops any it is about to redo.
        let path = dir + "/metrics.jsonl"
        let kept = ((try? FileBytes.read(path)) ?? []).split(separator: 0x0A).filter { line in
            guard let m = try? JSONDecoder().decode(EpochMetrics.self, from: Data(line)) else { return false }
            return m.epoch <= epoch
        }
        history = kept.compactMap { try? JSONDecoder().decode(EpochMetrics.self, from: Data($0)) }
        try writeFileAtomically(kept.flatMap { Array($0) + [0x0A] }, to: path)
        tensorBoard = try TensorBoardWriter(directory: dir)
    }

    func appendMetrics(_ m: EpochMetrics) throws {
        guard let dir = runDirectory else { return }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let line = Array(try encoder.encode(m)) + [0x0A]
        let existing = (try? FileBytes.read(dir + "/metrics.jsonl")) ?? []
        try writeFileAtomically(existing + line, to: dir + "/metrics.jsonl")
        if let tensorBoard {
            for (tag, value) in [("loss/train", m.trainLoss), ("loss/test", m.testLoss),
                                 ("accuracy/train", m.trainAccuracy), ("accuracy/test", m.testAccuracy),
                                 ("lr", m.lr), ("images_per_second", m.imagesPerSecond),
                                 ("allreduce_wait_fraction", m.allreduceWaitFraction),
                                 ("data_wait_fraction", m.dataWaitFraction)] {
                try tensorBoard.addScalar(tag: tag, value: value, step: m.epoch)
            }
            try tensorBoard.flush()
        }
    }

    /// The model file: tensors plus what is needed to use it alone (model,
    /// input shape, classes, input normalisation).
    func modelBytes() throws -> [UInt8] {
        try SafeTensors.encode(model.store.stateDict(), metadata: modelCheckpointMetadata(model: model, statistics: statistics, step: step))
    }

    func writeModel(to path: String?) throws {
        guard let path else { return }
        try writeFileAtomically(try modelBytes(), to: path)
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
    guard parts.count == 3, parts.allSatisfy({ ($0 ?? 0) > 0 }) else {
        throw CnnError.invalidConfig(field: field, value: text, allowed: "C x H x W of positive integers, e.g. 3x32x32")
    }
    return parts.map { $0! }
}
