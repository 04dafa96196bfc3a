/* Model loading: the hyperparameters of each architecture from GGUF metadata (a table of
 * architectures, each with its own config function), tensor shape checks, and
 * dequantization of every weight into one f32 slab (pointers into it, llm.c style). The linear
 * weights and the head also keep pointers to their quantized data in the mapping, which decode
 * steps of few rows read instead (qmatmul.h). A module stored in a fused tensor (Phi-3's
 * attn_qkv, ffn_up) is its rows of it: GGUF rows are contiguous whatever the type, so its
 * quantized data is the tensor's plus row0 rows, and the kernels never know. */
#include "core/model/model.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base.h"
#include "core/kernels/dequant.h"
#include "core/kernels/qmatmul_internal.h"
#include "core/kernels/qmatmul_q8_internal.h"

static const char *const module_names[CORE_MOD_COUNT] = {"q", "k", "v", "o", "gate", "up", "down"};
static const char *const module_gguf[CORE_MOD_COUNT] = {
    "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};

const char *core_module_name(core_module mod)
{
    return (unsigned)mod < CORE_MOD_COUNT ? module_names[mod] : "?";
}

const char *core_module_gguf_name(core_module mod)
{
    return (unsigned)mod < CORE_MOD_COUNT ? module_gguf[mod] : "?";
}

const char *core_module_tensor(const core_config *c, core_module mod, int *row0)
{
    *row0 = 0;
    if (c->kind != CORE_ARCH_PHI3 || (unsigned)mod >= CORE_MOD_COUNT)
        return core_module_gguf_name(mod);
    switch (mod) {
    case CORE_MOD_V:
        *row0 = c->n_head_kv * c->head_dim;
        /* fall through */
    case CORE_MOD_K:
        *row0 += c->n_head * c->head_dim;
        /* fall through */
    case CORE_MOD_Q:
        return "attn_qkv";
    case CORE_MOD_UP:
        *row0 = c->n_ff;
        /* fall through */
    case CORE_MOD_GATE:
        return "ffn_up";
    default:
        return core_module_gguf_name(mod);
    }
}

int core_module_span(const core_config *c, core_module mod)
{
    if (c->kind != CORE_ARCH_PHI3)
        return 1;
    switch (mod) {
    case CORE_MOD_Q:
        return 3;
    case CORE_MOD_GATE:
        return 2;
    case CORE_MOD_K:
    case CORE_MOD_V:
    case CORE_MOD_UP:
        return 0;
    default:
        return 1;
    }
}

int core_module_in(const core_config *c, core_module mod)
{
    switch (mod) {
    case CORE_MOD_O:
        return c->n_head * c->head_dim;
    case CORE_MOD_DOWN:
        return c->n_ff;
    default:
        return c->n_embd;
    }
}

int core_module_out(const core_config *c, core_module mod)
{
    switch (mod) {
    case CORE_MOD_Q:
        return c->n_head * c->head_dim;
    case CORE_MOD_K:
    case CORE_MOD_V:
        return c->n_head_kv * c->head_dim;
    case CORE_MOD_GATE:
    case CORE_MOD_UP:
        return c->n_ff;
    default:
        return c->n_embd;
    }
}

/* Reads "<arch>.<suffix>" as a positive int no larger than max. */
static int get_dim(const core_gguf *g, const char *arch, const char *suffix, int *out, bool need,
                   int max, char *err, size_t errlen)
{
    char key[128];
    uint32_t v;
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    int rc = core_gguf_get_u32(g, key, &v);
    if (rc == -ENOENT && !need)
        return 0;
    if (rc == -ENOENT) {
        core_errf(err, errlen, "missing metadata key '%s'", key);
        return -EINVAL;
    }
    if (rc < 0 || v == 0 || v > (uint32_t)max) {
        core_errf(err, errlen, "metadata key '%s' must be an integer in 1..%d", key, max);
        return -EINVAL;
    }
    *out = (int)v;
    return 0;
}

static int get_float(const core_gguf *g, const char *arch, const char *suffix, float *out,
                     char *err, size_t errlen)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    int rc = core_gguf_get_f32(g, key, out);
    if (rc == -ENOENT)
        return 0;
    if (rc < 0 || !isfinite(*out) || *out <= 0) {
        core_errf(err, errlen, "metadata key '%s' must be a positive float", key);
        return -EINVAL;
    }
    return 0;
}

/* Refuses a key that asks for something core_forward does not do, when it is present and not
 * 0 (llama.cpp writes the softcapping keys only for models that use them). */
static int refuse_key(const core_gguf *g, const char *arch, const char *suffix, const char *what,
                      char *err, size_t errlen)
{
    char key[128];
    float f;
    uint32_t u;
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    bool set = core_gguf_get_f32(g, key, &f) == 0   ? f != 0.0f
               : core_gguf_get_u32(g, key, &u) == 0 ? u != 0
                                                    : core_gguf_find(g, key) != NULL;
    if (set) {
        core_errf(err, errlen, "%s ('%s') is not supported", what, key);
        return -EINVAL;
    }
    return 0;
}

