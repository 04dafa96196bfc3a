/* Tokenizer built from GGUF metadata (tokenizer.ggml.*): byte-level BPE (model "gpt2") with the
 * pre-tokenizers of SmolLM2/StarCoder, GPT-2, Llama 3, Qwen2, Qwen3.5, Falcon and DeepSeek
 * (Coder, LLM), SentencePiece (model "llama": Llama 2, Mistral, Phi-3) and Gemma 4's raw-UTF-8 BPE
 * (model "gemma4"); special-token matching, UTF-8-safe streaming decode
 * and chat-template rendering for ChatML-style templates.
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

/* Renders msgs with the GGUF's tokenizer.chat_template (ChatML family: <|im_start|>role\n
 * content<|im_end|>\n, with the template's default system turn when the first message is not
 * a system message). *out is malloc'd, NUL-terminated. Returns 0, or -ENOTSUP with a message
 * when the template is absent or not one it can render. */
int core_chat_render(const core_tokenizer *t, const core_chat_msg *msgs, size_t n,
                     bool add_generation_prompt, char **out, char *err, size_t errlen);

/* The same for a template given as text (NULL: no template), so a template can be checked
 * without a GGUF. Pure; any thread. Roles must be non-NULL strings without control characters
 * (-EINVAL otherwise); contents any non-NULL strings. The ChatML family recognised: one
 * per-message output '<|im_start|>' + role + '\n' + content + '<|im_end|>\n' directly inside
 * `for m in messages`; optionally a literal default system turn under
 * `messages[0]['role'] != 'system'` (optionally `loop.first and ...`, or the else branch of
 * `== 'system'`); the generation prompt '<|im_start|>assistant\n' under
 * `if add_generation_prompt`. Other output, filters, macros or BOS/EOS references: -ENOTSUP. */
int core_chat_render_template(const char *tmpl, const core_chat_msg *msgs, size_t n,
                              bool add_generation_prompt, char **out, char *err, size_t errlen);

#endif
