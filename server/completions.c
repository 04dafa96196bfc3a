/* POST /v1/completions and /v1/chat/completions: from an OpenAI request body to an engine job,
 * and from the job's output to the OpenAI answer, whole or streamed.
 *
 * The first call (body complete) does everything that can fail on the HTTP thread: parse and
 * validate the body, resolve the adapter selection, render the chat template, tokenize, check
 * the prompt against the context, then submit. It then waits. A whole answer waits for the job
 * to finish; a stream waits only for the first output (or an early failure, which still gets its
 * own HTTP status), then streams chunks as the job notifies.
 */
#include <cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "core/base.h"
#include "core/text/tokenizer.h"
#include "server/http_errors.h"
#include "server/log.h"
#include "server/response.h"
#include "server/routes_internal.h"

/* Logs a request's "user" and "metadata" (OpenAI's tags; accepted, not acted on) as JSON, so a
 * newline or a quote in them cannot forge a log line. */
static void log_tags(const char *id, const char *request_id, const srv_request *rq)
{
    cJSON *u = rq->user ? cJSON_CreateString(rq->user) : NULL;
    char *us = u ? cJSON_PrintUnformatted(u) : NULL;
    srv_log_req(SRV_LOG_INFO, request_id, "%s: user %s, metadata %s", id, us ? us : "null",
                rq->metadata_json ? rq->metadata_json : "null");
    cJSON_free(us);
    cJSON_Delete(u);
}

static uint64_t random_u64(void)
{
    uint64_t v = 0;
    if (getrandom(&v, sizeof v, 0) != (ssize_t)sizeof v) {
        struct timespec t;
        clock_gettime(CLOCK_REALTIME, &t);
        v = ((uint64_t)t.tv_nsec * 0x9E3779B97F4A7C15ull) ^ (uint64_t)t.tv_sec;
    }
    return v;
}

static int piece(void *ud, int32_t id, char *buf, size_t cap)
{
    return core_token_to_bytes(ud, id, true, buf, cap);
}

static srv_resp resp_of(srv_app *a, const srv_call *c)
{
    srv_resp r = {.kind = c->kind,
                  .id = c->id,
                  .created = c->created,
                  .model = c->model,
                  .fingerprint = a->replica,
                  .logprobs = c->logprobs,
                  .include_usage = c->include_usage,
                  .piece = piece,
                  .piece_ud = (void *)srv_engine_tokenizer(a->engine)};
    return r;
}

static const char *param_of(const srv_call *c)
{
    return c->kind == SRV_REQ_CHAT ? "messages" : "prompt";
}

/* The scheduler's fairness key: the "user" field, else (a hash of) the key, else the peer. */
static void client_key(srv_http_req *req, const srv_request *rq, char *out, size_t cap)
{
    char key[SRV_KEY_MAX + 2];
    if (rq->user && rq->user[0]) {
        if (strlen(rq->user) + 5 < cap)
            snprintf(out, cap, "user:%s", rq->user);
        else
            snprintf(out, cap, "user#%016llx",
                     (unsigned long long)core_hash64(CORE_HASH_INIT, rq->user, strlen(rq->user)));
    } else if (srv_auth_bearer(srv_http_header(req, "Authorization"), key, sizeof key) == 0) {
        snprintf(out, cap, "key#%016llx",
                 (unsigned long long)core_hash64(CORE_HASH_INIT, key, strlen(key)));
        memset(key, 0, sizeof key);
    } else {
        snprintf(out, cap, "ip:%s", srv_http_peer(req));
    }
}

_Static_assert(SRV_REQ_SPEC_K_MAX == SRV_SPEC_K_MAX && SRV_REQ_SPEC_NGRAM_MAX == SRV_SPEC_NGRAM_MAX,
               "the request's speculative limits are the engine's");

/* Resolves "model" and "adapters" into sel, the selection in full for the log (label) and its
 * bounded metrics label (c->label). 0, or -1 after answering. */
