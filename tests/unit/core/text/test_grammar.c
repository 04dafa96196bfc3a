/* Tests for core/text/grammar.c: the pushdown matcher on small grammars (alternatives, nesting,
 * right recursion kept flat, left recursion cut and found, ambiguity bounded), and token masks over
 * the real SmolLM2 vocabulary checked token by token against core_gmatch_allows, with EOS only when
 * accepting. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base.h"
#include "core/model/model.h"
#include "core/text/grammar.h"
#include "tests/shared_model.h"
#include "tests/test.h"

static void set1(core_gbuild *b, int r, unsigned lo, unsigned hi)
{
    core_gset s = {{0}};
    core_gset_add(&s, lo, hi);
    core_gbuild_set(b, r, &s);
}

/* root ::= "(" root ")" root | ε  (balanced parentheses) */
static core_grammar *parens(void)
{
    core_gbuild *b = core_gbuild_new();
    int r = core_gbuild_rule(b);
    core_gbuild_alt(b, r);
    core_gbuild_lit(b, r, "(", 1);
    core_gbuild_ref(b, r, r);
    core_gbuild_lit(b, r, ")", 1);
    core_gbuild_ref(b, r, r);
    core_gbuild_alt(b, r);
    char err[128];
    core_grammar *g = core_gbuild_finish(b, r, err, sizeof err);
    core_gbuild_free(b);
    return g;
}

TEST(grammar_matches_nested_and_recursive)
{
    core_grammar *g = parens();
    CHECK(g != NULL);
    static const char *yes[] = {"", "()", "(())()", "((()())())"};
    static const char *no[] = {"(", ")", "())", "(()", "x"};
    for (size_t i = 0; i < sizeof yes / sizeof *yes; i++)
        CHECK_MSG(core_grammar_matches(g, yes[i], strlen(yes[i])), "%s", yes[i]);
    for (size_t i = 0; i < sizeof no / sizeof *no; i++)
        CHECK_MSG(!core_grammar_matches(g, no[i], strlen(no[i])), "%s", no[i]);
    /* nesting deeper than CORE_GRAMMAR_DEPTH_MAX dies (the stack would overflow) */
    char deep[2 * 300 + 1];
    for (int i = 0; i < 300; i++) {
        deep[i] = '(';
        deep[300 + i] = ')';
    }
    CHECK(!core_grammar_matches(g, deep, 600));
    core_grammar_free(g);
}

TEST(grammar_right_recursion_stays_flat)
{
    /* digits ::= [0-9] digits | [0-9]: 100000 digits would need 100000 frames without tail
     * calls */
    core_gbuild *b = core_gbuild_new();
    int r = core_gbuild_rule(b);
    core_gbuild_alt(b, r);
    set1(b, r, '0', '9');
    core_gbuild_ref(b, r, r);
    core_gbuild_alt(b, r);
    set1(b, r, '0', '9');
    char err[128];
    core_grammar *g = core_gbuild_finish(b, r, err, sizeof err);
    core_gbuild_free(b);
    size_t n = 100000;
    char *t = malloc(n);
    memset(t, '7', n);
    CHECK(core_grammar_matches(g, t, n));
    t[n - 1] = 'x';
    CHECK(!core_grammar_matches(g, t, n));
    free(t);
    core_grammar_free(g);
}

TEST(grammar_left_recursion_is_not_viable)
{
    core_gbuild *b = core_gbuild_new();
    int r = core_gbuild_rule(b);
    core_gbuild_alt(b, r);
    core_gbuild_ref(b, r, r);
    core_gbuild_lit(b, r, "a", 1);
    char err[128];
    core_grammar *g = core_gbuild_finish(b, r, err, sizeof err);
    CHECK(g && !core_grammar_viable(g));
    core_grammar_free(g);
    /* builder errors stick and are reported by finish */
    CHECK_EQ_INT(core_gbuild_ref(b, r, 99), -EINVAL);
    CHECK(core_gbuild_finish(b, r, err, sizeof err) == NULL);
    CHECK_MSG(strstr(err, "bad rule reference") != NULL, "%s", err);
    core_gbuild_free(b);
    b = core_gbuild_new();
    core_gbuild_rule(b);
    CHECK(core_gbuild_finish(b, 0, err, sizeof err) == NULL);
    CHECK_MSG(strstr(err, "no alternative") != NULL, "%s", err);
    core_gbuild_free(b);
}

