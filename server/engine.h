/* The engine (docs/ARCHITECTURE.md §2): one thread running a libuv loop that owns the scheduler,
 * every sequence and its KV slot, and the registry's residency. HTTP threads turn a request into a
 * job (tokenized prompt, resolved adapter selection, sampling), submit it, and read its output
 * as the engine produces it; nothing else crosses between them.
 *
 * Each iteration the engine
 *   1. takes new jobs from its inbox (a locked queue woken with uv_async_send) and cancelled
 *      ones out of the batch (their sequence and slot are freed at once);
 *   2. admits waiting jobs into free slots, fairly: round-robin over clients, and within a
 *      client over adapter selections, FIFO within one (client, selection). A job whose adapters
 *      are not resident asks the registry to load them (adapter_registry_acquire -> -EAGAIN) and
 *      stays waiting without holding a slot or blocking the jobs behind it;
 *   3. builds one batch: one decode row for every running sequence that has its prompt in the
 *      cache, then prompt chunks of prefilling sequences (each client's oldest first, the
 *      clients taking turns) within the step budget: as many rows as keep the step within
 *      max_step_ms by the step costs learned so far (at least a few), or up to
 *      max_batch_tokens rows when no sequence decodes; every row carries its sequence's lora
 *      set, so rows of different adapters share the step (adapter_plan_build, one core_forward);
 *   4. samples each decode row (and the last prompt row), runs stop checks (EOG token, stop
 *      strings, max_tokens, end of context), appends the released text and tokens to the job and
 *      calls the job's notify callback.
 *
 * Threads and ownership. A job is reference-counted: the submitter holds one reference, the
 * engine takes its own on submit and drops it when the job is done. Every srv_job_* reader may
 * run on any thread at any time (one mutex per job). notify runs on the engine thread, outside
 * the job's lock, and must not block (it resumes a suspended connection).
 */
#ifndef ADAPTREE_SERVER_ENGINE_H
#define ADAPTREE_SERVER_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "adapters/registry.h"
#include "core/model/model.h"
#include "core/model/sampler.h"
#include "core/text/grammar.h"
#include "core/text/tokenizer.h"

typedef struct srv_engine srv_engine;
typedef struct srv_job srv_job;

/* ---- the engine ----------------------------------------------------------------------------- */

typedef struct srv_engine_opts {
    const char *model_path;    /* GGUF base model (required) */
    const char *registry_dir;  /* adapter registry root; NULL or "" = base model only */
    int n_threads;             /* OpenBLAS threads; 0 = leave OpenBLAS's default (all cores) */
    int max_batch_tokens;      /* rows per forward step, decode + prompt chunks; 0 = 512 */
    int max_seqs;              /* running sequences (= KV slots); 0 = 32 */
    int n_ctx;                 /* positions per sequence; 0 = min(model's trained context, 2048) */
    size_t cache_bytes;        /* adapter residency budget; 0 = unlimited */
    int queue_limit;           /* jobs waiting to be admitted, beyond the running ones; 0 = 256 */
    int prefill_chunk;         /* most prompt rows of one sequence per step; 0 = 256 */
    double max_step_ms;        /* latency target of a step with decode rows, for sizing its
                                  prompt chunks (server/step_budget.h): > 0 ms; 0 none (prompt
                                  chunks up to max_batch_tokens rows, the old fixed budget);
                                  < 0 (default) 2x the learned decode-only step, >= 25 ms */
    bool watch;                /* watch the registry for changes (default on in `serve`) */
    bool int8;                 /* int8 activations (core_model_set_int8); needs model_path */
    bool kv_f16;               /* K and V cached as f16 (core_kv_set_f16) */
    size_t kv_cache_bytes;     /* the KV pool; 0 = every sequence at full context, at most a
                                  quarter of the machine's memory (at least one sequence) */
    bool no_prefix_cache;      /* do not reuse the KV of earlier prompts */
    int spec_k;                /* speculative decoding for jobs that do not choose: draft tokens
                                  per step, 0 = off (0..SRV_SPEC_K_MAX) */
    int spec_ngram;            /* n-gram length of its prompt lookup; 0 = SRV_SPEC_NGRAM_DEFAULT */
    int verbose;               /* 0 quiet, 1 info (default), 2 debug: one line per step */
    const char *chat_template; /* template text replacing the GGUF's (--chat-template); refused
                                  with a message when outside the Jinja subset. NULL: the GGUF's
                                  (a warning at start-up when it cannot be rendered) */
    const char *chat_template_name; /* where chat_template came from, for messages */
    const core_model *model;        /* optional: an already loaded base to borrow instead of loading
                                       model_path (tests, tools); must outlive the engine. model_path
                                       then only names it (srv_engine_model_id) and may be NULL */
} srv_engine_opts;