static int select_adapters(srv_app *a, srv_http_req *req, srv_call *c, const srv_request *rq,
                           adapter_selection *sel, char *label, size_t labcap)
{
    const char *m = rq->model;
    const char *select = m && strcmp(m, a->model_id) != 0 && strcmp(m, "base") != 0 ? m : NULL;
    memset(sel, 0, sizeof *sel);
    srv_selection_label(select, rq->adapters, rq->n_adapters, label, labcap);
    snprintf(c->label, sizeof c->label, "%s", srv_metric_label(select, rq->n_adapters));
    if (!select && rq->n_adapters == 0)
        return 0;
    adapter_registry *reg = srv_engine_registry(a->engine);
    if (!reg) {
        srv_http_reply_error(req, 404, "invalid_request_error", "model_not_found",
                             select ? "model" : "adapters",
                             "the model '%s' does not exist: this server has no adapter registry "
                             "and serves only '%s'",
                             select ? select : rq->adapters[0].id, a->model_id);
        return -1;
    }
    char err[300];
    int rc =
        adapter_registry_resolve(reg, select, rq->adapters, rq->n_adapters, sel, err, sizeof err);
    if (rc == 0)
        return 0;
    /* The message names the id; which field it came from is the one that holds it. */
    const char *param = "adapters";
    if (select && strstr(err, select))
        param = "model";
    if (rc == -ENOENT)
        srv_http_reply_error(req, 404, "invalid_request_error", "model_not_found", param,
                             "the model does not exist: %s", err);
    else
        srv_http_reply_error(req, 400, "invalid_request_error", NULL, param, "%s", err);
    return -1;
}

/* The text a token-id prompt stands for (what echo returns). */
static char *ids_text(const core_tokenizer *tok, const int32_t *ids, size_t n, size_t *len)
{
    srv_buf b;
    srv_buf_init(&b);
    char small[256];
    for (size_t i = 0; i < n; i++) {
        int k = core_token_to_bytes(tok, ids[i], true, small, sizeof small);
        if (k > 0 && (size_t)k <= sizeof small)
            srv_buf_put(&b, small, (size_t)k);
    }
    srv_buf_putc(&b, 0);
    char *t = srv_buf_take(&b, len);
    if (t)
        (*len)--;
    return t;
}

/* The prompt as token ids (*ids malloc'd), as `adaptree generate` makes them: the chat template
 * rendered for chat, special tokens recognised in the text, BOS when the model wants one. Sets
 * c->echo for completions with echo. 0, or -1 after answering. */
static int prompt_ids(srv_app *a, srv_http_req *req, srv_call *c, const srv_request *rq,
                      int32_t **ids, size_t *n)
{
    const core_tokenizer *tok = srv_engine_tokenizer(a->engine);
    char err[256];
    *ids = NULL;
    *n = 0;
    if (rq->kind == SRV_REQ_COMPLETION && rq->prompt_ids) {
        *ids = malloc(rq->n_prompt_ids * sizeof **ids);
        if (*ids) {
            memcpy(*ids, rq->prompt_ids, rq->n_prompt_ids * sizeof **ids);
            *n = rq->n_prompt_ids;
        }
        if (*ids && rq->echo)
            c->echo = ids_text(tok, rq->prompt_ids, rq->n_prompt_ids, &c->echo_len);
        if (!*ids || (rq->echo && !c->echo))
            goto nomem;
        return 0;
    }
    char *text = NULL;
    const char *p = rq->prompt;
    if (rq->kind == SRV_REQ_CHAT) {
        int rc = core_chat_render(tok, rq->messages, rq->n_messages, true, &text, err, sizeof err);
        if (rc < 0) {
            srv_http_reply_error(req, rc == -ENOMEM ? 503 : 400,
                                 rc == -ENOMEM ? "server_error" : "invalid_request_error", NULL,
                                 "messages", "cannot render the chat template: %s", err);
            return -1;
        }
        p = text;
    } else if (rq->echo) {
        c->echo = strdup(rq->prompt);
        c->echo_len = rq->prompt_len;
        if (!c->echo)
            goto nomem;
    }
    int32_t *t = NULL;
    size_t k = 0;
    int rc = core_tokenize(tok, p, strlen(p), true, &t, &k);
    free(text);
    if (rc < 0)
        goto nomem;
    if (core_tokenizer_prepend_bos(tok, t, k, rq->kind == SRV_REQ_CHAT)) {
        int32_t *v = realloc(t, (k + 1) * sizeof *v);
        if (!v) {
            free(t);
            goto nomem;
        }
        memmove(v + 1, v, k * sizeof *v);
        v[0] = core_tokenizer_bos(tok);
        t = v;
        k++;
    }
    *ids = t;
    *n = k;
    return 0;
nomem:
    free(*ids);
    *ids = NULL;
    srv_http_reply_error(req, 503, "server_error", NULL, NULL, "out of memory");
    return -1;
}

