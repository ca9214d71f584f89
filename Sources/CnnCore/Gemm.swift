// Packed single-precision GEMM in the BLIS layering.
//
//   C (M×N) = alpha · op(A) (M×K) · op(B) (K×N) + beta · C        all row-major
//
// Loops, outermost first (names as in BLIS):
//   jc  over N in steps of NC   - one KC×NC panel of op(B) is packed per (jc, pc)
//   pc  over K in steps of KC   - beta applies on the first pc step only, later steps add
//   ic  over M in steps of MC   - one MC×KC block of op(A) is packed per (jc, pc, ic)
//   jr  over NC in steps of NR  - one packed B micro-panel (KC×NR) stays in L1
//   ir  over MC in steps of MR  - micro-kernel on one MR×NR tile of C
//
// Layout assumptions:
// - Packed A (MC×KC block) is a sequence of MR-row micro-panels; micro-panel r holds
//   op(A)[r·MR + i, p] at index p·MR + i (k-major), rows past M are zero. A tail of 8
//   rows, or of at most 4, uses 4-row panels (and a 4×NR kernel) instead of padded MR-row
//   ones; see panelRows.
// - Packed B (KC×NC panel) is a sequence of NR-column micro-panels; micro-panel s holds
//   op(B)[p, s·NR + j] at index p·NR + j, columns past N are zero.
// - Both packed buffers are 64-byte aligned, so every NR-wide row of a B micro-panel is
//   aligned for vector loads.
// - Transposition is absorbed by the packing routines; there is one micro-kernel.
// - Edge tiles (fewer than MR rows or NR columns of C) run the full kernel on zero-padded
//   panels into a temporary MR×NR tile, then copy the valid part into C.
// - beta == 0 never reads C, so C may hold NaN or garbage.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CBF16

/// The vector type of the micro-kernel: one row of a C tile is two of these.
#if CNN_PORTABLE
typealias GemmVector = SIMD4<Float>
#else
typealias GemmVector = SIMD8<Float>
#endif

/// Block sizes of `sgemm`, BLIS names. Chosen for AMD EPYC Zen 3 (AVX2/FMA, 32 KiB L1d,
/// 512 KiB L2 per core, shared L3) and checked against single-threaded OpenBLAS with
/// `cnn-dist bench gemm`; within ±20 % of these values the measured differences were inside
/// the noise (±4 %) of the shared machine.
public enum GemmBlocking {
    /// Rows of the micro-tile. 6 rows × 2 vectors = 12 accumulators, plus 2 B vectors and one
    /// broadcast A value: 15 of the 16 vector registers of AVX2 (and of SSE2 in the portable
    /// build), and more independent FMAs than Zen 3 has in flight (4-cycle latency × 2 pipes).
    public static let MR = 6
    /// Columns of the micro-tile: two vectors (16 floats with AVX2, 8 in the portable build).
    public static let NR = 2 * GemmVector.scalarCount
    /// Depth of a packed panel. A KC×NR B micro-panel (24 KiB) stays in the 32 KiB L1 while
    /// the kernel streams MR×KC A micro-panels past it; K ≤ 384 (most convolutions here) is
    /// one pass over C. K is split into equal steps of at most KC.
    public static let KC = 384
    /// Rows of the packed A block: MC×KC floats (216 KiB) sit in the 512 KiB L2 beside the
    /// C and B traffic.
    public static let MC = 144
    /// Columns of the packed B panel: KC×NC floats (3 MiB) live in L3. 4080 measured the same;
    /// the smaller panel leaves more of the shared L3 to the other ranks.
    public static let NC = 2048
    /// Columns of the packed B panel when all of op(A) fits in L2 (M ≤ MC and at most 48K
    /// floats, e.g. every convolution of the reference models): op(A) is packed once, and a
    /// narrow B panel (KC×NCsmall, 192 KiB) is consumed while it is still in L2.
    public static let NCsmall = 128
}

/// Smallest product (M·N·K multiply-accumulates) that `sgemm` splits over threads:
/// about 20 µs of work, several times the cost of waking the pool.
public let parallelGemmMinimumMACs = 1 << 20

/// Largest op(A), in floats, that the small-M path packs whole (192 KiB).
private let packedAWholeLimit = 48 * 1024

private let MR = GemmBlocking.MR
private let NR = GemmBlocking.NR
private let KC = GemmBlocking.KC
private let MC = GemmBlocking.MC
private let NC = GemmBlocking.NC
private let NCsmall = GemmBlocking.NCsmall
private let L = GemmVector.scalarCount

/// C (M×N) = alpha · op(A) (M×K) · op(B) (K×N) + beta · C, all row-major.
/// op(A) is A (M×K, lda ≥ K) or Aᵀ where A is stored K×M (lda ≥ M);
/// op(B) is B (K×N, ldb ≥ N) or Bᵀ where B is stored N×K (ldb ≥ K).
/// beta == 0 overwrites C without reading it (C may hold NaN).
///
/// Thread-safe: each calling thread packs into its own cached workspace, which grows to
/// the largest problem seen and is then reused (no allocation in the steady state).
/// With `ComputeThreads.count` = T > 1 (and not already inside a split), products of at
/// least `parallelGemmMinimumMACs` are split into T column ranges of C (multiples of NR),
/// or row ranges (multiples of MR) when C is taller than wide; every element of C still
/// gets the same K loop as single-threaded, so the result does not depend on T.
public func sgemm(
    _ transA: Transpose, _ transB: Transpose, m: Int, n: Int, k: Int,
    alpha: Float, a: UnsafePointer<Float>, lda: Int,
    b: UnsafePointer<Float>, ldb: Int,
    beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int
) {
    precondition(m >= 0 && n >= 0 && k >= 0, "sgemm: negative dimension")
    if m == 0 || n == 0 { return }
    precondition(ldc >= n, "sgemm: ldc \(ldc) < n \(n)")
    precondition(k == 0 || lda >= (transA == .none ? k : m), "sgemm: lda \(lda) too small for op(A) \(m)×\(k)")
    precondition(k == 0 || ldb >= (transB == .none ? n : k), "sgemm: ldb \(ldb) too small for op(B) \(k)×\(n)")
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
                    sgemm(transA, transB, m: m, n: j1 - j0, k: k, alpha: alpha, a: a, lda: lda,
                          b: transB == .none ? b + j0 : b + j0 * ldb, ldb: ldb, beta: beta, c: c + j0, ldc: ldc)
                } else {
                    let i0 = r.lowerBound * MR, i1 = min(r.upperBound * MR, m)
                    sgemm(transA, transB, m: i1 - i0, n: n, k: k, alpha: alpha,
                          a: transA == .none ? a + i0 * lda : a + i0, lda: lda, b: b, ldb: ldb,
                          beta: beta, c: c + i0 * ldc, ldc: ldc)
                }
            }
            return
        }
    }

    // K is split into equal steps of at most KC, so no step is a thin remainder.
    let kSteps = (k + KC - 1) / KC
    let kcMax = (k + kSteps - 1) / kSteps
    let ws = GemmWorkspace.forCurrentThread()

    if m <= MC && roundUp(m, MR) * k <= packedAWholeLimit {
        // Small M (every convolution here): pack all of op(A) once, then walk N in narrow
        // panels whose packed B (kcMax×NCsmall) stays in L2 between packing and use.
        let mPadded = roundUp(m, MR)
        ws.reserve(aCount: mPadded * k, bCount: kcMax * roundUp(min(NCsmall, n), NR))
        let packedA = ws.a, packedB = ws.b, tile = ws.tile
        var pc = 0
        while pc < k {
            let kc = min(kcMax, k - pc)
            packA(transA, mc: m, kc: kc, a: a, lda: lda, row: 0, col: pc, dst: packedA + mPadded * pc)
            pc += kc
        }
        var jc = 0
        while jc < n {
            let nc = min(NCsmall, n - jc)
            pc = 0
            while pc < k {
                let kc = min(kcMax, k - pc)
                packB(transB, kc: kc, nc: nc, b: b, ldb: ldb, row: pc, col: jc, dst: packedB)
                macroKernel(mc: m, nc: nc, kc: kc, alpha: alpha, beta: pc == 0 ? beta : 1,
                            packedA: packedA + mPadded * pc, packedB: packedB,
                            c: c + jc, ldc: ldc, tile: tile)
                pc += kc
            }
            jc += nc
        }
        return
    }

    ws.reserve(aCount: roundUp(min(MC, m), MR) * kcMax, bCount: kcMax * roundUp(min(NC, n), NR))
    let packedA = ws.a, packedB = ws.b, tile = ws.tile
    var jc = 0
    while jc < n {
        let nc = min(NC, n - jc)
        var pc = 0
        while pc < k {
            let kc = min(kcMax, k - pc)
            // Later K steps add onto what the first one wrote.
            let betaStep: Float = pc == 0 ? beta : 1
            packB(transB, kc: kc, nc: nc, b: b, ldb: ldb, row: pc, col: jc, dst: packedB)
            var ic = 0
            while ic < m {
                let mc = min(MC, m - ic)
                packA(transA, mc: mc, kc: kc, a: a, lda: lda, row: ic, col: pc, dst: packedA)
                macroKernel(mc: mc, nc: nc, kc: kc, alpha: alpha, beta: betaStep,
                            packedA: packedA, packedB: packedB,
                            c: c + ic * ldc + jc, ldc: ldc, tile: tile)
                ic += mc
            }
            pc += kc
        }
        jc += nc
    }
}

