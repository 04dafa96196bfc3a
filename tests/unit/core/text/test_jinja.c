/* Tests for the Jinja-subset interpreter (core/text/jinja_*.c) through core_chat_template_*:
 * language cases whose expected outputs were produced by jinja2 3.1.6 in transformers'
 * environment (tests/reference/make_chat_fixtures.py's environment(), messages
 * [user "Hi", assistant " Hello \n"], bos "<s>", eos "</s>", the fixture's clock), then what
 * the subset refuses at compile time (with the construct and the line), errors at render time,
 * and the resource bounds a hostile template meets. The real templates are in
 * tests/golden/test_chat_templates_golden.c. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/text/jinja_internal.h"
#include "core/text/tokenizer.h"
#include "tests/test.h"

#define NOW 1741910400 /* 2025-03-14, as tests/reference/make_chat_fixtures.py */

static const core_chat_msg MSGS[] = {{"user", "Hi"}, {"assistant", " Hello \n"}};

/* Renders src on MSGS; returns the rc, *out (malloc'd) and the message in err. */
static int render(const char *src, char **out, char *err, size_t errlen)
{
    core_chat_template *ct;
    *out = NULL;
    int rc = core_chat_template_new(src, &ct, err, errlen);
    if (rc < 0)
        return rc;
    core_chat_opts o = {
        .add_generation_prompt = true, .bos_token = "<s>", .eos_token = "</s>", .now = NOW};
    rc = core_chat_template_render(ct, MSGS, 2, &o, out, err, errlen);
    core_chat_template_free(ct);
    return rc;
}

