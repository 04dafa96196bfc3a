/* Evaluator of the Jinja subset: walks the tree from jinja_parse.c with the variables
 * transformers' apply_chat_template passes (messages, add_generation_prompt, bos_token,
 * eos_token, tools=None, documents=None) and its globals (raise_exception, strftime_now).
 *
 * State of one render (struct run): the arena every value lives in, the output buffer, a stack
 * of scopes (globals, the template's own, then one per for-loop iteration: a {% set %} inside a
 * loop is gone after the iteration, as in Jinja, hence namespace()), and the bounds counters
 * (steps, recursion depth, output bytes). A failure unwinds with longjmp (jinja_internal.h).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/text/jinja_internal.h"
#include "core/text/jinja_value.h"

#define MAX_SCOPES (JINJA_MAX_DEPTH + 2)
#define MAX_EVAL_DEPTH 256

typedef struct run {
    jctx c; /* first: a run is its own jctx */
    char *out;
    size_t out_n, out_cap;
    jdict *scopes[MAX_SCOPES];
    int n_scopes;
    size_t steps;
    int depth;
    int64_t now;
} run;

enum flow { FLOW_NEXT, FLOW_BREAK, FLOW_CONTINUE };

static jv eval(run *r, const jnode *e);

_Noreturn static void fail(run *r, const jnode *at, const char *what)
{
    jfail(&r->c, -EINVAL, at ? at->line : 0, "%s", what);
}

static void step(run *r, const jnode *at)
{
    if (++r->steps > JINJA_MAX_STEPS)
        jfail(&r->c, -E2BIG, at->line, "the template ran more than %u steps", JINJA_MAX_STEPS);
}

static void emit(run *r, const char *s, size_t n)
{
    if (r->out_n + n + 1 > r->out_cap) {
        if (r->out_n + n + 1 > JINJA_MAX_OUTPUT)
            jfail(&r->c, -E2BIG, 0, "the rendered text exceeds %u MiB", JINJA_MAX_OUTPUT >> 20);
        size_t cap = r->out_cap ? r->out_cap : 4096;
        while (cap < r->out_n + n + 1)
            cap *= 2;
        char *p = realloc(r->out, cap);
        if (!p)
            jfail(&r->c, -ENOMEM, 0, "out of memory");
        r->out = p;
        r->out_cap = cap;
    }
    memcpy(r->out + r->out_n, s, n);
    r->out_n += n;
    r->out[r->out_n] = '\0';
}

static jv undef(const char *name)
{
    jv v = {.kind = JV_UNDEF, .n = name ? strlen(name) : 0};
    v.s = name;
    return v;
}

/* Fails with "'x' is undefined" when v is undefined, as Jinja does when one is used. */
static jv defined(run *r, const jnode *at, jv v)
{
    if (v.kind == JV_UNDEF) {
        char msg[128];
        if (v.s)
            snprintf(msg, sizeof msg, "'%.*s' is undefined", (int)(v.n > 60 ? 60 : v.n), v.s);
        else
            snprintf(msg, sizeof msg, "a value is undefined");
        fail(r, at, msg);
    }
    return v;
}

static const char *type_name(jv v)
{
    static const char *const names[] = {"Undefined", "NoneType", "bool", "int",         "float",
                                        "str",       "list",     "dict", "LoopContext", "Macro"};
    if (v.kind == JV_DICT && v.d->is_namespace)
        return "Namespace";
    return names[v.kind];
}

_Noreturn static void type_error(run *r, const jnode *at, const char *what, jv a)
{
    char msg[128];
    snprintf(msg, sizeof msg, "%s: unsupported type %s", what, type_name(a));
    fail(r, at, msg);
}

/* --- variables and access ------------------------------------------------------------------- */

static jv lookup(run *r, const char *name)
{
    size_t n = strlen(name);
    for (int i = r->n_scopes - 1; i >= 0; i--) {
        const jv *v = dict_get(r->scopes[i], name, n);
        if (v)
            return *v;
    }
    return undef(name);
}

static void assign(run *r, const char *name, jv v)
{
    dict_put(&r->c, r->scopes[r->n_scopes - 1], jv_str(name, strlen(name)), v);
}

static void push_scope(run *r, const jnode *at)
{
    if (r->n_scopes == MAX_SCOPES)
        jfail(&r->c, -E2BIG, at->line, "loops nested deeper than %d", MAX_SCOPES - 2);
    r->scopes[r->n_scopes++] = dict_new(&r->c);
}

static jv loop_attr(const jloop *l, const char *name)
{
    size_t n = l->items->n, i = l->index0;
    if (!strcmp(name, "index0"))
        return jv_int((int64_t)i);
    if (!strcmp(name, "index"))
        return jv_int((int64_t)i + 1);
    if (!strcmp(name, "revindex"))
        return jv_int((int64_t)(n - i));
    if (!strcmp(name, "revindex0"))
        return jv_int((int64_t)(n - i - 1));
    if (!strcmp(name, "first"))
        return jv_bool(i == 0);
    if (!strcmp(name, "last"))
        return jv_bool(i + 1 == n);
    if (!strcmp(name, "length"))
        return jv_int((int64_t)n);
    if (!strcmp(name, "previtem"))
        return i > 0 ? l->items->v[i - 1] : undef("previtem");
    if (!strcmp(name, "nextitem"))
        return i + 1 < n ? l->items->v[i + 1] : undef("nextitem");
    return undef(name);
}

/* obj.name (Jinja: the attribute, else the item). */
static jv get_attr(run *r, const jnode *at, jv obj, const char *name)
{
    defined(r, at, obj);
    if (obj.kind == JV_DICT) {
        const jv *v = dict_get(obj.d, name, strlen(name));
        return v ? *v : undef(name);
    }
    if (obj.kind == JV_LOOP)
        return loop_attr(obj.loop, name);
    return undef(name);
}

/* Python's index normalization: false when out of range. */
static bool norm_index(int64_t *i, size_t n)
{
    if (*i < 0)
        *i += (int64_t)n;
    return *i >= 0 && (size_t)*i < n;
}

static jv get_item(run *r, const jnode *at, jv obj, jv key)
{
    defined(r, at, obj);
    if (obj.kind == JV_DICT && key.kind == JV_STR) {
        const jv *v = dict_get(obj.d, key.s, key.n);
        return v ? *v : undef(NULL);
    }
    if (obj.kind == JV_LOOP && key.kind == JV_STR) {
        char name[32];
        snprintf(name, sizeof name, "%.*s", (int)(key.n < 31 ? key.n : 31), key.s);
        return loop_attr(obj.loop, name);
    }
    if (key.kind != JV_INT && key.kind != JV_BOOL)
        return undef(NULL);
    int64_t i = key.kind == JV_INT ? key.i : key.b;
    if (obj.kind == JV_LIST)
        return norm_index(&i, obj.l->n) ? obj.l->v[i] : undef(NULL);
    if (obj.kind == JV_STR) {
        if (!norm_index(&i, utf8_len(obj.s, obj.n)))
            return undef(NULL);
        size_t a = utf8_offset(obj.s, obj.n, (size_t)i);
        size_t b = a + utf8_offset(obj.s + a, obj.n - a, 1);
        return jv_str(obj.s + a, b - a);
    }
    return undef(NULL);
}

