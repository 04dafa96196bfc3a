/* `make bench`: the core's speed next to this machine's own limits. It measures sgemm peak and
 * memory read bandwidth first, then single-stream prefill and decode and batched decode, and
 * prints for each the achieved GFLOP/s and GB/s and their ratio to the measured limits. With
 * --json FILE it also writes every printed result as one JSON document (schema
 * "adaptree-bench-core/1", docs/PERF.md §1.3), once the run is over. */
#include <cJSON.h>
#include <cblas.h>
#include <immintrin.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "adapters/compose.h"
#include "core/format/types.h"
#include "core/kernels/blas.h"
#include "core/kernels/cpu_internal.h"
#include "core/kernels/qmatmul_internal.h"
#include "core/kernels/qmatmul_q8_internal.h"
#include "core/model/model.h"
#include "core/model/sampler.h"
#include "core/text/grammar.h"
#include "server/json_schema.h"
#include "server/version.h"
#include "tests/bench/bench_util.h"
#include "tests/unit/adapters/adapter_testutil.h"

/* The JSON document --json writes (NULL without --json): every printer adds what it prints. */
static cJSON *json_doc;

/* A number, or null when it is not finite (JSON has no NaN or infinity). */
static void jnum(cJSON *o, const char *key, double v)
{
    char t[32];
    if (!o)
        return;
    if (!isfinite(v)) {
        cJSON_AddItemToObject(o, key, cJSON_CreateNull());
        return;
    }
    snprintf(t, sizeof t, "%.6g", v); /* six significant digits: more than any probe resolves */
    cJSON_AddItemToObject(o, key, cJSON_CreateNumber(strtod(t, NULL)));
}

static void jstr(cJSON *o, const char *key, const char *v)
{
    if (o)
        cJSON_AddItemToObject(o, key, v ? cJSON_CreateString(v) : cJSON_CreateNull());
}

/* The object or array under key of the document (created on first use); NULL without --json. */
static cJSON *jsection(const char *key, bool array)
{
    if (!json_doc)
        return NULL;
    cJSON *o = cJSON_GetObjectItemCaseSensitive(json_doc, key);
    if (!o) {
        o = array ? cJSON_CreateArray() : cJSON_CreateObject();
        cJSON_AddItemToObject(json_doc, key, o);
    }
    return o;
}

/* A new object appended to the array under key; NULL without --json. */
static cJSON *jrow(const char *key)
{
    cJSON *a = jsection(key, true), *o = a ? cJSON_CreateObject() : NULL;
    if (o)
        cJSON_AddItemToArray(a, o);
    return o;
}

/* The CPU's "model name", family and model from /proc/cpuinfo into the machine object. */
static void json_cpu(cJSON *machine)
{
    char name[256];
    int family, model;
    bench_cpu(name, sizeof name, &family, &model);
    jstr(machine, "cpu", name);
    if (family >= 0)
        jnum(machine, "cpu_family", family);
    if (model >= 0)
        jnum(machine, "cpu_model", model);
    jnum(machine, "online_cpus", (double)sysconf(_SC_NPROCESSORS_ONLN));
}

/* Best of a few n×n×n sgemm runs. */
static double sgemm_peak(void)
{
    int n = 1536;
    float *a = malloc(sizeof(float) * n * n), *b = malloc(sizeof(float) * n * n),
          *c = malloc(sizeof(float) * n * n);
    for (int i = 0; i < n * n; i++)
        a[i] = b[i] = 1.0f / (float)(1 + i % 7);
    double best = 0;
    for (int r = 0; r < 5; r++) {
        double t = bench_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1, a, n, b, n, 0, c, n);
        double g = 2.0 * n * n * n / (bench_now() - t) / 1e9;
        best = g > best ? g : best;
    }
    free(a);
    free(b);
    free(c);
    return best;
}

/* Read bandwidth: best of a few passes of OpenBLAS sasum (threaded) over 1 GiB. */
static double read_bandwidth(void)
{
    size_t n = (size_t)256 << 20;
    float *a = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        a[i] = 1.0f;
    double best = 0;
    volatile float sink = 0;
    for (int r = 0; r < 5; r++) {
        double t = bench_now();
        sink += cblas_sasum((blasint)n, a, 1);
        double g = (double)n * sizeof(float) / (bench_now() - t) / 1e9;
        best = g > best ? g : best;
    }
    (void)sink;
    free(a);
    return best;
}

/* FMA peak: every online CPU runs a loop of independent FMAs (twelve chains, enough to cover the
 * latency on every core the project runs on) on 256-bit (AVX2) or 512-bit (AVX-512) vectors; the
 * best of three, in GFLOP/s (an FMA is two flops per lane). The bound the kernels' arithmetic is
 * held to, unlike the sgemm probe, which is OpenBLAS's best on this machine. */
#define FMA_ITERS 20000000L
#define FMA12(op, V, P)                                                                            \
    op(0, V, P) op(1, V, P) op(2, V, P) op(3, V, P) op(4, V, P) op(5, V, P) op(6, V, P)            \
        op(7, V, P) op(8, V, P) op(9, V, P) op(10, V, P) op(11, V, P)
#define FMA_INIT(i, V, P) V a##i = P##_set1_ps((float)(i)*1e-3f);
#define FMA_STEP(i, V, P) a##i = P##_fmadd_ps(a##i, m, c);
#define FMA_SUM(i, V, P) t = P##_add_ps(t, a##i);
/* The loop on one vector width: V the vector type, P its intrinsics' prefix. */
#define FMA_LOOP(name, isa, V, P)                                                                  \
    __attribute__((target(isa))) static void *name(void *out)                                      \
    {                                                                                              \
        V m = P##_set1_ps(0.9999999f), c = P##_set1_ps(1e-7f);                                     \
        FMA12(FMA_INIT, V, P)                                                                      \
        for (long it = 0; it < FMA_ITERS; it++) {                                                  \
            FMA12(FMA_STEP, V, P)                                                                  \
        }                                                                                          \
        V t = P##_setzero_ps();                                                                    \
        FMA12(FMA_SUM, V, P)                                                                       \
        *(float *)out = P##_cvtss_f32(t);                                                          \
        return NULL;                                                                               \
    }

FMA_LOOP(fma_loop_avx2, "avx2,fma", __m256, _mm256)
FMA_LOOP(fma_loop_avx512, "avx512f", __m512, _mm512)

