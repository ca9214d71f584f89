import Foundation
import XCTest
import CnnCore
import CnnData

final class TarShardTests: XCTestCase {
    func testTarRoundTripLongNamesAndSystemTarAgrees() throws {
        let dir = try makeTemporaryDirectory(self)
        let long = String(repeating: "d", count: 60) + "/" + String(repeating: "e", count: 60) + "/file.bin"
        let members: [(String, [UInt8])] = [("a.txt", Array("hello\n".utf8)), ("empty", []),
                                            ("exact", [UInt8](repeating: 7, count: 512)), (long, (0..<1000).map { UInt8($0 % 256) })]
        let writer = try TarWriter(path: dir + "/x.tar")
        for (name, bytes) in members { try writer.add(name: name, bytes: bytes) }
        try writer.finish()
        let reader = try TarReader(path: dir + "/x.tar")
        for (name, bytes) in members { XCTAssertEqual(try reader.next(), TarEntry(name: name, bytes: bytes)) }
        XCTAssertNil(try reader.next())
        // The system's tar reads it (format check against an independent implementation).
        let tar = Process()
        tar.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        tar.arguments = ["tar", "-tf", dir + "/x.tar"]
        let pipe = Pipe()
        tar.standardOutput = pipe
        try tar.run()
        tar.waitUntilExit()
        let listing = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertEqual(tar.terminationStatus, 0)
        XCTAssertEqual(listing.split(separator: "\n").map(String.init), members.map(\.0))
    }

    func testReadsLongNamesOfGNUAndPaxArchivesFromSystemTar() throws {
        let dir = try makeTemporaryDirectory(self)
        let long = String(repeating: "n", count: 130) + ".png"
        try FileBytes.write([1, 2, 3], to: dir + "/" + long)
        try FileBytes.write([4], to: dir + "/short.cls")
        for format in ["gnu", "pax"] {
            let tar = Process()
            tar.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            tar.arguments = ["tar", "--format=\(format)", "-C", dir, "-cf", dir + "/\(format).tar", long, "short.cls"]
            try tar.run()
            tar.waitUntilExit()
            XCTAssertEqual(tar.terminationStatus, 0)
            let reader = try TarReader(path: dir + "/\(format).tar")
            XCTAssertEqual(try reader.next(), TarEntry(name: long, bytes: [1, 2, 3]), format)
            XCTAssertEqual(try reader.next(), TarEntry(name: "short.cls", bytes: [4]), format)
            XCTAssertNil(try reader.next())
        }
    }

    func testTruncatedAndDamagedArchivesNameTheShard() throws {
        let dir = try makeTemporaryDirectory(self)
        let writer = try TarWriter(path: dir + "/s.tar")
        try writer.add(name: "k.png", bytes: [UInt8](repeating: 1, count: 700))
        try writer.add(name: "k.cls", bytes: Array("3".utf8))
        try writer.finish()
        let whole = try FileBytes.read(dir + "/s.tar")
        XCTAssertEqual(whole.count, 512 + 1024 + 512 + 512 + 1024)
        // Cut anywhere before the end-of-archive marker: an error, never a short success.
        for length in stride(from: 1, to: whole.count - 1024, by: 61) + [512, 1536, 2048, 2560] {
            try FileBytes.write(Array(whole.prefix(length)), to: dir + "/cut.tar")
            assertDataError(try { () throws -> Int in let r = try TarReader(path: dir + "/cut.tar"); var n = 0; while try r.next() != nil { n += 1 }; return n }(),
                            names: dir + "/cut.tar", ["truncated"], "cut at \(length)")
        }
        // A flipped bit in a header fails its checksum; a non-octal size is reported.
        var damaged = whole
        damaged[2] ^= 0x10
        try FileBytes.write(damaged, to: dir + "/bad.tar")
        assertDataError(try TarReader(path: dir + "/bad.tar").next() as Any, names: dir + "/bad.tar", ["checksum", "byte 0"])
        damaged = whole
        damaged[1536 + 124] = UInt8(ascii: "9")
        try FileBytes.write(damaged, to: dir + "/size.tar")
        let r = try TarReader(path: dir + "/size.tar")
        XCTAssertEqual(try r.next()?.name, "k.png")
        assertDataError(try r.next() as Any, names: dir + "/size.tar", ["byte 1536"])
        // A huge claimed size is refused before allocating.
        let small = try TarReader(path: dir + "/s.tar", maxMemberSize: 600)
        assertDataError(try small.next() as Any, names: dir + "/s.tar", ["claims 700 bytes"])
        // An empty file and a non-tar file.
        try FileBytes.write([], to: dir + "/empty.tar")
        assertDataError(try TarReader(path: dir + "/empty.tar").next() as Any, names: dir + "/empty.tar", ["truncated"])
        try FileBytes.write([UInt8](repeating: 65, count: 1024), to: dir + "/text.tar")
        assertDataError(try TarReader(path: dir + "/text.tar").next() as Any, names: dir + "/text.tar", ["damaged tar header"])
    }

