/* One algorithm, two widths (as ggml's simd-mappings.h): a kernel written once with the names
 * below, W being SIMD8 (AVX2: 8 lanes of f32) or SIMD16 (AVX-512: 16 lanes), compiles to either
 * width with the same operations in the same order, so both give the same bits lane for lane.
 *
 * Only kernels that are truly one algorithm at two widths are written this way (attention.c's exp,
 * vector exp, SwiGLU and K/V loads; the tests check the two widths give the same bits). The fused
 * quantized products (qmatmul.c) and the grouped attention are not: their AVX-512 versions put two
 * weight rows in one register or run two key streams, tilings measured to be faster on 512-bit
 * units and kept bit-identical to AVX2 by the tests, not by sharing a source.
 *
 * Include after <immintrin.h>; each name takes W as its first argument: SIMD_OP(W, SET1)(x).
 */
#ifndef ADAPTREE_CORE_KERNELS_SIMD_INTERNAL_H
#define ADAPTREE_CORE_KERNELS_SIMD_INTERNAL_H

#define SIMD_OP(W, OP) W##_##OP

#define SIMD8_LANES 8
#define SIMD16_LANES 16

/* ---- 8 lanes: AVX2 + FMA + F16C ---- */
#define SIMD8_F32 __m256
#define SIMD8_I32 __m256i
#define SIMD8_MASK __m256 /* lanes of all ones */
#define SIMD8_SET1 _mm256_set1_ps
#define SIMD8_SET1_I32 _mm256_set1_epi32
#define SIMD8_LOADU _mm256_loadu_ps
#define SIMD8_LOAD_F16(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
#define SIMD8_STOREU _mm256_storeu_ps
#define SIMD8_ZERO _mm256_setzero_ps
#define SIMD8_ADD _mm256_add_ps
#define SIMD8_SUB _mm256_sub_ps
#define SIMD8_DIV _mm256_div_ps
#define SIMD8_MUL _mm256_mul_ps
#define SIMD8_MIN _mm256_min_ps
#define SIMD8_MAX _mm256_max_ps
#define SIMD8_FMADD _mm256_fmadd_ps
#define SIMD8_FNMADD _mm256_fnmadd_ps
#define SIMD8_FLOOR _mm256_floor_ps
#define SIMD8_CVT_I32 _mm256_cvtps_epi32
#define SIMD8_ADD_I32 _mm256_add_epi32
#define SIMD8_SLLI_I32 _mm256_slli_epi32
#define SIMD8_AS_F32 _mm256_castsi256_ps
#define SIMD8_LT(a, b) _mm256_cmp_ps((a), (b), _CMP_LT_OQ)
#define SIMD8_ZERO_WHERE(m, v) _mm256_andnot_ps((m), (v))

/* ---- 16 lanes: AVX-512F ---- */
#define SIMD16_F32 __m512
#define SIMD16_I32 __m512i
#define SIMD16_MASK __mmask16
#define SIMD16_SET1 _mm512_set1_ps
#define SIMD16_SET1_I32 _mm512_set1_epi32
#define SIMD16_LOADU _mm512_loadu_ps
#define SIMD16_LOAD_F16(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p)))
#define SIMD16_STOREU _mm512_storeu_ps
#define SIMD16_ZERO _mm512_setzero_ps
#define SIMD16_ADD _mm512_add_ps
#define SIMD16_SUB _mm512_sub_ps
#define SIMD16_DIV _mm512_div_ps
#define SIMD16_MUL _mm512_mul_ps
#define SIMD16_MIN _mm512_min_ps
#define SIMD16_MAX _mm512_max_ps
#define SIMD16_FMADD _mm512_fmadd_ps
#define SIMD16_FNMADD _mm512_fnmadd_ps
#define SIMD16_FLOOR(x) _mm512_roundscale_ps((x), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC)
#define SIMD16_CVT_I32 _mm512_cvtps_epi32
#define SIMD16_ADD_I32 _mm512_add_epi32
#define SIMD16_SLLI_I32 _mm512_slli_epi32
#define SIMD16_AS_F32 _mm512_castsi512_ps
#define SIMD16_LT(a, b) _mm512_cmp_ps_mask((a), (b), _CMP_LT_OQ)
#define SIMD16_ZERO_WHERE(m, v) _mm512_maskz_mov_ps((__mmask16) ~(m), (v))

#endif
