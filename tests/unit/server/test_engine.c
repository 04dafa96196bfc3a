/* The engine (server/engine.c, server/scheduler.c) on the real model and the PEFT fixture
 * registry: greedy tokens against a plain single-sequence core_forward loop, batch invariance of
 * concurrent jobs over different adapters, stop strings, max_tokens, logprobs, cancellation,
 * the queue limit, draining, fair admission, adapters loading while other jobs run, and adapter
 * errors. Engines borrow the shared model, so each test costs only its own steps. */
#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "adapters/compose.h"
#include "adapters/registry.h"
#include "core/model/model.h"
#include "core/model/sampler.h"
#include "core/text/tokenizer.h"
#include "server/cli_select.h"
#include "server/engine.h"
#include "tests/shared_model.h"
#include "tests/test.h"
#include "tests/unit/adapters/adapter_testutil.h"

#define FIX "tests/golden/fixtures/adapters"
#define MAXTOK 128
#define WAIT_S 60.0

/* ---- helpers -------------------------------------------------------------------------------- */

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static srv_engine *engine_open_ctx(const char *registry, int max_seqs, int queue_limit, int n_ctx)
{
    core_model *m = test_shared_model();
    if (!m)
        return NULL;
    srv_engine_opts o;
    srv_engine_opts_default(&o);
    o.model = m;
    o.model_path = test_model_path();
    o.registry_dir = registry;
    o.watch = false;
    const char *v = getenv("ADAPTREE_TEST_VERBOSE"); /* 2: one line per step */
    o.verbose = v ? (int)strtol(v, NULL, 10) : 0;
    o.n_ctx = n_ctx;
    o.max_seqs = max_seqs;
    o.queue_limit = queue_limit;
    char err[256] = "";
    srv_engine *e = srv_engine_new(&o, err, sizeof err);
    if (!e)
        printf("    engine: %s\n", err);
    return e;
}

static srv_engine *engine_open(const char *registry, int max_seqs, int queue_limit)
{
    return engine_open_ctx(registry, max_seqs, queue_limit, 256);
}

/* Prompt ids of text as `adaptree generate` makes them (BOS when the model wants one). */
static int tokens_of(const core_tokenizer *t, const char *text, int32_t *out, int cap)
{
    int32_t *ids = NULL;
    size_t n = 0;
    if (core_tokenize(t, text, strlen(text), true, &ids, &n) < 0)
        return -1;
    int k = 0;
    if (core_tokenizer_add_bos(t) && core_tokenizer_bos(t) >= 0)
        out[k++] = core_tokenizer_bos(t);
    for (size_t i = 0; i < n && k < cap; i++)
        out[k++] = ids[i];
    free(ids);
    return k;
}

typedef struct jobspec {
    const char *prompt;
    const char *select; /* tree chain, or NULL */
    const char *item;   /* one explicit adapter, or NULL */
    const char *client;
    const char *stop[SRV_JOB_STOP_MAX];
    uint64_t seed;
    float item_w;
    float temperature;
    int max_tokens;
    int logprobs;
    int n_stop;
    int spec_k, spec_ngram; /* speculative decoding (srv_job_params) */
} jobspec;

static void on_notify(void *ud)
{
    atomic_int *n = ud;
    atomic_fetch_add(n, 1);
}

typedef struct jobrun {
    srv_job *j;
    atomic_int notes;
} jobrun;

/* Makes (not submits) the job of spec on engine e; NULL with the reason printed. */
static srv_job *job_make(srv_engine *e, const jobspec *sp, jobrun *r)
{
    int32_t ids[128];
    int n = tokens_of(srv_engine_tokenizer(e), sp->prompt, ids, 128);
    srv_job_params p = {0};
    p.prompt = ids;
    p.n_prompt = n;
    p.client = sp->client;
    p.label = sp->select ? sp->select : sp->item;
    p.max_tokens = sp->max_tokens;
    core_sampler_params_default(&p.sampling);
    p.sampling.temperature = sp->temperature;
    p.seed = sp->seed;
    p.logprobs = sp->logprobs ? sp->logprobs : -1;
    for (int i = 0; i < sp->n_stop; i++)
        p.stop[i] = sp->stop[i];
    p.n_stop = sp->n_stop;
    p.spec_k = sp->spec_k;
    p.spec_ngram = sp->spec_ngram;
    char err[256] = "";
    if (sp->select || sp->item) {
        adapter_sel_item it = {.weight = sp->item_w ? sp->item_w : 1.0f};
        if (sp->item)
            snprintf(it.id, sizeof it.id, "%s", sp->item);
        int rc = adapter_registry_resolve(srv_engine_registry(e), sp->select, &it, sp->item ? 1 : 0,
                                          &p.sel, err, sizeof err);
        if (rc) {
            printf("    resolve: %s\n", err);
            return NULL;
        }
    }
    atomic_init(&r->notes, 0);
    r->j = srv_job_new(&p, on_notify, &r->notes, err, sizeof err);
    if (!r->j)
        printf("    job: %s\n", err);
    return r->j;
}

/* Detaches notify (the jobrun may be on the stack) and drops the test's reference. */
static void job_drop(jobrun *r)
{
    srv_job_detach_notify(r->j);
    srv_job_unref(r->j);
}

static srv_finish wait_done(srv_job *j, srv_job_status *st)
{
    double t0 = now_s();
    for (;;) {
        srv_job_status_get(j, st);
        if (st->finish != SRV_FINISH_NONE || now_s() - t0 > WAIT_S)
            return st->finish;
        usleep(500);
    }
}

/* Waits until pred(stats) holds; 0 or -1 on timeout. */
static int wait_stats(srv_engine *e, int (*pred)(const srv_engine_stats *s, int arg), int arg)
{
    double t0 = now_s();
    srv_engine_stats s;
    do {
        srv_engine_stats_get(e, &s);
        if (pred(&s, arg))
            return 0;
        usleep(500);
    } while (now_s() - t0 < WAIT_S);
    return -1;
}

static int running_is(const srv_engine_stats *s, int n)
{
    return s->running == n;
}

static int waiting_is(const srv_engine_stats *s, int n)
{
    return s->waiting == n;
}

/* The job's token ids (at most cap). */
static int job_ids(srv_job *j, int32_t *ids, int cap)
{
    srv_job_token t[MAXTOK];
    int n = srv_job_tokens(j, 0, t, MAXTOK);
    for (int i = 0; i < n && i < cap; i++)
        ids[i] = t[i].id;
    return n < cap ? n : cap;
}

/* Runs spec alone on e and waits: its token ids into ids; -1 on failure. */
static int run_alone(srv_engine *e, const jobspec *sp, int32_t *ids, srv_job_status *st)
{
    jobrun r;
    if (!job_make(e, sp, &r))
        return -1;
    int rc = srv_engine_submit(e, r.j);
    srv_job_status st0;
    if (!st)
        st = &st0;
    if (rc == 0)
        wait_done(r.j, st);
    int n = rc == 0 ? job_ids(r.j, ids, MAXTOK) : -1;
    job_drop(&r);
    return n;
}

/* Greedy tokens of prompt straight through core_forward (whole prompt in one step, then one
 * row per step), with the adapters of select/item applied: the reference. -1 on failure. */
