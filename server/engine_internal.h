/* The engine's private state (engine.c): its configuration, its thread and loop, the counters
 * it shares (job_internal.h) and its scheduler (scheduler.h). Only engine.c includes it.
 */
#ifndef ADAPTREE_SERVER_ENGINE_INTERNAL_H
#define ADAPTREE_SERVER_ENGINE_INTERNAL_H

#include <semaphore.h>
#include <stdatomic.h>
#include <uv.h>

#include "server/scheduler.h"

struct srv_engine {
    /* fixed after srv_engine_new */
    int n_ctx, max_seqs, max_batch, prefill_chunk, queue_limit, verbose;
    double max_step_ms; /* srv_engine_opts.max_step_ms */
    bool watch;
    size_t cache_bytes;
    char *registry_dir;
    core_model *own_model; /* loaded by the engine, or NULL when borrowed */
    int int8_weights;      /* weights repacked for int8 activations (srv_engine_opts.int8) */
    bool kv_f16;           /* srv_engine_opts.kv_f16 */
    size_t kv_pool_bytes;  /* the KV pool, resolved from srv_engine_opts.kv_cache_bytes */
    bool prefix_cache;
    int spec_k, spec_ngram;
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

    srv__shared sh;
    atomic_bool cancel_pending; /* some job was cancelled: sweep the queues */
    srv__sched sched;           /* engine thread */
};

#endif
