/* GGUF v2/v3 reader: parses and validates the header, metadata and tensor table of a mapped
 * file (docs/FORMATS.md §2), and answers lookups by name.
 *
 * Everything in the file is untrusted. The parser walks a cursor over the mapping and checks
 * each length, count and offset against the bytes that remain before reading; counts are
 * first checked for plausibility against the file size, and the entry arrays grow as entries
 * are actually parsed, so a garbage count cannot make us allocate much more than the file.
 * The cursor knows the file's size apart from the bytes at hand: a header-only open
 * (core_gguf_open_header) parses a prefix, checks counts and tensor extents against the file
 * size, and when a read runs past the prefix but not past the file, says how far to read.
 * Strings, arrays and tensor data are never copied: they point into the mapping. Names are
 * indexed in two small open-addressing hash tables (keys, tensors), which also detect
 * duplicates in linear time.
 */
#include "core/format/gguf.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "core/base.h"
#include "core/format/types.h"

#define GGUF_MAGIC "GGUF"
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_HEADER_BYTES 24    /* magic, version, n_tensors, n_kv */
#define GGUF_MIN_KV_BYTES 13    /* key length, value type, a 1-byte value */
#define GGUF_MIN_TINFO_BYTES 32 /* name length, n_dims, one dim, type, offset */
#define GGUF_MAX_KEY_LEN 65535
#define GGUF_MAX_NAME_LEN 64
#define GGUF_MAX_ARRAY_DEPTH 4
#define GGUF_MAX_ENTRIES (1u << 28) /* keys or tensors; keeps hash indexes in uint32 */

/* A name -> index hash table over an array of structs whose name is a core_gguf_str at
 * name_off. Slots hold index + 1; 0 is empty. */
typedef struct name_index {
    uint32_t *slots;
    uint64_t mask;
    const uint8_t *items;
    size_t stride, name_off;
} name_index;

/* The public object plus what only this file needs; core_gguf is the first member so the
 * public pointer converts back. */
typedef struct gguf_impl {
    core_gguf g;
    name_index kv_ix;
    name_index tensor_ix;
} gguf_impl;

/* Parse cursor over the first size bytes of a file of file_size bytes (size < file_size only
 * for core_gguf_open_header). what names the item being parsed, for error messages. */
typedef struct cursor {
    const uint8_t *base;
    size_t size;
    uint64_t file_size;
    uint64_t need; /* set when a read went past size but not past file_size */
    size_t pos;
    char *err;
    size_t errlen;
    char what[192];
} cursor;

static const uint8_t vtype_size[CORE_GGUF_VTYPE_COUNT] = {
    [CORE_GGUF_UINT8] = 1,  [CORE_GGUF_INT8] = 1,  [CORE_GGUF_UINT16] = 2,  [CORE_GGUF_INT16] = 2,
    [CORE_GGUF_UINT32] = 4, [CORE_GGUF_INT32] = 4, [CORE_GGUF_FLOAT32] = 4, [CORE_GGUF_BOOL] = 1,
    [CORE_GGUF_UINT64] = 8, [CORE_GGUF_INT64] = 8, [CORE_GGUF_FLOAT64] = 8,
};

static const char *const vtype_names[CORE_GGUF_VTYPE_COUNT] = {
    "uint8", "int8",   "uint16", "int16",  "uint32", "int32",   "float32",
    "bool",  "string", "array",  "uint64", "int64",  "float64",
};

const char *core_gguf_vtype_name(uint32_t type)
{
    return type < CORE_GGUF_VTYPE_COUNT ? vtype_names[type] : "unknown";
}

bool core_gguf_str_eq(core_gguf_str s, const char *c)
{
    size_t n = strlen(c);
    return s.len == n && (n == 0 || memcmp(s.ptr, c, n) == 0);
}

uint64_t core_gguf_tensor_nelements(const core_gguf_tensor *t)
{
    uint64_t n = 1;
    for (int i = 0; i < CORE_GGUF_MAX_DIMS; i++)
        n *= t->ne[i];
    return n;
}

/* Copies an untrusted name into buf for a message: at most 64 bytes, non-printables as '?'. */
static const char *printable(char *buf, size_t cap, const char *p, uint64_t len)
{
    size_t n = 0;
    for (uint64_t i = 0; i < len && n + 4 < cap && i < 64; i++)
        buf[n++] = (p[i] >= 0x20 && p[i] < 0x7f) ? p[i] : '?';
    if (len > 64 && n + 4 < cap) {
        memcpy(buf + n, "...", 3);
        n += 3;
    }
    buf[n] = '\0';
    return buf;
}

/* --- cursor --------------------------------------------------------------------------------- */

/* Fails unless n more bytes are available; field says what they were for. When they are in
 * the file but past the bytes at hand, c->need says how far to read. */
static int need(cursor *c, uint64_t n, const char *field)
{
    if (n <= c->size - c->pos)
        return 0;
    if (n <= c->file_size - c->pos) {
        c->need = c->pos + n;
        core_errf(c->err, c->errlen,
                  "%s %s needs %" PRIu64 " bytes at offset %zu, %zu bytes were read", c->what,
                  field, n, c->pos, c->size);
        return -EINVAL;
    }
    core_errf(c->err, c->errlen,
              "truncated file: %s %s needs %" PRIu64 " bytes at offset %zu, file has %" PRIu64,
              c->what, field, n, c->pos, c->file_size);
    return -EINVAL;
}

