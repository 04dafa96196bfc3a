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
 * keys K match names of the form (.*\.)?K. Regexes are compiled as POSIX ERE after a check that
 * their compilation cannot take unbounded memory or time (regex_too_costly).
 */
#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <regex.h>
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
#define REGEX_MAX_DEPTH 8   /* nested groups */
#define REGEX_MAX_BOUND 32  /* n in {n} / {m,n} */
#define REGEX_MAX_BOUNDED 2 /* {..} repetitions in one pattern */

/* Refuses the patterns whose compilation could take unbounded memory or time: glibc's regcomp
 * copies a repeated subexpression for every repetition (a+ becomes aa*, a{n} n copies), so a
 * repetition of a repetition (a++++, which is no valid ERE but glibc takes it) or large nested
 * bounds multiply, and a back-reference makes matching exponential. Real PEFT patterns
 * (".*\\.(q_proj|v_proj)") are far inside these limits. NULL when fine, else why not. */
static const char *regex_too_costly(const char *p)
{
    if (strlen(p) > REGEX_MAX_BYTES)
        return "longer than 256 bytes";
    int depth = 0, bounded = 0;
    bool after_atom = false, after_rep = false;
    for (const char *c = p; *c; c++) {
        bool rep = false;
        if (*c == '\\') {
            if (c[1] >= '1' && c[1] <= '9')
                return "back-references are not supported";
            if (c[1])
                c++;
        } else if (*c == '[') { /* a bracket expression is one atom; ']' first is literal */
            const char *e = c + 1 + (c[1] == '^');
            e += *e == ']';
            while (*e && *e != ']')
                e++;
            if (!*e)
                break; /* regcomp refuses it */
            c = e;
        } else if (*c == '(') {
            if (++depth > REGEX_MAX_DEPTH)
                return "groups nested deeper than 8";
            after_atom = after_rep = false;
            continue;
        } else if (*c == ')') {
            depth -= depth > 0;
        } else if (*c == '*' || *c == '+' || *c == '?' || *c == '{') {
            if (after_rep)
                return "a repetition of a repetition (such as a++ or a*?) is not supported";
            rep = after_atom;
            if (*c == '{') {
                char *end;
                long lo = strtol(c + 1, &end, 10), hi = lo;
                if (*end == ',')
                    hi = end[1] == '}' ? 0 : strtol(end + 1, &end, 10);
                else
                    end--;
                if (lo > REGEX_MAX_BOUND || hi > REGEX_MAX_BOUND || ++bounded > REGEX_MAX_BOUNDED)
                    return "bounded repetitions are limited to two of at most {32}";
                while (*c && *c != '}')
                    c++;
                if (!*c)
                    break;
            }
        } else if (*c == '|') {
            after_atom = after_rep = false;
            continue;
        }
        after_rep = rep;
        after_atom = !rep || after_atom;
    }
    return NULL;
}

/* Compiles "^prefix(pattern)$" as POSIX ERE: Python's re.fullmatch for the patterns ERE can
 * express. 0, or -1 with the reason in *why when it does not compile (Python-only syntax such as
 * (?i) or \\d) or would cost too much (regex_too_costly). */
static int compile_full(regex_t *re, const char *prefix, const char *pattern, const char **why)
{
    if ((*why = regex_too_costly(pattern)))
        return -1;
    *why = "syntax adaptree cannot compile (POSIX extended regular expressions only)";
    size_t n = strlen(pattern) + strlen(prefix) + 8;
    char *anchored = malloc(n);
    if (!anchored)
        return -1;
    snprintf(anchored, n, "^%s(%s)$", prefix, pattern);
    int rc = regcomp(re, anchored, REG_EXTENDED | REG_NOSUB);
    free(anchored);
    return rc ? -1 : 0;
}

/* A target_modules / exclude_modules value, ready to match module names. */
typedef struct selector {
    const cJSON *spec; /* NULL, list of names, or string */
    bool all_linear;
    bool has_re;
    regex_t re;
} selector;

static int selector_init(selector *s, const cJSON *spec, const char **why)
{
    memset(s, 0, sizeof *s);
    s->spec = is_null(spec) ? NULL : spec;
    if (!s->spec || !cJSON_IsString(spec))
        return 0;
    if (!strcasecmp(spec->valuestring, "all-linear")) {
        s->all_linear = true;
        return 0;
    }
    if (compile_full(&s->re, "", spec->valuestring, why))
        return -1;
    s->has_re = true;
    return 0;
}

