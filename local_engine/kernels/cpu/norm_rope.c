/* RMSNorm (with its residual add), rotary + KV-cache write, and the plain KV-cache write. */
#include "common.h"
#include "kernels.h"
#include "pool.h"

/* out = bf16(bf16(normalise(s)) * w) where s = x, or s = bf16(x + residual) written to sum_out.
 * Rows of `hidden` elements; x, residual, out and sum_out rows are contiguous with row strides. */
struct rms_job {
    const bf16 *x, *residual, *weight;
    int64_t x_stride, r_stride, hidden;
    bf16 *out, *sum_out;
    float eps;
};

static void rms_rows(void *arg, int64_t begin, int64_t end) {
    const struct rms_job *job = arg;
    const bf16 *x = job->x, *residual = job->residual, *weight = job->weight;
    const int64_t x_stride = job->x_stride, r_stride = job->r_stride, hidden = job->hidden;
    bf16 *out = job->out, *sum_out = job->sum_out;
    const float eps = job->eps;
    for (int64_t i = begin; i < end; i++) {
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

void sy_rms_norm(const bf16 *x, int64_t x_stride, const bf16 *residual, int64_t r_stride,
                 const bf16 *weight, bf16 *out, bf16 *sum_out, int64_t rows, int64_t hidden,
                 float eps, int threads) {
    struct rms_job job = {x, residual, weight, x_stride, r_stride, hidden, out, sum_out, eps};
    /* Memory-light: one thread does up to 64 rows in a few microseconds. */
    sy_parallel_for(rows, 16, rows >= 64 ? threads : 1, rms_rows, &job);
}

/* Neox-style rotary on the q and k heads of the fused qkv rows, then the step's K/V into the
 * paged cache. qkv: [T, (hq + 2 hkv) * d] with row stride; q_out: [T, hq, d] contiguous;
 * cos_sin: [max_pos, d] bf16, cos in the first half, sin in the second (HF casts both to the
 * activation dtype before rotating); caches: [blocks * block_size, hkv, d]; slot -1 = skip.
 * Each rotated element is bf16(bf16(x * cos) + bf16(rotate_half(x) * sin)), HF's roundings. */
struct rope_job {
    const bf16 *qkv, *cos_sin;
    const int64_t *positions, *slots;
    int64_t qkv_stride, hq, hkv, d;
    bf16 *q_out, *k_cache, *v_cache;
};

static void rope_tokens(void *arg, int64_t begin, int64_t end) {
    const struct rope_job *job = arg;
    const bf16 *qkv = job->qkv, *cos_sin = job->cos_sin;
    const int64_t *positions = job->positions, *slots = job->slots;
    const int64_t qkv_stride = job->qkv_stride, hq = job->hq, hkv = job->hkv, d = job->d;
    bf16 *q_out = job->q_out, *k_cache = job->k_cache, *v_cache = job->v_cache;
    const int64_t half = d / 2;
    for (int64_t t = begin; t < end; t++) {
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

void sy_rope_write_kv(const bf16 *qkv, int64_t qkv_stride, const int64_t *positions,
                      const bf16 *cos_sin, const int64_t *slots, bf16 *q_out, bf16 *k_cache,
                      bf16 *v_cache, int64_t tokens, int64_t hq, int64_t hkv, int64_t d, int threads) {
    struct rope_job job = {qkv, cos_sin, positions, slots, qkv_stride, hq, hkv, d, q_out, k_cache, v_cache};
    /* A few microseconds per token: only prefill-sized batches are worth sharing out. */
    sy_parallel_for(tokens, 16, tokens >= 64 ? threads : 1, rope_tokens, &job);
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
