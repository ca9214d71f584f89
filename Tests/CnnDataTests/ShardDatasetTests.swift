import Foundation
import XCTest
import CnnCore
import CnnData

/// `dataset: shards` as each rank streams it: equal steps on every rank, only the
/// rank's own shards opened, a deterministic order, augmentation keyed by the
/// sample's global index, exact evaluation, and bad images named or skipped.
final class ShardDatasetTests: XCTestCase {
    /// An image folder of `train` + `val` synthetic 3x12x10 PNG images (val images
    /// 100 + i) packed into shards of at most `shardSize` samples; the shard folder.
    func makeShards(train: Int = 43, val: Int = 17, shardSize: Int = 7) throws -> String {
        let dir = try makeTemporaryDirectory(self)
        let images = ImageDataset.synthetic(count: train + val, channels: 3, height: 12, width: 10, classCount: 4, seed: 3)
        try ImageFolderWriter.write(images.subset(0..<train), root: dir + "/folder", split: "train")
        try ImageFolderWriter.write(images.subset(train..<train + val), root: dir + "/folder", split: "val")
        try FileManager.default.createDirectory(atPath: dir + "/shards", withIntermediateDirectories: true)
        _ = try ShardWriter.pack(root: dir + "/folder", to: dir + "/shards", maxSamples: shardSize)
        return dir + "/shards"
    }

    /// Every batch of one rank's epoch: (global indices, labels, images) per step.
    func epoch(_ set: ShardSet, rank: Int, worldSize: Int, globalBatch: Int, epoch: Int = 0, threads: Int = 1,
               augmentation: Augmentation = .none, onBadImage: BadImageAction = .error)
        throws -> (steps: [(indices: [Int], labels: [Int32], images: [Float])], skipped: Int) {
        let steps = try set.stepsPerEpoch(globalBatchSize: globalBatch, worldSize: worldSize)
        let share = evenShare(count: globalBatch, rank: rank, size: worldSize)
        let filling = try ShardBatchFilling(set: set, rank: rank, worldSize: worldSize, statistics: set.statistics,
                                            augmentation: augmentation, seed: 9, epoch: epoch, shuffleBuffer: 5,
                                            threads: threads, onBadImage: onBadImage)
        let requests = (0..<steps).map {
            RankBatch(step: $0, indices: Array(0..<share.count), sampleOffset: $0 * globalBatch + share.lowerBound,
                      globalBatchSize: globalBatch)
        }
        let loader = BatchLoader(filling: filling, epoch: epoch, batches: requests)
        var out: [(indices: [Int], labels: [Int32], images: [Float])] = []
        while let batch = loader.next() {
            out.append((batch.indices, batch.labels, Array(UnsafeBufferPointer(start: batch.images.data, count: batch.images.count))))
        }
        if let failure = loader.failure { throw failure }
        return (out, filling.skipped.count)
    }

    func testEveryRankRunsTheSameStepsOnlyOverItsOwnShards() throws {
        let set = try ShardSet(directory: try makeShards(), shape: [3, 12, 10])
        XCTAssertEqual(set.shards(.train).map(\.samples), [7, 7, 7, 7, 7, 7, 1])
        let starts = set.starts(.train)
        // Batches of R and of 6: rank sample counts 22/21 (R = 2) and 15/14/14 (R = 3) make min and max differ.
        for (worldSize, globalBatch) in [(1, 6), (2, 2), (2, 6), (3, 3), (3, 6)] {
            let expected = (0..<worldSize).map {
                set.rankCount(.train, rank: $0, worldSize: worldSize) / evenShare(count: globalBatch, rank: $0, size: worldSize).count
            }.min()!
            var seen = Set<Int>()
            for rank in 0..<worldSize {
                let own = Set(set.rankShards(.train, rank: rank, worldSize: worldSize))
                let (steps, _) = try epoch(set, rank: rank, worldSize: worldSize, globalBatch: globalBatch)
                XCTAssertEqual(steps.count, expected, "rank \(rank) of \(worldSize), batch \(globalBatch)")
                for step in steps {
                    XCTAssertEqual(step.indices.count, evenShare(count: globalBatch, rank: rank, size: worldSize).count)
                    for g in step.indices {
                        let shard = starts.lastIndex { $0 <= g }!
                        XCTAssertTrue(own.contains(shard), "rank \(rank) of \(worldSize) read shard \(shard)")
                        XCTAssertTrue(seen.insert(g).inserted, "sample \(g) twice in one epoch")
                    }
                }
            }
        }
        XCTAssertThrowsError(try set.stepsPerEpoch(globalBatchSize: 8, worldSize: 8)) { error in
            XCTAssertTrue("\(error)".contains("at least one train shard per rank"), "\(error)")
        }
    }

