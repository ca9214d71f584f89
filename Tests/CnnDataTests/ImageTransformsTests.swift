import Foundation
import XCTest
import CnnCore
import CnnData

final class ImageTransformsTests: XCTestCase {
    func ramp(_ c: Int, _ h: Int, _ w: Int) -> [Float] { (0..<c * h * w).map { Float($0) / Float(c * h * w) } }

    func testSampleGeneratorIsAPureFunctionOfItsKey() {
        var a = sampleGenerator(seed: 7, epoch: 2, sampleIndex: 1000)
        var b = sampleGenerator(seed: 7, epoch: 2, sampleIndex: 1000)
        XCTAssertEqual((0..<5).map { _ in a.next() }, (0..<5).map { _ in b.next() })
        let first = sampleGenerator(seed: 7, epoch: 2, sampleIndex: 1000).state
        for other in [sampleGenerator(seed: 8, epoch: 2, sampleIndex: 1000), sampleGenerator(seed: 7, epoch: 3, sampleIndex: 1000),
                      sampleGenerator(seed: 7, epoch: 2, sampleIndex: 1001), sampleGenerator(seed: 7, epoch: 2, sampleIndex: 1000, stream: 1)] {
            XCTAssertNotEqual(other.state, first)
        }
        var r = SplitMix64(seed: 3)
        let draws = (0..<10_000).map { _ in r.integer(2, 5) }
        XCTAssertEqual(Set(draws), [2, 3, 4, 5])
        let u = (0..<10_000).map { _ in r.uniform(-1, 3) }
        XCTAssertTrue(u.allSatisfy { $0 >= -1 && $0 < 3 })
        XCTAssertEqual(u.reduce(0, +) / 10_000, 1, accuracy: 0.05)
    }

    func testRandomResizedCropBoxInvariantsAndFallback() {
        var rng = SplitMix64(seed: 11)
        for _ in 0..<2000 {
            let box = ImageTransforms.randomResizedCropBox(height: 60, width: 80, rng: &rng)
            XCTAssertTrue(box.top >= 0 && box.left >= 0 && box.top + box.height <= 60 && box.left + box.width <= 80, "\(box)")
            // Rounding to whole pixels moves area and aspect a little past the ranges.
            let fraction = Double(box.height * box.width) / 4800
            XCTAssertTrue(fraction >= 0.07 && fraction <= 1.0, "\(fraction)")
            let aspect = Double(box.width) / Double(box.height)
            XCTAssertTrue(aspect >= 0.70 && aspect <= 1.42 || fraction > 0.75, "\(aspect)")
        }
        // Whole image when scale and ratio admit only that.
        XCTAssertEqual(ImageTransforms.randomResizedCropBox(height: 9, width: 9, scale: (1, 1), ratio: (1, 1), rng: &rng),
                       CropBox(top: 0, left: 0, height: 9, width: 9))
        // No try can fit (area > image): torchvision's central crop clamped to the ratio range.
        // 10 high x 100 wide, ratio > 4/3: h = 10, w = round(10 * 4/3) = 13, left = (100 - 13) / 2.
        XCTAssertEqual(ImageTransforms.randomResizedCropBox(height: 10, width: 100, scale: (2, 3), rng: &rng),
                       CropBox(top: 0, left: 43, height: 10, width: 13))
        XCTAssertEqual(ImageTransforms.randomResizedCropBox(height: 100, width: 10, scale: (2, 3), rng: &rng),
                       CropBox(top: 43, left: 0, height: 13, width: 10))   // h = round(10 / (3/4)) = 13, (100 - 13) / 2
        XCTAssertEqual(ImageTransforms.randomResizedCropBox(height: 30, width: 35, scale: (2, 3), rng: &rng),
                       CropBox(top: 0, left: 0, height: 30, width: 35))
        // The crop-and-resize is the resize of the box.
        let image = ramp(3, 12, 10)
        var r1 = SplitMix64(seed: 5), r2 = SplitMix64(seed: 5)
        let out = ImageTransforms.randomResizedCrop(image, channels: 3, height: 12, width: 10, outHeight: 6, outWidth: 6, rng: &r1)
        let box = ImageTransforms.randomResizedCropBox(height: 12, width: 10, rng: &r2)
        XCTAssertEqual(out, Resize.resize(chw: image, channels: 3, height: 12, width: 10, toHeight: 6, toWidth: 6, crop: box))
        let bytes = testImage(width: 10, height: 12, channels: 3)
        var r3 = SplitMix64(seed: 5)
        XCTAssertEqual(ImageTransforms.randomResizedCrop(bytes, outHeight: 6, outWidth: 6, rng: &r3),
                       Resize.resize(bytes, height: 6, width: 6, crop: box))
    }

