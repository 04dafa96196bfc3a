/* The step budget (server/scheduler.c's plan): how many prompt rows the next forward step may
 * take beside its decode rows so that the step stays within a latency target. Pure arithmetic
 * over a cost model learned online from the steps the scheduler runs; no clock, no threads. The
 * scheduler owns one and uses it on the engine thread only.
 *
 * The model: n decode rows cost a + b n ms (a least-squares line, exponentially forgotten,
 * through the recent steps' decode parts: a decode-only step's time, a mixed step's time less
 * its prompt rows' cost); a prompt row costs c ms on top of the decode rows it shares a step
 * with (an EWMA over steps with prompt rows of what they took beyond the line). The target is given
 * (--max-step-ms X), or by default SRV_STEP_AUTO_MULT times the predicted decode-only step of
 * this step's decode rows, at least SRV_STEP_AUTO_FLOOR_MS.
 */
#ifndef ADAPTREE_SERVER_STEP_BUDGET_H
#define ADAPTREE_SERVER_STEP_BUDGET_H

#include <stdbool.h>

/* The default target is this many decode-only steps: the prompt rows get about the time of the
 * decode rows, so a running stream's inter-token latency at most doubles while a prompt is
 * prefilled and the prompt still gets half the compute. */
#define SRV_STEP_AUTO_MULT 2.0
/* ... and never less than this: below it a small batch's prompt chunks would shrink to the
 * minimum and a long prompt would take hundreds of steps, for latencies nobody reads. */
#define SRV_STEP_AUTO_FLOOR_MS 25.0
/* With no stream decoding, the default target of a prompt-only step: a request that arrives
 * waits about this long for the step in flight before its own prompt gets a turn. 100 ms of
 * prompt rows is some 70-130 rows on a 2-vCPU machine, where the matmuls are already at their
 * best speed (from 48 rows), so a lone long prompt loses little. */
#define SRV_STEP_PROMPT_ONLY_MS 100.0
/* Prompt rows every step with a prompt to advance may take, whatever the target: a prompt
 * always progresses. */
#define SRV_STEP_MIN_PROMPT_ROWS 8

typedef struct srv__step_budget {
    /* fixed after init */
    double max_step_ms; /* > 0 a fixed target; 0 no target (max_batch rows); < 0 the default */
    int max_batch;      /* rows per step */
    int min_prompt_rows;
    /* learned */
    int n_decode_seen;                   /* steps observed (with decode rows or not) */
    double dec_n, dec_nn, dec_t, dec_nt; /* EWMA moments of (decode rows, their part in ms) */
    double prompt_row_ms;                /* EWMA cost of one prompt row; 0 until one is seen */
    /* the plan of the step in flight */
    double step_target_ms; /* the target the last planned step was sized for; 0 for none */
} srv__step_budget;

/* max_step_ms as srv__step_budget.max_step_ms says; max_batch >= 1. Nothing allocated. */
void srv__step_budget_init(srv__step_budget *b, double max_step_ms, int max_batch);

/* The predicted time of a decode-only step of n rows; 0 before any step ran. */
double srv__step_budget_decode_ms(const srv__step_budget *b, int n);

/* The target for a step with n_dec decode rows (0 with no target: max_step_ms 0, or no decode
 * row under a fixed target). With the default target and no decode row: SRV_STEP_PROMPT_ONLY_MS,
 * for the requests that may arrive during the step. */
double srv__step_budget_target_ms(const srv__step_budget *b, int n_dec);

/* The prompt rows the next step may take beside its n_dec decode rows: max_batch - n_dec with no
 * target, else as many as fit in the target by the learned costs, at least min_prompt_rows
 * (within max_batch - n_dec). Records the target as step_target_ms for the observe that follows. */
int srv__step_budget_prompt_rows(srv__step_budget *b, int n_dec);

/* Learns from a step that ran n_dec decode rows and n_prompt prompt rows in ms milliseconds.
 * Returns true when the step was planned with a target (the last prompt_rows call) and took
 * longer than it. */
bool srv__step_budget_observe(srv__step_budget *b, int n_dec, int n_prompt, double ms);

#endif
