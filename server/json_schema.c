/* JSON Schema → byte grammar: see json_schema.h for the subset. Every schema object becomes a
 * rule; "$ref" targets become one rule each, made before their body so recursion refers back. */
#include "server/json_schema.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base.h"

#define PATH_BYTES 200
#define WS_MAX 16     /* whitespace bytes between two tokens of the generated JSON */
#define DIGITS_MAX 16 /* integer and fraction digits */
#define INT_MAG_MAX 9999999999999999LL /* 16 digits */

typedef struct memo {
    const cJSON *node;
    int rule;
} memo;

typedef struct sc {
    core_gbuild *b;
    const cJSON *root;
    char *err;
    size_t errlen;
    int rc; /* the first refusal; later ones are not reported */
    int nodes;
    memo *memo;
    size_t n_memo, cap_memo;
    /* shared rules, made on first use; -1 until then */
    int ws, ch, str, num, value, object, array, utf8, digit, frac;
    bool raw; /* regular expressions over raw text (guided_regex), not JSON string content */
    const char *what; /* what is compiled, for messages: "schema", "regex", "choice list" */
} sc;

static int refuse(sc *c, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int refuse(sc *c, int rc, const char *fmt, ...)
{
    if (!c->rc) {
        c->rc = rc;
        if (c->err && c->errlen) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(c->err, c->errlen, fmt, ap);
            va_end(ap);
            for (char *q = c->err; *q; q++) /* names from the schema may hold control bytes */
                if ((unsigned char)*q < 0x20 || *q == 0x7f)
                    *q = '?';
        }
    }
    return -1;
}

/* --- building helpers (errors stick in the builder; core_gbuild_finish reports them) --------- */

/* Refuses for a builder error r (-ENOMEM, or -E2BIG: too large); returns r. */
static int builder_failed(sc *c, int r)
{
    if (r == -ENOMEM)
        refuse(c, r, "out of memory");
    else
        refuse(c, r, "the %s is too large", c->what);
    return r;
}

static int rule(sc *c)
{
    int r = core_gbuild_rule(c->b);
    return r < 0 ? builder_failed(c, r) : r;
}

static void alt(sc *c, int r)
{
    core_gbuild_alt(c->b, r);
}

static void lit(sc *c, int r, const char *s)
{
    core_gbuild_lit(c->b, r, s, strlen(s));
}

static void ref(sc *c, int r, int sub)
{
    if (sub >= 0)
        core_gbuild_ref(c->b, r, sub);
    else
        refuse(c, -EINVAL, "internal: a rule failed");
}

static void span(sc *c, int r, unsigned lo, unsigned hi)
{
    core_gset s = {{0}};
    core_gset_add(&s, lo, hi);
    core_gbuild_set(c->b, r, &s);
}

/* A rule matching x repeated min..max times (max < 0: no limit). */
static int rep(sc *c, int x, long min, long max)
{
    if (x < 0)
        return refuse(c, -EINVAL, "internal: a rule failed");
    int r = core_gbuild_repeat(c->b, x, min, max);
    return r < 0 ? builder_failed(c, r) : r;
}

static int one_span(sc *c, unsigned lo, unsigned hi)
{
    int r = rule(c);
    alt(c, r);
    span(c, r, lo, hi);
    return r;
}

/* --- shared rules ------------------------------------------------------------------------------
 */

static int ws(sc *c)
{
    if (c->ws >= 0)
        return c->ws;
    int next = rule(c); /* w_WS_MAX ::= ε; w_i ::= ε | [ \t\n] w_(i+1) */
    alt(c, next);
    for (int i = 0; i < WS_MAX; i++) {
        int w = rule(c);
        core_gset s = {{0}};
        core_gset_add(&s, ' ', ' ');
        core_gset_add(&s, '\t', '\n');
        alt(c, w);
        alt(c, w);
        core_gbuild_set(c->b, w, &s);
        ref(c, w, next);
        next = w;
    }
    return c->ws = next;
}

/* One UTF-8 encoded non-ASCII character (well-formed: no overlongs, surrogates or > U+10FFFF). */
static int utf8(sc *c)
{
    if (c->utf8 >= 0)
        return c->utf8;
    int r = c->utf8 = rule(c), k = one_span(c, 0x80, 0xBF);
    static const struct {
        unsigned lo, hi, lo2, hi2;
        int more;
    } seq[] = {{0xC2, 0xDF, 0x80, 0xBF, 0}, {0xE0, 0xE0, 0xA0, 0xBF, 1},
               {0xE1, 0xEC, 0x80, 0xBF, 1}, {0xED, 0xED, 0x80, 0x9F, 1},
               {0xEE, 0xEF, 0x80, 0xBF, 1}, {0xF0, 0xF0, 0x90, 0xBF, 2},
               {0xF1, 0xF3, 0x80, 0xBF, 2}, {0xF4, 0xF4, 0x80, 0x8F, 2}};
    for (size_t i = 0; i < sizeof seq / sizeof seq[0]; i++) {
        alt(c, r);
        span(c, r, seq[i].lo, seq[i].hi);
        span(c, r, seq[i].lo2, seq[i].hi2);
        for (int j = 0; j < seq[i].more; j++)
            ref(c, r, k);
    }
    return r;
}

/* One character of a JSON string's content, as JSON writes it. */
static int ch(sc *c)
{
    if (c->ch >= 0)
        return c->ch;
    int r = c->ch = rule(c), hex = rule(c);
    alt(c, hex);
    span(c, hex, '0', '9');
    alt(c, hex);
    span(c, hex, 'a', 'f');
    alt(c, hex);
    span(c, hex, 'A', 'F');
    alt(c, r); /* printable ASCII but " and \ */
    core_gset s = {{0}};
    core_gset_add(&s, 0x20, 0x7F);
    s.w['"' >> 6] &= ~(1ULL << ('"' & 63));
    s.w['\\' >> 6] &= ~(1ULL << ('\\' & 63));
    core_gbuild_set(c->b, r, &s);
    alt(c, r);
    lit(c, r, "\\");
    core_gset e = {{0}};
    for (const char *p = "\"\\/bfnrt"; *p; p++)
        core_gset_add(&e, (unsigned char)*p, (unsigned char)*p);
    core_gbuild_set(c->b, r, &e);
    alt(c, r);
    lit(c, r, "\\u");
    for (int i = 0; i < 4; i++)
        ref(c, r, hex);
    alt(c, r);
    ref(c, r, utf8(c));
    return r;
}

static int quoted(sc *c, int content)
{
    int r = rule(c);
    alt(c, r);
    lit(c, r, "\"");
    ref(c, r, content);
    lit(c, r, "\"");
    return r;
}

static int str_any(sc *c)
{
    if (c->str < 0)
        c->str = quoted(c, rep(c, ch(c), 0, -1));
    return c->str;
}

static int digit(sc *c)
{
    if (c->digit < 0)
        c->digit = one_span(c, '0', '9');
    return c->digit;
}

/* "." then 1..DIGITS_MAX digits */
static int frac(sc *c)
{
    if (c->frac >= 0)
        return c->frac;
    int r = c->frac = rule(c);
    alt(c, r);
    lit(c, r, ".");
    ref(c, r, rep(c, digit(c), 1, DIGITS_MAX));
    return r;
}

