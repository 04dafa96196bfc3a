/* The engine's error kinds on the wire (server/http_errors.h). */
#include "server/http_errors.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>

#include "server/response.h"

static const srv_wire_error wire[] = {
    [SRV_ERR_NONE] = {500, "server_error", NULL},
    [SRV_ERR_BAD_INPUT] = {400, "invalid_request_error", NULL},
    [SRV_ERR_NOT_FOUND] = {404, "invalid_request_error", "model_not_found"},
    [SRV_ERR_UNLOADABLE] = {422, "invalid_request_error", "adapter_load_failed"},
    [SRV_ERR_UNAVAILABLE] = {503, "server_error", NULL},
    [SRV_ERR_SHUTTING_DOWN] = {503, "server_error", "shutting_down"},
    [SRV_ERR_BUSY] = {429, "rate_limit_error", "queue_full"},
    [SRV_ERR_INTERNAL] = {500, "server_error", NULL},
};

srv_wire_error srv_wire_error_of(srv_err e)
{
    return (unsigned)e < sizeof wire / sizeof *wire ? wire[e] : wire[SRV_ERR_INTERNAL];
}

srv_err srv_err_of_submit(int rc)
{
    return rc == -EAGAIN      ? SRV_ERR_BUSY
           : rc == -ESHUTDOWN ? SRV_ERR_SHUTTING_DOWN
                              : SRV_ERR_INTERNAL;
}

void srv_reply_err(srv_http_req *req, srv_err e, const char *param, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    srv_wire_error w = srv_wire_error_of(e);
    srv_http_reply_error(req, w.status, w.type, w.code, param, "%s", msg);
}

void srv_event_err(srv_buf *out, srv_err e, const char *message)
{
    srv_wire_error w = srv_wire_error_of(e);
    srv_resp_error_event(out, message, w.type, w.code);
}
