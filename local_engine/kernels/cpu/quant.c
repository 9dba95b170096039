/* Matmuls against GGUF-quantized weights read as stored (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K).
 *
 * Why: at decode batch sizes a matmul is a pass over its weight, so its speed is the bytes read.
 * A Q4_1 weight is 5 bits per value against bf16's 16; dequantizing it on load (what the engine
 * did before) made every step read three times the bytes llama.cpp reads from the same file.
 *
 * How (llama.cpp's scheme): each activation row is quantized per block of 32 values to int8 with
 * one fp32 scale (q8: d = max|x| / 127), and the sum of its quants is kept. A weight block then
 * meets an activation block as one integer dot product of 32 int8 pairs (AVX512-VNNI / AVX-VNNI
 * vpdpbusd, AVX2 pmaddubsw, or plain C), scaled once by both blocks' scales:
 *   Q4_1  w = d * q + m          (q 0..15)  -> d dx sum(q qx) + m sx
 *   Q4_0  w = d * (q - 8)                  -> d dx sum(q qx) - 8 d sx
 *   Q8_0  w = d * q               (q int8)  -> d dx sum(q qx)
 *   Q4_K  256-value super-blocks of eight 32-value sub-blocks with 6-bit scales and mins:
 *         w = d sc_j q - dmin mn_j          -> d sc_j dx sum(q qx) - dmin mn_j sx
 *   Q6_K  256-value super-blocks of sixteen 16-value sub-blocks with int8 scales:
 *         w = d sc_j (q - 32)   (q 0..63)
 * where sx = dx * sum(qx). vpdpbusd multiplies unsigned by signed bytes: unsigned weights (Q4_x)
 * go in as they are; signed ones (Q8_0, Q6_K's q - 32) as |w| against x with w's sign.
 *
 * Two layouts, both exactly the GGUF tensor's bytes (one copy; nothing is widened):
 * - rows: the tensor as stored, one row of blocks per output feature (every type, any build);
 * - panels (Q4_0, Q4_1, Q8_0 with AVX512-VNNI, rows a multiple of 16): the same blocks rearranged
 *   in place once at load (sy_quant_pack_panels) so that 16 rows' blocks sit together: their 16
 *   scales, then their quants interleaved four values at a time, the layout in which one 64-byte
 *   load feeds vpdpbusd for 16 output features at once. A decode step then reads each panel as
 *   one sequential stream and pays the per-block float work once per 16 features instead of once
 *   per feature (4x fewer instructions at batch 1, 5x at 16 rows than the row layout here).
 * Output features are shared out among the pool's threads. */
#include "common.h"
#include "kernels.h"
#include "pool.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

enum { QK = 32, QK_K = 256 };
enum { T_Q4_0 = 2, T_Q4_1 = 3, T_Q8_0 = 8, T_Q4_K = 12, T_Q6_K = 14 };

