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
 */
#include "core/text/tokenizer.h"
#include "server/engine.h"
#include "server/http.h"
#include "server/json_check.h"
#include "server/request.h"
#include "server/routes_internal.h"
#include "server/strbuf.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The body as a cJSON tree (caller deletes), after the grammar check; NULL after answering. */
static cJSON *parse_body(srv_http_req *req)
{
    size_t len, n = 0;
    const char *body = srv_http_body(req, &len);
    char msg[160];
    char *copy = malloc(len + 1);
    if (!copy) {
        srv_http_reply_error(req, 503, "server_error", NULL, NULL, "out of memory");
        return NULL;
    }
    int rc = srv_json_check(body, len, copy, &n, msg, sizeof msg);
    cJSON *root = rc ? NULL : cJSON_ParseWithLengthOpts(copy, n, NULL, 0);
    free(copy);
    if (rc)
        srv_http_reply_error(req, 400, "invalid_request_error", NULL, NULL, "request body: %s",
                             msg);
    else if (!root)
        srv_http_reply_error(req, 503, "server_error", NULL, NULL, "out of memory");
    else if (!cJSON_IsObject(root)) {
        srv_http_reply_error(req, 400, "invalid_request_error", NULL, NULL,
                             "request body: expected a JSON object");
        cJSON_Delete(root);
        root = NULL;
    }
    return root;
}

/* A boolean member (default def): 0, or -1 after answering. */
static int bool_field(srv_http_req *req, const cJSON *root, const char *name, bool def, bool *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, name);
    *out = def;
    if (!v || cJSON_IsNull(v))
        return 0;
    if (!cJSON_IsBool(v)) {
        srv_http_reply_error(req, 400, "invalid_request_error", NULL, name,
                             "%s: expected a boolean", name);
        return -1;
    }
    *out = cJSON_IsTrue(v);
    return 0;
}

/* The ids of the body's prompt or messages (*ids malloc'd). 0, or -1 after answering. */
static int tokenize_body(srv_app *a, srv_http_req *req, const cJSON *root, int32_t **ids, size_t *n)
{
    const core_tokenizer *tok = srv_engine_tokenizer(a->engine);
    bool chat = cJSON_GetObjectItemCaseSensitive(root, "messages") != NULL;
    bool special, gen;
    if (bool_field(req, root, "add_special_tokens", !chat, &special) < 0 ||
        bool_field(req, root, "add_generation_prompt", true, &gen) < 0)
        return -1;
    size_t len;
    const char *body = srv_http_body(req, &len);
    srv_request rq;
    char err[256], param[SRV_PARAM_MAX];
    int rc = srv_request_parse(chat ? SRV_REQ_CHAT : SRV_REQ_COMPLETION, body, len, &a->limits, &rq,
                               err, sizeof err, param, sizeof param);
    if (rc == -ENOMEM) {
        srv_http_reply_error(req, 503, "server_error", NULL, NULL, "out of memory");
        return -1;
    }
    if (rc < 0) {
        srv_http_reply_error(req, 400, "invalid_request_error", NULL, param, "%s", err);
        return -1;
    }
    if (!chat && !rq.prompt) {
        srv_request_deinit(&rq);
        srv_http_reply_error(req, 400, "invalid_request_error", NULL, "prompt",
                             "prompt: expected a string");
        return -1;
    }
    char *text = NULL;
    if (chat &&
        (rc = core_chat_render(tok, rq.messages, rq.n_messages, gen, &text, err, sizeof err)) < 0) {
        srv_request_deinit(&rq);
        srv_http_reply_error(req, rc == -ENOMEM ? 503 : 400,
                             rc == -ENOMEM ? "server_error" : "invalid_request_error", NULL,
                             "messages", "cannot render the chat template: %s", err);
        return -1;
    }
    const char *p = chat ? text : rq.prompt;
    rc = core_tokenize(tok, p, strlen(p), true, ids, n);
    free(text);
    srv_request_deinit(&rq);
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
        srv_http_reply_error(req, 503, "server_error", NULL, NULL, "out of memory");
        return -1;
    }
    return 0;
}

void srv__route_tokenize(srv_app *a, srv_http_req *req, srv_call *c)
{
    (void)c;
    cJSON *root = parse_body(req);
    if (!root)
        return;
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = tokenize_body(a, req, root, &ids, &n);
    cJSON_Delete(root);
    if (rc < 0)
        return;
    srv_buf b;
    srv_buf_init(&b);
    srv_buf_puts(&b, "{\"tokens\":[");
    for (size_t i = 0; i < n; i++)
        srv_buf_printf(&b, "%s%d", i ? "," : "", (int)ids[i]);
    srv_buf_printf(&b, "],\"count\":%zu,\"max_model_len\":%d}", n, a->n_ctx);
    free(ids);
    srv_http_reply_json(req, 200, &b, NULL);
    srv_buf_deinit(&b);
}

void srv__route_detokenize(srv_app *a, srv_http_req *req, srv_call *c)
{
    (void)c;
    const core_tokenizer *tok = srv_engine_tokenizer(a->engine);
    int32_t n_vocab = core_tokenizer_n_vocab(tok);
    cJSON *root = parse_body(req);
    if (!root)
        return;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "tokens");
    int count = cJSON_IsArray(v) ? cJSON_GetArraySize(v) : 0;
    int32_t *ids = NULL;
    char *text = NULL;
    size_t n = 0, len = 0;
    if (!cJSON_IsArray(v)) {
        srv_http_reply_error(req, 400, "invalid_request_error", NULL, "tokens",
                             "tokens: expected an array of token ids");
        goto out;
    }
    if (count > SRV_DETOKENIZE_MAX) {
        srv_http_reply_error(req, 400, "invalid_request_error", NULL, "tokens",
                             "tokens: %d ids, more than the limit of %d", count,
                             SRV_DETOKENIZE_MAX);
        goto out;
    }
    if (!(ids = malloc(((size_t)count + 1) * sizeof *ids))) {
        srv_http_reply_error(req, 503, "server_error", NULL, NULL, "out of memory");
        goto out;
    }
    for (const cJSON *it = v->child; it; it = it->next, n++) {
        double d = cJSON_IsNumber(it) ? it->valuedouble : -1;
        if (!cJSON_IsNumber(it) || d != (double)(int32_t)d || d < 0 || d >= n_vocab) {
            char p[32];
            snprintf(p, sizeof p, "tokens[%zu]", n);
            srv_http_reply_error(req, 400, "invalid_request_error", NULL, p,
                                 "%s: expected a token id in [0, %d)", p, (int)n_vocab);
            goto out;
        }
        ids[n] = (int32_t)d;
    }
    if (core_detokenize(tok, ids, n, true, &text, &len) < 0) {
        srv_http_reply_error(req, 503, "server_error", NULL, NULL, "out of memory");
        goto out;
    }
    srv_buf b;
    srv_buf_init(&b);
    srv_buf_puts(&b, "{\"prompt\":");
    srv_buf_json_str(&b, text, len);
    srv_buf_putc(&b, '}');
    srv_http_reply_json(req, 200, &b, NULL);
    srv_buf_deinit(&b);
out:
    free(text);
    free(ids);
    cJSON_Delete(root);
}
