/* Tests for core/kernels/attention.c: the AVX2 exp, SwiGLU and attention against the portable
 * versions (which use libm's expf) and against a double-precision attention, over sizes that are
 * and are not multiples of 8. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/format/types.h"
#include "core/kernels/attention_internal.h"
#include "core/kernels/cpu_internal.h"
#include "tests/test.h"

static uint64_t rng = 11;

static float frand(void)
{
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((uint32_t)(rng >> 40) / (double)(1u << 24)) * 2.0f - 1.0f;
}

TEST(vmath_exp_and_swiglu_match_libm)
{
    enum { N = 1003 };
    float x[N], y[N], g[N], up[N], g2[N];
    for (int i = 0; i < N; i++) {
        x[i] = frand() * 87.0f; /* most of expf's normal range, both signs */
        g[i] = g2[i] = frand() * 20.0f;
        up[i] = frand();
    }
    x[0] = -INFINITY;
    x[1] = -100.0f;
    x[2] = 0.0f;
    core__vexp(x, y, N);
    double worst = 0;
    for (int i = 1; i < N; i++) {
        double ref = exp((double)x[i]);
        if (ref < 1.2e-38) /* below the normal range the kernel flushes to 0 */
            CHECK(y[i] >= 0 && y[i] < 1.2e-38f);
        else
            worst = fmax(worst, fabs(y[i] - ref) / ref);
    }
    CHECK(y[0] == 0.0f);
    CHECK(y[2] == 1.0f);
    core__swiglu(g, up, N);
    core__cpu_force(CORE_CPU_PORTABLE);
    core__swiglu(g2, up, N);
    core__cpu_force(-1);
    double sw = 0;
    for (int i = 0; i < N; i++)
        sw = fmax(sw, fabs(g[i] - g2[i]) / (fabs(g2[i]) + 1e-30));
    printf("    exp: max rel error %.3g vs double (tol 3e-7); swiglu: %.3g vs libm (tol 1e-6)\n",
           worst, sw);
    CHECK(worst < 3e-7);
    CHECK(sw < 1e-6);
}

/* GeGLU's vector kernels (x / (1 + exp(-2u))) against torch's formula in double,
 * 0.5 x (1 + tanh(u)): relative error, or absolute where the result is near 0 (large negative x,
 * where gelu underflows to -0 in the f32 tanh form as well). The portable kernel is torch's f32
 * formula itself, whose 1 + tanh(u) cancels for negative u: 3e-5 relative, hence its 1e-4. */
TEST(vmath_geglu_matches_the_tanh_formula)
{
    enum { N = 1003 };
    float g[N], up[N], x[N];
    for (int i = 0; i < N; i++) {
        x[i] = g[i] = frand() * (i % 5 ? 4.0f : 30.0f);
        up[i] = frand();
    }
    x[0] = g[0] = 0.0f;
    x[1] = g[1] = -12.0f;
    x[2] = g[2] = 12.0f;
    core__geglu(g, up, N);
    double rel = 0, abs_err = 0;
    for (int i = 0; i < N; i++) {
        double xv = x[i], u = sqrt(2.0 / M_PI) * (xv + 0.044715 * xv * xv * xv);
        double ref = 0.5 * xv * (1.0 + tanh(u)) * up[i];
        double e = fabs(g[i] - ref);
        if (fabs(ref) > 1e-3)
            rel = fmax(rel, e / fabs(ref));
        else
            abs_err = fmax(abs_err, e);
    }
    double tol = core__cpu_level() < CORE_CPU_AVX2 ? 1e-4 : 1e-6;
    printf("    geglu (%s): max rel error %.3g vs double (tol %g), max abs error near 0 %.3g "
           "(tol 1e-7)\n",
           core__cpu_level_name(core__cpu_level()), rel, tol, abs_err);
    CHECK(rel < tol);
    CHECK(abs_err < 1e-7);
    CHECK(g[0] == 0.0f);
}

