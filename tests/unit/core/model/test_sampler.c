/* Unit tests for core/model/sampler.c: greedy, reproducibility, the empirical distribution against
 * softmax, each filter, the repetition penalty, NaN logits, parameter validation and logprobs
 * against a naive double-precision computation. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/model/sampler.h"
#include "tests/test.h"

static core_sampler *make(float temperature, int top_k, float top_p, float min_p, float penalty,
                          uint64_t seed, int32_t n_vocab)
{
    core_sampler_params p;
    core_sampler_params_default(&p);
    p.temperature = temperature;
    p.top_k = top_k;
    p.top_p = top_p;
    p.min_p = min_p;
    p.repeat_penalty = penalty;
    p.seed = seed;
    char err[128] = "";
    core_sampler *s = core_sampler_new(&p, n_vocab, err, sizeof(err));
    if (!s)
        printf("    core_sampler_new: %s\n", err);
    return s;
}

/* Deterministic pseudo-logits in [-4, 4) without touching the sampler's RNG. */
static void fill_logits(float *x, int32_t n, uint32_t seed)
{
    uint32_t h = seed * 2654435761u + 1;
    for (int32_t i = 0; i < n; i++) {
        h ^= h << 13;
        h ^= h >> 17;
        h ^= h << 5;
        x[i] = (float)(h % 8000) / 1000.0f - 4.0f;
    }
}

/* Draws n tokens and counts them per id (ids must stay below n_vocab). Returns 0 or -1. */
static int draw_counts(core_sampler *s, const float *logits, int32_t n_vocab, int n, int *counts)
{
    memset(counts, 0, (size_t)n_vocab * sizeof(*counts));
    for (int i = 0; i < n; i++) {
        int32_t t = core_sampler_sample(s, logits, NULL, 0, NULL);
        if (t < 0 || t >= n_vocab)
            return -1;
        counts[t]++;
    }
    return 0;
}

TEST(sampler_greedy_picks_argmax)
{
    enum { N = 1000 };
    float x[N];
    fill_logits(x, N, 7);
    x[613] = 9.5f;
    x[12] = 9.5f - 1e-6f;
    float before[N];
    memcpy(before, x, sizeof(x));
    core_sampler *s = make(0, 0, 1, 0, 1, 0, N);
    CHECK(s);
    float lp = 0;
    int32_t t = core_sampler_sample(s, x, NULL, 0, &lp);
    CHECK_EQ_INT(t, 613);
    for (int i = 0; i < N; i++) /* the input row is not modified */
        CHECK_MSG(before[i] == x[i], "logits[%d] changed: %g -> %g", i, (double)before[i],
                  (double)x[i]);
    /* Ties go to the lowest id. */
    x[900] = 9.5f;
    x[300] = 9.5f;
    CHECK_EQ_INT(core_sampler_sample(s, x, NULL, 0, NULL), 300);
    core_sampler_free(s);
}

TEST(sampler_same_seed_same_tokens)
{
    enum { N = 64, DRAWS = 100 };
    float x[N];
    fill_logits(x, N, 3);
    for (int i = 0; i < N; i++)
        x[i] *= 0.3f; /* fairly flat, so different seeds really differ */
    core_sampler *a = make(1, 0, 1, 0, 1, 42, N);
    core_sampler *b = make(1, 0, 1, 0, 1, 42, N);
    core_sampler *c = make(1, 0, 1, 0, 1, 43, N);
    CHECK(a && b && c);
    int32_t ta[DRAWS], tb[DRAWS], tc[DRAWS];
    int same_ab = 0, same_ac = 0;
    for (int i = 0; i < DRAWS; i++) {
        ta[i] = core_sampler_sample(a, x, NULL, 0, NULL);
        tb[i] = core_sampler_sample(b, x, NULL, 0, NULL);
        tc[i] = core_sampler_sample(c, x, NULL, 0, NULL);
        same_ab += ta[i] == tb[i];
        same_ac += ta[i] == tc[i];
    }
    CHECK_EQ_INT(same_ab, DRAWS);
    /* With ~64 plausible tokens, two seeds agree on a few draws by chance, never most. */
    CHECK_MSG(same_ac < DRAWS / 4, "seeds 42 and 43 agree on %d of %d draws", same_ac, DRAWS);
    /* Reseeding replays the sequence. */
    core_sampler_reset(c, 42);
    for (int i = 0; i < DRAWS; i++)
        CHECK_EQ_INT(core_sampler_sample(c, x, NULL, 0, NULL), ta[i]);
    core_sampler_free(a);
    core_sampler_free(b);
    core_sampler_free(c);
}

TEST(sampler_top_k_1_is_greedy)
{
    enum { N = 5000 };
    static float x[N];
    core_sampler *g = make(0, 0, 1, 0, 1, 0, N);
    core_sampler *k1 = make(1.5f, 1, 1, 0, 1, 99, N);
    CHECK(g && k1);
    for (uint32_t r = 0; r < 50; r++) {
        fill_logits(x, N, r);
        if (r % 5 == 0)
            x[N - 1] = x[r] = 10; /* a tie: both must pick the lower id */
        int32_t tg = core_sampler_sample(g, x, NULL, 0, NULL);
        float lp = 1;
        int32_t tk = core_sampler_sample(k1, x, NULL, 0, &lp);
        CHECK_EQ_INT(tk, tg);
        CHECK_NEAR(lp, 0.0, 1e-7); /* a one-token distribution */
    }
    core_sampler_free(g);
    core_sampler_free(k1);
}

