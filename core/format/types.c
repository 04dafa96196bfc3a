/* ggml tensor types (core/format/types.h): the block geometry table and the fp16/bf16
 * conversions, bit-exact to ggml's reference code.
 */
#include "core/format/types.h"

#include <errno.h>
#include <string.h>

#define QK 32    /* elements per block of the legacy quants */
#define QK_K 256 /* elements per K-quant super-block */

typedef struct type_info {
    const char *name;
    uint32_t block_elems;
    uint32_t block_bytes;
} type_info;

/* Indexed by ggml type id; ids without an entry are unknown (removed or not supported). */
static const type_info types[CORE_TYPE_COUNT] = {
    [CORE_TYPE_F32] = {"f32", 1, 4},
    [CORE_TYPE_F16] = {"f16", 1, 2},
    [CORE_TYPE_Q4_0] = {"q4_0", QK, 2 + QK / 2},
    [CORE_TYPE_Q4_1] = {"q4_1", QK, 2 + 2 + QK / 2},
    [CORE_TYPE_Q5_0] = {"q5_0", QK, 2 + 4 + QK / 2},
    [CORE_TYPE_Q5_1] = {"q5_1", QK, 2 + 2 + 4 + QK / 2},
    [CORE_TYPE_Q8_0] = {"q8_0", QK, 2 + QK},
    [CORE_TYPE_Q8_1] = {"q8_1", QK, 2 + 2 + QK},
    /* scales[16], qs[64], d, dmin */
    [CORE_TYPE_Q2_K] = {"q2_k", QK_K, QK_K / 16 + QK_K / 4 + 2 + 2},
    /* hmask[32], qs[64], scales[12], d */
    [CORE_TYPE_Q3_K] = {"q3_k", QK_K, QK_K / 8 + QK_K / 4 + 12 + 2},
    /* d, dmin, scales[12], qs[128] */
    [CORE_TYPE_Q4_K] = {"q4_k", QK_K, 2 + 2 + 12 + QK_K / 2},
    /* d, dmin, scales[12], qh[32], qs[128] */
    [CORE_TYPE_Q5_K] = {"q5_k", QK_K, 2 + 2 + 12 + QK_K / 8 + QK_K / 2},
    /* ql[128], qh[64], scales[16], d */
    [CORE_TYPE_Q6_K] = {"q6_k", QK_K, QK_K / 2 + QK_K / 4 + QK_K / 16 + 2},
    /* d (f32), qs[256], bsums[16] (int16) */
    [CORE_TYPE_Q8_K] = {"q8_k", QK_K, 4 + QK_K + QK_K / 16 * 2},
    [24] = {"i8", 1, 1},
    [25] = {"i16", 1, 2},
    [26] = {"i32", 1, 4},
    [27] = {"i64", 1, 8},
    [28] = {"f64", 1, 8},
    [CORE_TYPE_BF16] = {"bf16", 1, 2},
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
