/* Lexer and parser of the Jinja subset (see jinja_internal.h).
 *
 * The lexer follows jinja2 3.1's (lexer.py) with Hugging Face's settings: newlines normalized to
 * "\n" and one trailing newline dropped; "{%-"/"-%}" (and the same on "{{ }}" and "{# #}") strip
 * all whitespace on that side; trim_blocks drops the first newline after a block or comment tag;
 * lstrip_blocks drops the spaces and tabs before a block or comment tag that starts its line.
 * It turns the template into one token stream (text, tag delimiters, expression tokens), which a
 * recursive-descent parser with jinja2's precedence turns into a tree of jnodes. Every name that
 * must exist at render time (filters, tests, functions, methods, statements) is resolved here,
 * so a template that uses something outside the subset is refused before it ever renders, with
 * the construct and its line.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/text/jinja_internal.h"

/* --- arena and errors ----------------------------------------------------------------------- */

struct jchunk {
    jchunk *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
};

void *jalloc(jctx *c, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    jchunk *h = c->chunks;
    if (!h || h->cap - h->used < n) {
        if (n > JINJA_MAX_ARENA || c->allocated + n > JINJA_MAX_ARENA)
            jfail(c, -E2BIG, 0, "the template needs more than %u MiB of memory",
                  JINJA_MAX_ARENA >> 20);
        size_t cap = n > 65536 ? n : 65536;
        h = malloc(sizeof *h + cap);
        if (!h)
            jfail(c, -ENOMEM, 0, "out of memory");
        h->next = c->chunks;
        h->used = 0;
        h->cap = cap;
        c->chunks = h;
        c->allocated += cap;
    }
    void *p = h->data + h->used;
    h->used += n;
    memset(p, 0, n);
    return p;
}

void jarena_free(jctx *c)
{
    while (c->chunks) {
        jchunk *n = c->chunks->next;
        free(c->chunks);
        c->chunks = n;
    }
    c->allocated = 0;
}

void jfail(jctx *c, int rc, int line, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (c->errlen) {
        if (line > 0)
            snprintf(c->err, c->errlen, "line %d: %s", line, msg);
        else
            snprintf(c->err, c->errlen, "%s", msg);
    }
    c->rc = rc;
    longjmp(c->jb, 1);
}

/* --- tokens --------------------------------------------------------------------------------- */

enum tk_kind {
    TK_TEXT,        /* raw template text (val) */
    TK_VAR_BEGIN,   /* {{ */
    TK_VAR_END,     /* }} */
    TK_BLOCK_BEGIN, /* {% */
    TK_BLOCK_END,   /* %} */
    TK_NAME,
    TK_STR, /* val: the decoded string */
    TK_INT,
    TK_FLOAT,
    TK_OP, /* p, n: the operator's text */
    TK_EOF
};

typedef struct tok {
    int kind, line;
    const char *p;
    size_t n;
    jv val;
} tok;

typedef struct parser {
    jctx c; /* first: the parser is its own jctx */
    const char *src;
    size_t len, pos;
    int line;
    tok *toks;
    size_t n_toks, cap_toks, at;
    int depth;
    jnode *macros; /* JN_MACRO statements, linked through their d */
    jnode *calls;  /* calls of names that are not functions (macros?), linked through d */
} parser;

static const char WS[] = " \t\n\r\f\v";

static void push_tok(parser *p, tok t)
{
    if (p->n_toks == p->cap_toks) {
        size_t cap = p->cap_toks ? 2 * p->cap_toks : 256;
        tok *v = jalloc(&p->c, cap * sizeof *v);
        if (p->n_toks)
            memcpy(v, p->toks, p->n_toks * sizeof *v);
        p->toks = v;
        p->cap_toks = cap;
    }
    p->toks[p->n_toks++] = t;
}

/* Moves p->pos to off, counting lines. */
static void advance(parser *p, size_t off)
{
    for (; p->pos < off; p->pos++)
        p->line += p->src[p->pos] == '\n';
}

static jv mkstr(const char *s, size_t n)
{
    jv v = {.kind = JV_STR, .n = n};
    v.s = s;
    return v;
}

