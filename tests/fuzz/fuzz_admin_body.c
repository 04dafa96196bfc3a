/* libFuzzer target: the admin routes' bodies (server/admin_body.c), each input parsed for the pin
 * route and for load/unload, with a full id buffer and with a small one, and with message
 * buffers cut short. Every output buffer is a heap block of exactly its stated size, so a write
 * past it is an ASan report.
 *
 * Aborts when a code is not a documented one (-ENOMEM cannot happen here); a refusal has no
 * message, a message that is not printable ASCII, a param other than "", "id", "pin" and
 * "wait", or touched id, *pin or *wait; an accepted body gives an id that is empty, too long or
 * not UTF-8, or a pin or wait out of {-1, 0, 1}. The result is also derived again, independently,
 * from cJSON on the raw input once srv_json_check has passed it (a body that is strict JSON parses
 * the same either way), and the calls must agree with each other: the pin route accepts exactly the
 * load bodies that give a pin, and a smaller id buffer refuses exactly the ids that do not fit. */
#include <cJSON.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/registry.h"
#include "server/admin_body.h"
#include "server/json_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define SENTINEL 0xA5
#define PIN_UNSET 7
#define PARAMLEN 5 /* "wait" and its NUL: the longest param fills it exactly */

typedef struct result {
    int rc, pin, wait;
    char id[ADAPTER_ID_MAX + 1];
    char err[160];
    char param[16];
} result;

/* An independent UTF-8 check (decode, then refuse overlongs, surrogates, > U+10FFFF). */
static bool utf8_ok(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned b = s[i], need, cp;
        if (b < 0x80) {
            i++;
            continue;
        }
        if ((b & 0xE0) == 0xC0)
            need = 1, cp = b & 0x1F;
        else if ((b & 0xF0) == 0xE0)
            need = 2, cp = b & 0x0F;
        else if ((b & 0xF8) == 0xF0)
            need = 3, cp = b & 0x07;
        else
            return false;
        if (n - i <= need)
            return false;
        for (unsigned k = 1; k <= need; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return false;
            cp = cp << 6 | (s[i + k] & 0x3F);
        }
        static const unsigned min[] = {0, 0x80, 0x800, 0x10000};
        if (cp < min[need] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += need + 1;
    }
    return true;
}

static bool printable_ascii(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7E)
            return false;
    return true;
}

/* Runs the parser with exact-size heap buffers and checks what holds for every call. */
static void run(const uint8_t *data, size_t size, bool pin_required, size_t idcap, size_t errlen,
                result *out)
{
    char *id = malloc(idcap ? idcap : 1), *err = malloc(errlen ? errlen : 1);
    char *param = malloc(PARAMLEN);
    if (!id || !err || !param)
        abort();
    memset(id, SENTINEL, idcap ? idcap : 1);
    memset(err, 0, errlen ? errlen : 1);
    int pin = PIN_UNSET, wait = PIN_UNSET;
    int rc = srv_admin_body_parse((const char *)data, size, pin_required, id, idcap, &pin, &wait,
                                  err, errlen, param, PARAMLEN);
    if (rc != 0 && rc != -EINVAL && rc != -E2BIG)
        abort();
    if (errlen && !memchr(err, 0, errlen))
        abort();
    out->rc = rc;
    out->pin = pin;
    out->wait = wait;
    out->id[0] = 0;
    snprintf(out->err, sizeof out->err, "%s", errlen ? err : "");
    if (!memchr(param, 0, PARAMLEN))
        abort();
    snprintf(out->param, sizeof out->param, "%s", param);
    if (rc) {
        if (pin != PIN_UNSET || wait != PIN_UNSET || (errlen > 1 && !err[0]) ||
            !printable_ascii(out->err))
            abort();
        if (strcmp(param, "") != 0 && strcmp(param, "id") != 0 && strcmp(param, "pin") != 0 &&
            strcmp(param, "wait") != 0)
            abort();
        if (rc == -E2BIG && param[0])
            abort();
        for (size_t i = 0; i < idcap; i++)
            if ((unsigned char)id[i] != SENTINEL)
                abort();
    } else {
        size_t n = strnlen(id, idcap);
        if (n == 0 || n >= idcap || !utf8_ok((const unsigned char *)id, n) || param[0])
            abort();
        if (pin < -1 || pin > 1 || (pin_required && pin == -1) || wait < -1 || wait > 1)
            abort();
        memcpy(out->id, id, n + 1);
    }
    free(id);
    free(err);
    free(param);
}

/* What the parse must give, from srv_json_check and cJSON on the raw bytes. The raw tree differs
 * from the parser's only where the client escaped a NUL (cJSON cuts the string there, the parser
 * sees SRV_JSON_NUL and refuses), so with a \u0000 in the body only the grammar is compared. */
