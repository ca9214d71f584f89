// Per-channel normalisation: x = (pixel / 255 − mean[c]) / std[c], with the
// mean and (population) standard deviation of pixel / 255 over the training
// split. The same statistics must be used for the test split and for
// `predict`, so they are a value the caller keeps (and can checkpoint).
import CnnCore

/// Per-channel mean and standard deviation of pixel / 255, in Double.
public struct ChannelStatistics: Equatable, Sendable, Codable {
    /// Mean of pixel / 255 for each channel.
    public var mean: [Double]
    /// Population standard deviation of pixel / 255 for each channel (never 0).
    public var std: [Double]

    /// Statistics from known values (e.g. read from a checkpoint).
    public init(mean: [Double], std: [Double]) {
        precondition(mean.count == std.count && !mean.isEmpty, "mean and std need one value per channel")
        precondition(std.allSatisfy { $0 > 0 }, "std must be positive: \(std)")
        self.mean = mean
        self.std = std
    }

    /// Mean 0 and std 1: normalisation is then just pixel / 255.
    public static func unit(channels: Int) -> ChannelStatistics {
        ChannelStatistics(mean: [Double](repeating: 0, count: channels), std: [Double](repeating: 1, count: channels))
    }

    /// Number of channels.
    public var channels: Int { mean.count }

    /// Exact per-channel statistics of `dataset` (integer sums, one pass).
    /// A constant channel (std 0) gets std 1 so normalisation stays finite.
    public static func compute(_ dataset: ImageDataset) -> ChannelStatistics {
        let c = dataset.channels, plane = dataset.height * dataset.width
        var sums = [UInt64](repeating: 0, count: c)
        var squares = [UInt64](repeating: 0, count: c)
        dataset.pixels.withUnsafeBufferPointer { px in
            for i in 0..<dataset.count {
                for ch in 0..<c {
                    let start = px.baseAddress! + (i * c + ch) * plane
                    var s: UInt64 = 0, q: UInt64 = 0
                    for k in 0..<plane {
                        let v = UInt64(start[k])
                        s &+= v
                        q &+= v &* v
                    }
                    sums[ch] &+= s
                    squares[ch] &+= q
                }
            }
        }
        let n = Double(dataset.count * plane)
        var mean = [Double](repeating: 0, count: c), std = [Double](repeating: 1, count: c)
        guard n > 0 else { return ChannelStatistics(mean: mean, std: std) }
        for ch in 0..<c {
            let m = Double(sums[ch]) / n
            let variance = max(0, Double(squares[ch]) / n - m * m)
            mean[ch] = m / 255
            let s = variance.squareRoot() / 255
            std[ch] = s > 1e-12 ? s : 1
        }
        return ChannelStatistics(mean: mean, std: std)
    }

    /// The normalised value of `pixel` in `channel`.
    @inline(__always)
    public func normalize(_ pixel: UInt8, channel: Int) -> Float {
        Float((Double(pixel) / 255 - mean[channel]) / std[channel])
    }

    /// A 256-entry table per channel (channel-major): `table[c * 256 + p]` is
    /// the normalised value of pixel `p` in channel `c`.
    public func lookupTable() -> [Float] {
        var table = [Float](repeating: 0, count: channels * 256)
        for c in 0..<channels {
            for p in 0..<256 { table[c * 256 + p] = normalize(UInt8(p), channel: c) }
        }
        return table
    }
}

extension ChannelStatistics: CustomStringConvertible {
    public var description: String {
        func f(_ v: [Double]) -> String {
            v.map { String((($0 * 10_000).rounded()) / 10_000) }.joined(separator: ", ")
        }
        return "mean [\(f(mean))] std [\(f(std))]"
    }
}
