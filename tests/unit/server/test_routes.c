/* Tests for the pure parts of server/routes.c: route matching, selection labels, node
 * descriptions, and the admin routes' bodies (server/admin_body.c). */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "server/admin_body.h"
#include "server/json_check.h"
#include "server/routes.h"
#include "tests/test.h"

TEST(routes_match)
{
    bool ok;
    const char *allow;
    CHECK_EQ_INT(srv_route_match("POST", "/v1/completions", &ok, &allow), SRV_ROUTE_COMPLETIONS);
    CHECK(ok);
    CHECK_EQ_INT(srv_route_match("GET", "/v1/completions", &ok, &allow), SRV_ROUTE_COMPLETIONS);
    CHECK(!ok);
    CHECK_EQ_STR(allow, "POST");
    CHECK_EQ_INT(srv_route_match("POST", "/v1/chat/completions", &ok, NULL), SRV_ROUTE_CHAT);
    CHECK_EQ_INT(srv_route_match("GET", "/v1/models", &ok, NULL), SRV_ROUTE_MODELS);
    CHECK(ok);
    CHECK_EQ_INT(srv_route_match("HEAD", "/v1/models", &ok, NULL), SRV_ROUTE_MODELS);
    CHECK(ok);
    CHECK_EQ_INT(srv_route_match("GET", "/v1/models/fr/legal", &ok, NULL), SRV_ROUTE_MODELS);
    CHECK_EQ_INT(srv_route_match("GET", "/v1/models/", &ok, NULL), SRV_ROUTE_OTHER);
    CHECK_EQ_INT(srv_route_match("GET", "/v1/modelsx", &ok, NULL), SRV_ROUTE_OTHER);
    CHECK_EQ_INT(srv_route_match("GET", "/v1/adapters", &ok, NULL), SRV_ROUTE_ADAPTERS);
    CHECK_EQ_INT(srv_route_match("POST", "/v1/adapters/load", &ok, NULL), SRV_ROUTE_ADAPTERS_LOAD);
    CHECK_EQ_INT(srv_route_match("POST", "/v1/adapters/unload", &ok, NULL),
                 SRV_ROUTE_ADAPTERS_UNLOAD);
    CHECK_EQ_INT(srv_route_match("POST", "/v1/adapters/pin", &ok, NULL), SRV_ROUTE_ADAPTERS_PIN);
    CHECK_EQ_INT(srv_route_match("POST", "/v1/load_lora_adapter", &ok, NULL), SRV_ROUTE_LORA_LOAD);
    CHECK_EQ_INT(srv_route_match("POST", "/v1/unload_lora_adapter", &ok, NULL),
                 SRV_ROUTE_LORA_UNLOAD);
    CHECK_EQ_INT(srv_route_match("GET", "/v1/load_lora_adapter", &ok, &allow), SRV_ROUTE_LORA_LOAD);
    CHECK(!ok);
    CHECK_EQ_STR(allow, "POST");
    CHECK_EQ_INT(srv_route_match("GET", "/health", &ok, NULL), SRV_ROUTE_HEALTH);
    CHECK_EQ_INT(srv_route_match("GET", "/metrics", &ok, NULL), SRV_ROUTE_METRICS);
    CHECK_EQ_INT(srv_route_match("GET", "/", &ok, &allow), SRV_ROUTE_OTHER);
    CHECK(!ok && allow == NULL);
    CHECK_EQ_INT(srv_route_match("POST", "/v1/completions/", &ok, NULL), SRV_ROUTE_OTHER);
    CHECK_EQ_STR(srv_route_name(SRV_ROUTE_CHAT), "/v1/chat/completions");
}

TEST(routes_selection_label)
{
    char out[ADAPTER_ID_MAX + 1];
    adapter_sel_item items[3] = {{"fr", 0.5f}, {"de/medical", 1.0f}, {"x", -0.25f}};
    srv_selection_label(NULL, NULL, 0, out, sizeof out);
    CHECK_EQ_STR(out, "base");
    srv_selection_label("fr/legal/alice", NULL, 0, out, sizeof out);
    CHECK_EQ_STR(out, "fr/legal/alice");
    srv_selection_label(NULL, items, 2, out, sizeof out);
    CHECK_EQ_STR(out, "fr:0.5+de/medical:1");
    srv_selection_label("fr/legal", items, 3, out, sizeof out);
    CHECK_EQ_STR(out, "fr/legal+fr:0.5+de/medical:1+x:-0.25");
    /* Cut to the buffer, NUL-terminated. */
    char small[8];
    srv_selection_label(NULL, items, 2, small, sizeof small);
    CHECK_EQ_STR(small, "fr:0.5+");
    adapter_sel_item many[ADAPTER_SEL_MAX];
    for (int i = 0; i < ADAPTER_SEL_MAX; i++) {
        memset(many[i].id, 'a', 40);
        many[i].id[40] = 0;
        many[i].weight = 1;
    }
    srv_selection_label(NULL, many, ADAPTER_SEL_MAX, out, sizeof out);
    CHECK_EQ_INT(strlen(out), ADAPTER_ID_MAX);
}

