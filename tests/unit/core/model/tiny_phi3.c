/* A tiny Phi-3 GGUF and its Llama-layout twin (tiny_phi3.h), written with core's GGUF writer;
 * Q8_0 blocks are made here (d = max|x| / 127, q = round(x / d), as ggml's reference). */
#include "tests/unit/core/model/tiny_phi3.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/format/gguf_write.h"
#include "core/format/types.h"

/* Pseudo-random values in [-scale, scale), from a seed per tensor. */
static void fill(float *v, size_t n, uint32_t seed, float scale)
{
    uint32_t s = seed * 2654435761u + 12345u;
    for (size_t i = 0; i < n; i++) {
        s = s * 1664525u + 1013904223u;
        v[i] = scale * (2.0f * ((float)(s >> 8) / (float)(1u << 24)) - 1.0f);
    }
}

/* The rows of (layer, module) in Hugging Face order. */
static void module_rows(float *v, int layer, int mod, int rows, int cols)
{
    fill(v, (size_t)rows * cols, (uint32_t)(100 + layer * 16 + mod), 1.0f / sqrtf((float)cols));
}

/* x (n floats, a multiple of 32) as Q8_0 blocks into out. */
static void to_q8_0(const float *x, size_t n, uint8_t *out)
{
    for (size_t b = 0; b < n / 32; b++, out += 34) {
        float amax = 0;
        for (int i = 0; i < 32; i++)
            amax = fabsf(x[b * 32 + i]) > amax ? fabsf(x[b * 32 + i]) : amax;
        float d = amax / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
        uint16_t h = core_fp32_to_fp16(d);
        memcpy(out, &h, 2);
        for (int i = 0; i < 32; i++)
            out[2 + i] = (uint8_t)(int8_t)roundf(x[b * 32 + i] * id);
    }
}

/* Keeps every buffer a write needs until the file is written. */
typedef struct bufs {
    void *p[64];
    int n;
} bufs;

static int add(core_gguf_writer *w, bufs *b, const tp_opts *o, const char *name, uint32_t type,
               const float *v, int rows, int cols)
{
    if (o->skip && !strcmp(o->skip, name))
        return 0;
    uint64_t ne[2] = {(uint64_t)cols, (uint64_t)rows};
    size_t n = (size_t)(rows ? rows : 1) * cols, bytes = n * 4;
    void *data = malloc(n * 4);
    if (!data || b->n == 64)
        return -1;
    b->p[b->n++] = data;
    if (type == CORE_TYPE_Q8_0) {
        bytes = n / 32 * 34;
        to_q8_0(v, n, data);
    } else {
        memcpy(data, v, bytes);
    }
    return core_gguf_writer_add_tensor(w, name, type, rows ? 2 : 1, ne, data, bytes, NULL, 0);
}

static int add_meta(core_gguf_writer *w, const tp_opts *o)
{
    const char *a = o->llama_twin ? "llama" : "phi3";
    char k[96];
    int rc = core_gguf_writer_set_str(w, "general.architecture", a, NULL, 0);
    static const struct {
        const char *key;
        uint32_t v;
    } u[] = {{"block_count", TP_LAYERS},
             {"embedding_length", TP_EMBD},
             {"feed_forward_length", TP_FF},
             {"attention.head_count", TP_HEADS},
             {"attention.head_count_kv", TP_HEADS_KV},
             {"rope.dimension_count", TP_HEAD_DIM},
             {"context_length", 4096}};
    for (size_t i = 0; i < sizeof u / sizeof *u; i++) {
        snprintf(k, sizeof k, "%s.%s", a, u[i].key);
        rc = rc || core_gguf_writer_set_u32(w, k, u[i].v, NULL, 0);
    }
    snprintf(k, sizeof k, "%s.rope.freq_base", a);
    rc = rc || core_gguf_writer_set_f32(w, k, 10000.0f, NULL, 0);
    snprintf(k, sizeof k, "%s.attention.layer_norm_rms_epsilon", a);
    rc = rc || core_gguf_writer_set_f32(w, k, 1e-5f, NULL, 0);
    if (!o->llama_twin) {
        rc = rc || core_gguf_writer_set_u32(w, "phi3.attention.sliding_window",
                                            (uint32_t)o->sliding_window, NULL, 0);
        rc = rc || core_gguf_writer_set_u32(w, "phi3.rope.scaling.original_context_length", 4096,
                                            NULL, 0);
    }
    return rc;
}

