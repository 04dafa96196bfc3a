/* libFuzzer target: the JSON Schema compiler (server/json_schema.c), the GBNF compiler
 * (server/gbnf.c) and the grammar they build (core/text/grammar.c). An input starting with "re:"
 * is a regular expression for srv_regex_compile, "rt:" one for srv_regex_text_compile
 * (guided_regex), "ch:" a list of choices, one a line, for srv_choice_compile (guided_choice),
 * "gb:" a GBNF grammar for srv_gbnf_compile (grammar, guided_grammar); anything else is parsed by
 * cJSON as a schema (an input cJSON refuses is compiled as the json_object mode, schema NULL, and
 * the input used as text to match).
 *
 * Aborts when the return code is not one of 0, -EINVAL, -E2BIG, -ENOMEM; when a refusal has no
 * message, a message that is not printable, or a grammar; when a success has a message or no
 * grammar, or a grammar that cannot start a match. A compiled grammar is then run on texts made
 * from the input (its prefixes up to 256 bytes) so the matcher sees hostile bytes too; a second
 * compilation of the same input must give the same answer on each of them. */
#include <cJSON.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/text/grammar.h"
#include "server/gbnf.h"
#include "server/json_schema.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The choices of a "ch:" input: its lines after the prefix (text is modified). */
static int choices(char *text, const char **v, int cap)
{
    int n = 0;
    for (char *p = text + 3; n < cap;) {
        v[n++] = p;
        char *nl = strchr(p, '\n');
        if (!nl)
            break;
        *nl = 0;
        p = nl + 1;
    }
    return n;
}

static int compile(const char *text, bool regex, bool schema_null, core_grammar **g, char *err,
                   size_t errlen)
{
    if (regex && !memcmp(text, "re:", 3))
        return srv_regex_compile(text + 3, g, err, errlen);
    if (regex && !memcmp(text, "rt:", 3))
        return srv_regex_text_compile(text + 3, g, err, errlen);
    if (regex && !memcmp(text, "gb:", 3))
        return srv_gbnf_compile(text + 3, strlen(text + 3), g, err, errlen);
    if (regex) {
        char *copy = strdup(text);
        const char *v[64];
        int rc = copy ? srv_choice_compile(v, choices(copy, v, 64), g, err, errlen) : -ENOMEM;
        free(copy);
        return rc;
    }
    cJSON *s = schema_null ? NULL : cJSON_Parse(text);
    int rc = srv_schema_compile(s, g, err, errlen);
    cJSON_Delete(s);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 16384)
        return 0;
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = 0;
    bool regex = size >= 3 && (!memcmp(text, "re:", 3) || !memcmp(text, "rt:", 3) ||
                               !memcmp(text, "ch:", 3) || !memcmp(text, "gb:", 3));
    cJSON *probe = regex ? NULL : cJSON_Parse(text);
    bool schema_null = !regex && !probe;
    cJSON_Delete(probe);
    core_grammar *g = (core_grammar *)&text; /* must be overwritten */
    char err[200] = "";
    int rc = compile(text, regex, schema_null, &g, err, sizeof err);
    if (rc != 0 && rc != -EINVAL && rc != -E2BIG && rc != -ENOMEM)
        abort();
    if (rc) {
        if (g || !err[0])
            abort();
        for (const char *p = err; *p; p++)
            if ((unsigned char)*p < 0x20)
                abort();
        free(text);
        return 0;
    }
    if (!g || err[0] || !core_grammar_viable(g))
        abort();
    core_grammar *g2 = NULL;
    char err2[200];
    if (compile(text, regex, schema_null, &g2, err2, sizeof err2) != 0)
        abort();
    size_t n = size < 256 ? size : 256;
    for (size_t k = 0; k <= n; k += 1 + k / 4)
        if (core_grammar_matches(g, text, k) != core_grammar_matches(g2, text, k))
            abort();
    core_grammar_free(g2);
    core_grammar_free(core_grammar_ref(g)); /* a reference taken and dropped keeps it alive */
    core_grammar_matches(g, "{}", 2);
    core_grammar_free(g);
    free(text);
    return 0;
}
