import CMPI
import CnnCore
import Foundation
#if canImport(Glibc)
import Glibc
#endif

// MPICommunicator's reports: who kept a collective from completing, schedule mismatches, and
// what a rank says when the launcher terminates the job.
extension MPICommunicator {
    func host(_ r: Int) -> String { r < hostNames.count ? hostNames[r] : "?" }

    /// " and its process is alive" / " and no liveness datagram for 4.3 s (dead, stopped or cut off)" / "".
    func livenessNote(_ r: Int) -> String {
        guard let beacon, let silence = beacon.silence(of: r) else { return "" }
        return silence > 3 * beacon.interval
            ? " and no liveness datagram for \(formatSeconds(silence)) s (dead, stopped or cut off)"
            : " and its process is alive (busy or stuck outside MPI)"
    }

    func ranksAndHosts(_ ranks: [Int]) -> String { CollectiveReport.ranksAndHosts(ranks, host: host) }

    /// Names the ranks that kept `collective` from completing, then stops.
    func missedDeadline(_ collective: Collective, since begin: Double) throws {
        try receiveTokens()
        let s = collective.sequence
        let now = monotonic()
        let within = CollectiveReport.within(deadline)
        let noticed = CollectiveReport.noticed(by: rank, host: processorName)
        var missing = peers.filter { $0.arrived < s }
        // A missing rank that is itself waiting in an earlier collective (its heartbeats say so) is a victim,
        // not the culprit: name the others, if any, and mention it.
        let blocked = missing.filter { $0.waitingAt == $0.arrived && now - $0.heard < deadline / 2 }
        var blockedNote = ""
        if !blocked.isEmpty && blocked.count < missing.count {
            missing.removeAll { p in blocked.contains { $0 === p } }
            blockedNote = "; " + blocked.map { "rank \($0.rank) (host \(host($0.rank))) is itself still waiting in collective #\($0.arrived)" }
                .joined(separator: ", ")
        }
        if !missing.isEmpty {
            try stop(CollectiveReport.notReached(collective, missing: missing.map { ($0.rank, $0.last, livenessNote($0.rank)) },
                                                 deadline: deadline, host: host, extra: blockedNote, noticed: noticed),
                     in: collective)
        }
        // Arrived, but long after this rank: it was stopped and has just been resumed (mpirun sends SIGCONT
        // before SIGTERM when another rank aborts the job), or it is that slow.
        let late = peers.filter { $0.arrived == s && $0.arrivedAt - begin > deadline / 2 }
        if !late.isEmpty {
            let delays = late.map { "rank \($0.rank) \(formatSeconds($0.arrivedAt - begin)) s after this rank" }.joined(separator: ", ")
            try stop("\(ranksAndHosts(late.map(\.rank))) reached collective \(collective.label) only late (\(delays)); "
                     + "it did not complete \(within); \(noticed)", in: collective)
        }
        let silent = peers.filter { $0.arrived == s && now - $0.heard > deadline / 2 }
        if !silent.isEmpty {
            let heard = silent.map { "rank \($0.rank) silent for \(formatSeconds(now - $0.heard)) s" }.joined(separator: ", ")
            try stop("\(ranksAndHosts(silent.map(\.rank))) reached collective \(collective.label) but stopped making "
                     + "progress (\(heard)); it did not complete \(within); \(noticed)", in: collective)
        }
        try stop("collective \(collective.label) did not complete \(within) although every rank reached it and "
                 + "is alive (the network between ranks may be down); \(noticed)", in: collective)
    }

    /// Ranks called different collectives as number `s`: collect their tokens briefly, name the odd ones out, stop.
    func scheduleMismatch(at s: Int64) throws {
        let begin = monotonic()
        while peers.contains(where: { $0.arrived < s }) && monotonic() - begin < min(2, deadline) {
            try receiveTokens()
            usleep(1000)
        }
        guard let mine = history[s] else { return }
        var byRank: [Int: Collective] = [rank: mine]
        for p in peers {
            if let d = p.pending.first(where: { $0.sequence == s }) { byRank[p.rank] = d }
            else if p.arrived >= s { byRank[p.rank] = mine } // compared earlier: equal to ours
        }
        let notYet = peers.filter { byRank[$0.rank] == nil }.map(\.rank)
        try stop(CollectiveReport.mismatch(at: s, byRank: byRank, notYet: notYet, host: host,
                                           noticed: CollectiveReport.noticed(by: rank, host: processorName)), in: mine)
    }

