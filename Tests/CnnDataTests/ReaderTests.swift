import Foundation
import XCTest
import CnnCore
import CnnData

final class IDXReaderTests: XCTestCase {
    func testRawAndGzipRoundTrip() throws {
        let dir = try makeTemporaryDirectory(self)
        for channels in [1, 3] {
            let data = tinyDataset(count: 13, channels: channels)
            for compressed in [false, true] {
                let images = "\(dir)/i\(channels)\(compressed)", labels = "\(dir)/l\(channels)\(compressed)"
                try data.writeIDX(imagesPath: images, labelsPath: labels, compressed: compressed)
                let stored = try FileBytes.read(images)
                XCTAssertEqual(Gzip.isCompressed(stored), compressed)
                if !compressed {
                    XCTAssertEqual(Array(stored.prefix(4)), [0, 0, 8, channels == 1 ? 3 : 4])
                }
                let back = try ImageDataset.loadIDX(imagesPath: images, labelsPath: labels)
                assertSameDataset(back, data)
                XCTAssertEqual(back.source, images)
            }
        }
    }

    func testGzipHandlesMultipleMembersAndLargeOutput() throws {
        let part1 = [UInt8]((0..<300_000).map { UInt8($0 % 251) })
        let part2 = [UInt8](repeating: 7, count: 1000)
        let joined = Gzip.compress(part1) + Gzip.compress(part2, level: 1)
        XCTAssertEqual(try Gzip.decompress(joined, file: "x"), part1 + part2)
        XCTAssertEqual(try Gzip.decompress(Gzip.compress([]), file: "x"), [])
    }

    func testWrongMagic() throws {
        let dir = try makeTemporaryDirectory(self)
        let data = tinyDataset(count: 4)
        try data.writeIDX(imagesPath: "\(dir)/images", labelsPath: "\(dir)/labels")
        // Swapped files: each has the other's magic.
        assertDataError(try ImageDataset.loadIDX(imagesPath: "\(dir)/labels", labelsPath: "\(dir)/images"),
                        names: "\(dir)/labels", ["wrong magic number 0x00000801", "expected 0x00000803"])
        var labels = data.idxLabelBytes()
        labels[3] = 9
        try FileBytes.write(labels, to: "\(dir)/badlabels")
        assertDataError(try ImageDataset.loadIDX(imagesPath: "\(dir)/images", labelsPath: "\(dir)/badlabels"),
                        names: "\(dir)/badlabels", ["wrong magic number 0x00000809", "expected 0x00000801"])
    }

    func testTruncatedAndOverlongFiles() throws {
        let dir = try makeTemporaryDirectory(self)
        let data = tinyDataset(count: 6)   // 6 images of 5x4 = 120 pixel bytes
        let images = data.idxImageBytes(), labels = data.idxLabelBytes()
        try FileBytes.write(images, to: "\(dir)/images")
        try FileBytes.write(labels, to: "\(dir)/labels")
        for compressed in [false, true] {
            let kind = compressed ? "decompressed bytes" : "bytes"
            try FileBytes.write(maybeGzip(Array(images.dropLast(7)), compressed), to: "\(dir)/short-images")
            assertDataError(try ImageDataset.loadIDX(imagesPath: "\(dir)/short-images", labelsPath: "\(dir)/labels"),
                            names: "\(dir)/short-images", ["truncated", "expected 120 \(kind)", "found 113", "6 images of 5x4"])
            try FileBytes.write(maybeGzip(Array(labels.dropLast(2)), compressed), to: "\(dir)/short-labels")
            assertDataError(try ImageDataset.loadIDX(imagesPath: "\(dir)/images", labelsPath: "\(dir)/short-labels"),
                            names: "\(dir)/short-labels", ["truncated", "expected 6 \(kind)", "found 4"])
            try FileBytes.write(maybeGzip(Array(images.prefix(10)), compressed), to: "\(dir)/header-only")
            assertDataError(try ImageDataset.loadIDX(imagesPath: "\(dir)/header-only", labelsPath: "\(dir)/labels"),
                            names: "\(dir)/header-only", ["truncated header", "expected 16"])
            try FileBytes.write(maybeGzip(images + [1, 2, 3], compressed), to: "\(dir)/long-images")
            assertDataError(try ImageDataset.loadIDX(imagesPath: "\(dir)/long-images", labelsPath: "\(dir)/labels"),
                            names: "\(dir)/long-images", ["3 unexpected trailing"])
            try FileBytes.write(maybeGzip(labels + [0], compressed), to: "\(dir)/long-labels")
            assertDataError(try ImageDataset.loadIDX(imagesPath: "\(dir)/images", labelsPath: "\(dir)/long-labels"),
                            names: "\(dir)/long-labels", ["1 unexpected trailing"])
        }
    }