static inline float half2f(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    uint32_t u;
    if (exp == 0) { /* zero or subnormal: man * 2^-24 */
        const float f = (float)man * 5.9604644775390625e-8f;
        memcpy(&u, &f, 4);
        u |= sign;
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 112u) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Bytes of one block and values per block, by GGML type id; 0 for types not handled here. */
static int64_t block_bytes(int type) {
    switch (type) {
    case T_Q4_0: return 18;
    case T_Q4_1: return 20;
    case T_Q8_0: return 34;
    case T_Q4_K: return 144;
    case T_Q6_K: return 210;
    default: return 0;
    }
}

static int64_t block_values(int type) { return type == T_Q4_K || type == T_Q6_K ? QK_K : QK; }

int64_t sy_quant_row_bytes(int type, int64_t k) {
    const int64_t bytes = block_bytes(type), values = block_values(type);
    return bytes == 0 || k % values ? -1 : k / values * bytes;
}

/* Q4_K's packed 6-bit scale and min of sub-block j (llama.cpp's get_scale_min_k4). */
static inline void scale_min_k4(int j, const uint8_t *q, int *sc, int *mn) {
    if (j < 4) {
        *sc = q[j] & 63;
        *mn = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/* One 32-value group g of a weight row, as integers: w[l] the quants as the dot product takes
 * them (0..15 for Q4_x, signed for Q8_0 and Q6_K), scale[0] / scale[1] for values 0-15 / 16-31,
 * and `min` multiplying the activation block's sx. Shared by the portable kernel and dequantize. */
static inline void unpack_group(int type, const uint8_t *row, int64_t g, int8_t w[QK], float scale[2], float *min) {
    *min = 0.0f;
    switch (type) {
    case T_Q4_0:
    case T_Q4_1: {
        const uint8_t *b = row + g * block_bytes(type);
        const float d = half2f(b);
        const uint8_t *qs = b + (type == T_Q4_0 ? 2 : 4);
        for (int l = 0; l < 16; l++) {
            w[l] = (int8_t)(qs[l] & 0xF);
            w[l + 16] = (int8_t)(qs[l] >> 4);
        }
        scale[0] = scale[1] = d;
        *min = type == T_Q4_0 ? -8.0f * d : half2f(b + 2);
        break;
    }
    case T_Q8_0: {
        const uint8_t *b = row + g * 34;
        memcpy(w, b + 2, QK);
        scale[0] = scale[1] = half2f(b);
        break;
    }
    case T_Q4_K: {
        const uint8_t *b = row + (g / 8) * 144;
        const int j = (int)(g % 8);
        const uint8_t *qs = b + 16 + 32 * (j / 2);
        for (int l = 0; l < QK; l++) w[l] = (int8_t)(j % 2 ? qs[l] >> 4 : qs[l] & 0xF);
        int sc, mn;
        scale_min_k4(j, b + 4, &sc, &mn);
        scale[0] = scale[1] = half2f(b) * (float)sc;
        *min = -half2f(b + 2) * (float)mn;
        break;
    }
    case T_Q6_K: {
        const uint8_t *b = row + (g / 8) * 210;
        const int j = (int)(g % 8), n = j / 4, r = j % 4;
        const uint8_t *ql = b + 64 * n + 32 * (r & 1), *qh = b + 128 + 32 * n;
        const int8_t *sc = (const int8_t *)(b + 192) + 8 * n + 2 * r;
        for (int l = 0; l < QK; l++) {
            const int lo = r < 2 ? ql[l] & 0xF : ql[l] >> 4;
            w[l] = (int8_t)((lo | (((qh[l] >> (2 * r)) & 3) << 4)) - 32);
        }
        const float d = half2f(b + 208);
        scale[0] = d * (float)sc[0];
        scale[1] = d * (float)sc[1];
        break;
    }
    default: break;
    }
}

/* Activations quantized per 32-value block: q [m][k] int8, d and sx [m][k/32] fp32. */
struct qx {
    const int8_t *q;
    const float *d, *s;
    const int32_t *sum; /* sum of each block's quants */
    int64_t k, groups;
};

static void quantize_rows(const bf16 *x, int64_t m, int64_t x_stride, int64_t k, int8_t *q, float *d, float *s,
                          int32_t *isum) {
    for (int64_t i = 0; i < m; i++) {
        for (int64_t g = 0; g < k / QK; g++) {
            const bf16 *src = x + i * x_stride + g * QK;
#if defined(__AVX512F__) && defined(__AVX512BW__)
            { /* the scalar code below, 16 lanes at a time (lrintf and cvtps both round to nearest even) */
                const __m512 lo = load16(src), hi = load16(src + 16);
                const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
                const __m512 inv = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
                const __m512i qlo = _mm512_cvtps_epi32(_mm512_mul_ps(lo, inv));
                const __m512i qhi = _mm512_cvtps_epi32(_mm512_mul_ps(hi, inv));
                int8_t *dst = q + i * k + g * QK;
                _mm_storeu_si128((__m128i *)dst, _mm512_cvtepi32_epi8(qlo));
                _mm_storeu_si128((__m128i *)(dst + 16), _mm512_cvtepi32_epi8(qhi));
                const int sum = _mm512_reduce_add_epi32(_mm512_add_epi32(qlo, qhi));
                const float scale = amax / 127.0f;
                d[i * (k / QK) + g] = scale;
                s[i * (k / QK) + g] = scale * (float)sum;
                isum[i * (k / QK) + g] = sum;
                continue;
            }
#endif
            float v[QK], amax = 0.0f;
            for (int l = 0; l < QK; l++) {
                v[l] = bf2f(src[l]);
                amax = fmaxf(amax, fabsf(v[l]));
            }
            const float scale = amax / 127.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
            int sum = 0;
            int8_t *dst = q + i * k + g * QK;
            for (int l = 0; l < QK; l++) {
                dst[l] = (int8_t)lrintf(v[l] * inv);
                sum += dst[l];
            }
            d[i * (k / QK) + g] = scale;
            s[i * (k / QK) + g] = scale * (float)sum;
            isum[i * (k / QK) + g] = sum;
        }
    }
}

#define MR 4 /* activation rows per pass over a weight row */

#if defined(__AVX2__) && defined(__FMA__)
/* u8 x s8 dot products of 32 byte pairs, summed in fours into 8 int32 lanes. */
static inline __m256i dot_u8s8(__m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#elif defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s);
#else /* pmaddubsw: pairs of u8*s8 summed to int16, safe here (|u| <= 127 or u <= 63, so no saturation) */
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Group g of a weight row as 32 quants in a vector (as unpack_group), with lanes 0-3 / 4-7 of
 * the dot product's sums (values 0-15 / 16-31) scaled by `scale`. */
static inline __attribute__((always_inline)) __m256i unpack_group_avx2(int type, const uint8_t *row, int64_t g,
                                                                        __m256 *scale, float *min) {
    const __m256i low4 = _mm256_set1_epi8(0xF);
    switch (type) {
    case T_Q4_0:
    case T_Q4_1: {
        const uint8_t *b = row + g * block_bytes(type);
        const float d = half2f(b);
        *scale = _mm256_set1_ps(d);
        *min = type == T_Q4_0 ? -8.0f * d : half2f(b + 2);
        const __m128i raw = _mm_loadu_si128((const __m128i *)(b + (type == T_Q4_0 ? 2 : 4)));
        return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), low4);
    }
    case T_Q8_0: {
        const uint8_t *b = row + g * 34;
        *scale = _mm256_set1_ps(half2f(b));
        *min = 0.0f;
        return _mm256_loadu_si256((const __m256i *)(b + 2));
    }
    case T_Q4_K: {
        const uint8_t *b = row + (g / 8) * 144;
        const int j = (int)(g % 8);
        int sc, mn;
        scale_min_k4(j, b + 4, &sc, &mn);
        *scale = _mm256_set1_ps(half2f(b) * (float)sc);
        *min = -half2f(b + 2) * (float)mn;
        const __m256i raw = _mm256_loadu_si256((const __m256i *)(b + 16 + 32 * (j / 2)));
        return _mm256_and_si256(j % 2 ? _mm256_srli_epi16(raw, 4) : raw, low4);
    }
    default: { /* T_Q6_K */
        const uint8_t *b = row + (g / 8) * 210;
        const int j = (int)(g % 8), n = j / 4, r = j % 4;
        const int8_t *sc = (const int8_t *)(b + 192) + 8 * n + 2 * r;
        const float d = half2f(b + 208);
        const __m128 lo = _mm_set1_ps(d * (float)sc[0]), hi = _mm_set1_ps(d * (float)sc[1]);
        *scale = _mm256_insertf128_ps(_mm256_castps128_ps256(lo), hi, 1);
        *min = 0.0f;
        const __m256i ql = _mm256_loadu_si256((const __m256i *)(b + 64 * n + 32 * (r & 1)));
        const __m256i qh = _mm256_loadu_si256((const __m256i *)(b + 128 + 32 * n));
        const __m256i lo4 = _mm256_and_si256(r < 2 ? ql : _mm256_srli_epi16(ql, 4), low4);
        const __m256i hi2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * r), _mm256_set1_epi8(3)), 4);
        return _mm256_sub_epi8(_mm256_or_si256(lo4, hi2), _mm256_set1_epi8(32));
    }
    }
}

