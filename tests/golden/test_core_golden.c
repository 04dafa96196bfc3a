/* The core against Hugging Face transformers (fp32, same dequantized weights): logits at every
 * position (top-20 there, all 49152 at the last position) within 1e-3 max-abs, and identical
 * 32-token greedy continuations. Fixtures: tests/reference/make_core_fixtures.py. */
#include <cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/model/model.h"
#include "tests/shared_model.h"
#include "tests/test.h"

#define FIXTURES "tests/golden/fixtures/"
#define LOGIT_TOL 1e-3

static int kv_f16; /* all_logits caches K and V as f16 */

/* Runs ids through a fresh cache, logits for every position. */
static float *all_logits(core_model *m, const int32_t *ids, int n)
{
    char err[256];
    core_ctx *c = core_ctx_new(m);
    core_kv *kv = core_kv_new(&m->cfg, 1, 512, err, sizeof err);
    if (kv && kv_f16)
        core_kv_set_f16(kv, 1);
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

/* What one pass over the logits fixture measured. */
typedef struct logit_stats {
    int n_prompts, n_full, argmax_same, positions;
    double worst_top, worst_full;
} logit_stats;

/* Runs every fixture prompt through m and compares with transformers' logits: the top-20 at every
 * position, all of them at the last position where the fixture has them. 0, or -1 when a fixture
 * or a forward pass failed (printed). No CHECKs, so that a caller can restore the model first. */
static int compare_logits(core_model *m, const char *what, logit_stats *st)
{
    memset(st, 0, sizeof *st);
    cJSON *j = test_read_json(FIXTURES "core_logits.json");
    if (!j) {
        printf("    cannot read " FIXTURES "core_logits.json\n");
        return -1;
    }
    int nv = m->cfg.n_vocab, rc = 0;
    const cJSON *p;
    cJSON_ArrayForEach(p, cJSON_GetObjectItem(j, "prompts"))
    {
        int32_t ids[512];
        const char *name = cJSON_GetObjectItem(p, "name")->valuestring;
        int n = test_json_ids(cJSON_GetObjectItem(p, "ids"), ids, 512);
        float *lg = n > 0 && n <= 512 ? all_logits(m, ids, n) : NULL;
        if (!lg) {
            rc = -1;
            break;
        }
        double worst = 0;
        int t = 0;
        const cJSON *top;
        cJSON_ArrayForEach(top, cJSON_GetObjectItem(p, "top20"))
        {
            if (t >= n)
                break;
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
                    st->argmax_same++;
            }
            st->positions++;
            t++;
        }
        if (t != n) {
            printf("    %s: %d positions in the fixture, %d tokens\n", name, t, n);
            rc = -1;
        }
        const cJSON *file = cJSON_GetObjectItem(p, "last_logits_file");
        if (cJSON_IsString(file)) {
            char path[256];
            size_t len = 0;
            snprintf(path, sizeof path, FIXTURES "%s", file->valuestring);
            float *ref = (float *)test_read_file(path, &len);
            if (!ref || len != sizeof(float) * nv) {
                printf("    bad fixture %s\n", path);
                rc = -1;
            } else {
                double wf = 0;
                for (int v = 0; v < nv; v++) {
                    double d = fabs(lg[(size_t)(n - 1) * nv + v] - ref[v]);
                    wf = d > wf ? d : wf;
                }
                printf("    %-10s %3d tokens%s: all %d logits at the last position max |diff| "
                       "%.3g\n",
                       name, n, what, nv, wf);
                st->worst_full = wf > st->worst_full ? wf : st->worst_full;
                st->n_full++;
            }
            free(ref);
        }
        printf("    %-10s %3d tokens%s: top-20 at every position max |diff| %.3g\n", name, n, what,
               worst);
        st->worst_top = worst > st->worst_top ? worst : st->worst_top;
        st->n_prompts++;
        free(lg);
    }
    cJSON_Delete(j);
    return rc;
}

