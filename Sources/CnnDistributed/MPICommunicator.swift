import CMPI
import CnnCore
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// MPI_COMM_WORLD through standard MPI-3 calls only (builds with OpenMPI and MPICH).
///
/// - Initialisation: `MPI_Init_thread` requesting MPI_THREAD_SERIALIZED (any
///   thread may call, one at a time; this class takes a lock around every
///   call to guarantee it). The level MPI provided is in `providedThreadLevel`.
/// - Errors: MPI_ERRORS_RETURN is set on the world communicator, so failures
///   come back as codes; every call goes through `check(_:call:)`, which
///   throws `CnnError.communication(rank:call:reason:)` with MPI's error string.
/// - Lifetime: MPI can be initialised once per process, so there is one
///   instance, `MPICommunicator.world()`. Call `finalize()` once, at the end
///   of the process, after every request has completed.
///
/// Never hang (issue 6)
/// --------------------
/// Every collective is a non-blocking MPI call (MPI_Iallreduce, MPI_Ireduce,
/// MPI_Ibcast, MPI_Ibarrier, MPI_Iallgather) completed by polling MPI_Test, so
/// no rank ever sits inside MPI for longer than `deadline` seconds. Beside
/// the world communicator runs a control channel (MPI_Comm_idup of the world):
///
/// - Arrival tokens. Before rank r starts its collective number s it sends
///   every peer a 40-byte token (s, kind, count, root, step) with MPI_Isend;
///   each rank keeps one MPI_Irecv posted per peer. So every rank knows, for
///   every peer, the last collective that peer has reached. Cost: size-1
///   small eager messages per collective per rank, no extra synchronisation.
/// - Schedule check. Each received token is compared with this rank's own
///   descriptor of the same collective number (kind, count, root; the step is
///   only reported). A collective's result is released to the caller only
///   after every peer's token for it has arrived and matched, so ranks whose
///   sequences of collectives differ are stopped at the first difference,
///   before they can use a buffer mixed from different operations.
/// - Heartbeats. While waiting, a rank sends its peers a heartbeat token every
///   `deadline / 5` seconds, so a rank that reached a collective and then
///   stopped (SIGSTOP, a stuck thread inside MPI) can be told from a slow one.
/// - Liveness datagrams (`LivenessBeacon`): a thread per rank sends each
///   peer a UDP datagram every 0.2 s, outside MPI, so a dead, stopped or
///   cut-off rank stands out even when OpenMPI's progress has stalled.
/// - Deadline. A rank that has waited `deadline` seconds in one collective
///   names the culprit: the ranks whose token for it has not arrived ("has
///   not reached collective #s"; ranks whose heartbeats say they are
///   themselves waiting in an earlier collective are set aside as victims),
///   else the ranks that reached it only after half the deadline, else those
///   that reached it and then went silent, else it says every rank is alive
///   and the collective itself did not complete.
///
/// With `failurePolicy == .abort` (the default) a deadline or schedule
/// failure prints one line starting `cnn-dist:` to standard error and calls
/// MPI_Abort (and `_exit` 5 s later if MPI_Abort itself cannot reach the
/// launcher). With `.throwError` it throws `CnnError.communication` instead.
/// When the launcher terminates the job (SIGTERM), the rank prints what it
/// was waiting for and when it last heard from each peer before exiting.
public final class MPICommunicator: Communicator {
    /// This process's rank in MPI_COMM_WORLD.
    public let rank: Int
    /// The size of MPI_COMM_WORLD.
    public let size: Int
    /// MPI_Get_processor_name.
    public let processorName: String
    /// The processor name of every rank, gathered at start-up (index = rank).
    public private(set) var hostNames: [String] = []
    /// The thread level MPI provided (compare with `MPICommunicator.threadSerialized` etc.).
    public let providedThreadLevel: Int
    /// The thread level requested from MPI_Init_thread.
    public let requestedThreadLevel: Int

    /// MPI_THREAD_FUNNELED.
    public static var threadFunneled: Int { Int(cnn_mpi_thread_funneled()) }
    /// MPI_THREAD_SERIALIZED.
    public static var threadSerialized: Int { Int(cnn_mpi_thread_serialized()) }
    /// MPI_THREAD_MULTIPLE.
    public static var threadMultiple: Int { Int(cnn_mpi_thread_multiple()) }

    /// What a rank does when a collective misses its deadline or the schedules differ.
    public enum FailurePolicy {
        /// Print one `cnn-dist:` line to standard error and MPI_Abort the job.
        case abort
        /// Throw `CnnError.communication` with the same text.
        case throwError
    }