    func testTruncatedGzipStream() throws {
        let dir = try makeTemporaryDirectory(self)
        let data = tinyDataset(count: 50)
        let imagesGz = Gzip.compress(data.idxImageBytes()), labelsGz = Gzip.compress(data.idxLabelBytes())
        try FileBytes.write(imagesGz, to: "\(dir)/images.gz")
        try FileBytes.write(labelsGz, to: "\(dir)/labels.gz")
        XCTAssertNoThrow(try ImageDataset.loadIDX(imagesPath: "\(dir)/images.gz", labelsPath: "\(dir)/labels.gz"))
        for cut in [1, 8, imagesGz.count / 2] {
            try FileBytes.write(Array(imagesGz.dropLast(cut)), to: "\(dir)/cut-images.gz")
            assertDataError(try ImageDataset.loadIDX(imagesPath: "\(dir)/cut-images.gz", labelsPath: "\(dir)/labels.gz"),
                            names: "\(dir)/cut-images.gz", ["gzip stream is truncated"], "cut \(cut)")
        }
        try FileBytes.write(Array(labelsGz.dropLast(12)), to: "\(dir)/cut-labels.gz")
        assertDataError(try ImageDataset.loadIDX(imagesPath: "\(dir)/images.gz", labelsPath: "\(dir)/cut-labels.gz"),
                        names: "\(dir)/cut-labels.gz", ["gzip stream is truncated"])
        // A flipped byte in the middle: a corrupt stream, not a silent misread.
        var corrupt = imagesGz
        corrupt[corrupt.count / 2] ^= 0xFF
        try FileBytes.write(corrupt, to: "\(dir)/corrupt.gz")
        assertDataError(try ImageDataset.loadIDX(imagesPath: "\(dir)/corrupt.gz", labelsPath: "\(dir)/labels.gz"),
                        names: "\(dir)/corrupt.gz", ["gzip"])
    }

    func testCountMismatchNamesBothFiles() throws {
        let dir = try makeTemporaryDirectory(self)
        try tinyDataset(count: 10).writeIDX(imagesPath: "\(dir)/images", labelsPath: "\(dir)/labels10")
        try tinyDataset(count: 9).writeIDX(imagesPath: "\(dir)/images9", labelsPath: "\(dir)/labels9")
        assertDataError(try ImageDataset.loadIDX(imagesPath: "\(dir)/images", labelsPath: "\(dir)/labels9"),
                        names: "\(dir)/images", ["\(dir)/labels9", "10 images", "9 labels"])
    }

    func testLabelOutOfRange() throws {
        let dir = try makeTemporaryDirectory(self)
        let data = tinyDataset(count: 5)
        try data.writeIDX(imagesPath: "\(dir)/images", labelsPath: "\(dir)/labels")
        var labels = data.idxLabelBytes()
        labels[8 + 3] = 12
        try FileBytes.write(labels, to: "\(dir)/bad-labels")
        assertDataError(try ImageDataset.loadIDX(imagesPath: "\(dir)/images", labelsPath: "\(dir)/bad-labels"),
                        names: "\(dir)/bad-labels", ["label at index 3 is 12", "0..<10"])
        // With more classes the same file is fine.
        XCTAssertEqual(try ImageDataset.loadIDX(imagesPath: "\(dir)/images", labelsPath: "\(dir)/bad-labels",
                                                classCount: 13).labels[3], 12)
    }

    func testFashionMNISTDirectoryLookup() throws {
        let dir = try makeTemporaryDirectory(self)
        let train = tinyDataset(count: 8, height: 28, width: 28), test = tinyDataset(count: 3, height: 28, width: 28)
        // Images gzipped, labels raw: both spellings are found.
        try train.writeIDX(imagesPath: "\(dir)/train-images-idx3-ubyte.gz", labelsPath: "\(dir)/train-labels-idx1-ubyte.gz",
                           compressed: true)
        try FileManager.default.removeItem(atPath: "\(dir)/train-labels-idx1-ubyte.gz")
        try FileBytes.write(train.idxLabelBytes(), to: "\(dir)/train-labels-idx1-ubyte")
        assertSameDataset(try ImageDataset.loadFashionMNIST(directory: dir, split: .train), train)
        assertDataError(try ImageDataset.loadFashionMNIST(directory: dir, split: .test),
                        names: dir, ["missing t10k-images-idx3-ubyte"])
        try FileBytes.write(test.idxImageBytes(), to: "\(dir)/t10k-images-idx3-ubyte")
        assertDataError(try ImageDataset.loadFashionMNIST(directory: dir, split: .test),
                        names: dir, ["missing t10k-labels-idx1-ubyte"])
        try FileBytes.write(Gzip.compress(test.idxLabelBytes()), to: "\(dir)/t10k-labels.idx1-ubyte.gz")
        assertSameDataset(try ImageDataset.loadFashionMNIST(directory: dir, split: .test), test)
        assertDataError(try ImageDataset.loadFashionMNIST(directory: "\(dir)/nowhere", split: .test),
                        names: "\(dir)/nowhere", ["does not exist"])
    }

