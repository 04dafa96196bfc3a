/* The transport's connection table (server/http_conns.h): caps per server and per address, the
 * reserve, head and body deadlines, and eviction of the connection that has waited longest for
 * a request head.
 *
 * The table is a list in arrival order under one mutex; every decision scans it. It holds at
 * most max + reserve + the connections being closed (about a thousand by default), and a scan is
 * a few microseconds, far below what accepting a connection costs.
 *
 * Closing. We never close a descriptor: libmicrohttpd owns it. We shut the socket down and mark
 * the record closing (it no longer counts against any cap); libmicrohttpd reads end-of-file,
 * closes the connection and calls srv_conns_close before it closes the descriptor. A refused
 * connection and a body that came too late get an answer first: their socket is shut down for
 * writing only, so the client can read the answer before it sees the close (a full shutdown
 * with unread input would send a reset, which may destroy the answer on its way), then fully
 * after LINGER_S, or earlier when the client closes.
 */
#include "server/http_conns.h"

#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define LINGER_S 1.0 /* a refused or timed-out client's time to read its answer */

typedef enum phase { WAIT_HEAD, WAIT_BODY, BUSY } phase;

struct srv_conn {
    srv_conn *prev, *next;
    int fd;
    unsigned char addr[16]; /* IPv4 in the first 4 bytes (IPv4-mapped IPv6 too) */
    unsigned addr_len;      /* 4, 16, or 0: no address (no per-address cap) */
    phase ph;
    double since; /* WAIT_HEAD: waiting for a head since; WAIT_BODY: head complete at */
    bool reserve;
    bool closing;   /* shut down by us; counts against nothing */
    double kill_at; /* closing after an answer: full shutdown at this time */
};

struct srv_conns {
    pthread_mutex_t mu;
    srv_conns_opts o;
    srv_conn *head, *tail;
    srv_conns_stats st; /* accepted .. body_timeouts; the gauges are counted on demand */
};

srv_conns *srv_conns_new(const srv_conns_opts *o)
{
    srv_conns *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->o = *o;
    pthread_mutex_init(&t->mu, NULL);
    return t;
}

void srv_conns_free(srv_conns *t)
{
    if (!t)
        return;
    for (srv_conn *c = t->head, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    pthread_mutex_destroy(&t->mu);
    free(t);
}

/* The address bytes that identify a client: IPv4 (also when mapped into IPv6) or IPv6. */
static void addr_key(srv_conn *c, const struct sockaddr *sa)
{
    c->addr_len = 0;
    if (!sa)
        return;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const void *)sa;
        memcpy(c->addr, &in->sin_addr, 4);
        c->addr_len = 4;
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const void *)sa;
        const unsigned char *b = in6->sin6_addr.s6_addr;
        static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (!memcmp(b, mapped, sizeof mapped)) {
            memcpy(c->addr, b + 12, 4);
            c->addr_len = 4;
        } else {
            memcpy(c->addr, b, 16);
            c->addr_len = 16;
        }
    }
}

static bool same_addr(const srv_conn *a, const srv_conn *b)
{
    return a->addr_len && a->addr_len == b->addr_len && !memcmp(a->addr, b->addr, a->addr_len);
}

/* Sends a short answer without blocking; what does not fit in the socket buffer is lost (the
 * connection is closing anyway). */
static void send_quietly(int fd, const char *msg)
{
    size_t n = strlen(msg);
    ssize_t k = send(fd, msg, n, MSG_DONTWAIT | MSG_NOSIGNAL);
    (void)k;
}

/* Closes c now (no answer): its client sees the connection end. Lock held. */
static void kill_now(srv_conn *c)
{
    shutdown(c->fd, SHUT_RDWR);
    c->closing = true;
    c->kill_at = 0;
}

/* The answers we write ourselves: a status line and a JSON error body in OpenAI's shape. */
static void answer_and_close(srv_conn *c, int status, const char *reason, const char *type,
                             const char *code, const char *msg, double now)
{
    char body[320], all[640];
    int nb = snprintf(body, sizeof body,
                      "{\"error\":{\"message\":\"%s\",\"type\":\"%s\",\"param\":null,"
                      "\"code\":\"%s\"}}",
                      msg, type, code);
    snprintf(all, sizeof all,
             "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n%sConnection: close\r\n"
             "Content-Length: %d\r\n\r\n%s",
             status, reason, status == 503 ? "Retry-After: 1\r\n" : "", nb, body);
    send_quietly(c->fd, all);
    shutdown(c->fd, SHUT_WR);
    c->closing = true;
    c->kill_at = now + LINGER_S;
}

/* The connection other than n that has waited longest for a request head among the ordinary
 * ones (reserve false) or the reserve ones, of every address or (same_ip) of n's; NULL if none.
 * Lock held. */
static srv_conn *oldest_waiting(srv_conns *t, const srv_conn *n, bool reserve, bool same_ip)
{
    srv_conn *best = NULL;
    for (srv_conn *c = t->head; c; c = c->next) {
        if (c == n || c->closing || c->ph != WAIT_HEAD || c->reserve != reserve ||
            (same_ip && !same_addr(c, n)))
            continue;
        if (!best || c->since < best->since)
            best = c;
    }
    return best;
}

