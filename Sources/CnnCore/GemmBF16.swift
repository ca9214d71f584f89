// bf16 GEMM with fp32 accumulation:
//
//   C (M×N) = alpha · bf16(op(A)) (M×K) · bf16(op(B)) (K×N) + beta · C        all row-major
//
// bf16(x) is x rounded to bfloat16 (8-bit significand) to nearest, ties to even; products
// of two bf16 values are exact in fp32 and are summed in fp32. The loops, blocking and
// threading are those of `sgemm` (Gemm.swift: jc by NC, pc by KC, ic by MC, jr by NR, ir by
// MR; small M packs all of op(A) once and walks N in NCsmall panels). The operands are
// rounded while they are packed, with K in pairs, because vdpbf16ps multiplies the two bf16
// halves of a 32-bit lane of A by the two of the same lane of B and adds both products into
// one fp32 lane:
//   packed A micro-panel (rows × kc): word q·rows + i = (A[i, 2q], A[i, 2q + 1])
//   packed B micro-panel (kc × NR):   word q·NR + j   = (B[2q, j], B[2q + 1, j])
// low half first; an odd kc gets a zero partner, rows past M and columns past N are zero.
// The micro-kernel (one rows × NR tile) is C with intrinsics (CBF16, cnn_bf16_tile): Swift
// cannot emit vdpbf16ps. `BF16Kernel.portable` is the same tile in plain Swift, so the
// packing and blocking are tested on every CPU, and `gemmBF16Reference` is the triple loop.

import CBF16
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The arithmetic of a layer's GEMMs (config key `precision`, flag `--precision`).
public enum ComputePrecision: String, ConfigChoice {
    /// fp32 operands, fp32 accumulation (`sgemm`).
    case fp32
    /// Operands rounded to bf16, fp32 accumulation (`gemmBF16`); the native kernel needs
    /// `CPUFeatures.current.bf16GEMM` (check with `requireBF16()`).
    case bf16
}

/// What a pass's GEMMs run: the precision and, for bf16, which tile kernel. Carried by the
/// `ExecutionContext` into each layer and by the convolution workspace into its passes.
public struct GemmArithmetic: Equatable, Sendable, CustomStringConvertible {
    public var precision: ComputePrecision
    /// The bf16 tile kernel (unused in fp32).
    public var bf16Kernel: BF16Kernel

    public init(_ precision: ComputePrecision = .fp32, bf16Kernel: BF16Kernel = .automatic) {
        self.precision = precision
        self.bf16Kernel = bf16Kernel
    }

    /// fp32 `sgemm`: today's bits.
    public static let fp32 = GemmArithmetic(.fp32)

    public var description: String {
        precision == .fp32 ? "fp32" : "bf16 (\(bf16Kernel == .native ? "vdpbf16ps" : "portable kernel"))"
    }
}

/// `sgemm`, or `gemmBF16` with the arithmetic's kernel for `.bf16`: same contract.
@inline(__always)
func gemm(_ arithmetic: GemmArithmetic, _ transA: Transpose, _ transB: Transpose, m: Int, n: Int, k: Int,
          alpha: Float, a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
          beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
    switch arithmetic.precision {
    case .fp32:
        sgemm(transA, transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc)
    case .bf16:
        gemmBF16(transA, transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc,
                 kernel: arithmetic.bf16Kernel)
    }
}

/// Block sizes of `gemmBF16`, BLIS names (the fp32 ones are `GemmBlocking`).
public enum BF16GemmBlocking {
    /// Rows of the full micro-tile: 12 rows × 2 vectors of 16 fp32 = 24 accumulators of the
    /// 32 ZMM registers, plus 2 B vectors; tails use 8- and 4-row tiles.
    public static let MR = Int(CNN_BF16_MR)
    /// Columns of the micro-tile: two ZMM vectors of 16 fp32.
    public static let NR = Int(CNN_BF16_NR)
    /// Depth of a packed panel (even: whole pairs). A KC×NR B micro-panel is KC/2·NR words
    /// (32 KiB), in the 48 KiB L1 while A micro-panels stream past it.
    public static let KC = 512
    /// Rows of a packed A block (a multiple of 12 and of 4): MC×KC bf16 = 144 KiB of L2.
    public static let MC = 144
    /// Columns of the packed B panel (KC×NC bf16 = 2 MiB, in L3).
    public static let NC = 2048
    /// Columns of the B panel when all of op(A) is packed once (small M).
    public static let NCsmall = 256
}

/// Which micro-kernel `gemmBF16` runs.
public enum BF16Kernel: Sendable {
    /// vdpbf16ps (CBF16); needs `CPUFeatures.current.bf16GEMM`.
    case native
    /// The same arithmetic in portable Swift (slow): for tests on any CPU.
    case portable