/* Python's slice indices for a sequence of n items. */
static void slice_range(int64_t *start, int64_t *stop, int64_t step, bool has_start, bool has_stop,
                        size_t n)
{
    int64_t len = (int64_t)n;
    int64_t lo = step < 0 ? -1 : 0, hi = step < 0 ? len - 1 : len;
    if (!has_start)
        *start = step < 0 ? hi : lo;
    else {
        if (*start < 0)
            *start += len;
        *start = *start < lo ? lo : *start > hi ? hi : *start;
    }
    if (!has_stop)
        *stop = step < 0 ? lo : hi;
    else {
        if (*stop < 0)
            *stop += len;
        *stop = *stop < lo ? lo : *stop > hi ? hi : *stop;
    }
}

static int64_t slice_part(run *r, const jnode *e, bool *has, int64_t dflt)
{
    *has = false;
    if (!e)
        return dflt;
    jv v = eval(r, e);
    if (v.kind == JV_NONE)
        return dflt;
    if (v.kind != JV_INT)
        fail(r, e, "slice indices must be integers or none");
    *has = true;
    return v.i;
}

static jv get_slice(run *r, const jnode *e)
{
    jv obj = defined(r, e, eval(r, e->a));
    bool hs, he, hst;
    int64_t st = slice_part(r, e->kids[2], &hst, 1);
    int64_t a = slice_part(r, e->kids[0], &hs, 0), b = slice_part(r, e->kids[1], &he, 0);
    if (st == 0)
        fail(r, e, "slice step cannot be zero");
    if (obj.kind != JV_LIST && obj.kind != JV_STR)
        type_error(r, e, "slice", obj);
    size_t n = obj.kind == JV_LIST ? obj.l->n : utf8_len(obj.s, obj.n);
    slice_range(&a, &b, st, hs, he, n);
    size_t count = 0;
    for (int64_t i = a; st > 0 ? i < b : i > b; i += st)
        count++;
    if (obj.kind == JV_LIST) {
        jv out = jv_list(&r->c, count);
        for (size_t k = 0; k < count; k++)
            out.l->v[k] = obj.l->v[a + (int64_t)k * st];
        return out;
    }
    jsb sb = {0};
    for (size_t k = 0; k < count; k++) {
        size_t o = utf8_offset(obj.s, obj.n, (size_t)(a + (int64_t)k * st));
        sb_put(&r->c, &sb, obj.s + o, utf8_offset(obj.s + o, obj.n - o, 1));
    }
    return jv_sb(&sb);
}

/* --- operators ------------------------------------------------------------------------------ */

static jv concat_lists(run *r, jv a, jv b)
{
    jv out = jv_list(&r->c, a.l->n + b.l->n);
    if (a.l->n)
        memcpy(out.l->v, a.l->v, a.l->n * sizeof *a.l->v);
    if (b.l->n)
        memcpy(out.l->v + a.l->n, b.l->v, b.l->n * sizeof *b.l->v);
    return out;
}

static jv repeat(run *r, const jnode *e, jv s, jv times)
{
    int64_t k = times.kind == JV_INT ? times.i : times.b;
    jsb sb = {0};
    if (s.kind == JV_STR) {
        for (int64_t i = 0; i < k; i++) {
            step(r, e);
            sb_put(&r->c, &sb, s.s, s.n);
        }
        return jv_sb(&sb);
    }
    jv out = jv_list(&r->c, 0);
    for (int64_t i = 0; i < k; i++) {
        step(r, e);
        out = concat_lists(r, out, s);
    }
    return out;
}

static jv int_op(run *r, const jnode *e, int64_t a, int64_t b)
{
    int64_t v = 0;
    bool over = false;
    switch (e->op) {
    case OP_ADD:
        over = __builtin_add_overflow(a, b, &v);
        break;
    case OP_SUB:
        over = __builtin_sub_overflow(a, b, &v);
        break;
    case OP_MUL:
        over = __builtin_mul_overflow(a, b, &v);
        break;
    case OP_FLOORDIV:
    case OP_MOD:
        if (b == 0)
            fail(r, e, "integer division or modulo by zero");
        if (a == INT64_MIN && b == -1)
            over = true;
        else {
            int64_t q = a / b, m = a % b;
            if (m && ((m < 0) != (b < 0)))
                q--, m += b;
            v = e->op == OP_MOD ? m : q;
        }
        break;
    default: /* OP_POW with b >= 0 */
        v = 1;
        for (int64_t i = 0; i < b && !over; i++)
            over = __builtin_mul_overflow(v, a, &v);
    }
    if (over)
        fail(r, e, "integer overflow");
    return jv_int(v);
}

static jv float_op(run *r, const jnode *e, double a, double b)
{
    jv v = {.kind = JV_FLOAT};
    if ((e->op == OP_DIV || e->op == OP_FLOORDIV || e->op == OP_MOD) && b == 0)
        fail(r, e, "division by zero");
    switch (e->op) {
    case OP_ADD:
        v.f = a + b;
        break;
    case OP_SUB:
        v.f = a - b;
        break;
    case OP_MUL:
        v.f = a * b;
        break;
    case OP_DIV:
        v.f = a / b;
        break;
    case OP_FLOORDIV:
        v.f = floor(a / b);
        break;
    case OP_MOD:
        v.f = fmod(a, b);
        if (v.f != 0 && ((v.f < 0) != (b < 0)))
            v.f += b;
        break;
    default:
        v.f = pow(a, b);
    }
    return v;
}

