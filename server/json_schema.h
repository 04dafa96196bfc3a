/* Structured outputs: a JSON Schema (or plain "any JSON object") compiled into the byte grammar
 * the sampler masks tokens with (core/text/grammar.h).
 *
 * The supported subset (anything else is refused with a message that names the keyword and where
 * it is, e.g. "unsupported keyword 'not' at #/properties/a"):
 *   type (a name or a list), enum, const, anyOf, allOf with one member, $ref to "#", "#/$defs/..."
 *   or "#/definitions/..." (recursion allowed);
 *   object: properties (generated in their order), required, additionalProperties (false or true;
 *   only the listed properties are generated either way);
 *   array: items, minItems, maxItems;
 *   string: minLength, maxLength, pattern (ECMA-262 subset: literals, ., classes of ASCII
 *   characters, \d \w \s and their negations, groups, |, ?, *, +, {n,m}, ^ and $ at the ends;
 *   unanchored as JSON Schema says), format date, time, date-time, uuid, email;
 *   integer: minimum, maximum, exclusiveMinimum, exclusiveMaximum;
 *   number: minimum, maximum, exclusiveMinimum, exclusiveMaximum (any values, read as their
 *   shortest decimal writing; a bounded number is written without exponent);
 *   boolean, null; and the annotations title, description, default, examples, $schema, $id,
 *   $comment, deprecated, readOnly, writeOnly.
 * Generated JSON: at most 16 whitespace bytes between tokens, integers of at most 16 digits,
 * fractions of at most 16, exponents of at most 3; strings and arrays are unbounded unless the
 * schema bounds them (max_tokens does).
 *
 * Thread-safety: pure; any thread.
 */
#ifndef ADAPTREE_SERVER_JSON_SCHEMA_H
#define ADAPTREE_SERVER_JSON_SCHEMA_H

#include <cJSON.h>
#include <stddef.h>

#include "core/text/grammar.h"

#define SRV_SCHEMA_NODES_MAX 4096  /* schema objects compiled for one request (refs count again) */
#define SRV_SCHEMA_REPEAT_MAX 1000 /* largest finite bound in minLength/maxLength/minItems/... */

/* Compiles schema (NULL: any JSON object, the "json_object" response format) into *out.
 * 0, or -EINVAL with the reason in err (unsupported keyword, bad value, a schema nothing can
 * match), -E2BIG (too large), -ENOMEM. */
int srv_schema_compile(const cJSON *schema, core_grammar **out, char *err, size_t errlen);

/* Compiles a regular expression (the "pattern" subset above) into a grammar matching the JSON
 * string content it describes (between the quotes, escaped as JSON). For tests and tools. */
int srv_regex_compile(const char *re, core_grammar **out, char *err, size_t errlen);

/* vLLM's guided_regex: a grammar matching the text that re (the same subset) matches whole, as
 * Python's re.fullmatch would: anchored whether or not it starts with ^ and ends with $; its
 * classes, '.' and literals stand for the characters themselves ('.' and negated classes: any
 * UTF-8 character but those, never NUL, '.' not \n or \r). Errors as srv_schema_compile. */
int srv_regex_text_compile(const char *re, core_grammar **out, char *err, size_t errlen);

/* vLLM's guided_choice: a grammar matching exactly one of the n strings (n >= 1). */
int srv_choice_compile(const char *const *choices, int n, core_grammar **out, char *err,
                       size_t errlen);

#endif
