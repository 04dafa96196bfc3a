/* GGUF-LoRA adapters as llama.cpp's convert_lora_to_gguf.py writes them, exported as the loader
 * row adapter__loader_gguf: a .gguf file, or a directory holding adapter.gguf. general.type
 * "adapter", adapter.type "lora", adapter.lora.alpha, and per targeted weight
 * "<base tensor>.lora_a" (ne [in, r]) and "<base tensor>.lora_b" (ne [r, out]). Their q/k lora_b
 * rows are already in the GGUF order. A fused base tensor (Phi-3's attn_qkv, ffn_up) has one pair,
 * which adapter__put_pair splits into its modules. Scale per module: alpha / r, or 1 when alpha is
 * 0 (llama.cpp's rule). A load and a probe share the header and shape checks (plan_tensors); only
 * the load reads the weights. A load reads the file whole into memory, a probe only as much of it
 * as the header and tensor infos take (adapter_io.c says why files are never mapped). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "adapters/adapter_internal.h"
#include "core/base.h"
#include "core/format/gguf.h"
#include "core/kernels/dequant.h"

#define HEADER_FIRST_READ (1 << 20) /* a probe's first read; most headers fit */

/* Splits "blk.L.<tensor>.weight.lora_a" into layer, module (the first of a fused tensor's:
 * Phi-3's attn_qkv is q) and which (0 = a, 1 = b). */
static int parse_name(const core_gguf_str *s, const core_config *cfg, int *layer, int *mod,
                      int *which)
{
    int n_layer = cfg->n_layer, row0;
    char name[160];
    if (s->len >= sizeof name)
        return -1;
    memcpy(name, s->ptr, s->len);
    name[s->len] = 0;
    char *end;
    if (strncmp(name, "blk.", 4) != 0)
        return -1;
    long l = strtol(name + 4, &end, 10);
    if (end == name + 4 || *end != '.' || l < 0 || l >= n_layer)
        return -1;
    for (int m = 0; m < CORE_MOD_COUNT; m++) {
        if (core_module_span(cfg, (core_module)m) == 0)
            continue;
        const char *g = core_module_tensor(cfg, (core_module)m, &row0);
        size_t n = strlen(g);
        if (strncmp(end + 1, g, n) != 0)
            continue;
        const char *rest = end + 1 + n;
        if (strcmp(rest, ".weight.lora_a") != 0 && strcmp(rest, ".weight.lora_b") != 0)
            return -1;
        *layer = (int)l;
        *mod = m;
        *which = rest[13] == 'b';
        return 0;
    }
    return -1;
}

/* Checks the adapter's keys (general.type, adapter.type, the architecture, no aLoRA) and reads
 * adapter.lora.alpha into *alpha (0 when absent): 0, or -EINVAL with a message. */
static int check_header(const core_gguf *g, const core_config *cfg, float *alpha, char *err,
                        size_t errlen)
{
    char s[64];
    if (core_gguf_get_str(g, "general.type", s, sizeof s) || strcmp(s, "adapter") != 0) {
        snprintf(err, errlen, "general.type: expected \"adapter\" (is this a model, not a LoRA?)");
        return -EINVAL;
    }
    if (core_gguf_get_str(g, "adapter.type", s, sizeof s) || strcmp(s, "lora") != 0) {
        snprintf(err, errlen, "adapter.type: only \"lora\" is supported");
        return -EINVAL;
    }
    if (core_gguf_get_str(g, "general.architecture", s, sizeof s) || strcmp(s, cfg->arch) != 0) {
        snprintf(err, errlen, "general.architecture: adapter is for '%s', the base is '%s'", s,
                 cfg->arch);
        return -EINVAL;
    }
    if (core_gguf_find(g, "adapter.alora.invocation_tokens")) {
        snprintf(err, errlen, "adapter.alora.invocation_tokens: aLoRA adapters are not supported");
        return -EINVAL;
    }
    *alpha = 0;
    int rc = core_gguf_get_f32(g, "adapter.lora.alpha", alpha);
    if ((rc && rc != -ENOENT) || !isfinite(*alpha)) {
        snprintf(err, errlen, "adapter.lora.alpha: expected a finite number");
        return -EINVAL;
    }
    return 0;
}

/* The planned load of an open file: its lora_a/lora_b pairs checked against the base, without
 * touching the weights. */
typedef struct gguf_plan {
    const core_gguf_tensor **ab; /* (n_layer * CORE_MOD_COUNT * 2): [2k] lora_a, [2k + 1] lora_b */
    float alpha;
    uint32_t dtype; /* of the slab: the file's, or f32 for mixed files */
    size_t bytes;   /* of the slab */
} gguf_plan;

/* Fills *p from g (p->ab allocated here; the caller frees it): 0, or -EINVAL/-ENOMEM with a
 * message naming the tensor or key. */
