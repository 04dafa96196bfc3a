/* The adapter object: allocation, reference counting, the row copy with the q/k permutation and
 * the finite-value check shared by both loaders, reading adapter files, and format dispatch for
 * loads and probes.
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
#include "adapters/adapter.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
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

#include "core/format/types.h"

adapter *adapter__new(int n_layer, uint32_t dtype, size_t slab_bytes)
{
    adapter *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    a->mods = calloc((size_t)n_layer * CORE_MOD_COUNT, sizeof *a->mods);
    a->slab = malloc(slab_bytes ? slab_bytes : 1);
    if (!a->mods || !a->slab) {
        free(a->mods);
        free(a->slab);
        free(a);
        return NULL;
    }
    a->n_layer = n_layer;
    a->dtype = dtype;
    a->bytes = slab_bytes;
    atomic_init(&a->refs, 1);
    return a;
}

adapter *adapter_ref(adapter *a)
{
    if (a)
        atomic_fetch_add_explicit(&a->refs, 1, memory_order_relaxed);
    return a;
}

void adapter_unref(adapter *a)
{
    if (!a || atomic_fetch_sub_explicit(&a->refs, 1, memory_order_acq_rel) != 1)
        return;
    free(a->mods);
    free(a->slab);
    free(a);
}

static bool finite_elem(uint32_t dtype, const unsigned char *p)
{
    if (dtype == CORE_TYPE_F32) {
        float f;
        memcpy(&f, p, 4);
        return isfinite(f);
    }
    uint16_t h;
    memcpy(&h, p, 2);
    if (dtype == CORE_TYPE_F16)
        return (h & 0x7c00) != 0x7c00;
    return (h & 0x7f80) != 0x7f80; /* bf16 */
}

int adapter__copy_rows(uint32_t dtype, const void *src, void *dst, size_t rows, size_t row_len,
                       int perm_heads, int head_dim, bool transpose)
{
    size_t es = dtype == CORE_TYPE_F32 ? 4 : 2;
    size_t row_bytes = row_len * es;
    const unsigned char *s = src;
    unsigned char *d = dst;
    for (size_t r = 0; r < rows; r++) {
        size_t from = r;
        if (perm_heads > 0) {
            /* GGUF row h*d + 2j + s holds Hugging Face row h*d + s*half + j. */
            size_t h = r / (size_t)head_dim, k = r % (size_t)head_dim;
            size_t half = (size_t)head_dim / 2;
            from = h * head_dim + (k % 2) * half + k / 2;
        }
        const unsigned char *row = s + from * row_bytes;
        for (size_t i = 0; i < row_len; i++)
            if (!finite_elem(dtype, row + i * es))
                return -EINVAL;
        if (!transpose) {
            memcpy(d + r * row_bytes, row, row_bytes);
            continue;
        }
        for (size_t i = 0; i < row_len; i++) /* element (r, i) goes to (i, r) */
            memcpy(d + (i * rows + r) * es, row + i * es, es);
    }
    return 0;
}

uint64_t adapter__hash(uint64_t h, const void *buf, size_t n)
{
    const unsigned char *p = buf;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

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

/* Is path there: 0, -EXDEV when it leads out of root, another negative errno when it is not
 * there (beneath root when set, else as given). */
static int find_file(const char *root, const char *path)
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
    return find_file(root, path) == 0;
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

const char *adapter_targets_str(unsigned targets, char *buf, size_t cap)
{
    size_t k = 0;
    if (cap)
        buf[0] = 0;
    for (int m = 0; m < CORE_MOD_COUNT; m++) {
        if (!(targets & (1u << m)))
            continue;
        int w = snprintf(buf + k, cap > k ? cap - k : 0, "%s%s", k ? "," : "",
                         core_module_name((core_module)m));
        if (w > 0)
            k += (size_t)w;
    }
    return buf;
}

static bool has_suffix(const char *s, const char *suf)
{
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && !strcmp(s + n - m, suf);
}

/* Finds the adapter at path (beneath root when root is set, see open_at_root): ADAPTER_PEFT with
 * its directory in file, ADAPTER_GGUF with the .gguf file's path in file, or 0 with a message in
 * err. file is relative to root as path is; messages name path, never root. */
static adapter_format locate(const char *root, const char *path, char *file, size_t cap, char *err,
                             size_t errlen)
{
    char full[PATH_MAX], real[PATH_MAX];
    struct stat st;
    if (at_root(root, path, full, sizeof full, err, errlen))
        return 0;
    int rc = root ? adapter__resolve_beneath(root, full, real) : 0;
    if (rc == -EXDEV) {
        snprintf(err, errlen, "%s: " ADAPTER__ESCAPES, path);
        return 0;
    }
    if (rc || stat(root ? real : full, &st) != 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(rc ? -rc : errno));
        return 0;
    }
    if (S_ISREG(st.st_mode)) {
        if (has_suffix(path, ".gguf")) {
            snprintf(file, cap, "%s", path);
            return ADAPTER_GGUF;
        }
        snprintf(err, errlen, "%s: not an adapter (expected a .gguf file or a directory)", path);
        return 0;
    }
    if (!S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "%s: not a file or directory", path);
        return 0;
    }
    /* As the registry's scan decides: a config leading out of the root does not count. */
    static const char *const names[2] = {"adapter_config.json", "adapter.gguf"};
    int escapes = -1;
    for (int k = 0; k < 2; k++) {
        snprintf(file, cap, "%s/%s", path, names[k]);
        int found = find_file(root, file);
        if (found == 0) {
            if (k == 0)
                snprintf(file, cap, "%s", path);
            return k == 0 ? ADAPTER_PEFT : ADAPTER_GGUF;
        }
        escapes = escapes < 0 && found == -EXDEV ? k : escapes;
    }
    if (escapes >= 0)
        snprintf(err, errlen, "%s/%s: " ADAPTER__ESCAPES, path, names[escapes]);
    else
        snprintf(err, errlen,
                 "%s: no adapter here (expected adapter_config.json + adapter_model.safetensors, "
                 "or adapter.gguf)",
                 path);
    return 0;
}

