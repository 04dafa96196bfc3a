/* Tests on the real default model: loading, config, and batch invariance (a sequence's logits
 * do not depend on what else is in the batch, docs/ARCHITECTURE.md §6: ≤ 1e-4). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/format/gguf.h"
#include "core/kernels/attention_internal.h"
#include "core/kernels/blas.h"
#include "core/kernels/cpu_internal.h"
#include "core/kernels/dequant.h"
#include "core/model/model.h"
#include "tests/shared_model.h"
#include "tests/test.h"
#include "tests/unit/adapters/adapter_testutil.h"

TEST(model_real_config)
{
    TEST_NEED_MODEL();
    core_model *m = test_shared_model();
    CHECK(m != NULL);
    const core_config *c = &m->cfg;
    CHECK_EQ_STR(c->arch, "llama");
    CHECK_EQ_INT(c->n_layer, 30);
    CHECK_EQ_INT(c->n_embd, 576);
    CHECK_EQ_INT(c->n_head, 9);
    CHECK_EQ_INT(c->n_head_kv, 3);
    CHECK_EQ_INT(c->head_dim, 64);
    CHECK_EQ_INT(c->n_ff, 1536);
    CHECK_EQ_INT(c->n_vocab, 49152);
    CHECK_EQ_INT(c->n_ctx_train, 8192);
    CHECK_NEAR(c->rope_theta, 100000.0, 0);
    CHECK_NEAR(c->rms_eps, 1e-5, 1e-12);
    CHECK(c->tied_output);
    CHECK(c->permuted_qk && !c->neox_rope);
    CHECK_EQ_INT(core_qk_perm_heads(c, CORE_MOD_Q), 9);
    CHECK_EQ_INT(core_qk_perm_heads(c, CORE_MOD_K), 3);
    CHECK_EQ_INT(core_qk_perm_heads(c, CORE_MOD_V), 0);
    CHECK(m->output.f32 == m->tok_embd.f32);
}

TEST(model_missing_file_gives_error)
{
    char err[512] = "";
    core_model *m = core_model_load("/nonexistent/model.gguf", err, sizeof err);
    CHECK(m == NULL);
    CHECK_MSG(err[0] != 0, "no error message");
}

#define N_SEQ 4
#define N_DEC 3

/* Prefills each prompt, then decodes N_DEC fixed tokens; logits of the last prompt row and of
 * every decode step are stored in out[seq][step]. Sequences run alone (together = 0) or all in
 * one batch per step, rows interleaved (together = 1). */
static int run_seqs(core_model *m, const int32_t *const *prompts, const int *lens, int together,
                    float *out)
{
    char err[256];
    int nv = m->cfg.n_vocab;
    core_ctx *c = core_ctx_new(m);
    core_kv *kv = core_kv_new(&m->cfg, N_SEQ, 256, err, sizeof err);
    int32_t tok[256], pos[256], slot[256];
    uint8_t want[256];
    float *lg = malloc(sizeof(float) * nv * N_SEQ);
    int rc = 0;
    int groups = together ? 1 : N_SEQ;
    for (int g = 0; g < groups && !rc; g++) {
        int first = together ? 0 : g, last = together ? N_SEQ : g + 1;
        /* prefill: row r of the batch takes position i of sequence s, interleaved */
        int n = 0, maxlen = 0;
        for (int s = first; s < last; s++)
            maxlen = lens[s] > maxlen ? lens[s] : maxlen;
        for (int i = 0; i < maxlen; i++)
            for (int s = first; s < last; s++)
                if (i < lens[s]) {
                    tok[n] = prompts[s][i];
                    pos[n] = i;
                    slot[n] = s;
                    want[n] = i == lens[s] - 1;
                    n++;
                }
        core_batch b = {.n_rows = n, .tokens = tok, .pos = pos, .slot = slot, .want_logits = want};
        rc = core_forward(c, kv, &b, NULL, lg, err, sizeof err);
        /* logits come out in row order; map back to sequences */
        int k = 0;
        for (int r = 0; r < n && !rc; r++)
            if (want[r])
                memcpy(out + ((size_t)slot[r] * (N_DEC + 1)) * nv, lg + (size_t)k++ * nv,
                       sizeof(float) * nv);
        for (int st = 0; st < N_DEC && !rc; st++) {
            n = 0;
            for (int s = first; s < last; s++) {
                tok[n] = 1000 + 37 * s + st;
                pos[n] = lens[s] + st;
                slot[n] = s;
                n++;
            }
            core_batch d = {.n_rows = n, .tokens = tok, .pos = pos, .slot = slot};
            rc = core_forward(c, kv, &d, NULL, lg, err, sizeof err);
            for (int r = 0; r < n && !rc; r++)
                memcpy(out + ((size_t)slot[r] * (N_DEC + 1) + st + 1) * nv, lg + (size_t)r * nv,
                       sizeof(float) * nv);
        }
    }
    if (rc)
        printf("    forward: %s\n", err);
    free(lg);
    core_kv_free(kv);
    core_ctx_free(c);
    return rc;
}