    func testOrderIsAFunctionOfSeedEpochAndRankAndAugmentationOfTheSampleAlone() throws {
        let set = try ShardSet(directory: try makeShards(), shape: [3, 8, 8])
        var augmentation = Augmentation(cropPadding: 1, horizontalFlip: true)
        augmentation.photometric.resizedCropScale = [0.3, 1]
        augmentation.photometric.brightness = 0.3
        let a = try epoch(set, rank: 1, worldSize: 2, globalBatch: 6, augmentation: augmentation).steps
        let b = try epoch(set, rank: 1, worldSize: 2, globalBatch: 6, threads: 3, augmentation: augmentation).steps
        XCTAssertEqual(a.map(\.indices), b.map(\.indices))
        XCTAssertEqual(a.map(\.images), b.map(\.images), "data_threads changed the images")
        let next = try epoch(set, rank: 1, worldSize: 2, globalBatch: 6, epoch: 1, augmentation: augmentation).steps
        XCTAssertNotEqual(a.map(\.indices), next.map(\.indices), "epoch 1 in epoch 0's order")
        // A sample's augmented image is the same whichever rank count reads it.
        var byIndex = [Int: [Float]]()
        let size = 3 * 8 * 8
        for step in try epoch(set, rank: 0, worldSize: 1, globalBatch: 6, augmentation: augmentation).steps {
            for (j, g) in step.indices.enumerated() { byIndex[g] = Array(step.images[j * size ..< (j + 1) * size]) }
        }
        var compared = 0
        for step in a {
            for (j, g) in step.indices.enumerated() {
                guard let one = byIndex[g] else { continue }
                XCTAssertEqual(one, Array(step.images[j * size ..< (j + 1) * size]), "sample \(g)")
                compared += 1
            }
        }
        XCTAssertGreaterThan(compared, 5)
    }

    func testResumingInsideAnEpochContinuesTheSameStream() throws {
        let set = try ShardSet(directory: try makeShards(), shape: [3, 8, 8])
        let augmentation = Augmentation(cropPadding: 1, horizontalFlip: true)
        let whole = try epoch(set, rank: 1, worldSize: 2, globalBatch: 6, augmentation: augmentation).steps
        // What the trainer does on resume at step 3: pass over 3 rank batches of 3 samples, then go on.
        let filling = try ShardBatchFilling(set: set, rank: 1, worldSize: 2, statistics: set.statistics, augmentation: augmentation,
                                            seed: 9, epoch: 0, shuffleBuffer: 5, threads: 2, onBadImage: .error, skipSamples: 9)
        let loader = BatchLoader(filling: filling, epoch: 0, batches: (3..<whole.count).map {
            RankBatch(step: $0, indices: [0, 1, 2], sampleOffset: $0 * 6 + 3, globalBatchSize: 6)
        })
        var rest: [[Int]] = [], images: [[Float]] = []
        while let batch = loader.next() {
            rest.append(batch.indices)
            images.append(Array(UnsafeBufferPointer(start: batch.images.data, count: batch.images.count)))
        }
        XCTAssertEqual(rest, whole.dropFirst(3).map(\.indices))
        XCTAssertEqual(images, whole.dropFirst(3).map(\.images))
    }

    func testEvaluationReadsEveryValSampleOnceAcrossRanks() throws {
        let set = try ShardSet(directory: try makeShards(val: 17, shardSize: 4), shape: [3, 12, 10])
        let whole = try set.loadInMemory(.test)
        XCTAssertEqual(whole.count, 17)
        for worldSize in [1, 2, 3, 5] {
            var histogram = [Int](repeating: 0, count: 4), total = 0
            for rank in 0..<worldSize {
                let reader = ShardEvaluationReader(set: set, rank: rank, worldSize: worldSize, threads: 2, onBadImage: .error)
                while let (pixels, labels) = try reader.next(3) {
                    XCTAssertEqual(pixels.count, labels.count * 3 * 12 * 10)
                    for l in labels { histogram[Int(l)] += 1 }
                    total += labels.count
                }
            }
            XCTAssertEqual(total, 17, "\(worldSize) ranks")
            XCTAssertEqual(histogram, whole.classHistogram(), "\(worldSize) ranks")
        }
    }

