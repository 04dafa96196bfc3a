/* Tests for server/gbnf.c: GBNF grammars compiled and matched against texts they describe and
 * texts they do not (core_grammar_matches, whole-text), code point classes checked against every
 * code point, repetition bounds counted, and each refusal's message and position. The
 * model-driven end (token masks, HTTP) is in the e2e suite structured. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/gbnf.h"
#include "tests/test.h"

/* text compiled, or NULL with the reason in err */
static core_grammar *compile(const char *text, char *err, size_t errlen)
{
    core_grammar *g = NULL;
    srv_gbnf_compile(text, strlen(text), &g, err, errlen);
    return g;
}

static void expect(const char *text, const char *const *yes, const char *const *no)
{
    char err[256];
    core_grammar *g = compile(text, err, sizeof err);
    CHECK_MSG(g != NULL, "%s: %s", text, err);
    for (; yes && *yes; yes++)
        CHECK_MSG(core_grammar_matches(g, *yes, strlen(*yes)), "%s\nshould match '%s'", text, *yes);
    for (; no && *no; no++)
        CHECK_MSG(!core_grammar_matches(g, *no, strlen(*no)), "%s\nshould not match '%s'", text,
                  *no);
    core_grammar_free(g);
}

static void refused(const char *text, int want, const char *msg)
{
    core_grammar *g = (core_grammar *)1;
    char err[256];
    int rc = srv_gbnf_compile(text, strlen(text), &g, err, sizeof err);
    CHECK_MSG(rc == want && !g, "%s: rc %d, want %d (%s)", text, rc, want, err);
    CHECK_MSG(strstr(err, msg) != NULL, "%s: message '%s' lacks '%s'", text, err, msg);
}

#define L(...) ((const char *const[]){__VA_ARGS__, NULL})

TEST(gbnf_literals_alternatives_groups)
{
    expect("root ::= \"yes\" | \"no\"", L("yes", "no"), L("", "yesno", "Yes", "n"));
    expect("root ::= \"a\" (\"b\" | \"c\") \"d\"  # a comment\n", L("abd", "acd"), L("ad", "abcd"));
    expect("root ::= greet \", \" name\nname ::= \"Ann\" | \"Bo\"\ngreet ::= \"hi\" | \"hello\"",
           L("hi, Ann", "hello, Bo"), L("hi,Ann", "hello, "));
    expect("root ::= \"\\n\\t\\\\\\\"\\x41\\u00e9\\U0001F600\\[\\]\"",
           L("\n\t\\\"A\xc3\xa9\xf0\x9f\x98\x80[]"), L("\n\t\\\"A\xe9"));
    expect("root ::= \"\xc3\xa9t\xc3\xa9\"", L("\xc3\xa9t\xc3\xa9"), L("ete"));
    expect("root ::= \"\" | \"x\"", L("", "x"), L("xx"));
    /* rules spread over lines: after ::=, after |, inside parentheses, a line starting with | */
    expect("# leading comment\n\nroot ::=\n  \"a\" (\n    \"b\"\n  | \"c\" # inner\n  )\n"
           "  | \"z\"\n\n\n",
           L("ab", "ac", "z"), L("a", "abz"));
    expect("root ::= \"x\" |\n  \"y\"\r\n", L("x", "y"), L("xy"));
}

TEST(gbnf_repetition)
{
    expect("root ::= \"a\"* \"b\"+ \"c\"?", L("b", "aab", "abbbc", "bc"), L("", "a", "c", "abcc"));
    expect("root ::= [0-9]{3}", L("123"), L("12", "1234"));
    expect("root ::= [0-9]{2,}", L("12", "123456789"), L("1"));
    expect("root ::= [0-9]{1,3}", L("1", "12", "123"), L("", "1234"));
    expect("root ::= [0-9]{0,2}", L("", "1", "12"), L("123"));
    expect("root ::= (\"ab\" | \"c\"){ 2 , 3 }", L("abc", "cab", "ccc", "ababab"), L("ab", "cccc"));
    expect("root ::= \"x\"{1000}", NULL, L("x"));
    char big[1001];
    memset(big, 'x', 1000);
    big[1000] = 0;
    expect("root ::= \"x\"{1000}", L(big), NULL);
    expect("root ::= \"a\"+?", L("", "a", "aa"), L("b"));
}

