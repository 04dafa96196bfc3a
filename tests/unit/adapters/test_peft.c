/* PEFT and GGUF-LoRA loading on synthetic adapters: config semantics (ranks, alphas, patterns,
 * targets, layers), the q/k row permutation, and refusals with messages naming the problem. Every
 * load here is checked against adapter_probe: what loads is described with the loaded values, and
 * what is refused for anything but its weight values is refused by the probe too. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "adapter_testutil.h"
#include "adapters/adapter.h"
#include "core/format/types.h"
#include "tests/test.h"

#define BIT(l, m) (1ull << ((l)*CORE_MOD_COUNT + (m)))
#define QV (BIT(0, CORE_MOD_Q) | BIT(0, CORE_MOD_V) | BIT(1, CORE_MOD_Q) | BIT(1, CORE_MOD_V))

static const char *cfg_qv =
    "{\"peft_type\":\"LORA\",\"r\":4,\"lora_alpha\":8,\"target_modules\":[\"q_proj\",\"v_proj\"],"
    "\"bias\":\"none\",\"use_rslora\":false,\"fan_in_fan_out\":false,\"use_dora\":false,"
    "\"modules_to_save\":null,\"layers_to_transform\":null,\"rank_pattern\":{},"
    "\"alpha_pattern\":{}}";

/* adapter_load, then adapter_probe on the same path: the probe must describe what loaded with
 * the loaded adapter's values. NULL with the reason in err when either does not hold. */
static adapter *load_probed(const char *path, const core_config *cfg, char *err, size_t errlen)
{
    adapter *a = adapter_load(path, cfg, err, errlen);
    if (!a)
        return NULL;
    adapter_probe_info p;
    char perr[512] = "";
    int rc = adapter_probe(path, cfg, &p, perr, sizeof perr);
    if (rc == 0 && p.format == a->format && p.dtype == a->dtype && p.r == a->r &&
        p.alpha == a->alpha && p.rslora == a->rslora && p.targets == a->targets &&
        p.n_mods == a->n_mods && p.bytes == a->bytes)
        return a;
    snprintf(err, errlen,
             "probe (rc %d '%s') format %d dtype %u r %d alpha %g rslora %d targets %#x n_mods %d "
             "bytes %zu; loaded format %d dtype %u r %d alpha %g rslora %d targets %#x n_mods %d "
             "bytes %zu",
             rc, perr, p.format, p.dtype, p.r, (double)p.alpha, p.rslora, p.targets, p.n_mods,
             p.bytes, a->format, a->dtype, a->r, (double)a->alpha, a->rslora, a->targets, a->n_mods,
             a->bytes);
    adapter_unref(a);
    return NULL;
}

/* Loads dir and expects failure whose message contains want; the probe refuses it too unless
 * only the weight values are wrong (want "NaN"), which a probe never reads. */
static int expect_refusal(const char *dir, const core_config *cfg, const char *want)
{
    char err[512] = "";
    adapter *a = adapter_load(dir, cfg, err, sizeof err);
    if (a) {
        adapter_unref(a);
        printf("    expected a refusal mentioning '%s', but it loaded\n", want);
        return 0;
    }
    if (!strstr(err, want)) {
        printf("    refusal '%s' does not mention '%s'\n", err, want);
        return 0;
    }
    adapter_probe_info p;
    char perr[512] = "";
    int rc = adapter_probe(dir, cfg, &p, perr, sizeof perr);
    if (strcmp(want, "NaN") != 0 && (rc == 0 || p.format != 0 || p.bytes != 0)) {
        printf("    the load refuses '%s' (%s) but the probe gave %d (format %d)\n", dir, err, rc,
               p.format);
        return 0;
    }
    if (!strcmp(want, "NaN") && rc != 0) {
        printf("    the probe of '%s' reads weight values: %s\n", dir, perr);
        return 0;
    }
    return 1;
}