    func testPackReadBackAssignAndManifest() throws {
        let root = try makeTemporaryDirectory(self)
        let out = try makeTemporaryDirectory(self)
        var expected = [String: (bytes: [UInt8], label: Int)]()   // image bytes -> label, by content
        var files = [String: [UInt8]]()
        for (label, name) in ["ant", "bee", "cow"].enumerated() {
            for i in 0..<(5 + label) {
                let image = testImage(width: 3 + i, height: 2, channels: 3, seed: UInt64(label * 100 + i))
                let bytes = i % 2 == 0 ? try ImageEncoder.png(image) : try ImageEncoder.jpeg(image, quality: 90)
                // A PNG named .jpg is stored by content as .png.
                files["train/\(name)/\(i).\(i == 2 ? "jpg" : (i % 2 == 0 ? "png" : "jpg"))"] = bytes
                expected["\(bytes.hashValue)"] = (bytes, label)
            }
        }
        files["val/bee/v.png"] = try ImageEncoder.png(testImage(width: 2, height: 2, channels: 1))
        try writeTree(root, files)
        let manifest = try ShardWriter.pack(root: root, to: out, maxSamples: 4)
        XCTAssertEqual(manifest.classes, ["ant", "bee", "cow"])
        XCTAssertEqual(manifest.splits["train"]!.map(\.samples), [4, 4, 4, 4, 2])   // 5 + 6 + 7 images
        XCTAssertEqual(manifest.splits["train"]!.map(\.file), (0..<5).map { "train-00000\($0).tar" })
        XCTAssertEqual(manifest.splits["val"]!, [ShardInfo(file: "val-000000.tar", samples: 1)])
        XCTAssertEqual(try ShardManifest.read(out + "/" + ShardManifest.fileName), manifest)

        // Ranks 0 and 1 of 2 read disjoint shards that together hold every sample once.
        var seen = [String: Int]()
        var keys = [String]()
        for rank in 0..<2 {
            let mine = ShardAssignment.shards(manifest.splits["train"]!, rank: rank, worldSize: 2)
            XCTAssertEqual(mine.map(\.file), rank == 0 ? ["train-000000.tar", "train-000002.tar", "train-000004.tar"] : ["train-000001.tar", "train-000003.tar"])
            for shard in mine {
                let reader = try ShardSampleReader(path: out + "/" + shard.file)
                var count = 0
                while let sample = try reader.next() {
                    count += 1
                    keys.append(sample.key)
                    let want = try XCTUnwrap(expected["\(sample.image.hashValue)"])
                    XCTAssertEqual(sample.image, want.bytes)
                    XCTAssertEqual(sample.label, want.label)
                    XCTAssertEqual(sample.imageExtension, sample.image[0] == 0x89 ? "png" : "jpg")
                    XCTAssertTrue(sample.source.hasPrefix(out + "/" + shard.file + ":"))
                    seen["\(sample.image.hashValue)", default: 0] += 1
                }
                XCTAssertEqual(count, shard.samples)
            }
        }
        XCTAssertEqual(seen.count, expected.count)
        XCTAssertTrue(seen.values.allSatisfy { $0 == 1 })
        XCTAssertEqual(keys.sorted(), (0..<18).map { String(format: "%09d", $0) })
        // Shuffled: the labels in written order are not grouped by class.
        var labels = [Int]()
        for shard in manifest.splits["train"]! {
            let reader = try ShardSampleReader(path: out + "/" + shard.file)
            while let s = try reader.next() { labels.append(s.label) }
        }
        XCTAssertNotEqual(labels, labels.sorted())
        // A byte limit: every shard but the last is within it.
        let out2 = try makeTemporaryDirectory(self)
        let index = try ImageFolderIndex(directory: root + "/train")
        let bySize = try ShardWriter.pack(index, split: "train", to: out2, maxSamples: 100, maxBytes: 5000)
        XCTAssertGreaterThan(bySize.count, 1)
        XCTAssertEqual(bySize.map(\.samples).reduce(0, +), 18)
        for shard in bySize {
            let size = try FileBytes.read(out2 + "/" + shard.file).count
            XCTAssertTrue(size <= 5000 || shard.samples == 1, "\(shard.file): \(size) bytes")
        }
    }

