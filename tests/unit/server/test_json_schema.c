/* Tests for server/json_schema.c: each supported keyword compiled and matched against JSON texts
 * that validate and that do not (core_grammar_matches, whole-text), the refusals naming the
 * keyword, and regular expressions. The model-driven end (masks, tokens) is in test_grammar.c and
 * the e2e suite structured, where Python's jsonschema validates what the server generated. */
#include <cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "server/json_schema.h"
#include "tests/test.h"

/* Compiles schema text and checks every text in yes matches and every text in no does not. */
static void expect(const char *schema, const char *const *yes, const char *const *no)
{
    cJSON *s = schema ? cJSON_Parse(schema) : NULL;
    CHECK_MSG(!schema || s, "schema does not parse: %s", schema);
    core_grammar *g = NULL;
    char err[256];
    int rc = srv_schema_compile(s, &g, err, sizeof err);
    CHECK_MSG(rc == 0, "%s: %s", schema ? schema : "(json_object)", err);
    for (; g && yes && *yes; yes++)
        CHECK_MSG(core_grammar_matches(g, *yes, strlen(*yes)), "%s should match %s", schema, *yes);
    for (; g && no && *no; no++)
        CHECK_MSG(!core_grammar_matches(g, *no, strlen(*no)), "%s should not match %s", schema,
                  *no);
    core_grammar_free(g);
    cJSON_Delete(s);
}

static void refused(const char *schema, const char *msg)
{
    cJSON *s = cJSON_Parse(schema);
    core_grammar *g = (core_grammar *)1;
    char err[256];
    int rc = srv_schema_compile(s, &g, err, sizeof err);
    CHECK_MSG(rc < 0 && !g, "%s compiled", schema);
    CHECK_MSG(strstr(err, msg) != NULL, "%s: message '%s' lacks '%s'", schema, err, msg);
    cJSON_Delete(s);
}

#define L(...) ((const char *const[]){__VA_ARGS__, NULL})

TEST(schema_json_object_mode)
{
    expect(NULL,
           L("{}", "{\"a\": 1}", "{\"a\":[1,2,{\"b\":null}],\"c\":\"x\\n\\u00e9\xc3\xa9\"}",
             "{\n  \"k\": true\n}", "{\"n\": -0.5e+10}"),
           L("", "[]", "1", "\"s\"", "{", "{\"a\"}", "{\"a\":01}", "{\"a\":1,}", "{'a':1}",
             "{\"a\":\"\x01\"}", "{\"a\":\"\xc3\"}", "{\"a\":\"\xed\xa0\x80\"}", "{} "));
}

TEST(schema_scalars)
{
    expect("{\"type\":\"string\"}", L("\"\"", "\"abc\"", "\"\\\"q\\\\\""), L("abc", "1", "\"a"));
    expect("{\"type\":\"boolean\"}", L("true", "false"), L("1", "True", "null"));
    expect("{\"type\":\"null\"}", L("null"), L("0", "\"null\""));
    expect("{\"type\":\"integer\"}", L("0", "-7", "1234567890123456"),
           L("1.0", "01", "-", "12345678901234567", "1e3"));
    expect("{\"type\":\"number\"}", L("0", "-7.25", "1e-3", "6.02E+23"), L(".5", "1.", "--1"));
    expect("{\"type\":[\"string\",\"null\"]}", L("null", "\"x\""), L("1"));
    expect("{}", L("1", "\"a\"", "[true]", "{\"x\":{}}"), L("", "tru"));
    expect("true", L("null"), NULL);
}

TEST(schema_enum_const)
{
    expect("{\"enum\":[\"red\",\"green\",3,null,{\"a\":[1]}]}",
           L("\"red\"", "\"green\"", "3", "null", "{\"a\":[1]}"), L("\"blue\"", "\"re\"", "4"));
    expect("{\"type\":\"string\",\"const\":\"fixed \\\"value\\\"\"}", L("\"fixed \\\"value\\\"\""),
           L("\"fixed\""));
}

TEST(schema_string_lengths)
{
    expect("{\"type\":\"string\",\"minLength\":2,\"maxLength\":3}",
           L("\"ab\"", "\"abc\"", "\"\\n\\t\"", "\"\xc3\xa9\xc3\xa9\"", "\"a\\u0041\""),
           L("\"a\"", "\"abcd\"", "\"\""));
    expect("{\"type\":\"string\",\"minLength\":1}", L("\"a\"", "\"abcdefgh\""), L("\"\""));
}

