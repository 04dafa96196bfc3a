/* A sequence's text from sampled tokens to released bytes (server/text_release.h): the streaming
 * decoder, the stop-string hold-back, and the tokens waiting for their bytes. */
#include "server/text_release.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

size_t srv_text_scratch_cap(const core_tokenizer *tok)
{
    /* The longest token plus up to three held bytes, each byte possibly replaced by U+FFFD (3
     * bytes), and the NUL. */
    int longest = 0;
    char c;
    int32_t n_vocab = core_tokenizer_n_vocab(tok);
    for (int32_t id = 0; id < n_vocab; id++) {
        int n = core_token_to_bytes(tok, id, false, &c, 0);
        if (n > longest)
            longest = n;
    }
    return 3 * ((size_t)longest + 4) + 1;
}

void srv_text_reset(srv_text *t, const core_tokenizer *tok, const char *const *stop,
                    const size_t *stop_len, int n_stop)
{
    core_detok_init(&t->dt, tok, false);
    t->stop = stop;
    t->stop_len = stop_len;
    t->n_stop = n_stop;
    t->total = 0;
    t->n_pend = 0;
    t->n_tok = 0;
}

void srv_text_set_stop_count(srv_text *t, int n_stop)
{
    t->n_stop = n_stop;
}

int srv_text_init(srv_text *t, const core_tokenizer *tok, const char *const *stop,
                  const size_t *stop_len, int n_stop, size_t scratch_cap)
{
    memset(t, 0, sizeof *t);
    t->scratch = malloc(scratch_cap);
    if (!t->scratch)
        return -ENOMEM;
    t->scratch_cap = scratch_cap;
    srv_text_reset(t, tok, stop, stop_len, n_stop);
    return 0;
}

void srv_text_deinit(srv_text *t)
{
    free(t->pend);
    free(t->tok);
    free(t->scratch);
    memset(t, 0, sizeof *t);
}

static int pend_add(srv_text *t, const char *b, size_t n)
{
    if (n == 0) /* a token whose bytes are all held (or none): pend may still be NULL */
        return 0;
    if (t->n_pend + n > t->cap_pend) {
        size_t cap = t->cap_pend ? 2 * t->cap_pend : 256;
        while (cap < t->n_pend + n)
            cap *= 2;
        char *v = realloc(t->pend, cap);
        if (!v)
            return -ENOMEM;
        t->pend = v;
        t->cap_pend = cap;
    }
    memcpy(t->pend + t->n_pend, b, n);
    t->n_pend += n;
    t->total += n;
    return 0;
}

static int tok_add(srv_text *t, const srv_job_token *rec)
{
    if (t->n_tok == t->cap_tok) {
        int cap = t->cap_tok ? 2 * t->cap_tok : 16;
        srv_job_token *v = realloc(t->tok, (size_t)cap * sizeof *v);
        if (!v)
            return -ENOMEM;
        t->tok = v;
        t->cap_tok = cap;
    }
    t->tok[t->n_tok] = *rec;
    t->tok[t->n_tok++].text_end = SIZE_MAX;
    return 0;
}

/* Tokens whose bytes the decoder was still holding end where the output now ends. */
static void close_open_tokens(srv_text *t)
{
    for (int i = t->n_tok - 1; i >= 0 && t->tok[i].text_end == SIZE_MAX; i--)
        t->tok[i].text_end = t->total;
}

/* The earliest stop string in the held bytes (*at = its offset in them). */
static bool find_stop(const srv_text *t, size_t *at)
{
    bool found = false;
    for (int i = 0; i < t->n_stop; i++) {
        const char *hit = memmem(t->pend, t->n_pend, t->stop[i], t->stop_len[i]);
        if (hit && (!found || (size_t)(hit - t->pend) < *at)) {
            *at = (size_t)(hit - t->pend);
            found = true;
        }
    }
    return found;
}

/* The longest tail of the held bytes that is a proper prefix of a stop string. */
static size_t holdback(const srv_text *t)
{
    size_t keep = 0, n = t->n_pend;
    for (int i = 0; i < t->n_stop; i++) {
        size_t m = t->stop_len[i] - 1 < n ? t->stop_len[i] - 1 : n;
        for (size_t k = m; k > keep; k--)
            if (!memcmp(t->pend + n - k, t->stop[i], k)) {
                keep = k;
                break;
            }
    }
    return keep;
}

int srv_text_push(srv_text *t, const srv_job_token *rec)
{
    if (tok_add(t, rec) < 0)
        return -ENOMEM;
    int n = core_detok_push(&t->dt, rec->id, t->scratch, t->scratch_cap);
    if (n < 0)
        return -EINVAL;
    if (pend_add(t, t->scratch, (size_t)n) < 0)
        return -ENOMEM;
    if (t->dt.n_pending == 0)
        close_open_tokens(t);
    size_t at;
    return find_stop(t, &at) ? SRV_TEXT_STOP : SRV_TEXT_MORE;
}

int srv_text_end(srv_text *t)
{
    int n = core_detok_flush(&t->dt, t->scratch, t->scratch_cap);
    if (n > 0 && pend_add(t, t->scratch, (size_t)n) < 0)
        return -ENOMEM;
    close_open_tokens(t);
    size_t at;
    return find_stop(t, &at) ? SRV_TEXT_STOP : SRV_TEXT_MORE;
}

size_t srv_text_ready(const srv_text *t, bool at_end)
{
    size_t at;
    if (find_stop(t, &at))
        return at;
    return at_end ? t->n_pend : t->n_pend - holdback(t);
}

void srv_text_consume(srv_text *t, size_t n)
{
    if (n > t->n_pend)
        n = t->n_pend;
    memmove(t->pend, t->pend + n, t->n_pend - n);
    t->n_pend -= n;
}

int srv_text_tokens_done(const srv_text *t, size_t released, bool all)
{
    int k = 0;
    while (k < t->n_tok && (all || t->tok[k].text_end <= released))
        k++;
    return k;
}

void srv_text_drop_tokens(srv_text *t, int k)
{
    if (k > t->n_tok)
        k = t->n_tok;
    memmove(t->tok, t->tok + k, (size_t)(t->n_tok - k) * sizeof *t->tok);
    t->n_tok -= k;
}
