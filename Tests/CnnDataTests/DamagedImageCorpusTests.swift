import Foundation
import XCTest
import CnnCore
import CnnData

/// Writes a corpus of unusual and damaged image files and decodes every one from disk:
/// each decode returns a consistent image or throws a CnnError naming the file. A crash
/// or a hang would take the test process down with it.
final class DamagedImageCorpusTests: XCTestCase {
    /// Valid files of every PNG colour type and depth and several JPEG kinds.
    func unusualImages() throws -> [(name: String, bytes: [UInt8])] {
        let rgb = testImage(width: 23, height: 17, channels: 3, seed: 5)
        let grey = testImage(width: 23, height: 17, channels: 1, seed: 6)
        var files: [(String, [UInt8])] = []
        func packed(_ values: (Int, Int) -> Int, width: Int, height: Int, bits: Int, samples: Int = 1) -> [UInt8] {
            let rowBytes = (width * samples * bits + 7) / 8
            var rows = [UInt8](repeating: 0, count: rowBytes * height)
            for y in 0..<height {
                for i in 0..<width * samples {
                    let v = values(y, i) & ((1 << bits) - 1)
                    if bits == 16 {
                        rows[y * rowBytes + 2 * i] = UInt8(v >> 8); rows[y * rowBytes + 2 * i + 1] = UInt8(v & 255)
                    } else {
                        let bit = i * bits
                        rows[y * rowBytes + bit / 8] |= UInt8(v << (8 - bits - bit % 8))
                    }
                }
            }
            return rows
        }
        let value: (Int, Int) -> Int = { y, i in (y * 977 + i * 131) ^ (i << 3) }
        for bits in [1, 2, 4, 8, 16] {
            files.append(("grey\(bits).png", try ImageEncoder.pngRaw(rows: packed(value, width: 23, height: 17, bits: bits),
                                                                     width: 23, height: 17, colorType: .grey, bitDepth: bits)))
        }
        let palette = (0..<256 * 3).map { UInt8(($0 * 37) % 256) }
        for bits in [1, 2, 4, 8] {
            let n = 1 << bits
            files.append(("palette\(bits).png", try ImageEncoder.pngRaw(
                rows: packed(value, width: 23, height: 17, bits: bits), width: 23, height: 17, colorType: .palette,
                bitDepth: bits, palette: Array(palette.prefix(3 * n)), transparency: [0, 90, 255].prefix(min(3, n)).map { $0 })))
        }
        for (type, samples) in [(PNGColorType.rgb, 3), (.rgba, 4), (.greyAlpha, 2)] {
            for bits in [8, 16] {
                for interlaced in [false, true] {
                    files.append(("\(type)\(bits)\(interlaced ? "i" : "").png", try ImageEncoder.pngRaw(
                        rows: packed(value, width: 23, height: 17, bits: bits, samples: samples), width: 23, height: 17,
                        colorType: type, bitDepth: bits, interlaced: interlaced)))
                }
            }
        }
        files.append(("rgb-interlaced.png", try ImageEncoder.png(rgb, interlaced: true)))
        for (name, sub) in [("420", JPEGSubsampling.s420), ("422", .s422), ("444", .s444)] {
            files.append(("baseline\(name).jpg", try ImageEncoder.jpeg(rgb, quality: 85, subsampling: sub)))
        }
        files.append(("progressive.jpg", try ImageEncoder.jpeg(rgb, quality: 85, progressive: true)))
        files.append(("low-quality.jpg", try ImageEncoder.jpeg(rgb, quality: 5)))
        files.append(("grey.jpg", try ImageEncoder.jpeg(grey, quality: 85)))
        files.append(("grey-progressive.jpg", try ImageEncoder.jpeg(grey, quality: 85, progressive: true)))
        files.append(("cmyk.jpg", try ImageEncoder.jpegCMYK((0..<23 * 17 * 4).map { UInt8(($0 * 53) % 256) },
                                                            width: 23, height: 17, quality: 80)))
        return files
    }

    func testCorpusOfUnusualAndDamagedFiles() throws {
        let dir = try makeTemporaryDirectory(self)
        let valid = try unusualImages()
        let decoder = ImageDecoder()
        // Every unusual-but-valid file decodes to its 23x17 size, read by content whatever its extension.
        for (i, file) in valid.enumerated() {
            let path = "\(dir)/valid-\(i)-\(file.name).\(i % 3 == 0 ? "jpeg" : "png")"
            try FileBytes.write(file.bytes, to: path)
            for channels in [1, 3] {
                let image = try decoder.decodeFile(path, channels: channels)
                XCTAssertEqual([image.width, image.height, image.channels], [23, 17, channels], file.name)
            }
        }
        var rng = SplitMix64(seed: 2024)
        var paths = [String]()
        for (i, file) in valid.enumerated() {
            let bytes = file.bytes
            for k in 0..<20 {   // truncations
                let length = Int(uniformInt(bytes.count, &rng))
                paths.append(try write(Array(bytes.prefix(length)), "\(dir)/cut-\(i)-\(k).jpg"))
            }
            for k in 0..<25 {   // one to three bit flips
                var damaged = bytes
                for _ in 0...Int(uniformInt(3, &rng)) {
                    damaged[Int(uniformInt(bytes.count, &rng))] ^= UInt8(1 << uniformInt(8, &rng))
                }
                paths.append(try write(damaged, "\(dir)/flip-\(i)-\(k).png"))
            }
            for k in 0..<8 {    // a run of garbage bytes
                var damaged = bytes
                let start = Int(uniformInt(bytes.count, &rng)), run = 1 + Int(uniformInt(64, &rng))
                for j in start..<min(start + run, bytes.count) { damaged[j] = UInt8(truncatingIfNeeded: rng.next()) }
                paths.append(try write(damaged, "\(dir)/garbage-\(i)-\(k).jpg"))
            }
        }
        paths.append(try write([], "\(dir)/empty.jpg"))
        paths.append(try write(Array("label,pixel1\n1,2\n".utf8), "\(dir)/table.png"))
        paths.append(try write((0..<4096).map { _ in UInt8(truncatingIfNeeded: rng.next()) }, "\(dir)/noise.jpg"))
        paths.append(try write(Array("GIF89a".utf8) + [UInt8](repeating: 0, count: 40), "\(dir)/anim.gif.png"))
        paths.append(try write(Array("BM".utf8) + [UInt8](repeating: 0, count: 60), "\(dir)/old.bmp.jpg"))
        paths.append(try write([0xFF, 0xD8, 0xFF] + [UInt8](repeating: 0xFF, count: 5000), "\(dir)/markers.jpg"))
        XCTAssertGreaterThanOrEqual(paths.count, 1000)
        var decoded = 0, refused = 0
        for path in paths {
            do {
                let image = try decoder.decodeFile(path, channels: 3)
                XCTAssertEqual(image.pixels.count, image.width * image.height * 3)
                decoded += 1
            } catch let error as CnnError {
                XCTAssertTrue(error.description.hasPrefix(path + ": "), error.description)
                refused += 1
            }
        }
        print("damaged corpus: \(paths.count) files, \(decoded) decoded, \(refused) refused with an error naming the file")
        XCTAssertEqual(decoded + refused, paths.count)
        XCTAssertGreaterThan(refused, paths.count / 2)
    }

    private func write(_ bytes: [UInt8], _ path: String) throws -> String {
        try FileBytes.write(bytes, to: path)
        return path
    }

    private func uniformInt(_ bound: Int, _ rng: inout SplitMix64) -> UInt64 { rng.next() % UInt64(max(bound, 1)) }
}