// MARK: - Prepacked A, B packed by the caller

/// op(A) packed once into micro-panels, for products whose B operand the caller produces
/// panel by panel (`sgemmPackedA`): a convolution packs its weights once per pass and
/// builds the B panels straight from the input, so no im2col matrix is ever stored.
/// Layout: for each K step (equal steps of at most KC) and each block of at most MC rows,
/// one `packABlock` block; `offsets[step · rowBlocks + block]` says where it starts.
public final class PackedGemmA {
    public private(set) var m = 0
    public private(set) var k = 0
    var kcMax = 0
    var rowBlocks = 0
    var storage = GrowableBuffer<Float>()
    var offsets: [Int] = []

    public init() {}

    /// Packs op(A) (m×k; A stored m×k with lda ≥ k, or k×m with lda ≥ m when transposed), in
    /// K steps of at most `depth` (KC, or up to `sgemmTilesDepthLimit` for `sgemmTiles`).
    public func pack(_ trans: Transpose, m: Int, k: Int, a: UnsafePointer<Float>, lda: Int, depth: Int = GemmBlocking.KC) {
        precondition(m > 0 && k > 0, "PackedGemmA: empty operand \(m)×\(k)")
        packBlocks(m: m, k: k, depth: depth) { mc, kc, row, col, dst in
            packA(trans, mc: mc, kc: kc, a: a, lda: lda, row: row, col: col, dst: dst)
        }
    }

    /// Packs the flipped kernel a convolution's backward-data runs as a forward pass, straight
    /// from the convolution's weights: A (m × k, m = Cg, k = Kg·taps) is
    /// A[c][q·taps + t] = w[(q·m + c)·taps + taps − 1 − t], w one group's Kg × Cg × taps
    /// weights. The same bits `pack(.none, …)` gives on `flipWeightsForBackwardData`'s copy,
    /// in one pass over w instead of a copy and a pack of the copy.
    public func packFlippedKernel(m: Int, k: Int, taps: Int, w: UnsafePointer<Float>, depth: Int = GemmBlocking.KC) {
        precondition(m > 0 && k > 0 && taps > 0 && k % taps == 0, "PackedGemmA: flipped kernel \(m)×\(k), \(taps) taps")
        packBlocks(m: m, k: k, depth: depth) { mc, kc, row, col, dst in
            packFlippedBlock(mc: mc, kc: kc, w: w, channels: m, taps: taps, row: row, col: col, dst: dst)
        }
    }

    /// The blocking both packers share: K steps of equal depth, MC-row blocks within each,
    /// every block padded to whole MR-row panels; `packBlock(mc, kc, row, col, dst)` fills one.
    private func packBlocks(m: Int, k: Int, depth: Int,
                            _ packBlock: (Int, Int, Int, Int, UnsafeMutablePointer<Float>) -> Void) {
        self.m = m
        self.k = k
        let kSteps = (k + depth - 1) / depth
        kcMax = (k + kSteps - 1) / kSteps
        rowBlocks = (m + MC - 1) / MC
        // Every block pads its rows to at most MR more than it holds.
        storage.reserve((m + rowBlocks * MR) * k)
        offsets.removeAll(keepingCapacity: true)
        var offset = 0, pc = 0
        while pc < k {
            let kc = min(kcMax, k - pc)
            var ic = 0
            while ic < m {
                let mc = min(MC, m - ic)
                offsets.append(offset)
                packBlock(mc, kc, ic, pc, storage.pointer + offset)
                offset += paddedPanelRows(mc) * kc
                ic += mc
            }
            pc += kc
        }
    }
}

/// One `packABlock` block (rows row ..< row + mc, columns col ..< col + kc) of the flipped
/// kernel A[c][q·taps + t] = w[(q·channels + c)·taps + taps − 1 − t]. Column runs of one q
/// outermost: each reads mc·taps contiguous floats of w (one sequential stream; panel by
/// panel instead, the block's q rows, channels·taps floats apart, were dozens of streams).
private func packFlippedBlock(mc: Int, kc: Int, w: UnsafePointer<Float>, channels: Int, taps: Int,
                              row: Int, col: Int, dst: UnsafeMutablePointer<Float>) {
    var q = col / taps, t = col - q * taps, p = 0
    while p < kc {
        let run = min(taps - t, kc - p)
        // Column p + j reads tap taps − 1 − (t + j) of q's rows.
        let src = w + (q * channels + row) * taps + taps - 1 - t
        var ir = 0
        while ir < mc {
            let rows = panelRows(mc - ir)
            let mr = min(rows, mc - ir)
            let panel = src + ir * taps, out = dst + ir * kc + p * rows
            if mr == MR {
                packFlippedColumns(rows: MR, run: run, src: panel, taps: taps, out: out)
            } else if mr == tailMR && rows == tailMR {
                packFlippedColumns(rows: tailMR, run: run, src: panel, taps: taps, out: out)
            } else {
                for j in 0..<run {
                    let o = out + j * rows, s = panel - j
                    for i in 0..<mr { o[i] = s[i * taps] }
                    for i in mr..<rows { o[i] = 0 }
                }
            }
            ir += rows
        }
        p += run
        t = 0
        q += 1
    }
}

/// `run` packed columns of a whole panel (rows a constant after inlining: the copies unrolled):
/// out[j·rows + i] = src[i·taps − j].
@inline(__always)
private func packFlippedColumns(rows: Int, run: Int, src: UnsafePointer<Float>, taps: Int,
                                out: UnsafeMutablePointer<Float>) {
    for j in 0..<run {
        let o = out + j * rows, s = src - j
        for i in 0..<rows { o[i] = s[i * taps] }
    }
}

/// Rows a packed block of mc rows occupies (its last panel zero-padded to 4 or MR rows).
@inline(__always)
private func paddedPanelRows(_ mc: Int) -> Int {
    var ir = 0, total = 0
    while ir < mc {
        let rows = panelRows(mc - ir)
        total += rows
        ir += rows
    }
    return total
}

/// Supplies rows row ..< row + kc and columns col ..< col + nc of B, written into `dst` as
/// NR-column micro-panels: element (p, j) at dst[(j / NR)·NR·kc + p·NR + j % NR], and the
/// columns nc ..< roundUp(nc, NR) of the last micro-panel zero.
public typealias GemmPanelPacker = (_ row: Int, _ kc: Int, _ col: Int, _ nc: Int,
                                    _ dst: UnsafeMutablePointer<Float>) -> Void

/// Columns of the B panels `sgemmPackedA` asks for at once (a multiple of NR).
public func packedGemmPanelColumns(m: Int, k: Int) -> Int {
    m <= MC && roundUp(m, MR) * k <= packedAWholeLimit ? NCsmall : NC
}

