/* Tests for server/metrics.c: label escaping, histogram buckets, and the rendered exposition
 * (HELP and TYPE before each family, cumulative buckets, per-adapter series). */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server/metrics.h"
#include "tests/test.h"

TEST(metrics_label_escape)
{
    srv_buf b;
    srv_buf_init(&b);
    srv_prom_escape(&b, "plain/id:0.5+x");
    srv_buf_putc(&b, '|');
    srv_prom_escape(&b, "a\\b\"c\nd");
    CHECK_EQ_STR(b.data, "plain/id:0.5+x|a\\\\b\\\"c\\nd");
    srv_buf_deinit(&b);
}

TEST(metrics_histogram_buckets)
{
    static const double bounds[] = {0.1, 1, 10};
    srv_hist h;
    srv_hist_init(&h, bounds, 3);
    srv_hist_observe(&h, 0.1); /* on the bound: le="0.1" */
    srv_hist_observe(&h, 0.5);
    srv_hist_observe(&h, 100);
    CHECK_EQ_INT(h.counts[0], 1);
    CHECK_EQ_INT(h.counts[1], 1);
    CHECK_EQ_INT(h.counts[2], 0);
    CHECK_EQ_INT(h.counts[3], 1);
    CHECK_EQ_INT(h.count, 3);
    CHECK_NEAR(h.sum, 100.6, 1e-9);
}

/* Every line is a comment or "name{labels} value", and every sample's family was declared
 * with HELP and TYPE before it. */
static int well_formed(const char *text, char *why, size_t cap)
{
    char declared[128][80];
    int n_decl = 0;
    const char *p = text;
    while (*p) {
        const char *nl = strchr(p, '\n');
        if (!nl) {
            snprintf(why, cap, "no final newline");
            return 0;
        }
        char line[512];
        size_t n = (size_t)(nl - p) < sizeof line - 1 ? (size_t)(nl - p) : sizeof line - 1;
        memcpy(line, p, n);
        line[n] = 0;
        p = nl + 1;
        if (!strncmp(line, "# HELP ", 7))
            continue;
        if (!strncmp(line, "# TYPE ", 7)) {
            if (n_decl < 128)
                sscanf(line + 7, "%79s", declared[n_decl++]);
            continue;
        }
        char name[80];
        if (sscanf(line, "%79[a-zA-Z0-9_:]", name) != 1) {
            snprintf(why, cap, "bad line: %s", line);
            return 0;
        }
        int ok = 0;
        for (int i = 0; i < n_decl && !ok; i++) {
            size_t k = strlen(declared[i]);
            ok = !strncmp(name, declared[i], k) &&
                 (!name[k] || !strcmp(name + k, "_bucket") || !strcmp(name + k, "_sum") ||
                  !strcmp(name + k, "_count"));
        }
        if (!ok) {
            snprintf(why, cap, "sample before its TYPE: %s", line);
            return 0;
        }
        const char *sp = strrchr(line, ' ');
        char *end;
        if (!sp || (strtod(sp + 1, &end), *end)) {
            snprintf(why, cap, "bad value: %s", line);
            return 0;
        }
    }
    return 1;
}

