/* The engine's scheduler (server/scheduler.h): waiting queues and fair admission, the continuous
 * batch of decode rows and prompt chunks, sampling, stop rules and the hand-over of text to jobs.
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
 * rows (each client's oldest prompt first, the client that starts turning every step, then
 * their second ones, ..., oldest admission first within a round), up to the step budget
 * (server/step_budget.h): with decode rows in the step, as many prompt rows as keep the step within
 * its latency target by the costs learned from the steps before (at least a minimum, so that a
 * prompt always progresses); with none, or with --max-step-ms 0, up to max_batch rows. The rows are
 * ordered by lora set so that a set's rows are contiguous; all sets share one core_forward call.
 *
 * Groups. The choices of one request (srv_engine_submit_group) wait in one group, leader first.
 * The others are admitted only once the leader's prompt is in the KV cache, and start from its
 * blocks (copy on write), computing only their last prompt position: a request with n choices
 * costs one prefill, with or without the prefix cache.
 *
 * Text. Each sequence's sampled tokens go through its srv_text (server/text_release.h), which
 * says how many decoded bytes may be released and whether a stop string ended the text; the
 * released bytes and the tokens they complete are appended to the job under its lock.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base.h"
#include "server/log.h"
#include "server/scheduler.h"

/* ---- setup ---------------------------------------------------------------------------------- */

/* Logits rows a step may hold beyond one per part: prompt rows of jobs that record prompt
 * logprobs (echo). Their prefill goes at most this many rows per step beyond the first. */
#define PROMPT_LOGIT_ROWS 32

/* Speculative decoding: draft rows a step may hold (with logits, beyond one per part); which
 * sequences draft and how many: server/spec_gate.h. */
#define SPEC_ROWS 16

int srv__sched_init(srv__sched *sc, const srv__sched_cfg *cfg, char *err, size_t errlen)
{
    memset(sc, 0, sizeof *sc);
    sc->model = cfg->model;
    sc->tok = cfg->tok;
    sc->n_vocab = core_tokenizer_n_vocab(cfg->tok);
    sc->n_ctx = cfg->n_ctx;
    sc->max_seqs = cfg->max_seqs;
    sc->max_batch = cfg->max_batch;
    sc->prefill_chunk = cfg->prefill_chunk;
    sc->verbose = cfg->verbose;
    sc->spec_k = cfg->spec_k;
    sc->spec_ngram = cfg->spec_ngram;
    sc->spec_decode = srv__spec_gated_limit(cfg->int8);
    srv__step_budget_init(&sc->budget, cfg->max_step_ms, cfg->max_batch);
    sc->reg = cfg->reg;
    sc->sh = cfg->sh;
    sc->kv = cfg->kv_pool_bytes
                 ? core_kv_new_pool(&sc->model->cfg, sc->max_seqs, sc->n_ctx, cfg->kv_pool_bytes,
                                    err, errlen)
                 : core_kv_new(&sc->model->cfg, sc->max_seqs, sc->n_ctx, err, errlen);
    if (!sc->kv)
        return -ENOMEM;
    if (cfg->kv_f16)
        core_kv_set_f16(sc->kv, 1); /* every slot is empty: cannot fail */
    sc->ids = malloc((size_t)(sc->n_ctx / CORE_KV_BLOCK + 1) * sizeof *sc->ids);
    if (cfg->prefix_cache && sc->ids && !(sc->prefix = srv_prefix_new(sc->kv))) {
        snprintf(err, errlen, "out of memory");
        srv__sched_deinit(sc);
        return -ENOMEM;
    }
    size_t nb = (size_t)sc->max_batch, ns = (size_t)sc->max_seqs;
    sc->max_out = sc->max_seqs < sc->max_batch ? sc->max_seqs : sc->max_batch;
    sc->ctx = core_ctx_new(sc->model);
    sc->plan = adapter_plan_new();
    sc->seqs = calloc(ns, sizeof *sc->seqs);
    sc->logits = malloc((size_t)(sc->max_out + PROMPT_LOGIT_ROWS + SPEC_ROWS) *
                        (size_t)sc->n_vocab * sizeof(float));
    sc->b_tok = malloc(nb * sizeof(int32_t));
    sc->b_pos = malloc(nb * sizeof(int32_t));
    sc->b_slot = malloc(nb * sizeof(int32_t));
    sc->b_want = malloc(nb);
    sc->b_sets = malloc(nb * sizeof(const adapter_set *));
    sc->parts = malloc(ns * sizeof *sc->parts);
    sc->sreq = malloc(ns * sizeof *sc->sreq);
    sc->pre = malloc(ns * sizeof(srv__seq *));
    sc->changed = malloc(ns * sizeof(srv_job *));
    sc->text_scratch = srv_text_scratch_cap(sc->tok);
    /* The tokenizer keeps its EOG set private; one pass over the vocabulary lists it. */
    for (int32_t t = 0; t < sc->n_vocab && sc->n_eog < (int)(sizeof sc->eog / sizeof sc->eog[0]);
         t++)
        if (core_tokenizer_is_eog(sc->tok, t))
            sc->eog[sc->n_eog++] = t;
    bool ok = sc->ids && sc->ctx && sc->plan && sc->seqs && sc->logits && sc->b_tok && sc->b_pos &&
              sc->b_slot && sc->b_want && sc->b_sets && sc->parts && sc->sreq && sc->pre &&
              sc->changed;
    for (int i = 0; ok && i < sc->max_seqs; i++) {
        sc->seqs[i].slot = i;
        sc->seqs[i].hist = malloc((size_t)sc->n_ctx * sizeof(int32_t));
        ok = sc->seqs[i].hist != NULL &&
             srv_text_init(&sc->seqs[i].text, sc->tok, NULL, NULL, 0, sc->text_scratch) == 0;
    }
    if (!ok) {
        snprintf(err, errlen, "out of memory");
        srv__sched_deinit(sc);
        return -ENOMEM;
    }
    return 0;
}

