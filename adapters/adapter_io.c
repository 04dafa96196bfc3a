/* Adapter files: the one confined open every adapter file goes through, and reading a file
 * whole or a part of it, refusing a file that changes while it is read. The format files
 * (peft.c, gguf_lora.c), the loader table (loaders.c) and the registry's listing use it; it
 * knows no format.
 *
 * Adapter files are read into memory with pread, never mapped: a user may overwrite one in place
 * (cp truncates, then writes) while it is loaded or probed, and touching a mapped page past the
 * new end of the file raises SIGBUS, which would kill the server. A read instead sees the file
 * end early (or go on past the size it had), and the load fails with "file changed while
 * reading, will retry": the registry keeps the previous version and loads again on the change
 * event or rescan that the rewrite causes.
 *
 * Confinement. Every adapter file goes through one open (open_at_root). From the command line
 * (no root) it opens the path given, wherever symlinks lead. For the registry (a root) a file is
 * opened only when its realpath lies beneath the root; the resolved path is opened refusing any
 * symlink (a component swapped for one since the realpath), and the descriptor is checked through
 * /proc/self/fd: that check looks at what was actually opened, so no swap can escape, and it
 * fails closed (without /proc every confined open is refused). Resolving with realpath keeps the
 * registry's rule for directories, symlinks with an absolute target inside the root included,
 * which openat2's RESOLVE_BENEATH alone would refuse. A hard link inside the root is the file
 * itself and is read. Loaders name files by the path they were given, relative to the root for
 * the registry, so messages that reach API clients never hold the server's own paths. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#if defined(__has_include)
#if __has_include(<linux/openat2.h>)
#include <linux/openat2.h>
#endif
#endif

#include "adapters/adapter_internal.h"

/* ---- confinement ------------------------------------------------------------------------- */

#define OPEN_FLAGS (O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)

/* real (an absolute path without symlinks) is root or lies beneath it. */
static bool beneath(const char *root, const char *real)
{
    size_t n = strlen(root);
    while (n > 0 && root[n - 1] == '/')
        n--;
    return strncmp(real, root, n) == 0 && (real[n] == '/' || real[n] == 0);
}

int adapter__resolve_beneath(const char *root, const char *path, char *real)
{
    char tmp[PATH_MAX];
    if (!realpath(path, tmp)) {
        int e = errno;
        return e > 0 ? -e : -EIO;
    }
    if (!beneath(root, tmp))
        return -EXDEV;
    memcpy(real, tmp, strlen(tmp) + 1);
    return 0;
}

int adapter__fd_beneath(int fd, const char *root, const char *name, char *err, size_t errlen)
{
    char link[64], real[PATH_MAX + 1];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, real, sizeof real);
    if (n < 0 || (size_t)n >= sizeof real) {
        snprintf(err, errlen, "%s: cannot tell where the opened file lies (%s), refused", name,
                 n < 0 ? strerror(errno) : "path too long");
        return -EACCES;
    }
    real[n] = 0;
    if (!beneath(root, real)) {
        snprintf(err, errlen, "%s: " ADAPTER__ESCAPES, name);
        return -EXDEV;
    }
    return 0;
}

/* Writes root/path (path alone without a root) into out: 0, or -ENAMETOOLONG with a message
 * naming path. */
static int at_root(const char *root, const char *path, char *out, size_t cap, char *err,
                   size_t errlen)
{
    int w = root ? snprintf(out, cap, "%s/%s", root, path) : snprintf(out, cap, "%s", path);
    if (w < 0 || (size_t)w >= cap) {
        snprintf(err, errlen, "%s: path too long", path);
        return -ENAMETOOLONG;
    }
    return 0;
}

int adapter__find_file(const char *root, const char *path)
{
    char full[PATH_MAX], real[PATH_MAX];
    if (at_root(root, path, full, sizeof full, NULL, 0))
        return -ENAMETOOLONG;
    if (root)
        return adapter__resolve_beneath(root, full, real);
    return access(full, F_OK) == 0 ? 0 : -ENOENT;
}

bool adapter__file_exists(const char *root, const char *path)
{
    return adapter__find_file(root, path) == 0;
}

