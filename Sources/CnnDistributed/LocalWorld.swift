import CnnCore
import Foundation

/// N ranks on N threads of this process ("single-node test mode"), with the
/// semantics of `MPICommunicator`.
///
///     try LocalWorld.run(size: 4) { comm in
///         try comm.allreduceSum(gradients)
///     }
///
/// How collectives work: every rank numbers its collectives 0, 1, 2, ... in
/// the order it starts them (blocking and non-blocking alike, as MPI matches
/// them). Collective number k is a slot in a shared hub: each rank posts its
/// buffer pointer and count there; the last rank to arrive sums the buffers
/// element by element in rank order 0..N-1 (so results are bitwise
/// reproducible) and writes the sum into every rank's buffer, then marks the
/// slot done. A rank's `wait()` returns once its slot is done, so
/// non-blocking allreduces complete when the last rank starts them, and may
/// be waited in any order.
///
/// Failure: if a rank's body throws, the hub is poisoned and every rank
/// waiting in (or later entering) a collective throws
/// `CnnError.communication` naming the failed rank; a rank whose body
/// returns while others wait for it in a collective poisons the hub the same
/// way. A collective whose ranks do not all arrive within `timeout` throws
/// `WorldFailure` naming the ranks that did not arrive, the collective's
/// number and each rank's step (`currentStep`), in the words and numbers
/// `MPICommunicator` uses (both word reports through `CollectiveReport`):
/// "rank 2 (host H) has not reached collective #57 (allreduce of 4096 floats,
/// step 12) within 5 s". Mismatched collectives (different operation, count
/// or root at the same position) throw "collective schedule mismatch at
/// collective #k: ...", naming the ranks on each side.
///
/// Never hang: a rank that never returns (an endless loop, a deadlock of its
/// own) cannot be stopped from outside its thread, so once the world has
/// failed `run` waits at most `timeout` more seconds for the rank threads,
/// then throws the failure and leaves the stuck threads behind (they end
/// with the process).
public enum LocalWorld {
    /// Runs `body` on `size` threads, each with its own `LocalCommunicator`
    /// of one shared world, and returns when all have finished.
    ///
    /// - Parameters:
    ///   - size: number of ranks (threads), at least 1.
    ///   - timeout: seconds a collective waits for the other ranks before
    ///     throwing (default 60).
    ///   - stackSize: bytes of stack per rank thread (default 16 MiB).
    ///   - body: one rank's program.
    /// - Throws: the first error any rank threw (the original failure, not
    ///   the errors other ranks threw because of it).
    public static func run(size: Int, timeout: TimeInterval = 60, stackSize: Int = 16 << 20,
                           _ body: @escaping (Communicator) throws -> Void) throws {
        guard size >= 1 else {
            throw CnnError.invalidArgument(layer: "LocalWorld", argument: "size", value: "\(size)",
                                           reason: "a world needs at least one rank")
        }
        let hub = LocalHub(size: size, timeout: timeout)
        let group = DispatchGroup()
        for r in 0..<size {
            group.enter()
            let thread = Thread {
                defer { group.leave() }
                let comm = LocalCommunicator(rank: r, hub: hub)
                do {
                    try body(comm)
                    hub.rankExited(r)
                } catch {
                    hub.rankFailed(r, error: error)
                }
            }
            thread.name = "cnn-dist rank \(r)"
            thread.stackSize = stackSize
            thread.start()
        }
        // Wait for every rank, but once the world has failed give stuck ranks only `timeout` more seconds.
        var failedAt: Date?
        while group.wait(timeout: .now() + 0.05) == .timedOut {
            if hub.firstError != nil {
                let since = failedAt ?? Date()
                failedAt = since
                if Date().timeIntervalSince(since) > timeout { break }
            }
        }
        if let error = hub.firstError { throw error }
    }
}

/// One rank of a `LocalWorld`. Made by `LocalWorld.run`; see there for semantics.
public final class LocalCommunicator: Communicator {
    /// This thread's rank.
    public let rank: Int
    /// The number of threads in the world.
    public var size: Int { hub.size }
    /// The host name (the same for every rank of the world).
    public let processorName: String