TEST(model_batch_invariance)
{
    TEST_NEED_MODEL();
    core_model *m = test_shared_model();
    CHECK(m != NULL);
    static const int32_t p0[] = {504, 3575, 282, 4649, 314};
    static const int32_t p1[] = {19556, 28, 392, 416, 722, 253, 1345, 281, 3303, 30, 216, 33};
    static const int32_t p2[] = {198};
    int32_t p3[40];
    for (int i = 0; i < 40; i++)
        p3[i] = 300 + 11 * i;
    const int32_t *prompts[N_SEQ] = {p0, p1, p2, p3};
    int lens[N_SEQ] = {5, 12, 1, 40};
    size_t per = (size_t)N_SEQ * (N_DEC + 1) * m->cfg.n_vocab;
    float *alone = malloc(per * sizeof(float)), *batch = malloc(per * sizeof(float));
    CHECK(run_seqs(m, prompts, lens, 0, alone) == 0);
    CHECK(run_seqs(m, prompts, lens, 1, batch) == 0);
    double worst = 0;
    for (size_t i = 0; i < per; i++) {
        double d = fabs(alone[i] - batch[i]);
        worst = d > worst ? d : worst;
    }
    printf("    batch of %d prompts (lengths 5, 12, 1, 40) vs each alone: max |logit diff| = "
           "%.3g (tol 1e-4)\n",
           N_SEQ, worst);
    free(alone);
    free(batch);
    CHECK(worst <= 1e-4);
}

/* Bit-exact batch invariance at every step size, on every kernel level this CPU has (AVX-512,
 * AVX2): one sequence's decode row gives the same logits, to the bit, alone and in a step of N
 * rows (the others another sequence's prompt rows, the decode row in the middle), for N from 1
 * to 256 — across the quantized kernels' row tiles and the sizes where a step used to switch
 * kernels. Returns the number of step sizes whose logits differ; -1 on failure. */
static int bit_exact_steps(core_model *m, const char *level)
{
    static const int sizes[] = {1,  2,  3,  7,  8,  15, 16,  17,  31,  32,  33,
                                47, 48, 49, 63, 64, 65, 100, 128, 129, 255, 256};
    char err[256];
    int nv = m->cfg.n_vocab, bad = 0, rc = 0;
    core_ctx *c = core_ctx_new(m);
    core_kv *kv = core_kv_new(&m->cfg, 2, 320, err, sizeof err);
    float *alone = malloc(sizeof(float) * (size_t)nv), *lg = malloc(sizeof(float) * (size_t)nv);
    int32_t tok[256], pos[256], slot[256];
    uint8_t want[256];
    if (!c || !kv || !alone || !lg)
        rc = -1;
    /* the target: 5 prompt tokens in slot 0 */
    for (int i = 0; i < 5; i++) {
        tok[i] = 504 + 97 * i;
        pos[i] = i;
        slot[i] = 0;
        want[i] = i == 4;
    }
    core_batch b = {.n_rows = 5, .tokens = tok, .pos = pos, .slot = slot, .want_logits = want};
    if (!rc)
        rc = core_forward(c, kv, &b, NULL, lg, err, sizeof err);
    for (size_t k = 0; !rc && k < sizeof sizes / sizeof *sizes; k++) {
        int n = sizes[k], t = (n - 1) / 2; /* the decode row's index */
        core_kv_clear(kv, 1);
        for (int r = 0, f = 0; r < n; r++) {
            bool target = r == t;
            tok[r] = target ? 4649 : 300 + 13 * f;
            pos[r] = target ? 5 : f;
            slot[r] = target ? 0 : 1;
            want[r] = target;
            f += !target;
        }
        b = (core_batch){.n_rows = n, .tokens = tok, .pos = pos, .slot = slot, .want_logits = want};
        rc = core_forward(c, kv, &b, NULL, n == 1 ? alone : lg, err, sizeof err);
        if (!rc && n > 1 && memcmp(alone, lg, sizeof(float) * (size_t)nv) != 0) {
            double worst = 0;
            for (int v = 0; v < nv; v++)
                worst = fabs(alone[v] - lg[v]) > worst ? fabs(alone[v] - lg[v]) : worst;
            printf("    %s: a step of %d rows moves the row's logits by up to %.3g\n", level, n,
                   worst);
            bad++;
        }
    }
    if (rc)
        printf("    %s: forward: %s\n", level, err);
    free(alone);
    free(lg);
    core_kv_free(kv);
    core_ctx_free(c);
    return rc ? -1 : bad;
}