void srv__sched_deinit(srv__sched *sc)
{
    core_gvocab_free(sc->gvocab);
    for (int i = 0; sc->seqs && i < sc->max_seqs; i++) {
        srv__seq *s = &sc->seqs[i];
        adapter_set_free(s->set);
        core_sampler_free(s->smp);
        core_gmatch_free(s->gm);
        free(s->hist);
        free(s->ctx);
        srv_text_deinit(&s->text);
    }
    free(sc->seqs);
    sc->seqs = NULL;
    for (int i = 0; i < sc->n_clients; i++)
        free(sc->clients[i].groups);
    free(sc->clients);
    sc->clients = NULL;
    sc->n_clients = 0;
    free(sc->logits);
    free(sc->b_tok);
    free(sc->b_pos);
    free(sc->b_slot);
    free(sc->b_want);
    free(sc->b_sets);
    free(sc->parts);
    free(sc->sreq);
    free(sc->pre);
    free(sc->changed);
    sc->logits = NULL;
    sc->b_tok = sc->b_pos = sc->b_slot = NULL;
    sc->b_want = NULL;
    sc->b_sets = NULL;
    sc->parts = NULL;
    sc->sreq = NULL;
    sc->pre = NULL;
    sc->changed = NULL;
    adapter_plan_free(sc->plan);
    core_ctx_free(sc->ctx);
    srv_prefix_free(sc->prefix);
    sc->prefix = NULL;
    free(sc->ids);
    sc->ids = NULL;
    core_kv_free(sc->kv);
    sc->plan = NULL;
    sc->ctx = NULL;
    sc->kv = NULL;
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

static srv__client *client_get(srv__sched *sc, const char *name)
{
    for (int i = 0; i < sc->n_clients; i++)
        if (!strcmp(sc->clients[i].name, name))
            return &sc->clients[i];
    if (sc->n_clients == sc->cap_clients) {
        int cap = sc->cap_clients ? 2 * sc->cap_clients : 8;
        srv__client *v = realloc(sc->clients, (size_t)cap * sizeof *v);
        if (!v)
            return NULL;
        sc->clients = v;
        sc->cap_clients = cap;
    }
    srv__client *c = &sc->clients[sc->n_clients++];
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
static void group_drop(srv__sched *sc, int ci, int gi)
{
    srv__client *c = &sc->clients[ci];
    memmove(&c->groups[gi], &c->groups[gi + 1], (size_t)(c->n_groups - gi - 1) * sizeof *c->groups);
    c->n_groups--;
    if (gi < c->rr)
        c->rr--;
    if (c->rr >= c->n_groups)
        c->rr = 0;
    if (c->n_groups > 0)
        return;
    free(c->groups);
    memmove(&sc->clients[ci], &sc->clients[ci + 1],
            (size_t)(sc->n_clients - ci - 1) * sizeof *sc->clients);
    sc->n_clients--;
    if (ci < sc->client_rr)
        sc->client_rr--;
    if (sc->client_rr >= sc->n_clients)
        sc->client_rr = 0;
}

void srv__sched_enqueue(srv__sched *sc, srv_job *j)
{
    srv__client *c = client_get(sc, j->client);
    srv__group *g = c ? group_get(c, &j->sel) : NULL;
    if (!g) {
        if (c && c->n_groups == 0)
            group_drop(sc, (int)(c - sc->clients), 0);
        srv__job_finish(sc->sh, j, SRV_FINISH_ERROR, SRV_ERR_UNAVAILABLE, "out of memory");
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

void srv__sched_counts(const srv__sched *sc, int *waiting, int *loading)
{
    *waiting = *loading = 0;
    for (int i = 0; i < sc->n_clients; i++)
        for (int k = 0; k < sc->clients[i].n_groups; k++) {
            const srv__group *g = &sc->clients[i].groups[k];
            *waiting += g->n;
            if (g->loading)
                *loading += g->n;
        }
}

/* ---- sequences ------------------------------------------------------------------------------ */

/* The prefix cache's context of a set: each adapter's content hash and weight, in order (empty
 * for the base model). 0 or -ENOMEM. */
static int seq_set_ctx(srv__seq *s, const adapter_set *set)
{
    enum { ITEM = sizeof(uint64_t) + sizeof(float) };
    size_t len = set ? (size_t)set->n * ITEM : 0;
    if (len > s->ctx_cap) {
        uint8_t *v = realloc(s->ctx, len);
        if (!v)
            return -ENOMEM;
        s->ctx = v;
        s->ctx_cap = len;
    }
    for (int i = 0; set && i < set->n; i++) {
        memcpy(s->ctx + (size_t)i * ITEM, &set->items[i].a->hash, sizeof(uint64_t));
        memcpy(s->ctx + (size_t)i * ITEM + sizeof(uint64_t), &set->items[i].weight, sizeof(float));
    }
    s->ctx_len = len;
    return 0;
}

/* Hands the prefix cache the full blocks s has computed (prompt and generated tokens). */
static void cache_blocks(srv__sched *sc, srv__seq *s)
{
    int nb = s->n_past / CORE_KV_BLOCK;
    if (!sc->prefix || nb <= s->n_inserted)
        return;
    const int32_t *ids;
    int held = core_kv_slot_blocks(sc->kv, s->slot, &ids);
    nb = nb < held ? nb : held;
    if (srv_prefix_insert(sc->prefix, s->ctx, s->ctx_len, s->hist, nb, ids) >= 0)
        s->n_inserted = nb;
}

/* A job of a group waits while its leader is queued or computing its prompt (also again after
 * a preemption): it then starts from the leader's KV (kv_start). A leader that has ended leaves
 * it to run alone. */
static bool waits_for_leader(const srv_job *j)
{
    const srv_job *ld = j->leader;
    return ld && !ld->done && (!ld->seq || ld->seq->n_past < ld->n_prompt);
}

/* Starts the empty slot of s from the blocks of j's group leader that hold the prompt but its
 * last position (whose logits s computes itself). Only when the leader runs with the same
 * adapter versions (the prefix cache's context bytes) and has its prompt in the cache; its
 * positions past the prompt, in the last shared block, are overwritten once s writes there
 * (after the block's copy on write). Returns the positions shared (0: none). */
static int share_leader(srv__sched *sc, srv__seq *s, const srv_job *j)
{
    const srv__seq *ls = j->leader && !j->leader->done ? j->leader->seq : NULL;
    int use = j->n_prompt - 1, k = (use + CORE_KV_BLOCK - 1) / CORE_KV_BLOCK;
    if (!ls || use <= 0 || ls->n_past < j->n_prompt || ls->ctx_len != s->ctx_len ||
        (s->ctx_len && memcmp(ls->ctx, s->ctx, s->ctx_len) != 0))
        return 0;
    const int32_t *ids;
    if (core_kv_slot_blocks(sc->kv, ls->slot, &ids) < k ||
        core_kv_share(sc->kv, s->slot, ids, k, use) < 0)
        return 0;
    return use;
}

/* Starts the empty slot of s from the prefix cache's blocks for tokens[0..n): the positions of
 * the longest cached run, but the last token, which is always computed (its logits give the next
 * token). Returns the positions shared (0: none). */
static int share_cached(srv__sched *sc, srv__seq *s, const int32_t *tokens, int n)
{
    int k = srv_prefix_lookup(sc->prefix, s->ctx, s->ctx_len, tokens, n, sc->ids,
                              sc->n_ctx / CORE_KV_BLOCK + 1);
    int use = k * CORE_KV_BLOCK < n - 1 ? k * CORE_KV_BLOCK : n - 1;
    return use > 0 && core_kv_share(sc->kv, s->slot, sc->ids, k, use) == 0 ? use : 0;
}

/* The KV side of admitting job j into the free sequence s: its group leader's prompt blocks, else
 * its prefix from the cache (not when it records prompt logprobs: those need every prompt row
 * computed), then room for the rest of the prompt and one block of growth per running sequence.
 * 0; -ENOSPC when the pool is short (nothing held: the job waits); -ENOMEM. */
static int kv_start(srv__sched *sc, srv__seq *s, srv_job *j, const adapter_set *set)
{
    s->n_past = s->n_cached = s->n_shared = s->n_inserted = 0;
    if (seq_set_ctx(s, set) < 0)
        return -ENOMEM;
    s->n_past = s->n_shared = share_leader(sc, s, j);
    if (sc->prefix && !j->prompt_logprobs && !s->n_shared)
        s->n_past = s->n_cached = share_cached(sc, s, j->prompt, j->n_prompt);
    int need = core_kv_blocks_needed(sc->kv, s->slot, j->n_prompt + 1) + sc->n_running;
    int short_by = need - core_kv_blocks_free(sc->kv);
    if (short_by > 0 && sc->prefix)
        srv_prefix_evict(sc->prefix, short_by);
    /* the prompt's blocks are taken now, so that the next admission sees them gone */
    if (need > core_kv_blocks_free(sc->kv) || core_kv_reserve(sc->kv, s->slot, j->n_prompt + 1)) {
        core_kv_clear(sc->kv, s->slot);
        s->n_past = s->n_cached = s->n_shared = 0;
        return -ENOSPC;
    }
    return 0;
}

/* Sets the tokens a job's sampler masks after n_gen tokens: before min_tokens were made, EOG and
 * the stop ids (neither may end the job yet); after, EOG with ignore_eos; else none. 0 or a
 * negative errno. */
static int set_bans(const srv__sched *sc, core_sampler *smp, const srv_job *j, int n_gen)
{
    int32_t ids[sizeof sc->eog / sizeof sc->eog[0] + SRV_JOB_STOP_IDS_MAX];
    int n = 0;
    bool early = n_gen < j->min_tokens;
    if (early || j->ignore_eos)
        for (int i = 0; i < sc->n_eog; i++)
            ids[n++] = sc->eog[i];
    if (early)
        for (int i = 0; i < j->n_stop_ids; i++)
            ids[n++] = j->stop_ids[i];
    return core_sampler_set_banned(smp, ids, n);
}

/* A matcher for a structured job's grammar, set as its sampler's constraint (the vocabulary's
 * sorted copy is made for the first one). 0 when j has none; -ENOMEM with a message. */
static int grammar_start(srv__sched *sc, const srv_job *j, core_sampler *smp, core_gmatch **out,
                         char *err, size_t errlen)
{
    *out = NULL;
    if (!j->grammar)
        return 0;
    if (!sc->gvocab && !(sc->gvocab = core_gvocab_new(sc->tok, err, errlen)))
        return -ENOMEM;
    core_gmatch *gm = core_gmatch_new(j->grammar, sc->gvocab, err, errlen);
    if (!gm)
        return -ENOMEM;
    if (core_sampler_set_grammar(smp, gm) < 0) {
        core_gmatch_free(gm);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    *out = gm;
    return 0;
}

/* Gives job j the free sequence s: acquires its adapters and makes its sampler. 0 when it runs,
 * -EAGAIN when an adapter is loading, -EINPROGRESS when it waits for its group leader's prompt
 * (nothing changed in either case), another negative errno when the job ended with an error
 * (the caller notifies). */
static int job_start(srv__sched *sc, srv_job *j, srv__seq *s)
{
    if (waits_for_leader(j))
        return -EINPROGRESS;
    char err[ADAPTER_ID_MAX + 128] = "";
    adapter_set *set = NULL;
    if (j->sel.n > 0) {
        int rc = -ENOENT;
        if (sc->reg)
            rc = adapter_registry_acquire(sc->reg, &j->sel, &set, err, sizeof err);
        else
            snprintf(err, sizeof err, "unknown adapter '%s': the server has no adapter registry",
                     j->sel.items[0].id);
        if (rc == -EAGAIN)
            return rc;
        if (rc) {
            srv_err kind = rc == -ENOENT                 ? SRV_ERR_NOT_FOUND
                           : rc == -EIO || rc == -ENOMEM ? SRV_ERR_UNAVAILABLE
                                                         : SRV_ERR_INTERNAL;
            srv__job_finish(sc->sh, j, SRV_FINISH_ERROR, kind, err);
            return rc;
        }
    }
    core_sampler *smp = core_sampler_new(&j->sampling, sc->n_vocab, err, sizeof err);
    int brc = smp ? core_sampler_set_bias(smp, j->bias_ids, j->bias, j->n_bias) : 0;
    for (int i = 0; smp && !brc && i < j->n_stop_ids; i++)
        if (j->stop_ids[i] < 0 || j->stop_ids[i] >= sc->n_vocab)
            brc = -EINVAL;
    if (smp && !brc)
        brc = set_bans(sc, smp, j, 0);
    core_gmatch *gm = NULL;
    if (smp && !brc)
        brc = grammar_start(sc, j, smp, &gm, err, sizeof err);
    if (brc == -EINVAL)
        snprintf(err, sizeof err,
                 "logit_bias or stop_token_ids: a token id outside the vocabulary of %d tokens",
                 (int)sc->n_vocab);
    if (brc) {
        core_sampler_free(smp);
        smp = NULL;
    }
    if (!smp) {
        adapter_set_free(set);
        if (brc == -ENOMEM)
            srv__job_finish(sc->sh, j, SRV_FINISH_ERROR, SRV_ERR_UNAVAILABLE, "out of memory");
        else
            srv__job_finish(sc->sh, j, SRV_FINISH_ERROR, SRV_ERR_BAD_INPUT, err);
        return brc == -ENOMEM ? brc : -EINVAL;
    }
    int rc = kv_start(sc, s, j, set);
    if (rc < 0) {
        core_gmatch_free(gm);
        core_sampler_free(smp);
        adapter_set_free(set);
        if (rc == -ENOSPC)
            return rc;
        srv__job_finish(sc->sh, j, SRV_FINISH_ERROR, SRV_ERR_UNAVAILABLE, "out of memory");
        return rc;
    }
    s->job = j;
    s->set = set;
    s->smp = smp;
    s->gm = gm;
    memcpy(s->hist, j->prompt, (size_t)j->n_prompt * sizeof(int32_t));
    s->n_hist = j->n_prompt;
    s->n_fill = j->n_prompt;
    s->n_gen = 0;
    s->resume = false;
    /* Speculative decoding: the job's choice, else the server's; never under a grammar (its
       matcher would have to follow every draft) */
    srv__spec_start(&s->spec, gm || j->spec_k < 0 ? 0 : j->spec_k > 0 ? j->spec_k : sc->spec_k);
    /* Before min_tokens, stop strings are off too (as vLLM); seq_sample turns them on. */
    srv_text_reset(&s->text, sc->tok, (const char *const *)j->stop, j->stop_len,
                   j->min_tokens > 0 ? 0 : j->n_stop);
    s->order = sc->n_admitted++;
    j->seq = s;
    sc->n_running++;
    double now = core_now();
    pthread_mutex_lock(&j->mu);
    j->st.queue_ms = (now - j->t_submit) * 1e3;
    j->st.cached_tokens = s->n_cached;
    pthread_mutex_unlock(&j->mu);
    pthread_mutex_lock(&sc->sh->mu);
    sc->sh->queued--;
    j->in_queue = false;
    sc->sh->stats.shared_prompt_tokens += (uint64_t)s->n_shared;
    if (sc->prefix && !j->prompt_logprobs && !s->n_shared) {
        sc->sh->stats.prefix_lookups++;
        sc->sh->stats.prefix_hits += s->n_cached > 0;
        sc->sh->stats.prefix_hit_tokens += (uint64_t)s->n_cached;
        j->lstat->cached_tokens += (uint64_t)s->n_cached;
    }
    pthread_mutex_unlock(&sc->sh->mu);
    return 0;
}

/* Hands the job the recorded tokens whose bytes are all released (every one when all is set,
 * with text_end clipped to the final text). j->mu held. 0 or -ENOMEM. */
static int publish_tokens(srv_job *j, srv_text *t, bool all)
{
    size_t len = j->st.text_len;
    int k = srv_text_tokens_done(t, len, all);
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
        srv_job_token tk = t->tok[i];
        if (tk.text_end > len)
            tk.text_end = len;
        j->tokens[j->st.n_tokens++] = tk;
    }
    srv_text_drop_tokens(t, k);
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
        memcpy(j->text + j->st.text_len, srv_text_held(&s->text), n);
        j->st.text_len += n;
        j->text[j->st.text_len] = 0;
    }
    if (rc == 0)
        rc = publish_tokens(j, &s->text, at_end);
    pthread_mutex_unlock(&j->mu);
    if (rc == 0 && n > 0)
        srv_text_consume(&s->text, n);
    return rc;
}

/* Ends the sequence's job and frees its slot, sampler and adapters. Not notified here. */
static void seq_end(srv__sched *sc, srv__seq *s, srv_finish f, srv_err err, const char *msg)
{
    srv_job *j = s->job;
    if (f == SRV_FINISH_STOP || f == SRV_FINISH_LENGTH) {
        pthread_mutex_lock(&j->mu);
        if (publish_tokens(j, &s->text, true) < 0) {
            f = SRV_FINISH_ERROR;
            err = SRV_ERR_UNAVAILABLE;
            msg = "out of memory";
        }
        pthread_mutex_unlock(&j->mu);
    }
    srv__job_finish(sc->sh, j, f, err, msg);
    if (f != SRV_FINISH_ERROR)
        cache_blocks(sc, s);
    adapter_set_free(s->set);
    core_sampler_free(s->smp);
    core_gmatch_free(s->gm);
    core_kv_clear(sc->kv, s->slot);
    s->set = NULL;
    s->smp = NULL;
    s->gm = NULL;
    s->job = NULL;
    srv_text_reset(&s->text, sc->tok, NULL, NULL, 0);
    j->seq = NULL;
    sc->n_running--;
}

/* ---- admission and cancellation ------------------------------------------------------------- */

static srv__seq *free_seq(srv__sched *sc)
{
    for (int i = 0; i < sc->max_seqs; i++)
        if (!sc->seqs[i].job)
            return &sc->seqs[i];
    return NULL;
}

/* Starts the next admissible job in round-robin order; false when there is none (or no slot). */
static bool admit_one(srv__sched *sc)
{
    srv__seq *s = free_seq(sc);
    if (!s)
        return false;
    for (int k = 0; k < sc->n_clients; k++) {
        int ci = (sc->client_rr + k) % sc->n_clients;
        srv__client *c = &sc->clients[ci];
        for (int t = 0; t < c->n_groups; t++) {
            int gi = (c->rr + t) % c->n_groups;
            srv__group *g = &c->groups[gi];
            if (g->loading)
                continue;
            int rc = job_start(sc, g->head, s);
            if (rc == -EAGAIN) {
                g->loading = true;
                continue;
            }
            if (rc == -EINPROGRESS) /* retried after the next step */
                continue;
            if (rc == -ENOSPC) { /* the next job waits for KV blocks, and so do those after it */
                if (!g->head->kv_waited) {
                    g->head->kv_waited = true;
                    pthread_mutex_lock(&sc->sh->mu);
                    sc->sh->stats.kv_admission_waits++;
                    pthread_mutex_unlock(&sc->sh->mu);
                }
                return false;
            }
            srv_job *j = group_pop(g);
            c->rr = (gi + 1) % c->n_groups;
            sc->client_rr = (ci + 1) % sc->n_clients;
            if (g->n == 0)
                group_drop(sc, ci, gi);
            if (rc < 0)
                srv__job_notify(j);
            return true;
        }
    }
    return false;
}

void srv__sched_admit(srv__sched *sc)
{
    if (sc->loads_changed) {
        sc->loads_changed = false;
        for (int i = 0; i < sc->n_clients; i++)
            for (int k = 0; k < sc->clients[i].n_groups; k++)
                sc->clients[i].groups[k].loading = false;
    }
    while (sc->n_clients > 0 && admit_one(sc))
        ;
}

/* How cancel_where ends the jobs it takes: cancelled (NULL), or failed with an error. */
typedef struct end_how {
    srv_err err;
    const char *msg;
} end_how;

/* Ends j as how says (cancelled when how is NULL). Engine thread; j's sequence, if any, is gone. */
static void end_job(srv__sched *sc, srv_job *j, srv__seq *s, const end_how *how)
{
    srv_finish f = how ? SRV_FINISH_ERROR : SRV_FINISH_CANCELLED;
    srv_err err = how ? how->err : SRV_ERR_NONE;
    if (s)
        seq_end(sc, s, f, err, how ? how->msg : NULL);
    else
        srv__job_finish(sc->sh, j, f, err, how ? how->msg : NULL);
}

/* Ends the waiting jobs of group gi of client ci (every one, or the cancelled ones), as how
 * says; returns true when the group (and maybe its client) was removed. */
static bool group_filter(srv__sched *sc, int ci, int gi, bool everything, const end_how *how)
{
    srv__group *g = &sc->clients[ci].groups[gi];
    srv_job **pp = &g->head, *prev = NULL;
    while (*pp) {
        srv_job *j = *pp;
        if (everything || atomic_load(&j->cancel)) {
            *pp = j->next;
            j->next = NULL;
            g->n--;
            end_job(sc, j, NULL, how);
            srv__job_notify(j);
        } else {
            prev = j;
            pp = &j->next;
        }
    }
    g->tail = prev;
    if (g->n > 0)
        return false;
    group_drop(sc, ci, gi);
    return true;
}

static void cancel_where(srv__sched *sc, bool everything, const end_how *how)
{
    for (int i = 0; i < sc->max_seqs; i++) {
        srv__seq *s = &sc->seqs[i];
        if (s->job && (everything || atomic_load(&s->job->cancel))) {
            srv_job *j = s->job;
            end_job(sc, j, s, how);
            srv__job_notify(j);
        }
    }
    for (int ci = 0; ci < sc->n_clients;) {
        int before = sc->n_clients;
        for (int gi = 0; gi < sc->clients[ci].n_groups;) {
            if (!group_filter(sc, ci, gi, everything, how))
                gi++;
            else if (sc->n_clients < before)
                break;
        }
        if (sc->n_clients == before)
            ci++;
    }
}

void srv__sched_sweep_cancelled(srv__sched *sc)
{
    cancel_where(sc, false, NULL);
}

void srv__sched_cancel_all(srv__sched *sc)
{
    cancel_where(sc, true, NULL);
}

void srv__sched_fail_all(srv__sched *sc, srv_err err, const char *msg)
{
    end_how how = {err, msg};
    cancel_where(sc, true, &how);
}

/* ---- text ----------------------------------------------------------------------------------- */

/* log Σ exp(x) over the finite entries (NaN and +inf count as -inf, as the sampler does). */
/* The token's logprob (log-softmax of the raw logits) and its top alternatives. */
static void token_logprobs(const srv__sched *sc, const srv_job *j, const float *lg,
                           srv_job_token *t)
{
    int m = j->logprobs > 0
                ? core_logits_top_k(lg, sc->n_vocab, j->logprobs, t->top_ids, t->top_logprobs)
                : 0;
    t->n_top = m > 0 ? m : 0;
    for (int i = 0; i < t->n_top; i++)
        if (t->top_ids[i] == t->id) {
            t->logprob = t->top_logprobs[i];
            return;
        }
    t->logprob = (float)((double)lg[t->id] - core_logits_log_sum_exp(lg, sc->n_vocab));
}

/* The end of the stream (EOG, max_tokens, end of context): flushes the decoder, still honours a
 * stop string completed by the flush, releases the rest and ends the job. */
static void seq_close(srv__sched *sc, srv__seq *s, srv_finish f)
{
    int rc = srv_text_end(&s->text);
    if (rc == SRV_TEXT_STOP)
        f = SRV_FINISH_STOP;
    if (rc < 0 || release(s, srv_text_ready(&s->text, true), true) < 0) {
        seq_end(sc, s, SRV_FINISH_ERROR, SRV_ERR_UNAVAILABLE, "out of memory");
        return;
    }
    seq_end(sc, s, f, SRV_ERR_NONE, NULL);
}

/* Samples the next token of s from its logits row and applies the stop rules. */
/* Records, from the logits of prompt position pos, the logprob of prompt token pos + 1 (when
 * there is one); at pos 0 also the first token, which has none. */
static void prompt_logprob(srv__sched *sc, srv_job *j, int pos, const float *lg)
{
    srv_job_token first = {.id = j->prompt[0], .logprob = NAN}, t = {0};
    bool next = pos + 1 < j->n_prompt;
    if (next) {
        t.id = j->prompt[pos + 1];
        token_logprobs(sc, j, lg, &t);
    }
    pthread_mutex_lock(&j->mu);
    if (pos == 0 && j->n_ptokens == 0)
        j->ptokens[j->n_ptokens++] = first;
    if (next && j->n_ptokens == pos + 1)
        j->ptokens[j->n_ptokens++] = t;
    pthread_mutex_unlock(&j->mu);
}

/* Counts one inter-token gap of dt seconds in a job's status. j->mu held. */
static void itl_observe(srv_job_status *st, double dt)
{
    st->itl[srv_bucket_of(srv_itl_bounds, SRV_ITL_BUCKETS, dt)]++;
    st->itl_sum += dt;
}

/* Ends s with an error when its sampler gave nothing or its matcher refused the token: without a
 * constraint the logits were bad; with one, the matcher's failure when it has one, else what. */
static void sample_failed(srv__sched *sc, srv__seq *s, const char *what)
{
    char msg[200];
    if (!s->gm) {
        seq_end(sc, s, SRV_FINISH_ERROR, SRV_ERR_INTERNAL, "the model produced no valid logits");
        return;
    }
    const char *why = core_gmatch_failure(s->gm);
    snprintf(msg, sizeof msg, "structured output: %s", why ? why : what);
    seq_end(sc, s, SRV_FINISH_ERROR, SRV_ERR_INTERNAL, msg);
}

/* The rest of a step for a sequence whose next token id was sampled (from lg) in the step's
 * core_sampler_sample_many. */
static void seq_sample(srv__sched *sc, srv__seq *s, const float *lg, int32_t id)
{
    srv_job *j = s->job;
    double now = core_now();
    if (s->n_hist == j->n_prompt || j->t_token > 0) {
        pthread_mutex_lock(&j->mu);
        if (s->n_hist == j->n_prompt)
            j->st.first_token_ms = (now - j->t_submit) * 1e3;
        else
            itl_observe(&j->st, now - j->t_token);
        pthread_mutex_unlock(&j->mu);
    }
    j->t_token = now;
    if (id < 0) {
        sample_failed(sc, s,
                      "no token of the vocabulary can continue the text the schema requires");
        return;
    }
    bool stop_id = false;
    for (int i = 0; i < j->n_stop_ids; i++)
        stop_id = stop_id || j->stop_ids[i] == id;
    if (stop_id || core_tokenizer_is_eog(sc->tok, id)) {
        seq_close(sc, s, SRV_FINISH_STOP);
        return;
    }
    if (s->gm && core_gmatch_accept(s->gm, id) < 0) { /* the mask let it through */
        sample_failed(sc, s, "a sampled token does not continue the match");
        return;
    }
    srv_job_token t = {.id = id, .text_end = SIZE_MAX};
    if (j->logprobs >= 0)
        token_logprobs(sc, j, lg, &t);
    s->hist[s->n_hist++] = id;
    s->n_gen++;
    if (s->n_gen == j->min_tokens && set_bans(sc, s->smp, j, s->n_gen) < 0)
        goto nomem;
    int rc = srv_text_push(&s->text, &t);
    if (rc == -EINVAL) {
        seq_end(sc, s, SRV_FINISH_ERROR, SRV_ERR_INTERNAL, "cannot decode a sampled token");
        return;
    }
    if (rc < 0)
        goto nomem;
    if (rc == SRV_TEXT_STOP) {
        if (release(s, srv_text_ready(&s->text, true), true) < 0)
            goto nomem;
        seq_end(sc, s, SRV_FINISH_STOP, SRV_ERR_NONE, NULL);
        return;
    }
    if (s->gm && core_gmatch_done(s->gm)) { /* the JSON is complete and nothing may follow */
        seq_close(sc, s, SRV_FINISH_STOP);
        return;
    }
    if (s->n_gen >= j->max_tokens || s->n_hist >= sc->n_ctx) {
        seq_close(sc, s, SRV_FINISH_LENGTH);
        return;
    }
    if (release(s, srv_text_ready(&s->text, false), false) < 0)
        goto nomem;
    /* After the release: a stop string must lie wholly in text made past min_tokens. */
    if (s->n_gen == j->min_tokens)
        srv_text_set_stop_count(&s->text, j->n_stop);
    return;
nomem:
    seq_end(sc, s, SRV_FINISH_ERROR, SRV_ERR_UNAVAILABLE, "out of memory");
}

/* A decode part with drafts, after the forward pass: lg holds a logits row per row of the part
 * (the last token, then each draft). Samples from the rows in order, exactly as decoding one
 * token a step would (the same sampler, history and random stream), and goes on while the token
 * sampled is the draft the next row was computed with: the KV of that row is then the one plain
 * decoding would have written. So greedy output is the same token for token, and sampled output
 * has the same distribution (with a seed, the same tokens). The KV past the last accepted row is
 * left to be overwritten. Adapts the sequence's draft length to what was accepted. */
static void spec_verify(srv__sched *sc, srv__part *pt, const float *lg)
{
    srv__seq *s = pt->s;
    int k = pt->spec, acc = 0;
    s->n_past++; /* the last token's row */
    pt->made = 0;
    for (int i = 0; i <= k && s->job; i++) {
        const float *row = lg + (size_t)i * (size_t)sc->n_vocab;
        int32_t draft = i < k ? s->hist[s->n_hist] : -1;
        int32_t id = core_sampler_sample(s->smp, row, s->hist, (size_t)s->n_hist, NULL);
        seq_sample(sc, s, row, id);
        pt->made++;
        if (id != draft)
            break;
        acc++;
        s->n_past++; /* draft i's row computed the right token */
    }
    pt->accepted = acc;
    if (!s->job)
        return;
    srv__spec_learn(&s->spec, k, acc);
}

/* ---- the step ------------------------------------------------------------------------------- */

static int cmp_order(const void *a, const void *b)
{
    uint64_t x = (*(srv__seq *const *)a)->order, y = (*(srv__seq *const *)b)->order;
    return x < y ? -1 : x > y;
}

/* Prefill order: a client's oldest prompt first, then every other client's oldest, then their
 * second ones..., oldest admission first within a round. */
static int cmp_prefill(const void *a, const void *b)
{
    const srv__seq *x = *(srv__seq *const *)a, *y = *(srv__seq *const *)b;
    if (x->client_rank != y->client_rank)
        return x->client_rank < y->client_rank ? -1 : 1;
    return x->order < y->order ? -1 : x->order > y->order;
}

static void reverse(srv__seq **v, int n)
{
    for (int i = 0, k = n - 1; i < k; i++, k--) {
        srv__seq *t = v[i];
        v[i] = v[k];
        v[k] = t;
    }
}

/* Sorts the n prefilling sequences in pre as cmp_prefill says, so that a client that sent many
 * prompts at once does not hold back another's prompt, admitted round-robin after them, for
 * all of its own chunks; and rotates the clients' oldest prompts by one every step, so that
 * under a small step budget, which the first prompt's chunk may use up, a long prompt does not
 * hold back another client's short one for all of its chunks either. */
static void order_prefill(srv__sched *sc, srv__seq **pre, int n)
{
    qsort(pre, (size_t)n, sizeof(srv__seq *), cmp_order);
    int n_first = 0;
    for (int i = 0; i < n; i++) {
        pre[i]->client_rank = 0;
        for (int k = 0; k < i; k++)
            if (!strcmp(pre[k]->job->client, pre[i]->job->client))
                pre[i]->client_rank++;
        n_first += pre[i]->client_rank == 0;
    }
    qsort(pre, (size_t)n, sizeof(srv__seq *), cmp_prefill);
    if (n_first > 1) {
        int r = (int)(sc->prefill_rr++ % (unsigned)n_first);
        reverse(pre, r);
        reverse(pre + r, n_first - r);
        reverse(pre, n_first);
    }
}

static int cmp_part(const void *a, const void *b)
{
    const srv__part *x = a, *y = b;
    if (x->key != y->key)
        return x->key < y->key ? -1 : 1;
    return x->s->order < y->s->order ? -1 : x->s->order > y->s->order;
}

/* ---- KV blocks for the step ------------------------------------------------------------------ */

/* Lets s's blocks go: it starts again from its first token when it next runs, taking back first
 * what the prefix cache still holds of them (resume_cached). */
static void release_blocks(srv__sched *sc, srv__seq *s)
{
    core_kv_clear(sc->kv, s->slot);
    s->n_past = 0;
    s->n_inserted = 0;
    s->resume = true;
}

/* Takes s's blocks back for the pool: it starts again from its first token, its prompt and what
 * it generated so far computed again when it next runs (the same tokens: its text so far stays
 * as it was sent). Its full blocks go to the prefix cache first, which gives them to the pool
 * only as they are needed, least recently used first: what is left of them when s runs again
 * is not computed again (resume_cached). */
static void preempt(srv__sched *sc, srv__seq *s)
{
    cache_blocks(sc, s);
    release_blocks(sc, s);
    s->n_fill = s->n_hist;
    pthread_mutex_lock(&sc->sh->mu);
    sc->sh->stats.kv_preemptions++;
    pthread_mutex_unlock(&sc->sh->mu);
    if (sc->verbose >= 2)
        srv_log(SRV_LOG_DEBUG, "KV pool full: sequence %d preempted at %d tokens", s->slot,
                s->n_hist);
}

/* A preempted sequence about to compute its tokens again starts from the blocks of them the
 * prefix cache still holds (its own, cached when it was preempted, or another sequence's with
 * the same tokens and adapters). The blocks hold the bits a computation would give (a row's
 * bits do not depend on its step). Not for a job that records prompt logprobs: those need every
 * prompt row computed. Returns the positions taken. */
static int resume_cached(srv__sched *sc, srv__seq *s)
{
    s->resume = false;
    if (!sc->prefix || s->job->prompt_logprobs || s->n_past != 0)
        return 0;
    s->n_past = share_cached(sc, s, s->hist, s->n_fill);
    s->n_inserted = s->n_past / CORE_KV_BLOCK;
    return s->n_past;
}

/* The running sequence admitted last after s that holds blocks and has no part in this step. */
static srv__seq *youngest_after(srv__sched *sc, const srv__seq *s)
{
    srv__seq *v = NULL;
    const int32_t *ids;
    for (int i = 0; i < sc->max_seqs; i++) {
        srv__seq *t = &sc->seqs[i];
        if (t->job && t->order > s->order && !t->in_step &&
            core_kv_slot_blocks(sc->kv, t->slot, &ids) > 0 && (!v || t->order > v->order))
            v = t;
    }
    return v;
}

/* Positions s can write up to without taking a block: those of its blocks, unless the one it
 * writes next is shared (to be copied first). */
static int held_positions(const srv__sched *sc, const srv__seq *s)
{
    const int32_t *ids;
    int h = core_kv_slot_blocks(sc->kv, s->slot, &ids) * CORE_KV_BLOCK;
    return h > s->n_past && core_kv_blocks_needed(sc->kv, s->slot, h) == 0 ? h : s->n_past;
}

/* Room for s to hold n positions, at least `least`: from the free blocks (the prefix cache gives
 * back unread ones through the pool's reclaim), then from the sequences admitted after s, which
 * are preempted youngest first. Returns the positions s can hold (>= least), 0 if not even
 * that. */
static int make_room(srv__sched *sc, srv__seq *s, int least, int n)
{
    for (;;) {
        int rc = core_kv_reserve(sc->kv, s->slot, n);
        if (rc == 0)
            return n;
        if (rc != -ENOSPC)
            return 0;
        int held = held_positions(sc, s);
        if (held >= least)
            return held;
        srv__seq *v = youngest_after(sc, s);
        if (!v)
            return 0;
        preempt(sc, v);
    }
}

/* Every decoding sequence's next position, oldest first (older ones preempt younger ones when
 * the pool is short); a sequence that gets none is stalled for this step. The oldest running
 * sequence always gets room: the pool holds one whole context and the others can all be
 * preempted. */
static void reserve_decode_rows(srv__sched *sc)
{
    int nd = 0;
    for (int i = 0; i < sc->max_seqs; i++) {
        srv__seq *s = &sc->seqs[i];
        s->in_step = s->stalled = false;
        if (s->job && s->n_past >= s->n_fill)
            sc->pre[nd++] = s;
    }
    qsort(sc->pre, (size_t)nd, sizeof(srv__seq *), cmp_order);
    for (int k = 0; k < nd; k++) {
        srv__seq *s = sc->pre[k];
        if (s->n_past < s->n_fill) /* preempted by an older one just now */
            continue;
        s->stalled = make_room(sc, s, s->n_past + 1, s->n_past + 1) == 0;
    }
}

/* Prompt lookup: the tokens that followed the latest earlier occurrence of the last g tokens of
 * h[0..n), for g from ngram down to 1; up to k of them into out. Returns how many. */
static int lookup_draft(const int32_t *h, int n, int ngram, int k, int32_t *out)
{
    for (int g = ngram < n - 1 ? ngram : n - 1; g >= 1; g--) {
        const int32_t *tail = h + n - g;
        for (int i = n - g - 1; i >= 0; i--) {
            if (h[i] != tail[0] || memcmp(h + i, tail, (size_t)g * sizeof *h) != 0)
                continue;
            int m = n - (i + g);
            m = m < k ? m : k;
            memmove(out, h + i + g, (size_t)m * sizeof *h);
            return m;
        }
    }
    return 0;
}

/* Speculative decoding for the n decode parts: each sequence that may draft (srv__spec_allow)
 * gets the tokens prompt lookup proposes (written into its hist after n_hist) as extra rows of
 * its part, within SPEC_ROWS rows, the rows left in the step and the KV blocks it already holds
 * or can take free (no one is preempted for a guess). Returns the draft rows. */
static int plan_drafts(srv__sched *sc, int n, int rows_left)
{
    int total = 0;
    for (int p = 0; p < n; p++) {
        srv__part *pt = &sc->parts[p];
        srv__seq *s = pt->s;
        const srv_job *j = s->job;
        int k = srv__spec_allow(&s->spec, n, sc->spec_decode);
        if (k <= 0)
            continue;
        int room = SPEC_ROWS - total;
        room = room < rows_left ? room : rows_left;
        k = k < room ? k : room;
        k = k < j->max_tokens - s->n_gen - 1 ? k : j->max_tokens - s->n_gen - 1;
        k = k < sc->n_ctx - s->n_hist - 1 ? k : sc->n_ctx - s->n_hist - 1;
        if (k <= 0)
            continue;
        k = lookup_draft(s->hist, s->n_hist, j->spec_ngram > 0 ? j->spec_ngram : sc->spec_ngram, k,
                         s->hist + s->n_hist);
        if (k > 0 && core_kv_reserve(sc->kv, s->slot, s->n_past + 1 + k) != 0) {
            int held = held_positions(sc, s);
            k = held - s->n_past - 1 < k ? held - s->n_past - 1 : k;
        }
        if (k <= 0)
            continue;
        pt->n = 1 + k;
        pt->spec = k;
        total += k;
        rows_left -= k;
    }
    return total;
}

/* Chooses this step's share of every sequence: decode rows first, within max_batch rows, then
 * prompt chunks, round-robin over clients and oldest first, within the step budget and the KV
 * blocks there are. Returns the number of parts; *n_dec of them are decode rows. */
static int plan_parts(srv__sched *sc, int *n_dec)
{
    reserve_decode_rows(sc);
    int budget = sc->max_batch, n = 0, last = -1;
    bool full = false;
    for (int k = 0; k < sc->max_seqs; k++) {
        int i = (sc->decode_rr + k) % sc->max_seqs;
        srv__seq *s = &sc->seqs[i];
        if (!s->job || s->n_past < s->n_fill || s->stalled)
            continue;
        if (budget == 0) {
            full = true;
            break;
        }
        sc->parts[n++] = (srv__part){.s = s, .j = s->job, .n = 1, .want = true};
        s->in_step = true;
        budget--;
        last = i;
    }
    if (full)
        sc->decode_rr = (last + 1) % sc->max_seqs;
    *n_dec = n;
    int drafts = plan_drafts(sc, n, budget);
    budget = srv__step_budget_prompt_rows(&sc->budget, n) - drafts;
    int np = 0, extra = PROMPT_LOGIT_ROWS;
    for (int i = 0; i < sc->max_seqs; i++)
        if (sc->seqs[i].job && sc->seqs[i].n_past < sc->seqs[i].n_fill)
            sc->pre[np++] = &sc->seqs[i];
    order_prefill(sc, sc->pre, np);
    for (int i = 0; i < np && budget > 0; i++) {
        srv__seq *s = sc->pre[i];
        int resumed = s->resume ? resume_cached(sc, s) : 0;
        int left = s->n_fill - s->n_past;
        int m = left < sc->prefill_chunk ? left : sc->prefill_chunk;
        m = m < budget ? m : budget;
        bool all = s->job->prompt_logprobs;
        if (all)
            m = m < 1 + extra ? m : 1 + extra;
        int room = make_room(sc, s, s->n_past + 1, s->n_past + m);
        if (room == 0) {
            if (resumed) /* it holds nothing while it waits */
                release_blocks(sc, s);
            continue;
        }
        if (resumed) {
            pthread_mutex_lock(&sc->sh->mu);
            sc->sh->stats.kv_resumed_tokens += (uint64_t)resumed;
            pthread_mutex_unlock(&sc->sh->mu);
        }
        m = room - s->n_past;
        if (all)
            extra -= m - 1;
        s->in_step = true;
        sc->parts[n++] = (srv__part){
            .s = s, .j = s->job, .n = m, .want = m == left, .prefill = true, .all = all};
        budget -= m;
    }
    for (int i = 0; i < n; i++)
        sc->parts[i].key = sc->parts[i].s->set ? sc->parts[i].s->set->key : 0;
    qsort(sc->parts, (size_t)n, sizeof *sc->parts, cmp_part);
    return n;
}

/* Lays the parts out as rows; returns the row count, *any_set when some row has adapters. */
static int fill_rows(srv__sched *sc, int n_parts, bool *any_set)
{
    int r = 0;
    *any_set = false;
    for (int p = 0; p < n_parts; p++) {
        const srv__part *pt = &sc->parts[p];
        const srv__seq *s = pt->s;
        *any_set |= s->set != NULL;
        for (int k = 0; k < pt->n; k++, r++) {
            int pos = s->n_past + k;
            sc->b_tok[r] = s->hist[pos];
            sc->b_pos[r] = pos;
            sc->b_slot[r] = s->slot;
            sc->b_want[r] = pt->all || pt->spec || (pt->want && k == pt->n - 1);
            sc->b_sets[r] = s->set;
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
static void step_done(srv__sched *sc, int n_parts, int n_rows, int n_dec, bool ok, double t0)
{
    double dt = core_now() - t0;
    int prompt_rows = 0, sampled = 0, draft_rows = 0;
    pthread_mutex_lock(&sc->sh->mu);
    for (int p = 0; ok && p < n_parts; p++) {
        const srv__part *pt = &sc->parts[p];
        if (pt->prefill) {
            prompt_rows += pt->n;
            pt->j->lstat->prompt_tokens += (uint64_t)pt->n;
        }
        if (pt->spec) {
            sampled += pt->made;
            pt->j->lstat->generated_tokens += (uint64_t)pt->made;
            draft_rows += pt->spec;
            sc->sh->stats.spec_draft_tokens += (uint64_t)pt->spec;
            sc->sh->stats.spec_accepted_tokens += (uint64_t)pt->accepted;
        } else if (pt->want) {
            sampled++;
            pt->j->lstat->generated_tokens++;
        }
    }
    srv_engine_stats *st = &sc->sh->stats;
    st->steps++;
    st->rows += (uint64_t)n_rows;
    st->step_hist[hist_bin(n_rows)]++;
    st->step_seconds += dt;
    st->step_time[srv_bucket_of(srv_step_bounds, SRV_STEP_BUCKETS, dt)]++;
    if (ok && prompt_rows == 0) {
        st->decode_steps++;
        st->decode_rows += (uint64_t)n_rows;
        st->decode_seconds += dt;
    }
    st->prompt_tokens += (uint64_t)prompt_rows;
    st->generated_tokens += (uint64_t)sampled;
    double target = sc->budget.step_target_ms;
    /* a draft row costs what a prompt row beside decode rows does */
    if (ok && srv__step_budget_observe(&sc->budget, n_dec, prompt_rows + draft_rows, dt * 1e3))
        st->steps_over_target++;
    if (target > 0)
        st->step_target_ms = target;
    st->prompt_row_ms = sc->budget.prompt_row_ms;
    pthread_mutex_unlock(&sc->sh->mu);
    if (sc->verbose >= 2)
        srv_log(SRV_LOG_DEBUG,
                "step %llu: %d rows (%d decode, %d prefill), %d running, %.1f ms "
                "(target %.1f ms)",
                (unsigned long long)st->steps, n_rows, n_dec, prompt_rows, sc->n_running, dt * 1e3,
                target);
    for (int i = 0; i < sc->n_changed; i++)
        srv__job_notify(sc->changed[i]);
    sc->n_changed = 0;
}

void srv__sched_step(srv__sched *sc)
{
    double t0 = core_now();
    int n_dec = 0;
    int n_parts = plan_parts(sc, &n_dec);
    if (n_parts == 0) {
        if (sc->n_running > 0) /* cannot happen (see reserve_decode_rows); never spin on it */
            srv__sched_fail_all(sc, SRV_ERR_UNAVAILABLE, "the KV cache has no room to go on");
        return;
    }
    bool any_set;
    int n_rows = fill_rows(sc, n_parts, &any_set);
    core_batch b = {.n_rows = n_rows,
                    .tokens = sc->b_tok,
                    .pos = sc->b_pos,
                    .slot = sc->b_slot,
                    .want_logits = sc->b_want};
    const core_lora_plan *plan = NULL;
    char err[256] = "out of memory";
    int rc = 0;
    if (any_set)
        rc = adapter_plan_build(sc->plan, sc->model->cfg.n_layer, n_rows, sc->b_sets, &plan);
    if (rc == 0)
        rc = core_forward(sc->ctx, sc->kv, &b, plan, sc->logits, err, sizeof err);
    sc->n_changed = 0;
    /* Every sampling sequence's next token, on the pool (each has its own sampler): with many
     * rows, sampling one after another would leave the other cores idle for a millisecond and
     * more per step. The loop below then works with the ids. */
    int n_req = 0;
    for (int p = 0, row = 0; p < n_parts && rc == 0; p++) {
        srv__part *pt = &sc->parts[p];
        row += pt->all || pt->spec ? pt->n : pt->want ? 1 : 0;
        if (!pt->want || pt->j->max_tokens == 0 || pt->spec) /* drafts: verified in order */
            continue;
        srv__seq *s = pt->s;
        sc->sreq[n_req++] =
            (core_sample_req){.s = s->smp,
                              .logits = sc->logits + (size_t)(row - 1) * sc->n_vocab,
                              .history = s->hist,
                              .n_history = (size_t)s->n_hist};
    }
    if (n_req)
        core_sampler_sample_many(sc->sreq, n_req);
    int out = 0, req = 0; /* the parts that sample take sreq's entries in order */
    for (int p = 0; p < n_parts; p++) {
        srv__part *pt = &sc->parts[p];
        srv__seq *s = pt->s;
        if (rc < 0) {
            char msg[300];
            snprintf(msg, sizeof msg, "forward pass failed: %s", err);
            seq_end(sc, s, SRV_FINISH_ERROR, SRV_ERR_INTERNAL, msg);
            sc->changed[sc->n_changed++] = pt->j;
            continue;
        }
        if (pt->spec) {
            spec_verify(sc, pt, sc->logits + (size_t)out * (size_t)sc->n_vocab);
            out += pt->n;
            sc->changed[sc->n_changed++] = pt->j;
            continue;
        }
        if (pt->all) /* a logits row for every prompt row but the part's last, if it samples */
            for (int k = 0; k < pt->n - (pt->want ? 1 : 0); k++)
                prompt_logprob(sc, pt->j, s->n_past + k,
                               sc->logits + (size_t)out++ * (size_t)sc->n_vocab);
        s->n_past += pt->n;
        if (pt->prefill && s->n_past >= s->n_fill)
            cache_blocks(sc, s);
        if (pt->want) {
            const float *lg = sc->logits + (size_t)out++ * (size_t)sc->n_vocab;
            if (pt->all)
                prompt_logprob(sc, pt->j, s->n_past - 1, lg);
            if (pt->j->max_tokens == 0) /* echo with logprobs: the prompt's scores only */
                seq_close(sc, s, SRV_FINISH_LENGTH);
            else
                seq_sample(sc, s, lg, sc->sreq[req++].id);
            sc->changed[sc->n_changed++] = pt->j;
        }
    }
    step_done(sc, n_parts, n_rows, n_dec, rc == 0, t0);
}
