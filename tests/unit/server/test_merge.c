/* Tests for `adaptree merge` (server/cli_merge.c) on the real model and the PEFT fixtures: the
 * merged file's logits against the unmerged stack (core_forward with a LoRA plan), every merged
 * weight against W + Σ weight·scale·B·A computed in double, every other tensor byte for byte
 * against the base, the metadata, and the refusals (unknown id, nothing selected, unwritable
 * output, the base as output, bad command lines). Merged files live under /tmp and are removed.
 *
 * Tolerances. f32: 1e-4 max-abs on logits up to ~30. The merged and unmerged forms differ only
 * in f32 rounding (W x + s B (A x) against (W + s B A) x), which is the same order as the noise of
 * the forward pass itself: the unmerged stack run row by row instead of in one step already moves
 * the logits by 6e-5..1.3e-4 (printed), so 1e-4 is as tight as f32 allows. f16: f16 keeps 11
 * significant bits, so rounding moves each merged weight by at most 2^-11 of its magnitude (checked
 * per weight; up to 1.9e-3 on the largest weights, ~4). That is the only difference from the f32
 * merge; through 30 layers it moves the logits by ~2e-2 (measured, printed), so the bound is 0.1
 * max-abs with the same greedy token at every position. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "adapters/compose.h"
#include "core/format/gguf.h"
#include "core/format/types.h"
#include "core/model/model.h"
#include "server/cli.h"
#include "server/cli_select.h"
#include "tests/shared_model.h"
#include "tests/test.h"
#include "tests/unit/adapters/adapter_testutil.h"

#define FIX "tests/golden/fixtures/adapters"
#define N_PROMPT 12
/* Merged f32 weights (sgemm) against the quantized base plus unmerged LoRA: the same sums in
 * other orders, through 30 layers. Measured 5.5e-5 (chain) and 5.2e-5 / 1.01e-4 (regex_gate_up
 * at -1, whose logits move by 15) with the AVX2 / AVX-512 attention: the rounding is amplified
 * where the adapters push the logits far, so the bound is twice the larger. */
#define TOL_F32 2e-4
#define TOL_F16 1e-1

/* "The capital of France is Paris" + "Le chat est assis sur" (adapters.json prompts). */
static const int32_t prompt[N_PROMPT] = {504,  3575,  282,  4649, 314, 7042,
                                         7026, 11743, 1264, 757,  271, 838};

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static uint64_t file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
}

/* A selection on the fixture registry: the chain of select (may be NULL) plus "ID[:S]" items. */
static int sel_init(srv_cli_sel *s, const char *select, const char *const *items, int n)
{
    memset(s, 0, sizeof *s);
    if (srv_cli_sel_arg(s, "--registry", FIX) != 1)
        return -1;
    if (select && srv_cli_sel_arg(s, "--select", select) != 1)
        return -1;
    for (int i = 0; i < n; i++)
        if (srv_cli_sel_arg(s, "--adapter", items[i]) != 1)
            return -1;
    return 0;
}

/* Logits of every prompt position (N_PROMPT, n_vocab), with set applied to every row (or not),
 * computed chunk rows per forward step. NULL on failure, with the reason printed. */
static float *logits_of(const core_model *m, const adapter_set *set, int chunk)
{
    char err[256] = "";
    int32_t pos[N_PROMPT], slot[N_PROMPT] = {0};
    const adapter_set *sets[N_PROMPT];
    for (int i = 0; i < N_PROMPT; i++) {
        pos[i] = i;
        sets[i] = set;
    }
    core_ctx *ctx = core_ctx_new(m);
    core_kv *kv = core_kv_new(&m->cfg, 1, 64, err, sizeof err);
    adapter_plan *plan = adapter_plan_new();
    float *lg = malloc(sizeof(float) * N_PROMPT * (size_t)m->cfg.n_vocab);
    const core_lora_plan *lp = NULL;
    int rc = ctx && kv && plan && lg ? 0 : -ENOMEM;
    for (int at = 0; rc == 0 && at < N_PROMPT; at += chunk) {
        int n = N_PROMPT - at < chunk ? N_PROMPT - at : chunk;
        core_batch b = {.n_rows = n, .tokens = prompt + at, .pos = pos + at, .slot = slot};
        if (set)
            rc = adapter_plan_build(plan, m->cfg.n_layer, n, sets, &lp);
        if (rc == 0)
            rc = core_forward(ctx, kv, &b, lp, lg + (size_t)at * m->cfg.n_vocab, err, sizeof err);
    }
    if (rc) {
        printf("    forward: %d %s\n", rc, err);
        free(lg);
        lg = NULL;
    }
    adapter_plan_free(plan);
    core_kv_free(kv);
    core_ctx_free(ctx);
    return lg;
}

