/* OpenBLAS setup: core name, threads, the start-up re-exec away from a generic fallback core,
 * and an sgemm throughput probe for `make bench`.
 *
 * The re-exec state lives in two environment variables only: OPENBLAS_CORETYPE (read by
 * OpenBLAS when it loads) and ADAPTREE_BLAS_REEXEC (the core the first run saw; its presence
 * stops a second re-exec, so a library that ignores the variable cannot make the process loop).
 */
#include "core/kernels/blas.h"
#include "core/kernels/cpu_internal.h"
#include "core/kernels/pool_internal.h"

#include <cblas.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

/* OpenBLAS extensions (cblas.h declares them too, but only OpenBLAS's copy of it). */
char *openblas_get_corename(void);
int openblas_get_num_threads(void);
void openblas_set_num_threads(int num_threads);

static void set_msg(char *msg, size_t msglen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_msg(char *msg, size_t msglen, const char *fmt, ...)
{
    if (!msg || msglen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, msglen, fmt, ap);
    va_end(ap);
}

const char *core_blas_corename(void)
{
    const char *name = openblas_get_corename();
    return name ? name : "Unknown";
}

int core_blas_threads(void)
{
    return openblas_get_num_threads();
}

void core_blas_set_threads(int n)
{
    openblas_set_num_threads(n < 1 ? 1 : n);
    core__pool_set_threads(n);
}

void core_blas_cpu_features(int *has_avx512, int *has_avx2)
{
    __builtin_cpu_init();
    /* libgcc and compiler-rt also check that the OS saves the wider registers (XGETBV). */
    int avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (has_avx512)
        *has_avx512 = avx512 != 0;
    if (has_avx2)
        *has_avx2 = avx2 != 0;
}

/* OpenBLAS's x86 cores written for CPUs without AVX2 (corename[] in driver/others/dynamic.c),
 * plus the names it reports when it knows nothing. On a CPU with AVX2+FMA any of them is a
 * misdetection, since the CPU it was written for cannot execute AVX2. The ones the library's
 * table actually falls back to: unknown Intel and other vendors -> Prescott, unknown AMD
 * families -> Barcelona, known CPUs whose AVX state it misreads -> Sandybridge or Nehalem; and
 * builds without DYNAMIC_OLDER report Penryn, Dunnington, Opteron and Bobcat as "Core2", Atom
 * and Nano as "Nehalem". */
static const char *const generic_cores[] = {
    "Unknown", "Generic",   "Katmai",       "Coppermine",  "Northwood",  "Prescott",
    "Banias",  "Atom",      "Core2",        "Penryn",      "Dunnington", "Nehalem",
    "Athlon",  "Opteron",   "Opteron_SSE3", "Barcelona",   "Nano",       "Sandybridge",
    "Bobcat",  "Bulldozer", "Piledriver",   "Steamroller",
};

const char *core_blas_pick_coretype(const char *corename, int has_avx512, int has_avx2,
                                    int user_set)
{
    if (user_set || !corename || !has_avx2)
        return NULL;
    for (size_t i = 0; i < sizeof(generic_cores) / sizeof(generic_cores[0]); i++)
        if (strcasecmp(corename, generic_cores[i]) == 0)
            return has_avx512 ? "SkylakeX" : "Haswell";
    return NULL;
}

int core_blas_ensure_kernel(int argc, char **argv, char *msg, size_t msglen)
{
    const char *prev = getenv("ADAPTREE_BLAS_REEXEC");
    if (prev) {
        const char *forced = getenv("OPENBLAS_CORETYPE");
        set_msg(msg, msglen,
                "openblas: re-executed with OPENBLAS_CORETYPE=%s (was %s); core now %s",
                forced ? forced : "(unset)", prev, core_blas_corename());
        return 0;
    }
    const char *pretend = getenv("ADAPTREE_BLAS_PRETEND_CORE");
    char core[64];
    snprintf(core, sizeof(core), "%s", pretend && *pretend ? pretend : core_blas_corename());
    const char *user = getenv("OPENBLAS_CORETYPE");
    int avx512, avx2;
    core_blas_cpu_features(&avx512, &avx2);
    const char *pick = core_blas_pick_coretype(core, avx512, avx2, user != NULL);
    if (!pick) {
        if (user)
            set_msg(msg, msglen, "openblas: core %s (OPENBLAS_CORETYPE=%s set by the user)", core,
                    user);
        else if (core_blas_pick_coretype(core, 1, 1, 0))
            set_msg(msg, msglen, "openblas: core %s (generic, but this CPU has no AVX2+FMA)", core);
        else
            set_msg(msg, msglen, "openblas: core %s (ok)", core);
        return 1;
    }
    if (argc < 1 || !argv || !argv[0]) {
        set_msg(msg, msglen, "openblas: core %s is a generic fallback; cannot re-exec without argv",
                core);
        return -EINVAL;
    }

    int err = 0;
    if (setenv("OPENBLAS_CORETYPE", pick, 1) != 0 || setenv("ADAPTREE_BLAS_REEXEC", core, 1) != 0)
        err = errno;
    if (!err) {
        fflush(NULL); /* exec discards whatever stdio still buffers */
        execv("/proc/self/exe", argv);
        int err_self = errno;
        execvp(argv[0], argv);
        err = errno;
        set_msg(msg, msglen,
                "openblas: core %s is a generic fallback, but re-executing with "
                "OPENBLAS_CORETYPE=%s failed (/proc/self/exe: %s; %s: %s); continuing on the "
                "slow kernels",
                core, pick, strerror(err_self), argv[0], strerror(err));
    } else {
        set_msg(msg, msglen, "openblas: core %s is a generic fallback; setenv failed: %s", core,
                strerror(err));
    }
    unsetenv("OPENBLAS_CORETYPE");
    unsetenv("ADAPTREE_BLAS_REEXEC");
    return err ? -err : -EIO;
}

double core_blas_sgemm_gflops(int n, int reps)
{
    if (n < 1 || reps < 1)
        return -1.0;
    size_t nn = (size_t)n * (size_t)n;
    if (nn > ((size_t)-1) / (3 * sizeof(float)))
        return -1.0;
    float *a = malloc(3 * nn * sizeof(float)); /* a, b, c: (n, n) each */
    if (!a)
        return -1.0;
    float *b = a + nn, *c = b + nn;
    for (size_t i = 0; i < nn; i++) {
        a[i] = (float)(i % 13) * 0.01f;
        b[i] = (float)(i % 7) * 0.02f;
        c[i] = 0.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int r = 0; r < reps; r++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c,
                    n);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    free(a);
    double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    return s > 0 ? 2.0 * (double)n * (double)n * (double)n * reps / s * 1e-9 : -1.0;
}
