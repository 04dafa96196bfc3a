/* A sequence's text on its way from sampled tokens to released bytes (the scheduler hands what
 * is released to the job).
 *
 * Sampled tokens go through the streaming decoder, so only whole UTF-8 characters come out;
 * decoded bytes then wait in a hold-back buffer while they could still be the start of a stop
 * string. Only bytes that can no longer belong to one are released, so released text never
 * contains a stop string and every released length ends on a character boundary (a stop string
 * starts with a lead byte). A token is recorded as it is sampled and released once all its bytes
 * are; its text_end is the offset where they end (SIZE_MAX while the decoder still holds some).
 *
 * Offsets are absolute: byte k is the k-th byte the decoder ever produced, and the released text
 * is a prefix of that stream. Engine thread only; one srv_text per running sequence.
 */
#ifndef ADAPTREE_SERVER_TEXT_RELEASE_H
#define ADAPTREE_SERVER_TEXT_RELEASE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/text/tokenizer.h"
#include "server/engine.h"

typedef struct srv_text {
    core_detok dt;
    const char *const *stop; /* (n_stop) the job's stop strings, borrowed */
    const size_t *stop_len;
    int n_stop;
    size_t total; /* bytes decoded so far */
    char *pend;   /* (n_pend) decoded, not released: bytes total - n_pend .. total */
    size_t n_pend, cap_pend;
    srv_job_token *tok; /* (n_tok) recorded, not released */
    int n_tok, cap_tok;
    char *scratch; /* (scratch_cap) one token's decoded bytes */
    size_t scratch_cap;
} srv_text;

/* What srv_text_push and srv_text_end found. */
typedef enum srv_text_state {
    SRV_TEXT_MORE = 0, /* go on */
    SRV_TEXT_STOP = 1  /* a stop string is complete: the text ends before it */
} srv_text_state;

/* An empty text for a sequence of tokenizer tok with the given stop strings (borrowed for the
 * text's life). scratch_cap: srv_text_scratch_cap(tok). 0 or -ENOMEM. */
int srv_text_init(srv_text *t, const core_tokenizer *tok, const char *const *stop,
                  const size_t *stop_len, int n_stop, size_t scratch_cap);
/* Empties t for a new sequence (keeps its buffers). */
void srv_text_reset(srv_text *t, const core_tokenizer *tok, const char *const *stop,
                    const size_t *stop_len, int n_stop);
void srv_text_deinit(srv_text *t);
/* Uses the first n_stop of the stop strings given to reset from now on (0: none): min_tokens
 * turns them on once enough tokens were made. Bytes still held can then complete one. */
void srv_text_set_stop_count(srv_text *t, int n_stop);

/* The largest output one token can decode to, plus room: what srv_text_init's scratch_cap
 * should be for tokenizer tok. */
size_t srv_text_scratch_cap(const core_tokenizer *tok);

/* A sampled token (rec: its id and logprobs; its text_end is filled in here): records it and
 * decodes its bytes. MORE or STOP; -EINVAL when it cannot be decoded, -ENOMEM. */
int srv_text_push(srv_text *t, const srv_job_token *rec);
/* The end of the sequence: flushes the decoder (its held bytes close every open token). MORE or
 * STOP (a stop string completed by the flush); -ENOMEM. */
int srv_text_end(srv_text *t);

/* How many held bytes may be released now: up to the first stop string when there is one, all
 * of them at the end, else all but the longest tail that is a proper prefix of a stop string. */
size_t srv_text_ready(const srv_text *t, bool at_end);
/* The held bytes (n_pend of them, the oldest first). */
static inline const char *srv_text_held(const srv_text *t)
{
    return t->pend;
}
/* Drops the first n held bytes (they were released). */
void srv_text_consume(srv_text *t, size_t n);

/* How many recorded tokens have all their bytes within the first released bytes (every one when
 * all is set); they are the first ones. */
int srv_text_tokens_done(const srv_text *t, size_t released, bool all);
/* Drops the first k recorded tokens (they were handed over). */
void srv_text_drop_tokens(srv_text *t, int k);

#endif
