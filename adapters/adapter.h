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

/* The internals below that take a root open files the same way: root NULL opens path as given
 * (the command line), else root is a real path (realpath's form), path is relative to it and a
 * file is opened only beneath it (adapter.c, "Confinement"). Messages name path, never root. */

/* The loaders and probes behind adapter_load/adapter_probe and their _beneath forms (a PEFT
 * directory, a GGUF-LoRA file). */
adapter *adapter__load_peft(const char *root, const char *dir, const core_config *cfg, char *err,
                            size_t errlen);
adapter *adapter__load_gguf(const char *root, const char *file, const core_config *cfg, char *err,
                            size_t errlen);
int adapter__probe_peft(const char *root, const char *dir, const core_config *cfg,
                        adapter_probe_info *out, char *err, size_t errlen);
int adapter__probe_gguf(const char *root, const char *file, const core_config *cfg,
                        adapter_probe_info *out, char *err, size_t errlen);
/* How messages say that a file leads out of the root ("fr/adapter.gguf: " ADAPTER__ESCAPES). */
#define ADAPTER__ESCAPES "symlink leaves the registry root"
/* Resolves path (absolute, or relative to the working directory) with realpath into real
 * (PATH_MAX bytes): 0 when it is root or lies beneath it (root a real path), -EXDEV when it
 * leads out, another negative errno (-ENOENT: missing or a dangling symlink) from realpath. The
 * one rule for directories and files, at listing and at open. real is written only on 0. */
int adapter__resolve_beneath(const char *root, const char *path, char *real);
/* Checks where the file open as fd actually lies (/proc/self/fd): 0 beneath root, -EXDEV
 * outside it ("name: symlink leaves the registry root"), -EACCES when that cannot be read (fails
 * closed). What makes a confined open race-free. */
int adapter__fd_beneath(int fd, const char *root, const char *name, char *err, size_t errlen);
/* Does path exist (beneath root, when set: a symlink leading out does not count)? */
bool adapter__file_exists(const char *root, const char *path);
/* Adapter files: read with pread, never mapped (see adapter.c). Larger files are refused. */
#define ADAPTER_FILE_MAX (4ull << 30)
/* Opens a regular file of at most ADAPTER_FILE_MAX bytes for reading, without blocking (a FIFO is
 * refused): the descriptor (the caller closes it) with its size in *size, or a negative errno
 * with a message in err. */
int adapter__file_open(const char *root, const char *path, uint64_t *size, char *err,
                       size_t errlen);
/* Reads bytes [off, off + n) of fd into buf: 0, -EAGAIN with "file changed while reading, will
 * retry" when the file ends first, or another negative errno; messages name path. */
int adapter__file_read(int fd, const char *path, void *buf, size_t n, uint64_t off, char *err,
                       size_t errlen);
/* Grows *buf (malloc'd, or NULL) to want bytes and reads bytes [*have, want) of fd into it;
 * *have = want on success. 0 or a negative errno as adapter__file_read. */
int adapter__read_more(int fd, const char *path, unsigned char **buf, size_t *have, size_t want,
                       char *err, size_t errlen);
/* Reads the whole file at path into *out (malloc'd; the caller frees it), *len bytes: 0, or a
 * negative errno with a message: -EAGAIN "file changed while reading, will retry" when the file
 * ends early, goes on past its size or is modified while it is read; -EFBIG over
 * ADAPTER_FILE_MAX. */
int adapter__read_file(const char *root, const char *path, void **out, size_t *len, char *err,
                       size_t errlen);
/* The read behind adapter__read_file over an open descriptor of a file that had size bytes when
 * it was stat'ed: the file must hold exactly that many (tests give a wrong size to play a file
 * that changed between the stat and the read). */
int adapter__read_fd(int fd, const char *path, uint64_t size, void **out, size_t *len, char *err,
                     size_t errlen);
/* FNV-1a 64 over a buffer, chained through h (start with ADAPTER_HASH_INIT). */
#define ADAPTER_HASH_INIT 0xcbf29ce484222325ULL
uint64_t adapter__hash(uint64_t h, const void *buf, size_t n);

#endif
