/* Gemma 3 hyperparameters from GGUF metadata, on small metadata-only files (no model needed):
 * the defaults for the keys the GGUF may lack, the optional keys, and the refusals that name
 * what is not supported. */
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

/* Writes a gemma3 GGUF (Gemma 3 270M's metadata at a tiny size) with one extra key (a u32 when
 * ival >= 0, else an f32 fval, or a string sval; none when key is NULL), reads its config. */
static int config_with(const char *key, long ival, float fval, const char *sval, core_config *c,
                       char *err, size_t errlen)
{
    const char *dir = tu_tmpdir();
    if (!dir)
        return -EIO;
    char path[256];
    snprintf(path, sizeof path, "%s/g.gguf", dir);
    core_gguf_writer *w = core_gguf_writer_new();
    core_gguf_writer_set_str(w, "general.architecture", "gemma3", NULL, 0);
    core_gguf_writer_set_u32(w, "gemma3.block_count", 18, NULL, 0);
    core_gguf_writer_set_u32(w, "gemma3.embedding_length", 64, NULL, 0);
    core_gguf_writer_set_u32(w, "gemma3.feed_forward_length", 128, NULL, 0);
    core_gguf_writer_set_u32(w, "gemma3.attention.head_count", 4, NULL, 0);
    core_gguf_writer_set_u32(w, "gemma3.attention.head_count_kv", 1, NULL, 0);
    core_gguf_writer_set_u32(w, "gemma3.attention.key_length", 32, NULL, 0);
    core_gguf_writer_set_u32(w, "gemma3.attention.value_length", 32, NULL, 0);
    core_gguf_writer_set_f32(w, "gemma3.rope.freq_base", 1e6f, NULL, 0);
    core_gguf_writer_set_f32(w, "gemma3.attention.layer_norm_rms_epsilon", 1e-6f, NULL, 0);
    if (!key || strcmp(key, "-sliding_window") != 0)
        core_gguf_writer_set_u32(w, "gemma3.attention.sliding_window", 512, NULL, 0);
    if (key && key[0] != '-') {
        if (sval)
            core_gguf_writer_set_str(w, key, sval, NULL, 0);
        else if (ival >= 0)
            core_gguf_writer_set_u32(w, key, (uint32_t)ival, NULL, 0);
        else
            core_gguf_writer_set_f32(w, key, fval, NULL, 0);
    }
    uint64_t ne[2] = {64, 16};
    core_gguf_writer_add_tensor(w, "token_embd.weight", CORE_TYPE_F32, 2, ne, tiny_embd,
                                sizeof tiny_embd, NULL, 0);
    int rc = core_gguf_writer_write(w, path, err, errlen);
    core_gguf_writer_free(w);
    if (rc == 0) {
        core_gguf *g = core_gguf_open(path, err, errlen);
        rc = g ? core_config_from_gguf(g, c, err, errlen) : -EIO;
        core_gguf_close(g);
    }
    tu_rmrf(dir);
    return rc;
}

TEST(gemma_config_defaults_and_keys)
{
    core_config c;
    char err[256] = "";
    CHECK_MSG(config_with(NULL, 0, 0, NULL, &c, err, sizeof err) == 0, "%s", err);
    CHECK_EQ_INT(c.kind, CORE_ARCH_GEMMA3);
    CHECK_EQ_INT(c.head_dim, 32);
    CHECK_EQ_INT(c.sliding_window, 512);
    CHECK_EQ_INT(c.swa_pattern, 6);
    CHECK(c.rope_theta == 1e6f && c.rope_theta_swa == 1e4f);
    CHECK(c.neox_rope && c.embd_scale == 8.0f && c.q_scale == 0.0f);
    CHECK(!c.permuted_qk && core_qk_perm_heads(&c, CORE_MOD_Q) == 0 &&
          core_qk_perm_heads(&c, CORE_MOD_K) == 0);
    CHECK(!core_layer_is_swa(&c, 5) && core_layer_is_swa(&c, 4) && !core_layer_is_swa(&c, 17));
    CHECK_MSG(config_with("gemma3.attention.sliding_window_pattern", 4, 0, NULL, &c, err,
                          sizeof err) == 0,
              "%s", err);
    CHECK(!core_layer_is_swa(&c, 3) && core_layer_is_swa(&c, 5));
    CHECK_MSG(config_with("gemma3.rope.freq_base_swa", -1, 5e4f, NULL, &c, err, sizeof err) == 0,
              "%s", err);
    CHECK(c.rope_theta_swa == 5e4f);
    /* 0 means "none" to llama.cpp */
    CHECK_MSG(config_with("gemma3.final_logit_softcapping", -1, 0.0f, NULL, &c, err, sizeof err) ==
                  0,
              "%s", err);
}

TEST(gemma_config_refuses_what_core_does_not_do)
{
    static const struct {
        const char *key, *sval;
        long ival;
        float fval;
        const char *want;
    } cases[] = {
        {"gemma3.final_logit_softcapping", NULL, -1, 30.0f, "final logit softcapping"},
        {"gemma3.attn_logit_softcapping", NULL, -1, 50.0f, "attention logit softcapping"},
        {"gemma3.rope.scaling.type", "linear", -1, 0, "rope scaling 'linear'"},
        {"-sliding_window", NULL, 0, 0, "gemma3.attention.sliding_window"},
        {"gemma3.attention.sliding_window_pattern", "6", -1, 0, "sliding_window_pattern"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        core_config c;
        char err[256] = "";
        int rc = config_with(cases[i].key, cases[i].ival, cases[i].fval, cases[i].sval, &c, err,
                             sizeof err);
        printf("    %s: %s\n", cases[i].key, err);
        CHECK_EQ_INT(rc, -EINVAL);
        CHECK_MSG(strstr(err, cases[i].want), "'%s' does not name '%s'", err, cases[i].want);
    }
}

TEST(gemma_config_other_arch_refused)
{
    const char *dir = tu_tmpdir();
    CHECK(dir != NULL);
    char path[256], err[256] = "";
    snprintf(path, sizeof path, "%s/g2.gguf", dir);
    core_gguf_writer *w = core_gguf_writer_new();
    core_gguf_writer_set_str(w, "general.architecture", "gemma2", NULL, 0);
    CHECK(core_gguf_writer_write(w, path, err, sizeof err) == 0);
    core_gguf_writer_free(w);
    core_gguf *g = core_gguf_open(path, err, sizeof err);
    CHECK(g != NULL);
    core_config c;
    int rc = core_config_from_gguf(g, &c, err, sizeof err);
    core_gguf_close(g);
    tu_rmrf(dir);
    printf("    %s\n", err);
    CHECK_EQ_INT(rc, -EINVAL);
    CHECK(strstr(err, "'gemma2'") && strstr(err, "'gemma3'"));
}