/* Checks the prompt length and max_tokens against the context; the tokens to generate at most,
 * or -1 after answering. */
static int check_context(srv_app *a, srv_http_req *req, const srv_call *c, const srv_request *rq,
                         size_t n_prompt)
{
    if (n_prompt == 0) {
        srv_http_reply_error(req, 400, "invalid_request_error", NULL, param_of(c),
                             "the prompt is empty");
        return -1;
    }
    if (n_prompt >= (size_t)a->n_ctx) {
        srv_http_reply_error(
            req, 400, "invalid_request_error", "context_length_exceeded", param_of(c),
            "prompt is %zu tokens, the context is %d: shorten the prompt", n_prompt, a->n_ctx);
        return -1;
    }
    int room = a->n_ctx - (int)n_prompt;
    if (rq->max_tokens_set && rq->max_tokens > room) {
        srv_http_reply_error(req, 400, "invalid_request_error", "context_length_exceeded",
                             "max_tokens",
                             "prompt is %zu tokens and max_tokens is %d: together they are more "
                             "than the context of %d tokens",
                             n_prompt, rq->max_tokens, a->n_ctx);
        return -1;
    }
    return rq->max_tokens < room ? rq->max_tokens : room;
}

/* Choice i's job: c->job for the first, then c->more. */
static srv_job *choice_job(const srv_call *c, int i)
{
    return i ? c->more[i - 1] : c->job;
}

/* Drops the jobs of c (our references). */
static void drop_jobs(srv_call *c)
{
    for (int i = 0; i < c->n_more; i++) {
        srv_job_unref(c->more[i]);
        c->more[i] = NULL;
    }
    c->n_more = 0;
    srv_job_unref(c->job);
    c->job = NULL;
}

/* Makes the request's jobs, one per choice (choice i seeded seed + i, or at random), and hands
 * them to the engine as one group, which prefills the prompt once for all. 0, or -1 after
 * answering. */
static int submit(srv_app *a, srv_http_req *req, srv_call *c, const srv_request *rq,
                  const int32_t *ids, size_t n, int max_tokens, const adapter_selection *sel,
                  const char *label)
{
    char client[SRV_CLIENT_MAX + 1], err[256];
    client_key(req, rq, client, sizeof client);
    uint64_t seed = rq->seed_set ? rq->sampling.seed : random_u64();
    srv_job_params p = {.prompt = ids,
                        .n_prompt = (int)n,
                        .sel = *sel,
                        .label = label,
                        .client = client,
                        .request_id = srv_http_request_id(req),
                        .max_tokens = max_tokens,
                        .sampling = rq->sampling,
                        .seed = seed,
                        .n_stop = rq->n_stop,
                        .logprobs = rq->logprobs,
                        .prompt_logprobs =
                            c->kind == SRV_REQ_COMPLETION && rq->echo && rq->logprobs >= 0,
                        .bias_ids = rq->bias_ids,
                        .bias = rq->bias,
                        .n_bias = rq->n_bias,
                        .min_tokens = rq->min_tokens,
                        .ignore_eos = rq->ignore_eos,
                        .spec_k = rq->spec_k,
                        .spec_ngram = rq->spec_ngram,
                        .stop_ids = rq->stop_ids,
                        .n_stop_ids = rq->n_stop_ids,
                        .grammar = rq->grammar};
    p.sampling.seed = seed;
    for (int i = 0; i < rq->n_stop && i < SRV_JOB_STOP_MAX; i++)
        p.stop[i] = rq->stop[i];
    srv_job *jobs[SRV_N_MAX];
    int nj = rq->n >= 1 && rq->n <= SRV_N_MAX ? rq->n : 1;
    for (int i = 0; i < nj; i++) {
        if (i > 0) { /* the prompt's scores are the same for every choice: the first records them */
            p.seed = p.sampling.seed = rq->seed_set ? seed + (uint64_t)i : random_u64();
            p.prompt_logprobs = false;
        }
        jobs[i] = srv_job_new(&p, srv__call_notify, c, err, sizeof err);
        if (!jobs[i]) {
            drop_jobs(c);
            srv_reply_err(req, SRV_ERR_BAD_INPUT, NULL, "%s", err);
            return -1;
        }
        if (i)
            c->more[c->n_more++] = jobs[i];
        else
            c->job = jobs[i];
    }
    int rc = srv_engine_submit_group(a->engine, jobs, nj);
    if (rc < 0) {
        drop_jobs(c);
        srv_reply_err(req, srv_err_of_submit(rc), NULL, "%s",
                      rc == -EAGAIN      ? "the server's queue is full; retry in a moment"
                      : rc == -ESHUTDOWN ? "the server is shutting down"
                                         : "the engine refused the request");
        return -1;
    }
    return 0;
}

