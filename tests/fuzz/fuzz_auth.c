/* libFuzzer target: API keys (server/auth.c). The input is a flags byte, then the Authorization
 * header value, the --api-key and the --admin-key, separated by NUL bytes (missing parts are
 * empty). Flags: bit 0 the route is an admin route; bits 1-2 the header as given, the header
 * followed by the api key, by the admin key, or no header at all (so that the fuzzer reaches the
 * matching keys, which it could not guess through the constant-time comparison); bits 3-7 the
 * size of the message buffer. Strings and output buffers are heap blocks of exactly their size,
 * so reading or writing past one is an ASan report.
 *
 * Each function is compared with a plain model written here: srv_auth_bearer (also: a key it
 * returns is a substring of the header without blanks at either end, and the smallest buffer
 * that takes it is its length + 1), srv_key_equal against strlen + memcmp, srv_auth_init's
 * refusals and its zero padding, and srv_auth_check's verdict and the reason it gives. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/auth.h"
#include "tests/fuzz/fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char *concat(const char *a, const char *b)
{
    size_t na = strlen(a), nb = strlen(b);
    char *s = malloc(na + nb + 1);
    if (!s)
        abort();
    memcpy(s, a, na + 1);
    memcpy(s + na, b, nb + 1);
    return s;
}

static bool blank(char c)
{
    return c == ' ' || c == '\t';
}

static char lower(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

/* The model of srv_auth_bearer: where the key starts in h and its length, or false. */
static bool model_bearer(const char *h, const char **key, size_t *len)
{
    if (!h)
        return false;
    while (blank(*h))
        h++;
    for (int i = 0; i < 6; i++)
        if (lower(h[i]) != "bearer"[i])
            return false;
    if (!blank(h[6]))
        return false;
    h += 6;
    while (blank(*h))
        h++;
    size_t n = strlen(h);
    while (n && blank(h[n - 1]))
        n--;
    *key = h;
    *len = n;
    return n > 0;
}

/* The model of srv_key_equal. */
static bool model_equal(const char *given, const char *key, size_t key_len)
{
    return given && key_len > 0 && strlen(given) == key_len && !memcmp(given, key, key_len);
}

static bool key_ok(const char *k)
{
    size_t n = strlen(k);
    if (n > SRV_KEY_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)k[i] <= 0x20 || (unsigned char)k[i] == 0x7F)
            return false;
    return true;
}

/* What srv_auth_init would accept: k without the bytes it refuses, cut to SRV_KEY_MAX. */
static void sanitize(char *k)
{
    size_t o = 0;
    for (size_t i = 0; k[i] && o < SRV_KEY_MAX; i++)
        if ((unsigned char)k[i] > 0x20 && (unsigned char)k[i] != 0x7F)
            k[o++] = k[i];
    k[o] = 0;
}

static void check_bearer(const char *header)
{
    const char *mk = NULL;
    size_t mn = 0;
    bool want = model_bearer(header, &mk, &mn);
    /* Buffers of 1 byte, of exactly the key (too small by the NUL), of the key + 1, and the
     * size srv_auth_check uses. */
    size_t caps[] = {1, mn ? mn : 1, mn + 1, SRV_KEY_MAX + 2};
    for (size_t c = 0; c < sizeof caps / sizeof *caps; c++) {
        size_t cap = caps[c];
        char *key = malloc(cap);
        if (!key)
            abort();
        int rc = srv_auth_bearer(header, key, cap);
        bool fits = want && mn < cap;
        if (rc != (fits ? 0 : -1))
            abort();
        if (rc == 0) {
            size_t n = strnlen(key, cap);
            if (n != mn || memcmp(key, mk, mn) != 0 || !strstr(header, key) || blank(key[0]) ||
                blank(key[n - 1]))
                abort();
        }
        free(key);
    }
}

static void check_equal(const char *given, const char *key, size_t key_len)
{
    if (srv_key_equal(given, key, key_len) != model_equal(given, key, key_len))
        abort();
}

