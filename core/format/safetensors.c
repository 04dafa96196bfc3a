/* safetensors reader: checks the 8-byte header length, parses the JSON header with a strict
 * purpose-built parser, then checks every tensor's dtype, shape and byte range and the layout
 * of the body (docs/FORMATS.md §5).
 *
 * core/ has no JSON library, and a general one would accept far more than a safetensors header
 * may hold. The parser below knows the one grammar allowed (ws = JSON whitespace):
 *
 *     header   = '{' [entry *(',' entry)] '}' *ws          the first byte must be '{'
 *     entry    = string ':' (tensor | metadata)            metadata only under "__metadata__"
 *     tensor   = '{' "dtype": string, "shape": [uint...], "data_offsets": [uint, uint] '}'
 *                (any order, each exactly once, nothing else)
 *     metadata = null | '{' [string ':' string *(',' string ':' string)] '}'
 *
 * so nesting is bounded by construction (three levels) and every other JSON form is an error
 * naming the header byte where it starts. The header is checked to be valid UTF-8 as a whole
 * first. Strings are decoded (all JSON escapes; \uXXXX surrogate pairs become UTF-8) into one
 * arena as large as the header, which always suffices: a decoded string plus its NUL is never
 * longer than its quoted form. Tensors go into one growing array; a sorted array of pointers
 * finds duplicate names in O(n log n) and serves lookups, and a sort by offset checks that the
 * tensors tile the body exactly. Every check runs against the file's size, not the bytes at hand,
 * so a header-only open (core_st_open_header) checks the same things from the header alone.
 */
#include "core/format/safetensors.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "core/base.h"
#include "core/format/types.h"

#define ST_LEN_BYTES 8 /* the little-endian header length in front of the header */
#define NAME_SHOWN 64  /* bytes of an untrusted name quoted in a message */

/* The public object plus what only this file needs; core_st is the first member so the
 * public pointer converts back. */
typedef struct st_impl {
    core_st st;
    char *arena;                    /* every decoded name, key and value */
    const core_st_tensor **by_name; /* (n_tensors) sorted by name */
    size_t cap_tensors, cap_keys, cap_vals;
} st_impl;

/* Parse cursor over the header. ctx names the entry being parsed, for messages. */
typedef struct parser {
    const uint8_t *p;
    size_t n, pos;
    char *arena;
    size_t arena_used;
    st_impl *impl;
    const uint8_t *body; /* NULL when only the header was read */
    uint64_t body_len;
    char *err;
    size_t errlen;
    char ctx[NAME_SHOWN + 32];
    char tok[32];
} parser;

/* Every dtype string of the format, with its element size in bits. */
static const struct {
    const char *name;
    uint32_t bits;
    uint32_t type;
} dtypes[] = {
    {"BOOL", 8, CORE_ST_OTHER},        {"U8", 8, CORE_ST_OTHER},
    {"I8", 8, CORE_ST_OTHER},          {"F8_E5M2", 8, CORE_ST_OTHER},
    {"F8_E4M3", 8, CORE_ST_OTHER},     {"F8_E8M0", 8, CORE_ST_OTHER},
    {"F8_E4M3FNUZ", 8, CORE_ST_OTHER}, {"F8_E5M2FNUZ", 8, CORE_ST_OTHER},
    {"I16", 16, CORE_ST_OTHER},        {"U16", 16, CORE_ST_OTHER},
    {"F16", 16, CORE_TYPE_F16},        {"BF16", 16, CORE_TYPE_BF16},
    {"I32", 32, CORE_ST_OTHER},        {"U32", 32, CORE_ST_OTHER},
    {"F32", 32, CORE_TYPE_F32},        {"F64", 64, CORE_ST_OTHER},
    {"I64", 64, CORE_ST_OTHER},        {"U64", 64, CORE_ST_OTHER},
    {"C64", 64, CORE_ST_OTHER},        {"F6_E2M3", 6, CORE_ST_OTHER},
    {"F6_E3M2", 6, CORE_ST_OTHER},     {"F4", 4, CORE_ST_OTHER},
};

/* Copies a decoded name into buf (at least NAME_SHOWN + 4 bytes) for a message: control
 * characters become '?', and a long name is cut at a character boundary and ends in "...". */
