/* Tests for core/format/types.c and core/kernels/dequant.c: block geometry, fp16/bf16 conversions,
 * and dequantization compared against the vectors that tests/reference/make_quant_fixtures.py made
 * with gguf-py. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/kernels/dequant.h"
#include "tests/test.h"

#define FIXTURE "tests/golden/fixtures/quant_vectors.bin"

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Reads the whole fixture; NULL if absent. */
static uint8_t *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = n > 0 ? malloc((size_t)n) : NULL;
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *len = buf ? (size_t)n : 0;
    return buf;
}

static uint32_t le32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* Every dequantized value must equal gguf-py's exactly (same float32 operations in the same
 * order; the build uses -ffp-contract=off): NaN matches NaN, and +0 matches -0 only by value. */
TEST(quant_dequant_reference)
{
    size_t len;
    uint8_t *buf = read_file(FIXTURE, &len);
    CHECK_MSG(buf, "cannot read %s (run tests/reference/make_quant_fixtures.py)", FIXTURE);
    int ok = len >= 24 && memcmp(buf, "AQV1", 4) == 0;
    uint32_t n_cases = ok ? le32(buf + 4) : 0;
    char ver[17] = {0};
    if (ok)
        memcpy(ver, buf + 8, 16);
    size_t pos = 24;
    int types_seen = 0;
    double max_diff = 0;
    for (uint32_t c = 0; ok && c < n_cases; c++) {
        ok = pos + 12 <= len;
        uint32_t type = ok ? le32(buf + pos) : 0, n = ok ? le32(buf + pos + 4) : 0;
        uint32_t nbytes = ok ? le32(buf + pos + 8) : 0;
        pos += 12;
        ok = ok && pos + nbytes + 4ull * n <= len && core_type_row_bytes(type, n) == nbytes;
        if (!ok)
            break;
        const uint8_t *raw = buf + pos;
        const uint8_t *want = raw + nbytes;
        pos += nbytes + 4ull * n;
        float *got = malloc(n * sizeof *got);
        int rc = core_dequant_row(type, raw, got, n);
        double type_diff = 0;
        int bad = -1;
        for (uint32_t i = 0; rc == 0 && i < n; i++) {
            float w = bits_f32(le32(want + 4 * i));
            if (isnan(w) || isnan(got[i])) {
                if (!(isnan(w) && isnan(got[i])) && bad < 0)
                    bad = (int)i;
                continue;
            }
            if (isinf(w) || isinf(got[i])) {
                if (w != got[i] && bad < 0)
                    bad = (int)i;
                continue;
            }
            double d = fabs((double)w - (double)got[i]);
            type_diff = d > type_diff ? d : type_diff;
            if (d != 0 && bad < 0)
                bad = (int)i;
        }
        printf("    %-5s %5u values vs gguf-py %s: max |diff| %g\n", core_type_name(type), n, ver,
               type_diff);
        max_diff = type_diff > max_diff ? type_diff : max_diff;
        float g0 = bad >= 0 ? got[bad] : 0;
        free(got);
        if (rc != 0 || bad >= 0) {
            float w = bad >= 0 ? bits_f32(le32(want + 4 * (size_t)bad)) : 0;
            free(buf);
            CHECK_MSG(0, "%s: rc %d, element %d: got %.9g (0x%08x) want %.9g (0x%08x)",
                      core_type_name(type), rc, bad, g0, f32_bits(g0), w, f32_bits(w));
        }
        types_seen++;
    }
    free(buf);
    CHECK_MSG(ok, "malformed fixture %s", FIXTURE);
    printf("    max |diff| over all types: %g\n", max_diff);
    CHECK_EQ_INT(types_seen, 11);
}

