/* Forward-pass tests on a small random Llama: the LoRA plan against a naive dense merge
 * (W + s·B·A), mixed adapters and ranks in one batch, stacking, and bad batches and plans. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/format/types.h"
#include "core/kernels/cpu_internal.h"
#include "core/kernels/lora_internal.h"
#include "core/model/kv_internal.h"
#include "core/model/model.h"
#include "tests/shared_model.h"
#include "tests/test.h"

static uint64_t rng_state;

static float frand(void)
{
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((rng_state >> 40) / (double)(1ULL << 24)) * 2.0f - 1.0f;
}

/* A tiny random model: 2 layers, GQA 4 heads over 2 KV heads, vocab 97. */
static core_model *tiny_model(uint64_t seed)
{
    core_model *m = calloc(1, sizeof *m);
    core_config *c = &m->cfg;
    strcpy(c->arch, "llama");
    c->n_layer = 2;
    c->n_embd = 64;
    c->n_head = 4;
    c->n_head_kv = 2;
    c->head_dim = 16;
    c->rope_dim = 16;
    c->n_ff = 96;
    c->n_vocab = 97;
    c->n_ctx_train = 128;
    c->rope_theta = 10000.0f;
    c->rms_eps = 1e-5f;
    c->tied_output = true;
    size_t per_layer = 2 * (size_t)c->n_embd;
    for (int mod = 0; mod < CORE_MOD_COUNT; mod++)
        per_layer += (size_t)core_module_in(c, mod) * core_module_out(c, mod);
    m->slab_floats = (size_t)c->n_vocab * c->n_embd + c->n_embd + per_layer * c->n_layer;
    m->slab = malloc(m->slab_floats * sizeof(float));
    m->layers = calloc(c->n_layer, sizeof *m->layers);
    rng_state = seed;
    float *p = m->slab;
    m->tok_embd = m->output = (core_weight){.rows = c->n_vocab, .cols = c->n_embd, .f32 = p};
    for (int i = 0; i < c->n_vocab * c->n_embd; i++)
        *p++ = frand();
    m->output_norm = p;
    for (int i = 0; i < c->n_embd; i++)
        *p++ = 1.0f + 0.1f * frand();
    for (int l = 0; l < c->n_layer; l++) {
        m->layers[l].attn_norm = p;
        for (int i = 0; i < c->n_embd; i++)
            *p++ = 1.0f + 0.1f * frand();
        m->layers[l].ffn_norm = p;
        for (int i = 0; i < c->n_embd; i++)
            *p++ = 1.0f + 0.1f * frand();
        for (int mod = 0; mod < CORE_MOD_COUNT; mod++) {
            int in = core_module_in(c, mod), out = core_module_out(c, mod);
            m->layers[l].w[mod] = (core_weight){.rows = out, .cols = in, .f32 = p};
            for (int i = 0; i < in * out; i++)
                *p++ = frand() * 0.3f;
        }
    }
    return m;
}

static core_model *clone_model(const core_model *src)
{
    core_model *m = calloc(1, sizeof *m);
    *m = *src;
    m->gguf = NULL;
    m->slab = malloc(src->slab_floats * sizeof(float));
    memcpy(m->slab, src->slab, src->slab_floats * sizeof(float));
    m->layers = calloc(src->cfg.n_layer, sizeof *m->layers);
    ptrdiff_t d = m->slab - src->slab;
    m->tok_embd.f32 = src->tok_embd.f32 + d;
    m->output.f32 = src->output.f32 + d;
    m->output_norm = src->output_norm + d;
    for (int l = 0; l < src->cfg.n_layer; l++) {
        m->layers[l].attn_norm = src->layers[l].attn_norm + d;
        m->layers[l].ffn_norm = src->layers[l].ffn_norm + d;
        for (int mod = 0; mod < CORE_MOD_COUNT; mod++) {
            m->layers[l].w[mod] = src->layers[l].w[mod];
            m->layers[l].w[mod].f32 = src->layers[l].w[mod].f32 + d;
        }
    }
    return m;
}

/* A random adapter: per (layer, module) A (rank, in) and Bt (rank, out) in the given dtype, plus
 * the same values in f32 for the dense reference. */
