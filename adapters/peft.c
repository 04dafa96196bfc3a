/* PEFT LoRA adapters: adapter_config.json (cJSON) + adapter_model.safetensors, exported as the
 * loader row adapter__loader_peft.
 *
 * The config (peft_config.c) decides which (layer, module) pairs are targeted and their rank and
 * alpha, and refuses the options adaptree does not implement. This file reads the files, matches
 * the weights to the plan and copies them: the weights file must hold exactly an A and a B of the
 * right shapes for each targeted pair. A probe runs the same checks on the config and the
 * safetensors header, then stops before the weights are copied. A load reads the weights file
 * whole into memory, a probe only its header (adapter_io.c says why files are never mapped, and
 * how a registry load keeps every file it opens beneath the root).
 */
#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "adapters/adapter_internal.h"
#include "adapters/peft_internal.h"
#include "core/base.h"
#include "core/format/safetensors.h"
#include "core/format/types.h"

/* The files of a PEFT adapter directory (the loader row names them to the table). */
#define CONFIG_FILE "adapter_config.json"
#define WEIGHTS_FILE "adapter_model.safetensors"
#define PICKLE_FILE "adapter_model.bin" /* refused: only looked for, to say why */

#define CONFIG_MAX_BYTES (1 << 20)
#define HEADER_FIRST_READ (64 << 10) /* a probe's first read; most headers fit */

/* Reads the whole file at path (beneath root when set), of at most cap bytes, into *out
 * (malloc'd, NUL-terminated), *len bytes: 0, or a negative errno with a message naming path. */
static int read_small(const char *root, const char *path, size_t cap, char **out, size_t *len,
                      char *err, size_t errlen)
{
    uint64_t size;
    *out = NULL;
    int fd = adapter__file_open(root, path, &size, err, errlen);
    if (fd < 0)
        return fd;
    char *buf = NULL;
    int rc = 0;
    if (size > cap) {
        snprintf(err, errlen, "%s: larger than 1 MiB", path);
        rc = -EFBIG;
    } else if (!(buf = malloc((size_t)size + 1))) {
        snprintf(err, errlen, "%s: out of memory", path);
        rc = -ENOMEM;
    } else {
        rc = adapter__file_read(fd, path, buf, (size_t)size, 0, err, errlen);
    }
    close(fd);
    if (rc) {
        free(buf);
        return rc;
    }
    buf[size] = 0;
    *out = buf;
    *len = (size_t)size;
    return 0;
}

/* Parses a safetensors key of a LoRA weight of cfg's models: base_model.model.model.layers.L.
 * <block>.<m>.lora_{A,B}[.<adapter name>].weight. Returns 0 with layer, module (the first of a
 * fused Linear's) and which (0 = A, 1 = B). */
static int parse_key(const char *key, const core_config *cfg, int *layer, int *mod, int *which)
{
    int n_layer = cfg->n_layer;
    const char *pre = "base_model.model.model.layers.";
    size_t np = strlen(pre);
    if (strncmp(key, pre, np) != 0)
        return -1;
    const char *p = key + np;
    char *end;
    long l = strtol(p, &end, 10);
    if (end == p || *end != '.' || l < 0 || l >= n_layer)
        return -1;
    p = end + 1;
    for (int m = 0; m < CORE_MOD_COUNT; m++) {
        char want[64];
        if (core_module_span(cfg, m) == 0)
            continue;
        int w = snprintf(want, sizeof want, "%s.%s.lora_", adapter__peft_module_block(m),
                         adapter__peft_module_name(cfg, m));
        if (strncmp(p, want, (size_t)w) != 0)
            continue;
        const char *q = p + w;
        if (*q != 'A' && *q != 'B')
            return -1;
        *which = *q == 'B';
        q++;
        const char *dot = strchr(q + 1, '.');
        /* ".weight", or ".<adapter>.weight" with a name without dots */
        if (strcmp(q, ".weight") != 0 && !(q[0] == '.' && dot && !strcmp(dot, ".weight")))
            return -1;
        *layer = (int)l;
        *mod = m;
        return 0;
    }
    return -1;
}

