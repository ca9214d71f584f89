import Foundation
import XCTest
import CnnCore
import CnnData

/// A fresh temporary directory, removed when the test case ends.
func makeTemporaryDirectory(_ test: XCTestCase) throws -> String {
    let path = NSTemporaryDirectory() + "cnn-data-tests-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    test.addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
    return path
}

/// A small dataset with distinct, recognisable pixels.
func tinyDataset(count: Int, channels: Int = 1, height: Int = 5, width: Int = 4, classCount: Int = 10) -> ImageDataset {
    let size = channels * height * width
    let pixels = (0..<count * size).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ $0 / size) }
    let labels = (0..<count).map { Int32(($0 * 7 + 3) % classCount) }
    return ImageDataset(name: "tiny", pixels: pixels, labels: labels, channels: channels,
                        height: height, width: width, classCount: classCount)
}

/// Asserts that `body` throws a CnnError whose message names `file` and contains every fragment.
func assertDataError(_ body: @autoclosure () throws -> Any, names file: String, _ fragments: [String],
                     _ message: String = "", line: UInt = #line) {
    do {
        _ = try body()
        XCTFail("expected an error naming \(file) \(fragments) \(message)", line: line)
    } catch let error as CnnError {
        let text = error.description
        XCTAssertTrue(text.contains(file), "message does not name \(file): \(text)", line: line)
        for fragment in fragments {
            XCTAssertTrue(text.contains(fragment), "message lacks '\(fragment)': \(text)", line: line)
        }
    } catch {
        XCTFail("unexpected error type \(error)", line: line)
    }
}

func assertSameDataset(_ a: ImageDataset, _ b: ImageDataset, line: UInt = #line) {
    XCTAssertEqual(a.count, b.count, line: line)
    XCTAssertEqual(a.channels, b.channels, line: line)
    XCTAssertEqual(a.height, b.height, line: line)
    XCTAssertEqual(a.width, b.width, line: line)
    XCTAssertEqual(a.labels, b.labels, line: line)
    XCTAssertTrue(a.pixels == b.pixels, "pixels differ", line: line)
}