    func testRotationKnownAnswers() {
        let n = 4, image = ramp(2, n, n)
        XCTAssertEqual(ImageTransforms.rotate(image, channels: 2, height: n, width: n, degrees: 0), image)
        // +90° is counter-clockwise: out[y][x] = in[x][n-1-y] (numpy's rot90).
        let r90 = ImageTransforms.rotate(image, channels: 2, height: n, width: n, degrees: 90)
        let r180 = ImageTransforms.rotate(image, channels: 2, height: n, width: n, degrees: 180, interpolation: .nearest)
        for c in 0..<2 {
            for y in 0..<n {
                for x in 0..<n {
                    XCTAssertEqual(r90[(c * n + y) * n + x], image[(c * n + x) * n + n - 1 - y], accuracy: 1e-5)
                    XCTAssertEqual(r180[(c * n + y) * n + x], image[(c * n + n - 1 - y) * n + n - 1 - x])
                }
            }
        }
        // 45° of a 3x3 image of ones: the corner (0,0) samples (x 1, y 1 - √2): a fraction
        // m = 2 - √2 of the bilinear weight is inside, so torchvision's blend gives
        // 1·m·m + (1 - m)·fill; the centre stays 1.
        let ones = [Float](repeating: 1, count: 9)
        let m = Float(2 - 2.0.squareRoot())
        for fill: Float in [0, 0.5] {
            let out = ImageTransforms.rotate(ones, channels: 1, height: 3, width: 3, degrees: 45, fill: fill)
            XCTAssertEqual(out[0], m * m + (1 - m) * fill, accuracy: 1e-5)
            XCTAssertEqual(out[4], 1, accuracy: 1e-6)
            XCTAssertEqual(out[1], 1, accuracy: 1e-5)   // (1, 0) samples (1 - √2/2·…) inside
        }
        // Nearest: a far corner of a rotated square falls outside and takes the fill.
        let near = ImageTransforms.rotate([Float](repeating: 1, count: 25), channels: 1, height: 5, width: 5, degrees: 45,
                                          interpolation: .nearest, fill: -1)
        XCTAssertEqual(near[0], -1)
        XCTAssertEqual(near[12], 1)
        var rng = SplitMix64(seed: 1)
        let random = ImageTransforms.randomRotation(image, channels: 2, height: n, width: n, maxDegrees: 0, rng: &rng)
        XCTAssertEqual(random, image)
    }

