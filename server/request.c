/* OpenAI-compatible request bodies parsed and validated into srv_request (server/request.h).
 *
 * Three steps. srv_json_check (server/json_check.c) checks the raw body against the JSON grammar
 * and writes a copy in which a NUL the client escaped as \u0000 is a byte that cannot occur in
 * UTF-8, so that it still shows after cJSON has decoded the strings. cJSON builds the tree from
 * that copy (after the check it can only fail for lack of memory, so its global, thread-unsafe
 * error pointer is never needed). The field readers below then check every field they use: type,
 * text, range, limit; each refusal names the field. What the request keeps is copied into one
 * arena: a failed parse frees one list, a successful one hands it to the request.
 */
#include "server/request.h"

#include <cJSON.h>
#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/gbnf.h"
#include "server/json_check.h"
#include "server/json_schema.h"

#define PATH_MAX_ 96   /* a field path: "messages[12].content[3].text" */
#define QUOTE_BYTES 32 /* at most this much of a client's string is quoted in a message */
#define ARENA_BLOCK 4096

/* ---- arena -------------------------------------------------------------------------------- */

struct srv_request_arena {
    struct srv_request_arena *next;
    size_t used, cap;
    max_align_t data[];
};

static void arena_free(struct srv_request_arena *a)
{
    while (a) {
        struct srv_request_arena *next = a->next;
        free(a);
        a = next;
    }
}

/* n bytes aligned for any type, from the head block or a new one; NULL when out of memory.
 * Large requests get a block of their own behind the head so the head's free space stays usable. */
static void *arena_alloc(struct srv_request_arena **head, size_t n)
{
    const size_t al = sizeof(max_align_t);
    if (n > SIZE_MAX / 2)
        return NULL;
    n = n ? (n + al - 1) / al * al : al;
    struct srv_request_arena *a = *head;
    if (a && a->cap - a->used >= n) {
        void *p = (unsigned char *)a->data + a->used;
        a->used += n;
        return p;
    }
    size_t cap = n > ARENA_BLOCK ? n : ARENA_BLOCK;
    struct srv_request_arena *b = malloc(sizeof *b + cap);
    if (!b)
        return NULL;
    b->used = n;
    b->cap = cap;
    if (a && n > ARENA_BLOCK / 2) {
        b->next = a->next;
        a->next = b;
    } else {
        b->next = a;
        *head = b;
    }
    return b->data;
}

/* ---- UTF-8 and messages -------------------------------------------------------------------- */

/* Replaces every byte that breaks UTF-8 with '?': a message cut by snprintf or quoting a cut
 * string stays valid UTF-8, so the HTTP layer can put it in JSON as it is. */
static void utf8_sanitize(char *s)
{
    size_t n = strlen(s), i = 0;
    while (i < n) {
        size_t ok = srv_utf8_check(s + i, n - i);
        if (i + ok >= n)
            break;
        s[i + ok] = '?';
        i += ok + 1;
    }
}

/* Up to QUOTE_BYTES of valid UTF-8 s, cut at a character boundary, "..." when cut. */
static const char *quote(const char *s, char *buf, size_t cap)
{
    size_t n = strlen(s);
    if (n <= QUOTE_BYTES) {
        snprintf(buf, cap, "%s", s);
        return buf;
    }
    n = QUOTE_BYTES;
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
        n--;
    snprintf(buf, cap, "%.*s...", (int)n, s);
    return buf;
}

typedef struct pctx {
    const srv_request_limits *lim;
    srv_request *r;
    const cJSON *root;
    char *err;
    size_t errlen;
    char *param;
    size_t paramlen;
    const char *guided; /* the field that gave r->grammar (guided_json, guided_regex, ...) */
} pctx;

/* Records a refusal: param = path, err = "path: message" ("request body: ..." when the path is
 * empty), both valid UTF-8 whatever bytes a client's key put in the path. Returns rc. */
__attribute__((format(printf, 4, 5))) static int fail(pctx *c, int rc, const char *path,
                                                      const char *fmt, ...)
{
    if (c->paramlen) {
        snprintf(c->param, c->paramlen, "%s", path);
        utf8_sanitize(c->param);
    }
    if (c->errlen) {
        int k = snprintf(c->err, c->errlen, "%s: ", path[0] ? path : "request body");
        if (k >= 0 && (size_t)k < c->errlen) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(c->err + k, c->errlen - (size_t)k, fmt, ap);
            va_end(ap);
        }
        utf8_sanitize(c->err);
    }
    return rc;
}

static int nomem(pctx *c)
{
    return fail(c, -ENOMEM, "", "out of memory");
}

/* ---- typed field readers ------------------------------------------------------------------- */

static const char *jtype(const cJSON *v)
{
    if (!v || cJSON_IsNull(v))
        return "null";
    if (cJSON_IsBool(v))
        return "boolean";
    if (cJSON_IsNumber(v))
        return "number";
    if (cJSON_IsString(v))
        return "string";
    if (cJSON_IsArray(v))
        return "array";
    return "object";
}

static bool absent(const cJSON *v)
{
    return !v || cJSON_IsNull(v);
}

/* Formats a field path into buf (PATH_MAX_ bytes); vsnprintf, so an absurd index only cuts it. */
__attribute__((format(printf, 2, 3))) static const char *pathf(char *buf, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, PATH_MAX_, fmt, ap);
    va_end(ap);
    return buf;
}

static const char *path_join(char *buf, const char *base, const char *name)
{
    return pathf(buf, "%s%s%s", base, base[0] ? "." : "", name);
}

/* The member `name` of obj in *out (NULL when absent); a name given twice is refused, since
 * clients disagree on which one wins. */
static int member(pctx *c, const cJSON *obj, const char *objpath, const char *name,
                  const cJSON **out)
{
    *out = NULL;
    for (const cJSON *it = obj ? obj->child : NULL; it; it = it->next) {
        if (!it->string || strcmp(it->string, name) != 0)
            continue;
        if (*out) {
            char p[PATH_MAX_];
            return fail(c, -EINVAL, path_join(p, objpath, name), "given twice");
        }
        *out = it;
    }
    return 0;
}

/* A decoded string: valid UTF-8 without NUL (srv_json_check turned \u0000 into SRV_JSON_NUL). */
static int check_text(pctx *c, const char *path, const char *s, size_t *len)
{
    size_t n = strlen(s), bad = srv_utf8_check(s, n);
    if (bad < n && (unsigned char)s[bad] == SRV_JSON_NUL)
        return fail(c, -EINVAL, path, "contains a NUL character (\\u0000) at byte %zu", bad);
    if (bad < n)
        return fail(c, -EINVAL, path, "invalid UTF-8 at byte %zu", bad);
    *len = n;
    return 0;
}

/* A string field copied into the arena; max > 0 bounds its bytes (-E2BIG). */
static int take_string(pctx *c, const cJSON *v, const char *path, size_t max, const char **out,
                       size_t *outlen)
{
    size_t n = 0;
    if (!cJSON_IsString(v))
        return fail(c, -EINVAL, path, "expected a string, got %s", jtype(v));
    int rc = check_text(c, path, v->valuestring, &n);
    if (rc)
        return rc;
    if (max && n > max)
        return fail(c, -E2BIG, path, "%zu bytes, more than the limit of %zu bytes", n, max);
    char *p = arena_alloc(&c->r->arena, n + 1);
    if (!p)
        return nomem(c);
    memcpy(p, v->valuestring, n + 1);
    *out = p;
    if (outlen)
        *outlen = n;
    return 0;
}

