/* Matrix products with int8 activations: repacking, quantizing X, portable, AVX2 and AVX-512
 * VNNI kernels (qmatmul_q8.h).
 *
 * Repacked weights: sixteen output rows (a group) at a time, block by block (32 inputs), each
 * block a unit of UNIT bytes, 64-byte aligned:
 *   Q4_1: four 64-byte vectors, vector g holding for each of the 16 rows the 4 bytes qs[4g..4g+3]
 *         of its block (low nibbles: inputs 4g..4g+3, high nibbles: 16+4g..16+4g+3), then the
 *         16 rows' d (f16) and the 16 rows' m (f16): 320 bytes.
 *   Q8_0: eight 64-byte vectors, vector g holding inputs 4g..4g+3 of the 16 rows as q + 128
 *         (unsigned, for VPDPBUSD), then the 16 rows' d (f16), padded: 576 bytes.
 *   Q4_0, Q5_0: Q8_0's unit, holding q - 8 (Q4_0) or q - 16 (Q5_0) and d: every weight is d
 *         times a small integer, so the repack is exact and runs through Q8_0's kernels.
 *   Q5_1: Q5_K's unit (below) with d and m as f32: w = d·q + m.
 *   Q4_K: a unit per 32-element sub-block, its nibbles re-paired as Q4_1's, then the 16 rows'
 *         d · sc (f32) and -(dmin · mn) (f32): 384 bytes. A sub-block is then a Q4_1 block whose
 *         scale and min are f32 (w = d·sc·q - dmin·mn), and runs through Q4_1's kernels.
 *   Q5_K: a unit per 32-element sub-block: eight 64-byte vectors as Q8_0's holding q (0..31,
 *         unsigned as it is), then the 16 rows' d · sc and -(dmin · mn) (f32): 640 bytes; the
 *         min term is Q4_1's (m · s_x).
 *   Q6_K: a unit per 32-element sub-block: eight 64-byte vectors as Q8_0's, holding q - 32
 *         (signed), then per half of 16 inputs (one scale each) the 16 rows' d · sc (f32) and
 *         -128 · Σ(q - 32) (int32): 768 bytes. X goes in as x + 128 (unsigned, for VPDPBUSD),
 *         and the stored sums take the 128 back out: each half's integer sum is exact.
 * A quantized row of X: in int8 values, then per block d (f32), s = d·Σq (f32) and Σq (int32).
 */
#include "core/kernels/qmatmul_q8_internal.h"

#include <errno.h>
#include <immintrin.h>
#include <math.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "core/format/types.h"
#include "core/kernels/cpu_internal.h"
#include "core/kernels/traits_internal.h"
#include "core/model/model.h"

#define QK 32
#define GROUP 16
#define UNIT_Q4_1 CORE_Q8_UNIT_Q4_1
#define UNIT_Q8_0 CORE_Q8_UNIT_Q8_0
#define UNIT_Q4_K CORE_Q8_UNIT_Q4_K
#define UNIT_Q6_K CORE_Q8_UNIT_Q6_K
#define UNIT_Q5_K CORE_Q8_UNIT_Q5_K
#define XR 8 /* rows of X per pass over a group's weights (from L1 after the first) */

struct core_q8w {
    uint32_t type;
    bool nib;        /* Q4_1 or Q4_K: the nibble kernels */
    bool f32;        /* Q4_K: f32 scales and mins */
    bool q6;         /* Q6_K: two scales per unit */
    bool q5;         /* Q5_K: unsigned bytes, f32 scale and min */
    int in, out, nb; /* nb = in / QK */
    size_t unit;     /* bytes of one group's block */
    size_t bytes;
    uint8_t *data; /* (out / 16) groups of nb units */
};

int core__q8w_supports(uint32_t type, int in, int out)
{
    return core__traits_of(type)->repack8 && in > 0 && in % QK == 0 && out > 0 && out % GROUP == 0;
}

/* Row j's block into its group's unit, in the layouts above (the traits table's repack8). */
void core__repack8_q4_1(const uint8_t *blk, int s, uint8_t *u, int j)
{
    (void)s;
    for (int g = 0; g < 4; g++)
        memcpy(u + 64 * g + 4 * j, blk + 4 + 4 * g, 4);
    memcpy(u + 256 + 2 * j, blk, 2);     /* d */
    memcpy(u + 288 + 2 * j, blk + 2, 2); /* m */
}

void core__repack8_q8_0(const uint8_t *blk, int s, uint8_t *u, int j)
{
    (void)s;
    for (int g = 0; g < 8; g++)
        for (int t = 0; t < 4; t++)
            u[64 * g + 4 * j + t] = (uint8_t)(blk[2 + 4 * g + t] ^ 0x80u);
    memcpy(u + 512 + 2 * j, blk, 2); /* d */
}

/* Element l of a block of 32 4-bit values: the low nibble of qs[l], 16 + l the high one. */
static inline int nibble(const uint8_t *qs, int l)
{
    return l < 16 ? qs[l] & 15 : qs[l - 16] >> 4;
}

/* ... with bit l of qh above it: a 5-bit value (Q5_0, Q5_1). */
static inline int five_bits(const uint8_t *qs, uint32_t qh, int l)
{
    return nibble(qs, l) | (int)(qh >> l & 1) << 4;
}

/* Q4_0 (d, qs[16]: element l the low nibble of qs[l], 16 + l the high one, minus 8) and Q5_0
 * (d, qh, qs[16]: the same nibbles with bit l of qh above them, minus 16) as Q8_0's unit. */
void core__repack8_q4_0(const uint8_t *blk, int s, uint8_t *u, int j)
{
    (void)s;
    for (int l = 0; l < 32; l++) {
        int q = nibble(blk + 2, l) - 8;
        u[64 * (l / 4) + 4 * j + l % 4] = (uint8_t)((uint8_t)(int8_t)q ^ 0x80u);
    }
    memcpy(u + 512 + 2 * j, blk, 2); /* d */
}

