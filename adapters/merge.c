/* Merge-export: bakes a set of LoRA adapters into the base weights and writes a GGUF that any
 * GGUF runtime can load without adapter support. A fused tensor (Phi-3's attn_qkv, ffn_up) is
 * written whole when any of its modules is touched.
 *
 * Every (layer, module) that an adapter of the set targets becomes W' = W + Σ weight·scale·B·A,
 * accumulated in f32 over the dequantized base (in place in the caller's model) and written as f32
 * or f16. Every other tensor is copied byte for byte in its stored type, so a q/v adapter on a
 * Q4_1 model leaves the rest of the file Q4_1. Rows stay in the base GGUF's order: the adapters'
 * q/k lora_B rows are already permuted to it (docs/FORMATS.md §2.6).
 */
#include "adapters/merge.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/registry.h"
#include "core/format/gguf_write.h"
#include "core/format/types.h"

#define F16_MAX 65504.0f

/* An adapter matrix as f32: the adapter's own memory when it is f32, else converted into dst. */
static const float *as_f32(uint32_t dtype, const void *src, float *dst, size_t n)
{
    const uint16_t *h = src;
    if (dtype == CORE_TYPE_F32)
        return src;
    for (size_t i = 0; i < n; i++)
        dst[i] = dtype == CORE_TYPE_F16 ? core_fp16_to_fp32(h[i]) : core_bf16_to_fp32(h[i]);
    return dst;
}

/* W (out, in) += weight · scale · Btᵀ (out, r) · A (r, in), in place in m, for every (layer,
 * module) every adapter of the set targets; marks them in touched (n_layer * CORE_MOD_COUNT).
 * Returns 0, -ENOMEM, or -ERANGE when a merged weight is not finite. */
static int merge_weights(core_model *m, const adapter_set *set, unsigned char *touched, char *err,
                         size_t errlen)
{
    const core_config *c = &m->cfg;
    size_t cap = 1; /* floats for the largest A and B pair, converted to f32 */
    for (int k = 0; k < set->n; k++) {
        const adapter *a = set->items[k].a;
        for (int i = 0; i < c->n_layer * CORE_MOD_COUNT && i < a->n_layer * CORE_MOD_COUNT; i++) {
            int mod = i % CORE_MOD_COUNT;
            size_t need = (size_t)a->mods[i].rank *
                          (size_t)(core_module_in(c, mod) + core_module_out(c, mod));
            cap = need > cap ? need : cap;
        }
    }
    float *scratch = malloc(cap * sizeof *scratch);
    if (!scratch) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    for (int k = 0; k < set->n; k++) {
        const adapter *a = set->items[k].a;
        for (int l = 0; l < c->n_layer && l < a->n_layer; l++) {
            for (int mod = 0; mod < CORE_MOD_COUNT; mod++) {
                const adapter_mod *am = adapter_mod_at(a, l, mod);
                if (!am->rank)
                    continue;
                int in = core_module_in(c, mod), out = core_module_out(c, mod), r = am->rank;
                const float *A = as_f32(a->dtype, am->A, scratch, (size_t)r * in);
                const float *Bt =
                    as_f32(a->dtype, am->Bt, scratch + (size_t)r * in, (size_t)out * r);
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, r,
                            set->items[k].weight * am->scale, Bt, out, A, in, 1.0f,
                            m->layers[l].w[mod].f32, in);
                touched[l * CORE_MOD_COUNT + mod] = 1;
            }
        }
    }
    free(scratch);
    for (int i = 0; i < c->n_layer * CORE_MOD_COUNT; i++) {
        int l = i / CORE_MOD_COUNT, mod = i % CORE_MOD_COUNT;
        size_t n = (size_t)core_module_in(c, mod) * (size_t)core_module_out(c, mod);
        for (size_t j = 0; touched[i] && j < n; j++) {
            if (!isfinite(m->layers[l].w[mod].f32[j])) {
                int row0;
                const char *tn = core_module_tensor(c, mod, &row0);
                snprintf(err, errlen,
                         "merged blk.%d.%s.weight is not finite at element %zu "
                         "(adapter weights too large?)",
                         l, tn, (size_t)row0 * core_module_in(c, mod) + j);
                return -ERANGE;
            }
        }
    }
    return 0;
}

/* The base's metadata with general.file_type and the adaptree.merged.* keys. */
static int merged_metadata(core_gguf_writer *w, const core_gguf *g, const adapter_set *set,
                           const char *const *names, int outtype, char *err, size_t errlen)
{
    char items[ADAPTER_SEL_MAX][ADAPTER_ID_MAX + 32];
    const char *ptrs[ADAPTER_SEL_MAX];
    int rc = 0, n = set->n < ADAPTER_SEL_MAX ? set->n : ADAPTER_SEL_MAX;
    for (uint64_t i = 0; rc == 0 && i < g->n_kv; i++)
        rc = core_gguf_writer_set_kv(w, &g->kv[i], err, errlen);
    for (int i = 0; i < n; i++) {
        snprintf(items[i], sizeof items[i], "%s:%g", names[i], (double)set->items[i].weight);
        ptrs[i] = items[i];
    }
    if (rc == 0)
        rc = core_gguf_writer_set_u32(w, "general.file_type", outtype == ADAPTER_MERGE_F16 ? 1 : 0,
                                      err, errlen);
    if (rc == 0)
        rc = core_gguf_writer_set_str_array(w, "adaptree.merged.adapters", ptrs, (size_t)n, err,
                                            errlen);
    if (rc == 0)
        rc = core_gguf_writer_set_str(w, "adaptree.merged.outtype",
                                      outtype == ADAPTER_MERGE_F16 ? "f16" : "f32", err, errlen);
    return rc;
}