/* The member `name` of obj as text (path in p): refused when missing, not a string, not valid
 * UTF-8 or holding a NUL. */
static int text_member(pctx *c, const cJSON *obj, const char *objpath, const char *name, char *p,
                       const cJSON **v)
{
    size_t n;
    int rc = member(c, obj, objpath, name, v);
    path_join(p, objpath, name);
    if (rc)
        return rc;
    if (!*v)
        return fail(c, -EINVAL, p, "required");
    if (!cJSON_IsString(*v))
        return fail(c, -EINVAL, p, "expected a string, got %s", jtype(*v));
    return check_text(c, p, (*v)->valuestring, &n);
}

/* Boolean: 1 stored, 0 absent (null counts as absent), < 0 refused. */
static int get_bool(pctx *c, const cJSON *v, const char *path, bool *out)
{
    if (!v || cJSON_IsNull(v))
        return 0;
    if (!cJSON_IsBool(v))
        return fail(c, -EINVAL, path, "expected a boolean, got %s", jtype(v));
    *out = cJSON_IsTrue(v);
    return 1;
}

/* Any number: 1 stored, 0 absent, < 0 refused. */
static int get_double(pctx *c, const cJSON *v, const char *path, double *out)
{
    if (!v || cJSON_IsNull(v))
        return 0;
    if (!cJSON_IsNumber(v))
        return fail(c, -EINVAL, path, "expected a number, got %s", jtype(v));
    *out = v->valuedouble;
    return 1;
}

/* A number used as a float, in [lo, hi] or (lo, hi] when open_lo; the range is checked on the
 * float actually used, so 1e-60 is not accepted where 0 is not. hi may be INFINITY. */
static int get_float(pctx *c, const cJSON *v, const char *path, float lo, float hi, bool open_lo,
                     float *out)
{
    double d = 0;
    int rc = get_double(c, v, path, &d);
    if (rc <= 0)
        return rc;
    float f = fabs(d) <= FLT_MAX ? (float)d : (float)INFINITY;
    if (isfinite(f) && (open_lo ? f > lo : f >= lo) && f <= hi) {
        *out = f;
        return 1;
    }
    if (isinf(hi))
        return fail(c, -EINVAL, path, "must be a finite number %s %g, got %.15g",
                    open_lo ? ">" : ">=", (double)lo, d);
    return fail(c, -EINVAL, path, "must be in %c%g, %g], got %.15g", open_lo ? '(' : '[',
                (double)lo, (double)hi, d);
}

/* An integer in [lo, hi] (an integral number: 16.0 is 16): 1 stored, 0 absent, < 0 refused. */
static int get_int(pctx *c, const cJSON *v, const char *path, long long lo, long long hi,
                   long long *out)
{
    if (!v || cJSON_IsNull(v))
        return 0;
    if (!cJSON_IsNumber(v))
        return fail(c, -EINVAL, path, "expected an integer, got %s", jtype(v));
    double d = v->valuedouble;
    if (isfinite(d) && d != floor(d))
        return fail(c, -EINVAL, path, "expected an integer, got %.15g", d);
    if (d >= (double)lo && d <= (double)hi) {
        *out = (long long)d;
        return 1;
    }
    if (hi >= INT_MAX && d < (double)lo)
        return fail(c, -EINVAL, path, "must be an integer >= %lld, got %.15g", lo, d);
    return fail(c, -EINVAL, path, "must be an integer in [%lld, %lld], got %.15g", lo, hi, d);
}

/* Top-level field lookups. */
static int top(pctx *c, const char *name, const cJSON **v)
{
    return member(c, c->root, "", name, v);
}

static int top_float(pctx *c, const char *name, float lo, float hi, bool open_lo, float *out)
{
    const cJSON *v;
    int rc = top(c, name, &v);
    if (!rc)
        rc = get_float(c, v, name, lo, hi, open_lo, out);
    return rc < 0 ? rc : 0;
}

/* ---- completions: prompt ------------------------------------------------------------------- */

static int take_prompt_text(pctx *c, const cJSON *v, const char *path)
{
    srv_request *r = c->r;
    int rc = take_string(c, v, path, c->lim->max_prompt_bytes, &r->prompt, &r->prompt_len);
    if (!rc && r->prompt_len == 0)
        rc = fail(c, -EINVAL, path, "must not be empty");
    return rc;
}

/* A pre-tokenized prompt: an array of token ids. Each id counts 4 bytes against the limit. */
static int take_prompt_ids(pctx *c, const cJSON *arr, const char *path)
{
    srv_request *r = c->r;
    size_t n = 0, max = c->lim->max_prompt_bytes;
    for (const cJSON *it = arr->child; it; it = it->next)
        n++;
    if (n == 0)
        return fail(c, -EINVAL, path, "must not be empty");
    if (max && n > max / sizeof(int32_t))
        return fail(c, -E2BIG, path,
                    "%zu token ids (4 bytes each), more than the limit of %zu bytes", n, max);
    int32_t *ids = arena_alloc(&r->arena, n * sizeof *ids);
    if (!ids)
        return nomem(c);
    long long hi = c->lim->n_vocab > 0 ? (long long)c->lim->n_vocab - 1 : INT32_MAX;
    size_t k = 0;
    for (const cJSON *it = arr->child; it; it = it->next, k++) {
        char p[PATH_MAX_];
        pathf(p, "%s[%zu]", path, k);
        double d = cJSON_IsNumber(it) ? it->valuedouble : -1;
        if (!cJSON_IsNumber(it))
            return fail(c, -EINVAL, p, "expected a token id (an integer in [0, %lld]), got %s", hi,
                        jtype(it));
        if (!(d >= 0 && d <= (double)hi && d == floor(d)))
            return fail(c, -EINVAL, p, "expected a token id (an integer in [0, %lld]), got %.15g",
                        hi, d);
        ids[k] = (int32_t)d;
    }
    r->prompt_ids = ids;
    r->n_prompt_ids = n;
    return 0;
}

/* "prompt": a string, an array of one string, an array of token ids, or an array of one array
 * of token ids. Several prompts (a batch) are refused: one request, one completion. */
static int parse_prompt(pctx *c)
{
    const cJSON *v;
    int rc = top(c, "prompt", &v);
    if (rc)
        return rc;
    if (absent(v))
        return fail(c, -EINVAL, "prompt", "required");
    if (cJSON_IsString(v))
        return take_prompt_text(c, v, "prompt");
    if (!cJSON_IsArray(v))
        return fail(c, -EINVAL, "prompt",
                    "expected a string or an array (of one string, or of token ids), got %s",
                    jtype(v));
    const cJSON *first = v->child;
    if (!first)
        return fail(c, -EINVAL, "prompt", "must not be empty");
    if (cJSON_IsNumber(first))
        return take_prompt_ids(c, v, "prompt");
    if (first->next && (cJSON_IsString(first) || cJSON_IsArray(first))) {
        size_t n = 0;
        for (const cJSON *it = first; it; it = it->next)
            n++;
        return fail(c, -EINVAL, "prompt",
                    "%zu prompts in one request are not supported; send one request per prompt", n);
    }
    if (cJSON_IsString(first))
        return take_prompt_text(c, first, "prompt[0]");
    if (cJSON_IsArray(first))
        return take_prompt_ids(c, first, "prompt[0]");
    return fail(c, -EINVAL, "prompt[0]",
                "expected a string, a token id or an array of token ids, got %s", jtype(first));
}

