/* libFuzzer target: adapter_config.json parsing and target resolution (lists, regexes,
 * patterns, layers) against SmolLM2's shapes. Every refusal must come with a message. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/adapter_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    core_config cfg = {.n_layer = 30,
                       .n_embd = 576,
                       .n_head = 9,
                       .n_head_kv = 3,
                       .head_dim = 64,
                       .n_ff = 1536,
                       .n_vocab = 49152,
                       .rope_dim = 64,
                       .permuted_qk = true};
    strcpy(cfg.arch, "llama");
    char err[512] = "";
    int rc = adapter__peft_config_check((const char *)data, size, &cfg, err, sizeof err);
    if (rc != 0 && err[0] == 0)
        abort();
    return 0;
}
