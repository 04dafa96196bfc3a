/* Y = X · Wᵀ straight from quantized weight rows, for decode steps of a few rows (qmatmul.h).
 *
 * Up to eight rows of X (the legacy 32-element formats): each block is rebuilt once, in
 * registers, and used at once for every row of X, a few weight rows in lockstep so that enough
 * independent FMA chains are in flight. Other formats and more rows: WR weight rows at a time
 * are rebuilt, KC elements per chunk, into a buffer that stays in L1, then dotted with every row
 * of X. Every dot product is the same single chain of FMAs over k = 0, 8, 16, ... and the same
 * lane sum, so all paths give the same bits and a row's result does not depend on n or on the
 * other rows. AVX2/FMA/F16C is chosen at run time; the portable kernels rebuild through
 * core_dequant_row itself and are there for tests.
 */
#include "core/kernels/qmatmul_internal.h"

#include <errno.h>
#include <immintrin.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/kernels/cpu_internal.h"
#include "core/kernels/dequant.h"
#include "core/kernels/traits_internal.h"
#include "core/model/model.h"

#define WR 4    /* weight rows rebuilt and used together */
#define KC 1024 /* elements of a row per chunk; a multiple of every block size (256 at most) */
#define XR 32   /* rows of X per pass over the weights */
#define OC 64   /* weight rows per block when the fused kernels take more than eight rows of X */
/* Rows of X that are not 32-byte aligned are copied to an aligned buffer of this many floats
 * when they fit: half of the 32-byte loads from a 16-byte aligned row straddle two cache lines,
 * which costs up to a fifth of the time of eight rows. */
#define XS (8 * 1536)
/* Floats between rebuilt rows in the buffer: not a multiple of 4 KiB, so that loads of one row do
 * not falsely depend on stores to another at the same page offset (4K aliasing). */
#define LDB (KC + 16)

int core__qmatmul_supports(uint32_t type)
{
    return core__traits_of(type)->dequant != NULL;
}

/* ---- portable ----------------------------------------------------------------------------- */

static void dequant_generic(uint32_t type, const uint8_t *src, float *dst, int n)
{
    core_dequant_row(type, src, dst, n);
}

/* Eight interleaved partial sums, added pairwise at the end. */
static float dot_generic(const float *w, const float *x, int n)
{
    float s[8] = {0};
    int k = 0;
    for (; k + 8 <= n; k += 8)
        for (int j = 0; j < 8; j++)
            s[j] += w[k + j] * x[k + j];
    for (; k < n; k++)
        s[k & 7] += w[k] * x[k];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

/* For i < nx, r < nr: the running dot of X row i (stride ldx) with w[r] over this chunk of kc
 * elements, kept in acc (XR, WR) between chunks and written to Y[i * ldy + r] after the last. */
static void dots_generic(const float *const *w, int kc, const float *X, int ldx, int nx, void *accp,
                         bool first, bool last, float *Y, int ldy, int nr)
{
    float(*acc)[WR] = accp;
    for (int i = 0; i < nx; i++) {
        const float *x = X + (size_t)i * ldx;
        for (int r = 0; r < nr; r++) {
            float s = dot_generic(w[r], x, kc);
            if (!first)
                s = acc[i][r] + s;
            if (last)
                Y[(size_t)i * ldy + r] = s;
            else
                acc[i][r] = s;
        }
    }
}

/* ---- AVX2 + FMA + F16C: rebuilding weights --------------------------------------------------- */

/* A legacy block (32 elements) is rebuilt into four vectors, its quarters: elements 8j..8j+7 in
 * w[j]. Bytes are widened to 32 bits with in-lane shuffles of the 16 bytes held in both halves of
 * a register; vpmovsxbd crosses lanes and is much slower on some cores (Zen 3). */

#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define AVX2_INLINE __attribute__((target("avx2,fma,f16c"), always_inline)) inline
/* Loops over registers (at most 32 iterations, constant once inlined) must be unrolled, or
 * the vectors they index live in memory. */
#ifdef __clang__
#define UNROLL _Pragma("clang loop unroll(full)")
#else
#define UNROLL _Pragma("GCC unroll 32")
#endif

AVX2_INLINE static float f16_avx2(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, sizeof h);
    return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)));
}

/* The 16 bytes at p in both 128-bit halves. */
AVX2_INLINE static __m256i bcast16(const uint8_t *p)
{
    return _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)p));
}

/* Bytes 0..7 (*e0) and 8..15 (*e1) of v (the same 16 bytes in both halves), zero-extended. */
AVX2_INLINE static void widen_u8(__m256i v, __m256i *e0, __m256i *e1)
{
    const __m256i s0 = _mm256_setr_epi8(0, -1, -1, -1, 1, -1, -1, -1, 2, -1, -1, -1, 3, -1, -1, -1,
                                        4, -1, -1, -1, 5, -1, -1, -1, 6, -1, -1, -1, 7, -1, -1, -1);
    const __m256i s1 = _mm256_add_epi32(s0, _mm256_set1_epi32(8));
    *e0 = _mm256_shuffle_epi8(v, s0);
    *e1 = _mm256_shuffle_epi8(v, s1);
}

/* As widen_u8 for signed bytes: each lands in the top byte of its lane, then shifts down. */
AVX2_INLINE static void widen_i8(__m256i v, __m256i *e0, __m256i *e1)
{
    const __m256i s0 = _mm256_setr_epi8(-1, -1, -1, 0, -1, -1, -1, 1, -1, -1, -1, 2, -1, -1, -1, 3,
                                        -1, -1, -1, 4, -1, -1, -1, 5, -1, -1, -1, 6, -1, -1, -1, 7);
    const __m256i s1 = _mm256_add_epi32(s0, _mm256_set1_epi32(8 << 24));
    *e0 = _mm256_srai_epi32(_mm256_shuffle_epi8(v, s0), 24);
    *e1 = _mm256_srai_epi32(_mm256_shuffle_epi8(v, s1), 24);
}

/* The 32 nibbles of a legacy block as 32-bit integers, in element order: low nibbles are
 * elements 0..15, high nibbles 16..31. */
AVX2_INLINE static void nibbles(const uint8_t *qs, __m256i q[4])
{
    const __m256i m4 = _mm256_set1_epi32(0x0f);
    __m256i e0, e1;
    widen_u8(bcast16(qs), &e0, &e1);
    q[0] = _mm256_and_si256(e0, m4);
    q[1] = _mm256_and_si256(e1, m4);
    q[2] = _mm256_srli_epi32(e0, 4);
    q[3] = _mm256_srli_epi32(e1, 4);
}

/* 16 times bit l of b, for every byte value b and lane l: the fifth bits of eight elements,
 * one byte of qh, by one load from this 8 KiB table, where spreading them over the lanes took
 * five vector operations a vector (a broadcast, a variable shift, an and, a shift, the
 * broadcast's move), and one row of X is bound by the vector operations. */
#define Q5B(b)                                                                                     \
    {                                                                                              \
        ((b)&1) << 4, ((b) >> 1 & 1) << 4, ((b) >> 2 & 1) << 4, ((b) >> 3 & 1) << 4,               \
            ((b) >> 4 & 1) << 4, ((b) >> 5 & 1) << 4, ((b) >> 6 & 1) << 4, ((b) >> 7 & 1) << 4     \
    }
#define Q5B4(b) Q5B(b), Q5B((b) + 1), Q5B((b) + 2), Q5B((b) + 3)
#define Q5B16(b) Q5B4(b), Q5B4((b) + 4), Q5B4((b) + 8), Q5B4((b) + 12)
#define Q5B64(b) Q5B16(b), Q5B16((b) + 16), Q5B16((b) + 32), Q5B16((b) + 48)
static const int32_t q5_bits[256][8]
    __attribute__((aligned(32))) = {Q5B64(0), Q5B64(64), Q5B64(128), Q5B64(192)};

/* The fifth bit of elements 8j..8j+7 (bits 8j.. of the little-endian qh), at bit 4. */
AVX2_INLINE static __m256i q5_high(uint32_t qh, int j)
{
    return _mm256_load_si256((const __m256i *)q5_bits[qh >> 8 * j & 0xff]);
}

/* (float)q * d, and (float)q * d + m as one FMA. core_dequant_row multiplies, then adds; the
 * FMA gives the same bits: q has at most 5 significant bits (Q4_1, Q5_1) and d, an f16, at most
 * 11, so q * d is exact in a float and the FMA's one rounding is the add's. It saves one of the
 * three operations per rebuilt vector, which is what bounds one row of X (the weights are read
 * faster than they are rebuilt). The loops over the four quarters below are written out:
 * compilers keep arrays of vectors in memory unless they unroll them. */
AVX2_INLINE static __m256 scale(__m256i q, __m256 d)
{
    return _mm256_mul_ps(_mm256_cvtepi32_ps(q), d);
}

AVX2_INLINE static __m256 scale_add(__m256i q, __m256 d, __m256 m)
{
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(q), d, m);
}

/* Q4_0: d, qs[16]; (q - 8) * d. */
AVX2_INLINE static void block_q4_0(const uint8_t *b, __m256 w[4])
{
    __m256i q[4];
    nibbles(b + 2, q);
    const __m256i k8 = _mm256_set1_epi32(8);
    __m256 d = _mm256_set1_ps(f16_avx2(b));
    w[0] = scale(_mm256_sub_epi32(q[0], k8), d);
    w[1] = scale(_mm256_sub_epi32(q[1], k8), d);
    w[2] = scale(_mm256_sub_epi32(q[2], k8), d);
    w[3] = scale(_mm256_sub_epi32(q[3], k8), d);
}

/* Q4_1: d, m, qs[16]; q * d + m. */
AVX2_INLINE static void block_q4_1(const uint8_t *b, __m256 w[4])
{
    uint32_t dm32;
    memcpy(&dm32, b, sizeof dm32);
    __m128 dm = _mm_cvtph_ps(_mm_cvtsi32_si128((int)dm32)); /* d, m */
    __m256 d = _mm256_broadcastss_ps(dm), m = _mm256_broadcastss_ps(_mm_movehdup_ps(dm));
    __m256i q[4];
    nibbles(b + 4, q);
    w[0] = scale_add(q[0], d, m);
    w[1] = scale_add(q[1], d, m);
    w[2] = scale_add(q[2], d, m);
    w[3] = scale_add(q[3], d, m);
}