    func testColourAdjustmentsKnownAnswers() {
        // Two RGB pixels (CHW): (0.2, 0.4, 0.6) and (1.0, 0.5, 0.0).
        let image: [Float] = [0.2, 1.0, 0.4, 0.5, 0.6, 0.0]
        let grey0: Float = 0.2989 * 0.2 + 0.587 * 0.4 + 0.114 * 0.6
        let grey1: Float = 0.2989 * 1.0 + 0.587 * 0.5 + 0.114 * 0.0
        var b = image
        ImageTransforms.adjustBrightness(&b, factor: 1.5)
        XCTAssertEqual(b, [0.3, 1.0, 0.6, 0.75, 0.9, 0.0].map { Float($0) }, accuracy: 1e-6)
        var c = image
        ImageTransforms.adjustContrast(&c, channels: 3, factor: 0)
        let mean = (grey0 + grey1) / 2
        XCTAssertEqual(c, [Float](repeating: mean, count: 6), accuracy: 1e-6)
        c = image
        ImageTransforms.adjustContrast(&c, channels: 3, factor: 2)
        XCTAssertEqual(c[0], max(2 * 0.2 - mean, 0), accuracy: 1e-6)
        XCTAssertEqual(c[4], min(2 * 0.6 - mean, 1), accuracy: 1e-6)
        var s = image
        ImageTransforms.adjustSaturation(&s, channels: 3, factor: 0)
        XCTAssertEqual(s, [grey0, grey1, grey0, grey1, grey0, grey1], accuracy: 1e-6)
        s = image
        ImageTransforms.adjustSaturation(&s, channels: 3, factor: 0.5)
        XCTAssertEqual(s[1], 0.5 * 1.0 + 0.5 * grey1, accuracy: 1e-6)
        // One channel: saturation does nothing, contrast blends with the plane's mean.
        var g: [Float] = [0.0, 1.0]
        ImageTransforms.adjustSaturation(&g, channels: 1, factor: 0)
        XCTAssertEqual(g, [0, 1])
        ImageTransforms.adjustContrast(&g, channels: 1, factor: 0.5)
        XCTAssertEqual(g, [0.25, 0.75])
        // Jitter of brightness only scales every value by one factor in [0.6, 1.4].
        var rng = SplitMix64(seed: 9)
        for _ in 0..<50 {
            var j: [Float] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
            ImageTransforms.colorJitter(&j, channels: 3, brightness: 0.4, rng: &rng)
            let f = j[0] / 0.1
            XCTAssertTrue(f >= 0.6 - 1e-5 && f <= 1.4 + 1e-5)
            for (i, v) in j.enumerated() { XCTAssertEqual(v, min(Float(i + 1) * 0.1 * f, 1), accuracy: 1e-5) }
        }
        var same = image
        ImageTransforms.colorJitter(&same, channels: 3, rng: &rng)
        XCTAssertEqual(same, image)
        // Hue: a third of a turn takes red to green to blue; grey and 1-channel images stay.
        var primaries: [Float] = [1, 0, 0.5, 0, 0, 1, 0.5, 0, 0, 0, 0.5, 1]   // red, green, grey, blue (CHW, 4 pixels)
        ImageTransforms.adjustHue(&primaries, channels: 3, shift: 1.0 / 3)
        XCTAssertEqual(primaries, [0, 0, 0.5, 1, 1, 0, 0.5, 0, 0, 1, 0.5, 0], accuracy: 1e-5)
        var back = image
        ImageTransforms.adjustHue(&back, channels: 3, shift: 0.3)
        ImageTransforms.adjustHue(&back, channels: 3, shift: -0.3)
        XCTAssertEqual(back, image, accuracy: 1e-5)
        var unchanged = image
        ImageTransforms.adjustHue(&unchanged, channels: 3, shift: 0)
        XCTAssertEqual(unchanged, image, accuracy: 1e-6)
        // Orange (1, 0.5, 0) is hue 1/12; +0.25 gives hue 1/3 (pure green tone, v 1, s 1).
        var orange: [Float] = [1, 0.5, 0]
        ImageTransforms.adjustHue(&orange, channels: 3, shift: 0.25)
        XCTAssertEqual(orange, [0, 1, 0], accuracy: 1e-5)
        var one: [Float] = [0.2, 0.7]
        ImageTransforms.adjustHue(&one, channels: 1, shift: 0.4)
        XCTAssertEqual(one, [0.2, 0.7])
    }