/// C (M×N) = A·B + beta·C with A prepacked and B produced by `packB` one KC×NC panel at
/// a time (NC = `packedGemmPanelColumns`). beta == 0 overwrites C without reading it.
/// With `ComputeThreads.count` = T > 1 (outside a split) and enough work, the columns are
/// split into T ranges of whole micro-panels, each packed and multiplied by its own
/// thread; every element still gets the same K loop, so the result does not depend on T.
public func sgemmPackedA(_ a: PackedGemmA, n: Int, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int,
                         packB: GemmPanelPacker) {
    forEachColumnRange(a, n: n) { j0, count in
        sgemmPackedAColumns(a, j0: j0, n: count, beta: beta, c: c + j0, ldc: ldc, packB: packB)
    }
}

/// C (M×N) = A·B on this thread, A prepacked, B row-major (K×N, ldb ≥ N), one row block of A
/// (≤ MC rows) at a time through all its K steps, then `rowsDone(ic, mc)` once rows
/// ic ..< ic + mc of C are final. All of B is packed first (K × N floats), so a caller can
/// consume each finished row block while it is still in cache instead of after the whole
/// product (the stride-2 backward-data gathers dx from dcol rows this way). Every element gets
/// the K steps of `sgemmPackedA` in the same order: the same bits.
public func sgemmPackedARowBlocks(_ a: PackedGemmA, n: Int, b: UnsafePointer<Float>, ldb: Int,
                           c: UnsafeMutablePointer<Float>, ldc: Int, rowsDone: (_ ic: Int, _ mc: Int) -> Void) {
    precondition(ldb >= n && ldc >= n, "sgemmPackedARowBlocks: ldb \(ldb) / ldc \(ldc) < n \(n)")
    if n == 0 { return }
    let nPadded = roundUp(n, NR)
    let ws = GemmWorkspace.forCurrentThread()
    ws.reserve(aCount: 0, bCount: a.k * nPadded)
    let packedB = ws.b, tile = ws.tile
    var pc = 0
    while pc < a.k {
        let kc = min(a.kcMax, a.k - pc)
        packBPanel(kc: kc, nc: n, src: b + pc * ldb, rowStride: ldb, colStride: 1, dst: packedB + pc * nPadded)
        pc += kc
    }
    let base = a.storage.pointer
    var ic = 0, block = 0
    while ic < a.m {
        let mc = min(MC, a.m - ic)
        var step = 0
        pc = 0
        while pc < a.k {
            let kc = min(a.kcMax, a.k - pc)
            macroKernel(mc: mc, nc: n, kc: kc, alpha: 1, beta: pc == 0 ? 0 : 1,
                        packedA: base + a.offsets[step * a.rowBlocks + block], packedB: packedB + pc * nPadded,
                        c: c + ic * ldc, ldc: ldc, tile: tile)
            pc += kc
            step += 1
        }
        rowsDone(ic, mc)
        ic += mc
        block += 1
    }
}

/// Calls body(j0, count) for the column ranges of a product with prepacked A: all N
/// columns on this thread, or with `ComputeThreads.count` = T > 1 (outside a split) and
/// enough work, T ranges of whole micro-panels on T threads.
private func forEachColumnRange(_ a: PackedGemmA, n: Int, _ body: (_ j0: Int, _ count: Int) -> Void) {
    if n == 0 { return }
    let threads = availableComputeThreads()
    let units = (n + NR - 1) / NR
    if threads > 1 && units > 1 && a.m * n * a.k >= parallelGemmMinimumMACs {
        let tasks = min(threads, units)
        parallelTasks(tasks) { t in
            let r = taskRange(t, of: units, tasks: tasks)
            let j0 = r.lowerBound * NR, j1 = min(r.upperBound * NR, n)
            body(j0, j1 - j0)
        }
        return
    }
    body(0, n)
}

/// Calls body(pc, kc, ic, mc, block) for each K step and, inside it, each packed block
/// of at most MC rows of a prepacked A, in the order the blocks are stored.
@inline(__always)
private func forEachPackedBlock(_ a: PackedGemmA,
                                _ body: (_ pc: Int, _ kc: Int, _ ic: Int, _ mc: Int, _ block: UnsafePointer<Float>) -> Void) {
    let base = a.storage.pointer
    var pc = 0, step = 0
    while pc < a.k {
        let kc = min(a.kcMax, a.k - pc)
        var ic = 0, block = 0
        while ic < a.m {
            let mc = min(MC, a.m - ic)
            body(pc, kc, ic, mc, base + a.offsets[step * a.rowBlocks + block])
            ic += mc
            block += 1
        }
        pc += kc
        step += 1
    }
}

/// Columns j0 ..< j0 + n of `sgemmPackedA` (j0 a multiple of NR), on this thread; c points
/// at column j0.
private func sgemmPackedAColumns(_ a: PackedGemmA, j0: Int, n: Int, beta: Float, c: UnsafeMutablePointer<Float>,
                                 ldc: Int, packB: GemmPanelPacker) {
    forEachBPanel(a, n: n) { jc, nc, packedB, tile in
        // Blocks come K step by K step, so each B panel is packed once, before its first block.
        var packedStep = -1
        forEachPackedBlock(a) { pc, kc, ic, mc, packedA in
            if pc != packedStep {
                packB(pc, kc, j0 + jc, nc, packedB)
                packedStep = pc
            }
            macroKernel(mc: mc, nc: nc, kc: kc, alpha: 1, beta: pc == 0 ? beta : 1,
                        packedA: packedA, packedB: packedB, c: c + ic * ldc + jc, ldc: ldc, tile: tile)
        }
    }
}

/// Calls body(jc, nc, packedB, tile) for the column panels jc ..< jc + nc (packedGemmPanelColumns
/// wide) of an n-column product with prepacked A, with this thread's packing buffer
/// reserved for one panel and its edge-tile scratch.
@inline(__always)
private func forEachBPanel(_ a: PackedGemmA, n: Int,
                           _ body: (_ jc: Int, _ nc: Int, _ packedB: UnsafeMutablePointer<Float>,
                                    _ tile: UnsafeMutablePointer<Float>) -> Void) {
    let panelColumns = packedGemmPanelColumns(m: a.m, k: a.k)
    let ws = GemmWorkspace.forCurrentThread()
    ws.reserve(aCount: 0, bCount: a.kcMax * roundUp(min(panelColumns, n), NR))
    var jc = 0
    while jc < n {
        let nc = min(panelColumns, n - jc)
        body(jc, nc, ws.b, ws.tile)
        jc += nc
    }
}

// MARK: - Implicit B (no packing)

/// C (M×N) = A·B + beta·C with A prepacked and B never stored or packed: the 16
/// columns j ..< j + 16 of row p of B are the floats at b + rowOffsets[p] + j
/// (a convolution's implicit im2col over its input in place, see PackedIm2col.swift).
/// Reads up to NR − 1 floats past column N − 1 of every row of B (they only reach
/// C columns ≥ N, which are not written). Threads split the columns as `sgemmPackedA`.
public func sgemmImplicitB(_ a: PackedGemmA, n: Int, b: UnsafePointer<Float>, rowOffsets: UnsafePointer<Int32>,
                           beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
    forEachColumnRange(a, n: n) { j0, count in
        sgemmImplicitBColumns(a, n: count, b: b + j0, rowOffsets: rowOffsets, beta: beta, c: c + j0, ldc: ldc)
    }
}

