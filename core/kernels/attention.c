/* Vectorised attention, exp and SwiGLU for the forward pass (vmath.h): AVX2/FMA kernels chosen
 * at run time, portable versions beside them. */
#include "core/kernels/attention_internal.h"

#include "core/format/types.h"
#include "core/kernels/cpu_internal.h"
#include "core/kernels/simd_internal.h"

#include <cpuid.h>
#include <immintrin.h>
#include <math.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

/* ---- portable ------------------------------------------------------------------------------ */

static void vexp_generic(const float *x, float *y, int n)
{
    for (int i = 0; i < n; i++)
        y[i] = expf(x[i]);
}

static void swiglu_generic(float *gate, const float *up, long n)
{
    for (long i = 0; i < n; i++) {
        float g = gate[i];
        gate[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

/* GeGLU, gate[i] = gelu_tanh(gate[i]) * up[i], as torch's gelu(approximate="tanh"):
 * 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3), in f32. The vector kernels use
 * 0.5 (1 + tanh(u)) = 1 / (1 + exp(-2u)), SwiGLU's form with their exp. */
#define GELU_BETA ((float)(M_SQRT2 * M_2_SQRTPI * 0.5))
#define GELU_KAPPA 0.044715f

static void geglu_generic(float *gate, const float *up, long n)
{
    for (long i = 0; i < n; i++) {
        float x = gate[i];
        float inner = GELU_BETA * (x + GELU_KAPPA * (x * x * x));
        gate[i] = 0.5f * x * (1.0f + tanhf(inner)) * up[i];
    }
}

/* Element i of a K or V row stored as f32 or f16. */
static inline float kv_at(const void *row, int i, int f16)
{
    return f16 ? core_fp16_to_fp32(((const uint16_t *)row)[i]) : ((const float *)row)[i];
}

static void attend_generic(const float *q, const core__kv_view *K, const core__kv_view *V, int f16,
                           int n_head, int n_kv, int hd, int pos, float *sc, float *out, float *ml)
{
    int group = n_head / n_kv;
    size_t es = f16 ? 2 : 4;
    float scale = 1.0f / sqrtf((float)hd);
    for (int h = 0; h < n_head; h++) {
        const float *qh = q + h * hd;
        int off = (h / group) * hd;
        float mx = -INFINITY;
        for (int t = 0; t <= pos; t++) {
            const char *kt = core__kv_row(K, t) + (size_t)off * es;
            float d = 0.0f;
            for (int i = 0; i < hd; i++)
                d += qh[i] * kv_at(kt, i, f16);
            sc[t] = d * scale;
            mx = sc[t] > mx ? sc[t] : mx;
        }
        double sum = 0.0;
        for (int t = 0; t <= pos; t++) {
            sc[t] = expf(sc[t] - mx);
            sum += sc[t];
        }
        float inv = (float)(1.0 / sum);
        if (ml)
            ml[2 * h] = mx, ml[2 * h + 1] = (float)sum;
        float *oh = out + h * hd;
        memset(oh, 0, (size_t)hd * sizeof(float));
        for (int t = 0; t <= pos; t++) {
            const char *vt = core__kv_row(V, t) + (size_t)off * es;
            float p = sc[t] * inv;
            for (int i = 0; i < hd; i++)
                oh[i] += p * kv_at(vt, i, f16);
        }
    }
}

/* ---- AVX2 + FMA ------------------------------------------------------------------------------ */

#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define AVX2_INLINE __attribute__((target("avx2,fma,f16c"), always_inline)) static inline

/* exp(x) per lane, at either width (core/kernels/simd_internal.h): x = n ln2 + r with
 * |r| <= ln2/2, e^r by a degree-7 polynomial (Cephes expf's coefficients), scaled by 2^n through
 * the exponent bits. Inputs below the smallest normal result give 0 (expf would give a
 * subnormal), above 88.37 give about 2.4e38. */
#define DEFINE_EXP(NAME, ATTR, W)                                                                  \
    ATTR SIMD_OP(W, F32) NAME(SIMD_OP(W, F32) x)                                                   \
    {                                                                                              \
        const SIMD_OP(W, F32) hi = SIMD_OP(W, SET1)(88.3762626647949f);                            \
        const SIMD_OP(W, F32) lo = SIMD_OP(W, SET1)(-87.3365478515625f);                           \
        SIMD_OP(W, MASK) under = SIMD_OP(W, LT)(x, lo);                                            \
        x = SIMD_OP(W, MAX)(SIMD_OP(W, MIN)(x, hi), lo);                                           \
        SIMD_OP(W, F32)                                                                            \
        n = SIMD_OP(W, FLOOR)(                                                                     \
            SIMD_OP(W, FMADD)(x, SIMD_OP(W, SET1)(1.44269504088896341f), SIMD_OP(W, SET1)(0.5f))); \
        SIMD_OP(W, F32) r = SIMD_OP(W, FNMADD)(n, SIMD_OP(W, SET1)(0.693359375f), x);              \
        r = SIMD_OP(W, FNMADD)(n, SIMD_OP(W, SET1)(-2.12194440e-4f), r);                           \
        SIMD_OP(W, F32) p = SIMD_OP(W, SET1)(1.9875691500e-4f);                                    \
        p = SIMD_OP(W, FMADD)(p, r, SIMD_OP(W, SET1)(1.3981999507e-3f));                           \
        p = SIMD_OP(W, FMADD)(p, r, SIMD_OP(W, SET1)(8.3334519073e-3f));                           \
        p = SIMD_OP(W, FMADD)(p, r, SIMD_OP(W, SET1)(4.1665795894e-2f));                           \
        p = SIMD_OP(W, FMADD)(p, r, SIMD_OP(W, SET1)(1.6666665459e-1f));                           \
        p = SIMD_OP(W, FMADD)(p, r, SIMD_OP(W, SET1)(5.0000001201e-1f));                           \
        p = SIMD_OP(W, FMADD)(p, SIMD_OP(W, MUL)(r, r),                                            \
                              SIMD_OP(W, ADD)(r, SIMD_OP(W, SET1)(1.0f)));                         \
        SIMD_OP(W, I32)                                                                            \
        e = SIMD_OP(W, SLLI_I32)(                                                                  \
            SIMD_OP(W, ADD_I32)(SIMD_OP(W, CVT_I32)(n), SIMD_OP(W, SET1_I32)(127)), 23);           \
        return SIMD_OP(W, ZERO_WHERE)(under, SIMD_OP(W, MUL)(p, SIMD_OP(W, AS_F32)(e)));           \
    }

/* LANES floats of a K or V array (f32 or f16) from element i, at either width. */
#define DEFINE_LOAD_KV(NAME, ATTR, W)                                                              \
    ATTR SIMD_OP(W, F32) NAME(const void *base, size_t i, int f16)                                 \
    {                                                                                              \
        if (f16)                                                                                   \
            return SIMD_OP(W, LOAD_F16)((const uint16_t *)base + i);                               \
        return SIMD_OP(W, LOADU)((const float *)base + i);                                         \
    }

DEFINE_EXP(exp8, AVX2_INLINE, SIMD8)
DEFINE_LOAD_KV(load8, AVX2_INLINE, SIMD8)

/* Rows ahead of the one being read that are prefetched: a sequence's cache is a chain of 16-row
 * blocks, in order within its planes (core/model/kv_internal.h) when the pool was fresh, else
 * anywhere, and the hardware prefetchers ramp up again at every block. Eight rows ahead (1-4
 * KB) took 32 rows at position 1024 with f16 KV from 104.6 to 95.4 ms on an Intel Xeon (family
 * 6, model 167); 32 and 64 rows ahead gave less. */
#define KV_AHEAD 8

/* The grouped kernels' f16 caches: rows t0..t1-1 of a view (hd f16 from byte off) widened to f32
 * in buf (rows of hd floats), once for all the query heads of the group that read them (they
 * used to widen every row once per head); tile_source reads buf in place of the cache. Widening
 * is exact: the same bits as reading the f16 directly. */
AVX2_INLINE void widen_tile(const core__kv_view *X, size_t off, int t0, int t1, int T, int hd,
                            float *buf)
{
    for (int t = t0; t < t1; t++) {
        const uint16_t *x = (const uint16_t *)(core__kv_row(X, t) + off);
        float *y = buf + (size_t)(t - t0) * hd;
        if (t + KV_AHEAD < T) {
            const char *next = core__kv_row(X, t + KV_AHEAD) + off;
            for (int i = 0; i < 2 * hd; i += 64)
                _mm_prefetch(next + i, _MM_HINT_T0);
        }
        for (int i = 0; i < hd; i += 8)
            _mm256_storeu_ps(y + i, SIMD8_LOAD_F16(x + i));
    }
}

static const int32_t tile_table[1] = {0};

/* The view a grouped kernel reads rows t0..t1-1 of X through, into *out, and the byte offset to
 * read each row from: X itself from off, or with an f16 cache the rows widened into buf (rows of
 * hd floats, from 0). */
AVX2_INLINE size_t tile_source(const core__kv_view *X, size_t off, int f16, int t0, int t1, int T,
                               int hd, float *buf, core__kv_view *out)
{
    if (!f16) {
        *out = *X;
        return off;
    }
    widen_tile(X, off, t0, t1, T, hd, buf);
    *out = (core__kv_view){.base = (const char *)buf,
                           .table = tile_table,
                           .row_stride = (size_t)hd * sizeof(float),
                           .shift = 30,
                           .first = -t0};
    return 0;
}

AVX2_INLINE float hsum8(__m256 s)
{
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
}

/* y = exp(x) and gate = silu(gate) * up, LANES at a time (EXP: exp8 or exp16); the last
 * partial vector goes through a zero-padded copy. */
#define DEFINE_VEXP(NAME, ATTR, W, EXP)                                                            \
    ATTR static void NAME(const float *x, float *y, int n)                                         \
    {                                                                                              \
        enum { L = SIMD_OP(W, LANES) };                                                            \
        int i = 0;                                                                                 \
        for (; i + L <= n; i += L)                                                                 \
            SIMD_OP(W, STOREU)(y + i, EXP(SIMD_OP(W, LOADU)(x + i)));                              \
        if (i < n) {                                                                               \
            float tx[L] = {0}, ty[L];                                                              \
            memcpy(tx, x + i, (size_t)(n - i) * sizeof(float));                                    \
            SIMD_OP(W, STOREU)(ty, EXP(SIMD_OP(W, LOADU)(tx)));                                    \
            memcpy(y + i, ty, (size_t)(n - i) * sizeof(float));                                    \
        }                                                                                          \
    }
/* The gated units: gate[i] = gate[i] / (1 + exp(ARG(gate[i]))) * up[i]. SwiGLU: ARG(g) = -g
 * (silu). GeGLU: ARG(x) = -2u = x (c3 x^2 + c1), c1 = -2 beta, c3 = -2 beta kappa, since
 * 0.5 (1 + tanh(u)) = 1 / (1 + exp(-2u)). */
#define SILU_ARG(W, g) SIMD_OP(W, SUB)(SIMD_OP(W, ZERO)(), g)
#define GELU_ARG(W, x)                                                                             \
    SIMD_OP(W, MUL)                                                                                \
    (x, SIMD_OP(W, FMADD)(SIMD_OP(W, SET1)(-2.0f * GELU_BETA * GELU_KAPPA), SIMD_OP(W, MUL)(x, x), \
                          SIMD_OP(W, SET1)(-2.0f * GELU_BETA)))
#define DEFINE_GLU(NAME, ATTR, W, EXP, ARG)                                                        \
    ATTR static void NAME(float *gate, const float *up, long n)                                    \
    {                                                                                              \
        enum { L = SIMD_OP(W, LANES) };                                                            \
        const SIMD_OP(W, F32) one = SIMD_OP(W, SET1)(1.0f);                                        \
        long i = 0;                                                                                \
        for (; i + L <= n; i += L) {                                                               \
            SIMD_OP(W, F32) g = SIMD_OP(W, LOADU)(gate + i);                                       \
            SIMD_OP(W, F32) s = SIMD_OP(W, DIV)(g, SIMD_OP(W, ADD)(one, EXP(ARG(W, g))));          \
            SIMD_OP(W, STOREU)(gate + i, SIMD_OP(W, MUL)(s, SIMD_OP(W, LOADU)(up + i)));           \
        }                                                                                          \
        if (i < n) {                                                                               \
            float tg[L] = {0}, tu[L] = {0};                                                        \
            memcpy(tg, gate + i, (size_t)(n - i) * sizeof(float));                                 \
            memcpy(tu, up + i, (size_t)(n - i) * sizeof(float));                                   \
            NAME(tg, tu, L);                                                                       \
            memcpy(gate + i, tg, (size_t)(n - i) * sizeof(float));                                 \
        }                                                                                          \
    }

DEFINE_VEXP(vexp_avx2, AVX2, SIMD8, exp8)
DEFINE_GLU(swiglu_avx2, AVX2, SIMD8, exp8, SILU_ARG)
DEFINE_GLU(geglu_avx2, AVX2, SIMD8, exp8, GELU_ARG)

/* hd a multiple of 8 between 136 and 248 (the grouped kernels take the rest up to 128, and 256).
 * Scores one key at a time (the head's query in registers is reloaded from L1), exp over the
 * whole row of scores, then the weighted sum of values with hd / 8 independent accumulators. */
AVX2_INLINE void attend_avx2_t(const float *q, const core__kv_view *K, const core__kv_view *V,
                               int f16, int n_head, int n_kv, int hd, int pos, float *sc,
                               float *out, float *ml)
{
    int group = n_head / n_kv, nv = hd / 8;
    size_t es = f16 ? 2 : 4;
    float scale = 1.0f / sqrtf((float)hd);
    for (int h = 0; h < n_head; h++) {
        const float *qh = q + h * hd;
        int off = (h / group) * hd;
        __m256 mxv = _mm256_set1_ps(-INFINITY);
        for (int t = 0; t <= pos; t++) {
            const char *kt = core__kv_row(K, t) + (size_t)off * es;
            __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(); /* even, odd chunks */
            for (int v = 0; v < nv; v++) {
                __m256 d =
                    _mm256_mul_ps(_mm256_loadu_ps(qh + 8 * v), load8(kt, 8 * (size_t)v, f16));
                if (v & 1)
                    s1 = _mm256_add_ps(s1, d);
                else
                    s0 = _mm256_add_ps(s0, d);
            }
            sc[t] = hsum8(_mm256_add_ps(s0, s1)) * scale;
            mxv = _mm256_max_ps(mxv, _mm256_set1_ps(sc[t]));
        }
        __m256 mx = mxv;
        int t = 0;
        __m256 sumv = _mm256_setzero_ps();
        for (; t + 8 <= pos + 1; t += 8) {
            __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(sc + t), mx));
            _mm256_storeu_ps(sc + t, e);
            sumv = _mm256_add_ps(sumv, e);
        }
        float sum = hsum8(sumv);
        float mxs = _mm256_cvtss_f32(mx);
        for (; t <= pos; t++) {
            float e[8] = {sc[t] - mxs};
            _mm256_storeu_ps(e, exp8(_mm256_loadu_ps(e)));
            sc[t] = e[0];
            sum += e[0];
        }
        __m256 inv = _mm256_set1_ps(1.0f / sum);
        if (ml)
            ml[2 * h] = mxs, ml[2 * h + 1] = sum;
        __m256 acc[32];
        for (int v = 0; v < nv; v++)
            acc[v] = _mm256_setzero_ps();
        for (t = 0; t <= pos; t++) {
            const char *vt = core__kv_row(V, t) + (size_t)off * es;
            __m256 p = _mm256_mul_ps(_mm256_set1_ps(sc[t]), inv);
            for (int v = 0; v < nv; v++)
                acc[v] = _mm256_fmadd_ps(p, load8(vt, 8 * (size_t)v, f16), acc[v]);
        }
        for (int v = 0; v < nv; v++)
            _mm256_storeu_ps(out + h * hd + 8 * v, acc[v]);
    }
}

AVX2 static void attend_avx2_f32(const float *q, const core__kv_view *K, const core__kv_view *V,
                                 int n_head, int n_kv, int hd, int pos, float *sc, float *out,
                                 float *ml)
{
    attend_avx2_t(q, K, V, 0, n_head, n_kv, hd, pos, sc, out, ml);
}

AVX2 static void attend_avx2_f16(const float *q, const core__kv_view *K, const core__kv_view *V,
                                 int n_head, int n_kv, int hd, int pos, float *sc, float *out,
                                 float *ml)
{
    attend_avx2_t(q, K, V, 1, n_head, n_kv, hd, pos, sc, out, ml);
}

/* ---- AVX2, grouped (hd a multiple of 8, at most 128, or 256) ------------------------------ */

#if defined(__clang__)
#define UNROLL8 _Pragma("clang loop unroll(full)")
#else
#define UNROLL8 _Pragma("GCC unroll 16")
#endif

/* The 8 lane sums of a[0..7], as one vector (lane j = sum of a[j]). */
AVX2_INLINE __m256 hsum8x8(const __m256 *a)
{
    __m256 c0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    __m256 c1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
    /* c0's 128-bit halves: the low-half and high-half sums of a[0..3]; c1 of a[4..7] */
    return _mm256_add_ps(_mm256_permute2f128_ps(c0, c1, 0x20),
                         _mm256_permute2f128_ps(c0, c1, 0x31));
}

/* All ones in the first n of 8 lanes (n <= 8). */
AVX2_INLINE __m256i first8(int n)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* Scores of the (scaled) query qs against keys t0..t0+nk-1 (nk <= 8; lanes past nk are garbage)
 * of an f32 view (tile_source's): NZ 8-float chunks per key, the query chunk shared by the eight
 * keys' chains. */
AVX2_INLINE __m256 score8(const float *qs, int NZ, const core__kv_view *K, size_t off, int t0,
                          int nk)
{
    __m256 acc[8];
    const float *kt[8];
    UNROLL8
    for (int j = 0; j < 8; j++) {
        kt[j] = (const float *)(core__kv_row(K, j < nk ? t0 + j : t0) + off);
        acc[j] = _mm256_mul_ps(_mm256_loadu_ps(qs), _mm256_loadu_ps(kt[j]));
    }
    UNROLL8
    for (int v = 1; v < NZ; v++) {
        __m256 qv = _mm256_loadu_ps(qs + 8 * v);
        UNROLL8
        for (int j = 0; j < 8; j++)
            acc[j] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kt[j] + 8 * v), acc[j]);
    }
    return hsum8x8(acc);
}

