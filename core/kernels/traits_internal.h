/* The kernels of each weight type, in one table (core/kernels/traits.c), as ggml's type traits:
 * the scalar dequantizer every type must have, and the vector kernels it may have. A kernel
 * family asks the table instead of switching on the type, so a new type is one row plus its
 * scalar dequantizer (in dequant.c); its AVX2 and AVX-512 kernels are optional, and a row
 * without them runs on the generic paths (a rebuilt row buffer, OpenBLAS on f32 copies).
 *
 * Vector kernels take whole blocks and never touch memory past them; the ones of a row give
 * the bits of the scalar dequantizer (rebuild) or of the rebuild followed by the dot products
 * (fused gemv), which the tests check for every type and shape.
 */
#ifndef ADAPTREE_CORE_KERNELS_TRAITS_INTERNAL_H
#define ADAPTREE_CORE_KERNELS_TRAITS_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "core/format/types.h"

/* nb blocks of src into f32 at dst. */
typedef void core__dequant_fn(const uint8_t *src, float *dst, int64_t nb);
typedef void core__rebuild_fn(const uint8_t *src, float *dst, int nb);
/* Y[i * ldy + r] = x[i] · W[r] for i < n <= 8, r < out, straight from the blocks (nb per row,
 * row_bytes apart): the AVX2 fused product. */
typedef void core__gemv8_fn(const uint8_t *W, size_t row_bytes, int nb, int out,
                            const float *const *x, int n, float *Y, int ldy);
/* The AVX-512 fused product of n <= 16 rows of X (stride ldx), two weight rows per register;
 * xp is scratch for the packed X (-n: already packed there for this n). */
typedef void core__gemv16_fn(const uint8_t *W, size_t row_bytes, int nb, int out, const float *X,
                             int ldx, int n, float *xp, float *Y, int ldy);
/* Weight rows a and b (nb blocks each) rebuilt for the AVX-512 panels: for each step kk of eight
 * elements, a's elements 8kk..8kk+7 then b's, sixteen floats at dst + 16 kk (dst 64-byte
 * aligned). */
typedef void core__rebuild2_fn(const uint8_t *a, const uint8_t *b, int nb, float *dst);

/* Part s (elements 32s..32s+31; s is 0 for the 32-element types) of a block of weight row j
 * (j < 16) of a group of sixteen rows, copied into that group's repacked unit for those 32
 * elements (qmatmul_q8.c): the int8 kernels' layout. */
typedef void core__repack8_fn(const uint8_t *blk, int s, uint8_t *unit, int j);

/* Bytes of one repacked unit (sixteen rows' 32 elements): Q4_1 16 x 16 nibble bytes + 16 d + 16 m
 * (f16); Q8_0 16 x 32 int8 + 16 d; Q4_K as Q4_1 with f32 scales and mins. */
#define CORE_Q8_UNIT_Q4_1 320
#define CORE_Q8_UNIT_Q8_0 576
#define CORE_Q8_UNIT_Q4_K 384
/* Q6_K: 16 x 32 int8 (q - 32), 16 d · sc of each half (f32), 16 -128 · Σ(q - 32) of each half
 * (int32) */
#define CORE_Q8_UNIT_Q6_K 768
/* Q5_K: 16 x 32 uint8 q, 16 d · sc (f32), 16 -(dmin · mn) (f32) */
#define CORE_Q8_UNIT_Q5_K 640

typedef struct core__traits {
    core__dequant_fn *dequant;      /* the reference (dequant.c); NULL: the type is only sized */
    core__rebuild_fn *rebuild_avx2; /* AVX2 rebuild of whole blocks (qmatmul.c); NULL: scalar */
    core__gemv8_fn *gemv8_avx2;     /* AVX2 fused product (qmatmul.c); NULL: rebuild + dots */
    core__gemv16_fn *gemv16_avx512; /* AVX-512 fused product (qmatmul.c); NULL: as gemv8_avx2 */
    core__repack8_fn *repack8;      /* int8-activation kernels (qmatmul_q8.c); NULL: none */
    int unit8;                      /* bytes of a repacked unit (with repack8) */
    core__rebuild2_fn *rebuild2_avx512; /* AVX-512 rebuild of two rows (qmatmul.c); NULL: none */
} core__traits;

/* The row of a type; a row of NULLs for a type the table does not know. Pure. */
const core__traits *core__traits_of(uint32_t type);

/* The kernels the rows name (dequant.c, qmatmul.c). */
core__dequant_fn core__dequant_f32, core__dequant_f16, core__dequant_bf16, core__dequant_q4_0,
    core__dequant_q4_1, core__dequant_q5_0, core__dequant_q5_1, core__dequant_q8_0,
    core__dequant_q4_k, core__dequant_q5_k, core__dequant_q6_k;
core__rebuild_fn core__rebuild_avx2_f16, core__rebuild_avx2_bf16, core__rebuild_avx2_q4_0,
    core__rebuild_avx2_q4_1, core__rebuild_avx2_q5_0, core__rebuild_avx2_q5_1,
    core__rebuild_avx2_q8_0, core__rebuild_avx2_q4_k, core__rebuild_avx2_q5_k,
    core__rebuild_avx2_q6_k;
core__gemv8_fn core__gemv8_avx2_q4_0, core__gemv8_avx2_q4_1, core__gemv8_avx2_q5_0,
    core__gemv8_avx2_q5_1, core__gemv8_avx2_q8_0, core__gemv8_avx2_q4_k, core__gemv8_avx2_q5_k,
    core__gemv8_avx2_q6_k;
core__repack8_fn core__repack8_q4_0, core__repack8_q4_1, core__repack8_q5_0, core__repack8_q5_1,
    core__repack8_q8_0, core__repack8_q4_k, core__repack8_q5_k, core__repack8_q6_k;

/* The 6-bit scale and min of sub-block j (0..7) of a Q4_K or Q5_K block, from its scales[12]
 * (dequant.c). */
void core__q4k_scale_min(int j, const uint8_t *s, uint8_t *sc, uint8_t *mn);
core__gemv16_fn core__gemv16_avx512_q4_0, core__gemv16_avx512_q4_1, core__gemv16_avx512_q5_0,
    core__gemv16_avx512_q5_1, core__gemv16_avx512_q8_0, core__gemv16_avx512_q4_k,
    core__gemv16_avx512_q5_k, core__gemv16_avx512_q6_k;
core__rebuild2_fn core__rebuild2_avx512_q4_0, core__rebuild2_avx512_q4_1,
    core__rebuild2_avx512_q5_0, core__rebuild2_avx512_q5_1, core__rebuild2_avx512_q8_0,
    core__rebuild2_avx512_q4_k, core__rebuild2_avx512_q5_k, core__rebuild2_avx512_q6_k;

#endif
