import Foundation
import XCTest
import CnnCore
import CnnData

/// The committed fixtures made by Tests/pytorch/make_image_fixtures.py with Pillow.
let imageFixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .deletingLastPathComponent().appendingPathComponent("fixtures/images").path

/// A deterministic test image with gradients and texture.
func testImage(width: Int, height: Int, channels: Int, seed: UInt64 = 1) -> Image8 {
    var rng = SplitMix64(seed: seed)
    var pixels = [UInt8](repeating: 0, count: width * height * channels)
    for y in 0..<height {
        for x in 0..<width {
            for c in 0..<channels {
                let ramp = (x * 7 + y * 5 + c * 60) % 200
                pixels[(y * width + x) * channels + c] = UInt8(ramp + Int(rng.next() % 40))
            }
        }
    }
    return Image8(width: width, height: height, channels: channels, pixels: pixels)
}

func maxDifference(_ a: [UInt8], _ b: [UInt8]) -> Int {
    precondition(a.count == b.count)
    return zip(a, b).map { abs(Int($0) - Int($1)) }.max() ?? 0
}

final class ImageCodecTests: XCTestCase {
    let decoder = ImageDecoder()

    func testPNGRoundTripGreyAndRGBPlainAndInterlaced() throws {
        for channels in [1, 3] {
            for interlaced in [false, true] {
                let image = testImage(width: 13, height: 9, channels: channels)
                let bytes = try ImageEncoder.png(image, interlaced: interlaced)
                XCTAssertEqual(try decoder.header(bytes, file: "x.png"),
                               ImageHeader(format: .png, width: 13, height: 9, channels: channels))
                XCTAssertEqual(try decoder.decode(bytes, file: "x.png"), image)
            }
        }
    }

    func testPNGPaletteLowBitGreyAlphaAnd16Bit() throws {
        // 8-bit palette with tRNS: entries expand to RGB, alpha ignored (PIL's convert("RGB")).
        let palette: [UInt8] = [10, 20, 30, 200, 100, 0, 0, 255, 7]
        let indices: [UInt8] = [0, 1, 2, 2, 1, 0]
        let pal8 = try ImageEncoder.pngRaw(rows: indices, width: 3, height: 2, colorType: .palette, bitDepth: 8,
                                           palette: palette, transparency: [0, 128])
        let rgb = try decoder.decode(pal8, file: "p.png")
        XCTAssertEqual(rgb.channels, 3)
        XCTAssertEqual(rgb.pixels, indices.flatMap { Array(palette[Int($0) * 3..<Int($0) * 3 + 3]) })
        // 4-bit palette, packed two per byte from the high nibble; width 3 leaves a pad nibble.
        let pal4 = try ImageEncoder.pngRaw(rows: [0x01, 0x20, 0x21, 0x00], width: 3, height: 2, colorType: .palette,
                                           bitDepth: 4, palette: palette)
        XCTAssertEqual(try decoder.decode(pal4, file: "p4.png").pixels, [0, 1, 2, 2, 1, 0].flatMap {
            Array(palette[$0 * 3..<$0 * 3 + 3]) })
        // 1-, 2- and 4-bit grey scale to 0...255 (v * 255 / (2^bits - 1)).
        let g1 = try ImageEncoder.pngRaw(rows: [0b1010_0000], width: 4, height: 1, colorType: .grey, bitDepth: 1)
        XCTAssertEqual(try decoder.decode(g1, file: "g1.png").pixels, [255, 0, 255, 0])
        let g2 = try ImageEncoder.pngRaw(rows: [0b00_01_10_11], width: 4, height: 1, colorType: .grey, bitDepth: 2)
        XCTAssertEqual(try decoder.decode(g2, file: "g2.png").pixels, [0, 85, 170, 255])
        let g4 = try ImageEncoder.pngRaw(rows: [0x0F, 0x70], width: 3, height: 1, colorType: .grey, bitDepth: 4)
        XCTAssertEqual(try decoder.decode(g4, file: "g4.png").pixels, [0, 255, 119])
        // Grey + alpha and RGBA: alpha dropped.
        let ga = try ImageEncoder.pngRaw(rows: [9, 0, 99, 255], width: 2, height: 1, colorType: .greyAlpha, bitDepth: 8)
        XCTAssertEqual(try decoder.decode(ga, file: "ga.png"), Image8(width: 2, height: 1, channels: 1, pixels: [9, 99]))
        let rgba = try ImageEncoder.pngRaw(rows: [1, 2, 3, 0, 4, 5, 6, 77], width: 2, height: 1, colorType: .rgba, bitDepth: 8)
        XCTAssertEqual(try decoder.decode(rgba, file: "a.png").pixels, [1, 2, 3, 4, 5, 6])
        // 16-bit (big-endian samples): the high byte.
        let rgb16 = try ImageEncoder.pngRaw(rows: [0x12, 0x34, 0xAB, 0xCD, 0xFF, 0xFF], width: 1, height: 1,
                                            colorType: .rgb, bitDepth: 16)
        XCTAssertEqual(try decoder.decode(rgb16, file: "c16.png").pixels, [0x12, 0xAB, 0xFF])
        let grey16 = try ImageEncoder.pngRaw(rows: [0x80, 0x01, 0x00, 0xFF, 0x00, 0x10, 0x9A, 0xBC], width: 2, height: 1,
                                             colorType: .greyAlpha, bitDepth: 16)
        XCTAssertEqual(try decoder.decode(grey16, file: "g16.png").pixels, [0x80, 0x00])
        // channels: converts either way.
        XCTAssertEqual(try decoder.decode(g2, file: "g2.png", channels: 3).pixels,
                       [0, 0, 0, 85, 85, 85, 170, 170, 170, 255, 255, 255])
    }