typedef struct test_adapter {
    uint32_t dtype;
    int rank;
    unsigned modules; /* bit mask of core_module */
    void *A[2][CORE_MOD_COUNT], *Bt[2][CORE_MOD_COUNT];
    float *A32[2][CORE_MOD_COUNT], *Bt32[2][CORE_MOD_COUNT];
} test_adapter;

static void store(uint32_t dtype, void *dst, float *dst32, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float v = frand() * 0.5f;
        if (dtype == CORE_TYPE_F32) {
            ((float *)dst)[i] = v;
            dst32[i] = v;
        } else if (dtype == CORE_TYPE_F16) {
            ((uint16_t *)dst)[i] = core_fp32_to_fp16(v);
            dst32[i] = core_fp16_to_fp32(((uint16_t *)dst)[i]);
        } else {
            ((uint16_t *)dst)[i] = core_fp32_to_bf16(v);
            dst32[i] = core_bf16_to_fp32(((uint16_t *)dst)[i]);
        }
    }
}

static void make_adapter(test_adapter *a, const core_config *c, uint32_t dtype, int rank,
                         unsigned modules)
{
    memset(a, 0, sizeof *a);
    a->dtype = dtype;
    a->rank = rank;
    a->modules = modules;
    size_t es = dtype == CORE_TYPE_F32 ? 4 : 2;
    for (int l = 0; l < c->n_layer; l++) {
        for (int mod = 0; mod < CORE_MOD_COUNT; mod++) {
            if (!(modules & (1u << mod)))
                continue;
            size_t na = (size_t)rank * core_module_in(c, mod);
            size_t nb = (size_t)core_module_out(c, mod) * rank;
            a->A[l][mod] = malloc(na * es);
            a->Bt[l][mod] = malloc(nb * es);
            a->A32[l][mod] = malloc(na * 4);
            a->Bt32[l][mod] = malloc(nb * 4);
            store(dtype, a->A[l][mod], a->A32[l][mod], na);
            store(dtype, a->Bt[l][mod], a->Bt32[l][mod], nb);
        }
    }
}

static void free_adapter(test_adapter *a)
{
    for (int l = 0; l < 2; l++)
        for (int mod = 0; mod < CORE_MOD_COUNT; mod++) {
            free(a->A[l][mod]);
            free(a->Bt[l][mod]);
            free(a->A32[l][mod]);
            free(a->Bt32[l][mod]);
        }
}

/* W += s · B·A, the dense reference. */
static void merge(core_model *m, const test_adapter *a, float s)
{
    const core_config *c = &m->cfg;
    for (int l = 0; l < c->n_layer; l++)
        for (int mod = 0; mod < CORE_MOD_COUNT; mod++) {
            if (!(a->modules & (1u << mod)))
                continue;
            int in = core_module_in(c, mod), out = core_module_out(c, mod);
            float *W = m->layers[l].w[mod].f32;
            for (int o = 0; o < out; o++)
                for (int i = 0; i < in; i++) {
                    double d = 0;
                    for (int r = 0; r < a->rank; r++)
                        d += (double)a->Bt32[l][mod][r * out + o] * a->A32[l][mod][r * in + i];
                    W[o * in + i] += (float)(s * d);
                }
        }
}

#define N_SEQ 3
#define N_TOK                                                                                      \
    20 /* > 16 rows per adapter group: the sgemm path; one position per step: the kernels */

/* Runs one sequence alone through a model (no plan) and returns all positions' logits. */
static float *run_alone(const core_model *m, const int32_t *toks, int n)
{
    char err[256];
    core_ctx *c = core_ctx_new(m);
    core_kv *kv = core_kv_new(&m->cfg, 1, 64, err, sizeof err);
    int32_t pos[N_TOK], slot[N_TOK] = {0};
    for (int i = 0; i < n; i++)
        pos[i] = i;
    core_batch b = {.n_rows = n, .tokens = toks, .pos = pos, .slot = slot};
    float *logits = malloc((size_t)n * m->cfg.n_vocab * sizeof(float));
    int rc = core_forward(c, kv, &b, NULL, logits, err, sizeof err);
    if (rc) {
        printf("    forward failed: %s\n", err);
        free(logits);
        logits = NULL;
    }
    core_kv_free(kv);
    core_ctx_free(c);
    return logits;
}

