/* `adaptree inspect`: what a GGUF holds (metadata, tensor types), the model configuration
 * adaptree derives from it, and the OpenBLAS core in use. Exit status 1 when it cannot be
 * loaded as a model. */
#include <stdio.h>
#include <string.h>

#include "core/blas.h"
#include "core/gguf.h"
#include "core/model.h"
#include "core/tokenizer.h"
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
}

int srv_cli_inspect(int argc, char **argv)
{
    const char *path = NULL;
    bool full = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--full")) {
            full = true;
        } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            printf("usage: adaptree inspect [--full] MODEL.gguf\n"
                   "  prints metadata, tensor types, the derived model config and the BLAS core\n"
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
        fprintf(stderr, "usage: adaptree inspect [--full] MODEL.gguf\n");
        return 2;
    }
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
    core_gguf_close(g);
    return status;
}
