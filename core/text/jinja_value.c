/* Values of the Jinja subset as Python sees them: truth, equality, order, str(), repr() and
 * transformers' tojson (json.dumps with ensure_ascii=False), and Python's code-point view of
 * UTF-8 strings (len, indexing, slicing, strip). Stateless; every allocation is in the caller's
 * arena.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/text/jinja_value.h"

/* --- strings -------------------------------------------------------------------------------- */

void sb_put(jctx *c, jsb *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p = jalloc(c, cap);
        if (b->n)
            memcpy(p, b->p, b->n);
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

void sb_puts(jctx *c, jsb *b, const char *s)
{
    sb_put(c, b, s, strlen(s));
}

jv jv_str(const char *s, size_t n)
{
    jv v = {.kind = JV_STR, .n = n};
    v.s = s;
    return v;
}

jv jv_copy_str(jctx *c, const char *s, size_t n)
{
    char *d = jalloc(c, n + 1);
    memcpy(d, s, n);
    return jv_str(d, n);
}

jv jv_sb(const jsb *b)
{
    return jv_str(b->p ? b->p : "", b->n);
}

jv jv_bool(bool b)
{
    jv v = {.kind = JV_BOOL};
    v.b = b;
    return v;
}

jv jv_int(int64_t i)
{
    jv v = {.kind = JV_INT};
    v.i = i;
    return v;
}

jv jv_list(jctx *c, size_t n)
{
    jv v = {.kind = JV_LIST};
    v.l = jalloc(c, sizeof *v.l);
    v.l->n = n;
    v.l->v = n ? jalloc(c, n * sizeof *v.l->v) : NULL;
    return v;
}

/* The code point at s[*i] (advancing *i); invalid bytes count as one code point each. */
static uint32_t next_cp(const char *s, size_t n, size_t *i)
{
    const unsigned char *u = (const unsigned char *)s;
    unsigned char b = u[*i];
    int len = b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : (b >> 3) == 30 ? 4 : 1;
    if (*i + (size_t)len > n)
        len = 1;
    uint32_t cp = len == 1 ? b : (uint32_t)(b & (0x7F >> len));
    for (int k = 1; k < len; k++)
        cp = cp << 6 | (u[*i + (size_t)k] & 63);
    *i += (size_t)len;
    return cp;
}

size_t utf8_len(const char *s, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; k++)
        next_cp(s, n, &i);
    return k;
}

size_t utf8_offset(const char *s, size_t n, size_t cp)
{
    size_t i = 0;
    for (size_t k = 0; k < cp && i < n; k++)
        next_cp(s, n, &i);
    return i;
}

