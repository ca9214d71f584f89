import ArgumentParser
import CnnCore
import CnnDistributed
import Foundation

/// `cnn-dist selftest [--local-ranks N]`: checks the communicator with exact
/// expected values (allreduce of several sizes up to 10 M floats, overlapping
/// non-blocking allreduces, reduce, broadcast from the first and last rank,
/// allgather, max/min, barrier). Rank 0 prints one line per rank and a summary.
///
/// Under mpirun it uses MPI; with `--local-ranks N` it runs N ranks as threads
/// of this process; otherwise it checks a one-rank world.
public struct SelfTestCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "selftest",
        abstract: "Check the communicator (run under mpirun, or with --local-ranks N).",
        shouldDisplay: false
    )

    @OptionGroup var world: WorldOptions

    @Option(name: .long, help: "Element count of the large Float allreduce.")
    var largeCount: Int = 10_000_000

    @Option(name: .long, help: ArgumentHelp("Inject a fault to check failure handling: throw, mismatch, extra, count, hang.",
                                            visibility: .hidden))
    var fault: Fault?

    /// Faults the self-test can inject, so tests can check that failures end every rank with a clear message.
    enum Fault: String, ExpressibleByArgument {
        /// The last rank throws before the checks while the others block in a collective.
        case `throw`
        /// Rank 0 broadcasts 8 bytes while the others expect 4 (MPI_ERR_TRUNCATE under MPI).
        case mismatch
        /// Rank 1 does one extra allreduce before the checks (a schedule one collective longer).
        case extra
        /// Rank 1 allreduces 1001 floats where the others allreduce 1000.
        case count
        /// The last rank loops forever before the checks (a rank that stops making progress).
        case hang
    }

    @Option(name: .long, help: ArgumentHelp("Also time N allreduces of 1 and of 65536 floats (per-collective cost).",
                                            visibility: .hidden))
    var latency: Int = 0

    public init() {}

    /// Mean seconds per blocking allreduce of `count` floats over `repeats` calls (after 10 warm-up calls).
    private static func allreduceSeconds(_ comm: Communicator, count: Int, repeats: Int) throws -> Double {
        var buffer = [Float](repeating: 1, count: count)
        for _ in 0..<10 { try comm.allreduceSum(&buffer) }
        try comm.barrier()
        let start = DispatchTime.now().uptimeNanoseconds
        for _ in 0..<repeats { try comm.allreduceSum(&buffer) }
        return Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9 / Double(repeats)
    }

    /// Runs the injected fault (if any), then the checks.
    private static func check(_ comm: Communicator, largeCount: Int, fault: Fault?) throws -> CommunicatorSelfTest.Report {
        switch fault {
        case .throw? where comm.rank == comm.size - 1:
            throw CnnError.invalidArgument(layer: "selftest", argument: "--fault", value: "throw",
                                           reason: "injected failure on rank \(comm.rank)")
        case .mismatch?:
            var bytes = [UInt8](repeating: 1, count: comm.rank == 0 ? 8 : 4)
            try comm.broadcast(&bytes, root: 0)
        case .extra? where comm.rank == 1:
            var values = [Float](repeating: 1, count: 1000)
            try comm.allreduceSum(&values)
        case .count?:
            var values = [Float](repeating: 1, count: comm.rank == 1 ? 1001 : 1000)
            try comm.allreduceSum(&values)
        case .hang? where comm.rank == comm.size - 1:
            FileHandle.standardError.write(Data("selftest: rank \(comm.rank) loops forever (--fault hang)\n".utf8))
            var spins = 0
            while clock() != -1 { spins &+= 1 } // clock() does not fail here: an endless busy loop
            _ = spins
        default:
            break
        }
        return try CommunicatorSelfTest.run(comm, largeCount: largeCount)
    }

    public func validate() throws {
        guard (0...1 << 30).contains(largeCount) else {
            throw ValidationError("--large-count must be from 0 to 2^30 floats (4 GiB), got \(largeCount)")
        }
    }

    public func run() throws {
        let largeCount = self.largeCount, fault = self.fault, latency = self.latency
        // Under MPI rank 0 prints before finalizing; in-process, after the world ends.
        let result = try withWorld(world) { comm -> (report: CommunicatorSelfTest.Report, printed: Bool) in
            let report = try Self.check(comm, largeCount: largeCount, fault: fault)
            if latency > 0 {
                let small = try Self.allreduceSeconds(comm, count: 1, repeats: latency)
                let large = try Self.allreduceSeconds(comm, count: 65_536, repeats: latency)
                if comm.rank == 0 {
                    print(String(format: "selftest: allreduce latency over %d calls: 1 float %.1f us, 65536 floats %.1f us",
                                 latency, small * 1e6, large * 1e6))
                }
            }
            if comm.rank == 0, let mpi = comm as? MPICommunicator {
                report.lines.forEach { print($0) }
                print("selftest: MPI thread level provided \(threadLevelName(mpi.providedThreadLevel)), "
                      + "requested \(threadLevelName(mpi.requestedThreadLevel))")
                fflush(stdout)
            }
            return (report, comm is MPICommunicator)
        }
        guard let (report, printed) = result else { return }
        if !printed { report.lines.forEach { print($0) } }
        fflush(stdout)
        if !report.passed { throw SelfTestFailed(ranks: report.failedRanks, size: report.size) }
    }
}

/// The self-check found wrong values on some ranks.
struct SelfTestFailed: Error, CustomStringConvertible {
    var ranks: [Int]
    var size: Int
    var description: String {
        "communicator self-test failed on \(ranks.count) of \(size) ranks: \(ranks.map(String.init).joined(separator: ", "))"
    }
}

/// "FUNNELED", "SERIALIZED", "MULTIPLE" or "SINGLE" for an MPI thread level.
private func threadLevelName(_ level: Int) -> String {
    switch level {
    case MPICommunicator.threadMultiple: return "MULTIPLE"
    case MPICommunicator.threadSerialized: return "SERIALIZED"
    case MPICommunicator.threadFunneled: return "FUNNELED"
    default: return "SINGLE"
    }
}
