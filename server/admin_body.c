/* The admin routes' request bodies (server/admin_body.h): srv_json_check, then cJSON on the copy
 * it writes, then the two fields. */
#include "server/admin_body.h"

#include <cJSON.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/json_check.h"

int srv_admin_body_parse(const char *body, size_t len, bool pin_required, char *id, size_t idcap,
                         int *pin, int *wait, char *err, size_t errlen, char *param,
                         size_t paramlen)
{
    if (paramlen)
        param[0] = 0;
    if (len == SIZE_MAX) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    char msg[160];
    size_t n = 0;
    char *copy = len ? malloc(len + 1) : NULL;
    if (len && !copy) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    int rc = len ? srv_json_check(body, len, copy, &n, msg, sizeof msg) : -EINVAL;
    if (!len)
        snprintf(msg, sizeof msg, "empty body; expected a JSON object such as {\"id\": \"fr\"}");
    /* After the check cJSON fails only for lack of memory: that is -ENOMEM (a 503), not the
     * client's fault. */
    cJSON *root = rc ? NULL : cJSON_ParseWithLengthOpts(copy, n, NULL, 0);
    free(copy);
    if (!rc && !root) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    const cJSON *jid = cJSON_GetObjectItemCaseSensitive(root, "id");
    const cJSON *jpin = cJSON_GetObjectItemCaseSensitive(root, "pin");
    const cJSON *jwait = cJSON_GetObjectItemCaseSensitive(root, "wait");
    const char *bad = NULL, *field = "";
    size_t idlen = cJSON_IsString(jid) ? strlen(jid->valuestring) : 0;
    if (rc) {
        bad = msg;
    } else if (!cJSON_IsObject(root)) {
        bad = "expected a JSON object such as {\"id\": \"fr\"}";
    } else if (!cJSON_IsString(jid) || idlen == 0) {
        bad = "id: expected a non-empty string";
        field = "id";
    } else if (idlen >= idcap || srv_utf8_check(jid->valuestring, idlen) != idlen) {
        /* A \u0000 is SRV_JSON_NUL in the copy, which srv_utf8_check refuses like any byte
         * that is not UTF-8. */
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
