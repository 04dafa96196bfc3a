/* The engine's scheduler (engine.h, steps 2-4): waiting queues and fair admission, the continuous
 * batch of decode rows and prompt chunks, sampling, stop rules and the release of text to jobs.
 * Everything here runs on the engine thread.
 *
 * Admission. Waiting jobs sit in groups, one per (client, adapter selection), FIFO inside a
 * group. Clients are served round-robin and, within a client, its groups round-robin, so a client
 * that floods one adapter starves neither other clients nor its own other selections. A group
 * whose head waits for an adapter load (acquire said -EAGAIN) is skipped without taking a slot,
 * until the registry reports a finished load; the groups behind it are admitted meanwhile.
 *
 * Steps. Every running sequence advances every step: one decode row each (rotating which ones
 * come first in the rare case they do not all fit), then prompt chunks of at most prefill_chunk
 * rows, oldest admission first, up to max_batch rows. The rows are ordered by lora set so that a
 * set's rows are contiguous; all sets share one core_forward call.
 *
 * Text. Sampled tokens go through the streaming decoder, so only whole UTF-8 characters come
 * out; decoded bytes then wait in a hold-back buffer while they could still be the start of a
 * stop string. Only bytes that can no longer belong to one are released to the job, so released
 * text never contains a stop string and every released length ends on a character boundary (a
 * stop string starts with a lead byte). A token is handed to the job once all its bytes are
 * released; its text_end is where they end.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/engine_internal.h"

/* ---- setup ---------------------------------------------------------------------------------- */

/* The largest output of one core_detok_push: the longest token plus up to three held bytes,
 * each byte possibly replaced by U+FFFD (3 bytes), and the NUL. */
static size_t detok_cap(const core_tokenizer *t, int32_t n_vocab)
{
    int longest = 0;
    char c;
    for (int32_t id = 0; id < n_vocab; id++) {
        int n = core_token_to_bytes(t, id, false, &c, 0);
        if (n > longest)
            longest = n;
    }
    return 3 * ((size_t)longest + 4) + 1;
}

/* Logits rows a step may hold beyond one per part: prompt rows of jobs that record prompt
 * logprobs (echo). Their prefill goes at most this many rows per step beyond the first. */
#define PROMPT_LOGIT_ROWS 32

int srv__sched_init(srv_engine *e, char *err, size_t errlen)
{
    e->kv = core_kv_new(&e->model->cfg, e->max_seqs, e->n_ctx, err, errlen);
    if (!e->kv)
        return -ENOMEM;
    if (e->kv_f16)
        core_kv_set_f16(e->kv, 1); /* every slot is empty: cannot fail */
    size_t nb = (size_t)e->max_batch, ns = (size_t)e->max_seqs;
    e->max_out = e->max_seqs < e->max_batch ? e->max_seqs : e->max_batch;
    e->ctx = core_ctx_new(e->model);
    e->plan = adapter_plan_new();
    e->seqs = calloc(ns, sizeof *e->seqs);
    e->logits =
        malloc((size_t)(e->max_out + PROMPT_LOGIT_ROWS) * (size_t)e->n_vocab * sizeof(float));
    e->b_tok = malloc(nb * sizeof(int32_t));
    e->b_pos = malloc(nb * sizeof(int32_t));
    e->b_slot = malloc(nb * sizeof(int32_t));
    e->b_want = malloc(nb);
    e->b_sets = malloc(nb * sizeof(const adapter_set *));
    e->parts = malloc(ns * sizeof *e->parts);
    e->sreq = malloc(ns * sizeof *e->sreq);
    e->pre = malloc(ns * sizeof(srv__seq *));
    e->changed = malloc(ns * sizeof(srv_job *));
    e->dbuf_cap = detok_cap(e->tok, e->n_vocab);
    e->dbuf = malloc(e->dbuf_cap);
    bool ok = e->ctx && e->plan && e->seqs && e->logits && e->b_tok && e->b_pos && e->b_slot &&
              e->b_want && e->b_sets && e->parts && e->sreq && e->pre && e->changed && e->dbuf;
    for (int i = 0; ok && i < e->max_seqs; i++) {
        e->seqs[i].slot = i;
        e->seqs[i].hist = malloc((size_t)e->n_ctx * sizeof(int32_t));
        ok = e->seqs[i].hist != NULL;
    }
    if (!ok) {
        snprintf(err, errlen, "out of memory");
        srv__sched_deinit(e);
        return -ENOMEM;
    }
    return 0;
}

