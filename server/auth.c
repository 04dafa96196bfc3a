/* API keys: configuration, Bearer parsing and constant-time comparison (server/auth.h). */
#include "server/auth.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static int set_key(char *dst, size_t *len, const char *key, const char *what, char *err,
                   size_t errlen)
{
    memset(dst, 0, SRV_KEY_MAX + 1);
    *len = 0;
    if (!key || !key[0])
        return 0;
    size_t n = strlen(key);
    if (n > SRV_KEY_MAX) {
        snprintf(err, errlen, "%s is %zu bytes; at most %d are allowed", what, n, SRV_KEY_MAX);
        return -EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)key[i];
        if (c <= 0x20 || c == 0x7F) {
            snprintf(err, errlen, "%s contains a space or control character at byte %zu", what, i);
            return -EINVAL;
        }
    }
    memcpy(dst, key, n + 1);
    *len = n;
    return 0;
}

int srv_auth_init(srv_auth *a, const char *api_key, const char *admin_key, char *err, size_t errlen)
{
    memset(a, 0, sizeof *a);
    int rc = set_key(a->api_key, &a->api_len, api_key, "--api-key", err, errlen);
    if (!rc)
        rc = set_key(a->admin_key, &a->admin_len, admin_key, "--admin-key", err, errlen);
    return rc;
}

bool srv_key_equal(const char *given, const char *expected, size_t expected_len)
{
    unsigned char g[SRV_KEY_MAX + 1] = {0};
    size_t gl = given ? strnlen(given, SRV_KEY_MAX + 1) : 0;
    if (given && gl <= SRV_KEY_MAX)
        memcpy(g, given, gl);
    /* volatile: the compiler must not turn the fixed loop into an early-exit comparison. */
    volatile unsigned diff = (gl != expected_len) | (expected_len == 0) | (gl > SRV_KEY_MAX);
    for (size_t i = 0; i < SRV_KEY_MAX + 1; i++)
        diff |= (unsigned)(g[i] ^ (unsigned char)expected[i]);
    return diff == 0;
}

int srv_auth_bearer(const char *header, char *key, size_t cap)
{
    if (!header || cap == 0)
        return -1;
    while (*header == ' ' || *header == '\t')
        header++;
    if (strncasecmp(header, "Bearer", 6) != 0 || (header[6] != ' ' && header[6] != '\t'))
        return -1;
    const char *p = header + 6;
    while (*p == ' ' || *p == '\t')
        p++;
    size_t n = strlen(p);
    while (n && (p[n - 1] == ' ' || p[n - 1] == '\t'))
        n--;
    if (n == 0 || n >= cap)
        return -1;
    memcpy(key, p, n);
    key[n] = 0;
    return 0;
}

int srv_auth_check(const srv_auth *a, const char *authorization, bool admin, char *msg,
                   size_t msglen)
{
    /* The admin key also opens the ordinary routes; on admin routes only it does, when set. */
    bool need_admin = admin && a->admin_len > 0;
    if (!need_admin && a->api_len == 0)
        return 0;
    char key[SRV_KEY_MAX + 2];
    bool sent = srv_auth_bearer(authorization, key, sizeof key) == 0;
    bool is_admin = sent && a->admin_len && srv_key_equal(key, a->admin_key, a->admin_len);
    bool is_api = sent && a->api_len && srv_key_equal(key, a->api_key, a->api_len);
    memset(key, 0, sizeof key);
    if (is_admin || (!need_admin && is_api))
        return 0;
    if (!sent)
        snprintf(msg, msglen, "%s: send the header 'Authorization: Bearer KEY'",
                 authorization ? "the Authorization header is not a Bearer key"
                               : "this server needs an API key");
    else if (need_admin)
        snprintf(msg, msglen,
                 "this route needs the admin key (--admin-key); the key given is not it");
    else
        snprintf(msg, msglen, "incorrect API key");
    return 401;
}