/* One admin body parsed as routes.c does (id buffer ADAPTER_ID_MAX + 1); pin starts at 7 and id
 * at "-" so that a refusal can be seen to leave them alone. */
typedef struct admin_case {
    int rc, pin, wait;
    char id[ADAPTER_ID_MAX + 1], err[160], param[SRV_PARAM_MAX];
} admin_case;

static admin_case admin_parse(const char *body, bool pin_required)
{
    admin_case c = {.pin = 7, .wait = 7, .id = "-"};
    c.rc = srv_admin_body_parse(body, strlen(body), pin_required, c.id, sizeof c.id, &c.pin,
                                &c.wait, c.err, sizeof c.err, c.param, sizeof c.param);
    return c;
}

TEST(routes_admin_body_valid)
{
    admin_case c = admin_parse("{\"id\": \"fr\"}", false);
    CHECK_EQ_INT(c.rc, 0);
    CHECK_EQ_STR(c.id, "fr");
    CHECK_EQ_INT(c.pin, -1);
    CHECK_EQ_INT(c.wait, -1);
    CHECK_EQ_STR(c.param, "");
    c = admin_parse("{\"id\": \"fr\", \"wait\": false}", false);
    CHECK_EQ_INT(c.rc, 0);
    CHECK_EQ_INT(c.wait, 0);
    c = admin_parse("{\"id\": \"fr\", \"wait\": true, \"pin\": true}", true);
    CHECK_EQ_INT(c.rc, 0);
    CHECK_EQ_INT(c.wait, 1);
    CHECK_EQ_INT(c.pin, 1);
    c = admin_parse(" {\"pin\":true,\"id\":\"fr/legal/alice\",\"other\":[1,{}]} ", false);
    CHECK_EQ_INT(c.rc, 0);
    CHECK_EQ_STR(c.id, "fr/legal/alice");
    CHECK_EQ_INT(c.pin, 1);
    c = admin_parse("{\"id\": \"fr\", \"pin\": false}", true);
    CHECK_EQ_INT(c.rc, 0);
    CHECK_EQ_INT(c.pin, 0);
    /* Escapes are decoded, keys included; the first of duplicate keys wins, as in cJSON. */
    c = admin_parse("{\"\\u0069d\": \"caf\\u00e9\", \"id\": \"other\"}", false);
    CHECK_EQ_INT(c.rc, 0);
    CHECK_EQ_STR(c.id, "caf\xc3\xa9");
    /* Not NUL-terminated: only len bytes are read. */
    const char body[] = "{\"id\":\"de\"}garbage";
    c.rc = srv_admin_body_parse(body, strlen("{\"id\":\"de\"}"), false, c.id, sizeof c.id, &c.pin,
                                &c.wait, c.err, sizeof c.err, c.param, sizeof c.param);
    CHECK_EQ_INT(c.rc, 0);
    CHECK_EQ_STR(c.id, "de");
}

