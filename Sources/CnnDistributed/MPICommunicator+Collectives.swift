import CMPI
import CnnCore
import Foundation
#if canImport(Glibc)
import Glibc
#endif

// MPICommunicator's collectives: each is numbered, announced to the peers with an arrival token,
// issued as non-blocking MPI calls and completed by polling under the deadline (see MPICommunicator).
extension MPICommunicator {
    public func allreduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws {
        try startAllreduceSum(buffer).wait()
    }

    public func allreduceSum(_ buffer: UnsafeMutableBufferPointer<Double>) throws {
        try run(.allreduceDouble, count: buffer.count) { handles in
            try chunked(UnsafeMutableRawPointer(buffer.baseAddress), count: buffer.count, stride: 8, into: &handles) { base, n, h in
                MPI_Iallreduce(cnn_mpi_in_place(), base, n, cnn_mpi_double(), cnn_mpi_sum(), comm, &h)
            }
        }
    }

    /// Float buckets from `messageAllreduceMinimum` elements, when every rank is on one host, go
    /// as a reduce-scatter then an allgather in point-to-point messages (`startShareAllreduce`):
    /// each rank sends and sums (size-1)/size of the buffer, where Open MPI's in-place
    /// MPI_Iallreduce (libnbc) takes a binomial tree on few ranks, whose root receives and sums
    /// the whole buffer before sending it all back. Every element is summed in rank order, so the
    /// bits are `LocalWorld`'s at any size. Smaller buffers, and worlds over several hosts (where
    /// the messages were not measured), keep MPI_Iallreduce.
    public func startAllreduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws -> CollectiveRequest {
        let n = buffer.count, p = size
        if p > 1 && n >= Self.messageAllreduceMinimum && oneHost, let base = buffer.baseAddress {
            let share = (n + p - 1) / p
            let scratch = UnsafeMutableRawPointer.allocate(byteCount: p * share * 4, alignment: 64)
            let received = scratch.bindMemory(to: Float.self, capacity: p * share)
            return try startShareAllreduce(.allreduceFloat, count: n, share: share, send: base, received: received,
                                           result: base, scratch: scratch) { parts, stride, count, out in
                sumInRankOrder(parts, ranks: p, stride: stride, count: count, into: out)
            }
        }
        return try locked("MPI_Iallreduce") {
            try start(.allreduceFloat, count: buffer.count) { handles in
                try chunked(UnsafeMutableRawPointer(buffer.baseAddress), count: buffer.count, stride: 4, into: &handles) { base, n, h in
                    MPI_Iallreduce(cnn_mpi_in_place(), base, n, cnn_mpi_float(), cnn_mpi_sum(), comm, &h)
                }
            }
        }
    }

    /// Float allreduces from this many elements go by messages (see `startAllreduceSum`).
    static let messageAllreduceMinimum = 1 << 15

    /// True when every rank runs on this rank's host (by the start-up exchange of host names).
    var oneHost: Bool { hostNames.allSatisfy { $0 == hostNames[rank] } }

    /// The bf16 allreduce as a reduce-scatter then an allgather of bf16 values in point-to-point
    /// messages (`startShareAllreduce`): rank r sums the shares it gets in rank order in fp32 and
    /// rounds once (`sumBF16InRankOrder`). Each element's sum is formed by one rank in a fixed
    /// order, so every rank ends with the same bits, and the same bits as `LocalWorld` (a
    /// user-defined MPI_Op under MPI_Iallreduce would round at every partial sum, in an order the
    /// library picks per world size and count). Each rank sends 2 (size-1)/size x count x 2
    /// bytes, half of a ring allreduce of floats.
    public func startAllreduceSumBF16(_ buffer: UnsafeMutableBufferPointer<Float>) throws -> CollectiveRequest {
        let n = buffer.count, p = size
        let share = (n + p - 1) / p
        // scratch, three blocks of p shares: this rank's values; share `me` of every rank; every rank's rounded sum.
        let scratch = UnsafeMutableRawPointer.allocate(byteCount: max(1, 3 * p * share * 2), alignment: 64)
        let send = scratch.bindMemory(to: UInt16.self, capacity: 3 * p * share)
        let received = send + p * share, result = received + p * share
        for i in 0..<n { send[i] = bf16Bits(buffer[i]) }
        let request = try startShareAllreduce(.allreduceBF16, count: n, share: share, send: send, received: received,
                                              result: result, scratch: scratch) { parts, stride, count, out in
            sumBF16InRankOrder(parts, ranks: p, stride: stride, count: count, into: out)
        }
        request.onComplete = {
            for i in 0..<n { buffer[i] = floatFromBF16Bits(result[i]) }
        }
        return request
    }

