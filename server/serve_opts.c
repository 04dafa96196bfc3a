/* `adaptree serve` options (server/cli_serve.h): one table drives the flags, the environment
 * (ADAPTREE_ + the flag name upper-cased, '-' -> '_') and the config file (`key = value` lines
 * with the flag names). Each source is applied over the previous one, file, then environment,
 * then flags, through the same function, so a value is checked the same way wherever it comes
 * from and only the prefix of an error says where (`ADAPTREE_PORT=abc: `, `adaptree.conf:3: `).
 * Every setting remembers its source for --print-config.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base.h"
#include "server/cli.h"
#include "server/cli_serve.h"
#include "server/engine.h"
#include "server/log.h"

#define CONFIG_MAX (1 << 20) /* bytes of a config file */

static void serve_usage(FILE *out)
{
    fprintf(
        out,
        "usage: adaptree serve [options]\n"
        "      --config FILE         read settings from FILE ('key = value' lines, the keys\n"
        "                            being the flag names: port = 8080; # comments); also\n"
        "                            $ADAPTREE_CONFIG\n"
        "      --print-config        print every setting, its value and where it came from\n"
        "                            (flag, env, file, default), then exit\n"
        "  -m, --model PATH          GGUF base model (default " SRV_DEFAULT_MODEL ")\n"
        "      --registry DIR        adapter registry root (default " SRV_DEFAULT_REGISTRY
        "; skipped\n"
        "                            with a warning when the default is missing)\n"
        "      --no-registry         serve the base model only\n"
        "      --no-watch            do not watch the registry for changes\n"
        "      --int8                int8 activations (Q4_1, Q8_0, Q4_K-Q6_K), as llama.cpp\n"
        "                            (AVX2 or AVX-512 VNNI): faster, logits further from\n"
        "                            the f32 reference (README, 'int8 activations')\n"
        "      --kv-f16              cache K and V as f16: half the KV memory, faster long\n"
        "                            contexts, logits slightly further from the reference\n"
        "      --host HOST           address to listen on (default 127.0.0.1)\n"
        "      --port PORT           port (default 8080; 0 = any free port)\n"
        "      --threads N           OpenBLAS threads (default 0 = all cores)\n"
        "      --http-threads N      HTTP polling threads (default 2)\n"
        "      --max-batch-tokens N  rows per forward step (default 512)\n"
        "      --max-step-ms MS      while streams decode, size prompt chunks so that a step\n"
        "                            takes about MS ms, by step costs learned as it runs\n"
        "                            (default: 2x the decode-only step, at least 25 ms; 0 =\n"
        "                            no target, prompt chunks fill --max-batch-tokens)\n"
        "      --prefill-chunk N     most prompt rows of one request per step (default 256)\n"
        "      --max-seqs N          sequences running at once (default 32)\n"
        "      --ctx N               context per sequence (default: the model's, at most "
        "2048)\n"
        "      --adapter-cache-mb N  memory for resident adapters (default 0 = unlimited)\n"
        "      --kv-cache-mb N       the KV cache's pool of 16-position blocks, shared by the\n"
        "                            running sequences and the prefix cache (default: every\n"
        "                            sequence at full context, at most a quarter of RAM;\n"
        "                            printed at start-up); at least one --ctx sequence\n"
        "      --no-prefix-cache     do not reuse the KV of earlier prompts (same tokens\n"
        "                            under the same adapters)\n"
        "      --spec-k K            speculative decoding for every request that does not\n"
        "                            choose: up to K draft tokens a step from prompt lookup\n"
        "                            (0-16, 0 = off; default 8; exact: the output is the\n"
        "                            same as without; fewer in wide steps, none while\n"
        "                            more than 3 streams decode, 8 with --int8; a request's\n"
        "                            \"speculative\" decides for itself)\n"
        "      --spec-ngram N        n-gram length the lookup matches (1-8, default %d)\n"
        "      --queue-limit N       requests waiting beyond the running ones (default "
        "256);\n"
        "                            more get 429\n"
        "      --api-key KEY         require 'Authorization: Bearer KEY' on every route but\n"
        "                            /health (default $ADAPTREE_API_KEY, else none)\n"
        "      --admin-key KEY       require this key on /v1/adapters* and\n"
        "                            /v1/{load,unload}_lora_adapter (default\n"
        "                            $ADAPTREE_ADMIN_KEY, else the api key)\n"
        "      --chat-template FILE  render /v1/chat/completions with this Jinja chat template\n"
        "                            instead of the GGUF's tokenizer.chat_template; one\n"
        "                            outside the supported subset (README, 'Chat templates')\n"
        "                            or unreadable stops the start-up with the reason\n"
        "      --log-level LEVEL     error, warn, info or debug (default info)\n"
        "      --log-format FORMAT   text or json: one JSON object per line (default text)\n"
        "      --max-body-kb N       largest request body in KiB (default 1024); more gets "
        "413\n"
        "      --idle-timeout S      close connections idle for S seconds (default 60; 0 = "
        "never)\n"
        "      --max-connections N   connections for requests (default 1024); past it the one\n"
        "                            that has waited longest for a request head is closed,\n"
        "                            then N/16 (>= 8) more serve /health and keyed requests\n"
        "      --max-connections-per-ip N  connections from one address (default half of\n"
        "                            --max-connections; 0 = no cap)\n"
        "      --header-timeout S    a request head must arrive within S seconds, however\n"
        "                            slowly its bytes come (default 10; 0 = no limit)\n"
        "      --body-timeout S      a body must arrive within S seconds of its head (default\n"
        "                            30; 0 = no limit); later gets 408\n"
        "      --drain-timeout S     on SIGINT/SIGTERM, wait at most S seconds for running\n"
        "                            requests (default 30)\n"
        "      --drain-delay S       on SIGINT/SIGTERM, first answer /health with 503 for S\n"
        "                            seconds while still serving everything, so that load\n"
        "                            balancers take this replica out of rotation before it\n"
        "                            refuses anything; then drain (default 0)\n"
        "      --replica-name NAME   this server's name among replicas, in every answer's\n"
        "                            X-Adaptree-Replica header, system_fingerprint and\n"
        "                            /health (default: the host name; letters, digits and\n"
        "                            . _ : -, at most 63)\n"
        "      --cors-origin ORIGIN  let pages from ORIGIN (https://app.example.com, or *) read\n"
        "                            the answers: Access-Control-Allow-Origin on answers to\n"
        "                            a matching Origin, OPTIONS preflights answered 204;\n"
        "                            repeatable, or comma-separated (default: CORS off)\n"
        "Every option also comes from the environment (--max-seqs 4: ADAPTREE_MAX_SEQS=4;\n"
        "switches: ADAPTREE_INT8=true) and from --config FILE (max-seqs = 4; int8 = true);\n"
        "a flag beats the environment, which beats the file, which beats the default.\n"
        "SIGINT or SIGTERM drains: running requests finish, then it exits 0; requests still\n"
        "running after --drain-timeout (or at a second signal) end with an error (a 503, or\n"
        "an error event and [DONE] in a stream) and it exits %d.\n",
        SRV_SPEC_NGRAM_DEFAULT, SRV_EXIT_CUT);
}