/* exp, SwiGLU and GeGLU are one source at two widths (core/kernels/simd_internal.h): AVX-512 and
 * AVX2 give the same bits, element for element, over lengths with and without a partial vector. */
TEST(vmath_widths_give_the_same_bits)
{
    if (core__cpu_force(CORE_CPU_AVX512) != 0)
        TEST_SKIP("no AVX-512 on this CPU");
    enum { N = 1003 };
    static float x[N], y16[N], y8[N], g16[N], g8[N], e16[N], e8[N], up[N];
    for (int i = 0; i < N; i++) {
        x[i] = frand() * 100.0f; /* past both ends of the clamped range */
        g16[i] = g8[i] = frand() * 30.0f;
        e16[i] = e8[i] = frand() * 12.0f;
        up[i] = frand();
    }
    int diff = 0;
    for (int n = 1; n <= N; n += n < 40 ? 1 : 97) {
        core__cpu_force(CORE_CPU_AVX512);
        core__vexp(x, y16, n);
        core__swiglu(g16, up, n);
        core__geglu(e16, up, n);
        core__cpu_force(CORE_CPU_AVX2);
        core__vexp(x, y8, n);
        core__swiglu(g8, up, n);
        core__geglu(e8, up, n);
        diff += memcmp(y16, y8, sizeof(float) * (size_t)n) != 0;
        diff += memcmp(g16, g8, sizeof(float) * (size_t)n) != 0;
        diff += memcmp(e16, e8, sizeof(float) * (size_t)n) != 0;
    }
    core__cpu_force(-1);
    printf("    lengths whose AVX-512 and AVX2 bits differ: %d (must be 0)\n", diff);
    CHECK(diff == 0);
}

/* Attention of one row with n_head 9 over n_kv 3 heads (SmolLM2's grouping); with f16, K and V
 * are handed over as f16 and the reference uses their f16 values. */
static int case_n_kv = 3; /* 1: one KV head for all nine (a group above the grouped kernel's 8) */
static int case_chunked;  /* through core__attend_chunk (last chunk first) and core__attend_merge */

static double attend_case(int hd, int pos, int f16)
{
    int n_head = 9, n_kv = case_n_kv, kv_dim = n_kv * hd, group = n_head / n_kv;
    float *q = malloc(sizeof(float) * n_head * hd), *K = malloc(sizeof(float) * (pos + 1) * kv_dim);
    float *V = malloc(sizeof(float) * (pos + 1) * kv_dim),
          *sc = malloc(sizeof(float) * (pos + 1) * group);
    float *out = malloc(sizeof(float) * n_head * hd);
    double *p = malloc(sizeof(double) * (pos + 1));
    for (int i = 0; i < n_head * hd; i++)
        q[i] = frand() * 2;
    uint16_t *K16 = malloc(sizeof(uint16_t) * (pos + 1) * kv_dim);
    uint16_t *V16 = malloc(sizeof(uint16_t) * (pos + 1) * kv_dim);
    for (int i = 0; i < (pos + 1) * kv_dim; i++) {
        K[i] = frand() * 2;
        V[i] = frand();
        if (f16) {
            K16[i] = core_fp32_to_fp16(K[i]);
            V16[i] = core_fp32_to_fp16(V[i]);
            K[i] = core_fp16_to_fp32(K16[i]);
            V[i] = core_fp16_to_fp32(V16[i]);
        }
    }
    if (case_chunked) {
        static const int32_t one_block[1] = {0};
        core__kv_view kv = {.base = f16 ? (const char *)K16 : (const char *)K,
                            .table = one_block,
                            .row_stride = (size_t)kv_dim * (f16 ? 2 : 4),
                            .shift = 30};
        core__kv_view vv = kv;
        vv.base = f16 ? (const char *)V16 : (const char *)V;
        int nc = core__attend_chunks(pos + 1);
        float *o = malloc(sizeof(float) * (size_t)nc * n_head * (hd + 2)),
              *ml = o + (size_t)nc * n_head * hd;
        for (int c = nc - 1; c >= 0; c--)
            core__attend_chunk(q, &kv, &vv, f16, n_head, n_kv, hd, pos + 1, c, sc,
                               o + (size_t)c * n_head * hd, ml + 2 * (size_t)c * n_head);
        core__attend_merge(o, ml, nc, n_head, hd, out);
        free(o);
    } else if (f16) {
        core__attend_row(q, K16, V16, 1, n_head, n_kv, hd, pos, sc, out);
    } else {
        core__attend_row(q, K, V, 0, n_head, n_kv, hd, pos, sc, out);
    }
    free(K16);
    free(V16);
    double worst = 0;
    for (int h = 0; h < n_head; h++) {
        int off = (h / group) * hd;
        double mx = -INFINITY, sum = 0;
        for (int t = 0; t <= pos; t++) {
            double d = 0;
            for (int i = 0; i < hd; i++)
                d += (double)q[h * hd + i] * K[(size_t)t * kv_dim + off + i];
            p[t] = d / sqrt((double)hd);
            mx = fmax(mx, p[t]);
        }
        for (int t = 0; t <= pos; t++)
            sum += p[t] = exp(p[t] - mx);
        for (int i = 0; i < hd; i++) {
            double o = 0;
            for (int t = 0; t <= pos; t++)
                o += p[t] / sum * V[(size_t)t * kv_dim + off + i];
            worst = fmax(worst, fabs(out[h * hd + i] - o));
        }
    }
    free(q);
    free(K);
    free(V);
    free(sc);
    free(out);
    free(p);
    return worst;
}

