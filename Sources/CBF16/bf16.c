#include "cbf16.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>

void cnn_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t regs[4]) {
    unsigned int a = 0, b = 0, c = 0, d = 0;
    unsigned int max = __get_cpuid_max(leaf & 0x80000000u, 0);
    if (max == 0 || leaf > max) { regs[0] = regs[1] = regs[2] = regs[3] = 0; return; }
    __cpuid_count(leaf, subleaf, a, b, c, d);
    regs[0] = a; regs[1] = b; regs[2] = c; regs[3] = d;
}

uint64_t cnn_xgetbv0(void) {
    uint32_t r[4];
    cnn_cpuid(1, 0, r);
    if (!(r[2] & (1u << 27))) return 0;   // OSXSAVE: XGETBV enabled by the OS
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

#define BF16_TARGET __attribute__((target("avx512f,avx512bf16")))

// The tile for a constant row count R: 2·R accumulators (24 of the 32 ZMM registers for
// R = 12), two B vectors per K pair, and A broadcast from memory (vpbroadcastd, or folded
// into vdpbf16ps as an embedded broadcast).
#define DEFINE_TILE(R)                                                                        \
BF16_TARGET static void tile##R(long pairs, const uint32_t *a, const uint32_t *b, float *c,    \
                                long ldc, float alpha, float beta) {                          \
    __m512 acc0[R], acc1[R];                                                                  \
    _Pragma("clang loop unroll(full)")                                                        \
    for (int i = 0; i < R; i++) { acc0[i] = _mm512_setzero_ps(); acc1[i] = _mm512_setzero_ps(); } \
    for (long q = 0; q < pairs; q++) {                                                        \
        __m512bh b0 = (__m512bh)_mm512_load_si512((const void *)b);                            \
        __m512bh b1 = (__m512bh)_mm512_load_si512((const void *)(b + 16));                     \
        _Pragma("clang loop unroll(full)")                                                    \
        for (int i = 0; i < R; i++) {                                                         \
            __m512bh ai = (__m512bh)_mm512_set1_epi32((int)a[i]);                              \
            acc0[i] = _mm512_dpbf16_ps(acc0[i], ai, b0);                                      \
            acc1[i] = _mm512_dpbf16_ps(acc1[i], ai, b1);                                      \
        }                                                                                     \
        a += R;                                                                               \
        b += CNN_BF16_NR;                                                                     \
    }                                                                                         \
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);                             \
    _Pragma("clang loop unroll(full)")                                                        \
    for (int i = 0; i < R; i++) {                                                             \
        float *row = c + i * ldc;                                                             \
        __m512 r0 = _mm512_mul_ps(acc0[i], va), r1 = _mm512_mul_ps(acc1[i], va);              \
        if (beta != 0) {                                                                      \
            r0 = _mm512_fmadd_ps(vb, _mm512_loadu_ps(row), r0);                               \
            r1 = _mm512_fmadd_ps(vb, _mm512_loadu_ps(row + 16), r1);                          \
        }                                                                                     \
        _mm512_storeu_ps(row, r0);                                                            \
        _mm512_storeu_ps(row + 16, r1);                                                       \
    }                                                                                         \
}

DEFINE_TILE(4)
DEFINE_TILE(8)
DEFINE_TILE(12)

#define FP32_TARGET __attribute__((target("avx512f")))

#define DEFINE_SGEMM_TILE(R)                                                                  \
FP32_TARGET static void sgemm_tile##R(long kc, const float *a, const float *b, float *c,       \
                                      long ldc, float alpha, float beta) {                    \
    const float *b1 = b + 16 * kc;                                                            \
    __m512 acc0[R], acc1[R];                                                                  \
    _Pragma("clang loop unroll(full)")                                                        \
    for (int i = 0; i < R; i++) { acc0[i] = _mm512_setzero_ps(); acc1[i] = _mm512_setzero_ps(); } \
    for (long p = 0; p < kc; p++) {                                                           \
        __m512 x0 = _mm512_loadu_ps(b + 16 * p), x1 = _mm512_loadu_ps(b1 + 16 * p);            \
        _Pragma("clang loop unroll(full)")                                                    \
        for (int i = 0; i < R; i++) {                                                         \
            __m512 av = _mm512_set1_ps(a[i]);                                                 \
            acc0[i] = _mm512_fmadd_ps(av, x0, acc0[i]);                                       \
            acc1[i] = _mm512_fmadd_ps(av, x1, acc1[i]);                                       \
        }                                                                                     \
        a += R;                                                                               \
    }                                                                                         \
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);                             \
    _Pragma("clang loop unroll(full)")                                                        \
    for (int i = 0; i < R; i++) {                                                             \
        float *row = c + i * ldc;                                                             \
        __m512 r0 = _mm512_mul_ps(acc0[i], va), r1 = _mm512_mul_ps(acc1[i], va);              \
        if (beta != 0) {                                                                      \
            r0 = _mm512_fmadd_ps(vb, _mm512_loadu_ps(row), r0);                               \
            r1 = _mm512_fmadd_ps(vb, _mm512_loadu_ps(row + 16), r1);                          \
        }                                                                                     \
        _mm512_storeu_ps(row, r0);                                                            \
        _mm512_storeu_ps(row + 16, r1);                                                       \
    }                                                                                         \
}

DEFINE_SGEMM_TILE(4)
DEFINE_SGEMM_TILE(6)

void cnn_sgemm_tile_avx512(int rows, long kc, const float *a, const float *b, float *c, long ldc,
                           float alpha, float beta) {
    if (rows == 6) sgemm_tile6(kc, a, b, c, ldc, alpha, beta);
    else sgemm_tile4(kc, a, b, c, ldc, alpha, beta);
}

