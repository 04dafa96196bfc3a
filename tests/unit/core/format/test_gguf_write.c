/* Tests for core/format/gguf_write.c: files with every metadata type (nested arrays too) and
 * tensors of several types read back equal through core_gguf_open; copying the real model's keys
 * and tensors reproduces its bytes; bad input is refused when it is set; and a write that fails (no
 * such directory, a directory in the way, a full disk simulated with RLIMIT_FSIZE) reports the step
 * and leaves neither a temporary file nor a partial output behind. */
#include <errno.h>
#include <ftw.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/format/gguf.h"
#include "core/format/gguf_write.h"
#include "core/format/types.h"
#include "tests/test.h"

/* --- helpers ------------------------------------------------------------------------------- */

/* A fresh directory under /tmp (static buffer) and its removal. */
static const char *tmp_dir(void)
{
    static char buf[64];
    snprintf(buf, sizeof buf, "/tmp/adaptree-test-XXXXXX");
    return mkdtemp(buf);
}

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(p);
}

static void rm_dir(const char *dir)
{
    if (dir && strncmp(dir, "/tmp/adaptree-test-", 19) == 0)
        nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static int exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* Encoded GGUF values built by hand. */
typedef struct enc {
    uint8_t p[2048];
    size_t n;
} enc;

static void e_put(enc *e, const void *d, size_t n)
{
    memcpy(e->p + e->n, d, n);
    e->n += n;
}

static void e_u32(enc *e, uint32_t v)
{
    e_put(e, &v, 4);
}
static void e_u64(enc *e, uint64_t v)
{
    e_put(e, &v, 8);
}

static void e_str(enc *e, const char *s)
{
    e_u64(e, strlen(s));
    e_put(e, s, strlen(s));
}

/* An array header inside an array: element type and count. */
static void e_arr(enc *e, uint32_t type, uint64_t n)
{
    e_u32(e, type);
    e_u64(e, n);
}

static core_gguf_str cstr(const char *s)
{
    return (core_gguf_str){s, strlen(s)};
}

static core_gguf_kv arr_kv(const char *key, uint32_t type, uint64_t n, const void *data,
                           uint64_t bytes)
{
    core_gguf_kv kv = {.key = cstr(key), .type = CORE_GGUF_ARRAY};
    kv.v.arr.type = type;
    kv.v.arr.n = n;
    kv.v.arr.data = data;
    kv.v.arr.bytes = bytes;
    return kv;
}

/* Compares two values as the reader returns them; fills why on mismatch. */
static int kv_same(const core_gguf_kv *a, const core_gguf_kv *b, char *why, size_t cap)
{
    int same = a->key.len == b->key.len && !memcmp(a->key.ptr, b->key.ptr, a->key.len) &&
               a->type == b->type;
    if (same) {
        switch (a->type) {
        case CORE_GGUF_STRING:
            same = a->v.s.len == b->v.s.len &&
                   (!a->v.s.len || !memcmp(a->v.s.ptr, b->v.s.ptr, a->v.s.len));
            break;
        case CORE_GGUF_ARRAY:
            same = a->v.arr.type == b->v.arr.type && a->v.arr.n == b->v.arr.n &&
                   a->v.arr.bytes == b->v.arr.bytes &&
                   (!a->v.arr.bytes || !memcmp(a->v.arr.data, b->v.arr.data, a->v.arr.bytes));
            break;
        case CORE_GGUF_FLOAT32:
        case CORE_GGUF_FLOAT64: { /* bit for bit: -0.0 and 1e-310 must survive */
            uint64_t x, y;
            memcpy(&x, &a->v.f, 8);
            memcpy(&y, &b->v.f, 8);
            same = x == y;
            break;
        }
        case CORE_GGUF_BOOL:
            same = a->v.b == b->v.b;
            break;
        default:
            same = a->v.u == b->v.u;
        }
    }
    if (!same)
        snprintf(why, cap, "key '%.*s' (%s) vs '%.*s' (%s) differ", (int)a->key.len, a->key.ptr,
                 core_gguf_vtype_name(a->type), (int)b->key.len, b->key.ptr,
                 core_gguf_vtype_name(b->type));
    return same;
}

static void fill_bytes(uint8_t *p, size_t n, uint32_t seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        p[i] = (uint8_t)(seed >> 24);
    }
}

