/* The transport's connection table: which TCP connections the server keeps, how long it waits
 * for a client, and whom it lets in when connections pile up (server/http.c calls it from
 * libmicrohttpd's callbacks; the main thread's sweep enforces the deadlines).
 *
 * What it guarantees (README, "Connections"):
 *   - at most max connections serve ordinary requests, at most per_ip of them from one address;
 *   - a request head (request line and headers) must be complete within header_timeout of the
 *     moment the server starts waiting for it (the connection opening, or the end of the
 *     previous answer on a kept-alive connection), and a body within body_timeout of its head;
 *     bytes that trickle in do not extend either deadline. A connection past one is closed
 *     (a late body gets a 408 first);
 *   - a connection that arrives when the server or its address is at the cap evicts the
 *     connection that has waited longest for a request head (of everybody, or of that address):
 *     one that has sent nothing complete holds nothing, so a flood of slow or idle connections
 *     cannot keep out a client that sends its request at once;
 *   - when every connection is busy with a real request, reserve more are accepted, marked as
 *     reserve connections: on those the routes serve /health and requests with a valid key only
 *     (srv_http_reserved) and answer 503 otherwise. Past max + reserve a new connection gets a
 *     503 and is closed.
 *
 * A connection is in one of three phases: waiting for a head, waiting for a body (head
 * complete), or busy (the server works on it or answers; never evicted, no deadline). Closing
 * one from another thread is shutdown(2) on its socket under the table lock: libmicrohttpd then
 * reads end-of-file and closes it, and it tells us (srv_conns_close) before it closes the
 * descriptor, so the descriptor is valid whenever the table holds it.
 *
 * Threads: every function may be called from any thread (one mutex).
 */
#ifndef ADAPTREE_SERVER_HTTP_CONNS_H
#define ADAPTREE_SERVER_HTTP_CONNS_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

typedef struct srv_conns srv_conns;
typedef struct srv_conn srv_conn;

typedef struct srv_conns_opts {
    unsigned max;          /* connections for ordinary requests (> 0) */
    unsigned reserve;      /* beyond max, for /health and keyed requests */
    unsigned per_ip;       /* connections from one address; 0 = no cap */
    double header_timeout; /* seconds to receive a request head; 0 = no limit */
    double body_timeout;   /* seconds to receive a body after its head; 0 = no limit */
} srv_conns_opts;

typedef enum srv_conn_admit {
    SRV_CONN_ADMITTED, /* an ordinary connection */
    SRV_CONN_RESERVE,  /* admitted through the reserve */
    SRV_CONN_REFUSED   /* answered 503 and shut down; still in the table until closed */
} srv_conn_admit;

/* Counters and gauges for /metrics. */
typedef struct srv_conns_stats {
    unsigned open;         /* connections in the table and not being closed by us */
    unsigned waiting_head; /* of those, waiting for a request head */
    unsigned reserve;      /* of those, admitted through the reserve */
    uint64_t accepted, refused, evicted, header_timeouts, body_timeouts;
} srv_conns_stats;

/* A table with the given limits (copied). NULL without memory. */
srv_conns *srv_conns_new(const srv_conns_opts *o);
/* Frees the table; the connections must all have been closed. NULL ignored. */
void srv_conns_free(srv_conns *t);

/* A connection was accepted on socket fd from address sa (NULL or not IP: no per-address cap),
 * at monotonic time now. Registers it (evicting another when a cap is reached) and says how it
 * was admitted in *how. A refused connection has been answered 503 and shut down. Returns the
 * record, which lives until srv_conns_close; NULL without memory (then fd is shut down). */
srv_conn *srv_conns_open(srv_conns *t, int fd, const struct sockaddr *sa, double now,
                         srv_conn_admit *how);
/* The connection is about to be closed: forgets it. NULL ignored. */
void srv_conns_close(srv_conns *t, srv_conn *c);

/* Phase changes: the head of a request is complete (the body deadline starts at now); the body
 * is complete (busy); the answer is over and the connection waits for the next head (its head
 * deadline starts at now). NULL ignored. */
void srv_conns_head(srv_conns *t, srv_conn *c, double now);
void srv_conns_busy(srv_conns *t, srv_conn *c);
void srv_conns_idle(srv_conns *t, srv_conn *c, double now);
/* True when c came in through the reserve. */
bool srv_conns_is_reserve(srv_conns *t, const srv_conn *c);
/* True when we are closing c (refused, evicted, timed out): it is answered, nothing more. */
bool srv_conns_is_closing(srv_conns *t, const srv_conn *c);

/* Closes every connection past its deadline at time now. Returns how many it closed. */
int srv_conns_sweep(srv_conns *t, double now);

void srv_conns_stats_get(srv_conns *t, srv_conns_stats *out);

#endif