/* Python's str.isspace() set. */
static bool py_space(uint32_t cp)
{
    return (cp >= 9 && cp <= 13) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
           cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
           cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

static bool in_chars(uint32_t cp, const jv *chars)
{
    if (!chars)
        return py_space(cp);
    for (size_t i = 0; i < chars->n;)
        if (next_cp(chars->s, chars->n, &i) == cp)
            return true;
    return false;
}

jv str_strip(jv s, bool left, bool right, const jv *chars)
{
    size_t a = 0, b = s.n;
    while (left && a < b) {
        size_t i = a;
        if (!in_chars(next_cp(s.s, s.n, &i), chars))
            break;
        a = i;
    }
    while (right && b > a) {
        size_t j = b - 1;
        while (j > a && ((unsigned char)s.s[j] & 0xC0) == 0x80 && b - j < 4)
            j--;
        size_t i = j;
        uint32_t cp = next_cp(s.s, s.n, &i);
        if (i != b)
            j = b - 1, i = j, cp = next_cp(s.s, s.n, &i);
        if (!in_chars(cp, chars))
            break;
        b = j;
    }
    return jv_str(s.s + a, b - a);
}

/* --- truth, equality, order ----------------------------------------------------------------- */

bool jv_truthy(jv v)
{
    switch (v.kind) {
    case JV_BOOL:
        return v.b;
    case JV_INT:
        return v.i != 0;
    case JV_FLOAT:
        return v.f != 0;
    case JV_STR:
        return v.n > 0;
    case JV_LIST:
        return v.l->n > 0;
    case JV_DICT:
        return v.d->n > 0 || v.d->is_namespace;
    case JV_LOOP:
    case JV_MACRO:
        return true;
    default:
        return false;
    }
}

bool jv_is_num(jv v)
{
    return v.kind == JV_INT || v.kind == JV_FLOAT || v.kind == JV_BOOL;
}

double jv_num(jv v)
{
    return v.kind == JV_FLOAT ? v.f : v.kind == JV_INT ? (double)v.i : (double)v.b;
}

bool jv_eq(jv a, jv b)
{
    if (jv_is_num(a) && jv_is_num(b)) {
        if (a.kind != JV_FLOAT && b.kind != JV_FLOAT)
            return (a.kind == JV_INT ? a.i : a.b) == (b.kind == JV_INT ? b.i : b.b);
        return jv_num(a) == jv_num(b);
    }
    if (a.kind != b.kind)
        return false;
    switch (a.kind) {
    case JV_STR:
        return a.n == b.n && !memcmp(a.s, b.s, a.n);
    case JV_LIST:
        if (a.l->n != b.l->n)
            return false;
        for (size_t i = 0; i < a.l->n; i++)
            if (!jv_eq(a.l->v[i], b.l->v[i]))
                return false;
        return true;
    case JV_DICT:
        if (a.d == b.d)
            return true;
        if (a.d->is_namespace || b.d->is_namespace || a.d->n != b.d->n)
            return false;
        for (size_t i = 0; i < a.d->n; i++) {
            const jv *w = dict_get(b.d, a.d->keys[i].s, a.d->keys[i].n);
            if (!w || !jv_eq(a.d->vals[i], *w))
                return false;
        }
        return true;
    case JV_LOOP:
        return a.loop == b.loop;
    case JV_MACRO:
        return a.macro == b.macro;
    default:
        return true; /* none == none, undefined == undefined */
    }
}

/* -1, 0, 1; -2 when Python would raise TypeError. */
int jv_cmp(jv a, jv b)
{
    if (jv_is_num(a) && jv_is_num(b)) {
        double x = jv_num(a), y = jv_num(b);
        if (a.kind == JV_INT && b.kind == JV_INT)
            return (a.i > b.i) - (a.i < b.i);
        return (x > y) - (x < y);
    }
    if (a.kind == JV_STR && b.kind == JV_STR) {
        int r = memcmp(a.s, b.s, a.n < b.n ? a.n : b.n);
        return r ? (r > 0) - (r < 0) : (a.n > b.n) - (a.n < b.n);
    }
    if (a.kind == JV_LIST && b.kind == JV_LIST) {
        for (size_t i = 0; i < a.l->n && i < b.l->n; i++)
            if (!jv_eq(a.l->v[i], b.l->v[i]))
                return jv_cmp(a.l->v[i], b.l->v[i]);
        return (a.l->n > b.l->n) - (a.l->n < b.l->n);
    }
    return -2;
}

/* --- dicts ---------------------------------------------------------------------------------- */

const jv *dict_get(const jdict *d, const char *k, size_t n)
{
    for (size_t i = 0; i < d->n; i++)
        if (d->keys[i].n == n && !memcmp(d->keys[i].s, k, n))
            return &d->vals[i];
    return NULL;
}

jdict *dict_new(jctx *c)
{
    return jalloc(c, sizeof(jdict));
}

void dict_put(jctx *c, jdict *d, jv key, jv val)
{
    for (size_t i = 0; i < d->n; i++)
        if (d->keys[i].n == key.n && !memcmp(d->keys[i].s, key.s, key.n)) {
            d->vals[i] = val;
            return;
        }
    if (d->n == d->cap) {
        size_t cap = d->cap ? 2 * d->cap : 8;
        jv *k = jalloc(c, cap * sizeof *k), *v = jalloc(c, cap * sizeof *v);
        if (d->n) {
            memcpy(k, d->keys, d->n * sizeof *k);
            memcpy(v, d->vals, d->n * sizeof *v);
        }
        d->keys = k;
        d->vals = v;
        d->cap = cap;
    }
    d->keys[d->n] = key;
    d->vals[d->n++] = val;
}

/* --- str(), repr(), tojson ------------------------------------------------------------------ */

/* Python's repr of a float: the shortest form that reads back the same. */
static void put_float(jctx *c, jsb *b, double f, bool json)
{
    char buf[40];
    if (isnan(f) || isinf(f)) {
        sb_puts(c, b,
                isnan(f) ? (json ? "NaN" : "nan")
                : f > 0  ? (json ? "Infinity" : "inf")
                         : (json ? "-Infinity" : "-inf"));
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, f);
        if (strtod(buf, NULL) == f)
            break;
    }
    /* Python writes exponents of 16 digits and more, %g from prec digits: redo with %r rules */
    char *e = strchr(buf, 'e');
    double a = fabs(f);
    if (e && a >= 1e-4 && a < 1e16) {
        int prec = 1;
        for (; prec <= 17; prec++) {
            snprintf(buf, sizeof buf, "%.*f", prec, f);
            if (strtod(buf, NULL) == f)
                break;
        }
        e = NULL;
    }
    sb_puts(c, b, buf);
    if (!e && !strchr(buf, '.'))
        sb_puts(c, b, ".0");
}