    /// The training step, named in timeout reports.
    public var currentStep: Int {
        get { lock.lock(); defer { lock.unlock() }; return step }
        set { lock.lock(); step = newValue; lock.unlock() }
    }

    private let hub: LocalHub
    private let lock = NSLock()
    private var nextSequence = 0
    private var step = 0

    init(rank: Int, hub: LocalHub) {
        self.rank = rank
        self.hub = hub
        processorName = hostNameForReports()
    }

    /// Posts this rank's contribution to its next collective slot.
    private func join(_ kind: CollectiveKind, count: Int, root: Int = -1, pointer: UnsafeMutableRawPointer?,
                      scalar: UInt64 = 0) throws -> LocalSlot {
        lock.lock()
        defer { lock.unlock() }
        let collective = Collective(sequence: Int64(nextSequence), kind: kind, count: Int64(count), root: Int64(root),
                                    step: Int64(step))
        nextSequence += 1
        return try hub.join(rank: rank, LocalContribution(collective: collective, pointer: pointer, scalar: scalar))
    }

    private func run<T>(_ kind: CollectiveKind, count: Int = 0, root: Int = -1, pointer: UnsafeMutableRawPointer? = nil,
                        scalar: UInt64 = 0, read: (LocalSlot) -> T) throws -> T {
        let slot = try join(kind, count: count, root: root, pointer: pointer, scalar: scalar)
        return try hub.wait(slot, rank: rank, read: read)
    }

    public func allreduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws {
        try run(.allreduceFloat, count: buffer.count, pointer: UnsafeMutableRawPointer(buffer.baseAddress)) { _ in }
    }

    public func allreduceSum(_ buffer: UnsafeMutableBufferPointer<Double>) throws {
        try run(.allreduceDouble, count: buffer.count, pointer: UnsafeMutableRawPointer(buffer.baseAddress)) { _ in }
    }

    public func startAllreduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws -> CollectiveRequest {
        let slot = try join(.allreduceFloat, count: buffer.count, pointer: UnsafeMutableRawPointer(buffer.baseAddress))
        return LocalRequest(hub: hub, slot: slot, rank: rank)
    }

    /// Completes when the last rank starts it; that rank rounds every rank's values to bf16 and
    /// sums them in rank order (`sumBF16InRankOrder`), as the MPI ranks do with their shares.
    public func startAllreduceSumBF16(_ buffer: UnsafeMutableBufferPointer<Float>) throws -> CollectiveRequest {
        let slot = try join(.allreduceBF16, count: buffer.count, pointer: UnsafeMutableRawPointer(buffer.baseAddress))
        return LocalRequest(hub: hub, slot: slot, rank: rank)
    }

    public func reduceSum(_ buffer: UnsafeMutableBufferPointer<Float>, root: Int) throws {
        try checkRoot(root, size: size, rank: rank, call: "reduceSum")
        try run(.reduceFloat, count: buffer.count, root: root, pointer: UnsafeMutableRawPointer(buffer.baseAddress)) { _ in }
    }

    public func reduceSum(_ buffer: UnsafeMutableBufferPointer<Double>, root: Int) throws {
        try checkRoot(root, size: size, rank: rank, call: "reduceSum")
        try run(.reduceDouble, count: buffer.count, root: root, pointer: UnsafeMutableRawPointer(buffer.baseAddress)) { _ in }
    }

    public func broadcast(_ bytes: UnsafeMutableRawBufferPointer, root: Int) throws {
        try checkRoot(root, size: size, rank: rank, call: "broadcast")
        try run(.broadcast, count: bytes.count, root: root, pointer: bytes.baseAddress) { _ in }
    }

    public func barrier() throws {
        try run(.barrier) { _ in }
    }

    public func allgather(_ value: Int64) throws -> [Int64] {
        try run(.allgatherInt64, count: 1, scalar: UInt64(bitPattern: value)) { slot in
            slot.contributions.map { Int64(bitPattern: $0!.scalar) }
        }
    }