/* Top-k cuts through a group of equal logits: both the heap (k <= 256) and the radix select
 * (larger k) keep the lowest ids of the group, and the logprob is renormalized over exactly k
 * tokens. Logits are i % 10, so every value has 100 tokens. */
TEST(sampler_top_k_ties_keep_lowest_ids)
{
    enum { N = 1000, DRAWS = 3000 };
    float x[N];
    for (int i = 0; i < N; i++)
        x[i] = (float)(i % 10);
    static const struct {
        int k, edge_value, edge_kept; /* the group the cut goes through, and how many stay */
    } cases[] = {{50, 9, 50}, {350, 6, 50}};
    for (size_t c = 0; c < 2; c++) {
        int k = cases[c].k, ev = cases[c].edge_value;
        double z = 0; /* mass of the kept set */
        for (int v = ev + 1; v <= 9; v++)
            z += 100 * exp(v);
        z += cases[c].edge_kept * exp(ev);
        int32_t max_edge_id = (int32_t)(ev + 10 * (cases[c].edge_kept - 1));
        core_sampler *s = make(1, k, 1, 0, 1, 31, N);
        CHECK(s);
        int edge_hits = 0;
        double worst = 0;
        for (int d = 0; d < DRAWS; d++) {
            float lp;
            int32_t t = core_sampler_sample(s, x, NULL, 0, &lp);
            CHECK(t >= 0 && t < N);
            CHECK_MSG(x[t] >= ev, "k=%d drew token %d with logit %g", k, t, (double)x[t]);
            if (x[t] == ev) {
                edge_hits++;
                CHECK_MSG(t <= max_edge_id, "k=%d kept tie token %d > %d", k, t, max_edge_id);
            }
            worst = fmax(worst, fabs(lp - (x[t] - log(z))));
        }
        core_sampler_free(s);
        printf("    top_k %d: %d draws from the tie group, max |logprob error| %.2g\n", k,
               edge_hits, worst);
        CHECK(edge_hits > 0);
        CHECK(worst < 1e-5);
    }
}

TEST(sampler_distribution_matches_softmax)
{
    enum { N = 4, DRAWS = 20000 };
    const float x[N] = {1.0f, 2.0f, 0.5f, -1.0f};
    const double tol = 0.015;
    double p[N], z = 0;
    for (int i = 0; i < N; i++)
        z += exp((double)x[i]);
    for (int i = 0; i < N; i++)
        p[i] = exp((double)x[i]) / z;
    core_sampler *s = make(1, 0, 1, 0, 1, 1234, N);
    CHECK(s);
    int counts[N];
    CHECK(draw_counts(s, x, N, DRAWS, counts) == 0);
    double worst = 0;
    for (int i = 0; i < N; i++) {
        double f = (double)counts[i] / DRAWS, d = fabs(f - p[i]);
        if (d > worst)
            worst = d;
        printf("    token %d: softmax %.4f empirical %.4f\n", i, p[i], f);
    }
    printf("    max |empirical - softmax| = %.4f over %d draws (tolerance %.3f)\n", worst, DRAWS,
           tol);
    CHECK(worst <= tol);
    core_sampler_free(s);
}

TEST(sampler_top_p_excludes_tail)
{
    /* Probabilities 0.5, 0.3, 0.15, 0.05: cumulative 0.5, 0.8, 0.95, 1. top_p 0.75 keeps
     * {0, 1}; 0.85 keeps {0, 1, 2}. */
    enum { N = 4, DRAWS = 4000 };
    const float x[N] = {logf(0.5f), logf(0.3f), logf(0.15f), logf(0.05f)};
    int counts[N];
    core_sampler *s = make(1, 0, 0.75f, 0, 1, 5, N);
    CHECK(s);
    CHECK(draw_counts(s, x, N, DRAWS, counts) == 0);
    printf("    top_p 0.75: %d %d %d %d\n", counts[0], counts[1], counts[2], counts[3]);
    CHECK(counts[0] > 0 && counts[1] > 0);
    CHECK_EQ_INT(counts[2] + counts[3], 0);
    /* Renormalized over the two kept: 0.5/0.8 = 0.625. */
    CHECK_NEAR((double)counts[0] / DRAWS, 0.625, 0.04);
    core_sampler_free(s);

    s = make(1, 0, 0.85f, 0, 1, 5, N);
    CHECK(s);
    CHECK(draw_counts(s, x, N, DRAWS, counts) == 0);
    CHECK(counts[2] > 0);
    CHECK_EQ_INT(counts[3], 0);
    core_sampler_free(s);

    /* A tiny top_p still keeps one token: the most likely. */
    s = make(1, 0, 1e-6f, 0, 1, 5, N);
    CHECK(s);
    CHECK(draw_counts(s, x, N, 200, counts) == 0);
    CHECK_EQ_INT(counts[0], 200);
    core_sampler_free(s);
}

static const double *sort_p; /* what cmp_p_desc compares by (qsort has no context) */