TEST(quant_geometry)
{
    /* (type, block elements, block bytes) from ggml-common.h static_asserts. */
    static const uint32_t want[][3] = {
        {CORE_TYPE_F32, 1, 4},      {CORE_TYPE_F16, 1, 2},      {CORE_TYPE_BF16, 1, 2},
        {CORE_TYPE_Q4_0, 32, 18},   {CORE_TYPE_Q4_1, 32, 20},   {CORE_TYPE_Q5_0, 32, 22},
        {CORE_TYPE_Q5_1, 32, 24},   {CORE_TYPE_Q8_0, 32, 34},   {CORE_TYPE_Q8_1, 32, 36},
        {CORE_TYPE_Q2_K, 256, 84},  {CORE_TYPE_Q3_K, 256, 110}, {CORE_TYPE_Q4_K, 256, 144},
        {CORE_TYPE_Q5_K, 256, 176}, {CORE_TYPE_Q6_K, 256, 210}, {CORE_TYPE_Q8_K, 256, 292},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        CHECK_EQ_INT(core_type_block_elems(want[i][0]), want[i][1]);
        CHECK_EQ_INT(core_type_block_bytes(want[i][0]), want[i][2]);
    }
    CHECK_EQ_STR(core_type_name(CORE_TYPE_Q4_1), "q4_1");
    CHECK_EQ_STR(core_type_name(CORE_TYPE_Q6_K), "q6_k");
    CHECK_EQ_STR(core_type_name(CORE_TYPE_BF16), "bf16");
    CHECK_EQ_STR(core_type_name(4), "unknown"); /* removed Q4_2 */
    CHECK_EQ_STR(core_type_name(1000), "unknown");
    CHECK_EQ_INT(core_type_block_bytes(4), 0);
    CHECK_EQ_INT(core_type_block_elems(16), 0); /* IQ2_XXS: not supported */
    CHECK_EQ_INT(core_type_row_bytes(CORE_TYPE_Q4_1, 576), 360);
    CHECK_EQ_INT(core_type_row_bytes(CORE_TYPE_Q8_0, 576), 612);
    CHECK_EQ_INT(core_type_row_bytes(CORE_TYPE_Q6_K, 1536), 1260);
    CHECK_EQ_INT(core_type_row_bytes(CORE_TYPE_Q4_1, 33), 0);
    CHECK_EQ_INT(core_type_row_bytes(CORE_TYPE_Q6_K, 576), 0);
    CHECK_EQ_INT(core_type_row_bytes(CORE_TYPE_F32, UINT64_MAX / 2), 0); /* overflow */
    CHECK_EQ_INT(core_type_row_bytes(99, 32), 0);
    CHECK(core_type_can_dequant(CORE_TYPE_Q4_K));
    CHECK(!core_type_can_dequant(CORE_TYPE_Q2_K));
    CHECK(!core_type_can_dequant(77));
}

TEST(quant_dequant_rejects_bad_input)
{
    uint8_t block[210] = {0};
    float out[256];
    CHECK_EQ_INT(core_dequant_row(CORE_TYPE_Q4_1, block, out, 31), -EINVAL);
    CHECK_EQ_INT(core_dequant_row(CORE_TYPE_Q6_K, block, out, 32), -EINVAL);
    CHECK_EQ_INT(core_dequant_row(CORE_TYPE_Q4_1, block, out, -32), -EINVAL);
    CHECK_EQ_INT(core_dequant_row(CORE_TYPE_Q2_K, block, out, 256), -EINVAL);
    CHECK_EQ_INT(core_dequant_row(5, block, out, 32), -EINVAL);
    CHECK_EQ_INT(core_dequant_row(CORE_TYPE_Q4_1, block, out, 0), 0);
}

/* A hand-made Q4_1 block: low nibbles are elements 0..15, high nibbles 16..31. */
TEST(quant_q4_1_nibble_order)
{
    uint8_t b[20];
    uint16_t d = core_fp32_to_fp16(1.0f), m = core_fp32_to_fp16(0.5f);
    memcpy(b, &d, 2);
    memcpy(b + 2, &m, 2);
    for (int j = 0; j < 16; j++)
        b[4 + j] = (uint8_t)(j | (15 - j) << 4);
    float y[32];
    CHECK_EQ_INT(core_dequant_row(CORE_TYPE_Q4_1, b, y, 32), 0);
    for (int j = 0; j < 16; j++) {
        CHECK_NEAR(y[j], j + 0.5, 0);
        CHECK_NEAR(y[j + 16], 15 - j + 0.5, 0);
    }
}

/* A hand-made Q6_K block whose d is the last two bytes: all q = 33 (ql 1, qh 2), scales 1..16. */
TEST(quant_q6_k_layout)
{
    uint8_t b[210] = {0};
    memset(b, 0x11, 128);      /* ql: both nibbles 1 */
    memset(b + 128, 0xaa, 64); /* qh: every 2-bit field 2 -> q = 1 | 2 << 4 = 33 */
    for (int i = 0; i < 16; i++)
        b[192 + i] = (uint8_t)(i + 1);
    uint16_t d = core_fp32_to_fp16(0.25f);
    memcpy(b + 208, &d, 2);
    float y[256];
    CHECK_EQ_INT(core_dequant_row(CORE_TYPE_Q6_K, b, y, 256), 0);
    /* Output k lies in sub-block k / 16, whose scale is k / 16 + 1; q - 32 = 1. */
    for (int k = 0; k < 256; k++)
        CHECK_NEAR(y[k], 0.25 * (k / 16 + 1), 0);
}

/* Every half converts to float and back to itself (NaNs stay NaN). */
TEST(quant_fp16_roundtrip_all)
{
    for (uint32_t h = 0; h < 65536; h++) {
        float f = core_fp16_to_fp32((uint16_t)h);
        uint16_t back = core_fp32_to_fp16(f);
        if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) {
            CHECK_MSG(isnan(f) && (back & 0x7c00) == 0x7c00 && (back & 0x3ff),
                      "NaN 0x%04x -> %g -> 0x%04x", h, f, back);
            continue;
        }
        CHECK_MSG(back == h, "0x%04x -> %.9g -> 0x%04x", h, f, back);
    }
    CHECK_NEAR(core_fp16_to_fp32(0x0001), ldexp(1, -24), 0);
    CHECK_NEAR(core_fp16_to_fp32(0x03ff), 1023 * ldexp(1, -24), 0);
    CHECK_NEAR(core_fp16_to_fp32(0x7bff), 65504, 0);
    CHECK(isinf(core_fp16_to_fp32(0xfc00)) && core_fp16_to_fp32(0xfc00) < 0);
    CHECK(signbit(core_fp16_to_fp32(0x8000)));
}

