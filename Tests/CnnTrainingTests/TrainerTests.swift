import XCTest
import CnnCore
import CnnDistributed
import CnnTraining

/// End-to-end training on in-process ranks: the data-parallel equivalences.
final class TrainerTests: XCTestCase {
    func syntheticConfig(steps: Int, batch: Int, model: String = "fashion-cnn") -> TrainingConfig {
        var c = TrainingConfig()
        c.model = model
        c.dataset = "synthetic"
        c.synthetic_count = steps * batch
        c.epochs = 1
        c.batch_size = batch
        c.lr = 0.01
        c.schedule = "constant"
        c.label_smoothing = 0
        c.crop_padding = 1
        c.flip = true
        c.test_limit = 200
        return c
    }

    /// Runs `config` on `ranks` in-process ranks and returns rank 0's parameters and buffers.
    func train(_ config: TrainingConfig, ranks: Int) throws -> (params: [Float], buffers: [Float], history: [EpochMetrics]) {
        let lock = NSLock()
        var result: ([Float], [Float], [EpochMetrics]) = ([], [], [])
        try LocalWorld.run(size: ranks) { comm in
            let trainer = try Trainer(config: config, communicator: comm, runDirectory: nil, bucketBytes: 64 << 10, log: { _ in })
            let history = try trainer.run()
            if comm.rank == 0 {
                lock.lock()
                result = (trainer.model.store.parameters.toArray(), trainer.model.store.buffers.toArray(), history)
                lock.unlock()
            }
        }
        return result
    }

    /// Largest |a - b| / max(|a|, |b|, 0.01). Reduction-order rounding is absolute
    /// (about 1e-7 of the summed magnitudes), so values near zero are measured
    /// against a floor of 0.01 rather than against themselves.
    func maxRelativeDifference(_ a: [Float], _ b: [Float]) -> Float {
        precondition(a.count == b.count)
        var worst: Float = 0, at = 0
        for i in a.indices {
            let d = abs(a[i] - b[i]) / max(1e-2, abs(a[i]), abs(b[i]))
            if d > worst { worst = d; at = i }
        }
        if !a.isEmpty { print("max relative difference \(worst) at \(at): \(a[at]) vs \(b[at])") }
        return worst
    }

    /// Sharding and the gradient allreduce make the split invisible: 1 x 64,
    /// 2 x 32 and 4 x 16 give the same weights after 20 steps.
    ///
    /// The model is lenet5 (sigmoid, average pooling): smooth everywhere. With
    /// ReLU and max-pool models (fashion-cnn) runs agree to 1e-7 until some
    /// pre-activation lies within rounding of a kink and falls on the other side
    /// under another summation order; measured on this data: 2e-7 after 2 steps,
    /// 5e-4 after 5, 1e-6 after 10, 2.5e-3 after 20. SyncBatchNorm's exactness
    /// for split batches (7 + 9 against 16) is asserted at the layer level in
    /// SyncBatchNormTests; the model-level BN case is issue 4's open item.
    func testRanksMatchOneRankWithLargerBatch() throws {
        var config = syntheticConfig(steps: 20, batch: 64, model: "lenet5")
        config.lr = 0.1
        let one = try train(config, ranks: 1)
        for ranks in [2, 4] {
            let many = try train(config, ranks: ranks)
            XCTAssertLessThan(maxRelativeDifference(one.params, many.params), 1e-4, "parameters, \(ranks) ranks")
        }
    }

    /// fashion-cnn (BatchNorm synchronized, dropout keyed by global sample) over
    /// a few steps, before any kink is crossed on this data.
    func testSyncBatchNormModelMatchesOverTwoSteps() throws {
        var config = syntheticConfig(steps: 2, batch: 64)
        config.crop_padding = 0
        config.flip = false
        let one = try train(config, ranks: 1)
        for ranks in [2, 4] {
            let many = try train(config, ranks: ranks)
            XCTAssertLessThan(maxRelativeDifference(one.params, many.params), 1e-4, "parameters, \(ranks) ranks")
            XCTAssertLessThan(maxRelativeDifference(one.buffers, many.buffers), 1e-4, "BatchNorm buffers, \(ranks) ranks")
        }
    }

    /// A global batch of 15 on 2 ranks is split 8 + 7: the result equals one rank with 15.
    func testUnevenLocalBatchesMatchOneRank() throws {
        var config = syntheticConfig(steps: 10, batch: 15, model: "lenet5")
        let one = try train(config, ranks: 1)
        let two = try train(config, ranks: 2)
        XCTAssertLessThan(maxRelativeDifference(one.params, two.params), 1e-4)
        XCTAssertLessThan(maxRelativeDifference(one.buffers, two.buffers), 1e-4)
    }

    /// Every test sample is evaluated by exactly one rank: 1009 samples, 1-4 ranks.
    func testEvaluationIsExactlyOnce() throws {
        var config = syntheticConfig(steps: 2, batch: 16)
        config.synthetic_count = 4036  // test split is synthetic_count / 4 = 1009 samples
        config.test_limit = 0
        var results: [Int: Evaluation] = [:]
        let lock = NSLock()
        for ranks in 1...4 {
            try LocalWorld.run(size: ranks) { comm in
                let trainer = try Trainer(config: config, communicator: comm, runDirectory: nil, log: { _ in })
                let evaluation = try trainer.evaluate()
                if comm.rank == 0 { lock.lock(); results[ranks] = evaluation; lock.unlock() }
            }
        }
        for ranks in 1...4 {
            XCTAssertEqual(results[ranks]?.count, 1009, "\(ranks) ranks")
            XCTAssertEqual(results[ranks]?.correct, results[1]?.correct, "\(ranks) ranks")
            XCTAssertEqual(results[ranks]!.loss, results[1]!.loss, accuracy: 1e-9 * max(1, results[1]!.loss))
        }
    }

    /// A short run on learnable synthetic data lowers the loss and beats chance.
    func testShortTrainingLowersLoss() throws {
        var config = syntheticConfig(steps: 24, batch: 32)
        config.epochs = 3
        config.lr = 0.05
        let run = try train(config, ranks: 1)
        XCTAssertEqual(run.history.count, 3)
        XCTAssertLessThan(run.history[2].train_loss, run.history[0].train_loss * 0.8)
        XCTAssertGreaterThan(run.history[2].test_accuracy, 0.5)
    }
}
