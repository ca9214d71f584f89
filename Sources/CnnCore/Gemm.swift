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
//   op(A)[r·MR + i, p] at index p·MR + i (k-major), rows past M are zero.
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

/// The vector type of the micro-kernel: one row of a C tile is two of these.
#if CNN_PORTABLE
typealias GemmVector = SIMD4<Float>
#else
typealias GemmVector = SIMD8<Float>
#endif

/// Block sizes of `sgemm`, BLIS names. Chosen by measurement on AMD EPYC (Zen, AVX2/FMA,
/// 32 KiB L1d, 512 KiB L2 per core) against OpenBLAS; see `cnn-dist bench gemm`.
public enum GemmBlocking {
    /// Rows of the micro-tile. 6 rows × 2 vectors = 12 accumulators, plus 2 B vectors and one
    /// broadcast A value: 15 of the 16 vector registers of AVX2 (and of SSE2 in the portable build).
    public static let MR = 6
    /// Columns of the micro-tile: two vectors (16 floats with AVX2, 8 in the portable build).
    public static let NR = 2 * GemmVector.scalarCount
    /// Depth of a packed panel. A KC×NR B micro-panel (16 KiB at KC = 256) stays in L1
    /// while the kernel streams MR×KC A micro-panels past it.
    public static let KC = 256
    /// Rows of the packed A block: MC×KC floats (144 KiB) sit in L2 with room for C traffic.
    public static let MC = 144
    /// Columns of the packed B panel: KC×NC floats (about 4 MiB) live in L3.
    public static let NC = 4080
}

private let MR = GemmBlocking.MR
private let NR = GemmBlocking.NR
private let KC = GemmBlocking.KC
private let MC = GemmBlocking.MC
private let NC = GemmBlocking.NC
private let L = GemmVector.scalarCount