TEST(model_batch_bit_exact_1_to_256_rows)
{
    TEST_NEED_MODEL();
    core_model *m = test_shared_model();
    CHECK(m != NULL);
    static const struct {
        int level;
        const char *name;
    } levels[] = {{CORE_CPU_AVX512, "AVX-512"}, {CORE_CPU_AVX2, "AVX2"}};
    int ran = 0;
    for (size_t i = 0; i < sizeof levels / sizeof *levels; i++) {
        if (core__cpu_force(levels[i].level) != 0)
            continue; /* this CPU lacks it */
        int bad = bit_exact_steps(m, levels[i].name);
        printf("    %s kernels: %d of 21 step sizes (2-256 rows) change the decode row's logits "
               "(want 0)\n",
               levels[i].name, bad);
        CHECK_EQ_INT(bad, 0);
        ran++;
    }
    core__cpu_force(-1);
    CHECK(ran > 0);
}

/* A decode row with more keys than CORE_ATT_CHUNK (position 1000 of a cache filled at random):
 * alone its chunks are spread over the threads, in a step of more rows than threads one task runs
 * them all; the logits must be the same bits either way, on every kernel level. */
static int long_row_steps(core_model *m, const char *level)
{
    static const int sizes[] = {2, 3, 8, 33};
    enum { POS = 1000 };
    char err[256];
    int nv = m->cfg.n_vocab, bad = 0, rc = 0;
    core_ctx *c = core_ctx_new(m);
    core_kv *kv = core_kv_new(&m->cfg, 2, POS + 1, err, sizeof err);
    float *alone = malloc(sizeof(float) * (size_t)nv), *lg = malloc(sizeof(float) * (size_t)nv);
    int32_t tok[33], pos[33], slot[33];
    uint8_t want[33];
    if (!c || !kv || !alone || !lg || core_kv_fill_random(kv, 0, POS, 99))
        rc = -1;
    for (int k = -1; !rc && k < (int)(sizeof sizes / sizeof *sizes); k++) {
        int n = k < 0 ? 1 : sizes[k], t = n / 2;
        core_kv_clear(kv, 1);
        for (int r = 0, f = 0; r < n; r++) {
            bool target = r == t;
            tok[r] = target ? 4649 : 300 + 13 * f;
            pos[r] = target ? POS : f;
            slot[r] = target ? 0 : 1;
            want[r] = target;
            f += !target;
        }
        core_batch b = {.n_rows = n, .tokens = tok, .pos = pos, .slot = slot, .want_logits = want};
        rc = core_forward(c, kv, &b, NULL, n == 1 ? alone : lg, err, sizeof err);
        if (!rc && n > 1 && memcmp(alone, lg, sizeof(float) * (size_t)nv) != 0) {
            printf("    %s: the row at position %d differs alone and in a step of %d rows\n", level,
                   POS, n);
            bad++;
        }
    }
    if (rc)
        printf("    %s: forward: %s\n", level, rc == -1 ? "no memory" : err);
    free(alone);
    free(lg);
    core_kv_free(kv);
    core_ctx_free(c);
    return rc ? -1 : bad;
}

/* long_row_steps on each kernel level this CPU has (*ran of them): the steps that differ. */
static int long_rows_each_level(core_model *m, const char *model, int *ran)
{
    static const int levels[] = {CORE_CPU_AVX512, CORE_CPU_AVX2};
    static const char *names[] = {"AVX-512", "AVX2"};
    int all = 0;
    *ran = 0;
    for (int i = 0; i < 2; i++) {
        if (core__cpu_force(levels[i]) != 0)
            continue;
        int bad = long_row_steps(m, names[i]);
        printf("    %s, %s: a row at position 1000 (%d chunks of attention) in steps of 2, 3, 8, "
               "33 rows: %d differ from it alone (want 0)\n",
               model, names[i], core__attend_chunks(1001), bad);
        all += bad ? 1 : 0;
        (*ran)++;
    }
    core__cpu_force(-1);
    return all;
}

