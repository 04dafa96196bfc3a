/* The routes of the HTTP API (docs/ARCHITECTURE.md §5): what each one checks and answers. The
 * transport (server/http.h) calls them through a srv_http_handler filled by srv_routes_handler.
 *
 * A srv_app holds what the routes share: the engine, the keys, the metrics and the limits. It is
 * set up before the HTTP threads start and read-only afterwards, except the metrics (locked) and
 * the draining flag (atomic).
 */
#ifndef ADAPTREE_SERVER_ROUTES_H
#define ADAPTREE_SERVER_ROUTES_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include "adapters/registry.h"
#include "server/auth.h"
#include "server/cors.h"
#include "server/engine.h"
#include "server/http.h"
#include "server/metrics.h"
#include "server/request.h"

typedef struct srv_app {
    srv_engine *engine;   /* borrowed; outlives the HTTP threads */
    const char *model_id; /* srv_engine_model_id */
    int n_ctx;            /* srv_engine_n_ctx */
    srv_auth auth;
    srv_metrics metrics;
    srv_request_limits limits;
    size_t max_body;          /* request body bytes accepted */
    long long started;        /* Unix seconds: "created" of the models */
    const srv_cors *cors;     /* --cors-origin (preflights); NULL = off. Borrowed */
    const char *replica;      /* --replica-name (system_fingerprint, /health); NULL = none.
                                 Borrowed: outlives the app */
    atomic_bool draining;     /* shutting down: generation routes answer 503 */
    atomic_bool unready;      /* shutting down soon (--drain-delay): /health answers 503 */
    _Atomic(srv_http *) http; /* the transport once it runs (its connection counters); set
                                 while the HTTP threads may read it */
} srv_app;

/* Sets up an app for engine e with keys auth (copied) and a body limit. Main thread. */
void srv_app_init(srv_app *a, srv_engine *e, const srv_auth *auth, size_t max_body);
void srv_app_deinit(srv_app *a);

/* Fills h with the route callbacks, a as their argument. */
void srv_routes_handler(srv_app *a, srv_http_handler *h);

/* What a method and path are: the route (SRV_ROUTE_OTHER when the path is not one), and whether
 * the method is the route's. allow (may be NULL) gets the route's method for a 405's Allow
 * header. /v1/models/ID is SRV_ROUTE_MODELS. Pure. */
srv_route_id srv_route_match(const char *method, const char *url, bool *method_ok,
                             const char **allow);

/* The metrics label of an adapter selection: "base" for none, the "model" node id, the explicit
 * list as "id:scale+id:scale" (scale as %g), or both joined by '+'. Cut to cap - 1 bytes
 * (cap >= 5). Pure. */
void srv_selection_label(const char *model, const adapter_sel_item *items, int n, char *out,
                         size_t cap);

/* Appends what a registry node is, as the members ,"format","rank","alpha","rslora","targets",
 * "weight_bytes" of its /v1/models and /v1/adapters objects: null each when the registry does not
 * know (a namespace, a node not described yet, or files that cannot be described). Pure. */
void srv_node_desc_json(srv_buf *b, const adapter_node_info *n);

#endif
