/* GGUF v3 writer (docs/FORMATS.md §2): metadata kept encoded as it will appear in the file, tensors
 * as borrowed pointers, and one write pass through a buffer into "<path>.tmp", fsync, rename.
 *
 * Every value is checked when it is set, with the reader's own limits, so the file written is
 * one core_gguf_open accepts; the only failures left for core_gguf_writer_write are those of the
 * file system. Lookups by key and by tensor name are linear: a writer holds tens of keys and a
 * few hundred tensors.
 */
#include "core/format/gguf_write.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/base.h"
#include "core/format/types.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "GGUF is written little-endian");

#define GGUF_VERSION 3
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_ALIGNMENT (1u << 30) /* the reader's bound */
#define GGUF_MAX_KEY_LEN 65535
#define GGUF_MAX_NAME_LEN 64
#define GGUF_MAX_ARRAY_DEPTH 4 /* the reader's bound: a top-level array is depth 1 */
#define WRITE_BUF_BYTES (1u << 20)
#define WRITE_CHUNK (1u << 30) /* largest single write(2) */

/* One key/value, encoded: mem holds the key bytes, then the value as the file stores it after
 * the type field. */
typedef struct wkv {
    uint8_t *mem;
    uint64_t key_len;
    uint32_t type;
    uint64_t val_len;
} wkv;

typedef struct wtensor {
    char name[GGUF_MAX_NAME_LEN + 1];
    uint32_t n_dims;
    uint64_t ne[CORE_GGUF_MAX_DIMS];
    uint32_t type;
    const void *data; /* borrowed */
    uint64_t size;
} wtensor;

struct core_gguf_writer {
    wkv *kv; /* (n_kv) in insertion order */
    size_t n_kv, cap_kv;
    wtensor *tensors; /* (n_tensors) in file order */
    size_t n_tensors, cap_tensors;
    uint64_t alignment;
};

static const uint8_t vtype_size[CORE_GGUF_VTYPE_COUNT] = {
    [CORE_GGUF_UINT8] = 1,  [CORE_GGUF_INT8] = 1,  [CORE_GGUF_UINT16] = 2,  [CORE_GGUF_INT16] = 2,
    [CORE_GGUF_UINT32] = 4, [CORE_GGUF_INT32] = 4, [CORE_GGUF_FLOAT32] = 4, [CORE_GGUF_BOOL] = 1,
    [CORE_GGUF_UINT64] = 8, [CORE_GGUF_INT64] = 8, [CORE_GGUF_FLOAT64] = 8,
};

static uint64_t align_up(uint64_t x, uint64_t a)
{
    return x + (a - x % a) % a;
}

core_gguf_writer *core_gguf_writer_new(void)
{
    core_gguf_writer *w = calloc(1, sizeof *w);
    if (w)
        w->alignment = GGUF_DEFAULT_ALIGNMENT;
    return w;
}

void core_gguf_writer_free(core_gguf_writer *w)
{
    if (!w)
        return;
    for (size_t i = 0; i < w->n_kv; i++)
        free(w->kv[i].mem);
    free(w->kv);
    free(w->tensors);
    free(w);
}

size_t core_gguf_writer_n_kv(const core_gguf_writer *w)
{
    return w->n_kv;
}

/* --- metadata ------------------------------------------------------------------------------ */

/* Checks n encoded elements of type etype at p[*pos..len) and moves *pos past them; depth is
 * the nesting level of the array holding them. The same rules as the reader's walk. */