/* out[i] = dot(weight row, activation row i) for mr <= MR rows. */
static inline __attribute__((always_inline)) void row_dot(const int type, const uint8_t *row, const struct qx *x,
                                                          int64_t i0, const int mr, float *out) {
    const int is_signed = type == T_Q8_0 || type == T_Q6_K;
    __m256 acc[MR];
    float corr[MR];
    for (int i = 0; i < mr; i++) {
        acc[i] = _mm256_setzero_ps();
        corr[i] = 0.0f;
    }
    for (int64_t g = 0; g < x->groups; g++) {
        __m256 scale;
        float min;
        const __m256i w = unpack_group_avx2(type, row, g, &scale, &min);
        const __m256i wu = is_signed ? _mm256_sign_epi8(w, w) : w;
        for (int i = 0; i < mr; i++) {
            const int64_t r = i0 + i;
            __m256i xv = _mm256_loadu_si256((const __m256i *)(x->q + r * x->k + g * QK));
            if (is_signed) xv = _mm256_sign_epi8(xv, w);
            const __m256 dot = _mm256_cvtepi32_ps(dot_u8s8(wu, xv));
            acc[i] = _mm256_fmadd_ps(dot, _mm256_mul_ps(scale, _mm256_set1_ps(x->d[r * x->groups + g])), acc[i]);
            if (!is_signed) corr[i] += min * x->s[r * x->groups + g];
        }
    }
    for (int i = 0; i < mr; i++) out[i] = hsum8(acc[i]) + corr[i];
}
#else
static inline void row_dot(const int type, const uint8_t *row, const struct qx *x, int64_t i0, const int mr,
                           float *out) {
    for (int i = 0; i < mr; i++) out[i] = 0.0f;
    for (int64_t g = 0; g < x->groups; g++) {
        int8_t w[QK];
        float scale[2], min;
        unpack_group(type, row, g, w, scale, &min);
        for (int i = 0; i < mr; i++) {
            const int64_t r = i0 + i;
            const int8_t *xq = x->q + r * x->k + g * QK;
            int32_t lo = 0, hi = 0;
            for (int l = 0; l < 16; l++) {
                lo += (int32_t)w[l] * xq[l];
                hi += (int32_t)w[l + 16] * xq[l + 16];
            }
            out[i] += x->d[r * x->groups + g] * (scale[0] * (float)lo + scale[1] * (float)hi) +
                      min * x->s[r * x->groups + g];
        }
    }
}
#endif