static int reference(const core_model *m, const core_tokenizer *tok, const char *prompt,
                     const char *select, const char *item, int n_gen, int32_t *out)
{
    char err[256] = "";
    srv_cli_sel sel;
    memset(&sel, 0, sizeof sel);
    const adapter_set *set = NULL;
    if (select || item) {
        srv_cli_sel_arg(&sel, "--registry", FIX);
        if (select)
            srv_cli_sel_arg(&sel, "--select", select);
        if (item)
            srv_cli_sel_arg(&sel, "--adapter", item);
        if (srv_cli_sel_open(&sel, &m->cfg, err, sizeof err) < 0) {
            printf("    reference adapters: %s\n", err);
            return -1;
        }
        set = sel.set;
    }
    int32_t ids[256];
    int n = tokens_of(tok, prompt, ids, 128);
    core_ctx *ctx = core_ctx_new(m);
    core_kv *kv = core_kv_new(&m->cfg, 1, 256, err, sizeof err);
    adapter_plan *plan = adapter_plan_new();
    core_sampler_params sp;
    core_sampler_params_default(&sp);
    sp.temperature = 0;
    core_sampler *smp = core_sampler_new(&sp, m->cfg.n_vocab, err, sizeof err);
    float *lg = malloc(sizeof(float) * (size_t)m->cfg.n_vocab);
    int32_t pos[256], slot[256] = {0};
    const adapter_set *sets[256];
    uint8_t want[256] = {0};
    for (int i = 0; i < 256; i++) {
        pos[i] = i;
        sets[i] = set;
    }
    int produced = -1;
    if (ctx && kv && plan && smp && lg) {
        produced = 0;
        int at = 0, rows = n;
        while (produced < n_gen) {
            const core_lora_plan *lp = NULL;
            want[at + rows - 1] = 1;
            core_batch b = {.n_rows = rows,
                            .tokens = ids + at,
                            .pos = pos + at,
                            .slot = slot,
                            .want_logits = want + at};
            if ((set && adapter_plan_build(plan, m->cfg.n_layer, rows, sets, &lp)) ||
                core_forward(ctx, kv, &b, lp, lg, err, sizeof err) < 0) {
                printf("    reference forward: %s\n", err);
                produced = -1;
                break;
            }
            int32_t id = core_sampler_sample(smp, lg, ids, (size_t)at + (size_t)rows, NULL);
            if (id < 0 || core_tokenizer_is_eog(tok, id))
                break;
            out[produced++] = id;
            at += rows;
            rows = 1;
            ids[at] = id;
        }
    }
    free(lg);
    core_sampler_free(smp);
    adapter_plan_free(plan);
    core_kv_free(kv);
    core_ctx_free(ctx);
    srv_cli_sel_close(&sel);
    return produced;
}

static int same_ids(const int32_t *a, int na, const int32_t *b, int nb)
{
    if (na != nb) {
        printf("    %d tokens vs %d\n", na, nb);
        return 0;
    }
    for (int i = 0; i < na; i++)
        if (a[i] != b[i]) {
            printf("    token %d: %d vs %d\n", i, a[i], b[i]);
            return 0;
        }
    return 1;
}

/* ---- tests ---------------------------------------------------------------------------------- */

TEST(engine_greedy_matches_reference)
{
    TEST_NEED_MODEL();
    srv_engine *e = engine_open(FIX, 4, 0);
    CHECK(e);
    const core_model *m = test_shared_model();
    const char *prompts[2] = {"The capital of France is", "Le chat est assis sur"};
    const char *selects[2] = {NULL, "tree/fr/legal/alice"};
    for (int c = 0; c < 2; c++) {
        int32_t ref[MAXTOK], got[MAXTOK];
        int nr = reference(m, srv_engine_tokenizer(e), prompts[c], selects[c], NULL, 12, ref);
        jobspec sp = {.prompt = prompts[c], .select = selects[c], .max_tokens = 12};
        srv_job_status st;
        int ng = run_alone(e, &sp, got, &st);
        CHECK_MSG(nr > 0 && ng >= 0, "reference %d, engine %d tokens", nr, ng);
        CHECK_MSG(same_ids(ref, nr, got, ng), "%s with %s: engine tokens differ from core_forward",
                  prompts[c], selects[c] ? selects[c] : "base");
        CHECK_EQ_INT(st.finish, nr == 12 ? SRV_FINISH_LENGTH : SRV_FINISH_STOP);
        CHECK_EQ_INT(st.completion_tokens, ng);
        CHECK_EQ_INT(st.n_tokens, ng);
        CHECK(st.prompt_tokens > 0);
        CHECK(st.queue_ms >= 0 && st.first_token_ms >= st.queue_ms &&
              st.total_ms >= st.first_token_ms);
        /* One inter-token gap per sampled token after the first (the end-of-generation token
           of a stop is sampled too), and they fit between the first token and the end. */
        uint32_t gaps = 0;
        for (int i = 0; i <= SRV_ITL_BUCKETS; i++)
            gaps += st.itl[i];
        CHECK_EQ_INT((int)gaps, st.finish == SRV_FINISH_LENGTH ? ng - 1 : ng);
        CHECK_MSG(st.itl_sum > 0 && st.itl_sum * 1e3 <= st.total_ms - st.first_token_ms + 1e-6,
                  "gaps sum to %.3f ms, first token to end %.3f ms", st.itl_sum * 1e3,
                  st.total_ms - st.first_token_ms);
    }
    /* The text is the streaming decode of the tokens. */
    jobrun r;
    jobspec sp = {.prompt = "The capital of France is", .max_tokens = 12};
    CHECK(job_make(e, &sp, &r));
    CHECK_EQ_INT(srv_engine_submit(e, r.j), 0);
    srv_job_status st;
    wait_done(r.j, &st);
    char text[1024] = "", want[1024] = "";
    size_t tl = srv_job_text(r.j, 0, text, sizeof text - 1);
    text[tl] = 0;
    srv_job_token t[MAXTOK];
    int n = srv_job_tokens(r.j, 0, t, MAXTOK);
    core_detok d;
    core_detok_init(&d, srv_engine_tokenizer(e), false);
    size_t wl = 0;
    for (int i = 0; i < n; i++) {
        int k = core_detok_push(&d, t[i].id, want + wl, sizeof want - wl);
        CHECK(k >= 0);
        wl += (size_t)k;
        CHECK(t[i].text_end <= tl && (i == 0 || t[i].text_end >= t[i - 1].text_end));
    }
    CHECK_EQ_STR(text, want);
    CHECK_EQ_INT(tl, st.text_len);
    CHECK(atomic_load(&r.notes) >= 1);
    job_drop(&r);
    srv_engine_stats s;
    srv_engine_stats_get(e, &s);
    CHECK_EQ_INT(s.jobs_submitted, 3);
    CHECK_EQ_INT(s.jobs_finished, 3);
    CHECK(s.steps > 0 && s.rows >= s.steps && s.generated_tokens >= 30);
    srv_label_stats *ls = NULL;
    size_t nl = 0;
    CHECK_EQ_INT(srv_engine_label_stats(e, &ls, &nl), 0);
    CHECK_EQ_INT(nl, 2);
    CHECK_EQ_STR(ls[0].label, "base");
    CHECK_EQ_INT(ls[0].requests, 2);
    CHECK_EQ_STR(ls[1].label, "tree/fr/legal/alice");
    CHECK_EQ_INT(ls[1].requests, 1);
    CHECK(ls[1].prompt_tokens > 0 && ls[1].generated_tokens > 0);
    free(ls);
    CHECK_EQ_STR(srv_engine_model_id(e), "SmolLM2-135M-Instruct");
    srv_engine_free(e);
}