/* Gemma 3's own hyperparameters (what llama.cpp's llama-model.cpp reads for LLM_ARCH_GEMMA3 and
 * transformers' Gemma3TextConfig defaults to where the GGUF has no key): sliding window (required),
 * its pattern (6: layers 5, 11, 17, ... global), the local RoPE base (10000), the attention scale
 * query_pre_attn_scalar^-1/2, which the GGUF does not carry: head_dim for every size but the 27B
 * (62 layers), whose 168 is n_embd / n_head, as llama.cpp decides. Softcapping (Gemma 2) is
 * refused here, RoPE scaling (the 4B and larger scale the global layers' positions:
 * rope.scaling.type "linear") by core_config_from_gguf. */
static int gemma3_config(const core_gguf *g, core_config *c, char *err, size_t errlen)
{
    const char *a = c->arch;
    c->neox_rope = true;
    c->qk_norm = true;
    /* as transformers: hidden_size**0.5 in Python (double), a float32 tensor */
    c->embd_scale = (float)sqrt((double)c->n_embd);
    c->swa_pattern = 6;
    c->rope_theta_swa = 10000.0f;
    if (get_dim(g, a, "attention.sliding_window", &c->sliding_window, true, 1 << 24, err, errlen) ||
        get_dim(g, a, "attention.sliding_window_pattern", &c->swa_pattern, false, 1024, err,
                errlen) ||
        get_float(g, a, "rope.freq_base_swa", &c->rope_theta_swa, err, errlen))
        return -EINVAL;
    if (refuse_key(g, a, "attn_logit_softcapping", "attention logit softcapping", err, errlen) ||
        refuse_key(g, a, "final_logit_softcapping", "final logit softcapping", err, errlen))
        return -EINVAL;
    int qpas = c->n_layer == 62 ? c->n_embd / c->n_head : c->head_dim;
    if (qpas != c->head_dim)
        c->q_scale = (float)sqrt((double)c->head_dim / qpas);
    return 0;
}

/* A sliding window is Gemma 3's alone: a llama (Mistral 7B v0.1) or qwen2 GGUF that asks for
 * one is refused rather than run with full attention. */
static int no_sliding_window(const core_gguf *g, const core_config *c, char *err, size_t errlen)
{
    return refuse_key(g, c->arch, "attention.sliding_window", "a sliding attention window", err,
                      errlen);
}

/* Llama (SmolLM2, Llama 2/3, Mistral): q/k rows permuted by llama.cpp's converter, so RoPE on
 * adjacent pairs; Llama 3's rope scaling comes as rope_freqs.weight, llama.cpp's per-frequency
 * divisors (its converter computes them from rope_scaling "llama3"). */
static int llama_config(const core_gguf *g, core_config *c, char *err, size_t errlen)
{
    c->rope_freqs = core_gguf_find_tensor(g, "rope_freqs.weight") != NULL;
    return no_sliding_window(g, c, err, errlen);
}

/* Qwen2 (Qwen2, Qwen2.5): q, k and v biases, q/k rows not permuted (NeoX RoPE). */
static int qwen2_config(const core_gguf *g, core_config *c, char *err, size_t errlen)
{
    c->neox_rope = true;
    c->qkv_bias = true;
    return no_sliding_window(g, c, err, errlen);
}

/* Qwen3 (dense): per-head RMSNorm of q and k before RoPE, no biases, NeoX RoPE; head_dim from
 * attention.key_length (128 for every size, whatever n_embd / n_head). */
static int qwen3_config(const core_gguf *g, core_config *c, char *err, size_t errlen)
{
    c->neox_rope = true;
    c->qk_norm = true;
    return no_sliding_window(g, c, err, errlen);
}

/* Phi-3's own hyperparameters (llama.cpp's converter, Phi3MiniModel): RoPE on halves, a sliding
 * window over every layer when phi3.attention.sliding_window is above 0 (Phi-3 mini: 2047; 0 for
 * Phi-4), as transformers' Phi3 applies it (llama.cpp ignores it). The 128k models' LongRoPE
 * ("su"/"longrope": rope_factors_long/short tensors, rope.scaling.attn_factor) is refused. */
static int phi3_config(const core_gguf *g, core_config *c, char *err, size_t errlen)
{
    const char *a = c->arch;
    c->neox_rope = true;
    if (core_gguf_find_tensor(g, "rope_factors_long.weight") ||
        core_gguf_find_tensor(g, "rope_factors_short.weight") ||
        refuse_key(g, a, "rope.scaling.attn_factor", "rope scaling", err, errlen)) {
        core_errf(err, errlen,
                  "rope scaling 'longrope' (Phi-3 128k: rope_factors_long/short) is not "
                  "supported; use a 4k-context Phi-3 model");
        return -EINVAL;
    }
    uint32_t sw = 0;
    char key[128];
    snprintf(key, sizeof key, "%s.attention.sliding_window", a);
    if (core_gguf_find(g, key) && (core_gguf_get_u32(g, key, &sw) < 0 || sw > (1u << 24))) {
        core_errf(err, errlen, "metadata key '%s' must be an integer in 0..%d", key, 1 << 24);
        return -EINVAL;
    }
    c->sliding_window = (int)sw;
    c->swa_pattern = 0; /* every layer */
    c->rope_theta_swa = c->rope_theta;
    return 0;
}

