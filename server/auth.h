/* API keys (docs/ARCHITECTURE.md §5): --api-key protects every route but /health; --admin-key
 * additionally guards /v1/adapters*. Keys arrive as "Authorization: Bearer KEY" and are compared in
 * constant time: every comparison reads the same fixed number of bytes whatever the lengths, so the
 * time a wrong key takes says nothing about the right one.
 *
 * A srv_auth is filled once at startup and read-only afterwards; any thread may check keys.
 */
#ifndef ADAPTREE_SERVER_AUTH_H
#define ADAPTREE_SERVER_AUTH_H

#include <stdbool.h>
#include <stddef.h>

#define SRV_KEY_MAX 256 /* bytes of a configured key */

/* Keys are kept zero-padded to SRV_KEY_MAX + 1 bytes so that comparing reads a fixed size. */
typedef struct srv_auth {
    char api_key[SRV_KEY_MAX + 1];   /* "" = no key needed */
    char admin_key[SRV_KEY_MAX + 1]; /* "" = admin routes need only the api key (if any) */
    size_t api_len, admin_len;
} srv_auth;

/* Sets the keys (NULL or "" = none). -EINVAL with a message when a key is longer than
 * SRV_KEY_MAX bytes or holds characters that cannot travel in an HTTP header (control
 * characters, spaces). */
int srv_auth_init(srv_auth *a, const char *api_key, const char *admin_key, char *err,
                  size_t errlen);

/* True when given (NULL = no key sent) equals the expected key (expected_len > 0 bytes, in a
 * zero-padded buffer of SRV_KEY_MAX + 1 bytes, as srv_auth keeps them). The loop always runs over
 * SRV_KEY_MAX + 1 bytes, whatever either length; a given longer than that is refused. */
bool srv_key_equal(const char *given, const char *expected, size_t expected_len);

/* The key of an Authorization header value: "Bearer KEY" (scheme case-insensitive, spaces around
 * KEY trimmed), copied into key (cap bytes); -1 when the header is absent, not Bearer, empty or
 * longer than cap - 1. */
int srv_auth_bearer(const char *header, char *key, size_t cap);

/* Whether a request may use a route: 0 allowed, or 401 with the reason in msg. admin: the route
 * is an admin route. authorization: the header value or NULL. */
int srv_auth_check(const srv_auth *a, const char *authorization, bool admin, char *msg,
                   size_t msglen);

#endif