/* Zeroes *o, then: max_batch_tokens 512, max_seqs 32, queue_limit 256, prefill_chunk 256,
 * max_step_ms -1 (the default target), watch on, verbose 1. */
void srv_engine_opts_default(srv_engine_opts *o);

/* Loads the model, tokenizer and registry and starts the engine thread. NULL with a message on
 * failure (missing model, bad registry root, a chat_template outside the subset, no memory). */
srv_engine *srv_engine_new(const srv_engine_opts *o, char *err, size_t errlen);

/* Stops admitting new jobs (submit returns -ESHUTDOWN) and lets running and waiting ones finish.
 * Returns at once; any thread. */
void srv_engine_drain(srv_engine *e);
/* True when no job is waiting or running. Any thread. */
bool srv_engine_idle(srv_engine *e);
/* Ends every job still queued or running (also those submitted later) with ERROR
 * SHUTTING_DOWN and message why: what a drain that ran out of time does, so that every
 * request gets an answer (a streamed one an error event and [DONE]) instead of a cut
 * connection. Returns at once; the engine thread does it at its next turn. Any thread. */
void srv_engine_abort(srv_engine *e, const char *why);
/* Cancels whatever is left, stops the thread and frees everything. The caller must have dropped
 * its own job references or keep them valid: jobs outlive the engine until unreferenced. */
void srv_engine_free(srv_engine *e);

/* Read-only facts, valid for the engine's lifetime; any thread. */
const core_tokenizer *srv_engine_tokenizer(const srv_engine *e);
const core_config *srv_engine_config(const srv_engine *e);
/* "SmolLM2-135M-Instruct": the model file's name without ".gguf" and a quantization tag
 * (".Q4_1", "-q8_0", ".F16"); general.name when no path was given. */
const char *srv_engine_model_id(const srv_engine *e);
int srv_engine_n_ctx(const srv_engine *e); /* positions per sequence */
/* The registry, or NULL when serving the base model only. Its any-thread functions (resolve,
 * list, stats, load, unload, pin) may be called from HTTP threads. */
adapter_registry *srv_engine_registry(srv_engine *e);

/* Speculative decoding by prompt lookup: the most draft tokens a step, the longest n-gram, and
 * the n-gram length when neither the server nor the request chooses one. */
#define SRV_SPEC_K_MAX 16
#define SRV_SPEC_NGRAM_MAX 8
#define SRV_SPEC_NGRAM_DEFAULT 3

/* The latency buckets the engine counts (seconds, ascending): a count array c[N + 1] holds in
 * c[i] the observations in (bounds[i-1], bounds[i]] and in c[N] those above the last bound.
 * Inter-token latency: the gap between two tokens sampled for one job (per job, in
 * srv_job_status); step time: one forward step with its sampling (srv_engine_stats). */

#define SRV_ITL_BUCKETS 14
extern const double srv_itl_bounds[SRV_ITL_BUCKETS];
#define SRV_STEP_BUCKETS 14
extern const double srv_step_bounds[SRV_STEP_BUCKETS];

/* The bucket of v among n ascending bounds: the first i with v <= bounds[i], n above the last
 * (what every histogram here counts by: the engine's and server/metrics.h's). */
int srv_bucket_of(const double *bounds, int n, double v);

