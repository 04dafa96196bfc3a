/* The HTTP transport on libmicrohttpd 0.9.75 (server/http.h): requests, bodies, answers,
 * suspension while the engine works, and server-sent event streams.
 *
 * Waiting. A request that has nothing to answer yet is suspended (MHD_suspend_connection) from
 * the access handler, or, in the middle of a stream, from the content reader, which then
 * returns 0. The header of 0.9.75 names exactly these two callbacks as the places where
 * suspending is safe, and a reader may return 0 only together with a suspension: the connection
 * then sits in the BODY_UNREADY state outside the poll set, and on resume libmicrohttpd calls
 * the reader again (connection.c, MHD_connection_handle_idle). Nothing ever sleeps on an MHD
 * thread.
 *
 * Waking. srv_http_wake runs on any thread (the engine's, through the handler's job notify).
 * Resuming a connection that is not suspended is undefined, and a wake can race with the request
 * deciding to suspend, so both sides take the lock of the request's slot: the request checks for
 * news and suspends under it, a wake resumes under it if (and only if) the request is suspended,
 * and otherwise leaves a "woken" mark that the request sees before it would suspend. Lock order:
 * whatever the waker holds (the engine holds a job's notify lock around notify), then the slot
 * lock, then libmicrohttpd's own locks (suspend/resume) or a handler's state lock taken in
 * on_gone; never the other way.
 *
 * Lifetimes. A wake token is the request's slot, which lives as long as the transport, never the
 * request: a request reaches its slot only while it is alive, and its handler lets go of the
 * token (detaches its job's notify) in on_done, before the slot can serve another. The request
 * itself is reference-counted: libmicrohttpd's request (dropped in the completion callback) and a
 * stream response (dropped when libmicrohttpd frees it) each hold one.
 *
 * Disconnects. libmicrohttpd does not watch suspended connections, so srv_http_sweep (main
 * thread, a few times a second) peeks at the socket of every suspended request; for a peer that
 * closed it calls the handler's on_gone, which stops the work (cancels the job), whose end then
 * wakes the request, which ends. A streaming client that leaves while its stream is running is
 * seen by libmicrohttpd's send.
 *
 * Shutdown. libmicrohttpd must not be stopped with suspended connections, so
 * srv_http_stop_waiting first forbids waiting (a flag read under the slot locks) and resumes
 * every suspended request; those answer 503 or cut their stream.
 */
#include "server/http.h"
#include "core/base.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include "server/cors.h"
#include "server/log.h"
#include "server/response.h"

#define STREAM_BLOCK (16 * 1024)

typedef struct slot {
    pthread_mutex_t mu;
    srv_http *h;
    srv_http_req *req; /* NULL when free */
} slot;

struct srv_http {
    struct MHD_Daemon *d;
    srv_http_handler h;
    srv_http_opts o;
    int port;
    slot *slots; /* (n_slots) */
    unsigned n_slots;
    pthread_mutex_t free_mu;
    unsigned *free_idx; /* (n_slots) stack of free slot indices */
    unsigned n_free;
    atomic_int active;
    atomic_bool stopping;
    srv_conns *conns;
    unsigned mhd_limit; /* libmicrohttpd's own connection limit, above ours (srv_http_fd_need) */
    srv_conns_stats logged; /* counters at the last "connections closed" log line */
    double logged_at;
};