/* Q5_0: d, qh, qs[16]; ((q | h << 4) - 16) * d. */
AVX2_INLINE static void block_q5_0(const uint8_t *b, __m256 w[4])
{
    uint32_t qh;
    memcpy(&qh, b + 2, sizeof qh);
    __m256i q[4];
    nibbles(b + 6, q);
    const __m256i k16 = _mm256_set1_epi32(16);
    __m256 d = _mm256_set1_ps(f16_avx2(b));
    w[0] = scale(_mm256_sub_epi32(_mm256_or_si256(q[0], q5_high(qh, 0)), k16), d);
    w[1] = scale(_mm256_sub_epi32(_mm256_or_si256(q[1], q5_high(qh, 1)), k16), d);
    w[2] = scale(_mm256_sub_epi32(_mm256_or_si256(q[2], q5_high(qh, 2)), k16), d);
    w[3] = scale(_mm256_sub_epi32(_mm256_or_si256(q[3], q5_high(qh, 3)), k16), d);
}

/* Q5_1: d, m, qh, qs[16]; (q | h << 4) * d + m. */
AVX2_INLINE static void block_q5_1(const uint8_t *b, __m256 w[4])
{
    uint32_t qh;
    memcpy(&qh, b + 4, sizeof qh);
    __m256i q[4];
    nibbles(b + 8, q);
    __m256 d = _mm256_set1_ps(f16_avx2(b)), m = _mm256_set1_ps(f16_avx2(b + 2));
    w[0] = scale_add(_mm256_or_si256(q[0], q5_high(qh, 0)), d, m);
    w[1] = scale_add(_mm256_or_si256(q[1], q5_high(qh, 1)), d, m);
    w[2] = scale_add(_mm256_or_si256(q[2], q5_high(qh, 2)), d, m);
    w[3] = scale_add(_mm256_or_si256(q[3], q5_high(qh, 3)), d, m);
}

/* Q8_0: d, qs[32] int8; q * d. */
AVX2_INLINE static void block_q8_0(const uint8_t *b, __m256 w[4])
{
    __m256i q0, q1, q2, q3;
    widen_i8(bcast16(b + 2), &q0, &q1);
    widen_i8(bcast16(b + 18), &q2, &q3);
    __m256 d = _mm256_set1_ps(f16_avx2(b));
    w[0] = scale(q0, d);
    w[1] = scale(q1, d);
    w[2] = scale(q2, d);
    w[3] = scale(q3, d);
}

/* A dot product is one chain of FMAs over k = 0, 8, 16, ... (lane l holds the elements
 * k % 8 == l), then the lanes summed as ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)).
 * hsum4 does that for four dots at once; every kernel uses it, so they all give the same bits. */
AVX2_INLINE static __m128 hsum4(__m256 s0, __m256 s1, __m256 s2, __m256 s3)
{
    __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(s0, s1), _mm256_hadd_ps(s2, s3));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

/* Y = X · Wᵀ for NX rows of X straight from the blocks, NW weight rows at a time: every block
 * is rebuilt once, in registers, a sub-block of QN vectors (8 QN elements) at a time
 * (block(b, s, ks, w) rebuilds sub-block s of the block at b into w[0..QN); SUB per block; nb
 * counts 32-element groups; ks is the row's scratch for what sub-block 0 decodes for the
 * others), and used for all NX rows, each
 * (weight row, X row) pair its own chain, NW * NX = 8 chains in flight (an FMA's latency times the
 * two FMA pipes). x[j] is row j of X; the caller repeats the last row to fill NX and ignores those
 * sums. Y[j * ldy + o] for j < nx. */
AVX2_INLINE static void fused(void (*block)(const uint8_t *, int, float *, __m256 *), size_t bytes,
                              const int SUB, const int QN, const uint8_t *W, size_t row_bytes,
                              int nb, int out, const float *const *x, int nx, float *Y, int ldy,
                              const int NW, const int NX)
{
    for (int o = 0; o < out; o += NW) {
        const uint8_t *b[8]; /* rows past the end repeat the last row; their sums are dropped */
        UNROLL
        for (int r = 0; r < NW; r++)
            b[r] = W + (size_t)(o + r < out ? o + r : out - 1) * row_bytes;
        __m256 acc[8]; /* acc[r * NX + j] */
        UNROLL
        for (int t = 0; t < NW * NX; t++)
            acc[t] = _mm256_setzero_ps();
        _Alignas(32) float ks[8][16];
        for (int i = 0; i < nb * 4 / QN; i++) {
            size_t at = (size_t)(i / SUB) * bytes;
            int s = i % SUB;
            size_t ahead = at + (size_t)s * bytes / SUB + NW * row_bytes;
            UNROLL
            for (int r = 0; r < NW; r++) {
                /* the same place in the next group of rows: several rows read in lockstep are
                 * interleaved streams, which the hardware prefetchers follow poorly */
                _mm_prefetch((const char *)(b[r] + ahead), _MM_HINT_T0);
                __m256 w[8];
                block(b[r] + at, s, ks[r], w);
                UNROLL
                for (int q = 0; q < QN; q++) {
                    UNROLL
                    for (int j = 0; j < NX; j++)
                        acc[r * NX + j] = _mm256_fmadd_ps(
                            w[q], _mm256_loadu_ps(x[j] + 8 * QN * i + 8 * q), acc[r * NX + j]);
                }
            }
        }
        int nr = out - o < NW ? out - o : NW;
        float t[4];
        if (NX == 1) { /* lanes: four of the NW weight rows */
            UNROLL
            for (int r0 = 0; r0 < NW; r0 += 4) {
                _mm_storeu_ps(
                    t, hsum4(acc[r0], acc[(r0 + 1) % NW], acc[(r0 + 2) % NW], acc[(r0 + 3) % NW]));
                if (nr > r0)
                    memcpy(Y + o + r0, t, (size_t)(nr - r0 < 4 ? nr - r0 : 4) * sizeof(float));
            }
            continue;
        }
        UNROLL
        for (int r = 0; r < NW; r++) {
            UNROLL
            for (int j = 0; j < NX; j += 4) { /* lanes: four rows of X */
                const __m256 *a = acc + r * NX + j;
                _mm_storeu_ps(t, hsum4(a[0], a[1 % NX], a[2 % NX], a[3 % NX]));
                for (int k = 0; k < 4 && j + k < nx && r < nr; k++)
                    Y[(size_t)(j + k) * ldy + o + r] = t[k];
            }
        }
    }
}

/* For each type: core__rebuild_avx2_<type> rebuilds nb blocks (SUB sub-blocks each) into y,
 * and core__gemv8_avx2_<type> runs fused() with the tile for n rows of X (n <= 8): eight weight
 * rows for one row of X, four for two, two for three or four, one for five to eight. */
#define KERNELS(type, bytes, SUB, QN)                                                              \
    AVX2 void core__rebuild_avx2_##type(const uint8_t *b, float *y, int nb)                        \
    {                                                                                              \
        _Alignas(32) float ks[16];                                                                 \
        for (int i = 0; i < nb * (SUB); i++, y += 8 * (QN)) {                                      \
            __m256 w[QN];                                                                          \
            sub_##type(b + (size_t)(i / (SUB)) * (bytes), i % (SUB), ks, w);                       \
            UNROLL                                                                                 \
            for (int q = 0; q < (QN); q++)                                                         \
                _mm256_storeu_ps(y + 8 * q, w[q]);                                                 \
        }                                                                                          \
    }                                                                                              \
    AVX2 void core__gemv8_avx2_##type(const uint8_t *W, size_t row_bytes, int nb, int out,         \
                                      const float *const *x, int n, float *Y, int ldy)             \
    {                                                                                              \
        if (n == 1)                                                                                \
            fused(sub_##type, (bytes), (SUB), (QN), W, row_bytes, nb, out, x, n, Y, ldy, 8, 1);    \
        else if (n == 2)                                                                           \
            fused(sub_##type, (bytes), (SUB), (QN), W, row_bytes, nb, out, x, n, Y, ldy, 4, 2);    \
        else if (n <= 4)                                                                           \
            fused(sub_##type, (bytes), (SUB), (QN), W, row_bytes, nb, out, x, n, Y, ldy, 2, 4);    \
        else                                                                                       \
            fused(sub_##type, (bytes), (SUB), (QN), W, row_bytes, nb, out, x, n, Y, ldy, 1, 8);    \
    }

/* A legacy block is its only sub-block. */
#define LEGACY_KERNELS(type, bytes)                                                                \
    AVX2_INLINE static void sub_##type(const uint8_t *b, int s, float *ks, __m256 w[4])            \
    {                                                                                              \
        (void)s, (void)ks;                                                                         \
        block_##type(b, w);                                                                        \
    }                                                                                              \
    KERNELS(type, bytes, 1, 4)

LEGACY_KERNELS(q4_0, 18)
LEGACY_KERNELS(q4_1, 20)
LEGACY_KERNELS(q5_0, 22)
LEGACY_KERNELS(q5_1, 24)
LEGACY_KERNELS(q8_0, 34)

/* ---- K-quants: blocks of 256 elements, rebuilt 32 at a time (sub-block s = 0..7) ------------ */

/* The scales d * sc (ks[0..8)) and mins dmin * mn (ks[8..16)) of the eight sub-blocks of a Q4_K
 * or Q5_K block (d, dmin, scales[12] first), in float as dequant.c: the 6-bit fields unpacked
 * four at a time, as ggml does. */
AVX2_INLINE static void kscales(const uint8_t *b, float ks[16])
{
    uint32_t a, m, c; /* scales[0..4), [4..8), [8..12) */
    memcpy(&a, b + 4, 4);
    memcpy(&m, b + 8, 4);
    memcpy(&c, b + 12, 4);
    uint64_t sc = (a & 0x3f3f3f3fu) | (uint64_t)((c & 0x0f0f0f0fu) | (a >> 2 & 0x30303030u)) << 32;
    uint64_t mn = (m & 0x3f3f3f3fu) | (uint64_t)((c >> 4 & 0x0f0f0f0fu) | (m >> 2 & 0x30303030u))
                                          << 32;
    __m256 d = _mm256_set1_ps(f16_avx2(b)), dmin = _mm256_set1_ps(f16_avx2(b + 2));
    _mm256_store_ps(ks, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(
                                             _mm_cvtsi64_si128((long long)sc)))));
    _mm256_store_ps(ks + 8, _mm256_mul_ps(dmin, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(
                                                    _mm_cvtsi64_si128((long long)mn)))));
}

/* d * scales[k] of a Q6_K block in ks[k], k < 16 (that product first, as dequant.c). */
AVX2_INLINE static void q6k_scales(const uint8_t *b, float ks[16])
{
    __m256 d = _mm256_set1_ps(f16_avx2(b + 208));
    __m128i sc = _mm_loadu_si128((const __m128i *)(b + 192));
    _mm256_store_ps(ks, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc))));
    _mm256_store_ps(
        ks + 8,
        _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(sc, sc)))));
}

