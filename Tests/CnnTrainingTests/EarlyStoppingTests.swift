import XCTest
import CnnCore
import CnnTraining

final class EarlyStoppingTests: XCTestCase {
    func testMinModeWithDelta() throws {
        // patience 2, min_delta 0.1, lower is better:
        // 1.0  first → best 1.0, bad 0
        // 0.95 not < 0.9 → bad 1
        // 0.85 < 0.9 → best 0.85, bad 0
        // 0.84 not < 0.75 → bad 1
        // 0.9  → bad 2 → stop
        var es = try EarlyStopping(patience: 2, minDelta: 0.1, mode: .min)
        let metrics: [Double] = [1.0, 0.95, 0.85, 0.84, 0.9]
        let stops = metrics.map { es.update($0) }
        XCTAssertEqual(stops, [false, false, false, false, true])
        XCTAssertEqual(es.best, 0.85)
        XCTAssertEqual(es.badEpochs, 2)
    }

    func testMaxModeAndNaN() throws {
        // patience 1: 70 best; 72 best; NaN is a bad evaluation → stop.
        var es = try EarlyStopping(patience: 1, mode: .max)
        XCTAssertFalse(es.update(70))
        XCTAssertFalse(es.update(72))
        XCTAssertTrue(es.update(.nan))
        XCTAssertEqual(es.best, 72)
    }

    func testEqualIsNotImprovement() throws {
        var es = try EarlyStopping(patience: 3, mode: .max)
        es.update(0.5)
        es.update(0.5)
        XCTAssertEqual(es.badEpochs, 1)
        XCTAssertFalse(es.shouldStop)
    }

    func testStateRestoreContinuesIdentically() throws {
        var a = try EarlyStopping(patience: 3, minDelta: 0.01, mode: .min)
        for m in [2.0, 1.5, 1.6] { a.update(m) }
        let saved = a.state
        let data = try JSONEncoder().encode(saved)
        var b = try EarlyStopping(patience: 3, minDelta: 0.01, mode: .min)
        b.state = try JSONDecoder().decode(EarlyStopping.State.self, from: data)
        XCTAssertEqual(b.state, EarlyStopping.State(best: 1.5, badEpochs: 1))
        for m in [1.495, 1.7, 1.2, 1.3, 1.4, 1.5] {
            XCTAssertEqual(a.update(m), b.update(m))
        }
        XCTAssertEqual(a, b)
        XCTAssertTrue(b.shouldStop)
    }

    func testValidation() {
        XCTAssertThrowsError(try EarlyStopping(patience: -1)) { error in
            guard case let CnnError.invalidConfig(field, _, _) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(field, "early_stopping.patience")
        }
        XCTAssertThrowsError(try EarlyStopping(patience: 1, minDelta: -0.5)) { error in
            guard case let CnnError.invalidConfig(field, _, _) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(field, "early_stopping.min_delta")
        }
    }
}
