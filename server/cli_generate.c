/* `adaptree generate`: one prompt through the model, text streamed to stdout, prompt and
 * generation speed to stderr; optionally constrained by a GBNF grammar or a JSON Schema (the
 * server's structured-output compilers and matcher). */
#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "adapters/compose.h"
#include "core/base.h"
#include "core/model/model.h"
#include "core/model/sampler.h"
#include "core/text/grammar.h"
#include "core/text/tokenizer.h"
#include "server/cli.h"
#include "server/cli_select.h"
#include "server/gbnf.h"
#include "server/json_schema.h"

#define PREFILL_CHUNK 256
#define GRAMMAR_FILE_MAX (1 << 20) /* bytes of a --grammar-file */

typedef struct gen_opts {
    const char *model;
    const char *prompt;
    long n_predict;
    long n_ctx;
    int chat;
    int show_special;
    int int8;
    int kv_f16;
    core_sampler_params sp;
    srv_cli_sel sel;
    const char *grammar;      /* --grammar TEXT */
    const char *grammar_file; /* --grammar-file PATH */
    const char *json_schema;  /* --json-schema JSON */
} gen_opts;

/* The model, its cache and the adapters applied to every row. */
typedef struct gen_run {
    core_model *m;
    core_ctx *ctx;
    core_kv *kv;
    adapter_plan *plan;
    const adapter_set *set; /* NULL: base model only */
} gen_run;

static void gen_usage(FILE *out)
{
    fprintf(out,
            "usage: adaptree generate -p PROMPT [options]\n"
            "  -m, --model PATH        GGUF model (default " SRV_DEFAULT_MODEL ")\n"
            "  -p, --prompt TEXT       the prompt (required)\n"
            "  -n, --n-predict N       tokens to generate (default 128)\n"
            "  -c, --ctx N             context length (default: the model's, at most 4096)\n"
            "      --chat              render the prompt as one user turn with the chat template\n"
            "      --int8              int8 activations (AVX2/VNNI), as `serve --int8`\n"
            "      --kv-f16            f16 KV cache, as `serve --kv-f16`\n"
            "      --temperature T     0 = greedy (default 0.8)\n"
            "      --top-k K           keep the K most likely tokens (default 40; 0 = off)\n"
            "      --top-p P           nucleus sampling (default 0.95; 1 = off)\n"
            "      --min-p P           drop tokens below P x the best one (default 0.05)\n"
            "      --repeat-penalty R  penalise recent tokens (default 1.0 = off)\n"
            "      --seed S            random seed (default 0); same seed, same text\n"
            "      --special           print control tokens such as <|im_end|>\n"
            "      --registry DIR      adapter registry (default registry/)\n"
            "      --select ID         apply the tree chain of node ID (e.g. fr/legal/alice)\n"
            "      --adapter ID[:S]    apply exactly node ID at scale S (default 1); repeatable\n"
            "      --grammar TEXT      constrain the output to a GBNF grammar (as the server's\n"
            "                          \"grammar\" field)\n"
            "      --grammar-file PATH the same, the grammar read from a file\n"
            "      --json-schema JSON  constrain the output to JSON valid against the schema\n");
}

