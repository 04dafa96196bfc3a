/* POST /tokenize and /detokenize, in vLLM's shapes: the tokenizer of the served model over HTTP,
 * so a client can count a prompt's tokens, pick ids for logit_bias and stop_token_ids, and turn
 * ids back into text without loading the tokenizer itself.
 *
 * /tokenize tokenizes exactly as the generation routes do: a "prompt" as /v1/completions (special
 * tokens' text recognised, BOS when the model wants one and add_special_tokens is true), chat
 * "messages" as /v1/chat/completions (the template rendered, with the generation prompt unless
 * add_generation_prompt is false), so its count is the prompt_tokens a completion reports. The
 * body's prompt or messages go through srv_request_parse, with its checks and messages.
 * /detokenize shows special tokens' text (as vLLM, which decodes without skipping them), so a
 * round trip gives the text back.
 *
 * The answers are made apart from the transport (server/tokenize.h), so that every refusal can be
 * tested without a server; the two routes at the end only send them.
 */
#include "server/tokenize.h"
#include "server/http.h"
#include "server/json_check.h"
#include "server/routes_internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Where a refusal's message and param go. */
typedef struct answer {
    char *err;
    size_t errlen;
    char *param;
    size_t paramlen;
} answer;

/* Records a refusal: param (NULL or "" when the body as a whole is at fault) and the message, cut
 * to valid UTF-8 when the buffer is too small. */
__attribute__((format(printf, 3, 4))) static void say(answer *a, const char *param, const char *fmt,
                                                      ...)
{
    if (a->paramlen)
        snprintf(a->param, a->paramlen, "%s", param ? param : "");
    if (a->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(a->err, a->errlen, fmt, ap);
        va_end(ap);
        a->err[srv_utf8_check(a->err, strlen(a->err))] = 0;
    }
}

/* say(), then the status (a constant the caller returns, seen as such by the analyzer). */
#define REFUSE(a, status, ...) (say((a), __VA_ARGS__), (status))

/* An answer with no refusal yet: err and param empty. */
static answer answer_init(char *err, size_t errlen, char *param, size_t paramlen)
{
    if (errlen)
        err[0] = 0;
    if (paramlen)
        param[0] = 0;
    return (answer){err, errlen, param, paramlen};
}

static int nomem(answer *a)
{
    return REFUSE(a, 503, NULL, "out of memory");
}

/* The body as a cJSON object (caller deletes) after the grammar check; NULL with the status in
 * *status otherwise. */
static cJSON *parse_body(const char *body, size_t len, answer *a, int *status)
{
    size_t n = 0;
    char msg[160];
    if (!body || len == 0) {
        *status = REFUSE(a, 400, NULL, "request body: empty; expected a JSON object");
        return NULL;
    }
    char *copy = len < SIZE_MAX ? malloc(len + 1) : NULL;
    if (!copy) {
        *status = nomem(a);
        return NULL;
    }
    int rc = srv_json_check(body, len, copy, &n, msg, sizeof msg);
    cJSON *root = rc ? NULL : cJSON_ParseWithLengthOpts(copy, n, NULL, 0);
    free(copy);
    if (rc)
        *status = REFUSE(a, 400, NULL, "request body: %s", msg);
    else if (!root)
        *status = nomem(a);
    else if (!cJSON_IsObject(root)) {
        *status = REFUSE(a, 400, NULL, "request body: expected a JSON object");
        cJSON_Delete(root);
        root = NULL;
    }
    return root;
}

/* A boolean member (default def): 0, or the status of its refusal. */
static int bool_field(const cJSON *root, const char *name, bool def, bool *out, answer *a)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, name);
    *out = def;
    if (!v || cJSON_IsNull(v))
        return 0;
    if (!cJSON_IsBool(v))
        return REFUSE(a, 400, name, "%s: expected a boolean", name);
    *out = cJSON_IsTrue(v);
    return 0;
}

/* The text to tokenize (*text malloc'd): the prompt, or the messages rendered. 0, or the status
 * of the refusal. */
static int body_text(const core_tokenizer *tok, const srv_request_limits *lim, const char *body,
                     size_t len, bool chat, bool gen, char **text, answer *a)
{
    srv_request rq;
    char err[256], param[SRV_PARAM_MAX];
    int rc = srv_request_parse(chat ? SRV_REQ_CHAT : SRV_REQ_COMPLETION, body, len, lim, &rq, err,
                               sizeof err, param, sizeof param);
    if (rc == -ENOMEM)
        return nomem(a);
    if (rc < 0)
        return REFUSE(a, 400, param, "%s", err);
    if (!chat && !rq.prompt) {
        srv_request_deinit(&rq);
        return REFUSE(a, 400, "prompt", "prompt: expected a string");
    }
    if (!chat) {
        *text = strdup(rq.prompt);
        srv_request_deinit(&rq);
        return *text ? 0 : nomem(a);
    }
    rc = core_chat_render(tok, rq.messages, rq.n_messages, gen, text, err, sizeof err);
    srv_request_deinit(&rq);
    if (rc == -ENOMEM)
        return nomem(a);
    if (rc < 0)
        return REFUSE(a, 400, "messages", "cannot render the chat template: %s", err);
    return 0;
}

