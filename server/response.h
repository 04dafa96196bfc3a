/* OpenAI-compatible response bodies: the JSON of /v1/completions and /v1/chat/completions, whole
 * or as server-sent events, and the error object every route answers with.
 *
 * The builders are pure: they read a job's output as plain values (text, srv_job_token records)
 * and turn token ids into text through a callback, so the exact bytes can be unit-tested without
 * a model. Text is escaped by srv_buf_json_str, so every body is valid JSON and an SSE event is a
 * single "data:" line whatever the model wrote.
 *
 * Thread-safety: pure functions of their arguments; any thread.
 */
#ifndef ADAPTREE_SERVER_RESPONSE_H
#define ADAPTREE_SERVER_RESPONSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "server/engine.h"
#include "server/request.h"
#include "server/strbuf.h"

/* The bytes of token id (up to cap written, like core_token_to_bytes): the full length, or < 0
 * for an unknown id. */
typedef int (*srv_resp_piece_fn)(void *ud, int32_t id, char *buf, size_t cap);

/* What every body of one response shares. */
typedef struct srv_resp {
    srv_request_kind kind;
    const char *id;          /* "cmpl-…" or "chatcmpl-…" */
    long long created;       /* Unix seconds */
    const char *model;       /* echoed: the request's "model", or the base model id */
    const char *fingerprint; /* "system_fingerprint": the replica that answers; NULL = none */
    int logprobs;            /* -1: "logprobs": null; k >= 0: logprobs with k alternatives */
    bool include_usage;      /* streaming: "usage": null in every chunk (OpenAI does so) */
    srv_resp_piece_fn piece; /* token text for logprobs; required when logprobs >= 0 */
    void *piece_ud;
    /* Completions with echo and logprobs: the prompt's tokens, reported before the generated
     * ones (the first with null logprob and top_logprobs), text_end = the end of each token's
     * text within the echoed prompt. NULL / 0: none. */
    const srv_job_token *prompt_toks;
    int n_prompt_toks;
    int index; /* srv_resp_chunk: the choice the chunk belongs to ("index"), 0 .. n - 1 */
} srv_resp;

typedef struct srv_resp_usage {
    int prompt_tokens, completion_tokens;
    int cached_tokens; /* of the prompt, from the prefix cache: prompt_tokens_details */
} srv_resp_usage;

/* {"error":{"message","type","param","code"}}; param and code may be NULL (null). */
void srv_resp_error(srv_buf *b, const char *message, const char *type, const char *code,
                    const char *param);

/* The whole non-streaming body. For completions, echo (echo_len bytes, may be NULL) is the
 * prompt text put before the completion; its tokens' logprobs are reported when r->prompt_toks
 * holds them, and text_offset counts it. toks (n_toks) are the job's recorded tokens: with
 * logprobs, those whose text_end <= len are reported (the tokens of a stop string, which is not
 * part of the text, are not). finish is "stop" or "length". */
void srv_resp_full(srv_buf *b, const srv_resp *r, const char *echo, size_t echo_len,
                   const char *text, size_t len, const srv_job_token *toks, int n_toks,
                   const char *finish, const srv_resp_usage *u);

/* One choice of a whole body: its text (len bytes), recorded tokens and finish, as for
 * srv_resp_full. */
typedef struct srv_resp_choice {
    const char *text;
    size_t len;
    const srv_job_token *toks; /* (n_toks) */
    int n_toks;
    const char *finish;
} srv_resp_choice;

/* srv_resp_full with n choices (OpenAI's "n"), "index" 0 .. n - 1 in order; each completion
 * choice echoes the prompt (and its logprobs) when echo is given. u covers the whole request:
 * the prompt once, the completion tokens of every choice. */
void srv_resp_full_n(srv_buf *b, const srv_resp *r, const char *echo, size_t echo_len,
                     const srv_resp_choice *ch, int n, const srv_resp_usage *u);

/* One SSE event "data: {chunk}\n\n" of choice r->index carrying text (len bytes; may be empty) and,
 * with logprobs, the tokens toks (n_toks). first: the first chat chunk, whose delta carries the
 * role. For text_offset (completions): echo_len is the length of the echoed prompt and prev_end the
 * text_end of the token before toks[0] (0 for the first token). finish is NULL while the
 * generation goes on, else "stop" / "length". */
void srv_resp_chunk(srv_buf *b, const srv_resp *r, bool first, const char *text, size_t len,
                    const srv_job_token *toks, int n_toks, size_t echo_len, size_t prev_end,
                    const char *finish);

/* The usage event sent after the last chunk when stream_options.include_usage is set. */
void srv_resp_usage_chunk(srv_buf *b, const srv_resp *r, const srv_resp_usage *u);

/* "data: {error}\n\n": a failure after the stream has started. */
void srv_resp_error_event(srv_buf *b, const char *message, const char *type, const char *code);

/* "data: [DONE]\n\n". */
void srv_resp_done(srv_buf *b);

/* Renders a token's bytes as OpenAI shows them: the text itself when it is valid UTF-8, else
 * "bytes:\xNN..." with one \xNN per byte (as text, not an escape). Appends to b unquoted. */
void srv_resp_token_text(srv_buf *b, const char *bytes, size_t n);

#endif