/* 0 when the CPU lacks the ISA or a thread cannot start. */
static double fma_peak(bool avx512)
{
    if (avx512 ? !__builtin_cpu_supports("avx512f")
               : !(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")))
        return 0;
    long nt = sysconf(_SC_NPROCESSORS_ONLN);
    nt = nt < 1 ? 1 : nt > 64 ? 64 : nt;
    pthread_t th[64];
    float out[64];
    double best = 0;
    for (int r = 0; r < 3; r++) {
        double t0 = bench_now();
        long started = 0;
        for (long i = 0; i < nt; i++)
            started += pthread_create(&th[i], NULL, avx512 ? fma_loop_avx512 : fma_loop_avx2,
                                      &out[i]) == 0;
        for (long i = 0; i < started; i++)
            pthread_join(th[i], NULL);
        if (started < nt)
            return 0;
        double g = (double)nt * FMA_ITERS * 12 * (avx512 ? 16 : 8) * 2 / (bench_now() - t0) / 1e9;
        best = g > best ? g : best;
    }
    return best;
}

typedef struct bench {
    const core_model *m;
    core_ctx *ctx;
    core_kv *kv;
    float *logits;
    double flops_per_row; /* linear layers + head, per token */
    double weight_bytes;  /* f32 weights read per step (more than core__qmatmul_max_rows()) */
    double qweight_bytes; /* stored (quantized) weights read per step (small steps) */
    double peak, bw;
    double fma;       /* FMA peak of the vector width the kernels in use run (0: none) */
    const char *mode; /* "f32" or "int8": the activations of the forward passes */
} bench;

/* One line of tok/s, GFLOP/s and GB/s; scenario and sequences are its JSON key and batch. */
static void report(const bench *b, const char *what, const char *scenario, int sequences,
                   double toks, double secs, double rows_per_step, double steps)
{
    double gflops = b->flops_per_row * toks / secs / 1e9;
    double bytes = rows_per_step <= core__qmatmul_max_rows() ? b->qweight_bytes : b->weight_bytes;
    double gbs = bytes * steps / secs / 1e9;
    printf("%-35s %9.1f tok/s   %7.1f GFLOP/s (%3.0f%% of peak)   %6.1f GB/s (%3.0f%% of bw)"
           "   [%.0f rows/step]\n",
           what, toks / secs, gflops, 100 * gflops / b->peak, gbs, 100 * gbs / b->bw,
           rows_per_step);
    cJSON *j = jrow("forward");
    jstr(j, "scenario", scenario);
    jstr(j, "mode", b->mode);
    jstr(j, "label", what);
    jnum(j, "sequences", sequences);
    jnum(j, "rows_per_step", rows_per_step);
    jnum(j, "tok_s", toks / secs);
    jnum(j, "gflops", gflops);
    jnum(j, "pct_of_peak", 100 * gflops / b->peak);
    jnum(j, "weight_gbs", gbs);
    jnum(j, "pct_of_bw", 100 * gbs / b->bw);
}

/* One product's result, printed on the kernel line and kept as a "kernels" row: rows x in by in x
 * out, best seconds, GB/s of the stored weights read. */
static void kernel_result(uint32_t type, const char *mode, const char *kernels, int rows, int in,
                          int out, double best, double gbs)
{
    double gflops = 2.0 * in * out * rows / best / 1e9;
    printf("   n=%-2d %5.1f GB/s %6.1f GFLOP/s", rows, gbs, gflops);
    cJSON *j = jrow("kernels");
    jstr(j, "type", core_type_name(type));
    jstr(j, "mode", mode);
    jstr(j, "kernels", kernels);
    jnum(j, "rows", rows);
    jnum(j, "in", in);
    jnum(j, "out", out);
    jnum(j, "stored_gbs", gbs);
    jnum(j, "gflops", gflops);
}

/* The int8 kernels on W (when they take its type), X quantized beforehand, as bench_kernels. */
static void bench_kernels_int8(uint32_t type, const uint8_t *w, int in, int out, const float *x,
                               const int *ns, int count, float *y)
{
    core_q8w *p = core__q8_available() ? core__q8w_pack(type, w, in, out) : NULL;
    if (!p)
        return;
    size_t rb = core__q8x_row_bytes(in);
    uint8_t *xq = aligned_alloc(64, rb * (size_t)ns[count - 1]);
    core__q8x_quantize(x, in, ns[count - 1], xq);
    printf("  %-5s int8 %-12s", core_type_name(type), core__q8_kernels());
    for (int k = 0; k < count; k++) {
        double best = 1e9;
        for (int r = 0; r < 15; r++) {
            double t0 = bench_now();
            core__q8_matmul_part(p, xq, ns[k], 0, out, y, out);
            double dt = bench_now() - t0;
            best = dt < best ? dt : best;
        }
        double gbs = (double)core_type_row_bytes(type, (uint64_t)in) * out / best / 1e9;
        kernel_result(type, "int8", core__q8_kernels(), ns[k], in, out, best, gbs);
    }
    printf("  (stored-size GB/s)\n");
    free(xq);
    core__q8w_free(p);
}

/* One weight matrix of each type that has fused kernels, in x out as a 1B model's feed-forward
 * (Llama 3.2 1B: 2048 x 8192), random quants with f16 scales of 0.01 (no subnormals), against n
 * rows of X on each kernel family: the best of a few runs, as GB/s of stored weights read and
 * GFLOP/s. A Q4_K_M model's matrices are Q4_K and Q6_K (Gemma 3 270M's also Q5_0); Q4_1 is the
 * default model's. */
static void bench_kernels(void)
{
    static const struct {
        uint32_t type;
        int scales[2]; /* byte offsets of f16 scales in a block; -1: none */
    } types[] = {{CORE_TYPE_Q4_1, {0, 2}},   {CORE_TYPE_Q5_0, {0, -1}}, {CORE_TYPE_Q5_1, {0, 2}},
                 {CORE_TYPE_Q8_0, {0, -1}},  {CORE_TYPE_Q4_K, {0, 2}},  {CORE_TYPE_Q5_K, {0, 2}},
                 {CORE_TYPE_Q6_K, {208, -1}}};
    static const int ns[] = {1, 4, 16, 32}; /* 32: the panels (from 9 rows) */
    static const core_cpu_level levels[] = {CORE_CPU_AVX512, CORE_CPU_AVX2};
    const int in = 2048, out = 8192, nmax = 32;
    float *x = malloc(sizeof(float) * (size_t)in * nmax), *y = malloc(sizeof(float) * out * nmax);
    for (int i = 0; i < in * nmax; i++)
        x[i] = (float)(i % 17) / 8.0f - 1.0f;
    printf("\nkernels: Y = X W^T, W %d x %d stored, X n x %d (GB/s of stored weights, GFLOP/s)\n",
           out, in, in);
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        uint32_t type = types[t].type;
        size_t bb = core_type_block_bytes(type), rb = core_type_row_bytes(type, (uint64_t)in);
        size_t bytes = rb * out;
        uint8_t *w = malloc(bytes);
        for (size_t i = 0; i < bytes; i++)
            w[i] = (uint8_t)(i * 2654435761u >> 13);
        uint16_t h = core_fp32_to_fp16(0.01f);
        for (size_t b = 0; b < bytes / bb; b++)
            for (int k = 0; k < 2; k++)
                if (types[t].scales[k] >= 0)
                    memcpy(w + b * bb + types[t].scales[k], &h, sizeof h);
        for (size_t l = 0; l < sizeof levels / sizeof levels[0]; l++) {
            if (core__cpu_force(levels[l]) != 0)
                continue;
            printf("  %-5s %-7s", core_type_name(type), core__qmatmul_kernels());
            for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) {
                double best = 1e9;
                for (int r = 0; r < 15; r++) {
                    double t0 = bench_now();
                    core__qmatmul(type, w, in, out, x, ns[k], y);
                    double dt = bench_now() - t0;
                    best = dt < best ? dt : best;
                }
                kernel_result(type, "f32", core__qmatmul_kernels(), ns[k], in, out, best,
                              bytes / best / 1e9);
            }
            printf("\n");
        }
        core__cpu_force(-1);
        bench_kernels_int8(type, w, in, out, x, ns, (int)(sizeof ns / sizeof ns[0]), y);
        free(w);
    }
    free(x);
    free(y);
}

