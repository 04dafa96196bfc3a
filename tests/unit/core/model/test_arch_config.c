/* The architectures of core_config_from_gguf's table (llama, qwen2, qwen3; gemma3 has its own
 * file) on small metadata-only GGUFs: what each sets, and the refusals that name what core does
 * not run -- another architecture, rope scaling, mixture of experts, a sliding window, a tensor
 * the recipe would not read. The forward passes are tests/golden/test_tiny_models.c. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "core/format/gguf.h"
#include "core/format/gguf_write.h"
#include "core/format/types.h"
#include "core/model/model.h"
#include "tests/test.h"
#include "tests/unit/adapters/adapter_testutil.h"

static float tiny_embd[64 * 16];

/* One extra metadata key: a string when sval, else an f32 when isf, else a u32. */
typedef struct extra_key {
    const char *key, *sval;
    int isf;
    float fval;
    uint32_t uval;
} extra_key;

/* Writes an <arch> GGUF (2 layers, n_embd 64, 4/2 heads, vocabulary of 16) with the extra keys
 * and, when tensor is set, one more f32 tensor of 64 values by that name; then reads its config
 * (load 0) or loads it as a model (load 1, which stops at the first problem: the weights are
 * missing). Returns what that returned. */
static int try_arch(const char *arch, const extra_key *keys, int n_keys, const char *tensor,
                    int load, core_config *c, char *err, size_t errlen)
{
    const char *dir = tu_tmpdir();
    if (!dir)
        return -EIO;
    char path[256], key[128];
    snprintf(path, sizeof path, "%s/a.gguf", dir);
    core_gguf_writer *w = core_gguf_writer_new();
    core_gguf_writer_set_str(w, "general.architecture", arch, NULL, 0);
    static const struct {
        const char *suffix;
        uint32_t v;
    } dims[] = {
        {"block_count", 2},          {"embedding_length", 64},       {"feed_forward_length", 128},
        {"attention.head_count", 4}, {"attention.head_count_kv", 2}, {"context_length", 4096}};
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++) {
        snprintf(key, sizeof key, "%s.%s", arch, dims[i].suffix);
        core_gguf_writer_set_u32(w, key, dims[i].v, NULL, 0);
    }
    snprintf(key, sizeof key, "%s.rope.freq_base", arch);
    core_gguf_writer_set_f32(w, key, 1e6f, NULL, 0);
    for (int i = 0; i < n_keys; i++) {
        if (keys[i].sval)
            core_gguf_writer_set_str(w, keys[i].key, keys[i].sval, NULL, 0);
        else if (keys[i].isf)
            core_gguf_writer_set_f32(w, keys[i].key, keys[i].fval, NULL, 0);
        else
            core_gguf_writer_set_u32(w, keys[i].key, keys[i].uval, NULL, 0);
    }
    uint64_t ne[2] = {64, 16}, ne1[1] = {64};
    core_gguf_writer_add_tensor(w, "token_embd.weight", CORE_TYPE_F32, 2, ne, tiny_embd,
                                sizeof tiny_embd, NULL, 0);
    if (tensor)
        core_gguf_writer_add_tensor(w, tensor, CORE_TYPE_F32, 1, ne1, tiny_embd, 64 * sizeof(float),
                                    NULL, 0);
    int rc = core_gguf_writer_write(w, path, err, errlen);
    core_gguf_writer_free(w);
    if (rc == 0 && load) {
        core_model *m = core_model_load(path, err, errlen);
        rc = m ? 0 : -EINVAL;
        core_model_free(m);
    } else if (rc == 0) {
        core_gguf *g = core_gguf_open(path, err, errlen);
        rc = g ? core_config_from_gguf(g, c, err, errlen) : -EIO;
        core_gguf_close(g);
    }
    tu_rmrf(dir);
    return rc;
}

TEST(arch_config_llama_qwen2_qwen3)
{
    core_config c;
    char err[256] = "";
    CHECK_MSG(try_arch("llama", NULL, 0, NULL, 0, &c, err, sizeof err) == 0, "%s", err);
    CHECK_EQ_INT(c.kind, CORE_ARCH_LLAMA);
    CHECK(!c.neox_rope && !c.qkv_bias && !c.qk_norm && !c.rope_freqs && c.tied_output);
    CHECK(c.permuted_qk && core_qk_perm_heads(&c, CORE_MOD_K) == c.n_head_kv);
    CHECK_MSG(try_arch("qwen2", NULL, 0, NULL, 0, &c, err, sizeof err) == 0, "%s", err);
    CHECK_EQ_INT(c.kind, CORE_ARCH_QWEN2);
    CHECK(c.neox_rope && c.qkv_bias && !c.qk_norm);
    CHECK(!c.permuted_qk && core_qk_perm_heads(&c, CORE_MOD_Q) == 0);
    extra_key hd = {.key = "qwen3.attention.key_length", .uval = 32};
    CHECK_MSG(try_arch("qwen3", &hd, 1, NULL, 0, &c, err, sizeof err) == 0, "%s", err);
    CHECK_EQ_INT(c.kind, CORE_ARCH_QWEN3);
    CHECK(c.neox_rope && !c.qkv_bias && c.qk_norm);
    CHECK(!c.permuted_qk && core_qk_perm_heads(&c, CORE_MOD_K) == 0);
    CHECK_EQ_INT(c.head_dim, 32); /* not 64 / 4 */
    CHECK_EQ_INT(core_module_out(&c, CORE_MOD_Q), 128);
    /* scaling that changes nothing: "none", or a factor of 1 */
    extra_key none = {.key = "llama.rope.scaling.type", .sval = "none"};
    CHECK_MSG(try_arch("llama", &none, 1, NULL, 0, &c, err, sizeof err) == 0, "%s", err);
    extra_key lin1[2] = {{.key = "llama.rope.scaling.type", .sval = "linear"},
                         {.key = "llama.rope.scaling.factor", .isf = 1, .fval = 1.0f}};
    CHECK_MSG(try_arch("llama", lin1, 2, NULL, 0, &c, err, sizeof err) == 0, "%s", err);
    /* llama.cpp writes 0 for "none" in the MoE keys of dense models */
    extra_key moe0 = {.key = "qwen2.expert_count", .uval = 0};
    CHECK_MSG(try_arch("qwen2", &moe0, 1, NULL, 0, &c, err, sizeof err) == 0, "%s", err);
}