static int argmax(const float *v, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best])
            best = i;
    return best;
}

/* Max-abs difference of two logit sets; *same_top1 = greedy tokens equal at every position. */
static double logit_diff(const float *a, const float *b, int nv, int *same_top1)
{
    double worst = 0;
    *same_top1 = 1;
    for (int r = 0; r < N_PROMPT; r++) {
        const float *x = a + (size_t)r * nv, *y = b + (size_t)r * nv;
        for (int v = 0; v < nv; v++) {
            double d = fabs((double)x[v] - (double)y[v]);
            worst = d > worst ? d : worst;
        }
        *same_top1 &= argmax(x, nv) == argmax(y, nv);
    }
    return worst;
}

/* An adapter matrix element as double. */
static double elem(uint32_t dtype, const void *p, size_t i)
{
    if (dtype == CORE_TYPE_F32)
        return ((const float *)p)[i];
    uint16_t h = ((const uint16_t *)p)[i];
    return dtype == CORE_TYPE_F16 ? core_fp16_to_fp32(h) : core_bf16_to_fp32(h);
}

/* A merged file's value as f32 (type f32 or f16). */
static double merged_at(const core_gguf_tensor *t, size_t i)
{
    if (t->type == CORE_TYPE_F32) {
        float f;
        memcpy(&f, (const uint8_t *)t->data + 4 * i, 4);
        return f;
    }
    uint16_t h;
    memcpy(&h, (const uint8_t *)t->data + 2 * i, 2);
    return core_fp16_to_fp32(h);
}

typedef struct check {
    int n_merged;
    double max_abs;    /* max |merged - reference| over every merged weight */
    double max_excess; /* max |merged - reference| - allowed, <= 0 when all are within bounds */
    char why[512];
} check;

/* Reference W + Σ weight·scale·B·A (B = Btᵀ) for one row o of (layer, module), in double, into ref
 * (in), and the sum of the magnitudes of its terms into mag (in), which bounds f32 rounding. */
static void reference_row(const core_model *m, const adapter_set *set, int l, int mod, int o,
                          double *ref, double *mag)
{
    int in = core_module_in(&m->cfg, mod);
    const float *W = m->layers[l].w[mod].f32 + (size_t)o * in;
    for (int i = 0; i < in; i++) {
        ref[i] = W[i];
        mag[i] = fabs((double)W[i]);
    }
    for (int k = 0; k < set->n; k++) {
        const adapter *a = set->items[k].a;
        const adapter_mod *am = adapter_mod_at(a, l, mod);
        double c = (double)set->items[k].weight * am->scale;
        for (int r = 0; r < am->rank; r++) {
            double bo = c * elem(a->dtype, am->Bt, (size_t)r * core_module_out(&m->cfg, mod) + o);
            for (int i = 0; i < in; i++) {
                double t = bo * elem(a->dtype, am->A, (size_t)r * in + i);
                ref[i] += t;
                mag[i] += fabs(t);
            }
        }
    }
}

static int touched_by(const adapter_set *set, int l, int mod)
{
    for (int k = 0; k < set->n; k++)
        if (adapter_mod_at(set->items[k].a, l, mod)->rank)
            return 1;
    return 0;
}

/* Compares the merged file g with the base: same tensors in the same order and shape; the ones
 * set touches in want_type and within rounding of the reference; all others byte-identical.
 * Rounding: f32 sums of at most 8 rank terms per adapter and one add per adapter stay within
 * 16 units of 2^-24 of the summed magnitudes; f16 adds its own rounding, at most 2^-11 of the
 * value (or half the subnormal step, 2^-25). */
