// The instruction-set features of the running CPU, read once with CPUID, so kernels that
// need more than the build's baseline (AVX2 + FMA on x86-64) are chosen at run time.

import CBF16
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What the running CPU (and its OS) can execute, from CPUID and XGETBV.
public struct CPUFeatures: Equatable, Sendable {
    /// The CPUID brand string, e.g. "AMD EPYC 9B45" (empty where CPUID does not exist).
    public var name: String
    public var avx2: Bool
    public var fma: Bool
    public var avx512f: Bool
    public var avx512bw: Bool
    /// AVX512_BF16: vdpbf16ps and the bf16 conversions.
    public var avx512bf16: Bool
    /// Whether the OS saves the AVX-512 register state (XCR0 opmask, ZMM_Hi256, Hi16_ZMM),
    /// without which AVX-512 instructions fault even on a CPU that has them.
    public var osSavesAVX512State: Bool

    public init(name: String, avx2: Bool, fma: Bool, avx512f: Bool, avx512bw: Bool, avx512bf16: Bool,
                osSavesAVX512State: Bool) {
        self.name = name
        self.avx2 = avx2
        self.fma = fma
        self.avx512f = avx512f
        self.avx512bw = avx512bw
        self.avx512bf16 = avx512bf16
        self.osSavesAVX512State = osSavesAVX512State
    }

    /// The running CPU's features, read once, less those the test hook
    /// CNN_DISABLE_CPU_FEATURES (comma-separated /proc/cpuinfo names, e.g. "avx512_bf16")
    /// hides, so tests can see how a CPU without them is treated.
    public static let current: CPUFeatures = {
        var features = CPUFeatures.detect()
        if let hidden = getenv("CNN_DISABLE_CPU_FEATURES") {
            features.hide(String(cString: hidden).split(separator: ",").map { String($0) })
        }
        return features
    }()

    /// Clears the named features (/proc/cpuinfo names: avx2, fma, avx512f, avx512bw, avx512_bf16).
    public mutating func hide(_ names: [String]) {
        for name in names {
            switch String(name.filter { $0 != " " }) {
            case "avx2": avx2 = false
            case "fma": fma = false
            case "avx512f": avx512f = false
            case "avx512bw": avx512bw = false
            case "avx512_bf16": avx512bf16 = false
            default: break
            }
        }
    }

    /// Whether sgemm's AVX-512 tile (`GemmKernel.avx512`) can run here.
    public var avx512FP32: Bool { avx512f && osSavesAVX512State }

    /// Whether `gemmBF16` can run its native kernel here.
    public var bf16GEMM: Bool { missingBF16Features.isEmpty }

    /// The features the bf16 GEMM needs that this CPU (or OS) lacks, by their /proc/cpuinfo names.
    public var missingBF16Features: [String] {
        var missing: [String] = []
        if !avx512f { missing.append("avx512f") }
        if !avx512bw { missing.append("avx512bw") }
        if !avx512bf16 { missing.append("avx512_bf16") }
        if missing.isEmpty && !osSavesAVX512State { missing.append("AVX-512 state saving by the OS (XCR0)") }
        return missing
    }

    /// Throws `CnnError.missingCPUFeature` naming what is missing when bf16 compute
    /// (`neededFor`, e.g. "precision bf16") cannot run on this CPU.
    public func requireBF16(for neededFor: String = "precision bf16") throws {
        guard bf16GEMM else {
            throw CnnError.missingCPUFeature(feature: missingBF16Features.joined(separator: ", "),
                                             cpu: name.isEmpty ? "unknown CPU" : name, neededFor: neededFor)
        }
    }

    /// One line for `doctor`: the name and the features that choose kernels.
    public var summary: String {
        func flag(_ on: Bool, _ name: String) -> String { (on ? "+" : "-") + name }
        return "\(name.isEmpty ? "unknown CPU" : name): " + [flag(avx2, "avx2"), flag(fma, "fma"), flag(avx512f, "avx512f"),
            flag(avx512bw, "avx512bw"), flag(avx512bf16, "avx512_bf16")].joined(separator: " ")
            + "; bf16 compute " + (bf16GEMM ? "available" : "unavailable")
    }

    static func detect() -> CPUFeatures {
        func cpuid(_ leaf: UInt32, _ subleaf: UInt32 = 0) -> [UInt32] {
            var regs = [UInt32](repeating: 0, count: 4)
            regs.withUnsafeMutableBufferPointer { cnn_cpuid(leaf, subleaf, $0.baseAddress!) }
            return regs
        }
        func bit(_ value: UInt32, _ n: Int) -> Bool { value & (1 << UInt32(n)) != 0 }
        let leaf1 = cpuid(1), leaf7 = cpuid(7, 0), leaf7s1 = cpuid(7, 1)
        let xcr0 = cnn_xgetbv0()
        // XCR0 bits 1, 2 (SSE, AVX) and 5, 6, 7 (opmask, upper halves of ZMM0-15, ZMM16-31).
        let avx512State = xcr0 & 0xE6 == 0xE6
        var brand: [UInt8] = []
        if cpuid(0x8000_0000)[0] >= 0x8000_0004 {
            for leaf in UInt32(0x8000_0002)...0x8000_0004 {
                for r in cpuid(leaf) { for i in 0..<4 { brand.append(UInt8(truncatingIfNeeded: r >> (8 * UInt32(i)))) } }
            }
        }
        let name = String(decoding: brand.prefix { $0 != 0 }, as: UTF8.self)
            .split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ")
        return CPUFeatures(name: name, avx2: bit(leaf7[1], 5), fma: bit(leaf1[2], 12), avx512f: bit(leaf7[1], 16),
                           avx512bw: bit(leaf7[1], 30), avx512bf16: bit(leaf7s1[0], 5), osSavesAVX512State: avx512State)
    }
}
