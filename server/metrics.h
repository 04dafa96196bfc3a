/* Prometheus metrics (text exposition format 0.0.4) for GET /metrics.
 *
 * The HTTP layer counts requests per route and status and observes time-to-first-token and
 * request duration into a srv_metrics; the engine and the registry keep their own counters. A
 * scrape copies all of them (srv_metrics_snapshot, srv_engine_stats_get, ...) and renders the
 * copies with srv_metrics_render, a pure function, so the exact text can be unit-tested.
 *
 * Thread-safety: srv_metrics_* recording and snapshot functions may be called from any thread
 * (one mutex); srv_metrics_render and srv_prom_escape are pure.
 */
#ifndef ADAPTREE_SERVER_METRICS_H
#define ADAPTREE_SERVER_METRICS_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "adapters/registry.h"
#include "server/engine.h"
#include "server/http_conns.h"
#include "server/strbuf.h"

/* The routes (server/routes.def), as metrics label them; unknown paths count as "other" so the
 * label stays bounded. */
typedef enum srv_route_id {
#define ROUTE(id, method, path, flags, handler) SRV_ROUTE_##id,
#include "server/routes.def"
#undef ROUTE
    SRV_ROUTE_OTHER,
    SRV_ROUTE_COUNT
} srv_route_id;

/* The path of a route ("/v1/completions"), "other" for SRV_ROUTE_OTHER. */
const char *srv_route_name(srv_route_id r);

#define SRV_HIST_MAX 16
#define SRV_STATUS_MIN 100
#define SRV_STATUS_N 500 /* statuses 100..599 */

/* A cumulative-on-render histogram: counts[i] observations in (bounds[i-1], bounds[i]],
 * counts[n_bounds] above the last bound. */
typedef struct srv_hist {
    int n_bounds;
    double bounds[SRV_HIST_MAX];
    uint64_t counts[SRV_HIST_MAX + 1];
    double sum;
    uint64_t count;
} srv_hist;

/* The counters the HTTP layer keeps: plain values, copied as a whole by a snapshot. */
typedef struct srv_metrics_data {
    uint64_t requests[SRV_ROUTE_COUNT][SRV_STATUS_N]; /* by route and status - SRV_STATUS_MIN */
    srv_hist ttft;                                    /* seconds, generation requests */
    srv_hist duration;                                /* seconds, generation requests */
} srv_metrics_data;

typedef struct srv_metrics {
    pthread_mutex_t mu;
    srv_metrics_data d;
} srv_metrics;

void srv_metrics_init(srv_metrics *m);
void srv_metrics_deinit(srv_metrics *m);
/* Counts one answered request; statuses outside 100..599 are ignored. Any thread. */
void srv_metrics_request(srv_metrics *m, srv_route_id route, int status);
/* Observes a generation request's time to first token (< 0: none) and duration. Any thread. */
void srv_metrics_generation(srv_metrics *m, double ttft_s, double duration_s);
void srv_metrics_snapshot(srv_metrics *m, srv_metrics_data *out);

/* Sets the bounds of a histogram (ascending, at most SRV_HIST_MAX) and zeroes it. */
void srv_hist_init(srv_hist *h, const double *bounds, int n);
void srv_hist_observe(srv_hist *h, double v);

/* The process, as Prometheus' client libraries export it (process_* families). */
typedef struct srv_process_stats {
    double cpu_seconds;        /* user + system CPU time */
    uint64_t resident_bytes;   /* resident set size */
    uint64_t virtual_bytes;    /* virtual memory size */
    uint64_t open_fds;         /* entries of /proc/self/fd */
    uint64_t max_fds;          /* the soft RLIMIT_NOFILE */
    double start_time_seconds; /* Unix time the process started */
} srv_process_stats;

/* Reads the process stats from /proc/self (Linux). 0, or -1 when /proc cannot be read (then
 * the fields it could not read are 0). Any thread. */
int srv_process_stats_get(srv_process_stats *out);

/* What adaptree_build_info labels (server/version.h). */
typedef struct srv_build_labels {
    const char *version, *commit, *kernels;
} srv_build_labels;

/* Everything one scrape shows. Pointers may be NULL (labels/nodes with n = 0, registry NULL
 * when serving the base model only). */
typedef struct srv_metrics_view {
    const srv_metrics_data *http;
    const srv_engine_stats *engine;
    const srv_label_stats *labels;
    size_t n_labels;
    const adapter_node_info *nodes;
    size_t n_nodes;
    const adapter_registry_stats *registry;
    const srv_conns_stats *conns;     /* the transport's connection table, NULL if none */
    const srv_build_labels *build;    /* adaptree_build_info, NULL: not rendered */
    const srv_process_stats *process; /* process_*, NULL: not rendered */
} srv_metrics_view;

/* Appends the exposition: # HELP and # TYPE before every family, label values escaped. */
void srv_metrics_render(srv_buf *b, const srv_metrics_view *v);

/* Appends s as a Prometheus label value (without quotes): \ -> \\, " -> \", newline -> \n. */
void srv_prom_escape(srv_buf *b, const char *s);

#endif