#define PACK_TARGET __attribute__((target("avx512f,avx512bw,avx512bf16")))

PACK_TARGET void cnn_bf16_pack_b(long kc, long panels, const float *b, long ldb, uint32_t *dst) {
    const long pairs = (kc + 1) / 2;
    // vcvtne2ps2bf16 gives [bf16(lo) 0..15 | bf16(hi) 0..15]; vpermw interleaves them into
    // 16 words (lo_j, hi_j).
    const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                                23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    // A few panels at a time: each source row is read as one run, and few output streams are open.
    const long chunk = 4;
    for (long s0 = 0; s0 < panels; s0 += chunk) {
        const long s1 = s0 + chunk < panels ? s0 + chunk : panels;
        for (long q = 0; q < pairs; q++) {
            const float *even = b + 2 * q * ldb;
            const float *odd = 2 * q + 1 < kc ? even + ldb : 0;
            for (long s = s0; s < s1; s++) {
                uint32_t *o = dst + (s * pairs + q) * CNN_BF16_NR;
                for (int h = 0; h < CNN_BF16_NR / 16; h++) {
                    const long col = s * CNN_BF16_NR + 16 * h;
                    __m512 lo = _mm512_loadu_ps(even + col);
                    __m512 hi = odd ? _mm512_loadu_ps(odd + col) : _mm512_setzero_ps();
                    __m512i both = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
                    _mm512_store_si512((void *)(o + 16 * h), _mm512_permutexvar_epi16(interleave, both));
                }
            }
        }
    }
}

// The tile of DEFINE_TILE with a prefetch stream woven into its K loop: while the tile
// computes, the rows of a strided block that the caller touches next (its share of the fp32
// source of the next B block, or the next tile's rows of C) travel from memory into the
// cache. Each pair issues `per` of the block's lines, walked row by row.
#define DEFINE_TILE_PREFETCH(R)                                                               \
BF16_TARGET static void tile##R##_prefetch(long pairs, const uint32_t *a, const uint32_t *b,   \
                                           float *c, long ldc, float alpha, float beta,       \
                                           const char *pf, long pf_stride, long pf_lines,     \
                                           long pf_rows, long per) {                          \
    __m512 acc0[R], acc1[R];                                                                  \
    _Pragma("clang loop unroll(full)")                                                        \
    for (int i = 0; i < R; i++) { acc0[i] = _mm512_setzero_ps(); acc1[i] = _mm512_setzero_ps(); } \
    long line = 0, row = 0;                                                                   \
    for (long q = 0; q < pairs; q++) {                                                        \
        for (long t = 0; t < per && row < pf_rows; t++) {                                     \
            _mm_prefetch(pf + row * pf_stride + 64 * line, _MM_HINT_T0);                      \
            if (++line == pf_lines) { line = 0; row++; }                                      \
        }                                                                                     \
        __m512bh b0 = (__m512bh)_mm512_load_si512((const void *)b);                            \
        __m512bh b1 = (__m512bh)_mm512_load_si512((const void *)(b + 16));                     \
        _Pragma("clang loop unroll(full)")                                                    \
        for (int i = 0; i < R; i++) {                                                         \
            __m512bh ai = (__m512bh)_mm512_set1_epi32((int)a[i]);                              \
            acc0[i] = _mm512_dpbf16_ps(acc0[i], ai, b0);                                      \
            acc1[i] = _mm512_dpbf16_ps(acc1[i], ai, b1);                                      \
        }                                                                                     \
        a += R;                                                                               \
        b += CNN_BF16_NR;                                                                     \
    }                                                                                         \
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);                             \
    _Pragma("clang loop unroll(full)")                                                        \
    for (int i = 0; i < R; i++) {                                                             \
        float *row = c + i * ldc;                                                             \
        __m512 r0 = _mm512_mul_ps(acc0[i], va), r1 = _mm512_mul_ps(acc1[i], va);              \
        if (beta != 0) {                                                                      \
            r0 = _mm512_fmadd_ps(vb, _mm512_loadu_ps(row), r0);                               \
            r1 = _mm512_fmadd_ps(vb, _mm512_loadu_ps(row + 16), r1);                          \
        }                                                                                     \
        _mm512_storeu_ps(row, r0);                                                            \
        _mm512_storeu_ps(row + 16, r1);                                                       \
    }                                                                                         \
}

DEFINE_TILE_PREFETCH(4)
DEFINE_TILE_PREFETCH(8)
DEFINE_TILE_PREFETCH(12)

void cnn_bf16_tile_prefetch(int rows, long pairs, const uint32_t *a, const uint32_t *b, float *c, long ldc,
                            float alpha, float beta, const void *pf, long pf_stride, long pf_row_bytes,
                            long pf_rows) {
    // Whole cache lines from the first touched one to the last of each row.
    const long skew = (long)((uintptr_t)pf & 63);
    const char *start = (const char *)pf - skew;
    const long lines = pf_rows > 0 ? (skew + pf_row_bytes + 63) / 64 : 0;
    const long total = lines * pf_rows, per = pairs > 0 ? (total + pairs - 1) / pairs : 0;
    switch (rows) {
    case 12: tile12_prefetch(pairs, a, b, c, ldc, alpha, beta, start, pf_stride, lines, pf_rows, per); break;
    case 8: tile8_prefetch(pairs, a, b, c, ldc, alpha, beta, start, pf_stride, lines, pf_rows, per); break;
    default: tile4_prefetch(pairs, a, b, c, ldc, alpha, beta, start, pf_stride, lines, pf_rows, per); break;
    }
}

