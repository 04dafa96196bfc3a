/* Token sampler: repetition penalty, greedy, top-k / temperature / top-p / min-p, and a seeded
 * xoshiro256** RNG.
 *
 * The sampler owns one allocation sized for the vocabulary: a working copy of the logits (the
 * caller's row is never written), the probabilities, a list of kept tokens and a byte map used
 * while applying the penalty. A call streams over the vocabulary a few times in vectorizable
 * loops and never sorts all of it: top-k up to HEAP_MAX_K uses a k-entry heap, larger k a
 * radix select; top-p gathers the tokens above a probability threshold when those already hold
 * top_p of the mass (at most 1/threshold of them), a histogram of their mass by probability
 * bucket places the cut, and only the tokens of the bucket it falls in get sorted.
 */
#include "core/model/sampler.h"
#include "core/base.h"
#include "core/kernels/pool_internal.h"
#include "core/text/grammar.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Loops over the vocabulary work in blocks of LANES independent lanes with fixed trip counts,
 * which GCC and Clang vectorize at -O2 without -ffast-math (lane order is fixed, so results are
 * reproducible); sums of BLOCK probabilities are kept so a draw walks blocks, then one block. */
#define LANES 8
#define BLOCK 256
/* Top-k up to this size selects with a heap; larger k finds the k-th logit by radix select. */
#define HEAP_MAX_K 256
/* Probability buckets for top-p: float bits >> 20 of a positive float. */
#define N_BUCKETS 2048

/* One kept token: v is its unnormalized probability exp((x - x_max) / T). */
struct cand {
    float v;
    int32_t id;
};

struct core_sampler {
    core_sampler_params p;
    int32_t n_vocab;
    uint64_t rng[4];     /* xoshiro256** state */
    struct cand *cand;   /* (n_vocab) kept tokens once a filter made a list */
    float *work;         /* (n_vocab) cleaned, penalized copy of the logits */
    float *prob;         /* (n_vocab) unnormalized probabilities */
    float *bsum;         /* (n_vocab / BLOCK rounded up) sums of prob per block */
    int32_t *heap;       /* (HEAP_MAX_K) top-k selection */
    unsigned char *seen; /* (n_vocab) distinct-token marks; all zero between calls */
    int32_t *count;      /* (n_vocab) with presence / frequency penalties: occurrences among
                            the generated tokens; all zero between calls. NULL otherwise */
    /* Request-given edits, applied first; a sampler without them pays one test each. */
    int32_t *bias_id; /* (n_bias) */
    float *bias;      /* (n_bias) */
    int n_bias;
    int32_t *ban_id; /* (n_ban) */
    int n_ban;
    core_sampler_constraint con; /* con.mask NULL: none */
    uint64_t *allowed;           /* ((n_vocab + 63) / 64) the constraint's mask */
    /* Top-p histogram: probability mass per bucket (prob_bucket). */
    double bucket_mass[N_BUCKETS];
};

/* NaN and +inf mean something upstream overflowed; such a token must not win, so it is -inf.
 * One comparison, false for both, so loops over it vectorize. */
static inline float clean(float x)
{
    return x < INFINITY ? x : -INFINITY;
}

/* exp(x) for x <= 0, within 1 ulp of expf, and exactly 0 below about -87.7 and for -inf:
 * Cephes' expf polynomial after a Cody-Waite reduction. No calls and no float compare, so loops
 * over it vectorize without -ffast-math (glibc's expf costs about 5 ns a token here). The clamp
 * is an unsigned min on the bits (negative floats order by their bits): x below -88 becomes
 * -88, whose 2^n scale has a zero exponent field, i.e. is 0. */
static inline float exp_neg(float x)
{
    union {
        float f;
        uint32_t u;
    } c = {x};
    /* max(x, -88) as an unsigned min on the bits; 0xC2B00000 is -88.0f */
    c.u = c.u < 0xC2B00000u ? c.u : 0xC2B00000u;
    float n = (c.f * 1.44269504f + 12582912.0f) - 12582912.0f; /* round(x / ln 2), >= -127 */
    float r = c.f - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union {
        int32_t i;
        float f;
    } scale = {((int32_t)n + 127) * (1 << 23)}; /* 2^n, or 0 for n = -127 */
    return p * scale.f;
}

