import XCTest
import CnnCore
import CnnData

final class BatchLoaderTests: XCTestCase {
    private let data = ImageDataset.synthetic(count: 203, channels: 3, height: 8, width: 8, classCount: 5, seed: 11)

    private func assembler() -> BatchAssembler {
        BatchAssembler(dataset: data, statistics: ChannelStatistics.compute(data),
                       augmentation: Augmentation(cropPadding: 2, horizontalFlip: true), seed: 17)
    }

    func testYieldsTheSameBatchesAsDirectAssembly() {
        let assembler = assembler()
        let sampler = EpochSampler(datasetCount: data.count, seed: 17, epoch: 2)
        for worldSize in [1, 3] {
            for rank in 0..<worldSize {
                let expected = sampler.rankBatches(globalBatchSize: 16, rank: rank, worldSize: worldSize, dropLast: false)
                // data_threads 1 and 3: the same batches as one-thread direct assembly.
                let loader = BatchLoader(assembler: assembler, epoch: 2,
                                         batches: sampler.rankBatches(globalBatchSize: 16, rank: rank, worldSize: worldSize,
                                                                      dropLast: false),
                                         threads: worldSize)
                XCTAssertEqual(loader.stepCount, 13)
                var steps = 0
                var storage = Set<UnsafeMutablePointer<Float>>()
                while let batch = loader.next() {
                    let want = expected[steps]
                    let direct = assembler.batch(indices: want.indices, epoch: 2)
                    XCTAssertEqual(batch.step, steps)
                    XCTAssertEqual(batch.indices, want.indices)
                    XCTAssertEqual(batch.sampleOffset, want.sampleOffset)
                    XCTAssertEqual(batch.globalBatchSize, want.globalBatchSize)
                    XCTAssertEqual(batch.labels, direct.labels)
                    XCTAssertEqual(batch.images.shape, direct.images.shape)
                    XCTAssertEqual(batch.images.toArray(), direct.images.toArray())
                    storage.insert(batch.images.data)
                    steps += 1
                }
                XCTAssertEqual(steps, 13)
                XCTAssertNil(loader.next())
                XCTAssertLessThanOrEqual(storage.count, 3, "a ring of prefetchDepth + 1 reused tensors")
                XCTAssertGreaterThanOrEqual(loader.waitSeconds, 0)
                loader.close()
            }
        }
    }

    func testAugmentedBatchesDoNotDependOnWorldSize() {
        let assembler = assembler()
        let sampler = EpochSampler(datasetCount: data.count, seed: 17, epoch: 5)
        let single = assembler.batch(indices: sampler.globalBatch(step: 3, globalBatchSize: 24), epoch: 5)
        var joined: [Float] = []
        for rank in 0..<4 {
            let slice = sampler.rankBatch(step: 3, globalBatchSize: 24, rank: rank, worldSize: 4)
            joined += assembler.batch(indices: slice.indices, epoch: 5).images.toArray()
        }
        XCTAssertEqual(joined, single.images.toArray())
    }

    func testEarlyStopAndCloseDoNotHang() {
        let lists = (0..<200).map { step in (0..<20).map { (step * 20 + $0) % data.count } }
        // Consumer stops after one batch; close joins the producer blocked on a full ring.
        let loader = BatchLoader(assembler: assembler(), epoch: 0, indexLists: lists)
        XCTAssertNotNil(loader.next())
        loader.close()
        XCTAssertNil(loader.next())
        loader.close()
        // Dropped without close or consumption: deinit shuts it down.
        for _ in 0..<20 {
            _ = BatchLoader(assembler: assembler(), epoch: 0, indexLists: lists, prefetchDepth: 1)
        }
        // No steps at all, and empty per-rank batches.
        let none = BatchLoader(assembler: assembler(), epoch: 0, indexLists: [])
        XCTAssertNil(none.next())
        let empty = BatchLoader(assembler: assembler(), epoch: 0, indexLists: [[], [1, 2], []])
        XCTAssertEqual(empty.next()?.count, 0)
        let second = empty.next()
        XCTAssertEqual(second?.labels, [data.labels[1], data.labels[2]])
        XCTAssertEqual(second?.images.shape, [2, 3, 8, 8])
        XCTAssertEqual(empty.next()?.images.shape, [0, 3, 8, 8])
        XCTAssertNil(empty.next())
    }
}
