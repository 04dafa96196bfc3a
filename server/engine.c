/* The engine (server/engine.h): its lifecycle, the engine thread and its libuv loop, the inbox,
 * the job objects and the statistics. The scheduler proper (admission, batches, sampling, text)
 * is scheduler.c.
 *
 * Design. Everything that computes lives on one thread, the engine thread, which runs a libuv
 * loop of its own. The registry is created, used (acquire) and freed on that thread, because its
 * loads are published through that loop. Other threads reach the engine in exactly two ways:
 * srv_engine_submit pushes a job onto the inbox under the engine mutex and wakes the loop with
 * uv_async_send; srv_job_cancel sets the job's atomic flag and wakes the loop the same way. Each
 * turn the thread runs the loop (without waiting while sequences are running, so loads and file
 * events are served between steps), takes the inbox, sweeps cancelled jobs, admits, and runs one
 * step. The wake handle is sent to only under a lock that also tells the sender the engine is
 * still there (srv_engine.mu with `stopping` for submit, srv_job.mu with `engine` for cancel),
 * and it is closed only after every job has been detached, so no send can reach a closed handle.
 */
#include "server/engine.h"
#include "core/base.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/kernels/blas.h"
#include "server/engine_internal.h"
#include "server/log.h"

void srv_engine_opts_default(srv_engine_opts *o)
{
    memset(o, 0, sizeof *o);
    o->max_batch_tokens = 512;
    o->max_seqs = 32;
    o->queue_limit = 256;
    o->prefill_chunk = 256;
    o->max_step_ms = -1;
    o->watch = true;
    o->verbose = 1;
}

const char *srv_err_name(srv_err e)
{
    static const char *const names[] = {"none",        "bad_input",     "not_found", "unloadable",
                                        "unavailable", "shutting_down", "busy",      "internal"};
    return (unsigned)e < sizeof names / sizeof *names ? names[e] : "?";
}

const char *srv_finish_name(srv_finish f)
{
    switch (f) {
    case SRV_FINISH_STOP:
        return "stop";
    case SRV_FINISH_LENGTH:
        return "length";
    case SRV_FINISH_ERROR:
        return "error";
    case SRV_FINISH_CANCELLED:
        return "cancelled";
    default:
        return NULL;
    }
}

/* ---- jobs ----------------------------------------------------------------------------------- */

/* Inter-token gaps from 5 ms (a batch-of-one step on a fast host) to 5 s (a step held up by
 * long prompts on a loaded one); step times from 2 ms to 5 s. */
const double srv_itl_bounds[SRV_ITL_BUCKETS] = {0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
                                                0.1,   0.15, 0.25,  0.5,  1,    2.5,  5};
const double srv_step_bounds[SRV_STEP_BUCKETS] = {0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05,
                                                  0.075, 0.1,   0.15, 0.25,  0.5,  1,    5};

int srv_bucket_of(const double *bounds, int n, double v)
{
    int i = 0;
    while (i < n && v > bounds[i])
        i++;
    return i;
}

static void job_free(srv_job *j)
{
    srv_job_unref(j->leader);
    for (int i = 0; i < j->n_stop; i++)
        free(j->stop[i]);
    free(j->prompt);
    free(j->text);
    free(j->tokens);
    free(j->ptokens);
    free(j->bias_ids);
    free(j->bias);
    core_grammar_free(j->grammar);
    pthread_mutex_destroy(&j->notify_mu);
    pthread_mutex_destroy(&j->mu);
    free(j);
}

/* Checks what srv_job_new can check without the engine (the context length and the vocabulary
 * are checked at submit time, on the engine thread). */
static int job_params_check(const srv_job_params *p, char *err, size_t errlen)
{
    char serr[128];
    if (!p->prompt || p->n_prompt < 1) {
        core_errf(err, errlen, "the prompt is empty");
        return -EINVAL;
    }
    if (p->max_tokens < 0) {
        core_errf(err, errlen, "max_tokens must be >= 0, got %d", p->max_tokens);
        return -EINVAL;
    }
    if (p->n_stop < 0 || p->n_stop > SRV_JOB_STOP_MAX) {
        core_errf(err, errlen, "at most %d stop strings", SRV_JOB_STOP_MAX);
        return -EINVAL;
    }
    for (int i = 0; i < p->n_stop; i++)
        if (!p->stop[i] || !p->stop[i][0]) {
            core_errf(err, errlen, "stop strings must not be empty");
            return -EINVAL;
        }
    if (p->logprobs < -1 || p->logprobs > SRV_JOB_TOP_MAX) {
        core_errf(err, errlen, "logprobs must be in [0, %d], got %d", SRV_JOB_TOP_MAX, p->logprobs);
        return -EINVAL;
    }
    if (p->n_bias < 0 || p->n_bias > SRV_JOB_BIAS_MAX ||
        (p->n_bias > 0 && !(p->bias_ids && p->bias))) {
        core_errf(err, errlen, "at most %d logit_bias entries", SRV_JOB_BIAS_MAX);
        return -EINVAL;
    }
    for (int i = 0; i < p->n_bias; i++)
        if (!isfinite(p->bias[i])) {
            core_errf(err, errlen, "logit_bias values must be finite");
            return -EINVAL;
        }
    if (p->n_stop_ids < 0 || p->n_stop_ids > SRV_JOB_STOP_IDS_MAX ||
        (p->n_stop_ids > 0 && !p->stop_ids)) {
        core_errf(err, errlen, "at most %d stop_token_ids", SRV_JOB_STOP_IDS_MAX);
        return -EINVAL;
    }
    if (p->min_tokens < 0) {
        core_errf(err, errlen, "min_tokens must be >= 0, got %d", p->min_tokens);
        return -EINVAL;
    }
    if (p->spec_k > SRV_SPEC_K_MAX || p->spec_ngram < 0 || p->spec_ngram > SRV_SPEC_NGRAM_MAX) {
        core_errf(err, errlen, "speculative: k must be at most %d and ngram in [1, %d]",
                  SRV_SPEC_K_MAX, SRV_SPEC_NGRAM_MAX);
        return -EINVAL;
    }
    if (p->sel.n < 0 || p->sel.n > ADAPTER_SEL_MAX) {
        core_errf(err, errlen, "at most %d adapters", ADAPTER_SEL_MAX);
        return -EINVAL;
    }
    if (p->client && strlen(p->client) > SRV_CLIENT_MAX) {
        core_errf(err, errlen, "client key longer than %d bytes", SRV_CLIENT_MAX);
        return -EINVAL;
    }
    /* The sampler checks its own parameters; a one-token vocabulary is enough for that. */
    core_sampler *s = core_sampler_new(&p->sampling, 1, serr, sizeof serr);
    if (!s) {
        core_errf(err, errlen, "%s", serr);
        return -EINVAL;
    }
    core_sampler_free(s);
    return 0;
}