struct srv_http_req {
    srv_http *h;
    struct MHD_Connection *conn;
    slot *slot;
    atomic_int refs;
    const char *method, *url; /* libmicrohttpd's, valid for the request */
    char peer[INET6_ADDRSTRLEN];
    int fd;
    srv_conn *conn_rec; /* the connection's entry in the table (lives longer than r) */
    bool reserve;
    double t0;
    /* body */
    char *body;
    size_t len, cap, limit;
    unsigned long long seen;
    bool too_large, body_done;
    /* answer */
    int status;
    bool replied, queue_failed, want_wait;
    /* under the slot lock */
    bool suspended, woken;
    bool peer_gone; /* the sweep saw the client close its socket */
    /* stream */
    srv_buf out;
    size_t out_off;
    bool stream_end;
    void *state;
    /* for the access line of a generation (srv_http_log_*); log_prompt < 0: no usage */
    long long log_prompt, log_completion;
    double log_ttft_ms;
    char log_label[255];             /* 255 + 129: no padding */
    char id[SRV_REQUEST_ID_MAX + 1]; /* X-Request-Id */
};

static void req_unref(srv_http_req *r)
{
    if (!r || atomic_fetch_sub(&r->refs, 1) != 1)
        return;
    free(r->body);
    srv_buf_deinit(&r->out);
    free(r);
}

/* ---- slots ---------------------------------------------------------------------------------- */

static slot *slot_take(srv_http *h, srv_http_req *r)
{
    pthread_mutex_lock(&h->free_mu);
    slot *s = h->n_free ? &h->slots[h->free_idx[--h->n_free]] : NULL;
    pthread_mutex_unlock(&h->free_mu);
    if (s) {
        pthread_mutex_lock(&s->mu);
        s->req = r;
        pthread_mutex_unlock(&s->mu);
    }
    return s;
}

static void slot_give(srv_http *h, slot *s)
{
    pthread_mutex_lock(&h->free_mu);
    h->free_idx[h->n_free++] = (unsigned)(s - h->slots);
    pthread_mutex_unlock(&h->free_mu);
}

/* ---- answers -------------------------------------------------------------------------------- */

static void queue(srv_http_req *r, int status, struct MHD_Response *resp,
                  const char *const *headers)
{
    if (!resp) {
        r->queue_failed = true;
        return;
    }
    for (int i = 0; headers && headers[i] && headers[i + 1]; i += 2)
        MHD_add_response_header(resp, headers[i], headers[i + 1]);
    if (r->h->o.replica)
        MHD_add_response_header(resp, "X-Adaptree-Replica", r->h->o.replica);
    MHD_add_response_header(resp, "X-Request-Id", r->id);
    const char *cors = srv_cors_allow(r->h->o.cors, srv_http_header(r, "Origin"));
    if (cors) {
        MHD_add_response_header(resp, "Access-Control-Allow-Origin", cors);
        /* a page's script may read these (the request id, the replica that answered) */
        MHD_add_response_header(resp, "Access-Control-Expose-Headers",
                                "X-Request-Id, X-Adaptree-Replica");
        MHD_add_response_header(resp, "Vary", "Origin");
    }
    if (MHD_queue_response(r->conn, (unsigned)status, resp) != MHD_YES) {
        srv_log_req(SRV_LOG_ERROR, r->id, "%s %s: libmicrohttpd refused the response", r->method,
                    r->url);
        r->queue_failed = true;
    }
    MHD_destroy_response(resp);
    r->status = status;
}

void srv_http_reply(srv_http_req *r, int status, const char *content_type, const char *body,
                    size_t len, const char *const *headers)
{
    if (r->replied)
        return;
    r->replied = true;
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (resp && content_type)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    queue(r, status, resp, headers);
}

void srv_http_reply_json(srv_http_req *r, int status, srv_buf *b, const char *const *headers)
{
    if (r->replied)
        return;
    size_t len = 0;
    char *body = srv_buf_ok(b) ? srv_buf_take(b, &len) : NULL;
    if (!body) {
        srv_buf_reset(b);
        static const char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":"
                                  "\"server_error\",\"param\":null,\"code\":null}}";
        srv_http_reply(r, 503, "application/json", oom, sizeof oom - 1, NULL);
        return;
    }
    r->replied = true;
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (!resp)
        free(body);
    else
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    queue(r, status, resp, headers);
}