/* First call: parse, select, tokenize, submit. */
static void start(srv_app *a, srv_http_req *req, srv_call *c)
{
    size_t len;
    const char *body = srv_http_body(req, &len);
    srv_request rq;
    char err[256], param[SRV_PARAM_MAX];
    int rc = srv_request_parse(c->kind, body, len, &a->limits, &rq, err, sizeof err, param,
                               sizeof param);
    if (rc) {
        bool oom = rc == -ENOMEM;
        srv_http_reply_error(req, oom ? 503 : 400, oom ? "server_error" : "invalid_request_error",
                             NULL, param, "%s", err);
        return;
    }
    c->stream = rq.stream;
    c->include_usage = rq.stream_include_usage;
    c->logprobs = rq.logprobs;
    c->created = (long long)time(NULL);
    snprintf(c->model, sizeof c->model, "%s", rq.model ? rq.model : a->model_id);
    uint64_t r1 = random_u64(), r2 = random_u64();
    snprintf(c->id, sizeof c->id, "%s%016llx%08llx",
             c->kind == SRV_REQ_CHAT ? "chatcmpl-" : "cmpl-", (unsigned long long)r1,
             (unsigned long long)(r2 & 0xffffffffu));
    if (rq.user || rq.metadata_json)
        log_tags(c->id, srv_http_request_id(req), &rq);

    adapter_selection sel;
    char label[ADAPTER_ID_MAX + 1];
    int32_t *ids = NULL;
    size_t n = 0;
    int max_tokens;
    bool selected = select_adapters(a, req, c, &rq, &sel, label, sizeof label) == 0;
    if (selected)
        srv_http_log_selection(req, label);
    if (selected && prompt_ids(a, req, c, &rq, &ids, &n) == 0 &&
        (max_tokens = check_context(a, req, c, &rq, n)) >= 0 &&
        submit(a, req, c, &rq, ids, n, max_tokens, &sel, c->label) == 0)
        srv_http_wait(req);
    free(ids);
    srv_request_deinit(&rq);
}

/* Completions with echo and logprobs: the prompt's recorded tokens (*n of them), each text_end
 * the end of its text within the echo; NULL with *n = 0 for other requests, *n = -1 without
 * memory. */
static srv_job_token *prompt_tokens(srv_app *a, srv_call *c, int n_prompt, int *n)
{
    *n = 0;
    if (c->kind != SRV_REQ_COMPLETION || !c->echo || c->logprobs < 0 || n_prompt <= 0)
        return NULL;
    srv_job_token *t = malloc((size_t)n_prompt * sizeof *t);
    if (!t) {
        *n = -1;
        return NULL;
    }
    int k = srv_job_prompt_tokens(c->job, t, n_prompt);
    core_detok dt;
    core_detok_init(&dt, srv_engine_tokenizer(a->engine), true);
    char buf[512];
    size_t end = 0;
    for (int i = 0; i < k; i++) {
        int m = core_detok_push(&dt, t[i].id, buf, sizeof buf);
        end += m > 0 ? (size_t)m : 0;
        t[i].text_end = end < c->echo_len ? end : c->echo_len;
    }
    if (k > 0)
        t[k - 1].text_end = c->echo_len; /* bytes the decoder still held belong to the last */
    *n = k;
    return t;
}

/* The status of every choice (st[0 .. n_more]); returns the index of the first that failed or
 * was cancelled (-1: none), *done when every one has finished, *output when one has text or
 * tokens, *lead when the first has output or has finished (its prompt has run). */
