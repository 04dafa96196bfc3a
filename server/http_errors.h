/* How the engine's errors look on the wire: the one table from an error kind (srv_err, in the
 * engine's words: bad input, not found, unavailable, ...) to its HTTP status and OpenAI error
 * type and code. Everything that answers an engine or registry error goes through it, so a kind
 * never gets two statuses in two places.
 */
#ifndef ADAPTREE_SERVER_HTTP_ERRORS_H
#define ADAPTREE_SERVER_HTTP_ERRORS_H

#include "server/engine.h"
#include "server/http.h"

typedef struct srv_wire_error {
    int status;       /* 400, 404, 422, 429, 500, 503 */
    const char *type; /* "invalid_request_error", "rate_limit_error", "server_error" */
    const char *code; /* "model_not_found", "adapter_load_failed", "queue_full",
                         "shutting_down", or NULL */
} srv_wire_error;

/* The wire form of a kind (an unknown one is a 500). Pure. */
srv_wire_error srv_wire_error_of(srv_err e);

/* The kind of a srv_engine_submit refusal: -EAGAIN BUSY, -ESHUTDOWN SHUTTING_DOWN, anything
 * else INTERNAL. Pure. */
srv_err srv_err_of_submit(int rc);

/* Answers the request with the kind's status and OpenAI error object (param may be NULL). Handler
 * threads. */
void srv_reply_err(srv_http_req *req, srv_err e, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Appends the kind's error as a server-sent event (a stream that fails after it began). */
void srv_event_err(srv_buf *out, srv_err e, const char *message);

#endif