static void attend_all(const char *which)
{
    static const int hds[] = {64, 8, 12, 128, 16, 48, 256, 200};
    static const int poss[] = {0, 1, 7, 8, 14, 15, 16, 31, 100, 777};
    double worst[2] = {0, 0};
    for (int f16 = 0; f16 < 2; f16++)
        for (size_t a = 0; a < sizeof hds / sizeof hds[0]; a++)
            for (size_t b = 0; b < sizeof poss / sizeof poss[0]; b++) {
                double e = attend_case(hds[a], poss[b], f16);
                CHECK_MSG(e < 2e-6, "%s attention (%s KV) hd %d pos %d: max abs error %.3g", which,
                          f16 ? "f16" : "f32", hds[a], poss[b], e);
                worst[f16] = fmax(worst[f16], e);
            }
    case_n_kv = 1;
    for (int f16 = 0; f16 < 2; f16++) {
        double e = attend_case(64, 100, f16);
        CHECK_MSG(e < 2e-6, "%s attention, 9 heads on one KV head: max abs error %.3g", which, e);
        worst[f16] = fmax(worst[f16], e);
    }
    case_n_kv = 3;
    printf("    %s attention: max abs error %.3g (f32 KV), %.3g (f16 KV) vs double (tol 2e-6)\n",
           which, worst[0], worst[1]);
    /* in chunks of CORE_ATT_CHUNK keys: one, a whole one and a key, several and a partial last */
    static const int chunked[] = {100, CORE_ATT_CHUNK, 3 * CORE_ATT_CHUNK - 1, 1500};
    double cw = 0;
    case_chunked = 1;
    for (int f16 = 0; f16 < 2; f16++)
        for (size_t a = 0; a < 3; a++)
            for (size_t b = 0; b < sizeof chunked / sizeof chunked[0]; b++) {
                double e = attend_case(hds[a], chunked[b], f16);
                CHECK_MSG(e < 2e-6, "%s chunked attention (%s KV) hd %d pos %d: max abs error %.3g",
                          which, f16 ? "f16" : "f32", hds[a], chunked[b], e);
                cw = fmax(cw, e);
            }
    case_chunked = 0;
    printf(
        "    %s attention in chunks of %d keys, merged: max abs error %.3g vs double (tol 2e-6)\n",
        which, CORE_ATT_CHUNK, cw);
}