static int read_bytes(cursor *c, void *out, size_t n, const char *field)
{
    if (need(c, n, field) != 0)
        return -EINVAL;
    memcpy(out, c->base + c->pos, n);
    c->pos += n;
    return 0;
}

static int read_u32(cursor *c, uint32_t *out, const char *field)
{
    return read_bytes(c, out, sizeof *out, field);
}

static int read_u64(cursor *c, uint64_t *out, const char *field)
{
    return read_bytes(c, out, sizeof *out, field);
}

static int read_str(cursor *c, core_gguf_str *s, const char *field)
{
    uint64_t len;
    if (read_u64(c, &len, field) != 0 || need(c, len, field) != 0)
        return -EINVAL;
    s->ptr = (const char *)c->base + c->pos;
    s->len = len;
    c->pos += (size_t)len;
    return 0;
}

/* --- name index ----------------------------------------------------------------------------- */

static uint64_t hash_name(const char *p, uint64_t n)
{
    return core_hash64(CORE_HASH_INIT, p, (size_t)n);
}

static const core_gguf_str *index_name(const name_index *ix, uint32_t i)
{
    return (const core_gguf_str *)(ix->items + (size_t)i * ix->stride + ix->name_off);
}

/* Builds the table over n items; returns the index of the first duplicate name in *dup (or
 * -1). n is bounded by the file size, so the table is too. */
static int index_build(name_index *ix, const void *items, size_t stride, size_t name_off,
                       uint64_t n, int64_t *dup)
{
    uint64_t cap = 16;
    while (cap < 2 * n)
        cap *= 2;
    ix->slots = calloc(cap, sizeof *ix->slots);
    if (!ix->slots)
        return -ENOMEM;
    ix->mask = cap - 1;
    ix->items = items;
    ix->stride = stride;
    ix->name_off = name_off;
    *dup = -1;
    for (uint32_t i = 0; i < n; i++) {
        const core_gguf_str *s = index_name(ix, i);
        uint64_t h = hash_name(s->ptr, s->len) & ix->mask;
        while (ix->slots[h] != 0) {
            const core_gguf_str *o = index_name(ix, ix->slots[h] - 1);
            if (o->len == s->len && memcmp(o->ptr, s->ptr, s->len) == 0) {
                *dup = i;
                return 0;
            }
            h = (h + 1) & ix->mask;
        }
        ix->slots[h] = i + 1;
    }
    return 0;
}

static int64_t index_find(const name_index *ix, const char *name)
{
    if (!ix->slots)
        return -1;
    uint64_t n = strlen(name);
    uint64_t h = hash_name(name, n) & ix->mask;
    while (ix->slots[h] != 0) {
        const core_gguf_str *o = index_name(ix, ix->slots[h] - 1);
        if (o->len == n && memcmp(o->ptr, name, n) == 0)
            return ix->slots[h] - 1;
        h = (h + 1) & ix->mask;
    }
    return -1;
}

/* --- metadata ------------------------------------------------------------------------------- */

/* Validates n elements of type etype at the cursor and moves past them. depth is the nesting
 * level of the array holding them (1 for a top-level array). */
static int walk_array(cursor *c, uint32_t etype, uint64_t n, int depth)
{
    char field[64];
    if (etype >= CORE_GGUF_VTYPE_COUNT) {
        core_errf(c->err, c->errlen, "%s: array has unknown element type %" PRIu32, c->what, etype);
        return -EINVAL;
    }
    if (etype == CORE_GGUF_STRING) {
        /* Each string needs at least its 8-byte length: reject absurd counts up front. */
        if (n > (c->size - c->pos) / 8)
            return need(c, n > UINT64_MAX / 8 ? UINT64_MAX : n * 8, "array of strings");
        for (uint64_t i = 0; i < n; i++) {
            uint64_t len;
            size_t left = c->size - c->pos;
            if (left >= 8) {
                memcpy(&len, c->base + c->pos, 8);
                if (len <= left - 8) {
                    c->pos += 8 + (size_t)len;
                    continue;
                }
            }
            core_gguf_str s; /* the slow path only to word the error */
            snprintf(field, sizeof field, "string element %" PRIu64, i);
            (void)read_str(c, &s, field); /* fails, leaving its message in c->err */
            return -EINVAL;
        }
        return 0;
    }
    if (etype == CORE_GGUF_ARRAY) {
        if (depth >= GGUF_MAX_ARRAY_DEPTH) {
            core_errf(c->err, c->errlen, "%s: arrays nested deeper than %d levels", c->what,
                      GGUF_MAX_ARRAY_DEPTH);
            return -EINVAL;
        }
        if (n > (c->size - c->pos) / 12)
            return need(c, n > UINT64_MAX / 12 ? UINT64_MAX : n * 12, "array of arrays");
        for (uint64_t i = 0; i < n; i++) {
            uint32_t t;
            uint64_t m;
            snprintf(field, sizeof field, "array element %" PRIu64 " header", i);
            if (read_u32(c, &t, field) != 0 || read_u64(c, &m, field) != 0 ||
                walk_array(c, t, m, depth + 1) != 0)
                return -EINVAL;
        }
        return 0;
    }
    uint64_t esize = vtype_size[etype];
    if (n > (c->size - c->pos) / esize) {
        snprintf(field, sizeof field, "array of %" PRIu64 " %s", n, vtype_names[etype]);
        return need(c, n > UINT64_MAX / esize ? UINT64_MAX : n * esize, field);
    }
    if (etype == CORE_GGUF_BOOL) {
        for (uint64_t i = 0; i < n; i++) {
            if (c->base[c->pos + i] > 1) {
                core_errf(c->err, c->errlen, "%s: bool element %" PRIu64 " has value %u (not 0/1)",
                          c->what, i, c->base[c->pos + i]);
                return -EINVAL;
            }
        }
    }
    c->pos += (size_t)(n * esize);
    return 0;
}