static int opt(sc *c, int x)
{
    int r = rule(c);
    alt(c, r);
    alt(c, r);
    ref(c, r, x);
    return r;
}

/* -?(0|[1-9][0-9]{0,15}) */
static int int_any(sc *c)
{
    int mag = rule(c), r = rule(c);
    alt(c, mag);
    lit(c, mag, "0");
    alt(c, mag);
    span(c, mag, '1', '9');
    ref(c, mag, rep(c, digit(c), 0, DIGITS_MAX - 1));
    alt(c, r);
    ref(c, r, mag);
    alt(c, r);
    lit(c, r, "-");
    ref(c, r, mag);
    return r;
}

/* JSON's number: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? with the digit bounds above */
static int num_any(sc *c)
{
    if (c->num >= 0)
        return c->num;
    int r = c->num = rule(c), ex = rule(c), sign = rule(c);
    alt(c, sign);
    alt(c, sign);
    span(c, sign, '+', '+');
    alt(c, sign);
    span(c, sign, '-', '-');
    alt(c, ex);
    core_gset e = {{0}};
    core_gset_add(&e, 'e', 'e');
    core_gset_add(&e, 'E', 'E');
    core_gbuild_set(c->b, ex, &e);
    ref(c, ex, sign);
    ref(c, ex, rep(c, digit(c), 1, 3));
    alt(c, r);
    ref(c, r, int_any(c));
    ref(c, r, opt(c, frac(c)));
    ref(c, r, opt(c, ex));
    return r;
}

/* A JSON-escaped, quoted copy of s as a literal, appended to rule r. */
static void lit_json_string(sc *c, int r, const char *s)
{
    cJSON *j = cJSON_CreateString(s);
    char *t = j ? cJSON_PrintUnformatted(j) : NULL;
    if (t)
        lit(c, r, t);
    else
        refuse(c, -ENOMEM, "out of memory");
    free(t);
    cJSON_Delete(j);
}

static int value_any(sc *c);

/* "[" ws (x (ws "," ws x){min-1,max-1})? ws "]" */
static int array_of(sc *c, int x, long min, long max)
{
    int r = rule(c), sep = rule(c);
    alt(c, sep);
    ref(c, sep, ws(c));
    lit(c, sep, ",");
    ref(c, sep, ws(c));
    ref(c, sep, x);
    alt(c, r);
    lit(c, r, "[");
    ref(c, r, ws(c));
    if (max != 0) {
        int items = rule(c);
        alt(c, items);
        ref(c, items, x);
        ref(c, items, rep(c, sep, min > 1 ? min - 1 : 0, max < 0 ? -1 : max - 1));
        ref(c, r, min > 0 ? items : opt(c, items));
    }
    ref(c, r, ws(c));
    lit(c, r, "]");
    return r;
}

static int value_any(sc *c)
{
    if (c->value >= 0)
        return c->value;
    int v = c->value = rule(c);
    int o = c->object = rule(c), member = rule(c);
    alt(c, member);
    ref(c, member, str_any(c));
    ref(c, member, ws(c));
    lit(c, member, ":");
    ref(c, member, ws(c));
    ref(c, member, v);
    int inner = rule(c), sep = rule(c);
    alt(c, sep);
    ref(c, sep, ws(c));
    lit(c, sep, ",");
    ref(c, sep, ws(c));
    ref(c, sep, member);
    alt(c, inner);
    ref(c, inner, member);
    ref(c, inner, rep(c, sep, 0, -1));
    alt(c, o);
    lit(c, o, "{");
    ref(c, o, ws(c));
    ref(c, o, opt(c, inner));
    ref(c, o, ws(c));
    lit(c, o, "}");
    c->array = array_of(c, v, 0, -1);
    static const char *const words[] = {"true", "false", "null"};
    int alts[] = {o, c->array, str_any(c), num_any(c)};
    for (size_t i = 0; i < 4; i++) {
        alt(c, v);
        ref(c, v, alts[i]);
    }
    for (size_t i = 0; i < 3; i++) {
        alt(c, v);
        lit(c, v, words[i]);
    }
    return v;
}

static int object_any(sc *c)
{
    value_any(c);
    return c->object;
}

/* --- integer ranges ------------------------------------------------------------------------- */

static int ndigits(uint64_t x)
{
    int n = 1;
    while (x >= 10) {
        x /= 10;
        n++;
    }
    return n;
}

static uint64_t pow10u(int n)
{
    uint64_t p = 1;
    while (n-- > 0)
        p *= 10;
    return p;
}

/* Adds to rule r one alternative per digit-range sequence: prefix (k spans) then the same-length
 * digit strings in [a, b] (n digits each). */
static void digit_ranges(sc *c, int r, unsigned char (*pre)[2], int k, const char *a, const char *b,
                         int n)
{
    if (n == 0) {
        alt(c, r);
        for (int i = 0; i < k; i++)
            span(c, r, pre[i][0], pre[i][1]);
        return;
    }
    bool a_zeros = true, b_nines = true;
    for (int i = 1; i < n; i++) {
        a_zeros = a_zeros && a[i] == '0';
        b_nines = b_nines && b[i] == '9';
    }
    if (a[0] == b[0]) {
        pre[k][0] = pre[k][1] = (unsigned char)a[0];
        digit_ranges(c, r, pre, k + 1, a + 1, b + 1, n - 1);
        return;
    }
    static const char nines[] = "99999999999999999999", zeros[] = "00000000000000000000";
    unsigned lo = (unsigned char)a[0] + (a_zeros ? 0 : 1),
             hi = (unsigned char)b[0] - (b_nines ? 0 : 1);
    if (!a_zeros) {
        pre[k][0] = pre[k][1] = (unsigned char)a[0];
        digit_ranges(c, r, pre, k + 1, a + 1, nines, n - 1);
    }
    if (lo <= hi) {
        pre[k][0] = (unsigned char)lo;
        pre[k][1] = (unsigned char)hi;
        for (int i = 1; i < n; i++)
            pre[k + i][0] = '0', pre[k + i][1] = '9';
        digit_ranges(c, r, pre, k + n, "", "", 0);
    }
    if (!b_nines) {
        pre[k][0] = pre[k][1] = (unsigned char)b[0];
        digit_ranges(c, r, pre, k + 1, zeros, b + 1, n - 1);
    }
}

/* A rule for the decimal writings (no leading zeros) of the integers in [lo, hi]. */
static int uint_range(sc *c, uint64_t lo, uint64_t hi)
{
    int r = rule(c);
    unsigned char pre[24][2];
    for (int len = ndigits(lo); len <= ndigits(hi); len++) {
        uint64_t a = len == 1 ? 0 : pow10u(len - 1), b = pow10u(len) - 1;
        if (a < lo)
            a = lo;
        if (b > hi)
            b = hi;
        char sa[24], sb[24];
        snprintf(sa, sizeof sa, "%llu", (unsigned long long)a); /* len digits */
        snprintf(sb, sizeof sb, "%llu", (unsigned long long)b);
        digit_ranges(c, r, pre, 0, sa, sb, len);
    }
    return r;
}

