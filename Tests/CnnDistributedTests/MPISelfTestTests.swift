import Foundation
import XCTest

/// Runs the real `cnn-dist selftest` under the real mpirun (2 and 4 ranks),
/// and with in-process ranks, and checks what rank 0 prints.
final class MPISelfTestTests: XCTestCase {
    /// The built `cnn-dist`: $CNN_DIST_BINARY, else next to this test bundle
    /// (.build/<triple>/<config>/), else the package's .build/release or .build/debug.
    private func cnnDistBinary() throws -> URL {
        let fm = FileManager.default
        if let path = ProcessInfo.processInfo.environment["CNN_DIST_BINARY"] {
            return URL(fileURLWithPath: path)
        }
        var candidates: [URL] = []
        for start in [Bundle.main.bundleURL, URL(fileURLWithPath: CommandLine.arguments[0])] + Bundle.allBundles.map(\.bundleURL) {
            var dir = start.deletingLastPathComponent()
            for _ in 0..<3 {
                candidates.append(dir.appendingPathComponent("cnn-dist"))
                dir = dir.deletingLastPathComponent()
            }
        }
        let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        candidates += ["release", "debug"].map { packageRoot.appendingPathComponent(".build/\($0)/cnn-dist") }
        for url in candidates {
            var isDirectory: ObjCBool = false
            if fm.fileExists(atPath: url.path, isDirectory: &isDirectory), !isDirectory.boolValue, fm.isExecutableFile(atPath: url.path) {
                return url
            }
        }
        throw XCTSkip("cnn-dist binary not found (set CNN_DIST_BINARY); looked in \(candidates.map(\.path))")
    }

