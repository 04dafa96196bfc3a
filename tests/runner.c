/* The one test runner: runs every registered TEST (or those whose name contains the filter) in
 * registration order and ends with "N passed, N failed, N skipped".
 *
 * Isolation. The tests of one source file run in a child process of their own (they may share
 * what that file sets up, such as the model that tests/shared_model.c loads once), and the child
 * tells the runner through a pipe which test it starts and how each ended. A test that crashes or
 * hangs (no end within the time-out, ADAPTREE_TEST_TIMEOUT seconds, 300 by default) is reported
 * as failed by name, with the signal or the time-out, and the file's remaining tests go on in a
 * fresh child. The runner itself never runs test code, so nothing a test does (threads, OpenBLAS,
 * a corrupted heap) reaches the next file. --no-fork runs everything in this process, for a
 * debugger.
 *
 * usage: test_unit [--no-fork] [FILTER]
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "test.h"

typedef struct test_entry {
    const char *name, *file;
    test_fn fn;
} test_entry;

static test_entry *tests;
static int n_tests, cap_tests;

enum { RESULT_PASS = 0, RESULT_FAIL = 1, RESULT_SKIP = 2 };
static int current; /* RESULT_* of the test running in this process */

void test_register(const char *name, const char *file, test_fn fn)
{
    if (n_tests == cap_tests) {
        int cap = cap_tests ? 2 * cap_tests : 256;
        test_entry *v = realloc(tests, (size_t)cap * sizeof *v);
        if (!v) {
            fprintf(stderr, "test runner: out of memory registering %s\n", name);
            exit(2);
        }
        tests = v;
        cap_tests = cap;
    }
    tests[n_tests++] = (test_entry){name, file, fn};
}