// r[i] (16 dwords each) becomes its transpose: r[q] lane i = old r[i] lane q.
PACK_TARGET static inline void transpose16x16(__m512i r[16]) {
    __m512i t[16], u[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        u[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        u[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        u[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        u[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    // u[4g + c] holds, per 128-bit lane L, rows 4g..4g+3 of column 4L + c.
    for (int g = 0; g < 4; g += 2) {
        for (int c = 0; c < 4; c++) {
            t[4 * g + c] = _mm512_shuffle_i32x4(u[4 * g + c], u[4 * g + 4 + c], 0x88);
            t[4 * g + 4 + c] = _mm512_shuffle_i32x4(u[4 * g + c], u[4 * g + 4 + c], 0xDD);
        }
    }
    for (int c = 0; c < 8; c++) {
        r[c] = _mm512_shuffle_i32x4(t[c], t[8 + c], 0x88);
        r[8 + c] = _mm512_shuffle_i32x4(t[c], t[8 + c], 0xDD);
    }
}

PACK_TARGET void cnn_bf16_pack_bt(long kc, long panels, const float *b, long ldb, uint32_t *dst) {
    const long pairs = (kc + 1) / 2;
    for (long s = 0; s < panels; s++) {
        uint32_t *out = dst + s * pairs * CNN_BF16_NR;
        // 16 pairs (32 floats of K) of 32 columns at a time: each column's floats converted in
        // one vcvtne2ps2bf16 are its 16 words in pair order, then two 16×16 transposes.
        for (long p0 = 0; p0 < kc; p0 += 32) {
            const long left = kc - p0;
            const __mmask16 m0 = left >= 16 ? 0xFFFF : (__mmask16)((1u << left) - 1);
            const __mmask16 m1 = left >= 32 ? 0xFFFF : (left <= 16 ? 0 : (__mmask16)((1u << (left - 16)) - 1));
            const long q0 = p0 / 2, count = pairs - q0 < 16 ? pairs - q0 : 16;
            for (int h = 0; h < CNN_BF16_NR / 16; h++) {
                __m512i r[16];
                for (int j = 0; j < 16; j++) {
                    const float *row = b + (s * CNN_BF16_NR + 16 * h + j) * ldb + p0;
                    __m512 lo = _mm512_maskz_loadu_ps(m0, row), hi = _mm512_maskz_loadu_ps(m1, row + 16);
                    r[j] = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
                }
                transpose16x16(r);
                for (long q = 0; q < count; q++) {
                    _mm512_store_si512((void *)(out + (q0 + q) * CNN_BF16_NR + 16 * h), r[q]);
                }
            }
        }
    }
}

// r[0..7] (16 dwords each: row i's pairs q = 0..15) become 8 vectors of two pairs each:
// o[k] = (rows 0..7 of pair q, rows 0..7 of pair q + 1) for q = 2k, the 8-row panel layout of
// two consecutive pairs. Half the shuffles of transpose16x16 with 8 rows of zeros.
PACK_TARGET static inline void transpose8x16(const __m512i r[8], __m512i o[8]) {
    __m512i t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    // u[4h + c], per 128-bit lane L: rows 4h..4h+3 of pair 4L + c.
    for (int h = 0; h < 2; h++) {
        u[4 * h] = _mm512_unpacklo_epi64(t[4 * h], t[4 * h + 2]);
        u[4 * h + 1] = _mm512_unpackhi_epi64(t[4 * h], t[4 * h + 2]);
        u[4 * h + 2] = _mm512_unpacklo_epi64(t[4 * h + 1], t[4 * h + 3]);
        u[4 * h + 3] = _mm512_unpackhi_epi64(t[4 * h + 1], t[4 * h + 3]);
    }
    for (int c = 0; c < 4; c += 2) {
        // Lanes (A0 A1 B0 B1) / (A2 A3 B2 B3) of pair column c and of c + 1 (A: rows 0..3, B: 4..7).
        __m512i x01 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x44), x23 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xEE);
        __m512i y01 = _mm512_shuffle_i32x4(u[c + 1], u[5 + c], 0x44), y23 = _mm512_shuffle_i32x4(u[c + 1], u[5 + c], 0xEE);
        // Pair 4L + c with 4L + c + 1: (A_L B_L A'_L B'_L), stored as o[(4L + c) / 2].
        o[c / 2] = _mm512_shuffle_i32x4(x01, y01, 0x88);
        o[2 + c / 2] = _mm512_shuffle_i32x4(x01, y01, 0xDD);
        o[4 + c / 2] = _mm512_shuffle_i32x4(x23, y23, 0x88);
        o[6 + c / 2] = _mm512_shuffle_i32x4(x23, y23, 0xDD);
    }
}

PACK_TARGET void cnn_bf16_pack_a(int rows, int mr, long kc, const float *a, long lda, uint32_t *dst) {
    const long pairs = (kc + 1) / 2;
    const __mmask16 out = (__mmask16)((1u << rows) - 1);
    if (rows == 8) {
        for (long p0 = 0; p0 < kc; p0 += 32) {
            const long left = kc - p0;
            const __mmask16 m0 = left >= 16 ? 0xFFFF : (__mmask16)((1u << left) - 1);
            const __mmask16 m1 = left >= 32 ? 0xFFFF : (left <= 16 ? 0 : (__mmask16)((1u << (left - 16)) - 1));
            const long q0 = p0 / 2, count = pairs - q0 < 16 ? pairs - q0 : 16;
            __m512i r[8], o[8];
            for (int i = 0; i < 8; i++) {
                if (i < mr) {
                    const float *row = a + i * lda + p0;
                    r[i] = (__m512i)_mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(m1, row + 16), _mm512_maskz_loadu_ps(m0, row));
                } else {
                    r[i] = _mm512_setzero_si512();
                }
            }
            transpose8x16(r, o);
            for (long k = 0; 2 * k < count; k++) {
                _mm512_mask_storeu_epi32(dst + (q0 + 2 * k) * 8, 2 * k + 1 < count ? 0xFFFF : 0x00FF, o[k]);
            }
        }
        return;
    }
    // 16 pairs at a time: each row's 32 floats converted are its 16 words in pair order;
    // a 16×16 transpose turns rows into pair-major order.
    for (long p0 = 0; p0 < kc; p0 += 32) {
        const long left = kc - p0;
        const __mmask16 m0 = left >= 16 ? 0xFFFF : (__mmask16)((1u << left) - 1);
        const __mmask16 m1 = left >= 32 ? 0xFFFF : (left <= 16 ? 0 : (__mmask16)((1u << (left - 16)) - 1));
        const long q0 = p0 / 2, count = pairs - q0 < 16 ? pairs - q0 : 16;
        __m512i r[16];
        for (int i = 0; i < 16; i++) {
            if (i < mr) {
                const float *row = a + i * lda + p0;
                r[i] = (__m512i)_mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(m1, row + 16), _mm512_maskz_loadu_ps(m0, row));
            } else {
                r[i] = _mm512_setzero_si512();
            }
        }
        transpose16x16(r);
        for (long q = 0; q < count; q++) _mm512_mask_storeu_epi32(dst + (q0 + q) * rows, out, r[q]);
    }
}

// cnn_bf16_pack_a from bf16 words: each row's 32 words are its 16 pairs already, so the
// same transposes without the conversion.
PACK_TARGET void cnn_bf16_pack_a_h(int rows, int mr, long kc, const uint16_t *a, long lda, uint32_t *dst) {
    const long pairs = (kc + 1) / 2;
    const __mmask16 out = (__mmask16)((1u << rows) - 1);
    for (long p0 = 0; p0 < kc; p0 += 32) {
        const long left = kc - p0;
        const __mmask32 m = left >= 32 ? 0xFFFFFFFFu : (__mmask32)((1u << left) - 1);
        const long q0 = p0 / 2, count = pairs - q0 < 16 ? pairs - q0 : 16;
        if (rows == 8) {
            __m512i r[8], o[8];
            for (int i = 0; i < 8; i++) r[i] = i < mr ? _mm512_maskz_loadu_epi16(m, a + i * lda + p0) : _mm512_setzero_si512();
            transpose8x16(r, o);
            for (long k = 0; 2 * k < count; k++) {
                _mm512_mask_storeu_epi32(dst + (q0 + 2 * k) * 8, 2 * k + 1 < count ? 0xFFFF : 0x00FF, o[k]);
            }
            continue;
        }
        __m512i r[16];
        for (int i = 0; i < 16; i++) r[i] = i < mr ? _mm512_maskz_loadu_epi16(m, a + i * lda + p0) : _mm512_setzero_si512();
        transpose16x16(r);
        for (long q = 0; q < count; q++) _mm512_mask_storeu_epi32(dst + (q0 + q) * rows, out, r[q]);
    }
}

PACK_TARGET void cnn_bf16_copy_rows(long planes, long rows, long width, const uint16_t *src, long srcPlaneStride,
                                    long srcStride, uint16_t *dst, long dstPlaneStride, long dstStride) {
    for (long c = 0; c < planes; c++) {
        for (long r = 0; r < rows; r++) {
            const uint16_t *s = src + c * srcPlaneStride + r * srcStride;
            uint16_t *d = dst + c * dstPlaneStride + r * dstStride;
            // The same row of the next plane, as cnn_bf16_round_rows does.
            for (long i = 0; i < width; i += 32) _mm_prefetch((const char *)(s + srcPlaneStride + i), _MM_HINT_T0);
            long i = 0;
            // Whole vectors unmasked: masked 16-bit stores cost several times a plain one.
            for (; i + 32 <= width; i += 32) _mm512_storeu_si512((void *)(d + i), _mm512_loadu_si512((const void *)(s + i)));
            for (; i + 16 <= width; i += 16) _mm256_storeu_si256((__m256i *)(d + i), _mm256_loadu_si256((const __m256i *)(s + i)));
            if (i < width) {
                const __mmask32 m = (__mmask32)((1u << (width - i)) - 1);
                _mm512_mask_storeu_epi16((void *)(d + i), m, _mm512_maskz_loadu_epi16(m, s + i));
            }
        }
    }
}

PACK_TARGET void cnn_bf16_pack_at(int rows, int mr, long kc, const float *a, long lda, uint32_t *dst) {
    const long pairs = (kc + 1) / 2;
    const __mmask16 out = (__mmask16)((1u << rows) - 1), valid = (__mmask16)((1u << mr) - 1);
    const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                                23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    for (long q = 0; q < pairs; q++) {
        __m512 lo = _mm512_maskz_loadu_ps(valid, a + 2 * q * lda);
        __m512 hi = 2 * q + 1 < kc ? _mm512_maskz_loadu_ps(valid, a + (2 * q + 1) * lda) : _mm512_setzero_ps();
        __m512i both = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
        _mm512_mask_storeu_epi32(dst + q * rows, out, _mm512_permutexvar_epi16(interleave, both));
    }
}

PACK_TARGET void cnn_bf16_from_fp32_panels(long kc, long panels16, const float *src, uint32_t *dst) {
    const long pairs = (kc + 1) / 2;
    const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                                23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    for (long t = 0; 2 * t < panels16; t++) {
        uint32_t *out = dst + t * pairs * CNN_BF16_NR;
        for (int h = 0; h < 2; h++) {
            const long u = 2 * t + h;
            if (u >= panels16) {
                for (long q = 0; q < pairs; q++) _mm512_store_si512((void *)(out + q * CNN_BF16_NR + 16), _mm512_setzero_si512());
                continue;
            }
            const float *panel = src + u * 16 * kc;
            for (long q = 0; q < pairs; q++) {
                __m512 lo = _mm512_loadu_ps(panel + 2 * q * 16);
                __m512 hi = 2 * q + 1 < kc ? _mm512_loadu_ps(panel + (2 * q + 1) * 16) : _mm512_setzero_ps();
                __m512i both = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
                _mm512_store_si512((void *)(out + q * CNN_BF16_NR + 16 * h), _mm512_permutexvar_epi16(interleave, both));
            }
        }
    }
}

PACK_TARGET void cnn_bf16_pack_runs(long kc, const float *lo, const float *hi, const int32_t *offsets,
                                    uint32_t *dst) {
    const long pairs = (kc + 1) / 2;
    const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                                23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    for (long q = 0; q < pairs; q++) {
        const long even = offsets[2 * q];
        const int odd = 2 * q + 1 < kc;
        const long next = odd ? offsets[2 * q + 1] : 0;
        __m512 l0 = _mm512_loadu_ps(lo + even), h0 = _mm512_loadu_ps(hi + even);
        __m512 l1 = odd ? _mm512_loadu_ps(lo + next) : _mm512_setzero_ps();
        __m512 h1 = odd ? _mm512_loadu_ps(hi + next) : _mm512_setzero_ps();
        _mm512_store_si512((void *)(dst + q * CNN_BF16_NR),
                           _mm512_permutexvar_epi16(interleave, (__m512i)_mm512_cvtne2ps_pbh(l1, l0)));
        _mm512_store_si512((void *)(dst + q * CNN_BF16_NR + 16),
                           _mm512_permutexvar_epi16(interleave, (__m512i)_mm512_cvtne2ps_pbh(h1, h0)));
    }
}

// 16 floats from two 8-float chunks (each one run of an output row).
PACK_TARGET static inline __m512 join_halves(__m256 lo, __m256 hi) {
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(lo)), _mm256_castps_pd(hi), 1));
}