/* Prefills n_seq sequences of plen tokens, then decodes steps tokens for all of them. */
static int run(bench *b, int n_seq, int plen, int steps, double *t_prefill, double *t_decode)
{
    char err[256];
    int n = n_seq * plen;
    int32_t *tok = malloc(sizeof(int32_t) * n), *pos = malloc(sizeof(int32_t) * n),
            *slot = malloc(sizeof(int32_t) * n);
    uint8_t *want = malloc((size_t)n);
    for (int s = 0; s < n_seq; s++) {
        core_kv_clear(b->kv, s);
        for (int i = 0; i < plen; i++) {
            int r = s * plen + i;
            tok[r] = 100 + (s * 7 + i * 13) % 20000;
            pos[r] = i;
            slot[r] = s;
            want[r] = i == plen - 1;
        }
    }
    double t0 = bench_now();
    core_batch pb = {.n_rows = n, .tokens = tok, .pos = pos, .slot = slot, .want_logits = want};
    int rc = core_forward(b->ctx, b->kv, &pb, NULL, b->logits, err, sizeof err);
    double t1 = bench_now();
    for (int st = 0; st < steps && rc == 0; st++) {
        for (int s = 0; s < n_seq; s++) {
            tok[s] = 100 + (st * 31 + s) % 20000;
            pos[s] = plen + st;
            slot[s] = s;
        }
        core_batch db = {.n_rows = n_seq, .tokens = tok, .pos = pos, .slot = slot};
        rc = core_forward(b->ctx, b->kv, &db, NULL, b->logits, err, sizeof err);
    }
    double t2 = bench_now();
    if (rc)
        fprintf(stderr, "bench: %s\n", err);
    *t_prefill = t1 - t0;
    *t_decode = t2 - t1;
    free(tok);
    free(pos);
    free(slot);
    free(want);
    return rc;
}

/* Decode steps of n_seq rows (one per sequence, after a short prefill) with the given per-row
 * sets; returns seconds per step. */
static double lora_step(bench *b, int n_seq, const adapter_set *const *sets, int steps)
{
    char err[256];
    int plen = 16;
    int32_t tok[64], pos[64], slot[64];
    adapter_plan *p = adapter_plan_new();
    const core_lora_plan *plan = NULL;
    for (int s = 0; s < n_seq; s++)
        core_kv_clear(b->kv, s);
    for (int i = 0; i < plen; i++) { /* prefill, one position of every sequence per call */
        for (int s = 0; s < n_seq; s++) {
            tok[s] = 100 + (s * 7 + i * 13) % 20000;
            pos[s] = i;
            slot[s] = s;
        }
        core_batch pb = {.n_rows = n_seq, .tokens = tok, .pos = pos, .slot = slot};
        adapter_plan_build(p, b->m->cfg.n_layer, n_seq, sets, &plan);
        core_forward(b->ctx, b->kv, &pb, sets ? plan : NULL, b->logits, err, sizeof err);
    }
    double best = 1e9;
    for (int st = 0; st < steps; st++) {
        for (int s = 0; s < n_seq; s++) {
            tok[s] = 100 + (st * 31 + s) % 20000;
            pos[s] = plen + st;
        }
        core_batch db = {.n_rows = n_seq, .tokens = tok, .pos = pos, .slot = slot};
        double t = bench_now();
        adapter_plan_build(p, b->m->cfg.n_layer, n_seq, sets, &plan);
        if (core_forward(b->ctx, b->kv, &db, sets ? plan : NULL, b->logits, err, sizeof err)) {
            fprintf(stderr, "bench: %s\n", err);
            break;
        }
        double dt = bench_now() - t;
        best = dt < best ? dt : best;
    }
    adapter_plan_free(p);
    return best;
}

#define ROUNDS 5

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* PEFT's names of the modules, in core's order (CORE_MOD_Q ...). */
static const char *const mod_names[] = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                        "gate_proj", "up_proj", "down_proj"};

/* Writes a rank-r adapter over every layer of the masked modules, f16. */
static int write_adapter(const char *dir, const core_config *c, int r, unsigned modules,
                         uint32_t seed)
{
    char cfg[256], targets[128] = "";
    for (int m = 0; m < CORE_MOD_COUNT; m++)
        if (modules & (1u << m))
            snprintf(targets + strlen(targets), sizeof targets - strlen(targets), "%s\"%s\"",
                     targets[0] ? "," : "", mod_names[m]);
    snprintf(cfg, sizeof cfg, "{\"r\":%d,\"lora_alpha\":%d,\"target_modules\":[%s]}", r, 2 * r,
             targets);
    return tu_write_peft_layers(dir, cfg, c, modules, r, "F16", seed);
}

