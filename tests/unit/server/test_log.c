/* Tests for server/log.c: the timestamp, both line formats and their escaping, request ids. */
#include <stdlib.h>
#include <string.h>

#include "server/log.h"
#include "tests/test.h"

static char *line(srv_log_format f, const char *msg, const srv_log_field *fields, int n)
{
    struct timespec t = {.tv_sec = 1796605323, .tv_nsec = 456789000}; /* 2026-12-07T01:02:03 */
    srv_buf b;
    srv_buf_init(&b);
    srv_log_format_line(&b, f, &t, SRV_LOG_INFO, msg, fields, n);
    return srv_buf_take(&b, NULL);
}

TEST(log_timestamp_rfc3339_utc_ms)
{
    char ts[32];
    struct timespec t = {.tv_sec = 1796605323, .tv_nsec = 456789000};
    srv_log_timestamp(ts, &t);
    CHECK_EQ_STR(ts, "2026-12-07T01:02:03.456Z");
    t = (struct timespec){.tv_sec = 0, .tv_nsec = 999999999};
    srv_log_timestamp(ts, &t);
    CHECK_EQ_STR(ts, "1970-01-01T00:00:00.999Z");
    t = (struct timespec){.tv_sec = 951782400, .tv_nsec = 7000000}; /* a leap day */
    srv_log_timestamp(ts, &t);
    CHECK_EQ_STR(ts, "2000-02-29T00:00:00.007Z");
}

TEST(log_json_line_escapes_message_and_fields)
{
    srv_log_field f[] = {
        SRV_LOG_STR("request_id", "a\"b\\c\nd\x01"),
        SRV_LOG_INT("status", 200),
        SRV_LOG_MS("ttft_ms", 12.34),
        SRV_LOG_STR("absent", NULL),
        SRV_LOG_MS("absent_ms", -1),
    };
    f[1].json_only = true;
    char *got = line(SRV_LOG_JSON, "say \"hi\"\r\n\tbye\x1f\xff", f, 5);
    CHECK_EQ_STR(got, "{\"ts\":\"2026-12-07T01:02:03.456Z\",\"level\":\"info\","
                      "\"msg\":\"say \\\"hi\\\"\\r\\n\\tbye\\u001f\\ufffd\","
                      "\"request_id\":\"a\\\"b\\\\c\\nd\\u0001\",\"status\":200,\"ttft_ms\":12.3}");
    free(got);
}

TEST(log_text_line_keeps_one_line)
{
    srv_log_field f[] = {
        SRV_LOG_STR("request_id", "abc-123"),
        SRV_LOG_STR("user", "two words\nadaptree: forged"),
        SRV_LOG_STR("empty", ""),
        SRV_LOG_INT("status", 404),
        SRV_LOG_MS("duration_ms", 3),
    };
    f[3].json_only = true;
    char *got = line(SRV_LOG_TEXT, "a\nb\x7f", f, 5);
    CHECK_EQ_STR(got, "2026-12-07T01:02:03.456Z adaptree: info: a\\nb\\x7f request_id=abc-123 "
                      "user=\"two words\\nadaptree: forged\" empty=\"\" duration_ms=3.0");
    CHECK(strchr(got, '\n') == NULL);
    free(got);
}

TEST(log_parse_level_and_format)
{
    CHECK_EQ_INT(srv_log_parse("debug"), SRV_LOG_DEBUG);
    CHECK_EQ_INT(srv_log_parse("loud"), -1);
    CHECK_EQ_INT(srv_log_parse_format("text"), SRV_LOG_TEXT);
    CHECK_EQ_INT(srv_log_parse_format("json"), SRV_LOG_JSON);
    CHECK_EQ_INT(srv_log_parse_format("JSON"), -1);
    CHECK_EQ_INT(srv_log_parse_format(""), -1);
}

static int is_hex32(const char *s)
{
    if (strlen(s) != 32)
        return 0;
    for (; *s; s++)
        if (!strchr("0123456789abcdef", *s))
            return 0;
    return 1;
}

TEST(log_request_id_sanitizes)
{
    char id[SRV_REQUEST_ID_MAX + 1], id2[SRV_REQUEST_ID_MAX + 1];
    CHECK(srv_log_request_id("abc-123", id));
    CHECK_EQ_STR(id, "abc-123");
    CHECK(srv_log_request_id("with space ~!", id));
    CHECK_EQ_STR(id, "with space ~!");
    char max[SRV_REQUEST_ID_MAX + 2];
    memset(max, 'x', SRV_REQUEST_ID_MAX);
    max[SRV_REQUEST_ID_MAX] = 0;
    CHECK(srv_log_request_id(max, id));
    CHECK_EQ_STR(id, max);
    /* replaced: too long, control characters, non-ASCII, empty, absent */
    max[SRV_REQUEST_ID_MAX] = 'x';
    max[SRV_REQUEST_ID_MAX + 1] = 0;
    const char *bad[] = {max, "a\nb", "tab\there", "caf\xc3\xa9", "del\x7f", ""};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        CHECK_MSG(!srv_log_request_id(bad[i], id), "case %zu kept", i);
        CHECK_MSG(is_hex32(id), "case %zu: generated '%s'", i, id);
    }
    CHECK(!srv_log_request_id(NULL, id));
    CHECK(!srv_log_request_id(NULL, id2));
    CHECK_MSG(is_hex32(id) && is_hex32(id2) && strcmp(id, id2) != 0, "%s vs %s", id, id2);
}