/* -- panels ----------------------------------------------------------------------------------- */

#define QP 16 /* output features per panel */

static int panel_type(int type) { return type == T_Q4_0 || type == T_Q4_1 || type == T_Q8_0; }

/* A panel block (16 rows' block g): 16 fp16 d, for Q4_1 16 fp16 m, then the quants: for Q4_x
 * four 64-byte chunks whose byte 4f+t is byte 4c+t of row f's 16 nibble bytes (low nibbles:
 * value 4c+t, high: value 16+4c+t); for Q8_0 eight chunks whose byte 4f+t is value 4j+t of row f,
 * offset by 128 to be unsigned. */
static int64_t quant_offset(int type) { return type == T_Q4_1 ? 4 * QP : 2 * QP; }

int sy_quant_panels_supported(void) {
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
    return 1;
#else
    return 0;
#endif
}

struct pack_panels_job {
    int type;
    uint8_t *w;
    int64_t row_bytes, groups;
};

static void pack_panels(void *arg, int64_t begin, int64_t end) {
    const struct pack_panels_job *job = arg;
    const int type = job->type;
    const int64_t bb = block_bytes(type), rb = job->row_bytes, qo = quant_offset(type), src_q = type == T_Q4_1 ? 4 : 2;
    uint8_t *tmp = malloc((size_t)(QP * rb));
    if (!tmp) return; /* checked by the caller's probe allocation */
    for (int64_t p = begin; p < end; p++) {
        uint8_t *panel = job->w + p * QP * rb;
        memcpy(tmp, panel, (size_t)(QP * rb));
        for (int64_t g = 0; g < job->groups; g++) {
            uint8_t *dst = panel + g * QP * bb;
            for (int f = 0; f < QP; f++) {
                const uint8_t *src = tmp + f * rb + g * bb;
                memcpy(dst + 2 * f, src, 2);
                if (type == T_Q4_1) memcpy(dst + 2 * QP + 2 * f, src + 2, 2);
                if (type == T_Q8_0) {
                    for (int j = 0; j < 8; j++)
                        for (int t = 0; t < 4; t++) dst[qo + 64 * j + 4 * f + t] = src[src_q + 4 * j + t] ^ 0x80u;
                } else {
                    for (int c = 0; c < 4; c++) memcpy(dst + qo + 64 * c + 4 * f, src + src_q + 4 * c, 4);
                }
            }
        }
    }
    free(tmp);
}