/* --- RNG: xoshiro256** (Blackman & Vigna), seeded through splitmix64 ------------------------- */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(uint64_t *s)
{
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* Uniform in [0, 1) with 53 random bits. */
static double rng_uniform(uint64_t *s)
{
    return (double)(rng_next(s) >> 11) * 0x1.0p-53;
}

/* --- parameters and lifetime ----------------------------------------------------------------- */

void core_sampler_params_default(core_sampler_params *p)
{
    p->temperature = 1.0f;
    p->top_k = 0;
    p->top_p = 1.0f;
    p->min_p = 0.0f;
    p->repeat_penalty = 1.0f;
    p->repeat_last_n = 64;
    p->seed = 0;
    p->presence_penalty = 0.0f;
    p->frequency_penalty = 0.0f;
    p->count_from = 0;
}

static int params_check(const core_sampler_params *p, int32_t n_vocab, char *err, size_t errlen)
{
    if (n_vocab <= 0) {
        core_errf(err, errlen, "n_vocab must be > 0 (got %d)", (int)n_vocab);
        return -EINVAL;
    }
    if (!isfinite(p->temperature) || p->temperature < 0) {
        core_errf(err, errlen, "temperature must be finite and >= 0, 0 = greedy (got %g)",
                  (double)p->temperature);
        return -EINVAL;
    }
    if (p->top_k < 0) {
        core_errf(err, errlen, "top_k must be >= 0, 0 = off (got %d)", p->top_k);
        return -EINVAL;
    }
    if (!(p->top_p > 0 && p->top_p <= 1)) {
        core_errf(err, errlen, "top_p must be in (0, 1], 1 = off (got %g)", (double)p->top_p);
        return -EINVAL;
    }
    if (!(p->min_p >= 0 && p->min_p <= 1)) {
        core_errf(err, errlen, "min_p must be in [0, 1], 0 = off (got %g)", (double)p->min_p);
        return -EINVAL;
    }
    if (!isfinite(p->repeat_penalty) || !(p->repeat_penalty > 0)) {
        core_errf(err, errlen, "repeat_penalty must be finite and > 0, 1 = off (got %g)",
                  (double)p->repeat_penalty);
        return -EINVAL;
    }
    if (p->repeat_last_n < 0) {
        core_errf(err, errlen, "repeat_last_n must be >= 0, 0 = whole history (got %d)",
                  p->repeat_last_n);
        return -EINVAL;
    }
    if (!(p->presence_penalty >= -2 && p->presence_penalty <= 2)) {
        core_errf(err, errlen, "presence_penalty must be in [-2, 2], 0 = off (got %g)",
                  (double)p->presence_penalty);
        return -EINVAL;
    }
    if (!(p->frequency_penalty >= -2 && p->frequency_penalty <= 2)) {
        core_errf(err, errlen, "frequency_penalty must be in [-2, 2], 0 = off (got %g)",
                  (double)p->frequency_penalty);
        return -EINVAL;
    }
    return 0;
}

core_sampler *core_sampler_new(const core_sampler_params *p, int32_t n_vocab, char *err,
                               size_t errlen)
{
    core_sampler_params def;
    if (!p) {
        core_sampler_params_default(&def);
        p = &def;
    }
    if (params_check(p, n_vocab, err, errlen) < 0)
        return NULL;

    /* One block: the struct, then the arrays, all 4-byte aligned, the bytes last. */
    size_t n = (size_t)n_vocab, n_blocks = (n + BLOCK - 1) / BLOCK;
    size_t per_token = sizeof(struct cand) + 2 * sizeof(float) + 1;
    size_t fixed = sizeof(core_sampler) + n_blocks * sizeof(float) + HEAP_MAX_K * sizeof(int32_t);
    if (n > (SIZE_MAX - fixed) / per_token) {
        core_errf(err, errlen, "n_vocab %d is too large", (int)n_vocab);
        return NULL;
    }
    core_sampler *s = calloc(1, fixed + n * per_token);
    if (!s) {
        core_errf(err, errlen, "out of memory for a sampler over %d tokens", (int)n_vocab);
        return NULL;
    }
    s->p = *p;
    s->n_vocab = n_vocab;
    s->cand = (struct cand *)(s + 1);
    s->work = (float *)(s->cand + n);
    s->prob = s->work + n;
    s->bsum = s->prob + n;
    s->heap = (int32_t *)(s->bsum + n_blocks);
    s->seen = (unsigned char *)(s->heap + HEAP_MAX_K);
    if (p->presence_penalty != 0 || p->frequency_penalty != 0) {
        s->count = calloc(n, sizeof(int32_t));
        if (!s->count) {
            free(s);
            core_errf(err, errlen, "out of memory for a sampler over %d tokens", (int)n_vocab);
            return NULL;
        }
    }
    core_sampler_reset(s, p->seed);
    return s;
}

void core_sampler_free(core_sampler *s)
{
    if (!s)
        return;
    free(s->count);
    free(s->bias_id);
    free(s->bias);
    free(s->ban_id);
    free(s->allowed);
    free(s);
}

int core_sampler_set_bias(core_sampler *s, const int32_t *ids, const float *bias, int n)
{
    if (n < 0)
        return -EINVAL;
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= s->n_vocab || !(bias[i] < INFINITY))
            return -EINVAL;
    int32_t *ni = NULL;
    float *nb = NULL;
    if (n > 0) {
        ni = malloc((size_t)n * sizeof(*ni));
        nb = malloc((size_t)n * sizeof(*nb));
        if (!ni || !nb) {
            free(ni);
            free(nb);
            return -ENOMEM;
        }
        memcpy(ni, ids, (size_t)n * sizeof(*ni));
        memcpy(nb, bias, (size_t)n * sizeof(*nb));
    }
    free(s->bias_id);
    free(s->bias);
    s->bias_id = ni;
    s->bias = nb;
    s->n_bias = n;
    return 0;
}