/* attend_group16's plan on 8 lanes: the G (<= 8) query heads sharing one KV head score, then
 * weigh, each 64-key tile while it is in L1. sc holds G rows of pos + 1 scores. */
#define TILE8 64
AVX2_INLINE void attend_group8(const float *qg, const core__kv_view *K, const core__kv_view *V,
                               size_t off, int f16, int NZ, int G, int pos, float scale, float *sc,
                               float *og, float *ml)
{
    int T = pos + 1, hd = 8 * NZ;
    float mx[8], inv[8], qs[8 * 256], tb[TILE8 * 256];
    for (int h = 0; h < G; h++) {
        mx[h] = -INFINITY;
        for (int i = 0; i < hd; i++)
            qs[h * hd + i] = qg[h * hd + i] * scale;
    }
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    for (int t0 = 0; t0 < T; t0 += TILE8) {
        int t1 = t0 + TILE8 < T ? t0 + TILE8 : T;
        core__kv_view Kt;
        size_t koff = tile_source(K, off, f16, t0, t1, T, hd, tb, &Kt);
        for (int h = 0; h < G; h++) {
            __m256 mxv = _mm256_set1_ps(mx[h]);
            for (int b = t0; b < t1; b += 8) {
                int nk = t1 - b < 8 ? t1 - b : 8;
                __m256 s = score8(qs + h * hd, NZ, &Kt, koff, b, nk);
                if (nk == 8) {
                    _mm256_storeu_ps(sc + (size_t)h * T + b, s);
                } else {
                    __m256i m = first8(nk);
                    _mm256_maskstore_ps(sc + (size_t)h * T + b, m, s);
                    s = _mm256_blendv_ps(ninf, s, _mm256_castsi256_ps(m));
                }
                mxv = _mm256_max_ps(mxv, s);
            }
            __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mxv), _mm256_extractf128_ps(mxv, 1));
            m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            mx[h] = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
        }
    }
    for (int h = 0; h < G; h++) {
        float *sh = sc + (size_t)h * T;
        __m256 mxh = _mm256_set1_ps(mx[h]), sumv = _mm256_setzero_ps();
        int t = 0;
        for (; t + 8 <= T; t += 8) {
            __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(sh + t), mxh));
            _mm256_storeu_ps(sh + t, e);
            sumv = _mm256_add_ps(sumv, e);
        }
        if (t < T) {
            __m256i m = first8(T - t);
            __m256 e = exp8(_mm256_sub_ps(_mm256_maskload_ps(sh + t, m), mxh));
            e = _mm256_and_ps(e, _mm256_castsi256_ps(m));
            _mm256_maskstore_ps(sh + t, m, e);
            sumv = _mm256_add_ps(sumv, e);
        }
        float sum = hsum8(sumv);
        inv[h] = 1.0f / sum;
        if (ml)
            ml[2 * h] = mx[h], ml[2 * h + 1] = sum;
        memset(og + h * hd, 0, sizeof(float) * (size_t)hd);
    }
    for (int t0 = 0; t0 < T; t0 += TILE8) {
        int t1 = t0 + TILE8 < T ? t0 + TILE8 : T;
        core__kv_view Vt;
        size_t voff = tile_source(V, off, f16, t0, t1, T, hd, tb, &Vt);
        for (int h = 0; h < G; h++) {
            const float *sh = sc + (size_t)h * T;
            float *oh = og + h * hd;
            /* eight chunks (64 floats) of the head at a time: eight accumulators in registers */
            UNROLL8
            for (int v0 = 0; v0 < NZ; v0 += 8) {
                __m256 a[8];
                UNROLL8
                for (int v = 0; v < 8; v++)
                    if (v0 + v < NZ)
                        a[v] = _mm256_loadu_ps(oh + 8 * (v0 + v));
                for (int t = t0; t < t1; t++) {
                    const float *vt = (const float *)(core__kv_row(&Vt, t) + voff);
                    __m256 p = _mm256_set1_ps(sh[t] * inv[h]);
                    UNROLL8
                    for (int v = 0; v < 8; v++)
                        if (v0 + v < NZ)
                            a[v] = _mm256_fmadd_ps(p, _mm256_loadu_ps(vt + 8 * (v0 + v)), a[v]);
                }
                UNROLL8
                for (int v = 0; v < 8; v++)
                    if (v0 + v < NZ)
                        _mm256_storeu_ps(oh + 8 * (v0 + v), a[v]);
            }
        }
    }
}