static jv arith(run *r, const jnode *e, jv a, jv b)
{
    defined(r, e, a);
    defined(r, e, b);
    if (jv_is_num(a) && jv_is_num(b)) {
        if (a.kind != JV_FLOAT && b.kind != JV_FLOAT) { /* ints and bools */
            int64_t x = a.kind == JV_INT ? a.i : a.b, y = b.kind == JV_INT ? b.i : b.b;
            if (e->op != OP_DIV && !(e->op == OP_POW && y < 0))
                return int_op(r, e, x, y);
        }
        return float_op(r, e, jv_num(a), jv_num(b));
    }
    if (e->op == OP_ADD && a.kind == JV_STR && b.kind == JV_STR) {
        jsb sb = {0};
        sb_put(&r->c, &sb, a.s, a.n);
        sb_put(&r->c, &sb, b.s, b.n);
        return jv_sb(&sb);
    }
    if (e->op == OP_ADD && a.kind == JV_LIST && b.kind == JV_LIST)
        return concat_lists(r, a, b);
    if (e->op == OP_MUL && (a.kind == JV_STR || a.kind == JV_LIST) &&
        (b.kind == JV_INT || b.kind == JV_BOOL))
        return repeat(r, e, a, b);
    if (e->op == OP_MUL && (b.kind == JV_STR || b.kind == JV_LIST) &&
        (a.kind == JV_INT || a.kind == JV_BOOL))
        return repeat(r, e, b, a);
    char msg[128];
    snprintf(msg, sizeof msg, "unsupported operand types for an operator: %s and %s", type_name(a),
             type_name(b));
    fail(r, e, msg);
}

static jv eval_bin(run *r, const jnode *e)
{
    jv a = eval(r, e->a), b = eval(r, e->b);
    if (e->op != OP_CONCAT)
        return arith(r, e, a, b);
    jsb sb = {0};
    jv_put_str(&r->c, &sb, a);
    jv_put_str(&r->c, &sb, b);
    return jv_sb(&sb);
}

static bool contains(run *r, const jnode *e, jv item, jv seq)
{
    if (seq.kind == JV_STR) {
        if (item.kind != JV_STR)
            type_error(r, e, "'in <string>' needs a string on the left", item);
        return item.n == 0 || memmem(seq.s, seq.n, item.s, item.n) != NULL;
    }
    if (seq.kind == JV_LIST) {
        for (size_t i = 0; i < seq.l->n; i++)
            if (jv_eq(item, seq.l->v[i]))
                return true;
        return false;
    }
    if (seq.kind == JV_DICT)
        return item.kind == JV_STR && dict_get(seq.d, item.s, item.n) != NULL;
    if (seq.kind == JV_UNDEF)
        return false;
    type_error(r, e, "'in'", seq);
}

static jv eval_cmp(run *r, const jnode *e)
{
    jv a = eval(r, e->a), b = eval(r, e->b);
    if (e->op == OP_EQ || e->op == OP_NE)
        return jv_bool(jv_eq(a, b) == (e->op == OP_EQ));
    if (e->op == OP_IN || e->op == OP_NOTIN)
        return jv_bool(contains(r, e, a, b) == (e->op == OP_IN));
    int c = jv_cmp(defined(r, e, a), defined(r, e, b));
    if (c == -2) {
        char msg[128];
        snprintf(msg, sizeof msg, "cannot order %s and %s", type_name(a), type_name(b));
        fail(r, e, msg);
    }
    return jv_bool(e->op == OP_LT   ? c < 0
                   : e->op == OP_LE ? c <= 0
                   : e->op == OP_GT ? c > 0
                                    : c >= 0);
}

/* --- calls: arguments ----------------------------------------------------------------------- */

/* The positional argument i, or the keyword argument kw, or NULL. */
static const jnode *arg_node(const jnode *e, size_t i, const char *kw)
{
    size_t pos = 0;
    for (size_t k = 0; k < e->n_kids; k++) {
        if (!e->kw[k] && pos++ == i)
            return e->kids[k];
        if (e->kw[k] && kw && !strcmp(e->kw[k], kw))
            return e->kids[k];
    }
    return NULL;
}

static jv arg(run *r, const jnode *e, size_t i, const char *kw, jv dflt)
{
    const jnode *a = arg_node(e, i, kw);
    return a ? eval(r, a) : dflt;
}

static jv str_arg(run *r, const jnode *e, size_t i, const char *kw, const char *what)
{
    jv v = arg(r, e, i, kw, undef(NULL));
    if (v.kind != JV_STR) {
        char msg[128];
        snprintf(msg, sizeof msg, "%s: argument %zu must be a string", what, i + 1);
        fail(r, e, msg);
    }
    return v;
}

/* The items of an iterable: a list's, a dict's keys, a string's characters. */
static jlist *items_of(run *r, const jnode *e, jv v)
{
    if (v.kind == JV_LIST)
        return v.l;
    if (v.kind == JV_UNDEF)
        return jv_list(&r->c, 0).l;
    if (v.kind == JV_DICT && !v.d->is_namespace) {
        jv out = jv_list(&r->c, v.d->n);
        memcpy(out.l->v, v.d->keys, v.d->n * sizeof *v.d->keys);
        return out.l;
    }
    if (v.kind == JV_STR) {
        jv out = jv_list(&r->c, utf8_len(v.s, v.n));
        for (size_t i = 0, o = 0; i < out.l->n; i++) {
            size_t k = utf8_offset(v.s + o, v.n - o, 1);
            out.l->v[i] = jv_str(v.s + o, k);
            o += k;
        }
        return out.l;
    }
    type_error(r, e, "iteration", v);
}

static jv dict_items(run *r, jv d)
{
    jv out = jv_list(&r->c, d.d->n);
    for (size_t i = 0; i < d.d->n; i++) {
        jv pair = jv_list(&r->c, 2);
        pair.l->tuple = true;
        pair.l->v[0] = d.d->keys[i];
        pair.l->v[1] = d.d->vals[i];
        out.l->v[i] = pair;
    }
    return out;
}

/* --- tests ---------------------------------------------------------------------------------- */

/* Applies test id to v; args from e starting at positional index first. */
static bool apply_test(run *r, const jnode *e, int id, jv v, size_t first)
{
    switch (id) {
    case T_DEFINED:
        return v.kind != JV_UNDEF;
    case T_UNDEFINED:
        return v.kind == JV_UNDEF;
    case T_NONE:
        return v.kind == JV_NONE;
    case T_STRING:
        return v.kind == JV_STR;
    case T_NUMBER:
        return jv_is_num(v);
    case T_INTEGER:
        return v.kind == JV_INT;
    case T_FLOAT:
        return v.kind == JV_FLOAT;
    case T_MAPPING:
        return v.kind == JV_DICT && !v.d->is_namespace;
    case T_ITERABLE:
        return v.kind == JV_STR || v.kind == JV_LIST || v.kind == JV_UNDEF ||
               (v.kind == JV_DICT && !v.d->is_namespace);
    case T_SEQUENCE:
        return v.kind == JV_STR || v.kind == JV_LIST || (v.kind == JV_DICT && !v.d->is_namespace);
    case T_BOOLEAN:
        return v.kind == JV_BOOL;
    case T_TRUE:
    case T_FALSE:
        return v.kind == JV_BOOL && v.b == (id == T_TRUE);
    case T_EQ:
    case T_NE:
        return jv_eq(v, arg(r, e, first, NULL, undef(NULL))) == (id == T_EQ);
    case T_ODD:
    case T_EVEN:
        if (v.kind != JV_INT)
            type_error(r, e, "odd/even test", v);
        return (v.i % 2 != 0) == (id == T_ODD);
    default: /* T_IN */
        return contains(r, e, v, arg(r, e, first, NULL, undef(NULL)));
    }
}

