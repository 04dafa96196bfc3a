/* What the CPU dispatcher (core/kernels/cpu_internal.h) chose, for the version and build
 * reports of the server. */
#ifndef ADAPTREE_CORE_KERNELS_CPU_H
#define ADAPTREE_CORE_KERNELS_CPU_H

/* The level core's kernels run at: "none", "portable", "AVX2", "AVX-512" or "AVX-512 VNNI"
 * (what the CPU has, capped by $ADAPTREE_CPU). Static string. Any thread; detects on the first
 * call. */
const char *core_cpu_kernels(void);

#endif