    /// An allreduce as a reduce-scatter then an allgather in point-to-point messages: the `count`
    /// elements at `send` are cut into `size` shares of `share` (the last ones shorter or empty);
    /// every rank sends share r to rank r, rank r sums the shares it gets with its own
    /// (`sumShares(parts, stride, count, out)`: `size` parts `stride` apart) into share r of
    /// `result`, then sends that share to every rank. `result` may be `send` (in place: a share
    /// is overwritten only after its sends completed). `scratch` (holding `received`, size x
    /// share elements) is freed with the request.
    ///
    /// Why messages, not MPI_Ireduce_scatter + MPI_Iallgather: the second phase starts when this
    /// rank sees the first complete, and ranks see that at different times relative to the other
    /// buckets they start, so collectives would be issued in different orders on different ranks
    /// (MPI requires one order). Messages are matched by tag instead (from the collective's number).
    private func startShareAllreduce<T>(_ kind: CollectiveKind, count n: Int, share: Int,
                                        send: UnsafeMutablePointer<T>, received: UnsafeMutablePointer<T>,
                                        result: UnsafeMutablePointer<T>, scratch: UnsafeMutableRawPointer,
                                        sumShares: @escaping (UnsafePointer<T>, Int, Int, UnsafeMutablePointer<T>) -> Void)
        throws -> MPIRequest {
        let p = size, me = rank, width = MemoryLayout<T>.stride
        func length(_ r: Int) -> Int { max(0, min(share, n - r * share)) }
        guard share * width <= Self.maxCount else {
            scratch.deallocate()
            throw CnnError.communication(rank: rank, call: "MPI_Isend", reason:
                "an allreduce of \(n) values over \(p) ranks needs messages of \(share * width) bytes, more than one call can send (\(Self.maxCount))")
        }
        let comm = self.comm
        return try locked("MPI_Isend") {
            // Two tags per collective, from its number: <= 32_001, within every MPI's MPI_TAG_UB.
            let firstTag = Int32(1 + (max(0, nextSequence) % 16_000) * 2)
            let request = try start(kind, count: n) { handles in
                    guard n > 0 else { return }
                    (received + me * share).update(from: send + me * share, count: length(me))
                    for other in 0..<p where other != me {
                        var h = cnn_mpi_request_null()
                        try check(MPI_Irecv(received + other * share, Int32(length(me) * width), cnn_mpi_byte(), Int32(other),
                                            firstTag, comm, &h), call: "MPI_Irecv")
                        handles.append(h)
                    }
                    for other in 0..<p where other != me {
                        var h = cnn_mpi_request_null()
                        try check(MPI_Isend(send + other * share, Int32(length(other) * width), cnn_mpi_byte(), Int32(other),
                                            firstTag, comm, &h), call: "MPI_Isend")
                        handles.append(h)
                    }
                }
            request.scratch = scratch
            guard n > 0 else { return request }
            request.nextStage = { [unowned self] handles in
                sumShares(received, share, length(me), result + me * share)
                for other in 0..<p where other != me {
                    var h = cnn_mpi_request_null()
                    try check(MPI_Irecv(result + other * share, Int32(length(other) * width), cnn_mpi_byte(), Int32(other),
                                        firstTag + 1, comm, &h), call: "MPI_Irecv")
                    handles.append(h)
                }
                for other in 0..<p where other != me {
                    var h = cnn_mpi_request_null()
                    try check(MPI_Isend(result + me * share, Int32(length(me) * width), cnn_mpi_byte(), Int32(other),
                                        firstTag + 1, comm, &h), call: "MPI_Isend")
                    handles.append(h)
                }
            }
            return request
        }
    }

    public func reduceSum(_ buffer: UnsafeMutableBufferPointer<Float>, root: Int) throws {
        try reduce(UnsafeMutableRawPointer(buffer.baseAddress), count: buffer.count, stride: 4, kind: .reduceFloat,
                   type: cnn_mpi_float(), root: root)
    }