    /// Each rank copies its bytes into its own part of `gathered`, then the
    /// last rank to arrive copies every part into every other rank's output.
    public func allgather(_ bytes: UnsafeRawBufferPointer, into gathered: UnsafeMutableRawBufferPointer) throws {
        try checkAllgatherBuffers(bytes, gathered, size: size, rank: rank, call: "allgather")
        if let src = bytes.baseAddress, let dst = gathered.baseAddress {
            (dst + rank * bytes.count).copyMemory(from: src, byteCount: bytes.count)
        }
        try run(.allgatherBytes, count: bytes.count, pointer: gathered.baseAddress) { _ in }
    }

    public func allreduceMax(_ value: Double) throws -> Double {
        try run(.allreduceMax, count: 1, scalar: value.bitPattern) { slot in
            slot.contributions.map { Double(bitPattern: $0!.scalar) }.reduce(-Double.infinity) { Swift.max($0, $1) }
        }
    }

    public func allreduceMin(_ value: Double) throws -> Double {
        try run(.allreduceMin, count: 1, scalar: value.bitPattern) { slot in
            slot.contributions.map { Double(bitPattern: $0!.scalar) }.reduce(Double.infinity) { Swift.min($0, $1) }
        }
    }
}

/// A non-blocking allreduce of a `LocalWorld` rank: completes when the last rank has started it.
final class LocalRequest: CollectiveRequest {
    private let hub: LocalHub
    private let slot: LocalSlot
    private let rank: Int
    private var completed = false

    init(hub: LocalHub, slot: LocalSlot, rank: Int) {
        self.hub = hub
        self.slot = slot
        self.rank = rank
    }

    func wait() throws {
        guard !completed else { return }
        try hub.wait(slot, rank: rank) { _ in }
        completed = true
    }

    func test() throws -> Bool {
        guard !completed else { return true }
        completed = try hub.test(slot, rank: rank)
        return completed
    }
}

// MARK: - The hub

/// One rank's part in a collective: what it called, and its buffer (elements or bytes) or its scalar.
struct LocalContribution {
    let collective: Collective
    let pointer: UnsafeMutableRawPointer?
    let scalar: UInt64
    var count: Int { Int(collective.count) }
}

/// Collective number `sequence`: the ranks' contributions and whether it has completed.
final class LocalSlot {
    let sequence: Int
    var contributions: [LocalContribution?]
    var arrived = 0
    var done = false
    var released = 0

    init(sequence: Int, size: Int) {
        self.sequence = sequence
        contributions = Array(repeating: nil, count: size)
    }

    /// Set once ranks are seen to call different collectives here: it is never computed.
    var mismatched = false

    var missingRanks: [Int] { contributions.indices.filter { contributions[$0] == nil } }
    /// The collective as the first rank to arrive called it.
    var collective: Collective? { contributions.first { $0 != nil }??.collective }
}

/// State shared by the ranks of one `LocalWorld`, guarded by one condition variable.
final class LocalHub {
    let size: Int
    let timeout: TimeInterval
    private let condition = NSCondition()
    private var slots: [Int: LocalSlot] = [:]
    private var exited = Set<Int>()
    /// Each rank's latest collective, for timeout reports.
    private var lastJoined: [Collective?]
    private let hostName = hostNameForReports()
    /// Why the world was aborted, for the errors of the other ranks.
    private var failureReason: String?
    /// The error `LocalWorld.run` rethrows.
    var firstError: Error? {
        condition.lock()
        defer { condition.unlock() }
        return _firstError
    }
    private var _firstError: Error?

    init(size: Int, timeout: TimeInterval) {
        self.size = size
        self.timeout = timeout
        lastJoined = Array(repeating: nil, count: size)
    }

    /// Aborts the world (first reason wins). Call with the lock held.
    private func poison(reason: String, error: Error) {
        if failureReason == nil {
            failureReason = reason
            _firstError = error
        }
        condition.broadcast()
    }

    /// Rank `rank`'s body threw `error`.
    func rankFailed(_ rank: Int, error: Error) {
        condition.lock()
        defer { condition.unlock() }
        poison(reason: "rank \(rank) failed: \(error)", error: error)
    }