TEST(gbnf_json_grammar)
{
    static const char *json =
        "root   ::= object\n"
        "value  ::= object | array | string | number | (\"true\" | \"false\" | \"null\") ws\n"
        "object ::=\n"
        "  \"{\" ws (\n"
        "            string \":\" ws value\n"
        "    (\",\" ws string \":\" ws value)*\n"
        "  )? \"}\" ws\n"
        "array  ::=\n"
        "  \"[\" ws (\n"
        "            value\n"
        "    (\",\" ws value)*\n"
        "  )? \"]\" ws\n"
        "string ::=\n"
        "  \"\\\"\" (\n"
        "    [^\"\\\\\\x7F\\x00-\\x1F] |\n"
        "    \"\\\\\" ([\"\\\\/bfnrt] | \"u\" [0-9a-fA-F]{4}) # escapes\n"
        "  )* \"\\\"\" ws\n"
        "number ::= (\"-\"? ([0-9] | [1-9] [0-9]{0,15})) (\".\" [0-9]+)? ([eE] [-+]? [0-9]{1,3})? "
        "ws\n"
        "ws ::= | \" \" | \"\\n\" [ \\t]{0,20}\n";
    expect(json,
           L("{}", "{\"a\": 1}",
             "{\"a\": [1, 2.5e-3, {\"b\": null}], \"c\": \"x\\n\\u00e9\xc3\xa9\"}",
             "{\"k\": true}\n  ", "{\"\xf0\x9f\x98\x80\": false}"),
           L("", "[]", "{", "{\"a\"}", "{\"a\":01}", "{\"a\":1,}", "{'a':1}", "{\"a\":\"\x01\"}",
             "{\"a\":\"\xc3\"}", "{\"a\":\"\xed\xa0\x80\"}", "{\"a\":\"\xc0\x80\"}"));
}