/* Configures the keys, falling back to their sanitized forms when refused. */
static void init_auth(srv_auth *a, char *api, char *admin)
{
    char err[128] = "";
    bool ok = key_ok(api) && key_ok(admin);
    int rc = srv_auth_init(a, api, admin, err, sizeof err);
    if (rc != (ok ? 0 : -EINVAL) || (rc && !err[0]))
        abort();
    if (rc) {
        sanitize(api);
        sanitize(admin);
        if (srv_auth_init(a, api, admin, err, sizeof err))
            abort();
    }
    /* The keys as given, then zeros to the end: srv_key_equal reads all SRV_KEY_MAX + 1 bytes. */
    const char *keys[] = {api, admin};
    const char *bufs[] = {a->api_key, a->admin_key};
    size_t lens[] = {a->api_len, a->admin_len};
    for (int k = 0; k < 2; k++) {
        if (lens[k] != strlen(keys[k]) || memcmp(bufs[k], keys[k], lens[k]) != 0)
            abort();
        for (size_t i = lens[k]; i < SRV_KEY_MAX + 1; i++)
            if (bufs[k][i])
                abort();
    }
}

static void check_route(const srv_auth *a, const char *header, bool admin, size_t msglen)
{
    bool need_admin = admin && a->admin_len > 0;
    const char *mk = NULL;
    size_t mn = 0;
    bool sent = model_bearer(header, &mk, &mn) && mn <= SRV_KEY_MAX + 1;
    bool is_admin = sent && a->admin_len == mn && !memcmp(mk, a->admin_key, mn);
    bool is_api = sent && a->api_len == mn && !memcmp(mk, a->api_key, mn);
    bool open = !need_admin && a->api_len == 0;
    int want = open || is_admin || (!need_admin && is_api) ? 0 : 401;

    char *msg = malloc(msglen);
    if (!msg)
        abort();
    memset(msg, 0, msglen);
    int rc = srv_auth_check(a, header, admin, msg, msglen);
    if (rc != want || !memchr(msg, 0, msglen))
        abort();
    if (rc == 401) {
        const char *why = !sent        ? (header ? "the Authorization header is not a Bearer"
                                                 : "this server needs an API key")
                          : need_admin ? "this route needs the admin key"
                                       : "incorrect API key";
        size_t n = strlen(why) < msglen - 1 ? strlen(why) : msglen - 1;
        if (strncmp(msg, why, n) != 0)
            abort();
    }
    free(msg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    unsigned flags = data[0];
    const uint8_t *p = data + 1, *end = data + size;
    char *part[3];
    for (int i = 0; i < 3; i++) {
        const uint8_t *z = p < end ? memchr(p, 0, (size_t)(end - p)) : NULL;
        const uint8_t *stop = z ? z : end;
        part[i] = fuzz_dup(p, (size_t)(stop - p));
        p = z ? z + 1 : end;
    }
    char *api = part[1], *admin = part[2];

    srv_auth a;
    init_auth(&a, api, admin);
    int mode = (flags >> 1) & 3;
    char *header = mode == 1   ? concat(part[0], api)
                   : mode == 2 ? concat(part[0], admin)
                   : mode == 3 ? NULL
                               : fuzz_dup(part[0], strlen(part[0]));
    bool admin_route = flags & 1;
    size_t msglen = 1 + (flags >> 3) * 7;

    check_bearer(header);
    check_equal(header, a.api_key, a.api_len);
    check_equal(header, a.admin_key, a.admin_len);
    check_equal(api, a.api_key, a.api_len);
    check_equal(admin, a.api_key, a.api_len);
    if (header) {
        const char *mk;
        size_t mn;
        if (model_bearer(header, &mk, &mn)) {
            char *key = fuzz_dup(mk, mn);
            check_equal(key, a.api_key, a.api_len);
            check_equal(key, a.admin_key, a.admin_len);
            free(key);
        }
    }
    check_route(&a, header, admin_route, msglen);
    check_route(&a, header, !admin_route, 200);

    free(header);
    for (int i = 0; i < 3; i++)
        free(part[i]);
    return 0;
}
