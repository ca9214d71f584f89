import Foundation
import XCTest

/// A rank that stalls where no collective deadline used to reach: inside the byte
/// allgather `doctor` uses, and before or during MPI initialisation. Under the real
/// mpirun, every case must end non-zero within deadline + 10 s with a message that
/// names what never completed.
final class StallDeadlineTests: XCTestCase {
    static let deadline = 4.0

    /// Runs `mpirun -n 2 sh -c SCRIPT cnn-dist` (the script sees the binary as $0 and the rank as
    /// $OMPI_COMM_WORLD_RANK) to its end; it must end non-zero within deadline + 10 s with a
    /// `cnn-dist:` line about rank 0. Returns the output.
    private func runToFailure(_ name: String, script: String, environment: [String: String] = [:]) throws -> String {
        let job = Job(try FailureTestSupport.mpirun(),
                      ["-n", "2", "--bind-to", "none", "sh", "-c", script, try FailureTestSupport.binary().path],
                      environment: FailureTestSupport.mpiEnvironment.merging(environment) { $1 })
        try job.start()
        let status = job.finish(timeout: Self.deadline + 10)
        let seconds = monotonicNow() - job.started
        job.killTree(SIGKILL) // a stopped shell, if the launcher left it behind
        let output = job.output
        print("\(name): status \(status) after \(String(format: "%.2f", seconds)) s\n"
              + output.split(separator: "\n").filter { $0.contains("cnn-dist:") }.joined(separator: "\n"))
        XCTAssertNotEqual(status, 0, output)
        XCTAssertLessThan(seconds, Self.deadline + 10)
        XCTAssertTrue(output.contains("cnn-dist: rank 0 (host "), output)
        return output
    }

    /// Rank 0 blocks outside MPI opening FIFOs as its Fashion-MNIST files (doctor checks
    /// datasets on each host's lowest rank), while rank 1 goes on into the string allgather
    /// of the dataset lines: rank 1 must name rank 0 at the deadline instead of waiting forever.
    func testByteAllgatherNamesAStalledRankAtTheDeadline() throws {
        let dir = FailureTestSupport.temporaryDirectory(self, "fifo")
        for r in 0..<2 { try FileManager.default.createDirectory(atPath: "\(dir)/\(r)", withIntermediateDirectories: true) }
        for name in ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"] {
            XCTAssertEqual(mkfifo("\(dir)/0/\(name)", 0o600), 0)
        }
        let output = try runToFailure("doctor with rank 0 stuck on a FIFO",
                                      script: "exec \"$0\" doctor --data fashion-mnist=\(dir)/$OMPI_COMM_WORLD_RANK "
                                          + "--data mnist=\(dir)/none --data cifar10=\(dir)/none",
                                      environment: ["CNN_DIST_DEADLINE": "\(Self.deadline)"])
        XCTAssertTrue(output.contains("has not reached collective #"), output)
        XCTAssertTrue(output.contains("(allgather of 8200 bytes per rank, step 0)"), output)
        XCTAssertTrue(output.contains("noticed by rank 1 (host "), output)
    }

    /// Rank 1 stops itself before it execs cnn-dist, so rank 0 never gets out of
    /// MPI_Init_thread: the start-up watchdog must end it at the deadline, saying so.
    private func stoppedBeforeStart(_ arguments: String, environment: [String: String] = [:]) throws -> String {
        let output = try runToFailure("\(arguments) with rank 1 stopped before start",
                                      script: "if [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then kill -STOP $$; fi; exec \"$0\" \(arguments)",
                                      environment: environment)
        XCTAssertTrue(output.contains("MPI_Init_thread did not complete within \(Int(Self.deadline)) s: a rank of this job "
                                      + "never started or stalled before joining"), output)
        return output
    }

    func testStartupWatchdogEndsSelfTestWhenARankNeverStarts() throws {
        _ = try stoppedBeforeStart("selftest --deadline \(Self.deadline) --large-count 1000")
    }

    func testStartupWatchdogEndsDoctorWhenARankNeverStarts() throws {
        _ = try stoppedBeforeStart("doctor", environment: ["CNN_DIST_DEADLINE": "\(Self.deadline)"])
    }

    func testStartupWatchdogEndsTrainWhenARankNeverStarts() throws {
        let dir = FailureTestSupport.temporaryDirectory(self, "startup-train")
        _ = try stoppedBeforeStart("train --dataset synthetic --model lenet5 --epochs 1 --deadline \(Self.deadline) "
                                   + "--run-dir \(dir)/run")
    }
}