/* The 32 bytes at p as 32-bit lanes, in order: bytes 8j..8j+7 in q[j]. */
AVX2_INLINE static void widen32(const uint8_t *p, __m256i q[4])
{
    widen_u8(bcast16(p), &q[0], &q[1]);
    widen_u8(bcast16(p + 16), &q[2], &q[3]);
}

/* d * (float)q - m for the four quarters (Q4_K's and Q5_K's order: multiply, then subtract), as
 * one FMA with the same bits: d = d16 * sc (11 and 6 significant bits, exact) times q (4 or 5
 * bits) has at most 22 bits, so the product is exact and the one rounding is the subtract's. */
AVX2_INLINE static void scale_sub(const __m256i q[4], __m256 d, __m256 m, __m256 w[4])
{
    UNROLL
    for (int j = 0; j < 4; j++)
        w[j] = _mm256_fmsub_ps(d, _mm256_cvtepi32_ps(q[j]), m);
}

/* Q4_K and Q5_K are rebuilt 64 elements (a chunk, eight vectors) at a time, SUB = 4 chunks per
 * block: a chunk's 32 bytes of nibbles are widened once for both of its 32-element sub-blocks.
 * Measured on an Intel Xeon (family 6, model 167), Q4_K 8192 x 2048, one row of X: AVX2 18 ->
 * 22-24 GFLOP/s, AVX-512 21 -> 28 (Q4_1: 25 and 30). Chunk 0 unpacks the block's scales into
 * ks. Q6_K stays at 32 elements (SUB = 8): its 64-element version needs twelve widened vectors
 * and ran slower (AVX2 11 -> 9). */

/* Q4_K: d, dmin, scales[12], qs[128]; chunk c is the 32 bytes of qs at 32c, sub-block 2c in
 * their low nibbles, 2c + 1 in their high ones. */
AVX2_INLINE static void sub_q4_k(const uint8_t *b, int c, float *ks, __m256 w[8])
{
    if (c == 0)
        kscales(b, ks);
    __m256i q[4], lo[4], hi[4];
    widen32(b + 16 + 32 * c, q);
    UNROLL
    for (int j = 0; j < 4; j++) {
        lo[j] = _mm256_and_si256(q[j], _mm256_set1_epi32(0x0f));
        hi[j] = _mm256_srli_epi32(q[j], 4);
    }
    scale_sub(lo, _mm256_broadcast_ss(ks + 2 * c), _mm256_broadcast_ss(ks + 8 + 2 * c), w);
    scale_sub(hi, _mm256_broadcast_ss(ks + 2 * c + 1), _mm256_broadcast_ss(ks + 9 + 2 * c), w + 4);
}

/* Q5_K: d, dmin, scales[12], qh[32], qs[128]; as Q4_K, with bits 2c and 2c + 1 of qh[l] the
 * fifth bits of element l of sub-blocks 2c and 2c + 1. q5k_bytes gives chunk c of the block at
 * b as bytes in element order: sub-block 2c (low nibbles, bit 2c of qh above) in *lo, 2c + 1
 * (high nibbles, bit 2c + 1) in *hi, done on the 32 bytes at once and widened after (as
 * q6k_bytes), where the bit fields took five operations for every eight lanes on 32-bit lanes. */
AVX2_INLINE static void q5k_bytes(const uint8_t *b, int c, __m256i *lo, __m256i *hi)
{
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    __m256i qs = _mm256_loadu_si256((const __m256i *)(b + 48 + 32 * c));
    __m256i h =
        _mm256_srl_epi16(_mm256_loadu_si256((const __m256i *)(b + 16)), _mm_cvtsi32_si128(2 * c));
    *lo = _mm256_or_si256(_mm256_and_si256(qs, m4),
                          _mm256_slli_epi16(_mm256_and_si256(h, _mm256_set1_epi8(1)), 4));
    *hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qs, 4), m4),
                          _mm256_slli_epi16(_mm256_and_si256(h, _mm256_set1_epi8(2)), 3));
}

AVX2_INLINE static void sub_q5_k(const uint8_t *b, int c, float *ks, __m256 w[8])
{
    if (c == 0)
        kscales(b, ks);
    _Alignas(32) uint8_t v[64];
    __m256i l8, h8;
    q5k_bytes(b, c, &l8, &h8);
    _mm256_store_si256((__m256i *)v, l8);
    _mm256_store_si256((__m256i *)(v + 32), h8);
    __m256i lo[4], hi[4];
    UNROLL
    for (int j = 0; j < 4; j++) {
        lo[j] = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(v + 8 * j)));
        hi[j] = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(v + 32 + 8 * j)));
    }
    scale_sub(lo, _mm256_broadcast_ss(ks + 2 * c), _mm256_broadcast_ss(ks + 8 + 2 * c), w);
    scale_sub(hi, _mm256_broadcast_ss(ks + 2 * c + 1), _mm256_broadcast_ss(ks + 9 + 2 * c), w + 4);
}

/* Q6_K: ql[128], qh[64], scales[16] int8, d last. Sub-block s is quarter c = s % 4 of half
 * s / 4: its element l is the low (c < 2) or high nibble of ql[64 (s / 4) + 32 (c % 2) + l] with
 * bits 2c, 2c + 1 of qh[32 (s / 4) + l] above it, minus 32, times d * scales[8 (s / 4) + 2c +
 * l / 16] (2s + l / 16 in all: ks, which sub-block 0 fills). q6k_bytes gives the 6-bit quants
 * of sub-block s of the block at b, less 32, as signed bytes in element order: the low or high
 * nibbles of 32 ql bytes and two bits of 32 qh bytes, done on all 32 bytes at once (the 16-bit
 * shifts carry bits across bytes; the masks drop them) and widened after, where doing it on 32-bit
 * lanes took seven operations for every eight. */
AVX2_INLINE static __m256i q6k_bytes(const uint8_t *b, int s)
{
    int half = s / 4, c = s % 4;
    __m256i ql = _mm256_loadu_si256((const __m256i *)(b + 64 * half + 32 * (c % 2)));
    __m256i qh = _mm256_loadu_si256((const __m256i *)(b + 128 + 32 * half));
    __m256i lo = _mm256_and_si256(_mm256_srl_epi16(ql, _mm_cvtsi32_si128(4 * (c / 2))),
                                  _mm256_set1_epi8(0x0f));
    __m256i hi =
        _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * c)), _mm256_set1_epi8(3));
    return _mm256_sub_epi8(_mm256_or_si256(lo, _mm256_slli_epi16(hi, 4)), _mm256_set1_epi8(32));
}

AVX2_INLINE static void sub_q6_k(const uint8_t *b, int s, float *ks, __m256 w[4])
{
    if (s == 0)
        q6k_scales(b, ks);
    _Alignas(32) int8_t v[32];
    _mm256_store_si256((__m256i *)v, q6k_bytes(b, s));
    __m256i q[4];
    UNROLL
    for (int j = 0; j < 4; j++)
        q[j] = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(v + 8 * j)));
    __m256 d0 = _mm256_broadcast_ss(ks + 2 * s), d1 = _mm256_broadcast_ss(ks + 2 * s + 1);
    w[0] = _mm256_mul_ps(d0, _mm256_cvtepi32_ps(q[0]));
    w[1] = _mm256_mul_ps(d0, _mm256_cvtepi32_ps(q[1]));
    w[2] = _mm256_mul_ps(d1, _mm256_cvtepi32_ps(q[2]));
    w[3] = _mm256_mul_ps(d1, _mm256_cvtepi32_ps(q[3]));
}

KERNELS(q4_k, 144, 4, 8)
KERNELS(q5_k, 176, 4, 8)
KERNELS(q6_k, 210, 8, 4)

/* F16 and BF16 eight elements at a time; "blocks" of these types are single elements. */
AVX2 void core__rebuild_avx2_f16(const uint8_t *src, float *dst, int nb)
{
    int i = 0;
    for (; i + 8 <= nb; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + 2 * i))));
    if (i < nb)
        core__dequant_f16(src + 2 * i, dst + i, nb - i);
}

AVX2 void core__rebuild_avx2_bf16(const uint8_t *src, float *dst, int nb)
{
    int i = 0;
    for (; i + 8 <= nb; i += 8) {
        __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + 2 * i)));
        _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
    }
    if (i < nb)
        core__dequant_bf16(src + 2 * i, dst + i, nb - i);
}

/* n elements (whole blocks) of a row: the type's AVX2 rebuild, else the scalar one. */
static void dequant_avx2(uint32_t type, const uint8_t *src, float *dst, int n)
{
    core__rebuild_fn *rebuild = core__traits_of(type)->rebuild_avx2;
    if (rebuild)
        rebuild(src, dst, n / (int)core_type_block_elems(type));
    else
        core_dequant_row(type, src, dst, n);
}