void core__repack8_q5_0(const uint8_t *blk, int s, uint8_t *u, int j)
{
    (void)s;
    uint32_t qh;
    memcpy(&qh, blk + 2, sizeof qh);
    for (int l = 0; l < 32; l++) {
        int q = five_bits(blk + 6, qh, l) - 16;
        u[64 * (l / 4) + 4 * j + l % 4] = (uint8_t)((uint8_t)(int8_t)q ^ 0x80u);
    }
    memcpy(u + 512 + 2 * j, blk, 2); /* d */
}

/* Q5_1 (d, m, qh, qs[16]; q as Q5_0's without the 16) as Q5_K's unit: q unsigned, d and m f32. */
void core__repack8_q5_1(const uint8_t *blk, int s, uint8_t *u, int j)
{
    (void)s;
    uint32_t qh;
    memcpy(&qh, blk + 4, sizeof qh);
    for (int l = 0; l < 32; l++)
        u[64 * (l / 4) + 4 * j + l % 4] = (uint8_t)five_bits(blk + 8, qh, l);
    float d = core_fp16_to_fp32((uint16_t)(blk[0] | blk[1] << 8));
    float m = core_fp16_to_fp32((uint16_t)(blk[2] | blk[3] << 8));
    memcpy(u + 512 + 4 * j, &d, 4);
    memcpy(u + 576 + 4 * j, &m, 4);
}

/* Sub-block s of a Q4_K block: element l is nibble s % 2 of qs[32 (s / 2) + l]; byte t of the
 * unit's row pairs elements t (low) and 16 + t (high), as Q4_1. The scale and min are the
 * dequantizer's float products. */
void core__repack8_q4_k(const uint8_t *blk, int s, uint8_t *u, int j)
{
    const uint8_t *qs = blk + 16 + 32 * (s / 2);
    int sh = 4 * (s % 2);
    for (int t = 0; t < 16; t++)
        u[64 * (t / 4) + 4 * j + t % 4] =
            (uint8_t)((qs[t] >> sh & 15) | (qs[16 + t] >> sh & 15) << 4);
    uint8_t sc, mn;
    core__q4k_scale_min(s, blk + 4, &sc, &mn);
    float d = core_fp16_to_fp32((uint16_t)(blk[0] | blk[1] << 8)) * (float)sc;
    float m = -(core_fp16_to_fp32((uint16_t)(blk[2] | blk[3] << 8)) * (float)mn);
    memcpy(u + 256 + 4 * j, &d, 4);
    memcpy(u + 320 + 4 * j, &m, 4);
}

/* Sub-block s of a Q5_K block: nibble s % 2 of qs[32 (s / 2) + l] with bit s of qh[l] above it. */
void core__repack8_q5_k(const uint8_t *blk, int s, uint8_t *u, int j)
{
    const uint8_t *qh = blk + 16, *qs = blk + 48 + 32 * (s / 2);
    for (int l = 0; l < 32; l++)
        u[64 * (l / 4) + 4 * j + l % 4] =
            (uint8_t)((qs[l] >> 4 * (s % 2) & 15) | (qh[l] >> s & 1) << 4);
    uint8_t sc, mn;
    core__q4k_scale_min(s, blk + 4, &sc, &mn);
    float d = core_fp16_to_fp32((uint16_t)(blk[0] | blk[1] << 8)) * (float)sc;
    float m = -(core_fp16_to_fp32((uint16_t)(blk[2] | blk[3] << 8)) * (float)mn);
    memcpy(u + 512 + 4 * j, &d, 4);
    memcpy(u + 576 + 4 * j, &m, 4);
}

/* Sub-block s of a Q6_K block: quarter s % 4 of half s / 4, as dequant.c reads it. */
void core__repack8_q6_k(const uint8_t *blk, int s, uint8_t *u, int j)
{
    int half = s / 4, c = s % 4;
    const uint8_t *ql = blk + 64 * half + 32 * (c % 2), *qh = blk + 128 + 32 * half;
    const int8_t *sc = (const int8_t *)(blk + 192);
    float d = core_fp16_to_fp32((uint16_t)(blk[208] | blk[209] << 8));
    int32_t sum[2] = {0, 0};
    for (int l = 0; l < 32; l++) {
        int q = ((ql[l] >> 4 * (c / 2)) & 15) | ((qh[l] >> 2 * c) & 3) << 4;
        u[64 * (l / 4) + 4 * j + l % 4] = (uint8_t)(int8_t)(q - 32);
        sum[l / 16] += q - 32;
    }
    for (int h = 0; h < 2; h++) {
        float dh = d * (float)sc[2 * s + h];
        int32_t corr = -128 * sum[h];
        memcpy(u + 512 + 64 * h + 4 * j, &dh, 4);
        memcpy(u + 640 + 64 * h + 4 * j, &corr, 4);
    }
}

core_q8w *core__q8w_pack(uint32_t type, const void *W, int in, int out)
{
    if (!core__q8w_supports(type, in, out))
        return NULL;
    const core__traits *tr = core__traits_of(type);
    core_q8w *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->type = type;
    w->nib = type == CORE_TYPE_Q4_1 || type == CORE_TYPE_Q4_K;
    w->f32 = type == CORE_TYPE_Q4_K;
    w->q6 = type == CORE_TYPE_Q6_K;
    w->q5 = type == CORE_TYPE_Q5_K || type == CORE_TYPE_Q5_1;
    w->in = in;
    w->out = out;
    w->nb = in / QK;
    w->unit = (size_t)tr->unit8;
    w->bytes = (size_t)(out / GROUP) * (size_t)w->nb * w->unit;
    w->data = aligned_alloc(64, w->bytes);
    if (!w->data) {
        free(w);
        return NULL;
    }
    memset(w->data, 0, w->bytes);
    size_t src_block = core_type_block_bytes(type);
    int per = (int)core_type_block_elems(type) / QK; /* units per source block */
    const uint8_t *src = W;
    for (int o = 0; o < out; o++) {
        int grp = o / GROUP, j = o % GROUP;
        for (int b = 0; b < w->nb; b++)
            tr->repack8(src + ((size_t)o * (size_t)(w->nb / per) + (size_t)(b / per)) * src_block,
                        b % per, w->data + ((size_t)grp * (size_t)w->nb + (size_t)b) * w->unit, j);
    }
    return w;
}

