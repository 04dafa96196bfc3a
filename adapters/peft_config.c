/* adapter_config.json for PEFT LoRA adapters (peft.c reads the files, this file their config):
 * the fields that matter at inference parsed and checked, and the (layer, module) pairs they
 * target with their rank and alpha.
 *
 * target_modules may be a list, a regex string or "all-linear"; exclude_modules and
 * layers_to_transform narrow it; r/lora_alpha, rank_pattern/alpha_pattern and use_rslora give the
 * ranks and scales. Options that change the math and are not implemented (DoRA, lora bias,
 * modules_to_save, embedding or head LoRA, ...) are refused with the field's name; nothing is
 * silently ignored. Pattern matching follows PEFT 0.21: list entries match the module name
 * exactly or as a dotted suffix, a string is a regex that must match the whole name, and pattern
 * keys K match names of the form (.*\.)?K. Regexes are Python re syntax as PCRE2 understands it
 * (\d, (?:...), lookarounds), compiled for full matches and run under match limits (regex).
 */
#include <cJSON.h>
#include <errno.h>
#include <math.h>
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "adapters/peft_internal.h"

#define MAX_RANK 4096

static const char *const hf_names[CORE_MOD_COUNT] = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                                     "gate_proj", "up_proj", "down_proj"};
/* Phi-3's Linears: q, k, v in qkv_proj, gate and up in gate_up_proj (core_module_span). */
static const char *const hf_names_fused[CORE_MOD_COUNT] = {
    "qkv_proj", "qkv_proj", "qkv_proj", "o_proj", "gate_up_proj", "gate_up_proj", "down_proj"};

const char *adapter__peft_module_name(const core_config *cfg, int mod)
{
    return cfg->kind == CORE_ARCH_PHI3 ? hf_names_fused[mod] : hf_names[mod];
}

const char *adapter__peft_linears(const core_config *cfg)
{
    return cfg->kind == CORE_ARCH_PHI3 ? "qkv_proj, o_proj, gate_up_proj, down_proj"
                                       : "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, "
                                         "down_proj";
}

static const char *hf_block(int mod)
{
    return mod <= CORE_MOD_O ? "self_attn" : "mlp";
}

const char *adapter__peft_module_block(int mod)
{
    return hf_block(mod);
}

/* Is a config value absent or null? */
static bool is_null(const cJSON *j)
{
    return !j || cJSON_IsNull(j);
}

/* Refuses options that change the math and that adaptree does not implement. */
static int check_unsupported(const cJSON *j, char *err, size_t errlen)
{
    const cJSON *v;
    if ((v = cJSON_GetObjectItem(j, "peft_type")) && !is_null(v) &&
        !(cJSON_IsString(v) && !strcmp(v->valuestring, "LORA"))) {
        snprintf(err, errlen, "peft_type: only \"LORA\" adapters are supported");
        return -EINVAL;
    }
    static const char *const must_be_false[] = {"use_dora", "lora_bias", "use_qalora"};
    for (size_t i = 0; i < sizeof must_be_false / sizeof *must_be_false; i++)
        if (cJSON_IsTrue(cJSON_GetObjectItem(j, must_be_false[i]))) {
            snprintf(err, errlen, "%s: true is not supported", must_be_false[i]);
            return -EINVAL;
        }
    static const char *const must_be_empty[] = {"modules_to_save",         "layer_replication",
                                                "trainable_token_indices", "target_parameters",
                                                "alora_invocation_tokens", "megatron_config"};
    for (size_t i = 0; i < sizeof must_be_empty / sizeof *must_be_empty; i++) {
        v = cJSON_GetObjectItem(j, must_be_empty[i]);
        if (!is_null(v) && !((cJSON_IsArray(v) || cJSON_IsObject(v)) && !v->child)) {
            snprintf(err, errlen, "%s: not supported (it must be null or empty)", must_be_empty[i]);
            return -EINVAL;
        }
    }
    v = cJSON_GetObjectItem(j, "bias");
    if (!is_null(v) && !(cJSON_IsString(v) && !strcmp(v->valuestring, "none"))) {
        snprintf(err, errlen, "bias: only \"none\" is supported");
        return -EINVAL;
    }
    v = cJSON_GetObjectItem(j, "init_lora_weights");
    if (cJSON_IsString(v)) {
        static const char *const base_changing[] = {"pissa", "olora", "corda", "loftq", "eva"};
        for (size_t i = 0; i < sizeof base_changing / sizeof *base_changing; i++)
            if (!strncasecmp(v->valuestring, base_changing[i], strlen(base_changing[i]))) {
                snprintf(err, errlen,
                         "init_lora_weights: \"%s\" adapters expect a modified base model; convert "
                         "them to a plain LoRA first",
                         v->valuestring);
                return -EINVAL;
            }
    }
    return 0;
}

