/* OpenAI-compatible request bodies (POST /v1/completions and /v1/chat/completions) parsed and
 * validated into plain C structs, with a message and the offending field for every refusal.
 *
 * The parse is strict where it matters and lenient where OpenAI clients are noisy: the body must
 * be one RFC 8259 JSON object in valid UTF-8; every field this server reads is type-checked and
 * range-checked; fields it does not know are ignored; fields that would change the result and are
 * not implemented (best_of > 1, tools, ...) are refused by name
 * rather than silently dropped. What "model" and "adapters" name is only checked for syntax here:
 * the server resolves them against the registry (docs/ARCHITECTURE.md §4). The grammar check in
 * front of cJSON is server/json_check.h.
 *
 * The body should already be capped by the HTTP layer (413): cJSON builds its whole tree before
 * the limits below are looked at, about 64 bytes per JSON value.
 *
 * Thread-safety: pure functions of their arguments; any thread (the HTTP threads call them).
 */
#ifndef ADAPTREE_SERVER_REQUEST_H
#define ADAPTREE_SERVER_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "adapters/registry.h"
#include "core/model/sampler.h"
#include "core/text/grammar.h"
#include "core/text/tokenizer.h"

typedef enum srv_request_kind {
    SRV_REQ_COMPLETION = 1, /* POST /v1/completions */
    SRV_REQ_CHAT = 2        /* POST /v1/chat/completions */
} srv_request_kind;

#define SRV_STOP_MAX 4          /* stop sequences per request (OpenAI's limit) */
#define SRV_STOP_BYTES_MAX 256  /* bytes per stop sequence */
#define SRV_MODEL_BYTES_MAX 255 /* bytes of "model" */
#define SRV_USER_BYTES_MAX 256  /* bytes of "user" */
#define SRV_LOGPROBS_MAX 5      /* completions "logprobs" (OpenAI's legacy limit) */
#define SRV_TOP_LOGPROBS_MAX 20 /* chat "top_logprobs" */
#define SRV_BIAS_MAX 1024       /* logit_bias entries (SRV_JOB_BIAS_MAX) */
#define SRV_STOP_IDS_MAX 64     /* stop_token_ids (SRV_JOB_STOP_IDS_MAX) */
#define SRV_N_MAX 16            /* choices per request ("n") */
#define SRV_PARAM_MAX 64        /* a param buffer of this size holds every param name */
#define SRV_COMPLETION_DEFAULT_MAX_TOKENS 16 /* OpenAI's default for /v1/completions */

/* "metadata" (OpenAI's limits): pairs, characters of a key, characters of a value. */
#define SRV_METADATA_MAX 16
#define SRV_METADATA_KEY_MAX 64
#define SRV_METADATA_VALUE_MAX 512

/* What the server allows; fixed for its lifetime. A zero means "no limit" (see each field). */
typedef struct srv_request_limits {
    size_t max_prompt_bytes; /* the prompt text, or the sum of the chat contents; a token-id
                                prompt counts 4 bytes per id. 0 = no limit */
    int max_tokens_limit;    /* largest max_tokens accepted; 0 = no limit */
    int default_max_tokens;  /* chat requests without max_tokens get this (capped by
                                max_tokens_limit); 0 = max_tokens_limit, or INT_MAX when that is
                                0 too: "until the context ends", the engine stops there anyway */
    int max_messages;        /* messages in one chat request; 0 = no limit */
    int32_t n_vocab;         /* > 0: token ids in a prompt must be < n_vocab; 0 = only >= 0 */
} srv_request_limits;

/* Fills *l with conservative defaults: 1 MiB of prompt, no max_tokens limit, chat default
 * "until the context ends", 1024 messages, no vocabulary check. */
void srv_request_limits_default(srv_request_limits *l);

struct srv_request_arena;

/* One parsed request. Every pointer points into memory owned by the request (one arena), valid
 * until srv_request_deinit; all strings are NUL-terminated, valid UTF-8 and contain no NUL. */
/* "speculative": the most draft tokens a step, the longest n-gram (as the engine's
 * SRV_SPEC_K_MAX and SRV_SPEC_NGRAM_MAX), the draft tokens of "speculative": true. */
#define SRV_REQ_SPEC_K_MAX 16
#define SRV_REQ_SPEC_NGRAM_MAX 8
#define SRV_REQ_SPEC_DEFAULT_K 8
/* "guided_choice": the most strings it may list. */
#define SRV_REQ_CHOICES_MAX 1024