static int choices_status(srv_call *c, srv_job_status *st, bool *done, bool *output, bool *lead)
{
    int bad = -1;
    *done = true;
    *output = *lead = false;
    int i = 0;
    do { /* the first choice always, then c->n_more others */
        srv_job_status_get(choice_job(c, i), &st[i]);
        bool out = st[i].text_len > 0 || st[i].n_tokens > 0;
        *done = *done && st[i].finish != SRV_FINISH_NONE;
        *output = *output || out;
        if (i == 0)
            *lead = out || st[0].finish != SRV_FINISH_NONE;
        bool ended = st[i].finish == SRV_FINISH_ERROR || st[i].finish == SRV_FINISH_CANCELLED;
        if (bad < 0 && ended)
            bad = i;
    } while (++i <= c->n_more);
    return bad;
}

/* The usage of the whole request: the prompt once, the completions of every choice. */
static srv_resp_usage usage_of(const srv_call *c, const srv_job_status *st)
{
    srv_resp_usage u = {st[0].prompt_tokens, 0, st[0].cached_tokens};
    for (int i = 0; i <= c->n_more; i++)
        u.completion_tokens += st[i].completion_tokens;
    return u;
}

/* The whole answer once every choice has finished. */
static void answer_full(srv_app *a, srv_http_req *req, srv_call *c, const srv_job_status *st)
{
    int n = c->n_more + 1, np;
    srv_resp_choice ch[SRV_N_MAX];
    char *texts[SRV_N_MAX] = {0};
    srv_job_token *toks[SRV_N_MAX] = {0};
    bool ok = true;
    for (int i = 0; i < n; i++) {
        size_t len = st[i].text_len;
        int nt = c->logprobs >= 0 ? st[i].n_tokens : 0;
        texts[i] = malloc(len + 1);
        toks[i] = nt > 0 ? malloc((size_t)nt * sizeof *toks[i]) : NULL;
        ok = ok && texts[i] && (nt == 0 || toks[i]);
        if (!ok)
            break;
        len = srv_job_text(choice_job(c, i), 0, texts[i], len);
        if (nt > 0)
            nt = srv_job_tokens(choice_job(c, i), 0, toks[i], nt);
        ch[i] = (srv_resp_choice){texts[i], len, toks[i], nt, srv_finish_name(st[i].finish)};
    }
    srv_job_token *ptoks = ok ? prompt_tokens(a, c, st[0].prompt_tokens, &np) : NULL;
    if (!ok || np < 0) {
        srv_http_reply_error(req, 503, "server_error", NULL, NULL, "out of memory");
    } else {
        srv_resp r = resp_of(a, c);
        r.prompt_toks = ptoks;
        r.n_prompt_toks = np;
        srv_resp_usage u = usage_of(c, st);
        srv_buf b;
        srv_buf_init(&b);
        srv_resp_full_n(&b, &r, c->echo, c->echo_len, ch, n, &u);
        srv_http_reply_json(req, 200, &b, NULL);
        srv_buf_deinit(&b);
    }
    for (int i = 0; i < n; i++) {
        free(texts[i]);
        free(toks[i]);
    }
    free(ptoks);
}

void srv__gen_request(srv_app *a, srv_http_req *req, srv_call *c)
{
    if (!c->job) {
        start(a, req, c);
        return;
    }
    srv_job_status st[SRV_N_MAX];
    bool done, output, lead;
    int bad = choices_status(c, st, &done, &output, &lead);
    if (bad >= 0 && st[bad].finish == SRV_FINISH_ERROR && !(c->stream && output)) {
        srv_reply_err(req, st[bad].err, NULL, "%s", st[bad].error);
    } else if (bad >= 0 && !(c->stream && output)) {
        srv_http_reply_error(req, 503, "server_error", "cancelled", NULL,
                             "the request was cancelled (the server is shutting down)");
    } else if (c->stream && (lead || bad >= 0)) {
        /* the first choice's prompt has run: the stream can start with its echo and scores */
        srv_http_reply_stream(req);
    } else if (!c->stream && done) {
        answer_full(a, req, c, st);
    } else {
        srv_http_wait(req);
    }
}

