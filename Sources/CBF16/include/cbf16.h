// The x86 pieces Swift cannot express: CPUID / XGETBV for run-time feature detection, the
// bf16 GEMM micro-kernel (vdpbf16ps) and bf16 packing (vcvtne2ps2bf16), and sgemm's AVX-512
// tile (Swift's SIMD types compile to AVX2 in this build). The blocking, packing plan and
// threading stay in Swift (CnnCore/Gemm.swift, GemmBF16.swift); these are the innermost loops.
#ifndef CNN_CBF16_H
#define CNN_CBF16_H

#include <stdint.h>

/// Columns of the bf16 micro-tile: two 16-lane fp32 accumulators per row.
#define CNN_BF16_NR 32
/// Rows of the full bf16 micro-tile (tails use 8- and 4-row tiles).
#define CNN_BF16_MR 12

/// regs = {eax, ebx, ecx, edx} of CPUID(leaf, subleaf); all zero where CPUID does not exist
/// (non-x86 builds) or the leaf is above the CPU's maximum.
void cnn_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t regs[4]);

/// XCR0 (the register states the OS saves), or 0 when XGETBV is not available.
uint64_t cnn_xgetbv0(void);

/// One rows × CNN_BF16_NR tile, rows ∈ {4, 8, 12}: C = alpha · Σ_q A_q ⊗ B_q + beta · C, where
/// the packed panels hold bf16 pairs along K as 32-bit words:
///   a[q · rows + i]        = (A[i, 2q], A[i, 2q + 1])      low half first
///   b[q · CNN_BF16_NR + j] = (B[2q, j], B[2q + 1, j])
/// for q < pairs; b must be 64-byte aligned. beta == 0 does not read C. Each step is one
/// vdpbf16ps per accumulator (fp32 products of bf16 values, fp32 sums).
/// Only call when the CPU has AVX512F and AVX512_BF16 (and the OS saves the ZMM state).
void cnn_bf16_tile(int rows, long pairs, const uint32_t *a, const uint32_t *b, float *c, long ldc,
                   float alpha, float beta);

/// Packs `panels` whole CNN_BF16_NR-column micro-panels of a row-major fp32 block B
/// (kc rows, row stride ldb) in the layout of cnn_bf16_tile: panel s at dst + s · pairs · NR,
///   dst[s · pairs · NR + q · NR + j] = (bf16(B[2q, s·NR + j]), bf16(B[2q + 1, s·NR + j]))
/// with pairs = ⌈kc / 2⌉ and a zero partner for an odd kc. bf16() rounds to nearest even and
/// flushes subnormal inputs to zero (vcvtne2ps2bf16). dst must be 64-byte aligned.
/// Needs AVX512F, AVX512BW and AVX512_BF16.
void cnn_bf16_pack_b(long kc, long panels, const float *b, long ldb, uint32_t *dst);

/// cnn_bf16_tile that also prefetches a block of pf_rows rows of pf_row_bytes bytes each
/// (row r at (const char *)pf + r · pf_stride) into the cache, a few lines per K pair, while
/// it computes: the caller passes a share of the fp32 B block it packs next, or the next
/// tile's rows of C, so those memory reads overlap the arithmetic. Prefetches never fault,
/// so the block may extend past valid memory. Same results as cnn_bf16_tile.
void cnn_bf16_tile_prefetch(int rows, long pairs, const uint32_t *a, const uint32_t *b, float *c, long ldc,
                            float alpha, float beta, const void *pf, long pf_stride, long pf_row_bytes,
                            long pf_rows);

/// cnn_bf16_pack_b for op(B) = Bᵀ where B is stored N×K (row stride ldb): column j of
/// op(B) is the contiguous row b + j · ldb, so
///   dst[s · pairs · NR + q · NR + j] = (bf16(b[(s·NR + j)·ldb + 2q]), bf16(b[(s·NR + j)·ldb + 2q + 1]))
/// (reads only the kc floats of each row). Needs AVX512F, AVX512BW and AVX512_BF16.
void cnn_bf16_pack_bt(long kc, long panels, const float *b, long ldb, uint32_t *dst);