void srv__sched_deinit(srv_engine *e)
{
    for (int i = 0; e->seqs && i < e->max_seqs; i++) {
        srv__seq *s = &e->seqs[i];
        adapter_set_free(s->set);
        core_sampler_free(s->smp);
        free(s->hist);
        free(s->pend);
        free(s->ptok);
    }
    free(e->seqs);
    e->seqs = NULL;
    for (int i = 0; i < e->n_clients; i++)
        free(e->clients[i].groups);
    free(e->clients);
    e->clients = NULL;
    e->n_clients = 0;
    free(e->logits);
    free(e->b_tok);
    free(e->b_pos);
    free(e->b_slot);
    free(e->b_want);
    free(e->b_sets);
    free(e->parts);
    free(e->sreq);
    free(e->pre);
    free(e->changed);
    free(e->dbuf);
    e->logits = NULL;
    e->b_tok = e->b_pos = e->b_slot = NULL;
    e->b_want = NULL;
    e->b_sets = NULL;
    e->parts = NULL;
    e->sreq = NULL;
    e->pre = NULL;
    e->changed = NULL;
    e->dbuf = NULL;
    adapter_plan_free(e->plan);
    core_ctx_free(e->ctx);
    core_kv_free(e->kv);
    e->plan = NULL;
    e->ctx = NULL;
    e->kv = NULL;
}

/* ---- waiting queues ------------------------------------------------------------------------- */

static bool sel_equal(const adapter_selection *a, const adapter_selection *b)
{
    if (a->n != b->n)
        return false;
    for (int i = 0; i < a->n; i++)
        if (strcmp(a->items[i].id, b->items[i].id) != 0 || a->items[i].weight != b->items[i].weight)
            return false;
    return true;
}

static srv__client *client_get(srv_engine *e, const char *name)
{
    for (int i = 0; i < e->n_clients; i++)
        if (!strcmp(e->clients[i].name, name))
            return &e->clients[i];
    if (e->n_clients == e->cap_clients) {
        int cap = e->cap_clients ? 2 * e->cap_clients : 8;
        srv__client *v = realloc(e->clients, (size_t)cap * sizeof *v);
        if (!v)
            return NULL;
        e->clients = v;
        e->cap_clients = cap;
    }
    srv__client *c = &e->clients[e->n_clients++];
    memset(c, 0, sizeof *c);
    snprintf(c->name, sizeof c->name, "%s", name);
    return c;
}

static srv__group *group_get(srv__client *c, const adapter_selection *sel)
{
    for (int i = 0; i < c->n_groups; i++)
        if (sel_equal(&c->groups[i].head->sel, sel))
            return &c->groups[i];
    if (c->n_groups == c->cap_groups) {
        int cap = c->cap_groups ? 2 * c->cap_groups : 4;
        srv__group *v = realloc(c->groups, (size_t)cap * sizeof *v);
        if (!v)
            return NULL;
        c->groups = v;
        c->cap_groups = cap;
    }
    srv__group *g = &c->groups[c->n_groups++];
    memset(g, 0, sizeof *g);
    return g;
}

/* Removes the empty group gi of client ci, and the client when it has no group left, keeping
 * both round-robin cursors on the element that was due next. */
static void group_drop(srv_engine *e, int ci, int gi)
{
    srv__client *c = &e->clients[ci];
    memmove(&c->groups[gi], &c->groups[gi + 1], (size_t)(c->n_groups - gi - 1) * sizeof *c->groups);
    c->n_groups--;
    if (gi < c->rr)
        c->rr--;
    if (c->rr >= c->n_groups)
        c->rr = 0;
    if (c->n_groups > 0)
        return;
    free(c->groups);
    memmove(&e->clients[ci], &e->clients[ci + 1],
            (size_t)(e->n_clients - ci - 1) * sizeof *e->clients);
    e->n_clients--;
    if (ci < e->client_rr)
        e->client_rr--;
    if (e->client_rr >= e->n_clients)
        e->client_rr = 0;
}

void srv__sched_enqueue(srv_engine *e, srv_job *j)
{
    srv__client *c = client_get(e, j->client);
    srv__group *g = c ? group_get(c, &j->sel) : NULL;
    if (!g) {
        if (c && c->n_groups == 0)
            group_drop(e, (int)(c - e->clients), 0);
        srv__job_finish(e, j, SRV_FINISH_ERROR, SRV_ERR_UNAVAILABLE, "out of memory");
        srv__job_notify(j);
        return;
    }
    j->next = NULL;
    if (g->tail)
        g->tail->next = j;
    else
        g->head = j;
    g->tail = j;
    g->n++;
}