/// `sgemmImplicitB` on this thread: for each 16-column tile (its B rows stay in L1
/// across the row panels), every K step and row panel of A. With the AVX-512 kernel, two
/// such tiles whose 32 columns are all inside N run as one 32-column tile wherever the row
/// panel is whole (same per-element arithmetic, so the same bits).
private func sgemmImplicitBColumns(_ a: PackedGemmA, n: Int, b: UnsafePointer<Float>, rowOffsets: UnsafePointer<Int32>,
                                   beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
    if a.m == 1 {
        implicitSingleRow(a, n: n, b: b, rowOffsets: rowOffsets, beta: beta, c: c)
        return
    }
    let tile = GemmWorkspace.forCurrentThread().tile
    let wideKernel = GemmKernel.current == .avx512
    var jr = 0
    while jr < n {
        let panels = wideKernel && n - jr >= 2 * NR ? 2 : 1
        forEachPackedBlock(a) { pc, kc, ic, mc, packedA in
            let betaStep: Float = pc == 0 ? beta : 1
            var ir = 0
            while ir < mc {
                let rows = panelRows(mc - ir)
                let mr = min(rows, mc - ir)
                let aPanel = packedA + ir * kc
                if panels == 2 && mr == rows {
                    // Reads columns jr ..< jr + 32 of each B row only: all inside N.
                    cnn_sgemm_implicit_tile_avx512(Int32(rows), kc, aPanel, b + jr, rowOffsets + pc,
                                                   c + (ic + ir) * ldc + jr, ldc, betaStep)
                    ir += rows
                    continue
                }
                for s in 0..<panels {
                    let j = jr + s * NR
                    let nr = min(NR, n - j)
                    let cTile = c + (ic + ir) * ldc + j
                    // rows is a constant in each branch, so each kernel is compiled for it.
                    if rows == MR {
                        runTile(rows: MR, mr: mr, nr: nr, c: cTile, ldc: ldc, beta: betaStep, tile: tile) { c, ldc, beta in
                            microKernelImplicitB(rows: MR, kc: kc, a: aPanel, b: b + j, offsets: rowOffsets + pc,
                                                 c: c, ldc: ldc, beta: beta)
                        }
                    } else {
                        runTile(rows: tailMR, mr: mr, nr: nr, c: cTile, ldc: ldc, beta: betaStep, tile: tile) { c, ldc, beta in
                            microKernelImplicitB(rows: tailMR, kc: kc, a: aPanel, b: b + j, offsets: rowOffsets + pc,
                                                 c: c, ldc: ldc, beta: beta)
                        }
                    }
                }
                ir += rows
            }
        }
        jr += panels * NR
    }
}

/// M = 1 (a first layer's input gradient): the 4-row micro-tile would waste three
/// quarters of its FMAs, so one broadcast of A[p] feeds 8 vectors (64 columns) of B instead.
/// c[j] = Σ_p A[p]·B[p, j] + beta·c[j] for j < n.
private func implicitSingleRow(_ a: PackedGemmA, n: Int, b: UnsafePointer<Float>, rowOffsets: UnsafePointer<Int32>,
                               beta: Float, c: UnsafeMutablePointer<Float>) {
    // A's single row, contiguous (packed A holds it in 4-row panels: every 4th float).
    let k = a.k
    withUnsafeTemporaryAllocation(of: Float.self, capacity: k) { row in
        forEachPackedBlock(a) { pc, kc, _, _, panel in
            for p in 0..<kc { row[pc + p] = panel[p * panelRows(1)] }
        }
        let w = UnsafePointer(row.baseAddress!)
        // Chunks of 32 rows of B: a 64-column tile then touches 32 × 5 cache lines (10 KiB),
        // which stay in L1 while every tile of the row passes; C is updated once per chunk.
        let chunk = 32
        var p0 = 0
        while p0 < k {
            let p1 = min(p0 + chunk, k)
            let first = p0 == 0
            var j = 0
            while j < n {
                let count = min(8 * L, n - j)
                var acc = (GemmVector(), GemmVector(), GemmVector(), GemmVector(),
                           GemmVector(), GemmVector(), GemmVector(), GemmVector())
                if count == 8 * L {
                    for p in p0..<p1 {
                        let ap = GemmVector(repeating: w[p])
                        let bp = UnsafeRawPointer(b + Int(rowOffsets[p]) + j)
                        acc.0 = multiplyAdd(acc.0, ap, bp.loadUnaligned(as: GemmVector.self))
                        acc.1 = multiplyAdd(acc.1, ap, bp.loadUnaligned(fromByteOffset: 4 * L, as: GemmVector.self))
                        acc.2 = multiplyAdd(acc.2, ap, bp.loadUnaligned(fromByteOffset: 8 * L, as: GemmVector.self))
                        acc.3 = multiplyAdd(acc.3, ap, bp.loadUnaligned(fromByteOffset: 12 * L, as: GemmVector.self))
                        acc.4 = multiplyAdd(acc.4, ap, bp.loadUnaligned(fromByteOffset: 16 * L, as: GemmVector.self))
                        acc.5 = multiplyAdd(acc.5, ap, bp.loadUnaligned(fromByteOffset: 20 * L, as: GemmVector.self))
                        acc.6 = multiplyAdd(acc.6, ap, bp.loadUnaligned(fromByteOffset: 24 * L, as: GemmVector.self))
                        acc.7 = multiplyAdd(acc.7, ap, bp.loadUnaligned(fromByteOffset: 28 * L, as: GemmVector.self))
                    }
                } else {
                    // The last columns: whole vectors (B may be read past column n − 1).
                    let vectors = (count + L - 1) / L
                    for p in p0..<p1 {
                        let ap = GemmVector(repeating: w[p])
                        let bp = UnsafeRawPointer(b + Int(rowOffsets[p]) + j)
                        acc.0 = multiplyAdd(acc.0, ap, bp.loadUnaligned(as: GemmVector.self))
                        if vectors > 1 { acc.1 = multiplyAdd(acc.1, ap, bp.loadUnaligned(fromByteOffset: 4 * L, as: GemmVector.self)) }
                        if vectors > 2 { acc.2 = multiplyAdd(acc.2, ap, bp.loadUnaligned(fromByteOffset: 8 * L, as: GemmVector.self)) }
                        if vectors > 3 { acc.3 = multiplyAdd(acc.3, ap, bp.loadUnaligned(fromByteOffset: 12 * L, as: GemmVector.self)) }
                        if vectors > 4 { acc.4 = multiplyAdd(acc.4, ap, bp.loadUnaligned(fromByteOffset: 16 * L, as: GemmVector.self)) }
                        if vectors > 5 { acc.5 = multiplyAdd(acc.5, ap, bp.loadUnaligned(fromByteOffset: 20 * L, as: GemmVector.self)) }
                        if vectors > 6 { acc.6 = multiplyAdd(acc.6, ap, bp.loadUnaligned(fromByteOffset: 24 * L, as: GemmVector.self)) }
                    }
                }
                withUnsafeTemporaryAllocation(of: GemmVector.self, capacity: 8) { lanes in
                    lanes[0] = acc.0; lanes[1] = acc.1; lanes[2] = acc.2; lanes[3] = acc.3
                    lanes[4] = acc.4; lanes[5] = acc.5; lanes[6] = acc.6; lanes[7] = acc.7
                    let values = UnsafeRawPointer(lanes.baseAddress!).assumingMemoryBound(to: Float.self)
                    let out = c + j
                    if first && beta == 0 {
                        for i in 0..<count { out[i] = values[i] }
                    } else {
                        let scale: Float = first ? beta : 1
                        for i in 0..<count { out[i] = values[i] + scale * out[i] }
                    }
                }
                j += count
            }
            p0 = p1
        }
    }
}

/// The micro-kernel with B row p read at b + offsets[p] (unaligned) instead of from a
/// packed panel (alpha = 1).
@inline(__always)
private func microKernelImplicitB(
    rows: Int, kc: Int, a: UnsafePointer<Float>, b: UnsafePointer<Float>, offsets: UnsafePointer<Int32>,
    c: UnsafeMutablePointer<Float>, ldc: Int, beta: Float
) {
    microKernelBody(rows: rows, kc: kc, a: a, c: c, ldc: ldc, alpha: 1, beta: beta) { p in
        let pb = UnsafeRawPointer(b + Int(offsets[p]))
        return (pb.loadUnaligned(as: GemmVector.self), pb.loadUnaligned(fromByteOffset: 4 * L, as: GemmVector.self))
    }
}

// MARK: - Tiles to a sink (C never stored)

/// Receives one finished tile of `sgemmTiles`: tile[i · ld + j] is C[row + i, col + j]
/// for i < rows, j < cols (cols ≤ 2 · NR, ld = NR or 2 · NR).
public typealias GemmTileSink = (_ tile: UnsafePointer<Float>, _ ld: Int, _ row: Int, _ rows: Int, _ col: Int,
                                 _ cols: Int) -> Void

