/* Adapters against Hugging Face PEFT (fp32 model, the same dequantized base): single adapters of
 * several ranks, targets and options, the stacked tree chain, a weighted list, a mixed batch
 * (PEFT adapter_names) and llama.cpp's GGUF-LoRA conversion of one of them. Logits within 1e-3
 * max-abs (docs/ARCHITECTURE.md §6). Fixtures: tests/reference/make_adapter_fixtures.py. */
#include <cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "adapters/registry.h"
#include "core/model/model.h"
#include "tests/shared_model.h"
#include "tests/test.h"

#define FIX "tests/golden/fixtures/"
#define TOL 1e-3

typedef struct golden {
    cJSON *j;
    uv_loop_t loop;
    adapter_registry *reg;
} golden;

static int golden_open(golden *g, core_model *m)
{
    char err[256];
    char *s = test_read_file(FIX "adapters.json", NULL);
    g->j = s ? cJSON_Parse(s) : NULL;
    free(s);
    if (!g->j)
        return -1;
    uv_loop_init(&g->loop);
    adapter_registry_opts o = {
        .root = FIX "adapters", .cfg = &m->cfg, .loop = &g->loop, .rescan_ms = -1};
    g->reg = adapter_registry_new(&o, err, sizeof err);
    if (!g->reg)
        printf("    registry: %s\n", err);
    return g->reg ? 0 : -1;
}

static void golden_close(golden *g)
{
    adapter_registry_free(g->reg);
    uv_loop_close(&g->loop);
    cJSON_Delete(g->j);
}

/* The set a case's "adapters.list" describes (explicit nodes and scales). */
static adapter_set *case_set(golden *g, const cJSON *list)
{
    adapter_sel_item items[ADAPTER_SEL_MAX];
    int n = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, list)
    {
        snprintf(items[n].id, sizeof items[n].id, "%s", cJSON_GetObjectItem(it, "id")->valuestring);
        items[n].weight = (float)cJSON_GetObjectItem(it, "scale")->valuedouble;
        n++;
    }
    adapter_selection sel;
    adapter_set *set = NULL;
    char err[256];
    if (adapter_registry_resolve(g->reg, NULL, items, n, &sel, err, sizeof err) ||
        adapter_registry_acquire_wait(g->reg, &sel, &set, err, sizeof err))
        printf("    %s\n", err);
    return set;
}

/* Runs n_seq sequences (ids[s], n tokens each) in one batch, rows interleaved, each with its
 * set, and returns logits for every row in (seq, position) order. */
static float *run_batch(core_model *m, int n_seq, const int32_t *const *ids, int n,
                        const adapter_set *const *sets)
{
    char err[256];
    int rows = n_seq * n, nv = m->cfg.n_vocab;
    int32_t *tok = malloc(sizeof(int32_t) * rows), *pos = malloc(sizeof(int32_t) * rows),
            *slot = malloc(sizeof(int32_t) * rows);
    const adapter_set **rs = malloc(sizeof(*rs) * rows);
    for (int i = 0; i < n; i++)
        for (int s = 0; s < n_seq; s++) {
            int r = i * n_seq + s;
            tok[r] = ids[s][i];
            pos[r] = i;
            slot[r] = s;
            rs[r] = sets[s];
        }
    core_ctx *c = core_ctx_new(m);
    core_kv *kv = core_kv_new(&m->cfg, n_seq, 256, err, sizeof err);
    adapter_plan *p = adapter_plan_new();
    const core_lora_plan *plan = NULL;
    float *lg = malloc(sizeof(float) * (size_t)rows * nv);
    float *out = malloc(sizeof(float) * (size_t)rows * nv);
    core_batch b = {.n_rows = rows, .tokens = tok, .pos = pos, .slot = slot};
    int rc = adapter_plan_build(p, m->cfg.n_layer, rows, rs, &plan);
    if (!rc)
        rc = core_forward(c, kv, &b, plan, lg, err, sizeof err);
    if (rc) {
        printf("    forward: %s\n", err);
        free(out);
        out = NULL;
    }
    for (int r = 0; out && r < rows; r++)
        memcpy(out + ((size_t)slot[r] * n + pos[r]) * nv, lg + (size_t)r * nv, sizeof(float) * nv);
    free(lg);
    adapter_plan_free(p);
    core_kv_free(kv);
    core_ctx_free(c);
    free(rs);
    free(tok);
    free(pos);
    free(slot);
    return out;
}

