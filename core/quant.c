/* ggml tensor types: the block geometry table, fp16/bf16 conversions, and scalar dequantization
 * of the block formats in FORMATS.md §3 (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K,
 * Q6_K). The other K-quants and Q8_1 are sized only, so that a GGUF holding them still opens.
 *
 * Every product is computed in float in the same order as ggml's reference code (and the gguf
 * Python package), so with -ffp-contract=off the results are bit-identical to both.
 */
#include "core/quant.h"

#include <errno.h>
#include <string.h>

#define QK 32    /* elements per block of the legacy quants */
#define QK_K 256 /* elements per K-quant super-block */

typedef struct type_info {
    const char *name;
    uint32_t block_elems;
    uint32_t block_bytes;
    int can_dequant;
} type_info;

/* Indexed by ggml type id; ids without an entry are unknown (removed or not supported). */
static const type_info types[CORE_TYPE_COUNT] = {
    [CORE_TYPE_F32] = {"f32", 1, 4, 1},
    [CORE_TYPE_F16] = {"f16", 1, 2, 1},
    [CORE_TYPE_Q4_0] = {"q4_0", QK, 2 + QK / 2, 1},
    [CORE_TYPE_Q4_1] = {"q4_1", QK, 2 + 2 + QK / 2, 1},
    [CORE_TYPE_Q5_0] = {"q5_0", QK, 2 + 4 + QK / 2, 1},
    [CORE_TYPE_Q5_1] = {"q5_1", QK, 2 + 2 + 4 + QK / 2, 1},
    [CORE_TYPE_Q8_0] = {"q8_0", QK, 2 + QK, 1},
    [CORE_TYPE_Q8_1] = {"q8_1", QK, 2 + 2 + QK, 0},
    /* scales[16], qs[64], d, dmin */
    [CORE_TYPE_Q2_K] = {"q2_k", QK_K, QK_K / 16 + QK_K / 4 + 2 + 2, 0},
    /* hmask[32], qs[64], scales[12], d */
    [CORE_TYPE_Q3_K] = {"q3_k", QK_K, QK_K / 8 + QK_K / 4 + 12 + 2, 0},
    /* d, dmin, scales[12], qs[128] */
    [CORE_TYPE_Q4_K] = {"q4_k", QK_K, 2 + 2 + 12 + QK_K / 2, 1},
    /* d, dmin, scales[12], qh[32], qs[128] */
    [CORE_TYPE_Q5_K] = {"q5_k", QK_K, 2 + 2 + 12 + QK_K / 8 + QK_K / 2, 0},
    /* ql[128], qh[64], scales[16], d */
    [CORE_TYPE_Q6_K] = {"q6_k", QK_K, QK_K / 2 + QK_K / 4 + QK_K / 16 + 2, 1},
    /* d (f32), qs[256], bsums[16] (int16) */
    [CORE_TYPE_Q8_K] = {"q8_k", QK_K, 4 + QK_K + QK_K / 16 * 2, 0},
    [24] = {"i8", 1, 1, 0},
    [25] = {"i16", 1, 2, 0},
    [26] = {"i32", 1, 4, 0},
    [27] = {"i64", 1, 8, 0},
    [28] = {"f64", 1, 8, 0},
    [CORE_TYPE_BF16] = {"bf16", 1, 2, 1},
};

static const type_info *info(uint32_t type)
{
    if (type >= CORE_TYPE_COUNT || types[type].name == NULL)
        return NULL;
    return &types[type];
}

size_t core_type_block_elems(uint32_t type)
{
    const type_info *t = info(type);
    return t ? t->block_elems : 0;
}

size_t core_type_block_bytes(uint32_t type)
{
    const type_info *t = info(type);
    return t ? t->block_bytes : 0;
}

const char *core_type_name(uint32_t type)
{
    const type_info *t = info(type);
    return t ? t->name : "unknown";
}

int core_type_can_dequant(uint32_t type)
{
    const type_info *t = info(type);
    return t ? t->can_dequant : 0;
}

uint64_t core_type_row_bytes(uint32_t type, uint64_t n)
{
    const type_info *t = info(type);
    if (!t || n % t->block_elems != 0)
        return 0;
    uint64_t blocks = n / t->block_elems;
    if (blocks > UINT64_MAX / t->block_bytes)
        return 0;
    return blocks * t->block_bytes;
}

/* --- fp16 / bf16 ---------------------------------------------------------------------------- */

static float bits_to_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t f32_to_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