static int want_string_list(const cJSON *v, const char *field, bool allow_string, char *err,
                            size_t errlen)
{
    if (is_null(v) || (allow_string && cJSON_IsString(v)))
        return 0;
    if (cJSON_IsArray(v)) {
        const cJSON *it;
        cJSON_ArrayForEach(it, v)
        {
            if (!cJSON_IsString(it)) {
                snprintf(err, errlen, "%s: every entry must be a string", field);
                return -EINVAL;
            }
        }
        return 0;
    }
    snprintf(err, errlen, "%s: expected %s", field,
             allow_string ? "a list of strings or a string" : "a list of strings");
    return -EINVAL;
}

static int want_pattern(const cJSON *v, const char *field, char *err, size_t errlen)
{
    if (is_null(v))
        return 0;
    if (!cJSON_IsObject(v)) {
        snprintf(err, errlen, "%s: expected an object", field);
        return -EINVAL;
    }
    const cJSON *it;
    cJSON_ArrayForEach(it, v)
    {
        if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble)) {
            snprintf(err, errlen, "%s: value of '%s' must be a number", field, it->string);
            return -EINVAL;
        }
    }
    return 0;
}

static int parse_config(const cJSON *j, adapter__peft_cfg *c, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    if (!cJSON_IsObject(j)) {
        snprintf(err, errlen, "adapter_config.json: not a JSON object");
        return -EINVAL;
    }
    if (check_unsupported(j, err, errlen))
        return -EINVAL;
    const cJSON *v = cJSON_GetObjectItem(j, "r");
    c->r = 8;
    if (!is_null(v)) {
        if (!cJSON_IsNumber(v) || v->valuedouble < 1 || v->valuedouble > MAX_RANK ||
            v->valuedouble != (int)v->valuedouble) {
            snprintf(err, errlen, "r: expected an integer in 1..%d", MAX_RANK);
            return -EINVAL;
        }
        c->r = (int)v->valuedouble;
    }
    c->alpha = 8;
    v = cJSON_GetObjectItem(j, "lora_alpha");
    if (!is_null(v)) {
        if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) {
            snprintf(err, errlen, "lora_alpha: expected a number");
            return -EINVAL;
        }
        c->alpha = v->valuedouble;
    }
    v = cJSON_GetObjectItem(j, "use_rslora");
    if (!is_null(v) && !cJSON_IsBool(v)) {
        snprintf(err, errlen, "use_rslora: expected true or false");
        return -EINVAL;
    }
    c->rslora = cJSON_IsTrue(v);
    c->targets = cJSON_GetObjectItem(j, "target_modules");
    c->excludes = cJSON_GetObjectItem(j, "exclude_modules");
    if (want_string_list(c->targets, "target_modules", true, err, errlen) ||
        want_string_list(c->excludes, "exclude_modules", true, err, errlen))
        return -EINVAL;
    c->layers = cJSON_GetObjectItem(j, "layers_to_transform");
    if (!is_null(c->layers) && !cJSON_IsNumber(c->layers) && !cJSON_IsArray(c->layers)) {
        snprintf(err, errlen, "layers_to_transform: expected an integer or a list of integers");
        return -EINVAL;
    }
    const cJSON *lp = cJSON_GetObjectItem(j, "layers_pattern");
    if (!is_null(lp) && !(cJSON_IsString(lp) && !strcmp(lp->valuestring, "layers")) &&
        !(cJSON_IsArray(lp) &&
          (!lp->child || (cJSON_IsString(lp->child) && !strcmp(lp->child->valuestring, "layers") &&
                          !lp->child->next)))) {
        snprintf(err, errlen, "layers_pattern: only \"layers\" exists in Llama models");
        return -EINVAL;
    }
    c->rank_pattern = cJSON_GetObjectItem(j, "rank_pattern");
    c->alpha_pattern = cJSON_GetObjectItem(j, "alpha_pattern");
    if (want_pattern(c->rank_pattern, "rank_pattern", err, errlen) ||
        want_pattern(c->alpha_pattern, "alpha_pattern", err, errlen))
        return -EINVAL;
    return 0;
}