static int int_range(sc *c, long long lo, long long hi)
{
    int r = rule(c);
    if (lo < 0) {
        alt(c, r);
        lit(c, r, "-");
        ref(c, r, uint_range(c, hi < 0 ? (uint64_t)-hi : 1, (uint64_t)-lo));
    }
    if (hi >= 0) {
        alt(c, r);
        ref(c, r, uint_range(c, lo > 0 ? (uint64_t)lo : 0, (uint64_t)hi));
    }
    return r;
}

/* Bounded numbers are written without exponent, at most DIGITS_MAX digits on each side of the
 * point, so their values are exactly the multiples of 10^-DIGITS_MAX below 10^DIGITS_MAX: bounds
 * are such fixed-point counts (|x| < 10^32 fits in 128 bits). */
typedef __int128 fix;
#define FIX_ONE ((fix)10000000000000000LL) /* 10^DIGITS_MAX */
#define FIX_MAX ((fix)INT_MAG_MAX * FIX_ONE + (FIX_ONE - 1))

/* v (finite) as a fixed-point count, rounded up (toward +inf) or down, from its shortest decimal
 * writing that reads back as v (0.1 is 0.1, not the binary value's 55 digits); *exact when no
 * rounding was needed. Clamped to +-FIX_MAX. */
static fix to_fix(double v, bool up, bool *exact)
{
    *exact = false;
    if (v >= 1e16)
        return FIX_MAX;
    if (v <= -1e16)
        return -FIX_MAX;
    char buf[40];
    for (int p = 0; p < 17; p++) {
        snprintf(buf, sizeof buf, "%.*e", p, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    bool neg = buf[0] == '-';
    fix m = 0;
    int nd = 0;
    const char *q = buf + neg;
    for (; *q && *q != 'e'; q++)
        if (*q >= '0' && *q <= '9')
            m = m * 10 + (*q - '0'), nd++;
    int shift =
        (*q ? (int)strtol(q + 1, NULL, 10) : 0) + DIGITS_MAX - (nd - 1); /* v = m 10^(shift - 16) */
    if (shift >= 0) {
        for (int i = 0; i < shift; i++)
            m *= 10;
        *exact = true;
    } else if (shift < -(nd + 1)) { /* |v| < 10^-17: below one unit */
        *exact = m == 0;
        m = !*exact && up != neg;
    } else {
        fix d = 1;
        for (int i = 0; i < -shift; i++)
            d *= 10;
        *exact = m % d == 0;
        m = m / d + (!*exact && up != neg); /* the magnitude rounds away from 0 when v moves out */
    }
    return neg ? -m : m;
}

/* The DIGITS_MAX fraction digits of v >= 0, and a NUL. */
static void frac_digits(fix v, char f[DIGITS_MAX + 1])
{
    fix r = v % FIX_ONE;
    for (int i = DIGITS_MAX - 1; i >= 0; i--, r /= 10)
        f[i] = (char)('0' + (int)(r % 10));
    f[DIGITS_MAX] = 0;
}

static bool zeros_from(const char *f, int i)
{
    for (; f && f[i]; i++)
        if (f[i] != '0')
            return false;
    return true;
}

/* Fraction digits s, from digit i on (0 to DIGITS_MAX - i of them, compared as if padded with
 * zeros), with lo[i..] <= s <= hi[i..]; lo NULL: no lower bound, hi NULL: no upper bound;
 * nonempty: at least one digit. */
static int frac_range(sc *c, const char *lo, const char *hi, int i, bool nonempty)
{
    int rem = DIGITS_MAX - i, r = rule(c);
    if (zeros_from(lo, i) && !hi) {
        alt(c, r);
        ref(c, r, rep(c, digit(c), nonempty, rem));
        return r;
    }
    if (!nonempty && zeros_from(lo, i)) /* no more digits: zeros, within hi */
        alt(c, r);
    if (rem == 0)
        return r;
    unsigned a = lo ? (unsigned char)lo[i] : '0', b = hi ? (unsigned char)hi[i] : '9';
    if (a + 1 < b) {
        alt(c, r);
        span(c, r, a + 1, b - 1);
        ref(c, r, rep(c, digit(c), 0, rem - 1));
    }
    if (a == b) {
        alt(c, r);
        span(c, r, a, a);
        ref(c, r, frac_range(c, lo, hi, i + 1, false));
    } else {
        alt(c, r);
        span(c, r, a, a);
        ref(c, r, frac_range(c, lo, NULL, i + 1, false));
        alt(c, r);
        span(c, r, b, b);
        ref(c, r, frac_range(c, NULL, hi, i + 1, false));
    }
    return r;
}

/* A fraction (none, or "." and 1 to DIGITS_MAX digits) within [lo, hi] (NULL: unbounded). */
static int fraction(sc *c, const char *lo, const char *hi)
{
    int r = rule(c);
    if (zeros_from(lo, 0))
        alt(c, r);
    alt(c, r);
    lit(c, r, ".");
    ref(c, r, frac_range(c, lo, hi, 0, true));
    return r;
}

/* Writings of the numbers in [lo, hi], 0 <= lo <= hi <= FIX_MAX: by integer part, those strictly
 * between the bounds' with any fraction, the bounds' own with the fractions within them. */
static int nonneg_range(sc *c, fix lo, fix hi)
{
    uint64_t ia = (uint64_t)(lo / FIX_ONE), ib = (uint64_t)(hi / FIX_ONE);
    char fa[DIGITS_MAX + 1], fb[DIGITS_MAX + 1];
    frac_digits(lo, fa);
    frac_digits(hi, fb);
    int r = rule(c);
    if (ib >= ia + 2) {
        alt(c, r);
        ref(c, r, uint_range(c, ia + 1, ib - 1));
        ref(c, r, fraction(c, NULL, NULL));
    }
    alt(c, r);
    ref(c, r, uint_range(c, ia, ia));
    ref(c, r, fraction(c, fa, ia == ib ? fb : NULL));
    if (ib != ia) {
        alt(c, r);
        ref(c, r, uint_range(c, ib, ib));
        ref(c, r, fraction(c, NULL, fb));
    }
    return r;
}

/* Numbers in [lo, hi], without exponent: the non-negative ones, then "-" and the magnitudes of
 * the negative ones ("-0" is 0, within any range that holds 0 and a negative number). */
static int number_range(sc *c, fix lo, fix hi)
{
    int r = rule(c);
    if (hi >= 0) {
        alt(c, r);
        ref(c, r, nonneg_range(c, lo > 0 ? lo : 0, hi));
    }
    if (lo < 0) {
        alt(c, r);
        lit(c, r, "-");
        ref(c, r, nonneg_range(c, hi < 0 ? -hi : 0, -lo));
    }
    return r;
}

/* --- regular expressions ------------------------------------------------------------------- */

typedef struct rx {
    sc *c;
    const char *base, *p, *end;
} rx;

typedef struct aset {
    uint64_t w[2]; /* ASCII 0..127 */
} aset;

static void aset_add(aset *s, unsigned lo, unsigned hi)
{
    for (unsigned x = lo; x <= hi && x < 128; x++)
        s->w[x >> 6] |= 1ULL << (x & 63);
}

static bool aset_has(const aset *s, unsigned x)
{
    return x < 128 && ((s->w[x >> 6] >> (x & 63)) & 1);
}

/* A rule for one character of class s (negated: any character but those, non-ASCII included),
 * written as JSON writes it inside a string, or as itself in raw mode. */
static int class_rule(sc *c, aset s, bool neg)
{
    if (neg) {
        s.w[0] = ~s.w[0];
        s.w[1] = ~s.w[1];
    }
    int r = rule(c);
    core_gset plain = {{0}};
    bool any = false;
    if (c->raw) { /* the characters themselves (never NUL) */
        s.w[0] &= ~1ULL;
        plain.w[0] = s.w[0];
        plain.w[1] = s.w[1];
        s.w[0] = s.w[1] = 0;
    }
    for (unsigned x = 0; x < 128; x++) {
        if (!aset_has(&s, x))
            continue;
        if (x >= 0x20 && x != '"' && x != '\\') {
            core_gset_add(&plain, x, x);
            continue;
        }
        char esc[8];
        switch (x) {
        case '"':
            strcpy(esc, "\\\"");
            break;
        case '\\':
            strcpy(esc, "\\\\");
            break;
        case '\n':
            strcpy(esc, "\\n");
            break;
        case '\t':
            strcpy(esc, "\\t");
            break;
        case '\r':
            strcpy(esc, "\\r");
            break;
        case '\b':
            strcpy(esc, "\\b");
            break;
        case '\f':
            strcpy(esc, "\\f");
            break;
        default:
            snprintf(esc, sizeof esc, "\\u%04x", x);
            break;
        }
        alt(c, r);
        lit(c, r, esc);
        any = true;
    }
    if (plain.w[0] | plain.w[1]) {
        alt(c, r);
        core_gbuild_set(c->b, r, &plain);
        any = true;
    }
    if (neg) {
        alt(c, r);
        ref(c, r, utf8(c));
        any = true;
    }
    if (!any)
        return refuse(c, -EINVAL, "%s: an empty character class matches nothing",
                      c->raw ? "regex" : "pattern");
    return r;
}

static int rx_fail(rx *x, const char *what)
{
    return refuse(x->c, -EINVAL, "%s: %s at offset %d", x->c->raw ? "regex" : "pattern", what,
                  (int)(x->p - x->base));
}

/* \d \w \s (upper case: negated) into s; false for another letter */
static bool class_escape(char e, aset *s, bool *neg)
{
    *neg = e >= 'A' && e <= 'Z';
    switch (e | 0x20) {
    case 'd':
        aset_add(s, '0', '9');
        return true;
    case 'w':
        aset_add(s, '0', '9');
        aset_add(s, 'a', 'z');
        aset_add(s, 'A', 'Z');
        aset_add(s, '_', '_');
        return true;
    case 's':
        aset_add(s, ' ', ' ');
        aset_add(s, '\t', '\r');
        return true;
    default:
        return false;
    }
}

/* The character an escape stands for (after the backslash), or -1. Advances x->p past it. */
static int char_escape(rx *x)
{
    char e = *x->p++;
    switch (e) {
    case 'n':
        return '\n';
    case 't':
        return '\t';
    case 'r':
        return '\r';
    case 'f':
        return '\f';
    case 'v':
        return '\v';
    case '0':
        return 0;
    case 'x': {
        unsigned v = 0;
        for (int i = 0; i < 2; i++, x->p++) {
            char h = x->p < x->end ? *x->p : 0;
            if (!((h >= '0' && h <= '9') || ((h | 0x20) >= 'a' && (h | 0x20) <= 'f')))
                return -1;
            v = v * 16 + (unsigned)(h <= '9' ? h - '0' : (h | 0x20) - 'a' + 10);
        }
        return v < 128 ? (int)v : -1;
    }
    default:
        if ((e >= 'a' && e <= 'z') || (e >= 'A' && e <= 'Z') || (e >= '0' && e <= '9'))
            return -1; /* \b, \B, back references, \p{...}: not in the subset */
        return (unsigned char)e < 128 ? (unsigned char)e : -1;
    }
}

static int rx_class(rx *x)
{
    aset s = {{0}};
    bool neg = x->p < x->end && *x->p == '^';
    x->p += neg;
    bool first = true;
    while (x->p < x->end && (*x->p != ']' || first)) {
        first = false;
        int lo;
        if (*x->p == '\\') {
            x->p++;
            if (x->p >= x->end)
                return rx_fail(x, "a class ends with a backslash");
            aset t = {{0}};
            bool tneg;
            if (class_escape(*x->p, &t, &tneg)) {
                if (tneg)
                    return rx_fail(x, "a negated escape inside a class is not supported");
                s.w[0] |= t.w[0];
                s.w[1] |= t.w[1];
                x->p++;
                continue;
            }
            if ((lo = char_escape(x)) < 0)
                return rx_fail(x, "unsupported escape in a class");
        } else if ((unsigned char)*x->p >= 128) {
            return rx_fail(x, "non-ASCII characters in a class are not supported");
        } else {
            lo = (unsigned char)*x->p++;
        }
        int hi = lo;
        if (x->p + 1 < x->end && *x->p == '-' && x->p[1] != ']') {
            x->p++;
            if (*x->p == '\\') {
                x->p++;
                hi = char_escape(x);
            } else {
                hi = (unsigned char)*x->p < 128 ? (unsigned char)*x->p++ : -1;
            }
            if (hi < lo)
                return rx_fail(x, "a bad range in a class");
        }
        aset_add(&s, (unsigned)lo, (unsigned)hi);
    }
    if (x->p >= x->end)
        return rx_fail(x, "an unterminated class");
    x->p++;
    return class_rule(x->c, s, neg);
}

static int rx_alt(rx *x, int depth);

static int rx_atom(rx *x, int depth)
{
    sc *c = x->c;
    char h = *x->p;
    aset s = {{0}};
    switch (h) {
    case '(': {
        x->p++;
        if (x->p < x->end && *x->p == '?') {
            if (x->p + 1 < x->end && x->p[1] == ':')
                x->p += 2;
            else
                return rx_fail(x, "lookarounds and named groups are not supported");
        }
        int r = rx_alt(x, depth + 1);
        if (r < 0)
            return r;
        if (x->p >= x->end || *x->p != ')')
            return rx_fail(x, "a group without ')'");
        x->p++;
        return r;
    }
    case '[':
        x->p++;
        return rx_class(x);
    case '.':
        x->p++;
        aset_add(&s, '\n', '\n');
        aset_add(&s, '\r', '\r');
        return class_rule(c, s, true);
    case '\\': {
        x->p++;
        if (x->p >= x->end)
            return rx_fail(x, "a pattern ends with a backslash");
        bool neg;
        if (class_escape(*x->p, &s, &neg)) {
            x->p++;
            return class_rule(c, s, neg);
        }
        int v = char_escape(x);
        if (v < 0)
            return rx_fail(x, "unsupported escape");
        aset_add(&s, (unsigned)v, (unsigned)v);
        return class_rule(c, s, false);
    }
    case '*':
    case '+':
    case '?':
    case '{':
        return rx_fail(x, "nothing to repeat");
    case '^':
    case '$':
        return rx_fail(x, "'^' and '$' are supported at the ends only");
    default:
        break;
    }
    unsigned char u = (unsigned char)h;
    if (u < 128) {
        x->p++;
        aset_add(&s, u, u);
        return class_rule(c, s, false);
    }
    int n = u >= 0xF0   ? 4
            : u >= 0xE0 ? 3
            : u >= 0xC0 ? 2
                        : 1; /* the request's text is valid UTF-8 */
    if (x->p + n > x->end)
        n = (int)(x->end - x->p);
    char buf[5] = {0};
    memcpy(buf, x->p, (size_t)n);
    x->p += n;
    int r = rule(c);
    alt(c, r);
    lit(c, r, buf);
    return r;
}

/* A quantifier after an atom: sets min and max (-1: none); 0 when there is none, -1 on error. */
static int rx_quant(rx *x, long *min, long *max)
{
    if (x->p >= x->end)
        return 0;
    switch (*x->p) {
    case '*':
        *min = 0, *max = -1;
        break;
    case '+':
        *min = 1, *max = -1;
        break;
    case '?':
        *min = 0, *max = 1;
        break;
    case '{': {
        char *e;
        const char *q = x->p + 1;
        if (*q < '0' || *q > '9')
            return rx_fail(x, "a bad {n,m} quantifier");
        *min = strtol(q, &e, 10);
        *max = *min;
        if (*e == ',') {
            if (e[1] == '}') {
                *max = -1;
                e++;
            } else {
                if (e[1] < '0' || e[1] > '9')
                    return rx_fail(x, "a bad {n,m} quantifier");
                *max = strtol(e + 1, &e, 10);
            }
        }
        if (*e != '}' || (*max >= 0 && *max < *min))
            return rx_fail(x, "a bad {n,m} quantifier");
        if (*min > SRV_SCHEMA_REPEAT_MAX || *max > SRV_SCHEMA_REPEAT_MAX)
            return rx_fail(x, "a repetition bound over 1000");
        x->p = e;
        break;
    }
    default:
        return 0;
    }
    x->p++;
    if (x->p < x->end && *x->p == '?') /* lazy: the same set of strings */
        x->p++;
    return 1;
}

static int rx_alt(rx *x, int depth)
{
    sc *c = x->c;
    if (depth > 64)
        return rx_fail(x, "groups nested too deep");
    int r = rule(c);
    for (;;) {
        alt(c, r);
        while (x->p < x->end && *x->p != '|' && *x->p != ')') {
            int a = rx_atom(x, depth);
            if (a < 0)
                return a;
            long min = 0, max = 0;
            int q = rx_quant(x, &min, &max);
            if (q < 0)
                return q;
            ref(c, r, q ? rep(c, a, min, max) : a);
            if (c->rc)
                return -1;
        }
        if (x->p >= x->end || *x->p != '|')
            return r;
        x->p++;
    }
}

/* The content rule of a string matching pattern re (unanchored unless ^ / $ say so); in raw
 * mode, the text matching re whole (anchored whether or not ^ / $ say so). */
static int pattern(sc *c, const char *re)
{
    size_t n = strlen(re);
    bool start = n && re[0] == '^', end = false;
    if (n > (size_t)start && re[n - 1] == '$') {
        size_t bs = 0; /* an escaped '$' is a literal */
        while (bs + 2 <= n && re[n - 2 - bs] == '\\')
            bs++;
        end = bs % 2 == 0;
    }
    rx x = {c, re, re + start, re + n - end};
    int body = rx_alt(&x, 0);
    if (body < 0)
        return -1;
    if (x.p != x.end)
        return rx_fail(&x, "an unmatched ')'");
    if (c->raw)
        return body;
    int any = rep(c, ch(c), 0, -1), r = rule(c);
    alt(c, r);
    if (!start)
        ref(c, r, any);
    ref(c, r, body);
    if (!end)
        ref(c, r, any);
    return r;
}

/* --- schemas ------------------------------------------------------------------------------------
 */

static const char *const annotations[] = {"title",    "description", "default",  "examples",
                                          "$schema",  "$id",         "$comment", "deprecated",
                                          "readOnly", "writeOnly",   "$defs",    "definitions"};

static const char *const keywords[] = {"type",
                                       "enum",
                                       "const",
                                       "anyOf",
                                       "allOf",
                                       "$ref",
                                       "properties",
                                       "required",
                                       "additionalProperties",
                                       "items",
                                       "minItems",
                                       "maxItems",
                                       "minLength",
                                       "maxLength",
                                       "pattern",
                                       "format",
                                       "minimum",
                                       "maximum",
                                       "exclusiveMinimum",
                                       "exclusiveMaximum",
                                       "uniqueItems"};

static bool in_list(const char *k, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(k, list[i]))
            return true;
    return false;
}

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

static int schema(sc *c, const cJSON *s, const char *path);

/* The node "$ref" names: "#" or a JSON pointer into the request's schema. */
static const cJSON *resolve(sc *c, const char *refstr, const char *path)
{
    if (refstr[0] != '#' || (refstr[1] && refstr[1] != '/')) {
        refuse(c, -EINVAL,
               "$ref '%.80s' at %s: only references inside the schema (#/...) are "
               "supported",
               refstr, path);
        return NULL;
    }
    const cJSON *n = c->root;
    const char *p = refstr + 1;
    while (*p == '/' && n) {
        p++;
        char tok[256];
        size_t k = 0;
        for (; *p && *p != '/'; p++) {
            char ch_ = *p;
            if (ch_ == '~' && (p[1] == '0' || p[1] == '1'))
                ch_ = *++p == '0' ? '~' : '/';
            if (k + 1 < sizeof tok)
                tok[k++] = ch_;
        }
        tok[k] = 0;
        if (cJSON_IsArray(n)) {
            char *e;
            long i = strtol(tok, &e, 10);
            n = (*tok && !*e && i >= 0) ? cJSON_GetArrayItem(n, (int)i) : NULL;
        } else {
            n = cJSON_IsObject(n) ? cJSON_GetObjectItemCaseSensitive(n, tok) : NULL;
        }
    }
    if (!n)
        refuse(c, -EINVAL, "$ref '%.80s' at %s: no such definition", refstr, path);
    return n;
}

static int ref_rule(sc *c, const cJSON *target, const char *refstr)
{
    for (size_t i = 0; i < c->n_memo; i++)
        if (c->memo[i].node == target)
            return c->memo[i].rule;
    int r = rule(c);
    if (r < 0)
        return r;
    if (core_grow(&c->memo, &c->cap_memo, c->n_memo + 1, sizeof *c->memo))
        return refuse(c, -ENOMEM, "out of memory");
    c->memo[c->n_memo++] = (memo){target, r};
    char path[PATH_BYTES];
    snprintf(path, sizeof path, "%s", refstr);
    int body = schema(c, target, path);
    if (body < 0)
        return body;
    alt(c, r);
    ref(c, r, body);
    return r;
}

static int literal_value(sc *c, int r, const cJSON *v)
{
    char *t = cJSON_PrintUnformatted(v);
    if (!t)
        return refuse(c, -ENOMEM, "out of memory");
    alt(c, r);
    lit(c, r, t);
    free(t);
    return 0;
}

/* A rule for one of an enum's values, each as cJSON writes it, as a trie (any number of values;
 * a rule of plain alternatives would hold a stack per value). */
static int enum_values(sc *c, const cJSON *v)
{
    int n = cJSON_GetArraySize(v), k = 0, r = -1;
    char **text = calloc((size_t)n, sizeof *text);
    size_t *len = calloc((size_t)n, sizeof *len);
    if (!text || !len) {
        r = refuse(c, -ENOMEM, "out of memory");
        goto out;
    }
    for (const cJSON *it = v->child; it; it = it->next, k++) {
        if (!(text[k] = cJSON_PrintUnformatted(it))) {
            r = refuse(c, -ENOMEM, "out of memory");
            goto out;
        }
        len[k] = strlen(text[k]);
    }
    if ((r = core_gbuild_one_of(c->b, (const char *const *)text, len, (size_t)k)) < 0)
        builder_failed(c, r);
out:
    for (int i = 0; text && i < k; i++)
        free(text[i]);
    free(text);
    free(len);
    return r;
}

/* Reads a non-negative integer keyword (absent: def). -1 after a refusal. */
static long count_kw(sc *c, const cJSON *s, const char *k, long def, const char *path)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(s, k);
    if (!v)
        return def;
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble != floor(v->valuedouble))
        return refuse(c, -EINVAL, "'%s' at %s must be a non-negative integer", k, path);
    if (v->valuedouble > SRV_SCHEMA_REPEAT_MAX)
        return refuse(c, -EINVAL, "'%s' at %s: %.0f is over the supported %d", k, path,
                      v->valuedouble, SRV_SCHEMA_REPEAT_MAX);
    return (long)v->valuedouble;
}