int core_sampler_set_constraint(core_sampler *s, const core_sampler_constraint *c)
{
    if (!c || !c->mask || !c->allows) {
        s->con = (core_sampler_constraint){0};
        return 0;
    }
    if (!s->allowed && !(s->allowed = malloc(((size_t)s->n_vocab + 63) / 64 * sizeof(uint64_t))))
        return -ENOMEM;
    s->con = *c;
    return 0;
}

static bool gmatch_allows(void *ctx, int32_t id)
{
    return core_gmatch_allows(ctx, id);
}

static int32_t gmatch_mask(void *ctx, uint64_t *bits)
{
    return core_gmatch_mask(ctx, bits);
}

int core_sampler_set_grammar(core_sampler *s, core_gmatch *m)
{
    core_sampler_constraint c = {.ctx = m, .allows = gmatch_allows, .mask = gmatch_mask};
    return core_sampler_set_constraint(s, m ? &c : NULL);
}

int core_sampler_set_banned(core_sampler *s, const int32_t *ids, int n)
{
    if (n < 0)
        return -EINVAL;
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= s->n_vocab)
            return -EINVAL;
    int32_t *ni = NULL;
    if (n > 0) {
        if (!(ni = malloc((size_t)n * sizeof(*ni))))
            return -ENOMEM;
        memcpy(ni, ids, (size_t)n * sizeof(*ni));
    }
    free(s->ban_id);
    s->ban_id = ni;
    s->n_ban = n;
    return 0;
}

void core_sampler_reset(core_sampler *s, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++)
        s->rng[i] = splitmix64(&x);
}

/* --- passes over the vocabulary -------------------------------------------------------------- */

/* Largest cleaned value of x[0..n); -inf when none is finite. */
static float max_of(const float *x, int32_t n)
{
    float lane[LANES];
    for (int j = 0; j < LANES; j++)
        lane[j] = -INFINITY;
    int32_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) {
            float v = clean(x[i + j]);
            lane[j] = v > lane[j] ? v : lane[j];
        }
    float mx = -INFINITY;
    for (int j = 0; j < LANES; j++)
        mx = lane[j] > mx ? lane[j] : mx;
    for (; i < n; i++)
        mx = clean(x[i]) > mx ? clean(x[i]) : mx;
    return mx;
}

/* sum of exp(clean(x) - xmax) over x[0..n); xmax must be finite and >= every value. The lanes
 * add in double: in float, 49152 terms drifted by ~1e-5 of the sum (logprobs off by as much). */
static double sum_exp(const float *x, int32_t n, float xmax)
{
    double lane[LANES] = {0};
    int32_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++)
            lane[j] += exp_neg(clean(x[i + j]) - xmax);
    double sum = 0;
    for (int j = 0; j < LANES; j++)
        sum += lane[j];
    for (; i < n; i++)
        sum += exp_neg(clean(x[i]) - xmax);
    return sum;
}