static const struct {
    const char *tmpl, *want;
} CASES[] = {
    {/* trim_blocks and lstrip_blocks */
     "a  {% if true %}\n  x\n  {% endif %}\nb", "a    x\nb"},
    {/* + keeps the whitespace */
     "a  {%+ if true %}x{% endif +%}\nb", "a  x\nb"},
    {/* - strips both sides */
     "a \n {%- if true -%} \n x \n {%- endif -%} \n b", "axb"},
    {/* comments strip like blocks */
     "a\n  {# note #}\nb {#- x -#}   c", "a\nbc"},
    {/* expressions are not lstripped; one trailing newline dropped */
     "  {{ 'x' }}\n{{ 'y' }}\n", "  x\ny"},
    {/* newlines normalized */
     "x\r\ny\rz", "x\ny\nz"},
    {/* arithmetic */
     "{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 7 "
     "/ 2 }} {{ 4 / 2 }}",
     "7 9 3 -4 2 1024 3.5 2.0"},
    {/* concat, repeat, lists */
     "{{ 'a' ~ 1 ~ none ~ true }} {{ 'ab' * 3 }} {{ [1] + [2, 'x'] }}",
     "a1NoneTrue ababab [1, 2, 'x']"},
    {/* comparisons */
     "{{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 'a' in 'cat' }} {{ 'z' not in ['a'] }} {{ 1 == 1.0 }} {{ "
     "'b' >= 'a' }}",
     "True False True True True True"},
    {/* logic */
     "{{ not 1 == 2 and 'x' or 'y' }} {{ 0 or '' or 'last' }} {{ 'yes' if messages else 'no' }} {{ "
     "'n' if false }}.",
     "x last yes ."},
    {/* str of values */
     "{{ none }} {{ True }} {{ [1, 'a', none, {'k': \"it's\"}] }} {{ {'a': 1.5, 'b': [true]} }} {{ "
     "1.0 }} {{ 0.1 + 0.2 }} {{ 1e3 if false else 2.50 }}",
     "None True [1, 'a', None, {'k': \"it's\"}] {'a': 1.5, 'b': [True]} 1.0 0.30000000000000004 "
     "2.5"},
    {/* string escapes */
     "{{ 'tab\\there' }}|{{ \"q\\\"d\" }}|{{ 'u\\u00e9\\x41' }}|{{ 'a' 'b' }}|{{ '\\q' }}",
     "tab\there|q\"d|uéA|ab|\\q"},
    {/* undefined prints nothing */
     "{{ undefined_thing }}|{{ messages[5] }}|{{ messages[0].missing }}|{{ messages[-1]['role'] }}",
     "|||assistant"},
    {/* slices */
     "{{ messages[1:] | length }} {{ 'héllo'[1:3] }} {{ 'héllo'[::-1] }} {{ [1,2,3,4,5][::2] }} {{ "
     "[1,2,3][-2:] }} {{ 'abc'[-1] }} {{ 'x'[5:] }}",
     "1 él olléh [1, 3, 5] [2, 3] c "},
    {/* trim, length, case */
     "[{{ '  a b \\n' | trim }}] {{ messages | length }} {{ 'héllo' | length }} {{ {'a': 1} | "
     "length }} {{ 'Ab' | upper }}{{ 'Ab' | lower }}",
     "[a b] 2 5 1 ABab"},
    {/* tojson */
     "{{ {'a': [1, 'é', none, true], 'b': {'c': 1.5}} | tojson }}|{{ 'x\"\\n\\u0001' | tojson "
     "}}|{{ [1, [2]] | tojson(indent=2) }}|{{ {} | tojson(indent=4) }}",
     "{\"a\": [1, \"é\", null, true], \"b\": {\"c\": 1.5}}|\"x\\\"\\n\\u0001\"|[\n  1,\n  [\n    "
     "2\n  ]\n]|{}"},
    {/* default */
     "{{ missing | default('d') }} {{ '' | default('e') }} {{ '' | default('f', true) }} {{ none | "
     "d('g') }}",
     "d  f None"},
    {/* items */
     "{% for k, v in {'b': 1, 'a': 2} | items %}{{ k }}={{ v }};{% endfor %} {% for k, v in {'x': "
     "3}.items() %}{{ k }}{{ v }}{% endfor %}",
     "b=1;a=2; x3"},
    {/* join, map, selectattr */
     "{{ ['a', 'b', 1] | join(', ') }} {{ messages | map(attribute='role') | join('/') }} {{ "
     "messages | selectattr('role', 'equalto', 'user') | list | length }} {{ messages | "
     "rejectattr('role', 'eq', 'user') | map(attribute='content') | first }}",
     "a, b, 1 user/assistant 1  Hello \n"},
    {/* select, reject, unique, reverse */
     "{{ [1, 2, 3, 4] | select('odd') | list }} {{ [1, 2, 3] | reject('equalto', 2) | list }} {{ "
     "['a', '', 'b'] | select | list }} {{ [3, 1, 3] | unique | list }} {{ [1, 2] | reverse | list "
     "}} {{ 'abc' | reverse }}",
     "[1, 3] [1, 3] ['a', 'b'] [3, 1] [2, 1] cba"},
    {/* replace, int, title, abs */
     "{{ 'a-b-a' | replace('a', 'x') }} {{ '42' | int + 1 }} {{ 'x' | int }} {{ 3.9 | int }} {{ "
     "'hello world' | title }} {{ 'hELLO' | capitalize }} {{ -3 | abs }} {{ [1, 2] | last }} {{ 5 "
     "| string ~ '!' }}",
     "x-b-x 43 0 3 Hello World Hello 3 2 5!"},
    {/* tests */
     "{{ x is defined }} {{ messages is defined }} {{ none is none }} {{ 'a' is string }} {{ 1 is "
     "number }} {{ 1 is integer }} {{ 1.5 is float }} {{ {} is mapping }} {{ [] is iterable }} {{ "
     "'a' is sequence }} {{ true is boolean }} {{ 3 is odd }} {{ 4 is even }} {{ 1 is not string "
     "}} {{ 2 is equalto 2 }} {{ 'a' is in 'abc' }} {{ tools is none }} {{ x is undefined }}",
     "False True True True True True True True True True True True True True True True True True"},
    {/* methods */
     "[{{ '  x  '.strip() }}][{{ 'xxaxx'.strip('x') }}][{{ '\\n\\nab'.lstrip('\\n') }}][{{ 'ab  "
     "'.rstrip() }}] {{ 'Ab'.upper() }}{{ 'Ab'.lower() }} {{ 'abc'.startswith('ab') }} {{ "
     "'abc'.endswith('bc') }} {{ 'a/b'.replace('/', '-') }} {{ 'a b  c'.split() }} {{ "
     "'a,b,,c'.split(',') }} {{ 'a,b,c'.split(',', 1) }} {{ {'k': 1}.get('k') }} {{ {'k': "
     "1}.get('z', 'dflt') }} {{ {'a': 1}.keys() | list }} {{ {'a': 1}.values() | list }}",
     "[x][a][ab][ab] ABab True True a-b ['a', 'b', 'c'] ['a', 'b', '', 'c'] ['a', 'b,c'] 1 dflt "
     "['a'] [1]"},
    {/* loop attributes */
     "{% for m in messages %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}{{ "
     "loop.length }}{{ loop.revindex }}{{ loop.revindex0 }}|{% endfor %}",
     "10TrueFalse221|21FalseTrue210|"},
    {/* loop filter and else */
     "{% for m in messages if m.role == 'assistant' %}{{ loop.index }}:{{ m.role }}{% endfor %}{% "
     "for x in [] %}no{% else %}empty{% endfor %}",
     "1:assistantempty"},
    {/* break, continue, range */
     "{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i == 5 %}{% break %}{% "
     "endif %}{{ i }}{% endfor %} {{ range(3) | list }} {{ range(1, 7, 2) | list }} {{ range(3, 0, "
     "-1) | list }}",
     "0134 [0, 1, 2] [1, 3, 5] [3, 2, 1]"},
    {/* scoping and namespace */
     "{% set x = 1 %}{% for i in [1, 2] %}{% set x = x + i %}{{ x }}{% endfor %}{{ x }} {% set ns "
     "= namespace(total=0, s='') %}{% for i in [1, 2, 3] %}{% set ns.total = ns.total + i %}{% set "
     "ns.s = ns.s ~ i %}{% endfor %}{{ ns.total }} {{ ns.s }}",
     "231 6 123"},
    {/* iteration of strings, dicts, pairs, nested loops */
     "{% for c in 'hé' %}[{{ c }}]{% endfor %}{% for k in {'a': 1, 'b': 2} %}{{ k }}{% endfor %}{% "
     "for a, b in [[1, 2], [3, 4]] %}{{ a + b }}{% endfor %}{% for i in [1] %}{% for j in [2] %}{{ "
     "loop.index }}{{ i }}{{ j }}{% endfor %}{% endfor %}",
     "[h][é]ab37112"},
    {/* if elif else */
     "{% if false %}a{% elif messages | length > 1 %}b{% else %}c{% endif %}{% if not tools %}d{% "
     "endif %}",
     "bd"},
    {/* variables */
     "{{ bos_token }}{{ eos_token }}{{ add_generation_prompt }} {{ strftime_now('%Y-%m-%d %A') }} "
     "{{ raise_exception is defined }}",
     "<s></s>True 2025-03-14 Friday True"},
    {/* subscripts, tuples */
     "{{ {'a': 1}['a'] }}{{ [[1, 2]][0][1] }}{{ messages.0.role }}{{ (1, 2)[1] }}{{ ('x',) | "
     "length }}",
     "12user21"},
    {/* macros: positional, keyword, defaults; output is their value */
     "{% macro turn(role, text='none', end='|') %}[{{ role }}:{{ text | trim }}]{{ end }}{% "
     "endmacro %}{% for m in messages %}{{ turn(m.role, m.content) }}{% endfor %}{{ turn('x', "
     "end='!') }}{{ turn('y') | length }}",
     "[user:Hi]|[assistant:Hello]|[x:none]!9"},
    {/* macros see the template's variables and recurse */
     "{% set top = 'T' %}{% macro f(n) %}{{ top }}{{ n }}{% if n > 0 %}{{ f(n - 1) }}{% endif %}{% "
     "endmacro %}{% for i in [1] %}{{ f(2) }}{% endfor %}",
     "T2T1T0"},
    {/* block assignment */
     "{% set block %}\n  {{ messages | length }} messages\n{% endset %}[{{ block }}]{% for m in "
     "messages %}{% set inner %}{{ m.role }}!{% endset %}{{ inner }}{% endfor %}",
     "[  2 messages\n]user!assistant!"},
    {/* sort, dictsort, safe */
     "{{ ['b', 'A', 'c'] | sort }} {{ [3, 1, 2] | sort(reverse=true) }} {{ messages | "
     "sort(attribute='role') | map(attribute='role') | join(',') }} {{ ['b', 'A'] | "
     "sort(case_sensitive=true) }} {{ {'b': 1, 'A': 2} | dictsort }} {{ {'a': 2, 'b': 1} | "
     "dictsort(by='value') }} {{ '<x>' | safe }}",
     "['A', 'b', 'c'] [3, 2, 1] assistant,user ['A', 'b'] [('A', 2), ('b', 1)] [('b', 1), ('a', "
     "2)] <x>"},
    {/* select and map read nothing from none */
     "{{ none | selectattr('type', 'equalto', 'x') | list | length }} {{ none | map(attribute='a') "
     "| list }} {{ '' | select | list }}",
     "0 [] []"},
};