enum opt_kind {
    K_INT,     /* long, in [min, max] */
    K_STR,     /* const char *, non-empty */
    K_REPLICA, /* const char *, srv_replica_name_ok */
    K_LOG,     /* int, srv_log_parse */
    K_LOGFMT,  /* int, srv_log_parse_format */
    K_SWITCH,  /* bool: a flag without a value; true, false, 1, 0, yes, no, on, off elsewhere */
    K_NOT,     /* K_SWITCH stored negated (--no-watch -> watch = false) */
    K_CORS,    /* repeatable: appended to cors_origins (a stronger source replaces the list) */
};

/* The options, in --help's order. name is the flag without "--" and the file's key. */
static const struct serve_opt {
    const char *name;
    const char *short_flag; /* "-m" or NULL */
    long min, max;          /* K_INT */
    size_t off;             /* the field in srv_serve_opts */
    enum opt_kind kind;
    bool secret; /* --print-config hides the value */
} opts[] = {
    {"model", "-m", 0, 0, offsetof(srv_serve_opts, model), K_STR, false},
    {"registry", NULL, 0, 0, offsetof(srv_serve_opts, registry), K_STR, false},
    {"no-registry", NULL, 0, 0, offsetof(srv_serve_opts, no_registry), K_SWITCH, false},
    {"no-watch", NULL, 0, 0, offsetof(srv_serve_opts, watch), K_NOT, false},
    {"int8", NULL, 0, 0, offsetof(srv_serve_opts, int8), K_SWITCH, false},
    {"kv-f16", NULL, 0, 0, offsetof(srv_serve_opts, kv_f16), K_SWITCH, false},
    {"host", NULL, 0, 0, offsetof(srv_serve_opts, host), K_STR, false},
    {"port", NULL, 0, 65535, offsetof(srv_serve_opts, port), K_INT, false},
    {"threads", NULL, 0, 1024, offsetof(srv_serve_opts, threads), K_INT, false},
    {"http-threads", NULL, 1, 64, offsetof(srv_serve_opts, http_threads), K_INT, false},
    {"max-batch-tokens", NULL, 1, 1 << 16, offsetof(srv_serve_opts, max_batch_tokens), K_INT,
     false},
    {"max-step-ms", NULL, 0, 600000, offsetof(srv_serve_opts, max_step_ms), K_INT, false},
    {"prefill-chunk", NULL, 1, 1 << 16, offsetof(srv_serve_opts, prefill_chunk), K_INT, false},
    {"max-seqs", NULL, 1, 4096, offsetof(srv_serve_opts, max_seqs), K_INT, false},
    {"ctx", NULL, 0, 1 << 20, offsetof(srv_serve_opts, n_ctx), K_INT, false},
    {"adapter-cache-mb", NULL, 0, 1L << 30, offsetof(srv_serve_opts, adapter_cache_mb), K_INT,
     false},
    {"kv-cache-mb", NULL, 0, 1L << 30, offsetof(srv_serve_opts, kv_cache_mb), K_INT, false},
    {"no-prefix-cache", NULL, 0, 0, offsetof(srv_serve_opts, no_prefix_cache), K_SWITCH, false},
    {"spec-k", NULL, 0, SRV_SPEC_K_MAX, offsetof(srv_serve_opts, spec_k), K_INT, false},
    {"spec-ngram", NULL, 1, SRV_SPEC_NGRAM_MAX, offsetof(srv_serve_opts, spec_ngram), K_INT, false},
    {"queue-limit", NULL, 1, 1 << 20, offsetof(srv_serve_opts, queue_limit), K_INT, false},
    {"api-key", NULL, 0, 0, offsetof(srv_serve_opts, api_key), K_STR, true},
    {"admin-key", NULL, 0, 0, offsetof(srv_serve_opts, admin_key), K_STR, true},
    {"chat-template", NULL, 0, 0, offsetof(srv_serve_opts, chat_template), K_STR, false},
    {"log-level", NULL, 0, 0, offsetof(srv_serve_opts, log_level), K_LOG, false},
    {"log-format", NULL, 0, 0, offsetof(srv_serve_opts, log_format), K_LOGFMT, false},
    {"max-body-kb", NULL, 1, 1 << 20, offsetof(srv_serve_opts, max_body_kb), K_INT, false},
    {"idle-timeout", NULL, 0, 86400, offsetof(srv_serve_opts, idle_timeout), K_INT, false},
    {"max-connections", NULL, 1, 1 << 16, offsetof(srv_serve_opts, max_conns), K_INT, false},
    {"max-connections-per-ip", NULL, 0, 1 << 16, offsetof(srv_serve_opts, per_ip_conns), K_INT,
     false},
    {"header-timeout", NULL, 0, 86400, offsetof(srv_serve_opts, header_timeout), K_INT, false},
    {"body-timeout", NULL, 0, 86400, offsetof(srv_serve_opts, body_timeout), K_INT, false},
    {"drain-timeout", NULL, 0, 86400, offsetof(srv_serve_opts, drain_timeout), K_INT, false},
    {"drain-delay", NULL, 0, 3600, offsetof(srv_serve_opts, drain_delay), K_INT, false},
    {"replica-name", NULL, 0, 0, offsetof(srv_serve_opts, replica), K_REPLICA, false},
    {"cors-origin", NULL, 0, 0, offsetof(srv_serve_opts, cors_origins), K_CORS, false},
};
#define N_OPTS (sizeof opts / sizeof *opts)
_Static_assert(N_OPTS <= SRV_SERVE_MAX_OPTS, "raise SRV_SERVE_MAX_OPTS");