    /// Rank `rank`'s body returned normally.
    func rankExited(_ rank: Int) {
        condition.lock()
        defer { condition.unlock() }
        exited.insert(rank)
        condition.broadcast()
    }

    private func abortedError(rank: Int, call: String) -> CnnError? {
        failureReason.map { CnnError.communication(rank: rank, call: call, reason: "world aborted: \($0)") }
    }

    /// Posts a contribution; the last rank to arrive computes the result. The first rank to see
    /// that ranks called different collectives here collects the others' calls briefly, as an MPI
    /// rank collects their tokens, then reports the mismatch.
    func join(rank: Int, _ contribution: LocalContribution) throws -> LocalSlot {
        condition.lock()
        defer { condition.unlock() }
        let mine = contribution.collective
        if let error = abortedError(rank: rank, call: mine.kind.method) { throw error }
        let sequence = Int(mine.sequence)
        let slot: LocalSlot
        if let existing = slots[sequence] {
            slot = existing
        } else {
            slot = LocalSlot(sequence: sequence, size: size)
            slots[sequence] = slot
        }
        let differs = slot.collective.map { !$0.sameSchedule(as: mine) } ?? false
        slot.contributions[rank] = contribution
        lastJoined[rank] = mine
        slot.arrived += 1
        condition.broadcast()
        if differs && !slot.mismatched {
            slot.mismatched = true
            let until = Date(timeIntervalSinceNow: min(2, timeout))
            while slot.arrived < size && failureReason == nil && condition.wait(until: until) {}
            var byRank: [Int: Collective] = [:]
            for (r, c) in slot.contributions.enumerated() { if let c { byRank[r] = c.collective } }
            let reason = CollectiveReport.mismatch(at: mine.sequence, byRank: byRank, notYet: slot.missingRanks,
                                                   host: { _ in self.hostName },
                                                   noticed: CollectiveReport.noticed(by: rank, host: hostName))
            let error = WorldFailure(rank: rank, collective: mine, reason: reason)
            poison(reason: reason, error: error)
            throw error
        }
        if slot.arrived == size && !slot.mismatched {
            // Outside the lock: the other ranks' buffers are theirs to give until `done`.
            condition.unlock()
            LocalHub.compute(slot.contributions.map { $0! })
            condition.lock()
            slot.done = true
            condition.broadcast()
        }
        return slot
    }

    /// Blocks until `slot` is done, then returns `read(slot)`.
    func wait<T>(_ slot: LocalSlot, rank: Int, read: (LocalSlot) -> T) throws -> T {
        condition.lock()
        defer { condition.unlock() }
        let mine = slot.contributions[rank]!.collective
        let deadline = Date(timeIntervalSinceNow: timeout)
        while !slot.done {
            // Once all ranks have arrived the sum is being written into our buffer: wait for it.
            if slot.arrived == size && !slot.mismatched { condition.wait(); continue }
            try checkAlive(slot, rank: rank)
            if !condition.wait(until: deadline) && !slot.done && slot.arrived < size {
                try checkAlive(slot, rank: rank)
                let reason = CollectiveReport.notReached(mine, missing: slot.missingRanks.map { ($0, lastJoined[$0], "") },
                                                         deadline: timeout, host: { _ in self.hostName },
                                                         noticed: CollectiveReport.noticed(by: rank, host: hostName))
                let error = WorldFailure(rank: rank, collective: mine, reason: reason)
                poison(reason: reason, error: error)
                throw error
            }
        }
        return release(slot, read: read)
    }

    /// True (and the result in place) if `slot` is done; false if still waiting for ranks.
    func test(_ slot: LocalSlot, rank: Int) throws -> Bool {
        condition.lock()
        defer { condition.unlock() }
        if slot.done {
            release(slot) { _ in }
            return true
        }
        if slot.arrived < size || slot.mismatched { try checkAlive(slot, rank: rank) }
        return false
    }

