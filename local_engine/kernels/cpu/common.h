/* CPU kernels for the bf16 decode path.
 *
 * Why C: on a CPU each torch op costs microseconds of dispatch and a pass over memory, and a
 * decoder layer needs about thirty of them around its four matmuls; at batch 1 to 16 that
 * overhead, not arithmetic, dominates a step. These fuse them: one call per RMSNorm (with its
 * residual add), one per rotary + KV-cache write, one per decode attention over the paged cache.
 *
 * Numerics follow Hugging Face's bf16 Llama exactly where it rounds: values are bf16 in memory,
 * arithmetic is fp32, results are rounded to bf16 (round-to-nearest-even) at the same points
 * as the torch ops they replace. Decode attention mirrors torch's CPU flash-attention kernel:
 * fp32 scores scaled after the dot product, fp32 softmax sum, probabilities rounded to bf16
 * before they weight V.
 *
 * Plain C (one file per job: common.h, pool.c, norm_rope.c, attention.c, gemm.c), compiled at
 * first use by local_engine/kernels/cpu/_build.py and called through ctypes with raw pointers;
 * every shape and stride check happens on the Python side.
 *
 * This header: what the kernels share (bf16 <-> fp32 with Hugging Face's rounding, AVX-512
 * helpers, exp and SiLU), static inline so every kernel file inlines them.
 */
#ifndef SY_COMMON_H
#define SY_COMMON_H
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef uint16_t bf16;

static inline float bf2f(bf16 h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline bf16 f2bf(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)((u >> 16) | 0x40u); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                                        /* nearest even */
    return (bf16)(u >> 16);
}

#if defined(__AVX512F__)
#include <immintrin.h>
/* 16 bf16 -> 16 fp32 (a bf16 is the top half of an fp32). */
static inline __m512 load16(const bf16 *p) {
    __m256i raw = _mm256_loadu_si256((const __m256i *)p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

/* f2bf on 16 lanes, as the bf16 bit patterns in the low halves of 32-bit lanes. */
static inline __m512i f2bf_bits16(__m512 v) {
    const __m512i u = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                  _mm512_set1_epi32(0x7f800000));
    return _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
}

/* 16 fp32 -> 16 bf16, exactly as f2bf. */
static inline __m256i f2bf16x16(__m512 v) { return _mm512_cvtepi32_epi16(f2bf_bits16(v)); }

/* v rounded to bf16 and widened back: the value a bf16 tensor would hold. */
static inline __m512 round_bf16(__m512 v) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(f2bf_bits16(v), 16));
}

static inline void store16(bf16 *p, __m512 v) { _mm256_storeu_si256((__m256i *)p, f2bf16x16(v)); }
#endif

/* exp(x) for x <= 0 (softmax after the max is subtracted): 2^n * p(r), |r| <= ln2/2, a degree-6
 * polynomial; about 1 ulp, and written without calls or branches so it vectorises. */
static inline float exp_nonpos(float x) {
    if (x < -87.0f) x = -87.0f;
    float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

#if defined(__AVX512F__)
/* exp_nonpos on 16 lanes, operation for operation (no fused multiply-adds, like the scalar code,
 * which ISO C mode compiles without contraction), so both give the same bits. */
static inline __m512 exp_nonpos16(__m512 x) {
#define C(v) _mm512_set1_ps(v)
    x = _mm512_max_ps(x, C(-87.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_add_ps(_mm512_mul_ps(x, C(1.44269504088896341f)), C(0.5f)),
                                          _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    const __m512 r = _mm512_add_ps(_mm512_sub_ps(x, _mm512_mul_ps(n, C(0.693359375f))),
                                   _mm512_mul_ps(n, C(2.12194440e-4f)));
    __m512 p = C(1.9875691500e-4f);
    p = _mm512_add_ps(_mm512_mul_ps(p, r), C(1.3981999507e-3f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), C(8.3334519073e-3f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), C(4.1665795894e-2f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), C(1.6666665459e-1f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), C(5.0000001201e-1f));
    p = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(p, r), r), r), C(1.0f));
    const __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
#undef C
}
#endif

#if defined(__AVX512F__)
/* x * sigmoid(x) in fp32 (what torch computes for a bf16 tensor before rounding), with exp only
 * of -|x| <= 0: sigmoid = 1 / (1 + e) for x >= 0, e / (1 + e) below. */
static inline __m512 silu16(__m512 x) {
    const __m512 e = exp_nonpos16(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(x)));
    const __m512 r = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_add_ps(_mm512_set1_ps(1.0f), e));
    const __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
    return _mm512_mul_ps(x, _mm512_mask_mul_ps(r, neg, e, r));
}
#endif

#endif