    /// Replaces the image bytes of the member named `member` in a shard by `bytes` of the same length.
    func damage(shard path: String, member: String) throws {
        var tar = try FileBytes.read(path)
        var offset = 0
        while offset + 512 <= tar.count {
            let name = String(decoding: tar[offset..<offset + 100].prefix { $0 != 0 }, as: UTF8.self)
            let size = Int(String(decoding: tar[offset + 124..<offset + 135], as: UTF8.self).trimmingCharacters(in: .whitespaces), radix: 8) ?? 0
            if name == member {
                for k in 0..<min(size, 64) { tar[offset + 512 + k] = 0x55 }   // signature gone: not an image
                try FileBytes.write(tar, to: path)
                return
            }
            offset += 512 + (size + 511) / 512 * 512
        }
        XCTFail("no member \(member) in \(path)")
    }

    func testBadImageIsNamedOrSkippedWithTheBatchKeptWhole() throws {
        let dir = try makeShards()
        try damage(shard: dir + "/train-000002.tar", member: "000000015.png")
        let set = try ShardSet(directory: dir, shape: [3, 12, 10])
        assertDataError(try epoch(set, rank: 0, worldSize: 1, globalBatch: 6), names: dir + "/train-000002.tar:000000015.png",
                        ["not a JPEG or PNG"])
        // One batch of all 43 samples, so the damaged one is read whatever the order.
        let clean = try epoch(set, rank: 0, worldSize: 1, globalBatch: 43, onBadImage: .skip)
        XCTAssertEqual(clean.skipped, 1)
        XCTAssertEqual(clean.steps.count, 1)
        XCTAssertEqual(clean.steps[0].indices.count, 43)
        // Keys are global indices (pack writes them in order): sample 15 is replaced by another of its batch.
        let flat = clean.steps.flatMap(\.indices)
        XCTAssertFalse(flat.contains(15))
        XCTAssertEqual(Set(flat).count, flat.count - 1, "one duplicate replaces the skipped sample")
        // The replacement is the nearest readable sample before it in the batch (after it, if it was first).
        let duplicate = try XCTUnwrap(flat.indices.first { j in flat.indices.contains { $0 != j && flat[$0] == flat[j] } && (j == 0 || flat[j - 1] == flat[j]) })
        XCTAssertTrue(duplicate == 0 ? flat[1] == flat[0] : flat[duplicate - 1] == flat[duplicate], "\(flat)")
        // Evaluation leaves it out and counts it.
        try damage(shard: dir + "/val-000000.tar", member: "000000003.png")
        let reader = ShardEvaluationReader(set: set, rank: 0, worldSize: 1, threads: 2, onBadImage: .skip)
        var seen = 0
        while let (_, labels) = try reader.next(5) { seen += labels.count }
        XCTAssertEqual(seen, 16)
        XCTAssertEqual(reader.skipped, 1)
        XCTAssertTrue(reader.firstSkip?.contains("val-000000.tar:000000003.png") == true, reader.firstSkip ?? "")
    }

    func testManifestDisagreeingWithAShardIsNamed() throws {
        let dir = try makeShards()
        let path = dir + "/" + ShardManifest.fileName
        let text = String(decoding: try FileBytes.read(path), as: UTF8.self)
        try FileBytes.write(Array(text.replacingOccurrences(of: "train-000001.tar\t7", with: "train-000001.tar\t8").utf8), to: path)
        let set = try ShardSet(directory: dir, shape: [3, 12, 10])
        assertDataError(try epoch(set, rank: 1, worldSize: 2, globalBatch: 2), names: dir + "/train-000001.tar",
                        ["holds 7 samples but its manifest record says 8"])
        try FileBytes.write(Array(text.replacingOccurrences(of: "statistics\t3", with: "statistics\t2").utf8), to: path)
        assertDataError(try ShardSet(directory: dir, shape: [3, 12, 10]), names: path, ["statistics"])
    }
}
