/* The admin routes' request bodies (server/admin_body.h): srv_json_check, then cJSON on the copy
 * it writes, then the fields. */
#include "server/admin_body.h"

#include <cJSON.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/json_check.h"

/* Checks and parses body as one JSON value into *root (NULL on failure). 0, or -EINVAL / -E2BIG
 * (the client's) / -ENOMEM with a message in msg; example is the object an empty body is told. */
static int parse_json(const char *body, size_t len, cJSON **root, char *msg, size_t msglen,
                      const char *example)
{
    *root = NULL;
    if (len == SIZE_MAX) {
        snprintf(msg, msglen, "out of memory");
        return -ENOMEM;
    }
    if (!len) {
        snprintf(msg, msglen, "empty body; expected a JSON object such as %s", example);
        return -EINVAL;
    }
    size_t n = 0;
    char *copy = malloc(len + 1);
    if (!copy) {
        snprintf(msg, msglen, "out of memory");
        return -ENOMEM;
    }
    int rc = srv_json_check(body, len, copy, &n, msg, msglen);
    /* After the check cJSON fails only for lack of memory: that is -ENOMEM (a 503), not the
     * client's fault. */
    *root = rc ? NULL : cJSON_ParseWithLengthOpts(copy, n, NULL, 0);
    free(copy);
    if (!rc && !*root) {
        snprintf(msg, msglen, "out of memory");
        return -ENOMEM;
    }
    return rc;
}

/* A string member that must be non-empty valid UTF-8 without NUL, shorter than cap: its length,
 * or 0 when j is not one. A \u0000 is SRV_JSON_NUL in the checked copy, which srv_utf8_check
 * refuses like any byte that is not UTF-8. */
static size_t good_string(const cJSON *j, size_t cap)
{
    if (!cJSON_IsString(j))
        return 0;
    size_t n = strlen(j->valuestring);
    return n && n < cap && srv_utf8_check(j->valuestring, n) == n ? n : 0;
}

int srv_admin_body_parse(const char *body, size_t len, bool pin_required, char *id, size_t idcap,
                         int *pin, int *wait, char *err, size_t errlen, char *param,
                         size_t paramlen)
{
    if (paramlen)
        param[0] = 0;
    char msg[160];
    cJSON *root;
    int rc = parse_json(body, len, &root, msg, sizeof msg, "{\"id\": \"fr\"}");
    if (rc == -ENOMEM) {
        snprintf(err, errlen, "%s", msg);
        return rc;
    }
    const cJSON *jid = cJSON_GetObjectItemCaseSensitive(root, "id");
    const cJSON *jpin = cJSON_GetObjectItemCaseSensitive(root, "pin");
    const cJSON *jwait = cJSON_GetObjectItemCaseSensitive(root, "wait");
    const char *bad = NULL, *field = "";
    size_t idlen = good_string(jid, idcap);
    if (rc) {
        bad = msg;
    } else if (!cJSON_IsObject(root)) {
        bad = "expected a JSON object such as {\"id\": \"fr\"}";
    } else if (!cJSON_IsString(jid) || !jid->valuestring[0]) {
        bad = "id: expected a non-empty string";
        field = "id";
    } else if (!idlen) {
        bad = "id: not a valid adapter id";
        field = "id";
    } else if ((jpin && !cJSON_IsBool(jpin)) || (pin_required && !jpin)) {
        bad = pin_required ? "pin: expected true or false" : "pin: expected a boolean";
        field = "pin";
    } else if (jwait && !cJSON_IsBool(jwait)) {
        bad = "wait: expected a boolean";
        field = "wait";
    }
    if (bad) {
        snprintf(err, errlen, "%s", bad);
        snprintf(param, paramlen, "%s", field);
        cJSON_Delete(root);
        return rc ? rc : -EINVAL;
    }
    memcpy(id, jid->valuestring, idlen + 1);
    *pin = cJSON_IsTrue(jpin) ? 1 : cJSON_IsFalse(jpin) ? 0 : -1;
    *wait = cJSON_IsTrue(jwait) ? 1 : cJSON_IsFalse(jwait) ? 0 : -1;
    cJSON_Delete(root);
    return 0;
}

int srv_lora_body_parse(const char *body, size_t len, char *name, size_t namecap, char *path,
                        size_t pathcap, char *err, size_t errlen, char *param, size_t paramlen)
{
    if (paramlen)
        param[0] = 0;
    char msg[160];
    cJSON *root;
    int rc = parse_json(body, len, &root, msg, sizeof msg, "{\"lora_name\": \"fr\"}");
    if (rc == -ENOMEM) {
        snprintf(err, errlen, "%s", msg);
        return rc;
    }
    const cJSON *jname = cJSON_GetObjectItemCaseSensitive(root, "lora_name");
    const cJSON *jpath = cJSON_GetObjectItemCaseSensitive(root, "lora_path");
    const char *bad = NULL, *field = "";
    size_t nlen = good_string(jname, namecap);
    size_t plen = good_string(jpath, pathcap);
    if (rc) {
        bad = msg;
    } else if (!cJSON_IsObject(root)) {
        bad = "expected a JSON object such as {\"lora_name\": \"fr\"}";
    } else if (!cJSON_IsString(jname) || !jname->valuestring[0]) {
        bad = "lora_name: expected a non-empty string (a registry adapter id)";
        field = "lora_name";
    } else if (!nlen) {
        bad = "lora_name: not a valid adapter id";
        field = "lora_name";
    } else if (jpath && !cJSON_IsNull(jpath) &&
               (!cJSON_IsString(jpath) || !jpath->valuestring[0])) {
        bad = "lora_path: expected a non-empty string";
        field = "lora_path";
    } else if (cJSON_IsString(jpath) && !plen) {
        bad = "lora_path: too long or not valid UTF-8";
        field = "lora_path";
    }
    if (bad) {
        snprintf(err, errlen, "%s", bad);
        snprintf(param, paramlen, "%s", field);
        cJSON_Delete(root);
        return rc ? rc : -EINVAL;
    }
    memcpy(name, jname->valuestring, nlen + 1);
    if (plen)
        memcpy(path, jpath->valuestring, plen + 1);
    else if (pathcap)
        path[0] = 0;
    cJSON_Delete(root);
    return 0;
}
