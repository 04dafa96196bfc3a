/* Shared between server/routes.c (dispatch and the small routes) and server/completions.c (the
 * generation routes); nothing else includes it. */
#ifndef ADAPTREE_SERVER_ROUTES_INTERNAL_H
#define ADAPTREE_SERVER_ROUTES_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include "server/routes.h"

/* One request's state, from its headers to its end (srv_http_state). */
typedef struct srv_call {
    srv_route_id route;
    void *wake;   /* the request's wake token (srv_http_wake_token) */
    srv_job *job; /* our reference: the generation or admin load the request waits for; NULL
                     until made. Its notify (srv__call_notify) has c as argument */
    srv_job *more[SRV_N_MAX - 1]; /* generations with "n": choices 1 .. n_more, our references,
                                     the same notify; set before any job is submitted */
    int n_more;
    /* generation routes */
    srv_request_kind kind;
    bool stream, include_usage;
    int logprobs;
    char id[40]; /* "cmpl-…" / "chatcmpl-…" */
    char model[SRV_MODEL_BYTES_MAX + 1];
    char label[ADAPTER_ID_MAX + 1]; /* the bounded adapter label of metrics (srv_metric_label) */
    long long created;
    char *echo; /* completions with echo: the prompt text (echo_len bytes) */
    size_t echo_len;
    /* streaming progress, per choice */
    struct srv_call_sent {
        bool first;      /* its first chunk (chat: the role; completions: the echo) went out */
        bool finished;   /* its finish chunk went out */
        size_t text;     /* text bytes sent */
        int toks;        /* tokens sent with logprobs */
        size_t prev_end; /* text_end of the last token sent */
    } sent[SRV_N_MAX];
} srv_call;

/* The notify of c's jobs (engine thread): wakes the request, on every change when it streams,
 * else once every job has ended. */
void srv__call_notify(void *ud);

/* POST /v1/completions and /v1/chat/completions: the first call parses, tokenizes and submits,
 * later calls (after a wait) answer. */
void srv__gen_request(srv_app *a, srv_http_req *req, srv_call *c);
/* The next bytes of a streamed generation (srv_http_handler.on_stream). */
int srv__gen_stream(srv_app *a, srv_http_req *req, srv_call *c, srv_buf *out);
/* Frees what a generation attached to c, counting it in the metrics. */
void srv__gen_done(srv_app *a, srv_http_req *req, srv_call *c);

/* POST /tokenize and /detokenize (server/tokenize.c, server/tokenize.h): answered at once. */
void srv__route_tokenize(srv_app *a, srv_http_req *req, srv_call *c);
void srv__route_detokenize(srv_app *a, srv_http_req *req, srv_call *c);

#endif
