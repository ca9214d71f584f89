import CMPI
import CnnCore
import Foundation
#if canImport(Glibc)
import Glibc
#endif

// MPICommunicator's control channel: a duplicate of the world carrying arrival tokens and
// heartbeats, so each rank knows which collective every peer has reached.
extension MPICommunicator {
    func startControlChannel() throws {
        guard size > 1 else { return }
        var h = cnn_mpi_request_null()
        try check(MPI_Comm_idup(comm, &control, &h), call: "MPI_Comm_idup")
        let begin = monotonic()
        while true {
            var flag: Int32 = 0
            try check(MPI_Test(&h, &flag, cnn_mpi_status_ignore()), call: "MPI_Test(MPI_Comm_idup)")
            if flag != 0 { break }
            if monotonic() - begin > deadline {
                try stop("not every rank of the \(size)-rank world reached start-up (MPI_Comm_idup) within "
                         + "\(formatSeconds(deadline)) s; \(CollectiveReport.noticed(by: rank, host: processorName))",
                         in: Collective(sequence: -1, kind: .hostNames, count: 0, step: 0))
            }
            usleep(200)
        }
        try check(MPI_Comm_set_errhandler(control, cnn_mpi_errors_return()), call: "MPI_Comm_set_errhandler")
        let now = monotonic()
        for p in 0..<size where p != rank {
            let peer = PeerChannel(rank: p, heard: now)
            try post(peer)
            peers.append(peer)
        }
    }

    func post(_ peer: PeerChannel) throws {
        try check(MPI_Irecv(peer.buffer, Int32(Self.tokenWords), cnn_mpi_int64(), Int32(peer.rank), Self.tokenTag,
                            control, &peer.request), call: "MPI_Irecv(arrival token)")
    }

    /// Rank names and liveness ports, one fixed-size record each, so reports can say where a rank runs.
    func gatherHostNames(port: UInt16) throws -> ([String], [UInt16]) {
        let width = 136 // 128 bytes of name, then the UDP port (little-endian)
        let mine = UnsafeMutablePointer<CChar>.allocate(capacity: width)
        let all = UnsafeMutablePointer<CChar>.allocate(capacity: width * size)
        defer { mine.deallocate(); all.deallocate() }
        mine.initialize(repeating: 0, count: width)
        all.initialize(repeating: 0, count: width * size)
        for (i, c) in processorName.utf8.prefix(127).enumerated() { mine[i] = CChar(bitPattern: c) }
        mine[128] = CChar(bitPattern: UInt8(port & 0xff))
        mine[129] = CChar(bitPattern: UInt8(port >> 8))
        try run(.hostNames, count: width) { handles in
            var h = cnn_mpi_request_null()
            try check(MPI_Iallgather(mine, Int32(width), cnn_mpi_char(), all, Int32(width), cnn_mpi_char(), comm, &h),
                      call: "MPI_Iallgather")
            handles.append(h)
        }
        let names = (0..<size).map { String(cString: all + $0 * width) }
        let ports = (0..<size).map { r in
            UInt16(UInt8(bitPattern: all[r * width + 128])) | UInt16(UInt8(bitPattern: all[r * width + 129])) << 8
        }
        return (names, ports)
    }

    func sendToken(_ d: Collective) throws {
        guard !peers.isEmpty else { return }
        // Retire completed sends first (they normally complete at once: the tokens are eager messages).
        outgoing.removeAll { token in
            var flag: Int32 = 0
            _ = MPI_Testall(Int32(token.requests.count), &token.requests, &flag, cnn_mpi_statuses_ignore())
            if flag != 0 { token.buffer.deallocate() }
            return flag != 0
        }
        let token = OutgoingToken(d)
        for peer in peers {
            var h = cnn_mpi_request_null()
            try check(MPI_Isend(token.buffer, Int32(Self.tokenWords), cnn_mpi_int64(), Int32(peer.rank), Self.tokenTag,
                                control, &h), call: "MPI_Isend(arrival token)")
            token.requests.append(h)
        }
        outgoing.append(token)
    }

