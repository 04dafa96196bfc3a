/* The batched forward pass of Llama, Qwen2, Qwen3 and Gemma 3 (docs/ARCHITECTURE.md §3,
 * docs/FORMATS.md §8, §2.7).
 *
 * A step takes rows, not sequences: every linear layer is one sgemm over all rows (the shared
 * base matmul), followed by the LoRA groups of the plan, each a gather / shrink / scale /
 * expand / scatter-add over the rows that use that adapter. A step of few rows is bound by
 * reading the weights, so it reads the GGUF's quantized rows instead of the f32 slab (qmatmul.h).
 * Attention runs per row against its sequence's KV cache. All math is f32 and follows Hugging
 * Face's order of operations so that the logits match transformers to ~1e-5.
 */
#include <cblas.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base.h"
#include "core/kernels/attention_internal.h"
#include "core/kernels/dequant.h"
#include "core/kernels/lora_internal.h"
#include "core/kernels/pool_internal.h"
#include "core/kernels/qmatmul_internal.h"
#include "core/kernels/qmatmul_q8_internal.h"
#include "core/model/kv_internal.h"
#include "core/model/model.h"

#define MAX_LORA_RANK CORE_LORA_MAX_RANK
/* Bytes of the next group's A and of its Bt prefetched while a group computes. */
#define LORA_PREFETCH 4096
/* The scratch of a step is one allocation, laid out by lay_out() from the batch and the plan
 * before the step runs: the row buffers, the attention scores of each pool task, the plan's
 * index, the LoRA kernels' scratch of each task and the int8 copy of X. It only grows, so after
 * the first steps of the longest batch a step allocates nothing; and a step that cannot have its
 * memory fails before it has touched the caches. Nothing in it outlives a step. */
struct core_ctx {
    const core_model *m;
    float *inv_freq;     /* (head_dim / 2), for the context's life */
    float *inv_freq_swa; /* (head_dim / 2) of the sliding-window layers' base, or NULL */
    char *arena;         /* the step's scratch, 64-byte aligned regions */
    size_t arena_cap;
    /* regions of the arena, set by lay_out for the current step */
    float *x;                     /* (rows, n_embd) residual stream */
    float *xn;                    /* (rows, max(n_embd, q_dim)) normed input of a linear */
    float *q;                     /* (rows, q_dim) */
    float *k;                     /* (rows, kv_dim) */
    float *v;                     /* (rows, kv_dim) */
    float *att;                   /* (rows, q_dim) */
    float *gate;                  /* (rows, n_ff) */
    float *up;                    /* (rows, n_ff) */
    float *tmp;                   /* (rows, n_embd) */
    float *rope_cs;               /* (rows, head_dim) cos, sin of each row's angles */
    float *rope_cs_swa;           /* (rows, head_dim) the same for the sliding-window layers */
    float *scores[CORE_POOL_MAX]; /* (CORE_ATT_CHUNK keys, heads per KV head) per pool task */
    /* chunked attention (core__attend_chunk): each task's chunks of the row it attends whole,
     * and the chunks of the rows split over the tasks (fewer rows than tasks, one buffer a row),
     * each (most chunks, q_dim) outputs then (most chunks, 2 * n_head) maxima and sums */
    float *chunks[CORE_POOL_MAX];
    float *split_chunks[CORE_POOL_MAX];
    int *slot_n;    /* (n_slots) positions filled, simulated during validation */
    int *grp_order; /* (n_groups) group indices sorted by (layer, module) */
    int *grp_start; /* (n_layer * CORE_MOD_COUNT + 1) */
    int *grp_fill;  /* (n_layer * CORE_MOD_COUNT) placement cursors of the counting sort */
    /* LoRA groups, per pool task: kernel scratch and the task's share of a group's rows */
    float *ls[CORE_POOL_MAX];
    int32_t *lrows[CORE_POOL_MAX];
    float *lscales[CORE_POOL_MAX];
    uint8_t *xq; /* (rows, core__q8x_row_bytes(widest input)) X quantized for the int8 kernels */
};

core_ctx *core_ctx_new(const core_model *m)
{
    core_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->m = m;
    int half = m->cfg.head_dim / 2;
    bool swa = m->cfg.sliding_window > 0;
    c->inv_freq = malloc((size_t)half * sizeof(float));
    c->inv_freq_swa = swa ? malloc((size_t)half * sizeof(float)) : NULL;
    if (!c->inv_freq || (swa && !c->inv_freq_swa)) {
        free(c->inv_freq);
        free(c->inv_freq_swa);
        free(c);
        return NULL;
    }
    /* As transformers: inv_freq = 1 / base^(2j/d), all in f32; as llama.cpp, divided by the
     * model's rope_freqs (Llama 3: transformers' llama3 inv_freq to ~1e-7 relative). */
    for (int j = 0; j < half; j++) {
        float e = (float)(2 * j) / (float)m->cfg.head_dim;
        c->inv_freq[j] = 1.0f / powf(m->cfg.rope_theta, e);
        if (m->rope_freqs)
            c->inv_freq[j] /= m->rope_freqs[j];
        if (swa)
            c->inv_freq_swa[j] = 1.0f / powf(m->cfg.rope_theta_swa, e);
    }
    return c;
}

void core_ctx_free(core_ctx *c)
{
    if (!c)
        return;
    free(c->inv_freq);
    free(c->inv_freq_swa);
    free(c->arena);
    free(c);
}

/* ---- the step's scratch ---------------------------------------------------------------------- */

/* What the scratch of a step depends on. */
typedef struct step_dims {
    size_t rows, longest, slots, groups, lora_floats, lora_rows;
    int tasks;
} step_dims;

/* Carves count elements of size bytes at the next 64-byte boundary; with no base, only counts. */
typedef struct carver {
    char *base;
    size_t off;
} carver;

