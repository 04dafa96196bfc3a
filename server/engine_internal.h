/* The engine's private state, shared by engine.c (lifecycle, the engine thread, the inbox, the
 * job API, statistics) and scheduler.c (waiting queues, admission, batches, sampling, text).
 *
 * Who touches what. Fields marked "mu" are guarded by srv_engine.mu and may be read by any
 * thread; fields marked "engine" belong to the engine thread alone. A job's output fields are
 * guarded by srv_job.mu; its parameters never change after srv_job_new.
 */
#ifndef ADAPTREE_SERVER_ENGINE_INTERNAL_H
#define ADAPTREE_SERVER_ENGINE_INTERNAL_H

#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "adapters/compose.h"
#include "adapters/registry.h"
#include "core/model/model.h"
#include "core/model/sampler.h"
#include "core/text/tokenizer.h"
#include "server/engine.h"

#define SRV__LABELS_MAX 1024 /* distinct metric labels; later ones count under "other" */

/* What a job does: generate, or (srv_job_new_load) load an adapter for an admin request. */
typedef enum srv__job_kind { SRV__JOB_GENERATE = 0, SRV__JOB_LOAD } srv__job_kind;

struct srv_job {
    srv__job_kind kind;
    atomic_int refs;
    atomic_bool cancel; /* srv_job_cancel was called */
    pthread_mutex_t mu;
    pthread_mutex_t notify_mu; /* held around notify; guards notify and ud */

    /* parameters, immutable after srv_job_new */
    int32_t *prompt; /* (n_prompt) */
    int n_prompt;
    adapter_selection sel;
    char label[ADAPTER_ID_MAX + 1];
    char client[SRV_CLIENT_MAX + 1];
    int max_tokens;
    core_sampler_params sampling; /* .seed is the job's seed */
    char *stop[SRV_JOB_STOP_MAX];
    size_t stop_len[SRV_JOB_STOP_MAX];
    int n_stop;
    int logprobs;
    bool prompt_logprobs;
    void (*notify)(void *ud); /* notify_mu; NULL once detached */
    void *ud;
    /* SRV__JOB_LOAD: the node and whether to pin it */
    char load_id[ADAPTER_ID_MAX + 1];
    bool load_pin;

    /* output and ownership, mu */
    srv_engine *engine; /* set by submit, NULL again once the job is done */
    bool submitted;
    srv_job_status st; /* text_len and n_tokens count what is below */
    char *text;        /* (st.text_len) released text, NUL-terminated */
    size_t text_cap;
    srv_job_token *tokens; /* (st.n_tokens) */
    int tokens_cap;
    srv_job_token *ptokens; /* (n_prompt) with prompt_logprobs: the prompt's tokens, n_ptokens */
    int n_ptokens;          /* recorded, in order */

    /* engine bookkeeping: written under srv_engine.mu at submit, then engine thread only */
    double t_submit;        /* monotonic seconds */
    srv_label_stats *lstat; /* this job's label counters (srv_engine.labels) */
    struct srv_job *next;   /* link in the inbox or a waiting group */
    struct srv__seq *seq;   /* while running */
    bool in_queue;          /* counted in srv_engine.queued (set under srv_engine.mu) */
    bool done;              /* finished; the engine still holds its reference */
};

/* A running sequence: one KV slot, the job's adapters, sampler and undelivered text. */
typedef struct srv__seq {
    srv_job *job; /* NULL: the slot is free */
    int slot;
    uint64_t order;   /* admission order: prefill goes oldest first */
    adapter_set *set; /* NULL: base model only */
    core_sampler *smp;
    int32_t *hist; /* (n_ctx) prompt then generated tokens */
    int n_hist;    /* tokens known */
    int n_past;    /* positions in the KV cache */
    int n_gen;     /* tokens sampled and kept (EOG excluded) */
    core_detok dt;
    size_t detok_total; /* bytes the decoder has produced so far */
    char *pend;         /* (n_pend) decoded bytes not yet released: the stop-string hold-back */
    size_t n_pend, cap_pend;
    /* sampled tokens not yet handed to the job; text_end holds the absolute decoder offset where
     * the token's bytes end, SIZE_MAX while the decoder still holds part of them */
    srv_job_token *ptok;
    int n_ptok, cap_ptok;
} srv__seq;

/* Jobs of one client with one adapter selection, FIFO. */
typedef struct srv__group {
    srv_job *head, *tail;
    int n;
    bool loading; /* the head's acquire said -EAGAIN; retried after the next on_loaded */
} srv__group;