typedef struct srv_engine_stats {
    /* submitted: accepted by submit; finished: ended "stop" or "length"; failed: "error";
       cancelled: "cancelled"; rejected: refused by submit (-EAGAIN, -ESHUTDOWN) */
    uint64_t jobs_submitted, jobs_finished, jobs_failed, jobs_cancelled, jobs_rejected;
    uint64_t jobs_aborted;     /* of the failed ones, those srv_engine_abort ended */
    uint64_t prompt_tokens;    /* prompt rows computed */
    uint64_t generated_tokens; /* tokens sampled */
    uint64_t steps;            /* forward calls */
    uint64_t rows;             /* rows over all steps (rows / steps = mean batch) */
    uint64_t step_hist[8];     /* steps with rows in (0,1], (1,2], (2,4], ..., (32,64], >64 */
    double step_seconds;       /* time inside core_forward + sampling */
    uint64_t step_time[SRV_STEP_BUCKETS + 1]; /* steps by that time (srv_step_bounds) */
    /* Steps with no prompt rows (every row a decode row), their rows and time: the decode
       step's own speed, rows / seconds, whatever prefill and HTTP cost around it */
    uint64_t decode_steps, decode_rows;
    double decode_seconds;
    /* The step budget: the target of the last step that had one (ms; 0 before any), the
       learned cost of a prompt row beside decode rows (ms; 0 before any), and the steps that
       had a target and took longer */
    double step_target_ms, prompt_row_ms;
    uint64_t steps_over_target;
    int running; /* jobs holding a slot */
    int waiting; /* jobs queued (inbox included), also those waiting for a load */
    int loading; /* of those, jobs waiting for an adapter load */
    size_t kv_bytes;
    /* the paged KV pool (blocks of CORE_KV_BLOCK positions): its blocks, those in use (by
       sequences or the prefix cache) and those the prefix cache holds */
    int kv_blocks_total, kv_blocks_used, kv_blocks_cached;
    size_t kv_block_bytes;
    uint64_t kv_preemptions;     /* sequences whose blocks were taken for older ones */
    uint64_t kv_admission_waits; /* admissions put off until blocks free up (once per job) */
    uint64_t kv_resumed_tokens;  /* positions preempted sequences took back from the prefix cache */
    /* the prefix cache: lookups made, those that found blocks, positions they skipped, blocks
       evicted */
    uint64_t prefix_lookups, prefix_hits, prefix_hit_tokens, prefix_evictions;
    /* groups (srv_engine_submit_group): prompt positions the other jobs took from their
       leader's KV instead of computing them */
    uint64_t shared_prompt_tokens;
    /* speculative decoding: draft tokens verified, and those accepted */
    uint64_t spec_draft_tokens, spec_accepted_tokens;
} srv_engine_stats;

void srv_engine_stats_get(srv_engine *e, srv_engine_stats *out);

/* Per-selection counters, keyed by the job's adapter label (srv_job_params.label): requests,
 * tokens. Copied into *out (malloc'd, caller frees), sorted by label. Any thread. */
typedef struct srv_label_stats {
    char label[ADAPTER_ID_MAX + 1];
    uint64_t requests, prompt_tokens, generated_tokens, failures;
    uint64_t cached_tokens; /* prompt positions taken from the prefix cache */
} srv_label_stats;

int srv_engine_label_stats(srv_engine *e, srv_label_stats **out, size_t *n);

/* ---- jobs ----------------------------------------------------------------------------------- */

typedef enum srv_finish {
    SRV_FINISH_NONE = 0, /* still running */
    SRV_FINISH_STOP,     /* an end-of-generation token or a stop string */
    SRV_FINISH_LENGTH,   /* max_tokens or the end of the context */
    SRV_FINISH_ERROR,    /* see srv_job_status.err / .error */
    SRV_FINISH_CANCELLED /* srv_job_cancel or engine shutdown */
} srv_finish;

/* What went wrong with a job, in the engine's words; server/http_errors.c is the one place
 * that says how each looks on the wire (status, OpenAI type and code). */
typedef enum srv_err {
    SRV_ERR_NONE = 0,
    SRV_ERR_BAD_INPUT,     /* it cannot run as asked (a token id outside the vocabulary, a
                              prompt that fills the context, bad sampling parameters) */
    SRV_ERR_NOT_FOUND,     /* an adapter it names does not exist (any more) */
    SRV_ERR_UNLOADABLE,    /* an adapter's files do not load (an admin load) */
    SRV_ERR_UNAVAILABLE,   /* it cannot run now: an adapter failed to load and has no good
                              version, memory ran out */
    SRV_ERR_SHUTTING_DOWN, /* the server stopped before it finished */
    SRV_ERR_BUSY,          /* max_seqs jobs run and queue_limit wait (srv_engine_submit's
                              -EAGAIN) */
    SRV_ERR_INTERNAL       /* a defect: the model gave no valid logits, ... */
} srv_err;

/* "bad_input", "not_found", ... for logs and tests. */
const char *srv_err_name(srv_err e);

/* "stop", "length", "error", "cancelled" or NULL for NONE. */
const char *srv_finish_name(srv_finish f);

#define SRV_JOB_STOP_MAX 4
#define SRV_JOB_TOP_MAX 20
#define SRV_CLIENT_MAX 64
#define SRV_JOB_BIAS_MAX 1024   /* logit_bias entries */
#define SRV_JOB_STOP_IDS_MAX 64 /* stop_token_ids */