/* Rearranges a [n, k] tensor of `type` into panels, in place. 0 on success; -1 when the panel
 * layout does not apply (type, n % 16, no VNNI in this build), -2 when memory is short. */
int sy_quant_pack_panels(int type, uint8_t *w, int64_t n, int64_t k, int threads) {
    const int64_t rb = sy_quant_row_bytes(type, k);
    if (!sy_quant_panels_supported() || !panel_type(type) || rb < 0 || n % QP) return -1;
    void *probe = malloc((size_t)(QP * rb));
    if (!probe) return -2;
    free(probe);
    struct pack_panels_job job = {type, w, rb, k / QK};
    sy_parallel_for(n / QP, 1, threads, pack_panels, &job);
    return 0;
}

/* Row f of a panel-layout tensor's group g, as unpack_group gives it. */
static void unpack_panel_group(int type, const uint8_t *w, int64_t row_bytes, int64_t f, int64_t g, int8_t q[QK],
                               float scale[2], float *min) {
    const uint8_t *blk = w + (f / QP) * QP * row_bytes + g * QP * block_bytes(type);
    const int lane = (int)(f % QP);
    const float d = half2f(blk + 2 * lane);
    const uint8_t *qs = blk + quant_offset(type);
    scale[0] = scale[1] = d;
    *min = type == T_Q4_1 ? half2f(blk + 2 * QP + 2 * lane) : type == T_Q4_0 ? -8.0f * d : 0.0f;
    for (int c = 0; c < (type == T_Q8_0 ? 8 : 4); c++) {
        for (int t = 0; t < 4; t++) {
            const uint8_t byte = qs[64 * c + 4 * lane + t];
            if (type == T_Q8_0) {
                q[4 * c + t] = (int8_t)(byte ^ 0x80u);
            } else {
                q[4 * c + t] = (int8_t)(byte & 0xF);
                q[16 + 4 * c + t] = (int8_t)(byte >> 4);
            }
        }
    }
}

/* Rows of bf16 values from quantized rows (embedding lookups): out[i] = dequantize(w[idx[i]]).
 * panels: w is in the panel layout. */