TEST(model_long_row_bit_exact_alone_and_batched)
{
    TEST_NEED_MODEL();
    core_model *m = test_shared_model();
    CHECK(m != NULL);
    int ran;
    CHECK_EQ_INT(long_rows_each_level(m, "SmolLM2", &ran), 0);
    CHECK(ran > 0);
}

/* The same for Gemma 3, whose sliding-window layers attend from position 1000 - 511 on. */
TEST(gemma_long_row_bit_exact_alone_and_batched)
{
    TEST_NEED_GEMMA();
    core_model *m = test_gemma_model();
    CHECK(m != NULL);
    int ran;
    CHECK_EQ_INT(long_rows_each_level(m, "Gemma 3", &ran), 0);
    CHECK(ran > 0);
}

/* One decode-sized batch (rows of four sequences at different positions) on 1 and on 2 threads:
 * core's own kernels split their work by output rows, so the logits must be the same bits. */
TEST(model_threads_do_not_change_results)
{
    TEST_NEED_MODEL();
    core_model *m = test_shared_model();
    CHECK(m != NULL);
    char err[256];
    int32_t tok[10], pos[10], slot[10];
    for (int i = 0; i < 10; i++) {
        tok[i] = 200 + 37 * i;
        slot[i] = i % 4;
        pos[i] = i / 4;
    }
    core_batch b = {.n_rows = 10, .tokens = tok, .pos = pos, .slot = slot};
    size_t nl = (size_t)10 * m->cfg.n_vocab;
    float *lg[2] = {malloc(nl * sizeof(float)), malloc(nl * sizeof(float))};
    int before = core_blas_threads();
    for (int t = 0; t < 2; t++) {
        core_blas_set_threads(t + 1);
        core_ctx *c = core_ctx_new(m);
        core_kv *kv = core_kv_new(&m->cfg, 4, 16, err, sizeof err);
        CHECK(c && kv && core_forward(c, kv, &b, NULL, lg[t], err, sizeof err) == 0);
        core_kv_free(kv);
        core_ctx_free(c);
    }
    core_blas_set_threads(before);
    size_t differ = 0;
    for (size_t i = 0; i < nl; i++)
        differ += memcmp(&lg[0][i], &lg[1][i], sizeof(float)) != 0;
    printf("    10-row step on 1 vs 2 threads: %zu of %zu logits differ (want 0)\n", differ, nl);
    CHECK(differ == 0);
    free(lg[0]);
    free(lg[1]);
}

/* Where core's kernels read a matrix at every batch size (AVX-512), the loader leaves it in the
 * mapping: the slab holds only the norms. core_model_dequantize then fills in every matrix as
 * f32 (each equal to dequantizing the tensor), and the logits keep the same bits (forward reads
 * the quantized weights either way; the embedding rows, dequantized on demand before, come from
 * the slab after). */