srv_job *srv_job_new(const srv_job_params *p, void (*notify)(void *ud), void *ud, char *err,
                     size_t errlen)
{
    if (!p) {
        core_errf(err, errlen, "no parameters");
        return NULL;
    }
    if (job_params_check(p, err, errlen) < 0)
        return NULL;
    srv_job *j = calloc(1, sizeof *j);
    if (!j)
        goto nomem;
    pthread_mutex_init(&j->mu, NULL);
    pthread_mutex_init(&j->notify_mu, NULL);
    atomic_init(&j->refs, 1);
    atomic_init(&j->cancel, false);
    j->prompt = malloc((size_t)p->n_prompt * sizeof(int32_t));
    j->text = malloc(64);
    if (!j->prompt || !j->text)
        goto fail;
    memcpy(j->prompt, p->prompt, (size_t)p->n_prompt * sizeof(int32_t));
    j->n_prompt = p->n_prompt;
    j->text[0] = 0;
    j->text_cap = 64;
    j->sel = p->sel;
    snprintf(j->label, sizeof j->label, "%s", p->label ? p->label : "base");
    snprintf(j->client, sizeof j->client, "%s", p->client ? p->client : "");
    snprintf(j->request_id, sizeof j->request_id, "%s", p->request_id ? p->request_id : "");
    j->max_tokens = p->max_tokens;
    j->sampling = p->sampling;
    j->sampling.seed = p->seed;
    j->sampling.count_from = (size_t)p->n_prompt; /* the penalties count generated tokens */
    for (int i = 0; i < p->n_stop; i++) {
        j->stop[i] = strdup(p->stop[i]);
        if (!j->stop[i])
            goto fail;
        j->stop_len[i] = strlen(p->stop[i]);
        j->n_stop++;
    }
    j->logprobs = p->logprobs;
    j->prompt_logprobs = p->prompt_logprobs && p->logprobs >= 0;
    if (j->prompt_logprobs && !(j->ptokens = calloc((size_t)p->n_prompt, sizeof *j->ptokens)))
        goto fail;
    if (p->n_bias > 0) {
        j->bias_ids = malloc((size_t)p->n_bias * sizeof(int32_t));
        j->bias = malloc((size_t)p->n_bias * sizeof(float));
        if (!j->bias_ids || !j->bias)
            goto fail;
        memcpy(j->bias_ids, p->bias_ids, (size_t)p->n_bias * sizeof(int32_t));
        memcpy(j->bias, p->bias, (size_t)p->n_bias * sizeof(float));
        j->n_bias = p->n_bias;
    }
    j->min_tokens = p->min_tokens;
    j->ignore_eos = p->ignore_eos;
    j->spec_k = p->spec_k;
    j->spec_ngram = p->spec_ngram;
    if (p->n_stop_ids > 0)
        memcpy(j->stop_ids, p->stop_ids, (size_t)p->n_stop_ids * sizeof(int32_t));
    j->n_stop_ids = p->n_stop_ids;
    j->grammar = core_grammar_ref(p->grammar);
    j->notify = notify;
    j->ud = ud;
    j->st.prompt_tokens = p->n_prompt;
    j->st.first_token_ms = -1;
    j->st.total_ms = -1;
    return j;
fail:
    job_free(j);
nomem:
    core_errf(err, errlen, "out of memory");
    return NULL;
}