static int plan_tensors(const core_gguf *g, const char *file, const core_config *cfg, gguf_plan *p,
                        char *err, size_t errlen)
{
    memset(p, 0, sizeof *p);
    p->ab = calloc((size_t)cfg->n_layer * CORE_MOD_COUNT * 2, sizeof(const core_gguf_tensor *));
    if (!p->ab) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    if (check_header(g, cfg, &p->alpha, err, errlen))
        return -EINVAL;
    const core_gguf_tensor **ab = p->ab;
    const uint32_t none = UINT32_MAX;
    uint32_t dtype = none;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const core_gguf_tensor *t = &g->tensors[i];
        int l, m, w;
        if (parse_name(&t->name, cfg, &l, &m, &w)) {
            snprintf(err, errlen,
                     "tensor '%.*s' is not the lora_a/lora_b of a %s linear weight (embedding "
                     "and output-head LoRA are not supported; %d layers)",
                     (int)(t->name.len < 120 ? t->name.len : 120), t->name.ptr, cfg->arch,
                     cfg->n_layer);
            return -EINVAL;
        }
        if (t->type != CORE_TYPE_F32 && t->type != CORE_TYPE_F16 && t->type != CORE_TYPE_BF16) {
            snprintf(err, errlen,
                     "tensor '%.*s': type %s is not supported (f32, f16, bf16); "
                     "convert with --outtype f16",
                     (int)t->name.len, t->name.ptr, core_type_name(t->type));
            return -EINVAL;
        }
        dtype = dtype == none || dtype == t->type ? t->type : CORE_TYPE_F32;
        const core_gguf_tensor **slot = &ab[(l * CORE_MOD_COUNT + m) * 2 + w];
        if (*slot) {
            snprintf(err, errlen, "tensor '%.*s' appears twice", (int)t->name.len, t->name.ptr);
            return -EINVAL;
        }
        *slot = t;
    }
    /* Shapes: lora_a ne [in, r], lora_b ne [r, out], both present. */
    size_t total = 0;
    for (int k = 0; k < cfg->n_layer * CORE_MOD_COUNT; k++) {
        const core_gguf_tensor *A = ab[2 * k], *B = ab[2 * k + 1];
        if (!A && !B)
            continue;
        int m = k % CORE_MOD_COUNT, l = k / CORE_MOD_COUNT, row0;
        uint64_t in = (uint64_t)core_module_in(cfg, m), out = (uint64_t)adapter__unit_out(cfg, m);
        const char *tn = core_module_tensor(cfg, m, &row0);
        if (!A || !B) {
            snprintf(err, errlen, "blk.%d.%s: lora_%c is missing", l, tn, A ? 'b' : 'a');
            return -EINVAL;
        }
        if (A->n_dims != 2 || B->n_dims != 2 || A->ne[0] != in || B->ne[1] != out ||
            A->ne[1] != B->ne[0] || A->ne[1] < 1 || A->ne[1] > 4096) {
            snprintf(err, errlen,
                     "blk.%d.%s: lora_a ne [%llu, %llu] and lora_b ne [%llu, %llu] do not fit the "
                     "base weight (%llu -> %llu); is this adapter for another base model?",
                     l, tn, (unsigned long long)A->ne[0], (unsigned long long)A->ne[1],
                     (unsigned long long)B->ne[0], (unsigned long long)B->ne[1],
                     (unsigned long long)in, (unsigned long long)out);
            return -EINVAL;
        }
        total += (size_t)A->ne[1] * (in + out) * (dtype == CORE_TYPE_F32 ? 4 : 2);
    }
    if (!total) {
        snprintf(err, errlen, "%s holds no LoRA tensors", file);
        return -EINVAL;
    }
    p->dtype = dtype;
    p->bytes = total;
    return 0;
}

/* The row's load: the GGUF-LoRA file (beneath root when set), checked against cfg and copied
 * into a new adapter with one reference, or NULL with a message. */