void core__q8w_free(core_q8w *w)
{
    if (!w)
        return;
    free(w->data);
    free(w);
}

size_t core__q8w_bytes(const core_q8w *w)
{
    return w ? w->bytes + sizeof *w : 0;
}

size_t core__q8x_row_bytes(int in)
{
    size_t nb = (size_t)in / QK;
    size_t b = (size_t)in + nb * 12;
    return (b + 63) & ~(size_t)63;
}

/* The parts of a quantized row: in int8 values, then per block d (f32), s (f32) and Σq (int32),
 * at these byte offsets. */
static inline size_t xq_off_d(int in)
{
    return (size_t)in;
}

static inline size_t xq_off_s(int in)
{
    return (size_t)in + sizeof(float) * (size_t)(in / QK);
}

static inline size_t xq_off_sum(int in)
{
    return (size_t)in + 2 * sizeof(float) * (size_t)(in / QK);
}

static inline const float *xq_d(const uint8_t *row, int in)
{
    return (const float *)(row + xq_off_d(in));
}

static inline const float *xq_s(const uint8_t *row, int in)
{
    return (const float *)(row + xq_off_s(in));
}

static inline const int32_t *xq_sum(const uint8_t *row, int in)
{
    return (const int32_t *)(row + xq_off_sum(in));
}

/* The same parts, for writing. */
typedef struct xq_parts {
    int8_t *q;
    float *d, *s;
    int32_t *sum;
} xq_parts;

static inline xq_parts xq_write(uint8_t *row, int in)
{
    return (xq_parts){.q = (int8_t *)row,
                      .d = (float *)(row + xq_off_d(in)),
                      .s = (float *)(row + xq_off_s(in)),
                      .sum = (int32_t *)(row + xq_off_sum(in))};
}

/* ---- quantizing X ------------------------------------------------------------------------ */

/* One block: the same operations whatever the ISA (max is exact, x·id is one rounding, and
 * nearbyintf and VCVTPS2DQ both round to nearest even). */
static void quantize_block(const float *x, int8_t *q, float *d, float *s, int32_t *sum)
{
    float amax = 0.0f;
    for (int i = 0; i < QK; i++) {
        float a = fabsf(x[i]);
        amax = a > amax || a != a ? a : amax;
    }
    if (!isfinite(amax)) {
        memset(q, 0, QK);
        *d = *s = NAN;
        *sum = 0;
        return;
    }
    float dd = amax / 127.0f;
    float id = dd != 0.0f ? 1.0f / dd : 0.0f;
    int32_t t = 0;
    for (int i = 0; i < QK; i++) {
        int v = (int)nearbyintf(x[i] * id);
        v = v > 127 ? 127 : v < -127 ? -127 : v;
        q[i] = (int8_t)v;
        t += v;
    }
    *d = dd;
    *s = dd * (float)t;
    *sum = t;
}

#define VNNI __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")))
#define VNNI_INLINE                                                                                \
    __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c"),          \
                   always_inline)) static inline

VNNI static void quantize_row_vnni(const float *x, int in, uint8_t *row)
{
    int nb = in / QK;
    xq_parts o = xq_write(row, in);
    int8_t *q = o.q;
    float *d = o.d, *s = o.s;
    int32_t *sum = o.sum;
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    for (int b = 0; b < nb; b++) {
        const float *xb = x + (size_t)b * QK;
        __m512 v0 = _mm512_loadu_ps(xb), v1 = _mm512_loadu_ps(xb + 16);
        __m512 a = _mm512_max_ps(_mm512_and_ps(v0, absmask), _mm512_and_ps(v1, absmask));
        float amax = _mm512_reduce_max_ps(a);
        /* a NaN makes max_ps drop either side: take the scalar path, which also checks inf */
        __mmask16 bad =
            _mm512_cmp_ps_mask(v0, v0, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(v1, v1, _CMP_UNORD_Q);
        if (bad || !isfinite(amax)) {
            quantize_block(xb, q + (size_t)b * QK, d + b, s + b, sum + b);
            continue;
        }
        float dd = amax / 127.0f;
        float id = dd != 0.0f ? 1.0f / dd : 0.0f;
        __m512 vid = _mm512_set1_ps(id);
        __m512i i0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, vid));
        __m512i i1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, vid));
        const __m512i lim = _mm512_set1_epi32(127), nlim = _mm512_set1_epi32(-127);
        i0 = _mm512_max_epi32(_mm512_min_epi32(i0, lim), nlim);
        i1 = _mm512_max_epi32(_mm512_min_epi32(i1, lim), nlim);
        _mm_storeu_si128((__m128i *)(q + (size_t)b * QK), _mm512_cvtepi32_epi8(i0));
        _mm_storeu_si128((__m128i *)(q + (size_t)b * QK + 16), _mm512_cvtepi32_epi8(i1));
        int32_t t = _mm512_reduce_add_epi32(_mm512_add_epi32(i0, i1));
        d[b] = dd;
        s[b] = dd * (float)t;
        sum[b] = t;
    }
}

#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define AVX2_INLINE __attribute__((target("avx2,fma,f16c"), always_inline)) static inline