PACK_TARGET static inline __m512 load_chunks(const float *c0, const float *c1) {
    return join_halves(_mm256_loadu_ps(c0), _mm256_loadu_ps(c1));
}

PACK_TARGET void cnn_bf16_pack_chunks(long kc, const float *xs, const int32_t *chunks, const int32_t *offsets,
                                      uint32_t *dst) {
    const long pairs = (kc + 1) / 2;
    const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                                23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const float *c0 = xs + chunks[0], *c1 = xs + chunks[1], *c2 = xs + chunks[2], *c3 = xs + chunks[3];
    for (long q = 0; q < pairs; q++) {
        const long even = offsets[2 * q];
        const int odd = 2 * q + 1 < kc;
        const long next = odd ? offsets[2 * q + 1] : 0;
        __m512 l0 = load_chunks(c0 + even, c1 + even), h0 = load_chunks(c2 + even, c3 + even);
        __m512 l1 = odd ? load_chunks(c0 + next, c1 + next) : _mm512_setzero_ps();
        __m512 h1 = odd ? load_chunks(c2 + next, c3 + next) : _mm512_setzero_ps();
        _mm512_store_si512((void *)(dst + q * CNN_BF16_NR),
                           _mm512_permutexvar_epi16(interleave, (__m512i)_mm512_cvtne2ps_pbh(l1, l0)));
        _mm512_store_si512((void *)(dst + q * CNN_BF16_NR + 16),
                           _mm512_permutexvar_epi16(interleave, (__m512i)_mm512_cvtne2ps_pbh(h1, h0)));
    }
}