/* Appends the UTF-8 of code point u to d; returns the bytes written. */
static size_t put_utf8(char *d, uint32_t u)
{
    if (u < 0x80) {
        d[0] = (char)u;
        return 1;
    }
    if (u < 0x800) {
        d[0] = (char)(0xC0 | u >> 6);
        d[1] = (char)(0x80 | (u & 63));
        return 2;
    }
    if (u < 0x10000) {
        d[0] = (char)(0xE0 | u >> 12);
        d[1] = (char)(0x80 | (u >> 6 & 63));
        d[2] = (char)(0x80 | (u & 63));
        return 3;
    }
    d[0] = (char)(0xF0 | u >> 18);
    d[1] = (char)(0x80 | (u >> 12 & 63));
    d[2] = (char)(0x80 | (u >> 6 & 63));
    d[3] = (char)(0x80 | (u & 63));
    return 4;
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Decodes a Python escape at s[i] (after the backslash); returns the bytes consumed, 0 if it is
 * not one (the backslash is then kept, as Python's unicode-escape does). */
static size_t unescape(const char *s, size_t n, size_t i, char *d, size_t *k)
{
    static const char from[] = "nrtabfv\\'\"", to[] = "\n\r\t\a\b\f\v\\'\"";
    const char *f = i < n ? strchr(from, s[i]) : NULL;
    if (f && s[i]) {
        d[(*k)++] = to[f - from];
        return 1;
    }
    int digits = i < n ? (s[i] == 'x' ? 2 : s[i] == 'u' ? 4 : s[i] == 'U' ? 8 : 0) : 0;
    if (!digits)
        return 0;
    uint32_t u = 0;
    for (int j = 1; j <= digits; j++) {
        int h = i + (size_t)j < n ? hexval(s[i + (size_t)j]) : -1;
        if (h < 0)
            return 0;
        u = u << 4 | (uint32_t)h;
    }
    if (u > 0x10FFFF)
        return 0;
    *k += put_utf8(d + *k, u);
    return 1 + (size_t)digits;
}

/* A string literal at p->pos; returns its end. */
static size_t lex_string(parser *p, size_t i, tok *t)
{
    char q = p->src[i];
    size_t j = i + 1;
    while (j < p->len && p->src[j] != q)
        j += p->src[j] == '\\' && j + 1 < p->len ? 2 : 1;
    if (j >= p->len)
        jfail(&p->c, -ENOTSUP, p->line, "unterminated string");
    char *d = jalloc(&p->c, j - i + 4);
    size_t k = 0;
    for (size_t s = i + 1; s < j;) {
        if (p->src[s] == '\\') {
            size_t used = unescape(p->src, j, s + 1, d, &k);
            if (used) {
                s += 1 + used;
                continue;
            }
        }
        d[k++] = p->src[s++];
    }
    t->kind = TK_STR;
    t->val = mkstr(d, k);
    return j + 1;
}

static size_t lex_number(parser *p, size_t i, tok *t)
{
    size_t j = i;
    while (j < p->len && ((p->src[j] >= '0' && p->src[j] <= '9') || p->src[j] == '_'))
        j++;
    bool is_float =
        j + 1 < p->len && p->src[j] == '.' && p->src[j + 1] >= '0' && p->src[j + 1] <= '9';
    char buf[64];
    if (is_float)
        for (j++; j < p->len && ((p->src[j] >= '0' && p->src[j] <= '9') || p->src[j] == '_'); j++)
            ;
    size_t e = j + (j + 1 < p->len && (p->src[j] == 'e' || p->src[j] == 'E')) +
               (j + 2 < p->len && (p->src[j + 1] == '+' || p->src[j + 1] == '-'));
    if (e > j && e < p->len && p->src[e] >= '0' && p->src[e] <= '9') { /* an exponent */
        is_float = true;
        for (j = e; j < p->len && ((p->src[j] >= '0' && p->src[j] <= '9') || p->src[j] == '_'); j++)
            ;
    }
    size_t k = 0;
    for (size_t s = i; s < j && k + 1 < sizeof buf; s++)
        if (p->src[s] != '_')
            buf[k++] = p->src[s];
    buf[k] = '\0';
    if (is_float) {
        t->kind = TK_FLOAT;
        t->val = (jv){.kind = JV_FLOAT, .f = strtod(buf, NULL)};
    } else {
        errno = 0;
        long long v = strtoll(buf, NULL, 10);
        if (errno || k + 1 >= sizeof buf)
            jfail(&p->c, -ENOTSUP, p->line, "integer literal too large");
        t->kind = TK_INT;
        t->val = (jv){.kind = JV_INT, .i = v};
    }
    return j;
}

static size_t lex_op(parser *p, size_t i, tok *t)
{
    static const char *const two[] = {"==", "!=", "<=", ">=", "//", "**"};
    static const char one[] = "+-*/%~<>=()[]{},.:|";
    t->kind = TK_OP;
    t->p = p->src + i;
    for (size_t k = 0; k < sizeof two / sizeof two[0]; k++)
        if (i + 1 < p->len && !memcmp(p->src + i, two[k], 2)) {
            t->n = 2;
            return i + 2;
        }
    if (!strchr(one, p->src[i]) || !p->src[i])
        jfail(&p->c, -ENOTSUP, p->line, "unexpected character '%c'", p->src[i]);
    t->n = 1;
    return i + 1;
}

static bool is_name_start(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_';
}

/* One token inside a tag at i; returns its end. */
static size_t lex_one(parser *p, size_t i)
{
    tok t = {.line = p->line};
    char ch = p->src[i];
    size_t j;
    if (is_name_start(ch)) {
        for (j = i + 1;
             j < p->len && (is_name_start(p->src[j]) || (p->src[j] >= '0' && p->src[j] <= '9'));
             j++)
            ;
        t.kind = TK_NAME;
        t.p = p->src + i;
        t.n = j - i;
    } else if (ch == '\'' || ch == '"') {
        j = lex_string(p, i, &t);
    } else if (ch >= '0' && ch <= '9') {
        j = lex_number(p, i, &t);
    } else {
        j = lex_op(p, i, &t);
    }
    push_tok(p, t);
    return j;
}

/* The tokens of one {{ }} or {% %} tag whose opening delimiter ends at i; returns the offset
 * after the closing delimiter and sets *sign to '-' for "-}}" / "-%}", '+' for "+%}", else 0. */
static size_t lex_tag(parser *p, size_t i, char close, char *sign)
{
    int open = 0; /* brackets: a closing delimiter inside them does not end the tag (jinja2) */
    for (;;) {
        while (i < p->len && strchr(WS, p->src[i]) && p->src[i])
            i++;
        advance(p, i);
        if (i >= p->len)
            jfail(&p->c, -ENOTSUP, p->line, "unclosed tag");
        const char *s = p->src + i;
        bool signed_end = (s[0] == '-' || (s[0] == '+' && close == '%'));
        if (!open && signed_end && i + 2 < p->len && s[1] == close && s[2] == '}') {
            *sign = s[0];
            return i + 3;
        }
        if (!open && s[0] == close && i + 1 < p->len && s[1] == '}') {
            *sign = 0;
            return i + 2;
        }
        open += strchr("([{", s[0]) && s[0] ? 1 : strchr(")]}", s[0]) && s[0] ? -1 : 0;
        i = lex_one(p, i);
    }
}

/* Applies "{%-"/"{{-", or lstrip_blocks, to the text [from, to) before a tag. */
static size_t strip_before(parser *p, size_t from, size_t to, char kind, char sign,
                           bool line_starting)
{
    if (sign == '-') {
        while (to > from && strchr(WS, p->src[to - 1]))
            to--;
        return to;
    }
    if (sign == '+' || kind == '{')
        return to;
    size_t l = to;
    while (l > from && p->src[l - 1] != '\n')
        l--;
    if (l == to || (l == from && !line_starting))
        return to;
    for (size_t k = l; k < to; k++)
        if (!strchr(WS, p->src[k]))
            return to;
    return l;
}

/* Whitespace after a closing delimiter: all of it after "-", one newline for trim_blocks unless
 * "+". */
static size_t strip_after(parser *p, size_t i, char kind, char sign)
{
    if (sign == '-')
        while (i < p->len && strchr(WS, p->src[i]) && p->src[i])
            i++;
    else if (sign != '+' && kind != '{' && i < p->len && p->src[i] == '\n')
        i++;
    return i;
}

static void lex(parser *p)
{
    size_t i = 0;
    bool line_starting = true;
    while (i < p->len) {
        size_t t = i;
        while (t + 1 < p->len &&
               !(p->src[t] == '{' && strchr("{%#", p->src[t + 1]) && p->src[t + 1]))
            t++;
        if (t + 1 >= p->len)
            t = p->len;
        char kind = t < p->len ? p->src[t + 1] : 0;
        char sign =
            t + 2 < p->len && (p->src[t + 2] == '-' || p->src[t + 2] == '+') ? p->src[t + 2] : 0;
        size_t end = t < p->len ? strip_before(p, i, t, kind, sign, line_starting) : t;
        advance(p, i);
        if (end > i)
            push_tok(p, (tok){.kind = TK_TEXT, .line = p->line, .val = mkstr(p->src + i, end - i)});
        if (t == p->len)
            break;
        advance(p, t);
        size_t body = t + 2 + (sign != 0);
        char end_sign = 0;
        if (kind == '#') {
            const char *e = strstr(p->src + body, "#}");
            if (!e)
                jfail(&p->c, -ENOTSUP, p->line, "unclosed comment");
            size_t at = (size_t)(e - p->src);
            if (at > body && (p->src[at - 1] == '-' || p->src[at - 1] == '+'))
                end_sign = p->src[at - 1];
            i = at + 2;
        } else {
            int line = p->line;
            push_tok(p, (tok){.kind = kind == '{' ? TK_VAR_BEGIN : TK_BLOCK_BEGIN, .line = line});
            i = lex_tag(p, body, kind == '{' ? '}' : '%', &end_sign);
            push_tok(p, (tok){.kind = kind == '{' ? TK_VAR_END : TK_BLOCK_END, .line = p->line});
        }
        i = strip_after(p, i, kind, end_sign);
        line_starting = p->src[i - 1] == '\n';
    }
    advance(p, p->len);
    push_tok(p, (tok){.kind = TK_EOF, .line = p->line});
}

/* --- parser helpers ------------------------------------------------------------------------- */

static const tok *cur(parser *p)
{
    return &p->toks[p->at];
}

static bool is_op(const tok *t, const char *op)
{
    return t->kind == TK_OP && t->n == strlen(op) && !memcmp(t->p, op, t->n);
}

static bool is_name(const tok *t, const char *name)
{
    return t->kind == TK_NAME && t->n == strlen(name) && !memcmp(t->p, name, t->n);
}

static bool skip_op(parser *p, const char *op)
{
    if (!is_op(cur(p), op))
        return false;
    p->at++;
    return true;
}

static bool skip_name(parser *p, const char *name)
{
    if (!is_name(cur(p), name))
        return false;
    p->at++;
    return true;
}

/* What a token is, for messages. */
static const char *describe(const tok *t, char *buf, size_t cap)
{
    static const char *const fixed[] = {"text", "'{{'", "'}}'", "'{%'", "'%}'"};
    if (t->kind <= TK_BLOCK_END)
        return fixed[t->kind];
    if (t->kind == TK_EOF)
        return "the end of the template";
    if (t->kind == TK_STR)
        return "a string";
    if (t->kind == TK_INT || t->kind == TK_FLOAT)
        return "a number";
    snprintf(buf, cap, "'%.*s'", (int)(t->n > 40 ? 40 : t->n), t->p);
    return buf;
}

_Noreturn static void unexpected(parser *p, const char *want)
{
    char buf[64];
    jfail(&p->c, -ENOTSUP, cur(p)->line, "expected %s, found %s", want,
          describe(cur(p), buf, sizeof buf));
}

static void expect_op(parser *p, const char *op)
{
    if (!skip_op(p, op)) {
        char want[16];
        snprintf(want, sizeof want, "'%s'", op);
        unexpected(p, want);
    }
}

static void expect_kind(parser *p, int kind, const char *want)
{
    if (cur(p)->kind != kind)
        unexpected(p, want);
    p->at++;
}

static char *tok_name(parser *p, const tok *t)
{
    char *s = jalloc(&p->c, t->n + 1);
    memcpy(s, t->p, t->n);
    return s;
}

static const char *expect_name(parser *p)
{
    if (cur(p)->kind != TK_NAME)
        unexpected(p, "a name");
    return tok_name(p, &p->toks[p->at++]);
}

static jnode *node(parser *p, int kind, int line)
{
    jnode *n = jalloc(&p->c, sizeof *n);
    n->kind = kind;
    n->line = line;
    return n;
}

static void enter(parser *p)
{
    if (++p->depth > JINJA_MAX_DEPTH)
        jfail(&p->c, -ENOTSUP, cur(p)->line, "nesting deeper than %d", JINJA_MAX_DEPTH);
}

/* A growable list of nodes in the arena. */
typedef struct nodes {
    jnode **v;
    const char **kw;
    size_t n, cap;
} nodes;

static void nodes_push(parser *p, nodes *l, jnode *n, const char *kw)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 8;
        jnode **v = jalloc(&p->c, cap * sizeof(jnode *));
        const char **k = jalloc(&p->c, cap * sizeof *k);
        if (l->n) {
            memcpy(v, l->v, l->n * sizeof(jnode *));
            memcpy(k, l->kw, l->n * sizeof *k);
        }
        l->v = v;
        l->kw = k;
        l->cap = cap;
    }
    l->kw[l->n] = kw;
    l->v[l->n++] = n;
}

