/* Tokenizers built from GGUF metadata: byte-level BPE (tokenizer.ggml.model "gpt2") and
 * SentencePiece (model "llama"): vocabulary, merges or scores, special-token matching, encoding
 * and UTF-8-safe streaming decoding.
 *
 * Design. BPE: everything is resolved to token ids at load time so encoding never touches
 * strings: each of the 256 bytes has its byte-level token (byte_tok; -1 for the few a vocabulary
 * may lack, and such bytes are dropped like HF does), and the merges become a hash table from an
 * (left id, right id) pair to (rank, merged id). Text is first cut at special tokens (when
 * asked; USER_DEFINED ones always, as llama.cpp and HF do), then into pieces by the
 * pre-tokenizer (unicode.c). Encoding a piece starts from one symbol per byte and repeatedly
 * applies the lowest-ranked adjacent merge (ties: leftmost), using a binary heap of candidate
 * merges that are checked for staleness when popped, so a piece of n bytes costs O(n log n).
 * With ignore_merges (Llama 3) a piece that is a token as a whole is that token.
 *
 * SPM: no pre-tokenizer; a text fragment gets a leading space (add_space_prefix, at the start
 * and after a special token), spaces become U+2581, and symbols start as UTF-8 characters. The
 * same heap merges the adjacent pair whose concatenation is the token with the highest score
 * (scores are turned into ranks at load, so ties stay ties: leftmost first); the concatenation
 * is looked up in the string -> id map kept for that. A final symbol that is no token becomes
 * its bytes' <0xXX> tokens (byte_tok). gemma4 ("raw" BPE) escapes spaces the same way (no
 * prefix), cuts the text into newline / non-newline runs and merges each run's characters by
 * the merge ranks, with the same byte fallback.
 *
 * Decoding uses the bytes of every token, precomputed into one slab. The object is immutable
 * after core_tokenizer_new, so any number of threads may share it; each call allocates its own
 * scratch.
 */
#include "core/text/tokenizer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base.h"
#include "core/text/unicode_internal.h"

/* String -> id table over the token strings (or over their decoded bytes): key i is
 * base[off[i] .. off[i + 1] - trail). */
typedef struct vocab_map {
    const char *base;
    const uint32_t *off;
    uint32_t trail; /* 1: the keys are NUL-terminated */
    int32_t *slots; /* (mask + 1) id, or -1 */
    size_t mask;
} vocab_map;

/* BPE: byte-level ("gpt2"); SPM: SentencePiece ("llama"); RAW: gemma4's BPE merges over raw
 * UTF-8 characters with SPM's U+2581 spaces and <0xXX> byte fallback. */
enum tok_model { TOK_BPE, TOK_SPM, TOK_RAW };

/* A merge rule keyed by its pair of token ids. key == 0 marks an empty slot, which is safe
 * because id pairs are stored + 1. */
typedef struct merge_slot {
    uint64_t key;
    int32_t rank;
    int32_t id;
} merge_slot;

struct core_tokenizer {
    int32_t n_vocab;
    enum tok_model model;
    enum core__pretok pre; /* BPE only */
    bool ignore_merges;    /* BPE: a piece that is a token is that token (bytes_map) */
    bool add_space_prefix; /* SPM */
    int32_t *spm_rank;     /* SPM (n_vocab): 0 for the highest score; equal scores, equal ranks */
    vocab_map str_map;     /* SPM: token string -> id */
    vocab_map bytes_map;   /* ignore_merges: decoded bytes -> id */
    int32_t bos, eos;      /* -1 if none */
    bool add_bos;
    uint8_t *types;     /* (n_vocab) enum core_token_type */
    uint32_t *str_off;  /* (n_vocab + 1) offsets into strs */
    char *strs;         /* raw token strings, each NUL-terminated */
    uint32_t *byte_off; /* (n_vocab + 1) offsets into bytes */
    uint8_t *bytes;     /* decoded bytes of every token */
    int32_t byte_tok[256];
    merge_slot *merges; /* (merge_mask + 1) open addressing */
    size_t merge_mask;
    int32_t *special; /* (n_special) CONTROL/USER_DEFINED ids, longest text first */
    size_t n_special, n_user;
    uint8_t special_first[32]; /* bitmap: bytes that start some special token */
    uint8_t user_first[32];    /* bitmap: bytes that start some USER_DEFINED token */
    int32_t eog[8];
    int n_eog;
    core_chat_template *chat; /* NULL if the GGUF has none or it does not compile */
    int chat_rc;              /* why chat is NULL: -ENOTSUP, -ENOMEM */
    char chat_err[256];
};

/* --- byte-level mapping ------------------------------------------------------------------ */

/* GPT-2 bytes_to_unicode: printable bytes stand for themselves, the other 68 bytes map in
 * increasing order to U+0100, U+0101, ... */
static uint32_t byte_to_cp(uint8_t b)
{
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE)
        return b;
    uint32_t k = 0;
    for (int x = 0; x < b; x++)
        if (!((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || x >= 0xAE))
            k++;
    return 0x100 + k;
}

/* Inverse of byte_to_cp: the byte, or -1 if cp stands for no byte. */
static int cp_to_byte(const int16_t *inv, uint32_t cp)
{
    return cp < 0x144 ? inv[cp] : -1;
}

/* --- load-time string -> id table ---------------------------------------------------------- */

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = core_hash64(CORE_HASH_INIT, s, n);
    return h ^ (h >> 29);
}

static const char *tok_str(const core_tokenizer *t, int32_t id, size_t *n)
{
    *n = t->str_off[id + 1] - t->str_off[id] - 1;
    return t->strs + t->str_off[id];
}

static const char *map_key(const vocab_map *m, int32_t id, size_t *n)
{
    *n = m->off[id + 1] - m->off[id] - m->trail;
    return m->base + m->off[id];
}

/* Builds the map over all tokens; the lowest id wins for duplicate strings. */
static int vocab_map_build(vocab_map *m, const core_tokenizer *t, bool by_bytes)
{
    size_t cap = 64;
    while (cap < (size_t)t->n_vocab * 2)
        cap *= 2;
    m->base = by_bytes ? (const char *)t->bytes : t->strs;
    m->off = by_bytes ? t->byte_off : t->str_off;
    m->trail = !by_bytes;
    m->mask = cap - 1;
    m->slots = malloc(cap * sizeof *m->slots);
    if (!m->slots)
        return -ENOMEM;
    memset(m->slots, 0xff, cap * sizeof *m->slots);
    for (int32_t id = 0; id < t->n_vocab; id++) {
        size_t n;
        const char *s = map_key(m, id, &n);
        size_t i = hash_bytes(s, n) & m->mask;
        for (;; i = (i + 1) & m->mask) {
            int32_t o = m->slots[i];
            if (o < 0) {
                m->slots[i] = id;
                break;
            }
            size_t on;
            const char *os = map_key(m, o, &on);
            if (on == n && memcmp(os, s, n) == 0)
                break;
        }
    }
    return 0;
}

