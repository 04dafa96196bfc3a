/* Test helpers: write PEFT adapter directories (adapter_config.json + a real safetensors file)
 * with deterministic pseudo-random weights, for a small Llama-shaped config. */
#ifndef ADAPTREE_TEST_ADAPTER_UTIL_H
#define ADAPTREE_TEST_ADAPTER_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "core/model/model.h"

/* SmolLM2's shapes with 2 layers (no weights needed to validate adapters). */
core_config tu_config(void);

typedef struct tu_tensor {
    char name[160];
    const char *dtype; /* "F32", "F16", "BF16" */
    int rows, cols;
    const float *values; /* rows*cols, or NULL for pseudo-random values */
} tu_tensor;

/* Writes a safetensors file; 0 or -1. */
int tu_write_safetensors(const char *path, const tu_tensor *t, int n);

/* Writes dir/adapter_config.json (text as given) and dir/adapter_model.safetensors with A/B
 * tensors for the (layer, module) pairs in mask (bit layer*7+module), rank r, dtype. Creates dir.
 * seed varies the values. Returns 0 or -1. */
int tu_write_peft(const char *dir, const char *config_json, const core_config *cfg, uint64_t mask,
                  int r, const char *dtype, uint32_t seed);

/* The same for every layer of the modules in the bit mask (bit = core_module). */
int tu_write_peft_layers(const char *dir, const char *config_json, const core_config *cfg,
                         unsigned modules, int r, const char *dtype, uint32_t seed);

/* The HF module name of a core module ("q_proj", ...) and its block ("self_attn"/"mlp"). */
const char *tu_hf_name(int mod);

/* Reads a tensor of a safetensors file as f32 (n elements expected); 0 or -1. */
int tu_read_st_tensor(const char *path, const char *name, float *out, size_t n);

/* mkdir -p */
int tu_mkdirs(const char *path);
/* rm -rf of a test directory under /tmp */
void tu_rmrf(const char *path);
/* A fresh empty directory /tmp/adaptree-test-XXXXXX; returns a static buffer. */
const char *tu_tmpdir(void);

#endif