static void *take(carver *k, size_t count, size_t size)
{
    size_t at = (k->off + 63) & ~(size_t)63;
    k->off = at + count * size;
    return k->base ? k->base + at : NULL;
}

/* The layout, in one place: run once to size the arena, once to point the regions into it. */
static void lay_out(core_ctx *c, carver *k, const step_dims *d)
{
    const core_config *cfg = &c->m->cfg;
    size_t n = d->rows, e = (size_t)cfg->n_embd, hd = (size_t)cfg->head_dim;
    size_t q_dim = (size_t)cfg->n_head * hd, kv_dim = (size_t)cfg->n_head_kv * hd;
    size_t ff = (size_t)cfg->n_ff, keys = (size_t)cfg->n_layer * CORE_MOD_COUNT;
    size_t wide = e > q_dim ? e : q_dim, in_max = wide > ff ? wide : ff;
    c->x = take(k, n * e, sizeof(float));
    c->xn = take(k, n * wide, sizeof(float));
    c->q = take(k, n * q_dim, sizeof(float));
    c->k = take(k, n * kv_dim, sizeof(float));
    c->v = take(k, n * kv_dim, sizeof(float));
    c->att = take(k, n * q_dim, sizeof(float));
    c->gate = take(k, n * ff, sizeof(float));
    c->up = take(k, n * ff, sizeof(float));
    c->tmp = take(k, n * e, sizeof(float));
    c->rope_cs = take(k, n * hd, sizeof(float));
    c->rope_cs_swa = take(k, cfg->sliding_window > 0 ? n * hd : 0, sizeof(float));
    c->xq = take(k, n * core__q8x_row_bytes((int)in_max), 1);
    c->slot_n = take(k, d->slots, sizeof(int));
    c->grp_start = take(k, keys + 1, sizeof(int));
    c->grp_fill = take(k, keys, sizeof(int));
    c->grp_order = take(k, d->groups, sizeof(int));
    size_t group = (size_t)(cfg->n_head / cfg->n_head_kv);
    /* the kernels see at most CORE_ATT_CHUNK keys at a time: longer rows go in chunks */
    size_t keys_at_once = d->longest < CORE_ATT_CHUNK ? d->longest : CORE_ATT_CHUNK;
    size_t nc = (size_t)core__attend_chunks((int)d->longest) * (q_dim + 2 * (size_t)cfg->n_head);
    for (int t = 0; t < d->tasks; t++) {
        c->scores[t] = take(k, keys_at_once * group, sizeof(float));
        c->chunks[t] = take(k, nc, sizeof(float));
        c->split_chunks[t] = take(k, nc, sizeof(float));
        c->ls[t] = take(k, d->lora_floats, sizeof(float));
        c->lrows[t] = take(k, d->lora_rows, sizeof(int32_t));
        c->lscales[t] = take(k, d->lora_rows, sizeof(float));
    }
}

/* Sizes the step from the batch and the plan, before either is checked: a group that
 * index_plan will refuse counts as nothing, so a hostile plan cannot ask for more than the
 * largest valid one. */
static step_dims step_dims_of(const core_ctx *c, const core_kv *kv, const core_batch *b,
                              const core_lora_plan *plan)
{
    const core_config *cfg = &c->m->cfg;
    /* chunks for the whole context: a few KB per task, and the arena does not grow with every
     * position a sequence reaches */
    step_dims d = {.rows = (size_t)b->n_rows,
                   .slots = (size_t)kv->n_slots,
                   .longest = (size_t)kv->n_ctx,
                   .tasks = core__pool_threads()};
    if (plan && plan->n_groups > 0 && plan->groups) {
        d.groups = (size_t)plan->n_groups;
        for (int i = 0; i < plan->n_groups; i++) {
            const core_lora_group *g = &plan->groups[i];
            if (g->module < 0 || g->module >= CORE_MOD_COUNT || g->rank <= 0 ||
                g->rank > MAX_LORA_RANK || g->n_rows <= 0 || g->n_rows > b->n_rows)
                continue;
            size_t fl = core__lora_scratch_floats(g->rank, core_module_out(cfg, g->module));
            d.lora_floats = fl > d.lora_floats ? fl : d.lora_floats;
            d.lora_rows = (size_t)g->n_rows > d.lora_rows ? (size_t)g->n_rows : d.lora_rows;
        }
    }
    return d;
}

/* Points the regions into an arena large enough for d, growing it if needed; -ENOMEM. */
static int scratch_for(core_ctx *c, const step_dims *d)
{
    carver k = {0};
    lay_out(c, &k, d);
    if (k.off > c->arena_cap) {
        /* half again what it had, so that steps of slowly growing size reallocate rarely */
        size_t cap = c->arena_cap + c->arena_cap / 2;
        cap = (k.off > cap ? k.off + 63 : cap + 63) & ~(size_t)63;
        char *a = aligned_alloc(64, cap);
        if (!a)
            return -ENOMEM;
        free(c->arena);
        c->arena = a;
        c->arena_cap = cap;
    }
    k = (carver){.base = c->arena};
    lay_out(c, &k, d);
    return 0;
}

/* ---- plan ------------------------------------------------------------------------------------ */

/* Checks every group of the plan against the model and the batch, and indexes the groups by
 * (layer, module) with a counting sort. */
