/* Speculative decoding's policy for one sequence (server/scheduler.c drafts by it): how many
 * draft tokens it may propose in a step, and what it learns from each verification. Pure
 * arithmetic, like server/step_budget.h; the scheduler keeps one per sequence, on the engine
 * thread.
 *
 * Draft rows are nearly free while a step reads the weights for few rows and cost a row's full
 * compute in a wide batch, so they pay when enough of them are accepted, and the wider the step
 * the more it takes. With up to SRV_SPEC_FREE_DECODE sequences decoding, every sequence that
 * opted in drafts (after a step whose drafts were all rejected it waits 1, 3, 7, then 15 steps,
 * and its draft length follows what was accepted); up to the scheduler's gated limit (f32
 * SRV_SPEC_GATED_DECODE, int8 activations SRV_SPEC_GATED_DECODE_INT8: a row costs about half)
 * only a sequence whose share of drafts accepted is SRV_SPEC_GATE_RATE or more; beyond, none.
 * Measured with bench_spec --streams N (copy task / free generation, speculative over plain, with
 * every sequence drafting: a build with EXTRA_CFLAGS=-DSRV_SPEC_FREE_DECODE=16; Intel Xeon 2
 * vCPUs, SmolLM2, 2026-12-07): f32 1 stream 1.69x / 1.01x, 2 1.45-1.54x / 1.07x, 3 1.06-1.10x /
 * 0.95-0.96x, 4 0.90-0.93x, 6 1.04x / 0.90x; int8 2 1.69x / 1.00x, 3 1.67x / 0.98x, 4
 * 1.54-1.55x / 0.94-0.99x, 6 1.27x / 0.96x, 8 1.15-1.18x / 0.94x, 16 0.99x / 0.88x. Copy drafts
 * are accepted at 64-69%, free generation's at 23-46%.
 *
 * The share accepted: the sums of the accepted and of the verified drafts, each forgetting
 * SRV_SPEC_RATE_FORGET of itself at every verification (weighted by drafts, so a lone draft that
 * hit counts for one), from SRV_SPEC_RATE_PRIOR of SRV_SPEC_RATE_WEIGHT drafts (above the gate: a
 * first guess in text being copied can miss). In a gated step a sequence below the gate still
 * drafts once in SRV_SPEC_GATE_PROBE steps, to see whether its text changed, and one with
 * nothing verified yet, probing or whose last drafts were all rejected proposes at most
 * SRV_SPEC_GATE_K0 tokens: a row is dear there.
 * Int8, 8 streams, copy / free: probe 32, first guess 2, forgetting 0.25: 1.06-1.07x /
 * 0.94-1.02x; forgetting 0.125: 1.17-1.18x / 0.94-1.01x; these values 1.13-1.24x / 0.98-1.00x,
 * with 16-40 free-generation drafts where every sequence drafting made 310. With the gate, f32 3
 * streams 1.11x / 0.98x, int8 3 1.68x / 1.00x, 4 1.59x / 1.00x.
 */
#ifndef ADAPTREE_SERVER_SPEC_GATE_H
#define ADAPTREE_SERVER_SPEC_GATE_H

#include <stdbool.h>

#ifndef SRV_SPEC_FREE_DECODE /* the three limits can be set at build time, to measure others */
#define SRV_SPEC_FREE_DECODE 2
#endif
#ifndef SRV_SPEC_GATED_DECODE
#define SRV_SPEC_GATED_DECODE 3
#endif
#ifndef SRV_SPEC_GATED_DECODE_INT8
#define SRV_SPEC_GATED_DECODE_INT8 8
#endif
#define SRV_SPEC_GATE_RATE 0.5
#define SRV_SPEC_RATE_PRIOR 0.75
#define SRV_SPEC_RATE_WEIGHT 4.0
#define SRV_SPEC_RATE_FORGET 0.125
#define SRV_SPEC_GATE_PROBE 64
#define SRV_SPEC_GATE_K0 1

typedef struct srv__spec {
    int max;       /* drafts a step at most (the job's choice or the server's); 0 off */
    int k;         /* drafts it may propose next: follows what was accepted */
    int wait;      /* steps to wait before drafting again, after drafts all rejected */
    int misses;    /* such rejections in a row */
    int gated;     /* steps the gate kept it from drafting */
    double acc, n; /* drafts accepted and verified, forgetting (their ratio: the share) */
    bool tried;    /* a draft was verified */
} srv__spec;

/* The gated limit of srv__spec_allow for a server with int8 activations or not:
 * SRV_SPEC_GATED_DECODE(_INT8), at least SRV_SPEC_FREE_DECODE. */
int srv__spec_gated_limit(bool int8);

/* A sequence starting, with at most max drafts a step (0: none). */
void srv__spec_start(srv__spec *sp, int max);

/* The drafts the sequence may propose in a step with n_dec sequences decoding, where gated_decode
 * (>= SRV_SPEC_FREE_DECODE) is the scheduler's gated limit: 0 for none. Counts the step toward
 * a wait or a probe, so call it once a step for each decoding sequence that opted in. */
int srv__spec_allow(srv__spec *sp, int n_dec, int gated_decode);

/* After a verification of k >= 1 drafts of which acc were accepted. */
void srv__spec_learn(srv__spec *sp, int k, int acc);

/* The share of its drafts accepted, as the gate sees it. */
double srv__spec_rate(const srv__spec *sp);

#endif
