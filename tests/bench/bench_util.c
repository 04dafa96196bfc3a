/* What the bench programs share (tests/bench/bench_util.h). */
#include "tests/bench/bench_util.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

double bench_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

void bench_cpu(char *name, size_t cap, int *family, int *model)
{
    int fam = -1, mod = -1;
    snprintf(name, cap, "unknown");
    bool have_name = false;
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    while (f && fgets(line, sizeof line, f) && !(have_name && fam >= 0 && mod >= 0)) {
        char *colon = strchr(line, ':');
        if (!colon)
            continue;
        char *v = colon + 1 + strspn(colon + 1, " \t");
        v[strcspn(v, "\n")] = 0;
        if (!have_name && !strncmp(line, "model name", 10)) {
            snprintf(name, cap, "%s", v);
            have_name = true;
        } else if (fam < 0 && !strncmp(line, "cpu family", 10)) {
            fam = (int)strtol(v, NULL, 10);
        } else if (mod < 0 && !strncmp(line, "model\t", 6)) {
            mod = (int)strtol(v, NULL, 10);
        }
    }
    if (f)
        fclose(f);
    if (family)
        *family = fam;
    if (model)
        *model = mod;
}

int bench_json_write(const char *path, const cJSON *doc)
{
    char *text = cJSON_Print(doc), tmp[4096];
    if (!text || snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
        fprintf(stderr, "bench: cannot print the JSON for %s\n", path);
        free(text);
        return -1;
    }
    FILE *f = fopen(tmp, "w");
    int rc = f && fputs(text, f) >= 0 && fputc('\n', f) != EOF ? 0 : -1;
    if (f && fclose(f))
        rc = -1;
    if (rc == 0 && rename(tmp, path))
        rc = -1;
    if (rc) {
        fprintf(stderr, "bench: cannot write %s: %s\n", path, strerror(errno));
        remove(tmp);
    }
    free(text);
    return rc;
}