/* The LoRA numbers of docs/ARCHITECTURE.md §6: load time, resident bytes, and the decode-step cost
 * of 1, 8 and 32 distinct adapters over 32 rows against base-only rows. */
static void bench_lora(bench *b)
{
    const core_config *c = &b->m->cfg;
    char err[512], dir[256];
    const char *tmp = tu_tmpdir();
    struct {
        const char *what;
        int r;
        unsigned mods;
        double target;
    } kinds[] = {{"rank-8 q,v", 8, (1u << CORE_MOD_Q) | (1u << CORE_MOD_V), 10},
                 {"rank-16 all-linear", 16, 0x7f, 25}};
    int n_rows = 32, steps = 4;
    double base = lora_step(b, n_rows, NULL, steps);
    printf("\nLoRA (f16 adapters, %d rows per decode step; base-only step %.1f ms)\n", n_rows,
           base * 1e3);
    cJSON *jl = jsection("lora", false), *jkinds = jl ? cJSON_CreateArray() : NULL;
    jnum(jl, "rows_per_step", n_rows);
    jnum(jl, "base_step_ms", base * 1e3);
    jnum(jl, "base_tok_s", n_rows / base);
    jnum(jl, "rounds", ROUNDS);
    jstr(jl, "dtype", "F16");
    if (jl)
        cJSON_AddItemToObject(jl, "kinds", jkinds);
    for (size_t k = 0; k < sizeof kinds / sizeof *kinds; k++) {
        adapter *ads[32];
        double load = 1e9;
        for (int i = 0; i < 32; i++) {
            snprintf(dir, sizeof dir, "%s/a%zu_%d", tmp, k, i);
            if (write_adapter(dir, c, kinds[k].r, kinds[k].mods, (uint32_t)(i + 1))) {
                printf("bench: cannot write %s\n", dir);
                return;
            }
            double t = bench_now();
            ads[i] = adapter_load(dir, c, err, sizeof err);
            double dt = bench_now() - t;
            load = dt < load ? dt : load;
            if (!ads[i]) {
                printf("bench: %s\n", err);
                return;
            }
        }
        printf("  %-20s load %.1f ms, %.2f MB resident per adapter\n", kinds[k].what, load * 1e3,
               ads[0]->bytes / 1e6);
        cJSON *jk = jkinds ? cJSON_CreateObject() : NULL, *jd = jk ? cJSON_CreateArray() : NULL;
        if (jk) {
            cJSON *tm = cJSON_AddArrayToObject(jk, "target_modules");
            for (int mod = 0; mod < CORE_MOD_COUNT; mod++)
                if (kinds[k].mods & (1u << mod))
                    cJSON_AddItemToArray(tm, cJSON_CreateString(mod_names[mod]));
            cJSON_AddItemToArray(jkinds, jk);
        }
        jstr(jk, "kind", kinds[k].what);
        jnum(jk, "rank", kinds[k].r);
        jnum(jk, "load_ms", load * 1e3);
        jnum(jk, "resident_mb", ads[0]->bytes / 1e6);
        jnum(jk, "target_pct", kinds[k].target);
        jnum(jk, "target_at_distinct", 32);
        if (jk)
            cJSON_AddItemToObject(jk, "distinct", jd);
        int distinct[] = {1, 8, 32};
        for (size_t d = 0; d < 3; d++) {
            adapter_set *sets[32];
            const adapter_set *rows[32];
            for (int i = 0; i < 32; i++) {
                adapter_set_item it = {ads[i % distinct[d]], 1.0f};
                sets[i] = adapter_set_new(&it, 1);
                rows[i] = sets[i];
            }
            /* Base-only and adapter steps alternate, and the median of the paired ratios is
             * reported: on a shared VM the machine's speed drifts by 10-20% between runs. */
            double ratio[ROUNDS], tb[ROUNDS], tl[ROUNDS];
            for (int rr = 0; rr < ROUNDS; rr++) {
                tb[rr] = lora_step(b, n_rows, NULL, steps);
                tl[rr] = lora_step(b, n_rows, rows, steps);
                ratio[rr] = tl[rr] / tb[rr];
            }
            qsort(ratio, ROUNDS, sizeof *ratio, cmp_double);
            qsort(tb, ROUNDS, sizeof *tb, cmp_double);
            qsort(tl, ROUNDS, sizeof *tl, cmp_double);
            double t = tl[ROUNDS / 2];
            base = tb[ROUNDS / 2];
            double extra_mb = distinct[d] * ads[0]->bytes / 1e6;
            printf("    %2d distinct: step %.1f ms (base %.1f ms), %+.1f%% over base (median of %d "
                   "paired runs; target <= %.0f%% at 32), adapter bytes read %.1f MB (%.1f GB/s "
                   "over the extra time)\n",
                   distinct[d], t * 1e3, base * 1e3, 100 * (ratio[ROUNDS / 2] - 1), ROUNDS,
                   kinds[k].target, extra_mb, t > base ? extra_mb / 1e3 / (t - base) : 0.0);
            cJSON *jr = jd ? cJSON_CreateObject() : NULL;
            if (jr) {
                cJSON_AddItemToArray(jd, jr);
                cJSON *rs = cJSON_AddArrayToObject(jr, "paired_ratios");
                for (int rr = 0; rr < ROUNDS; rr++)
                    cJSON_AddItemToArray(rs, cJSON_CreateNumber(round(ratio[rr] * 1e5) / 1e5));
            }
            jnum(jr, "adapters", distinct[d]);
            jnum(jr, "step_ms", t * 1e3);
            jnum(jr, "base_step_ms", base * 1e3);
            jnum(jr, "tok_s", n_rows / t);
            jnum(jr, "base_tok_s", n_rows / base);
            jnum(jr, "overhead_pct", 100 * (ratio[ROUNDS / 2] - 1));
            jnum(jr, "adapter_mb_read", extra_mb);
            jnum(jr, "extra_gbs", t > base ? extra_mb / 1e3 / (t - base) : 0.0);
            for (int i = 0; i < 32; i++)
                adapter_set_free(sets[i]);
        }
        for (int i = 0; i < 32; i++)
            adapter_unref(ads[i]);
    }
    tu_rmrf(tmp);
}

