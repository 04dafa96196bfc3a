/* Tests for the test runner (tests/runner.c), through tests/tools/runner_probe: a real process
 * running the runner over tests that pass, fail, skip, crash, hang and exit. Each gets its line,
 * the crash, the hang (at ADAPTREE_TEST_TIMEOUT, 1 s here) and the exit are failures named by
 * test, the tests after them run, and the totals count every one. The probe is found in
 * $ADAPTREE_BUILD, else next to this test binary. */
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/test.h"

static void probe_path(char *out, size_t len)
{
    const char *dir = getenv("ADAPTREE_BUILD");
    if (dir && *dir) {
        snprintf(out, len, "%s/runner_probe", dir);
        return;
    }
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n > 0) {
        self[n] = '\0';
        snprintf(out, len, "%s/runner_probe", dirname(self));
        return;
    }
    snprintf(out, len, "build/runner_probe");
}

TEST(runner_reports_crashes_hangs_and_skips_by_name)
{
    char path[PATH_MAX + 32], cmd[PATH_MAX + 128];
    probe_path(path, sizeof path);
    CHECK_MSG(access(path, X_OK) == 0, "probe %s: %s (make %s)", path, strerror(errno), path);
    CHECK(!strchr(path, '\''));
    snprintf(cmd, sizeof cmd, "ADAPTREE_TEST_TIMEOUT=1 '%s' 2>&1; echo \"exit=$?\"", path);
    FILE *f = popen(cmd, "r");
    CHECK(f);
    char out[8192] = "", line[512];
    size_t n = 0;
    while (fgets(line, sizeof line, f)) {
        printf("    | %s", line);
        size_t k = strlen(line);
        if (n + k < sizeof out) {
            memcpy(out + n, line, k + 1);
            n += k;
        }
    }
    pclose(f);
    static const char *const want[] = {
        "ok   probe_passes (",
        "FAIL probe_fails (",
        "skip probe_skips (",
        "FAIL probe_crashes (crashed: Aborted)",
        "ok   probe_after_the_crash (",
        "FAIL probe_hangs (timed out after 1 s; killed)",
        "ok   probe_after_the_hang (",
        "FAIL probe_exits (the test process exited with 7 in the middle of it)",
        "ok   probe_last (",
        "4 passed, 4 failed, 1 skipped\n",
        "exit=1\n",
    };
    const char *at = out;
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        const char *hit = strstr(at, want[i]);
        CHECK_MSG(hit, "'%s' missing (or out of order) in the probe's output", want[i]);
        at = hit + strlen(want[i]);
    }
}