PACK_TARGET void cnn_bf16_pack_chunks_t(long kc, const float *xs, const int32_t *chunks, const int32_t *offsets,
                                        uint32_t *dst) {
    const long pairs = kc / 2;
    // 32 pixels (16 pairs) of 16 columns at a time: column j's 32 pixel floats converted in one
    // vcvtne2ps2bf16 are its 16 words in pair order (pixels 2q, 2q + 1 are neighbours in one
    // output row), then a 16×16 transpose makes them pair-major.
    for (long p0 = 0; p0 < kc; p0 += 32) {
        const long q0 = p0 / 2, count = pairs - q0 < 16 ? pairs - q0 : 16;
        const long c = p0 / 8, have = (kc - p0) / 8;   // whole chunks left in this step (1..4)
        const long k0 = chunks[c], k1 = have > 1 ? chunks[c + 1] : 0;
        const long k2 = have > 2 ? chunks[c + 2] : 0, k3 = have > 3 ? chunks[c + 3] : 0;
        for (int h = 0; h < CNN_BF16_NR / 16; h++) {
            __m512i r[16];
            for (int j = 0; j < 16; j++) {
                const float *row = xs + offsets[16 * h + j];
                __m512 lo, hi;
                if (have >= 4) {
                    lo = load_chunks(row + k0, row + k1);
                    hi = load_chunks(row + k2, row + k3);
                } else {
                    __m256 z = _mm256_setzero_ps();
                    lo = join_halves(_mm256_loadu_ps(row + k0), have > 1 ? _mm256_loadu_ps(row + k1) : z);
                    hi = join_halves(have > 2 ? _mm256_loadu_ps(row + k2) : z, z);
                }
                r[j] = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
            }
            transpose16x16(r);
            for (long q = 0; q < count; q++) {
                _mm512_store_si512((void *)(dst + (q0 + q) * CNN_BF16_NR + 16 * h), r[q]);
            }
        }
    }
}