#define PATTERN_KEYS_MAX 1024 /* keys of rank_pattern / alpha_pattern */
#define REGEX_MAX_BYTES 256
#define REGEX_MAX_NEST 32         /* nested parentheses */
#define REGEX_MATCH_LIMIT 100000  /* backtracking steps per module name */
#define REGEX_DEPTH_LIMIT 1000    /* nested backtracking points */
#define REGEX_HEAP_LIMIT_KIB 1024 /* backtracking memory */

/* A regex compiled with PCRE2 for Python's re.fullmatch: PCRE2_ANCHORED | PCRE2_ENDANCHORED
 * make it match the whole name, as if followed by \z, and UTF | UCP give \d and \w Python 3's
 * Unicode meaning. PCRE2 compiles in bounded memory and time (its own size limit plus the length
 * and nesting caps below), so glibc regcomp's blow-up on repeated repetitions is gone; matching
 * is bounded by the match, depth and heap limits, and a name that hits one is an error, not a
 * miss: treating it as "not targeted" would silently drop a module from the adapter. */
typedef struct regex {
    const char *src; /* the pattern as written, borrowed from the config */
    pcre2_code *code;
    pcre2_match_context *mctx;
    pcre2_match_data *md;
} regex;

static void regex_deinit(regex *r)
{
    pcre2_match_data_free(r->md);
    pcre2_match_context_free(r->mctx);
    pcre2_code_free(r->code);
    memset(r, 0, sizeof *r);
}

/* Compiles prefix(?:pattern) (just pattern when prefix is "") for full matches. 0, or -1 with the
 * reason (PCRE2's message and the offset in pattern) in why[whylen]. */
static int regex_init(regex *r, const char *prefix, const char *pattern, char *why, size_t whylen)
{
    memset(r, 0, sizeof *r);
    r->src = pattern;
    if (strlen(pattern) > REGEX_MAX_BYTES) {
        snprintf(why, whylen, "longer than %d bytes", REGEX_MAX_BYTES);
        return -1;
    }
    char full[REGEX_MAX_BYTES + 64];
    size_t skip = 0;
    if (*prefix) {
        int n = snprintf(full, sizeof full, "%s(?:", prefix);
        skip = (size_t)n;
        snprintf(full + n, sizeof full - (size_t)n, "%s)", pattern);
    } else {
        snprintf(full, sizeof full, "%s", pattern);
    }
    pcre2_compile_context *cctx = pcre2_compile_context_create(NULL);
    r->mctx = pcre2_match_context_create(NULL);
    if (!cctx || !r->mctx) {
        pcre2_compile_context_free(cctx);
        snprintf(why, whylen, "out of memory");
        return -1;
    }
    pcre2_set_max_pattern_length(cctx, sizeof full);
    pcre2_set_parens_nest_limit(cctx, REGEX_MAX_NEST);
    int code = 0;
    PCRE2_SIZE at = 0;
    r->code = pcre2_compile((PCRE2_SPTR)full, PCRE2_ZERO_TERMINATED,
                            PCRE2_ANCHORED | PCRE2_ENDANCHORED | PCRE2_UTF | PCRE2_UCP |
                                PCRE2_NEVER_BACKSLASH_C,
                            &code, &at, cctx);
    pcre2_compile_context_free(cctx);
    if (!r->code) {
        PCRE2_UCHAR msg[160];
        if (pcre2_get_error_message(code, msg, sizeof msg) < 0)
            snprintf((char *)msg, sizeof msg, "error %d", code);
        at = at > skip ? at - skip : 0;
        snprintf(why, whylen, "%s at offset %zu", (const char *)msg, (size_t)at);
        return -1;
    }
    pcre2_set_match_limit(r->mctx, REGEX_MATCH_LIMIT);
    pcre2_set_depth_limit(r->mctx, REGEX_DEPTH_LIMIT);
    pcre2_set_heap_limit(r->mctx, REGEX_HEAP_LIMIT_KIB);
    r->md = pcre2_match_data_create_from_pattern(r->code, NULL);
    if (!r->md) {
        snprintf(why, whylen, "out of memory");
        return -1;
    }
    return 0;
}

