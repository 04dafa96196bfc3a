/* GBNF grammars into byte grammars: see gbnf.h for the format. A recursive-descent parser writes
 * core_gbuild rules as it reads; names are rules made at first use (defined later or not); code
 * point classes become alternatives of UTF-8 byte-range sequences. */
#include "server/gbnf.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base.h"
#include "core/text/utf8.h"

typedef struct gname {
    const char *s;
    size_t n;
    int rule;
    bool defined;
    const char *use; /* the first reference, for "used but not defined" */
    const char *def; /* the definition */
} gname;

typedef struct range {
    uint32_t lo, hi;
} range;

typedef struct gp {
    core_gbuild *b;
    const char *base, *p, *end;
    char *err;
    size_t errlen;
    int rc; /* the first refusal */
    gname *name;
    size_t n_name, cap_name;
    int32_t *slot; /* open addressing over name, -1 empty */
    size_t slots;
    struct gdef {
        int start; /* the rule count when the definition began */
        int name;
    } * def; /* each definition in order (names errors in the helper rules it made) */
    size_t n_def, cap_def;
    char *buf; /* a literal's bytes */
    size_t n_buf, cap_buf;
    range *cls; /* a class's ranges */
    size_t n_cls, cap_cls;
    struct useq {
        unsigned char n, lo[4], hi[4];
    } * seq; /* a class's UTF-8 byte-range sequences, in code point order */
    size_t n_seq, cap_seq;
    int any; /* the rule for '.', -1 until used */
} gp;

/* What one element is, before a quantifier may wrap it: bytes in buf, one byte set, a rule. */
typedef struct atom {
    enum { A_BYTES, A_SET, A_RULE } kind;
    core_gset set;
    int rule;
} atom;

static void position(const gp *g, const char *at, int *line, int *col)
{
    *line = 1;
    *col = 1;
    for (const char *q = g->base; q < at; q++) {
        if (*q == '\n') {
            ++*line;
            *col = 1;
        } else if (((unsigned char)*q & 0xC0) != 0x80) {
            ++*col;
        }
    }
}

__attribute__((format(printf, 4, 5))) static int refuse_at(gp *g, const char *at, int rc,
                                                           const char *fmt, ...)
{
    if (g->rc)
        return -1;
    g->rc = rc;
    if (!g->err || !g->errlen)
        return -1;
    int line, col, k = 0;
    if (at) {
        position(g, at, &line, &col);
        k = snprintf(g->err, g->errlen, "line %d, column %d: ", line, col);
        if (k < 0 || (size_t)k >= g->errlen)
            k = 0;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g->err + k, g->errlen - (size_t)k, fmt, ap);
    va_end(ap);
    for (char *q = g->err; *q; q++) /* names and quoted input may hold control bytes */
        if ((unsigned char)*q < 0x20 || *q == 0x7f)
            *q = '?';
    return -1;
}

#define FAIL(g, ...) refuse_at((g), (g)->p, -EINVAL, __VA_ARGS__)

static int new_rule(gp *g)
{
    int r = core_gbuild_rule(g->b);
    if (r < 0)
        refuse_at(g, NULL, r, r == -ENOMEM ? "out of memory" : "the grammar is too large");
    return r;
}

/* --- names ---------------------------------------------------------------------------------- */

static bool name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
}

