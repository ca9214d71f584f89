// The fp32 implicit-B tile on AVX-512: the AVX2 implicit-B micro-kernel of CnnCore's
// Gemm.swift at twice the width (Swift's SIMD types are compiled for AVX2 only).
#include "csgemm_implicit.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define IMPLICIT_TARGET __attribute__((target("avx512f")))

#define DEFINE_IMPLICIT_TILE(R)                                                               \
IMPLICIT_TARGET static void implicit_tile##R(long kc, const float *a, const float *b,          \
                                             const int32_t *offsets, float *c, long ldc,       \
                                             float beta) {                                    \
    __m512 acc0[R], acc1[R];                                                                  \
    _Pragma("clang loop unroll(full)")                                                        \
    for (int i = 0; i < R; i++) { acc0[i] = _mm512_setzero_ps(); acc1[i] = _mm512_setzero_ps(); } \
    for (long p = 0; p < kc; p++) {                                                           \
        const float *row = b + offsets[p];                                                    \
        __m512 x0 = _mm512_loadu_ps(row), x1 = _mm512_loadu_ps(row + 16);                      \
        _Pragma("clang loop unroll(full)")                                                    \
        for (int i = 0; i < R; i++) {                                                         \
            __m512 av = _mm512_set1_ps(a[i]);                                                 \
            acc0[i] = _mm512_fmadd_ps(av, x0, acc0[i]);                                       \
            acc1[i] = _mm512_fmadd_ps(av, x1, acc1[i]);                                       \
        }                                                                                     \
        a += R;                                                                               \
    }                                                                                         \
    __m512 vb = _mm512_set1_ps(beta);                                                         \
    _Pragma("clang loop unroll(full)")                                                        \
    for (int i = 0; i < R; i++) {                                                             \
        float *out = c + i * ldc;                                                             \
        __m512 r0 = acc0[i], r1 = acc1[i];                                                    \
        if (beta != 0) {                                                                      \
            r0 = _mm512_fmadd_ps(vb, _mm512_loadu_ps(out), r0);                               \
            r1 = _mm512_fmadd_ps(vb, _mm512_loadu_ps(out + 16), r1);                          \
        }                                                                                     \
        _mm512_storeu_ps(out, r0);                                                            \
        _mm512_storeu_ps(out + 16, r1);                                                       \
    }                                                                                         \
}

DEFINE_IMPLICIT_TILE(4)
DEFINE_IMPLICIT_TILE(6)

void cnn_sgemm_implicit_tile_avx512(int rows, long kc, const float *a, const float *b, const int32_t *offsets,
                                    float *c, long ldc, float beta) {
    if (rows == 6) implicit_tile6(kc, a, b, offsets, c, ldc, beta);
    else implicit_tile4(kc, a, b, offsets, c, ldc, beta);
}

#else

void cnn_sgemm_implicit_tile_avx512(int rows, long kc, const float *a, const float *b, const int32_t *offsets,
                                    float *c, long ldc, float beta) {
    (void)rows; (void)kc; (void)a; (void)b; (void)offsets; (void)c; (void)ldc; (void)beta;
    __builtin_trap();   // never called: the Swift side checks GemmKernel.current first
}

#endif