static int32_t vocab_map_find(const vocab_map *m, const char *s, size_t n)
{
    for (size_t i = hash_bytes(s, n) & m->mask;; i = (i + 1) & m->mask) {
        int32_t o = m->slots[i];
        if (o < 0)
            return -1;
        size_t on;
        const char *os = map_key(m, o, &on);
        if (on == n && memcmp(os, s, n) == 0)
            return o;
    }
}

/* --- merges ------------------------------------------------------------------------------ */

static uint64_t pair_key(int32_t a, int32_t b)
{
    return ((uint64_t)(uint32_t)(a + 1) << 32) | (uint32_t)(b + 1);
}

static size_t pair_hash(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return (size_t)k;
}

static const merge_slot *merge_find(const core_tokenizer *t, int32_t a, int32_t b)
{
    uint64_t key = pair_key(a, b);
    for (size_t i = pair_hash(key) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
        const merge_slot *s = &t->merges[i];
        if (s->key == key)
            return s;
        if (s->key == 0)
            return NULL;
    }
}

/* Resolves "LEFT RIGHT" strings (split at the first space after the first byte, as llama.cpp
 * does) to ids. The earliest of duplicate rules wins. */
static int load_merges(core_tokenizer *t, const vocab_map *vm, const core_gguf_str *m, uint64_t n,
                       char *err, size_t errlen)
{
    if (n > (uint64_t)INT32_MAX) {
        core_errf(err, errlen, "tokenizer.ggml.merges has %llu entries (too many)",
                  (unsigned long long)n);
        return -EINVAL;
    }
    size_t cap = 64, maxlen = 0;
    while (cap < n * 2)
        cap *= 2;
    t->merges = calloc(cap, sizeof *t->merges);
    t->merge_mask = cap - 1;
    for (uint64_t i = 0; i < n; i++)
        if (m[i].len > maxlen)
            maxlen = m[i].len;
    char *cat = malloc(maxlen + 1);
    if (!t->merges || !cat) {
        free(cat);
        return -ENOMEM;
    }
    int rc = 0;
    for (uint64_t r = 0; r < n && rc == 0; r++) {
        const char *s = m[r].ptr;
        size_t len = m[r].len;
        const char *sp = len > 1 ? memchr(s + 1, ' ', len - 1) : NULL;
        if (!sp) {
            core_errf(err, errlen, "tokenizer.ggml.merges[%llu] \"%.*s\" is not \"LEFT RIGHT\"",
                      (unsigned long long)r, (int)(len > 60 ? 60 : len), s);
            rc = -EINVAL;
            break;
        }
        size_t ln = (size_t)(sp - s), rn = len - ln - 1;
        memcpy(cat, s, ln);
        memcpy(cat + ln, sp + 1, rn);
        int32_t a = vocab_map_find(vm, s, ln), b = vocab_map_find(vm, sp + 1, rn);
        int32_t c = vocab_map_find(vm, cat, ln + rn);
        if (a < 0 || b < 0 || c < 0) {
            core_errf(err, errlen,
                      "tokenizer.ggml.merges[%llu] \"%.*s\" names a token that is not in "
                      "tokenizer.ggml.tokens",
                      (unsigned long long)r, (int)(len > 60 ? 60 : len), s);
            rc = -EINVAL;
            break;
        }
        uint64_t key = pair_key(a, b);
        for (size_t i = pair_hash(key) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
            merge_slot *slot = &t->merges[i];
            if (slot->key == key)
                break;
            if (slot->key == 0) {
                *slot = (merge_slot){key, (int32_t)r, c};
                break;
            }
        }
    }
    free(cat);
    return rc;
}

/* --- vocabulary ---------------------------------------------------------------------------- */

static int hexval(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* SentencePiece's escaped text: U+2581 stands for a space. Returns the unescaped length. */
static size_t spm_unescape(const uint8_t *s, size_t len, uint8_t *out)
{
    size_t k = 0;
    for (size_t p = 0; p < len; p++) {
        if (p + 2 < len && s[p] == 0xE2 && s[p + 1] == 0x96 && s[p + 2] == 0x81) {
            out[k++] = ' ';
            p += 2;
        } else {
            out[k++] = s[p];
        }
    }
    return k;
}

/* Copies the token strings and types, and precomputes every token's decoded bytes. */
static int load_vocab(core_tokenizer *t, const core_gguf_str *toks, const int32_t *types, char *err,
                      size_t errlen)
{
    size_t n = (size_t)t->n_vocab, total = 0;
    for (size_t i = 0; i < n; i++) {
        total += toks[i].len + 1;
        if (toks[i].len > (1u << 20) || total > UINT32_MAX) {
            core_errf(err, errlen, "tokenizer.ggml.tokens is too large (token %zu: %llu bytes)", i,
                      (unsigned long long)toks[i].len);
            return -EINVAL;
        }
        if (types[i] < CORE_TOKEN_NORMAL || types[i] > CORE_TOKEN_BYTE) {
            core_errf(err, errlen, "tokenizer.ggml.token_type[%zu] = %d is not a token type", i,
                      (int)types[i]);
            return -EINVAL;
        }
    }
    t->types = malloc(n);
    t->str_off = malloc((n + 1) * sizeof *t->str_off);
    t->byte_off = malloc((n + 1) * sizeof *t->byte_off);
    t->strs = malloc(total ? total : 1);
    t->bytes = malloc(total ? total : 1); /* decoding never makes a token longer */
    if (!t->types || !t->str_off || !t->byte_off || !t->strs || !t->bytes)
        return -ENOMEM;

    int16_t inv[0x144];
    for (int i = 0; i < 0x144; i++)
        inv[i] = -1;
    for (int b = 0; b < 256; b++)
        inv[byte_to_cp((uint8_t)b)] = (int16_t)b;

    uint32_t so = 0, bo = 0;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *s = (const uint8_t *)toks[i].ptr;
        size_t len = toks[i].len;
        t->types[i] = (uint8_t)types[i];
        t->str_off[i] = so;
        memcpy(t->strs + so, s, len);
        t->strs[so + len] = '\0';
        so += (uint32_t)len + 1;

        t->byte_off[i] = bo;
        uint8_t *out = t->bytes + bo;
        size_t k = 0;
        int hi = len == 6 ? hexval(s[3]) : -1, lo = len == 6 ? hexval(s[4]) : -1;
        if (types[i] == CORE_TOKEN_BYTE && hi >= 0 && lo >= 0 && memcmp(s, "<0x", 3) == 0 &&
            s[5] == '>') {
            out[k++] = (uint8_t)(hi << 4 | lo);
        } else if (t->model != TOK_BPE && types[i] != CORE_TOKEN_CONTROL) {
            k = spm_unescape(s, len, out);
        } else if (types[i] == CORE_TOKEN_NORMAL || types[i] == CORE_TOKEN_UNKNOWN ||
                   types[i] == CORE_TOKEN_UNUSED || types[i] == CORE_TOKEN_BYTE) {
            /* Byte-level decode; a token with a code point outside the byte alphabet is taken
             * as raw text, like HF's ByteLevel decoder. */
            size_t p = 0;
            while (p < len) {
                uint32_t cp;
                int l = core_utf8_check(s + p, len - p, &cp);
                int b = l > 0 ? cp_to_byte(inv, cp) : -1;
                if (b < 0)
                    break;
                out[k++] = (uint8_t)b;
                p += (size_t)l;
            }
            if (p < len)
                k = 0;
        }
        if (k == 0) {
            memcpy(out, s, len);
            k = len;
        }
        bo += (uint32_t)k;
    }
    t->str_off[n] = so;
    t->byte_off[n] = bo;
    return 0;
}

