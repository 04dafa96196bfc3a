/* The table of kernels per weight type (core/kernels/traits_internal.h). */
#include "core/kernels/traits_internal.h"

static const core__traits table[CORE_TYPE_COUNT] = {
    [CORE_TYPE_F32] = {core__dequant_f32, NULL, NULL, NULL, NULL, 0},
    [CORE_TYPE_F16] = {core__dequant_f16, core__rebuild_avx2_f16, NULL, NULL, NULL, 0},
    [CORE_TYPE_BF16] = {core__dequant_bf16, core__rebuild_avx2_bf16, NULL, NULL, NULL, 0},
    [CORE_TYPE_Q4_0] = {core__dequant_q4_0, core__rebuild_avx2_q4_0, core__gemv8_avx2_q4_0,
                        core__gemv16_avx512_q4_0, core__repack8_q4_0, CORE_Q8_UNIT_Q8_0,
                        core__rebuild2_avx512_q4_0},
    [CORE_TYPE_Q4_1] = {core__dequant_q4_1, core__rebuild_avx2_q4_1, core__gemv8_avx2_q4_1,
                        core__gemv16_avx512_q4_1, core__repack8_q4_1, CORE_Q8_UNIT_Q4_1,
                        core__rebuild2_avx512_q4_1},
    [CORE_TYPE_Q5_0] = {core__dequant_q5_0, core__rebuild_avx2_q5_0, core__gemv8_avx2_q5_0,
                        core__gemv16_avx512_q5_0, core__repack8_q5_0, CORE_Q8_UNIT_Q8_0,
                        core__rebuild2_avx512_q5_0},
    [CORE_TYPE_Q5_1] = {core__dequant_q5_1, core__rebuild_avx2_q5_1, core__gemv8_avx2_q5_1,
                        core__gemv16_avx512_q5_1, core__repack8_q5_1, CORE_Q8_UNIT_Q5_K,
                        core__rebuild2_avx512_q5_1},
    [CORE_TYPE_Q8_0] = {core__dequant_q8_0, core__rebuild_avx2_q8_0, core__gemv8_avx2_q8_0,
                        core__gemv16_avx512_q8_0, core__repack8_q8_0, CORE_Q8_UNIT_Q8_0,
                        core__rebuild2_avx512_q8_0},
    [CORE_TYPE_Q4_K] = {core__dequant_q4_k, core__rebuild_avx2_q4_k, core__gemv8_avx2_q4_k,
                        core__gemv16_avx512_q4_k, core__repack8_q4_k, CORE_Q8_UNIT_Q4_K,
                        core__rebuild2_avx512_q4_k},
    [CORE_TYPE_Q5_K] = {core__dequant_q5_k, core__rebuild_avx2_q5_k, core__gemv8_avx2_q5_k,
                        core__gemv16_avx512_q5_k, core__repack8_q5_k, CORE_Q8_UNIT_Q5_K,
                        core__rebuild2_avx512_q5_k},
    [CORE_TYPE_Q6_K] = {core__dequant_q6_k, core__rebuild_avx2_q6_k, core__gemv8_avx2_q6_k,
                        core__gemv16_avx512_q6_k, core__repack8_q6_k, CORE_Q8_UNIT_Q6_K,
                        core__rebuild2_avx512_q6_k},
};

const core__traits *core__traits_of(uint32_t type)
{
    static const core__traits none;
    return type < CORE_TYPE_COUNT ? &table[type] : &none;
}