TEST(jinja_language)
{
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) {
        char err[256] = "", *out = NULL;
        int rc = render(CASES[i].tmpl, &out, err, sizeof err);
        CHECK_MSG(rc == 0 && !strcmp(out, CASES[i].want),
                  "case %zu: %s\n      rc %d (%s)\n      ours \"%s\"\n      want \"%s\"", i,
                  CASES[i].tmpl, rc, err, out ? out : "", CASES[i].want);
        free(out);
    }
}

static const struct {
    const char *tmpl;
    int rc;
    const char *msg;
} ERRORS[] = {
    /* outside the subset or malformed: refused when compiled, with the line */
    {"{% call x() %}{% endcall %}", -ENOTSUP,
     "chat template not supported: line 1: unsupported statement {% call %}"},
    {"a\n\n{{ x | wordcount }}", -ENOTSUP, "line 3: unsupported filter '|wordcount'"},
    {"{{ x is divisibleby 3 }}", -ENOTSUP, "line 1: unsupported test 'is divisibleby'"},
    {"{{ cycler() }}", -ENOTSUP, "line 1: unsupported function 'cycler()'"},
    {"{{ 'a'.zfill(3) }}", -ENOTSUP, "line 1: unsupported method '.zfill()'"},
    {"{% generation %}x{% endgeneration %}", -ENOTSUP, "unsupported statement {% generation %}"},
    {"{% macro m() %}\n{{ undefined_macro() }}{% endmacro %}", -ENOTSUP,
     "line 2: unsupported function 'undefined_macro()'"},
    {"{% set x %}a", -ENOTSUP, "missing {% endset %}"},
    {"{% set a, b = 1, 2 %}", -ENOTSUP, "unsupported tuple assignment"},
    {"{% for x in y recursive %}{% endfor %}", -ENOTSUP, "unsupported recursive for loop"},
    {"{% for m in messages %}\n{{ m }}", -ENOTSUP, "line 2: missing {% endfor %}"},
    {"{% if x %}{% endfor %}", -ENOTSUP, "line 1: unexpected {% endfor %}"},
    {"{% endif %}", -ENOTSUP, "unexpected {% endif %}"},
    {"{% frobnicate %}", -ENOTSUP, "unexpected statement {% 'frobnicate' %}"},
    {"{{ 'abc }}", -ENOTSUP, "line 1: unterminated string"},
    {"x\n{{ x ", -ENOTSUP, "line 2: unclosed tag"},
    {"{# x", -ENOTSUP, "unclosed comment"},
    {"{{ a ! b }}", -ENOTSUP, "unexpected character '!'"},
    {"{{ }}", -ENOTSUP, "expected an expression, found '}}'"},
    {"{{ f(x=1, 2) }}", -ENOTSUP, "positional argument after a keyword argument"},
    {"{{ (1)(2) }}", -ENOTSUP, "only named functions and methods can be called"},
    {"{{ 99999999999999999999 }}", -ENOTSUP, "integer literal too large"},
    {NULL, -ENOTSUP, "no tokenizer.chat_template"},
    /* errors of the template's logic, at render time */
    {"{{ raise_exception('Roles must alternate user/assistant') }}", -EINVAL,
     "Roles must alternate user/assistant"},
    {"{{ raise_exception(msg='x') }}", -EINVAL, "raise_exception() takes one positional argument"},
    {"{{ raise_exception('') }}", -EINVAL, "the template raised an empty message"},
    {"{{ messages[9].role }}", -EINVAL, "line 1: a value is undefined"},
    {"\n{{ nothing + 1 }}", -EINVAL, "line 2: 'nothing' is undefined"},
    {"{{ 1 + 'a' }}", -EINVAL, "unsupported operand types for an operator: int and str"},
    {"{{ 1 // 0 }}", -EINVAL, "integer division or modulo by zero"},
    {"{{ 9223372036854775807 + 1 }}", -EINVAL, "integer overflow"},
    {"{% for x in none %}{% endfor %}", -EINVAL, "'NoneType' object is not iterable"},
    {"{% set x = 1 %}{% set x.y = 1 %}", -EINVAL, "needs x to be a namespace()"},
    {"{{ 1 < 'a' }}", -EINVAL, "cannot order int and str"},
    {"{{ messages | tojson }}{{ x | tojson }}", -EINVAL, "Object of type Undefined"},
    {"{{ messages.items() }}", -EINVAL, "'list' object has no method 'items'"},
    {"{% macro m(a) %}{% endmacro %}{{ m(1, 2) }}", -EINVAL, "macro 'm' takes 1 arguments"},
    {"{% macro m(a) %}{% endmacro %}{{ m(b=1) }}", -EINVAL, "none named b"},
    {"{{ m() }}{% macro m() %}{% endmacro %}", -EINVAL, "'m' is undefined"},
    {"{% macro m(n) %}{{ m(n + 1) }}{% endmacro %}{{ m(0) }}", -E2BIG, "nested deeper than"},
    /* bounds: a hostile template fails fast */
    {"{% for i in range(1500000) %}{% if i %}{% endif %}{% endfor %}", -E2BIG,
     "ran more than 4000000 steps"},
    {"{% set s = 'x' * 1000000 %}{% for i in range(20) %}{{ s }}{% endfor %}", -E2BIG,
     "the rendered text exceeds 16 MiB"},
    {"{% set s = 'x' * 1000000 %}{% set t = [s] * 3000 %}{{ t | join }}", -E2BIG,
     "more than 64 MiB of memory"},
};

