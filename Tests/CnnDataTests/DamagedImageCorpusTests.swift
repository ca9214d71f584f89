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
        paths.append(try write(Array("# notes\nnot an image at all\n".utf8), "\(dir)/README.jpg"))
        paths.append(try write([0x1F, 0x8B, 8, 0] + [UInt8](repeating: 0, count: 30), "\(dir)/archive.gz.png"))
        // Decompression bombs: headers claiming 100000 x 100000 (PNG, with and without the IHDR's
        // CRC, then nothing or a valid IDAT) and a JPEG whose frame header claims 65000 x 65000.
        var ihdr: [UInt8] = Array("IHDR".utf8)
        for v in [UInt32(100_000), UInt32(100_000)] { ihdr += withUnsafeBytes(of: v.bigEndian, Array.init) }
        ihdr += [8, 2, 0, 0, 0]
        let signature: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 13]
        let png = try ImageEncoder.png(testImage(width: 8, height: 8, channels: 3, seed: 1))
        for (k, crc) in [crc32(ihdr), 0].enumerated() {
            let head = signature + ihdr + withUnsafeBytes(of: crc.bigEndian, Array.init)
            paths.append(try write(head, "\(dir)/bomb-\(k).png"))
            paths.append(try write(head + png[33...], "\(dir)/bomb-idat-\(k).png"))
        }
        var jpeg = try ImageEncoder.jpeg(testImage(width: 16, height: 16, channels: 3, seed: 2), quality: 80)
        let sof = try XCTUnwrap((0..<jpeg.count - 1).first { jpeg[$0] == 0xFF && jpeg[$0 + 1] == 0xC0 })
        jpeg[sof + 5] = 0xFD; jpeg[sof + 6] = 0xE8; jpeg[sof + 7] = 0xFD; jpeg[sof + 8] = 0xE8
        paths.append(try write(jpeg, "\(dir)/bomb.jpg"))
        // With a valid IHDR CRC the size is what refuses them; with a bad one the CRC is.
        let bombs = paths.filter { $0.contains("/bomb") && !$0.hasSuffix("-1.png") }
        try FileManager.default.createDirectory(atPath: "\(dir)/folder.jpg", withIntermediateDirectories: true)
        paths.append("\(dir)/folder.jpg")
        paths.append("\(dir)/missing.png")
        XCTAssertGreaterThanOrEqual(paths.count, 1000)

        // Decoded on another thread with a watchdog, so a hang fails the test (naming the file) instead of stalling CI.
        final class Progress: @unchecked Sendable {
            let lock = NSLock()
            var current = "", decoded = 0, refusals: [(path: String, message: String)] = [], other: [String] = []
        }
        let progress = Progress()
        let done = DispatchSemaphore(value: 0)
        let start = Date()
        let list = paths
        Thread.detachNewThread {
            let decoder = ImageDecoder()
            for path in list {
                progress.lock.lock(); progress.current = path; progress.lock.unlock()
                do {
                    let image = try decoder.decodeFile(path, channels: 3)
                    precondition(image.pixels.count == image.width * image.height * 3)
                    progress.lock.lock(); progress.decoded += 1; progress.lock.unlock()
                } catch let error as CnnError {
                    progress.lock.lock(); progress.refusals.append((path, error.description)); progress.lock.unlock()
                } catch {
                    progress.lock.lock(); progress.other.append("\(path): \(error)"); progress.lock.unlock()
                }
            }
            done.signal()
        }
        guard done.wait(timeout: .now() + 120) == .success else {
            progress.lock.lock(); defer { progress.lock.unlock() }
            return XCTFail("decoding hung (over 120 s) at \(progress.current)")
        }
        for (path, message) in progress.refusals { XCTAssertTrue(message.hasPrefix(path + ": "), message) }
        XCTAssertEqual(progress.other, [], "errors that are not CnnError")
        XCTAssertEqual(bombs.count, 3)
        for bomb in paths.filter({ $0.contains("/bomb") }) {
            XCTAssertTrue(progress.refusals.contains { $0.path == bomb }, "\(bomb) decoded")
        }
        for bomb in bombs {
            let message = progress.refusals.first { $0.path == bomb }?.message ?? "(decoded)"
            XCTAssertTrue(message.contains("decompression bomb"), message)
        }
        print(String(format: "damaged corpus: %d files, %d decoded, %d refused with an error naming the file, in %.2f s",
                     paths.count, progress.decoded, progress.refusals.count, Date().timeIntervalSince(start)))
        XCTAssertEqual(progress.decoded + progress.refusals.count, paths.count)
        XCTAssertGreaterThan(progress.refusals.count, paths.count / 2)

        // The same files as shard members: every refusal names the shard and the member.
        let shard = "\(dir)/train-000000.tar"
        let writer = try TarWriter(path: shard)
        var members = 0
        for (i, path) in paths.enumerated() where i % 4 == 0 && FileBytes.exists(path) && !FileBytes.isDirectory(path) {
            try writer.add(name: String(format: "%09d.jpg", i), bytes: try FileBytes.read(path))
            try writer.add(name: String(format: "%09d.cls", i), bytes: Array("0".utf8))
            members += 1
        }
        try writer.finish()
        let manifest = ShardManifest(classes: ["a", "b"], splits: ["train": [ShardInfo(file: "train-000000.tar", samples: members)],
                                                                  "val": [ShardInfo(file: "train-000000.tar", samples: members)]],
                                     statistics: [3: .unit(channels: 3)])
        try manifest.write(to: "\(dir)/\(ShardManifest.fileName)")
        let set = try ShardSet(directory: dir, shape: [3, 8, 8])
        let reader = ShardEvaluationReader(set: set, rank: 0, worldSize: 1, threads: 2, onBadImage: .skip)
        var read = 0
        while let (_, labels) = try reader.next(64) { read += labels.count }
        XCTAssertEqual(read + reader.skipped, members)
        XCTAssertGreaterThan(reader.skipped, members / 2)
        XCTAssertTrue(reader.firstSkip?.hasPrefix(shard + ":") == true, reader.firstSkip ?? "")
        let strict = ShardEvaluationReader(set: set, rank: 0, worldSize: 1, threads: 2, onBadImage: .error)
        assertDataError(try { () throws -> Int in
            var count = 0
            while let (_, labels) = try strict.next(64) { count += labels.count }
            return count
        }(), names: shard + ":", [".jpg: "])
    }

    private func write(_ bytes: [UInt8], _ path: String) throws -> String {
        try FileBytes.write(bytes, to: path)
        return path
    }

    private func uniformInt(_ bound: Int, _ rng: inout SplitMix64) -> UInt64 { rng.next() % UInt64(max(bound, 1)) }
}