static int add_layer(core_gguf_writer *w, bufs *b, const tp_opts *o, int l)
{
    static const char *const sep[CORE_MOD_COUNT] = {"attn_q",   "attn_k", "attn_v",  "attn_output",
                                                    "ffn_gate", "ffn_up", "ffn_down"};
    static const int rows[CORE_MOD_COUNT] = {TP_Q, TP_KV, TP_KV, TP_EMBD, TP_FF, TP_FF, TP_EMBD};
    static const int cols[CORE_MOD_COUNT] = {TP_EMBD, TP_EMBD, TP_EMBD, TP_Q,
                                             TP_EMBD, TP_EMBD, TP_FF};
    float *v[CORE_MOD_COUNT], norm[TP_EMBD];
    int rc = 0;
    char name[96];
    for (int m = 0; m < CORE_MOD_COUNT; m++) {
        v[m] = malloc(sizeof(float) * (size_t)rows[m] * cols[m]);
        if (!v[m])
            return -1;
        module_rows(v[m], l, m, rows[m], cols[m]);
    }
    for (int n = 0; n < 2; n++) {
        fill(norm, TP_EMBD, (uint32_t)(900 + 2 * l + n), 0.2f);
        for (int i = 0; i < TP_EMBD; i++)
            norm[i] += 1.0f;
        snprintf(name, sizeof name, "blk.%d.%s.weight", l, n ? "ffn_norm" : "attn_norm");
        rc = rc || add(w, b, o, name, CORE_TYPE_F32, norm, 0, TP_EMBD);
    }
    if (o->llama_twin) {
        for (int m = 0; m < CORE_MOD_COUNT && !rc; m++) {
            snprintf(name, sizeof name, "blk.%d.%s.weight", l, sep[m]);
            rc = add(w, b, o, name, o->type, v[m], rows[m], cols[m]);
        }
    } else {
        float *qkv = malloc(sizeof(float) * (TP_Q + 2 * TP_KV) * TP_EMBD);
        float *gu = malloc(sizeof(float) * 2 * TP_FF * TP_EMBD);
        if (!qkv || !gu)
            rc = -1;
        if (!rc) {
            memcpy(qkv, v[0], sizeof(float) * TP_Q * TP_EMBD);
            memcpy(qkv + TP_Q * TP_EMBD, v[1], sizeof(float) * TP_KV * TP_EMBD);
            memcpy(qkv + (TP_Q + TP_KV) * TP_EMBD, v[2], sizeof(float) * TP_KV * TP_EMBD);
            memcpy(gu, v[4], sizeof(float) * TP_FF * TP_EMBD);
            memcpy(gu + TP_FF * TP_EMBD, v[5], sizeof(float) * TP_FF * TP_EMBD);
            snprintf(name, sizeof name, "blk.%d.attn_qkv.weight", l);
            rc = add(w, b, o, name, o->type, qkv, TP_Q + 2 * TP_KV, TP_EMBD);
            snprintf(name, sizeof name, "blk.%d.ffn_up.weight", l);
            rc = rc || add(w, b, o, name, o->type, gu, 2 * TP_FF, TP_EMBD);
            snprintf(name, sizeof name, "blk.%d.attn_output.weight", l);
            rc = rc || add(w, b, o, name, o->type, v[3], TP_EMBD, TP_Q);
            snprintf(name, sizeof name, "blk.%d.ffn_down.weight", l);
            rc = rc || add(w, b, o, name, o->type, v[6], TP_EMBD, TP_FF);
        }
        free(qkv);
        free(gu);
    }
    for (int m = 0; m < CORE_MOD_COUNT; m++)
        free(v[m]);
    return rc;
}

int tp_write(const char *path, const tp_opts *o)
{
    core_gguf_writer *w = core_gguf_writer_new();
    bufs b = {.n = 0};
    float *emb = malloc(sizeof(float) * TP_VOCAB * TP_EMBD), norm[TP_EMBD];
    float *head = malloc(sizeof(float) * TP_VOCAB * TP_EMBD);
    char err[256] = "";
    int rc = w && emb && head ? add_meta(w, o) : -1;
    if (!rc) {
        fill(emb, (size_t)TP_VOCAB * TP_EMBD, 1, 1.0f);
        fill(head, (size_t)TP_VOCAB * TP_EMBD, 2, 0.2f);
        fill(norm, TP_EMBD, 3, 0.2f);
        for (int i = 0; i < TP_EMBD; i++)
            norm[i] += 1.0f;
        rc = add(w, &b, o, "token_embd.weight", CORE_TYPE_F32, emb, TP_VOCAB, TP_EMBD) ||
             add(w, &b, o, "output.weight", o->type, head, TP_VOCAB, TP_EMBD) ||
             add(w, &b, o, "output_norm.weight", CORE_TYPE_F32, norm, 0, TP_EMBD);
    }
    for (int l = 0; l < TP_LAYERS && !rc; l++)
        rc = add_layer(w, &b, o, l);
    if (!rc && o->longrope) {
        float f[TP_HEAD_DIM / 2];
        fill(f, TP_HEAD_DIM / 2, 4, 1.0f);
        rc = add(w, &b, o, "rope_factors_long.weight", CORE_TYPE_F32, f, 0, TP_HEAD_DIM / 2) ||
             add(w, &b, o, "rope_factors_short.weight", CORE_TYPE_F32, f, 0, TP_HEAD_DIM / 2);
    }
    if (!rc && (rc = core_gguf_writer_write(w, path, err, sizeof err)))
        printf("    tp_write %s: %s\n", path, err);
    core_gguf_writer_free(w);
    for (int i = 0; i < b.n; i++)
        free(b.p[i]);
    free(emb);
    free(head);
    return rc ? -1 : 0;
}

core_config tp_config(void)
{
    core_config c = {.kind = CORE_ARCH_PHI3,
                     .n_layer = TP_LAYERS,
                     .n_embd = TP_EMBD,
                     .n_head = TP_HEADS,
                     .n_head_kv = TP_HEADS_KV,
                     .head_dim = TP_HEAD_DIM,
                     .n_ff = TP_FF,
                     .n_vocab = TP_VOCAB,
                     .n_ctx_train = 4096,
                     .rope_dim = TP_HEAD_DIM,
                     .rope_theta = 10000.0f,
                     .rms_eps = 1e-5f,
                     .neox_rope = true,
                     .rope_theta_swa = 10000.0f};
    strcpy(c.arch, "phi3");
    return c;
}