TEST(jinja_errors)
{
    for (size_t i = 0; i < sizeof ERRORS / sizeof ERRORS[0]; i++) {
        char err[256] = "", *out = NULL;
        int rc = render(ERRORS[i].tmpl, &out, err, sizeof err);
        free(out);
        CHECK_MSG(rc == ERRORS[i].rc && strstr(err, ERRORS[i].msg),
                  "case %zu: %s\n      rc %d \"%s\", want %d \"%s\"", i,
                  ERRORS[i].tmpl ? ERRORS[i].tmpl : "(null)", rc, err, ERRORS[i].rc, ERRORS[i].msg);
    }
}

/* Nesting that would recurse without end is refused: deep brackets when compiled, a long
 * operator chain (a deep tree built without recursion) when rendered. */
TEST(jinja_depth_bounds)
{
    char src[8192], err[256] = "", *out = NULL;
    int k = snprintf(src, sizeof src, "{{ ");
    for (int i = 0; i < 100; i++)
        src[k++] = '(';
    src[k++] = '1';
    for (int i = 0; i < 100; i++)
        src[k++] = ')';
    snprintf(src + k, sizeof src - (size_t)k, " }}");
    CHECK_EQ_INT(render(src, &out, err, sizeof err), -ENOTSUP);
    CHECK(strstr(err, "nesting deeper than 64"));
    k = snprintf(src, sizeof src, "{{ 1");
    for (int i = 0; i < 1000; i++)
        k += snprintf(src + k, sizeof src - (size_t)k, "+1");
    snprintf(src + k, sizeof src - (size_t)k, " }}");
    CHECK_EQ_INT(render(src, &out, err, sizeof err), -E2BIG);
    CHECK(strstr(err, "expression nested deeper than"));
    free(out);
}

/* A template is compiled once and rendered by many threads' requests: renders do not share
 * state, and a failed render leaves the template usable. */
TEST(jinja_reuse)
{
    core_chat_template *ct;
    char err[256], *out = NULL;
    CHECK_EQ_INT(core_chat_template_new("{% if messages | length > 1 %}{{ raise_exception('two') "
                                        "}}{% endif %}{% set n = 1 %}{{ messages[0].content }}",
                                        &ct, err, sizeof err),
                 0);
    core_chat_opts o = {.now = NOW};
    CHECK_EQ_INT(core_chat_template_render(ct, MSGS, 2, &o, &out, err, sizeof err), -EINVAL);
    CHECK_EQ_STR(err, "two");
    CHECK(!out);
    CHECK_EQ_INT(core_chat_template_render(ct, MSGS, 1, &o, &out, err, sizeof err), 0);
    CHECK_EQ_STR(out, "Hi");
    free(out);
    core_chat_template_free(ct);
}