void sy_quant_dequant_rows(int type, const uint8_t *w, int64_t k, const int64_t *idx, int64_t rows, bf16 *out,
                           int panels) {
    const int64_t row_bytes = sy_quant_row_bytes(type, k);
    if (row_bytes < 0) return;
    for (int64_t i = 0; i < rows; i++) {
        for (int64_t g = 0; g < k / QK; g++) {
            int8_t q[QK];
            float scale[2], min;
            if (panels)
                unpack_panel_group(type, w, row_bytes, idx[i], g, q, scale, &min);
            else
                unpack_group(type, w + idx[i] * row_bytes, g, q, scale, &min);
            for (int l = 0; l < QK; l++) out[i * k + g * QK + l] = f2bf(scale[l / 16] * (float)q[l] + min);
        }
    }
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
/* mr rows x one panel block stream: out[i] = 16 features' dot products with activation row i0+i. */
static inline __attribute__((always_inline)) void panel_tile(const int type, const uint8_t *panel, const struct qx *x,
                                                             int64_t i0, const int mr, __m512 out[MR]) {
    const int64_t pbb = QP * block_bytes(type), qo = quant_offset(type);
    const int32_t off = type == T_Q8_0 ? 128 : type == T_Q4_0 ? 8 : 0; /* unsigned quants' offset */
    const __m512i low4 = _mm512_set1_epi8(0xF);
    __m512 acc[MR];
    for (int i = 0; i < mr; i++) acc[i] = _mm512_setzero_ps();
    for (int64_t g = 0; g < x->groups; g++) {
        const uint8_t *blk = panel + g * pbb;
        _mm_prefetch((const char *)(blk + 8 * pbb), _MM_HINT_T0);
        _mm_prefetch((const char *)(blk + 8 * pbb + 64), _MM_HINT_T0);
        _mm_prefetch((const char *)(blk + 8 * pbb + 128), _MM_HINT_T0);
        _mm_prefetch((const char *)(blk + 8 * pbb + 192), _MM_HINT_T0);
        _mm_prefetch((const char *)(blk + 8 * pbb + 256), _MM_HINT_T0);
        const __m512 dv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)blk));
        const __m512 mv = type == T_Q4_1 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(blk + 2 * QP)))
                                         : _mm512_setzero_ps();
        __m512i wv[8];
        if (type == T_Q8_0) {
            for (int j = 0; j < 8; j++) wv[j] = _mm512_loadu_si512(blk + qo + 64 * j);
        } else {
            for (int c = 0; c < 4; c++) {
                const __m512i raw = _mm512_loadu_si512(blk + qo + 64 * c);
                wv[c] = _mm512_and_si512(raw, low4);
                wv[c + 4] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low4);
            }
        }
        for (int i = 0; i < mr; i++) {
            const int64_t r = i0 + i, xg = r * x->groups + g;
            const uint8_t *xq = (const uint8_t *)(x->q + r * x->k + g * QK);
            int32_t xw[8];
            memcpy(xw, xq, sizeof xw);
            /* values 4j..4j+3 of the block meet chunk j: two chains, for the dot product's latency */
            __m512i s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[0], _mm512_set1_epi32(xw[0]));
            __m512i s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[1], _mm512_set1_epi32(xw[1]));
            for (int j = 2; j < 8; j += 2) {
                s0 = _mm512_dpbusd_epi32(s0, wv[j], _mm512_set1_epi32(xw[j]));
                s1 = _mm512_dpbusd_epi32(s1, wv[j + 1], _mm512_set1_epi32(xw[j + 1]));
            }
            __m512i isum = _mm512_add_epi32(s0, s1);
            if (off) isum = _mm512_sub_epi32(isum, _mm512_set1_epi32(off * x->sum[xg]));
            acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(dv, _mm512_set1_ps(x->d[xg])), acc[i]);
            if (type == T_Q4_1) acc[i] = _mm512_fmadd_ps(mv, _mm512_set1_ps(x->s[xg]), acc[i]);
        }
    }
    for (int i = 0; i < mr; i++) out[i] = acc[i];
}
#endif

