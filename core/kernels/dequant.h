/* Scalar dequantization of the block formats in docs/FORMATS.md §3 to f32 (F32, F16, BF16, Q4_0,
 * Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K): the reference every faster kernel is checked against.
 * The other K-quants and Q8_1 are only sized (core/format/types.h), so that a GGUF holding them
 * still opens. Pure and thread-safe.
 */
#ifndef ADAPTREE_CORE_KERNELS_DEQUANT_H
#define ADAPTREE_CORE_KERNELS_DEQUANT_H

#include <stdint.h>

#include "core/format/types.h"

/* 1 when core_dequant_row can convert this type. */
int core_type_can_dequant(uint32_t type);

/* Dequantizes n elements (a multiple of the block size) from src to dst.
 * Returns 0, or -EINVAL for an unsupported type or a bad n. */
int core_dequant_row(uint32_t type, const void *src, float *dst, int64_t n);

#endif