static int object_schema(sc *c, const cJSON *s, const char *path)
{
    const cJSON *props = cJSON_GetObjectItemCaseSensitive(s, "properties");
    const cJSON *req = cJSON_GetObjectItemCaseSensitive(s, "required");
    const cJSON *add = cJSON_GetObjectItemCaseSensitive(s, "additionalProperties");
    char p[PATH_BYTES];
    if (props && !cJSON_IsObject(props))
        return refuse(c, -EINVAL, "'properties' at %s must be an object", path);
    if (req && !cJSON_IsArray(req))
        return refuse(c, -EINVAL, "'required' at %s must be an array of strings", path);
    for (const cJSON *q = req ? req->child : NULL; q; q = q->next)
        if (!cJSON_IsString(q))
            return refuse(c, -EINVAL, "'required' at %s must be an array of strings", path);
    if (add && !cJSON_IsBool(add))
        return refuse(c, -EINVAL, "'additionalProperties' at %s: only true or false is supported",
                      path);
    if (!props && !req && !(add && cJSON_IsFalse(add)))
        return object_any(c);
    /* the members, in order: the properties, then required names that are not among them */
    const char *names[1024];
    const cJSON *sub[1024];
    bool must[1024];
    int n = 0;
    for (const cJSON *q = props ? props->child : NULL; q; q = q->next) {
        if (n >= 1024)
            return refuse(c, -E2BIG, "more than 1024 properties at %s", path);
        names[n] = q->string;
        sub[n] = q;
        must[n] = false;
        for (const cJSON *t = req ? req->child : NULL; t; t = t->next)
            must[n] = must[n] || !strcmp(t->valuestring, q->string);
        n++;
    }
    for (const cJSON *t = req ? req->child : NULL; t; t = t->next) {
        bool found = false;
        for (int i = 0; i < n && !found; i++)
            found = !strcmp(names[i], t->valuestring);
        if (found)
            continue;
        if (n >= 1024)
            return refuse(c, -E2BIG, "more than 1024 properties at %s", path);
        names[n] = t->valuestring;
        sub[n] = NULL;
        must[n++] = true;
    }
    /* F_i: members i.. with none written yet; S_i: members i.. after one was written */
    int f_next = rule(c), s_next = rule(c);
    alt(c, f_next);
    alt(c, s_next);
    for (int i = n - 1; i >= 0; i--) {
        snprintf(p, sizeof p, "%s/properties/%s", path, names[i]);
        int v = sub[i] ? schema(c, sub[i], p) : value_any(c);
        if (v < 0)
            return v;
        int m = rule(c), f = rule(c), sn = rule(c);
        alt(c, m);
        lit_json_string(c, m, names[i]);
        ref(c, m, ws(c));
        lit(c, m, ":");
        ref(c, m, ws(c));
        ref(c, m, v);
        alt(c, sn);
        ref(c, sn, ws(c));
        lit(c, sn, ",");
        ref(c, sn, ws(c));
        ref(c, sn, m);
        ref(c, sn, s_next);
        alt(c, f);
        ref(c, f, m);
        ref(c, f, s_next);
        if (!must[i]) {
            alt(c, sn);
            ref(c, sn, s_next);
            alt(c, f);
            ref(c, f, f_next);
        }
        f_next = f;
        s_next = sn;
    }
    int r = rule(c);
    alt(c, r);
    lit(c, r, "{");
    ref(c, r, ws(c));
    ref(c, r, f_next);
    ref(c, r, ws(c));
    lit(c, r, "}");
    return r;
}

