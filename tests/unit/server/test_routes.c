/* Tests for the pure parts of server/routes.c: route matching and selection labels. */
#include <string.h>

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