/* root ::= "{\"name\": \"" [a-z ]* "\", \"n\": " [0-9]+ "}" */
static core_grammar *record(void)
{
    core_gbuild *b = core_gbuild_new();
    int root = core_gbuild_rule(b), str = core_gbuild_rule(b), num = core_gbuild_rule(b);
    core_gbuild_alt(b, str);
    core_gbuild_alt(b, str);
    core_gset s = {{0}};
    core_gset_add(&s, 'a', 'z');
    core_gset_add(&s, ' ', ' ');
    core_gbuild_set(b, str, &s);
    core_gbuild_ref(b, str, str);
    core_gbuild_alt(b, num);
    set1(b, num, '0', '9');
    core_gbuild_alt(b, num);
    set1(b, num, '0', '9');
    core_gbuild_ref(b, num, num);
    core_gbuild_alt(b, root);
    const char *a = "{\"name\": \"", *c = "\", \"n\": ";
    core_gbuild_lit(b, root, a, strlen(a));
    core_gbuild_ref(b, root, str);
    core_gbuild_lit(b, root, c, strlen(c));
    core_gbuild_ref(b, root, num);
    core_gbuild_lit(b, root, "}", 1);
    char err[128];
    core_grammar *g = core_gbuild_finish(b, root, err, sizeof err);
    core_gbuild_free(b);
    return g;
}

TEST(grammar_masks_agree_with_allows_on_the_real_vocab)
{
    TEST_NEED_MODEL();
    core_model *m = test_shared_model();
    char err[256];
    core_tokenizer *t = core_tokenizer_new(m->gguf, err, sizeof err);
    CHECK_MSG(t != NULL, "%s", err);
    double t0 = core_now();
    core_gvocab *v = core_gvocab_new(t, err, sizeof err);
    double t_vocab = core_now() - t0;
    CHECK_MSG(v != NULL, "%s", err);
    core_grammar *g = record();
    core_gmatch *gm = core_gmatch_new(g, v, err, sizeof err);
    CHECK_MSG(gm != NULL, "%s", err);
    int32_t n = core_gvocab_n_vocab(v), eos = core_tokenizer_eos(t);
    uint64_t *bits = malloc(((size_t)n + 63) / 64 * sizeof *bits);
    /* walk a valid text token by token (the tokenizer's own split), checking the mask at each */
    const char *text = "{\"name\": \"ada lovelace\", \"n\": 1815}";
    int32_t *ids = NULL;
    size_t n_ids = 0;
    CHECK_EQ_INT(core_tokenize(t, text, strlen(text), false, &ids, &n_ids), 0);
    double t_mask = 0, t_cached = 0;
    int masks = 0;
    for (size_t i = 0; i <= n_ids; i++) {
        t0 = core_now();
        int32_t count = core_gmatch_mask(gm, bits);
        t_mask += core_now() - t0;
        t0 = core_now();
        CHECK_EQ_INT(core_gmatch_mask(gm, bits), count); /* the same state again: cached */
        t_cached += core_now() - t0;
        masks++;
        int32_t seen = 0, bad = -1;
        for (int32_t id = 0; id < n; id++) {
            bool in = (bits[id >> 6] >> (id & 63)) & 1;
            seen += in;
            if (in != core_gmatch_allows(gm, id) && bad < 0)
                bad = id;
        }
        CHECK_MSG(bad < 0, "step %zu: token %d mask and allows disagree", i, bad);
        CHECK_EQ_INT(seen, count);
        bool eos_in = (bits[eos >> 6] >> (eos & 63)) & 1;
        CHECK_EQ_INT(eos_in, i == n_ids);
        if (i < n_ids) {
            CHECK_MSG((bits[ids[i] >> 6] >> (ids[i] & 63)) & 1, "step %zu: token %d masked", i,
                      ids[i]);
            CHECK_EQ_INT(core_gmatch_accept(gm, ids[i]), 0);
        }
    }
    CHECK(core_gmatch_accepting(gm) && core_gmatch_done(gm));
    CHECK_EQ_INT(core_gmatch_accept(gm, eos), 0);
    /* a token that cannot continue is refused and changes nothing */
    core_gmatch *fresh = core_gmatch_new(g, v, err, sizeof err);
    CHECK_EQ_INT(core_gmatch_accept(fresh, eos), -EINVAL);
    CHECK_EQ_INT(core_gmatch_accept(fresh, ids[n_ids - 1]), -EINVAL); /* "}" first */
    CHECK_EQ_INT(core_gmatch_accept(fresh, ids[0]), 0);
    uint64_t computed, cached;
    core_gmatch_counts(gm, &computed, &cached);
    printf("    vocab %d tokens sorted in %.1f ms; %d masks: %.3f ms each computed, %.4f ms "
           "cached (%llu computed, %llu cached)\n",
           n, t_vocab * 1e3, masks, t_mask / masks * 1e3, t_cached / masks * 1e3,
           (unsigned long long)computed, (unsigned long long)cached);
    free(ids);
    free(bits);
    core_gmatch_free(fresh);
    core_gmatch_free(gm);
    core_grammar_free(g);
    core_gvocab_free(v);
    core_tokenizer_free(t);
}

/* root ::= pre e e ... e (k times) "y";  e ::= ε | ε  -- 2^k ways to derive the empty text
 * between pre and "y" */
