// Evaluation and inference outside a training run: the same exactly-once
// sharding as Trainer.evaluate (each test sample on one rank, sums
// allreduced), and plain logits for `predict`.
import CnnCore
import CnnLayers
import CnnModels
import CnnData
import CnnDistributed

/// Loss and accuracy of `model` on all of `dataset`, normalised with
/// `statistics`, evaluated exactly once over the ranks of `communicator`
/// (each rank its shard in batches of `batchSize`, then one allreduce).
///
/// The loss is the mean softmax cross-entropy with `labelSmoothing` (0 is
/// plain cross-entropy; a run's metrics.jsonl test_loss uses the training
/// config's label_smoothing). Throws if shapes or classes do not fit.
/// `progress` (rank 0) gets a progress line about twice a second.
public func evaluate(model: Model, dataset: ImageDataset, statistics: ChannelStatistics,
                     communicator: Communicator, batchSize: Int = 256, labelSmoothing: Float = 0,
                     arithmetic: GemmArithmetic = .fp32,
                     progress: ((String) -> Void)? = nil) throws -> Evaluation {
    guard dataset.imageShape == model.inputShape else {
        throw CnnError.invalidData(file: dataset.source.isEmpty ? dataset.name : dataset.source, reason:
            "images are \(formatShape(dataset.imageShape)) but \(model.name) takes \(formatShape(model.inputShape))")
    }
    guard statistics.channels == dataset.channels else {
        throw CnnError.invalidData(file: dataset.source.isEmpty ? dataset.name : dataset.source, reason:
            "has \(dataset.channels) channel(s) but the normalisation has \(statistics.channels)")
    }
    guard dataset.classCount <= model.classCount else {
        throw CnnError.invalidData(file: dataset.source.isEmpty ? dataset.name : dataset.source, reason:
            "has \(dataset.classCount) classes but \(model.name) predicts \(model.classCount)")
    }
    guard batchSize >= 1 else {
        throw CnnError.invalidConfig(field: "batch_size", value: String(batchSize), allowed: "an integer >= 1")
    }
    let assembler = BatchAssembler(dataset: dataset, statistics: statistics, augmentation: Augmentation())
    let batches = evaluationBatches(count: dataset.count, rank: communicator.rank, size: communicator.size,
                                    batchSize: batchSize)
    var sums = try EvaluationSums(model: model, labelSmoothing: labelSmoothing, arithmetic: arithmetic,
                                  meter: progress.map { EvaluationProgress(total: dataset.count, ranks: communicator.size, report: $0) })
    for b in batches where !b.indices.isEmpty {
        let (images, labels) = assembler.batch(indices: b.indices, epoch: 0)
        sums.add(images: images, labels: labels)
    }
    return try sums.reduced(over: communicator)
}

/// Loss and accuracy of `model` on the val shards of `shards`, each sample
/// evaluated exactly once: rank r reads its own val shards (r, r+R, ...),
/// decoding on `threads` threads, then one allreduce. With on_bad_image: skip an
/// unreadable sample is left out and counted in `skippedImages`.
public func evaluate(model: Model, shards: ShardSet, statistics: ChannelStatistics, communicator: Communicator,
                     batchSize: Int = 256, labelSmoothing: Float = 0, threads: Int = 1,
                     onBadImage: BadImageAction = .error, arithmetic: GemmArithmetic = .fp32,
                     progress: ((String) -> Void)? = nil) throws -> Evaluation {
    guard shards.imageShape == model.inputShape, shards.classCount <= model.classCount else {
        throw CnnError.invalidData(file: shards.directory, reason:
            "images are \(formatShape(shards.imageShape)) in \(shards.classCount) classes but \(model.name) takes "
            + "\(formatShape(model.inputShape)) in \(model.classCount)")
    }
    let reader = ShardEvaluationReader(set: shards, rank: communicator.rank, worldSize: communicator.size,
                                       threads: threads, onBadImage: onBadImage)
    let writer = SampleWriter(shape: shards.imageShape, statistics: statistics)
    let valSamples = shards.manifest.splits["val", default: []].reduce(0) { $0 + $1.samples }
    var sums = try EvaluationSums(model: model, labelSmoothing: labelSmoothing, arithmetic: arithmetic,
                                  meter: progress.map { EvaluationProgress(total: valSamples, ranks: communicator.size, report: $0) })
    let images = Tensor(shape: [0] + shards.imageShape)
    while let (pixels, labels) = try reader.next(max(1, batchSize)) {
        guard !labels.isEmpty else { continue }
        images.resize(to: [labels.count] + shards.imageShape)
        let size = writer.imageSize
        pixels.withUnsafeBufferPointer { px in
            for j in 0..<labels.count { writer.write(px.baseAddress! + j * size, sampleIndex: 0, epoch: 0, to: images.data + j * size) }
        }
        sums.add(images: images, labels: labels)
    }
    sums.skipped = reader.skipped
    var result = try sums.reduced(over: communicator)
    result.firstSkipped = reader.firstSkip
    return result
}

/// One rank's evaluation sums (loss, correct, count, top-5, skipped, confusion),
/// reduced once over the ranks.
struct EvaluationSums {
    let model: Model
    let loss: SoftmaxCrossEntropy
    let context = ExecutionContext(training: false)
    let confusionSize: Int
    let meter: EvaluationProgress?
    var values: [Double]
    var skipped = 0