/* rows decoding at position ~1024 over caches filled with random K and V (no prefill: the
 * attention's cost does not depend on the values), f32 or f16 KV. */
static int long_context_run(bench *b, const char *what_suffix, int rows, int f16)
{
    enum { MAX_ROWS = 32, POS = 1024 };
    const core_config *c = &b->m->cfg;
    int steps = rows == 1 ? 32 : 8;
    char err[256], what[96];
    int kv_dim = c->n_head_kv * c->head_dim;
    int32_t tok[MAX_ROWS], pos[MAX_ROWS], slot[MAX_ROWS];
    core_kv *kv = core_kv_new(c, rows, POS + steps + 1, err, sizeof err);
    if (!kv || core_kv_set_f16(kv, f16)) {
        fprintf(stderr, "bench: %s\n", err);
        core_kv_free(kv);
        return 1;
    }
    for (int s = 0; s < rows; s++) {
        if (core_kv_fill_random(kv, s, POS, 12345u + (uint32_t)s)) {
            fprintf(stderr, "bench: out of memory for the KV cache\n");
            core_kv_free(kv);
            return 1;
        }
    }
    double best = 1e9;
    for (int st = 0; st < steps; st++) {
        for (int s = 0; s < rows; s++) {
            tok[s] = 100 + (st * 31 + s) % 20000;
            pos[s] = POS + st;
            slot[s] = s;
        }
        core_batch db = {.n_rows = rows, .tokens = tok, .pos = pos, .slot = slot};
        double t = bench_now();
        if (core_forward(b->ctx, kv, &db, NULL, b->logits, err, sizeof err)) {
            fprintf(stderr, "bench: %s\n", err);
            core_kv_free(kv);
            return 1;
        }
        t = bench_now() - t;
        best = t < best ? t : best;
    }
    double kv_bytes = (double)c->n_layer * rows * (POS + steps / 2) * kv_dim * 2 * (f16 ? 2 : 4);
    snprintf(what, sizeof what, "decode %d row%s at pos %d, %s KV%s", rows, rows > 1 ? "s" : "",
             POS, f16 ? "f16" : "f32", what_suffix);
    printf("%-35s %9.1f tok/s   %6.1f ms/step (best of %d); the KV cache read: %.0f MB/step, "
           "%.1f GB/s\n",
           what, rows / best, best * 1e3, steps, kv_bytes / 1e6, kv_bytes / best / 1e9);
    cJSON *j = jrow("forward");
    jstr(j, "scenario", "long_context");
    jstr(j, "mode", b->mode);
    jstr(j, "label", what);
    jstr(j, "kv", f16 ? "f16" : "f32");
    jnum(j, "sequences", rows);
    jnum(j, "rows_per_step", rows);
    jnum(j, "position", POS);
    jnum(j, "tok_s", rows / best);
    jnum(j, "step_ms", best * 1e3);
    jnum(j, "kv_mb_per_step", kv_bytes / 1e6);
    jnum(j, "kv_gbs", kv_bytes / best / 1e9);
    core_kv_free(kv);
    return 0;
}

/* One row and 32 rows decoding at position ~1024, with f32 and with f16 KV: where a step reads as
 * much KV cache as weights (one stream of a long chat) or far more (32 of them). */
static int bench_long_context(bench *b, const char *what_suffix)
{
    static const int rows[] = {1, 32};
    for (int r = 0; r < 2; r++)
        for (int f16 = 0; f16 < 2; f16++)
            if (long_context_run(b, what_suffix, rows[r], f16))
                return 1;
    return 0;
}

/* Prefill of one 128-token prompt and batched decode at 1, 8, 32 and 64 rows; what is appended
 * to every label. */
static int bench_forward(bench *b, const char *what_suffix)
{
    const core_config *c = &b->m->cfg;
    double lin = 0;
    for (int mod = 0; mod < CORE_MOD_COUNT; mod++)
        lin += (double)core_module_in(c, mod) * core_module_out(c, mod);
    double tp, td;
    int plen = 128, steps = 32;
    char what[80];
    if (run(b, 1, plen, steps, &tp, &td))
        return 1;
    /* Prefill computes the head for one row only. */
    double pf = (lin * c->n_layer * 2.0 * plen + 2.0 * c->n_vocab * c->n_embd) / tp / 1e9;
    snprintf(what, sizeof what, "prefill, 1 x 128 tokens%s", what_suffix);
    printf("%-35s %9.1f tok/s   %7.1f GFLOP/s (%3.0f%% of peak)\n", what, plen / tp, pf,
           100 * pf / b->peak);
    cJSON *j = jrow("forward");
    jstr(j, "scenario", "prefill");
    jstr(j, "mode", b->mode);
    jstr(j, "label", what);
    jnum(j, "sequences", 1);
    jnum(j, "rows_per_step", plen);
    jnum(j, "tok_s", plen / tp);
    jnum(j, "gflops", pf);
    jnum(j, "pct_of_peak", 100 * pf / b->peak);
    snprintf(what, sizeof what, "decode, 1 stream%s", what_suffix);
    report(b, what, "decode_1_stream", 1, steps, td, 1, steps);
    int batches[] = {1, 8, 32, 64};
    for (size_t i = 0; i < sizeof batches / sizeof batches[0]; i++) {
        if (run(b, batches[i], 32, steps, &tp, &td))
            return 1;
        snprintf(what, sizeof what, "batched decode, batch %d%s", batches[i], what_suffix);
        report(b, what, "batched_decode", batches[i], (double)batches[i] * steps, td, batches[i],
               steps);
        if (batches[i] == 32 && b->fma > 0) {
            double g = b->flops_per_row * batches[i] * steps / td / 1e9;
            printf("  the 32-row step: %.1f GFLOP/s%s = %.0f%% of the %s FMA peak (%.1f)\n", g,
                   strcmp(b->mode, "int8") ? "" : "-equivalent", 100 * g / b->fma,
                   core__qmatmul_kernels(), b->fma);
            cJSON *jf = jrow("step32_fma");
            jstr(jf, "mode", b->mode);
            jstr(jf, "kernels", core__qmatmul_kernels());
            jnum(jf, "gflops", g);
            jnum(jf, "fma_gflops", b->fma);
            jnum(jf, "pct_of_fma_peak", 100 * g / b->fma);
        }
    }
    return bench_long_context(b, what_suffix);
}