    func testRGBToGreyMatchesPillow() throws {
        let input = try decoder.decodeFile(imageFixtures + "/input.png")
        let pil = try decoder.decodeFile(imageFixtures + "/input_L.png")
        XCTAssertEqual(pil.channels, 1)
        XCTAssertEqual(input.converted(toChannels: 1), pil)
        XCTAssertEqual(try decoder.decodeFile(imageFixtures + "/input.png", channels: 1), pil)
        let colours = try decoder.decodeFile(imageFixtures + "/colours.png")
        XCTAssertEqual(colours.converted(toChannels: 1), try decoder.decodeFile(imageFixtures + "/colours_L.png"))
        XCTAssertEqual(Image8.luma(255, 255, 255), 255)
        XCTAssertEqual(Image8.luma(255, 0, 0), 76)   // 0.299 * 255 = 76.2
    }

    func testJPEGDecodesAsPillowDoes() throws {
        // Pillow wrote these JPEGs (baseline, progressive, grey, CMYK) and decoded them;
        // both sides run libjpeg-turbo with the same defaults, so the pixels agree exactly.
        for name in ["baseline", "progressive", "gray", "cmyk"] {
            let path = imageFixtures + "/\(name).jpg"
            let rgb = try decoder.decodeFile(path, channels: 3)
            let pilRGB = try decoder.decodeFile(imageFixtures + "/\(name)_pil_rgb.png")
            XCTAssertEqual(rgb.width, pilRGB.width, name)
            XCTAssertEqual(maxDifference(rgb.pixels, pilRGB.pixels), 0, name)
            let grey = try decoder.decodeFile(path, channels: 1)
            let pilL = try decoder.decodeFile(imageFixtures + "/\(name)_pil_l.png")
            XCTAssertEqual(maxDifference(grey.pixels, pilL.pixels), 0, name)
        }
        XCTAssertEqual(try decoder.decodeFile(imageFixtures + "/gray.jpg").channels, 1)
        XCTAssertEqual(try decoder.decodeFile(imageFixtures + "/cmyk.jpg").channels, 3)
    }

