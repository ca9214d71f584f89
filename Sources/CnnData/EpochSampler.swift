// Data-parallel sampling.
//
// Every rank builds the same EpochSampler for (seed, epoch): the same
// permutation of 0..<datasetCount (Fisher–Yates driven by SplitMix64 seeded
// from seed and epoch), so no communication is needed to agree on it.
//
// Global batch s (global batch size B) is permutation[s·B ..< min((s+1)·B, n)],
// of size b (b = B except possibly the last). It is split across R ranks as
// evenly as possible, in rank order: rank r gets ⌊b/R⌋ samples, plus one if
// r < b mod R, starting at position
//     offset(r) = r·⌊b/R⌋ + min(r, b mod R)
// inside the global batch. The rank's sampleOffset is s·B + offset(r): the
// position of its first sample in the epoch order, so sample j of the rank's
// slice is global sample sampleOffset + j — the key for anything that must
// not depend on R (dropout masks, per-sample losses).
//
// The last global batch, if n is not a multiple of B, is either dropped
// (dropLast) or split the same way over its b < B samples: no sample is
// duplicated and no count is negative, but when b < R (or B < R) some ranks
// get 0 samples. Callers must handle an empty batch (skip forward/backward,
// still join the allreduce) and weight each rank's gradient by its count
// over b — the RankBatch carries both.
//
// Evaluation: `evaluationShard` splits 0..<count into R contiguous ranges
// by the same rule, covering every test sample exactly once (no padding,
// no duplicates); sum correct counts and losses across ranks.
import CnnCore

/// The part of the even split of `count` items over `size` ranks that belongs to `rank`:
/// the first `count % size` ranks get one more item. Contiguous, disjoint, covering `0..<count`.
public func evenShare(count: Int, rank: Int, size: Int) -> Range<Int> {
    precondition(size > 0 && rank >= 0 && rank < size && count >= 0, "bad split: count \(count), rank \(rank) of \(size)")
    let base = count / size, extra = count % size
    let start = rank * base + min(rank, extra)
    return start ..< start + base + (rank < extra ? 1 : 0)
}

/// The contiguous range of test samples rank `rank` of `size` evaluates;
/// the ranges of all ranks cover `0..<count` exactly once.
public func evaluationShard(count: Int, rank: Int, size: Int) -> Range<Int> {
    evenShare(count: count, rank: rank, size: size)
}

/// Rank `rank`'s evaluation shard (see `evaluationShard`) cut into batches of
/// at most `batchSize` consecutive test indices, in order; `sampleOffset` is
/// the index of each batch's first sample and `globalBatchSize` its own size.
/// Ranks may get different numbers of batches (or none): reduce the totals
/// (correct count, summed loss) once after the loop, not per batch.
public func evaluationBatches(count: Int, rank: Int, size: Int, batchSize: Int) -> [RankBatch] {
    precondition(batchSize > 0, "evaluation batch size must be positive")
    let shard = evaluationShard(count: count, rank: rank, size: size)
    return stride(from: shard.lowerBound, to: shard.upperBound, by: batchSize).enumerated().map { step, start in
        let end = min(start + batchSize, shard.upperBound)
        return RankBatch(step: step, indices: Array(start ..< end), sampleOffset: start, globalBatchSize: end - start)
    }
}

/// One rank's part of one global batch.
public struct RankBatch: Equatable, Sendable {
    /// Step number within the epoch (global batch index).
    public var step: Int
    /// Dataset indices of this rank's samples, in order; may be empty.
    public var indices: [Int]
    /// Position of `indices[0]` in the epoch order (see the file comment).
    public var sampleOffset: Int
    /// Samples in the whole global batch across all ranks (B, or fewer for a last partial batch).
    public var globalBatchSize: Int

    /// A rank batch from its parts.
    public init(step: Int, indices: [Int], sampleOffset: Int, globalBatchSize: Int) {
        self.step = step
        self.indices = indices
        self.sampleOffset = sampleOffset
        self.globalBatchSize = globalBatchSize
    }
}

/// The shuffled order of one epoch, identical on every rank for the same (seed, epoch).
public struct EpochSampler: Sendable {
    /// Number of samples in the dataset.
    public let datasetCount: Int
    /// The run's data seed.
    public let seed: UInt64
    /// The epoch this order belongs to.
    public let epoch: Int
    /// A permutation of `0..<datasetCount`.
    public let permutation: [Int]

    /// Shuffles `0..<datasetCount` with Fisher–Yates and SplitMix64 seeded from (seed, epoch).
    public init(datasetCount: Int, seed: UInt64, epoch: Int) {
        precondition(datasetCount >= 0, "negative dataset count")
        self.datasetCount = datasetCount
        self.seed = seed
        self.epoch = epoch
        var rng = SplitMix64(seed: counterHash(seed ^ 0x5A4D_9E7E_0000_0004, UInt64(truncatingIfNeeded: epoch)))
        var order = Array(0..<datasetCount)
        if datasetCount > 1 {
            for i in stride(from: datasetCount - 1, through: 1, by: -1) {
                let j = Int(uniformBelow(UInt64(i + 1), &rng))
                order.swapAt(i, j)
            }
        }
        permutation = order
    }

    /// Steps in the epoch: ⌊n/B⌋ with `dropLast`, else ⌈n/B⌉.
    public func stepCount(globalBatchSize: Int, dropLast: Bool) -> Int {
        precondition(globalBatchSize > 0, "global batch size must be positive")
        return dropLast ? datasetCount / globalBatchSize : (datasetCount + globalBatchSize - 1) / globalBatchSize
    }

    /// Dataset indices of global batch `step`, all ranks together.
    public func globalBatch(step: Int, globalBatchSize: Int) -> ArraySlice<Int> {
        let start = step * globalBatchSize
        precondition(step >= 0 && start < datasetCount, "step \(step) is past the end of the epoch")
        return permutation[start ..< min(start + globalBatchSize, datasetCount)]
    }

    /// Rank `rank`'s disjoint slice of global batch `step` (see the file comment).
    public func rankBatch(step: Int, globalBatchSize: Int, rank: Int, worldSize: Int) -> RankBatch {
        let global = globalBatch(step: step, globalBatchSize: globalBatchSize)
        let share = evenShare(count: global.count, rank: rank, size: worldSize)
        let start = global.startIndex + share.lowerBound
        return RankBatch(step: step, indices: Array(permutation[start ..< start + share.count]),
                         sampleOffset: start, globalBatchSize: global.count)
    }

    /// Rank `rank`'s slices of every step of the epoch.
    public func rankBatches(globalBatchSize: Int, rank: Int, worldSize: Int, dropLast: Bool) -> [RankBatch] {
        (0..<stepCount(globalBatchSize: globalBatchSize, dropLast: dropLast)).map {
            rankBatch(step: $0, globalBatchSize: globalBatchSize, rank: rank, worldSize: worldSize)
        }
    }
}
