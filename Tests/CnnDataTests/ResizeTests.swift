import Foundation
import XCTest
import CnnCore
import CnnData

final class ResizeTests: XCTestCase {
    let decoder = ImageDecoder()

    func testMatchesPillowBitForBit() throws {
        // Made by Tests/pytorch/make_image_fixtures.py: Pillow's resize of input.png.
        let input = try decoder.decodeFile(imageFixtures + "/input.png")
        let cases: [(String, Int, Int, ResizeFilter, CropBox?)] = [
            ("resize_bilinear_10x7.png", 7, 10, .bilinear, nil),
            ("resize_bilinear_53x41.png", 41, 53, .bilinear, nil),
            ("resize_bilinear_13x19.png", 19, 13, .bilinear, nil),     // horizontal pass only
            ("resize_box_8x5.png", 5, 8, .box, nil),
            ("resize_bicubic_11x9.png", 9, 11, .bicubic, nil),
            // PIL crop box (left 5, top 3, right 22, bottom 15) then resize.
            ("crop_3_5_17x12_bilinear_16x16.png", 16, 16, .bilinear, CropBox(top: 3, left: 5, height: 12, width: 17)),
        ]
        for (name, height, width, filter, crop) in cases {
            let pil = try decoder.decodeFile(imageFixtures + "/" + name)
            let ours = Resize.resize(input, height: height, width: width, filter: filter, crop: crop)
            XCTAssertEqual([ours.width, ours.height], [pil.width, pil.height], name)
            XCTAssertEqual(maxDifference(ours.pixels, pil.pixels), 0, name)
            // The Float path, on 0...255 data, is within one grey level of PIL.
            let chw = input.chwFloat(scale: 1)
            let float = Resize.resize(chw: chw, channels: 3, height: input.height, width: input.width,
                                      toHeight: height, toWidth: width, filter: filter, crop: crop)
            let pilCHW = pil.chwFloat(scale: 1)
            let worst = zip(float, pilCHW).map { abs(min(max($0, 0), 255) - $1) }.max()!
            XCTAssertLessThanOrEqual(worst, 1.0, name)
        }
        let grey = try decoder.decodeFile(imageFixtures + "/input_L.png")
        let pilGrey = try decoder.decodeFile(imageFixtures + "/input_L_bilinear_7x6.png")
        XCTAssertEqual(Resize.resize(grey, height: 6, width: 7), pilGrey)
    }

    func testKnownAnswers() {
        // Halving with bilinear: support 2 around centres 1, 3 (input coords), weights
        // triangle((j - c + 0.5) / 2) = 1/4, 3/4, 3/4, 1/4 over 4 pixels, clipped at the edges.
        let row: [Float] = [0, 4, 8, 12]
        let half = Resize.resize(chw: row, channels: 1, height: 1, width: 4, toHeight: 1, toWidth: 2)
        // out0: taps j=0,1,2 with weights 3/4,3/4,1/4 (j=-1 clipped) / 7/4 -> (0 + 3 + 2) / 1.75
        XCTAssertEqual(half[0], (0 * 0.75 + 4 * 0.75 + 8 * 0.25) / 1.75, accuracy: 1e-5)
        XCTAssertEqual(half[1], (4 * 0.25 + 8 * 0.75 + 12 * 0.75) / 1.75, accuracy: 1e-5)
        // Box halving is the mean of pairs.
        XCTAssertEqual(Resize.resize(chw: row, channels: 1, height: 1, width: 4, toHeight: 1, toWidth: 2, filter: .box), [2, 10])
        // A constant image stays constant under every filter and size.
        let flat = Image8(width: 9, height: 7, channels: 3, pixels: [UInt8](repeating: 77, count: 9 * 7 * 3))
        for filter in ResizeFilter.allCases {
            for (h, w) in [(3, 4), (7, 9), (20, 5), (1, 1)] {
                XCTAssertTrue(Resize.resize(flat, height: h, width: w, filter: filter).pixels.allSatisfy { $0 == 77 })
            }
        }
        // Same size, no crop: the image itself; a crop at the same size: the crop.
        let image = testImage(width: 6, height: 5, channels: 3)
        XCTAssertEqual(Resize.resize(image, height: 5, width: 6), image)
        let crop = Resize.resize(image, height: 2, width: 3, crop: CropBox(top: 1, left: 2, height: 2, width: 3))
        XCTAssertEqual(Array(crop.pixels[0..<9]), Array(image.pixels[(1 * 6 + 2) * 3..<(1 * 6 + 5) * 3]))
        // Upscaling by an integer factor with bilinear interpolates between neighbours.
        let up = Resize.resize(chw: [0, 8], channels: 1, height: 1, width: 2, toHeight: 1, toWidth: 4)
        XCTAssertEqual(up, [0, 2, 6, 8])
    }
}