AVX2 static void quantize_row_avx2(const float *x, int in, uint8_t *row)
{
    int nb = in / QK;
    xq_parts o = xq_write(row, in);
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256i lim = _mm256_set1_epi32(127), nlim = _mm256_set1_epi32(-127);
    /* packs_epi32 then packs_epi16 interleave 4-value pieces of the four vectors by lane */
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int b = 0; b < nb; b++) {
        const float *xb = x + (size_t)b * QK;
        __m256 v[4];
        __m256 a = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
        for (int k = 0; k < 4; k++) {
            v[k] = _mm256_loadu_ps(xb + 8 * k);
            a = _mm256_max_ps(a, _mm256_and_ps(v[k], absmask));
            bad = _mm256_or_ps(bad, _mm256_cmp_ps(v[k], v[k], _CMP_UNORD_Q));
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        float amax = _mm_cvtss_f32(m4);
        if (_mm256_movemask_ps(bad) || !isfinite(amax)) {
            quantize_block(xb, o.q + (size_t)b * QK, o.d + b, o.s + b, o.sum + b);
            continue;
        }
        float dd = amax / 127.0f;
        float id = dd != 0.0f ? 1.0f / dd : 0.0f;
        __m256 vid = _mm256_set1_ps(id);
        __m256i i[4];
        for (int k = 0; k < 4; k++) {
            i[k] = _mm256_cvtps_epi32(_mm256_mul_ps(v[k], vid));
            i[k] = _mm256_max_epi32(_mm256_min_epi32(i[k], lim), nlim);
        }
        __m256i t = _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
        __m128i t4 = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
        t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0x4e));
        t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0xb1));
        int32_t tot = _mm_cvtsi128_si32(t4);
        __m256i p =
            _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]), _mm256_packs_epi32(i[2], i[3]));
        _mm256_storeu_si256((__m256i *)(o.q + (size_t)b * QK),
                            _mm256_permutevar8x32_epi32(p, perm));
        o.d[b] = dd;
        o.s[b] = dd * (float)tot;
        o.sum[b] = tot;
    }
}

/* The family of the level (core/kernels/cpu_internal.h): VNNI, AVX2 (also on AVX-512 CPUs
 * without VNNI), portable only when forced, none below AVX2. */
int core__q8_level(void)
{
    static const int of[] = {[CORE_CPU_NONE] = CORE_Q8_NONE,
                             [CORE_CPU_PORTABLE] = CORE_Q8_PORTABLE,
                             [CORE_CPU_AVX2] = CORE_Q8_AVX2,
                             [CORE_CPU_AVX512] = CORE_Q8_AVX2,
                             [CORE_CPU_VNNI] = CORE_Q8_VNNI};
    return of[core__cpu_level()];
}

int core__q8_available(void)
{
    return core__q8_level() != CORE_Q8_NONE;
}

const char *core__q8_kernels(void)
{
    switch (core__q8_level()) {
    case CORE_Q8_VNNI:
        return "AVX-512 VNNI";
    case CORE_Q8_AVX2:
        return "AVX2";
    case CORE_Q8_PORTABLE:
        return "portable";
    default:
        return "none";
    }
}

void core__q8x_quantize(const float *X, int in, int n, uint8_t *dst)
{
    size_t rb = core__q8x_row_bytes(in);
    int nb = in / QK;
    int level = core__q8_level();
    for (int i = 0; i < n; i++) {
        const float *x = X + (size_t)i * (size_t)in;
        uint8_t *row = dst + (size_t)i * rb;
        if (level == CORE_Q8_VNNI) {
            quantize_row_vnni(x, in, row);
            continue;
        }
        if (level == CORE_Q8_AVX2) {
            quantize_row_avx2(x, in, row);
            continue;
        }
        xq_parts o = xq_write(row, in);
        for (int b = 0; b < nb; b++)
            quantize_block(x + (size_t)b * QK, o.q + (size_t)b * QK, o.d + b, o.s + b, o.sum + b);
    }
}

/* ---- portable kernels (tests): the VNNI kernels' arithmetic, one output at a time ---------- */

