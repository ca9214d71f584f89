import Foundation
import XCTest
import CnnCore
import CnnDistributed

/// The bf16 allreduce (`startAllreduceSumBF16`): every rank ends with the bits of the reference
/// (each rank's values rounded to bf16, summed in fp32 in rank order, rounded once), in every
/// implementation. The MPI one is checked the same way by `cnn-dist selftest` under mpirun
/// (MPISelfTestTests), whose "bf16 allreduce" check compares against this reference too.
final class BF16AllreduceTests: XCTestCase {
    /// Rank r's element i: a spread of magnitudes and signs whose bf16 sums round (not exact),
    /// plus special values: negative zeros on every rank (the sum stays -0), a bf16 tie, values
    /// that overflow bf16 only when summed, and a subnormal (bf16Bits flushes it to zero).
    static func input(rank r: Int, index i: Int) -> Float {
        switch i % 50 {
        case 0: return -0.0
        case 1: return Float(bitPattern: 0x3F80_8000)  // 1 + 2^-8: a tie between two bf16 values
        case 2: return 3.0e38
        case 3: return Float.leastNonzeroMagnitude * Float(r + 1)
        default:
            let x = sin(Double(i) * 0.7 + Double(r) * 1.3) * pow(10, Double((i * 7 + r * 3) % 9) - 4)
            return Float(x)
        }
    }

    /// The reference, written out separately from `sumBF16InRankOrder`.
    static func reference(ranks: Int, index i: Int) -> Float {
        var acc = bf16Rounded(input(rank: 0, index: i))
        for r in 1..<ranks { acc += bf16Rounded(input(rank: r, index: i)) }
        return bf16Rounded(acc)
    }

    static let counts = [0, 1, 2, 3, 50, 4095, 4096, 4097, 10_001]

    /// Runs the counts' allreduces on `comm` (all started before any is waited, an fp32
    /// allreduce among them, waited in reverse) and checks every element's bits.
    static func check(_ comm: Communicator, file: StaticString = #filePath, line: UInt = #line) throws {
        let n = comm.size
        let buffers = counts.map { UnsafeMutableBufferPointer<Float>.allocate(capacity: $0) }
        let plain = UnsafeMutableBufferPointer<Float>.allocate(capacity: 5)
        defer { for b in buffers + [plain] { b.deallocate() } }
        for b in buffers { for i in b.indices { b[i] = input(rank: comm.rank, index: i) } }
        plain.initialize(repeating: 1)
        var requests: [CollectiveRequest] = []
        for (k, b) in buffers.enumerated() {
            requests.append(try comm.startAllreduceSumBF16(b))
            if k == 2 { requests.append(try comm.startAllreduceSum(plain)) }
        }
        for r in requests.reversed() { try r.wait() }
        XCTAssertEqual(Array(plain), Array(repeating: Float(n), count: 5), file: file, line: line)
        for b in buffers {
            var bad = 0
            for i in b.indices where b[i].bitPattern != reference(ranks: n, index: i).bitPattern {
                if bad == 0 {
                    XCTFail("rank \(comm.rank)/\(n), count \(b.count): element \(i) is \(b[i]), expected \(reference(ranks: n, index: i))",
                            file: file, line: line)
                }
                bad += 1
            }
        }
    }

    /// The check is not vacuous: the reference differs from a plain fp32 sum in most elements,
    /// keeps -0, rounds the tie to even, overflows to infinity and flushes the subnormal.
    func testReferenceRoundsAsIntended() {
        var differs = 0
        for i in 0..<10_001 {
            var fp32: Float = 0
            for r in 0..<3 { fp32 += Self.input(rank: r, index: i) }
            if Self.reference(ranks: 3, index: i) != fp32 { differs += 1 }
        }
        XCTAssertGreaterThan(differs, 8_000)
        XCTAssertEqual(Self.reference(ranks: 2, index: 0).bitPattern, (-Float(0)).bitPattern)
        XCTAssertEqual(bf16Rounded(Self.input(rank: 0, index: 1)), 1)  // tie to even
        XCTAssertEqual(Self.reference(ranks: 2, index: 2), .infinity)
        XCTAssertEqual(Self.reference(ranks: 3, index: 3), 0)
    }