static void defaults(srv_serve_opts *o)
{
    memset(o, 0, sizeof *o);
    o->host = "127.0.0.1";
    o->port = 8080;
    o->model = SRV_DEFAULT_MODEL;
    o->registry = SRV_DEFAULT_REGISTRY;
    o->http_threads = 2;
    o->max_batch_tokens = 512;
    o->max_step_ms = -1;
    o->spec_k = 8;
    o->spec_ngram = SRV_SPEC_NGRAM_DEFAULT;
    o->prefill_chunk = 256;
    o->max_seqs = 32;
    o->queue_limit = 256;
    o->log_level = SRV_LOG_INFO;
    o->max_body_kb = 1024;
    o->idle_timeout = 60;
    o->max_conns = 1024;
    o->per_ip_conns = -1; /* half of max_conns unless given */
    o->header_timeout = 10;
    o->body_timeout = 30;
    o->drain_timeout = 30;
    o->watch = true;
}

int srv_replica_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 63)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && !strchr("._:-", s[i]))
            return 0;
    return 1;
}

static const struct serve_opt *find_flag(const char *a)
{
    for (size_t i = 0; i < N_OPTS; i++)
        if ((a[0] == '-' && a[1] == '-' && !strcmp(a + 2, opts[i].name)) ||
            (opts[i].short_flag && !strcmp(a, opts[i].short_flag)))
            return &opts[i];
    return NULL;
}