/* --- every metadata type and a few tensors -------------------------------------------------- */

#define N_TENSORS 5

typedef struct tdesc {
    const char *name;
    uint32_t type;
    uint32_t n_dims;
    uint64_t ne[4];
} tdesc;

static const tdesc tdescs[N_TENSORS] = {
    {"vec.f32", CORE_TYPE_F32, 1, {7}},
    {"mat.f16", CORE_TYPE_F16, 2, {32, 3}},
    {"blk.0.attn_q.weight", CORE_TYPE_Q4_1, 2, {64, 2}},
    {"cube.q8_0", CORE_TYPE_Q8_0, 3, {32, 2, 2}},
    {"four.bf16", CORE_TYPE_BF16, 4, {2, 1, 3, 2}},
};

typedef struct sample {
    core_gguf_kv kv[40];
    int n;
    enc bufs[12];
    uint8_t *data[N_TENSORS];
    uint64_t size[N_TENSORS];
} sample;

/* The key/values of the sample file, in order (the array encodings live in s->bufs). */
static void sample_kvs(sample *s)
{
    core_gguf_kv *k = s->kv;
    int n = 0;
    k[n++] = (core_gguf_kv){.key = cstr("t.u8"), .type = CORE_GGUF_UINT8, .v.u = 250};
    k[n++] = (core_gguf_kv){.key = cstr("t.i8"), .type = CORE_GGUF_INT8, .v.i = -100};
    k[n++] = (core_gguf_kv){.key = cstr("t.u16"), .type = CORE_GGUF_UINT16, .v.u = 65000};
    k[n++] = (core_gguf_kv){.key = cstr("t.i16"), .type = CORE_GGUF_INT16, .v.i = -32768};
    k[n++] = (core_gguf_kv){.key = cstr("t.u32"), .type = CORE_GGUF_UINT32, .v.u = 4000000000u};
    k[n++] = (core_gguf_kv){.key = cstr("t.i32"), .type = CORE_GGUF_INT32, .v.i = -2000000000};
    k[n++] = (core_gguf_kv){.key = cstr("t.f32"), .type = CORE_GGUF_FLOAT32, .v.f = 0.1f};
    k[n++] = (core_gguf_kv){.key = cstr("t.bool"), .type = CORE_GGUF_BOOL, .v.b = true};
    k[n++] = (core_gguf_kv){
        .key = cstr("t.str"), .type = CORE_GGUF_STRING, .v.s = cstr("h\xc3\xa9llo \xe2\x82\xac")};
    k[n++] = (core_gguf_kv){.key = cstr("t.str_empty"), .type = CORE_GGUF_STRING, .v.s = cstr("")};
    k[n++] = (core_gguf_kv){
        .key = cstr("t.u64"), .type = CORE_GGUF_UINT64, .v.u = 0xfedcba9876543210ull};
    k[n++] = (core_gguf_kv){.key = cstr("t.i64"), .type = CORE_GGUF_INT64, .v.i = INT64_MIN + 1};
    k[n++] = (core_gguf_kv){.key = cstr("t.f64"), .type = CORE_GGUF_FLOAT64, .v.f = -1e300};

    /* Arrays of every fixed-size type: element bytes straight from C arrays. */
    static const uint8_t a_u8[] = {0, 1, 255};
    static const int8_t a_i8[] = {-128, 0, 127};
    static const uint16_t a_u16[] = {1, 65535};
    static const int16_t a_i16[] = {-2, 3};
    static const uint32_t a_u32[] = {7, 8, 9, 10};
    static const int32_t a_i32[] = {-1, 5};
    static const float a_f32[] = {1.5f, -0.0f, 3e38f};
    static const uint8_t a_bool[] = {1, 0, 1};
    static const uint64_t a_u64[] = {UINT64_MAX};
    static const int64_t a_i64[] = {INT64_MIN, 1};
    static const double a_f64[] = {3.141592653589793, 1e-310};
    k[n++] = arr_kv("a.u8", CORE_GGUF_UINT8, 3, a_u8, sizeof a_u8);
    k[n++] = arr_kv("a.i8", CORE_GGUF_INT8, 3, a_i8, sizeof a_i8);
    k[n++] = arr_kv("a.u16", CORE_GGUF_UINT16, 2, a_u16, sizeof a_u16);
    k[n++] = arr_kv("a.i16", CORE_GGUF_INT16, 2, a_i16, sizeof a_i16);
    k[n++] = arr_kv("a.u32", CORE_GGUF_UINT32, 4, a_u32, sizeof a_u32);
    k[n++] = arr_kv("a.i32", CORE_GGUF_INT32, 2, a_i32, sizeof a_i32);
    k[n++] = arr_kv("a.f32", CORE_GGUF_FLOAT32, 3, a_f32, sizeof a_f32);
    k[n++] = arr_kv("a.bool", CORE_GGUF_BOOL, 3, a_bool, sizeof a_bool);
    k[n++] = arr_kv("a.u64", CORE_GGUF_UINT64, 1, a_u64, sizeof a_u64);
    k[n++] = arr_kv("a.i64", CORE_GGUF_INT64, 2, a_i64, sizeof a_i64);
    k[n++] = arr_kv("a.f64", CORE_GGUF_FLOAT64, 2, a_f64, sizeof a_f64);
    k[n++] = arr_kv("a.empty", CORE_GGUF_INT32, 0, NULL, 0);

    enc *b = s->bufs;
    /* strings, one of them empty */
    e_str(&b[0], "alpha");
    e_str(&b[0], "");
    e_str(&b[0], "\xce\xb3");
    k[n++] = arr_kv("a.str", CORE_GGUF_STRING, 3, b[0].p, b[0].n);
    /* [[1, 2, 3], []] of uint16 */
    e_arr(&b[1], CORE_GGUF_UINT16, 3);
    e_put(&b[1], (uint16_t[]){1, 2, 3}, 6);
    e_arr(&b[1], CORE_GGUF_UINT16, 0);
    k[n++] = arr_kv("n.u16", CORE_GGUF_ARRAY, 2, b[1].p, b[1].n);
    /* [["a", "bc"], [""]] */
    e_arr(&b[2], CORE_GGUF_STRING, 2);
    e_str(&b[2], "a");
    e_str(&b[2], "bc");
    e_arr(&b[2], CORE_GGUF_STRING, 1);
    e_str(&b[2], "");
    k[n++] = arr_kv("n.str", CORE_GGUF_ARRAY, 2, b[2].p, b[2].n);
    /* four levels, the reader's limit: [[[[-7]]]] */
    e_arr(&b[3], CORE_GGUF_ARRAY, 1);
    e_arr(&b[3], CORE_GGUF_ARRAY, 1);
    e_arr(&b[3], CORE_GGUF_INT32, 1);
    e_put(&b[3], (int32_t[]){-7}, 4);
    k[n++] = arr_kv("n.deep", CORE_GGUF_ARRAY, 1, b[3].p, b[3].n);
    /* mixed element types per inner array: [[true], [1.0f, 2.0f]] */
    e_arr(&b[4], CORE_GGUF_BOOL, 1);
    e_put(&b[4], (uint8_t[]){1}, 1);
    e_arr(&b[4], CORE_GGUF_FLOAT32, 2);
    e_put(&b[4], (float[]){1.0f, 2.0f}, 8);
    k[n++] = arr_kv("n.mixed", CORE_GGUF_ARRAY, 2, b[4].p, b[4].n);
    s->n = n;
}