/* Reads a scalar of type t (not STRING or ARRAY) into kv->v. */
static int read_scalar(cursor *c, uint32_t t, core_gguf_kv *kv)
{
    uint8_t b[8];
    if (read_bytes(c, b, vtype_size[t], "value") != 0)
        return -EINVAL;
    uint8_t u8 = b[0];
    uint16_t u16;
    uint32_t u32;
    uint64_t u64;
    memcpy(&u16, b, 2);
    memcpy(&u32, b, 4);
    memcpy(&u64, b, 8);
    switch (t) {
    case CORE_GGUF_UINT8:
        kv->v.u = u8;
        break;
    case CORE_GGUF_INT8:
        kv->v.i = u8 >= 0x80 ? (int64_t)u8 - 0x100 : (int64_t)u8;
        break;
    case CORE_GGUF_UINT16:
        kv->v.u = u16;
        break;
    case CORE_GGUF_INT16:
        kv->v.i = (int16_t)u16;
        break;
    case CORE_GGUF_UINT32:
        kv->v.u = u32;
        break;
    case CORE_GGUF_INT32:
        kv->v.i = (int32_t)u32;
        break;
    case CORE_GGUF_UINT64:
        kv->v.u = u64;
        break;
    case CORE_GGUF_INT64:
        kv->v.i = (int64_t)u64;
        break;
    case CORE_GGUF_FLOAT32: {
        float f;
        memcpy(&f, b, 4);
        kv->v.f = f;
        break;
    }
    case CORE_GGUF_FLOAT64:
        memcpy(&kv->v.f, b, 8);
        break;
    case CORE_GGUF_BOOL:
        if (u8 > 1) {
            core_errf(c->err, c->errlen, "%s: bool value %u is not 0 or 1", c->what, u8);
            return -EINVAL;
        }
        kv->v.b = u8 != 0;
        break;
    default:
        return -EINVAL;
    }
    return 0;
}

static int parse_kv(cursor *c, uint64_t i, core_gguf_kv *kv)
{
    char name[80];
    snprintf(c->what, sizeof c->what, "metadata key %" PRIu64, i);
    if (read_str(c, &kv->key, "name") != 0)
        return -EINVAL;
    if (kv->key.len == 0 || kv->key.len > GGUF_MAX_KEY_LEN) {
        core_errf(c->err, c->errlen, "%s: name length %" PRIu64 " is not in 1..%d", c->what,
                  kv->key.len, GGUF_MAX_KEY_LEN);
        return -EINVAL;
    }
    snprintf(c->what, sizeof c->what, "metadata key %" PRIu64 " ('%s')", i,
             printable(name, sizeof name, kv->key.ptr, kv->key.len));
    if (read_u32(c, &kv->type, "value type") != 0)
        return -EINVAL;
    switch (kv->type) {
    case CORE_GGUF_STRING:
        return read_str(c, &kv->v.s, "value");
    case CORE_GGUF_ARRAY: {
        if (read_u32(c, &kv->v.arr.type, "array element type") != 0 ||
            read_u64(c, &kv->v.arr.n, "array length") != 0)
            return -EINVAL;
        size_t start = c->pos;
        if (walk_array(c, kv->v.arr.type, kv->v.arr.n, 1) != 0)
            return -EINVAL;
        kv->v.arr.data = c->base + start;
        kv->v.arr.bytes = c->pos - start;
        return 0;
    }
    default:
        if (kv->type >= CORE_GGUF_VTYPE_COUNT) {
            core_errf(c->err, c->errlen, "%s: unknown value type %" PRIu32, c->what, kv->type);
            return -EINVAL;
        }
        return read_scalar(c, kv->type, kv);
    }
}

/* Integer value of a kv as (negative?, magnitude); -EINVAL for non-integer types. */
static int kv_int(const core_gguf_kv *kv, bool *neg, uint64_t *mag)
{
    switch (kv->type) {
    case CORE_GGUF_UINT8:
    case CORE_GGUF_UINT16:
    case CORE_GGUF_UINT32:
    case CORE_GGUF_UINT64:
        *neg = false;
        *mag = kv->v.u;
        return 0;
    case CORE_GGUF_INT8:
    case CORE_GGUF_INT16:
    case CORE_GGUF_INT32:
    case CORE_GGUF_INT64:
        *neg = kv->v.i < 0;
        *mag = *neg ? (uint64_t)0 - (uint64_t)kv->v.i : (uint64_t)kv->v.i;
        return 0;
    default:
        return -EINVAL;
    }
}

static int parse_metadata(cursor *c, core_gguf *g, uint64_t n_kv)
{
    size_t cap = 0;
    for (uint64_t i = 0; i < n_kv; i++) {
        if (core_grow(&g->kv, &cap, i + 1, sizeof *g->kv) != 0) {
            core_errf(c->err, c->errlen, "out of memory reading metadata");
            return -ENOMEM;
        }
        memset(&g->kv[i], 0, sizeof g->kv[i]);
        if (parse_kv(c, i, &g->kv[i]) != 0)
            return -EINVAL;
        g->n_kv = i + 1;
    }
    return 0;
}