srv_job *srv_job_new_load(const char *id, bool pin, void (*notify)(void *ud), void *ud, char *err,
                          size_t errlen)
{
    if (!id || !id[0] || strlen(id) > ADAPTER_ID_MAX) {
        core_errf(err, errlen, "adapter id must be 1..%d bytes", ADAPTER_ID_MAX);
        return NULL;
    }
    srv_job *j = calloc(1, sizeof *j);
    char *text = malloc(1);
    if (!j || !text) {
        free(j);
        free(text);
        core_errf(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&j->mu, NULL);
    pthread_mutex_init(&j->notify_mu, NULL);
    atomic_init(&j->refs, 1);
    atomic_init(&j->cancel, false);
    j->kind = SRV__JOB_LOAD;
    snprintf(j->load_id, sizeof j->load_id, "%s", id);
    j->load_pin = pin;
    j->text = text;
    j->text[0] = 0;
    j->text_cap = 1;
    snprintf(j->label, sizeof j->label, "%s", id);
    j->notify = notify;
    j->ud = ud;
    j->st.first_token_ms = -1;
    j->st.total_ms = -1;
    return j;
}

void srv_job_ref(srv_job *j)
{
    atomic_fetch_add_explicit(&j->refs, 1, memory_order_relaxed);
}

void srv_job_unref(srv_job *j)
{
    if (j && atomic_fetch_sub_explicit(&j->refs, 1, memory_order_acq_rel) == 1)
        job_free(j);
}

void srv_job_cancel(srv_job *j)
{
    if (!j)
        return;
    atomic_store(&j->cancel, true);
    pthread_mutex_lock(&j->mu);
    if (j->engine) {
        atomic_store(&j->engine->cancel_pending, true);
        uv_async_send(&j->engine->wake);
    }
    pthread_mutex_unlock(&j->mu);
}

void srv_job_status_get(srv_job *j, srv_job_status *out)
{
    pthread_mutex_lock(&j->mu);
    *out = j->st;
    pthread_mutex_unlock(&j->mu);
}

size_t srv_job_text(srv_job *j, size_t from, char *buf, size_t cap)
{
    size_t n = 0;
    pthread_mutex_lock(&j->mu);
    if (from < j->st.text_len) {
        n = j->st.text_len - from;
        if (n > cap)
            n = cap;
        memcpy(buf, j->text + from, n);
    }
    pthread_mutex_unlock(&j->mu);
    return n;
}

int srv_job_tokens(srv_job *j, int from, srv_job_token *out, int cap)
{
    int n = 0;
    pthread_mutex_lock(&j->mu);
    if (from >= 0 && from < j->st.n_tokens && cap > 0) {
        n = j->st.n_tokens - from;
        if (n > cap)
            n = cap;
        memcpy(out, j->tokens + from, (size_t)n * sizeof *out);
    }
    pthread_mutex_unlock(&j->mu);
    return n;
}

int srv_job_prompt_tokens(srv_job *j, srv_job_token *out, int cap)
{
    pthread_mutex_lock(&j->mu);
    int n = j->n_ptokens < cap ? j->n_ptokens : cap;
    if (n > 0)
        memcpy(out, j->ptokens, (size_t)n * sizeof *out);
    pthread_mutex_unlock(&j->mu);
    return n > 0 ? n : 0;
}

void srv__job_finish(srv__shared *sh, srv_job *j, srv_finish f, srv_err err, const char *msg)
{
    double now = core_now();
    pthread_mutex_lock(&j->mu);
    j->st.finish = f;
    if (f == SRV_FINISH_ERROR) {
        j->st.err = err;
        snprintf(j->st.error, sizeof j->st.error, "%s", msg ? msg : "");
    }
    j->st.completion_tokens = j->st.n_tokens;
    j->st.total_ms = (now - j->t_submit) * 1e3;
    j->engine = NULL;
    pthread_mutex_unlock(&j->mu);
    j->done = true;

    pthread_mutex_lock(&sh->mu);
    if (j->in_queue)
        sh->queued--;
    j->in_queue = false;
    if (j->kind == SRV__JOB_LOAD) {
        sh->loads--;
        pthread_mutex_unlock(&sh->mu);
        return;
    }
    sh->active--;
    if (f == SRV_FINISH_ERROR) {
        sh->stats.jobs_failed++;
        j->lstat->failures++;
    } else if (f == SRV_FINISH_CANCELLED) {
        sh->stats.jobs_cancelled++;
    } else {
        sh->stats.jobs_finished++;
    }
    pthread_mutex_unlock(&sh->mu);
    if (sh->verbose >= 2 || (sh->verbose >= 1 && f == SRV_FINISH_ERROR))
        srv_log_req(f == SRV_FINISH_ERROR ? SRV_LOG_WARN : SRV_LOG_DEBUG,
                    j->request_id[0] ? j->request_id : NULL, "job %s (%s) ended %s%s%s", j->label,
                    j->client[0] ? j->client : "-", srv_finish_name(f),
                    f == SRV_FINISH_ERROR ? ": " : "", f == SRV_FINISH_ERROR && msg ? msg : "");
}

void srv__job_notify(srv_job *j)
{
    pthread_mutex_lock(&j->notify_mu);
    if (j->notify)
        j->notify(j->ud);
    pthread_mutex_unlock(&j->notify_mu);
    if (j->done)
        srv_job_unref(j);
}

void srv_job_detach_notify(srv_job *j)
{
    if (!j)
        return;
    pthread_mutex_lock(&j->notify_mu);
    j->notify = NULL;
    j->ud = NULL;
    pthread_mutex_unlock(&j->notify_mu);
}

/* ---- submission ----------------------------------------------------------------------------- */

static int cmp_label(const void *key, const void *elem)
{
    return strcmp(key, (*(srv_label_stats *const *)elem)->label);
}

/* The counters of label, created on first use. NULL only without memory. e->sh.mu held. */
static srv_label_stats *label_get(srv_engine *e, const char *label)
{
    if (e->sh.n_labels >= SRV__LABELS_MAX)
        label = "other";
    size_t lo = 0, hi = e->sh.n_labels;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = cmp_label(label, &e->sh.labels[mid]);
        if (c == 0)
            return e->sh.labels[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    srv_label_stats **v = realloc(e->sh.labels, (e->sh.n_labels + 1) * sizeof(srv_label_stats *));
    if (!v)
        return NULL;
    e->sh.labels = v;
    srv_label_stats *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    snprintf(s->label, sizeof s->label, "%s", label);
    memmove(v + lo + 1, v + lo, (e->sh.n_labels - lo) * sizeof(srv_label_stats *));
    v[lo] = s;
    e->sh.n_labels++;
    return s;
}

/* Whether jobs a and b may form a group: the same prompt, selection and client. */
static bool group_compatible(const srv_job *a, const srv_job *b)
{
    if (a->kind != SRV__JOB_GENERATE || b->kind != SRV__JOB_GENERATE ||
        a->n_prompt != b->n_prompt || a->sel.n != b->sel.n || strcmp(a->client, b->client) != 0 ||
        memcmp(a->prompt, b->prompt, (size_t)a->n_prompt * sizeof(int32_t)) != 0)
        return false;
    for (int i = 0; i < a->sel.n; i++)
        if (strcmp(a->sel.items[i].id, b->sel.items[i].id) != 0 ||
            a->sel.items[i].weight != b->sel.items[i].weight)
            return false;
    return true;
}

/* Marks the n jobs submitted; -EINVAL (none marked) when one already was. */
static int mark_submitted(srv_job **jobs, int n, bool on)
{
    int k = 0;
    for (; k < n; k++) {
        pthread_mutex_lock(&jobs[k]->mu);
        bool again = on && jobs[k]->submitted;
        jobs[k]->submitted = on;
        pthread_mutex_unlock(&jobs[k]->mu);
        if (again)
            break;
    }
    if (k == n)
        return 0;
    for (int i = 0; i < k; i++) {
        pthread_mutex_lock(&jobs[i]->mu);
        jobs[i]->submitted = false;
        pthread_mutex_unlock(&jobs[i]->mu);
    }
    return -EINVAL;
}

int srv_engine_submit_group(srv_engine *e, srv_job **jobs, int n)
{
    if (n < 1 || n > SRV_JOB_GROUP_MAX)
        return -EINVAL;
    for (int i = 1; i < n; i++)
        if (!group_compatible(jobs[0], jobs[i]) || jobs[i]->leader)
            return -EINVAL;
    if (mark_submitted(jobs, n, true) < 0)
        return -EINVAL;
    int rc = 0;
    pthread_mutex_lock(&e->sh.mu);
    srv_label_stats *ls = NULL;
    bool load = jobs[0]->kind == SRV__JOB_LOAD;
    if (e->sh.draining || e->sh.stopping)
        rc = -ESHUTDOWN;
    else if (!load && e->sh.active + n > e->max_seqs + e->queue_limit &&
             (e->sh.active > 0 || n == 1))
        rc = -EAGAIN; /* every slot taken and queue_limit jobs waiting (also those not yet
                         moved from the inbox into free slots: they are not waiting); a group
                         larger than that still runs on an idle engine */
    else if (!load && !(ls = label_get(e, jobs[0]->label)))
        rc = -ENOMEM;
    if (rc) {
        e->sh.stats.jobs_rejected += !load; /* one request */
        pthread_mutex_unlock(&e->sh.mu);
        mark_submitted(jobs, n, false);
        return rc;
    }
    double now = core_now();
    for (int i = 0; i < n; i++) {
        srv_job *j = jobs[i];
        srv_job_ref(j); /* the engine's reference */
        if (i > 0) {
            srv_job_ref(jobs[0]);
            j->leader = jobs[0];
        }
        j->t_submit = now;
        j->lstat = ls;
        j->next = NULL;
        if (e->sh.inbox_tail)
            e->sh.inbox_tail->next = j;
        else
            e->sh.inbox_head = j;
        e->sh.inbox_tail = j;
        if (load) {
            e->sh.loads++;
        } else {
            ls->requests += i == 0; /* one request */
            j->in_queue = true;
            e->sh.queued++;
            e->sh.active++;
            e->sh.stats.jobs_submitted++;
        }
        pthread_mutex_lock(&j->mu);
        j->engine = e;
        pthread_mutex_unlock(&j->mu);
    }
    uv_async_send(&e->wake);
    pthread_mutex_unlock(&e->sh.mu);
    return 0;
}

int srv_engine_submit(srv_engine *e, srv_job *j)
{
    return srv_engine_submit_group(e, &j, 1);
}

/* The registry finished the load an admin load job asked for: the job ends with its result. */
static void on_admin_loaded(void *ud, const adapter_load_result *res)
{
    srv_job *j = ud;
    pthread_mutex_lock(&j->mu);
    srv_engine *e = j->engine;
    pthread_mutex_unlock(&j->mu);
    char msg[sizeof j->st.error];
    if (res->rc == 0) {
        pthread_mutex_lock(&j->mu); /* before the finish, which another thread may read at once */
        j->st.version = res->version;
        j->st.unchanged = res->unchanged;
        pthread_mutex_unlock(&j->mu);
        srv__job_finish(&e->sh, j, SRV_FINISH_STOP, SRV_ERR_NONE, NULL);
    } else {
        srv_err err = res->rc == -ENOENT      ? SRV_ERR_NOT_FOUND
                      : res->rc == -ECANCELED ? SRV_ERR_SHUTTING_DOWN
                      : res->rc == -ENOMEM    ? SRV_ERR_UNAVAILABLE
                                              : SRV_ERR_UNLOADABLE;
        snprintf(msg, sizeof msg, "adapter '%.64s' failed to load: %.150s", j->load_id,
                 res->err ? res->err : "unknown error");
        srv__job_finish(&e->sh, j, SRV_FINISH_ERROR, err, msg);
    }
    srv__job_notify(j);
}

/* Hands an admin load job to the registry; it ends in on_admin_loaded. */
static void start_admin_load(srv_engine *e, srv_job *j)
{
    char err[256];
    int rc = e->reg ? adapter_registry_load_then(e->reg, j->load_id, j->load_pin, on_admin_loaded,
                                                 j, err, sizeof err)
                    : -ENOENT;
    if (rc == 0)
        return;
    if (!e->reg)
        snprintf(err, sizeof err, "this server has no adapter registry");
    srv__job_finish(&e->sh, j, SRV_FINISH_ERROR,
                    rc == -ENOENT ? SRV_ERR_NOT_FOUND : SRV_ERR_BAD_INPUT, err);
    srv__job_notify(j);
}

/* Moves new jobs into the scheduler, ending at once those that cannot or need not run. */
static void intake(srv_engine *e, srv_job *list)
{
    char msg[160];
    while (list) {
        srv_job *j = list;
        list = j->next;
        j->next = NULL;
        if (j->kind == SRV__JOB_LOAD) {
            start_admin_load(e, j);
            continue;
        }
        bool bad_id = false;
        for (int i = 0; i < j->n_prompt; i++)
            bad_id |= j->prompt[i] < 0 || j->prompt[i] >= e->n_vocab;
        if (atomic_load(&j->cancel)) {
            srv__job_finish(&e->sh, j, SRV_FINISH_CANCELLED, SRV_ERR_NONE, NULL);
        } else if (j->n_prompt >= e->n_ctx) {
            snprintf(msg, sizeof msg, "the prompt has %d tokens; the context holds %d", j->n_prompt,
                     e->n_ctx);
            srv__job_finish(&e->sh, j, SRV_FINISH_ERROR, SRV_ERR_BAD_INPUT, msg);
        } else if (bad_id) {
            snprintf(msg, sizeof msg, "the prompt has a token id outside [0, %d)", e->n_vocab);
            srv__job_finish(&e->sh, j, SRV_FINISH_ERROR, SRV_ERR_BAD_INPUT, msg);
        } else if (j->max_tokens == 0 && !j->prompt_logprobs) {
            srv__job_finish(&e->sh, j, SRV_FINISH_LENGTH, SRV_ERR_NONE, NULL);
        } else {
            srv__sched_enqueue(&e->sched, j);
            continue;
        }
        srv__job_notify(j);
    }
}

/* srv_engine_abort's work: every job waiting or running ends with its error. */
static void fail_all(srv_engine *e)
{
    char msg[sizeof e->sh.abort_msg];
    pthread_mutex_lock(&e->sh.mu);
    snprintf(msg, sizeof msg, "%s", e->sh.abort_msg);
    uint64_t failed = e->sh.stats.jobs_failed;
    pthread_mutex_unlock(&e->sh.mu);
    srv__sched_fail_all(&e->sched, SRV_ERR_SHUTTING_DOWN, msg);
    pthread_mutex_lock(&e->sh.mu);
    e->sh.stats.jobs_aborted += e->sh.stats.jobs_failed - failed;
    pthread_mutex_unlock(&e->sh.mu);
}

/* ---- the engine thread ---------------------------------------------------------------------- */

static void on_wake(uv_async_t *h)
{
    (void)h; /* the loop below looks at the inbox and the flags after every turn */
}

/* A load finished: the scheduler looks at the jobs that wait for loads again (on_registry_event
 * logs it). */
static void on_loaded(void *ud, const char *id, bool ok, const char *err, const char *abs_dir)
{
    (void)id, (void)ok, (void)err, (void)abs_dir; /* on_event logs them */
    srv_engine *e = ud;
    e->sched.loads_changed = true;
}

/* The registry's loads, failures, evictions and discoveries, in the log (info; failures warn).
 * Under the registry's lock: logs and nothing else. */
static void on_registry_event(void *ud, const adapter_event *ev)
{
    static const char *const what[] = {
        [ADAPTER_EVENT_LOADED] = "loaded",       [ADAPTER_EVENT_RELOADED] = "reloaded",
        [ADAPTER_EVENT_UNCHANGED] = "unchanged", [ADAPTER_EVENT_FAILED] = "failed",
        [ADAPTER_EVENT_EVICTED] = "evicted",     [ADAPTER_EVENT_DISCOVERED] = "discovered",
        [ADAPTER_EVENT_REMOVED] = "removed"};
    const srv_engine *e = ud;
    if (e->verbose < 1)
        return;
    char version[17] = "", old[17] = "";
    if (ev->version)
        snprintf(version, sizeof version, "%016llx", (unsigned long long)ev->version);
    if (ev->old_version)
        snprintf(old, sizeof old, "%016llx", (unsigned long long)ev->old_version);
    srv_log_field f[6];
    int n = 0;
    f[n++] = SRV_LOG_STR("event", what[ev->kind]);
    f[n++] = SRV_LOG_STR("node", ev->id);
    f[0].json_only = f[1].json_only = true; /* the text message says them */
    f[n++] = SRV_LOG_STR("version", version[0] ? version : NULL);
    f[n++] = SRV_LOG_STR("old_version", old[0] ? old : NULL);
    if (ev->bytes)
        f[n++] = SRV_LOG_INT("bytes", (long long)ev->bytes);
    if (ev->kind <= ADAPTER_EVENT_FAILED) /* a load */
        f[n++] = SRV_LOG_MS("ms", ev->ms);
    if (ev->kind == ADAPTER_EVENT_FAILED)
        srv_log_with(SRV_LOG_WARN, f, n, "adapter %s failed to load from %s: %s", ev->id,
                     ev->abs_dir, ev->err);
    else
        srv_log_with(SRV_LOG_INFO, f, n, "adapter %s %s", ev->id, what[ev->kind]);
}

/* Publishes the gauges of srv_engine_stats. */
static void update_gauges(srv_engine *e)
{
    int waiting, loading;
    srv__sched_counts(&e->sched, &waiting, &loading);
    size_t kvb = core_kv_bytes(e->sched.kv);
    srv_prefix_stats ps = {0};
    if (e->sched.prefix)
        srv_prefix_stats_get(e->sched.prefix, &ps);
    pthread_mutex_lock(&e->sh.mu);
    e->sh.stats.kv_blocks_total = core_kv_blocks_total(e->sched.kv);
    e->sh.stats.kv_blocks_used =
        core_kv_blocks_total(e->sched.kv) - core_kv_blocks_free(e->sched.kv);
    e->sh.stats.kv_blocks_cached = ps.entries;
    e->sh.stats.kv_block_bytes = core_kv_block_bytes(e->sched.kv);
    e->sh.stats.prefix_evictions = ps.evicted;
    e->sh.stats.running = e->sched.n_running;
    e->sh.stats.waiting = e->sh.queued;
    e->sh.stats.loading = loading;
    e->sh.stats.kv_bytes = kvb;
    pthread_mutex_unlock(&e->sh.mu);
}

/* One turn: new jobs, cancellations, admission, one step, admission again for the slots the
 * step freed; then the loop, which waits only when nothing is running. */
static void engine_run(srv_engine *e)
{
    for (;;) {
        pthread_mutex_lock(&e->sh.mu);
        bool stop = e->sh.stopping, failing = e->sh.aborting;
        srv_job *list = NULL;
        if (!stop) {
            list = e->sh.inbox_head;
            e->sh.inbox_head = e->sh.inbox_tail = NULL;
        }
        pthread_mutex_unlock(&e->sh.mu);
        if (stop)
            break;
        intake(e, list);
        if (failing)
            fail_all(e);
        if (atomic_exchange(&e->cancel_pending, false))
            srv__sched_sweep_cancelled(&e->sched);
        srv__sched_admit(&e->sched);
        if (e->sched.n_running > 0) {
            srv__sched_step(&e->sched);
            srv__sched_admit(&e->sched);
        }
        update_gauges(e);
        uv_run(&e->loop, e->sched.n_running > 0 ? UV_RUN_NOWAIT : UV_RUN_ONCE);
    }
}

/* Cancels everything left, frees the registry and closes the loop. */
static void engine_shutdown(srv_engine *e)
{
    pthread_mutex_lock(&e->sh.mu);
    srv_job *list = e->sh.inbox_head;
    e->sh.inbox_head = e->sh.inbox_tail = NULL;
    pthread_mutex_unlock(&e->sh.mu);
    while (list) {
        srv_job *j = list;
        list = j->next;
        srv__job_finish(&e->sh, j, SRV_FINISH_CANCELLED, SRV_ERR_NONE, NULL);
        srv__job_notify(j);
    }
    srv__sched_cancel_all(&e->sched);
    update_gauges(e);
    adapter_registry_free(e->reg);
    e->reg = NULL;
    e->sched.reg = NULL;
    uv_close((uv_handle_t *)&e->wake, NULL);
    uv_run(&e->loop, UV_RUN_DEFAULT);
    uv_loop_close(&e->loop);
}

static void *engine_main(void *arg)
{
    srv_engine *e = arg;
    int rc = uv_loop_init(&e->loop);
    if (rc) {
        snprintf(e->ready_err, sizeof e->ready_err, "event loop: %s", uv_strerror(rc));
        goto fail;
    }
    uv_async_init(&e->loop, &e->wake, on_wake);
    if (e->registry_dir) {
        adapter_registry_opts ro = {.root = e->registry_dir,
                                    .cfg = &e->model->cfg,
                                    .cache_bytes = e->cache_bytes,
                                    .loop = &e->loop,
                                    .rescan_ms = e->watch ? 0 : -1,
                                    .watch = e->watch,
                                    .on_loaded = on_loaded,
                                    .on_event = on_registry_event,
                                    .ud = e};
        e->reg = adapter_registry_new(&ro, e->ready_err, sizeof e->ready_err);
        if (!e->reg) {
            rc = -EINVAL;
            uv_close((uv_handle_t *)&e->wake, NULL);
            uv_run(&e->loop, UV_RUN_DEFAULT);
            uv_loop_close(&e->loop);
            goto fail;
        }
    }
    e->sched.reg = e->reg;
    e->ready_rc = 0;
    sem_post(&e->ready);
    engine_run(e);
    engine_shutdown(e);
    return NULL;
fail:
    e->ready_rc = rc ? rc : -EINVAL;
    sem_post(&e->ready);
    return NULL;
}

/* ---- lifecycle ------------------------------------------------------------------------------ */

/* The model's id: the file name without ".gguf" and without a quantization tag
 * ("SmolLM2-135M-Instruct" for SmolLM2-135M-Instruct.Q4_1.gguf), else general.name. */
static void model_id_init(srv_engine *e, const char *path)
{
    const char *base = path ? strrchr(path, '/') : NULL;
    base = base ? base + 1 : path;
    size_t n = base ? strlen(base) : 0;
    if (n > 5 && !strcmp(base + n - 5, ".gguf"))
        n -= 5;
    /* A last ".Q4_1", "-q8_0", ".F16", ".BF16" segment names the quantization, not the model. */
    for (size_t i = n; i > 0; i--) {
        if (base[i - 1] != '.' && base[i - 1] != '-')
            continue;
        const char *t = base + i;
        if (t[0] == 'b' || t[0] == 'B')
            t++;
        if (strchr("QqFf", t[0]) && t[1] >= '0' && t[1] <= '9' && i > 1)
            n = i - 1;
        break;
    }
    if (n == 0 &&
        core_gguf_get_str(e->model->gguf, "general.name", e->model_id, sizeof e->model_id) == 0 &&
        e->model_id[0])
        return;
    if (n == 0) {
        base = "model";
        n = 5;
    }
    if (n >= sizeof e->model_id)
        n = sizeof e->model_id - 1;
    memcpy(e->model_id, base, n);
    e->model_id[n] = 0;
}

/* The KV pool: what was asked, else every sequence at full context, at most a quarter of the
 * machine's memory; never less than one sequence of n_ctx positions (and a block to spare).
 * 0, or -EINVAL with a message when the pool asked for is too small. */
static int kv_pool_size(srv_engine *e, const srv_engine_opts *o, char *err, size_t errlen)
{
    const core_config *c = &e->model->cfg;
    size_t block = core_kv_block_size(c, e->kv_f16);
    size_t per_seq = (size_t)(e->n_ctx + CORE_KV_BLOCK - 1) / CORE_KV_BLOCK;
    size_t least = (per_seq + 1) * block;
    if (o->kv_cache_bytes > 0) {
        if (o->kv_cache_bytes < least) {
            core_errf(err, errlen,
                      "--kv-cache-mb %zu holds less than one sequence of %d positions (--ctx): "
                      "at least %zu MB",
                      o->kv_cache_bytes >> 20, e->n_ctx, (least + (1 << 20) - 1) >> 20);
            return -EINVAL;
        }
        e->kv_pool_bytes = o->kv_cache_bytes;
        return 0;
    }
    size_t all = (size_t)e->max_seqs * per_seq * block;
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    size_t quarter = pages > 0 && page > 0 ? (size_t)pages * (size_t)page / 4 : all;
    size_t pool = all < quarter ? all : quarter;
    e->kv_pool_bytes = pool > least ? pool : least;
    return 0;
}

static void opts_apply(srv_engine *e, const srv_engine_opts *o)
{
    const core_config *c = &e->model->cfg;
    int train = c->n_ctx_train > 0 ? c->n_ctx_train : 2048;
    e->n_ctx = o->n_ctx > 0 ? o->n_ctx : (train < 2048 ? train : 2048);
    e->max_seqs = o->max_seqs > 0 ? o->max_seqs : 32;
    e->max_batch = o->max_batch_tokens > 0 ? o->max_batch_tokens : 512;
    e->prefill_chunk = o->prefill_chunk > 0 ? o->prefill_chunk : 256;
    e->max_step_ms = o->max_step_ms;
    e->queue_limit = o->queue_limit > 0 ? o->queue_limit : 256;
    e->verbose = o->verbose;
    e->watch = o->watch;
    e->cache_bytes = o->cache_bytes;
    e->kv_f16 = o->kv_f16;
    e->prefix_cache = !o->no_prefix_cache;
    e->spec_k = o->spec_k < 0 ? 0 : o->spec_k > SRV_SPEC_K_MAX ? SRV_SPEC_K_MAX : o->spec_k;
    e->spec_ngram = o->spec_ngram > 0 ? o->spec_ngram : SRV_SPEC_NGRAM_DEFAULT;
}

/* The chat template: the one given instead of the GGUF's must compile (a start-up error
 * otherwise); the GGUF's may fail, with a warning, since completions still work. */
static int chat_template_setup(srv_engine *e, const srv_engine_opts *o, char *err, size_t errlen)
{
    char msg[256];
    if (o->chat_template) {
        if (core_tokenizer_set_chat_template(e->tok, o->chat_template, msg, sizeof msg) < 0) {
            core_errf(err, errlen, "--chat-template %s: %s",
                      o->chat_template_name ? o->chat_template_name : "", msg);
            return -1;
        }
    } else if (core_tokenizer_chat_template_status(e->tok, msg, sizeof msg) < 0) {
        srv_log(SRV_LOG_WARN,
                "the model's chat template cannot be rendered (%s); "
                "/v1/chat/completions will answer 400 (give one with --chat-template FILE)",
                msg);
    }
    return 0;
}

/* The start-up line that says how prompt chunks are sized beside decode rows. */
static void step_budget_print(const srv_engine *e)
{
    if (e->max_step_ms > 0)
        srv_log(SRV_LOG_INFO,
                "step budget: prompt chunks sized for steps of %.4g ms while streams "
                "decode (at least %d prompt rows a step); %d rows when none does",
                e->max_step_ms, SRV_STEP_MIN_PROMPT_ROWS, e->max_batch);
    else if (e->max_step_ms == 0)
        srv_log(SRV_LOG_INFO,
                "step budget: fixed, %d rows a step (--max-step-ms 0); no latency "
                "target",
                e->max_batch);
    else
        srv_log(SRV_LOG_INFO,
                "step budget: prompt chunks sized for steps of %.4gx the learned "
                "decode-only step, at least %.4g ms, while streams decode (at least %d prompt "
                "rows a step); %.4g ms when none does (--max-step-ms X to fix the target)",
                SRV_STEP_AUTO_MULT, SRV_STEP_AUTO_FLOOR_MS, SRV_STEP_MIN_PROMPT_ROWS,
                SRV_STEP_PROMPT_ONLY_MS);
}

srv_engine *srv_engine_new(const srv_engine_opts *o, char *err, size_t errlen)
{
    if (!o || (!o->model && (!o->model_path || !o->model_path[0]))) {
        core_errf(err, errlen, "no model given");
        return NULL;
    }
    srv_engine *e = calloc(1, sizeof *e);
    if (!e) {
        core_errf(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&e->sh.mu, NULL);
    sem_init(&e->ready, 0, 0);
    atomic_init(&e->cancel_pending, false);
    if (o->registry_dir && o->registry_dir[0] && !(e->registry_dir = strdup(o->registry_dir))) {
        core_errf(err, errlen, "out of memory");
        goto fail;
    }
    if (o->model) {
        e->model = o->model;
    } else {
        char merr[256];
        e->own_model = core_model_load(o->model_path, merr, sizeof merr);
        if (!e->own_model) {
            core_errf(err, errlen, "cannot load %s: %s", o->model_path, merr);
            goto fail;
        }
        e->model = e->own_model;
    }
    if (o->int8) {
        char merr[256];
        int rc = e->own_model ? core_model_set_int8(e->own_model, 1, merr, sizeof merr) : -EINVAL;
        if (rc < 0) {
            core_errf(err, errlen, "--int8: %s",
                      e->own_model ? merr : "needs a model the engine loads itself");
            goto fail;
        }
        e->int8_weights = rc;
        if (rc == 0)
            srv_log(SRV_LOG_WARN,
                    "--int8: the model has no Q4_1, Q8_0 or K-quant weights; every layer "
                    "keeps f32 activations");
    }
    e->tok = core_tokenizer_new(e->model->gguf, err, errlen);
    if (!e->tok || chat_template_setup(e, o, err, errlen) < 0)
        goto fail;
    e->n_vocab = e->model->cfg.n_vocab;
    model_id_init(e, o->model_path);
    opts_apply(e, o);
    if (kv_pool_size(e, o, err, errlen) < 0)
        goto fail;
    if (o->n_threads > 0)
        core_blas_set_threads(o->n_threads);
    e->sh.verbose = e->verbose;
    srv__sched_cfg sc = {.model = e->model,
                         .tok = e->tok,
                         .n_ctx = e->n_ctx,
                         .max_seqs = e->max_seqs,
                         .max_batch = e->max_batch,
                         .prefill_chunk = e->prefill_chunk,
                         .max_step_ms = e->max_step_ms,
                         .verbose = e->verbose,
                         .kv_f16 = e->kv_f16,
                         .kv_pool_bytes = e->kv_pool_bytes,
                         .prefix_cache = e->prefix_cache,
                         .spec_k = e->spec_k,
                         .spec_ngram = e->spec_ngram,
                         .int8 = e->int8_weights > 0,
                         .sh = &e->sh};
    if (srv__sched_init(&e->sched, &sc, err, errlen) < 0)
        goto fail;
    if (pthread_create(&e->thread, NULL, engine_main, e)) {
        core_errf(err, errlen, "cannot start the engine thread");
        goto fail_sched;
    }
    sem_wait(&e->ready);
    if (e->ready_rc) {
        pthread_join(e->thread, NULL);
        core_errf(err, errlen, "%s", e->ready_err);
        goto fail_sched;
    }
    if (e->verbose >= 1) {
        adapter_registry_stats rs = {0};
        char kernels[128], int8[96] = "", spec[64] = "off";
        if (e->spec_k > 0)
            snprintf(spec, sizeof spec, "%d drafts, %d-gram lookup", e->spec_k, e->spec_ngram);
        if (e->reg)
            adapter_registry_stats_get(e->reg, &rs);
        if (e->int8_weights)
            snprintf(int8, sizeof int8,
                     "int8 activations (%s) where the weights are Q4_1/Q8_0/Q4_K-Q6_K, else ",
                     core_int8_kernels());
        srv_log(SRV_LOG_INFO,
                "model %s (%d layers, vocab %d), %d slots x %d positions, batch %d rows, "
                "prefill chunk %d, queue %d, registry %s (%d nodes%s)",
                e->model_id, e->model->cfg.n_layer, e->n_vocab, e->max_seqs, e->n_ctx, e->max_batch,
                e->prefill_chunk, e->queue_limit, e->registry_dir ? e->registry_dir : "none",
                rs.nodes, e->reg && e->watch ? ", watched" : "");
        srv_log(SRV_LOG_INFO,
                "linear layers on %s%s; KV cache %s, %zu MB pool (%d blocks of %d "
                "positions, %zu KB each), prefix cache %s, speculative decoding %s",
                int8, core_matmul_kernels(kernels, sizeof kernels), e->kv_f16 ? "f16" : "f32",
                e->kv_pool_bytes >> 20, core_kv_blocks_total(e->sched.kv), CORE_KV_BLOCK,
                core_kv_block_bytes(e->sched.kv) >> 10, e->prefix_cache ? "on" : "off", spec);
        step_budget_print(e);
    }
    return e;
fail_sched:
    srv__sched_deinit(&e->sched);
fail:
    core_tokenizer_free(e->tok);
    core_model_free(e->own_model);
    free(e->registry_dir);
    sem_destroy(&e->ready);
    pthread_mutex_destroy(&e->sh.mu);
    free(e);
    return NULL;
}

void srv_engine_drain(srv_engine *e)
{
    pthread_mutex_lock(&e->sh.mu);
    e->sh.draining = true;
    pthread_mutex_unlock(&e->sh.mu);
}

void srv_engine_abort(srv_engine *e, const char *why)
{
    pthread_mutex_lock(&e->sh.mu);
    e->sh.aborting = true;
    snprintf(e->sh.abort_msg, sizeof e->sh.abort_msg, "%s", why);
    uv_async_send(&e->wake);
    pthread_mutex_unlock(&e->sh.mu);
}

bool srv_engine_idle(srv_engine *e)
{
    pthread_mutex_lock(&e->sh.mu);
    bool idle = e->sh.active == 0 && e->sh.loads == 0;
    pthread_mutex_unlock(&e->sh.mu);
    return idle;
}

void srv_engine_free(srv_engine *e)
{
    if (!e)
        return;
    pthread_mutex_lock(&e->sh.mu);
    e->sh.stopping = true;
    uv_async_send(&e->wake);
    pthread_mutex_unlock(&e->sh.mu);
    pthread_join(e->thread, NULL);
    srv__sched_deinit(&e->sched);
    for (size_t i = 0; i < e->sh.n_labels; i++)
        free(e->sh.labels[i]);
    free(e->sh.labels);
    core_tokenizer_free(e->tok);
    core_model_free(e->own_model);
    free(e->registry_dir);
    sem_destroy(&e->ready);
    pthread_mutex_destroy(&e->sh.mu);
    free(e);
}

const core_tokenizer *srv_engine_tokenizer(const srv_engine *e)
{
    return e->tok;
}

const core_config *srv_engine_config(const srv_engine *e)
{
    return &e->model->cfg;
}

const char *srv_engine_model_id(const srv_engine *e)
{
    return e->model_id;
}

int srv_engine_n_ctx(const srv_engine *e)
{
    return e->n_ctx;
}

adapter_registry *srv_engine_registry(srv_engine *e)
{
    return e->reg;
}

void srv_engine_stats_get(srv_engine *e, srv_engine_stats *out)
{
    pthread_mutex_lock(&e->sh.mu);
    *out = e->sh.stats;
    pthread_mutex_unlock(&e->sh.mu);
}

int srv_engine_label_stats(srv_engine *e, srv_label_stats **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    pthread_mutex_lock(&e->sh.mu);
    size_t k = e->sh.n_labels;
    srv_label_stats *v = k ? malloc(k * sizeof *v) : NULL;
    if (k && !v) {
        pthread_mutex_unlock(&e->sh.mu);
        return -ENOMEM;
    }
    for (size_t i = 0; i < k; i++)
        v[i] = *e->sh.labels[i];
    pthread_mutex_unlock(&e->sh.mu);
    *out = v;
    *n = k;
    return 0;
}
