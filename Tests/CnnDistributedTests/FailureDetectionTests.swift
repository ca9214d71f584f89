import Foundation
import XCTest

/// Issue 6, "never hang, name the culprit", on one machine under the real
/// mpirun: a rank killed or stopped during `cnn-dist train`, ranks whose
/// collective schedules differ, a rank that loops forever. Each job must end
/// non-zero within deadline + 10 s and say which rank it was.
final class FailureDetectionTests: XCTestCase {
    /// The collective deadline these tests give the ranks (seconds).
    static let deadline = 4.0

    /// `cnn-dist train` on synthetic data under `mpirun -n 3`, long enough to be interrupted.
    private func startTraining(runDirectory: String) throws -> Job {
        let job = Job(try FailureTestSupport.mpirun(),
                      ["-n", "3", "--bind-to", "none", try FailureTestSupport.binary().path, "train",
                       "--dataset", "synthetic", "--model", "lenet5", "--epochs", "200", "--batch-size", "48",
                       "--deadline", "\(Self.deadline)", "--checkpoint-every", "5", "--run-dir", runDirectory],
                      environment: FailureTestSupport.mpiEnvironment)
        try job.start()
        addTeardownBlock { if job.process.isRunning { job.killTree(SIGKILL) } }
        XCTAssertTrue(job.waitForOutput(timeout: 60) { $0.contains("epoch 1: train loss") },
                      "training did not get going:\n\(job.output)")
        return job
    }

    /// Sends `signal` to rank 1 mid-training; the job must end non-zero, soon, naming rank 1.
    private func interruptRank1(with signal: Int32, name: String) throws {
        let dir = FailureTestSupport.temporaryDirectory(self, "kill")
        let job = try startTraining(runDirectory: dir)
        guard let pid = job.rankProcess(1) else { return XCTFail("rank 1 not found among \(job.descendants())") }
        let sent = monotonicNow()
        kill(pid, signal)
        let status = job.finish(timeout: Self.deadline + 10)
        let seconds = monotonicNow() - sent
        if signal == SIGSTOP { kill(pid, SIGKILL) } // in case the launcher left it stopped
        let output = job.output
        print("\(name) rank 1: job ended with status \(status) \(String(format: "%.2f", seconds)) s after the signal; "
              + "reports:\n" + output.split(separator: "\n").filter { $0.contains("cnn-dist:") || $0.contains("rank 1") }
                .joined(separator: "\n"))
        XCTAssertNotEqual(status, 0, output)
        XCTAssertLessThan(seconds, Self.deadline + 10)
        // A killed process is also named by mpirun itself ("mpirun noticed that process rank 1 ... exited on signal 9").
        XCTAssertTrue(reportNamesCulprit(output, rank: 1) || (signal == SIGKILL && output.contains("noticed that process rank 1 ")),
                      "rank 1 not named as the culprit:\n\(output)")
        try resumeAfterFailure(runDirectory: dir)
    }

    /// The newest checkpoint the failed job left verifies, and the run resumes
    /// from it (on 2 ranks instead of 3) and takes two more steps.
    private func resumeAfterFailure(runDirectory dir: String) throws {
        let steps = ((try? FileManager.default.contentsOfDirectory(atPath: dir + "/checkpoints")) ?? [])
            .compactMap { $0.hasPrefix("step-") ? Int($0.dropFirst(5)) : nil }
        guard let newest = steps.max() else { return XCTFail("no checkpoint in \(dir)/checkpoints") }
        let job = Job(try FailureTestSupport.mpirun(),
                      ["-n", "2", "--bind-to", "none", try FailureTestSupport.binary().path, "train",
                       "--resume", dir, "--max-steps", "\(newest + 2)", "--deadline", "\(Self.deadline)"],
                      environment: FailureTestSupport.mpiEnvironment)
        try job.start()
        let status = job.finish(timeout: 120)
        XCTAssertEqual(status, 0, job.output)
        XCTAssertTrue(job.output.contains("resume: using") && job.output.contains(String(format: "step-%08d", newest)),
                      "did not resume from the newest checkpoint step \(newest):\n\(job.output)")
        XCTAssertFalse(job.output.contains("skipping"), "a checkpoint was damaged:\n\(job.output)")
    }

    /// (a) SIGKILL: mpirun sees the death at once; the survivors' reports name the rank they wait for.
    func testKilledRankEndsTheJobNamingIt() throws {
        try interruptRank1(with: SIGKILL, name: "SIGKILL")
    }

    /// (b) SIGSTOP: nothing dies, so only the deadline can end the job; the report names rank 1.
    func testStoppedRankIsNamedWithinTheDeadline() throws {
        try interruptRank1(with: SIGSTOP, name: "SIGSTOP")
    }

    /// Runs `cnn-dist selftest --fault FAULT` under `mpirun -n 3`; returns (status, output, seconds).
    private func selfTestFault(_ fault: String, ranks: Int = 3) throws -> (Int32, String, Double) {
        let job = Job(try FailureTestSupport.mpirun(),
                      ["-n", "\(ranks)", "--bind-to", "none", try FailureTestSupport.binary().path, "selftest",
                       "--fault", fault, "--deadline", "\(Self.deadline)", "--large-count", "1000"],
                      environment: FailureTestSupport.mpiEnvironment)
        try job.start()
        let status = job.finish(timeout: Self.deadline + 20)
        let seconds = monotonicNow() - job.started
        print("selftest --fault \(fault): status \(status) after \(String(format: "%.2f", seconds)) s\n"
              + job.output.split(separator: "\n").filter { $0.hasPrefix("cnn-dist: ") && !$0.contains("terminated by") }
                .prefix(1).joined())
        return (status, job.output, seconds)
    }