    func sendHeartbeat(waitingAt sequence: Int64) throws {
        lastHeartbeat = monotonic()
        guard !peers.isEmpty else { return }
        let d = Collective(sequence: sequence, kind: .heartbeat, count: 0, root: -1, step: Int64(currentStep))
        let buffer = UnsafeMutablePointer<Int64>.allocate(capacity: Self.tokenWords)
        d.encode(into: buffer)
        heartbeatBuffers.append(buffer)
        for peer in peers {
            var h = cnn_mpi_request_null()
            try check(MPI_Isend(buffer, Int32(Self.tokenWords), cnn_mpi_int64(), Int32(peer.rank), Self.tokenTag,
                                control, &h), call: "MPI_Isend(heartbeat)")
            try check(MPI_Request_free(&h), call: "MPI_Request_free(heartbeat)")
        }
    }

    /// Takes in every token that has arrived; does not compare.
    func receiveTokens() throws {
        for peer in peers {
            while true {
                var flag: Int32 = 0
                try check(MPI_Test(&peer.request, &flag, cnn_mpi_status_ignore()), call: "MPI_Test(arrival token)")
                if flag == 0 { break }
                let d = Collective(decoding: peer.buffer)
                stateLock.lock()
                peer.heard = monotonic()
                if d.kind == .heartbeat {
                    peer.waitingAt = d.sequence
                } else {
                    peer.arrived = d.sequence
                    peer.arrivedAt = peer.heard
                    if d.kind != .hostNames { peer.last = d }
                    peer.pending.append(d)
                }
                stateLock.unlock()
                try post(peer)
            }
        }
    }

    /// Takes in tokens and compares every peer token whose collective this rank has started.
    func harvest() throws {
        try receiveTokens()
        var low = nextSequence
        for peer in peers {
            while let d = peer.pending.first, d.sequence < nextSequence {
                if let mine = history[d.sequence], !mine.sameSchedule(as: d) { try scheduleMismatch(at: d.sequence) }
                peer.pending.removeFirst()
            }
            low = min(low, peer.pending.first?.sequence ?? (peer.arrived + 1))
        }
        while historyLow < low {
            history[historyLow] = nil
            historyLow += 1
        }
    }

}

/// A collective as an arrival token: five int64 words (sequence, kind, count, root, step).
extension Collective {
    init(decoding words: UnsafePointer<Int64>) {
        self.init(sequence: words[0], kind: CollectiveKind(rawValue: words[1]) ?? .heartbeat, count: words[2],
                  root: words[3], step: words[4])
    }

    func encode(into words: UnsafeMutablePointer<Int64>) {
        words[0] = sequence; words[1] = kind.rawValue; words[2] = count; words[3] = root; words[4] = step
    }
}

/// One peer's side of the control channel, as this rank sees it.
final class PeerChannel {
    let rank: Int
    var request = cnn_mpi_request_null()
    let buffer = UnsafeMutablePointer<Int64>.allocate(capacity: MPICommunicator.tokenWords)
    /// The highest collective number the peer has announced (-2: none yet; -1 is the start-up exchange).
    var arrived: Int64 = -2
    /// Its latest announced collective after the start-up exchange, and when its token came.
    var last: Collective?
    var arrivedAt = 0.0
    /// Announced collectives not yet compared with this rank's (the peer is ahead).
    var pending: [Collective] = []
    /// Monotonic time of its latest token or heartbeat.
    var heard: Double
    /// The collective its latest heartbeat said it waits in.
    var waitingAt: Int64 = -2

    init(rank: Int, heard: Double) {
        self.rank = rank
        self.heard = heard
        buffer.initialize(repeating: 0, count: MPICommunicator.tokenWords)
    }
}

/// An arrival token being sent to every peer.
final class OutgoingToken {
    let buffer = UnsafeMutablePointer<Int64>.allocate(capacity: MPICommunicator.tokenWords)
    var requests: [MPIHandle] = []
    init(_ d: Collective) { d.encode(into: buffer) }
}