    /// Seconds a rank waits in one collective before naming the missing ranks
    /// and stopping. Default: $CNN_DIST_DEADLINE, else 60.
    public var deadline: TimeInterval {
        get { stateLock.lock(); defer { stateLock.unlock() }; return _deadline }
        set { stateLock.lock(); _deadline = newValue > 0 ? newValue : 60; stateLock.unlock() }
    }
    /// The training step, carried in arrival tokens and named in reports.
    public var currentStep: Int {
        get { stateLock.lock(); defer { stateLock.unlock() }; return _currentStep }
        set { stateLock.lock(); _currentStep = newValue; stateLock.unlock() }
    }
    /// Abort (default) or throw on a deadline or schedule failure.
    public var failurePolicy = FailurePolicy.abort

    private let comm = cnn_mpi_comm_world()
    /// The control channel: a duplicate of the world for tokens and heartbeats.
    private var control = cnn_mpi_comm_null()
    private let lock = NSLock()
    private var finalized = false
    /// Requests started and not yet completed, so `finalize()` can complete them.
    private var outstanding: [ObjectIdentifier: MPIRequest] = [:]

    // Schedule state (under `lock`).
    private var nextSequence: Int64 = 0
    /// This rank's descriptors not yet compared with every peer's.
    private var history: [Int64: CollectiveDescriptor] = [:]
    private var historyLow: Int64 = 0
    private var peers: [PeerChannel] = []
    /// Token sends not yet complete (their buffers must live until then).
    private var outgoing: [OutgoingToken] = []
    /// Heartbeat buffers: their requests are freed at once, the bytes kept until finalize.
    private var heartbeatBuffers: [UnsafeMutablePointer<Int64>] = []
    private var lastHeartbeat = 0.0

    // Report state (under `stateLock`, read by the SIGTERM handler).
    private let stateLock = NSLock()
    private var _deadline: TimeInterval
    private var _currentStep = 0
    private var waitingFor: CollectiveDescriptor?
    private var waitingSince = 0.0
    private var signalSource: DispatchSourceSignal?
    /// UDP liveness datagrams outside MPI (see `LivenessBeacon`).
    private var beacon: LivenessBeacon?

    // Counts are C ints: a larger buffer goes as several calls of at most this many elements.
    static let maxCount = 1 << 30
    static let tokenWords = 5

    /// Seconds between heartbeats while waiting: often enough that a silent peer stands out
    /// within the launcher's SIGTERM-to-SIGKILL second, and well inside half the deadline.
    static func heartbeatInterval(deadline: TimeInterval) -> TimeInterval { min(0.2, deadline / 5) }
    static let tokenTag: Int32 = 6

    private static let sharedLock = NSLock()
    nonisolated(unsafe) private static var shared: MPICommunicator?

    /// The process's MPI world, initialising MPI on first use.
    public static func world() throws -> MPICommunicator {
        sharedLock.lock()
        defer { sharedLock.unlock() }
        if let shared { return shared }
        let made = try MPICommunicator()
        shared = made
        return made
    }

    private init() throws {
        // Before MPI_Comm_rank answers, name the rank from the launcher's environment.
        let env = ProcessInfo.processInfo.environment
        let envRank = ["OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"].lazy.compactMap { env[$0].flatMap(Int.init) }.first ?? -1
        _deadline = env["CNN_DIST_DEADLINE"].flatMap(Double.init).flatMap { $0 > 0 ? $0 : nil } ?? 60
        var finalizedFlag: Int32 = 0
        try Self.check(MPI_Finalized(&finalizedFlag), rank: envRank, call: "MPI_Finalized")
        if finalizedFlag != 0 {
            throw CnnError.communication(rank: envRank, call: "MPI_Init_thread",
                                         reason: "MPI was already finalized in this process; it cannot be initialised again")
        }
        var initialized: Int32 = 0
        try Self.check(MPI_Initialized(&initialized), rank: envRank, call: "MPI_Initialized")
        let requested = cnn_mpi_thread_serialized()
        var provided: Int32 = requested
        if initialized == 0 {
            try Self.check(MPI_Init_thread(nil, nil, requested, &provided), rank: envRank, call: "MPI_Init_thread")
        } else {
            try Self.check(MPI_Query_thread(&provided), rank: envRank, call: "MPI_Query_thread")
        }
        requestedThreadLevel = Int(requested)
        providedThreadLevel = Int(provided)
        try Self.check(MPI_Comm_set_errhandler(comm, cnn_mpi_errors_return()), rank: envRank, call: "MPI_Comm_set_errhandler")
        var r: Int32 = 0, s: Int32 = 0
        try Self.check(MPI_Comm_rank(comm, &r), rank: envRank, call: "MPI_Comm_rank")
        try Self.check(MPI_Comm_size(comm, &s), rank: Int(r), call: "MPI_Comm_size")
        rank = Int(r)
        size = Int(s)
        var name = [CChar](repeating: 0, count: Int(cnn_mpi_max_processor_name()) + 1)
        var length: Int32 = 0
        try Self.check(MPI_Get_processor_name(&name, &length), rank: rank, call: "MPI_Get_processor_name")
        processorName = String(cString: name)
        hostNames = Array(repeating: "?", count: size)
        hostNames[rank] = processorName
        try startControlChannel()
        installTerminationReport()
        let beacon = size > 1 ? LivenessBeacon(rank: rank) : nil
        let (names, ports) = try gatherHostNames(port: beacon?.port ?? 0)
        hostNames = names
        beacon?.start(peers: (0..<size).filter { $0 != rank }.map { ($0, names[$0], ports[$0]) })
        self.beacon = beacon
    }