TEST(model_lazy_f32_weights)
{
    TEST_NEED_MODEL();
    char err[256];
    core_model *m = core_model_load(test_model_path(), err, sizeof err);
    CHECK_MSG(m != NULL, "%s", err);
    const core_config *c = &m->cfg;
    size_t norms = (size_t)(2 * c->n_layer + 1) * c->n_embd;
    printf("    f32 slab after load: %.1f MB (%s)\n", m->slab_floats * 4.0 / 1e6,
           m->all_f32 ? "every matrix" : "norms only; the matrices stay quantized");
    int32_t tok[3] = {1, 4093, 49151}, pos[3] = {0, 1, 2}, slot[3] = {0};
    core_batch b = {.n_rows = 3, .tokens = tok, .pos = pos, .slot = slot};
    float *before = malloc(sizeof(float) * 3 * (size_t)c->n_vocab);
    float *after = malloc(sizeof(float) * 3 * (size_t)c->n_vocab);
    float *row = malloc(sizeof(float) * (size_t)c->n_ff);
    for (int k = 0; k < 2; k++) {
        core_ctx *ctx = core_ctx_new(m);
        core_kv *kv = core_kv_new(c, 1, 8, err, sizeof err);
        CHECK(core_forward(ctx, kv, &b, NULL, k ? after : before, err, sizeof err) == 0);
        core_kv_free(kv);
        core_ctx_free(ctx);
        if (k == 0) {
            if (!m->all_f32) {
                CHECK_EQ_INT((long long)m->slab_floats, (long long)norms);
                CHECK(m->tok_embd.f32 == NULL && m->layers[3].w[CORE_MOD_GATE].f32 == NULL);
            }
            CHECK(core_model_dequantize(m, err, sizeof err) == 0);
            CHECK(m->all_f32 && m->tok_embd.f32 && m->output.f32 == m->tok_embd.f32);
        }
    }
    CHECK_MSG(memcmp(before, after, sizeof(float) * 3 * (size_t)c->n_vocab) == 0,
              "logits changed once the weights were dequantized");
    /* a few rows of the f32 weights against the tensor itself */
    const core_gguf_tensor *t = core_gguf_find_tensor(m->gguf, "blk.3.ffn_gate.weight");
    CHECK(t != NULL);
    size_t rb = core_type_row_bytes(t->type, (uint64_t)c->n_embd);
    for (int r = 0; r < c->n_ff; r += 511) {
        core_dequant_row(t->type, (const uint8_t *)t->data + (size_t)r * rb, row, c->n_embd);
        CHECK(memcmp(row, m->layers[3].w[CORE_MOD_GATE].f32 + (size_t)r * c->n_embd,
                     sizeof(float) * (size_t)c->n_embd) == 0);
    }
    free(before);
    free(after);
    free(row);
    core_model_free(m);
}

/* One step of rows tokens of one sequence (rows <= 64), all logits. */
static void forward_rows(core_model *m, float *logits, int rows)
{
    char err[256];
    int32_t tok[64], pos[64], slot[64] = {0};
    for (int i = 0; i < rows; i++) {
        tok[i] = (int32_t)((1 + 4093 * i) % m->cfg.n_vocab);
        pos[i] = i;
    }
    core_batch b = {.n_rows = rows, .tokens = tok, .pos = pos, .slot = slot};
    core_ctx *ctx = core_ctx_new(m);
    core_kv *kv = core_kv_new(&m->cfg, 1, 64, err, sizeof err);
    CHECK_MSG(core_forward(ctx, kv, &b, NULL, logits, err, sizeof err) == 0, "%s", err);
    core_kv_free(kv);
    core_ctx_free(ctx);
}

/* With int8 on, the f32 copies of the repacked matrices are dropped, whatever the CPU (AVX2 CPUs
 * kept them for large steps); int8 logits keep their bits, also for a step of more rows than
 * core__qmatmul_max_rows(); turning int8 off brings the f32 copies back and the f32 logits with
 * them, bit for bit. */
TEST(model_int8_drops_f32_copies)
{
    TEST_NEED_MODEL();
    char err[256];
    core_model *m = core_model_load(test_model_path(), err, sizeof err);
    CHECK_MSG(m != NULL, "%s", err);
    if (!core_int8_kernels()) {
        core_model_free(m);
        TEST_SKIP("no int8 kernels on this CPU: nothing to drop");
    }
    const core_config *c = &m->cfg;
    size_t norms = (size_t)(2 * c->n_layer + 1) * c->n_embd, nl = (size_t)c->n_vocab;
    enum { ROWS = 56 }; /* past CORE_QMATMUL_ROWS, where AVX2 once switched to sgemm */
    float *f32a = malloc(sizeof(float) * nl * ROWS), *f32b = malloc(sizeof(float) * nl * ROWS);
    float *q8a = malloc(sizeof(float) * nl * ROWS), *q8b = malloc(sizeof(float) * nl * ROWS);
    forward_rows(m, f32a, ROWS);
    size_t lazy = m->slab_floats;
    CHECK(core_model_set_int8(m, 1, err, sizeof err) > 0);
    printf("    f32 slab: %.1f MB after load, %.1f MB with int8 on\n", lazy * 4.0 / 1e6,
           m->slab_floats * 4.0 / 1e6);
    CHECK_EQ_INT((long long)m->slab_floats, (long long)norms);
    CHECK(m->tok_embd.f32 == NULL && m->output.f32 == NULL &&
          m->layers[5].w[CORE_MOD_DOWN].f32 == NULL);
    forward_rows(m, q8a, ROWS);
    CHECK(core_model_set_int8(m, 1, err, sizeof err) > 0); /* again: a no-op */
    forward_rows(m, q8b, ROWS);
    CHECK_MSG(memcmp(q8a, q8b, sizeof(float) * nl * ROWS) == 0, "int8 logits changed");
    CHECK(memcmp(q8a, f32a, sizeof(float) * nl * ROWS) != 0);
    CHECK_EQ_INT(core_model_set_int8(m, 0, err, sizeof err), 0);
    CHECK_EQ_INT((long long)m->slab_floats, (long long)lazy);
    forward_rows(m, f32b, ROWS);
    CHECK_MSG(memcmp(f32a, f32b, sizeof(float) * nl * ROWS) == 0,
              "f32 logits changed after int8 on and off");
    free(f32a);
    free(f32b);
    free(q8a);
    free(q8b);
    core_model_free(m);
}

