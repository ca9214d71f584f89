import XCTest
import CnnCore
import CnnTraining

final class ClippingTests: XCTestCase {
    func testClipsThreeFourToUnitNorm() throws {
        // ‖[3, 4]‖ = 5; scale = 1/(5 + 1e-6) → [0.6, 0.8] (to 1e-6).
        let g = Tensor(shape: [2], values: [3, 4])
        let norm = try GradientClipping(maxNorm: 1).apply(g)
        XCTAssertEqual(norm, 5, accuracy: 1e-12)
        XCTAssertEqual(g[0], 0.6, accuracy: 1e-6)
        XCTAssertEqual(g[1], 0.8, accuracy: 1e-6)
    }

    func testLeavesSmallGradientsUntouched() throws {
        // ‖[3, 4]‖ = 5 < 10: scale ≈ 2 ≥ 1, no change at all.
        let g = Tensor(shape: [2], values: [3, 4])
        XCTAssertEqual(try GradientClipping(maxNorm: 10).apply(g), 5, accuracy: 1e-12)
        XCTAssertEqual(g.toArray(), [3, 4])
    }

    func testNormOverManyElementsInDouble() {
        // 1001 elements of 0.5 (odd count exercises the tail): √(1001·0.25) = √250.25 = 15.8192920...
        var v = [Float](repeating: 0.5, count: 1001)
        let norm = v.withUnsafeMutableBufferPointer { clipGradientNorm($0.baseAddress!, count: $0.count, maxNorm: 1) }
        XCTAssertEqual(norm, 250.25.squareRoot(), accuracy: 1e-9)
        XCTAssertEqual(v[1000], 0.5 / 15.819292, accuracy: 1e-6)
    }

    func testNonFiniteNormLeavesGradientsAlone() {
        var v: [Float] = [1, .nan, 2]
        let norm = v.withUnsafeMutableBufferPointer { clipGradientNorm($0.baseAddress!, count: 3, maxNorm: 1) }
        XCTAssertTrue(norm.isNaN)
        XCTAssertEqual(v[0], 1)
        XCTAssertEqual(v[2], 2)
    }

    func testFirstNonFinite() {
        var v = [Float](repeating: 1, count: 3000)
        XCTAssertNil(v.withUnsafeBufferPointer { firstNonFinite($0.baseAddress!, count: $0.count) })
        v[2500] = .nan
        v[2900] = .infinity
        XCTAssertEqual(v.withUnsafeBufferPointer { firstNonFinite($0.baseAddress!, count: $0.count) }, 2500)
        v[5] = -.infinity
        XCTAssertEqual(v.withUnsafeBufferPointer { firstNonFinite($0.baseAddress!, count: $0.count) }, 5)
        let t = Tensor(shape: [3], values: [0, .greatestFiniteMagnitude, .infinity])
        XCTAssertEqual(firstNonFinite(t), 2)
    }

    func testValidation() {
        XCTAssertThrowsError(try GradientClipping(maxNorm: 0)) { error in
            XCTAssertEqual(error as? CnnError,
                           .invalidConfig(field: "clip_grad_norm", value: "0.0", allowed: "clip_grad_norm > 0"))
        }
        XCTAssertThrowsError(try GradientClipping(maxNorm: .infinity))
    }
}
