/* Matmuls for decode batches against weights packed for AVX512-BF16 dot products. */
#include "common.h"
#include "kernels.h"
#include "pool.h"

/* Matmuls for a few rows (decode batches): y[m, n] = x[m, :] . w[n, :] + bias[n], bf16 in and out,
 * fp32 accumulation, one rounding to bf16 at the end.
 *
 * At decode batch sizes a matmul is a pass over its weight, so speed is memory bandwidth: the
 * weight is repacked once (sy_pack_vnni) into panels of 64 output features in which each pair of
 * inputs holds the 64 features' two weights side by side (the "VNNI" layout of AVX512-BF16's
 * dot product). A panel is then one sequential stream, every 64-byte load feeds 16 outputs of
 * every row at once, and no horizontal sums are needed. With AVX512-BF16 one vdpbf16ps per load
 * does the work (products of bf16 values are exact in fp32); without it the pair is split into
 * two fp32 vectors by shifts and fed to two FMAs, the same arithmetic. */
#define PANEL 64

struct pack_job {
    const bf16 *w;
    int64_t n, k;
    bf16 *out;
};

static void pack_panels(void *arg, int64_t begin, int64_t end) {
    const struct pack_job *job = arg;
    const int64_t n = job->n, k = job->k, pairs = k / 2;
    for (int64_t p = begin; p < end; p++) {
        bf16 *dst = job->out + p * PANEL * k;
        for (int64_t kp = 0; kp < pairs; kp++) {
            for (int64_t j = 0; j < PANEL; j++) {
                const int64_t f = p * PANEL + j;
                dst[kp * 2 * PANEL + 2 * j] = f < n ? job->w[f * k + 2 * kp] : 0;
                dst[kp * 2 * PANEL + 2 * j + 1] = f < n ? job->w[f * k + 2 * kp + 1] : 0;
            }
        }
    }
}

void sy_pack_vnni(const bf16 *w, int64_t n, int64_t k, bf16 *out, int threads) {
    struct pack_job job = {w, n, k, out};
    sy_parallel_for((n + PANEL - 1) / PANEL, 1, threads, pack_panels, &job);
}

#if defined(__AVX512F__)
#define PREFETCH_PAIRS 64
#define MAX_MR 6 /* rows per pass: 6 x 4 accumulators + 4 weight vectors + 1 broadcast <= 32 zmm */

/* mr rows x one panel: y[i, f] = bias[f] + sum over the panel's input pairs. */
static inline __attribute__((always_inline)) void vnni_tile(const bf16 *x, int64_t x_stride, const int mr,
                                                            const bf16 *panel, int64_t pairs,
                                                            const float *bias, bf16 *y, int64_t y_stride,
                                                            int64_t features, const int silu_mul) {
    __m512 acc[MAX_MR][4];
#pragma GCC unroll 6
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < 4; j++) acc[i][j] = _mm512_setzero_ps();
    for (int64_t kp = 0; kp < pairs; kp++) {
        const bf16 *wp = panel + kp * 2 * PANEL;
        /* All four lines of the pair row PREFETCH_PAIRS ahead: a DRAM access takes longer
         * than the hardware prefetcher's lead at decode speeds. */
        for (int l = 0; l < 4; l++) _mm_prefetch((const char *)(wp + PREFETCH_PAIRS * 2 * PANEL + 32 * l), _MM_HINT_T0);
        const __m512i w0 = _mm512_loadu_si512(wp), w1 = _mm512_loadu_si512(wp + 32);
        const __m512i w2 = _mm512_loadu_si512(wp + 64), w3 = _mm512_loadu_si512(wp + 96);
#pragma GCC unroll 6
        for (int i = 0; i < mr; i++) {
            int32_t pair;
            memcpy(&pair, x + i * x_stride + 2 * kp, sizeof pair);
#if defined(__AVX512BF16__)
            const __m512bh xb = (__m512bh)_mm512_set1_epi32(pair);
            acc[i][0] = _mm512_dpbf16_ps(acc[i][0], (__m512bh)w0, xb);
            acc[i][1] = _mm512_dpbf16_ps(acc[i][1], (__m512bh)w1, xb);
            acc[i][2] = _mm512_dpbf16_ps(acc[i][2], (__m512bh)w2, xb);
            acc[i][3] = _mm512_dpbf16_ps(acc[i][3], (__m512bh)w3, xb);
#else
            const __m512 xe = _mm512_set1_ps(bf2f((bf16)(pair & 0xffff)));
            const __m512 xo = _mm512_set1_ps(bf2f((bf16)((uint32_t)pair >> 16)));
            const __m512i hi = _mm512_set1_epi32((int32_t)0xffff0000u);
#define SY_PAIR_FMA(j, wv)                                                                            \
    acc[i][j] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(wv, 16)), xe, acc[i][j]);         \
    acc[i][j] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(wv, hi)), xo, acc[i][j]);
            SY_PAIR_FMA(0, w0) SY_PAIR_FMA(1, w1) SY_PAIR_FMA(2, w2) SY_PAIR_FMA(3, w3)