void test_fail(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    fprintf(stdout, "    FAIL %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stdout, fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
    current = RESULT_FAIL;
}

void test_skip(const char *fmt, ...)
{
    va_list ap;
    fprintf(stdout, "    skipped: ");
    va_start(ap, fmt);
    vfprintf(stdout, fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
    if (current != RESULT_FAIL)
        current = RESULT_SKIP;
}

const char *test_model_path(void)
{
    const char *p = getenv("ADAPTREE_MODEL");
    return p ? p : "models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

int test_have_model(void)
{
    return access(test_model_path(), R_OK) == 0;
}

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static const char *const result_word[] = {"ok  ", "FAIL", "skip"};

/* Runs test i here and prints its line; its RESULT_*. */
static int run_here(int i)
{
    current = RESULT_PASS;
    double t0 = now_ms();
    tests[i].fn();
    printf("%s %s (%.0f ms)\n", result_word[current], tests[i].name, now_ms() - t0);
    fflush(stdout);
    return current;
}

/* ---- the child's side ------------------------------------------------------------------------ */

/* Writes a whole line to the pipe (the runner reads it line by line). */
static void tell(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tell(int fd, const char *fmt, ...)
{
    char line[64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    for (int off = 0; off < n;) {
        ssize_t k = write(fd, line + off, (size_t)(n - off));
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            _exit(3);
        off += (int)k;
    }
}

/* The child: runs the selected tests of todo[from..n) and says "S i" before and "R i result"
 * after each. */
static void child_main(int fd, const int *todo, int from, int n)
{
    for (int k = from; k < n; k++) {
        tell(fd, "S %d\n", todo[k]);
        int r = run_here(todo[k]);
        tell(fd, "R %d %d\n", todo[k], r);
    }
    fflush(stdout);
    _exit(0);
}

/* ---- the runner's side ----------------------------------------------------------------------- */

typedef struct totals {
    int passed, failed, skipped;
} totals;

static void count(totals *t, int r)
{
    t->passed += r == RESULT_PASS;
    t->failed += r == RESULT_FAIL;
    t->skipped += r == RESULT_SKIP;
}

/* Reads what the child says until it exits or a test outlives timeout_ms. Returns the index in
 * todo of the test to resume at (n when all were run), after counting and reporting. */
static int watch_child(pid_t pid, int fd, const int *todo, int from, int n, double timeout_ms,
                       totals *t)
{
    char buf[256];
    size_t len = 0;
    int running = -1; /* index in todo of the test started and not ended */
    int next = from;
    double started = now_ms();
    bool eof = false;
    while (!eof) {
        double left = timeout_ms - (now_ms() - started);
        if (running >= 0 && left <= 0) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            printf("FAIL %s (timed out after %.0f s; killed)\n", tests[todo[running]].name,
                   timeout_ms / 1e3);
            count(t, RESULT_FAIL);
            return running + 1;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int rc = poll(&p, 1, running >= 0 ? (int)(left < 1000 ? left + 1 : 1000) : 1000);
        if (rc < 0 && errno != EINTR)
            break;
        if (rc <= 0)
            continue;
        ssize_t k = read(fd, buf + len, sizeof buf - 1 - len);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            eof = true;
            break;
        }
        len += (size_t)k;
        buf[len] = 0;
        char *line = buf, *nl;
        while ((nl = strchr(line, '\n'))) {
            *nl = 0;
            int idx, r;
            if (sscanf(line, "S %d", &idx) == 1) {
                running = next;
                started = now_ms();
            } else if (sscanf(line, "R %d %d", &idx, &r) == 2) {
                count(t, r);
                running = -1;
                next++;
            }
            line = nl + 1;
        }
        len = strlen(line);
        memmove(buf, line, len + 1);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (running >= 0) {
        if (WIFSIGNALED(status))
            printf("FAIL %s (crashed: %s)\n", tests[todo[running]].name,
                   strsignal(WTERMSIG(status)));
        else
            printf("FAIL %s (the test process exited with %d in the middle of it)\n",
                   tests[todo[running]].name, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        count(t, RESULT_FAIL);
        return running + 1;
    }
    if (next < n) { /* died between tests */
        printf("FAIL %s (the test process ended before it started)\n", tests[todo[next]].name);
        count(t, RESULT_FAIL);
        return next + 1;
    }
    return n;
}

/* Runs todo[0..n) (one file's tests) in children until every one has a result. */
static void run_file(const int *todo, int n, double timeout_ms, totals *t)
{
    for (int from = 0; from < n;) {
        int pfd[2];
        fflush(stdout);
        if (pipe(pfd) != 0) {
            perror("test runner: pipe");
            exit(2);
        }
        pid_t pid = fork();
        if (pid < 0) {
            perror("test runner: fork");
            exit(2);
        }
        if (pid == 0) {
            close(pfd[0]);
            child_main(pfd[1], todo, from, n);
        }
        close(pfd[1]);
        from = watch_child(pid, pfd[0], todo, from, n, timeout_ms, t);
        close(pfd[0]);
    }
}

int main(int argc, char **argv)
{
    bool fork_tests = true;
    const char *filter = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--no-fork"))
            fork_tests = false;
        else
            filter = argv[i];
    }
    const char *to = getenv("ADAPTREE_TEST_TIMEOUT");
    double timeout_ms = (to && atof(to) > 0 ? atof(to) : 300.0) * 1e3;
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    totals t = {0, 0, 0};
    int *todo = malloc((size_t)(n_tests ? n_tests : 1) * sizeof *todo);
    if (!todo)
        return 2;
    for (int i = 0; i < n_tests;) {
        /* one file's tests: those registered next to each other from the same source */
        int n = 0, j = i;
        for (; j < n_tests && !strcmp(tests[j].file, tests[i].file); j++)
            if (!filter || strstr(tests[j].name, filter))
                todo[n++] = j;
        if (n && fork_tests)
            run_file(todo, n, timeout_ms, &t);
        for (int k = 0; k < n && !fork_tests; k++)
            count(&t, run_here(todo[k]));
        i = j;
    }
    free(todo);
    printf("%d passed, %d failed, %d skipped\n", t.passed, t.failed, t.skipped);
    return t.failed ? 1 : 0;
}

char *test_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (buf = malloc((size_t)n + 1)) && fread(buf, 1, (size_t)n, f) == (size_t)n) {
        buf[n] = '\0';
        if (len)
            *len = (size_t)n;
    } else {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    return buf;
}