    func testLocalWorldMatchesTheReference() throws {
        for size in [2, 3] {
            try LocalWorld.run(size: size, timeout: 30) { comm in try Self.check(comm) }
        }
    }

    func testOneRankIsTheBufferRoundedToBF16() throws {
        try Self.check(SingleProcessCommunicator())
        try LocalWorld.run(size: 1, timeout: 30) { comm in try Self.check(comm) }
    }

    /// A communicator without its own bf16 allreduce gets the protocol's default (a byte
    /// allgather, every rank summing), with the same bits.
    func testDefaultImplementationMatchesTheReference() throws {
        try LocalWorld.run(size: 3, timeout: 30) { comm in try Self.check(WithoutBF16(comm)) }
    }

    /// The schedule check knows the bf16 allreduce from an fp32 one of the same count.
    func testBF16AndFP32AllreduceAtTheSamePositionAreAMismatch() throws {
        let host = SingleProcessCommunicator().processorName
        XCTAssertThrowsError(try LocalWorld.run(size: 2, timeout: 5) { comm in
            var x: [Float] = [1, 2, 3]
            if comm.rank == 0 {
                try comm.allreduceSumBF16(&x)
            } else {
                Thread.sleep(forTimeInterval: 0.05)
                try comm.allreduceSum(&x)
            }
        }) { error in
            let message = "\(error)"
            XCTAssertTrue(message.contains("collective schedule mismatch at collective #0: "), message)
            // One rank each side: the lower rank is the reference, whichever rank reports.
            XCTAssertTrue(message.contains("rank 1 (host \(host)) called allreduce of 3 floats (step 0), "
                                           + "but rank 0 (host \(host)) called bf16 allreduce of 3 floats (step 0)"), message)
        }
        XCTAssertEqual(Collective(sequence: 4, kind: .allreduceBF16, count: 10, step: 2).label,
                       "#4 (bf16 allreduce of 10 floats, step 2)")
        XCTAssertFalse(Collective(sequence: 0, kind: .allreduceBF16, count: 10, step: 0)
            .sameSchedule(as: Collective(sequence: 0, kind: .allreduceFloat, count: 10, step: 0)))
    }
}

/// Forwards everything but the bf16 allreduce, so the protocol extension's default is used.
private final class WithoutBF16: Communicator {
    let base: Communicator
    init(_ base: Communicator) { self.base = base }
    var rank: Int { base.rank }
    var size: Int { base.size }
    var processorName: String { base.processorName }
    func allreduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws { try base.allreduceSum(buffer) }
    func allreduceSum(_ buffer: UnsafeMutableBufferPointer<Double>) throws { try base.allreduceSum(buffer) }
    func startAllreduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws -> CollectiveRequest { try base.startAllreduceSum(buffer) }
    func reduceSum(_ buffer: UnsafeMutableBufferPointer<Float>, root: Int) throws { try base.reduceSum(buffer, root: root) }
    func reduceSum(_ buffer: UnsafeMutableBufferPointer<Double>, root: Int) throws { try base.reduceSum(buffer, root: root) }
    func broadcast(_ bytes: UnsafeMutableRawBufferPointer, root: Int) throws { try base.broadcast(bytes, root: root) }
    func barrier() throws { try base.barrier() }
    func allgather(_ value: Int64) throws -> [Int64] { try base.allgather(value) }
    func allgather(_ bytes: UnsafeRawBufferPointer, into gathered: UnsafeMutableRawBufferPointer) throws {
        try base.allgather(bytes, into: gathered)
    }
    func allreduceMax(_ value: Double) throws -> Double { try base.allreduceMax(value) }
    func allreduceMin(_ value: Double) throws -> Double { try base.allreduceMin(value) }
}
