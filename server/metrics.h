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

/* Distinct adapter labels the latency histograms keep; later ones count under "other". The
 * labels are bounded already (registry node ids, "base", "_list_": srv_metric_label); this is
 * the backstop. */
#define SRV_METRIC_LABELS_MAX 1024

/* The latency histograms of one adapter label, in seconds, of generation requests: time to
 * first token, inter-token latency (every gap between two tokens of a choice), queue time
 * (arrival at the engine to admission) and end-to-end duration (arrival to the end). */
typedef struct srv_latency {
    char adapter[ADAPTER_ID_MAX + 1];
    srv_hist ttft, itl, queue, duration;
} srv_latency;

/* The counters the HTTP layer keeps. A snapshot owns its copy of lat (srv_metrics_data_free). */
typedef struct srv_metrics_data {
    uint64_t requests[SRV_ROUTE_COUNT][SRV_STATUS_N]; /* by route and status - SRV_STATUS_MIN */
    srv_latency *lat;                                 /* (n_lat) sorted by adapter */
    size_t n_lat;
} srv_metrics_data;

typedef struct srv_metrics {
    pthread_mutex_t mu;
    srv_metrics_data d;
} srv_metrics;

/* One generation request's latencies (seconds). */
typedef struct srv_gen_obs {
    double ttft;         /* < 0: it produced no token */
    double queue;        /* < 0: it was never admitted */
    double duration;     /* arrival to the end */
    const uint32_t *itl; /* NULL, or SRV_ITL_BUCKETS + 1 gap counts (srv_job_status.itl) */
    double itl_sum;
} srv_gen_obs;

void srv_metrics_init(srv_metrics *m);
void srv_metrics_deinit(srv_metrics *m);
/* Counts one answered request; statuses outside 100..599 are ignored. Any thread. */
void srv_metrics_request(srv_metrics *m, srv_route_id route, int status);
/* Observes a generation request's latencies under its adapter label (srv_metric_label), and
 * adds the inter-token gaps of more choices with srv_metrics_itl. Without memory for a new
 * label the request is not observed. Any thread. */
void srv_metrics_generation(srv_metrics *m, const char *label, const srv_gen_obs *o);
void srv_metrics_itl(srv_metrics *m, const char *label, const uint32_t *itl, double itl_sum);
/* Copies the counters into *out (its own lat). 0, or -1 without memory (*out then empty).
 * Any thread. */
int srv_metrics_snapshot(srv_metrics *m, srv_metrics_data *out);
void srv_metrics_data_free(srv_metrics_data *d);

/* The bounded adapter label of a selection, for metrics (unlike srv_selection_label, which logs
 * it in full): "base" for none, the node id for "model" alone (the registry resolved it, so it
 * names a node), "_list_" for anything with an "adapters" list, whose ids and weights a client
 * picks at will. */
const char *srv_metric_label(const char *model, int n_adapters);

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
