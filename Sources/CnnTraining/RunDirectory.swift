import Foundation
import CnnCore
import CnnData
import CnnModels

/// A run's folder, written by rank 0 only:
///
///     config.json               the resolved config
///     metrics.jsonl             one EpochMetrics object per line
///     events.out.tfevents.*     TensorBoard scalars, first-layer filters and feature maps, histograms of each epoch
///     checkpoints/step-N/       crash-consistent checkpoints (see CheckpointStore)
///     model.safetensors         the final model
///
/// Every file is replaced atomically, so a crash leaves the old or the new
/// version, never half of one.
public final class RunDirectory {
    public let path: String
    private var tensorBoard: TensorBoardWriter?

    public init(path: String) { self.path = path }

    /// The lock file: host and pid of the process writing the run.
    public static let lockName = ".lock"

    /// Throws if another live process holds the run's lock.
    public static func checkNotInUse(_ path: String) throws {
        guard let text = try? String(contentsOfFile: path + "/" + lockName, encoding: .utf8) else { return }
        let parts = text.split(separator: " ").map(String.init)
        guard parts.count >= 2, let pid = Int32(parts[1].trimmingCharacters(in: .whitespacesAndNewlines)) else { return }
        let host = parts[0]
        // A lock of this process, or of a process that no longer runs on this host
        // (gone, or a zombie nobody reaped), is stale.
        guard pid != getpid() else { return }
        if host == hostNameForReports() {
            let state = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8))?
                .split(separator: ")").last?.split(separator: " ").first
            guard kill(pid, 0) == 0 || errno == EPERM, state != "Z", state != "X" else { return }
        }
        throw CnnError.invalidConfig(field: "run-dir", value: path,
                                     allowed: "a run directory no other process writes: host \(host) pid \(pid) holds its lock "
                                        + "(\(path)/\(lockName); remove it if that process is gone)")
    }

    /// Takes the run's lock (rank 0, for the whole run).
    func lock() throws {
        try RunDirectory.checkNotInUse(path)
        try writeFileAtomically(Array("\(hostNameForReports()) \(getpid())\n".utf8), to: path + "/" + RunDirectory.lockName)
    }

    public var metricsPath: String { path + "/metrics.jsonl" }
    public var modelPath: String { path + "/model.safetensors" }

    /// Creates the folder, writes config.json, keeps the metrics of epochs up
    /// to `epoch` (a resumed run redoes the ones after) and opens the
    /// TensorBoard event file; returns the kept metrics.
    public func start(config: TrainingConfig, keepingEpochsThrough epoch: Int, step: Int = 0) throws -> [EpochMetrics] {
        try CheckpointStore.createDirectory(path)
        try lock()
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try writeFileAtomically(Array(try encoder.encode(config)), to: path + "/config.json")
        let decoder = EpochMetrics.decoder
        let kept = ((try? FileBytes.read(metricsPath)) ?? []).split(separator: 0x0A).filter { line in
            guard let m = try? decoder.decode(EpochMetrics.self, from: Data(line)) else { return false }
            return m.epoch <= epoch
        }
        try writeFileAtomically(kept.flatMap { Array($0) + [0x0A] }, to: metricsPath)
        tensorBoard = try TensorBoardWriter(directory: path)
        if step > 0 { try tensorBoard?.addSessionStart(step: step) }
        try tensorBoard?.addHyperParameters(config.hyperParameters, step: step)
        return kept.compactMap { try? decoder.decode(EpochMetrics.self, from: Data($0)) }
    }

    /// Appends one epoch's line to metrics.jsonl and its scalars to TensorBoard.
    public func append(_ m: EpochMetrics) throws {
        let line = Array(try EpochMetrics.encoder.encode(m)) + [0x0A]
        let existing = (try? FileBytes.read(metricsPath)) ?? []
        try writeFileAtomically(existing + line, to: metricsPath)
        if let tensorBoard {
            for (tag, value) in [("loss/train", m.trainLoss), ("loss/test", m.testLoss),
                                 ("accuracy/train", m.trainAccuracy), ("accuracy/test", m.testAccuracy),
                                 ("lr", m.lr), ("images_per_second", m.imagesPerSecond),
                                 ("allreduce_wait_fraction", m.allreduceWaitFraction),
                                 ("data_wait_fraction", m.dataWaitFraction), ("forward_fraction", m.forwardFraction),
                                 ("backward_fraction", m.backwardFraction), ("optimizer_fraction", m.optimizerFraction)] {
                try tensorBoard.addScalar(tag: tag, value: value, step: m.epoch)
            }
            try tensorBoard.flush()
        }
    }

    /// TensorBoard pictures and histograms of epoch `epoch`: the first convolution's filters
    /// ("filters/<layer>") and its feature maps of `testImage` ("feature_maps/<layer>"), as
    /// `cnn-dist show` draws them, and histograms of every trainable tensor ("weights/<name>")
    /// and of its gradient of the epoch's last step ("gradients/<name>").
    public func addEpochPictures(model: Model, testImage: [UInt8], statistics: ChannelStatistics, epoch: Int) throws {
        guard let tensorBoard else { return }
        if let name = convolutionLayerNames(model).first, let weight = layerWeight(model, name: name) {
            let filters = try filterPicture(weight: weight.values, shape: weight.shape, layer: name)
            try tensorBoard.addImage(tag: "filters/" + name, png: try filters.png(), width: filters.image.width,
                                     height: filters.image.height, channels: filters.image.channels, step: epoch)
            let probe = ModelProbe(model: model)
            if let index = probe.steps.firstIndex(where: { $0.name == name }) {
                let x = ModelProbe.input(pixels: testImage, shape: model.inputShape, statistics: statistics)
                let (_, outputs) = probe.forward(x, capture: [index])
                let out = outputs[index]!
                let maps = try featureMapPicture(values: out.values, shape: out.shape, layer: name)
                try tensorBoard.addImage(tag: "feature_maps/" + name, png: try maps.png(), width: maps.image.width,
                                         height: maps.image.height, channels: maps.image.channels, step: epoch)
            }
        }
        for entry in model.store.parameterEntries {
            try tensorBoard.addHistogram(tag: "weights/" + entry.name,
                                         values: UnsafeBufferPointer(start: model.store.parameters.data + entry.offset, count: entry.count),
                                         step: epoch)
            try tensorBoard.addHistogram(tag: "gradients/" + entry.name,
                                         values: UnsafeBufferPointer(start: model.store.gradients.data + entry.offset, count: entry.count),
                                         step: epoch)
        }
        try tensorBoard.flush()
    }

    /// Records one optimizer step's training loss (this rank's samples) and
    /// learning rate, at the global step; written with the next epoch line or checkpoint.
    public func addStep(_ step: Int, loss: Double, learningRate: Double) throws {
        try tensorBoard?.addScalar(tag: "step/loss_train", value: loss, step: step)
        try tensorBoard?.addScalar(tag: "step/lr", value: learningRate, step: step)
    }

    /// Writes checkpoint `step` (its files, then the manifest) and keeps the newest `keep`; returns its folder.
    public func writeCheckpoint(step: Int, files: [(name: String, bytes: [UInt8])], keep: Int) throws -> String {
        try tensorBoard?.flush()
        return try CheckpointStore.write(runDirectory: path, step: step, files: files, keep: keep)
    }

    /// Writes the final model.
    public func writeModel(_ bytes: [UInt8]) throws {
        try writeFileAtomically(bytes, to: modelPath)
    }

    /// Records that the run completed (the HParams dashboard's status).
    public func markCompleted(step: Int) throws {
        try tensorBoard?.addHyperParametersEnd(step: step)
    }

    /// Closes the TensorBoard event file.
    public func close() throws {
        try tensorBoard?.close()
        tensorBoard = nil
        try? FileManager.default.removeItem(atPath: path + "/" + RunDirectory.lockName)
    }
}

extension EpochMetrics {
    /// JSON has no inf or NaN: a diverged epoch's values are written as the
    /// strings "inf", "-inf" and "nan", so its line is kept, not lost.
    static let nonFinite = JSONEncoder.NonConformingFloatEncodingStrategy.convertToString(
        positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")

    /// The metrics.jsonl line encoder (sorted keys, non-finite values as strings).
    public static var encoder: JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        encoder.nonConformingFloatEncodingStrategy = nonFinite
        return encoder
    }

    /// The metrics.jsonl line decoder (reads what `encoder` writes).
    public static var decoder: JSONDecoder {
        let decoder = JSONDecoder()
        decoder.nonConformingFloatDecodingStrategy = .convertFromString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return decoder
    }
}
