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
#include <stdint.h>
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

/* sha256 (FIPS 180-4) of fixtures and models. */
static const uint32_t sha_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

static uint32_t ror(uint32_t x, int n)
{
    return x >> n | x << (32 - n);
}

static void sha_block(uint32_t h[8], const uint8_t *p)
{
    uint32_t w[64], v[8];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++)
        w[i] = w[i - 16] + (ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >> 3)) + w[i - 7] +
               (ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >> 10));
    memcpy(v, h, sizeof v);
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = v[7] + (ror(v[4], 6) ^ ror(v[4], 11) ^ ror(v[4], 25)) +
                      ((v[4] & v[5]) ^ (~v[4] & v[6])) + sha_k[i] + w[i];
        uint32_t t2 = (ror(v[0], 2) ^ ror(v[0], 13) ^ ror(v[0], 22)) +
                      ((v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]));
        memmove(v + 1, v, 7 * sizeof *v);
        v[4] += t1;
        v[0] = t1 + t2;
    }
    for (int i = 0; i < 8; i++)
        h[i] += v[i];
}

void test_sha256_hex(const void *data, size_t n, char hex[65])
{
    const uint8_t *s = data;
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                     0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    uint8_t tail[128] = {0};
    size_t full = n / 64 * 64, rest = n - full;
    for (size_t i = 0; i < full; i += 64)
        sha_block(h, s + i);
    memcpy(tail, s + full, rest);
    tail[rest] = 0x80;
    size_t len = rest + 9 <= 64 ? 64 : 128;
    uint64_t bits = (uint64_t)n * 8;
    for (int i = 0; i < 8; i++)
        tail[len - 1 - (size_t)i] = (uint8_t)(bits >> (8 * i));
    for (size_t i = 0; i < len; i += 64)
        sha_block(h, tail + i);
    for (int i = 0; i < 8; i++)
        snprintf(hex + 8 * i, 9, "%08x", h[i]);
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
