/* The HTTP transport: a libmicrohttpd daemon, the life of one request on it, and the wake-up
 * path from the engine back to a waiting connection. What a route answers is server/routes.c;
 * this file only carries bytes and waits.
 *
 * A request goes through a handler (srv_http_handler) in three steps: on_headers once the
 * headers are in (it may answer at once, or says how many body bytes it accepts), on_request
 * once the body is complete (it answers, or asks to wait with srv_http_wait), and on_done when
 * the request is over, answered or not. A request that waits is suspended, never blocked: its
 * connection leaves libmicrohttpd's poll set until somebody calls srv_http_wake with the
 * request's token (srv_http_wake_token), and on_request runs again. A streamed answer
 * (srv_http_reply_stream) pulls its bytes from on_stream, suspending the connection whenever
 * there is nothing to send. What a request waits for (a generation job, a load) is the
 * handler's business: the transport knows a token to wake by and tells the handler, through
 * on_gone, when a waiting client has left.
 *
 * Threads. libmicrohttpd runs a small pool of polling threads; every handler callback runs on
 * the thread that owns the request's connection, one at a time per request, but on_gone, which
 * runs on the main thread (srv_http_sweep). srv_http_wake may be called from any thread; like
 * the sweep it reaches a request only through a slot table (below), under the slot's lock, so a
 * request that has ended is never touched.
 */
#ifndef ADAPTREE_SERVER_HTTP_H
#define ADAPTREE_SERVER_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#include "server/http_conns.h"
#include "server/strbuf.h"

typedef struct srv_http srv_http;
typedef struct srv_http_req srv_http_req;

typedef struct srv_http_handler {
    void *ud;
    /* Headers are in. Answer at once (srv_http_reply*) or return the most body bytes accepted;
     * a larger body is answered 413 by the transport without being buffered. */
    size_t (*on_headers)(void *ud, srv_http_req *req);
    /* The body is complete (first call), or a wait ended (later calls): answer, or
     * srv_http_wait. */
    void (*on_request)(void *ud, srv_http_req *req);
    /* Appends the next bytes of a streamed answer to out (nothing = nothing yet). Returns 1
     * while more will come, 0 when out holds the last bytes, < 0 to cut the connection. */
    int (*on_stream)(void *ud, srv_http_req *req, srv_buf *out);
    /* The client closed its connection while the request waited: stop what it waits for (the
     * request then ends without an answer once woken). Main thread, under the request's lock:
     * must not block, nor call srv_http functions on req. May be NULL. */
    void (*on_gone)(void *ud, srv_http_req *req);
    /* The request is over. status: the status answered, 0 if none was (the client went away or
     * the server stopped first); complete: the whole answer was sent. Frees what the handler
     * attached to the request; once it returns, a srv_http_wake with the request's token is
     * ignored (so whatever holds the token must have let go of it by then). */
    void (*on_done)(void *ud, srv_http_req *req, int status, bool complete);
} srv_http_handler;

typedef struct srv_http_opts {
    const char *host;            /* numeric address or name to bind; "127.0.0.1" */
    int port;                    /* 0 = any free port (see srv_http_port) */
    int threads;                 /* polling threads; 0 = 2 */
    unsigned max_conns;          /* connections for ordinary requests; 0 = 1024 */
    unsigned reserve_conns;      /* more for /health and keyed requests (srv_http_reserved); 0 =
                                    max_conns / 16, at least 8 */
    unsigned per_ip_conns;       /* connections from one address; 0 = no cap */
    double header_timeout_s;     /* a request head must be complete this long after the server
                                    starts waiting for it, whatever trickles in; 0 = no limit */
    double body_timeout_s;       /* a body must be complete this long after its head; 0 = none */
    unsigned idle_timeout_s;     /* a connection idle this long is closed; 0 = never */
    size_t hard_body_limit;      /* a chunked body past its cap is discarded up to this many bytes,
                                    then the connection is cut; 0 = 64 MiB */
    const char *replica;         /* sent as X-Adaptree-Replica on every answer; NULL = none.
                                    Borrowed: outlives the server */
    const struct srv_cors *cors; /* --cors-origin: Access-Control-Allow-Origin on answers to a
                                    matching Origin; NULL = off. Borrowed: outlives the server */
} srv_http_opts;

/* The descriptors a server with these options may hold open for connections (what the process's
 * descriptor limit must leave room for). */
unsigned srv_http_fd_need(const srv_http_opts *o);

/* Binds and starts serving with handler h (copied). NULL with a message when the address cannot
 * be bound or resolved. Main thread. */
