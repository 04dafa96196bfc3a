/* One LoRA adapter, loaded from a PEFT directory or a GGUF-LoRA file and validated against a
 * base model, in the form the forward pass reads (docs/ARCHITECTURE.md §3):
 *
 *   for every (layer, module) it targets: A (rank, in), Bt = Bᵀ (rank, out) and a scale
 *   (lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA, after rank_pattern/alpha_pattern).
 *
 * All weights live in one slab in the dtype the file stored (f32, f16 or bf16), q/k lora_B rows
 * already in the base GGUF's row order (docs/FORMATS.md §2.6). An adapter is immutable once loaded
 * and may be read from any thread; its lifetime is managed by reference counts (adapter_ref /
 * adapter_unref), which are atomic.
 *
 * This header is the public API. The files behind it (the object, file reading, one file per
 * format, the loader table) and how a format is added are described in adapter_internal.h.
 */
#ifndef ADAPTREE_ADAPTERS_ADAPTER_H
#define ADAPTREE_ADAPTERS_ADAPTER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/model/model.h"

/* The low-rank update of one (layer, module); rank 0 = not targeted. */
typedef struct adapter_mod {
    int rank;
    float scale;    /* alpha / rank (or alpha / sqrt(rank)); the user weight multiplies it */
    const void *A;  /* (rank, in) */
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

/* Adapter files are read with pread, never mapped; larger ones are refused. */
#define ADAPTER_FILE_MAX (4ull << 30)

/* Loads an adapter: a directory holding adapter_config.json + adapter_model.safetensors (PEFT),
 * a directory holding adapter.gguf, or a .gguf file. Everything is validated against cfg
 * (architecture, layer count, every shape, supported options, finite values) before the weights
 * are copied. The files are read into memory (never mapped), so one overwritten while it is read
 * fails the load ("file changed while reading, will retry") instead of crashing the process;
 * files over ADAPTER_FILE_MAX are refused. Returns a new adapter with one reference, or NULL with
 * a message in err that names the offending field, tensor or value. Any thread. */
adapter *adapter_load(const char *path, const core_config *cfg, char *err, size_t errlen);

/* adapter_load confined to a directory tree, for the registry: rel names the adapter relative to
 * root (a node id such as "fr/legal"). Every file the load reads must resolve, symlinks followed,
 * beneath root's real path, both when it is looked up and in the descriptor actually opened, so a
 * file swapped for a symlink meanwhile cannot lead out either; a file that leaves the root is
 * refused unread ("fr/adapter_model.safetensors: symlink leaves the registry root", -EXDEV
 * inside). Messages name files relative to root ("fr/adapter_model.safetensors: not a regular
 * file"), never by an absolute path, so they may be shown to API clients. Files are opened
 * without blocking (a FIFO is refused, not waited on). root and rel are borrowed for the call;
 * rel "" is the root itself. Verifying a descriptor reads /proc/self/fd (Linux): without it every
 * load is refused. Returns as adapter_load. Any thread. */
adapter *adapter_load_beneath(const char *root, const char *rel, const core_config *cfg, char *err,
                              size_t errlen);

/* The two loaders behind adapter_load (unconfined, messages name the path given). */
adapter *adapter_load_peft(const char *dir, const core_config *cfg, char *err, size_t errlen);
adapter *adapter_load_gguf(const char *file, const core_config *cfg, char *err, size_t errlen);

/* What an adapter's files say it is, worked out without loading its weights (adapter_probe). */
typedef struct adapter_probe_info {
    adapter_format format;
    uint32_t dtype; /* the slab's: CORE_TYPE_F32, CORE_TYPE_F16 or CORE_TYPE_BF16 */
    int r;          /* as adapter.r */
    float alpha;    /* as adapter.alpha */
    bool rslora;
    unsigned targets; /* as adapter.targets */
    int n_mods;
    size_t bytes; /* the slab a load allocates: adapter.bytes once loaded */
} adapter_probe_info;

/* Describes the adapter at path (the forms adapter_load takes) from its config and the headers
 * of its weight files, checked as adapter_load checks them except for the weight values: every
 * adapter that adapter_load accepts is described, with the r, alpha, rslora, targets, n_mods,
 * dtype and bytes the loaded adapter will have. Only the weight files' headers are read (with
 * pread, never mapped); nothing of the weights' size is allocated. Returns 0, or a negative errno
 * with a message in err and *out zeroed (the load would fail too, unless the files change).
 * Any thread. */
int adapter_probe(const char *path, const core_config *cfg, adapter_probe_info *out, char *err,
                  size_t errlen);
/* adapter_probe confined to root as adapter_load_beneath is (the same rules, messages and
 * lifetimes). Any thread. */
int adapter_probe_beneath(const char *root, const char *rel, const core_config *cfg,
                          adapter_probe_info *out, char *err, size_t errlen);

/* Takes a reference to a (NULL is ignored) and returns it. Any thread. */
adapter *adapter_ref(adapter *a);
/* Drops a reference; frees the adapter when it was the last. NULL is ignored. Any thread. */
void adapter_unref(adapter *a);

/* The (layer, module) entry. */
static inline const adapter_mod *adapter_mod_at(const adapter *a, int layer, int mod)
{
    return &a->mods[layer * CORE_MOD_COUNT + mod];
}

/* Renders the targeted modules as "q,v" into buf. */
const char *adapter_targets_str(unsigned targets, char *buf, size_t cap);

#endif
