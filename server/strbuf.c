/* Growable text buffer with JSON string escaping (server/strbuf.h). */
#include "server/strbuf.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void srv_buf_init(srv_buf *b)
{
    memset(b, 0, sizeof *b);
}

void srv_buf_deinit(srv_buf *b)
{
    if (!b)
        return;
    free(b->data);
    memset(b, 0, sizeof *b);
}

void srv_buf_reset(srv_buf *b)
{
    b->len = 0;
    b->oom = false;
    if (b->data)
        b->data[0] = 0;
}

bool srv_buf_ok(const srv_buf *b)
{
    return !b->oom;
}

/* Room for n more bytes plus the NUL; false (and oom set) when there is none to be had. */
static bool reserve(srv_buf *b, size_t n)
{
    if (b->oom)
        return false;
    if (n < b->cap - b->len && b->data)
        return true;
    if (n > SIZE_MAX / 2 - b->len - 1) {
        b->oom = true;
        return false;
    }
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len <= n)
        cap *= 2;
    char *d = realloc(b->data, cap);
    if (!d) {
        b->oom = true;
        return false;
    }
    b->data = d;
    b->cap = cap;
    return true;
}

char *srv_buf_take(srv_buf *b, size_t *len)
{
    if (b->oom || !reserve(b, 0)) {
        srv_buf_reset(b);
        return NULL;
    }
    char *d = b->data;
    d[b->len] = 0;
    if (len)
        *len = b->len;
    memset(b, 0, sizeof *b);
    return d;
}

void srv_buf_put(srv_buf *b, const void *p, size_t n)
{
    if (!reserve(b, n))
        return;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = 0;
}

void srv_buf_puts(srv_buf *b, const char *s)
{
    srv_buf_put(b, s, strlen(s));
}

void srv_buf_putc(srv_buf *b, char c)
{
    srv_buf_put(b, &c, 1);
}

void srv_buf_printf(srv_buf *b, const char *fmt, ...)
{
    char small[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->oom = true;
        return;
    }
    if ((size_t)n < sizeof small) {
        srv_buf_put(b, small, (size_t)n);
        return;
    }
    if (!reserve(b, (size_t)n))
        return;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* Length of the valid UTF-8 sequence at s[0..n) (RFC 3629), 0 when it is not one. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    if (c < 0x80)
        return 1;
    size_t k;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)
        k = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        k = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        k = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else
        return 0;
    if (n < k || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < k; i++)
        if ((s[i] & 0xC0) != 0x80)
            return 0;
    return k;
}

void srv_buf_json_str(srv_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    srv_buf_putc(b, '"');
    size_t run = 0; /* start of the bytes copied as they are */
    size_t i = 0;
    while (i < n) {
        unsigned c = u[i];
        size_t k = utf8_seq(u + i, n - i);
        bool plain = k > 0 && c >= 0x20 && c != '"' && c != '\\';
        /* U+2028 and U+2029 are valid JSON but break JavaScript consumers of the stream. */
        if (k == 3 && c == 0xE2 && u[i + 1] == 0x80 && (u[i + 2] == 0xA8 || u[i + 2] == 0xA9))
            plain = false;
        if (plain) {
            i += k;
            continue;
        }
        srv_buf_put(b, s + run, i - run);
        if (k == 0) {
            srv_buf_puts(b, "\\ufffd");
            k = 1;
        } else if (k == 3) {
            srv_buf_puts(b, u[i + 2] == 0xA8 ? "\\u2028" : "\\u2029");
        } else if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            srv_buf_put(b, e, 2);
        } else if (c == '\n') {
            srv_buf_puts(b, "\\n");
        } else if (c == '\r') {
            srv_buf_puts(b, "\\r");
        } else if (c == '\t') {
            srv_buf_puts(b, "\\t");
        } else if (c == '\b') {
            srv_buf_puts(b, "\\b");
        } else if (c == '\f') {
            srv_buf_puts(b, "\\f");
        } else {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            srv_buf_put(b, e, 6);
        }
        i += k;
        run = i;
    }
    srv_buf_put(b, s + run, n - run);
    srv_buf_putc(b, '"');
}

void srv_buf_json_cstr(srv_buf *b, const char *s)
{
    if (!s)
        srv_buf_puts(b, "null");
    else
        srv_buf_json_str(b, s, strlen(s));
}

void srv_buf_json_float(srv_buf *b, double v)
{
    if (isnan(v) || v == INFINITY)
        srv_buf_puts(b, "null");
    else if (v == -INFINITY)
        srv_buf_puts(b, "-9999.0");
    else
        srv_buf_printf(b, "%.9g", v);
}
