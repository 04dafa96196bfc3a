/* The Jinja subset that chat templates use: the parsed tree, the values, and the two entry
 * points (jinja_parse.c, jinja_eval.c). Internal to core/text; chat_template.c is its one user.
 *
 * Errors unwind with longjmp to the entry point that set up the jctx: everything a parse or a
 * render allocates lives in the jctx's arena, so there is nothing else to release. Bounds (see
 * the JINJA_MAX_* values) make a hostile template fail with a message instead of hanging or
 * exhausting memory.
 */
#ifndef ADAPTREE_CORE_TEXT_JINJA_INTERNAL_H
#define ADAPTREE_CORE_TEXT_JINJA_INTERNAL_H

#include <setjmp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/text/tokenizer.h"

#define JINJA_MAX_SOURCE (1u << 20)          /* template bytes */
#define JINJA_MAX_DEPTH 64                   /* nesting of statements and of expressions */
#define JINJA_MAX_OUTPUT (16u << 20)         /* rendered bytes */
#define JINJA_MAX_ARENA (64u << 20)          /* bytes one parse or one render may allocate */
#define JINJA_MAX_STEPS (4u * 1000u * 1000u) /* loop iterations + statements + calls */

/* --- arena and errors ----------------------------------------------------------------------- */

typedef struct jchunk jchunk;

typedef struct jctx {
    jmp_buf jb;
    int rc;
    char *err;
    size_t errlen;
    jchunk *chunks;
    size_t allocated;
} jctx;

