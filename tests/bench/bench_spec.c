/* `make bench`, speculative decoding: the engine (no HTTP) decoding with and without prompt-lookup
 * drafts, on a copy task (the answer repeats the prompt: most drafts are accepted) and on free
 * generation (few are), one stream and several at once, up to a full batch where the scheduler
 * drafts nothing (the rows would cost their full compute; server/spec_gate.h). Plain and
 * speculative runs alternate and each figure is the median of three, so the host's drift hits
 * both alike. tok/s are of the decode phase: the tokens after each stream's first over the time
 * from the last stream's first token to the last end (the prompts are prefilled in full steps,
 * so the streams start together).
 *
 * usage: bench_spec [-m MODEL] [-n TOKENS] [--streams N] [--int8] [--json FILE]
 * --int8: int8 activations (the server's --int8);
 * --streams: only the copy task and free generation, at N streams (to place spec_gate.h's limits:
 * build with EXTRA_CFLAGS=-DSRV_SPEC_FREE_DECODE=N to let every sequence draft there);
 * --json: the results as one JSON document (schema adaptree-bench-spec/1), written at the end. */
#include <cJSON.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/kernels/blas.h"
#include "core/text/tokenizer.h"
#include "server/engine.h"
#include "tests/bench/bench_util.h"

#define MAX_JOBS 16

static const char *const COPY =
    "<|im_start|>user\nCopy this text exactly, word for word:\n\nAdapters are small low-rank "
    "matrices added to the frozen weights of a base model. The server keeps one base model in "
    "memory and loads many adapters from a tree of languages, domains and users. Every request "
    "names its adapters, and all the requests of a step share one matrix product per layer, "
    "whatever adapters they use. Loading an adapter takes milliseconds, and evicting one frees "
    "its memory at once.<|im_end|>\n<|im_start|>assistant\n";
static const char *const FREE = "<|im_start|>user\nWrite a short story about a cat who learns "
                                "to fly.<|im_end|>\n<|im_start|>assistant\n";

typedef struct run {
    double tok_s;          /* tokens after each stream's first / time from the last first token
                              to the last end: the decode phase, all streams together */
    uint64_t drafted, acc; /* draft tokens verified and accepted during the run */
} run;

/* n_jobs streams of prompt, each max_tokens tokens (EOG ignored, so every run makes as many),
 * greedy, with spec_k drafts a step (-1: off). 0, or -1 on failure. */
static int measure(srv_engine *e, const int32_t *ids, int n_ids, int n_jobs, int max_tokens,
                   int spec_k, run *out)
{
    srv_job *jobs[MAX_JOBS];
    srv_engine_stats s0, s1;
    srv_engine_stats_get(e, &s0);
    char err[256] = "";
    for (int i = 0; i < n_jobs; i++) {
        srv_job_params p = {.prompt = ids,
                            .n_prompt = n_ids,
                            .max_tokens = max_tokens,
                            .ignore_eos = true,
                            .spec_k = spec_k,
                            .logprobs = -1};
        core_sampler_params_default(&p.sampling);
        p.sampling.temperature = 0;
        jobs[i] = srv_job_new(&p, NULL, NULL, err, sizeof err);
        if (!jobs[i]) {
            fprintf(stderr, "bench_spec: %s\n", err);
            return -1;
        }
    }
    double t0 = bench_now();
    for (int i = 0; i < n_jobs; i++)
        if (srv_engine_submit(e, jobs[i]) != 0) {
            fprintf(stderr, "bench_spec: submit refused\n");
            return -1;
        }
    int done = 0, tokens = 0;
    double first = 0, end = 0;
    while (done < n_jobs) {
        usleep(200);
        done = 0;
        for (int i = 0; i < n_jobs; i++) {
            srv_job_status st;
            srv_job_status_get(jobs[i], &st);
            done += st.finish != SRV_FINISH_NONE;
        }
    }
    end = bench_now() - t0;
    for (int i = 0; i < n_jobs; i++) {
        srv_job_status st;
        srv_job_status_get(jobs[i], &st);
        if (st.finish != SRV_FINISH_LENGTH) {
            fprintf(stderr, "bench_spec: a job ended %d: %s\n", (int)st.finish, st.error);
            return -1;
        }
        tokens += st.completion_tokens - 1;
        first = st.first_token_ms / 1e3 > first ? st.first_token_ms / 1e3 : first;
        srv_job_unref(jobs[i]);
    }
    srv_engine_stats_get(e, &s1);
    out->tok_s = (double)tokens / (end - first);
    out->drafted = s1.spec_draft_tokens - s0.spec_draft_tokens;
    out->acc = s1.spec_accepted_tokens - s0.spec_accepted_tokens;
    return 0;
}

static int cmp_run(const void *a, const void *b)
{
    double x = ((const run *)a)->tok_s, y = ((const run *)b)->tok_s;
    return (x > y) - (x < y);
}