static void set_kids(jnode *n, const nodes *l)
{
    n->kids = l->v;
    n->kw = l->kw;
    n->n_kids = l->n;
}

/* --- names of the subset -------------------------------------------------------------------- */

typedef struct named {
    const char *name;
    int id;
} named;

static const named FUNCS[] = {{"raise_exception", FN_RAISE},
                              {"namespace", FN_NAMESPACE},
                              {"strftime_now", FN_STRFTIME_NOW},
                              {"range", FN_RANGE}};

static const named METHODS[] = {{"items", M_ITEMS},          {"keys", M_KEYS},
                                {"values", M_VALUES},        {"get", M_GET},
                                {"strip", M_STRIP},          {"lstrip", M_LSTRIP},
                                {"rstrip", M_RSTRIP},        {"upper", M_UPPER},
                                {"lower", M_LOWER},          {"startswith", M_STARTSWITH},
                                {"endswith", M_ENDSWITH},    {"replace", M_REPLACE},
                                {"split", M_SPLIT},          {"title", M_TITLE},
                                {"capitalize", M_CAPITALIZE}};

static const named FILTERS[] = {{"trim", F_TRIM},
                                {"length", F_LENGTH},
                                {"count", F_LENGTH},
                                {"tojson", F_TOJSON},
                                {"upper", F_UPPER},
                                {"lower", F_LOWER},
                                {"default", F_DEFAULT},
                                {"d", F_DEFAULT},
                                {"items", F_ITEMS},
                                {"join", F_JOIN},
                                {"list", F_LIST},
                                {"string", F_STRING},
                                {"first", F_FIRST},
                                {"last", F_LAST},
                                {"reject", F_REJECT},
                                {"select", F_SELECT},
                                {"selectattr", F_SELECTATTR},
                                {"rejectattr", F_REJECTATTR},
                                {"map", F_MAP},
                                {"replace", F_REPLACE},
                                {"int", F_INT},
                                {"title", F_TITLE},
                                {"capitalize", F_CAPITALIZE},
                                {"unique", F_UNIQUE},
                                {"reverse", F_REVERSE},
                                {"abs", F_ABS},
                                {"safe", F_SAFE},
                                {"sort", F_SORT},
                                {"dictsort", F_DICTSORT}};