/* Max |ours - theirs| over a top20 list of every position. */
static double top20_diff(const float *lg, int nv, const cJSON *top20)
{
    double worst = 0;
    int t = 0;
    const cJSON *pos, *pair;
    cJSON_ArrayForEach(pos, top20)
    {
        cJSON_ArrayForEach(pair, pos)
        {
            int id = (int)cJSON_GetArrayItem(pair, 0)->valuedouble;
            double d = fabs(lg[(size_t)t * nv + id] - cJSON_GetArrayItem(pair, 1)->valuedouble);
            worst = d > worst ? d : worst;
        }
        t++;
    }
    return worst;
}

static double full_diff(const float *row, int nv, const char *file)
{
    char path[256];
    size_t len = 0;
    snprintf(path, sizeof path, FIX "%s", file);
    float *ref = (float *)test_read_file(path, &len);
    double worst = len == sizeof(float) * nv ? 0 : INFINITY;
    for (int v = 0; ref && v < nv && len == sizeof(float) * nv; v++) {
        double d = fabs(row[v] - ref[v]);
        worst = d > worst ? d : worst;
    }
    free(ref);
    return ref ? worst : INFINITY;
}

TEST(golden_adapters_match_peft)
{
    TEST_NEED_MODEL();
    core_model *m = test_shared_model();
    CHECK(m != NULL);
    golden g;
    CHECK(golden_open(&g, m) == 0);
    int nv = m->cfg.n_vocab, n_cases = 0;
    double worst_all = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(g.j, "cases"))
    {
        const char *name = cJSON_GetObjectItem(c, "name")->valuestring;
        const cJSON *list = cJSON_GetObjectItem(cJSON_GetObjectItem(c, "adapters"), "list");
        if (!list || cJSON_GetObjectItem(c, "sequences"))
            continue;
        int32_t ids[64];
        int n = test_json_ids(cJSON_GetObjectItem(c, "ids"), ids, 64);
        CHECK_MSG(n > 0, "%s: no usable ids in the fixture", name);
        adapter_set *set = case_set(&g, list);
        CHECK_MSG(set, "%s: cannot build the adapter set", name);
        const int32_t *pid = ids;
        const adapter_set *sets[1] = {set};
        float *lg = run_batch(m, 1, &pid, n, sets);
        CHECK(lg != NULL);
        double d = top20_diff(lg, nv, cJSON_GetObjectItem(c, "top20"));
        const cJSON *file = cJSON_GetObjectItem(c, "last_logits_file");
        double df =
            cJSON_IsString(file) ? full_diff(lg + (size_t)(n - 1) * nv, nv, file->valuestring) : 0;
        printf("    %-40s top-20 max |diff| %.3g%s", name, d, cJSON_IsString(file) ? "," : "\n");
        if (cJSON_IsString(file))
            printf(" all logits at the last position %.3g\n", df);
        printf("    %-40s (the adapters move logits by up to %.3g)\n", "",
               cJSON_GetObjectItem(c, "max_abs_delta_vs_base")->valuedouble);
        worst_all = fmax(worst_all, fmax(d, df));
        free(lg);
        adapter_set_free(set);
        n_cases++;
        CHECK_MSG(d <= TOL && df <= TOL, "%s: %g / %g", name, d, df);
    }
    golden_close(&g);
    printf("    %d cases, max |diff| %.3g (tol %g)\n", n_cases, worst_all, TOL);
    CHECK(n_cases >= 6);
}

