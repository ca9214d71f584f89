import ArgumentParser
import CnnCore
import CnnData
import CnnDistributed
import Foundation

/// `cnn-dist doctor`: what this build and this machine (or job) will run with.
///
/// Prints the MPI library and the MPI standard version it implements, the
/// world (size and how it was started), one line per rank (host, pid,
/// compute threads, CPUs allowed, the SIMD path compiled in and whether the
/// CPU has it), and whether each dataset's default directory holds valid
/// files (checked with the readers' own validation, once per host).
///
/// Under mpirun every rank collects its line and rank 0 prints them all;
/// `--local-ranks N` runs N in-process ranks; otherwise one rank, without
/// initialising MPI unless `--mpi` is given. Exits non-zero, with the
/// reasons, if something essential is broken: MPI does not initialise or a
/// collective fails, the CPU lacks the instructions the build was compiled
/// for, or a dataset's files are present but invalid. A dataset that is
/// simply not there is reported, not an error.
public struct DoctorCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "doctor",
        abstract: "Check MPI, ranks, SIMD path, CPU features and datasets (run under mpirun, or with --local-ranks N).")

    @OptionGroup var world: WorldOptions

    @Flag(name: .long, help: "Initialise MPI even without an MPI launcher (a one-rank MPI world).")
    var mpi = false

    @Option(name: .customLong("data"), help: ArgumentHelp("Check this folder for a dataset instead of its default "
                                                          + "(repeatable).", valueName: "NAME=DIR"))
    var folders: [String] = []

    public init() {}

    public func validate() throws {
        if world.localRanks != nil && mpi { throw ValidationError("--local-ranks and --mpi cannot be combined") }
        _ = try probes()
    }

    /// Every dataset with files, in its default folder or the one --data gives.
    func probes() throws -> [DatasetProbe] {
        var chosen: [DatasetKind: String] = [:]
        for item in folders {
            let parts = item.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, let kind = DatasetKind(rawValue: parts[0]), kind.defaultDirectory != nil else {
                let names = DatasetKind.allCases.filter { $0.defaultDirectory != nil }.map(\.rawValue)
                throw ValidationError("--data takes NAME=DIR with NAME one of \(names.joined(separator: ", ")), got '\(item)'")
            }
            chosen[kind] = parts[1]
        }
        return DatasetKind.allCases.compactMap { kind in
            (chosen[kind] ?? kind.defaultDirectory).map { DatasetProbe(kind: kind, directory: $0) }
        }
    }

    public func run() throws {
        let datasets = try probes()
        // Before MPI_Init: Open MPI's singleton init sets the launcher variables itself.
        let launched = launchedByMPI()
        let report: DoctorReport?
        do {
            report = try withWorld(world, forceMPI: mpi) { comm in
                let description: String
                if let m = comm as? MPICommunicator {
                    description = "\(comm.size) MPI rank(s)" + (launched ? " (started by an MPI launcher)" : " (MPI singleton, --mpi)")
                        + ", thread level \(mpiThreadLevelName(m.providedThreadLevel)) "
                        + "(requested \(mpiThreadLevelName(m.requestedThreadLevel)))"
                } else if let n = world.localRanks {
                    description = "\(n) in-process rank(s) (--local-ranks)"
                } else {
                    description = "1 rank (no MPI launcher: MPI not initialised; run under mpirun, or pass --mpi)"
                }
                return try DoctorReport.collect(comm, world: description, datasets: datasets)
            }
        } catch let error as CnnError {
            // MPI could not start: the library line still tells which MPI this binary uses.
            print(DoctorReport.libraryLine())
            fflush(stdout)
            throw DoctorFailed(problems: ["MPI initialisation failed: \(error)"])
        }
        guard let report else { return }
        report.lines.forEach { print($0) }
        fflush(stdout)
        if !report.problems.isEmpty { throw DoctorFailed(problems: report.problems) }
    }
}

/// Doctor found something essential broken; the message lists what.
struct DoctorFailed: Error, CustomStringConvertible {
    var problems: [String]
    var description: String {
        "doctor: \(problems.count) problem\(problems.count == 1 ? "" : "s"):\n" + problems.map { "  - \($0)" }.joined(separator: "\n")
    }
}

/// A dataset folder to check.
struct DatasetProbe {
    var kind: DatasetKind
    var directory: String
    var name: String { kind.rawValue }
}