/// Whether `sgemmTiles` takes a prepacked A of this depth, packed in one K step
/// (`PackedGemmA.pack(depth: sgemmTilesDepthLimit)`: no tile needs a second pass to finish).
public func sgemmTilesSupports(k: Int) -> Bool { k <= sgemmTilesDepthLimit }

/// Deepest K `sgemmTiles` takes in one step. Past KC the two 16-column B micro-panels of a
/// 32-column tile (2 × 32 KiB at K = 512) are read from L2 rather than L1; ResNet's strided
/// 1×1 shortcuts with 512 and 1024 output channels measured faster this way than storing
/// dcol and scattering it in a second pass (their sums then run in one K step, not KC-sized ones).
public let sgemmTilesDepthLimit = 1024

/// C (M×N) = A·B on this thread, A prepacked (k ≤ KC) and B row-major (K×N, ldb ≥ N),
/// without storing C: each finished tile goes from the micro-kernel to `sink` while it is
/// in L1. A caller that writes C somewhere unusual (interleaved with zeros into a tensor
/// 4x its size: strided 1×1 backward-data) then does so tile by tile, its stores draining
/// while the next tiles compute, instead of in a separate pass over a stored C.
/// With the AVX-512 kernel, tiles are 32 columns wide wherever more than 16 remain (the
/// packed B panel is zero-padded to whole 16-column micro-panels): the same bits per element.
public func sgemmTiles(_ a: PackedGemmA, n: Int, b: UnsafePointer<Float>, ldb: Int, sink: GemmTileSink) {
    precondition(a.kcMax == a.k && sgemmTilesSupports(k: a.k), "sgemmTiles: A of depth \(a.k) packed in steps of \(a.kcMax)")
    precondition(ldb >= n, "sgemmTiles: ldb \(ldb) < n \(n)")
    let wideKernel = GemmKernel.current == .avx512
    forEachBPanel(a, n: n) { jc, nc, packedB, tile in
        packB(.none, kc: a.k, nc: nc, b: b, ldb: ldb, row: 0, col: jc, dst: packedB)
        // Row panels outside, column tiles inside: the sink writes the rows of one panel at a
        // time (a few output streams, not all M), while the packed B panel stays in L1.
        forEachPackedBlock(a) { _, kc, ic, mc, packedA in
            var ir = 0
            while ir < mc {
                let rows = panelRows(mc - ir)
                let aPanel = packedA + ir * kc
                var jr = 0
                while jr < nc {
                    let bPanel = packedB + jr * kc
                    if wideKernel && nc - jr > NR {
                        cnn_sgemm_tile_avx512(Int32(rows), kc, aPanel, bPanel, tile, 2 * NR, 1, 0)
                        sink(tile, 2 * NR, ic + ir, min(rows, mc - ir), jc + jr, min(2 * NR, nc - jr))
                        jr += 2 * NR
                        continue
                    }
                    if rows == MR {
                        microKernel(rows: MR, kc: kc, a: aPanel, b: bPanel, c: tile, ldc: NR, alpha: 1, beta: 0)
                    } else {
                        microKernel(rows: tailMR, kc: kc, a: aPanel, b: bPanel, c: tile, ldc: NR, alpha: 1, beta: 0)
                    }
                    sink(tile, NR, ic + ir, min(rows, mc - ir), jc + jr, min(NR, nc - jr))
                    jr += NR
                }
                ir += rows
            }
        }
    }
}

/// Packs op(A)[row..<row+mc, col..<col+kc].
@inline(__always)
private func packA(_ trans: Transpose, mc: Int, kc: Int, a: UnsafePointer<Float>, lda: Int,
                   row: Int, col: Int, dst: UnsafeMutablePointer<Float>) {
    if trans == .none {
        packABlock(mc: mc, kc: kc, src: a + row * lda + col, rowStride: lda, colStride: 1, dst: dst)
    } else {
        packABlock(mc: mc, kc: kc, src: a + col * lda + row, rowStride: 1, colStride: lda, dst: dst)
    }
}

/// Packs op(B)[row..<row+kc, col..<col+nc].
@inline(__always)
private func packB(_ trans: Transpose, kc: Int, nc: Int, b: UnsafePointer<Float>, ldb: Int,
                   row: Int, col: Int, dst: UnsafeMutablePointer<Float>) {
    if trans == .none {
        packBPanel(kc: kc, nc: nc, src: b + row * ldb + col, rowStride: ldb, colStride: 1, dst: dst)
    } else {
        packBPanel(kc: kc, nc: nc, src: b + col * ldb + row, rowStride: 1, colStride: ldb, dst: dst)
    }
}

@inline(__always)
private func roundUp(_ x: Int, _ multiple: Int) -> Int { (x + multiple - 1) / multiple * multiple }

/// C (M×N) = beta · C, with beta == 0 writing zeros without reading C.
func scaleC(m: Int, n: Int, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
    for i in 0..<m {
        let row = c + i * ldc
        if beta == 0 {
            row.update(repeating: 0, count: n)
        } else if beta != 1 {
            for j in 0..<n { row[j] *= beta }
        }
    }
}

// MARK: - Macro-kernel: jr and ir loops over one packed block

/// packedA is MC×KC (mc valid rows), packedB is KC×NC (nc valid columns), c points at the
/// mc×nc block of C. tile is MR×NR scratch for edge tiles.
@inline(__always)
private func macroKernel(
    mc: Int, nc: Int, kc: Int, alpha: Float, beta: Float,
    packedA: UnsafePointer<Float>, packedB: UnsafePointer<Float>,
    c: UnsafeMutablePointer<Float>, ldc: Int, tile: UnsafeMutablePointer<Float>
) {
    let wideKernel = GemmKernel.current == .avx512
    var jr = 0
    while jr < nc {
        // Two whole B micro-panels side by side: full-height tiles run as one 32-column
        // AVX-512 tile (same per-element arithmetic, so the same bits).
        let panels = wideKernel && nc - jr >= 2 * NR ? 2 : 1
        var ir = 0
        while ir < mc {
            let rows = panelRows(mc - ir)
            let mr = min(rows, mc - ir)
            let aPanel = packedA + ir * kc
            if panels == 2 && mr == rows {
                cnn_sgemm_tile_avx512(Int32(rows), kc, aPanel, packedB + jr * kc, c + ir * ldc + jr, ldc, alpha, beta)
                ir += rows
                continue
            }
            for s in 0..<panels {
                let j = jr + s * NR
                let nr = min(NR, nc - j)
                let bPanel = packedB + j * kc
                let cTile = c + ir * ldc + j
                if rows == MR {
                    runTile(rows: MR, mr: mr, nr: nr, c: cTile, ldc: ldc, beta: beta, tile: tile) { c, ldc, beta in
                        microKernel(rows: MR, kc: kc, a: aPanel, b: bPanel, c: c, ldc: ldc, alpha: alpha, beta: beta)
                    }
                } else {
                    runTile(rows: tailMR, mr: mr, nr: nr, c: cTile, ldc: ldc, beta: beta, tile: tile) { c, ldc, beta in
                        microKernel(rows: tailMR, kc: kc, a: aPanel, b: bPanel, c: c, ldc: ldc, alpha: alpha, beta: beta)
                    }
                }
            }
            ir += rows
        }
        jr += panels * NR
    }
}

/// The micro-kernel `sgemm`'s macro-kernel runs on full tiles.
public enum GemmKernel: String, Sendable, CaseIterable {
    /// Swift SIMD (AVX2 + FMA in the default x86-64 build, SSE2 / NEON in the portable one):
    /// 6×16 tiles.
    case simd
    /// AVX-512 (CBF16's cnn_sgemm_tile_avx512): 6×32 tiles over two packed micro-panels,
    /// the same bits as two 6×16 SIMD tiles. The default where `CPUFeatures.current` has
    /// AVX-512: on the AMD EPYC with AVX-512 it measured faster than the AVX2 tiles on every
    /// `bench gemm` shape (`--fp32-kernel simd` / `avx512` side by side).
    case avx512

