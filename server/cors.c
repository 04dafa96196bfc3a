/* CORS origins (server/cors.h): the list --cors-origin gives and the match of a request's
 * Origin against it. */
#include "server/cors.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

int srv_cors_origin_ok(const char *s)
{
    if (!strcmp(s, "*"))
        return 1;
    size_t n = strlen(s), k;
    if (n > SRV_CORS_ORIGIN_MAX)
        return 0;
    if (!strncmp(s, "https://", 8))
        k = 8;
    else if (!strncmp(s, "http://", 7))
        k = 7;
    else
        return 0;
    if (k == n)
        return 0;
    for (size_t i = k; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && !strchr(".-:[]", s[i]))
            return 0;
    return 1;
}

int srv_cors_init(srv_cors *c, const char *const *values, int n, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    for (int i = 0; i < n; i++) {
        for (const char *s = values[i]; *s;) {
            size_t len = strcspn(s, ",");
            char one[SRV_CORS_ORIGIN_MAX + 2];
            snprintf(one, sizeof one, "%.*s", (int)(len < sizeof one - 1 ? len : sizeof one - 1),
                     s);
            if (len > SRV_CORS_ORIGIN_MAX || !srv_cors_origin_ok(one)) {
                snprintf(err, errlen,
                         "bad value '%.*s' for --cors-origin: expected * or an origin such as "
                         "https://app.example.com (http or https, host, optional port, no path)",
                         (int)(len < 300 ? len : 300), s);
                return -EINVAL;
            }
            if (c->n == SRV_CORS_MAX) {
                snprintf(err, errlen, "--cors-origin: at most %d origins", SRV_CORS_MAX);
                return -EINVAL;
            }
            c->any |= !strcmp(one, "*");
            memcpy(c->origins[c->n++], one, strlen(one) + 1);
            s += len + (s[len] == ',');
        }
    }
    return 0;
}

const char *srv_cors_allow(const srv_cors *c, const char *origin)
{
    if (!c || !c->n || !origin)
        return NULL;
    if (c->any)
        return "*";
    for (int i = 0; i < c->n; i++)
        if (!strcmp(origin, c->origins[i]))
            return origin;
    return NULL;
}