int srv_parse_int(const char *s, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

int srv_parse_float(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

/* Returns 0, 1 for --help, or 2 after printing a usage error. */
static int parse_opts(int argc, char **argv, gen_opts *o)
{
    memset(o, 0, sizeof *o);
    o->model = SRV_DEFAULT_MODEL;
    o->n_predict = 128;
    core_sampler_params_default(&o->sp);
    o->sp.temperature = 0.8f;
    o->sp.top_k = 40;
    o->sp.top_p = 0.95f;
    o->sp.min_p = 0.05f;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        long n = 0;
        double f = 0;
        int bad = 0;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            gen_usage(stdout);
            return 1;
        } else if (!strcmp(a, "--chat")) {
            o->chat = 1;
            continue;
        } else if (!strcmp(a, "--special")) {
            o->show_special = 1;
            continue;
        } else if (!strcmp(a, "--int8")) {
            o->int8 = 1;
            continue;
        } else if (!strcmp(a, "--kv-f16")) {
            o->kv_f16 = 1;
            continue;
        }
        if (!v) {
            fprintf(stderr, "generate: %s needs a value\n", a);
            return 2;
        }
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            o->model = v;
        } else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) {
            o->prompt = v;
        } else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict")) {
            bad = srv_parse_int(v, 0, 1 << 20, &o->n_predict);
        } else if (!strcmp(a, "-c") || !strcmp(a, "--ctx")) {
            bad = srv_parse_int(v, 1, 1 << 24, &o->n_ctx);
        } else if (!strcmp(a, "--temperature")) {
            bad = srv_parse_float(v, &f);
            o->sp.temperature = (float)f;
        } else if (!strcmp(a, "--top-p")) {
            bad = srv_parse_float(v, &f);
            o->sp.top_p = (float)f;
        } else if (!strcmp(a, "--min-p")) {
            bad = srv_parse_float(v, &f);
            o->sp.min_p = (float)f;
        } else if (!strcmp(a, "--repeat-penalty")) {
            bad = srv_parse_float(v, &f);
            o->sp.repeat_penalty = (float)f;
        } else if (!strcmp(a, "--top-k")) {
            bad = srv_parse_int(v, 0, 1 << 24, &n);
            o->sp.top_k = (int)n;
        } else if (!strcmp(a, "--grammar")) {
            o->grammar = v;
        } else if (!strcmp(a, "--grammar-file")) {
            o->grammar_file = v;
        } else if (!strcmp(a, "--json-schema")) {
            o->json_schema = v;
        } else if (!strcmp(a, "--seed")) {
            bad = srv_parse_int(v, 0, __LONG_MAX__, &n);
            o->sp.seed = (uint64_t)n;
        } else if ((bad = srv_cli_sel_arg(&o->sel, a, v)) == 0) {
            fprintf(stderr, "generate: unknown option '%s'\n", a);
            gen_usage(stderr);
            return 2;
        } else if (bad == 1) {
            bad = 0;
        } else {
            return 2;
        }
        if (bad) {
            fprintf(stderr, "generate: bad value '%s' for %s\n", v, a);
            return 2;
        }
        i++;
    }
    if (!o->prompt) {
        fprintf(stderr, "generate: -p PROMPT is required\n");
        gen_usage(stderr);
        return 2;
    }
    if (!!o->grammar + !!o->grammar_file + !!o->json_schema > 1) {
        fprintf(stderr, "generate: give one of --grammar, --grammar-file and --json-schema\n");
        return 2;
    }
    return 0;
}

/* The constraint of --grammar, --grammar-file or --json-schema compiled into *out (NULL when
 * none is given). 0, or -1 with the reason printed. */
static int compile_constraint(const gen_opts *o, core_grammar **out)
{
    char err[320];
    int rc = 0;
    *out = NULL;
    if (o->json_schema) {
        cJSON *s = cJSON_Parse(o->json_schema);
        if (!s) {
            fprintf(stderr, "generate: --json-schema: not JSON\n");
            return -1;
        }
        rc = srv_schema_compile(s, out, err, sizeof err);
        cJSON_Delete(s);
        if (rc)
            fprintf(stderr, "generate: --json-schema: %s\n", err);
    } else if (o->grammar || o->grammar_file) {
        size_t n = 0;
        char *text = o->grammar_file
                         ? core_read_text(o->grammar_file, GRAMMAR_FILE_MAX, &n, err, sizeof err)
                         : NULL;
        if (o->grammar_file && !text) {
            fprintf(stderr, "generate: --grammar-file %s: %s\n", o->grammar_file, err);
            return -1;
        }
        const char *g = text ? text : o->grammar;
        rc = srv_gbnf_compile(g, text ? n : strlen(g), out, err, sizeof err);
        if (rc)
            fprintf(stderr, "generate: %s%s: %s\n", text ? "--grammar-file " : "--grammar",
                    text ? o->grammar_file : "", err);
        free(text);
    }
    return rc ? -1 : 0;
}

/* Why a constrained generation cannot go on (nothing sampled, or the token refused). */
static const char *constraint_failure(const core_gmatch *gm)
{
    const char *why = core_gmatch_failure(gm);
    return why ? why : "no token of the vocabulary can continue the text the grammar requires";
}

