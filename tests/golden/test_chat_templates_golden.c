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

/* --- sha256 (FIPS 180-4), to check a template is the fixture's ------------------------------ */

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

static uint32_t ror(uint32_t x, int n)
{
    return x >> n | x << (32 - n);
}

static void sha_block(uint32_t h[8], const uint8_t *p)
{
    uint32_t w[64], v[8];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++)
        w[i] = w[i - 16] + (ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >> 3)) + w[i - 7] +
               (ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >> 10));
    memcpy(v, h, sizeof v);
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = v[7] + (ror(v[4], 6) ^ ror(v[4], 11) ^ ror(v[4], 25)) +
                      ((v[4] & v[5]) ^ (~v[4] & v[6])) + K[i] + w[i];
        uint32_t t2 = (ror(v[0], 2) ^ ror(v[0], 13) ^ ror(v[0], 22)) +
                      ((v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]));
        memmove(v + 1, v, 7 * sizeof *v);
        v[4] += t1;
        v[0] = t1 + t2;
    }
    for (int i = 0; i < 8; i++)
        h[i] += v[i];
}

static void sha256_hex(const char *s, size_t n, char hex[65])
{
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                     0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    uint8_t tail[128] = {0};
    size_t full = n / 64 * 64, rest = n - full;
    for (size_t i = 0; i < full; i += 64)
        sha_block(h, (const uint8_t *)s + i);
    memcpy(tail, s + full, rest);
    tail[rest] = 0x80;
    size_t len = rest + 9 <= 64 ? 64 : 128;
    uint64_t bits = (uint64_t)n * 8;
    for (int i = 0; i < 8; i++)
        tail[len - 1 - (size_t)i] = (uint8_t)(bits >> (8 * i));
    for (size_t i = 0; i < len; i += 64)
        sha_block(h, tail + i);
    for (int i = 0; i < 8; i++)
        snprintf(hex + 8 * i, 9, "%08x", h[i]);
}

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
    sha256_hex(text, strlen(text), hex);
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