static int cmp_p_desc(const void *a, const void *b)
{
    double x = sort_p[*(const int32_t *)a], y = sort_p[*(const int32_t *)b];
    return (x < y) - (x > y);
}

/* Naive top-k then top-p in double: sorts everything, renormalizes over the top_k most likely
 * (0 = all), and returns the probability of the nucleus' least likely member, its size and its
 * mass. p receives the renormalized probabilities (0 outside the top k). */
static double naive_nucleus_floor(const float *x, int32_t n, float temp, int top_k, float top_p,
                                  double *p, int32_t *order, int *keep, double *mass)
{
    double z = 0, mx = -INFINITY;
    for (int32_t i = 0; i < n; i++)
        mx = fmax(mx, x[i] / (double)temp);
    for (int32_t i = 0; i < n; i++) {
        p[i] = exp(x[i] / (double)temp - mx);
        order[i] = i;
    }
    sort_p = p;
    qsort(order, (size_t)n, sizeof(*order), cmp_p_desc);
    int32_t k = top_k > 0 && top_k < n ? top_k : n;
    for (int32_t i = 0; i < k; i++)
        z += p[order[i]];
    for (int32_t i = k; i < n; i++)
        p[order[i]] = 0;
    for (int32_t i = 0; i < n; i++)
        p[i] /= z;
    double cum = 0;
    int m = 0;
    while (m < k && cum < top_p)
        cum += p[order[m++]];
    *keep = m;
    *mass = cum;
    return p[order[m - 1]];
}

/* top-p over a 49152-token vocabulary, alone (threshold path) and after a large top-k
 * (quickselect path), keeps exactly the naive nucleus: no drawn token lies outside it, and every
 * logprob is log(p / nucleus mass), which pins the kept mass to within one tail token. Once with a
 * peaked head (the threshold's fast case) and once with a flat tail holding most of the mass. */
TEST(sampler_top_p_large_vocab_matches_naive)
{
    enum { N = 49152 };
    static float x[N];
    static double p[N];
    static int32_t order[N];
    static char seen[N];
    const float temp = 0.8f, top_p = 0.9f;
    for (int shape = 0; shape < 2; shape++) {
        fill_logits(x, N, 11);
        for (int i = 0; i < 40; i++)
            x[i * 997] = (shape ? 6.0f : 14.0f) + 0.05f * i;
        for (int variant = 0; variant < 2; variant++) {
            int keep, top_k = variant ? 20000 : 0;
            double mass;
            double floor_p = naive_nucleus_floor(x, N, temp, top_k, top_p, p, order, &keep, &mass);
            core_sampler *s = make(temp, top_k, top_p, 0, 1, 77, N);
            CHECK(s);
            memset(seen, 0, N);
            int outside = 0, distinct = 0, draws = shape ? 100 : 300;
            double worst = 0;
            for (int d = 0; d < draws; d++) {
                float lp;
                int32_t t = core_sampler_sample(s, x, NULL, 0, &lp);
                CHECK(t >= 0 && t < N);
                distinct += !seen[t];
                seen[t] = 1;
                outside += p[t] < floor_p;
                worst = fmax(worst, fabs((log(p[t]) - lp) - log(mass)));
            }
            core_sampler_free(s);
            printf("    %s head, %s: nucleus %d tokens (mass %.6f, floor p %.2g), %d distinct "
                   "drawn, %d outside, max |log mass error| %.2g\n",
                   shape ? "flat" : "peaked", variant ? "top_k 20000" : "threshold", keep, mass,
                   floor_p, distinct, outside, worst);
            CHECK_EQ_INT(outside, 0);
            CHECK(distinct >= (keep < 20 ? keep : 20));
            /* One token more or less would move log(mass) by about floor_p / mass. */
            CHECK(worst < 0.2 * floor_p / mass);
        }
    }
}

TEST(sampler_min_p)
{
    /* p = 0.5, 0.3, 0.15, 0.05; min_p 0.25 cuts below 0.125: keeps tokens 0..2. */
    enum { N = 4, DRAWS = 4000 };
    const float x[N] = {logf(0.5f), logf(0.3f), logf(0.15f), logf(0.05f)};
    int counts[N];
    core_sampler *s = make(1, 0, 1, 0.25f, 1, 8, N);
    CHECK(s);
    CHECK(draw_counts(s, x, N, DRAWS, counts) == 0);
    printf("    min_p 0.25: %d %d %d %d\n", counts[0], counts[1], counts[2], counts[3]);
    CHECK(counts[2] > 0);
    CHECK_EQ_INT(counts[3], 0);
    CHECK_NEAR((double)counts[0] / DRAWS, 0.5 / 0.95, 0.04);
    core_sampler_free(s);
    /* min_p 1 keeps only the most likely. */
    s = make(1, 0, 1, 1.0f, 1, 8, N);
    CHECK(s);
    CHECK(draw_counts(s, x, N, 100, counts) == 0);
    CHECK_EQ_INT(counts[0], 100);
    core_sampler_free(s);
}