/* CONTROL and USER_DEFINED tokens, longest first (then lowest id), for parse_special. */
static int load_specials(core_tokenizer *t)
{
    size_t cnt = 0;
    for (int32_t i = 0; i < t->n_vocab; i++)
        if ((t->types[i] == CORE_TOKEN_CONTROL || t->types[i] == CORE_TOKEN_USER_DEFINED) &&
            t->str_off[i + 1] - t->str_off[i] > 1)
            cnt++;
    t->special = malloc((cnt ? cnt : 1) * sizeof *t->special);
    if (!t->special)
        return -ENOMEM;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        size_t len = t->str_off[i + 1] - t->str_off[i] - 1;
        if ((t->types[i] != CORE_TOKEN_CONTROL && t->types[i] != CORE_TOKEN_USER_DEFINED) ||
            len == 0)
            continue;
        /* insertion sort by decreasing length; equal lengths keep increasing id */
        size_t j = t->n_special++;
        while (j > 0) {
            int32_t o = t->special[j - 1];
            if (t->str_off[o + 1] - t->str_off[o] - 1 >= len)
                break;
            t->special[j] = o;
            j--;
        }
        t->special[j] = i;
        uint8_t b0 = (uint8_t)t->strs[t->str_off[i]];
        t->special_first[b0 >> 3] |= (uint8_t)(1u << (b0 & 7));
        if (t->types[i] == CORE_TOKEN_USER_DEFINED) {
            t->user_first[b0 >> 3] |= (uint8_t)(1u << (b0 & 7));
            t->n_user++;
        }
    }
    return 0;
}

typedef struct score_id {
    float score;
    int32_t id;
} score_id;

static int cmp_score_desc(const void *a, const void *b)
{
    float x = ((const score_id *)a)->score, y = ((const score_id *)b)->score;
    return (x < y) - (x > y);
}

/* SPM: tokenizer.ggml.scores as dense ranks, 0 for the highest score (equal scores share one, so
 * the merge order is exactly score order with ties to the leftmost pair). */
static int load_spm_ranks(core_tokenizer *t, const core_gguf *g, char *err, size_t errlen)
{
    float *sc = NULL;
    uint64_t n = 0;
    int rc = core_gguf_get_f32_array(g, "tokenizer.ggml.scores", &sc, &n);
    if (rc < 0 || n != (uint64_t)t->n_vocab) {
        core_errf(err, errlen, "tokenizer.ggml.scores is %s (tokens: %d)",
                  rc == -ENOENT ? "absent" : "not a float32 array with one entry per token",
                  (int)t->n_vocab);
        free(sc);
        return rc == -ENOMEM ? rc : -EINVAL;
    }
    score_id *v = malloc((size_t)n * sizeof *v);
    t->spm_rank = malloc((size_t)n * sizeof *t->spm_rank);
    for (uint64_t i = 0; v && i < n; i++) {
        v[i] = (score_id){sc[i], (int32_t)i};
        if (sc[i] != sc[i]) {
            core_errf(err, errlen, "tokenizer.ggml.scores[%llu] is NaN", (unsigned long long)i);
            rc = -EINVAL;
        }
    }
    if (v && t->spm_rank && rc == 0) {
        qsort(v, (size_t)n, sizeof *v, cmp_score_desc);
        int32_t r = 0;
        for (uint64_t i = 0; i < n; i++) {
            r += i > 0 && v[i].score != v[i - 1].score;
            t->spm_rank[v[i].id] = r;
        }
    }
    bool ok = v && t->spm_rank;
    free(sc);
    free(v);
    return rc < 0 ? rc : ok ? 0 : -ENOMEM;
}

/* Reads a token id key (any integer type); absent -> -1. */
static int load_id(const core_gguf *g, const char *key, int32_t n_vocab, int32_t *out, char *err,
                   size_t errlen)
{
    int rc = core_gguf_get_i32(g, key, out);
    if (rc == -ENOENT) {
        *out = -1;
        return 0;
    }
    if (rc < 0 || *out < 0 || *out >= n_vocab) {
        core_errf(err, errlen, "%s is not a token id below %d", key, (int)n_vocab);
        return -EINVAL;
    }
    return 0;
}

static void add_eog(core_tokenizer *t, int32_t id)
{
    for (int i = 0; i < t->n_eog; i++)
        if (t->eog[i] == id)
            return;
    if (id >= 0 && t->n_eog < (int)(sizeof t->eog / sizeof t->eog[0]))
        t->eog[t->n_eog++] = id;
}

/* SPM byte tokens: <0xXX>, else the byte itself as a token, else none (-1: dropped). */
static void spm_byte_tokens(core_tokenizer *t, const vocab_map *vm)
{
    static const char hex[] = "0123456789ABCDEF";
    for (int b = 0; b < 256; b++) {
        char name[6] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>'};
        char one = (char)b;
        t->byte_tok[b] = vocab_map_find(vm, name, sizeof name);
        if (t->byte_tok[b] < 0)
            t->byte_tok[b] = vocab_map_find(vm, &one, 1);
    }
}

