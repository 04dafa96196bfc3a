/* Golden tokenizer test: every case of tests/golden/fixtures/core_tokens.json (ids from a Hugging
 * Face tokenizers.Tokenizer rebuilt from the GGUF, made by tests/reference/make_core_fixtures.py)
 * must tokenize to identical ids and decode back to its text; every chat render must render to
 * the same text and tokenize to the same ids. The same for Gemma 3's SentencePiece tokenizer and
 * tests/golden/fixtures/gemma_tokens.json (transformers' GGUF tokenizer, cross-checked with
 * llama.cpp; tests/reference/make_gemma_tokens.py). Mismatches print both sides. */
#include <cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/format/gguf.h"
#include "core/text/tokenizer.h"
#include "tests/test.h"

#define FIXTURE "tests/golden/fixtures/core_tokens.json"
#define GEMMA_FIXTURE "tests/golden/fixtures/gemma_tokens.json"
#define GEMMA_MODEL "models/gemma-3-270m-q4_k_m.gguf"

static cJSON *load_fixture(void)
{
    return test_read_json(FIXTURE);
}

static core_tokenizer *golden_tok_of(const char *path)
{
    char err[256] = "";
    core_gguf *g = core_gguf_open(path, err, sizeof err);
    core_tokenizer *t = g ? core_tokenizer_new(g, err, sizeof err) : NULL;
    if (!t)
        printf("    load failed: %s\n", err);
    core_gguf_close(g);
    return t;
}

static core_tokenizer *golden_tok(void)
{
    return golden_tok_of(test_model_path());
}

/* The exact input bytes of a case, from its hex field (malloc'd). */
static char *hex_bytes(const char *hex, size_t *len)
{
    size_t n = strlen(hex) / 2;
    char *s = malloc(n + 1);
    for (size_t i = 0; s && i < n; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1) {
            free(s);
            return NULL;
        }
        s[i] = (char)v;
    }
    if (s)
        s[n] = '\0';
    *len = n;
    return s;
}

static void fmt_ids(char *out, size_t cap, const int32_t *ids, size_t n)
{
    size_t k = 0;
    out[0] = '\0';
    for (size_t i = 0; i < n && k + 16 < cap; i++)
        k += (size_t)snprintf(out + k, cap - k, "%s%d", i ? " " : "", (int)ids[i]);
}

static void fmt_json_ids(char *out, size_t cap, const cJSON *arr)
{
    size_t k = 0;
    const cJSON *it;
    out[0] = '\0';
    cJSON_ArrayForEach(it, arr)
    {
        if (k + 16 >= cap)
            break;
        k += (size_t)snprintf(out + k, cap - k, "%s%d", k ? " " : "", (int)it->valuedouble);
    }
}

/* Tokenizes text and compares with the fixture's ids; prints both sides on a difference. */
static int same_ids(const core_tokenizer *t, const char *name, const char *text, size_t len,
                    bool special, const cJSON *want)
{
    int32_t *ids = NULL;
    size_t n = 0;
    if (core_tokenize(t, text, len, special, &ids, &n) != 0) {
        test_fail(__FILE__, __LINE__, "%s: tokenize failed", name);
        return 0;
    }
    int ok = cJSON_IsArray(want) && (size_t)cJSON_GetArraySize(want) == n;
    for (size_t i = 0; ok && i < n; i++)
        ok = (int32_t)cJSON_GetArrayItem(want, (int)i)->valuedouble == ids[i];
    if (!ok) {
        char a[4096], b[4096];
        fmt_ids(a, sizeof a, ids, n);
        fmt_json_ids(b, sizeof b, want);
        test_fail(__FILE__, __LINE__, "%s: \"%.*s\"\n      ours [%s]\n      ref  [%s]", name,
                  (int)len, text, a, b);
    }
    free(ids);
    return ok;
}

/* True when the vocabulary has no token for this byte alone. */
static bool byte_missing(const core_tokenizer *t, unsigned char b)
{
    int32_t *ids = NULL;
    size_t n = 0;
    char c = (char)b;
    if (core_tokenize(t, &c, 1, false, &ids, &n) < 0)
        return true;
    free(ids);
    return n == 0;
}

/* decode(ids) == text, specials shown. */
static int decodes_to(const core_tokenizer *t, const char *name, const char *text, size_t len,
                      const cJSON *ids)
{
    char *buf = malloc(len + 64);
    size_t k = 0;
    int ok = buf != NULL;
    const cJSON *it;
    cJSON_ArrayForEach(it, ids)
    {
        int m = ok ? core_token_to_bytes(t, (int32_t)it->valuedouble, true, NULL, 0) : -1;
        if (m < 0 || k + (size_t)m > len + 64) {
            ok = 0;
            break;
        }
        core_token_to_bytes(t, (int32_t)it->valuedouble, true, buf + k, (size_t)m);
        k += (size_t)m;
    }
    if (!ok || k != len || memcmp(buf, text, len) != 0) {
        test_fail(__FILE__, __LINE__, "%s: decode gives \"%.*s\", want \"%.*s\"", name,
                  ok ? (int)k : 0, buf ? buf : "", (int)len, text);
        ok = 0;
    }
    free(buf);
    return ok;
}