/// What rank 0 prints, and the problems found on any rank.
struct DoctorReport {
    var lines: [String] = []
    var problems: [String] = []

    /// Every rank calls this (it runs collectives); the lines and problems are complete on rank 0.
    static func collect(_ comm: Communicator, world: String, datasets: [DatasetProbe]) throws -> DoctorReport {
        // One line (and its problems) per rank.
        let cpu = CPUInfo.read()
        var mine = RankCheck(line: "", problems: [])
        mine.line = "doctor: rank \(comm.rank)/\(comm.size) on \(comm.processorName) pid \(getpid()): "
            + "threads \(computeThreadsDescription()); CPUs \(cpu.cpusDescription); "
            + "SIMD \(simdPathDescription); CPU flags \(cpu.flagsDescription)"
            + (cpu.modelName.map { " (\($0))" } ?? "") + "; kernels: \(CPUFeatures.current.summary)"
        if let problem = simdProblem(cpu) { mine.problems.append("rank \(comm.rank) on \(comm.processorName): \(problem)") }
        let rankLines = try comm.allgather(mine.line, maxBytes: 1024)

        // Datasets: once per host, by the host's lowest rank.
        let hosts = try comm.allgather(comm.processorName, maxBytes: 256)
        var datasetText = ""
        if hosts.firstIndex(of: comm.processorName) == comm.rank {
            let results = datasets.map { check($0) }
            let onHost = Set(hosts).count > 1 ? " on \(comm.processorName)" : ""
            datasetText = results.map { "doctor: dataset \($0.name)\(onHost): \($0.text)" }.joined(separator: "\n")
            mine.problems += results.compactMap { r in r.problem.map { "dataset \(r.name)\(onHost): \($0)" } }
        }
        let datasetTexts = try comm.allgather(datasetText, maxBytes: 8192)
        let problemTexts = try comm.allgather(mine.problems.joined(separator: "\n"), maxBytes: 4096)

        var report = DoctorReport()
        guard comm.rank == 0 else { return report }
        report.lines.append(libraryLine())
        report.lines.append("doctor: world: \(world)")
        report.lines += rankLines
        report.lines += datasetTexts.filter { !$0.isEmpty }.flatMap { $0.split(separator: "\n").map(String.init) }
        report.problems = problemTexts.filter { !$0.isEmpty }.flatMap { $0.split(separator: "\n").map(String.init) }
        report.lines.append(report.problems.isEmpty
                            ? "doctor: ok (\(comm.size) rank\(comm.size == 1 ? "" : "s"))"
                            : "doctor: \(report.problems.count) problem\(report.problems.count == 1 ? "" : "s") (see below)")
        return report
    }

    /// The MPI library line; MPI_Get_library_version and MPI_Get_version need no MPI_Init.
    static func libraryLine() -> String {
        let (major, minor) = MPILibrary.standardVersion()
        return "doctor: MPI library: \(MPILibrary.libraryVersion()) (MPI standard \(major).\(minor); "
            + "built with CNN_DIST_MPI=\(MPILibrary.buildSelection == "MPICH" ? "mpich" : "openmpi"))"
    }

    /// Reads a dataset with the loaders' validation: found (with sizes and files), not found, or invalid.
    static func check(_ probe: DatasetProbe) -> (name: String, text: String, problem: String?) {
        let dir = probe.directory
        guard FileBytes.isDirectory(dir) else {
            return (probe.name, "not found (no directory \(dir))", nil)
        }
        do {
            let request = DatasetRequest(directory: dir)
            let files = probe.kind.requiredFiles.compactMap { names in names.first { FileBytes.exists("\(dir)/\($0)") } }
            if let missing = probe.kind.requiredFiles.first(where: { names in !names.contains { FileBytes.exists("\(dir)/\($0)") } }) {
                return (probe.name, "incomplete in \(dir): missing \(missing[0])", nil)
            }
            let (train, test) = try probe.kind.load(request)
            let shape = train.imageShape.map(String.init).joined(separator: "x")
            return (probe.name, "found in \(dir): \(train.count) train + \(test.count) test images of \(shape), "
                    + "\(train.classCount) classes (read and validated \(files.joined(separator: ", ")))", nil)
        } catch CnnError.io(let file, let reason) {
            // The directory exists but files are missing or unreadable.
            return (probe.name, "incomplete in \(dir): \(file): \(reason)", nil)
        } catch {
            return (probe.name, "INVALID in \(dir): \(error)", "\(error)")
        }
    }
}

