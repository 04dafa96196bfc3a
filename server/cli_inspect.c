/* `adaptree inspect`: what a GGUF holds (metadata, tensor types), the model configuration
 * adaptree derives from it, and the OpenBLAS core in use. Exit status 1 when it cannot be
 * loaded as a model. */
#include <cJSON.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "adapters/adapter.h"
#include "core/format/gguf.h"
#include "core/format/types.h"
#include "core/kernels/blas.h"
#include "core/model/model.h"
#include "core/text/tokenizer.h"
#include "server/cli.h"

static void print_config(const core_config *c)
{
    printf("model config:\n"
           "  arch %s, %d layers, embedding %d, feed-forward %d\n"
           "  heads %d (kv %d, head dim %d), rope theta %g, rms eps %g\n"
           "  vocab %d, trained context %d, output head %s\n",
           c->arch, c->n_layer, c->n_embd, c->n_ff, c->n_head, c->n_head_kv, c->head_dim,
           (double)c->rope_theta, (double)c->rms_eps, c->n_vocab, c->n_ctx_train,
           c->tied_output ? "tied to token_embd" : "output.weight");
    if (c->sliding_window > 0 && c->swa_pattern == 0)
        printf("  sliding window %d on every layer\n", c->sliding_window);
    else if (c->sliding_window > 0)
        printf("  sliding window %d, every %d-th layer global (rope theta %g on the others)\n",
               c->sliding_window, c->swa_pattern, (double)c->rope_theta_swa);
    if (c->kind == CORE_ARCH_PHI3)
        printf("  fused tensors: attn_qkv (q, k, v), ffn_up (gate, up)\n");
}

/* Prints the fields of adapter_config.json that decide the math, as written. */
static void print_peft_config(const char *dir)
{
    char p[4096];
    snprintf(p, sizeof p, "%s/adapter_config.json", dir);
    /* Non-blocking and regular files only: a FIFO or device named adapter_config.json must not
     * hang `inspect` (the registry's loader refuses them the same way). */
    int fd = open(p, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    struct stat st;
    if (fd < 0)
        return;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        fprintf(stderr, "inspect: %s is not a regular file; not read\n", p);
        close(fd);
        return;
    }
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        close(fd);
        return;
    }
    char *buf = malloc(1 << 20);
    size_t n = buf ? fread(buf, 1, (1 << 20) - 1, f) : 0;
    fclose(f);
    if (!buf)
        return;
    buf[n] = 0;
    cJSON *j = cJSON_Parse(buf);
    free(buf);
    if (!j)
        return;
    static const char *const keys[] = {"peft_type",
                                       "base_model_name_or_path",
                                       "r",
                                       "lora_alpha",
                                       "use_rslora",
                                       "target_modules",
                                       "exclude_modules",
                                       "layers_to_transform",
                                       "rank_pattern",
                                       "alpha_pattern",
                                       "bias",
                                       "use_dora",
                                       "modules_to_save",
                                       "fan_in_fan_out"};
    printf("adapter_config.json:\n");
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
        cJSON *v = cJSON_GetObjectItem(j, keys[i]);
        if (!v)
            continue;
        char *t = cJSON_PrintUnformatted(v);
        printf("  %-24s %.200s\n", keys[i], t ? t : "?");
        free(t);
    }
    cJSON_Delete(j);
}

/* Per module: which layers it targets and with which rank and scale. */
static void print_adapter(const adapter *a)
{
    char t[64];
    printf("adapter: %s, %s weights, %zu bytes, content hash %016llx\n",
           a->format == ADAPTER_PEFT ? "PEFT" : "GGUF-LoRA", core_type_name(a->dtype), a->bytes,
           (unsigned long long)a->hash);
    printf("  rank %d, alpha %g%s, targets %s, %d (layer, module) pairs\n", a->r, (double)a->alpha,
           a->rslora ? " (rsLoRA: scale alpha/sqrt(r))" : "",
           adapter_targets_str(a->targets, t, sizeof t), a->n_mods);
    for (int m = 0; m < CORE_MOD_COUNT; m++) {
        int n = 0, first = -1, last = -1, rmin = 1 << 30, rmax = 0;
        float smin = INFINITY, smax = -INFINITY;
        for (int l = 0; l < a->n_layer; l++) {
            const adapter_mod *am = adapter_mod_at(a, l, m);
            if (!am->rank)
                continue;
            n++;
            first = first < 0 ? l : first;
            last = l;
            rmin = am->rank < rmin ? am->rank : rmin;
            rmax = am->rank > rmax ? am->rank : rmax;
            smin = am->scale < smin ? am->scale : smin;
            smax = am->scale > smax ? am->scale : smax;
        }
        if (!n)
            continue;
        printf("  %-5s %2d layers (%d..%d), rank %d", core_module_name(m), n, first, last, rmin);
        if (rmax != rmin)
            printf("..%d", rmax);
        printf(", scale %g", (double)smin);
        if (smax != smin)
            printf("..%g", (double)smax);
        printf("\n");
    }
}