/* Adds every tensor of the base in its order: merged ones (merged[i] != NULL) in outtype, the
 * others as stored. half holds the f16 copies (outtype f16) and must outlive the write. */
static int add_tensors(core_gguf_writer *w, const core_gguf *g, const float *const *merged,
                       int outtype, uint16_t *half, char *err, size_t errlen)
{
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const core_gguf_tensor *t = &g->tensors[i];
        char name[80];
        snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
        uint64_t n = core_gguf_tensor_nelements(t);
        uint32_t type = t->type;
        const void *data = t->data;
        uint64_t size = t->size;
        if (merged[i] && outtype == ADAPTER_MERGE_F32) {
            type = CORE_TYPE_F32;
            data = merged[i];
            size = n * sizeof(float);
        } else if (merged[i]) {
            for (uint64_t j = 0; j < n; j++) {
                if (fabsf(merged[i][j]) > F16_MAX) {
                    snprintf(err, errlen,
                             "%s: merged value %g at element %llu does not fit f16 "
                             "(use --outtype f32)",
                             name, (double)merged[i][j], (unsigned long long)j);
                    return -ERANGE;
                }
                half[j] = core_fp32_to_fp16(merged[i][j]);
            }
            type = CORE_TYPE_F16;
            data = half;
            size = n * sizeof(uint16_t);
            half += n;
        }
        int rc =
            core_gguf_writer_add_tensor(w, name, type, t->n_dims, t->ne, data, size, err, errlen);
        if (rc)
            return rc;
    }
    return 0;
}

/* Writes the merged file: the base's metadata and tensors, touched weights from m in outtype. */
static int write_merged(const core_model *m, const adapter_set *set, const char *const *names,
                        const unsigned char *touched, const char *out, int outtype,
                        adapter_merge_report *rep, char *err, size_t errlen)
{
    const core_gguf *g = m->gguf;
    const core_config *c = &m->cfg;
    int rc = -ENOMEM;
    uint64_t n_half = 0;
    uint16_t *half = NULL;
    const float **merged = calloc(g->n_tensors ? g->n_tensors : 1, sizeof *merged);
    core_gguf_writer *w = core_gguf_writer_new();
    if (!merged || !w)
        goto nomem;
    for (int i = 0; i < c->n_layer * CORE_MOD_COUNT; i++) {
        int l = i / CORE_MOD_COUNT, mod = i % CORE_MOD_COUNT;
        char name[96];
        int row0;
        if (!touched[i])
            continue;
        snprintf(name, sizeof name, "blk.%d.%s.weight", l, core_module_tensor(c, mod, &row0));
        const core_gguf_tensor *t = core_gguf_find_tensor(g, name); /* checked by the load */
        if (merged[t - g->tensors])
            continue; /* another module of the same fused tensor */
        /* a fused tensor's modules follow each other in the slab (core_model.slab): the whole
         * tensor starts row0 rows before this module's */
        merged[t - g->tensors] = m->layers[l].w[mod].f32 - (size_t)row0 * core_module_in(c, mod);
        n_half += core_gguf_tensor_nelements(t);
        rep->n_merged++;
    }
    /* f16 copies of the merged weights; one spare element, so it exists for f32 too */
    half = malloc(((outtype == ADAPTER_MERGE_F16 ? n_half : 0) + 1) * sizeof *half);
    if (!half)
        goto nomem;
    rc = merged_metadata(w, g, set, names, outtype, err, errlen);
    if (rc == 0)
        rc = add_tensors(w, g, merged, outtype, half, err, errlen);
    if (rc == 0) {
        rep->n_tensors = (int)g->n_tensors;
        rep->bytes = core_gguf_writer_file_size(w);
        fprintf(stderr, "merge: writing %s (%.1f MB)\n", out, (double)rep->bytes / 1e6);
        rc = core_gguf_writer_write(w, out, err, errlen);
    }
    goto out;
nomem:
    snprintf(err, errlen, "out of memory");
out:
    core_gguf_writer_free(w);
    free(half);
    free(merged);
    return rc;
}

/* The module counts of the touched set, as "q 30, v 15". */
static void describe_touched(const unsigned char *touched, int n_layer, char *buf, size_t cap)
{
    size_t at = 0;
    buf[0] = 0;
    for (int mod = 0; mod < CORE_MOD_COUNT; mod++) {
        int n = 0;
        for (int l = 0; l < n_layer; l++)
            n += touched[l * CORE_MOD_COUNT + mod];
        if (n && at < cap)
            at += (size_t)snprintf(buf + at, cap - at, "%s%s %d", at ? ", " : "",
                                   core_module_name(mod), n);
    }
}

int adapter_merge_export(core_model *m, const adapter_set *set, const char *const *names,
                         const char *out, int outtype, adapter_merge_report *rep, char *err,
                         size_t errlen)
{
    memset(rep, 0, sizeof *rep);
    if (outtype != ADAPTER_MERGE_F32 && outtype != ADAPTER_MERGE_F16) {
        snprintf(err, errlen, "unknown output type %d", outtype);
        return -EINVAL;
    }
    /* the weights as f32 (the loader leaves those the kernels read quantized in the mapping) */
    int rc0 = core_model_dequantize(m, err, errlen);
    if (rc0 < 0)
        return rc0;
    unsigned char *touched = calloc((size_t)m->cfg.n_layer * CORE_MOD_COUNT, 1);
    if (!touched) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    int rc = merge_weights(m, set, touched, err, errlen);
    if (rc == 0) {
        describe_touched(touched, m->cfg.n_layer, rep->modules, sizeof rep->modules);
        rc = write_merged(m, set, names, touched, out, outtype, rep, err, errlen);
    }
    free(touched);
    return rc;
}