static adapter *load_gguf(const char *root, const char *file, const core_config *cfg, char *err,
                          size_t errlen)
{
    char gerr[512];
    void *buf;
    size_t len;
    if (adapter__read_file(root, file, &buf, &len, err, errlen))
        return NULL;
    core_gguf *g = core_gguf_open_memory(buf, len, gerr, sizeof gerr);
    if (!g) {
        snprintf(err, errlen, "%s: %s", file, gerr);
        free(buf);
        return NULL;
    }
    adapter *a = NULL;
    float *tmp[2] = {NULL, NULL};
    gguf_plan p;
    if (plan_tensors(g, file, cfg, &p, err, errlen))
        goto out;
    a = adapter__new(cfg->n_layer, p.dtype, p.bytes);
    if (!a) {
        snprintf(err, errlen, "out of memory for %zu bytes of adapter weights", p.bytes);
        goto out;
    }
    a->format = ADAPTER_GGUF;
    a->alpha = p.alpha;
    unsigned char *at = a->slab;
    for (int k = 0; k < cfg->n_layer * CORE_MOD_COUNT; k++) {
        if (!p.ab[2 * k])
            continue;
        int rank = (int)p.ab[2 * k]->ne[1];
        a->r = rank > a->r ? rank : a->r;
        const void *src[2];
        for (int w = 0; w < 2; w++) {
            const core_gguf_tensor *t = p.ab[2 * k + w];
            size_t n = (size_t)t->ne[1] * (size_t)t->ne[0];
            src[w] = t->data;
            if (t->type != p.dtype) {
                free(tmp[w]);
                tmp[w] = malloc(n * sizeof(float));
                if (!tmp[w] || core_dequant_row(t->type, t->data, tmp[w], (int64_t)n)) {
                    snprintf(err, errlen, "out of memory");
                    goto fail;
                }
                src[w] = tmp[w];
            }
        }
        /* lora_a ne [in, r] is A (r, in), lora_b ne [r, out] is B (out, r), rows already in
         * the GGUF order */
        const char *bad;
        if (adapter__put_pair(a, cfg, k / CORE_MOD_COUNT, k % CORE_MOD_COUNT, rank,
                              p.alpha != 0 ? p.alpha / (float)rank : 1.0f, src[0], src[1], false,
                              &at, &bad)) {
            const core_gguf_tensor *t = p.ab[2 * k + (bad[5] == 'B')];
            snprintf(err, errlen, "tensor '%.*s' holds NaN or infinite values", (int)t->name.len,
                     t->name.ptr);
            goto fail;
        }
    }
    a->hash = core_hash64(CORE_HASH_INIT, g->base, g->size);
    core_gguf_get_str(g, "general.name", a->base_model, sizeof a->base_model);
    goto out;
fail:
    adapter_unref(a);
    a = NULL;
out:
    free(tmp[0]);
    free(tmp[1]);
    free(p.ab);
    core_gguf_close(g);
    free(buf); /* after g, which borrows it */
    return a;
}

/* Opens the header of the GGUF file at path (beneath root when set) from as many of its leading
 * bytes as it takes, read into *buf (the caller frees it after closing the result). 0, or a
 * negative errno with a message (-EAGAIN when the file changed while it was read). */
static int open_header(const char *root, const char *path, core_gguf **g, unsigned char **buf,
                       char *err, size_t errlen)
{
    char msg[512];
    uint64_t size, need = 0;
    size_t have = 0;
    *g = NULL;
    *buf = NULL;
    int fd = adapter__file_open(root, path, &size, err, errlen);
    if (fd < 0)
        return fd;
    size_t want = size < HEADER_FIRST_READ ? (size_t)size : HEADER_FIRST_READ;
    int rc;
    while ((rc = adapter__read_more(fd, path, buf, &have, want, err, errlen)) == 0) {
        *g = core_gguf_open_header(*buf, have, size, &need, msg, sizeof msg);
        if (*g || need <= have) /* opened, or refused */
            break;
        want = need > 2 * (uint64_t)have ? (size_t)need : 2 * have;
        want = want < size ? want : (size_t)size;
    }
    close(fd);
    if (rc == 0 && !*g) {
        snprintf(err, errlen, "%s: %s", path, msg);
        rc = -EINVAL;
    }
    return rc;
}

/* The row's probe: describes the GGUF-LoRA file from its header and tensor infos, with every
 * check of load_gguf but the weight values. 0, or a negative errno with a message. */
static int probe_gguf(const char *root, const char *file, const core_config *cfg,
                      adapter_probe_info *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    core_gguf *g;
    unsigned char *buf;
    int rc = open_header(root, file, &g, &buf, err, errlen);
    if (rc) {
        free(buf);
        return rc;
    }
    gguf_plan p;
    rc = plan_tensors(g, file, cfg, &p, err, errlen);
    if (!rc) {
        *out = (adapter_probe_info){
            .format = ADAPTER_GGUF, .dtype = p.dtype, .alpha = p.alpha, .bytes = p.bytes};
        for (int k = 0; k < cfg->n_layer * CORE_MOD_COUNT; k++) {
            if (!p.ab[2 * k])
                continue;
            int rank = (int)p.ab[2 * k]->ne[1], first = k % CORE_MOD_COUNT;
            out->r = rank > out->r ? rank : out->r;
            for (int m = first; m < first + core_module_span(cfg, first); m++) {
                out->targets |= 1u << m; /* as adapter__put_pair fills them */
                out->n_mods++;
            }
        }
    }
    free(p.ab);
    core_gguf_close(g);
    free(buf);
    return rc;
}

adapter *adapter_load_gguf(const char *file, const core_config *cfg, char *err, size_t errlen)
{
    return load_gguf(NULL, file, cfg, err, errlen);
}

/* In a directory the adapter is adapter.gguf, which is its weight file too: leading out of the
 * registry root, it makes a failed node rather than no node. */
const adapter__loader adapter__loader_gguf = {
    .name = "GGUF-LoRA",
    .format = ADAPTER_GGUF,
    .marker = "adapter.gguf",
    .weights = "adapter.gguf",
    .suffix = ".gguf",
    .loads_dir = false,
    .load = load_gguf,
    .probe = probe_gguf,
};
