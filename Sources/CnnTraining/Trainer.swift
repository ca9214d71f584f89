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
    public var train_loss: Double
    public var train_accuracy: Double
    public var test_loss: Double
    public var test_accuracy: Double
    public var images_per_second: Double
    public var seconds: Double
    /// Fractions of step time: exposed allreduce wait and data wait (coordinator's view).
    public var allreduce_wait_fraction: Double
    public var data_wait_fraction: Double
}

/// Loss and accuracy over a test split.
public struct Evaluation: Equatable {
    public var loss: Double
    public var accuracy: Double
    public var count: Int
    public var correct: Int
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
    public private(set) var step = 0
    public private(set) var history: [EpochMetrics] = []
    private let log: (String) -> Void
    private let loss: SoftmaxCrossEntropy
    private let reducer: StatisticsAllreducer
    private let bucketer: GradientBucketer
    private let clipping: GradientClipping?
    /// Check every N steps that all ranks hold identical parameters.
    public var consistencyCheckEvery = 100
    /// Print a progress line every N steps (coordinator only).
    public var progressEvery = 50

    public init(config: TrainingConfig, communicator: Communicator, runDirectory: String?,
                bucketBytes: Int = 4 << 20, overlap: Bool = true, log: @escaping (String) -> Void = { print($0) }) throws {
        try config.validate(modelNames: ModelZoo.names)
        self.config = config
        self.communicator = communicator
        self.runDirectory = runDirectory
        self.log = log
        guard config.batch_size >= communicator.size else {
            throw CnnError.invalidConfig(field: "batch_size", value: String(config.batch_size),
                                         allowed: "at least the number of ranks (\(communicator.size))")
        }

        // Data: every rank reads the files; the sampler gives each its slice.
        var (train, test) = try Trainer.loadData(config)
        if config.train_limit > 0 && config.train_limit < train.count { train = train.subset(0..<config.train_limit) }
        if config.test_limit > 0 && config.test_limit < test.count { test = test.subset(0..<config.test_limit) }
        trainSet = train
        testSet = test
        statistics = ChannelStatistics.compute(train)

        let inputShape = try config.input.map { try parseShapeField($0, field: "input") } ?? train.imageShape
        guard inputShape == train.imageShape else {
            throw CnnError.invalidConfig(field: "input", value: formatShape(inputShape),
                                         allowed: "the dataset's image shape \(formatShape(train.imageShape))")
        }
        model = try Model(name: config.model, inputShape: inputShape, classCount: config.classes ?? train.classCount)
        guard model.classCount >= train.classCount else {
            throw CnnError.invalidConfig(field: "classes", value: String(model.classCount),
                                         allowed: ">= the dataset's \(train.classCount) classes")
        }
        model.store.initialize(scheme: InitScheme(rawValue: config.init_scheme) ?? .pytorchDefault, seed: config.seed)

        optimizer = try Trainer.makeOptimizer(config)
        let stepsPerEpoch = max(1, train.count / config.batch_size)
        schedule = try Trainer.makeSchedule(config, stepsPerEpoch: stepsPerEpoch)
        clipping = try config.clip_norm.map { try GradientClipping(maxNorm: $0) }
        loss = try SoftmaxCrossEntropy(labelSmoothing: config.label_smoothing)
        reducer = StatisticsAllreducer(communicator: communicator)
        bucketer = GradientBucketer(store: model.store, communicator: communicator,
                                    bucketElements: max(1, bucketBytes / 4), overlap: overlap)

        try synchronizeInitialState()
    }

    static func loadData(_ config: TrainingConfig) throws -> (ImageDataset, ImageDataset) {
        switch config.dataset {
        case "synthetic":
            let all = ImageDataset.synthetic(count: config.synthetic_count + config.synthetic_count / 4,
                                             channels: 1, height: 28, width: 28, classCount: 10, seed: config.seed)
            return (all.subset(0..<config.synthetic_count), all.subset(config.synthetic_count..<all.count))
        case "cifar10":
            return (try ImageDataset.loadCIFAR10(directory: config.data, split: .train),
                    try ImageDataset.loadCIFAR10(directory: config.data, split: .test))
        default:
            return (try ImageDataset.loadFashionMNIST(directory: config.data, split: .train),
                    try ImageDataset.loadFashionMNIST(directory: config.data, split: .test))
        }
    }

