/* ggml tensor types: the type ids, their block geometry and names, and the fp16/bf16 scalar
 * conversions the formats need (docs/FORMATS.md §2.3, §3). What a kernel does with each type is in
 * core/kernels/ (dequant.h, the type traits).
 *
 * Blocks in a mapped file are not naturally aligned, so every multi-byte field is read with
 * memcpy. All functions are pure and thread-safe.
 */
#ifndef ADAPTREE_CORE_FORMAT_TYPES_H
#define ADAPTREE_CORE_FORMAT_TYPES_H

#include <stddef.h>
#include <stdint.h>

/* ggml type ids (a subset; see docs/FORMATS.md §2.3). */
enum core_type {
    CORE_TYPE_F32 = 0,
    CORE_TYPE_F16 = 1,
    CORE_TYPE_Q4_0 = 2,
    CORE_TYPE_Q4_1 = 3,
    CORE_TYPE_Q5_0 = 6,
    CORE_TYPE_Q5_1 = 7,
    CORE_TYPE_Q8_0 = 8,
    CORE_TYPE_Q8_1 = 9,
    CORE_TYPE_Q2_K = 10,
    CORE_TYPE_Q3_K = 11,
    CORE_TYPE_Q4_K = 12,
    CORE_TYPE_Q5_K = 13,
    CORE_TYPE_Q6_K = 14,
    CORE_TYPE_Q8_K = 15,
    CORE_TYPE_BF16 = 30,
    CORE_TYPE_COUNT = 40
};

/* Elements per block and bytes per block; both 0 for an unknown or unsupported id. */
size_t core_type_block_elems(uint32_t type);
size_t core_type_block_bytes(uint32_t type);
/* "f32", "q4_1", ...; "unknown" for ids it does not know. */
const char *core_type_name(uint32_t type);

/* Bytes for n elements of a type; 0 when n is not a multiple of the block size, the type is
 * unknown, or the result would overflow. */
uint64_t core_type_row_bytes(uint32_t type, uint64_t n);

/* IEEE binary16 and bfloat16 conversions (round to nearest even; NaN stays NaN). */
float core_fp16_to_fp32(uint16_t h);
uint16_t core_fp32_to_fp16(float f);
float core_bf16_to_fp32(uint16_t h);
uint16_t core_fp32_to_bf16(float f);

#endif