// bf16 phase planes: the input rounded once as it is copied, then packed from 16-bit words.

PACK_TARGET void cnn_bf16_round_rows(long planes, long rows, long width, const float *src, long srcPlaneStride,
                                     long srcStride, uint16_t *dst, long dstPlaneStride, long dstStride) {
    for (long c = 0; c < planes; c++) {
        for (long r = 0; r < rows; r++) {
            const float *s = src + c * srcPlaneStride + r * srcStride;
            uint16_t *d = dst + c * dstPlaneStride + r * dstStride;
            // The same row of the next plane: a plane is often one 4 KiB page or less, and the
            // hardware prefetchers stop at page ends.
            for (long i = 0; i < width; i += 16) _mm_prefetch((const char *)(s + srcPlaneStride + i), _MM_HINT_T0);
            long i = 0;
            for (; i + 32 <= width; i += 32) {
                __m512bh both = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(s + i + 16), _mm512_loadu_ps(s + i));
                _mm512_storeu_si512((void *)(d + i), (__m512i)both);
            }
            for (; i < width; i += 16) {
                const long left = width - i;
                const __mmask16 m = left >= 16 ? 0xFFFF : (__mmask16)((1u << left) - 1);
                __m256bh h = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, s + i));
                // A 512-bit masked store (AVX512BW) with the upper 16 words masked off: no AVX512VL needed.
                _mm512_mask_storeu_epi16((void *)(d + i), (__mmask32)m, _mm512_castsi256_si512((__m256i)h));
            }
        }
    }
}

PACK_TARGET void cnn_bf16_round_rows_deinterleave(long planes, long rows, long width, const float *src,
                                                  long srcPlaneStride, long srcStride, uint16_t *even, uint16_t *odd,
                                                  long dstPlaneStride, long dstStride) {
    // Words 0..15: the even columns of a 32-float step, 16..31: the odd ones.
    const __m512i split = _mm512_set_epi16(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1,
                                           30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    for (long c = 0; c < planes; c++) {
        for (long r = 0; r < rows; r++) {
            const float *s = src + c * srcPlaneStride + r * srcStride;
            uint16_t *e = even + c * dstPlaneStride + r * dstStride, *o = odd + c * dstPlaneStride + r * dstStride;
            for (long i = 0; i < width; i += 16) _mm_prefetch((const char *)(s + srcPlaneStride + i), _MM_HINT_T0);
            for (long i = 0; i < width; i += 32) {
                const long left = width - i;
                const __mmask16 m0 = left >= 16 ? 0xFFFF : (__mmask16)((1u << left) - 1);
                const __mmask16 m1 = left >= 32 ? 0xFFFF : (left <= 16 ? 0 : (__mmask16)((1u << (left - 16)) - 1));
                __m512i both = (__m512i)_mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(m1, s + i + 16),
                                                            _mm512_maskz_loadu_ps(m0, s + i));
                __m512i parts = _mm512_permutexvar_epi16(split, both);
                const long ne = left >= 32 ? 16 : (left + 1) / 2, no = left >= 32 ? 16 : left / 2;
                _mm512_mask_storeu_epi16((void *)(e + i / 2), (__mmask32)((1u << ne) - 1), parts);
                _mm512_mask_storeu_epi16((void *)(o + i / 2), (__mmask32)((1u << no) - 1),
                                         _mm512_castsi256_si512(_mm512_extracti64x4_epi64(parts, 1)));
            }
        }
    }
}

// (a[j], b[j]) word pairs for j < 16 from the low 16 words of a and of b.
#define PAIR_WORDS_INDEX _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, \
                                          39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0)

PACK_TARGET void cnn_bf16_pack_runs_h(long kc, const uint16_t *lo, const uint16_t *hi, const int32_t *offsets,
                                      uint32_t *dst) {
    const long pairs = (kc + 1) / 2;
    const __m512i pair = PAIR_WORDS_INDEX;
    for (long q = 0; q < pairs; q++) {
        const long even = offsets[2 * q];
        const int odd = 2 * q + 1 < kc;
        const long next = odd ? offsets[2 * q + 1] : 0;
        __m512i l0 = _mm512_castsi256_si512(_mm256_loadu_si256((const void *)(lo + even)));
        __m512i h0 = _mm512_castsi256_si512(_mm256_loadu_si256((const void *)(hi + even)));
        __m512i l1 = odd ? _mm512_castsi256_si512(_mm256_loadu_si256((const void *)(lo + next))) : _mm512_setzero_si512();
        __m512i h1 = odd ? _mm512_castsi256_si512(_mm256_loadu_si256((const void *)(hi + next))) : _mm512_setzero_si512();
        _mm512_store_si512((void *)(dst + q * CNN_BF16_NR), _mm512_permutex2var_epi16(l0, pair, l1));
        _mm512_store_si512((void *)(dst + q * CNN_BF16_NR + 16), _mm512_permutex2var_epi16(h0, pair, h1));
    }
}

// 16 words from two 8-word chunks.
PACK_TARGET static inline __m512i load_word_chunks(const uint16_t *c0, const uint16_t *c1) {
    return _mm512_castsi256_si512(_mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128((const void *)c0)), _mm_loadu_si128((const void *)c1), 1));
}

