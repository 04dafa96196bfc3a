/* Strict JSON in front of cJSON: an RFC 8259 check of a request body that says at which byte it
 * went wrong, and a UTF-8 check. cJSON alone accepts "01", "1.", "-.5", raw control characters
 * in strings and \u0000 (cutting the string there), and reports errors through a global pointer
 * that is not thread-safe; the HTTP threads call this first and hand cJSON the copy it writes.
 *
 * Pure functions; any thread.
 */
#ifndef ADAPTREE_SERVER_JSON_CHECK_H
#define ADAPTREE_SERVER_JSON_CHECK_H

#include <stddef.h>

#define SRV_JSON_DEPTH_MAX 64 /* nested arrays and objects */
#define SRV_JSON_NUL 0xFF     /* what the escape \u0000 becomes in the copy */
#define SRV_JSON_BAD 0xFE     /* what a raw byte 0xFF becomes in the copy */

/* Checks that body[0..len) is exactly one JSON value: RFC 8259 grammar (no leading zeros, no
 * "1." or ".5", no unescaped control characters or invalid escapes in strings, no unpaired
 * UTF-16 surrogate escapes, nothing but whitespace after the value) and at most
 * SRV_JSON_DEPTH_MAX nested arrays and objects. UTF-8 is not checked here: callers check the
 * strings they use, naming the field, and the body with srv_utf8_check.
 *
 * Writes to out (len + 1 bytes, caller-owned) a compact NUL-terminated copy for
 * cJSON_ParseWithLength (*outlen bytes before the NUL): whitespace outside strings dropped, the
 * escape \u0000 replaced by the byte SRV_JSON_NUL and a raw 0xFF by SRV_JSON_BAD. Neither byte
 * occurs in UTF-8, so once cJSON has decoded the copy, SRV_JSON_NUL in a string marks where the
 * client sent a NUL and any other invalid sequence is invalid UTF-8 the client sent, each at its
 * offset in the decoded string. After a successful check cJSON fails only for lack of memory.
 *
 * Returns 0, or -EINVAL (malformed) / -E2BIG (nested too deep) with a message in err (errlen
 * bytes, may be 0) such as "invalid JSON at byte 15: expected a string key". */
int srv_json_check(const char *body, size_t len, char *out, size_t *outlen, char *err,
                   size_t errlen);

/* The offset of the first byte of s[0..n) that does not begin a valid UTF-8 sequence (RFC 3629:
 * no overlong forms, no surrogates, nothing past U+10FFFF), or n when all of it is valid. */
size_t srv_utf8_check(const void *s, size_t n);

#endif