    /// `.native` where the CPU has it, else `.portable`; the environment variable
    /// CNN_BF16_KERNEL=portable forces `.portable` (so bf16 runs, slowly, on any CPU: tests).
    public static let automatic: BF16Kernel = portableForced || !CPUFeatures.current.bf16GEMM ? .portable : .native

    /// Whether CNN_BF16_KERNEL=portable is set (then bf16 is not refused on a CPU without it).
    public static let portableForced: Bool = {
        guard let value = getenv("CNN_BF16_KERNEL") else { return false }
        return String(cString: value) == "portable"
    }()
}

private let MR = BF16GemmBlocking.MR
private let NR = BF16GemmBlocking.NR
private let KC = BF16GemmBlocking.KC
private let MC = BF16GemmBlocking.MC
private let NC = BF16GemmBlocking.NC
private let NCsmall = BF16GemmBlocking.NCsmall
/// Longest K loop (in pairs) after which a tile still prefetches the next tile's C when
/// beta != 0: backward-weights of 7×7 and 14×14 planes accumulate K = 49 or 196 pixels per
/// image into a C of megabytes.
private let prefetchCMaximumPairs = 128
/// The same with beta == 0, where C is only written (its lines still have to be fetched
/// before the stores land): measured side by side to pay at K = 27 (300 × 16384 × 27), to
/// be neutral at K = 49 and unclear (within the noise) from K = 147 on.
private let prefetchCMaximumPairsWriting = 32
/// Largest packed op(A), in words, that the small-M path packs whole (512 KiB: a 64 × 4096
/// linear layer's; each K step's slice of it is what stays in L2, and the B blocks, read once
/// per K step and column panel, are prefetched while the tiles compute).
private let packedAWholeLimitWords = 128 * 1024

/// The bf16 bit pattern of x rounded to nearest, ties to even, as vcvtne2ps2bf16 does it:
/// NaN stays a quiet NaN, values past the largest bf16 round to infinity, and subnormal
/// inputs become a zero of their sign (the instruction treats them as zero, and vdpbf16ps
/// would ignore a subnormal bf16 anyway).
@inline(__always)
public func bf16Bits(_ x: Float) -> UInt16 {
    let u = x.bitPattern
    if u & 0x7FFF_FFFF > 0x7F80_0000 { return UInt16(truncatingIfNeeded: (u | 0x0040_0000) >> 16) }
    if u & 0x7F80_0000 == 0 { return UInt16(truncatingIfNeeded: (u & 0x8000_0000) >> 16) }
    return UInt16(truncatingIfNeeded: (u &+ 0x7FFF &+ ((u >> 16) & 1)) >> 16)
}

/// The Float whose bits are the bf16 `bits` followed by 16 zero bits (exact: bf16 is the top half of fp32).
@inline(__always)
public func floatFromBF16Bits(_ bits: UInt16) -> Float { Float(bitPattern: UInt32(bits) << 16) }

/// x rounded to bf16 (round to nearest even), as a Float.
@inline(__always)
public func bf16Rounded(_ x: Float) -> Float { floatFromBF16Bits(bf16Bits(x)) }

/// The bf16 patterns of 16 floats, each in the high half of its lane (low half zero).
@inline(__always)
private func bf16High(_ v: SIMD16<Float>) -> SIMD16<UInt32> {
    let u = unsafeBitCast(v, to: SIMD16<UInt32>.self)
    var rounded = (u &+ 0x7FFF &+ ((u &>> 16) & 1)) & 0xFFFF_0000
    rounded.replace(with: (u | 0x0040_0000) & 0xFFFF_0000, where: (u & 0x7FFF_FFFF) .> 0x7F80_0000)
    rounded.replace(with: u & 0x8000_0000, where: (u & 0x7F80_0000) .== 0)
    return rounded
}

/// One packed word: bf16(lo) in the low half, bf16(hi) in the high half.
@inline(__always)
private func bf16Pair(_ lo: Float, _ hi: Float) -> UInt32 {
    UInt32(bf16Bits(lo)) | UInt32(bf16Bits(hi)) << 16
}