static int index_plan(core_ctx *c, const core_lora_plan *plan, int n_rows, char *err, size_t errlen)
{
    const core_config *cfg = &c->m->cfg;
    int n_keys = cfg->n_layer * CORE_MOD_COUNT;
    memset(c->grp_start, 0, ((size_t)n_keys + 1) * sizeof(int));
    if (!plan || plan->n_groups == 0)
        return 0;
    if (plan->n_groups < 0 || !plan->groups) {
        core_errf(err, errlen, "lora plan: bad group count %d", plan->n_groups);
        return -EINVAL;
    }
    for (int i = 0; i < plan->n_groups; i++) {
        const core_lora_group *g = &plan->groups[i];
        if (g->layer < 0 || g->layer >= cfg->n_layer || g->module < 0 ||
            g->module >= CORE_MOD_COUNT) {
            core_errf(err, errlen, "lora plan: group %d names layer %d module %d", i, g->layer,
                      g->module);
            return -EINVAL;
        }
        if (g->rank <= 0 || g->rank > MAX_LORA_RANK || !g->A || !g->Bt ||
            (g->dtype != CORE_TYPE_F32 && g->dtype != CORE_TYPE_F16 &&
             g->dtype != CORE_TYPE_BF16)) {
            core_errf(err, errlen, "lora plan: group %d has rank %d, dtype %u or no weights", i,
                      g->rank, g->dtype);
            return -EINVAL;
        }
        if (g->n_rows < 0 || g->n_rows > n_rows || (g->n_rows && (!g->rows || !g->scales))) {
            core_errf(err, errlen, "lora plan: group %d has %d rows for a batch of %d", i,
                      g->n_rows, n_rows);
            return -EINVAL;
        }
        for (int r = 0; r < g->n_rows; r++) {
            if (g->rows[r] < 0 || g->rows[r] >= n_rows || !isfinite(g->scales[r])) {
                core_errf(err, errlen, "lora plan: group %d row %d (index %d, scale %g) is invalid",
                          i, r, g->rows[r], (double)g->scales[r]);
                return -EINVAL;
            }
        }
        c->grp_start[g->layer * CORE_MOD_COUNT + g->module + 1]++;
    }
    for (int k = 0; k < n_keys; k++)
        c->grp_start[k + 1] += c->grp_start[k];
    /* Stable placement, so groups apply in plan order within a (layer, module). */
    int *fill = c->grp_fill;
    memcpy(fill, c->grp_start, (size_t)n_keys * sizeof(int));
    for (int i = 0; i < plan->n_groups; i++) {
        const core_lora_group *g = &plan->groups[i];
        c->grp_order[fill[g->layer * CORE_MOD_COUNT + g->module]++] = i;
    }
    return 0;
}

/* The groups of one (layer, module), split over the pool by batch row: task t applies, in plan
 * order, every group to its rows r with r % n_tasks == t. A row's updates are thus computed by
 * the same kernel calls in the same order whatever the split and however many rows a group has,
 * and no two tasks write the same row of Y. Every group goes through lora.c's kernels, whatever
 * its size: sgemm on converted weights for groups of 16 rows and more gave results that depend
 * on the number of rows (batch invariance broke at near-ties) and was no faster (2026-12-02:
 * a 299-token prefill on a three-adapter chain 578 -> 721 tok/s best of 4, 32 rows on one rank-16
 * all-linear adapter +26% -> +6% over base, bench_core). */
#define LORA_MODS 3 /* modules that share an input and go through the pool together (q, k, v) */

typedef struct lora_job {
    core_ctx *c;
    const core_lora_plan *plan;
    int n_mods, in, n_tasks;
    int key[LORA_MODS], out[LORA_MODS];
    const float *X;
    float *Y[LORA_MODS];
} lora_job;

/* Touches the first bytes of a group's A and Bt, so that the next adapter's weights are on
 * their way from memory while this one computes (each group is a new stream, which the hardware
 * prefetchers pick up only after a few misses). */
static void lora_prefetch(const core_lora_group *g, int in, int out)
{
    size_t es = g->dtype == CORE_TYPE_F32 ? 4 : 2;
    size_t a = (size_t)g->rank * in * es, b = (size_t)g->rank * out * es;
    for (size_t off = 0; off < a && off < LORA_PREFETCH; off += 64)
        __builtin_prefetch((const char *)g->A + off);
    for (size_t off = 0; off < b && off < LORA_PREFETCH; off += 64)
        __builtin_prefetch((const char *)g->Bt + off);
}

/* One module's groups, task t's rows. */
static void lora_groups_mod(lora_job *j, int t, int key, int out, float *Y)
{
    core_ctx *c = j->c;
    for (int i = c->grp_start[key]; i < c->grp_start[key + 1]; i++) {
        const core_lora_group *g = &j->plan->groups[c->grp_order[i]];
        if (g->n_rows == 0)
            continue;
        int m = 0;
        for (int r = 0; r < g->n_rows; r++)
            if (g->rows[r] % j->n_tasks == t) {
                c->lrows[t][m] = g->rows[r];
                c->lscales[t][m++] = g->scales[r];
            }
        if (!m)
            continue;
        const core_lora_group *next = NULL; /* the next group this task will run */
        for (int k = i + 1; k < c->grp_start[key + 1] && !next; k++) {
            const core_lora_group *h = &j->plan->groups[c->grp_order[k]];
            if (h->n_rows == 0)
                continue;
            for (int r = 0; r < h->n_rows && !next; r++)
                if (h->rows[r] % j->n_tasks == t)
                    next = h;
        }
        if (next)
            lora_prefetch(next, j->in, out);
        core__lora_group(g->dtype, g->A, g->Bt, g->rank, j->in, out, m, c->lrows[t], c->lscales[t],
                         j->X, Y, c->ls[t]);
    }
}

static void lora_groups_task(void *arg, int t)
{
    lora_job *j = arg;
    for (int k = 0; k < j->n_mods; k++)
        lora_groups_mod(j, t, j->key[k], j->out[k], j->Y[k]);
}

