// CnnDistributed: communicators for data-parallel training.
//
// One protocol, three implementations with the same semantics:
//   - MPICommunicator:           one rank per process, launched by mpirun (OpenMPI or MPICH).
//   - LocalWorld / LocalCommunicator: N ranks on N threads of one process ("single-node
//                                test mode"), for tests and for running without mpirun.
//   - SingleProcessCommunicator: a world of one rank; every collective is the identity.
//
// Conventions shared by all implementations:
//   - Every collective is called by every rank of the world, in the same order
//     (MPI's rule). Non-blocking collectives count in that order when started,
//     not when waited; they may be waited in any order.
//   - Buffers are reduced in place. Sums are element-wise.
//   - Counts (element or byte) must agree across ranks.
//   - A collective that cannot complete on every rank (a rank missed the
//     deadline, schedules differ, a rank left) throws `WorldFailure`, worded
//     by `CollectiveReport` the same way in every implementation and naming
//     the collective by its number (`Collective`). Other errors come back as
//     `CnnError.communication(rank:call:reason:)`, where `rank` is the rank
//     that observed the failure and `reason` names the rank that caused it
//     when that is known.

import CnnCore
import Foundation

/// A group of ranks that take part in collective operations together.
///
/// Thread use: a communicator is driven by one thread at a time (the training
/// loop, or a communication thread handing off to it). Implementations
/// serialise concurrent calls, but two threads of one rank must not start
/// collectives concurrently, because the order in which they start is the
/// order in which they are matched across ranks.
public protocol Communicator: AnyObject {
    /// This process's (or thread's) rank, in `0..<size`.
    var rank: Int { get }
    /// The number of ranks in the world.
    var size: Int { get }
    /// The host this rank runs on (MPI_Get_processor_name for MPI, the host
    /// name otherwise), for logs.
    var processorName: String { get }

    /// Replaces `buffer` on every rank with the element-wise sum of all ranks'
    /// buffers. All ranks pass the same count (0 is allowed).
    ///
    /// Order: the in-process implementation adds contributions in rank order
    /// 0, 1, ..., N-1 for every element, so results are bitwise reproducible
    /// run to run. MPI chooses its own (deterministic for a fixed world size
    /// and count in OpenMPI's default tuned algorithms) order, so the last
    /// bits can differ between MPI and in-process runs unless the values sum
    /// exactly.
    func allreduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws

    /// Double-precision form of `allreduceSum(_:)`, same semantics.
    func allreduceSum(_ buffer: UnsafeMutableBufferPointer<Double>) throws

    /// Starts an in-place element-wise sum over all ranks and returns at once.
    ///
    /// The buffer must stay allocated and must not be read or written until
    /// the returned request's `wait()` returns (or `test()` returns true).
    /// Several requests may be in flight at once and may be completed in any
    /// order; they are matched across ranks in the order they were started,
    /// together with blocking collectives. Every request must be completed.
    /// Results are identical to `allreduceSum(_:)`.
    func startAllreduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws -> CollectiveRequest

    /// Starts an allreduce of `buffer` that sends bf16, half the bytes of `startAllreduceSum`:
    /// every rank's values are rounded to bf16 (round to nearest even, `bf16Bits`), the ranks'
    /// bf16 values are summed in fp32 in rank order 0, 1, ..., N-1, and the sum is rounded to
    /// bf16 once. Every rank's buffer ends with those same bits (as Floats), in every
    /// implementation: the sum of one element is always formed by one rank in rank order
    /// (see `sumBF16InRankOrder`), never in an order a library chooses. Same rules as
    /// `startAllreduceSum` for the buffer and the request; counted as its own kind of
    /// collective (`CollectiveKind.allreduceBF16`) in schedule checks.
    func startAllreduceSumBF16(_ buffer: UnsafeMutableBufferPointer<Float>) throws -> CollectiveRequest

