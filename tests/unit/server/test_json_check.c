/* Tests for server/json_check.c on its own: the compact copy handed to cJSON (whitespace dropped,
 * \u0000 and raw 0xFF substituted, everything else byte for byte), grammar corner cases, and the
 * UTF-8 check against every boundary of Table 3-7. The messages a client sees are checked through
 * srv_request_parse in test_request.c. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "server/json_check.h"
#include "tests/test.h"

static int check(const char *in, size_t n, char *out, size_t *outlen, char *err)
{
    return srv_json_check(in, n, out, outlen, err, 128);
}

TEST(req_json_compact_copy)
{
    static const char in[] = " {\"a\" :\t[1, -0.5e+3, true,false ,null],\r\n\"b\\u0000\": "
                             "\"x\\u0000y\xff\\\"\\u00e9\\ud83d\\ude00\"} \n";
    static const char want[] = "{\"a\":[1,-0.5e+3,true,false,null],\"b\xff\":"
                               "\"x\xffy\xfe\\\"\\u00e9\\ud83d\\ude00\"}";
    char out[sizeof in], err[128];
    size_t n = 99;
    CHECK_EQ_INT(check(in, sizeof in - 1, out, &n, err), 0);
    CHECK_EQ_INT(n, sizeof want - 1);
    CHECK_MSG(memcmp(out, want, n) == 0 && out[n] == 0, "copy \"%s\"", out);
    CHECK_EQ_STR(err, "");
    /* Scalars are values too; the request layer refuses them afterwards. */
    CHECK_EQ_INT(check("0", 1, out, &n, err), 0);
    CHECK_EQ_INT(check(" \"\" ", 4, out, &n, err), 0);
    CHECK_EQ_STR(out, "\"\"");
}

TEST(req_json_grammar_corners)
{
    static const struct {
        const char *in;
        int rc;
        const char *msg;
    } cases[] = {
        {"-0", 0, ""},
        {"1E5", 0, ""},
        {"[0.0e-0]", 0, ""},
        {"-", -EINVAL, "invalid JSON at byte 0: invalid number"},
        {"-a", -EINVAL, "invalid JSON at byte 0: invalid number"},
        {"1e", -EINVAL, "invalid JSON at byte 0: invalid number"},
        {"1.e3", -EINVAL, "invalid JSON at byte 0: invalid number"},
        {"-01", -EINVAL, "invalid JSON at byte 0: number with a leading zero"},
        {"[1 2]", -EINVAL, "invalid JSON at byte 3: expected ',' or ']'"},
        {"[,1]", -EINVAL, "invalid JSON at byte 1: expected a value"},
        {"{\"a\":1,}", -EINVAL, "invalid JSON at byte 7: expected a string key"},
        {"{\"a\"}", -EINVAL, "invalid JSON at byte 4: expected ':'"},
        {"nul", -EINVAL, "invalid JSON at byte 0: expected a value"},
        {"\"\\", -EINVAL, "invalid JSON: the body ends inside a string at byte 2"},
        {"\"\\u12", -EINVAL, "invalid JSON at byte 1: invalid escape sequence"},
        {"\"\\ud83d\\u", -EINVAL, "invalid JSON at byte 1: unpaired UTF-16 surrogate \\ud83d"},
        {"\"\x7f\"", 0, ""}, /* DEL is not a control character for JSON */
        {"\"\x1f\"", -EINVAL,
         "invalid JSON at byte 1: control character 0x1f must be escaped in a string"},
        {"[]]", -EINVAL, "invalid JSON at byte 2: unexpected data after the value"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char out[64], err[128];
        size_t n;
        int rc = check(cases[i].in, strlen(cases[i].in), out, &n, err);
        CHECK_MSG(rc == cases[i].rc && !strcmp(err, cases[i].msg),
                  "%s: rc %d \"%s\", want %d \"%s\"", cases[i].in, rc, err, cases[i].rc,
                  cases[i].msg);
    }
}

TEST(req_json_depth)
{
    char in[2 * SRV_JSON_DEPTH_MAX + 4], out[sizeof in], err[128];
    size_t n;
    for (int d = SRV_JSON_DEPTH_MAX; d <= SRV_JSON_DEPTH_MAX + 1; d++) {
        memset(in, '[', (size_t)d);
        memset(in + d, ']', (size_t)d);
        int rc = check(in, (size_t)(2 * d), out, &n, err);
        CHECK_EQ_INT(rc, d == SRV_JSON_DEPTH_MAX ? 0 : -E2BIG);
    }
    CHECK_EQ_STR(err, "nested deeper than 64 levels at byte 64");
}

TEST(req_json_utf8_boundaries)
{
    static const struct {
        const char *s;
        size_t bad; /* (size_t)-1: valid */
    } cases[] = {
        {"\x7f", (size_t)-1},
        {"\xc2\x80", (size_t)-1},         /* U+0080 */
        {"\xc1\xbf", 0},                  /* overlong U+007F */
        {"\xdf\xbf", (size_t)-1},         /* U+07FF */
        {"\xe0\xa0\x80", (size_t)-1},     /* U+0800 */
        {"\xe0\x9f\xbf", 0},              /* overlong */
        {"\xed\x9f\xbf", (size_t)-1},     /* U+D7FF */
        {"\xed\xa0\x80", 0},              /* U+D800, a surrogate */
        {"\xee\x80\x80", (size_t)-1},     /* U+E000 */
        {"\xef\xbf\xbf", (size_t)-1},     /* U+FFFF */
        {"\xf0\x90\x80\x80", (size_t)-1}, /* U+10000 */
        {"\xf0\x8f\xbf\xbf", 0},          /* overlong */
        {"\xf4\x8f\xbf\xbf", (size_t)-1}, /* U+10FFFF */
        {"\xf4\x90\x80\x80", 0},          /* past U+10FFFF */
        {"\xf5\x80\x80\x80", 0},
        {"a\x80", 1},        /* a lone continuation byte */
        {"ab\xe2\x82", 2},   /* cut short */
        {"\xe2\x82\x28", 0}, /* a bad continuation byte */
        {"ok\xff", 2},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t n = strlen(cases[i].s), got = srv_utf8_check(cases[i].s, n);
        size_t want = cases[i].bad == (size_t)-1 ? n : cases[i].bad;
        CHECK_MSG(got == want, "case %zu: %zu, want %zu", i, got, want);
    }
    CHECK_EQ_INT(srv_utf8_check("", 0), 0);
}