float core_fp16_to_fp32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    if (exp == 0x1f) /* inf, or NaN with its payload kept */
        return bits_to_f32(sign | 0x7f800000u | (mant << 13));
    if (exp != 0)
        return bits_to_f32(sign | ((exp + 127 - 15) << 23) | (mant << 13));
    if (mant == 0)
        return bits_to_f32(sign);
    /* Subnormal: shift the mantissa up until its leading one becomes the implicit bit. */
    uint32_t e = 127 - 15 + 1;
    while (!(mant & 0x400)) {
        mant <<= 1;
        e--;
    }
    return bits_to_f32(sign | (e << 23) | ((mant & 0x3ff) << 13));
}

/* Rounds mant >> shift to nearest, ties to even. */
static uint32_t shift_rne(uint32_t mant, unsigned shift)
{
    uint32_t q = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1)))
        q++;
    return q;
}

uint16_t core_fp32_to_fp16(float f)
{
    uint32_t x = f32_to_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) /* NaN: keep the top payload bits, force quiet */
        return (uint16_t)(sign | 0x7e00 | ((ax >> 13) & 0x3ff));
    if (ax >= 0x477ff000u) /* >= 65520 rounds to infinity (65504 is the largest half) */
        return (uint16_t)(sign | 0x7c00);
    if (ax >= 0x38800000u) { /* normal half: rebias the exponent, round 13 mantissa bits */
        uint32_t v = ((ax >> 23) - 112) << 10 | ((ax & 0x7fffff) >> 13);
        uint32_t rem = ax & 0x1fff;
        if (rem > 0x1000 || (rem == 0x1000 && (v & 1)))
            v++; /* a carry into the exponent is still the right encoding */
        return (uint16_t)(sign | v);
    }
    if (ax <= 0x33000000u) /* <= 2^-25: half of the smallest subnormal, ties to 0 */
        return sign;
    /* Subnormal half: value in units of 2^-24 is mant * 2^(e - 126). */
    uint32_t e = ax >> 23;
    uint32_t mant = (ax & 0x7fffff) | 0x800000;
    return (uint16_t)(sign | shift_rne(mant, 126 - e));
}

float core_bf16_to_fp32(uint16_t h)
{
    return bits_to_f32((uint32_t)h << 16);
}

uint16_t core_fp32_to_bf16(float f)
{
    uint32_t x = f32_to_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) /* NaN: truncate and force quiet */
        return (uint16_t)((x >> 16) | 0x40);
    return (uint16_t)((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}

/* --- dequantization ------------------------------------------------------------------------- */

static float load_f16(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, sizeof h);
    return core_fp16_to_fp32(h);
}

/* Q4_0: d, qs[16]; low nibbles are elements 0..15, high nibbles 16..31. */
static void dequant_q4_0(const uint8_t *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, b += 18, y += QK) {
        float d = load_f16(b);
        const uint8_t *qs = b + 2;
        for (int j = 0; j < QK / 2; j++) {
            y[j] = (float)((qs[j] & 0x0f) - 8) * d;
            y[j + QK / 2] = (float)((qs[j] >> 4) - 8) * d;
        }
    }
}

/* Q4_1: d, m, qs[16]. */
static void dequant_q4_1(const uint8_t *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, b += 20, y += QK) {
        float d = load_f16(b);
        float m = load_f16(b + 2);
        const uint8_t *qs = b + 4;
        for (int j = 0; j < QK / 2; j++) {
            y[j] = (float)(qs[j] & 0x0f) * d + m;
            y[j + QK / 2] = (float)(qs[j] >> 4) * d + m;
        }
    }
}

/* Q5_0: d, qh (uint32 LE: bit j is the fifth bit of element j), qs[16]. */
static void dequant_q5_0(const uint8_t *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, b += 22, y += QK) {
        float d = load_f16(b);
        uint32_t qh;
        memcpy(&qh, b + 2, sizeof qh);
        const uint8_t *qs = b + 6;
        for (int j = 0; j < QK / 2; j++) {
            int hi0 = (int)((qh >> j) & 1) << 4;
            int hi1 = (int)((qh >> (j + 16)) & 1) << 4;
            y[j] = (float)(((qs[j] & 0x0f) | hi0) - 16) * d;
            y[j + QK / 2] = (float)(((qs[j] >> 4) | hi1) - 16) * d;
        }
    }
}