/* Does r match all of name? 1 or 0, or -1 with the reason in why[whylen] when a match limit was
 * hit (or PCRE2 failed otherwise). */
static int regex_match(const regex *r, const char *name, char *why, size_t whylen)
{
    int rc = pcre2_match(r->code, (PCRE2_SPTR)name, strlen(name), 0, 0, r->md, r->mctx);
    if (rc >= 0)
        return 1;
    if (rc == PCRE2_ERROR_NOMATCH)
        return 0;
    PCRE2_UCHAR msg[160];
    if (pcre2_get_error_message(rc, msg, sizeof msg) < 0)
        snprintf((char *)msg, sizeof msg, "error %d", rc);
    snprintf(why, whylen, "matching '%.80s': %.120s; simplify the pattern", name,
             (const char *)msg);
    return -1;
}

int adapter__peft_regex_fullmatch(const char *pattern, const char *name, char *err, size_t errlen)
{
    regex r;
    char why[256];
    int rc = regex_init(&r, "", pattern, why, sizeof why);
    if (rc == 0)
        rc = regex_match(&r, name, why, sizeof why);
    regex_deinit(&r);
    if (rc < 0)
        snprintf(err, errlen, "regex \"%.80s\": %s", pattern, why);
    return rc < 0 ? -EINVAL : rc;
}

/* A target_modules / exclude_modules value, ready to match module names. */
typedef struct selector {
    const cJSON *spec; /* NULL, list of names, or string */
    bool all_linear;
    bool has_re;
    regex re;
} selector;

static int selector_init(selector *s, const cJSON *spec, char *why, size_t whylen)
{
    memset(s, 0, sizeof *s);
    s->spec = is_null(spec) ? NULL : spec;
    if (!s->spec || !cJSON_IsString(spec))
        return 0;
    if (!strcasecmp(spec->valuestring, "all-linear")) {
        s->all_linear = true;
        return 0;
    }
    if (regex_init(&s->re, "", spec->valuestring, why, whylen)) {
        regex_deinit(&s->re);
        return -1;
    }
    s->has_re = true;
    return 0;
}

static void selector_deinit(selector *s)
{
    if (s->has_re)
        regex_deinit(&s->re);
}

/* Does the selector pick the module name? 1 or 0, or -1 with the reason in why (a regex hit its
 * match limit). */
static int selects(const selector *s, const char *name, char *why, size_t whylen)
{
    if (!s->spec)
        return 0;
    if (s->all_linear)
        return strstr(name, "lm_head") == NULL && strstr(name, "embed_tokens") == NULL;
    if (s->has_re)
        return regex_match(&s->re, name, why, whylen);
    size_t n = strlen(name);
    const cJSON *it;
    cJSON_ArrayForEach(it, s->spec)
    {
        size_t m = strlen(it->valuestring);
        if (!strcmp(name, it->valuestring) ||
            (n > m && name[n - m - 1] == '.' && !strcmp(name + n - m, it->valuestring)))
            return 1;
    }
    return 0;
}

/* A layers_to_transform entry names layer l: compared as doubles, so a huge or fractional value
 * names no layer (converting it to int first would be undefined: fuzz_adapter_config). */
static bool names_layer(const cJSON *v, int l)
{
    return cJSON_IsNumber(v) && v->valuedouble == (double)l;
}

static bool layer_selected(const cJSON *layers, int l)
{
    if (is_null(layers))
        return true;
    if (cJSON_IsNumber(layers))
        return names_layer(layers, l);
    const cJSON *it;
    cJSON_ArrayForEach(it, layers)
    {
        if (names_layer(it, l))
            return true;
    }
    return false;
}

/* rank_pattern / alpha_pattern compiled: key K matches names of the form (.*\.)?K; the first key
 * in file order wins. */
typedef struct pattern {
    int n;
    regex *re;
    double *value;
} pattern;