typedef struct srv_request {
    srv_request_kind kind;

    /* completions: exactly one of prompt / prompt_ids is set */
    const char *prompt;  /* the text; never empty */
    size_t prompt_len;   /* strlen(prompt) */
    int32_t *prompt_ids; /* (n_prompt_ids) a pre-tokenized prompt, ids in [0, n_vocab) */
    size_t n_prompt_ids; /* >= 1 when prompt_ids is set */
    bool echo;           /* return the prompt before the completion */

    /* chat: roles are "system", "user" or "assistant" ("developer" is read as "system");
     * contents are the message text (text parts concatenated). Ready for core_chat_render. */
    core_chat_msg *messages; /* (n_messages) */
    size_t n_messages;       /* >= 1 */

    /* both */
    const char *model; /* the "model" field as given (opaque, <= 255 bytes), NULL if absent */
    adapter_sel_item adapters[ADAPTER_SEL_MAX]; /* "adapters": ids syntax-checked with
                                                   adapter_id_check, weight = "scale" (default 1,
                                                   finite, in [-1000, 1000]); duplicates kept */
    int n_adapters;
    int max_tokens;      /* tokens to generate at most, 0..limit (0 only for completions) */
    bool max_tokens_set; /* given by the client (else a default): a request whose prompt plus an
                            explicit max_tokens exceeds the context may be refused, a default
                            one is only cut short */
    core_sampler_params sampling;   /* passes core_sampler_new's checks */
    bool seed_set;                  /* "seed" given; otherwise the server should pick a seed */
    const char *stop[SRV_STOP_MAX]; /* non-empty, <= SRV_STOP_BYTES_MAX bytes each */
    int n_stop;
    bool stream;
    bool stream_include_usage; /* stream_options.include_usage, and only when streaming */
    int logprobs;     /* -1: none; k >= 0: each token's logprob plus the k most likely alternatives
                         (completions "logprobs": k; chat "logprobs": true + "top_logprobs": k) */
    int n;            /* choices, 1..SRV_N_MAX: each its own generation of the same prompt */
    const char *user; /* NULL if absent */
    /* sampling.presence_penalty / frequency_penalty: in [-2, 2] (OpenAI's formulas) */
    int32_t *bias_ids; /* (n_bias) "logit_bias" keys: ids in [0, n_vocab), each at most once */
    float *bias;       /* (n_bias) its values, in [-100, 100] */
    int n_bias;        /* 0 .. SRV_BIAS_MAX */
    int min_tokens;    /* EOG and stop_token_ids cannot end the generation before; <= max_tokens
                          (given or the default) */
    bool ignore_eos;   /* EOG never ends the generation */
    /* "speculative": {"k": K, "ngram": N} (or true: the server's default, on; false: off):
       draft tokens per step and the prompt lookup's n-gram; spec_k 0 = the server's setting,
       < 0 = off; spec_ngram 0 = the server's */
    int spec_k, spec_ngram;
    int32_t *stop_ids; /* (n_stop_ids) "stop_token_ids", in [0, n_vocab) */
    int n_stop_ids;    /* 0 .. SRV_STOP_IDS_MAX */
    /* "metadata" must be an object of at most SRV_METADATA_MAX string pairs (keys and values
       within their limits) and is otherwise ignored */
    const char *metadata_json; /* "metadata" as compact JSON, for the log; NULL if absent */
    core_grammar *grammar;     /* structured output (response_format json_object / json_schema, or
                                  guided_json), compiled; NULL: free text. Owned: deinit frees it */

    struct srv_request_arena *arena; /* private: owns everything above */
} srv_request;

/* Parses body (len bytes, need not be NUL-terminated) as a request of the given kind with the
 * limits lim (NULL: srv_request_limits_default). On success fills *out, which the caller owns
 * and releases with srv_request_deinit, and returns 0. On failure *out is zeroed with nothing
 * allocated, err (errlen bytes, may be 0) holds a message that names the field
 * ("temperature: must be in [0, 2], got 3"; always valid UTF-8), param (paramlen bytes, may be 0)
 * holds the field as OpenAI's error "param" ("temperature", "messages[2].content", or "" when the
 * body as a whole is at fault), and it returns:
 *   -EINVAL  malformed body, wrong type, value out of range, unsupported feature (HTTP 400);
 *   -E2BIG   a size or count over a limit: prompt bytes, messages, max_tokens over the server's
 *            limit, stop sequences, adapters, nesting (also HTTP 400, or 413 for the prompt);
 *   -ENOMEM  out of memory (HTTP 500 or 503).
 * Any thread. */
int srv_request_parse(srv_request_kind kind, const char *body, size_t len,
                      const srv_request_limits *lim, srv_request *out, char *err, size_t errlen,
                      char *param, size_t paramlen);

/* Frees everything a successful parse allocated and zeroes *r; NULL and a zeroed or already
 * deinitialized request are allowed. */
void srv_request_deinit(srv_request *r);

/* "completion", "chat" or "unknown". */
const char *srv_request_kind_name(srv_request_kind kind);

#endif