/* general.alignment: any integer type, a nonzero power of two; default 32. */
static int parse_alignment(gguf_impl *impl, char *err, size_t errlen)
{
    core_gguf *g = &impl->g;
    int64_t i = index_find(&impl->kv_ix, "general.alignment");
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    if (i < 0 || !g->kv)
        return 0;
    bool neg;
    uint64_t a;
    if (kv_int(&g->kv[i], &neg, &a) != 0) {
        core_errf(err, errlen, "general.alignment has type %s, expected an integer (uint32)",
                  core_gguf_vtype_name(g->kv[i].type));
        return -EINVAL;
    }
    if (neg || a == 0 || (a & (a - 1)) != 0 || a > (1u << 30)) {
        core_errf(err, errlen, "general.alignment is %s%" PRIu64 ", must be a power of two",
                  neg ? "-" : "", a);
        return -EINVAL;
    }
    g->alignment = a;
    return 0;
}

/* --- tensors -------------------------------------------------------------------------------- */

/* Reads one tensor info and checks everything that does not depend on the data section. */
static int parse_tensor_info(cursor *c, uint64_t i, core_gguf_tensor *t)
{
    char name[80];
    snprintf(c->what, sizeof c->what, "tensor info %" PRIu64, i);
    if (read_str(c, &t->name, "name") != 0)
        return -EINVAL;
    if (t->name.len == 0 || t->name.len > GGUF_MAX_NAME_LEN) {
        core_errf(c->err, c->errlen, "%s: name length %" PRIu64 " is not in 1..%d", c->what,
                  t->name.len, GGUF_MAX_NAME_LEN);
        return -EINVAL;
    }
    snprintf(c->what, sizeof c->what, "tensor '%s'",
             printable(name, sizeof name, t->name.ptr, t->name.len));
    if (read_u32(c, &t->n_dims, "n_dims") != 0)
        return -EINVAL;
    if (t->n_dims < 1 || t->n_dims > CORE_GGUF_MAX_DIMS) {
        core_errf(c->err, c->errlen, "%s: n_dims is %" PRIu32 ", must be 1..%d", c->what, t->n_dims,
                  CORE_GGUF_MAX_DIMS);
        return -EINVAL;
    }
    uint64_t nel = 1;
    for (uint32_t d = 0; d < CORE_GGUF_MAX_DIMS; d++) {
        t->ne[d] = 1;
        if (d < t->n_dims && read_u64(c, &t->ne[d], "dims") != 0)
            return -EINVAL;
        if (t->ne[d] == 0 || t->ne[d] > (uint64_t)INT64_MAX / nel) {
            core_errf(c->err, c->errlen,
                      "%s: dimension %" PRIu32 " is %" PRIu64
                      " (must be >= 1 and the element count must fit in int64)",
                      c->what, d, t->ne[d]);
            return -EINVAL;
        }
        nel *= t->ne[d];
    }
    if (read_u32(c, &t->type, "type") != 0 || read_u64(c, &t->offset, "offset") != 0)
        return -EINVAL;
    size_t be = core_type_block_elems(t->type);
    if (be == 0) {
        core_errf(c->err, c->errlen, "%s: unsupported tensor type %" PRIu32, c->what, t->type);
        return -EINVAL;
    }
    if (t->ne[0] % be != 0) {
        core_errf(c->err, c->errlen,
                  "%s: ne[0] = %" PRIu64 " is not a multiple of the %s block size %zu", c->what,
                  t->ne[0], core_type_name(t->type), be);
        return -EINVAL;
    }
    uint64_t size = core_type_row_bytes(t->type, t->ne[0]);
    for (int d = 1; d < CORE_GGUF_MAX_DIMS && size != 0; d++)
        size = size > UINT64_MAX / t->ne[d] ? 0 : size * t->ne[d];
    if (size == 0) {
        core_errf(c->err, c->errlen, "%s: byte size overflows", c->what);
        return -EINVAL;
    }
    t->size = size;
    return 0;
}

static int parse_tensor_infos(cursor *c, core_gguf *g, uint64_t n_tensors)
{
    size_t cap = 0;
    if (n_tensors > (c->file_size - c->pos) / GGUF_MIN_TINFO_BYTES) {
        core_errf(c->err, c->errlen,
                  "truncated or corrupt file: %" PRIu64 " tensor infos need at least %" PRIu64
                  " bytes, but only %" PRIu64 " bytes follow the metadata",
                  n_tensors, n_tensors * GGUF_MIN_TINFO_BYTES, c->file_size - c->pos);
        return -EINVAL;
    }
    for (uint64_t i = 0; i < n_tensors; i++) {
        if (core_grow(&g->tensors, &cap, i + 1, sizeof *g->tensors) != 0) {
            core_errf(c->err, c->errlen, "out of memory reading tensor infos");
            return -ENOMEM;
        }
        memset(&g->tensors[i], 0, sizeof g->tensors[i]);
        if (parse_tensor_info(c, i, &g->tensors[i]) != 0)
            return -EINVAL;
        g->n_tensors = i + 1;
    }
    return 0;
}

/* Places the data section and checks each tensor's alignment and extent against the file of
 * file_size bytes; with_data points the tensors at their data in g->base. */
