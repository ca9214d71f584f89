// BatchNorm's first bf16 pass: the copy and both sums in one read of the fp32 input. Swift's
// AVX2 code for the rounding takes several times the memory time of this pass; here it is
// one vcvtneps2bf16 per 16 elements, with the rare subnormal lanes redone by the integer
// rounding (the instruction flushes them). Products of bf16 values are exact in Double, and
// so, in practice, are the sums (see BatchNormPlaneKernels.swift).
#include "cbatchnorm_bf16.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define MOMENTS_TARGET __attribute__((target("avx512f,avx512bw,avx512bf16")))

// bf16KeepingNonzero of 16 lanes (AVX512F only): round to nearest even on the bits, NaN quiet,
// and a result of ±0 from a nonzero input gets the smallest subnormal's bit.
MOMENTS_TARGET static inline __m512i round_keeping_nonzero(__m512i u) {
    const __m512i magnitude = _mm512_and_si512(u, _mm512_set1_epi32(0x7FFFFFFF));
    __m512i r = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)),
                                 _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1)));
    r = _mm512_srli_epi32(r, 16);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(magnitude, _mm512_set1_epi32(0x7F800000));
    r = _mm512_mask_mov_epi32(r, nan, _mm512_srli_epi32(_mm512_or_si512(u, _mm512_set1_epi32(0x00400000)), 16));
    const __mmask16 vanished = _mm512_testn_epi32_mask(r, _mm512_set1_epi32(0x7FFF))
                             & _mm512_test_epi32_mask(magnitude, magnitude);
    return _mm512_mask_or_epi32(r, vanished, r, _mm512_set1_epi32(1));
}

// The bf16 words of 16 floats (m: the lanes to read; the others are +0) into lo 16 words,
// and the 16 rounded values as two 8-lane Double vectors.
MOMENTS_TARGET static inline __m256i round16(__m512 v, __m512d *d0, __m512d *d1) {
    __m256i h = (__m256i)_mm512_cvtneps_pbh(v);
    const __m512i magnitude = _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7FFFFFFF));
    const __mmask16 subnormal = _mm512_cmplt_epu32_mask(magnitude, _mm512_set1_epi32(0x00800000))
                              & _mm512_test_epi32_mask(magnitude, magnitude);
    if (__builtin_expect(subnormal != 0, 0)) {
        // vcvtneps2bf16 treats subnormal inputs as zero: those lanes take the integer rounding.
        const __m512i fixed = _mm512_mask_mov_epi32(_mm512_cvtepu16_epi32(h), subnormal,
                                                    round_keeping_nonzero(_mm512_castps_si512(v)));
        h = _mm512_cvtepi32_epi16(fixed);
    }
    const __m512 f = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    *d0 = _mm512_cvtps_pd(_mm512_castps512_ps256(f));
    *d1 = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(f), 1)));
    return h;
}

// l + (l + 8), then + 4, + 2, + 1 over the 16 lanes (lo: lanes 0-7, hi: lanes 8-15).
MOMENTS_TARGET static inline double lane_tree(__m512d lo, __m512d hi) {
    const __m512d s8 = _mm512_add_pd(lo, hi);
    const __m256d s4 = _mm256_add_pd(_mm512_castpd512_pd256(s8), _mm512_extractf64x4_pd(s8, 1));
    const __m128d s2 = _mm_add_pd(_mm256_castpd256_pd128(s4), _mm256_extractf128_pd(s4, 1));
    return _mm_cvtsd_f64(s2) + _mm_cvtsd_f64(_mm_unpackhi_pd(s2, s2));
}

// One plane of s values: v = x (+ *bias when given; max(·, +0) with rectify) rounded into o,
// and the plane's Σv and Σv² in 16 Double lanes added as a tree (lane_tree).
MOMENTS_TARGET static inline __attribute__((always_inline))
void round_plane(long s, const float *p, const float *bias, int rectify, uint16_t *q, double *sum, double *square) {
    const __m512 zero = _mm512_setzero_ps();
    const __m512 b = bias ? _mm512_set1_ps(*bias) : zero;
    __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
    __m512d b0 = _mm512_setzero_pd(), b1 = _mm512_setzero_pd();
    long j = 0;
    for (; j + 16 <= s; j += 16) {
        __m512 v = _mm512_loadu_ps(p + j);
        if (bias) v = _mm512_add_ps(v, b);
        // max(v, +0) returns the second operand for NaN and ±0: x > 0 ? x : +0.
        if (rectify) v = _mm512_max_ps(v, zero);
        __m512d d0, d1;
        _mm256_storeu_si256((__m256i *)(q + j), round16(v, &d0, &d1));
        a0 = _mm512_add_pd(a0, d0); a1 = _mm512_add_pd(a1, d1);
        // d·d is exact (8-bit significands), so fused or not gives the same bits.
        b0 = _mm512_fmadd_pd(d0, d0, b0); b1 = _mm512_fmadd_pd(d1, d1, b1);
    }
    if (j < s) {
        // The tail in lanes 0 ..< s − j; the others read +0, which adds nothing (the bias
        // goes to the read lanes only).
        const __mmask16 m = (__mmask16)((1u << (s - j)) - 1);
        __m512 v = _mm512_maskz_loadu_ps(m, p + j);
        if (bias) v = _mm512_maskz_add_ps(m, v, b);
        if (rectify) v = _mm512_max_ps(v, zero);
        __m512d d0, d1;
        const __m256i h = round16(v, &d0, &d1);
        _mm512_mask_storeu_epi16((void *)(q + j), (__mmask32)m, _mm512_castsi256_si512(h));
        a0 = _mm512_add_pd(a0, d0); a1 = _mm512_add_pd(a1, d1);
        b0 = _mm512_fmadd_pd(d0, d0, b0); b1 = _mm512_fmadd_pd(d1, d1, b1);
    }
    *sum = lane_tree(a0, a1);
    *square = lane_tree(b0, b1);
}

MOMENTS_TARGET void cnn_bf16_round_moments(long n, long c, long s, long c0, long c1, const float *x, int rectify,
                                           uint16_t *o, double *sums, double *squares) {
    for (long ch = c0; ch < c1; ch++) { sums[ch] = 0; squares[ch] = 0; }
    for (long i = 0; i < n; i++) {
        for (long ch = c0; ch < c1; ch++) {
            double a, b;
            round_plane(s, x + (i * c + ch) * s, 0, rectify, o + (i * c + ch) * s, &a, &b);
            sums[ch] += a;
            squares[ch] += b;
        }
    }
}

MOMENTS_TARGET void cnn_bf16_round_plane_moments(long s, const float *x, const float *bias, int rectify, uint16_t *o,
                                                 double *sum, double *square) {
    round_plane(s, x, bias, rectify, o, sum, square);
}

#else

void cnn_bf16_round_moments(long n, long c, long s, long c0, long c1, const float *x, int rectify, uint16_t *o,
                            double *sums, double *squares) {
    (void)n; (void)c; (void)s; (void)c0; (void)c1; (void)x; (void)rectify; (void)o; (void)sums; (void)squares;
    __builtin_trap();   // never called: the Swift side checks CPUFeatures first
}

void cnn_bf16_round_plane_moments(long s, const float *x, const float *bias, int rectify, uint16_t *o,
                                  double *sum, double *square) {
    (void)s; (void)x; (void)bias; (void)rectify; (void)o; (void)sum; (void)square;
    __builtin_trap();   // never called: the Swift side checks CPUFeatures first
}

#endif
