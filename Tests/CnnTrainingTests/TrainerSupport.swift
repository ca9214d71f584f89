import Foundation
import XCTest
import CnnCore
import CnnLayers
import CnnModels
import CnnDistributed
import CnnTraining

/// A run's outcome on rank 0.
struct TrainedRun {
    var params: [Float]
    var buffers: [Float]
    var history: [EpochMetrics]
    var optimizerState: [[Float]]
}

/// A small training config on the synthetic dataset (1x28x28, 10 classes).
func syntheticConfig(steps: Int, batch: Int, model: String = "fashion-cnn") -> TrainingConfig {
    var c = TrainingConfig()
    c.model = model
    c.dataset = .synthetic
    c.syntheticCount = steps * batch
    c.epochs = 1
    c.batchSize = batch
    c.lr = 0.01
    c.schedule = .constant
    c.labelSmoothing = 0
    c.cropPadding = 1
    c.flip = true
    c.testLimit = 200
    return c
}

/// The smooth BatchNorm test model (Tests/models/smooth-bn.yaml): smooth activations
/// and average pooling keep rounding differences between rank counts rounding-sized.
func smoothBatchNormModel() throws -> Model {
    let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().path + "/models/smooth-bn.yaml"
    let model = try Model(name: path)
    model.store.initialize(seed: 7)
    return model
}

/// Runs `config` on `ranks` in-process ranks (optionally resuming, with a
/// run directory) and returns rank 0's state.
func trainLocally(_ config: TrainingConfig, ranks: Int, runDirectory: String? = nil, resume: Bool = false,
                  makeModel: (() throws -> Model)? = nil) throws -> TrainedRun {
    let lock = NSLock()
    var result = TrainedRun(params: [], buffers: [], history: [], optimizerState: [])
    try LocalWorld.run(size: ranks) { comm in
        var c = config
        var point: ResumePoint? = nil
        if resume, let dir = runDirectory {
            point = try Trainer.loadResumePoint(runDirectory: dir, communicator: comm, log: { _ in })
            let maxSteps = c.maxSteps
            c = point!.state.config
            c.maxSteps = maxSteps
        }
        let model: Model? = try makeModel?()
        let trainer = try Trainer(config: c, communicator: comm, runDirectory: runDirectory, model: model, resume: point,
                                  bucketBytes: 64 << 10, log: { _ in })
        let history = try trainer.run()
        if comm.rank == 0 {
            lock.lock()
            result = TrainedRun(params: trainer.model.store.parameters.toArray(), buffers: trainer.model.store.buffers.toArray(),
                                history: history, optimizerState: trainer.optimizer.stateTensors.map { $0.tensor.toArray() })
            lock.unlock()
        }
    }
    return result
}

/// Largest |a - b| / max(|a|, |b|, 0.01). Reduction-order rounding is absolute
/// (about 1e-7 of the summed magnitudes), so values near zero are measured
/// against a floor of 0.01 rather than against themselves.
func maxRelativeDifference(_ a: [Float], _ b: [Float], label: String = "") -> Float {
    precondition(a.count == b.count, "sizes differ: \(a.count) vs \(b.count)")
    var worst: Float = 0, at = 0
    for i in a.indices {
        let d = abs(a[i] - b[i]) / max(1e-2, abs(a[i]), abs(b[i]))
        if d > worst { worst = d; at = i }
    }
    if !a.isEmpty { print("\(label) max relative difference \(worst) at \(at): \(a[at]) vs \(b[at])") }
    return worst
}

/// A fresh empty folder under the temporary directory.
func temporaryFolder(_ name: String) -> String {
    let path = NSTemporaryDirectory() + "cnn-dist-\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try? FileManager.default.removeItem(atPath: path)
    try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}
