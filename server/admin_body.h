/* The request bodies of the admin routes POST /v1/adapters/{load,unload,pin}: one JSON object
 * {"id": string, "pin": bool, "wait": bool} ("wait" matters to load only); and of vLLM's
 * POST /v1/{load,unload}_lora_adapter: {"lora_name": string, "lora_path": string}. Only the syntax
 * is checked here; what the id names (and whether it is a well-formed adapter id at all, "../x"
 * included) is the registry's to say (adapter_id_check, docs/ARCHITECTURE.md §4), so
 * server/routes.c answers 400 or 404 from its result.
 *
 * Thread-safety: a pure function of its arguments; any thread (the HTTP threads call it).
 */
#ifndef ADAPTREE_SERVER_ADMIN_BODY_H
#define ADAPTREE_SERVER_ADMIN_BODY_H

#include <stdbool.h>
#include <stddef.h>

/* Parses body (len bytes, need not be NUL-terminated). On success copies "id" into id (idcap
 * bytes: a non-empty string of valid UTF-8 without NUL, shorter than idcap), sets *pin and *wait
 * to 1 or 0 when "pin" / "wait" was given and -1 when not, and returns 0. pin_required: the pin
 * route, which refuses a body without "pin". On failure id, *pin and *wait are left alone, err
 * (errlen bytes, may be 0) holds a message in ASCII, param (paramlen bytes, may be 0) the field at
 * fault ("id", "pin", "wait", or "" when the body as a whole is; checked in that order), and it
 * returns:
 *   -EINVAL  empty body, invalid JSON, not an object, a field missing or of the wrong type;
 *   -E2BIG   nested deeper than SRV_JSON_DEPTH_MAX (both are HTTP 400);
 *   -ENOMEM  out of memory (HTTP 503).
 * Any thread. */
int srv_admin_body_parse(const char *body, size_t len, bool pin_required, char *id, size_t idcap,
                         int *pin, int *wait, char *err, size_t errlen, char *param,
                         size_t paramlen);

/* Parses a vLLM LoRA body {"lora_name": ..., "lora_path": ...} (other members, such as vLLM's
 * lora_int_id or load_inplace, are ignored). On success copies lora_name into name (namecap
 * bytes; rules as "id" above) and lora_path into path (pathcap bytes: a non-empty string of valid
 * UTF-8 without NUL, shorter than pathcap; "" when absent or null) and returns 0. Whether the
 * name is a node and the path its directory is the registry's to say. On failure as
 * srv_admin_body_parse, param "lora_name", "lora_path" or "". Any thread. */
int srv_lora_body_parse(const char *body, size_t len, char *name, size_t namecap, char *path,
                        size_t pathcap, char *err, size_t errlen, char *param, size_t paramlen);

#endif