/* Every case of the fixture j: the ids, and decode back to the text (less the bytes the
 * vocabulary lacks). */
static void check_cases(const cJSON *j, const core_tokenizer *t)
{
    int n_cases = 0, n_ok = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(j, "cases"))
    {
        const char *name = cJSON_GetStringValue(cJSON_GetObjectItem(c, "name"));
        const char *hex = cJSON_GetStringValue(cJSON_GetObjectItem(c, "text_utf8_hex"));
        const cJSON *ids = cJSON_GetObjectItem(c, "ids");
        bool special = cJSON_IsTrue(cJSON_GetObjectItem(c, "parse_special"));
        size_t len = 0;
        char *text = hex ? hex_bytes(hex, &len) : NULL;
        n_cases++;
        if (!t || !name || !text) {
            test_fail(__FILE__, __LINE__, "case %d: bad fixture entry", n_cases);
        } else {
            /* Bytes the vocabulary lacks are dropped (as HF does), so such cases decode to the
             * text without them. */
            char *want = malloc(len + 1);
            size_t want_len = 0;
            for (size_t i = 0; want && i < len; i++)
                if (!byte_missing(t, (unsigned char)text[i]))
                    want[want_len++] = text[i];
            if (want && same_ids(t, name, text, len, special, ids) &&
                decodes_to(t, name, want, want_len, ids))
                n_ok++;
            free(want);
        }
        free(text);
    }
    printf("    %d/%d cases identical\n", n_ok, n_cases);
    CHECK(n_cases > 0);
    CHECK_EQ_INT(n_ok, n_cases);
}

TEST(tok_golden_cases)
{
    TEST_NEED_MODEL();
    cJSON *j = load_fixture();
    CHECK_MSG(j, "cannot read %s", FIXTURE);
    core_tokenizer *t = golden_tok();
    check_cases(j, t);
    core_tokenizer_free(t);
    cJSON_Delete(j);
}

/* Gemma 3's SentencePiece (262k pieces, byte fallback, no dummy prefix) against transformers. */
TEST(tok_golden_gemma3_cases)
{
    if (access(GEMMA_MODEL, R_OK) != 0)
        TEST_SKIP("%s missing (run make gemma)", GEMMA_MODEL);
    cJSON *j = test_read_json(GEMMA_FIXTURE);
    CHECK_MSG(j, "cannot read %s", GEMMA_FIXTURE);
    core_tokenizer *t = golden_tok_of(GEMMA_MODEL);
    check_cases(j, t);
    core_tokenizer_free(t);
    cJSON_Delete(j);
}

TEST(tok_golden_chat_renders)
{
    TEST_NEED_MODEL();
    cJSON *j = load_fixture();
    CHECK_MSG(j, "cannot read %s", FIXTURE);
    core_tokenizer *t = golden_tok();
    int n_cases = 0, n_ok = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(j, "chat_renders"))
    {
        const char *name = cJSON_GetStringValue(cJSON_GetObjectItem(c, "name"));
        const char *want = cJSON_GetStringValue(cJSON_GetObjectItem(c, "rendered"));
        const cJSON *msgs = cJSON_GetObjectItem(c, "messages");
        bool gen = cJSON_IsTrue(cJSON_GetObjectItem(c, "add_generation_prompt"));
        core_chat_msg m[32];
        size_t n = 0;
        const cJSON *it;
        cJSON_ArrayForEach(it, msgs)
        {
            if (n < 32) {
                m[n].role = cJSON_GetStringValue(cJSON_GetObjectItem(it, "role"));
                m[n].content = cJSON_GetStringValue(cJSON_GetObjectItem(it, "content"));
            }
            n++;
        }
        n_cases++;
        char err[256] = "", *out = NULL;
        int rc = t && name && want && n <= 32
                     ? core_chat_render(t, m, n, gen, &out, err, sizeof err)
                     : -1;
        if (rc != 0 || strcmp(out, want) != 0)
            test_fail(__FILE__, __LINE__,
                      "%s: render rc %d (%s)\n      ours \"%s\"\n      ref  \"%s\"",
                      name ? name : "?", rc, err, out ? out : "", want ? want : "");
        else if (same_ids(t, name, out, strlen(out), true, cJSON_GetObjectItem(c, "ids")))
            n_ok++;
        free(out);
    }
    printf("    %d/%d chat renders identical\n", n_ok, n_cases);
    core_tokenizer_free(t);
    cJSON_Delete(j);
    CHECK(n_cases > 0);
    CHECK_EQ_INT(n_ok, n_cases);
}