/* log(sum(exp(x))) over the cleaned values; -inf when none is finite. */
double core_logits_log_sum_exp(const float *x, int32_t n)
{
    float mx = max_of(x, n);
    if (mx == -INFINITY)
        return -INFINITY;
    return (double)mx + log(sum_exp(x, n, mx));
}

/* prob[i] = exp((x[i] - xmax) / T) over n tokens (0 for -inf), bsum[b] the sum of block b.
 * Returns the total, the sum of bsum in order. */
static double exp_pass(const float *restrict x, float *restrict prob, float *restrict bsum,
                       int32_t n, float xmax, float inv_t)
{
    double total = 0;
    for (int32_t b0 = 0, b = 0; b0 < n; b0 += BLOCK, b++) {
        int32_t len = n - b0 < BLOCK ? n - b0 : BLOCK, i = 0;
        float lane[LANES] = {0};
        for (; i + LANES <= len; i += LANES)
            for (int j = 0; j < LANES; j++) {
                float e = exp_neg((x[b0 + i + j] - xmax) * inv_t);
                prob[b0 + i + j] = e;
                lane[j] += e;
            }
        float sum = 0;
        for (int j = 0; j < LANES; j++)
            sum += lane[j];
        for (; i < len; i++) {
            prob[b0 + i] = exp_neg((x[b0 + i] - xmax) * inv_t);
            sum += prob[b0 + i];
        }
        bsum[b] = sum;
        total += sum;
    }
    return total;
}

/* dst = clean(src) over n floats. */
static void clean_copy(float *restrict dst, const float *restrict src, int32_t n)
{
    int32_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++)
            dst[i + j] = clean(src[i + j]);
    for (; i < n; i++)
        dst[i] = clean(src[i]);
}

/* --- selection ------------------------------------------------------------------------------- */

/* Total order "a is more likely than b": higher cleaned logit, ties to the lower id. */
static inline int id_better(const float *v, int32_t a, int32_t b)
{
    float x = clean(v[a]), y = clean(v[b]);
    return x > y || (x == y && a < b);
}

/* h is a heap whose root is the least likely entry. */
static void heap_sift_down(const float *v, int32_t *h, int i, int m)
{
    for (;;) {
        int worst = i, l = 2 * i + 1, r = l + 1;
        if (l < m && id_better(v, h[worst], h[l]))
            worst = l;
        if (r < m && id_better(v, h[worst], h[r]))
            worst = r;
        if (worst == i)
            return;
        int32_t t = h[i];
        h[i] = h[worst];
        h[worst] = t;
        i = worst;
    }
}

static void heap_sift_up(const float *v, int32_t *h, int i)
{
    while (i > 0) {
        int parent = (i - 1) / 2;
        if (!id_better(v, h[parent], h[i]))
            return;
        int32_t t = h[i];
        h[i] = h[parent];
        h[parent] = t;
        i = parent;
    }
}

/* Writes the (at most) k most likely ids of v[0..n) to out, most likely first, skipping -inf
 * (and NaN, +inf). Returns how many. O(n log k); the scan itself is one compare per token. */
static int select_top_k(const float *v, int32_t n, int k, int32_t *out)
{
    int m = 0;
    float root = -INFINITY; /* logit of the least likely kept entry once the heap is full */
    for (int32_t i = 0; i < n; i++) {
        float x = clean(v[i]);
        if (x == -INFINITY)
            continue;
        if (m < k) {
            out[m] = i;
            heap_sift_up(v, out, m);
            m++;
            if (m == k)
                root = clean(v[out[0]]);
        } else if (x > root) { /* an equal logit has a higher id: the kept one wins */
            out[0] = i;
            heap_sift_down(v, out, 0, m);
            root = clean(v[out[0]]);
        }
    }
    /* Repeatedly move the least likely to the end: the array ends most likely first. */
    for (int end = m - 1; end > 0; end--) {
        int32_t t = out[0];
        out[0] = out[end];
        out[end] = t;
        heap_sift_down(v, out, 0, end);
    }
    return m;
}

/* Unsigned key ordered like the float (-0 and +0 are one value). */
static inline uint32_t float_key(float x)
{
    union {
        float f;
        uint32_t u;
    } c = {x + 0.0f};
    return (c.u & 0x80000000u) ? ~c.u : (c.u | 0x80000000u);
}