TEST(peft_loads_qv_and_permutes_q_rows)
{
    core_config cfg = tu_config();
    char dir[128], tmp[64];
    snprintf(tmp, sizeof tmp, "%s", tu_tmpdir());
    snprintf(dir, sizeof dir, "%s/qv", tmp);
    CHECK(tu_write_peft(dir, cfg_qv, &cfg, QV, 4, "F32", 1) == 0);
    char err[512];
    adapter *a = load_probed(dir, &cfg, err, sizeof err);
    CHECK_MSG(a, "load: %s", err);
    CHECK_EQ_INT(a->format, ADAPTER_PEFT);
    CHECK_EQ_INT(a->dtype, CORE_TYPE_F32);
    CHECK_EQ_INT(a->n_mods, 4);
    CHECK_EQ_INT(a->targets, (1u << CORE_MOD_Q) | (1u << CORE_MOD_V));
    const adapter_mod *q = adapter_mod_at(a, 1, CORE_MOD_Q), *v = adapter_mod_at(a, 1, CORE_MOD_V);
    CHECK_EQ_INT(q->rank, 4);
    CHECK_NEAR(q->scale, 2.0, 0);
    CHECK(adapter_mod_at(a, 0, CORE_MOD_K)->rank == 0);
    /* Compare with the file's own values: GGUF row h*64 + 2j + s must hold HF row
     * h*64 + s*32 + j; v is not permuted. */
    char p[256];
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", dir);
    const float *Bt = q->Bt; /* (4, 576) */
    float src[576 * 4];
    CHECK(tu_read_st_tensor(p, "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight",
                            src, 576 * 4) == 0);
    for (int h = 0; h < 9; h++)
        for (int k = 0; k < 64; k++) {
            int from = h * 64 + (k % 2) * 32 + k / 2;
            for (int j = 0; j < 4; j++)
                CHECK_MSG(Bt[j * 576 + h * 64 + k] == src[from * 4 + j],
                          "q lora_B GGUF row %d should be HF row %d (column %d)", h * 64 + k, from,
                          j);
        }
    float vsrc[192 * 4];
    CHECK(tu_read_st_tensor(p, "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight",
                            vsrc, 192 * 4) == 0);
    const float *vbt = v->Bt; /* (4, 192): the file's (192, 4) transposed */
    for (int o = 0; o < 192; o++)
        for (int j = 0; j < 4; j++)
            CHECK_MSG(vbt[j * 192 + o] == vsrc[o * 4 + j], "v lora_B (%d, %d)", o, j);
    adapter_unref(a);
    tu_rmrf(tmp);
}

/* Gemma 3 270M's shapes (head_dim 256 with n_embd 640: q is 640 -> 1024, o 1024 -> 640, k and v
 * 640 -> 256): every module loads, and q/k lora_B keep Hugging Face's row order, since Gemma 3's
 * GGUF q/k rows are not permuted. */
TEST(peft_gemma3_shapes_and_unpermuted_qk)
{
    core_config cfg = tu_config();
    strcpy(cfg.arch, "gemma3");
    cfg.kind = CORE_ARCH_GEMMA3;
    cfg.permuted_qk = false;
    cfg.neox_rope = true;
    cfg.n_embd = 640;
    cfg.n_head = 4;
    cfg.n_head_kv = 1;
    cfg.head_dim = cfg.rope_dim = 256;
    cfg.n_ff = 2048;
    char dir[128], tmp[64];
    snprintf(tmp, sizeof tmp, "%s", tu_tmpdir());
    snprintf(dir, sizeof dir, "%s/all", tmp);
    const char *c = "{\"r\":2,\"lora_alpha\":4,\"target_modules\":[\"q_proj\",\"k_proj\","
                    "\"v_proj\",\"o_proj\",\"gate_proj\",\"up_proj\",\"down_proj\"]}";
    CHECK(tu_write_peft_layers(dir, c, &cfg, 0x7f, 2, "F32", 7) == 0);
    char err[512];
    adapter *a = load_probed(dir, &cfg, err, sizeof err);
    CHECK_MSG(a, "load: %s", err);
    CHECK_EQ_INT(a->n_mods, 2 * CORE_MOD_COUNT);
    char p[256];
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", dir);
    static const char *const key[2] = {"q_proj", "k_proj"};
    static const int mod[2] = {CORE_MOD_Q, CORE_MOD_K}, out[2] = {1024, 256};
    static float src[1024 * 2];
    for (int i = 0; i < 2; i++) {
        char name[128];
        snprintf(name, sizeof name, "base_model.model.model.layers.1.self_attn.%s.lora_B.weight",
                 key[i]);
        CHECK(tu_read_st_tensor(p, name, src, (size_t)out[i] * 2) == 0);
        const float *bt = adapter_mod_at(a, 1, mod[i])->Bt; /* (2, out): the file's transposed */
        for (int o = 0; o < out[i]; o++)
            for (int j = 0; j < 2; j++)
                CHECK_MSG(bt[j * out[i] + o] == src[o * 2 + j], "%s lora_B (%d, %d) moved", key[i],
                          o, j);
    }
    const adapter_mod *o = adapter_mod_at(a, 0, CORE_MOD_O);
    CHECK_EQ_INT(o->rank, 2);
    adapter_unref(a);
    /* the same file against SmolLM2's shapes: refused, naming the shapes */
    core_config smol = tu_config();
    CHECK(expect_refusal(dir, &smol, "is this adapter for another base model?"));
    tu_rmrf(tmp);
}

