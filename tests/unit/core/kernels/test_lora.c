/* Tests for core/kernels/lora.c, the small-group LoRA kernels: every dtype, ranks that are and are
 * not multiples of 4, sizes that are not multiples of 8, a Bt converted whole and one converted in
 * blocks, against a double-precision reference; and a row's result bit for bit the same whether
 * it is alone in its group or shares it with other rows (batch invariance), on both the AVX2 and
 * the portable kernels. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/format/types.h"
#include "core/kernels/cpu_internal.h"
#include "core/kernels/lora_internal.h"
#include "tests/test.h"

static uint64_t rng = 7;

static float frand(void)
{
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((uint32_t)(rng >> 40) / (double)(1u << 24)) * 2.0f - 1.0f;
}

/* n random values stored in dtype into dst; their exact f32 values into ref. */
static void fill(uint32_t dtype, void *dst, float *ref, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float v = frand() * 0.5f;
        if (dtype == CORE_TYPE_F32) {
            ((float *)dst)[i] = v;
        } else if (dtype == CORE_TYPE_F16) {
            ((uint16_t *)dst)[i] = core_fp32_to_fp16(v);
            v = core_fp16_to_fp32(((uint16_t *)dst)[i]);
        } else {
            ((uint16_t *)dst)[i] = core_fp32_to_bf16(v);
            v = core_bf16_to_fp32(((uint16_t *)dst)[i]);
        }
        ref[i] = v;
    }
}

/* One case: returns the max relative error against the reference, or a negative value when a
 * row's result differs (in any bit) from the same row computed alone. */
static double run_case(uint32_t dtype, int rank, int in, int out, int n_rows)
{
    size_t es = dtype == CORE_TYPE_F32 ? 4 : 2;
    int n_batch = n_rows + 3; /* rows of X the group does not use stay untouched */
    void *A = malloc((size_t)rank * in * es), *Bt = malloc((size_t)rank * out * es);
    float *Ar = malloc(sizeof(float) * rank * in), *Btr = malloc(sizeof(float) * rank * out);
    float *X = malloc(sizeof(float) * n_batch * in), *Y = malloc(sizeof(float) * n_batch * out);
    float *Y1 = malloc(sizeof(float) * n_batch * out), *Y0 = malloc(sizeof(float) * n_batch * out);
    float *scr = malloc(sizeof(float) * core__lora_scratch_floats(rank, out));
    int32_t *rows = malloc(sizeof(int32_t) * n_rows);
    float *scales = malloc(sizeof(float) * n_rows);
    fill(dtype, A, Ar, (size_t)rank * in);
    fill(dtype, Bt, Btr, (size_t)rank * out);
    for (int i = 0; i < n_batch * in; i++)
        X[i] = frand();
    for (int i = 0; i < n_batch * out; i++)
        Y0[i] = frand();
    for (int i = 0; i < n_rows; i++) {
        rows[i] = (i * 5 + 2) % n_batch; /* scattered, distinct while n_batch is odd-ish */
        for (int k = 0; k < i; k++)
            if (rows[k] == rows[i])
                rows[i] = (rows[i] + 1) % n_batch;
        scales[i] = 0.25f + 0.5f * (float)i;
    }
    memcpy(Y, Y0, sizeof(float) * n_batch * out);
    core__lora_group(dtype, A, Bt, rank, in, out, n_rows, rows, scales, X, Y, scr);

    double worst = 0;
    double *t = malloc(sizeof(double) * rank);
    for (int i = 0; i < n_rows; i++) {
        const float *x = X + (size_t)rows[i] * in;
        for (int j = 0; j < rank; j++) {
            t[j] = 0;
            for (int k = 0; k < in; k++)
                t[j] += (double)Ar[(size_t)j * in + k] * x[k];
            t[j] *= scales[i];
        }
        for (int o = 0; o < out; o++) {
            double ref = Y0[(size_t)rows[i] * out + o], mag = fabs(ref);
            for (int j = 0; j < rank; j++) {
                ref += t[j] * Btr[(size_t)j * out + o];
                mag += fabs(t[j] * Btr[(size_t)j * out + o]);
            }
            double e = fabs(Y[(size_t)rows[i] * out + o] - ref) / (mag + 1e-30);
            worst = e > worst ? e : worst;
        }
        /* the same row alone in its group */
        memcpy(Y1, Y0, sizeof(float) * n_batch * out);
        core__lora_group(dtype, A, Bt, rank, in, out, 1, &rows[i], &scales[i], X, Y1, scr);
        if (memcmp(Y1 + (size_t)rows[i] * out, Y + (size_t)rows[i] * out, sizeof(float) * out))
            worst = -1;
    }
    /* rows outside the group are untouched */
    for (int r = 0; r < n_batch && worst >= 0; r++) {
        int used = 0;
        for (int i = 0; i < n_rows; i++)
            used |= rows[i] == r;
        if (!used && memcmp(Y + (size_t)r * out, Y0 + (size_t)r * out, sizeof(float) * out))
            worst = -2;
    }
    free(t);
    free(A);
    free(Bt);
    free(Ar);
    free(Btr);
    free(X);
    free(Y);
    free(Y1);
    free(Y0);
    free(scr);
    free(rows);
    free(scales);
    return worst;
}

static void all_cases(void)
{
    static const uint32_t dtypes[] = {CORE_TYPE_F32, CORE_TYPE_F16, CORE_TYPE_BF16};
    /* rank, in, out: small and odd; a typical decode shape; a Bt too big to convert whole */
    static const int shapes[][3] = {{1, 9, 5},    {3, 37, 70},     {4, 64, 192},
                                    {7, 100, 33}, {16, 576, 1536}, {64, 96, 1537}};
    static const int nrows[] = {1, 2, 5, 9, 13};
    double worst = 0;
    for (size_t d = 0; d < 3; d++)
        for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
            for (size_t n = 0; n < sizeof nrows / sizeof *nrows; n++) {
                double e = run_case(dtypes[d], shapes[s][0], shapes[s][1], shapes[s][2], nrows[n]);
                CHECK_MSG(e >= 0, "dtype %u rank %d in %d out %d rows %d: %s", dtypes[d],
                          shapes[s][0], shapes[s][1], shapes[s][2], nrows[n],
                          e == -1 ? "a row differs from the same row alone in its group"
                                  : "a row outside the group changed");
                CHECK_MSG(e < 1e-5, "dtype %u rank %d in %d out %d rows %d: rel error %.3g",
                          dtypes[d], shapes[s][0], shapes[s][1], shapes[s][2], nrows[n], e);
                worst = e > worst ? e : worst;
            }
    printf("    max relative error vs double: %.3g (tol 1e-5); rows bit-identical alone and "
           "grouped\n",
           worst);
}

TEST(lora_kernels_match_reference_and_are_row_invariant)
{
    all_cases();
}

TEST(lora_portable_kernels_match_reference_and_are_row_invariant)
{
    core__cpu_force(CORE_CPU_PORTABLE);
    all_cases();
    core__cpu_force(-1);
}