/* Tokenizes the prompt, rendering the chat template first with --chat. */
static int prompt_tokens(const core_tokenizer *tok, const gen_opts *o, int32_t **ids, size_t *n)
{
    char err[256];
    char *text = NULL;
    if (o->chat) {
        core_chat_msg msg = {.role = "user", .content = o->prompt};
        if (core_chat_render(tok, &msg, 1, true, &text, err, sizeof err) < 0) {
            fprintf(stderr, "generate: %s\n", err);
            return -1;
        }
    }
    const char *p = text ? text : o->prompt;
    int rc = core_tokenize(tok, p, strlen(p), true, ids, n);
    free(text);
    if (rc < 0) {
        fprintf(stderr, "generate: cannot tokenize the prompt (%d)\n", rc);
        return -1;
    }
    if (core_tokenizer_prepend_bos(tok, *ids, *n, o->chat)) {
        int32_t *t = realloc(*ids, (*n + 1) * sizeof(int32_t));
        if (!t)
            return -1;
        memmove(t + 1, t, *n * sizeof(int32_t));
        t[0] = core_tokenizer_bos(tok);
        *ids = t;
        (*n)++;
    }
    return 0;
}

/* One forward step of rows of slot 0, with the selected adapters on every row. */
static int step(gen_run *g, const core_batch *b, float *logits)
{
    char err[256];
    const core_lora_plan *plan = NULL;
    const adapter_set *sets[PREFILL_CHUNK];
    for (int i = 0; i < b->n_rows; i++)
        sets[i] = g->set;
    if (g->set && adapter_plan_build(g->plan, g->m->cfg.n_layer, b->n_rows, sets, &plan)) {
        fprintf(stderr, "generate: out of memory\n");
        return -1;
    }
    if (core_forward(g->ctx, g->kv, b, plan, logits, err, sizeof err) < 0) {
        fprintf(stderr, "generate: %s\n", err);
        return -1;
    }
    return 0;
}

/* Runs the prompt in chunks; the last chunk's last row gives the logits. */
static int prefill(gen_run *g, const int32_t *ids, size_t n, float *logits)
{
    int32_t pos[PREFILL_CHUNK], slot[PREFILL_CHUNK] = {0};
    uint8_t want[PREFILL_CHUNK];
    for (size_t at = 0; at < n; at += PREFILL_CHUNK) {
        int m = (int)(n - at < PREFILL_CHUNK ? n - at : PREFILL_CHUNK);
        for (int i = 0; i < m; i++) {
            pos[i] = (int32_t)(at + i);
            want[i] = at + i == n - 1;
        }
        core_batch b = {
            .n_rows = m, .tokens = ids + at, .pos = pos, .slot = slot, .want_logits = want};
        if (step(g, &b, logits) < 0)
            return -1;
    }
    return 0;
}