static int check_tensors(const core_model *m, const core_gguf *g, const adapter_set *set,
                         uint32_t want_type, check *c)
{
    const core_gguf *b = m->gguf;
    memset(c, 0, sizeof *c);
    c->max_excess = -INFINITY;
    if (g->n_tensors != b->n_tensors) {
        snprintf(c->why, sizeof c->why, "%llu tensors, base has %llu",
                 (unsigned long long)g->n_tensors, (unsigned long long)b->n_tensors);
        return 0;
    }
    unsigned char *merged = calloc(b->n_tensors, 1);
    double *ref = calloc((size_t)m->cfg.n_ff, sizeof(double));
    double *mag = calloc((size_t)m->cfg.n_ff, sizeof(double));
    int ok = merged && ref && mag;
    for (int l = 0; ok && l < m->cfg.n_layer; l++) {
        for (int mod = 0; ok && mod < CORE_MOD_COUNT; mod++) {
            char name[96];
            snprintf(name, sizeof name, "blk.%d.%s.weight", l, core_module_gguf_name(mod));
            const core_gguf_tensor *t = core_gguf_find_tensor(g, name);
            if (!touched_by(set, l, mod))
                continue;
            if (!t || t->type != want_type) {
                snprintf(c->why, sizeof c->why, "%s: type %s, want %s", name,
                         t ? core_type_name(t->type) : "(missing)", core_type_name(want_type));
                ok = 0;
                break;
            }
            merged[core_gguf_find_tensor(b, name) - b->tensors] = 1;
            c->n_merged++;
            int in = core_module_in(&m->cfg, mod), out = core_module_out(&m->cfg, mod);
            for (int o = 0; o < out; o++) {
                reference_row(m, set, l, mod, o, ref, mag);
                for (int i = 0; i < in; i++) {
                    double x = merged_at(t, (size_t)o * in + i), d = fabs(x - ref[i]);
                    double allowed = 16 * 0x1p-24 * mag[i];
                    if (want_type == CORE_TYPE_F16)
                        allowed += fmax(0x1p-11 * (fabs(ref[i]) + allowed), 0x1p-25);
                    c->max_abs = fmax(c->max_abs, d);
                    c->max_excess = fmax(c->max_excess, d - allowed);
                }
            }
        }
    }
    for (uint64_t i = 0; ok && i < b->n_tensors; i++) {
        const core_gguf_tensor *x = &b->tensors[i], *y = &g->tensors[i];
        int same = x->name.len == y->name.len && !memcmp(x->name.ptr, y->name.ptr, x->name.len) &&
                   x->n_dims == y->n_dims && !memcmp(x->ne, y->ne, sizeof x->ne);
        if (same && !merged[i])
            same = x->type == y->type && x->size == y->size && !memcmp(x->data, y->data, x->size);
        if (!same) {
            snprintf(c->why, sizeof c->why, "tensor %llu (%.*s) differs from the base's",
                     (unsigned long long)i, (int)x->name.len, x->name.ptr);
            ok = 0;
        }
    }
    free(mag);
    free(ref);
    free(merged);
    return ok;
}