struct qgemm_job {
    int type, panels, silu_mul, f32_out;
    const uint8_t *w;
    int64_t row_bytes, m, n;
    struct qx x;
    const float *bias;
    void *y; /* bf16, or fp32 with f32_out */
    int64_t y_stride;
};

/* Output value f of row i: rounded to bf16, or kept in fp32 (f32_out: logits, which bf16 would
 * round by up to 1/256 of their size, enough to flip a near-tie). */
static inline void put(const struct qgemm_job *job, int64_t i, int64_t f, float v) {
    if (job->f32_out)
        ((float *)job->y)[i * job->y_stride + f] = v;
    else
        ((bf16 *)job->y)[i * job->y_stride + f] = f2bf(v);
}

/* silu(gate) * up with Hugging Face's bf16 roundings (as gemm.c's fused MLP). */
static inline float silu_mul_bf16(float gate, float up) {
    const float g = bf2f(f2bf(gate));
    const float act = bf2f(f2bf(g / (1.0f + expf(-g))));
    return act * bf2f(f2bf(up));
}

#define SY_QTYPE(T, CALL)                                                                            \
    switch (T) {                                                                                      \
    case T_Q4_0: { const int qt = T_Q4_0; CALL; } break;                                              \
    case T_Q4_1: { const int qt = T_Q4_1; CALL; } break;                                              \
    case T_Q8_0: { const int qt = T_Q8_0; CALL; } break;                                              \
    case T_Q4_K: { const int qt = T_Q4_K; CALL; } break;                                              \
    default: { const int qt = T_Q6_K; CALL; } break;                                                  \
    }

#define SY_BY_ROWS(MRV, BODY)                                                                        \
    switch (MRV) {                                                                                    \
    case 1: { const int R = 1; BODY; } break;                                                         \
    case 2: { const int R = 2; BODY; } break;                                                         \
    case 3: { const int R = 3; BODY; } break;                                                         \
    default: { const int R = 4; BODY; } break;                                                        \
    }

/* Output features [begin, end) in the row layout: every row of x against each, MR rows at a time.
 * With silu_mul the features are gate rows; the matching up row is n / 2 further on. */