    /// Sums `buffer` element-wise over all ranks into `root`'s buffer.
    /// Buffers on the other ranks are left unchanged.
    func reduceSum(_ buffer: UnsafeMutableBufferPointer<Float>, root: Int) throws

    /// Double-precision form of `reduceSum(_:root:)`.
    func reduceSum(_ buffer: UnsafeMutableBufferPointer<Double>, root: Int) throws

    /// Copies `root`'s bytes into every other rank's `bytes`. All ranks pass
    /// the same byte count.
    func broadcast(_ bytes: UnsafeMutableRawBufferPointer, root: Int) throws

    /// Returns once every rank has called `barrier()`.
    func barrier() throws

    /// Gathers one small control value (a checksum, a batch count) from every
    /// rank; element `r` of the result is rank `r`'s value, on every rank.
    func allgather(_ value: Int64) throws -> [Int64]

    /// Gathers `bytes` from every rank into `gathered` on every rank: rank
    /// `r`'s bytes land at offset `r * bytes.count`. All ranks pass the same
    /// byte count, and `gathered` holds `size * bytes.count` bytes. For small
    /// control data (a report line per rank), not for tensors.
    func allgather(_ bytes: UnsafeRawBufferPointer, into gathered: UnsafeMutableRawBufferPointer) throws

    /// The largest of the ranks' values, on every rank (e.g. the slowest step time).
    func allreduceMax(_ value: Double) throws -> Double

    /// The smallest of the ranks' values, on every rank.
    func allreduceMin(_ value: Double) throws -> Double

    /// The training step this rank is at, set by the training loop. Carried
    /// with every collective so that deadline and schedule-mismatch reports
    /// can say at which step a rank stopped. Implementations without such
    /// reports ignore it (see the default below).
    var currentStep: Int { get set }
}

extension Communicator {
    /// Default for communicators that do not report steps: always 0, setting does nothing.
    public var currentStep: Int {
        get { 0 }
        set {}
    }
}

/// A non-blocking collective in flight, from `Communicator.startAllreduceSum`.
public protocol CollectiveRequest: AnyObject {
    /// Blocks until the operation has completed on this rank; its buffer then
    /// holds the result. Calling it again after completion returns at once.
    func wait() throws

    /// Returns true if the operation has completed (the buffer holds the
    /// result), false if it is still in flight. Never blocks for long; with
    /// MPI it also drives progress, so polling it is a valid way to complete.
    func test() throws -> Bool
}

// MARK: - Conveniences over the protocol

extension Communicator {
    /// Element-wise sum over all ranks of an array, in place.
    public func allreduceSum(_ array: inout [Float]) throws {
        try array.withUnsafeMutableBufferPointer { try allreduceSum($0) }
    }

    /// Element-wise sum over all ranks of an array, in place.
    public func allreduceSum(_ array: inout [Double]) throws {
        try array.withUnsafeMutableBufferPointer { try allreduceSum($0) }
    }

    /// The sum over all ranks of one value (a loss, a correct-prediction count).
    public func allreduceSum(_ value: Double) throws -> Double {
        var v = value
        try withUnsafeMutablePointer(to: &v) { try allreduceSum(UnsafeMutableBufferPointer(start: $0, count: 1)) }
        return v
    }

    /// Broadcasts an array of trivial values from `root`; all ranks pass arrays of the same count.
    public func broadcast<T>(_ array: inout [T], root: Int) throws {
        try array.withUnsafeMutableBytes { try broadcast($0, root: root) }
    }

