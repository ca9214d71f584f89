import Dispatch
import Foundation
import CnnDistributed

/// Interrupt and preemption signals become a request to stop at the next
/// step boundary (see `Trainer.stopRequested`): every rank finishes the
/// step, rank 0 writes a checkpoint, and the job exits with status 75.
///
/// SIGINT (Ctrl-C) and SIGUSR1 (Slurm's `--signal`, forwarded by mpirun)
/// always; SIGTERM too unless mpirun (or MPICH's mpiexec) started this rank:
/// there a SIGTERM means the launcher is ending the job after a failure, and
/// the rank reports where it was instead. A task srun started directly gets
/// SIGTERM from `scancel`, `scontrol requeue` or preemption, with KillWait
/// seconds before SIGKILL: time to finish the step and checkpoint. A second
/// signal ends the process at once.
enum StopSignals {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var received: Int32 = 0
    nonisolated(unsafe) private static var sources: [DispatchSourceSignal] = []

    /// The signal that asked to stop, or 0.
    static var requested: Int32 {
        lock.lock(); defer { lock.unlock() }
        return received
    }

    /// Whether SIGTERM was installed as a stop request (then the MPI termination report is not).
    nonisolated(unsafe) private(set) static var stopsOnSIGTERM = false

    static func install(sigtermStops: Bool) {
        guard sources.isEmpty else { return }
        stopsOnSIGTERM = sigtermStops
        let signals = [SIGINT, SIGUSR1] + (sigtermStops ? [SIGTERM] : [])
        for number in signals {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler {
                lock.lock()
                let first = received == 0
                if first { received = number }
                lock.unlock()
                let name = number == SIGINT ? "SIGINT" : number == SIGUSR1 ? "SIGUSR1" : "SIGTERM"
                if first {
                    let text = "cnn-dist: \(name): stopping after this step with a checkpoint (send it again to stop at once)\n"
                    FileHandle.standardError.write(Data(text.utf8))
                } else {
                    FileHandle.standardError.write(Data("cnn-dist: \(name) again: stopping now, without a checkpoint\n".utf8))
                    _exit(128 + number)
                }
            }
            source.resume()
            sources.append(source)
        }
    }
}

/// Whether SIGTERM asks this process to checkpoint and stop: yes outside MPI
/// and for a task srun started directly; no for a rank of mpirun or mpiexec
/// (which set OMPI_COMM_WORLD_SIZE or MPI_LOCALNRANKS, also inside a Slurm job).
public func sigtermMeansStop(environment: [String: String] = ProcessInfo.processInfo.environment) -> Bool {
    guard launchedByMPI(environment: environment) else { return true }
    let startedBySrun = environment["SLURM_STEP_ID"] != nil
    let startedByMPIRun = environment["OMPI_COMM_WORLD_SIZE"] != nil || environment["MPI_LOCALNRANKS"] != nil
    return startedBySrun && !startedByMPIRun
}