static const char *printable(char *buf, const char *s)
{
    size_t i = 0;
    for (; s[i] && i < NAME_SHOWN; i++) {
        unsigned char c = (unsigned char)s[i];
        buf[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    if (!s[i]) {
        buf[i] = '\0';
        return buf;
    }
    while (i > 0 && ((unsigned char)s[i] & 0xc0) == 0x80)
        i--;
    memcpy(buf + i, "...", 4);
    return buf;
}

/* "[8, 576]", "[]" for a scalar. */
static const char *shape_str(char *buf, size_t cap, const uint64_t *shape, int n_dims)
{
    size_t n = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < n_dims && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%" PRIu64, i ? ", " : "", shape[i]);
    if (n < cap)
        snprintf(buf + n, cap - n, "]");
    return buf;
}

/* --- UTF-8 and the parse cursor ------------------------------------------------------------- */

/* Length of the longest valid UTF-8 prefix of p[0..n): n when all of it is valid. Overlong
 * forms, surrogates and code points past U+10FFFF are invalid. */
static size_t utf8_valid_prefix(const uint8_t *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = p[i];
        size_t len;
        uint32_t cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            len = 2, cp = c & 0x1fu, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            len = 3, cp = c & 0x0fu, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            len = 4, cp = c & 0x07u, min = 0x10000;
        } else {
            return i;
        }
        if (len > n - i)
            return i;
        for (size_t k = 1; k < len; k++) {
            if ((p[i + k] & 0xc0) != 0x80)
                return i;
            cp = cp << 6 | (p[i + k] & 0x3fu);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return i;
        i += len;
    }
    return n;
}

/* What the cursor is at, for "expected X, found Y". */
static const char *found(parser *ps)
{
    if (ps->pos >= ps->n)
        return "the end of the header";
    uint8_t c = ps->p[ps->pos];
    if (c >= 0x20 && c < 0x7f)
        snprintf(ps->tok, sizeof ps->tok, "'%c'", c);
    else
        snprintf(ps->tok, sizeof ps->tok, "byte 0x%02x", c);
    return ps->tok;
}

/* Sets a syntax error at the cursor: "<ctx>: <message> (header byte <pos>)". */
static void fail_msg(parser *ps, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail_msg(parser *ps, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    core_errf(ps->err, ps->errlen, "%s%s%s (header byte %zu)", ps->ctx, ps->ctx[0] ? ": " : "", msg,
              ps->pos);
}

/* Sets a semantic error about the current entry: "<ctx>: <message>". */
static void fail_entry_msg(parser *ps, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail_entry_msg(parser *ps, const char *fmt, ...)
{
    char msg[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    core_errf(ps->err, ps->errlen, "%s: %s", ps->ctx, msg);
}

/* `return fail(ps, fmt, ...);` sets the message and returns -EINVAL. These are macros so that
 * the -EINVAL is visible at each call site: the static analyzer does not inline variadic
 * functions, and would otherwise assume an error path can return 0 with its out-parameters
 * unset. */
#define fail(ps, ...) (fail_msg((ps), __VA_ARGS__), -EINVAL)
#define fail_entry(ps, ...) (fail_entry_msg((ps), __VA_ARGS__), -EINVAL)

static int fail_nomem(parser *ps)
{
    core_errf(ps->err, ps->errlen, "out of memory parsing the safetensors header");
    return -ENOMEM;
}

static void skip_ws(parser *ps)
{
    while (ps->pos < ps->n) {
        uint8_t c = ps->p[ps->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
            return;
        ps->pos++;
    }
}

/* Skips whitespace; true (and consumes it) when the next byte is c. */
static bool accept(parser *ps, char c)
{
    skip_ws(ps);
    if (ps->pos < ps->n && ps->p[ps->pos] == (uint8_t)c) {
        ps->pos++;
        return true;
    }
    return false;
}

static int expect(parser *ps, char c, const char *what)
{
    if (accept(ps, c))
        return 0;
    return fail(ps, "expected %s, found %s", what, found(ps));
}

/* --- values ---------------------------------------------------------------------------------- */

/* Four hex digits at p[at..]; -1 when they are not there. */
static int hex4(const parser *ps, size_t at, uint32_t *out)
{
    if (at > ps->n || ps->n - at < 4)
        return -1;
    uint32_t v = 0;
    for (int k = 0; k < 4; k++) {
        uint8_t c = ps->p[at + (size_t)k];
        uint32_t d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10u;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10u;
        else
            return -1;
        v = v << 4 | d;
    }
    *out = v;
    return 0;
}

static size_t put_utf8(char *d, uint32_t cp)
{
    if (cp < 0x80) {
        d[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        d[0] = (char)(0xc0 | cp >> 6);
        d[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        d[0] = (char)(0xe0 | cp >> 12);
        d[1] = (char)(0x80 | (cp >> 6 & 0x3f));
        d[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    d[0] = (char)(0xf0 | cp >> 18);
    d[1] = (char)(0x80 | (cp >> 12 & 0x3f));
    d[2] = (char)(0x80 | (cp >> 6 & 0x3f));
    d[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Decodes the \u escape at the cursor (a surrogate pair takes two) into d; advances the
 * cursor and returns the bytes written, or -EINVAL. */
static int decode_u_escape(parser *ps, char *d)
{
    uint32_t cp, lo;
    if (hex4(ps, ps->pos + 2, &cp) != 0)
        return fail(ps, "invalid \\u escape in a string (needs 4 hex digits)");
    size_t adv = 6;
    if (cp >= 0xd800 && cp <= 0xdbff) {
        if (ps->n - ps->pos < 12 || ps->p[ps->pos + 6] != '\\' || ps->p[ps->pos + 7] != 'u' ||
            hex4(ps, ps->pos + 8, &lo) != 0 || lo < 0xdc00 || lo > 0xdfff)
            return fail(ps, "\\u%04X in a string is a high surrogate without a low one after it",
                        (unsigned)cp);
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        adv = 12;
    } else if (cp >= 0xdc00 && cp <= 0xdfff) {
        return fail(ps, "\\u%04X in a string is a low surrogate without a high one before it",
                    (unsigned)cp);
    } else if (cp == 0) {
        return fail(ps, "\\u0000 (NUL) in a string is not supported");
    }
    ps->pos += adv;
    return (int)put_utf8(d, cp);
}

/* The byte a one-character escape backslash-e stands for; 0 when e is not one. */
static char simple_escape(uint8_t e)
{
    switch (e) {
    case '"':
    case '\\':
    case '/':
        return (char)e;
    case 'b':
        return '\b';
    case 'f':
        return '\f';
    case 'n':
        return '\n';
    case 'r':
        return '\r';
    case 't':
        return '\t';
    default:
        return 0;
    }
}

/* Parses a JSON string (after whitespace) and decodes it into the arena; *out is the
 * NUL-terminated result. what names the expected string for messages. */
static int parse_string(parser *ps, char **out, const char *what)
{
    skip_ws(ps);
    if (ps->pos >= ps->n || ps->p[ps->pos] != '"')
        return fail(ps, "expected %s, found %s", what, found(ps));
    size_t start = ps->pos++;
    char *d0 = ps->arena + ps->arena_used, *d = d0;
    for (;;) {
        if (ps->pos >= ps->n) {
            ps->pos = start;
            return fail(ps, "unterminated string");
        }
        uint8_t c = ps->p[ps->pos];
        if (c == '"') {
            ps->pos++;
            break;
        }
        if (c < 0x20)
            return fail(ps, "control character 0x%02x in a string (must be escaped)", c);
        if (c != '\\') {
            *d++ = (char)c;
            ps->pos++;
            continue;
        }
        uint8_t e = ps->pos + 1 < ps->n ? ps->p[ps->pos + 1] : 0;
        char simple = simple_escape(e);
        if (simple) {
            *d++ = simple;
            ps->pos += 2;
        } else if (e == 'u') {
            int k = decode_u_escape(ps, d);
            if (k < 0)
                return k;
            d += k;
        } else if (ps->pos + 1 >= ps->n) {
            ps->pos = start;
            return fail(ps, "unterminated string");
        } else {
            ps->pos++;
            return fail(ps, "invalid escape in a string: '\\' followed by %s", found(ps));
        }
    }
    *d++ = '\0';
    ps->arena_used += (size_t)(d - d0);
    *out = d0;
    return 0;
}

/* A non-negative integer without sign, fraction, exponent or leading zero (after
 * whitespace); what names it for messages. */
static int parse_uint(parser *ps, uint64_t *out, const char *what)
{
    skip_ws(ps);
    size_t at = ps->pos;
    if (at >= ps->n || ps->p[at] < '0' || ps->p[at] > '9') {
        if (at < ps->n && ps->p[at] == '-')
            return fail(ps, "%s must be a non-negative integer, found a negative number", what);
        return fail(ps, "expected a non-negative integer in %s, found %s", what, found(ps));
    }
    if (ps->p[at] == '0' && at + 1 < ps->n && ps->p[at + 1] >= '0' && ps->p[at + 1] <= '9')
        return fail(ps, "integer with a leading zero in %s", what);
    uint64_t v = 0;
    while (ps->pos < ps->n && ps->p[ps->pos] >= '0' && ps->p[ps->pos] <= '9') {
        unsigned dig = ps->p[ps->pos] - (unsigned)'0';
        if (v > (UINT64_MAX - dig) / 10) {
            ps->pos = at;
            return fail(ps, "integer in %s does not fit in 64 bits", what);
        }
        v = v * 10 + dig;
        ps->pos++;
    }
    if (ps->pos < ps->n &&
        (ps->p[ps->pos] == '.' || ps->p[ps->pos] == 'e' || ps->p[ps->pos] == 'E'))
        return fail(ps, "%s must hold integers, found a fraction or exponent", what);
    *out = v;
    return 0;
}

/* '[' [uint *(',' uint)] ']' with at most max elements. */
static int parse_uint_array(parser *ps, uint64_t *vals, int max, int *count, const char *what)
{
    skip_ws(ps);
    if (!accept(ps, '['))
        return fail(ps, "%s must be an array of integers, found %s", what, found(ps));
    int k = 0;
    if (!accept(ps, ']')) {
        for (;;) {
            if (k == max)
                return fail(ps, "%s has more than %d elements", what, max);
            int rc = parse_uint(ps, &vals[k++], what);
            if (rc != 0)
                return rc;
            if (accept(ps, ','))
                continue;
            if (accept(ps, ']'))
                break;
            return fail(ps, "expected ',' or ']' in %s, found %s", what, found(ps));
        }
    }
    *count = k;
    return 0;
}

/* --- entries -------------------------------------------------------------------------------- */

/* Bytes per element of a dtype name from the table; 0 when unknown. */
static uint32_t dtype_bytes(const char *name)
{
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (strcmp(name, dtypes[i].name) == 0)
            return dtypes[i].bits / 8;
    return 0;
}

/* The dtype string at the cursor: fills t->dtype and t->dtype_name. */
static int parse_dtype(parser *ps, core_st_tensor *t)
{
    char *s, shown[NAME_SHOWN + 4];
    skip_ws(ps);
    size_t at = ps->pos;
    int rc = parse_string(ps, &s, "the dtype (a string)");
    if (rc != 0)
        return rc;
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++) {
        if (strcmp(s, dtypes[i].name) != 0)
            continue;
        if (dtypes[i].bits % 8 != 0) {
            ps->pos = at;
            return fail(ps, "dtype %s has sub-byte elements, which are not supported", s);
        }
        t->dtype = dtypes[i].type;
        snprintf(t->dtype_name, sizeof t->dtype_name, "%s", dtypes[i].name);
        return 0;
    }
    ps->pos = at;
    return fail(ps, "unknown dtype \"%s\"", printable(shown, s));
}

/* Checks one parsed tensor entry against its data_offsets [begin, end) and the body, and
 * points it at its data. */
static int check_tensor(parser *ps, core_st_tensor *t, uint64_t begin, uint64_t end)
{
    uint32_t elem_bytes = dtype_bytes(t->dtype_name);
    assert(elem_bytes > 0); /* parse_dtype admits only whole-byte dtypes of the table */
    char shape[CORE_ST_MAX_DIMS * 22 + 4];
    shape_str(shape, sizeof shape, t->shape, t->n_dims);
    if (end < begin)
        return fail_entry(ps, "data_offsets [%" PRIu64 ", %" PRIu64 "] end before they begin",
                          begin, end);
    uint64_t numel = 1;
    for (int i = 0; i < t->n_dims; i++) {
        if (t->shape[i] != 0 && numel > UINT64_MAX / t->shape[i])
            return fail_entry(ps, "shape %s has more than 2^64 elements", shape);
        numel *= t->shape[i];
    }
    if (numel > UINT64_MAX / elem_bytes)
        return fail_entry(ps, "shape %s %s needs more than 2^64 bytes", shape, t->dtype_name);
    uint64_t nbytes = numel * elem_bytes;
    if (end - begin != nbytes)
        return fail_entry(ps,
                          "data_offsets [%" PRIu64 ", %" PRIu64 "] hold %" PRIu64
                          " bytes, shape %s %s needs %" PRIu64,
                          begin, end, end - begin, shape, t->dtype_name, nbytes);
    if (end > ps->body_len)
        return fail_entry(ps,
                          "data_offsets [%" PRIu64 ", %" PRIu64 "] run past the end of the "
                          "data (%" PRIu64 " bytes after the header)",
                          begin, end, ps->body_len);
    t->nbytes = nbytes;
    t->offset = begin;
    t->data = ps->body ? ps->body + begin : NULL;
    return 0;
}

/* One key of a tensor entry and its value. seen has bits 1 dtype, 2 shape, 4 data_offsets. */
static int parse_tensor_field(parser *ps, core_st_tensor *t, unsigned *seen, uint64_t offs[2])
{
    char *key, shown[NAME_SHOWN + 4];
    size_t mark = ps->arena_used;
    skip_ws(ps);
    size_t key_at = ps->pos;
    int rc = parse_string(ps, &key, "a key (dtype, shape or data_offsets)");
    if (rc != 0)
        return rc;
    unsigned bit = strcmp(key, "dtype") == 0          ? 1u
                   : strcmp(key, "shape") == 0        ? 2u
                   : strcmp(key, "data_offsets") == 0 ? 4u
                                                      : 0u;
    ps->arena_used = mark;
    if (bit == 0) {
        ps->pos = key_at;
        return fail(ps,
                    "unknown key \"%s\" (a tensor entry holds exactly dtype, shape and "
                    "data_offsets)",
                    printable(shown, key));
    }
    if (*seen & bit) {
        ps->pos = key_at;
        return fail(ps, "key \"%s\" appears twice", key);
    }
    *seen |= bit;
    if ((rc = expect(ps, ':', "':' after the key")) != 0)
        return rc;
    if (bit == 1) {
        rc = parse_dtype(ps, t);
        ps->arena_used = mark;
        return rc;
    }
    if (bit == 2)
        return parse_uint_array(ps, t->shape, CORE_ST_MAX_DIMS, &t->n_dims, "shape");
    int n_offs = 0;
    skip_ws(ps);
    size_t at = ps->pos;
    if ((rc = parse_uint_array(ps, offs, 2, &n_offs, "data_offsets")) != 0)
        return rc;
    if (n_offs != 2) {
        ps->pos = at;
        return fail(ps, "data_offsets must be [BEGIN, END], found %d integers", n_offs);
    }
    return 0;
}

/* A tensor entry '{...}' for t, whose name is already set. Its data_offsets are kept in
 * t->offset and t->nbytes until check_tensor (after the whole header parsed) replaces them. */
static int parse_tensor(parser *ps, core_st_tensor *t)
{
    unsigned seen = 0;
    uint64_t offs[2] = {0, 0};
    int rc = expect(ps, '{', "'{' opening the tensor entry");
    if (rc != 0)
        return rc;
    if (!accept(ps, '}')) {
        for (;;) {
            if ((rc = parse_tensor_field(ps, t, &seen, offs)) != 0)
                return rc;
            if (accept(ps, ','))
                continue;
            if (accept(ps, '}'))
                break;
            return fail(ps, "expected ',' or '}' in the tensor entry, found %s", found(ps));
        }
    }
    if (seen != 7)
        return fail_entry(ps, "entry lacks \"%s\" (a tensor needs dtype, shape and data_offsets)",
                          !(seen & 1)   ? "dtype"
                          : !(seen & 2) ? "shape"
                                        : "data_offsets");
    t->offset = offs[0];
    t->nbytes = offs[1];
    return 0;
}

/* The "__metadata__" value: null, or an object of string to string. */
static int parse_metadata(parser *ps)
{
    st_impl *impl = ps->impl;
    core_st *st = &impl->st;
    char shown[NAME_SHOWN + 4];
    snprintf(ps->ctx, sizeof ps->ctx, "__metadata__");
    skip_ws(ps);
    if (ps->n - ps->pos >= 4 && memcmp(ps->p + ps->pos, "null", 4) == 0) {
        ps->pos += 4;
        return 0;
    }
    if (!accept(ps, '{'))
        return fail(ps, "expected an object of string to string, found %s", found(ps));
    if (accept(ps, '}'))
        return 0;
    for (;;) {
        char *key, *val;
        int rc = parse_string(ps, &key, "a metadata key (a string)");
        if (rc == 0)
            rc = expect(ps, ':', "':' after the key");
        if (rc != 0)
            return rc;
        skip_ws(ps);
        if (ps->pos >= ps->n || ps->p[ps->pos] != '"')
            return fail(ps, "value of \"%s\" must be a string, found %s", printable(shown, key),
                        found(ps));
        if ((rc = parse_string(ps, &val, "a string")) != 0)
            return rc;
        if (core_grow(&st->meta_keys, &impl->cap_keys, st->n_meta + 1, sizeof(char *)) != 0 ||
            core_grow(&st->meta_vals, &impl->cap_vals, st->n_meta + 1, sizeof(char *)) != 0)
            return fail_nomem(ps);
        st->meta_keys[st->n_meta] = key;
        st->meta_vals[st->n_meta] = val;
        st->n_meta++;
        if (accept(ps, ','))
            continue;
        if (accept(ps, '}'))
            return 0;
        return fail(ps, "expected ',' or '}' in __metadata__, found %s", found(ps));
    }
}

/* One "name": value entry of the top-level object. */
static int parse_entry(parser *ps, size_t index, bool *have_meta)
{
    st_impl *impl = ps->impl;
    core_st *st = &impl->st;
    char *name, shown[NAME_SHOWN + 4];
    snprintf(ps->ctx, sizeof ps->ctx, "name of header entry %zu", index + 1);
    size_t mark = ps->arena_used;
    int rc = parse_string(ps, &name, "a tensor name or \"__metadata__\" (a string)");
    if (rc == 0)
        rc = expect(ps, ':', "':' after the name");
    if (rc != 0)
        return rc;
    ps->ctx[0] = '\0';
    if (strcmp(name, "__metadata__") == 0) {
        if (*have_meta)
            return fail(ps, "\"__metadata__\" appears twice");
        *have_meta = true;
        ps->arena_used = mark;
        return parse_metadata(ps);
    }
    snprintf(ps->ctx, sizeof ps->ctx, "tensor '%s'", printable(shown, name));
    if (core_grow(&st->tensors, &impl->cap_tensors, st->n_tensors + 1, sizeof *st->tensors))
        return fail_nomem(ps);
    core_st_tensor *t = &st->tensors[st->n_tensors++];
    memset(t, 0, sizeof *t);
    t->name = name;
    t->data = ps->body;
    return parse_tensor(ps, t);
}

/* The whole header: a JSON object of entries, then only whitespace. */
static int parse_header(parser *ps)
{
    if (ps->n == 0)
        return fail(ps, "header is empty (it must be a JSON object)");
    if (ps->p[0] != '{')
        return fail(ps, "header must start with '{', found %s", found(ps));
    ps->pos = 1;
    bool have_meta = false;
    if (!accept(ps, '}')) {
        for (size_t i = 0;; i++) {
            int rc = parse_entry(ps, i, &have_meta);
            if (rc != 0)
                return rc;
            if (accept(ps, ','))
                continue;
            if (accept(ps, '}'))
                break;
            return fail(ps, "expected ',' or '}' after the entry, found %s", found(ps));
        }
    }
    ps->ctx[0] = '\0';
    skip_ws(ps);
    if (ps->pos != ps->n)
        return fail(ps, "%s after the header object (only whitespace may follow it)", found(ps));
    return 0;
}

/* --- whole-file checks ---------------------------------------------------------------------- */

static int cmp_name(const void *a, const void *b)
{
    return strcmp((*(const core_st_tensor *const *)a)->name,
                  (*(const core_st_tensor *const *)b)->name);
}

static int cmp_offset(const void *a, const void *b)
{
    const core_st_tensor *x = *(const core_st_tensor *const *)a;
    const core_st_tensor *y = *(const core_st_tensor *const *)b;
    if (x->offset != y->offset)
        return x->offset < y->offset ? -1 : 1;
    if (x->nbytes != y->nbytes)
        return x->nbytes < y->nbytes ? -1 : 1;
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Builds the sorted name index and rejects duplicate tensor names and metadata keys. */
static int check_names(st_impl *impl, char *err, size_t errlen)
{
    core_st *st = &impl->st;
    char shown[NAME_SHOWN + 4];
    size_t n = st->n_tensors;
    /* by_name and v in check_layout hold pointers into st->tensors, not copies: the element
     * type is spelled out so that reads plainly. */
    impl->by_name = malloc((n ? n : 1) * sizeof(const core_st_tensor *));
    char **keys = malloc((st->n_meta ? st->n_meta : 1) * sizeof *keys);
    if (!impl->by_name || !keys) {
        free(keys);
        core_errf(err, errlen, "out of memory indexing tensor names");
        return -ENOMEM;
    }
    for (size_t i = 0; i < n; i++)
        impl->by_name[i] = &st->tensors[i];
    qsort(impl->by_name, n, sizeof(const core_st_tensor *), cmp_name);
    for (size_t i = 1; i < n; i++) {
        if (strcmp(impl->by_name[i - 1]->name, impl->by_name[i]->name) == 0) {
            core_errf(err, errlen, "tensor name '%s' appears twice in the header",
                      printable(shown, impl->by_name[i]->name));
            free(keys);
            return -EINVAL;
        }
    }
    if (st->n_meta)
        memcpy(keys, st->meta_keys, st->n_meta * sizeof *keys);
    qsort(keys, st->n_meta, sizeof *keys, cmp_str);
    for (size_t i = 1; i < st->n_meta; i++) {
        if (strcmp(keys[i - 1], keys[i]) == 0) {
            core_errf(err, errlen, "__metadata__: key \"%s\" appears twice",
                      printable(shown, keys[i]));
            free(keys);
            return -EINVAL;
        }
    }
    free(keys);
    return 0;
}

/* Sorted by offset, the tensors must tile the body: start at 0, no holes, no overlaps, and
 * end exactly at its end. */
static int check_layout(const core_st *st, uint64_t body_len, char *err, size_t errlen)
{
    char a[NAME_SHOWN + 4], b[NAME_SHOWN + 4];
    size_t n = st->n_tensors;
    const core_st_tensor **v = malloc((n ? n : 1) * sizeof(const core_st_tensor *));
    if (!v) {
        core_errf(err, errlen, "out of memory checking the tensor layout");
        return -ENOMEM;
    }
    for (size_t i = 0; i < n; i++)
        v[i] = &st->tensors[i];
    qsort(v, n, sizeof(const core_st_tensor *), cmp_offset);
    uint64_t at = 0;
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        const core_st_tensor *t = v[i], *prev = i ? v[i - 1] : NULL;
        uint64_t end = t->offset + t->nbytes;
        if (t->offset > at && !prev)
            core_errf(err, errlen,
                      "hole in the data: bytes [0, %" PRIu64 ") belong to no tensor (the first, "
                      "'%s', starts at %" PRIu64 ")",
                      t->offset, printable(a, t->name), t->offset);
        else if (t->offset > at)
            core_errf(err, errlen,
                      "hole in the data: bytes [%" PRIu64 ", %" PRIu64 ") between tensor '%s' "
                      "and tensor '%s' belong to no tensor",
                      at, t->offset, printable(a, prev->name), printable(b, t->name));
        else if (t->offset < at)
            core_errf(err, errlen,
                      "tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] overlap tensor '%s' "
                      "[%" PRIu64 ", %" PRIu64 "]",
                      printable(a, t->name), t->offset, end, printable(b, prev->name), prev->offset,
                      prev->offset + prev->nbytes);
        rc = t->offset == at ? 0 : -EINVAL;
        at = end;
    }
    free(v);
    if (rc == 0 && at != body_len) {
        core_errf(err, errlen,
                  "data has %" PRIu64 " bytes but the tensors cover only %" PRIu64
                  " (bytes [%" PRIu64 ", %" PRIu64 ") belong to no tensor)",
                  body_len, at, at, body_len);
        rc = -EINVAL;
    }
    return rc;
}

/* Parses the file of file_size bytes whose first st->size bytes are at st->base: all of it,
 * or (header_only) at least the length and the header, when the tensors get no data and a
 * prefix too short for the header sets *need to the length it takes. */
static int parse(st_impl *impl, uint64_t file_size, bool header_only, uint64_t *need, char *err,
                 size_t errlen)
{
    core_st *st = &impl->st;
    if (file_size < ST_LEN_BYTES) {
        core_errf(err, errlen,
                  "truncated file: %" PRIu64 " bytes, the header length alone needs %d", file_size,
                  ST_LEN_BYTES);
        return -EINVAL;
    }
    if (st->size < ST_LEN_BYTES) {
        *need = ST_LEN_BYTES;
        core_errf(err, errlen, "the header length needs %d bytes, %zu were read", ST_LEN_BYTES,
                  st->size);
        return -EINVAL;
    }
    uint64_t n = 0;
    for (int i = 0; i < ST_LEN_BYTES; i++)
        n |= (uint64_t)st->base[i] << (8 * i);
    if (n > CORE_ST_MAX_HEADER) {
        core_errf(err, errlen, "header length %" PRIu64 " exceeds the limit of %u bytes", n,
                  CORE_ST_MAX_HEADER);
        return -EINVAL;
    }
    if (n > file_size - ST_LEN_BYTES) {
        core_errf(err, errlen,
                  "header length %" PRIu64 " runs past the end of the file (%" PRIu64
                  " bytes follow the length field)",
                  n, file_size - ST_LEN_BYTES);
        return -EINVAL;
    }
    if (n > st->size - ST_LEN_BYTES) {
        *need = ST_LEN_BYTES + n;
        core_errf(err, errlen, "the header ends at byte %" PRIu64 ", %zu bytes were read",
                  ST_LEN_BYTES + n, st->size);
        return -EINVAL;
    }
    const uint8_t *hdr = st->base + ST_LEN_BYTES;
    size_t bad = utf8_valid_prefix(hdr, (size_t)n);
    if (bad < n) {
        core_errf(err, errlen, "header is not valid UTF-8 at header byte %zu (byte 0x%02x)", bad,
                  hdr[bad]);
        return -EINVAL;
    }
    impl->arena = malloc((size_t)n + 1);
    if (!impl->arena) {
        core_errf(err, errlen, "out of memory for a %" PRIu64 "-byte header", n);
        return -ENOMEM;
    }
    parser ps = {
        .p = hdr,
        .n = (size_t)n,
        .arena = impl->arena,
        .impl = impl,
        .body = header_only ? NULL : hdr + n,
        .body_len = file_size - ST_LEN_BYTES - n,
        .err = err,
        .errlen = errlen,
    };
    int rc = parse_header(&ps);
    for (size_t i = 0; rc == 0 && i < st->n_tensors; i++) {
        core_st_tensor *t = &st->tensors[i];
        char shown[NAME_SHOWN + 4];
        snprintf(ps.ctx, sizeof ps.ctx, "tensor '%s'", printable(shown, t->name));
        rc = check_tensor(&ps, t, t->offset, t->nbytes);
    }
    if (rc == 0)
        rc = check_names(impl, err, errlen);
    if (rc == 0)
        rc = check_layout(st, ps.body_len, err, errlen);
    return rc;
}

/* --- open, close, lookups ------------------------------------------------------------------- */

/* Opens size bytes at base, the first of a file of file_size bytes (see parse). */
static core_st *open_base(const uint8_t *base, size_t size, uint64_t file_size, bool mapped,
                          bool header_only, uint64_t *need, char *err, size_t errlen)
{
    st_impl *impl = calloc(1, sizeof *impl);
    if (!impl) {
        core_errf(err, errlen, "out of memory");
        if (mapped)
            munmap((void *)base, size);
        return NULL;
    }
    impl->st.base = base;
    impl->st.size = size;
    impl->st.mapped = mapped;
    if (parse(impl, file_size, header_only, need, err, errlen) != 0) {
        core_st_close(&impl->st);
        return NULL;
    }
    return &impl->st;
}

core_st *core_st_open_memory(const void *buf, size_t len, char *err, size_t errlen)
{
    static const uint8_t empty[1];
    uint64_t need;
    len = buf ? len : 0;
    return open_base(buf ? buf : empty, len, len, false, false, &need, err, errlen);
}

core_st *core_st_open_header(const void *buf, size_t len, uint64_t file_size, uint64_t *need,
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

core_st *core_st_open(const char *path, char *err, size_t errlen)
{
    size_t size;
    void *p =
        core_map_file(path, ST_LEN_BYTES, "the header length alone needs", &size, err, errlen);
    if (!p)
        return NULL;
    char msg[512] = "";
    uint64_t need;
    core_st *st = open_base(p, size, size, true, false, &need, msg, sizeof msg);
    if (!st)
        core_errf(err, errlen, "%s: %s", path, msg);
    return st;
}

void core_st_close(core_st *st)
{
    if (!st)
        return;
    st_impl *impl = (st_impl *)st;
    if (st->mapped)
        munmap((void *)st->base, st->size);
    free(impl->by_name);
    free(impl->arena);
    free(st->tensors);
    free(st->meta_keys);
    free(st->meta_vals);
    free(impl);
}

const core_st_tensor *core_st_find(const core_st *st, const char *name)
{
    if (!st || !name)
        return NULL;
    const st_impl *impl = (const st_impl *)st;
    size_t lo = 0, hi = st->n_tensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(impl->by_name[mid]->name, name);
        if (c == 0)
            return impl->by_name[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

const char *core_st_meta(const core_st *st, const char *key)
{
    if (!st || !key)
        return NULL;
    for (size_t i = 0; i < st->n_meta; i++)
        if (strcmp(st->meta_keys[i], key) == 0)
            return st->meta_vals[i];
    return NULL;
}

uint64_t core_st_numel(const core_st_tensor *t)
{
    uint64_t n = 1;
    for (int i = 0; i < t->n_dims; i++)
        n *= t->shape[i];
    return n;
}

int core_st_to_f32(const core_st_tensor *t, float *dst)
{
    if (!t || !t->data)
        return -EINVAL;
    const uint8_t *src = t->data;
    uint64_t n = core_st_numel(t);
    uint16_t h;
    switch (t->dtype) {
    case CORE_TYPE_F32:
        if (n)
            memcpy(dst, src, (size_t)n * sizeof(float));
        return 0;
    case CORE_TYPE_F16:
        for (uint64_t i = 0; i < n; i++) {
            memcpy(&h, src + 2 * i, 2);
            dst[i] = core_fp16_to_fp32(h);
        }
        return 0;
    case CORE_TYPE_BF16:
        for (uint64_t i = 0; i < n; i++) {
            memcpy(&h, src + 2 * i, 2);
            dst[i] = core_bf16_to_fp32(h);
        }
        return 0;
    default:
        return -EINVAL;
    }
}
