/* Every architecture family against Hugging Face transformers and PEFT, on the tiny random-weight
 * models of `make tiny` (tools/make_tiny_models.py: real vocabularies, llama.cpp's tensor
 * layout): Llama 3 (rope_freqs), Mistral (Q8_0), Qwen2 (q/k/v biases), Qwen3 (q/k norms), Phi-3
 * (fused attn_qkv and ffn_up, a sliding window the long prompt runs past, its adapter on the
 * fused Linears qkv_proj and gate_up_proj). Per
 * family: the file's sha256 is the fixture's, the top-20 logits at every position and every 16th
 * logit of the vocabulary at the last one within 1e-3 max-abs, 8-token greedy continuations
 * (through the KV cache) identical -- for the base and with the family's PEFT adapter loaded by
 * the registry. Fixtures: tests/reference/make_tiny_fixtures.py (tests/golden/fixtures/tiny.json).
 * A missing model fails (run make tiny). */
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "adapters/registry.h"
#include "core/format/gguf.h"
#include "core/format/types.h"
#include "core/model/model.h"
#include "tests/test.h"

#define FIX "tests/golden/fixtures/"
#define TOL 1e-3
#define MAX_IDS 256

static cJSON *family_fixture(cJSON **root, const char *name)
{
    char *s = test_read_file(FIX "tiny.json", NULL);
    *root = s ? cJSON_Parse(s) : NULL;
    free(s);
    return *root ? cJSON_GetObjectItem(cJSON_GetObjectItem(*root, "families"), name) : NULL;
}

/* models/tiny/<name>.gguf, checked against the fixture's sha256; NULL with why. */
static core_model *load_tiny(const char *name, const cJSON *fam, char *why, size_t len)
{
    char path[128], hex[65];
    snprintf(path, sizeof path, "models/tiny/%s.gguf", name);
    if (access(path, R_OK) != 0) {
        snprintf(why, len, "%s is missing (run make tiny)", path);
        return NULL;
    }
    size_t n = 0;
    char *bytes = test_read_file(path, &n);
    if (!bytes) {
        snprintf(why, len, "cannot read %s", path);
        return NULL;
    }
    test_sha256_hex(bytes, n, hex);
    free(bytes);
    const char *want = cJSON_GetStringValue(cJSON_GetObjectItem(fam, "model_sha256"));
    if (!want || strcmp(hex, want) != 0) {
        snprintf(why, len,
                 "%s has sha256 %s, the fixtures were made from %s: regenerate fixtures (make "
                 "tiny, then tests/reference/make_tiny_fixtures.py)",
                 path, hex, want ? want : "(none)");
        return NULL;
    }
    char err[256];
    core_model *m = core_model_load(path, err, sizeof err);
    if (!m)
        snprintf(why, len, "%s: %s", path, err);
    return m;
}

static int argmax(const float *r, int nv)
{
    int best = 0;
    for (int v = 1; v < nv; v++)
        best = r[v] > r[best] ? v : best;
    return best;
}

/* One forward step of n rows at positions pos0.. of slot 0 (every row's logits into lg), all rows
 * with set (NULL: the base). 0, or -1 with the message printed. */
static int step(core_model *m, core_ctx *c, core_kv *kv, adapter_plan *p, const adapter_set *set,
                const int32_t *ids, int n, int pos0, float *lg)
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

/* What one comparison measured. */
typedef struct diffs {
    double top, last;
    int greedy_same, greedy_n;
} diffs;

/* Runs a prompt (with set, or the base) and compares with the fixture's record r (its "base"
 * or "lora" object): top-20 at every position, the sampled last position, and the greedy
 * continuation decoded one token at a time through the cache. -1 on a broken fixture or run. */
static int compare(core_model *m, const adapter_set *set, const int32_t *ids, int n, int stride,
                   const cJSON *r, diffs *d)
{
    int nv = m->cfg.n_vocab, rc = -1;
    char err[256];
    int32_t want[MAX_IDS];
    int n_greedy =
        test_json_ids(cJSON_GetObjectItem(cJSON_GetObjectItem(r, "greedy"), "ids"), want, MAX_IDS);
    core_ctx *c = core_ctx_new(m);
    core_kv *kv = core_kv_new(&m->cfg, 1, n + n_greedy + 1, err, sizeof err);
    adapter_plan *p = adapter_plan_new();
    float *lg = malloc(sizeof(float) * (size_t)n * nv);
    char path[256];
    snprintf(path, sizeof path, FIX "%s",
             cJSON_GetStringValue(cJSON_GetObjectItem(r, "last_logits_file")));
    size_t len = 0;
    float *ref = (float *)test_read_file(path, &len);
    int n_ref = (nv + stride - 1) / stride;
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
            d->top = x > d->top ? x : d->top;
        }
        t++;
    }
    if (t != n) {
        printf("    %d top-20 rows for %d positions\n", t, n);
        goto out;
    }
    const float *last = lg + (size_t)(n - 1) * nv;
    for (int v = 0; v < n_ref; v++) {
        double x = fabs(last[(size_t)v * stride] - ref[v]);
        d->last = x > d->last ? x : d->last;
    }
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