static srv_job *group_pop(srv__group *g)
{
    srv_job *j = g->head;
    g->head = j->next;
    if (!g->head)
        g->tail = NULL;
    g->n--;
    j->next = NULL;
    return j;
}

void srv__sched_counts(const srv_engine *e, int *waiting, int *loading)
{
    *waiting = *loading = 0;
    for (int i = 0; i < e->n_clients; i++)
        for (int k = 0; k < e->clients[i].n_groups; k++) {
            const srv__group *g = &e->clients[i].groups[k];
            *waiting += g->n;
            if (g->loading)
                *loading += g->n;
        }
}

/* ---- sequences ------------------------------------------------------------------------------ */

/* Gives job j the free sequence s: acquires its adapters and makes its sampler. 0 when it runs,
 * -EAGAIN when an adapter is loading (nothing changed), another negative errno when the job
 * ended with an error (the caller notifies). */
static int job_start(srv_engine *e, srv_job *j, srv__seq *s)
{
    char err[ADAPTER_ID_MAX + 128] = "";
    adapter_set *set = NULL;
    if (j->sel.n > 0) {
        int rc = -ENOENT;
        if (e->reg)
            rc = adapter_registry_acquire(e->reg, &j->sel, &set, err, sizeof err);
        else
            snprintf(err, sizeof err, "unknown adapter '%s': the server has no adapter registry",
                     j->sel.items[0].id);
        if (rc == -EAGAIN)
            return rc;
        if (rc) {
            srv_err kind = rc == -ENOENT                 ? SRV_ERR_NOT_FOUND
                           : rc == -EIO || rc == -ENOMEM ? SRV_ERR_UNAVAILABLE
                                                         : SRV_ERR_INTERNAL;
            srv__job_finish(e, j, SRV_FINISH_ERROR, kind, err);
            return rc;
        }
    }
    core_sampler *smp = core_sampler_new(&j->sampling, e->n_vocab, err, sizeof err);
    if (!smp) {
        adapter_set_free(set);
        srv__job_finish(e, j, SRV_FINISH_ERROR, SRV_ERR_BAD_INPUT, err);
        return -EINVAL;
    }
    s->job = j;
    s->set = set;
    s->smp = smp;
    memcpy(s->hist, j->prompt, (size_t)j->n_prompt * sizeof(int32_t));
    s->n_hist = j->n_prompt;
    s->n_past = 0;
    s->n_gen = 0;
    core_detok_init(&s->dt, e->tok, false);
    s->detok_total = 0;
    s->n_pend = 0;
    s->n_ptok = 0;
    s->order = e->n_admitted++;
    j->seq = s;
    e->n_running++;
    double now = srv__now();
    pthread_mutex_lock(&j->mu);
    j->st.queue_ms = (now - j->t_submit) * 1e3;
    pthread_mutex_unlock(&j->mu);
    pthread_mutex_lock(&e->mu);
    e->queued--;
    j->in_queue = false;
    pthread_mutex_unlock(&e->mu);
    return 0;
}

/* Hands the job the pending tokens whose bytes are all released (every one when all is set, with
 * text_end clipped to the final text). j->mu held. 0 or -ENOMEM. */
static int publish_tokens(srv_job *j, srv__seq *s, bool all)
{
    size_t len = j->st.text_len;
    int k = 0;
    while (k < s->n_ptok && (all || s->ptok[k].text_end <= len))
        k++;
    if (k == 0)
        return 0;
    if (j->st.n_tokens + k > j->tokens_cap) {
        int cap = j->tokens_cap ? 2 * j->tokens_cap : 16;
        while (cap < j->st.n_tokens + k)
            cap *= 2;
        srv_job_token *v = realloc(j->tokens, (size_t)cap * sizeof *v);
        if (!v)
            return -ENOMEM;
        j->tokens = v;
        j->tokens_cap = cap;
    }
    for (int i = 0; i < k; i++) {
        srv_job_token t = s->ptok[i];
        if (t.text_end > len)
            t.text_end = len;
        j->tokens[j->st.n_tokens++] = t;
    }
    memmove(s->ptok, s->ptok + k, (size_t)(s->n_ptok - k) * sizeof *s->ptok);
    s->n_ptok -= k;
    j->st.completion_tokens = j->st.n_tokens;
    return 0;
}

