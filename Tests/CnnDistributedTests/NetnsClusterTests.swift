import Foundation
import XCTest

/// Issue 6 on the simulated cluster of launch/netns-cluster.sh: three hosts
/// (network namespaces cnnd-h0..h2 on a bridge, TCP only), one rank each,
/// `cnn-dist train` started by mpirun on cnnd-h0. A host whose cable is
/// pulled, and a host all of whose processes are killed, must each end the
/// job within deadline + 10 s with the host and the rank named.
final class NetnsClusterTests: XCTestCase {
    static let deadline = 4.0
    private var script: URL { FailureTestSupport.packageRoot.appendingPathComponent("launch/netns-cluster.sh") }

    /// Runs the cluster script; returns (status, output).
    @discardableResult
    private func cluster(_ arguments: [String]) throws -> (Int32, String) {
        let job = Job(URL(fileURLWithPath: "/bin/bash"), [script.path] + arguments)
        try job.start()
        let status = job.finish(timeout: 60)
        return (status, job.output)
    }

    /// Brings up 3 hosts (torn down after the test), or skips if namespaces are not available here.
    private func upCluster() throws {
        _ = try FailureTestSupport.mpirun()
        guard getuid() == 0 else { throw XCTSkip("the netns cluster needs root") }
        for tool in ["/usr/sbin/ip", "/usr/bin/unshare"] where !FileManager.default.isExecutableFile(atPath: tool) {
            let alt = tool.replacingOccurrences(of: "/usr/sbin/", with: "/sbin/").replacingOccurrences(of: "/usr/bin/", with: "/bin/")
            if !FileManager.default.isExecutableFile(atPath: alt) { throw XCTSkip("\(tool) is not installed") }
        }
        addTeardownBlock { [self] in _ = try? cluster(["down"]) }
        let (status, output) = try cluster(["up", "3"])
        if status != 0 { throw XCTSkip("network namespaces are not available here: \(output)") }
    }

    /// Starts training across the cluster and waits until it is under way.
    private func startTraining() throws -> Job {
        let dir = FailureTestSupport.temporaryDirectory(self, "cluster")
        let job = Job(URL(fileURLWithPath: "/bin/bash"),
                      [script.path, "run", "-n", "3", try FailureTestSupport.binary().path, "train",
                       "--dataset", "synthetic", "--model", "lenet5", "--epochs", "200", "--batch-size", "48",
                       "--deadline", "\(Self.deadline)", "--run-dir", dir])
        try job.start()
        addTeardownBlock { if job.process.isRunning { job.killTree(SIGKILL) } }
        XCTAssertTrue(job.waitForOutput(timeout: 90) { $0.contains("epoch 1: train loss") },
                      "training did not get going on the cluster:\n\(job.output)")
        XCTAssertTrue(job.output.contains("3 rank(s)"), job.output)
        return job
    }

    /// Does `fault` to host `host` (rank `rank`) mid-training; checks the end, the time and the names.
    private func breakHost(_ host: String, rank: Int, name: String, _ fault: () throws -> Void) throws {
        try upCluster()
        let job = try startTraining()
        let begin = monotonicNow()
        try fault()
        let status = job.finish(timeout: Self.deadline + 10)
        let seconds = monotonicNow() - begin
        let output = job.output
        let reports = output.split(separator: "\n").filter {
            $0.contains("cnn-dist:") || $0.contains(host) || $0.contains("rank \(rank)")
        }
        print("\(name): job ended with status \(status) \(String(format: "%.2f", seconds)) s after the fault; reports:\n"
              + reports.joined(separator: "\n"))
        XCTAssertNotEqual(status, 0, output)
        XCTAssertLessThan(seconds, Self.deadline + 10)
        XCTAssertTrue(reportNamesCulprit(output, rank: rank, host: host), "rank \(rank) on \(host) not named as the culprit:\n\(output)")
    }

    /// (d) Pull host 2's cable: no process dies, so the ranks' deadline has to end the job.
    func testHostWhoseLinkGoesDownIsNamed() throws {
        try breakHost("cnnd-h2", rank: 2, name: "link down cnnd-h2") {
            let (status, output) = try cluster(["link", "cnnd-h2", "down"])
            XCTAssertEqual(status, 0, output)
        }
    }

    /// (d) Kill every process of host 1 (its daemon and its rank), as if the machine had crashed.
    func testHostWhoseProcessesAllDieIsNamed() throws {
        try breakHost("cnnd-h1", rank: 1, name: "kill all of cnnd-h1") {
            let (status, output) = try cluster(["kill", "cnnd-h1"])
            XCTAssertEqual(status, 0, output)
        }
    }
}