static int array_schema(sc *c, const cJSON *s, const char *path)
{
    const cJSON *items = cJSON_GetObjectItemCaseSensitive(s, "items");
    const cJSON *uniq = cJSON_GetObjectItemCaseSensitive(s, "uniqueItems");
    if (uniq && !cJSON_IsFalse(uniq))
        return refuse(c, -EINVAL, "unsupported keyword 'uniqueItems' at %s (only false)", path);
    long min = count_kw(c, s, "minItems", 0, path), max = count_kw(c, s, "maxItems", -1, path);
    if (min < 0 || c->rc)
        return -1;
    if (max >= 0 && max < min)
        return refuse(c, -EINVAL, "maxItems < minItems at %s: nothing matches", path);
    char p[PATH_BYTES];
    snprintf(p, sizeof p, "%s/items", path);
    if (items && cJSON_IsArray(items))
        return refuse(c, -EINVAL, "'items' at %s: an array of schemas (tuples) is not supported",
                      path);
    int x = items ? schema(c, items, p) : value_any(c);
    return x < 0 ? x : array_of(c, x, min, max);
}

/* A calendar date: years 0001-9999, each month's days, February 29 in leap years only (what
 * Python's date.fromisoformat, behind jsonschema's "date" check, accepts). */
#define RE_DATE                                                                                    \
    "(([1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])-((0[13578]|1[02])-(0[1-9]|[12][0-9]|"   \
    "3[01])|(0[469]|11)-(0[1-9]|[12][0-9]|30)|02-(0[1-9]|1[0-9]|2[0-8]))|([0-9]{2}(0[48]|"         \
    "[2468][048]|[13579][26])|(0[48]|[2468][048]|[13579][26])00)-02-29)"
