import CnnCore
import CnnDistributed
import Foundation
import XCTest

/// The byte allgather (and its string form) on in-process worlds of 1-4 ranks,
/// the one-rank communicator, and the broadcast-based default other
/// communicators inherit. The MPI implementation runs in `cnn-dist doctor`
/// under mpirun (MPISelfTestTests).
final class AllgatherBytesTests: XCTestCase {
    /// Rank r's bytes: `count` bytes of r * 16 + i.
    private static func bytes(rank: Int, count: Int) -> [UInt8] { (0..<count).map { UInt8((rank * 16 + $0) & 0xFF) } }

    private static func check(_ comm: Communicator, count: Int) throws {
        let mine = bytes(rank: comm.rank, count: count)
        var all = [UInt8](repeating: 0xEE, count: count * comm.size)
        try mine.withUnsafeBytes { src in try all.withUnsafeMutableBytes { try comm.allgather(src, into: $0) } }
        let expected = (0..<comm.size).flatMap { bytes(rank: $0, count: count) }
        guard all == expected else {
            throw CnnError.communication(rank: comm.rank, call: "allgather", reason: "got \(all), expected \(expected)")
        }
    }

    func testBytesAndStringsOnLocalWorlds() throws {
        for size in 1...4 {
            try LocalWorld.run(size: size, timeout: 20) { comm in
                for count in [0, 1, 7, 4096] { try Self.check(comm, count: count) }
                let strings = try comm.allgather("rank \(comm.rank) é" + String(repeating: "x", count: comm.rank))
                let expected = (0..<comm.size).map { "rank \($0) é" + String(repeating: "x", count: $0) }
                guard strings == expected else {
                    throw CnnError.communication(rank: comm.rank, call: "allgather(String)", reason: "\(strings)")
                }
            }
        }
    }

    func testSingleProcessCopiesAndLongStringsAreCutAtACharacterBoundary() throws {
        let comm = SingleProcessCommunicator()
        try Self.check(comm, count: 5)
        // "éé" is 4 bytes; at most 3 keeps one whole "é" rather than half of the second.
        XCTAssertEqual(try comm.allgather("éé", maxBytes: 3), ["é"])
        XCTAssertEqual(try comm.allgather("", maxBytes: 3), [""])
    }

    func testWrongOutputSizeAndMismatchedCountsAreErrors() throws {
        let comm = SingleProcessCommunicator()
        var small = [UInt8](repeating: 0, count: 3)
        XCTAssertThrowsError(try [UInt8](repeating: 1, count: 4).withUnsafeBytes { src in
            try small.withUnsafeMutableBytes { try comm.allgather(src, into: $0) }
        }) { XCTAssertTrue("\($0)".contains("expected 1 ranks x 4 bytes"), "\($0)") }

        XCTAssertThrowsError(try LocalWorld.run(size: 2, timeout: 5) { comm in
            let mine = [UInt8](repeating: 1, count: comm.rank == 0 ? 4 : 8)
            var all = [UInt8](repeating: 0, count: mine.count * 2)
            try mine.withUnsafeBytes { src in try all.withUnsafeMutableBytes { try comm.allgather(src, into: $0) } }
        }) {
            XCTAssertTrue("\($0)".contains("collective schedule mismatch at collective #0: rank 1 (host "), "\($0)")
            XCTAssertTrue("\($0)".contains("called allgather of 8 bytes per rank (step 0), but rank 0 (host "), "\($0)")
        }
    }

    /// A communicator without its own byte allgather gets the protocol's default (one broadcast per rank).
    func testDefaultImplementationThroughBroadcasts() throws {
        try LocalWorld.run(size: 3, timeout: 20) { comm in
            try Self.check(BroadcastOnly(comm), count: 9)
        }
    }
}

/// Forwards everything but the byte allgather, so the protocol extension's default is used.
private final class BroadcastOnly: Communicator {
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
    func allreduceMax(_ value: Double) throws -> Double { try base.allreduceMax(value) }
    func allreduceMin(_ value: Double) throws -> Double { try base.allreduceMin(value) }
}