static int sample_build(sample *s, core_gguf_writer *w, char *err, size_t errlen)
{
    memset(s, 0, sizeof *s);
    sample_kvs(s);
    for (int i = 0; i < s->n; i++)
        if (core_gguf_writer_set_kv(w, &s->kv[i], err, errlen) != 0)
            return -1;
    for (int i = 0; i < N_TENSORS; i++) {
        const tdesc *d = &tdescs[i];
        uint64_t size = core_type_row_bytes(d->type, d->ne[0]);
        for (uint32_t k = 1; k < d->n_dims; k++)
            size *= d->ne[k];
        s->size[i] = size;
        s->data[i] = malloc(size);
        if (!s->data[i])
            return -1;
        fill_bytes(s->data[i], size, (uint32_t)i + 1);
        if (d->type == CORE_TYPE_F32) /* real floats, so the bytes mean something */
            for (uint64_t k = 0; k < d->ne[0]; k++)
                memcpy(s->data[i] + 4 * k, &(float){(float)k - 2.5f}, 4);
        if (core_gguf_writer_add_tensor(w, d->name, d->type, d->n_dims, d->ne, s->data[i], size,
                                        err, errlen) != 0)
            return -1;
    }
    return 0;
}

static void sample_free(sample *s)
{
    for (int i = 0; s && i < N_TENSORS; i++)
        free(s->data[i]);
}