/* The architectures core_forward runs: general.architecture, the recipe, and the function that
 * reads what is particular to it once the common hyperparameters are in. */
static const struct arch_row {
    const char *name;
    core_arch kind;
    bool permuted_qk; /* convert_hf_to_gguf.py permuted the q/k rows (its LlamaModel does) */
    int (*config)(const core_gguf *g, core_config *c, char *err, size_t errlen);
} arch_table[] = {
    {"llama", CORE_ARCH_LLAMA, true, llama_config},     /* SmolLM2, Llama 2/3, Mistral */
    {"gemma3", CORE_ARCH_GEMMA3, false, gemma3_config}, /* Gemma 3 (text) */
    {"qwen2", CORE_ARCH_QWEN2, false, qwen2_config},    /* Qwen2, Qwen2.5 */
    {"qwen3", CORE_ARCH_QWEN3, false, qwen3_config},    /* Qwen3 dense */
    {"phi3", CORE_ARCH_PHI3, false, phi3_config},       /* Phi-3 mini / medium, 4k context */
};
#define N_ARCH (sizeof arch_table / sizeof arch_table[0])

static const struct arch_row *find_arch(const char *name)
{
    for (size_t i = 0; i < N_ARCH; i++)
        if (strcmp(arch_table[i].name, name) == 0)
            return &arch_table[i];
    return NULL;
}

/* Rope scaling that changes the positions: refused. "none", or a factor of 1 with any type
 * (llama.cpp's converter writes linear 1.0 for some models), changes nothing. llama.cpp reads a
 * factor without a type as linear, and an old rope.scale_linear key as the same. Llama 3's
 * scaling is not here: it is the rope_freqs tensor. */
static int check_rope_scaling(const core_gguf *g, const char *a, char *err, size_t errlen)
{
    char key[128], type[32] = "";
    float factor = 0.0f;
    snprintf(key, sizeof key, "%s.rope.scaling.type", a);
    bool has_type = core_gguf_get_str(g, key, type, sizeof type) == 0;
    if (has_type && strcmp(type, "none") == 0)
        return 0;
    snprintf(key, sizeof key, "%s.rope.scaling.factor", a);
    bool has_factor = core_gguf_get_f32(g, key, &factor) == 0;
    if (!has_factor) {
        snprintf(key, sizeof key, "%s.rope.scale_linear", a);
        has_factor = core_gguf_get_f32(g, key, &factor) == 0;
    }
    if (!has_type && !has_factor)
        return 0;
    bool known = !has_type || strcmp(type, "linear") == 0 || strcmp(type, "yarn") == 0 ||
                 strcmp(type, "longrope") == 0;
    if (known && has_factor && (factor == 1.0f || (factor == 0.0f && !has_type)))
        return 0;
    if (has_factor)
        core_errf(err, errlen, "rope scaling '%s' with factor %g is not supported",
                  has_type ? type : "linear", (double)factor);
    else
        core_errf(err, errlen, "rope scaling '%s' is not supported", type);
    return -EINVAL;
}