#define RE_TIME                                                                                    \
    "([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9]" \
    ")"

static const struct {
    const char *name, *re;
} formats[] = {
    {"date", "^" RE_DATE "$"},
    {"time", "^" RE_TIME "$"},
    {"date-time", "^" RE_DATE "T" RE_TIME "$"},
    {"uuid", "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"},
    {"email", "^[a-zA-Z0-9._%+-]{1,64}@[a-zA-Z0-9-]{1,63}(\\.[a-zA-Z0-9-]{1,63}){0,8}\\.[a-zA-Z]"
              "{2,24}$"},
};

static int string_schema(sc *c, const cJSON *s, const char *path)
{
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(s, "pattern");
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(s, "format");
    long min = count_kw(c, s, "minLength", 0, path), max = count_kw(c, s, "maxLength", -1, path);
    if (min < 0 || c->rc)
        return -1;
    if (max >= 0 && max < min)
        return refuse(c, -EINVAL, "maxLength < minLength at %s: nothing matches", path);
    bool bounded = min > 0 || max >= 0;
    if ((pat || fmt) && bounded)
        return refuse(c, -EINVAL,
                      "minLength/maxLength together with pattern or format at %s "
                      "are not supported",
                      path);
    if (pat && fmt)
        return refuse(c, -EINVAL, "pattern together with format at %s is not supported", path);
    if (pat) {
        if (!cJSON_IsString(pat))
            return refuse(c, -EINVAL, "'pattern' at %s must be a string", path);
        int body = pattern(c, pat->valuestring);
        return body < 0 ? body : quoted(c, body);
    }
    if (fmt) {
        for (size_t i = 0; cJSON_IsString(fmt) && i < N_OF(formats); i++)
            if (!strcmp(fmt->valuestring, formats[i].name)) {
                int body = pattern(c, formats[i].re);
                return body < 0 ? body : quoted(c, body);
            }
        return refuse(c, -EINVAL,
                      "unsupported keyword value 'format': '%.40s' at %s "
                      "(supported: date, time, date-time, uuid, email)",
                      cJSON_IsString(fmt) ? fmt->valuestring : "?", path);
    }
    return bounded ? quoted(c, rep(c, ch(c), min, max)) : str_any(c);
}

static const char *const bound_keys[] = {"minimum", "exclusiveMinimum", "maximum",
                                         "exclusiveMaximum"};

/* Bound keyword i of s into *x: 1, 0 when absent, -1 (refused) when it is not a finite number. */
static int bound_of(sc *c, const cJSON *s, int i, const char *path, double *x)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(s, bound_keys[i]);
    if (!v)
        return 0;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) {
        refuse(c, -EINVAL, "'%s' at %s must be a number", bound_keys[i], path);
        return -1;
    }
    *x = v->valuedouble;
    return 1;
}

/* Reads minimum/maximum/exclusive* into [lo, hi] for integers (round inward). -1 on refusal. */
static int int_bounds(sc *c, const cJSON *s, long long *lo, long long *hi, const char *path)
{
    *lo = -INT_MAG_MAX;
    *hi = INT_MAG_MAX;
    for (int i = 0; i < 4; i++) {
        double x;
        int rc = bound_of(c, s, i, path, &x);
        if (rc < 0)
            return -1;
        if (rc == 0)
            continue;
        if (x < -(double)INT_MAG_MAX)
            x = -(double)INT_MAG_MAX;
        if (x > (double)INT_MAG_MAX)
            x = (double)INT_MAG_MAX;
        long long b;
        if (i == 0)
            b = (long long)ceil(x);
        else if (i == 1)
            b = (long long)floor(x) + 1;
        else if (i == 2)
            b = (long long)floor(x);
        else
            b = (long long)ceil(x) - 1;
        if (i < 2 && b > *lo)
            *lo = b;
        if (i >= 2 && b < *hi)
            *hi = b;
    }
    if (*lo > *hi)
        return refuse(c, -EINVAL, "no integer at %s is within its minimum and maximum", path);
    return 0;
}

/* Reads minimum/maximum/exclusive* into [lo, hi] for numbers, as fixed-point counts rounded
 * inward (an exclusive bound that is exact moves in by one unit). -1 on refusal. */
static int num_bounds(sc *c, const cJSON *s, fix *lo, fix *hi, const char *path)
{
    *lo = -FIX_MAX;
    *hi = FIX_MAX;
    for (int i = 0; i < 4; i++) {
        double x;
        int rc = bound_of(c, s, i, path, &x);
        if (rc < 0)
            return -1;
        if (rc == 0)
            continue;
        bool exact, lower = i < 2;
        fix b = to_fix(x, lower, &exact);
        if (exact && i == 1)
            b++;
        if (exact && i == 3)
            b--;
        b = b > FIX_MAX ? FIX_MAX : b < -FIX_MAX ? -FIX_MAX : b;
        if (lower && b > *lo)
            *lo = b;
        if (!lower && b < *hi)
            *hi = b;
    }
    if (*lo > *hi)
        return refuse(c, -EINVAL, "no number at %s is within its minimum and maximum", path);
    return 0;
}

static int typed(sc *c, const cJSON *s, const char *t, const char *path)
{
    if (!strcmp(t, "object"))
        return object_schema(c, s, path);
    if (!strcmp(t, "array"))
        return array_schema(c, s, path);
    if (!strcmp(t, "string"))
        return string_schema(c, s, path);
    if (!strcmp(t, "integer") || !strcmp(t, "number")) {
        bool integer = t[0] == 'i';
        bool bounded = false;
        for (int i = 0; i < 4; i++)
            bounded = bounded || cJSON_GetObjectItemCaseSensitive(s, bound_keys[i]);
        if (!bounded)
            return integer ? int_any(c) : num_any(c);
        if (integer) {
            long long lo, hi;
            return int_bounds(c, s, &lo, &hi, path) < 0 ? -1 : int_range(c, lo, hi);
        }
        fix lo, hi;
        return num_bounds(c, s, &lo, &hi, path) < 0 ? -1 : number_range(c, lo, hi);
    }
    int r = rule(c);
    if (!strcmp(t, "boolean")) {
        alt(c, r);
        lit(c, r, "true");
        alt(c, r);
        lit(c, r, "false");
        return r;
    }
    if (!strcmp(t, "null")) {
        alt(c, r);
        lit(c, r, "null");
        return r;
    }
    return refuse(c, -EINVAL, "unknown type '%.40s' at %s", t, path);
}

/* The type a schema without "type" has, from its keywords; NULL: any value. */
static const char *implied_type(const cJSON *s)
{
    static const struct {
        const char *kw, *type;
    } by[] = {{"properties", "object"},
              {"required", "object"},
              {"additionalProperties", "object"},
              {"items", "array"},
              {"minItems", "array"},
              {"maxItems", "array"},
              {"minLength", "string"},
              {"maxLength", "string"},
              {"pattern", "string"},
              {"format", "string"},
              {"minimum", "number"},
              {"maximum", "number"},
              {"exclusiveMinimum", "number"},
              {"exclusiveMaximum", "number"}};
    for (size_t i = 0; i < N_OF(by); i++)
        if (cJSON_GetObjectItemCaseSensitive(s, by[i].kw))
            return by[i].type;
    return NULL;
}

