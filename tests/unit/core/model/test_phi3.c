/* Phi-3 in core on tiny written GGUFs (tiny_phi3.h): the fused attn_qkv / ffn_up tensors are
 * sliced into the q, k, v and gate, up weights (the quantized rows in place, the f32 rows
 * contiguous), the forward pass equals the Llama-layout twin's run with RoPE on halves and the
 * same sliding window (f32 and Q8_0, every kernel, int8 too), the sliding window changes the
 * logits past it, and what core does not do is refused by name. Against transformers:
 * tests/golden/test_tiny_models.c. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/format/types.h"
#include "core/model/model.h"
#include "tests/test.h"
#include "tests/unit/adapters/adapter_testutil.h"
#include "tests/unit/core/model/tiny_phi3.h"

#define N_TOK 14

static const int32_t toks[N_TOK] = {1, 7, 30, 2, 45, 11, 19, 3, 8, 40, 22, 5, 17, 9};

static core_model *load(const char *dir, const char *file, const tp_opts *o, char *err,
                        size_t errlen)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    if (tp_write(path, o))
        return NULL;
    return core_model_load(path, err, errlen);
}

/* The logits of toks: a prefill of the first half in one step, then one row per step. */
static float *run(const core_model *m)
{
    char err[256] = "";
    int32_t pos[N_TOK], slot[N_TOK] = {0};
    for (int i = 0; i < N_TOK; i++)
        pos[i] = i;
    core_ctx *ctx = core_ctx_new(m);
    core_kv *kv = core_kv_new(&m->cfg, 1, 64, err, sizeof err);
    float *lg = malloc(sizeof(float) * N_TOK * TP_VOCAB);
    int rc = ctx && kv && lg ? 0 : -ENOMEM;
    for (int at = 0; rc == 0 && at < N_TOK; at += at < N_TOK / 2 ? N_TOK / 2 : 1) {
        int n = at < N_TOK / 2 ? N_TOK / 2 : 1;
        core_batch b = {.n_rows = n, .tokens = toks + at, .pos = pos + at, .slot = slot};
        rc = core_forward(ctx, kv, &b, NULL, lg + (size_t)at * TP_VOCAB, err, sizeof err);
    }
    if (rc) {
        printf("    forward: %d %s\n", rc, err);
        free(lg);
        lg = NULL;
    }
    core_kv_free(kv);
    core_ctx_free(ctx);
    return lg;
}

static double max_diff(const float *a, const float *b, size_t n, size_t from)
{
    double d = 0;
    for (size_t i = from; i < n; i++)
        d = fmax(d, fabs((double)a[i] - b[i]));
    return d;
}

TEST(phi3_config_and_fused_slices)
{
    const char *dir = tu_tmpdir();
    char err[256] = "";
    tp_opts o = {.type = CORE_TYPE_Q8_0, .sliding_window = 2047};
    core_model *m = load(dir, "p.gguf", &o, err, sizeof err);
    CHECK_MSG(m, "%s", err);
    const core_config *c = &m->cfg;
    CHECK_EQ_INT(c->kind, CORE_ARCH_PHI3);
    CHECK(c->neox_rope && !c->tied_output && c->swa_pattern == 0);
    CHECK_EQ_INT(c->sliding_window, 2047);
    CHECK(core_layer_is_swa(c, 0) && core_layer_is_swa(c, 1));
    int row0;
    CHECK_EQ_STR(core_module_tensor(c, CORE_MOD_V, &row0), "attn_qkv");
    CHECK_EQ_INT(row0, TP_Q + TP_KV);
    CHECK_EQ_STR(core_module_tensor(c, CORE_MOD_UP, &row0), "ffn_up");
    CHECK_EQ_INT(row0, TP_FF);
    CHECK_EQ_STR(core_module_tensor(c, CORE_MOD_O, &row0), "attn_output");
    CHECK_EQ_INT(core_module_span(c, CORE_MOD_Q) * 10 + core_module_span(c, CORE_MOD_K), 30);
    CHECK_EQ_INT(core_module_span(c, CORE_MOD_GATE) * 10 + core_module_span(c, CORE_MOD_UP), 20);
    /* the quantized rows in place: k starts TP_Q rows into attn_qkv */
    const core_layer *L = &m->layers[1];
    size_t rb = core_type_row_bytes(CORE_TYPE_Q8_0, TP_EMBD);
    CHECK(L->w[CORE_MOD_Q].data && L->w[CORE_MOD_Q].type == CORE_TYPE_Q8_0);
    CHECK((const char *)L->w[CORE_MOD_K].data == (const char *)L->w[CORE_MOD_Q].data + TP_Q * rb);
    CHECK((const char *)L->w[CORE_MOD_UP].data ==
          (const char *)L->w[CORE_MOD_GATE].data + TP_FF * rb);
    CHECK_EQ_INT(L->w[CORE_MOD_V].rows, TP_KV);
    CHECK_EQ_INT(L->w[CORE_MOD_UP].rows, TP_FF);
    /* all f32: a fused tensor's modules follow each other (what merge writes back) */
    CHECK_MSG(core_model_dequantize(m, err, sizeof err) == 0, "%s", err);
    CHECK(L->w[CORE_MOD_K].f32 == L->w[CORE_MOD_Q].f32 + TP_Q * TP_EMBD);
    CHECK(L->w[CORE_MOD_V].f32 == L->w[CORE_MOD_K].f32 + TP_KV * TP_EMBD);
    CHECK(L->w[CORE_MOD_UP].f32 == L->w[CORE_MOD_GATE].f32 + TP_FF * TP_EMBD);
    core_model_free(m);
    tu_rmrf(dir);
}