void srv_http_reply_error(srv_http_req *r, int status, const char *type, const char *code,
                          const char *param, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    srv_buf b;
    srv_buf_init(&b);
    srv_resp_error(&b, msg, type, code, param);
    const char *h401[] = {"WWW-Authenticate", "Bearer", NULL};
    const char *h429[] = {"Retry-After", "1", NULL};
    const char *const *hdr = status == 401 ? h401 : status == 429 ? h429 : NULL;
    srv_http_reply_json(r, status, &b, hdr);
    srv_buf_deinit(&b);
}

const char *srv_http_request_id(const srv_http_req *r)
{
    return r->id;
}

void srv_http_log_selection(srv_http_req *r, const char *label)
{
    snprintf(r->log_label, sizeof r->log_label, "%s", label);
}

void srv_http_log_usage(srv_http_req *r, long long prompt_tokens, long long completion_tokens,
                        double ttft_ms)
{
    r->log_prompt = prompt_tokens;
    r->log_completion = completion_tokens;
    r->log_ttft_ms = ttft_ms;
}

int srv_http_status(const srv_http_req *r)
{
    return r->replied ? r->status : 0;
}

/* Content reader of a streamed answer: hands out what on_stream produced; when there is
 * nothing, suspends the connection and returns 0 (see the top of the file). */
static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    srv_http_req *r = cls;
    srv_http *h = r->h;
    for (;;) {
        if (r->out_off < r->out.len) {
            size_t n = r->out.len - r->out_off < max ? r->out.len - r->out_off : max;
            memcpy(buf, r->out.data + r->out_off, n);
            r->out_off += n;
            return (ssize_t)n;
        }
        srv_buf_reset(&r->out);
        r->out_off = 0;
        if (r->stream_end)
            return MHD_CONTENT_READER_END_OF_STREAM;
        int rc = h->h.on_stream(h->h.ud, r, &r->out);
        if (rc < 0 || !srv_buf_ok(&r->out))
            return MHD_CONTENT_READER_END_WITH_ERROR;
        if (rc == 0)
            r->stream_end = true;
        if (r->out.len || r->stream_end)
            continue;
        pthread_mutex_lock(&r->slot->mu);
        if (atomic_load(&h->stopping)) {
            pthread_mutex_unlock(&r->slot->mu);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        if (r->woken) {
            r->woken = false;
            pthread_mutex_unlock(&r->slot->mu);
            continue;
        }
        r->suspended = true;
        MHD_suspend_connection(r->conn);
        pthread_mutex_unlock(&r->slot->mu);
        return 0;
    }
}

static void stream_free(void *cls)
{
    req_unref(cls);
}

void srv_http_reply_stream(srv_http_req *r)
{
    if (r->replied)
        return;
    r->replied = true;
    atomic_fetch_add(&r->refs, 1);
    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, STREAM_BLOCK,
                                                                  stream_read, r, stream_free);
    if (!resp) {
        /* libmicrohttpd's request still holds its reference: this one is never the last. */
        atomic_fetch_sub(&r->refs, 1);
        r->queue_failed = true;
        return;
    }
    static const char *const hdr[] = {MHD_HTTP_HEADER_CONTENT_TYPE,
                                      "text/event-stream",
                                      MHD_HTTP_HEADER_CACHE_CONTROL,
                                      "no-cache",
                                      "X-Accel-Buffering",
                                      "no",
                                      NULL};
    queue(r, 200, resp, hdr);
}

/* ---- waiting -------------------------------------------------------------------------------- */

void *srv_http_wake_token(const srv_http_req *r)
{
    return r->slot;
}

void srv_http_wake(void *token)
{
    slot *s = token;
    pthread_mutex_lock(&s->mu);
    srv_http_req *r = s->req;
    if (r && r->suspended) {
        r->suspended = false;
        MHD_resume_connection(r->conn);
    } else if (r) {
        r->woken = true;
    }
    pthread_mutex_unlock(&s->mu);
}