/// C (M×N) = alpha · bf16(op(A)) · bf16(op(B)) + beta · C with fp32 accumulation, the
/// `sgemm` contract otherwise (op, leading dimensions, beta == 0 not reading C, threads:
/// with `ComputeThreads.count` = T > 1 the columns or rows are split and every element gets
/// the same K loop, so the result does not depend on T).
/// `.native` needs a CPU with AVX512_BF16: check `CPUFeatures.current.requireBF16()` first.
public func gemmBF16(
    _ transA: Transpose, _ transB: Transpose, m: Int, n: Int, k: Int,
    alpha: Float, a: UnsafePointer<Float>, lda: Int,
    b: UnsafePointer<Float>, ldb: Int,
    beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int,
    kernel: BF16Kernel = .native
) {
    precondition(m >= 0 && n >= 0 && k >= 0, "gemmBF16: negative dimension")
    if m == 0 || n == 0 { return }
    precondition(ldc >= n, "gemmBF16: ldc \(ldc) < n \(n)")
    precondition(k == 0 || lda >= (transA == .none ? k : m), "gemmBF16: lda \(lda) too small for op(A) \(m)×\(k)")
    precondition(k == 0 || ldb >= (transB == .none ? n : k), "gemmBF16: ldb \(ldb) too small for op(B) \(k)×\(n)")
    precondition(kernel == .portable || CPUFeatures.current.bf16GEMM,
                 "gemmBF16: this CPU lacks \(CPUFeatures.current.missingBF16Features.joined(separator: ", "))")
    if k == 0 || alpha == 0 {
        scaleC(m: m, n: n, beta: beta, c: c, ldc: ldc)
        return
    }
    let threads = availableComputeThreads()
    if threads > 1 && m * n * k >= parallelGemmMinimumMACs {
        let byColumns = n >= m
        let units = byColumns ? (n + NR - 1) / NR : (m + MR - 1) / MR
        let tasks = min(threads, units)
        if tasks > 1 {
            parallelTasks(tasks) { t in
                let r = taskRange(t, of: units, tasks: tasks)
                if byColumns {
                    let j0 = r.lowerBound * NR, j1 = min(r.upperBound * NR, n)
                    gemmBF16(transA, transB, m: m, n: j1 - j0, k: k, alpha: alpha, a: a, lda: lda,
                             b: transB == .none ? b + j0 : b + j0 * ldb, ldb: ldb, beta: beta, c: c + j0, ldc: ldc,
                             kernel: kernel)
                } else {
                    let i0 = r.lowerBound * MR, i1 = min(r.upperBound * MR, m)
                    gemmBF16(transA, transB, m: i1 - i0, n: n, k: k, alpha: alpha,
                             a: transA == .none ? a + i0 * lda : a + i0, lda: lda, b: b, ldb: ldb,
                             beta: beta, c: c + i0 * ldc, ldc: ldc, kernel: kernel)
                }
            }
            return
        }
    }

    // K in equal even steps of at most KC (only the last may be odd).
    let kSteps = (k + KC - 1) / KC
    let kcMax = roundUpBF16((k + kSteps - 1) / kSteps, 2)
    let ws = GemmWorkspace.forCurrentThread()

    let mPadded = paddedPanelRowsBF16(m)
    if m <= MC && mPadded * (kcMax / 2) * kSteps <= packedAWholeLimitWords {
        // Small M: op(A) packed once, N walked in NCsmall panels whose packed B stays in L2.
        var aWords = 0, pc = 0
        while pc < k { aWords += mPadded * ((min(kcMax, k - pc) + 1) / 2); pc += kcMax }
        ws.reserveWords(aCount: aWords, bCount: kcMax / 2 * roundUpBF16(min(NCsmall, n), NR))
        let packedA = ws.aWords.pointer, packedB = ws.bWords.pointer, tile = ws.bf16Tile
        var offset = 0
        pc = 0
        while pc < k {
            let kc = min(kcMax, k - pc)
            packABF16(transA, mc: m, kc: kc, a: a, lda: lda, row: 0, col: pc, dst: packedA + offset, kernel: kernel)
            offset += mPadded * ((kc + 1) / 2)
            pc += kc
        }
        var jc = 0
        while jc < n {
            let nc = min(NCsmall, n - jc)
            pc = 0
            offset = 0
            while pc < k {
                let kc = min(kcMax, k - pc)
                packBBF16(transB, kc: kc, nc: nc, b: b, ldb: ldb, row: pc, col: jc, dst: packedB, kernel: kernel)
                let next = BF16NextBlock.after(pc: pc, kc: kc, jc: jc, nc: nc, k: k, n: n, kcMax: kcMax, panel: NCsmall,
                                               b: b, ldb: ldb, trans: transB)
                macroKernelBF16(mc: m, nc: nc, kc: kc, alpha: alpha, beta: pc == 0 ? beta : 1,
                                packedA: packedA + offset, packedB: packedB, c: c + jc, ldc: ldc, tile: tile,
                                kernel: kernel, next: next)
                offset += mPadded * ((kc + 1) / 2)
                pc += kc
            }
            jc += nc
        }
        return
    }

    ws.reserveWords(aCount: paddedPanelRowsBF16(min(MC, m)) * (kcMax / 2),
                    bCount: kcMax / 2 * roundUpBF16(min(NC, n), NR))
    let packedA = ws.aWords.pointer, packedB = ws.bWords.pointer, tile = ws.bf16Tile
    var jc = 0
    while jc < n {
        let nc = min(NC, n - jc)
        var pc = 0
        while pc < k {
            let kc = min(kcMax, k - pc)
            let betaStep: Float = pc == 0 ? beta : 1
            packBBF16(transB, kc: kc, nc: nc, b: b, ldb: ldb, row: pc, col: jc, dst: packedB, kernel: kernel)
            var ic = 0
            while ic < m {
                let mc = min(MC, m - ic)
                packABF16(transA, mc: mc, kc: kc, a: a, lda: lda, row: ic, col: pc, dst: packedA, kernel: kernel)
                macroKernelBF16(mc: mc, nc: nc, kc: kc, alpha: alpha, beta: betaStep, packedA: packedA,
                                packedB: packedB, c: c + ic * ldc + jc, ldc: ldc, tile: tile, kernel: kernel)
                ic += mc
            }
            pc += kc
        }
        jc += nc
    }
}