/* ---- AVX2 + FMA + F16C: dot products --------------------------------------------------------- */

/* One 8-element step of dots_avx2 at k: weights w0..w3 against rows x0 and x1 of X. The masked
 * loads of the last partial step read 0 past the end, on both sides. */
#define DOT_STEP(LW, LX)                                                                           \
    do {                                                                                           \
        __m256 v0 = LX(x0 + k), v1 = LX(x1 + k), wk;                                               \
        wk = LW(w0 + k);                                                                           \
        a0 = _mm256_fmadd_ps(wk, v0, a0);                                                          \
        b0 = _mm256_fmadd_ps(wk, v1, b0);                                                          \
        wk = LW(w1 + k);                                                                           \
        a1 = _mm256_fmadd_ps(wk, v0, a1);                                                          \
        b1 = _mm256_fmadd_ps(wk, v1, b1);                                                          \
        wk = LW(w2 + k);                                                                           \
        a2 = _mm256_fmadd_ps(wk, v0, a2);                                                          \
        b2 = _mm256_fmadd_ps(wk, v1, b2);                                                          \
        wk = LW(w3 + k);                                                                           \
        a3 = _mm256_fmadd_ps(wk, v0, a3);                                                          \
        b3 = _mm256_fmadd_ps(wk, v1, b3);                                                          \
    } while (0)
#define LOAD_W(p) _mm256_load_ps(p)
#define LOAD_X(p) _mm256_loadu_ps(p)
#define MASK_W(p) _mm256_maskload_ps((p), tail)
#define MASK_X(p) _mm256_maskload_ps((p), tail)

/* As dots_generic, with acc (XR, WR) vectors: rows of X two at a time against the WR = 4
 * rebuilt weight rows, eight chains, each x and w loaded once for two FMAs. */
AVX2 static void dots_avx2(const float *const *w, int kc, const float *X, int ldx, int nx,
                           void *accp, bool first, bool last, float *Y, int ldy, int nr)
{
    __m256(*acc)[WR] = accp;
    const float *w0 = w[0], *w1 = w[1], *w2 = w[2], *w3 = w[3];
    int k8 = kc & ~7;
    int32_t lanes[8];
    for (int l = 0; l < 8; l++)
        lanes[l] = l < kc - k8 ? -1 : 0;
    __m256i tail = _mm256_loadu_si256((const __m256i *)lanes);
    for (int i = 0; i < nx; i += 2) {
        bool pair = i + 1 < nx; /* an odd last row runs alone, its twin's FMAs repeat it */
        const float *x0 = X + (size_t)i * ldx, *x1 = pair ? x0 + ldx : x0;
        __m256 a0, a1, a2, a3, b0, b1, b2, b3;
        if (first) {
            a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = _mm256_setzero_ps();
        } else {
            a0 = acc[i][0], a1 = acc[i][1], a2 = acc[i][2], a3 = acc[i][3];
            b0 = b1 = b2 = b3 = a0;
            if (pair)
                b0 = acc[i + 1][0], b1 = acc[i + 1][1], b2 = acc[i + 1][2], b3 = acc[i + 1][3];
        }
        int k = 0;
        for (; k < k8; k += 8)
            DOT_STEP(LOAD_W, LOAD_X);
        if (k < kc)
            DOT_STEP(MASK_W, MASK_X);
        if (!last) {
            acc[i][0] = a0, acc[i][1] = a1, acc[i][2] = a2, acc[i][3] = a3;
            if (pair)
                acc[i + 1][0] = b0, acc[i + 1][1] = b1, acc[i + 1][2] = b2, acc[i + 1][3] = b3;
            continue;
        }
        float t[4];
        _mm_storeu_ps(t, hsum4(a0, a1, a2, a3));
        memcpy(Y + (size_t)i * ldy, t, (size_t)nr * sizeof(float));
        if (pair) {
            _mm_storeu_ps(t, hsum4(b0, b1, b2, b3));
            memcpy(Y + (size_t)(i + 1) * ldy, t, (size_t)nr * sizeof(float));
        }
    }
}

/* Up to eight rows of X against every row of W straight from the blocks, without the buffer;
 * the same bits as dequant_avx2 + dots_avx2. -ENOTSUP for a type without a fused kernel. */
static int gemv8_avx2(uint32_t type, const uint8_t *W, size_t row_bytes, int in, int out,
                      const float *X, int n, float *Y, int ldy)
{
    core__gemv8_fn *k = core__traits_of(type)->gemv8_avx2;
    if (!k)
        return -ENOTSUP;
    const float *x[8];
    for (int j = 0; j < 8; j++)
        x[j] = X + (size_t)(j < n ? j : n - 1) * in;
    k(W, row_bytes, in / 32, out, x, n, Y, ldy);
    return 0;
}

/* More than eight rows of X on AVX2: weight rows are rebuilt once into a buffer and every tile of
 * rows of X runs against them, both operands loaded: 3 weight rows x 4 rows of X or 2 x 6 (twelve
 * accumulators, the weight vectors and one of X in the sixteen registers), whichever wastes fewer
 * rows; the rebuild is paid once for all the rows instead of once per group of eight. The chains
 * and their sums are those of fused(): same bits. Measured on an Intel Xeon (family 6, model 167)
 * held to AVX2, one core, Q4_1 576 x 1536, GFLOP/s at 16 / 32 / 64 / 128 rows: groups of eight
 * 53 / 52 / 53 / 54; panels (2, 6) 72-76 / 74-80 / 82-90 / 84-90 (the AVX2 FMA loop's peak: about
 * 120); at 9 / 16 / 24 / 32 / 48 / 64 rows (3, 4) 60 / 83 / 85 / 88 / 91 / 92, (2, 6) 63 / 81 /
 * 91 / 85 / 97 / 95. X's load has to be kept in a register: GCC folds it into every FMA, and the
 * extra loads cost a quarter of the speed. */

AVX2_INLINE static void panel_tile_avx2(const float *const *w, int nkk, const float *X, int ldx,
                                        int nx, float *Y, int ldy, int nr, const int NW,
                                        const int NX)
{
    const float *x[6]; /* rows past nx repeat the last; their sums are dropped */
    for (int j = 0; j < NX; j++)
        x[j] = X + (size_t)(j < nx ? j : nx - 1) * ldx;
    __m256 acc[12]; /* NW * NX */
    UNROLL
    for (int t = 0; t < NW * NX; t++)
        acc[t] = _mm256_setzero_ps();
    for (int kk = 0; kk < nkk; kk++) {
        __m256 wv[3];
        UNROLL
        for (int r = 0; r < NW; r++)
            wv[r] = _mm256_load_ps(w[r] + (size_t)kk * 8);
        UNROLL
        for (int j = 0; j < NX; j++) {
            __m256 xv = _mm256_loadu_ps(x[j] + (size_t)kk * 8);
            __asm__("" : "+x"(xv)); /* one load for all the FMAs: compilers fold it into each */
            UNROLL
            for (int r = 0; r < NW; r++)
                acc[r * NX + j] = _mm256_fmadd_ps(wv[r], xv, acc[r * NX + j]);
        }
    }
    float t[4];
    for (int r = 0; r < nr; r++) {
        UNROLL
        for (int j = 0; j < NX; j += 4) { /* lanes: four rows of X */
            const __m256 *v = acc + r * NX;
            int k1 = j + 1 < NX ? j + 1 : j, k2 = j + 2 < NX ? j + 2 : j,
                k3 = j + 3 < NX ? j + 3 : j;
            _mm_storeu_ps(t, hsum4(v[j], v[k1], v[k2], v[k3]));
            for (int k = 0; k < 4 && j + k < nx; k++)
                Y[(size_t)(j + k) * ldy + r] = t[k];
        }
    }
}

/* Rows of X the panel kernels take at a time: about 512 KiB of them (whole tiles of 6 and 8), so
 * that X stays in L2 while the weights' panels run against it; a long prefill (16 x 128 rows: 4.7
 * MB of X at 576) otherwise streams X from memory once per panel. Each chunk rebuilds the weights
 * again, which costs little against that many rows. Rows are independent: same bits. */
static int panel_chunk(int in)
{
    int rows = (int)((512 * 1024) / ((size_t)in * sizeof(float))) / 24 * 24;
    return rows < 48 ? 48 : rows;
}

/* A panel kernel: Y = X · Wᵀ for n rows of X; 0, or -ENOTSUP / -ENOMEM (nothing usable in Y). */
typedef int panels_fn(uint32_t type, const uint8_t *W, size_t row_bytes, int in, int out,
                      const float *X, int n, float *Y, int ldy);

/* fn on X panel_chunk(in) rows at a time; its first failure. */
static int panels_chunked(panels_fn *fn, uint32_t type, const uint8_t *W, size_t row_bytes, int in,
                          int out, const float *X, int n, float *Y, int ldy)
{
    int rc = 0, chunk = panel_chunk(in);
    for (int r0 = 0; r0 < n && rc == 0; r0 += chunk)
        rc = fn(type, W, row_bytes, in, out, X + (size_t)r0 * in, n - r0 < chunk ? n - r0 : chunk,
                Y + (size_t)r0 * ldy, ldy);
    return rc;
}

/* Y = X · Wᵀ for n > 8 through the panels: PANEL_BLOCK weight rows are rebuilt (into L2), then
 * each tile of X, which stays in L1 while it runs, goes against every pair of them. -ENOTSUP
 * without an AVX2 rebuild for the type, -ENOMEM without the buffer (the caller then runs the
 * fused kernels: same bits). */