typedef struct srv_job_params {
    const int32_t *prompt;  /* (n_prompt) token ids, copied by srv_job_new */
    int n_prompt;           /* 1 .. n_ctx - 1 (the HTTP layer refuses longer prompts) */
    adapter_selection sel;  /* resolved (adapter_registry_resolve); n = 0: base only */
    const char *label;      /* metrics label for the selection, copied, bounded by the caller
                               ("base", a node id, "_list_": srv_metric_label); NULL = "base" */
    const char *client;     /* fairness key, copied, <= SRV_CLIENT_MAX bytes ("user" field,
                               else the key or peer address); NULL = "" */
    const char *request_id; /* the HTTP request's id, for the job's log lines; copied, at most
                               SRV_REQUEST_ID_MAX bytes (server/log.h); NULL = none */
    int max_tokens;         /* >= 0; generation also stops at the end of the context */
    core_sampler_params sampling;
    uint64_t seed;
    const char *stop[SRV_JOB_STOP_MAX]; /* copied; text never contains a stop string: generation
                                           ends before it (finish "stop") */
    int n_stop;
    int logprobs; /* -1 none; k in 0..SRV_JOB_TOP_MAX: record each token's logprob (log-softmax
                     of the raw logits) and the k most likely alternatives */
    bool prompt_logprobs;    /* with logprobs >= 0: also record every prompt token's logprob given
                                the tokens before it (completions' echo); the first has none (NaN).
                                max_tokens 0 then still runs the prompt */
    const int32_t *bias_ids; /* (n_bias) logit_bias: bias[i] added to the logit of bias_ids[i]
                                before sampling; copied. Ids are checked against the vocabulary
                                when the job starts (error BAD_INPUT) */
    const float *bias;       /* (n_bias) finite */
    int n_bias;              /* 0 .. SRV_JOB_BIAS_MAX */
    int min_tokens;          /* EOG tokens and stop_ids are masked until this many were made */
    bool ignore_eos;         /* EOG tokens are masked throughout: only max_tokens, stop strings
                                and stop_ids end the job */
    int spec_k;              /* speculative decoding: at most this many draft tokens a step
                                (1..SRV_SPEC_K_MAX); 0 the engine's default; < 0 off */
    int spec_ngram;          /* n-gram length of the prompt lookup (1..SRV_SPEC_NGRAM_MAX); 0 the
                                engine's default */
    const int32_t *stop_ids; /* (n_stop_ids) sampling one ends the job (finish "stop"); the token
                                is not part of the text; copied */
    int n_stop_ids;          /* 0 .. SRV_JOB_STOP_IDS_MAX */
    core_grammar *grammar;   /* structured output: every token continues a match of it, EOG only
                                where a match is complete, and the job stops (finish "stop") when
                                nothing can follow; the job takes a reference. NULL: free text */
} srv_job_params;

/* One generated token as recorded for logprobs. */
typedef struct srv_job_token {
    int32_t id;
    float logprob;
    int n_top;
    int32_t top_ids[SRV_JOB_TOP_MAX];
    float top_logprobs[SRV_JOB_TOP_MAX];
    size_t text_end; /* job text length once this token's bytes were released (stop-string
                        hold-back and incomplete UTF-8 can delay them) */
} srv_job_token;

/* Makes a job with one reference. notify(ud) runs on the engine thread whenever the job's output
 * or status changed (new text or tokens, done); it may be NULL. NULL on bad params or no memory,
 * with a message.
 *
 * The status changes first, then notify runs: a reader on another thread may see the job done
 * before its last notify. So ud must stay valid until srv_job_detach_notify has returned (or
 * until the engine is freed). */
srv_job *srv_job_new(const srv_job_params *p, void (*notify)(void *ud), void *ud, char *err,
                     size_t errlen);
/* Makes a job that loads registry node id (and pins it, with pin) instead of generating: it is
 * submitted and waited for like any job, never counts against the queue limit, and ends once
 * the registry has loaded the node's files as they are when the engine takes the job: STOP with
 * version and unchanged set (a node already resident from files whose signature and content have
 * not changed is not reloaded), or ERROR with the load's message (NOT_FOUND the node is gone,
 * UNLOADABLE its files do not load, SHUTTING_DOWN the registry closed first). notify and ud as
 * for srv_job_new. */
srv_job *srv_job_new_load(const char *id, bool pin, void (*notify)(void *ud), void *ud, char *err,
                          size_t errlen);