/* Q5_1: d, m, qh, qs[16]. */
static void dequant_q5_1(const uint8_t *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, b += 24, y += QK) {
        float d = load_f16(b);
        float m = load_f16(b + 2);
        uint32_t qh;
        memcpy(&qh, b + 4, sizeof qh);
        const uint8_t *qs = b + 8;
        for (int j = 0; j < QK / 2; j++) {
            int hi0 = (int)((qh >> j) & 1) << 4;
            int hi1 = (int)((qh >> (j + 16)) & 1) << 4;
            y[j] = (float)((qs[j] & 0x0f) | hi0) * d + m;
            y[j + QK / 2] = (float)((qs[j] >> 4) | hi1) * d + m;
        }
    }
}

/* Q8_0: d, qs[32] int8. */
static void dequant_q8_0(const uint8_t *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, b += 34, y += QK) {
        float d = load_f16(b);
        const int8_t *qs = (const int8_t *)(b + 2);
        for (int j = 0; j < QK; j++)
            y[j] = (float)qs[j] * d;
    }
}

/* The 6-bit scale and min of Q4_K sub-block j, packed in scales[12]. */
static void q4k_scale_min(int j, const uint8_t *s, uint8_t *sc, uint8_t *mn)
{
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (uint8_t)((s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4));
        *mn = (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

/* Q4_K: d, dmin, scales[12], qs[128]; each 32 bytes of qs give 64 outputs (low nibbles for
 * sub-block 2c, high nibbles for 2c+1). */
static void dequant_q4_k(const uint8_t *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, b += 144) {
        float d = load_f16(b);
        float dmin = load_f16(b + 2);
        const uint8_t *scales = b + 4;
        const uint8_t *qs = b + 16;
        for (int c = 0; c < 4; c++, qs += 32) {
            uint8_t sc, mn;
            q4k_scale_min(2 * c, scales, &sc, &mn);
            float d1 = d * (float)sc, m1 = dmin * (float)mn;
            q4k_scale_min(2 * c + 1, scales, &sc, &mn);
            float d2 = d * (float)sc, m2 = dmin * (float)mn;
            for (int l = 0; l < 32; l++)
                *y++ = d1 * (float)(qs[l] & 0x0f) - m1;
            for (int l = 0; l < 32; l++)
                *y++ = d2 * (float)(qs[l] >> 4) - m2;
        }
    }
}

/* Q6_K: ql[128], qh[64], scales[16] int8, d last. Two halves of 128 outputs. */
static void dequant_q6_k(const uint8_t *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, b += 210) {
        float d = load_f16(b + 208);
        const uint8_t *ql = b;
        const uint8_t *qh = b + 128;
        const int8_t *sc = (const int8_t *)(b + 192);
        for (int n = 0; n < 2; n++, ql += 64, qh += 32, sc += 8, y += 128) {
            for (int l = 0; l < 32; l++) {
                int s = l / 16;
                int q1 = ((ql[l] & 0x0f) | (((qh[l] >> 0) & 3) << 4)) - 32;
                int q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
                int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l] = d * (float)sc[s] * (float)q1;
                y[l + 32] = d * (float)sc[s + 2] * (float)q2;
                y[l + 64] = d * (float)sc[s + 4] * (float)q3;
                y[l + 96] = d * (float)sc[s + 6] * (float)q4;
            }
        }
    }
}

int core_dequant_row(uint32_t type, const void *src, float *dst, int64_t n)
{
    const type_info *t = info(type);
    if (!t || !t->can_dequant || n < 0 || n % t->block_elems != 0)
        return -EINVAL;
    if (n == 0)
        return 0;
    const uint8_t *b = src;
    int64_t nb = n / t->block_elems;
    switch (type) {
    case CORE_TYPE_F32:
        memcpy(dst, src, (size_t)n * sizeof(float));
        break;
    case CORE_TYPE_F16:
        for (int64_t i = 0; i < n; i++)
            dst[i] = load_f16(b + 2 * i);
        break;
    case CORE_TYPE_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, b + 2 * i, sizeof h);
            dst[i] = core_bf16_to_fp32(h);
        }
        break;
    case CORE_TYPE_Q4_0:
        dequant_q4_0(b, dst, nb);
        break;
    case CORE_TYPE_Q4_1:
        dequant_q4_1(b, dst, nb);
        break;
    case CORE_TYPE_Q5_0:
        dequant_q5_0(b, dst, nb);
        break;
    case CORE_TYPE_Q5_1:
        dequant_q5_1(b, dst, nb);
        break;
    case CORE_TYPE_Q8_0:
        dequant_q8_0(b, dst, nb);
        break;
    case CORE_TYPE_Q4_K:
        dequant_q4_k(b, dst, nb);
        break;
    case CORE_TYPE_Q6_K:
        dequant_q6_k(b, dst, nb);
        break;
    default:
        return -EINVAL;
    }
    return 0;
}