    #if CNN_PORTABLE
    nonisolated(unsafe) private static var chosen: GemmKernel = .simd
    #else
    nonisolated(unsafe) private static var chosen: GemmKernel = CPUFeatures.current.avx512FP32 ? .avx512 : .simd
    #endif

    /// The kernel in use. Set it once at start-up (bench gemm --fp32-kernel), not while
    /// kernels run; asking for .avx512 on a CPU without it keeps .simd.
    public static var current: GemmKernel {
        get { chosen }
        set {
            #if CNN_PORTABLE
            chosen = .simd   // the portable build's SIMD kernel does not fuse; AVX-512 would change its bits
            #else
            chosen = newValue == .avx512 && !CPUFeatures.current.avx512FP32 ? .simd : newValue
            #endif
        }
    }
}

/// Rows of the A micro-panel that starts with `remaining` rows of the block left: MR, but a
/// tail of 8 rows is two tailMR-row panels and a tail of at most tailMR rows one, instead of
/// zero-padded MR-row panels (M = 16 is 6+6+4, M = 32 is 6·4+4+4). Only the last panel of
/// a block can be padded, so the panel starting at row ir starts at ir·kc in packed A.
@inline(__always)
private func panelRows(_ remaining: Int) -> Int {
    remaining > tailMR && remaining != 2 * tailMR ? MR : tailMR
}

/// Height of the short tail panel. 4 rows × 2 vectors = 8 accumulators, which still covers
/// the FMA latency × throughput product of Zen 3 (4 cycles × 2 pipes).
private let tailMR = 4

/// One rows×NR tile of C with mr×nr valid: `kernel(c, ldc, beta)` computes a full tile,
/// straight into C when the tile is whole, else into `tile` whose valid corner is then stored.
@inline(__always)
private func runTile(
    rows: Int, mr: Int, nr: Int, c: UnsafeMutablePointer<Float>, ldc: Int, beta: Float,
    tile: UnsafeMutablePointer<Float>,
    kernel: (_ c: UnsafeMutablePointer<Float>, _ ldc: Int, _ beta: Float) -> Void
) {
    if mr == rows && nr == NR {
        kernel(c, ldc, beta)
        return
    }
    // Zero-padded panels (or columns past N) give a full tile; only its valid corner reaches C.
    kernel(tile, NR, 0)
    storeTileCorner(tile, mr: mr, nr: nr, c: c, ldc: ldc, beta: beta)
}

/// C[i, j] = tile[i, j] + beta · C[i, j] for i < mr, j < nr (beta == 0: C not read).
@inline(__always)
private func storeTileCorner(_ tile: UnsafePointer<Float>, mr: Int, nr: Int, c: UnsafeMutablePointer<Float>,
                             ldc: Int, beta: Float) {
    for i in 0..<mr {
        let src = tile + i * NR, dst = c + i * ldc
        if beta == 0 {
            for j in 0..<nr { dst[j] = src[j] }
        } else {
            for j in 0..<nr { dst[j] = src[j] + beta * dst[j] }
        }
    }
}

// MARK: - Micro-kernel

/// acc + a·b: one FMA instruction in the AVX2 build. The portable build multiplies and
/// adds: without hardware FMA, `addingProduct` keeps its single rounding by calling the C
/// library's fmaf for every lane (an order of magnitude slower).
@inline(__always)
private func multiplyAdd(_ acc: GemmVector, _ a: GemmVector, _ b: GemmVector) -> GemmVector {
    #if CNN_PORTABLE
    return acc + a * b
    #else
    return acc.addingProduct(a, b)
    #endif
}

@inline(__always)
private func loadVector(_ p: UnsafePointer<Float>) -> GemmVector {
    UnsafeRawPointer(p).load(as: GemmVector.self)
}

/// C tile ← alpha · acc + beta · C tile row segment (beta == 0: C not read).
@inline(__always)
private func storeRow(_ acc: GemmVector, _ p: UnsafeMutablePointer<Float>, alpha: GemmVector, beta: Float) {
    let raw = UnsafeMutableRawPointer(p)
    if beta == 0 {
        raw.storeBytes(of: acc * alpha, as: GemmVector.self)
    } else {
        let old = UnsafeRawPointer(raw).loadUnaligned(as: GemmVector.self)
        raw.storeBytes(of: multiplyAdd(acc * alpha, GemmVector(repeating: beta), old), as: GemmVector.self)
    }
}

/// One rows×NR tile (rows is MR = 6 or tailMR = 4, a constant after inlining; 2 vectors
/// per row): C = alpha · Ã·B̃ + beta · C.
/// a: packed A micro-panel, kc×rows, a[p·rows + i].
/// b: packed B micro-panel, kc×NR, b[p·NR + j], 32-byte aligned rows.
/// c: rows×NR tile of row-major C, row stride ldc (any alignment).
@inline(__always)
private func microKernel(
    rows: Int, kc: Int, a: UnsafePointer<Float>, b: UnsafePointer<Float>,
    c: UnsafeMutablePointer<Float>, ldc: Int, alpha: Float, beta: Float
) {
    microKernelBody(rows: rows, kc: kc, a: a, c: c, ldc: ldc, alpha: alpha, beta: beta) { p in
        (loadVector(b + p * 2 * L), loadVector(b + p * 2 * L + L))
    }
}

/// The micro-kernel's arithmetic, with `bRow(p)` giving the two B vectors of row p
/// (packed or read in place; inlined, so each caller compiles to its own loop).
/// The accumulators are named locals so they stay in registers across the K loop.
@inline(__always)
private func microKernelBody(
    rows: Int, kc: Int, a: UnsafePointer<Float>, c: UnsafeMutablePointer<Float>, ldc: Int,
    alpha: Float, beta: Float, bRow: (Int) -> (GemmVector, GemmVector)
) {
    var c00 = GemmVector(), c01 = GemmVector()
    var c10 = GemmVector(), c11 = GemmVector()
    var c20 = GemmVector(), c21 = GemmVector()
    var c30 = GemmVector(), c31 = GemmVector()
    var c40 = GemmVector(), c41 = GemmVector()
    var c50 = GemmVector(), c51 = GemmVector()
    var pa = a
    for p in 0..<kc {
        let (b0, b1) = bRow(p)
        var av = GemmVector(repeating: pa[0])
        c00 = multiplyAdd(c00, av, b0); c01 = multiplyAdd(c01, av, b1)
        av = GemmVector(repeating: pa[1])
        c10 = multiplyAdd(c10, av, b0); c11 = multiplyAdd(c11, av, b1)
        av = GemmVector(repeating: pa[2])
        c20 = multiplyAdd(c20, av, b0); c21 = multiplyAdd(c21, av, b1)
        av = GemmVector(repeating: pa[3])
        c30 = multiplyAdd(c30, av, b0); c31 = multiplyAdd(c31, av, b1)
        if rows == 6 {
            av = GemmVector(repeating: pa[4])
            c40 = multiplyAdd(c40, av, b0); c41 = multiplyAdd(c41, av, b1)
            av = GemmVector(repeating: pa[5])
            c50 = multiplyAdd(c50, av, b0); c51 = multiplyAdd(c51, av, b1)
        }
        pa += rows
    }
    let va = GemmVector(repeating: alpha)
    storeRow(c00, c, alpha: va, beta: beta); storeRow(c01, c + L, alpha: va, beta: beta)
    var row = c + ldc
    storeRow(c10, row, alpha: va, beta: beta); storeRow(c11, row + L, alpha: va, beta: beta)
    row += ldc
    storeRow(c20, row, alpha: va, beta: beta); storeRow(c21, row + L, alpha: va, beta: beta)
    row += ldc
    storeRow(c30, row, alpha: va, beta: beta); storeRow(c31, row + L, alpha: va, beta: beta)
    if rows == 6 {
        row += ldc
        storeRow(c40, row, alpha: va, beta: beta); storeRow(c41, row + L, alpha: va, beta: beta)
        row += ldc
        storeRow(c50, row, alpha: va, beta: beta); storeRow(c51, row + L, alpha: va, beta: beta)
    }
}