/* The name s[0..n)'s entry, made (with its rule) on first sight; NULL after a refusal. */
static gname *lookup(gp *g, const char *s, size_t n)
{
    if (g->n_name * 2 >= g->slots) {
        size_t slots = g->slots ? g->slots * 2 : 64;
        int32_t *slot = malloc(slots * sizeof *slot);
        if (!slot) {
            refuse_at(g, NULL, -ENOMEM, "out of memory");
            return NULL;
        }
        memset(slot, 0xff, slots * sizeof *slot);
        for (size_t i = 0; i < g->n_name; i++) {
            size_t h = core_hash64(CORE_HASH_INIT, g->name[i].s, g->name[i].n) & (slots - 1);
            while (slot[h] >= 0)
                h = (h + 1) & (slots - 1);
            slot[h] = (int32_t)i;
        }
        free(g->slot);
        g->slot = slot;
        g->slots = slots;
    }
    size_t h = core_hash64(CORE_HASH_INIT, s, n) & (g->slots - 1);
    for (; g->slot[h] >= 0; h = (h + 1) & (g->slots - 1)) {
        gname *e = &g->name[g->slot[h]];
        if (e->n == n && !memcmp(e->s, s, n))
            return e;
    }
    int r = new_rule(g);
    if (r < 0)
        return NULL;
    if (core_grow(&g->name, &g->cap_name, g->n_name + 1, sizeof *g->name)) {
        refuse_at(g, NULL, -ENOMEM, "out of memory");
        return NULL;
    }
    g->slot[h] = (int32_t)g->n_name;
    g->name[g->n_name] = (gname){.s = s, .n = n, .rule = r};
    return &g->name[g->n_name++];
}

/* --- characters ------------------------------------------------------------------------------ */

static void skip(gp *g, bool newlines)
{
    while (g->p < g->end) {
        char c = *g->p;
        if (c == ' ' || c == '\t' || (newlines && (c == '\n' || c == '\r'))) {
            g->p++;
        } else if (c == '#') {
            while (g->p < g->end && *g->p != '\n' && *g->p != '\r')
                g->p++;
        } else {
            break;
        }
    }
}

static int hex_digits(gp *g, int n, uint32_t *cp)
{
    *cp = 0;
    for (int i = 0; i < n; i++, g->p++) {
        char c = g->p < g->end ? *g->p : 0;
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0)
            return FAIL(g, "expected %d hexadecimal digits", n);
        *cp = *cp << 4 | (uint32_t)d;
    }
    return 0;
}

/* One character of a literal or class (an escape or one UTF-8 encoded code point) into *cp. */
static int character(gp *g, uint32_t *cp)
{
    const unsigned char *s = (const unsigned char *)g->p;
    size_t left = (size_t)(g->end - g->p);
    if (s[0] == '\\') {
        if (left < 2)
            return FAIL(g, "a backslash at the end");
        const char *at = g->p;
        char e = (char)s[1];
        g->p += 2;
        int rc = 0;
        switch (e) {
        case 'x':
            rc = hex_digits(g, 2, cp);
            break;
        case 'u':
            rc = hex_digits(g, 4, cp);
            break;
        case 'U':
            rc = hex_digits(g, 8, cp);
            break;
        case 'n':
            *cp = '\n';
            break;
        case 'r':
            *cp = '\r';
            break;
        case 't':
            *cp = '\t';
            break;
        default:
            if (e > 0x20 && e < 0x7f && (!name_char(e) || e == '-' || e == '_')) {
                *cp = (uint32_t)e;
                break;
            }
            g->p = at;
            return FAIL(g, "unknown escape '\\%c'", e);
        }
        if (rc)
            return rc;
        if (*cp > 0x10FFFF || (*cp >= 0xD800 && *cp <= 0xDFFF)) {
            g->p = at;
            return FAIL(g, "\\%c escape of U+%04X, not a Unicode scalar value", e, *cp);
        }
        return 0;
    }
    int n = core_utf8_check(s, left, cp);
    if (n <= 0)
        return FAIL(g, "invalid UTF-8");
    g->p += n;
    return 0;
}

/* --- classes --------------------------------------------------------------------------------- */

/* The byte-range sequences for the code points lo..hi, all of one UTF-8 length n, appended to
 * g->seq: split until every byte position is a plain range (the standard UTF-8 range
 * decomposition). */
static int utf8_span(gp *g, uint32_t lo, uint32_t hi, int n)
{
    for (int i = 1; i < n; i++) {
        uint32_t m = (1u << (6 * i)) - 1;
        if ((lo & ~m) == (hi & ~m))
            continue;
        if (lo & m)
            return utf8_span(g, lo, lo | m, n) || utf8_span(g, (lo | m) + 1, hi, n) ? -1 : 0;
        if ((hi & m) != m)
            return utf8_span(g, lo, (hi & ~m) - 1, n) || utf8_span(g, hi & ~m, hi, n) ? -1 : 0;
    }
    if (core_grow(&g->seq, &g->cap_seq, g->n_seq + 1, sizeof *g->seq))
        return refuse_at(g, NULL, -ENOMEM, "out of memory");
    struct useq *q = &g->seq[g->n_seq++];
    q->n = (unsigned char)n;
    core_utf8_encode(lo, q->lo);
    core_utf8_encode(hi, q->hi);
    return 0;
}