    /// Broadcasts a string of at most `maxBytes` UTF-8 bytes from `root`; returns root's string on every rank.
    public func broadcast(_ string: String, root: Int, maxBytes: Int = 1024) throws -> String {
        var bytes = [UInt8](repeating: 0, count: maxBytes + 8)
        if rank == root {
            let utf8 = Array(string.utf8.prefix(maxBytes))
            var n = Int64(utf8.count).littleEndian
            withUnsafeBytes(of: &n) { for i in 0..<8 { bytes[i] = $0[i] } }
            for (i, b) in utf8.enumerated() { bytes[8 + i] = b }
        }
        try broadcast(&bytes, root: root)
        var n: Int64 = 0
        withUnsafeMutableBytes(of: &n) { for i in 0..<8 { $0[i] = bytes[i] } }
        let count = max(0, min(maxBytes, Int(Int64(littleEndian: n))))
        return String(decoding: bytes[8..<(8 + count)], as: UTF8.self)
    }
}

extension Communicator {
    /// Blocking form of `startAllreduceSumBF16(_:)`.
    public func allreduceSumBF16(_ buffer: UnsafeMutableBufferPointer<Float>) throws {
        try startAllreduceSumBF16(buffer).wait()
    }

    /// Blocking form of `startAllreduceSumBF16(_:)` over an array.
    public func allreduceSumBF16(_ array: inout [Float]) throws {
        try array.withUnsafeMutableBufferPointer { try allreduceSumBF16($0) }
    }

    /// A bf16 allreduce built from the byte allgather, for communicators that do not provide
    /// their own (the three in this module do, with a rank sending only its share): every rank
    /// gets every rank's bf16 values and sums them itself, in rank order. Completes before it returns.
    public func startAllreduceSumBF16(_ buffer: UnsafeMutableBufferPointer<Float>) throws -> CollectiveRequest {
        let n = buffer.count, p = size
        let mine = UnsafeMutableBufferPointer<UInt16>.allocate(capacity: n)
        let all = UnsafeMutableBufferPointer<UInt16>.allocate(capacity: n * p)
        defer { mine.deallocate(); all.deallocate() }
        for i in 0..<n { mine[i] = bf16Bits(buffer[i]) }
        try allgather(UnsafeRawBufferPointer(mine), into: UnsafeMutableRawBufferPointer(all))
        sumBF16InRankOrder(UnsafePointer(all.baseAddress!), ranks: p, stride: n, count: n, into: mine.baseAddress!)
        for i in 0..<n { buffer[i] = floatFromBF16Bits(mine[i]) }
        return CompletedRequest()
    }

    /// A byte allgather built from one broadcast per rank, for communicators
    /// that do not provide their own (the three in this module do).
    public func allgather(_ bytes: UnsafeRawBufferPointer, into gathered: UnsafeMutableRawBufferPointer) throws {
        try checkAllgatherBuffers(bytes, gathered, size: size, rank: rank, call: "allgather")
        let n = bytes.count
        guard n > 0, let base = gathered.baseAddress else { return }
        if let src = bytes.baseAddress { (base + rank * n).copyMemory(from: src, byteCount: n) }
        for root in 0..<size {
            try broadcast(UnsafeMutableRawBufferPointer(start: base + root * n, count: n), root: root)
        }
    }

    /// Gathers one string of at most `maxBytes` UTF-8 bytes from every rank
    /// (longer strings are cut at a character boundary); element `r` is rank `r`'s string, on every rank.
    public func allgather(_ string: String, maxBytes: Int = 1024) throws -> [String] {
        var utf8 = Array(string.utf8)
        if utf8.count > maxBytes {
            var end = maxBytes
            while end > 0 && (utf8[end] & 0xC0) == 0x80 { end -= 1 }  // not inside a multi-byte character
            utf8 = Array(utf8[..<end])
        }
        // Each rank's record: an 8-byte little-endian length, then the bytes, zero-padded.
        let record = 8 + maxBytes
        var mine = [UInt8](repeating: 0, count: record)
        withUnsafeBytes(of: Int64(utf8.count).littleEndian) { for i in 0..<8 { mine[i] = $0[i] } }
        for (i, b) in utf8.enumerated() { mine[8 + i] = b }
        var all = [UInt8](repeating: 0, count: record * size)
        try mine.withUnsafeBytes { src in try all.withUnsafeMutableBytes { try allgather(src, into: $0) } }
        return (0..<size).map { r in
            var n: Int64 = 0
            withUnsafeMutableBytes(of: &n) { for i in 0..<8 { $0[i] = all[r * record + i] } }
            let count = max(0, min(maxBytes, Int(Int64(littleEndian: n))))
            return String(decoding: all[(r * record + 8)..<(r * record + 8 + count)], as: UTF8.self)
        }
    }
}