static const named TESTS[] = {{"defined", T_DEFINED},
                              {"undefined", T_UNDEFINED},
                              {"none", T_NONE},
                              {"string", T_STRING},
                              {"number", T_NUMBER},
                              {"integer", T_INTEGER},
                              {"float", T_FLOAT},
                              {"mapping", T_MAPPING},
                              {"iterable", T_ITERABLE},
                              {"sequence", T_SEQUENCE},
                              {"boolean", T_BOOLEAN},
                              {"true", T_TRUE},
                              {"false", T_FALSE},
                              {"equalto", T_EQ},
                              {"eq", T_EQ},
                              {"==", T_EQ},
                              {"sameas", T_EQ},
                              {"ne", T_NE},
                              {"!=", T_NE},
                              {"odd", T_ODD},
                              {"even", T_EVEN},
                              {"in", T_IN}};

static int lookup(const named *t, size_t n_t, const char *name, size_t n)
{
    for (size_t i = 0; i < n_t; i++)
        if (strlen(t[i].name) == n && !memcmp(t[i].name, name, n))
            return t[i].id;
    return -1;
}

#define LOOKUP(table, name, n) lookup(table, sizeof(table) / sizeof((table)[0]), name, n)

int jinja_test_id(const char *name, size_t n)
{
    return LOOKUP(TESTS, name, n);
}

/* --- expressions ---------------------------------------------------------------------------- */

static jnode *parse_expr(parser *p);
static jnode *parse_or(parser *p);
static jnode *parse_primary(parser *p);

/* (args) after the '(' : positional, then name=value. */
static void parse_args(parser *p, jnode *n)
{
    nodes l = {0};
    while (!skip_op(p, ")")) {
        if (l.n)
            expect_op(p, ",");
        if (skip_op(p, ")"))
            break;
        const char *kw = NULL;
        if (cur(p)->kind == TK_NAME && is_op(&p->toks[p->at + 1], "=")) {
            kw = expect_name(p);
            p->at++;
        } else if (l.n && l.kw[l.n - 1]) {
            jfail(&p->c, -ENOTSUP, cur(p)->line, "positional argument after a keyword argument");
        }
        nodes_push(p, &l, parse_expr(p), kw);
    }
    set_kids(n, &l);
}

