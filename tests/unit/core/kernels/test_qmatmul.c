/* Tests for core/kernels/qmatmul.c: for every type it takes, random blocks against dequantize-then-
 * multiply in double, on the AVX-512, AVX2 and portable kernels (the first two bit for bit alike);
 * the rebuilt weights bit for bit against core_dequant_row; a row's result independent of the other
 * rows of X. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/kernels/cpu_internal.h"
#include "core/kernels/dequant.h"
#include "core/kernels/qmatmul_internal.h"
#include "tests/test.h"

static uint64_t rng;

static uint32_t urand(void)
{
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (uint32_t)(rng >> 32);
}

/* Uniform in [-1, 1). */
static float frand(void)
{
    return (float)((urand() >> 8) / (double)(1u << 24)) * 2.0f - 1.0f;
}

static void put_f16(uint8_t *p, float v)
{
    uint16_t h = core_fp32_to_fp16(v);
    memcpy(p, &h, sizeof h);
}

/* A block scale: mostly normal f16 values of either sign, sometimes an f16 subnormal. */
static float rand_scale(void)
{
    if (urand() % 16 == 0)
        return frand() * 6e-5f;
    return frand() * 0.1f;
}

/* rows rows of in elements of the type, random quants and valid f16 scales. */
static uint8_t *rand_weights(uint32_t type, int in, int rows, size_t *row_bytes)
{
    size_t rb = (size_t)core_type_row_bytes(type, (uint64_t)in);
    size_t bb = core_type_block_bytes(type), nb = (size_t)rows * rb / bb;
    uint8_t *w = malloc((size_t)rows * rb + 1);
    for (size_t i = 0; i < (size_t)rows * rb; i++)
        w[i] = (uint8_t)urand();
    for (size_t i = 0; i < nb; i++) {
        uint8_t *b = w + i * bb;
        switch (type) {
        case CORE_TYPE_F32: {
            float v = frand();
            memcpy(b, &v, sizeof v);
            break;
        }
        case CORE_TYPE_F16:
            put_f16(b, frand());
            break;
        case CORE_TYPE_BF16: {
            uint16_t h = core_fp32_to_bf16(frand());
            memcpy(b, &h, sizeof h);
            break;
        }
        case CORE_TYPE_Q4_1:
        case CORE_TYPE_Q5_1:
        case CORE_TYPE_Q4_K:
        case CORE_TYPE_Q5_K:
            put_f16(b, rand_scale());
            put_f16(b + 2, rand_scale());
            break;
        case CORE_TYPE_Q6_K:
            put_f16(b + 208, rand_scale() * 0.1f);
            break;
        default: /* Q4_0, Q5_0, Q8_0 */
            put_f16(b, rand_scale());
            break;
        }
    }
    *row_bytes = rb;
    return w;
}

typedef struct shape {
    int in, out;
} shape;

/* Shapes: in a multiple of the block, some past the 1024-element chunk; out never a multiple
 * of 8. */
static const shape legacy_shapes[] = {{32, 1}, {96, 13}, {576, 37}, {1088, 5}, {2080, 3}};
static const shape kquant_shapes[] = {{256, 7}, {512, 11}, {1280, 5}};
static const shape float_shapes[] = {{1, 3}, {7, 5}, {13, 9}, {29, 13}, {576, 11}, {1037, 3}};

static const uint32_t all_types[] = {CORE_TYPE_Q4_0, CORE_TYPE_Q4_1, CORE_TYPE_Q5_0, CORE_TYPE_Q5_1,
                                     CORE_TYPE_Q8_0, CORE_TYPE_Q4_K, CORE_TYPE_Q5_K, CORE_TYPE_Q6_K,
                                     CORE_TYPE_F32,  CORE_TYPE_F16,  CORE_TYPE_BF16};

static const shape *shapes_of(uint32_t type, int *count)
{
    size_t be = core_type_block_elems(type);
    if (be == 256) {
        *count = (int)(sizeof kquant_shapes / sizeof kquant_shapes[0]);
        return kquant_shapes;
    }
    if (be == 32) {
        *count = (int)(sizeof legacy_shapes / sizeof legacy_shapes[0]);
        return legacy_shapes;
    }
    *count = (int)(sizeof float_shapes / sizeof float_shapes[0]);
    return float_shapes;
}