/// The one arithmetic of every bf16 allreduce: element i of `out` is the bf16 (round to nearest
/// even) of the fp32 sum, in rank order 0..ranks-1, of element i of each rank's bf16 values.
/// Rank r's values start at `parts + r * stride`. Starting from rank 0's value (not from +0)
/// keeps a sum of negative zeros negative, as the fp32 allreduce does.
///     parts: ranks x stride bf16 (the first count of each used), out: count bf16, not overlapping parts
func sumBF16InRankOrder(_ parts: UnsafePointer<UInt16>, ranks: Int, stride: Int, count: Int,
                        into out: UnsafeMutablePointer<UInt16>) {
    for i in 0..<count {
        var acc = floatFromBF16Bits(parts[i])
        for r in 1..<max(1, ranks) { acc += floatFromBF16Bits(parts[r * stride + i]) }
        out[i] = bf16Bits(acc)
    }
}

/// Element i of `out` is the fp32 sum, in rank order 0..ranks-1, of element i of each rank's
/// values, as `LocalWorld` sums. Rank r's values start at `parts + r * stride`.
///     parts: ranks x stride floats (the first count of each used), out: count floats, not overlapping parts
func sumInRankOrder(_ parts: UnsafePointer<Float>, ranks: Int, stride: Int, count: Int,
                    into out: UnsafeMutablePointer<Float>) {
    guard ranks > 1 else { out.update(from: parts, count: count); return }
    add(parts, parts + stride, into: out, count: count)
    for r in 2..<max(2, ranks) { add(out, parts + r * stride, into: out, count: count) }
}

/// Checks that a byte allgather's output holds `size` times the input, the same way in every implementation.
func checkAllgatherBuffers(_ bytes: UnsafeRawBufferPointer, _ gathered: UnsafeMutableRawBufferPointer,
                           size: Int, rank: Int, call: String) throws {
    guard gathered.count == bytes.count * size else {
        throw CnnError.communication(rank: rank, call: call, reason:
            "the output holds \(gathered.count) bytes, expected \(size) ranks x \(bytes.count) bytes = \(size * bytes.count)")
    }
}

/// Checks a root argument the same way in every implementation.
func checkRoot(_ root: Int, size: Int, rank: Int, call: String) throws {
    guard (0..<size).contains(root) else {
        throw CnnError.communication(rank: rank, call: call,
                                     reason: "root \(root) is not a rank of this \(size)-rank world")
    }
}

// MARK: - Choosing the world communicator

/// Environment variables set by MPI launchers on each process they start:
/// OpenMPI's mpirun (OMPI_COMM_WORLD_SIZE/RANK), PMIx launchers such as
/// OpenMPI 5 and Slurm (PMIX_RANK), and PMI launchers such as MPICH's Hydra
/// (PMI_SIZE/PMI_RANK).
public let mpiLauncherEnvironmentVariables = ["OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK",
                                              "PMIX_RANK", "PMI_SIZE", "PMI_RANK"]

/// True if this process was started by an MPI launcher (see `mpiLauncherEnvironmentVariables`).
public func launchedByMPI(environment: [String: String] = ProcessInfo.processInfo.environment) -> Bool {
    mpiLauncherEnvironmentVariables.contains { environment[$0] != nil }
}