static void check_against_cjson(const uint8_t *data, size_t size, const result *load,
                                const result *pin)
{
    if (size == 0) {
        if (load->rc != -EINVAL || load->param[0])
            abort();
        return;
    }
    char *copy = malloc(size + 1), msg[160];
    size_t n;
    if (!copy)
        abort();
    int jc = srv_json_check((const char *)data, size, copy, &n, msg, sizeof msg);
    free(copy);
    if (jc) {
        if (load->rc != jc || pin->rc != jc || strcmp(load->err, msg) != 0 || load->param[0])
            abort();
        return;
    }
    if (memmem(data, size, "\\u0000", 6))
        return;
    /* NUL-terminated for cJSON; the check refused raw NULs, so there is none inside. */
    copy = malloc(size + 1);
    if (!copy)
        abort();
    memcpy(copy, data, size);
    copy[size] = 0;
    cJSON *root = cJSON_ParseWithLength(copy, size);
    free(copy);
    if (!root)
        abort();
    const cJSON *jid = cJSON_GetObjectItemCaseSensitive(root, "id");
    const cJSON *jpin = cJSON_GetObjectItemCaseSensitive(root, "pin");
    const cJSON *jwait = cJSON_GetObjectItemCaseSensitive(root, "wait");
    const char *want_param = NULL; /* NULL: accepted */
    if (!cJSON_IsObject(root))
        want_param = "";
    else if (!cJSON_IsString(jid) || !jid->valuestring[0] ||
             strlen(jid->valuestring) > ADAPTER_ID_MAX ||
             !utf8_ok((const unsigned char *)jid->valuestring, strlen(jid->valuestring)))
        want_param = "id";
    else if (jpin && !cJSON_IsBool(jpin))
        want_param = "pin";
    else if (jwait && !cJSON_IsBool(jwait))
        want_param = "wait";
    if (want_param ? load->rc != -EINVAL || strcmp(load->param, want_param) != 0 : load->rc != 0)
        abort();
    if (!want_param) {
        int want_pin = cJSON_IsTrue(jpin) ? 1 : cJSON_IsFalse(jpin) ? 0 : -1;
        int want_wait = cJSON_IsTrue(jwait) ? 1 : cJSON_IsFalse(jwait) ? 0 : -1;
        if (strcmp(load->id, jid->valuestring) != 0 || load->pin != want_pin ||
            load->wait != want_wait)
            abort();
    }
    cJSON_Delete(root);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    result load, pin, small, cut;
    /* The input's last byte picks the small id buffer (1..32 bytes) and the cut message size
     * (1..64 bytes), so both vary with the input. */
    size_t smallcap = size ? 1 + data[size - 1] % 32 : 1;
    size_t errlen = size ? 1 + data[size - 1] % 64 : 1;
    run(data, size, false, ADAPTER_ID_MAX + 1, 160, &load);
    run(data, size, true, ADAPTER_ID_MAX + 1, 160, &pin);
    run(data, size, false, smallcap, 160, &small);
    run(data, size, true, ADAPTER_ID_MAX + 1, errlen, &cut);

    /* The pin route: the same as load/unload, and refused when there is no pin. */
    if (load.rc == 0) {
        bool ok = load.pin != -1;
        if (ok ? pin.rc != 0 || strcmp(pin.id, load.id) != 0 || pin.pin != load.pin ||
                     pin.wait != load.wait
               : pin.rc != -EINVAL || strcmp(pin.param, "pin") != 0)
            abort();
    } else if (pin.rc != load.rc || (strcmp(pin.param, load.param) != 0 &&
                                     !(!strcmp(load.param, "wait") && !strcmp(pin.param, "pin")))) {
        /* The pin is checked before "wait": a body without a pin is refused for that first. */
        abort();
    }
    /* A small id buffer: the ids that fit, and a refusal naming "id" for the others. */
    if (load.rc == 0) {
        bool fits = strlen(load.id) < smallcap;
        if (fits ? small.rc != 0 || strcmp(small.id, load.id) != 0 || small.pin != load.pin ||
                       small.wait != load.wait
                 : small.rc != -EINVAL || strcmp(small.param, "id") != 0)
            abort();
    } else if (small.rc != load.rc ||
               (strcmp(small.param, load.param) != 0 &&
                !((!strcmp(load.param, "pin") || !strcmp(load.param, "wait")) &&
                  !strcmp(small.param, "id")))) {
        /* The id is checked before the pin and "wait": one that does not fit is refused first. */
        abort();
    }
    /* A cut message is a prefix of the whole one. */
    if (cut.rc != pin.rc || strncmp(cut.err, pin.err, errlen - 1) != 0 ||
        strlen(cut.err) != (strlen(pin.err) < errlen - 1 ? strlen(pin.err) : errlen - 1))
        abort();
    check_against_cjson(data, size, &load, &pin);
    return 0;
}