/* Top-k for large k: sets every logit outside the k most likely (ties to the lower ids) to
 * -inf. A radix select finds the k-th largest key 11, 11, then 10 bits at a time: each pass
 * counts the finite logits that share the digits found so far, and the walk from the top digit
 * down finds the one holding the k-th. Four passes, no data-dependent branches to mispredict
 * (a quickselect on this took ten times as long). */
static void mask_beyond_top_k(core_sampler *s, int32_t k)
{
    static const int shift[3] = {21, 10, 0}, width[3] = {11, 11, 10};
    float *w = s->work;
    int32_t n = s->n_vocab;
    uint32_t hist[1 << 11], prefix = 0, known = 0; /* digits found, and which bits they cover */
    int64_t need = k;
    for (int level = 0; level < 3; level++) {
        uint32_t digits = (1u << width[level]) - 1;
        memset(hist, 0, sizeof(hist));
        for (int32_t i = 0; i < n; i++) {
            uint32_t key = float_key(w[i]);
            if (w[i] != -INFINITY && (key & known) == prefix)
                hist[(key >> shift[level]) & digits]++;
        }
        if (level == 0) {
            int64_t finite = 0;
            for (uint32_t d = 0; d <= digits; d++)
                finite += hist[d];
            if (k >= finite)
                return;
        }
        uint32_t d = digits;
        while (d > 0 && hist[d] < need)
            need -= hist[d--];
        prefix |= d << shift[level];
        known |= digits << shift[level];
    }
    /* prefix is now the key of the k-th largest; keep `need` of the tokens equal to it. */
    for (int32_t i = 0; i < n; i++) {
        uint32_t key = float_key(w[i]);
        if (key > prefix)
            continue;
        if (key == prefix && need > 0 && w[i] != -INFINITY)
            need--;
        else
            w[i] = -INFINITY;
    }
}

static int cand_cmp_desc(const void *pa, const void *pb)
{
    const struct cand *a = pa, *b = pb;
    if (a->v != b->v)
        return a->v > b->v ? -1 : 1;
    return (a->id > b->id) - (a->id < b->id);
}

/* Length of the shortest prefix of c[0..n) (most likely first) holding target of the mass;
 * n when rounding keeps the walk just short of it. */
static int32_t nucleus_prefix(const struct cand *c, int32_t n, double target)
{
    double acc = 0;
    for (int32_t i = 0; i < n; i++) {
        acc += c[i].v;
        if (acc >= target)
            return i + 1;
    }
    return n;
}

/* Bucket of a positive probability: its exponent and top three mantissa bits, so buckets are
 * ordered like the values and each spans a factor 2^(1/8). */
static inline uint32_t prob_bucket(float v)
{
    union {
        float f;
        uint32_t u;
    } c = {v};
    return c.u >> 20;
}

/* Top-p on an unsorted list c[0..m) of positive probabilities: moves the nucleus, the fewest
 * most likely tokens holding target of the mass (ties to the lower ids), to the front and
 * returns its size (the whole list when rounding keeps the mass just short). Without sorting:
 * a histogram of mass per bucket finds the bucket where the running mass crosses target;
 * everything above it is in, and only that one bucket is sorted to place the cut. */
static int32_t nucleus_select(core_sampler *s, int32_t m, double target)
{
    struct cand *c = s->cand;
    double *mass = s->bucket_mass;
    memset(mass, 0, N_BUCKETS * sizeof(*mass));
    for (int32_t i = 0; i < m; i++)
        mass[prob_bucket(c[i].v)] += c[i].v;
    double above = 0;
    int32_t edge = N_BUCKETS - 1;
    while (edge > 0 && above + mass[edge] < target)
        above += mass[edge--];
    /* Partition: buckets above the edge, then the edge bucket, then the rest. */
    int32_t n_above = 0, n_edge;
    for (int32_t i = 0; i < m; i++) {
        if ((int32_t)prob_bucket(c[i].v) > edge) {
            struct cand t = c[n_above];
            c[n_above++] = c[i];
            c[i] = t;
        }
    }
    n_edge = n_above;
    for (int32_t i = n_above; i < m; i++) {
        if ((int32_t)prob_bucket(c[i].v) == edge) {
            struct cand t = c[n_edge];
            c[n_edge++] = c[i];
            c[i] = t;
        }
    }
    qsort(c + n_above, (size_t)(n_edge - n_above), sizeof(*c), cand_cmp_desc);
    for (int32_t i = n_above; i < n_edge; i++) {
        above += c[i].v;
        if (above >= target)
            return i + 1;
    }
    return m;
}