static void put_repr_str(jctx *c, jsb *b, jv s)
{
    bool dq = memchr(s.s, '\'', s.n) && !memchr(s.s, '"', s.n);
    char q = dq ? '"' : '\'';
    sb_put(c, b, &q, 1);
    for (size_t i = 0; i < s.n; i++) {
        unsigned char ch = (unsigned char)s.s[i];
        char esc[8];
        if (ch == '\\' || ch == (unsigned char)q)
            snprintf(esc, sizeof esc, "\\%c", ch);
        else if (ch == '\n' || ch == '\r' || ch == '\t')
            snprintf(esc, sizeof esc, "\\%c", ch == '\n' ? 'n' : ch == '\r' ? 'r' : 't');
        else if (ch < 0x20 || ch == 0x7F)
            snprintf(esc, sizeof esc, "\\x%02x", ch);
        else {
            sb_put(c, b, s.s + i, 1);
            continue;
        }
        sb_puts(c, b, esc);
    }
    sb_put(c, b, &q, 1);
}

static void put_repr(jctx *c, jsb *b, jv v);

static void put_container(jctx *c, jsb *b, jv v)
{
    if (v.kind == JV_LIST) {
        sb_puts(c, b, v.l->tuple ? "(" : "[");
        for (size_t i = 0; i < v.l->n; i++) {
            if (i)
                sb_puts(c, b, ", ");
            put_repr(c, b, v.l->v[i]);
        }
        sb_puts(c, b, !v.l->tuple ? "]" : v.l->n == 1 ? ",)" : ")");
        return;
    }
    if (v.d->is_namespace) {
        sb_puts(c, b, "<Namespace>");
        return;
    }
    sb_puts(c, b, "{");
    for (size_t i = 0; i < v.d->n; i++) {
        if (i)
            sb_puts(c, b, ", ");
        put_repr(c, b, v.d->keys[i]);
        sb_puts(c, b, ": ");
        put_repr(c, b, v.d->vals[i]);
    }
    sb_puts(c, b, "}");
}

static void put_repr(jctx *c, jsb *b, jv v)
{
    if (v.kind == JV_STR)
        put_repr_str(c, b, v);
    else if (v.kind == JV_UNDEF)
        sb_puts(c, b, "Undefined");
    else
        jv_put_str(c, b, v);
}

void jv_put_str(jctx *c, jsb *b, jv v)
{
    char buf[32];
    switch (v.kind) {
    case JV_STR:
        sb_put(c, b, v.s, v.n);
        break;
    case JV_NONE:
        sb_puts(c, b, "None");
        break;
    case JV_BOOL:
        sb_puts(c, b, v.b ? "True" : "False");
        break;
    case JV_INT:
        snprintf(buf, sizeof buf, "%lld", (long long)v.i);
        sb_puts(c, b, buf);
        break;
    case JV_FLOAT:
        put_float(c, b, v.f, false);
        break;
    case JV_LIST:
    case JV_DICT:
        put_container(c, b, v);
        break;
    case JV_LOOP:
        sb_puts(c, b, "<LoopContext>");
        break;
    case JV_MACRO:
        sb_puts(c, b, "<Macro>");
        break;
    default: /* undefined prints as nothing */
        break;
    }
}

