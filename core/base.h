/* The few primitives every module of adaptree shares, so that each exists once: the error-message
 * formatter, the assert for internal invariants, a monotonic clock, a 64-bit hash, a growing
 * array and a read-only file mapping. Pure functions (and the clock and the mapping); any thread.
 */
#ifndef ADAPTREE_CORE_BASE_H
#define ADAPTREE_CORE_BASE_H

#include <stddef.h>
#include <stdint.h>

/* printf-style message into err (errlen bytes, always NUL-terminated); nothing when err is NULL
 * or errlen is 0. Functions that fail fill a caller's buffer through it. */
void core_errf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* An internal invariant that does not hold is a defect: report where and why on stderr, and
 * abort. Never for input, which gets an error. */
#define CORE_ASSERT(cond, ...)                                                                     \
    do {                                                                                           \
        if (!(cond))                                                                               \
            core__assert_failed(__FILE__, __LINE__, #cond, __VA_ARGS__);                           \
    } while (0)
_Noreturn void core__assert_failed(const char *file, int line, const char *cond, const char *fmt,
                                   ...) __attribute__((format(printf, 4, 5)));

/* Seconds on a monotonic clock (CLOCK_MONOTONIC): for durations and deadlines. */
double core_now(void);

/* FNV-1a, 64 bits, over n bytes, chained through h: core_hash64(CORE_HASH_INIT, ...) starts one.
 * Not for secrets (hash tables, content versions, keys of sets). */
#define CORE_HASH_INIT 0xcbf29ce484222325ULL
uint64_t core_hash64(uint64_t h, const void *p, size_t n);

/* Makes the array *pp (of elem-byte items, capacity *cap items) hold at least need items: to
 * need, or to twice its capacity when that is more, so that appending one at a time costs
 * amortized O(1). 0, or -ENOMEM (the array is unchanged). */
int core_grow(void *pp, size_t *cap, size_t need, size_t elem);

/* Maps the regular file at path read-only (private), *size its bytes: the file parsers' open.
 * NULL with "path: reason" in err when it cannot be opened, is not a regular file, or holds
 * fewer than min_bytes ("path: truncated file: N bytes, <needs> <min_bytes>"). munmap(p, *size)
 * releases it. */
void *core_map_file(const char *path, uint64_t min_bytes, const char *needs, size_t *size,
                    char *err, size_t errlen);

/* The text of the file at path, NUL-terminated (malloc'd), *len its bytes (len may be NULL).
 * NULL with the reason in err ("cannot read it: No such file or directory", "larger than 64
 * KiB", "holds a NUL byte"; the caller names the file) when it cannot be read, holds more than
 * max bytes or holds a NUL. For configuration-sized files. */
char *core_read_text(const char *path, size_t max, size_t *len, char *err, size_t errlen);

#endif
