/* PEFT LoRA adapters: adapter_config.json (cJSON) + adapter_model.safetensors.
 *
 * The config decides which (layer, module) pairs are targeted (target_modules as a list, a regex
 * string or "all-linear", exclude_modules, layers_to_transform) and their rank and alpha
 * (r/lora_alpha, rank_pattern/alpha_pattern, use_rslora). The weights file must hold exactly an
 * A and a B of the right shapes for each targeted pair. Options that change the math and are not
 * implemented (DoRA, lora bias, modules_to_save, embedding or head LoRA, ...) are refused with the
 * field's name; nothing is silently ignored. Pattern matching follows PEFT 0.21: list entries
 * match the module name exactly or as a dotted suffix, a string is a regex that must match the
 * whole name, and pattern keys K match names of the form (.*\.)?K. A probe runs the same checks
 * on the config and the safetensors header, then stops before the weights are copied. A load
 * reads the weights file whole into memory, a probe only its header (adapter.c says why files
 * are never mapped, and how a registry load keeps every file it opens beneath the root).
 */
#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "adapters/adapter.h"
#include "core/format/safetensors.h"
#include "core/format/types.h"

#define CONFIG_MAX_BYTES (1 << 20)
#define MAX_RANK 4096
#define HEADER_FIRST_READ (64 << 10) /* a probe's first read; most headers fit */

static const char *const hf_names[CORE_MOD_COUNT] = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                                     "gate_proj", "up_proj", "down_proj"};

static const char *hf_block(int mod)
{
    return mod <= CORE_MOD_O ? "self_attn" : "mlp";
}

/* The parsed parts of adapter_config.json that matter at inference. */
typedef struct peft_cfg {
    int r;
    double alpha;
    bool rslora;
    const cJSON *targets;  /* NULL, array of strings, or string */
    const cJSON *excludes; /* NULL, array of strings, or string */
    const cJSON *layers;   /* NULL, number or array of numbers */
    const cJSON *rank_pattern;
    const cJSON *alpha_pattern;
} peft_cfg;

static bool is_null(const cJSON *j)
{
    return !j || cJSON_IsNull(j);
}

/* Reads the whole file at path (beneath root when set), of at most cap bytes, into *out
 * (malloc'd, NUL-terminated), *len bytes: 0, or a negative errno with a message naming path. */
