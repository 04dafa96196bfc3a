/* The scheduler (engine.h, steps 2-4): waiting queues and fair admission, the continuous batch of
 * decode rows and prompt chunks, sampling, stop rules, and handing text to jobs. It owns the
 * sequences, the KV cache and the step's buffers, and sees of the engine only what it is given
 * here: the model, the tokenizer, the registry, the limits and the shared counters. Everything
 * here runs on the engine thread.
 */
#ifndef ADAPTREE_SERVER_SCHEDULER_H
#define ADAPTREE_SERVER_SCHEDULER_H

#include "server/job_internal.h"
#include "server/prefix_cache.h"
#include "server/spec_gate.h"
#include "server/step_budget.h"

/* A running sequence: one KV slot, the job's adapters, sampler and undelivered text. */
typedef struct srv__seq {
    srv_job *job; /* NULL: the slot is free */
    int slot;
    uint64_t order;   /* admission order: prefill goes oldest first */
    int client_rank;  /* older prefilling sequences of the same client (plan_parts' scratch) */
    adapter_set *set; /* NULL: base model only */
    core_sampler *smp;
    core_gmatch *gm; /* structured output: the job's grammar matcher; NULL: free text */
    int32_t *hist;   /* (n_ctx) prompt then generated tokens */
    int n_hist;      /* tokens known */
    int n_past;      /* positions in the KV cache */
    int n_fill;      /* positions to compute before the next sample: the prompt, or after a
                        preemption every token known */
    int n_cached;    /* of the prompt, positions that came from the prefix cache */
    int n_shared;    /* of the prompt, positions shared from its group leader's KV */
    int n_inserted;  /* full blocks handed to the prefix cache */
    bool in_step;    /* has a part in the step being planned: not to be preempted */
    bool stalled;    /* no KV block for its decode row this step */
    bool resume;     /* preempted: takes back what the prefix cache kept before computing */
    uint8_t *ctx;    /* the prefix cache's context: the set's (content hash, weight) items */
    size_t ctx_len, ctx_cap;
    int n_gen;      /* tokens sampled and kept (EOG excluded) */
    srv__spec spec; /* speculative decoding (prompt lookup): drafts go into hist after n_hist */
    srv_text text;  /* sampled tokens and decoded bytes not yet handed to the job */
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
    int spec;     /* decode row plus this many draft tokens, each with logits */
    int made;     /* with spec: tokens sampled (1 + drafts accepted, fewer if it ended) */
    int accepted; /* with spec: drafts accepted */
    uint64_t key; /* set key, for ordering rows by lora set */
} srv__part;

typedef struct srv__sched {
    /* fixed after srv__sched_init */
    const core_model *model;
    const core_tokenizer *tok;
    int32_t n_vocab;
    int32_t eog[16]; /* (n_eog) the vocabulary's end-of-generation tokens, masked for min_tokens
                        and ignore_eos */
    int n_eog;
    int n_ctx, max_seqs, max_batch, prefill_chunk, verbose;
    adapter_registry *reg; /* may be NULL (base model only) */
    srv__shared *sh;       /* the engine's counters and their lock */

    /* engine thread */
    srv__step_budget budget; /* prompt rows per step, from the latency target */
    core_kv *kv;
    srv_prefix *prefix;  /* NULL: no prefix cache */
    core_gvocab *gvocab; /* the vocabulary for grammar masks, made for the first structured job */
    int32_t *ids;        /* (blocks per sequence) scratch for lookups */
    core_ctx *ctx;
    adapter_plan *plan;
    srv__seq *seqs; /* (max_seqs) */
    int n_running;
    uint64_t n_admitted;
    srv__client *clients; /* (n_clients) in order of arrival */
    int n_clients, cap_clients;
    int client_rr;      /* the client to try first next time */
    bool loads_changed; /* a load finished: retry the groups waiting for one */
    int decode_rr;      /* first sequence to get a decode row when they do not all fit */
    float *logits;      /* (max_out, n_vocab) */
    int max_out;
    int32_t *b_tok, *b_pos, *b_slot; /* (max_batch) */
    uint8_t *b_want;                 /* (max_batch) */
    const adapter_set **b_sets;      /* (max_batch) */
    srv__part *parts;                /* (max_seqs) */
    core_sample_req *sreq;           /* (max_seqs) the step's sampling, on core's pool */
    srv__seq **pre;                  /* (max_seqs) prefilling sequences, in prefill order */
    size_t text_scratch;             /* srv_text_scratch_cap of the tokenizer */
    srv_job **changed;               /* (n_changed) to notify after the step; capacity max_seqs */
    int n_changed;
    unsigned prefill_rr;    /* turns the clients whose oldest prompt is prefilled first */
    int spec_k, spec_ngram; /* the server's speculative decoding default (0: off) */
    int spec_decode;        /* gated limit of srv__spec_allow: decoding sequences up to which
                               the ones whose drafts are accepted draft */
} srv__sched;

/* What srv__sched_init takes. */
typedef struct srv__sched_cfg {
    const core_model *model;
    const core_tokenizer *tok;
    int n_ctx, max_seqs, max_batch, prefill_chunk, verbose;
    double max_step_ms; /* step latency target: > 0 ms, 0 none (max_batch rows), < 0 the default */
    bool kv_f16;
    size_t kv_pool_bytes; /* the KV pool (at least one sequence of n_ctx positions) */
    bool prefix_cache;
    int spec_k, spec_ngram; /* speculative decoding for jobs that do not choose: draft tokens
                               per step (0: off), n-gram length of the prompt lookup */
    bool int8;              /* int8 activations: rows cost less, drafts pay in wider steps */
    adapter_registry *reg;
    srv__shared *sh;
} srv__sched_cfg;

/* Sets up sc (KV cache, buffers, sequences). 0, or -ENOMEM with a message. */
int srv__sched_init(srv__sched *sc, const srv__sched_cfg *cfg, char *err, size_t errlen);
void srv__sched_deinit(srv__sched *sc);
/* A new job waits for admission (ends at once, notified, without memory). */
void srv__sched_enqueue(srv__sched *sc, srv_job *j);
/* Ends the jobs that were cancelled, waiting or running. */
void srv__sched_sweep_cancelled(srv__sched *sc);
/* Admits waiting jobs into free sequences, fairly. */
void srv__sched_admit(srv__sched *sc);
/* One forward step over every running sequence; notifies the jobs it changed. */
void srv__sched_step(srv__sched *sc);
/* Ends every job waiting or running: cancelled, or with ERROR err and msg. */
void srv__sched_cancel_all(srv__sched *sc);
void srv__sched_fail_all(srv__sched *sc, srv_err err, const char *msg);
/* Jobs waiting in the groups, and those of them waiting for a load. */
void srv__sched_counts(const srv__sched *sc, int *waiting, int *loading);

#endif