TEST(metrics_render)
{
    srv_metrics m;
    srv_metrics_init(&m);
    srv_metrics_request(&m, SRV_ROUTE_COMPLETIONS, 200);
    srv_metrics_request(&m, SRV_ROUTE_COMPLETIONS, 200);
    srv_metrics_request(&m, SRV_ROUTE_CHAT, 429);
    srv_metrics_request(&m, SRV_ROUTE_OTHER, 404);
    srv_metrics_request(&m, SRV_ROUTE_OTHER, 99); /* ignored */
    uint32_t itl[SRV_ITL_BUCKETS + 1] = {0};
    itl[1] = 3;               /* (5, 10] ms */
    itl[SRV_ITL_BUCKETS] = 1; /* above 5 s */
    srv_gen_obs o1 = {.ttft = 0.02, .queue = 0.003, .duration = 0.3, .itl = itl, .itl_sum = 6.5};
    srv_gen_obs o2 = {.ttft = -1, .queue = -1, .duration = 0.04}; /* never admitted */
    srv_metrics_generation(&m, "base", &o1);
    srv_metrics_generation(&m, "base", &o2);
    srv_metrics_generation(&m, "fr/legal", &o1);
    srv_metrics_itl(&m, "fr/legal", itl, 6.5); /* a second choice */
    srv_metrics_data *d = calloc(1, sizeof *d);
    CHECK(srv_metrics_snapshot(&m, d) == 0);
    srv_engine_stats es = {.prompt_tokens = 40,
                           .generated_tokens = 9,
                           .steps = 10,
                           .rows = 49,
                           .decode_steps = 7,
                           .decode_rows = 33,
                           .decode_seconds = 0.25,
                           .running = 1,
                           .waiting = 2,
                           .jobs_rejected = 3,
                           .kv_bytes = 4096,
                           .kv_resumed_tokens = 48};
    es.step_hist[0] = 8; /* 1 row */
    es.step_seconds = 0.5;
    es.step_time[2] = 9; /* (5, 10] ms */
    es.step_time[SRV_STEP_BUCKETS] = 1;
    es.step_hist[5] = 1; /* (16, 32] */
    es.step_hist[7] = 1; /* > 64 */
    srv_label_stats ls[2] = {{.label = "base", .requests = 2, .generated_tokens = 7},
                             {.label = "fr\"x", .requests = 1, .generated_tokens = 2}};
    adapter_node_info nodes[2];
    memset(nodes, 0, sizeof nodes);
    snprintf(nodes[0].id, sizeof nodes[0].id, "fr");
    nodes[0].state = ADAPTER_READY;
    nodes[0].loads = 2;
    nodes[0].hits = 5;
    nodes[0].evictions = 1;
    nodes[0].bytes = 1000;
    snprintf(nodes[1].id, sizeof nodes[1].id, "ns");
    nodes[1].state = ADAPTER_NAMESPACE;
    adapter_registry_stats rs = {.resident_bytes = 1000, .cache_bytes = 1 << 20, .misses = 2};
    srv_metrics_view v = {.http = d,
                          .engine = &es,
                          .labels = ls,
                          .n_labels = 2,
                          .nodes = nodes,
                          .n_nodes = 2,
                          .registry = &rs};
    srv_buf b;
    srv_buf_init(&b);
    srv_metrics_render(&b, &v);
    CHECK(srv_buf_ok(&b));
    char why[600];
    CHECK_MSG(well_formed(b.data, why, sizeof why), "%s", why);
    static const char *const want[] = {
        "adaptree_requests_total{route=\"/v1/completions\",status=\"200\"} 2\n",
        "adaptree_requests_total{route=\"/v1/chat/completions\",status=\"429\"} 1\n",
        "adaptree_requests_total{route=\"other\",status=\"404\"} 1\n",
        "adaptree_time_to_first_token_seconds_bucket{adapter=\"base\",le=\"0.025\"} 1\n",
        "adaptree_time_to_first_token_seconds_count{adapter=\"base\"} 1\n",
        "adaptree_time_to_first_token_seconds_count{adapter=\"fr/legal\"} 1\n",
        "adaptree_request_duration_seconds_bucket{adapter=\"base\",le=\"0.05\"} 1\n",
        "adaptree_request_duration_seconds_bucket{adapter=\"base\",le=\"0.5\"} 2\n",
        "adaptree_request_duration_seconds_count{adapter=\"base\"} 2\n",
        "adaptree_queue_time_seconds_bucket{adapter=\"base\",le=\"0.001\"} 0\n",
        "adaptree_queue_time_seconds_bucket{adapter=\"base\",le=\"0.005\"} 1\n",
        "adaptree_queue_time_seconds_count{adapter=\"base\"} 1\n",
        "adaptree_inter_token_latency_seconds_bucket{adapter=\"base\",le=\"0.005\"} 0\n",
        "adaptree_inter_token_latency_seconds_bucket{adapter=\"base\",le=\"0.01\"} 3\n",
        "adaptree_inter_token_latency_seconds_bucket{adapter=\"base\",le=\"5\"} 3\n",
        "adaptree_inter_token_latency_seconds_bucket{adapter=\"base\",le=\"+Inf\"} 4\n",
        "adaptree_inter_token_latency_seconds_sum{adapter=\"base\"} 6.5\n",
        "adaptree_inter_token_latency_seconds_count{adapter=\"fr/legal\"} 8\n",
        "adaptree_inter_token_latency_seconds_sum{adapter=\"fr/legal\"} 13\n",
        "# TYPE adaptree_inter_token_latency_seconds histogram\n",
        "adaptree_step_duration_seconds_bucket{le=\"0.01\"} 9\n",
        "adaptree_step_duration_seconds_bucket{le=\"+Inf\"} 10\n",
        "adaptree_step_duration_seconds_sum 0.5\n",
        "adaptree_step_duration_seconds_count 10\n",
        "adaptree_prompt_tokens_total 40\n",
        "adaptree_generated_tokens_total 9\n",
        "adaptree_steps_total 10\n",
        "adaptree_decode_steps_total 7\n",
        "adaptree_decode_rows_total 33\n",
        "adaptree_decode_step_seconds_total 0.25\n",
        "adaptree_batch_rows_bucket{le=\"1\"} 8\n",
        "adaptree_batch_rows_bucket{le=\"16\"} 8\n",
        "adaptree_batch_rows_bucket{le=\"32\"} 9\n",
        "adaptree_batch_rows_bucket{le=\"64\"} 9\n",
        "adaptree_batch_rows_bucket{le=\"+Inf\"} 10\n",
        "adaptree_batch_rows_sum 49\nadaptree_batch_rows_count 10\n",
        "# TYPE adaptree_batch_rows histogram\n",
        "adaptree_running 1\n",
        "adaptree_waiting 2\n",
        "adaptree_queue_rejected_total 3\n",
        "adaptree_kv_bytes 4096\n",
        "# TYPE adaptree_kv_resumed_tokens_total counter\nadaptree_kv_resumed_tokens_total 48\n",
        "adaptree_adapter_requests_total{adapter=\"base\"} 2\n",
        "adaptree_adapter_requests_total{adapter=\"fr\\\"x\"} 1\n",
        "adaptree_adapter_generated_tokens_total{adapter=\"base\"} 7\n",
        "adaptree_adapter_loads_total{adapter=\"fr\"} 2\n",
        "adaptree_adapter_evictions_total{adapter=\"fr\"} 1\n",
        "adaptree_adapter_hits_total{adapter=\"fr\"} 5\n",
        "adaptree_adapter_resident_bytes{adapter=\"fr\"} 1000\n",
        "adaptree_adapter_cache_bytes 1000\n",
        "adaptree_adapter_cache_budget_bytes 1048576\n",
        "# HELP adaptree_requests_total ",
        "# TYPE adaptree_requests_total counter\n",
        "# TYPE adaptree_running gauge\n",
    };
    for (size_t i = 0; i < sizeof want / sizeof *want; i++)
        CHECK_MSG(strstr(b.data, want[i]) != NULL, "missing: %s", want[i]);
    CHECK_MSG(strstr(b.data, "adapter=\"ns\"") == NULL, "a namespace has adapter series");
    CHECK_MSG(strstr(b.data, "status=\"99\"") == NULL, "status 99 counted");
    srv_buf_deinit(&b);
    srv_metrics_data_free(d);
    free(d);
    srv_metrics_deinit(&m);
}