/* Seven jobs over the base, chains, single adapters and a weighted sum, from three clients,
 * each with its own prompt: batched together, each gives exactly the tokens it gives alone. */
TEST(engine_concurrent_jobs_match_alone)
{
    TEST_NEED_MODEL();
    srv_engine *e = engine_open(FIX, 8, 0);
    CHECK(e);
    enum { N = 7, GEN = 8 };
    const jobspec specs[N] = {
        {.prompt = "The capital of France is", .client = "a", .max_tokens = GEN},
        {.prompt = "Le chat est assis sur", .select = "tree/fr", .client = "a", .max_tokens = GEN},
        {.prompt = "Once upon a time",
         .select = "tree/fr/legal/alice",
         .client = "b",
         .max_tokens = GEN},
        {.prompt = "1, 2, 3,", .item = "qv_r4", .client = "b", .max_tokens = GEN},
        {.prompt = "The best way to learn",
         .item = "all_rslora_r8",
         .item_w = 0.5f,
         .client = "c",
         .max_tokens = GEN},
        {.prompt = "def main():",
         .select = "tree/fr/legal",
         .item = "regex_gate_up",
         .item_w = 2.0f,
         .client = "c",
         .max_tokens = GEN},
        {.prompt = "Water boils at", .item = "patterns", .client = "a", .max_tokens = GEN},
    };
    int32_t alone[N][MAXTOK];
    int n_alone[N];
    for (int i = 0; i < N; i++) {
        n_alone[i] = run_alone(e, &specs[i], alone[i], NULL);
        CHECK_MSG(n_alone[i] > 0, "job %d alone produced %d tokens", i, n_alone[i]);
    }
    /* The fr chain alone against core_forward too (the others are covered by the first test). */
    int32_t ref[MAXTOK];
    int nr = reference(test_shared_model(), srv_engine_tokenizer(e), specs[1].prompt,
                       specs[1].select, NULL, GEN, ref);
    CHECK(same_ids(ref, nr, alone[1], n_alone[1]));

    jobrun r[N];
    for (int i = 0; i < N; i++)
        CHECK(job_make(e, &specs[i], &r[i]));
    for (int i = 0; i < N; i++)
        CHECK_EQ_INT(srv_engine_submit(e, r[i].j), 0);
    srv_engine_stats s0;
    srv_engine_stats_get(e, &s0);
    for (int i = 0; i < N; i++) {
        srv_job_status st;
        CHECK(wait_done(r[i].j, &st) != SRV_FINISH_NONE);
        CHECK_MSG(st.finish == SRV_FINISH_LENGTH || st.finish == SRV_FINISH_STOP, "job %d: %s %s",
                  i, srv_finish_name(st.finish), st.error);
        int32_t got[MAXTOK];
        int ng = job_ids(r[i].j, got, MAXTOK);
        CHECK_MSG(same_ids(alone[i], n_alone[i], got, ng), "job %d batched differs from alone", i);
    }
    srv_engine_stats s1;
    srv_engine_stats_get(e, &s1);
    /* Batched: far fewer steps than the jobs' tokens. */
    CHECK_MSG(s1.steps - s0.steps < (uint64_t)(N * GEN) / 2, "%llu steps for %d jobs",
              (unsigned long long)(s1.steps - s0.steps), N);
    for (int i = 0; i < N; i++)
        job_drop(&r[i]);
    srv_engine_free(e);
}

/* No job runs and every block in use is the prefix cache's. */
static int kv_only_cached(const srv_engine_stats *s, int unused)
{
    (void)unused;
    return s->running == 0 && s->kv_blocks_used == s->kv_blocks_cached;
}

/* Preemption and re-prefill: a pool of 18 blocks (17 hold one --ctx 256 sequence) for four jobs
 * that each grow past 4 blocks (gen tokens each). Admission waits, the youngest sequences are
 * preempted and compute their prompt and generated tokens again (with the prefix cache, only
 * those of the blocks it no longer holds), and every job gives its tokens alone. */
static void kv_pressure(bool prefix, int gen, srv_engine_stats *out)
{
    memset(out, 0, sizeof *out);
    core_model *m = test_shared_model();
    CHECK(m);
    srv_engine_opts o;
    srv_engine_opts_default(&o);
    o.model = m;
    o.model_path = test_model_path();
    o.watch = false;
    o.n_ctx = 256;
    o.max_seqs = 4;
    o.no_prefix_cache = !prefix;
    o.verbose = 0;
    size_t block = core_kv_block_size(&m->cfg, 0);
    o.kv_cache_bytes = 18 * block;
    char err[256] = "";
    srv_engine *e = srv_engine_new(&o, err, sizeof err);
    CHECK_MSG(e != NULL, "%s", err);
    enum { N = 4 };
    const char *prompts[N] = {"1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", "Once upon a time, there was",
                              "The first ten prime numbers are", "a b c d e f g h i j k"};
    jobspec specs[N];
    int32_t alone[N][MAXTOK];
    int n_alone[N];
    for (int i = 0; i < N; i++) {
        specs[i] = (jobspec){.prompt = prompts[i], .client = "a", .max_tokens = gen};
        n_alone[i] = run_alone(e, &specs[i], alone[i], NULL);
        CHECK(n_alone[i] > 0);
    }
    jobrun r[N];
    for (int i = 0; i < N; i++) {
        CHECK(job_make(e, &specs[i], &r[i]));
        CHECK_EQ_INT(srv_engine_submit(e, r[i].j), 0);
    }
    for (int i = 0; i < N; i++) {
        srv_job_status st;
        CHECK(wait_done(r[i].j, &st) == SRV_FINISH_LENGTH || st.finish == SRV_FINISH_STOP);
        int32_t got[MAXTOK];
        int ng = job_ids(r[i].j, got, MAXTOK);
        CHECK_MSG(same_ids(alone[i], n_alone[i], got, ng), "job %d under pressure differs", i);
        job_drop(&r[i]);
    }
    CHECK_EQ_INT(wait_stats(e, kv_only_cached, 0), 0); /* the gauges follow the step */
    srv_engine_stats_get(e, out);
    printf("    18-block pool, 4 jobs of %d tokens, %s: %llu preemptions, %llu admission waits, "
           "%llu positions resumed from the prefix cache\n",
           gen, prefix ? "prefix cache" : "no prefix cache",
           (unsigned long long)out->kv_preemptions, (unsigned long long)out->kv_admission_waits,
           (unsigned long long)out->kv_resumed_tokens);
    CHECK(out->kv_preemptions + out->kv_admission_waits > 0);
    CHECK_EQ_INT(out->kv_blocks_used, out->kv_blocks_cached);
    CHECK_EQ_INT(out->kv_blocks_total, 18);
    srv_engine_free(e);
}

TEST(engine_kv_pool_preempts_and_recomputes)
{
    TEST_NEED_MODEL();
    srv_engine_stats s;
    kv_pressure(false, 60, &s);
    CHECK_EQ_INT(s.kv_resumed_tokens, 0);
}

/* With the prefix cache, a preempted sequence's full blocks are cached as it is preempted, and
 * those still there when it runs again are not computed again: the same tokens. */