#define PANEL_BLOCK 32
AVX2 static int gemv_panels_avx2(uint32_t type, const uint8_t *W, size_t row_bytes, int in, int out,
                                 const float *X, int n, float *Y, int ldy)
{
    core__rebuild_fn *rebuild = core__traits_of(type)->rebuild_avx2;
    if (!rebuild)
        return -ENOTSUP;
    float *wp = aligned_alloc(64, (size_t)PANEL_BLOCK * in * sizeof(float));
    if (!wp)
        return -ENOMEM;
    int nkk = in / 8, nb = in / (int)core_type_block_elems(type);
    /* the tile: 3 weight rows x 4 of X (fewer loads a FMA) unless tiles of 6 waste less */
    bool t34 = (n + 3) / 4 * 4 * 21 < (n + 5) / 6 * 6 * 20;
    int nw = t34 ? 3 : 2, nx = t34 ? 4 : 6;
    for (int o0 = 0; o0 < out; o0 += PANEL_BLOCK) {
        int rows = out - o0 < PANEL_BLOCK ? out - o0 : PANEL_BLOCK;
        for (int r = 0; r < rows; r++)
            rebuild(W + (size_t)(o0 + r) * row_bytes, wp + (size_t)r * in, nb);
        for (int r0 = 0; r0 < n; r0 += nx)
            for (int r = 0; r < rows; r += nw) { /* past the last row: it again, dropped */
                const float *w[3];
                for (int q = 0; q < nw; q++)
                    w[q] = wp + (size_t)(r + q < rows ? r + q : rows - 1) * in;
                int tx = n - r0 < nx ? n - r0 : nx, tr = rows - r < nw ? rows - r : nw;
                float *y = Y + (size_t)r0 * ldy + o0 + r;
                if (nw == 3)
                    panel_tile_avx2(w, nkk, X + (size_t)r0 * in, in, tx, y, ldy, tr, 3, 4);
                else
                    panel_tile_avx2(w, nkk, X + (size_t)r0 * in, in, tx, y, ldy, tr, 2, 6);
            }
    }
    free(wp);
    return 0;
}

/* gemv8_avx2 for any n: more than eight rows through the panels; without their buffer, eight at
 * a time against OC weight rows, which stay in L1/L2 while every group of eight uses them (the
 * same bits as any other path). */
AVX2 static int gemv_avx2(uint32_t type, const uint8_t *W, size_t row_bytes, int in, int out,
                          const float *X, int n, float *Y, int ldy)
{
    if (n <= 8 || !core__traits_of(type)->gemv8_avx2)
        return gemv8_avx2(type, W, row_bytes, in, out, X, n, Y, ldy);
    if (panels_chunked(gemv_panels_avx2, type, W, row_bytes, in, out, X, n, Y, ldy) == 0)
        return 0;
    for (int o0 = 0; o0 < out; o0 += OC)
        for (int r0 = 0; r0 < n; r0 += 8)
            gemv8_avx2(type, W + (size_t)o0 * row_bytes, row_bytes, in,
                       out - o0 < OC ? out - o0 : OC, X + (size_t)r0 * in, n - r0 < 8 ? n - r0 : 8,
                       Y + (size_t)r0 * ldy + o0, ldy);
    return 0;
}

/* ---- AVX-512: two weight rows per register ------------------------------------------------ */

/* The same chains as the AVX2 kernels, twice as many per instruction: a 512-bit register holds
 * one 8-lane chain of weight row r in its low half and one of row r + 1 in its high half, and each
 * step's eight elements of a row of X are broadcast to both halves. Every lane still accumulates
 * the elements k % 8 == l of one (weight row, X row) pair over k = 0, 8, 16, ..., and the halves
 * are summed with hsum4, so the bits are those of the AVX2 kernels. Rebuilding a block costs the
 * same instructions for two rows as AVX2's for one, and each X load feeds two FMAs per row pair:
 * on cores with full-width 512-bit units (Zen 5, Intel server cores) about twice the FMAs per
 * cycle. */

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")))
#define AVX512_INLINE                                                                              \
    __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c"),                     \
                   always_inline)) inline

/* The 16 bytes at a in 128-bit lanes 0 and 1, those at b in lanes 2 and 3. */
AVX512_INLINE static __m512i bcast16x2(const uint8_t *a, const uint8_t *b)
{
    __m512i v = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)a));
    return _mm512_mask_broadcast_i32x4(v, 0xff00, _mm_loadu_si128((const __m128i *)b));
}

/* widen_u8 on each 256-bit half. */
AVX512_INLINE static void widen_u8x2(__m512i v, __m512i *e0, __m512i *e1)
{
    const __m512i s0 = _mm512_broadcast_i64x4(
        _mm256_setr_epi8(0, -1, -1, -1, 1, -1, -1, -1, 2, -1, -1, -1, 3, -1, -1, -1, 4, -1, -1, -1,
                         5, -1, -1, -1, 6, -1, -1, -1, 7, -1, -1, -1));
    const __m512i s1 = _mm512_add_epi32(s0, _mm512_set1_epi32(8));
    *e0 = _mm512_shuffle_epi8(v, s0);
    *e1 = _mm512_shuffle_epi8(v, s1);
}

/* widen_i8 on each 256-bit half. */
AVX512_INLINE static void widen_i8x2(__m512i v, __m512i *e0, __m512i *e1)
{
    const __m512i s0 = _mm512_broadcast_i64x4(
        _mm256_setr_epi8(-1, -1, -1, 0, -1, -1, -1, 1, -1, -1, -1, 2, -1, -1, -1, 3, -1, -1, -1, 4,
                         -1, -1, -1, 5, -1, -1, -1, 6, -1, -1, -1, 7));
    const __m512i s1 = _mm512_add_epi32(s0, _mm512_set1_epi32(8 << 24));
    *e0 = _mm512_srai_epi32(_mm512_shuffle_epi8(v, s0), 24);
    *e1 = _mm512_srai_epi32(_mm512_shuffle_epi8(v, s1), 24);
}

/* nibbles() of the blocks' quants at a (low half) and b (high half). */
AVX512_INLINE static void nibbles_x2(const uint8_t *a, const uint8_t *b, __m512i q[4])
{
    const __m512i m4 = _mm512_set1_epi32(0x0f);
    __m512i e0, e1;
    widen_u8x2(bcast16x2(a, b), &e0, &e1);
    q[0] = _mm512_and_si512(e0, m4);
    q[1] = _mm512_and_si512(e1, m4);
    q[2] = _mm512_srli_epi32(e0, 4);
    q[3] = _mm512_srli_epi32(e1, 4);
}

/* The f16 at a in the low half, the one at b in the high half, as floats. */
AVX512_INLINE static __m512 f16_x2(const uint8_t *a, const uint8_t *b)
{
    uint16_t ha, hb;
    memcpy(&ha, a, sizeof ha);
    memcpy(&hb, b, sizeof hb);
    __m128 v =
        _mm_cvtph_ps(_mm_cvtsi32_si128((int)((uint32_t)ha | (uint32_t)hb << 16))); /* fa, fb */
    return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
                                 _mm512_castps128_ps512(v));
}

AVX512_INLINE static __m512 scale_x2(__m512i q, __m512 d)
{
    return _mm512_mul_ps(_mm512_cvtepi32_ps(q), d);
}

AVX512_INLINE static __m512 scale_add_x2(__m512i q, __m512 d, __m512 m)
{
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(q), d, m); /* exact product: see scale_add */
}

/* block_<type>_x2(a, b, w): block_<type> of the block at a in the low halves of w[0..4), of the
 * one at b in the high halves. */
AVX512_INLINE static void block_q4_0_x2(const uint8_t *a, const uint8_t *b, __m512 w[4])
{
    __m512i q[4];
    nibbles_x2(a + 2, b + 2, q);
    const __m512i k8 = _mm512_set1_epi32(8);
    __m512 d = f16_x2(a, b);
    UNROLL
    for (int j = 0; j < 4; j++)
        w[j] = scale_x2(_mm512_sub_epi32(q[j], k8), d);
}

AVX512_INLINE static void block_q4_1_x2(const uint8_t *a, const uint8_t *b, __m512 w[4])
{
    uint32_t da, db;
    memcpy(&da, a, sizeof da);
    memcpy(&db, b, sizeof db);
    __m128 dm = _mm_cvtph_ps(_mm_unpacklo_epi32(_mm_cvtsi32_si128((int)da),
                                                _mm_cvtsi32_si128((int)db))); /* da ma db mb */
    __m512 v = _mm512_castps128_ps512(dm);
    __m512 d =
        _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2), v);
    __m512 m =
        _mm512_permutexvar_ps(_mm512_setr_epi32(1, 1, 1, 1, 1, 1, 1, 1, 3, 3, 3, 3, 3, 3, 3, 3), v);
    __m512i q[4];
    nibbles_x2(a + 4, b + 4, q);
    UNROLL
    for (int j = 0; j < 4; j++)
        w[j] = scale_add_x2(q[j], d, m);
}

/* The fifth bits of elements 8j..8j+7 of the blocks whose qh are qa (low half) and qb (high
 * half), as a lane mask: the integer unit builds it and one masked add or subtract applies it,
 * where spreading the bits over the lanes (q5_high's broadcast, variable shift, and, shift, or)
 * took five vector operations a vector, and one row of X is bound by the vector operations. */
AVX512_INLINE static __mmask16 q5_mask_x2(uint32_t qa, uint32_t qb, int j)
{
    return (__mmask16)(((qa >> 8 * j) & 0xffu) | ((qb >> 8 * j) & 0xffu) << 8);
}

/* (q | h << 4) - 16: q where h is set, q - 16 where it is not. */
AVX512_INLINE static void block_q5_0_x2(const uint8_t *a, const uint8_t *b, __m512 w[4])
{
    uint32_t qa, qb;
    memcpy(&qa, a + 2, sizeof qa);
    memcpy(&qb, b + 2, sizeof qb);
    __m512i q[4];
    nibbles_x2(a + 6, b + 6, q);
    const __m512i k16 = _mm512_set1_epi32(16);
    __m512 d = f16_x2(a, b);
    UNROLL
    for (int j = 0; j < 4; j++)
        w[j] =
            scale_x2(_mm512_mask_sub_epi32(q[j], (__mmask16)~q5_mask_x2(qa, qb, j), q[j], k16), d);
}