void *jalloc(jctx *c, size_t n);
void jarena_free(jctx *c);
/* Formats "line N: ..." (line 0: no line) into c->err and unwinds to c->jb with rc. */
_Noreturn void jfail(jctx *c, int rc, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* --- values --------------------------------------------------------------------------------- */

enum jv_kind {
    JV_UNDEF,
    JV_NONE,
    JV_BOOL,
    JV_INT,
    JV_FLOAT,
    JV_STR,
    JV_LIST,
    JV_DICT,
    JV_LOOP,
    JV_MACRO
};

typedef struct jlist jlist;
typedef struct jdict jdict;
typedef struct jloop jloop;
typedef struct jnode jnode;

typedef struct jv {
    int kind;
    size_t n; /* JV_STR: length; JV_UNDEF: length of the name in s */
    union {
        bool b;
        int64_t i;
        double f;
        const char *s; /* JV_STR (not NUL-terminated); JV_UNDEF: the missing name or NULL */
        jlist *l;
        jdict *d;
        jloop *loop;
        const jnode *macro; /* JV_MACRO: its JN_MACRO statement */
    };
} jv;

struct jlist {
    size_t n;
    jv *v;
    bool tuple; /* a tuple to Python: printed in parentheses */
};

struct jdict {
    size_t n, cap;
    jv *keys; /* strings */
    jv *vals;
    bool is_namespace; /* namespace(): the one mutable kind, through {% set ns.x = ... %} */
};

struct jloop {
    const jlist *items;
    size_t index0;
};

/* --- the tree ------------------------------------------------------------------------------- */

enum jn_kind {
    /* expressions */
    JN_CONST, /* val */
    JN_NAME,  /* name */
    JN_ATTR,  /* a.name */
    JN_ITEM,  /* a[b] */
    JN_SLICE, /* a[kids[0]:kids[1]:kids[2]] (NULL: omitted) */
    JN_BIN,   /* a op b: + - * / // % ** ~ */
    JN_CMP,   /* a op b: == != < <= > >= in, not in */
    JN_NOT,
    JN_NEG,
    JN_AND,
    JN_OR,
    JN_COND,   /* b if a else c */
    JN_LIST,   /* kids; neg: a tuple */
    JN_DICT,   /* kids: key, value, key, value, ... */
    JN_CALL,   /* function op(kids) */
    JN_METHOD, /* a.method op(kids) */
    JN_FILTER, /* a | filter op(kids) */
    JN_TEST,   /* a is [not] test op(kids); neg */
    /* statements */
    JN_BODY,  /* kids, in order */
    JN_TEXT,  /* val */
    JN_OUT,   /* {{ a }} */
    JN_IF,    /* if a: b else c (c: a body, an elif JN_IF, or NULL) */
    JN_FOR,   /* for name[, name2] in a [if b]: c else d */
    JN_SET,   /* set name[.name2] = a, or set name: the output of body b */
    JN_MACRO, /* macro name(kw[i] = kids[i] or NULL, ...): body c */
    JN_BREAK,
    JN_CONTINUE,
};

struct jnode {
    int kind, op, line;
    bool neg;
    jv val;
    const char *name, *name2; /* NUL-terminated, in the arena */
    jnode *a, *b, *c, *d;
    jnode **kids;
    size_t n_kids;
    const char **kw; /* JN_CALL/METHOD/FILTER/TEST: the keyword of each kid, NULL if positional */
};

/* Operators (jnode.op of JN_BIN and JN_CMP). */
enum jop {
    OP_ADD,
    OP_SUB,
    OP_MUL,
    OP_DIV,
    OP_FLOORDIV,
    OP_MOD,
    OP_POW,
    OP_CONCAT,
    OP_EQ,
    OP_NE,
    OP_LT,
    OP_LE,
    OP_GT,
    OP_GE,
    OP_IN,
    OP_NOTIN
};

/* Functions, methods, filters and tests (jnode.op), one table each in jinja_parse.c. */
enum jfunc { FN_RAISE, FN_NAMESPACE, FN_STRFTIME_NOW, FN_RANGE, FN_MACRO /* by name */ };
enum jmethod {
    M_ITEMS,
    M_KEYS,
    M_VALUES,
    M_GET,
    M_STRIP,
    M_LSTRIP,
    M_RSTRIP,
    M_UPPER,
    M_LOWER,
    M_STARTSWITH,
    M_ENDSWITH,
    M_REPLACE,
    M_SPLIT,
    M_TITLE,
    M_CAPITALIZE
};
enum jfilter {
    F_TRIM,
    F_LENGTH,
    F_TOJSON,
    F_UPPER,
    F_LOWER,
    F_DEFAULT,
    F_ITEMS,
    F_JOIN,
    F_LIST,
    F_STRING,
    F_FIRST,
    F_LAST,
    F_REJECT,
    F_SELECT,
    F_SELECTATTR,
    F_REJECTATTR,
    F_MAP,
    F_REPLACE,
    F_INT,
    F_TITLE,
    F_CAPITALIZE,
    F_UNIQUE,
    F_REVERSE,
    F_SAFE,
    F_SORT,
    F_DICTSORT,
    F_ABS
};
enum jtest {
    T_DEFINED,
    T_UNDEFINED,
    T_NONE,
    T_STRING,
    T_NUMBER,
    T_INTEGER,
    T_FLOAT,
    T_MAPPING,
    T_ITERABLE,
    T_SEQUENCE,
    T_BOOLEAN,
    T_TRUE,
    T_FALSE,
    T_EQ,
    T_NE,
    T_ODD,
    T_EVEN,
    T_IN
};

/* A test by name (the name may be an alias: "equalto", "eq", "=="); -1 if unknown. Filters
 * use tests by name too (select, reject, selectattr, rejectattr). */
int jinja_test_id(const char *name, size_t n);

/* --- entry points --------------------------------------------------------------------------- */

typedef struct jinja_tmpl {
    jctx arena; /* owns every node */
    jnode *body;
} jinja_tmpl;

/* Parses a template (Hugging Face's environment: trim_blocks and lstrip_blocks, no trailing
 * newline kept, loop controls). Returns 0 and *out, -ENOTSUP with "line N: ..." naming what is
 * outside the subset or malformed, or -ENOMEM. */
int jinja_parse(const char *src, size_t len, jinja_tmpl **out, char *err, size_t errlen);
void jinja_free(jinja_tmpl *t);

typedef struct jinja_vars {
    const core_chat_msg *msgs;
    size_t n_msgs;
    bool add_generation_prompt;
    const char *bos_token, *eos_token; /* NULL: undefined */
    int64_t now;                       /* strftime_now's clock (seconds, UTC) */
} jinja_vars;

/* Renders t. Returns 0 and *out (malloc'd, NUL-terminated), or a negative errno with a message:
 * -EINVAL for raise_exception (its message verbatim) and errors of the template's logic
 * ("line N: ..."), -E2BIG when a bound is reached, -ENOMEM. */
int jinja_render(const jinja_tmpl *t, const jinja_vars *v, char **out, char *err, size_t errlen);

#endif