static jnode *parse_call(parser *p, jnode *callee)
{
    int line = cur(p)->line;
    jnode *n;
    if (callee->kind == JN_NAME) {
        int id = LOOKUP(FUNCS, callee->name, strlen(callee->name));
        n = node(p, JN_CALL, line);
        n->op = id < 0 ? FN_MACRO : id;
        n->name = callee->name;
        if (id < 0) { /* a macro, checked once the whole template is read */
            n->d = p->calls;
            p->calls = n;
        }
    } else if (callee->kind == JN_ATTR) {
        int id = LOOKUP(METHODS, callee->name, strlen(callee->name));
        if (id < 0)
            jfail(&p->c, -ENOTSUP, line, "unsupported method '.%s()'", callee->name);
        n = node(p, JN_METHOD, line);
        n->op = id;
        n->name = callee->name;
        n->a = callee->a;
    } else {
        jfail(&p->c, -ENOTSUP, line, "only named functions and methods can be called");
    }
    parse_args(p, n);
    return n;
}

static jnode *parse_subscript(parser *p, jnode *obj, int line)
{
    jnode *parts[3] = {NULL, NULL, NULL};
    int k = 0;
    bool slice = false;
    for (;;) {
        if (!is_op(cur(p), ":") && !is_op(cur(p), "]"))
            parts[k] = parse_expr(p);
        if (skip_op(p, "]"))
            break;
        expect_op(p, ":");
        slice = true;
        if (++k > 2)
            unexpected(p, "']'");
    }
    jnode *n = node(p, slice ? JN_SLICE : JN_ITEM, line);
    n->a = obj;
    if (!slice) {
        if (!parts[0])
            unexpected(p, "a subscript");
        n->b = parts[0];
        return n;
    }
    n->kids = jalloc(&p->c, sizeof parts);
    memcpy(n->kids, parts, sizeof parts);
    n->n_kids = 3;
    return n;
}

static jnode *parse_postfix(parser *p, jnode *n)
{
    for (;;) {
        int line = cur(p)->line;
        if (skip_op(p, ".")) {
            jnode *a = node(p, JN_ATTR, line);
            a->a = n;
            if (cur(p)->kind == TK_INT) {
                jnode *ix = node(p, JN_CONST, line);
                ix->val = p->toks[p->at++].val;
                a->kind = JN_ITEM;
                a->b = ix;
            } else {
                a->name = expect_name(p);
            }
            n = a;
        } else if (skip_op(p, "[")) {
            n = parse_subscript(p, n, line);
        } else if (skip_op(p, "(")) {
            n = parse_call(p, n);
        } else {
            return n;
        }
    }
}

/* An optional argument of a test written without parentheses ("is divisibleby 3"). */
static bool test_arg_follows(parser *p)
{
    const tok *t = cur(p);
    if (t->kind == TK_NAME)
        return !is_name(t, "else") && !is_name(t, "or") && !is_name(t, "and");
    return t->kind == TK_STR || t->kind == TK_INT || t->kind == TK_FLOAT || is_op(t, "(") ||
           is_op(t, "[") || is_op(t, "{");
}

static jnode *parse_test(parser *p, jnode *subject, int line)
{
    jnode *n = node(p, JN_TEST, line);
    n->a = subject;
    n->neg = skip_name(p, "not");
    const tok *t = cur(p);
    if (t->kind != TK_NAME && !is_op(t, "==") && !is_op(t, "!="))
        unexpected(p, "a test name");
    n->op = jinja_test_id(t->p, t->n);
    n->name = tok_name(p, t);
    if (n->op < 0)
        jfail(&p->c, -ENOTSUP, line, "unsupported test 'is %s'", n->name);
    p->at++;
    if (skip_op(p, "(")) {
        parse_args(p, n);
    } else if (test_arg_follows(p)) {
        nodes l = {0};
        nodes_push(p, &l, parse_postfix(p, parse_primary(p)), NULL);
        set_kids(n, &l);
    }
    return n;
}

static jnode *parse_filters(parser *p, jnode *n)
{
    for (;;) {
        int line = cur(p)->line;
        if (skip_op(p, "|")) {
            jnode *f = node(p, JN_FILTER, line);
            f->a = n;
            f->name = expect_name(p);
            f->op = LOOKUP(FILTERS, f->name, strlen(f->name));
            if (f->op < 0)
                jfail(&p->c, -ENOTSUP, line, "unsupported filter '|%s'", f->name);
            if (skip_op(p, "("))
                parse_args(p, f);
            n = f;
        } else if (skip_name(p, "is")) {
            n = parse_test(p, n, line);
        } else {
            return n;
        }
    }
}

static jnode *parse_list(parser *p, int kind, const char *close, int line)
{
    jnode *n = node(p, kind, line);
    nodes l = {0};
    while (!skip_op(p, close)) {
        if (l.n)
            expect_op(p, ",");
        if (skip_op(p, close))
            break;
        nodes_push(p, &l, parse_expr(p), NULL);
        if (kind == JN_DICT) {
            expect_op(p, ":");
            nodes_push(p, &l, parse_expr(p), NULL);
        }
    }
    set_kids(n, &l);
    return n;
}