/* BPE byte tokens (byte-level symbols) and merges. */
static int bpe_resolve(core_tokenizer *t, const vocab_map *vm, const core_gguf_str *merges,
                       uint64_t n_merges, char *err, size_t errlen)
{
    int n_bytes = 0;
    for (int b = 0; b < 256; b++) {
        uint8_t u[4];
        int l = core_utf8_encode(byte_to_cp((uint8_t)b), u);
        t->byte_tok[b] = vocab_map_find(vm, (const char *)u, (size_t)l);
        n_bytes += t->byte_tok[b] >= 0;
    }
    if (n_bytes < 128) { /* SmolLM2's lacks 21 (never-used control and lead bytes) */
        core_errf(err, errlen,
                  "tokenizer.ggml.tokens has only %d of the 256 byte-level tokens (not a "
                  "byte-level BPE vocabulary?)",
                  n_bytes);
        return -EINVAL;
    }
    int rc = load_merges(t, vm, merges, n_merges, err, errlen);
    if (rc == 0 && t->ignore_merges)
        rc = vocab_map_build(&t->bytes_map, t, true);
    return rc;
}

/* Everything that needs the string -> id map: byte tokens, merges, end-of-generation set. SPM
 * keeps the map for encoding. */
static int resolve_ids(core_tokenizer *t, const core_gguf_str *merges, uint64_t n_merges, char *err,
                       size_t errlen)
{
    vocab_map vm;
    int rc = vocab_map_build(&vm, t, false);
    if (rc < 0)
        return rc;
    if (t->model == TOK_BPE) {
        rc = bpe_resolve(t, &vm, merges, n_merges, err, errlen);
    } else {
        spm_byte_tokens(t, &vm);
        if (t->model == TOK_RAW)
            rc = load_merges(t, &vm, merges, n_merges, err, errlen);
    }
    static const char *const eog_text[] = {"<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end|>"};
    add_eog(t, t->eos);
    for (size_t i = 0; i < sizeof eog_text / sizeof eog_text[0] && rc == 0; i++) {
        int32_t id = vocab_map_find(&vm, eog_text[i], strlen(eog_text[i]));
        if (id >= 0 && t->types[id] == CORE_TOKEN_CONTROL)
            add_eog(t, id);
    }
    if (t->model == TOK_BPE)
        free(vm.slots);
    else
        t->str_map = vm;
    return rc;
}

/* The tokenizer.ggml.pre values of byte-level BPE vocabularies and the split each stands for
 * (llama.cpp's names; the ones that share a regex share a split). */
static const struct {
    const char *name;
    enum core__pretok pre;
} pretok_names[] = {
    {"smollm", CORE__PRETOK_SMOLLM},
    {"starcoder", CORE__PRETOK_SMOLLM},
    {"refact", CORE__PRETOK_SMOLLM},
    {"command-r", CORE__PRETOK_SMOLLM},
    {"gpt2", CORE__PRETOK_GPT2},
    {"gpt-2", CORE__PRETOK_GPT2},
    {"mpt", CORE__PRETOK_GPT2},
    {"llama-bpe", CORE__PRETOK_LLAMA3},
    {"llama3", CORE__PRETOK_LLAMA3},
    {"qwen2", CORE__PRETOK_QWEN2},
    {"qwen35", CORE__PRETOK_QWEN35},
    {"falcon", CORE__PRETOK_FALCON},
    {"deepseek-coder", CORE__PRETOK_DEEPSEEK_CODER},
    {"deepseek-llm", CORE__PRETOK_DEEPSEEK_LLM},
};

/* A "%.*s" view of a GGUF string for messages (cut at 40 bytes). */
#define STR_ARGS(s) (s).ptr ? (int)((s).len > 40 ? 40 : (s).len) : 0, (s).ptr ? (s).ptr : ""

static int load_pretok(core_tokenizer *t, const core_gguf *g, char *err, size_t errlen)
{
    core_gguf_str s = {NULL, 0};
    core_gguf_get_strv(g, "tokenizer.ggml.pre", &s);
    size_t n = sizeof pretok_names / sizeof pretok_names[0];
    for (size_t i = 0; i < n && s.ptr; i++) {
        if (core_gguf_str_eq(s, pretok_names[i].name)) {
            t->pre = pretok_names[i].pre;
            t->ignore_merges = t->pre == CORE__PRETOK_LLAMA3;
            return 0;
        }
    }
    char list[256];
    size_t k = 0;
    for (size_t i = 0; i < n && k < sizeof list; i++)
        k += (size_t)snprintf(list + k, sizeof list - k, "%s\"%s\"", i ? ", " : "",
                              pretok_names[i].name);
    core_errf(err, errlen, "tokenizer.ggml.pre \"%.*s\" is not supported (supported: %s)",
              STR_ARGS(s), list);
    return -ENOTSUP;
}

/* tokenizer.ggml.model: "gpt2" (byte-level BPE, with its pre-tokenizer) or "llama" (SPM). */
static int load_model(core_tokenizer *t, const core_gguf *g, char *err, size_t errlen)
{
    core_gguf_str s = {NULL, 0};
    core_gguf_get_strv(g, "tokenizer.ggml.model", &s);
    if (s.ptr && core_gguf_str_eq(s, "llama")) {
        t->model = TOK_SPM;
        t->add_space_prefix = true;
        return 0;
    }
    if (s.ptr && core_gguf_str_eq(s, "gpt2")) {
        t->model = TOK_BPE;
        return load_pretok(t, g, err, errlen);
    }
    if (s.ptr && core_gguf_str_eq(s, "gemma4")) {
        t->model = TOK_RAW;
        return 0;
    }
    core_errf(err, errlen,
              "tokenizer.ggml.model \"%.*s\" is not supported (supported: \"gpt2\", byte-level "
              "BPE; \"llama\", SentencePiece; \"gemma4\")",
              STR_ARGS(s));
    return -ENOTSUP;
}

/* An optional bool key: *out keeps its default when the key is absent. */
static int load_bool(const core_gguf *g, const char *key, bool *out, char *err, size_t errlen)
{
    if (core_gguf_find(g, key) && core_gguf_get_bool(g, key, out) < 0) {
        core_errf(err, errlen, "%s is not a bool", key);
        return -EINVAL;
    }
    return 0;
}

