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

/* out = bf16(bf16(normalise(s)) * w) where s = x, or s = bf16(x + residual) written to sum_out.
 * Rows of `hidden` elements; x, residual, out and sum_out rows are contiguous with row strides. */
void sy_rms_norm(const bf16 *x, int64_t x_stride, const bf16 *residual, int64_t r_stride,
                 const bf16 *weight, bf16 *out, bf16 *sum_out, int64_t rows, int64_t hidden,
                 float eps) {
    /* Memory-light: one thread handles up to 64 rows in a few microseconds, less than waking
     * the pool costs. */
#pragma omp parallel for if (rows >= 64) schedule(static)
    for (int64_t i = 0; i < rows; i++) {
        const bf16 *xi = x + i * x_stride;
        bf16 *oi = out + i * hidden;
        const bf16 *ri = residual ? residual + i * r_stride : NULL;
        bf16 *si = residual ? sum_out + i * hidden : NULL;
        float ss = 0.0f;
        int64_t j = 0;
#if defined(__AVX512F__)
        __m512 ssv = _mm512_setzero_ps();
        for (; j + 16 <= hidden; j += 16) {
            __m512 v = load16(xi + j);
            if (ri) {
                v = round_bf16(_mm512_add_ps(v, load16(ri + j)));
                store16(si + j, v);
            }
            ssv = _mm512_fmadd_ps(v, v, ssv);
        }
        ss = _mm512_reduce_add_ps(ssv);
#endif
        for (; j < hidden; j++) {
            float v = bf2f(xi[j]);
            if (ri) {
                si[j] = f2bf(v + bf2f(ri[j]));
                v = bf2f(si[j]);
            }
            ss += v * v;
        }
        if (ri) xi = si;
        const float inv = 1.0f / sqrtf(ss / (float)hidden + eps);
        j = 0;
#if defined(__AVX512F__)
        const __m512 invv = _mm512_set1_ps(inv);
        for (; j + 16 <= hidden; j += 16)
            store16(oi + j, _mm512_mul_ps(round_bf16(_mm512_mul_ps(load16(xi + j), invv)), load16(weight + j)));
#endif
        for (; j < hidden; j++) oi[j] = f2bf(bf2f(f2bf(bf2f(xi[j]) * inv)) * bf2f(weight[j]));
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
    /* A few microseconds per token: only prefill-sized batches are worth waking the pool. */
#pragma omp parallel for if (tokens >= 64) schedule(static)
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
            int64_t j = 0;
#if defined(__AVX512F__)
            for (; j + 16 <= half; j += 16) {
                const __m512 c = load16(cs + j), s = load16(cs + half + j);
                const __m512 x1 = load16(x + j), x2 = load16(x + half + j);
                const __m512 lo = _mm512_sub_ps(round_bf16(_mm512_mul_ps(x1, c)), round_bf16(_mm512_mul_ps(x2, s)));
                const __m512 hi = _mm512_add_ps(round_bf16(_mm512_mul_ps(x2, c)), round_bf16(_mm512_mul_ps(x1, s)));
                store16(dst + j, lo);
                store16(dst + half + j, hi);
            }
#endif
            for (; j < half; j++) {
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
/* r[i] = sum of v[i]'s 16 lanes, for 16 vectors at once: a transpose-and-add tree (45 ops instead
 * of 16 horizontal reductions of ~8 each). */
static inline __m512 reduce16x16(const __m512 v[16]) {
    __m512 t[8], s4[4], u[2];
    for (int i = 0; i < 8; i++)
        t[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 4; i++)
        s4[i] = _mm512_add_ps(_mm512_shuffle_ps(t[2 * i], t[2 * i + 1], 0x44),
                              _mm512_shuffle_ps(t[2 * i], t[2 * i + 1], 0xEE));
    for (int i = 0; i < 2; i++)
        u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(s4[2 * i], s4[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(s4[2 * i], s4[2 * i + 1], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], 0x88), _mm512_shuffle_f32x4(u[0], u[1], 0xDD));
}

/* decode_unit for head_dim = 16 * DC with the query and the output accumulator in registers;
 * scores for 16 positions at a time. Same arithmetic as the generic loop below, except the
 * order in which each dot product's 16 partial sums are added. */
static inline __attribute__((always_inline)) void decode_unit_regs(
    const int DC, const float *qf, int64_t g, const bf16 *k_cache, const bf16 *v_cache,
    const int32_t *table, int64_t len, int64_t block_size, int64_t row, int64_t head_off, float scale,
    float *scores, bf16 *out) {
    const int64_t d = 16 * DC;
    /* Scores, 16 positions at a time: each K row is widened to fp32 once for all g heads. */
    __m512 maxv[16];
    for (int64_t gi = 0; gi < g; gi++) maxv[gi] = _mm512_set1_ps(-INFINITY);
    float kf[16 * 128];
    for (int64_t p0 = 0; p0 < len; p0 += 16) {
        const int64_t n = len - p0 < 16 ? len - p0 : 16;
        for (int64_t i = 0; i < n; i++) {
            const int64_t p = p0 + i;
            const bf16 *kr = k_cache + ((int64_t)table[p / block_size] * block_size + p % block_size) * row + head_off;
            for (int c = 0; c < DC; c++) _mm512_storeu_ps(kf + i * d + 16 * c, load16(kr + 16 * c));
        }
        const __mmask16 valid = (__mmask16)(n == 16 ? 0xffffu : (1u << n) - 1u);
        for (int64_t gi = 0; gi < g; gi++) {
            __m512 qv[8];
            for (int c = 0; c < DC; c++) qv[c] = _mm512_loadu_ps(qf + gi * d + 16 * c);
            __m512 a[16];
            for (int64_t i = 0; i < 16; i++) {
                a[i] = _mm512_setzero_ps();
                if (i >= n) continue;
                for (int c = 0; c < DC; c++) a[i] = _mm512_fmadd_ps(qv[c], _mm512_loadu_ps(kf + i * d + 16 * c), a[i]);
            }
            const __m512 dots = _mm512_mul_ps(reduce16x16(a), _mm512_set1_ps(scale));
            _mm512_mask_storeu_ps(scores + gi * len + p0, valid, dots);
            maxv[gi] = _mm512_mask_max_ps(maxv[gi], valid, maxv[gi], dots);
        }
    }
    for (int64_t gi = 0; gi < g; gi++) {
        float *sc = scores + gi * len;
        const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(maxv[gi]));
        __m512 total = _mm512_setzero_ps();
        for (int64_t p0 = 0; p0 < len; p0 += 16) {
            const int64_t n = len - p0 < 16 ? len - p0 : 16;
            const __mmask16 valid = (__mmask16)(n == 16 ? 0xffffu : (1u << n) - 1u);
            const __m512 e = _mm512_maskz_mov_ps(valid, exp_nonpos16(_mm512_sub_ps(_mm512_maskz_loadu_ps(valid, sc + p0), m)));
            total = _mm512_add_ps(total, e);
            /* torch's flash kernel weights V by bf16 probabilities */
            _mm512_mask_storeu_ps(sc + p0, valid, round_bf16(e));
        }
        __m512 acc[8];
        for (int c = 0; c < DC; c++) acc[c] = _mm512_setzero_ps();
        for (int64_t p = 0; p < len; p++) {
            const bf16 *vr = v_cache + ((int64_t)table[p / block_size] * block_size + p % block_size) * row + head_off;
            const __m512 w = _mm512_set1_ps(sc[p]);
            for (int c = 0; c < DC; c++) acc[c] = _mm512_fmadd_ps(w, load16(vr + 16 * c), acc[c]);
        }
        const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(total));
        for (int c = 0; c < DC; c++) store16(out + gi * d + 16 * c, _mm512_mul_ps(acc[c], inv));
    }
}
#endif

/* One (sequence, KV head) unit of decode attention: g query heads (qf, fp32, [g][d]) against
 * `len` cached positions; writes bf16 results to out[gi * d + j]. scores: [g][len] scratch. */
static void decode_unit(const float *qf, int64_t g, int64_t d, const bf16 *k_cache,
                        const bf16 *v_cache, const int32_t *table, int64_t len, int64_t block_size,
                        int64_t row, int64_t head_off, float scale, float *scores, bf16 *out) {
#if defined(__AVX512F__)
    if (d == 64) {
        decode_unit_regs(4, qf, g, k_cache, v_cache, table, len, block_size, row, head_off, scale, scores, out);
        return;
    }
    if (d == 128) {
        decode_unit_regs(8, qf, g, k_cache, v_cache, table, len, block_size, row, head_off, scale, scores, out);
        return;
    }
#endif
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

void sy_pack_vnni(const bf16 *w, int64_t n, int64_t k, bf16 *out) {
    const int64_t panels = (n + PANEL - 1) / PANEL, pairs = k / 2;
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < panels; p++) {
        bf16 *dst = out + p * PANEL * k;
        for (int64_t kp = 0; kp < pairs; kp++) {
            for (int64_t j = 0; j < PANEL; j++) {
                const int64_t f = p * PANEL + j;
                dst[kp * 2 * PANEL + 2 * j] = f < n ? w[f * k + 2 * kp] : 0;
                dst[kp * 2 * PANEL + 2 * j + 1] = f < n ? w[f * k + 2 * kp + 1] : 0;
            }
        }
    }
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
#endif

/* x: m rows of k bf16 (row stride x_stride); packed: sy_pack_vnni of w [n, k]; y: m rows of n bf16
 * (row stride y_stride). threads = 1 keeps the call on the calling thread: one core streams a
 * small model's weights nearly as fast as two, without waking the OpenMP pool.
 * silu_mul: w is a gated MLP's gate and up projections packed with each panel holding 32 gate
 * features then the same 32 up features (n % 64 == 0); y gets silu(gate) * up, n / 2 wide, with
 * Hugging Face's roundings, so the activation needs no pass of its own. */
int sy_gemm_vnni(const bf16 *x, int64_t m, int64_t x_stride, int64_t k, const bf16 *packed, int64_t n,
                 const float *bias, bf16 *y, int64_t y_stride, int threads, int silu_mul) {
#if defined(__AVX512F__)
    if (k % 2 != 0 || (silu_mul && n % PANEL != 0)) return -1;
    const int64_t panels = (n + PANEL - 1) / PANEL, pairs = k / 2;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t p = 0; p < panels; p++) {
        const bf16 *panel = packed + p * PANEL * k;
        const int64_t f0 = p * PANEL, features = n - f0 < PANEL ? n - f0 : PANEL;
        const float *b = bias ? bias + f0 : NULL;
        for (int64_t m0 = 0; m0 < m; m0 += MAX_MR) {
            const bf16 *xr = x + m0 * x_stride;
            bf16 *yr = y + m0 * y_stride + (silu_mul ? f0 / 2 : f0);
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
    return 0;
#else
    (void)x; (void)m; (void)x_stride; (void)k; (void)packed; (void)n; (void)bias; (void)y; (void)y_stride;
    (void)threads; (void)silu_mul;
    return -1;
#endif
}
