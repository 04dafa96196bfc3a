/* Minimal test harness shared by every C test: TEST() registers a function at load time, the
 * runner (tests/runner.c) runs them all or those whose name contains a filter (each source file's
 * tests in a child process of their own, so a crash or a hang is reported by name), and prints
 * one line per failure with both sides, then "N passed, N failed, N skipped". */
#ifndef ADAPTREE_TEST_H
#define ADAPTREE_TEST_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef void (*test_fn)(void);
void test_register(const char *name, const char *file, test_fn fn);
void test_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Marks the running test skipped (this machine cannot run it: a CPU feature it tests is missing),
 * with the reason; a failure already recorded stands. Use TEST_SKIP, which also returns. */
void test_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Path of a file under the project root (tests run from it): returns its argument. */
const char *test_model_path(void);
/* Nonzero when the default model file is present (tests that need it call TEST_NEED_MODEL). */
int test_have_model(void);
/* The whole file, NUL-terminated (malloc'd; the caller frees), its length in *len (may be NULL);
 * NULL when it cannot be read. */
char *test_read_file(const char *path, size_t *len);
/* The JSON document in the file at path (cJSON_Delete it), NULL when it cannot be read or parsed:
 * the golden tests' fixtures. */
struct cJSON *test_read_json(const char *path);
/* The integers of the JSON array arr into out: how many, or -1 when arr is not an array, holds
 * more than cap items or an item that is not an int32 (a fixture the test cannot use). */
int test_json_ids(const struct cJSON *arr, int32_t *out, int cap);
/* The sha256 of n bytes as 64 lowercase hex digits and a NUL. */
void test_sha256_hex(const void *data, size_t n, char hex[65]);

#define TEST(name)                                                                                 \
    static void name(void);                                                                        \
    __attribute__((constructor)) static void name##_reg(void)                                      \
    {                                                                                              \
        test_register(#name, __FILE__, name);                                                      \
    }                                                                                              \
    static void name(void)

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            test_fail(__FILE__, __LINE__, "CHECK(%s)", #cond);                                     \
            return;                                                                                \
        }                                                                                          \
    } while (0)

#define CHECK_MSG(cond, ...)                                                                       \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            test_fail(__FILE__, __LINE__, __VA_ARGS__);                                            \
            return;                                                                                \
        }                                                                                          \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                                         \
    do {                                                                                           \
        long long a_ = (long long)(a), b_ = (long long)(b);                                        \
        if (a_ != b_) {                                                                            \
            test_fail(__FILE__, __LINE__, "%s == %s: %lld != %lld", #a, #b, a_, b_);               \
            return;                                                                                \
        }                                                                                          \
    } while (0)

#define CHECK_EQ_STR(a, b)                                                                         \
    do {                                                                                           \
        const char *a_ = (a), *b_ = (b);                                                           \
        if (!a_ || !b_ || strcmp(a_, b_) != 0) {                                                   \
            test_fail(__FILE__, __LINE__, "%s == %s: \"%s\" != \"%s\"", #a, #b,                    \
                      a_ ? a_ : "(null)", b_ ? b_ : "(null)");                                     \
            return;                                                                                \
        }                                                                                          \
    } while (0)

#define CHECK_NEAR(a, b, tol)                                                                      \
    do {                                                                                           \
        double a_ = (double)(a), b_ = (double)(b);                                                 \
        if (!(fabs(a_ - b_) <= (tol))) {                                                           \
            test_fail(__FILE__, __LINE__, "%s ~ %s: %.9g vs %.9g (tol %g)", #a, #b, a_, b_,        \
                      (double)(tol));                                                              \
            return;                                                                                \
        }                                                                                          \
    } while (0)

#define TEST_SKIP(...)                                                                             \
    do {                                                                                           \
        test_skip(__VA_ARGS__);                                                                    \
        return;                                                                                    \
    } while (0)

#define TEST_NEED_MODEL()                                                                          \
    do {                                                                                           \
        if (!test_have_model()) {                                                                  \
            test_fail(__FILE__, __LINE__, "model %s missing (run make model)", test_model_path()); \
            return;                                                                                \
        }                                                                                          \
    } while (0)

#endif