/* Top-p over the whole vocabulary (prob, summing to total): leaves the nucleus in s->cand and
 * returns its size. Usually the tokens with probability >= 1e-3 (at most 1000 of them) already
 * hold top_p of the mass, and, being a prefix of the sorted order, contain the nucleus: only
 * they are gathered. Otherwise every token is. */
static int32_t nucleus_from_vocab(core_sampler *s, double total)
{
    static const float rel[] = {1e-3f, 0.0f};
    double target = s->p.top_p * total;
    int32_t m = 0;
    for (size_t r = 0; r < sizeof(rel) / sizeof(rel[0]); r++) {
        float thr = (float)(rel[r] * total);
        double part = 0;
        m = 0;
        for (int32_t i = 0; i < s->n_vocab; i++) {
            if (s->prob[i] >= thr && s->prob[i] > 0) {
                s->cand[m].v = s->prob[i];
                s->cand[m++].id = i;
                part += s->prob[i];
            }
        }
        if (part >= target || rel[r] == 0)
            break;
    }
    return nucleus_select(s, m, target);
}

/* --- sampling -------------------------------------------------------------------------------- */

/* Applies the repetition penalty to s->work; returns how many tokens it changed. */
static int32_t apply_penalty(core_sampler *s, const int32_t *history, size_t n_history)
{
    float pen = s->p.repeat_penalty;
    int32_t changed = 0;
    if (pen == 1.0f || !history || n_history == 0)
        return 0;
    size_t last = (size_t)s->p.repeat_last_n;
    size_t start = (last > 0 && n_history > last) ? n_history - last : 0;
    for (size_t i = start; i < n_history; i++) {
        int32_t t = history[i];
        if (t < 0 || t >= s->n_vocab || s->seen[t])
            continue;
        s->seen[t] = 1;
        float x = s->work[t];
        s->work[t] = x > 0 ? x / pen : x * pen;
        changed++;
    }
    for (size_t i = start; i < n_history; i++) {
        int32_t t = history[i];
        if (t >= 0 && t < s->n_vocab)
            s->seen[t] = 0;
    }
    return changed;
}

/* Logit bias, bans, then OpenAI's presence and frequency penalties over the generated tokens
 * (history[count_from..]) on s->work; returns how many edits were made. Each costs a test when
 * unused. Bias adds before a ban so a ban wins. */
static int32_t apply_edits(core_sampler *s, const int32_t *history, size_t n_history)
{
    int32_t changed = 0;
    for (int i = 0; i < s->n_bias; i++)
        s->work[s->bias_id[i]] = clean(s->work[s->bias_id[i]] + s->bias[i]);
    for (int i = 0; i < s->n_ban; i++)
        s->work[s->ban_id[i]] = -INFINITY;
    changed += s->n_bias + s->n_ban;
    if (!s->count || !history || n_history <= s->p.count_from)
        return changed;
    for (size_t i = s->p.count_from; i < n_history; i++)
        if (history[i] >= 0 && history[i] < s->n_vocab)
            s->count[history[i]]++;
    float fp = s->p.frequency_penalty, pp = s->p.presence_penalty;
    for (size_t i = s->p.count_from; i < n_history; i++) {
        int32_t t = history[i];
        if (t < 0 || t >= s->n_vocab || s->count[t] == 0)
            continue;
        s->work[t] -= (float)s->count[t] * fp + pp; /* -inf stays -inf */
        s->count[t] = 0;
        changed++;
    }
    return changed;
}

/* Argmax of the penalized logits, ties to the lowest id; the logprob is that of the input row
 * (when no penalty applied, the work row is the cleaned input and its max is already known). */
static int32_t sample_greedy(core_sampler *s, const float *logits, int penalized,
                             float *logprob_out)
{
    float mx = max_of(s->work, s->n_vocab);
    int32_t best = -1;
    if (mx != -INFINITY)
        for (best = 0; s->work[best] != mx; best++)
            ;
    if (!logprob_out)
        return best;
    if (best < 0)
        *logprob_out = -INFINITY;
    else if (!penalized) /* work is the cleaned input and best its max */
        *logprob_out = (float)-log(sum_exp(s->work, s->n_vocab, mx));
    else
        *logprob_out = (float)((double)logits[best] - core_logits_log_sum_exp(logits, s->n_vocab));
    return best;
}