// MARK: - Packing

/// Packs an mc×kc block of op(A) into MR-row micro-panels (see the layout comment at the
/// top). Element (i, p) of the block is src[i·rowStride + p·colStride]; one of the strides
/// is 1 (A as stored: colStride 1; Aᵀ: rowStride 1).
private func packABlock(
    mc: Int, kc: Int, src: UnsafePointer<Float>, rowStride: Int, colStride: Int,
    dst: UnsafeMutablePointer<Float>
) {
    var ir = 0
    var out = dst
    while ir < mc {
        let rows = panelRows(mc - ir)
        let mr = min(rows, mc - ir)
        let panel = src + ir * rowStride
        if colStride == 1 {
            // Rows of A are contiguous in p: read the panel's rows side by side, write k-major.
            var p0 = 0
            #if !CNN_PORTABLE
            // 8 steps of p at a time: the panel's rows (zeros past mr) transposed in registers.
            if rows == MR {
                p0 = packRowsTransposed(rows: MR, mr: mr, kc: kc, src: panel, rowStride: rowStride, dst: out)
            } else {
                p0 = packRowsTransposed(rows: tailMR, mr: mr, kc: kc, src: panel, rowStride: rowStride, dst: out)
            }
            #endif
            for i in 0..<rows {
                if i < mr {
                    let row = panel + i * rowStride
                    for p in p0..<kc { out[p * rows + i] = row[p] }
                } else {
                    for p in p0..<kc { out[p * rows + i] = 0 }
                }
            }
        } else {
            // Aᵀ: for each p the panel's values are contiguous in memory.
            for p in 0..<kc {
                let col = panel + p * colStride
                let o = out + p * rows
                for i in 0..<mr { o[i] = col[i] }
                for i in mr..<rows { o[i] = 0 }
            }
        }
        out += rows * kc
        ir += rows
    }
}

/// Packs a kc×nc panel of a row-major B (src[p·ld + j]) into NR-column micro-panels, as
/// `sgemm` packs its B: a `GemmPanelPacker` for a B the caller stores contiguously.
@inline(__always)
func packContiguousPanel(kc: Int, nc: Int, src: UnsafePointer<Float>, ld: Int, dst: UnsafeMutablePointer<Float>) {
    packBPanel(kc: kc, nc: nc, src: src, rowStride: ld, colStride: 1, dst: dst)
}

/// Packs a kc×nc panel of op(B) into NR-column micro-panels (see the layout comment at the
/// top). Element (p, j) of the panel is src[p·rowStride + j·colStride]; one of the strides
/// is 1 (B as stored: colStride 1; Bᵀ: rowStride 1).
private func packBPanel(
    kc: Int, nc: Int, src: UnsafePointer<Float>, rowStride: Int, colStride: Int,
    dst: UnsafeMutablePointer<Float>
) {
    let fullPanels = nc / NR
    var jr = 0
    if colStride == 1 {
        // B as stored (im2col columns, the hot case). Chunks of a few micro-panels: each
        // source row is read as one contiguous run, and only a few output streams are open.
        let chunk = 8
        var q0 = 0
        while q0 < fullPanels {
            let q1 = min(q0 + chunk, fullPanels)
            for p in 0..<kc {
                let s = UnsafeRawPointer(src + p * rowStride)
                let o = UnsafeMutableRawPointer(dst + p * NR)
                for q in q0..<q1 {
                    let so = q * NR * 4, oo = q * NR * kc * 4
                    o.storeBytes(of: s.loadUnaligned(fromByteOffset: so, as: GemmVector.self),
                                 toByteOffset: oo, as: GemmVector.self)
                    o.storeBytes(of: s.loadUnaligned(fromByteOffset: so + L * 4, as: GemmVector.self),
                                 toByteOffset: oo + L * 4, as: GemmVector.self)
                }
            }
            q0 = q1
        }
        jr = fullPanels * NR
    }
    var out = dst + jr * kc
    while jr < nc {
        let nr = min(NR, nc - jr)
        let panel = src + jr * colStride
        if colStride == 1 {
            for p in 0..<kc {
                let s = panel + p * rowStride, o = out + p * NR
                for j in 0..<nr { o[j] = s[j] }
                for j in nr..<NR { o[j] = 0 }
            }
        } else if nr == NR {
            packTransposedPanel(kc: kc, src: panel, ld: colStride, dst: out)
        } else {
            // Bᵀ: each column j of op(B) is a contiguous row of the stored matrix.
            for j in 0..<NR {
                if j < nr {
                    let col = panel + j * colStride
                    for p in 0..<kc { out[p * NR + j] = col[p] }
                } else {
                    for p in 0..<kc { out[p * NR + j] = 0 }
                }
            }
        }
        out += NR * kc
        jr += NR
    }
}

/// One full Bᵀ micro-panel: out[p·NR + j] = src[j·ld + p] for p < kc, j < NR.
/// With AVX2, 8×8 blocks are transposed in registers so reads and writes are both vectors.
/// Steps of 16 in p use each 64-byte source line whole while it is in L1 (with ld a
/// multiple of 1024 floats all NR source rows fall into one L1 set).
@inline(__always)
private func packTransposedPanel(kc: Int, src: UnsafePointer<Float>, ld: Int, dst: UnsafeMutablePointer<Float>) {
    var p = 0
    #if !CNN_PORTABLE
    while p + 16 <= kc {
        for h in 0..<(NR / 8) {
            transposeBlock(src + (8 * h) * ld + p, ld: ld, dst + p * NR + 8 * h)
            transposeBlock(src + (8 * h) * ld + p + 8, ld: ld, dst + (p + 8) * NR + 8 * h)
        }
        p += 16
    }
    while p + 8 <= kc {
        for h in 0..<(NR / 8) {
            transposeBlock(src + (8 * h) * ld + p, ld: ld, dst + p * NR + 8 * h)
        }
        p += 8
    }
    #endif
    while p < kc {
        for j in 0..<NR { dst[p * NR + j] = src[j * ld + p] }
        p += 1
    }
}

/// The 8×8 transpose of rows r0 … r7: element q of the result is column q (lane i = r_i[q]).
/// The classic AVX sequence (unpack, shuffle, 128-bit lane permute), written as
/// constant-index SIMD8 shuffles that LLVM turns into vunpcklps / vshufps / vperm2f128.
/// Shared by the GEMM's Bᵀ and A packing (PackedIm2col.swift keeps its own copy, see there).
@inline(__always)
private func transpose8x8Rows(_ r0: SIMD8<Float>, _ r1: SIMD8<Float>, _ r2: SIMD8<Float>, _ r3: SIMD8<Float>,
                      _ r4: SIMD8<Float>, _ r5: SIMD8<Float>, _ r6: SIMD8<Float>, _ r7: SIMD8<Float>)
    -> (SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>) {
    let t0 = unpackLo(r0, r1), t1 = unpackHi(r0, r1), t2 = unpackLo(r2, r3), t3 = unpackHi(r2, r3)
    let t4 = unpackLo(r4, r5), t5 = unpackHi(r4, r5), t6 = unpackLo(r6, r7), t7 = unpackHi(r6, r7)
    let u0 = shuffleLo(t0, t2), u1 = shuffleHi(t0, t2), u2 = shuffleLo(t1, t3), u3 = shuffleHi(t1, t3)
    let u4 = shuffleLo(t4, t6), u5 = shuffleHi(t4, t6), u6 = shuffleLo(t5, t7), u7 = shuffleHi(t5, t7)
    return (SIMD8(lowHalf: u0.lowHalf, highHalf: u4.lowHalf), SIMD8(lowHalf: u1.lowHalf, highHalf: u5.lowHalf),
            SIMD8(lowHalf: u2.lowHalf, highHalf: u6.lowHalf), SIMD8(lowHalf: u3.lowHalf, highHalf: u7.lowHalf),
            SIMD8(lowHalf: u0.highHalf, highHalf: u4.highHalf), SIMD8(lowHalf: u1.highHalf, highHalf: u5.highHalf),
            SIMD8(lowHalf: u2.highHalf, highHalf: u6.highHalf), SIMD8(lowHalf: u3.highHalf, highHalf: u7.highHalf))
}

