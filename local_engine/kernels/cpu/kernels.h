/* The kernels one C file calls from another (decoder.c chains them into a whole decode step);
 * each is defined, and documented, in the file named beside it. */
#ifndef SY_KERNELS_H
#define SY_KERNELS_H
#include "common.h"

/* norm_rope.c */
void sy_rms_norm(const bf16 *x, int64_t x_stride, const bf16 *residual, int64_t r_stride, const bf16 *weight,
                 bf16 *out, bf16 *sum_out, int64_t rows, int64_t hidden, float eps, int threads);
void sy_rope_write_kv(const bf16 *qkv, int64_t qkv_stride, const int64_t *positions, const bf16 *cos_sin,
                      const int64_t *slots, bf16 *q_out, bf16 *k_cache, bf16 *v_cache, int64_t tokens, int64_t hq,
                      int64_t hkv, int64_t d, int threads);
/* attention.c */
int sy_paged_decode(const bf16 *q, int64_t q_stride, const bf16 *k_cache, const bf16 *v_cache,
                    const int32_t *block_tables, int64_t table_width, const int32_t *seq_lens, bf16 *out,
                    int64_t seqs, int64_t hq, int64_t hkv, int64_t d, int64_t block_size, float scale, int threads);
/* gemm.c */
int sy_gemm_vnni(const bf16 *x, int64_t m, int64_t x_stride, int64_t k, const bf16 *packed, int64_t n,
                 const float *bias, bf16 *y, int64_t y_stride, int threads, int silu_mul);
/* quant.c */
int sy_quant_gemm(int type, const bf16 *x, int64_t m, int64_t x_stride, int64_t k, const uint8_t *w, int64_t n,
                  const float *bias, void *y, int64_t y_stride, int threads, int silu_mul, int panels, int f32_out);

#endif