TEST(schema_string_pattern_and_format)
{
    expect("{\"type\":\"string\",\"pattern\":\"^[A-Z]{2}-\\\\d{3}$\"}", L("\"AB-123\""),
           L("\"AB-12\"", "\"ab-123\"", "\"XAB-123\""));
    expect("{\"type\":\"string\",\"pattern\":\"cat|dog\"}", /* unanchored: contains */
           L("\"cat\"", "\"hotdog!\""), L("\"cow\""));
    expect("{\"type\":\"string\",\"pattern\":\"^(ab)+c?$\"}", L("\"ab\"", "\"ababc\""),
           L("\"\"", "\"abcc\"", "\"aba\""));
    expect("{\"type\":\"string\",\"pattern\":\"^[^a-z\\\"]*$\"}", L("\"AB 1\"", "\"\xc3\xa9\""),
           L("\"a\"", "\"\\\"\""));
    expect("{\"type\":\"string\",\"pattern\":\"^a\\\"b\\\\\\\\c$\"}", L("\"a\\\"b\\\\c\""),
           L("\"a\"b\\c\""));
    expect("{\"type\":\"string\",\"format\":\"date\"}", L("\"2026-12-07\""),
           L("\"2026-13-01\"", "\"26-12-07\""));
    expect("{\"type\":\"string\",\"format\":\"uuid\"}",
           L("\"123e4567-e89b-12d3-a456-426614174000\""), L("\"123e4567\""));
    expect("{\"type\":\"string\",\"format\":\"date-time\"}",
           L("\"2026-12-07T10:20:30Z\"", "\"2026-12-07T10:20:30.5+01:00\""),
           L("\"2026-12-07 10:20:30Z\""));
}

TEST(schema_integer_ranges)
{
    expect("{\"type\":\"integer\",\"minimum\":-15,\"maximum\":120}",
           L("-15", "-9", "-1", "0", "7", "10", "99", "100", "119", "120"),
           L("-16", "-20", "121", "200", "1000", "-0", "007"));
    expect("{\"type\":\"integer\",\"exclusiveMinimum\":0,\"exclusiveMaximum\":10}", L("1", "9"),
           L("0", "10"));
    expect("{\"type\":\"integer\",\"minimum\":1000}", L("1000", "99999", "1234567"),
           L("999", "0", "-5"));
    expect("{\"type\":\"integer\",\"maximum\":-3}", L("-3", "-1000"), L("-2", "0", "5"));
    expect("{\"type\":\"integer\",\"minimum\":37,\"maximum\":37}", L("37"), L("36", "38"));
    /* every value in a range, and its neighbours */
    cJSON *s = cJSON_Parse("{\"type\":\"integer\",\"minimum\":-123,\"maximum\":4567}");
    core_grammar *g;
    char err[128], t[16];
    CHECK_EQ_INT(srv_schema_compile(s, &g, err, sizeof err), 0);
    for (int v = -200; v <= 5000; v++) {
        int n = snprintf(t, sizeof t, "%d", v);
        if (core_grammar_matches(g, t, (size_t)n) != (v >= -123 && v <= 4567)) {
            CHECK_MSG(0, "integer %d", v);
            break;
        }
    }
    core_grammar_free(g);
    cJSON_Delete(s);
}

TEST(schema_number_ranges)
{
    expect("{\"type\":\"number\",\"minimum\":0,\"maximum\":1}", L("0", "0.5", "1", "1.0", "0.999"),
           L("1.5", "-0.5", "2", "1.01"));
    expect("{\"type\":\"number\",\"minimum\":-2,\"maximum\":3}",
           L("-2", "-1.5", "-0.25", "0", "2.75", "3.00"), L("-2.5", "3.1", "-3"));
    expect("{\"type\":\"number\",\"minimum\":-5,\"maximum\":-1}", L("-5", "-1.5", "-1.0"),
           L("-0.5", "0", "-5.5"));
}