static int load_config(core_tokenizer *t, const core_gguf *g, char *err, size_t errlen)
{
    int rc = load_model(t, g, err, errlen);
    if (rc == 0)
        rc = load_id(g, "tokenizer.ggml.bos_token_id", t->n_vocab, &t->bos, err, errlen);
    if (rc == 0)
        rc = load_id(g, "tokenizer.ggml.eos_token_id", t->n_vocab, &t->eos, err, errlen);
    /* llama.cpp's defaults when the key is absent: BOS for SPM and Llama 3 */
    t->add_bos = t->model == TOK_SPM || (t->model == TOK_BPE && t->pre == CORE__PRETOK_LLAMA3);
    if (rc == 0)
        rc = load_bool(g, "tokenizer.ggml.add_bos_token", &t->add_bos, err, errlen);
    if (rc == 0 && t->model == TOK_SPM)
        rc = load_bool(g, "tokenizer.ggml.add_space_prefix", &t->add_space_prefix, err, errlen);
    if (rc < 0)
        return rc;
    core_gguf_str s;
    char *src = NULL;
    if (core_gguf_get_strv(g, "tokenizer.chat_template", &s) == 0) {
        src = malloc(s.len + 1);
        if (!src)
            return -ENOMEM;
        memcpy(src, s.ptr, s.len);
        src[s.len] = '\0';
    }
    /* a template outside the subset leaves a usable tokenizer; chat rendering reports why */
    t->chat_rc = core_chat_template_new(src, &t->chat, t->chat_err, sizeof t->chat_err);
    free(src);
    return t->chat_rc == -ENOMEM ? -ENOMEM : 0;
}

core_tokenizer *core_tokenizer_new(const core_gguf *g, char *err, size_t errlen)
{
    core_gguf_str *toks = NULL, *merges = NULL;
    int32_t *types = NULL;
    uint64_t n_toks = 0, n_types = 0, n_merges = 0;
    if (err && errlen)
        err[0] = '\0';
    core_tokenizer *t = calloc(1, sizeof *t);
    if (!t) {
        core_errf(err, errlen, "out of memory");
        return NULL;
    }
    int rc = core_gguf_get_str_array(g, "tokenizer.ggml.tokens", &toks, &n_toks);
    if (rc < 0 || n_toks == 0 || n_toks >= (uint64_t)INT32_MAX) {
        core_errf(err, errlen, "tokenizer.ggml.tokens is %s",
                  rc == -ENOENT ? "absent" : "not a non-empty array of strings");
        goto fail;
    }
    t->n_vocab = (int32_t)n_toks;
    rc = core_gguf_get_i32_array(g, "tokenizer.ggml.token_type", &types, &n_types);
    if (rc < 0 || n_types != n_toks) {
        core_errf(err, errlen, "tokenizer.ggml.token_type is %s (tokens: %llu)",
                  rc == -ENOENT ? "absent" : "not an integer array with one entry per token",
                  (unsigned long long)n_toks);
        goto fail;
    }
    if (load_config(t, g, err, errlen) < 0)
        goto fail;
    if (t->model != TOK_SPM) {
        rc = core_gguf_get_str_array(g, "tokenizer.ggml.merges", &merges, &n_merges);
        if (rc < 0) {
            core_errf(err, errlen, "tokenizer.ggml.merges is %s",
                      rc == -ENOENT ? "absent" : "not an array of strings");
            goto fail;
        }
    } else if (load_spm_ranks(t, g, err, errlen) < 0) {
        goto fail;
    }
    if (load_vocab(t, toks, types, err, errlen) < 0 || load_specials(t) < 0 ||
        resolve_ids(t, merges, n_merges, err, errlen) < 0)
        goto fail;
    free(toks);
    free(types);
    free(merges);
    return t;
fail:
    if (err && errlen && !err[0])
        core_errf(err, errlen, "out of memory");
    free(toks);
    free(types);
    free(merges);
    core_tokenizer_free(t);
    return NULL;
}

void core_tokenizer_free(core_tokenizer *t)
{
    if (!t)
        return;
    free(t->types);
    free(t->str_off);
    free(t->strs);
    free(t->byte_off);
    free(t->bytes);
    free(t->merges);
    free(t->spm_rank);
    free(t->str_map.slots);
    free(t->bytes_map.slots);
    free(t->special);
    core_chat_template_free(t->chat);
    free(t);
}

int32_t core_tokenizer_n_vocab(const core_tokenizer *t)
{
    return t->n_vocab;
}
int32_t core_tokenizer_bos(const core_tokenizer *t)
{
    return t->bos;
}
int32_t core_tokenizer_eos(const core_tokenizer *t)
{
    return t->eos;
}
bool core_tokenizer_add_bos(const core_tokenizer *t)
{
    return t->add_bos;
}

bool core_tokenizer_prepend_bos(const core_tokenizer *t, const int32_t *ids, size_t n,
                                bool templated)
{
    if (!t->add_bos || t->bos < 0)
        return false;
    return !(templated && n > 0 && ids[0] == t->bos);
}

bool core_tokenizer_is_eog(const core_tokenizer *t, int32_t id)
{
    for (int i = 0; i < t->n_eog; i++)
        if (t->eog[i] == id)
            return true;
    return false;
}

const char *core_tokenizer_token_str(const core_tokenizer *t, int32_t id)
{
    if (id < 0 || id >= t->n_vocab)
        return NULL;
    return t->strs + t->str_off[id];
}

int core_tokenizer_token_type(const core_tokenizer *t, int32_t id)
{
    if (id < 0 || id >= t->n_vocab)
        return -EINVAL;
    return t->types[id];
}

int core_tokenizer_set_chat_template(core_tokenizer *t, const char *src, char *err, size_t errlen)
{
    core_chat_template *ct;
    int rc = core_chat_template_new(src, &ct, err, errlen);
    if (rc < 0)
        return rc;
    core_chat_template_free(t->chat);
    t->chat = ct;
    t->chat_rc = 0;
    t->chat_err[0] = '\0';
    return 0;
}

int core_tokenizer_chat_template_status(const core_tokenizer *t, char *err, size_t errlen)
{
    if (!t->chat)
        core_errf(err, errlen, "%s", t->chat_err);
    return t->chat ? 0 : t->chat_rc;
}

/* The text of a special token for bos_token/eos_token ("" when absent). */
static void token_text(const core_tokenizer *t, int32_t id, char *buf, size_t cap)
{
    int n = id >= 0 ? core_token_to_bytes(t, id, true, buf, cap - 1) : 0;
    buf[n > 0 && (size_t)n < cap ? n : 0] = '\0';
}

