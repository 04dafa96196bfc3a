/* adaptree's side of tools/peer_numerics.py: evaluates one prompt's token ids with core_forward
 * (f32 activations, or int8 with --int8) and writes the last position's logits (with --all every
 * position's, in order) as little-endian float32.
 * usage: adaptree_logits [--int8] [--all] MODEL.gguf OUT.f32 ID... */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/kernels/blas.h"
#include "core/model/model.h"

int main(int argc, char **argv)
{
    char err[256] = "";
    core_blas_ensure_kernel(argc, argv, err, sizeof err);
    int a = 1, int8 = 0, all = 0;
    for (; a < argc && argv[a][0] == '-' && argv[a][1] == '-'; a++) {
        if (!strcmp(argv[a], "--int8"))
            int8 = 1;
        else if (!strcmp(argv[a], "--all"))
            all = 1;
        else
            break;
    }
    if (argc - a < 3) {
        fprintf(stderr, "usage: adaptree_logits [--int8] [--all] MODEL.gguf OUT.f32 ID...\n");
        return 2;
    }
    int n = argc - a - 2;
    int32_t *tok = malloc((size_t)n * sizeof *tok), *pos = malloc((size_t)n * sizeof *pos),
            *slot = calloc((size_t)n, sizeof *slot);
    uint8_t *want = calloc((size_t)n, 1);
    for (int i = 0; i < n; i++) {
        tok[i] = (int32_t)atoi(argv[a + 2 + i]);
        pos[i] = i;
        want[i] = all || i == n - 1;
    }
    core_model *m = core_model_load(argv[a], err, sizeof err);
    if (!m || (int8 && core_model_set_int8(m, 1, err, sizeof err) < 0)) {
        fprintf(stderr, "adaptree_logits: %s\n", err);
        return 1;
    }
    core_ctx *c = core_ctx_new(m);
    core_kv *kv = core_kv_new(&m->cfg, 1, n < 16 ? 16 : n, err, sizeof err);
    size_t rows = all ? (size_t)n : 1;
    float *lg = malloc(rows * (size_t)m->cfg.n_vocab * sizeof *lg);
    core_batch b = {.n_rows = n, .tokens = tok, .pos = pos, .slot = slot, .want_logits = want};
    if (!c || !kv || !lg || core_forward(c, kv, &b, NULL, lg, err, sizeof err) != 0) {
        fprintf(stderr, "adaptree_logits: %s\n", err[0] ? err : "out of memory");
        return 1;
    }
    FILE *f = fopen(argv[a + 1], "wb");
    size_t nv = rows * (size_t)m->cfg.n_vocab;
    if (!f || fwrite(lg, sizeof(float), nv, f) != nv || fclose(f) != 0) {
        fprintf(stderr, "adaptree_logits: cannot write %s\n", argv[a + 1]);
        return 1;
    }
    free(lg);
    core_kv_free(kv);
    core_ctx_free(c);
    core_model_free(m);
    free(tok);
    free(pos);
    free(slot);
    free(want);
    return 0;
}
