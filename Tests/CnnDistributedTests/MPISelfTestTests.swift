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

    /// The MPI launcher: $CNN_DIST_MPIRUN (a path or a name on PATH, e.g. mpirun.mpich for a
    /// build with CNN_DIST_MPI=mpich), else `mpirun` on PATH. The launcher must match the MPI
    /// the binary was built against.
    private func mpirun() -> URL? {
        let env = ProcessInfo.processInfo.environment
        let name = env["CNN_DIST_MPIRUN"] ?? "mpirun"
        if name.contains("/") { return FileManager.default.isExecutableFile(atPath: name) ? URL(fileURLWithPath: name) : nil }
        let path = env["PATH"] ?? "/usr/bin:/bin"
        for dir in path.split(separator: ":").map(String.init) + ["/usr/bin", "/usr/local/bin"] {
            let url = URL(fileURLWithPath: dir).appendingPathComponent(name)
            if FileManager.default.isExecutableFile(atPath: url.path) { return url }
        }
        return nil
    }

    /// True if `launcher` is MPICH's Hydra (mpirun.mpich, mpiexec.hydra), which reports "HYDRA" in --version.
    private func isHydra(_ launcher: URL) throws -> Bool {
        let (_, stdout, stderr) = try run(launcher, ["--version"], deadline: 30)
        return (stdout + stderr).contains("HYDRA")
    }

    /// Launcher arguments for `size` ranks: Open MPI's mpirun needs --oversubscribe to start more
    /// ranks than cores; Hydra oversubscribes by default and rejects the flag.
    private func launchArguments(_ launcher: URL, size: Int) throws -> [String] {
        try isHydra(launcher) ? ["-n", "\(size)"] : ["--oversubscribe", "-n", "\(size)"]
    }

    /// Runs `executable arguments` with a deadline (a `Job`); returns (exit status, stdout, stderr).
    private func run(_ executable: URL, _ arguments: [String], environment extra: [String: String] = [:],
                     deadline: TimeInterval = 180) throws -> (Int32, String, String) {
        let job = Job(executable, arguments, environment: extra)
        try job.start()
        let status = job.finish(timeout: deadline)
        return (status, job.stdout, job.stderr)
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
            let (status, stdout, stderr) = try run(mpirun, try launchArguments(mpirun, size: size) + [binary.path, "selftest"],
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
        let (status, _, stderr) = try run(mpirun, try launchArguments(mpirun, size: 3) + [binary.path, "selftest", "--fault", "throw"],
                                          environment: rootEnv, deadline: 60)
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(stderr.contains("injected failure on rank 2"), stderr)

        let (status2, _, stderr2) = try run(mpirun, try launchArguments(mpirun, size: 2) + [binary.path, "selftest", "--fault", "mismatch"],
                                            environment: rootEnv, deadline: 60)
        XCTAssertNotEqual(status2, 0)
        // Issue 6: the collective-schedule check now stops this before MPI's truncation error,
        // naming both ranks and both byte counts.
        XCTAssertTrue(stderr2.contains("collective schedule mismatch at collective #0"), stderr2)
        XCTAssertTrue(stderr2.contains("called broadcast of 8 bytes from rank 0"), stderr2)
        XCTAssertTrue(stderr2.contains("called broadcast of 4 bytes from rank 0"), stderr2)
    }

    func testSelfTestCommandFaultsWithLocalRanks() throws {
        let binary = try cnnDistBinary()
        let (status, _, stderr) = try run(binary, ["selftest", "--local-ranks", "3", "--fault", "throw", "--deadline", "5"], deadline: 30)
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(stderr.contains("injected failure on rank 2"), stderr)
        let (status2, _, stderr2) = try run(binary, ["selftest", "--local-ranks", "2", "--fault", "mismatch"], deadline: 30)
        XCTAssertNotEqual(status2, 0)
        // Whichever rank arrives second reports the mismatch; both ranks and both counts are named.
        XCTAssertTrue(stderr2.contains("collective schedule mismatch at collective #0"), stderr2)
        XCTAssertTrue(stderr2.contains("called broadcast of 8 bytes from rank 0"), stderr2)
        XCTAssertTrue(stderr2.contains("called broadcast of 4 bytes from rank 0"), stderr2)
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

    // MARK: cnn-dist doctor

    /// A dataset directory with tiny valid IDX files (2 train and 1 test image of 28x28), and
    /// one whose train images file has a wrong magic number.
    private func doctorDatasets() throws -> (valid: String, corrupt: String, missing: String) {
        let root = NSTemporaryDirectory() + "cnn-dist-doctor-\(UUID().uuidString)"
        addTeardownBlock { try? FileManager.default.removeItem(atPath: root) }
        func bigEndian(_ values: [UInt32]) -> [UInt8] { values.flatMap { v in (0..<4).map { UInt8((v >> (24 - 8 * $0)) & 0xFF) } } }
        func images(_ n: UInt32, magic: UInt32 = 0x803) -> Data { Data(bigEndian([magic, n, 28, 28]) + [UInt8](repeating: 7, count: Int(n) * 784)) }
        func labels(_ n: UInt32) -> Data { Data(bigEndian([0x801, n]) + (0..<Int(n)).map { UInt8($0 % 10) }) }
        for (name, magic) in [("valid", UInt32(0x803)), ("corrupt", UInt32(0x802))] {
            let dir = "\(root)/\(name)"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            try images(2, magic: magic).write(to: URL(fileURLWithPath: "\(dir)/train-images-idx3-ubyte"))
            try labels(2).write(to: URL(fileURLWithPath: "\(dir)/train-labels-idx1-ubyte"))
            try images(1).write(to: URL(fileURLWithPath: "\(dir)/t10k-images-idx3-ubyte"))
            try labels(1).write(to: URL(fileURLWithPath: "\(dir)/t10k-labels-idx1-ubyte"))
        }
        return ("\(root)/valid", "\(root)/corrupt", "\(root)/missing")
    }

    /// Checks rank 0's doctor report: library and world lines, one line per rank, three dataset lines, the verdict.
    private func assertDoctorOutput(_ stdout: String, size: Int, world: String, file: StaticString = #filePath, line: UInt = #line) {
        let lines = stdout.split(separator: "\n").map(String.init)
        XCTAssertTrue(lines.contains { $0.hasPrefix("doctor: MPI library: ") && ($0.contains("Open MPI") || $0.contains("MPICH"))
                                       && $0.contains("MPI standard ") }, stdout, file: file, line: line)
        XCTAssertTrue(lines.contains { $0.hasPrefix("doctor: world: \(world)") }, stdout, file: file, line: line)
        let rankLines = lines.filter { $0.hasPrefix("doctor: rank ") }
        XCTAssertEqual(rankLines.count, size, stdout, file: file, line: line)
        for r in 0..<size {
            XCTAssertTrue(rankLines.contains { $0.hasPrefix("doctor: rank \(r)/\(size) on ") && $0.contains(" pid ")
                                               && $0.contains("threads 1 (compute kernels")
                                               && $0.contains("SIMD ") && $0.contains("CPU flags ") },
                          "rank \(r) in:\n\(stdout)", file: file, line: line)
        }
        XCTAssertTrue(lines.contains { $0.hasPrefix("doctor: dataset fashion-mnist: found in ") && $0.contains("2 train + 1 test images of 1x28x28") },
                      stdout, file: file, line: line)
        XCTAssertTrue(lines.contains { $0.hasPrefix("doctor: dataset mnist: not found") }, stdout, file: file, line: line)
        XCTAssertTrue(lines.contains { $0.hasPrefix("doctor: dataset cifar10: not found") }, stdout, file: file, line: line)
        XCTAssertEqual(lines.last, "doctor: ok (\(size) rank\(size == 1 ? "" : "s"))", stdout, file: file, line: line)
    }

    func testDoctorInOneProcessAndWithLocalRanks() throws {
        let binary = try cnnDistBinary()
        let data = try doctorDatasets()
        let datasetArguments = ["--data", "fashion-mnist=\(data.valid)", "--data", "mnist=\(data.missing)", "--data", "cifar10=\(data.missing)"]
        let (status, stdout, stderr) = try run(binary, ["doctor"] + datasetArguments, deadline: 60)
        XCTAssertEqual(status, 0, "stdout:\n\(stdout)\nstderr:\n\(stderr)")
        assertDoctorOutput(stdout, size: 1, world: "1 rank (no MPI launcher")

        let (status3, stdout3, stderr3) = try run(binary, ["doctor", "--local-ranks", "3"] + datasetArguments, deadline: 60)
        XCTAssertEqual(status3, 0, "stdout:\n\(stdout3)\nstderr:\n\(stderr3)")
        assertDoctorOutput(stdout3, size: 3, world: "3 in-process rank(s)")
        // Datasets are checked once per host: the three ranks share one.
        XCTAssertEqual(stdout3.components(separatedBy: "doctor: dataset fashion-mnist").count - 1, 1)

        // Files present but invalid: non-zero exit, naming the dataset and the file.
        let (badStatus, badStdout, badStderr) = try run(binary, ["doctor", "--data", "fashion-mnist=\(data.valid)", "--data", "mnist=\(data.corrupt)",
                                                                 "--data", "cifar10=\(data.missing)"], deadline: 60)
        XCTAssertNotEqual(badStatus, 0)
        XCTAssertTrue(badStdout.contains("doctor: dataset mnist: INVALID in \(data.corrupt)"), badStdout)
        XCTAssertTrue(badStderr.contains("doctor: 1 problem") && badStderr.contains("\(data.corrupt)/train-images-idx3-ubyte")
                      && badStderr.contains("wrong magic number"), badStderr)
    }

    func testDoctorUnderMPIRunPrintsOneLinePerRank() throws {
        guard let mpirun = mpirun() else { throw XCTSkip("mpirun is not installed") }
        let binary = try cnnDistBinary()
        let data = try doctorDatasets()
        let rootEnv = ["OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"]
        let (status, stdout, stderr) = try run(mpirun, try launchArguments(mpirun, size: 2) + [
            binary.path, "doctor", "--data", "fashion-mnist=\(data.valid)", "--data", "mnist=\(data.missing)", "--data", "cifar10=\(data.missing)",
        ], environment: rootEnv, deadline: 120)
        XCTAssertEqual(status, 0, "stdout:\n\(stdout)\nstderr:\n\(stderr)")
        assertDoctorOutput(stdout, size: 2, world: "2 MPI rank(s) (started by an MPI launcher)")
        print("mpirun -n 2 cnn-dist doctor:\n\(stdout)")
    }
}