static int place_tensors(core_gguf *g, size_t info_end, uint64_t file_size, bool with_data,
                         char *err, size_t errlen)
{
    uint64_t a = g->alignment;
    uint64_t start = info_end + (a - info_end % a) % a;
    if (start > file_size) {
        if (g->n_tensors > 0) {
            core_errf(err, errlen,
                      "truncated file: data section starts at %" PRIu64 ", file has %" PRIu64,
                      start, file_size);
            return -EINVAL;
        }
        start = file_size;
    }
    g->data_offset = start;
    uint64_t avail = file_size - start;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        core_gguf_tensor *t = &g->tensors[i];
        char name[80];
        printable(name, sizeof name, t->name.ptr, t->name.len);
        if (t->offset % a != 0) {
            core_errf(err, errlen,
                      "tensor '%s': offset %" PRIu64 " is not a multiple of the alignment %" PRIu64,
                      name, t->offset, a);
            return -EINVAL;
        }
        if (t->offset > avail || t->size > avail - t->offset) {
            core_errf(err, errlen,
                      "tensor '%s': data [offset %" PRIu64 ", size %" PRIu64
                      "] extends past end of file (size %" PRIu64 ", data section at %" PRIu64 ")",
                      name, t->offset, t->size, file_size, start);
            return -EINVAL;
        }
        t->data = with_data ? g->base + start + t->offset : NULL;
    }
    return 0;
}

/* --- open / close --------------------------------------------------------------------------- */

static int parse_header(cursor *c, core_gguf *g, uint64_t *n_tensors, uint64_t *n_kv)
{
    char magic[4];
    snprintf(c->what, sizeof c->what, "GGUF");
    if (need(c, GGUF_HEADER_BYTES, "header") != 0 || read_bytes(c, magic, 4, "magic") != 0)
        return -EINVAL;
    if (memcmp(magic, GGUF_MAGIC, 4) != 0) {
        char shown[8];
        core_errf(c->err, c->errlen, "not a GGUF file: magic is '%s' (%02x %02x %02x %02x)",
                  printable(shown, sizeof shown, magic, 4), (uint8_t)magic[0], (uint8_t)magic[1],
                  (uint8_t)magic[2], (uint8_t)magic[3]);
        return -EINVAL;
    }
    /* Cannot fail after the need() above; checked so no path reads an unset count. */
    if (read_u32(c, &g->version, "version") != 0 || read_u64(c, n_tensors, "tensor count") != 0 ||
        read_u64(c, n_kv, "metadata key count") != 0)
        return -EINVAL;
    if (g->version == 1) {
        core_errf(c->err, c->errlen,
                  "GGUF version 1 is not supported (it used 32-bit counts); re-convert the model "
                  "with a current llama.cpp");
        return -EINVAL;
    }
    if (g->version != 2 && g->version != 3) {
        core_errf(c->err, c->errlen, "unsupported GGUF version %" PRIu32 "%s (expected 2 or 3)",
                  g->version, (g->version & 0xffff) == 0 ? ", a big-endian file?" : "");
        return -EINVAL;
    }
    if (*n_kv > GGUF_MAX_ENTRIES || *n_tensors > GGUF_MAX_ENTRIES) {
        core_errf(c->err, c->errlen,
                  "corrupt header: implausible counts (%" PRIu64 " metadata keys, %" PRIu64
                  " tensors; at most %u each)",
                  *n_kv, *n_tensors, GGUF_MAX_ENTRIES);
        return -EINVAL;
    }
    /* Both counts are below 2^28, so the minimum size cannot overflow. */
    uint64_t min = *n_kv * GGUF_MIN_KV_BYTES + *n_tensors * GGUF_MIN_TINFO_BYTES;
    if (min > c->file_size - c->pos) {
        core_errf(c->err, c->errlen,
                  "truncated or corrupt file: the header claims %" PRIu64
                  " metadata keys and %" PRIu64 " tensors, which need at least %" PRIu64
                  " bytes, but only %" PRIu64 " bytes follow it",
                  *n_kv, *n_tensors, min, c->file_size - c->pos);
        return -EINVAL;
    }
    return 0;
}

/* The header, metadata and tensor infos at the cursor, with both name indexes built. */
static int parse_tables(gguf_impl *impl, cursor *c)
{
    core_gguf *g = &impl->g;
    uint64_t n_tensors, n_kv;
    int64_t dup;
    char name[80];
    if (parse_header(c, g, &n_tensors, &n_kv) != 0 || parse_metadata(c, g, n_kv) != 0)
        return -EINVAL;
    if (index_build(&impl->kv_ix, g->kv, sizeof *g->kv, offsetof(core_gguf_kv, key), g->n_kv,
                    &dup) != 0) {
        core_errf(c->err, c->errlen, "out of memory indexing metadata");
        return -ENOMEM;
    }
    if (dup >= 0) {
        core_errf(c->err, c->errlen, "duplicate metadata key '%s' (key %" PRId64 ")",
                  printable(name, sizeof name, g->kv[dup].key.ptr, g->kv[dup].key.len), dup);
        return -EINVAL;
    }
    if (parse_alignment(impl, c->err, c->errlen) != 0 || parse_tensor_infos(c, g, n_tensors) != 0)
        return -EINVAL;
    if (index_build(&impl->tensor_ix, g->tensors, sizeof *g->tensors,
                    offsetof(core_gguf_tensor, name), g->n_tensors, &dup) != 0) {
        core_errf(c->err, c->errlen, "out of memory indexing tensors");
        return -ENOMEM;
    }
    if (dup >= 0) {
        core_errf(c->err, c->errlen, "duplicate tensor name '%s' (tensor %" PRId64 ")",
                  printable(name, sizeof name, g->tensors[dup].name.ptr, g->tensors[dup].name.len),
                  dup);
        return -EINVAL;
    }
    return 0;
}