static void part_portable(const core_q8w *w, const uint8_t *Xq, int n, int g0, int g1, float *Y,
                          int ldy)
{
    size_t rb = core__q8x_row_bytes(w->in);
    for (int grp = g0; grp < g1; grp++)
        for (int i = 0; i < n; i++) {
            const uint8_t *row = Xq + (size_t)i * rb;
            const int8_t *xq = (const int8_t *)row;
            const float *dx = xq_d(row, w->in), *sx = xq_s(row, w->in);
            const int32_t *sumx = xq_sum(row, w->in);
            for (int j = 0; j < GROUP; j++) {
                float acc = 0.0f;
                for (int b = 0; b < w->nb; b++) {
                    const uint8_t *u =
                        w->data + ((size_t)grp * (size_t)w->nb + (size_t)b) * w->unit;
                    const int8_t *xb = xq + (size_t)b * QK;
                    int32_t isum = 0;
                    uint16_t h;
                    if (w->q5) {
                        for (int g = 0; g < 8; g++)
                            for (int t = 0; t < 4; t++)
                                isum += u[64 * g + 4 * j + t] * xb[4 * g + t];
                        float dw, mw;
                        memcpy(&dw, u + 512 + 4 * j, 4);
                        memcpy(&mw, u + 576 + 4 * j, 4);
                        acc = fmaf((float)isum, dw * dx[b], acc);
                        acc = fmaf(mw, sx[b], acc);
                    } else if (w->q6) {
                        for (int hh = 0; hh < 2; hh++) {
                            int32_t corr;
                            float dw;
                            memcpy(&corr, u + 640 + 64 * hh + 4 * j, 4);
                            memcpy(&dw, u + 512 + 64 * hh + 4 * j, 4);
                            isum = corr;
                            for (int g = 4 * hh; g < 4 * hh + 4; g++)
                                for (int t = 0; t < 4; t++)
                                    isum += (int8_t)u[64 * g + 4 * j + t] * (xb[4 * g + t] + 128);
                            acc = fmaf((float)isum, dw * dx[b], acc);
                        }
                    } else if (w->nib) {
                        for (int g = 0; g < 4; g++)
                            for (int t = 0; t < 4; t++) {
                                uint8_t byte = u[64 * g + 4 * j + t];
                                isum +=
                                    (byte & 15) * xb[4 * g + t] + (byte >> 4) * xb[16 + 4 * g + t];
                            }
                        float dw, mw;
                        if (w->f32) {
                            memcpy(&dw, u + 256 + 4 * j, 4);
                            memcpy(&mw, u + 320 + 4 * j, 4);
                        } else {
                            memcpy(&h, u + 256 + 2 * j, 2);
                            dw = core_fp16_to_fp32(h);
                            memcpy(&h, u + 288 + 2 * j, 2);
                            mw = core_fp16_to_fp32(h);
                        }
                        acc = fmaf((float)isum, dw * dx[b], acc);
                        acc = fmaf(mw, sx[b], acc);
                    } else {
                        isum = -128 * sumx[b];
                        for (int g = 0; g < 8; g++)
                            for (int t = 0; t < 4; t++)
                                isum += u[64 * g + 4 * j + t] * xb[4 * g + t];
                        memcpy(&h, u + 512 + 2 * j, 2);
                        float tt = core_fp16_to_fp32(h) * dx[b];
                        acc = fmaf((float)isum, tt, acc);
                    }
                }
                Y[(size_t)i * (size_t)ldy + (size_t)grp * GROUP + (size_t)j] = acc;
            }
        }
}

/* ---- AVX-512 VNNI ------------------------------------------------------------------------- */

#if defined(__clang__)
#define UNROLL _Pragma("clang loop unroll(full)")
#else
#define UNROLL _Pragma("GCC unroll 16")
#endif

VNNI_INLINE __m512i bcast4(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

/* One group (16 outputs) against R rows of X; F32: Q4_K's units (f32 scales and mins). */
VNNI_INLINE void tile_q4_1(const uint8_t *wg, int nb, int in, const uint8_t *const *xr, int R,
                           float *const *yr, const bool F32)
{
    __m512 acc[XR];
    UNROLL
    for (int r = 0; r < R; r++)
        acc[r] = _mm512_setzero_ps();
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    for (int b = 0; b < nb; b++) {
        const uint8_t *u = wg + (size_t)b * (F32 ? UNIT_Q4_K : UNIT_Q4_1);
        __m512i ai[XR];
        UNROLL
        for (int r = 0; r < R; r++)
            ai[r] = _mm512_setzero_si512();
        UNROLL
        for (int g = 0; g < 4; g++) {
            __m512i nib = _mm512_load_si512((const void *)(u + 64 * g));
            __m512i lo = _mm512_and_si512(nib, m4);
            __m512i hi = _mm512_and_si512(_mm512_srli_epi16(nib, 4), m4);
            UNROLL
            for (int r = 0; r < R; r++) {
                const int8_t *xb = (const int8_t *)xr[r] + (size_t)b * QK;
                ai[r] = _mm512_dpbusd_epi32(ai[r], lo, bcast4(xb + 4 * g));
                ai[r] = _mm512_dpbusd_epi32(ai[r], hi, bcast4(xb + 16 + 4 * g));
            }
        }
        __m512 dw = F32 ? _mm512_load_ps(u + 256)
                        : _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(u + 256)));
        __m512 mw = F32 ? _mm512_load_ps(u + 320)
                        : _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(u + 288)));
        UNROLL
        for (int r = 0; r < R; r++) {
            __m512 t = _mm512_mul_ps(dw, _mm512_set1_ps(xq_d(xr[r], in)[b]));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ai[r]), t, acc[r]);
            acc[r] = _mm512_fmadd_ps(mw, _mm512_set1_ps(xq_s(xr[r], in)[b]), acc[r]);
        }
    }
    UNROLL
    for (int r = 0; r < R; r++)
        _mm512_storeu_ps(yr[r], acc[r]);
}

VNNI_INLINE void tile_q8_0(const uint8_t *wg, int nb, int in, const uint8_t *const *xr, int R,
                           float *const *yr)
{
    __m512 acc[XR];
    UNROLL
    for (int r = 0; r < R; r++)
        acc[r] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *u = wg + (size_t)b * UNIT_Q8_0;
        __m512i ai[XR];
        UNROLL
        for (int r = 0; r < R; r++)
            ai[r] = _mm512_set1_epi32(-128 * xq_sum(xr[r], in)[b]);
        UNROLL
        for (int g = 0; g < 8; g++) {
            __m512i wv = _mm512_load_si512((const void *)(u + 64 * g));
            UNROLL
            for (int r = 0; r < R; r++)
                ai[r] = _mm512_dpbusd_epi32(ai[r], wv,
                                            bcast4((const int8_t *)xr[r] + (size_t)b * QK + 4 * g));
        }
        __m512 dw = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(u + 512)));
        UNROLL
        for (int r = 0; r < R; r++) {
            __m512 t = _mm512_mul_ps(dw, _mm512_set1_ps(xq_d(xr[r], in)[b]));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ai[r]), t, acc[r]);
        }
    }
    UNROLL
    for (int r = 0; r < R; r++)
        _mm512_storeu_ps(yr[r], acc[r]);
}

