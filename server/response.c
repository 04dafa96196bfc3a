/* OpenAI-compatible response bodies (server/response.h), written field by field into a srv_buf
 * in the order OpenAI sends them. */
#include "server/response.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/json_check.h"

#define PIECE_SMALL 128

/* A token's bytes: into small when they fit, else into *heap (caller frees). Returns the length,
 * 0 for an unknown id or no memory. */
static size_t piece(const srv_resp *r, int32_t id, char *small, char **heap, const char **out)
{
    *heap = NULL;
    *out = small;
    int n = r->piece ? r->piece(r->piece_ud, id, small, PIECE_SMALL) : -1;
    if (n <= 0)
        return 0;
    if ((size_t)n <= PIECE_SMALL)
        return (size_t)n;
    *heap = malloc((size_t)n);
    if (!*heap || r->piece(r->piece_ud, id, *heap, (size_t)n) != n) {
        free(*heap);
        *heap = NULL;
        return 0;
    }
    *out = *heap;
    return (size_t)n;
}

void srv_resp_token_text(srv_buf *b, const char *bytes, size_t n)
{
    if (srv_utf8_check(bytes, n) == n) {
        srv_buf_put(b, bytes, n);
        return;
    }
    srv_buf_puts(b, "bytes:");
    for (size_t i = 0; i < n; i++)
        srv_buf_printf(b, "\\x%02x", (unsigned char)bytes[i]);
}

/* A token's text as a JSON string. */
static void token_json(srv_buf *b, const srv_resp *r, int32_t id)
{
    char small[PIECE_SMALL], *heap;
    const char *p;
    size_t n = piece(r, id, small, &heap, &p);
    srv_buf t;
    srv_buf_init(&t);
    srv_resp_token_text(&t, p, n);
    if (!srv_buf_ok(&t))
        b->oom = true;
    srv_buf_json_str(b, t.data ? t.data : "", t.len);
    srv_buf_deinit(&t);
    free(heap);
}

/* A token's bytes as a JSON array of integers (chat logprobs "bytes"). */
static void token_bytes_json(srv_buf *b, const srv_resp *r, int32_t id)
{
    char small[PIECE_SMALL], *heap;
    const char *p;
    size_t n = piece(r, id, small, &heap, &p);
    srv_buf_putc(b, '[');
    for (size_t i = 0; i < n; i++)
        srv_buf_printf(b, "%s%u", i ? "," : "", (unsigned)(unsigned char)p[i]);
    srv_buf_putc(b, ']');
    free(heap);
}

/* How many of toks belong to text of length len (recorded tokens whose bytes were released). */
static int tokens_within(const srv_job_token *toks, int n, size_t len)
{
    int k = 0;
    while (k < n && toks[k].text_end <= len)
        k++;
    return k;
}

void srv_resp_error(srv_buf *b, const char *message, const char *type, const char *code,
                    const char *param)
{
    srv_buf_puts(b, "{\"error\":{\"message\":");
    srv_buf_json_cstr(b, message ? message : "");
    srv_buf_puts(b, ",\"type\":");
    srv_buf_json_cstr(b, type ? type : "invalid_request_error");
    srv_buf_puts(b, ",\"param\":");
    srv_buf_json_cstr(b, param && param[0] ? param : NULL);
    srv_buf_puts(b, ",\"code\":");
    srv_buf_json_cstr(b, code);
    srv_buf_puts(b, "}}");
}

static void head(srv_buf *b, const srv_resp *r, const char *object)
{
    srv_buf_puts(b, "{\"id\":");
    srv_buf_json_cstr(b, r->id ? r->id : "");
    srv_buf_printf(b, ",\"object\":\"%s\",\"created\":%lld,\"model\":", object, r->created);
    srv_buf_json_cstr(b, r->model ? r->model : "");
    if (r->fingerprint) {
        srv_buf_puts(b, ",\"system_fingerprint\":");
        srv_buf_json_cstr(b, r->fingerprint);
    }
}

static void usage_json(srv_buf *b, const srv_resp_usage *u)
{
    srv_buf_printf(b,
                   "{\"prompt_tokens\":%d,\"completion_tokens\":%d,\"total_tokens\":%d,"
                   "\"prompt_tokens_details\":{\"cached_tokens\":%d}}",
                   u->prompt_tokens, u->completion_tokens, u->prompt_tokens + u->completion_tokens,
                   u->cached_tokens);
}

/* Legacy completions logprobs: {"tokens","token_logprobs","top_logprobs","text_offset"}, for
 * r->prompt_toks (offsets within the echo) then toks (offsets after echo_len bytes). */
