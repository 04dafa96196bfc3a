/* Reading adapter files (adapters/adapter_io.c): a file that changes size between its stat and its
 * read, or while it is read, is refused with "file changed while reading, will retry"; files
 * over 4 GiB are refused before anything is allocated; a FIFO is refused without blocking, with
 * messages naming the path given (command line) or the path beneath the root (registry); and a
 * load's content hash covers the same bytes as it did when files were mapped (the config text,
 * then the weights file). */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "adapter_testutil.h"
#include "adapters/adapter.h"
#include "adapters/adapter_internal.h"
#include "core/base.h"
#include "tests/test.h"

#define CHANGED "file changed while reading, will retry"

/* Writes n bytes of a pattern to path; 0 or -1. */
static int write_pattern(const char *path, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    for (size_t i = 0; i < n; i++)
        fputc((int)(i * 31 % 251), f);
    return fclose(f) ? -1 : 0;
}

/* The whole file at path in a new buffer (*len bytes), or NULL. */
static unsigned char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *p = malloc(n > 0 ? (size_t)n : 1);
    if (p && n > 0 && fread(p, 1, (size_t)n, f) != (size_t)n) {
        free(p);
        p = NULL;
    }
    fclose(f);
    *len = p ? (size_t)n : 0;
    return p;
}

/* A file whose size is not the one stat gave (it was truncated or grew in between) is refused
 * with the retry message, and nothing is returned; the right size reads every byte. */
TEST(adapter_read_refuses_a_file_that_changed)
{
    const char *tmp = tu_tmpdir();
    char path[256], err[512] = "";
    snprintf(path, sizeof path, "%s/w.safetensors", tmp);
    CHECK(write_pattern(path, 1000) == 0);
    int fd = open(path, O_RDONLY);
    CHECK(fd >= 0);
    void *buf = (void *)1;
    size_t len = 7;
    /* Truncated after the stat: the read ends early. */
    int rc = adapter__read_fd(fd, path, 2000, &buf, &len, err, sizeof err);
    CHECK_MSG(rc == -EAGAIN && strstr(err, CHANGED) && strstr(err, path), "rc %d: %s", rc, err);
    CHECK(buf == NULL && len == 0);
    /* Grown after the stat: more follows the size it had. */
    err[0] = 0;
    rc = adapter__read_fd(fd, path, 999, &buf, &len, err, sizeof err);
    CHECK_MSG(rc == -EAGAIN && strstr(err, CHANGED) && strstr(err, "grew"), "rc %d: %s", rc, err);
    CHECK(buf == NULL && len == 0);
    rc = adapter__read_fd(fd, path, 1000, &buf, &len, err, sizeof err);
    CHECK_MSG(rc == 0 && len == 1000, "rc %d len %zu: %s", rc, len, err);
    int same = 1;
    for (size_t i = 0; i < len; i++)
        same &= ((unsigned char *)buf)[i] == (unsigned char)(i * 31 % 251);
    free(buf);
    CHECK(same);
    /* A header read past the end. */
    unsigned char head[64];
    err[0] = 0;
    CHECK_EQ_INT(adapter__file_read(fd, path, head, 64, 980, err, sizeof err), -EAGAIN);
    CHECK_MSG(strstr(err, CHANGED), "%s", err);
    CHECK_EQ_INT(adapter__file_read(fd, path, head, 20, 980, err, sizeof err), 0);
    close(fd);
    /* The whole-file read of an unchanged file. */
    CHECK_EQ_INT(adapter__read_file(NULL, path, &buf, &len, err, sizeof err), 0);
    CHECK_EQ_INT(len, 1000);
    free(buf);
    /* Not there, not a file. */
    CHECK_EQ_INT(adapter__read_file(NULL, tmp, &buf, &len, err, sizeof err), -EINVAL);
    CHECK_MSG(strstr(err, "not a regular file"), "%s", err);
    snprintf(path, sizeof path, "%s/none", tmp);
    CHECK_EQ_INT(adapter__read_file(NULL, path, &buf, &len, err, sizeof err), -ENOENT);
    tu_rmrf(tmp);
}

/* Over 4 GiB (a sparse file: nothing is written or allocated) is refused with the limit named. */
TEST(adapter_read_refuses_files_over_4_gib)
{
    const char *tmp = tu_tmpdir();
    char path[256], err[512] = "";
    snprintf(path, sizeof path, "%s/huge.gguf", tmp);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0);
    int rc = ftruncate(fd, (off_t)ADAPTER_FILE_MAX + 1);
    close(fd);
    CHECK(rc == 0);
    void *buf = NULL;
    size_t len = 0;
    CHECK_EQ_INT(adapter__read_file(NULL, path, &buf, &len, err, sizeof err), -EFBIG);
    CHECK_MSG(strstr(err, "over 4 GiB"), "%s", err);
    CHECK(buf == NULL);
    uint64_t size;
    CHECK_EQ_INT(adapter__file_open(NULL, path, &size, err, sizeof err), -EFBIG);
    core_config cfg = tu_config();
    adapter *a = adapter_load(path, &cfg, err, sizeof err);
    CHECK(!a);
    CHECK_MSG(strstr(err, "over 4 GiB"), "%s", err);
    adapter_probe_info info;
    CHECK(adapter_probe(path, &cfg, &info, err, sizeof err) < 0);
    CHECK_MSG(strstr(err, "over 4 GiB"), "%s", err);
    tu_rmrf(tmp);
}