/* Parses and validates the file of file_size bytes whose first g->size bytes are at g->base:
 * all of it, or (header_only) at least its header, metadata and tensor infos, when the tensors
 * get no data and a prefix too short sets *need to how far the parse needs to read. */
static int parse(gguf_impl *impl, uint64_t file_size, bool header_only, uint64_t *need, char *err,
                 size_t errlen)
{
    core_gguf *g = &impl->g;
    cursor c = {
        .base = g->base, .size = g->size, .file_size = file_size, .err = err, .errlen = errlen};
    int rc = parse_tables(impl, &c);
    *need = c.need;
    if (rc != 0)
        return rc;
    return place_tensors(g, c.pos, file_size, !header_only, err, errlen);
}

/* Opens size bytes at base, the first of a file of file_size bytes (see parse). */
static core_gguf *open_base(const uint8_t *base, size_t size, uint64_t file_size, bool mapped,
                            bool header_only, uint64_t *need, char *err, size_t errlen)
{
    gguf_impl *impl = calloc(1, sizeof *impl);
    if (!impl) {
        core_errf(err, errlen, "out of memory");
        if (mapped)
            munmap((void *)base, size);
        return NULL;
    }
    impl->g.base = base;
    impl->g.size = size;
    impl->g.mapped = mapped;
    if (parse(impl, file_size, header_only, need, err, errlen) != 0) {
        core_gguf_close(&impl->g);
        return NULL;
    }
    return &impl->g;
}

core_gguf *core_gguf_open_memory(const void *buf, size_t len, char *err, size_t errlen)
{
    static const uint8_t empty[1];
    uint64_t need;
    len = buf ? len : 0;
    return open_base(buf ? buf : empty, len, len, false, false, &need, err, errlen);
}

core_gguf *core_gguf_open_header(const void *buf, size_t len, uint64_t file_size, uint64_t *need,
                                 char *err, size_t errlen)
{
    static const uint8_t empty[1];
    uint64_t ignored;
    need = need ? need : &ignored;
    len = buf ? len : 0;
    if (len > file_size)
        len = (size_t)file_size;
    *need = 0;
    return open_base(buf ? buf : empty, len, file_size, false, true, need, err, errlen);
}

core_gguf *core_gguf_open(const char *path, char *err, size_t errlen)
{
    size_t size;
    void *p = core_map_file(path, GGUF_HEADER_BYTES, "a GGUF header needs", &size, err, errlen);
    if (!p)
        return NULL;
    uint64_t need;
    return open_base(p, size, size, true, false, &need, err, errlen);
}

void core_gguf_close(core_gguf *g)
{
    if (!g)
        return;
    gguf_impl *impl = (gguf_impl *)g;
    if (g->mapped)
        munmap((void *)g->base, g->size);
    free(impl->kv_ix.slots);
    free(impl->tensor_ix.slots);
    free(g->kv);
    free(g->tensors);
    free(impl);
}

/* --- lookups and getters -------------------------------------------------------------------- */

const core_gguf_kv *core_gguf_find(const core_gguf *g, const char *key)
{
    int64_t i = index_find(&((const gguf_impl *)g)->kv_ix, key);
    return i < 0 ? NULL : &g->kv[i];
}

const core_gguf_tensor *core_gguf_find_tensor(const core_gguf *g, const char *name)
{
    int64_t i = index_find(&((const gguf_impl *)g)->tensor_ix, name);
    return i < 0 ? NULL : &g->tensors[i];
}

/* An integer value within [lo, hi]: the shared part of the integer getters. */
static int get_int(const core_gguf *g, const char *key, int64_t lo, uint64_t hi, bool *neg,
                   uint64_t *mag)
{
    const core_gguf_kv *kv = core_gguf_find(g, key);
    if (!kv)
        return -ENOENT;
    if (kv_int(kv, neg, mag) != 0)
        return -EINVAL;
    if (*neg ? (lo >= 0 || *mag > (uint64_t)0 - (uint64_t)lo) : *mag > hi)
        return -EINVAL;
    return 0;
}

int core_gguf_get_u32(const core_gguf *g, const char *key, uint32_t *out)
{
    bool neg;
    uint64_t m;
    int rc = get_int(g, key, 0, UINT32_MAX, &neg, &m);
    if (rc == 0)
        *out = (uint32_t)m;
    return rc;
}

int core_gguf_get_u64(const core_gguf *g, const char *key, uint64_t *out)
{
    bool neg;
    uint64_t m;
    int rc = get_int(g, key, 0, UINT64_MAX, &neg, &m);
    if (rc == 0)
        *out = m;
    return rc;
}

int core_gguf_get_i32(const core_gguf *g, const char *key, int32_t *out)
{
    bool neg;
    uint64_t m;
    int rc = get_int(g, key, INT32_MIN, INT32_MAX, &neg, &m);
    if (rc == 0)
        *out = neg ? (int32_t)(-(int64_t)m) : (int32_t)m;
    return rc;
}

