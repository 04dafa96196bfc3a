/* The one CPU dispatcher of core's kernels: which instruction-set level this CPU runs, detected
 * once, and the one switch that tests and comparisons use to run the lower levels. Each kernel
 * family (quantized and int8 matmuls, LoRA, attention) maps the level to its own kernels.
 *
 * The levels are ordered: a CPU at one level has everything the levels below need.
 */
#ifndef ADAPTREE_CORE_KERNELS_CPU_INTERNAL_H
#define ADAPTREE_CORE_KERNELS_CPU_INTERNAL_H

typedef enum core_cpu_level {
    CORE_CPU_NONE = 0,     /* no AVX2/FMA/F16C: linear layers go to OpenBLAS on f32 weights, the
                              rest runs the portable code; no int8 */
    CORE_CPU_PORTABLE = 1, /* never detected, only forced: the portable versions of the vector
                              kernels, which the vector ones must match bit for bit */
    CORE_CPU_AVX2 = 2,     /* AVX2, FMA, F16C */
    CORE_CPU_AVX512 = 3,   /* and AVX-512 F, BW, DQ, VL */
    CORE_CPU_VNNI = 4      /* and AVX-512 VNNI */
} core_cpu_level;

/* The level the kernels run at: what the CPU has (detected once; ADAPTREE_CPU=none, avx2 or
 * avx512 in the environment caps it, for comparisons on one machine), or the forced level. Any
 * thread; cheap. */
core_cpu_level core__cpu_level(void);
/* What the CPU has (and ADAPTREE_CPU allows), whatever is forced. */
core_cpu_level core__cpu_detected(void);
/* Tests: run at this level from now on (-1: back to the detected one). 0, or -ENOTSUP when the
 * CPU lacks it. Not while kernels run on other threads. */
int core__cpu_force(int level);
/* "none", "portable", "AVX2", "AVX-512", "AVX-512 VNNI". */
const char *core__cpu_level_name(core_cpu_level l);

#endif
