import Foundation
import XCTest
import CnnCore
import CnnData

/// gzip data files are inflated against the size their header implies: a
/// gzip bomb or a damaged trailer costs memory for what the data claims to
/// be, not for what the stream would expand to.
final class GzipBoundsTests: XCTestCase {
    private func temporaryFile(_ bytes: [UInt8]) throws -> String {
        let path = NSTemporaryDirectory() + "cnn-gzip-\(UUID().uuidString)"
        try FileBytes.write(bytes, to: path)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        return path
    }

    /// An IDX labels header for 10 labels followed by 64 MiB of zeros, gzipped
    /// (about 64 KB): the reader stops just past the 18 bytes the header implies.
    func testBombStopsAtTheHeaderSize() throws {
        var raw: [UInt8] = [0, 0, 8, 1, 0, 0, 0, 10]
        raw += [UInt8](repeating: 0, count: 64 << 20)
        let path = try temporaryFile(Gzip.compress(raw))
        let (bytes, compressed) = try FileBytes.readDecompressing(path, expectedSize: { prefix in
            prefix.count >= 8 ? 8 + 10 : nil
        })
        XCTAssertTrue(compressed)
        XCTAssertLessThanOrEqual(bytes.count, 18 + (1 << 16) + 1, "inflated \(bytes.count) bytes")
        XCTAssertGreaterThan(bytes.count, 18, "the excess must reach the parser")
        // Through the IDX reader: the excess is named, nothing more is inflated.
        let images = try temporaryFile(Gzip.compress([0, 0, 8, 3, 0, 0, 0, 10, 0, 0, 0, 2, 0, 0, 0, 2]
                                                     + [UInt8](repeating: 1, count: 40)))
        XCTAssertThrowsError(try ImageDataset.loadIDX(imagesPath: images, labelsPath: path)) { error in
            XCTAssertTrue("\(error)".contains(path) && "\(error)".contains("trailing"), "\(error)")
        }
    }

    /// A trailer whose ISIZE claims 4 GiB no longer sizes the output buffer.
    func testDamagedTrailerIsNotTrusted() throws {
        var gz = Gzip.compress([UInt8](repeating: 7, count: 1000))
        for i in gz.count - 4 ..< gz.count { gz[i] = 0xFF }
        XCTAssertThrowsError(try Gzip.decompress(gz, file: "t.gz")) { error in
            XCTAssertTrue("\(error)".contains("t.gz"), "\(error)")
        }
    }

    /// Without a header to go by, the reader's own maximum applies.
    func testMaximumWithoutHeader() throws {
        let gz = Gzip.compress([UInt8](repeating: 0, count: 1 << 20))
        XCTAssertThrowsError(try Gzip.decompress(gz, file: "m.gz", maxBytes: 1 << 18)) { error in
            XCTAssertTrue("\(error)".contains("more than 262144 bytes"), "\(error)")
        }
        XCTAssertEqual(try Gzip.decompress(gz, file: "m.gz", maxBytes: 1 << 20).count, 1 << 20)
    }
}