int core_config_from_gguf(const core_gguf *g, core_config *c, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    if (core_gguf_get_str(g, "general.architecture", c->arch, sizeof c->arch) < 0) {
        core_errf(err, errlen, "missing or invalid general.architecture");
        return -EINVAL;
    }
    const struct arch_row *row = find_arch(c->arch);
    if (!row) {
        char names[128] = "";
        for (size_t i = 0; i < N_ARCH; i++)
            snprintf(names + strlen(names), sizeof names - strlen(names), "%s'%s'", i ? ", " : "",
                     arch_table[i].name);
        core_errf(err, errlen, "architecture '%s' is not supported (only %s)", c->arch, names);
        return -EINVAL;
    }
    c->kind = row->kind;
    c->permuted_qk = row->permuted_qk;
    const char *a = c->arch;
    if (refuse_key(g, a, "expert_count", "mixture of experts", err, errlen) ||
        refuse_key(g, a, "expert_used_count", "mixture of experts", err, errlen))
        return -EINVAL;
    if (get_dim(g, a, "block_count", &c->n_layer, true, 1024, err, errlen) ||
        get_dim(g, a, "embedding_length", &c->n_embd, true, 65536, err, errlen) ||
        get_dim(g, a, "feed_forward_length", &c->n_ff, true, 1 << 20, err, errlen) ||
        get_dim(g, a, "attention.head_count", &c->n_head, true, 1024, err, errlen))
        return -EINVAL;
    c->n_head_kv = c->n_head;
    c->n_ctx_train = 2048;
    c->rope_theta = 10000.0f;
    c->rms_eps = 1e-5f;
    if (c->n_embd % c->n_head) {
        core_errf(err, errlen, "embedding_length %d is not a multiple of head_count %d", c->n_embd,
                  c->n_head);
        return -EINVAL;
    }
    c->head_dim = c->n_embd / c->n_head;
    int vlen = 0;
    if (get_dim(g, a, "attention.head_count_kv", &c->n_head_kv, false, 1024, err, errlen) ||
        get_dim(g, a, "context_length", &c->n_ctx_train, false, 1 << 24, err, errlen) ||
        get_dim(g, a, "attention.key_length", &c->head_dim, false, 4096, err, errlen) ||
        get_dim(g, a, "attention.value_length", &vlen, false, 4096, err, errlen) ||
        get_float(g, a, "rope.freq_base", &c->rope_theta, err, errlen) ||
        get_float(g, a, "attention.layer_norm_rms_epsilon", &c->rms_eps, err, errlen))
        return -EINVAL;
    c->rope_dim = c->head_dim;
    if (get_dim(g, a, "rope.dimension_count", &c->rope_dim, false, 4096, err, errlen))
        return -EINVAL;
    if (vlen && vlen != c->head_dim) {
        core_errf(err, errlen, "key_length %d != value_length %d is not supported", c->head_dim,
                  vlen);
        return -EINVAL;
    }
    if (c->n_head % c->n_head_kv) {
        core_errf(err, errlen, "head_count %d is not a multiple of head_count_kv %d", c->n_head,
                  c->n_head_kv);
        return -EINVAL;
    }
    if (c->rope_dim != c->head_dim || c->head_dim % 2) {
        core_errf(err, errlen,
                  "partial rotary embeddings (rope.dimension_count %d, head dim %d) are "
                  "not supported",
                  c->rope_dim, c->head_dim);
        return -EINVAL;
    }
    if (check_rope_scaling(g, a, err, errlen))
        return -EINVAL;
    char key[128];
    const core_gguf_tensor *emb = core_gguf_find_tensor(g, "token_embd.weight");
    if (!emb || emb->n_dims != 2 || emb->ne[0] != (uint64_t)c->n_embd || emb->ne[1] > (1u << 24)) {
        core_errf(err, errlen, "tensor token_embd.weight is missing or not (%d, n_vocab)",
                  c->n_embd);
        return -EINVAL;
    }
    c->n_vocab = (int)emb->ne[1];
    uint32_t nv;
    snprintf(key, sizeof key, "%s.vocab_size", a);
    if (core_gguf_get_u32(g, key, &nv) == 0 && nv != (uint32_t)c->n_vocab) {
        core_errf(err, errlen, "%s %u != token_embd rows %d", key, nv, c->n_vocab);
        return -EINVAL;
    }
    c->tied_output = core_gguf_find_tensor(g, "output.weight") == NULL;
    return row->config(g, c, err, errlen);
}

/* The per-layer tensors of c's recipe, after "blk.N.": the norms, the seven matrices, and what
 * the architecture adds. */
static bool layer_tensor_known(const core_config *c, const char *rest)
{
    static const char *const common[] = {"attn_norm.weight", "ffn_norm.weight"};
    static const char *const gemma[] = {"post_attention_norm.weight", "post_ffw_norm.weight"};
    static const char *const qk_norm[] = {"attn_q_norm.weight", "attn_k_norm.weight"};
    static const char *const bias[] = {"attn_q.bias", "attn_k.bias", "attn_v.bias"};
    for (int i = 0; i < 2; i++)
        if (!strcmp(rest, common[i]) || (c->kind == CORE_ARCH_GEMMA3 && !strcmp(rest, gemma[i])) ||
            (c->qk_norm && !strcmp(rest, qk_norm[i])))
            return true;
    for (int i = 0; i < 3; i++)
        if (c->qkv_bias && !strcmp(rest, bias[i]))
            return true;
    for (int mod = 0; mod < CORE_MOD_COUNT; mod++) {
        int row0;
        const char *t = core_module_tensor(c, (core_module)mod, &row0);
        size_t n = strlen(t);
        if (!strncmp(rest, t, n) && !strcmp(rest + n, ".weight"))
            return true;
    }
    return false;
}

/* Refuses a file with a tensor the recipe would not read (an output bias, a fused qkv, experts,
 * LongRoPE's factors, ...): running without it would give other logits than the model's. */
static int check_tensor_names(const core_gguf *g, const core_config *c, char *err, size_t errlen)
{
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const core_gguf_str *s = &g->tensors[i].name;
        char name[96];
        if (s->len >= sizeof name || memchr(s->ptr, '\0', s->len)) {
            core_errf(err, errlen,
                      "tensor '%.*s...' is not part of the '%s' architecture (not "
                      "supported)",
                      48, s->ptr, c->arch);
            return -EINVAL;
        }
        memcpy(name, s->ptr, s->len);
        name[s->len] = '\0';
        bool known = !strcmp(name, "token_embd.weight") || !strcmp(name, "output_norm.weight") ||
                     !strcmp(name, "output.weight") ||
                     (c->rope_freqs && !strcmp(name, "rope_freqs.weight"));
        if (!known && !strncmp(name, "blk.", 4) && name[4] >= '0' && name[4] <= '9') {
            char *end;
            long layer = strtol(name + 4, &end, 10);
            if (*end == '.' && layer < c->n_layer)
                known = layer_tensor_known(c, end + 1);
        }
        if (!known) {
            core_errf(err, errlen,
                      "tensor '%s' is not part of the '%s' architecture as adaptree "
                      "runs it (not supported)",
                      name, c->arch);
            return -EINVAL;
        }
    }
    return 0;
}