static void lora_plan_vs_dense(void)
{
    core_model *m = tiny_model(42);
    const core_config *cfg = &m->cfg;
    test_adapter a1, a2, a3;
    make_adapter(&a1, cfg, CORE_TYPE_F32, 4, (1u << CORE_MOD_Q) | (1u << CORE_MOD_V));
    make_adapter(&a2, cfg, CORE_TYPE_F16, 8, 0x7f);
    make_adapter(&a3, cfg, CORE_TYPE_BF16, 2, (1u << CORE_MOD_GATE) | (1u << CORE_MOD_DOWN));
    /* seq 0: base; seq 1: a1·0.7 stacked with a2·0.25; seq 2: a3·(−1.3) */
    const float s1 = 0.7f, s2 = 0.25f, s3 = -1.3f;
    int32_t toks[N_SEQ][N_TOK];
    for (int s = 0; s < N_SEQ; s++)
        for (int i = 0; i < N_TOK; i++)
            toks[s][i] = (s * 31 + i * 17 + 5) % cfg->n_vocab;

    /* Batch: the three sequences interleaved, so rows of one adapter are not contiguous. */
    int n = N_SEQ * N_TOK;
    int32_t tokens[N_SEQ * N_TOK], pos[N_SEQ * N_TOK], slot[N_SEQ * N_TOK];
    for (int i = 0; i < N_TOK; i++)
        for (int s = 0; s < N_SEQ; s++) {
            int r = i * N_SEQ + s;
            tokens[r] = toks[s][i];
            pos[r] = i;
            slot[r] = s;
        }
    int32_t rows1[N_TOK], rows3[N_TOK];
    float sc1[N_TOK], sc2[N_TOK], sc3[N_TOK];
    for (int i = 0; i < N_TOK; i++) {
        rows1[i] = i * N_SEQ + 1;
        rows3[i] = i * N_SEQ + 2;
        sc1[i] = s1;
        sc2[i] = s2;
        sc3[i] = s3;
    }
    core_lora_group groups[2 * CORE_MOD_COUNT * 3];
    int ng = 0;
    const test_adapter *ads[3] = {&a1, &a2, &a3};
    const float *scs[3] = {sc1, sc2, sc3};
    const int32_t *rws[3] = {rows1, rows1, rows3};
    for (int k = 0; k < 3; k++)
        for (int l = 0; l < cfg->n_layer; l++)
            for (int mod = 0; mod < CORE_MOD_COUNT; mod++) {
                if (!(ads[k]->modules & (1u << mod)))
                    continue;
                groups[ng++] = (core_lora_group){.layer = l,
                                                 .module = mod,
                                                 .dtype = ads[k]->dtype,
                                                 .A = ads[k]->A[l][mod],
                                                 .Bt = ads[k]->Bt[l][mod],
                                                 .rank = ads[k]->rank,
                                                 .n_rows = N_TOK,
                                                 .rows = rws[k],
                                                 .scales = scs[k]};
            }
    core_lora_plan plan = {.n_groups = ng, .groups = groups};
    char err[256];
    core_ctx *c = core_ctx_new(m);
    core_kv *kv = core_kv_new(cfg, N_SEQ, 64, err, sizeof err);
    float *logits = malloc((size_t)n * cfg->n_vocab * sizeof(float));
    float *stepped = malloc((size_t)n * cfg->n_vocab * sizeof(float));
    /* All rows in one batch: 20-row groups. */
    core_batch b = {.n_rows = n, .tokens = tokens, .pos = pos, .slot = slot};
    int rc = core_forward(c, kv, &b, &plan, logits, err, sizeof err);
    CHECK_MSG(rc == 0, "forward: %s", err);
    /* One position of every sequence per step: 1-row groups. */
    for (int s = 0; s < N_SEQ; s++)
        core_kv_clear(kv, s);
    for (int i = 0; i < N_TOK; i++) {
        float sc_one[3] = {s1, s2, s3};
        int32_t r_seq1 = 1, r_seq2 = 2;
        core_lora_group sg[2 * CORE_MOD_COUNT * 3];
        for (int k = 0; k < ng; k++) {
            sg[k] = groups[k];
            sg[k].n_rows = 1;
            sg[k].rows = groups[k].rows == rows3 ? &r_seq2 : &r_seq1;
            sg[k].scales = groups[k].scales == sc1   ? &sc_one[0]
                           : groups[k].scales == sc2 ? &sc_one[1]
                                                     : &sc_one[2];
        }
        core_lora_plan sp = {.n_groups = ng, .groups = sg};
        core_batch sb = {.n_rows = N_SEQ,
                         .tokens = tokens + i * N_SEQ,
                         .pos = pos + i * N_SEQ,
                         .slot = slot + i * N_SEQ};
        rc = core_forward(c, kv, &sb, &sp, stepped + (size_t)i * N_SEQ * cfg->n_vocab, err,
                          sizeof err);
        CHECK_MSG(rc == 0, "stepped forward: %s", err);
    }
    core_model *ref[N_SEQ] = {clone_model(m), clone_model(m), clone_model(m)};
    merge(ref[1], &a1, s1);
    merge(ref[1], &a2, s2);
    merge(ref[2], &a3, s3);
    double worst = 0, worst_k = 0, moved = 0;
    float *base = run_alone(m, toks[1], N_TOK);
    for (int s = 0; s < N_SEQ; s++) {
        float *want = run_alone(ref[s], toks[s], N_TOK);
        CHECK(want != NULL);
        for (int i = 0; i < N_TOK; i++)
            for (int v = 0; v < cfg->n_vocab; v++) {
                size_t at = (size_t)(i * N_SEQ + s) * cfg->n_vocab + v;
                double d = fabs(logits[at] - want[(size_t)i * cfg->n_vocab + v]);
                double dk = fabs(stepped[at] - want[(size_t)i * cfg->n_vocab + v]);
                worst = d > worst ? d : worst;
                worst_k = dk > worst_k ? dk : worst_k;
                if (s == 1) {
                    double mv = fabs(want[(size_t)i * cfg->n_vocab + v] -
                                     base[(size_t)i * cfg->n_vocab + v]);
                    if (mv > moved)
                        moved = mv;
                }
            }
        free(want);
    }
    printf("    lora plan vs dense merge: max |diff| = %.3g with 20-row groups, %.3g with "
           "1-row groups (tol 1e-4); adapters move logits by up to %.3g\n",
           worst, worst_k, moved);
    CHECK_MSG(worst <= 1e-4 && worst_k <= 1e-4, "max diff %g / %g", worst, worst_k);
    free(stepped);
    CHECK_MSG(moved > 0.1, "the adapters barely change the output (%g): test is too weak", moved);
    free(base);
    for (int s = 0; s < N_SEQ; s++)
        core_model_free(ref[s]);
    free(logits);
    core_kv_free(kv);
    core_ctx_free(c);
    free_adapter(&a1);
    free_adapter(&a2);
    free_adapter(&a3);
    core_model_free(m);
}