/* The base's keys, in order, with general.file_type = file_type, then the two merge keys. */
static int check_metadata(const core_gguf *b, const core_gguf *g, uint32_t file_type,
                          const char *const *ids, int n_ids, const char *outtype, char *why,
                          size_t cap)
{
    uint64_t extra = core_gguf_find(b, "general.file_type") ? 2 : 3;
    if (g->n_kv != b->n_kv + extra) {
        snprintf(why, cap, "%llu keys, want %llu", (unsigned long long)g->n_kv,
                 (unsigned long long)b->n_kv + extra);
        return 0;
    }
    for (uint64_t i = 0; i < b->n_kv; i++) {
        const core_gguf_kv *x = &b->kv[i], *y = &g->kv[i];
        int same = x->key.len == y->key.len && !memcmp(x->key.ptr, y->key.ptr, x->key.len) &&
                   x->type == y->type;
        if (same && core_gguf_str_eq(x->key, "general.file_type"))
            same = y->v.u == file_type;
        else if (same && x->type == CORE_GGUF_STRING)
            same = x->v.s.len == y->v.s.len && !memcmp(x->v.s.ptr, y->v.s.ptr, x->v.s.len);
        else if (same && x->type == CORE_GGUF_ARRAY)
            same = x->v.arr.type == y->v.arr.type && x->v.arr.n == y->v.arr.n &&
                   x->v.arr.bytes == y->v.arr.bytes &&
                   !memcmp(x->v.arr.data, y->v.arr.data, x->v.arr.bytes);
        else if (same)
            same = !memcmp(&x->v, &y->v, sizeof x->v.u);
        if (!same) {
            snprintf(why, cap, "key %llu (%.*s) differs", (unsigned long long)i, (int)x->key.len,
                     x->key.ptr);
            return 0;
        }
    }
    core_gguf_str *list = NULL;
    uint64_t n = 0;
    char ot[16] = "";
    int ok = core_gguf_get_str_array(g, "adaptree.merged.adapters", &list, &n) == 0 &&
             n == (uint64_t)n_ids &&
             core_gguf_get_str(g, "adaptree.merged.outtype", ot, sizeof ot) == 0 &&
             !strcmp(ot, outtype);
    for (uint64_t i = 0; ok && i < n; i++)
        ok = core_gguf_str_eq(list[i], ids[i]);
    if (!ok)
        snprintf(why, cap,
                 "adaptree.merged.* keys: %llu adapters (want %d, first '%.*s'), "
                 "outtype '%s'",
                 (unsigned long long)n, n_ids, n ? (int)list[0].len : 0, n ? list[0].ptr : "", ot);
    free(list);
    return ok;
}

typedef struct merge_case {
    const char *select;
    const char *const *items;
    int n_items;
    int outtype;
    const char *const *ids; /* adaptree.merged.adapters as expected */
    int n_ids;
    int n_merged;          /* weights the set touches, counted from the adapters' configs */
    const char *untouched; /* a tensor that must stay as stored */
} merge_case;

