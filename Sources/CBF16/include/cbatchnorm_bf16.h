// BatchNorm's bf16 copy of its input with the statistics' sums, on AVX-512
// (Sources/CBF16/batchnorm_bf16.c); CnnCore's BatchNormPlaneKernels.swift has the same
// computation in portable Swift, with the same bits.
#ifndef CNN_CBATCHNORM_BF16_H
#define CNN_CBATCHNORM_BF16_H

#include <stdint.h>

/// For the channels c0 ≤ ch < c1 of x (N = n, C = c, S = s, contiguous), v = x (max(x, +0)
/// with rectify, NaN giving +0):
///   o[i, ch, j]  = bf16 bits of v: round to nearest even, subnormals rounded (not flushed),
///                  NaN quiet, and a nonzero that would round to ±0 keeps the smallest
///                  subnormal of its sign (CnnCore's bf16KeepingNonzero)
///   sums[ch]     = Σ_i P(i, ch),  squares[ch] = Σ_i Q(i, ch)   (Double, i in order from 0)
/// where P and Q are the plane's sum of the rounded values and of their squares in Double:
/// element j goes to lane j mod 16 of 16 lanes (in order of j), and the lanes are added as
/// a tree: l + (l + 8), then + 4, + 2, + 1. Needs AVX512F, AVX512BW and AVX512_BF16.
void cnn_bf16_round_moments(long n, long c, long s, long c0, long c1, const float *x, int rectify, uint16_t *o,
                            double *sums, double *squares);

/// One plane of s values, as one (i, ch) of cnn_bf16_round_moments with v = x + *bias first
/// (bias may be NULL: no add): o = the bf16 bits of v, *sum = P, *square = Q. A convolution's
/// epilogue hands its output to the BatchNorm that keeps it as bf16 through this; the
/// BatchNorm then adds the planes' P and Q in image order: cnn_bf16_round_moments' bits.
void cnn_bf16_round_plane_moments(long s, const float *x, const float *bias, int rectify, uint16_t *o,
                                  double *sum, double *square);

#endif
