/* Constrained decoding: a context-free grammar over bytes, a matcher that follows one sequence's
 * output through it, and the token mask that says which tokens may come next.
 *
 * The grammar is built with core_gbuild (server/json_schema.c compiles a JSON Schema into one):
 * rules are alternatives of sequences whose elements are byte sets or references to rules.
 * Recursion is allowed, left recursion is not (its expansion is cut at CORE_GRAMMAR_DEPTH_MAX,
 * which leaves that branch dead).
 *
 * The matcher is a nondeterministic pushdown automaton: its state is a set of stacks of grammar
 * positions, each stack's top a byte set (a "ready" stack) or nothing (the whole input matched:
 * accepting). Feeding a byte keeps the stacks whose top set contains it, advances them and
 * expands rule references and rule ends until every top is a byte set again; references at the
 * end of an alternative are tail calls, so repetition by right recursion does not grow a stack.
 *
 * The token mask walks the vocabulary sorted by bytes (core_gvocab): a token shares its first
 * lcp bytes with the one before it, so the states after those bytes are reused and only the
 * rest is fed; a prefix no stack survives rules out every later token that starts with it. The
 * cost is the size of the live part of the vocabulary's byte trie, not n_vocab × length. Masks
 * are kept per matcher state (a small LRU), so the states a structure returns to (inside a
 * string, after a comma) cost a copy of the bitmap the second time. End-of-generation tokens are
 * allowed exactly when the state is accepting; control tokens (no bytes) never are.
 *
 * Thread-safety: a core_grammar and a core_gvocab are immutable once made and may be shared by
 * any threads; a core_gmatch belongs to one sequence (one thread at a time).
 */
#ifndef ADAPTREE_CORE_TEXT_GRAMMAR_H
#define ADAPTREE_CORE_TEXT_GRAMMAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/text/tokenizer.h"

#define CORE_GRAMMAR_DEPTH_MAX 128    /* frames on one stack */
#define CORE_GRAMMAR_STACKS_MAX 256   /* stacks in one state (more: the matcher fails, -E2BIG) */
#define CORE_GRAMMAR_ELEMS_MAX 400000 /* elements in one grammar (a compiled schema's size) */

/* --- building ------------------------------------------------------------------------------- */

typedef struct core_gbuild core_gbuild;
typedef struct core_grammar core_grammar;

/* A 256-bit byte set. */
typedef struct core_gset {
    uint64_t w[4];
} core_gset;

static inline void core_gset_add(core_gset *s, unsigned lo, unsigned hi)
{
    for (unsigned c = lo; c <= hi && c < 256; c++)
        s->w[c >> 6] |= 1ULL << (c & 63);
}

static inline bool core_gset_has(const core_gset *s, unsigned c)
{
    return (s->w[(c >> 6) & 3] >> (c & 63)) & 1;
}

/* A new, empty builder, or NULL (no memory). */
core_gbuild *core_gbuild_new(void);
void core_gbuild_free(core_gbuild *b);

/* A new rule with no alternative yet; returns its id (>= 0) or -ENOMEM / -E2BIG. Rules may be
 * referenced before their alternatives are written. */
int core_gbuild_rule(core_gbuild *b);
/* Starts a new (empty) alternative of rule r; the appends below go to it. An empty alternative
 * matches nothing (ε). */
int core_gbuild_alt(core_gbuild *b, int r);
/* Appends to rule r's current alternative: one byte from set s; a reference to rule sub; the
 * bytes of lit as a sequence. 0, or -ENOMEM / -E2BIG (over CORE_GRAMMAR_ELEMS_MAX) / -EINVAL
 * (a rule id not made by this builder, or r without a started alternative). An error sticks:
 * later calls and core_gbuild_finish return it. */
int core_gbuild_set(core_gbuild *b, int r, const core_gset *s);
int core_gbuild_ref(core_gbuild *b, int r, int sub);
int core_gbuild_lit(core_gbuild *b, int r, const char *lit, size_t n);
/* A new rule matching x repeated min..max times (max < 0: no limit), written by right recursion
 * (x* is star ::= ε | x star) so a match does not grow the stack; its id, or a negative error as
 * core_gbuild_rule. */
int core_gbuild_repeat(core_gbuild *b, int x, long min, long max);
/* A new rule matching exactly one of the n >= 1 byte strings s[i] (lengths len[i]; repeats
 * allowed), written as a trie: alternatives factored by their common prefixes, so a state holds
 * one stack per distinct next byte however many strings there are (a rule of n plain
 * alternatives needs n, and CORE_GRAMMAR_STACKS_MAX bounds them). Its id, or a negative error as
 * core_gbuild_rule (-EINVAL for n < 1). */