/* Merges the case into a temporary file and checks it against the unmerged stack. */
static void run_case(const merge_case *mc)
{
    TEST_NEED_MODEL();
    core_model *m = test_shared_model();
    CHECK(m);
    char out[256], err[512] = "", why[512] = "";
    /* the reference reads the base's f32 weights (forward keeps using the quantized ones) */
    CHECK_MSG(core_model_dequantize(m, err, sizeof err) == 0, "%s", err);
    const char *dir = tu_tmpdir();
    CHECK(dir);
    snprintf(out, sizeof out, "%s/merged.gguf", dir);
    int f16 = mc->outtype == SRV_MERGE_F16;

    srv_cli_sel sel, ref;
    int rc = sel_init(&sel, mc->select, mc->items, mc->n_items);
    if (rc == 0)
        rc = srv_merge(test_model_path(), &sel, out, mc->outtype, err, sizeof err);
    uint64_t size = file_size(out);
    core_model *mm = rc == 0 ? core_model_load(out, err, sizeof err) : NULL;
    int opened = sel_init(&ref, mc->select, mc->items, mc->n_items) == 0 &&
                 srv_cli_sel_open(&ref, &m->cfg, err, sizeof err) == 0;
    float *want = opened ? logits_of(m, ref.set, N_PROMPT) : NULL;
    float *want1 = opened ? logits_of(m, ref.set, 1) : NULL;
    float *plain = logits_of(m, NULL, N_PROMPT);
    float *got = mm ? logits_of(mm, NULL, N_PROMPT) : NULL;
    check c = {0};
    int tensors_ok = mm && opened &&
                     check_tensors(m, mm->gguf, ref.set, f16 ? CORE_TYPE_F16 : CORE_TYPE_F32, &c);
    int meta_ok = mm && check_metadata(m->gguf, mm->gguf, f16 ? 1 : 0, mc->ids, mc->n_ids,
                                       f16 ? "f16" : "f32", why, sizeof why);
    const core_gguf_tensor *ut = mm ? core_gguf_find_tensor(mm->gguf, mc->untouched) : NULL;
    const core_gguf_tensor *ub = core_gguf_find_tensor(m->gguf, mc->untouched);
    int untouched_ok = ut && ub && ut->type == ub->type && ut->size == ub->size &&
                       !memcmp(ut->data, ub->data, ub->size);
    int nv = m->cfg.n_vocab, top1 = 0, top1_base = 0;
    double d = want && got ? logit_diff(want, got, nv, &top1) : INFINITY;
    double d_base = want && plain ? logit_diff(want, plain, nv, &top1_base) : 0;
    /* f32's own noise: the same unmerged stack, one row per step instead of all at once. */
    double d_noise = want && want1 ? logit_diff(want, want1, nv, &top1_base) : 0;
    printf("    %s merge (%s): %llu bytes (base %llu); %d weights merged, max |w - ref| %.3g; "
           "logits max-abs vs unmerged %.3g (greedy %s), vs no adapters %.3g; unmerged in one "
           "step vs row by row %.3g\n",
           f16 ? "f16" : "f32", mc->select ? mc->select : mc->items[0], (unsigned long long)size,
           (unsigned long long)file_size(test_model_path()), c.n_merged, c.max_abs, d,
           top1 ? "same" : "DIFFERENT", d_base, d_noise);
    free(want);
    free(want1);
    free(plain);
    free(got);
    core_model_free(mm);
    srv_cli_sel_close(&ref);
    tu_rmrf(dir);
    CHECK_MSG(rc == 0, "merge: %d %s", rc, err);
    CHECK_MSG(mm && opened, "reload or selection failed: %s", err);
    CHECK_MSG(tensors_ok, "%s", c.why);
    CHECK_EQ_INT(c.n_merged, mc->n_merged);
    CHECK_MSG(c.max_excess <= 0, "a merged weight is off by %.3g beyond rounding (max %.3g)",
              c.max_excess, c.max_abs);
    CHECK_MSG(meta_ok, "%s", why);
    CHECK_MSG(untouched_ok, "%s is not the base's bytes", mc->untouched);
    /* The adapters must matter, or the comparison below proves nothing. */
    CHECK_MSG(d_base > 0.1, "the adapters move the logits by only %g", d_base);
    CHECK_MSG(top1, "greedy tokens differ between merged and unmerged");
    CHECK_MSG(d <= (f16 ? TOL_F16 : TOL_F32), "logits differ by %.3g (tolerance %g)", d,
              f16 ? TOL_F16 : TOL_F32);
}

/* The tree chain: fr (q,v in layers 0-14), fr/legal (o,gate in 10-29), fr/legal/alice (q,k,v
 * everywhere): q 30 + k 30 + v 30 + o 20 + gate 20 = 130 weights. Nothing touches ffn_up. */
static const char *const chain_ids[] = {"tree/fr:1", "tree/fr/legal:1", "tree/fr/legal/alice:1"};

TEST(merge_chain_f32_matches_unmerged)
{
    merge_case mc = {.select = "tree/fr/legal/alice",
                     .outtype = SRV_MERGE_F32,
                     .ids = chain_ids,
                     .n_ids = 3,
                     .n_merged = 130,
                     .untouched = "blk.0.ffn_gate.weight"};
    run_case(&mc);
}

TEST(merge_chain_f16_matches_unmerged)
{
    merge_case mc = {.select = "tree/fr/legal/alice",
                     .outtype = SRV_MERGE_F16,
                     .ids = chain_ids,
                     .n_ids = 3,
                     .n_merged = 130,
                     .untouched = "blk.5.ffn_up.weight"};
    run_case(&mc);
}

/* A weighted list over all three adapter dtypes: regex_gate_up (f32, used in place, first so no
 * conversion buffer exists yet; gate,up everywhere), qv_r4 (bf16; q,v everywhere),
 * all_rslora_r8 (f16, rsLoRA; all seven modules in layers 1, 7, 15, 28): 60 + 60 + 4 * 3 = 132
 * weights. blk.0.attn_k is q/v-only territory and stays Q4_1. */
