/* Golden chat-template test: every case of tests/golden/fixtures/chat_templates.json (renders by
 * jinja2 in transformers' environment, made by tests/reference/make_chat_fixtures.py) must render
 * byte for byte the same through core_chat_template_render, or fail the same way: a template's
 * raise_exception with the same message, any other jinja2 error with some error. The templates
 * are read from where the fixture says (models/vocab/templates from `make vocab`, the default
 * model's GGUF, or the fixture itself) and must have the fixture's sha256. A mismatch prints the
 * first differing byte with both sides around it. */
#include <cJSON.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/format/gguf.h"
#include "core/text/tokenizer.h"
#include "tests/test.h"

#define FIXTURE "tests/golden/fixtures/chat_templates.json"
#define MAX_MSGS 32

/* --- templates ------------------------------------------------------------------------------ */

/* The template's text from where the fixture says (malloc'd), or NULL with *why. */
static char *template_text(const cJSON *t, const char **why)
{
    const char *text = cJSON_GetStringValue(cJSON_GetObjectItem(t, "text"));
    const char *path = cJSON_GetStringValue(cJSON_GetObjectItem(t, "path"));
    if (text)
        return strdup(text);
    if (!path)
        return *why = "no text or path", NULL;
    size_t n = strlen(path);
    if (n < 5 || strcmp(path + n - 5, ".gguf") != 0) {
        char *s = test_read_file(path, NULL);
        *why = "absent: run make vocab";
        return s;
    }
    char err[256];
    core_gguf *g = core_gguf_open(path, err, sizeof err);
    core_gguf_str v;
    char *s = NULL;
    if (g && core_gguf_get_strv(g, "tokenizer.chat_template", &v) == 0 && (s = malloc(v.len + 1))) {
        memcpy(s, v.ptr, v.len);
        s[v.len] = '\0';
    }
    core_gguf_close(g);
    *why = "absent: run make model";
    return s;
}

static void show_diff(const char *name, const char *c, const char *ours, const char *ref)
{
    size_t i = 0;
    while (ours[i] && ours[i] == ref[i])
        i++;
    size_t from = i > 40 ? i - 40 : 0;
    test_fail(__FILE__, __LINE__,
              "%s/%s: first difference at byte %zu (ours %zu bytes, ref %zu)\n"
              "      ours ...\"%.80s\"\n      ref  ...\"%.80s\"",
              name, c, i, strlen(ours), strlen(ref), ours + from, ref + from);
}

/* Checks one case; returns 1 if it passes. */
static int run_case(const core_chat_template *ct, const cJSON *tmpl, const cJSON *c, int64_t now)
{
    const char *name = cJSON_GetStringValue(cJSON_GetObjectItem(c, "template"));
    const char *cname = cJSON_GetStringValue(cJSON_GetObjectItem(c, "case"));
    const char *want = cJSON_GetStringValue(cJSON_GetObjectItem(c, "expected"));
    const char *want_err = cJSON_GetStringValue(cJSON_GetObjectItem(c, "error"));
    bool raised = cJSON_IsTrue(cJSON_GetObjectItem(c, "raised"));
    core_chat_msg m[MAX_MSGS];
    size_t n = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItem(c, "messages"))
    {
        if (n == MAX_MSGS)
            return test_fail(__FILE__, __LINE__, "%s/%s: too many messages", name, cname), 0;
        m[n].role = cJSON_GetStringValue(cJSON_GetObjectItem(it, "role"));
        m[n++].content = cJSON_GetStringValue(cJSON_GetObjectItem(it, "content"));
    }
    core_chat_opts o = {.add_generation_prompt =
                            cJSON_IsTrue(cJSON_GetObjectItem(c, "add_generation_prompt")),
                        .bos_token = cJSON_GetStringValue(cJSON_GetObjectItem(tmpl, "bos_token")),
                        .eos_token = cJSON_GetStringValue(cJSON_GetObjectItem(tmpl, "eos_token")),
                        .now = now};
    char err[256] = "", *out = NULL;
    int rc = core_chat_template_render(ct, m, n, &o, &out, err, sizeof err);
    int ok = 0;
    if (want && rc == 0) {
        ok = !strcmp(out, want);
        if (!ok)
            show_diff(name, cname, out, want);
    } else if (want) {
        test_fail(__FILE__, __LINE__, "%s/%s: rc %d (%s), want a render", name, cname, rc, err);
    } else if (rc == 0) {
        test_fail(__FILE__, __LINE__, "%s/%s: rendered, want the error \"%s\"", name, cname,
                  want_err ? want_err : "?");
    } else {
        ok = !raised || (rc == -EINVAL && want_err && !strcmp(err, want_err));
        if (!ok)
            test_fail(__FILE__, __LINE__, "%s/%s: rc %d \"%s\", want raise_exception(\"%s\")", name,
                      cname, rc, err, want_err ? want_err : "?");
    }
    free(out);
    return ok;
}

/* Runs every case of one template; returns the number of cases, *passed counts passes. */
static int run_template(const cJSON *j, const cJSON *tmpl, int64_t now, int *passed, int *skipped)
{
    const char *name = cJSON_GetStringValue(cJSON_GetObjectItem(tmpl, "name"));
    const char *sha = cJSON_GetStringValue(cJSON_GetObjectItem(tmpl, "sha256"));
    const char *why = "";
    char *text = template_text(tmpl, &why), hex[65], err[256] = "";
    if (!text) {
        printf("    %-38s skipped: %s\n", name, why);
        (*skipped)++;
        return 0;
    }
    test_sha256_hex(text, strlen(text), hex);
    core_chat_template *ct = NULL;
    int rc = strcmp(hex, sha ? sha : "") ? 1 : core_chat_template_new(text, &ct, err, sizeof err);
    free(text);
    if (rc) {
        test_fail(__FILE__, __LINE__, "%s: %s", name,
                  rc > 0 ? "the template's sha256 is not the fixture's: run make vocab / "
                           "make_chat_fixtures.py"
                         : err);
        return 0;
    }
    int n = 0, ok = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(j, "cases"))
    {
        const char *t = cJSON_GetStringValue(cJSON_GetObjectItem(c, "template"));
        if (t && !strcmp(t, name)) {
            n++;
            ok += run_case(ct, tmpl, c, now);
        }
    }
    core_chat_template_free(ct);
    printf("    %-38s %d/%d\n", name, ok, n);
    *passed += ok;
    return n;
}

TEST(golden_chat_templates)
{
    char *buf = test_read_file(FIXTURE, NULL);
    cJSON *j = buf ? cJSON_Parse(buf) : NULL;
    free(buf);
    CHECK_MSG(j, "cannot read %s", FIXTURE);
    int64_t now = (int64_t)cJSON_GetNumberValue(cJSON_GetObjectItem(j, "now"));
    int total = 0, passed = 0, skipped = 0, n_templates = 0;
    const cJSON *t;
    cJSON_ArrayForEach(t, cJSON_GetObjectItem(j, "templates"))
    {
        n_templates++;
        total += run_template(j, t, now, &passed, &skipped);
    }
    cJSON_Delete(j);
    printf("    %d/%d chat template renders identical to jinja2\n", passed, total);
    if (skipped == n_templates)
        TEST_SKIP("no template file present: run make vocab");
    CHECK(total > 0);
    CHECK_EQ_INT(passed, total);
}
