/* LoRA kernels for groups of few rows (core-internal).
 *
 * A decode step typically applies each adapter to one or a few rows, so the work of a group is
 * dominated by reading its A (rank, in) and Bt (rank, out) once; OpenBLAS is slow at such shapes
 * and cannot read f16/bf16. These kernels convert A and Bt on the fly in small cache-resident
 * chunks and compute, for every row i of the group:
 *
 *   t = A · x_i               (rank)
 *   y_i += scale_i * Btᵀ · t  (out)
 *
 * B is stored transposed so that both passes stream whole rows of their weights.
 *
 * Each row's result is computed in the same order whatever the group size, so a row's output
 * does not depend on which other rows share its adapter.
 */
#ifndef ADAPTREE_CORE_KERNELS_LORA_INTERNAL_H
#define ADAPTREE_CORE_KERNELS_LORA_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#define CORE_LORA_MAX_RANK 4096

/* Applies one group. X (rows, in) and Y (rows, out) are the whole batch's activations; rows[i]
 * picks the batch row. scratch holds at least core__lora_scratch_floats(rank, out) floats. dtype is
 * CORE_TYPE_F32, CORE_TYPE_F16 or CORE_TYPE_BF16. */
void core__lora_group(uint32_t dtype, const void *A, const void *Bt, int rank, int in, int out,
                      int n_rows, const int32_t *rows, const float *scales, const float *X,
                      float *Y, float *scratch);

size_t core__lora_scratch_floats(int rank, int out);

/* The kernels follow core__cpu_level (cpu_internal.h): AVX2 from that level up, portable below. */

#endif