/* A weight that dequantizes to NaN is refused at load, also in a matrix that stays quantized. */
TEST(model_rejects_non_finite_weights)
{
    TEST_NEED_MODEL();
    char err[512] = "", path[256];
    core_gguf *g = core_gguf_open(test_model_path(), err, sizeof err);
    CHECK(g != NULL);
    const core_gguf_tensor *t = core_gguf_find_tensor(g, "blk.5.ffn_up.weight");
    CHECK(t != NULL && t->type == CORE_TYPE_Q4_1);
    /* block 7 of the tensor: its scale d (f16) becomes NaN */
    uint64_t at = g->data_offset + t->offset + 7 * 20;
    core_gguf_close(g);
    const char *dir = tu_tmpdir();
    CHECK(dir != NULL);
    snprintf(path, sizeof path, "%s/nan.gguf", dir);
    FILE *in = fopen(test_model_path(), "rb"), *out = fopen(path, "wb");
    CHECK(in && out);
    char buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        fwrite(buf, 1, n, out);
    fclose(in);
    uint8_t nan16[2] = {0x00, 0x7e};
    fseek(out, (long)at, SEEK_SET);
    fwrite(nan16, 1, 2, out);
    fclose(out);
    core_model *m = core_model_load(path, err, sizeof err);
    printf("    %s\n", err);
    CHECK(m == NULL);
    CHECK_MSG(strstr(err, "blk.5.ffn_up.weight") && strstr(err, "non-finite"), "%s", err);
    tu_rmrf(dir);
}

/* An f16 KV cache takes half the bytes of an f32 one, gives logits close to it, and can be
 * switched only while every slot is empty. */
TEST(model_kv_f16)
{
    TEST_NEED_MODEL();
    core_model *m = test_shared_model();
    CHECK(m != NULL);
    const core_config *c = &m->cfg;
    char err[256];
    int32_t tok[4] = {1, 504, 3000, 42}, pos[4] = {0, 1, 2, 3}, slot[4] = {0};
    core_batch b = {.n_rows = 4, .tokens = tok, .pos = pos, .slot = slot};
    float *lg[2];
    size_t bytes[2];
    for (int f16 = 0; f16 < 2; f16++) {
        core_ctx *ctx = core_ctx_new(m);
        core_kv *kv = core_kv_new(c, 2, 64, err, sizeof err);
        CHECK_EQ_INT(core_kv_set_f16(kv, f16), 0);
        CHECK_EQ_INT(core_kv_is_f16(kv), f16);
        lg[f16] = malloc(sizeof(float) * 4 * (size_t)c->n_vocab);
        CHECK(core_forward(ctx, kv, &b, NULL, lg[f16], err, sizeof err) == 0);
        bytes[f16] = core_kv_bytes(kv);
        CHECK_EQ_INT(core_kv_set_f16(kv, !f16), -EBUSY);
        core_kv_clear(kv, 0);
        CHECK_EQ_INT(core_kv_set_f16(kv, !f16), 0);
        core_kv_free(kv);
        core_ctx_free(ctx);
    }
    double worst = 0;
    for (size_t i = 0; i < 4 * (size_t)c->n_vocab; i++)
        worst = fmax(worst, fabs(lg[0][i] - lg[1][i]));
    printf("    KV bytes %zu (f32) vs %zu (f16); logits max |f16 - f32| %.3g (tol 0.05)\n",
           bytes[0], bytes[1], worst);
    CHECK(bytes[1] * 2 == bytes[0]);
    CHECK(worst > 0 && worst <= 0.05);
    free(lg[0]);
    free(lg[1]);
}