/* A weight as its GGUF stores it: rows row0 .. row0 + rows of the tensor name, whose shape is
 * (total, cols); rows == total and row0 == 0 unless the tensor is fused (core_module_tensor), and
 * rows == total == 0 for a vector of cols. */
typedef struct mat_src {
    char name[96];
    int cols, rows, row0, total;
} mat_src;

static mat_src whole(const char *name, int cols, int rows)
{
    mat_src s = {.cols = cols, .rows = rows, .total = rows};
    snprintf(s.name, sizeof s.name, "%s", name);
    return s;
}

/* Module mod of layer l: "blk.L.attn_q.weight" and the like, or its rows of a fused tensor. */
static mat_src matrix_src(const core_config *c, int l, int mod)
{
    mat_src s = {.cols = core_module_in(c, mod), .rows = core_module_out(c, mod)};
    snprintf(s.name, sizeof s.name, "blk.%d.%s.weight", l, core_module_tensor(c, mod, &s.row0));
    int first = mod;
    while (core_module_span(c, first) == 0)
        first--;
    for (int k = first; k < first + core_module_span(c, first); k++)
        s.total += core_module_out(c, k);
    return s;
}

/* The first byte of s's rows in the tensor t (whose shape was checked). */
static const uint8_t *src_rows(const core_gguf_tensor *t, const mat_src *s)
{
    return (const uint8_t *)t->data + (size_t)s->row0 * core_type_row_bytes(t->type, s->cols);
}

/* Checks one tensor's presence and shape (ne0 = cols, ne1 = rows; rows 0 for a vector) and
 * that its type can be dequantized. */
static const core_gguf_tensor *want_tensor(const core_gguf *g, const char *name, int cols, int rows,
                                           char *err, size_t errlen)
{
    const core_gguf_tensor *t = core_gguf_find_tensor(g, name);
    if (!t) {
        core_errf(err, errlen, "tensor '%s' is missing", name);
        return NULL;
    }
    bool ok = rows ? (t->n_dims == 2 && t->ne[0] == (uint64_t)cols && t->ne[1] == (uint64_t)rows)
                   : (t->n_dims == 1 && t->ne[0] == (uint64_t)cols);
    if (!ok) {
        core_errf(err, errlen,
                  "tensor '%s' has shape [%llu, %llu], expected [%d, %d] (ne0 = input features)",
                  name, (unsigned long long)t->ne[0],
                  (unsigned long long)(t->n_dims > 1 ? t->ne[1] : 1), cols, rows ? rows : 1);
        return NULL;
    }
    if (!core_type_can_dequant(t->type)) {
        core_errf(err, errlen, "tensor '%s' has type %s, which adaptree cannot dequantize", name,
                  core_type_name(t->type));
        return NULL;
    }
    return t;
}

static int load_tensor(const core_gguf *g, const mat_src *s, float *dst, char *err, size_t errlen)
{
    const core_gguf_tensor *t = want_tensor(g, s->name, s->cols, s->total, err, errlen);
    if (!t)
        return -EINVAL;
    int64_t n = (int64_t)s->cols * (s->rows ? s->rows : 1);
    if (core_dequant_row(t->type, src_rows(t, s), dst, n) < 0) {
        core_errf(err, errlen, "tensor '%s': cannot dequantize %s", s->name,
                  core_type_name(t->type));
        return -EINVAL;
    }
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(dst[i])) {
            core_errf(err, errlen, "tensor '%s' holds a non-finite value at element %lld", s->name,
                      (long long)s->row0 * s->cols + i);
            return -EINVAL;
        }
    }
    return 0;
}

/* s's rows in the mapping when core__qmatmul can read their type, else NULL. Called after
 * load_tensor has checked the shape. */
static const void *quantized(const core_gguf *g, const mat_src *s, uint32_t *type)
{
    const core_gguf_tensor *t = core_gguf_find_tensor(g, s->name);
    *type = t ? t->type : 0;
    return t && core__qmatmul_supports(t->type) ? src_rows(t, s) : NULL;
}

static void free_q8(core_model *m)
{
    for (int l = 0; l < m->cfg.n_layer; l++)
        for (int mod = 0; mod < CORE_MOD_COUNT; mod++) {
            core__q8w_free(m->layers[l].w[mod].q8);
            m->layers[l].w[mod].q8 = NULL;
        }
    core__q8w_free(m->output.q8);
    m->output.q8 = NULL;
}