void srv_http_wait(srv_http_req *r)
{
    r->want_wait = true;
}

/* Runs on_request until it answers or waits; a wait suspends the connection unless a notify
 * came in meanwhile (then on_request runs again) or the server is stopping (503). */
static void run_request(srv_http *h, srv_http_req *r)
{
    for (;;) {
        r->want_wait = false;
        h->h.on_request(h->h.ud, r);
        if (r->replied)
            return;
        if (!r->want_wait) {
            srv_http_reply_error(r, 500, "server_error", NULL, NULL,
                                 "internal error: the route gave no answer");
            return;
        }
        pthread_mutex_lock(&r->slot->mu);
        if (atomic_load(&h->stopping)) {
            pthread_mutex_unlock(&r->slot->mu);
            srv_http_reply_error(r, 503, "server_error", "shutting_down", NULL,
                                 "the server is shutting down");
            return;
        }
        if (r->woken) {
            r->woken = false;
            pthread_mutex_unlock(&r->slot->mu);
            continue;
        }
        r->suspended = true;
        MHD_suspend_connection(r->conn);
        pthread_mutex_unlock(&r->slot->mu);
        return;
    }
}

/* ---- libmicrohttpd callbacks ---------------------------------------------------------------- */

static srv_http_req *req_new(srv_http *h, struct MHD_Connection *conn, srv_conn *rec,
                             const char *url, const char *method)
{
    srv_http_req *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->h = h;
    r->conn = conn;
    r->url = url;
    r->method = method;
    r->fd = -1;
    r->t0 = core_now();
    r->conn_rec = rec;
    r->reserve = srv_conns_is_reserve(h->conns, rec);
    r->log_prompt = -1;
    r->log_ttft_ms = -1;
    srv_log_request_id(MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Id"), r->id);
    atomic_init(&r->refs, 1);
    r->slot = slot_take(h, r);
    if (!r->slot) {
        free(r);
        return NULL;
    }
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (ci)
        r->fd = ci->connect_fd;
    ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (ci && ci->client_addr) {
        const struct sockaddr *sa = ci->client_addr;
        if (sa->sa_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, r->peer,
                      sizeof r->peer);
        else if (sa->sa_family == AF_INET6)
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr,
                      r->peer, sizeof r->peer);
    }
    atomic_fetch_add(&h->active, 1);
    return r;
}

/* A body byte count from Content-Length, or -1 when absent or not a plain number. */
static long long content_length(struct MHD_Connection *conn)
{
    const char *v =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (!v || !*v)
        return -1;
    char *end;
    errno = 0;
    long long n = strtoll(v, &end, 10);
    return errno || *end || n < 0 ? -1 : n;
}

static void reply_too_large(srv_http_req *r)
{
    srv_http_reply_error(r, 413, "invalid_request_error", "request_too_large", NULL,
                         "the request body is larger than this server's limit of %zu bytes "
                         "(--max-body-kb)",
                         r->limit);
}

/* Buffers a piece of the body; past the limit, drops what it had and only counts. false when
 * the client keeps sending far past the limit (the connection is then cut). */
static bool take_body(srv_http_req *r, const char *data, size_t n)
{
    r->seen += n;
    if (r->too_large || r->seen > r->limit) {
        r->too_large = true;
        free(r->body);
        r->body = NULL;
        r->len = r->cap = 0;
        return r->seen <= r->h->o.hard_body_limit;
    }
    if (r->len + n + 1 > r->cap) {
        size_t cap = r->cap ? r->cap : 4096;
        while (cap < r->len + n + 1)
            cap *= 2;
        char *b = realloc(r->body, cap);
        if (!b)
            return false;
        r->body = b;
        r->cap = cap;
    }
    memcpy(r->body + r->len, data, n);
    r->len += n;
    r->body[r->len] = 0;
    return true;
}