static const struct serve_opt *find_key(const char *key)
{
    for (size_t i = 0; i < N_OPTS; i++)
        if (!strcmp(key, opts[i].name))
            return &opts[i];
    return NULL;
}

/* A switch's value outside the flags: 1, 0, or -1 when it is none of the spellings. */
static int parse_bool(const char *v)
{
    static const char *const yes[] = {"1", "true", "yes", "on"}, *const no[] = {"0", "false", "no",
                                                                                "off"};
    for (size_t i = 0; i < 4; i++) {
        if (!strcasecmp(v, yes[i]))
            return 1;
        if (!strcasecmp(v, no[i]))
            return 0;
    }
    return -1;
}

/* Sets option p to v (NULL for a switch given as a flag, i.e. true), recording where it came
 * from. 0, or -1 with the message, after the source's prefix, in err. v must outlive o. */
static int set_opt(srv_serve_opts *o, const struct serve_opt *p, const char *v, srv_opt_source src,
                   int line, const char *prefix, char *err, size_t errlen)
{
    void *dst = (char *)o + p->off;
    size_t idx = (size_t)(p - opts);
    int k = snprintf(err, errlen, "%s", prefix);
    size_t at = k > 0 && (size_t)k < errlen ? (size_t)k : 0;
    char *e = err + at;
    size_t elen = errlen - at;
    if (p->kind == K_SWITCH || p->kind == K_NOT) {
        int b = v ? parse_bool(v) : 1;
        if (b < 0) {
            snprintf(e, elen, "bad value '%s' for --%s: expected true or false", v, p->name);
            return -1;
        }
        *(bool *)dst = p->kind == K_NOT ? !b : b;
    } else if (!v[0]) {
        snprintf(e, elen, "--%s needs a non-empty value", p->name);
        return -1;
    } else if (p->kind == K_INT) {
        if (srv_parse_int(v, p->min, p->max, (long *)dst) < 0) {
            snprintf(e, elen, "bad value '%s' for --%s: expected an integer in [%ld, %ld]", v,
                     p->name, p->min, p->max);
            return -1;
        }
    } else if (p->kind == K_CORS) {
        srv_cors check;
        if (srv_cors_init(&check, &v, 1, e, elen) < 0)
            return -1;
        if (o->source[idx] != (unsigned char)src)
            o->n_cors_origins = 0;
        if (o->n_cors_origins == SRV_CORS_MAX) {
            snprintf(e, elen, "--%s: at most %d", p->name, SRV_CORS_MAX);
            return -1;
        }
        o->cors_origins[o->n_cors_origins++] = v;
    } else if (p->kind == K_LOGFMT) {
        int f = srv_log_parse_format(v);
        if (f < 0) {
            snprintf(e, elen, "bad value '%s' for --%s: expected text or json", v, p->name);
            return -1;
        }
        *(int *)dst = f;
    } else if (p->kind == K_LOG) {
        int l = srv_log_parse(v);
        if (l < 0) {
            snprintf(e, elen, "bad value '%s' for --%s: expected error, warn, info or debug", v,
                     p->name);
            return -1;
        }
        *(int *)dst = l;
    } else {
        if (p->kind == K_REPLICA && !srv_replica_name_ok(v)) {
            snprintf(e, elen,
                     "bad value '%s' for --%s: expected 1 to 63 letters, digits, '.', '_', ':' "
                     "or '-'",
                     v, p->name);
            return -1;
        }
        *(const char **)dst = v;
    }
    o->source[idx] = (unsigned char)src;
    o->line[idx] = line;
    return 0;
}

/* ---- the config file ------------------------------------------------------------------------- */

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1]))
        s[--n] = 0;
    return s;
}

