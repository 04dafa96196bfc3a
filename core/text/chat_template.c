/* Chat-template rendering for the ChatML family, without a Jinja engine.
 *
 * The template is read the way Jinja (with Hugging Face's trim_blocks and lstrip_blocks) would
 * read it, but instead of being executed, its output is reduced to "runs": the text that
 * consecutive {{ }} tags and raw text emit between two {% %} statements, with a message's role
 * and content as placeholders. The template is accepted only if every run is one of three
 * known shapes in the expected place (the per-message turn, the literal default system turn,
 * the generation prompt); then rendering is plain string building. Anything else is refused
 * with -ENOTSUP rather than rendered approximately.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/text/tokenizer.h"

/* Placeholders in a run's signature. Template literals holding these bytes are refused. */
#define SIG_ROLE '\x01'
#define SIG_CONTENT '\x02'
#define SIG_OTHER '\x03'

#define TURN_SIG "<|im_start|>\x01\n\x02<|im_end|>\n"
#define GEN_SIG "<|im_start|>assistant\n"
#define SYS_HEAD "<|im_start|>system\n"
#define SYS_TAIL "<|im_end|>\n"
#define FIRST_ROLE "messages [ 0 ] [ 'role' ]"
#define MAX_DEPTH 32

enum tok_kind { TK_NAME, TK_STR, TK_NUM, TK_OP };

typedef struct tmpl_tok {
    int kind;
    const char *p; /* TK_STR: the decoded value in the arena */
    size_t n;
} tmpl_tok;

enum frame_kind { F_FOR_MSG, F_FOR_OTHER, F_IF };

typedef struct frame {
    int kind;
    int branch; /* F_IF: 0 in the if branch, 1 after elif, 2 after else */
    char cond[160];
} frame;

typedef struct tmpl {
    const char *src;
    size_t len;
    char *arena; /* decoded string literals */
    size_t arena_used;
    tmpl_tok *toks; /* tokens of the current tag */
    size_t n_toks, cap_toks;
    char *sig; /* the current run: emitted text with placeholders */
    size_t sig_n, sig_cap;
    size_t run_off; /* template offset of the current run's first output */
    frame stack[MAX_DEPTH];
    int depth;
    char loop_var[64];
    bool loop_seen, loop_done;
    int n_turns, n_gens;
    const char *sys; /* default system text, in the arena (sys_n bytes) */
    size_t sys_n;
    bool sys_in_loop;
    char *err;
    size_t errlen;
} tmpl;

