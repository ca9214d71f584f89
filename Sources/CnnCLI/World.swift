import ArgumentParser
import CnnCore
import CnnDistributed
import CnnTraining
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
    if comm.size == 1, let (variable, tasks) = launcherTaskCount(), tasks > 1 {
        try? finalizeWorldCommunicator(comm)
        throw LaunchMismatch(message:
            "this process is rank 0 of a 1-rank world, but \(variable)=\(tasks) says the job has \(tasks) tasks: "
            + "each task would train alone and all would write the same run. The launcher did not connect the ranks "
            + "(Slurm without PMIx: use `srun --mpi=pmix`, or `mpirun -n \(tasks)` inside the allocation; "
            + "see launch/slurm.sbatch and launch/pbs.sh)")
    }
    if StopSignals.installed {
        // Training takes SIGTERM as "checkpoint and stop"; a rank still waiting in a collective
        // shortly after it cannot finish its step (a peer died): it says where it was.
        StopSignals.onSIGTERM = { reportIfWaiting(comm, after: 0.3, signal: "SIGTERM") }
    } else {
        installTerminationSignalHandlers(comm)
    }
    let value: T
    do { value = try body(comm) } catch {
        if error is TrainingInterrupted {
            // Every rank agreed to stop after the same step: end the world normally.
            try? finalizeWorldCommunicator(comm)
            if comm.rank != 0 { Foundation.exit(TrainingInterrupted.exitCode) }
            throw error
        }
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

/// The task count an MPI launcher or Slurm announces, if more than one. An MPI
/// launcher's own variables are authoritative (`mpirun -n 1` inside a larger
/// allocation is one rank); Slurm's task count counts only without them.
/// (PBS's PBS_NP counts processors, not tasks: one threaded process may use them all.)
func launcherTaskCount(_ environment: [String: String] = ProcessInfo.processInfo.environment) -> (String, Int)? {
    let launcher = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"].filter { environment[$0] != nil }
    for variable in launcher.isEmpty ? ["SLURM_NTASKS", "SLURM_NPROCS"] : launcher {
        if let text = environment[variable], let n = Int(text), n > 1 { return (variable, n) }
    }
    return nil
}

/// The launcher started tasks but did not connect them into one world.
struct LaunchMismatch: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}