static void completion_logprobs(srv_buf *b, const srv_resp *r, const srv_job_token *toks, int n,
                                size_t echo_len, size_t prev_end)
{
    int np = r->prompt_toks ? r->n_prompt_toks : 0, all = np + n;
#define TOK(i) ((i) < np ? &r->prompt_toks[(i)] : &toks[(i)-np])
    srv_buf_puts(b, "{\"tokens\":[");
    for (int i = 0; i < all; i++) {
        if (i)
            srv_buf_putc(b, ',');
        token_json(b, r, TOK(i)->id);
    }
    srv_buf_puts(b, "],\"token_logprobs\":[");
    for (int i = 0; i < all; i++) {
        if (i)
            srv_buf_putc(b, ',');
        srv_buf_json_float(b, TOK(i)->logprob);
    }
    srv_buf_puts(b, "],\"top_logprobs\":[");
    for (int i = 0; i < all; i++) {
        const srv_job_token *t = TOK(i);
        if (i)
            srv_buf_putc(b, ',');
        if (i < np && isnan(t->logprob)) { /* the prompt's first token: nothing before it */
            srv_buf_puts(b, "null");
            continue;
        }
        srv_buf_putc(b, '{');
        /* Two ids can share a text (a byte token and a merged one); a JSON object keeps one
         * key, the most likely. */
        srv_buf keys[SRV_JOB_TOP_MAX];
        int nk = t->n_top < SRV_JOB_TOP_MAX ? t->n_top : SRV_JOB_TOP_MAX, shown = 0;
        for (int k = 0; k < nk; k++) {
            srv_buf_init(&keys[k]);
            token_json(&keys[k], r, t->top_ids[k]);
            bool dup = !srv_buf_ok(&keys[k]);
            for (int j = 0; j < k && !dup; j++)
                dup =
                    keys[j].len == keys[k].len && !memcmp(keys[j].data, keys[k].data, keys[k].len);
            if (dup)
                continue;
            if (shown++)
                srv_buf_putc(b, ',');
            srv_buf_put(b, keys[k].data, keys[k].len);
            srv_buf_putc(b, ':');
            srv_buf_json_float(b, t->top_logprobs[k]);
        }
        for (int k = 0; k < nk; k++)
            srv_buf_deinit(&keys[k]);
        srv_buf_putc(b, '}');
    }
    srv_buf_puts(b, "],\"text_offset\":[");
    for (int i = 0; i < all; i++) {
        size_t start;
        if (i < np)
            start = i ? r->prompt_toks[i - 1].text_end : 0;
        else
            start = echo_len + (i > np ? toks[i - np - 1].text_end : prev_end);
        srv_buf_printf(b, "%s%zu", i ? "," : "", start);
    }
    srv_buf_puts(b, "]}");
#undef TOK
}

/* Chat logprobs: {"content":[{"token","logprob","bytes","top_logprobs":[...]}],"refusal":null}. */
static void chat_logprobs(srv_buf *b, const srv_resp *r, const srv_job_token *toks, int n)
{
    srv_buf_puts(b, "{\"content\":[");
    for (int i = 0; i < n; i++) {
        srv_buf_puts(b, i ? ",{\"token\":" : "{\"token\":");
        token_json(b, r, toks[i].id);
        srv_buf_puts(b, ",\"logprob\":");
        srv_buf_json_float(b, toks[i].logprob);
        srv_buf_puts(b, ",\"bytes\":");
        token_bytes_json(b, r, toks[i].id);
        srv_buf_puts(b, ",\"top_logprobs\":[");
        for (int k = 0; k < toks[i].n_top && k < SRV_JOB_TOP_MAX; k++) {
            srv_buf_puts(b, k ? ",{\"token\":" : "{\"token\":");
            token_json(b, r, toks[i].top_ids[k]);
            srv_buf_puts(b, ",\"logprob\":");
            srv_buf_json_float(b, toks[i].top_logprobs[k]);
            srv_buf_puts(b, ",\"bytes\":");
            token_bytes_json(b, r, toks[i].top_ids[k]);
            srv_buf_putc(b, '}');
        }
        srv_buf_puts(b, "]}");
    }
    srv_buf_puts(b, "],\"refusal\":null}");
}

