import CnnCore
import Foundation

/// What a collective is; ranks must agree on it at every position of their schedules.
/// The raw values travel in MPI arrival tokens.
public enum CollectiveKind: Int64, Sendable {
    /// Not a collective: an MPI rank saying it is still waiting (control channel only).
    case heartbeat = 0
    case allreduceFloat = 1, allreduceDouble, reduceFloat, reduceDouble, broadcast, barrier, allgatherInt64
    case allreduceMax, allreduceMin
    /// The MPI world's start-up exchange of host names and liveness ports.
    case hostNames
    /// The MPI world's closing barrier.
    case finalize
    /// A byte (or string) allgather; the count is the bytes per rank.
    case allgatherBytes
    /// A Float allreduce sent as bf16 and summed in fp32 (`startAllreduceSumBF16`); the count is in floats.
    case allreduceBF16

    /// The `Communicator` method that starts it, for errors of an in-process world.
    var method: String {
        switch self {
        case .allreduceFloat, .allreduceDouble: return "allreduceSum"
        case .allreduceBF16: return "allreduceSumBF16"
        case .reduceFloat, .reduceDouble: return "reduceSum"
        case .allgatherInt64, .allgatherBytes: return "allgather"
        case .allreduceMax: return "allreduceMax"
        case .allreduceMin: return "allreduceMin"
        case .heartbeat, .broadcast, .barrier, .hostNames, .finalize: return "\(self)"
        }
    }

    /// The MPI call that carries it, for errors of that call.
    var mpiCall: String {
        switch self {
        case .heartbeat: return "heartbeat"
        case .allreduceBF16: return "MPI_Isend/MPI_Irecv"
        case .allreduceFloat, .allreduceDouble, .allreduceMax, .allreduceMin: return "MPI_Iallreduce"
        case .reduceFloat, .reduceDouble: return "MPI_Ireduce"
        case .broadcast: return "MPI_Ibcast"
        case .barrier, .finalize: return "MPI_Ibarrier"
        case .allgatherInt64, .hostNames, .allgatherBytes: return "MPI_Iallgather"
        }
    }
}

/// One collective as every backend describes it: its position in the rank's
/// schedule, what it does and on how much. Ranks must agree on everything but
/// the step, which is only reported. MPI ranks exchange these in arrival
/// tokens; in-process ranks post them in the hub; both word their failures
/// from them (`CollectiveReport`), so a report reads the same under mpirun and
/// with --local-ranks.
///
/// Numbering: a rank's collectives are #0, #1, ... in the order it starts them.
/// The MPI world's own start-up exchange comes before them, as #-1.
public struct Collective: Equatable, Sendable, CustomStringConvertible {
    public var sequence: Int64
    public var kind: CollectiveKind
    /// Elements (or bytes, for broadcast and byte allgather; 1 for the scalar collectives; 0 for barriers).
    public var count: Int64
    /// The root rank, or -1 for collectives without one.
    public var root: Int64
    /// The training step the rank was at when it started the collective.
    public var step: Int64

    public init(sequence: Int64, kind: CollectiveKind, count: Int64, root: Int64 = -1, step: Int64) {
        self.sequence = sequence
        self.kind = kind
        self.count = count
        self.root = root
        self.step = step
    }

    /// True if two ranks calling these at the same position are calling the same collective.
    public func sameSchedule(as other: Collective) -> Bool {
        kind == other.kind && count == other.count && root == other.root
    }

    /// "allreduce of 4096 floats", "broadcast of 8 bytes from rank 0", "barrier".
    public var what: String {
        switch kind {
        case .heartbeat: return "heartbeat"
        case .allreduceFloat: return "allreduce of \(count) floats"
        case .allreduceDouble: return "allreduce of \(count) doubles"
        case .allreduceBF16: return "bf16 allreduce of \(count) floats"
        case .reduceFloat: return "reduce of \(count) floats to rank \(root)"
        case .reduceDouble: return "reduce of \(count) doubles to rank \(root)"
        case .broadcast: return "broadcast of \(count) bytes from rank \(root)"
        case .barrier: return "barrier"
        case .allgatherInt64: return "allgather of one int64"
        case .allreduceMax: return "allreduce-max of one double"
        case .allreduceMin: return "allreduce-min of one double"
        case .hostNames: return "start-up exchange of host names"
        case .finalize: return "finalize"
        case .allgatherBytes: return "allgather of \(count) bytes per rank"
        }
    }