/* Heads one KV group at a time (GROUP_FN: attend_group8 or attend_group16), at most 8 heads of a
 * group together; hd = LANES * NZ. */
#define ATTEND_GROUPED(NAME, TARGET, LANES, GROUP_FN, NZ, F16)                                     \
    TARGET static void NAME(const float *q, const core__kv_view *K, const core__kv_view *V,        \
                            int n_head, int n_kv, int pos, float *sc, float *out, float *ml)       \
    {                                                                                              \
        int hd = (LANES) * (NZ), group = n_head / n_kv;                                            \
        float scale = 1.0f / sqrtf((float)hd);                                                     \
        size_t es = (F16) ? 2 : 4;                                                                 \
        for (int h = 0; h < n_head;) {                                                             \
            int g = h / group, G = (g + 1) * group - h < 8 ? (g + 1) * group - h : 8;              \
            size_t off = (size_t)g * hd * es;                                                      \
            GROUP_FN(q + h * hd, K, V, off, F16, NZ, G, pos, scale, sc, out + h * hd,              \
                     ml ? ml + 2 * h : NULL);                                                      \
            h += G;                                                                                \
        }                                                                                          \
    }
#define ATTEND8(NZ, F16) ATTEND_GROUPED(attend8_##NZ##_##F16, AVX2, 8, attend_group8, NZ, F16)
#define ATTEND8_BOTH(NZ) ATTEND8(NZ, 0) ATTEND8(NZ, 1)
ATTEND8_BOTH(1)
ATTEND8_BOTH(2)
ATTEND8_BOTH(3)
ATTEND8_BOTH(4)
ATTEND8_BOTH(5)
ATTEND8_BOTH(6)
ATTEND8_BOTH(7)
ATTEND8_BOTH(8)
ATTEND8_BOTH(9)
ATTEND8_BOTH(10)
ATTEND8_BOTH(11)
ATTEND8_BOTH(12)
ATTEND8_BOTH(13)
ATTEND8_BOTH(14)
ATTEND8_BOTH(15)
ATTEND8_BOTH(16)
ATTEND8_BOTH(32) /* head_dim 256 (Gemma 3) */

