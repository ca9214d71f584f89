import ArgumentParser
import CnnCore
import CnnDistributed
import Foundation

/// How a command's ranks start: MPI under a launcher (or with `--mpi`), or
/// `--local-ranks N` threads of this process; and how long a collective waits.
struct WorldOptions: ParsableArguments {
    @Option(name: .customLong("local-ranks"), help: "Single-node test mode: N ranks as threads of this process, no mpirun.")
    var localRanks: Int?
    @Option(help: ArgumentHelp("Seconds a rank waits in one collective before naming the missing ranks and stopping "
                               + "the job (default $CNN_DIST_DEADLINE, else 60)."))
    var deadline: Double?

    func validate() throws {
        if let n = localRanks, n < 1 { throw ValidationError("--local-ranks must be at least 1, got \(n)") }
        if let d = deadline, !(d > 0 && d.isFinite) { throw ValidationError("--deadline must be positive seconds, got \(d)") }
    }

    /// The collective deadline in force: the flag, else $CNN_DIST_DEADLINE, else 60 s.
    var resolvedDeadline: Double { deadline ?? deadlineFromEnvironment() ?? 60 }
}

/// Starts the world `options` describe, runs `body` on every rank, and ends
/// the world; returns rank 0's result (nil on the other ranks of an MPI job).
///
/// A rank that fails under MPI writes its error and aborts the job (MPI_Abort,
/// exit status 3 for a `WorldFailure`, else 1): the other ranks may be waiting
/// in a collective this one will never reach. In-process ranks are
/// stopped by their world and the error is rethrown.
@discardableResult
func withWorld<T>(_ options: WorldOptions, forceMPI: Bool = false,
                  _ body: @escaping (Communicator) throws -> T) throws -> T? {
    if let n = options.localRanks {
        let lock = NSLock()
        var result: T?
        try LocalWorld.run(size: n, timeout: options.resolvedDeadline) { comm in
            let value = try body(comm)
            if comm.rank == 0 { lock.lock(); result = value; lock.unlock() }
        }
        return result
    }
    let comm = try makeWorldCommunicator(forceMPI: forceMPI, deadline: options.resolvedDeadline)
    installTerminationSignalHandlers(comm)
    let value: T
    do { value = try body(comm) } catch {
        if comm.size > 1 {
            endWorldAfterError(comm, error: error, context: "rank \(comm.rank): ")
            Foundation.exit(worldExitCode(for: error))
        }
        try? finalizeWorldCommunicator(comm)
        throw error
    }
    try finalizeWorldCommunicator(comm)
    return comm.rank == 0 ? value : nil
}