TEST(engine_kv_preempted_resume_from_prefix_cache)
{
    TEST_NEED_MODEL();
    srv_engine_stats s;
    kv_pressure(true, 100, &s);
    CHECK_MSG(s.kv_preemptions > 0, "no preemption: the test did not test resuming");
    CHECK(s.kv_resumed_tokens > 0);
}

TEST(engine_stop_strings)
{
    TEST_NEED_MODEL();
    srv_engine *e = engine_open(NULL, 2, 0);
    CHECK(e);
    jobspec sp = {.prompt = "The capital of France is", .max_tokens = 16};
    jobrun r;
    CHECK(job_make(e, &sp, &r));
    CHECK_EQ_INT(srv_engine_submit(e, r.j), 0);
    srv_job_status st;
    srv_finish full_finish = wait_done(r.j, &st);
    char full[1024];
    size_t fl = srv_job_text(r.j, 0, full, sizeof full - 1);
    full[fl] = 0;
    job_drop(&r);
    CHECK_MSG(fl >= 12, "text too short to cut: \"%s\"", full);

    /* A stop string from the middle of the text: generation ends before it. */
    char stop[8];
    size_t at = fl / 2;
    while (at > 0 && (full[at] & 0xC0) == 0x80)
        at--;
    memcpy(stop, full + at, 4);
    stop[4] = 0;
    const char *first = strstr(full, stop);
    sp.stop[0] = "never-in-this-text";
    sp.stop[1] = stop;
    sp.n_stop = 2;
    CHECK(job_make(e, &sp, &r));
    CHECK_EQ_INT(srv_engine_submit(e, r.j), 0);
    wait_done(r.j, &st);
    char text[1024];
    size_t tl = srv_job_text(r.j, 0, text, sizeof text - 1);
    text[tl] = 0;
    CHECK_EQ_INT(st.finish, SRV_FINISH_STOP);
    CHECK_EQ_INT(tl, (size_t)(first - full));
    CHECK(memcmp(text, full, tl) == 0);
    CHECK(!strstr(text, stop));
    srv_job_token t[MAXTOK];
    int n = srv_job_tokens(r.j, 0, t, MAXTOK);
    CHECK_EQ_INT(n, st.completion_tokens);
    CHECK(n > 0 && t[n - 1].text_end == tl);
    job_drop(&r);

    /* A stop string whose start is the text's end is held back, then released at the end. */
    char tail[16];
    snprintf(tail, sizeof tail, "%c\x01zz", full[fl - 1]);
    sp.stop[1] = tail;
    CHECK(job_make(e, &sp, &r));
    CHECK_EQ_INT(srv_engine_submit(e, r.j), 0);
    wait_done(r.j, &st);
    tl = srv_job_text(r.j, 0, text, sizeof text - 1);
    text[tl] = 0;
    CHECK_EQ_INT(st.finish, full_finish);
    CHECK_EQ_STR(text, full);
    job_drop(&r);
    srv_engine_free(e);
}

TEST(engine_max_tokens)
{
    TEST_NEED_MODEL();
    srv_engine *e = engine_open(NULL, 2, 0);
    CHECK(e);
    jobspec sp = {.prompt = "Count with me: one, two, three,", .max_tokens = 3};
    jobrun r;
    CHECK(job_make(e, &sp, &r));
    CHECK_EQ_INT(srv_engine_submit(e, r.j), 0);
    srv_job_status st;
    wait_done(r.j, &st);
    CHECK_EQ_INT(st.finish, SRV_FINISH_LENGTH);
    CHECK_EQ_INT(st.completion_tokens, 3);
    job_drop(&r);

    sp.max_tokens = 0;
    CHECK(job_make(e, &sp, &r));
    CHECK_EQ_INT(srv_engine_submit(e, r.j), 0);
    wait_done(r.j, &st);
    CHECK_EQ_INT(st.finish, SRV_FINISH_LENGTH);
    CHECK_EQ_INT(st.completion_tokens, 0);
    CHECK_EQ_INT(st.text_len, 0);
    CHECK(st.prompt_tokens > 5);
    for (double t0 = now_s(); atomic_load(&r.notes) < 1 && now_s() - t0 < WAIT_S;)
        usleep(500);
    CHECK_EQ_INT(atomic_load(&r.notes), 1);
    job_drop(&r);

    srv_engine_free(e);

    /* The end of the context: a prompt of n_ctx - 2 tokens leaves room for 2. */
    e = engine_open_ctx(NULL, 1, 0, 16);
    CHECK(e);
    CHECK_EQ_INT(srv_engine_n_ctx(e), 16);
    int32_t ids[16];
    for (int i = 0; i < 16; i++)
        ids[i] = 504 + i % 7;
    srv_job_params p = {.prompt = ids, .n_prompt = 14, .max_tokens = 100, .logprobs = -1};
    core_sampler_params_default(&p.sampling);
    p.sampling.temperature = 0;
    char err[128];
    srv_job *j = srv_job_new(&p, NULL, NULL, err, sizeof err);
    CHECK(j);
    CHECK_EQ_INT(srv_engine_submit(e, j), 0);
    wait_done(j, &st);
    CHECK_EQ_INT(st.finish, SRV_FINISH_LENGTH);
    CHECK(st.completion_tokens <= 2);
    srv_job_unref(j);
    /* A prompt that does not fit at all is refused (400). */
    p.n_prompt = 16;
    j = srv_job_new(&p, NULL, NULL, err, sizeof err);
    CHECK(j);
    CHECK_EQ_INT(srv_engine_submit(e, j), 0);
    CHECK_EQ_INT(wait_done(j, &st), SRV_FINISH_ERROR);
    CHECK_EQ_STR(srv_err_name(st.err), "bad_input"); /* a 400 on the wire (test_http_errors) */
    srv_job_unref(j);
    /* Bad parameters never make a job. */
    p.n_prompt = 0;
    CHECK(!srv_job_new(&p, NULL, NULL, err, sizeof err));
    p.n_prompt = 3;
    p.max_tokens = -1;
    CHECK(!srv_job_new(&p, NULL, NULL, err, sizeof err));
    p.max_tokens = 1;
    p.sampling.temperature = -1;
    CHECK(!srv_job_new(&p, NULL, NULL, err, sizeof err));
    srv_engine_free(e);
}

/* stop_ids, min_tokens, ignore_eos and logit_bias as the scheduler applies them, and the job
 * parameters srv_job_new refuses. */