static int fill_slab(core_model *m, core_slab_mode mode, char *err, size_t errlen);
static size_t slab_floats(const core_model *m, core_slab_mode mode);

/* The slab of mode: refilled only when it holds other matrices (on AVX-512 CPUs the lazy and
 * int8 slabs are both the norms alone). */
static int set_slab(core_model *m, core_slab_mode mode, char *err, size_t errlen)
{
    if (slab_floats(m, mode) != m->slab_floats)
        return fill_slab(m, mode, err, errlen);
    m->slab_mode = mode;
    return 0;
}

int core_model_set_int8(core_model *m, int on, char *err, size_t errlen)
{
    const core_config *c = &m->cfg;
    if (!on) {
        /* the f32 copies the int8 slab left out come back first: nothing changes on failure */
        if (m->slab_mode == CORE_SLAB_INT8 && set_slab(m, CORE_SLAB_LAZY, err, errlen))
            return -ENOMEM;
        free_q8(m);
        return 0;
    }
    if (m->slab_mode == CORE_SLAB_INT8) { /* on already, without the f32 copies to go back to */
        int packed = m->output.q8 != NULL;
        for (int l = 0; l < c->n_layer; l++)
            for (int mod = 0; mod < CORE_MOD_COUNT; mod++)
                packed += m->layers[l].w[mod].q8 != NULL;
        return packed;
    }
    free_q8(m);
    if (!core__q8_available()) {
        core_errf(err, errlen,
                  "int8 activations need AVX2 with FMA and F16C, or AVX-512 VNNI; this CPU "
                  "has neither");
        return -ENOTSUP;
    }
    int packed = 0;
    for (int l = 0; l < c->n_layer; l++)
        for (int mod = 0; mod < CORE_MOD_COUNT; mod++) {
            core_layer *L = &m->layers[l];
            int in = core_module_in(c, (core_module)mod),
                out = core_module_out(c, (core_module)mod);
            if (!L->w[mod].data || !core__q8w_supports(L->w[mod].type, in, out))
                continue;
            if (!(L->w[mod].q8 = core__q8w_pack(L->w[mod].type, L->w[mod].data, in, out)))
                goto oom;
            packed++;
        }
    if (m->output.data && core__q8w_supports(m->output.type, c->n_embd, c->n_vocab)) {
        if (!(m->output.q8 = core__q8w_pack(m->output.type, m->output.data, c->n_embd, c->n_vocab)))
            goto oom;
        packed++;
    }
    /* The packed matrices' f32 copies are no longer read (kept only with a row limit,
     * ADAPTREE_QMATMUL_ROWS or the portable kernels, for sgemm above it): 538 MB for the default
     * model. Kept if the smaller slab cannot be
     * allocated, which changes nothing but memory. */
    if (m->slab_mode == CORE_SLAB_LAZY)
        set_slab(m, CORE_SLAB_INT8, NULL, 0);
    return packed;
oom:
    free_q8(m);
    core_errf(err, errlen, "out of memory repacking the weights for int8");
    return -ENOMEM;
}

const char *core_int8_kernels(void)
{
    return core__q8_available() ? core__q8_kernels() : NULL;
}

void core_model_free(core_model *m)
{
    if (!m)
        return;
    if (m->layers)
        free_q8(m);
    free(m->slab);
    free(m->layers);
    core_gguf_close(m->gguf);
    free(m);
}

/* 1 when core_forward never needs this tensor as f32: core__qmatmul reads its type at every
 * batch size (AVX-512 and AVX2 kernels; ADAPTREE_QMATMUL_ROWS puts a limit on that), or
 * (CORE_SLAB_INT8) core_model_set_int8 repacked it, as it does every such matrix the int8 kernels
 * take. */
static bool stays_quantized(const core_gguf *g, const mat_src *s, core_slab_mode mode)
{
    const core_gguf_tensor *t = core_gguf_find_tensor(g, s->name);
    if (mode == CORE_SLAB_ALL || !t || !core__qmatmul_supports(t->type))
        return false;
    return core__qmatmul_max_rows() == INT_MAX ||
           (mode == CORE_SLAB_INT8 && core__q8w_supports(t->type, s->cols, s->rows));
}

/* Checks a tensor that stays quantized as load_tensor would (shape, type, every value finite),
 * a row at a time through scratch (cols floats), keeping nothing. */
static int check_tensor(const core_gguf *g, const mat_src *s, float *scratch, char *err,
                        size_t errlen)
{
    const core_gguf_tensor *t = want_tensor(g, s->name, s->cols, s->total, err, errlen);
    if (!t)
        return -EINVAL;
    int cols = s->cols;
    size_t rb = core_type_row_bytes(t->type, (uint64_t)cols);
    for (int r = s->row0; r < s->row0 + s->rows; r++) {
        const uint8_t *src = (const uint8_t *)t->data + (size_t)r * rb;
        if (core_dequant_row(t->type, src, scratch, cols) < 0) {
            core_errf(err, errlen, "tensor '%s': cannot dequantize %s", s->name,
                      core_type_name(t->type));
            return -EINVAL;
        }
        for (int i = 0; i < cols; i++)
            if (!isfinite(scratch[i])) {
                core_errf(err, errlen, "tensor '%s' holds a non-finite value at element %lld",
                          s->name, (long long)r * cols + i);
                return -EINVAL;
            }
    }
    return 0;
}