static int fail(tmpl *t, size_t off, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Sets "chat template not supported: <what> at offset N: '<snippet>'". */
static int fail(tmpl *t, size_t off, const char *fmt, ...)
{
    char what[160], snip[48];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    size_t k = 0;
    for (size_t i = off; i < t->len && k + 1 < sizeof snip; i++)
        snip[k++] = (unsigned char)t->src[i] < 0x20 ? ' ' : t->src[i];
    while (k > 0 && ((unsigned char)snip[k - 1] & 0xC0) == 0x80)
        k--; /* never end the snippet inside a UTF-8 sequence */
    if (k > 0 && (unsigned char)snip[k - 1] >= 0xC0)
        k--;
    snip[k] = '\0';
    if (t->err && t->errlen)
        snprintf(t->err, t->errlen, "chat template not supported: %s at offset %zu: '%s'", what,
                 off, snip);
    return -ENOTSUP;
}

static int sig_add(tmpl *t, const char *s, size_t n)
{
    if (t->sig_n + n + 1 > t->sig_cap) {
        size_t cap = t->sig_cap ? t->sig_cap : 256;
        while (cap < t->sig_n + n + 1)
            cap *= 2;
        char *p = realloc(t->sig, cap);
        if (!p)
            return -ENOMEM;
        t->sig = p;
        t->sig_cap = cap;
    }
    memcpy(t->sig + t->sig_n, s, n);
    t->sig_n += n;
    t->sig[t->sig_n] = '\0';
    return 0;
}

/* Appends literal output, which must not contain the placeholder bytes. */
static int sig_text(tmpl *t, const char *s, size_t n, size_t off)
{
    if (!n)
        return 0;
    if (t->sig_n == 0)
        t->run_off = off;
    for (size_t i = 0; i < n; i++)
        if (s[i] == SIG_ROLE || s[i] == SIG_CONTENT || s[i] == SIG_OTHER)
            return sig_add(t, "\x03", 1);
    return sig_add(t, s, n);
}

/* --- lexing one tag ------------------------------------------------------------------------ */

static bool is_name_start(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static int push_tok(tmpl *t, int kind, const char *p, size_t n)
{
    if (t->n_toks == t->cap_toks) {
        size_t cap = t->cap_toks ? t->cap_toks * 2 : 32;
        tmpl_tok *v = realloc(t->toks, cap * sizeof *v);
        if (!v)
            return -ENOMEM;
        t->toks = v;
        t->cap_toks = cap;
    }
    t->toks[t->n_toks++] = (tmpl_tok){kind, p, n};
    return 0;
}

/* Decodes the string literal at *pos (its quote) into the arena, Python-style escapes. */
static int lex_string(tmpl *t, size_t *pos)
{
    size_t start = *pos, i = start + 1;
    char q = t->src[start];
    char *out = t->arena + t->arena_used;
    size_t k = 0;
    for (;; i++) {
        if (i >= t->len)
            return fail(t, start, "unterminated string literal");
        char c = t->src[i];
        if (c == q)
            break;
        if (c != '\\') {
            out[k++] = c;
            continue;
        }
        if (++i >= t->len)
            return fail(t, start, "unterminated string literal");
        switch (t->src[i]) {
        case 'n':
            out[k++] = '\n';
            break;
        case 't':
            out[k++] = '\t';
            break;
        case 'r':
            out[k++] = '\r';
            break;
        case '\\':
        case '\'':
        case '"':
            out[k++] = t->src[i];
            break;
        case 'x':
        case 'u':
        case 'U':
        case 'N':
        case '0':
        case 'a':
        case 'b':
        case 'f':
        case 'v':
            return fail(t, i - 1, "unsupported escape in a string literal");
        default: /* Python keeps unknown escapes as they are */
            out[k++] = '\\';
            out[k++] = t->src[i];
        }
    }
    t->arena_used += k;
    *pos = i + 1;
    /* out points into t->arena, which analyse()'s caller frees; the analyzer loses track. */
    return push_tok(t, TK_STR, out, k); // NOLINT(clang-analyzer-unix.Malloc)
}

/* Lexes the tag body from *pos up to its closing delimiter close ("}}" or "%}"), setting
 * *trim_right for a "-" before it and *pos past it. */
static int lex_tag(tmpl *t, size_t *pos, const char *close, bool *trim_right)
{
    size_t i = *pos;
    t->n_toks = 0;
    *trim_right = false;
    for (;;) {
        while (i < t->len && is_space(t->src[i]))
            i++;
        if (i >= t->len)
            return fail(t, *pos, "unterminated tag");
        const char *s = t->src + i;
        size_t left = t->len - i;
        if (left >= 3 && s[0] == '-' && memcmp(s + 1, close, 2) == 0) {
            *trim_right = true;
            *pos = i + 3;
            return 0;
        }
        if (left >= 2 && memcmp(s, close, 2) == 0) {
            *pos = i + 2;
            return 0;
        }
        int rc;
        size_t j = i + 1;
        if (s[0] == '\'' || s[0] == '"') {
            rc = lex_string(t, &i);
            j = i;
        } else if (is_name_start(s[0])) {
            while (j < t->len && (is_name_start(t->src[j]) || is_digit(t->src[j])))
                j++;
            rc = push_tok(t, TK_NAME, s, j - i);
        } else if (is_digit(s[0])) {
            while (j < t->len && is_digit(t->src[j]))
                j++;
            rc = push_tok(t, TK_NUM, s, j - i);
        } else {
            if (left >= 2 && s[1] == '=' && strchr("=!<>", s[0]))
                j++;
            rc = push_tok(t, TK_OP, s, j - i);
        }
        if (rc < 0)
            return rc;
        i = j;
    }
}

static bool tok_is(const tmpl_tok *k, int kind, const char *s)
{
    return k->kind == kind && k->n == strlen(s) && memcmp(k->p, s, k->n) == 0;
}

/* Renders tokens [a, b) canonically: single spaces between tokens, strings in single quotes,
 * and x.y written as x [ 'y' ]. Too long a condition is cut (and then matches nothing). */
static void canon(const tmpl *t, size_t a, size_t b, char *out, size_t cap)
{
    size_t k = 0;
    out[0] = '\0';
    for (size_t i = a; i < b; i++) {
        const tmpl_tok *x = &t->toks[i];
        int n;
        if (tok_is(x, TK_OP, ".") && i + 1 < b && t->toks[i + 1].kind == TK_NAME) {
            n = snprintf(out + k, cap - k, "%s[ '%.*s' ]", k ? " " : "", (int)t->toks[i + 1].n,
                         t->toks[i + 1].p);
            i++;
        } else if (x->kind == TK_STR) {
            n = snprintf(out + k, cap - k, "%s'%.*s'", k ? " " : "", (int)x->n, x->p);
        } else {
            n = snprintf(out + k, cap - k, "%s%.*s", k ? " " : "", (int)x->n, x->p);
        }
        if (n < 0 || (size_t)n >= cap - k) {
            out[0] = '\0';
            return;
        }
        k += (size_t)n;
    }
}

/* --- runs and statements ------------------------------------------------------------------- */

/* Adds the output of one {{ }} tag: items joined by + or ~. */
static int run_expr(tmpl *t, size_t off)
{
    if (t->n_toks >= 1 && tok_is(&t->toks[0], TK_NAME, "raise_exception"))
        return 0; /* an error path: renders nothing when the input is valid */
    size_t a = 0;
    while (a < t->n_toks) {
        size_t b = a;
        int nest = 0;
        while (b < t->n_toks && (nest > 0 || !(tok_is(&t->toks[b], TK_OP, "+") ||
                                               tok_is(&t->toks[b], TK_OP, "~")))) {
            if (tok_is(&t->toks[b], TK_OP, "(") || tok_is(&t->toks[b], TK_OP, "["))
                nest++;
            else if (tok_is(&t->toks[b], TK_OP, ")") || tok_is(&t->toks[b], TK_OP, "]"))
                nest--;
            b++;
        }
        char c[96], role[96], content[96];
        canon(t, a, b, c, sizeof c);
        snprintf(role, sizeof role, "%s [ 'role' ]", t->loop_var);
        snprintf(content, sizeof content, "%s [ 'content' ]", t->loop_var);
        int rc;
        if (b == a + 1 && t->toks[a].kind == TK_STR) {
            rc = sig_text(t, t->toks[a].p, t->toks[a].n, off);
        } else {
            const char *ph = !t->loop_var[0]       ? "\x03"
                             : !strcmp(c, role)    ? "\x01"
                             : !strcmp(c, content) ? "\x02"
                                                   : "\x03";
            if (t->sig_n == 0)
                t->run_off = off;
            rc = sig_add(t, ph, 1);
        }
        if (rc < 0)
            return rc;
        a = b + 1;
    }
    return 0;
}

static const frame *top(const tmpl *t)
{
    return t->depth ? &t->stack[t->depth - 1] : NULL;
}

static bool is_cond(const frame *f, int branch, const char *cond)
{
    return f && f->kind == F_IF && f->branch == branch && !strcmp(f->cond, cond);
}

/* Where a default system turn may stand: SmolLM2's form inside the loop, or before it. */
static int sys_context(const tmpl *t)
{
    const frame *f = top(t);
    if (t->depth == 2 && t->stack[0].kind == F_FOR_MSG && t->n_turns == 0 &&
        (is_cond(f, 0, "loop [ 'first' ] and " FIRST_ROLE " != 'system'") ||
         is_cond(f, 0, FIRST_ROLE " != 'system' and loop [ 'first' ]")))
        return 1;
    if (t->depth == 1 && !t->loop_seen &&
        (is_cond(f, 0, FIRST_ROLE " != 'system'") || is_cond(f, 2, FIRST_ROLE " == 'system'")))
        return 0;
    return -1;
}

/* Classifies the run that just ended (at a statement or the end of the template). */
static int end_run(tmpl *t)
{
    if (t->sig_n == 0)
        return 0;
    const char *s = t->sig;
    size_t n = t->sig_n, hn = strlen(SYS_HEAD), tn = strlen(SYS_TAIL);
    const frame *f = top(t);
    t->sig_n = 0;
    if (!strcmp(s, TURN_SIG)) {
        if (!f || f->kind != F_FOR_MSG || t->n_turns)
            return fail(t, t->run_off, "message turn outside a plain `for m in messages` loop");
        t->n_turns++;
        return 0;
    }
    if (!strcmp(s, GEN_SIG)) {
        if (t->depth != 1 || !is_cond(f, 0, "add_generation_prompt") || !t->loop_done || t->n_gens)
            return fail(t, t->run_off, "generation prompt not under `if add_generation_prompt`");
        t->n_gens++;
        return 0;
    }
    if (n >= hn + tn && !memcmp(s, SYS_HEAD, hn) && !memcmp(s + n - tn, SYS_TAIL, tn) &&
        !strpbrk(s, "\x01\x02\x03")) {
        const char *body = t->arena + t->arena_used;
        size_t bn = n - hn - tn;
        memcpy((char *)body, s + hn, bn);
        int ctx = sys_context(t);
        if (ctx < 0 || t->sys || memmem(body, bn, "<|im_", 5))
            return fail(t, t->run_off,
                        "default system turn not under `messages[0]['role'] != 'system'`");
        t->arena_used += bn;
        t->sys = body;
        t->sys_n = bn;
        t->sys_in_loop = ctx == 1;
        return 0;
    }
    return fail(t, t->run_off, "output that is not a ChatML turn");
}

static int stmt(tmpl *t, size_t off)
{
    int rc = end_run(t);
    if (rc < 0)
        return rc;
    if (t->n_toks == 0 || t->toks[0].kind != TK_NAME)
        return fail(t, off, "malformed statement");
    const tmpl_tok *k = t->toks;
    frame *f = t->depth ? &t->stack[t->depth - 1] : NULL;
    if (tok_is(k, TK_NAME, "for") || tok_is(k, TK_NAME, "if")) {
        if (t->depth == MAX_DEPTH)
            return fail(t, off, "nesting too deep");
        frame *nf = &t->stack[t->depth++];
        memset(nf, 0, sizeof *nf);
        if (tok_is(k, TK_NAME, "if")) {
            nf->kind = F_IF;
            canon(t, 1, t->n_toks, nf->cond, sizeof nf->cond);
        } else if (t->depth == 1 && t->n_toks == 4 && k[1].kind == TK_NAME &&
                   tok_is(&k[2], TK_NAME, "in") && tok_is(&k[3], TK_NAME, "messages") &&
                   k[1].n < sizeof t->loop_var) {
            /* only at the top level: a loop under a condition might not run */
            if (t->loop_seen)
                return fail(t, off, "a second loop over messages");
            nf->kind = F_FOR_MSG;
            t->loop_seen = true;
            memcpy(t->loop_var, k[1].p, k[1].n);
            t->loop_var[k[1].n] = '\0';
        } else {
            nf->kind = F_FOR_OTHER;
        }
    } else if (tok_is(k, TK_NAME, "elif") || tok_is(k, TK_NAME, "else")) {
        if (!f || f->kind != F_IF)
            return fail(t, off, "{%% %.*s %%} outside an if", (int)k->n, k->p);
        f->branch = tok_is(k, TK_NAME, "else") ? 2 : 1;
    } else if (tok_is(k, TK_NAME, "endif") || tok_is(k, TK_NAME, "endfor")) {
        bool is_for = tok_is(k, TK_NAME, "endfor");
        if (!f || (f->kind == F_IF) == is_for)
            return fail(t, off, "unbalanced {%% %.*s %%}", (int)k->n, k->p);
        if (f->kind == F_FOR_MSG) {
            t->loop_done = true;
            t->loop_var[0] = '\0';
        }
        t->depth--;
    } else if (tok_is(k, TK_NAME, "set") && t->n_toks >= 3 && tok_is(&k[2], TK_OP, "=")) {
        /* renders nothing, and output that uses the variable is refused, unless it rebinds a
         * name the recognised output relies on */
        if (tok_is(&k[1], TK_NAME, "messages") ||
            (t->loop_var[0] && tok_is(&k[1], TK_NAME, t->loop_var)))
            return fail(t, off, "assignment to %.*s", (int)k[1].n, k[1].p);
    } else {
        return fail(t, off, "unsupported statement {%% %.*s %%}", (int)k->n, k->p);
    }
    return 0;
}

/* --- whitespace control and the main scan ---------------------------------------------- */

/* Raw text between tags, trimmed like Jinja with trim_blocks and lstrip_blocks. prev/next are
 * the neighbouring tags' kinds ('{', '%', '#', or 0 at the template's ends). */
static int raw_text(tmpl *t, size_t a, size_t b, int prev, bool prev_trim, int next, bool next_trim)
{
    if (prev_trim) {
        while (a < b && is_space(t->src[a]))
            a++;
    } else if (prev == '%' || prev == '#') {
        if (a < b && t->src[a] == '\n')
            a++;
        else if (a + 1 < b && t->src[a] == '\r' && t->src[a + 1] == '\n')
            a += 2;
    }
    if (next_trim) {
        while (b > a && is_space(t->src[b - 1]))
            b--;
    } else if (next == '%' || next == '#') {
        size_t e = b;
        while (e > a && (t->src[e - 1] == ' ' || t->src[e - 1] == '\t'))
            e--;
        if (e == 0 || t->src[e - 1] == '\n') /* only the tag's own line is stripped */
            b = e;
    }
    return sig_text(t, t->src + a, b - a, a);
}

static int scan(tmpl *t)
{
    size_t pos = 0;
    int prev = 0;
    bool prev_trim = false;
    for (;;) {
        const char *o = NULL;
        for (size_t i = pos; i + 1 < t->len; i++)
            if (t->src[i] == '{' && strchr("{%#", t->src[i + 1])) {
                o = t->src + i;
                break;
            }
        size_t ts = o ? (size_t)(o - t->src) : t->len;
        int kind = o ? o[1] : 0;
        bool ltrim = o && ts + 2 < t->len && t->src[ts + 2] == '-';
        int rc = raw_text(t, pos, ts, prev, prev_trim, kind, ltrim);
        if (rc < 0 || !o)
            return rc;
        size_t p = ts + 2 + (ts + 2 < t->len && strchr("-+", t->src[ts + 2]) ? 1 : 0);
        if (kind == '#') {
            const char *e = NULL;
            for (size_t i = p; i + 1 < t->len && !e; i++)
                if (t->src[i] == '#' && t->src[i + 1] == '}')
                    e = t->src + i;
            if (!e)
                return fail(t, ts, "unterminated comment");
            prev_trim = e > t->src + p && e[-1] == '-';
            pos = (size_t)(e - t->src) + 2;
        } else {
            rc = lex_tag(t, &p, kind == '{' ? "}}" : "%}", &prev_trim);
            if (rc == 0)
                rc = kind == '{' ? run_expr(t, ts) : stmt(t, ts);
            if (rc < 0)
                return rc;
            pos = p;
        }
        prev = kind;
    }
}

/* Checks the template and extracts what rendering needs. */
static int analyse(tmpl *t)
{
    if (!t->src) {
        snprintf(t->err, t->errlen,
                 "chat template not supported: the model has no tokenizer.chat_template");
        return -ENOTSUP;
    }
    if (!strstr(t->src, "<|im_start|>") || !strstr(t->src, "<|im_end|>")) {
        char head[64];
        size_t k = 0;
        for (size_t i = 0; i < t->len && k < 60; i++)
            head[k++] = (unsigned char)t->src[i] < 0x20 ? ' ' : t->src[i];
        while (k > 0 && t->len > 60 && ((unsigned char)head[k - 1] & 0xC0) == 0x80)
            k--;
        if (k > 0 && t->len > 60 && (unsigned char)head[k - 1] >= 0xC0)
            k--;
        head[k] = '\0';
        snprintf(t->err, t->errlen,
                 "chat template not supported: not a ChatML template (first 60 chars: %s)", head);
        return -ENOTSUP;
    }
    /* decoded literals and the system text both fit in twice the template */
    t->arena = malloc(2 * t->len + 1);
    if (!t->arena)
        return -ENOMEM;
    int rc = scan(t);
    if (rc == 0)
        rc = end_run(t);
    if (rc == 0 && t->depth)
        rc = fail(t, t->len, "unclosed {%% %s %%}",
                  t->stack[t->depth - 1].kind == F_IF ? "if" : "for");
    if (rc == 0 && (!t->n_turns || !t->n_gens))
        rc = fail(t, 0, "%s",
                  !t->n_turns ? "no '<|im_start|>' + role + '\\n' + content + '<|im_end|>\\n' "
                                "turn in a loop over messages"
                              : "no generation prompt");
    return rc;
}

int core_chat_render_template(const char *tmpl_text, const core_chat_msg *msgs, size_t n,
                              bool add_generation_prompt, char **out, char *err, size_t errlen)
{
    char dummy[1];
    if (!err || !errlen) {
        err = dummy;
        errlen = sizeof dummy;
    }
    err[0] = '\0';
    size_t total = 64;
    for (size_t i = 0; i < n; i++) {
        if (!msgs[i].role || !msgs[i].content) {
            snprintf(err, errlen, "message %zu has no %s", i, msgs[i].role ? "content" : "role");
            return -EINVAL;
        }
        for (const char *r = msgs[i].role; *r; r++)
            if ((unsigned char)*r < 0x20 || *r == 0x7F) {
                snprintf(err, errlen, "message %zu: role contains a control character", i);
                return -EINVAL;
            }
        total += strlen(msgs[i].role) + strlen(msgs[i].content) + 32;
    }
    tmpl t = {
        .src = tmpl_text, .len = tmpl_text ? strlen(tmpl_text) : 0, .err = err, .errlen = errlen};
    int rc = analyse(&t);
    if (rc == 0) {
        bool first_is_sys = n > 0 && !strcmp(msgs[0].role, "system");
        bool with_sys = t.sys && !first_is_sys && (n > 0 || !t.sys_in_loop);
        char *s = malloc(total + (with_sys ? t.sys_n + 32 : 0));
        if (!s) {
            rc = -ENOMEM;
        } else {
            size_t k = 0;
            s[0] = 0;
            if (with_sys)
                k += (size_t)sprintf(s + k, SYS_HEAD "%.*s" SYS_TAIL, (int)t.sys_n, t.sys);
            for (size_t i = 0; i < n; i++)
                k += (size_t)sprintf(s + k, "<|im_start|>%s\n%s<|im_end|>\n", msgs[i].role,
                                     msgs[i].content);
            if (add_generation_prompt)
                memcpy(s + k, GEN_SIG, sizeof GEN_SIG);
            *out = s;
        }
    }
    if (rc == -ENOMEM && !err[0])
        snprintf(err, errlen, "out of memory");
    free(t.arena);
    free(t.toks);
    free(t.sig);
    return rc;
}