/* core__qmatmul against the dequantized weights multiplied in double, for n = 1..9 and 33 (past
 * one pass of 32 rows of X). The error of each output is taken relative to Σ|w·x|, the scale of
 * a float summation's rounding. Also checks that every row of X gets the same bits whatever n
 * is. Returns the worst relative error, or -1 after a failure (printed). */
static double check_type(uint32_t type)
{
    static const int ns[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 33};
    int n_shapes;
    const shape *sh = shapes_of(type, &n_shapes);
    double worst = 0;
    for (int s = 0; s < n_shapes; s++) {
        int in = sh[s].in, out = sh[s].out, nmax = 33;
        size_t rb;
        uint8_t *w = rand_weights(type, in, out, &rb);
        float *wd = malloc(sizeof(float) * (size_t)in * out);
        float *x = malloc(sizeof(float) * (size_t)in * nmax);
        float *y = malloc(sizeof(float) * (size_t)out * nmax);
        float *y1 = malloc(sizeof(float) * (size_t)out);
        for (int o = 0; o < out; o++)
            core_dequant_row(type, w + (size_t)o * rb, wd + (size_t)o * in, in);
        for (int i = 0; i < in * nmax; i++)
            x[i] = frand();
        int bad = 0;
        for (size_t t = 0; t < sizeof ns / sizeof ns[0] && !bad; t++) {
            int n = ns[t];
            int rc = core__qmatmul(type, w, in, out, x, n, y);
            if (rc) {
                printf("    %s in %d out %d n %d: rc %d\n", core_type_name(type), in, out, n, rc);
                bad = 1;
                break;
            }
            for (int i = 0; i < n && !bad; i++) {
                for (int o = 0; o < out; o++) {
                    double ref = 0, mag = 0;
                    for (int k = 0; k < in; k++) {
                        double p = (double)wd[(size_t)o * in + k] * x[(size_t)i * in + k];
                        ref += p;
                        mag += p < 0 ? -p : p;
                    }
                    double e = fabs(y[(size_t)i * out + o] - ref) / (mag > 0 ? mag : 1);
                    if (!(e <= 1e-5)) {
                        printf("    %s in %d out %d n %d: Y[%d][%d] = %.9g, reference %.9g "
                               "(rel %.3g)\n",
                               core_type_name(type), in, out, n, i, o,
                               (double)y[(size_t)i * out + o], ref, e);
                        bad = 1;
                        break;
                    }
                    worst = e > worst ? e : worst;
                }
                /* the same row of X alone must give the same bits */
                core__qmatmul(type, w, in, out, x + (size_t)i * in, 1, y1);
                if (memcmp(y1, y + (size_t)i * out, sizeof(float) * (size_t)out) != 0) {
                    printf("    %s in %d out %d: row %d of %d differs from the row alone\n",
                           core_type_name(type), in, out, i, n);
                    bad = 1;
                }
            }
        }
        free(w);
        free(wd);
        free(x);
        free(y);
        free(y1);
        if (bad)
            return -1;
    }
    return worst;
}

/* With X the unit vectors, Y is W column by column: the rebuilt weights must equal
 * core_dequant_row's exactly (a product with 1 and sums with 0 are exact). Eight columns per call
 * (the buffered kernels), then one (the kernels for a single row of X). */