/* Decides the targeted pairs and their rank/alpha from the config (peft_config.c), then matches
 * every tensor of the weights file to exactly one of them and checks its shape. */
static int plan_modules(const adapter__peft_cfg *c, const core_st *st, const core_config *cfg,
                        adapter__peft_plan *plan, char *err, size_t errlen)
{
    int rc = adapter__peft_plan_targets(c, cfg, plan, err, errlen);
    if (rc)
        return rc;
    for (size_t i = 0; i < st->n_tensors; i++) {
        const core_st_tensor *t = &st->tensors[i];
        int l, m, which;
        if (parse_key(t->name, cfg, &l, &m, &which)) {
            snprintf(err, errlen,
                     "adapter_model.safetensors: tensor '%s' is not a LoRA A/B weight of a %s "
                     "linear layer (%s; DoRA, lora bias, embedding or head LoRA and "
                     "modules_to_save are not supported; %d layers)",
                     t->name, cfg->arch, adapter__peft_linears(cfg), cfg->n_layer);
            return -EINVAL;
        }
        adapter__peft_plan *p = &plan[l * CORE_MOD_COUNT + m];
        if (!p->targeted) {
            snprintf(err, errlen,
                     "tensor '%s': layer %d %s is not targeted by adapter_config.json "
                     "(target_modules / exclude_modules / layers_to_transform)",
                     t->name, l, adapter__peft_module_name(cfg, m));
            return -EINVAL;
        }
        if (p->ab[which]) {
            snprintf(err, errlen, "tensor '%s': layer %d %s has two lora_%c weights", t->name, l,
                     adapter__peft_module_name(cfg, m), which ? 'B' : 'A');
            return -EINVAL;
        }
        if (t->dtype != CORE_TYPE_F32 && t->dtype != CORE_TYPE_F16 && t->dtype != CORE_TYPE_BF16) {
            snprintf(err, errlen, "tensor '%s': dtype %s is not supported (F32, F16, BF16)",
                     t->name, t->dtype_name);
            return -EINVAL;
        }
        uint64_t in = (uint64_t)core_module_in(cfg, m), out = (uint64_t)adapter__unit_out(cfg, m);
        uint64_t want0 = which ? out : (uint64_t)p->rank, want1 = which ? (uint64_t)p->rank : in;
        if (t->n_dims != 2 || t->shape[0] != want0 || t->shape[1] != want1) {
            /* what to do first: the server passes on only the start of a long reason */
            snprintf(err, errlen,
                     "layer %d %s lora_%c: shape [%llu, %llu], expected [%llu, %llu]: is this "
                     "adapter for another base model? (the base %s is %llu -> %llu; rank %d "
                     "from adapter_config.json; tensor '%s')",
                     l, adapter__peft_module_name(cfg, m), which ? 'B' : 'A',
                     (unsigned long long)t->shape[0],
                     (unsigned long long)(t->n_dims > 1 ? t->shape[1] : 0),
                     (unsigned long long)want0, (unsigned long long)want1,
                     adapter__peft_module_name(cfg, m), (unsigned long long)in,
                     (unsigned long long)out, p->rank, t->name);
            return -EINVAL;
        }
        p->ab[which] = t;
    }
    for (int k = 0; k < cfg->n_layer * CORE_MOD_COUNT; k++) {
        adapter__peft_plan *p = &plan[k];
        if (p->targeted && (!p->ab[0] || !p->ab[1])) {
            snprintf(err, errlen,
                     "adapter_config.json targets layer %d %s but adapter_model.safetensors has "
                     "no lora_%c weight for it",
                     k / CORE_MOD_COUNT, adapter__peft_module_name(cfg, k % CORE_MOD_COUNT),
                     p->ab[0] ? 'B' : 'A');
            return -EINVAL;
        }
    }
    return 0;
}

