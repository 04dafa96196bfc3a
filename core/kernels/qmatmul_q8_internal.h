/* Matrix products with int8 activations (core-internal): llama.cpp's CPU numerics, opt-in.
 *
 * X is quantized row by row in blocks of 32 to int8 with one f32 scale per block (d = max|x| /
 * 127, q = round-to-nearest-even(x / d), as ggml's Q8_1/Q8_0), and the dot products with the
 * weights' own integers run in int32 (AVX-512 VNNI, 64 multiply-adds per instruction; on AVX2,
 * VPMADDUBSW then VPMADDWD, 32 per pair); each block's integer sum is then scaled in f32. The
 * weights are repacked once, sixteen rows at a time, so that one 512-bit register holds four
 * consecutive weights of sixteen rows: an instruction's sixteen int32 lanes are sixteen outputs
 * (eight per 256-bit half on AVX2), and no horizontal sums are needed.
 *
 * This is not exact against the f32 reference (docs/ARCHITECTURE.md §6 asks logits within 1e-3 of
 * transformers): rounding SmolLM2's outlier-heavy activations to 8 bits moves the logits by up
 * to ~2 (1.87 measured by the golden test, mean ~0.15). It is therefore off unless asked for
 * (core_model_set_int8, `serve --int8`).
 *
 * Bits: every output is one fixed sequence of f32 operations per block (t = d_w·d_x;
 * acc = fma(isum, t, acc); Q4_1 then acc = fma(m_w, s_x, acc)), the same whatever the number
 * of rows or the thread split, and the portable kernels (tests), AVX2 and VNNI give the same bits.
 * Pure functions apart from the one-time CPU check.
 */
#ifndef ADAPTREE_CORE_KERNELS_QMATMUL_Q8_INTERNAL_H
#define ADAPTREE_CORE_KERNELS_QMATMUL_Q8_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

/* Weights repacked for the int8 kernels (opaque). */
typedef struct core_q8w core_q8w;

/* 1 when the int8 kernels take weights of this type and shape: Q4_1, Q8_0, Q4_K or Q6_K, in a
 * multiple of 32, out a multiple of 16. */
int core__q8w_supports(uint32_t type, int in, int out);

/* The repacked copy of W (out, in) as the GGUF stores it; NULL when unsupported (see above) or
 * out of memory. Free with core__q8w_free. */
core_q8w *core__q8w_pack(uint32_t type, const void *W, int in, int out);
void core__q8w_free(core_q8w *w);
size_t core__q8w_bytes(const core_q8w *w);

/* Bytes of one quantized row of X of in elements (a multiple of 64). */
size_t core__q8x_row_bytes(int in);

/* Quantizes X (n, in) f32 into dst (n rows of core__q8x_row_bytes(in), 64-byte aligned). A block
 * with a NaN or infinity gets a NaN scale, so that it poisons the outputs as in f32. */
void core__q8x_quantize(const float *X, int in, int n, uint8_t *dst);

/* Y[:, o_begin..o_end) = Xq · Wᵀ for the n quantized rows Xq (from core__q8x_quantize with the
 * weights' in); Y (n, ldy) f32. o_begin and o_end multiples of 16 (or o_end = out). Returns 0 or
 * -EINVAL for a bad range. */
int core__q8_matmul_part(const core_q8w *w, const uint8_t *Xq, int n, int o_begin, int o_end,
                         float *Y, int ldy);

/* Which kernels run, following core__cpu_level (cpu_internal.h): none (below AVX2: int8 is
 * refused), the portable ones (forced, for tests), AVX2 (also on AVX-512 without VNNI), or
 * AVX-512 VNNI. All give the same bits. */
enum { CORE_Q8_NONE = 0, CORE_Q8_PORTABLE = 1, CORE_Q8_AVX2 = 2, CORE_Q8_VNNI = 3 };
int core__q8_level(void);

/* 1 when the int8 kernels run here (core__q8_level() above CORE_Q8_NONE); else 0. */
int core__q8_available(void);

/* Their name, for logs and benches: "AVX-512 VNNI", "AVX2", "portable" or "none". */
const char *core__q8_kernels(void);

#endif
