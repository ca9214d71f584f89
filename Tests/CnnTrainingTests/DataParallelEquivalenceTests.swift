import Foundation
import XCTest
import CnnCore
import CnnLayers
import CnnModels
import CnnDistributed
import CnnTraining

/// Issue 4's equivalences on in-process ranks (the MPI twins are in
/// CnnCLITests/MPITrainingTests, through real mpirun).
final class DataParallelEquivalenceTests: XCTestCase {
    /// SyncBatchNorm: 1 x 64, 2 x 32 and 4 x 16 give the same weights and
    /// BatchNorm buffers after 20 steps (max relative difference < 1e-4).
    ///
    /// The model has BatchNorm, dropout and smooth activations. With ReLU and
    /// max-pool (fashion-cnn, below) the runs agree to rounding until a
    /// pre-activation within rounding of a kink falls on the other side under
    /// another summation order; then one sample's gradient path switches and
    /// the difference jumps to ~1e-3 — a property of piecewise-linear nets under
    /// any reordering of float sums (PyTorch DDP included), not of sharding.
    func testSyncBatchNormTwentyStepsMatchAcrossRankCounts() throws {
        var config = syntheticConfig(steps: 20, batch: 64)
        config.lr = 0.05
        let one = try trainLocally(config, ranks: 1, makeModel: smoothBatchNormModel)
        for ranks in [2, 4] {
            let many = try trainLocally(config, ranks: ranks, makeModel: smoothBatchNormModel)
            XCTAssertLessThan(maxRelativeDifference(one.params, many.params, label: "params \(ranks)r"), 1e-4, "\(ranks) ranks")
            XCTAssertLessThan(maxRelativeDifference(one.buffers, many.buffers, label: "buffers \(ranks)r"), 1e-4, "\(ranks) ranks")
        }
    }

    /// Uneven local batches with SyncBatchNorm: a global batch of 16 on 3 ranks
    /// (6 + 5 + 5) and of 15 on 2 ranks (8 + 7) equal one rank with the whole batch.
    func testUnevenLocalBatchesWithSyncBatchNormMatchOneRank() throws {
        for (batch, ranks) in [(16, 3), (15, 2)] {
            var config = syntheticConfig(steps: 20, batch: batch)
            config.lr = 0.05
            let one = try trainLocally(config, ranks: 1, makeModel: smoothBatchNormModel)
            let many = try trainLocally(config, ranks: ranks, makeModel: smoothBatchNormModel)
            XCTAssertLessThan(maxRelativeDifference(one.params, many.params, label: "params \(batch)/\(ranks)"), 1e-4)
            XCTAssertLessThan(maxRelativeDifference(one.buffers, many.buffers, label: "buffers \(batch)/\(ranks)"), 1e-4)
        }
    }

    /// fashion-cnn (ReLU, max-pool, SyncBN, dropout) on 1, 2 and 4 ranks over
    /// 20 steps: equal to rounding until kink crossings (see above); bounded after.
    func testFashionCNNStaysCloseAcrossRankCounts() throws {
        var config = syntheticConfig(steps: 20, batch: 64)
        config.cropPadding = 0
        config.flip = false
        let short = { () -> TrainingConfig in var c = config; c.maxSteps = 2; return c }()
        let one = try trainLocally(short, ranks: 1)
        let oneLong = try trainLocally(config, ranks: 1)
        for ranks in [2, 4] {
            let many = try trainLocally(short, ranks: ranks)
            XCTAssertLessThan(maxRelativeDifference(one.params, many.params, label: "fashion-cnn 2 steps \(ranks)r"), 1e-4)
            let manyLong = try trainLocally(config, ranks: ranks)
            XCTAssertLessThan(maxRelativeDifference(oneLong.params, manyLong.params, label: "fashion-cnn 20 steps \(ranks)r"), 5e-2)
        }
    }

    /// Gradient accumulation: 4 micro-batches of 16 on one rank, and 2 of 16 on
    /// each of 2 ranks, equal one rank with batch 64 (lenet5 has no BatchNorm,
    /// whose statistics would be per micro-batch).
    func testGradientAccumulationMatchesLargeBatch() throws {
        var config = syntheticConfig(steps: 10, batch: 64, model: "lenet5")
        config.lr = 0.1
        let whole = try trainLocally(config, ranks: 1)
        var accumulated = config
        accumulated.accumulationSteps = 4
        let micro = try trainLocally(accumulated, ranks: 1)
        XCTAssertLessThan(maxRelativeDifference(whole.params, micro.params, label: "accumulation 4"), 1e-4)
        accumulated.accumulationSteps = 2
        let microTwoRanks = try trainLocally(accumulated, ranks: 2)
        XCTAssertLessThan(maxRelativeDifference(whole.params, microTwoRanks.params, label: "2 ranks x accumulation 2"), 1e-4)
        XCTAssertEqual(micro.history.count, 1)
        XCTAssertEqual(micro.history[0].trainLoss, whole.history[0].trainLoss, accuracy: 1e-4)
    }

    /// Every rank needs at least one sample per micro-batch: a global batch
    /// smaller than ranks x accumulation_steps is a config error naming the field.
    func testBatchSmallerThanRanksTimesMicroBatchesIsRejected() throws {
        var config = syntheticConfig(steps: 4, batch: 6, model: "lenet5")
        config.accumulationSteps = 4
        XCTAssertThrowsError(try LocalWorld.run(size: 2) { comm in
            _ = try Trainer(config: config, communicator: comm, runDirectory: nil, log: { _ in })
        }) { error in
            XCTAssertTrue("\(error)".contains("batch_size"), "\(error)")
        }
    }
}