int adapter__stat_at(const char *root, const char *path, struct stat *st, char *err, size_t errlen)
{
    char full[PATH_MAX], real[PATH_MAX];
    int rc = at_root(root, path, full, sizeof full, err, errlen);
    if (rc)
        return rc;
    rc = root ? adapter__resolve_beneath(root, full, real) : 0;
    if (rc == -EXDEV) {
        snprintf(err, errlen, "%s: " ADAPTER__ESCAPES, path);
        return rc;
    }
    if (!rc && stat(root ? real : full, st) != 0)
        rc = errno > 0 ? -errno : -EIO;
    if (rc)
        snprintf(err, errlen, "%s: %s", path, strerror(-rc));
    return rc;
}

/* Opens real (realpath's output: no symlinks) for reading, refusing a symlink met on the way
 * (ELOOP): with openat2's RESOLVE_NO_SYMLINKS where the kernel has it, so that a component
 * swapped for a symlink since the realpath is refused before anything it points to is opened;
 * else with O_NOFOLLOW, which covers the last component only (the descriptor check after it
 * covers the rest). */
static int open_no_symlinks(const char *real)
{
#if defined(SYS_openat2) && defined(RESOLVE_NO_SYMLINKS)
    struct open_how how = {.flags = OPEN_FLAGS | O_NOFOLLOW, .resolve = RESOLVE_NO_SYMLINKS};
    long fd = syscall(SYS_openat2, AT_FDCWD, real, &how, sizeof how);
    if (fd >= 0 || (errno != ENOSYS && errno != EPERM)) /* EPERM: a seccomp filter */
        return (int)fd;
#endif
    return open(real, OPEN_FLAGS | O_NOFOLLOW);
}

/* Opens path for reading: as given without a root, else root/path only if it resolves beneath
 * root, without following a symlink swapped in since (open_no_symlinks), and then the descriptor
 * is checked for where the file it opened actually lies: that last check alone makes the open
 * race-free. The descriptor, or a negative errno with a message naming path. */
static int open_at_root(const char *root, const char *path, char *err, size_t errlen)
{
    char full[PATH_MAX], real[PATH_MAX];
    int rc = at_root(root, path, full, sizeof full, err, errlen);
    if (rc)
        return rc;
    if (root && (rc = adapter__resolve_beneath(root, full, real)) != 0) {
        if (rc == -EXDEV)
            snprintf(err, errlen, "%s: " ADAPTER__ESCAPES, path);
        else
            snprintf(err, errlen, "%s: %s", path, strerror(-rc));
        return rc;
    }
    int fd = root ? open_no_symlinks(real) : open(full, OPEN_FLAGS);
    if (fd < 0) {
        int e = errno > 0 ? errno : EIO;
        snprintf(err, errlen, "%s: %s", path, strerror(e));
        return -e;
    }
    if (root && (rc = adapter__fd_beneath(fd, root, path, err, errlen)) != 0) {
        close(fd);
        return rc;
    }
    return fd;
}

/* ---- reading files ------------------------------------------------------------------------ */

#define CHANGED "file changed while reading, will retry"

/* Opens a regular file of at most ADAPTER_FILE_MAX bytes (open_at_root) into *fd with its *st:
 * 0, or a negative errno with a message. O_NONBLOCK only so that a FIFO in the tree cannot block
 * the open; regular files ignore it. */
static int open_stat(const char *root, const char *path, int *fd, struct stat *st, char *err,
                     size_t errlen)
{
    memset(st, 0, sizeof *st);
    *fd = open_at_root(root, path, err, errlen);
    if (*fd < 0) {
        int e = *fd;
        *fd = -1;
        return e;
    }
    int rc = 0;
    if (fstat(*fd, st) != 0 || !S_ISREG(st->st_mode)) {
        snprintf(err, errlen, "%s: not a regular file", path);
        rc = -EINVAL;
    } else if ((uint64_t)st->st_size > ADAPTER_FILE_MAX) {
        snprintf(err, errlen, "%s: %lld bytes; adapter files over %llu GiB are refused", path,
                 (long long)st->st_size, (unsigned long long)(ADAPTER_FILE_MAX >> 30));
        rc = -EFBIG;
    }
    if (rc) {
        close(*fd);
        *fd = -1;
    }
    return rc;
}