typedef struct srv__client {
    char name[SRV_CLIENT_MAX + 1];
    srv__group *groups; /* (n_groups) */
    int n_groups, cap_groups;
    int rr; /* the group to try first next time */
} srv__client;

/* One sequence's share of a step. */
typedef struct srv__part {
    srv__seq *s;
    srv_job *j;   /* s->job when the step began (the sequence may end during it) */
    int n;        /* rows */
    bool want;    /* the last row needs logits */
    bool prefill; /* prompt rows (else one decode row) */
    bool all;     /* every row needs logits (the job records prompt logprobs) */
    uint64_t key; /* set key, for ordering rows by lora set */
} srv__part;

struct srv_engine {
    /* fixed after srv_engine_new */
    int n_ctx, max_seqs, max_batch, prefill_chunk, queue_limit, verbose;
    bool watch;
    size_t cache_bytes;
    char *registry_dir;
    core_model *own_model; /* loaded by the engine, or NULL when borrowed */
    int int8_weights;      /* weights repacked for int8 activations (srv_engine_opts.int8) */
    bool kv_f16;           /* srv_engine_opts.kv_f16 */
    const core_model *model;
    core_tokenizer *tok;
    int32_t n_vocab;
    char model_id[128];
    adapter_registry *reg; /* created and freed on the engine thread */
    pthread_t thread;
    uv_loop_t loop;
    uv_async_t wake;
    sem_t ready;
    int ready_rc;
    char ready_err[256];

    /* mu */
    pthread_mutex_t mu;
    srv_job *inbox_head, *inbox_tail;
    int queued; /* submitted, neither admitted nor ended */
    int active; /* submitted, not ended (generation jobs) */
    int loads;  /* load jobs submitted, not ended */
    bool draining, stopping;
    bool aborting;       /* srv_engine_abort was called: fail every job at the next turn */
    char abort_msg[200]; /* its message */
    srv_engine_stats stats;
    srv_label_stats **labels; /* (n_labels) sorted by label; entries never move */
    size_t n_labels;

    atomic_bool cancel_pending; /* some job was cancelled: sweep the queues */

    /* engine */
    core_kv *kv;
    core_ctx *ctx;
    adapter_plan *plan;
    srv__seq *seqs; /* (max_seqs) */
    int n_running;
    uint64_t n_admitted;
    srv__client *clients; /* (n_clients) in order of arrival */
    int n_clients, cap_clients;
    int client_rr; /* the client to try first next time */
    bool loads_changed;
    int decode_rr; /* first sequence to get a decode row when they do not all fit */
    float *logits; /* (max_out, n_vocab) */
    int max_out;
    int32_t *b_tok, *b_pos, *b_slot; /* (max_batch) */
    uint8_t *b_want;                 /* (max_batch) */
    const adapter_set **b_sets;      /* (max_batch) */
    srv__part *parts;                /* (max_seqs) */
    core_sample_req *sreq;           /* (max_seqs) the step's sampling, on core's pool */
    srv__seq **pre;                  /* (max_seqs) prefilling sequences, oldest first */
    char *dbuf;                      /* (dbuf_cap) scratch for one token's decoded bytes */
    size_t dbuf_cap;
    srv_job **changed; /* (n_changed) to notify after the step; capacity max_seqs */
    int n_changed;
};

double srv__now(void);

/* Ends a job: sets its finish (and, for ERROR, its kind and message), detaches it from the
 * engine, counts it. Does not notify or drop the engine's reference: see srv__job_done.
 * Engine thread. */
void srv__job_finish(srv_engine *e, srv_job *j, srv_finish f, srv_err err, const char *msg);
/* Calls the job's notify and, when it is finished, drops the engine's reference. Engine
 * thread, no lock held. */
void srv__job_notify(srv_job *j);

/* scheduler.c, engine thread */
int srv__sched_init(srv_engine *e, char *err, size_t errlen);
void srv__sched_deinit(srv_engine *e);
void srv__sched_enqueue(srv_engine *e, srv_job *j);
void srv__sched_sweep_cancelled(srv_engine *e);
void srv__sched_admit(srv_engine *e);
void srv__sched_step(srv_engine *e);
void srv__sched_cancel_all(srv_engine *e);
/* Ends every job waiting or running with ERROR err and msg. */
void srv__sched_fail_all(srv_engine *e, srv_err err, const char *msg);
/* Jobs waiting in the groups, and those of them waiting for a load. */
void srv__sched_counts(const srv_engine *e, int *waiting, int *loading);

#endif