    // MARK: The checked wrapper

    /// Throws `CnnError.communication` naming this rank, the call and MPI's error string unless `code` is MPI_SUCCESS.
    func check(_ code: Int32, call: String) throws {
        try Self.check(code, rank: rank, call: call)
    }

    static func check(_ code: Int32, rank: Int, call: String) throws {
        guard code != cnn_mpi_success() else { return }
        var text = [CChar](repeating: 0, count: Int(cnn_mpi_max_error_string()) + 1)
        var length: Int32 = 0
        let reason: String
        if MPI_Error_string(code, &text, &length) == cnn_mpi_success() {
            reason = "\(String(cString: text)) (MPI error code \(code))"
        } else {
            reason = "MPI error code \(code)"
        }
        throw CnnError.communication(rank: rank, call: call, reason: reason)
    }

    /// Runs `body` under the lock, after checking MPI is still usable.
    private func locked<T>(_ call: String, _ body: () throws -> T) throws -> T {
        lock.lock()
        defer { lock.unlock() }
        guard !finalized else {
            throw CnnError.communication(rank: rank, call: call, reason: "MPI has already been finalized")
        }
        return try body()
    }

    // MARK: Collectives

    public func allreduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws {
        try startAllreduceSum(buffer).wait()
    }

    public func allreduceSum(_ buffer: UnsafeMutableBufferPointer<Double>) throws {
        try run(.allreduceDouble, count: buffer.count, call: "MPI_Iallreduce") { handles in
            try chunked(UnsafeMutableRawPointer(buffer.baseAddress), count: buffer.count, stride: 8, into: &handles) { base, n, h in
                MPI_Iallreduce(cnn_mpi_in_place(), base, n, cnn_mpi_double(), cnn_mpi_sum(), comm, &h)
            }
        }
    }