jv jv_to_str(jctx *c, jv v)
{
    if (v.kind == JV_STR)
        return v;
    jsb b = {0};
    jv_put_str(c, &b, v);
    return jv_sb(&b);
}

static void json_str(jctx *c, jsb *b, jv s)
{
    sb_puts(c, b, "\"");
    size_t from = 0;
    for (size_t i = 0; i < s.n; i++) {
        unsigned char ch = (unsigned char)s.s[i];
        if (ch >= 0x20 && ch != '"' && ch != '\\')
            continue;
        sb_put(c, b, s.s + from, i - from);
        from = i + 1;
        char esc[8];
        const char *named = ch == '"'    ? "\\\""
                            : ch == '\\' ? "\\\\"
                            : ch == '\n' ? "\\n"
                            : ch == '\r' ? "\\r"
                            : ch == '\t' ? "\\t"
                            : ch == '\b' ? "\\b"
                            : ch == '\f' ? "\\f"
                                         : NULL;
        if (!named)
            snprintf(esc, sizeof esc, "\\u%04x", ch);
        sb_puts(c, b, named ? named : esc);
    }
    sb_put(c, b, s.s + from, s.n - from);
    sb_puts(c, b, "\"");
}

static void json_newline(jctx *c, jsb *b, int indent, int level)
{
    sb_puts(c, b, "\n");
    for (int i = 0; i < indent * level; i++)
        sb_puts(c, b, " ");
}

/* Returns false (with *bad set) for a value json.dumps refuses. */
static bool json_put(jctx *c, jsb *b, jv v, int indent, int level, const char **bad)
{
    size_t n = v.kind == JV_LIST ? v.l->n : v.kind == JV_DICT ? v.d->n : 0;
    if (v.kind == JV_STR)
        json_str(c, b, v);
    else if (v.kind == JV_NONE)
        sb_puts(c, b, "null");
    else if (v.kind == JV_BOOL)
        sb_puts(c, b, v.b ? "true" : "false");
    else if (v.kind == JV_INT)
        jv_put_str(c, b, v);
    else if (v.kind == JV_FLOAT)
        put_float(c, b, v.f, true);
    else if ((v.kind == JV_LIST || (v.kind == JV_DICT && !v.d->is_namespace)) && n == 0)
        sb_puts(c, b, v.kind == JV_LIST ? "[]" : "{}");
    else if (v.kind == JV_LIST || (v.kind == JV_DICT && !v.d->is_namespace)) {
        sb_puts(c, b, v.kind == JV_LIST ? "[" : "{");
        for (size_t i = 0; i < n; i++) {
            if (i)
                sb_puts(c, b, indent >= 0 ? "," : ", ");
            if (indent >= 0)
                json_newline(c, b, indent, level + 1);
            if (v.kind == JV_DICT) {
                json_str(c, b, v.d->keys[i]);
                sb_puts(c, b, ": ");
            }
            if (!json_put(c, b, v.kind == JV_LIST ? v.l->v[i] : v.d->vals[i], indent, level + 1,
                          bad))
                return false;
        }
        if (indent >= 0)
            json_newline(c, b, indent, level);
        sb_puts(c, b, v.kind == JV_LIST ? "]" : "}");
    } else {
        *bad = v.kind == JV_UNDEF   ? "Undefined"
               : v.kind == JV_LOOP  ? "LoopContext"
               : v.kind == JV_MACRO ? "Macro"
                                    : "Namespace";
        return false;
    }
    return true;
}

bool jv_tojson(jctx *c, jsb *b, jv v, int indent, const char **bad)
{
    return json_put(c, b, v, indent, 0, bad);
}
