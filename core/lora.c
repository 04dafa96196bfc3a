/* LoRA kernels for groups of few rows: A and B are read once per group, converted to f32 in
 * cache-sized pieces, with an AVX2/F16C/FMA path chosen at run time and a portable fallback. */
#include "lora.h"

#include <cpuid.h>
#include <immintrin.h>
#include <stdbool.h>
#include <string.h>

#include "quant.h"

#define ROWS 8 /* rows per pass over A and B */
#define OCH 64 /* outputs per converted (transposed) block of B */

size_t core__lora_scratch_floats(int rank, int in)
{
    return (size_t)ROWS * rank + (size_t)in + (size_t)rank * OCH + (size_t)rank;
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

static float dot_generic(const float *a, const float *b, int n)
{
    float s = 0.0f;
    for (int i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static void axpy_generic(float t, const float *x, float *y, int n)
{
    for (int i = 0; i < n; i++)
        y[i] += t * x[i];
}

/* ---- AVX2 + FMA + F16C ----------------------------------------------------------------------- */

#define AVX2 __attribute__((target("avx2,fma,f16c")))

AVX2 static void cvt_avx2(uint32_t dtype, const void *src, float *dst, int n)
{
    const uint16_t *h = src;
    int i = 0;
    if (dtype == CORE_TYPE_F16) {
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
    } else if (dtype == CORE_TYPE_BF16) {
        for (; i + 8 <= n; i += 8) {
            __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(h + i)));
            _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
        }
    }
    if (i < n)
        cvt_generic(dtype, (const char *)src + (size_t)i * (dtype == CORE_TYPE_F32 ? 4 : 2),
                    dst + i, n - i);
}

AVX2 static float dot_avx2(const float *a, const float *b, int n)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(),
           s3 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
    }
    for (; i + 8 <= n; i += 8)
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    __m256 s = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    float r = _mm_cvtss_f32(q);
    for (; i < n; i++)
        r += a[i] * b[i];
    return r;
}

AVX2 static void axpy_avx2(float t, const float *x, float *y, int n)
{
    __m256 tv = _mm256_set1_ps(t);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i,
                         _mm256_fmadd_ps(tv, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++)
        y[i] += t * x[i];
}

/* ---- dispatch ---------------------------------------------------------------------------------
 */

typedef struct lora_ops {
    void (*cvt)(uint32_t, const void *, float *, int);
    float (*dot)(const float *, const float *, int);
    void (*axpy)(float, const float *, float *, int);
} lora_ops;

static const lora_ops generic_ops = {cvt_generic, dot_generic, axpy_generic};
static const lora_ops *chosen;

void core__lora_force_generic(int on)
{
    chosen = on ? &generic_ops : NULL;
}

static const lora_ops *ops(void)
{
    static const lora_ops avx2 = {cvt_avx2, dot_avx2, axpy_avx2};
    if (!chosen) {
        /* avx2/fma through the compiler (it also checks the OS saves YMM state); F16C is CPUID
         * leaf 1 ECX bit 29, which not every compiler's __builtin_cpu_supports knows. */
        unsigned a, b, c, d;
        __builtin_cpu_init();
        bool f16c = __get_cpuid(1, &a, &b, &c, &d) && (c >> 29 & 1);
        chosen = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c
                     ? &avx2
                     : &generic_ops;
    }
    return chosen;
}

void core__lora_cvt(uint32_t dtype, const void *src, float *dst, size_t n)
{
    const lora_ops *o = ops();
    size_t es = dtype == CORE_TYPE_F32 ? 4 : 2, chunk = 1 << 20;
    for (size_t i = 0; i < n; i += chunk)
        o->cvt(dtype, (const char *)src + i * es, dst + i, (int)(n - i < chunk ? n - i : chunk));
}

void core__lora_group(uint32_t dtype, const void *A, const void *B, int rank, int in, int out,
                      int n_rows, const int32_t *rows, const float *scales, const float *X,
                      float *Y, float *scratch)
{
    const lora_ops *o = ops();
    size_t es = dtype == CORE_TYPE_F32 ? 4 : 2;
    const char *a = A, *b = B;
    float *T = scratch;                    /* (ROWS, rank) */
    float *arow = T + (size_t)ROWS * rank; /* (in) one row of A in f32 */
    float *bt = arow + in;                 /* (rank, OCH) a block of B, transposed */
    float *brow = bt + (size_t)rank * OCH; /* (rank) one row of B in f32 */
    for (int r0 = 0; r0 < n_rows; r0 += ROWS) {
        int nr = n_rows - r0 < ROWS ? n_rows - r0 : ROWS;
        /* t = A · x for each row of the pass */
        for (int j = 0; j < rank; j++) {
            const float *aj = arow;
            if (dtype == CORE_TYPE_F32)
                aj = (const float *)(const void *)(a + (size_t)j * in * es);
            else
                o->cvt(dtype, a + (size_t)j * in * es, arow, in);
            for (int i = 0; i < nr; i++)
                T[(size_t)i * rank + j] = o->dot(aj, X + (size_t)rows[r0 + i] * in, in);
        }
        for (int i = 0; i < nr; i++)
            for (int j = 0; j < rank; j++)
                T[(size_t)i * rank + j] *= scales[r0 + i];
        /* y += B · t, B taken OCH outputs at a time and transposed to (rank, OCH) */
        for (int o0 = 0; o0 < out; o0 += OCH) {
            int no = out - o0 < OCH ? out - o0 : OCH;
            for (int k = 0; k < no; k++) {
                const float *br = brow;
                if (dtype == CORE_TYPE_F32)
                    br = (const float *)(const void *)(b + (size_t)(o0 + k) * rank * es);
                else
                    o->cvt(dtype, b + (size_t)(o0 + k) * rank * es, brow, rank);
                for (int j = 0; j < rank; j++)
                    bt[(size_t)j * OCH + k] = br[j];
            }
            for (int i = 0; i < nr; i++) {
                float *y = Y + (size_t)rows[r0 + i] * out + o0;
                const float *t = T + (size_t)i * rank;
                for (int j = 0; j < rank; j++)
                    o->axpy(t[j], bt + (size_t)j * OCH, y, no);
            }
        }
    }
}