srv_http *srv_http_new(const srv_http_opts *o, const srv_http_handler *h, char *err, size_t errlen);
/* The port bound (useful with port 0). */
int srv_http_port(const srv_http *s);

/* Looks at every waiting request whose client might have gone (suspended connections are not
 * polled by libmicrohttpd): for a peer that closed its socket the handler's on_gone stops the
 * work, which ends the wait. Also closes connections past their deadlines (http_conns.h). Call
 * every few hundred milliseconds. Main thread. */
void srv_http_sweep(srv_http *s);
/* Requests in progress (from their headers to their end). Any thread. */
int srv_http_active(srv_http *s);
/* The connection table's counters (server/http_conns.h). Any thread. */
void srv_http_conn_stats(srv_http *s, srv_conns_stats *out);
/* Shutdown, part 1: from now on no request waits any more; every waiting one is woken and
 * answered 503 (or its stream cut). Main thread. */
void srv_http_stop_waiting(srv_http *s);
/* Shutdown, part 2: closes every connection and stops the threads, then frees everything. Call
 * after srv_http_stop_waiting; NULL ignored. Main thread. */
void srv_http_free(srv_http *s);

/* ---- for handlers: one request ----------------------------------------------------------- */

const char *srv_http_method(const srv_http_req *r);
const char *srv_http_url(const srv_http_req *r);
/* A request header's value, NULL when absent. */
const char *srv_http_header(srv_http_req *r, const char *name);
/* The peer's address as text ("127.0.0.1"), "" if unknown. */
const char *srv_http_peer(const srv_http_req *r);
/* True when the request's connection came in through the reserve (every ordinary connection
 * was busy): the handler serves it only if it is a health check or carries a valid key, and
 * answers 503 otherwise (server/http_conns.h). */
bool srv_http_reserved(const srv_http_req *r);
/* The request's id: the client's X-Request-Id when it is acceptable (srv_log_request_id), else
 * one made up. Every answer carries it back as X-Request-Id, and every log line about the request
 * should carry it (srv_log_req). Valid for the request. */
const char *srv_http_request_id(const srv_http_req *r);
/* What the access line of a generation request says beyond the transport's: the adapter
 * selection's label (copied), the tokens of the prompt and of the completions, the time to the
 * first token in ms (< 0: none). Call before on_done returns (the line is written after). */
void srv_http_log_selection(srv_http_req *r, const char *label);
void srv_http_log_usage(srv_http_req *r, long long prompt_tokens, long long completion_tokens,
                        double ttft_ms);
/* The body (NUL-terminated copy) and its length; "" before on_request. */
const char *srv_http_body(const srv_http_req *r, size_t *len);
/* Seconds on a monotonic clock when the headers arrived. */
double srv_http_start(const srv_http_req *r);
/* The handler's own state for this request (NULL until set); it frees it in on_done. */
void *srv_http_state(const srv_http_req *r);
void srv_http_set_state(srv_http_req *r, void *state);

/* Answers with status and body (len bytes, copied). headers: NULL or name, value, ..., NULL.
 * Only once per request; later calls are ignored. */
void srv_http_reply(srv_http_req *r, int status, const char *content_type, const char *body,
                    size_t len, const char *const *headers);
/* Answers with a JSON body taken from b (b is emptied). */
void srv_http_reply_json(srv_http_req *r, int status, srv_buf *b, const char *const *headers);
/* Answers with the OpenAI error object. */
void srv_http_reply_error(srv_http_req *r, int status, const char *type, const char *code,
                          const char *param, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
/* Answers 200 text/event-stream whose body on_stream produces. */
void srv_http_reply_stream(srv_http_req *r);
/* The status answered, 0 before an answer. */
int srv_http_status(const srv_http_req *r);

/* The token that srv_http_wake takes to wake request r: r's slot in the transport's table, not r
 * itself, so a wake racing with r's end finds the slot empty (or serving another request, if the
 * token was kept past on_done: do not). */
void *srv_http_wake_token(const srv_http_req *r);
/* Wakes the request the token names: if it waits (srv_http_wait, or a stream with nothing to
 * send) on_request (on_stream) runs again; if not, its next wait returns at once. Any thread;
 * the caller may hold its own locks (the slot lock comes after them), never the slot's. */
void srv_http_wake(void *token);
/* From on_request: nothing to answer yet; suspend until srv_http_wake, then call on_request
 * again. During shutdown the transport answers 503 instead. */
void srv_http_wait(srv_http_req *r);

#endif