/* The groups of the modules in j (which share the input X), in one pool run. */
static int lora_groups(core_ctx *c, lora_job *j)
{
    int n_tasks = core__pool_threads(), any = 0;
    for (int k = 0; k < j->n_mods && !any; k++)
        for (int i = c->grp_start[j->key[k]]; i < c->grp_start[j->key[k] + 1] && !any; i++)
            any = j->plan->groups[c->grp_order[i]].n_rows > 0;
    if (!any)
        return 0;
    j->c = c;
    j->n_tasks = n_tasks;
    core__pool_run(n_tasks, lora_groups_task, j);
    return 0;
}

/* How a product with out output rows is split over the pool: *per rows per task (a multiple of
 * 16); returns the number of tasks. Two per thread, so that a thread that finishes early takes
 * another; more for very tall products (the output head), whose last task would otherwise keep
 * one core busy for a millisecond while the other waits. */
static int split_outputs(int out, int *per)
{
    int threads = core__pool_threads(), tasks = out / 2048;
    tasks = tasks < 2 * threads ? 2 * threads : tasks > 8 * threads ? 8 * threads : tasks;
    *per = ((out + tasks - 1) / tasks + 15) & ~15;
    return (out + *per - 1) / *per;
}

/* Matmuls of at most this many rows read the quantized weights (core__qmatmul on the pool);
 * larger ones use sgemm on the f32 slab: INT_MAX (never) on AVX-512 and AVX2 (see
 * CORE_QMATMUL_ROWS for the measurements). Read once:
 * the kernels and the environment do not change while the process runs. */
static int qmatmul_rows(void)
{
    static _Atomic int rows = -1;
    int r = atomic_load_explicit(&rows, memory_order_relaxed);
    if (r < 0) {
        r = core__qmatmul_max_rows();
        atomic_store_explicit(&rows, r, memory_order_relaxed);
    }
    return r;
}

const char *core_matmul_kernels(char *buf, size_t len)
{
    int rows = qmatmul_rows();
    if (rows == 0)
        snprintf(buf, len, "OpenBLAS sgemm on f32 weights (no AVX2/FMA/F16C)");
    else if (rows == INT_MAX)
        snprintf(buf, len, "%s quantized matmul at any batch size", core__qmatmul_kernels());
    else
        snprintf(buf, len, "%s quantized matmul up to %d rows, OpenBLAS sgemm above",
                 core__qmatmul_kernels(), rows);
    return buf;
}

/* Y = X · Wᵀ on the f32 copy: OpenBLAS. */
static void matmul_f32(const float *W, int in, int out, const float *X, int n, float *Y)
{
    if (n == 1)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, out, in, 1.0f, W, in, X, 1, 0.0f, Y, 1);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in, 1.0f, X, in, W, in, 0.0f,
                    Y, out);
}

/* Y = X · Wᵀ on the f32 copy, which a weight must have when no kernel reads it. */
static void product_f32(const core_weight *w, const float *X, int n, float *Y)
{
    CORE_ASSERT(w->f32, "a %dx%d %s weight with neither an f32 copy nor kernels that read it",
                w->rows, w->cols, core_type_name(w->type));
    matmul_f32(w->f32, w->cols, w->rows, X, n, Y);
}

/* Whether a product of n rows with w runs on the pool: the int8 kernels when w has a repack,
 * else core's quantized kernels on the stored blocks when they read the type at this many rows
 * (or there is no f32 copy); else it is OpenBLAS's on the f32 copy. */
static bool on_pool(const core_weight *w, int n)
{
    return w->q8 ||
           (w->data && (n <= qmatmul_rows() || !w->f32) && core__qmatmul_supports(w->type));
}

/* The products of up to three modules that share X, all on_pool() and all int8 or none, in one
 * pool run: each module's outputs split as split_outputs() would split their sum, in proportion
 * to its rows (at least one task each; one module alone is split as split_outputs() splits it).
 * One run for q, k, v (or gate, up) instead of one each: a one-row step makes about seven runs a
 * layer, each a wake-up and a wait for the slower thread, and the small k and v products (192
 * rows for SmolLM2) left a thread idle at the end of their own runs. Every output is computed by
 * the same code whatever the split, so no result depends on it or on the thread count. */
typedef struct pool_job {
    const core_ctx *c;
    const core_weight *w[3];
    float *Y[3];
    int first[4]; /* tasks of module k: first[k] .. first[k + 1] - 1 */
    int per[3];
    int in, n;
    const float *X;
    _Atomic int failed[3];
} pool_job;

static void pool_task(void *arg, int t)
{
    pool_job *j = arg;
    int k = 0;
    while (t >= j->first[k + 1])
        k++;
    const core_weight *w = j->w[k];
    int o0 = (t - j->first[k]) * j->per[k],
        o1 = o0 + j->per[k] < w->rows ? o0 + j->per[k] : w->rows;
    if (o0 >= o1)
        return;
    if (w->q8)
        core__q8_matmul_part(w->q8, j->c->xq, j->n, o0, o1, j->Y[k], w->rows);
    else if (core__qmatmul_part(w->type, w->data, j->in, w->rows, o0, o1, j->X, j->n, j->Y[k]))
        atomic_store_explicit(&j->failed[k], 1, memory_order_relaxed);
}

/* pool_job's run for w[0..n_mods); X quantized into c->xq for int8 weights unless *x_quantized
 * says it is already there. A module whose kernels refused goes to its f32 copy after the run. */
