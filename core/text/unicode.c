/* UTF-8 decoding, code-point classes and the pre-tokenizer splits (GPT-2 / smollm, and the
 * GPT-4-style family of Llama 3, Qwen2 and Qwen3.5).
 *
 * Each pre-tokenizer is a hand-written matcher for its regex (see unicode_internal.h) with the
 * leftmost-first alternation and backtracking semantics of the regex engines Hugging Face and
 * llama.cpp use. It works one piece at a time from a byte offset, so it needs no allocation.
 */
#include "core/text/unicode_internal.h"

#include <stdbool.h>
#include <string.h>

int core__unicode_class(uint32_t cp)
{
    int c = core__unicode_class_full(cp);
    return c == CORE__UCAT_MARK || c == CORE__UCAT_PUNCT ? CORE__UCAT_OTHER : c;
}

int core__unicode_class_full(uint32_t cp)
{
    if (cp < 256)
        return core__unicode_latin1_full[cp];
    size_t lo = 0, hi = core__unicode_n_ranges;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const core__urange *r = &core__unicode_ranges[mid];
        if (cp < r->lo)
            hi = mid;
        else if (cp > r->hi)
            lo = mid + 1;
        else
            return r->cat;
    }
    return CORE__UCAT_OTHER;
}

int core_utf8_check(const uint8_t *s, size_t n, uint32_t *cp)
{
    uint8_t b0 = s[0];
    int need;
    uint8_t lo2 = 0x80, hi2 = 0xBF; /* allowed range of the second byte (Unicode table 3-7) */
    uint32_t v;
    if (b0 < 0x80) {
        *cp = b0;
        return 1;
    } else if (b0 < 0xC2) {
        return -1;
    } else if (b0 < 0xE0) {
        need = 2;
        v = b0 & 0x1F;
    } else if (b0 < 0xF0) {
        need = 3;
        v = b0 & 0x0F;
        if (b0 == 0xE0)
            lo2 = 0xA0; /* overlong */
        else if (b0 == 0xED)
            hi2 = 0x9F; /* surrogates */
    } else if (b0 < 0xF5) {
        need = 4;
        v = b0 & 0x07;
        if (b0 == 0xF0)
            lo2 = 0x90; /* overlong */
        else if (b0 == 0xF4)
            hi2 = 0x8F; /* past U+10FFFF */
    } else {
        return -1;
    }
    for (int i = 1; i < need; i++) {
        if ((size_t)i >= n)
            return 0;
        uint8_t b = s[i];
        uint8_t lo = i == 1 ? lo2 : 0x80, hi = i == 1 ? hi2 : 0xBF;
        if (b < lo || b > hi)
            return -i;
        v = (v << 6) | (b & 0x3F);
    }
    *cp = v;
    return need;
}