typedef void (*attend_fn)(const float *, const core__kv_view *, const core__kv_view *, int, int,
                          int, float *, float *, float *);
static const attend_fn attend8[2][17] = {
    {NULL, attend8_1_0, attend8_2_0, attend8_3_0, attend8_4_0, attend8_5_0, attend8_6_0,
     attend8_7_0, attend8_8_0, attend8_9_0, attend8_10_0, attend8_11_0, attend8_12_0, attend8_13_0,
     attend8_14_0, attend8_15_0, attend8_16_0},
    {NULL, attend8_1_1, attend8_2_1, attend8_3_1, attend8_4_1, attend8_5_1, attend8_6_1,
     attend8_7_1, attend8_8_1, attend8_9_1, attend8_10_1, attend8_11_1, attend8_12_1, attend8_13_1,
     attend8_14_1, attend8_15_1, attend8_16_1}};

#if defined(__clang__)
#define UNROLL16 _Pragma("clang loop unroll(full)")
#else
#define UNROLL16 _Pragma("GCC unroll 16")
#endif

/* ---- AVX-512 -----------------------------------------------------------------------------------
 */

#define AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,avx2,fma,f16c")))
#define AVX512_INLINE                                                                              \
    __attribute__((target("avx512f,avx512dq,avx512vl,avx2,fma,f16c"), always_inline)) static inline

