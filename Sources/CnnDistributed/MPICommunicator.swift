import CMPI
import CnnCore
import Foundation

/// MPI_COMM_WORLD through standard MPI-3 calls only (builds with OpenMPI and MPICH).
///
/// - Initialisation: `MPI_Init_thread` requesting MPI_THREAD_SERIALIZED (any
///   thread may call, one at a time; this class takes a lock around every
///   call to guarantee it). The level MPI provided is in `providedThreadLevel`.
/// - Errors: MPI_ERRORS_RETURN is set on the world communicator, so failures
///   come back as codes; every call goes through `check(_:call:)`, which
///   throws `CnnError.communication(rank:call:reason:)` with MPI's error string.
/// - Non-blocking: `startAllreduceSum` is MPI_Iallreduce; the request's
///   `wait()` is MPI_Wait and `test()` is MPI_Test. OpenMPI progresses
///   non-blocking collectives only inside MPI calls, so overlap comes from
///   calling `test()` now and then, or from other MPI calls.
/// - Lifetime: MPI can be initialised once per process, so there is one
///   instance, `MPICommunicator.world()`. Call `finalize()` once, at the end
///   of the process, after every request has completed.
public final class MPICommunicator: Communicator {
    /// This process's rank in MPI_COMM_WORLD.
    public let rank: Int
    /// The size of MPI_COMM_WORLD.
    public let size: Int
    /// MPI_Get_processor_name.
    public let processorName: String
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

    private let comm = cnn_mpi_comm_world()
    private let lock = NSLock()
    private var finalized = false
    /// Requests started and not yet completed, so `finalize()` can complete them.
    private var outstanding: [ObjectIdentifier: MPIRequest] = [:]