/// The fp32 GEMM's tile on AVX-512: rows ∈ {6, 4} × 32 columns, from two consecutive packed
/// 16-column B micro-panels of sgemm (b and b + 16 · kc) and one packed A micro-panel
/// (a[p · rows + i]); per element acc = fma(a, b, acc) over p in order from 0, then
/// C = alpha · acc, or fma(beta, C, alpha · acc): the bits of two AVX2 6×16 tiles.
/// Needs AVX512F.
void cnn_sgemm_tile_avx512(int rows, long kc, const float *a, const float *b, float *c, long ldc,
                           float alpha, float beta);

/// Packs one bf16 A micro-panel of `rows` (4, 8 or 12) rows, of which the first mr are
/// op(A)'s rows and the rest zero, in the layout of cnn_bf16_tile:
///   dst[q · rows + i] = (bf16(op(A)[i, 2q]), bf16(op(A)[i, 2q + 1]))   for q < ⌈kc / 2⌉
/// cnn_bf16_pack_a: A as stored, op(A)[i, p] = a[i · lda + p];
/// cnn_bf16_pack_at: A transposed, op(A)[i, p] = a[p · lda + i].
/// Reads only op(A)'s mr × kc floats. Needs AVX512F, AVX512BW and AVX512_BF16.
void cnn_bf16_pack_a(int rows, int mr, long kc, const float *a, long lda, uint32_t *dst);
void cnn_bf16_pack_at(int rows, int mr, long kc, const float *a, long lda, uint32_t *dst);
/// cnn_bf16_pack_a of bf16 words (A as stored, already rounded): dst[q · rows + i] =
/// (a[i · lda + 2q], a[i · lda + 2q + 1]), a zero partner for an odd kc.
void cnn_bf16_pack_a_h(int rows, int mr, long kc, const uint16_t *a, long lda, uint32_t *dst);

/// Converts fp32 B micro-panels of sgemm's layout (16 columns each: element (p, j) of panel u
/// at src[u · 16 · kc + p · 16 + j], `panels16` of them) into bf16 micro-panels of
/// cnn_bf16_tile's layout (32 columns: fp32 panels 2t and 2t + 1 make bf16 panel t, a missing
/// last one zero). Needs AVX512F, AVX512BW and AVX512_BF16.
void cnn_bf16_from_fp32_panels(long kc, long panels16, const float *src, uint32_t *dst);

/// One bf16 micro-panel of cnn_bf16_tile's layout straight from two fp32 row sources, the
/// packed-im2col case where each 16-column half of the panel is one contiguous run of every
/// panel row: for q < ⌈kc / 2⌉ and j < 16,
///   dst[q · 32 + j]      = (bf16(lo[offsets[2q] + j]), bf16(lo[offsets[2q + 1] + j]))
///   dst[q · 32 + 16 + j] = (bf16(hi[offsets[2q] + j]), bf16(hi[offsets[2q + 1] + j]))
/// with a zero partner for an odd kc (offsets[kc] is not read). The same bits as packing fp32
/// panels and cnn_bf16_from_fp32_panels, without the fp32 round trip. dst 64-byte aligned.
/// Needs AVX512F, AVX512BW and AVX512_BF16.
void cnn_bf16_pack_runs(long kc, const float *lo, const float *hi, const int32_t *offsets, uint32_t *dst);

/// One bf16 micro-panel of cnn_bf16_tile's layout from four 8-column chunks, each one
/// contiguous run of every panel row (packed im2col with output rows a multiple of 8 wide):
/// chunk c covers columns 8c ..< 8c + 8 and starts at xs + chunks[c]; for q < ⌈kc / 2⌉, j < 32,
///   dst[q · 32 + j] = (bf16(xs[chunks[j / 8] + offsets[2q] + j mod 8]),
///                      bf16(xs[chunks[j / 8] + offsets[2q + 1] + j mod 8]))
/// with a zero partner for an odd kc. dst 64-byte aligned. Needs AVX512F, AVX512BW and AVX512_BF16.
void cnn_bf16_pack_chunks(long kc, const float *xs, const int32_t *chunks, const int32_t *offsets, uint32_t *dst);