static int scenario(srv_engine *e, const char *name, const char *text, int n_jobs, int max_tokens,
                    int k, cJSON *arr)
{
    const core_tokenizer *tok = srv_engine_tokenizer(e);
    int32_t *ids = NULL;
    size_t n = 0;
    if (core_tokenize(tok, text, strlen(text), true, &ids, &n) < 0)
        return -1;
    run plain[3], spec[3];
    int rc = measure(e, ids, (int)n, 1, 8, -1, &plain[0]); /* warm up */
    for (int r = 0; r < 3 && rc == 0; r++) {
        rc = measure(e, ids, (int)n, n_jobs, max_tokens, -1, &plain[r]);
        if (rc == 0)
            rc = measure(e, ids, (int)n, n_jobs, max_tokens, k, &spec[r]);
    }
    free(ids);
    if (rc)
        return rc;
    qsort(plain, 3, sizeof *plain, cmp_run);
    qsort(spec, 3, sizeof *spec, cmp_run);
    const run *p = &plain[1], *s = &spec[1];
    printf("  %-24s %2d stream%s: plain %7.1f tok/s, speculative %7.1f tok/s (%.2fx); drafts %llu, "
           "%.0f%% accepted\n",
           name, n_jobs, n_jobs > 1 ? "s" : " ", p->tok_s, s->tok_s, s->tok_s / p->tok_s,
           (unsigned long long)s->drafted,
           s->drafted ? 100.0 * (double)s->acc / (double)s->drafted : 0.0);
    cJSON *o = cJSON_CreateObject();
    if (o) {
        cJSON_AddStringToObject(o, "scenario", name);
        cJSON_AddNumberToObject(o, "streams", n_jobs);
        cJSON_AddNumberToObject(o, "plain_tok_s", p->tok_s);
        cJSON_AddNumberToObject(o, "spec_tok_s", s->tok_s);
        cJSON_AddNumberToObject(o, "ratio", s->tok_s / p->tok_s);
        cJSON_AddNumberToObject(o, "drafted", (double)s->drafted);
        cJSON_AddNumberToObject(o, "accepted", (double)s->acc);
        cJSON_AddItemToArray(arr, o);
    }
    return 0;
}

int main(int argc, char **argv)
{
    char msg[256] = "";
    core_blas_ensure_kernel(argc, argv, msg, sizeof msg);
    const char *path = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
    const char *json = NULL;
    int max_tokens = 128, streams = 0;
    bool int8 = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-m") && i + 1 < argc)
            path = argv[++i];
        else if (!strcmp(argv[i], "-n") && i + 1 < argc)
            max_tokens = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--streams") && i + 1 < argc)
            streams = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--int8"))
            int8 = true;
        else if (!strcmp(argv[i], "--json") && i + 1 < argc)
            json = argv[++i];
        else {
            fprintf(
                stderr,
                "usage: bench_spec [-m MODEL] [-n TOKENS] [--streams N] [--int8] [--json FILE]\n");
            return 2;
        }
    }
    if (streams < 0 || streams > MAX_JOBS || max_tokens < 2) {
        fprintf(stderr, "bench_spec: --streams takes 1 to %d, -n at least 2\n", MAX_JOBS);
        return 2;
    }
    srv_engine_opts o;
    srv_engine_opts_default(&o);
    o.model_path = path;
    o.watch = false;
    o.verbose = 0;
    o.max_seqs = MAX_JOBS;
    o.n_ctx = 1024;
    o.no_prefix_cache = true; /* every run computes its prompt */
    o.max_step_ms = 0;        /* prompts prefilled in full steps: the streams decode together */
    o.spec_ngram = 3;
    o.int8 = int8;
    char err[256] = "";
    srv_engine *e = srv_engine_new(&o, err, sizeof err);
    if (!e) {
        fprintf(stderr, "bench_spec: %s\n", err);
        return 1;
    }
    char cpu[128];
    bench_cpu(cpu, sizeof cpu, NULL, NULL);
    int k = 8;
    printf("speculative decoding (prompt lookup, up to %d drafts, 3-gram), greedy, %d tokens a "
           "stream, %s activations, %s:\n",
           k, max_tokens, int8 ? "int8" : "f32", cpu);
    cJSON *doc = cJSON_CreateObject(), *arr = cJSON_CreateArray();
    if (!doc || !arr) {
        fprintf(stderr, "bench_spec: out of memory\n");
        return 1;
    }
    time_t now = time(NULL);
    char date[32];
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    cJSON_AddStringToObject(doc, "schema", "adaptree-bench-spec/1");
    cJSON_AddStringToObject(doc, "date", date);
    cJSON_AddStringToObject(doc, "cpu", cpu);
    cJSON_AddStringToObject(doc, "model", path);
    cJSON_AddBoolToObject(doc, "int8", int8);
    cJSON_AddNumberToObject(doc, "k", k);
    cJSON_AddNumberToObject(doc, "ngram", o.spec_ngram);
    cJSON_AddNumberToObject(doc, "tokens_per_stream", max_tokens);
    cJSON_AddItemToObject(doc, "scenarios", arr);
    static const struct {
        const char *name, *text;
        int streams;
    } sc[] = {{"copy task", COPY, 1},       {"free generation", FREE, 1},
              {"copy task", COPY, 2},       {"copy task", COPY, 4},
              {"free generation", FREE, 4}, {"copy task (full batch)", COPY, MAX_JOBS}};
    /* --streams N: the first two (the copy task and free generation) at N streams */
    int rc = 0, n_sc = streams > 0 ? 2 : (int)(sizeof sc / sizeof sc[0]);
    for (int i = 0; i < n_sc && !rc; i++)
        rc = scenario(e, sc[i].name, sc[i].text, streams > 0 ? streams : sc[i].streams, max_tokens,
                      k, arr);
    srv_engine_free(e);
    if (!rc && json)
        rc = bench_json_write(json, doc);
    cJSON_Delete(doc);
    return rc ? 1 : 0;
}