/* Last step on a list of kept tokens (s->cand[0..nc), unnormalized probabilities summing to
 * sum): min-p, then one draw. p_max is 1 in these units (the most likely token has
 * exp(0)) and is always kept, so the min-p cut is min_p itself. */
static int32_t draw_from_list(core_sampler *s, int32_t nc, double sum, float xmax, float inv_t,
                              float *logprob_out)
{
    struct cand *c = s->cand;
    if (s->p.min_p > 0) {
        int32_t m = 0;
        sum = 0;
        for (int32_t i = 0; i < nc; i++) {
            if (c[i].v >= s->p.min_p) {
                c[m++] = c[i];
                sum += c[i].v;
            }
        }
        nc = m;
    }
    /* The walk adds in the same order as sum, so it passes u before the end; the fallback
     * only guards against a zero-probability pick. */
    double u = rng_uniform(s->rng) * sum, acc = 0;
    int32_t pick = -1;
    for (int32_t i = 0; i < nc && pick < 0; i++) {
        acc += c[i].v;
        if (u < acc)
            pick = c[i].id;
    }
    for (int32_t i = nc - 1; pick < 0 && i >= 0; i--)
        if (c[i].v > 0)
            pick = c[i].id;
    if (pick < 0)
        return -1; /* not reached: the most likely token always has v = 1 */
    if (logprob_out)
        *logprob_out = (float)((double)((s->work[pick] - xmax) * inv_t) - log(sum));
    return pick;
}

/* One draw from the unfiltered vocabulary: walk the block sums, then the one block. */
static int32_t draw_from_vocab(core_sampler *s, double total, float xmax, float inv_t,
                               float *logprob_out)
{
    double u = rng_uniform(s->rng) * total, acc = 0;
    int32_t pick = -1, n = s->n_vocab;
    for (int32_t b0 = 0, b = 0; b0 < n && pick < 0; b0 += BLOCK, b++) {
        if (!(u < acc + s->bsum[b]) && b0 + BLOCK < n) {
            acc += s->bsum[b];
            continue;
        }
        int32_t end = b0 + BLOCK < n ? b0 + BLOCK : n;
        for (int32_t i = b0; i < end && pick < 0; i++) {
            acc += s->prob[i];
            if (u < acc)
                pick = i;
        }
        /* The block was summed in lanes, the walk in order: rounding may leave u unreached. */
        for (int32_t i = end - 1; pick < 0 && i >= b0; i--)
            if (s->prob[i] > 0)
                pick = i;
    }
    if (pick < 0)
        return -1; /* not reached: u < total puts it in a block with mass */
    if (logprob_out)
        *logprob_out = (float)((double)((s->work[pick] - xmax) * inv_t) - log(total));
    return pick;
}

/* Small top-k: the heap gives the k tokens sorted, so top-p is a walk over k entries. */
static int32_t sample_small_top_k(core_sampler *s, float inv_t, float *logprob_out)
{
    int32_t nc = select_top_k(s->work, s->n_vocab, s->p.top_k, s->heap);
    if (nc == 0)
        return -1;
    float xmax = s->work[s->heap[0]];
    double sum = 0;
    for (int32_t i = 0; i < nc; i++) {
        s->cand[i].id = s->heap[i];
        s->cand[i].v = exp_neg((s->work[s->heap[i]] - xmax) * inv_t);
        sum += s->cand[i].v;
    }
    if (s->p.top_p < 1.0f) {
        int32_t keep = nucleus_prefix(s->cand, nc, s->p.top_p * sum);
        if (keep < nc) {
            nc = keep;
            sum = 0;
            for (int32_t i = 0; i < nc; i++)
                sum += s->cand[i].v;
        }
    }
    return draw_from_list(s, nc, sum, xmax, inv_t, logprob_out);
}

/* Everything else: (large top-k as a mask), softmax over the vocabulary, then top-p and min-p
 * make a list when set, else the draw walks the vocabulary. */