static int read_small(const char *root, const char *path, size_t cap, char **out, size_t *len,
                      char *err, size_t errlen)
{
    uint64_t size;
    *out = NULL;
    int fd = adapter__file_open(root, path, &size, err, errlen);
    if (fd < 0)
        return fd;
    char *buf = NULL;
    int rc = 0;
    if (size > cap) {
        snprintf(err, errlen, "%s: larger than 1 MiB", path);
        rc = -EFBIG;
    } else if (!(buf = malloc((size_t)size + 1))) {
        snprintf(err, errlen, "%s: out of memory", path);
        rc = -ENOMEM;
    } else {
        rc = adapter__file_read(fd, path, buf, (size_t)size, 0, err, errlen);
    }
    close(fd);
    if (rc) {
        free(buf);
        return rc;
    }
    buf[size] = 0;
    *out = buf;
    *len = (size_t)size;
    return 0;
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

static int parse_config(const cJSON *j, peft_cfg *c, char *err, size_t errlen)
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

static bool layer_selected(const cJSON *layers, int l)
{
    if (is_null(layers))
        return true;
    if (cJSON_IsNumber(layers))
        return (int)layers->valuedouble == l;
    const cJSON *it;
    cJSON_ArrayForEach(it, layers)
    {
        if (cJSON_IsNumber(it) && (int)it->valuedouble == l)
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
static int check_head_targets(const peft_cfg *c, char *err, size_t errlen)
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

/* Parses a safetensors key of a Llama LoRA weight: base_model.model.model.layers.L.<block>.<m>.
 * lora_{A,B}[.<adapter name>].weight. Returns 0 with layer, module and which (0 = A, 1 = B). */
static int parse_key(const char *key, int n_layer, int *layer, int *mod, int *which)
{
    const char *pre = "base_model.model.model.layers.";
    size_t np = strlen(pre);
    if (strncmp(key, pre, np) != 0)
        return -1;
    const char *p = key + np;
    char *end;
    long l = strtol(p, &end, 10);
    if (end == p || *end != '.' || l < 0 || l >= n_layer)
        return -1;
    p = end + 1;
    for (int m = 0; m < CORE_MOD_COUNT; m++) {
        char want[64];
        int w = snprintf(want, sizeof want, "%s.%s.lora_", hf_block(m), hf_names[m]);
        if (strncmp(p, want, (size_t)w) != 0)
            continue;
        const char *q = p + w;
        if (*q != 'A' && *q != 'B')
            return -1;
        *which = *q == 'B';
        q++;
        const char *dot = strchr(q + 1, '.');
        /* ".weight", or ".<adapter>.weight" with a name without dots */
        if (strcmp(q, ".weight") != 0 && !(q[0] == '.' && dot && !strcmp(dot, ".weight")))
            return -1;
        *layer = (int)l;
        *mod = m;
        return 0;
    }
    return -1;
}

typedef struct peft_plan {
    const core_st_tensor *ab[2]; /* A, B */
    int rank;
    double alpha;
    bool targeted;
} peft_plan;

/* Decides the targeted pairs and their rank/alpha from the config, then matches every tensor of
 * the weights file to exactly one of them and checks its shape. */
static int plan_modules(const peft_cfg *c, const core_st *st, const core_config *cfg,
                        peft_plan *plan, char *err, size_t errlen)
{
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
            snprintf(name, sizeof name, "model.layers.%d.%s.%s", l, hf_block(m), hf_names[m]);
            peft_plan *p = &plan[l * CORE_MOD_COUNT + m];
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
    if (rc)
        return rc;
    for (size_t i = 0; i < st->n_tensors; i++) {
        const core_st_tensor *t = &st->tensors[i];
        int l, m, which;
        if (parse_key(t->name, cfg->n_layer, &l, &m, &which)) {
            snprintf(err, errlen,
                     "adapter_model.safetensors: tensor '%s' is not a LoRA A/B weight of a Llama "
                     "linear layer (DoRA, lora bias, embedding or head LoRA and modules_to_save "
                     "are not supported; %d layers)",
                     t->name, cfg->n_layer);
            return -EINVAL;
        }
        peft_plan *p = &plan[l * CORE_MOD_COUNT + m];
        if (!p->targeted) {
            snprintf(err, errlen,
                     "tensor '%s': layer %d %s is not targeted by adapter_config.json "
                     "(target_modules / exclude_modules / layers_to_transform)",
                     t->name, l, hf_names[m]);
            return -EINVAL;
        }
        if (p->ab[which]) {
            snprintf(err, errlen, "tensor '%s': layer %d %s has two lora_%c weights", t->name, l,
                     hf_names[m], which ? 'B' : 'A');
            return -EINVAL;
        }
        if (t->dtype != CORE_TYPE_F32 && t->dtype != CORE_TYPE_F16 && t->dtype != CORE_TYPE_BF16) {
            snprintf(err, errlen, "tensor '%s': dtype %s is not supported (F32, F16, BF16)",
                     t->name, t->dtype_name);
            return -EINVAL;
        }
        uint64_t in = (uint64_t)core_module_in(cfg, m), out = (uint64_t)core_module_out(cfg, m);
        uint64_t want0 = which ? out : (uint64_t)p->rank, want1 = which ? (uint64_t)p->rank : in;
        if (t->n_dims != 2 || t->shape[0] != want0 || t->shape[1] != want1) {
            snprintf(err, errlen,
                     "tensor '%s': shape [%llu, %llu], expected [%llu, %llu] (rank %d from "
                     "adapter_config.json; the base %s of layer %d is %llu -> %llu); is this "
                     "adapter for another base model?",
                     t->name, (unsigned long long)t->shape[0],
                     (unsigned long long)(t->n_dims > 1 ? t->shape[1] : 0),
                     (unsigned long long)want0, (unsigned long long)want1, p->rank, hf_names[m], l,
                     (unsigned long long)in, (unsigned long long)out);
            return -EINVAL;
        }
        p->ab[which] = t;
    }
    for (int k = 0; k < cfg->n_layer * CORE_MOD_COUNT; k++) {
        peft_plan *p = &plan[k];
        if (p->targeted && (!p->ab[0] || !p->ab[1])) {
            snprintf(err, errlen,
                     "adapter_config.json targets layer %d %s but adapter_model.safetensors has "
                     "no lora_%c weight for it",
                     k / CORE_MOD_COUNT, hf_names[k % CORE_MOD_COUNT], p->ab[0] ? 'B' : 'A');
            return -EINVAL;
        }
    }
    return 0;
}

/* The slab a load of the plan allocates: its dtype (one for all; mixed files become f32) and
 * *bytes. 0, or -EINVAL when the plan holds no pair. */
static int plan_slab(const peft_plan *plan, const core_config *cfg, uint32_t *dtype, size_t *bytes,
                     char *err, size_t errlen)
{
    const uint32_t none = UINT32_MAX;
    uint32_t dt = none;
    for (int k = 0; k < cfg->n_layer * CORE_MOD_COUNT; k++)
        for (int w = 0; w < 2 && plan[k].ab[0]; w++) {
            uint32_t d = plan[k].ab[w]->dtype;
            dt = dt == none || dt == d ? d : CORE_TYPE_F32;
        }
    if (dt == none) {
        snprintf(err, errlen, "adapter_model.safetensors holds no LoRA weights");
        return -EINVAL;
    }
    size_t es = dt == CORE_TYPE_F32 ? 4 : 2, total = 0;
    for (int k = 0; k < cfg->n_layer * CORE_MOD_COUNT; k++)
        if (plan[k].ab[0])
            total += (size_t)plan[k].rank *
                     (core_module_in(cfg, k % CORE_MOD_COUNT) +
                      core_module_out(cfg, k % CORE_MOD_COUNT)) *
                     es;
    *dtype = dt;
    *bytes = total;
    return 0;
}

/* Copies the planned weights into a new adapter. */
static adapter *build(const peft_cfg *c, const peft_plan *plan, const core_config *cfg, char *err,
                      size_t errlen)
{
    uint32_t dtype;
    size_t total;
    if (plan_slab(plan, cfg, &dtype, &total, err, errlen))
        return NULL;
    size_t es = dtype == CORE_TYPE_F32 ? 4 : 2;
    adapter *a = adapter__new(cfg->n_layer, dtype, total);
    if (!a) {
        snprintf(err, errlen, "out of memory for %zu bytes of adapter weights", total);
        return NULL;
    }
    a->format = ADAPTER_PEFT;
    a->r = c->r;
    a->alpha = (float)c->alpha;
    a->rslora = c->rslora;
    unsigned char *at = a->slab;
    float *tmp = NULL;
    for (int k = 0; k < cfg->n_layer * CORE_MOD_COUNT; k++) {
        const peft_plan *p = &plan[k];
        if (!p->ab[0])
            continue;
        int m = k % CORE_MOD_COUNT, r = p->rank;
        adapter_mod *am = &a->mods[k];
        am->rank = r;
        am->scale = (float)(p->alpha / (c->rslora ? sqrt((double)r) : (double)r));
        for (int w = 0; w < 2; w++) {
            const core_st_tensor *t = p->ab[w];
            size_t rows = (size_t)t->shape[0], cols = (size_t)t->shape[1];
            const void *src = t->data;
            if (t->dtype != dtype) { /* mixed dtypes: widen this tensor to f32 */
                free(tmp);
                tmp = malloc(rows * cols * sizeof(float));
                if (!tmp || core_st_to_f32(t, tmp)) {
                    snprintf(err, errlen, "tensor '%s': cannot convert to f32", t->name);
                    goto fail;
                }
                src = tmp;
            }
            /* q and k lora_B rows move to the GGUF row order. */
            int heads = 0;
            if (w == 1 && m == CORE_MOD_Q)
                heads = cfg->n_head;
            else if (w == 1 && m == CORE_MOD_K)
                heads = cfg->n_head_kv;
            if (adapter__copy_rows(dtype, src, at, rows, cols, heads, cfg->head_dim, w == 1)) {
                snprintf(err, errlen, "tensor '%s' holds NaN or infinite values", t->name);
                goto fail;
            }
            if (w == 0)
                am->A = at;
            else
                am->Bt = at;
            at += rows * cols * es;
        }
        a->targets |= 1u << m;
        a->n_mods++;
    }
    free(tmp);
    return a;
fail:
    free(tmp);
    adapter_unref(a);
    return NULL;
}

int adapter__peft_config_check(const char *json, size_t len, const core_config *cfg, char *err,
                               size_t errlen)
{
    cJSON *j = cJSON_ParseWithLength(json, len);
    if (!j) {
        snprintf(err, errlen, "adapter_config.json: invalid JSON");
        return -EINVAL;
    }
    peft_cfg c;
    core_st none = {0};
    peft_plan *plan = calloc((size_t)cfg->n_layer * CORE_MOD_COUNT, sizeof *plan);
    int rc = -ENOMEM;
    if (plan) {
        rc = parse_config(j, &c, err, errlen) || check_head_targets(&c, err, errlen) ||
                     plan_modules(&c, &none, cfg, plan, err, errlen)
                 ? -EINVAL
                 : 0;
    }
    free(plan);
    cJSON_Delete(j);
    return rc;
}

/* What a load and a probe share: the config read, parsed and checked, the weights file read
 * (whole for a load, its header for a probe) and every tensor matched to a planned (layer,
 * module). */
typedef struct peft_src {
    char *text; /* adapter_config.json (len bytes) */
    size_t len;
    cJSON *j;
    peft_cfg c;    /* points into j */
    void *weights; /* the bytes st was opened over: the file, or its first bytes for a probe */
    core_st *st;
    peft_plan *plan; /* (n_layer * CORE_MOD_COUNT) */
} peft_src;

static void peft_close(peft_src *s)
{
    free(s->plan);
    core_st_close(s->st);
    free(s->weights); /* after st, which borrows it */
    cJSON_Delete(s->j);
    free(s->text);
}

/* Reads the safetensors file at path (beneath root when set) into *buf and opens it: whole, or
 * (header_only) as many leading bytes as its header takes, and the file size. 0, or a negative
 * errno with a message naming path. */
static int open_weights(const char *root, const char *path, bool header_only, core_st **st,
                        void **buf, char *err, size_t errlen)
{
    char msg[512];
    size_t have = 0;
    *st = NULL;
    *buf = NULL;
    if (!header_only) {
        int rc = adapter__read_file(root, path, buf, &have, err, errlen);
        if (rc)
            return rc;
        *st = core_st_open_memory(*buf, have, msg, sizeof msg);
        if (!*st)
            snprintf(err, errlen, "%s: %s", path, msg);
        return *st ? 0 : -EINVAL;
    }
    uint64_t size, need = 0;
    int fd = adapter__file_open(root, path, &size, err, errlen);
    if (fd < 0)
        return fd;
    unsigned char *p = NULL;
    size_t want = size < HEADER_FIRST_READ ? (size_t)size : HEADER_FIRST_READ;
    int rc;
    while ((rc = adapter__read_more(fd, path, &p, &have, want, err, errlen)) == 0) {
        *st = core_st_open_header(p, have, size, &need, msg, sizeof msg);
        if (*st || need <= have) /* opened, or refused */
            break;
        want = need > 2 * (uint64_t)have ? (size_t)need : 2 * have;
        want = want < size ? want : (size_t)size;
    }
    close(fd);
    *buf = p;
    if (rc == 0 && !*st) {
        snprintf(err, errlen, "%s: %s", path, msg);
        rc = -EINVAL;
    }
    return rc;
}

/* Fills *s from dir (beneath root when set), the weights file whole or (header_only) its header:
 * 0, or -EINVAL/-ENOMEM/-errno with a message (s is then closed): -EAGAIN when a file changed
 * while it was read. */
static int peft_open(peft_src *s, const char *root, const char *dir, const core_config *cfg,
                     bool header_only, char *err, size_t errlen)
{
    char path[4096];
    memset(s, 0, sizeof *s);
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    int rc = read_small(root, path, CONFIG_MAX_BYTES, &s->text, &s->len, err, errlen);
    if (rc)
        return rc;
    s->j = cJSON_ParseWithLength(s->text, s->len);
    if (!s->j) {
        snprintf(err, errlen, "adapter_config.json: invalid JSON near byte %td",
                 cJSON_GetErrorPtr() ? cJSON_GetErrorPtr() - s->text : (ptrdiff_t)0);
        goto fail;
    }
    if (parse_config(s->j, &s->c, err, errlen) || check_head_targets(&s->c, err, errlen))
        goto fail;
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    rc = open_weights(root, path, header_only, &s->st, &s->weights, err, errlen);
    if (rc) {
        snprintf(path, sizeof path, "%s/adapter_model.bin", dir);
        if (rc == -ENOENT && adapter__file_exists(root, path))
            snprintf(err, errlen,
                     "adapter_model.bin (pickle) is not supported; save the adapter "
                     "with safe_serialization=True");
        peft_close(s);
        return rc;
    }
    s->plan = calloc((size_t)cfg->n_layer * CORE_MOD_COUNT, sizeof *s->plan);
    if (!s->plan) {
        snprintf(err, errlen, "out of memory");
        peft_close(s);
        return -ENOMEM;
    }
    if (plan_modules(&s->c, s->st, cfg, s->plan, err, errlen))
        goto fail;
    return 0;
fail:
    peft_close(s);
    return -EINVAL;
}

adapter *adapter__load_peft(const char *root, const char *dir, const core_config *cfg, char *err,
                            size_t errlen)
{
    peft_src s;
    if (peft_open(&s, root, dir, cfg, false, err, errlen))
        return NULL;
    adapter *a = build(&s.c, s.plan, cfg, err, errlen);
    if (a) {
        a->hash =
            adapter__hash(adapter__hash(ADAPTER_HASH_INIT, s.text, s.len), s.st->base, s.st->size);
        const cJSON *b = cJSON_GetObjectItem(s.j, "base_model_name_or_path");
        if (cJSON_IsString(b))
            snprintf(a->base_model, sizeof a->base_model, "%s", b->valuestring);
    }
    peft_close(&s);
    return a;
}

int adapter__probe_peft(const char *root, const char *dir, const core_config *cfg,
                        adapter_probe_info *out, char *err, size_t errlen)
{
    peft_src s;
    memset(out, 0, sizeof *out);
    int rc = peft_open(&s, root, dir, cfg, true, err, errlen);
    if (rc)
        return rc;
    adapter_probe_info p = {
        .format = ADAPTER_PEFT, .r = s.c.r, .alpha = (float)s.c.alpha, .rslora = s.c.rslora};
    rc = plan_slab(s.plan, cfg, &p.dtype, &p.bytes, err, errlen);
    for (int k = 0; k < cfg->n_layer * CORE_MOD_COUNT && !rc; k++)
        if (s.plan[k].ab[0]) {
            p.targets |= 1u << (k % CORE_MOD_COUNT);
            p.n_mods++;
        }
    if (!rc)
        *out = p;
    peft_close(&s);
    return rc;
}