/* ---- chat: messages ------------------------------------------------------------------------ */

/* The role as one of the static names the chat template knows. */
static int take_role(pctx *c, const cJSON *m, const char *mpath, const char **out)
{
    static const char *const roles[][2] = {{"system", "system"},
                                           {"user", "user"},
                                           {"assistant", "assistant"},
                                           {"developer", "system"}};
    const cJSON *v;
    char p[PATH_MAX_], q[QUOTE_BYTES + 8];
    int rc = text_member(c, m, mpath, "role", p, &v);
    if (rc)
        return rc;
    for (size_t i = 0; i < sizeof roles / sizeof roles[0]; i++) {
        if (!strcmp(v->valuestring, roles[i][0])) {
            *out = roles[i][1];
            return 0;
        }
    }
    if (!strcmp(v->valuestring, "tool") || !strcmp(v->valuestring, "function"))
        return fail(c, -EINVAL, p, "'%s' messages are not supported (no tool calling)",
                    v->valuestring);
    return fail(c, -EINVAL, p, "must be one of system, user, assistant, got '%s'",
                quote(v->valuestring, q, sizeof q));
}

/* Why a content part of this type is refused, or NULL for "text". */
static const char *part_refusal(const char *type)
{
    if (!strcmp(type, "text"))
        return NULL;
    if (!strcmp(type, "image_url") || !strcmp(type, "image") || !strcmp(type, "input_image"))
        return "image parts are not supported (this server is text-only)";
    if (!strcmp(type, "input_audio") || !strcmp(type, "audio"))
        return "audio parts are not supported (this server is text-only)";
    if (!strcmp(type, "file") || !strcmp(type, "input_file"))
        return "file parts are not supported (this server is text-only)";
    return "";
}

/* An array of content parts: every part must be {"type": "text", "text": ...}; the texts are
 * concatenated as they are, with nothing between them. */
static int take_parts(pctx *c, const cJSON *arr, const char *cpath, const char **out,
                      size_t *outlen)
{
    size_t total = 0, j = 0;
    char pp[PATH_MAX_], p[PATH_MAX_], q[QUOTE_BYTES + 8];
    if (!arr->child)
        return fail(c, -EINVAL, cpath, "must not be an empty array");
    for (const cJSON *part = arr->child; part; part = part->next, j++) {
        const cJSON *type, *text;
        pathf(pp, "%s[%zu]", cpath, j);
        if (!cJSON_IsObject(part))
            return fail(c, -EINVAL, pp, "expected a content part object, got %s", jtype(part));
        int rc = text_member(c, part, pp, "type", p, &type);
        if (rc)
            return rc;
        const char *why = part_refusal(type->valuestring);
        if (why && why[0])
            return fail(c, -EINVAL, pp, "%s", why);
        if (why)
            return fail(c, -EINVAL, p, "unknown content part type '%s' (only 'text' is supported)",
                        quote(type->valuestring, q, sizeof q));
        if ((rc = text_member(c, part, pp, "text", p, &text)))
            return rc;
        total += strlen(text->valuestring);
    }
    char *s = arena_alloc(&c->r->arena, total + 1);
    if (!s)
        return nomem(c);
    size_t o = 0;
    for (const cJSON *part = arr->child; part; part = part->next) {
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        size_t n = strlen(text->valuestring);
        memcpy(s + o, text->valuestring, n);
        o += n;
    }
    s[o] = 0;
    *out = s;
    *outlen = o;
    return 0;
}

/* Tool calls in an assistant message: absent, null or [] only. */
static int check_no_tool_calls(pctx *c, const cJSON *m, const char *mpath)
{
    static const char *const names[] = {"tool_calls", "function_call"};
    for (size_t i = 0; i < 2; i++) {
        const cJSON *v;
        char p[PATH_MAX_];
        int rc = member(c, m, mpath, names[i], &v);
        if (rc)
            return rc;
        if (!absent(v) && !(cJSON_IsArray(v) && !v->child))
            return fail(c, -EINVAL, path_join(p, mpath, names[i]), "tool calls are not supported");
    }
    return 0;
}

static int take_message(pctx *c, const cJSON *m, size_t i, core_chat_msg *msg, size_t *len)
{
    char mpath[PATH_MAX_], p[PATH_MAX_];
    const cJSON *v;
    pathf(mpath, "messages[%zu]", i);
    if (!cJSON_IsObject(m))
        return fail(c, -EINVAL, mpath, "expected an object with \"role\" and \"content\", got %s",
                    jtype(m));
    int rc = take_role(c, m, mpath, &msg->role);
    if (!rc)
        rc = check_no_tool_calls(c, m, mpath);
    if (!rc)
        rc = member(c, m, mpath, "content", &v);
    if (rc)
        return rc;
    path_join(p, mpath, "content");
    if (!v)
        return fail(c, -EINVAL, p, "required");
    if (cJSON_IsString(v))
        return take_string(c, v, p, 0, &msg->content, len);
    if (cJSON_IsArray(v))
        return take_parts(c, v, p, &msg->content, len);
    return fail(c, -EINVAL, p, "expected a string or an array of content parts, got %s", jtype(v));
}

static int parse_messages(pctx *c)
{
    srv_request *r = c->r;
    const cJSON *v;
    size_t n = 0, total = 0, max = c->lim->max_prompt_bytes, i = 0;
    int rc = top(c, "messages", &v);
    if (rc)
        return rc;
    if (absent(v))
        return fail(c, -EINVAL, "messages", "required");
    if (!cJSON_IsArray(v))
        return fail(c, -EINVAL, "messages", "expected an array of messages, got %s", jtype(v));
    for (const cJSON *it = v->child; it; it = it->next)
        n++;
    if (n == 0)
        return fail(c, -EINVAL, "messages", "must not be empty");
    if (c->lim->max_messages > 0 && n > (size_t)c->lim->max_messages)
        return fail(c, -E2BIG, "messages", "%zu messages, more than the limit of %d", n,
                    c->lim->max_messages);
    r->messages = arena_alloc(&r->arena, n * sizeof *r->messages);
    if (!r->messages)
        return nomem(c);
    for (const cJSON *it = v->child; it; it = it->next, i++) {
        size_t len = 0;
        if ((rc = take_message(c, it, i, &r->messages[i], &len)))
            return rc;
        total += len;
        if (max && total > max)
            return fail(c, -E2BIG, "messages",
                        "the contents add up to more than the limit of %zu bytes (at message %zu)",
                        max, i);
    }
    r->n_messages = n;
    return 0;
}

/* ---- fields of both kinds ------------------------------------------------------------------ */

static int parse_strings(pctx *c)
{
    const cJSON *v;
    int rc = top(c, "model", &v);
    if (!rc && !absent(v))
        rc = take_string(c, v, "model", SRV_MODEL_BYTES_MAX, &c->r->model, NULL);
    if (!rc)
        rc = top(c, "user", &v);
    if (!rc && !absent(v))
        rc = take_string(c, v, "user", SRV_USER_BYTES_MAX, &c->r->user, NULL);
    return rc;
}