/// The communicator for this process's world.
///
/// Under an MPI launcher (mpirun, mpiexec, srun) this initialises MPI and
/// returns the shared `MPICommunicator` (call `finalize()` on it once, at the
/// end of the process). Otherwise it returns a `SingleProcessCommunicator`
/// without touching MPI: OpenMPI's singleton init (MPI_Init without mpirun)
/// has to start a helper daemon, which is slow and fails in some containers.
/// Set CNN_DIST_FORCE_MPI=1, or pass `forceMPI`, to use MPI anyway.
///
/// `deadline`: seconds a rank waits in one collective before it names the
/// ranks that have not arrived and stops the job (see `MPICommunicator`);
/// nil keeps $CNN_DIST_DEADLINE, else 60.
public func makeWorldCommunicator(forceMPI: Bool = false, deadline: TimeInterval? = nil) throws -> Communicator {
    let env = ProcessInfo.processInfo.environment
    if forceMPI || env["CNN_DIST_FORCE_MPI"] == "1" || launchedByMPI(environment: env) {
        return try MPICommunicator.world(deadline: deadline)
    }
    return SingleProcessCommunicator()
}

/// The collective deadline from $CNN_DIST_DEADLINE (seconds), or nil if unset or not a positive number.
public func deadlineFromEnvironment(_ environment: [String: String] = ProcessInfo.processInfo.environment) -> TimeInterval? {
    environment["CNN_DIST_DEADLINE"].flatMap(Double.init).flatMap { $0 > 0 && $0.isFinite ? $0 : nil }
}

/// Ends the world started by `makeWorldCommunicator()`: finalises MPI if it
/// was used, does nothing otherwise. Call once, at the end of the process.
public func finalizeWorldCommunicator(_ communicator: Communicator) throws {
    if let mpi = communicator as? MPICommunicator { try mpi.finalize() }
}

// MARK: - What the command line calls: signals and the exit decision
//
// The library neither installs signal handlers nor ends the process on an error (the one
// exception: the start-up watchdog, for a thread stuck inside MPI_Init_thread). A command
// starts the world, calls `installTerminationSignalHandlers`, runs its work, and on an
// error calls `endWorldAfterError` and then exits with `worldExitCode(for:)` (or rethrows).

/// Under MPI, on SIGTERM (the launcher ending the job after another rank failed) this rank
/// writes what it was waiting for and when it last heard from each peer, then exits with
/// status 143. Does nothing for other communicators. Call once, right after starting the world.
public func installTerminationSignalHandlers(_ communicator: Communicator) {
    (communicator as? MPICommunicator)?.installTerminationReport()
}

/// For a command that takes a signal as "finish this step, then stop" (training): under MPI,
/// if this rank is waiting in a collective `seconds` after the signal, it writes the same
/// report as above (the step cannot finish if a peer died) and goes on waiting. Returns at once.
public func reportIfWaiting(_ communicator: Communicator, after seconds: Double, signal: String) {
    (communicator as? MPICommunicator)?.reportIfWaiting(after: seconds, signal: signal)
}

/// The exit status of a process whose work ended with `error`: `WorldFailure.exitCode` for a
/// collective that could not complete on every rank, 1 for anything else.
public func worldExitCode(for error: Error) -> Int32 {
    error is WorldFailure ? WorldFailure.exitCode : 1
}

/// After `error` on this rank, writes its report to standard error (a `WorldFailure` as its
/// one `cnn-dist:` line, anything else as "Error: " + `context` + the error) and, under MPI,
/// aborts the whole job with `worldExitCode(for:)`: the other ranks may be blocked in a collective
/// this one will never reach. Otherwise returns, and the caller rethrows or exits.
public func endWorldAfterError(_ communicator: Communicator, error: Error, context: String = "") {
    let line = (error as? WorldFailure)?.reportLine ?? "Error: \(context)\(error)"
    FileHandle.standardError.write(Data((line + "\n").utf8))
    if let mpi = communicator as? MPICommunicator { mpi.abort(errorCode: worldExitCode(for: error)) }
}