/* Floats of the slab: the norms, and every matrix that does not stay quantized. */
static size_t slab_floats(const core_model *m, core_slab_mode mode)
{
    const core_config *c = &m->cfg;
    size_t n = (size_t)(2 * c->n_layer + 1) * c->n_embd, emb = (size_t)c->n_vocab * c->n_embd;
    if (c->kind == CORE_ARCH_GEMMA3) /* post-attention and post-FFN norms */
        n += (size_t)c->n_layer * 2 * (size_t)c->n_embd;
    if (c->qk_norm)
        n += (size_t)c->n_layer * 2 * (size_t)c->head_dim;
    if (c->qkv_bias)
        n += (size_t)c->n_layer * (size_t)(c->n_head + 2 * c->n_head_kv) * (size_t)c->head_dim;
    if (c->rope_freqs)
        n += (size_t)c->head_dim / 2;
    mat_src emb_src = whole("token_embd.weight", c->n_embd, c->n_vocab);
    mat_src out_src = whole("output.weight", c->n_embd, c->n_vocab);
    n += stays_quantized(m->gguf, &emb_src, mode) ? 0 : emb;
    if (!c->tied_output)
        n += stays_quantized(m->gguf, &out_src, mode) ? 0 : emb;
    for (int l = 0; l < c->n_layer; l++)
        for (int mod = 0; mod < CORE_MOD_COUNT; mod++) {
            mat_src s = matrix_src(c, l, mod);
            if (!stays_quantized(m->gguf, &s, mode))
                n += (size_t)s.cols * s.rows;
        }
    return n;
}

/* One matrix: into the slab at *p (advanced) as f32, or checked and left quantized (*dst NULL). */
static int load_matrix(const core_gguf *g, const mat_src *s, core_slab_mode mode, float **p,
                       float **dst, float *scratch, char *err, size_t errlen)
{
    if (stays_quantized(g, s, mode)) {
        *dst = NULL;
        return check_tensor(g, s, scratch, err, errlen);
    }
    *dst = *p;
    *p += (size_t)s->cols * s->rows;
    return load_tensor(g, s, *dst, err, errlen);
}

/* A norm vector into the slab at *p (advanced). */
static int load_norm(const core_gguf *g, const char *name, int n, float **p, float **dst, char *err,
                     size_t errlen)
{
    mat_src s = whole(name, n, 0);
    *dst = *p;
    *p += n;
    return load_tensor(g, &s, *dst, err, errlen);
}

/* rope_freqs.weight into the slab at *p (advanced): head_dim / 2 divisors of the rotary
 * frequencies, which must be positive. */
static int load_rope_freqs(core_model *m, float **p, char *err, size_t errlen)
{
    int half = m->cfg.head_dim / 2;
    int rc = load_norm(m->gguf, "rope_freqs.weight", half, p, &m->rope_freqs, err, errlen);
    for (int j = 0; !rc && j < half; j++)
        if (!(m->rope_freqs[j] > 0.0f)) {
            core_errf(err, errlen, "rope_freqs.weight[%d] = %g: the factors must be positive", j,
                      (double)m->rope_freqs[j]);
            rc = -EINVAL;
        }
    return rc;
}

/* Fills m's weight pointers from the slab p (slab_floats(m, mode) floats): the norms always as
 * f32, the matrices as f32 unless they stay quantized (see stays_quantized). */