int core_chat_render(const core_tokenizer *t, const core_chat_msg *msgs, size_t n,
                     bool add_generation_prompt, char **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!t->chat) {
        core_errf(err, errlen, "%s", t->chat_err);
        return t->chat_rc;
    }
    char bos[128], eos[128];
    token_text(t, t->bos, bos, sizeof bos);
    token_text(t, t->eos, eos, sizeof eos);
    core_chat_opts o = {.add_generation_prompt = add_generation_prompt,
                        .bos_token = t->bos >= 0 ? bos : NULL,
                        .eos_token = t->eos >= 0 ? eos : NULL};
    return core_chat_template_render(t->chat, msgs, n, &o, out, err, errlen);
}

/* --- encoding -------------------------------------------------------------------------- */

/* A candidate merge of the symbols starting at pos and mid (the right one ending at end). */
typedef struct bpe_cand {
    int32_t rank;
    uint32_t pos, mid, end;
} bpe_cand;

/* Per-call working memory, grown to the longest piece. */
typedef struct bpe_work {
    size_t cap;
    int32_t *id;           /* (cap) token of the symbol starting at byte i */
    uint32_t *prev, *next; /* (cap) neighbours' starts; next == n past the end */
    bpe_cand *heap;        /* (3 * cap) */
    size_t n_heap;
} bpe_work;

static bool cand_less(const bpe_cand *a, const bpe_cand *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(bpe_work *w, bpe_cand c)
{
    size_t i = w->n_heap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_less(&c, &w->heap[p]))
            break;
        w->heap[i] = w->heap[p];
        i = p;
    }
    w->heap[i] = c;
}

static bpe_cand heap_pop(bpe_work *w)
{
    bpe_cand top = w->heap[0], last = w->heap[--w->n_heap];
    size_t i = 0, n = w->n_heap;
    for (;;) {
        size_t l = 2 * i + 1, m = i;
        const bpe_cand *best = &last;
        if (l < n && cand_less(&w->heap[l], best)) {
            m = l;
            best = &w->heap[l];
        }
        if (l + 1 < n && cand_less(&w->heap[l + 1], best))
            m = l + 1;
        if (m == i)
            break;
        w->heap[i] = w->heap[m];
        i = m;
    }
    if (n)
        w->heap[i] = last;
    return top;
}

static int work_reserve(bpe_work *w, size_t n)
{
    if (n <= w->cap)
        return 0;
    size_t cap = w->cap ? w->cap : 64;
    while (cap < n)
        cap *= 2;
    free(w->id);
    free(w->prev);
    free(w->next);
    free(w->heap);
    w->id = malloc(cap * sizeof *w->id);
    w->prev = malloc(cap * sizeof *w->prev);
    w->next = malloc(cap * sizeof *w->next);
    w->heap = malloc(3 * cap * sizeof *w->heap);
    w->cap = w->id && w->prev && w->next && w->heap ? cap : 0;
    return w->cap ? 0 : -ENOMEM;
}

static void work_free(bpe_work *w)
{
    free(w->id);
    free(w->prev);
    free(w->next);
    free(w->heap);
}

/* Queues the merge of the adjacent symbols at pos and mid, if there is a rule for them. */
static void try_cand(const core_tokenizer *t, bpe_work *w, uint32_t pos, uint32_t mid)
{
    const merge_slot *m = merge_find(t, w->id[pos], w->id[mid]);
    if (m)
        heap_push(w, (bpe_cand){m->rank, pos, mid, w->next[mid]});
}

/* BPE-encodes one piece, appending its ids to out. */
static int bpe_piece(const core_tokenizer *t, bpe_work *w, const uint8_t *s, size_t n, int32_t *out,
                     size_t *n_out)
{
    if (n == 1) {
        if (t->byte_tok[s[0]] >= 0)
            out[(*n_out)++] = t->byte_tok[s[0]];
        return 0;
    }
    if (n > UINT32_MAX / 2 || work_reserve(w, n) < 0)
        return -ENOMEM;
    /* A byte without a token is dropped before merging, so its neighbours become adjacent
     * (HF's BPE without an unk token does the same). */
    uint32_t un = 0;
    for (size_t i = 0; i < n; i++) {
        if (t->byte_tok[s[i]] < 0)
            continue;
        w->id[un] = t->byte_tok[s[i]];
        w->prev[un] = un - 1; /* wraps for 0; never read there */
        w->next[un] = un + 1;
        un++;
    }
    w->n_heap = 0;
    for (uint32_t i = 0; i + 1 < un; i++)
        try_cand(t, w, i, i + 1);
    while (w->n_heap) {
        bpe_cand c = heap_pop(w);
        /* stale unless both symbols still span exactly what they did when queued */
        if (w->id[c.pos] < 0 || w->next[c.pos] != c.mid || w->next[c.mid] != c.end)
            continue;
        w->id[c.pos] = merge_find(t, w->id[c.pos], w->id[c.mid])->id;
        w->id[c.mid] = -1;
        w->next[c.pos] = c.end;
        if (c.end < un)
            w->prev[c.end] = c.pos;
        if (c.pos > 0)
            try_cand(t, w, w->prev[c.pos], c.pos);
        if (c.end < un)
            try_cand(t, w, c.pos, c.end);
    }
    for (uint32_t i = 0; i < un; i = w->next[i])
        out[(*n_out)++] = w->id[i];
    return 0;
}

/* The special token whose text starts at s (the longest), or -1. Without parse_special only
 * USER_DEFINED tokens count. */
static int32_t match_special(const core_tokenizer *t, const char *s, size_t n, bool parse_special)
{
    uint8_t b0 = (uint8_t)s[0];
    const uint8_t *first = parse_special ? t->special_first : t->user_first;
    if (!(first[b0 >> 3] & (1u << (b0 & 7))))
        return -1;
    for (size_t i = 0; i < t->n_special; i++) {
        int32_t id = t->special[i];
        if (!parse_special && t->types[id] != CORE_TOKEN_USER_DEFINED)
            continue;
        size_t len = t->str_off[id + 1] - t->str_off[id] - 1;
        if (len <= n && memcmp(t->strs + t->str_off[id], s, len) == 0)
            return id;
    }
    return -1;
}

/* Where the pieces of one stretch of text go. */
typedef struct piece_sink {
    const core_tokenizer *t;
    bpe_work *w;
    const char *s;
    int32_t *out;
    size_t *n_out;
} piece_sink;

/* BPE-encodes one piece (core__piece_fn). */
static int encode_piece(void *ctx, size_t start, size_t end)
{
    const piece_sink *k = ctx;
    const core_tokenizer *t = k->t;
    const char *p = k->s + start;
    int32_t whole = t->ignore_merges ? vocab_map_find(&t->bytes_map, p, end - start) : -1;
    if (whole < 0)
        return bpe_piece(t, k->w, (const uint8_t *)p, end - start, k->out, k->n_out);
    k->out[(*k->n_out)++] = whole;
    return 0;
}

