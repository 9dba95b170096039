/* CPU kernels for the bf16 decode path: the small ops between the oneDNN matmuls.
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
 * Plain C with OpenMP, compiled at first use by local_engine/kernels/cpu/_build.py and called
 * through ctypes with raw pointers; every shape and stride check happens on the Python side.
 */
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

/* out = bf16(bf16(normalise(s)) * w) where s = x, or s = bf16(x + residual) written to sum_out.
 * Rows of `hidden` elements; x, residual, out and sum_out rows are contiguous with row strides. */
void sy_rms_norm(const bf16 *x, int64_t x_stride, const bf16 *residual, int64_t r_stride,
                 const bf16 *weight, bf16 *out, bf16 *sum_out, int64_t rows, int64_t hidden,
                 float eps) {
#pragma omp parallel for if (rows >= 8) schedule(static)
    for (int64_t i = 0; i < rows; i++) {
        const bf16 *xi = x + i * x_stride;
        bf16 *oi = out + i * hidden;
        float ss = 0.0f;
        if (residual) {
            const bf16 *ri = residual + i * r_stride;
            bf16 *si = sum_out + i * hidden;
            for (int64_t j = 0; j < hidden; j++) {
                bf16 s = f2bf(bf2f(xi[j]) + bf2f(ri[j]));
                si[j] = s;
                float v = bf2f(s);
                ss += v * v;
            }
            xi = si;
        } else {
#pragma omp simd reduction(+ : ss)
            for (int64_t j = 0; j < hidden; j++) {
                float v = bf2f(xi[j]);
                ss += v * v;
            }
        }
        float inv = 1.0f / sqrtf(ss / (float)hidden + eps);
        for (int64_t j = 0; j < hidden; j++) {
            oi[j] = f2bf(bf2f(f2bf(bf2f(xi[j]) * inv)) * bf2f(weight[j]));
        }
    }
}

/* Neox-style rotary on the q and k heads of the fused qkv rows, then the step's K/V into the
 * paged cache. qkv: [T, (hq + 2 hkv) * d] with row stride; q_out: [T, hq, d] contiguous;
 * cos_sin: [max_pos, d] bf16, cos in the first half, sin in the second (HF casts both to the
 * activation dtype before rotating); caches: [blocks * block_size, hkv, d]; slot -1 = skip.
 * Each rotated element is bf16(bf16(x * cos) + bf16(rotate_half(x) * sin)), HF's roundings. */
void sy_rope_write_kv(const bf16 *qkv, int64_t qkv_stride, const int64_t *positions,
                      const bf16 *cos_sin, const int64_t *slots, bf16 *q_out, bf16 *k_cache,
                      bf16 *v_cache, int64_t tokens, int64_t hq, int64_t hkv, int64_t d) {
    const int64_t half = d / 2;
#pragma omp parallel for if (tokens >= 16) schedule(static)
    for (int64_t t = 0; t < tokens; t++) {
        const bf16 *row = qkv + t * qkv_stride;
        const bf16 *cs = cos_sin + positions[t] * d;
        const int64_t slot = slots[t];
        for (int64_t h = 0; h < hq + hkv; h++) {
            const bf16 *x = row + h * d;
            bf16 *dst;
            if (h < hq) {
                dst = q_out + (t * hq + h) * d;
            } else if (slot >= 0) {
                dst = k_cache + (slot * hkv + (h - hq)) * d;
            } else {
                continue;
            }
            for (int64_t j = 0; j < half; j++) {
                float c = bf2f(cs[j]), s = bf2f(cs[half + j]);
                float x1 = bf2f(x[j]), x2 = bf2f(x[half + j]);
                float lo = bf2f(f2bf(x1 * c)) + bf2f(f2bf(-x2 * s));
                float hi = bf2f(f2bf(x2 * c)) + bf2f(f2bf(x1 * s));
                dst[j] = f2bf(lo);
                dst[half + j] = f2bf(hi);
            }
        }
        if (slot >= 0) {
            memcpy(v_cache + slot * hkv * d, row + (hq + hkv) * d, (size_t)(hkv * d) * sizeof(bf16));
        }
    }
}

/* K/V rows into the paged cache (the path without rotary fusion): key, value [T, hkv * d] with
 * row strides; slot -1 = skip. */
void sy_write_kv(const bf16 *key, int64_t k_stride, const bf16 *value, int64_t v_stride,
                 const int64_t *slots, bf16 *k_cache, bf16 *v_cache, int64_t tokens, int64_t width) {
    for (int64_t t = 0; t < tokens; t++) {
        const int64_t slot = slots[t];
        if (slot < 0) continue;
        memcpy(k_cache + slot * width, key + t * k_stride, (size_t)width * sizeof(bf16));
        memcpy(v_cache + slot * width, value + t * v_stride, (size_t)width * sizeof(bf16));
    }
}