/// C (M×N) = alpha · op(A) (M×K) · op(B) (K×N) + beta · C, all row-major.
/// op(A) is A (M×K, lda ≥ K) or Aᵀ where A is stored K×M (lda ≥ M);
/// op(B) is B (K×N, ldb ≥ N) or Bᵀ where B is stored N×K (ldb ≥ K).
/// beta == 0 overwrites C without reading it (C may hold NaN).
///
/// Single-threaded and thread-safe: each calling thread packs into its own cached
/// workspace, which grows to the largest problem seen and is then reused (no allocation
/// in the steady state).
public func sgemm(
    _ transA: Transpose, _ transB: Transpose, m: Int, n: Int, k: Int,
    alpha: Float, a: UnsafePointer<Float>, lda: Int,
    b: UnsafePointer<Float>, ldb: Int,
    beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int
) {
    precondition(m >= 0 && n >= 0 && k >= 0, "sgemm: negative dimension")
    if m == 0 || n == 0 { return }
    if k == 0 || alpha == 0 {
        scaleC(m: m, n: n, beta: beta, c: c, ldc: ldc)
        return
    }

    let mcMax = roundUp(min(MC, m), MR)
    let ncMax = roundUp(min(NC, n), NR)
    let kcMax = min(KC, k)
    let ws = GemmWorkspace.forCurrentThread()
    ws.reserve(aCount: mcMax * kcMax, bCount: kcMax * ncMax)
    let packedA = ws.a, packedB = ws.b, tile = ws.tile

    var jc = 0
    while jc < n {
        let nc = min(NC, n - jc)
        var pc = 0
        while pc < k {
            let kc = min(KC, k - pc)
            // Later K steps add onto what the first one wrote.
            let betaStep: Float = pc == 0 ? beta : 1
            if transB == .none {
                packBPanel(kc: kc, nc: nc, src: b + pc * ldb + jc, rowStride: ldb, colStride: 1, dst: packedB)
            } else {
                packBPanel(kc: kc, nc: nc, src: b + jc * ldb + pc, rowStride: 1, colStride: ldb, dst: packedB)
            }
            var ic = 0
            while ic < m {
                let mc = min(MC, m - ic)
                if transA == .none {
                    packABlock(mc: mc, kc: kc, src: a + ic * lda + pc, rowStride: lda, colStride: 1, dst: packedA)
                } else {
                    packABlock(mc: mc, kc: kc, src: a + pc * lda + ic, rowStride: 1, colStride: lda, dst: packedA)
                }
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

@inline(__always)
private func roundUp(_ x: Int, _ multiple: Int) -> Int { (x + multiple - 1) / multiple * multiple }

/// C (M×N) = beta · C, with beta == 0 writing zeros without reading C.
private func scaleC(m: Int, n: Int, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
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
    var jr = 0
    while jr < nc {
        let nr = min(NR, nc - jr)
        let bPanel = packedB + jr * kc
        var ir = 0
        while ir < mc {
            let mr = min(MR, mc - ir)
            let aPanel = packedA + ir * kc
            let cTile = c + ir * ldc + jr
            if mr == MR && nr == NR {
                microKernel(kc: kc, a: aPanel, b: bPanel, c: cTile, ldc: ldc, alpha: alpha, beta: beta)
            } else {
                // Zero-padded panels give a full tile; only its valid corner reaches C.
                microKernel(kc: kc, a: aPanel, b: bPanel, c: tile, ldc: NR, alpha: alpha, beta: 0)
                for i in 0..<mr {
                    let src = tile + i * NR, dst = cTile + i * ldc
                    if beta == 0 {
                        for j in 0..<nr { dst[j] = src[j] }
                    } else {
                        for j in 0..<nr { dst[j] = src[j] + beta * dst[j] }
                    }
                }
            }
            ir += MR
        }
        jr += NR
    }
}

// MARK: - Micro-kernel

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
        raw.storeBytes(of: (acc * alpha).addingProduct(GemmVector(repeating: beta), old), as: GemmVector.self)
    }
}

/// One MR×NR tile (6 × 2 vectors): C = alpha · Ã·B̃ + beta · C.
/// a: packed A micro-panel, kc×MR, a[p·MR + i].
/// b: packed B micro-panel, kc×NR, b[p·NR + j], 32-byte aligned rows.
/// c: MR×NR tile of row-major C, row stride ldc (any alignment).
/// The 12 accumulators are named locals so they stay in registers across the K loop.
@inline(__always)
private func microKernel(
    kc: Int, a: UnsafePointer<Float>, b: UnsafePointer<Float>,
    c: UnsafeMutablePointer<Float>, ldc: Int, alpha: Float, beta: Float
) {
    var c00 = GemmVector(), c01 = GemmVector()
    var c10 = GemmVector(), c11 = GemmVector()
    var c20 = GemmVector(), c21 = GemmVector()
    var c30 = GemmVector(), c31 = GemmVector()
    var c40 = GemmVector(), c41 = GemmVector()
    var c50 = GemmVector(), c51 = GemmVector()
    var pa = a, pb = b
    for _ in 0..<kc {
        let b0 = loadVector(pb), b1 = loadVector(pb + L)
        var av = GemmVector(repeating: pa[0])
        c00 = c00.addingProduct(av, b0); c01 = c01.addingProduct(av, b1)
        av = GemmVector(repeating: pa[1])
        c10 = c10.addingProduct(av, b0); c11 = c11.addingProduct(av, b1)
        av = GemmVector(repeating: pa[2])
        c20 = c20.addingProduct(av, b0); c21 = c21.addingProduct(av, b1)
        av = GemmVector(repeating: pa[3])
        c30 = c30.addingProduct(av, b0); c31 = c31.addingProduct(av, b1)
        av = GemmVector(repeating: pa[4])
        c40 = c40.addingProduct(av, b0); c41 = c41.addingProduct(av, b1)
        av = GemmVector(repeating: pa[5])
        c50 = c50.addingProduct(av, b0); c51 = c51.addingProduct(av, b1)
        pa += 6
        pb += 2 * L
    }
    let va = GemmVector(repeating: alpha)
    storeRow(c00, c, alpha: va, beta: beta); storeRow(c01, c + L, alpha: va, beta: beta)
    var row = c + ldc
    storeRow(c10, row, alpha: va, beta: beta); storeRow(c11, row + L, alpha: va, beta: beta)
    row += ldc
    storeRow(c20, row, alpha: va, beta: beta); storeRow(c21, row + L, alpha: va, beta: beta)
    row += ldc
    storeRow(c30, row, alpha: va, beta: beta); storeRow(c31, row + L, alpha: va, beta: beta)
    row += ldc
    storeRow(c40, row, alpha: va, beta: beta); storeRow(c41, row + L, alpha: va, beta: beta)
    row += ldc
    storeRow(c50, row, alpha: va, beta: beta); storeRow(c51, row + L, alpha: va, beta: beta)
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
        let mr = min(MR, mc - ir)
        let panel = src + ir * rowStride
        if colStride == 1 {
            // Rows of A are contiguous in p: read MR rows side by side, write k-major.
            for i in 0..<MR {
                if i < mr {
                    let row = panel + i * rowStride
                    for p in 0..<kc { out[p * MR + i] = row[p] }
                } else {
                    for p in 0..<kc { out[p * MR + i] = 0 }
                }
            }
        } else {
            // Aᵀ: for each p the MR values are contiguous in memory.
            for p in 0..<kc {
                let col = panel + p * colStride
                let o = out + p * MR
                if mr == MR {
                    for i in 0..<MR { o[i] = col[i] }
                } else {
                    for i in 0..<mr { o[i] = col[i] }
                    for i in mr..<MR { o[i] = 0 }
                }
            }
        }
        out += MR * kc
        ir += MR
    }
}

/// Packs a kc×nc panel of op(B) into NR-column micro-panels (see the layout comment at the
/// top). Element (p, j) of the panel is src[p·rowStride + j·colStride]; one of the strides
/// is 1 (B as stored: colStride 1; Bᵀ: rowStride 1).
private func packBPanel(
    kc: Int, nc: Int, src: UnsafePointer<Float>, rowStride: Int, colStride: Int,
    dst: UnsafeMutablePointer<Float>
) {
    var jr = 0
    var out = dst
    while jr < nc {
        let nr = min(NR, nc - jr)
        let panel = src + jr * colStride
        if colStride == 1 {
            if nr == NR {
                // The hot case (im2col columns): two vector copies per row.
                for p in 0..<kc {
                    let s = UnsafeRawPointer(panel + p * rowStride)
                    let o = UnsafeMutableRawPointer(out + p * NR)
                    o.storeBytes(of: s.loadUnaligned(as: GemmVector.self), as: GemmVector.self)
                    o.storeBytes(of: s.loadUnaligned(fromByteOffset: L * 4, as: GemmVector.self),
                                 toByteOffset: L * 4, as: GemmVector.self)
                }
            } else {
                for p in 0..<kc {
                    let s = panel + p * rowStride, o = out + p * NR
                    for j in 0..<nr { o[j] = s[j] }
                    for j in nr..<NR { o[j] = 0 }
                }
            }
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

// MARK: - Per-thread workspace

/// Packing buffers for one thread: grown on demand, never shrunk, freed with the thread.
final class GemmWorkspace {
    private(set) var a: UnsafeMutablePointer<Float>
    private(set) var b: UnsafeMutablePointer<Float>
    let tile: UnsafeMutablePointer<Float>
    private var aCapacity = 0, bCapacity = 0

    init() {
        a = GemmWorkspace.allocate(0)
        b = GemmWorkspace.allocate(0)
        tile = GemmWorkspace.allocate(GemmBlocking.MR * GemmBlocking.NR)
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