static void pool_products(core_ctx *c, const core_weight *const *w, int n_mods, const float *X,
                          int n, float *const *Y, bool *x_quantized)
{
    int total = 0;
    for (int k = 0; k < n_mods; k++)
        total += w[k]->rows;
    pool_job j = {.c = c, .in = w[0]->cols, .n = n, .X = X};
    int per, tasks = split_outputs(total, &per);
    for (int k = 0; k < n_mods; k++) {
        int want = (int)((double)tasks * w[k]->rows / total + 0.5);
        want = want < 1 ? 1 : want;
        j.w[k] = w[k];
        j.Y[k] = Y[k];
        j.per[k] = ((w[k]->rows + want - 1) / want + 15) & ~15;
        j.first[k + 1] = j.first[k] + (w[k]->rows + j.per[k] - 1) / j.per[k];
    }
    if (w[0]->q8 && !*x_quantized) {
        core__q8x_quantize(X, j.in, n, c->xq);
        *x_quantized = true;
    }
    core__pool_run(j.first[n_mods], pool_task, &j);
    for (int k = 0; k < n_mods; k++)
        if (atomic_load_explicit(&j.failed[k], memory_order_relaxed))
            product_f32(w[k], X, n, Y[k]);
}

/* Y[k] = X · W[k]ᵀ, X (n, w[k]->cols), Y[k] (n, w[k]->rows), for up to three modules sharing X:
 * the one place that picks the kernel of a product (on_pool()). Together in one pool run when
 * all of them run on the pool the same way, else each on its own. *x_quantized: X is already in
 * c->xq (int8), quantized once for every product of the same X. */
static void products(core_ctx *c, const core_weight *const *w, int n_mods, const float *X, int n,
                     float *const *Y, bool *x_quantized)
{
    bool together = true;
    for (int k = 0; k < n_mods; k++)
        together = together && on_pool(w[k], n) && !w[k]->q8 == !w[0]->q8;
    if (together) {
        pool_products(c, w, n_mods, X, n, Y, x_quantized);
        return;
    }
    for (int k = 0; k < n_mods; k++) {
        if (on_pool(w[k], n))
            pool_products(c, &w[k], 1, X, n, &Y[k], x_quantized);
        else
            product_f32(w[k], X, n, Y[k]);
    }
}

/* Y[k] = X · W[k]ᵀ plus the plan's LoRA groups, for n_mods modules of one layer that share the
 * input X (n, in): q, k, v, or gate, up, or one alone. Their products go through the pool in one
 * run when they can (products()), and their LoRA groups in another. */
static int linear_n(core_ctx *c, const core_lora_plan *plan, int layer, const core_module *mods,
                    int n_mods, const float *X, int n, float *const *Y)
{
    const core_config *cfg = &c->m->cfg;
    const core_layer *L = &c->m->layers[layer];
    int in = core_module_in(cfg, mods[0]);
    lora_job j = {.plan = plan, .n_mods = n_mods, .in = in, .X = X};
    bool quantized = false;
    const core_weight *w[3];
    for (int k = 0; k < n_mods; k++)
        w[k] = &L->w[mods[k]];
    products(c, w, n_mods, X, n, Y, &quantized);
    for (int k = 0; k < n_mods; k++) {
        int out = core_module_out(cfg, mods[k]);
        const float *bias = L->bias[mods[k]];
        for (int i = 0; bias && i < n; i++) /* as nn.Linear: the bias before LoRA's update */
            for (int o = 0; o < out; o++)
                Y[k][(size_t)i * out + o] += bias[o];
        j.key[k] = layer * CORE_MOD_COUNT + mods[k];
        j.out[k] = out;
        j.Y[k] = Y[k];
    }
    if (!plan || plan->n_groups == 0)
        return 0;
    return lora_groups(c, &j);
}

static int linear(core_ctx *c, const core_lora_plan *plan, int layer, core_module mod,
                  const float *X, int n, float *Y)
{
    return linear_n(c, plan, layer, &mod, 1, X, n, &Y);
}

/* ---- elementwise pieces ---------------------------------------------------------------------- */