TEST(peft_scaling_rslora_and_patterns)
{
    core_config cfg = tu_config();
    char dir[128];
    const char *tmp = tu_tmpdir();
    snprintf(dir, sizeof dir, "%s/pat", tmp);
    const char *c = "{\"r\":8,\"lora_alpha\":16,\"use_rslora\":true,"
                    "\"target_modules\":[\"q_proj\",\"k_proj\",\"o_proj\",\"down_proj\"],"
                    "\"rank_pattern\":{\"k_proj\":2,\"down_proj\":6},"
                    "\"alpha_pattern\":{\"o_proj\":32},\"layers_to_transform\":[1]}";
    /* Layer 1 only; ranks q 8, k 2, o 8, down 6 — written per module below. */
    CHECK(tu_mkdirs(dir) == 0);
    char p[256];
    snprintf(p, sizeof p, "%s/adapter_config.json", dir);
    FILE *f = fopen(p, "w");
    fputs(c, f);
    fclose(f);
    tu_tensor t[8];
    memset(t, 0, sizeof t);
    int mods[4] = {CORE_MOD_Q, CORE_MOD_K, CORE_MOD_O, CORE_MOD_DOWN}, ranks[4] = {8, 2, 8, 6};
    for (int i = 0; i < 4; i++) {
        const char *blk = mods[i] <= CORE_MOD_O ? "self_attn" : "mlp";
        snprintf(t[2 * i].name, sizeof t[0].name,
                 "base_model.model.model.layers.1.%s.%s.lora_A.weight", blk, tu_hf_name(mods[i]));
        snprintf(t[2 * i + 1].name, sizeof t[0].name,
                 "base_model.model.model.layers.1.%s.%s.lora_B.weight", blk, tu_hf_name(mods[i]));
        t[2 * i].dtype = t[2 * i + 1].dtype = "BF16";
        t[2 * i].rows = ranks[i];
        t[2 * i].cols = core_module_in(&cfg, mods[i]);
        t[2 * i + 1].rows = core_module_out(&cfg, mods[i]);
        t[2 * i + 1].cols = ranks[i];
    }
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", dir);
    CHECK(tu_write_safetensors(p, t, 8) == 0);
    char err[512];
    adapter *a = load_probed(dir, &cfg, err, sizeof err);
    CHECK_MSG(a, "load: %s", err);
    CHECK_EQ_INT(a->dtype, CORE_TYPE_BF16);
    CHECK_EQ_INT(a->n_mods, 4);
    CHECK_NEAR(adapter_mod_at(a, 1, CORE_MOD_Q)->scale, 16 / sqrt(8), 1e-6);
    CHECK_EQ_INT(adapter_mod_at(a, 1, CORE_MOD_K)->rank, 2);
    CHECK_NEAR(adapter_mod_at(a, 1, CORE_MOD_K)->scale, 16 / sqrt(2), 1e-6);
    CHECK_NEAR(adapter_mod_at(a, 1, CORE_MOD_O)->scale, 32 / sqrt(8), 1e-6);
    CHECK_EQ_INT(adapter_mod_at(a, 1, CORE_MOD_DOWN)->rank, 6);
    CHECK(adapter_mod_at(a, 0, CORE_MOD_Q)->rank == 0);
    adapter_unref(a);
    tu_rmrf(tmp);
}