int adapter__file_open(const char *root, const char *path, uint64_t *size, char *err, size_t errlen)
{
    struct stat st;
    int fd;
    int rc = open_stat(root, path, &fd, &st, err, errlen);
    if (rc)
        return rc;
    *size = (uint64_t)st.st_size;
    return fd;
}

int adapter__file_read(int fd, const char *path, void *buf, size_t n, uint64_t off, char *err,
                       size_t errlen)
{
    unsigned char *p = buf;
    while (n > 0) {
        ssize_t k = pread(fd, p, n, (off_t)off);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            int e = errno;
            e = e > 0 ? e : EIO;
            snprintf(err, errlen, "%s: %s", path, strerror(e));
            return -e;
        }
        if (k == 0) {
            snprintf(err, errlen, "%s: " CHANGED " (it now ends at byte %llu)", path,
                     (unsigned long long)off);
            return -EAGAIN;
        }
        p += k;
        n -= (size_t)k;
        off += (uint64_t)k;
    }
    return 0;
}

int adapter__read_fd(int fd, const char *path, uint64_t size, void **out, size_t *len, char *err,
                     size_t errlen)
{
    *out = NULL;
    *len = 0;
    if (size > ADAPTER_FILE_MAX || size >= SIZE_MAX) {
        snprintf(err, errlen, "%s: %llu bytes; adapter files over %llu GiB are refused", path,
                 (unsigned long long)size, (unsigned long long)(ADAPTER_FILE_MAX >> 30));
        return -EFBIG;
    }
    void *buf = malloc(size ? (size_t)size : 1);
    if (!buf) {
        snprintf(err, errlen, "%s: out of memory for %llu bytes", path, (unsigned long long)size);
        return -ENOMEM;
    }
    int rc = adapter__file_read(fd, path, buf, (size_t)size, 0, err, errlen);
    /* A file that goes on past its size was rewritten meanwhile: what was read may mix both. */
    unsigned char extra;
    ssize_t k = 0;
    while (rc == 0 && (k = pread(fd, &extra, 1, (off_t)size)) < 0 && errno == EINTR)
        ;
    if (rc == 0 && k != 0) {
        if (k > 0)
            snprintf(err, errlen, "%s: " CHANGED " (it grew past the %llu bytes it had)", path,
                     (unsigned long long)size);
        else
            snprintf(err, errlen, "%s: %s", path, strerror(errno));
        rc = k > 0 ? -EAGAIN : -EIO;
    }
    if (rc) {
        free(buf);
        return rc;
    }
    *out = buf;
    *len = (size_t)size;
    return 0;
}

static bool same_time(struct timespec a, struct timespec b)
{
    return a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec;
}

int adapter__read_file(const char *root, const char *path, void **out, size_t *len, char *err,
                       size_t errlen)
{
    struct stat before, after;
    *out = NULL;
    *len = 0;
    int fd;
    int rc = open_stat(root, path, &fd, &before, err, errlen);
    if (rc)
        return rc;
    rc = adapter__read_fd(fd, path, (uint64_t)before.st_size, out, len, err, errlen);
    /* Rewritten to the same size while read: the size checks cannot see it, the times can. */
    if (rc == 0 &&
        (fstat(fd, &after) != 0 || after.st_size != before.st_size ||
         !same_time(after.st_mtim, before.st_mtim) || !same_time(after.st_ctim, before.st_ctim))) {
        snprintf(err, errlen, "%s: " CHANGED " (it was modified meanwhile)", path);
        free(*out);
        *out = NULL;
        *len = 0;
        rc = -EAGAIN;
    }
    close(fd);
    return rc;
}

int adapter__read_more(int fd, const char *path, unsigned char **buf, size_t *have, size_t want,
                       char *err, size_t errlen)
{
    if (want <= *have)
        return 0;
    unsigned char *p = realloc(*buf, want);
    if (!p) {
        snprintf(err, errlen, "%s: out of memory for %zu bytes", path, want);
        return -ENOMEM;
    }
    *buf = p;
    int rc = adapter__file_read(fd, path, p + *have, want - *have, *have, err, errlen);
    if (rc == 0)
        *have = want;
    return rc;
}