/* Q5_K: the unsigned q against x, then Q4_1's two steps with f32 scale and min. */
VNNI_INLINE void tile_q5_k(const uint8_t *wg, int nb, int in, const uint8_t *const *xr, int R,
                           float *const *yr)
{
    __m512 acc[XR];
    UNROLL
    for (int r = 0; r < R; r++)
        acc[r] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *u = wg + (size_t)b * UNIT_Q5_K;
        __m512i ai[XR];
        UNROLL
        for (int r = 0; r < R; r++)
            ai[r] = _mm512_setzero_si512();
        UNROLL
        for (int g = 0; g < 8; g++) {
            __m512i wv = _mm512_load_si512((const void *)(u + 64 * g));
            UNROLL
            for (int r = 0; r < R; r++)
                ai[r] = _mm512_dpbusd_epi32(ai[r], wv,
                                            bcast4((const int8_t *)xr[r] + (size_t)b * QK + 4 * g));
        }
        __m512 dw = _mm512_load_ps(u + 512), mw = _mm512_load_ps(u + 576);
        UNROLL
        for (int r = 0; r < R; r++) {
            __m512 t = _mm512_mul_ps(dw, _mm512_set1_ps(xq_d(xr[r], in)[b]));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ai[r]), t, acc[r]);
            acc[r] = _mm512_fmadd_ps(mw, _mm512_set1_ps(xq_s(xr[r], in)[b]), acc[r]);
        }
    }
    UNROLL
    for (int r = 0; r < R; r++)
        _mm512_storeu_ps(yr[r], acc[r]);
}

/* Q6_K: each half's sum starts at its stored -128 · Σ(q - 32), then x + 128 against q - 32. */
VNNI_INLINE void tile_q6_k(const uint8_t *wg, int nb, int in, const uint8_t *const *xr, int R,
                           float *const *yr)
{
    __m512 acc[XR];
    UNROLL
    for (int r = 0; r < R; r++)
        acc[r] = _mm512_setzero_ps();
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    for (int b = 0; b < nb; b++) {
        const uint8_t *u = wg + (size_t)b * UNIT_Q6_K;
        UNROLL
        for (int h = 0; h < 2; h++) {
            __m512i ai[XR];
            UNROLL
            for (int r = 0; r < R; r++)
                ai[r] = _mm512_load_si512((const void *)(u + 640 + 64 * h));
            UNROLL
            for (int g = 4 * h; g < 4 * h + 4; g++) {
                __m512i wv = _mm512_load_si512((const void *)(u + 64 * g));
                UNROLL
                for (int r = 0; r < R; r++) {
                    __m512i xv = _mm512_xor_si512(
                        bcast4((const int8_t *)xr[r] + (size_t)b * QK + 4 * g), flip);
                    ai[r] = _mm512_dpbusd_epi32(ai[r], xv, wv);
                }
            }
            __m512 dw = _mm512_load_ps(u + 512 + 64 * h);
            UNROLL
            for (int r = 0; r < R; r++) {
                __m512 t = _mm512_mul_ps(dw, _mm512_set1_ps(xq_d(xr[r], in)[b]));
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ai[r]), t, acc[r]);
            }
        }
    }
    UNROLL
    for (int r = 0; r < R; r++)
        _mm512_storeu_ps(yr[r], acc[r]);
}

#define TILE_FN(R)                                                                                 \
    VNNI static void tile_##R(const core_q8w *w, const uint8_t *wg, const uint8_t *const *xr,      \
                              float *const *yr)                                                    \
    {                                                                                              \
        if (w->q5)                                                                                 \
            tile_q5_k(wg, w->nb, w->in, xr, R, yr);                                                \
        else if (w->q6)                                                                            \
            tile_q6_k(wg, w->nb, w->in, xr, R, yr);                                                \
        else if (w->f32)                                                                           \
            tile_q4_1(wg, w->nb, w->in, xr, R, yr, true);                                          \
        else if (w->nib)                                                                           \
            tile_q4_1(wg, w->nb, w->in, xr, R, yr, false);                                         \
        else                                                                                       \
            tile_q8_0(wg, w->nb, w->in, xr, R, yr);                                                \
    }
TILE_FN(1)
TILE_FN(2)
TILE_FN(3)
TILE_FN(4)
TILE_FN(5)
TILE_FN(6)
TILE_FN(7)
TILE_FN(8)

typedef void (*tile_fn)(const core_q8w *, const uint8_t *, const uint8_t *const *, float *const *);
static const tile_fn tiles[XR + 1] = {NULL,   tile_1, tile_2, tile_3, tile_4,
                                      tile_5, tile_6, tile_7, tile_8};

/* Groups g0..g1-1 of W against all n rows of Xq, xr rows at a time through tiles[1..xr]. */
static void part_tiled(const core_q8w *w, const uint8_t *Xq, int n, int g0, int g1, float *Y,
                       int ldy, int xr, const tile_fn *tl)
{
    size_t rb = core__q8x_row_bytes(w->in);
    for (int grp = g0; grp < g1; grp++) {
        const uint8_t *wg = w->data + (size_t)grp * (size_t)w->nb * w->unit;
        for (int i0 = 0; i0 < n; i0 += xr) {
            int R = n - i0 < xr ? n - i0 : xr;
            const uint8_t *xrow[XR];
            float *yr[XR];
            for (int r = 0; r < R; r++) {
                xrow[r] = Xq + (size_t)(i0 + r) * rb;
                yr[r] = Y + (size_t)(i0 + r) * (size_t)ldy + (size_t)grp * GROUP;
            }
            tl[R](w, wg, xrow, yr);
        }
    }
}

/* ---- AVX2 ------------------------------------------------------------------------------- */