/// dst[q·stride] = columns.q for q < 8.
@inline(__always)
private func store8x8(_ c: (SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>,
                    SIMD8<Float>, SIMD8<Float>), _ dst: UnsafeMutablePointer<Float>, stride: Int) {
    store8(c.0, dst); store8(c.1, dst + stride); store8(c.2, dst + 2 * stride); store8(c.3, dst + 3 * stride)
    store8(c.4, dst + 4 * stride); store8(c.5, dst + 5 * stride); store8(c.6, dst + 6 * stride)
    store8(c.7, dst + 7 * stride)
}

/// vunpcklps: a0 b0 a1 b1 | a4 b4 a5 b5.
@inline(__always)
private func unpackLo(_ a: SIMD8<Float>, _ b: SIMD8<Float>) -> SIMD8<Float> {
    SIMD8(a[0], b[0], a[1], b[1], a[4], b[4], a[5], b[5])
}

/// vunpckhps: a2 b2 a3 b3 | a6 b6 a7 b7.
@inline(__always)
private func unpackHi(_ a: SIMD8<Float>, _ b: SIMD8<Float>) -> SIMD8<Float> {
    SIMD8(a[2], b[2], a[3], b[3], a[6], b[6], a[7], b[7])
}

/// vshufps 0x44: a0 a1 b0 b1 | a4 a5 b4 b5.
@inline(__always)
private func shuffleLo(_ a: SIMD8<Float>, _ b: SIMD8<Float>) -> SIMD8<Float> {
    SIMD8(a[0], a[1], b[0], b[1], a[4], a[5], b[4], b[5])
}

/// vshufps 0xEE: a2 a3 b2 b3 | a6 a7 b6 b7.
@inline(__always)
private func shuffleHi(_ a: SIMD8<Float>, _ b: SIMD8<Float>) -> SIMD8<Float> {
    SIMD8(a[2], a[3], b[2], b[3], a[6], a[7], b[6], b[7])
}

@inline(__always)
private func load8(_ p: UnsafePointer<Float>) -> SIMD8<Float> {
    UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
}

@inline(__always)
private func store8(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD8<Float>.self)
}

#if !CNN_PORTABLE
/// dst[q·NR + r] = s[r·ld + q] for r, q < 8.
@inline(__always)
private func transposeBlock(_ s: UnsafePointer<Float>, ld: Int, _ dst: UnsafeMutablePointer<Float>) {
    store8x8(transpose8x8Rows(load8(s), load8(s + ld), load8(s + 2 * ld), load8(s + 3 * ld),
                              load8(s + 4 * ld), load8(s + 5 * ld), load8(s + 6 * ld), load8(s + 7 * ld)),
             dst, stride: NR)
}

/// out[p·rows + i] = src[i·rowStride + p] for i < mr (zeros for mr ≤ i < rows) and p < p1,
/// the largest multiple of 8 not above kc; returns p1. Each group of 8 p is one 8×8 register
/// transpose (rows 6 and 7 zero or ignored), whose 8 output rows are stored as whole vectors
/// in increasing p (each overrun of rows − 8 floats is rewritten by the next store) except
/// the last, stored as exactly `rows` floats. The scalar loop moved one float per step: for
/// backward-weights' dY (k = a whole image's pixels) that cost half of a first layer's GEMM.
@inline(__always)
private func packRowsTransposed(rows: Int, mr: Int, kc: Int, src: UnsafePointer<Float>, rowStride: Int,
                                dst: UnsafeMutablePointer<Float>) -> Int {
    @inline(__always) func row(_ i: Int, _ p: Int) -> SIMD8<Float> {
        i < mr ? load8(src + i * rowStride + p) : SIMD8<Float>()
    }
    var p = 0
    while p + 8 <= kc {
        let zero = SIMD8<Float>()
        // Column q holds src rows 0 ..< 8 at p + q.
        let columns = transpose8x8Rows(row(0, p), row(1, p), row(2, p), row(3, p), row(4, p), row(5, p), zero, zero)
        let o = dst + p * rows
        store8(columns.0, o); store8(columns.1, o + rows); store8(columns.2, o + 2 * rows)
        store8(columns.3, o + 3 * rows); store8(columns.4, o + 4 * rows); store8(columns.5, o + 5 * rows)
        store8(columns.6, o + 6 * rows)
        let last = UnsafeMutableRawPointer(o + 7 * rows)
        last.storeBytes(of: columns.7.lowHalf, as: SIMD4<Float>.self)
        if rows > 4 { last.storeBytes(of: SIMD2(columns.7[4], columns.7[5]), toByteOffset: 16, as: SIMD2<Float>.self) }
        p += 8
    }
    return p
}
#endif

// MARK: - Per-thread workspace

/// Packing buffers for one thread: grown on demand, never shrunk, freed with the thread.
final class GemmWorkspace {
    private(set) var a: UnsafeMutablePointer<Float>
    private(set) var b: UnsafeMutablePointer<Float>
    /// Edge-tile scratch: MR × 2·NR floats (a 32-column AVX-512 tile of `sgemmTiles`).
    let tile: UnsafeMutablePointer<Float>
    private var aCapacity = 0, bCapacity = 0
    /// The bf16 GEMM's packed A and B (bf16 pairs as 32-bit words) and its edge tile.
    private(set) var aWords = GrowableBuffer<UInt32>()
    private(set) var bWords = GrowableBuffer<UInt32>()
    private(set) var bf16TileBuffer = GrowableBuffer<Float>()
    var bf16Tile: UnsafeMutablePointer<Float> { bf16TileBuffer.pointer }

    init() {
        a = GemmWorkspace.allocate(0)
        b = GemmWorkspace.allocate(0)
        tile = GemmWorkspace.allocate(2 * GemmBlocking.MR * GemmBlocking.NR)
    }

    deinit {
        a.deallocate()
        b.deallocate()
        tile.deallocate()
    }

    /// Ensures room for aCount floats of packed A and bCount of packed B.
    func reserve(aCount: Int, bCount: Int) {
        if aCount > aCapacity {
            a.deallocate()
            a = GemmWorkspace.allocate(aCount)
            aCapacity = aCount
        }
        if bCount > bCapacity {
            b.deallocate()
            b = GemmWorkspace.allocate(bCount)
            bCapacity = bCount
        }
    }

    /// Ensures room for aCount words of bf16 packed A, bCount of packed B, and the bf16 tile.
    func reserveWords(aCount: Int, bCount: Int) {
        aWords.reserve(max(aCount, 1))
        bWords.reserve(max(bCount, 1))
        bf16TileBuffer.reserve(BF16GemmBlocking.MR * BF16GemmBlocking.NR)
    }

    private static func allocate(_ count: Int) -> UnsafeMutablePointer<Float> {
        // 64-byte alignment: packed rows never straddle a cache line more than needed.
        UnsafeMutableRawPointer.allocate(byteCount: max(count, 1) * 4, alignment: 64)
            .bindMemory(to: Float.self, capacity: max(count, 1))
    }

    /// The calling thread's workspace, created on first use.
    static func forCurrentThread() -> GemmWorkspace {
        if let p = pthread_getspecific(gemmWorkspaceKey) {
            return Unmanaged<GemmWorkspace>.fromOpaque(p).takeUnretainedValue()
        }
        let ws = GemmWorkspace()
        pthread_setspecific(gemmWorkspaceKey, Unmanaged.passRetained(ws).toOpaque())
        return ws
    }
}

/// Thread-specific slot holding a retained GemmWorkspace; released when the thread exits.
private let gemmWorkspaceKey: pthread_key_t = {
    var key = pthread_key_t()
    #if canImport(Glibc)
    let rc = pthread_key_create(&key) { p in
        if let p { Unmanaged<GemmWorkspace>.fromOpaque(p).release() }
    }
    #else
    let rc = pthread_key_create(&key) { p in
        Unmanaged<GemmWorkspace>.fromOpaque(p).release()
    }
    #endif
    precondition(rc == 0, "sgemm: pthread_key_create failed (\(rc))")
    return key
}()
