/* One LoRA adapter, loaded from a PEFT directory or a GGUF-LoRA file and validated against a
 * base model, in the form the forward pass reads (DESIGN.md §3):
 *
 *   for every (layer, module) it targets: A (rank, in), Bt = Bᵀ (rank, out) and a scale
 *   (lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA, after rank_pattern/alpha_pattern).
 *
 * All weights live in one slab in the dtype the file stored (f32, f16 or bf16), q/k lora_B rows
 * already in the base GGUF's row order (FORMATS.md §2.6). An adapter is immutable once loaded and
 * may be read from any thread; its lifetime is managed by reference counts (adapter_ref /
 * adapter_unref), which are atomic.
 */
#ifndef ADAPTREE_ADAPTERS_ADAPTER_H
#define ADAPTREE_ADAPTERS_ADAPTER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/model.h"

/* The low-rank update of one (layer, module); rank 0 = not targeted. */
typedef struct adapter_mod {
    int rank;
    float scale;   /* alpha / rank (or alpha / sqrt(rank)); the user weight multiplies it */
    const void *A; /* (rank, in) */
    const void *Bt; /* (rank, out): lora_B transposed, so the decode kernels stream it */
} adapter_mod;

typedef enum adapter_format { ADAPTER_PEFT = 1, ADAPTER_GGUF = 2 } adapter_format;

typedef struct adapter {
    adapter_format format;
    uint32_t dtype; /* CORE_TYPE_F32, CORE_TYPE_F16 or CORE_TYPE_BF16 */
    int n_layer;
    adapter_mod *mods; /* (n_layer * CORE_MOD_COUNT), index layer * CORE_MOD_COUNT + module */
    void *slab;        /* every A and Bt */
    size_t bytes;      /* weight bytes (the slab) */
    uint64_t hash;     /* content hash of the files it was loaded from */
    /* summary for listings */
    int r;       /* the config's default rank (max rank for GGUF) */
    float alpha; /* the config's default alpha */
    bool rslora;
    unsigned targets;     /* bit per core_module targeted in at least one layer */
    int n_mods;           /* (layer, module) pairs targeted */
    char base_model[128]; /* base_model_name_or_path / general.name, informational */
    atomic_int refs;
} adapter;

/* Loads an adapter: a directory holding adapter_config.json + adapter_model.safetensors (PEFT),
 * a directory holding adapter.gguf, or a .gguf file. Everything is validated against cfg
 * (architecture, layer count, every shape, supported options, finite values) before the weights
 * are copied. Returns a new adapter with one reference, or NULL with a message in err that names
 * the offending field, tensor or value. Any thread. */
adapter *adapter_load(const char *path, const core_config *cfg, char *err, size_t errlen);

/* The two loaders behind adapter_load. */
adapter *adapter_load_peft(const char *dir, const core_config *cfg, char *err, size_t errlen);
adapter *adapter_load_gguf(const char *file, const core_config *cfg, char *err, size_t errlen);

adapter *adapter_ref(adapter *a);
/* Drops a reference; frees the adapter when it was the last. NULL is ignored. */
void adapter_unref(adapter *a);

/* The (layer, module) entry. */
static inline const adapter_mod *adapter_mod_at(const adapter *a, int layer, int mod)
{
    return &a->mods[layer * CORE_MOD_COUNT + mod];
}

/* Renders the targeted modules as "q,v" into buf. */
const char *adapter_targets_str(unsigned targets, char *buf, size_t cap);

/* ---- internals shared by the loaders (adapters/ only) -------------------------------------- */

/* Allocates an adapter with room for slab_bytes of weights and n_layer * CORE_MOD_COUNT entries. */
adapter *adapter__new(int n_layer, uint32_t dtype, size_t slab_bytes);
/* Copies a (rows, row_len) tensor (src in dtype, possibly unaligned) into dst, in the same
 * dtype, rejecting NaN/Inf. When perm_heads > 0 the rows are moved from Hugging Face order to the
 * GGUF q/k order for heads of head_dim rows. With transpose, dst is (row_len, rows): the
 * (permuted) tensor transposed. Returns 0 or -EINVAL. */
int adapter__copy_rows(uint32_t dtype, const void *src, void *dst, size_t rows, size_t row_len,
                       int perm_heads, int head_dim, bool transpose);
/* Parses and checks an adapter_config.json text and works out its targets, without weights: 0,
 * or -EINVAL with a message. (For the fuzzer; the targeted modules then have no weights, so a
 * valid config with targets still fails with "no lora_A weight".) */
int adapter__peft_config_check(const char *json, size_t len, const core_config *cfg, char *err,
                               size_t errlen);
/* FNV-1a 64 over a buffer, chained through h (start with ADAPTER_HASH_INIT). */
#define ADAPTER_HASH_INIT 0xcbf29ce484222325ULL
uint64_t adapter__hash(uint64_t h, const void *buf, size_t n);

#endif