/* The ids of the body's prompt or messages (*ids malloc'd). 0, or the status of the refusal. */
static int tokenize_body(const core_tokenizer *tok, const srv_request_limits *lim,
                         const cJSON *root, const char *body, size_t len, int32_t **ids, size_t *n,
                         answer *a)
{
    bool chat = cJSON_GetObjectItemCaseSensitive(root, "messages") != NULL;
    bool special, gen;
    char *text = NULL;
    int st = bool_field(root, "add_special_tokens", !chat, &special, a);
    if (!st)
        st = bool_field(root, "add_generation_prompt", true, &gen, a);
    if (!st)
        st = body_text(tok, lim, body, len, chat, gen, &text, a);
    if (st)
        return st;
    int rc = core_tokenize(tok, text, strlen(text), true, ids, n);
    free(text);
    /* As the generation routes: chat's BOS comes from the template, prompts get one when the
     * model wants it (and add_special_tokens allows). */
    if (rc == 0 && (chat || special) && core_tokenizer_prepend_bos(tok, *ids, *n, chat)) {
        int32_t *v = realloc(*ids, (*n + 1) * sizeof *v);
        if (!v) {
            rc = -ENOMEM;
        } else {
            memmove(v + 1, v, *n * sizeof *v);
            v[0] = core_tokenizer_bos(tok);
            *ids = v;
            (*n)++;
        }
    }
    if (rc < 0) {
        free(*ids);
        *ids = NULL;
        return nomem(a);
    }
    return 0;
}

int srv_tokenize_answer(const core_tokenizer *tok, const srv_request_limits *lim, int n_ctx,
                        const char *body, size_t len, srv_buf *out, char *err, size_t errlen,
                        char *param, size_t paramlen)
{
    answer a = answer_init(err, errlen, param, paramlen);
    int st = 0;
    cJSON *root = parse_body(body, len, &a, &st);
    if (!root)
        return st;
    int32_t *ids = NULL;
    size_t n = 0;
    st = tokenize_body(tok, lim, root, body, len, &ids, &n, &a);
    cJSON_Delete(root);
    if (st)
        return st;
    srv_buf_puts(out, "{\"tokens\":[");
    for (size_t i = 0; i < n; i++)
        srv_buf_printf(out, "%s%d", i ? "," : "", (int)ids[i]);
    srv_buf_printf(out, "],\"count\":%zu,\"max_model_len\":%d}", n, n_ctx);
    free(ids);
    return 200;
}

/* The ids of the "tokens" member (*ids malloc'd, *n of them). 0, or the status of the refusal. */
static int body_ids(const cJSON *root, int32_t n_vocab, int32_t **ids, size_t *n, answer *a)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "tokens");
    if (!cJSON_IsArray(v))
        return REFUSE(a, 400, "tokens", "tokens: expected an array of token ids");
    int count = cJSON_GetArraySize(v);
    if (count > SRV_DETOKENIZE_MAX)
        return REFUSE(a, 400, "tokens", "tokens: %d ids, more than the limit of %d", count,
                      SRV_DETOKENIZE_MAX);
    if (!(*ids = malloc(((size_t)count + 1) * sizeof **ids)))
        return nomem(a);
    for (const cJSON *it = v->child; it; it = it->next, (*n)++) {
        /* The range first: converting a double outside int32_t's is undefined. */
        double d = cJSON_IsNumber(it) ? it->valuedouble : -1;
        if (!(d >= 0 && d < n_vocab) || d != (double)(int32_t)d) {
            char p[32];
            snprintf(p, sizeof p, "tokens[%zu]", *n);
            return REFUSE(a, 400, p, "%s: expected a token id in [0, %d)", p, (int)n_vocab);
        }
        (*ids)[*n] = (int32_t)d;
    }
    return 0;
}

int srv_detokenize_answer(const core_tokenizer *tok, const char *body, size_t len, srv_buf *out,
                          char *err, size_t errlen, char *param, size_t paramlen)
{
    answer a = answer_init(err, errlen, param, paramlen);
    int st = 0;
    cJSON *root = parse_body(body, len, &a, &st);
    if (!root)
        return st;
    int32_t *ids = NULL;
    char *text = NULL;
    size_t n = 0, tlen = 0;
    st = body_ids(root, core_tokenizer_n_vocab(tok), &ids, &n, &a);
    cJSON_Delete(root);
    if (!st && core_detokenize(tok, ids, n, true, &text, &tlen) < 0)
        st = nomem(&a);
    free(ids);
    if (st)
        return st;
    srv_buf_puts(out, "{\"prompt\":");
    srv_buf_json_str(out, text, tlen);
    srv_buf_putc(out, '}');
    free(text);
    return 200;
}

/* ---- the routes ---------------------------------------------------------------------------- */

/* Sends an answer of status st: b on 200, else the refusal err with param. */
static void reply(srv_http_req *req, int st, srv_buf *b, const char *err, const char *param)
{
    if (st == 200)
        srv_http_reply_json(req, 200, b, NULL);
    else
        srv_http_reply_error(req, st, st == 503 ? "server_error" : "invalid_request_error", NULL,
                             param, "%s", err);
}

void srv__route_tokenize(srv_app *a, srv_http_req *req, srv_call *c)
{
    (void)c;
    size_t len;
    const char *body = srv_http_body(req, &len);
    char err[512], param[SRV_PARAM_MAX];
    srv_buf b;
    srv_buf_init(&b);
    int st = srv_tokenize_answer(srv_engine_tokenizer(a->engine), &a->limits, a->n_ctx, body, len,
                                 &b, err, sizeof err, param, sizeof param);
    reply(req, st, &b, err, param);
    srv_buf_deinit(&b);
}

void srv__route_detokenize(srv_app *a, srv_http_req *req, srv_call *c)
{
    (void)c;
    size_t len;
    const char *body = srv_http_body(req, &len);
    char err[512], param[SRV_PARAM_MAX];
    srv_buf b;
    srv_buf_init(&b);
    int st = srv_detokenize_answer(srv_engine_tokenizer(a->engine), body, len, &b, err, sizeof err,
                                   param, sizeof param);
    reply(req, st, &b, err, param);
    srv_buf_deinit(&b);
}