TEST(forward_lora_plan_matches_dense_merge)
{
    lora_plan_vs_dense();
}

/* The same with the portable kernels, which an AVX2 machine would otherwise never run. */
TEST(forward_lora_plan_portable_kernels)
{
    core__cpu_force(CORE_CPU_PORTABLE);
    lora_plan_vs_dense();
    core__cpu_force(-1);
}

/* Prefill in one batch, then decode one row at a time, equals the whole sequence at once. */
TEST(forward_incremental_decode_matches_prefill)
{
    core_model *m = tiny_model(7);
    int32_t toks[N_TOK] = {3, 14, 15, 92, 65, 35};
    float *all = run_alone(m, toks, N_TOK);
    CHECK(all != NULL);
    char err[256];
    core_ctx *c = core_ctx_new(m);
    core_kv *kv = core_kv_new(&m->cfg, 2, 64, err, sizeof err);
    float *lg = malloc((size_t)m->cfg.n_vocab * sizeof(float));
    double worst = 0;
    for (int i = 0; i < N_TOK; i++) {
        int32_t pos = i, slot = 1;
        core_batch b = {.n_rows = 1, .tokens = &toks[i], .pos = &pos, .slot = &slot};
        CHECK(core_forward(c, kv, &b, NULL, lg, err, sizeof err) == 0);
        for (int v = 0; v < m->cfg.n_vocab; v++) {
            double d = fabs(lg[v] - all[(size_t)i * m->cfg.n_vocab + v]);
            worst = d > worst ? d : worst;
        }
    }
    printf("    incremental vs one-shot: max |diff| = %.3g (tol 1e-4)\n", worst);
    CHECK(worst <= 1e-4);
    free(lg);
    free(all);
    core_kv_free(kv);
    core_ctx_free(c);
    core_model_free(m);
}