    /// "#57 (allreduce of 4096 floats, step 12)".
    public var label: String { "#\(sequence) (\(what), step \(step))" }
    public var description: String { label }
}

/// A collective that could not complete on every rank: a rank missed the
/// deadline, the ranks' schedules differ, or a rank left without joining.
/// Both backends throw it with the same words. The job cannot go on: the
/// command line ends the process with `exitCode` (under MPI the whole job, see
/// `endWorldAfterError`).
public struct WorldFailure: Error, Equatable, CustomStringConvertible {
    /// The rank that noticed.
    public var rank: Int
    /// The collective it noticed in.
    public var collective: Collective
    /// The report: who did what, and who noticed.
    public var reason: String

    public init(rank: Int, collective: Collective, reason: String) {
        self.rank = rank
        self.collective = collective
        self.reason = reason
    }

    /// The exit status of a process ended by a world failure.
    public static let exitCode: Int32 = 3
    public var description: String { reason }
    /// The line the command line writes to standard error before it ends the process.
    public var reportLine: String { "cnn-dist: \(reason); aborting" }
}

/// The words of collective failure reports, shared by the MPI and in-process backends.
enum CollectiveReport {
    /// "rank 2 (host a)" / "ranks 0 (host a), 2 (host b)".
    static func ranksAndHosts(_ ranks: [Int], host: (Int) -> String) -> String {
        (ranks.count == 1 ? "rank " : "ranks ") + ranks.map { "\($0) (host \(host($0)))" }.joined(separator: ", ")
    }

    /// "noticed by rank 0 (host a)".
    static func noticed(by rank: Int, host: String) -> String { "noticed by rank \(rank) (host \(host))" }

    /// "within 5 s".
    static func within(_ deadline: Double) -> String { "within \(formatSeconds(deadline)) s" }

    /// Ranks that did not reach `collective` in time, each with the last collective it reached and a note.
    static func notReached(_ collective: Collective, missing: [(rank: Int, last: Collective?, note: String)],
                           deadline: Double, host: (Int) -> String, extra: String = "", noticed: String) -> String {
        let last = missing.map { m in
            (m.last.map { "rank \(m.rank) was last at collective \($0.label)" } ?? "rank \(m.rank) has reached no collective")
                + m.note
        }.joined(separator: ", ")
        return "\(ranksAndHosts(missing.map(\.rank), host: host)) \(missing.count == 1 ? "has" : "have") not reached "
            + "collective \(collective.label) \(within(deadline)) (\(last))\(extra); \(noticed)"
    }

    /// Ranks called different collectives as number `sequence`. `byRank` holds what each rank
    /// known to have reached it called; the largest group that agrees (ties: the one with the
    /// lowest rank) is the reference, the others are named against it.
    static func mismatch(at sequence: Int64, byRank: [Int: Collective], notYet: [Int], host: (Int) -> String,
                         noticed: String) -> String {
        var groups: [(c: Collective, ranks: [Int])] = []
        for r in byRank.keys.sorted() {
            let c = byRank[r]!
            if let i = groups.firstIndex(where: { $0.c.sameSchedule(as: c) }) { groups[i].ranks.append(r) }
            else { groups.append((c, [r])) }
        }
        let reference = groups.max { a, b in a.ranks.count < b.ranks.count || (a.ranks.count == b.ranks.count && a.ranks[0] > b.ranks[0]) }!
        let odd = groups.filter { $0.ranks != reference.ranks }
            .map { "\(ranksAndHosts($0.ranks, host: host)) called \($0.c.what) (step \($0.c.step))" }.joined(separator: "; ")
        let notYetText = notYet.isEmpty ? "" : "; \(ranksAndHosts(notYet, host: host)) had not reached it yet"
        return "collective schedule mismatch at collective #\(sequence): \(odd), but \(ranksAndHosts(reference.ranks, host: host)) "
            + "called \(reference.c.what) (step \(reference.c.step))\(notYetText); \(noticed)"
    }
}

/// Seconds as "5" or "2.5".
func formatSeconds(_ s: Double) -> String {
    s == s.rounded() && s < 1e9 ? String(Int(s)) : String(format: "%.1f", s)
}
