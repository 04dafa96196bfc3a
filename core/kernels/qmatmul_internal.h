/* Small-batch matrix products straight from quantized weights (core-internal).
 *
 * A decode step with few rows is bound by reading the weights: OpenBLAS on the f32 slab reads
 * 32 bits per weight, the GGUF's own Q4_1 blocks 5 and Q8_0 8.5. core__qmatmul reads each
 * quantized weight row once, rebuilds it block by block in registers (or a few rows at a time in
 * an L1-sized buffer) and uses it for every row of X.
 *
 * Exactness: each weight is rebuilt with the same float operations, in the same order, as
 * core_dequant_row (multiply then add, never fused), so it is bit-identical to the slab; only the
 * summation order of the dot products differs from sgemm. A row of Y is computed in the same
 * order whatever n is and whatever the other rows of X hold.
 *
 * AVX-512 or AVX2/FMA/F16C kernels are chosen at run time; portable ones exist for tests. Pure
 * functions, no state beyond the one-time CPU check: any thread may call them.
 */
#ifndef ADAPTREE_CORE_KERNELS_QMATMUL_INTERNAL_H
#define ADAPTREE_CORE_KERNELS_QMATMUL_INTERNAL_H

#include <stdint.h>

/* 1 when core__qmatmul takes weights of this ggml type (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1,
 * Q8_0, Q4_K, Q6_K), else 0. */
int core__qmatmul_supports(uint32_t type);

/* Y = X · Wᵀ.  W (out, in): out rows of in elements of the given type, packed (a GGUF tensor as
 * mapped, any alignment); X (n, in) and Y (n, out) f32, row-major. Y is overwritten. in must be
 * a multiple of the type's block size. Any n works; the weights are read once per 32 rows of X.
 * Returns 0; -EINVAL for a bad shape; -ENOTSUP, with Y untouched, for a type it does not take or
 * on a CPU without AVX2/FMA/F16C (the portable kernels are slower than OpenBLAS on the f32
 * weights there): the caller then uses its f32 path. */
int core__qmatmul(uint32_t type, const void *W, int in, int out, const float *X, int n, float *Y);

/* The same for outputs o_begin..o_end-1 only: columns [o_begin, o_end) of Y (n, out) are written,
 * the rest untouched, each with exactly the bits core__qmatmul gives it. For splitting one
 * product over threads. */
int core__qmatmul_part(uint32_t type, const void *W, int in, int out, int o_begin, int o_end,
                       const float *X, int n, float *Y);

/* The kernels follow core__cpu_level (cpu_internal.h): AVX-512 from that level up, AVX2, the
 * portable ones when forced, none below AVX2 (core__qmatmul says -ENOTSUP). The AVX2 and AVX-512
 * kernels give the same bits. */

/* The most rows a step may have and still go through core__qmatmul rather than sgemm on f32
 * weights: ADAPTREE_QMATMUL_ROWS from the environment (1..1000000) if set, else unlimited
 * (INT_MAX) on the AVX-512 and AVX2 kernels, CORE_QMATMUL_ROWS on the portable ones (forced),
 * 0 without kernels; ADAPTREE_QMATMUL_ROWS=N sets it (then with f32 copies for sgemm above). */
int core__qmatmul_max_rows(void);

/* The family in use, for logs and benches: "AVX-512", "AVX2", "portable" or "none (...)". */
const char *core__qmatmul_kernels(void);

#endif