/* One of max_tokens / max_completion_tokens: an integer in [0 or 1, limit]. */
static int max_tokens_field(pctx *c, const char *name, int limit, long long *out)
{
    const cJSON *v;
    int rc = top(c, name, &v);
    if (rc)
        return rc;
    if (v && cJSON_IsNumber(v) && v->valuedouble > limit)
        return fail(c, -E2BIG, name, "%.15g is more than this server's limit of %d", v->valuedouble,
                    limit);
    return get_int(c, v, name, c->r->kind == SRV_REQ_CHAT ? 1 : 0, limit, out);
}

/* max_tokens (chat: or max_completion_tokens, its newer name), or the default. */
static int parse_max_tokens(pctx *c)
{
    srv_request *r = c->r;
    const srv_request_limits *l = c->lim;
    int limit = l->max_tokens_limit > 0 ? l->max_tokens_limit : INT_MAX, gb = 0;
    long long a = 0, b = 0;
    int ga = max_tokens_field(c, "max_tokens", limit, &a);
    if (ga < 0)
        return ga;
    if (r->kind == SRV_REQ_CHAT &&
        (gb = max_tokens_field(c, "max_completion_tokens", limit, &b)) < 0)
        return gb;
    if (ga > 0 && gb > 0 && a != b)
        return fail(c, -EINVAL, "max_tokens",
                    "%lld conflicts with max_completion_tokens %lld (give one of them)", a, b);
    if (ga > 0 || gb > 0) {
        r->max_tokens = (int)(ga > 0 ? a : b);
        r->max_tokens_set = true;
    } else if (r->kind == SRV_REQ_COMPLETION) {
        r->max_tokens =
            limit < SRV_COMPLETION_DEFAULT_MAX_TOKENS ? limit : SRV_COMPLETION_DEFAULT_MAX_TOKENS;
    } else {
        r->max_tokens = l->default_max_tokens > 0 && l->default_max_tokens < limit
                            ? l->default_max_tokens
                            : limit;
    }
    return 0;
}

/* seed: any integer in [-2^63, 2^64), negative ones taken modulo 2^64. It arrives as a double,
 * so seeds beyond 2^53 are rounded to a neighbour: still deterministic. */
static int parse_seed(pctx *c)
{
    const cJSON *v;
    double d = 0;
    int rc = top(c, "seed", &v);
    if (!rc && !absent(v) && !cJSON_IsNumber(v))
        return fail(c, -EINVAL, "seed", "expected an integer, got %s", jtype(v));
    if (rc || (rc = get_double(c, v, "seed", &d)) <= 0)
        return rc;
    if (isfinite(d) && d != floor(d))
        return fail(c, -EINVAL, "seed", "expected an integer, got %.15g", d);
    if (!(d >= -9223372036854775808.0 && d < 18446744073709551616.0))
        return fail(c, -EINVAL, "seed", "must be an integer in [-2^63, 2^64), got %.15g", d);
    c->r->sampling.seed = d < 0 ? (uint64_t)(int64_t)d : (uint64_t)d;
    c->r->seed_set = true;
    return 0;
}

static int parse_sampling(pctx *c)
{
    core_sampler_params *s = &c->r->sampling;
    const cJSON *v;
    long long k = 0;
    int rc = top_float(c, "temperature", 0.0f, 2.0f, false, &s->temperature);
    if (!rc)
        rc = top_float(c, "top_p", 0.0f, 1.0f, true, &s->top_p);
    if (!rc)
        rc = top_float(c, "min_p", 0.0f, 1.0f, false, &s->min_p);
    if (!rc)
        rc = top_float(c, "repetition_penalty", 0.0f, INFINITY, true, &s->repeat_penalty);
    if (!rc)
        rc = top_float(c, "presence_penalty", -2.0f, 2.0f, false, &s->presence_penalty);
    if (!rc)
        rc = top_float(c, "frequency_penalty", -2.0f, 2.0f, false, &s->frequency_penalty);
    if (!rc && !(rc = top(c, "top_k", &v)) && (rc = get_int(c, v, "top_k", 0, INT_MAX, &k)) > 0)
        s->top_k = (int)k;
    if (rc < 0)
        return rc;
    return parse_seed(c);
}

static int take_stop(pctx *c, const cJSON *v, const char *path)
{
    srv_request *r = c->r;
    size_t n = 0;
    int rc = take_string(c, v, path, SRV_STOP_BYTES_MAX, &r->stop[r->n_stop], &n);
    if (!rc && n == 0)
        return fail(c, -EINVAL, path, "must not be empty");
    if (!rc)
        r->n_stop++;
    return rc;
}

/* stop: a string or an array of up to SRV_STOP_MAX strings. */
static int parse_stop(pctx *c)
{
    const cJSON *v;
    int rc = top(c, "stop", &v), i = 0;
    if (rc || absent(v))
        return rc;
    if (cJSON_IsString(v))
        return take_stop(c, v, "stop");
    if (!cJSON_IsArray(v))
        return fail(c, -EINVAL, "stop", "expected a string or an array of strings, got %s",
                    jtype(v));
    int n = cJSON_GetArraySize(v);
    if (n > SRV_STOP_MAX)
        return fail(c, -E2BIG, "stop", "%d sequences, more than the limit of %d", n, SRV_STOP_MAX);
    for (const cJSON *it = v->child; it && !rc; it = it->next, i++) {
        char p[PATH_MAX_];
        pathf(p, "stop[%d]", i);
        rc = take_stop(c, it, p);
    }
    return rc;
}

static int parse_stream(pctx *c)
{
    srv_request *r = c->r;
    const cJSON *v, *u;
    bool usage = false;
    int rc = top(c, "stream", &v);
    if (!rc)
        rc = get_bool(c, v, "stream", &r->stream);
    if (rc >= 0)
        rc = top(c, "stream_options", &v);
    if (rc < 0 || absent(v))
        return rc < 0 ? rc : 0;
    if (!cJSON_IsObject(v))
        return fail(c, -EINVAL, "stream_options", "expected an object, got %s", jtype(v));
    if ((rc = member(c, v, "stream_options", "include_usage", &u)))
        return rc;
    if ((rc = get_bool(c, u, "stream_options.include_usage", &usage)) < 0)
        return rc;
    r->stream_include_usage = r->stream && usage;
    return 0;
}

/* completions: "logprobs": k in [0, 5]; chat: "logprobs": true and "top_logprobs": k. */
static int parse_logprobs(pctx *c)
{
    srv_request *r = c->r;
    const cJSON *v;
    long long k = 0;
    bool on = false;
    int rc = top(c, "logprobs", &v);
    if (rc)
        return rc;
    if (r->kind == SRV_REQ_COMPLETION) {
        if ((rc = get_int(c, v, "logprobs", 0, SRV_LOGPROBS_MAX, &k)) > 0)
            r->logprobs = (int)k;
        return rc < 0 ? rc : 0;
    }
    if ((rc = get_bool(c, v, "logprobs", &on)) < 0 || (rc = top(c, "top_logprobs", &v)))
        return rc;
    if ((rc = get_int(c, v, "top_logprobs", 0, SRV_TOP_LOGPROBS_MAX, &k)) < 0)
        return rc;
    if (rc > 0 && !on)
        return fail(c, -EINVAL, "top_logprobs", "requires \"logprobs\": true");
    r->logprobs = on ? (int)k : -1;
    return 0;
}

