import XCTest
import CnnCore
import CnnData

final class EpochSamplerTests: XCTestCase {
    func testPermutationIsSharedPerEpochAndChangesAcrossEpochs() {
        let a = EpochSampler(datasetCount: 1000, seed: 42, epoch: 3)
        let b = EpochSampler(datasetCount: 1000, seed: 42, epoch: 3)
        XCTAssertEqual(a.permutation, b.permutation)
        XCTAssertEqual(a.permutation.sorted(), Array(0..<1000))
        XCTAssertNotEqual(a.permutation, Array(0..<1000))
        XCTAssertNotEqual(a.permutation, EpochSampler(datasetCount: 1000, seed: 42, epoch: 4).permutation)
        XCTAssertNotEqual(a.permutation, EpochSampler(datasetCount: 1000, seed: 43, epoch: 3).permutation)
        XCTAssertEqual(EpochSampler(datasetCount: 0, seed: 1, epoch: 0).permutation, [])
        XCTAssertEqual(EpochSampler(datasetCount: 1, seed: 1, epoch: 0).permutation, [0])
    }

    func testRankSlicesPartitionEveryGlobalBatch() {
        for n in [1, 5, 64, 103] {
            let sampler = EpochSampler(datasetCount: n, seed: 7, epoch: 1)
            for globalBatch in [1, 3, 8, 10, 32] {
                for worldSize in 1...4 {
                    for dropLast in [false, true] {
                        let perRank = (0..<worldSize).map {
                            sampler.rankBatches(globalBatchSize: globalBatch, rank: $0, worldSize: worldSize, dropLast: dropLast)
                        }
                        let steps = sampler.stepCount(globalBatchSize: globalBatch, dropLast: dropLast)
                        XCTAssertEqual(steps, dropLast ? n / globalBatch : (n + globalBatch - 1) / globalBatch)
                        var seen: [Int] = []
                        for step in 0..<steps {
                            let slices = perRank.map { $0[step] }
                            let global = Array(sampler.globalBatch(step: step, globalBatchSize: globalBatch))
                            let context = "n \(n) B \(globalBatch) R \(worldSize) step \(step)"
                            // In rank order the slices are exactly the global batch: disjoint, complete, no duplicates.
                            XCTAssertEqual(slices.flatMap(\.indices), global, context)
                            let counts = slices.map(\.indices.count)
                            XCTAssertLessThanOrEqual(counts.max()! - counts.min()!, 1, context)
                            XCTAssertEqual(counts, counts.sorted(by: >), "first ranks get the extra sample: \(context)")
                            var offset = step * globalBatch
                            for slice in slices {
                                XCTAssertEqual(slice.sampleOffset, offset, context)
                                XCTAssertEqual(slice.globalBatchSize, global.count, context)
                                XCTAssertEqual(slice.step, step)
                                XCTAssertEqual(slice.indices, Array(sampler.permutation[offset ..< offset + slice.indices.count]))
                                offset += slice.indices.count
                            }
                            seen += global
                        }
                        if dropLast {
                            XCTAssertEqual(seen.count, n / globalBatch * globalBatch)
                        } else {
                            XCTAssertEqual(seen.sorted(), Array(0..<n), "every sample once per epoch")
                        }
                    }
                }
            }
        }
    }

    func testUnevenGlobalBatchSplit() {
        let sampler = EpochSampler(datasetCount: 23, seed: 0, epoch: 0)
        // B = 10 over R = 4: 3, 3, 2, 2. The last batch has 3 samples: 1, 1, 1, 0.
        let counts = (0..<4).map { r in
            sampler.rankBatches(globalBatchSize: 10, rank: r, worldSize: 4, dropLast: false).map(\.indices.count)
        }
        XCTAssertEqual(counts, [[3, 3, 1], [3, 3, 1], [2, 2, 1], [2, 2, 0]])
        XCTAssertEqual(sampler.rankBatch(step: 2, globalBatchSize: 10, rank: 3, worldSize: 4).sampleOffset, 23)
    }

    func testEvaluationShardsCoverEachSampleOnce() {
        for size in 1...4 {
            var covered = [Int](repeating: 0, count: 1009)
            var next = 0
            for rank in 0..<size {
                let shard = evaluationShard(count: 1009, rank: rank, size: size)
                XCTAssertEqual(shard.lowerBound, next, "contiguous")
                next = shard.upperBound
                for i in shard { covered[i] += 1 }
                XCTAssertTrue(shard.count == 1009 / size || shard.count == 1009 / size + 1)
            }
            XCTAssertEqual(next, 1009)
            XCTAssertTrue(covered.allSatisfy { $0 == 1 }, "size \(size)")
        }
        XCTAssertEqual(evaluationShard(count: 2, rank: 3, size: 4), 2..<2)
        for size in 1...4 {
            let all = (0..<size).flatMap { evaluationBatches(count: 1009, rank: $0, size: size, batchSize: 100) }
            XCTAssertEqual(all.flatMap(\.indices), Array(0..<1009))
            XCTAssertTrue(all.allSatisfy { $0.indices.count <= 100 && $0.sampleOffset == $0.indices.first })
        }
    }
}