/* Pre-tokenizes and BPE-encodes text that holds no special token. */
static int encode_plain(const core_tokenizer *t, bpe_work *w, const char *s, size_t n, int32_t *out,
                        size_t *n_out)
{
    piece_sink k = {t, w, s, out, n_out};
    return core__pretok_split(s, n, t->pre, encode_piece, &k);
}

/* --- SPM encoding ------------------------------------------------------------------------- */

/* The length of the UTF-8 character led by b as llama.cpp counts it (by the lead byte alone; a
 * stray continuation byte is 1). */
static size_t spm_char_len(uint8_t b)
{
    return b < 0xC0 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
}

/* Character symbols (SPM and gemma4): symbols start as the UTF-8 characters of s (n bytes),
 * indexed by their first byte, each with its token id or -1. A merged-away symbol has next ==
 * UINT32_MAX. */
static void chars_init(const core_tokenizer *t, bpe_work *w, const uint8_t *s, uint32_t n)
{
    uint32_t last = 0;
    for (uint32_t i = 0; i < n; i = w->next[i]) {
        size_t l = spm_char_len(s[i]);
        w->next[i] = i + l < n ? (uint32_t)(i + l) : n;
        w->prev[i] = last;
        w->id[i] = vocab_map_find(&t->str_map, (const char *)s + i, w->next[i] - i);
        last = i;
    }
    w->n_heap = 0;
}

/* Appends the symbols' ids; one without a token becomes its bytes' tokens (byte fallback). */
static void chars_emit(const core_tokenizer *t, const bpe_work *w, const uint8_t *s, uint32_t n,
                       int32_t *out, size_t *n_out)
{
    for (uint32_t i = 0; i < n; i = w->next[i]) {
        if (w->id[i] >= 0) {
            out[(*n_out)++] = w->id[i];
            continue;
        }
        for (uint32_t j = i; j < w->next[i]; j++)
            if (t->byte_tok[s[j]] >= 0)
                out[(*n_out)++] = t->byte_tok[s[j]];
    }
}

/* Queues the merge of the symbols at pos and mid: SPM when their concatenation is a token (by
 * its score rank), gemma4 when a merge rule joins their tokens. */
static void chars_try(const core_tokenizer *t, bpe_work *w, const uint8_t *s, uint32_t pos,
                      uint32_t mid)
{
    uint32_t end = w->next[mid];
    if (t->model == TOK_SPM) {
        int32_t id = vocab_map_find(&t->str_map, (const char *)s + pos, end - pos);
        if (id >= 0)
            heap_push(w, (bpe_cand){t->spm_rank[id], pos, mid, end});
    } else if (w->id[pos] >= 0 && w->id[mid] >= 0) {
        const merge_slot *m = merge_find(t, w->id[pos], w->id[mid]);
        if (m)
            heap_push(w, (bpe_cand){m->rank, pos, mid, end});
    }
}

/* The token of the merged symbols at pos and mid (chars_try queued them, so it exists). */
static int32_t chars_merged(const core_tokenizer *t, const bpe_work *w, const uint8_t *s,
                            const bpe_cand *c)
{
    if (t->model == TOK_SPM)
        return vocab_map_find(&t->str_map, (const char *)s + c->pos, c->end - c->pos);
    return merge_find(t, w->id[c->pos], w->id[c->mid])->id;
}

/* Merges the character symbols of s (n bytes; work reserved) best candidate first and appends
 * the tokens. */
static void chars_merge(const core_tokenizer *t, bpe_work *w, const uint8_t *s, uint32_t n,
                        int32_t *out, size_t *n_out)
{
    chars_init(t, w, s, n);
    for (uint32_t i = 0; w->next[i] < n; i = w->next[i])
        chars_try(t, w, s, i, w->next[i]);
    while (w->n_heap) {
        bpe_cand c = heap_pop(w);
        if (w->next[c.pos] != c.mid || w->next[c.mid] != c.end)
            continue; /* stale: next only grows, or becomes UINT32_MAX */
        w->id[c.pos] = chars_merged(t, w, s, &c);
        w->next[c.pos] = c.end;
        w->next[c.mid] = UINT32_MAX;
        if (c.end < n)
            w->prev[c.end] = c.pos;
        if (c.pos > 0)
            chars_try(t, w, s, w->prev[c.pos], c.pos);
        if (c.end < n)
            chars_try(t, w, s, c.pos, c.end);
    }
    chars_emit(t, w, s, n, out, n_out);
}

/* gemma4: merges each newline / non-newline run of the escaped text (core__piece_fn). */
static int raw_piece(void *ctx, size_t start, size_t end)
{
    const piece_sink *k = ctx;
    chars_merge(k->t, k->w, (const uint8_t *)k->s + start, (uint32_t)(end - start), k->out,
                k->n_out);
    return 0;
}

/* SPM and gemma4: escapes a fragment without special tokens (optional leading space, spaces to
 * U+2581), then merges it whole (SPM) or per newline / non-newline run (gemma4). */
static int encode_chars(const core_tokenizer *t, bpe_work *w, const char *s, size_t n, bool prefix,
                        int32_t *out, size_t *n_out)
{
    if (n == 0)
        return 0; /* llama.cpp gives an empty fragment nothing, not a lone U+2581 */
    size_t m = prefix;
    for (size_t i = 0; i < n; i++)
        m += s[i] == ' ';
    m = n + 2 * m + prefix;
    if (m > UINT32_MAX / 2 || work_reserve(w, m) < 0)
        return -ENOMEM;
    uint8_t *e = calloc(m + 1, 1);
    if (!e)
        return -ENOMEM;
    size_t k = 0;
    for (size_t i = 0; i < n + prefix; i++) {
        uint8_t b = i < prefix ? ' ' : (uint8_t)s[i - prefix];
        if (b == ' ') { /* U+2581 */
            e[k++] = 0xE2;
            e[k++] = 0x96;
            e[k++] = 0x81;
        } else {
            e[k++] = b;
        }
    }
    piece_sink sink = {t, w, (const char *)e, out, n_out};
    if (t->model == TOK_SPM)
        chars_merge(t, w, e, (uint32_t)k, out, n_out);
    else
        core__pretok_split((const char *)e, k, CORE__PRETOK_NEWLINES, raw_piece, &sink);
    free(e);
    return 0;
}

/* Encodes text between special tokens. Such a fragment always starts the text or follows a
 * special token, which is where llama.cpp gives SPM its prefix space. */
