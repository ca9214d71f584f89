import Dispatch
import Foundation
import CnnDistributed

/// Interrupt and preemption signals become a request to stop at the next
/// step boundary (see `Trainer.stopRequested`): every rank finishes the
/// step, rank 0 writes a checkpoint, and the job exits with status 75.
///
/// SIGINT (Ctrl-C) and SIGUSR1 (Slurm's `--signal`, forwarded by mpirun)
/// always; SIGTERM too when this process is not an MPI rank (under mpirun a
/// SIGTERM means the launcher is ending the job after a failure, and the
/// rank reports where it was instead). A second signal ends the process at once.
enum StopSignals {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var received: Int32 = 0
    nonisolated(unsafe) private static var sources: [DispatchSourceSignal] = []

    /// The signal that asked to stop, or 0.
    static var requested: Int32 {
        lock.lock(); defer { lock.unlock() }
        return received
    }

    static func install(underMPI: Bool) {
        guard sources.isEmpty else { return }
        let signals = [SIGINT, SIGUSR1] + (underMPI ? [] : [SIGTERM])
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
