/* A growable byte buffer for the text the server writes: JSON bodies, SSE events, the Prometheus
 * exposition. Appends never fail visibly: running out of memory sets a sticky flag that the
 * caller checks once, when the text is complete (srv_buf_ok), so builders need no error path per
 * append. The text is always NUL-terminated.
 *
 * One buffer belongs to one thread at a time; different buffers are independent.
 */
#ifndef ADAPTREE_SERVER_STRBUF_H
#define ADAPTREE_SERVER_STRBUF_H

#include <stdbool.h>
#include <stddef.h>

typedef struct srv_buf {
    char *data; /* (cap) NUL-terminated after len bytes; NULL until the first append */
    size_t len;
    size_t cap;
    bool oom; /* an append failed: the text is incomplete */
} srv_buf;

/* A zeroed srv_buf is an empty buffer; init just zeroes it. deinit frees it (and zeroes it). */
void srv_buf_init(srv_buf *b);
void srv_buf_deinit(srv_buf *b);
/* Empties the buffer, keeping its memory and clearing oom. */
void srv_buf_reset(srv_buf *b);
/* True when no append has failed since the last reset. */
bool srv_buf_ok(const srv_buf *b);
/* Hands the text over (malloc'd, NUL-terminated, *len bytes) and leaves the buffer empty; NULL
 * when an append failed (the buffer is then reset) or nothing was appended and no memory could
 * be had for "". */
char *srv_buf_take(srv_buf *b, size_t *len);

void srv_buf_put(srv_buf *b, const void *p, size_t n);
void srv_buf_puts(srv_buf *b, const char *s);
void srv_buf_putc(srv_buf *b, char c);
void srv_buf_printf(srv_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Appends s[0..n) as a JSON string, quotes included: '"', '\\' and control characters are
 * escaped (\n, \r, \t, \b, \f, else \u00XX) and so are U+2028/U+2029; an invalid UTF-8 sequence
 * becomes U+FFFD, so the output is valid JSON whatever the input. */
void srv_buf_json_str(srv_buf *b, const char *s, size_t n);
/* The same for a NUL-terminated string; NULL appends null. */
void srv_buf_json_cstr(srv_buf *b, const char *s);
/* A float as a JSON number with enough digits to round-trip (%.9g); NaN and infinities, which
 * JSON lacks, become -9999.0 for -inf (OpenAI's convention for impossible tokens) and null
 * otherwise. */
void srv_buf_json_float(srv_buf *b, double v);

#endif