/// The portable yardstick of `gemmBF16`: operands rounded to bf16 (nearest even), each
/// product exact in fp32, summed in fp32 in increasing K, then alpha · sum + beta · C.
/// Same contract as `gemmBF16`; any CPU.
public func gemmBF16Reference(
    _ transA: Transpose, _ transB: Transpose, m: Int, n: Int, k: Int,
    alpha: Float, a: UnsafePointer<Float>, lda: Int,
    b: UnsafePointer<Float>, ldb: Int,
    beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int
) {
    referenceGEMM(transA, transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc,
                  accumulator: Float.self, operand: bf16Rounded)
}

@inline(__always)
private func roundUpBF16(_ x: Int, _ multiple: Int) -> Int { (x + multiple - 1) / multiple * multiple }

/// Rows of the micro-panel that starts with `remaining` rows left: 12, or 8 / 4 for a tail
/// (M = 6 is one 8-row panel, M = 32 is 12 + 12 + 8). A tail of 13-16 rows is 8 + 8 rather
/// than 12 + 4 (M = 16, and 64 = 4·12 + 8 + 8): the 4-row tile has only 8 accumulators, too
/// few chains to cover vdpbf16ps's latency on both FMA pipes, the 8-row tile 16, and both
/// splits issue the same loads and multiply-adds.
@inline(__always)
private func panelRowsBF16(_ remaining: Int) -> Int {
    if remaining > 16 || (remaining > 8 && remaining <= 12) { return MR }
    return remaining > 4 ? 8 : 4
}

/// Rows a packed block of mc rows occupies (only its last panel is padded).
@inline(__always)
private func paddedPanelRowsBF16(_ mc: Int) -> Int {
    var ir = 0, total = 0
    while ir < mc {
        let rows = panelRowsBF16(mc - ir)
        total += rows
        ir += rows
    }
    return total
}

/// The fp32 source block of op(B) that the driver packs after the current one (rows
/// row ..< row + kc, columns col ..< col + nc of op(B)), for the macro-kernel to prefetch
/// while its tiles compute.
struct BF16NextBlock {
    var b: UnsafePointer<Float>, ldb: Int, trans: Transpose
    var row: Int, col: Int, kc: Int, nc: Int

    /// The next block after (row pc, col jc) in the small-M order (K steps inside column
    /// panels of `panel` columns), or nil after the last.
    static func after(pc: Int, kc: Int, jc: Int, nc: Int, k: Int, n: Int, kcMax: Int, panel: Int,
                      b: UnsafePointer<Float>, ldb: Int, trans: Transpose) -> BF16NextBlock? {
        if pc + kc < k {
            return BF16NextBlock(b: b, ldb: ldb, trans: trans, row: pc + kc, col: jc, kc: min(kcMax, k - pc - kc), nc: nc)
        }
        if jc + nc < n {
            return BF16NextBlock(b: b, ldb: ldb, trans: trans, row: 0, col: jc + nc, kc: min(kcMax, k), nc: min(panel, n - jc - nc))
        }
        return nil
    }

    /// The block as stored: `rows` runs of `rowBytes` bytes, `stride` bytes apart, from `start`.
    var stored: (start: UnsafeRawPointer, stride: Int, rowBytes: Int, rows: Int) {
        trans == .none ? (UnsafeRawPointer(b + row * ldb + col), 4 * ldb, 4 * nc, kc)
                       : (UnsafeRawPointer(b + col * ldb + row), 4 * ldb, 4 * kc, nc)
    }
}

