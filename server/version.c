/* The build report (server/version.h): the Makefile's generated constants and what the CPU
 * dispatcher and OpenBLAS chose on this machine. */
#include "server/version.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/kernels/blas.h"
#include "core/kernels/cpu.h"

static char kernels[96];
static pthread_once_t kernels_once = PTHREAD_ONCE_INIT;

static void fill_kernels(void)
{
    const char *blas = core_blas_corename();
    snprintf(kernels, sizeof kernels, "%s, OpenBLAS %s", core_cpu_kernels(),
             blas && blas[0] ? blas : "unknown");
}

const char *srv_version_kernels(void)
{
    pthread_once(&kernels_once, fill_kernels);
    return kernels;
}

static const char *or_none(const char *s)
{
    return s[0] ? s : "none";
}

void srv_version_text(srv_buf *b)
{
    const char *cap = getenv("ADAPTREE_CPU");
    srv_buf_printf(b,
                   "adaptree %s\n"
                   "commit: %s\n"
                   "compiler: %s\n"
                   "optimization: %s\n"
                   "sanitizers: %s\n"
                   "cflags: %s\n"
                   "kernels: %s%s%s%s\n",
                   srv_build_version, srv_build_commit, srv_build_compiler, or_none(srv_build_opt),
                   or_none(srv_build_sanitizers), srv_build_cflags, srv_version_kernels(),
                   cap ? " (ADAPTREE_CPU=" : "", cap ? cap : "", cap ? ")" : "");
}

void srv_version_json(srv_buf *b)
{
    static const struct {
        const char *key, *value;
    } fields[] = {
        {"version", srv_build_version},   {"commit", srv_build_commit},
        {"compiler", srv_build_compiler}, {"optimization", srv_build_opt},
        {"cflags", srv_build_cflags},
    };
    srv_buf_putc(b, '{');
    for (size_t i = 0; i < sizeof fields / sizeof *fields; i++) {
        srv_buf_printf(b, "%s\"%s\":", i ? "," : "", fields[i].key);
        srv_buf_json_cstr(b, fields[i].value);
    }
    /* the sanitizers as a list, [] for none */
    srv_buf_puts(b, ",\"sanitizers\":[");
    const char *s = srv_build_sanitizers;
    while (*s) {
        size_t n = strcspn(s, ",");
        srv_buf_printf(b, "%s\"%.*s\"", s == srv_build_sanitizers ? "" : ",", (int)n, s);
        s += n + (s[n] == ',');
    }
    srv_buf_puts(b, "],\"kernels\":");
    srv_buf_json_cstr(b, srv_version_kernels());
    srv_buf_puts(b, ",\"cpu\":");
    srv_buf_json_cstr(b, core_cpu_kernels());
    srv_buf_puts(b, ",\"blas\":");
    srv_buf_json_cstr(b, core_blas_corename());
    srv_buf_puts(b, ",\"adaptree_cpu\":");
    srv_buf_json_cstr(b, getenv("ADAPTREE_CPU"));
    srv_buf_putc(b, '}');
}
