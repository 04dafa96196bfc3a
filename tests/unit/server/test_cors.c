/* Tests for server/cors.c: which --cors-origin values are taken, and which Origin gets which
 * Access-Control-Allow-Origin. */
#include <string.h>

#include "server/cors.h"
#include "tests/test.h"

TEST(cors_origin_values)
{
    static const char *const good[] = {"*", "http://localhost:3000", "https://app.example.com",
                                       "http://[::1]:8080", "https://a-b.example"};
    static const char *const bad[] = {"",           "app.example.com",           "ftp://x",
                                      "https://",   "https://app.example.com/",  "https://x/path",
                                      "http://a b", "http://x\r\nSet-Cookie: 1", "**"};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++)
        CHECK_MSG(srv_cors_origin_ok(good[i]), "refused '%s'", good[i]);
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        CHECK_MSG(!srv_cors_origin_ok(bad[i]), "took '%s'", bad[i]);
}

TEST(cors_allow)
{
    srv_cors c;
    char err[256] = "";
    const char *list[] = {"http://localhost:3000,https://app.example.com", "http://b.example"};
    CHECK_EQ_INT(srv_cors_init(&c, list, 2, err, sizeof err), 0);
    CHECK_EQ_INT(c.n, 3);
    CHECK_EQ_STR(srv_cors_allow(&c, "https://app.example.com"), "https://app.example.com");
    CHECK_EQ_STR(srv_cors_allow(&c, "http://b.example"), "http://b.example");
    CHECK(srv_cors_allow(&c, "https://evil.example") == NULL);
    CHECK(srv_cors_allow(&c, "https://app.example.com.evil") == NULL);
    CHECK(srv_cors_allow(&c, NULL) == NULL);
    const char *star[] = {"*"};
    CHECK_EQ_INT(srv_cors_init(&c, star, 1, err, sizeof err), 0);
    CHECK_EQ_STR(srv_cors_allow(&c, "https://any.example"), "*");
    CHECK(srv_cors_allow(&c, NULL) == NULL); /* not a CORS request */
    CHECK_EQ_INT(srv_cors_init(&c, NULL, 0, err, sizeof err), 0);
    CHECK(srv_cors_allow(&c, "https://app.example.com") == NULL); /* off */
    CHECK(srv_cors_allow(NULL, "https://app.example.com") == NULL);
    const char *badv[] = {"http://ok.example,https://x/path"};
    CHECK(srv_cors_init(&c, badv, 1, err, sizeof err) < 0);
    CHECK_MSG(strstr(err, "bad value 'https://x/path' for --cors-origin") != NULL, "%s", err);
}
