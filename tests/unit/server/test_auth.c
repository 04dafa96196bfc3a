/* Tests for server/auth.c: key configuration, Bearer parsing, the comparison, and which key
 * opens which route. */
#include <errno.h>
#include <string.h>

#include "server/auth.h"
#include "tests/test.h"

TEST(auth_key_equal)
{
    srv_auth a;
    char err[128];
    CHECK_EQ_INT(srv_auth_init(&a, "sekret", NULL, err, sizeof err), 0);
    CHECK(srv_key_equal("sekret", a.api_key, a.api_len));
    CHECK(!srv_key_equal("sekreT", a.api_key, a.api_len));
    CHECK(!srv_key_equal("sekre", a.api_key, a.api_len));
    CHECK(!srv_key_equal("sekret ", a.api_key, a.api_len));
    CHECK(!srv_key_equal("", a.api_key, a.api_len));
    CHECK(!srv_key_equal(NULL, a.api_key, a.api_len));
    char longer[SRV_KEY_MAX + 20];
    memset(longer, 's', sizeof longer - 1);
    longer[sizeof longer - 1] = 0;
    CHECK(!srv_key_equal(longer, a.api_key, a.api_len));
    /* No key configured never matches, not even an empty one. */
    CHECK(!srv_key_equal("", a.admin_key, a.admin_len));
    /* A key of the maximal length. */
    char max[SRV_KEY_MAX + 1];
    memset(max, 'k', SRV_KEY_MAX);
    max[SRV_KEY_MAX] = 0;
    CHECK_EQ_INT(srv_auth_init(&a, max, NULL, err, sizeof err), 0);
    CHECK(srv_key_equal(max, a.api_key, a.api_len));
    max[SRV_KEY_MAX - 1] = 'j';
    CHECK(!srv_key_equal(max, a.api_key, a.api_len));
}

TEST(auth_init_refuses)
{
    srv_auth a;
    char err[128] = "";
    char big[SRV_KEY_MAX + 2];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = 0;
    CHECK_EQ_INT(srv_auth_init(&a, big, NULL, err, sizeof err), -EINVAL);
    CHECK_MSG(strstr(err, "--api-key") != NULL, "%s", err);
    CHECK_EQ_INT(srv_auth_init(&a, "ok", "two words", err, sizeof err), -EINVAL);
    CHECK_MSG(strstr(err, "--admin-key") != NULL, "%s", err);
    CHECK_EQ_INT(srv_auth_init(&a, "", NULL, err, sizeof err), 0);
    CHECK_EQ_INT(a.api_len, 0);
}

TEST(auth_bearer_parse)
{
    char k[16];
    CHECK_EQ_INT(srv_auth_bearer("Bearer abc", k, sizeof k), 0);
    CHECK_EQ_STR(k, "abc");
    CHECK_EQ_INT(srv_auth_bearer("  bearer \t abc  ", k, sizeof k), 0);
    CHECK_EQ_STR(k, "abc");
    CHECK_EQ_INT(srv_auth_bearer("Basic abc", k, sizeof k), -1);
    CHECK_EQ_INT(srv_auth_bearer("Bearerabc", k, sizeof k), -1);
    CHECK_EQ_INT(srv_auth_bearer("Bearer ", k, sizeof k), -1);
    CHECK_EQ_INT(srv_auth_bearer(NULL, k, sizeof k), -1);
    CHECK_EQ_INT(srv_auth_bearer("Bearer 0123456789abcdef", k, sizeof k), -1); /* too long */
}

TEST(auth_routes)
{
    srv_auth a;
    char err[128], msg[200];
    /* No keys: everything open. */
    CHECK_EQ_INT(srv_auth_init(&a, NULL, NULL, err, sizeof err), 0);
    CHECK_EQ_INT(srv_auth_check(&a, NULL, false, msg, sizeof msg), 0);
    CHECK_EQ_INT(srv_auth_check(&a, NULL, true, msg, sizeof msg), 0);
    /* Api key only: it opens admin routes too. */
    CHECK_EQ_INT(srv_auth_init(&a, "api", NULL, err, sizeof err), 0);
    CHECK_EQ_INT(srv_auth_check(&a, NULL, false, msg, sizeof msg), 401);
    CHECK_EQ_INT(srv_auth_check(&a, "Bearer nope", false, msg, sizeof msg), 401);
    CHECK_EQ_STR(msg, "incorrect API key");
    CHECK_EQ_INT(srv_auth_check(&a, "Bearer api", false, msg, sizeof msg), 0);
    CHECK_EQ_INT(srv_auth_check(&a, "Bearer api", true, msg, sizeof msg), 0);
    /* Both: the api key is refused on admin routes, the admin key opens everything. */
    CHECK_EQ_INT(srv_auth_init(&a, "api", "adm", err, sizeof err), 0);
    CHECK_EQ_INT(srv_auth_check(&a, "Bearer api", true, msg, sizeof msg), 401);
    CHECK_MSG(strstr(msg, "admin key") != NULL, "%s", msg);
    CHECK_EQ_INT(srv_auth_check(&a, "Bearer adm", true, msg, sizeof msg), 0);
    CHECK_EQ_INT(srv_auth_check(&a, "Bearer adm", false, msg, sizeof msg), 0);
    CHECK_EQ_INT(srv_auth_check(&a, "Bearer api", false, msg, sizeof msg), 0);
    /* Admin key only: ordinary routes are open, admin routes need it. */
    CHECK_EQ_INT(srv_auth_init(&a, NULL, "adm", err, sizeof err), 0);
    CHECK_EQ_INT(srv_auth_check(&a, NULL, false, msg, sizeof msg), 0);
    CHECK_EQ_INT(srv_auth_check(&a, NULL, true, msg, sizeof msg), 401);
    CHECK_EQ_INT(srv_auth_check(&a, "Bearer adm", true, msg, sizeof msg), 0);
}