TEST(peft_target_forms)
{
    core_config cfg = tu_config();
    const char *tmp = tu_tmpdir();
    char dir[128], err[512];
    uint64_t all = 0;
    for (int l = 0; l < 2; l++)
        for (int m = 0; m < CORE_MOD_COUNT; m++)
            all |= BIT(l, m);
    snprintf(dir, sizeof dir, "%s/all", tmp);
    CHECK(tu_write_peft(dir, "{\"r\":2,\"lora_alpha\":2,\"target_modules\":\"all-linear\"}", &cfg,
                        all, 2, "F16", 3) == 0);
    adapter *a = load_probed(dir, &cfg, err, sizeof err);
    CHECK_MSG(a, "all-linear: %s", err);
    CHECK_EQ_INT(a->n_mods, 14);
    adapter_unref(a);

    uint64_t gu =
        BIT(0, CORE_MOD_GATE) | BIT(0, CORE_MOD_UP) | BIT(1, CORE_MOD_GATE) | BIT(1, CORE_MOD_UP);
    snprintf(dir, sizeof dir, "%s/regex", tmp);
    CHECK(tu_write_peft(dir,
                        "{\"r\":2,\"lora_alpha\":4,\"target_modules\":\".*\\\\.(gate|up)_proj\"}",
                        &cfg, gu, 2, "F32", 4) == 0);
    a = load_probed(dir, &cfg, err, sizeof err);
    CHECK_MSG(a, "regex: %s", err);
    CHECK_EQ_INT(a->n_mods, 4);
    CHECK_EQ_INT(a->targets, (1u << CORE_MOD_GATE) | (1u << CORE_MOD_UP));
    adapter_unref(a);

    /* Python re syntax (\d, a lookahead), full match: layer 1's q_proj and v_proj only. */
    uint64_t qv1 = BIT(1, CORE_MOD_Q) | BIT(1, CORE_MOD_V);
    snprintf(dir, sizeof dir, "%s/pyre", tmp);
    CHECK(tu_write_peft(
              dir,
              "{\"r\":2,\"lora_alpha\":4,\"target_modules\":"
              "\"^model\\\\.layers\\\\.(?!0\\\\.)\\\\d+\\\\.self_attn\\\\.(q_proj|v_proj)$\"}",
              &cfg, qv1, 2, "F32", 6) == 0);
    a = load_probed(dir, &cfg, err, sizeof err);
    CHECK_MSG(a, "python regex: %s", err);
    CHECK_EQ_INT(a->n_mods, 2);
    CHECK(adapter_mod_at(a, 0, CORE_MOD_Q)->rank == 0);
    CHECK_EQ_INT(adapter_mod_at(a, 1, CORE_MOD_V)->rank, 2);
    adapter_unref(a);

    /* Default targets (null) are q_proj and v_proj, as PEFT's Llama default. */
    snprintf(dir, sizeof dir, "%s/dflt", tmp);
    CHECK(tu_write_peft(dir, "{\"r\":4,\"lora_alpha\":4,\"target_modules\":null}", &cfg, QV, 4,
                        "F32", 5) == 0);
    a = load_probed(dir, &cfg, err, sizeof err);
    CHECK_MSG(a, "default targets: %s", err);
    adapter_unref(a);
    tu_rmrf(tmp);
}

