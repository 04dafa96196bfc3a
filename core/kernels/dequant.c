/* Scalar dequantization (core/kernels/dequant.h) of the block formats in docs/FORMATS.md §3.
 *
 * Every product is computed in float in the same order as ggml's reference code (and the gguf
 * Python package), so with -ffp-contract=off the results are bit-identical to both.
 */
#include "core/kernels/dequant.h"
#include "core/kernels/traits_internal.h"

#include <errno.h>
#include <stdbool.h>
#include <string.h>

#define QK 32    /* elements per block of the legacy quants */
#define QK_K 256 /* elements per K-quant super-block */

static float load_f16(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, sizeof h);
    return core_fp16_to_fp32(h);
}

/* Q4_0: d, qs[16]; low nibbles are elements 0..15, high nibbles 16..31. */
void core__dequant_q4_0(const uint8_t *b, float *y, int64_t nb)
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
void core__dequant_q4_1(const uint8_t *b, float *y, int64_t nb)
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
void core__dequant_q5_0(const uint8_t *b, float *y, int64_t nb)
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
void core__dequant_q5_1(const uint8_t *b, float *y, int64_t nb)
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
void core__dequant_q8_0(const uint8_t *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, b += 34, y += QK) {
        float d = load_f16(b);
        const int8_t *qs = (const int8_t *)(b + 2);
        for (int j = 0; j < QK; j++)
            y[j] = (float)qs[j] * d;
    }
}

void core__q4k_scale_min(int j, const uint8_t *s, uint8_t *sc, uint8_t *mn)
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
 * sub-block 2c, high nibbles for 2c+1). Q5_K: d, dmin, scales[12] (as Q4_K), qh[32], qs[128]; as
 * Q4_K, with bit 2c of qh[l] the fifth bit of output l of sub-block 2c and bit 2c + 1 that of
 * sub-block 2c + 1. qh is NULL for Q4_K. */
static void dequant_k(const uint8_t *b, float *y, int64_t nb, bool five)
{
    size_t block = five ? 176 : 144;
    for (int64_t i = 0; i < nb; i++, b += block) {
        float d = load_f16(b);
        float dmin = load_f16(b + 2);
        const uint8_t *scales = b + 4;
        const uint8_t *qh = five ? b + 16 : NULL;
        const uint8_t *qs = b + (five ? 48 : 16);
        for (int c = 0; c < 4; c++, qs += 32) {
            uint8_t sc, mn;
            core__q4k_scale_min(2 * c, scales, &sc, &mn);
            float d1 = d * (float)sc, m1 = dmin * (float)mn;
            core__q4k_scale_min(2 * c + 1, scales, &sc, &mn);
            float d2 = d * (float)sc, m2 = dmin * (float)mn;
            for (int l = 0; l < 32; l++) {
                int h = qh ? ((qh[l] >> 2 * c) & 1) << 4 : 0;
                *y++ = d1 * (float)((qs[l] & 0x0f) | h) - m1;
            }
            for (int l = 0; l < 32; l++) {
                int h = qh ? ((qh[l] >> (2 * c + 1)) & 1) << 4 : 0;
                *y++ = d2 * (float)((qs[l] >> 4) | h) - m2;
            }
        }
    }
}

void core__dequant_q4_k(const uint8_t *b, float *y, int64_t nb)
{
    dequant_k(b, y, nb, false);
}

void core__dequant_q5_k(const uint8_t *b, float *y, int64_t nb)
{
    dequant_k(b, y, nb, true);
}

/* Q6_K: ql[128], qh[64], scales[16] int8, d last. Two halves of 128 outputs. */
void core__dequant_q6_k(const uint8_t *b, float *y, int64_t nb)
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

void core__dequant_f32(const uint8_t *b, float *y, int64_t n)
{
    memcpy(y, b, (size_t)n * sizeof(float));
}

void core__dequant_f16(const uint8_t *b, float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = load_f16(b + 2 * i);
}

void core__dequant_bf16(const uint8_t *b, float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, b + 2 * i, sizeof h);
        y[i] = core_bf16_to_fp32(h);
    }
}

int core_type_can_dequant(uint32_t type)
{
    return core__traits_of(type)->dequant != NULL;
}

int core_dequant_row(uint32_t type, const void *src, float *dst, int64_t n)
{
    if (!core_type_can_dequant(type) || n < 0)
        return -EINVAL;
    int64_t be = (int64_t)core_type_block_elems(type);
    if (n % be != 0)
        return -EINVAL;
    if (n > 0)
        core__traits_of(type)->dequant(src, dst, n / be);
    return 0;
}