    func testJPEGEncodeRoundTripProgressiveAndCMYK() throws {
        let image = testImage(width: 40, height: 24, channels: 3)
        let exact = try ImageEncoder.jpeg(image, quality: 100, subsampling: .s444)
        XCTAssertLessThanOrEqual(maxDifference(try decoder.decode(exact, file: "q100.jpg").pixels, image.pixels), 8)
        let baseline = try ImageEncoder.jpeg(image, quality: 80)
        let progressive = try ImageEncoder.jpeg(image, quality: 80, progressive: true)
        func hasMarker(_ bytes: [UInt8], _ marker: UInt8) -> Bool {
            (0..<bytes.count - 1).contains { bytes[$0] == 0xFF && bytes[$0 + 1] == marker }
        }
        XCTAssertTrue(hasMarker(progressive, 0xC2) && !hasMarker(progressive, 0xC0))
        XCTAssertTrue(hasMarker(baseline, 0xC0))
        // Progressive and baseline code the same quantised coefficients.
        XCTAssertEqual(try decoder.decode(progressive, file: "p.jpg"), try decoder.decode(baseline, file: "b.jpg"))
        let grey = testImage(width: 17, height: 11, channels: 1)
        let greyJPEG = try ImageEncoder.jpeg(grey, quality: 100)
        let greyBack = try decoder.decode(greyJPEG, file: "g.jpg")
        XCTAssertEqual(greyBack.channels, 1)
        XCTAssertLessThanOrEqual(maxDifference(greyBack.pixels, grey.pixels), 4)
        // CMYK, stored inverted (Adobe): flat patches so the codec is near-lossless.
        let patches: [[UInt8]] = [[255, 255, 255, 255], [0, 255, 255, 255], [255, 255, 255, 0], [128, 200, 64, 200]]
        var cmyk = [UInt8]()
        for p in patches { for _ in 0..<64 { cmyk += p } }  // 4 patches of 8x8, stacked
        let cmykJPEG = try ImageEncoder.jpegCMYK(cmyk, width: 8, height: 32, quality: 100)
        let back = try decoder.decode(cmykJPEG, file: "cmyk.jpg")
        // White, cyan ink only (R = 0), black ink (all 0), and a mix: R = c*k/255 on the stored values.
        let expected: [[Int]] = [[255, 255, 255], [0, 255, 255], [0, 0, 0], [100, 157, 50]]
        for (i, e) in expected.enumerated() {
            let pixel = back.pixels[(i * 64 + 27) * 3..<(i * 64 + 27) * 3 + 3].map(Int.init)
            for c in 0..<3 { XCTAssertLessThanOrEqual(abs(pixel[c] - e[c]), 2, "patch \(i): \(pixel) vs \(e)") }
        }
    }

    func testJPEGDCTDomainDownscale() throws {
        let image = testImage(width: 64, height: 48, channels: 3)
        let bytes = try ImageEncoder.jpeg(image, quality: 95)
        XCTAssertEqual(try decoder.decode(bytes, file: "s.jpg").width, 64)
        let quarter = try decoder.decode(bytes, file: "s.jpg", atLeast: (height: 10, width: 10))
        XCTAssertEqual([quarter.width, quarter.height], [16, 12])   // 1/8 would give 8x6 < 10
        let eighth = try decoder.decode(bytes, file: "s.jpg", atLeast: (height: 6, width: 8))
        XCTAssertEqual([eighth.width, eighth.height], [8, 6])
        // Only downscaling: asking for more than the image keeps it full size.
        XCTAssertEqual(try decoder.decode(bytes, file: "s.jpg", atLeast: (height: 100, width: 100)).width, 64)
        // libjpeg-turbo's 9/16 ... 15/16 scalings are slower than full size: 7/8 (56x42) is not used.
        XCTAssertEqual(try decoder.decode(bytes, file: "s.jpg", atLeast: (height: 40, width: 40)).width, 64)
        // Each 1/8-scale pixel is the mean of its 8x8 block (the DC coefficient), to JPEG accuracy.
        for by in 0..<6 {
            for bx in 0..<8 {
                var sum = 0
                for y in 0..<8 { for x in 0..<8 { sum += Int(image.pixels[((by * 8 + y) * 64 + bx * 8 + x) * 3]) } }
                XCTAssertLessThanOrEqual(abs(Int(eighth.pixels[(by * 8 + bx) * 3]) - sum / 64), 12)
            }
        }
        // PNG ignores the hint.
        let png = try ImageEncoder.png(image)
        XCTAssertEqual(try decoder.decode(png, file: "s.png", atLeast: (height: 6, width: 8)).width, 64)
    }

