/* Tests for core/kernels/qmatmul_q8.c (int8 activations): the quantizer's vector and scalar paths
 * give the same bytes; the AVX2 and VNNI kernels (those this CPU runs) give the portable kernels'
 * bits for every shape, row count and thread split; each result lies within the error bound that
 * rounding X to 8 bits allows, against dequantize-then-multiply in double. */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/kernels/cpu_internal.h"
#include "core/kernels/dequant.h"
#include "core/kernels/qmatmul_q8_internal.h"
#include "tests/test.h"

static uint64_t rng;

static uint32_t urand(void)
{
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (uint32_t)(rng >> 32);
}

static float frand(void)
{
    return (float)((urand() >> 8) / (double)(1u << 24)) * 2.0f - 1.0f;
}

static void put_f16(uint8_t *p, float v)
{
    uint16_t h = core_fp32_to_fp16(v);
    memcpy(p, &h, sizeof h);
}

/* out rows of in elements, random quants, f16 scales of either sign. */
static uint8_t *rand_weights(uint32_t type, int in, int out)
{
    size_t rb = (size_t)core_type_row_bytes(type, (uint64_t)in);
    size_t bb = core_type_block_bytes(type), nb = (size_t)out * rb / bb;
    uint8_t *w = malloc((size_t)out * rb);
    for (size_t i = 0; i < (size_t)out * rb; i++)
        w[i] = (uint8_t)urand();
    for (size_t i = 0; i < nb; i++) {
        put_f16(w + i * bb + (type == CORE_TYPE_Q6_K ? 208 : 0), frand() * 0.05f);
        if (type == CORE_TYPE_Q4_1 || type == CORE_TYPE_Q5_1 || type == CORE_TYPE_Q4_K ||
            type == CORE_TYPE_Q5_K)
            put_f16(w + i * bb + 2, frand() * 0.05f);
    }
    return w;
}

/* X with the cases the quantizer must get right: a zero block, a block of one huge value, tiny
 * values, values exactly halfway between two steps after scaling. */
static float *rand_x(int in, int n)
{
    float *x = malloc(sizeof(float) * (size_t)in * (size_t)n);
    for (int i = 0; i < in * n; i++)
        x[i] = frand() * (i % 97 == 0 ? 30.0f : 1.0f);
    if (in >= 96) {
        memset(x, 0, 32 * sizeof(float));
        for (int i = 32; i < 64; i++)
            x[i] = i == 40 ? 1e4f : 1e-3f * frand();
        for (int i = 64; i < 96; i++)
            x[i] = (float)(i - 80) * 0.5f; /* amax 15.5: many x / d land on .5 */
    }
    return x;
}

TEST(q8_quantize_vector_gives_scalar_bytes)
{
    int in = 576, n = 5;
    rng = 11;
    float *x = rand_x(in, n);
    x[in + 7] = NAN;            /* row 1, block 0 */
    x[2 * in + 40] = -INFINITY; /* row 2, block 1 */
    size_t rb = core__q8x_row_bytes(in);
    uint8_t *a = aligned_alloc(64, rb * (size_t)n), *b = aligned_alloc(64, rb * (size_t)n);
    memset(a, 0, rb * (size_t)n);
    memset(b, 0, rb * (size_t)n);
    CHECK_EQ_INT(core__cpu_force(CORE_CPU_PORTABLE), 0);
    core__q8x_quantize(x, in, n, a);
    int vectors = 0;
    for (int level = CORE_CPU_AVX2; level <= CORE_CPU_VNNI;
         level += CORE_CPU_VNNI - CORE_CPU_AVX2) {
        if (core__cpu_force(level))
            continue;
        memset(b, 0, rb * (size_t)n);
        core__q8x_quantize(x, in, n, b);
        CHECK_MSG(memcmp(a, b, rb * (size_t)n) == 0, "%s and scalar quantizers differ",
                  core__q8_kernels());
        vectors++;
    }
    core__cpu_force(-1);
    if (!vectors)
        printf("    neither AVX2 nor AVX-512 VNNI here: only the scalar quantizer runs\n");
    /* each value within half a step of x; NaN/inf blocks have a NaN scale */
    int nb = in / 32;
    for (int r = 0; r < n; r++) {
        const int8_t *q = (const int8_t *)(a + rb * (size_t)r);
        const float *d = (const float *)(a + rb * (size_t)r + in);
        for (int blk = 0; blk < nb; blk++) {
            if ((r == 1 && blk == 0) || (r == 2 && blk == 1)) {
                CHECK(isnan(d[blk]));
                continue;
            }
            for (int i = 0; i < 32; i++) {
                float xv = x[(size_t)r * in + (size_t)blk * 32 + i];
                CHECK_MSG(fabsf((float)q[blk * 32 + i] * d[blk] - xv) <= d[blk] * 0.5001f + 1e-30f,
                          "row %d block %d elem %d: %g vs %d * %g", r, blk, i, xv, q[blk * 32 + i],
                          d[blk]);
            }
        }
    }
    free(x);
    free(a);
    free(b);
}