    public func reduceSum(_ buffer: UnsafeMutableBufferPointer<Double>, root: Int) throws {
        try reduce(UnsafeMutableRawPointer(buffer.baseAddress), count: buffer.count, stride: 8, kind: .reduceDouble,
                   type: cnn_mpi_double(), root: root)
    }

    func reduce(_ base: UnsafeMutableRawPointer?, count: Int, stride: Int, kind: CollectiveKind,
                        type: MPI_Datatype!, root: Int) throws {
        try checkRoot(root, size: size, rank: rank, call: "MPI_Ireduce")
        let isRoot = rank == root
        try run(kind, count: count, root: root) { handles in
            try chunked(base, count: count, stride: stride, into: &handles) { chunk, n, h in
                // Root reduces in place; the others only send, their buffers unchanged.
                isRoot
                    ? MPI_Ireduce(cnn_mpi_in_place(), chunk, n, type, cnn_mpi_sum(), Int32(root), comm, &h)
                    : MPI_Ireduce(chunk, nil, n, type, cnn_mpi_sum(), Int32(root), comm, &h)
            }
        }
    }

    public func broadcast(_ bytes: UnsafeMutableRawBufferPointer, root: Int) throws {
        try checkRoot(root, size: size, rank: rank, call: "MPI_Ibcast")
        try run(.broadcast, count: bytes.count, root: root) { handles in
            try chunked(bytes.baseAddress, count: bytes.count, stride: 1, into: &handles) { base, n, h in
                MPI_Ibcast(base, n, cnn_mpi_byte(), Int32(root), comm, &h)
            }
        }
    }

    public func barrier() throws {
        try run(.barrier, count: 0) { handles in
            var h = cnn_mpi_request_null()
            try check(MPI_Ibarrier(comm, &h), call: "MPI_Ibarrier")
            handles.append(h)
        }
    }

    public func allgather(_ value: Int64) throws -> [Int64] {
        let mine = UnsafeMutablePointer<Int64>.allocate(capacity: 1)
        defer { mine.deallocate() }
        mine.pointee = value
        var all = [Int64](repeating: 0, count: size)
        try all.withUnsafeMutableBufferPointer { out in
            try run(.allgatherInt64, count: 1) { handles in
                var h = cnn_mpi_request_null()
                try check(MPI_Iallgather(mine, 1, cnn_mpi_int64(), out.baseAddress, 1, cnn_mpi_int64(), comm, &h),
                          call: "MPI_Iallgather")
                handles.append(h)
            }
        }
        return all
    }

    /// MPI_Iallgather of MPI_BYTE, under the deadline and the schedule check like every collective.
    public func allgather(_ bytes: UnsafeRawBufferPointer, into gathered: UnsafeMutableRawBufferPointer) throws {
        try checkAllgatherBuffers(bytes, gathered, size: size, rank: rank, call: "MPI_Iallgather")
        guard bytes.count <= Self.maxCount else {
            throw CnnError.communication(rank: rank, call: "MPI_Iallgather", reason:
                "\(bytes.count) bytes per rank is more than one call can send (\(Self.maxCount)); it is meant for small control data")
        }
        try run(.allgatherBytes, count: bytes.count) { handles in
            guard bytes.count > 0 else { return }
            var h = cnn_mpi_request_null()
            try check(MPI_Iallgather(bytes.baseAddress, Int32(bytes.count), cnn_mpi_byte(),
                                     gathered.baseAddress, Int32(bytes.count), cnn_mpi_byte(), comm, &h),
                      call: "MPI_Iallgather")
            handles.append(h)
        }
    }

    public func allreduceMax(_ value: Double) throws -> Double {
        try scalarAllreduce(value, kind: .allreduceMax, op: cnn_mpi_max())
    }

    public func allreduceMin(_ value: Double) throws -> Double {
        try scalarAllreduce(value, kind: .allreduceMin, op: cnn_mpi_min())
    }

    func scalarAllreduce(_ value: Double, kind: CollectiveKind, op: MPI_Op!) throws -> Double {
        let v = UnsafeMutablePointer<Double>.allocate(capacity: 1)
        defer { v.deallocate() }
        v.pointee = value
        try run(kind, count: 1) { handles in
            var h = cnn_mpi_request_null()
            try check(MPI_Iallreduce(cnn_mpi_in_place(), v, 1, cnn_mpi_double(), op, comm, &h), call: "MPI_Iallreduce")
            handles.append(h)
        }
        return v.pointee
    }

