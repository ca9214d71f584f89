import CnnCore
import Foundation

/// A communicator self-check with exact expected values, run by every rank of
/// a world (`cnn-dist selftest`, and the tests).
///
/// Every test value is a small integer or half-integer, so each sum is exact
/// in Float/Double whatever order MPI adds in: a wrong element, a missing
/// rank or a rank added twice shows as an exact mismatch.
public enum CommunicatorSelfTest {
    /// The checks, in the order they run, as printed in the per-rank line.
    public static let checkNames = ["allreduce", "iallreduce", "bf16 allreduce", "reduce", "broadcast", "allgather", "max/min", "barrier"]

    /// The outcome, the same on every rank.
    public struct Report {
        /// World size.
        public var size: Int
        /// Each rank's processor name, by rank.
        public var hosts: [String]
        /// Each rank's first failed check ("" if it passed), by rank.
        public var failures: [String]
        /// Seconds of the slowest rank in the large allreduce.
        public var largeAllreduceSeconds: Double
        /// Element count of the large allreduce.
        public var largeCount: Int

        /// True if every rank passed every check.
        public var passed: Bool { failures.allSatisfy(\.isEmpty) }
        /// The ranks that failed a check.
        public var failedRanks: [Int] { failures.indices.filter { !failures[$0].isEmpty } }

        /// The lines rank 0 prints: one per rank, then the summary.
        public var lines: [String] {
            var lines = (0..<size).map { r in
                failures[r].isEmpty
                    ? "selftest: rank \(r)/\(size) on \(hosts[r]) ok (\(CommunicatorSelfTest.checkNames.joined(separator: ", ")))"
                    : "selftest: rank \(r)/\(size) on \(hosts[r]) FAILED: \(failures[r])"
            }
            lines.append("selftest: \(largeCount)-float allreduce took \(String(format: "%.3f", largeAllreduceSeconds)) s")
            lines.append(passed
                ? "selftest: \(size) \(size == 1 ? "rank" : "ranks") passed"
                : "selftest: \(failedRanks.count) of \(size) ranks failed (ranks \(failedRanks.map(String.init).joined(separator: ", ")))")
            return lines
        }
    }

