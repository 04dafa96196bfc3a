/* Tokenizer built from GGUF metadata (tokenizer.ggml.*): byte-level BPE (model "gpt2") with the
 * pre-tokenizers of SmolLM2/StarCoder, GPT-2, Llama 3, Qwen2, Qwen3.5, Falcon and DeepSeek
 * (Coder, LLM), SentencePiece (model "llama": Llama 2, Mistral, Phi-3) and Gemma 4's raw-UTF-8 BPE
 * (model "gemma4"); special-token matching, UTF-8-safe streaming decode and chat-template
 * rendering (chat_template.c, through the Jinja-subset interpreter).
 *
 * A core_tokenizer is immutable after construction and may be used from any thread. It copies
 * what it needs out of the GGUF, so it does not borrow the core_gguf.
 */
#ifndef ADAPTREE_CORE_TEXT_TOKENIZER_H
#define ADAPTREE_CORE_TEXT_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/format/gguf.h"

typedef struct core_tokenizer core_tokenizer;

/* Token types as stored in tokenizer.ggml.token_type. */
enum core_token_type {
    CORE_TOKEN_NORMAL = 1,
    CORE_TOKEN_UNKNOWN = 2,
    CORE_TOKEN_CONTROL = 3,
    CORE_TOKEN_USER_DEFINED = 4,
    CORE_TOKEN_UNUSED = 5,
    CORE_TOKEN_BYTE = 6
};

/* Builds the tokenizer from a GGUF's metadata. Returns a new object (free with
 * core_tokenizer_free) or NULL with a message in err (unsupported tokenizer.ggml.model or
 * .pre, missing or inconsistent arrays, a merge naming unknown tokens, ...). */
core_tokenizer *core_tokenizer_new(const core_gguf *g, char *err, size_t errlen);
void core_tokenizer_free(core_tokenizer *t);

int32_t core_tokenizer_n_vocab(const core_tokenizer *t);
int32_t core_tokenizer_bos(const core_tokenizer *t); /* -1 if none */
int32_t core_tokenizer_eos(const core_tokenizer *t); /* -1 if none */
bool core_tokenizer_add_bos(const core_tokenizer *t);
/* Whether BOS goes in front of ids, a tokenized prompt: when the model asks for it
 * (tokenizer.ggml.add_bos_token), unless the prompt is a rendered chat template (templated) that
 * already begins with BOS (Llama 3's, Gemma's and Mistral's templates write bos_token). */
bool core_tokenizer_prepend_bos(const core_tokenizer *t, const int32_t *ids, size_t n,
                                bool templated);
/* True for tokens that end a generation (EOS, and <|endoftext|>-like end tokens). */
bool core_tokenizer_is_eog(const core_tokenizer *t, int32_t id);
/* The token's raw vocabulary string (byte-level encoded), NUL-terminated; NULL if out of
 * range. */
const char *core_tokenizer_token_str(const core_tokenizer *t, int32_t id);
int core_tokenizer_token_type(const core_tokenizer *t, int32_t id);

/* Encodes len bytes of text (need not be valid UTF-8: invalid bytes are encoded as their byte
 * tokens; a byte whose byte-level token is missing from the vocabulary is dropped, as HF
 * tokenizers does: SmolLM2's lacks 21, e.g. 0x04, 0xC0, 0xF1, 0xFF). With parse_special, the
 * text of CONTROL and USER_DEFINED tokens (e.g. "<|im_end|>") is matched (longest match first)
 * and becomes that token; without, only USER_DEFINED ones are (as llama.cpp and HF do), the
 * rest is tokenized as plain text. SentencePiece: each stretch of text between special tokens
 * gets a leading space when tokenizer.ggml.add_space_prefix (default true), spaces become
 * U+2581, and characters without a token become their <0xXX> byte tokens.
 * Does not add BOS. On success returns 0 and sets *out (malloc'd, caller frees) and *n. */
int core_tokenize(const core_tokenizer *t, const char *text, size_t len, bool parse_special,
                  int32_t **out, size_t *n);

/* The bytes of one token (byte-level decoded). CONTROL tokens give "" unless show_special.
 * Writes at most cap bytes, returns the full length, or -EINVAL for a bad id. */
int core_token_to_bytes(const core_tokenizer *t, int32_t id, bool show_special, char *buf,
                        size_t cap);