/* Counts the headers that say how long a body is (RFC 9112 §6). */
typedef struct framing {
    int n_length, n_encoding;
    bool chunked; /* the (single) Transfer-Encoding is exactly "chunked" */
} framing;

static enum MHD_Result framing_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                      const char *value)
{
    (void)kind;
    framing *f = cls;
    if (!strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH)) {
        f->n_length++;
    } else if (!strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING)) {
        f->n_encoding++;
        f->chunked = value && !strcasecmp(value, "chunked");
    }
    return MHD_YES;
}

/* A request whose framing a proxy in front could read differently (request smuggling) gets a
 * 400 and its connection is closed (an answer queued before the body makes libmicrohttpd
 * discard the rest): more than one Content-Length, both Content-Length and Transfer-Encoding,
 * or a Transfer-Encoding other than a single "chunked". true when it answered. */
static bool refuse_bad_framing(srv_http_req *r)
{
    framing f = {0};
    MHD_get_connection_values(r->conn, MHD_HEADER_KIND, framing_header, &f);
    const char *why = f.n_length > 1               ? "more than one Content-Length header"
                      : f.n_length && f.n_encoding ? "both Content-Length and Transfer-Encoding"
                      : f.n_encoding > 1           ? "more than one Transfer-Encoding header"
                      : f.n_encoding && !f.chunked ? "a Transfer-Encoding other than chunked"
                                                   : NULL;
    if (!why)
        return false;
    srv_http_reply_error(r, 400, "invalid_request_error", "bad_framing", NULL,
                         "the request's length is ambiguous: %s (RFC 9112 §6)", why);
    return true;
}

/* The connection table's record of conn (set when it opened), NULL if none. */
static srv_conn *conn_record(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

/* The first call for a request: its head is complete. */
static enum MHD_Result on_head(srv_http *h, struct MHD_Connection *conn, const char *url,
                               const char *method, void **con_cls)
{
    srv_conn *rec = conn_record(conn);
    if (srv_conns_is_closing(h->conns, rec))
        return MHD_NO; /* refused or timed out: answered already */
    srv_conns_head(h->conns, rec, core_now());
    srv_http_req *r = req_new(h, conn, rec, url, method);
    if (!r) {
        srv_log(SRV_LOG_WARN, "%s %s: no request slot left; closing", method, url);
        return MHD_NO;
    }
    *con_cls = r;
    if (!refuse_bad_framing(r))
        r->limit = h->h.on_headers(h->h.ud, r);
    if (!r->replied && content_length(conn) > (long long)r->limit)
        reply_too_large(r);
    if (r->replied)
        srv_conns_busy(h->conns, rec);
    return r->queue_failed ? MHD_NO : MHD_YES;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version, const char *upload,
                                 size_t *upload_size, void **con_cls)
{
    (void)version;
    srv_http *h = cls;
    srv_http_req *r = *con_cls;
    if (!r)
        return on_head(h, conn, url, method, con_cls);
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        return r->replied || take_body(r, upload, n) ? MHD_YES : MHD_NO;
    }
    if (r->replied)
        return MHD_YES;
    if (!r->body_done) {
        r->body_done = true;
        srv_conns_busy(h->conns, r->conn_rec);
        if (r->too_large) {
            reply_too_large(r);
            return r->queue_failed ? MHD_NO : MHD_YES;
        }
    }
    /* Nobody is left to answer: close (the sweep had the work stopped). */
    pthread_mutex_lock(&r->slot->mu);
    bool gone = r->peer_gone;
    pthread_mutex_unlock(&r->slot->mu);
    if (gone)
        return MHD_NO;
    run_request(h, r);
    return r->queue_failed ? MHD_NO : MHD_YES;
}

