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
public func evaluate(model: Model, dataset: ImageDataset, statistics: ChannelStatistics,
                     communicator: Communicator, batchSize: Int = 256, labelSmoothing: Float = 0,
                     arithmetic: GemmArithmetic = .fp32) throws -> Evaluation {
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