/* The metric label is bounded: a node id or "base" as given, any list one "_list_"; past
 * SRV_METRIC_LABELS_MAX labels the histograms count under "other". */
TEST(metrics_labels_bounded)
{
    CHECK_EQ_STR(srv_metric_label(NULL, 0), "base");
    CHECK_EQ_STR(srv_metric_label("fr/legal", 0), "fr/legal");
    CHECK_EQ_STR(srv_metric_label("fr/legal", 1), "_list_");
    CHECK_EQ_STR(srv_metric_label(NULL, 3), "_list_");
    srv_metrics m;
    srv_metrics_init(&m);
    srv_gen_obs o = {.ttft = 0.1, .queue = 0.01, .duration = 1};
    char id[32];
    for (int i = 0; i < SRV_METRIC_LABELS_MAX + 50; i++) {
        snprintf(id, sizeof id, "n%05d", i);
        srv_metrics_generation(&m, id, &o);
    }
    srv_metrics_data d = {0};
    CHECK(srv_metrics_snapshot(&m, &d) == 0);
    CHECK_MSG(d.n_lat == SRV_METRIC_LABELS_MAX + 1, "%zu labels", d.n_lat);
    uint64_t other = 0;
    for (size_t i = 0; i < d.n_lat; i++)
        if (!strcmp(d.lat[i].adapter, "other"))
            other = d.lat[i].duration.count;
    CHECK_MSG(other == 50, "other counted %llu", (unsigned long long)other);
    for (size_t i = 1; i < d.n_lat; i++)
        CHECK(strcmp(d.lat[i - 1].adapter, d.lat[i].adapter) < 0);
    srv_metrics_data_free(&d);
    srv_metrics_deinit(&m);
}

