/* CORS (--cors-origin): which browser origins may read the answers, and the preflight answer.
 * Off unless origins are given. A srv_cors is set up before the HTTP threads start and read-only
 * afterwards, so any thread may read it. */
#ifndef ADAPTREE_SERVER_CORS_H
#define ADAPTREE_SERVER_CORS_H

#include <stdbool.h>
#include <stddef.h>

#define SRV_CORS_MAX 16 /* origins */
#define SRV_CORS_ORIGIN_MAX 255

/* What a preflight answer says (besides the allowed origin). */
#define SRV_CORS_ALLOW_HEADERS "Authorization, Content-Type, X-Request-Id"
#define SRV_CORS_MAX_AGE "600"

typedef struct srv_cors {
    int n;                                               /* 0: CORS off */
    bool any;                                            /* "*" was given */
    char origins[SRV_CORS_MAX][SRV_CORS_ORIGIN_MAX + 1]; /* exact, as given */
} srv_cors;

/* 1 if s can be a --cors-origin: "*", or scheme://host[:port] with scheme http or https and
 * no path, at most SRV_CORS_ORIGIN_MAX bytes. Pure. */
int srv_cors_origin_ok(const char *s);

/* Sets c up from values (each "*" or an origin, or several separated by commas). 0, or -EINVAL
 * with the message in err (a bad origin, too many). */
int srv_cors_init(srv_cors *c, const char *const *values, int n, char *err, size_t errlen);

/* The Access-Control-Allow-Origin value for a request's Origin header (may be NULL): "*" when
 * "*" was given, the origin itself when it is one of the list, NULL otherwise (and when CORS is
 * off, c NULL or c->n 0). The result points into c or origin. Pure. */
const char *srv_cors_allow(const srv_cors *c, const char *origin);

#endif