/* Decodes a whole sequence into *out (malloc'd, NUL-terminated, *len bytes; need not be valid
 * UTF-8): the tokens' bytes, less the space SentencePiece's add_space_prefix put before the first
 * one (as llama.cpp's detokenize). 0, -EINVAL for a bad id, or -ENOMEM. */
int core_detokenize(const core_tokenizer *t, const int32_t *ids, size_t n, bool show_special,
                    char **out, size_t *len);

/* Streaming decoder: feeds token ids, emits only complete UTF-8 characters; bytes of an
 * incomplete sequence are held until the next token completes them (an invalid sequence is
 * emitted as U+FFFD). */
typedef struct core_detok {
    const core_tokenizer *tok;
    bool show_special;
    uint8_t pending[8];
    int n_pending;
} core_detok;

void core_detok_init(core_detok *d, const core_tokenizer *t, bool show_special);
/* Appends the text completed by token id to out (cap bytes, NUL-terminated); returns the
 * number of bytes written (excluding NUL), or negative on a bad id / no room. */
int core_detok_push(core_detok *d, int32_t id, char *out, size_t cap);
/* Flushes held bytes at the end of a stream (as U+FFFD). */
int core_detok_flush(core_detok *d, char *out, size_t cap);

/* Chat messages and template rendering. */
typedef struct core_chat_msg {
    const char *role;
    const char *content;
} core_chat_msg;

/* A chat template (Jinja text, as in tokenizer.chat_template) compiled by the Jinja-subset
 * interpreter (core/text/jinja_*.c; README "Chat templates" lists what it covers). Immutable
 * once built: any thread may render with it. */
typedef struct core_chat_template core_chat_template;

/* Compiles src. Returns 0 and *out, -ENOTSUP with "chat template not supported: line N: ..."
 * naming the construct outside the subset (or "no tokenizer.chat_template" for NULL), or
 * -ENOMEM. */
int core_chat_template_new(const char *src, core_chat_template **out, char *err, size_t errlen);
void core_chat_template_free(core_chat_template *ct);

/* What transformers' apply_chat_template passes besides the messages (tools and documents are
 * always None). */
typedef struct core_chat_opts {
    bool add_generation_prompt;
    const char *bos_token, *eos_token; /* NULL: undefined in the template */
    int64_t now; /* strftime_now's clock, seconds since the epoch, UTC; 0: the current time */
} core_chat_opts;

/* Renders msgs. Roles must be non-NULL strings without control characters, contents any
 * non-NULL strings (-EINVAL otherwise). *out is malloc'd, NUL-terminated. Errors: -EINVAL with
 * the template's raise_exception message verbatim (e.g. "Conversation roles must alternate
 * user/assistant/user/assistant/...") or "line N: ..." for a failure of its logic; -E2BIG when
 * a resource bound is reached (output size, steps, nesting); -ENOMEM. */
int core_chat_template_render(const core_chat_template *ct, const core_chat_msg *msgs, size_t n,
                              const core_chat_opts *o, char **out, char *err, size_t errlen);

/* Replaces the tokenizer's chat template (the GGUF's) with src, e.g. serve --chat-template.
 * Call before the tokenizer is shared between threads. On an error the tokenizer keeps its
 * template. */
int core_tokenizer_set_chat_template(core_tokenizer *t, const char *src, char *err, size_t errlen);

/* 0 if the tokenizer has a usable chat template, else the error its compilation gave (-ENOTSUP:
 * none, or outside the subset), with the message. */
int core_tokenizer_chat_template_status(const core_tokenizer *t, char *err, size_t errlen);

/* Renders msgs with the tokenizer's chat template, bos_token and eos_token being the text of the
 * BOS and EOS tokens, strftime_now the current time. Errors as core_chat_template_render, and
 * -ENOTSUP with the compilation's message when there is no usable template. */
int core_chat_render(const core_tokenizer *t, const core_chat_msg *msgs, size_t n,
                     bool add_generation_prompt, char **out, char *err, size_t errlen);

/* Compiles tmpl and renders msgs once, without BOS/EOS tokens (tests, fuzzing). Pure; any
 * thread. */
int core_chat_render_template(const char *tmpl, const core_chat_msg *msgs, size_t n,
                              bool add_generation_prompt, char **out, char *err, size_t errlen);

#endif