/* Appends a chunk of choice i with the text released since its last one and its tokens. */
static int stream_text(srv_app *a, srv_call *c, int i, const srv_job_status *st, srv_buf *out,
                       const char *finish)
{
    srv_resp r = resp_of(a, c);
    struct srv_call_sent *sent = &c->sent[i];
    srv_job *j = choice_job(c, i);
    r.index = i;
    size_t n = st->text_len - sent->text;
    int nt = c->logprobs >= 0 ? st->n_tokens - sent->toks : 0;
    char *text = malloc(n + 1);
    srv_job_token *toks = nt > 0 ? malloc((size_t)nt * sizeof *toks) : NULL;
    if (!text || (nt > 0 && !toks)) {
        free(text);
        free(toks);
        return -1;
    }
    n = srv_job_text(j, sent->text, text, n);
    if (nt > 0)
        nt = srv_job_tokens(j, sent->toks, toks, nt);
    int k = 0;
    while (k < nt && toks[k].text_end <= sent->text + n)
        k++;
    srv_resp_chunk(out, &r, false, text, n, toks, k, c->echo_len, sent->prev_end, finish);
    sent->text += n;
    sent->toks += k;
    if (k > 0)
        sent->prev_end = toks[k - 1].text_end;
    free(text);
    free(toks);
    return 0;
}

/* Choice i's first chunk: the chat role, or the echoed prompt with its scores (recorded by the
 * first choice, whose prompt has run by now: the stream starts after its first output). */
static int stream_first(srv_app *a, srv_call *c, int i, const srv_job_status *st0, srv_buf *out)
{
    srv_resp r = resp_of(a, c);
    r.index = i;
    if (c->kind == SRV_REQ_CHAT) {
        srv_resp_chunk(out, &r, true, "", 0, NULL, 0, 0, 0, NULL);
    } else if (c->echo_len) {
        int np;
        srv_job_token *ptoks = prompt_tokens(a, c, st0->prompt_tokens, &np);
        if (np < 0)
            return -1;
        r.prompt_toks = ptoks;
        r.n_prompt_toks = np;
        srv_resp_chunk(out, &r, false, c->echo, c->echo_len, NULL, 0, 0, 0, NULL);
        free(ptoks);
    }
    c->sent[i].first = true;
    return 0;
}

int srv__gen_stream(srv_app *a, srv_http_req *req, srv_call *c, srv_buf *out)
{
    (void)req;
    srv_job_status st[SRV_N_MAX];
    bool done, output, lead;
    choices_status(c, st, &done, &output, &lead);
    for (int i = 0; i <= c->n_more; i++) {
        struct srv_call_sent *sent = &c->sent[i];
        if (!sent->first && stream_first(a, c, i, &st[0], out) < 0)
            return -1;
        if (st[i].text_len > sent->text && stream_text(a, c, i, &st[i], out, NULL) < 0)
            return -1;
        switch (st[i].finish) {
        case SRV_FINISH_NONE:
            continue;
        case SRV_FINISH_ERROR:
            srv_event_err(out, st[i].err, st[i].error);
            srv_resp_done(out);
            return 0;
        case SRV_FINISH_CANCELLED:
            return -1;
        default:
            break;
        }
        /* The choice's last chunk carries finish_reason, and the tokens not sent yet (an
         * end-of-generation token has no text of its own). */
        if (!sent->finished && stream_text(a, c, i, &st[i], out, srv_finish_name(st[i].finish)) < 0)
            return -1;
        sent->finished = true;
    }
    if (!done)
        return 1;
    if (c->include_usage) {
        srv_resp_usage u = usage_of(c, st);
        srv_resp r = resp_of(a, c);
        srv_resp_usage_chunk(out, &r, &u);
    }
    srv_resp_done(out);
    return 0;
}

void srv__gen_done(srv_app *a, srv_http_req *req, srv_call *c)
{
    if (c->job) {
        srv_job_status st;
        srv_job_status_get(c->job, &st);
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        double now = (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
        srv_gen_obs o = {.ttft = st.first_token_ms >= 0 ? st.first_token_ms / 1e3 : -1.0,
                         .queue = st.queue_ms > 0 ? st.queue_ms / 1e3 : -1.0,
                         .duration = now - srv_http_start(req),
                         .itl = st.itl,
                         .itl_sum = st.itl_sum};
        srv_metrics_generation(&a->metrics, c->label, &o);
        long long completion = st.completion_tokens;
        for (int i = 0; i < c->n_more; i++) {
            srv_job_status more;
            srv_job_status_get(c->more[i], &more);
            completion += more.completion_tokens;
            srv_metrics_itl(&a->metrics, c->label, more.itl, more.itl_sum);
        }
        srv_http_log_usage(req, st.prompt_tokens, completion, st.first_token_ms);
        drop_jobs(c);
    }
    free(c->echo);
    c->echo = NULL;
}