    private func mpirun() -> URL? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        for dir in path.split(separator: ":").map(String.init) + ["/usr/bin", "/usr/local/bin"] {
            let url = URL(fileURLWithPath: dir).appendingPathComponent("mpirun")
            if FileManager.default.isExecutableFile(atPath: url.path) { return url }
        }
        return nil
    }

    /// Runs `executable arguments` with a deadline; returns (exit status, stdout, stderr).
    private func run(_ executable: URL, _ arguments: [String], environment extra: [String: String] = [:],
                     deadline: TimeInterval = 180) throws -> (Int32, String, String) {
        let process = Process()
        process.executableURL = executable
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        for key in ["OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_SIZE", "PMI_RANK"] { env[key] = nil }
        env.merge(extra) { $1 }
        process.environment = env
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        // Read both pipes concurrently so a chatty child cannot block on a full pipe.
        final class Box: @unchecked Sendable { var data = Data() }
        let outData = Box(), errData = Box()
        let group = DispatchGroup()
        group.enter()
        DispatchQueue.global().async { outData.data = out.fileHandleForReading.readDataToEndOfFile(); group.leave() }
        group.enter()
        DispatchQueue.global().async { errData.data = err.fileHandleForReading.readDataToEndOfFile(); group.leave() }
        try process.run()
        let finished = DispatchSemaphore(value: 0)
        DispatchQueue.global().async { process.waitUntilExit(); finished.signal() }
        if finished.wait(timeout: .now() + deadline) == .timedOut {
            process.terminate()
            XCTFail("\(executable.lastPathComponent) \(arguments.joined(separator: " ")) did not finish in \(deadline) s")
            process.waitUntilExit()
        }
        group.wait()
        return (process.terminationStatus, String(decoding: outData.data, as: UTF8.self), String(decoding: errData.data, as: UTF8.self))
    }

    private func assertSelfTestOutput(_ stdout: String, size: Int, file: StaticString = #filePath, line: UInt = #line) {
        let lines = stdout.split(separator: "\n").map(String.init)
        for r in 0..<size {
            XCTAssertTrue(lines.contains { $0.hasPrefix("selftest: rank \(r)/\(size) on ") && $0.contains(" ok (allreduce, iallreduce") },
                          "no ok line for rank \(r) in:\n\(stdout)", file: file, line: line)
        }
        XCTAssertTrue(lines.contains("selftest: \(size) ranks passed"), "no summary in:\n\(stdout)", file: file, line: line)
    }

    func testSelfTestUnderMPIRun() throws {
        guard let mpirun = mpirun() else { throw XCTSkip("mpirun is not installed") }
        let binary = try cnnDistBinary()
        let rootEnv = ["OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"]
        for size in [2, 4] {
            let (status, stdout, stderr) = try run(mpirun, ["--oversubscribe", "-n", "\(size)", binary.path, "selftest"],
                                                   environment: rootEnv)
            XCTAssertEqual(status, 0, "mpirun -n \(size) exited \(status)\nstdout:\n\(stdout)\nstderr:\n\(stderr)")
            assertSelfTestOutput(stdout, size: size)
            XCTAssertTrue(stdout.contains("selftest: MPI thread level provided"), stdout)
            print("mpirun -n \(size) cnn-dist selftest:\n\(stdout)")
        }
    }

    /// A failing rank must end the whole job with its message (MPI_Abort), not leave the others blocked.
    func testFailuresUnderMPIRunEndTheJobWithTheRankAndMPIErrorString() throws {
        guard let mpirun = mpirun() else { throw XCTSkip("mpirun is not installed") }
        let binary = try cnnDistBinary()
        let rootEnv = ["OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"]
        let (status, _, stderr) = try run(mpirun, ["--oversubscribe", "-n", "3", binary.path, "selftest", "--fault", "throw"],
                                          environment: rootEnv, deadline: 60)
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(stderr.contains("injected failure on rank 2"), stderr)

        let (status2, _, stderr2) = try run(mpirun, ["--oversubscribe", "-n", "2", binary.path, "selftest", "--fault", "mismatch"],
                                            environment: rootEnv, deadline: 60)
        XCTAssertNotEqual(status2, 0)
        // Issue 6: the collective-schedule check now stops this before MPI's truncation error,
        // naming both ranks and both byte counts.
        XCTAssertTrue(stderr2.contains("collective schedule mismatch at collective #1"), stderr2)
        XCTAssertTrue(stderr2.contains("called broadcast of 8 bytes from rank 0"), stderr2)
        XCTAssertTrue(stderr2.contains("called broadcast of 4 bytes from rank 0"), stderr2)
    }

    func testSelfTestCommandFaultsWithLocalRanks() throws {
        let binary = try cnnDistBinary()
        let (status, _, stderr) = try run(binary, ["selftest", "--local-ranks", "3", "--fault", "throw", "--timeout", "5"], deadline: 30)
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(stderr.contains("injected failure on rank 2"), stderr)
        let (status2, _, stderr2) = try run(binary, ["selftest", "--local-ranks", "2", "--fault", "mismatch"], deadline: 30)
        XCTAssertNotEqual(status2, 0)
        // Whichever rank arrives second reports the mismatch; both ranks and both counts are named.
        XCTAssertTrue(stderr2.contains("does not match across ranks"), stderr2)
        XCTAssertTrue(stderr2.contains("rank 1 called broadcast(root: 0) of 4"), stderr2)
        XCTAssertTrue(stderr2.contains("rank 0 called broadcast(root: 0) of 8"), stderr2)
    }

    func testSelfTestCommandWithLocalRanks() throws {
        let binary = try cnnDistBinary()
        let (status, stdout, stderr) = try run(binary, ["selftest", "--local-ranks", "3"])
        XCTAssertEqual(status, 0, "stdout:\n\(stdout)\nstderr:\n\(stderr)")
        assertSelfTestOutput(stdout, size: 3)

        let (badStatus, _, badStderr) = try run(binary, ["selftest", "--local-ranks", "0"])
        XCTAssertNotEqual(badStatus, 0)
        XCTAssertTrue(badStderr.contains("--local-ranks must be at least 1"), badStderr)
    }
}