    func testEmptyNonImageAndOtherFormatsNameTheFile() throws {
        assertDataError(try decoder.decode([], file: "dir/empty.jpg"), names: "dir/empty.jpg", ["empty file", "0 bytes"])
        assertDataError(try decoder.decode(Array("label,pixel1\n".utf8), file: "notes.png"), names: "notes.png",
                        ["not a JPEG or PNG", "not an image"])
        assertDataError(try decoder.decode(Array("GIF89a\u{1}\u{0}".utf8), file: "a.gif"), names: "a.gif", ["GIF"])
        assertDataError(try decoder.decode([0xFF, 0xD8], file: "two.jpg"), names: "two.jpg", ["not a JPEG or PNG"])
        XCTAssertThrowsError(try decoder.decode([1, 2, 3], file: "x", channels: 2))
    }

    func testWrongExtensionDecodesByContent() throws {
        let dir = try makeTemporaryDirectory(self)
        let image = testImage(width: 5, height: 4, channels: 3)
        try FileBytes.write(try ImageEncoder.png(image), to: dir + "/really-a-png.jpg")
        try FileBytes.write(try ImageEncoder.jpeg(image, quality: 90), to: dir + "/really-a-jpeg.png")
        XCTAssertEqual(try decoder.decodeFile(dir + "/really-a-png.jpg"), image)
        XCTAssertEqual(try decoder.decodeFile(dir + "/really-a-jpeg.png").width, 5)
        assertDataError(try decoder.decodeFile(dir + "/missing.png"), names: dir + "/missing.png", ["cannot open"])
    }

    func testTruncationAtEveryLengthIsAnError() throws {
        let image = testImage(width: 12, height: 10, channels: 3)
        let png = try ImageEncoder.png(image, interlaced: true)
        for length in 0..<png.count {
            assertDataError(try decoder.decode(Array(png.prefix(length)), file: "cut.png"), names: "cut.png", [],
                            "PNG cut to \(length) of \(png.count) bytes")
        }
        let jpeg = try ImageEncoder.jpeg(image, quality: 90, progressive: true)
        // A JPEG cut anywhere before its final EOI marker (the last 2 bytes) is an error.
        for length in 0..<(jpeg.count - 2) {
            assertDataError(try decoder.decode(Array(jpeg.prefix(length)), file: "cut.jpg"), names: "cut.jpg", [],
                            "JPEG cut to \(length) of \(jpeg.count) bytes")
        }
        let big = try ImageEncoder.jpeg(testImage(width: 64, height: 48, channels: 3), quality: 90)
        assertDataError(try decoder.decode(Array(big.prefix(big.count / 2)), file: "half.jpg"), names: "half.jpg",
                        ["JPEG data is truncated"])
        assertDataError(try decoder.decode(Array(jpeg.prefix(jpeg.count / 2)), file: "half.jpg"), names: "half.jpg",
                        ["truncated"])
    }

