/* The one CPU dispatcher (core/kernels/cpu_internal.h). Detection asks the compiler's runtime
 * (which also checks, through XGETBV, that the OS saves the wider registers) and cpuid for F16C,
 * which the runtime does not report. */
#include "core/kernels/cpu.h"
#include "core/kernels/cpu_internal.h"

#include <cpuid.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

static _Atomic int detected = -1; /* a level, or -1 until the first call */
static _Atomic int forced = -1;   /* a level, or -1: none forced */

static core_cpu_level detect(void)
{
    __builtin_cpu_init();
    unsigned a, b, c, d;
    bool f16c = __get_cpuid(1, &a, &b, &c, &d) && (c >> 29 & 1);
    core_cpu_level l = CORE_CPU_NONE;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c) {
        l = CORE_CPU_AVX2;
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")) {
            l = CORE_CPU_AVX512;
            if (__builtin_cpu_supports("avx512vnni"))
                l = CORE_CPU_VNNI;
        }
    }
    static const struct {
        const char *name;
        core_cpu_level cap;
    } caps[] = {{"none", CORE_CPU_NONE}, {"avx2", CORE_CPU_AVX2}, {"avx512", CORE_CPU_AVX512}};
    const char *env = getenv("ADAPTREE_CPU");
    for (size_t i = 0; env && i < sizeof caps / sizeof *caps; i++)
        if (!strcmp(env, caps[i].name) && l > caps[i].cap)
            l = caps[i].cap;
    return l;
}

core_cpu_level core__cpu_detected(void)
{
    int l = atomic_load_explicit(&detected, memory_order_relaxed);
    if (l < 0) {
        l = (int)detect();
        atomic_store_explicit(&detected, l, memory_order_relaxed);
    }
    return (core_cpu_level)l;
}

core_cpu_level core__cpu_level(void)
{
    int f = atomic_load_explicit(&forced, memory_order_relaxed);
    return f >= 0 ? (core_cpu_level)f : core__cpu_detected();
}

int core__cpu_force(int level)
{
    if (level > CORE_CPU_VNNI || level < -1)
        return -EINVAL;
    if (level > CORE_CPU_PORTABLE && level > (int)core__cpu_detected())
        return -ENOTSUP;
    atomic_store_explicit(&forced, level, memory_order_relaxed);
    return 0;
}

const char *core__cpu_level_name(core_cpu_level l)
{
    static const char *const names[] = {"none", "portable", "AVX2", "AVX-512", "AVX-512 VNNI"};
    return (unsigned)l < sizeof names / sizeof *names ? names[l] : "?";
}

const char *core_cpu_kernels(void)
{
    return core__cpu_level_name(core__cpu_level());
}