/* Admits n, which is already in the list (and counts in nothing yet): as an ordinary
 * connection while the caps hold, evicting the ordinary connection that has waited longest for
 * a head when the server (or n's address) is at its cap; else through the reserve, evicting a
 * waiting reserve connection when the reserve is full; else refused. Lock held. */
static srv_conn_admit admit(srv_conns *t, srv_conn *n)
{
    for (;;) {
        unsigned all = 0, mine = 0, reserved = 0;
        for (srv_conn *c = t->head; c; c = c->next) {
            if (c->closing || c == n)
                continue;
            reserved += c->reserve;
            if (!c->reserve) {
                all++;
                mine += same_addr(c, n);
            }
        }
        bool ip_full = t->o.per_ip && n->addr_len && mine >= t->o.per_ip;
        if (all < t->o.max && !ip_full)
            return SRV_CONN_ADMITTED;
        srv_conn *v = oldest_waiting(t, n, false, all < t->o.max);
        if (!v && reserved >= t->o.reserve)
            v = oldest_waiting(t, n, true, false);
        if (!v) {
            if (reserved >= t->o.reserve)
                return SRV_CONN_REFUSED;
            n->reserve = true;
            return SRV_CONN_RESERVE;
        }
        kill_now(v);
        t->st.evicted++;
    }
}

srv_conn *srv_conns_open(srv_conns *t, int fd, const struct sockaddr *sa, double now,
                         srv_conn_admit *how)
{
    srv_conn *c = calloc(1, sizeof *c);
    if (!c) {
        shutdown(fd, SHUT_RDWR);
        *how = SRV_CONN_REFUSED;
        return NULL;
    }
    c->fd = fd;
    addr_key(c, sa);
    c->ph = WAIT_HEAD;
    c->since = now;
    pthread_mutex_lock(&t->mu);
    c->prev = t->tail;
    if (t->tail)
        t->tail->next = c;
    else
        t->head = c;
    t->tail = c;
    *how = admit(t, c);
    if (*how == SRV_CONN_REFUSED) {
        answer_and_close(c, 503, "Service Unavailable", "server_error", "too_many_connections",
                         "too many connections: the server is at its connection limit "
                         "(--max-connections)",
                         now);
        t->st.refused++;
    } else {
        t->st.accepted++;
    }
    pthread_mutex_unlock(&t->mu);
    return c;
}

void srv_conns_close(srv_conns *t, srv_conn *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&t->mu);
    if (c->prev)
        c->prev->next = c->next;
    else
        t->head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        t->tail = c->prev;
    pthread_mutex_unlock(&t->mu);
    free(c);
}

static void set_phase(srv_conns *t, srv_conn *c, phase ph, double now)
{
    if (!c)
        return;
    pthread_mutex_lock(&t->mu);
    c->ph = ph;
    c->since = now;
    pthread_mutex_unlock(&t->mu);
}

void srv_conns_head(srv_conns *t, srv_conn *c, double now)
{
    set_phase(t, c, WAIT_BODY, now);
}

void srv_conns_busy(srv_conns *t, srv_conn *c)
{
    set_phase(t, c, BUSY, 0);
}

void srv_conns_idle(srv_conns *t, srv_conn *c, double now)
{
    set_phase(t, c, WAIT_HEAD, now);
}

bool srv_conns_is_reserve(srv_conns *t, const srv_conn *c)
{
    if (!c)
        return false;
    pthread_mutex_lock(&t->mu);
    bool r = c->reserve;
    pthread_mutex_unlock(&t->mu);
    return r;
}

bool srv_conns_is_closing(srv_conns *t, const srv_conn *c)
{
    if (!c)
        return false;
    pthread_mutex_lock(&t->mu);
    bool r = c->closing;
    pthread_mutex_unlock(&t->mu);
    return r;
}

int srv_conns_sweep(srv_conns *t, double now)
{
    int n = 0;
    pthread_mutex_lock(&t->mu);
    for (srv_conn *c = t->head; c; c = c->next) {
        if (c->closing) {
            if (c->kill_at > 0 && now >= c->kill_at) {
                shutdown(c->fd, SHUT_RDWR);
                c->kill_at = 0;
            }
            continue;
        }
        if (c->ph == WAIT_HEAD && t->o.header_timeout > 0 &&
            now - c->since >= t->o.header_timeout) {
            kill_now(c);
            t->st.header_timeouts++;
            n++;
        } else if (c->ph == WAIT_BODY && t->o.body_timeout > 0 &&
                   now - c->since >= t->o.body_timeout) {
            answer_and_close(c, 408, "Request Timeout", "invalid_request_error", "request_timeout",
                             "the request body did not arrive within the body timeout "
                             "(--body-timeout)",
                             now);
            t->st.body_timeouts++;
            n++;
        }
    }
    pthread_mutex_unlock(&t->mu);
    return n;
}

void srv_conns_stats_get(srv_conns *t, srv_conns_stats *out)
{
    pthread_mutex_lock(&t->mu);
    *out = t->st;
    out->open = out->waiting_head = out->reserve = 0;
    for (srv_conn *c = t->head; c; c = c->next) {
        if (c->closing)
            continue;
        out->open++;
        out->waiting_head += c->ph == WAIT_HEAD;
        out->reserve += c->reserve;
    }
    pthread_mutex_unlock(&t->mu);
}
