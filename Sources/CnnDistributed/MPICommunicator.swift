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
/// Never hang
/// ----------
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
/// A deadline or schedule failure throws `WorldFailure` (the same words
/// `LocalWorld` uses); the command line decides how the process ends
/// (`endWorldAfterError`: one `cnn-dist:` line, then MPI_Abort of the job).
/// When the command line has called `installTerminationSignalHandlers()` and
/// the launcher terminates the job (SIGTERM), the rank prints what it was
/// waiting for and when it last heard from each peer before exiting.
///
/// Start-up: MPI_Init_thread has no deadline of its own and waits for every
/// rank of the job, so a rank that never starts (or stops before joining)
/// would leave the others in it forever. A watchdog thread started before it
/// ends the process at the deadline, saying which phase never completed; the
/// start-up exchanges after it have the collective deadline.
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
    let comm = cnn_mpi_comm_world()
    /// The control channel: a duplicate of the world for tokens and heartbeats.
    var control = cnn_mpi_comm_null()
    let lock = NSLock()
    var finalized = false
    /// The failure this rank reported; every later call throws it at once (the world cannot go on).
    var worldFailure: WorldFailure?
    /// Requests started and not yet completed, so `finalize()` can complete them.
    var outstanding: [ObjectIdentifier: MPIRequest] = [:]

    // Schedule state (under `lock`).
    /// -1 is the start-up exchange of host names; the caller's collectives are #0, #1, ...
    var nextSequence: Int64 = -1
    /// This rank's descriptors not yet compared with every peer's.
    var history: [Int64: Collective] = [:]
    var historyLow: Int64 = -1
    var peers: [PeerChannel] = []
    /// Token sends not yet complete (their buffers must live until then).
    var outgoing: [OutgoingToken] = []
    /// Heartbeat buffers: their requests are freed at once, the bytes kept until finalize.
    var heartbeatBuffers: [UnsafeMutablePointer<Int64>] = []
    var lastHeartbeat = 0.0

    // Report state (under `stateLock`, read by the SIGTERM handler).
    let stateLock = NSLock()
    var _deadline: TimeInterval
    var _currentStep = 0
    var waitingFor: Collective?
    var waitingSince = 0.0
    var signalSource: DispatchSourceSignal?
    /// UDP liveness datagrams outside MPI (see `LivenessBeacon`).
    var beacon: LivenessBeacon?

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
    ///
    /// `deadline`: seconds for each start-up phase and, afterwards, for each
    /// collective (see `deadline`); nil keeps $CNN_DIST_DEADLINE, else 60.
    public static func world(deadline: TimeInterval? = nil) throws -> MPICommunicator {
        sharedLock.lock()
        defer { sharedLock.unlock() }
        if let shared {
            if let deadline { shared.deadline = deadline }
            return shared
        }
        let made = try MPICommunicator(deadline: deadline ?? deadlineFromEnvironment() ?? 60)
        shared = made
        return made
    }

    private init(deadline: TimeInterval) throws {
        // Before MPI_Comm_rank answers, name the rank from the launcher's environment.
        let env = ProcessInfo.processInfo.environment
        let envRank = ["OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"].lazy.compactMap { env[$0].flatMap(Int.init) }.first ?? -1
        _deadline = deadline > 0 ? deadline : 60
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
            let watchdog = StartupWatchdog(phase: "MPI_Init_thread", deadline: _deadline, rank: envRank)
            defer { watchdog.disarm() }
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
    func locked<T>(_ call: String, _ body: () throws -> T) throws -> T {
        lock.lock()
        defer { lock.unlock() }
        guard !finalized else {
            throw CnnError.communication(rank: rank, call: call, reason: "MPI has already been finalized")
        }
        if let worldFailure { throw worldFailure }
        return try body()
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
        if let worldFailure { throw worldFailure }
        for request in Array(outstanding.values) { try waitLocked(request) }
        let last = try start(.finalize, count: 0) { handles in
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
        if let signalSource {
            signalSource.cancel()
            signal(SIGTERM, SIG_DFL)
        }
        beacon?.stop()
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

/// Seconds on a monotonic clock.
func monotonic() -> Double {
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

/// A non-blocking collective in flight (several handles if the buffer was split into C-int counts).
final class MPIRequest: CollectiveRequest {
    private unowned let owner: MPICommunicator
    let descriptor: Collective
    var handles: [MPIHandle] = []
    /// Handles before `next` have completed.
    var next = 0
    /// This rank's part is done and every peer's token has matched.
    var completed = false
    /// A second phase, issued once every handle so far has completed (its handles are appended).
    var nextStage: ((inout [MPIHandle]) throws -> Void)?
    /// Run once when the request completes (copies a result out of `scratch`).
    var onComplete: (() -> Void)?
    /// Memory the MPI calls read and write, owned by the request.
    var scratch: UnsafeMutableRawPointer?

    deinit { scratch?.deallocate() }

    init(owner: MPICommunicator, descriptor: Collective) {
        self.owner = owner
        self.descriptor = descriptor
    }

    func wait() throws { try owner.wait(self) }
    func test() throws -> Bool { try owner.test(self) }
}
/// Ends the process if a start-up phase without a deadline of its own has not
/// completed in time. The thread blocked inside MPI cannot throw or return, so
/// this is the one place the library ends the process by itself.
final class StartupWatchdog {
    private let done = DispatchSemaphore(value: 0)

    /// Starts watching `phase` for `deadline` seconds on (launcher-given) rank `rank`.
    init(phase: String, deadline: TimeInterval, rank: Int) {
        let done = self.done
        let thread = Thread {
            guard done.wait(timeout: .now() + deadline) == .timedOut else { return }
            let who = rank >= 0 ? "rank \(rank) (host \(hostNameForReports()))" : "host \(hostNameForReports())"
            FileHandle.standardError.write(Data(("cnn-dist: \(who): \(phase) did not complete within "
                + "\(formatSeconds(deadline)) s: a rank of this job never started or stalled before joining; exiting\n").utf8))
            _exit(WorldFailure.exitCode)
        }
        thread.name = "cnn-dist start-up watchdog"
        thread.start()
    }

    /// The phase completed (or failed by itself): the watchdog ends without doing anything.
    func disarm() { done.signal() }
}
