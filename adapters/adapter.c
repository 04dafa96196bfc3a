/* The adapter object: allocation, reference counting, the row copy (with the q/k permutation and
 * the finite-value check) that every format's load fills the slab with, the content hash, and
 * the listing's rendering of targets.
 *
 * Ownership. adapter__new returns an adapter with one reference, its caller's; adapter_ref and
 * adapter_unref move the count atomically, and the last unref frees the entries and the slab.
 * The weights are written only by the load that created the adapter, before it hands it out, so
 * readers on any thread need no lock.
 *
 * This file knows no format and no file: the formats (peft.c, gguf_lora.c) use it, and it calls
 * none of them (adapter_internal.h draws the layout). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/adapter_internal.h"
#include "core/base.h"
#include "core/format/types.h"

adapter *adapter__new(int n_layer, uint32_t dtype, size_t slab_bytes)
{
    adapter *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    a->mods = calloc((size_t)n_layer * CORE_MOD_COUNT, sizeof *a->mods);
    a->slab = malloc(slab_bytes ? slab_bytes : 1);
    if (!a->mods || !a->slab) {
        free(a->mods);
        free(a->slab);
        free(a);
        return NULL;
    }
    a->n_layer = n_layer;
    a->dtype = dtype;
    a->bytes = slab_bytes;
    atomic_init(&a->refs, 1);
    return a;
}

adapter *adapter_ref(adapter *a)
{
    if (a)
        atomic_fetch_add_explicit(&a->refs, 1, memory_order_relaxed);
    return a;
}

void adapter_unref(adapter *a)
{
    if (!a || atomic_fetch_sub_explicit(&a->refs, 1, memory_order_acq_rel) != 1)
        return;
    free(a->mods);
    free(a->slab);
    free(a);
}

/* Is the element at p (dtype f32, f16 or bf16, possibly unaligned) finite? */
static bool finite_elem(uint32_t dtype, const unsigned char *p)
{
    if (dtype == CORE_TYPE_F32) {
        float f;
        memcpy(&f, p, 4);
        return isfinite(f);
    }
    uint16_t h;
    memcpy(&h, p, 2);
    if (dtype == CORE_TYPE_F16)
        return (h & 0x7c00) != 0x7c00;
    return (h & 0x7f80) != 0x7f80; /* bf16 */
}

int adapter__copy_rows(uint32_t dtype, const void *src, void *dst, size_t rows, size_t row_len,
                       int perm_heads, int head_dim, bool transpose)
{
    size_t es = dtype == CORE_TYPE_F32 ? 4 : 2;
    size_t row_bytes = row_len * es;
    const unsigned char *s = src;
    unsigned char *d = dst;
    for (size_t r = 0; r < rows; r++) {
        size_t from = r;
        if (perm_heads > 0) {
            /* GGUF row h*d + 2j + s holds Hugging Face row h*d + s*half + j. */
            size_t h = r / (size_t)head_dim, k = r % (size_t)head_dim;
            size_t half = (size_t)head_dim / 2;
            from = h * head_dim + (k % 2) * half + k / 2;
        }
        const unsigned char *row = s + from * row_bytes;
        for (size_t i = 0; i < row_len; i++)
            if (!finite_elem(dtype, row + i * es))
                return -EINVAL;
        if (!transpose) {
            memcpy(d + r * row_bytes, row, row_bytes);
            continue;
        }
        for (size_t i = 0; i < row_len; i++) /* element (r, i) goes to (i, r) */
            memcpy(d + (i * rows + r) * es, row + i * es, es);
    }
    return 0;
}

int adapter__unit_out(const core_config *cfg, int first)
{
    int out = 0;
    for (int m = first; m < first + core_module_span(cfg, (core_module)first); m++)
        out += core_module_out(cfg, (core_module)m);
    return out;
}

int adapter__put_pair(adapter *a, const core_config *cfg, int layer, int first, int rank,
                      float scale, const void *A, const void *B, bool hf_rows, unsigned char **at,
                      const char **bad)
{
    size_t es = a->dtype == CORE_TYPE_F32 ? 4 : 2, in = (size_t)core_module_in(cfg, first);
    *bad = "lora_A";
    if (adapter__copy_rows(a->dtype, A, *at, (size_t)rank, in, 0, 0, false))
        return -EINVAL;
    const void *shared_a = *at;
    *at += (size_t)rank * in * es;
    *bad = "lora_B";
    for (int m = first; m < first + core_module_span(cfg, (core_module)first); m++) {
        int row0, out = core_module_out(cfg, (core_module)m), heads = 0;
        core_module_tensor(cfg, (core_module)m, &row0);
        /* q and k lora_B rows move to the GGUF row order where llama.cpp's converter permuted
         * them (the llama architecture: SmolLM2, Llama 3, Mistral); Qwen2's, Qwen3's, Gemma 3's
         * and Phi-3's rows are Hugging Face's and stay as they are. */
        if (hf_rows)
            heads = core_qk_perm_heads(cfg, (core_module)m);
        const unsigned char *rows = (const unsigned char *)B + (size_t)row0 * rank * es;
        if (adapter__copy_rows(a->dtype, rows, *at, (size_t)out, (size_t)rank, heads, cfg->head_dim,
                               true))
            return -EINVAL;
        adapter_mod *am = &a->mods[layer * CORE_MOD_COUNT + m];
        am->rank = rank;
        am->scale = scale;
        am->A = shared_a;
        am->Bt = *at;
        *at += (size_t)out * rank * es;
        a->targets |= 1u << m;
        a->n_mods++;
    }
    return 0;
}

const char *adapter_targets_str(unsigned targets, char *buf, size_t cap)
{
    size_t k = 0;
    if (cap)
        buf[0] = 0;
    for (int m = 0; m < CORE_MOD_COUNT; m++) {
        if (!(targets & (1u << m)))
            continue;
        int w = snprintf(buf + k, cap > k ? cap - k : 0, "%s%s", k ? "," : "",
                         core_module_name((core_module)m));
        if (w > 0)
            k += (size_t)w;
    }
    return buf;
}
