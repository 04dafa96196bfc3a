/* Unit tests for core/kernels/blas.c: the core-type decision table, and the re-exec seen from
 * outside through tests/tools/blas_probe (a real process that calls core_blas_ensure_kernel the way
 * adaptree's main() does). The probe is found in $ADAPTREE_BUILD, else next to this test
 * binary, else in build/. */
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/kernels/blas.h"
#include "tests/test.h"

TEST(blas_pick_coretype_table)
{
    static const struct {
        const char *core;
        int avx512, avx2, user_set;
        const char *want;
    } cases[] = {
        {"Prescott", 1, 1, 0, "SkylakeX"}, /* the Xeon case of docs/ARCHITECTURE.md §6 */
        {"Prescott", 0, 1, 0, "Haswell"},  /* AVX2 without AVX-512 */
        {"prescott", 0, 1, 0, "Haswell"},  /* names compare without case */
        {"Core2", 0, 1, 0, "Haswell"},     /* Penryn/Dunnington/Opteron/Bobcat report Core2 */
        {"Nehalem", 1, 1, 0, "SkylakeX"},  /* Atom/Nano report Nehalem */
        {"Barcelona", 0, 1, 0, "Haswell"}, /* unknown AMD families */
        {"Sandybridge", 0, 1, 0, "Haswell"},
        {"Unknown", 0, 1, 0, "Haswell"},
        {"Prescott", 0, 0, 0, NULL}, /* no AVX2: Prescott may well be right */
        {"Prescott", 1, 0, 0, NULL}, /* AVX-512 flags without AVX2+FMA: leave it */
        {"Prescott", 1, 1, 1, NULL}, /* the user chose OPENBLAS_CORETYPE */
        {"Haswell", 1, 1, 0, NULL},  /* real kernels already */
        {"Zen", 0, 1, 0, NULL},
        {"SkylakeX", 1, 1, 0, NULL},
        {"Cooperlake", 1, 1, 0, NULL},
        {"SapphireRapids", 1, 1, 0, NULL},
        {"Excavator", 0, 1, 0, NULL},      /* has AVX2 itself */
        {"SomeFutureCore", 1, 1, 0, NULL}, /* unknown names are not assumed generic */
        {"", 1, 1, 0, NULL},
        {NULL, 1, 1, 0, NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *got = core_blas_pick_coretype(cases[i].core, cases[i].avx512, cases[i].avx2,
                                                  cases[i].user_set);
        const char *want = cases[i].want;
        CHECK_MSG((got == NULL) == (want == NULL) && (!got || strcmp(got, want) == 0),
                  "case %zu: pick(\"%s\", avx512=%d, avx2=%d, user=%d) = %s, want %s", i,
                  cases[i].core ? cases[i].core : "(null)", cases[i].avx512, cases[i].avx2,
                  cases[i].user_set, got ? got : "NULL", want ? want : "NULL");
    }
}

TEST(blas_corename_and_threads)
{
    const char *name = core_blas_corename();
    CHECK(name && name[0]);
    printf("    core %s, %d threads\n", name, core_blas_threads());
    int before = core_blas_threads();
    CHECK(before >= 1);
    core_blas_set_threads(1);
    CHECK_EQ_INT(core_blas_threads(), 1);
    core_blas_set_threads(before);
    CHECK_EQ_INT(core_blas_threads(), before);
}

/* Path of the probe program; "" when it cannot be located. */
static void probe_path(char *out, size_t len)
{
    const char *dir = getenv("ADAPTREE_BUILD");
    if (dir && *dir) {
        snprintf(out, len, "%s/blas_probe", dir);
        return;
    }
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n > 0) {
        self[n] = '\0';
        snprintf(out, len, "%s/blas_probe", dirname(self));
        if (access(out, X_OK) == 0)
            return;
    }
    snprintf(out, len, "build/blas_probe");
}

struct probe_result {
    char core[64], reexec[64], msg[512];
    int rc, lines;
};

