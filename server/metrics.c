/* Prometheus metrics: the HTTP layer's counters and the text exposition (server/metrics.h). */
#include "server/metrics.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

static const char *const route_names[SRV_ROUTE_COUNT] = {
#define ROUTE(id, method, path, flags, handler) [SRV_ROUTE_##id] = (path),
#include "server/routes.def"
#undef ROUTE
    [SRV_ROUTE_OTHER] = "other",
};

const char *srv_route_name(srv_route_id r)
{
    return (unsigned)r < SRV_ROUTE_COUNT ? route_names[r] : "other";
}

static const double ttft_bounds[] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
static const double duration_bounds[] = {0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};
static const double queue_bounds[] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                      0.5,   1,     2.5,  5,     10,   30,  60};

void srv_hist_init(srv_hist *h, const double *bounds, int n)
{
    memset(h, 0, sizeof *h);
    if (n > SRV_HIST_MAX)
        n = SRV_HIST_MAX;
    h->n_bounds = n;
    memcpy(h->bounds, bounds, (size_t)n * sizeof *bounds);
}

void srv_hist_observe(srv_hist *h, double v)
{
    h->counts[srv_bucket_of(h->bounds, h->n_bounds, v)]++;
    h->sum += v;
    h->count++;
}

void srv_metrics_init(srv_metrics *m)
{
    memset(m, 0, sizeof *m);
    pthread_mutex_init(&m->mu, NULL);
}

void srv_metrics_deinit(srv_metrics *m)
{
    if (m) {
        pthread_mutex_destroy(&m->mu);
        srv_metrics_data_free(&m->d);
    }
}

void srv_metrics_request(srv_metrics *m, srv_route_id route, int status)
{
    if ((unsigned)route >= SRV_ROUTE_COUNT || status < SRV_STATUS_MIN ||
        status >= SRV_STATUS_MIN + SRV_STATUS_N)
        return;
    pthread_mutex_lock(&m->mu);
    m->d.requests[route][status - SRV_STATUS_MIN]++;
    pthread_mutex_unlock(&m->mu);
}

const char *srv_metric_label(const char *model, int n_adapters)
{
    if (n_adapters > 0)
        return "_list_";
    return model ? model : "base";
}

/* The histograms of a label, made on first use ("other" past SRV_METRIC_LABELS_MAX: made once,
 * as label SRV_METRIC_LABELS_MAX + 1, then found). NULL only without memory. m->mu held. */
static srv_latency *latency_get(srv_metrics *m, const char *label)
{
    srv_metrics_data *d = &m->d;
    if (d->n_lat >= SRV_METRIC_LABELS_MAX)
        label = "other";
    size_t lo = 0, hi = d->n_lat;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(label, d->lat[mid].adapter);
        if (!c)
            return &d->lat[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    srv_latency *v = realloc(d->lat, (d->n_lat + 1) * sizeof *v);
    if (!v)
        return NULL;
    d->lat = v;
    memmove(v + lo + 1, v + lo, (d->n_lat - lo) * sizeof *v);
    srv_latency *l = &v[lo];
    memset(l, 0, sizeof *l);
    snprintf(l->adapter, sizeof l->adapter, "%s", label);
    srv_hist_init(&l->ttft, ttft_bounds, (int)(sizeof ttft_bounds / sizeof *ttft_bounds));
    srv_hist_init(&l->itl, srv_itl_bounds, SRV_ITL_BUCKETS);
    srv_hist_init(&l->queue, queue_bounds, (int)(sizeof queue_bounds / sizeof *queue_bounds));
    srv_hist_init(&l->duration, duration_bounds,
                  (int)(sizeof duration_bounds / sizeof *duration_bounds));
    d->n_lat++;
    return l;
}

/* Adds counts (h->n_bounds + 1 of them, bucketed by the same bounds) and their sum to h. */
static void hist_add_counts(srv_hist *h, const uint32_t *counts, double sum)
{
    for (int i = 0; i <= h->n_bounds; i++) {
        h->counts[i] += counts[i];
        h->count += counts[i];
    }
    h->sum += sum;
}

void srv_metrics_generation(srv_metrics *m, const char *label, const srv_gen_obs *o)
{
    pthread_mutex_lock(&m->mu);
    srv_latency *l = latency_get(m, label);
    if (l) {
        if (o->ttft >= 0)
            srv_hist_observe(&l->ttft, o->ttft);
        if (o->queue >= 0)
            srv_hist_observe(&l->queue, o->queue);
        srv_hist_observe(&l->duration, o->duration);
        if (o->itl)
            hist_add_counts(&l->itl, o->itl, o->itl_sum);
    }
    pthread_mutex_unlock(&m->mu);
}

void srv_metrics_itl(srv_metrics *m, const char *label, const uint32_t *itl, double itl_sum)
{
    pthread_mutex_lock(&m->mu);
    srv_latency *l = latency_get(m, label);
    if (l)
        hist_add_counts(&l->itl, itl, itl_sum);
    pthread_mutex_unlock(&m->mu);
}

int srv_metrics_snapshot(srv_metrics *m, srv_metrics_data *out)
{
    pthread_mutex_lock(&m->mu);
    *out = m->d;
    out->lat = m->d.n_lat ? malloc(m->d.n_lat * sizeof *out->lat) : NULL;
    if (out->lat)
        memcpy(out->lat, m->d.lat, m->d.n_lat * sizeof *out->lat);
    pthread_mutex_unlock(&m->mu);
    if (out->n_lat && !out->lat) {
        out->n_lat = 0;
        return -1;
    }
    return 0;
}

void srv_metrics_data_free(srv_metrics_data *d)
{
    free(d->lat);
    d->lat = NULL;
    d->n_lat = 0;
}

/* ---- the process ---------------------------------------------------------------------------- */

/* The boot time (Unix seconds) from /proc/stat's btime line; 0 when unknown. */
static long long boot_time(void)
{
    FILE *f = fopen("/proc/stat", "r");
    if (!f)
        return 0;
    char line[256];
    long long bt = 0;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "btime ", 6)) {
            bt = strtoll(line + 6, NULL, 10);
            break;
        }
    fclose(f);
    return bt;
}