int core_gbuild_one_of(core_gbuild *b, const char *const *s, const size_t *len, size_t n);
/* Number of elements so far (for size limits in compilers). */
size_t core_gbuild_size(const core_gbuild *b);
/* Number of rules so far (the next rule's id). */
size_t core_gbuild_rules(const core_gbuild *b);

/* A rule on a left-recursive cycle (one that can reach itself before reading a byte: r ::= r "a",
 * or through rules that match the empty string), or -1 when there is none; -ENOMEM. Matching cuts
 * such branches, so compilers of grammars users write refuse them with this. Linear in the size. */
int core_gbuild_left_recursive(const core_gbuild *b);

/* 1 when rule root matches some (finite) text, 0 when every way through it needs itself again
 * (root ::= "a" root), -ENOMEM. Linear in the size. */
int core_gbuild_productive(const core_gbuild *b, int root);

/* Makes the grammar whose start is rule root; the builder is left as it was (free it). NULL with
 * a message in err for an error that stuck, a rule without alternatives, or no memory. */
core_grammar *core_gbuild_finish(core_gbuild *b, int root, char *err, size_t errlen);

/* Grammars are shared by reference (a request's choices, its jobs): ref adds one and returns g;
 * free drops one and frees at zero. NULL is ignored. Any thread. */
core_grammar *core_grammar_ref(core_grammar *g);
void core_grammar_free(core_grammar *g);

/* Whether any input can start a match (false when every path is cut: left recursion). */
bool core_grammar_viable(const core_grammar *g);
/* The same with the reason: 1 viable, 0 not, -E2BIG when the start state passes the matcher's
 * bounds (see core_gmatch_error), -ENOMEM. */
int core_grammar_start(const core_grammar *g);

/* Whether the grammar matches the whole of text[0..n) (for tests and tools). */
bool core_grammar_matches(const core_grammar *g, const char *text, size_t n);

/* --- the vocabulary ----------------------------------------------------------------------------
 */

typedef struct core_gvocab core_gvocab;

/* The tokenizer's tokens as bytes, sorted, for masks. NULL with a message in err. Takes about a
 * millisecond per 10k tokens; make one per tokenizer and share it. */
core_gvocab *core_gvocab_new(const core_tokenizer *t, char *err, size_t errlen);
void core_gvocab_free(core_gvocab *v);
int32_t core_gvocab_n_vocab(const core_gvocab *v);

/* --- matching ----------------------------------------------------------------------------------
 */

typedef struct core_gmatch core_gmatch;

/* A matcher at the start of g's root, masking v's tokens; g and v must outlive it. NULL with a
 * message in err. */
core_gmatch *core_gmatch_new(const core_grammar *g, const core_gvocab *v, char *err, size_t errlen);
void core_gmatch_free(core_gmatch *m);

/* Whether the bytes seen so far are a complete match (an end-of-generation token may come). */
bool core_gmatch_accepting(const core_gmatch *m);
/* Whether no byte can come next: the match is complete and cannot grow (stop here). */
bool core_gmatch_done(const core_gmatch *m);

/* Whether token id may come next: its bytes continue a match, or it ends generation and the
 * state is accepting. Costs the token's length. */
bool core_gmatch_allows(core_gmatch *m, int32_t id);

/* Sets bit id of bits (n_vocab bits, (n_vocab + 63) / 64 words) for every token that may come
 * next, clears the others; returns how many are set (0: nothing can follow, a dead end), or
 * -ENOMEM / -E2BIG (core_gmatch_error). */
int32_t core_gmatch_mask(core_gmatch *m, uint64_t *bits);

/* Advances past token id. 0, or -EINVAL when the token may not come next (the state is
 * unchanged), -ENOMEM / -E2BIG (core_gmatch_error). An end-of-generation token is accepted when the
 * state is accepting and changes nothing. */
int core_gmatch_accept(core_gmatch *m, int32_t id);

/* Why the matcher failed: 0 (it has not), -ENOMEM, or -E2BIG when a state needed more than
 * CORE_GRAMMAR_STACKS_MAX stacks, or one byte's expansion, or one mask or token, passed the
 * matcher's work bounds (a grammar that derives the empty text in exponentially many ways); the
 * matcher stays failed. core_gmatch_mask returns the same. */
int core_gmatch_error(const core_gmatch *m);
/* The same as a phrase for messages ("the grammar is too ambiguous to follow (...)", "out of
 * memory"), or NULL when the matcher has not failed. */
const char *core_gmatch_failure(const core_gmatch *m);

/* Masks computed and masks found in the cache (statistics, for benchmarks). */
void core_gmatch_counts(const core_gmatch *m, uint64_t *computed, uint64_t *cached);

#endif