/* Moves the first n held bytes into the job's text, with the tokens they complete; at_end hands
 * over every remaining token too. 0 or -ENOMEM. */
static int release(srv__seq *s, size_t n, bool at_end)
{
    srv_job *j = s->job;
    int rc = 0;
    pthread_mutex_lock(&j->mu);
    if (n > 0 && j->st.text_len + n + 1 > j->text_cap) {
        size_t cap = 2 * j->text_cap;
        while (cap < j->st.text_len + n + 1)
            cap *= 2;
        char *v = realloc(j->text, cap);
        if (v) {
            j->text = v;
            j->text_cap = cap;
        } else {
            rc = -ENOMEM;
        }
    }
    if (rc == 0 && n > 0) {
        memcpy(j->text + j->st.text_len, s->pend, n);
        j->st.text_len += n;
        j->text[j->st.text_len] = 0;
    }
    if (rc == 0)
        rc = publish_tokens(j, s, at_end);
    pthread_mutex_unlock(&j->mu);
    if (rc == 0 && n > 0) {
        memmove(s->pend, s->pend + n, s->n_pend - n);
        s->n_pend -= n;
    }
    return rc;
}

/* Ends the sequence's job and frees its slot, sampler and adapters. Not notified here. */
static void seq_end(srv_engine *e, srv__seq *s, srv_finish f, srv_err err, const char *msg)
{
    srv_job *j = s->job;
    if (f == SRV_FINISH_STOP || f == SRV_FINISH_LENGTH) {
        pthread_mutex_lock(&j->mu);
        if (publish_tokens(j, s, true) < 0) {
            f = SRV_FINISH_ERROR;
            err = SRV_ERR_UNAVAILABLE;
            msg = "out of memory";
        }
        pthread_mutex_unlock(&j->mu);
    }
    srv__job_finish(e, j, f, err, msg);
    adapter_set_free(s->set);
    core_sampler_free(s->smp);
    core_kv_clear(e->kv, s->slot);
    s->set = NULL;
    s->smp = NULL;
    s->job = NULL;
    s->n_pend = 0;
    s->n_ptok = 0;
    j->seq = NULL;
    e->n_running--;
}

/* ---- admission and cancellation ------------------------------------------------------------- */

static srv__seq *free_seq(srv_engine *e)
{
    for (int i = 0; i < e->max_seqs; i++)
        if (!e->seqs[i].job)
            return &e->seqs[i];
    return NULL;
}

/* Starts the next admissible job in round-robin order; false when there is none (or no slot). */
static bool admit_one(srv_engine *e)
{
    srv__seq *s = free_seq(e);
    if (!s)
        return false;
    for (int k = 0; k < e->n_clients; k++) {
        int ci = (e->client_rr + k) % e->n_clients;
        srv__client *c = &e->clients[ci];
        for (int t = 0; t < c->n_groups; t++) {
            int gi = (c->rr + t) % c->n_groups;
            srv__group *g = &c->groups[gi];
            if (g->loading)
                continue;
            int rc = job_start(e, g->head, s);
            if (rc == -EAGAIN) {
                g->loading = true;
                continue;
            }
            srv_job *j = group_pop(g);
            c->rr = (gi + 1) % c->n_groups;
            e->client_rr = (ci + 1) % e->n_clients;
            if (g->n == 0)
                group_drop(e, ci, gi);
            if (rc < 0)
                srv__job_notify(j);
            return true;
        }
    }
    return false;
}

void srv__sched_admit(srv_engine *e)
{
    if (e->loads_changed) {
        e->loads_changed = false;
        for (int i = 0; i < e->n_clients; i++)
            for (int k = 0; k < e->clients[i].n_groups; k++)
                e->clients[i].groups[k].loading = false;
    }
    while (e->n_clients > 0 && admit_one(e))
        ;
}

/* How cancel_where ends the jobs it takes: cancelled (NULL), or failed with an error. */
typedef struct end_how {
    srv_err err;
    const char *msg;
} end_how;

/* Ends j as how says (cancelled when how is NULL). Engine thread; j's sequence, if any, is gone. */
static void end_job(srv_engine *e, srv_job *j, srv__seq *s, const end_how *how)
{
    srv_finish f = how ? SRV_FINISH_ERROR : SRV_FINISH_CANCELLED;
    srv_err err = how ? how->err : SRV_ERR_NONE;
    if (s)
        seq_end(e, s, f, err, how ? how->msg : NULL);
    else
        srv__job_finish(e, j, f, err, how ? how->msg : NULL);
}

