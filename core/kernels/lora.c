/* LoRA kernels for groups of few rows: A (rank, in) and Bt (rank, out) are read once per group
 * and converted to f32 on the fly, with an AVX2/F16C/FMA path chosen at run time and a portable
 * fallback. Both kernels stream their weights row by row, which is what makes a decode step with
 * many distinct adapters bandwidth-bound rather than instruction-bound. */
#include "core/kernels/lora_internal.h"

#include <immintrin.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>

#include "core/format/types.h"
#include "core/kernels/cpu_internal.h"

#define ROWS 8          /* batch rows per pass over Bt */
#define BT_WHOLE 65536  /* a Bt of at most this many elements is converted in one piece */
#define OB_FLOATS 16384 /* otherwise in blocks of about this many */
#define PF 512          /* elements to prefetch ahead */

/* Outputs per converted block of Bt: all of them when Bt is small (one sequential read, the
 * f32 copy stays in L2), else a multiple of 8 that keeps rank * ob floats in L1/L2. */
static int out_block(int rank, int out)
{
    if ((size_t)rank * out <= BT_WHOLE)
        return out;
    int ob = (OB_FLOATS / rank) & ~7;
    return ob < 8 ? 8 : ob > out ? out : ob;
}

size_t core__lora_scratch_floats(int rank, int out)
{
    return (size_t)ROWS * rank + (size_t)rank * out_block(rank, out);
}

/* ---- portable ----------------------------------------------------------------------------------
 */

static void cvt_generic(uint32_t dtype, const void *src, float *dst, int n)
{
    const uint16_t *h = src;
    if (dtype == CORE_TYPE_F32)
        memcpy(dst, src, (size_t)n * sizeof(float));
    else if (dtype == CORE_TYPE_F16)
        for (int i = 0; i < n; i++)
            dst[i] = core_fp16_to_fp32(h[i]);
    else
        for (int i = 0; i < n; i++)
            dst[i] = core_bf16_to_fp32(h[i]);
}

static float elem(uint32_t dtype, const void *p, size_t i)
{
    if (dtype == CORE_TYPE_F32)
        return ((const float *)p)[i];
    uint16_t h = ((const uint16_t *)p)[i];
    return dtype == CORE_TYPE_F16 ? core_fp16_to_fp32(h) : core_bf16_to_fp32(h);
}

/* t = A · x for one input row: A (rank, in). */
static void shrink_generic(uint32_t dtype, const void *A, int rank, int in, const float *x,
                           float *t)
{
    for (int j = 0; j < rank; j++) {
        float s = 0.0f;
        for (int k = 0; k < in; k++)
            s += elem(dtype, A, (size_t)j * in + k) * x[k];
        t[j] = s;
    }
}

/* y[0..no) += Σ_j t[j] · b[j][0..no), b row j at b + j * ldb (f32). */
static void expand_generic(const float *b, size_t ldb, int rank, int no, const float *t, float *y)
{
    for (int o = 0; o < no; o++) {
        float v = y[o];
        for (int j = 0; j < rank; j++)
            v += t[j] * b[(size_t)j * ldb + o];
        y[o] = v;
    }
}

/* ---- AVX2 + FMA + F16C ----------------------------------------------------------------------- */

#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define INLINE_AVX2_EARLY __attribute__((target("avx2,fma,f16c"), always_inline)) static inline

INLINE_AVX2_EARLY __m256 load8(uint32_t dtype, const void *p, size_t i)
{
    if (dtype == CORE_TYPE_F32)
        return _mm256_loadu_ps((const float *)p + i);
    const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)p + i));
    if (dtype == CORE_TYPE_F16)
        return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

INLINE_AVX2_EARLY float hsum(__m256 s)
{
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
}

AVX2 static void cvt_avx2(uint32_t dtype, const void *src, float *dst, int n)
{
    int i = 0;
    if (dtype == CORE_TYPE_F16)
        for (; i + 8 <= n; i += 8) {
            _mm_prefetch((const char *)src + (i + PF) * 2, _MM_HINT_T0);
            _mm256_storeu_ps(dst + i, load8(CORE_TYPE_F16, src, (size_t)i));
        }
    else if (dtype == CORE_TYPE_BF16)
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(dst + i, load8(CORE_TYPE_BF16, src, (size_t)i));
    if (i < n)
        cvt_generic(dtype, (const char *)src + (size_t)i * (dtype == CORE_TYPE_F32 ? 4 : 2),
                    dst + i, n - i);
}

/* Dot products of rows of A with one input x, summed the same way for every row: two
 * accumulators over alternating chunks of 8, then the scalar tail. dot4 does four rows at once
 * (eight independent FMA chains, which hide the FMA latency) and gives each row exactly what dot1
 * gives it. The dtype is a compile-time constant in each instantiation (always_inline), so the
 * loops hold no branches and the accumulators stay in registers. */