/* Reads the file at path into o->file_text and applies its lines. 0, or -1 with the message. */
static int apply_file(srv_serve_opts *o, const char *path, char *err, size_t errlen)
{
    char why[160];
    char *text = core_read_text(path, CONFIG_MAX, NULL, why, sizeof why);
    if (!text) {
        snprintf(err, errlen, "--config %s: %s", path, why);
        return -1;
    }
    o->file_text = text;
    o->config = path;
    char prefix[300];
    int line = 0;
    for (char *s = text, *next; s; s = next) {
        line++;
        next = strchr(s, '\n');
        if (next)
            *next++ = 0;
        snprintf(prefix, sizeof prefix, "%s:%d: ", path, line);
        /* a comment: '#' first on the line, or after blanks following the value */
        for (char *h = strchr(s, '#'); h; h = strchr(h + 1, '#'))
            if (h == s || isspace((unsigned char)h[-1])) {
                *h = 0;
                break;
            }
        char *l = trim(s);
        if (!*l)
            continue;
        char *eq = strchr(l, '=');
        if (!eq) {
            snprintf(err, errlen, "%sexpected 'key = value', got '%.60s'", prefix, l);
            return -1;
        }
        *eq = 0;
        char *key = trim(l), *v = trim(eq + 1);
        const struct serve_opt *p = find_key(key);
        if (!p) {
            snprintf(err, errlen,
                     "%sunknown key '%.60s' (the keys are the flag names of "
                     "adaptree serve --help, without '--')",
                     prefix, key);
            return -1;
        }
        if (set_opt(o, p, v, SRV_OPT_FILE, line, prefix, err, errlen) < 0)
            return -1;
    }
    return 0;
}

/* ---- the environment ------------------------------------------------------------------------- */

/* ADAPTREE_ + name upper-cased, '-' -> '_'. */
static void env_name(const char *name, char *out, size_t cap)
{
    int k = snprintf(out, cap, "ADAPTREE_");
    for (size_t i = 0; k > 0 && (size_t)k + i + 1 < cap && name[i]; i++) {
        out[k + i] = name[i] == '-' ? '_' : (char)toupper((unsigned char)name[i]);
        out[k + i + 1] = 0;
    }
}

static int apply_env(srv_serve_opts *o, char *err, size_t errlen)
{
    for (size_t i = 0; i < N_OPTS; i++) {
        char name[64], prefix[600];
        env_name(opts[i].name, name, sizeof name);
        const char *v = getenv(name);
        if (!v || !v[0]) /* unset and empty are the same: nothing said */
            continue;
        snprintf(prefix, sizeof prefix, "%s=%.500s: ", name, v);
        if (set_opt(o, &opts[i], v, SRV_OPT_ENV, 0, prefix, err, errlen) < 0)
            return -1;
    }
    return 0;
}

/* ---- the flags ----------------------------------------------------------------------------- */

/* The flags that are not settings: --help (1), --config (its value into *config),
 * --print-config. Looks at argv before anything is applied. */
static int scan_meta(int argc, char **argv, const char **config, bool *print)
{
    for (int i = 1; i < argc && argv[i]; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help"))
            return 1;
        if (!strcmp(a, "--print-config"))
            *print = true;
        else if (!strncmp(a, "--config=", 9))
            *config = a + 9;
        else if (!strcmp(a, "--config") && i + 1 < argc)
            *config = argv[++i];
        else if (find_flag(a) && find_flag(a)->kind != K_SWITCH && find_flag(a)->kind != K_NOT)
            i++; /* skip its value (which may look like a flag) */
    }
    return 0;
}

static int apply_flags(srv_serve_opts *o, int argc, char **argv, char *err, size_t errlen)
{
    for (int i = 1; i < argc && argv[i]; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--print-config"))
            continue;
        /* --flag=value as well as --flag value */
        char name[64];
        const char *v = NULL, *eq = strncmp(a, "--", 2) == 0 ? strchr(a, '=') : NULL;
        if (eq && (size_t)(eq - a) < sizeof name) {
            memcpy(name, a, (size_t)(eq - a));
            name[eq - a] = 0;
            a = name;
            v = eq + 1;
        }
        if (!strcmp(a, "--config")) {
            if (!v && i + 1 >= argc) {
                snprintf(err, errlen, "--config needs a value");
                return -1;
            }
            if (!v)
                i++;
            continue;
        }
        const struct serve_opt *p = find_flag(a);
        if (!p) {
            snprintf(err, errlen, "unknown option '%s' (see adaptree serve --help)", argv[i]);
            return -1;
        }
        if (p->kind == K_SWITCH || p->kind == K_NOT) {
            if (v) {
                snprintf(err, errlen, "%s takes no value", a);
                return -1;
            }
        } else if (!v) {
            if (i + 1 >= argc) {
                snprintf(err, errlen, "%s needs a value", a);
                return -1;
            }
            v = argv[++i];
        }
        if (set_opt(o, p, v, SRV_OPT_FLAG, 0, "", err, errlen) < 0)
            return -1;
    }
    return 0;
}

