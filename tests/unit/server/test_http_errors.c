/* Tests for server/http_errors.c: each engine error kind's status, OpenAI type and code, and
 * srv_engine_submit's refusals. */
#include <errno.h>

#include "server/http_errors.h"
#include "tests/test.h"

TEST(http_errors_table)
{
    static const struct {
        srv_err e;
        int status;
        const char *type, *code;
    } want[] = {
        {SRV_ERR_BAD_INPUT, 400, "invalid_request_error", NULL},
        {SRV_ERR_NOT_FOUND, 404, "invalid_request_error", "model_not_found"},
        {SRV_ERR_UNLOADABLE, 422, "invalid_request_error", "adapter_load_failed"},
        {SRV_ERR_UNAVAILABLE, 503, "server_error", NULL},
        {SRV_ERR_SHUTTING_DOWN, 503, "server_error", "shutting_down"},
        {SRV_ERR_BUSY, 429, "rate_limit_error", "queue_full"},
        {SRV_ERR_INTERNAL, 500, "server_error", NULL},
        {(srv_err)99, 500, "server_error", NULL},
    };
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        srv_wire_error w = srv_wire_error_of(want[i].e);
        CHECK_MSG(w.status == want[i].status && !strcmp(w.type, want[i].type) &&
                      (w.code == want[i].code ||
                       (w.code && want[i].code && !strcmp(w.code, want[i].code))),
                  "%s: %d %s %s", srv_err_name(want[i].e), w.status, w.type,
                  w.code ? w.code : "null");
    }
    CHECK_EQ_INT(srv_err_of_submit(-EAGAIN), SRV_ERR_BUSY);
    CHECK_EQ_INT(srv_err_of_submit(-ESHUTDOWN), SRV_ERR_SHUTTING_DOWN);
    CHECK_EQ_INT(srv_err_of_submit(-EINVAL), SRV_ERR_INTERNAL);
    CHECK_EQ_STR(srv_err_name(SRV_ERR_UNLOADABLE), "unloadable");
}