static int load_weights(core_model *m, core_slab_mode mode, float *p, char *err, size_t errlen)
{
    const core_config *c = &m->cfg;
    float *scratch = malloc(sizeof(float) * (size_t)(c->n_embd > c->n_ff ? c->n_embd : c->n_ff));
    if (!scratch) {
        core_errf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    m->tok_embd.rows = m->output.rows = c->n_vocab;
    m->tok_embd.cols = m->output.cols = c->n_embd;
    mat_src emb_src = whole("token_embd.weight", c->n_embd, c->n_vocab);
    mat_src out_src = whole("output.weight", c->n_embd, c->n_vocab);
    int rc = load_matrix(m->gguf, &emb_src, mode, &p, &m->tok_embd.f32, scratch, err, errlen);
    m->tok_embd.data = quantized(m->gguf, &emb_src, &m->tok_embd.type);
    m->output.f32 = m->tok_embd.f32;
    m->output.data = m->tok_embd.data;
    m->output.type = m->tok_embd.type;
    if (!rc && !c->tied_output) {
        rc = load_matrix(m->gguf, &out_src, mode, &p, &m->output.f32, scratch, err, errlen);
        m->output.data = quantized(m->gguf, &out_src, &m->output.type);
    }
    if (!rc)
        rc = load_norm(m->gguf, "output_norm.weight", c->n_embd, &p, &m->output_norm, err, errlen);
    if (!rc && c->rope_freqs)
        rc = load_rope_freqs(m, &p, err, errlen);
    for (int l = 0; !rc && l < c->n_layer; l++) {
        core_layer *L = &m->layers[l];
        char name[96];
        snprintf(name, sizeof name, "blk.%d.attn_norm.weight", l);
        rc = load_norm(m->gguf, name, c->n_embd, &p, &L->attn_norm, err, errlen);
        snprintf(name, sizeof name, "blk.%d.ffn_norm.weight", l);
        if (!rc)
            rc = load_norm(m->gguf, name, c->n_embd, &p, &L->ffn_norm, err, errlen);
        if (!rc && c->kind == CORE_ARCH_GEMMA3) {
            snprintf(name, sizeof name, "blk.%d.post_attention_norm.weight", l);
            rc = load_norm(m->gguf, name, c->n_embd, &p, &L->post_attn_norm, err, errlen);
            snprintf(name, sizeof name, "blk.%d.post_ffw_norm.weight", l);
            if (!rc)
                rc = load_norm(m->gguf, name, c->n_embd, &p, &L->post_ffn_norm, err, errlen);
        }
        if (!rc && c->qk_norm) {
            snprintf(name, sizeof name, "blk.%d.attn_q_norm.weight", l);
            rc = load_norm(m->gguf, name, c->head_dim, &p, &L->q_norm, err, errlen);
            snprintf(name, sizeof name, "blk.%d.attn_k_norm.weight", l);
            if (!rc)
                rc = load_norm(m->gguf, name, c->head_dim, &p, &L->k_norm, err, errlen);
        }
        for (int mod = 0; !rc && c->qkv_bias && mod <= CORE_MOD_V; mod++) {
            snprintf(name, sizeof name, "blk.%d.%s.bias", l, module_gguf[mod]);
            rc = load_norm(m->gguf, name, core_module_out(c, mod), &p, &L->bias[mod], err, errlen);
        }
        for (int mod = 0; !rc && mod < CORE_MOD_COUNT; mod++) {
            mat_src s = matrix_src(c, l, mod);
            L->w[mod].rows = s.rows;
            L->w[mod].cols = s.cols;
            rc = load_matrix(m->gguf, &s, mode, &p, &L->w[mod].f32, scratch, err, errlen);
            L->w[mod].data = quantized(m->gguf, &s, &L->w[mod].type);
        }
    }
    free(scratch);
    return rc;
}

/* A new slab for load_weights. The weights are loaded into a copy of m (and of its layers), which
 * replaces m's only when everything loaded: on failure m is left as it was. */
static int fill_slab(core_model *m, core_slab_mode mode, char *err, size_t errlen)
{
    size_t floats = slab_floats(m, mode);
    float *slab = malloc(floats * sizeof(float)); /* the norms: never 0 */
    core_layer *layers = malloc((size_t)m->cfg.n_layer * sizeof *layers);
    if (!slab || !layers) {
        free(slab);
        free(layers);
        core_errf(err, errlen, "out of memory allocating %zu MB of weights",
                  floats * sizeof(float) >> 20);
        return -ENOMEM;
    }
    memcpy(layers, m->layers, (size_t)m->cfg.n_layer * sizeof *layers);
    core_model next = *m;
    next.layers = layers;
    int rc = load_weights(&next, mode, slab, err, errlen);
    if (rc) {
        free(slab);
        free(layers);
        return rc;
    }
    free(m->slab);
    memcpy(m->layers, layers, (size_t)m->cfg.n_layer * sizeof *layers);
    free(layers);
    next.layers = m->layers;
    next.slab = slab;
    next.slab_floats = floats;
    next.slab_mode = mode;
    next.all_f32 = next.tok_embd.f32 && next.output.f32;
    for (int l = 0; l < next.cfg.n_layer; l++)
        for (int mod = 0; mod < CORE_MOD_COUNT; mod++)
            next.all_f32 = next.all_f32 && next.layers[l].w[mod].f32;
    *m = next;
    return 0;
}

int core_model_dequantize(core_model *m, char *err, size_t errlen)
{
    return m->all_f32 ? 0 : fill_slab(m, CORE_SLAB_ALL, err, errlen);
}

core_model *core_model_load(const char *path, char *err, size_t errlen)
{
    core_model *m = calloc(1, sizeof *m);
    if (!m) {
        core_errf(err, errlen, "out of memory");
        return NULL;
    }
    m->gguf = core_gguf_open(path, err, errlen);
    if (!m->gguf)
        goto fail;
    core_config *c = &m->cfg;
    if (core_config_from_gguf(m->gguf, c, err, errlen) < 0 ||
        check_tensor_names(m->gguf, c, err, errlen) < 0)
        goto fail;
    m->layers = calloc(c->n_layer, sizeof *m->layers);
    if (!m->layers) {
        core_errf(err, errlen, "out of memory");
        goto fail;
    }
    if (fill_slab(m, CORE_SLAB_LAZY, err, errlen))
        goto fail;
    return m;
fail:
    core_model_free(m);
    return NULL;
}