typedef struct shape {
    int in, out;
} shape;

static const shape shapes[] = {{32, 16}, {96, 48}, {576, 64}, {1536, 32}, {576, 208}};
static const shape kquant_shapes[] = {{256, 16}, {512, 48}, {1536, 32}, {2048, 208}};

/* The CPU's kernels (AVX2, VNNI) vs portable for one type and shape, every n in ns, whole and split
 * over output groups; and each result within the bound of 8-bit activations against double. */
static void check_shape(uint32_t type, int in, int out, int *compared, double *worst_ratio)
{
    static const int ns[] = {1, 2, 3, 7, 8, 9, 16, 17, 32};
    int nmax = 32;
    uint8_t *w = rand_weights(type, in, out);
    float *x = rand_x(in, nmax);
    core_q8w *p = core__q8w_pack(type, w, in, out);
    CHECK(p != NULL);
    size_t rb = core__q8x_row_bytes(in);
    uint8_t *xq = aligned_alloc(64, rb * (size_t)nmax);
    core__q8x_quantize(x, in, nmax, xq);
    float *ya = malloc(sizeof(float) * (size_t)out * nmax);
    float *yb = malloc(sizeof(float) * (size_t)out * nmax);
    float *wf = malloc(sizeof(float) * (size_t)in * out);
    size_t wrb = (size_t)core_type_row_bytes(type, (uint64_t)in);
    for (int o = 0; o < out; o++)
        core_dequant_row(type, w + (size_t)o * wrb, wf + (size_t)o * in, in);
    for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) {
        int n = ns[k];
        CHECK_EQ_INT(core__cpu_force(CORE_CPU_PORTABLE), 0);
        CHECK_EQ_INT(core__q8_matmul_part(p, xq, n, 0, out, ya, out), 0);
        for (int level = CORE_CPU_AVX2; level <= CORE_CPU_VNNI;
             level += CORE_CPU_VNNI - CORE_CPU_AVX2) {
            if (core__cpu_force(level))
                continue;
            /* in two parts, as two threads would */
            int mid = (out / 32) * 16;
            memset(yb, 0, sizeof(float) * (size_t)out * n);
            CHECK_EQ_INT(core__q8_matmul_part(p, xq, n, 0, mid, yb, out), 0);
            CHECK_EQ_INT(core__q8_matmul_part(p, xq, n, mid, out, yb, out), 0);
            CHECK_MSG(memcmp(ya, yb, sizeof(float) * (size_t)out * n) == 0,
                      "%s in %d out %d n %d: %s and portable results differ", core_type_name(type),
                      in, out, n, core__q8_kernels());
            (*compared)++;
        }
        core__cpu_force(-1);
    }
    /* |Σ w (x - x̂)| <= Σ_blocks d_b / 2 · Σ|w| over the block, plus f32 rounding */
    const float *dq = NULL;
    for (int r = 0; r < nmax; r++) {
        dq = (const float *)(xq + rb * (size_t)r + in);
        for (int o = 0; o < out; o++) {
            double exact = 0, bound = 0, mag = 0;
            for (int b = 0; b < in / 32; b++) {
                double aw = 0;
                for (int i = b * 32; i < b * 32 + 32; i++) {
                    double wv = wf[(size_t)o * in + i], xv = x[(size_t)r * in + i];
                    exact += wv * xv;
                    aw += fabs(wv);
                    mag += fabs(wv * xv);
                }
                bound += 0.5 * dq[b] * aw;
            }
            double err = fabs(ya[(size_t)r * out + o] - exact);
            double tol = bound + 1e-5 * mag + 1e-6;
            CHECK_MSG(err <= tol, "%s in %d out %d row %d col %d: %.9g vs %.9g (bound %.3g)",
                      core_type_name(type), in, out, r, o, ya[(size_t)r * out + o], exact, tol);
            if (bound > 0 && err / bound > *worst_ratio)
                *worst_ratio = err / bound;
        }
    }
    core__q8w_free(p);
    free(w);
    free(x);
    free(xq);
    free(ya);
    free(yb);
    free(wf);
}