/* A test named by a string argument (select, reject, selectattr, rejectattr). */
static int test_by_name(run *r, const jnode *e, jv name)
{
    int id = name.kind == JV_STR ? jinja_test_id(name.s, name.n) : -1;
    if (id < 0)
        fail(r, e, "unknown test in a select/reject filter");
    return id;
}

/* --- filters -------------------------------------------------------------------------------- */

/* jinja2's select/reject/map read nothing from a false value (none included). */
static jlist *items_if_any(run *r, const jnode *e, jv v)
{
    return jv_truthy(v) ? items_of(r, e, v) : jv_list(&r->c, 0).l;
}

static jv f_select(run *r, const jnode *e, jv v, bool attr, bool keep)
{
    jlist *in = items_if_any(r, e, v);
    jv name = attr ? str_arg(r, e, 0, NULL, "selectattr") : undef(NULL);
    size_t t = attr ? 1 : 0;
    const jnode *tn = arg_node(e, t, NULL);
    int id = tn ? test_by_name(r, e, eval(r, tn)) : -1;
    jv out = jv_list(&r->c, in->n);
    out.l->n = 0;
    for (size_t i = 0; i < in->n; i++) {
        step(r, e);
        jv x = in->v[i];
        jv subject = attr ? get_item(r, e, x, name) : x;
        bool ok = id < 0 ? jv_truthy(subject) : apply_test(r, e, id, subject, t + 1);
        if (ok == keep)
            out.l->v[out.l->n++] = x;
    }
    return out;
}

static jv f_join(run *r, const jnode *e, jv v)
{
    jlist *in = items_of(r, e, v);
    jv sep = arg(r, e, 0, "d", jv_str("", 0));
    jv attr = arg(r, e, 1, "attribute", undef(NULL));
    jsb sb = {0};
    sb_put(&r->c, &sb, "", 0);
    for (size_t i = 0; i < in->n; i++) {
        step(r, e);
        if (i)
            jv_put_str(&r->c, &sb, sep);
        jv x = attr.kind == JV_UNDEF ? in->v[i] : get_item(r, e, in->v[i], attr);
        jv_put_str(&r->c, &sb, x);
    }
    return jv_sb(&sb);
}

static jv f_map(run *r, const jnode *e, jv v)
{
    jv attr = arg(r, e, 0, "attribute", undef(NULL));
    if (arg_node(e, 0, NULL) || attr.kind != JV_STR)
        fail(r, e, "only map(attribute='name') is supported");
    jv dflt = arg(r, e, 1, "default", undef(NULL));
    jlist *in = items_if_any(r, e, v);
    jv out = jv_list(&r->c, in->n);
    for (size_t i = 0; i < in->n; i++) {
        jv x = get_item(r, e, in->v[i], attr);
        out.l->v[i] = x.kind == JV_UNDEF && dflt.kind != JV_UNDEF ? dflt : x;
    }
    return out;
}

static jv f_tojson(run *r, const jnode *e, jv v)
{
    jv indent = arg(r, e, 0, "indent", (jv){.kind = JV_NONE});
    if (indent.kind != JV_NONE && (indent.kind != JV_INT || indent.i < 0 || indent.i > 64))
        fail(r, e, "tojson: indent must be none or an integer from 0 to 64");
    jsb sb = {0};
    const char *bad = NULL;
    if (!jv_tojson(&r->c, &sb, v, indent.kind == JV_INT ? (int)indent.i : -1, &bad)) {
        char msg[96];
        snprintf(msg, sizeof msg, "tojson: Object of type %s is not JSON serializable", bad);
        fail(r, e, msg);
    }
    return jv_sb(&sb);
}

static jv map_chars(run *r, jv s, int mode)
{
    jv out = jv_copy_str(&r->c, s.s, s.n);
    char *p = (char *)out.s;
    bool start = true;
    for (size_t i = 0; i < s.n; i++) {
        char ch = p[i];
        bool alpha = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z');
        bool up = mode == 'U' || ((mode == 'T' || mode == 'C') && start);
        if (alpha && up && ch >= 'a')
            p[i] = (char)(ch - 32);
        else if (alpha && !up && ch <= 'Z' && mode != 'U')
            p[i] = (char)(ch + 32);
        start = mode == 'T' ? !alpha : false;
    }
    return out;
}

static jv f_unique(run *r, const jnode *e, jv v)
{
    jlist *in = items_of(r, e, v);
    jv out = jv_list(&r->c, in->n);
    out.l->n = 0;
    for (size_t i = 0; i < in->n; i++) {
        bool seen = false;
        for (size_t k = 0; k < out.l->n && !seen; k++) {
            step(r, e);
            seen = jv_eq(out.l->v[k], in->v[i]);
        }
        if (!seen)
            out.l->v[out.l->n++] = in->v[i];
    }
    return out;
}

static jv str_replace(run *r, const jnode *e, jv s, jv from, jv to, int64_t count)
{
    jsb sb = {0};
    sb_put(&r->c, &sb, "", 0);
    size_t i = 0;
    for (int64_t done = 0; count < 0 || done < count; done++) {
        step(r, e);
        const char *hit = from.n ? memmem(s.s + i, s.n - i, from.s, from.n) : NULL;
        if (!from.n && i <= s.n) { /* Python inserts `to` between characters */
            sb_put(&r->c, &sb, to.s, to.n);
            if (i == s.n)
                return jv_sb(&sb);
            size_t k = utf8_offset(s.s + i, s.n - i, 1);
            sb_put(&r->c, &sb, s.s + i, k);
            i += k;
            continue;
        }
        if (!hit)
            break;
        sb_put(&r->c, &sb, s.s + i, (size_t)(hit - (s.s + i)));
        sb_put(&r->c, &sb, to.s, to.n);
        i = (size_t)(hit - s.s) + from.n;
    }
    sb_put(&r->c, &sb, s.s + i, s.n - i);
    return jv_sb(&sb);
}

static jv need_str(run *r, const jnode *e, jv v, const char *what)
{
    if (v.kind != JV_STR)
        type_error(r, e, what, defined(r, e, v));
    return v;
}

static jv first_last(run *r, const jnode *e, jv v, bool last)
{
    jlist *in = items_of(r, e, v);
    return in->n ? in->v[last ? in->n - 1 : 0] : undef(NULL);
}