TEST(forward_rejects_bad_batches_and_plans)
{
    core_model *m = tiny_model(9);
    char err[256];
    core_ctx *c = core_ctx_new(m);
    core_kv *kv = core_kv_new(&m->cfg, 2, 8, err, sizeof err);
    float lg[97 * 2];
    int32_t tok = 5, pos = 0, slot = 0;
    core_batch b = {.n_rows = 1, .tokens = &tok, .pos = &pos, .slot = &slot};

    tok = 97;
    CHECK_EQ_INT(core_forward(c, kv, &b, NULL, lg, err, sizeof err), -EINVAL);
    CHECK(strstr(err, "token id 97") != NULL);
    tok = 5;
    pos = 3; /* skips positions 0..2 */
    CHECK_EQ_INT(core_forward(c, kv, &b, NULL, lg, err, sizeof err), -EINVAL);
    CHECK(strstr(err, "skips ahead") != NULL);
    pos = 8; /* past n_ctx */
    CHECK_EQ_INT(core_forward(c, kv, &b, NULL, lg, err, sizeof err), -ERANGE);
    pos = 0;
    slot = 2;
    CHECK_EQ_INT(core_forward(c, kv, &b, NULL, lg, err, sizeof err), -EINVAL);
    slot = 0;

    float A[4 * 64] = {0}, Bt[4 * 64] = {0}, scale = 1.0f;
    int32_t row = 1; /* batch has one row */
    core_lora_group g = {.layer = 0,
                         .module = CORE_MOD_Q,
                         .dtype = CORE_TYPE_F32,
                         .A = A,
                         .Bt = Bt,
                         .rank = 4,
                         .n_rows = 1,
                         .rows = &row,
                         .scales = &scale};
    core_lora_plan plan = {.n_groups = 1, .groups = &g};
    CHECK_EQ_INT(core_forward(c, kv, &b, &plan, lg, err, sizeof err), -EINVAL);
    CHECK(strstr(err, "row") != NULL);
    row = 0;
    g.layer = 2;
    CHECK_EQ_INT(core_forward(c, kv, &b, &plan, lg, err, sizeof err), -EINVAL);
    g.layer = 0;
    scale = NAN;
    CHECK_EQ_INT(core_forward(c, kv, &b, &plan, lg, err, sizeof err), -EINVAL);
    scale = 1.0f;
    g.dtype = CORE_TYPE_Q4_0;
    CHECK_EQ_INT(core_forward(c, kv, &b, &plan, lg, err, sizeof err), -EINVAL);
    g.dtype = CORE_TYPE_F32;
    /* A valid zero adapter leaves the logits alone, and the cache keeps working after errors. */
    CHECK_EQ_INT(core_forward(c, kv, &b, &plan, lg, err, sizeof err), 0);
    pos = 1;
    CHECK_EQ_INT(core_forward(c, kv, &b, NULL, lg, err, sizeof err), 0);
    core_kv_free(kv);
    core_ctx_free(c);
    core_model_free(m);
}

/* A row's logits are the same bits whatever else is in its step, also when its adapter's group
 * has many rows: the real model (whose base matmuls are bit-exact at any batch size on AVX-512,
 * up to 48 rows on AVX2), one f16 rank-8 all-linear adapter, rows 0..2 alone and then in a step
 * of 24 rows that all use the adapter. Groups of 16 rows and more once went through sgemm, whose
 * bits depend on the number of rows: that flipped greedy near-ties between batched and alone. */