/// packedA is an mc×kc block (rows padded per panel), packedB a kc×nc panel (nc padded to
/// NR), c the mc×nc block of C; tile is MR×NR scratch for edge tiles. With `next` (native
/// kernel only) every tile prefetches an equal share of that block's stored rows, whole rows
/// in storage order, so its memory reads overlap the arithmetic.
@inline(__always)
private func macroKernelBF16(
    mc: Int, nc: Int, kc: Int, alpha: Float, beta: Float,
    packedA: UnsafePointer<UInt32>, packedB: UnsafePointer<UInt32>,
    c: UnsafeMutablePointer<Float>, ldc: Int, tile: UnsafeMutablePointer<Float>, kernel: BF16Kernel,
    next: BF16NextBlock? = nil
) {
    let pairs = (kc + 1) / 2
    let prefetch = kernel == .native ? next?.stored : nil
    var tilesPerColumn = 0
    if prefetch != nil {
        var ir = 0
        while ir < mc { ir += panelRowsBF16(mc - ir); tilesPerColumn += 1 }
    }
    let tiles = tilesPerColumn * ((nc + NR - 1) / NR)
    let prefetchC = kernel == .native && prefetch == nil
        && pairs <= (beta != 0 ? prefetchCMaximumPairs : prefetchCMaximumPairsWriting)
    var u = 0
    var jr = 0
    while jr < nc {
        let nr = min(NR, nc - jr)
        let bPanel = packedB + jr * pairs
        var ir = 0
        while ir < mc {
            let rows = panelRowsBF16(mc - ir)
            let mr = min(rows, mc - ir)
            let aPanel = packedA + ir * pairs
            let cTile = c + ir * ldc + jr
            let full = mr == rows && nr == NR
            if let p = prefetch {
                let r0 = u * p.rows / tiles, r1 = (u + 1) * p.rows / tiles
                u += 1
                cnn_bf16_tile_prefetch(Int32(rows), pairs, aPanel, bPanel, full ? cTile : tile, full ? ldc : NR,
                                       alpha, full ? beta : 0, p.start + r0 * p.stride, p.stride, p.rowBytes, r1 - r0)
                if !full { storeEdgeTile(tile, to: cTile, ldc: ldc, mr: mr, nr: nr, beta: beta) }
            } else if prefetchC {
                // The next tile's rows of C (read for beta, or fetched for the stores): a short K
                // loop cannot hide their latency, and C blocks of many columns come from L3.
                let nextIr = ir + rows < mc ? ir + rows : 0, nextJr = ir + rows < mc ? jr : jr + NR
                let nextRows = nextJr < nc ? min(panelRowsBF16(mc - nextIr), mc - nextIr) : 0
                cnn_bf16_tile_prefetch(Int32(rows), pairs, aPanel, bPanel, full ? cTile : tile, full ? ldc : NR,
                                       alpha, full ? beta : 0, c + nextIr * ldc + nextJr, 4 * ldc,
                                       4 * min(NR, max(0, nc - nextJr)), nextRows)
                if !full { storeEdgeTile(tile, to: cTile, ldc: ldc, mr: mr, nr: nr, beta: beta) }
            } else if full {
                bf16Tile(kernel, rows: rows, pairs: pairs, a: aPanel, b: bPanel, c: cTile, ldc: ldc,
                         alpha: alpha, beta: beta)
            } else {
                // Zero-padded panels give a full tile; only its valid corner reaches C.
                bf16Tile(kernel, rows: rows, pairs: pairs, a: aPanel, b: bPanel, c: tile, ldc: NR,
                         alpha: alpha, beta: 0)
                storeEdgeTile(tile, to: cTile, ldc: ldc, mr: mr, nr: nr, beta: beta)
            }
            ir += rows
        }
        jr += NR
    }
}

/// The valid mr × nr corner of an edge tile (computed with beta 0 into NR-wide scratch) into C.
@inline(__always)
private func storeEdgeTile(_ tile: UnsafePointer<Float>, to cTile: UnsafeMutablePointer<Float>, ldc: Int,
                           mr: Int, nr: Int, beta: Float) {
    for i in 0..<mr {
        let src = tile + i * NR, dst = cTile + i * ldc
        if beta == 0 {
            for j in 0..<nr { dst[j] = src[j] }
        } else {
            for j in 0..<nr { dst[j] = src[j] + beta * dst[j] }
        }
    }
}

/// One rows × NR tile (the cnn_bf16_tile contract).
@inline(__always)
private func bf16Tile(_ kernel: BF16Kernel, rows: Int, pairs: Int, a: UnsafePointer<UInt32>, b: UnsafePointer<UInt32>,
                      c: UnsafeMutablePointer<Float>, ldc: Int, alpha: Float, beta: Float) {
    switch kernel {
    case .native:
        cnn_bf16_tile(Int32(rows), pairs, a, b, c, ldc, alpha, beta)
    case .portable:
        portableBF16Tile(rows: rows, pairs: pairs, a: a, b: b, c: c, ldc: ldc, alpha: alpha, beta: beta)
    }
}

/// cnn_bf16_tile in Swift, in vdpbf16ps's order: per pair, acc += a_hi·b_hi, then
/// acc += a_lo·b_lo (each product exact in fp32, each sum rounded), then
/// C = alpha·acc, or fma(beta, C, alpha·acc).
private func portableBF16Tile(rows: Int, pairs: Int, a: UnsafePointer<UInt32>, b: UnsafePointer<UInt32>,
                              c: UnsafeMutablePointer<Float>, ldc: Int, alpha: Float, beta: Float) {
    for i in 0..<rows {
        for j in 0..<NR {
            var acc: Float = 0
            for q in 0..<pairs {
                let aw = a[q * rows + i], bw = b[q * NR + j]
                acc += Float(bitPattern: aw & 0xFFFF_0000) * Float(bitPattern: bw & 0xFFFF_0000)
                acc += Float(bitPattern: aw << 16) * Float(bitPattern: bw << 16)
            }
            let scaled = alpha * acc
            c[i * ldc + j] = beta == 0 ? scaled : scaled.addingProduct(beta, c[i * ldc + j])
        }
    }
}