private struct RankCheck {
    var line: String
    var problems: [String]
}

/// Compute threads per rank: the kernels' setting (`train --threads T`, default 1).
func computeThreadsDescription(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
    var text = "\(ComputeThreads.count) (compute kernels; train --threads T sets it)"
    if let omp = environment["OMP_NUM_THREADS"] { text += ", OMP_NUM_THREADS=\(omp) (not read by cnn-dist)" }
    return text
}

/// The SIMD path this binary was compiled for (Package.swift's CNN_AVX2 / CNN_PORTABLE).
var simdPathDescription: String {
    #if CNN_AVX2 && arch(x86_64)
    return "AVX2+FMA+F16C (CNN_AVX2)"
    #elseif CNN_AVX2
    return "native (CNN_AVX2 on a non-x86-64 build: no AVX flags)"
    #elseif CNN_PORTABLE
    return "portable (CNN_PORTABLE: baseline SSE2 / NEON)"
    #else
    return "unknown (neither CNN_AVX2 nor CNN_PORTABLE defined)"
    #endif
}

/// Why this CPU cannot run this build's SIMD path, or nil if it can (or we cannot tell).
func simdProblem(_ cpu: CPUInfo) -> String? {
    #if CNN_AVX2 && arch(x86_64)
    guard let flags = cpu.flags else { return nil }
    let missing = ["avx2", "fma", "f16c"].filter { !flags.contains($0) }
    guard !missing.isEmpty else { return nil }
    return "the build uses AVX2/FMA/F16C but the CPU lacks \(missing.joined(separator: ", ")); "
        + "rebuild with CNN_DIST_PORTABLE=1 swift build -c release"
    #else
    return nil
    #endif
}

/// What /proc tells about this CPU and this process's CPU affinity (Linux; nil elsewhere).
struct CPUInfo {
    var modelName: String?
    var flags: Set<String>?
    /// CPUs this process may run on (Cpus_allowed_list), e.g. "0-1".
    var allowedList: String?

    static func read() -> CPUInfo {
        var info = CPUInfo()
        if let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) {
            for line in text.split(separator: "\n") {
                let parts = line.split(separator: ":", maxSplits: 1)
                guard parts.count == 2 else { continue }
                let key = parts[0].trimmingCharacters(in: .whitespaces)
                let value = parts[1].trimmingCharacters(in: .whitespaces)
                if key == "model name" && info.modelName == nil { info.modelName = value }
                if (key == "flags" || key == "Features") && info.flags == nil {
                    info.flags = Set(value.split(separator: " ").map(String.init))
                }
                if info.modelName != nil && info.flags != nil { break }
            }
        }
        if let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
           let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Cpus_allowed_list:") }) {
            info.allowedList = line.dropFirst("Cpus_allowed_list:".count).trimmingCharacters(in: .whitespaces)
        }
        return info
    }

    /// "avx2 yes, fma yes, f16c yes", or "unknown" without /proc/cpuinfo.
    var flagsDescription: String {
        guard let flags else { return "unknown (no /proc/cpuinfo flags)" }
        return ["avx2", "fma", "f16c"].map { "\($0) \(flags.contains($0) ? "yes" : "no")" }.joined(separator: ", ")
    }

    /// "2 online, 2 allowed (0-1)": fewer allowed than online means the launcher bound this rank.
    var cpusDescription: String {
        let online = ProcessInfo.processInfo.activeProcessorCount
        guard let allowedList else { return "\(online) online" }
        return "\(online) online, \(Self.count(allowedList)) allowed (\(allowedList))"
    }

    /// The number of CPUs in a list such as "0-3,8,10-11".
    static func count(_ list: String) -> Int {
        list.split(separator: ",").reduce(0) { total, part in
            let bounds = part.split(separator: "-").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
            if bounds.count == 2 { return total + max(0, bounds[1] - bounds[0] + 1) }
            return total + (bounds.count == 1 ? 1 : 0)
        }
    }
}

/// "FUNNELED", "SERIALIZED", "MULTIPLE" or "SINGLE" for an MPI thread level.
private func mpiThreadLevelName(_ level: Int) -> String {
    switch level {
    case MPICommunicator.threadMultiple: return "MULTIPLE"
    case MPICommunicator.threadSerialized: return "SERIALIZED"
    case MPICommunicator.threadFunneled: return "FUNNELED"
    default: return "SINGLE"
    }
}