TEST(engine_token_controls)
{
    TEST_NEED_MODEL();
    srv_engine *e = engine_open(NULL, 2, 0);
    CHECK(e);
    int32_t ids[64];
    int n = tokens_of(srv_engine_tokenizer(e), "Count with me: one, two, three,", ids, 64);
    srv_job_params p = {.prompt = ids, .n_prompt = n, .max_tokens = 6, .logprobs = 0};
    core_sampler_params_default(&p.sampling);
    p.sampling.temperature = 0;
    char err[160];
    srv_job_status st;
    /* The greedy tokens, then a stop id at the first occurrence of the third one. */
    srv_job *j = srv_job_new(&p, NULL, NULL, err, sizeof err);
    CHECK(j && srv_engine_submit(e, j) == 0);
    CHECK_EQ_INT(wait_done(j, &st), SRV_FINISH_LENGTH);
    srv_job_token tk[6];
    CHECK_EQ_INT(srv_job_tokens(j, 0, tk, 6), 6);
    srv_job_unref(j);
    int k = 0;
    while (tk[k].id != tk[2].id)
        k++;
    p.stop_ids = &tk[2].id;
    p.n_stop_ids = 1;
    j = srv_job_new(&p, NULL, NULL, err, sizeof err);
    CHECK(j && srv_engine_submit(e, j) == 0);
    CHECK_EQ_INT(wait_done(j, &st), SRV_FINISH_STOP);
    CHECK_EQ_INT(st.completion_tokens, k); /* the stop token is not counted or emitted */
    srv_job_unref(j);
    /* min_tokens past it masks the stop id until then: no stop at k. */
    p.min_tokens = 6;
    j = srv_job_new(&p, NULL, NULL, err, sizeof err);
    CHECK(j && srv_engine_submit(e, j) == 0);
    CHECK_EQ_INT(wait_done(j, &st), SRV_FINISH_LENGTH);
    CHECK_EQ_INT(st.completion_tokens, 6);
    srv_job_unref(j);
    /* A +100 bias makes greedy pick that token at every step, logprob still the model's. */
    p.min_tokens = 0;
    p.n_stop_ids = 0;
    p.stop_ids = NULL;
    int32_t bid = 504;
    float bias = 100.0f;
    p.bias_ids = &bid;
    p.bias = &bias;
    p.n_bias = 1;
    p.max_tokens = 3;
    j = srv_job_new(&p, NULL, NULL, err, sizeof err);
    CHECK(j && srv_engine_submit(e, j) == 0);
    CHECK_EQ_INT(wait_done(j, &st), SRV_FINISH_LENGTH);
    CHECK_EQ_INT(srv_job_tokens(j, 0, tk, 6), 3);
    for (int i = 0; i < 3; i++)
        CHECK_MSG(tk[i].id == 504 && tk[i].logprob < -1.0f, "token %d: id %d logprob %g", i,
                  (int)tk[i].id, (double)tk[i].logprob);
    srv_job_unref(j);
    /* An id outside the vocabulary ends the job with bad_input (the HTTP layer refuses it first).
     */
    bid = 1 << 30;
    j = srv_job_new(&p, NULL, NULL, err, sizeof err);
    CHECK(j && srv_engine_submit(e, j) == 0);
    CHECK_EQ_INT(wait_done(j, &st), SRV_FINISH_ERROR);
    CHECK_EQ_STR(srv_err_name(st.err), "bad_input");
    srv_job_unref(j);
    /* Refused before a job exists. */
    bias = NAN;
    bid = 5;
    CHECK(!srv_job_new(&p, NULL, NULL, err, sizeof err));
    bias = 1;
    p.n_bias = SRV_JOB_BIAS_MAX + 1;
    CHECK(!srv_job_new(&p, NULL, NULL, err, sizeof err));
    p.n_bias = 0;
    p.n_stop_ids = SRV_JOB_STOP_IDS_MAX + 1;
    p.stop_ids = ids;
    CHECK(!srv_job_new(&p, NULL, NULL, err, sizeof err));
    p.n_stop_ids = 0;
    p.min_tokens = -1;
    CHECK(!srv_job_new(&p, NULL, NULL, err, sizeof err));
    srv_engine_free(e);
}

TEST(engine_logprobs)
{
    TEST_NEED_MODEL();
    srv_engine *e = engine_open(NULL, 2, 0);
    CHECK(e);
    for (int pass = 0; pass < 2; pass++) {
        jobspec sp = {.prompt = "The capital of France is",
                      .max_tokens = 6,
                      .logprobs = 5,
                      .temperature = pass ? 1.0f : 0.0f,
                      .seed = 7};
        jobrun r;
        CHECK(job_make(e, &sp, &r));
        CHECK_EQ_INT(srv_engine_submit(e, r.j), 0);
        srv_job_status st;
        wait_done(r.j, &st);
        srv_job_token t[MAXTOK];
        int n = srv_job_tokens(r.j, 0, t, MAXTOK);
        CHECK(n > 0);
        for (int i = 0; i < n; i++) {
            CHECK_MSG(t[i].logprob <= 0 && isfinite(t[i].logprob), "token %d logprob %g", i,
                      (double)t[i].logprob);
            CHECK_EQ_INT(t[i].n_top, 5);
            for (int k = 1; k < t[i].n_top; k++)
                CHECK(t[i].top_logprobs[k] <= t[i].top_logprobs[k - 1]);
            CHECK(t[i].logprob <= t[i].top_logprobs[0]);
            if (pass == 0) {
                CHECK_EQ_INT(t[i].id, t[i].top_ids[0]);
                CHECK(t[i].logprob == t[i].top_logprobs[0]);
            }
        }
        job_drop(&r);
    }
    srv_engine_free(e);
}

/* Same seed, same tokens; another seed usually not (checked over two seeds). */
TEST(engine_seeded_sampling_repeats)
{
    TEST_NEED_MODEL();
    srv_engine *e = engine_open(NULL, 2, 0);
    CHECK(e);
    jobspec sp = {.prompt = "Once upon a time", .max_tokens = 10, .temperature = 1.0f, .seed = 42};
    int32_t a[MAXTOK], b[MAXTOK];
    int na = run_alone(e, &sp, a, NULL), nb = run_alone(e, &sp, b, NULL);
    CHECK(na > 0);
    CHECK(same_ids(a, na, b, nb));
    srv_engine_free(e);
}

TEST(engine_cancel_frees_slot)
{
    TEST_NEED_MODEL();
    srv_engine *e = engine_open(NULL, 2, 0);
    CHECK(e);
    jobspec sp = {.prompt = "1, 2, 3, 4, 5, 6,", .max_tokens = 200};
    jobrun r;
    CHECK(job_make(e, &sp, &r));
    CHECK_EQ_INT(srv_engine_submit(e, r.j), 0);
    srv_job_status st;
    double t0 = now_s();
    do {
        srv_job_status_get(r.j, &st);
        usleep(500);
    } while (st.n_tokens < 2 && st.finish == SRV_FINISH_NONE && now_s() - t0 < WAIT_S);
    CHECK_EQ_INT(st.finish, SRV_FINISH_NONE);
    srv_engine_stats s;
    srv_engine_stats_get(e, &s);
    CHECK_EQ_INT(s.running, 1);
    srv_job_cancel(r.j);
    srv_job_cancel(r.j);
    CHECK_EQ_INT(wait_done(r.j, &st), SRV_FINISH_CANCELLED);
    CHECK(st.completion_tokens < 200);
    CHECK_EQ_INT(wait_stats(e, running_is, 0), 0);
    srv_engine_stats_get(e, &s);
    /* the sequence's blocks are gone; its full ones stay in the prefix cache */
    CHECK_EQ_INT(s.kv_blocks_used, s.kv_blocks_cached);
    CHECK_EQ_INT(s.kv_bytes, (size_t)s.kv_blocks_cached * s.kv_block_bytes);
    CHECK(s.kv_blocks_cached > 0);
    CHECK_EQ_INT(s.jobs_cancelled, 1);
    CHECK(srv_engine_idle(e));
    srv_job_cancel(r.j); /* after the end: nothing happens */
    job_drop(&r);
    /* The slot works again. */
    sp.max_tokens = 2;
    int32_t ids[MAXTOK];
    CHECK_EQ_INT(run_alone(e, &sp, ids, &st), 2);
    srv_engine_free(e);
}

