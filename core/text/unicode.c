/* UTF-8 decoding, code-point classes and the GPT-2 / smollm pre-tokenizer split.
 *
 * The pre-tokenizer is a hand-written matcher for the GPT-2 regex (see unicode.h) with the
 * leftmost-first alternation and backtracking semantics of the regex engines Hugging Face and
 * llama.cpp use. It works one piece at a time from a byte offset, so it needs no allocation.
 */
#include "core/text/unicode_internal.h"

#include <stdbool.h>

int core__unicode_class(uint32_t cp)
{
    if (cp < 256)
        return core__unicode_latin1[cp];
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

int core__utf8_check(const uint8_t *s, size_t n, uint32_t *cp)
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

int core__utf8_encode(uint32_t cp, uint8_t *out)
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
        int k = core__utf8_check(s + pos, len - pos, &cp);
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

size_t core__pretok_next(const char *text, size_t len, size_t pos, enum core__pretok pre)
{
    const uint8_t *s = (const uint8_t *)text;
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