DEFINE_EXP(exp16, AVX512_INLINE, SIMD16)
DEFINE_VEXP(vexp_avx512, AVX512, SIMD16, exp16)
DEFINE_GLU(swiglu_avx512, AVX512, SIMD16, exp16, SILU_ARG)
DEFINE_GLU(geglu_avx512, AVX512, SIMD16, exp16, GELU_ARG)

/* The 16 lane sums of a[0..15], as one vector (lane j = sum of a[j]): pairwise transposing adds,
 * 45 instructions instead of 16 horizontal sums. */
AVX512_INLINE __m512 hsum16x16(const __m512 *a)
{
    __m512 b[8], c[4];
    UNROLL16
    for (int i = 0; i < 8; i++)
        b[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]),
                             _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    UNROLL16
    for (int i = 0; i < 4; i++) {
        __m512d x = _mm512_castps_pd(b[2 * i]), y = _mm512_castps_pd(b[2 * i + 1]);
        c[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
    }
    /* c[i]'s 128-bit chunk k: the chunk-k sums of a[4i..4i+3] */
    __m512 e01 = _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], 0x88),
                               _mm512_shuffle_f32x4(c[0], c[1], 0xDD));
    __m512 e23 = _mm512_add_ps(_mm512_shuffle_f32x4(c[2], c[3], 0x88),
                               _mm512_shuffle_f32x4(c[2], c[3], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(e01, e23, 0x88),
                         _mm512_shuffle_f32x4(e01, e23, 0xDD));
}