    func testFlipsNoiseAndErasing() {
        let image = ramp(2, 3, 4)
        var v = image
        ImageTransforms.flipVertical(&v, channels: 2, height: 3, width: 4)
        XCTAssertEqual(Array(v[0..<4]), Array(image[8..<12]))
        XCTAssertEqual(Array(v[4..<8]), Array(image[4..<8]))
        ImageTransforms.flipVertical(&v, channels: 2, height: 3, width: 4)
        XCTAssertEqual(v, image)
        var h = image
        ImageTransforms.flipHorizontal(&h, channels: 2, height: 3, width: 4)
        XCTAssertEqual(Array(h[12..<16]), Array(image[12..<16].reversed()))
        var flippedOnce = image
        ImageTransforms.flipVertical(&flippedOnce, channels: 2, height: 3, width: 4)
        var rng = SplitMix64(seed: 2)
        var flips = 0
        for _ in 0..<1000 {
            var f = image
            if ImageTransforms.randomVerticalFlip(&f, channels: 2, height: 3, width: 4, rng: &rng) {
                flips += 1
                XCTAssertEqual(f, flippedOnce)
            } else {
                XCTAssertEqual(f, image)
            }
        }
        XCTAssertTrue(flips > 430 && flips < 570, "\(flips)")
        // Noise: sigma 0 is the identity; without clipping the noise has the asked moments.
        var quiet = image
        ImageTransforms.gaussianNoise(&quiet, sigma: 0, rng: &rng)
        XCTAssertEqual(quiet, image)
        var noise = [Float](repeating: 0.5, count: 100_000)
        ImageTransforms.gaussianNoise(&noise, mean: 0.1, sigma: 0.2, clip: false, rng: &rng)
        let m = noise.reduce(0, +) / Float(noise.count)
        let sd = (noise.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Float(noise.count)).squareRoot()
        XCTAssertEqual(m, 0.6, accuracy: 0.005)
        XCTAssertEqual(sd, 0.2, accuracy: 0.005)
        var clipped = [Float](repeating: 0.95, count: 1000)
        ImageTransforms.gaussianNoise(&clipped, sigma: 0.5, rng: &rng)
        XCTAssertTrue(clipped.allSatisfy { $0 >= 0 && $0 <= 1 } && clipped.contains(1) && clipped.contains(0))
        // Erasing: probability 0 never; 1 erases a box smaller than the image, with the value per channel.
        var kept = image
        XCTAssertNil(ImageTransforms.randomErasing(&kept, channels: 2, height: 3, width: 4, probability: 0, rng: &rng))
        XCTAssertEqual(kept, image)
        let big = ramp(2, 20, 30)
        var erasedCount = 0
        for _ in 0..<200 {
            var e = big
            guard let box = ImageTransforms.randomErasing(&e, channels: 2, height: 20, width: 30, probability: 1,
                                                          value: .constant([-1, -2]), rng: &rng) else { continue }
            erasedCount += 1
            XCTAssertTrue(box.height < 20 && box.width < 30 && box.top + box.height <= 20 && box.left + box.width <= 30)
            let fraction = Double(box.height * box.width) / 600
            XCTAssertTrue(fraction > 0.01 && fraction < 0.36, "\(fraction)")
            for c in 0..<2 {
                for y in 0..<20 {
                    for x in 0..<30 {
                        let inside = y >= box.top && y < box.top + box.height && x >= box.left && x < box.left + box.width
                        let i = (c * 20 + y) * 30 + x
                        XCTAssertEqual(e[i], inside ? Float(-1 - c) : big[i])
                    }
                }
            }
        }
        XCTAssertGreaterThan(erasedCount, 150)
        // A 1x1 image admits only an empty box (h = w = 0 < 1, as in torchvision): nothing changes.
        var dot: [Float] = [0.5]
        let empty = ImageTransforms.randomErasing(&dot, channels: 1, height: 1, width: 1, probability: 1, rng: &rng)
        XCTAssertEqual(empty.map { $0.height * $0.width } ?? 0, 0)
        XCTAssertEqual(dot, [0.5])
        var noisy = big
        let box = ImageTransforms.randomErasing(&noisy, channels: 2, height: 20, width: 30, probability: 1, value: .random, rng: &rng)
        XCTAssertNotNil(box)
        XCTAssertNotEqual(noisy, big)
    }