#define INLINE_AVX2 __attribute__((target("avx2,fma,f16c"), always_inline)) static inline

INLINE_AVX2 float dot_tail(uint32_t dtype, const void *a, int k, int in, const float *x, __m256 s0,
                           __m256 s1)
{
    float s = hsum(_mm256_add_ps(s0, s1));
    for (; k < in; k++)
        s += elem(dtype, a, (size_t)k) * x[k];
    return s;
}

INLINE_AVX2 void dot4_t(uint32_t dtype, const void *a, size_t lda, int in, const float *x, float *t)
{
    size_t es = dtype == CORE_TYPE_F32 ? 4 : 2;
    const char *a0 = a, *a1 = a0 + lda * es, *a2 = a1 + lda * es, *a3 = a2 + lda * es;
    __m256 p0 = _mm256_setzero_ps(), q0 = p0, p1 = p0, q1 = p0, p2 = p0, q2 = p0, p3 = p0, q3 = p0;
    int k = 0;
    for (; k + 16 <= in; k += 16) {
        __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);
        /* the same place in the next four rows: a stream 4 rows ahead */
        _mm_prefetch(a3 + (lda + k) * es, _MM_HINT_T0);
        _mm_prefetch(a3 + (2 * lda + k) * es, _MM_HINT_T0);
        _mm_prefetch(a3 + (3 * lda + k) * es, _MM_HINT_T0);
        _mm_prefetch(a3 + (4 * lda + k) * es, _MM_HINT_T0);
        p0 = _mm256_fmadd_ps(load8(dtype, a0, (size_t)k), x0, p0);
        q0 = _mm256_fmadd_ps(load8(dtype, a0, (size_t)k + 8), x1, q0);
        p1 = _mm256_fmadd_ps(load8(dtype, a1, (size_t)k), x0, p1);
        q1 = _mm256_fmadd_ps(load8(dtype, a1, (size_t)k + 8), x1, q1);
        p2 = _mm256_fmadd_ps(load8(dtype, a2, (size_t)k), x0, p2);
        q2 = _mm256_fmadd_ps(load8(dtype, a2, (size_t)k + 8), x1, q2);
        p3 = _mm256_fmadd_ps(load8(dtype, a3, (size_t)k), x0, p3);
        q3 = _mm256_fmadd_ps(load8(dtype, a3, (size_t)k + 8), x1, q3);
    }
    if (k + 8 <= in) {
        __m256 x0 = _mm256_loadu_ps(x + k);
        p0 = _mm256_fmadd_ps(load8(dtype, a0, (size_t)k), x0, p0);
        p1 = _mm256_fmadd_ps(load8(dtype, a1, (size_t)k), x0, p1);
        p2 = _mm256_fmadd_ps(load8(dtype, a2, (size_t)k), x0, p2);
        p3 = _mm256_fmadd_ps(load8(dtype, a3, (size_t)k), x0, p3);
        k += 8;
    }
    t[0] = dot_tail(dtype, a0, k, in, x, p0, q0);
    t[1] = dot_tail(dtype, a1, k, in, x, p1, q1);
    t[2] = dot_tail(dtype, a2, k, in, x, p2, q2);
    t[3] = dot_tail(dtype, a3, k, in, x, p3, q3);
}

INLINE_AVX2 float dot1_t(uint32_t dtype, const void *a, int in, const float *x)
{
    __m256 p = _mm256_setzero_ps(), q = p;
    int k = 0;
    for (; k + 16 <= in; k += 16) {
        p = _mm256_fmadd_ps(load8(dtype, a, (size_t)k), _mm256_loadu_ps(x + k), p);
        q = _mm256_fmadd_ps(load8(dtype, a, (size_t)k + 8), _mm256_loadu_ps(x + k + 8), q);
    }
    if (k + 8 <= in) {
        p = _mm256_fmadd_ps(load8(dtype, a, (size_t)k), _mm256_loadu_ps(x + k), p);
        k += 8;
    }
    return dot_tail(dtype, a, k, in, x, p, q);
}

/* t = A · x for one input row: A (rank, in). */
INLINE_AVX2 void shrink_t(uint32_t dtype, const void *A, int rank, int in, const float *x, float *t)
{
    size_t row = (size_t)in * (dtype == CORE_TYPE_F32 ? 4 : 2);
    int j = 0;
    for (; j + 4 <= rank; j += 4)
        dot4_t(dtype, (const char *)A + j * row, (size_t)in, in, x, t + j);
    for (; j < rank; j++)
        t[j] = dot1_t(dtype, (const char *)A + j * row, in, x);
}

AVX2 static void shrink_avx2(uint32_t dtype, const void *A, int rank, int in, const float *x,
                             float *t)
{
    if (dtype == CORE_TYPE_F16)
        shrink_t(CORE_TYPE_F16, A, rank, in, x, t);
    else if (dtype == CORE_TYPE_BF16)
        shrink_t(CORE_TYPE_BF16, A, rank, in, x, t);
    else
        shrink_t(CORE_TYPE_F32, A, rank, in, x, t);
}

