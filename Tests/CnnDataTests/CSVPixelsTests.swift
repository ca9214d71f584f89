import Foundation
import XCTest
import CnnCore
import CnnData

final class CSVPixelsTests: XCTestCase {
    func testSignLanguageLayoutLoads() throws {
        let dir = try makeTemporaryDirectory(self)
        // 2x2 images, labels 0...24 style (classes = largest + 1), CRLF and a blank line.
        let text = "label,pixel1,pixel2,pixel3,pixel4\r\n3,0,10,200,255\r\n\r\n24, 1 ,2,3,4\r\n"
        try FileBytes.write(Array(text.utf8), to: dir + "/sign.csv")
        let data = try CSVPixels.load(path: dir + "/sign.csv")
        XCTAssertEqual(data.count, 2)
        XCTAssertEqual([data.channels, data.height, data.width], [1, 2, 2])
        XCTAssertEqual(data.labels, [3, 24])
        XCTAssertEqual(data.classCount, 25)
        XCTAssertEqual(data.pixels, [0, 10, 200, 255, 1, 2, 3, 4])
        XCTAssertEqual(data.source, dir + "/sign.csv")
        // gzip works as for IDX files; a label column elsewhere is found by name; a given shape.
        try FileBytes.write(Gzip.compress(Array("p1,p2,p3,LABEL,p4,p5,p6\n1,2,3,1,4,5,6\n".utf8)), to: dir + "/c.csv.gz")
        let wide = try CSVPixels.load(path: dir + "/c.csv.gz", height: 2, width: 3, classCount: 4)
        XCTAssertEqual(wide.labels, [1])
        XCTAssertEqual(wide.pixels, [1, 2, 3, 4, 5, 6])
        XCTAssertEqual([wide.height, wide.width, wide.classCount], [2, 3, 4])
        // No header: the first line is data.
        let bare = try CSVPixels.parse(Array("1,9\n0,8".utf8), file: "b.csv", name: "b")
        XCTAssertEqual(bare.labels, [1, 0])
        XCTAssertEqual(bare.pixels, [9, 8])
    }

    func testErrorsNameFileLineAndColumn() {
        func parse(_ text: String, height: Int? = nil, width: Int? = nil, classCount: Int? = nil) throws -> ImageDataset {
            try CSVPixels.parse(Array(text.utf8), file: "data/sign.csv", name: "t", height: height, width: width, classCount: classCount)
        }
        let header = "label,a,b,c,d\n"
        assertDataError(try parse(header + "1,2,3,4,5\n2,2,x3,4,5\n"), names: "data/sign.csv", ["line 3, column 3", "'x3' is not an integer"])
        assertDataError(try parse(header + "1,2,3,4,256\n"), names: "data/sign.csv", ["line 2, column 5", "pixel 256"])
        assertDataError(try parse(header + "1,2,3,4\n"), names: "data/sign.csv", ["line 2", "4 columns, expected 5"])
        assertDataError(try parse(header + "-1,2,3,4,5\n"), names: "data/sign.csv", ["line 2, column 1"])
        assertDataError(try parse(header + "1,2,3,4,5\n9,1,1,1,1\n", classCount: 5), names: "data/sign.csv", ["line 3", "label 9"])
        assertDataError(try parse("label,a,b,c\n1,2,3,4\n"), names: "data/sign.csv", ["3 pixel columns", "give the image height and width"])
        assertDataError(try parse(header + "1,2,3,4,5\n", height: 3, width: 3), names: "data/sign.csv", ["need 9"])
        assertDataError(try parse(header), names: "data/sign.csv", ["no data lines"])
        assertDataError(try parse(""), names: "data/sign.csv", ["empty CSV"])
    }
}
