/* The bodies of POST /tokenize and /detokenize (server/tokenize.c) turned into their answers,
 * apart from the transport: the routes (srv__route_tokenize and srv__route_detokenize in
 * server/routes_internal.h) send what these return, and tests call them directly.
 *
 * Thread-safety: pure functions of their arguments (the tokenizer is only read); any thread.
 */
#ifndef ADAPTREE_SERVER_TOKENIZE_H
#define ADAPTREE_SERVER_TOKENIZE_H

#include <stddef.h>

#include "core/text/tokenizer.h"
#include "server/request.h"
#include "server/strbuf.h"

#define SRV_DETOKENIZE_MAX 65536 /* ids in one /detokenize body */

/* The answer to a /tokenize body (len bytes, need not be NUL-terminated) for tokenizer tok, the
 * body's prompt or messages read as the generation routes read them, with their limits lim
 * (NULL: srv_request_limits_default). Returns the HTTP status:
 *   200  {"tokens":[...],"count":N,"max_model_len":n_ctx} appended to out;
 *   400  the body is refused: err (errlen bytes, may be 0) holds a message naming the field and
 *        param (paramlen bytes, may be 0) the field as OpenAI's error "param" ("" when the body
 *        as a whole is at fault);
 *   503  out of memory (err says so, param "").
 * Nothing is appended to out unless it returns 200. Any thread. */
int srv_tokenize_answer(const core_tokenizer *tok, const srv_request_limits *lim, int n_ctx,
                        const char *body, size_t len, srv_buf *out, char *err, size_t errlen,
                        char *param, size_t paramlen);

/* The answer to a /detokenize body {"tokens": [ids]} (at most SRV_DETOKENIZE_MAX ids, each in
 * tok's vocabulary): 200 with {"prompt":"text"} appended to out, special tokens' text shown;
 * 400 and 503 as srv_tokenize_answer. Any thread. */
int srv_detokenize_answer(const core_tokenizer *tok, const char *body, size_t len, srv_buf *out,
                          char *err, size_t errlen, char *param, size_t paramlen);

#endif