int core_utf8_encode(uint32_t cp, uint8_t *out)
{
    if (cp < 0x80) {
        out[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xC0 | (cp >> 6));
        out[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xE0 | (cp >> 12));
        out[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (uint8_t)(0xF0 | (cp >> 18));
    out[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

/* The end of the regex's input, as a class. */
#define CLS_END (-1)

/* Class of the code point at pos and its length in *n. An ill-formed or truncated sequence is
 * one "other" code point per byte. In smollm mode numbers were already cut out, so a number
 * ends the stretch the regex sees, exactly like the end of the text. */
static int class_at(const uint8_t *s, size_t len, size_t pos, bool smollm, size_t *n)
{
    int c;
    if (pos >= len) {
        *n = 0;
        return CLS_END;
    }
    if (s[pos] < 0x80) {
        *n = 1;
        c = core__unicode_latin1[s[pos]];
    } else {
        uint32_t cp;
        int k = core_utf8_check(s + pos, len - pos, &cp);
        if (k > 0) {
            *n = (size_t)k;
            c = core__unicode_class(cp);
        } else {
            *n = 1;
            c = CORE__UCAT_OTHER;
        }
    }
    return smollm && c == CORE__UCAT_NUMBER ? CLS_END : c;
}

/* 's 't 're 've 'm 'll 'd (case-sensitive): the length of the one at pos, or 0. */
static size_t contraction_len(const uint8_t *s, size_t len, size_t pos)
{
    if (s[pos] != '\'' || pos + 1 >= len)
        return 0;
    uint8_t a = s[pos + 1];
    if (a == 's' || a == 't' || a == 'm' || a == 'd')
        return 2;
    if (pos + 2 >= len)
        return 0;
    uint8_t b = s[pos + 2];
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
        return 3;
    return 0;
}

static size_t gpt2_next(const uint8_t *s, size_t len, size_t pos, enum core__pretok pre)
{
    bool smollm = pre == CORE__PRETOK_SMOLLM;
    size_t n;
    int c = class_at(s, len, pos, smollm, &n);
    if (c == CLS_END) /* smollm: a number is a piece of its own (pos < len) */
        return pos + n;
    size_t k = contraction_len(s, len, pos);
    if (k)
        return pos + k;

    /* ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+': one optional U+0020, then a run of one
     * class (a run of "other" stops at spaces, letters and numbers alike). */
    size_t p = pos;
    if (s[pos] == ' ') {
        size_t n1;
        int c1 = class_at(s, len, pos + 1, smollm, &n1);
        if (c1 == CORE__UCAT_LETTER || c1 == CORE__UCAT_NUMBER || c1 == CORE__UCAT_OTHER) {
            p = pos + 1;
            c = c1;
            n = n1;
        }
    }
    if (c != CORE__UCAT_SPACE) {
        int ci;
        do {
            p += n;
            ci = class_at(s, len, p, smollm, &n);
        } while (ci == c);
        return p;
    }

    /* '\s+(?!\S)|\s+': the whole run if the text ends after it; before anything else, all but
     * its last code point (which the next piece may take as its ' ?'), unless that leaves
     * nothing, in which case the single space is a piece. */
    size_t last = pos;
    int count = 0;
    for (;;) {
        int ci = class_at(s, len, p, smollm, &n);
        if (ci == CLS_END)
            return p;
        if (ci != CORE__UCAT_SPACE)
            break;
        last = p;
        p += n;
        count++;
    }
    return count > 1 ? last : p;
}

/* --- the GPT-4-style family (llama3, qwen2, qwen35) ------------------------------------------ */

/* Class of the code point at pos and its length in *n (CLS_END at the end); marks are their own
 * class only with marks, and an ill-formed byte is one "other" code point. */
static int class4_at(const uint8_t *s, size_t len, size_t pos, bool marks, size_t *n)
{
    if (pos >= len) {
        *n = 0;
        return CLS_END;
    }
    if (s[pos] < 0x80) {
        *n = 1;
        return core__unicode_latin1[s[pos]];
    }
    uint32_t cp;
    int k = core_utf8_check(s + pos, len - pos, &cp);
    if (k <= 0) {
        *n = 1;
        return CORE__UCAT_OTHER;
    }
    *n = (size_t)k;
    int c = core__unicode_class_full(cp);
    if (c == CORE__UCAT_PUNCT || (c == CORE__UCAT_MARK && !marks))
        return CORE__UCAT_OTHER;
    return c;
}

static bool is_crlf(const uint8_t *s, size_t len, size_t pos)
{
    return pos < len && (s[pos] == '\r' || s[pos] == '\n');
}

/* (?i:'s|'t|'re|'ve|'m|'ll|'d): the length of the one at pos, or 0. */
static size_t contraction_len_ci(const uint8_t *s, size_t len, size_t pos)
{
    if (s[pos] != '\'' || pos + 1 >= len)
        return 0;
    uint8_t a = s[pos + 1] | 0x20, b = pos + 2 < len ? s[pos + 2] | 0x20 : 0;
    if (a == 's' || a == 't' || a == 'm' || a == 'd')
        return 2;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
        return 3;
    return 0;
}

/* The end of the run of code points of class c (LETTER also takes marks when marks) from pos. */
static size_t run_end(const uint8_t *s, size_t len, size_t pos, int c, bool marks)
{
    size_t n;
    for (;;) {
        int ci = class4_at(s, len, pos, marks, &n);
        if (ci != c && !(c == CORE__UCAT_LETTER && ci == CORE__UCAT_MARK))
            return pos;
        pos += n;
    }
}

/* '\s*[\r\n]+|\s+(?!\S)|\s+' on the whitespace run at pos: up to its last CR/LF if it has one;
 * else the whole run at the end of the text, all but its last code point before anything else
 * (which the next piece may take as its prefix), or the lone code point. */
static size_t space_run_end(const uint8_t *s, size_t len, size_t pos)
{
    size_t p = pos, last = pos, n, after_nl = 0;
    int count = 0;
    while (class4_at(s, len, p, false, &n) == CORE__UCAT_SPACE) {
        if (is_crlf(s, len, p))
            after_nl = p + 1;
        last = p;
        p += n;
        count++;
    }
    if (after_nl)
        return after_nl;
    if (p >= len || count == 1)
        return p;
    return last;
}

static size_t gpt4_next(const uint8_t *s, size_t len, size_t pos, int max_digits, bool marks)
{
    size_t k = contraction_len_ci(s, len, pos);
    if (k)
        return pos + k;
    size_t n0, n1;
    int c0 = class4_at(s, len, pos, marks, &n0);
    /* [^\r\n\p{L}\p{N}]?\p{L}+ (a mark counts as a letter with marks) */
    if (c0 == CORE__UCAT_LETTER || c0 == CORE__UCAT_MARK)
        return run_end(s, len, pos, CORE__UCAT_LETTER, marks);
    int c1 = class4_at(s, len, pos + n0, marks, &n1);
    if (c0 != CORE__UCAT_NUMBER && !is_crlf(s, len, pos) &&
        (c1 == CORE__UCAT_LETTER || c1 == CORE__UCAT_MARK))
        return run_end(s, len, pos + n0, CORE__UCAT_LETTER, marks);
    /* \p{N}{1,max_digits} */
    if (c0 == CORE__UCAT_NUMBER) {
        size_t p = pos + n0;
        for (int i = 1; i < max_digits && class4_at(s, len, p, marks, &n1) == CORE__UCAT_NUMBER;
             i++)
            p += n1;
        return p;
    }
    /*  ?[^\s\p{L}\p{N}]+[\r\n]* */
    size_t p = pos;
    if (s[pos] == ' ' && c1 == CORE__UCAT_OTHER)
        p = pos + n0;
    else if (c0 != CORE__UCAT_OTHER)
        return space_run_end(s, len, pos);
    p = run_end(s, len, p, CORE__UCAT_OTHER, marks);
    while (is_crlf(s, len, p))
        p++;
    return p;
}

size_t core__pretok_next(const char *text, size_t len, size_t pos, enum core__pretok pre)
{
    const uint8_t *s = (const uint8_t *)text;
    switch (pre) {
    case CORE__PRETOK_LLAMA3:
        return gpt4_next(s, len, pos, 3, false);
    case CORE__PRETOK_QWEN2:
        return gpt4_next(s, len, pos, 1, false);
    case CORE__PRETOK_QWEN35:
        return gpt4_next(s, len, pos, 1, true);
    case CORE__PRETOK_NEWLINES: {
        bool nl = s[pos] == '\n';
        while (++pos < len && (s[pos] == '\n') == nl)
            ;
        return pos;
    }
    default:
        return gpt2_next(s, len, pos, pre);
    }
}

/* --- sequences of patterns (falcon, deepseek-coder) ------------------------------------------ */

/* A pattern of a sequence: the end of its match at pos within s[0..len), or pos for none. */
typedef size_t (*stage_fn)(const uint8_t *s, size_t len, size_t pos);

/* The code point at pos: its full class (punctuation and marks apart), value and length. An
 * ill-formed byte is one "other" code point. */
static int cp_at(const uint8_t *s, size_t len, size_t pos, uint32_t *cp, size_t *n)
{
    if (pos >= len) {
        *n = 0;
        return CLS_END;
    }
    int k = core_utf8_check(s + pos, len - pos, cp);
    if (k <= 0) {
        *cp = s[pos];
        *n = 1;
        return CORE__UCAT_OTHER;
    }
    *n = (size_t)k;
    return *cp < 256 ? core__unicode_latin1_full[*cp] : core__unicode_class_full(*cp);
}

/* The end of the run of code points at pos that in_set accepts. */
static size_t run_while(const uint8_t *s, size_t len, size_t pos, bool (*in_set)(int, uint32_t))
{
    uint32_t cp;
    size_t n;
    for (;;) {
        int c = cp_at(s, len, pos, &cp, &n);
        if (c == CLS_END || !in_set(c, cp))
            return pos;
        pos += n;
    }
}

static bool is_falcon_punct(int c, uint32_t cp)
{
    return c == CORE__UCAT_PUNCT || (cp != 0 && cp < 0x80 && strchr("$+<=>^~|`", (int)cp));
}

static bool is_letter(int c, uint32_t cp)
{
    (void)cp;
    return c == CORE__UCAT_LETTER;
}

static bool is_punct(int c, uint32_t cp)
{
    (void)cp;
    return c == CORE__UCAT_PUNCT;
}

static bool is_deepseek_cjk(int c, uint32_t cp)
{
    (void)c;
    return (cp >= 0x0800 && cp <= 0x9FA5) || (cp >= 0xAC00 && cp <= 0xD7FF);
}

/* [\p{P}$+<=>^~|`]+ */
static size_t falcon_punct(const uint8_t *s, size_t len, size_t pos)
{
    return run_while(s, len, pos, is_falcon_punct);
}

static size_t gpt2_stage(const uint8_t *s, size_t len, size_t pos)
{
    return gpt2_next(s, len, pos, CORE__PRETOK_GPT2);
}

/* [0-9][0-9][0-9] */
static size_t three_digits(const uint8_t *s, size_t len, size_t pos)
{
    for (size_t i = 0; i < 3; i++)
        if (pos + i >= len || s[pos + i] < '0' || s[pos + i] > '9')
            return pos;
    return pos + 3;
}

/* [\r\n] */
static size_t one_crlf(const uint8_t *s, size_t len, size_t pos)
{
    return is_crlf(s, len, pos) ? pos + 1 : pos;
}

/* \s?X+ for the class set in_set (without the space when only that way X+ matches). */
static size_t space_opt_run(const uint8_t *s, size_t len, size_t pos, bool (*in_set)(int, uint32_t))
{
    uint32_t cp;
    size_t n;
    if (cp_at(s, len, pos, &cp, &n) == CORE__UCAT_SPACE) {
        size_t e = run_while(s, len, pos + n, in_set);
        if (e > pos + n)
            return e;
    }
    return run_while(s, len, pos, in_set);
}

static size_t space_letters(const uint8_t *s, size_t len, size_t pos)
{
    return space_opt_run(s, len, pos, is_letter);
}

static size_t space_puncts(const uint8_t *s, size_t len, size_t pos)
{
    return space_opt_run(s, len, pos, is_punct);
}

static size_t deepseek_cjk(const uint8_t *s, size_t len, size_t pos)
{
    return run_while(s, len, pos, is_deepseek_cjk);
}

/* DeepSeek LLM's letter class: the explicit ranges of its tokenizer.json pattern (the cased
 * letters of Latin, Greek, Cyrillic, Armenian, Georgian, Cherokee, Glagolitic, Coptic, fullwidth
 * Latin, Deseret, Osage, Old Hungarian, Warang Citi, Adlam, and letterlike symbols). */
static const uint32_t deepseek_letters[][2] = {
    {0x0041, 0x005A},   {0x0061, 0x007A},   {0x00B5, 0x00B5},   {0x00C0, 0x00D6},
    {0x00D8, 0x00F6},   {0x00F8, 0x01BA},   {0x01BC, 0x01BF},   {0x01C4, 0x0293},
    {0x0295, 0x02AF},   {0x0370, 0x0373},   {0x0376, 0x0377},   {0x037B, 0x037D},
    {0x037F, 0x037F},   {0x0386, 0x0386},   {0x0388, 0x038A},   {0x038C, 0x038C},
    {0x038E, 0x03A1},   {0x03A3, 0x03F5},   {0x03F7, 0x0481},   {0x048A, 0x052F},
    {0x0531, 0x0556},   {0x10A0, 0x10C5},   {0x13A0, 0x13F5},   {0x13F8, 0x13FD},
    {0x1C90, 0x1CBA},   {0x1CBD, 0x1CBF},   {0x1D00, 0x1D2B},   {0x1D6B, 0x1D77},
    {0x1D79, 0x1D9A},   {0x1E00, 0x1F15},   {0x1F18, 0x1F1D},   {0x1F20, 0x1F45},
    {0x1F48, 0x1F4D},   {0x1F50, 0x1F57},   {0x1F59, 0x1F59},   {0x1F5B, 0x1F5B},
    {0x1F5D, 0x1F5D},   {0x1F5F, 0x1F7D},   {0x1F80, 0x1FB4},   {0x1FB6, 0x1FBC},
    {0x1FBE, 0x1FBE},   {0x1FC2, 0x1FC4},   {0x1FC6, 0x1FCC},   {0x1FD0, 0x1FD3},
    {0x1FD6, 0x1FDB},   {0x1FE0, 0x1FEC},   {0x1FF2, 0x1FF4},   {0x1FF6, 0x1FFC},
    {0x2102, 0x2102},   {0x2107, 0x2107},   {0x210A, 0x2113},   {0x2115, 0x2115},
    {0x2119, 0x211D},   {0x2124, 0x2124},   {0x2126, 0x2126},   {0x2128, 0x2128},
    {0x212A, 0x212D},   {0x212F, 0x2134},   {0x2139, 0x2139},   {0x213C, 0x213F},
    {0x2145, 0x2149},   {0x214E, 0x214E},   {0x2183, 0x2184},   {0x2C00, 0x2C7B},
    {0x2C7E, 0x2CE4},   {0x2CEB, 0x2CEE},   {0x2CF2, 0x2CF3},   {0xA640, 0xA66D},
    {0xA680, 0xA69B},   {0xA722, 0xA76F},   {0xA771, 0xA787},   {0xA78B, 0xA78E},
    {0xAB70, 0xABBF},   {0xFB00, 0xFB06},   {0xFB13, 0xFB17},   {0xFF21, 0xFF3A},
    {0xFF41, 0xFF5A},   {0x10400, 0x1044F}, {0x104B0, 0x104D3}, {0x104D8, 0x104FB},
    {0x10C80, 0x10CB2}, {0x10CC0, 0x10CF2}, {0x118A0, 0x118DF}, {0x1E900, 0x1E943},
};

static bool is_deepseek_letter(int c, uint32_t cp)
{
    (void)c;
    size_t lo = 0, hi = sizeof deepseek_letters / sizeof deepseek_letters[0];
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cp < deepseek_letters[mid][0])
            hi = mid;
        else if (cp > deepseek_letters[mid][1])
            lo = mid + 1;
        else
            return true;
    }
    return false;
}

/* [!-/:-~\uFF01-\uFF0F\uFF1A-\uFF5E\u2018-\u201F\u3000-\u3002] */
static bool is_deepseek_punct(int c, uint32_t cp)
{
    (void)c;
    return (cp >= 0x21 && cp <= 0x2F) || (cp >= 0x3A && cp <= 0x7E) ||
           (cp >= 0xFF01 && cp <= 0xFF0F) || (cp >= 0xFF1A && cp <= 0xFF5E) ||
           (cp >= 0x2018 && cp <= 0x201F) || (cp >= 0x3000 && cp <= 0x3002);
}

static bool is_space(int c, uint32_t cp)
{
    (void)cp;
    return c == CORE__UCAT_SPACE;
}

static bool is_number(int c, uint32_t cp)
{
    (void)cp;
    return c == CORE__UCAT_NUMBER;
}

static size_t deepseek_words(const uint8_t *s, size_t len, size_t pos)
{
    return space_opt_run(s, len, pos, is_deepseek_letter);
}

static size_t deepseek_puncts(const uint8_t *s, size_t len, size_t pos)
{
    return space_opt_run(s, len, pos, is_deepseek_punct);
}

/* \s+$ (up to the end of the piece) */
static size_t trailing_spaces(const uint8_t *s, size_t len, size_t pos)
{
    size_t e = run_while(s, len, pos, is_space);
    return e > pos && e == len ? len : pos;
}

/* \p{N}+ */
static size_t numbers(const uint8_t *s, size_t len, size_t pos)
{
    return run_while(s, len, pos, is_number);
}

/* \p{N} */
static size_t one_number(const uint8_t *s, size_t len, size_t pos)
{
    uint32_t cp;
    size_t n;
    return cp_at(s, len, pos, &cp, &n) == CORE__UCAT_NUMBER ? pos + n : pos;
}

typedef struct cascade {
    const uint8_t *s;
    const stage_fn *stages;
    int n_stages;
    core__piece_fn fn;
    void *ctx;
} cascade;

/* Splits s[a..b) by stage k into its matches and the text between them, each split further by
 * the stages after k; the last stage's pieces go to fn. */
static int cascade_split(const cascade *c, int k, size_t a, size_t b)
{
    if (k == c->n_stages)
        return c->fn(c->ctx, a, b);
    size_t gap = a, p = a;
    int rc = 0;
    while (p < b && rc == 0) {
        size_t e = c->stages[k](c->s, b, p);
        if (e == p) {
            uint32_t cp;
            size_t n;
            cp_at(c->s, b, p, &cp, &n);
            p += n;
            continue;
        }
        if (gap < p)
            rc = cascade_split(c, k + 1, gap, p);
        if (rc == 0)
            rc = cascade_split(c, k + 1, p, e);
        p = gap = e;
    }
    if (rc == 0 && gap < b)
        rc = cascade_split(c, k + 1, gap, b);
    return rc;
}

int core__pretok_split(const char *text, size_t len, enum core__pretok pre, core__piece_fn fn,
                       void *ctx)
{
    static const stage_fn falcon[] = {falcon_punct, gpt2_stage, three_digits};
    static const stage_fn deepseek_coder[] = {one_crlf, space_letters, space_puncts, deepseek_cjk,
                                              one_number};
    static const stage_fn deepseek_llm[] = {one_crlf,        deepseek_words, deepseek_puncts,
                                            trailing_spaces, deepseek_cjk,   numbers};
    cascade c = {(const uint8_t *)text, NULL, 0, fn, ctx};
    if (pre == CORE__PRETOK_FALCON) {
        c.stages = falcon;
        c.n_stages = 3;
    } else if (pre == CORE__PRETOK_DEEPSEEK_CODER) {
        c.stages = deepseek_coder;
        c.n_stages = 5;
    } else if (pre == CORE__PRETOK_DEEPSEEK_LLM) {
        c.stages = deepseek_llm;
        c.n_stages = 6;
    } else {
        for (size_t pos = 0, end; pos < len; pos = end) {
            end = core__pretok_next(text, len, pos, pre);
            int rc = fn(ctx, pos, end);
            if (rc < 0)
                return rc;
        }
        return 0;
    }
    return cascade_split(&c, 0, 0, len);
}