/* The first n of 16 lanes (n <= 16). */
AVX512_INLINE __mmask16 first_lanes(int n)
{
    return (__mmask16)(n >= 16 ? 0xFFFF : (1u << n) - 1);
}

/* Scores of one head against keys t0..t0+nk-1 (nk <= 16; lanes past nk are garbage) of an f32
 * view (tile_source's): NZ 16-float chunks per key. */
AVX512_INLINE __m512 score16(const __m512 *qv, int NZ, const core__kv_view *K, size_t off, int t0,
                             int nk)
{
    __m512 acc[16];
    UNROLL16
    for (int j = 0; j < 16; j++) {
        const float *kt = (const float *)(core__kv_row(K, j < nk ? t0 + j : t0) + off);
        __m512 s = _mm512_mul_ps(qv[0], _mm512_loadu_ps(kt));
        UNROLL16
        for (int v = 1; v < NZ; v++)
            s = _mm512_fmadd_ps(qv[v], _mm512_loadu_ps(kt + 16 * v), s);
        acc[j] = s;
    }
    return hsum16x16(acc);
}

/* The G query heads that share one KV head, 64 keys at a time: every head scores (and later
 * weighs) a tile of keys while it is in L1, instead of each head streaming the whole cache from
 * L2 or memory. sc holds G rows of pos + 1 scores. */
