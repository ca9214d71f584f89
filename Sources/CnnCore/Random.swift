/// SplitMix64: a small, fast, seedable generator (Steele, Lea, Flood 2014).
/// Used where a stream is needed: initialisation, shuffling, augmentation.
public struct SplitMix64: RandomNumberGenerator {
    public private(set) var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        return SplitMix64.mix(state)
    }

    /// The finaliser of SplitMix64: a bijective 64-bit hash.
    @inline(__always)
    public static func mix(_ value: UInt64) -> UInt64 {
        var z = value
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A uniform Float in [0, 1) with 24 random bits.
    public mutating func nextUnitFloat() -> Float { Float(next() >> 40) * (1.0 / 16_777_216.0) }

    /// A standard normal sample (Box-Muller).
    public mutating func nextNormal() -> Float {
        let u1 = Swift.max(Double(next() >> 11) * (1.0 / 9_007_199_254_740_992.0), 1e-300)
        let u2 = Double(next() >> 11) * (1.0 / 9_007_199_254_740_992.0)
        return Float((-2 * _log(u1)).squareRoot() * _cos(2 * Double.pi * u2))
    }
}

/// A counter-based random value: the same (key, counter) always gives the same
/// bits, whatever thread or rank asks. Dropout masks use it keyed by the global
/// sample index, so they do not depend on how a batch is split across ranks.
@inline(__always)
public func counterHash(_ key: UInt64, _ counter: UInt64) -> UInt64 {
    counterHash(key, mixedCounter: counterMix(counter))
}

/// The half of `counterHash` that does not depend on the key, so that callers hashing the
/// same counters under many keys (dropout: one key per sample) can compute it once:
/// counterHash(key, c) == counterHash(key, mixedCounter: counterMix(c)).
@inline(__always)
public func counterMix(_ counter: UInt64) -> UInt64 { SplitMix64.mix(counter &+ 0x632B_E59B_D9B4_E019) }

/// `counterHash` from a counter already passed through `counterMix`.
@inline(__always)
public func counterHash(_ key: UInt64, mixedCounter: UInt64) -> UInt64 { SplitMix64.mix(key &+ mixedCounter) }

@inline(__always) func _log(_ x: Double) -> Double { Double.log(x) }
@inline(__always) func _cos(_ x: Double) -> Double { Double.cos(x) }

extension Double {
    @inline(__always) static func log(_ x: Double) -> Double {
        #if canImport(Glibc)
        return Glibc.log(x)
        #else
        return Darwin.log(x)
        #endif
    }
    @inline(__always) static func cos(_ x: Double) -> Double {
        #if canImport(Glibc)
        return Glibc.cos(x)
        #else
        return Darwin.cos(x)
        #endif
    }
}

#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif
