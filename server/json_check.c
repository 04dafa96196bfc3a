/* The strict JSON check in front of cJSON and the UTF-8 check (server/json_check.h).
 *
 * A recursive descent over the raw bytes that copies what it accepts: one pass checks the
 * grammar, bounds the nesting (so the recursion is bounded too) and writes the compact copy with
 * the \u0000 and 0xFF substitutions the header describes.
 */
#include "server/json_check.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

/* Table 3-7 of the Unicode standard: the second byte's range depends on the first (that is what
 * excludes overlong forms, surrogates and code points past U+10FFFF), the others are 80..BF. */
size_t srv_utf8_check(const void *p, size_t n)
{
    const unsigned char *s = p;
    size_t i = 0;
    while (i < n) {
        unsigned char b = s[i], lo = 0x80, hi = 0xBF;
        size_t k;
        if (b < 0x80) {
            i++;
            continue;
        }
        if (b >= 0xC2 && b <= 0xDF) {
            k = 1;
        } else if (b >= 0xE0 && b <= 0xEF) {
            k = 2;
            lo = b == 0xE0 ? 0xA0 : 0x80;
            hi = b == 0xED ? 0x9F : 0xBF;
        } else if (b >= 0xF0 && b <= 0xF4) {
            k = 3;
            lo = b == 0xF0 ? 0x90 : 0x80;
            hi = b == 0xF4 ? 0x8F : 0xBF;
        } else {
            return i;
        }
        if (n - i <= k || s[i + 1] < lo || s[i + 1] > hi)
            return i;
        for (size_t j = 2; j <= k; j++)
            if ((s[i + j] & 0xC0) != 0x80)
                return i;
        i += k + 1;
    }
    return n;
}

typedef struct jscan {
    const unsigned char *s;
    size_t n, i;
    unsigned char *out; /* the compact copy; never longer than the input */
    size_t o;
    char *err;
    size_t errlen;
} jscan;

__attribute__((format(printf, 3, 4))) static int jfail(const jscan *j, int rc, const char *fmt, ...)
{
    if (j->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(j->err, j->errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}

static int scan_value(jscan *j, int depth);

static void skip_ws(jscan *j)
{
    while (j->i < j->n &&
           (j->s[j->i] == ' ' || j->s[j->i] == '\t' || j->s[j->i] == '\n' || j->s[j->i] == '\r'))
        j->i++;
}

static int peek(const jscan *j)
{
    return j->i < j->n ? j->s[j->i] : -1;
}

/* Copies n input bytes to the output. */
static void take(jscan *j, size_t n)
{
    memcpy(j->out + j->o, j->s + j->i, n);
    j->o += n;
    j->i += n;
}

static int expected(const jscan *j, const char *what)
{
    if (j->i >= j->n)
        return jfail(j, -EINVAL, "invalid JSON: the body ends at byte %zu where %s was expected",
                     j->n, what);
    return jfail(j, -EINVAL, "invalid JSON at byte %zu: expected %s", j->i, what);
}

static int hex4(const jscan *j, size_t at, unsigned *u)
{
    if (at > j->n || j->n - at < 4)
        return -1;
    *u = 0;
    for (int k = 0; k < 4; k++) {
        int ch = j->s[at + (size_t)k], v;
        if (ch >= '0' && ch <= '9')
            v = ch - '0';
        else if (ch >= 'a' && ch <= 'f')
            v = ch - 'a' + 10;
        else if (ch >= 'A' && ch <= 'F')
            v = ch - 'A' + 10;
        else
            return -1;
        *u = *u << 4 | (unsigned)v;
    }
    return 0;
}

/* An escape at j->i (the backslash): copied, except \u0000 which becomes SRV_JSON_NUL. */
static int scan_escape(jscan *j)
{
    size_t at = j->i;
    int e = j->i + 1 < j->n ? j->s[j->i + 1] : -1;
    if (e == -1)
        return jfail(j, -EINVAL, "invalid JSON: the body ends inside a string at byte %zu", j->n);
    if (e != 0 && strchr("\"\\/bfnrt", e)) {
        take(j, 2);
        return 0;
    }
    unsigned u, u2;
    if (e != 'u' || hex4(j, at + 2, &u))
        return jfail(j, -EINVAL, "invalid JSON at byte %zu: invalid escape sequence", at);
    if (u == 0) {
        j->out[j->o++] = SRV_JSON_NUL;
        j->i += 6;
        return 0;
    }
    if (u >= 0xDC00 && u <= 0xDFFF)
        return jfail(j, -EINVAL, "invalid JSON at byte %zu: unpaired UTF-16 surrogate \\u%04x", at,
                     u);
    if (u < 0xD800 || u > 0xDBFF) {
        take(j, 6);
        return 0;
    }
    if (j->n - at < 12 || j->s[at + 6] != '\\' || j->s[at + 7] != 'u' || hex4(j, at + 8, &u2) ||
        u2 < 0xDC00 || u2 > 0xDFFF)
        return jfail(j, -EINVAL, "invalid JSON at byte %zu: unpaired UTF-16 surrogate \\u%04x", at,
                     u);
    take(j, 12);
    return 0;
}

static int scan_string(jscan *j)
{
    take(j, 1); /* the quote */
    for (;;) {
        if (j->i >= j->n)
            return jfail(j, -EINVAL, "invalid JSON: the body ends inside a string at byte %zu",
                         j->n);
        unsigned char b = j->s[j->i];
        if (b == '"') {
            take(j, 1);
            return 0;
        }
        if (b < 0x20)
            return jfail(j, -EINVAL,
                         "invalid JSON at byte %zu: control character 0x%02x must be escaped in a "
                         "string",
                         j->i, b);
        if (b == '\\') {
            int rc = scan_escape(j);
            if (rc)
                return rc;
        } else if (b == 0xFF) {
            j->out[j->o++] = SRV_JSON_BAD;
            j->i++;
        } else {
            take(j, 1);
        }
    }
}

static int digits(jscan *j)
{
    size_t start = j->i;
    while (j->i < j->n && j->s[j->i] >= '0' && j->s[j->i] <= '9')
        j->i++;
    return j->i > start;
}

static int scan_number(jscan *j)
{
    size_t start = j->i;
    if (peek(j) == '-')
        j->i++;
    if (peek(j) == '0') {
        j->i++;
        if (peek(j) >= '0' && peek(j) <= '9')
            return jfail(j, -EINVAL, "invalid JSON at byte %zu: number with a leading zero", start);
    } else if (!digits(j)) {
        return jfail(j, -EINVAL, "invalid JSON at byte %zu: invalid number", start);
    }
    if (peek(j) == '.') {
        j->i++;
        if (!digits(j))
            return jfail(j, -EINVAL, "invalid JSON at byte %zu: invalid number", start);
    }
    if (peek(j) == 'e' || peek(j) == 'E') {
        j->i++;
        if (peek(j) == '+' || peek(j) == '-')
            j->i++;
        if (!digits(j))
            return jfail(j, -EINVAL, "invalid JSON at byte %zu: invalid number", start);
    }
    size_t n = j->i - start;
    j->i = start;
    take(j, n);
    return 0;
}

static int scan_literal(jscan *j, const char *word)
{
    size_t n = strlen(word);
    if (j->n - j->i < n || memcmp(j->s + j->i, word, n) != 0)
        return expected(j, "a value");
    take(j, n);
    return 0;
}

/* An array or an object, from its opening bracket at j->i. */
static int scan_container(jscan *j, int depth)
{
    bool obj = peek(j) == '{';
    int close = obj ? '}' : ']', rc;
    take(j, 1);
    skip_ws(j);
    if (peek(j) == close) {
        take(j, 1);
        return 0;
    }
    for (;;) {
        skip_ws(j);
        if (obj && peek(j) != '"')
            return expected(j, "a string key");
        if (obj && (rc = scan_string(j)))
            return rc;
        skip_ws(j);
        if (obj && peek(j) != ':')
            return expected(j, "':'");
        if (obj)
            take(j, 1);
        if ((rc = scan_value(j, depth)))
            return rc;
        skip_ws(j);
        if (peek(j) == close) {
            take(j, 1);
            return 0;
        }
        if (peek(j) != ',')
            return expected(j, obj ? "',' or '}'" : "',' or ']'");
        take(j, 1);
    }
}

static int scan_value(jscan *j, int depth)
{
    skip_ws(j);
    int ch = peek(j);
    if ((ch == '{' || ch == '[') && depth >= SRV_JSON_DEPTH_MAX)
        return jfail(j, -E2BIG, "nested deeper than %d levels at byte %zu", SRV_JSON_DEPTH_MAX,
                     j->i);
    switch (ch) {
    case '{':
    case '[':
        return scan_container(j, depth + 1);
    case '"':
        return scan_string(j);
    case 't':
        return scan_literal(j, "true");
    case 'f':
        return scan_literal(j, "false");
    case 'n':
        return scan_literal(j, "null");
    default:
        if (ch == '-' || (ch >= '0' && ch <= '9'))
            return scan_number(j);
        return expected(j, "a value");
    }
}

/* One value, then nothing but whitespace. */
int srv_json_check(const char *body, size_t len, char *out, size_t *outlen, char *err,
                   size_t errlen)
{
    jscan j = {.s = (const unsigned char *)body,
               .n = len,
               .out = (unsigned char *)out,
               .err = err,
               .errlen = errlen};
    *outlen = 0;
    if (errlen)
        err[0] = 0;
    int rc = scan_value(&j, 0);
    if (rc)
        return rc;
    skip_ws(&j);
    if (j.i < j.n)
        return jfail(&j, -EINVAL, "invalid JSON at byte %zu: unexpected data after the value", j.i);
    out[j.o] = 0;
    *outlen = j.o;
    return 0;
}