    /// Issues one non-blocking call per C-int-sized chunk of `count` elements.
    func chunked(_ base: UnsafeMutableRawPointer?, count: Int, stride: Int, into handles: inout [MPIHandle],
                         _ issue: (UnsafeMutableRawPointer, Int32, inout MPIHandle) -> Int32) throws {
        guard let base, count > 0 else { return }
        var start = 0
        while start < count {
            let n = min(Self.maxCount, count - start)
            var h = cnn_mpi_request_null()
            try check(issue(base + start * stride, Int32(n), &h), call: "non-blocking collective")
            handles.append(h)
            start += n
        }
    }

    /// A blocking collective: start, then wait under the deadline.
    func run(_ kind: CollectiveKind, count: Int, root: Int = -1,
             issue: (inout [MPIHandle]) throws -> Void) throws {
        try locked(kind.mpiCall) {
            let request = try start(kind, count: count, root: root, issue: issue)
            try waitLocked(request)
        }
    }

    /// Numbers the collective, tells the peers (arrival token), then issues the MPI calls.
    func start(_ kind: CollectiveKind, count: Int, root: Int = -1,
               issue: (inout [MPIHandle]) throws -> Void) throws -> MPIRequest {
        let descriptor = Collective(sequence: nextSequence, kind: kind, count: Int64(count),
                                    root: Int64(root), step: Int64(currentStep))
        nextSequence += 1
        history[descriptor.sequence] = descriptor
        try sendToken(descriptor)
        try harvest()
        let request = MPIRequest(owner: self, descriptor: descriptor)
        do {
            try issue(&request.handles)
        } catch {
            try explain(error, in: descriptor)
        }
        outstanding[ObjectIdentifier(request)] = request
        return request
    }

    /// Completes `request` by polling, under the deadline (called by `MPIRequest.wait`).
    func wait(_ request: MPIRequest) throws {
        try locked("MPI_Test") { try waitLocked(request) }
    }

    func waitLocked(_ request: MPIRequest) throws {
        guard !request.completed else { return }
        let begin = monotonic()
        setWaiting(request.descriptor, since: begin)
        defer { setWaiting(nil, since: 0) }
        let limit = deadline
        let heartbeatEvery = Self.heartbeatInterval(deadline: limit)
        var now = begin
        while try !poll(request) {
            now = monotonic()
            let waited = now - begin
            if waited > limit { try missedDeadline(request.descriptor, since: begin) }
            if now - lastHeartbeat > heartbeatEvery { try sendHeartbeat(waitingAt: request.descriptor.sequence) }
            // Spin for the first millisecond, then yield, then sleep: ranks may share cores.
            if waited > 0.02 { usleep(200) } else if waited > 0.001 { sched_yield() }
        }
    }

    /// MPI_Test on the request's handles plus the control channel (called by `MPIRequest.test`).
    func test(_ request: MPIRequest) throws -> Bool {
        try locked("MPI_Test") { try request.completed || poll(request) }
    }

    /// One progress step: true once this rank's part is done and every peer's token has arrived and matched.
    func poll(_ request: MPIRequest) throws -> Bool {
        while true {
            while request.next < request.handles.count {
                var flag: Int32 = 0
                let code = MPI_Test(&request.handles[request.next], &flag, cnn_mpi_status_ignore())
                if code != cnn_mpi_success() {
                    do { try check(code, call: "MPI_Test") } catch { try explain(error, in: request.descriptor) }
                }
                if flag == 0 { break }
                request.next += 1
            }
            guard request.next == request.handles.count, let stage = request.nextStage else { break }
            request.nextStage = nil
            do { try stage(&request.handles) } catch { try explain(error, in: request.descriptor) }
        }
        try harvest()
        let s = request.descriptor.sequence
        guard request.next == request.handles.count, request.nextStage == nil,
              peers.allSatisfy({ $0.arrived >= s }) else { return false }
        request.completed = true
        outstanding[ObjectIdentifier(request)] = nil
        request.onComplete?()
        request.onComplete = nil
        return true
    }

}
