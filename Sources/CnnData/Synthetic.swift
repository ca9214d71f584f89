// A learnable synthetic dataset: each class has a fixed smooth template
// (a sum of two class-specific plane waves per channel); each image is its
// class template plus independent per-pixel noise and a brightness offset.
// A small CNN (or even a linear model) separates the classes, so a short
// training run visibly lowers the loss — used for tests and benchmarks
// without files.
import CnnCore

extension ImageDataset {
    /// A deterministic synthetic dataset of `count` images (a pure function of its arguments).
    ///
    /// Labels are uniform over `0..<classCount`; pixels are the class
    /// template (amplitude ±70 around 128) plus triangular noise with standard
    /// deviation ≈ 36 and a per-image brightness offset within ±16, clamped to 0…255.
    public static func synthetic(count: Int, channels: Int = 1, height: Int = 28, width: Int = 28,
                                 classCount: Int = 10, seed: UInt64 = 1) -> ImageDataset {
        precondition(count >= 0 && channels > 0 && height > 0 && width > 0 && classCount > 0,
                     "synthetic dataset needs positive sizes")
        let plane = height * width
        let imageSize = channels * plane

        // Class templates, values centred on 128.
        var templates = [Float](repeating: 0, count: classCount * imageSize)
        for k in 0..<classCount {
            var rng = SplitMix64(seed: counterHash(seed ^ 0x5EED_7E3A_9A7E_0001, UInt64(k)))
            for c in 0..<channels {
                var waves: [(fx: Float, fy: Float, phase: Float)] = []
                for _ in 0..<2 {
                    let fx = (rng.nextUnitFloat() * 2 - 1) * 3 * 2 * Float.pi / Float(width)
                    let fy = (rng.nextUnitFloat() * 2 - 1) * 3 * 2 * Float.pi / Float(height)
                    waves.append((fx, fy, rng.nextUnitFloat() * 2 * Float.pi))
                }
                for y in 0..<height {
                    for x in 0..<width {
                        var v: Float = 0
                        for w in waves { v += sinApprox(w.fx * Float(x) + w.fy * Float(y) + w.phase) }
                        templates[k * imageSize + c * plane + y * width + x] = 128 + 35 * v
                    }
                }
            }
        }

        var labels = [Int32](repeating: 0, count: count)
        var pixels = [UInt8](repeating: 0, count: count * imageSize)
        pixels.withUnsafeMutableBufferPointer { out in
            for i in 0..<count {
                var rng = SplitMix64(seed: counterHash(seed ^ 0x5EED_DA7A_0000_0002, UInt64(i)))
                let label = Int(uniformBelow(UInt64(classCount), &rng))
                labels[i] = Int32(label)
                let brightness = Float(Int(uniformBelow(33, &rng)) - 16)
                let base = label * imageSize
                var bits: UInt64 = 0
                for j in 0..<imageSize {
                    if j % 4 == 0 { bits = rng.next() }
                    let noise = Float(Int(bits & 0xFF) + Int(bits >> 8 & 0xFF) - 255) * 0.35
                    bits >>= 16
                    let v = templates[base + j] + brightness + noise
                    out[i * imageSize + j] = UInt8(max(0, min(255, v.rounded())))
                }
            }
        }
        return ImageDataset(name: "synthetic(seed \(seed))", source: "", pixels: pixels, labels: labels,
                            channels: channels, height: height, width: width, classCount: classCount)
    }
}

/// A uniform integer in `0..<bound` (multiply-high; bias below bound / 2^64),
/// fixed here rather than left to the standard library so streams never change.
@inline(__always)
func uniformBelow(_ bound: UInt64, _ rng: inout SplitMix64) -> UInt64 {
    rng.next().multipliedFullWidth(by: bound).high
}

/// sin(x) for template generation, accurate to ~1e-6, without Foundation.
func sinApprox(_ x: Float) -> Float {
    var t = Double(x).truncatingRemainder(dividingBy: 2 * Double.pi)
    if t > Double.pi { t -= 2 * Double.pi } else if t < -Double.pi { t += 2 * Double.pi }
    // Taylor series to x^15 on [-π, π].
    var term = t, sum = t
    for n in stride(from: 3, through: 17, by: 2) {
        term *= -t * t / Double((n - 1) * n)
        sum += term
    }
    return Float(sum)
}