    /// (c) Rank 1 does one extra allreduce: stopped at the first differing collective, rank 1 named with both descriptors.
    func testExtraCollectiveOnOneRankIsNamed() throws {
        let (status, output, seconds) = try selfTestFault("extra")
        XCTAssertNotEqual(status, 0, output)
        XCTAssertLessThan(seconds, Self.deadline + 10)
        XCTAssertTrue(output.contains("collective schedule mismatch at collective #0: rank 1 (host "), output)
        XCTAssertTrue(output.contains("called allreduce of 1000 floats"), output)
        XCTAssertTrue(output.contains("ranks 0 (host "), output)
    }

    /// (c) Rank 1 allreduces 1001 floats where the others allreduce 1000.
    func testDifferentCountOnOneRankIsNamed() throws {
        let (status, output, _) = try selfTestFault("count")
        XCTAssertNotEqual(status, 0, output)
        XCTAssertTrue(output.contains("rank 1 (host "), output)
        XCTAssertTrue(output.contains("called allreduce of 1001 floats"), output)
        XCTAssertTrue(output.contains("called allreduce of 1000 floats"), output)
    }

    /// A rank that loops forever (never reaches the next collective) is named by the others at the deadline.
    func testEndlessLoopRankIsNamedAtTheDeadline() throws {
        let (status, output, seconds) = try selfTestFault("hang")
        XCTAssertNotEqual(status, 0, output)
        XCTAssertGreaterThan(seconds, Self.deadline - 0.5)
        XCTAssertLessThan(seconds, Self.deadline + 10)
        XCTAssertTrue(output.contains("rank 2 (host "), output)
        XCTAssertTrue(output.contains("has not reached collective #0"), output)
    }

    /// The same fault under mpirun and with --local-ranks is reported in the same words, with the
    /// same collective numbers: only the noticing rank and the host names may differ.
    func testMPIAndLocalRanksReportFailuresIdentically() throws {
        func normalized(_ output: String, _ marker: String) -> String? {
            guard let line = output.split(separator: "\n").first(where: { $0.contains(marker) }) else { return nil }
            var text = String(line[line.range(of: marker)!.lowerBound...])
            for suffix in ["; aborting"] where text.hasSuffix(suffix) { text.removeLast(suffix.count) }
            if let noticed = text.range(of: "; noticed by rank ") { text = String(text[..<noticed.lowerBound]) }
            return text.replacingOccurrences(of: #"\(host [^)]*\)"#, with: "(host H)", options: .regularExpression)
        }
        let binary = try FailureTestSupport.binary()
        // Rank 1 does one extra allreduce: #0 differs on every rank, and all three ranks reach it.
        let (_, mpiOutput, _) = try selfTestFault("extra")
        let local = Job(binary, ["selftest", "--local-ranks", "3", "--fault", "extra", "--deadline", "\(Self.deadline)",
                                 "--large-count", "1000"])
        try local.start()
        XCTAssertNotEqual(local.finish(timeout: 20), 0)
        let marker = "collective schedule mismatch at collective #"
        let mpiLine = normalized(mpiOutput, marker), localLine = normalized(local.stderr, marker)
        XCTAssertNotNil(mpiLine, mpiOutput)
        XCTAssertEqual(mpiLine, localLine, "mpirun:\n\(mpiOutput)\n--local-ranks:\n\(local.stderr)")
        XCTAssertEqual(mpiLine, "collective schedule mismatch at collective #0: rank 1 (host H) called allreduce of 1000 floats "
                       + "(step 0), but ranks 0 (host H), 2 (host H) called allreduce of 0 floats (step 0)")

        // The last rank loops forever: the others name it at the same collective. Under MPI the
        // report adds what the liveness channel says about the process.
        let (_, mpiHang, _) = try selfTestFault("hang")
        let localHang = Job(binary, ["selftest", "--local-ranks", "3", "--fault", "hang", "--deadline", "\(Self.deadline)",
                                     "--large-count", "1000"])
        try localHang.start()
        XCTAssertNotEqual(localHang.finish(timeout: Self.deadline + 10), 0)
        let expected = "rank 2 (host H) has not reached collective #0 (allreduce of 0 floats, step 0) within 4 s "
            + "(rank 2 has reached no collective"
        XCTAssertTrue(normalized(mpiHang, "rank 2 (host ")?.hasPrefix(expected) == true, mpiHang)
        XCTAssertEqual(normalized(localHang.stderr, "rank 2 (host "), expected + ")", localHang.stderr)
    }

    /// In-process ranks (--local-ranks): the same faults end the command, naming the rank, without waiting on the stuck thread forever.
    func testLocalRanksNameTheStuckRankAndReturn() throws {
        let binary = try FailureTestSupport.binary()
        let hang = Job(binary, ["selftest", "--local-ranks", "3", "--fault", "hang", "--deadline", "2", "--large-count", "1000"])
        try hang.start()
        let status = hang.finish(timeout: 20)
        let seconds = monotonicNow() - hang.started
        XCTAssertNotEqual(status, 0)
        XCTAssertLessThan(seconds, 2 * 2 + 5)
        XCTAssertTrue(hang.stderr.contains("rank 2 (host "), hang.stderr)
        XCTAssertTrue(hang.stderr.contains("has not reached collective #0"), hang.stderr)

        let extra = Job(binary, ["selftest", "--local-ranks", "3", "--fault", "extra", "--deadline", "5", "--large-count", "1000"])
        try extra.start()
        XCTAssertNotEqual(extra.finish(timeout: 20), 0)
        XCTAssertTrue(extra.stderr.contains("collective schedule mismatch at collective #0: rank 1 (host "), extra.stderr)
        XCTAssertTrue(extra.stderr.contains("called allreduce of 1000 floats"), extra.stderr)
    }
}