TEST(sampler_repeat_penalty)
{
    enum { N = 6 };
    /* Token 2 leads; penalty 1.5 takes 3.0 to 2.0, below token 4 (2.5). */
    const float x[N] = {-1.0f, 1.0f, 3.0f, 0.0f, 2.5f, -1.2f};
    core_sampler *s = make(0, 0, 1, 0, 1.5f, 0, N);
    CHECK(s);
    CHECK_EQ_INT(core_sampler_sample(s, x, NULL, 0, NULL), 2);
    const int32_t hist[] = {2, 2, 2};
    CHECK_EQ_INT(core_sampler_sample(s, x, hist, 3, NULL), 4);
    /* A repeated token is penalized once, not per occurrence: 3.0 -> 2.0 stays above 1.9
     * (twice would give 1.33). */
    const float x19[N] = {-1.0f, 1.0f, 3.0f, 0.0f, 1.9f, -1.2f};
    CHECK_EQ_INT(core_sampler_sample(s, x19, hist, 3, NULL), 2);
    const int32_t hist2[] = {2, 4};
    CHECK_EQ_INT(core_sampler_sample(s, x, hist2, 2, NULL), 2); /* 2.0 vs 2.5/1.5=1.67 */
    /* Negative logits are multiplied: -1.0 -> -1.5 falls below -1.2 (dividing would raise
     * it to -0.67). */
    const float neg[N] = {-2.0f, -1.0f, -1.2f, -3.0f, -4.0f, -5.0f};
    const int32_t h1[] = {1};
    CHECK_EQ_INT(core_sampler_sample(s, neg, NULL, 0, NULL), 1);
    CHECK_EQ_INT(core_sampler_sample(s, neg, h1, 1, NULL), 2);
    /* Out-of-range ids in the history are ignored. */
    const int32_t bad[] = {-5, 1000, 2};
    CHECK_EQ_INT(core_sampler_sample(s, x, bad, 3, NULL), 4);
    core_sampler_free(s);

    /* repeat_last_n limits the window: 2 is outside the last 2 entries. */
    core_sampler_params p;
    core_sampler_params_default(&p);
    p.temperature = 0;
    p.repeat_penalty = 1.5f;
    p.repeat_last_n = 2;
    s = core_sampler_new(&p, N, NULL, 0);
    CHECK(s);
    const int32_t hist3[] = {2, 1, 3};
    CHECK_EQ_INT(core_sampler_sample(s, x, hist3, 3, NULL), 2);
    const int32_t hist4[] = {1, 3, 2};
    CHECK_EQ_INT(core_sampler_sample(s, x, hist4, 3, NULL), 4);
    core_sampler_free(s);

    /* With a penalty in sampling mode, the penalized distribution is what gets drawn from:
     * token 0 goes from 10 to 0.01 against two 5s, p = 0.0034. */
    const float y[3] = {10.0f, 5.0f, 5.0f};
    s = make(1, 0, 1, 0, 1000.0f, 3, 3);
    CHECK(s);
    const int32_t h0[] = {0};
    int zero = 0;
    for (int i = 0; i < 200; i++)
        zero += core_sampler_sample(s, y, h0, 1, NULL) == 0;
    CHECK_MSG(zero < 5, "token 0 drawn %d of 200 times despite the penalty", zero);
    core_sampler_free(s);
}

TEST(sampler_logit_bias_and_bans)
{
    enum { N = 6 };
    const float x[N] = {-1.0f, 1.0f, 3.0f, 0.0f, 2.5f, -1.2f};
    core_sampler *s = make(0, 0, 1, 0, 1, 0, N);
    CHECK(s);
    float lp = 0;
    /* +100 on the least likely token makes greedy pick it; the logprob stays the model's. */
    const int32_t id5[] = {5};
    const float up[] = {100.0f};
    CHECK_EQ_INT(core_sampler_set_bias(s, id5, up, 1), 0);
    CHECK_EQ_INT(core_sampler_sample(s, x, NULL, 0, &lp), 5);
    double lse = core_logits_log_sum_exp(x, N);
    CHECK_NEAR(lp, x[5] - lse, 1e-5);
    /* -100 on the argmax moves greedy to the runner-up. */
    const int32_t id2[] = {2};
    const float down[] = {-100.0f};
    CHECK_EQ_INT(core_sampler_set_bias(s, id2, down, 1), 0);
    CHECK_EQ_INT(core_sampler_sample(s, x, NULL, 0, NULL), 4);
    /* A ban wins over a bias; clearing both restores the argmax. */
    const int32_t ban[] = {4, 1};
    CHECK_EQ_INT(core_sampler_set_banned(s, ban, 2), 0);
    CHECK_EQ_INT(core_sampler_sample(s, x, NULL, 0, NULL), 3);
    const int32_t b4[] = {4};
    const float up4[] = {50.0f};
    CHECK_EQ_INT(core_sampler_set_bias(s, b4, up4, 1), 0);
    CHECK_EQ_INT(core_sampler_sample(s, x, NULL, 0, NULL), 2);
    CHECK_EQ_INT(core_sampler_set_bias(s, NULL, NULL, 0), 0);
    CHECK_EQ_INT(core_sampler_set_banned(s, NULL, 0), 0);
    CHECK_EQ_INT(core_sampler_sample(s, x, NULL, 0, NULL), 2);
    /* Bad ids and values are refused and change nothing. */
    const int32_t out[] = {N}, neg[] = {-1};
    const float inf[] = {INFINITY}, nan_[] = {NAN};
    CHECK_EQ_INT(core_sampler_set_bias(s, out, up, 1), -EINVAL);
    CHECK_EQ_INT(core_sampler_set_bias(s, neg, up, 1), -EINVAL);
    CHECK_EQ_INT(core_sampler_set_bias(s, id5, inf, 1), -EINVAL);
    CHECK_EQ_INT(core_sampler_set_bias(s, id5, nan_, 1), -EINVAL);
    CHECK_EQ_INT(core_sampler_set_banned(s, out, 1), -EINVAL);
    CHECK_EQ_INT(core_sampler_sample(s, x, NULL, 0, NULL), 2);
    core_sampler_free(s);

    /* Sampling mode: a banned token is never drawn, even when it holds almost all the mass. */
    const float y[3] = {10.0f, 0.0f, 0.0f};
    s = make(1, 0, 1, 0, 1, 7, 3);
    CHECK(s);
    const int32_t b0[] = {0};
    CHECK_EQ_INT(core_sampler_set_banned(s, b0, 1), 0);
    int zero = 0;
    for (int i = 0; i < 200; i++)
        zero += core_sampler_sample(s, y, NULL, 0, NULL) == 0;
    CHECK_EQ_INT(zero, 0);
    /* Everything banned: no token (the caller reports it). */
    const int32_t all[] = {0, 1, 2};
    CHECK_EQ_INT(core_sampler_set_banned(s, all, 3), 0);
    CHECK_EQ_INT(core_sampler_sample(s, y, NULL, 0, NULL), -1);
    core_sampler_free(s);
}