TEST(routes_admin_body_refused)
{
    static const struct {
        const char *body;
        bool pin_required;
        int rc;
        const char *param, *err;
    } cases[] = {
        {"", false, -EINVAL, "", "empty body; expected a JSON object such as {\"id\": \"fr\"}"},
        {"{\"id\": \"fr\"", false, -EINVAL, "",
         "invalid JSON: the body ends at byte 11 where ',' or '}' was expected"},
        {"{\"id\": 01}", false, -EINVAL, "", "invalid JSON at byte 7: number with a leading zero"},
        {"[\"id\", \"fr\"]", false, -EINVAL, "", "expected a JSON object such as {\"id\": \"fr\"}"},
        {"\"fr\"", false, -EINVAL, "", "expected a JSON object such as {\"id\": \"fr\"}"},
        {"{}", false, -EINVAL, "id", "id: expected a non-empty string"},
        {"{\"pin\": true}", true, -EINVAL, "id", "id: expected a non-empty string"},
        {"{\"id\": \"\"}", false, -EINVAL, "id", "id: expected a non-empty string"},
        {"{\"id\": 42}", false, -EINVAL, "id", "id: expected a non-empty string"},
        {"{\"id\": [\"fr\"]}", false, -EINVAL, "id", "id: expected a non-empty string"},
        {"{\"id\": null}", false, -EINVAL, "id", "id: expected a non-empty string"},
        {"{\"ID\": \"fr\"}", false, -EINVAL, "id", "id: expected a non-empty string"},
        /* A NUL the client escaped, and bytes that are not UTF-8. */
        {"{\"id\": \"fr\\u0000x\"}", false, -EINVAL, "id", "id: not a valid adapter id"},
        {"{\"id\": \"\\u0000\"}", false, -EINVAL, "id", "id: not a valid adapter id"},
        {"{\"id\": \"fr\xff\"}", false, -EINVAL, "id", "id: not a valid adapter id"},
        {"{\"id\": \"\xc0\xaf\"}", false, -EINVAL, "id", "id: not a valid adapter id"},
        {"{\"id\": \"fr\", \"pin\": \"yes\"}", false, -EINVAL, "pin", "pin: expected a boolean"},
        {"{\"id\": \"fr\", \"pin\": 1}", true, -EINVAL, "pin", "pin: expected true or false"},
        {"{\"id\": \"fr\", \"pin\": null}", false, -EINVAL, "pin", "pin: expected a boolean"},
        {"{\"id\": \"fr\"}", true, -EINVAL, "pin", "pin: expected true or false"},
        {"{\"id\": \"fr\", \"wait\": 0}", false, -EINVAL, "wait", "wait: expected a boolean"},
        {"{\"id\": \"fr\", \"wait\": \"no\"}", true, -EINVAL, "pin", "pin: expected true or false"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        admin_case c = admin_parse(cases[i].body, cases[i].pin_required);
        CHECK_MSG(c.rc == cases[i].rc && !strcmp(c.param, cases[i].param) &&
                      !strcmp(c.err, cases[i].err),
                  "case %zu: rc %d param \"%s\" err \"%s\"; want %d \"%s\" \"%s\"", i, c.rc,
                  c.param, c.err, cases[i].rc, cases[i].param, cases[i].err);
        CHECK_EQ_INT(c.pin, 7);
        CHECK_EQ_INT(c.wait, 7);
        CHECK_EQ_STR(c.id, "-");
    }
    /* Nested too deep: -E2BIG, still a 400 for the whole body. */
    char deep[2 * (SRV_JSON_DEPTH_MAX + 1) + 1];
    memset(deep, '[', SRV_JSON_DEPTH_MAX + 1);
    memset(deep + SRV_JSON_DEPTH_MAX + 1, ']', SRV_JSON_DEPTH_MAX + 1);
    deep[sizeof deep - 1] = 0;
    admin_case c = admin_parse(deep, false);
    CHECK_EQ_INT(c.rc, -E2BIG);
    CHECK_EQ_STR(c.param, "");
}

/* What an id names, and whether it is a well-formed adapter id at all, is the registry's to say
 * (adapter_id_check): the body parser passes hostile ids through, and routes.c answers the
 * registry's -EINVAL with 400. */
TEST(routes_admin_body_ids_for_the_registry)
{
    static const char *const ids[] = {"../x",     "fr/../../etc/passwd", "/abs", "a//b", ".", "a b",
                                      "fr\\legal"};
    static const char *const bodies[] = {
        "{\"id\": \"../x\"}",       "{\"id\": \"fr/../../etc/passwd\"}",
        "{\"id\": \"/abs\"}",       "{\"id\": \"a//b\"}",
        "{\"id\": \".\"}",          "{\"id\": \"a b\"}",
        "{\"id\": \"fr\\\\legal\"}"};
    for (size_t i = 0; i < sizeof ids / sizeof *ids; i++) {
        admin_case c = admin_parse(bodies[i], false);
        CHECK_MSG(c.rc == 0 && !strcmp(c.id, ids[i]), "case %zu: rc %d id \"%s\"", i, c.rc, c.id);
        CHECK_EQ_INT(adapter_id_check(c.id, NULL, 0), -EINVAL);
    }
    /* The longest id that fits the buffer routes.c uses, and one byte more. */
    char body[ADAPTER_ID_MAX + 32], id[ADAPTER_ID_MAX + 2];
    memset(id, 'a', ADAPTER_ID_MAX);
    id[ADAPTER_ID_MAX] = 0;
    snprintf(body, sizeof body, "{\"id\":\"%s\"}", id);
    admin_case c = admin_parse(body, false);
    CHECK_EQ_INT(c.rc, 0);
    CHECK_EQ_INT(strlen(c.id), ADAPTER_ID_MAX);
    snprintf(body, sizeof body, "{\"id\":\"%sa\"}", id);
    c = admin_parse(body, false);
    CHECK_EQ_INT(c.rc, -EINVAL);
    CHECK_EQ_STR(c.err, "id: not a valid adapter id");
}

/* Cut message buffers and zero-sized ones are written within their size. */
TEST(routes_admin_body_small_buffers)
{
    char id[3] = "--", err[8], param[2];
    int pin = 7, wait = 7;
    const char *b = "{\"id\": \"fr\", \"pin\": 3}";
    CHECK_EQ_INT(srv_admin_body_parse(b, strlen(b), false, id, sizeof id, &pin, &wait, err,
                                      sizeof err, param, sizeof param),
                 -EINVAL);
    CHECK_EQ_STR(err, "pin: ex");
    CHECK_EQ_STR(param, "p");
    CHECK_EQ_INT(
        srv_admin_body_parse(b, strlen(b), false, id, sizeof id, &pin, &wait, NULL, 0, NULL, 0),
        -EINVAL);
    b = "{\"id\": \"fr\"}";
    CHECK_EQ_INT(
        srv_admin_body_parse(b, strlen(b), false, id, sizeof id, &pin, &wait, NULL, 0, NULL, 0), 0);
    CHECK_EQ_STR(id, "fr");
    CHECK_EQ_INT(pin, -1);
    b = "{\"id\": \"fre\"}";
    CHECK_EQ_INT(srv_admin_body_parse(b, strlen(b), false, id, sizeof id, &pin, &wait, err,
                                      sizeof err, param, sizeof param),
                 -EINVAL);
    CHECK_EQ_STR(param, "i");
    CHECK_EQ_STR(id, "fr");
}

/* What a node is, as /v1/models and /v1/adapters show it: the registry's values, or null for
 * each when it does not know them (a namespace, or files not described). */
TEST(routes_node_description)
{
    adapter_node_info n;
    memset(&n, 0, sizeof n);
    n.format = ADAPTER_GGUF;
    n.r = 4;
    n.alpha = 8;
    n.targets = (1u << CORE_MOD_Q) | (1u << CORE_MOD_V);
    n.weight_bytes = 460800;
    srv_buf b;
    srv_buf_init(&b);
    srv_node_desc_json(&b, &n);
    CHECK_EQ_STR(b.data, ",\"format\":\"gguf\",\"rank\":4,\"alpha\":8,\"rslora\":false,"
                         "\"targets\":[\"q\",\"v\"],\"weight_bytes\":460800");
    srv_buf_deinit(&b);
    n.format = ADAPTER_PEFT;
    n.rslora = true;
    n.alpha = 0.5f;
    srv_node_desc_json(&b, &n);
    CHECK_EQ_STR(b.data, ",\"format\":\"peft\",\"rank\":4,\"alpha\":0.5,\"rslora\":true,"
                         "\"targets\":[\"q\",\"v\"],\"weight_bytes\":460800");
    srv_buf_deinit(&b);
    n.format = 0;
    srv_node_desc_json(&b, &n);
    CHECK_EQ_STR(b.data, ",\"format\":null,\"rank\":null,\"alpha\":null,\"rslora\":null,"
                         "\"targets\":null,\"weight_bytes\":null");
    srv_buf_deinit(&b);
}

/* One vLLM LoRA body parsed as routes.c does; name and path start at "-". */
typedef struct lora_case {
    int rc;
    char name[ADAPTER_ID_MAX + 1], path[4096], err[160], param[SRV_PARAM_MAX];
} lora_case;

static lora_case lora_parse(const char *body)
{
    lora_case c = {.name = "-", .path = "-"};
    c.rc = srv_lora_body_parse(body, strlen(body), c.name, sizeof c.name, c.path, sizeof c.path,
                               c.err, sizeof c.err, c.param, sizeof c.param);
    return c;
}

TEST(routes_lora_body_valid)
{
    lora_case c = lora_parse("{\"lora_name\": \"fr/legal\", \"lora_path\": \"registry/fr/legal\"}");
    CHECK_EQ_INT(c.rc, 0);
    CHECK_EQ_STR(c.name, "fr/legal");
    CHECK_EQ_STR(c.path, "registry/fr/legal");
    CHECK_EQ_STR(c.param, "");
    /* lora_path is optional (unload never needs it); null is absent; vLLM's other members are
     * ignored. */
    c = lora_parse("{\"lora_name\": \"fr\"}");
    CHECK_EQ_INT(c.rc, 0);
    CHECK_EQ_STR(c.name, "fr");
    CHECK_EQ_STR(c.path, "");
    c = lora_parse("{\"lora_name\": \"fr\", \"lora_path\": null, \"lora_int_id\": 3, "
                   "\"load_inplace\": true}");
    CHECK_EQ_INT(c.rc, 0);
    CHECK_EQ_STR(c.path, "");
    /* Hostile names pass through: adapter_id_check (the registry) refuses them, with a 400. */
    c = lora_parse("{\"lora_name\": \"../x\", \"lora_path\": \"/etc\"}");
    CHECK_EQ_INT(c.rc, 0);
    CHECK_EQ_STR(c.name, "../x");
    CHECK_EQ_STR(c.path, "/etc");
}

TEST(routes_lora_body_refused)
{
    static const struct {
        const char *body, *param, *err;
    } cases[] = {
        {"", "", "empty body; expected a JSON object such as {\"lora_name\": \"fr\"}"},
        {"[1]", "", "expected a JSON object such as {\"lora_name\": \"fr\"}"},
        {"{\"lora_name\": \"fr\"", "",
         "invalid JSON: the body ends at byte 18 where ',' or '}' was expected"},
        {"{}", "lora_name", "lora_name: expected a non-empty string (a registry adapter id)"},
        {"{\"id\": \"fr\"}", "lora_name",
         "lora_name: expected a non-empty string (a registry adapter id)"},
        {"{\"lora_name\": \"\"}", "lora_name",
         "lora_name: expected a non-empty string (a registry adapter id)"},
        {"{\"lora_name\": 7}", "lora_name",
         "lora_name: expected a non-empty string (a registry adapter id)"},
        {"{\"lora_name\": \"fr\\u0000\"}", "lora_name", "lora_name: not a valid adapter id"},
        {"{\"lora_name\": \"fr\xff\"}", "lora_name", "lora_name: not a valid adapter id"},
        {"{\"lora_name\": \"fr\", \"lora_path\": \"\"}", "lora_path",
         "lora_path: expected a non-empty string"},
        {"{\"lora_name\": \"fr\", \"lora_path\": [\"a\"]}", "lora_path",
         "lora_path: expected a non-empty string"},
        {"{\"lora_name\": \"fr\", \"lora_path\": \"a\\u0000b\"}", "lora_path",
         "lora_path: too long or not valid UTF-8"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        lora_case c = lora_parse(cases[i].body);
        CHECK_MSG(c.rc == -EINVAL && !strcmp(c.param, cases[i].param) &&
                      !strcmp(c.err, cases[i].err),
                  "case %zu: rc %d param \"%s\" err \"%s\"; want \"%s\" \"%s\"", i, c.rc, c.param,
                  c.err, cases[i].param, cases[i].err);
        CHECK_EQ_STR(c.name, "-");
        CHECK_EQ_STR(c.path, "-");
    }
    /* A path as long as the buffer is refused, one byte shorter taken. */
    static char body[4096 + 64];
    char path[4097];
    memset(path, 'p', 4095);
    path[4095] = 0;
    snprintf(body, sizeof body, "{\"lora_name\":\"fr\",\"lora_path\":\"%s\"}", path);
    lora_case c = lora_parse(body);
    CHECK_EQ_INT(c.rc, 0);
    CHECK_EQ_INT(strlen(c.path), 4095);
    snprintf(body, sizeof body, "{\"lora_name\":\"fr\",\"lora_path\":\"%sp\"}", path);
    c = lora_parse(body);
    CHECK_EQ_INT(c.rc, -EINVAL);
    CHECK_EQ_STR(c.param, "lora_path");
}
