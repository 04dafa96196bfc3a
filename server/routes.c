/* The routes (server/routes.h): matching, keys, and the small routes that answer at once —
 * models, the adapter registry and its admin actions, health and metrics. The generation routes
 * are in server/completions.c.
 */
#include "server/routes.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "adapters/adapter.h"
#include "core/model/model.h"
#include "server/admin_body.h"
#include "server/http_errors.h"
#include "server/log.h"
#include "server/response.h"
#include "server/routes_internal.h"
#include "server/version.h"

/* ---- the table ------------------------------------------------------------------------------ */

/* Route flags (server/routes.def). */
enum {
    R_OPEN = 1u << 0,
    R_ADMIN = 1u << 1,
    R_GEN = 1u << 2,
    R_CHAT = 1u << 3,
    R_DRAIN_REFUSED = 1u << 4,
    R_ID_SUFFIX = 1u << 5,
};

typedef void route_fn(srv_app *a, srv_http_req *req, srv_call *c);
static route_fn route_models, route_adapters, route_admin, route_lora, route_health, route_metrics,
    route_version;

static const struct route {
    const char *method, *path;
    unsigned flags;
    route_fn *handler;
} routes[SRV_ROUTE_COUNT] = {
#define ROUTE(id, method, path, flags, handler)                                                    \
    [SRV_ROUTE_##id] = {(method), (path), (flags), (handler)},
#include "server/routes.def"
#undef ROUTE
};

srv_route_id srv_route_match(const char *method, const char *url, bool *method_ok,
                             const char **allow)
{
    for (int i = 0; i < SRV_ROUTE_OTHER; i++) {
        const char *p = routes[i].path;
        size_t n = strlen(p);
        bool hit = !strcmp(url, p);
        if (!hit && (routes[i].flags & R_ID_SUFFIX))
            hit = !strncmp(url, p, n) && url[n] == '/' && url[n + 1];
        if (!hit)
            continue;
        *method_ok = !strcmp(method, routes[i].method) ||
                     (!strcmp(method, "HEAD") && !strcmp(routes[i].method, "GET"));
        if (allow)
            *allow = routes[i].method;
        return (srv_route_id)i;
    }
    *method_ok = false;
    if (allow)
        *allow = NULL;
    return SRV_ROUTE_OTHER;
}

void srv_selection_label(const char *model, const adapter_sel_item *items, int n, char *out,
                         size_t cap)
{
    if (!model && n <= 0) {
        snprintf(out, cap, "base");
        return;
    }
    size_t k = 0;
    out[0] = 0;
    if (model) {
        int w = snprintf(out, cap, "%s", model);
        k = w > 0 ? (size_t)w : 0;
    }
    for (int i = 0; i < n && k < cap; i++) {
        int w = snprintf(out + k, cap - k, "%s%s:%g", k ? "+" : "", items[i].id,
                         (double)items[i].weight);
        k += w > 0 ? (size_t)w : 0;
    }
}

/* ---- small routes --------------------------------------------------------------------------- */

static void targets_json(srv_buf *b, unsigned targets)
{
    srv_buf_putc(b, '[');
    int k = 0;
    for (int m = 0; m < CORE_MOD_COUNT; m++)
        if (targets & (1u << m)) {
            if (k++)
                srv_buf_putc(b, ',');
            srv_buf_json_cstr(b, core_module_name((core_module)m));
        }
    srv_buf_putc(b, ']');
}

void srv_node_desc_json(srv_buf *b, const adapter_node_info *n)
{
    if (n->format != ADAPTER_PEFT && n->format != ADAPTER_GGUF) {
        srv_buf_puts(b, ",\"format\":null,\"rank\":null,\"alpha\":null,\"rslora\":null,"
                        "\"targets\":null,\"weight_bytes\":null");
        return;
    }
    srv_buf_printf(b, ",\"format\":\"%s\",\"rank\":%d,\"alpha\":",
                   n->format == ADAPTER_PEFT ? "peft" : "gguf", n->r);
    srv_buf_json_float(b, n->alpha);
    srv_buf_printf(b, ",\"rslora\":%s,\"targets\":", n->rslora ? "true" : "false");
    targets_json(b, n->targets);
    srv_buf_printf(b, ",\"weight_bytes\":%zu", n->weight_bytes);
}

static void model_entry(srv_buf *b, const srv_app *a, const adapter_node_info *n)
{
    srv_buf_puts(b, "{\"id\":");
    srv_buf_json_cstr(b, n->id);
    srv_buf_printf(
        b,
        ",\"object\":\"model\",\"created\":%lld,\"owned_by\":\"adaptree\",\"parent\":", a->started);
    srv_buf_json_cstr(b, n->parent[0] ? n->parent : NULL);
    srv_node_desc_json(b, n);
    srv_buf_puts(b, ",\"state\":");
    srv_buf_json_cstr(b, adapter_state_name(n->state));
    srv_buf_printf(b, ",\"bytes\":%zu,\"max_model_len\":%d}", n->bytes, a->n_ctx);
}

static void base_entry(srv_buf *b, const srv_app *a)
{
    srv_buf_puts(b, "{\"id\":");
    srv_buf_json_cstr(b, a->model_id);
    srv_buf_printf(b,
                   ",\"object\":\"model\",\"created\":%lld,\"owned_by\":\"adaptree\","
                   "\"max_model_len\":%d}",
                   a->started, a->n_ctx);
}

/* The registry's nodes (*n of them, caller frees), or NULL with *n = 0 without a registry. -1
 * after answering when listing failed. */
static int list_nodes(srv_app *a, srv_http_req *req, adapter_node_info **nodes, size_t *n)
{
    *nodes = NULL;
    *n = 0;
    adapter_registry *reg = srv_engine_registry(a->engine);
    if (reg && adapter_registry_list(reg, nodes, n) < 0) {
        srv_http_reply_error(req, 503, "server_error", NULL, NULL, "out of memory");
        return -1;
    }
    return 0;
}

/* GET /v1/models and /v1/models/ID. */
static void route_models(srv_app *a, srv_http_req *req, srv_call *c)
{
    (void)c;
    const char *url = srv_http_url(req);
    const char *one = strlen(url) > strlen("/v1/models/") ? url + strlen("/v1/models/") : NULL;
    adapter_node_info *nodes;
    size_t n;
    if (list_nodes(a, req, &nodes, &n) < 0)
        return;
    srv_buf b;
    srv_buf_init(&b);
    if (one) {
        if (!strcmp(one, a->model_id) || !strcmp(one, "base"))
            base_entry(&b, a);
        for (size_t i = 0; i < n && !b.len; i++)
            if (!strcmp(nodes[i].id, one))
                model_entry(&b, a, &nodes[i]);
        if (b.len)
            srv_http_reply_json(req, 200, &b, NULL);
        else
            srv_http_reply_error(req, 404, "invalid_request_error", "model_not_found", "model",
                                 "the model '%s' does not exist", one);
    } else {
        srv_buf_puts(&b, "{\"object\":\"list\",\"data\":[");
        base_entry(&b, a);
        for (size_t i = 0; i < n; i++) {
            srv_buf_putc(&b, ',');
            model_entry(&b, a, &nodes[i]);
        }
        srv_buf_puts(&b, "]}");
        srv_http_reply_json(req, 200, &b, NULL);
    }
    srv_buf_deinit(&b);
    free(nodes);
}

static void node_json(srv_buf *b, const adapter_node_info *n)
{
    srv_buf_puts(b, "{\"id\":");
    srv_buf_json_cstr(b, n->id);
    srv_buf_puts(b, ",\"parent\":");
    srv_buf_json_cstr(b, n->parent[0] ? n->parent : NULL);
    srv_buf_puts(b, ",\"state\":");
    srv_buf_json_cstr(b, adapter_state_name(n->state));
    srv_buf_puts(b, ",\"error\":");
    srv_buf_json_cstr(b, n->error[0] ? n->error : NULL);
    srv_buf_printf(b, ",\"pinned\":%s,\"reloading\":%s", n->pinned ? "true" : "false",
                   n->reloading ? "true" : "false");
    srv_node_desc_json(b, n);
    srv_buf_printf(b,
                   ",\"bytes\":%zu,\"in_use\":%d,\"version\":\"%016llx\",\"loads\":%llu,"
                   "\"load_failures\":%llu,\"evictions\":%llu,\"hits\":%llu}",
                   n->bytes, n->in_use, (unsigned long long)n->version,
                   (unsigned long long)n->loads, (unsigned long long)n->load_failures,
                   (unsigned long long)n->evictions, (unsigned long long)n->hits);
}

/* GET /v1/adapters: the tree and the registry's counters. */
static void route_adapters(srv_app *a, srv_http_req *req, srv_call *c)
{
    (void)c;
    adapter_node_info *nodes;
    size_t n;
    if (list_nodes(a, req, &nodes, &n) < 0)
        return;
    adapter_registry *reg = srv_engine_registry(a->engine);
    srv_buf b;
    srv_buf_init(&b);
    srv_buf_puts(&b, "{\"object\":\"list\",\"data\":[");
    for (size_t i = 0; i < n; i++) {
        if (i)
            srv_buf_putc(&b, ',');
        node_json(&b, &nodes[i]);
    }
    srv_buf_puts(&b, "],\"registry\":");
    if (reg) {
        adapter_registry_stats s;
        adapter_registry_stats_get(reg, &s);
        srv_buf_printf(&b,
                       "{\"resident_bytes\":%zu,\"cache_bytes\":%zu,\"nodes\":%d,\"resident\":%d,"
                       "\"loading\":%d,\"loads\":%llu,\"load_failures\":%llu,\"evictions\":%llu,"
                       "\"hits\":%llu,\"misses\":%llu}",
                       s.resident_bytes, s.cache_bytes, s.nodes, s.resident, s.loading,
                       (unsigned long long)s.loads, (unsigned long long)s.load_failures,
                       (unsigned long long)s.evictions, (unsigned long long)s.hits,
                       (unsigned long long)s.misses);
    } else {
        srv_buf_puts(&b, "null");
    }
    srv_buf_putc(&b, '}');
    srv_http_reply_json(req, 200, &b, NULL);
    srv_buf_deinit(&b);
    free(nodes);
}

/* The answer to a body parser's rc: 0 when it took the body, else -1 after a 503 (no memory)
 * or a 400 naming param. */
static int body_refused(srv_http_req *req, int rc, const char *err, const char *param)
{
    if (rc >= 0)
        return 0;
    if (rc == -ENOMEM)
        srv_http_reply_error(req, 503, "server_error", NULL, NULL, "%s", err);
    else
        srv_http_reply_error(req, 400, "invalid_request_error", NULL, param[0] ? param : NULL, "%s",
                             err);
    return -1;
}

/* Reads an admin body (server/admin_body.h): 0, or -1 after answering. */
static int admin_body(srv_http_req *req, bool pin_required, char *id, size_t idcap, int *pin,
                      int *wait)
{
    size_t len;
    const char *body = srv_http_body(req, &len);
    char err[160], param[SRV_PARAM_MAX];
    int rc = srv_admin_body_parse(body, len, pin_required, id, idcap, pin, wait, err, sizeof err,
                                  param, sizeof param);
    return body_refused(req, rc, err, param);
}

/* Answers with node id as GET /v1/adapters shows it (status 200 or 202); extra: more members
 * ("\"unchanged\":true") or NULL. */
static void reply_node(srv_app *a, srv_http_req *req, const char *id, int status, const char *extra)
{
    adapter_node_info *nodes;
    size_t n;
    if (list_nodes(a, req, &nodes, &n) < 0)
        return;
    srv_buf b;
    srv_buf_init(&b);
    for (size_t i = 0; i < n && !b.len; i++)
        if (!strcmp(nodes[i].id, id))
            node_json(&b, &nodes[i]);
    if (!b.len) {
        srv_buf_puts(&b, "{\"id\":");
        srv_buf_json_cstr(&b, id);
        srv_buf_putc(&b, '}');
    }
    if (extra) {
        b.len--; /* the closing brace */
        srv_buf_printf(&b, ",%s}", extra);
    }
    srv_http_reply_json(req, status, &b, NULL);
    srv_buf_deinit(&b);
    free(nodes);
}

/* Answers a registry refusal (unknown id, a namespace, bad id); param names the field ("id",
 * vLLM's "lora_name" or "lora_path"). */
static void reply_admin_error(srv_http_req *req, int rc, const char *param, const char *err)
{
    if (rc == -ENOENT) {
        srv_http_reply_error(req, 404, "invalid_request_error", "model_not_found", param, "%s",
                             err[0] ? err : "unknown adapter");
        return;
    }
    srv_http_reply_error(req,
                         rc == -EINVAL  ? 400
                         : rc == -EBUSY ? 409
                                        : 500,
                         rc == -EINVAL || rc == -EBUSY ? "invalid_request_error" : "server_error",
                         NULL, param, "%s", err[0] ? err : strerror(-rc));
}

/* vLLM's success answer: 200, a line of text. */
static void reply_lora_ok(srv_http_req *req, const char *id, const char *what)
{
    char msg[ADAPTER_ID_MAX + 64];
    int n = snprintf(msg, sizeof msg, "Success: LoRA adapter '%s' %s successfully.", id, what);
    srv_http_reply(req, 200, "text/plain; charset=utf-8", msg,
                   n > 0 && (size_t)n < sizeof msg ? (size_t)n : strlen(msg), NULL);
}

/* POST /v1/adapters/load, waiting (the default): the load runs as an engine job (so the
 * connection waits like a generation does, and a client that leaves stops nothing), which ends
 * once the registry has loaded the node's files as they are now, or found them unchanged. */
static void admin_load_wait(srv_app *a, srv_http_req *req, srv_call *c, const char *id, int pin)
{
    char err[300] = "";
    if (!c->job) {
        c->job = srv_job_new_load(id, pin == 1, srv__call_notify, c, err, sizeof err);
        if (!c->job) {
            srv_reply_err(req, SRV_ERR_UNAVAILABLE, NULL, "%s", err);
            return;
        }
        int rc = srv_engine_submit(a->engine, c->job);
        if (rc < 0) {
            srv_job_unref(c->job);
            c->job = NULL;
            srv_reply_err(req, srv_err_of_submit(rc), NULL, "%s",
                          rc == -ESHUTDOWN ? "the server is shutting down"
                                           : "cannot queue the load");
            return;
        }
    }
    srv_job_status st;
    srv_job_status_get(c->job, &st);
    if (st.finish == SRV_FINISH_NONE) {
        srv_http_wait(req);
    } else if (st.finish == SRV_FINISH_ERROR) {
        srv_reply_err(req, st.err, c->route == SRV_ROUTE_LORA_LOAD ? "lora_name" : "id", "%s",
                      st.error);
    } else if (st.finish == SRV_FINISH_CANCELLED) {
        srv_http_reply_error(req, 503, "server_error", "shutting_down", NULL,
                             "the load was cancelled (the server is shutting down)");
    } else {
        srv_log_req(SRV_LOG_INFO, srv_http_request_id(req), "adapter %s: %s%s", id,
                    st.unchanged ? "load: unchanged, not reloaded" : "load: loaded",
                    pin == 1 ? " (pin)" : "");
        if (c->route == SRV_ROUTE_LORA_LOAD)
            reply_lora_ok(req, id, "added");
        else
            reply_node(a, req, id, 200,
                       st.unchanged ? "\"unchanged\":true" : "\"unchanged\":false");
    }
}

/* POST /v1/adapters/{load,unload,pin}: acts, then answers with the node. A load waits for its
 * result unless the body says "wait": false (then 202 at once). */
static void route_admin(srv_app *a, srv_http_req *req, srv_call *c)
{
    char id[ADAPTER_ID_MAX + 1], err[300] = "";
    int pin = -1, wait = -1;
    adapter_registry *reg = srv_engine_registry(a->engine);
    if (admin_body(req, c->route == SRV_ROUTE_ADAPTERS_PIN, id, sizeof id, &pin, &wait) < 0)
        return;
    if (!reg) {
        srv_http_reply_error(req, 404, "invalid_request_error", "model_not_found", "id",
                             "this server has no adapter registry");
        return;
    }
    if (c->route == SRV_ROUTE_ADAPTERS_LOAD && wait != 0) {
        /* Refusals the registry can tell at once (unknown id, a namespace) before queueing. */
        int rc = c->job ? 0 : adapter_registry_check(reg, id, err, sizeof err);
        if (rc < 0)
            reply_admin_error(req, rc, "id", err);
        else
            admin_load_wait(a, req, c, id, pin);
        return;
    }
    int rc;
    if (c->route == SRV_ROUTE_ADAPTERS_LOAD) {
        rc = adapter_registry_load(reg, id, err, sizeof err);
        if (rc == 0 && pin == 1)
            rc = adapter_registry_pin(reg, id, true, err, sizeof err);
    } else if (c->route == SRV_ROUTE_ADAPTERS_UNLOAD) {
        rc = adapter_registry_unload(reg, id, err, sizeof err);
    } else {
        rc = adapter_registry_pin(reg, id, pin == 1, err, sizeof err);
    }
    if (rc < 0) {
        reply_admin_error(req, rc, "id", err);
        return;
    }
    srv_log_req(SRV_LOG_INFO, srv_http_request_id(req), "adapter %s: %s%s", id,
                srv_route_name(c->route) + strlen("/v1/adapters/"),
                pin == 1   ? " (pin)"
                : pin == 0 ? " (unpin)"
                           : "");
    reply_node(a, req, id, c->route == SRV_ROUTE_ADAPTERS_LOAD ? 202 : 200, NULL);
}

/* Reads a vLLM LoRA body (server/admin_body.h): 0, or -1 after answering. */
static int lora_body(srv_http_req *req, char *id, size_t idcap, char *path, size_t pathcap)
{
    size_t len;
    const char *body = srv_http_body(req, &len);
    char err[160], param[SRV_PARAM_MAX];
    int rc = srv_lora_body_parse(body, len, id, idcap, path, pathcap, err, sizeof err, param,
                                 sizeof param);
    return body_refused(req, rc, err, param);
}

/* POST /v1/load_lora_adapter and /v1/unload_lora_adapter, vLLM's names for load and unload:
 * lora_name is a registry node id, and lora_path, when given, must lead (realpath) to that
 * node's directory inside the registry root: adaptree serves what its registry holds, so a path
 * elsewhere is refused (400) rather than loaded from. A load waits for its result, as vLLM's
 * does; loading a resident adapter is not an error here (vLLM says 400), it reloads if the files
 * changed. Answers 200 with vLLM's line of text; errors in the server's JSON shape. The checks
 * run on the HTTP thread (realpath reads the file system; admin routes are rare). */
static void route_lora(srv_app *a, srv_http_req *req, srv_call *c)
{
    char id[ADAPTER_ID_MAX + 1], path[PATH_MAX], err[300] = "";
    adapter_registry *reg = srv_engine_registry(a->engine);
    if (lora_body(req, id, sizeof id, path, sizeof path) < 0)
        return;
    if (!reg) {
        srv_http_reply_error(req, 404, "invalid_request_error", "model_not_found", "lora_name",
                             "this server has no adapter registry");
        return;
    }
    if (!c->job) {
        int rc = adapter_registry_check(reg, id, err, sizeof err);
        if (rc < 0) {
            reply_admin_error(req, rc, "lora_name", err);
            return;
        }
        if (path[0] && adapter_registry_check_path(reg, id, path, err, sizeof err) < 0) {
            srv_http_reply_error(req, 400, "invalid_request_error", NULL, "lora_path",
                                 "lora_path: %s; lora_path, when given, must be the directory of "
                                 "the registry adapter lora_name names",
                                 err);
            return;
        }
    }
    if (c->route == SRV_ROUTE_LORA_LOAD) {
        admin_load_wait(a, req, c, id, -1);
        return;
    }
    int rc = adapter_registry_unload(reg, id, err, sizeof err);
    if (rc < 0) {
        reply_admin_error(req, rc, "lora_name", err);
        return;
    }
    srv_log_req(SRV_LOG_INFO, srv_http_request_id(req), "adapter %s: unload", id);
    reply_lora_ok(req, id, "removed");
}

/* GET /health: 200 while serving, 503 while draining or about to (--drain-delay). */
static void route_health(srv_app *a, srv_http_req *req, srv_call *c)
{
    (void)c;
    srv_buf b;
    srv_buf_init(&b);
    if (atomic_load(&a->draining) || atomic_load(&a->unready)) {
        srv_buf_puts(&b, "{\"status\":\"draining\"");
        if (a->replica) {
            srv_buf_puts(&b, ",\"replica\":");
            srv_buf_json_cstr(&b, a->replica);
        }
        srv_buf_putc(&b, '}');
        srv_http_reply_json(req, 503, &b, NULL);
    } else {
        srv_engine_stats s;
        srv_engine_stats_get(a->engine, &s);
        srv_buf_puts(&b, "{\"status\":\"ok\",\"model\":");
        srv_buf_json_cstr(&b, a->model_id);
        srv_buf_printf(&b, ",\"running\":%d,\"waiting\":%d", s.running, s.waiting);
        if (a->replica) {
            srv_buf_puts(&b, ",\"replica\":");
            srv_buf_json_cstr(&b, a->replica);
        }
        srv_buf_putc(&b, '}');
        srv_http_reply_json(req, 200, &b, NULL);
    }
    srv_buf_deinit(&b);
}

/* GET /metrics: copies every counter, then renders the copies. */
static void route_metrics(srv_app *a, srv_http_req *req, srv_call *c)
{
    (void)c;
    srv_metrics_data *http = calloc(1, sizeof *http);
    srv_engine_stats es;
    srv_label_stats *labels = NULL;
    size_t n_labels = 0;
    adapter_node_info *nodes = NULL;
    size_t n_nodes = 0;
    adapter_registry_stats rs;
    adapter_registry *reg = srv_engine_registry(a->engine);
    if (!http || srv_metrics_snapshot(&a->metrics, http) < 0 ||
        srv_engine_label_stats(a->engine, &labels, &n_labels) < 0 ||
        (reg && adapter_registry_list(reg, &nodes, &n_nodes) < 0)) {
        if (http)
            srv_metrics_data_free(http);
        free(http);
        free(labels);
        srv_http_reply_error(req, 503, "server_error", NULL, NULL, "out of memory");
        return;
    }
    srv_engine_stats_get(a->engine, &es);
    if (reg)
        adapter_registry_stats_get(reg, &rs);
    srv_conns_stats cs;
    srv_http *transport = atomic_load(&a->http);
    if (transport)
        srv_http_conn_stats(transport, &cs);
    srv_process_stats ps;
    srv_process_stats_get(&ps); /* what it could read; zeros for the rest */
    srv_build_labels bl = {srv_build_version, srv_build_commit, srv_version_kernels()};
    srv_metrics_view v = {.http = http,
                          .build = &bl,
                          .process = &ps,
                          .conns = transport ? &cs : NULL,
                          .engine = &es,
                          .labels = labels,
                          .n_labels = n_labels,
                          .nodes = nodes,
                          .n_nodes = n_nodes,
                          .registry = reg ? &rs : NULL};
    srv_buf b;
    srv_buf_init(&b);
    srv_metrics_render(&b, &v);
    if (srv_buf_ok(&b))
        srv_http_reply(req, 200, "text/plain; version=0.0.4; charset=utf-8", b.data, b.len, NULL);
    else
        srv_http_reply_error(req, 503, "server_error", NULL, NULL, "out of memory");
    srv_buf_deinit(&b);
    srv_metrics_data_free(http);
    free(http);
    free(labels);
    free(nodes);
}

/* GET /version: the build (server/version.h); a key is needed as for /metrics. */
static void route_version(srv_app *a, srv_http_req *req, srv_call *c)
{
    (void)a;
    (void)c;
    srv_buf b;
    srv_buf_init(&b);
    srv_version_json(&b);
    srv_http_reply_json(req, 200, &b, NULL);
    srv_buf_deinit(&b);
}

/* ---- the handler ---------------------------------------------------------------------------- */

static size_t on_headers(void *ud, srv_http_req *req)
{
    srv_app *a = ud;
    srv_call *c = calloc(1, sizeof *c);
    if (!c) {
        srv_http_reply_error(req, 503, "server_error", NULL, NULL, "out of memory");
        return 0;
    }
    srv_http_set_state(req, c);
    c->wake = srv_http_wake_token(req);
    bool method_ok;
    const char *allow;
    const char *method = srv_http_method(req), *url = srv_http_url(req);
    c->route = srv_route_match(method, url, &method_ok, &allow);
    if (c->route == SRV_ROUTE_OTHER) {
        srv_http_reply_error(req, 404, "invalid_request_error", "not_found", NULL,
                             "Invalid URL (%s %s)", method, url);
        return 0;
    }
    if (!strcmp(method, "OPTIONS") && a->cors && a->cors->n) {
        /* a CORS preflight (before the key check: browsers send none); the transport adds
         * Access-Control-Allow-Origin when the Origin is one of --cors-origin */
        char methods[40];
        snprintf(methods, sizeof methods, "%s%s, OPTIONS", allow,
                 !strcmp(allow, "GET") ? ", HEAD" : "");
        const char *h[] = {"Allow",
                           methods,
                           "Access-Control-Allow-Methods",
                           methods,
                           "Access-Control-Allow-Headers",
                           SRV_CORS_ALLOW_HEADERS,
                           "Access-Control-Max-Age",
                           SRV_CORS_MAX_AGE,
                           NULL};
        srv_http_reply(req, 204, NULL, "", 0, h);
        return 0;
    }
    if (!method_ok) {
        const char *h[] = {"Allow", allow, NULL};
        srv_buf b;
        srv_buf_init(&b);
        char msg[300];
        snprintf(msg, sizeof msg, "%s %s: this route takes %s", method, url, allow);
        srv_resp_error(&b, msg, "invalid_request_error", "method_not_allowed", NULL);
        srv_http_reply_json(req, 405, &b, h);
        srv_buf_deinit(&b);
        return 0;
    }
    char msg[200];
    unsigned flags = routes[c->route].flags;
    if (!(flags & R_OPEN) && srv_auth_check(&a->auth, srv_http_header(req, "Authorization"),
                                            flags & R_ADMIN, msg, sizeof msg)) {
        srv_http_reply_error(req, 401, "invalid_request_error", "invalid_api_key", NULL, "%s", msg);
        return 0;
    }
    /* A reserve connection serves health checks and requests that proved a key (they got past
     * the check above because the route needs one), nothing anonymous. */
    bool keyed = a->auth.api_len || ((flags & R_ADMIN) && a->auth.admin_len);
    if (srv_http_reserved(req) && !(flags & R_OPEN) && !keyed) {
        srv_http_reply_error(req, 503, "server_error", "too_many_connections", NULL,
                             "too many connections: every connection is busy; this one only "
                             "serves /health and requests with a valid key");
        return 0;
    }
    if ((flags & R_DRAIN_REFUSED) && atomic_load(&a->draining)) {
        srv_http_reply_error(req, 503, "server_error", "shutting_down", NULL,
                             "the server is shutting down");
        return 0;
    }
    c->kind = (flags & R_CHAT) ? SRV_REQ_CHAT : SRV_REQ_COMPLETION;
    return a->max_body;
}

static void on_request(void *ud, srv_http_req *req)
{
    srv_call *c = srv_http_state(req);
    routes[c->route].handler(ud, req, c);
}

static int on_stream(void *ud, srv_http_req *req, srv_buf *out)
{
    srv_call *c = srv_http_state(req);
    return c && c->job && (routes[c->route].flags & R_GEN) ? srv__gen_stream(ud, req, c, out) : -1;
}

void srv__call_notify(void *ud)
{
    srv_call *c = ud;
    for (int i = 0; !c->stream && i <= c->n_more; i++) {
        srv_job_status st;
        srv_job_status_get(i ? c->more[i - 1] : c->job, &st);
        if (st.finish == SRV_FINISH_NONE)
            return;
    }
    srv_http_wake(c->wake);
}

/* The client left while its request waited: stop the job (under the request's lock; cancelling
 * neither blocks nor notifies from here). */
static void on_gone(void *ud, srv_http_req *req)
{
    (void)ud;
    srv_call *c = srv_http_state(req);
    if (c && c->job)
        srv_job_cancel(c->job);
    for (int i = 0; c && i < c->n_more; i++)
        srv_job_cancel(c->more[i]);
}

static void on_done(void *ud, srv_http_req *req, int status, bool complete)
{
    srv_app *a = ud;
    srv_call *c = srv_http_state(req);
    /* No notify of the job may wake the slot's next request, and a job still running has nobody
     * left to read it (cancelling a finished job does nothing). */
    if (c && c->job) {
        srv_job_detach_notify(c->job);
        srv_job_cancel(c->job);
    }
    for (int i = 0; c && i < c->n_more; i++) {
        srv_job_detach_notify(c->more[i]);
        srv_job_cancel(c->more[i]);
    }
    srv_route_id route = c ? c->route : SRV_ROUTE_OTHER;
    /* An answer that never reached the client counts as 499 (client closed), as nginx does. */
    srv_metrics_request(&a->metrics, route, status && (complete || status != 200) ? status : 499);
    if (c) {
        if (routes[c->route].flags & R_GEN) {
            srv__gen_done(a, req, c);
        } else {
            srv_job_unref(c->job); /* an admin load's */
            c->job = NULL;
        }
        free(c);
        srv_http_set_state(req, NULL);
    }
}

void srv_routes_handler(srv_app *a, srv_http_handler *h)
{
    h->ud = a;
    h->on_headers = on_headers;
    h->on_request = on_request;
    h->on_stream = on_stream;
    h->on_gone = on_gone;
    h->on_done = on_done;
}

void srv_app_init(srv_app *a, srv_engine *e, const srv_auth *auth, size_t max_body)
{
    memset(a, 0, sizeof *a);
    a->engine = e;
    a->model_id = srv_engine_model_id(e);
    a->n_ctx = srv_engine_n_ctx(e);
    a->auth = *auth;
    srv_metrics_init(&a->metrics);
    srv_request_limits_default(&a->limits);
    a->limits.max_prompt_bytes = max_body;
    a->limits.n_vocab = core_tokenizer_n_vocab(srv_engine_tokenizer(e));
    a->max_body = max_body;
    a->started = (long long)time(NULL);
    atomic_init(&a->draining, false);
    atomic_init(&a->unready, false);
}

void srv_app_deinit(srv_app *a)
{
    if (!a)
        return;
    srv_metrics_deinit(&a->metrics);
    memset(&a->auth, 0, sizeof a->auth);
}