/* y[0..no) += Σ_j t[j] · b[j][0..no), b row j at b + j * ldb (f32): 32 outputs at a time, four
 * independent chains; the sum runs over j in order for every output. */
AVX2 static void expand_avx2(const float *b, size_t ldb, int rank, int no, const float *t, float *y)
{
    int o = 0;
    for (; o + 32 <= no; o += 32) {
        __m256 y0 = _mm256_loadu_ps(y + o), y1 = _mm256_loadu_ps(y + o + 8),
               y2 = _mm256_loadu_ps(y + o + 16), y3 = _mm256_loadu_ps(y + o + 24);
        for (int j = 0; j < rank; j++) {
            const float *bj = b + (size_t)j * ldb + o;
            __m256 tj = _mm256_set1_ps(t[j]);
            y0 = _mm256_fmadd_ps(tj, _mm256_loadu_ps(bj), y0);
            y1 = _mm256_fmadd_ps(tj, _mm256_loadu_ps(bj + 8), y1);
            y2 = _mm256_fmadd_ps(tj, _mm256_loadu_ps(bj + 16), y2);
            y3 = _mm256_fmadd_ps(tj, _mm256_loadu_ps(bj + 24), y3);
        }
        _mm256_storeu_ps(y + o, y0);
        _mm256_storeu_ps(y + o + 8, y1);
        _mm256_storeu_ps(y + o + 16, y2);
        _mm256_storeu_ps(y + o + 24, y3);
    }
    for (; o + 8 <= no; o += 8) {
        __m256 y0 = _mm256_loadu_ps(y + o);
        for (int j = 0; j < rank; j++)
            y0 =
                _mm256_fmadd_ps(_mm256_set1_ps(t[j]), _mm256_loadu_ps(b + (size_t)j * ldb + o), y0);
        _mm256_storeu_ps(y + o, y0);
    }
    if (o < no)
        expand_generic(b + o, ldb, rank, no - o, t, y + o);
}

/* ---- dispatch ---------------------------------------------------------------------------------
 */

typedef struct lora_ops {
    void (*cvt)(uint32_t, const void *, float *, int);
    void (*shrink)(uint32_t, const void *, int, int, const float *, float *);
    void (*expand)(const float *, size_t, int, int, const float *, float *);
} lora_ops;

static const lora_ops generic_ops = {cvt_generic, shrink_generic, expand_generic};

/* AVX2 from that level up (core/kernels/cpu_internal.h), the portable kernels below it. */
static const lora_ops *ops(void)
{
    static const lora_ops avx2 = {cvt_avx2, shrink_avx2, expand_avx2};
    return core__cpu_level() >= CORE_CPU_AVX2 ? &avx2 : &generic_ops;
}

void core__lora_group(uint32_t dtype, const void *A, const void *Bt, int rank, int in, int out,
                      int n_rows, const int32_t *rows, const float *scales, const float *X,
                      float *Y, float *scratch)
{
    const lora_ops *o = ops();
    size_t es = dtype == CORE_TYPE_F32 ? 4 : 2;
    const char *bt = Bt;
    int ob = out_block(rank, out);
    float *T = scratch;                   /* (ROWS, rank) */
    float *blk = T + (size_t)ROWS * rank; /* (rank, ob) a block of Bt in f32 */
    for (int r0 = 0; r0 < n_rows; r0 += ROWS) {
        int nr = n_rows - r0 < ROWS ? n_rows - r0 : ROWS;
        /* t = scale · A · x for each row of the pass (A is re-read from cache after the first) */
        for (int i = 0; i < nr; i++) {
            float *t = T + (size_t)i * rank;
            o->shrink(dtype, A, rank, in, X + (size_t)rows[r0 + i] * in, t);
            for (int j = 0; j < rank; j++)
                t[j] *= scales[r0 + i];
        }
        /* y += Btᵀ · t, ob outputs at a time; f32 weights are read in place */
        for (int o0 = 0; o0 < out; o0 += ob) {
            int no = out - o0 < ob ? out - o0 : ob;
            const float *b = (const float *)(const void *)bt + o0;
            size_t ldb = (size_t)out;
            if (dtype != CORE_TYPE_F32) {
                if (ob == out)
                    o->cvt(dtype, bt, blk, rank * out);
                else
                    for (int j = 0; j < rank; j++)
                        o->cvt(dtype, bt + ((size_t)j * out + o0) * es, blk + (size_t)j * ob, no);
                b = blk;
                ldb = (size_t)ob;
            }
            for (int i = 0; i < nr; i++)
                o->expand(b, ldb, rank, no, T + (size_t)i * rank,
                          Y + (size_t)rows[r0 + i] * out + o0);
        }
    }
}