static jv to_int(jv v)
{
    if (v.kind == JV_INT || v.kind == JV_BOOL)
        return jv_int(v.kind == JV_INT ? v.i : v.b);
    if (v.kind == JV_FLOAT && isfinite(v.f) && fabs(v.f) < 9e18)
        return jv_int((int64_t)v.f);
    if (v.kind == JV_STR) {
        char buf[32], *end;
        snprintf(buf, sizeof buf, "%.*s", (int)(v.n < 31 ? v.n : 31), v.s);
        long long x = strtoll(buf, &end, 10);
        if (end != buf && !*end && v.n < 31)
            return jv_int(x);
    }
    return jv_int(0);
}

/* A sort key as jinja2 makes it: the item (or its attribute / pair member), strings lowered
 * unless case_sensitive (ASCII only). */
static jv sort_key(run *r, const jnode *e, jv x, jv attr, int member, bool case_sensitive)
{
    if (member >= 0)
        x = x.l->v[member];
    else if (attr.kind == JV_STR)
        x = get_item(r, e, x, attr);
    if (case_sensitive || x.kind != JV_STR)
        return x;
    jv low = jv_copy_str(&r->c, x.s, x.n);
    for (size_t i = 0; i < low.n; i++)
        if (low.s[i] >= 'A' && low.s[i] <= 'Z')
            ((char *)low.s)[i] = (char)(low.s[i] + 32);
    return low;
}

/* Python's sorted(): stable (an insertion sort, bounded by the step count). */
static void sort_items(run *r, const jnode *e, jv *v, jv *keys, size_t n, bool reverse)
{
    for (size_t i = 1; i < n; i++) {
        jv x = v[i], k = keys[i];
        size_t j = i;
        for (; j > 0; j--) {
            step(r, e);
            int c = jv_cmp(keys[j - 1], k);
            if (c == -2)
                fail(r, e, "sort: items that cannot be ordered");
            if (reverse ? c >= 0 : c <= 0)
                break;
            v[j] = v[j - 1];
            keys[j] = keys[j - 1];
        }
        v[j] = x;
        keys[j] = k;
    }
}

/* sort(reverse, case_sensitive, attribute) and dictsort(case_sensitive, by, reverse). */
static jv f_sort(run *r, const jnode *e, jv v)
{
    bool dict = e->op == F_DICTSORT;
    if (dict && v.kind != JV_DICT)
        type_error(r, e, "dictsort", v);
    jlist *in = dict ? dict_items(r, v).l : items_of(r, e, defined(r, e, v));
    bool reverse = jv_truthy(arg(r, e, dict ? 2 : 0, "reverse", jv_bool(false)));
    bool cs = jv_truthy(arg(r, e, dict ? 0 : 1, "case_sensitive", jv_bool(false)));
    jv attr = dict ? undef(NULL) : arg(r, e, 2, "attribute", undef(NULL));
    jv by = dict ? arg(r, e, 1, "by", jv_str("key", 3)) : undef(NULL);
    int member = !dict ? -1 : by.kind == JV_STR && by.n == 5 && !memcmp(by.s, "value", 5) ? 1 : 0;
    jv out = jv_list(&r->c, in->n);
    jv *keys = jalloc(&r->c, (in->n + 1) * sizeof *keys);
    for (size_t i = 0; i < in->n; i++) {
        out.l->v[i] = in->v[i];
        keys[i] = sort_key(r, e, in->v[i], attr, member, cs);
    }
    sort_items(r, e, out.l->v, keys, in->n, reverse);
    return out;
}

static jv eval_filter(run *r, const jnode *e)
{
    jv v = eval(r, e->a);
    step(r, e);
    switch (e->op) {
    case F_TRIM:
        return str_strip(jv_to_str(&r->c, v), true, true, NULL);
    case F_LENGTH:
        if (v.kind == JV_STR)
            return jv_int((int64_t)utf8_len(v.s, v.n));
        if (v.kind == JV_DICT)
            return jv_int((int64_t)v.d->n);
        return jv_int((int64_t)items_of(r, e, defined(r, e, v))->n);
    case F_TOJSON:
        return f_tojson(r, e, v);
    case F_UPPER:
    case F_LOWER:
    case F_TITLE:
    case F_CAPITALIZE:
        return map_chars(r, jv_to_str(&r->c, v),
                         "ULTC"[e->op == F_UPPER   ? 0
                                : e->op == F_LOWER ? 1
                                : e->op == F_TITLE ? 2
                                                   : 3]);
    case F_DEFAULT: {
        bool boolean = jv_truthy(arg(r, e, 1, "boolean", jv_bool(false)));
        bool use = v.kind == JV_UNDEF || (boolean && !jv_truthy(v));
        return use ? arg(r, e, 0, "default_value", jv_str("", 0)) : v;
    }
    case F_ITEMS:
        if (v.kind == JV_UNDEF)
            return jv_list(&r->c, 0);
        if (v.kind != JV_DICT)
            type_error(r, e, "items", v);
        return dict_items(r, v);
    case F_JOIN:
        return f_join(r, e, v);
    case F_LIST: {
        jlist *in = items_of(r, e, defined(r, e, v));
        jv out = jv_list(&r->c, in->n);
        if (in->n)
            memcpy(out.l->v, in->v, in->n * sizeof *in->v);
        return out;
    }
    case F_STRING:
        return jv_to_str(&r->c, v);
    case F_FIRST:
    case F_LAST:
        return first_last(r, e, v, e->op == F_LAST);
    case F_REJECT:
    case F_SELECT:
        return f_select(r, e, v, false, e->op == F_SELECT);
    case F_SELECTATTR:
    case F_REJECTATTR:
        return f_select(r, e, v, true, e->op == F_SELECTATTR);
    case F_MAP:
        return f_map(r, e, v);
    case F_REPLACE:
        return str_replace(r, e, jv_to_str(&r->c, v), str_arg(r, e, 0, "old", "replace"),
                           str_arg(r, e, 1, "new", "replace"),
                           to_int(arg(r, e, 2, "count", jv_int(-1))).i);
    case F_INT:
        return to_int(v);
    case F_SAFE: /* no autoescaping: markup is plain text */
        return v;
    case F_SORT:
    case F_DICTSORT:
        return f_sort(r, e, v);
    case F_UNIQUE:
        return f_unique(r, e, v);
    case F_REVERSE: {
        if (v.kind == JV_STR) {
            jlist *chars = items_of(r, e, v);
            jsb sb = {0};
            sb_put(&r->c, &sb, "", 0);
            for (size_t i = chars->n; i-- > 0;)
                sb_put(&r->c, &sb, chars->v[i].s, chars->v[i].n);
            return jv_sb(&sb);
        }
        jlist *in = items_of(r, e, defined(r, e, v));
        jv out = jv_list(&r->c, in->n);
        for (size_t i = 0; i < in->n; i++)
            out.l->v[i] = in->v[in->n - 1 - i];
        return out;
    }
    default: /* F_ABS */
        if (v.kind == JV_INT && v.i != INT64_MIN)
            return jv_int(v.i < 0 ? -v.i : v.i);
        if (v.kind == JV_FLOAT)
            return (jv){.kind = JV_FLOAT, .f = fabs(v.f)};
        type_error(r, e, "abs", v);
    }
}