TEST(engine_queue_limit_and_drain)
{
    TEST_NEED_MODEL();
    srv_engine *e = engine_open(NULL, 1, 2);
    CHECK(e);
    jobspec sp = {.prompt = "1, 2, 3, 4, 5, 6,", .max_tokens = 200};
    jobrun r[4];
    for (int i = 0; i < 4; i++)
        CHECK(job_make(e, &sp, &r[i]));
    CHECK_EQ_INT(srv_engine_submit(e, r[0].j), 0);
    CHECK_EQ_INT(wait_stats(e, running_is, 1), 0);
    CHECK_EQ_INT(srv_engine_submit(e, r[1].j), 0);
    CHECK_EQ_INT(srv_engine_submit(e, r[2].j), 0);
    CHECK_EQ_INT(srv_engine_submit(e, r[3].j), -EAGAIN);
    CHECK_EQ_INT(srv_engine_submit(e, r[1].j), -EINVAL);
    CHECK_EQ_INT(wait_stats(e, waiting_is, 2), 0);
    srv_engine_stats s;
    srv_engine_stats_get(e, &s);
    CHECK_EQ_INT(s.jobs_rejected, 1);
    CHECK_EQ_INT(s.running, 1);
    /* A waiting job cancelled leaves the queue; the freed place takes the refused job. */
    srv_job_cancel(r[2].j);
    srv_job_status st;
    CHECK_EQ_INT(wait_done(r[2].j, &st), SRV_FINISH_CANCELLED);
    CHECK_EQ_INT(st.completion_tokens, 0);
    CHECK_EQ_INT(wait_stats(e, waiting_is, 1), 0);
    job_drop(&r[3]);
    sp.max_tokens = 3;
    CHECK(job_make(e, &sp, &r[3]));
    CHECK_EQ_INT(srv_engine_submit(e, r[3].j), 0);

    /* Drain: no new jobs, the others run to their end. */
    srv_engine_drain(e);
    jobrun late;
    CHECK(job_make(e, &sp, &late));
    CHECK_EQ_INT(srv_engine_submit(e, late.j), -ESHUTDOWN);
    job_drop(&late);
    CHECK(!srv_engine_idle(e));
    srv_job_cancel(r[0].j); /* shorten the test: the queue behind it then runs */
    CHECK_EQ_INT(wait_done(r[0].j, &st), SRV_FINISH_CANCELLED);
    CHECK_EQ_INT(wait_stats(e, running_is, 1), 0);
    srv_job_cancel(r[1].j);
    CHECK_EQ_INT(wait_done(r[1].j, &st), SRV_FINISH_CANCELLED);
    CHECK_EQ_INT(wait_done(r[3].j, &st), SRV_FINISH_LENGTH);
    CHECK_EQ_INT(st.completion_tokens, 3);
    CHECK(srv_engine_idle(e));
    for (int i = 0; i < 4; i++)
        job_drop(&r[i]);
    srv_engine_free(e);
}

/* Jobs are finished as CANCELLED when the engine goes away under them, and outlive it. */
TEST(engine_free_cancels_leftovers)
{
    TEST_NEED_MODEL();
    srv_engine *e = engine_open(NULL, 1, 0);
    CHECK(e);
    jobspec sp = {.prompt = "1, 2, 3, 4, 5, 6,", .max_tokens = 200};
    jobrun r[3];
    for (int i = 0; i < 3; i++) {
        CHECK(job_make(e, &sp, &r[i]));
        CHECK_EQ_INT(srv_engine_submit(e, r[i].j), 0);
    }
    CHECK_EQ_INT(wait_stats(e, running_is, 1), 0);
    srv_engine_free(e);
    for (int i = 0; i < 3; i++) {
        srv_job_status st;
        srv_job_status_get(r[i].j, &st);
        CHECK_EQ_INT(st.finish, SRV_FINISH_CANCELLED);
        CHECK(atomic_load(&r[i].notes) >= 1);
        srv_job_cancel(r[i].j);
        job_drop(&r[i]);
    }
}

/* One slot; client a queues three jobs (two selections), client b one: admission alternates
 * clients, and within a client its selections: a1 b1 a3 a2. */
TEST(engine_fair_admission)
{
    TEST_NEED_MODEL();
    srv_engine *e = engine_open(FIX, 1, 0);
    CHECK(e);
    int32_t ids[MAXTOK];
    jobspec warm = {.prompt = "Hi", .item = "qv_r4", .max_tokens = 1};
    CHECK(run_alone(e, &warm, ids, NULL) >= 0); /* qv_r4 resident */
    jobspec block = {.prompt = "1, 2, 3, 4, 5, 6,", .client = "z", .max_tokens = 200};
    jobrun rb;
    CHECK(job_make(e, &block, &rb));
    CHECK_EQ_INT(srv_engine_submit(e, rb.j), 0);
    CHECK_EQ_INT(wait_stats(e, running_is, 1), 0);
    const jobspec specs[4] = {
        {.prompt = "a1", .client = "a", .max_tokens = 2},
        {.prompt = "a2", .client = "a", .max_tokens = 2},
        {.prompt = "a3", .client = "a", .item = "qv_r4", .max_tokens = 2},
        {.prompt = "b1", .client = "b", .max_tokens = 2},
    };
    jobrun r[4];
    for (int i = 0; i < 4; i++) {
        CHECK(job_make(e, &specs[i], &r[i]));
        CHECK_EQ_INT(srv_engine_submit(e, r[i].j), 0);
    }
    CHECK_EQ_INT(wait_stats(e, waiting_is, 4), 0);
    srv_job_cancel(rb.j);
    double end[4];
    srv_job_status st;
    for (int i = 0; i < 4; i++) {
        CHECK_EQ_INT(wait_done(r[i].j, &st), SRV_FINISH_LENGTH);
        end[i] = st.total_ms; /* from each job's own submit */
    }
    /* Submits were microseconds apart; one slot means strictly sequential runs, each several
     * milliseconds long, so the order of total_ms is the order of admission. */
    CHECK_MSG(end[0] < end[3] && end[3] < end[2] && end[2] < end[1],
              "ends a1 %.1f a2 %.1f a3 %.1f b1 %.1f ms", end[0], end[1], end[2], end[3]);
    job_drop(&rb);
    for (int i = 0; i < 4; i++)
        job_drop(&r[i]);
    srv_engine_free(e);
}

/* One slot: a job whose adapters are not resident yet waits for the load without holding the
 * slot, so a base job submitted after it runs first; then it runs with the right tokens. */