/// Packs op(A)[row ..< row + mc, col ..< col + kc] into bf16 micro-panels of 12, 8 or 4 rows
/// (with the native kernel by cnn_bf16_pack_a / cnn_bf16_pack_at).
private func packABF16(_ trans: Transpose, mc: Int, kc: Int, a: UnsafePointer<Float>, lda: Int,
                       row: Int, col: Int, dst: UnsafeMutablePointer<UInt32>, kernel: BF16Kernel) {
    let pairs = (kc + 1) / 2
    // Element (i, p) of the block is src[i·rowStride + p·colStride].
    let src = trans == .none ? a + row * lda + col : a + col * lda + row
    let rowStride = trans == .none ? lda : 1, colStride = trans == .none ? 1 : lda
    var ir = 0
    var out = dst
    while ir < mc {
        let rows = panelRowsBF16(mc - ir)
        let mr = min(rows, mc - ir)
        if kernel == .native {
            if trans == .none {
                cnn_bf16_pack_a(Int32(rows), Int32(mr), kc, src + ir * rowStride, lda, out)
            } else {
                cnn_bf16_pack_at(Int32(rows), Int32(mr), kc, src + ir * rowStride, lda, out)
            }
            out += rows * pairs
            ir += rows
            continue
        }
        for i in 0..<rows {
            guard i < mr else {
                for q in 0..<pairs { out[q * rows + i] = 0 }
                continue
            }
            let r = src + (ir + i) * rowStride
            for q in 0..<pairs {
                let p = 2 * q
                out[q * rows + i] = bf16Pair(r[p * colStride], p + 1 < kc ? r[(p + 1) * colStride] : 0)
            }
        }
        out += rows * pairs
        ir += rows
    }
}

/// Packs op(B)[row ..< row + kc, col ..< col + nc] into bf16 micro-panels of NR columns.
/// With the native kernel the whole panels are packed by cnn_bf16_pack_b / cnn_bf16_pack_bt.
private func packBBF16(_ trans: Transpose, kc: Int, nc: Int, b: UnsafePointer<Float>, ldb: Int,
                       row: Int, col: Int, dst: UnsafeMutablePointer<UInt32>, kernel: BF16Kernel) {
    let pairs = (kc + 1) / 2
    let fullPanels = nc / NR
    var s0 = 0
    if kernel == .native {
        if trans == .none {
            cnn_bf16_pack_b(kc, fullPanels, b + row * ldb + col, ldb, dst)
        } else {
            cnn_bf16_pack_bt(kc, fullPanels, b + col * ldb + row, ldb, dst)
        }
        s0 = fullPanels
    } else if trans == .none {
        // B as stored: rows 2q and 2q + 1 are contiguous runs, combined 16 columns at a time.
        // Chunks of a few micro-panels: each source row is read as one run, few output streams.
        let chunk = 4
        while s0 < fullPanels {
            let s1 = min(s0 + chunk, fullPanels)
            for q in 0..<pairs {
                let even = UnsafeRawPointer(b + (row + 2 * q) * ldb + col)
                let odd = 2 * q + 1 < kc ? UnsafeRawPointer(b + (row + 2 * q + 1) * ldb + col) : nil
                for s in s0..<s1 {
                    let o = UnsafeMutableRawPointer(dst + s * pairs * NR + q * NR)
                    for h in 0..<(NR / 16) {
                        let offset = 4 * (s * NR + 16 * h)
                        let lo = bf16High(even.loadUnaligned(fromByteOffset: offset, as: SIMD16<Float>.self)) &>> 16
                        let hi = odd.map { bf16High($0.loadUnaligned(fromByteOffset: offset, as: SIMD16<Float>.self)) }
                            ?? SIMD16<UInt32>()
                        o.storeBytes(of: lo | hi, toByteOffset: 64 * h, as: SIMD16<UInt32>.self)
                    }
                }
            }
            s0 = s1
        }
    }
    // Bᵀ (each column of op(B) a contiguous row of the stored matrix), and the ragged last panel.
    for s in s0..<((nc + NR - 1) / NR) {
        let out = dst + s * pairs * NR
        let nr = min(NR, nc - s * NR)
        for j in 0..<NR {
            guard j < nr else {
                for q in 0..<pairs { out[q * NR + j] = 0 }
                continue
            }
            let cj = col + s * NR + j
            if trans == .none {
                let p0 = b + row * ldb + cj
                for q in 0..<pairs {
                    out[q * NR + j] = bf16Pair(p0[2 * q * ldb], 2 * q + 1 < kc ? p0[(2 * q + 1) * ldb] : 0)
                }
            } else {
                let r = b + cj * ldb + row
                for q in 0..<pairs {
                    out[q * NR + j] = bf16Pair(r[2 * q], 2 * q + 1 < kc ? r[2 * q + 1] : 0)
                }
            }
        }
    }
}

