/* OpenBLAS setup: which kernel set ("core") the library runs, its thread count, and the start-up
 * re-exec that replaces a generic fallback core with the one the CPU can run.
 *
 * Why a re-exec: a DYNAMIC_ARCH OpenBLAS picks its core once, when the library is loaded, from
 * OPENBLAS_CORETYPE or its own CPU table. Debian 12's 0.3.21 does not know some recent CPUs and
 * falls back to "Prescott" (SSE3), which makes sgemm about 4x slower. Setting the variable after
 * load changes nothing, so the process sets it and executes itself again.
 *
 * Every function here may be called from any thread, but core_blas_ensure_kernel belongs at the
 * very start of main(), before any other thread exists.
 */
#ifndef ADAPTREE_CORE_KERNELS_BLAS_H
#define ADAPTREE_CORE_KERNELS_BLAS_H

#include <stddef.h>

/* The core OpenBLAS is running ("Haswell", "SkylakeX", "Zen", "Prescott", ...). The string
 * belongs to OpenBLAS and lives as long as the process. */
const char *core_blas_corename(void);

/* OpenBLAS's thread count, and setting it (n >= 1; applies to the calls that follow). The
 * setting also sizes the pool that runs core's own kernels (pool.h). */
int core_blas_threads(void);
void core_blas_set_threads(int n);

/* What this CPU (and OS) can run, from __builtin_cpu_supports: *has_avx512 is 1 for AVX-512
 * F+BW+DQ+VL (what OpenBLAS's SkylakeX kernels are built for), *has_avx2 for AVX2+FMA (the
 * Haswell kernels). Either pointer may be NULL. */
void core_blas_cpu_features(int *has_avx512, int *has_avx2);

/* The decision, pure: the OPENBLAS_CORETYPE to re-exec with, or NULL to leave things alone.
 * "SkylakeX" with AVX-512, else "Haswell" with AVX2+FMA, but only when corename is a generic
 * fallback and the user has not set OPENBLAS_CORETYPE (user_set != 0). A core counts as a
 * fallback when it is one of OpenBLAS's x86 kernel sets for CPUs without AVX2 (Prescott, Core2,
 * Nehalem, Sandybridge, Barcelona, Bulldozer, ... and "Unknown"/"Generic", compared without
 * case): such a core on an AVX2 CPU can only be a misdetection, since the CPU it was written
 * for cannot execute AVX2. Haswell, Zen, SkylakeX, Cooperlake, SapphireRapids, Excavator and
 * names this function does not know are left alone. */
const char *core_blas_pick_coretype(const char *corename, int has_avx512, int has_avx2,
                                    int user_set);

/* Call first thing in main(): makes sure OpenBLAS runs real kernels. Never fatal; msg (may be
 * NULL) receives one line for the log in every case.
 *
 * - ADAPTREE_BLAS_REEXEC set: this process is the re-executed one. Nothing is changed; msg says
 *   what happened ("openblas: re-executed with OPENBLAS_CORETYPE=Haswell (was Prescott); core
 *   now Haswell"). Returns 0. The variable stays set, so this can never loop.
 * - Otherwise the core name is read (ADAPTREE_BLAS_PRETEND_CORE, when set, replaces it: a test
 *   hook that simulates the old library on a new CPU) and core_blas_pick_coretype decides. When
 *   it names a core: OPENBLAS_CORETYPE=<core> and ADAPTREE_BLAS_REEXEC=<old core name> are set,
 *   stdio is flushed, and the program is executed again from /proc/self/exe with the same argv
 *   (falling back to execvp(argv[0])). On success this call does not return. If both execs
 *   fail, the two variables are removed again, msg says why, and -errno is returned: the caller
 *   logs it and carries on with the slow core.
 * - No change needed: returns 1, msg like "openblas: core Zen (ok)".
 * argv must be main's argv (argv[argc] == NULL); a needed re-exec without one (argc < 1 or
 * argv NULL) returns -EINVAL. */
int core_blas_ensure_kernel(int argc, char **argv, char *msg, size_t msglen);

/* Measures sgemm on n x n x n matrices (row-major, C = A B), reps timed calls after one warm-up,
 * with the current thread count. Returns GFLOP/s (2 n^3 reps / time), or a negative value for
 * n < 1, reps < 1 or out of memory. For `make bench`. */
double core_blas_sgemm_gflops(int n, int reps);

#endif
