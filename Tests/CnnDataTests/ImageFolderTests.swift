import Foundation
import XCTest
import CnnCore
import CnnData

/// Writes `files` (relative path -> bytes) under `root`, creating folders.
func writeTree(_ root: String, _ files: [String: [UInt8]]) throws {
    for (relative, bytes) in files {
        let path = root + "/" + relative
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent,
                                                withIntermediateDirectories: true)
        try FileBytes.write(bytes, to: path)
    }
}

final class ImageFolderTests: XCTestCase {
    func testClassesSortedFilesInTorchvisionOrderAndOthersReported() throws {
        let root = try makeTemporaryDirectory(self)
        let png = try ImageEncoder.png(testImage(width: 2, height: 2, channels: 1))
        try writeTree(root, [
            "train/dog/b.png": png, "train/dog/A.JPG": png, "train/dog/sub/z.jpeg": png, "train/dog/sub-x/y.png": png, "train/dog/sub/deep/d.png": png,
            "train/cat/1.png": png, "train/Zebra/q.png": png, "train/cat/readme.txt": [1],
            "train/cat/old.bmp": [1], "train/cat/.DS_Store": [1], "train/cat/._1.png": [1],
            "train/.ipynb_checkpoints/x.png": png,
            "val/cat/v.png": png, "val/dog/w.png": png,
        ])
        let (train, val) = try ImageFolderIndex.trainAndValidation(root: root)
        // Code point order: upper case before lower case, as Python's sorted().
        XCTAssertEqual(train.classes, ["Zebra", "cat", "dog"])
        let t = root + "/train"
        XCTAssertEqual(train.samples, [
            ImageFolderSample(path: "\(t)/Zebra/q.png", label: 0),
            ImageFolderSample(path: "\(t)/cat/1.png", label: 1),
            // Files of a folder by name ("A.JPG" < "b.png"); folders by full path:
            // "dog/sub" < "dog/sub-x" < "dog/sub/deep" since '-' < '/'.
            ImageFolderSample(path: "\(t)/dog/A.JPG", label: 2),
            ImageFolderSample(path: "\(t)/dog/b.png", label: 2),
            ImageFolderSample(path: "\(t)/dog/sub/z.jpeg", label: 2),
            ImageFolderSample(path: "\(t)/dog/sub-x/y.png", label: 2),
            ImageFolderSample(path: "\(t)/dog/sub/deep/d.png", label: 2),
        ])
        XCTAssertEqual(train.unsupported, ["\(t)/cat/old.bmp"])
        XCTAssertEqual(train.ignored, ["\(t)/cat/readme.txt"])
        // Validation labels by name with the training classes (Zebra is absent there).
        let v = try XCTUnwrap(val)
        XCTAssertEqual(v.classes, train.classes)
        XCTAssertEqual(v.samples.map(\.label), [1, 2])
    }

    func testEmptyClassMissingSplitAndUnknownValidationClass() throws {
        let root = try makeTemporaryDirectory(self)
        let png = try ImageEncoder.png(testImage(width: 2, height: 2, channels: 1))
        try writeTree(root, ["train/a/1.png": png, "train/b/notes.txt": [0]])
        assertDataError(try ImageFolderIndex.trainAndValidation(root: root), names: "\(root)/train/b",
                        ["class folder 'b' has no .jpg, .jpeg or .png image"])
        try FileManager.default.removeItem(atPath: root + "/train/b")
        let (_, none) = try ImageFolderIndex.trainAndValidation(root: root)
        XCTAssertNil(none)
        try writeTree(root, ["val/c/1.png": png])
        assertDataError(try ImageFolderIndex.trainAndValidation(root: root), names: "\(root)/val/c",
                        ["not one of the 1 training classes"])
        assertDataError(try ImageFolderIndex(directory: root + "/nope"), names: root + "/nope", ["not found"])
        try FileManager.default.createDirectory(atPath: root + "/flat", withIntermediateDirectories: true)
        try FileBytes.write(png, to: root + "/flat/x.png")
        assertDataError(try ImageFolderIndex(directory: root + "/flat"), names: root + "/flat", ["no class folders"])
    }

    func testSymbolicLinkLoopIsVisitedOnce() throws {
        let root = try makeTemporaryDirectory(self)
        let png = try ImageEncoder.png(testImage(width: 2, height: 2, channels: 1))
        try writeTree(root, ["train/a/1.png": png])
        try FileManager.default.createSymbolicLink(atPath: root + "/train/a/loop", withDestinationPath: root + "/train/a")
        let index = try ImageFolderIndex(directory: root + "/train")
        XCTAssertEqual(index.samples.map(\.path), ["\(root)/train/a/1.png"])
    }
}

final class ImageFolderWriterTests: XCTestCase {
    func testDatasetWrittenAsPNGReadsBackExactlyInLabelOrder() throws {
        let root = try makeTemporaryDirectory(self)
        for channels in [1, 3] {
            let data = tinyDataset(count: 25, channels: channels, classCount: 12)
            let split = "train\(channels)"
            XCTAssertEqual(try ImageFolderWriter.write(data, root: root, split: split), 25)
            let index = try ImageFolderIndex(directory: "\(root)/\(split)")
            // Zero-padded folder names sort in label order, so labels survive.
            XCTAssertEqual(index.classes, (0..<12).map { String(format: "%02d", $0) })
            let decoder = ImageDecoder()
            var seen = 0
            for sample in index.samples {
                let i = Int((sample.path as NSString).lastPathComponent.prefix(6))!
                XCTAssertEqual(sample.label, Int(data.labels[i]))
                XCTAssertEqual(try decoder.decodeFile(sample.path).chw(), Array(data.image(i)))
                seen += 1
            }
            XCTAssertEqual(seen, 25)
        }
        XCTAssertEqual(ImageFolderWriter.classFolders(classCount: 3, names: ["T-shirt/top", "Trouser", "Zebra"]),
                       ["0_T-shirt-top", "1_Trouser", "2_Zebra"])
        // JPEG: the same files, lossy pixels.
        let data = tinyDataset(count: 4, channels: 3, height: 16, width: 16, classCount: 2)
        try ImageFolderWriter.write(data, root: root, split: "val", format: .jpeg(quality: 95))
        let index = try ImageFolderIndex(directory: root + "/val")
        XCTAssertEqual(index.samples.count, 4)
        XCTAssertTrue(index.samples.allSatisfy { $0.path.hasSuffix(".jpg") })
    }
}