    /// An MPI call failed inside collective `d`: a schedule mismatch is the likelier story if a token says so.
    func explain(_ error: Error, in d: Collective) throws -> Never {
        let begin = monotonic()
        while monotonic() - begin < min(1, deadline) {
            try receiveTokens()
            for p in peers {
                if let theirs = p.pending.first(where: { $0.sequence == d.sequence }), !theirs.sameSchedule(as: d) {
                    try scheduleMismatch(at: d.sequence)
                }
            }
            if peers.allSatisfy({ $0.arrived >= d.sequence }) { break }
            usleep(1000)
        }
        throw error
    }

    /// The world cannot go on: throws the report for the command line to act on (see `endWorldAfterError`).
    func stop(_ reason: String, in collective: Collective) throws -> Never {
        let failure = WorldFailure(rank: rank, collective: collective, reason: reason)
        worldFailure = failure
        throw failure
    }

    func setWaiting(_ d: Collective?, since: Double) {
        stateLock.lock()
        waitingFor = d
        waitingSince = since
        stateLock.unlock()
    }

    /// On SIGTERM (the launcher ending the job) say what this rank was waiting for, then exit with
    /// status 143. The command line calls this once after starting the world (see
    /// `installTerminationSignalHandlers`); `finalize()` restores the default action.
    public func installTerminationReport() {
        guard signalSource == nil else { return }
        signal(SIGTERM, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: SIGTERM, queue: .global())
        source.setEventHandler { [unowned self] in
            listenForPeers(seconds: 0.3)
            FileHandle.standardError.write(Data("cnn-dist: \(terminationReport(event: "terminated by the launcher"))\n".utf8))
            _exit(143)
        }
        source.resume()
        signalSource = source
    }

    /// For a rank that takes `signal` as "finish this step, then stop": if it is waiting in a
    /// collective `seconds` after the signal, say where, as `installTerminationReport` would. When
    /// a peer has died the step cannot finish and the launcher ends the job soon after its
    /// SIGTERM; this line is then what tells where each rank was. Returns at once.
    public func reportIfWaiting(after seconds: Double, signal name: String) {
        DispatchQueue.global().async { [weak self] in
            guard let self else { return }
            listenForPeers(seconds: seconds)
            stateLock.lock()
            let waiting = waitingFor != nil
            stateLock.unlock()
            guard waiting else { return }
            FileHandle.standardError.write(Data("cnn-dist: \(terminationReport(event: "got \(name)"))\n".utf8))
        }
    }

    /// Spends `seconds` taking in the peers' tokens. OpenMPI sends SIGKILL a second after SIGTERM:
    /// a fraction of that lets the live peers' heartbeats come in, so a dead one stands out by its silence.
    private func listenForPeers(seconds: Double) {
        usleep(UInt32(seconds * 1e6))
        if lock.try() {
            // The training thread is computing, not polling: take in the tokens ourselves.
            if !finalized { try? receiveTokens() }
            lock.unlock()
        }
    }

    /// One line: where this rank is and when it last heard from each peer.
    func terminationReport(event: String) -> String {
        stateLock.lock()
        defer { stateLock.unlock() }
        let now = monotonic()
        var text = "rank \(rank) (host \(processorName)) \(event) at step \(_currentStep)"
        if let w = waitingFor {
            text += " while waiting \(formatSeconds(now - waitingSince)) s in collective \(w.label)"
            let missing = peers.filter { $0.arrived < w.sequence }.map(\.rank)
            if !missing.isEmpty { text += " for \(ranksAndHosts(missing))" }
            // Peers that reached it send heartbeats while they wait; silence means dead or stopped.
            let quiet = 2.5 * Self.heartbeatInterval(deadline: _deadline)
            let silent = peers.filter { $0.arrived >= w.sequence && now - $0.heard > quiet && now - waitingSince > quiet }
            if !silent.isEmpty && silent.count < peers.count {
                text += "; \(ranksAndHosts(silent.map(\.rank))) reached it but went silent "
                    + silent.map { "\(formatSeconds(now - $0.heard)) s ago" }.joined(separator: ", ")
            }
        }
        if let beacon {
            let gone = peers.compactMap { p in beacon.silence(of: p.rank).flatMap { $0 > 3 * beacon.interval ? (p.rank, $0) : nil } }
            if !gone.isEmpty {
                text += "; no liveness datagram from " + gone.map { "rank \($0.0) (host \(host($0.0))) for \(formatSeconds($0.1)) s" }
                    .joined(separator: ", ") + " (dead, stopped or cut off)"
            }
        }
        let heard = peers.map { p in
            "rank \(p.rank) (host \(host(p.rank))) \(formatSeconds(now - p.heard)) s ago at #\(p.arrived)"
        }
        if !heard.isEmpty { text += "; last heard from " + heard.joined(separator: ", ") }
        return text
    }

}