static int pattern_init(pattern *p, const cJSON *spec, const char **bad, char *why, size_t whylen)
{
    memset(p, 0, sizeof *p);
    int n = is_null(spec) ? 0 : cJSON_GetArraySize(spec);
    if (!n)
        return 0;
    if (n > PATTERN_KEYS_MAX) {
        *bad = spec->child->string;
        snprintf(why, whylen, "more than %d keys", PATTERN_KEYS_MAX);
        return -1;
    }
    p->re = calloc((size_t)n, sizeof *p->re);
    p->value = calloc((size_t)n, sizeof *p->value);
    if (!p->re || !p->value) {
        snprintf(why, whylen, "out of memory");
        return -1;
    }
    const cJSON *it;
    cJSON_ArrayForEach(it, spec)
    {
        if (regex_init(&p->re[p->n], "(?:.*\\.)?", it->string, why, whylen)) {
            regex_deinit(&p->re[p->n]);
            *bad = it->string;
            return -1;
        }
        p->value[p->n++] = it->valuedouble;
    }
    return 0;
}

static void pattern_deinit(pattern *p)
{
    for (int i = 0; i < p->n; i++)
        regex_deinit(&p->re[i]);
    free(p->re);
    free(p->value);
}

/* The value of the first key that matches name, else dflt; -1 with the key in *bad and the reason
 * in why when a match limit was hit. */
static int pattern_value(const pattern *p, const char *name, double dflt, double *out,
                         const char **bad, char *why, size_t whylen)
{
    *out = dflt;
    for (int i = 0; i < p->n; i++) {
        int m = regex_match(&p->re[i], name, why, whylen);
        if (m < 0) {
            *bad = p->re[i].src;
            return -1;
        }
        if (m) {
            *out = p->value[i];
            return 0;
        }
    }
    return 0;
}

/* Refuses targets adaptree cannot apply: the embedding and the output head. */
static int check_head_targets(const adapter__peft_cfg *c, char *err, size_t errlen)
{
    selector t;
    char why[256];
    if (selector_init(&t, c->targets, why, sizeof why)) {
        snprintf(err, errlen, "target_modules: regex \"%.80s\": %s", c->targets->valuestring, why);
        return -EINVAL;
    }
    static const char *const heads[] = {"lm_head", "model.embed_tokens"};
    int rc = 0;
    for (size_t i = 0; i < 2 && !rc; i++) {
        int m = t.all_linear ? 0 : selects(&t, heads[i], why, sizeof why);
        if (m < 0) {
            snprintf(err, errlen, "target_modules: regex \"%.80s\": %s", t.re.src, why);
            rc = -EINVAL;
        } else if (m) {
            snprintf(err, errlen,
                     "target_modules: LoRA on '%s' (embedding / output head) is not supported",
                     heads[i]);
            rc = -EINVAL;
        }
    }
    selector_deinit(&t);
    return rc;
}

int adapter__peft_config_parse(const cJSON *j, adapter__peft_cfg *c, char *err, size_t errlen)
{
    return parse_config(j, c, err, errlen) || check_head_targets(c, err, errlen) ? -EINVAL : 0;
}

/* Refuses a target_modules list entry that names a Linear of the other layout: q_proj on a
 * Phi-3 (whose attention is the fused qkv_proj), qkv_proj on a Llama. PEFT would only fail when
 * no entry matched; such an adapter was trained for another architecture either way. */
static int check_layout_names(const cJSON *targets, const core_config *cfg, char *err,
                              size_t errlen)
{
    if (!cJSON_IsArray(targets))
        return 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, targets)
    {
        const char *dot = strrchr(it->valuestring, '.');
        const char *leaf = dot ? dot + 1 : it->valuestring;
        bool known = false, here = false;
        for (int m = 0; m < CORE_MOD_COUNT; m++) {
            known = known || !strcmp(leaf, hf_names[m]) || !strcmp(leaf, hf_names_fused[m]);
            here = here || !strcmp(leaf, adapter__peft_module_name(cfg, m));
        }
        if (known && !here) {
            snprintf(err, errlen,
                     "target_modules: '%s' is not a module of %s models, whose linear layers are "
                     "%s; was this adapter trained for another architecture?",
                     it->valuestring, cfg->arch, adapter__peft_linears(cfg));
            return -EINVAL;
        }
    }
    return 0;
}

/* Plans one (layer l, module name) pair into *p: targeted, rank and alpha. 0, or -EINVAL with a
 * message (a rank out of range, a regex that hit its match limit). */
