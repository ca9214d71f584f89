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
    let loss = try SoftmaxCrossEntropy(labelSmoothing: labelSmoothing)
    let context = ExecutionContext(training: false)
    context.arithmetic = arithmetic
    let assembler = BatchAssembler(dataset: dataset, statistics: statistics, augmentation: Augmentation())
    let batches = evaluationBatches(count: dataset.count, rank: communicator.rank, size: communicator.size,
                                    batchSize: batchSize)
    let classes = model.classCount
    let confusionSize = classes <= 1000 ? classes * classes : 0
    // loss sum, correct, count, top-5 correct, then the confusion matrix (true x predicted).
    var sums = [Double](repeating: 0, count: 4 + confusionSize)
    let meter = progress.map { EvaluationProgress(total: dataset.count, ranks: communicator.size, report: $0) }
    for b in batches where !b.indices.isEmpty {
        let (images, labels) = assembler.batch(indices: b.indices, epoch: 0)
        let logits = model.forward(images, context: context)
        let l = labels.withUnsafeBufferPointer { loss.forward(logits: logits, labels: $0, normalizer: 1) }
        sums[0] += l
        sums[1] += Double(loss.lastCorrect)
        sums[2] += Double(labels.count)
        for (i, label) in labels.enumerated() {
            let row = logits.data + i * classes
            let target = row[Int(label)]
            var above = 0, best = 0
            for k in 0..<classes {
                if row[k] > target { above += 1 }
                if row[k] > row[best] { best = k }
            }
            if above < 5 { sums[3] += 1 }
            if confusionSize > 0 { sums[4 + Int(label) * classes + best] += 1 }
        }
        meter?.advance(by: labels.count)
    }
    try communicator.allreduceSum(&sums)
    var result = Evaluation(loss: sums[0] / max(1, sums[2]), accuracy: sums[1] / max(1, sums[2]),
                            count: Int(sums[2]), correct: Int(sums[1]))
    result.top5Correct = Int(sums[3])
    if confusionSize > 0 {
        result.confusion = (0..<classes).map { t in (0..<classes).map { p in Int(sums[4 + t * classes + p]) } }
    }
    return result
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