static int schema(sc *c, const cJSON *s, const char *path)
{
    if (c->rc)
        return -1;
    if (++c->nodes > SRV_SCHEMA_NODES_MAX)
        return refuse(c, -E2BIG,
                      "the schema has more than %d subschemas (counting each $ref "
                      "use)",
                      SRV_SCHEMA_NODES_MAX);
    if (core_gbuild_size(c->b) > CORE_GRAMMAR_ELEMS_MAX)
        return refuse(c, -E2BIG, "the schema is too large");
    if (cJSON_IsTrue(s))
        return value_any(c);
    if (cJSON_IsFalse(s))
        return refuse(c, -EINVAL, "the schema at %s is false: nothing matches", path);
    if (!cJSON_IsObject(s))
        return refuse(c, -EINVAL, "the schema at %s must be an object or a boolean", path);
    int constraining = 0;
    for (const cJSON *k = s->child; k; k = k->next) {
        if (in_list(k->string, annotations, N_OF(annotations)))
            continue;
        if (!in_list(k->string, keywords, N_OF(keywords)))
            return refuse(c, -EINVAL, "unsupported keyword '%.60s' at %s", k->string, path);
        constraining++;
    }
    char p[PATH_BYTES];
    const cJSON *v;
    static const char *const alone[] = {"$ref", "anyOf", "allOf", "enum", "const"};
    for (size_t i = 0; i < N_OF(alone); i++) {
        if (!(v = cJSON_GetObjectItemCaseSensitive(s, alone[i])))
            continue;
        /* "type" beside enum/const is only a restatement; anything else is refused */
        int extra = constraining - 1 - (i >= 3 && cJSON_GetObjectItemCaseSensitive(s, "type"));
        if (extra > 0)
            return refuse(c, -EINVAL,
                          "keywords beside '%s' at %s are not supported (wrap them "
                          "in allOf or move them inside)",
                          alone[i], path);
        if (i == 0) {
            if (!cJSON_IsString(v))
                return refuse(c, -EINVAL, "'$ref' at %s must be a string", path);
            const cJSON *t = resolve(c, v->valuestring, path);
            return t ? ref_rule(c, t, v->valuestring) : -1;
        }
        if (i == 4) {
            int r = rule(c);
            return literal_value(c, r, v) < 0 ? -1 : r;
        }
        if (!cJSON_IsArray(v) || !v->child)
            return refuse(c, -EINVAL, "'%s' at %s must be a non-empty array", alone[i], path);
        if (i == 2 && v->child->next)
            return refuse(c, -EINVAL, "'allOf' at %s: only one member is supported", path);
        if (i == 3)
            return enum_values(c, v);
        int r = rule(c), n = 0;
        for (const cJSON *it = v->child; it; it = it->next, n++) {
            snprintf(p, sizeof p, "%s/%s/%d", path, alone[i], n);
            int sub = schema(c, it, p);
            if (sub < 0)
                return -1;
            alt(c, r);
            ref(c, r, sub);
        }
        return r;
    }
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(s, "type");
    if (!type) {
        const char *t = implied_type(s);
        return t ? typed(c, s, t, path) : value_any(c);
    }
    if (cJSON_IsString(type))
        return typed(c, s, type->valuestring, path);
    if (!cJSON_IsArray(type) || !type->child)
        return refuse(c, -EINVAL, "'type' at %s must be a string or a non-empty array", path);
    int r = rule(c);
    for (const cJSON *t = type->child; t; t = t->next) {
        if (!cJSON_IsString(t))
            return refuse(c, -EINVAL, "'type' at %s must list strings", path);
        int sub = typed(c, s, t->valuestring, path);
        if (sub < 0)
            return -1;
        alt(c, r);
        ref(c, r, sub);
    }
    return r;
}

/* Starts compiling what ("schema", "regex", "choice list"; raw: over raw text) into *out (NULL
 * until finish). 0, or -ENOMEM. */
static int sc_open(sc *c, const cJSON *root, const char *what, bool raw, core_grammar **out,
                   char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    c->root = root;
    c->err = err;
    c->errlen = errlen;
    c->ws = c->ch = c->str = c->num = c->value = c->object = c->array = c->utf8 = c->digit =
        c->frac = -1;
    c->what = what;
    c->raw = raw;
    if (err && errlen)
        err[0] = 0;
    *out = NULL;
    return (c->b = core_gbuild_new()) ? 0 : -ENOMEM;
}

static int finish(sc *c, int root, core_grammar **out)
{
    core_grammar *g = NULL;
    if (!c->rc && root >= 0) {
        char e[160];
        g = core_gbuild_finish(c->b, root, e, sizeof e);
        if (!g)
            refuse(c,
                   strstr(e, "large")    ? -E2BIG
                   : strstr(e, "memory") ? -ENOMEM
                                         : -EINVAL,
                   "%s%s%s", strstr(e, "large") ? "the " : e, strstr(e, "large") ? c->what : "",
                   strstr(e, "large") ? " is too large" : "");
    }
    if (g && !core_grammar_viable(g)) {
        core_grammar_free(g);
        g = NULL;
        if (c->raw)
            refuse(c, -EINVAL, "the %s matches nothing", c->what);
        else
            refuse(c, -EINVAL, "the schema matches nothing (a $ref that only refers to itself?)");
    }
    core_gbuild_free(c->b);
    free(c->memo);
    if (!g && !c->rc)
        refuse(c, -EINVAL, "the %s could not be compiled", c->what);
    *out = g;
    return g ? 0 : c->rc;
}

int srv_schema_compile(const cJSON *s, core_grammar **out, char *err, size_t errlen)
{
    sc c;
    if (sc_open(&c, s, "schema", false, out, err, errlen))
        return -ENOMEM;
    return finish(&c, s ? schema(&c, s, "#") : object_any(&c), out);
}

int srv_regex_compile(const char *re, core_grammar **out, char *err, size_t errlen)
{
    sc c;
    if (sc_open(&c, NULL, "schema", false, out, err, errlen))
        return -ENOMEM;
    return finish(&c, pattern(&c, re), out);
}

int srv_regex_text_compile(const char *re, core_grammar **out, char *err, size_t errlen)
{
    sc c;
    if (sc_open(&c, NULL, "regex", true, out, err, errlen))
        return -ENOMEM;
    return finish(&c, pattern(&c, re), out);
}

int srv_choice_compile(const char *const *choices, int n, core_grammar **out, char *err,
                       size_t errlen)
{
    sc c;
    if (sc_open(&c, NULL, "choice list", true, out, err, errlen))
        return -ENOMEM;
    size_t *len = malloc((n > 0 ? (size_t)n : 1) * sizeof *len);
    int r = len ? -1 : builder_failed(&c, -ENOMEM);
    for (int i = 0; len && i < n; i++)
        len[i] = strlen(choices[i]);
    if (len && n > 0 && (r = core_gbuild_one_of(c.b, choices, len, (size_t)n)) < 0)
        builder_failed(&c, r);
    free(len);
    return finish(&c, r, out);
}