TEST(merge_weighted_list_f32_matches_unmerged)
{
    static const char *const items[] = {"regex_gate_up:-1", "qv_r4:0.5", "all_rslora_r8:2"};
    merge_case mc = {.items = items,
                     .n_items = 3,
                     .outtype = SRV_MERGE_F32,
                     .ids = items,
                     .n_ids = 3,
                     .n_merged = 132,
                     .untouched = "blk.0.attn_k.weight"};
    run_case(&mc);
}

/* srv_merge refuses and leaves no file (nor a temporary one) behind. */
static int refused(const char *select, const char *item, const char *model, const char *out,
                   int want_rc, const char *want_msg, char *why, size_t cap)
{
    srv_cli_sel sel;
    char err[512] = "", tmp[300];
    int rc = sel_init(&sel, select, item ? &item : NULL, item ? 1 : 0);
    int existed = file_exists(out);
    if (rc == 0)
        rc = srv_merge(model, &sel, out, SRV_MERGE_F32, err, sizeof err);
    snprintf(tmp, sizeof tmp, "%s.tmp", out);
    int ok =
        rc == want_rc && strstr(err, want_msg) && file_exists(out) == existed && !file_exists(tmp);
    if (!ok)
        snprintf(why, cap, "select %s adapter %s -> %s: want %d \"%s\", got %d \"%s\"",
                 select ? select : "-", item ? item : "-", out, want_rc, want_msg, rc, err);
    else
        printf("    refused: %s\n", err);
    return ok;
}

TEST(merge_refuses_bad_requests)
{
    TEST_NEED_MODEL();
    const char *dir = tu_tmpdir();
    CHECK(dir);
    char out[256], why[700] = "";
    snprintf(out, sizeof out, "%s/merged.gguf", dir);
    const char *model = test_model_path();
    int ok =
        refused("tree/fr/nobody", NULL, model, out, -EINVAL, "unknown adapter", why, sizeof why) &&
        refused(NULL, "no_such_adapter:2", model, out, -EINVAL, "unknown adapter", why,
                sizeof why) &&
        refused("tree", NULL, model, out, -EINVAL, "applies no adapter", why, sizeof why) &&
        refused(NULL, NULL, model, out, -EINVAL, "no adapter selected", why, sizeof why) &&
        refused(NULL, "qv_r4", model, "/nonexistent-adaptree-dir/m.gguf", -ENOENT,
                "cannot create /nonexistent-adaptree-dir/m.gguf.tmp", why, sizeof why) &&
        refused(NULL, "qv_r4", model, model, -EINVAL, "is the base model itself", why,
                sizeof why) &&
        refused(NULL, "qv_r4", "/nonexistent-model.gguf", out, -EINVAL, "cannot load", why,
                sizeof why);
    tu_rmrf(dir);
    CHECK_MSG(ok, "%s", why);
    CHECK(file_exists(model));
}

/* The command line: usage errors exit 2, failures 1, --help 0. */
TEST(merge_cli_exit_codes)
{
    TEST_NEED_MODEL();
    struct {
        int want;
        const char *argv[12];
    } cases[] = {
        {0, {"merge", "--help"}},
        {2, {"merge", "--registry", FIX, "--select", "tree/fr"}},
        {2, {"merge", "-o", "/tmp/x.gguf"}},
        {2, {"merge", "-o", "/tmp/x.gguf", "--select", "tree/fr", "--outtype", "q4_1"}},
        {2, {"merge", "-o", "/tmp/x.gguf", "--select", "tree/fr", "--bogus", "1"}},
        {2, {"merge", "-o", "/tmp/x.gguf", "--adapter", ":3"}},
        {2, {"merge", "-o"}},
        {1,
         {"merge", "-m", test_model_path(), "--registry", FIX, "--select", "nope", "-o",
          "/nonexistent-adaptree-dir/x.gguf"}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int argc = 0;
        while (cases[i].argv[argc])
            argc++;
        int rc = srv_cli_merge(argc, (char **)cases[i].argv);
        CHECK_MSG(rc == cases[i].want, "case %zu (%s %s): exit %d, want %d", i, cases[i].argv[1],
                  argc > 2 ? cases[i].argv[2] : "", rc, cases[i].want);
    }
}