static int plan_one(const adapter__peft_cfg *c, const selector *tsel, const selector *xsel,
                    const pattern *rp, const pattern *ap, const char *name, int l,
                    adapter__peft_plan *p, char *err, size_t errlen)
{
    char why[256];
    const char *bad = NULL;
    int t = selects(tsel, name, why, sizeof why);
    int x = t > 0 ? selects(xsel, name, why, sizeof why) : 0;
    if (t < 0 || x < 0) {
        const selector *s = t < 0 ? tsel : xsel;
        snprintf(err, errlen, "%s: regex \"%.80s\": %s",
                 t < 0 ? "target_modules" : "exclude_modules", s->re.src, why);
        return -EINVAL;
    }
    p->targeted = t && !x && layer_selected(c->layers, l);
    double r, alpha;
    if (pattern_value(rp, name, c->r, &r, &bad, why, sizeof why) ||
        pattern_value(ap, name, c->alpha, &alpha, &bad, why, sizeof why)) {
        snprintf(err, errlen, "rank_pattern/alpha_pattern: key \"%.80s\": %s", bad, why);
        return -EINVAL;
    }
    if (r < 1 || r > MAX_RANK || r != (int)r) {
        snprintf(err, errlen, "rank_pattern: rank %g for %s is not an integer in 1..%d", r, name,
                 MAX_RANK);
        return -EINVAL;
    }
    p->rank = (int)r;
    p->alpha = alpha;
    return 0;
}

int adapter__peft_plan_targets(const adapter__peft_cfg *c, const core_config *cfg,
                               adapter__peft_plan *plan, char *err, size_t errlen)
{
    if (check_layout_names(c->targets, cfg, err, errlen))
        return -EINVAL;
    if (is_null(c->targets) && cfg->kind == CORE_ARCH_PHI3) {
        snprintf(err, errlen,
                 "target_modules: null, and PEFT has no default for %s models; list them (%s)",
                 cfg->arch, adapter__peft_linears(cfg));
        return -EINVAL;
    }
    const cJSON *targets = c->targets;
    cJSON *dflt = NULL;
    if (is_null(targets)) /* PEFT's default for Llama */
        targets = dflt = cJSON_CreateStringArray((const char *[]){"q_proj", "v_proj"}, 2);
    selector tsel, xsel;
    pattern rp, ap;
    const char *bad = NULL;
    char why[256] = "";
    int rc = 0;
    memset(&rp, 0, sizeof rp);
    memset(&ap, 0, sizeof ap);
    bool t_ok = selector_init(&tsel, targets, why, sizeof why) == 0;
    bool x_ok = t_ok && selector_init(&xsel, c->excludes, why, sizeof why) == 0;
    if (!t_ok || !x_ok) {
        const cJSON *spec = !t_ok ? targets : c->excludes;
        snprintf(err, errlen, "%s: regex \"%.80s\": %s",
                 !t_ok ? "target_modules" : "exclude_modules", spec->valuestring, why);
        rc = -EINVAL;
    } else if (pattern_init(&rp, c->rank_pattern, &bad, why, sizeof why) ||
               pattern_init(&ap, c->alpha_pattern, &bad, why, sizeof why)) {
        snprintf(err, errlen, "rank_pattern/alpha_pattern: key \"%.80s\": %s", bad ? bad : "?",
                 why);
        rc = -EINVAL;
    }
    for (int l = 0; l < cfg->n_layer && !rc; l++) {
        for (int m = 0; m < CORE_MOD_COUNT && !rc; m++) {
            char name[128];
            if (core_module_span(cfg, m) == 0) /* planned with the first module of its Linear */
                continue;
            snprintf(name, sizeof name, "model.layers.%d.%s.%s", l, hf_block(m),
                     adapter__peft_module_name(cfg, m));
            adapter__peft_plan *p = &plan[l * CORE_MOD_COUNT + m];
            rc = plan_one(c, &tsel, &xsel, &rp, &ap, name, l, p, err, errlen);
        }
    }
    if (t_ok)
        selector_deinit(&tsel);
    if (x_ok)
        selector_deinit(&xsel);
    pattern_deinit(&rp);
    pattern_deinit(&ap);
    cJSON_Delete(dflt);
    if (rc == 0 && cfg->kind == CORE_ARCH_PHI3) {
        bool any = false;
        for (int k = 0; k < cfg->n_layer * CORE_MOD_COUNT; k++)
            any = any || plan[k].targeted;
        if (!any) {
            snprintf(err, errlen,
                     "target_modules selects no linear layer of this %s model (its linear layers "
                     "are %s)",
                     cfg->arch, adapter__peft_linears(cfg));
            rc = -EINVAL;
        }
    }
    return rc;
}