static void lora_group_size_invariant(void)
{
    core_model *m = test_shared_model();
    CHECK(m != NULL);
    const core_config *cfg = &m->cfg;
    enum { RANK = 8, ROWS = 24, FEW = 3 };
    int n_groups = cfg->n_layer * CORE_MOD_COUNT;
    core_lora_group *groups = calloc((size_t)n_groups, sizeof *groups);
    void **mem = calloc((size_t)n_groups * 2, sizeof *mem);
    int32_t rows[ROWS], tokens[ROWS], pos[ROWS] = {0}, slot[ROWS];
    float scales[ROWS];
    rng_state = 3;
    for (int i = 0; i < ROWS; i++) {
        rows[i] = slot[i] = i;
        tokens[i] = (i * 977 + 13) % cfg->n_vocab;
        scales[i] = 0.5f;
    }
    for (int l = 0, g = 0; l < cfg->n_layer; l++)
        for (int mod = 0; mod < CORE_MOD_COUNT; mod++, g++) {
            size_t na = (size_t)RANK * core_module_in(cfg, mod);
            size_t nb = (size_t)RANK * core_module_out(cfg, mod);
            uint16_t *A = malloc(na * 2), *Bt = malloc(nb * 2);
            for (size_t k = 0; k < na; k++)
                A[k] = core_fp32_to_fp16(frand() * 0.05f);
            for (size_t k = 0; k < nb; k++)
                Bt[k] = core_fp32_to_fp16(frand() * 0.05f);
            mem[2 * g] = A;
            mem[2 * g + 1] = Bt;
            groups[g] = (core_lora_group){.layer = l,
                                          .module = mod,
                                          .dtype = CORE_TYPE_F16,
                                          .A = A,
                                          .Bt = Bt,
                                          .rank = RANK,
                                          .rows = rows,
                                          .scales = scales};
        }
    char err[256];
    core_ctx *c = core_ctx_new(m);
    core_kv *kv = core_kv_new(cfg, ROWS, 8, err, sizeof err);
    float *few = malloc(sizeof(float) * FEW * (size_t)cfg->n_vocab);
    float *all = malloc(sizeof(float) * ROWS * (size_t)cfg->n_vocab);
    core_lora_plan plan = {.n_groups = n_groups, .groups = groups};
    int sizes[2] = {FEW, ROWS};
    float *outs[2] = {few, all};
    for (int k = 0; k < 2; k++) {
        for (int g = 0; g < n_groups; g++)
            groups[g].n_rows = sizes[k];
        for (int s = 0; s < ROWS; s++)
            core_kv_clear(kv, s);
        core_batch b = {.n_rows = sizes[k], .tokens = tokens, .pos = pos, .slot = slot};
        int rc = core_forward(c, kv, &b, &plan, outs[k], err, sizeof err);
        CHECK_MSG(rc == 0, "forward: %s", err);
    }
    double worst = 0;
    for (size_t i = 0; i < FEW * (size_t)cfg->n_vocab; i++)
        worst = fmax(worst, fabs(few[i] - all[i]));
    printf("    rows 0..2 alone vs in a %d-row step, every group %d rows: max |diff| %.3g "
           "(want 0: the same bits)\n",
           ROWS, ROWS, worst);
    CHECK(memcmp(few, all, sizeof(float) * FEW * (size_t)cfg->n_vocab) == 0);
    free(few);
    free(all);
    core_kv_free(kv);
    core_ctx_free(c);
    for (int g = 0; g < 2 * n_groups; g++)
        free(mem[g]);
    free(mem);
    free(groups);
}

TEST(forward_lora_group_size_does_not_change_a_row)
{
    TEST_NEED_MODEL();
    if (core__cpu_level() < CORE_CPU_AVX2)
        TEST_SKIP("no AVX2 (or ADAPTREE_CPU=none): the linear layers run on OpenBLAS, whose bits "
                  "depend on the number of rows");
    lora_group_size_invariant();
}