static void rmsnorm(float *out, const float *x, const float *w, int n, float eps)
{
    double ss = 0.0;
    for (int i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    float inv = 1.0f / sqrtf((float)(ss / n) + eps);
    for (int i = 0; i < n; i++)
        out[i] = w[i] * (x[i] * inv);
}

/* cs[2j], cs[2j + 1] = cos, sin of pos * inv_freq[j]: once per row and step, for every layer and
 * for both q and k. */
static void rope_angles(float *cs, int head_dim, int pos, const float *inv_freq)
{
    for (int j = 0; j < head_dim / 2; j++) {
        float ang = (float)pos * inv_freq[j];
        cs[2 * j] = cosf(ang);
        cs[2 * j + 1] = sinf(ang);
    }
}

/* Rotates adjacent pairs (2j, 2j+1) of each head by the angles of rope_angles (GGUF row
 * layout). */
static void rope(float *v, int n_heads, int head_dim, const float *csv)
{
    int half = head_dim / 2;
    for (int j = 0; j < half; j++) {
        float cs = csv[2 * j], sn = csv[2 * j + 1];
        for (int h = 0; h < n_heads; h++) {
            float *p = v + h * head_dim + 2 * j;
            float a = p[0], b = p[1];
            p[0] = a * cs - b * sn;
            p[1] = b * cs + a * sn;
        }
    }
}

/* Rotates the pairs (j, j + head_dim/2) of each head (Hugging Face's rotate_half, for GGUF rows
 * that llama.cpp did not permute: Gemma 3), in the same order of operations as rope(). */
static void rope_neox(float *v, int n_heads, int head_dim, const float *csv)
{
    int half = head_dim / 2;
    for (int j = 0; j < half; j++) {
        float cs = csv[2 * j], sn = csv[2 * j + 1];
        for (int h = 0; h < n_heads; h++) {
            float *p = v + h * head_dim;
            float a = p[j], b = p[j + half];
            p[j] = a * cs - b * sn;
            p[j + half] = b * cs + a * sn;
        }
    }
}

/* Attention for the batch's rows, split over the pool. With as many rows as tasks or more, each
 * row is one item (its cache read in one piece), items t, t + T, ... to task t. With fewer, a
 * row is spread over the tasks so that one stream's attention, which reads its whole context,
 * runs on every thread: a row of more than CORE_ATT_CHUNK keys as (KV head, chunk) items, each
 * head's cache read once (one row at position 2048 with nine query heads five and four on two
 * threads read the KV head they shared twice), merged once every item is done; a shorter row as
 * per = T ranges of query heads (one-row steps at position 1000-1024, ms: SmolLM2 9.0-9.5 on one
 * thread, 6.9-7.7 with its nine heads five and four). A row's bits do not depend on the split:
 * the kernels compute each head on its own, and a long row's chunks and their merge are the same
 * whoever runs them (core/kernels/attention_internal.h). Each row attends over positions 0..pos
 * of its own slot, which every row of this step has already written. */
typedef struct attn_job {
    core_ctx *c;
    const core_kv *kv;
    const core_batch *b;
    int layer, n_tasks, per;
    bool split;                   /* fewer rows than tasks: rows spread over the tasks */
    int item0[CORE_POOL_MAX + 1]; /* split: row i's items are item0[i] .. item0[i + 1] - 1 */
} attn_job;

/* Row i's first attended position and its number of keys at this layer. */
static int row_keys(const attn_job *j, int i, int *first)
{
    const core_config *cfg = &j->c->m->cfg;
    int window = core_layer_is_swa(cfg, j->layer) ? cfg->sliding_window : 0;
    int pos = j->b->pos[i];
    /* a sliding-window layer sees positions pos - window + 1 .. pos: the cache from there */
    *first = window && pos >= window ? pos - window + 1 : 0;
    return pos - *first + 1;
}

/* Query heads [h0, h1) of row i (whole KV groups or parts of one at a time) over its n_keys keys,
 * into att, or chunk c of them into o and ml (chunk < 0: not chunked). */
static void attend_heads(const attn_job *j, int t, int i, int h0, int h1, int first, int n_keys,
                         int chunk, float *o, float *ml)
{
    core_ctx *c = j->c;
    const core_config *cfg = &c->m->cfg;
    int hd = cfg->head_dim, q_dim = cfg->n_head * hd, group = cfg->n_head / cfg->n_head_kv;
    const core_kv_slot *s = &j->kv->slots[j->b->slot[i]];
    for (int h = h0; h < h1;) {
        int g = h / group, end = (g + 1) * group < h1 ? (g + 1) * group : h1;
        core__kv_view K = core__kv_view_of(j->kv, s, j->layer, 0, g, first);
        core__kv_view V = core__kv_view_of(j->kv, s, j->layer, 1, g, first);
        const float *q = c->q + (size_t)i * q_dim + (size_t)h * hd;
        if (chunk < 0)
            core__attend_view(q, &K, &V, j->kv->f16, end - h, 1, hd, n_keys, c->scores[t],
                              c->att + (size_t)i * q_dim + (size_t)h * hd, NULL);
        else
            core__attend_chunk(q, &K, &V, j->kv->f16, end - h, 1, hd, n_keys, chunk, c->scores[t],
                               o + (size_t)chunk * q_dim + (size_t)h * hd,
                               ml + 2 * ((size_t)chunk * cfg->n_head + h));
        h = end;
    }
}

/* Where a row's chunks go: nc chunks' outputs, then their maxima and sums. */
static float *chunk_ml(const core_config *cfg, float *o, int nc)
{
    return o + (size_t)nc * cfg->n_head * cfg->head_dim;
}

static void attn_task(void *arg, int t)
{
    attn_job *j = arg;
    core_ctx *c = j->c;
    const core_config *cfg = &c->m->cfg;
    int n_head = cfg->n_head, q_dim = n_head * cfg->head_dim;
    if (!j->split) {
        for (int i = t; i < j->b->n_rows; i += j->n_tasks) {
            int first, n_keys = row_keys(j, i, &first), nc = core__attend_chunks(n_keys);
            if (nc == 1) {
                attend_heads(j, t, i, 0, n_head, first, n_keys, -1, NULL, NULL);
                continue;
            }
            float *o = c->chunks[t], *ml = chunk_ml(cfg, o, nc);
            for (int ch = 0; ch < nc; ch++)
                attend_heads(j, t, i, 0, n_head, first, n_keys, ch, o, ml);
            core__attend_merge(o, ml, nc, n_head, cfg->head_dim, c->att + (size_t)i * q_dim);
        }
        return;
    }
    int group = n_head / cfg->n_head_kv;
    for (int i = 0; i < j->b->n_rows; i++)
        for (int it = j->item0[i]; it < j->item0[i + 1]; it++) {
            if (it % j->n_tasks != t)
                continue;
            int first, n_keys = row_keys(j, i, &first), nc = core__attend_chunks(n_keys);
            int r = it - j->item0[i];
            if (nc == 1) {
                attend_heads(j, t, i, r * n_head / j->per, (r + 1) * n_head / j->per, first, n_keys,
                             -1, NULL, NULL);
            } else {
                int g = r / nc, ch = r % nc;
                float *o = c->split_chunks[i];
                attend_heads(j, t, i, g * group, (g + 1) * group, first, n_keys, ch, o,
                             chunk_ml(cfg, o, nc));
            }
        }
}

/* Attention of layer l for the batch's rows into c->att. */
static void attention(core_ctx *c, const core_kv *kv, const core_batch *b, int l)
{
    const core_config *cfg = &c->m->cfg;
    int n = b->n_rows;
    attn_job aj = {.c = c, .kv = kv, .b = b, .layer = l, .n_tasks = core__pool_threads()};
    aj.split = n < aj.n_tasks;
    if (!aj.split) {
        core__pool_run(aj.n_tasks, attn_task, &aj);
        return;
    }
    aj.per = aj.n_tasks < cfg->n_head ? aj.n_tasks : cfg->n_head;
    for (int i = 0; i < n; i++) {
        int first, nc = core__attend_chunks(row_keys(&aj, i, &first));
        aj.item0[i + 1] = aj.item0[i] + (nc == 1 ? aj.per : cfg->n_head_kv * nc);
    }
    core__pool_run(aj.item0[n] < aj.n_tasks ? aj.item0[n] : aj.n_tasks, attn_task, &aj);
    for (int i = 0; i < n; i++) {
        int first, nc = core__attend_chunks(row_keys(&aj, i, &first));
        if (nc > 1)
            core__attend_merge(c->split_chunks[i], chunk_ml(cfg, c->split_chunks[i], nc), nc,
                               cfg->n_head, cfg->head_dim,
                               c->att + (size_t)i * cfg->n_head * cfg->head_dim);
    }
}

/* SwiGLU (GeGLU for Gemma 3) over rows, split over the pool in row ranges. */
typedef struct swiglu_job {
    float *gate;
    const float *up;
    int n, ff, per;
    bool gelu;
} swiglu_job;

static void swiglu_task(void *arg, int t)
{
    swiglu_job *j = arg;
    int r0 = t * j->per, r1 = r0 + j->per < j->n ? r0 + j->per : j->n;
    if (r0 < r1)
        (j->gelu ? core__geglu : core__swiglu)(j->gate + (size_t)r0 * j->ff,
                                               j->up + (size_t)r0 * j->ff, (long)(r1 - r0) * j->ff);
}

/* ---- the step -------------------------------------------------------------------------------- */

/* Checks tokens, slots and positions, simulating how each slot fills up over the batch, and
 * reserves cache room. */
static int check_batch(core_ctx *c, core_kv *kv, const core_batch *b, char *err, size_t errlen)
{
    const core_config *cfg = &c->m->cfg;
    for (int s = 0; s < kv->n_slots; s++)
        c->slot_n[s] = kv->slots[s].n;
    for (int i = 0; i < b->n_rows; i++) {
        int tok = b->tokens[i], slot = b->slot[i], pos = b->pos[i];
        if (tok < 0 || tok >= cfg->n_vocab) {
            core_errf(err, errlen, "row %d: token id %d out of range [0, %d)", i, tok,
                      cfg->n_vocab);
            return -EINVAL;
        }
        if (slot < 0 || slot >= kv->n_slots) {
            core_errf(err, errlen, "row %d: kv slot %d out of range [0, %d)", i, slot, kv->n_slots);
            return -EINVAL;
        }
        if (pos < 0 || pos >= kv->n_ctx) {
            core_errf(err, errlen, "row %d: position %d outside the context of %d", i, pos,
                      kv->n_ctx);
            return -ERANGE;
        }
        if (pos > c->slot_n[slot]) {
            core_errf(err, errlen,
                      "row %d: position %d skips ahead of slot %d's %d filled positions", i, pos,
                      slot, c->slot_n[slot]);
            return -EINVAL;
        }
        c->slot_n[slot] = pos + 1;
        int rc = core_kv_reserve(kv, slot, pos + 1);
        if (rc) {
            core_errf(err, errlen, "row %d: no room in the kv cache for slot %d at %d positions%s",
                      i, slot, pos + 1, rc == -ENOSPC ? " (the pool is full)" : "");
            return rc;
        }
    }
    return 0;
}

static int layer_forward(core_ctx *c, core_kv *kv, const core_batch *b, const core_lora_plan *plan,
                         int l)
{
    const core_config *cfg = &c->m->cfg;
    const core_layer *L = &c->m->layers[l];
    int n = b->n_rows, e = cfg->n_embd, hd = cfg->head_dim;
    int q_dim = cfg->n_head * hd, kv_dim = cfg->n_head_kv * hd, ff = cfg->n_ff;
    int rc;

    for (int i = 0; i < n; i++)
        rmsnorm(c->xn + (size_t)i * e, c->x + (size_t)i * e, L->attn_norm, e, cfg->rms_eps);
    static const core_module qkv[3] = {CORE_MOD_Q, CORE_MOD_K, CORE_MOD_V};
    float *qkv_out[3] = {c->q, c->k, c->v};
    if ((rc = linear_n(c, plan, l, qkv, 3, c->xn, n, qkv_out)))
        return rc;
    const float *cs_all = core_layer_is_swa(cfg, l) ? c->rope_cs_swa : c->rope_cs;
    for (int i = 0; i < n; i++) {
        float *qi = c->q + (size_t)i * q_dim, *ki = c->k + (size_t)i * kv_dim;
        const float *cs = cs_all + (size_t)i * hd;
        if (L->q_norm) { /* Gemma 3, Qwen3: per-head RMSNorm of q and k */
            for (int h = 0; h < cfg->n_head; h++)
                rmsnorm(qi + h * hd, qi + h * hd, L->q_norm, hd, cfg->rms_eps);
            for (int h = 0; h < cfg->n_head_kv; h++)
                rmsnorm(ki + h * hd, ki + h * hd, L->k_norm, hd, cfg->rms_eps);
        }
        if (cfg->neox_rope) {
            rope_neox(qi, cfg->n_head, hd, cs);
            rope_neox(ki, cfg->n_head_kv, hd, cs);
        } else {
            rope(qi, cfg->n_head, hd, cs);
            rope(ki, cfg->n_head_kv, hd, cs);
        }
        if (cfg->q_scale != 0.0f)
            for (int d = 0; d < q_dim; d++)
                qi[d] *= cfg->q_scale;
        const core_kv_slot *s = &kv->slots[b->slot[i]];
        const float *vi = c->v + (size_t)i * kv_dim;
        for (int g = 0; g < cfg->n_head_kv; g++) {
            char *kd = core__kv_at(kv, s, l, 0, g, b->pos[i]);
            char *vd = core__kv_at(kv, s, l, 1, g, b->pos[i]);
            if (kv->f16) {
                core__to_f16(ki + g * hd, (uint16_t *)kd, hd);
                core__to_f16(vi + g * hd, (uint16_t *)vd, hd);
            } else {
                memcpy(kd, ki + g * hd, (size_t)hd * sizeof(float));
                memcpy(vd, vi + g * hd, (size_t)hd * sizeof(float));
            }
        }
    }
    attention(c, kv, b, l);
    if ((rc = linear(c, plan, l, CORE_MOD_O, c->att, n, c->tmp)))
        return rc;
    if (L->post_attn_norm)
        for (int i = 0; i < n; i++)
            rmsnorm(c->tmp + (size_t)i * e, c->tmp + (size_t)i * e, L->post_attn_norm, e,
                    cfg->rms_eps);
    for (size_t i = 0; i < (size_t)n * e; i++)
        c->x[i] += c->tmp[i];

    for (int i = 0; i < n; i++)
        rmsnorm(c->xn + (size_t)i * e, c->x + (size_t)i * e, L->ffn_norm, e, cfg->rms_eps);
    static const core_module gate_up[2] = {CORE_MOD_GATE, CORE_MOD_UP};
    float *gu_out[2] = {c->gate, c->up};
    if ((rc = linear_n(c, plan, l, gate_up, 2, c->xn, n, gu_out)))
        return rc;
    int tasks = n >= 4 ? core__pool_threads() : 1;
    swiglu_job sj = {.gate = c->gate,
                     .up = c->up,
                     .n = n,
                     .ff = ff,
                     .per = (n + tasks - 1) / tasks,
                     .gelu = cfg->kind == CORE_ARCH_GEMMA3};
    core__pool_run(tasks, swiglu_task, &sj);
    if ((rc = linear(c, plan, l, CORE_MOD_DOWN, c->gate, n, c->tmp)))
        return rc;
    if (L->post_ffn_norm)
        for (int i = 0; i < n; i++)
            rmsnorm(c->tmp + (size_t)i * e, c->tmp + (size_t)i * e, L->post_ffn_norm, e,
                    cfg->rms_eps);
    for (size_t i = 0; i < (size_t)n * e; i++)
        c->x[i] += c->tmp[i];
    return 0;
}

int core_forward(core_ctx *c, core_kv *kv, const core_batch *b, const core_lora_plan *plan,
                 float *logits, char *err, size_t errlen)
{
    const core_model *m = c->m;
    const core_config *cfg = &m->cfg;
    int n = b->n_rows, e = cfg->n_embd;
    if (n <= 0)
        return 0;
    if (!b->tokens || !b->pos || !b->slot) {
        core_errf(err, errlen, "batch without tokens, positions or slots");
        return -EINVAL;
    }
    if (kv->n_layer != cfg->n_layer || kv->kv_dim != cfg->n_head_kv * cfg->head_dim) {
        core_errf(err, errlen, "kv cache was made for another model");
        return -EINVAL;
    }
    step_dims d = step_dims_of(c, kv, b, plan);
    int rc = scratch_for(c, &d);
    if (rc == 0)
        rc = check_batch(c, kv, b, err, errlen);
    if (rc == 0)
        rc = index_plan(c, plan, n, err, errlen);
    if (rc) {
        if (rc == -ENOMEM)
            core_errf(err, errlen, "out of memory for a batch of %d rows", n);
        return rc;
    }

    size_t emb_rb = core_type_row_bytes(m->tok_embd.type, (uint64_t)e);
    for (int i = 0; i < n; i++) {
        float *x = c->x + (size_t)i * e;
        if (m->tok_embd.f32)
            memcpy(x, m->tok_embd.f32 + (size_t)b->tokens[i] * e, (size_t)e * sizeof(float));
        else /* the same bits as the slab would hold */
            core_dequant_row(m->tok_embd.type,
                             (const uint8_t *)m->tok_embd.data + (size_t)b->tokens[i] * emb_rb, x,
                             e);
        if (cfg->embd_scale != 0.0f) /* Gemma 3: x sqrt(n_embd), in f32 as transformers */
            for (int k = 0; k < e; k++)
                x[k] *= cfg->embd_scale;
    }
    for (int i = 0; i < n; i++) {
        rope_angles(c->rope_cs + (size_t)i * cfg->head_dim, cfg->head_dim, b->pos[i], c->inv_freq);
        if (c->inv_freq_swa)
            rope_angles(c->rope_cs_swa + (size_t)i * cfg->head_dim, cfg->head_dim, b->pos[i],
                        c->inv_freq_swa);
    }
    for (int l = 0; l < cfg->n_layer; l++) {
        if ((rc = layer_forward(c, kv, b, plan, l))) {
            core_errf(err, errlen, "out of memory in layer %d", l);
            return rc;
        }
    }
    for (int i = 0; i < n; i++)
        kv->slots[b->slot[i]].n = b->pos[i] + 1;

    int n_out = 0;
    for (int i = 0; i < n; i++) {
        if (!b->want_logits || b->want_logits[i]) {
            rmsnorm(c->xn + (size_t)n_out * e, c->x + (size_t)i * e, m->output_norm, e,
                    cfg->rms_eps);
            n_out++;
        }
    }
    bool quantized = false;
    const core_weight *head = &m->output;
    if (n_out > 0)
        products(c, &head, 1, c->xn, n_out, &logits, &quantized);
    return 0;
}
