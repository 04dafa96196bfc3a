/* Python semantics of Jinja values (jinja_value.c), for the evaluator. Internal to core/text. */
#ifndef ADAPTREE_CORE_TEXT_JINJA_VALUE_H
#define ADAPTREE_CORE_TEXT_JINJA_VALUE_H

#include "core/text/jinja_internal.h"

/* A string being built in the arena; p is NUL-terminated once anything was put. */
typedef struct jsb {
    char *p;
    size_t n, cap;
} jsb;

void sb_put(jctx *c, jsb *b, const char *s, size_t n);
void sb_puts(jctx *c, jsb *b, const char *s);

jv jv_str(const char *s, size_t n);
jv jv_copy_str(jctx *c, const char *s, size_t n);
jv jv_sb(const jsb *b);
jv jv_bool(bool b);
jv jv_int(int64_t i);
jv jv_list(jctx *c, size_t n); /* n items, all undefined */

/* Python's code-point view of UTF-8 (an invalid byte counts as one code point). */
size_t utf8_len(const char *s, size_t n);
size_t utf8_offset(const char *s, size_t n, size_t cp); /* byte offset of code point cp */
/* str.strip / lstrip / rstrip: chars NULL strips Python's whitespace. */
jv str_strip(jv s, bool left, bool right, const jv *chars);

bool jv_truthy(jv v);
bool jv_is_num(jv v); /* int, float or bool (Python's numbers) */
double jv_num(jv v);
bool jv_eq(jv a, jv b);
int jv_cmp(jv a, jv b); /* -1, 0, 1; -2 where Python raises TypeError */

jdict *dict_new(jctx *c);
const jv *dict_get(const jdict *d, const char *k, size_t n);
void dict_put(jctx *c, jdict *d, jv key, jv val); /* key: a string */

/* Python's str(v) (undefined: ""), appended to b or as a value. */
void jv_put_str(jctx *c, jsb *b, jv v);
jv jv_to_str(jctx *c, jv v);
/* transformers' tojson: json.dumps(v, ensure_ascii=False, indent=indent (-1: None)). False, with
 * the offending type in *bad, for a value JSON cannot hold. */
bool jv_tojson(jctx *c, jsb *b, jv v, int indent, const char **bad);

#endif