// cnn_bf16_pack_chunks_h for a constant count of chunks n (1..4): the columns past 8n are zero.
PACK_TARGET static inline __attribute__((always_inline))
void pack_word_chunks(long kc, int n, const uint16_t *xs, const int32_t *chunks, const int32_t *offsets,
                      uint32_t *dst) {
    const long pairs = (kc + 1) / 2;
    const __m512i pair = PAIR_WORDS_INDEX;
    const uint16_t *c0 = xs + chunks[0];
    const uint16_t *c1 = n > 1 ? xs + chunks[1] : c0, *c2 = n > 2 ? xs + chunks[2] : c0, *c3 = n > 3 ? xs + chunks[3] : c0;
    for (long q = 0; q < pairs; q++) {
        const long even = offsets[2 * q];
        const int odd = 2 * q + 1 < kc;
        const long next = odd ? offsets[2 * q + 1] : 0;
        __m512i l0, l1, h0 = _mm512_setzero_si512(), h1 = _mm512_setzero_si512();
        if (n > 1) {
            l0 = load_word_chunks(c0 + even, c1 + even);
            l1 = odd ? load_word_chunks(c0 + next, c1 + next) : _mm512_setzero_si512();
        } else {
            l0 = _mm512_zextsi128_si512(_mm_loadu_si128((const void *)(c0 + even)));
            l1 = odd ? _mm512_zextsi128_si512(_mm_loadu_si128((const void *)(c0 + next))) : _mm512_setzero_si512();
        }
        if (n > 3) {
            h0 = load_word_chunks(c2 + even, c3 + even);
            h1 = odd ? load_word_chunks(c2 + next, c3 + next) : _mm512_setzero_si512();
        } else if (n > 2) {
            h0 = _mm512_zextsi128_si512(_mm_loadu_si128((const void *)(c2 + even)));
            h1 = odd ? _mm512_zextsi128_si512(_mm_loadu_si128((const void *)(c2 + next))) : _mm512_setzero_si512();
        }
        _mm512_store_si512((void *)(dst + q * CNN_BF16_NR), _mm512_permutex2var_epi16(l0, pair, l1));
        _mm512_store_si512((void *)(dst + q * CNN_BF16_NR + 16), _mm512_permutex2var_epi16(h0, pair, h1));
    }
}

PACK_TARGET void cnn_bf16_pack_chunks_h(long kc, int n, const uint16_t *xs, const int32_t *chunks,
                                        const int32_t *offsets, uint32_t *dst) {
    switch (n) {
    case 4: pack_word_chunks(kc, 4, xs, chunks, offsets, dst); break;
    case 3: pack_word_chunks(kc, 3, xs, chunks, offsets, dst); break;
    case 2: pack_word_chunks(kc, 2, xs, chunks, offsets, dst); break;
    default: pack_word_chunks(kc, 1, xs, chunks, offsets, dst); break;
    }
}

PACK_TARGET void cnn_bf16_pack_chunks_t_h(long kc, const uint16_t *xs, const int32_t *chunks, const int32_t *offsets,
                                          uint32_t *dst) {
    const long pairs = kc / 2;
    // 32 pixels (16 pairs) of 16 columns at a time: column j's 32 pixel words are its 16 pairs
    // in order (pixels 2q, 2q + 1 are neighbours in one output row), so one 64-byte row per
    // column (one load when the four chunks are contiguous), then a 16×16 transpose.
    for (long p0 = 0; p0 < kc; p0 += 32) {
        const long q0 = p0 / 2, count = pairs - q0 < 16 ? pairs - q0 : 16;
        const long c = p0 / 8, have = (kc - p0) / 8;   // whole chunks left in this step (1..4)
        const long k0 = chunks[c], k1 = have > 1 ? chunks[c + 1] : 0;
        const long k2 = have > 2 ? chunks[c + 2] : 0, k3 = have > 3 ? chunks[c + 3] : 0;
        const int contiguous = have >= 4 && k1 == k0 + 8 && k2 == k0 + 16 && k3 == k0 + 24;
        for (int h = 0; h < CNN_BF16_NR / 16; h++) {
            __m512i r[16];
            for (int j = 0; j < 16; j++) {
                const uint16_t *row = xs + offsets[16 * h + j];
                if (contiguous) {
                    r[j] = _mm512_loadu_si512((const void *)(row + k0));
                } else if (have >= 4) {
                    __m512i v = _mm512_castsi128_si512(_mm_loadu_si128((const void *)(row + k0)));
                    v = _mm512_inserti32x4(v, _mm_loadu_si128((const void *)(row + k1)), 1);
                    v = _mm512_inserti32x4(v, _mm_loadu_si128((const void *)(row + k2)), 2);
                    r[j] = _mm512_inserti32x4(v, _mm_loadu_si128((const void *)(row + k3)), 3);
                } else {
                    __m512i v = _mm512_zextsi128_si512(_mm_loadu_si128((const void *)(row + k0)));
                    if (have > 1) v = _mm512_inserti32x4(v, _mm_loadu_si128((const void *)(row + k1)), 1);
                    if (have > 2) v = _mm512_inserti32x4(v, _mm_loadu_si128((const void *)(row + k2)), 2);
                    r[j] = v;
                }
            }
            transpose16x16(r);
            for (long q = 0; q < count; q++) {
                _mm512_store_si512((void *)(dst + (q0 + q) * CNN_BF16_NR + 16 * h), r[q]);
            }
        }
    }
}

void cnn_bf16_tile(int rows, long pairs, const uint32_t *a, const uint32_t *b, float *c, long ldc,
                   float alpha, float beta) {
    switch (rows) {
    case 12: tile12(pairs, a, b, c, ldc, alpha, beta); break;
    case 8: tile8(pairs, a, b, c, ldc, alpha, beta); break;
    default: tile4(pairs, a, b, c, ldc, alpha, beta); break;
    }
}

#else