/* --- methods and functions ------------------------------------------------------------------ */

static jv str_split(run *r, const jnode *e, jv s)
{
    jv sep = arg(r, e, 0, "sep", (jv){.kind = JV_NONE});
    int64_t max = to_int(arg(r, e, 1, "maxsplit", jv_int(-1))).i;
    jv out = jv_list(&r->c, 0);
    jv one = jv_list(&r->c, 1);
    size_t i = 0;
    if (sep.kind == JV_STR && sep.n == 0)
        fail(r, e, "split: empty separator");
    for (int64_t done = 0;; done++) {
        step(r, e);
        if (sep.kind != JV_STR) { /* whitespace runs, no empty pieces */
            jv rest = str_strip(jv_str(s.s + i, s.n - i), true, false, NULL);
            i = s.n - rest.n;
            if (i == s.n)
                break;
        }
        const char *hit = NULL;
        size_t skip = 0;
        if (max < 0 || done < max) {
            if (sep.kind == JV_STR) {
                hit = memmem(s.s + i, s.n - i, sep.s, sep.n);
                skip = sep.n;
            } else {
                for (size_t k = i; k < s.n && !hit; k++)
                    if (strchr(" \t\n\r\f\v", s.s[k]) && s.s[k])
                        hit = s.s + k, skip = 1;
            }
        }
        size_t end = hit ? (size_t)(hit - s.s) : s.n;
        jv piece = jv_str(s.s + i, end - i);
        if (!hit && sep.kind != JV_STR)
            piece = str_strip(piece, false, true, NULL);
        one.l->v[0] = piece;
        out = concat_lists(r, out, one);
        if (!hit)
            break;
        i = end + skip;
    }
    return out;
}

static jv eval_str_method(run *r, const jnode *e, jv s)
{
    switch (e->op) {
    case M_STRIP:
    case M_LSTRIP:
    case M_RSTRIP: {
        jv chars = arg(r, e, 0, "chars", (jv){.kind = JV_NONE});
        if (chars.kind != JV_NONE)
            need_str(r, e, chars, "strip");
        return str_strip(s, e->op != M_RSTRIP, e->op != M_LSTRIP,
                         chars.kind == JV_STR ? &chars : NULL);
    }
    case M_UPPER:
    case M_LOWER:
    case M_TITLE:
    case M_CAPITALIZE:
        return map_chars(r, s,
                         "ULTC"[e->op == M_UPPER   ? 0
                                : e->op == M_LOWER ? 1
                                : e->op == M_TITLE ? 2
                                                   : 3]);
    case M_STARTSWITH:
    case M_ENDSWITH: {
        jv p = str_arg(r, e, 0, NULL, e->name);
        if (p.n > s.n)
            return jv_bool(false);
        return jv_bool(!memcmp(e->op == M_STARTSWITH ? s.s : s.s + s.n - p.n, p.s, p.n));
    }
    case M_REPLACE:
        return str_replace(r, e, s, str_arg(r, e, 0, NULL, "replace"),
                           str_arg(r, e, 1, NULL, "replace"),
                           to_int(arg(r, e, 2, "count", jv_int(-1))).i);
    case M_SPLIT:
        return str_split(r, e, s);
    default: {
        char msg[96];
        snprintf(msg, sizeof msg, "'str' object has no method '%s'", e->name);
        fail(r, e, msg);
    }
    }
}

static jv eval_method(run *r, const jnode *e)
{
    jv obj = defined(r, e, eval(r, e->a));
    step(r, e);
    if (obj.kind == JV_STR)
        return eval_str_method(r, e, obj);
    if (obj.kind == JV_DICT && !obj.d->is_namespace) {
        if (e->op == M_ITEMS)
            return dict_items(r, obj);
        if (e->op == M_KEYS)
            return (jv){.kind = JV_LIST, .l = items_of(r, e, obj)};
        if (e->op == M_VALUES) {
            jv out = jv_list(&r->c, obj.d->n);
            if (obj.d->n)
                memcpy(out.l->v, obj.d->vals, obj.d->n * sizeof *obj.d->vals);
            return out;
        }
        if (e->op == M_GET) {
            jv k = arg(r, e, 0, NULL, undef(NULL));
            const jv *v = k.kind == JV_STR ? dict_get(obj.d, k.s, k.n) : NULL;
            return v ? *v : arg(r, e, 1, NULL, (jv){.kind = JV_NONE});
        }
    }
    char msg[96];
    snprintf(msg, sizeof msg, "'%s' object has no method '%s'", type_name(obj), e->name);
    fail(r, e, msg);
}

static jv fn_namespace(run *r, const jnode *e)
{
    jv ns = {.kind = JV_DICT, .d = dict_new(&r->c)};
    ns.d->is_namespace = true;
    for (size_t k = 0; k < e->n_kids; k++) {
        if (!e->kw[k])
            fail(r, e, "namespace() takes keyword arguments only");
        dict_put(&r->c, ns.d, jv_str(e->kw[k], strlen(e->kw[k])), eval(r, e->kids[k]));
    }
    return ns;
}

static jv fn_strftime(run *r, const jnode *e)
{
    jv f = str_arg(r, e, 0, NULL, "strftime_now");
    char fmt[128], buf[256];
    if (f.n >= sizeof fmt)
        fail(r, e, "strftime_now: format too long");
    memcpy(fmt, f.s, f.n);
    fmt[f.n] = '\0';
    time_t t = (time_t)r->now;
    struct tm tm;
    gmtime_r(&t, &tm);
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    size_t n = strftime(buf, sizeof buf, fmt, &tm); /* the template's format: no arguments read */
#pragma GCC diagnostic pop
    return jv_copy_str(&r->c, buf, n);
}