int core_gguf_get_f32(const core_gguf *g, const char *key, float *out)
{
    const core_gguf_kv *kv = core_gguf_find(g, key);
    if (!kv)
        return -ENOENT;
    if (kv->type != CORE_GGUF_FLOAT32 && kv->type != CORE_GGUF_FLOAT64)
        return -EINVAL;
    *out = (float)kv->v.f;
    return 0;
}

int core_gguf_get_bool(const core_gguf *g, const char *key, bool *out)
{
    const core_gguf_kv *kv = core_gguf_find(g, key);
    if (!kv)
        return -ENOENT;
    if (kv->type != CORE_GGUF_BOOL)
        return -EINVAL;
    *out = kv->v.b;
    return 0;
}

int core_gguf_get_strv(const core_gguf *g, const char *key, core_gguf_str *out)
{
    const core_gguf_kv *kv = core_gguf_find(g, key);
    if (!kv)
        return -ENOENT;
    if (kv->type != CORE_GGUF_STRING)
        return -EINVAL;
    *out = kv->v.s;
    return 0;
}

int core_gguf_get_str(const core_gguf *g, const char *key, char *out, size_t cap)
{
    core_gguf_str s;
    int rc = core_gguf_get_strv(g, key, &s);
    if (rc != 0)
        return rc;
    if (s.len >= cap)
        return -ENOSPC;
    if (s.len)
        memcpy(out, s.ptr, (size_t)s.len);
    out[s.len] = '\0';
    return 0;
}

int core_gguf_get_str_array(const core_gguf *g, const char *key, core_gguf_str **out, uint64_t *n)
{
    const core_gguf_kv *kv = core_gguf_find(g, key);
    if (!kv)
        return -ENOENT;
    if (kv->type != CORE_GGUF_ARRAY || kv->v.arr.type != CORE_GGUF_STRING)
        return -EINVAL;
    /* Validated at open: n strings, each an 8-byte length and its bytes, fill arr.bytes. */
    core_gguf_str *v = malloc((size_t)(kv->v.arr.n ? kv->v.arr.n : 1) * sizeof *v);
    if (!v)
        return -ENOMEM;
    const uint8_t *p = kv->v.arr.data;
    for (uint64_t i = 0; i < kv->v.arr.n; i++) {
        memcpy(&v[i].len, p, 8);
        v[i].ptr = (const char *)p + 8;
        p += 8 + v[i].len;
    }
    *out = v;
    *n = kv->v.arr.n;
    return 0;
}

int core_gguf_get_i32_array(const core_gguf *g, const char *key, int32_t **out, uint64_t *n)
{
    const core_gguf_kv *kv = core_gguf_find(g, key);
    if (!kv)
        return -ENOENT;
    if (kv->type != CORE_GGUF_ARRAY)
        return -EINVAL;
    uint32_t et = kv->v.arr.type;
    if (et >= CORE_GGUF_VTYPE_COUNT || et == CORE_GGUF_BOOL || et == CORE_GGUF_FLOAT32 ||
        et == CORE_GGUF_FLOAT64 || vtype_size[et] == 0)
        return -EINVAL;
    int32_t *v = malloc((size_t)(kv->v.arr.n ? kv->v.arr.n : 1) * sizeof *v);
    if (!v)
        return -ENOMEM;
    const uint8_t *p = kv->v.arr.data;
    for (uint64_t i = 0; i < kv->v.arr.n; i++, p += vtype_size[et]) {
        core_gguf_kv e = {.type = et};
        cursor c = {.base = p, .size = vtype_size[et]};
        bool neg;
        uint64_t m;
        if (read_scalar(&c, et, &e) != 0 || kv_int(&e, &neg, &m) != 0 ||
            (neg ? m > (uint64_t)INT32_MAX + 1 : m > INT32_MAX)) {
            free(v);
            return -EINVAL;
        }
        v[i] = neg ? (int32_t)(-(int64_t)m) : (int32_t)m;
    }
    *out = v;
    *n = kv->v.arr.n;
    return 0;
}

int core_gguf_get_f32_array(const core_gguf *g, const char *key, float **out, uint64_t *n)
{
    const core_gguf_kv *kv = core_gguf_find(g, key);
    if (!kv)
        return -ENOENT;
    if (kv->type != CORE_GGUF_ARRAY || kv->v.arr.type != CORE_GGUF_FLOAT32)
        return -EINVAL;
    float *v = malloc((size_t)(kv->v.arr.n ? kv->v.arr.n : 1) * sizeof *v);
    if (!v)
        return -ENOMEM;
    memcpy(v, kv->v.arr.data, (size_t)kv->v.arr.n * sizeof *v); /* little-endian host */
    *out = v;
    *n = kv->v.arr.n;
    return 0;
}

/* --- printing ------------------------------------------------------------------------------- */

#define PRINT_STR_LIMIT 120
#define PRINT_ARRAY_LIMIT 8

/* Prints a string quoted and escaped, cut at PRINT_STR_LIMIT bytes (on a UTF-8 boundary) unless
 * full. */
static void print_str(FILE *out, core_gguf_str s, bool full)
{
    uint64_t n = s.len;
    if (!full && n > PRINT_STR_LIMIT) {
        n = PRINT_STR_LIMIT;
        while (n > 0 && ((uint8_t)s.ptr[n] & 0xc0) == 0x80)
            n--;
    }
    fputc('"', out);
    for (uint64_t i = 0; i < n; i++) {
        uint8_t ch = (uint8_t)s.ptr[i];
        if (ch == '"' || ch == '\\')
            fprintf(out, "\\%c", ch);
        else if (ch == '\n')
            fputs("\\n", out);
        else if (ch == '\t')
            fputs("\\t", out);
        else if (ch < 0x20 || ch == 0x7f)
            fprintf(out, "\\x%02x", ch);
        else
            fputc(ch, out);
    }
    fputc('"', out);
    if (n < s.len)
        fprintf(out, "... (%" PRIu64 " bytes)", s.len);
}