/* OpenAI's formula: logit[t] -= count[t] * frequency + (count[t] > 0) * presence, counted over
 * history[count_from..] only. */
TEST(sampler_presence_frequency_penalties)
{
    enum { N = 4 };
    const float x[N] = {2.0f, 1.5f, 1.0f, 0.0f};
    core_sampler_params p;
    core_sampler_params_default(&p);
    p.temperature = 0;
    p.presence_penalty = 0.6f;
    p.count_from = 2; /* history[0..2) is the prompt */
    core_sampler *s = core_sampler_new(&p, N, NULL, 0);
    CHECK(s);
    /* The prompt's 0s do not count: 0 still wins. */
    const int32_t h_prompt[] = {0, 0};
    CHECK_EQ_INT(core_sampler_sample(s, x, h_prompt, 2, NULL), 0);
    /* One generated 0: 2.0 - 0.6 = 1.4 < 1.5. */
    const int32_t h1[] = {0, 0, 0};
    CHECK_EQ_INT(core_sampler_sample(s, x, h1, 3, NULL), 1);
    /* Presence is paid once however often: with 0 and 1 both seen, 1.4 vs 0.9 vs 1.0. */
    const int32_t h2[] = {3, 3, 0, 0, 0, 1};
    CHECK_EQ_INT(core_sampler_sample(s, x, h2, 6, NULL), 0);
    core_sampler_free(s);

    /* Frequency grows with the count: 0 seen twice at 0.3 -> 1.4 < 1.5; once -> 1.7 wins. */
    core_sampler_params_default(&p);
    p.temperature = 0;
    p.frequency_penalty = 0.3f;
    s = core_sampler_new(&p, N, NULL, 0);
    CHECK(s);
    const int32_t once[] = {0}, twice[] = {0, 2, 0};
    CHECK_EQ_INT(core_sampler_sample(s, x, once, 1, NULL), 0);
    CHECK_EQ_INT(core_sampler_sample(s, x, twice, 3, NULL), 1);
    /* Counts are per call: the same history again gives the same answer. */
    CHECK_EQ_INT(core_sampler_sample(s, x, twice, 3, NULL), 1);
    CHECK_EQ_INT(core_sampler_sample(s, x, once, 1, NULL), 0);
    core_sampler_free(s);

    /* A negative penalty encourages repeats: 3 (0.0) seen once at -2 presence -> 2.0, tied with 0
     * and the lower id wins; seen twice with frequency -1 as well -> 4.0. */
    core_sampler_params_default(&p);
    p.temperature = 0;
    p.presence_penalty = -2.0f;
    p.frequency_penalty = -1.0f;
    s = core_sampler_new(&p, N, NULL, 0);
    CHECK(s);
    const int32_t h3[] = {3, 3};
    CHECK_EQ_INT(core_sampler_sample(s, x, h3, 2, NULL), 3);
    core_sampler_free(s);

    /* Out of [-2, 2] is refused. */
    core_sampler_params_default(&p);
    p.frequency_penalty = 2.5f;
    char err[128] = "";
    CHECK(core_sampler_new(&p, N, err, sizeof err) == NULL);
    CHECK_MSG(strstr(err, "frequency_penalty") != NULL, "err: %s", err);
    core_sampler_params_default(&p);
    p.presence_penalty = NAN;
    CHECK(core_sampler_new(&p, N, err, sizeof err) == NULL);
    CHECK_MSG(strstr(err, "presence_penalty") != NULL, "err: %s", err);
}

