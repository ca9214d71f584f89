import Foundation
import XCTest

/// Exit status and output of a child process.
struct ProcessResult {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// The built `cnn-dist`: $CNN_DIST_BINARY, else next to the test bundle, else .build/release.
func cnnDistBinary() throws -> URL {
    if let path = ProcessInfo.processInfo.environment["CNN_DIST_BINARY"] { return URL(fileURLWithPath: path) }
    let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    var candidates = Bundle.allBundles.map { $0.bundleURL.deletingLastPathComponent().appendingPathComponent("cnn-dist") }
    candidates += ["release", "debug"].map { packageRoot.appendingPathComponent(".build/\($0)/cnn-dist") }
    guard let found = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0.path) }) else {
        throw XCTSkip("cnn-dist binary not found (set CNN_DIST_BINARY); looked in \(candidates.map(\.path))")
    }
    return found
}

/// The MPI launcher: $CNN_DIST_MPIRUN, else mpirun on the PATH; nil if none.
func mpirunLauncher() -> URL? {
    if let path = ProcessInfo.processInfo.environment["CNN_DIST_MPIRUN"] { return URL(fileURLWithPath: path) }
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
    return (path.split(separator: ":").map(String.init) + ["/usr/bin"])
        .map { URL(fileURLWithPath: $0).appendingPathComponent("mpirun") }
        .first { FileManager.default.isExecutableFile(atPath: $0.path) }
}

func requireMPI() throws {
    guard mpirunLauncher() != nil else { throw XCTSkip("mpirun not installed (apt-get install openmpi-bin)") }
}

/// This process's environment for a child: no launcher variables of ours (the
/// child is not a rank of this process's world), mpirun allowed as root, plus `extra`.
func childEnvironment(_ extra: [String: String] = [:]) -> [String: String] {
    var env = ProcessInfo.processInfo.environment
    for key in ["OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_SIZE", "PMI_RANK"] { env[key] = nil }
    env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
    env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    env.merge(extra) { $1 }
    return env
}

/// Runs a program with a deadline, reading both pipes concurrently.
func runProcess(_ executable: URL, _ arguments: [String], deadline: TimeInterval = 300,
                extraEnvironment: [String: String] = [:]) throws -> ProcessResult {
    let process = Process()
    process.executableURL = executable
    process.arguments = arguments
    process.environment = childEnvironment(extraEnvironment)
    let out = Pipe(), err = Pipe()
    process.standardOutput = out
    process.standardError = err
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
    return ProcessResult(status: process.terminationStatus, stdout: String(decoding: outData.data, as: UTF8.self),
                         stderr: String(decoding: errData.data, as: UTF8.self))
}

func runCnnDist(_ arguments: [String]) throws -> ProcessResult {
    try runProcess(try cnnDistBinary(), arguments)
}

/// `mpirun -n ranks --oversubscribe cnn-dist ARGS` (TCP/shared memory on this host).
func runUnderMPI(ranks: Int, _ arguments: [String]) throws -> ProcessResult {
    guard let mpirun = mpirunLauncher() else { throw XCTSkip("mpirun not installed") }
    return try runProcess(mpirun, ["-n", "\(ranks)", "--oversubscribe", try cnnDistBinary().path] + arguments)
}

/// A fresh empty folder under the temporary directory.
func temporaryDirectory(_ name: String) -> String {
    let path = NSTemporaryDirectory() + "cnn-dist-cli-\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}
