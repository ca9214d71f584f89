import Foundation
import XCTest

/// Running the real `cnn-dist` under the real mpirun for the failure tests:
/// a job whose output can be watched while it runs, and its ranks found and
/// signalled by rank number (from /proc, among the job's own descendants).
enum FailureTestSupport {
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    /// The built `cnn-dist`: $CNN_DIST_BINARY, else .build/release (or debug) of this package.
    static func binary() throws -> URL {
        if let path = ProcessInfo.processInfo.environment["CNN_DIST_BINARY"] { return URL(fileURLWithPath: path) }
        var candidates = [Bundle.main.bundleURL.deletingLastPathComponent().appendingPathComponent("cnn-dist")]
        for b in Bundle.allBundles { candidates.append(b.bundleURL.deletingLastPathComponent().appendingPathComponent("cnn-dist")) }
        candidates += ["release", "debug"].map { packageRoot.appendingPathComponent(".build/\($0)/cnn-dist") }
        for url in candidates where FileManager.default.isExecutableFile(atPath: url.path) { return url }
        throw XCTSkip("cnn-dist binary not found (set CNN_DIST_BINARY); looked in \(candidates.map(\.path))")
    }

    /// mpirun on PATH, or skip.
    static func mpirun() throws -> URL {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        for dir in path.split(separator: ":").map(String.init) + ["/usr/bin", "/usr/local/bin"] {
            let url = URL(fileURLWithPath: dir).appendingPathComponent("mpirun")
            if FileManager.default.isExecutableFile(atPath: url.path) { return url }
        }
        throw XCTSkip("mpirun is not installed")
    }

    /// Environment for mpirun as root with more ranks than cores.
    static let mpiEnvironment = ["OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                                 "OMPI_MCA_rmaps_base_oversubscribe": "1"]

    /// A temporary directory removed at the end of the test.
    static func temporaryDirectory(_ test: XCTestCase, _ name: String) -> String {
        let dir = NSTemporaryDirectory() + "cnn-dist-\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        test.addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        return dir
    }
}

/// A child process whose stdout and stderr are collected while it runs.
final class Job: @unchecked Sendable {
    let process = Process()
    let description: String
    private let lock = NSLock()
    private var out = Data(), err = Data()
    private let group = DispatchGroup()
    private(set) var started = 0.0

    init(_ executable: URL, _ arguments: [String], environment extra: [String: String] = [:]) {
        process.executableURL = executable
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        for key in ["OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_SIZE", "PMI_RANK"] { env[key] = nil }
        env.merge(extra) { $1 }
        process.environment = env
        description = ([executable.lastPathComponent] + arguments).joined(separator: " ")
    }

    func start() throws {
        let outPipe = Pipe(), errPipe = Pipe()
        process.standardOutput = outPipe
        process.standardError = errPipe
        for (pipe, isOut) in [(outPipe, true), (errPipe, false)] {
            group.enter()
            let handle = pipe.fileHandleForReading
            DispatchQueue.global().async { [self] in
                while true {
                    let chunk = handle.availableData
                    if chunk.isEmpty { break }
                    lock.lock()
                    if isOut { out.append(chunk) } else { err.append(chunk) }
                    lock.unlock()
                }
                group.leave()
            }
        }
        started = monotonicNow()
        try process.run()
    }

    var stdout: String { lock.lock(); defer { lock.unlock() }; return String(decoding: out, as: UTF8.self) }
    var stderr: String { lock.lock(); defer { lock.unlock() }; return String(decoding: err, as: UTF8.self) }
    var output: String { stdout + "\n" + stderr }

    /// Waits until `predicate(output)` holds or `timeout` passes; returns whether it held.
    @discardableResult
    func waitForOutput(timeout: Double, _ predicate: (String) -> Bool) -> Bool {
        let end = monotonicNow() + timeout
        while monotonicNow() < end {
            if predicate(output) { return true }
            if !process.isRunning { return predicate(output) }
            usleep(50_000)
        }
        return false
    }

    /// Waits for the exit; after `timeout` s kills the whole process tree and fails. Returns the exit status.
    @discardableResult
    func finish(timeout: Double, file: StaticString = #filePath, line: UInt = #line) -> Int32 {
        let end = monotonicNow() + timeout
        while process.isRunning && monotonicNow() < end { usleep(20_000) }
        if process.isRunning {
            XCTFail("\(description) did not finish within \(timeout) s; output:\n\(output)", file: file, line: line)
            killTree(SIGKILL)
            process.waitUntilExit()
        }
        group.wait()
        return process.terminationStatus
    }

    /// Every descendant of the job's process (children, grandchildren, ...), from /proc.
    func descendants() -> [Int32] {
        var parentOf: [Int32: Int32] = [:]
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        for name in entries {
            guard let pid = Int32(name), let stat = try? String(contentsOfFile: "/proc/\(name)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { continue }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            if fields.count > 1, let ppid = Int32(fields[1]) { parentOf[pid] = ppid }
        }
        let root = process.processIdentifier
        return parentOf.keys.filter { pid in
            var p = parentOf[pid]
            var hops = 0
            while let q = p, hops < 64 {
                if q == root { return true }
                p = parentOf[q]
                hops += 1
            }
            return false
        }.sorted()
    }

    /// The job's `cnn-dist` process of MPI rank `rank` (OMPI_COMM_WORLD_RANK in its environment).
    func rankProcess(_ rank: Int) -> Int32? {
        descendants().first { pid in
            guard let comm = try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8),
                  comm.hasPrefix("cnn-dist"),
                  let environ = FileManager.default.contents(atPath: "/proc/\(pid)/environ") else { return false }
            return environ.split(separator: 0).contains { String(decoding: $0, as: UTF8.self) == "OMPI_COMM_WORLD_RANK=\(rank)" }
        }
    }

    func killTree(_ signal: Int32) {
        for pid in descendants() { kill(pid, signal) }
        kill(process.processIdentifier, signal)
    }
}

/// True if some `cnn-dist:` report line names rank `rank` (on `host`, if given) as the culprit:
/// not reached, reached but stopped, waited for, or silent on the liveness channel.
func reportNamesCulprit(_ output: String, rank: Int, host: String? = nil) -> Bool {
    let who = "rank \(rank) (host \(host ?? ""))"
    let whoPrefix = host == nil ? "rank \(rank) (host " : who
    return output.split(separator: "\n").contains { line in
        guard line.contains("cnn-dist: ") else { return false }
        return [" has not reached", " reached collective", " reached it but"].contains { line.contains(whoPrefix) && lineHas(line, whoPrefix, then: $0) }
            || line.contains("no liveness datagram from \(whoPrefix)") || line.contains("for \(whoPrefix)")
            || line.contains("mismatch") && line.contains(whoPrefix)
    }
}

/// True if `line` has `prefix`, then (after the closing parenthesis of the host) `suffix`.
private func lineHas(_ line: Substring, _ prefix: String, then suffix: String) -> Bool {
    guard let start = line.range(of: prefix) else { return false }
    let rest = line[start.upperBound...]
    if prefix.hasSuffix(")") { return rest.hasPrefix(suffix) }
    guard let close = rest.firstIndex(of: ")") else { return false }
    return rest[rest.index(after: close)...].hasPrefix(suffix)
}

func monotonicNow() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}
