/* What the bench programs share (tests/bench/bench_core.c, tests/bench/bench_spec.c): the clock,
 * the CPU's name, and writing a JSON document. */
#ifndef ADAPTREE_TESTS_BENCH_UTIL_H
#define ADAPTREE_TESTS_BENCH_UTIL_H

#include <cJSON.h>
#include <stddef.h>

/* Monotonic seconds. */
double bench_now(void);

/* The CPU's "model name" ("unknown" when /proc/cpuinfo has none) into name, and its family and
 * model (-1 when absent); family and model may be NULL. */
void bench_cpu(char *name, size_t cap, int *family, int *model);

/* Writes doc to path through a temporary file renamed into place when complete; 0, or -1 with
 * the reason on stderr. */
int bench_json_write(const char *path, const cJSON *doc);

#endif