TEST(schema_objects)
{
    const char *sch = "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"},"
                      "\"age\":{\"type\":\"integer\"},\"tags\":{\"type\":\"array\",\"items\":"
                      "{\"type\":\"string\"},\"maxItems\":2}},\"required\":[\"name\",\"tags\"],"
                      "\"additionalProperties\":false}";
    expect(sch,
           L("{\"name\":\"a\",\"tags\":[]}", "{\"name\":\"a\",\"age\":3,\"tags\":[\"x\",\"y\"]}",
             "{ \"name\" : \"a\" , \"tags\" : [ \"x\" ] }"),
           L("{\"name\":\"a\"}", "{\"tags\":[],\"name\":\"a\"}",
             "{\"name\":\"a\",\"tags\":[\"x\",\"y\",\"z\"]}", "{\"name\":\"a\",\"tags\":[],}",
             "{\"name\":\"a\",\"extra\":1,\"tags\":[]}"));
    expect("{\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":{\"type\":\"integer\"}}}",
           L("{}", "{\"a\":1}", "{\"b\":2}", "{\"a\":1,\"b\":2}"), L("{,\"b\":2}", "{\"a\":1,}"));
    expect("{\"type\":\"object\",\"additionalProperties\":false}", L("{}", "{ }"), L("{\"a\":1}"));
    expect("{\"type\":\"object\",\"required\":[\"k\"]}", L("{\"k\":[1]}"), L("{}"));
}

TEST(schema_arrays)
{
    expect("{\"type\":\"array\",\"items\":{\"type\":\"integer\"},\"minItems\":2,\"maxItems\":3}",
           L("[1,2]", "[1, 2, 3]"), L("[1]", "[1,2,3,4]", "[]", "[1,,2]"));
    expect("{\"type\":\"array\"}", L("[]", "[1,\"a\",null]"), L("[1,]"));
    expect("{\"type\":\"array\",\"maxItems\":0}", L("[]"), L("[1]"));
}

TEST(schema_any_of_refs_recursion)
{
    expect("{\"anyOf\":[{\"type\":\"integer\"},{\"type\":\"string\",\"maxLength\":1}]}",
           L("5", "\"a\""), L("\"ab\"", "true"));
    expect("{\"$defs\":{\"p\":{\"type\":\"object\",\"properties\":{\"x\":{\"type\":\"integer\"}},"
           "\"required\":[\"x\"]}},\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/p\"}}",
           L("[{\"x\":1},{\"x\":2}]"), L("[{\"y\":1}]"));
    const char *tree = "{\"$defs\":{\"node\":{\"type\":\"object\",\"properties\":{\"v\":{\"type\":"
                       "\"integer\"},\"kids\":{\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/"
                       "node\"}}},\"required\":[\"v\",\"kids\"]}},\"$ref\":\"#/$defs/node\"}";
    expect(tree, L("{\"v\":1,\"kids\":[{\"v\":2,\"kids\":[{\"v\":3,\"kids\":[]}]}]}"),
           L("{\"v\":1,\"kids\":[{\"v\":2}]}"));
    expect("{\"definitions\":{\"a~b/c\":{\"const\":1}},\"$ref\":\"#/definitions/a~0b~1c\"}", L("1"),
           L("2"));
    expect("{\"allOf\":[{\"type\":\"boolean\"}],\"title\":\"t\",\"description\":\"d\"}", L("true"),
           L("1"));
}

/* Numbers between decimal bounds, inclusive and exclusive: every multiple of 10^-4 in a range
 * and around it, written with four decimals and with its trailing zeros cut, against exact
 * integer comparison. */