/* Stops the job's notify calls: when this returns, no notify of j is running and none will
 * follow, so ud may be freed. Any thread except from inside that notify; idempotent. */
void srv_job_detach_notify(srv_job *j);
void srv_job_ref(srv_job *j);
void srv_job_unref(srv_job *j); /* frees at zero; NULL ignored */

/* Hands the job to the engine. 0; -EAGAIN when max_seqs jobs run and queue_limit wait (a job
 * submitted while a slot is free never counts as waiting); -ESHUTDOWN when draining; -EINVAL
 * when the job was submitted before. On failure the job
 * is untouched (the caller still owns it). Any thread.
 *
 * Checked by the engine once it takes the job, which then ends at once: a prompt of n_ctx tokens
 * or more, or a token id outside the vocabulary (ERROR BAD_INPUT); max_tokens 0 (LENGTH, no
 * tokens, the prompt still counted in prompt_tokens, adapters untouched); an adapter that is
 * unknown (ERROR NOT_FOUND) or failed to load (ERROR UNAVAILABLE, "adapter 'X' failed to load:
 * ..."). */
int srv_engine_submit(srv_engine *e, srv_job *j);

#define SRV_JOB_GROUP_MAX 16

/* Hands n jobs (1..SRV_JOB_GROUP_MAX) to the engine as one group: the choices of one request
 * (OpenAI's "n"), made with the same prompt, adapter selection and client, and differing in
 * their seeds. All of them or none are submitted: the same results as srv_engine_submit (the
 * queue limit counts all n, but a group larger than max_seqs + queue_limit is taken when no
 * job is waiting or running), and -EINVAL when they differ in prompt, selection or client. On
 * failure every job is untouched. The group counts as one request in the label counters and in
 * jobs_rejected, as n jobs everywhere else.
 *
 * jobs[0] leads: it runs as a job alone does. The others wait (without a slot) until its prompt
 * is in the KV cache, then start from its blocks, computing only the last prompt position for
 * their own first logits; so the group costs one prefill whatever n, with or without the prefix
 * cache. One whose leader has ended (or was preempted, or whose adapters changed version since)
 * computes its prompt as a job alone does. Each job then generates on its own, with its own
 * sampler, stop rules and logprobs. Any thread. */
int srv_engine_submit_group(srv_engine *e, srv_job **jobs, int n);

/* Asks the engine to stop the job (client gone). Its sequence is freed at the next step; the job
 * ends with SRV_FINISH_CANCELLED unless it had already finished. Any thread, idempotent. */
void srv_job_cancel(srv_job *j);

typedef struct srv_job_status {
    srv_finish finish; /* NONE while running */
    srv_err err;       /* for ERROR: what kind of error */
    char error[256];   /* for ERROR: the message */
    int prompt_tokens;
    int completion_tokens;
    int cached_tokens;     /* of the prompt, tokens whose KV came from the prefix cache */
    size_t text_len;       /* bytes of text released so far (valid UTF-8 at every length) */
    int n_tokens;          /* tokens recorded so far (== completion_tokens). A token is recorded
                              once its bytes are released; at the end every sampled token is,
                              including those of a cut stop string, but never the end-of-
                              generation token */
    uint64_t version;      /* load jobs (srv_job_new_load) that ended STOP: the node's resident
                              version (content hash) */
    bool unchanged;        /* ... and it was already resident from the same files: nothing was
                              reloaded */
    double queue_ms;       /* submit -> admitted (slot taken) */
    double first_token_ms; /* submit -> first token sampled; < 0 until then */
    double total_ms;       /* submit -> done; < 0 until then */
    /* the gaps between its sampled tokens (n_tokens - 1 of them once it ended), bucketed by
       srv_itl_bounds, and their sum in seconds */
    uint32_t itl[SRV_ITL_BUCKETS + 1];
    double itl_sum;
} srv_job_status;

void srv_job_status_get(srv_job *j, srv_job_status *out);
/* Copies up to cap bytes of the released text starting at byte from; returns the count. */
size_t srv_job_text(srv_job *j, size_t from, char *buf, size_t cap);
/* Copies up to cap recorded tokens starting at index from; returns the count. */
int srv_job_tokens(srv_job *j, int from, srv_job_token *out, int cap);
/* With prompt_logprobs: copies up to cap recorded prompt tokens (index i = prompt token i; text_end
 * unset); returns the count, n_prompt once the prompt has run (always before the first generated
 * token or the end of the job). */
int srv_job_prompt_tokens(srv_job *j, srv_job_token *out, int cap);

#endif