static size_t opt_index(const char *name)
{
    return (size_t)(find_key(name) - opts);
}

int srv_serve_parse(int argc, char **argv, srv_serve_opts *o, char *err, size_t errlen)
{
    defaults(o);
    const char *config = NULL;
    if (scan_meta(argc, argv, &config, &o->print_config)) {
        serve_usage(stdout);
        return 1;
    }
    const char *env = getenv("ADAPTREE_CONFIG");
    if (!config && env && env[0])
        config = env;
    if ((config && apply_file(o, config, err, errlen) < 0) || apply_env(o, err, errlen) < 0 ||
        apply_flags(o, argc, argv, err, errlen) < 0)
        return 2;
    size_t reg = opt_index("registry"), none = opt_index("no-registry");
    o->registry_given = o->source[reg] != SRV_OPT_DEFAULT;
    if (o->no_registry && o->registry_given) {
        /* the stronger source wins; from the same one they contradict each other */
        if (o->source[none] == o->source[reg]) {
            snprintf(err, errlen, "--registry and --no-registry contradict each other");
            return 2;
        }
        if (o->source[reg] > o->source[none])
            o->no_registry = false;
    }
    if (o->no_registry) {
        o->registry = NULL;
        o->registry_given = false;
    }
    if (o->per_ip_conns < 0)
        o->per_ip_conns = o->max_conns / 2 > 0 ? o->max_conns / 2 : 1;
    return 0;
}

void srv_serve_opts_deinit(srv_serve_opts *o)
{
    if (!o)
        return;
    free(o->file_text);
    o->file_text = NULL;
}

static const char *source_name(srv_opt_source s)
{
    static const char *const names[] = {"default", "file", "env", "flag"};
    return (unsigned)s < 4 ? names[s] : "?";
}

void srv_serve_print_config(const srv_serve_opts *o, FILE *out)
{
    static const char *const levels[] = {"error", "warn", "info", "debug"};
    fprintf(out, "# adaptree serve settings: key = value  # where it came from\n");
    if (o->config)
        fprintf(out, "# config file: %s\n", o->config);
    for (size_t i = 0; i < N_OPTS; i++) {
        const struct serve_opt *p = &opts[i];
        const void *src = (const char *)o + p->off;
        char val[600], where[320];
        if (p->kind == K_INT) {
            snprintf(val, sizeof val, "%ld", *(const long *)src);
        } else if (p->kind == K_SWITCH || p->kind == K_NOT) {
            bool b = *(const bool *)src;
            snprintf(val, sizeof val, "%s", (p->kind == K_NOT ? !b : b) ? "true" : "false");
        } else if (p->kind == K_CORS) {
            size_t k = 0;
            val[0] = 0;
            for (int j = 0; j < o->n_cors_origins && k < sizeof val; j++) {
                int w = snprintf(val + k, sizeof val - k, "%s%s", j ? "," : "", o->cors_origins[j]);
                k += w > 0 ? (size_t)w : 0;
            }
        } else if (p->kind == K_LOGFMT) {
            snprintf(val, sizeof val, "%s", *(const int *)src == 1 ? "json" : "text");
        } else if (p->kind == K_LOG) {
            int l = *(const int *)src;
            snprintf(val, sizeof val, "%s", l >= 0 && l < 4 ? levels[l] : "?");
        } else {
            const char *s = *(const char *const *)src;
            snprintf(val, sizeof val, "%s", !s ? "" : p->secret ? "(hidden)" : s);
        }
        srv_opt_source s = (srv_opt_source)o->source[i];
        if (s == SRV_OPT_FILE)
            snprintf(where, sizeof where, "file %s:%d", o->config, o->line[i]);
        else if (s == SRV_OPT_ENV) {
            char name[64];
            env_name(p->name, name, sizeof name);
            snprintf(where, sizeof where, "env %s", name);
        } else
            snprintf(where, sizeof where, "%s", source_name(s));
        fprintf(out, "%-23s = %-30s # %s\n", p->name, val, where);
    }
}
