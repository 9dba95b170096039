/* A whole decode step of a Llama-style decoder stack in one call.
 *
 * Why: at batch 1 the kernels themselves take a few milliseconds per step for a small model, and
 * driving them layer by layer from Python (thirty layers of norms, projections, rotary,
 * attention and their torch tensors) added about as much again. Here the same kernels run in the
 * same order with the same roundings, so a step's hidden states are bit for bit those of the
 * layer-by-layer path; only the Python between them is gone.
 *
 * Per layer, for T tokens each of its own sequence (a decode batch):
 *   x = rms(h + r) (r = h + r),  qkv = x W_qkv,  rotary + K/V into the cache,  a = attention,
 *   h = a W_o,  x = rms(h + r) (r = h + r),  m = silu(x W_gate) * (x W_up),  h = m W_down
 * (the first layer's norm takes the embeddings with no residual yet), then the final norm. Each
 * projection is either GGUF-quantized blocks (quant.c) or a bf16 weight packed by sy_pack_vnni
 * (gemm.c); the gate/up projection is always the fused SiLU-and-mul form. */
#include "common.h"
#include "kernels.h"

struct sy_linear {
    const void *w;     /* quantized blocks (rows or panels), or sy_pack_vnni panels */
    const float *bias; /* fp32 or NULL (for a packed gate/up: in gated_order) */
    int64_t n, k;
    int32_t qtype;  /* GGML type id; 0: bf16 packed for sy_gemm_vnni */
    int32_t panels; /* quantized blocks in quant.c's panel layout */
};

struct sy_layer {
    const bf16 *input_norm, *post_norm;
    struct sy_linear qkv, o, gate_up, down;
    bf16 *k_cache, *v_cache; /* [blocks, block_size, hkv, d] */
};

struct sy_decoder {
    int64_t num_layers, hidden, hq, hkv, d, intermediate, block_size;
    float eps, scale;
    const bf16 *cos_sin, *final_norm;
    const struct sy_layer *layers;
};

static int linear(const struct sy_linear *l, const bf16 *x, int64_t m, bf16 *y, int threads, int silu_mul) {
    const int64_t width = silu_mul ? l->n / 2 : l->n;
    if (l->qtype)
        return sy_quant_gemm(l->qtype, x, m, l->k, l->k, l->w, l->n, l->bias, y, width, threads, silu_mul, l->panels,
                             0);
    return sy_gemm_vnni(x, m, l->k, l->k, l->w, l->n, l->bias, y, width, threads, silu_mul);
}

/* embedded: [T, hidden] token embeddings; positions, slots: [T] (slot -1 skips the cache write);
 * block_tables: [T, table_width] int32; seq_lens: [T] int32 (each token's context, itself
 * included); out: [T, hidden], the final norm's output. Needs num_layers >= 1. Returns 0, -1 when a kernel refuses its
 * shapes (the caller checked them; a bug), -2 when scratch memory is short. */
int sy_decoder_forward(const struct sy_decoder *m, const bf16 *embedded, int64_t tokens, const int64_t *positions,
                       const int64_t *slots, const int32_t *block_tables, int64_t table_width, const int32_t *seq_lens,
                       bf16 *out, int threads) {
    const int64_t h = m->hidden, qd = m->hq * m->d, qkv_n = (m->hq + 2 * m->hkv) * m->d;
    const int64_t widths[] = {h, h, qkv_n, qd, qd, h, m->intermediate};
    size_t total = 0;
    for (size_t i = 0; i < sizeof widths / sizeof widths[0]; i++) total += (size_t)(tokens * widths[i]);
    bf16 *scratch = malloc(total * sizeof(bf16));
    if (!scratch) return -2;
    bf16 *residual = scratch, *x = residual + tokens * h, *qkv = x + tokens * h, *q = qkv + tokens * qkv_n;
    bf16 *attn = q + tokens * qd, *proj = attn + tokens * qd, *mid = proj + tokens * h;
    int rc = 0;
    for (int64_t li = 0; li < m->num_layers && rc == 0; li++) {
        const struct sy_layer *l = &m->layers[li];
        if (li == 0) {
            memcpy(residual, embedded, (size_t)(tokens * h) * sizeof(bf16));
            sy_rms_norm(embedded, h, NULL, 0, l->input_norm, x, NULL, tokens, h, m->eps, threads);
        } else {
            sy_rms_norm(proj, h, residual, h, l->input_norm, x, residual, tokens, h, m->eps, threads);
        }
        rc = linear(&l->qkv, x, tokens, qkv, threads, 0);
        if (rc) break;
        sy_rope_write_kv(qkv, qkv_n, positions, m->cos_sin, slots, q, l->k_cache, l->v_cache, tokens, m->hq, m->hkv,
                         m->d, threads);
        rc = sy_paged_decode(q, qd, l->k_cache, l->v_cache, block_tables, table_width, seq_lens, attn, tokens, m->hq,
                             m->hkv, m->d, m->block_size, m->scale, threads);
        if (rc) {
            rc = -2;
            break;
        }
        rc = linear(&l->o, attn, tokens, proj, threads, 0);
        if (rc) break;
        sy_rms_norm(proj, h, residual, h, l->post_norm, x, residual, tokens, h, m->eps, threads);
        rc = linear(&l->gate_up, x, tokens, mid, threads, 1);
        if (rc) break;
        rc = linear(&l->down, mid, tokens, proj, threads, 0);
    }
    if (rc == 0) sy_rms_norm(proj, h, residual, h, m->final_norm, out, residual, tokens, h, m->eps, threads);
    free(scratch);
    return rc;
}