static jnode *parse_name_primary(parser *p, const tok *t)
{
    static const struct {
        const char *name;
        jv v;
    } lits[] = {{"true", {.kind = JV_BOOL, .b = true}},
                {"True", {.kind = JV_BOOL, .b = true}},
                {"false", {.kind = JV_BOOL, .b = false}},
                {"False", {.kind = JV_BOOL, .b = false}},
                {"none", {.kind = JV_NONE}},
                {"None", {.kind = JV_NONE}}};
    for (size_t i = 0; i < sizeof lits / sizeof lits[0]; i++)
        if (is_name(t, lits[i].name)) {
            jnode *n = node(p, JN_CONST, t->line);
            n->val = lits[i].v;
            return n;
        }
    jnode *n = node(p, JN_NAME, t->line);
    n->name = tok_name(p, t);
    return n;
}

/* Adjacent string literals concatenate ("a" "b"). */
static jnode *parse_strings(parser *p)
{
    jnode *n = node(p, JN_CONST, cur(p)->line);
    n->val = p->toks[p->at++].val;
    while (cur(p)->kind == TK_STR) {
        jv b = p->toks[p->at++].val;
        char *s = jalloc(&p->c, n->val.n + b.n + 1);
        memcpy(s, n->val.s, n->val.n);
        memcpy(s + n->val.n, b.s, b.n);
        n->val = mkstr(s, n->val.n + b.n);
    }
    return n;
}

static jnode *parse_primary(parser *p)
{
    const tok *t = cur(p);
    int line = t->line;
    if (t->kind == TK_NAME) {
        p->at++;
        return parse_name_primary(p, t);
    }
    if (t->kind == TK_STR)
        return parse_strings(p);
    if (t->kind == TK_INT || t->kind == TK_FLOAT) {
        jnode *n = node(p, JN_CONST, line);
        n->val = t->val;
        p->at++;
        return n;
    }
    if (skip_op(p, "(")) {
        jnode *n = parse_expr(p);
        if (!is_op(cur(p), ","))
            return expect_op(p, ")"), n;
        nodes l = {0};
        nodes_push(p, &l, n, NULL);
        while (skip_op(p, ",") && !is_op(cur(p), ")"))
            nodes_push(p, &l, parse_expr(p), NULL);
        expect_op(p, ")");
        jnode *tup = node(p, JN_LIST, line);
        tup->neg = true;
        set_kids(tup, &l);
        return tup;
    }
    if (skip_op(p, "["))
        return parse_list(p, JN_LIST, "]", line);
    if (skip_op(p, "{"))
        return parse_list(p, JN_DICT, "}", line);
    unexpected(p, "an expression");
}

/* A unary minus binds tighter than filters and tests: -x|abs is (-x)|abs, as in jinja2. */
static jnode *parse_signed(parser *p, bool with_filters)
{
    enter(p);
    int line = cur(p)->line;
    jnode *n;
    if (skip_op(p, "-")) {
        n = node(p, JN_NEG, line);
        n->a = parse_signed(p, false);
    } else if (skip_op(p, "+")) {
        n = parse_signed(p, false);
    } else {
        n = parse_postfix(p, parse_primary(p));
    }
    if (with_filters)
        n = parse_filters(p, n);
    p->depth--;
    return n;
}

static jnode *parse_unary(parser *p)
{
    return parse_signed(p, true);
}

static jnode *binary(parser *p, int kind, int op, jnode *a, jnode *b, int line)
{
    jnode *n = node(p, kind, line);
    n->op = op;
    n->a = a;
    n->b = b;
    return n;
}

typedef struct binop {
    const char *text;
    int op;
} binop;

/* One left-associative level of binary operators over `next`. */
static jnode *parse_level(parser *p, const binop *ops, size_t n_ops, jnode *(*next)(parser *))
{
    jnode *n = next(p);
    for (;;) {
        int line = cur(p)->line;
        size_t k = 0;
        while (k < n_ops && !is_op(cur(p), ops[k].text))
            k++;
        if (k == n_ops)
            return n;
        p->at++;
        n = binary(p, JN_BIN, ops[k].op, n, next(p), line);
    }
}

static jnode *parse_pow(parser *p)
{
    static const binop ops[] = {{"**", OP_POW}};
    return parse_level(p, ops, 1, parse_unary);
}

static jnode *parse_math2(parser *p)
{
    static const binop ops[] = {{"*", OP_MUL}, {"/", OP_DIV}, {"//", OP_FLOORDIV}, {"%", OP_MOD}};
    return parse_level(p, ops, 4, parse_pow);
}

static jnode *parse_concat(parser *p)
{
    static const binop ops[] = {{"~", OP_CONCAT}};
    return parse_level(p, ops, 1, parse_math2);
}

static jnode *parse_math1(parser *p)
{
    static const binop ops[] = {{"+", OP_ADD}, {"-", OP_SUB}};
    return parse_level(p, ops, 2, parse_concat);
}

/* Comparisons; a chain a < b < c is (a < b) and (b < c), as in Python. */
static jnode *parse_compare(parser *p)
{
    static const binop ops[] = {{"==", OP_EQ}, {"!=", OP_NE}, {"<=", OP_LE},
                                {">=", OP_GE}, {"<", OP_LT},  {">", OP_GT}};
    jnode *n = parse_math1(p), *prev = n, *chain = NULL;
    for (;;) {
        int line = cur(p)->line, op = -1;
        for (size_t k = 0; k < 6 && op < 0; k++)
            if (is_op(cur(p), ops[k].text))
                op = ops[k].op;
        if (op >= 0) {
            p->at++;
        } else if (skip_name(p, "in")) {
            op = OP_IN;
        } else if (is_name(cur(p), "not") && is_name(&p->toks[p->at + 1], "in")) {
            p->at += 2;
            op = OP_NOTIN;
        } else {
            return chain ? chain : n;
        }
        jnode *rhs = parse_math1(p);
        jnode *cmp = binary(p, JN_CMP, op, prev, rhs, line);
        chain = chain ? binary(p, JN_AND, 0, chain, cmp, line) : cmp;
        prev = rhs;
    }
}