/* Runs the probe with a clean BLAS environment plus env_assign ("VAR=value ..."). Returns 0, or
 * -1 with the reason printed. */
static int run_probe(const char *env_assign, struct probe_result *r)
{
    char path[PATH_MAX + 32], cmd[2 * PATH_MAX];
    probe_path(path, sizeof(path));
    if (access(path, X_OK) != 0) {
        printf("    probe %s: %s (make build/blas_probe, or set ADAPTREE_BUILD)\n", path,
               strerror(errno));
        return -1;
    }
    if (strchr(path, '\'')) {
        printf("    probe path %s contains a quote\n", path);
        return -1;
    }
    snprintf(cmd, sizeof(cmd),
             "env -u OPENBLAS_CORETYPE -u ADAPTREE_BLAS_REEXEC -u ADAPTREE_BLAS_PRETEND_CORE "
             "%s '%s' 2>&1",
             env_assign, path);
    FILE *f = popen(cmd, "r");
    if (!f) {
        printf("    popen: %s\n", strerror(errno));
        return -1;
    }
    memset(r, 0, sizeof(*r));
    r->rc = -999;
    char line[512];
    while (fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\n")] = '\0';
        printf("    | %s\n", line);
        const char *rc = strstr(line, " rc=");
        if (rc && sscanf(line, "core=%63s reexec=%63s", r->core, r->reexec) == 2) {
            r->rc = (int)strtol(rc + 4, NULL, 10);
            r->lines++;
        } else if (strncmp(line, "msg=", 4) == 0) {
            snprintf(r->msg, sizeof(r->msg), "%s", line + 4);
        }
    }
    int status = pclose(f);
    if (status != 0) {
        printf("    probe exited with status %d\n", status);
        return -1;
    }
    return 0;
}

TEST(blas_reexec_replaces_generic_core)
{
    struct probe_result r;
    CHECK(run_probe("ADAPTREE_BLAS_PRETEND_CORE=Prescott", &r) == 0);
    int avx512, avx2;
    core_blas_cpu_features(&avx512, &avx2);
    printf("    cpu: avx512=%d avx2+fma=%d\n", avx512, avx2);
    CHECK_EQ_INT(r.lines, 1); /* one run printed: the first one was replaced, no loop */
    if (!avx2) {
        CHECK_EQ_INT(r.rc, 1);
        CHECK_EQ_STR(r.reexec, "-");
        return;
    }
    CHECK_EQ_INT(r.rc, 0);
    CHECK_EQ_STR(r.reexec, "Prescott");
    CHECK_EQ_STR(r.core, avx512 ? "SkylakeX" : "Haswell");
    CHECK_MSG(strstr(r.msg, "re-executed with OPENBLAS_CORETYPE=") != NULL, "msg: %s", r.msg);
}

TEST(blas_no_reexec_when_user_chose_core)
{
    /* Prescott runs on every x86-64, so forcing it is safe whatever this CPU is. */
    struct probe_result r;
    CHECK(run_probe("OPENBLAS_CORETYPE=Prescott ADAPTREE_BLAS_PRETEND_CORE=Prescott", &r) == 0);
    CHECK_EQ_INT(r.lines, 1);
    CHECK_EQ_INT(r.rc, 1);
    CHECK_EQ_STR(r.reexec, "-");
    CHECK_EQ_STR(r.core, "Prescott");
    CHECK_MSG(strstr(r.msg, "set by the user") != NULL, "msg: %s", r.msg);
}

TEST(blas_no_reexec_when_core_is_real)
{
    struct probe_result r;
    CHECK(run_probe("ADAPTREE_BLAS_PRETEND_CORE=Zen", &r) == 0);
    CHECK_EQ_INT(r.lines, 1);
    CHECK_EQ_INT(r.rc, 1);
    CHECK_EQ_STR(r.reexec, "-");
    CHECK_EQ_STR(r.msg, "openblas: core Zen (ok)");
}