TEST(peft_refusals_name_the_problem)
{
    core_config cfg = tu_config();
    const char *tmp = tu_tmpdir();
    char dir[160];
    static const struct {
        const char *cfg;
        const char *want;
    } bad[] = {
        {"{\"r\":4,\"lora_alpha\":8,\"target_modules\":[\"q_proj\",\"v_proj\"],\"use_dora\":true}",
         "use_dora"},
        {"{\"r\":4,\"lora_alpha\":8,\"target_modules\":[\"q_proj\",\"v_proj\"],\"modules_to_save\":"
         "[\"lm_head\"]}",
         "modules_to_save"},
        {"{\"r\":4,\"lora_alpha\":8,\"target_modules\":[\"q_proj\",\"v_proj\"],\"bias\":\"all\"}",
         "bias"},
        {"{\"r\":4,\"lora_alpha\":8,\"target_modules\":[\"q_proj\",\"v_proj\",\"lm_head\"]}",
         "lm_head"},
        {"{\"r\":4,\"lora_alpha\":8,\"target_modules\":[\"q_proj\",\"v_proj\"],\"lora_bias\":true}",
         "lora_bias"},
        {"{\"r\":4,\"lora_alpha\":8,\"target_modules\":[\"q_proj\",\"v_proj\"],"
         "\"init_lora_weights\":\"pissa\"}",
         "init_lora_weights"},
        {"{\"r\":4,\"lora_alpha\":8,\"target_modules\":[\"q_proj\",\"v_proj\"],\"peft_type\":"
         "\"IA3\"}",
         "peft_type"},
        {"{\"r\":-4,\"lora_alpha\":8,\"target_modules\":[\"q_proj\",\"v_proj\"]}", "r:"},
        {"{\"r\":4,\"lora_alpha\":8,\"target_modules\":[\"q_proj\"]}", "not targeted"},
        {"{\"r\":4,\"lora_alpha\":8,\"target_modules\":[\"q_proj\",\"v_proj\",\"k_proj\"]}",
         "no lora_A"},
        {"{\"r\":8,\"lora_alpha\":8,\"target_modules\":[\"q_proj\",\"v_proj\"]}", "rank 8"},
        /* Patterns PCRE2 refuses: the message names the field, PCRE2's reason and the offset. */
        {"{\"r\":4,\"lora_alpha\":8,\"target_modules\":\"q_(proj\"}",
         "target_modules: regex \"q_(proj\": missing closing parenthesis at offset 7"},
        {"{\"r\":4,\"lora_alpha\":8,\"target_modules\":[\"q_proj\",\"v_proj\"],"
         "\"exclude_modules\":\"[q\"}",
         "exclude_modules: regex \"[q\": missing terminating ] for character class at offset 2"},
        {"{\"r\":4,\"lora_alpha\":8,\"target_modules\":[\"q_proj\",\"v_proj\"],"
         "\"rank_pattern\":{\"q_proj)\":2}}",
         "rank_pattern/alpha_pattern: key \"q_proj)\": unmatched closing parenthesis at offset 7"},
        /* Compilation is bounded: length and nesting caps (glibc's regcomp took over 2 GB for
         * "all-++++...linear", found by fuzz_adapter_config; PCRE2 reads a++ as possessive). */
        {"{\"r\":4,\"lora_alpha\":8,\"target_modules\":\"((((((((((((((((((((((((((((((((((q))))))"
         "))))))))))))))))))))))))))))_proj\"}",
         "parentheses are too deeply nested"},
        /* Matching is bounded: (.+)+\d backtracks exponentially over a module name; the match
         * limit stops it and the adapter is refused rather than loaded without that module. */
        {"{\"r\":4,\"lora_alpha\":8,\"target_modules\":\"(.+)+\\\\d\"}", "limit exceeded"},
        {"{\"r\":4,\"lora_alpha\":8,\"target_modules\":[\"q_proj\",\"v_proj\"]", "invalid JSON"},
        {"[1,2]", "not a JSON object"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(dir, sizeof dir, "%s/bad%zu", tmp, i);
        CHECK(tu_write_peft(dir, bad[i].cfg, &cfg, QV, 4, "F32", 9) == 0);
        CHECK_MSG(expect_refusal(dir, &cfg, bad[i].want), "case %zu", i);
    }
    tu_rmrf(tmp);
}

TEST(peft_refuses_bad_weights)
{
    core_config cfg = tu_config();
    const char *tmp = tu_tmpdir();
    char dir[160], p[256];
    /* Another base: layers beyond the base's count, and a different hidden size. */
    core_config big = cfg;
    big.n_layer = 4;
    snprintf(dir, sizeof dir, "%s/deeper", tmp);
    CHECK(tu_write_peft(dir, cfg_qv, &big, BIT(3, CORE_MOD_Q) | BIT(3, CORE_MOD_V), 4, "F32", 1) ==
          0);
    CHECK(expect_refusal(dir, &cfg, "not a LoRA A/B weight"));
    core_config wide = cfg;
    wide.n_embd = 960;
    wide.n_head = 15;
    wide.n_head_kv = 5;
    snprintf(dir, sizeof dir, "%s/wide", tmp);
    CHECK(tu_write_peft(dir, cfg_qv, &wide, QV, 4, "F32", 1) == 0);
    CHECK(expect_refusal(dir, &cfg, "another base model"));
    /* NaN weights. */
    snprintf(dir, sizeof dir, "%s/nan", tmp);
    CHECK(tu_write_peft(dir, cfg_qv, &cfg, QV, 4, "F32", 1) == 0);
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", dir);
    float nan_vals[576 * 4];
    for (int i = 0; i < 576 * 4; i++)
        nan_vals[i] = i == 77 ? NAN : 0.01f;
    tu_tensor t[8];
    memset(t, 0, sizeof t);
    int n = 0;
    for (int l = 0; l < 2; l++)
        for (int m = 0; m <= CORE_MOD_V; m += 2) {
            for (int w = 0; w < 2; w++) {
                snprintf(t[n].name, sizeof t[n].name,
                         "base_model.model.model.layers.%d.self_attn.%s.lora_%c.weight", l,
                         tu_hf_name(m), w ? 'B' : 'A');
                t[n].dtype = "F32";
                t[n].rows = w ? core_module_out(&cfg, m) : 4;
                t[n].cols = w ? 4 : 576;
                t[n].values = nan_vals;
                n++;
            }
        }
    CHECK(tu_write_safetensors(p, t, n) == 0);
    CHECK(expect_refusal(dir, &cfg, "NaN"));
    /* A truncated weights file, and a pickle-only adapter. */
    snprintf(dir, sizeof dir, "%s/trunc", tmp);
    CHECK(tu_write_peft(dir, cfg_qv, &cfg, QV, 4, "F32", 1) == 0);
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", dir);
    CHECK(truncate(p, 4000) == 0);
    CHECK(expect_refusal(dir, &cfg, "adapter_model.safetensors"));
    CHECK(unlink(p) == 0);
    snprintf(p, sizeof p, "%s/adapter_model.bin", dir);
    FILE *f = fopen(p, "w");
    fputs("pickle", f);
    fclose(f);
    CHECK(expect_refusal(dir, &cfg, "safe_serialization"));
    /* Not an adapter at all. */
    CHECK(expect_refusal(tmp, &cfg, "no adapter here"));
    tu_rmrf(tmp);
}

TEST(gguf_lora_refuses_a_model_file)
{
    TEST_NEED_MODEL();
    core_config cfg = tu_config();
    CHECK(expect_refusal(test_model_path(), &cfg, "general.type"));
}

/* Mixed dtypes widen the slab to f32, and the probe counts it that way; a GGUF-LoRA file is
 * described from its header (rank = lora_a ne[1], the largest over the file). */
TEST(probe_matches_the_load)
{
    core_config cfg = tu_config();
    const char *tmp = tu_tmpdir();
    char dir[160], p[256], err[512];
    snprintf(dir, sizeof dir, "%s/mixed", tmp);
    CHECK(tu_mkdirs(dir) == 0);
    snprintf(p, sizeof p, "%s/adapter_config.json", dir);
    FILE *f = fopen(p, "w");
    CHECK(f != NULL);
    fputs("{\"r\":3,\"lora_alpha\":5,\"target_modules\":[\"up_proj\"],\"layers_to_transform\":0}",
          f);
    fclose(f);
    tu_tensor t[2];
    memset(t, 0, sizeof t);
    snprintf(t[0].name, sizeof t[0].name,
             "base_model.model.model.layers.0.mlp.up_proj.lora_A.weight");
    snprintf(t[1].name, sizeof t[1].name,
             "base_model.model.model.layers.0.mlp.up_proj.lora_B.weight");
    t[0].dtype = "F16";
    t[1].dtype = "BF16";
    t[0].rows = t[1].cols = 3;
    t[0].cols = core_module_in(&cfg, CORE_MOD_UP);
    t[1].rows = core_module_out(&cfg, CORE_MOD_UP);
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", dir);
    CHECK(tu_write_safetensors(p, t, 2) == 0);
    adapter *a = load_probed(dir, &cfg, err, sizeof err);
    CHECK_MSG(a, "mixed: %s", err);
    CHECK_EQ_INT(a->dtype, CORE_TYPE_F32);
    CHECK_EQ_INT(a->bytes, 3 * (576 + 1536) * 4);
    adapter_unref(a);

    /* Not an adapter: refused, nothing described. */
    adapter_probe_info info;
    CHECK(adapter_probe(tmp, &cfg, &info, err, sizeof err) < 0);
    CHECK_EQ_INT(info.format, 0);
    CHECK_MSG(strstr(err, "no adapter here"), "%s", err);
    tu_rmrf(tmp);

    core_config smol = tu_config();
    smol.n_layer = 30; /* SmolLM2-135M, which the fixture was converted for */
    a = load_probed("tests/golden/fixtures/adapters/qv_r4.gguf", &smol, err, sizeof err);
    CHECK_MSG(a, "qv_r4.gguf: %s", err);
    CHECK_EQ_INT(a->format, ADAPTER_GGUF);
    CHECK_EQ_INT(a->r, 4);
    CHECK_EQ_INT(a->bytes, 30 * 4 * ((576 + 576) + (576 + 192)) * 2);
    adapter_unref(a);
    /* The same file for a 2-layer base: both refuse it. */
    CHECK(expect_refusal("tests/golden/fixtures/adapters/qv_r4.gguf", &cfg, "2 layers"));
}

/* A safetensors header longer than a probe's first read (64 KiB; here 100 kB of the whitespace
 * JSON allows after the header object) takes a second read, and the probe still describes what
 * loads. */
TEST(probe_reads_a_long_header)
{
    const char *tmp = tu_tmpdir(), *fix = "tests/golden/fixtures/adapters/qv_r4";
    char p[256], err[512] = "";
    snprintf(p, sizeof p, "cp %s/adapter_config.json %s/", fix, tmp);
    CHECK(system(p) == 0);
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", fix);
    FILE *f = fopen(p, "rb");
    CHECK(f);
    unsigned char *in = malloc(1 << 20);
    size_t len = fread(in, 1, 1 << 20, f);
    fclose(f);
    uint64_t hl;
    memcpy(&hl, in, 8);
    const size_t pad = 100000;
    uint64_t nl = hl + pad;
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", tmp);
    f = fopen(p, "wb");
    int ok = f && len < (1 << 20) && hl < len && fwrite(&nl, 8, 1, f) == 1 &&
             fwrite(in + 8, 1, (size_t)hl, f) == hl;
    for (size_t i = 0; ok && i < pad; i++)
        ok = fputc(' ', f) == ' ';
    ok = ok && fwrite(in + 8 + hl, 1, len - 8 - (size_t)hl, f) == len - 8 - hl;
    ok = f && fclose(f) == 0 && ok;
    free(in);
    CHECK(ok);
    core_config smol = tu_config();
    smol.n_layer = 30;
    adapter *a = load_probed(tmp, &smol, err, sizeof err);
    CHECK_MSG(a, "%s", err);
    CHECK_EQ_INT(a->bytes, 30 * 4 * ((576 + 576) + (576 + 192)) * 2);
    adapter_unref(a);
    tu_rmrf(tmp);
}