/* Runs rows [p0, p1) of toks for slot in one batch; the last row's logits into lg. */
static int run_chunk(core_ctx *c, core_kv *kv, const int32_t *toks, int slot, int p0, int p1,
                     float *lg)
{
    int32_t pos[64], sl[64];
    uint8_t want[64] = {0};
    int n = p1 - p0;
    for (int i = 0; i < n; i++) {
        pos[i] = p0 + i;
        sl[i] = slot;
    }
    want[n - 1] = 1;
    core_batch b = {.n_rows = n, .tokens = toks + p0, .pos = pos, .slot = sl, .want_logits = want};
    char err[256];
    return core_forward(c, kv, &b, NULL, lg, err, sizeof err);
}

/* Paged KV: where the blocks are does not change a bit, a slot that starts from another's blocks
 * (a cached prefix) gets the bits of recomputing them, and its writes into a shared partial
 * block go to a copy, leaving the owner's logits unchanged. */
TEST(forward_paged_kv_layout_and_sharing_keep_the_bits)
{
    core_model *m = tiny_model(5);
    enum { T = 40 };
    int32_t toks[T];
    for (int i = 0; i < T; i++)
        toks[i] = (i * 37 + 11) % m->cfg.n_vocab;
    size_t nv = (size_t)m->cfg.n_vocab;
    float *ref = malloc(nv * sizeof(float)), *lg = malloc(nv * sizeof(float));
    char err[256];
    core_ctx *c = core_ctx_new(m);
    /* reference: slot 0 alone in a fresh pool, 32 rows then 8 */
    core_kv *kv = core_kv_new(&m->cfg, 4, 64, err, sizeof err);
    CHECK(run_chunk(c, kv, toks, 0, 0, 32, ref) == 0);
    CHECK(run_chunk(c, kv, toks, 0, 32, 40, ref) == 0);
    /* fragmented: slots 1 and 2 interleave their blocks, slot 1 gets every other block */
    core_kv *kv2 = core_kv_new(&m->cfg, 4, 64, err, sizeof err);
    for (int p = 16; p <= 48; p += 16) {
        CHECK(core_kv_reserve(kv2, 2, p) == 0);
        CHECK(core_kv_reserve(kv2, 1, p) == 0);
    }
    const int32_t *ids;
    CHECK(core_kv_slot_blocks(kv2, 1, &ids) == 3 && ids[0] == 1 && ids[1] == 3);
    CHECK(run_chunk(c, kv2, toks, 1, 0, 32, lg) == 0);
    CHECK(run_chunk(c, kv2, toks, 1, 32, 40, lg) == 0);
    CHECK(memcmp(lg, ref, nv * sizeof(float)) == 0);
    /* slot 3 starts from slot 0's two full blocks and computes the last 8 rows */
    CHECK(core_kv_slot_blocks(kv, 0, &ids) == 3);
    CHECK(core_kv_share(kv, 3, ids, 2, 32) == 0);
    CHECK(run_chunk(c, kv, toks, 3, 32, 40, lg) == 0);
    CHECK(memcmp(lg, ref, nv * sizeof(float)) == 0);
    core_kv_clear(kv, 3);
    /* slot 3 takes all three blocks at 39 positions and recomputes position 39: a copy of the
     * third block; slot 0's block and its next step are untouched */
    CHECK(core_kv_share(kv, 3, ids, 3, 39) == 0);
    int32_t third = ids[2];
    size_t bb = core_kv_block_bytes(kv);
    char *before = malloc(bb), *after = malloc(bb);
    core__kv_block_read(kv, third, before);
    CHECK(run_chunk(c, kv, toks, 3, 39, 40, lg) == 0);
    core__kv_block_read(kv, third, after);
    CHECK(memcmp(after, before, bb) == 0);
    const int32_t *ids3;
    CHECK(core_kv_slot_blocks(kv, 3, &ids3) == 3 && ids3[2] != third && ids3[1] == ids[1]);
    double worst = 0; /* one row alone against the last row of an 8-row batch */
    for (size_t v = 0; v < nv; v++)
        worst = fmax(worst, fabs((double)lg[v] - ref[v]));
    printf("    position 39 recomputed on a copied block vs in its 8-row chunk: %.3g (tol 1e-4)\n",
           worst);
    CHECK(worst <= 1e-4);
    free(before);
    free(after);
    free(ref);
    free(lg);
    core_kv_free(kv);
    core_kv_free(kv2);
    core_ctx_free(c);
    core_model_free(m);
}
