/* UTF-8: the checker and encoder the tokenizer, its pre-tokenizers and the grammar compilers
 * share. Pure; any thread. */
#ifndef ADAPTREE_CORE_TEXT_UTF8_H
#define ADAPTREE_CORE_TEXT_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* Checks the UTF-8 sequence that starts at s[0] (n bytes available, n >= 1). Returns its length
 * (1..4) and sets *cp when it is a complete well-formed character; 0 when the n bytes are a
 * valid but incomplete prefix of one; or minus the length of the maximal ill-formed subpart
 * (Unicode §3.9: the bytes that a decoder replaces by one U+FFFD) when it can never be valid. */
int core_utf8_check(const uint8_t *s, size_t n, uint32_t *cp);

/* Encodes cp (<= U+10FFFF) as UTF-8 into out (4 bytes of room); returns the length. */
int core_utf8_encode(uint32_t cp, uint8_t *out);

#endif