/* Alternatives of rule r for the sequences q[0..k) from byte d on, factored by their leading
 * ranges (sequences that share one are contiguous: code point order), so a class of any size
 * holds one matcher stack per distinct leading range. Recursion depth is at most 4. */
static int utf8_rule(gp *g, int r, const struct useq *q, size_t k, int d)
{
    for (size_t i = 0, j; i < k; i = j) {
        for (j = i + 1; j < k && q[j].lo[d] == q[i].lo[d] && q[j].hi[d] == q[i].hi[d]; j++)
            ;
        core_gset s = {{0}};
        core_gset_add(&s, q[i].lo[d], q[i].hi[d]);
        core_gbuild_alt(g->b, r);
        core_gbuild_set(g->b, r, &s);
        if (j - i == 1) { /* alone: the rest of it in line */
            for (int e = d + 1; e < q[i].n; e++) {
                core_gset t = {{0}};
                core_gset_add(&t, q[i].lo[e], q[i].hi[e]);
                core_gbuild_set(g->b, r, &t);
            }
        } else if (d + 1 < q[i].n) {
            int sub = new_rule(g);
            if (sub < 0 || utf8_rule(g, sub, q + i, j - i, d + 1))
                return -1;
            core_gbuild_ref(g->b, r, sub);
        }
    }
    return 0;
}

