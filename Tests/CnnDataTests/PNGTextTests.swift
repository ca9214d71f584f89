import CnnCore
import CnnData
import Foundation
import XCTest

/// tEXt chunks written by ImageEncoder.png: read back by our chunk walker and checked
/// byte for byte against the PNG specification's layout (length, "tEXt", key, NUL, value, CRC).
final class PNGTextTests: XCTestCase {
    func testTextChunksRoundTripAndLayout() throws {
        let image = Image8(width: 3, height: 2, channels: 1, pixels: [0, 10, 20, 30, 40, 255])
        let text = [(key: "Title", value: "filters of conv1"), (key: "scale", value: "min -0.5 max 1.25\nsecond line é")]
        let png = try ImageEncoder.png(image, text: text)
        XCTAssertEqual(try ImageDecoder().decode(png, file: "t.png"), image)
        let read = try ImageDecoder.pngText(png, file: "t.png")
        XCTAssertEqual(read.map(\.key), ["Title", "scale"])
        XCTAssertEqual(read.map(\.value), ["filters of conv1", "min -0.5 max 1.25\nsecond line é"])

        // The raw chunk: after the signature and IHDR (8 + 25 bytes) come the tEXt chunks, before IDAT.
        let chunk = Array(png[33..<(33 + 8 + 5 + 1 + 16 + 4)])
        XCTAssertEqual(Array(chunk[0..<4]), [0, 0, 0, 22])
        XCTAssertEqual(String(decoding: chunk[4..<8], as: UTF8.self), "tEXt")
        XCTAssertEqual(String(decoding: chunk[8..<13], as: UTF8.self), "Title")
        XCTAssertEqual(chunk[13], 0)
        XCTAssertEqual(String(decoding: chunk[14..<30], as: UTF8.self), "filters of conv1")
        // Latin-1, one byte per character: é is 0xE9.
        XCTAssertTrue(png.contains(0xE9))

        // A damaged tEXt CRC is named.
        var damaged = png
        damaged[33 + 8 + 22] ^= 1
        XCTAssertThrowsError(try ImageDecoder.pngText(damaged, file: "d.png")) {
            XCTAssertTrue("\($0)".contains("d.png") && "\($0)".contains("CRC error in the tEXt chunk"), "\($0)")
        }
        XCTAssertTrue(try ImageDecoder.pngText(try ImageEncoder.png(image), file: "n.png").isEmpty)
    }

    func testBadKeysAreRefused() {
        let image = Image8(width: 1, height: 1, channels: 1, pixels: [0])
        for key in ["", String(repeating: "k", count: 80), " lead", "snow☃"] {
            XCTAssertThrowsError(try ImageEncoder.png(image, text: [(key, "v")]), key)
        }
    }
}

/// The grid and scaling of ImageGrid against hand-computed bytes.
final class ImageGridTests: XCTestCase {
    func testScaleIsMinMaxRoundedHalfUp() {
        let s = MapScale.of([-2, 30, .nan, 3, .infinity])
        XCTAssertEqual(s, MapScale(min: -2, max: 30))
        // (3 + 2) / 32 * 255 = 39.84 -> 40; (14 + 2) / 32 * 255 = 127.5 -> 128 (half up).
        XCTAssertEqual([-2, 3, 14, 30, 31, -5, .nan].map { s.byte($0) }, [0, 40, 128, 255, 255, 0, 0])
        XCTAssertEqual(MapScale(min: 1, max: 1).byte(1), 0)
    }

    func testGridLayoutPaddingZoomAndLabels() {
        let a = Image8(width: 2, height: 1, channels: 1, pixels: [7, 9])
        let b = Image8(width: 1, height: 1, channels: 3, pixels: [1, 2, 3])
        let grid = ImageGrid.make(tiles: [a, b, a], columns: 2, padding: 1, zoom: 2)
        // Cells 4x2, two columns: width 1 + 2 * (4 + 1) = 11; two rows: height 1 + 2 * (2 + 1) = 7.
        XCTAssertEqual([grid.width, grid.height, grid.channels], [11, 7, 3])
        func px(_ x: Int, _ y: Int) -> [UInt8] { Array(grid.pixels[((y * 11 + x) * 3)..<((y * 11 + x) * 3 + 3)]) }
        XCTAssertEqual(px(0, 0), [0, 0, 0])
        XCTAssertEqual(px(1, 1), [7, 7, 7]); XCTAssertEqual(px(2, 2), [7, 7, 7]); XCTAssertEqual(px(3, 2), [9, 9, 9])
        XCTAssertEqual(px(6, 1), [1, 2, 3]); XCTAssertEqual(px(7, 2), [1, 2, 3]); XCTAssertEqual(px(8, 1), [0, 0, 0])
        XCTAssertEqual(px(1, 4), [7, 7, 7])
        let labelled = ImageGrid.make(tiles: [a], labels: ["1"], padding: 0, zoom: 4)
        // 8 wide, label strip 7 + tile 4: the glyph "1" (rows 010, 110, 010, 010, 111) starts at (0, 1).
        XCTAssertEqual([labelled.width, labelled.height], [8, 11])
        XCTAssertEqual(Array(labelled.pixels[8..<11]), [0, 255, 0])
        XCTAssertEqual(Array(labelled.pixels[16..<19]), [255, 255, 0])
        XCTAssertEqual(Array(labelled.pixels[40..<43]), [255, 255, 255])
        XCTAssertEqual(labelled.pixels[7 * 8], 7)
    }
}