/* The access line: one per request, at its end. */
static void log_access(const srv_http_req *r, int status, bool complete)
{
    srv_log_field f[] = {
        SRV_LOG_STR("method", r->method),
        SRV_LOG_STR("path", r->url),
        SRV_LOG_INT("status", status),
        SRV_LOG_MS("duration_ms", (core_now() - r->t0) * 1e3),
        SRV_LOG_STR("client", r->peer[0] ? r->peer : "-"),
        SRV_LOG_STR("request_id", r->id),
        SRV_LOG_STR("adapters", r->log_label[0] ? r->log_label : NULL),
        SRV_LOG_MS("ttft_ms", r->log_ttft_ms),
        SRV_LOG_INT("prompt_tokens", r->log_prompt),
        SRV_LOG_INT("completion_tokens", r->log_completion),
    };
    f[0].json_only = f[1].json_only = f[2].json_only = true; /* the text message says them */
    int n = sizeof f / sizeof *f - (r->log_prompt >= 0 ? 0 : 2);
    srv_log_with(SRV_LOG_INFO, f, n, "%s %s %d%s", r->method, r->url, status,
                 complete ? "" : " (not completed)");
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)conn;
    srv_http *h = cls;
    srv_http_req *r = *con_cls;
    if (!r)
        return;
    *con_cls = NULL;
    slot *s = r->slot;
    pthread_mutex_lock(&s->mu);
    s->req = NULL;
    r->suspended = false;
    pthread_mutex_unlock(&s->mu);
    int status = r->replied ? r->status : 0;
    bool complete = toe == MHD_REQUEST_TERMINATED_COMPLETED_OK;
    srv_conns_idle(h->conns, r->conn_rec, core_now());
    /* The handler lets go of the wake token here, so the slot serves nobody else before. */
    h->h.on_done(h->h.ud, r, status, complete);
    slot_give(h, s);
    log_access(r, status, complete);
    atomic_fetch_sub(&h->active, 1);
    req_unref(r);
}

__attribute__((format(printf, 2, 0))) static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    if (srv_log_threshold < SRV_LOG_DEBUG)
        return;
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    size_t n = strlen(line);
    while (n && line[n - 1] == '\n')
        line[--n] = 0;
    srv_log(SRV_LOG_DEBUG, "libmicrohttpd: %s", line);
}

/* A connection opened or closed: the connection table admits (or refuses) it and forgets it. */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    srv_http *h = cls;
    if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
        srv_conns_close(h->conns, *socket_context);
        *socket_context = NULL;
        return;
    }
    const union MHD_ConnectionInfo *fd =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    const union MHD_ConnectionInfo *ad =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (!fd)
        return;
    srv_conn_admit how;
    *socket_context =
        srv_conns_open(h->conns, fd->connect_fd, ad ? ad->client_addr : NULL, core_now(), &how);
    if (how != SRV_CONN_ADMITTED && srv_log_threshold >= SRV_LOG_DEBUG)
        srv_log(SRV_LOG_DEBUG, "connection %s",
                how == SRV_CONN_RESERVE ? "admitted through the reserve" : "refused: at the limit");
}

/* ---- the daemon ----------------------------------------------------------------------------- */

/* Defaults of the connection options, in place. */
static void conn_defaults(srv_http_opts *o)
{
    if (!o->max_conns)
        o->max_conns = 1024;
    if (!o->reserve_conns)
        o->reserve_conns = o->max_conns / 16 > 8 ? o->max_conns / 16 : 8;
}

unsigned srv_http_fd_need(const srv_http_opts *o)
{
    srv_http_opts d = *o;
    conn_defaults(&d);
    /* Room above our own caps for connections being closed (evicted, refused, timed out), which
     * hold their descriptor until libmicrohttpd's thread gets to them. */
    unsigned ours = d.max_conns + d.reserve_conns;
    return ours + ours / 4 + 64;
}