/* --peer: the scenarios of llama.cpp's llama-bench (pp128, pp512, tg128) and llama-batched-bench
 * (-npp 128 -ntg 128 -npl 16) on the same model, for tools/peer_bench.py, which runs both and
 * prints the ratios. Each is the median of three runs; the 16 sequences give their prefill (16 x
 * 128 rows in one forward pass) and decode (128 steps of 16 rows) apart, as batched-bench does. */
static int cmp_double(const void *a, const void *b);
static int peer_only; /* --peer */

static int bench_peer(bench *b)
{
    struct {
        const char *name, *label;
        int n_seq, plen, steps;
        bool prefill; /* the result is the prefill's tok/s, else the decode's */
    } sc[] = {
        {"pp128", "prefill 128", 1, 128, 0, true},
        {"pp512", "prefill 512", 1, 512, 0, true},
        {"tg128", "one stream, 128 tokens", 1, 1, 128, false},
        {"pp128_x16", "16 sequences, prefill 16 x 128", 16, 128, 0, true},
        {"tg128_x16", "16 sequences, 128 steps of 16", 16, 128, 128, false},
    };
    for (size_t i = 0; i < sizeof sc / sizeof sc[0]; i++) {
        double r[3];
        for (int k = 0; k < 3; k++) {
            double tp, td;
            if (run(b, sc[i].n_seq, sc[i].plen, sc[i].steps, &tp, &td))
                return 1;
            r[k] = sc[i].prefill ? sc[i].n_seq * sc[i].plen / tp : sc[i].n_seq * sc[i].steps / td;
        }
        qsort(r, 3, sizeof r[0], cmp_double);
        printf("%-35s %9.1f tok/s   (runs %.1f .. %.1f)\n", sc[i].label, r[1], r[0], r[2]);
        fflush(stdout);
        cJSON *j = jrow("peer");
        jstr(j, "scenario", sc[i].name);
        jstr(j, "mode", b->mode);
        jstr(j, "label", sc[i].label);
        jnum(j, "tok_s", r[1]);
        jnum(j, "tok_s_min", r[0]);
        jnum(j, "tok_s_max", r[2]);
    }
    return 0;
}

/* The forward passes of one activation mode: make bench's, or --peer's. */
static int bench_mode(bench *b, const char *what_suffix)
{
    return peer_only ? bench_peer(b) : bench_forward(b, what_suffix);
}

static bool con_allows(void *ctx, int32_t id)
{
    return core_gmatch_allows(ctx, id);
}

static int32_t con_mask(void *ctx, uint64_t *bits)
{
    return core_gmatch_mask(ctx, bits);
}

/* Structured outputs: what a constrained row costs next to a free one. A JSON answer to a
 * schema (nested object, $ref, pattern, format, integer range, enum) is walked token by token
 * with a fresh matcher (every mask computed cold, as a new request sees them), then the same
 * states again (cached); the sampler's cost free and constrained on logits whose argmax is never
 * allowed (the full mask every token: the worst case); both next to a decode step. */