TEST(schema_number_decimal_bounds)
{
    static const struct {
        const char *schema;
        int lo, hi; /* in units of 10^-4, inclusive */
    } cases[] = {
        {"{\"type\":\"number\",\"minimum\":-1.25,\"exclusiveMaximum\":3.5}", -12500, 34999},
        {"{\"type\":\"number\",\"exclusiveMinimum\":0,\"maximum\":1}", 1, 10000},
        {"{\"type\":\"number\",\"minimum\":0.1,\"maximum\":0.1003}", 1000, 1003},
        {"{\"type\":\"number\",\"minimum\":-10,\"maximum\":10}", -100000, 100000},
        {"{\"type\":\"number\",\"exclusiveMinimum\":-2.5,\"exclusiveMaximum\":-0.75}", -24999,
         -7501},
    };
    char err[256], t[32];
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        cJSON *s = cJSON_Parse(cases[k].schema);
        core_grammar *g = NULL;
        CHECK_MSG(srv_schema_compile(s, &g, err, sizeof err) == 0, "%s: %s", cases[k].schema, err);
        cJSON_Delete(s);
        int bad = 0;
        for (int v = cases[k].lo - 20000; v <= cases[k].hi + 20000 && bad < 3; v++) {
            int a = v < 0 ? -v : v;
            int n = snprintf(t, sizeof t, "%s%d.%04d", v < 0 ? "-" : "", a / 10000, a % 10000);
            bool want = v >= cases[k].lo && v <= cases[k].hi;
            for (int cut = 0; cut < 2; cut++) {
                if (cut) { /* "1.2500" -> "1.25", "3.0000" -> "3" */
                    while (t[n - 1] == '0')
                        t[--n] = 0;
                    if (t[n - 1] == '.')
                        t[--n] = 0;
                }
                if (core_grammar_matches(g, t, (size_t)n) != want) {
                    test_fail(__FILE__, __LINE__, "%s: '%s' %s", cases[k].schema, t,
                              want ? "refused" : "matched");
                    bad++;
                }
            }
        }
        core_grammar_free(g);
        CHECK(bad == 0);
    }
    /* the smallest step: 16 decimals; "-0" is 0; no exponent, no leading zeros */
    expect("{\"type\":\"number\",\"exclusiveMinimum\":0,\"maximum\":0.5}",
           L("0.0000000000000001", "0.5", "0.5000000000000000", "0.25"),
           L("0", "0.0", "-0", "0.5000000000000001", "0.00000000000000001", "1e-3", "00.25"));
    expect("{\"type\":\"number\",\"minimum\":-0.1,\"maximum\":0}", L("-0", "-0.1", "0.0", "-0.05"),
           L("-0.1000000000000001", "0.0000000000000001", "-.1"));
    expect("{\"type\":\"number\",\"minimum\":0.3333333333333333}",
           L("0.3333333333333333", "0.34", "12"), L("0.3333333333333332", "0.3"));
}

/* "date" and the date of "date-time": exactly the calendar dates (years 0001-9999, each month's
 * days, February 29 in leap years), as Python's date.fromisoformat behind jsonschema's check. */