    /// Runs every check on this rank. Every rank of the world must call it.
    ///
    /// - Parameter largeCount: element count of the large Float allreduce (10 M by default).
    /// - Returns: the world's report (the same on every rank). Mismatched values
    ///   are reported, not thrown, so that all ranks still reach the end together.
    /// - Throws: communication errors.
    public static func run(_ comm: Communicator, largeCount: Int = 10_000_000) throws -> Report {
        let r = comm.rank, n = comm.size
        var failure = ""
        func fail(_ message: String) { if failure.isEmpty { failure = message } }

        // allreduce, Float: rank r holds r*1000 + (i % 17 + 1); the sum is 1000*n(n-1)/2 + n*(i % 17 + 1).
        var largeSeconds = 0.0
        for count in [0, 1, 7, 1023, 4097, 65_537, largeCount] {
            var buffer = [Float](unsafeUninitializedCapacity: count) { b, initialized in
                for i in 0..<count { b[i] = Float(r * 1000 + i % 17 + 1) }
                initialized = count
            }
            let start = DispatchTime.now().uptimeNanoseconds
            try comm.allreduceSum(&buffer)
            if count == largeCount { largeSeconds = Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9 }
            if let bad = firstMismatch(buffer, { Float(1000 * n * (n - 1) / 2 + n * ($0 % 17 + 1)) }) {
                fail("allreduce Float count \(count): \(bad)")
            }
        }
        // allreduce, Double: rank r holds r/2 + (i % 11); the sum is n(n-1)/4 + n*(i % 11).
        for count in [0, 1, 7, 1023, 100_003] {
            var buffer = (0..<count).map { Double(r) * 0.5 + Double($0 % 11) }
            try comm.allreduceSum(&buffer)
            if let bad = firstMismatch(buffer, { Double(n * (n - 1)) * 0.25 + Double(n * ($0 % 11)) }) {
                fail("allreduce Double count \(count): \(bad)")
            }
        }
        // allreduce, Float, values whose sums round: every rank sums in rank order (as LocalWorld;
        // on MPI the message allreduce from 32K elements), so the order shows in the bits.
        func roundingInput(_ rank: Int, _ i: Int) -> Float {
            Float(sin(Double(i) * 0.37 + Double(rank) * 1.9) * pow(10, Double((i * 5 + rank * 7) % 9) - 4))
        }
        for count in [40_001, 1 << 21] {
            var rounding = (0..<count).map { roundingInput(r, $0) }
            try comm.allreduceSum(&rounding)
            let expected: (Int) -> Float = { i in
                var acc = roundingInput(0, i)
                for q in 1..<max(1, n) { acc += roundingInput(q, i) }
                return acc
            }
            if let bad = firstMismatch(rounding, expected) { fail("allreduce Float in rank order, count \(count): \(bad)") }
        }
        let largeMax = try comm.allreduceMax(largeSeconds)

        // iallreduce: several buckets in flight at once, with a blocking collective
        // among them, completed by test() polling and by wait() in reverse order.
        // Bucket b on rank r holds (r+1)*(b+1) + i % 5; the sum is (b+1)*n(n+1)/2 + n*(i % 5).
        let bucketCounts = [1, 100, 4099, 0, 65_536, 3]
        var buckets = bucketCounts.enumerated().map { b, count in
            UnsafeMutableBufferPointer<Float>.allocate(capacity: count)
        }
        defer { for bucket in buckets { bucket.deallocate() } }
        for (b, bucket) in buckets.enumerated() {
            for i in 0..<bucket.count { bucket[i] = Float((r + 1) * (b + 1) + i % 5) }
        }
        var requests: [CollectiveRequest] = []
        for b in 0..<3 { requests.append(try comm.startAllreduceSum(buckets[b])) }
        let gathered = try comm.allgather(Int64(r))
        if gathered != (0..<n).map(Int64.init) { fail("allgather among non-blocking allreduces: got \(gathered)") }
        for b in 3..<buckets.count { requests.append(try comm.startAllreduceSum(buckets[b])) }
        var polls = 0
        while try !requests[0].test() {
            polls += 1
            if polls % 1000 == 0 { usleep(100) }
        }
        for request in requests.reversed() { try request.wait() }
        _ = try requests[1].test()  // completed requests stay complete
        for (b, bucket) in buckets.enumerated() {
            if let bad = firstMismatch(Array(bucket), { Float((b + 1) * n * (n + 1) / 2 + n * ($0 % 5)) }) {
                fail("iallreduce bucket \(b) count \(bucket.count): \(bad)")
            }
        }
        buckets = []

        // bf16 allreduce: values that do not sum exactly, so the result checks the rounding of
        // each rank's values, the fp32 sum in rank order and the one rounding at the end, bit for
        // bit, against the reference computed here from every rank's inputs. Several in flight at
        // once (counts below the world size leave ranks empty shares), an fp32 one among them,
        // waited in reverse order.
        func bf16Input(_ rank: Int, _ bucket: Int, _ i: Int) -> Float {
            Float(rank + 1) * 0.318_309_9 * Float(i % 97 + 1) - 7.1 + Float(bucket) * 0.013 + Float(i % 13) * 1.7e-3
        }
        let bf16Counts = [1, 0, n > 1 ? n - 1 : 1, 1001, 65_537]
        let bf16Buffers = bf16Counts.map { UnsafeMutableBufferPointer<Float>.allocate(capacity: $0) }
        let plain = UnsafeMutableBufferPointer<Float>.allocate(capacity: 33)
        defer { for buffer in bf16Buffers + [plain] { buffer.deallocate() } }
        for (b, buffer) in bf16Buffers.enumerated() { for i in buffer.indices { buffer[i] = bf16Input(r, b, i) } }
        plain.initialize(repeating: Float(r + 1))
        var bf16Requests: [CollectiveRequest] = []
        for (b, buffer) in bf16Buffers.enumerated() {
            bf16Requests.append(try comm.startAllreduceSumBF16(buffer))
            if b == 1 { bf16Requests.append(try comm.startAllreduceSum(plain)) }
        }
        for request in bf16Requests.reversed() { try request.wait() }
        if let bad = firstMismatch(Array(plain), { _ in Float(n * (n + 1) / 2) }) { fail("allreduce among bf16 allreduces: \(bad)") }
        for (b, buffer) in bf16Buffers.enumerated() {
            let expected: (Int) -> Float = { i in
                var acc = bf16Rounded(bf16Input(0, b, i))
                for q in 1..<max(1, n) { acc += bf16Rounded(bf16Input(q, b, i)) }
                return bf16Rounded(acc)
            }
            if let bad = firstMismatch(Array(buffer), expected) { fail("bf16 allreduce bucket \(b) count \(buffer.count): \(bad)") }
        }

        // reduce to a root: the root gets the sum, the others keep their values.
        for (root, count) in [(n - 1, 1001), (0, 5)] {
            var buffer = (0..<count).map { Float(r * 1000 + $0 % 17 + 1) }
            try buffer.withUnsafeMutableBufferPointer { try comm.reduceSum($0, root: root) }
            let bad = r == root
                ? firstMismatch(buffer, { Float(1000 * n * (n - 1) / 2 + n * ($0 % 17 + 1)) })
                : firstMismatch(buffer, { Float(r * 1000 + $0 % 17 + 1) })
            if let bad { fail("reduceSum Float root \(root): \(bad)") }
        }
        var doubles = (0..<9).map { Double(r) * 0.5 + Double($0) }
        try doubles.withUnsafeMutableBufferPointer { try comm.reduceSum($0, root: 0) }
        if let bad = r == 0
            ? firstMismatch(doubles, { Double(n * (n - 1)) * 0.25 + Double(n * $0) })
            : firstMismatch(doubles, { Double(r) * 0.5 + Double($0) }) {
            fail("reduceSum Double root 0: \(bad)")
        }

        // broadcast from the first and the last rank.
        for root in Set([0, n - 1]).sorted() {
            for count in [0, 1000, 1 << 20] {
                var bytes = (0..<count).map { r == root ? UInt8(truncatingIfNeeded: $0 &* 7 &+ root) : 0xEE }
                try comm.broadcast(&bytes, root: root)
                if let bad = firstMismatch(bytes, { UInt8(truncatingIfNeeded: $0 &* 7 &+ root) }) {
                    fail("broadcast root \(root) count \(count): \(bad)")
                }
            }
        }

        // allgather of control values, including the extremes of Int64.
        let squares = try comm.allgather(Int64(r * r + 12345))
        if squares != (0..<n).map({ Int64($0 * $0 + 12345) }) { fail("allgather: got \(squares)") }
        let extremes = try comm.allgather(r % 2 == 0 ? Int64.min + Int64(r) : Int64.max - Int64(r))
        if extremes != (0..<n).map({ $0 % 2 == 0 ? Int64.min + Int64($0) : Int64.max - Int64($0) }) {
            fail("allgather extremes: got \(extremes)")
        }

        // max / min.
        let maxValue = try comm.allreduceMax(Double(r) * 1.5 - 2)
        let minValue = try comm.allreduceMin(Double(r) * 1.5 - 2)
        if maxValue != Double(n - 1) * 1.5 - 2 { fail("allreduceMax: got \(maxValue)") }
        if minValue != -2 { fail("allreduceMin: got \(minValue)") }
        let total = try comm.allreduceSum(Double(r + 1))
        if total != Double(n * (n + 1) / 2) { fail("allreduceSum scalar: got \(total)") }

        // barrier, several times.
        for _ in 0..<3 { try comm.barrier() }

        // Everyone learns every rank's host and first failure.
        var hosts: [String] = []
        var failures: [String] = []
        for root in 0..<n {
            hosts.append(try comm.broadcast(comm.processorName, root: root, maxBytes: 256))
            failures.append(try comm.broadcast(failure, root: root, maxBytes: 1024))
        }
        return Report(size: n, hosts: hosts, failures: failures, largeAllreduceSeconds: largeMax, largeCount: largeCount)
    }

    /// "element i is x, expected y" for the first element that differs from `expected(i)`, or nil.
    static func firstMismatch<T: Equatable>(_ values: [T], _ expected: (Int) -> T) -> String? {
        for i in values.indices where values[i] != expected(i) {
            return "element \(i) is \(values[i]), expected \(expected(i))"
        }
        return nil
    }
}