static int range_cmp(const void *a, const void *b)
{
    const range *x = a, *y = b;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/* The class in g->cls (negated: its complement) as an atom: one byte set when it is all ASCII,
 * else a rule of UTF-8 sequences. Never NUL or surrogates when negated, never surrogates at
 * all. */
static int class_atom(gp *g, bool neg, const char *at, atom *out)
{
    range *c = g->cls;
    size_t n = g->n_cls, k = 0;
    if (n)
        qsort(c, n, sizeof *c, range_cmp);
    for (size_t i = 0; i < n; i++) { /* merge */
        if (k && c[i].lo <= c[k - 1].hi + 1) {
            if (c[i].hi > c[k - 1].hi)
                c[k - 1].hi = c[i].hi;
        } else {
            c[k++] = c[i];
        }
    }
    n = k;
    range keep[2] = {{neg ? 1 : 0, 0xD7FF}, {0xE000, 0x10FFFF}};
    core_gset ascii = {{0}};
    int r = -1;
    bool any = false;
    g->n_seq = 0;
    for (int part = 0; part < 2; part++) {
        uint32_t next = keep[part].lo; /* for neg: the first code point not yet covered */
        for (size_t i = 0; i <= n; i++) {
            uint32_t lo = 0, hi = 0;
            if (neg) {
                if (i < n && c[i].hi < next)
                    continue;
                lo = next;
                hi = i < n ? (c[i].lo ? c[i].lo - 1 : 0) : keep[part].hi;
                if (i < n && c[i].lo == 0) {
                    next = c[i].hi + 1;
                    continue;
                }
                if (i < n)
                    next = c[i].hi + 1 > next ? c[i].hi + 1 : next;
            } else {
                if (i == n)
                    break;
                lo = c[i].lo;
                hi = c[i].hi;
            }
            if (lo < keep[part].lo)
                lo = keep[part].lo;
            if (hi > keep[part].hi)
                hi = keep[part].hi;
            if (lo > hi)
                continue;
            any = true;
            if (lo < 0x80) {
                core_gset_add(&ascii, lo, hi < 0x7F ? hi : 0x7F);
                lo = 0x80;
                if (lo > hi)
                    continue;
            }
            static const uint32_t top[4] = {0x7F, 0x7FF, 0xFFFF, 0x10FFFF};
            for (int len = 2; len <= 4; len++)
                if (lo <= top[len - 1] && hi > top[len - 2] &&
                    utf8_span(g, lo > top[len - 2] ? lo : top[len - 2] + 1,
                              hi < top[len - 1] ? hi : top[len - 1], len))
                    return -1;
        }
    }
    if (!any)
        return refuse_at(g, at, -EINVAL, "the class matches no character");
    if (g->n_seq && ((r = new_rule(g)) < 0 || utf8_rule(g, r, g->seq, g->n_seq, 0)))
        return -1;
    if (r < 0) {
        out->kind = A_SET;
        out->set = ascii;
        return 0;
    }
    if (ascii.w[0] | ascii.w[1]) {
        core_gbuild_alt(g->b, r);
        core_gbuild_set(g->b, r, &ascii);
    }
    out->kind = A_RULE;
    out->rule = r;
    return 0;
}

static int add_range(gp *g, uint32_t lo, uint32_t hi)
{
    if (core_grow(&g->cls, &g->cap_cls, g->n_cls + 1, sizeof *g->cls))
        return refuse_at(g, NULL, -ENOMEM, "out of memory");
    g->cls[g->n_cls++] = (range){lo, hi};
    return 0;
}

/* [...] or [^...], g->p at '['. */
static int parse_class(gp *g, atom *out)
{
    const char *at = g->p++;
    bool neg = g->p < g->end && *g->p == '^';
    g->p += neg;
    g->n_cls = 0;
    for (;;) {
        if (g->p >= g->end)
            return refuse_at(g, at, -EINVAL, "unterminated class");
        if (*g->p == ']')
            break;
        uint32_t lo = 0, hi = 0;
        const char *from = g->p;
        if (character(g, &lo))
            return -1;
        hi = lo;
        if (g->end - g->p >= 2 && g->p[0] == '-' && g->p[1] != ']') {
            g->p++;
            if (character(g, &hi))
                return -1;
            if (hi < lo)
                return refuse_at(g, from, -EINVAL, "a range whose end is before its start");
        }
        if (add_range(g, lo, hi))
            return -1;
    }
    g->p++;
    return class_atom(g, neg, at, out);
}

/* "...", g->p at the opening quote; its bytes into g->buf. */
static int parse_literal(gp *g, atom *out)
{
    const char *at = g->p++;
    g->n_buf = 0;
    for (;;) {
        if (g->p >= g->end)
            return refuse_at(g, at, -EINVAL, "unterminated literal");
        if (*g->p == '"')
            break;
        uint32_t cp;
        if (character(g, &cp))
            return -1;
        if (core_grow(&g->buf, &g->cap_buf, g->n_buf + 4, 1))
            return refuse_at(g, NULL, -ENOMEM, "out of memory");
        g->n_buf += (size_t)core_utf8_encode(cp, (uint8_t *)g->buf + g->n_buf);
    }
    g->p++;
    out->kind = A_BYTES;
    return 0;
}

/* --- structure ------------------------------------------------------------------------------- */

static int alternates(gp *g, int r, bool nested, int depth);

static int parse_atom(gp *g, atom *out, int depth)
{
    char c = *g->p;
    if (c == '"')
        return parse_literal(g, out);
    if (c == '[')
        return parse_class(g, out);
    if (c == '.') {
        g->p++;
        if (g->any < 0) {
            g->n_cls = 0;
            atom a = {.kind = A_BYTES};
            if (class_atom(g, true, g->p - 1, &a))
                return -1;
            g->any = a.rule;
        }
        out->kind = A_RULE;
        out->rule = g->any;
        return 0;
    }
    if (c == '(') {
        const char *at = g->p++;
        if (depth >= SRV_GBNF_DEPTH_MAX)
            return refuse_at(g, at, -EINVAL, "parentheses nested over %d deep", SRV_GBNF_DEPTH_MAX);
        int r = new_rule(g);
        if (r < 0)
            return -1;
        skip(g, true);
        if (alternates(g, r, true, depth + 1))
            return -1;
        if (g->p >= g->end || *g->p != ')')
            return refuse_at(g, at, -EINVAL, "unclosed '('");
        g->p++;
        out->kind = A_RULE;
        out->rule = r;
        return 0;
    }
    if (c == '<')
        return FAIL(g, "token references (<...>) are not supported");
    if (name_char(c)) {
        const char *s = g->p;
        while (g->p < g->end && name_char(*g->p))
            g->p++;
        gname *e = lookup(g, s, (size_t)(g->p - s));
        if (!e)
            return -1;
        if (!e->use)
            e->use = s;
        out->kind = A_RULE;
        out->rule = e->rule;
        return 0;
    }
    if ((unsigned char)c < 0x20 || c == 0x7f)
        return FAIL(g, "expected a literal, class, rule name or group, got byte 0x%02x",
                    (unsigned char)c);
    return FAIL(g, "expected a literal, class, rule name or group, got '%c'", c);
}

/* A bounded repetition {m}, {m,}, {m,n}, g->p at '{'. */
static int parse_braces(gp *g, long *min, long *max)
{
    const char *at = g->p++;
    long v[2] = {-1, -1};
    int k = 0;
    for (;;) {
        skip(g, false);
        if (g->p < g->end && *g->p >= '0' && *g->p <= '9') {
            long x = 0;
            while (g->p < g->end && *g->p >= '0' && *g->p <= '9') {
                x = x * 10 + (*g->p++ - '0');
                if (x > SRV_GBNF_REPEAT_MAX)
                    return refuse_at(g, at, -EINVAL, "a repetition bound over %d",
                                     SRV_GBNF_REPEAT_MAX);
            }
            v[k] = x;
            skip(g, false);
        }
        if (g->p < g->end && *g->p == ',' && k == 0) {
            g->p++;
            k = 1;
            continue;
        }
        if (g->p < g->end && *g->p == '}')
            break;
        return refuse_at(g, at, -EINVAL, "expected {m}, {m,} or {m,n}");
    }
    g->p++;
    if (v[0] < 0)
        return refuse_at(g, at, -EINVAL, "expected {m}, {m,} or {m,n}");
    *min = v[0];
    *max = k == 0 ? v[0] : v[1];
    if (*max >= 0 && *max < *min)
        return refuse_at(g, at, -EINVAL,
                         "a repetition {%ld,%ld} whose maximum is below its minimum", *min, *max);
    return 0;
}

/* Appends atom a to rule r's current alternative. */
static void emit(gp *g, int r, const atom *a)
{
    if (a->kind == A_BYTES)
        core_gbuild_lit(g->b, r, g->buf, g->n_buf);
    else if (a->kind == A_SET)
        core_gbuild_set(g->b, r, &a->set);
    else
        core_gbuild_ref(g->b, r, a->rule);
}

static bool ends_sequence(const gp *g)
{
    char c = *g->p;
    return c == '|' || c == ')' || c == '\n' || c == '\r';
}

/* Elements up to '|', ')', the end of the line (at the top level) or of the text. */
static int sequence(gp *g, int r, bool nested, int depth)
{
    for (;;) {
        skip(g, nested);
        if (g->p >= g->end || ends_sequence(g))
            return 0;
        atom a = {.kind = A_BYTES};
        if (parse_atom(g, &a, depth))
            return -1;
        skip(g, nested);
        while (g->p < g->end && (*g->p == '*' || *g->p == '+' || *g->p == '?' || *g->p == '{')) {
            long min = *g->p == '+', max = *g->p == '?' ? 1 : -1;
            if (*g->p == '{') {
                if (parse_braces(g, &min, &max))
                    return -1;
            } else {
                g->p++;
            }
            if (a.kind != A_RULE) { /* the element alone in a rule, to repeat it */
                int x = new_rule(g);
                if (x < 0)
                    return -1;
                core_gbuild_alt(g->b, x);
                emit(g, x, &a);
                a.kind = A_RULE;
                a.rule = x;
            }
            if ((a.rule = core_gbuild_repeat(g->b, a.rule, min, max)) < 0)
                return refuse_at(g, NULL, a.rule, "%s",
                                 a.rule == -ENOMEM ? "out of memory" : "the grammar is too large");
            skip(g, nested);
        }
        emit(g, r, &a);
    }
}

/* After a sequence: at the top level, a next line that starts with '|' goes on with the rule. */
static void continue_line(gp *g, bool nested)
{
    if (nested)
        return;
    const char *save = g->p;
    skip(g, true);
    if (g->p >= g->end || *g->p != '|')
        g->p = save;
}

/* Alternatives that are each one literal ("Paris" | "London" | ...) as a trie
 * (core_gbuild_one_of), so any number of them holds one matcher stack per distinct next byte:
 * 1 when written into r, 0 when they are not all literals (nothing read), -1 on an error. */
static int literal_alternates(gp *g, int r, bool nested)
{
    const char *start = g->p;
    char *all = NULL;
    size_t n_all = 0, cap_all = 0, *len = NULL, cap_len = 0, k = 0;
    int rc = 0;
    while (g->p < g->end && *g->p == '"') {
        atom a = {.kind = A_BYTES};
        if (parse_literal(g, &a)) {
            rc = -1;
            break;
        }
        if (core_grow(&all, &cap_all, n_all + g->n_buf + 1, 1) ||
            core_grow(&len, &cap_len, k + 1, sizeof *len)) {
            rc = refuse_at(g, NULL, -ENOMEM, "out of memory");
            break;
        }
        if (g->n_buf)
            memcpy(all + n_all, g->buf, g->n_buf);
        n_all += g->n_buf;
        len[k++] = g->n_buf;
        skip(g, nested);
        continue_line(g, nested);
        if (g->p < g->end && *g->p == '|') {
            g->p++;
            skip(g, true);
            continue;
        }
        if (k >= 2 && (g->p >= g->end || ends_sequence(g)))
            rc = 1;
        break;
    }
    if (rc == 1) {
        const char **v = malloc((k ? k : 1) * sizeof *v);
        if (!v) {
            rc = refuse_at(g, NULL, -ENOMEM, "out of memory");
        } else {
            for (size_t i = 0, o = 0; i < k; o += len[i++])
                v[i] = all + o;
            int t = core_gbuild_one_of(g->b, v, len, k);
            free(v);
            if (t < 0) {
                rc = refuse_at(g, NULL, t, "%s",
                               t == -ENOMEM ? "out of memory" : "the grammar is too large");
            } else {
                core_gbuild_alt(g->b, r);
                core_gbuild_ref(g->b, r, t);
            }
        }
    }
    if (rc == 0)
        g->p = start;
    free(all);
    free(len);
    return rc;
}

static int alternates(gp *g, int r, bool nested, int depth)
{
    int lit = literal_alternates(g, r, nested);
    if (lit)
        return lit < 0 ? -1 : 0;
    for (;;) {
        core_gbuild_alt(g->b, r);
        if (sequence(g, r, nested, depth))
            return -1;
        continue_line(g, nested);
        if (g->p >= g->end || *g->p != '|')
            return 0;
        g->p++;
        skip(g, true);
    }
}

static int definition(gp *g)
{
    const char *s = g->p;
    while (g->p < g->end && name_char(*g->p))
        g->p++;
    if (g->p == s) {
        if (*g->p == '<')
            return FAIL(g, "token references (<...>) are not supported");
        return FAIL(g, "expected a rule name");
    }
    size_t n = (size_t)(g->p - s);
    skip(g, false);
    if (g->end - g->p < 3 || memcmp(g->p, "::=", 3) != 0)
        return FAIL(g, "expected '::=' after the rule name '%.*s'", (int)(n < 64 ? n : 64), s);
    g->p += 3;
    skip(g, true);
    gname *e = lookup(g, s, n);
    if (!e)
        return -1;
    if (e->defined)
        return refuse_at(g, s, -EINVAL, "rule '%.*s' is defined twice", (int)(n < 64 ? n : 64), s);
    e->defined = true;
    e->def = s;
    int r = e->rule;
    if (core_grow(&g->def, &g->cap_def, g->n_def + 1, sizeof *g->def))
        return refuse_at(g, NULL, -ENOMEM, "out of memory");
    g->def[g->n_def++] = (struct gdef){(int)core_gbuild_rules(g->b), (int)(e - g->name)};
    if (alternates(g, r, false, 0))
        return -1;
    skip(g, false);
    if (g->p < g->end && *g->p != '\n' && *g->p != '\r')
        return FAIL(g, "expected the end of the line");
    skip(g, true);
    return 0;
}

/* The name to blame for rule id r (a named rule, or the definition that made a helper rule). */
static const gname *owner(const gp *g, int r)
{
    for (size_t i = 0; i < g->n_name; i++)
        if (g->name[i].rule == r)
            return &g->name[i];
    const gname *e = NULL;
    for (size_t d = 0; d < g->n_def && g->def[d].start <= r; d++)
        e = &g->name[g->def[d].name];
    return e;
}

int srv_gbnf_compile(const char *text, size_t n, core_grammar **out, char *err, size_t errlen)
{
    gp g = {.base = text, .p = text, .end = text + n, .err = err, .errlen = errlen, .any = -1};
    *out = NULL;
    if (err && errlen)
        err[0] = 0;
    if (!(g.b = core_gbuild_new()))
        return -ENOMEM;
    skip(&g, true);
    while (!g.rc && g.p < g.end)
        if (definition(&g))
            break;
    gname *root = NULL;
    for (size_t i = 0; !g.rc && i < g.n_name; i++) {
        gname *e = &g.name[i];
        if (!e->defined)
            refuse_at(&g, e->use, -EINVAL, "rule '%.*s' is used but not defined",
                      (int)(e->n < 64 ? e->n : 64), e->s);
        else if (e->n == 4 && !memcmp(e->s, "root", 4))
            root = e;
    }
    if (!g.rc && !root)
        refuse_at(&g, NULL, -EINVAL, "no rule named 'root' (the grammar starts there)");
    bool go = !g.rc && root; /* each check below runs while nothing was refused */
    core_grammar *gr = NULL;
    if (go) { /* first, so that a builder error (too large) is what is reported */
        char e[160];
        if (!(gr = core_gbuild_finish(g.b, root->rule, e, sizeof e)))
            refuse_at(&g, NULL,
                      strstr(e, "large")    ? -E2BIG
                      : strstr(e, "memory") ? -ENOMEM
                                            : -EINVAL,
                      "%s", strstr(e, "large") ? "the grammar is too large" : e);
    }
    go = go && gr;
    int lr = go ? core_gbuild_left_recursive(g.b) : -1;
    if (lr == -ENOMEM) {
        refuse_at(&g, NULL, -ENOMEM, "out of memory");
    } else if (lr >= 0) {
        const gname *e = owner(&g, lr);
        if (e)
            refuse_at(&g, e->def ? e->def : e->s, -EINVAL,
                      "rule '%.*s' is left-recursive: it can reach itself before reading a "
                      "character (directly, through rules that may match nothing, or by "
                      "repeating something that may, as (\"a\"?)*)",
                      (int)(e->n < 64 ? e->n : 64), e->s);
        else
            refuse_at(&g, NULL, -EINVAL, "the grammar is left-recursive");
    }
    go = go && !g.rc;
    int productive = go ? core_gbuild_productive(g.b, root->rule) : 1;
    if (productive <= 0)
        refuse_at(&g, NULL, productive ? -ENOMEM : -EINVAL,
                  productive ? "out of memory"
                             : "the grammar matches nothing (every way through 'root' needs a "
                               "rule that never ends)");
    go = go && !g.rc;
    int start = go ? core_grammar_start(gr) : 1;
    if (start == -E2BIG)
        refuse_at(&g, NULL, -EINVAL,
                  "the grammar is too ambiguous to follow: more than 256 ways open at once "
                  "(alternatives that are not all plain literals), or the empty text derived in "
                  "too many ways");
    else if (start <= 0)
        refuse_at(&g, NULL, start ? start : -EINVAL,
                  start ? "out of memory" : "the grammar matches nothing");
    if (g.rc) {
        core_grammar_free(gr);
        gr = NULL;
    }
    core_gbuild_free(g.b);
    free(g.name);
    free(g.slot);
    free(g.def);
    free(g.buf);
    free(g.cls);
    free(g.seq);
    *out = gr;
    return gr ? 0 : g.rc ? g.rc : -EINVAL;
}