static int resolve(const char *host, int port, struct sockaddr_storage *ss, socklen_t *len,
                   char *err, size_t errlen)
{
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *res = NULL;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    int rc = getaddrinfo(host, ps, &hints, &res);
    if (rc || !res) {
        snprintf(err, errlen, "cannot resolve host '%s': %s", host, gai_strerror(rc));
        return -EINVAL;
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

srv_http *srv_http_new(const srv_http_opts *o, const srv_http_handler *hd, char *err, size_t errlen)
{
    srv_http *h = calloc(1, sizeof *h);
    if (!h) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    h->h = *hd;
    h->o = *o;
    if (!h->o.threads)
        h->o.threads = 2;
    conn_defaults(&h->o);
    h->mhd_limit = srv_http_fd_need(&h->o);
    if (!h->o.hard_body_limit)
        h->o.hard_body_limit = (size_t)64 << 20;
    pthread_mutex_init(&h->free_mu, NULL);
    /* One request per connection at a time, plus connections the pool is still closing. */
    h->n_slots = h->mhd_limit + (unsigned)h->o.threads * 4;
    h->slots = calloc(h->n_slots, sizeof *h->slots);
    h->free_idx = calloc(h->n_slots, sizeof *h->free_idx);
    srv_conns_opts co = {.max = h->o.max_conns,
                         .reserve = h->o.reserve_conns,
                         .per_ip = h->o.per_ip_conns,
                         .header_timeout = h->o.header_timeout_s,
                         .body_timeout = h->o.body_timeout_s};
    h->conns = srv_conns_new(&co);
    if (!h->slots || !h->free_idx || !h->conns) {
        snprintf(err, errlen, "out of memory");
        srv_conns_free(h->conns);
        free(h->slots);
        free(h->free_idx);
        pthread_mutex_destroy(&h->free_mu);
        free(h);
        return NULL;
    }
    for (unsigned i = 0; i < h->n_slots; i++) {
        pthread_mutex_init(&h->slots[i].mu, NULL);
        h->slots[i].h = h;
        h->free_idx[i] = h->n_slots - 1 - i;
    }
    h->n_free = h->n_slots;

    struct sockaddr_storage ss;
    socklen_t sl = 0;
    if (resolve(o->host ? o->host : "127.0.0.1", o->port, &ss, &sl, err, errlen) < 0) {
        h->d = NULL;
        srv_http_free(h);
        return NULL;
    }
    unsigned flags = MHD_USE_AUTO_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (ss.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    errno = 0;
    h->d = MHD_start_daemon(
        flags, (uint16_t)o->port, NULL, NULL, on_access, h, MHD_OPTION_SOCK_ADDR,
        (struct sockaddr *)&ss, MHD_OPTION_THREAD_POOL_SIZE, (unsigned)h->o.threads,
        MHD_OPTION_CONNECTION_LIMIT, h->mhd_limit, MHD_OPTION_CONNECTION_TIMEOUT,
        h->o.idle_timeout_s, MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, h, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
        MHD_OPTION_END);
    if (!h->d) {
        int e = errno;
        snprintf(err, errlen, "cannot listen on %s port %d%s%s", o->host ? o->host : "127.0.0.1",
                 o->port, e ? ": " : "", e ? strerror(e) : "");
        srv_http_free(h);
        return NULL;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    h->port = di ? di->port : o->port;
    return h;
}

int srv_http_port(const srv_http *s)
{
    return s->port;
}

int srv_http_active(srv_http *s)
{
    return atomic_load(&s->active);
}

void srv_http_conn_stats(srv_http *s, srv_conns_stats *out)
{
    srv_conns_stats_get(s->conns, out);
}

/* At most every LOG_EVERY_S, one line on the connections the table closed or refused since the
 * last line: a flood shows in the log without a line per connection. */
#define LOG_EVERY_S 10.0
static void log_conn_closes(srv_http *s, double now)
{
    if (now - s->logged_at < LOG_EVERY_S)
        return;
    srv_conns_stats st;
    srv_conns_stats_get(s->conns, &st);
    const srv_conns_stats *o = &s->logged;
    unsigned long long ev = st.evicted - o->evicted, ref = st.refused - o->refused,
                       ht = st.header_timeouts - o->header_timeouts,
                       bt = st.body_timeouts - o->body_timeouts;
    if (ev || ref || ht || bt)
        srv_log(SRV_LOG_WARN,
                "connections: %u open (%u waiting for a request head, %u reserve); closed since "
                "the last report: %llu past --header-timeout, %llu past --body-timeout, %llu "
                "evicted to make room, %llu refused at the limit",
                st.open, st.waiting_head, st.reserve, ht, bt, ev, ref);
    s->logged = st;
    s->logged_at = now;
}

/* True when the peer has closed (or reset) the connection: a read would return end of file or
 * an error. Bytes waiting (a pipelined request) mean it is still there. */
static bool socket_closed(int fd)
{
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n > 0)
        return false;
    if (n == 0)
        return true;
    return errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
}

void srv_http_sweep(srv_http *s)
{
    double now = core_now();
    srv_conns_sweep(s->conns, now);
    log_conn_closes(s, now);
    for (unsigned i = 0; i < s->n_slots; i++) {
        slot *sl = &s->slots[i];
        char what[128] = "", id[SRV_REQUEST_ID_MAX + 1];
        pthread_mutex_lock(&sl->mu);
        srv_http_req *r = sl->req;
        /* A suspended connection's socket stays open until it is resumed, so peeking is safe;
         * the request cannot end while its slot is locked, so on_gone sees it whole. */
        if (r && r->suspended && !r->peer_gone && r->fd >= 0 && socket_closed(r->fd)) {
            r->peer_gone = true;
            snprintf(what, sizeof what, "%s %s", r->method, r->url);
            memcpy(id, r->id, sizeof id);
            if (s->h.on_gone)
                s->h.on_gone(s->h.ud, r);
        }
        pthread_mutex_unlock(&sl->mu);
        if (what[0])
            srv_log_req(SRV_LOG_INFO, id, "%s: the client went away; stopping its work", what);
    }
}

void srv_http_stop_waiting(srv_http *s)
{
    atomic_store(&s->stopping, true);
    for (unsigned i = 0; i < s->n_slots; i++) {
        slot *sl = &s->slots[i];
        pthread_mutex_lock(&sl->mu);
        srv_http_req *r = sl->req;
        if (r && r->suspended) {
            r->suspended = false;
            MHD_resume_connection(r->conn);
        }
        pthread_mutex_unlock(&sl->mu);
    }
}

void srv_http_free(srv_http *s)
{
    if (!s)
        return;
    if (s->d) {
        srv_http_stop_waiting(s);
        MHD_stop_daemon(s->d);
    }
    for (unsigned i = 0; i < s->n_slots; i++)
        pthread_mutex_destroy(&s->slots[i].mu);
    pthread_mutex_destroy(&s->free_mu);
    srv_conns_free(s->conns);
    free(s->slots);
    free(s->free_idx);
    free(s);
}

/* ---- request accessors ---------------------------------------------------------------------- */

const char *srv_http_method(const srv_http_req *r)
{
    return r->method;
}

const char *srv_http_url(const srv_http_req *r)
{
    return r->url;
}

const char *srv_http_header(srv_http_req *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

const char *srv_http_peer(const srv_http_req *r)
{
    return r->peer;
}

bool srv_http_reserved(const srv_http_req *r)
{
    return r->reserve;
}

const char *srv_http_body(const srv_http_req *r, size_t *len)
{
    if (len)
        *len = r->body ? r->len : 0;
    return r->body ? r->body : "";
}

double srv_http_start(const srv_http_req *r)
{
    return r->t0;
}

void *srv_http_state(const srv_http_req *r)
{
    return r->state;
}

void srv_http_set_state(srv_http_req *r, void *state)
{
    r->state = state;
}