/* Ends the waiting jobs of group gi of client ci (every one, or the cancelled ones), as how
 * says; returns true when the group (and maybe its client) was removed. */
static bool group_filter(srv_engine *e, int ci, int gi, bool everything, const end_how *how)
{
    srv__group *g = &e->clients[ci].groups[gi];
    srv_job **pp = &g->head, *prev = NULL;
    while (*pp) {
        srv_job *j = *pp;
        if (everything || atomic_load(&j->cancel)) {
            *pp = j->next;
            j->next = NULL;
            g->n--;
            end_job(e, j, NULL, how);
            srv__job_notify(j);
        } else {
            prev = j;
            pp = &j->next;
        }
    }
    g->tail = prev;
    if (g->n > 0)
        return false;
    group_drop(e, ci, gi);
    return true;
}

static void cancel_where(srv_engine *e, bool everything, const end_how *how)
{
    for (int i = 0; i < e->max_seqs; i++) {
        srv__seq *s = &e->seqs[i];
        if (s->job && (everything || atomic_load(&s->job->cancel))) {
            srv_job *j = s->job;
            end_job(e, j, s, how);
            srv__job_notify(j);
        }
    }
    for (int ci = 0; ci < e->n_clients;) {
        int before = e->n_clients;
        for (int gi = 0; gi < e->clients[ci].n_groups;) {
            if (!group_filter(e, ci, gi, everything, how))
                gi++;
            else if (e->n_clients < before)
                break;
        }
        if (e->n_clients == before)
            ci++;
    }
}

void srv__sched_sweep_cancelled(srv_engine *e)
{
    cancel_where(e, false, NULL);
}

void srv__sched_cancel_all(srv_engine *e)
{
    cancel_where(e, true, NULL);
}

void srv__sched_fail_all(srv_engine *e, srv_err err, const char *msg)
{
    end_how how = {err, msg};
    cancel_where(e, true, &how);
}

/* ---- text ----------------------------------------------------------------------------------- */

static int pend_add(srv__seq *s, const char *b, size_t n)
{
    if (s->n_pend + n > s->cap_pend) {
        size_t cap = s->cap_pend ? 2 * s->cap_pend : 256;
        while (cap < s->n_pend + n)
            cap *= 2;
        char *v = realloc(s->pend, cap);
        if (!v)
            return -ENOMEM;
        s->pend = v;
        s->cap_pend = cap;
    }
    memcpy(s->pend + s->n_pend, b, n);
    s->n_pend += n;
    s->detok_total += n;
    return 0;
}

static int ptok_push(srv__seq *s, const srv_job_token *t)
{
    if (s->n_ptok == s->cap_ptok) {
        int cap = s->cap_ptok ? 2 * s->cap_ptok : 16;
        srv_job_token *v = realloc(s->ptok, (size_t)cap * sizeof *v);
        if (!v)
            return -ENOMEM;
        s->ptok = v;
        s->cap_ptok = cap;
    }
    s->ptok[s->n_ptok++] = *t;
    return 0;
}

/* Tokens whose bytes the decoder was still holding end where the output now ends. */
static void close_open_tokens(srv__seq *s)
{
    for (int i = s->n_ptok - 1; i >= 0 && s->ptok[i].text_end == SIZE_MAX; i--)
        s->ptok[i].text_end = s->detok_total;
}

/* The earliest stop string in p[0..n) (*at = its offset). */
static bool find_stop(const srv_job *j, const char *p, size_t n, size_t *at)
{
    bool found = false;
    for (int i = 0; i < j->n_stop; i++) {
        const char *hit = memmem(p, n, j->stop[i], j->stop_len[i]);
        if (hit && (!found || (size_t)(hit - p) < *at)) {
            *at = (size_t)(hit - p);
            found = true;
        }
    }
    return found;
}

/* The longest tail of p[0..n) that is a proper prefix of a stop string. */
static size_t holdback(const srv_job *j, const char *p, size_t n)
{
    size_t keep = 0;
    for (int i = 0; i < j->n_stop; i++) {
        size_t m = j->stop_len[i] - 1 < n ? j->stop_len[i] - 1 : n;
        for (size_t k = m; k > keep; k--)
            if (!memcmp(p + n - k, j->stop[i], k)) {
                keep = k;
                break;
            }
    }
    return keep;
}

