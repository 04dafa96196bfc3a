/* libFuzzer target: the JSON string writer (srv_buf_json_str, server/strbuf.c), the one place
 * where bytes a client chose but no parser vetted reach an answer: the URL in the 404 and 405
 * messages and in "the model '...' does not exist" (libmicrohttpd hands the URL over
 * percent-decoded, so any byte but NUL), cut mid-character by the message buffers.
 *
 * Aborts unless the output is one JSON string that passes srv_json_check, valid UTF-8 without
 * raw control characters or U+2028/U+2029, and decodes (through srv_json_check's copy, where
 * \u0000 becomes SRV_JSON_NUL, then cJSON) to the input with every byte that does not start a
 * valid UTF-8 sequence replaced by U+FFFD. srv_buf_json_cstr must write the same as
 * srv_buf_json_str for the input up to its first NUL. */
#include <cJSON.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/json_check.h"
#include "server/strbuf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The length of the valid UTF-8 sequence at s[0..n), 0 if none: decoded, then checked for
 * overlong forms, surrogates and code points past U+10FFFF (independent of both the writer's and
 * srv_utf8_check's tables). */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned b = s[0], need, cp;
    if (b < 0x80)
        return 1;
    if ((b & 0xE0) == 0xC0)
        need = 1, cp = b & 0x1F;
    else if ((b & 0xF0) == 0xE0)
        need = 2, cp = b & 0x0F;
    else if ((b & 0xF8) == 0xF0)
        need = 3, cp = b & 0x07;
    else
        return 0;
    if (n <= need)
        return 0;
    for (unsigned k = 1; k <= need; k++) {
        if ((s[k] & 0xC0) != 0x80)
            return 0;
        cp = cp << 6 | (s[k] & 0x3F);
    }
    static const unsigned min[] = {0, 0x80, 0x800, 0x10000};
    if (cp < min[need] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return need + 1;
}

/* What the string must decode to (see the top); *len bytes, caller frees. */
static unsigned char *expected(const unsigned char *s, size_t n, size_t *len)
{
    unsigned char *e = malloc(3 * n + 1);
    if (!e)
        abort();
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        size_t k = utf8_len(s + i, n - i);
        if (k == 0) {
            e[o++] = 0xEF; /* U+FFFD */
            e[o++] = 0xBF;
            e[o++] = 0xBD;
            i++;
        } else if (s[i] == 0) {
            e[o++] = SRV_JSON_NUL;
            i++;
        } else {
            memcpy(e + o, s + i, k);
            o += k;
            i += k;
        }
    }
    *len = o;
    return e;
}

static void check_output(const srv_buf *b, const uint8_t *data, size_t size)
{
    const unsigned char *o = (const unsigned char *)b->data;
    if (!srv_buf_ok(b) || !o || b->len < 2 || o[0] != '"' || o[b->len - 1] != '"')
        abort();
    if (srv_utf8_check(o, b->len) != b->len)
        abort();
    for (size_t i = 0; i < b->len; i++) {
        if (o[i] < 0x20)
            abort();
        if (i + 2 < b->len && o[i] == 0xE2 && o[i + 1] == 0x80 &&
            (o[i + 2] == 0xA8 || o[i + 2] == 0xA9))
            abort();
    }
    char *copy = malloc(b->len + 1), msg[160];
    size_t n;
    if (!copy)
        abort();
    if (srv_json_check(b->data, b->len, copy, &n, msg, sizeof msg))
        abort();
    cJSON *v = cJSON_ParseWithLength(copy, n);
    if (!cJSON_IsString(v))
        abort();
    size_t want_len;
    unsigned char *want = expected(data, size, &want_len);
    if (strlen(v->valuestring) != want_len || memcmp(v->valuestring, want, want_len) != 0)
        abort();
    free(want);
    cJSON_Delete(v);
    free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    srv_buf a, c;
    srv_buf_init(&a);
    srv_buf_init(&c);
    srv_buf_json_str(&a, (const char *)data, size);
    check_output(&a, data, size);

    size_t z = size;
    const uint8_t *nul = memchr(data, 0, size);
    if (nul)
        z = (size_t)(nul - data);
    char *s = malloc(z + 1);
    if (!s)
        abort();
    memcpy(s, data, z);
    s[z] = 0;
    srv_buf_reset(&a);
    srv_buf_json_str(&a, s, z);
    srv_buf_json_cstr(&c, s);
    if (a.len != c.len || memcmp(a.data, c.data, a.len) != 0)
        abort();
    free(s);
    srv_buf_deinit(&a);
    srv_buf_deinit(&c);
    return 0;
}