    // Counts are C ints: a larger buffer goes as several calls of at most this many elements.
    static let maxCount = 1 << 30

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
        try allreduce(UnsafeMutableRawPointer(buffer.baseAddress), count: buffer.count, stride: 4,
                      type: cnn_mpi_float(), op: cnn_mpi_sum())
    }

    public func allreduceSum(_ buffer: UnsafeMutableBufferPointer<Double>) throws {
        try allreduce(UnsafeMutableRawPointer(buffer.baseAddress), count: buffer.count, stride: 8,
                      type: cnn_mpi_double(), op: cnn_mpi_sum())
    }

    private func allreduce(_ base: UnsafeMutableRawPointer?, count: Int, stride: Int,
                           type: MPI_Datatype!, op: MPI_Op!) throws {
        try locked("MPI_Allreduce") {
            guard let base, count > 0 else { return }
            var start = 0
            while start < count {
                let n = min(Self.maxCount, count - start)
                try check(MPI_Allreduce(cnn_mpi_in_place(), base + start * stride, Int32(n), type, op, comm),
                          call: "MPI_Allreduce")
                start += n
            }
        }
    }

    public func startAllreduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws -> CollectiveRequest {
        try locked("MPI_Iallreduce") {
            guard let base = buffer.baseAddress, buffer.count > 0 else { return CompletedRequest() }
            let request = MPIRequest(owner: self)
            var start = 0
            while start < buffer.count {
                let n = min(Self.maxCount, buffer.count - start)
                var handle = cnn_mpi_request_null()
                try check(MPI_Iallreduce(cnn_mpi_in_place(), base + start, Int32(n), cnn_mpi_float(), cnn_mpi_sum(),
                                         comm, &handle), call: "MPI_Iallreduce")
                request.handles.append(handle)
                start += n
            }
            outstanding[ObjectIdentifier(request)] = request
            return request
        }
    }

    /// MPI_Wait on each of the request's handles (called by `MPIRequest.wait`).
    fileprivate func wait(_ request: MPIRequest) throws {
        try locked("MPI_Wait") { try waitLocked(request) }
    }

    private func waitLocked(_ request: MPIRequest) throws {
        while request.next < request.handles.count {
            try check(MPI_Wait(&request.handles[request.next], cnn_mpi_status_ignore()), call: "MPI_Wait")
            request.next += 1
        }
        outstanding[ObjectIdentifier(request)] = nil
    }

    /// MPI_Test on the request's next handles (called by `MPIRequest.test`).
    fileprivate func test(_ request: MPIRequest) throws -> Bool {
        try locked("MPI_Test") {
            while request.next < request.handles.count {
                var flag: Int32 = 0
                try check(MPI_Test(&request.handles[request.next], &flag, cnn_mpi_status_ignore()), call: "MPI_Test")
                if flag == 0 { return false }
                request.next += 1
            }
            outstanding[ObjectIdentifier(request)] = nil
            return true
        }
    }

    public func reduceSum(_ buffer: UnsafeMutableBufferPointer<Float>, root: Int) throws {
        try reduce(UnsafeMutableRawPointer(buffer.baseAddress), count: buffer.count, stride: 4, type: cnn_mpi_float(), root: root)
    }

    public func reduceSum(_ buffer: UnsafeMutableBufferPointer<Double>, root: Int) throws {
        try reduce(UnsafeMutableRawPointer(buffer.baseAddress), count: buffer.count, stride: 8, type: cnn_mpi_double(), root: root)
    }

    private func reduce(_ base: UnsafeMutableRawPointer?, count: Int, stride: Int, type: MPI_Datatype!, root: Int) throws {
        try checkRoot(root, size: size, rank: rank, call: "MPI_Reduce")
        try locked("MPI_Reduce") {
            guard let base, count > 0 else { return }
            var start = 0
            while start < count {
                let n = min(Self.maxCount, count - start)
                let chunk = base + start * stride
                // Root reduces in place; the others only send, their buffers unchanged.
                // A root other than 0 sends a copy instead of MPI_IN_PLACE: MPICH 4.0.x-4.1.1
                // crash on MPI_IN_PLACE at a non-zero root (pmodels/mpich#6540, fixed in #6543).
                let code: Int32
                if rank != root {
                    code = MPI_Reduce(chunk, nil, Int32(n), type, cnn_mpi_sum(), Int32(root), comm)
                } else if root == 0 {
                    code = MPI_Reduce(cnn_mpi_in_place(), chunk, Int32(n), type, cnn_mpi_sum(), Int32(root), comm)
                } else {
                    let copy = UnsafeMutableRawPointer.allocate(byteCount: n * stride, alignment: 16)
                    defer { copy.deallocate() }
                    copy.copyMemory(from: chunk, byteCount: n * stride)
                    code = MPI_Reduce(copy, chunk, Int32(n), type, cnn_mpi_sum(), Int32(root), comm)
                }
                try check(code, call: "MPI_Reduce")
                start += n
            }
        }
    }

    public func broadcast(_ bytes: UnsafeMutableRawBufferPointer, root: Int) throws {
        try checkRoot(root, size: size, rank: rank, call: "MPI_Bcast")
        try locked("MPI_Bcast") {
            guard let base = bytes.baseAddress, bytes.count > 0 else { return }
            var start = 0
            while start < bytes.count {
                let n = min(Self.maxCount, bytes.count - start)
                try check(MPI_Bcast(base + start, Int32(n), cnn_mpi_byte(), Int32(root), comm), call: "MPI_Bcast")
                start += n
            }
        }
    }

    public func barrier() throws {
        try locked("MPI_Barrier") { try check(MPI_Barrier(comm), call: "MPI_Barrier") }
    }

    public func allgather(_ value: Int64) throws -> [Int64] {
        try locked("MPI_Allgather") {
            var mine = value
            var all = [Int64](repeating: 0, count: size)
            try all.withUnsafeMutableBufferPointer { out in
                try check(MPI_Allgather(&mine, 1, cnn_mpi_int64(), out.baseAddress, 1, cnn_mpi_int64(), comm),
                          call: "MPI_Allgather")
            }
            return all
        }
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
        try scalarAllreduce(value, op: cnn_mpi_max())
    }

    public func allreduceMin(_ value: Double) throws -> Double {
        try scalarAllreduce(value, op: cnn_mpi_min())
    }

    private func scalarAllreduce(_ value: Double, op: MPI_Op!) throws -> Double {
        try locked("MPI_Allreduce") {
            var v = value
            try check(MPI_Allreduce(cnn_mpi_in_place(), &v, 1, cnn_mpi_double(), op, comm), call: "MPI_Allreduce")
            return v
        }
    }

    // MARK: Shutdown

    /// Completes outstanding requests and calls MPI_Finalize. Call once, at
    /// the end of the process, on every rank; later calls do nothing, and any
    /// collective after it throws. MPI cannot be initialised again.
    public func finalize() throws {
        lock.lock()
        defer { lock.unlock() }
        guard !finalized else { return }
        for request in Array(outstanding.values) { try waitLocked(request) }
        finalized = true
        try check(MPI_Finalize(), call: "MPI_Finalize")
    }

    /// MPI_Abort on the world: ends every rank's process with `errorCode`.
    /// For a rank that failed while others may be blocked in a collective.
    public func abort(errorCode: Int32) -> Never {
        _ = MPI_Abort(comm, errorCode)
        exit(errorCode)
    }
}

/// An MPI_Iallreduce in flight (several handles if the buffer was split into C-int counts).
final class MPIRequest: CollectiveRequest {
    private unowned let owner: MPICommunicator
    // Typed by inference: MPI_Request is a pointer in OpenMPI and an int in MPICH.
    var handles = Array(repeating: cnn_mpi_request_null(), count: 0)
    /// Handles before `next` have completed.
    var next = 0

    init(owner: MPICommunicator) { self.owner = owner }

    func wait() throws { try owner.wait(self) }
    func test() throws -> Bool { try owner.test(self) }
}