    private func maybeGzip(_ bytes: [UInt8], _ compressed: Bool) -> [UInt8] {
        compressed ? Gzip.compress(bytes) : bytes
    }
}

final class CIFAR10ReaderTests: XCTestCase {
    /// A 3x32x32 dataset whose planes are distinguishable: R = 10 + i, G = 100 + i, B = 200 + i, with a marker pixel.
    private func planeDataset(count: Int, offset: Int = 0) -> ImageDataset {
        var pixels: [UInt8] = []
        for i in 0..<count {
            for base in [10, 100, 200] {
                var plane = [UInt8](repeating: UInt8(base + (i + offset) % 50), count: 1024)
                plane[33] = UInt8(((i + offset) * 13 + base) % 256)   // row 1, column 1
                pixels += plane
            }
        }
        let labels = (0..<count).map { Int32((($0 + offset) * 3) % 10) }
        return ImageDataset(name: "planes", pixels: pixels, labels: labels, channels: 3, height: 32, width: 32, classCount: 10)
    }

    func testRoundTripKeepsPlaneOrder() throws {
        let dir = try makeTemporaryDirectory(self)
        let data = planeDataset(count: 4)
        try data.writeCIFAR10Batch(path: "\(dir)/test_batch.bin")
        let bytes = try FileBytes.read("\(dir)/test_batch.bin")
        XCTAssertEqual(bytes.count, 4 * 3073)
        // Record 1: label byte, then R plane (1024 bytes), G plane, B plane.
        let r = 3073
        XCTAssertEqual(bytes[r], 3)
        XCTAssertEqual(bytes[r + 1], 11)
        XCTAssertEqual(bytes[r + 1 + 1024], 101)
        XCTAssertEqual(bytes[r + 1 + 2048], 201)
        XCTAssertEqual(bytes[r + 1 + 1024 + 33], UInt8((13 + 100) % 256))
        let back = try ImageDataset.loadCIFAR10Batch(path: "\(dir)/test_batch.bin")
        assertSameDataset(back, data)
        XCTAssertEqual(back.channels, 3)
        // Channel 1 of image 2 is the green plane.
        XCTAssertEqual(back.image(2)[back.image(2).startIndex + 1024], 102)
        let split = try ImageDataset.loadCIFAR10(directory: dir, split: .test)
        assertSameDataset(split, data)

        try data.writeCIFAR10Batch(path: "\(dir)/gz.bin", compressed: true)
        assertSameDataset(try ImageDataset.loadCIFAR10Batch(path: "\(dir)/gz.bin"), data)
    }

    func testTrainSplitNeedsAllBatches() throws {
        let dir = try makeTemporaryDirectory(self)
        let parts = (0..<5).map { planeDataset(count: 2, offset: 2 * $0) }
        for k in [0, 1] { try parts[k].writeCIFAR10Batch(path: "\(dir)/data_batch_\(k + 1).bin") }
        assertDataError(try ImageDataset.loadCIFAR10(directory: dir, split: .train), names: dir,
                        ["missing CIFAR-10 train batch files data_batch_3.bin, data_batch_4.bin, data_batch_5.bin"])
        let partial = try ImageDataset.loadCIFAR10(directory: dir, split: .train, requireAll: false)
        XCTAssertEqual(partial.count, 4)
        assertDataError(try ImageDataset.loadCIFAR10(directory: dir, split: .test), names: dir, ["test_batch.bin"])
        for k in 2..<5 { try parts[k].writeCIFAR10Batch(path: "\(dir)/data_batch_\(k + 1).bin") }
        let all = try ImageDataset.loadCIFAR10(directory: dir, split: .train)
        assertSameDataset(all, planeDataset(count: 10))
    }

