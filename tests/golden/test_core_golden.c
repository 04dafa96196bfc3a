/* The core against Hugging Face transformers (fp32, same dequantized weights): logits at every
 * position (top-20 there, all 49152 at the last position) within 1e-3 max-abs, and identical
 * 32-token greedy continuations. Fixtures: tests/reference/make_core_fixtures.py. */
#include <cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "core/model.h"
#include "tests/shared_model.h"
#include "tests/test.h"

#define FIXTURES "tests/golden/fixtures/"
#define LOGIT_TOL 1e-3

char *test_read_file(const char *path, size_t *len);

char *test_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[n] = 0;
        if (len)
            *len = (size_t)n;
    }
    return buf;
}

static cJSON *load_json(const char *path)
{
    char *s = test_read_file(path, NULL);
    cJSON *j = s ? cJSON_Parse(s) : NULL;
    free(s);
    return j;
}

static int ids_from_json(const cJSON *arr, int32_t *out, int cap)
{
    int n = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr)
    {
        if (n < cap)
            out[n] = (int32_t)it->valuedouble;
        n++;
    }
    return n;
}

/* Runs ids through a fresh cache, logits for every position. */
static float *all_logits(core_model *m, const int32_t *ids, int n)
{
    char err[256];
    core_ctx *c = core_ctx_new(m);
    core_kv *kv = core_kv_new(&m->cfg, 1, 512, err, sizeof err);
    int32_t pos[512], slot[512] = {0};
    for (int i = 0; i < n; i++)
        pos[i] = i;
    float *lg = malloc(sizeof(float) * (size_t)n * m->cfg.n_vocab);
    core_batch b = {.n_rows = n, .tokens = ids, .pos = pos, .slot = slot};
    if (core_forward(c, kv, &b, NULL, lg, err, sizeof err)) {
        printf("    forward: %s\n", err);
        free(lg);
        lg = NULL;
    }
    core_kv_free(kv);
    core_ctx_free(c);
    return lg;
}

TEST(golden_logits_match_transformers)
{
    TEST_NEED_MODEL();
    core_model *m = test_shared_model();
    CHECK(m != NULL);
    cJSON *j = load_json(FIXTURES "core_logits.json");
    CHECK_MSG(j != NULL, "cannot read " FIXTURES "core_logits.json");
    int nv = m->cfg.n_vocab, n_prompts = 0, n_full = 0, argmax_same = 0, positions = 0;
    double worst_top = 0, worst_full = 0;
    const cJSON *p;
    cJSON_ArrayForEach(p, cJSON_GetObjectItem(j, "prompts"))
    {
        int32_t ids[512];
        const char *name = cJSON_GetObjectItem(p, "name")->valuestring;
        int n = ids_from_json(cJSON_GetObjectItem(p, "ids"), ids, 512);
        CHECK(n > 0 && n <= 512);
        float *lg = all_logits(m, ids, n);
        CHECK(lg != NULL);
        double worst = 0;
        int t = 0;
        const cJSON *top;
        cJSON_ArrayForEach(top, cJSON_GetObjectItem(p, "top20"))
        {
            const float *row = lg + (size_t)t * nv;
            int best = 0;
            for (int v = 1; v < nv; v++)
                best = row[v] > row[best] ? v : best;
            const cJSON *pair;
            int k = 0;
            cJSON_ArrayForEach(pair, top)
            {
                int id = (int)cJSON_GetArrayItem(pair, 0)->valuedouble;
                double want = cJSON_GetArrayItem(pair, 1)->valuedouble;
                double d = fabs(row[id] - want);
                worst = d > worst ? d : worst;
                if (k++ == 0 && id == best)
                    argmax_same++;
            }
            positions++;
            t++;
        }
        CHECK_EQ_INT(t, n);
        const cJSON *file = cJSON_GetObjectItem(p, "last_logits_file");
        if (cJSON_IsString(file)) {
            char path[256];
            size_t len = 0;
            snprintf(path, sizeof path, FIXTURES "%s", file->valuestring);
            float *ref = (float *)test_read_file(path, &len);
            CHECK_MSG(ref && len == sizeof(float) * nv, "bad fixture %s", path);
            double wf = 0;
            for (int v = 0; v < nv; v++) {
                double d = fabs(lg[(size_t)(n - 1) * nv + v] - ref[v]);
                wf = d > wf ? d : wf;
            }
            printf("    %-10s %3d tokens: all %d logits at the last position max |diff| %.3g\n",
                   name, n, nv, wf);
            worst_full = wf > worst_full ? wf : worst_full;
            n_full++;
            free(ref);
        }
        printf("    %-10s %3d tokens: top-20 at every position max |diff| %.3g\n", name, n, worst);
        worst_top = worst > worst_top ? worst : worst_top;
        n_prompts++;
        free(lg);
    }
    cJSON_Delete(j);
    printf("    %d prompts, %d positions: top-20 max |diff| %.3g, full-vocab max |diff| %.3g "
           "(tol %g); argmax equal at %d/%d positions\n",
           n_prompts, positions, worst_top, worst_full, LOGIT_TOL, argmax_same, positions);
    CHECK(n_prompts >= 4 && n_full >= 3);
    CHECK(worst_top <= LOGIT_TOL);
    CHECK(worst_full <= LOGIT_TOL);
    CHECK_EQ_INT(argmax_same, positions);
}