/* log Σ exp(x) over the finite entries (NaN and +inf count as -inf, as the sampler does). */
/* The token's logprob (log-softmax of the raw logits) and its top alternatives. */
static void token_logprobs(const srv_engine *e, const srv_job *j, const float *lg, srv_job_token *t)
{
    int m = j->logprobs > 0
                ? core_logits_top_k(lg, e->n_vocab, j->logprobs, t->top_ids, t->top_logprobs)
                : 0;
    t->n_top = m > 0 ? m : 0;
    for (int i = 0; i < t->n_top; i++)
        if (t->top_ids[i] == t->id) {
            t->logprob = t->top_logprobs[i];
            return;
        }
    t->logprob = (float)((double)lg[t->id] - core_logits_log_sum_exp(lg, e->n_vocab));
}

/* The end of the stream (EOG, max_tokens, end of context): flushes the decoder, still honours a
 * stop string completed by the flush, releases the rest and ends the job. */
static void seq_close(srv_engine *e, srv__seq *s, srv_finish f)
{
    int n = core_detok_flush(&s->dt, e->dbuf, e->dbuf_cap);
    if (n > 0 && pend_add(s, e->dbuf, (size_t)n) < 0)
        goto nomem;
    close_open_tokens(s);
    size_t at = s->n_pend;
    if (find_stop(s->job, s->pend, s->n_pend, &at))
        f = SRV_FINISH_STOP;
    if (release(s, at, true) < 0)
        goto nomem;
    seq_end(e, s, f, SRV_ERR_NONE, NULL);
    return;
nomem:
    seq_end(e, s, SRV_FINISH_ERROR, SRV_ERR_UNAVAILABLE, "out of memory");
}

/* Samples the next token of s from its logits row and applies the stop rules. */
/* Records, from the logits of prompt position pos, the logprob of prompt token pos + 1 (when
 * there is one); at pos 0 also the first token, which has none. */
static void prompt_logprob(srv_engine *e, srv_job *j, int pos, const float *lg)
{
    srv_job_token first = {.id = j->prompt[0], .logprob = NAN}, t = {0};
    bool next = pos + 1 < j->n_prompt;
    if (next) {
        t.id = j->prompt[pos + 1];
        token_logprobs(e, j, lg, &t);
    }
    pthread_mutex_lock(&j->mu);
    if (pos == 0 && j->n_ptokens == 0)
        j->ptokens[j->n_ptokens++] = first;
    if (next && j->n_ptokens == pos + 1)
        j->ptokens[j->n_ptokens++] = t;
    pthread_mutex_unlock(&j->mu);
}

/* The rest of a step for a sequence whose next token id was sampled (from lg) in the step's
 * core_sampler_sample_many. */
static void seq_sample(srv_engine *e, srv__seq *s, const float *lg, int32_t id)
{
    srv_job *j = s->job;
    if (s->n_hist == j->n_prompt) {
        double now = srv__now();
        pthread_mutex_lock(&j->mu);
        j->st.first_token_ms = (now - j->t_submit) * 1e3;
        pthread_mutex_unlock(&j->mu);
    }
    if (id < 0) {
        seq_end(e, s, SRV_FINISH_ERROR, SRV_ERR_INTERNAL, "the model produced no valid logits");
        return;
    }
    if (core_tokenizer_is_eog(e->tok, id)) {
        seq_close(e, s, SRV_FINISH_STOP);
        return;
    }
    srv_job_token t = {.id = id, .text_end = SIZE_MAX};
    if (j->logprobs >= 0)
        token_logprobs(e, j, lg, &t);
    s->hist[s->n_hist++] = id;
    s->n_gen++;
    if (ptok_push(s, &t) < 0)
        goto nomem;
    int n = core_detok_push(&s->dt, id, e->dbuf, e->dbuf_cap);
    if (n < 0) {
        seq_end(e, s, SRV_FINISH_ERROR, SRV_ERR_INTERNAL, "cannot decode a sampled token");
        return;
    }
    if (pend_add(s, e->dbuf, (size_t)n) < 0)
        goto nomem;
    if (s->dt.n_pending == 0)
        close_open_tokens(s);
    size_t at;
    if (find_stop(j, s->pend, s->n_pend, &at)) {
        if (release(s, at, true) < 0)
            goto nomem;
        seq_end(e, s, SRV_FINISH_STOP, SRV_ERR_NONE, NULL);
        return;
    }
    if (s->n_gen >= j->max_tokens || s->n_hist >= e->n_ctx) {
        seq_close(e, s, SRV_FINISH_LENGTH);
        return;
    }
    if (release(s, s->n_pend - holdback(j, s->pend, s->n_pend), false) < 0)
        goto nomem;
    return;
nomem:
    seq_end(e, s, SRV_FINISH_ERROR, SRV_ERR_UNAVAILABLE, "out of memory");
}