/* q | h << 4: q + 16 where h is set. */
AVX512_INLINE static void block_q5_1_x2(const uint8_t *a, const uint8_t *b, __m512 w[4])
{
    uint32_t qa, qb;
    memcpy(&qa, a + 4, sizeof qa);
    memcpy(&qb, b + 4, sizeof qb);
    __m512i q[4];
    nibbles_x2(a + 8, b + 8, q);
    const __m512i k16 = _mm512_set1_epi32(16);
    __m512 d = f16_x2(a, b), m = f16_x2(a + 2, b + 2);
    UNROLL
    for (int j = 0; j < 4; j++)
        w[j] = scale_add_x2(_mm512_mask_add_epi32(q[j], q5_mask_x2(qa, qb, j), q[j], k16), d, m);
}

AVX512_INLINE static void block_q8_0_x2(const uint8_t *a, const uint8_t *b, __m512 w[4])
{
    __m512i q0, q1, q2, q3;
    widen_i8x2(bcast16x2(a + 2, b + 2), &q0, &q1);
    widen_i8x2(bcast16x2(a + 18, b + 18), &q2, &q3);
    __m512 d = f16_x2(a, b);
    w[0] = scale_x2(q0, d);
    w[1] = scale_x2(q1, d);
    w[2] = scale_x2(q2, d);
    w[3] = scale_x2(q3, d);
}

/* X rows packed for fused_x2: for block i, quarter q and row j of the NX rows, the eight floats
 * X[j][32i + 8q .. 32i + 8q + 7] at xp + ((i * 4 + q) * NX + j) * 8, so that every broadcast is
 * one base register plus a constant (sixteen row pointers would not fit in the integer
 * registers). Rows nx..NX-1 repeat the last row. */
AVX512_INLINE static void pack_x(const float *X, int ldx, int nx, int nb, float *xp, const int NX)
{
    for (int i = 0; i < nb; i++)
        for (int q = 0; q < 4; q++)
            UNROLL
    for (int j = 0; j < NX; j++)
        _mm256_store_ps(xp + ((size_t)(i * 4 + q) * NX + j) * 8,
                        _mm256_loadu_ps(X + (size_t)(j < nx ? j : nx - 1) * ldx + 32 * i + 8 * q));
}

/* As fused(), with NP pairs of weight rows (2 * NP rows) against NX packed rows of X: NP * NX
 * registers of two chains each; sub-blocks of QN vectors as there. */
AVX512_INLINE static void
fused_x2(void (*block)(const uint8_t *, const uint8_t *, int, float *, __m512 *), size_t bytes,
         const int SUB, const int QN, const uint8_t *W, size_t row_bytes, int nb, int out,
         const float *xp, int nx, float *Y, int ldy, const int NP, const int NX)
{
    for (int o = 0; o < out; o += 2 * NP) {
        const uint8_t *b[8]; /* rows past the end repeat the last row; their sums are dropped */
        UNROLL
        for (int r = 0; r < 2 * NP; r++)
            b[r] = W + (size_t)(o + r < out ? o + r : out - 1) * row_bytes;
        __m512 acc[32]; /* acc[p * NX + j] */
        UNROLL
        for (int t = 0; t < NP * NX; t++)
            acc[t] = _mm512_setzero_ps();
        const float *xi = xp;
        _Alignas(32) float ks[4][32];
        for (int i = 0; i < nb * 4 / QN; i++, xi += 8 * QN * NX) {
            size_t at = (size_t)(i / SUB) * bytes;
            int s = i % SUB;
            size_t ahead = at + (size_t)s * bytes / SUB + 2 * NP * row_bytes;
            __m512 w[4][8]; /* w[p][quarter] */
            UNROLL
            for (int p = 0; p < NP; p++) {
                _mm_prefetch((const char *)(b[2 * p] + ahead), _MM_HINT_T0);
                _mm_prefetch((const char *)(b[2 * p + 1] + ahead), _MM_HINT_T0);
                block(b[2 * p] + at, b[2 * p + 1] + at, s, ks[p], w[p]);
            }
            UNROLL
            for (int q = 0; q < QN; q++) {
                UNROLL
                for (int j = 0; j < NX; j++) {
                    __m512 xv = _mm512_broadcast_f32x8(_mm256_load_ps(xi + (q * NX + j) * 8));
                    UNROLL
                    for (int p = 0; p < NP; p++)
                        acc[p * NX + j] = _mm512_fmadd_ps(w[p][q], xv, acc[p * NX + j]);
                }
            }
        }
        int nr = out - o < 2 * NP ? out - o : 2 * NP;
        float t[4];
        UNROLL
        for (int r = 0; r < 2 * NP; r++) {
            if (r >= nr)
                break;
            UNROLL
            for (int j = 0; j < NX; j += 4) { /* lanes: four rows of X */
                const __m512 *a = acc + (r / 2) * NX + j;
                __m256 h[4];
                UNROLL
                for (int k = 0; k < 4; k++)
                    h[k] = r % 2 ? _mm512_extractf32x8_ps(a[k % NX], 1)
                                 : _mm512_castps512_ps256(a[k % NX]);
                _mm_storeu_ps(t, hsum4(h[0], h[1], h[2], h[3]));
                for (int k = 0; k < 4 && j + k < nx; k++)
                    Y[(size_t)(j + k) * ldy + o + r] = t[k];
            }
        }
    }
}

/* core__gemv16_avx512_<type>: packs n rows of X (n <= 16) into xp (-n: xp already holds them,
 * packed for the same n) and runs fused_x2 with the tile for n (pairs of weight rows, rows of X):
 * (4, 1) for one row, which needs no packing; (3, 4) up to four; (3, 8) up to eight; (2, 16) up to
 * sixteen, 32 accumulators, the weights then read from L1 by the FMAs. Measured on a Zen 5 core,
 * Q4_1 576 x 1536 from L2, GFLOP/s: 55 at one row (it is bound by the weights), 131 at four, 170 at
 * eight, 175-180 at 16 and 32 (AVX2: 32, 79, 94, 93); the FMA peak is about 258. NP <= 4 and NP *
 * NX <= 32 (b[] and acc[] in fused_x2). */
#define KERNELS_X2(type, bytes, SUB, QN)                                                           \
    AVX512 void core__rebuild2_avx512_##type(const uint8_t *a, const uint8_t *b, int nb,           \
                                             float *dst)                                           \
    {                                                                                              \
        _Alignas(64) float ks[32];                                                                 \
        for (int i = 0; i < nb * (SUB); i++, dst += 16 * (QN)) {                                   \
            size_t at = (size_t)(i / (SUB)) * (bytes);                                             \
            __m512 w[QN];                                                                          \
            sub_##type##_x2(a + at, b + at, i % (SUB), ks, w);                                     \
            UNROLL                                                                                 \
            for (int q = 0; q < (QN); q++)                                                         \
                _mm512_store_ps(dst + 16 * q, w[q]);                                               \
        }                                                                                          \
    }                                                                                              \
    AVX512 void core__gemv16_avx512_##type(const uint8_t *W, size_t row_bytes, int nb, int out,    \
                                           const float *X, int ldx, int n, float *xp, float *Y,    \
                                           int ldy)                                                \
    {                                                                                              \
        bool packed = n < 0;                                                                       \
        n = packed ? -n : n;                                                                       \
        if (n == 1) {                                                                              \
            fused_x2(sub_##type##_x2, (bytes), (SUB), (QN), W, row_bytes, nb, out, X, n, Y, ldy,   \
                     4, 1);                                                                        \
        } else if (n <= 4) {                                                                       \
            if (!packed)                                                                           \
                pack_x(X, ldx, n, nb, xp, 4);                                                      \
            fused_x2(sub_##type##_x2, (bytes), (SUB), (QN), W, row_bytes, nb, out, xp, n, Y, ldy,  \
                     3, 4);                                                                        \
        } else if (n <= 8) {                                                                       \
            if (!packed)                                                                           \
                pack_x(X, ldx, n, nb, xp, 8);                                                      \
            fused_x2(sub_##type##_x2, (bytes), (SUB), (QN), W, row_bytes, nb, out, xp, n, Y, ldy,  \
                     3, 8);                                                                        \
        } else {                                                                                   \
            if (!packed)                                                                           \
                pack_x(X, ldx, n, nb, xp, 16);                                                     \
            fused_x2(sub_##type##_x2, (bytes), (SUB), (QN), W, row_bytes, nb, out, xp, n, Y, ldy,  \
                     2, 16);                                                                       \
        }                                                                                          \
    }

/* A legacy block is its only sub-block. */
#define LEGACY_KERNELS_X2(type, bytes)                                                             \
    AVX512_INLINE static void sub_##type##_x2(const uint8_t *a, const uint8_t *b, int s,           \
                                              float *ks, __m512 w[4])                              \
    {                                                                                              \
        (void)s, (void)ks;                                                                         \
        block_##type##_x2(a, b, w);                                                                \
    }                                                                                              \
    KERNELS_X2(type, bytes, 1, 4)

LEGACY_KERNELS_X2(q4_0, 18)
LEGACY_KERNELS_X2(q4_1, 20)
LEGACY_KERNELS_X2(q5_0, 22)
LEGACY_KERNELS_X2(q5_1, 24)
LEGACY_KERNELS_X2(q8_0, 34)

/* The K-quants' sub-blocks, as sub_<type> on each half. */

AVX512_INLINE static void widen32x2(const uint8_t *a, const uint8_t *b, __m512i q[4])
{
    widen_u8x2(bcast16x2(a, b), &q[0], &q[1]);
    widen_u8x2(bcast16x2(a + 16, b + 16), &q[2], &q[3]);
}

/* The float at a in the low half, the one at b in the high half. */
AVX512_INLINE static __m512 bcast_x2(const float *a, const float *b)
{
    return _mm512_insertf32x8(_mm512_set1_ps(*a), _mm256_broadcast_ss(b), 1);
}

/* scale_sub with sub-block s's scale and min of the Q4_K/Q5_K blocks at a and b: ks holds a's
 * kscales, then b's, filled by sub-block 0. */