TEST(sampler_nan_logits)
{
    enum { N = 5 };
    float x[N] = {NAN, 1.0f, NAN, 2.0f, INFINITY};
    core_sampler *g = make(0, 0, 1, 0, 1, 0, N);
    core_sampler *t = make(1, 0, 0.9f, 0, 1, 0, N);
    core_sampler *k = make(1, 2, 1, 0, 1, 0, N);
    CHECK(g && t && k);
    float lp;
    CHECK_EQ_INT(core_sampler_sample(g, x, NULL, 0, &lp), 3);
    CHECK(isfinite(lp));
    for (int i = 0; i < 100; i++) {
        int32_t a = core_sampler_sample(t, x, NULL, 0, &lp);
        int32_t b = core_sampler_sample(k, x, NULL, 0, NULL);
        CHECK_MSG(a == 1 || a == 3, "drew %d", a);
        CHECK_MSG(b == 1 || b == 3, "drew %d", b);
        CHECK(isfinite(lp));
    }
    float all[N] = {NAN, NAN, -INFINITY, NAN, -INFINITY};
    CHECK_EQ_INT(core_sampler_sample(g, all, NULL, 0, &lp), -1);
    CHECK(lp == -INFINITY);
    CHECK_EQ_INT(core_sampler_sample(t, all, NULL, 0, &lp), -1);
    CHECK_EQ_INT(core_sampler_sample(k, all, NULL, 0, NULL), -1);
    int32_t ids[3];
    CHECK_EQ_INT(core_logits_top_k(all, N, 3, ids, NULL), 0);
    CHECK_EQ_INT(core_logits_top_k(x, N, 3, ids, NULL), 2);
    CHECK_EQ_INT(ids[0], 3);
    CHECK_EQ_INT(ids[1], 1);
    core_sampler_free(g);
    core_sampler_free(t);
    core_sampler_free(k);
}

TEST(sampler_invalid_params_rejected)
{
    static const struct {
        const char *field;
        float temperature, top_p, min_p, penalty;
        int top_k, last_n;
        int32_t n_vocab;
    } bad[] = {
        {"temperature", -0.1f, 1, 0, 1, 0, 64, 10},
        {"temperature", NAN, 1, 0, 1, 0, 64, 10},
        {"temperature", INFINITY, 1, 0, 1, 0, 64, 10},
        {"top_p", 1, 0.0f, 0, 1, 0, 64, 10},
        {"top_p", 1, 1.5f, 0, 1, 0, 64, 10},
        {"top_p", 1, NAN, 0, 1, 0, 64, 10},
        {"min_p", 1, 1, -0.1f, 1, 0, 64, 10},
        {"min_p", 1, 1, 1.01f, 1, 0, 64, 10},
        {"top_k", 1, 1, 0, 1, -1, 64, 10},
        {"repeat_penalty", 1, 1, 0, 0.0f, 0, 64, 10},
        {"repeat_penalty", 1, 1, 0, -1.0f, 0, 64, 10},
        {"repeat_penalty", 1, 1, 0, INFINITY, 0, 64, 10},
        {"repeat_last_n", 1, 1, 0, 1, 0, -1, 10},
        {"n_vocab", 1, 1, 0, 1, 0, 64, 0},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        core_sampler_params p;
        core_sampler_params_default(&p);
        p.temperature = bad[i].temperature;
        p.top_p = bad[i].top_p;
        p.min_p = bad[i].min_p;
        p.repeat_penalty = bad[i].penalty;
        p.top_k = bad[i].top_k;
        p.repeat_last_n = bad[i].last_n;
        char err[160] = "";
        core_sampler *s = core_sampler_new(&p, bad[i].n_vocab, err, sizeof(err));
        CHECK_MSG(!s, "case %zu (%s) accepted", i, bad[i].field);
        CHECK_MSG(strncmp(err, bad[i].field, strlen(bad[i].field)) == 0,
                  "case %zu: message \"%s\" does not start with \"%s\"", i, err, bad[i].field);
    }
    char err[160];
    core_sampler_params p;
    core_sampler_params_default(&p);
    p.top_p = 2;
    CHECK(!core_sampler_new(&p, 10, err, sizeof(err)));
    CHECK_EQ_STR(err, "top_p must be in (0, 1], 1 = off (got 2)");
    /* Edges that are valid, and NULL params = defaults. */
    p.top_p = 1;
    p.min_p = 1;
    p.temperature = 0;
    p.repeat_last_n = 0;
    core_sampler *s = core_sampler_new(&p, 10, err, sizeof(err));
    CHECK(s);
    core_sampler_free(s);
    s = core_sampler_new(NULL, 10, NULL, 0);
    CHECK(s);
    core_sampler_free(s);
    core_sampler_free(NULL);
}

static double naive_lse(const float *x, int32_t n, double scale)
{
    double mx = -INFINITY, z = 0;
    for (int32_t i = 0; i < n; i++)
        mx = fmax(mx, x[i] * scale);
    for (int32_t i = 0; i < n; i++)
        z += exp(x[i] * scale - mx);
    return mx + log(z);
}

