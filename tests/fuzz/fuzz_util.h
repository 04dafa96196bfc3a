/* Helpers the libFuzzer targets share (each target is one translation unit, so they are static
 * inline here). */
#ifndef ADAPTREE_TESTS_FUZZ_FUZZ_UTIL_H
#define ADAPTREE_TESTS_FUZZ_FUZZ_UTIL_H

#include <stdlib.h>
#include <string.h>

/* The n bytes at p as a NUL-terminated heap string of exactly n + 1 bytes (so that reading past
 * it is an ASan report); aborts when out of memory. */
static inline char *fuzz_dup(const void *p, size_t n)
{
    char *s = malloc(n + 1);
    if (!s)
        abort();
    memcpy(s, p, n);
    s[n] = 0;
    return s;
}

#endif