/// The transposed case (backward-weights: K runs over output pixels, the 32 columns over
/// panel rows): for kc a multiple of 8 and pixel chunks of 8 (chunk c, pixels 8c ..< 8c + 8 of
/// the K step, contiguous from xs + chunks[c]),
///   dst[q · 32 + j] = (bf16(xs[offsets[j] + chunks[2q / 8] + 2q mod 8]),
///                      bf16(xs[offsets[j] + chunks[2q / 8] + 2q mod 8 + 1]))   for q < kc / 2.
/// dst 64-byte aligned. Needs AVX512F, AVX512BW and AVX512_BF16.
void cnn_bf16_pack_chunks_t(long kc, const float *xs, const int32_t *chunks, const int32_t *offsets, uint32_t *dst);

/// bf16 phase planes (the input of packed im2col rounded once as it is copied, so the copy
/// writes and the packers read half the bytes): for c < planes, r < rows, i < width,
///   dst[c · dstPlaneStride + r · dstStride + i] = bf16(src[c · srcPlaneStride + r · srcStride + i])
/// with bf16() as in cnn_bf16_pack_b (the bits of the Swift `bf16Bits`); nothing else of dst is
/// written. Needs AVX512F, AVX512BW and AVX512_BF16.
void cnn_bf16_round_rows(long planes, long rows, long width, const float *src, long srcPlaneStride, long srcStride,
                         uint16_t *dst, long dstPlaneStride, long dstStride);

/// cnn_bf16_round_rows of words already rounded (a copy): dst[c · dstPlaneStride + r · dstStride
/// + i] = src[c · srcPlaneStride + r · srcStride + i]. Needs AVX512F and AVX512BW.
void cnn_bf16_copy_rows(long planes, long rows, long width, const uint16_t *src, long srcPlaneStride, long srcStride,
                        uint16_t *dst, long dstPlaneStride, long dstStride);

/// The same split by column parity (stride-2 phase planes): for c < planes, r < rows, with
/// s = src + c · srcPlaneStride + r · srcStride and o = c · dstPlaneStride + r · dstStride,
///   even[o + i] = bf16(s[2i])       i < ⌈width / 2⌉
///   odd[o + i]  = bf16(s[2i + 1])   i < ⌊width / 2⌋
/// Needs AVX512F, AVX512BW and AVX512_BF16.
void cnn_bf16_round_rows_deinterleave(long planes, long rows, long width, const float *src, long srcPlaneStride,
                                      long srcStride, uint16_t *even, uint16_t *odd, long dstPlaneStride,
                                      long dstStride);

/// cnn_bf16_pack_runs from bf16 sources (words already rounded): for q < ⌈kc / 2⌉, j < 16,
///   dst[q · 32 + j]      = (lo[offsets[2q] + j], lo[offsets[2q + 1] + j])
///   dst[q · 32 + 16 + j] = (hi[offsets[2q] + j], hi[offsets[2q + 1] + j])
/// with a zero partner for an odd kc. dst 64-byte aligned. Needs AVX512F, AVX512BW and AVX512_BF16.
void cnn_bf16_pack_runs_h(long kc, const uint16_t *lo, const uint16_t *hi, const int32_t *offsets, uint32_t *dst);

/// cnn_bf16_pack_chunks from bf16 sources, with n (1 ... 4) chunks: the columns past 8n are zero
/// (a panel narrower than 32 columns); for q < ⌈kc / 2⌉, j < 8n,
///   dst[q · 32 + j] = (xs[chunks[j / 8] + offsets[2q] + j mod 8], xs[chunks[j / 8] + offsets[2q + 1] + j mod 8])
/// with a zero partner for an odd kc. dst 64-byte aligned. Needs AVX512F, AVX512BW and AVX512_BF16.
void cnn_bf16_pack_chunks_h(long kc, int n, const uint16_t *xs, const int32_t *chunks, const int32_t *offsets,
                            uint32_t *dst);

/// cnn_bf16_pack_chunks_t from bf16 sources: for kc a multiple of 8 and q < kc / 2,
///   dst[q · 32 + j] = (xs[offsets[j] + chunks[2q / 8] + 2q mod 8], xs[offsets[j] + chunks[2q / 8] + 2q mod 8 + 1])
/// dst 64-byte aligned. Needs AVX512F, AVX512BW and AVX512_BF16.
void cnn_bf16_pack_chunks_t_h(long kc, const uint16_t *xs, const int32_t *chunks, const int32_t *offsets,
                              uint32_t *dst);

#endif