// MARK: - Prepacked A, B packed by the caller (convolutions)

/// op(A) rounded to bf16 and packed once into micro-panels, for `gemmBF16PackedA`: a
/// convolution packs its weights once per pass. Layout: for each K step (equal even steps of
/// at most KC) and each block of at most MC rows, one packed block; `offsets[step · rowBlocks
/// + block]` says where it starts.
public final class PackedGemmABF16 {
    public private(set) var m = 0
    public private(set) var k = 0
    var kcMax = 0
    var rowBlocks = 0
    var storage = GrowableBuffer<UInt32>()
    var offsets: [Int] = []
    private(set) var kernel = BF16Kernel.native

    public init() {}

    /// Packs op(A) (m×k; A stored m×k with lda ≥ k, or k×m with lda ≥ m when transposed) for
    /// products run with `kernel`.
    public func pack(_ trans: Transpose, m: Int, k: Int, a: UnsafePointer<Float>, lda: Int,
                     kernel: BF16Kernel = .native) {
        packBlocks(m: m, k: k, kernel: kernel) { ic, pc, mc, kc, dst in
            packABF16(trans, mc: mc, kc: kc, a: a, lda: lda, row: ic, col: pc, dst: dst, kernel: kernel)
        }
    }

    /// `pack(.none, …)` of A already rounded: `a` holds the bf16 bits of an m×k matrix (row
    /// stride lda). The native kernel only (the packed layout is the same).
    public func packBits(m: Int, k: Int, a: UnsafePointer<UInt16>, lda: Int) {
        packBlocks(m: m, k: k, kernel: .native) { ic, pc, mc, kc, dst in
            var ir = 0, out = dst
            while ir < mc {
                let rows = panelRowsBF16(mc - ir), mr = min(rows, mc - ir)
                cnn_bf16_pack_a_h(Int32(rows), Int32(mr), kc, a + (ic + ir) * lda + pc, lda, out)
                out += rows * ((kc + 1) / 2)
                ir += rows
            }
        }
    }

    /// Lays out the packed blocks of an m×k operand (K steps of equal even depth, MC-row blocks)
    /// and has `packBlock(row, col, mc, kc, dst)` fill each.
    private func packBlocks(m: Int, k: Int, kernel: BF16Kernel,
                            _ packBlock: (Int, Int, Int, Int, UnsafeMutablePointer<UInt32>) -> Void) {
        precondition(m > 0 && k > 0, "PackedGemmABF16: empty operand \(m)×\(k)")
        self.m = m
        self.k = k
        self.kernel = kernel
        let kSteps = (k + KC - 1) / KC
        kcMax = roundUpBF16((k + kSteps - 1) / kSteps, 2)
        rowBlocks = (m + MC - 1) / MC
        storage.reserve(max(1, (m + rowBlocks * MR) * (kcMax / 2) * kSteps))
        offsets.removeAll(keepingCapacity: true)
        var offset = 0, pc = 0
        while pc < k {
            let kc = min(kcMax, k - pc)
            var ic = 0
            while ic < m {
                let mc = min(MC, m - ic)
                offsets.append(offset)
                packBlock(ic, pc, mc, kc, storage.pointer + offset)
                offset += paddedPanelRowsBF16(mc) * ((kc + 1) / 2)
                ic += mc
            }
            pc += kc
        }
    }
}

/// C (M×N) = bf16(A)·bf16(B) + beta·C (fp32 accumulation) with A prepacked and B produced by
/// `packB` one K step × column panel at a time as fp32 micro-panels of GemmBlocking.NR
/// columns (the `GemmPanelPacker` contract of `sgemmPackedA`, so the convolution packers
/// serve both precisions); they are rounded to bf16 pairs here. beta == 0 overwrites C
/// without reading it. Threads split the columns as `sgemmPackedA` (same bits for any T).
///
/// `packBF16`, when given, may write a bf16 micro-panel (NR columns of `cnn_bf16_tile`'s
/// layout, op(B) rows row ..< row + kc, columns col ..< col + width, width ≤ NR, the columns
/// past width zero) itself and return true, skipping the fp32 panels (with the native kernel
/// only; it must give the same bits); false falls back to `packB`.
public func gemmBF16PackedA(_ a: PackedGemmABF16, n: Int, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int,
                            packBF16: GemmBF16PanelPacker? = nil, packB: GemmPanelPacker) {
    precondition(a.kernel == .portable || CPUFeatures.current.bf16GEMM,
                 "gemmBF16PackedA: this CPU lacks \(CPUFeatures.current.missingBF16Features.joined(separator: ", "))")
    if n == 0 { return }
    let threads = availableComputeThreads()
    let units = (n + NR - 1) / NR
    if threads > 1 && units > 1 && a.m * n * a.k >= parallelGemmMinimumMACs {
        let tasks = min(threads, units)
        parallelTasks(tasks) { t in
            let r = taskRange(t, of: units, tasks: tasks)
            let j0 = r.lowerBound * NR, j1 = min(r.upperBound * NR, n)
            gemmBF16PackedAColumns(a, j0: j0, n: j1 - j0, beta: beta, c: c + j0, ldc: ldc, packBF16: packBF16, packB: packB)
        }
        return
    }
    gemmBF16PackedAColumns(a, j0: 0, n: n, beta: beta, c: c, ldc: ldc, packBF16: packBF16, packB: packB)
}