/* The same repacked weights, each 64-byte vector taken as two halves of 8 rows. There is no
 * 4-byte dot product into int32 before VNNI: VPMADDUBSW multiplies unsigned by signed bytes and
 * adds pairs into int16, VPMADDWD by ones adds pairs of those into int32. Both are exact here:
 *   Q4_1: a pair is at most 2·15·127 = 3810, so the 8 pairs of a block (4 vectors, low and high
 *         nibbles) sum to at most 30480 in int16 before one VPMADDWD;
 *   Q8_0: the stored q + 128 would overflow a pair, so the signed q (stored ^ 0x80) lends its sign
 *         to x: |q|·(±x), a pair at most 2·128·127 = 32512, into int32 at once.
 * The integer sums equal the portable ones, and the f32 steps are the same: the same bits. */

#define XR2 4 /* rows of X per pass (registers: 4 accumulators, 4 sums, weights) */

/* Keeps v in a register as it is: integer adds may be reordered, and GCC, left to it, gathers
 * all of a block's products first and spills them to the stack. */
#define PIN(v) __asm__("" : "+x"(v))

AVX2_INLINE __m256i bcast4_256(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

/* Half h (outputs 8h..8h+7) of one group against R rows of X. */
AVX2_INLINE void tile2_q4_1(const uint8_t *wg, int nb, int in, const uint8_t *const *xr, int R,
                            float *const *yr, int h, const bool F32)
{
    __m256 acc[XR2];
    UNROLL
    for (int r = 0; r < R; r++)
        acc[r] = _mm256_setzero_ps();
    const __m256i m4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    for (int b = 0; b < nb; b++) {
        const uint8_t *u = wg + (size_t)b * (F32 ? UNIT_Q4_K : UNIT_Q4_1);
        __m256i s16[XR2];
        UNROLL
        for (int r = 0; r < R; r++)
            s16[r] = _mm256_setzero_si256();
        UNROLL
        for (int g = 0; g < 4; g++) {
            __m256i nib = _mm256_load_si256((const __m256i *)(u + 64 * g + 32 * h));
            __m256i lo = _mm256_and_si256(nib, m4);
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(nib, 4), m4);
            UNROLL
            for (int r = 0; r < R; r++) {
                const int8_t *xb = (const int8_t *)xr[r] + (size_t)b * QK;
                s16[r] = _mm256_add_epi16(s16[r], _mm256_maddubs_epi16(lo, bcast4_256(xb + 4 * g)));
                PIN(s16[r]);
                s16[r] =
                    _mm256_add_epi16(s16[r], _mm256_maddubs_epi16(hi, bcast4_256(xb + 16 + 4 * g)));
                PIN(s16[r]);
            }
        }
        __m256 dw = F32 ? _mm256_load_ps((const float *)(u + 256) + 8 * h)
                        : _mm256_cvtph_ps(_mm_load_si128((const __m128i *)(u + 256 + 16 * h)));
        __m256 mw = F32 ? _mm256_load_ps((const float *)(u + 320) + 8 * h)
                        : _mm256_cvtph_ps(_mm_load_si128((const __m128i *)(u + 288 + 16 * h)));
        UNROLL
        for (int r = 0; r < R; r++) {
            __m256i isum = _mm256_madd_epi16(s16[r], ones);
            __m256 t = _mm256_mul_ps(dw, _mm256_set1_ps(xq_d(xr[r], in)[b]));
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), t, acc[r]);
            acc[r] = _mm256_fmadd_ps(mw, _mm256_set1_ps(xq_s(xr[r], in)[b]), acc[r]);
        }
    }
    UNROLL
    for (int r = 0; r < R; r++)
        _mm256_storeu_ps(yr[r] + 8 * h, acc[r]);
}

AVX2_INLINE void tile2_q8_0(const uint8_t *wg, int nb, int in, const uint8_t *const *xr, int R,
                            float *const *yr, int h)
{
    __m256 acc[XR2];
    UNROLL
    for (int r = 0; r < R; r++)
        acc[r] = _mm256_setzero_ps();
    const __m256i flip = _mm256_set1_epi8((char)0x80), ones = _mm256_set1_epi16(1);
    for (int b = 0; b < nb; b++) {
        const uint8_t *u = wg + (size_t)b * UNIT_Q8_0;
        __m256i s32[XR2];
        UNROLL
        for (int r = 0; r < R; r++)
            s32[r] = _mm256_setzero_si256();
        UNROLL
        for (int g = 0; g < 8; g++) {
            __m256i q =
                _mm256_xor_si256(_mm256_load_si256((const __m256i *)(u + 64 * g + 32 * h)), flip);
            __m256i aq = _mm256_abs_epi8(q);
            UNROLL
            for (int r = 0; r < R; r++) {
                __m256i sx =
                    _mm256_sign_epi8(bcast4_256((const int8_t *)xr[r] + (size_t)b * QK + 4 * g), q);
                s32[r] =
                    _mm256_add_epi32(s32[r], _mm256_madd_epi16(_mm256_maddubs_epi16(aq, sx), ones));
                PIN(s32[r]);
            }
        }
        __m256 dw = _mm256_cvtph_ps(_mm_load_si128((const __m128i *)(u + 512 + 16 * h)));
        UNROLL
        for (int r = 0; r < R; r++) {
            __m256 t = _mm256_mul_ps(dw, _mm256_set1_ps(xq_d(xr[r], in)[b]));
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32[r]), t, acc[r]);
        }
    }
    UNROLL
    for (int r = 0; r < R; r++)
        _mm256_storeu_ps(yr[r] + 8 * h, acc[r]);
}

/* Q5_K: q (at most 31) against x in VPMADDUBSW, a pair at most 2·31·128 = 7936, into int32 by
 * VPMADDWD per vector (eight pairs could overflow int16). */
