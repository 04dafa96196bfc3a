/* Tests for server/strbuf.c: growth, printf, and JSON string escaping of every kind of byte. */
#include <stdlib.h>
#include <string.h>

#include "server/strbuf.h"
#include "tests/test.h"

static char *esc(const char *s, size_t n)
{
    srv_buf b;
    srv_buf_init(&b);
    srv_buf_json_str(&b, s, n);
    return srv_buf_take(&b, NULL);
}

TEST(strbuf_grows_and_prints)
{
    srv_buf b;
    srv_buf_init(&b);
    for (int i = 0; i < 1000; i++)
        srv_buf_printf(&b, "%d,", i);
    CHECK(srv_buf_ok(&b));
    CHECK_EQ_INT(strncmp(b.data, "0,1,2,", 6), 0);
    CHECK_EQ_INT(b.len, strlen(b.data));
    char big[600];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = 0;
    srv_buf_reset(&b);
    srv_buf_printf(&b, "<%s>", big); /* longer than printf's stack buffer */
    CHECK_EQ_INT(b.len, sizeof big + 1);
    CHECK(b.data[0] == '<' && b.data[b.len - 1] == '>');
    size_t n;
    char *t = srv_buf_take(&b, &n);
    CHECK_EQ_INT(n, sizeof big + 1);
    CHECK(b.data == NULL && b.len == 0);
    free(t);
    srv_buf_deinit(&b);
}

TEST(strbuf_json_escapes)
{
    static const struct {
        const char *in;
        size_t n;
        const char *out;
    } cases[] = {
        {"plain", 5, "\"plain\""},
        {"a\"b\\c", 5, "\"a\\\"b\\\\c\""},
        {"l1\nl2\r\t", 7, "\"l1\\nl2\\r\\t\""},
        {"\b\f\x01\x1f", 4, "\"\\b\\f\\u0001\\u001f\""},
        {"nul\0x", 5, "\"nul\\u0000x\""},
        {"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", 14,
         "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\""},
        {"\xe2\x80\xa8|\xe2\x80\xa9", 7, "\"\\u2028|\\u2029\""},
        {"bad\xff", 4, "\"bad\\ufffd\""},
        {"cut\xe2\x82", 5, "\"cut\\ufffd\\ufffd\""},
        {"\xc0\xaf", 2, "\"\\ufffd\\ufffd\""},            /* overlong '/' */
        {"\xed\xa0\x80", 3, "\"\\ufffd\\ufffd\\ufffd\""}, /* surrogate */
        {"\x7f", 1, "\"\x7f\""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *got = esc(cases[i].in, cases[i].n);
        CHECK_MSG(got && !strcmp(got, cases[i].out), "case %zu: %s != %s", i, got ? got : "(null)",
                  cases[i].out);
        free(got);
    }
}

TEST(strbuf_json_numbers_and_null)
{
    srv_buf b;
    srv_buf_init(&b);
    srv_buf_json_float(&b, -0.5);
    srv_buf_putc(&b, ' ');
    srv_buf_json_float(&b, -INFINITY);
    srv_buf_putc(&b, ' ');
    srv_buf_json_float(&b, NAN);
    srv_buf_putc(&b, ' ');
    srv_buf_json_cstr(&b, NULL);
    CHECK_EQ_STR(b.data, "-0.5 -9999.0 null null");
    srv_buf_deinit(&b);
}