TEST(golden_greedy_continuations_match_transformers)
{
    TEST_NEED_MODEL();
    core_model *m = test_shared_model();
    CHECK(m != NULL);
    cJSON *j = load_json(FIXTURES "core_logits.json");
    CHECK(j != NULL);
    int nv = m->cfg.n_vocab, n_checked = 0;
    char err[256];
    const cJSON *p;
    cJSON_ArrayForEach(p, cJSON_GetObjectItem(j, "prompts"))
    {
        const cJSON *g = cJSON_GetObjectItem(p, "greedy");
        if (!g)
            continue;
        int32_t ids[512], want[64];
        int n = ids_from_json(cJSON_GetObjectItem(p, "ids"), ids, 512);
        int n_new = ids_from_json(cJSON_GetObjectItem(g, "ids"), want, 64);
        CHECK(n > 0 && n_new == 32);
        core_ctx *c = core_ctx_new(m);
        core_kv *kv = core_kv_new(&m->cfg, 1, 512, err, sizeof err);
        float *lg = malloc(sizeof(float) * nv);
        int32_t pos[512], slot[512] = {0};
        uint8_t wl[512] = {0};
        for (int i = 0; i < n; i++)
            pos[i] = i;
        wl[n - 1] = 1;
        core_batch b = {.n_rows = n, .tokens = ids, .pos = pos, .slot = slot, .want_logits = wl};
        CHECK(core_forward(c, kv, &b, NULL, lg, err, sizeof err) == 0);
        int same = 0;
        for (int s = 0; s < n_new; s++) {
            int32_t best = 0;
            for (int v = 1; v < nv; v++)
                best = lg[v] > lg[best] ? v : best;
            if (best != want[s]) {
                printf("    %s: step %d: got %d, transformers %d\n",
                       cJSON_GetObjectItem(p, "name")->valuestring, s, best, want[s]);
                break;
            }
            same++;
            int32_t ps = n + s;
            core_batch d = {.n_rows = 1, .tokens = &best, .pos = &ps, .slot = slot};
            CHECK(core_forward(c, kv, &d, NULL, lg, err, sizeof err) == 0);
        }
        printf("    %-10s greedy: %d/%d tokens identical\n",
               cJSON_GetObjectItem(p, "name")->valuestring, same, n_new);
        free(lg);
        core_kv_free(kv);
        core_ctx_free(c);
        CHECK_EQ_INT(same, n_new);
        n_checked++;
    }
    cJSON_Delete(j);
    CHECK(n_checked >= 3);
}