/* Checks the file at path against the sample, with the given alignment. */
static int sample_check(const sample *s, const char *path, uint64_t align, uint64_t file_size,
                        char *why, size_t cap)
{
    char err[256];
    core_gguf *g = core_gguf_open(path, err, sizeof err);
    int ok = 0;
    if (!g) {
        snprintf(why, cap, "reopen: %s", err);
        return 0;
    }
    if (g->version != 3 || g->alignment != align || g->size != file_size) {
        snprintf(why, cap, "version %u alignment %llu size %zu, want 3, %llu, %llu", g->version,
                 (unsigned long long)g->alignment, g->size, (unsigned long long)align,
                 (unsigned long long)file_size);
        goto out;
    }
    uint64_t n_kv = (uint64_t)s->n + (align != 32);
    if (g->n_kv != n_kv || g->n_tensors != N_TENSORS) {
        snprintf(why, cap, "%llu keys, %llu tensors; want %llu, %d", (unsigned long long)g->n_kv,
                 (unsigned long long)g->n_tensors, (unsigned long long)n_kv, N_TENSORS);
        goto out;
    }
    for (int i = 0; i < s->n; i++)
        if (!kv_same(&s->kv[i], &g->kv[i], why, cap))
            goto out;
    uint64_t off = 0;
    for (int i = 0; i < N_TENSORS; i++) {
        const core_gguf_tensor *t = &g->tensors[i];
        const tdesc *d = &tdescs[i];
        int same = core_gguf_str_eq(t->name, d->name) && t->type == d->type &&
                   t->n_dims == d->n_dims && t->size == s->size[i] && t->offset == off &&
                   !memcmp(t->data, s->data[i], s->size[i]);
        for (uint32_t k = 0; k < 4; k++)
            same = same && t->ne[k] == (k < d->n_dims ? d->ne[k] : 1);
        if (!same) {
            snprintf(why, cap, "tensor %d (%s): offset %llu (want %llu) or shape/type/bytes differ",
                     i, d->name, (unsigned long long)t->offset, (unsigned long long)off);
            goto out;
        }
        off += (s->size[i] + align - 1) / align * align;
    }
    if (g->data_offset % align || g->data_offset + off != g->size) {
        snprintf(why, cap, "data at %llu, %llu bytes of data, file %zu",
                 (unsigned long long)g->data_offset, (unsigned long long)off, g->size);
        goto out;
    }
    /* Padding is zeros: after the last tensor info and after each tensor's data. */
    const core_gguf_tensor *last = &g->tensors[N_TENSORS - 1];
    size_t at = (size_t)((const uint8_t *)last->name.ptr - g->base) + last->name.len + 4 +
                8 * last->n_dims + 4 + 8;
    for (int i = 0; i <= N_TENSORS; i++) {
        size_t end =
            i < N_TENSORS ? (size_t)((const uint8_t *)g->tensors[i].data - g->base) : g->size;
        for (; at < end; at++) {
            if (g->base[at] != 0) {
                snprintf(why, cap, "padding byte at %zu is %u", at, g->base[at]);
                goto out;
            }
        }
        if (i < N_TENSORS)
            at = end + (size_t)g->tensors[i].size;
    }
    ok = 1;
out:
    core_gguf_close(g);
    return ok;
}