/* adapter_load and adapter_load_beneath: root is NULL or a real path. */
static adapter *load_at(const char *root, const char *path, const core_config *cfg, char *err,
                        size_t errlen)
{
    char file[PATH_MAX];
    switch (locate(root, path, file, sizeof file, err, errlen)) {
    case ADAPTER_PEFT:
        return adapter__load_peft(root, file, cfg, err, errlen);
    case ADAPTER_GGUF:
        return adapter__load_gguf(root, file, cfg, err, errlen);
    default:
        return NULL;
    }
}

/* adapter_probe and adapter_probe_beneath: root is NULL or a real path. */
static int probe_at(const char *root, const char *path, const core_config *cfg,
                    adapter_probe_info *out, char *err, size_t errlen)
{
    char file[PATH_MAX];
    memset(out, 0, sizeof *out);
    switch (locate(root, path, file, sizeof file, err, errlen)) {
    case ADAPTER_PEFT:
        return adapter__probe_peft(root, file, cfg, out, err, errlen);
    case ADAPTER_GGUF:
        return adapter__probe_gguf(root, file, cfg, out, err, errlen);
    default:
        return -ENOENT;
    }
}

/* The real path of a registry root into real; rel "" means the root itself. 0, or a negative
 * errno with a message that does not name the root (messages reach API clients). */
static int real_root(const char *root, const char **rel, char *real, char *err, size_t errlen)
{
    if (!realpath(root, real)) {
        int e = errno > 0 ? errno : EIO;
        snprintf(err, errlen, "the registry root: %s", strerror(e));
        return -e;
    }
    if (!**rel)
        *rel = ".";
    return 0;
}

adapter *adapter_load(const char *path, const core_config *cfg, char *err, size_t errlen)
{
    return load_at(NULL, path, cfg, err, errlen);
}

adapter *adapter_load_beneath(const char *root, const char *rel, const core_config *cfg, char *err,
                              size_t errlen)
{
    char real[PATH_MAX];
    if (real_root(root, &rel, real, err, errlen))
        return NULL;
    return load_at(real, rel, cfg, err, errlen);
}

adapter *adapter_load_peft(const char *dir, const core_config *cfg, char *err, size_t errlen)
{
    return adapter__load_peft(NULL, dir, cfg, err, errlen);
}

adapter *adapter_load_gguf(const char *file, const core_config *cfg, char *err, size_t errlen)
{
    return adapter__load_gguf(NULL, file, cfg, err, errlen);
}

int adapter_probe(const char *path, const core_config *cfg, adapter_probe_info *out, char *err,
                  size_t errlen)
{
    return probe_at(NULL, path, cfg, out, err, errlen);
}

int adapter_probe_beneath(const char *root, const char *rel, const core_config *cfg,
                          adapter_probe_info *out, char *err, size_t errlen)
{
    char real[PATH_MAX];
    memset(out, 0, sizeof *out);
    int rc = real_root(root, &rel, real, err, errlen);
    return rc ? rc : probe_at(real, rel, cfg, out, err, errlen);
}