TEST(engine_adapter_load_does_not_block)
{
    TEST_NEED_MODEL();
    srv_engine *e = engine_open(FIX, 1, 0);
    CHECK(e);
    jobspec ja = {.prompt = "Le chat est assis sur",
                  .select = "tree/fr/legal/alice",
                  .client = "x",
                  .max_tokens = 6};
    jobspec jb = {.prompt = "The capital of France is", .client = "x", .max_tokens = 6};
    jobrun ra, rb;
    CHECK(job_make(e, &ja, &ra));
    CHECK(job_make(e, &jb, &rb));
    adapter_registry_stats rs0;
    adapter_registry_stats_get(srv_engine_registry(e), &rs0);
    CHECK_EQ_INT(rs0.resident, 0);
    CHECK_EQ_INT(srv_engine_submit(e, ra.j), 0);
    CHECK_EQ_INT(srv_engine_submit(e, rb.j), 0);
    srv_job_status sa, sb;
    CHECK_EQ_INT(wait_done(rb.j, &sb), SRV_FINISH_LENGTH);
    CHECK_EQ_INT(wait_done(ra.j, &sa), SRV_FINISH_LENGTH);
    CHECK_MSG(sa.queue_ms >= sb.total_ms,
              "adapter job admitted after %.1f ms, base job done after "
              "%.1f ms",
              sa.queue_ms, sb.total_ms);
    int32_t ref[MAXTOK], got[MAXTOK];
    int nr =
        reference(test_shared_model(), srv_engine_tokenizer(e), ja.prompt, ja.select, NULL, 6, ref);
    CHECK(same_ids(ref, nr, got, job_ids(ra.j, got, MAXTOK)));
    adapter_registry_stats rs1;
    adapter_registry_stats_get(srv_engine_registry(e), &rs1);
    CHECK_EQ_INT(rs1.resident, 3);
    job_drop(&ra);
    job_drop(&rb);

    /* With slots to spare, a load happens while a base job keeps generating. */
    srv_engine_free(e);
    e = engine_open(FIX, 4, 0);
    CHECK(e);
    jobspec base = {.prompt = "1, 2, 3, 4, 5, 6,", .max_tokens = 40};
    jobspec ad = {.prompt = "Le chat", .item = "all_rslora_r8", .max_tokens = 3};
    CHECK(job_make(e, &base, &rb));
    CHECK(job_make(e, &ad, &ra));
    CHECK_EQ_INT(srv_engine_submit(e, rb.j), 0);
    CHECK_EQ_INT(wait_stats(e, running_is, 1), 0);
    CHECK_EQ_INT(srv_engine_submit(e, ra.j), 0);
    CHECK_EQ_INT(wait_done(ra.j, &sa), SRV_FINISH_LENGTH);
    srv_job_status_get(rb.j, &sb);
    int base_tokens_then = sb.n_tokens;
    CHECK_EQ_INT(wait_done(rb.j, &sb), SRV_FINISH_LENGTH);
    printf("    base job had %d of 40 tokens when the adapter job (load + 3 tokens) ended\n",
           base_tokens_then);
    CHECK_EQ_INT(sb.completion_tokens, 40);
    job_drop(&ra);
    job_drop(&rb);
    srv_engine_free(e);
}

static int write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fputs(text, f);
    return fclose(f);
}

TEST(engine_adapter_errors)
{
    TEST_NEED_MODEL();
    char root[64], dir[128], path[192];
    snprintf(root, sizeof root, "%s", tu_tmpdir());
    snprintf(dir, sizeof dir, "%s/broken", root);
    CHECK(tu_mkdirs(dir) == 0);
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    CHECK(write_file(path, "{\"r\":4,\"lora_alpha\":8,\"target_modules\":[\"q_proj\"]}") == 0);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    CHECK(write_file(path, "not a safetensors file") == 0);

    srv_engine *e = engine_open(root, 2, 0);
    CHECK(e);
    jobspec sp = {.prompt = "Hello", .item = "broken", .max_tokens = 4};
    jobrun r;
    CHECK(job_make(e, &sp, &r));
    CHECK_EQ_INT(srv_engine_submit(e, r.j), 0);
    srv_job_status st;
    CHECK_EQ_INT(wait_done(r.j, &st), SRV_FINISH_ERROR);
    CHECK_EQ_STR(srv_err_name(st.err), "unavailable"); /* a 503 */
    CHECK_MSG(strstr(st.error, "adapter 'broken' failed to load: "), "message: %s", st.error);
    CHECK_EQ_INT(st.completion_tokens, 0);
    job_drop(&r);

    /* A node that vanished after resolution (or never existed): 404. */
    int32_t ids[4] = {504, 3575, 282, 4649};
    srv_job_params p = {.prompt = ids, .n_prompt = 4, .max_tokens = 4, .logprobs = -1};
    core_sampler_params_default(&p.sampling);
    p.sel.n = 1;
    snprintf(p.sel.items[0].id, sizeof p.sel.items[0].id, "gone");
    p.sel.items[0].weight = 1;
    char err[128];
    srv_job *j = srv_job_new(&p, NULL, NULL, err, sizeof err);
    CHECK(j);
    CHECK_EQ_INT(srv_engine_submit(e, j), 0);
    CHECK_EQ_INT(wait_done(j, &st), SRV_FINISH_ERROR);
    CHECK_EQ_STR(srv_err_name(st.err), "not_found"); /* a 404, model_not_found */
    srv_job_unref(j);
    /* A base job still runs. */
    sp.item = NULL;
    CHECK_EQ_INT(run_alone(e, &sp, ids, &st), 4);
    srv_engine_stats s;
    srv_engine_stats_get(e, &s);
    CHECK_EQ_INT(s.jobs_failed, 2);
    srv_engine_free(e);

    /* Without a registry, any adapter is unknown. */
    e = engine_open(NULL, 2, 0);
    CHECK(e);
    CHECK(!srv_engine_registry(e));
    j = srv_job_new(&p, NULL, NULL, err, sizeof err);
    CHECK(j);
    CHECK_EQ_INT(srv_engine_submit(e, j), 0);
    CHECK_EQ_INT(wait_done(j, &st), SRV_FINISH_ERROR);
    CHECK_EQ_STR(srv_err_name(st.err), "not_found");
    srv_job_unref(j);
    srv_engine_free(e);
    tu_rmrf(root);
}

/* A group of n choices (srv_engine_submit_group): the prompt is computed once (the others
 * compute only its last position, with or without the prefix cache), choice i gives what a job
 * alone gives with seed + i, and a group whose jobs differ is refused. */
