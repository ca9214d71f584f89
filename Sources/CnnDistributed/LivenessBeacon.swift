import Foundation
import CnnCore
#if canImport(Glibc)
import Glibc
#endif

/// Liveness outside MPI: every rank sends each peer a small UDP datagram
/// every `interval` seconds from a thread of its own, and records when it
/// last heard from each peer.
///
/// Why: when a process or a whole host dies, OpenMPI's TCP transport can
/// stall every rank's progress (no more tokens or heartbeats get through),
/// and the launcher's SIGTERM comes a second later. The datagrams do not
/// depend on MPI, so a dead, stopped (SIGSTOP) or cut-off rank is the one
/// that has gone silent while the others keep beating. A rank stuck in an
/// endless loop keeps beating (its beacon thread runs): that case is named
/// by the collective arrival tokens instead.
///
/// Addresses: each rank binds an ephemeral UDP port on all interfaces and
/// peers reach it at its processor name (resolved with getaddrinfo, IPv4).
/// A peer whose name does not resolve is simply never heard from; reports
/// then say "no datagram" only when they can tell (`isWorking`).
/// Cost: (size - 1) 16-byte datagrams per interval per rank.
final class LivenessBeacon: @unchecked Sendable {
    let rank: Int
    let interval: Double
    private let fd: Int32
    /// This rank's UDP port (0 if the socket could not be made).
    let port: UInt16
    private let lock = NSLock()
    private var targets: [(rank: Int, address: sockaddr_in)] = []
    private var heard: [Int: Double] = [:]
    private var running = false
    private static let magic: Int64 = 0x636e_6e64_6c69_7665 // "cnndlive"

    init(rank: Int, interval: Double = 0.2) {
        self.rank = rank
        self.interval = interval
        let s = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = 0 // INADDR_ANY
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = s >= 0 && withUnsafeMutablePointer(to: &address) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                bind(s, sa, length) == 0 && getsockname(s, sa, &length) == 0
            }
        }
        if ok {
            var timeout = timeval(tv_sec: 0, tv_usec: 20_000)
            setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            fd = s
            port = UInt16(bigEndian: address.sin_port)
        } else {
            if s >= 0 { close(s) }
            fd = -1
            port = 0
        }
    }

    /// Starts beating to `peers` (rank, host name, port); peers whose name does not resolve are skipped.
    func start(peers: [(rank: Int, host: String, port: UInt16)]) {
        guard fd >= 0 else { return }
        var resolved: [(Int, sockaddr_in)] = []
        for peer in peers where peer.port != 0 {
            guard var address = Self.resolve(peer.host) else { continue }
            address.sin_port = peer.port.bigEndian
            resolved.append((peer.rank, address))
        }
        let now = monotonicSeconds()
        lock.lock()
        targets = resolved
        for (r, _) in resolved { heard[r] = now }
        running = true
        lock.unlock()
        let thread = Thread { [self] in loop() }
        thread.name = "cnn-dist liveness"
        thread.start()
    }

    func stop() {
        lock.lock()
        running = false
        lock.unlock()
    }

    /// True if datagrams go to (and can come from) `rank`.
    func isWorking(for rank: Int) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        return heard[rank] != nil
    }

    /// Seconds since the last datagram from `rank`, or nil if it is not a target.
    func silence(of rank: Int) -> Double? {
        lock.lock()
        defer { lock.unlock() }
        return heard[rank].map { monotonicSeconds() - $0 }
    }

    private func loop() {
        var message: (Int64, Int64) = (Self.magic, Int64(rank))
        var incoming: (Int64, Int64) = (0, 0)
        var nextBeat = 0.0
        while true {
            lock.lock()
            let go = running, list = targets
            lock.unlock()
            if !go { return }
            let now = monotonicSeconds()
            if now >= nextBeat {
                nextBeat = now + interval
                for (_, address) in list {
                    var a = address
                    _ = withUnsafePointer(to: &a) { p in
                        p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                            sendto(fd, &message, 16, Int32(MSG_DONTWAIT), sa, socklen_t(MemoryLayout<sockaddr_in>.size))
                        }
                    }
                }
            }
            // Blocks at most the 20 ms receive timeout.
            if recv(fd, &incoming, 16, 0) == 16, incoming.0 == Self.magic {
                lock.lock()
                if heard[Int(incoming.1)] != nil { heard[Int(incoming.1)] = monotonicSeconds() }
                lock.unlock()
            }
        }
    }

    private static func resolve(_ host: String) -> sockaddr_in? {
        var hints = addrinfo()
        hints.ai_family = AF_INET
        hints.ai_socktype = Int32(SOCK_DGRAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, nil, &hints, &result) == 0, let first = result else { return nil }
        defer { freeaddrinfo(result) }
        guard let sa = first.pointee.ai_addr else { return nil }
        return sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee }
    }
}