static int check_elems(const uint8_t *p, uint64_t len, uint64_t *pos, uint32_t etype, uint64_t n,
                       int depth, char *err, size_t errlen)
{
    if (etype >= CORE_GGUF_VTYPE_COUNT) {
        core_errf(err, errlen, "array element type %" PRIu32 " is unknown", etype);
        return -EINVAL;
    }
    if (etype == CORE_GGUF_ARRAY && depth >= GGUF_MAX_ARRAY_DEPTH) {
        core_errf(err, errlen, "arrays nested deeper than %d levels", GGUF_MAX_ARRAY_DEPTH);
        return -EINVAL;
    }
    if (etype != CORE_GGUF_STRING && etype != CORE_GGUF_ARRAY) {
        uint64_t es = vtype_size[etype];
        if (n > (len - *pos) / es)
            goto truncated;
        for (uint64_t j = 0; etype == CORE_GGUF_BOOL && j < n; j++) {
            if (p[*pos + j] > 1) {
                core_errf(err, errlen, "bool array element %" PRIu64 " is %u, not 0 or 1", j,
                          p[*pos + j]);
                return -EINVAL;
            }
        }
        *pos += n * es;
        return 0;
    }
    for (uint64_t i = 0; i < n; i++) {
        uint64_t left = len - *pos, m;
        if (etype == CORE_GGUF_STRING) {
            if (left < 8)
                goto truncated;
            memcpy(&m, p + *pos, 8);
            if (m > left - 8)
                goto truncated;
            *pos += 8 + m;
            continue;
        }
        uint32_t t;
        if (left < 12)
            goto truncated;
        memcpy(&t, p + *pos, 4);
        memcpy(&m, p + *pos + 4, 8);
        *pos += 12;
        if (check_elems(p, len, pos, t, m, depth + 1, err, errlen) != 0)
            return -EINVAL;
    }
    return 0;
truncated:
    core_errf(err, errlen, "array encoding is truncated at byte %" PRIu64 " of %" PRIu64, *pos,
              len);
    return -EINVAL;
}

/* Encodes a scalar kv value (not STRING or ARRAY) into out; checks that it fits its type. */
static int encode_scalar(const core_gguf_kv *kv, uint8_t out[8], char *err, size_t errlen)
{
    uint64_t u = kv->v.u;
    int64_t i = kv->v.i;
    bool ok = true;
    switch (kv->type) {
    case CORE_GGUF_UINT8:
        ok = u <= UINT8_MAX;
        break;
    case CORE_GGUF_UINT16:
        ok = u <= UINT16_MAX;
        break;
    case CORE_GGUF_UINT32:
        ok = u <= UINT32_MAX;
        break;
    case CORE_GGUF_INT8:
        ok = i >= INT8_MIN && i <= INT8_MAX;
        break;
    case CORE_GGUF_INT16:
        ok = i >= INT16_MIN && i <= INT16_MAX;
        break;
    case CORE_GGUF_INT32:
        ok = i >= INT32_MIN && i <= INT32_MAX;
        break;
    case CORE_GGUF_FLOAT32: {
        float f = (float)kv->v.f;
        memcpy(out, &f, 4);
        return 0;
    }
    case CORE_GGUF_FLOAT64:
        memcpy(out, &kv->v.f, 8);
        return 0;
    case CORE_GGUF_BOOL:
        out[0] = kv->v.b ? 1 : 0;
        return 0;
    default: /* UINT64, INT64: every value fits */
        break;
    }
    if (!ok) {
        core_errf(err, errlen, "value does not fit a %s", core_gguf_vtype_name(kv->type));
        return -EINVAL;
    }
    /* Two's complement little-endian: the low bytes of either member are the encoding. */
    if (kv->type == CORE_GGUF_INT8 || kv->type == CORE_GGUF_INT16 || kv->type == CORE_GGUF_INT32 ||
        kv->type == CORE_GGUF_INT64)
        u = (uint64_t)i;
    memcpy(out, &u, 8);
    return 0;
}

/* general.alignment must be a power-of-two integer the reader accepts. */
static int check_alignment(const core_gguf_kv *kv, uint64_t *out, char *err, size_t errlen)
{
    bool is_int =
        kv->type <= CORE_GGUF_INT32 || kv->type == CORE_GGUF_UINT64 || kv->type == CORE_GGUF_INT64;
    bool is_signed = kv->type == CORE_GGUF_INT8 || kv->type == CORE_GGUF_INT16 ||
                     kv->type == CORE_GGUF_INT32 || kv->type == CORE_GGUF_INT64;
    if (!is_int) {
        core_errf(err, errlen, "general.alignment must be an integer (uint32), not %s",
                  core_gguf_vtype_name(kv->type));
        return -EINVAL;
    }
    uint64_t a = is_signed ? (kv->v.i < 0 ? 0 : (uint64_t)kv->v.i) : kv->v.u;
    if (a == 0 || (a & (a - 1)) != 0 || a > GGUF_MAX_ALIGNMENT) {
        core_errf(err, errlen, "general.alignment must be a power of two up to 2^30");
        return -EINVAL;
    }
    *out = a;
    return 0;
}