/* The slab a load of the plan allocates: its dtype (one for all; mixed files become f32) and
 * *bytes. 0, or -EINVAL when the plan holds no pair. */
static int plan_slab(const adapter__peft_plan *plan, const core_config *cfg, uint32_t *dtype,
                     size_t *bytes, char *err, size_t errlen)
{
    const uint32_t none = UINT32_MAX;
    uint32_t dt = none;
    for (int k = 0; k < cfg->n_layer * CORE_MOD_COUNT; k++)
        for (int w = 0; w < 2 && plan[k].ab[0]; w++) {
            uint32_t d = plan[k].ab[w]->dtype;
            dt = dt == none || dt == d ? d : CORE_TYPE_F32;
        }
    if (dt == none) {
        snprintf(err, errlen, "adapter_model.safetensors holds no LoRA weights");
        return -EINVAL;
    }
    size_t es = dt == CORE_TYPE_F32 ? 4 : 2, total = 0;
    for (int k = 0; k < cfg->n_layer * CORE_MOD_COUNT; k++)
        if (plan[k].ab[0])
            total += (size_t)plan[k].rank *
                     (core_module_in(cfg, k % CORE_MOD_COUNT) +
                      adapter__unit_out(cfg, k % CORE_MOD_COUNT)) *
                     es;
    *dtype = dt;
    *bytes = total;
    return 0;
}

/* Copies the planned weights into a new adapter. */
static adapter *build(const adapter__peft_cfg *c, const adapter__peft_plan *plan,
                      const core_config *cfg, char *err, size_t errlen)
{
    uint32_t dtype;
    size_t total;
    if (plan_slab(plan, cfg, &dtype, &total, err, errlen))
        return NULL;
    adapter *a = adapter__new(cfg->n_layer, dtype, total);
    if (!a) {
        snprintf(err, errlen, "out of memory for %zu bytes of adapter weights", total);
        return NULL;
    }
    a->format = ADAPTER_PEFT;
    a->r = c->r;
    a->alpha = (float)c->alpha;
    a->rslora = c->rslora;
    unsigned char *at = a->slab;
    float *tmp[2] = {NULL, NULL};
    for (int k = 0; k < cfg->n_layer * CORE_MOD_COUNT; k++) {
        const adapter__peft_plan *p = &plan[k];
        if (!p->ab[0])
            continue;
        int r = p->rank;
        const void *src[2];
        for (int w = 0; w < 2; w++) {
            const core_st_tensor *t = p->ab[w];
            size_t n = (size_t)t->shape[0] * (size_t)t->shape[1];
            src[w] = t->data;
            if (t->dtype != dtype) { /* mixed dtypes: widen this tensor to f32 */
                free(tmp[w]);
                tmp[w] = malloc(n * sizeof(float));
                if (!tmp[w] || core_st_to_f32(t, tmp[w])) {
                    snprintf(err, errlen, "tensor '%s': cannot convert to f32", t->name);
                    goto fail;
                }
                src[w] = tmp[w];
            }
        }
        const char *bad;
        float scale = (float)(p->alpha / (c->rslora ? sqrt((double)r) : (double)r));
        if (adapter__put_pair(a, cfg, k / CORE_MOD_COUNT, k % CORE_MOD_COUNT, r, scale, src[0],
                              src[1], true, &at, &bad)) {
            snprintf(err, errlen, "tensor '%s' holds NaN or infinite values",
                     p->ab[bad[5] == 'B']->name);
            goto fail;
        }
    }
    free(tmp[0]);
    free(tmp[1]);
    return a;
fail:
    free(tmp[0]);
    free(tmp[1]);
    adapter_unref(a);
    return NULL;
}

