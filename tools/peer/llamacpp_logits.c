/* The peer's numerics for `make bench-peer`: llama.cpp (the build of tools/build_llamacpp.sh)
 * evaluates one prompt's token ids and writes the last position's logits (with --all every
 * position's, in order) as little-endian float32, to compare with the transformers fixtures
 * (tools/peer_numerics.py).
 * usage: llamacpp_logits [--all] MODEL.gguf OUT.f32 ID... */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"

int main(int argc, char **argv)
{
    int all = argc > 1 && !strcmp(argv[1], "--all");
    argc -= all;
    argv += all;
    if (argc < 4) {
        fprintf(stderr, "usage: llamacpp_logits [--all] MODEL.gguf OUT.f32 ID...\n");
        return 2;
    }
    int n = argc - 3;
    struct llama_batch batch = llama_batch_init(n, 0, 1);
    for (int i = 0; i < n; i++) {
        batch.token[i] = (llama_token)atoi(argv[3 + i]);
        batch.pos[i] = i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = (int8_t)(all || i == n - 1);
    }
    batch.n_tokens = n;
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    struct llama_model *m = llama_model_load_from_file(argv[1], mp);
    if (!m) {
        fprintf(stderr, "llamacpp_logits: cannot load %s\n", argv[1]);
        return 1;
    }
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 512;
    cp.n_batch = 512;
    cp.n_threads = cp.n_threads_batch = 2;
    struct llama_context *c = llama_init_from_model(m, cp);
    if (!c || llama_decode(c, batch) != 0) {
        fprintf(stderr, "llamacpp_logits: decode failed\n");
        return 1;
    }
    int nv = llama_vocab_n_tokens(llama_model_get_vocab(m));
    FILE *f = fopen(argv[2], "wb");
    for (int i = all ? 0 : n - 1; f && i < n; i++) {
        const float *lg = llama_get_logits_ith(c, i);
        if (!lg || fwrite(lg, sizeof(float), (size_t)nv, f) != (size_t)nv) {
            fclose(f);
            f = NULL;
        }
    }
    if (!f || fclose(f) != 0) {
        fprintf(stderr, "llamacpp_logits: cannot write %s\n", argv[2]);
        return 1;
    }
    llama_free(c);
    llama_model_free(m);
    llama_backend_free();
    llama_batch_free(batch);
    return 0;
}