static int bench_structured(bench *b)
{
    static const char schema_text[] =
        "{\"$defs\":{\"item\":{\"type\":\"object\",\"properties\":{\"sku\":{\"type\":\"string\","
        "\"pattern\":\"^[A-Z]{3}-[0-9]{3}$\"},\"qty\":{\"type\":\"integer\",\"minimum\":1,"
        "\"maximum\":99},\"note\":{\"type\":\"string\",\"maxLength\":40}},\"required\":[\"sku\","
        "\"qty\"],\"additionalProperties\":false}},\"type\":\"object\",\"properties\":{\"id\":"
        "{\"type\":\"string\",\"format\":\"uuid\"},\"customer\":{\"type\":\"string\"},\"items\":"
        "{\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/item\"},\"maxItems\":8},\"status\":"
        "{\"enum\":[\"open\",\"paid\",\"shipped\"]}},\"required\":[\"id\",\"customer\",\"items\","
        "\"status\"],\"additionalProperties\":false}";
    static const char answer[] =
        "{\"id\": \"3f2c1a9e-8b7d-4c6e-9f10-a1b2c3d4e5f6\", \"customer\": \"Ada Lovelace, "
        "12 St James's Square, London\", \"items\": [{\"sku\": \"ABC-123\", \"qty\": 2, \"note\": "
        "\"gift wrap, please\"}, {\"sku\": \"XYZ-987\", \"qty\": 14}], \"status\": \"paid\"}";
    char err[256];
    core_tokenizer *tok = core_tokenizer_new(b->m->gguf, err, sizeof err);
    cJSON *js = cJSON_Parse(schema_text);
    core_grammar *g = NULL;
    if (!tok || !js || srv_schema_compile(js, &g, err, sizeof err)) {
        fprintf(stderr, "bench: structured: %s\n", err);
        return 1;
    }
    double t0 = bench_now();
    core_gvocab *v = core_gvocab_new(tok, err, sizeof err);
    double t_vocab = bench_now() - t0;
    int32_t n = b->m->cfg.n_vocab, *ids = NULL;
    size_t n_ids = 0;
    if (!v || core_tokenize(tok, answer, strlen(answer), false, &ids, &n_ids)) {
        fprintf(stderr, "bench: structured: %s\n", err);
        return 1;
    }
    uint64_t *bits = malloc(((size_t)n + 63) / 64 * sizeof *bits);
    double cold = 0, cold_max = 0, warm = 0;
    for (int pass = 0; pass < 2; pass++) {
        core_gmatch *gm = core_gmatch_new(g, v, err, sizeof err);
        for (size_t i = 0; i < n_ids && gm; i++) {
            t0 = bench_now();
            core_gmatch_mask(gm, bits);
            double t = bench_now() - t0;
            if (pass == 0) {
                cold += t;
                cold_max = t > cold_max ? t : cold_max;
            }
            t0 = bench_now();
            core_gmatch_mask(gm, bits); /* the same state: from the cache */
            warm += bench_now() - t0;
            if (core_gmatch_accept(gm, ids[i]) < 0) {
                fprintf(stderr, "bench: structured: token %zu of the answer refused\n", i);
                return 1;
            }
        }
        core_gmatch_free(gm);
    }
    /* the sampler, free and constrained, on logits favouring a token never allowed */
    float *lg = malloc(sizeof(float) * (size_t)n);
    for (int32_t i = 0; i < n; i++)
        lg[i] = (float)((i * 7919) % 1000) / 250.0f;
    lg[0] = 50; /* "<|endoftext|>"-like ids are never allowed mid-JSON */
    core_sampler_params sp;
    core_sampler_params_default(&sp);
    double t_free = 0, t_con = 0;
    for (int greedy = 1; greedy >= 0; greedy--) {
        sp.temperature = greedy ? 0.0f : 0.8f;
        core_sampler *fs = core_sampler_new(&sp, n, err, sizeof err);
        core_sampler *cs = core_sampler_new(&sp, n, err, sizeof err);
        core_gmatch *gm = core_gmatch_new(g, v, err, sizeof err);
        core_sampler_constraint con = {.ctx = gm, .allows = con_allows, .mask = con_mask};
        core_sampler_set_constraint(cs, &con);
        t0 = bench_now();
        for (size_t i = 0; i < n_ids; i++)
            core_sampler_sample(fs, lg, ids, i, NULL);
        t_free += bench_now() - t0;
        t0 = bench_now();
        for (size_t i = 0; i < n_ids; i++) {
            core_sampler_sample(cs, lg, ids, i, NULL);
            core_gmatch_accept(gm, ids[i]);
        }
        t_con += bench_now() - t0;
        core_sampler_free(fs);
        core_sampler_free(cs);
        core_gmatch_free(gm);
    }
    t_free /= 2.0 * (double)n_ids;
    t_con /= 2.0 * (double)n_ids;
    double tp, t1, t32;
    if (run(b, 1, 32, 16, &tp, &t1) || run(b, 32, 32, 8, &tp, &t32))
        return 1;
    t1 /= 16;
    t32 /= 8;
    double per = cold / (double)n_ids;
    printf(
        "\nstructured outputs (a %zu-token JSON answer to a nested schema, %d-token vocabulary):\n",
        n_ids, n);
    printf("%-35s %9.2f ms, once per server\n", "vocabulary sorted for masks", t_vocab * 1e3);
    printf("%-35s %9.3f ms mean, %.3f ms max\n", "token mask, computed (cold)", per * 1e3,
           cold_max * 1e3);
    printf("%-35s %9.4f ms mean\n", "token mask, cached state", warm / (2.0 * (double)n_ids) * 1e3);
    printf("%-35s %9.3f ms per token\n", "sampling a free row", t_free * 1e3);
    printf("%-35s %9.3f ms per token (mask every token)\n", "sampling a constrained row",
           t_con * 1e3);
    printf("%-35s %9.2f ms; the constrained row adds %.1f%% (worst case, cold masks)\n",
           "decode step, 1 stream", t1 * 1e3, 100 * (t_con - t_free) / t1);
    printf("%-35s %9.2f ms; one constrained row adds %.1f%% to the step\n",
           "decode step, 32 streams", t32 * 1e3, 100 * (t_con - t_free) / t32);
    cJSON *j = jsection("structured", false);
    jnum(j, "answer_tokens", (double)n_ids);
    jnum(j, "vocab", n);
    jnum(j, "vocab_sort_ms", t_vocab * 1e3);
    jnum(j, "mask_cold_ms_mean", per * 1e3);
    jnum(j, "mask_cold_ms_max", cold_max * 1e3);
    jnum(j, "mask_cached_ms_mean", warm / (2.0 * (double)n_ids) * 1e3);
    jnum(j, "sample_free_ms", t_free * 1e3);
    jnum(j, "sample_constrained_ms", t_con * 1e3);
    jnum(j, "decode_step_1_ms", t1 * 1e3);
    jnum(j, "decode_step_32_ms", t32 * 1e3);
    jnum(j, "constrained_pct_of_step_1", 100 * (t_con - t_free) / t1);
    jnum(j, "constrained_pct_of_step_32", 100 * (t_con - t_free) / t32);
    free(lg);
    free(bits);
    free(ids);
    core_gvocab_free(v);
    core_grammar_free(g);
    cJSON_Delete(js);
    core_tokenizer_free(tok);
    return 0;
}

static int run_bench(const char *path, const char *msg, int only_sgemm, int only_lora,
                     int only_kernels, int only_forward, int only_structured,
                     const char *json_path);

int main(int argc, char **argv)
{
    char msg[256] = "";
    core_blas_ensure_kernel(argc, argv, msg, sizeof msg);
    const char *path = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
    const char *json_path = NULL;
    int only_sgemm = 0, only_lora = 0, only_kernels = 0, only_forward = 0, only_structured = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-m") && i + 1 < argc)
            path = argv[++i];
        else if (!strcmp(argv[i], "--json") && i + 1 < argc)
            json_path = argv[++i]; /* also write every result as JSON there */
        else if (!strcmp(argv[i], "--sgemm-only"))
            only_sgemm = 1; /* for tools/bench_server.sh: one line, "sgemm_gflops X" */
        else if (!strcmp(argv[i], "--lora-only"))
            only_lora = 1;
        else if (!strcmp(argv[i], "--kernels-only"))
            only_kernels = 1;
        else if (!strcmp(argv[i], "--structured-only"))
            only_structured = 1; /* the constrained row's cost (needs the model) */
        else if (!strcmp(argv[i], "--forward-only"))
            only_forward = 1; /* the model's forward passes, f32 and int8: no kernels, no LoRA */
        else if (!strcmp(argv[i], "--peer"))
            peer_only = only_forward =
                1; /* llama-bench's scenarios, f32 and int8 (peer_bench.py) */
        else {
            fprintf(
                stderr,
                "usage: bench_core [-m MODEL] [--json FILE] [--sgemm-only | "
                "--lora-only | --kernels-only | --forward-only | --structured-only | --peer]\n");
            return 2;
        }
    }
    int rc = run_bench(path, msg, only_sgemm, only_lora, only_kernels, only_forward,
                       only_structured, json_path);
    if (json_doc && rc == 0)
        rc = bench_json_write(json_path, json_doc) ? 1 : 0;
    cJSON_Delete(json_doc);
    return rc;
}