/* Without a registry or engine, the fixed families still render, as zeros. */
TEST(metrics_render_minimal)
{
    srv_metrics_view v = {0};
    srv_buf b;
    srv_buf_init(&b);
    srv_metrics_render(&b, &v);
    CHECK_MSG(strstr(b.data, "adaptree_adapter_cache_bytes 0\n") != NULL, "%s", b.data);
    srv_buf_deinit(&b);
}

/* adaptree_build_info and the process_* families, under the names Prometheus' client libraries
 * use, well formed beside everything else. */
TEST(metrics_render_build_and_process)
{
    srv_build_labels bl = {"0.1.0", "abc\"1", "AVX2, OpenBLAS Haswell"};
    srv_process_stats ps = {.cpu_seconds = 1.5,
                            .resident_bytes = 4096,
                            .virtual_bytes = 8192,
                            .open_fds = 7,
                            .max_fds = 1024,
                            .start_time_seconds = 1700000000.25};
    srv_engine_stats es = {0};
    srv_metrics_view v = {.build = &bl, .process = &ps, .engine = &es};
    srv_buf b;
    srv_buf_init(&b);
    srv_metrics_render(&b, &v);
    CHECK(srv_buf_ok(&b));
    char why[600];
    CHECK_MSG(well_formed(b.data, why, sizeof why), "%s", why);
    static const char *const want[] = {
        "# TYPE adaptree_build_info gauge\n",
        "adaptree_build_info{version=\"0.1.0\",commit=\"abc\\\"1\",kernels=\"AVX2, OpenBLAS "
        "Haswell\"} 1\n",
        "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 1.5\n",
        "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes 4096\n",
        "# TYPE process_virtual_memory_bytes gauge\nprocess_virtual_memory_bytes 8192\n",
        "# TYPE process_open_fds gauge\nprocess_open_fds 7\n",
        "# TYPE process_max_fds gauge\nprocess_max_fds 1024\n",
        "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds 1700000000.250\n",
    };
    for (size_t i = 0; i < sizeof want / sizeof *want; i++)
        CHECK_MSG(strstr(b.data, want[i]) != NULL, "missing: %s\nin:\n%s", want[i], b.data);
    srv_buf_deinit(&b);
}

/* The stats of this very process are plausible: it has memory, descriptors (0, 1, 2 at least)
 * under its limit, and started before now and after a day ago. */
TEST(metrics_process_stats_of_this_process)
{
    srv_process_stats ps;
    CHECK_EQ_INT(srv_process_stats_get(&ps), 0);
    CHECK_MSG(ps.resident_bytes > 0, "rss %llu", (unsigned long long)ps.resident_bytes);
    CHECK_MSG(ps.virtual_bytes >= ps.resident_bytes, "vsize %llu < rss %llu",
              (unsigned long long)ps.virtual_bytes, (unsigned long long)ps.resident_bytes);
    CHECK_MSG(ps.open_fds >= 3 && ps.open_fds <= ps.max_fds, "open %llu, max %llu",
              (unsigned long long)ps.open_fds, (unsigned long long)ps.max_fds);
    double now = (double)time(NULL);
    CHECK_MSG(ps.start_time_seconds <= now + 1 && ps.start_time_seconds > now - 86400,
              "start %.3f, now %.0f", ps.start_time_seconds, now);
    CHECK_MSG(ps.cpu_seconds >= 0, "cpu %g", ps.cpu_seconds);
}
