/* The shared primitives (core/base.h). */
#include "core/base.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

void core_errf(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

void core__assert_failed(const char *file, int line, const char *cond, const char *fmt, ...)
{
    fprintf(stderr, "adaptree: internal error at %s:%d: %s does not hold: ", file, line, cond);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    abort();
}

double core_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

uint64_t core_hash64(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

int core_grow(void *pp, size_t *cap, size_t need, size_t elem)
{
    void **p = pp;
    if (need <= *cap)
        return 0;
    size_t n = *cap <= SIZE_MAX / 2 && 2 * *cap > need ? 2 * *cap : need;
    if (elem && n > SIZE_MAX / elem)
        return -ENOMEM;
    size_t bytes = n * elem;
    void *q = realloc(*p, bytes ? bytes : 1);
    if (!q)
        return -ENOMEM;
    *p = q;
    *cap = n;
    return 0;
}

void *core_map_file(const char *path, uint64_t min_bytes, const char *needs, size_t *size,
                    char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        core_errf(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        core_errf(err, errlen, "%s: not a regular file", path);
        close(fd);
        return NULL;
    }
    if ((uint64_t)st.st_size < min_bytes) {
        core_errf(err, errlen, "%s: truncated file: %lld bytes, %s %llu", path,
                  (long long)st.st_size, needs, (unsigned long long)min_bytes);
        close(fd);
        return NULL;
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) {
        core_errf(err, errlen, "%s: mmap: %s", path, strerror(errno));
        return NULL;
    }
    *size = (size_t)st.st_size;
    return p;
}

char *core_read_text(const char *path, size_t max, size_t *len, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        core_errf(err, errlen, "cannot read it: %s", strerror(errno));
        return NULL;
    }
    char *s = malloc(max + 1);
    size_t n = s ? fread(s, 1, max + 1, f) : 0;
    int bad = !s ? ENOMEM : ferror(f) ? EIO : 0;
    fclose(f);
    if (bad || n > max) {
        if (bad)
            core_errf(err, errlen, "cannot read it: %s", strerror(bad));
        else if (max >= 1 << 20)
            core_errf(err, errlen, "larger than %zu MiB", max >> 20);
        else
            core_errf(err, errlen, "larger than %zu KiB", max >> 10);
        free(s);
        return NULL;
    }
    s[n] = 0;
    if (strlen(s) != n) {
        core_errf(err, errlen, "holds a NUL byte");
        free(s);
        return NULL;
    }
    if (len)
        *len = n;
    return s;
}