/* The document's head: what ran, where and when. */
static void json_head(const char *path, const char *blas_msg, const char *parts)
{
    char date[32];
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", &tm);
    cJSON_AddStringToObject(json_doc, "schema", "adaptree-bench-core/1");
    cJSON_AddStringToObject(json_doc, "tool", "bench_core");
    cJSON_AddStringToObject(json_doc, "date", date);
    cJSON_AddStringToObject(json_doc, "commit", srv_build_commit);
    cJSON_AddStringToObject(json_doc, "parts", parts);
    jstr(json_doc, "model_path", path);
    cJSON *mc = jsection("machine", false);
    json_cpu(mc);
    jstr(mc, "kernels", core__qmatmul_kernels());
    jstr(mc, "int8_kernels", core__q8_available() ? core__q8_kernels() : NULL);
    jstr(mc, "openblas_core", core_blas_corename());
    jnum(mc, "openblas_threads", core_blas_threads());
    jstr(mc, "openblas_note", blas_msg);
    double load[3];
    if (getloadavg(load, 3) == 3)
        jnum(mc, "load_average_1m", load[0]);
}

static int run_bench(const char *path, const char *msg, int only_sgemm, int only_lora,
                     int only_kernels, int only_forward, int only_structured, const char *json_path)
{
    if (json_path) {
        json_doc = cJSON_CreateObject();
        json_head(path, msg,
                  only_sgemm        ? "sgemm"
                  : only_kernels    ? "kernels"
                  : only_structured ? "structured"
                  : only_lora       ? "lora"
                  : peer_only       ? "peer"
                  : only_forward    ? "forward"
                                    : "all");
    }
    if (only_sgemm) {
        double g = sgemm_peak();
        printf("sgemm_gflops %.1f\n", g);
        jnum(jsection("machine", false), "sgemm_gflops", g);
        return 0;
    }
    if (only_kernels) {
        bench_kernels();
        return 0;
    }
    printf("openblas core: %s, %d threads%s%s\n", core_blas_corename(), core_blas_threads(),
           msg[0] ? " — " : "", msg);
    bench b = {0};
    b.peak = sgemm_peak();
    b.bw = read_bandwidth();
    double fma2 = fma_peak(false), fma5 = fma_peak(true);
    b.fma = core__cpu_level() >= CORE_CPU_AVX512 ? fma5 : fma2;
    printf("machine: sgemm peak %.1f GFLOP/s, read bandwidth %.1f GB/s, FMA peak %.1f GFLOP/s "
           "(AVX2) / %.1f (AVX-512), all cores\n\n",
           b.peak, b.bw, fma2, fma5);
    jnum(jsection("machine", false), "sgemm_gflops", b.peak);
    jnum(jsection("machine", false), "read_gbs", b.bw);
    jnum(jsection("machine", false), "fma_avx2_gflops", fma2);
    jnum(jsection("machine", false), "fma_avx512_gflops", fma5);
    b.mode = "f32";

    char err[512];
    core_model *m = core_model_load(path, err, sizeof err);
    if (!m) {
        fprintf(stderr, "bench: %s\n", err);
        return 1;
    }
    const core_config *c = &m->cfg;
    double lin = 0;
    for (int mod = 0; mod < CORE_MOD_COUNT; mod++)
        lin += (double)core_module_in(c, mod) * core_module_out(c, mod);
    b.m = m;
    b.flops_per_row = 2.0 * (lin * c->n_layer + (double)c->n_vocab * c->n_embd);
    b.weight_bytes = 4.0 * (lin * c->n_layer + (double)c->n_vocab * c->n_embd);
    for (uint64_t i = 0; i < m->gguf->n_tensors; i++)
        if (m->gguf->tensors[i].n_dims == 2) /* every matrix: the linear layers and the head */
            b.qweight_bytes += (double)m->gguf->tensors[i].size;
    b.ctx = core_ctx_new(m);
    b.kv = core_kv_new(c, 64, 1024, err, sizeof err);
    b.logits = malloc(sizeof(float) * (size_t)c->n_vocab * 64);
    int qrows = core__qmatmul_max_rows();
    char rows[32] = "any number of";
    if (qrows != INT_MAX)
        snprintf(rows, sizeof rows, "up to %d", qrows);
    printf("model: %s, %.1f M linear params; a step reads %.0f MB of stored weights (%s rows, "
           "%s kernels) or %.0f MB of f32 weights\n\n",
           path, (lin * c->n_layer + (double)c->n_vocab * c->n_embd) / 1e6, b.qweight_bytes / 1e6,
           rows, core__qmatmul_kernels(), b.weight_bytes / 1e6);
    cJSON *jm = jsection("model", false);
    jstr(jm, "path", path);
    jstr(jm, "architecture", c->arch);
    jnum(jm, "layers", c->n_layer);
    jnum(jm, "embedding", c->n_embd);
    jnum(jm, "linear_params_m", (lin * c->n_layer + (double)c->n_vocab * c->n_embd) / 1e6);
    jnum(jm, "stored_weight_mb_per_step", b.qweight_bytes / 1e6);
    jnum(jm, "f32_weight_mb_per_step", b.weight_bytes / 1e6);
    if (qrows == INT_MAX)
        jstr(jm, "stored_kernel_rows", "any");
    else
        jnum(jm, "stored_kernel_rows", qrows);

    if (only_structured)
        return bench_structured(&b);
    if (!only_lora && bench_mode(&b, ""))
        return 1;
    if (!only_lora && core__q8_available()) {
        int packed = core_model_set_int8(m, 1, err, sizeof err);
        printf("\nint8 activations (serve --int8; %d weights repacked for the %s kernels):\n",
               packed, core__q8_kernels());
        cJSON *ji = jsection("int8", false);
        cJSON_AddBoolToObject(ji, "available", true);
        jnum(ji, "weights_repacked", packed);
        jstr(ji, "kernels", core__q8_kernels());
        b.mode = "int8";
        if (packed < 0)
            printf("bench: %s\n", err);
        else if (bench_mode(&b, " (int8)"))
            return 1;
        core_model_set_int8(m, 0, NULL, 0);
        b.mode = "f32";
    } else if (!only_lora) {
        printf("\nint8 activations: neither AVX2 nor AVX-512 VNNI on this CPU\n");
        cJSON_AddBoolToObject(jsection("int8", false), "available", false);
    }
    if (!only_lora && !only_forward)
        bench_kernels();
    if (!only_lora && !only_forward && bench_structured(&b))
        return 1;
    if (!only_forward)
        bench_lora(&b);
    free(b.logits);
    core_kv_free(b.kv);
    core_ctx_free(b.ctx);
    core_model_free(m);
    return 0;
}