    func testBitFlipsNeverCrash() throws {
        // Every single-bit flip of a small PNG and JPEG: each decode either throws a
        // CnnError naming the file or returns an image of the header's size.
        let image = testImage(width: 9, height: 7, channels: 3)
        var pngErrors = 0
        for source in [try ImageEncoder.png(image), try ImageEncoder.jpeg(image, quality: 75)] {
            for byte in 0..<source.count {
                for bit in [0, 3, 7] {
                    var damaged = source
                    damaged[byte] ^= UInt8(1 << bit)
                    do {
                        let out = try decoder.decode(damaged, file: "flip")
                        XCTAssertEqual(out.pixels.count, out.width * out.height * out.channels)
                    } catch let error as CnnError {
                        XCTAssertTrue(error.description.hasPrefix("flip: "), error.description)
                        if source[1] == 0x50 { pngErrors += 1 }
                    }
                }
            }
        }
        // PNG's CRCs and zlib's checksum catch nearly every flip (ancillary-free file).
        let pngSize = try ImageEncoder.png(image).count
        XCTAssertGreaterThan(pngErrors, 3 * pngSize * 9 / 10)
    }

    func testDecompressionBombRefusedFromTheHeader() throws {
        // A PNG of signature + an IHDR claiming 100000 x 100000 and nothing else.
        var ihdr: [UInt8] = Array("IHDR".utf8)
        for v in [UInt32(100_000), UInt32(100_000)] { ihdr += withUnsafeBytes(of: v.bigEndian, Array.init) }
        ihdr += [8, 2, 0, 0, 0]
        let crc = crc32(ihdr)
        let bomb: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 13] + ihdr
            + withUnsafeBytes(of: crc.bigEndian, Array.init)
        assertDataError(try decoder.decode(bomb, file: "bomb.png"), names: "bomb.png",
                        ["100000x100000", "decompression bomb", "refused before decoding"])
        // A real JPEG whose SOF0 is patched to 60000 x 60000.
        var jpeg = try ImageEncoder.jpeg(testImage(width: 16, height: 16, channels: 3), quality: 80)
        let sof = try XCTUnwrap((0..<jpeg.count - 1).first { jpeg[$0] == 0xFF && jpeg[$0 + 1] == 0xC0 })
        jpeg[sof + 5] = 0xEA; jpeg[sof + 6] = 0x60; jpeg[sof + 7] = 0xEA; jpeg[sof + 8] = 0x60
        assertDataError(try decoder.decode(jpeg, file: "bomb.jpg"), names: "bomb.jpg", ["60000x60000", "decompression bomb"])
        // The limit is the decoder's.
        let small = ImageDecoder(maxPixels: 100)
        let png = try ImageEncoder.png(testImage(width: 11, height: 10, channels: 1))
        assertDataError(try small.decode(png, file: "big.png"), names: "big.png", ["over the limit of 100"])
        XCTAssertEqual(try ImageDecoder(maxPixels: 110).decode(png, file: "ok.png").width, 11)
    }

    func testLayoutConversions() {
        let image = Image8(width: 2, height: 1, channels: 3, pixels: [1, 2, 3, 4, 5, 6])
        XCTAssertEqual(image.chw(), [1, 4, 2, 5, 3, 6])
        XCTAssertEqual(image.chwFloat(scale: 1), [1, 4, 2, 5, 3, 6])
        XCTAssertEqual(Image8(chw: [1, 4, 2, 5, 3, 6], channels: 3, height: 1, width: 2), image)
        XCTAssertEqual(image.chwFloat()[5], 6 / 255, accuracy: 1e-7)
    }
}

/// CRC-32 (PNG's), bitwise.
func crc32(_ bytes: [UInt8]) -> UInt32 {
    var crc: UInt32 = 0xFFFF_FFFF
    for b in bytes {
        crc ^= UInt32(b)
        for _ in 0..<8 { crc = (crc & 1) != 0 ? (crc >> 1) ^ 0xEDB8_8320 : crc >> 1 }
    }
    return crc ^ 0xFFFF_FFFF
}