TEST(vmath_attention_matches_double)
{
    if (core__cpu_force(CORE_CPU_AVX512) == 0)
        attend_all("AVX-512");
    else
        printf("    no AVX-512 F/DQ/VL here: its attention is not tested\n");
    if (core__cpu_force(CORE_CPU_AVX2) == 0)
        attend_all("AVX2");
    core__cpu_force(CORE_CPU_PORTABLE);
    attend_all("portable");
    core__cpu_force(-1);
}

/* Attention through a block table (paged KV) gives the bits of the same rows stored contiguously,
 * for every kernel family, f32 and f16, from position 0 and from a later first key (a sliding
 * window): the blocks are laid out in reverse, 16 positions each, with a gap between them. */
static void paged_vs_contiguous(const char *which, int hd, int f16)
{
    enum { N_KV = 3, N_HEAD = 9, POS = 70, BLK = 16, NB = (POS + BLK) / BLK };
    size_t es = f16 ? 2 : 4, row = (size_t)N_KV * hd * es;
    size_t block = (BLK + 3) * row; /* a gap of three rows after every block */
    char *K = malloc((POS + 1) * row), *V = malloc((POS + 1) * row);
    char *pk = calloc(NB, block), *pv = calloc(NB, block);
    float q[N_HEAD * 256], a[N_HEAD * 256], b[N_HEAD * 256], sc[8 * (POS + 1)];
    for (int i = 0; i < N_HEAD * hd; i++)
        q[i] = frand();
    for (size_t i = 0; i < (POS + 1) * row / es; i++) {
        float k = frand(), v = frand();
        if (f16) {
            ((uint16_t *)K)[i] = core_fp32_to_fp16(k);
            ((uint16_t *)V)[i] = core_fp32_to_fp16(v);
        } else {
            ((float *)K)[i] = k;
            ((float *)V)[i] = v;
        }
    }
    int32_t table[NB];
    for (int p = 0; p <= POS; p++) {
        table[p / BLK] = NB - 1 - p / BLK;
        memcpy(pk + (size_t)table[p / BLK] * block + (size_t)(p % BLK) * row, K + p * row, row);
        memcpy(pv + (size_t)table[p / BLK] * block + (size_t)(p % BLK) * row, V + p * row, row);
    }
    for (int first = 0; first <= 37; first += 37) {
        core__attend_row(q, K + first * row, V + first * row, f16, N_HEAD, N_KV, hd, POS - first,
                         sc, a);
        core__kv_view kv = {.base = pk,
                            .table = table,
                            .block_stride = block,
                            .row_stride = row,
                            .shift = 4,
                            .first = first};
        core__kv_view vv = kv;
        vv.base = pv;
        core__attend_view(q, &kv, &vv, f16, N_HEAD, N_KV, hd, POS - first + 1, sc, b, NULL);
        CHECK_MSG(memcmp(a, b, (size_t)N_HEAD * hd * sizeof(float)) == 0,
                  "%s attention hd %d %s from %d: paged differs from contiguous", which, hd,
                  f16 ? "f16" : "f32", first);
    }
    free(K);
    free(V);
    free(pk);
    free(pv);
}

TEST(vmath_attention_paged_equals_contiguous)
{
    static const int hds[] = {64, 8, 48, 128, 256, 12};
    const char *names[] = {"AVX-512", "AVX2", "portable"};
    int levels[] = {CORE_CPU_AVX512, CORE_CPU_AVX2, CORE_CPU_PORTABLE};
    for (int l = 0; l < 3; l++) {
        if (core__cpu_force(levels[l]) != 0)
            continue;
        for (size_t h = 0; h < sizeof hds / sizeof hds[0]; h++)
            for (int f16 = 0; f16 < 2; f16++)
                paged_vs_contiguous(names[l], hds[h], f16);
    }
    core__cpu_force(-1);
}
