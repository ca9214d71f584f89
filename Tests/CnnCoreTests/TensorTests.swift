import XCTest
import CnnCore

final class TensorTests: XCTestCase {
    func testStorageIsAlignedAndZeroed() {
        let t = Tensor(shape: [2, 3, 5, 7])
        XCTAssertEqual(t.count, 210)
        XCTAssertEqual(Int(bitPattern: t.data) % Tensor.alignment, 0)
        XCTAssertTrue(t.toArray().allSatisfy { $0 == 0 })
    }

    func testResizeReusesStorageWhenItFits() {
        let t = Tensor(shape: [4, 8])
        let before = t.data
        t.resize(to: [2, 8])
        XCTAssertEqual(t.data, before)
        XCTAssertEqual(t.shape, [2, 8])
        t.resize(to: [8, 8])
        XCTAssertEqual(t.count, 64)
    }
}