AVX512_INLINE static void kscale_sub_x2(const uint8_t *a, const uint8_t *b, int s, float *ks,
                                        const __m512i q[4], __m512 w[4])
{
    if (s == 0) {
        kscales(a, ks);
        kscales(b, ks + 16);
    }
    __m512 d = bcast_x2(ks + s, ks + 16 + s), m = bcast_x2(ks + 8 + s, ks + 24 + s);
    UNROLL
    for (int j = 0; j < 4; j++)
        w[j] = _mm512_fmsub_ps(d, _mm512_cvtepi32_ps(q[j]), m); /* exact product: scale_sub */
}

/* As sub_q4_k and sub_q5_k: chunk c of the blocks at a and b, both sub-blocks. */
AVX512_INLINE static void sub_q4_k_x2(const uint8_t *a, const uint8_t *b, int c, float *ks,
                                      __m512 w[8])
{
    __m512i q[4], lo[4], hi[4];
    widen32x2(a + 16 + 32 * c, b + 16 + 32 * c, q);
    UNROLL
    for (int j = 0; j < 4; j++) {
        lo[j] = _mm512_and_si512(q[j], _mm512_set1_epi32(0x0f));
        hi[j] = _mm512_srli_epi32(q[j], 4);
    }
    kscale_sub_x2(a, b, 2 * c, ks, lo, w);
    kscale_sub_x2(a, b, 2 * c + 1, ks, hi, w + 4);
}

/* The 32 bytes of a and of b (q5k_bytes, q6k_bytes of two rows) into t, for each quarter j
 * eight of a then eight of b: the 16 bytes at t + 16j widen to one two-row vector, a's elements
 * 8j..8j+7 in the low half, b's in the high. */
AVX512_INLINE static void interleave8x2(__m256i a, __m256i b, uint8_t *t)
{
    const __m512i il = _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11);
    _mm512_store_si512(
        t, _mm512_permutex2var_epi64(_mm512_castsi256_si512(a), il, _mm512_castsi256_si512(b)));
}

AVX512_INLINE static void sub_q5_k_x2(const uint8_t *a, const uint8_t *b, int c, float *ks,
                                      __m512 w[8])
{
    __m256i la, ha, lb, hb;
    q5k_bytes(a, c, &la, &ha);
    q5k_bytes(b, c, &lb, &hb);
    _Alignas(64) uint8_t t[128];
    interleave8x2(la, lb, t);
    interleave8x2(ha, hb, t + 64);
    __m512i lo[4], hi[4];
    UNROLL
    for (int j = 0; j < 4; j++) {
        lo[j] = _mm512_cvtepu8_epi32(_mm_load_si128((const __m128i *)(t + 16 * j)));
        hi[j] = _mm512_cvtepu8_epi32(_mm_load_si128((const __m128i *)(t + 64 + 16 * j)));
    }
    kscale_sub_x2(a, b, 2 * c, ks, lo, w);
    kscale_sub_x2(a, b, 2 * c + 1, ks, hi, w + 4);
}

AVX512_INLINE static void sub_q6_k_x2(const uint8_t *a, const uint8_t *b, int s, float *ks,
                                      __m512 w[4])
{
    if (s == 0) {
        q6k_scales(a, ks);
        q6k_scales(b, ks + 16);
    }
    _Alignas(64) uint8_t t[64];
    interleave8x2(q6k_bytes(a, s), q6k_bytes(b, s), t);
    __m512i q[4];
    UNROLL
    for (int j = 0; j < 4; j++)
        q[j] = _mm512_cvtepi8_epi32(_mm_load_si128((const __m128i *)(t + 16 * j)));
    __m512 d0 = bcast_x2(ks + 2 * s, ks + 16 + 2 * s);
    __m512 d1 = bcast_x2(ks + 2 * s + 1, ks + 17 + 2 * s);
    w[0] = _mm512_mul_ps(d0, _mm512_cvtepi32_ps(q[0]));
    w[1] = _mm512_mul_ps(d0, _mm512_cvtepi32_ps(q[1]));
    w[2] = _mm512_mul_ps(d1, _mm512_cvtepi32_ps(q[2]));
    w[3] = _mm512_mul_ps(d1, _mm512_cvtepi32_ps(q[3]));
}

KERNELS_X2(q4_k, 144, 4, 8)
KERNELS_X2(q5_k, 176, 4, 8)
KERNELS_X2(q6_k, 210, 8, 4)

/* Packed rows of X the AVX-512 kernels keep on the stack (128 KiB): up to three groups of
 * sixteen rows of the small models' 576 elements, one of 2048. More goes to the heap (or, if
 * that fails, to the AVX2 kernels, which give the same bits). */
#define XP (16 * 2048)
/* Bytes of weight rows run against every group of X before the next rows: they stay in L2
 * (1 MiB per core on Zen 4/5, 2 MiB on recent Intel) instead of coming from L3 or memory once
 * per group. */
#define WBLOCK (512 * 1024)

/* ---- AVX-512: many rows of X, against rebuilt panels ---------------------------------------- */

/* From PANEL_ROWS rows of X on, weights are rebuilt once per call into panels of 2 * PNP rows in
 * L1 and every tile of PNX rows of X runs against them with both operands loaded, as an sgemm
 * micro-kernel: the rebuild's cost is shared by all the rows instead of paid again per group of
 * sixteen, and the accumulators (24: 4 pairs x 6 rows of X, or 3 x 8), the weight vectors and one
 * of X fit the 32 registers (the fused (2, 16) tile spills). Each (weight row, X row) chain still
 * runs k = 0, 8, 16, ... with lane l holding k % 8 == l, summed by hsum4: the same bits as every
 * other path. Weight rows stay in L1 (a panel) and the packed X streams from L2; the other order
 * (a block of panels in L2, a tile of X in L1) measured 10-15% slower here. Measured on an Intel
 * Xeon (family 6, model 167), one core, Q4_1 576 x 1536, GFLOP/s at 16 / 32 / 64 / 128 rows:
 * fused (2, 16) 86 / 105 / 126 / 133, panels (4, 6) 117 / 131 / 146 / 151 (the FMA loop's peak:
 * about 230); the tile alone, without the rebuild, 150-165. */
#define PANEL_ROWS 9

/* Y[j * ldy + r] for j < nx, r < nr: the nx rows of X packed in xp (pack_x for PNX) against the
 * panel wp (for pair p and step kk, rows 2p and 2p + 1's elements 8kk..8kk+7 in the low and high
 * halves of the 16 floats at wp + (p * nkk + kk) * 16). */
AVX512_INLINE static void panel_tile(const float *wp, int nkk, const float *xp, int nx, float *Y,
                                     int ldy, int nr, const int PNP, const int PNX)
{
    __m512 acc[24]; /* PNP * PNX */
    UNROLL
    for (int t = 0; t < PNP * PNX; t++)
        acc[t] = _mm512_setzero_ps();
    for (int kk = 0; kk < nkk; kk++) {
        __m512 w[4]; /* PNP */
        UNROLL
        for (int p = 0; p < PNP; p++)
            w[p] = _mm512_load_ps(wp + ((size_t)p * nkk + kk) * 16);
        UNROLL
        for (int j = 0; j < PNX; j++) {
            __m512 xv = _mm512_broadcast_f32x8(_mm256_load_ps(xp + ((size_t)kk * PNX + j) * 8));
            UNROLL
            for (int p = 0; p < PNP; p++)
                acc[p * PNX + j] = _mm512_fmadd_ps(w[p], xv, acc[p * PNX + j]);
        }
    }
    float t[4];
    for (int r = 0; r < nr; r++) {
        UNROLL
        for (int j = 0; j < PNX; j += 4) { /* lanes: four rows of X */
            const __m512 *a = acc + (r / 2) * PNX;
            __m256 h[4];
            UNROLL
            for (int k = 0; k < 4; k++) {
                __m512 v = a[j + k < PNX ? j + k : j]; /* past the tile: dropped below */
                h[k] = r % 2 ? _mm512_extractf32x8_ps(v, 1) : _mm512_castps512_ps256(v);
            }
            _mm_storeu_ps(t, hsum4(h[0], h[1], h[2], h[3]));
            for (int k = 0; k < 4 && j + k < nx; k++)
                Y[(size_t)(j + k) * ldy + r] = t[k];
        }
    }
}

/* Y = X · Wᵀ for n >= PANEL_ROWS through panels; -ENOTSUP for a type without a two-row rebuild,
 * -ENOMEM when the buffer cannot be had (the caller then runs the fused kernels, same bits). */
AVX512_INLINE static int gemv_panels(uint32_t type, const uint8_t *W, size_t row_bytes, int in,
                                     int out, const float *X, int n, float *Y, int ldy,
                                     const int PNP, const int PNX)
{
    core__rebuild2_fn *rebuild = core__traits_of(type)->rebuild2_avx512;
    if (!rebuild)
        return -ENOTSUP;
    int nkk = in / 8, nb = in / (int)core_type_block_elems(type);
    int groups = (n + PNX - 1) / PNX;
    size_t xfl = (size_t)groups * PNX * in, wfl = (size_t)2 * PNP * in;
    size_t bytes = ((xfl + wfl) * sizeof(float) + 63) & ~(size_t)63;
    float *xp = aligned_alloc(64, bytes);
    if (!xp)
        return -ENOMEM;
    float *wp = xp + xfl;
    for (int g = 0; g < groups; g++) {
        int nx = n - g * PNX < PNX ? n - g * PNX : PNX;
        pack_x(X + (size_t)g * PNX * in, in, nx, in / 32, xp + (size_t)g * PNX * in, PNX);
    }
    for (int o = 0; o < out; o += 2 * PNP) {
        for (int p = 0; p < PNP; p++) { /* rows past the end repeat the last; dropped */
            int ra = o + 2 * p < out ? o + 2 * p : out - 1, rb = ra + 1 < out ? ra + 1 : out - 1;
            rebuild(W + (size_t)ra * row_bytes, W + (size_t)rb * row_bytes, nb,
                    wp + (size_t)p * nkk * 16);
        }
        int nr = out - o < 2 * PNP ? out - o : 2 * PNP;
        /* the next panel's rows (contiguous) into the cache while this one runs: its rebuild
         * then does not wait on memory. Intel Xeon (family 6, model 167), make bench, 32 rows:
         * 681 -> 701-718 tok/s (noisy; the same for AVX2's blocks measured 3-5% slower, so
         * they have none) */
        if (o + 2 * PNP < out) {
            const char *next = (const char *)(W + (size_t)(o + 2 * PNP) * row_bytes);
            size_t len =
                (size_t)(out - o - 2 * PNP < 2 * PNP ? out - o - 2 * PNP : 2 * PNP) * row_bytes;
            for (size_t off = 0; off < len; off += 64)
                _mm_prefetch(next + off, _MM_HINT_T1);
        }
        for (int g = 0; g < groups; g++) {
            int nx = n - g * PNX < PNX ? n - g * PNX : PNX;
            panel_tile(wp, nkk, xp + (size_t)g * PNX * in, nx, Y + (size_t)g * PNX * ldy + o, ldy,
                       nr, PNP, PNX);
        }
    }
    free(xp);
    return 0;
}