static int check_exact_weights(uint32_t type)
{
    int n_shapes;
    const shape *sh = shapes_of(type, &n_shapes);
    const shape *s = &sh[n_shapes - 1]; /* the one past a chunk */
    int in = s->in, out = s->out, n = 8;
    size_t rb;
    uint8_t *w = rand_weights(type, in, out, &rb);
    float *wd = malloc(sizeof(float) * (size_t)in * out);
    float *x = calloc((size_t)in * n, sizeof(float));
    float *y = malloc(sizeof(float) * (size_t)out * n);
    for (int o = 0; o < out; o++)
        core_dequant_row(type, w + (size_t)o * rb, wd + (size_t)o * in, in);
    int bad = 0;
    for (int step = n; step >= 1 && !bad; step -= n - 1) {
        for (int k0 = 0; k0 < in && !bad; k0 += step) {
            int nk = in - k0 < step ? in - k0 : step;
            memset(x, 0, sizeof(float) * (size_t)in * n);
            for (int i = 0; i < nk; i++)
                x[(size_t)i * in + k0 + i] = 1.0f;
            core__qmatmul(type, w, in, out, x, nk, y);
            for (int i = 0; i < nk && !bad; i++)
                for (int o = 0; o < out && !bad; o++) {
                    float got = y[(size_t)i * out + o], want = wd[(size_t)o * in + k0 + i];
                    if (got != want) {
                        printf("    %s: weight [%d][%d] rebuilt as %.9g, core_dequant_row %.9g "
                               "(%d columns per call)\n",
                               core_type_name(type), o, k0 + i, (double)got, (double)want, step);
                        bad = 1;
                    }
                }
        }
    }
    free(w);
    free(wd);
    free(x);
    free(y);
    return bad ? -1 : 0;
}

static void run_all(const char *path)
{
    for (size_t t = 0; t < sizeof all_types / sizeof all_types[0]; t++) {
        uint32_t type = all_types[t];
        rng = 1234 + t;
        CHECK_MSG(core__qmatmul_supports(type), "%s not supported", core_type_name(type));
        double e = check_type(type);
        CHECK_MSG(e >= 0, "%s (%s): products differ from the reference", core_type_name(type),
                  path);
        CHECK_MSG(check_exact_weights(type) == 0, "%s (%s): rebuilt weights differ",
                  core_type_name(type), path);
        printf("    %-5s %-8s max error relative to sum|w*x| = %.3g (tol 1e-5), weights exact\n",
               core_type_name(type), path, e);
    }
}

TEST(qmatmul_matches_reference)
{
    float x[1] = {1}, w[1] = {1}, y[1];
    if (core__qmatmul(CORE_TYPE_F32, w, 1, 1, x, 1, y) == -ENOTSUP)
        TEST_SKIP("no AVX2/FMA/F16C: core__qmatmul leaves every type to the f32 path");
    if (core__cpu_force(CORE_CPU_AVX512) == 0)
        run_all("AVX-512");
    else
        printf("    no AVX-512 F/BW/DQ/VL here: its kernels are not tested\n");
    CHECK_EQ_INT(core__cpu_force(CORE_CPU_AVX2), 0);
    run_all("AVX2");
    core__cpu_force(-1);
}

/* Random weights of the type (in, out) against up to 48 rows of X on the AVX-512 and AVX2
 * kernels: the same bits for every n tried, and at 16 and 17 rows (the panels) each row's bits
 * those of the row alone (the fused kernels). Adds the number of products compared to *compared. */
