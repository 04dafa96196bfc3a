/* Writers for test adapters: a minimal safetensors encoder and PEFT directory layout. */
#include "adapter_testutil.h"

#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/format/safetensors.h"
#include "core/format/types.h"

static const char *const hf_names[CORE_MOD_COUNT] = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                                     "gate_proj", "up_proj", "down_proj"};

const char *tu_hf_name(int mod)
{
    return hf_names[mod];
}

core_config tu_config(void)
{
    core_config c = {.n_layer = 2,
                     .n_embd = 576,
                     .n_head = 9,
                     .n_head_kv = 3,
                     .head_dim = 64,
                     .n_ff = 1536,
                     .n_vocab = 49152,
                     .n_ctx_train = 8192,
                     .rope_dim = 64,
                     .rope_theta = 100000.0f,
                     .rms_eps = 1e-5f,
                     .tied_output = true,
                     .permuted_qk = true};
    strcpy(c.arch, "llama");
    return c;
}

static float tu_rand(uint32_t *s)
{
    *s = *s * 1664525u + 1013904223u;
    return ((float)(*s >> 8) / (float)(1u << 24)) - 0.5f;
}

int tu_write_safetensors(const char *path, const tu_tensor *t, int n)
{
    size_t cap = 256 + (size_t)n * 256, len = 0, off = 0;
    char *hdr = malloc(cap);
    len += (size_t)snprintf(hdr + len, cap - len, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (int i = 0; i < n; i++) {
        size_t es = strcmp(t[i].dtype, "F32") ? 2 : 4;
        size_t bytes = (size_t)t[i].rows * t[i].cols * es;
        len += (size_t)snprintf(
            hdr + len, cap - len,
            ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%d,%d],\"data_offsets\":[%zu,%zu]}", t[i].name,
            t[i].dtype, t[i].rows, t[i].cols, off, off + bytes);
        off += bytes;
    }
    len += (size_t)snprintf(hdr + len, cap - len, "}");
    while (len % 8)
        hdr[len++] = ' ';
    FILE *f = fopen(path, "wb");
    if (!f) {
        free(hdr);
        return -1;
    }
    uint64_t hl = len;
    fwrite(&hl, 8, 1, f);
    fwrite(hdr, 1, len, f);
    free(hdr);
    for (int i = 0; i < n; i++) {
        uint32_t s = 12345u + (uint32_t)i * 7919u;
        for (int k = 0; k < t[i].rows * t[i].cols; k++) {
            float v = t[i].values ? t[i].values[k] : tu_rand(&s);
            if (!strcmp(t[i].dtype, "F32")) {
                fwrite(&v, 4, 1, f);
            } else {
                uint16_t h =
                    strcmp(t[i].dtype, "F16") ? core_fp32_to_bf16(v) : core_fp32_to_fp16(v);
                fwrite(&h, 2, 1, f);
            }
        }
    }
    return fclose(f) ? -1 : 0;
}

int tu_mkdirs(const char *path)
{
    char p[4096];
    snprintf(p, sizeof p, "%s", path);
    for (char *s = p + 1; *s; s++) {
        if (*s == '/') {
            *s = 0;
            mkdir(p, 0755);
            *s = '/';
        }
    }
    return mkdir(p, 0755) && errno != EEXIST ? -1 : 0;
}

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(p);
}

void tu_rmrf(const char *path)
{
    if (strncmp(path, "/tmp/adaptree-test-", 19) == 0)
        nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

const char *tu_tmpdir(void)
{
    static char buf[64];
    snprintf(buf, sizeof buf, "/tmp/adaptree-test-XXXXXX");
    return mkdtemp(buf);
}

/* Writes a PEFT directory whose targeted (layer, module) pairs are those want() accepts. */
static int write_peft(const char *dir, const char *config_json, const core_config *cfg,
                      int (*want)(const void *ctx, int layer, int mod), const void *ctx, int r,
                      const char *dtype, uint32_t seed)
{
    if (tu_mkdirs(dir))
        return -1;
    char p[4096];
    snprintf(p, sizeof p, "%s/adapter_config.json", dir);
    FILE *f = fopen(p, "w");
    if (!f)
        return -1;
    fputs(config_json, f);
    fclose(f);
    int cap = 2 * cfg->n_layer * CORE_MOD_COUNT;
    tu_tensor *t = calloc((size_t)cap, sizeof *t);
    int n = 0;
    size_t n_vals = 0;
    for (int l = 0; l < cfg->n_layer; l++)
        for (int m = 0; m < CORE_MOD_COUNT; m++)
            if (want(ctx, l, m))
                n_vals += (size_t)r * (core_module_in(cfg, m) + core_module_out(cfg, m));
    float *vals = malloc(n_vals * sizeof(float) + 1);
    uint32_t s = seed;
    for (size_t i = 0; i < n_vals; i++)
        vals[i] = tu_rand(&s) * 0.2f;
    float *v = vals;
    for (int l = 0; l < cfg->n_layer; l++) {
        for (int m = 0; m < CORE_MOD_COUNT; m++) {
            if (!want(ctx, l, m))
                continue;
            const char *blk = m <= CORE_MOD_O ? "self_attn" : "mlp";
            tu_tensor *a = &t[n++], *b = &t[n++];
            snprintf(a->name, sizeof a->name,
                     "base_model.model.model.layers.%d.%s.%s.lora_A.weight", l, blk, hf_names[m]);
            snprintf(b->name, sizeof b->name,
                     "base_model.model.model.layers.%d.%s.%s.lora_B.weight", l, blk, hf_names[m]);
            a->dtype = b->dtype = dtype;
            a->rows = r;
            a->cols = core_module_in(cfg, m);
            b->rows = core_module_out(cfg, m);
            b->cols = r;
            a->values = v;
            v += (size_t)a->rows * a->cols;
            b->values = v;
            v += (size_t)b->rows * b->cols;
        }
    }
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", dir);
    int rc = tu_write_safetensors(p, t, n);
    free(vals);
    free(t);
    return rc;
}

static int want_bit(const void *ctx, int l, int m)
{
    return (int)(*(const uint64_t *)ctx >> (l * CORE_MOD_COUNT + m) & 1);
}

static int want_module(const void *ctx, int l, int m)
{
    (void)l;
    return (int)(*(const unsigned *)ctx >> m & 1);
}

int tu_write_peft(const char *dir, const char *config_json, const core_config *cfg, uint64_t mask,
                  int r, const char *dtype, uint32_t seed)
{
    return write_peft(dir, config_json, cfg, want_bit, &mask, r, dtype, seed);
}

int tu_write_peft_layers(const char *dir, const char *config_json, const core_config *cfg,
                         unsigned modules, int r, const char *dtype, uint32_t seed)
{
    return write_peft(dir, config_json, cfg, want_module, &modules, r, dtype, seed);
}

int tu_read_st_tensor(const char *path, const char *name, float *out, size_t n)
{
    core_st *st = core_st_open(path, NULL, 0);
    const core_st_tensor *t = st ? core_st_find(st, name) : NULL;
    int rc = t && core_st_numel(t) == n && core_st_to_f32(t, out) == 0 ? 0 : -1;
    core_st_close(st);
    return rc;
}