    func testSizeNotMultipleOfRecordAndBadLabel() throws {
        let dir = try makeTemporaryDirectory(self)
        var bytes = planeDataset(count: 2).cifar10Bytes()
        try FileBytes.write(bytes + [1, 2, 3, 4, 5], to: "\(dir)/odd.bin")
        assertDataError(try ImageDataset.loadCIFAR10Batch(path: "\(dir)/odd.bin"), names: "\(dir)/odd.bin",
                        ["size 6151", "multiple of the CIFAR-10 record size 3073", "5 bytes left over"])
        try FileBytes.write([], to: "\(dir)/empty.bin")
        assertDataError(try ImageDataset.loadCIFAR10Batch(path: "\(dir)/empty.bin"), names: "\(dir)/empty.bin", ["size 0"])
        bytes[3073] = 10
        try FileBytes.write(bytes, to: "\(dir)/label.bin")
        assertDataError(try ImageDataset.loadCIFAR10Batch(path: "\(dir)/label.bin"), names: "\(dir)/label.bin",
                        ["label of record 1", "is 10", "0..<10"])
        assertDataError(try ImageDataset.loadCIFAR10Batch(path: "\(dir)/absent.bin"), names: "\(dir)/absent.bin",
                        ["cannot open"])
    }
}

final class FashionMNISTTests: XCTestCase {
    static let directory = DatasetKind.fashionMNIST.defaultDirectory!
    nonisolated(unsafe) static var cached: (train: ImageDataset, test: ImageDataset, seconds: Double)?

    private func load() throws -> (train: ImageDataset, test: ImageDataset, seconds: Double) {
        guard FileBytes.isDirectory(Self.directory) else {
            throw XCTSkip("\(Self.directory) is absent (install dataset-fashion-mnist)")
        }
        if let cached = Self.cached { return cached }
        let start = Date()
        let train = try ImageDataset.loadFashionMNIST(directory: Self.directory, split: .train)
        let test = try ImageDataset.loadFashionMNIST(directory: Self.directory, split: .test)
        let seconds = Date().timeIntervalSince(start)
        print("Fashion-MNIST train + test loaded in \(String(format: "%.3f", seconds)) s")
        Self.cached = (train, test, seconds)
        return (train, test, seconds)
    }

    func testLoadsRealFiles() throws {
        let (train, test, _) = try load()
        XCTAssertEqual(train.count, 60_000)
        XCTAssertEqual(test.count, 10_000)
        for d in [train, test] {
            XCTAssertEqual(d.imageShape, [1, 28, 28])
            XCTAssertEqual(d.classCount, 10)
        }
        XCTAssertEqual(Array(train.labels.prefix(6)), [9, 0, 0, 3, 0, 2])
        XCTAssertEqual(Array(test.labels.prefix(6)), [9, 2, 1, 1, 6, 1])
        XCTAssertEqual(train.classHistogram(), [Int](repeating: 6000, count: 10))
        XCTAssertEqual(test.classHistogram(), [Int](repeating: 1000, count: 10))
        XCTAssertEqual(train.name, "fashion-mnist train")
    }

    func testNormalisationStatistics() throws {
        let (train, _, _) = try load()
        let stats = ChannelStatistics.compute(train)
        XCTAssertEqual(stats.mean[0], 0.2860, accuracy: 5e-4)
        XCTAssertEqual(stats.std[0], 0.3530, accuracy: 5e-4)
        // Normalised training pixels then have mean 0 and std 1.
        let assembler = BatchAssembler(dataset: train.subset(0..<2000), statistics: stats)
        let batch = assembler.batch(indices: 0..<2000, epoch: 0)
        let values = batch.images.toArray().map(Double.init)
        let mean = values.reduce(0, +) / Double(values.count)
        XCTAssertEqual(mean, 0, accuracy: 0.05)
    }

    func testLoaderRunsAnAugmentedEpoch() throws {
        let (train, _, _) = try load()
        let assembler = BatchAssembler(dataset: train, statistics: ChannelStatistics.compute(train),
                                       augmentation: Augmentation(cropPadding: 2, horizontalFlip: true), seed: 1)
        let sampler = EpochSampler(datasetCount: train.count, seed: 1, epoch: 0)
        let start = Date()
        let loader = BatchLoader(assembler: assembler, sampler: sampler, globalBatchSize: 256,
                                 rank: 1, worldSize: 2, dropLast: true)
        var samples = 0
        while let batch = loader.next() {
            XCTAssertEqual(batch.images.shape, [128, 1, 28, 28])
            samples += batch.count
        }
        loader.close()
        XCTAssertEqual(samples, 234 * 128)
        print(String(format: "Fashion-MNIST half epoch (234 x 128, crop+flip): %.3f s, assembly %.3f s, consumer waited %.3f s",
                     Date().timeIntervalSince(start), loader.assemblySeconds, loader.waitSeconds))
    }
}