/* Whether grammar g matches the UTF-8 encoding of code point cp alone. */
static bool matches_cp(const core_grammar *g, unsigned cp)
{
    char s[4];
    int n;
    if (cp < 0x80) {
        s[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        s[0] = (char)(0xC0 | cp >> 6);
        s[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        s[0] = (char)(0xE0 | cp >> 12);
        s[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        s[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        s[0] = (char)(0xF0 | cp >> 18);
        s[1] = (char)(0x80 | (cp >> 12 & 0x3F));
        s[2] = (char)(0x80 | (cp >> 6 & 0x3F));
        s[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    return core_grammar_matches(g, s, (size_t)n);
}

static bool in_ranges(unsigned cp, const unsigned (*r)[2], int n)
{
    for (int i = 0; i < n; i++)
        if (cp >= r[i][0] && cp <= r[i][1])
            return true;
    return false;
}

static bool next_to_bound(unsigned cp, const unsigned (*r)[2], int n)
{
    for (int i = 0; i < n; i++)
        for (int k = 0; k < 2; k++)
            if (cp + 64 >= r[i][k] && cp <= r[i][k] + 64)
                return true;
    return false;
}

/* Every code point (surrogates encoded as CESU bytes too, which nothing may match) against a
 * class and its negation. */
TEST(gbnf_classes_every_code_point)
{
    static const struct {
        const char *cls;
        unsigned r[4][2];
        int n;
    } cases[] = {
        {"[a-z]", {{'a', 'z'}}, 1},
        {"[\"\\\\]", {{'"', '"'}, {'\\', '\\'}}, 2},
        {"[\\x00-\\x1F\\u00e9-\\u0800\\uFFFF]", {{0, 0x1F}, {0xE9, 0x800}, {0xFFFF, 0xFFFF}}, 3},
        {"[\xce\xb1-\xcf\x89\\U0001F600-\\U0010FFFF]", {{0x3B1, 0x3C9}, {0x1F600, 0x10FFFF}}, 2},
        {"[\\uD7FF\\uE000-\\uE001\\u07FF-\\u0801\\U0000FFFF-\\U00010000]",
         {{0xD7FF, 0xD7FF}, {0xE000, 0xE001}, {0x7FF, 0x801}, {0xFFFF, 0x10000}},
         4},
    };
    long checked = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[160];
        for (int neg = 0; neg < 2; neg++) {
            snprintf(text, sizeof text, "root ::= [%s%s", neg ? "^" : "", cases[i].cls + 1);
            char err[256];
            core_grammar *g = compile(text, err, sizeof err);
            CHECK_MSG(g != NULL, "%s: %s", text, err);
            int bad = 0;
            /* every code point below U+20000, then every 61st and those within 64 of a bound */
            for (unsigned cp = 0; cp <= 0x10FFFF && bad < 5;
                 cp += cp < 0x20000 || next_to_bound(cp, cases[i].r, cases[i].n) ? 1 : 61) {
                bool surrogate = cp >= 0xD800 && cp <= 0xDFFF;
                bool in = in_ranges(cp, cases[i].r, cases[i].n);
                bool want = !surrogate && (neg ? !in && cp != 0 : in);
                checked++;
                if (matches_cp(g, cp) != want) {
                    bad++;
                    CHECK_MSG(0, "%s: U+%04X %s", text, cp, want ? "refused" : "matched");
                }
            }
            CHECK_MSG(!core_grammar_matches(g, "\xc0\x80", 2) &&
                          !core_grammar_matches(g, "\xe0\x80\x80", 3) &&
                          !core_grammar_matches(g, "\xf4\x90\x80\x80", 4),
                      "%s: an overlong or out-of-range encoding matched", text);
            core_grammar_free(g);
        }
    }
    printf("    %ld code points checked against 10 classes (all below U+20000, the rest every 61st "
           "and at the bounds)\n",
           checked);
    expect("root ::= .+", L("a", "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", "\n"),
           L("", "\xc3", "\xed\xa0\x80", "\x80"));
    expect("root ::= [^]", L("x", "\xf4\x8f\xbf\xbf"), L("", "xy"));
    expect("root ::= [a-]  [-a]  [\\-\\]]", L("a-]", "--]", "-a-"), L("b-]"));
}

TEST(gbnf_recursion_that_reads_first)
{
    expect("root ::= \"(\" root \")\" | \"x\"", L("x", "(x)", "(((x)))"), L("(x", "()"));
    expect("root ::= expr\nexpr ::= term (\"+\" term)*\nterm ::= [0-9]+ | \"(\" expr \")\"",
           L("1", "1+2", "(1+2)+3", "((4))"), L("1+", "+1", "(1"));
}

TEST(gbnf_refusals_say_what_and_where)
{
    refused("", -EINVAL, "no rule named 'root'");
    refused("# only a comment\n", -EINVAL, "no rule named 'root'");
    refused("main ::= \"x\"", -EINVAL, "no rule named 'root'");
    refused("root ::= digit", -EINVAL, "line 1, column 10: rule 'digit' is used but not defined");
    refused("root ::= \"a\"\nroot ::= \"b\"", -EINVAL,
            "line 2, column 1: rule 'root' is defined twice");
    refused("root = \"a\"", -EINVAL, "line 1, column 6: expected '::=' after the rule name 'root'");
    refused("root ::= \"a", -EINVAL, "line 1, column 10: unterminated literal");
    refused("root ::= [a-", -EINVAL, "unterminated class");
    refused("root ::= [z-a]", -EINVAL, "line 1, column 11: a range whose end is before its start");
    refused("root ::= []", -EINVAL, "the class matches no character");
    refused("root ::= [\\uD800]", -EINVAL, "not a Unicode scalar value");
    refused("root ::= \"\\U00110000\"", -EINVAL, "not a Unicode scalar value");
    refused("root ::= \"\\q\"", -EINVAL, "unknown escape '\\q'");
    refused("root ::= \"\\x4\"", -EINVAL, "expected 2 hexadecimal digits");
    refused("root ::= (\"a\"", -EINVAL, "line 1, column 10: unclosed '('");
    refused("root ::= \"a\")", -EINVAL, "line 1, column 13: expected the end of the line");
    refused("root ::= * \"a\"", -EINVAL, "expected a literal, class, rule name or group, got '*'");
    refused("root ::= \"a\"{2,1}", -EINVAL, "whose maximum is below its minimum");
    refused("root ::= \"a\"{1001}", -EINVAL, "a repetition bound over 1000");
    refused("root ::= \"a\"{,3}", -EINVAL, "expected {m}, {m,} or {m,n}");
    refused("root ::= \"a\"{x}", -EINVAL, "expected {m}, {m,} or {m,n}");
    refused("root ::= <think> \"a\"", -EINVAL, "token references (<...>) are not supported");
    refused("root ::= \"\xc3\x28\"", -EINVAL, "line 1, column 11: invalid UTF-8");
    refused("root ::= \"a\" b ::= \"c\"", -EINVAL, "got ':'");
    refused("\n\n  root ::= \"a\"\n  x ::=  \x01", -EINVAL,
            "line 4, column 10: expected a literal, "
            "class, rule name or group, got byte 0x01");
    /* left recursion: direct, indirect, behind a rule that may be empty, inside a group */
    refused("root ::= root \"a\" | \"b\"", -EINVAL, "rule 'root' is left-recursive");
    refused("root ::= a\na ::= b \"x\" | \"y\"\nb ::= a \"z\"", -EINVAL, "is left-recursive");
    refused("root ::= opt root \"a\" | \"b\"\nopt ::= \"o\"?", -EINVAL,
            "line 1, column 1: rule 'root' is left-recursive");
    refused("root ::= \"x\" e\ne ::= (e \"+\")? \"1\"", -EINVAL, "rule 'e' is left-recursive");
    refused("root ::= (\"a\"?)*", -EINVAL, "rule 'root' is left-recursive");
    /* ambiguity: 40 rules that each match the empty text two ways, in a row (2^40 ways) */
    char amb[400] = "root ::= ";
    for (int i = 0; i < 40; i++)
        strcat(amb, "e ");
    strcat(amb, "\"x\"\ne ::= \"\" | \"a\"?");
    refused(amb, -EINVAL, "too ambiguous");
    /* matches nothing: every way needs itself */
    refused("root ::= \"a\" root", -EINVAL, "the grammar matches nothing");
    char deep[200] = "root ::= ";
    for (int i = 0; i < SRV_GBNF_DEPTH_MAX + 1; i++)
        strcat(deep, "(");
    refused(deep, -EINVAL, "parentheses nested over 64 deep");
}

TEST(gbnf_size_limit_and_many_rules)
{
    /* 30000 rules chained backwards (each defined before the one it uses is): the name table, the
     * left-recursion pass and the matcher all take it */
    size_t cap = 30000 * 40, n = 0;
    char *t = malloc(cap);
    CHECK(t != NULL);
    if (!t)
        return;
    n += (size_t)snprintf(t + n, cap - n, "root ::= r1\n");
    for (int i = 1; i < 30000; i++)
        n += (size_t)snprintf(t + n, cap - n, "r%d ::= r%d | \"%d\"\n", i, i + 1, i % 10);
    n += (size_t)snprintf(t + n, cap - n, "r30000 ::= \"end\"\n");
    core_grammar *g = NULL;
    char err[256];
    int rc = srv_gbnf_compile(t, n, &g, err, sizeof err);
    CHECK_MSG(rc == 0, "%s", err);
    CHECK(g && core_grammar_matches(g, "7", 1) && !core_grammar_matches(g, "end", 3));
    core_grammar_free(g);
    /* a cycle of 30000 rules through the first element of each */
    n = (size_t)snprintf(t, cap, "root ::= r1\n");
    for (int i = 1; i < 30000; i++)
        n += (size_t)snprintf(t + n, cap - n, "r%d ::= r%d \"a\" | \"b\"\n", i, i + 1);
    n += (size_t)snprintf(t + n, cap - n, "r30000 ::= r1 \"c\"\n");
    rc = srv_gbnf_compile(t, n, &g, err, sizeof err);
    CHECK_MSG(rc == -EINVAL && strstr(err, "left-recursive"), "rc %d: %s", rc, err);
    free(t);
    /* one element per literal byte: a literal over CORE_GRAMMAR_ELEMS_MAX bytes */
    size_t big = CORE_GRAMMAR_ELEMS_MAX + 16;
    char *lit = malloc(big + 32);
    CHECK(lit != NULL);
    if (lit) {
        n = (size_t)snprintf(lit, 32, "root ::= \"");
        memset(lit + n, 'x', big);
        memcpy(lit + n + big, "\"", 2);
        refused(lit, -E2BIG, "the grammar is too large");
        free(lit);
    }
    /* nested repetition shares its rules: ("x"{1000}){1000} is two thousand elements */
    expect("root ::= (\"x\"{1000}){1000}", NULL, L("x"));
}

/* A state holds at most CORE_GRAMMAR_STACKS_MAX stacks: literal alternatives are a trie, so 1024
 * of them are fine; 300 alternatives that are not plain literals are refused, not cut. */
TEST(gbnf_wide_alternatives)
{
    size_t cap = 1024 * 24, n = 0;
    char *t = malloc(cap);
    CHECK(t != NULL);
    if (!t)
        return;
    n += (size_t)snprintf(t, cap, "root ::= \"city: \" (");
    for (int i = 0; i < 1024; i++)
        n += (size_t)snprintf(t + n, cap - n, "%s\"c%d\"\n", i ? " | " : "", i * 7);
    snprintf(t + n, cap - n, ") \".\"\n");
    char err[256];
    core_grammar *g = compile(t, err, sizeof err);
    CHECK_MSG(g != NULL, "%s", err);
    int ok = 0;
    for (int i = 0; g && i < 1024 * 7; i++) {
        char s[32];
        int k = snprintf(s, sizeof s, "city: c%d.", i);
        ok += core_grammar_matches(g, s, (size_t)k) == (i % 7 == 0);
    }
    CHECK_EQ_INT(ok, 1024 * 7);
    core_grammar_free(g);
    n = (size_t)snprintf(t, cap, "root ::= ");
    for (int i = 0; i < 300; i++)
        n += (size_t)snprintf(t + n, cap - n, "%s\"n%d\" [0-9]", i ? " | " : "", i);
    refused(t, -EINVAL, "too ambiguous to follow: more than 256 ways open at once");
    free(t);
}

/* A class of 700 scattered CJK characters: its UTF-8 sequences are factored by their leading
 * bytes, so the matcher holds a stack per lead byte, not per character (over
 * CORE_GRAMMAR_STACKS_MAX). */
TEST(gbnf_wide_class)
{
    char *t = malloc(700 * 4 + 64);
    CHECK(t != NULL);
    if (!t)
        return;
    size_t n = (size_t)sprintf(t, "root ::= [");
    for (unsigned i = 0; i < 700; i++) {
        unsigned cp = 0x4E00 + i * 29;
        t[n++] = (char)(0xE0 | cp >> 12);
        t[n++] = (char)(0x80 | (cp >> 6 & 0x3F));
        t[n++] = (char)(0x80 | (cp & 0x3F));
    }
    strcpy(t + n, "]+");
    char err[256];
    core_grammar *g = compile(t, err, sizeof err);
    CHECK_MSG(g != NULL, "%s", err);
    int ok = 0;
    for (unsigned cp = 0x4E00; g && cp < 0x4E00 + 700 * 29; cp++) {
        char s[6] = {(char)(0xE0 | cp >> 12),
                     (char)(0x80 | (cp >> 6 & 0x3F)),
                     (char)(0x80 | (cp & 0x3F)),
                     (char)0xE4,
                     (char)0xB8,
                     (char)0x80};
        ok += core_grammar_matches(g, s, 6) == ((cp - 0x4E00) % 29 == 0);
    }
    CHECK_EQ_INT(ok, 700 * 29);
    core_grammar_free(g);
    free(t);
}