static void compare_families(uint32_t type, int in, int out, const char *what, int *compared)
{
    static const int ns[] = {1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 33, 48};
    int nmax = 48;
    size_t rb;
    uint8_t *w = rand_weights(type, in, out, &rb);
    float *x = malloc(sizeof(float) * (size_t)in * nmax);
    float *ya = malloc(sizeof(float) * (size_t)out * nmax);
    float *yb = malloc(sizeof(float) * (size_t)out * nmax);
    for (int i = 0; i < in * nmax; i++)
        x[i] = frand();
    for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) {
        int n = ns[k];
        core__cpu_force(CORE_CPU_AVX512);
        CHECK_EQ_INT(core__qmatmul(type, w, in, out, x, n, ya), 0);
        core__cpu_force(CORE_CPU_AVX2);
        CHECK_EQ_INT(core__qmatmul(type, w, in, out, x, n, yb), 0);
        CHECK_MSG(memcmp(ya, yb, sizeof(float) * (size_t)out * n) == 0,
                  "%s in %d out %d n %d%s: AVX-512 and AVX2 results differ", core_type_name(type),
                  in, out, n, what);
        (*compared)++;
        if (n != 16 && n != 17)
            continue;
        /* 16 and 17 rows run through the panels (9 rows and up; AVX-512: tiles of 8 and of 6
         * rows of X), one row through the fused kernels: each row is the bits of that row alone,
         * on both families */
        for (int l = 0; l < 2; l++) {
            core__cpu_force(l ? CORE_CPU_AVX2 : CORE_CPU_AVX512);
            CHECK_EQ_INT(core__qmatmul(type, w, in, out, x, n, ya), 0);
            for (int i = 0; i < n; i++) {
                CHECK_EQ_INT(core__qmatmul(type, w, in, out, x + (size_t)i * in, 1, yb), 0);
                CHECK_MSG(memcmp(ya + (size_t)i * out, yb, sizeof(float) * (size_t)out) == 0,
                          "%s in %d out %d%s, %s: row %d of %d differs from that row alone",
                          core_type_name(type), in, out, what, l ? "AVX2" : "AVX-512", i, n);
            }
        }
    }
    free(w);
    free(x);
    free(ya);
    free(yb);
}

/* The AVX-512 kernels keep the AVX2 kernels' chains: the same bits for every type, shape and
 * number of rows, so that a result does not depend on which of the two a machine runs. */
TEST(qmatmul_avx512_gives_the_avx2_bits)
{
    if (core__cpu_force(CORE_CPU_AVX512) != 0)
        TEST_SKIP("no AVX-512 F/BW/DQ/VL here: nothing to compare");
    int compared = 0;
    for (size_t t = 0; t < sizeof all_types / sizeof all_types[0]; t++) {
        rng = 99 + t;
        int n_shapes;
        const shape *sh = shapes_of(all_types[t], &n_shapes);
        for (int s = 0; s < n_shapes; s++)
            compare_families(all_types[t], sh[s].in, sh[s].out, "", &compared);
    }
    /* Weights past one L2 block (WBLOCK, 512 KiB: 1452 rows of Q4_1 576) run block by block
     * against groups of X packed once. */
    rng = 7;
    compare_families(CORE_TYPE_Q4_1, 576, 1501, " (two weight blocks)", &compared);
    core__cpu_force(-1);
    printf("    %d products bit-identical on both kernel families\n", compared);
}

/* The portable kernels, which an AVX2 machine would otherwise never run. */
TEST(qmatmul_portable_kernels)
{
    core__cpu_force(CORE_CPU_PORTABLE);
    run_all("portable");
    core__cpu_force(-1);
}

static void rejects(void)
{
    float x[64] = {0}, y[4];
    uint8_t w[256] = {0};
    CHECK_EQ_INT(core__qmatmul(CORE_TYPE_Q8_1, w, 32, 1, x, 1, y), -ENOTSUP);
    CHECK_EQ_INT(core__qmatmul(CORE_TYPE_Q2_K, w, 256, 1, x, 1, y), -ENOTSUP);
    CHECK_EQ_INT(core__qmatmul(999, w, 32, 1, x, 1, y), -ENOTSUP);
    CHECK(!core__qmatmul_supports(CORE_TYPE_Q3_K));
    CHECK_EQ_INT(core__qmatmul(CORE_TYPE_Q4_1, w, 48, 1, x, 1, y), -EINVAL);
    CHECK_EQ_INT(core__qmatmul(CORE_TYPE_Q4_1, w, 0, 1, x, 1, y), -EINVAL);
    CHECK_EQ_INT(core__qmatmul(CORE_TYPE_Q4_1, w, 32, 0, x, 1, y), 0);
    CHECK_EQ_INT(core__qmatmul(CORE_TYPE_Q4_1, w, 32, 1, x, 0, y), 0);
}

/* Under the portable kernels, so that the answers are the same on every CPU. */
TEST(qmatmul_rejects_what_it_cannot_do)
{
    core__cpu_force(CORE_CPU_PORTABLE);
    rejects();
    core__cpu_force(-1);
}
