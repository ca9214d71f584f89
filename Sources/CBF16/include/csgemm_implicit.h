// The fp32 implicit-B GEMM tile on AVX-512 (Sources/CBF16/sgemm_implicit.c).
#ifndef CNN_CSGEMM_IMPLICIT_H
#define CNN_CSGEMM_IMPLICIT_H

#include <stdint.h>

/// One rows × 32 tile of C = A·B (rows ∈ {6, 4}) with A one packed micro-panel of sgemm
/// (a[p · rows + i]) and B never packed: row p of the tile's B is the 32 floats at
/// b + offsets[p] (read unaligned, and only those). Per element acc = fma(a, b, acc) over
/// p in order from 0, then C = acc, or fma(beta, C, acc) when beta != 0: the bits of two
/// AVX2 6×16 implicit-B tiles (alpha 1). Needs AVX512F.
void cnn_sgemm_implicit_tile_avx512(int rows, long kc, const float *a, const float *b, const int32_t *offsets,
                                    float *c, long ldc, float beta);

#endif