    func testPackRecodesToJPEG() throws {
        let root = try makeTemporaryDirectory(self)
        let out = try makeTemporaryDirectory(self)
        let data = tinyDataset(count: 6, channels: 1, height: 16, width: 16, classCount: 3)
        try ImageFolderWriter.write(data, root: root, split: "train")
        let manifest = try ShardWriter.pack(root: root, to: out, recode: .jpeg(quality: 100))
        XCTAssertEqual(manifest.splits["train"]!, [ShardInfo(file: "train-000000.tar", samples: 6)])
        let reader = try ShardSampleReader(path: out + "/train-000000.tar")
        let decoder = ImageDecoder()
        var labels = [Int]()
        while let sample = try reader.next() {
            XCTAssertEqual(sample.imageExtension, "jpg")
            let image = try decoder.decode(sample.image, file: sample.source)
            XCTAssertEqual([image.width, image.height, image.channels], [16, 16, 1])
            labels.append(sample.label)
        }
        XCTAssertEqual(labels.sorted(), data.labels.map(Int.init).sorted())
    }

    func testSampleGroupingErrorsAndPackRefusesBadImages() throws {
        let dir = try makeTemporaryDirectory(self)
        XCTAssertTrue(ShardSampleReader.split("a/b.c/key.seg.jpg") == ("a/b.c/key", "seg.jpg"))
        let writer = try TarWriter(path: dir + "/s.tar")
        try writer.add(name: "1.jpg", bytes: [1])
        try writer.add(name: "1.cls", bytes: Array(" 7\n".utf8))
        try writer.add(name: "1.json", bytes: [0])
        try writer.add(name: "2.png", bytes: [2])
        try writer.add(name: "3.cls", bytes: Array("x".utf8))
        try writer.finish()
        let reader = try ShardSampleReader(path: dir + "/s.tar")
        XCTAssertEqual(try reader.next()?.label, 7)
        assertDataError(try reader.next() as Any, names: dir + "/s.tar", ["sample '2' has no .cls member"])
        assertDataError(try reader.next() as Any, names: dir + "/s.tar", ["'x', not a class index"])
        // pack checks each image's header: a text file named .png is an error naming it.
        let root = try makeTemporaryDirectory(self)
        try writeTree(root, ["train/a/ok.png": try ImageEncoder.png(testImage(width: 2, height: 2, channels: 1)),
                             "train/a/bad.png": Array("not an image".utf8)])
        assertDataError(try ShardWriter.pack(root: root, to: dir), names: root + "/train/a/bad.png", ["not a JPEG or PNG"])
    }
}
