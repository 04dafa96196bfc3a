/* The peer's numerics for `make bench-peer`: llama.cpp (the build of tools/build_llamacpp.sh)
 * evaluates one prompt's token ids and writes the last position's logits as little-endian
 * float32, to compare with the transformers fixtures (tools/peer_numerics.py).
 * usage: llamacpp_logits MODEL.gguf OUT.f32 ID... */
#include <stdio.h>
#include <stdlib.h>

#include "llama.h"

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: llamacpp_logits MODEL.gguf OUT.f32 ID...\n");
        return 2;
    }
    int n = argc - 3;
    llama_token *ids = malloc((size_t)n * sizeof *ids);
    for (int i = 0; i < n; i++)
        ids[i] = (llama_token)atoi(argv[3 + i]);
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
    if (!c || llama_decode(c, llama_batch_get_one(ids, n)) != 0) {
        fprintf(stderr, "llamacpp_logits: decode failed\n");
        return 1;
    }
    int nv = llama_vocab_n_tokens(llama_model_get_vocab(m));
    const float *lg = llama_get_logits_ith(c, -1);
    FILE *f = fopen(argv[2], "wb");
    if (!f || fwrite(lg, sizeof(float), (size_t)nv, f) != (size_t)nv || fclose(f) != 0) {
        fprintf(stderr, "llamacpp_logits: cannot write %s\n", argv[2]);
        return 1;
    }
    llama_free(c);
    llama_model_free(m);
    llama_backend_free();
    free(ids);
    return 0;
}