TEST(arch_config_refuses_what_core_does_not_do)
{
    static const struct {
        const char *arch;
        extra_key keys[2];
        int n_keys;
        const char *want;
    } cases[] = {
        {"llama",
         {{.key = "llama.expert_count", .uval = 8}},
         1,
         "mixture of experts ('llama.expert_count')"},
        {"qwen3", {{.key = "qwen3.expert_used_count", .uval = 2}}, 1, "mixture of experts"},
        {"qwen2",
         {{.key = "qwen2.rope.scaling.type", .sval = "yarn"},
          {.key = "qwen2.rope.scaling.factor", .isf = 1, .fval = 4.0f}},
         2,
         "rope scaling 'yarn' with factor 4"},
        {"llama",
         {{.key = "llama.rope.scaling.type", .sval = "longrope"}},
         1,
         "rope scaling 'longrope'"},
        {"llama",
         {{.key = "llama.rope.scaling.type", .sval = "linear"},
          {.key = "llama.rope.scaling.factor", .isf = 1, .fval = 2.0f}},
         2,
         "rope scaling 'linear' with factor 2"},
        {"llama",
         {{.key = "llama.rope.scaling.factor", .isf = 1, .fval = 8.0f}},
         1,
         "rope scaling 'linear' with factor 8"},
        {"llama", {{.key = "llama.rope.scaling.type", .sval = "su"}}, 1, "rope scaling 'su'"},
        {"llama",
         {{.key = "llama.attention.sliding_window", .uval = 4096}},
         1,
         "sliding attention window ('llama.attention.sliding_window')"},
        {"qwen2",
         {{.key = "qwen2.attention.sliding_window", .uval = 4096}},
         1,
         "sliding attention window"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        core_config c;
        char err[256] = "";
        int rc =
            try_arch(cases[i].arch, cases[i].keys, cases[i].n_keys, NULL, 0, &c, err, sizeof err);
        printf("    %s %s: %s\n", cases[i].arch, cases[i].keys[0].key, err);
        CHECK_EQ_INT(rc, -EINVAL);
        CHECK_MSG(strstr(err, cases[i].want), "'%s' does not name '%s'", err, cases[i].want);
    }
}

TEST(arch_config_other_architectures_refused)
{
    static const char *const archs[] = {"phi2", "mixtral", "qwen2moe", "llama4", "gemma2", ""};
    for (size_t i = 0; i < sizeof archs / sizeof archs[0]; i++) {
        core_config c;
        char err[256] = "", want[64];
        int rc = try_arch(archs[i], NULL, 0, NULL, 0, &c, err, sizeof err);
        printf("    '%s': %s\n", archs[i], err);
        CHECK_EQ_INT(rc, -EINVAL);
        snprintf(want, sizeof want, "'%s'", archs[i]);
        CHECK_MSG(strstr(err, want) && strstr(err, "'qwen3'"), "'%s' does not name %s", err, want);
    }
}

/* A tensor that the recipe would not read refuses the file at load, by name: running without it
 * would not be the model. */
TEST(arch_load_refuses_unknown_tensors)
{
    static const struct {
        const char *arch, *tensor;
    } cases[] = {
        {"llama", "blk.0.attn_output.bias"},     /* an output bias */
        {"llama", "blk.1.attn_q.bias"},          /* llama with biases */
        {"qwen2", "rope_freqs.weight"},          /* Llama 3's factors on another arch */
        {"qwen3", "blk.0.attn_q.bias"},          /* Qwen3 has none */
        {"llama", "blk.0.attn_qkv.weight"},      /* fused (phi3) */
        {"qwen2", "blk.0.ffn_gate_exps.weight"}, /* experts */
        {"llama", "blk.2.attn_norm.weight"},     /* a layer past block_count */
        {"qwen3", "rope_factors_long.weight"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[256] = "";
        extra_key hd = {.key = "qwen3.attention.key_length", .uval = 16};
        int rc = try_arch(cases[i].arch, &hd, strcmp(cases[i].arch, "qwen3") == 0, cases[i].tensor,
                          1, NULL, err, sizeof err);
        printf("    %s + %s: %s\n", cases[i].arch, cases[i].tensor, err);
        CHECK_EQ_INT(rc, -EINVAL);
        char want[96];
        snprintf(want, sizeof want, "tensor '%s' is not part of the '%s'", cases[i].tensor,
                 cases[i].arch);
        CHECK_MSG(strstr(err, want), "'%s' does not say '%s'", err, want);
    }
    /* the same file without the extra tensor gets past that check, to the first missing weight */
    char err[256] = "";
    CHECK_EQ_INT(try_arch("llama", NULL, 0, NULL, 1, NULL, err, sizeof err), -EINVAL);
    CHECK_MSG(strstr(err, "is missing"), "%s", err);
}
