/* Internals shared by the files of adapters/, for them and their unit tests and fuzz targets
 * only: the public API is adapter.h (and registry.h, compose.h, merge.h).
 *
 * Layout. Each file uses only files listed below it:
 *
 *   merge.c        merge-export of a selection into a GGUF model
 *   registry.c     the tree of adapters, residency, versions; which files make a node comes from
 *                  the loader table
 *   compose.c      lora sets and plans over loaded adapters
 *   loaders.c      the loader table; adapter_load / adapter_probe and their _beneath forms find
 *                  the format by walking it, then call that row's load or probe
 *   peft.c         PEFT LoRA, adapter__loader_peft (adapter_config.json + safetensors)
 *   gguf_lora.c    GGUF-LoRA, adapter__loader_gguf (a .gguf file, or adapter.gguf in a directory)
 *   peft_config.c  adapter_config.json parsed and its targets worked out, for peft.c
 *   adapter.c      the adapter object: allocation, references, the row copy, the content hash
 *   adapter_io.c   adapter files: the confined open, whole and partial reads
 *
 * Adding a format: one new file that defines its `const adapter__loader` row (its marker and
 * weight files, its single-file suffix, its load and its probe), and one row in the table in
 * loaders.c (with the row's extern line in this header). Nothing else names a format: the
 * dispatch, the "no adapter here" messages and the registry's listing all walk the table.
 */
#ifndef ADAPTREE_ADAPTERS_ADAPTER_INTERNAL_H
#define ADAPTREE_ADAPTERS_ADAPTER_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#include "adapters/adapter.h"
#include "core/model/model.h"

/* The internals that take a root open files the same way: root NULL opens path as given (the
 * command line), else root is a real path (realpath's form), path is relative to it and a file is
 * opened only beneath it (adapter_io.c, "Confinement"). Messages name path, never root. */

/* ---- the loader table (loaders.c) ---------------------------------------------------------- */

/* One adapter format: how to recognise it and how to load and probe it. Rows are immutable
 * constants; any thread may read them. */
typedef struct adapter__loader {
    const char *name;      /* "PEFT", "GGUF-LoRA" */
    adapter_format format; /* what its loads and probes report */
    /* Detection. A directory holds an adapter of this format when its marker file is there
     * (beneath the root, for the registry); a regular file is one when its name ends in suffix
     * (NULL: the format has no single-file form). The table's order decides between formats. */
    const char *marker;
    /* The weight file beside the marker (the marker itself for a one-file format). The registry
     * lists a directory whose marker leads out of the root as no adapter of this format, unless
     * the marker is the weight file: a weight file that leads out makes a failed node. */
    const char *weights;
    /* A file the load looks for when the weight file is missing, only to say why it is refused
     * (PEFT's adapter_model.bin); it counts in the registry's file signature. NULL: none. */
    const char *weights_alt;
    const char *suffix; /* ".gguf" (see Detection above), or NULL */
    /* load and probe are given the directory (true) or the marker file in it (false); for a
     * single file they are given the file. */
    bool loads_dir;
    /* The load and the probe behind adapter_load / adapter_probe and their _beneath forms: they
     * return as those do; path is relative to root when root is set. */
    adapter *(*load)(const char *root, const char *path, const core_config *cfg, char *err,
                     size_t errlen);
    int (*probe)(const char *root, const char *path, const core_config *cfg,
                 adapter_probe_info *out, char *err, size_t errlen);
} adapter__loader;

/* Every format, in the order detection tries them, NULL-terminated (loaders.c). */
extern const adapter__loader *const adapter__loaders[];

/* The rows, each defined by its format's file; only the table in loaders.c names them (everyone
 * else walks adapter__loaders). */
extern const adapter__loader adapter__loader_peft; /* peft.c */
extern const adapter__loader adapter__loader_gguf; /* gguf_lora.c */

/* Parses and checks an adapter_config.json text and works out its targets, without weights: 0,
 * or -EINVAL with a message. (For the fuzzer; the targeted modules then have no weights, so a
 * valid config with targets still fails with "no lora_A weight".) peft.c. */
int adapter__peft_config_check(const char *json, size_t len, const core_config *cfg, char *err,
                               size_t errlen);

/* ---- the adapter object (adapter.c) -------------------------------------------------------- */

/* Allocates an adapter with room for slab_bytes of weights and n_layer * CORE_MOD_COUNT entries,
 * with one reference (the caller's), or NULL when out of memory. */
adapter *adapter__new(int n_layer, uint32_t dtype, size_t slab_bytes);
/* Copies a (rows, row_len) tensor (src in dtype, possibly unaligned) into dst, in the same
 * dtype, rejecting NaN/Inf. When perm_heads > 0 the rows are moved from Hugging Face order to the
 * GGUF q/k order for heads of head_dim rows. With transpose, dst is (row_len, rows): the
 * (permuted) tensor transposed. Returns 0 or -EINVAL. */
int adapter__copy_rows(uint32_t dtype, const void *src, void *dst, size_t rows, size_t row_len,
                       int perm_heads, int head_dim, bool transpose);

/* The output rows of the Linear whose first module is first: core_module_out, or for a fused
 * tensor (Phi-3's qkv_proj, gate_up_proj; core_module_span) the sum over its modules. */
int adapter__unit_out(const core_config *cfg, int first);
/* Puts one LoRA pair of layer's Linear whose first module is first into a's slab at *at
 * (advanced): A (rank, in) once, then each module's rows of B (adapter__unit_out rows, rank),
 * transposed into its Bt; every module of the Linear gets an entry (rank, scale, the shared A,
 * its Bt) and its bit in a->targets. A fused Linear thus becomes one LoRA per module, with the
 * same A and its rows of B: the forward pass never sees the fusion. A and B are in a->dtype;
 * hf_rows: B's rows are Hugging Face's, and Llama's q/k rows move to the GGUF order. 0, or
 * -EINVAL on a non-finite value (*bad = "lora_A" or "lora_B"). */
int adapter__put_pair(adapter *a, const core_config *cfg, int layer, int first, int rank,
                      float scale, const void *A, const void *B, bool hf_rows, unsigned char **at,
                      const char **bad);

/* ---- adapter files (adapter_io.c) ---------------------------------------------------------- */

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
/* Is path there: 0, -EXDEV when it leads out of root, another negative errno when it is not
 * there (beneath root when set, else as given). */
int adapter__find_file(const char *root, const char *path);
/* Does path exist (beneath root, when set: a symlink leading out does not count)? */
bool adapter__file_exists(const char *root, const char *path);
/* Stats path (beneath root when set; symlinks followed) into *st: 0, or a negative errno with a
 * message naming path (-EXDEV: "path: symlink leaves the registry root"). */
int adapter__stat_at(const char *root, const char *path, struct stat *st, char *err, size_t errlen);
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

#endif