/* Fields that would change the result and are not implemented: accepted when absent, null or
 * neutral, refused by name otherwise. */
enum neutral {
    NEUTRAL_NONE,  /* nothing but null */
    NEUTRAL_EMPTY, /* "", [] or {} */
    NEUTRAL_ZERO,  /* the number 0 */
    NEUTRAL_ONE,   /* the number 1 */
    NEUTRAL_OFF    /* the string "none" */
};

#define K_CMPL (1u << SRV_REQ_COMPLETION)
#define K_CHAT (1u << SRV_REQ_CHAT)

static const struct unsupported {
    const char *name;
    unsigned kinds;
    enum neutral ok;
    const char *why, *hint; /* hint may be NULL */
} unsupported[] = {
    {"best_of", K_CMPL, NEUTRAL_ONE, "only 1 is supported", "one candidate per request"},
    {"suffix", K_CMPL, NEUTRAL_EMPTY, "not supported", "no insertion; only \"\" or null"},
    {"tools", K_CHAT, NEUTRAL_EMPTY, "tool calling is not supported", NULL},
    {"functions", K_CHAT, NEUTRAL_EMPTY, "tool calling is not supported", NULL},
    {"tool_choice", K_CHAT, NEUTRAL_OFF, "tool calling is not supported", "only \"none\""},
    {"function_call", K_CHAT, NEUTRAL_OFF, "tool calling is not supported", "only \"none\""},
    {"audio", K_CHAT, NEUTRAL_NONE, "audio output is not supported", NULL},
};

static bool is_neutral(const cJSON *v, enum neutral ok)
{
    switch (ok) {
    case NEUTRAL_EMPTY:
        return cJSON_IsString(v) ? !v->valuestring[0]
                                 : (cJSON_IsArray(v) || cJSON_IsObject(v)) && !v->child;
    case NEUTRAL_ZERO:
        return v->valuedouble == 0;
    case NEUTRAL_ONE:
        return v->valuedouble == 1;
    case NEUTRAL_OFF:
        return cJSON_IsString(v) && !strcmp(v->valuestring, "none");
    default:
        return false;
    }
}

static int parse_unsupported(pctx *c)
{
    const cJSON *v;
    int rc;
    for (size_t i = 0; i < sizeof unsupported / sizeof unsupported[0]; i++) {
        const struct unsupported *u = &unsupported[i];
        bool number = u->ok == NEUTRAL_ZERO || u->ok == NEUTRAL_ONE;
        if (!(u->kinds & (1u << c->r->kind)))
            continue;
        if ((rc = top(c, u->name, &v)))
            return rc;
        if (absent(v))
            continue;
        if (number && !cJSON_IsNumber(v))
            return fail(c, -EINVAL, u->name, "expected a number, got %s", jtype(v));
        if (is_neutral(v, u->ok))
            continue;
        char got[48] = "";
        if (number)
            snprintf(got, sizeof got, ", got %.15g", v->valuedouble);
        return fail(c, -EINVAL, u->name, "%s%s%s%s%s", u->why, got, u->hint ? " (" : "",
                    u->hint ? u->hint : "", u->hint ? ")" : "");
    }
    if (c->r->kind != SRV_REQ_CHAT)
        return 0;
    if ((rc = top(c, "modalities", &v)))
        return rc;
    if (!absent(v)) {
        bool ok = cJSON_IsArray(v);
        for (const cJSON *it = ok ? v->child : NULL; it; it = it->next)
            ok = ok && cJSON_IsString(it) && !strcmp(it->valuestring, "text");
        if (!ok)
            return fail(c, -EINVAL, "modalities", "only [\"text\"] is supported");
    }
    return 0;
}

/* Compiles a schema (NULL: any JSON object) into r->grammar; path names the field. */
static int compile_schema(pctx *c, const cJSON *schema, const char *path)
{
    char msg[300];
    int rc = srv_schema_compile(schema, &c->r->grammar, msg, sizeof msg);
    if (rc == -ENOMEM)
        return nomem(c);
    return rc ? fail(c, rc, path, "%s", msg) : 0;
}

/* Compiles one constraint into r->grammar: kind "regex" (the text matches it whole), "choice"
 * (exactly one of 1 to SRV_REQ_CHOICES_MAX strings), "grammar" (GBNF) or "json" (a schema, or a
 * string holding one); path names the field in messages. */
static int compile_guided(pctx *c, const char *kind, const cJSON *v, const char *path)
{
    const cJSON *it;
    char msg[300], p[PATH_MAX_];
    int rc;
    if (!strcmp(kind, "json")) {
        cJSON *parsed = NULL;
        if (cJSON_IsString(v) && !(v = parsed = cJSON_Parse(v->valuestring)))
            return fail(c, -EINVAL, path, "the string is not a JSON schema");
        if (!cJSON_IsObject(v) && !cJSON_IsBool(v))
            rc = fail(c, -EINVAL, path, "expected a JSON schema, got %s", jtype(v));
        else
            rc = compile_schema(c, v, path);
        cJSON_Delete(parsed);
        return rc;
    }
    if (!strcmp(kind, "choice")) {
        int n = cJSON_GetArraySize(v), i = 0;
        if (!cJSON_IsArray(v) || n < 1 || n > SRV_REQ_CHOICES_MAX)
            return fail(c, -EINVAL, path, "expected an array of 1 to %d strings",
                        SRV_REQ_CHOICES_MAX);
        const char **list = malloc((size_t)n * sizeof *list);
        if (!list)
            return nomem(c);
        cJSON_ArrayForEach(it, v)
        {
            if (!cJSON_IsString(it)) {
                free(list);
                return fail(c, -EINVAL, pathf(p, "%s[%d]", path, i), "expected a string, got %s",
                            jtype(it));
            }
            list[i++] = it->valuestring;
        }
        rc = srv_choice_compile(list, n, &c->r->grammar, msg, sizeof msg);
        free(list);
    } else if (!cJSON_IsString(v)) {
        return fail(c, -EINVAL, path, "expected a string, got %s", jtype(v));
    } else if (!strcmp(kind, "regex")) {
        rc = srv_regex_text_compile(v->valuestring, &c->r->grammar, msg, sizeof msg);
    } else {
        rc = srv_gbnf_compile(v->valuestring, strlen(v->valuestring), &c->r->grammar, msg,
                              sizeof msg);
    }
    if (rc == -ENOMEM)
        return nomem(c);
    return rc ? fail(c, rc, path, "%s", msg) : 0;
}

/* The constraints given as one top-level field each (vLLM's guided_* up to v0.11, llama.cpp's
 * grammar and json_schema) and the members of vLLM's structured_outputs object. */
static const struct guided_field {
    const char *name, *kind;
} guided_fields[] = {{"guided_regex", "regex"},     {"guided_choice", "choice"},
                     {"guided_grammar", "grammar"}, {"grammar", "grammar"},
                     {"json_schema", "json"},       {"guided_json", "json"}},
  structured_fields[] = {{"structured_outputs.json", "json"},
                         {"structured_outputs.regex", "regex"},
                         {"structured_outputs.choice", "choice"},
                         {"structured_outputs.grammar", "grammar"},
                         {"structured_outputs.json_object", "object"}};