/* fp32 -> fp16 picks the nearest half, ties to even: checked against the neighbours of the
 * result for a sweep over all float exponents a half can reach, plus named edge cases. */
TEST(quant_fp16_round_nearest_even)
{
    for (uint32_t x = 0x30000000u; x < 0x477ff000u; x += 0x1f3) { /* below 65520 */
        float f = bits_f32(x);
        uint16_t r = core_fp32_to_fp16(f);
        double v = core_fp16_to_fp32(r);
        double err = fabs(f - v);
        if (r > 0) {
            double lo = core_fp16_to_fp32((uint16_t)(r - 1));
            CHECK_MSG(err < fabs(f - lo) || (err == fabs(f - lo) && !(r & 1)),
                      "%.9g -> 0x%04x, 0x%04x is nearer", f, r, r - 1);
        }
        if (r < 0x7c00) {
            double hi = core_fp16_to_fp32((uint16_t)(r + 1));
            CHECK_MSG(err < fabs(f - hi) || (err == fabs(f - hi) && !(r & 1)),
                      "%.9g -> 0x%04x, 0x%04x is nearer", f, r, r + 1);
        }
    }
    CHECK_EQ_INT(core_fp32_to_fp16(1.0f + 0x1p-11f), 0x3c00);     /* tie -> even */
    CHECK_EQ_INT(core_fp32_to_fp16(1.0f + 3 * 0x1p-11f), 0x3c02); /* tie -> even */
    CHECK_EQ_INT(core_fp32_to_fp16(65519.0f), 0x7bff);
    CHECK_EQ_INT(core_fp32_to_fp16(65520.0f), 0x7c00); /* tie -> inf */
    CHECK_EQ_INT(core_fp32_to_fp16(-1e10f), 0xfc00);
    CHECK_EQ_INT(core_fp32_to_fp16(0x1p-25f), 0x0000); /* tie -> 0 */
    CHECK_EQ_INT(core_fp32_to_fp16(0x1.000002p-25f), 0x0001);
    CHECK_EQ_INT(core_fp32_to_fp16(3 * 0x1p-25f), 0x0002); /* tie -> even */
    CHECK_EQ_INT(core_fp32_to_fp16(0x1.ff8p-15f), 0x03ff); /* largest subnormal */
    CHECK_EQ_INT(core_fp32_to_fp16(0x1.ffcp-15f), 0x0400); /* tie -> even: normal */
    CHECK_EQ_INT(core_fp32_to_fp16(-0.0f), 0x8000);
    CHECK_EQ_INT(core_fp32_to_fp16(1e-30f), 0x0000);
    uint16_t n = core_fp32_to_fp16(NAN);
    CHECK((n & 0x7c00) == 0x7c00 && (n & 0x3ff) != 0);
}

TEST(quant_bf16)
{
    CHECK_EQ_INT(core_fp32_to_bf16(1.0f), 0x3f80);
    CHECK_EQ_INT(core_fp32_to_bf16(1.0f + 0x1p-8f), 0x3f80);     /* tie -> even */
    CHECK_EQ_INT(core_fp32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82); /* tie -> even */
    CHECK_EQ_INT(core_fp32_to_bf16(1.0f + 0x1.2p-8f), 0x3f81);
    CHECK_EQ_INT(core_fp32_to_bf16(-2.0f), 0xc000);
    CHECK_EQ_INT(core_fp32_to_bf16(bits_f32(0x7f7fffffu)), 0x7f80); /* FLT_MAX rounds to inf */
    CHECK_EQ_INT(core_fp32_to_bf16(INFINITY), 0x7f80);
    uint16_t n = core_fp32_to_bf16(bits_f32(0x7f800001u)); /* signalling NaN stays NaN */
    CHECK((n & 0x7f80) == 0x7f80 && (n & 0x7f) != 0);
    CHECK_NEAR(core_bf16_to_fp32(0x3f80), 1.0, 0);
    CHECK_NEAR(core_bf16_to_fp32(0xc0a0), -5.0, 0);
    CHECK(isnan(core_bf16_to_fp32(0x7fc0)));
    for (uint32_t h = 0; h < 65536; h++) {
        float f = core_bf16_to_fp32((uint16_t)h);
        if (!isnan(f))
            CHECK_MSG(core_fp32_to_bf16(f) == h, "bf16 0x%04x does not round-trip", h);
    }
}