    /// Throws if the world was aborted, or if a rank this slot waits for has already returned.
    private func checkAlive(_ slot: LocalSlot, rank: Int) throws {
        let mine = slot.contributions[rank]!.collective
        if let error = abortedError(rank: rank, call: mine.kind.method) { throw error }
        if let gone = slot.missingRanks.first(where: exited.contains) {
            let reason = "\(CollectiveReport.ranksAndHosts([gone]) { _ in self.hostName }) returned without joining "
                + "collective \(mine.label); \(CollectiveReport.noticed(by: rank, host: hostName))"
            let error = WorldFailure(rank: rank, collective: mine, reason: reason)
            poison(reason: reason, error: error)
            throw error
        }
    }

    /// Reads the result for one rank; the slot is dropped after the last rank has read it.
    private func release<T>(_ slot: LocalSlot, read: (LocalSlot) -> T) -> T {
        let result = read(slot)
        slot.released += 1
        if slot.released == size { slots[slot.sequence] = nil }
        return result
    }

    /// Writes the collective's result into the ranks' buffers. Scalar collectives are read at release.
    private static func compute(_ parts: [LocalContribution]) {
        let count = parts[0].count
        guard count > 0 else { return }
        let root = Int(parts[0].collective.root)
        switch parts[0].collective.kind {
        case .allreduceFloat: sum(parts, Float.self, count: count, into: nil)
        case .allreduceDouble: sum(parts, Double.self, count: count, into: nil)
        case .allreduceBF16: sumBF16(parts, count: count)
        case .reduceFloat: sum(parts, Float.self, count: count, into: root)
        case .reduceDouble: sum(parts, Double.self, count: count, into: root)
        case .broadcast:
            for (r, part) in parts.enumerated() where r != root {
                part.pointer!.copyMemory(from: parts[root].pointer!, byteCount: count)
            }
        case .allgatherBytes:
            // Part r of every other rank's output gets rank r's part (already in place in its own output).
            for (r, source) in parts.enumerated() {
                for (d, destination) in parts.enumerated() where d != r {
                    (destination.pointer! + r * count).copyMemory(from: source.pointer! + r * count, byteCount: count)
                }
            }
        case .barrier, .allgatherInt64, .allreduceMax, .allreduceMin, .heartbeat, .hostNames, .finalize:
            break
        }
    }

    /// The bf16 allreduce, a block at a time: every rank's values rounded to bf16, summed in
    /// rank order in fp32 and rounded once (`sumBF16InRankOrder`), written to every buffer.
    private static func sumBF16(_ parts: [LocalContribution], count: Int) {
        let buffers = parts.map { $0.pointer!.assumingMemoryBound(to: Float.self) }
        let block = 4096, p = buffers.count
        let rounded = UnsafeMutablePointer<UInt16>.allocate(capacity: p * block)
        let out = UnsafeMutablePointer<UInt16>.allocate(capacity: block)
        defer { rounded.deallocate(); out.deallocate() }
        var start = 0
        while start < count {
            let n = min(block, count - start)
            for r in 0..<p {
                for i in 0..<n { rounded[r * block + i] = bf16Bits(buffers[r][start + i]) }
            }
            sumBF16InRankOrder(rounded, ranks: p, stride: block, count: n, into: out)
            for buffer in buffers {
                for i in 0..<n { buffer[start + i] = floatFromBF16Bits(out[i]) }
            }
            start += n
        }
    }

    /// Element-wise sum in rank order 0..N-1, a block at a time, written to every buffer (or only `root`'s).
    private static func sum<T: BinaryFloatingPoint>(_ parts: [LocalContribution], _: T.Type, count: Int, into root: Int?) {
        let buffers = parts.map { $0.pointer!.assumingMemoryBound(to: T.self) }
        let block = 4096
        let acc = UnsafeMutablePointer<T>.allocate(capacity: block)
        defer { acc.deallocate() }
        var start = 0
        while start < count {
            let n = min(block, count - start)
            acc.update(from: buffers[0] + start, count: n)
            for r in 1..<buffers.count {
                let src = buffers[r] + start
                for i in 0..<n { acc[i] += src[i] }
            }
            if let root {
                (buffers[root] + start).update(from: acc, count: n)
            } else {
                for buffer in buffers { (buffer + start).update(from: acc, count: n) }
            }
            start += n
        }
    }
}