/* ---- the step ------------------------------------------------------------------------------- */

static int cmp_order(const void *a, const void *b)
{
    uint64_t x = (*(srv__seq *const *)a)->order, y = (*(srv__seq *const *)b)->order;
    return x < y ? -1 : x > y;
}

static int cmp_part(const void *a, const void *b)
{
    const srv__part *x = a, *y = b;
    if (x->key != y->key)
        return x->key < y->key ? -1 : 1;
    return x->s->order < y->s->order ? -1 : x->s->order > y->s->order;
}

/* Chooses this step's share of every sequence: decode rows first, then prompt chunks, oldest
 * first, within max_batch rows. Returns the number of parts; *n_dec of them are decode rows. */
static int plan_parts(srv_engine *e, int *n_dec)
{
    int budget = e->max_batch, n = 0, last = -1;
    bool full = false;
    for (int k = 0; k < e->max_seqs; k++) {
        int i = (e->decode_rr + k) % e->max_seqs;
        srv__seq *s = &e->seqs[i];
        if (!s->job || s->n_past < s->job->n_prompt)
            continue;
        if (budget == 0) {
            full = true;
            break;
        }
        e->parts[n++] = (srv__part){.s = s, .j = s->job, .n = 1, .want = true};
        budget--;
        last = i;
    }
    if (full)
        e->decode_rr = (last + 1) % e->max_seqs;
    *n_dec = n;
    int np = 0, extra = PROMPT_LOGIT_ROWS;
    for (int i = 0; i < e->max_seqs; i++)
        if (e->seqs[i].job && e->seqs[i].n_past < e->seqs[i].job->n_prompt)
            e->pre[np++] = &e->seqs[i];
    qsort(e->pre, (size_t)np, sizeof(srv__seq *), cmp_order);
    for (int i = 0; i < np && budget > 0; i++) {
        srv__seq *s = e->pre[i];
        int left = s->job->n_prompt - s->n_past;
        int m = left < e->prefill_chunk ? left : e->prefill_chunk;
        m = m < budget ? m : budget;
        bool all = s->job->prompt_logprobs;
        if (all) {
            m = m < 1 + extra ? m : 1 + extra;
            extra -= m - 1;
        }
        e->parts[n++] = (srv__part){
            .s = s, .j = s->job, .n = m, .want = m == left, .prefill = true, .all = all};
        budget -= m;
    }
    for (int i = 0; i < n; i++)
        e->parts[i].key = e->parts[i].s->set ? e->parts[i].s->set->key : 0;
    qsort(e->parts, (size_t)n, sizeof *e->parts, cmp_part);
    return n;
}

/* Lays the parts out as rows; returns the row count, *any_set when some row has adapters. */
static int fill_rows(srv_engine *e, int n_parts, bool *any_set)
{
    int r = 0;
    *any_set = false;
    for (int p = 0; p < n_parts; p++) {
        const srv__part *pt = &e->parts[p];
        const srv__seq *s = pt->s;
        *any_set |= s->set != NULL;
        for (int k = 0; k < pt->n; k++, r++) {
            int pos = s->n_past + k;
            e->b_tok[r] = s->hist[pos];
            e->b_pos[r] = pos;
            e->b_slot[r] = s->slot;
            e->b_want[r] = pt->all || (pt->want && k == pt->n - 1);
            e->b_sets[r] = s->set;
        }
    }
    return r;
}

static int hist_bin(int rows)
{
    int b = 0;
    while (b < 7 && rows > (1 << b))
        b++;
    return b;
}

/* Counts the step (its tokens only when the forward pass worked) and calls every changed job's
 * notify. */
