/* Phi-3 against Hugging Face transformers (Phi3ForCausalLM) and PEFT, on the tiny random-weight
 * model of `make tiny` (tools/make_tiny_models.py, family "phi3": Phi-3's real vocabulary of
 * 32064 tokens, llama.cpp's phi3 layout with fused attn_qkv and ffn_up, GQA 4/2, Q8_0 matrices,
 * untied head, a sliding window of 16 positions that the 36-token prompt runs past). For the base
 * and with the family's PEFT adapter (qkv_proj, o_proj, gate_up_proj, down_proj, loaded through
 * a registry as the server does): the top-20 logits at every position and every 16th logit of
 * the vocabulary at the last one within 1e-3 max-abs, and the 8-token greedy continuation
 * (through the KV cache) identical. Fixtures: tests/reference/make_tiny_fixtures.py
 * (tests/golden/fixtures/tiny.json). A missing model fails (run make tiny); a model that differs
 * from the fixtures' shows as a difference in every logit. */
#include <cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "adapters/registry.h"
#include "core/format/types.h"
#include "core/model/model.h"
#include "tests/test.h"

#define FIX "tests/golden/fixtures/"
#define MODEL "models/tiny/phi3.gguf"
#define TOL 1e-3
#define MAX_IDS 256

static int ids_of(const cJSON *a, int32_t *out, int cap)
{
    int n = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, a)
    {
        if (n < cap)
            out[n++] = (int32_t)it->valuedouble;
    }
    return n;
}

static int argmax(const float *r, int nv)
{
    int best = 0;
    for (int v = 1; v < nv; v++)
        best = r[v] > r[best] ? v : best;
    return best;
}

/* One forward step of n rows at positions pos0.. of slot 0, every row's logits into lg, with set
 * (NULL: the base). 0, or -1 with the message printed. */
static int step(const core_model *m, core_ctx *c, core_kv *kv, adapter_plan *p,
                const adapter_set *set, const int32_t *ids, int n, int pos0, float *lg)
{
    int32_t pos[MAX_IDS], slot[MAX_IDS] = {0};
    const adapter_set *sets[MAX_IDS];
    for (int i = 0; i < n; i++) {
        pos[i] = pos0 + i;
        sets[i] = set;
    }
    const core_lora_plan *plan = NULL;
    char err[256] = "out of memory";
    core_batch b = {.n_rows = n, .tokens = ids, .pos = pos, .slot = slot};
    int rc = adapter_plan_build(p, m->cfg.n_layer, n, sets, &plan);
    if (!rc)
        rc = core_forward(c, kv, &b, plan, lg, err, sizeof err);
    if (rc)
        printf("    forward: %s\n", err);
    return rc ? -1 : 0;
}

typedef struct diffs {
    double top, last;
    int greedy_same, greedy_n;
} diffs;

/* The prompt's top-20 at every position and the sampled last position against r (the fixture's
 * "base" or "lora" record), then the greedy continuation one token per step. -1 on a broken
 * fixture or run. */
static int compare(const core_model *m, const adapter_set *set, const int32_t *ids, int n,
                   int stride, const cJSON *r, diffs *d)
{
    int nv = m->cfg.n_vocab, rc = -1, n_ref = (nv + stride - 1) / stride;
    char err[256], path[256];
    int32_t want[MAX_IDS];
    int n_greedy =
        ids_of(cJSON_GetObjectItem(cJSON_GetObjectItem(r, "greedy"), "ids"), want, MAX_IDS);
    core_ctx *c = core_ctx_new(m);
    core_kv *kv = core_kv_new(&m->cfg, 1, n + n_greedy + 1, err, sizeof err);
    adapter_plan *p = adapter_plan_new();
    float *lg = malloc(sizeof(float) * (size_t)n * nv);
    snprintf(path, sizeof path, FIX "%s",
             cJSON_GetStringValue(cJSON_GetObjectItem(r, "last_logits_file")));
    size_t len = 0;
    float *ref = (float *)test_read_file(path, &len);
    memset(d, 0, sizeof *d);
    if (!c || !kv || !p || !lg || !ref || len != sizeof(float) * (size_t)n_ref || n_greedy <= 0) {
        printf("    bad fixture or out of memory (%s: %zu bytes, %d greedy ids)\n", path, len,
               n_greedy);
        goto out;
    }
    if (step(m, c, kv, p, set, ids, n, 0, lg))
        goto out;
    int t = 0;
    const cJSON *top, *pair;
    cJSON_ArrayForEach(top, cJSON_GetObjectItem(r, "top20"))
    {
        if (t >= n)
            break;
        cJSON_ArrayForEach(pair, top)
        {
            int id = (int)cJSON_GetArrayItem(pair, 0)->valuedouble;
            double x = fabs(lg[(size_t)t * nv + id] - cJSON_GetArrayItem(pair, 1)->valuedouble);
            d->top = fmax(d->top, x);
        }
        t++;
    }
    if (t != n) {
        printf("    %d top-20 rows for %d positions\n", t, n);
        goto out;
    }
    const float *last = lg + (size_t)(n - 1) * nv;
    for (int v = 0; v < n_ref; v++)
        d->last = fmax(d->last, fabs(last[(size_t)v * stride] - ref[v]));
    int32_t tok = argmax(last, nv);
    d->greedy_n = n_greedy;
    for (int s = 0; s < n_greedy; s++) {
        if (tok == want[s])
            d->greedy_same++;
        else
            printf("    greedy step %d: %d, transformers %d\n", s, tok, want[s]);
        if (s + 1 < n_greedy) {
            if (step(m, c, kv, p, set, &tok, 1, n + s, lg))
                goto out;
            tok = argmax(lg, nv);
        }
    }
    rc = 0;
out:
    free(ref);
    free(lg);
    adapter_plan_free(p);
    core_kv_free(kv);
    core_ctx_free(c);
    return rc;
}