TEST(sampler_logprobs_match_naive)
{
    enum { N = 3000 };
    static float x[N];
    fill_logits(x, N, 21);
    for (int i = 0; i < N; i++)
        x[i] = x[i] * 3 + 20; /* large offsets: log-softmax must not lose precision */
    double worst = 0;

    /* Greedy: log-softmax of the raw row. */
    core_sampler *g = make(0, 0, 1, 0, 1, 0, N);
    CHECK(g);
    float lp;
    int32_t t = core_sampler_sample(g, x, NULL, 0, &lp);
    double want = x[t] - naive_lse(x, N, 1.0);
    worst = fmax(worst, fabs(lp - want));
    CHECK_NEAR(lp, want, 1e-5);
    core_sampler_free(g);
    /* With a penalty moving the argmax, still the log-softmax of the raw row. */
    g = make(0, 0, 1, 0, 1.3f, 0, N);
    CHECK(g);
    int32_t hist[1] = {t};
    int32_t t2 = core_sampler_sample(g, x, hist, 1, &lp);
    CHECK(t2 != t);
    want = x[t2] - naive_lse(x, N, 1.0);
    worst = fmax(worst, fabs(lp - want));
    CHECK_NEAR(lp, want, 1e-5);
    core_sampler_free(g);

    /* Temperature only: log-softmax of x / T. */
    core_sampler *s = make(0.7f, 0, 1, 0, 1, 4, N);
    CHECK(s);
    double lse = naive_lse(x, N, 1.0 / 0.7f);
    for (int i = 0; i < 50; i++) {
        t = core_sampler_sample(s, x, NULL, 0, &lp);
        want = x[t] / (double)0.7f - lse;
        worst = fmax(worst, fabs(lp - want));
        CHECK_NEAR(lp, want, 1e-5);
    }
    core_sampler_free(s);

    /* top_k 10: log-softmax renormalized over the 10 kept. */
    int32_t ids[10];
    float lps[10];
    CHECK_EQ_INT(core_logits_top_k(x, N, 10, ids, lps), 10);
    float kept[10];
    for (int i = 0; i < 10; i++)
        kept[i] = x[ids[i]];
    lse = naive_lse(kept, 10, 1.0 / 1.3f);
    s = make(1.3f, 10, 1, 0, 1, 4, N);
    CHECK(s);
    for (int i = 0; i < 50; i++) {
        t = core_sampler_sample(s, x, NULL, 0, &lp);
        want = x[t] / (double)1.3f - lse;
        worst = fmax(worst, fabs(lp - want));
        CHECK_NEAR(lp, want, 1e-5);
    }
    core_sampler_free(s);

    /* core_logits_top_k: sorted, correct ids and log-softmax values. */
    lse = naive_lse(x, N, 1.0);
    for (int i = 0; i < 10; i++) {
        if (i > 0)
            CHECK(x[ids[i - 1]] >= x[ids[i]]);
        worst = fmax(worst, fabs(lps[i] - (x[ids[i]] - lse)));
        CHECK_NEAR(lps[i], x[ids[i]] - lse, 1e-5);
    }
    int above = 0;
    for (int i = 0; i < N; i++)
        above += x[i] > x[ids[9]];
    CHECK_EQ_INT(above, 9);
    printf("    max |logprob - naive| = %.2g\n", worst);
    CHECK_EQ_INT(core_logits_top_k(x, N, -1, ids, lps), -EINVAL);
    CHECK_EQ_INT(core_logits_top_k(x, 0, 1, ids, lps), -EINVAL);
    CHECK_EQ_INT(core_logits_top_k(x, 3, 10, ids, NULL), 3);
}

/* The log-sum-exp every logprob is taken against, over a vocabulary-sized row: within 1e-6 of
 * double (it once summed its lanes in float and drifted by 1e-5), so that a token's logprob
 * does not depend on whether it was among the top-k. */
TEST(sampler_log_sum_exp_full_vocab)
{
    enum { N = 49152 };
    static float x[N];
    fill_logits(x, N, 5);
    for (int i = 0; i < N; i++)
        x[i] = x[i] * 4 - 2;
    double want = naive_lse(x, N, 1.0), got = core_logits_log_sum_exp(x, N);
    printf("    log-sum-exp over %d logits: %.9f vs %.9f in double\n", N, got, want);
    CHECK_NEAR(got, want, 1e-6);
    int32_t ids[2];
    float lps[2];
    CHECK_EQ_INT(core_logits_top_k(x, N, 2, ids, lps), 2);
    CHECK_NEAR(lps[1], (float)((double)x[ids[1]] - got), 0);
}

/* core_sampler_sample_many (the server's per-step sampling, on core's pool) gives every row the
 * id that core_sampler_sample gives it alone, over a few steps of each sampler's random stream. */
TEST(sampler_sample_many_equals_one_by_one)
{
    enum { N = 5000, ROWS = 12, STEPS = 4 };
    static float x[ROWS][N];
    core_sampler *a[ROWS], *b[ROWS];
    for (int r = 0; r < ROWS; r++) {
        fill_logits(x[r], N, 100 + r);
        float t = r % 3 == 0 ? 0.0f : 0.8f;
        a[r] = make(t, r % 2 ? 40 : 0, 0.95f, 0.05f, 1.1f, (uint64_t)r, N);
        b[r] = make(t, r % 2 ? 40 : 0, 0.95f, 0.05f, 1.1f, (uint64_t)r, N);
        CHECK(a[r] && b[r]);
    }
    int32_t hist[ROWS][STEPS + 1] = {{0}};
    core_sample_req req[ROWS];
    for (int st = 0; st < STEPS; st++) {
        for (int r = 0; r < ROWS; r++)
            req[r] = (core_sample_req){
                .s = a[r], .logits = x[r], .history = hist[r], .n_history = (size_t)st};
        core_sampler_sample_many(req, ROWS);
        for (int r = 0; r < ROWS; r++) {
            int32_t want = core_sampler_sample(b[r], x[r], hist[r], (size_t)st, NULL);
            CHECK_MSG(req[r].id == want, "step %d row %d: %d vs %d", st, r, req[r].id, want);
            hist[r][st] = want;
        }
    }
    for (int r = 0; r < ROWS; r++) {
        core_sampler_free(a[r]);
        core_sampler_free(b[r]);
    }
}