/* One element of "choices" in a whole body. */
static void choice_full(srv_buf *b, const srv_resp *r, int index, const char *echo, size_t echo_len,
                        const srv_resp_choice *c)
{
    bool chat = r->kind == SRV_REQ_CHAT;
    int n = tokens_within(c->toks, c->n_toks, c->len);
    srv_buf_printf(b, "{\"index\":%d,", index);
    if (chat) {
        srv_buf_puts(b, "\"message\":{\"role\":\"assistant\",\"content\":");
        srv_buf_json_str(b, c->text, c->len);
        srv_buf_puts(b, ",\"refusal\":null},\"logprobs\":");
        if (r->logprobs >= 0)
            chat_logprobs(b, r, c->toks, n);
        else
            srv_buf_puts(b, "null");
    } else {
        srv_buf_puts(b, "\"text\":");
        if (echo_len) {
            /* One JSON string of echo + text, without copying both into one buffer. */
            srv_buf e;
            srv_buf_init(&e);
            srv_buf_put(&e, echo, echo_len);
            srv_buf_put(&e, c->text, c->len);
            if (!srv_buf_ok(&e))
                b->oom = true;
            srv_buf_json_str(b, e.data ? e.data : "", e.len);
            srv_buf_deinit(&e);
        } else {
            srv_buf_json_str(b, c->text, c->len);
        }
        srv_buf_puts(b, ",\"logprobs\":");
        if (r->logprobs >= 0)
            completion_logprobs(b, r, c->toks, n, echo_len, 0);
        else
            srv_buf_puts(b, "null");
    }
    srv_buf_puts(b, ",\"finish_reason\":");
    srv_buf_json_cstr(b, c->finish);
    srv_buf_putc(b, '}');
}

void srv_resp_full_n(srv_buf *b, const srv_resp *r, const char *echo, size_t echo_len,
                     const srv_resp_choice *ch, int n, const srv_resp_usage *u)
{
    bool chat = r->kind == SRV_REQ_CHAT;
    if (chat || !echo)
        echo_len = 0;
    head(b, r, chat ? "chat.completion" : "text_completion");
    srv_buf_puts(b, ",\"choices\":[");
    for (int i = 0; i < n; i++) {
        if (i)
            srv_buf_putc(b, ',');
        choice_full(b, r, i, echo, echo_len, &ch[i]);
    }
    srv_buf_puts(b, "],\"usage\":");
    usage_json(b, u);
    srv_buf_putc(b, '}');
}

void srv_resp_full(srv_buf *b, const srv_resp *r, const char *echo, size_t echo_len,
                   const char *text, size_t len, const srv_job_token *toks, int n_toks,
                   const char *finish, const srv_resp_usage *u)
{
    srv_resp_choice c = {text, len, toks, n_toks, finish};
    srv_resp_full_n(b, r, echo, echo_len, &c, 1, u);
}

void srv_resp_chunk(srv_buf *b, const srv_resp *r, bool first, const char *text, size_t len,
                    const srv_job_token *toks, int n_toks, size_t echo_len, size_t prev_end,
                    const char *finish)
{
    bool chat = r->kind == SRV_REQ_CHAT;
    srv_buf_puts(b, "data: ");
    head(b, r, chat ? "chat.completion.chunk" : "text_completion");
    srv_buf_printf(b, ",\"choices\":[{\"index\":%d,", r->index);
    if (chat) {
        srv_buf_puts(b, "\"delta\":{");
        if (first)
            srv_buf_puts(b, "\"role\":\"assistant\",\"content\":");
        else if (len || !finish)
            srv_buf_puts(b, "\"content\":");
        if (first || len || !finish)
            srv_buf_json_str(b, text, len);
        srv_buf_puts(b, "},\"logprobs\":");
        if (r->logprobs >= 0 && n_toks > 0)
            chat_logprobs(b, r, toks, n_toks);
        else
            srv_buf_puts(b, "null");
    } else {
        srv_buf_puts(b, "\"text\":");
        srv_buf_json_str(b, text, len);
        srv_buf_puts(b, ",\"logprobs\":");
        if (r->logprobs >= 0 && (n_toks > 0 || (r->prompt_toks && r->n_prompt_toks > 0)))
            completion_logprobs(b, r, toks, n_toks, echo_len, prev_end);
        else
            srv_buf_puts(b, "null");
    }
    srv_buf_puts(b, ",\"finish_reason\":");
    srv_buf_json_cstr(b, finish);
    srv_buf_puts(b, "}]");
    if (r->include_usage)
        srv_buf_puts(b, ",\"usage\":null");
    srv_buf_puts(b, "}\n\n");
}

void srv_resp_usage_chunk(srv_buf *b, const srv_resp *r, const srv_resp_usage *u)
{
    srv_buf_puts(b, "data: ");
    head(b, r, r->kind == SRV_REQ_CHAT ? "chat.completion.chunk" : "text_completion");
    srv_buf_puts(b, ",\"choices\":[],\"usage\":");
    usage_json(b, u);
    srv_buf_puts(b, "}\n\n");
}

void srv_resp_error_event(srv_buf *b, const char *message, const char *type, const char *code)
{
    srv_buf_puts(b, "data: ");
    srv_resp_error(b, message, type, code, NULL);
    srv_buf_puts(b, "\n\n");
}

void srv_resp_done(srv_buf *b)
{
    srv_buf_puts(b, "data: [DONE]\n\n");
}