/* Prints a scalar (not STRING or ARRAY) value. */
static void print_scalar(FILE *out, const core_gguf_kv *kv)
{
    bool neg;
    uint64_t mag;
    if (kv->type == CORE_GGUF_FLOAT32 || kv->type == CORE_GGUF_FLOAT64)
        fprintf(out, "%.9g", kv->v.f);
    else if (kv->type == CORE_GGUF_BOOL)
        fputs(kv->v.b ? "true" : "false", out);
    else if (kv_int(kv, &neg, &mag) == 0)
        fprintf(out, "%s%" PRIu64, neg ? "-" : "", mag);
}

/* Prints the value of type t at the cursor and moves past it; a nested array shows only its
 * type and length. The value was validated at open, so the reads cannot fail; -EINVAL if one
 * does anyway, rather than printing uninitialised values. */
static int print_value(FILE *out, cursor *c, uint32_t t, bool full)
{
    if (t == CORE_GGUF_STRING) {
        core_gguf_str s;
        if (read_str(c, &s, "value") != 0)
            return -EINVAL;
        print_str(out, s, full);
    } else if (t == CORE_GGUF_ARRAY) {
        uint32_t et;
        uint64_t n;
        if (read_u32(c, &et, "array") != 0 || read_u64(c, &n, "array") != 0)
            return -EINVAL;
        fprintf(out, "array[%s, %" PRIu64 "]", core_gguf_vtype_name(et), n);
        return walk_array(c, et, n, 2);
    } else {
        core_gguf_kv v = {.type = t};
        if (read_scalar(c, t, &v) != 0)
            return -EINVAL;
        print_scalar(out, &v);
    }
    return 0;
}

static void print_kv(FILE *out, const core_gguf *g, const core_gguf_kv *kv, bool full)
{
    char key[80];
    fprintf(out, "  %-44s %-8s ", printable(key, sizeof key, kv->key.ptr, kv->key.len),
            core_gguf_vtype_name(kv->type));
    if (kv->type == CORE_GGUF_STRING) {
        print_str(out, kv->v.s, full);
    } else if (kv->type != CORE_GGUF_ARRAY) {
        print_scalar(out, kv);
    } else {
        uint64_t n = kv->v.arr.n;
        uint64_t shown = full || n <= PRINT_ARRAY_LIMIT ? n : PRINT_ARRAY_LIMIT;
        cursor c = {.base = g->base, .size = g->size, .pos = (size_t)(kv->v.arr.data - g->base)};
        fprintf(out, "[%s, %" PRIu64 "] [", core_gguf_vtype_name(kv->v.arr.type), n);
        for (uint64_t i = 0; i < shown; i++) {
            if (i)
                fputs(", ", out);
            if (print_value(out, &c, kv->v.arr.type, full) != 0)
                break;
        }
        fputs(shown < n ? ", ...]" : "]", out);
    }
    fputc('\n', out);
}

void core_gguf_print(const core_gguf *g, FILE *out, bool full)
{
    uint64_t count[CORE_TYPE_COUNT] = {0}, bytes[CORE_TYPE_COUNT] = {0}, total = 0;
    char name[80];
    fprintf(out,
            "GGUF version %" PRIu32 ", %zu bytes, alignment %" PRIu64 ", data at offset %" PRIu64
            "\n\n%" PRIu64 " metadata keys:\n",
            g->version, g->size, g->alignment, g->data_offset, g->n_kv);
    for (uint64_t i = 0; i < g->n_kv; i++)
        print_kv(out, g, &g->kv[i], full);
    fprintf(out, "\n%" PRIu64 " tensors:\n  %-5s %-32s %-6s %-24s %12s %12s\n", g->n_tensors, "#",
            "name", "type", "ne", "bytes", "offset");
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const core_gguf_tensor *t = &g->tensors[i];
        char ne[96];
        int n = snprintf(ne, sizeof ne, "[%" PRIu64, t->ne[0]);
        for (uint32_t d = 1; d < t->n_dims; d++)
            n += snprintf(ne + n, sizeof ne - (size_t)n, ", %" PRIu64, t->ne[d]);
        snprintf(ne + n, sizeof ne - (size_t)n, "]");
        fprintf(out, "  %-5" PRIu64 " %-32s %-6s %-24s %12" PRIu64 " %12" PRIu64 "\n", i,
                printable(name, sizeof name, t->name.ptr, t->name.len), core_type_name(t->type), ne,
                t->size, t->offset);
        count[t->type]++; /* validated at open: a known type, below CORE_TYPE_COUNT */
        bytes[t->type] += t->size;
        total += t->size;
    }
    fputs("\nby type:\n", out);
    for (uint32_t t = 0; t < CORE_TYPE_COUNT; t++)
        if (count[t])
            fprintf(out, "  %s: %" PRIu64 " tensors, %" PRIu64 " bytes\n", core_type_name(t),
                    count[t], bytes[t]);
    fprintf(out, "  total: %" PRIu64 " tensors, %" PRIu64 " bytes\n", g->n_tensors, total);
}