static int64_t find_key(const core_gguf_writer *w, const char *key, uint64_t len)
{
    for (size_t i = 0; i < w->n_kv; i++)
        if (w->kv[i].key_len == len && memcmp(w->kv[i].mem, key, len) == 0)
            return (int64_t)i;
    return -1;
}

/* Encodes kv's value into a new buffer (*val, *val_len), after checking it. */
static int encode_value(const core_gguf_kv *kv, uint8_t **val, uint64_t *val_len, char *err,
                        size_t errlen)
{
    uint8_t scalar[8];
    const void *body = NULL; /* bytes after the fixed head */
    uint64_t head = 0, body_len = 0;
    uint8_t hb[12];
    if (kv->type == CORE_GGUF_STRING) {
        if (kv->v.s.len && !kv->v.s.ptr) {
            core_errf(err, errlen, "string value without data");
            return -EINVAL;
        }
        memcpy(hb, &kv->v.s.len, 8);
        head = 8;
        body = kv->v.s.ptr;
        body_len = kv->v.s.len;
    } else if (kv->type == CORE_GGUF_ARRAY) {
        uint64_t pos = 0;
        if ((kv->v.arr.bytes && !kv->v.arr.data) ||
            check_elems(kv->v.arr.data, kv->v.arr.bytes, &pos, kv->v.arr.type, kv->v.arr.n, 1, err,
                        errlen) != 0)
            return -EINVAL;
        if (pos != kv->v.arr.bytes) {
            core_errf(err, errlen,
                      "array of %" PRIu64 " %s has %" PRIu64 " bytes, its elements take %" PRIu64,
                      kv->v.arr.n, core_gguf_vtype_name(kv->v.arr.type), kv->v.arr.bytes, pos);
            return -EINVAL;
        }
        memcpy(hb, &kv->v.arr.type, 4);
        memcpy(hb + 4, &kv->v.arr.n, 8);
        head = 12;
        body = kv->v.arr.data;
        body_len = kv->v.arr.bytes;
    } else if (kv->type < CORE_GGUF_VTYPE_COUNT) {
        if (encode_scalar(kv, scalar, err, errlen) != 0)
            return -EINVAL;
        head = vtype_size[kv->type];
        memcpy(hb, scalar, head);
    } else {
        core_errf(err, errlen, "unknown value type %" PRIu32, kv->type);
        return -EINVAL;
    }
    if (body_len > SIZE_MAX - head) {
        core_errf(err, errlen, "value too large");
        return -ENOMEM;
    }
    *val = malloc((size_t)(head + body_len) + 1);
    if (!*val) {
        core_errf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    memcpy(*val, hb, head);
    if (body_len)
        memcpy(*val + head, body, body_len);
    *val_len = head + body_len;
    return 0;
}

int core_gguf_writer_set_kv(core_gguf_writer *w, const core_gguf_kv *kv, char *err, size_t errlen)
{
    char ebuf[200] = "";
    uint64_t klen = kv->key.len, align = 0;
    if (klen == 0 || klen > GGUF_MAX_KEY_LEN || !kv->key.ptr) {
        core_errf(err, errlen, "metadata key length %" PRIu64 " is not in 1..%d", klen,
                  GGUF_MAX_KEY_LEN);
        return -EINVAL;
    }
    bool is_align = core_gguf_str_eq(kv->key, "general.alignment");
    uint8_t *val = NULL;
    uint64_t val_len = 0;
    int rc = is_align ? check_alignment(kv, &align, ebuf, sizeof ebuf) : 0;
    if (rc == 0)
        rc = encode_value(kv, &val, &val_len, ebuf, sizeof ebuf);
    if (rc != 0) {
        core_errf(err, errlen, "metadata key '%.*s': %s", (int)(klen < 80 ? klen : 80), kv->key.ptr,
                  ebuf);
        return rc;
    }
    uint8_t *mem = malloc((size_t)(klen + val_len) + 1);
    int64_t at = find_key(w, kv->key.ptr, klen);
    if (!mem || (at < 0 && core_grow(&w->kv, &w->cap_kv, w->n_kv + 1, sizeof *w->kv) != 0)) {
        free(mem);
        free(val);
        core_errf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    memcpy(mem, kv->key.ptr, klen);
    memcpy(mem + klen, val, val_len);
    free(val);
    wkv *e = at >= 0 ? &w->kv[at] : &w->kv[w->n_kv++];
    if (at >= 0)
        free(e->mem);
    *e = (wkv){.mem = mem, .key_len = klen, .type = kv->type, .val_len = val_len};
    if (is_align)
        w->alignment = align;
    return 0;
}

static core_gguf_str str_of(const char *s)
{
    return (core_gguf_str){s, s ? strlen(s) : 0};
}

int core_gguf_writer_set_u32(core_gguf_writer *w, const char *key, uint32_t v, char *err,
                             size_t errlen)
{
    core_gguf_kv kv = {.key = str_of(key), .type = CORE_GGUF_UINT32, .v.u = v};
    return core_gguf_writer_set_kv(w, &kv, err, errlen);
}

int core_gguf_writer_set_f32(core_gguf_writer *w, const char *key, float v, char *err,
                             size_t errlen)
{
    core_gguf_kv kv = {.key = str_of(key), .type = CORE_GGUF_FLOAT32, .v.f = v};
    return core_gguf_writer_set_kv(w, &kv, err, errlen);
}

int core_gguf_writer_set_str(core_gguf_writer *w, const char *key, const char *v, char *err,
                             size_t errlen)
{
    core_gguf_kv kv = {.key = str_of(key), .type = CORE_GGUF_STRING, .v.s = str_of(v)};
    return core_gguf_writer_set_kv(w, &kv, err, errlen);
}

int core_gguf_writer_set_str_array(core_gguf_writer *w, const char *key, const char *const *v,
                                   size_t n, char *err, size_t errlen)
{
    size_t bytes = 0;
    for (size_t i = 0; i < n; i++)
        bytes += 8 + strlen(v[i]);
    uint8_t *enc = malloc(bytes + 1), *p = enc;
    if (!enc) {
        core_errf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        uint64_t len = strlen(v[i]);
        memcpy(p, &len, 8);
        memcpy(p + 8, v[i], len);
        p += 8 + len;
    }
    core_gguf_kv kv = {.key = str_of(key), .type = CORE_GGUF_ARRAY};
    kv.v.arr.type = CORE_GGUF_STRING;
    kv.v.arr.n = n;
    kv.v.arr.data = enc;
    kv.v.arr.bytes = bytes;
    int rc = core_gguf_writer_set_kv(w, &kv, err, errlen);
    free(enc);
    return rc;
}

/* --- tensors ------------------------------------------------------------------------------- */

int core_gguf_writer_add_tensor(core_gguf_writer *w, const char *name, uint32_t type,
                                uint32_t n_dims, const uint64_t *ne, const void *data,
                                uint64_t size, char *err, size_t errlen)
{
    size_t len = name ? strlen(name) : 0;
    if (len == 0 || len > GGUF_MAX_NAME_LEN) {
        core_errf(err, errlen, "tensor name length %zu is not in 1..%d", len, GGUF_MAX_NAME_LEN);
        return -EINVAL;
    }
    for (size_t i = 0; i < w->n_tensors; i++) {
        if (strcmp(w->tensors[i].name, name) == 0) {
            core_errf(err, errlen, "tensor '%s' added twice", name);
            return -EINVAL;
        }
    }
    size_t be = core_type_block_elems(type);
    if (be == 0) {
        core_errf(err, errlen, "tensor '%s': unsupported type %" PRIu32, name, type);
        return -EINVAL;
    }
    if (n_dims < 1 || n_dims > CORE_GGUF_MAX_DIMS) {
        core_errf(err, errlen, "tensor '%s': n_dims %" PRIu32 " is not in 1..%d", name, n_dims,
                  CORE_GGUF_MAX_DIMS);
        return -EINVAL;
    }
    wtensor t = {.n_dims = n_dims, .type = type, .data = data, .size = size};
    memcpy(t.name, name, len + 1);
    uint64_t nel = 1, want = 0;
    for (uint32_t d = 0; d < CORE_GGUF_MAX_DIMS; d++) {
        t.ne[d] = d < n_dims ? ne[d] : 1;
        if (t.ne[d] == 0 || t.ne[d] > (uint64_t)INT64_MAX / nel) {
            core_errf(err, errlen, "tensor '%s': dimension %" PRIu32 " is %" PRIu64, name, d,
                      t.ne[d]);
            return -EINVAL;
        }
        nel *= t.ne[d];
    }
    if (t.ne[0] % be == 0)
        want = core_type_row_bytes(type, t.ne[0]);
    for (int d = 1; d < CORE_GGUF_MAX_DIMS && want; d++)
        want = want > UINT64_MAX / t.ne[d] ? 0 : want * t.ne[d];
    if (want == 0 || want > (uint64_t)INT64_MAX / 2) {
        core_errf(err, errlen,
                  "tensor '%s': ne[0] = %" PRIu64 " is not a multiple of the %s block size "
                  "%zu, or the size overflows",
                  name, t.ne[0], core_type_name(type), be);
        return -EINVAL;
    }
    if (size != want || !data) {
        core_errf(err, errlen,
                  "tensor '%s': %" PRIu64
                  " bytes of data given, its shape and type %s need %" PRIu64,
                  name, data ? size : 0, core_type_name(type), want);
        return -EINVAL;
    }
    if (core_grow(&w->tensors, &w->cap_tensors, w->n_tensors + 1, sizeof *w->tensors) != 0) {
        core_errf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    w->tensors[w->n_tensors++] = t;
    return 0;
}

/* --- layout -------------------------------------------------------------------------------- */

/* Bytes before the data section (header, metadata, tensor infos), unpadded. */
static uint64_t meta_bytes(const core_gguf_writer *w)
{
    uint64_t n = 24;
    for (size_t i = 0; i < w->n_kv; i++)
        n += 8 + w->kv[i].key_len + 4 + w->kv[i].val_len;
    for (size_t i = 0; i < w->n_tensors; i++)
        n += 8 + strlen(w->tensors[i].name) + 4 + 8 * (uint64_t)w->tensors[i].n_dims + 4 + 8;
    return n;
}

/* Offset of tensor i in the data section when tensor i's predecessors end at *end: the running
 * sum of sizes, each padded to the alignment. Every size is below 2^62 and there are at most
 * 2^28 tensors of them in memory at once, so the sums cannot wrap in practice; -EFBIG if they
 * would. */
static int data_layout(const core_gguf_writer *w, uint64_t *data_bytes)
{
    uint64_t at = 0;
    for (size_t i = 0; i < w->n_tensors; i++) {
        uint64_t padded = align_up(w->tensors[i].size, w->alignment);
        if (padded < w->tensors[i].size || at > UINT64_MAX / 2 - padded)
            return -EFBIG;
        at += padded;
    }
    *data_bytes = at;
    return 0;
}

uint64_t core_gguf_writer_file_size(const core_gguf_writer *w)
{
    uint64_t data = 0;
    if (data_layout(w, &data) != 0)
        return UINT64_MAX;
    return align_up(meta_bytes(w), w->alignment) + data;
}

/* --- writing ------------------------------------------------------------------------------- */

/* A file being written through a buffer; rc keeps the first error. */
typedef struct wfile {
    int fd;
    const char *path;
    uint8_t *buf;
    size_t n;
    uint64_t written;
    uint64_t total; /* for messages */
    int rc;
    char *err;
    size_t errlen;
} wfile;

static int wf_fail(wfile *f, int e, const char *what)
{
    if (f->rc == 0 && f->written == 0) {
        f->rc = -e;
        core_errf(f->err, f->errlen, "%s %s: %s", what, f->path, strerror(e));
    } else if (f->rc == 0) {
        f->rc = -e;
        core_errf(f->err, f->errlen, "%s %s: %s (after %" PRIu64 " of %" PRIu64 " bytes)", what,
                  f->path, strerror(e), f->written, f->total);
    }
    return f->rc;
}

static int wf_raw(wfile *f, const uint8_t *p, uint64_t n)
{
    while (n > 0 && f->rc == 0) {
        ssize_t k = write(f->fd, p, n < WRITE_CHUNK ? (size_t)n : WRITE_CHUNK);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return wf_fail(f, k < 0 ? errno : EIO, "cannot write");
        p += k;
        n -= (uint64_t)k;
        f->written += (uint64_t)k;
    }
    return f->rc;
}

static int wf_flush(wfile *f)
{
    int rc = f->n ? wf_raw(f, f->buf, f->n) : f->rc;
    f->n = 0;
    return rc;
}

static int wf_put(wfile *f, const void *p, uint64_t n)
{
    if (f->rc)
        return f->rc;
    if (n > WRITE_BUF_BYTES - f->n) {
        if (wf_flush(f) != 0)
            return f->rc;
        if (n >= WRITE_BUF_BYTES)
            return wf_raw(f, p, n);
    }
    memcpy(f->buf + f->n, p, (size_t)n);
    f->n += (size_t)n;
    return 0;
}

static int wf_u32(wfile *f, uint32_t v)
{
    return wf_put(f, &v, 4);
}
static int wf_u64(wfile *f, uint64_t v)
{
    return wf_put(f, &v, 8);
}

static int wf_zeros(wfile *f, uint64_t n)
{
    static const uint8_t zero[64];
    while (n > 0 && f->rc == 0) {
        uint64_t k = n < sizeof zero ? n : sizeof zero;
        wf_put(f, zero, k);
        n -= k;
    }
    return f->rc;
}

/* Header, metadata, tensor infos, padding, data: the whole file through f. */
static int write_all(const core_gguf_writer *w, wfile *f)
{
    wf_put(f, "GGUF", 4);
    wf_u32(f, GGUF_VERSION);
    wf_u64(f, w->n_tensors);
    wf_u64(f, w->n_kv);
    for (size_t i = 0; i < w->n_kv && f->rc == 0; i++) {
        const wkv *e = &w->kv[i];
        wf_u64(f, e->key_len);
        wf_put(f, e->mem, e->key_len);
        wf_u32(f, e->type);
        wf_put(f, e->mem + e->key_len, e->val_len);
    }
    uint64_t off = 0;
    for (size_t i = 0; i < w->n_tensors && f->rc == 0; i++) {
        const wtensor *t = &w->tensors[i];
        uint64_t len = strlen(t->name);
        wf_u64(f, len);
        wf_put(f, t->name, len);
        wf_u32(f, t->n_dims);
        wf_put(f, t->ne, 8 * (uint64_t)t->n_dims);
        wf_u32(f, t->type);
        wf_u64(f, off);
        off += align_up(t->size, w->alignment);
    }
    uint64_t meta = meta_bytes(w);
    wf_zeros(f, align_up(meta, w->alignment) - meta);
    for (size_t i = 0; i < w->n_tensors && f->rc == 0; i++) {
        const wtensor *t = &w->tensors[i];
        wf_put(f, t->data, t->size);
        wf_zeros(f, align_up(t->size, w->alignment) - t->size);
    }
    return wf_flush(f);
}

/* After the rename, makes the new directory entry durable. Best effort: the file itself is
 * already complete on disk, and some file systems refuse fsync on a directory. */
static void sync_dir(const char *path)
{
    const char *slash = strrchr(path, '/');
    char dir[4096];
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if ((size_t)(slash - path) < sizeof dir)
        snprintf(dir, sizeof dir, "%.*s", slash == path ? 1 : (int)(slash - path), path);
    else
        return;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
}

int core_gguf_writer_write(const core_gguf_writer *w, const char *path, char *err, size_t errlen)
{
    uint64_t data = 0;
    if (data_layout(w, &data) != 0) {
        core_errf(err, errlen, "%s: the tensors' total size overflows", path);
        return -EFBIG;
    }
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 5);
    uint8_t *buf = malloc(WRITE_BUF_BYTES);
    if (!tmp || !buf) {
        free(tmp);
        free(buf);
        core_errf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    wfile f = {.path = tmp,
               .buf = buf,
               .total = core_gguf_writer_file_size(w),
               .err = err,
               .errlen = errlen};
    bool created = false;
    f.fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (f.fd < 0) {
        wf_fail(&f, errno, "cannot create");
        goto out;
    }
    created = true;
    if (write_all(w, &f) != 0)
        goto out;
    if (fsync(f.fd) != 0) {
        wf_fail(&f, errno, "cannot flush");
        goto out;
    }
    int fd = f.fd;
    f.fd = -1;
    if (close(fd) != 0) {
        wf_fail(&f, errno, "cannot close");
        goto out;
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        f.rc = -e;
        core_errf(err, errlen, "cannot rename %s to %s: %s", tmp, path, strerror(e));
        goto out;
    }
    sync_dir(path);
out:
    if (f.fd >= 0)
        close(f.fd);
    if (f.rc != 0 && created)
        unlink(tmp);
    free(tmp);
    free(buf);
    return f.rc;
}