#undef SY_PAIR_FMA
#endif
        }
    }
    if (silu_mul) { /* features 0-31 gate, 32-63 up: y = bf16(bf16(silu(bf16(gate))) * bf16(up)) */
#pragma GCC unroll 6
        for (int i = 0; i < mr; i++) {
            for (int j = 0; j < 2; j++) {
                __m512 gate = acc[i][j], up = acc[i][j + 2];
                if (bias) {
                    gate = _mm512_add_ps(gate, _mm512_loadu_ps(bias + 16 * j));
                    up = _mm512_add_ps(up, _mm512_loadu_ps(bias + 32 + 16 * j));
                }
                const __m512 act = round_bf16(silu16(round_bf16(gate)));
                store16(y + i * y_stride + 16 * j, _mm512_mul_ps(act, round_bf16(up)));
            }
        }
        return;
    }
#pragma GCC unroll 6
    for (int i = 0; i < mr; i++) {
        for (int j = 0; j < 4; j++) {
            const int64_t left = features - 16 * j;
            if (left <= 0) break;
            const __mmask16 mask = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
            __m512 v = acc[i][j];
            if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, bias + 16 * j));
            _mm256_mask_storeu_epi16(y + i * y_stride + 16 * j, mask, f2bf16x16(v));
        }
    }
}

struct gemm_job {
    const bf16 *x, *packed;
    const float *bias;
    int64_t m, x_stride, k, n, y_stride;
    bf16 *y;
    int silu_mul;
};

static void gemm_panels(void *arg, int64_t begin, int64_t end) {
    const struct gemm_job *job = arg;
    const int64_t m = job->m, x_stride = job->x_stride, k = job->k, n = job->n, y_stride = job->y_stride;
    const int64_t pairs = k / 2;
    const int silu_mul = job->silu_mul;
    for (int64_t p = begin; p < end; p++) {
        const bf16 *panel = job->packed + p * PANEL * k;
        const int64_t f0 = p * PANEL, features = n - f0 < PANEL ? n - f0 : PANEL;
        const float *b = job->bias ? job->bias + f0 : NULL;
        for (int64_t m0 = 0; m0 < m; m0 += MAX_MR) {
            const bf16 *xr = job->x + m0 * x_stride;
            bf16 *yr = job->y + m0 * y_stride + (silu_mul ? f0 / 2 : f0);
#define SY_TILE(R) vnni_tile(xr, x_stride, R, panel, pairs, b, yr, y_stride, features, silu_mul)
            switch (m - m0 < MAX_MR ? m - m0 : MAX_MR) {
            case 1: SY_TILE(1); break;
            case 2: SY_TILE(2); break;
            case 3: SY_TILE(3); break;
            case 4: SY_TILE(4); break;
            case 5: SY_TILE(5); break;
            default: SY_TILE(6); break;
            }
#undef SY_TILE
        }
    }
}
#endif

/* x: m rows of k bf16 (row stride x_stride); packed: sy_pack_vnni of w [n, k]; y: m rows of n bf16
 * (row stride y_stride); panels are shared out among `threads` (pool.h).
 * silu_mul: w is a gated MLP's gate and up projections packed with each panel holding 32 gate
 * features then the same 32 up features (n % 64 == 0); y gets silu(gate) * up, n / 2 wide, with
 * Hugging Face's roundings, so the activation needs no pass of its own. */
int sy_gemm_vnni(const bf16 *x, int64_t m, int64_t x_stride, int64_t k, const bf16 *packed, int64_t n,
                 const float *bias, bf16 *y, int64_t y_stride, int threads, int silu_mul) {
#if defined(__AVX512F__)
    if (k % 2 != 0 || (silu_mul && n % PANEL != 0)) return -1;
    struct gemm_job job = {x, packed, bias, m, x_stride, k, n, y_stride, y, silu_mul};
    sy_parallel_for((n + PANEL - 1) / PANEL, 1, threads, gemm_panels, &job);
    return 0;
#else
    (void)x; (void)m; (void)x_stride; (void)k; (void)packed; (void)n; (void)bias; (void)y; (void)y_stride;
    (void)threads; (void)silu_mul;
    return -1;
#endif
}