#if defined(__AVX512F__)
#include <immintrin.h>
/* 16 bf16 -> 16 fp32 (a bf16 is the top half of an fp32). */
static inline __m512 load16(const bf16 *p) {
    __m256i raw = _mm256_loadu_si256((const __m256i *)p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}
#endif

/* One (sequence, KV head) unit of decode attention: g query heads (qf, fp32, [g][d]) against
 * `len` cached positions; writes bf16 results to out[gi * d + j]. scores: [g][len] scratch. */
static void decode_unit(const float *qf, int64_t g, int64_t d, const bf16 *k_cache,
                        const bf16 *v_cache, const int32_t *table, int64_t len, int64_t block_size,
                        int64_t row, int64_t head_off, float scale, float *scores, bf16 *out) {
    float maxv[16], sum[16];
    float acc[16 * 256];
    for (int64_t gi = 0; gi < g; gi++) maxv[gi] = -INFINITY;
    /* scores = (q . k) * scale */
    for (int64_t p = 0; p < len; p++) {
        const bf16 *kr = k_cache + ((int64_t)table[p / block_size] * block_size + p % block_size) * row + head_off;
#if defined(__AVX512F__)
        if (d % 16 == 0) {
            __m512 kv[16];
            for (int64_t c = 0; c < d / 16; c++) kv[c] = load16(kr + 16 * c);
            for (int64_t gi = 0; gi < g; gi++) {
                __m512 a = _mm512_setzero_ps();
                for (int64_t c = 0; c < d / 16; c++) a = _mm512_fmadd_ps(_mm512_loadu_ps(qf + gi * d + 16 * c), kv[c], a);
                float dot = _mm512_reduce_add_ps(a) * scale;
                scores[gi * len + p] = dot;
                if (dot > maxv[gi]) maxv[gi] = dot;
            }
            continue;
        }
#endif
        for (int64_t gi = 0; gi < g; gi++) {
            float dot = 0.0f;
            for (int64_t j = 0; j < d; j++) dot += qf[gi * d + j] * bf2f(kr[j]);
            dot *= scale;
            scores[gi * len + p] = dot;
            if (dot > maxv[gi]) maxv[gi] = dot;
        }
    }
    for (int64_t gi = 0; gi < g; gi++) {
        float *sc = scores + gi * len;
        const float m = maxv[gi];
        float total = 0.0f;
#pragma omp simd reduction(+ : total)
        for (int64_t p = 0; p < len; p++) {
            float e = exp_nonpos(sc[p] - m);
            total += e;
            sc[p] = bf2f(f2bf(e)); /* torch's flash kernel weights V by bf16 probabilities */
        }
        sum[gi] = total;
    }
    memset(acc, 0, (size_t)(g * d) * sizeof(float));
    for (int64_t p = 0; p < len; p++) {
        const bf16 *vr = v_cache + ((int64_t)table[p / block_size] * block_size + p % block_size) * row + head_off;
#if defined(__AVX512F__)
        if (d % 16 == 0) {
            __m512 vv[16];
            for (int64_t c = 0; c < d / 16; c++) vv[c] = load16(vr + 16 * c);
            for (int64_t gi = 0; gi < g; gi++) {
                const __m512 w = _mm512_set1_ps(scores[gi * len + p]);
                float *ag = acc + gi * d;
                for (int64_t c = 0; c < d / 16; c++)
                    _mm512_storeu_ps(ag + 16 * c, _mm512_fmadd_ps(w, vv[c], _mm512_loadu_ps(ag + 16 * c)));
            }
            continue;
        }
#endif
        for (int64_t gi = 0; gi < g; gi++) {
            const float w = scores[gi * len + p];
            for (int64_t j = 0; j < d; j++) acc[gi * d + j] += w * bf2f(vr[j]);
        }
    }
    for (int64_t gi = 0; gi < g; gi++) {
        const float inv = 1.0f / sum[gi];
        for (int64_t j = 0; j < d; j++) out[gi * d + j] = f2bf(acc[gi * d + j] * inv);
    }
}

/* One query token per sequence against its paged context. q: rows of [hq, d] (row stride
 * q_stride); out: [S, hq, d] contiguous; caches [blocks, block_size, hkv, d]; block_tables
 * [S, table_width] int32; seq_lens [S] int32. Work is split over (sequence, KV head) pairs; the
 * g = hq / hkv query heads of a KV head share each K/V row read. Needs g <= 16 and d <= 256.
 * Small batches stay on the calling thread: waking OpenMP workers costs more than they save.
 * Returns 0, or -1 when a score buffer cannot be allocated. */
int sy_paged_decode(const bf16 *q, int64_t q_stride, const bf16 *k_cache, const bf16 *v_cache,
                    const int32_t *block_tables, int64_t table_width, const int32_t *seq_lens,
                    bf16 *out, int64_t seqs, int64_t hq, int64_t hkv, int64_t d, int64_t block_size,
                    float scale) {
    const int64_t g = hq / hkv;
    const int64_t row = hkv * d; /* one token's K (or V) across heads */
    int64_t work = 0;
    for (int64_t s = 0; s < seqs; s++) work += seq_lens[s];
    int failed = 0;
#pragma omp parallel for schedule(dynamic, 1) if (work * hkv >= 4096)
    for (int64_t unit = 0; unit < seqs * hkv; unit++) {
        const int64_t s = unit / hkv, kh = unit % hkv;
        const int64_t len = seq_lens[s];
        float *scores = malloc((size_t)(g * (len > 0 ? len : 1)) * sizeof(float)); /* [g][len] */
        if (!scores) {
#pragma omp atomic write
            failed = 1;
            continue;
        }
        float qf[16 * 256];
        for (int64_t gi = 0; gi < g; gi++) {
            const bf16 *qh = q + s * q_stride + (kh * g + gi) * d;
            for (int64_t j = 0; j < d; j++) qf[gi * d + j] = bf2f(qh[j]);
        }
        decode_unit(qf, g, d, k_cache, v_cache, block_tables + s * table_width, len, block_size, row,
                    kh * d, scale, scores, out + (s * hq + kh * g) * d);
        free(scores);
    }
    return failed ? -1 : 0;
}

/* y[m, n] = bf16(sum_k x[m, k] * w[n, k] + bias[n]) for a few rows m (a decode batch).
 * x: fp32 [m_pad, k] with m_pad a multiple of 8 (padding rows are zero); w: bf16 [n, k]; y: bf16
 * rows of y_stride. oneDNN has no fast bf16 path on CPUs without bf16 dot-product instructions
 * (it is ~3x slower than fp32), and its fp32 path reads the weights twice the bytes; this one
 * reads bf16 weights once, widens them in registers (a shift) and accumulates in fp32.
 * Tiles of 3 weight rows x 8 batch rows keep 24 accumulators in registers. Needs k % 16 == 0.
 * Returns -1 where the build has no AVX-512 (the caller then keeps oneDNN). */
int sy_linear_bf16(const float *x, int64_t m, int64_t m_pad, int64_t k, const bf16 *w, int64_t n,
                   const float *bias, bf16 *y, int64_t y_stride) {
#if defined(__AVX512F__)
    if (k % 16 != 0 || m_pad % 8 != 0) return -1;
    const int64_t blocks = (n + 2) / 3;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < blocks; b++) {
        const int64_t n0 = b * 3;
        const int64_t rows = n - n0 < 3 ? n - n0 : 3;
        const bf16 *w0 = w + n0 * k;
        const bf16 *w1 = rows > 1 ? w0 + k : w0;
        const bf16 *w2 = rows > 2 ? w0 + 2 * k : w0;
        for (int64_t m0 = 0; m0 < m; m0 += 8) {
            __m512 a0[8], a1[8], a2[8];
            for (int i = 0; i < 8; i++) a0[i] = a1[i] = a2[i] = _mm512_setzero_ps();
            const float *xb = x + m0 * k;
            for (int64_t kk = 0; kk < k; kk += 16) {
                const __m512 v0 = load16(w0 + kk), v1 = load16(w1 + kk), v2 = load16(w2 + kk);
                for (int i = 0; i < 8; i++) {
                    const __m512 xv = _mm512_loadu_ps(xb + i * k + kk);
                    a0[i] = _mm512_fmadd_ps(v0, xv, a0[i]);
                    a1[i] = _mm512_fmadd_ps(v1, xv, a1[i]);
                    a2[i] = _mm512_fmadd_ps(v2, xv, a2[i]);
                }
            }
            for (int i = 0; i < 8 && m0 + i < m; i++) {
                bf16 *yr = y + (m0 + i) * y_stride + n0;
                yr[0] = f2bf(_mm512_reduce_add_ps(a0[i]) + (bias ? bias[n0] : 0.0f));
                if (rows > 1) yr[1] = f2bf(_mm512_reduce_add_ps(a1[i]) + (bias ? bias[n0 + 1] : 0.0f));
                if (rows > 2) yr[2] = f2bf(_mm512_reduce_add_ps(a2[i]) + (bias ? bias[n0 + 2] : 0.0f));
            }
        }
    }
    return 0;
#else
    (void)x; (void)m; (void)m_pad; (void)k; (void)w; (void)n; (void)bias; (void)y; (void)y_stride;
    return -1;
#endif
}