TEST(golden_logits_match_transformers)
{
    TEST_NEED_MODEL();
    core_model *m = test_shared_model();
    CHECK(m != NULL);
    logit_stats st;
    CHECK(compare_logits(m, "", &st) == 0);
    printf("    %d prompts, %d positions: top-20 max |diff| %.3g, full-vocab max |diff| %.3g "
           "(tol %g); argmax equal at %d/%d positions\n",
           st.n_prompts, st.positions, st.worst_top, st.worst_full, LOGIT_TOL, st.argmax_same,
           st.positions);
    CHECK(st.n_prompts >= 4 && st.n_full >= 3);
    CHECK(st.worst_top <= LOGIT_TOL);
    CHECK(st.worst_full <= LOGIT_TOL);
    CHECK_EQ_INT(st.argmax_same, st.positions);
}

/* int8 activations (serve --int8) round every linear layer's input to 8 bits per block of 32, as
 * llama.cpp does. That is far from the f32 contract: measured here (2026-12-02) top-20 max |diff|
 * 1.87, full-vocab 1.02, mean |diff| ~0.15 over logits spanning ~40, argmax equal at 135/140
 * positions (the others are near-ties). No single module dominates the error (each one alone
 * moves the logits by 0.2-0.9): it is the rounding of SmolLM2's outlier-heavy activations. The
 * tolerances hold that with a margin; a wrong scale or block order gives errors of 10 and more.
 * The kernels' own arithmetic is checked exactly in test_qmatmul_q8.c. */
#define INT8_LOGIT_TOL 2.5
#define INT8_ARGMAX_MIN 0.95

TEST(golden_logits_int8_close_to_transformers)
{
    TEST_NEED_MODEL();
    core_model *m = test_shared_model();
    CHECK(m != NULL);
    char err[256];
    int packed = core_model_set_int8(m, 1, err, sizeof err);
    if (packed == -ENOTSUP)
        TEST_SKIP("%s", err);
    CHECK_MSG(packed > 0, "core_model_set_int8: %s", err);
    logit_stats st;
    int rc = compare_logits(m, " (int8)", &st);
    core_model_set_int8(m, 0, NULL, 0);
    CHECK(rc == 0);
    printf("    int8: %d prompts, %d positions: top-20 max |diff| %.3g, full-vocab max |diff| %.3g "
           "(tol %g); argmax equal at %d/%d positions (at least %.0f%%)\n",
           st.n_prompts, st.positions, st.worst_top, st.worst_full, INT8_LOGIT_TOL, st.argmax_same,
           st.positions, 100 * INT8_ARGMAX_MIN);
    CHECK(st.n_prompts >= 4 && st.n_full >= 3);
    CHECK(st.worst_top <= INT8_LOGIT_TOL);
    CHECK(st.worst_full <= INT8_LOGIT_TOL);
    CHECK(st.argmax_same >= INT8_ARGMAX_MIN * st.positions);
}

/* K and V cached as f16 (serve --kv-f16): one rounding to 11 significant bits per cached value,
 * 20x the f32 tolerance. Measured here (2026-12-02): top-20 max |diff| 0.0226 (chat), full-vocab
 * 0.0153, argmax equal at 140/140 positions. */
#define KV_F16_LOGIT_TOL 0.05

TEST(golden_logits_kv_f16_close_to_transformers)
{
    TEST_NEED_MODEL();
    core_model *m = test_shared_model();
    CHECK(m != NULL);
    logit_stats st;
    kv_f16 = 1;
    int rc = compare_logits(m, " (f16 KV)", &st);
    kv_f16 = 0;
    CHECK(rc == 0);
    printf("    f16 KV: %d prompts, %d positions: top-20 max |diff| %.3g, full-vocab max |diff| "
           "%.3g (tol %g); argmax equal at %d/%d positions\n",
           st.n_prompts, st.positions, st.worst_top, st.worst_full, KV_F16_LOGIT_TOL,
           st.argmax_same, st.positions);
    CHECK(st.n_prompts >= 4 && st.n_full >= 3);
    CHECK(st.worst_top <= KV_F16_LOGIT_TOL);
    CHECK(st.worst_full <= KV_F16_LOGIT_TOL);
    CHECK(st.argmax_same >= st.positions - 1);
}

TEST(golden_greedy_continuations_match_transformers)
{
    TEST_NEED_MODEL();
    core_model *m = test_shared_model();
    CHECK(m != NULL);
    cJSON *j = test_read_json(FIXTURES "core_logits.json");
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
        int n = test_json_ids(cJSON_GetObjectItem(p, "ids"), ids, 512);
        int n_new = test_json_ids(cJSON_GetObjectItem(g, "ids"), want, 64);
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