int adapter__peft_config_check(const char *json, size_t len, const core_config *cfg, char *err,
                               size_t errlen)
{
    cJSON *j = cJSON_ParseWithLength(json, len);
    if (!j) {
        snprintf(err, errlen, "adapter_config.json: invalid JSON");
        return -EINVAL;
    }
    adapter__peft_cfg c;
    core_st none = {0};
    adapter__peft_plan *plan = calloc((size_t)cfg->n_layer * CORE_MOD_COUNT, sizeof *plan);
    int rc = -ENOMEM;
    if (plan) {
        rc = adapter__peft_config_parse(j, &c, err, errlen) ||
                     plan_modules(&c, &none, cfg, plan, err, errlen)
                 ? -EINVAL
                 : 0;
    }
    free(plan);
    cJSON_Delete(j);
    return rc;
}

/* What a load and a probe share: the config read, parsed and checked, the weights file read
 * (whole for a load, its header for a probe) and every tensor matched to a planned (layer,
 * module). */
typedef struct peft_src {
    char *text; /* adapter_config.json (len bytes) */
    size_t len;
    cJSON *j;
    adapter__peft_cfg c; /* points into j */
    void *weights; /* the bytes st was opened over: the file, or its first bytes for a probe */
    core_st *st;
    adapter__peft_plan *plan; /* (n_layer * CORE_MOD_COUNT) */
} peft_src;

static void peft_close(peft_src *s)
{
    free(s->plan);
    core_st_close(s->st);
    free(s->weights); /* after st, which borrows it */
    cJSON_Delete(s->j);
    free(s->text);
}

/* Reads the safetensors file at path (beneath root when set) into *buf and opens it: whole, or
 * (header_only) as many leading bytes as its header takes, and the file size. 0, or a negative
 * errno with a message naming path. */
static int open_weights(const char *root, const char *path, bool header_only, core_st **st,
                        void **buf, char *err, size_t errlen)
{
    char msg[512];
    size_t have = 0;
    *st = NULL;
    *buf = NULL;
    if (!header_only) {
        int rc = adapter__read_file(root, path, buf, &have, err, errlen);
        if (rc)
            return rc;
        *st = core_st_open_memory(*buf, have, msg, sizeof msg);
        if (!*st)
            snprintf(err, errlen, "%s: %s", path, msg);
        return *st ? 0 : -EINVAL;
    }
    uint64_t size, need = 0;
    int fd = adapter__file_open(root, path, &size, err, errlen);
    if (fd < 0)
        return fd;
    unsigned char *p = NULL;
    size_t want = size < HEADER_FIRST_READ ? (size_t)size : HEADER_FIRST_READ;
    int rc;
    while ((rc = adapter__read_more(fd, path, &p, &have, want, err, errlen)) == 0) {
        *st = core_st_open_header(p, have, size, &need, msg, sizeof msg);
        if (*st || need <= have) /* opened, or refused */
            break;
        want = need > 2 * (uint64_t)have ? (size_t)need : 2 * have;
        want = want < size ? want : (size_t)size;
    }
    close(fd);
    *buf = p;
    if (rc == 0 && !*st) {
        snprintf(err, errlen, "%s: %s", path, msg);
        rc = -EINVAL;
    }
    return rc;
}

/* Fills *s from dir (beneath root when set), the weights file whole or (header_only) its header:
 * 0, or -EINVAL/-ENOMEM/-errno with a message (s is then closed): -EAGAIN when a file changed
 * while it was read. */