/* The version hash of a load is FNV-1a over the same bytes as before files were read instead of
 * mapped: adapter_config.json then adapter_model.safetensors (PEFT), the .gguf file (GGUF). */
TEST(adapter_hash_covers_the_file_bytes)
{
    core_config cfg = tu_config();
    char err[512] = "", p[256];
    const char *dir = "tests/golden/fixtures/adapters/qv_r4";
    core_config smol = cfg;
    smol.n_layer = 30;
    adapter *a = adapter_load(dir, &smol, err, sizeof err);
    CHECK_MSG(a, "%s", err);
    size_t n1, n2;
    snprintf(p, sizeof p, "%s/adapter_config.json", dir);
    unsigned char *c = slurp(p, &n1);
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", dir);
    unsigned char *w = slurp(p, &n2);
    uint64_t want = c && w ? core_hash64(core_hash64(CORE_HASH_INIT, c, n1), w, n2) : 0;
    uint64_t got = a->hash;
    free(c);
    free(w);
    adapter_unref(a);
    CHECK_MSG(got == want, "PEFT hash %016llx, want %016llx", (unsigned long long)got,
              (unsigned long long)want);
    const char *gguf = "tests/golden/fixtures/adapters/qv_r4.gguf";
    a = adapter_load(gguf, &smol, err, sizeof err);
    CHECK_MSG(a, "%s", err);
    unsigned char *g = slurp(gguf, &n1);
    want = g ? core_hash64(CORE_HASH_INIT, g, n1) : 0;
    got = a->hash;
    free(g);
    adapter_unref(a);
    CHECK_MSG(got == want, "GGUF hash %016llx, want %016llx", (unsigned long long)got,
              (unsigned long long)want);
}

/* A load in a thread, so that a test can tell when it blocks. */
typedef struct load_call {
    char root[128], path[256];
    core_config cfg;
    char err[512];
    adapter *a;
    atomic_bool done;
} load_call;

static void *run_load(void *arg)
{
    load_call *c = arg;
    c->a = c->root[0] ? adapter_load_beneath(c->root, c->path, &c->cfg, c->err, sizeof c->err)
                      : adapter_load(c->path, &c->cfg, c->err, sizeof c->err);
    atomic_store(&c->done, true);
    return NULL;
}

/* Loads path (beneath root unless it is NULL) in a thread, waiting at most 5 s: 0 when the load
 * returned (its result in *c), -1 when it blocked (then fifo is opened for writing, which lets
 * a reader blocked on it go, and the thread is joined). */
static int load_bounded(load_call *c, const char *root, const char *path, const char *fifo)
{
    memset(c, 0, sizeof *c);
    snprintf(c->root, sizeof c->root, "%s", root ? root : "");
    snprintf(c->path, sizeof c->path, "%s", path);
    c->cfg = tu_config();
    atomic_init(&c->done, false);
    pthread_t th;
    if (pthread_create(&th, NULL, run_load, c))
        return -1;
    for (int i = 0; i < 500 && !atomic_load(&c->done); i++)
        nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
    bool blocked = !atomic_load(&c->done);
    if (blocked) {
        int w = open(fifo, O_WRONLY | O_NONBLOCK);
        if (w >= 0)
            close(w);
    }
    pthread_join(th, NULL);
    adapter_unref(c->a);
    c->a = NULL;
    return blocked ? -1 : 0;
}

/* A FIFO as the config or the weights file is refused at once, and the message names the file
 * by the path given on the command line, or by its path beneath the root for a confined load. */
TEST(adapter_load_refuses_fifos_without_blocking)
{
    const char *tmp = tu_tmpdir();
    char dir[256], fifo[300];
    core_config cfg = tu_config();
    static const char *const files[] = {"adapter_config.json", "adapter_model.safetensors"};
    for (int i = 0; i < 2; i++) {
        snprintf(dir, sizeof dir, "%s/n%d", tmp, i);
        CHECK(tu_write_peft(dir, "{\"r\":4,\"target_modules\":[\"q_proj\"]}", &cfg, 1, 4, "F16",
                            1) == 0);
        snprintf(fifo, sizeof fifo, "%s/%s", dir, files[i]);
        CHECK(unlink(fifo) == 0 && mkfifo(fifo, 0600) == 0);
        load_call c;
        char want[400];
        snprintf(want, sizeof want, "%s: not a regular file", fifo);
        CHECK_MSG(load_bounded(&c, NULL, dir, fifo) == 0, "%s: the load blocked", fifo);
        CHECK_MSG(strstr(c.err, want), "'%s', want '%s'", c.err, want);
        snprintf(dir, sizeof dir, "n%d", i);
        snprintf(want, sizeof want, "n%d/%s: not a regular file", i, files[i]);
        CHECK_MSG(load_bounded(&c, tmp, dir, fifo) == 0, "%s beneath the root: the load blocked",
                  fifo);
        CHECK_MSG(!strcmp(c.err, want), "beneath the root: '%s', want '%s'", c.err, want);
    }
    tu_rmrf(tmp);
}