#define TILE 64
AVX512_INLINE void attend_group16(const float *qg, const core__kv_view *K, const core__kv_view *V,
                                  size_t off, int f16, int NZ, int G, int pos, float scale,
                                  float *sc, float *og, float *ml)
{
    int T = pos + 1, hd = 16 * NZ;
    float mx[8], inv[8], tb[TILE * 128];
    for (int h = 0; h < G; h++)
        mx[h] = -INFINITY;
    for (int t0 = 0; t0 < T; t0 += TILE) {
        int t1 = t0 + TILE < T ? t0 + TILE : T;
        core__kv_view Kt;
        size_t koff = tile_source(K, off, f16, t0, t1, T, hd, tb, &Kt);
        for (int h = 0; h < G; h++) {
            __m512 qv[8];
            UNROLL16
            for (int v = 0; v < NZ; v++)
                qv[v] = _mm512_mul_ps(_mm512_loadu_ps(qg + h * hd + 16 * v), _mm512_set1_ps(scale));
            __m512 mxv = _mm512_set1_ps(mx[h]);
            for (int b = t0; b < t1; b += 16) {
                int nk = t1 - b < 16 ? t1 - b : 16;
                __mmask16 m = first_lanes(nk);
                __m512 s = score16(qv, NZ, &Kt, koff, b, nk);
                _mm512_mask_storeu_ps(sc + (size_t)h * T + b, m, s);
                mxv = _mm512_mask_max_ps(mxv, m, mxv, s);
            }
            mx[h] = _mm512_reduce_max_ps(mxv);
        }
    }
    for (int h = 0; h < G; h++) {
        float *sh = sc + (size_t)h * T;
        __m512 mxh = _mm512_set1_ps(mx[h]), sumv = _mm512_setzero_ps();
        for (int t0 = 0; t0 < T; t0 += 16) {
            __mmask16 m = first_lanes(T - t0);
            __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, sh + t0), mxh));
            e = _mm512_maskz_mov_ps(m, e);
            _mm512_mask_storeu_ps(sh + t0, m, e);
            sumv = _mm512_add_ps(sumv, e);
        }
        float sum = _mm512_reduce_add_ps(sumv);
        inv[h] = 1.0f / sum;
        if (ml)
            ml[2 * h] = mx[h], ml[2 * h + 1] = sum;
        memset(og + h * hd, 0, sizeof(float) * (size_t)hd);
    }
    for (int t0 = 0; t0 < T; t0 += TILE) {
        int t1 = t0 + TILE < T ? t0 + TILE : T;
        core__kv_view Vt;
        size_t voff = tile_source(V, off, f16, t0, t1, T, hd, tb, &Vt);
        for (int h = 0; h < G; h++) {
            const float *sh = sc + (size_t)h * T;
            float *oh = og + h * hd;
            __m512 a0[8], a1[8];
            UNROLL16
            for (int v = 0; v < NZ; v++) {
                a0[v] = _mm512_loadu_ps(oh + 16 * v);
                a1[v] = _mm512_setzero_ps();
            }
            int t = t0;
            for (; t + 2 <= t1; t += 2) {
                const float *v0 = (const float *)(core__kv_row(&Vt, t) + voff),
                            *v1 = (const float *)(core__kv_row(&Vt, t + 1) + voff);
                __m512 p0 = _mm512_set1_ps(sh[t] * inv[h]), p1 = _mm512_set1_ps(sh[t + 1] * inv[h]);
                UNROLL16
                for (int v = 0; v < NZ; v++) {
                    a0[v] = _mm512_fmadd_ps(p0, _mm512_loadu_ps(v0 + 16 * v), a0[v]);
                    a1[v] = _mm512_fmadd_ps(p1, _mm512_loadu_ps(v1 + 16 * v), a1[v]);
                }
            }
            if (t < t1) {
                const float *v0 = (const float *)(core__kv_row(&Vt, t) + voff);
                __m512 p0 = _mm512_set1_ps(sh[t] * inv[h]);
                UNROLL16
                for (int v = 0; v < NZ; v++)
                    a0[v] = _mm512_fmadd_ps(p0, _mm512_loadu_ps(v0 + 16 * v), a0[v]);
            }
            UNROLL16
            for (int v = 0; v < NZ; v++)
                _mm512_storeu_ps(oh + 16 * v, _mm512_add_ps(a0[v], a1[v]));
        }
    }
}

#define ATTEND16(NZ, F16) ATTEND_GROUPED(attend16_##NZ##_##F16, AVX512, 16, attend_group16, NZ, F16)
#define ATTEND16_BOTH(NZ) ATTEND16(NZ, 0) ATTEND16(NZ, 1)
ATTEND16_BOTH(1)
ATTEND16_BOTH(2)
ATTEND16_BOTH(3)
ATTEND16_BOTH(4)
ATTEND16_BOTH(5)
ATTEND16_BOTH(6)
ATTEND16_BOTH(7)
ATTEND16_BOTH(8)

static const attend_fn attend16[2][9] = {
    {NULL, attend16_1_0, attend16_2_0, attend16_3_0, attend16_4_0, attend16_5_0, attend16_6_0,
     attend16_7_0, attend16_8_0},
    {NULL, attend16_1_1, attend16_2_1, attend16_3_1, attend16_4_1, attend16_5_1, attend16_6_1,
     attend16_7_1, attend16_8_1}};