/* A constraint allowing the ids that are multiples of ctx's modulus; counts mask calls. */
struct mod_con {
    int32_t mod, n_vocab;
    int masks;
    bool none; /* allow nothing */
};

static bool mod_allows(void *ctx, int32_t id)
{
    struct mod_con *c = ctx;
    return !c->none && id % c->mod == 0;
}

static int32_t mod_mask(void *ctx, uint64_t *bits)
{
    struct mod_con *c = ctx;
    int32_t n = 0;
    c->masks++;
    memset(bits, 0, ((size_t)c->n_vocab + 63) / 64 * sizeof *bits);
    for (int32_t i = 0; i < c->n_vocab && !c->none; i++)
        if (i % c->mod == 0) {
            bits[i >> 6] |= 1ULL << (i & 63);
            n++;
        }
    return n;
}

TEST(sampler_constraint_masks_and_stays_exact)
{
    enum { N = 300, DRAWS = 60000 };
    float x[N];
    fill_logits(x, N, 5);
    struct mod_con mc = {.mod = 3, .n_vocab = N};
    core_sampler_constraint con = {.ctx = &mc, .allows = mod_allows, .mask = mod_mask};
    /* greedy: the best allowed id; no mask when the argmax is allowed */
    core_sampler *g = make(0, 0, 1, 0, 1, 1, N);
    CHECK_EQ_INT(core_sampler_set_constraint(g, &con), 0);
    int32_t best = -1;
    for (int32_t i = 0; i < N; i += 3)
        if (best < 0 || x[i] > x[best])
            best = i;
    CHECK_EQ_INT(core_sampler_sample(g, x, NULL, 0, NULL), best);
    int masks = mc.masks;
    float y[N];
    memcpy(y, x, sizeof y);
    y[best] = 100; /* the argmax itself allowed: checked, not masked */
    CHECK_EQ_INT(core_sampler_sample(g, y, NULL, 0, NULL), best);
    CHECK_EQ_INT(mc.masks, masks);
    /* sampling: the empirical distribution is the masked softmax (draw-first path and the
     * mask-first path with top_k) */
    for (int variant = 0; variant < 2; variant++) {
        core_sampler *s = make(1, variant ? N / 2 : 0, 1, 0, 1, 42, N);
        CHECK_EQ_INT(core_sampler_set_constraint(s, &con), 0);
        static int hits[N];
        memset(hits, 0, sizeof hits);
        for (int d = 0; d < DRAWS; d++) {
            int32_t id = core_sampler_sample(s, x, NULL, 0, NULL);
            CHECK(id >= 0 && id % 3 == 0);
            if (id >= 0)
                hits[id]++;
        }
        /* expected: softmax over the allowed ids (within top-k for variant 1) */
        float kth = 0;
        if (variant) {
            float sorted[N];
            memcpy(sorted, x, sizeof sorted);
            for (int i = 0; i < N; i++) /* selection of the (N/2)-th largest, O(N^2) is fine */
                for (int j = i + 1; j < N; j++)
                    if (sorted[j] > sorted[i]) {
                        float t = sorted[i];
                        sorted[i] = sorted[j];
                        sorted[j] = t;
                    }
            kth = sorted[N / 2 - 1];
        }
        double z = 0, worst = 0;
        for (int32_t i = 0; i < N; i += 3)
            if (!variant || x[i] >= kth)
                z += exp(x[i]);
        for (int32_t i = 0; i < N; i++) {
            double p = (i % 3 == 0 && (!variant || x[i] >= kth)) ? exp(x[i]) / z : 0;
            double e = fabs(hits[i] / (double)DRAWS - p);
            if (e > worst)
                worst = e;
        }
        printf("    variant %d: max |empirical - masked softmax| = %.4f (tolerance 0.01)\n",
               variant, worst);
        CHECK(worst < 0.01);
        core_sampler_free(s);
    }
    /* nothing allowed: -1, for greedy and sampling */
    mc.none = true;
    CHECK_EQ_INT(core_sampler_sample(g, x, NULL, 0, NULL), -1);
    core_sampler *s = make(1, 0, 1, 0, 1, 7, N);
    core_sampler_set_constraint(s, &con);
    CHECK_EQ_INT(core_sampler_sample(s, x, NULL, 0, NULL), -1);
    /* cleared: free sampling again */
    CHECK_EQ_INT(core_sampler_set_constraint(s, NULL), 0);
    CHECK(core_sampler_sample(s, x, NULL, 0, NULL) >= 0);
    core_sampler_free(s);
    core_sampler_free(g);
}
