import CnnCore
import CnnDistributed
import Foundation
import XCTest

/// In-process ranks: exact results for every collective at 1-4 ranks, and
/// failures that end quickly with the guilty rank named instead of hanging.
final class LocalWorldTests: XCTestCase {
    /// Runs `body` on worlds of 1, 2, 3 and 4 ranks.
    private func forEachWorldSize(timeout: TimeInterval = 20, _ body: @escaping (Communicator) throws -> Void) throws {
        for size in 1...4 {
            try LocalWorld.run(size: size, timeout: timeout, body)
        }
    }

    func testSelfTestPassesAtEveryWorldSize() throws {
        for size in 1...4 {
            let lock = NSLock()
            var reports: [Int: CommunicatorSelfTest.Report] = [:]
            try LocalWorld.run(size: size, timeout: 20) { comm in
                let report = try CommunicatorSelfTest.run(comm, largeCount: 1_000_003)
                lock.lock(); reports[comm.rank] = report; lock.unlock()
            }
            XCTAssertEqual(reports.count, size)
            for (rank, report) in reports {
                XCTAssertTrue(report.passed, "size \(size) rank \(rank): \(report.failures)")
                XCTAssertEqual(report.size, size)
            }
            let lines = reports[0]!.lines
            XCTAssertEqual(lines.count, size + 2)
            XCTAssertTrue(lines[0].hasPrefix("selftest: rank 0/\(size) on "), lines[0])
            XCTAssertEqual(lines.last, "selftest: \(size) \(size == 1 ? "rank" : "ranks") passed")
        }
    }

    func testAllreduceSumIsExactAndInRankOrder() throws {
        try forEachWorldSize { comm in
            let n = comm.size, r = comm.rank
            var floats = (0..<1001).map { Float(r + 1) * Float($0 % 9) }
            try comm.allreduceSum(&floats)
            XCTAssertEqual(floats, (0..<1001).map { Float(n * (n + 1) / 2) * Float($0 % 9) })

            // Values whose sum depends on the order: must equal the rank-order sum bit for bit.
            var odd: [Float] = [1e8 * Float(r % 2 == 0 ? 1 : -1) + 0.1 * Float(r), Float(r) / 3]
            try comm.allreduceSum(&odd)
            var expected: [Float] = [0, 0]
            for q in 0..<n {
                expected[0] += 1e8 * Float(q % 2 == 0 ? 1 : -1) + 0.1 * Float(q)
                expected[1] += Float(q) / 3
            }
            XCTAssertEqual(odd, expected)

            var doubles = (0..<17).map { Double(r) - Double($0) }
            try comm.allreduceSum(&doubles)
            XCTAssertEqual(doubles, (0..<17).map { Double(n * (n - 1) / 2) - Double(n * $0) })

            var empty: [Float] = []
            try comm.allreduceSum(&empty)
            XCTAssertEqual(try comm.allreduceSum(2.5), 2.5 * Double(n))
        }
    }

    func testReduceBroadcastAllgatherMaxMinBarrier() throws {
        try forEachWorldSize { comm in
            let n = comm.size, r = comm.rank
            for root in 0..<n {
                var buffer: [Float] = [Float(r), 1]
                try buffer.withUnsafeMutableBufferPointer { try comm.reduceSum($0, root: root) }
                XCTAssertEqual(buffer, r == root ? [Float(n * (n - 1) / 2), Float(n)] : [Float(r), 1])

                var bytes: [UInt8] = r == root ? [UInt8(root), 7, 9] : [0, 0, 0]
                try comm.broadcast(&bytes, root: root)
                XCTAssertEqual(bytes, [UInt8(root), 7, 9])
                XCTAssertEqual(try comm.broadcast("from \(r)", root: root), "from \(root)")
            }
            XCTAssertEqual(try comm.allgather(Int64(10 * r)), (0..<n).map { Int64(10 * $0) })
            XCTAssertEqual(try comm.allreduceMax(Double(-r)), 0)
            XCTAssertEqual(try comm.allreduceMin(Double(-r)), Double(1 - n))
            for _ in 0..<5 { try comm.barrier() }
        }
    }

    func testNonBlockingBucketsInFlightTogether() throws {
        try forEachWorldSize { comm in
            let n = comm.size, r = comm.rank
            let counts = [3, 0, 1000, 1, 70_000, 17]
            let buckets = counts.map { UnsafeMutableBufferPointer<Float>.allocate(capacity: $0) }
            defer { buckets.forEach { $0.deallocate() } }
            for (b, bucket) in buckets.enumerated() {
                for i in 0..<bucket.count { bucket[i] = Float(r * 100 + b + i % 3) }
            }
            var requests: [CollectiveRequest] = []
            for bucket in buckets.prefix(4) { requests.append(try comm.startAllreduceSum(bucket)) }
            // A blocking collective while requests are in flight keeps its place in the order.
            XCTAssertEqual(try comm.allgather(Int64(r)), (0..<n).map(Int64.init))
            for bucket in buckets.dropFirst(4) { requests.append(try comm.startAllreduceSum(bucket)) }
            // Ranks complete in different orders: even ranks wait backwards, odd ranks poll forwards.
            if r % 2 == 0 {
                for request in requests.reversed() { try request.wait() }
            } else {
                for request in requests { while try !request.test() { usleep(50) } }
            }
            for request in requests {
                XCTAssertTrue(try request.test())
                try request.wait()
            }
            for (b, bucket) in buckets.enumerated() {
                for i in 0..<bucket.count where bucket[i] != Float(100 * n * (n - 1) / 2 + n * (b + i % 3)) {
                    XCTFail("rank \(r) bucket \(b) element \(i) = \(bucket[i])")
                    break
                }
            }
        }
    }