static int generate(core_model *m, const core_tokenizer *tok, gen_opts *o, const core_grammar *gr)
{
    int status = 1;
    char err[256];
    int32_t *ids = NULL;
    size_t n_prompt = 0;
    core_sampler *smp = NULL;
    float *logits = NULL;
    core_gvocab *gv = NULL;
    core_gmatch *gm = NULL;
    gen_run g = {.m = m};
    if (srv_cli_sel_wanted(&o->sel)) {
        if (srv_cli_sel_open(&o->sel, &m->cfg, err, sizeof err) < 0) {
            fprintf(stderr, "generate: %s\n", err);
            goto out;
        }
        srv_cli_sel_describe(&o->sel, "generate");
        g.set = o->sel.set;
    }
    if (prompt_tokens(tok, o, &ids, &n_prompt) < 0)
        goto out;
    if (n_prompt == 0) {
        fprintf(stderr, "generate: the prompt is empty\n");
        goto out;
    }
    long n_ctx = o->n_ctx ? o->n_ctx : (m->cfg.n_ctx_train < 4096 ? m->cfg.n_ctx_train : 4096);
    if ((long)n_prompt >= n_ctx) {
        fprintf(stderr, "generate: the prompt has %zu tokens; the context holds %ld\n", n_prompt,
                n_ctx);
        goto out;
    }
    smp = core_sampler_new(&o->sp, m->cfg.n_vocab, err, sizeof err);
    if (!smp) {
        fprintf(stderr, "generate: %s\n", err);
        goto out;
    }
    if (gr) {
        if (!(gv = core_gvocab_new(tok, err, sizeof err)) ||
            !(gm = core_gmatch_new(gr, gv, err, sizeof err))) {
            fprintf(stderr, "generate: %s\n", err);
            goto out;
        }
        if (core_sampler_set_grammar(smp, gm) < 0) {
            fprintf(stderr, "generate: out of memory\n");
            goto out;
        }
    }
    g.ctx = core_ctx_new(m);
    g.kv = core_kv_new(&m->cfg, 1, (int)n_ctx, err, sizeof err);
    if (g.kv && o->kv_f16)
        core_kv_set_f16(g.kv, 1);
    g.plan = adapter_plan_new();
    logits = malloc((size_t)m->cfg.n_vocab * sizeof(float));
    int32_t *hist = realloc(ids, (size_t)n_ctx * sizeof(int32_t));
    if (hist)
        ids = hist;
    if (!g.ctx || !g.kv || !g.plan || !logits || !hist) {
        fprintf(stderr, "generate: out of memory\n");
        goto out;
    }

    double t0 = core_now();
    if (prefill(&g, ids, n_prompt, logits) < 0)
        goto out;
    double t1 = core_now();
    core_detok dt;
    core_detok_init(&dt, tok, o->show_special);
    char text[512];
    size_t n = n_prompt;
    long produced = 0;
    while (produced < o->n_predict && (long)n < n_ctx) {
        int32_t id = core_sampler_sample(smp, logits, ids, n, NULL);
        if (id < 0) {
            fprintf(stderr, "\ngenerate: %s\n",
                    gm ? constraint_failure(gm) : "the model produced no valid logits");
            goto out;
        }
        ids[n++] = id;
        produced++;
        if (core_tokenizer_is_eog(tok, id))
            break;
        if (gm && core_gmatch_accept(gm, id) < 0) {
            fprintf(stderr, "\ngenerate: %s\n", constraint_failure(gm));
            goto out;
        }
        if (core_detok_push(&dt, id, text, sizeof text) > 0) {
            fputs(text, stdout);
            fflush(stdout);
        }
        if (gm && core_gmatch_done(gm)) /* the grammar's text is complete and cannot grow */
            break;
        int32_t pos = (int32_t)n - 1, slot = 0;
        core_batch b = {.n_rows = 1, .tokens = &id, .pos = &pos, .slot = &slot};
        if (step(&g, &b, logits) < 0)
            goto out;
    }
    if (core_detok_flush(&dt, text, sizeof text) > 0)
        fputs(text, stdout);
    fputc('\n', stdout);
    double t2 = core_now();
    fprintf(stderr,
            "prompt: %zu tokens in %.3f s (%.1f tok/s); generation: %ld tokens in %.3f s "
            "(%.1f tok/s)\n",
            n_prompt, t1 - t0, (double)n_prompt / (t1 - t0), produced, t2 - t1,
            produced > 0 ? (double)produced / (t2 - t1) : 0.0);
    status = 0;
out:
    free(ids);
    free(logits);
    core_gmatch_free(gm);
    core_gvocab_free(gv);
    adapter_plan_free(g.plan);
    core_kv_free(g.kv);
    core_ctx_free(g.ctx);
    core_sampler_free(smp);
    srv_cli_sel_close(&o->sel);
    return status;
}

int srv_cli_generate(int argc, char **argv)
{
    gen_opts o;
    int rc = parse_opts(argc, argv, &o);
    if (rc)
        return rc == 1 ? 0 : 2;
    core_grammar *gr = NULL;
    if (compile_constraint(&o, &gr) < 0)
        return 2;
    char err[512];
    core_model *m = core_model_load(o.model, err, sizeof err);
    if (!m) {
        fprintf(stderr, "generate: cannot load %s: %s\n", o.model, err);
        core_grammar_free(gr);
        return 1;
    }
    core_tokenizer *tok = NULL;
    int status = 1;
    if (o.int8 && core_model_set_int8(m, 1, err, sizeof err) < 0)
        fprintf(stderr, "generate: --int8: %s\n", err);
    else if (!(tok = core_tokenizer_new(m->gguf, err, sizeof err)))
        fprintf(stderr, "generate: tokenizer of %s: %s\n", o.model, err);
    else
        status = generate(m, tok, &o, gr);
    core_tokenizer_free(tok);
    core_model_free(m);
    core_grammar_free(gr);
    return status;
}