static void group_run(const char *select, bool prefix_cache)
{
    core_model *m = test_shared_model();
    srv_engine_opts o;
    srv_engine_opts_default(&o);
    o.model = m;
    o.model_path = test_model_path();
    o.registry_dir = select ? FIX : NULL;
    o.watch = false;
    o.verbose = 0;
    o.n_ctx = 256;
    o.max_seqs = 4;
    o.no_prefix_cache = !prefix_cache;
    char err[256] = "";
    srv_engine *e = srv_engine_new(&o, err, sizeof err);
    CHECK_MSG(e, "%s", err);
    if (!e)
        return;
    enum { N = 4 };
    jobspec sp = {.prompt = "The history of the city begins with a small village by the river, "
                            "where fishermen and farmers traded their goods every week, and",
                  .select = select,
                  .max_tokens = 8,
                  .temperature = 1.0f,
                  .seed = 42};
    jobrun r[N];
    srv_job *jobs[N];
    for (int i = 0; i < N; i++) {
        sp.seed = 42 + (uint64_t)i;
        jobs[i] = job_make(e, &sp, &r[i]);
        CHECK(jobs[i]);
    }
    srv_job_status st;
    srv_job_status_get(jobs[0], &st);
    int n_prompt = st.prompt_tokens;
    CHECK(n_prompt > 20);
    CHECK_EQ_INT(srv_engine_submit_group(e, jobs, N), 0);
    CHECK_EQ_INT(srv_engine_submit_group(e, jobs, N), -EINVAL); /* submitted already */
    int32_t got[N][MAXTOK], n_got[N];
    for (int i = 0; i < N; i++) {
        CHECK(wait_done(jobs[i], &st) == SRV_FINISH_LENGTH || st.finish == SRV_FINISH_STOP);
        n_got[i] = job_ids(jobs[i], got[i], MAXTOK);
    }
    srv_engine_stats s;
    srv_engine_stats_get(e, &s);
    CHECK_EQ_INT((int)s.prompt_tokens, n_prompt + N - 1);
    CHECK_EQ_INT((int)s.shared_prompt_tokens, (N - 1) * (n_prompt - 1));
    bool differ = false;
    for (int i = 0; i < N; i++) {
        int32_t alone[MAXTOK];
        sp.seed = 42 + (uint64_t)i;
        int n = run_alone(e, &sp, alone, NULL);
        CHECK_MSG(same_ids(got[i], n_got[i], alone, n), "choice %d", i);
        differ = differ || n_got[i] != n_got[0] ||
                 memcmp(got[i], got[0], (size_t)n_got[0] * sizeof(int32_t)) != 0;
        job_drop(&r[i]);
    }
    CHECK_MSG(differ, "4 choices at temperature 1 all gave the same tokens");
    /* jobs that are not one request's choices */
    jobspec other = sp;
    other.prompt = "Another prompt";
    jobrun ra, rb;
    jobs[0] = job_make(e, &sp, &ra);
    jobs[1] = job_make(e, &other, &rb);
    CHECK(jobs[0] && jobs[1]);
    CHECK_EQ_INT(srv_engine_submit_group(e, jobs, 2), -EINVAL);
    CHECK_EQ_INT(srv_engine_submit_group(e, jobs, 0), -EINVAL);
    CHECK_EQ_INT(srv_engine_submit(e, jobs[1]), 0); /* untouched by the refusal */
    wait_done(jobs[1], &st);
    job_drop(&ra);
    job_drop(&rb);
    srv_engine_free(e);
}

TEST(engine_group_shares_prefill)
{
    TEST_NEED_MODEL();
    group_run(NULL, false);
    group_run(NULL, true);
    group_run("tree/fr/legal/alice", false);
}

/* A group whose leader ends first (cancelled before the engine takes it): the others do not
 * wait for it, they compute the prompt themselves and give what they give alone. */
TEST(engine_group_without_leader)
{
    TEST_NEED_MODEL();
    srv_engine *e = engine_open(NULL, 4, 0);
    CHECK(e);
    jobspec sp = {.prompt = "The lighthouse keeper", .max_tokens = 6, .temperature = 1.0f};
    jobrun r[3];
    srv_job *jobs[3];
    for (int i = 0; i < 3; i++) {
        sp.seed = 100 + (uint64_t)i;
        jobs[i] = job_make(e, &sp, &r[i]);
        CHECK(jobs[i]);
    }
    srv_job_cancel(jobs[0]);
    CHECK_EQ_INT(srv_engine_submit_group(e, jobs, 3), 0);
    srv_job_status st;
    CHECK_EQ_INT(wait_done(jobs[0], &st), SRV_FINISH_CANCELLED);
    for (int i = 1; i < 3; i++) {
        CHECK_EQ_INT(wait_done(jobs[i], &st), SRV_FINISH_LENGTH);
        int32_t got[MAXTOK], alone[MAXTOK];
        int n = job_ids(jobs[i], got, MAXTOK);
        sp.seed = 100 + (uint64_t)i;
        CHECK(same_ids(got, n, alone, run_alone(e, &sp, alone, NULL)));
    }
    srv_engine_stats s;
    srv_engine_stats_get(e, &s);
    CHECK_EQ_INT((int)s.shared_prompt_tokens, 0);
    for (int i = 0; i < 3; i++)
        job_drop(&r[i]);
    srv_engine_free(e);
}

TEST(engine_new_errors)
{
    srv_engine_opts o;
    srv_engine_opts_default(&o);
    char err[256] = "";
    CHECK(!srv_engine_new(&o, err, sizeof err));
    CHECK(err[0]);
    o.model_path = "/nonexistent/model.gguf";
    CHECK(!srv_engine_new(&o, err, sizeof err));
    CHECK(strstr(err, "/nonexistent/model.gguf"));
    TEST_NEED_MODEL();
    o.model = test_shared_model();
    o.model_path = NULL;
    o.verbose = 0;
    o.registry_dir = "/nonexistent/registry";
    CHECK(!srv_engine_new(&o, err, sizeof err));
    CHECK_MSG(strstr(err, "/nonexistent/registry"), "message: %s", err);
}

/* Speculative decoding (prompt lookup) changes no token: greedy and seeded sampling give the
 * same tokens with and without drafts, with and without adapters, alone and three at once in
 * one batch; on a prompt that repeats itself most drafts are accepted. */
TEST(engine_speculative_same_tokens)
{
    TEST_NEED_MODEL();
    srv_engine *e = engine_open(FIX, 4, 0);
    CHECK(e);
    const char *prompt = "one two three four five six seven eight nine ten, one two three four "
                         "five six seven eight nine ten, one two three four";
    const char *selects[2] = {NULL, "tree/fr/legal/alice"};
    float temps[2] = {0.0f, 0.8f};
    srv_engine_stats s0, s1;
    srv_engine_stats_get(e, &s0);
    for (int c = 0; c < 4; c++) {
        jobspec off = {.prompt = prompt,
                       .select = selects[c & 1],
                       .temperature = temps[c >> 1],
                       .seed = 11,
                       .max_tokens = 32,
                       .spec_k = -1};
        jobspec on = off;
        on.spec_k = 8;
        on.spec_ngram = 2;
        int32_t a[MAXTOK], b[MAXTOK];
        int na = run_alone(e, &off, a, NULL), nb = run_alone(e, &on, b, NULL);
        CHECK_MSG(na > 0 && same_ids(a, na, b, nb),
                  "%s, temperature %.1f: %d tokens without drafts, %d with, not the same",
                  selects[c & 1] ? selects[c & 1] : "base", (double)temps[c >> 1], na, nb);
        /* three at once, in one batch (each with its own drafts) */
        jobrun r[3];
        for (int i = 0; i < 3; i++)
            CHECK(job_make(e, &on, &r[i]));
        for (int i = 0; i < 3; i++)
            CHECK_EQ_INT(srv_engine_submit(e, r[i].j), 0);
        for (int i = 0; i < 3; i++) {
            srv_job_status st;
            wait_done(r[i].j, &st);
            int32_t t[MAXTOK];
            int nt = job_ids(r[i].j, t, MAXTOK);
            CHECK_MSG(same_ids(a, na, t, nt), "batched job %d differs from plain decoding", i);
            job_drop(&r[i]);
        }
    }
    srv_engine_stats_get(e, &s1);
    uint64_t drafted = s1.spec_draft_tokens - s0.spec_draft_tokens,
             accepted = s1.spec_accepted_tokens - s0.spec_accepted_tokens;
    printf("    drafts: %llu verified, %llu accepted\n", (unsigned long long)drafted,
           (unsigned long long)accepted);
    CHECK_MSG(drafted > 0 && accepted * 2 > drafted, "%llu of %llu drafts accepted",
              (unsigned long long)accepted, (unsigned long long)drafted);
    srv_engine_free(e);
}