/* Reads /proc/self/stat's times and sizes into out: 0 or -1. Fields are counted after the
 * command name (which may hold spaces and parentheses, hence the last ')'), from 3 (the state):
 * utime is field 14, stime 15, starttime 22 (clock ticks after boot), vsize 23 (bytes), rss 24
 * (pages). */
static int read_stat(srv_process_stats *out)
{
    char buf[1024];
    FILE *f = fopen("/proc/self/stat", "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *p = strrchr(buf, ')');
    if (!p)
        return -1;
    unsigned long long v[25] = {0}; /* by field number; 14, 15, 22, 23, 24 are read */
    int field = 3;
    for (p++; field <= 24; field++) {
        while (*p == ' ')
            p++;
        if (!*p)
            return -1;
        v[field] = field == 3 ? 0 : strtoull(p, NULL, 10);
        p += strcspn(p, " ");
    }
    long tick = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
    if (tick <= 0 || page <= 0)
        return -1;
    out->cpu_seconds = (double)(v[14] + v[15]) / (double)tick;
    out->virtual_bytes = v[23];
    out->resident_bytes = v[24] * (uint64_t)page;
    long long bt = boot_time();
    out->start_time_seconds = bt ? (double)bt + (double)v[22] / (double)tick : 0;
    return 0;
}

int srv_process_stats_get(srv_process_stats *out)
{
    memset(out, 0, sizeof *out);
    int rc = read_stat(out);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        out->max_fds = rl.rlim_cur == RLIM_INFINITY ? UINT64_MAX : (uint64_t)rl.rlim_cur;
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            out->open_fds++;
    closedir(d);
    if (out->open_fds)
        out->open_fds--; /* the directory's own descriptor */
    return rc;
}

/* ---- rendering ------------------------------------------------------------------------------ */

void srv_prom_escape(srv_buf *b, const char *s)
{
    size_t run = 0, i = 0;
    for (; s[i]; i++) {
        const char *e = s[i] == '\\' ? "\\\\" : s[i] == '"' ? "\\\"" : s[i] == '\n' ? "\\n" : NULL;
        if (!e)
            continue;
        srv_buf_put(b, s + run, i - run);
        srv_buf_puts(b, e);
        run = i + 1;
    }
    srv_buf_put(b, s + run, i - run);
}

static void family(srv_buf *b, const char *name, const char *type, const char *help)
{
    srv_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A family of one unlabelled sample. */
static void metric_u64(srv_buf *b, const char *name, const char *type, const char *help, uint64_t v)
{
    family(b, name, type, help);
    srv_buf_printf(b, "%s %llu\n", name, (unsigned long long)v);
}

static void labeled_u64(srv_buf *b, const char *name, const char *label, const char *value,
                        uint64_t v)
{
    srv_buf_printf(b, "%s{%s=\"", name, label);
    srv_prom_escape(b, value);
    srv_buf_printf(b, "\"} %llu\n", (unsigned long long)v);
}

/* One histogram's series: buckets, sum and count; label is "" or 'name="value",' (escaped). */
static void hist_series(srv_buf *b, const char *name, const char *label, const srv_hist *h)
{
    uint64_t cum = 0;
    for (int i = 0; i < h->n_bounds; i++) {
        cum += h->counts[i];
        srv_buf_printf(b, "%s_bucket{%sle=\"%g\"} %llu\n", name, label, h->bounds[i],
                       (unsigned long long)cum);
    }
    cum += h->counts[h->n_bounds];
    srv_buf_printf(b, "%s_bucket{%sle=\"+Inf\"} %llu\n", name, label, (unsigned long long)cum);
    size_t n = strlen(label);
    if (n) /* 'adapter="x",' -> '{adapter="x"}' */
        srv_buf_printf(b, "%s_sum{%.*s} %.9g\n%s_count{%.*s} %llu\n", name, (int)n - 1, label,
                       h->sum, name, (int)n - 1, label, (unsigned long long)h->count);
    else
        srv_buf_printf(b, "%s_sum %.9g\n%s_count %llu\n", name, h->sum, name,
                       (unsigned long long)h->count);
}

/* A latency histogram family with a series per adapter label; off: the srv_hist in
 * srv_latency. */
static void latency_family(srv_buf *b, const char *name, const char *help,
                           const srv_metrics_data *d, size_t off)
{
    family(b, name, "histogram", help);
    for (size_t i = 0; i < d->n_lat; i++) {
        srv_buf lab;
        srv_buf_init(&lab);
        srv_buf_puts(&lab, "adapter=\"");
        srv_prom_escape(&lab, d->lat[i].adapter);
        srv_buf_puts(&lab, "\",");
        if (srv_buf_ok(&lab))
            hist_series(b, name, lab.data, (const srv_hist *)((const char *)&d->lat[i] + off));
        srv_buf_deinit(&lab);
    }
}

static void render_requests(srv_buf *b, const srv_metrics_data *d)
{
    family(b, "adaptree_requests_total", "counter", "HTTP requests answered, by route and status.");
    for (int r = 0; r < SRV_ROUTE_COUNT; r++)
        for (int s = 0; s < SRV_STATUS_N; s++)
            if (d->requests[r][s]) {
                srv_buf_puts(b, "adaptree_requests_total{route=\"");
                srv_prom_escape(b, srv_route_name((srv_route_id)r));
                srv_buf_printf(b, "\",status=\"%d\"} %llu\n", s + SRV_STATUS_MIN,
                               (unsigned long long)d->requests[r][s]);
            }
}

/* The engine's step histogram: step_hist[i] counts steps with rows in (2^(i-1), 2^i], the last
 * slot those above 128. */
static void render_batch_rows(srv_buf *b, const srv_engine_stats *e)
{
    family(b, "adaptree_batch_rows", "histogram", "Rows (tokens) per forward step.");
    uint64_t cum = 0;
    for (int i = 0; i < 8; i++) {
        cum += e->step_hist[i];
        if (i < 7)
            srv_buf_printf(b, "adaptree_batch_rows_bucket{le=\"%d\"} %llu\n", 1 << i,
                           (unsigned long long)cum);
    }
    srv_buf_printf(b, "adaptree_batch_rows_bucket{le=\"+Inf\"} %llu\n", (unsigned long long)cum);
    srv_buf_printf(b, "adaptree_batch_rows_sum %llu\nadaptree_batch_rows_count %llu\n",
                   (unsigned long long)e->rows, (unsigned long long)e->steps);
}

static void render_engine(srv_buf *b, const srv_engine_stats *e)
{
    metric_u64(b, "adaptree_prompt_tokens_total", "counter", "Prompt tokens computed.",
               e->prompt_tokens);
    metric_u64(b, "adaptree_generated_tokens_total", "counter", "Tokens generated.",
               e->generated_tokens);
    metric_u64(b, "adaptree_steps_total", "counter", "Forward steps.", e->steps);
    family(b, "adaptree_step_seconds_total", "counter",
           "Time spent in forward steps and sampling.");
    srv_buf_printf(b, "adaptree_step_seconds_total %.9g\n", e->step_seconds);
    metric_u64(b, "adaptree_decode_steps_total", "counter",
               "Forward steps with decode rows only (no prompt rows).", e->decode_steps);
    metric_u64(b, "adaptree_decode_rows_total", "counter",
               "Rows of the decode-only steps (draft rows included).", e->decode_rows);
    family(b, "adaptree_decode_step_seconds_total", "counter",
           "Time spent in decode-only steps and their sampling.");
    srv_buf_printf(b, "adaptree_decode_step_seconds_total %.9g\n", e->decode_seconds);
    family(b, "adaptree_step_target_ms", "gauge",
           "Latency target of the last step with decode rows, for which its prompt chunks were "
           "sized (--max-step-ms; 0 before any, or with --max-step-ms 0).");
    srv_buf_printf(b, "adaptree_step_target_ms %.6g\n", e->step_target_ms);
    family(b, "adaptree_prompt_row_ms", "gauge",
           "Learned cost of one prompt row beside decode rows, in ms (0 before any).");
    srv_buf_printf(b, "adaptree_prompt_row_ms %.6g\n", e->prompt_row_ms);
    metric_u64(b, "adaptree_steps_over_target_total", "counter",
               "Steps planned for a latency target that took longer.", e->steps_over_target);
    render_batch_rows(b, e);
    family(b, "adaptree_step_duration_seconds", "histogram",
           "Time of one forward step with its sampling, whatever its rows.");
    srv_hist st = {.n_bounds = SRV_STEP_BUCKETS, .sum = e->step_seconds};
    memcpy(st.bounds, srv_step_bounds, sizeof srv_step_bounds);
    for (int i = 0; i <= SRV_STEP_BUCKETS; i++) {
        st.counts[i] = e->step_time[i];
        st.count += e->step_time[i];
    }
    hist_series(b, "adaptree_step_duration_seconds", "", &st);
    family(b, "adaptree_jobs_total", "counter", "Generation jobs by how they ended.");
    srv_buf_printf(b,
                   "adaptree_jobs_total{result=\"finished\"} %llu\n"
                   "adaptree_jobs_total{result=\"failed\"} %llu\n"
                   "adaptree_jobs_total{result=\"cancelled\"} %llu\n",
                   (unsigned long long)e->jobs_finished, (unsigned long long)e->jobs_failed,
                   (unsigned long long)e->jobs_cancelled);
    family(b, "adaptree_running", "gauge", "Requests holding a sequence slot.");
    srv_buf_printf(b, "adaptree_running %d\n", e->running);
    family(b, "adaptree_waiting", "gauge", "Requests queued, including those waiting for a load.");
    srv_buf_printf(b, "adaptree_waiting %d\n", e->waiting);
    family(b, "adaptree_loading", "gauge", "Queued requests waiting for an adapter load.");
    srv_buf_printf(b, "adaptree_loading %d\n", e->loading);
    metric_u64(b, "adaptree_queue_rejected_total", "counter",
               "Requests refused because the queue was full (HTTP 429).", e->jobs_rejected);
    metric_u64(b, "adaptree_kv_bytes", "gauge",
               "Bytes of the KV pool in use (running sequences and the prefix cache).",
               e->kv_bytes);
    metric_u64(b, "adaptree_kv_block_bytes", "gauge", "Bytes of one KV block (16 positions).",
               e->kv_block_bytes);
    metric_u64(b, "adaptree_kv_blocks", "gauge", "Blocks of the KV pool (--kv-cache-mb).",
               (uint64_t)e->kv_blocks_total);
    metric_u64(b, "adaptree_kv_blocks_used", "gauge",
               "KV blocks in use by running sequences or the prefix cache.",
               (uint64_t)e->kv_blocks_used);
    metric_u64(b, "adaptree_prefix_cache_blocks", "gauge", "KV blocks held by the prefix cache.",
               (uint64_t)e->kv_blocks_cached);
    metric_u64(b, "adaptree_kv_preemptions_total", "counter",
               "Sequences whose KV blocks were taken for older ones (recomputed later).",
               e->kv_preemptions);
    metric_u64(b, "adaptree_kv_admission_waits_total", "counter",
               "Requests whose admission waited for free KV blocks.", e->kv_admission_waits);
    metric_u64(b, "adaptree_kv_resumed_tokens_total", "counter",
               "Positions preempted sequences took back from the prefix cache instead of "
               "computing them again.",
               e->kv_resumed_tokens);
    metric_u64(b, "adaptree_prefix_cache_lookups_total", "counter",
               "Admitted requests that looked up the prefix cache.", e->prefix_lookups);
    metric_u64(b, "adaptree_prefix_cache_hits_total", "counter",
               "Lookups that found cached blocks (same tokens under the same adapters).",
               e->prefix_hits);
    metric_u64(b, "adaptree_prefix_cache_misses_total", "counter", "Lookups that found nothing.",
               e->prefix_lookups - e->prefix_hits);
    metric_u64(b, "adaptree_prefix_cache_hit_tokens_total", "counter",
               "Prompt tokens whose KV came from the prefix cache (not computed).",
               e->prefix_hit_tokens);
    metric_u64(b, "adaptree_prefix_cache_evictions_total", "counter",
               "Prefix cache blocks evicted (least recently used, unread).", e->prefix_evictions);
    metric_u64(b, "adaptree_shared_prompt_tokens_total", "counter",
               "Prompt tokens of a request's choices 2..n taken from its first choice's KV (not "
               "computed).",
               e->shared_prompt_tokens);
    metric_u64(b, "adaptree_spec_draft_tokens_total", "counter",
               "Draft tokens of speculative decoding (prompt lookup) verified in a step.",
               e->spec_draft_tokens);
    metric_u64(b, "adaptree_spec_accepted_tokens_total", "counter",
               "Draft tokens that matched the token sampled (each saves a step).",
               e->spec_accepted_tokens);
}

static void render_conns(srv_buf *b, const srv_conns_stats *c)
{
    family(b, "adaptree_connections", "gauge", "Open client connections.");
    srv_buf_printf(b, "adaptree_connections %u\n", c->open);
    family(b, "adaptree_connections_waiting_head", "gauge",
           "Open connections waiting for a request head (new or kept alive).");
    srv_buf_printf(b, "adaptree_connections_waiting_head %u\n", c->waiting_head);
    family(b, "adaptree_connections_reserve", "gauge",
           "Open connections admitted through the reserve (every ordinary one was busy).");
    srv_buf_printf(b, "adaptree_connections_reserve %u\n", c->reserve);
    metric_u64(b, "adaptree_connections_accepted_total", "counter", "Connections accepted.",
               c->accepted);
    family(b, "adaptree_connections_closed_total", "counter",
           "Connections the server closed before their client did, by reason.");
    srv_buf_printf(b,
                   "adaptree_connections_closed_total{reason=\"header_timeout\"} %llu\n"
                   "adaptree_connections_closed_total{reason=\"body_timeout\"} %llu\n"
                   "adaptree_connections_closed_total{reason=\"evicted\"} %llu\n"
                   "adaptree_connections_closed_total{reason=\"refused\"} %llu\n",
                   (unsigned long long)c->header_timeouts, (unsigned long long)c->body_timeouts,
                   (unsigned long long)c->evicted, (unsigned long long)c->refused);
}

static void render_labels(srv_buf *b, const srv_label_stats *l, size_t n)
{
    family(b, "adaptree_adapter_requests_total", "counter",
           "Generation requests by adapter selection (\"base\" for none).");
    for (size_t i = 0; i < n; i++)
        labeled_u64(b, "adaptree_adapter_requests_total", "adapter", l[i].label, l[i].requests);
    family(b, "adaptree_adapter_prompt_tokens_total", "counter",
           "Prompt tokens by adapter selection.");
    for (size_t i = 0; i < n; i++)
        labeled_u64(b, "adaptree_adapter_prompt_tokens_total", "adapter", l[i].label,
                    l[i].prompt_tokens);
    family(b, "adaptree_adapter_generated_tokens_total", "counter",
           "Tokens generated by adapter selection.");
    for (size_t i = 0; i < n; i++)
        labeled_u64(b, "adaptree_adapter_generated_tokens_total", "adapter", l[i].label,
                    l[i].generated_tokens);
    family(b, "adaptree_adapter_cached_tokens_total", "counter",
           "Prompt tokens taken from the prefix cache, by adapter selection.");
    for (size_t i = 0; i < n; i++)
        labeled_u64(b, "adaptree_adapter_cached_tokens_total", "adapter", l[i].label,
                    l[i].cached_tokens);
}

static void render_nodes(srv_buf *b, const adapter_node_info *nodes, size_t n)
{
    static const struct {
        const char *name, *type, *help;
        size_t off;
    } fams[] = {
        {"adaptree_adapter_loads_total", "counter", "Adapter versions loaded, by registry node.",
         offsetof(adapter_node_info, loads)},
        {"adaptree_adapter_load_failures_total", "counter", "Adapter loads that failed.",
         offsetof(adapter_node_info, load_failures)},
        {"adaptree_adapter_evictions_total", "counter", "Adapter versions evicted from memory.",
         offsetof(adapter_node_info, evictions)},
        {"adaptree_adapter_hits_total", "counter", "Acquisitions that found the adapter resident.",
         offsetof(adapter_node_info, hits)},
    };
    for (size_t f = 0; f < sizeof fams / sizeof *fams; f++) {
        family(b, fams[f].name, fams[f].type, fams[f].help);
        for (size_t i = 0; i < n; i++) {
            if (nodes[i].state == ADAPTER_NAMESPACE)
                continue;
            uint64_t v;
            memcpy(&v, (const char *)&nodes[i] + fams[f].off, sizeof v);
            labeled_u64(b, fams[f].name, "adapter", nodes[i].id, v);
        }
    }
    family(b, "adaptree_adapter_resident_bytes", "gauge", "Bytes of the resident version.");
    for (size_t i = 0; i < n; i++)
        if (nodes[i].state != ADAPTER_NAMESPACE)
            labeled_u64(b, "adaptree_adapter_resident_bytes", "adapter", nodes[i].id,
                        nodes[i].bytes);
}

static void render_build(srv_buf *b, const srv_build_labels *l)
{
    family(b, "adaptree_build_info", "gauge",
           "Always 1: the build (version, git commit) and the CPU kernels in use, as labels.");
    srv_buf_puts(b, "adaptree_build_info{version=\"");
    srv_prom_escape(b, l->version);
    srv_buf_puts(b, "\",commit=\"");
    srv_prom_escape(b, l->commit);
    srv_buf_puts(b, "\",kernels=\"");
    srv_prom_escape(b, l->kernels);
    srv_buf_puts(b, "\"} 1\n");
}

/* The names and meanings of Prometheus' client libraries (process collector). */
static void render_process(srv_buf *b, const srv_process_stats *p)
{
    family(b, "process_cpu_seconds_total", "counter",
           "Total user and system CPU time spent in seconds.");
    srv_buf_printf(b, "process_cpu_seconds_total %.9g\n", p->cpu_seconds);
    metric_u64(b, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
               p->resident_bytes);
    metric_u64(b, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.",
               p->virtual_bytes);
    metric_u64(b, "process_open_fds", "gauge", "Number of open file descriptors.", p->open_fds);
    metric_u64(b, "process_max_fds", "gauge", "Maximum number of open file descriptors.",
               p->max_fds);
    family(b, "process_start_time_seconds", "gauge",
           "Start time of the process since unix epoch in seconds.");
    srv_buf_printf(b, "process_start_time_seconds %.3f\n", p->start_time_seconds);
}

void srv_metrics_render(srv_buf *b, const srv_metrics_view *v)
{
    if (v->build)
        render_build(b, v->build);
    if (v->process)
        render_process(b, v->process);
    if (v->http) {
        render_requests(b, v->http);
        latency_family(b, "adaptree_time_to_first_token_seconds",
                       "Time from a generation request's arrival at the engine to its first "
                       "token, by adapter selection.",
                       v->http, offsetof(srv_latency, ttft));
        latency_family(b, "adaptree_inter_token_latency_seconds",
                       "Time between two consecutive tokens of a choice, by adapter selection.",
                       v->http, offsetof(srv_latency, itl));
        latency_family(b, "adaptree_queue_time_seconds",
                       "Time a generation request waited for a sequence slot (and its "
                       "adapters' load), by adapter selection.",
                       v->http, offsetof(srv_latency, queue));
        latency_family(b, "adaptree_request_duration_seconds",
                       "Time from a generation request's arrival to its end, by adapter "
                       "selection.",
                       v->http, offsetof(srv_latency, duration));
    }
    if (v->engine)
        render_engine(b, v->engine);
    if (v->conns)
        render_conns(b, v->conns);
    render_labels(b, v->labels, v->labels ? v->n_labels : 0);
    render_nodes(b, v->nodes, v->nodes ? v->n_nodes : 0);
    const adapter_registry_stats *r = v->registry;
    metric_u64(b, "adaptree_adapter_cache_bytes", "gauge", "Bytes of resident adapters.",
               r ? r->resident_bytes : 0);
    metric_u64(b, "adaptree_adapter_cache_budget_bytes", "gauge",
               "Budget for resident adapters (--adapter-cache-mb; 0 = unlimited).",
               r ? r->cache_bytes : 0);
    metric_u64(b, "adaptree_adapter_cache_misses_total", "counter",
               "Acquisitions that had to load an adapter.", r ? r->misses : 0);
}
