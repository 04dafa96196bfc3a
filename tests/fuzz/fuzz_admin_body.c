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
 * load bodies that give a pin, and a smaller id buffer refuses exactly the ids that do not fit.
 * The same input is parsed as a vLLM LoRA body (srv_lora_body_parse), with a full path buffer and
 * a small one, and checked the same ways (lora_name as id; lora_path absent, null or a string
 * that fits). */
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
#include "tests/fuzz/fuzz_util.h"

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

/* srv_json_check on the raw bytes (size > 0): 0 or its error, with its message in msg. */
static int raw_check(const uint8_t *data, size_t size, char *msg, size_t cap)
{
    char *copy = malloc(size + 1);
    size_t n;
    if (!copy)
        abort();
    int jc = srv_json_check((const char *)data, size, copy, &n, msg, cap);
    free(copy);
    return jc;
}

/* The raw bytes as cJSON parses them (NUL-terminated; srv_json_check refused raw NULs, so there
 * is none inside); aborts when cJSON refuses what the check passed. */
static cJSON *raw_tree(const uint8_t *data, size_t size)
{
    char *copy = fuzz_dup(data, size);
    cJSON *root = cJSON_ParseWithLength(copy, size);
    free(copy);
    if (!root)
        abort();
    return root;
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
    char msg[160];
    int jc = raw_check(data, size, msg, sizeof msg);
    if (jc) {
        if (load->rc != jc || pin->rc != jc || strcmp(load->err, msg) != 0 || load->param[0])
            abort();
        return;
    }
    if (memmem(data, size, "\\u0000", 6))
        return;
    cJSON *root = raw_tree(data, size);
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

#define LORA_PARAMLEN 10 /* "lora_name" and its NUL */
#define LORA_PATHCAP 4096

typedef struct lora_result {
    int rc;
    char name[ADAPTER_ID_MAX + 1], path[LORA_PATHCAP], err[160], param[16];
} lora_result;

/* srv_lora_body_parse with exact-size heap buffers, and what holds for every call. */
static void run_lora(const uint8_t *data, size_t size, size_t pathcap, lora_result *out)
{
    size_t namecap = ADAPTER_ID_MAX + 1;
    char *name = malloc(namecap), *path = malloc(pathcap), *err = malloc(160);
    char *param = malloc(LORA_PARAMLEN);
    if (!name || !path || !err || !param)
        abort();
    memset(name, SENTINEL, namecap);
    memset(path, SENTINEL, pathcap);
    memset(err, 0, 160);
    int rc = srv_lora_body_parse((const char *)data, size, name, namecap, path, pathcap, err, 160,
                                 param, LORA_PARAMLEN);
    if ((rc != 0 && rc != -EINVAL && rc != -E2BIG) || !memchr(err, 0, 160) ||
        !memchr(param, 0, LORA_PARAMLEN))
        abort();
    out->rc = rc;
    snprintf(out->param, sizeof out->param, "%s", param);
    out->name[0] = out->path[0] = 0;
    if (rc) {
        snprintf(out->err, sizeof out->err, "%s", err);
        if (!err[0] || !printable_ascii(err) || (rc == -E2BIG && param[0]))
            abort();
        if (strcmp(param, "") != 0 && strcmp(param, "lora_name") != 0 &&
            strcmp(param, "lora_path") != 0)
            abort();
        for (size_t i = 0; i < namecap; i++)
            if ((unsigned char)name[i] != SENTINEL)
                abort();
        for (size_t i = 0; i < pathcap; i++)
            if ((unsigned char)path[i] != SENTINEL)
                abort();
    } else {
        size_t n = strnlen(name, namecap), m = strnlen(path, pathcap);
        if (n == 0 || n >= namecap || !utf8_ok((const unsigned char *)name, n) || param[0] ||
            m >= pathcap || !utf8_ok((const unsigned char *)path, m))
            abort();
        memcpy(out->name, name, n + 1);
        memcpy(out->path, path, m + 1);
    }
    free(name);
    free(path);
    free(err);
    free(param);
}

/* The LoRA parse against srv_json_check and cJSON on the raw bytes, as check_against_cjson does
 * for the admin body. */
static void check_lora_against_cjson(const uint8_t *data, size_t size, const lora_result *l)
{
    if (size == 0) {
        if (l->rc != -EINVAL || l->param[0])
            abort();
        return;
    }
    char msg[160];
    int jc = raw_check(data, size, msg, sizeof msg);
    if (jc) {
        if (l->rc != jc || strcmp(l->err, msg) != 0 || l->param[0])
            abort();
        return;
    }
    if (memmem(data, size, "\\u0000", 6))
        return;
    cJSON *root = raw_tree(data, size);
    const cJSON *jn = cJSON_GetObjectItemCaseSensitive(root, "lora_name");
    const cJSON *jp = cJSON_GetObjectItemCaseSensitive(root, "lora_path");
    const char *want_param = NULL;
    if (!cJSON_IsObject(root))
        want_param = "";
    else if (!cJSON_IsString(jn) || !jn->valuestring[0] ||
             strlen(jn->valuestring) > ADAPTER_ID_MAX ||
             !utf8_ok((const unsigned char *)jn->valuestring, strlen(jn->valuestring)))
        want_param = "lora_name";
    else if (jp && !cJSON_IsNull(jp) &&
             (!cJSON_IsString(jp) || !jp->valuestring[0] ||
              strlen(jp->valuestring) >= LORA_PATHCAP ||
              !utf8_ok((const unsigned char *)jp->valuestring, strlen(jp->valuestring))))
        want_param = "lora_path";
    if (want_param ? l->rc != -EINVAL || strcmp(l->param, want_param) != 0 : l->rc != 0)
        abort();
    if (!want_param && (strcmp(l->name, jn->valuestring) != 0 ||
                        strcmp(l->path, cJSON_IsString(jp) ? jp->valuestring : "") != 0))
        abort();
    cJSON_Delete(root);
}

/* A small path buffer refuses exactly the paths that do not fit, naming lora_path. */
static void check_lora_small(const lora_result *full, const lora_result *small, size_t pathcap)
{
    if (full->rc) {
        if (small->rc != full->rc || strcmp(small->param, full->param) != 0)
            abort();
        return;
    }
    bool fits = strlen(full->path) < pathcap;
    if (fits ? small->rc != 0 || strcmp(small->name, full->name) != 0 ||
                   strcmp(small->path, full->path) != 0
             : small->rc != -EINVAL || strcmp(small->param, "lora_path") != 0)
        abort();
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

    static lora_result lora, lora_small; /* 4 KiB paths: off the stack */
    size_t pathcap = size ? 1 + data[size - 1] % 32 : 1;
    run_lora(data, size, LORA_PATHCAP, &lora);
    run_lora(data, size, pathcap, &lora_small);
    check_lora_small(&lora, &lora_small, pathcap);
    check_lora_against_cjson(data, size, &lora);
    return 0;
}