void cnn_bf16_pack_a_h(int rows, int mr, long kc, const uint16_t *a, long lda, uint32_t *dst) {
    (void)rows; (void)mr; (void)kc; (void)a; (void)lda; (void)dst;
    __builtin_trap();
}

void cnn_bf16_copy_rows(long planes, long rows, long width, const uint16_t *src, long srcPlaneStride, long srcStride,
                        uint16_t *dst, long dstPlaneStride, long dstStride) {
    (void)planes; (void)rows; (void)width; (void)src; (void)srcPlaneStride; (void)srcStride; (void)dst;
    (void)dstPlaneStride; (void)dstStride;
    __builtin_trap();
}


void cnn_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t regs[4]) {
    (void)leaf; (void)subleaf;
    regs[0] = regs[1] = regs[2] = regs[3] = 0;
}

uint64_t cnn_xgetbv0(void) { return 0; }

void cnn_bf16_pack_bt(long kc, long panels, const float *b, long ldb, uint32_t *dst) {
    (void)kc; (void)panels; (void)b; (void)ldb; (void)dst;
    __builtin_trap();
}

void cnn_bf16_from_fp32_panels(long kc, long panels16, const float *src, uint32_t *dst) {
    (void)kc; (void)panels16; (void)src; (void)dst;
    __builtin_trap();
}

void cnn_bf16_pack_a(int rows, int mr, long kc, const float *a, long lda, uint32_t *dst) {
    (void)rows; (void)mr; (void)kc; (void)a; (void)lda; (void)dst;
    __builtin_trap();
}

void cnn_bf16_pack_at(int rows, int mr, long kc, const float *a, long lda, uint32_t *dst) {
    (void)rows; (void)mr; (void)kc; (void)a; (void)lda; (void)dst;
    __builtin_trap();
}

void cnn_sgemm_tile_avx512(int rows, long kc, const float *a, const float *b, float *c, long ldc,
                           float alpha, float beta) {
    (void)rows; (void)kc; (void)a; (void)b; (void)c; (void)ldc; (void)alpha; (void)beta;
    __builtin_trap();
}

void cnn_bf16_pack_b(long kc, long panels, const float *b, long ldb, uint32_t *dst) {
    (void)kc; (void)panels; (void)b; (void)ldb; (void)dst;
    __builtin_trap();   // never called: the Swift side checks CPUFeatures first
}

void cnn_bf16_tile_prefetch(int rows, long pairs, const uint32_t *a, const uint32_t *b, float *c, long ldc,
                            float alpha, float beta, const void *pf, long pf_stride, long pf_row_bytes,
                            long pf_rows) {
    (void)rows; (void)pairs; (void)a; (void)b; (void)c; (void)ldc; (void)alpha; (void)beta;
    (void)pf; (void)pf_stride; (void)pf_row_bytes; (void)pf_rows;
    __builtin_trap();
}

void cnn_bf16_pack_runs(long kc, const float *lo, const float *hi, const int32_t *offsets, uint32_t *dst) {
    (void)kc; (void)lo; (void)hi; (void)offsets; (void)dst;
    __builtin_trap();
}

void cnn_bf16_pack_chunks(long kc, const float *xs, const int32_t *chunks, const int32_t *offsets, uint32_t *dst) {
    (void)kc; (void)xs; (void)chunks; (void)offsets; (void)dst;
    __builtin_trap();
}

void cnn_bf16_pack_chunks_t(long kc, const float *xs, const int32_t *chunks, const int32_t *offsets, uint32_t *dst) {
    (void)kc; (void)xs; (void)chunks; (void)offsets; (void)dst;
    __builtin_trap();
}

void cnn_bf16_round_rows(long planes, long rows, long width, const float *src, long srcPlaneStride, long srcStride,
                         uint16_t *dst, long dstPlaneStride, long dstStride) {
    (void)planes; (void)rows; (void)width; (void)src; (void)srcPlaneStride; (void)srcStride; (void)dst;
    (void)dstPlaneStride; (void)dstStride;
    __builtin_trap();
}

void cnn_bf16_round_rows_deinterleave(long planes, long rows, long width, const float *src, long srcPlaneStride,
                                      long srcStride, uint16_t *even, uint16_t *odd, long dstPlaneStride,
                                      long dstStride) {
    (void)planes; (void)rows; (void)width; (void)src; (void)srcPlaneStride; (void)srcStride; (void)even; (void)odd;
    (void)dstPlaneStride; (void)dstStride;
    __builtin_trap();
}

void cnn_bf16_pack_runs_h(long kc, const uint16_t *lo, const uint16_t *hi, const int32_t *offsets, uint32_t *dst) {
    (void)kc; (void)lo; (void)hi; (void)offsets; (void)dst;
    __builtin_trap();
}

void cnn_bf16_pack_chunks_h(long kc, int n, const uint16_t *xs, const int32_t *chunks, const int32_t *offsets,
                            uint32_t *dst) {
    (void)kc; (void)n; (void)xs; (void)chunks; (void)offsets; (void)dst;
    __builtin_trap();
}

void cnn_bf16_pack_chunks_t_h(long kc, const uint16_t *xs, const int32_t *chunks, const int32_t *offsets,
                              uint32_t *dst) {
    (void)kc; (void)xs; (void)chunks; (void)offsets; (void)dst;
    __builtin_trap();
}

void cnn_bf16_tile(int rows, long pairs, const uint32_t *a, const uint32_t *b, float *c, long ldc,
                   float alpha, float beta) {
    (void)rows; (void)pairs; (void)a; (void)b; (void)c; (void)ldc; (void)alpha; (void)beta;
    __builtin_trap();   // never called: the Swift side checks CPUFeatures first
}

#endif