TEST(schema_format_date_is_a_calendar_date)
{
    static const int years[] = {0, 1, 4, 100, 400, 1900, 1996, 2000, 2023, 2024, 2100, 2400, 9999};
    const char *schemas[2] = {"{\"type\":\"string\",\"format\":\"date\"}",
                              "{\"type\":\"string\",\"format\":\"date-time\"}"};
    char err[256], t[64];
    for (int f = 0; f < 2; f++) {
        cJSON *s = cJSON_Parse(schemas[f]);
        core_grammar *g = NULL;
        CHECK_MSG(srv_schema_compile(s, &g, err, sizeof err) == 0, "%s", err);
        cJSON_Delete(s);
        int bad = 0, valid = 0;
        for (size_t i = 0; i < sizeof years / sizeof years[0]; i++)
            for (int m = 0; m <= 13; m++)
                for (int d = 0; d <= 32; d++) {
                    int y = years[i];
                    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
                    static const int days[13] = {0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
                    bool want =
                        y >= 1 && m >= 1 && m <= 12 && d >= 1 && d <= days[m] + (m == 2 && leap);
                    int n = snprintf(t, sizeof t, "\"%04d-%02d-%02d%s\"", y, m, d,
                                     f ? "T10:20:30Z" : "");
                    valid += want;
                    if (core_grammar_matches(g, t, (size_t)n) != want && bad++ < 3)
                        test_fail(__FILE__, __LINE__, "%s %s", t, want ? "refused" : "matched");
                }
        core_grammar_free(g);
        CHECK(bad == 0);
        CHECK_EQ_INT(valid, 12 * 365 + 6); /* leap days: 4, 400, 1996, 2000, 2024, 2400 */
    }
}

TEST(schema_refusals_name_the_keyword)
{
    refused("{\"type\":\"string\",\"not\":{}}", "unsupported keyword 'not' at #");
    refused("{\"properties\":{\"a\":{\"oneOf\":[{}]}}}",
            "unsupported keyword 'oneOf' at #/properties/a");
    refused("{\"type\":\"array\",\"uniqueItems\":true}", "'uniqueItems'");
    refused("{\"type\":\"string\",\"format\":\"ipv4\"}", "'format': 'ipv4'");
    refused("{\"type\":\"number\",\"minimum\":1.5,\"maximum\":1.25}", "no number");
    refused("{\"type\":\"number\",\"exclusiveMinimum\":2,\"exclusiveMaximum\":2}", "no number");
    refused("{\"type\":\"number\",\"maximum\":\"3\"}", "'maximum' at # must be a number");
    refused("{\"type\":\"integer\",\"minimum\":5,\"maximum\":4}", "no integer");
    refused("{\"type\":\"string\",\"pattern\":\"(?=a)\"}", "lookarounds");
    refused("{\"type\":\"string\",\"pattern\":\"a\\\\b\"}", "unsupported escape");
    refused("{\"type\":\"string\",\"pattern\":\"a{2000}\"}", "over 1000");
    refused("{\"type\":\"string\",\"pattern\":\"(a\"}", "without ')'");
    refused("{\"type\":\"string\",\"pattern\":\"[a\"}", "unterminated class");
    refused("{\"$ref\":\"http://x/y\"}", "only references inside the schema");
    refused("{\"$ref\":\"#/$defs/missing\"}", "no such definition");
    refused("{\"$defs\":{\"a\":{\"$ref\":\"#/$defs/a\"}},\"$ref\":\"#/$defs/a\"}",
            "matches nothing");
    refused("{\"type\":\"string\",\"maxLength\":1,\"minLength\":2}", "maxLength < minLength");
    refused("{\"type\":\"thing\"}", "unknown type 'thing'");
    refused("{\"type\":\"object\",\"additionalProperties\":{\"type\":\"string\"}}",
            "only true or false");
    refused("false", "nothing matches");
    refused("[1]", "must be an object or a boolean");
    refused("{\"anyOf\":[]}", "non-empty array");
    refused("{\"$ref\":\"#\",\"type\":\"string\"}", "keywords beside '$ref'");
}

TEST(schema_size_limits)
{
    /* a schema of 5000 nested subschemas is refused, not compiled into a huge grammar */
    size_t n = 5000, cap = n * 40 + 64, len = 0;
    char *t = malloc(cap);
    for (size_t i = 0; i < n; i++)
        len += (size_t)snprintf(t + len, cap - len, "{\"type\":\"array\",\"items\":");
    len += (size_t)snprintf(t + len, cap - len, "{}");
    for (size_t i = 0; i < n; i++)
        t[len++] = '}';
    t[len] = 0;
    cJSON *s = cJSON_ParseWithOpts(t, NULL, 0);
    if (s) { /* cJSON's own nesting limit may refuse it first */
        core_grammar *g = NULL;
        char err[256];
        CHECK_EQ_INT(srv_schema_compile(s, &g, err, sizeof err), -E2BIG);
        CHECK(g == NULL);
        cJSON_Delete(s);
    }
    free(t);
    /* a large bounded repetition compiles within the element cap */
    expect("{\"type\":\"array\",\"items\":{\"type\":\"string\",\"maxLength\":1000},\"maxItems\":"
           "1000}",
           L("[\"a\"]"), NULL);
}

TEST(schema_regex_direct)
{
    core_grammar *g;
    char err[128];
    CHECK_EQ_INT(srv_regex_compile("^\\w+@\\w+\\.(com|org)$", &g, err, sizeof err), 0);
    CHECK(core_grammar_matches(g, "ab_1@x.org", 10));
    CHECK(!core_grammar_matches(g, "ab@x.net", 8));
    core_grammar_free(g);
}

/* guided_regex: the raw text matching the expression whole (Python's re.fullmatch), its
 * characters as themselves (quotes and backslashes unescaped, '.' any UTF-8 character but a line
 * break). */
TEST(schema_regex_text_whole_and_raw)
{
    core_grammar *g;
    char err[160];
    CHECK_EQ_INT(srv_regex_text_compile("\\d{3}-\\d{4}", &g, err, sizeof err), 0);
    CHECK(core_grammar_matches(g, "555-1234", 8));
    CHECK(!core_grammar_matches(g, "x555-1234", 9)); /* anchored without ^ */
    CHECK(!core_grammar_matches(g, "555-12345", 9)); /* and without $ */
    core_grammar_free(g);
    CHECK_EQ_INT(srv_regex_text_compile("^\"[a-z]+\\\\\"$", &g, err, sizeof err), 0);
    CHECK(core_grammar_matches(g, "\"ab\\\"", 5));        /* "ab\" as raw bytes */
    CHECK(!core_grammar_matches(g, "\\\"ab\\\\\\\"", 8)); /* not JSON-escaped */
    core_grammar_free(g);
    CHECK_EQ_INT(srv_regex_text_compile("(yes|no)\\.[^a-z]", &g, err, sizeof err), 0);
    CHECK(core_grammar_matches(g, "no.\xc3\xa9", 5)); /* a negated class takes non-ASCII */
    CHECK(core_grammar_matches(g, "yes.\t", 5));
    CHECK(!core_grammar_matches(g, "yes.e", 5));
    core_grammar_free(g);
    CHECK_EQ_INT(srv_regex_text_compile("a.b", &g, err, sizeof err), 0);
    CHECK(core_grammar_matches(g,
                               "a\xe2\x82\xac"
                               "b",
                               5));
    CHECK(!core_grammar_matches(g, "a\nb", 3));
    CHECK(!core_grammar_matches(g, "a\0b", 3)); /* never NUL */
    core_grammar_free(g);
    CHECK_EQ_INT(srv_regex_text_compile("(a", &g, err, sizeof err), -EINVAL);
    CHECK_MSG(!strcmp(err, "regex: a group without ')' at offset 2"), "%s", err);
    CHECK(g == NULL);
    CHECK_EQ_INT(srv_regex_text_compile("[^\\x00-\\x7f]{2}(?=x)", &g, err, sizeof err), -EINVAL);
    CHECK_MSG(strstr(err, "lookarounds"), "%s", err);
    CHECK_EQ_INT(srv_regex_text_compile("a{2}{3}", &g, err, sizeof err), -EINVAL);
    CHECK_MSG(!strcmp(err, "regex: nothing to repeat at offset 4"), "%s", err);
    CHECK_EQ_INT(srv_regex_text_compile("[\\x00]", &g, err, sizeof err), -EINVAL); /* NUL only */
    CHECK_MSG(!strcmp(err, "regex: an empty character class matches nothing"), "%s", err);
}

TEST(schema_choice_exactly_one)
{
    core_grammar *g;
    char err[160];
    const char *c3[] = {"Paris", "London", "Par"};
    CHECK_EQ_INT(srv_choice_compile(c3, 3, &g, err, sizeof err), 0);
    CHECK(core_grammar_matches(g, "Paris", 5));
    CHECK(core_grammar_matches(g, "Par", 3));
    CHECK(core_grammar_matches(g, "London", 6));
    CHECK(!core_grammar_matches(g, "Pari", 4));
    CHECK(!core_grammar_matches(g, "ParisLondon", 11));
    CHECK(!core_grammar_matches(g, "", 0));
    core_grammar_free(g);
    CHECK_EQ_INT(srv_choice_compile(c3, 0, &g, err, sizeof err), -EINVAL);
    CHECK(g == NULL);
}

/* enum and guided_choice are tries: a thousand values all stay reachable (plain alternatives
 * would need a matcher stack each, over CORE_GRAMMAR_STACKS_MAX) */
TEST(schema_wide_enum_and_choice)
{
    static char buf[1024][16];
    const char *v[1024];
    char *schema = malloc(1024 * 12 + 32);
    CHECK(schema != NULL);
    if (!schema)
        return;
    size_t n = (size_t)sprintf(schema, "{\"enum\": [");
    for (int i = 0; i < 1024; i++) {
        snprintf(buf[i], sizeof buf[i], "w%d", i * 3);
        v[i] = buf[i];
        n += (size_t)sprintf(schema + n, "%s\"%s\"", i ? "," : "", buf[i]);
    }
    sprintf(schema + n, ", 5, null]}");
    cJSON *s = cJSON_Parse(schema);
    core_grammar *g = NULL, *c = NULL;
    char err[256];
    CHECK_MSG(srv_schema_compile(s, &g, err, sizeof err) == 0, "%s", err);
    CHECK_MSG(srv_choice_compile(v, 1024, &c, err, sizeof err) == 0, "%s", err);
    int ok = 0;
    for (int i = 0; g && c && i < 1024 * 3; i++) {
        char q[32], w[24];
        int k = snprintf(w, sizeof w, "w%d", i);
        snprintf(q, sizeof q, "\"%s\"", w);
        ok += core_grammar_matches(g, q, (size_t)k + 2) == (i % 3 == 0);
        ok += core_grammar_matches(c, w, (size_t)k) == (i % 3 == 0);
    }
    CHECK_EQ_INT(ok, 2 * 1024 * 3);
    CHECK(g && core_grammar_matches(g, "5", 1) && core_grammar_matches(g, "null", 4));
    CHECK(g && !core_grammar_matches(g, "\"w\"", 3) && !core_grammar_matches(g, "\"w4\"", 4));
    core_grammar_free(g);
    core_grammar_free(c);
    cJSON_Delete(s);
    free(schema);
}
