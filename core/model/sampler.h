/* Token sampling from one row of logits: repetition penalty, greedy or temperature sampling with
 * top-k / top-p / min-p, and a seeded RNG so a seed reproduces a completion.
 *
 * A core_sampler belongs to one sequence (one request); it is not thread-safe, but different
 * samplers may be used from different threads at once.
 */
#ifndef ADAPTREE_CORE_MODEL_SAMPLER_H
#define ADAPTREE_CORE_MODEL_SAMPLER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct core_sampler_params {
    float temperature;    /* 0 = greedy (argmax, ties to the lowest id) */
    int top_k;            /* keep the k most likely tokens; 0 = off */
    float top_p;          /* nucleus: smallest set with cumulative probability >= top_p; 1 = off */
    float min_p;          /* drop tokens with p < min_p * p_max; 0 = off */
    float repeat_penalty; /* 1 = off; > 1 discourages tokens seen in the recent history */
    int repeat_last_n;    /* how many recent history tokens the penalty looks at; 0 = all given */
    uint64_t seed;        /* RNG seed; the same seed gives the same tokens */
    /* OpenAI's penalties over history[count_from..] (the generated tokens, not the prompt):
     * logit[t] -= count[t] * frequency_penalty + (count[t] > 0) * presence_penalty. 0 = off. */
    float presence_penalty;  /* [-2, 2] */
    float frequency_penalty; /* [-2, 2] */
    size_t count_from;       /* where the generated tokens start in the history */
} core_sampler_params;

typedef struct core_sampler core_sampler;

/* Fills *p with the defaults: temperature 1, top_k 0, top_p 1, min_p 0, repeat_penalty 1,
 * repeat_last_n 64, seed 0, no presence or frequency penalty (plain sampling from the model's
 * distribution). */
void core_sampler_params_default(core_sampler_params *p);

/* Checks the parameters (temperature finite and >= 0, top_k >= 0, top_p in (0, 1], min_p in
 * [0, 1], repeat_penalty finite and > 0, repeat_last_n >= 0, presence and frequency penalties in
 * [-2, 2]) and n_vocab > 0, then creates a
 * sampler with its RNG seeded from p->seed. p may be NULL for the defaults; it is copied.
 * Returns a sampler the caller owns (free with core_sampler_free), or NULL with a message in err
 * (err may be NULL; errlen bytes including the NUL). */
core_sampler *core_sampler_new(const core_sampler_params *p, int32_t n_vocab, char *err,
                               size_t errlen);

/* Frees a sampler; NULL is allowed. */
void core_sampler_free(core_sampler *s);

/* Reseeds the RNG: the tokens drawn afterwards are those of a new sampler with this seed. */
void core_sampler_reset(core_sampler *s, uint64_t seed);

/* Sets the sampler's logit bias: bias[i] is added to the logit of ids[i] before anything else
 * (for greedy too); -INFINITY bans the token. Replaces the previous bias; n = 0 clears it. The
 * arrays are copied. Returns 0, -EINVAL for an id outside [0, n_vocab) or a NaN / +inf bias
 * (nothing changed), -ENOMEM. */
int core_sampler_set_bias(core_sampler *s, const int32_t *ids, const float *bias, int n);

/* Sets the banned tokens (their logits become -inf after the bias: EOG before min_tokens, with
 * ignore_eos), replacing the previous list; n = 0 clears it. Copied. Returns 0, -EINVAL for an
 * id outside the vocabulary (nothing changed), -ENOMEM. */
int core_sampler_set_banned(core_sampler *s, const int32_t *ids, int n);

/* A constraint on which tokens may come next (structured outputs: core/text/grammar.h's
 * matcher): allows(ctx, id) says whether one token may; mask(ctx, bits) sets bit id of bits
 * ((n_vocab + 63) / 64 words) for every token that may and returns how many (negative: no
 * memory). Both are called from the thread that samples. */
typedef struct core_sampler_constraint {
    void *ctx;
    bool (*allows)(void *ctx, int32_t id);
    int32_t (*mask)(void *ctx, uint64_t *bits);
} core_sampler_constraint;

/* Sets the sampler's constraint (copied; NULL clears it). Disallowed tokens get -inf after the
 * bias, bans and penalties. The full mask is only computed when needed: greedy sampling checks
 * the argmax alone first, and sampling without top-k/top-p/min-p draws first and masks and draws
 * again only when the draw was disallowed (which is exact: a rejected draw followed by a draw
 * from the masked distribution picks each allowed token with its masked probability); with a
 * truncation filter the mask comes first so the filters see the masked distribution. 0, or
 * -ENOMEM. */
int core_sampler_set_constraint(core_sampler *s, const core_sampler_constraint *c);

/* Sets grammar matcher m (core/text/grammar.h) as the constraint (NULL clears it); m must outlive
 * its use. 0, or -ENOMEM. */
struct core_gmatch;
int core_sampler_set_grammar(core_sampler *s, struct core_gmatch *m);

/* Picks the next token from logits (n_vocab floats, not modified; only read during the call).
 *
 * Order: logit bias and banned tokens (core_sampler_set_bias, core_sampler_set_banned),
 * presence and frequency penalties, repetition penalty (each distinct token among the last
 * repeat_last_n entries of history: logit > 0 ? logit / penalty : logit * penalty; ids outside [0,
 * n_vocab) are ignored), then greedy argmax when temperature is 0, otherwise top-k, temperature,
 * softmax, top-p, min-p, renormalization and one draw from the RNG. NaN and +inf logits are
 * numerical faults upstream and are treated as -inf. history may be NULL when n_history is 0.
 *
 * Returns the token id, or -1 when every logit is -inf or NaN, or the constraint allows no token
 * (the caller reports the error).
 * When logprob_out is not NULL it receives the log-probability of the chosen token under the
 * final distribution (after bias, bans, penalties, temperature and filters, renormalized); for
 * greedy it is the log-softmax of the input logits (no bias, ban or penalty) — what the model
 * itself assigned; -inf when -1 is returned. The server reports neither: its logprobs are
 * always the log-softmax of the model's raw logits (server/scheduler.c). */
int32_t core_sampler_sample(core_sampler *s, const float *logits, const int32_t *history,
                            size_t n_history, float *logprob_out);

/* One row of core_sampler_sample_many: its own sampler (never shared between rows of one call),
 * logits and history; id receives what core_sampler_sample returns. */
typedef struct core_sample_req {
    core_sampler *s;
    const float *logits;
    const int32_t *history;
    size_t n_history;
    int32_t id;
} core_sample_req;

/* core_sampler_sample for every request, split over core's thread pool: the same ids as one call
 * after another (each sampler's state and random stream are its own). */
void core_sampler_sample_many(core_sample_req *reqs, int n);

/* The k most likely tokens of a logits row and their log-softmax values (over the whole row),
 * sorted by decreasing logit, ties to the lowest id. NaN and +inf logits are treated as -inf and
 * never returned. ids must hold k entries; logprobs may be NULL. Pure, thread-safe.
 * Returns how many were written (less than k when fewer logits are finite), or -EINVAL for
 * n_vocab <= 0 or k < 0. */
int core_logits_top_k(const float *logits, int32_t n_vocab, int k, int32_t *ids, float *logprobs);

/* log(Σ exp(logits)) over a row, NaN and +inf treated as -inf; -inf when no logit is finite. What
 * every logprob above is taken against: logprob(id) = logits[id] - this. Pure, thread-safe. */
double core_logits_log_sum_exp(const float *logits, int32_t n_vocab);

#endif