    init(model: Model, labelSmoothing: Float, arithmetic: GemmArithmetic, meter: EvaluationProgress?) throws {
        self.model = model
        self.meter = meter
        context.arithmetic = arithmetic
        loss = try SoftmaxCrossEntropy(labelSmoothing: labelSmoothing)
        let classes = model.classCount
        confusionSize = classes <= 1000 ? classes * classes : 0
        // loss sum, correct, count, top-5 correct, skipped, then the confusion matrix (true x predicted).
        values = [Double](repeating: 0, count: 5 + confusionSize)
    }

    mutating func add(images: Tensor, labels: [Int32]) {
        let classes = model.classCount
        let logits = model.forward(images, context: context)
        let l = labels.withUnsafeBufferPointer { loss.forward(logits: logits, labels: $0, normalizer: 1) }
        values[0] += l
        values[1] += Double(loss.lastCorrect)
        values[2] += Double(labels.count)
        for (i, label) in labels.enumerated() {
            let row = logits.data + i * classes
            let target = row[Int(label)]
            var above = 0, best = 0
            for k in 0..<classes {
                if row[k] > target { above += 1 }
                if row[k] > row[best] { best = k }
            }
            if above < 5 { values[3] += 1 }
            if confusionSize > 0 { values[5 + Int(label) * classes + best] += 1 }
        }
        meter?.advance(by: labels.count)
    }

    func reduced(over communicator: Communicator) throws -> Evaluation {
        var sums = values
        sums[4] = Double(skipped)
        try communicator.allreduceSum(&sums)
        let classes = model.classCount
        var result = Evaluation(loss: sums[0] / max(1, sums[2]), accuracy: sums[1] / max(1, sums[2]),
                                count: Int(sums[2]), correct: Int(sums[1]))
        result.top5Correct = Int(sums[3])
        result.skippedImages = Int(sums[4])
        if confusionSize > 0 {
            result.confusion = (0..<classes).map { t in (0..<classes).map { p in Int(sums[5 + t * classes + p]) } }
        }
        return result
    }
}

/// Evaluation's progress line: "eval [####....] 45% | 4,480/10,000 images
/// | 9,100 img/s | eta 1s", from rank 0's share (the ranks' shares are even).
final class EvaluationProgress {
    private let total: Int, ranks: Int
    private let report: (String) -> Void
    private let start = monotonicSeconds()
    private var last: Double
    private var done = 0

    init(total: Int, ranks: Int, report: @escaping (String) -> Void) {
        self.total = total
        self.ranks = max(1, ranks)
        self.report = report
        last = start
    }

    func advance(by images: Int) {
        done += images
        let now = monotonicSeconds()
        guard now - last >= 0.5 else { return }
        last = now
        let all = min(total, done * ranks)
        let fraction = Double(all) / Double(max(1, total))
        let rate = Double(all) / max(1e-9, now - start)
        let filled = Int(fraction * 20)
        report(String(format: "eval [%@] %3.0f%% | %d/%d images | %.0f img/s | eta %@",
                      String(repeating: "#", count: filled) + String(repeating: ".", count: 20 - filled),
                      100 * fraction, all, total, rate, formatDuration(Double(total - all) / max(rate, 1e-9))))
    }
}

/// Logits [N, classes] of `model` for images given as N×C×H×W bytes
/// (`pixels`, CHW per image, shape `model.inputShape`), normalised with
/// `statistics`, in eval mode, `batchSize` images at a time.
public func predictLogits(model: Model, pixels: [UInt8], count: Int, statistics: ChannelStatistics,
                          batchSize: Int = 256, arithmetic: GemmArithmetic = .fp32) throws -> [Float] {
    let shape = model.inputShape
    let imageSize = shape.reduce(1, *)
    guard pixels.count == count * imageSize else {
        throw CnnError.shapeMismatch(layer: model.name, expected: "\(count) x \(formatShape(shape)) = \(count * imageSize) pixels",
                                     got: "\(pixels.count) pixels")
    }
    guard statistics.channels == shape[0] else {
        throw CnnError.shapeMismatch(layer: model.name, expected: "normalisation for \(shape[0]) channel(s)",
                                     got: "\(statistics.channels)")
    }
    guard count > 0 else { return [] }
    // Labels are not used: a one-class dataset with every label 0.
    let dataset = ImageDataset(name: "predict", pixels: pixels, labels: [Int32](repeating: 0, count: count),
                               channels: shape[0], height: shape[1], width: shape[2], classCount: 1)
    let assembler = BatchAssembler(dataset: dataset, statistics: statistics, augmentation: Augmentation())
    let context = ExecutionContext(training: false)
    context.arithmetic = arithmetic
    let classes = model.classCount
    var logits = [Float](repeating: 0, count: count * classes)
    let images = Tensor(shape: [0] + shape)
    var labels: [Int32] = []
    for start in stride(from: 0, to: count, by: max(1, batchSize)) {
        let end = min(count, start + max(1, batchSize))
        assembler.assemble(indices: start..<end, epoch: 0, images: images, labels: &labels)
        let out = model.forward(images, context: context)
        precondition(out.count == (end - start) * classes, "logits of \(formatShape(out.shape)) for \(end - start) images")
        logits.withUnsafeMutableBufferPointer { dst in
            (dst.baseAddress! + start * classes).update(from: out.data, count: out.count)
        }
    }
    return logits
}