static jv fn_range(run *r, const jnode *e)
{
    jv a = arg(r, e, 0, NULL, undef(NULL)), b = arg(r, e, 1, NULL, undef(NULL));
    jv s = arg(r, e, 2, NULL, jv_int(1));
    if (a.kind != JV_INT || (b.kind != JV_INT && b.kind != JV_UNDEF) || s.kind != JV_INT ||
        s.i == 0)
        fail(r, e, "range() takes integer arguments and a nonzero step");
    int64_t start = b.kind == JV_UNDEF ? 0 : a.i, stop = b.kind == JV_UNDEF ? a.i : b.i;
    size_t n = 0;
    for (int64_t i = start; s.i > 0 ? i < stop : i > stop; i += s.i, n++)
        step(r, e);
    jv out = jv_list(&r->c, n);
    for (size_t k = 0; k < n; k++)
        out.l->v[k] = jv_int(start + (int64_t)k * s.i);
    return out;
}

static int exec_body(run *r, const jnode *body);

/* Runs body, returning what it output instead of emitting it (macros, {% set x %}). */
static jv captured(run *r, const jnode *body)
{
    size_t start = r->out_n;
    exec_body(r, body);
    jv v = jv_copy_str(&r->c, r->out + start, r->out_n - start);
    r->out_n = start;
    r->out[start] = '\0';
    return v;
}

/* The values of a macro's parameters at a call: positional, by keyword, else the default
 * (evaluated later, in the macro's scope; NULL here). */
static jv *macro_args(run *r, const jnode *e, const jnode *def, bool *given)
{
    jv *vals = jalloc(&r->c, (def->n_kids + 1) * sizeof *vals);
    size_t pos = 0;
    for (size_t k = 0; k < e->n_kids; k++) {
        size_t i = 0;
        if (e->kw[k])
            while (i < def->n_kids && strcmp(def->kw[i], e->kw[k]) != 0)
                i++;
        else
            i = pos++;
        if (i >= def->n_kids) {
            char msg[128];
            snprintf(msg, sizeof msg, "macro '%s' takes %zu arguments%s%s", def->name, def->n_kids,
                     e->kw[k] ? ", none named " : "", e->kw[k] ? e->kw[k] : "");
            fail(r, e, msg);
        }
        vals[i] = eval(r, e->kids[k]);
        given[i] = true;
    }
    return vals;
}

/* A macro runs in a scope of its own over the template's (not the caller's loop scopes), and
 * returns its output. */
static jv call_macro(run *r, const jnode *e)
{
    jv m = defined(r, e, lookup(r, e->name));
    if (m.kind != JV_MACRO)
        type_error(r, e, "a call", m);
    const jnode *def = m.macro;
    bool *given = jalloc(&r->c, def->n_kids + 1);
    jv *vals = macro_args(r, e, def, given);
    jdict *saved[MAX_SCOPES];
    int n_saved = r->n_scopes;
    memcpy(saved, r->scopes, sizeof saved);
    r->n_scopes = 2;
    push_scope(r, e);
    for (size_t i = 0; i < def->n_kids; i++) {
        jv v = given[i] ? vals[i] : def->kids[i] ? eval(r, def->kids[i]) : undef(def->kw[i]);
        assign(r, def->kw[i], v);
    }
    jv out = captured(r, def->c);
    memcpy(r->scopes, saved, sizeof saved);
    r->n_scopes = n_saved;
    return out;
}

static jv eval_call(run *r, const jnode *e)
{
    step(r, e);
    if (e->op == FN_MACRO)
        return call_macro(r, e);
    if (e->op == FN_RAISE) { /* the message verbatim, so that clients see the template's words */
        if (e->n_kids != 1 || e->kw[0])
            fail(r, e, "raise_exception() takes one positional argument");
        jv msg = jv_to_str(&r->c, eval(r, e->kids[0]));
        if (!msg.n)
            fail(r, e, "raise_exception('') (the template raised an empty message)");
        jfail(&r->c, -EINVAL, 0, "%.*s", (int)(msg.n > 200 ? 200 : msg.n), msg.s);
    }
    if (e->op == FN_NAMESPACE)
        return fn_namespace(r, e);
    if (e->op == FN_STRFTIME_NOW)
        return fn_strftime(r, e);
    return fn_range(r, e);
}

/* --- expressions ---------------------------------------------------------------------------- */

static jv eval_collection(run *r, const jnode *e)
{
    if (e->kind == JN_LIST) {
        jv out = jv_list(&r->c, e->n_kids);
        out.l->tuple = e->neg;
        for (size_t i = 0; i < e->n_kids; i++)
            out.l->v[i] = eval(r, e->kids[i]);
        return out;
    }
    jv d = {.kind = JV_DICT, .d = dict_new(&r->c)};
    for (size_t i = 0; i + 1 < e->n_kids; i += 2) {
        jv k = eval(r, e->kids[i]);
        if (k.kind != JV_STR)
            fail(r, e, "dictionary keys must be strings");
        dict_put(&r->c, d.d, k, eval(r, e->kids[i + 1]));
    }
    return d;
}

static jv eval_inner(run *r, const jnode *e)
{
    switch (e->kind) {
    case JN_CONST:
        return e->val;
    case JN_NAME:
        return lookup(r, e->name);
    case JN_ATTR:
        return get_attr(r, e, eval(r, e->a), e->name);
    case JN_ITEM: {
        jv obj = eval(r, e->a);
        return get_item(r, e, obj, eval(r, e->b));
    }
    case JN_SLICE:
        return get_slice(r, e);
    case JN_BIN:
        return eval_bin(r, e);
    case JN_CMP:
        return eval_cmp(r, e);
    case JN_NOT:
        return jv_bool(!jv_truthy(eval(r, e->a)));
    case JN_NEG: {
        jv v = defined(r, e, eval(r, e->a));
        if (v.kind == JV_FLOAT)
            return (jv){.kind = JV_FLOAT, .f = -v.f};
        if (v.kind != JV_INT || v.i == INT64_MIN)
            type_error(r, e, "unary minus", v);
        return jv_int(-v.i);
    }
    case JN_AND: {
        jv a = eval(r, e->a);
        return jv_truthy(a) ? eval(r, e->b) : a;
    }
    case JN_OR: {
        jv a = eval(r, e->a);
        return jv_truthy(a) ? a : eval(r, e->b);
    }
    case JN_COND:
        if (jv_truthy(eval(r, e->a)))
            return eval(r, e->b);
        return e->c ? eval(r, e->c) : undef(NULL);
    case JN_LIST:
    case JN_DICT:
        return eval_collection(r, e);
    case JN_CALL:
        return eval_call(r, e);
    case JN_METHOD:
        return eval_method(r, e);
    case JN_FILTER:
        return eval_filter(r, e);
    default: /* JN_TEST */
        return jv_bool(apply_test(r, e, e->op, eval(r, e->a), 0) != e->neg);
    }
}