/* Records that field gives the constraint; a second one is refused. */
static int guided_once(pctx *c, const char *field)
{
    if (c->guided)
        return fail(c, -EINVAL, field, "give one of %s and %s, not both", c->guided, field);
    c->guided = field;
    return 0;
}

/* vLLM's structured_outputs: {"json" | "regex" | "choice" | "grammar" | "json_object": ...}, one
 * of them, with the options that change nothing here. */
static int parse_structured_outputs(pctx *c, const cJSON *so)
{
    static const char *const neutral[] = {"disable_fallback", "disable_additional_properties",
                                          "whitespace_pattern", "structural_tag",
                                          "disable_any_whitespace"};
    const cJSON *it, *give = NULL;
    const struct guided_field *f = NULL;
    char p[PATH_MAX_];
    int rc;
    if (!cJSON_IsObject(so))
        return fail(c, -EINVAL, "structured_outputs", "expected an object, got %s", jtype(so));
    cJSON_ArrayForEach(it, so)
    {
        bool known = false;
        pathf(p, "structured_outputs.%s", it->string);
        for (size_t i = 0; i < sizeof structured_fields / sizeof structured_fields[0]; i++)
            if (!strcmp(structured_fields[i].name + sizeof "structured_outputs." - 1, it->string)) {
                known = true;
                if (absent(it) ||
                    (!strcmp(structured_fields[i].kind, "object") && cJSON_IsFalse(it)))
                    break;
                if ((rc = guided_once(c, structured_fields[i].name)))
                    return rc;
                f = &structured_fields[i];
                give = it;
            }
        for (size_t i = 0; !known && i < sizeof neutral / sizeof neutral[0]; i++)
            if (!strcmp(neutral[i], it->string)) {
                known = true;
                /* the first two change nothing (no fallback; only listed properties are
                 * generated); the others only when null or false */
                if (i >= 2 && !absent(it) && !cJSON_IsFalse(it))
                    return fail(c, -EINVAL, p, "not supported (only null%s)",
                                i == 4 ? " or false" : "");
            }
        if (!known)
            return fail(c, -EINVAL, p,
                        "unknown field (json, regex, choice, grammar and json_object are "
                        "supported)");
    }
    if (!f)
        return 0;
    if (!strcmp(f->kind, "object")) {
        if (!cJSON_IsTrue(give))
            return fail(c, -EINVAL, f->name, "expected true, got %s", jtype(give));
        return compile_schema(c, NULL, f->name);
    }
    return compile_guided(c, f->kind, give, f->name);
}

static int parse_guided(pctx *c)
{
    const cJSON *v = NULL, *so;
    const struct guided_field *f = NULL;
    int rc;
    for (size_t i = 0; i < sizeof guided_fields / sizeof guided_fields[0]; i++) {
        const cJSON *x;
        if ((rc = top(c, guided_fields[i].name, &x)))
            return rc;
        if (absent(x))
            continue;
        if ((rc = guided_once(c, guided_fields[i].name)))
            return rc;
        f = &guided_fields[i];
        v = x;
    }
    if (f && (rc = compile_guided(c, f->kind, v, f->name)))
        return rc;
    if ((rc = top(c, "structured_outputs", &so)) || absent(so))
        return rc;
    return parse_structured_outputs(c, so);
}

/* Structured outputs: response_format {"type": "text" | "json_object" | "json_schema",
 * "json_schema": {"name": ..., "schema": {...}, "strict": ...}}, or one of parse_guided's
 * fields; one of them. */
static int parse_response_format(pctx *c)
{
    const cJSON *v, *t, *js, *schema;
    char p[PATH_MAX_], q[QUOTE_BYTES + 8];
    int rc;
    if ((rc = parse_guided(c)) || (rc = top(c, "response_format", &v)) || absent(v))
        return rc;
    if (!cJSON_IsObject(v))
        return fail(c, -EINVAL, "response_format", "expected an object, got %s", jtype(v));
    if ((rc = text_member(c, v, "response_format", "type", p, &t)))
        return rc;
    bool json_object = !strcmp(t->valuestring, "json_object");
    if (!strcmp(t->valuestring, "text"))
        return 0;
    if (c->r->grammar)
        return fail(c, -EINVAL, "response_format", "give %s or response_format, not both",
                    c->guided);
    if (json_object)
        return compile_schema(c, NULL, "response_format");
    if (strcmp(t->valuestring, "json_schema") != 0)
        return fail(c, -EINVAL, p, "must be \"text\", \"json_object\" or \"json_schema\", got '%s'",
                    quote(t->valuestring, q, sizeof q));
    if ((rc = member(c, v, "response_format", "json_schema", &js)))
        return rc;
    if (!js || !cJSON_IsObject(js))
        return fail(c, -EINVAL, "response_format.json_schema", "expected an object, got %s",
                    jtype(js));
    if ((rc = member(c, js, "response_format.json_schema", "schema", &schema)))
        return rc;
    if (!schema)
        return fail(c, -EINVAL, "response_format.json_schema.schema", "required");
    return compile_schema(c, schema, "response_format.json_schema.schema");
}

/* The adaptree extension "adapters": [{"id": "fr", "scale": 0.5}, ...]. */
static int parse_adapters(pctx *c)
{
    srv_request *r = c->r;
    const cJSON *v;
    int rc = top(c, "adapters", &v), i = 0;
    if (rc || absent(v))
        return rc;
    if (!cJSON_IsArray(v))
        return fail(c, -EINVAL, "adapters",
                    "expected an array of {\"id\": ..., \"scale\": ...} objects, got %s", jtype(v));
    int n = cJSON_GetArraySize(v);
    if (n > ADAPTER_SEL_MAX)
        return fail(c, -E2BIG, "adapters", "%d adapters, more than the limit of %d", n,
                    ADAPTER_SEL_MAX);
    for (const cJSON *it = v->child; it; it = it->next, i++) {
        adapter_sel_item *item = &r->adapters[i];
        const cJSON *id, *scale;
        char ipath[PATH_MAX_], p[PATH_MAX_], msg[256];
        pathf(ipath, "adapters[%d]", i);
        if (!cJSON_IsObject(it))
            return fail(c, -EINVAL, ipath,
                        "expected an object like {\"id\": \"fr\", \"scale\": 0.5}, got %s",
                        jtype(it));
        if ((rc = text_member(c, it, ipath, "id", p, &id)))
            return rc;
        if (adapter_id_check(id->valuestring, msg, sizeof msg))
            return fail(c, -EINVAL, p, "%s", msg);
        memcpy(item->id, id->valuestring, strlen(id->valuestring) + 1);
        item->weight = 1.0f;
        if ((rc = member(c, it, ipath, "scale", &scale)))
            return rc;
        path_join(p, ipath, "scale");
        if ((rc = get_float(c, scale, p, -1000.0f, 1000.0f, false, &item->weight)) < 0)
            return rc;
        r->n_adapters = i + 1;
    }
    return 0;
}

/* ---- token-level controls: logit_bias, min_tokens, ignore_eos, stop_token_ids ------------- */