AVX2_INLINE void tile2_q5_k(const uint8_t *wg, int nb, int in, const uint8_t *const *xr, int R,
                            float *const *yr, int h)
{
    __m256 acc[XR2];
    UNROLL
    for (int r = 0; r < R; r++)
        acc[r] = _mm256_setzero_ps();
    const __m256i ones = _mm256_set1_epi16(1);
    for (int b = 0; b < nb; b++) {
        const uint8_t *u = wg + (size_t)b * UNIT_Q5_K;
        __m256i s32[XR2];
        UNROLL
        for (int r = 0; r < R; r++)
            s32[r] = _mm256_setzero_si256();
        UNROLL
        for (int g = 0; g < 8; g++) {
            __m256i wv = _mm256_load_si256((const __m256i *)(u + 64 * g + 32 * h));
            UNROLL
            for (int r = 0; r < R; r++) {
                __m256i xv = bcast4_256((const int8_t *)xr[r] + (size_t)b * QK + 4 * g);
                s32[r] =
                    _mm256_add_epi32(s32[r], _mm256_madd_epi16(_mm256_maddubs_epi16(wv, xv), ones));
                PIN(s32[r]);
            }
        }
        __m256 dw = _mm256_load_ps((const float *)(u + 512) + 8 * h);
        __m256 mw = _mm256_load_ps((const float *)(u + 576) + 8 * h);
        UNROLL
        for (int r = 0; r < R; r++) {
            __m256 t = _mm256_mul_ps(dw, _mm256_set1_ps(xq_d(xr[r], in)[b]));
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32[r]), t, acc[r]);
            acc[r] = _mm256_fmadd_ps(mw, _mm256_set1_ps(xq_s(xr[r], in)[b]), acc[r]);
        }
    }
    UNROLL
    for (int r = 0; r < R; r++)
        _mm256_storeu_ps(yr[r] + 8 * h, acc[r]);
}

/* Q6_K: x + 128 (unsigned) against q - 32 (signed) in VPMADDUBSW, a pair at most 2·255·32 =
 * 16320, then VPMADDWD into int32 from the stored -128 · Σ(q - 32). */
AVX2_INLINE void tile2_q6_k(const uint8_t *wg, int nb, int in, const uint8_t *const *xr, int R,
                            float *const *yr, int h)
{
    __m256 acc[XR2];
    UNROLL
    for (int r = 0; r < R; r++)
        acc[r] = _mm256_setzero_ps();
    const __m256i flip = _mm256_set1_epi8((char)0x80), ones = _mm256_set1_epi16(1);
    for (int b = 0; b < nb; b++) {
        const uint8_t *u = wg + (size_t)b * UNIT_Q6_K;
        UNROLL
        for (int hf = 0; hf < 2; hf++) {
            __m256i s32[XR2];
            UNROLL
            for (int r = 0; r < R; r++)
                s32[r] = _mm256_load_si256((const __m256i *)(u + 640 + 64 * hf + 32 * h));
            UNROLL
            for (int g = 4 * hf; g < 4 * hf + 4; g++) {
                __m256i wv = _mm256_load_si256((const __m256i *)(u + 64 * g + 32 * h));
                UNROLL
                for (int r = 0; r < R; r++) {
                    __m256i xv = _mm256_xor_si256(
                        bcast4_256((const int8_t *)xr[r] + (size_t)b * QK + 4 * g), flip);
                    s32[r] = _mm256_add_epi32(
                        s32[r], _mm256_madd_epi16(_mm256_maddubs_epi16(xv, wv), ones));
                    PIN(s32[r]);
                }
            }
            __m256 dw = _mm256_load_ps((const float *)(u + 512 + 64 * hf) + 8 * h);
            UNROLL
            for (int r = 0; r < R; r++) {
                __m256 t = _mm256_mul_ps(dw, _mm256_set1_ps(xq_d(xr[r], in)[b]));
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32[r]), t, acc[r]);
            }
        }
    }
    UNROLL
    for (int r = 0; r < R; r++)
        _mm256_storeu_ps(yr[r] + 8 * h, acc[r]);
}

#define TILE2_FN(R)                                                                                \
    AVX2 static void tile2_##R(const core_q8w *w, const uint8_t *wg, const uint8_t *const *xr,     \
                               float *const *yr)                                                   \
    {                                                                                              \
        for (int h = 0; h < 2; h++) {                                                              \
            if (w->q5)                                                                             \
                tile2_q5_k(wg, w->nb, w->in, xr, R, yr, h);                                        \
            else if (w->q6)                                                                        \
                tile2_q6_k(wg, w->nb, w->in, xr, R, yr, h);                                        \
            else if (w->f32)                                                                       \
                tile2_q4_1(wg, w->nb, w->in, xr, R, yr, h, true);                                  \
            else if (w->nib)                                                                       \
                tile2_q4_1(wg, w->nb, w->in, xr, R, yr, h, false);                                 \
            else                                                                                   \
                tile2_q8_0(wg, w->nb, w->in, xr, R, yr, h);                                        \
        }                                                                                          \
    }
TILE2_FN(1)
TILE2_FN(2)
TILE2_FN(3)
TILE2_FN(4)

static const tile_fn tiles2[XR2 + 1] = {NULL, tile2_1, tile2_2, tile2_3, tile2_4};

int core__q8_matmul_part(const core_q8w *w, const uint8_t *Xq, int n, int o_begin, int o_end,
                         float *Y, int ldy)
{
    if (!w || n < 0 || o_begin < 0 || o_end > w->out || o_begin > o_end || o_begin % GROUP ||
        o_end % GROUP || ldy < w->out)
        return -EINVAL;
    switch (core__q8_level()) {
    case CORE_Q8_VNNI:
        part_tiled(w, Xq, n, o_begin / GROUP, o_end / GROUP, Y, ldy, XR, tiles);
        break;
    case CORE_Q8_AVX2:
        part_tiled(w, Xq, n, o_begin / GROUP, o_end / GROUP, Y, ldy, XR2, tiles2);
        break;
    default:
        part_portable(w, Xq, n, o_begin / GROUP, o_end / GROUP, Y, ldy);
    }
    return 0;
}
