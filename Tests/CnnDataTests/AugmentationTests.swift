import XCTest
import CnnCore
import CnnData

final class AugmentationTests: XCTestCase {
    // A 1x3x4 image:
    //   1  2  3  4
    //   5  6  7  8
    //   9 10 11 12
    let image: [UInt8] = Array(1...12)

    func testFlipMirrorsColumns() {
        let out = AugmentationParameters(flip: true).apply(to: image[...], channels: 1, height: 3, width: 4)
        XCTAssertEqual(out, [4, 3, 2, 1, 8, 7, 6, 5, 12, 11, 10, 9])
    }

    func testShiftIsCropOfZeroPaddedImage() {
        // Crop origin (row 0, column 2) of the image padded by 1 = shift (-1, +1).
        let out = AugmentationParameters(shiftY: -1, shiftX: 1).apply(to: image[...], channels: 1, height: 3, width: 4)
        XCTAssertEqual(out, [0, 0, 0, 0,
                             2, 3, 4, 0,
                             6, 7, 8, 0])
        let flipped = AugmentationParameters(flip: true, shiftY: 1, shiftX: -1).apply(to: image[...], channels: 1, height: 3, width: 4)
        XCTAssertEqual(flipped, [0, 8, 7, 6,
                                 0, 12, 11, 10,
                                 0, 0, 0, 0])
        XCTAssertEqual(AugmentationParameters.identity.apply(to: image[...], channels: 1, height: 3, width: 4), image)
    }

    func testParametersAreAPureFunctionOfSeedEpochIndex() {
        let aug = Augmentation(cropPadding: 4, horizontalFlip: true, maxTranslation: 2)
        XCTAssertFalse(aug.isIdentity)
        XCTAssertTrue(Augmentation().isIdentity)
        var flips = 0
        var shifts = Set<Int>()
        var differsAcrossEpochs = 0
        for index in 0..<2000 {
            let p = aug.parameters(seed: 9, epoch: 2, sampleIndex: index)
            XCTAssertEqual(p, aug.parameters(seed: 9, epoch: 2, sampleIndex: index))
            if p != aug.parameters(seed: 9, epoch: 3, sampleIndex: index) { differsAcrossEpochs += 1 }
            if p.flip { flips += 1 }
            XCTAssertTrue(abs(p.shiftX) <= 6 && abs(p.shiftY) <= 6)
            shifts.insert(p.shiftX)
        }
        XCTAssertEqual(Double(flips) / 2000, 0.5, accuracy: 0.05)
        XCTAssertEqual(shifts, Set(-6...6))
        XCTAssertGreaterThan(differsAcrossEpochs, 1900)
        let cropOnly = Augmentation(cropPadding: 1)
        let ps = (0..<500).map { cropOnly.parameters(seed: 1, epoch: 0, sampleIndex: $0) }
        XCTAssertFalse(ps.contains { $0.flip })
        XCTAssertEqual(Set(ps.map(\.shiftY)), [-1, 0, 1])
        XCTAssertEqual(Augmentation.none.parameters(seed: 1, epoch: 0, sampleIndex: 5), .identity)
    }

    func testAssemblerAppliesNormalisationAndAugmentation() {
        let data = tinyDataset(count: 20, channels: 3, height: 6, width: 5)
        let stats = ChannelStatistics.compute(data)
        XCTAssertEqual(stats.channels, 3)
        let plain = BatchAssembler(dataset: data, statistics: stats)
        let indices = [4, 0, 19, 7]
        let (images, labels) = plain.batch(indices: indices, epoch: 0)
        XCTAssertEqual(images.shape, [4, 3, 6, 5])
        XCTAssertEqual(labels, indices.map { data.labels[$0] })
        for (j, index) in indices.enumerated() {
            let source = Array(data.image(index))
            for k in 0..<data.imageSize {
                let channel = k / 30
                let expected = Float((Double(source[k]) / 255 - stats.mean[channel]) / stats.std[channel])
                XCTAssertEqual(images[j * data.imageSize + k], expected, accuracy: 1e-5)
            }
        }

        let aug = Augmentation(cropPadding: 2, horizontalFlip: true)
        let augmented = BatchAssembler(dataset: data, statistics: stats, augmentation: aug, seed: 5)
        let (out, _) = augmented.batch(indices: indices, epoch: 3)
        let (again, _) = augmented.batch(indices: indices.reversed(), epoch: 3)
        for (j, index) in indices.enumerated() {
            let p = aug.parameters(seed: 5, epoch: 3, sampleIndex: index)
            let moved = p.apply(to: data.image(index), channels: 3, height: 6, width: 5)
            for k in 0..<data.imageSize {
                let expected = stats.normalize(moved[k], channel: k / 30)
                XCTAssertEqual(out[j * data.imageSize + k], expected, accuracy: 1e-5)
                // Same sample, other position in the batch: same augmentation.
                XCTAssertEqual(again[(indices.count - 1 - j) * data.imageSize + k], out[j * data.imageSize + k])
            }
        }
    }

    func testUnitStatisticsScalePixelsToUnitRange() {
        let data = tinyDataset(count: 2)
        let (images, _) = BatchAssembler(dataset: data, statistics: .unit(channels: 1)).batch(indices: [1], epoch: 0)
        XCTAssertEqual(images.toArray(), data.image(1).map { Float($0) / 255 })
    }
}

final class SyntheticDatasetTests: XCTestCase {
    func testDeterministicAndLearnable() {
        let train = ImageDataset.synthetic(count: 2000, channels: 1, height: 12, width: 12, classCount: 10, seed: 3)
        XCTAssertEqual(train.pixels, ImageDataset.synthetic(count: 2000, channels: 1, height: 12, width: 12, classCount: 10, seed: 3).pixels)
        XCTAssertNotEqual(train.pixels, ImageDataset.synthetic(count: 2000, channels: 1, height: 12, width: 12, classCount: 10, seed: 4).pixels)
        XCTAssertTrue(train.classHistogram().allSatisfy { $0 > 150 })
        // Nearest class mean, fitted on train, on fresh samples of the same seed: well above chance (10%).
        let size = train.imageSize
        var means = [Double](repeating: 0, count: 10 * size)
        let histogram = train.classHistogram()
        for i in 0..<train.count {
            let k = Int(train.labels[i])
            for (j, p) in train.image(i).enumerated() { means[k * size + j] += Double(p) / Double(histogram[k]) }
        }
        let test = ImageDataset.synthetic(count: 2500, channels: 1, height: 12, width: 12, classCount: 10, seed: 3).subset(2000..<2500)
        var correct = 0
        for i in 0..<test.count {
            let pixels = Array(test.image(i))
            let distances = (0..<10).map { k in
                (0..<size).reduce(0.0) { acc, j in let d = Double(pixels[j]) - means[k * size + j]; return acc + d * d }
            }
            if distances.firstIndex(of: distances.min()!) == Int(test.labels[i]) { correct += 1 }
        }
        XCTAssertGreaterThan(Double(correct) / Double(test.count), 0.9)
        let rgb = ImageDataset.synthetic(count: 4, channels: 3, height: 32, width: 32, seed: 1)
        XCTAssertEqual(rgb.imageShape, [3, 32, 32])
    }
}