static void selector_deinit(selector *s)
{
    if (s->has_re)
        regfree(&s->re);
}

/* Does the selector pick the module name? */
static bool selects(const selector *s, const char *name)
{
    if (!s->spec)
        return false;
    if (s->all_linear)
        return strstr(name, "lm_head") == NULL && strstr(name, "embed_tokens") == NULL;
    if (s->has_re)
        return regexec(&s->re, name, 0, NULL, 0) == 0;
    size_t n = strlen(name);
    const cJSON *it;
    cJSON_ArrayForEach(it, s->spec)
    {
        size_t m = strlen(it->valuestring);
        if (!strcmp(name, it->valuestring) ||
            (n > m && name[n - m - 1] == '.' && !strcmp(name + n - m, it->valuestring)))
            return true;
    }
    return false;
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
    regex_t *re;
    double *value;
} pattern;

static int pattern_init(pattern *p, const cJSON *spec, const char **bad, const char **why)
{
    memset(p, 0, sizeof *p);
    int n = is_null(spec) ? 0 : cJSON_GetArraySize(spec);
    if (!n)
        return 0;
    if (n > PATTERN_KEYS_MAX) {
        *bad = spec->child->string;
        *why = "more than 1024 keys";
        return -1;
    }
    p->re = calloc((size_t)n, sizeof *p->re);
    p->value = calloc((size_t)n, sizeof *p->value);
    if (!p->re || !p->value)
        return -1;
    const cJSON *it;
    cJSON_ArrayForEach(it, spec)
    {
        if (compile_full(&p->re[p->n], "(.*\\.)?", it->string, why)) {
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
        regfree(&p->re[i]);
    free(p->re);
    free(p->value);
}

static double pattern_value(const pattern *p, const char *name, double dflt)
{
    for (int i = 0; i < p->n; i++)
        if (regexec(&p->re[i], name, 0, NULL, 0) == 0)
            return p->value[i];
    return dflt;
}

/* Refuses targets adaptree cannot apply: the embedding and the output head. */
static int check_head_targets(const adapter__peft_cfg *c, char *err, size_t errlen)
{
    selector t;
    const char *why = NULL;
    if (selector_init(&t, c->targets, &why)) {
        snprintf(err, errlen, "target_modules: regex \"%.80s\": %s", c->targets->valuestring, why);
        return -EINVAL;
    }
    static const char *const heads[] = {"lm_head", "model.embed_tokens"};
    int rc = 0;
    for (size_t i = 0; i < 2 && !rc; i++) {
        if (selects(&t, heads[i]) && !t.all_linear) {
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
    const char *bad = NULL, *why_t = NULL, *why_x = NULL, *why = NULL;
    int rc = 0;
    memset(&rp, 0, sizeof rp);
    memset(&ap, 0, sizeof ap);
    bool t_ok = selector_init(&tsel, targets, &why_t) == 0;
    bool x_ok = selector_init(&xsel, c->excludes, &why_x) == 0;
    if (!t_ok || !x_ok) {
        snprintf(err, errlen, "%s: regex: %s", !t_ok ? "target_modules" : "exclude_modules",
                 !t_ok ? why_t : why_x);
        rc = -EINVAL;
    } else if (pattern_init(&rp, c->rank_pattern, &bad, &why) ||
               pattern_init(&ap, c->alpha_pattern, &bad, &why)) {
        snprintf(err, errlen, "rank_pattern/alpha_pattern: key \"%.80s\": %s", bad ? bad : "?",
                 why ? why : "out of memory");
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
            p->targeted =
                selects(&tsel, name) && !selects(&xsel, name) && layer_selected(c->layers, l);
            double r = pattern_value(&rp, name, c->r);
            if (r < 1 || r > MAX_RANK || r != (int)r) {
                snprintf(err, errlen, "rank_pattern: rank %g for %s is not an integer in 1..%d", r,
                         name, MAX_RANK);
                rc = -EINVAL;
                break;
            }
            p->rank = (int)r;
            p->alpha = pattern_value(&ap, name, c->alpha);
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
