/* LoRA on Phi-3's fused Linears (qkv_proj, gate_up_proj): a PEFT or GGUF-LoRA pair on a fused
 * Linear becomes one LoRA per module, the same A and its rows of B (adapters/adapter.c,
 * adapter__put_pair); on the tiny written model (tests/unit/core/model/tiny_phi3.h) the forward
 * pass with it equals the Llama-layout twin's with the split adapter, and the merged file's
 * logits equal the unmerged run's; unfused names on a phi3 model (and fused ones on a Llama) are
 * refused by name. Against transformers + PEFT: tests/golden/test_tiny_models.c. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/adapter.h"
#include "adapters/compose.h"
#include "adapters/merge.h"
#include "core/format/gguf_write.h"
#include "core/format/types.h"
#include "core/model/model.h"
#include "tests/test.h"
#include "tests/unit/adapters/adapter_testutil.h"
#include "tests/unit/core/model/tiny_phi3.h"

#define R 4
#define N_TOK 10
#define FUSED "[\"qkv_proj\", \"o_proj\", \"gate_up_proj\", \"down_proj\"]"

static const int32_t toks[N_TOK] = {3, 17, 29, 4, 41, 8, 12, 33, 6, 20};

/* The A and B of one Hugging Face Linear of one layer, pseudo-random: A (R, in), B (out, R). */
typedef struct pair {
    int in, out;
    float A[R * TP_FF], B[(TP_Q + 2 * TP_KV > 2 * TP_FF ? TP_Q + 2 * TP_KV : 2 * TP_FF) * R];
} pair;

static void make_pair(pair *p, int in, int out, uint32_t seed)
{
    p->in = in;
    p->out = out;
    uint32_t s = seed * 747796405u + 1u;
    for (int i = 0; i < R * in; i++)
        p->A[i] = 0.4f * ((float)((s = s * 1664525u + 1013904223u) >> 8) / (1u << 24) - 0.5f);
    for (int i = 0; i < out * R; i++)
        p->B[i] = 0.4f * ((float)((s = s * 1664525u + 1013904223u) >> 8) / (1u << 24) - 0.5f);
}

/* Phi-3's four Linears per layer: qkv_proj, o_proj, gate_up_proj, down_proj. */
static pair lin[TP_LAYERS][4];
static const char *const fused_names[4] = {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"};
static const int fused_first[4] = {CORE_MOD_Q, CORE_MOD_O, CORE_MOD_GATE, CORE_MOD_DOWN};

static void make_pairs(void)
{
    for (int l = 0; l < TP_LAYERS; l++) {
        make_pair(&lin[l][0], TP_EMBD, TP_Q + 2 * TP_KV, 10 + l);
        make_pair(&lin[l][1], TP_Q, TP_EMBD, 20 + l);
        make_pair(&lin[l][2], TP_EMBD, 2 * TP_FF, 30 + l);
        make_pair(&lin[l][3], TP_FF, TP_EMBD, 40 + l);
    }
}

static int write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fputs(text, f);
    return fclose(f);
}

/* dir/adapter_config.json (targets as given) and the pairs of the Linears in `which` (bits of
 * 0..3), named name_of(k), or with Llama's unfused names when split (B cut into its modules). */
static int write_peft(const char *dir, const char *targets, unsigned which, bool split)
{
    char p[512], cfg[512];
    tu_tensor t[TP_LAYERS * 7 * 2];
    int n = 0;
    if (tu_mkdirs(dir))
        return -1;
    snprintf(cfg, sizeof cfg, "{\"r\": %d, \"lora_alpha\": 8, \"target_modules\": %s}", R, targets);
    snprintf(p, sizeof p, "%s/adapter_config.json", dir);
    if (write_text(p, cfg))
        return -1;
    core_config c = tp_config();
    for (int l = 0; l < TP_LAYERS; l++)
        for (int k = 0; k < 4; k++) {
            if (!(which >> k & 1))
                continue;
            const pair *pr = &lin[l][k];
            int first = fused_first[k], span = split ? core_module_span(&c, first) : 1;
            for (int m = first, row0 = 0; m < first + span; m++) {
                const char *blk = k < 2 ? "self_attn" : "mlp";
                const char *name = split ? tu_hf_name(m) : fused_names[k];
                int out = split ? core_module_out(&c, m) : pr->out;
                snprintf(t[n].name, sizeof t[n].name,
                         "base_model.model.model.layers.%d.%s.%s.lora_A.weight", l, blk, name);
                t[n].dtype = "F32";
                t[n].rows = R;
                t[n].cols = pr->in;
                t[n++].values = pr->A;
                snprintf(t[n].name, sizeof t[n].name,
                         "base_model.model.model.layers.%d.%s.%s.lora_B.weight", l, blk, name);
                t[n].dtype = "F32";
                t[n].rows = out;
                t[n].cols = R;
                t[n++].values = pr->B + (size_t)row0 * R;
                row0 += out;
            }
        }
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", dir);
    return tu_write_safetensors(p, t, n);
}