static void step_done(srv_engine *e, int n_parts, int n_rows, int n_dec, bool ok, double t0)
{
    double dt = srv__now() - t0;
    int prompt_rows = 0, sampled = 0;
    pthread_mutex_lock(&e->mu);
    for (int p = 0; ok && p < n_parts; p++) {
        const srv__part *pt = &e->parts[p];
        if (pt->prefill) {
            prompt_rows += pt->n;
            pt->j->lstat->prompt_tokens += (uint64_t)pt->n;
        }
        if (pt->want) {
            sampled++;
            pt->j->lstat->generated_tokens++;
        }
    }
    srv_engine_stats *st = &e->stats;
    st->steps++;
    st->rows += (uint64_t)n_rows;
    st->step_hist[hist_bin(n_rows)]++;
    st->step_seconds += dt;
    if (ok && prompt_rows == 0) {
        st->decode_steps++;
        st->decode_rows += (uint64_t)n_rows;
        st->decode_seconds += dt;
    }
    st->prompt_tokens += (uint64_t)prompt_rows;
    st->generated_tokens += (uint64_t)sampled;
    pthread_mutex_unlock(&e->mu);
    if (e->verbose >= 2)
        fprintf(stderr, "engine: step %llu: %d rows (%d decode, %d prefill), %d running, %.1f ms\n",
                (unsigned long long)st->steps, n_rows, n_dec, prompt_rows, e->n_running, dt * 1e3);
    for (int i = 0; i < e->n_changed; i++)
        srv__job_notify(e->changed[i]);
    e->n_changed = 0;
}

void srv__sched_step(srv_engine *e)
{
    double t0 = srv__now();
    int n_dec = 0;
    int n_parts = plan_parts(e, &n_dec);
    if (n_parts == 0)
        return;
    bool any_set;
    int n_rows = fill_rows(e, n_parts, &any_set);
    core_batch b = {.n_rows = n_rows,
                    .tokens = e->b_tok,
                    .pos = e->b_pos,
                    .slot = e->b_slot,
                    .want_logits = e->b_want};
    const core_lora_plan *plan = NULL;
    char err[256] = "out of memory";
    int rc = 0;
    if (any_set)
        rc = adapter_plan_build(e->plan, e->model->cfg.n_layer, n_rows, e->b_sets, &plan);
    if (rc == 0)
        rc = core_forward(e->ctx, e->kv, &b, plan, e->logits, err, sizeof err);
    e->n_changed = 0;
    /* Every sampling sequence's next token, on the pool (each has its own sampler): with many
     * rows, sampling one after another would leave the other cores idle for a millisecond and
     * more per step. The loop below then works with the ids. */
    int n_req = 0;
    for (int p = 0, row = 0; p < n_parts && rc == 0; p++) {
        srv__part *pt = &e->parts[p];
        row += pt->all ? pt->n : pt->want ? 1 : 0;
        if (!pt->want || pt->j->max_tokens == 0)
            continue;
        srv__seq *s = pt->s;
        e->sreq[n_req++] = (core_sample_req){.s = s->smp,
                                             .logits = e->logits + (size_t)(row - 1) * e->n_vocab,
                                             .history = s->hist,
                                             .n_history = (size_t)s->n_hist};
    }
    if (n_req)
        core_sampler_sample_many(e->sreq, n_req);
    int out = 0, req = 0; /* the parts that sample take sreq's entries in order */
    for (int p = 0; p < n_parts; p++) {
        srv__part *pt = &e->parts[p];
        srv__seq *s = pt->s;
        if (rc < 0) {
            char msg[300];
            snprintf(msg, sizeof msg, "forward pass failed: %s", err);
            seq_end(e, s, SRV_FINISH_ERROR, SRV_ERR_INTERNAL, msg);
            e->changed[e->n_changed++] = pt->j;
            continue;
        }
        if (pt->all) /* a logits row for every prompt row but the part's last, if it samples */
            for (int k = 0; k < pt->n - (pt->want ? 1 : 0); k++)
                prompt_logprob(e, pt->j, s->n_past + k,
                               e->logits + (size_t)out++ * (size_t)e->n_vocab);
        s->n_past += pt->n;
        if (pt->want) {
            const float *lg = e->logits + (size_t)out++ * (size_t)e->n_vocab;
            if (pt->all)
                prompt_logprob(e, pt->j, s->n_past - 1, lg);
            if (pt->j->max_tokens == 0) /* echo with logprobs: the prompt's scores only */
                seq_close(e, s, SRV_FINISH_LENGTH);
            else
                seq_sample(e, s, lg, e->sreq[req++].id);
            e->changed[e->n_changed++] = pt->j;
        }
    }
    step_done(e, n_parts, n_rows, n_dec, rc == 0, t0);
}