/// Writes one bf16 B micro-panel (row, kc, col, width, dst) of `gemmBF16PackedA`, or returns false.
public typealias GemmBF16PanelPacker = (_ row: Int, _ kc: Int, _ col: Int, _ width: Int,
                                        _ dst: UnsafeMutablePointer<UInt32>) -> Bool

/// Columns j0 ..< j0 + n of `gemmBF16PackedA` on this thread (j0 a multiple of NR).
private func gemmBF16PackedAColumns(_ a: PackedGemmABF16, j0: Int, n: Int, beta: Float, c: UnsafeMutablePointer<Float>,
                                    ldc: Int, packBF16: GemmBF16PanelPacker?, packB: GemmPanelPacker) {
    let fp32NR = GemmBlocking.NR
    let panelColumns = a.m <= MC ? NCsmall : NC
    let ws = GemmWorkspace.forCurrentThread()
    let widest = roundUpBF16(min(panelColumns, n), NR)
    ws.reserve(aCount: 0, bCount: a.kcMax * NR)
    ws.reserveWords(aCount: 0, bCount: a.kcMax / 2 * widest)
    let fp32Panel = ws.b, packedB = ws.bWords.pointer, tile = ws.bf16Tile
    var jc = 0
    while jc < n {
        let nc = min(panelColumns, n - jc)
        var pc = 0, step = 0
        while pc < a.k {
            let kc = min(a.kcMax, a.k - pc)
            // One bf16 micro-panel (NR columns) at a time: its fp32 panels stay in L1 between
            // the caller's packer writing them and their conversion.
            var jt = 0
            while jt < nc {
                let width = min(NR, nc - jt)
                let dst = packedB + jt * ((kc + 1) / 2)
                if a.kernel == .native, let direct = packBF16, direct(pc, kc, j0 + jc + jt, width, dst) {
                    jt += NR
                    continue
                }
                packB(pc, kc, j0 + jc + jt, width, fp32Panel)
                let panels16 = (width + fp32NR - 1) / fp32NR
                if a.kernel == .native && fp32NR == 16 {
                    cnn_bf16_from_fp32_panels(kc, panels16, fp32Panel, dst)
                } else {
                    bf16FromFP32Panels(kc: kc, panels16: panels16, src: fp32Panel, dst: dst)
                }
                jt += NR
            }
            var ic = 0, block = 0
            while ic < a.m {
                let mc = min(MC, a.m - ic)
                macroKernelBF16(mc: mc, nc: nc, kc: kc, alpha: 1, beta: pc == 0 ? beta : 1,
                                packedA: a.storage.pointer + a.offsets[step * a.rowBlocks + block], packedB: packedB,
                                c: c + ic * ldc + jc, ldc: ldc, tile: tile, kernel: a.kernel)
                ic += mc
                block += 1
            }
            pc += kc
            step += 1
        }
        jc += nc
    }
}

/// cnn_bf16_from_fp32_panels in Swift, for any fp32 panel width (the portable kernel's path,
/// and the portable build's 8-column panels).
private func bf16FromFP32Panels(kc: Int, panels16 panels: Int, src: UnsafePointer<Float>,
                                dst: UnsafeMutablePointer<UInt32>) {
    let pairs = (kc + 1) / 2, half = GemmBlocking.NR
    let columns = panels * half
    for t in 0..<((columns + NR - 1) / NR) {
        let out = dst + t * pairs * NR
        for j in 0..<NR {
            let global = t * NR + j
            guard global < columns else {
                for q in 0..<pairs { out[q * NR + j] = 0 }
                continue
            }
            let panel = src + (global / half) * half * kc, col = global % half
            for q in 0..<pairs {
                out[q * NR + j] = bf16Pair(panel[2 * q * half + col], 2 * q + 1 < kc ? panel[(2 * q + 1) * half + col] : 0)
            }
        }
    }
}