    func testEvaluationResizeAndCentreCrop() {
        XCTAssertTrue(ImageTransforms.shorterSideSize(height: 480, width: 640, shorter: 256) == (256, 341))
        XCTAssertTrue(ImageTransforms.shorterSideSize(height: 640, width: 480, shorter: 256) == (341, 256))
        XCTAssertTrue(ImageTransforms.shorterSideSize(height: 28, width: 28, shorter: 32) == (32, 32))
        // Python's round: (5 - 2) / 2 = 1.5 -> 2, (7 - 2) / 2 = 2.5 -> 2.
        XCTAssertEqual(ImageTransforms.centerCropBox(height: 5, width: 7, cropHeight: 2, cropWidth: 2).box,
                       CropBox(top: 2, left: 2, height: 2, width: 2))
        let padded = ImageTransforms.centerCropBox(height: 3, width: 3, cropHeight: 6, cropWidth: 4)
        XCTAssertTrue(padded.padding == (1, 0, 2, 1))
        XCTAssertEqual(padded.box, CropBox(top: 0, left: 0, height: 6, width: 4))
        // 1x3x3 crop to 2x2 -> top = left = round(0.5) = 0; to 5x5 -> padded with zeros.
        let plane: [Float] = [1, 2, 3, 4, 5, 6, 7, 8, 9]
        XCTAssertEqual(ImageTransforms.centerCrop(plane, channels: 1, height: 3, width: 3, cropHeight: 2, cropWidth: 2), [1, 2, 4, 5])
        let grown = ImageTransforms.centerCrop(plane, channels: 1, height: 3, width: 3, cropHeight: 5, cropWidth: 5)
        XCTAssertEqual(Array(grown[6..<9]), [1, 2, 3])
        XCTAssertEqual(grown.reduce(0, +), 45)
        // The 8-bit evaluation transform is the centred window of the resized image.
        let image = testImage(width: 40, height: 30, channels: 3)
        let out = ImageTransforms.resizeShorterSideThenCenterCrop(image, shorter: 20, cropHeight: 16, cropWidth: 16)
        let resized = Resize.resize(image, height: 20, width: 26)
        XCTAssertEqual([out.width, out.height], [16, 16])
        for y in 0..<16 {
            XCTAssertEqual(Array(out.pixels[y * 48..<(y + 1) * 48]),
                           Array(resized.pixels[((y + 2) * 26 + 5) * 3..<((y + 2) * 26 + 21) * 3]))
        }
    }
}

func XCTAssertEqual(_ a: [Float], _ b: [Float], accuracy: Float, file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(a.count, b.count, file: file, line: line)
    for (x, y) in zip(a, b) { XCTAssertEqual(x, y, accuracy: accuracy, file: file, line: line) }
}

final class DecodeCropTests: XCTestCase {
    func testDecodeRandomResizedCropExactAndDCTScaled() throws {
        // Smooth content: on fine texture the 8x8-block means of a DCT-scaled decode alias
        // differently from a full-size antialiased resize, so only smooth images agree closely.
        var pixels = [UInt8]()
        for y in 0..<192 { for x in 0..<256 { pixels += [UInt8(x * 255 / 256), UInt8(y * 255 / 192), UInt8((x + y) / 2)] } }
        let image = Image8(width: 256, height: 192, channels: 3, pixels: pixels)
        let jpeg = try ImageEncoder.jpeg(image, quality: 95)
        let decoder = ImageDecoder()
        let full = try decoder.decode(jpeg, file: "x.jpg")
        var total = 0, count = 0, worst = 0
        for index in 0..<20 {
            var r1 = sampleGenerator(seed: 4, epoch: 0, sampleIndex: index)
            var r2 = r1, r3 = r1
            let exact = try decoder.decodeRandomResizedCrop(jpeg, file: "x.jpg", outHeight: 16, outWidth: 16,
                                                            dctScaling: false, rng: &r1)
            XCTAssertEqual(exact, ImageTransforms.randomResizedCrop(full, outHeight: 16, outWidth: 16, rng: &r2))
            let fast = try decoder.decodeRandomResizedCrop(jpeg, file: "x.jpg", outHeight: 16, outWidth: 16, rng: &r3)
            XCTAssertEqual([fast.width, fast.height, fast.channels], [16, 16, 3])
            XCTAssertEqual(r1.state, r3.state)   // the same draws either way
            let differences = zip(fast.pixels, exact.pixels).map { abs(Int($0) - Int($1)) }
            total += differences.reduce(0, +)
            worst = max(worst, differences.max()!)
            count += fast.pixels.count
        }
        // Decoding at 1/2 ... 1/8 then resizing stays close to the full-size path.
        XCTAssertLessThan(Double(total) / Double(count), 2.5)
        XCTAssertLessThanOrEqual(worst, 10)
        // PNG has no DCT scaling: always the exact path.
        let png = try ImageEncoder.png(image)
        var a = SplitMix64(seed: 1), b = SplitMix64(seed: 1)
        XCTAssertEqual(try decoder.decodeRandomResizedCrop(png, file: "x.png", outHeight: 8, outWidth: 8, rng: &a),
                       ImageTransforms.randomResizedCrop(image, outHeight: 8, outWidth: 8, rng: &b))
    }
}