    func testRunRethrowsTheFailedRanksErrorAndOthersFailFast() throws {
        struct Boom: Error, CustomStringConvertible { var description: String { "boom in rank 2" } }
        let lock = NSLock()
        var otherErrors: [Int: String] = [:]
        let start = Date()
        XCTAssertThrowsError(try LocalWorld.run(size: 4, timeout: 2) { comm in
            do {
                try comm.barrier()
                if comm.rank == 2 { throw Boom() }
                var x: [Float] = [1, 2, 3]
                try comm.allreduceSum(&x)
            } catch let error as CnnError {
                lock.lock(); otherErrors[comm.rank] = "\(error)"; lock.unlock()
                throw error
            }
        }) { error in
            XCTAssertTrue(error is Boom, "run should rethrow the original error, got \(error)")
        }
        XCTAssertLessThan(Date().timeIntervalSince(start), 1.5, "other ranks should fail at once, not time out")
        XCTAssertEqual(Set(otherErrors.keys), [0, 1, 3])
        for (rank, message) in otherErrors {
            XCTAssertTrue(message.contains("rank \(rank): allreduceSum failed"), message)
            XCTAssertTrue(message.contains("rank 2 failed: boom in rank 2"), message)
        }
    }

    func testSkippedCollectiveTimesOutNamingTheMissingRank() throws {
        let lock = NSLock()
        var messages: [Int: String] = [:]
        let start = Date()
        XCTAssertThrowsError(try LocalWorld.run(size: 3, timeout: 1) { comm in
            if comm.rank == 1 {
                Thread.sleep(forTimeInterval: 3)  // skips the barrier, still alive past the deadline
                return
            }
            do { try comm.barrier() } catch {
                lock.lock(); messages[comm.rank] = "\(error)"; lock.unlock()
                throw error
            }
        }) { error in
            XCTAssertTrue("\(error)".contains("rank 1 (host "), "\(error)")
            XCTAssertTrue("\(error)".contains("has not reached collective #0 (barrier, step 0) within 1 s "
                                              + "(rank 1 has reached no collective)"), "\(error)")
        }
        XCTAssertLessThan(Date().timeIntervalSince(start), 5)
        XCTAssertEqual(Set(messages.keys), [0, 2])
        for message in messages.values { XCTAssertTrue(message.contains("has not reached collective #0"), message) }
    }

    func testRankThatReturnsEarlyIsNamedWithoutWaitingForTheDeadline() throws {
        let start = Date()
        XCTAssertThrowsError(try LocalWorld.run(size: 4, timeout: 30) { comm in
            if comm.rank == 3 { return }
            var x: [Double] = [1]
            try comm.allreduceSum(&x)
        }) { error in
            XCTAssertTrue("\(error)".contains("returned without joining collective #0 (allreduce of 1 doubles, step 0)"), "\(error)")
        }
        XCTAssertLessThan(Date().timeIntervalSince(start), 5)
    }

    func testMismatchedCollectivesNameBothRanks() throws {
        let localHost = SingleProcessCommunicator().processorName
        XCTAssertThrowsError(try LocalWorld.run(size: 2, timeout: 5) { comm in
            if comm.rank == 0 {
                var x: [Float] = [1, 2]
                try comm.allreduceSum(&x)
            } else {
                Thread.sleep(forTimeInterval: 0.05)
                var x: [Float] = [1, 2, 3]
                try comm.allreduceSum(&x)
            }
        }) { error in
            // Rank 1 normally arrives second and reports; under load the order can flip.
            let message = "\(error)"
            XCTAssertTrue(message.contains("collective schedule mismatch at collective #0: "), message)
            XCTAssertTrue(message.contains("rank 1 (host \(localHost)) called allreduce of 3 floats (step 0), "
                                           + "but rank 0 (host \(localHost)) called allreduce of 2 floats (step 0)"), message)
        }
    }

    func testBadRootAndBadSizeAreRejected() throws {
        XCTAssertThrowsError(try LocalWorld.run(size: 0) { _ in })
        XCTAssertThrowsError(try LocalWorld.run(size: 2, timeout: 5) { comm in
            var x: [UInt8] = [0]
            try comm.broadcast(&x, root: 2)
        }) { error in
            XCTAssertTrue("\(error)".contains("root 2 is not a rank of this 2-rank world"), "\(error)")
        }
    }

    func testStatisticsAllreducerRecordsFailureInsteadOfThrowing() throws {
        try LocalWorld.run(size: 3, timeout: 5) { comm in
            let reducer = StatisticsAllreducer(communicator: comm)
            var stats: [Float] = [Float(comm.rank), 1]
            stats.withUnsafeMutableBufferPointer { reducer.allreduceSum($0) }
            try reducer.checkFailure()
            XCTAssertEqual(stats, [3, 3])
        }
        let single = StatisticsAllreducer(communicator: SingleProcessCommunicator())
        var stats: [Float] = [4]
        stats.withUnsafeMutableBufferPointer { single.allreduceSum($0) }
        XCTAssertNil(single.failure)
        XCTAssertEqual(stats, [4])
    }

    func testWorldChoiceFollowsLauncherEnvironment() {
        XCTAssertFalse(launchedByMPI(environment: [:]))
        XCTAssertTrue(launchedByMPI(environment: ["OMPI_COMM_WORLD_SIZE": "4"]))
        XCTAssertTrue(launchedByMPI(environment: ["PMI_RANK": "0"]))
        XCTAssertTrue(launchedByMPI(environment: ["PMIX_RANK": "1"]))
    }
}