/* ---- dispatch -------------------------------------------------------------------------------- */

/* The level (core/kernels/cpu_internal.h) picks the family: AVX-512, AVX2, or the portable
 * code both below AVX2 and when forced. */
static bool use_avx2(void)
{
    return core__cpu_level() >= CORE_CPU_AVX2;
}

static bool use_avx512(void)
{
    return core__cpu_level() >= CORE_CPU_AVX512;
}

void core__attend_view(const float *q, const core__kv_view *K, const core__kv_view *V, int kv_f16,
                       int n_head, int n_kv, int hd, int n_keys, float *scores, float *out,
                       float *ml)
{
    int f16 = kv_f16 != 0, pos = n_keys - 1;
    if (use_avx512() && hd % 16 == 0 && hd <= 128)
        attend16[f16][hd / 16](q, K, V, n_head, n_kv, pos, scores, out, ml);
    else if (use_avx2() && hd % 8 == 0 && hd <= 128)
        attend8[f16][hd / 8](q, K, V, n_head, n_kv, pos, scores, out, ml);
    else if (use_avx2() && hd == 256)
        (f16 ? attend8_32_1 : attend8_32_0)(q, K, V, n_head, n_kv, pos, scores, out, ml);
    else if (use_avx2() && hd % 8 == 0 && hd <= 256)
        (f16 ? attend_avx2_f16 : attend_avx2_f32)(q, K, V, n_head, n_kv, hd, pos, scores, out, ml);
    else
        attend_generic(q, K, V, f16, n_head, n_kv, hd, pos, scores, out, ml);
}

void core__attend_chunk(const float *q, const core__kv_view *K, const core__kv_view *V, int kv_f16,
                        int n_head, int n_kv, int hd, int n_keys, int c, float *scores, float *out,
                        float *ml)
{
    int t0 = c * CORE_ATT_CHUNK, n = n_keys - t0 < CORE_ATT_CHUNK ? n_keys - t0 : CORE_ATT_CHUNK;
    core__kv_view Kc = *K, Vc = *V;
    Kc.first += t0;
    Vc.first += t0;
    core__attend_view(q, &Kc, &Vc, kv_f16, n_head, n_kv, hd, n, scores, out, ml);
}

void core__attend_merge(const float *o, const float *ml, int nc, int n_head, int hd, float *out)
{
    size_t row = (size_t)n_head * hd;
    for (int h = 0; h < n_head; h++) {
        float m = -INFINITY, wsum = 0.0f, *oh = out + (size_t)h * hd;
        for (int c = 0; c < nc; c++)
            m = fmaxf(m, ml[2 * ((size_t)c * n_head + h)]);
        memset(oh, 0, (size_t)hd * sizeof(float));
        for (int c = 0; c < nc; c++) {
            const float *mc = ml + 2 * ((size_t)c * n_head + h), *oc = o + c * row + (size_t)h * hd;
            float w = mc[1] * expf(mc[0] - m);
            wsum += w;
            for (int i = 0; i < hd; i++)
                oh[i] += w * oc[i];
        }
        float inv = 1.0f / wsum;
        for (int i = 0; i < hd; i++)
            oh[i] *= inv;
    }
}

void core__attend_row(const float *q, const void *K, const void *V, int kv_f16, int n_head,
                      int n_kv, int hd, int pos, float *scores, float *out)
{
    static const int32_t one_block[1] = {0};
    size_t row = (size_t)n_kv * hd * (kv_f16 ? 2 : 4);
    core__kv_view kv = {.base = K, .table = one_block, .row_stride = row, .shift = 30};
    core__kv_view vv = kv;
    vv.base = V;
    core__attend_view(q, &kv, &vv, kv_f16, n_head, n_kv, hd, pos + 1, scores, out, NULL);
}

/* n floats to f16, round to nearest even (F16C, or core_fp32_to_fp16: the same bits). */
AVX2 static void to_f16_avx2(const float *x, uint16_t *y, int n)
{
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++)
        y[i] = core_fp32_to_fp16(x[i]);
}

void core__to_f16(const float *x, uint16_t *y, int n)
{
    if (use_avx2()) {
        to_f16_avx2(x, y, n);
        return;
    }
    for (int i = 0; i < n; i++)
        y[i] = core_fp32_to_fp16(x[i]);
}

void core__swiglu(float *gate, const float *up, long n)
{
    if (use_avx512())
        swiglu_avx512(gate, up, n);
    else if (use_avx2())
        swiglu_avx2(gate, up, n);
    else
        swiglu_generic(gate, up, n);
}

void core__geglu(float *gate, const float *up, long n)
{
    if (use_avx512())
        geglu_avx512(gate, up, n);
    else if (use_avx2())
        geglu_avx2(gate, up, n);
    else
        geglu_generic(gate, up, n);
}

void core__vexp(const float *x, float *y, int n)
{
    if (use_avx512())
        vexp_avx512(x, y, n);
    else if (use_avx2())
        vexp_avx2(x, y, n);
    else
        vexp_generic(x, y, n);
}