static jnode *parse_not(parser *p)
{
    int line = cur(p)->line;
    if (!skip_name(p, "not"))
        return parse_compare(p);
    enter(p);
    jnode *n = node(p, JN_NOT, line);
    n->a = parse_not(p);
    p->depth--;
    return n;
}

static jnode *parse_and(parser *p)
{
    jnode *n = parse_not(p);
    while (is_name(cur(p), "and")) {
        int line = p->toks[p->at++].line;
        n = binary(p, JN_AND, 0, n, parse_not(p), line);
    }
    return n;
}

static jnode *parse_or(parser *p)
{
    jnode *n = parse_and(p);
    while (is_name(cur(p), "or")) {
        int line = p->toks[p->at++].line;
        n = binary(p, JN_OR, 0, n, parse_and(p), line);
    }
    return n;
}

/* x if cond [else y] */
static jnode *parse_expr(parser *p)
{
    enter(p);
    jnode *n = parse_or(p);
    while (is_name(cur(p), "if")) {
        jnode *c = node(p, JN_COND, p->toks[p->at++].line);
        c->b = n;
        c->a = parse_or(p);
        if (skip_name(p, "else"))
            c->c = parse_expr(p);
        n = c;
    }
    p->depth--;
    return n;
}

/* --- statements ----------------------------------------------------------------------------- */

static jnode *parse_body(parser *p, const char *const *ends);

static void end_tag(parser *p)
{
    expect_kind(p, TK_BLOCK_END, "'%}'");
}

/* At "{% name": true (and past it) if name is the tag's keyword. */
static bool at_tag(parser *p, const char *name)
{
    if (cur(p)->kind != TK_BLOCK_BEGIN || !is_name(&p->toks[p->at + 1], name))
        return false;
    p->at += 2;
    return true;
}

static jnode *parse_if(parser *p, int line)
{
    static const char *const ends[] = {"elif", "else", "endif", NULL};
    jnode *n = node(p, JN_IF, line);
    n->a = parse_expr(p);
    end_tag(p);
    n->b = parse_body(p, ends);
    int at = cur(p)->line;
    if (at_tag(p, "elif")) {
        n->c = parse_if(p, at);
        return n;
    }
    if (at_tag(p, "else")) {
        static const char *const endif[] = {"endif", NULL};
        end_tag(p);
        n->c = parse_body(p, endif);
    }
    if (!at_tag(p, "endif"))
        unexpected(p, "{% endif %}");
    end_tag(p);
    return n;
}

static jnode *parse_for(parser *p, int line)
{
    static const char *const ends[] = {"else", "endfor", NULL};
    jnode *n = node(p, JN_FOR, line);
    n->name = expect_name(p);
    if (skip_op(p, ","))
        n->name2 = expect_name(p);
    if (!skip_name(p, "in"))
        unexpected(p, "'in'");
    n->a = parse_or(p);
    if (skip_name(p, "if"))
        n->b = parse_expr(p);
    if (is_name(cur(p), "recursive"))
        jfail(&p->c, -ENOTSUP, line, "unsupported recursive for loop");
    end_tag(p);
    n->c = parse_body(p, ends);
    if (at_tag(p, "else")) {
        static const char *const endfor[] = {"endfor", NULL};
        end_tag(p);
        n->d = parse_body(p, endfor);
    }
    if (!at_tag(p, "endfor"))
        unexpected(p, "{% endfor %}");
    end_tag(p);
    return n;
}

/* {% set x = expr %}, {% set ns.x = expr %}, or {% set x %}body{% endset %}. */
static jnode *parse_set(parser *p, int line)
{
    static const char *const endset[] = {"endset", NULL};
    jnode *n = node(p, JN_SET, line);
    n->name = expect_name(p);
    if (skip_op(p, "."))
        n->name2 = expect_name(p);
    if (is_op(cur(p), ","))
        jfail(&p->c, -ENOTSUP, line, "unsupported tuple assignment {%% set a, b = ... %%}");
    if (!n->name2 && cur(p)->kind == TK_BLOCK_END) {
        end_tag(p);
        n->b = parse_body(p, endset);
        if (!at_tag(p, "endset"))
            unexpected(p, "{% endset %}");
        return n;
    }
    expect_op(p, "=");
    n->a = parse_expr(p);
    return n;
}

/* {% macro name(a, b=default) %}body{% endmacro %} */
static jnode *parse_macro(parser *p, int line)
{
    static const char *const endmacro[] = {"endmacro", NULL};
    jnode *n = node(p, JN_MACRO, line);
    n->name = expect_name(p);
    expect_op(p, "(");
    nodes l = {0};
    while (!skip_op(p, ")")) {
        if (l.n)
            expect_op(p, ",");
        const char *param = expect_name(p);
        nodes_push(p, &l, skip_op(p, "=") ? parse_expr(p) : NULL, param);
    }
    set_kids(n, &l);
    end_tag(p);
    n->c = parse_body(p, endmacro);
    if (!at_tag(p, "endmacro"))
        unexpected(p, "{% endmacro %}");
    n->d = p->macros;
    p->macros = n;
    return n;
}