static void qgemm_features(void *arg, int64_t begin, int64_t end) {
    const struct qgemm_job *job = arg;
    float a[MR], b[MR];
    for (int64_t f = begin; f < end; f++) {
        const uint8_t *row = job->w + f * job->row_bytes;
        const uint8_t *up = job->w + (f + job->n / 2) * job->row_bytes;
        for (int64_t i0 = 0; i0 < job->m; i0 += MR) {
            const int mr = job->m - i0 < MR ? (int)(job->m - i0) : MR;
            SY_BY_ROWS(mr, SY_QTYPE(job->type, {
                row_dot(qt, row, &job->x, i0, R, a);
                if (job->silu_mul) row_dot(qt, up, &job->x, i0, R, b);
            }))
            for (int i = 0; i < mr; i++) {
                if (job->silu_mul) {
                    const float gb = job->bias ? job->bias[f] : 0.0f, ub = job->bias ? job->bias[f + job->n / 2] : 0.0f;
                    put(job, i0 + i, f, silu_mul_bf16(a[i] + gb, b[i] + ub));
                } else {
                    put(job, i0 + i, f, a[i] + (job->bias ? job->bias[f] : 0.0f));
                }
            }
        }
    }
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
/* Panels [begin, end) in the panel layout (silu_mul: gate panels; up panels n / 32 further on). */
static void qgemm_panels(void *arg, int64_t begin, int64_t end) {
    const struct qgemm_job *job = arg;
    const int64_t panel_bytes = QP * job->row_bytes, up_offset = job->n / 2 / QP * panel_bytes;
    __m512 a[MR], b[MR];
    for (int64_t p = begin; p < end; p++) {
        const uint8_t *panel = job->w + p * panel_bytes;
        const int64_t f0 = p * QP;
        for (int64_t i0 = 0; i0 < job->m; i0 += MR) {
            const int mr = job->m - i0 < MR ? (int)(job->m - i0) : MR;
            SY_BY_ROWS(mr, SY_QTYPE(job->type, {
                if (qt == T_Q4_0 || qt == T_Q4_1 || qt == T_Q8_0) {
                    panel_tile(qt, panel, &job->x, i0, R, a);
                    if (job->silu_mul) panel_tile(qt, panel + up_offset, &job->x, i0, R, b);
                }
            }))
            for (int i = 0; i < mr; i++) {
                const int64_t at = (i0 + i) * job->y_stride + f0;
                if (job->silu_mul) {
                    __m512 gate = a[i], up = b[i];
                    if (job->bias) {
                        gate = _mm512_add_ps(gate, _mm512_loadu_ps(job->bias + f0));
                        up = _mm512_add_ps(up, _mm512_loadu_ps(job->bias + f0 + job->n / 2));
                    }
                    store16((bf16 *)job->y + at, _mm512_mul_ps(round_bf16(silu16(round_bf16(gate))), round_bf16(up)));
                } else {
                    const __m512 v = job->bias ? _mm512_add_ps(a[i], _mm512_loadu_ps(job->bias + f0)) : a[i];
                    if (job->f32_out)
                        _mm512_storeu_ps((float *)job->y + at, v);
                    else
                        store16((bf16 *)job->y + at, v);
                }
            }
        }
    }
}
#endif

/* y[m, n] = x[m, k] . w[n, k] + bias, with w a GGUF tensor of `type` (rows of quantized blocks,
 * or panels: see sy_quant_pack_panels), x bf16 and y bf16 (fp32 with f32_out). silu_mul: w holds
 * a gated MLP's gate rows then its up rows; y gets silu(gate) * up, n / 2 wide, in bf16. Returns
 * -1 for an unknown type, a k the blocks do not divide, a panel layout this build cannot run or
 * silu_mul with f32_out, -2 when scratch memory is short. */
int sy_quant_gemm(int type, const bf16 *x, int64_t m, int64_t x_stride, int64_t k, const uint8_t *w, int64_t n,
                  const float *bias, void *y, int64_t y_stride, int threads, int silu_mul, int panels, int f32_out) {
    const int64_t row_bytes = sy_quant_row_bytes(type, k);
    if (row_bytes < 0 || (silu_mul && (n % 2 || f32_out))) return -1;
    if (panels && (!sy_quant_panels_supported() || !panel_type(type) || n % (silu_mul ? 2 * QP : QP))) return -1;
    if (m == 0 || n == 0) return 0;
    const int64_t groups = k / QK;
    int8_t *q = malloc((size_t)(m * k));
    float *ds = malloc(sizeof(float) * (size_t)(2 * m * groups));
    int32_t *sums = malloc(sizeof(int32_t) * (size_t)(m * groups));
    if (!q || !ds || !sums) {
        free(q);
        free(ds);
        free(sums);
        return -2;
    }
    quantize_rows(x, m, x_stride, k, q, ds, ds + m * groups, sums);
    struct qgemm_job job = {type, panels, silu_mul, f32_out, w, row_bytes, m, n, {q, ds, ds + m * groups, sums, k, groups},
                            bias, y,      y_stride};
    const int64_t features = silu_mul ? n / 2 : n;
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
    if (panels)
        sy_parallel_for(features / QP, 1, threads, qgemm_panels, &job);
    else
#endif
        sy_parallel_for(features, 8, threads, qgemm_features, &job); /* 8: a chunk outweighs claiming it */
    free(q);
    free(ds);
    free(sums);
    return 0;
}
