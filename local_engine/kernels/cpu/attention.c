/* Decode attention over the paged KV cache: one query token per sequence. */
#include "common.h"
#include "kernels.h"
#include "pool.h"

#include <stdatomic.h>

/* Where position p of a sequence sits in the paged cache: its row index (block * block_size + offset). */
static inline int64_t cache_slot(const int32_t *table, int64_t p, int64_t block_size) {
    return (int64_t)table[p / block_size] * block_size + p % block_size;
}

#if defined(__AVX512F__)
/* r[i] = sum of v[i]'s 16 lanes, for 16 vectors at once: a transpose-and-add tree (45 ops instead
 * of 16 horizontal reductions of ~8 each). */
/* The first n of 16 lanes (n <= 16). */
static inline __mmask16 first_lanes(int64_t n) { return (__mmask16)(n >= 16 ? 0xffffu : (1u << n) - 1u); }

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
            const int64_t slot = cache_slot(table, p, block_size);
            const bf16 *kr = k_cache + slot * row + head_off;
            for (int c = 0; c < DC; c++) _mm512_storeu_ps(kf + i * d + 16 * c, load16(kr + 16 * c));
            /* The cache is scattered in blocks, beyond the hardware prefetcher: fetch the K row
             * 16 positions on, and this position's V row for the pass after the softmax. */
            const bf16 *vr = v_cache + slot * row + head_off;
            for (int64_t b = 0; b < 2 * d; b += 64) _mm_prefetch((const char *)vr + b, _MM_HINT_T1);
            if (p + 16 < len) {
                const char *next = (const char *)(k_cache + cache_slot(table, p + 16, block_size) * row + head_off);
                for (int64_t b = 0; b < 2 * d; b += 64) _mm_prefetch(next + b, _MM_HINT_T0);
            }
        }
        const __mmask16 valid = first_lanes(n);
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
            const __mmask16 valid = first_lanes(n);
            const __m512 e = _mm512_maskz_mov_ps(valid, exp_nonpos16(_mm512_sub_ps(_mm512_maskz_loadu_ps(valid, sc + p0), m)));
            total = _mm512_add_ps(total, e);
            /* torch's flash kernel weights V by bf16 probabilities */
            _mm512_mask_storeu_ps(sc + p0, valid, round_bf16(e));
        }
        __m512 acc[8];
        for (int c = 0; c < DC; c++) acc[c] = _mm512_setzero_ps();
        for (int64_t p = 0; p < len; p++) {
            const bf16 *vr = v_cache + cache_slot(table, p, block_size) * row + head_off;
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
        const bf16 *kr = k_cache + cache_slot(table, p, block_size) * row + head_off;
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
        const bf16 *vr = v_cache + cache_slot(table, p, block_size) * row + head_off;
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
 * Returns 0, or -1 when a score buffer cannot be allocated. */
struct decode_job {
    const bf16 *q, *k_cache, *v_cache;
    const int32_t *block_tables, *seq_lens;
    int64_t q_stride, table_width, hq, hkv, d, block_size, g, row;
    bf16 *out;
    float scale;
    _Atomic int failed;
};

static void decode_units(void *arg, int64_t begin, int64_t end) {
    struct decode_job *job = arg;
    const int64_t g = job->g, d = job->d, hkv = job->hkv;
    for (int64_t unit = begin; unit < end; unit++) {
        const int64_t s = unit / hkv, kh = unit % hkv;
        const int64_t len = job->seq_lens[s];
        float *scores = malloc((size_t)(g * (len > 0 ? len : 1)) * sizeof(float)); /* [g][len] */
        if (!scores) {
            atomic_store(&job->failed, 1);
            continue;
        }
        float qf[16 * 256];
        for (int64_t gi = 0; gi < g; gi++) {
            const bf16 *qh = job->q + s * job->q_stride + (kh * g + gi) * d;
            for (int64_t j = 0; j < d; j++) qf[gi * d + j] = bf2f(qh[j]);
        }
        decode_unit(qf, g, d, job->k_cache, job->v_cache, job->block_tables + s * job->table_width, len,
                    job->block_size, job->row, kh * d, job->scale, scores, job->out + (s * job->hq + kh * g) * d);
        free(scores);
    }
}

int sy_paged_decode(const bf16 *q, int64_t q_stride, const bf16 *k_cache, const bf16 *v_cache,
                    const int32_t *block_tables, int64_t table_width, const int32_t *seq_lens,
                    bf16 *out, int64_t seqs, int64_t hq, int64_t hkv, int64_t d, int64_t block_size,
                    float scale, int threads) {
    struct decode_job job = {q, k_cache, v_cache, block_tables, seq_lens, q_stride, table_width, hq, hkv, d,
                             block_size, hq / hkv, hkv * d, out, scale, 0};
    int64_t work = 0;
    for (int64_t s = 0; s < seqs; s++) work += seq_lens[s];
    /* Small batches stay on the calling thread: sharing out costs more than they take. */
    sy_parallel_for(seqs * hkv, 1, work * hkv >= 4096 ? threads : 1, decode_units, &job);
    return atomic_load(&job.failed) ? -1 : 0;
}