/* The family's adapter (tests/golden/fixtures/tiny/<name>/adapter) through a registry rooted at
 * its directory, as the server loads adapters. */
static adapter_set *family_adapter(uv_loop_t *loop, adapter_registry **reg, const char *name,
                                   const core_model *m)
{
    char root[128], err[256];
    snprintf(root, sizeof root, FIX "tiny/%s", name);
    adapter_registry_opts o = {.root = root, .cfg = &m->cfg, .loop = loop, .rescan_ms = -1};
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

/* The whole comparison of one family; fails the test on any difference. */
static void check_family(const char *name)
{
    cJSON *root;
    const cJSON *fam = family_fixture(&root, name);
    if (!fam) {
        cJSON_Delete(root);
        test_fail(__FILE__, __LINE__, "%s: no family '%s' in " FIX "tiny.json", name, name);
        return;
    }
    char why[512];
    core_model *m = load_tiny(name, fam, why, sizeof why);
    if (!m) {
        cJSON_Delete(root);
        test_fail(__FILE__, __LINE__, "%s", why);
        return;
    }
    uv_loop_t loop;
    uv_loop_init(&loop);
    adapter_registry *reg = NULL;
    adapter_set *set = family_adapter(&loop, &reg, name, m);
    int stride = cJSON_GetObjectItem(root, "stride")->valueint, ok = set != NULL, n_cmp = 0;
    double worst[2] = {0, 0}, moved = 0;
    const cJSON *pr;
    cJSON_ArrayForEach(pr, cJSON_GetObjectItem(fam, "prompts"))
    {
        int32_t ids[MAX_IDS];
        int n = test_json_ids(cJSON_GetObjectItem(pr, "ids"), ids, MAX_IDS);
        const char *pname = cJSON_GetStringValue(cJSON_GetObjectItem(pr, "name"));
        for (int k = 0; ok && k < 2; k++) {
            const cJSON *r = cJSON_GetObjectItem(pr, k ? "lora" : "base");
            diffs d;
            if (!r || n <= 0 || n > MAX_IDS - 16 ||
                compare(m, k ? set : NULL, ids, n, stride, r, &d)) {
                printf("    %s %s: cannot compare\n", name, pname);
                ok = 0;
                break;
            }
            printf("    %-8s %-8s %-7s %2d tokens: top-20 max |diff| %.3g, every %dth logit at the "
                   "last position %.3g, greedy %d/%d\n",
                   name, pname, k ? "adapter" : "base", n, d.top, stride, d.last, d.greedy_same,
                   d.greedy_n);
            worst[k] = fmax(worst[k], fmax(d.top, d.last));
            ok = ok && d.top <= TOL && d.last <= TOL && d.greedy_same == d.greedy_n;
            if (k)
                moved = fmax(moved, cJSON_GetObjectItem(r, "max_abs_delta_vs_base")->valuedouble);
            n_cmp++;
        }
    }
    printf("    %s (%s): base max |diff| %.3g, with the adapter %.3g (it moves logits by up to "
           "%.3g), tol %g\n",
           name, cJSON_GetStringValue(cJSON_GetObjectItem(fam, "hf_class")), worst[0], worst[1],
           moved, TOL);
    adapter_set_free(set);
    adapter_registry_free(reg);
    uv_loop_close(&loop);
    core_model_free(m);
    cJSON_Delete(root);
    CHECK_MSG(ok && n_cmp >= 4, "%s: differs from transformers/PEFT (or could not compare)", name);
}

TEST(tiny_llama3_matches_transformers)
{
    check_family("llama3");
}

TEST(tiny_mistral_matches_transformers)
{
    check_family("mistral");
}

TEST(tiny_qwen2_matches_transformers)
{
    check_family("qwen2");
}

TEST(tiny_qwen3_matches_transformers)
{
    check_family("qwen3");
}

TEST(tiny_phi3_matches_transformers)
{
    check_family("phi3");
}

/* What each tiny model exercises, read back from its file: a change to the generator that drops
 * a feature (the rope_freqs tensor, the biases, the Q8_0 matrices, Phi-3's fused tensors and
 * window, ...) fails here. */
TEST(tiny_models_exercise_their_features)
{
    static const struct {
        const char *name;
        core_arch kind;
        int neox, bias, qk_norm, rope_freqs, tied;
        uint32_t wtype;
        int fused_swa; /* q, k, v in one tensor and a sliding window on every layer (Phi-3) */
    } want[] = {
        {"llama3", CORE_ARCH_LLAMA, 0, 0, 0, 1, 1, CORE_TYPE_F16, 0},
        {"mistral", CORE_ARCH_LLAMA, 0, 0, 0, 0, 0, CORE_TYPE_Q8_0, 0},
        {"qwen2", CORE_ARCH_QWEN2, 1, 1, 0, 0, 1, CORE_TYPE_F32, 0},
        {"qwen3", CORE_ARCH_QWEN3, 1, 0, 1, 0, 0, CORE_TYPE_BF16, 0},
        {"phi3", CORE_ARCH_PHI3, 1, 0, 0, 0, 0, CORE_TYPE_Q8_0, 1},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        cJSON *root;
        const cJSON *fam = family_fixture(&root, want[i].name);
        char why[512] = "no fixture";
        core_model *m = fam ? load_tiny(want[i].name, fam, why, sizeof why) : NULL;
        cJSON_Delete(root);
        CHECK_MSG(m, "%s", why);
        const core_config *c = &m->cfg;
        printf("    %-8s %s: %d layers, n_embd %d, %d/%d heads of %d, n_ff %d, vocab %d, %s "
               "matrices\n",
               want[i].name, c->arch, c->n_layer, c->n_embd, c->n_head, c->n_head_kv, c->head_dim,
               c->n_ff, c->n_vocab, core_type_name(m->layers[0].w[CORE_MOD_Q].type));
        int ok = c->kind == want[i].kind && c->neox_rope == want[i].neox &&
                 c->qkv_bias == want[i].bias &&
                 (m->layers[0].bias[CORE_MOD_K] != NULL) == want[i].bias &&
                 c->qk_norm == want[i].qk_norm &&
                 (m->layers[1].q_norm != NULL) == want[i].qk_norm &&
                 c->rope_freqs == want[i].rope_freqs &&
                 (m->rope_freqs != NULL) == want[i].rope_freqs && c->tied_output == want[i].tied &&
                 m->layers[0].w[CORE_MOD_DOWN].type == want[i].wtype && c->n_head_kv < c->n_head;
        int row0;
        ok = ok && (core_module_span(c, CORE_MOD_Q) == 3) == want[i].fused_swa &&
             (c->sliding_window > 0 && core_layer_is_swa(c, 0) && core_layer_is_swa(c, 1)) ==
                 want[i].fused_swa &&
             !strcmp(core_module_tensor(c, CORE_MOD_K, &row0),
                     want[i].fused_swa ? "attn_qkv" : "attn_k");
        core_model_free(m);
        CHECK_MSG(ok, "%s does not have the features its test is for", want[i].name);
    }
}

/* A copy of the Llama 3 model whose rope_freqs.weight holds 0, a negative factor or NaN at some
 * index is refused at load, naming the tensor and the index (a factor divides a frequency; NaN
 * is caught by the finite check every weight gets). */
TEST(tiny_llama3_bad_rope_freqs_refused)
{
    const char *src = "models/tiny/llama3.gguf";
    if (access(src, R_OK) != 0)
        CHECK_MSG(0, "%s is missing (run make tiny)", src);
    size_t n = 0;
    char *bytes = test_read_file(src, &n);
    CHECK_MSG(bytes, "cannot read %s", src);
    char err[256] = "";
    core_gguf *g = core_gguf_open(src, err, sizeof err);
    CHECK_MSG(g, "%s", err);
    const core_gguf_tensor *t = core_gguf_find_tensor(g, "rope_freqs.weight");
    CHECK(t && t->type == CORE_TYPE_F32 && t->ne[0] >= 4);
    size_t at = (size_t)(g->data_offset + t->offset);
    core_gguf_close(g);
    const char *dir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    char path[256];
    snprintf(path, sizeof path, "%s/adaptree-bad-rope-freqs-%d.gguf", dir, (int)getpid());
    static const float bad[] = {0.0f, -2.0f, NAN};
    for (int k = 0; k < 3; k++) {
        char *copy = malloc(n);
        CHECK(copy != NULL);
        memcpy(copy, bytes, n);
        memcpy(copy + at + 3 * sizeof(float), &bad[k], sizeof(float)); /* index 3 */
        FILE *f = fopen(path, "wb");
        CHECK(f && fwrite(copy, 1, n, f) == n);
        fclose(f);
        free(copy);
        core_model *m = core_model_load(path, err, sizeof err);
        printf("    factor %g: %s\n", (double)bad[k], m ? "loaded" : err);
        core_model_free(m);
        CHECK_MSG(!m, "a rope_freqs factor of %g was accepted", (double)bad[k]);
        CHECK_MSG(strstr(err, "rope_freqs.weight") &&
                      (strstr(err, "[3]") || strstr(err, "element 3")),
                  "the refusal does not name the tensor and the index: %s", err);
    }
    unlink(path);
    free(bytes);
}
