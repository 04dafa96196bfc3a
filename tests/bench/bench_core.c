/* `make bench`: the core's speed next to this machine's own limits. It measures sgemm peak and
 * memory read bandwidth first, then single-stream prefill and decode and batched decode, and
 * prints for each the achieved GFLOP/s and GB/s and their ratio to the measured limits. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/blas.h"
#include "core/model.h"

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
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
        double t = now_s();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1, a, n, b, n, 0, c, n);
        double g = 2.0 * n * n * n / (now_s() - t) / 1e9;
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
        double t = now_s();
        sink += cblas_sasum((blasint)n, a, 1);
        double g = (double)n * sizeof(float) / (now_s() - t) / 1e9;
        best = g > best ? g : best;
    }
    (void)sink;
    free(a);
    return best;
}

typedef struct bench {
    const core_model *m;
    core_ctx *ctx;
    core_kv *kv;
    float *logits;
    double flops_per_row; /* linear layers + head, per token */
    double weight_bytes;  /* f32 weights read per step */
    double peak, bw;
} bench;

static void report(const bench *b, const char *what, double toks, double secs, double rows_per_step,
                   double steps)
{
    double gflops = b->flops_per_row * toks / secs / 1e9;
    double gbs = b->weight_bytes * steps / secs / 1e9;
    printf("%-28s %9.1f tok/s   %7.1f GFLOP/s (%3.0f%% of peak)   %6.1f GB/s (%3.0f%% of bw)"
           "   [%.0f rows/step]\n",
           what, toks / secs, gflops, 100 * gflops / b->peak, gbs, 100 * gbs / b->bw,
           rows_per_step);
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
    double t0 = now_s();
    core_batch pb = {.n_rows = n, .tokens = tok, .pos = pos, .slot = slot, .want_logits = want};
    int rc = core_forward(b->ctx, b->kv, &pb, NULL, b->logits, err, sizeof err);
    double t1 = now_s();
    for (int st = 0; st < steps && rc == 0; st++) {
        for (int s = 0; s < n_seq; s++) {
            tok[s] = 100 + (st * 31 + s) % 20000;
            pos[s] = plen + st;
            slot[s] = s;
        }
        core_batch db = {.n_rows = n_seq, .tokens = tok, .pos = pos, .slot = slot};
        rc = core_forward(b->ctx, b->kv, &db, NULL, b->logits, err, sizeof err);
    }
    double t2 = now_s();
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

int main(int argc, char **argv)
{
    char msg[256] = "";
    core_blas_ensure_kernel(argc, argv, msg, sizeof msg);
    const char *path = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "-m"))
            path = argv[++i];
    printf("openblas core: %s, %d threads%s%s\n", core_blas_corename(), core_blas_threads(),
           msg[0] ? " — " : "", msg);
    bench b = {0};
    b.peak = sgemm_peak();
    b.bw = read_bandwidth();
    printf("machine: sgemm peak %.1f GFLOP/s, read bandwidth %.1f GB/s\n\n", b.peak, b.bw);

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
    b.ctx = core_ctx_new(m);
    b.kv = core_kv_new(c, 64, 1024, err, sizeof err);
    b.logits = malloc(sizeof(float) * (size_t)c->n_vocab * 64);
    printf("model: %s, %.1f M linear params, f32 weights %.0f MB read per step\n\n", path,
           (lin * c->n_layer + (double)c->n_vocab * c->n_embd) / 1e6, b.weight_bytes / 1e6);

    double tp, td;
    int plen = 128, steps = 32;
    if (run(&b, 1, plen, steps, &tp, &td))
        return 1;
    /* Prefill computes the head for one row only. */
    double pf = (lin * c->n_layer * 2.0 * plen + 2.0 * c->n_vocab * c->n_embd) / tp / 1e9;
    printf("%-28s %9.1f tok/s   %7.1f GFLOP/s (%3.0f%% of peak)\n", "prefill, 1 x 128 tokens",
           plen / tp, pf, 100 * pf / b.peak);
    report(&b, "decode, 1 stream", steps, td, 1, steps);
    int batches[] = {1, 8, 32, 64};
    for (size_t i = 0; i < sizeof batches / sizeof batches[0]; i++) {
        char what[64];
        if (run(&b, batches[i], 32, steps, &tp, &td))
            return 1;
        snprintf(what, sizeof what, "batched decode, batch %d", batches[i]);
        report(&b, what, (double)batches[i] * steps, td, batches[i], steps);
    }
    free(b.logits);
    core_kv_free(b.kv);
    core_ctx_free(b.ctx);
    core_model_free(m);
    return 0;
}
