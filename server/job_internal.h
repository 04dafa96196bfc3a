/* What a job is inside the engine, and the counters the engine thread shares with the other
 * threads: read by engine.c (the job API, the inbox, statistics) and scheduler.c.
 *
 * Who touches what. srv__shared is guarded by its mutex and may be read by any thread. A job's
 * output fields are guarded by srv_job.mu; its parameters never change after srv_job_new; its
 * bookkeeping belongs to the engine thread once submitted.
 */
#ifndef ADAPTREE_SERVER_JOB_INTERNAL_H
#define ADAPTREE_SERVER_JOB_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "adapters/compose.h"
#include "adapters/registry.h"
#include "core/model/model.h"
#include "core/model/sampler.h"
#include "core/text/tokenizer.h"
#include "server/engine.h"
#include "server/log.h"
#include "server/text_release.h"

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
    char request_id[SRV_REQUEST_ID_MAX + 1]; /* "" = none */
    int max_tokens;
    core_sampler_params sampling; /* .seed is the job's seed */
    char *stop[SRV_JOB_STOP_MAX];
    size_t stop_len[SRV_JOB_STOP_MAX];
    int n_stop;
    int logprobs;
    bool prompt_logprobs;
    int32_t *bias_ids; /* (n_bias) */
    float *bias;       /* (n_bias) */
    int n_bias;
    int min_tokens;
    bool ignore_eos;
    int spec_k, spec_ngram;                 /* srv_job_params' */
    int32_t stop_ids[SRV_JOB_STOP_IDS_MAX]; /* (n_stop_ids) */
    int n_stop_ids;
    core_grammar *grammar;    /* a reference; NULL: free text */
    struct srv_job *leader;   /* srv_engine_submit_group: the group's first job, referenced (its
                                 prompt KV is shared); NULL for it and for a job alone */
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

    /* engine bookkeeping: written under srv__shared.mu at submit, then engine thread only */
    double t_submit;        /* monotonic seconds */
    double t_token;         /* when its last token was sampled (0: none yet) */
    srv_label_stats *lstat; /* this job's label counters (srv__shared.labels; under its mu) */
    struct srv_job *next;   /* link in the inbox or a waiting group */
    struct srv__seq *seq;   /* while running */
    bool in_queue;          /* counted in srv__shared.queued (set under its mu) */
    bool done;              /* finished; the engine still holds its reference */
    bool kv_waited;         /* its admission was put off for KV blocks (counted once) */
};

/* What the engine thread shares with the threads that submit jobs and read statistics: all
 * guarded by mu. */
typedef struct srv__shared {
    pthread_mutex_t mu;
    int verbose; /* the engine's log level (fixed): 2 logs every job's end, 1 its failures */
    srv_job *inbox_head, *inbox_tail;
    int queued; /* generation jobs submitted, neither admitted nor ended */
    int active; /* generation jobs submitted, not ended */
    int loads;  /* load jobs submitted, not ended */
    bool draining, stopping;
    bool aborting;       /* srv_engine_abort was called: fail every job at the next turn */
    char abort_msg[200]; /* its message */
    srv_engine_stats stats;
    srv_label_stats **labels; /* (n_labels) sorted by label; entries never move */
    size_t n_labels;
} srv__shared;

/* Ends a job: sets its finish (and, for ERROR, its kind and message), detaches it from the
 * engine, counts it in sh. Does not notify or drop the engine's reference: see srv__job_notify.
 * Engine thread. */
void srv__job_finish(srv__shared *sh, srv_job *j, srv_finish f, srv_err err, const char *msg);
/* Calls the job's notify and, when it is finished, drops the engine's reference. Engine
 * thread, no lock held. */
void srv__job_notify(srv_job *j);

#endif