static core_grammar *ambiguous(const char *pre, int k)
{
    core_gbuild *b = core_gbuild_new();
    int root = core_gbuild_rule(b), e = core_gbuild_rule(b);
    core_gbuild_alt(b, e);
    core_gbuild_alt(b, e);
    core_gbuild_alt(b, root);
    core_gbuild_lit(b, root, pre, strlen(pre));
    for (int i = 0; i < k; i++)
        core_gbuild_ref(b, root, e);
    core_gbuild_lit(b, root, "y", 1);
    char err[128];
    core_grammar *g = core_gbuild_finish(b, root, err, sizeof err);
    core_gbuild_free(b);
    return g;
}

TEST(grammar_ambiguity_is_bounded)
{
    TEST_NEED_MODEL();
    core_grammar *g = ambiguous("", 8); /* 256 ways: well within the bound */
    CHECK(g && core_grammar_start(g) == 1 && core_grammar_matches(g, "y", 1));
    core_grammar_free(g);
    g = ambiguous("", 48);
    CHECK(g && core_grammar_start(g) == -E2BIG && !core_grammar_viable(g));
    core_grammar_free(g);
    /* the start is fine, the blow-up comes after "x": the mask fails fast with -E2BIG */
    core_model *m = test_shared_model();
    char err[256];
    core_tokenizer *t = core_tokenizer_new(m->gguf, err, sizeof err);
    core_gvocab *v = t ? core_gvocab_new(t, err, sizeof err) : NULL;
    CHECK_MSG(v != NULL, "%s", err);
    g = ambiguous("x", 48);
    CHECK(g && core_grammar_start(g) == 1);
    core_gmatch *gm = core_gmatch_new(g, v, err, sizeof err);
    CHECK_MSG(gm != NULL, "%s", err);
    uint64_t *bits = malloc(((size_t)core_gvocab_n_vocab(v) + 63) / 64 * sizeof *bits);
    double t0 = core_now();
    int32_t count = core_gmatch_mask(gm, bits);
    double dt = core_now() - t0;
    CHECK_EQ_INT(count, -E2BIG);
    CHECK_EQ_INT(core_gmatch_error(gm), -E2BIG);
    CHECK_MSG(dt < 2.0, "the failing mask took %.2f s", dt);
    printf("    2^48 derivations of the empty text: the mask fails after %.1f ms\n", dt * 1e3);
    free(bits);
    core_gmatch_free(gm);
    core_grammar_free(g);
    core_gvocab_free(v);
    core_tokenizer_free(t);
}

TEST(grammar_left_recursion_and_productivity_found)
{
    /* 0 ::= 1 "a" | "b";  1 ::= 2;  2 ::= ε | 0   -- 0 reaches itself through nullable 2 */
    core_gbuild *b = core_gbuild_new();
    int r0 = core_gbuild_rule(b), r1 = core_gbuild_rule(b), r2 = core_gbuild_rule(b);
    core_gbuild_alt(b, r0);
    core_gbuild_ref(b, r0, r1);
    core_gbuild_lit(b, r0, "a", 1);
    core_gbuild_alt(b, r0);
    core_gbuild_lit(b, r0, "b", 1);
    core_gbuild_alt(b, r1);
    core_gbuild_ref(b, r1, r2);
    core_gbuild_alt(b, r2);
    core_gbuild_alt(b, r2);
    core_gbuild_ref(b, r2, r0);
    int lr = core_gbuild_left_recursive(b);
    CHECK_MSG(lr >= 0 && lr <= 2, "left recursion at %d", lr);
    CHECK_EQ_INT(core_gbuild_productive(b, r0), 1);
    core_gbuild_free(b);
    /* 0 ::= "(" 0 ")" | 1 1 "x";  1 ::= ε   -- recursion after a byte: none; 3 ::= "a" 3 never ends
     */
    b = core_gbuild_new();
    r0 = core_gbuild_rule(b);
    r1 = core_gbuild_rule(b);
    int r3 = core_gbuild_rule(b);
    core_gbuild_alt(b, r0);
    core_gbuild_lit(b, r0, "(", 1);
    core_gbuild_ref(b, r0, r0);
    core_gbuild_lit(b, r0, ")", 1);
    core_gbuild_alt(b, r0);
    core_gbuild_ref(b, r0, r1);
    core_gbuild_ref(b, r0, r1);
    core_gbuild_lit(b, r0, "x", 1);
    core_gbuild_alt(b, r1);
    core_gbuild_alt(b, r3);
    core_gbuild_lit(b, r3, "a", 1);
    core_gbuild_ref(b, r3, r3);
    CHECK_EQ_INT(core_gbuild_left_recursive(b), -1);
    CHECK_EQ_INT(core_gbuild_productive(b, r0), 1);
    CHECK_EQ_INT(core_gbuild_productive(b, r3), 0);
    core_gbuild_free(b);
}