/* The phi3 file against its Llama-layout twin given Phi-3's RoPE and window: the same weights
 * through the same kernels, so the same logits (to f32 rounding of the kernels' row splits). */
static void same_as_twin(uint32_t type, int window, bool int8)
{
    const char *dir = tu_tmpdir();
    char err[256] = "";
    tp_opts o = {.type = type, .sliding_window = window};
    tp_opts t = {.type = type, .llama_twin = true};
    core_model *m = load(dir, "p.gguf", &o, err, sizeof err);
    CHECK_MSG(m, "%s", err);
    core_model *tw = load(dir, "t.gguf", &t, err, sizeof err);
    CHECK_MSG(tw, "%s", err);
    tw->cfg.neox_rope = true;
    tw->cfg.permuted_qk = false;
    tw->cfg.sliding_window = window;
    tw->cfg.swa_pattern = 0;
    tw->cfg.rope_theta_swa = tw->cfg.rope_theta;
    if (int8) {
        int a = core_model_set_int8(m, 1, err, sizeof err);
        int b = core_model_set_int8(tw, 1, err, sizeof err);
        if (a == -ENOTSUP) {
            core_model_free(m);
            core_model_free(tw);
            tu_rmrf(dir);
            TEST_SKIP("no int8 kernels on this CPU");
        }
        printf("    int8: %d and %d weights repacked\n", a, b);
        CHECK_MSG(a > 0 && a == b, "%d %d %s", a, b, err);
    }
    float *a = run(m), *b = run(tw);
    CHECK(a && b);
    double d = max_diff(a, b, (size_t)N_TOK * TP_VOCAB, 0);
    printf("    %s window %d%s: max |phi3 - twin| = %.3g\n", core_type_name(type), window,
           int8 ? " int8" : "", d);
    CHECK_MSG(d <= 1e-5, "phi3 and its Llama-layout twin differ by %g", d);
    free(a);
    free(b);
    core_model_free(m);
    core_model_free(tw);
    tu_rmrf(dir);
}

TEST(phi3_forward_f32_equals_twin)
{
    same_as_twin(CORE_TYPE_F32, 0, false);
}

TEST(phi3_forward_q8_0_window_equals_twin)
{
    same_as_twin(CORE_TYPE_Q8_0, 5, false);
}

TEST(phi3_forward_int8_equals_twin)
{
    same_as_twin(CORE_TYPE_Q8_0, 5, true);
}

/* The window matters: positions before it see the same logits, later ones do not. */
TEST(phi3_sliding_window_changes_late_logits)
{
    const char *dir = tu_tmpdir();
    char err[256] = "";
    tp_opts wide = {.type = CORE_TYPE_F32, .sliding_window = 0};
    tp_opts narrow = {.type = CORE_TYPE_F32, .sliding_window = 4};
    core_model *a = load(dir, "a.gguf", &wide, err, sizeof err);
    core_model *b = load(dir, "b.gguf", &narrow, err, sizeof err);
    CHECK_MSG(a && b, "%s", err);
    float *la = run(a), *lb = run(b);
    CHECK(la && lb);
    double early = max_diff(la, lb, 4 * TP_VOCAB, 0);
    double late = max_diff(la, lb, (size_t)N_TOK * TP_VOCAB, 4 * TP_VOCAB);
    printf("    window 4 vs none: positions 0-3 %.3g, 4-%d %.3g\n", early, N_TOK - 1, late);
    CHECK(early == 0.0);
    CHECK(late > 1e-3);
    free(la);
    free(lb);
    core_model_free(a);
    core_model_free(b);
    tu_rmrf(dir);
}

TEST(phi3_refusals_name_the_problem)
{
    static const struct {
        tp_opts o;
        const char *want;
    } cases[] = {
        {{.type = CORE_TYPE_F32, .longrope = true}, "longrope"},
        {{.type = CORE_TYPE_F32, .skip = "blk.1.attn_qkv.weight"},
         "tensor 'blk.1.attn_qkv.weight' is missing"},
        {{.type = CORE_TYPE_F32, .skip = "blk.0.ffn_up.weight"},
         "tensor 'blk.0.ffn_up.weight' is missing"},
    };
    const char *dir = tu_tmpdir();
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char err[256] = "";
        core_model *m = load(dir, "r.gguf", &cases[i].o, err, sizeof err);
        printf("    %s\n", err);
        CHECK(m == NULL);
        CHECK_MSG(strstr(err, cases[i].want), "'%s' does not name '%s'", err, cases[i].want);
    }
    tu_rmrf(dir);
}