/* Every module of every layer: rank R, scale 2, A the Linear's, Bt its rows of B transposed. */
static void check_split(const adapter *a, const core_config *c)
{
    CHECK_EQ_INT(a->targets, (1u << CORE_MOD_COUNT) - 1);
    CHECK_EQ_INT(a->n_mods, TP_LAYERS * CORE_MOD_COUNT);
    CHECK_EQ_INT(a->dtype, CORE_TYPE_F32);
    size_t want = 0;
    for (int k = 0; k < 4; k++)
        want += (size_t)R * (lin[0][k].in + lin[0][k].out) * 4 * TP_LAYERS;
    CHECK_EQ_INT(a->bytes, want);
    for (int l = 0; l < TP_LAYERS; l++)
        for (int k = 0; k < 4; k++) {
            const pair *pr = &lin[l][k];
            int first = fused_first[k];
            for (int m = first; m < first + core_module_span(c, first); m++) {
                const adapter_mod *am = adapter_mod_at(a, l, m);
                int row0, out = core_module_out(c, m);
                core_module_tensor(c, m, &row0);
                CHECK_EQ_INT(am->rank, R);
                CHECK(am->scale == 2.0f);
                CHECK(am->A == adapter_mod_at(a, l, first)->A); /* one copy of A */
                CHECK(memcmp(am->A, pr->A, sizeof(float) * R * pr->in) == 0);
                const float *Bt = am->Bt;
                for (int o = 0; o < out; o++)
                    for (int j = 0; j < R; j++)
                        CHECK_MSG(Bt[j * out + o] == pr->B[(row0 + o) * R + j],
                                  "layer %d %s Bt[%d][%d]", l, core_module_name(m), j, o);
            }
        }
}

TEST(phi3_peft_fused_linears_split_per_module)
{
    make_pairs();
    const char *dir = tu_tmpdir();
    core_config c = tp_config();
    char err[512] = "", sub[256];
    static const char *const forms[] = {FUSED, "\"all-linear\"",
                                        "\"model\\\\.layers\\\\.[0-9]+\\\\..*_proj\""};
    for (size_t i = 0; i < sizeof forms / sizeof *forms; i++) {
        snprintf(sub, sizeof sub, "%s/a%zu", dir, i);
        CHECK(write_peft(sub, forms[i], 0xf, false) == 0);
        adapter *a = adapter_load(sub, &c, err, sizeof err);
        CHECK_MSG(a, "target_modules %s: %s", forms[i], err);
        check_split(a, &c);
        adapter_probe_info pi;
        CHECK_MSG(adapter_probe(sub, &c, &pi, err, sizeof err) == 0, "%s", err);
        CHECK_EQ_INT(pi.targets, a->targets);
        CHECK_EQ_INT(pi.n_mods, a->n_mods);
        CHECK_EQ_INT(pi.bytes, a->bytes);
        adapter_unref(a);
    }
    tu_rmrf(dir);
}

/* A fused pair written as llama.cpp's convert_lora_to_gguf.py names it. */
TEST(phi3_gguf_lora_fused_tensors_split_per_module)
{
    make_pairs();
    static const char *const gg[4] = {"attn_qkv", "attn_output", "ffn_up", "ffn_down"};
    const char *dir = tu_tmpdir();
    core_config c = tp_config();
    char path[256], err[512] = "", name[96];
    snprintf(path, sizeof path, "%s/adapter.gguf", dir);
    core_gguf_writer *w = core_gguf_writer_new();
    core_gguf_writer_set_str(w, "general.architecture", "phi3", NULL, 0);
    core_gguf_writer_set_str(w, "general.type", "adapter", NULL, 0);
    core_gguf_writer_set_str(w, "adapter.type", "lora", NULL, 0);
    core_gguf_writer_set_f32(w, "adapter.lora.alpha", 8.0f, NULL, 0);
    for (int l = 0; l < TP_LAYERS; l++)
        for (int k = 0; k < 4; k++) {
            const pair *pr = &lin[l][k];
            uint64_t ne_a[2] = {(uint64_t)pr->in, R}, ne_b[2] = {R, (uint64_t)pr->out};
            snprintf(name, sizeof name, "blk.%d.%s.weight.lora_a", l, gg[k]);
            core_gguf_writer_add_tensor(w, name, CORE_TYPE_F32, 2, ne_a, pr->A,
                                        sizeof(float) * R * pr->in, NULL, 0);
            snprintf(name, sizeof name, "blk.%d.%s.weight.lora_b", l, gg[k]);
            core_gguf_writer_add_tensor(w, name, CORE_TYPE_F32, 2, ne_b, pr->B,
                                        sizeof(float) * R * pr->out, NULL, 0);
        }
    CHECK_MSG(core_gguf_writer_write(w, path, err, sizeof err) == 0, "%s", err);
    core_gguf_writer_free(w);
    adapter *a = adapter_load(path, &c, err, sizeof err);
    CHECK_MSG(a, "%s", err);
    check_split(a, &c);
    adapter_probe_info pi;
    CHECK_MSG(adapter_probe(path, &c, &pi, err, sizeof err) == 0, "%s", err);
    CHECK(pi.targets == a->targets && pi.n_mods == a->n_mods && pi.bytes == a->bytes);
    adapter_unref(a);
    tu_rmrf(dir);
}