/* Every call of a name that is not a function must name a macro of the template. */
static void check_calls(parser *p)
{
    for (const jnode *c = p->calls; c; c = c->d) {
        const jnode *m = p->macros;
        while (m && strcmp(m->name, c->name) != 0)
            m = m->d;
        if (!m)
            jfail(&p->c, -ENOTSUP, c->line, "unsupported function '%s()'", c->name);
    }
}

/* One {% ... %} statement after its '{%'. */
static jnode *parse_stmt(parser *p)
{
    static const char *const unsupported[] = {
        "call", "filter", "block",      "extends",    "include", "import", "from",
        "with", "raw",    "autoescape", "generation", "do",      "trans",  NULL};
    const tok *t = cur(p);
    int line = t->line;
    char buf[64];
    if (t->kind != TK_NAME)
        unexpected(p, "a statement");
    p->at++;
    if (is_name(t, "if"))
        return parse_if(p, line);
    if (is_name(t, "for"))
        return parse_for(p, line);
    jnode *n;
    if (is_name(t, "macro"))
        n = parse_macro(p, line);
    else if (is_name(t, "set"))
        n = parse_set(p, line);
    else if (is_name(t, "break") || is_name(t, "continue"))
        n = node(p, is_name(t, "break") ? JN_BREAK : JN_CONTINUE, line);
    else {
        for (size_t i = 0; unsupported[i]; i++)
            if (is_name(t, unsupported[i]))
                jfail(&p->c, -ENOTSUP, line, "unsupported statement {%% %s %%}", unsupported[i]);
        jfail(&p->c, -ENOTSUP, line, "unexpected statement {%% %s %%}",
              describe(t, buf, sizeof buf));
    }
    end_tag(p);
    return n;
}

/* Statements up to the end of the template (ends NULL) or to a "{%" of one of ends (left
 * unconsumed). */
static jnode *parse_body(parser *p, const char *const *ends)
{
    enter(p);
    jnode *body = node(p, JN_BODY, cur(p)->line);
    nodes l = {0};
    for (;;) {
        const tok *t = cur(p);
        if (t->kind == TK_EOF) {
            if (ends) {
                size_t last = 0;
                while (ends[last + 1])
                    last++;
                jfail(&p->c, -ENOTSUP, t->line, "missing {%% %s %%}", ends[last]);
            }
            break;
        }
        if (t->kind == TK_TEXT) {
            jnode *n = node(p, JN_TEXT, t->line);
            n->val = t->val;
            nodes_push(p, &l, n, NULL);
            p->at++;
        } else if (t->kind == TK_VAR_BEGIN) {
            jnode *n = node(p, JN_OUT, t->line);
            p->at++;
            n->a = parse_expr(p);
            expect_kind(p, TK_VAR_END, "'}}'");
            nodes_push(p, &l, n, NULL);
        } else if (t->kind == TK_BLOCK_BEGIN) {
            const tok *kw = &p->toks[p->at + 1];
            for (size_t i = 0; ends && ends[i]; i++)
                if (is_name(kw, ends[i]))
                    goto done;
            if (is_name(kw, "endif") || is_name(kw, "endfor") || is_name(kw, "else") ||
                is_name(kw, "elif") || is_name(kw, "endset") || is_name(kw, "endmacro"))
                jfail(&p->c, -ENOTSUP, kw->line, "unexpected {%% %.*s %%}", (int)kw->n, kw->p);
            p->at++;
            nodes_push(p, &l, parse_stmt(p), NULL);
        } else {
            unexpected(p, "text or a tag");
        }
    }
done:
    set_kids(body, &l);
    p->depth--;
    return body;
}

/* The source with newlines normalized to "\n" and one trailing newline dropped (jinja2's
 * keep_trailing_newline=False). */
static char *normalize(jctx *c, const char *src, size_t len, size_t *out_len)
{
    char *s = jalloc(c, len + 1);
    size_t k = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') {
            s[k++] = '\n';
            i += i + 1 < len && src[i + 1] == '\n';
        } else {
            s[k++] = src[i];
        }
    }
    if (k && s[k - 1] == '\n')
        k--;
    s[k] = '\0';
    *out_len = k;
    return s;
}

int jinja_parse(const char *src, size_t len, jinja_tmpl **out, char *err, size_t errlen)
{
    *out = NULL;
    if (len > JINJA_MAX_SOURCE) {
        snprintf(err, errlen, "the template is larger than %u KiB", JINJA_MAX_SOURCE >> 10);
        return -ENOTSUP;
    }
    parser *p = calloc(1, sizeof *p);
    if (!p) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    p->c.err = err;
    p->c.errlen = errlen;
    p->line = 1;
    if (setjmp(p->c.jb)) {
        int rc = p->c.rc;
        jarena_free(&p->c);
        free(p);
        return rc;
    }
    p->src = normalize(&p->c, src, len, &p->len);
    lex(p);
    jnode *body = parse_body(p, NULL);
    check_calls(p);
    jinja_tmpl *t = jalloc(&p->c, sizeof *t);
    t->body = body;
    /* the tree stays in the parser's arena, which the template now owns; the tokens and the
     * normalized source stay with it (text nodes point into the source) */
    t->arena.chunks = p->c.chunks;
    t->arena.allocated = p->c.allocated;
    free(p);
    *out = t;
    return 0;
}

void jinja_free(jinja_tmpl *t)
{
    if (t) {
        jctx c = t->arena; /* t itself lives in the arena */
        jarena_free(&c);
    }
}