TEST(gguf_write_every_type_roundtrip)
{
    char err[256] = "", why[512] = "", path[128], tmp[140];
    const char *dir = tmp_dir();
    CHECK(dir);
    snprintf(path, sizeof path, "%s/sample.gguf", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    core_gguf_writer *w = core_gguf_writer_new();
    sample *s = calloc(1, sizeof *s);
    int built = w && s && sample_build(s, w, err, sizeof err) == 0;
    int rc = built ? core_gguf_writer_write(w, path, err, sizeof err) : -1;
    uint64_t size = w ? core_gguf_writer_file_size(w) : 0;
    int ok = rc == 0 && sample_check(s, path, 32, size, why, sizeof why);
    int tmp_left = exists(tmp);
    sample_free(s);
    free(s);
    core_gguf_writer_free(w);
    rm_dir(dir);
    CHECK_MSG(built, "building the sample: %s", err);
    CHECK_MSG(rc == 0, "write: %d %s", rc, err);
    CHECK_MSG(ok, "%s", why);
    CHECK_MSG(!tmp_left, "%s left behind", tmp);
}

TEST(gguf_write_alignment_64_and_replaced_keys)
{
    char err[256] = "", why[512] = "", path[128];
    const char *dir = tmp_dir();
    CHECK(dir);
    snprintf(path, sizeof path, "%s/a64.gguf", dir);
    core_gguf_writer *w = core_gguf_writer_new();
    sample *s = calloc(1, sizeof *s);
    int built = w && s && sample_build(s, w, err, sizeof err) == 0;
    /* Replacing keeps the position: t.u8 stays first with its new value. */
    int set = built && core_gguf_writer_set_u32(w, "general.alignment", 16, err, sizeof err) == 0 &&
              core_gguf_writer_set_u32(w, "general.alignment", 64, err, sizeof err) == 0;
    core_gguf_kv u8 = {.key = cstr("t.u8"), .type = CORE_GGUF_UINT8, .v.u = 3};
    set = set && core_gguf_writer_set_kv(w, &u8, err, sizeof err) == 0;
    if (set)
        s->kv[0] = u8;
    size_t n_kv = w ? core_gguf_writer_n_kv(w) : 0;
    int rc = set ? core_gguf_writer_write(w, path, err, sizeof err) : -1;
    uint64_t size = w ? core_gguf_writer_file_size(w) : 0;
    int ok = rc == 0 && sample_check(s, path, 64, size, why, sizeof why);
    /* Writing again over the existing file replaces it. */
    int rc2 = rc == 0 ? core_gguf_writer_write(w, path, err, sizeof err) : -1;
    int ok2 = rc2 == 0 && sample_check(s, path, 64, size, why, sizeof why);
    sample_free(s);
    free(s);
    core_gguf_writer_free(w);
    rm_dir(dir);
    CHECK_MSG(built && set, "building: %s", err);
    CHECK_EQ_INT(n_kv, 30 + 1);
    CHECK_MSG(rc == 0, "write: %d %s", rc, err);
    CHECK_MSG(ok, "%s", why);
    CHECK_MSG(rc2 == 0 && ok2, "second write: %d %s %s", rc2, err, why);
}

/* Expects set_kv to refuse kv with -EINVAL and a message containing want, leaving w as it was. */
static int refuse_kv(core_gguf_writer *w, const core_gguf_kv *kv, const char *want, char *why,
                     size_t cap)
{
    char err[256] = "";
    size_t before = core_gguf_writer_n_kv(w);
    int rc = core_gguf_writer_set_kv(w, kv, err, sizeof err);
    int ok = rc == -EINVAL && strstr(err, want) && core_gguf_writer_n_kv(w) == before;
    if (!ok)
        snprintf(why, cap, "key '%.*s': want -EINVAL containing \"%s\", got %d \"%s\"",
                 (int)kv->key.len, kv->key.ptr ? kv->key.ptr : "", want, rc, err);
    return ok;
}

TEST(gguf_write_refuses_bad_metadata)
{
    char why[512] = "";
    core_gguf_writer *w = core_gguf_writer_new();
    CHECK(w);
    enc b[6];
    memset(b, 0, sizeof b);
    /* a string element whose length runs past the encoding */
    e_u64(&b[0], 100);
    e_put(&b[0], "abc", 3);
    /* five levels of arrays */
    for (int i = 0; i < 4; i++)
        e_arr(&b[1], CORE_GGUF_ARRAY, 1);
    e_arr(&b[1], CORE_GGUF_INT32, 0);
    /* an inner array of an unknown type */
    e_arr(&b[2], 13, 1);
    e_u32(&b[2], 0);
    static const uint8_t two[] = {0, 2};
    static const uint32_t three[] = {1, 2, 3};
    char long_key[65537];
    memset(long_key, 'k', sizeof long_key - 1);
    long_key[sizeof long_key - 1] = 0;
    struct {
        core_gguf_kv kv;
        const char *want;
    } cases[] = {
        {{.key = cstr(""), .type = CORE_GGUF_UINT32}, "key length 0"},
        {{.key = cstr(long_key), .type = CORE_GGUF_UINT32}, "key length 65536"},
        {{.key = cstr("x.type"), .type = 13}, "unknown value type 13"},
        {{.key = cstr("x.u8"), .type = CORE_GGUF_UINT8, .v.u = 256}, "does not fit a uint8"},
        {{.key = cstr("x.i16"), .type = CORE_GGUF_INT16, .v.i = 40000}, "does not fit a int16"},
        {{.key = cstr("x.i32"), .type = CORE_GGUF_INT32, .v.i = INT64_C(-3000000000)},
         "does not fit a int32"},
        {arr_kv("x.bool", CORE_GGUF_BOOL, 2, two, 2), "bool array element 1 is 2"},
        {arr_kv("x.short", CORE_GGUF_UINT32, 4, three, sizeof three), "truncated"},
        {arr_kv("x.long", CORE_GGUF_UINT32, 2, three, sizeof three), "its elements take 8"},
        {arr_kv("x.str", CORE_GGUF_STRING, 1, b[0].p, b[0].n), "truncated"},
        {arr_kv("x.deep", CORE_GGUF_ARRAY, 1, b[1].p, b[1].n), "nested deeper than 4"},
        {arr_kv("x.inner", CORE_GGUF_ARRAY, 1, b[2].p, b[2].n), "element type 13 is unknown"},
        {arr_kv("x.etype", 14, 0, NULL, 0), "element type 14"},
        {{.key = cstr("general.alignment"), .type = CORE_GGUF_UINT32, .v.u = 48}, "power of two"},
        {{.key = cstr("general.alignment"), .type = CORE_GGUF_UINT32, .v.u = 0}, "power of two"},
        {{.key = cstr("general.alignment"), .type = CORE_GGUF_INT32, .v.i = -32}, "power of two"},
        {{.key = cstr("general.alignment"), .type = CORE_GGUF_FLOAT32, .v.f = 32},
         "must be an integer"},
    };
    int ok = 1;
    for (size_t i = 0; ok && i < sizeof cases / sizeof *cases; i++)
        ok = refuse_kv(w, &cases[i].kv, cases[i].want, why, sizeof why);
    core_gguf_writer_free(w);
    CHECK_MSG(ok, "%s", why);
}

TEST(gguf_write_refuses_bad_tensors)
{
    char err[256] = "";
    core_gguf_writer *w = core_gguf_writer_new();
    CHECK(w);
    static uint8_t data[4096];
    const uint64_t ne[4] = {64, 2, 1, 1}, bad0[2] = {48, 2}, zero[2] = {64, 0};
    int rc = core_gguf_writer_add_tensor(w, "ok", CORE_TYPE_Q4_1, 2, ne, data, 80, err, sizeof err);
    CHECK_MSG(rc == 0, "%s", err);
    char name65[66];
    memset(name65, 'n', 65);
    name65[65] = 0;
    struct {
        const char *name;
        uint32_t type, n_dims;
        const uint64_t *ne;
        const void *data;
        uint64_t size;
        const char *want;
    } cases[] = {
        {"ok", CORE_TYPE_Q4_1, 2, ne, data, 80, "added twice"},
        {"", CORE_TYPE_F32, 1, ne, data, 256, "name length 0"},
        {name65, CORE_TYPE_F32, 1, ne, data, 256, "name length 65"},
        {"t", 4, 1, ne, data, 256, "unsupported type 4"},
        {"t", CORE_TYPE_F32, 0, ne, data, 256, "n_dims 0"},
        {"t", CORE_TYPE_F32, 5, ne, data, 256, "n_dims 5"},
        {"t", CORE_TYPE_Q4_1, 2, bad0, data, 60, "not a multiple of the q4_1 block size"},
        {"t", CORE_TYPE_F32, 2, zero, data, 0, "dimension 1 is 0"},
        {"t", CORE_TYPE_F32, 2, ne, data, 511, "511 bytes of data given"},
        {"t", CORE_TYPE_F32, 2, ne, NULL, 512, "0 bytes of data given"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        err[0] = 0;
        rc =
            core_gguf_writer_add_tensor(w, cases[i].name, cases[i].type, cases[i].n_dims,
                                        cases[i].ne, cases[i].data, cases[i].size, err, sizeof err);
        if (rc != -EINVAL || !strstr(err, cases[i].want)) {
            core_gguf_writer_free(w);
            CHECK_MSG(0, "case %zu: want -EINVAL containing \"%s\", got %d \"%s\"", i,
                      cases[i].want, rc, err);
        }
    }
    /* Only the first tensor is there: header 24 + info (8+2+4+16+4+8) padded to 32, + 96. */
    uint64_t size = core_gguf_writer_file_size(w);
    core_gguf_writer_free(w);
    CHECK_EQ_INT(size, 96 + 96);
}

/* --- the real model ------------------------------------------------------------------------ */

TEST(gguf_write_copy_of_model_is_identical)
{
    TEST_NEED_MODEL();
    char err[256] = "", path[128];
    core_gguf *src = core_gguf_open(test_model_path(), err, sizeof err);
    CHECK_MSG(src, "%s", err);
    const char *dir = tmp_dir();
    core_gguf_writer *w = core_gguf_writer_new();
    int rc = dir && w ? 0 : -ENOMEM;
    for (uint64_t i = 0; rc == 0 && i < src->n_kv; i++)
        rc = core_gguf_writer_set_kv(w, &src->kv[i], err, sizeof err);
    for (uint64_t i = 0; rc == 0 && i < src->n_tensors; i++) {
        const core_gguf_tensor *t = &src->tensors[i];
        char name[80];
        snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
        rc = core_gguf_writer_add_tensor(w, name, t->type, t->n_dims, t->ne, t->data, t->size, err,
                                         sizeof err);
    }
    if (rc == 0) {
        snprintf(path, sizeof path, "%s/copy.gguf", dir);
        rc = core_gguf_writer_write(w, path, err, sizeof err);
    }
    core_gguf *g = rc == 0 ? core_gguf_open(path, err, sizeof err) : NULL;
    int same_kv = g && g->n_kv == src->n_kv;
    char why[512] = "";
    for (uint64_t i = 0; same_kv && i < src->n_kv; i++)
        same_kv = kv_same(&src->kv[i], &g->kv[i], why, sizeof why);
    /* The metadata section is byte for byte the original's. */
    size_t meta_end =
        src->n_tensors ? (size_t)((const uint8_t *)src->tensors[0].name.ptr - src->base) - 8 : 0;
    int same_meta = g && g->size >= meta_end && !memcmp(g->base, src->base, meta_end);
    size_t first_diff = 0;
    if (g && g->size == src->size)
        while (first_diff < g->size && g->base[first_diff] == src->base[first_diff])
            first_diff++;
    printf("    copied %llu keys and %llu tensors: %zu bytes, original %zu, first difference at "
           "%zu\n",
           (unsigned long long)src->n_kv, (unsigned long long)src->n_tensors, g ? g->size : 0,
           src->size, first_diff);
    size_t g_size = g ? g->size : 0;
    core_gguf_close(g);
    core_gguf_close(src);
    core_gguf_writer_free(w);
    rm_dir(dir);
    CHECK_MSG(rc == 0, "%d %s", rc, err);
    CHECK_MSG(same_kv, "metadata differs: %s", why);
    CHECK_MSG(same_meta, "metadata bytes differ");
    CHECK_EQ_INT(first_diff, g_size);
}

/* --- failures ------------------------------------------------------------------------------ */

/* A writer with one 64 KiB f32 tensor; data is the caller's. */
static core_gguf_writer *small_writer(float *data, size_t n)
{
    core_gguf_writer *w = core_gguf_writer_new();
    const uint64_t ne[1] = {n};
    for (size_t i = 0; i < n; i++)
        data[i] = (float)i;
    if (w && (core_gguf_writer_set_str(w, "general.architecture", "llama", NULL, 0) != 0 ||
              core_gguf_writer_add_tensor(w, "t", CORE_TYPE_F32, 1, ne, data, n * 4, NULL, 0))) {
        core_gguf_writer_free(w);
        w = NULL;
    }
    return w;
}

TEST(gguf_write_unwritable_path)
{
    static float data[16384];
    char err[256] = "";
    core_gguf_writer *w = small_writer(data, 16384);
    CHECK(w);
    const char *path = "/nonexistent-adaptree-dir/out.gguf";
    int rc = core_gguf_writer_write(w, path, err, sizeof err);
    core_gguf_writer_free(w);
    printf("    error: %s\n", err);
    CHECK_EQ_INT(rc, -ENOENT);
    CHECK_MSG(strstr(err, "cannot create /nonexistent-adaptree-dir/out.gguf.tmp") &&
                  strstr(err, strerror(ENOENT)),
              "message: %s", err);
    CHECK(!exists(path));
}

TEST(gguf_write_directory_in_the_way)
{
    static float data[16384];
    char err[256] = "", path[128], tmp[140];
    const char *dir = tmp_dir();
    CHECK(dir);
    snprintf(path, sizeof path, "%s/out.gguf", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int made = mkdir(path, 0755) == 0;
    core_gguf_writer *w = small_writer(data, 16384);
    int rc = w && made ? core_gguf_writer_write(w, path, err, sizeof err) : 0;
    struct stat st;
    int still_dir = stat(path, &st) == 0 && S_ISDIR(st.st_mode);
    int tmp_left = exists(tmp);
    core_gguf_writer_free(w);
    rm_dir(dir);
    CHECK(made && w);
    printf("    error: %s\n", err);
    CHECK_MSG(rc < 0 && strstr(err, "cannot rename"), "rc %d: %s", rc, err);
    CHECK(still_dir);
    CHECK_MSG(!tmp_left, "%s left behind", tmp);
}

/* A full disk, simulated: with RLIMIT_FSIZE below the file size write(2) fails with EFBIG once
 * the limit is reached (SIGXFSZ ignored), exactly where ENOSPC would. The old file survives. */
TEST(gguf_write_failed_write_keeps_old_file)
{
    static float data[16384];
    char err[256] = "", path[128], tmp[140];
    const char *dir = tmp_dir();
    CHECK(dir);
    snprintf(path, sizeof path, "%s/out.gguf", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(path, "w");
    if (f) {
        fputs("old contents", f);
        fclose(f);
    }
    core_gguf_writer *w = small_writer(data, 16384);
    struct rlimit old, lim;
    int have_lim = getrlimit(RLIMIT_FSIZE, &old) == 0;
    lim = old;
    lim.rlim_cur = 4096;
    void (*old_sig)(int) = signal(SIGXFSZ, SIG_IGN);
    int rc = 1;
    if (f && w && have_lim && setrlimit(RLIMIT_FSIZE, &lim) == 0) {
        rc = core_gguf_writer_write(w, path, err, sizeof err);
        setrlimit(RLIMIT_FSIZE, &old);
    }
    signal(SIGXFSZ, old_sig);
    char back[32] = "";
    FILE *r = fopen(path, "r");
    if (r) {
        if (!fgets(back, sizeof back, r))
            back[0] = 0;
        fclose(r);
    }
    int tmp_left = exists(tmp);
    core_gguf_writer_free(w);
    rm_dir(dir);
    CHECK(f && w && have_lim);
    printf("    error: %s\n", err);
    CHECK_EQ_INT(rc, -EFBIG);
    CHECK_MSG(strstr(err, "cannot write") && strstr(err, "after 4096 of"), "message: %s", err);
    CHECK_EQ_STR(back, "old contents");
    CHECK_MSG(!tmp_left, "%s left behind", tmp);
}