/* tests/golden/fixtures/tiny/phi3/adapter through a registry rooted at its directory. */
static adapter_set *phi3_adapter(uv_loop_t *loop, adapter_registry **reg, const core_model *m)
{
    char err[256];
    adapter_registry_opts o = {
        .root = FIX "tiny/phi3", .cfg = &m->cfg, .loop = loop, .rescan_ms = -1};
    *reg = adapter_registry_new(&o, err, sizeof err);
    if (!*reg) {
        printf("    registry: %s\n", err);
        return NULL;
    }
    adapter_sel_item it = {.id = "adapter", .weight = 1.0f};
    adapter_selection sel;
    adapter_set *set = NULL;
    if (adapter_registry_resolve(*reg, NULL, &it, 1, &sel, err, sizeof err) ||
        adapter_registry_acquire_wait(*reg, &sel, &set, err, sizeof err))
        printf("    adapter: %s\n", err);
    return set;
}

TEST(tiny_phi3_matches_transformers)
{
    char *s = test_read_file(FIX "tiny.json", NULL);
    cJSON *root = s ? cJSON_Parse(s) : NULL;
    free(s);
    const cJSON *fam = cJSON_GetObjectItem(cJSON_GetObjectItem(root, "families"), "phi3");
    if (!fam) {
        cJSON_Delete(root);
        CHECK_MSG(0, "no family 'phi3' in " FIX "tiny.json");
    }
    char err[256] = MODEL " is missing (run make tiny)";
    core_model *m = access(MODEL, R_OK) == 0 ? core_model_load(MODEL, err, sizeof err) : NULL;
    if (!m) {
        cJSON_Delete(root);
        CHECK_MSG(0, "%s", err);
    }
    const core_config *c = &m->cfg;
    printf("    %s: %d layers, n_embd %d, %d/%d heads of %d, n_ff %d, vocab %d, %s attn_qkv, "
           "window %d\n",
           c->arch, c->n_layer, c->n_embd, c->n_head, c->n_head_kv, c->head_dim, c->n_ff,
           c->n_vocab, core_type_name(m->layers[0].w[CORE_MOD_K].type), c->sliding_window);
    /* what the model is for: the fused layout, GQA, a quantized type, the window, untied */
    int features = c->kind == CORE_ARCH_PHI3 && c->n_head_kv < c->n_head &&
                   m->layers[0].w[CORE_MOD_K].type == CORE_TYPE_Q8_0 && c->sliding_window > 0 &&
                   !c->tied_output && c->n_vocab == 32064;
    uv_loop_t loop;
    uv_loop_init(&loop);
    adapter_registry *reg = NULL;
    adapter_set *set = phi3_adapter(&loop, &reg, m);
    int stride = cJSON_GetObjectItem(root, "stride")->valueint, ok = set != NULL, n_cmp = 0;
    double worst[2] = {0, 0};
    const cJSON *pr;
    cJSON_ArrayForEach(pr, cJSON_GetObjectItem(fam, "prompts"))
    {
        int32_t ids[MAX_IDS];
        int n = ids_of(cJSON_GetObjectItem(pr, "ids"), ids, MAX_IDS);
        const char *pname = cJSON_GetStringValue(cJSON_GetObjectItem(pr, "name"));
        for (int k = 0; ok && k < 2; k++) {
            const cJSON *r = cJSON_GetObjectItem(pr, k ? "lora" : "base");
            diffs d;
            if (!r || n <= 0 || n > MAX_IDS - 16 ||
                compare(m, k ? set : NULL, ids, n, stride, r, &d)) {
                printf("    phi3 %s: cannot compare\n", pname);
                ok = 0;
                break;
            }
            printf("    phi3 %-8s %-7s %2d tokens: top-20 max |diff| %.3g, every %dth logit at "
                   "the last position %.3g, greedy %d/%d\n",
                   pname, k ? "adapter" : "base", n, d.top, stride, d.last, d.greedy_same,
                   d.greedy_n);
            worst[k] = fmax(worst[k], fmax(d.top, d.last));
            ok = ok && d.top <= TOL && d.last <= TOL && d.greedy_same == d.greedy_n;
            n_cmp++;
        }
    }
    printf("    phi3 (Phi3ForCausalLM): base max |diff| %.3g, with the adapter %.3g, tol %g\n",
           worst[0], worst[1], TOL);
    adapter_set_free(set);
    adapter_registry_free(reg);
    uv_loop_close(&loop);
    core_model_free(m);
    cJSON_Delete(root);
    CHECK_MSG(features, MODEL " does not have the features its test is for");
    CHECK_MSG(ok && n_cmp == 4, "phi3 differs from transformers/PEFT (or could not compare)");
}