    public func startAllreduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws -> CollectiveRequest {
        try locked("MPI_Iallreduce") {
            try start(.allreduceFloat, count: buffer.count, call: "MPI_Iallreduce") { handles in
                try chunked(UnsafeMutableRawPointer(buffer.baseAddress), count: buffer.count, stride: 4, into: &handles) { base, n, h in
                    MPI_Iallreduce(cnn_mpi_in_place(), base, n, cnn_mpi_float(), cnn_mpi_sum(), comm, &h)
                }
            }
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

    private func reduce(_ base: UnsafeMutableRawPointer?, count: Int, stride: Int, kind: CollectiveKind,
                        type: MPI_Datatype!, root: Int) throws {
        try checkRoot(root, size: size, rank: rank, call: "MPI_Ireduce")
        let isRoot = rank == root
        try run(kind, count: count, root: root, call: "MPI_Ireduce") { handles in
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
        try run(.broadcast, count: bytes.count, root: root, call: "MPI_Ibcast") { handles in
            try chunked(bytes.baseAddress, count: bytes.count, stride: 1, into: &handles) { base, n, h in
                MPI_Ibcast(base, n, cnn_mpi_byte(), Int32(root), comm, &h)
            }
        }
    }

    public func barrier() throws {
        try run(.barrier, count: 0, call: "MPI_Ibarrier") { handles in
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
            try run(.allgatherInt64, count: 1, call: "MPI_Iallgather") { handles in
                var h = cnn_mpi_request_null()
                try check(MPI_Iallgather(mine, 1, cnn_mpi_int64(), out.baseAddress, 1, cnn_mpi_int64(), comm, &h),
                          call: "MPI_Iallgather")
                handles.append(h)
            }
        }
        return all
    }

    /// MPI_Allgather of MPI_BYTE.
    public func allgather(_ bytes: UnsafeRawBufferPointer, into gathered: UnsafeMutableRawBufferPointer) throws {
        try checkAllgatherBuffers(bytes, gathered, size: size, rank: rank, call: "MPI_Allgather")
        guard bytes.count <= Self.maxCount else {
            throw CnnError.communication(rank: rank, call: "MPI_Allgather", reason:
                "\(bytes.count) bytes per rank is more than one call can send (\(Self.maxCount)); it is meant for small control data")
        }
        try locked("MPI_Allgather") {
            guard bytes.count > 0 else { return }
            try check(MPI_Allgather(bytes.baseAddress, Int32(bytes.count), cnn_mpi_byte(),
                                    gathered.baseAddress, Int32(bytes.count), cnn_mpi_byte(), comm),
                      call: "MPI_Allgather")
        }
    }

    public func allreduceMax(_ value: Double) throws -> Double {
        try scalarAllreduce(value, kind: .allreduceMax, op: cnn_mpi_max())
    }

    public func allreduceMin(_ value: Double) throws -> Double {
        try scalarAllreduce(value, kind: .allreduceMin, op: cnn_mpi_min())
    }

    private func scalarAllreduce(_ value: Double, kind: CollectiveKind, op: MPI_Op!) throws -> Double {
        let v = UnsafeMutablePointer<Double>.allocate(capacity: 1)
        defer { v.deallocate() }
        v.pointee = value
        try run(kind, count: 1, call: "MPI_Iallreduce") { handles in
            var h = cnn_mpi_request_null()
            try check(MPI_Iallreduce(cnn_mpi_in_place(), v, 1, cnn_mpi_double(), op, comm, &h), call: "MPI_Iallreduce")
            handles.append(h)
        }
        return v.pointee
    }

    /// Issues one non-blocking call per C-int-sized chunk of `count` elements.
    private func chunked(_ base: UnsafeMutableRawPointer?, count: Int, stride: Int, into handles: inout [MPIHandle],
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
    private func run(_ kind: CollectiveKind, count: Int, root: Int = -1, call: String,
                     issue: (inout [MPIHandle]) throws -> Void) throws {
        try locked(call) {
            let request = try start(kind, count: count, root: root, call: call, issue: issue)
            try waitLocked(request)
        }
    }

    /// Numbers the collective, tells the peers (arrival token), then issues the MPI calls.
    private func start(_ kind: CollectiveKind, count: Int, root: Int = -1, call: String,
                       issue: (inout [MPIHandle]) throws -> Void) throws -> MPIRequest {
        let descriptor = CollectiveDescriptor(sequence: nextSequence, kind: kind, count: Int64(count),
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
    fileprivate func wait(_ request: MPIRequest) throws {
        try locked("MPI_Test") { try waitLocked(request) }
    }

    private func waitLocked(_ request: MPIRequest) throws {
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
    fileprivate func test(_ request: MPIRequest) throws -> Bool {
        try locked("MPI_Test") { try request.completed || poll(request) }
    }

    /// One progress step: true once this rank's part is done and every peer's token has arrived and matched.
    private func poll(_ request: MPIRequest) throws -> Bool {
        while request.next < request.handles.count {
            var flag: Int32 = 0
            let code = MPI_Test(&request.handles[request.next], &flag, cnn_mpi_status_ignore())
            if code != cnn_mpi_success() {
                do { try check(code, call: "MPI_Test") } catch { try explain(error, in: request.descriptor) }
            }
            if flag == 0 { break }
            request.next += 1
        }
        try harvest()
        let s = request.descriptor.sequence
        guard request.next == request.handles.count, peers.allSatisfy({ $0.arrived >= s }) else { return false }
        request.completed = true
        outstanding[ObjectIdentifier(request)] = nil
        return true
    }

    // MARK: Control channel

    private func startControlChannel() throws {
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
                         + "\(formatSeconds(deadline)) s; noticed by rank \(rank) (host \(processorName))", call: "MPI_Comm_idup")
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

    private func post(_ peer: PeerChannel) throws {
        try check(MPI_Irecv(peer.buffer, Int32(Self.tokenWords), cnn_mpi_int64(), Int32(peer.rank), Self.tokenTag,
                            control, &peer.request), call: "MPI_Irecv(arrival token)")
    }

    /// Rank names and liveness ports, one fixed-size record each, so reports can say where a rank runs.
    private func gatherHostNames(port: UInt16) throws -> ([String], [UInt16]) {
        let width = 136 // 128 bytes of name, then the UDP port (little-endian)
        let mine = UnsafeMutablePointer<CChar>.allocate(capacity: width)
        let all = UnsafeMutablePointer<CChar>.allocate(capacity: width * size)
        defer { mine.deallocate(); all.deallocate() }
        mine.initialize(repeating: 0, count: width)
        all.initialize(repeating: 0, count: width * size)
        for (i, c) in processorName.utf8.prefix(127).enumerated() { mine[i] = CChar(bitPattern: c) }
        mine[128] = CChar(bitPattern: UInt8(port & 0xff))
        mine[129] = CChar(bitPattern: UInt8(port >> 8))
        try run(.hostNames, count: width, call: "MPI_Iallgather") { handles in
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

    private func sendToken(_ d: CollectiveDescriptor) throws {
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

    private func sendHeartbeat(waitingAt sequence: Int64) throws {
        lastHeartbeat = monotonic()
        guard !peers.isEmpty else { return }
        let d = CollectiveDescriptor(sequence: sequence, kind: .heartbeat, count: 0, root: -1, step: Int64(currentStep))
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
    private func receiveTokens() throws {
        for peer in peers {
            while true {
                var flag: Int32 = 0
                try check(MPI_Test(&peer.request, &flag, cnn_mpi_status_ignore()), call: "MPI_Test(arrival token)")
                if flag == 0 { break }
                let d = CollectiveDescriptor(decoding: peer.buffer)
                stateLock.lock()
                peer.heard = monotonic()
                if d.kind == .heartbeat {
                    peer.waitingAt = d.sequence
                } else {
                    peer.arrived = d.sequence
                    peer.arrivedAt = peer.heard
                    peer.last = d
                    peer.pending.append(d)
                }
                stateLock.unlock()
                try post(peer)
            }
        }
    }

    /// Takes in tokens and compares every peer token whose collective this rank has started.
    private func harvest() throws {
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

    // MARK: Reports

    private func host(_ r: Int) -> String { r < hostNames.count ? hostNames[r] : "?" }

    /// " and its process is alive" / " and no liveness datagram for 4.3 s (dead, stopped or cut off)" / "".
    private func livenessNote(_ r: Int) -> String {
        guard let beacon, let silence = beacon.silence(of: r) else { return "" }
        return silence > 3 * beacon.interval
            ? " and no liveness datagram for \(formatSeconds(silence)) s (dead, stopped or cut off)"
            : " and its process is alive (busy or stuck outside MPI)"
    }

    private func ranksAndHosts(_ ranks: [Int]) -> String {
        (ranks.count == 1 ? "rank " : "ranks ") + ranks.map { "\($0) (host \(host($0)))" }.joined(separator: ", ")
    }

    /// Names the ranks that kept collective `descriptor` from completing, then stops.
    private func missedDeadline(_ descriptor: CollectiveDescriptor, since begin: Double) throws {
        try receiveTokens()
        let s = descriptor.sequence
        let now = monotonic()
        let within = "within \(formatSeconds(deadline)) s"
        let noticed = "noticed by rank \(rank) (host \(processorName))"
        var missing = peers.filter { $0.arrived < s }
        // A missing rank that is itself waiting in an earlier collective (its heartbeats say so) is a victim,
        // not the culprit: name the others, if any, and mention it.
        let blocked = missing.filter { $0.waitingAt == $0.arrived && now - $0.heard < deadline / 2 }
        var blockedNote = ""
        if !blocked.isEmpty && blocked.count < missing.count {
            missing.removeAll { p in blocked.contains { $0 === p } }
            blockedNote = "; " + blocked.map { "rank \($0.rank) (host \(host($0.rank))) is itself still waiting in collective #\($0.arrived)" }
                .joined(separator: ", ")
        }
        if !missing.isEmpty {
            let last = missing.map { p in
                (p.last.map { "rank \(p.rank) was last at collective \($0.label)" } ?? "rank \(p.rank) has reached no collective")
                    + livenessNote(p.rank)
            }.joined(separator: ", ")
            try stop("\(ranksAndHosts(missing.map(\.rank))) \(missing.count == 1 ? "has" : "have") not reached "
                     + "collective \(descriptor.label) \(within) (\(last))\(blockedNote); \(noticed)", call: descriptor.kind.call)
        }
        // Arrived, but long after this rank: it was stopped and has just been resumed (mpirun sends SIGCONT
        // before SIGTERM when another rank aborts the job), or it is that slow.
        let late = peers.filter { $0.arrived == s && $0.arrivedAt - begin > deadline / 2 }
        if !late.isEmpty {
            let delays = late.map { "rank \($0.rank) \(formatSeconds($0.arrivedAt - begin)) s after this rank" }.joined(separator: ", ")
            try stop("\(ranksAndHosts(late.map(\.rank))) reached collective \(descriptor.label) only late (\(delays)); "
                     + "it did not complete \(within); \(noticed)", call: descriptor.kind.call)
        }
        let silent = peers.filter { $0.arrived == s && now - $0.heard > deadline / 2 }
        if !silent.isEmpty {
            let heard = silent.map { "rank \($0.rank) silent for \(formatSeconds(now - $0.heard)) s" }.joined(separator: ", ")
            try stop("\(ranksAndHosts(silent.map(\.rank))) reached collective \(descriptor.label) but stopped making "
                     + "progress (\(heard)); it did not complete \(within); \(noticed)", call: descriptor.kind.call)
        }
        try stop("collective \(descriptor.label) did not complete \(within) although every rank reached it and "
                 + "is alive (the network between ranks may be down); \(noticed)", call: descriptor.kind.call)
    }

    /// Ranks called different collectives as number `s`: collect their tokens briefly, name the odd ones out, stop.
    private func scheduleMismatch(at s: Int64) throws {
        let begin = monotonic()
        while peers.contains(where: { $0.arrived < s }) && monotonic() - begin < min(2, deadline) {
            try receiveTokens()
            usleep(1000)
        }
        guard let mine = history[s] else { return }
        var byRank: [Int: CollectiveDescriptor] = [rank: mine]
        for p in peers {
            if let d = p.pending.first(where: { $0.sequence == s }) { byRank[p.rank] = d }
            else if p.arrived >= s { byRank[p.rank] = mine } // compared earlier: equal to ours
        }
        // Groups of ranks that agree; the largest (ties: the one with the lowest rank) is the reference.
        var groups: [(d: CollectiveDescriptor, ranks: [Int])] = []
        for r in byRank.keys.sorted() {
            let d = byRank[r]!
            if let i = groups.firstIndex(where: { $0.d.sameSchedule(as: d) }) { groups[i].ranks.append(r) }
            else { groups.append((d, [r])) }
        }
        let reference = groups.max { a, b in a.ranks.count < b.ranks.count || (a.ranks.count == b.ranks.count && a.ranks[0] > b.ranks[0]) }!
        let others = groups.filter { $0.ranks != reference.ranks }
        let odd = others.map { "\(ranksAndHosts($0.ranks)) called \($0.d.what) (step \($0.d.step))" }.joined(separator: "; ")
        let unknown = peers.filter { byRank[$0.rank] == nil }.map(\.rank)
        let unknownText = unknown.isEmpty ? "" : "; \(ranksAndHosts(unknown)) had not reached it yet"
        try stop("collective schedule mismatch at collective #\(s): \(odd), but \(ranksAndHosts(reference.ranks)) "
                 + "called \(reference.d.what) (step \(reference.d.step))\(unknownText); noticed by rank \(rank) "
                 + "(host \(processorName))", call: mine.kind.call)
    }

    /// An MPI call failed inside collective `d`: a schedule mismatch is the likelier story if a token says so.
    private func explain(_ error: Error, in d: CollectiveDescriptor) throws -> Never {
        let begin = monotonic()
        while monotonic() - begin < min(1, deadline) {
            try receiveTokens()
            for p in peers {
                if let theirs = p.pending.first(where: { $0.sequence == d.sequence }), !theirs.sameSchedule(as: d) {
                    try scheduleMismatch(at: d.sequence)
                }
            }
            if peers.allSatisfy({ $0.arrived >= d.sequence }) { break }
            usleep(1000)
        }
        throw error
    }

    /// Reports `message` by the failure policy: abort the job, or throw.
    private func stop(_ message: String, call: String) throws -> Never {
        switch failurePolicy {
        case .abort:
            FileHandle.standardError.write(Data("cnn-dist: \(message); aborting\n".utf8))
            abort(errorCode: 3)
        case .throwError:
            throw CnnError.communication(rank: rank, call: call, reason: message)
        }
    }

    private func setWaiting(_ d: CollectiveDescriptor?, since: Double) {
        stateLock.lock()
        waitingFor = d
        waitingSince = since
        stateLock.unlock()
    }

    /// On SIGTERM (the launcher ending the job) say what this rank was waiting for, then exit.
    private func installTerminationReport() {
        signal(SIGTERM, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: SIGTERM, queue: .global())
        source.setEventHandler { [unowned self] in
            // OpenMPI sends SIGKILL a second after SIGTERM: spend 0.3 s listening, so that the live
            // peers' heartbeats come in and a dead one stands out by its silence.
            usleep(300_000)
            if lock.try() {
                // The training thread is computing, not polling: take in the tokens ourselves.
                if !finalized { try? receiveTokens() }
                lock.unlock()
            }
            FileHandle.standardError.write(Data("cnn-dist: \(terminationReport())\n".utf8))
            _exit(143)
        }
        source.resume()
        signalSource = source
    }

    /// One line: where this rank is and when it last heard from each peer.
    func terminationReport() -> String {
        stateLock.lock()
        defer { stateLock.unlock() }
        let now = monotonic()
        var text = "rank \(rank) (host \(processorName)) terminated by the launcher at step \(_currentStep)"
        if let w = waitingFor {
            text += " while waiting \(formatSeconds(now - waitingSince)) s in collective \(w.label)"
            let missing = peers.filter { $0.arrived < w.sequence }.map(\.rank)
            if !missing.isEmpty { text += " for \(ranksAndHosts(missing))" }
            // Peers that reached it send heartbeats while they wait; silence means dead or stopped.
            let quiet = 2.5 * Self.heartbeatInterval(deadline: _deadline)
            let silent = peers.filter { $0.arrived >= w.sequence && now - $0.heard > quiet && now - waitingSince > quiet }
            if !silent.isEmpty && silent.count < peers.count {
                text += "; \(ranksAndHosts(silent.map(\.rank))) reached it but went silent "
                    + silent.map { "\(formatSeconds(now - $0.heard)) s ago" }.joined(separator: ", ")
            }
        }
        if let beacon {
            let gone = peers.compactMap { p in beacon.silence(of: p.rank).flatMap { $0 > 3 * beacon.interval ? (p.rank, $0) : nil } }
            if !gone.isEmpty {
                text += "; no liveness datagram from " + gone.map { "rank \($0.0) (host \(host($0.0))) for \(formatSeconds($0.1)) s" }
                    .joined(separator: ", ") + " (dead, stopped or cut off)"
            }
        }
        let heard = peers.map { p in
            "rank \(p.rank) (host \(host(p.rank))) \(formatSeconds(now - p.heard)) s ago at #\(p.arrived)"
        }
        if !heard.isEmpty { text += "; last heard from " + heard.joined(separator: ", ") }
        return text
    }

    // MARK: Shutdown

    /// Completes outstanding requests, meets the other ranks (a checked,
    /// deadline-bounded barrier: a rank with collectives left over is named),
    /// and calls MPI_Finalize. Call once, at the end of the process, on every
    /// rank; later calls do nothing, and any collective after it throws.
    public func finalize() throws {
        lock.lock()
        defer { lock.unlock() }
        guard !finalized else { return }
        for request in Array(outstanding.values) { try waitLocked(request) }
        let last = try start(.finalize, count: 0, call: "MPI_Ibarrier(finalize)") { handles in
            var h = cnn_mpi_request_null()
            try check(MPI_Ibarrier(comm, &h), call: "MPI_Ibarrier")
            handles.append(h)
        }
        try waitLocked(last)
        let begin = monotonic()
        for token in outgoing {
            while true {
                var flag: Int32 = 0
                try check(MPI_Testall(Int32(token.requests.count), &token.requests, &flag, cnn_mpi_statuses_ignore()),
                          call: "MPI_Testall(arrival tokens)")
                if flag != 0 { break }
                if monotonic() - begin > deadline { break } // a peer left without reading; MPI_Finalize copes
                usleep(200)
            }
        }
        for peer in peers {
            _ = MPI_Cancel(&peer.request)
            _ = MPI_Wait(&peer.request, cnn_mpi_status_ignore())
        }
        if size > 1 { _ = MPI_Comm_free(&control) }
        signalSource?.cancel()
        beacon?.stop()
        signal(SIGTERM, SIG_DFL)
        finalized = true
        try check(MPI_Finalize(), call: "MPI_Finalize")
    }

    /// MPI_Abort on the world: ends every rank's process with `errorCode`.
    /// For a rank that failed while others may be blocked in a collective.
    /// If MPI_Abort cannot reach the launcher (its host is cut off), the
    /// process exits by itself after 5 s.
    public func abort(errorCode: Int32) -> Never {
        let guardThread = Thread { sleep(5); _exit(errorCode) }
        guardThread.start()
        _ = MPI_Abort(comm, errorCode)
        exit(errorCode)
    }
}

/// Seconds as "5" or "2.5".
func formatSeconds(_ s: Double) -> String {
    s == s.rounded() && s < 1e9 ? String(Int(s)) : String(format: "%.1f", s)
}

/// Seconds on a monotonic clock.
private func monotonic() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

/// An MPI_Request as Swift imports it: OpenMPI's is a pointer to an opaque
/// struct (so optional), MPICH's an int. Handles start as cnn_mpi_request_null().
#if CNN_MPICH
typealias MPIHandle = MPI_Request
#else
typealias MPIHandle = MPI_Request?
#endif

/// What a collective is; ranks must agree on it at every position of their schedules.
enum CollectiveKind: Int64 {
    case heartbeat = 0
    case allreduceFloat = 1, allreduceDouble, reduceFloat, reduceDouble, broadcast, barrier, allgatherInt64
    case allreduceMax, allreduceMin, hostNames, finalize

    var call: String {
        switch self {
        case .heartbeat: return "heartbeat"
        case .allreduceFloat, .allreduceDouble, .allreduceMax, .allreduceMin: return "MPI_Iallreduce"
        case .reduceFloat, .reduceDouble: return "MPI_Ireduce"
        case .broadcast: return "MPI_Ibcast"
        case .barrier, .finalize: return "MPI_Ibarrier"
        case .allgatherInt64, .hostNames: return "MPI_Iallgather"
        }
    }
}

/// One collective as the ranks announce it: position, operation, size. The step is reported, not compared.
struct CollectiveDescriptor: Equatable {
    var sequence: Int64
    var kind: CollectiveKind
    var count: Int64
    var root: Int64
    var step: Int64

    init(sequence: Int64, kind: CollectiveKind, count: Int64, root: Int64, step: Int64) {
        self.sequence = sequence
        self.kind = kind
        self.count = count
        self.root = root
        self.step = step
    }

    init(decoding words: UnsafePointer<Int64>) {
        self.init(sequence: words[0], kind: CollectiveKind(rawValue: words[1]) ?? .heartbeat, count: words[2],
                  root: words[3], step: words[4])
    }

    func encode(into words: UnsafeMutablePointer<Int64>) {
        words[0] = sequence; words[1] = kind.rawValue; words[2] = count; words[3] = root; words[4] = step
    }

    func sameSchedule(as other: CollectiveDescriptor) -> Bool {
        kind == other.kind && count == other.count && root == other.root
    }

    /// "allreduce of 4096 floats", "broadcast of 8 bytes from rank 0", "barrier".
    var what: String {
        switch kind {
        case .heartbeat: return "heartbeat"
        case .allreduceFloat: return "allreduce of \(count) floats"
        case .allreduceDouble: return "allreduce of \(count) doubles"
        case .reduceFloat: return "reduce of \(count) floats to rank \(root)"
        case .reduceDouble: return "reduce of \(count) doubles to rank \(root)"
        case .broadcast: return "broadcast of \(count) bytes from rank \(root)"
        case .barrier: return "barrier"
        case .allgatherInt64: return "allgather of one int64"
        case .allreduceMax: return "allreduce-max of one double"
        case .allreduceMin: return "allreduce-min of one double"
        case .hostNames: return "start-up exchange of host names"
        case .finalize: return "finalize"
        }
    }

    /// "#57 (allreduce of 4096 floats, step 12)".
    var label: String { "#\(sequence) (\(what), step \(step))" }
}

/// One peer's side of the control channel, as this rank sees it.
final class PeerChannel {
    let rank: Int
    var request = cnn_mpi_request_null()
    let buffer = UnsafeMutablePointer<Int64>.allocate(capacity: MPICommunicator.tokenWords)
    /// The highest collective number the peer has announced (-1: none yet).
    var arrived: Int64 = -1
    /// Its latest announced collective, and when its token came.
    var last: CollectiveDescriptor?
    var arrivedAt = 0.0
    /// Announced collectives not yet compared with this rank's (the peer is ahead).
    var pending: [CollectiveDescriptor] = []
    /// Monotonic time of its latest token or heartbeat.
    var heard: Double
    /// The collective its latest heartbeat said it waits in.
    var waitingAt: Int64 = -1

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
    init(_ d: CollectiveDescriptor) { d.encode(into: buffer) }
}

/// A non-blocking collective in flight (several handles if the buffer was split into C-int counts).
final class MPIRequest: CollectiveRequest {
    private unowned let owner: MPICommunicator
    let descriptor: CollectiveDescriptor
    var handles: [MPIHandle] = []
    /// Handles before `next` have completed.
    var next = 0
    /// This rank's part is done and every peer's token has matched.
    var completed = false

    init(owner: MPICommunicator, descriptor: CollectiveDescriptor) {
        self.owner = owner
        self.descriptor = descriptor
    }

    func wait() throws { try owner.wait(self) }
    func test() throws -> Bool { try owner.test(self) }
}