static jv eval(run *r, const jnode *e)
{
    if (++r->depth > MAX_EVAL_DEPTH)
        jfail(&r->c, -E2BIG, e->line, "expression nested deeper than %d", MAX_EVAL_DEPTH);
    jv v = eval_inner(r, e);
    r->depth--;
    return v;
}

/* --- statements ----------------------------------------------------------------------------- */

static int exec(run *r, const jnode *s);

static int exec_body(run *r, const jnode *body)
{
    for (size_t i = 0; i < body->n_kids; i++) {
        int f = exec(r, body->kids[i]);
        if (f != FLOW_NEXT)
            return f;
    }
    return FLOW_NEXT;
}

static void bind_target(run *r, const jnode *s, jv item)
{
    if (!s->name2) {
        assign(r, s->name, item);
        return;
    }
    if (item.kind != JV_LIST || item.l->n != 2)
        fail(r, s, "cannot unpack the item into two loop variables");
    assign(r, s->name, item.l->v[0]);
    assign(r, s->name2, item.l->v[1]);
}

/* The loop's items after its "if" filter (which sees the loop variables, not `loop`). */
static jlist *loop_items(run *r, const jnode *s)
{
    jv seq = eval(r, s->a);
    if (seq.kind == JV_NONE)
        fail(r, s, "'NoneType' object is not iterable");
    jlist *all = items_of(r, s, seq);
    if (!s->b)
        return all;
    jv out = jv_list(&r->c, all->n);
    out.l->n = 0;
    push_scope(r, s);
    for (size_t i = 0; i < all->n; i++) {
        step(r, s);
        r->scopes[r->n_scopes - 1]->n = 0;
        bind_target(r, s, all->v[i]);
        if (jv_truthy(eval(r, s->b)))
            out.l->v[out.l->n++] = all->v[i];
    }
    r->n_scopes--;
    return out.l;
}

static int exec_for(run *r, const jnode *s)
{
    jlist *items = loop_items(r, s);
    if (!items->n)
        return s->d ? exec_body(r, s->d) : FLOW_NEXT;
    jloop *l = jalloc(&r->c, sizeof *l);
    l->items = items;
    push_scope(r, s);
    jdict *scope = r->scopes[r->n_scopes - 1];
    for (size_t i = 0; i < items->n; i++) {
        step(r, s);
        scope->n = 0; /* a fresh scope per iteration; no value refers to a scope */
        l->index0 = i;
        bind_target(r, s, items->v[i]);
        assign(r, "loop", (jv){.kind = JV_LOOP, .loop = l});
        if (exec_body(r, s->c) == FLOW_BREAK)
            break;
    }
    r->n_scopes--;
    return FLOW_NEXT;
}

static void exec_set(run *r, const jnode *s)
{
    jv v = s->b ? captured(r, s->b) : eval(r, s->a);
    if (!s->name2) {
        assign(r, s->name, v);
        return;
    }
    jv ns = lookup(r, s->name);
    if (ns.kind != JV_DICT || !ns.d->is_namespace)
        fail(r, s, "{% set x.attr = ... %} needs x to be a namespace()");
    dict_put(&r->c, ns.d, jv_str(s->name2, strlen(s->name2)), v);
}

static int exec(run *r, const jnode *s)
{
    step(r, s);
    switch (s->kind) {
    case JN_TEXT:
        emit(r, s->val.s, s->val.n);
        return FLOW_NEXT;
    case JN_OUT: {
        jv v = eval(r, s->a);
        if (v.kind == JV_STR) {
            emit(r, v.s, v.n);
        } else {
            jsb sb = {0};
            jv_put_str(&r->c, &sb, v);
            emit(r, sb.p ? sb.p : "", sb.n);
        }
        return FLOW_NEXT;
    }
    case JN_IF:
        if (jv_truthy(eval(r, s->a)))
            return exec_body(r, s->b);
        if (!s->c)
            return FLOW_NEXT;
        return s->c->kind == JN_IF ? exec(r, s->c) : exec_body(r, s->c);
    case JN_FOR:
        return exec_for(r, s);
    case JN_SET:
        exec_set(r, s);
        return FLOW_NEXT;
    case JN_MACRO:
        assign(r, s->name, (jv){.kind = JV_MACRO, .macro = s});
        return FLOW_NEXT;
    case JN_BREAK:
        return FLOW_BREAK;
    case JN_CONTINUE:
        return FLOW_CONTINUE;
    default: /* JN_BODY */
        return exec_body(r, s);
    }
}

/* --- entry ---------------------------------------------------------------------------------- */

static jv cstr(const char *s)
{
    return s ? jv_str(s, strlen(s)) : undef(NULL);
}

static void bind_globals(run *r, const jinja_vars *v)
{
    jdict *g = r->scopes[0];
    jv msgs = jv_list(&r->c, v->n_msgs);
    for (size_t i = 0; i < v->n_msgs; i++) {
        jv m = {.kind = JV_DICT, .d = dict_new(&r->c)};
        dict_put(&r->c, m.d, cstr("role"), cstr(v->msgs[i].role));
        dict_put(&r->c, m.d, cstr("content"), cstr(v->msgs[i].content));
        msgs.l->v[i] = m;
    }
    dict_put(&r->c, g, cstr("messages"), msgs);
    dict_put(&r->c, g, cstr("add_generation_prompt"), jv_bool(v->add_generation_prompt));
    dict_put(&r->c, g, cstr("tools"), (jv){.kind = JV_NONE});
    dict_put(&r->c, g, cstr("documents"), (jv){.kind = JV_NONE});
    /* the functions are called by name (JN_CALL); as variables they only need to be defined,
     * for tests such as `strftime_now is defined` */
    dict_put(&r->c, g, cstr("raise_exception"), jv_bool(true));
    dict_put(&r->c, g, cstr("strftime_now"), jv_bool(true));
    if (v->bos_token)
        dict_put(&r->c, g, cstr("bos_token"), cstr(v->bos_token));
    if (v->eos_token)
        dict_put(&r->c, g, cstr("eos_token"), cstr(v->eos_token));
}

int jinja_render(const jinja_tmpl *t, const jinja_vars *v, char **out, char *err, size_t errlen)
{
    *out = NULL;
    run *r = calloc(1, sizeof *r);
    if (!r) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    r->c.err = err;
    r->c.errlen = errlen;
    r->now = v->now;
    if (setjmp(r->c.jb)) {
        int rc = r->c.rc;
        free(r->out);
        jarena_free(&r->c);
        free(r);
        return rc;
    }
    r->scopes[0] = dict_new(&r->c);
    r->scopes[1] = dict_new(&r->c);
    r->n_scopes = 2;
    bind_globals(r, v);
    emit(r, "", 0);
    exec_body(r, t->body);
    *out = r->out;
    jarena_free(&r->c);
    free(r);
    return 0;
}