/* A token id from a logit_bias key: the decimal digits of an integer in [0, n_vocab). A key that
 * is not one is refused with param "logit_bias" (the key may be anything, even invalid UTF-8,
 * and is quoted only when it is valid). */
static int bias_key(pctx *c, const char *key, const char *path, int32_t *out)
{
    char q[QUOTE_BYTES + 8];
    long long id = 0;
    size_t n = strlen(key);
    bool digits = n > 0 && n <= 10;
    for (size_t i = 0; digits && i < n; i++) {
        digits = key[i] >= '0' && key[i] <= '9';
        id = id * 10 + (key[i] - '0');
    }
    if (!digits) {
        if (srv_utf8_check(key, n) != n)
            return fail(c, -EINVAL, "logit_bias", "a key is not a token id (nor valid UTF-8)");
        return fail(c, -EINVAL, "logit_bias",
                    "the key '%s' is not a token id (a non-negative integer)",
                    quote(key, q, sizeof q));
    }
    if (id > INT32_MAX || (c->lim->n_vocab > 0 && id >= c->lim->n_vocab))
        return fail(c, -EINVAL, path, "token id %lld is outside the vocabulary (%d tokens)", id,
                    (int)c->lim->n_vocab);
    *out = (int32_t)id;
    return 0;
}

/* "logit_bias": {"15339": -100, ...}, values in [-100, 100]. */
static int parse_logit_bias(pctx *c)
{
    srv_request *r = c->r;
    const cJSON *v;
    int rc = top(c, "logit_bias", &v), n = 0;
    if (rc || absent(v) || (cJSON_IsArray(v) && !v->child)) /* [] from some clients: none */
        return rc;
    if (!cJSON_IsObject(v))
        return fail(c, -EINVAL, "logit_bias", "expected an object of token id -> bias, got %s",
                    jtype(v));
    int count = cJSON_GetArraySize(v);
    if (count > SRV_BIAS_MAX)
        return fail(c, -E2BIG, "logit_bias", "%d entries, more than the limit of %d", count,
                    SRV_BIAS_MAX);
    if (count == 0)
        return 0;
    r->bias_ids = arena_alloc(&r->arena, (size_t)count * sizeof(int32_t));
    r->bias = arena_alloc(&r->arena, (size_t)count * sizeof(float));
    if (!r->bias_ids || !r->bias)
        return nomem(c);
    for (const cJSON *it = v->child; it; it = it->next, n++) {
        char p[PATH_MAX_];
        path_join(p, "logit_bias", it->string ? it->string : "");
        if ((rc = bias_key(c, it->string ? it->string : "", p, &r->bias_ids[n])) < 0)
            return rc;
        if (!cJSON_IsNumber(it))
            return fail(c, -EINVAL, p, "expected a number, got %s", jtype(it));
        if ((rc = get_float(c, it, p, -100.0f, 100.0f, false, &r->bias[n])) < 0)
            return rc;
        for (int i = 0; i < n; i++)
            if (r->bias_ids[i] == r->bias_ids[n])
                return fail(c, -EINVAL, p, "token id %d is given twice", (int)r->bias_ids[n]);
    }
    r->n_bias = n;
    return 0;
}

/* "speculative": false (off), true (on, the server's k and n-gram, 8 and 3 when the server has
 * it off), null (the server's setting), or {"k": 0..SRV_SPEC_K_MAX (0: off), "ngram":
 * 1..SRV_SPEC_NGRAM_MAX} (each optional, nothing else). */
static int parse_speculative(pctx *c)
{
    srv_request *r = c->r;
    const cJSON *v, *f;
    int rc = top(c, "speculative", &v);
    if (rc || absent(v))
        return rc;
    if (cJSON_IsBool(v)) {
        r->spec_k = cJSON_IsTrue(v) ? SRV_REQ_SPEC_DEFAULT_K : -1;
        return 0;
    }
    if (!cJSON_IsObject(v))
        return fail(c, -EINVAL, "speculative",
                    "expected an object {\"k\": K, \"ngram\": N} or a boolean, got %s", jtype(v));
    for (const cJSON *it = v->child; it; it = it->next)
        if (strcmp(it->string, "k") != 0 && strcmp(it->string, "ngram") != 0) {
            char p[PATH_MAX_];
            return fail(c, -EINVAL, path_join(p, "speculative", it->string),
                        "unknown field (expected k and ngram)");
        }
    long long k = SRV_REQ_SPEC_DEFAULT_K, n = 0;
    if ((rc = member(c, v, "speculative", "k", &f)) ||
        (rc = get_int(c, f, "speculative.k", 0, SRV_REQ_SPEC_K_MAX, &k)) < 0)
        return rc < 0 ? rc : -EINVAL;
    if ((rc = member(c, v, "speculative", "ngram", &f)) ||
        (rc = get_int(c, f, "speculative.ngram", 1, SRV_REQ_SPEC_NGRAM_MAX, &n)) < 0)
        return rc < 0 ? rc : -EINVAL;
    r->spec_k = k > 0 ? (int)k : -1;
    r->spec_ngram = (int)n;
    return 0;
}

/* "stop_token_ids": [ids], "min_tokens", "ignore_eos". */
static int parse_token_stops(pctx *c)
{
    srv_request *r = c->r;
    const cJSON *v;
    long long k = 0;
    int rc = top(c, "min_tokens", &v), n = 0;
    if (!rc && (rc = get_int(c, v, "min_tokens", 0, INT_MAX, &k)) > 0) {
        /* Against the max_tokens in force, given or the default (as vLLM). */
        if (k > r->max_tokens)
            return fail(c, -EINVAL, "min_tokens", "%lld is more than max_tokens %d%s", k,
                        r->max_tokens,
                        r->max_tokens_set ? "" : " (the default; give max_tokens too)");
        r->min_tokens = (int)k;
    }
    if (rc < 0 || (rc = top(c, "ignore_eos", &v)) ||
        (rc = get_bool(c, v, "ignore_eos", &r->ignore_eos)) < 0)
        return rc < 0 ? rc : -EINVAL;
    if ((rc = top(c, "stop_token_ids", &v)) || absent(v))
        return rc;
    if (!cJSON_IsArray(v))
        return fail(c, -EINVAL, "stop_token_ids", "expected an array of token ids, got %s",
                    jtype(v));
    int count = cJSON_GetArraySize(v);
    if (count > SRV_STOP_IDS_MAX)
        return fail(c, -E2BIG, "stop_token_ids", "%d ids, more than the limit of %d", count,
                    SRV_STOP_IDS_MAX);
    if (count > 0 && !(r->stop_ids = arena_alloc(&r->arena, (size_t)count * sizeof(int32_t))))
        return nomem(c);
    long long hi = c->lim->n_vocab > 0 ? c->lim->n_vocab - 1 : INT32_MAX;
    for (const cJSON *it = v->child; it; it = it->next, n++) {
        char p[PATH_MAX_];
        pathf(p, "stop_token_ids[%d]", n);
        if ((rc = get_int(c, it, p, 0, hi, &k)) <= 0)
            return rc < 0 ? rc : fail(c, -EINVAL, p, "expected an integer, got null");
        r->stop_ids[n] = (int32_t)k;
    }
    r->n_stop_ids = n;
    return 0;
}

