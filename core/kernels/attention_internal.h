/* Vectorised pieces of the forward pass (core-internal): causal attention of one row over its
 * cache, exp, and the SwiGLU activation. AVX-512 (attention) and AVX2/FMA are chosen at run time;
 * the portable versions are the reference and run where AVX2 is missing (and in tests).
 *
 * Every function works on one row's data only, so a row's result never depends on the other
 * rows of the batch or on which thread computed it. Pure functions; any thread.
 */
#ifndef ADAPTREE_CORE_KERNELS_ATTENTION_INTERNAL_H
#define ADAPTREE_CORE_KERNELS_ATTENTION_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

/* Where one layer's K (or V) rows of a sequence live: position first + t at
 *   base + table[(first + t) >> shift] * block_stride + ((first + t) & (2^shift - 1)) * row_stride
 * bytes. The paged cache (core/model/kv.c) is blocks of 2^shift positions from one pool; a
 * contiguous cache is one block (table {0}, shift 30). */
typedef struct core__kv_view {
    const char *base;
    const int32_t *table;
    size_t block_stride, row_stride;
    int shift, first;
} core__kv_view;

static inline const char *core__kv_row(const core__kv_view *v, int t)
{
    int p = v->first + t;
    return v->base + (size_t)v->table[p >> v->shift] * v->block_stride +
           (size_t)(p & ((1 << v->shift) - 1)) * v->row_stride;
}

/* Attention of one query row over keys t = 0..n_keys-1 of one layer's cache (positions
 * K->first.., the last one the row's own). q (n_head * hd); K and V rows of kv_dim = n_kv * hd
 * f32, or f16 (uint16_t) when kv_f16 (head h reads kv head h / (n_head / n_kv)); out
 * (n_head * hd); scores is scratch of n_keys * (n_head / n_kv) floats. softmax(q·k / sqrt(hd)) · V
 * per head. The same bits whatever the blocks' layout. ml, unless NULL, gets each head's largest
 * score and its sum of exp(score - largest): ml[2h], ml[2h + 1]. */
void core__attend_view(const float *q, const core__kv_view *K, const core__kv_view *V, int kv_f16,
                       int n_head, int n_kv, int hd, int n_keys, float *scores, float *out,
                       float *ml);

/* A row with more than CORE_ATT_CHUNK keys is attended in chunks of that many keys, each on its
 * own (core__attend_chunk), then merged (core__attend_merge): the chunks of one row can run on
 * different threads, so one long stream's attention is spread over the cores without reading a
 * KV head twice, and a row gets the same bits however its chunks were scheduled, alone or in a
 * batch. A row with fewer keys is one core__attend_view, as before. */
#define CORE_ATT_CHUNK 256

static inline int core__attend_chunks(int n_keys)
{
    return n_keys <= CORE_ATT_CHUNK ? 1 : (n_keys + CORE_ATT_CHUNK - 1) / CORE_ATT_CHUNK;
}

/* core__attend_view over chunk c of the row's n_keys keys: keys c * CORE_ATT_CHUNK.. (at most
 * CORE_ATT_CHUNK); out normalised within the chunk, ml as core__attend_view's. */
void core__attend_chunk(const float *q, const core__kv_view *K, const core__kv_view *V, int kv_f16,
                        int n_head, int n_kv, int hd, int n_keys, int c, float *scores, float *out,
                        float *ml);

/* out (n_head * hd) from a row's nc chunks: o (nc, n_head * hd) and ml (nc, 2 * n_head) as the
 * chunks left them; each chunk weighs sum * exp(largest - the row's largest). */
void core__attend_merge(const float *o, const float *ml, int nc, int n_head, int hd, float *out);

/* core__attend_view over a contiguous cache: K and V (pos + 1, kv_dim), keys 0..pos. */
void core__attend_row(const float *q, const void *K, const void *V, int kv_f16, int n_head,
                      int n_kv, int hd, int pos, float *scores, float *out);

/* y[i] = x[i] as f16 (round to nearest even), i < n. */
void core__to_f16(const float *x, uint16_t *y, int n);

/* gate[i] = silu(gate[i]) * up[i] for i < n. */
void core__swiglu(float *gate, const float *up, long n);
/* gate[i] = gelu_tanh(gate[i]) * up[i] (GeGLU, Gemma), torch's tanh approximation. */
void core__geglu(float *gate, const float *up, long n);

/* y[i] = exp(x[i]) for i < n (y may be x). Within 2 ulp of expf; exp(-inf) = 0. */
void core__vexp(const float *x, float *y, int n);

/* The kernels follow core__cpu_level (cpu_internal.h): only attention has AVX-512 code (hd a
 * multiple of 16, at most 128; head_dim 256 runs the grouped AVX2 kernel); the rest runs AVX2
 * from that level up, portable below it. */

#endif