static int encode_fragment(const core_tokenizer *t, bpe_work *w, const char *s, size_t n,
                           int32_t *out, size_t *n_out)
{
    if (t->model == TOK_BPE)
        return encode_plain(t, w, s, n, out, n_out);
    return encode_chars(t, w, s, n, t->model == TOK_SPM && t->add_space_prefix, out, n_out);
}

int core_tokenize(const core_tokenizer *t, const char *text, size_t len, bool parse_special,
                  int32_t **out, size_t *n)
{
    /* BPE: every token covers at least one byte. SPM and gemma4: at most 3 byte tokens per
     * byte of text (a U+2581 without a token) and of each fragment's prefix space, and fragments
     * are at most one more than specials. */
    if (len > SIZE_MAX / sizeof(int32_t) / 8)
        return -ENOMEM;
    size_t cap = t->model != TOK_BPE ? 6 * len + 3 : len ? len : 1;
    int32_t *ids = malloc(cap * sizeof *ids);
    if (!ids)
        return -ENOMEM;
    bpe_work w = {0};
    size_t n_ids = 0, start = 0;
    int rc = 0;
    if (parse_special ? t->n_special : t->n_user) {
        for (size_t i = 0; i < len && rc == 0; i++) {
            int32_t id = match_special(t, text + i, len - i, parse_special);
            if (id < 0)
                continue;
            if (i > start)
                rc = encode_fragment(t, &w, text + start, i - start, ids, &n_ids);
            ids[n_ids++] = id;
            i += t->str_off[id + 1] - t->str_off[id] - 2;
            start = i + 1;
        }
    }
    if (rc == 0 && len > start)
        rc = encode_fragment(t, &w, text + start, len - start, ids, &n_ids);
    work_free(&w);
    if (rc < 0) {
        free(ids);
        return rc;
    }
    *out = ids;
    *n = n_ids;
    return 0;
}

/* --- decoding -------------------------------------------------------------------------- */

/* Hidden unless show_special: control tokens and the like, which carry no text. */
static bool is_hidden(const core_tokenizer *t, int32_t id)
{
    uint8_t ty = t->types[id];
    return ty == CORE_TOKEN_CONTROL || ty == CORE_TOKEN_UNKNOWN || ty == CORE_TOKEN_UNUSED;
}

/* The bytes token id stands for in output text (points into the tokenizer). */
static const uint8_t *token_bytes(const core_tokenizer *t, int32_t id, bool show_special, size_t *n)
{
    if (is_hidden(t, id)) {
        size_t len;
        const char *s = tok_str(t, id, &len);
        *n = show_special ? len : 0;
        return (const uint8_t *)s;
    }
    *n = t->byte_off[id + 1] - t->byte_off[id];
    return t->bytes + t->byte_off[id];
}

int core_token_to_bytes(const core_tokenizer *t, int32_t id, bool show_special, char *buf,
                        size_t cap)
{
    if (id < 0 || id >= t->n_vocab)
        return -EINVAL;
    size_t n;
    const uint8_t *b = token_bytes(t, id, show_special, &n);
    if (cap)
        memcpy(buf, b, n < cap ? n : cap);
    return (int)n;
}

int core_detokenize(const core_tokenizer *t, const int32_t *ids, size_t n, bool show_special,
                    char **out, size_t *len)
{
    size_t total = 0, len_i;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->n_vocab)
            return -EINVAL;
        token_bytes(t, ids[i], show_special, &len_i);
        total += len_i;
    }
    char *s = malloc(total + 1);
    if (!s)
        return -ENOMEM;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *b = token_bytes(t, ids[i], show_special, &len_i);
        if (i == 0 && t->model == TOK_SPM && t->add_space_prefix && len_i && b[0] == ' ') {
            b++; /* the prefix space encoding added */
            len_i--;
        }
        memcpy(s + k, b, len_i);
        k += len_i;
    }
    s[k] = '\0';
    *out = s;
    *len = k;
    return 0;
}

void core_detok_init(core_detok *d, const core_tokenizer *t, bool show_special)
{
    d->tok = t;
    d->show_special = show_special;
    d->n_pending = 0;
}

/* Appends bytes to the pending UTF-8 assembly, writing complete characters (or U+FFFD for each
 * maximal ill-formed subpart) to out when out is not NULL. Returns the number of bytes
 * produced; leaves at most 3 bytes (a valid incomplete prefix) pending. */
static size_t detok_feed(uint8_t *pending, int *n_pending, const uint8_t *b, size_t n, char *out)
{
    static const uint8_t fffd[3] = {0xEF, 0xBF, 0xBD};
    size_t k = 0, i = 0;
    int np = *n_pending;
    while (i < n || np > 0) {
        while (np < 4 && i < n)
            pending[np++] = b[i++];
        uint32_t cp;
        int r = core_utf8_check(pending, (size_t)np, &cp);
        int used;
        if (r == 0) {
            if (i == n)
                break; /* wait for more bytes */
            continue;
        } else if (r > 0) {
            if (out)
                memcpy(out + k, pending, (size_t)r);
            k += (size_t)r;
            used = r;
        } else {
            if (out)
                memcpy(out + k, fffd, 3);
            k += 3;
            used = -r;
        }
        memmove(pending, pending + used, (size_t)(np - used));
        np -= used;
    }
    *n_pending = np;
    return k;
}

int core_detok_push(core_detok *d, int32_t id, char *out, size_t cap)
{
    if (!d->tok || id < 0 || id >= d->tok->n_vocab || d->n_pending < 0 || d->n_pending > 3)
        return -EINVAL;
    size_t n;
    const uint8_t *b = token_bytes(d->tok, id, d->show_special, &n);
    /* measure first on a copy, so a full buffer leaves the decoder unchanged */
    uint8_t pend[8];
    int np = d->n_pending;
    memcpy(pend, d->pending, sizeof pend);
    size_t need = detok_feed(pend, &np, b, n, NULL);
    if (need >= cap || need > INT32_MAX)
        return -ENOSPC;
    size_t k = detok_feed(d->pending, &d->n_pending, b, n, out);
    out[k] = '\0';
    return (int)k;
}

int core_detok_flush(core_detok *d, char *out, size_t cap)
{
    if (d->n_pending < 0 || d->n_pending > 3)
        return -EINVAL;
    size_t k = 0;
    if (d->n_pending > 0) {
        if (cap < 4)
            return -ENOSPC;
        memcpy(out, "\xEF\xBF\xBD", 3);
        k = 3;
    } else if (cap < 1) {
        return -ENOSPC;
    }
    d->n_pending = 0;
    out[k] = '\0';
    return (int)k;
}