TEST(q8_matmul_avx2_and_vnni_give_portable_bits_within_bound)
{
    if (!core__q8_available())
        printf("    neither AVX2 nor AVX-512 VNNI here: only the portable kernels run\n");
    int compared = 0;
    double worst = 0;
    const uint32_t types[] = {CORE_TYPE_Q4_1, CORE_TYPE_Q8_0, CORE_TYPE_Q4_K, CORE_TYPE_Q5_K,
                              CORE_TYPE_Q6_K, CORE_TYPE_Q4_0, CORE_TYPE_Q5_0, CORE_TYPE_Q5_1};
    for (int t = 0; t < (int)(sizeof types / sizeof types[0]); t++) {
        bool k = core_type_block_elems(types[t]) == 256;
        const shape *sh = k ? kquant_shapes : shapes;
        size_t count =
            k ? sizeof kquant_shapes / sizeof kquant_shapes[0] : sizeof shapes / sizeof shapes[0];
        for (size_t s = 0; s < count; s++) {
            rng = 100 * (uint64_t)t + s;
            check_shape(types[t], sh[s].in, sh[s].out, &compared, &worst);
        }
    }
    printf("    %d products bit-identical to portable (%s); worst error %.2f of the 8-bit bound\n",
           compared, core__q8_level() == CORE_Q8_VNNI ? "AVX2 and AVX-512 VNNI" : "AVX2", worst);
}

/* A row's results do not depend on the other rows (batch invariance). */
TEST(q8_matmul_row_independent_of_batch)
{
    int in = 576, out = 64, n = 13;
    rng = 5;
    uint8_t *w = rand_weights(CORE_TYPE_Q4_1, in, out);
    float *x = rand_x(in, n);
    core_q8w *p = core__q8w_pack(CORE_TYPE_Q4_1, w, in, out);
    size_t rb = core__q8x_row_bytes(in);
    uint8_t *xq = aligned_alloc(64, rb * (size_t)n);
    core__q8x_quantize(x, in, n, xq);
    float *y = malloc(sizeof(float) * (size_t)out * n), y1[64];
    CHECK_EQ_INT(core__q8_matmul_part(p, xq, n, 0, out, y, out), 0);
    for (int r = 0; r < n; r++) {
        CHECK_EQ_INT(core__q8_matmul_part(p, xq + rb * (size_t)r, 1, 0, out, y1, out), 0);
        CHECK_MSG(memcmp(y1, y + (size_t)r * out, sizeof y1) == 0, "row %d differs alone", r);
    }
    core__q8w_free(p);
    free(w);
    free(x);
    free(xq);
    free(y);
}

TEST(q8_rejects_what_it_cannot_do)
{
    uint8_t w[34 * 32] = {0};
    CHECK(core__q8w_pack(CORE_TYPE_F16, w, 32, 16) == NULL);
    CHECK(core__q8w_pack(CORE_TYPE_Q4_1, w, 48, 16) == NULL);
    CHECK(core__q8w_pack(CORE_TYPE_Q8_0, w, 32, 15) == NULL);
    CHECK(!core__q8w_supports(CORE_TYPE_F32, 32, 16));
    core_q8w *p = core__q8w_pack(CORE_TYPE_Q8_0, w, 32, 32);
    CHECK(p != NULL);
    float y[64];
    uint8_t xq[128] __attribute__((aligned(64))) = {0};
    CHECK_EQ_INT(core__q8_matmul_part(p, xq, 1, 8, 32, y, 32), -EINVAL);
    CHECK_EQ_INT(core__q8_matmul_part(p, xq, 1, 0, 48, y, 32), -EINVAL);
    CHECK_EQ_INT(core__q8_matmul_part(p, xq, 1, 0, 32, y, 16), -EINVAL);
    CHECK_EQ_INT(core__q8_matmul_part(p, xq, 1, 16, 32, y, 32), 0);
    core__q8w_free(p);
}