static int32_t sample_vocab(core_sampler *s, float inv_t, float *logprob_out)
{
    if (s->p.top_k > 0 && s->p.top_k < s->n_vocab)
        mask_beyond_top_k(s, s->p.top_k);
    float xmax = max_of(s->work, s->n_vocab);
    if (xmax == -INFINITY)
        return -1;
    double total = exp_pass(s->work, s->prob, s->bsum, s->n_vocab, xmax, inv_t);
    if (s->p.top_p < 1.0f) {
        int32_t nc = nucleus_from_vocab(s, total);
        double sum = 0;
        for (int32_t i = 0; i < nc; i++)
            sum += s->cand[i].v;
        return draw_from_list(s, nc, sum, xmax, inv_t, logprob_out);
    }
    if (s->p.min_p > 0) {
        int32_t nc = 0;
        double sum = 0;
        for (int32_t i = 0; i < s->n_vocab; i++) {
            if (s->prob[i] >= s->p.min_p) {
                s->cand[nc].v = s->prob[i];
                s->cand[nc++].id = i;
                sum += s->prob[i];
            }
        }
        return draw_from_list(s, nc, sum, xmax, inv_t, logprob_out);
    }
    return draw_from_vocab(s, total, xmax, inv_t, logprob_out);
}

/* Sets every token the constraint does not allow to -inf in s->work; the number allowed, 0 when
 * none is (or no memory). */
static int32_t apply_constraint(core_sampler *s)
{
    int32_t count = s->con.mask(s->con.ctx, s->allowed);
    if (count <= 0)
        return 0;
    for (int32_t i = 0; i < s->n_vocab; i++)
        if (!((s->allowed[i >> 6] >> (i & 63)) & 1))
            s->work[i] = -INFINITY;
    return count;
}

static int32_t draw(core_sampler *s, float *logprob_out)
{
    float inv_t = 1.0f / s->p.temperature;
    if (s->p.top_k > 0 && s->p.top_k <= HEAP_MAX_K && s->p.top_k < s->n_vocab)
        return sample_small_top_k(s, inv_t, logprob_out);
    return sample_vocab(s, inv_t, logprob_out);
}

/* Sampling under a constraint (see core_sampler_set_constraint for the order). */
static int32_t sample_constrained(core_sampler *s, const float *logits, int32_t penalized,
                                  float *logprob_out)
{
    int32_t pick;
    if (s->p.temperature == 0) {
        pick = sample_greedy(s, logits, penalized > 0, logprob_out);
        if (pick >= 0 && s->con.allows(s->con.ctx, pick))
            return pick;
        return apply_constraint(s) ? sample_greedy(s, logits, 1, logprob_out) : -1;
    }
    bool filters =
        (s->p.top_k > 0 && s->p.top_k < s->n_vocab) || s->p.top_p < 1.0f || s->p.min_p > 0;
    if (!filters) {
        pick = draw(s, logprob_out);
        if (pick >= 0 && s->con.allows(s->con.ctx, pick))
            return pick;
    }
    return apply_constraint(s) ? draw(s, logprob_out) : -1;
}

int32_t core_sampler_sample(core_sampler *s, const float *logits, const int32_t *history,
                            size_t n_history, float *logprob_out)
{
    clean_copy(s->work, logits, s->n_vocab);
    int32_t penalized = apply_edits(s, history, n_history);
    penalized += apply_penalty(s, history, n_history);

    int32_t pick;
    if (s->con.mask)
        pick = sample_constrained(s, logits, penalized, logprob_out);
    else if (s->p.temperature == 0)
        return sample_greedy(s, logits, penalized > 0, logprob_out);
    else
        pick = draw(s, logprob_out);
    if (pick < 0 && logprob_out)
        *logprob_out = -INFINITY;
    return pick;
}

int core_logits_top_k(const float *logits, int32_t n_vocab, int k, int32_t *ids, float *logprobs)
{
    if (n_vocab <= 0 || k < 0)
        return -EINVAL;
    if (k > n_vocab)
        k = n_vocab;
    if (k == 0)
        return 0;
    int m = select_top_k(logits, n_vocab, k, ids);
    if (logprobs && m > 0) {
        double lse = core_logits_log_sum_exp(logits, n_vocab);
        for (int i = 0; i < m; i++)
            logprobs[i] = (float)((double)logits[ids[i]] - lse);
    }
    return m;
}

static void sample_task(void *arg, int t)
{
    core_sample_req *r = (core_sample_req *)arg + t;
    r->id = core_sampler_sample(r->s, r->logits, r->history, r->n_history, NULL);
}

void core_sampler_sample_many(core_sample_req *reqs, int n)
{
    core__pool_run(n, sample_task, reqs);
}
