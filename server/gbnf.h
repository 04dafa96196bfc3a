/* GBNF grammars (llama.cpp's grammar format: the "grammar" field of its server, and what vLLM's
 * "guided_grammar" takes with its xgrammar backend) compiled into the byte grammar the sampler
 * masks tokens with (core/text/grammar.h).
 *
 *   root   ::= answer "\n"            # a rule: name ::= alternatives; '#' starts a comment
 *   answer ::= "yes" | "no" | digit+ ("." digit+)?
 *   digit  ::= [0-9]
 *
 *   name      [A-Za-z0-9_-]+; the text starts at the rule "root"; rules may be used before they
 *             are defined and are defined once
 *   "..."     a literal; escapes \n \r \t \\ \" \[ \] \xHH \uHHHH \UHHHHHHHH (code points) and a
 *             backslash before any other ASCII punctuation
 *   [...]     one character of a class: characters and ranges a-z; [^...] any character but those
 *   .         any character
 *   ( ) |     grouping and alternatives; * + ? {m} {m,} {m,n} repeat what precedes (n <= 1000)
 *
 * A rule ends at the end of its line, except inside parentheses, after "::=" or '|', or when the
 * next line starts with '|'. Characters are Unicode code points, matched as their UTF-8 bytes;
 * '.' and negated classes match any code point but NUL and the surrogates.
 *
 * Refused with the line and column of the cause: syntax errors, a rule used but not defined or
 * defined twice, no "root", left recursion (a rule that can reach itself before reading a
 * character: expr ::= expr "+" term), token references (<...>), classes that match nothing,
 * nesting over 64 parentheses, a grammar that matches nothing, one over CORE_GRAMMAR_ELEMS_MAX
 * elements, and one whose start is too ambiguous to follow (over CORE_GRAMMAR_STACKS_MAX ways
 * open at once, or the empty text derived in too many ways). Alternatives that are each one
 * literal ("Paris" | "Lyon" | ...) are written as a trie and a class's UTF-8 sequences are
 * factored by their leading bytes, so any number of either is fine; ambiguity that shows only
 * later ends the sequence with an error (core_gmatch_error).
 * A chain of more than 255 rule references entered before reading a character is cut.
 *
 * Thread-safety: pure; any thread.
 */
#ifndef ADAPTREE_SERVER_GBNF_H
#define ADAPTREE_SERVER_GBNF_H

#include <stddef.h>

#include "core/text/grammar.h"

#define SRV_GBNF_REPEAT_MAX 1000 /* largest bound in {m,n} */
#define SRV_GBNF_DEPTH_MAX 64    /* nested parentheses */

/* Compiles the n bytes of text into *out. 0, or -EINVAL with the reason and where in err
 * ("line 3, column 12: undefined rule 'digits'"), -E2BIG (too large), -ENOMEM. */
int srv_gbnf_compile(const char *text, size_t n, core_grammar **out, char *err, size_t errlen);

#endif