TEST(golden_adapters_mixed_batch_matches_peft)
{
    TEST_NEED_MODEL();
    core_model *m = test_shared_model();
    CHECK(m != NULL);
    golden g;
    CHECK(golden_open(&g, m) == 0);
    const cJSON *c, *mixed = NULL;
    cJSON_ArrayForEach(
        c, cJSON_GetObjectItem(g.j, "cases")) if (cJSON_GetObjectItem(c, "sequences")) mixed = c;
    CHECK(mixed != NULL);
    int32_t ids[3][16];
    const int32_t *pids[3];
    adapter_set *sets[3] = {0};
    int n = 0, k = 0;
    const cJSON *seq;
    cJSON_ArrayForEach(seq, cJSON_GetObjectItem(mixed, "sequences"))
    {
        n = test_json_ids(cJSON_GetObjectItem(seq, "ids"), ids[k], 16);
        CHECK(n > 0);
        pids[k] = ids[k];
        const char *ad = cJSON_GetObjectItem(seq, "adapter")->valuestring;
        if (strcmp(ad, "__base__")) {
            cJSON *list = cJSON_Parse("[{\"id\":\"\",\"scale\":1}]");
            cJSON_SetValuestring(cJSON_GetObjectItem(cJSON_GetArrayItem(list, 0), "id"), ad);
            sets[k] = case_set(&g, list);
            cJSON_Delete(list);
            CHECK(sets[k] != NULL);
        }
        k++;
    }
    CHECK_EQ_INT(k, 3);
    float *lg = run_batch(m, 3, pids, n, (const adapter_set *const *)sets);
    CHECK(lg != NULL);
    double worst = 0;
    k = 0;
    cJSON_ArrayForEach(seq, cJSON_GetObjectItem(mixed, "sequences"))
    {
        double d = top20_diff(lg + (size_t)k * n * m->cfg.n_vocab, m->cfg.n_vocab,
                              cJSON_GetObjectItem(seq, "top20"));
        printf("    sequence %d (%s): top-20 max |diff| %.3g\n", k,
               cJSON_GetObjectItem(seq, "adapter")->valuestring, d);
        worst = fmax(worst, d);
        adapter_set_free(sets[k]);
        k++;
    }
    free(lg);
    golden_close(&g);
    CHECK(worst <= TOL);
}

TEST(golden_gguf_lora_matches_peft)
{
    TEST_NEED_MODEL();
    core_model *m = test_shared_model();
    CHECK(m != NULL);
    golden g;
    CHECK(golden_open(&g, m) == 0);
    char err[512];
    adapter *a = adapter_load(FIX "adapters/qv_r4.gguf", &m->cfg, err, sizeof err);
    CHECK_MSG(a, "%s", err);
    CHECK_EQ_INT(a->format, ADAPTER_GGUF);
    CHECK_EQ_INT(a->n_mods, 60);
    adapter_set_item it = {a, 1.0f};
    adapter_set *set = adapter_set_new(&it, 1);
    adapter_unref(a);
    const cJSON *c, *want = NULL;
    cJSON_ArrayForEach(
        c,
        cJSON_GetObjectItem(g.j, "cases")) if (!strcmp(cJSON_GetObjectItem(c, "name")->valuestring,
                                                       "single_qv_r4")) want = c;
    CHECK(want != NULL);
    int32_t ids[64];
    int n = test_json_ids(cJSON_GetObjectItem(want, "ids"), ids, 64);
    CHECK(n > 0);
    const int32_t *pid = ids;
    const adapter_set *sets[1] = {set};
    float *lg = run_batch(m, 1, &pid, n, sets);
    CHECK(lg != NULL);
    double d = top20_diff(lg, m->cfg.n_vocab, cJSON_GetObjectItem(want, "top20"));
    double df = full_diff(lg + (size_t)(n - 1) * m->cfg.n_vocab, m->cfg.n_vocab,
                          cJSON_GetObjectItem(want, "last_logits_file")->valuestring);
    printf("    llama.cpp GGUF-LoRA of qv_r4 vs PEFT: top-20 max |diff| %.3g, last position %.3g "
           "(tol %g)\n",
           d, df, TOL);
    free(lg);
    adapter_set_free(set);
    golden_close(&g);
    CHECK(d <= TOL && df <= TOL);
}