TEST(phi3_peft_refusals_name_the_layout)
{
    make_pairs();
    const char *dir = tu_tmpdir();
    core_config phi3 = tp_config(), llama = tp_config();
    llama.kind = CORE_ARCH_LLAMA;
    llama.neox_rope = false;
    strcpy(llama.arch, "llama");
    static const struct {
        const char *targets;
        unsigned which;
        bool split, on_llama;
        const char *want;
    } cases[] = {
        /* unfused names in the config on a phi3 */
        {"[\"q_proj\", \"v_proj\"]", 0xf, false, false, "'q_proj' is not a module of phi3"},
        {"[\"gate_proj\"]", 0xf, false, false, "'gate_proj' is not a module of phi3"},
        /* unfused weights under a config that targets everything */
        {"\"all-linear\"", 0x1, true, false, "qkv_proj, o_proj, gate_up_proj, down_proj"},
        /* a regex that matches none of Phi-3's names */
        {"\".*\\\\.(q_proj|v_proj)\"", 0x1, false, false, "selects no linear layer"},
        {"null", 0x1, false, false, "PEFT has no default for phi3"},
        /* fused names on a Llama */
        {FUSED, 0xf, false, true, "'qkv_proj' is not a module of llama"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char sub[256], err[512] = "";
        snprintf(sub, sizeof sub, "%s/r%zu", dir, i);
        CHECK(write_peft(sub, cases[i].targets, cases[i].which, cases[i].split) == 0);
        adapter *a = adapter_load(sub, cases[i].on_llama ? &llama : &phi3, err, sizeof err);
        printf("    %s\n", err);
        CHECK(a == NULL);
        CHECK_MSG(strstr(err, cases[i].want), "'%s' does not name '%s'", err, cases[i].want);
    }
    /* a qkv_proj lora_B of q's rows only */
    char sub[256], err[512] = "";
    snprintf(sub, sizeof sub, "%s/short", dir);
    lin[0][0].out = TP_Q;
    CHECK(write_peft(sub, FUSED, 0x1, false) == 0);
    make_pairs();
    adapter *a = adapter_load(sub, &phi3, err, sizeof err);
    printf("    %s\n", err);
    CHECK(a == NULL && strstr(err, "qkv_proj") && strstr(err, "[64, 4], expected [128, 4]"));
    tu_rmrf(dir);
}

/* The logits of toks under adapter a (NULL: none), all rows in one step. */
static float *run(const core_model *m, adapter *a)
{
    char err[256] = "";
    int32_t pos[N_TOK], slot[N_TOK] = {0};
    adapter_set *set = NULL;
    const adapter_set *sets[N_TOK];
    if (a)
        set = adapter_set_new(&(adapter_set_item){.a = a, .weight = 1.0f}, 1);
    for (int i = 0; i < N_TOK; i++) {
        pos[i] = i;
        sets[i] = set;
    }
    core_ctx *ctx = core_ctx_new(m);
    core_kv *kv = core_kv_new(&m->cfg, 1, 64, err, sizeof err);
    adapter_plan *plan = adapter_plan_new();
    float *lg = malloc(sizeof(float) * N_TOK * TP_VOCAB);
    const core_lora_plan *lp = NULL;
    core_batch b = {.n_rows = N_TOK, .tokens = toks, .pos = pos, .slot = slot};
    int rc = ctx && kv && plan && lg ? 0 : -ENOMEM;
    if (rc == 0 && set)
        rc = adapter_plan_build(plan, m->cfg.n_layer, N_TOK, sets, &lp);
    if (rc == 0)
        rc = core_forward(ctx, kv, &b, lp, lg, err, sizeof err);
    if (rc) {
        printf("    forward: %d %s\n", rc, err);
        free(lg);
        lg = NULL;
    }
    adapter_plan_free(plan);
    adapter_set_free(set);
    core_kv_free(kv);
    core_ctx_free(ctx);
    return lg;
}

static double max_diff(const float *a, const float *b)
{
    double d = 0;
    for (int i = 0; i < N_TOK * TP_VOCAB; i++)
        d = fmax(d, fabs((double)a[i] - b[i]));
    return d;
}

/* The fused adapter on the phi3 file against the split one on its Llama-layout twin, then the
 * merged phi3 file (attn_qkv and ffn_up written whole) against the unmerged run. */
TEST(phi3_lora_forward_and_merge)
{
    make_pairs();
    const char *dir = tu_tmpdir();
    char path[256], twin[256], merged[256], sub[256], err[512] = "";
    snprintf(path, sizeof path, "%s/p.gguf", dir);
    snprintf(twin, sizeof twin, "%s/t.gguf", dir);
    snprintf(merged, sizeof merged, "%s/merged.gguf", dir);
    CHECK(tp_write(path, &(tp_opts){.type = CORE_TYPE_Q8_0, .sliding_window = 6}) == 0);
    CHECK(tp_write(twin, &(tp_opts){.type = CORE_TYPE_Q8_0, .llama_twin = true}) == 0);
    core_model *m = core_model_load(path, err, sizeof err);
    core_model *t = core_model_load(twin, err, sizeof err);
    CHECK_MSG(m && t, "%s", err);
    t->cfg.neox_rope = true;    /* Phi-3's RoPE and window on the Llama layout */
    t->cfg.permuted_qk = false; /* and its q/k rows in Hugging Face order */
    t->cfg.sliding_window = 6;
    t->cfg.swa_pattern = 0;
    t->cfg.rope_theta_swa = t->cfg.rope_theta;
    snprintf(sub, sizeof sub, "%s/fused", dir);
    CHECK(write_peft(sub, FUSED, 0xf, false) == 0);
    adapter *a = adapter_load(sub, &m->cfg, err, sizeof err);
    CHECK_MSG(a, "%s", err);
    snprintf(sub, sizeof sub, "%s/split", dir);
    CHECK(write_peft(sub, "\"all-linear\"", 0xf, true) == 0);
    adapter *s = adapter_load(sub, &t->cfg, err, sizeof err);
    CHECK_MSG(s, "%s", err);
    float *base = run(m, NULL), *la = run(m, a), *ls = run(t, s);
    CHECK(base && la && ls);
    double d_twin = max_diff(la, ls), d_base = max_diff(la, base);
    printf("    fused on phi3 vs split on the twin: %.3g (the adapter moves the logits by %.3g)\n",
           d_twin, d_base);
    CHECK(d_twin <= 1e-5);
    CHECK(d_base > 1e-2);

    adapter_set *set = adapter_set_new(&(adapter_set_item){.a = a, .weight = 1.0f}, 1);
    adapter_merge_report rep;
    const char *names[] = {"fused"};
    CHECK_MSG(
        adapter_merge_export(m, set, names, merged, ADAPTER_MERGE_F32, &rep, err, sizeof err) == 0,
        "%s", err);
    adapter_set_free(set);
    printf("    merged %d of %d tensors (%s)\n", rep.n_merged, rep.n_tensors, rep.modules);
    CHECK_EQ_INT(rep.n_merged, 4 * TP_LAYERS); /* attn_qkv, attn_output, ffn_up, ffn_down */
    core_model *mm = core_model_load(merged, err, sizeof err);
    CHECK_MSG(mm, "%s", err);
    const core_gguf_tensor *qkv = core_gguf_find_tensor(mm->gguf, "blk.1.attn_qkv.weight");
    CHECK(qkv && qkv->type == CORE_TYPE_F32 && qkv->ne[1] == TP_Q + 2 * TP_KV);
    float *lm = run(mm, NULL);
    CHECK(lm);
    double d_merge = max_diff(la, lm);
    printf("    merged vs unmerged: %.3g\n", d_merge);
    CHECK(d_merge <= 1e-4);
    free(base);
    free(la);
    free(ls);
    free(lm);
    adapter_unref(a);
    adapter_unref(s);
    core_model_free(m);
    core_model_free(t);
    core_model_free(mm);
    tu_rmrf(dir);
}