/* The characters (code points) of valid UTF-8 s: OpenAI counts metadata in characters. */
static size_t utf8_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

/* "metadata": OpenAI's tags for a stored request, with OpenAI's rules: an object of at most
 * SRV_METADATA_MAX string -> string pairs, keys up to SRV_METADATA_KEY_MAX characters, values up
 * to SRV_METADATA_VALUE_MAX. Nothing is stored here, so it is checked and ignored. The param is
 * always "metadata" (a key may be long or anything); the message quotes the key at fault. */
static int parse_metadata(pctx *c)
{
    const cJSON *v;
    char q[QUOTE_BYTES + 8];
    int rc = top(c, "metadata", &v);
    if (rc || absent(v))
        return rc;
    if (!cJSON_IsObject(v))
        return fail(c, -EINVAL, "metadata", "expected an object, got %s", jtype(v));
    int count = cJSON_GetArraySize(v);
    if (count > SRV_METADATA_MAX)
        return fail(c, -E2BIG, "metadata", "%d pairs, more than the limit of %d", count,
                    SRV_METADATA_MAX);
    for (const cJSON *it = v->child; it; it = it->next) {
        const char *key = it->string ? it->string : "";
        size_t n = strlen(key), chars;
        if (srv_utf8_check(key, n) != n)
            return fail(c, -EINVAL, "metadata", "a key is not valid UTF-8 (or holds a NUL)");
        quote(key, q, sizeof q);
        if ((chars = utf8_chars(key)) > SRV_METADATA_KEY_MAX)
            return fail(c, -E2BIG, "metadata",
                        "the key '%s' is %zu characters, more than the limit of %d", q, chars,
                        SRV_METADATA_KEY_MAX);
        for (const cJSON *k = v->child; k != it; k = k->next)
            if (k->string && !strcmp(k->string, key))
                return fail(c, -EINVAL, "metadata", "the key '%s' is given twice", q);
        if (!cJSON_IsString(it))
            return fail(c, -EINVAL, "metadata", "the value of '%s' must be a string, got %s", q,
                        jtype(it));
        n = strlen(it->valuestring);
        if (srv_utf8_check(it->valuestring, n) != n)
            return fail(c, -EINVAL, "metadata",
                        "the value of '%s' is not valid UTF-8 (or holds a NUL)", q);
        if ((chars = utf8_chars(it->valuestring)) > SRV_METADATA_VALUE_MAX)
            return fail(c, -E2BIG, "metadata",
                        "the value of '%s' is %zu characters, more than the limit of %d", q, chars,
                        SRV_METADATA_VALUE_MAX);
    }
    /* kept as compact JSON (control bytes escaped) for the log */
    char *t = cJSON_PrintUnformatted(v);
    size_t n_t = t ? strlen(t) : 0;
    char *copy = t ? arena_alloc(&c->r->arena, n_t + 1) : NULL;
    if (copy)
        memcpy(copy, t, n_t + 1);
    cJSON_free(t);
    if (!copy)
        return nomem(c);
    c->r->metadata_json = copy;
    return 0;
}

/* ---- entry points -------------------------------------------------------------------------- */

static int parse_root(pctx *c, const cJSON *root, srv_request_kind kind)
{
    srv_request *r = c->r;
    if (!cJSON_IsObject(root))
        return fail(c, -EINVAL, "", "expected a JSON object, got %s", jtype(root));
    c->root = root;
    r->kind = kind;
    r->n = 1;
    r->logprobs = -1;
    core_sampler_params_default(&r->sampling);
    int rc = kind == SRV_REQ_COMPLETION ? parse_prompt(c) : parse_messages(c);
    if (!rc)
        rc = parse_strings(c);
    if (!rc)
        rc = parse_max_tokens(c);
    if (!rc)
        rc = parse_sampling(c);
    if (!rc)
        rc = parse_stop(c);
    if (!rc)
        rc = parse_stream(c);
    if (!rc)
        rc = parse_logprobs(c);
    if (!rc)
        rc = parse_unsupported(c);
    const cJSON *v;
    long long n = 1;
    if (!rc && !(rc = top(c, "n", &v)) && get_int(c, v, "n", 1, SRV_N_MAX, &n) < 0)
        rc = -EINVAL;
    r->n = (int)n;
    if (!rc && kind == SRV_REQ_COMPLETION && !(rc = top(c, "echo", &v)))
        rc = get_bool(c, v, "echo", &r->echo) < 0 ? -EINVAL : 0;
    if (!rc)
        rc = parse_adapters(c);
    if (!rc)
        rc = parse_logit_bias(c);
    if (!rc)
        rc = parse_token_stops(c);
    if (!rc)
        rc = parse_speculative(c);
    if (!rc)
        rc = parse_metadata(c);
    if (!rc)
        rc = parse_response_format(c);
    return rc;
}

void srv_request_limits_default(srv_request_limits *l)
{
    memset(l, 0, sizeof *l);
    l->max_prompt_bytes = (size_t)1 << 20;
    l->max_messages = 1024;
}

int srv_request_parse(srv_request_kind kind, const char *body, size_t len,
                      const srv_request_limits *lim, srv_request *out, char *err, size_t errlen,
                      char *param, size_t paramlen)
{
    srv_request_limits def;
    if (!lim) {
        srv_request_limits_default(&def);
        lim = &def;
    }
    memset(out, 0, sizeof *out);
    if (errlen)
        err[0] = 0;
    if (paramlen)
        param[0] = 0;
    pctx c = {
        .lim = lim, .r = out, .err = err, .errlen = errlen, .param = param, .paramlen = paramlen};
    if (kind != SRV_REQ_COMPLETION && kind != SRV_REQ_CHAT)
        return fail(&c, -EINVAL, "", "unknown request kind %d", (int)kind);
    if (!body || len == 0)
        return fail(&c, -EINVAL, "", "empty; expected a JSON object");
    if (len == SIZE_MAX)
        return nomem(&c);
    char *copy = malloc(len + 1);
    if (!copy)
        return nomem(&c);
    char msg[160];
    size_t n;
    cJSON *root = NULL;
    int rc = srv_json_check(body, len, copy, &n, msg, sizeof msg);
    if (rc)
        fail(&c, rc, "", "%s", msg);
    else if (!(root = cJSON_ParseWithLengthOpts(copy, n, NULL, 0)))
        rc = nomem(&c);
    free(copy);
    if (!rc)
        rc = parse_root(&c, root, kind);
    /* Strings this parse did not read (ignored fields, keys) must be valid UTF-8 too. */
    size_t bad = rc ? len : srv_utf8_check(body, len);
    if (bad < len)
        rc = fail(&c, -EINVAL, "", "invalid UTF-8 at byte %zu", bad);
    cJSON_Delete(root);
    if (rc) {
        core_grammar_free(out->grammar);
        arena_free(out->arena);
        memset(out, 0, sizeof *out);
    }
    return rc;
}

void srv_request_deinit(srv_request *r)
{
    if (!r)
        return;
    core_grammar_free(r->grammar);
    arena_free(r->arena);
    memset(r, 0, sizeof *r);
}

const char *srv_request_kind_name(srv_request_kind kind)
{
    switch (kind) {
    case SRV_REQ_COMPLETION:
        return "completion";
    case SRV_REQ_CHAT:
        return "chat";
    }
    return "unknown";
}