    static func makeOptimizer(_ c: TrainingConfig) throws -> Optimizer {
        switch c.optimizer {
        case "adam": return try Adam(beta1: c.beta1, beta2: c.beta2, weightDecay: c.weight_decay)
        case "adamw": return try AdamW(beta1: c.beta1, beta2: c.beta2, weightDecay: c.weight_decay)
        case "rmsprop": return try RMSProp(momentum: c.momentum, weightDecay: c.weight_decay)
        default: return try SGD(momentum: c.momentum, nesterov: c.nesterov && c.momentum > 0, weightDecay: c.weight_decay)
        }
    }

    static func makeSchedule(_ c: TrainingConfig, stepsPerEpoch: Int) throws -> LearningRateSchedule {
        let decay: LearningRateSchedule.Decay
        switch c.schedule {
        case "step": decay = .step(everyEpochs: c.step_epochs, gamma: Double(c.gamma))
        case "multistep": decay = .multiStep(milestones: c.milestones, gamma: Double(c.gamma))
        case "cosine": decay = .cosine(length: .epochs(c.epochs), etaMin: 0)
        case "onecycle": decay = .oneCycle(length: .steps(c.epochs * stepsPerEpoch))
        default: decay = .constant
        }
        let warmupSteps = Int((c.warmup_epochs * Float(stepsPerEpoch)).rounded())
        return try LearningRateSchedule(baseLearningRate: c.lr, decay: decay,
                                        warmup: warmupSteps > 0 ? .init(length: .steps(warmupSteps)) : nil)
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

    /// Runs all epochs; rank 0 writes metrics and checkpoints.
    @discardableResult
    public func run() throws -> [EpochMetrics] {
        let rank = communicator.rank, size = communicator.size
        let context = ExecutionContext(training: true, seed: config.seed)
        if size > 1 { context.statisticsReducer = reducer }
        context.gradientsReady = { [bucketer] layer in bucketer.layerReady(layer) }
        let assembler = BatchAssembler(dataset: trainSet, statistics: statistics,
                                       augmentation: Augmentation(cropPadding: config.crop_padding,
                                                                  horizontalFlip: config.flip,
                                                                  maxTranslation: config.translate),
                                       seed: config.seed)
        try prepareRunDirectory()
        var earlyStopping = try EarlyStopping(patience: max(1, config.early_stopping_patience), mode: .max)
        let stepsPerEpoch = max(1, trainSet.count / config.batch_size)
        let totalSteps = stepsPerEpoch * config.epochs
        let runStart = monotonicSeconds()
        if rank == 0 {
            log("train: \(config.model) on \(trainSet.name) (\(trainSet.count) train, \(testSet.count) test), "
                + "\(model.parameterCount) parameters, \(size) rank(s), global batch \(config.batch_size), "
                + "\(config.epochs) epochs x \(stepsPerEpoch) steps")
        }

        for epoch in 0..<config.epochs {
            let sampler = EpochSampler(datasetCount: trainSet.count, seed: config.seed, epoch: epoch)
            let batches = sampler.rankBatches(globalBatchSize: config.batch_size, rank: rank, worldSize: size, dropLast: true)
            let loader = BatchLoader(assembler: assembler, epoch: epoch, batches: batches)
            defer { loader.close() }
            var lossSum = 0.0, correct = 0.0, seen = 0.0
            var waitAllreduce = 0.0, waitData = 0.0
            let epochStart = monotonicSeconds()
            var lr: Float = 0
            while let batch = loader.next() {
                waitData += loader.lastWaitSeconds
                context.training = true
                context.step = step
                context.sampleOffset = batch.sampleOffset
                let logits = model.forward(batch.images, context: context)
                let batchLoss = batch.labels.withUnsafeBufferPointer {
                    loss.forward(logits: logits, labels: $0, normalizer: batch.globalBatchSize)
                }
                lossSum += batchLoss * Double(batch.globalBatchSize)
                correct += Double(loss.lastCorrect)
                seen += Double(batch.count)
                model.store.zeroGradients()
                bucketer.beginStep()
                _ = model.backward(loss.backward(), context: context)
                waitAllreduce += try bucketer.finish()
                try reducer.checkFailure()
                if let clipping { clipping.apply(model.store.gradients) }
                if let bad = firstNonFinite(model.store.gradients) {
                    let name = model.store.parameterEntries.last { $0.offset <= bad }?.name ?? "offset \(bad)"
                    throw CnnError.nonFinite(step: step, location: "gradient of \(name)")
                }
                lr = schedule.learningRate(step: step, stepsPerEpoch: stepsPerEpoch)
                optimizer.step(model.store, learningRate: lr)
                step += 1
                if step % consistencyCheckEvery == 0 { try checkConsistency(what: "periodic check") }
                if rank == 0 && (step % progressEvery == 0) {
                    let elapsed = monotonicSeconds() - runStart
                    let rate = Double(step * config.batch_size) / elapsed
                    let eta = Double(totalSteps - step) * elapsed / Double(step)
                    log(String(format: "epoch %d step %d/%d loss %.4f lr %.4g %.0f img/s eta %.0fs",
                               epoch + 1, step, totalSteps, lossSum / max(1, Double(batch.globalBatchSize) * Double(step - epoch * stepsPerEpoch)),
                               Double(lr), rate, eta))
                }
            }
            // Epoch totals over all ranks: loss was normalised by the global batch.
            var totals = [lossSum, correct, seen]
            try communicator.allreduceSum(&totals)
            let epochSeconds = monotonicSeconds() - epochStart
            let trainImages = Double(stepsPerEpoch * config.batch_size)
            let evaluation = try evaluate()
            let metrics = EpochMetrics(
                epoch: epoch + 1, lr: Double(lr),
                train_loss: totals[0] / max(1, trainImages), train_accuracy: totals[1] / max(1, totals[2]),
                test_loss: evaluation.loss, test_accuracy: evaluation.accuracy,
                images_per_second: trainImages / epochSeconds, seconds: epochSeconds,
                allreduce_wait_fraction: waitAllreduce / epochSeconds, data_wait_fraction: waitData / epochSeconds)
            history.append(metrics)
            if rank == 0 {
                log(String(format: "epoch %d: train loss %.4f acc %.4f | test loss %.4f acc %.4f | %.0f img/s, %.1fs "
                           + "(allreduce wait %.1f%%, data wait %.1f%%)",
                           metrics.epoch, metrics.train_loss, metrics.train_accuracy, metrics.test_loss,
                           metrics.test_accuracy, metrics.images_per_second, metrics.seconds,
                           100 * metrics.allreduce_wait_fraction, 100 * metrics.data_wait_fraction))
                try appendMetrics(metrics)
                try writeModel(name: "checkpoint-epoch\(epoch + 1).safetensors")
            }
            if config.early_stopping_patience > 0 && earlyStopping.update(evaluation.accuracy) {
                if rank == 0 { log("early stopping: test accuracy has not improved for \(config.early_stopping_patience) epochs") }
                break
            }
        }
        if rank == 0 { try writeModel(name: "model.safetensors") }
        try tensorBoard?.close()
        try communicator.barrier()
        return history
    }

    /// Exactly-once evaluation: each test sample on one rank, sums reduced.
    public func evaluate() throws -> Evaluation {
        let context = ExecutionContext(training: false, seed: config.seed)
        let assembler = BatchAssembler(dataset: testSet, statistics: statistics, augmentation: Augmentation(), seed: config.seed)
        let batches = evaluationBatches(count: testSet.count, rank: communicator.rank, size: communicator.size,
                                        batchSize: max(1, config.batch_size))
        var sums = [0.0, 0.0, 0.0]
        for b in batches where !b.indices.isEmpty {
            let (images, labels) = assembler.batch(indices: b.indices, epoch: 0)
            let logits = model.forward(images, context: context)
            let l = labels.withUnsafeBufferPointer { loss.forward(logits: logits, labels: $0, normalizer: 1) }
            sums[0] += l
            sums[1] += Double(loss.lastCorrect)
            sums[2] += Double(labels.count)
        }
        try communicator.allreduceSum(&sums)
        return Evaluation(loss: sums[0] / max(1, sums[2]), accuracy: sums[1] / max(1, sums[2]),
                          count: Int(sums[2]), correct: Int(sums[1]))
    }

    // MARK: - Run directory (rank 0)

    /// Rank 0's TensorBoard event file in the run directory, from `prepareRunDirectory()`.
    private var tensorBoard: TensorBoardWriter?

    func prepareRunDirectory() throws {
        guard communicator.rank == 0, let dir = runDirectory else { return }
        do {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        } catch {
            throw CnnError.io(file: dir, reason: "cannot create the run directory: \(error.localizedDescription)")
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try writeFileAtomically(Array(try encoder.encode(config)), to: dir + "/config.json")
        try writeFileAtomically([], to: dir + "/metrics.jsonl")
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
            for (tag, value) in [("loss/train", m.train_loss), ("loss/test", m.test_loss),
                                 ("accuracy/train", m.train_accuracy), ("accuracy/test", m.test_accuracy),
                                 ("lr", m.lr), ("images_per_second", m.images_per_second),
                                 ("allreduce_wait_fraction", m.allreduce_wait_fraction),
                                 ("data_wait_fraction", m.data_wait_fraction)] {
                try tensorBoard.addScalar(tag: tag, value: value, step: m.epoch)
            }
            try tensorBoard.flush()
        }
    }

    /// Weights and BatchNorm buffers under PyTorch state_dict names.
    public func modelTensors() -> [SafeTensor] {
        let store = model.store
        var tensors: [SafeTensor] = []
        for e in store.parameterEntries {
            tensors.append(SafeTensor(name: e.name, floats: UnsafeBufferPointer(start: store.parameters.data + e.offset, count: e.count), shape: e.shape))
        }
        for e in store.bufferEntries {
            if e.role == .counter {
                tensors.append(SafeTensor(name: e.name, int64s: [Int64(store.buffers[e.offset])], shape: e.shape))
            } else {
                tensors.append(SafeTensor(name: e.name, floats: UnsafeBufferPointer(start: store.buffers.data + e.offset, count: e.count), shape: e.shape))
            }
        }
        return tensors
    }

    func writeModel(name: String) throws {
        guard let dir = runDirectory else { return }
        let bytes = try SafeTensors.encode(modelTensors(), metadata: [
            "model": config.model, "input": formatShape(model.inputShape), "classes": String(model.classCount),
            "step": String(step), "format": "cnn-dist",
            "normalization_mean": statistics.mean.map { String($0) }.joined(separator: ","),
            "normalization_std": statistics.std.map { String($0) }.joined(separator: ","),
        ])
        try writeFileAtomically(bytes, to: dir + "/" + name)
    }
}

/// Parses "1x28x28"; throws naming the field.
public func parseShapeField(_ text: String, field: String) throws -> [Int] {
    let parts = text.lowercased().split(separator: "x").map { Int($0) }
    guard parts.count == 3, parts.allSatisfy({ ($0 ?? 0) > 0 }) else {
        throw CnnError.invalidConfig(field: field, value: text, allowed: "C x H x W of positive integers, e.g. 3x32x32")
    }
    return parts.map { $0! }
}