static int peft_open(peft_src *s, const char *root, const char *dir, const core_config *cfg,
                     bool header_only, char *err, size_t errlen)
{
    char path[4096];
    memset(s, 0, sizeof *s);
    snprintf(path, sizeof path, "%s/" CONFIG_FILE, dir);
    int rc = read_small(root, path, CONFIG_MAX_BYTES, &s->text, &s->len, err, errlen);
    if (rc)
        return rc;
    s->j = cJSON_ParseWithLength(s->text, s->len);
    if (!s->j) {
        snprintf(err, errlen, "adapter_config.json: invalid JSON near byte %td",
                 cJSON_GetErrorPtr() ? cJSON_GetErrorPtr() - s->text : (ptrdiff_t)0);
        goto fail;
    }
    if (adapter__peft_config_parse(s->j, &s->c, err, errlen))
        goto fail;
    snprintf(path, sizeof path, "%s/" WEIGHTS_FILE, dir);
    rc = open_weights(root, path, header_only, &s->st, &s->weights, err, errlen);
    if (rc) {
        snprintf(path, sizeof path, "%s/" PICKLE_FILE, dir);
        if (rc == -ENOENT && adapter__file_exists(root, path))
            snprintf(err, errlen,
                     "adapter_model.bin (pickle) is not supported; save the adapter "
                     "with safe_serialization=True");
        peft_close(s);
        return rc;
    }
    s->plan = calloc((size_t)cfg->n_layer * CORE_MOD_COUNT, sizeof *s->plan);
    if (!s->plan) {
        snprintf(err, errlen, "out of memory");
        peft_close(s);
        return -ENOMEM;
    }
    if (plan_modules(&s->c, s->st, cfg, s->plan, err, errlen))
        goto fail;
    return 0;
fail:
    peft_close(s);
    return -EINVAL;
}

/* The row's load: the PEFT adapter in dir (beneath root when set), checked against cfg and
 * copied into a new adapter with one reference, or NULL with a message. */
static adapter *load_peft(const char *root, const char *dir, const core_config *cfg, char *err,
                          size_t errlen)
{
    peft_src s;
    if (peft_open(&s, root, dir, cfg, false, err, errlen))
        return NULL;
    adapter *a = build(&s.c, s.plan, cfg, err, errlen);
    if (a) {
        a->hash = core_hash64(core_hash64(CORE_HASH_INIT, s.text, s.len), s.st->base, s.st->size);
        const cJSON *b = cJSON_GetObjectItem(s.j, "base_model_name_or_path");
        if (cJSON_IsString(b))
            snprintf(a->base_model, sizeof a->base_model, "%s", b->valuestring);
    }
    peft_close(&s);
    return a;
}

/* The row's probe: describes the PEFT adapter in dir from its config and the safetensors header,
 * with every check of load_peft but the weight values. 0, or a negative errno with a message. */
static int probe_peft(const char *root, const char *dir, const core_config *cfg,
                      adapter_probe_info *out, char *err, size_t errlen)
{
    peft_src s;
    memset(out, 0, sizeof *out);
    int rc = peft_open(&s, root, dir, cfg, true, err, errlen);
    if (rc)
        return rc;
    adapter_probe_info p = {
        .format = ADAPTER_PEFT, .r = s.c.r, .alpha = (float)s.c.alpha, .rslora = s.c.rslora};
    rc = plan_slab(s.plan, cfg, &p.dtype, &p.bytes, err, errlen);
    for (int k = 0; k < cfg->n_layer * CORE_MOD_COUNT && !rc; k++) {
        int first = k % CORE_MOD_COUNT, span = s.plan[k].ab[0] ? core_module_span(cfg, first) : 0;
        for (int m = first; m < first + span; m++) { /* as adapter__put_pair fills them */
            p.targets |= 1u << m;
            p.n_mods++;
        }
    }
    if (!rc)
        *out = p;
    peft_close(&s);
    return rc;
}

adapter *adapter_load_peft(const char *dir, const core_config *cfg, char *err, size_t errlen)
{
    return load_peft(NULL, dir, cfg, err, errlen);
}

/* A directory with adapter_config.json is a PEFT adapter; its weights are
 * adapter_model.safetensors beside it. */
const adapter__loader adapter__loader_peft = {
    .name = "PEFT",
    .format = ADAPTER_PEFT,
    .marker = CONFIG_FILE,
    .weights = WEIGHTS_FILE,
    .weights_alt = PICKLE_FILE,
    .loads_dir = true,
    .load = load_peft,
    .probe = probe_peft,
};
