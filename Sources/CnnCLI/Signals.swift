import Dispatch
import Foundation
import CnnDistributed

/// Interrupt and preemption signals become a request to stop at the next
/// step boundary (see `Trainer.stopRequested`): every rank finishes the
/// step, rank 0 writes a checkpoint, and the job exits with status 75.
///
/// SIGINT (Ctrl-C), SIGUSR1 (Slurm's `--signal`, forwarded by mpirun) and
/// SIGTERM (`scancel`, `scontrol requeue`, preemption, PBS's `qdel`, or mpirun
/// passing on its own SIGTERM). The launcher's SIGKILL follows a SIGTERM after
/// its grace period (Slurm's KillWait; Open MPI's `odls_base_sigkill_timeout`,
/// 1 s unless raised): time to finish the step and checkpoint. mpirun also
/// sends SIGTERM when it ends a job whose rank died; the survivors' step cannot
/// finish then, and `onSIGTERM` (set by the world) says where each one was.
///
/// A second Ctrl-C ends the process at once. A repeated SIGTERM or SIGUSR1 does
/// not: a batch system signals every process of the job and mpirun passes its
/// own copy on a moment later, so one request often arrives twice; "at once"
/// is the launcher's SIGKILL.
enum StopSignals {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var received: Int32 = 0
    nonisolated(unsafe) private static var sources: [DispatchSourceSignal] = []

    /// The signal that asked to stop, or 0.
    static var requested: Int32 {
        lock.lock(); defer { lock.unlock() }
        return received
    }

    /// Whether signals stop the process this way (then the MPI termination report is not installed).
    static var installed: Bool { !sources.isEmpty }

    /// Called on the first SIGTERM, after the stop request is recorded.
    nonisolated(unsafe) static var onSIGTERM: (() -> Void)?

    static func install() {
        guard sources.isEmpty else { return }
        for number in [SIGINT, SIGUSR1, SIGTERM] {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler {
                lock.lock()
                let first = received == 0
                if first { received = number }
                lock.unlock()
                let name = signalName(number)
                if first {
                    let hint = number == SIGINT ? " (Ctrl-C again to stop at once)" : ""
                    let text = "cnn-dist: \(name): stopping after this step with a checkpoint\(hint)\n"
                    FileHandle.standardError.write(Data(text.utf8))
                    if number == SIGTERM { onSIGTERM?() }
                } else if number == SIGINT {
                    FileHandle.standardError.write(Data("cnn-dist: SIGINT again: stopping now, without a checkpoint\n".utf8))
                    _exit(128 + number)
                }
            }
            source.resume()
            sources.append(source)
        }
    }

    static func signalName(_ number: Int32) -> String {
        number == SIGINT ? "SIGINT" : number == SIGUSR1 ? "SIGUSR1" : "SIGTERM"
    }
}