/* The tile for n rows: (3 pairs, 8 rows of X), about 9% faster a row, unless tiles of 6 waste
 * fewer rows (9-12 rows, 17-18, ...). One core, Q4_1 576 x 1536, GFLOP/s at 9 / 16 / 32 / 64 rows:
 * (4, 6) 103 / 127 / 141 / 161, (3, 8) 79 / 140 / 154 / 164. */
AVX512 static int gemv_panels_n(uint32_t type, const uint8_t *W, size_t row_bytes, int in, int out,
                                const float *X, int n, float *Y, int ldy)
{
    if ((n + 7) / 8 * 8 <= (n + 5) / 6 * 6)
        return gemv_panels(type, W, row_bytes, in, out, X, n, Y, ldy, 3, 8);
    return gemv_panels(type, W, row_bytes, in, out, X, n, Y, ldy, 4, 6);
}

/* Y = X · Wᵀ for any n: from PANEL_ROWS rows through the panels; below, or without the panels'
 * buffer, X is packed once, sixteen rows per group, then each block of WBLOCK bytes of weight rows
 * runs against every group (when the weights are one block, each group is packed just before its
 * run, into one group's buffer). -ENOTSUP for other types. */
AVX512 static int gemv_avx512(uint32_t type, const uint8_t *W, size_t row_bytes, int in, int out,
                              const float *X, int n, float *Y, int ldy)
{
    core__gemv16_fn *k = core__traits_of(type)->gemv16_avx512;
    if (!k)
        return -ENOTSUP;
    if (n >= PANEL_ROWS &&
        panels_chunked(gemv_panels_n, type, W, row_bytes, in, out, X, n, Y, ldy) == 0)
        return 0;
    int groups = (n + 15) / 16;
    size_t per = (size_t)in * 16; /* floats of one packed group */
    /* whole tiles of weight rows (every tile height divides 12) */
    int rows = (int)(WBLOCK / row_bytes) / 12 * 12;
    if (rows < 12)
        rows = 12;
    /* one block of weights: each group is packed just before its run, into the same buffer */
    bool one_block = out <= rows;
    size_t need = one_block ? per : per * groups;
    _Alignas(64) float stack[XP];
    float *xp = stack;
    if (need > XP && n > 1) {
        /* a large model's rows or a long prefill: the product costs milliseconds, the
         * allocation microseconds */
        xp = aligned_alloc(64, need * sizeof(float));
        if (!xp)
            return gemv_avx2(type, W, row_bytes, in, out, X, n, Y, ldy);
    }
    if (n == 1) { /* one row needs no packing */
        k(W, row_bytes, in / 32, out, X, in, 1, xp, Y, ldy);
    } else {
        for (int o0 = 0; o0 < out; o0 += rows) {
            int no = out - o0 < rows ? out - o0 : rows;
            for (int g = 0; g < groups; g++) {
                int r0 = 16 * g, nx = n - r0 < 16 ? n - r0 : 16;
                /* packed by the first block's run (-nx: already packed) */
                k(W + (size_t)o0 * row_bytes, row_bytes, in / 32, no, X + (size_t)r0 * in, in,
                  o0 == 0 ? nx : -nx, one_block ? xp : xp + per * g, Y + (size_t)r0 * ldy + o0,
                  ldy);
            }
        }
    }
    if (xp != stack)
        free(xp);
    return 0;
}

/* ---- dispatch ------------------------------------------------------------------------------ */

typedef struct qmm_ops {
    /* Rebuilds n elements (whole blocks) of a weight row, starting at src, into dst. */
    void (*dequant)(uint32_t type, const uint8_t *src, float *dst, int n);
    /* For i < nx, r < nr: the running dot of X row i (stride ldx) with w[r] over this chunk of
     * kc elements, kept in acc between chunks and written to Y[i * ldy + r] after the last. */
    void (*dots)(const float *const *w, int kc, const float *X, int ldx, int nx, void *acc,
                 bool first, bool last, float *Y, int ldy, int nr);
    /* Y = X · Wᵀ straight from the blocks without the buffer, or -ENOTSUP for a type the fused
     * kernels do not take; NULL when there are none. */
    int (*gemv)(uint32_t type, const uint8_t *W, size_t row_bytes, int in, int out, const float *X,
                int n, float *Y, int ldy);
} qmm_ops;

/* The kernels of the level (core/kernels/cpu_internal.h): AVX-512 from that level up, AVX2, the
 * portable ones only when forced; none below AVX2, where the portable kernels would run at a third
 * of OpenBLAS's sgemv on f32 weights, so the caller had better use that. */
static const qmm_ops *ops(void)
{
    static const qmm_ops avx512 = {dequant_avx2, dots_avx2, gemv_avx512};
    static const qmm_ops avx2 = {dequant_avx2, dots_avx2, gemv_avx2};
    static const qmm_ops portable = {dequant_generic, dots_generic, NULL};
    core_cpu_level l = core__cpu_level();
    return l >= CORE_CPU_AVX512     ? &avx512
           : l == CORE_CPU_AVX2     ? &avx2
           : l == CORE_CPU_PORTABLE ? &portable
                                    : NULL;
}

int core__qmatmul_max_rows(void)
{
    const char *e = getenv("ADAPTREE_QMATMUL_ROWS"); /* for tuning on another machine */
    long v = e ? strtol(e, NULL, 10) : 0;
    if (v > 0 && v <= 1000000)
        return (int)v;
    if (!ops())
        return 0;
    /* AVX-512 and AVX2 read the stored blocks at every batch size: a row's result is then the
     * same bits whatever else is in the step, and no f32 copy of the weights is kept. Forced
     * portable kernels stop at CORE_QMATMUL_ROWS (sgemm above: they are slow, for tests). */
    return core__cpu_level() >= CORE_CPU_AVX2 ? INT_MAX : CORE_QMATMUL_ROWS;
}

const char *core__qmatmul_kernels(void)
{
    if (!ops())
        return "none (f32 weights through OpenBLAS)";
    core_cpu_level l = core__cpu_level();
    return l >= CORE_CPU_AVX512 ? "AVX-512" : l == CORE_CPU_AVX2 ? "AVX2" : "portable";
}

int core__qmatmul(uint32_t type, const void *W, int in, int out, const float *X, int n, float *Y)
{
    return core__qmatmul_part(type, W, in, out, 0, out, X, n, Y);
}

int core__qmatmul_part(uint32_t type, const void *W, int in, int out, int o_begin, int o_end,
                       const float *X, int n, float *Y)
{
    if (!core__qmatmul_supports(type))
        return -ENOTSUP;
    size_t be = core_type_block_elems(type), bb = core_type_block_bytes(type);
    if (in <= 0 || out < 0 || n < 0 || (size_t)in % be || o_begin < 0 || o_begin > o_end ||
        o_end > out)
        return -EINVAL;
    const qmm_ops *o = ops();
    if (!o)
        return -ENOTSUP;
    size_t row_bytes = (size_t)in / be * bb;
    const uint8_t *wb = (const uint8_t *)W + (size_t)o_begin * row_bytes;
    int ldy = out;
    Y += o_begin;
    out = o_end - o_begin;
    _Alignas(64) float xs[XS]; /* (n, in) X, aligned */
    if ((uintptr_t)X % 32 && (size_t)n * in <= XS) {
        memcpy(xs, X, (size_t)n * in * sizeof(float));
        X = xs;
    }
    if (o->gemv && o->gemv(type, wb, row_bytes, in, out, X, n, Y, ldy) == 0)
        return 0;
    _Alignas(32) float buf[WR * LDB];    /* (WR, LDB) rebuilt weights */
    _Alignas(32) float acc[XR * WR * 8]; /* running sums between chunks, (XR, WR) vectors */
    for (int n0 = 0; n0 < n; n0 += XR) {
        int nx = n - n0 < XR ? n - n0 : XR;
        const float *Xp = X + (size_t)n0 * in;
        float *Yp = Y + (size_t)n0 * ldy;
        for (int o0 = 0; o0 < out; o0 += WR) {
            int nr = out - o0 < WR ? out - o0 : WR;
            for (int k0 = 0; k0 < in; k0 += KC) {
                int kc = in - k0 < KC ? in - k0 : KC;
                const float *rows[WR];
                for (int r = 0; r < WR; r++) {
                    rows[r] = buf; /* rows past the end reuse row 0; their sums are dropped */
                    if (r < nr) {
                        rows[r] = buf + r * LDB;
                        o->dequant(type, wb + (size_t)(o0 + r) * row_bytes + k0 / be * bb,
                                   buf + r * LDB, kc);
                    }
                }
                o->dots(rows, kc, Xp + k0, in, nx, acc, k0 == 0, k0 + kc == in, Yp + o0, ldy, nr);
            }
        }
    }
    return 0;
}