/* inspect on an adapter: its config, then validation against the base model. */
static int inspect_adapter(const char *path, const char *model)
{
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        print_peft_config(path);
    char err[512];
    core_gguf *g = core_gguf_open(model, err, sizeof err);
    if (!g) {
        fprintf(stderr, "inspect: base model %s: %s\n", model, err);
        return 1;
    }
    core_config cfg;
    int rc = core_config_from_gguf(g, &cfg, err, sizeof err);
    core_gguf_close(g);
    if (rc) {
        fprintf(stderr, "inspect: base model %s: %s\n", model, err);
        return 1;
    }
    adapter *a = adapter_load(path, &cfg, err, sizeof err);
    if (!a) {
        printf("validation against %s: FAILED: %s\n", model, err);
        return 1;
    }
    print_adapter(a);
    printf("validation against %s: ok\n", model);
    adapter_unref(a);
    return 0;
}

/* A directory, or a GGUF whose general.type is "adapter". */
static bool is_adapter(const char *path)
{
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        return true;
    char err[64], type[32] = "";
    core_gguf *g = core_gguf_open(path, err, sizeof err);
    if (g)
        core_gguf_get_str(g, "general.type", type, sizeof type);
    core_gguf_close(g);
    return !strcmp(type, "adapter");
}

int srv_cli_inspect(int argc, char **argv)
{
    const char *path = NULL, *model = SRV_DEFAULT_MODEL;
    bool full = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") || !strcmp(argv[i], "-m")) {
            if (++i == argc) {
                fprintf(stderr, "inspect: %s needs a value\n", argv[i - 1]);
                return 2;
            }
            model = argv[i];
        } else if (!strcmp(argv[i], "--full")) {
            full = true;
        } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            printf("usage: adaptree inspect [--full] MODEL.gguf\n"
                   "       adaptree inspect ADAPTER_DIR_OR_FILE [--model MODEL]\n"
                   "  a model: metadata, tensor types, the derived config and the BLAS core\n"
                   "  an adapter: its config, targets, ranks, bytes, and whether it is valid\n"
                   "  for MODEL (default " SRV_DEFAULT_MODEL "); exit status 1 when not\n"
                   "  --full  print long strings and arrays in full\n");
            return 0;
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "inspect: unknown option '%s'\n", argv[i]);
            return 2;
        } else {
            path = argv[i];
        }
    }
    if (!path) {
        fprintf(stderr, "usage: adaptree inspect [--full] MODEL.gguf | ADAPTER [--model MODEL]\n");
        return 2;
    }
    if (is_adapter(path))
        return inspect_adapter(path, model);
    char err[512];
    core_gguf *g = core_gguf_open(path, err, sizeof err);
    if (!g) {
        fprintf(stderr, "inspect: %s: %s\n", path, err);
        return 1;
    }
    printf("file: %s\n", path);
    core_gguf_print(g, stdout, full);
    int status = 0;
    core_config cfg;
    if (core_config_from_gguf(g, &cfg, err, sizeof err) == 0) {
        print_config(&cfg);
        core_tokenizer *tok = core_tokenizer_new(g, err, sizeof err);
        if (tok) {
            printf("tokenizer: %d tokens, bos %d, eos %d\n", core_tokenizer_n_vocab(tok),
                   core_tokenizer_bos(tok), core_tokenizer_eos(tok));
            core_tokenizer_free(tok);
        } else {
            printf("tokenizer: not usable: %s\n", err);
            status = 1;
        }
    } else {
        printf("model config: not loadable: %s\n", err);
        status = 1;
    }
    printf("openblas: core %s, %d threads\n", core_blas_corename(), core_blas_threads());
    char kernels[128];
    printf("linear layers: %s\n", core_matmul_kernels(kernels, sizeof kernels));
    core_gguf_close(g);
    return status;
}
