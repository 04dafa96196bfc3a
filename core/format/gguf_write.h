/* GGUF v3 writer: collect metadata key/values and tensors, then write one file
 * (docs/FORMATS.md §2).
 *
 * Metadata is copied into the writer when it is set; tensor data is borrowed and read only by
 * core_gguf_writer_write. Everything the writer accepts is something core_gguf_open (and ggml's
 * strict reader) accepts back: keys of 1..65535 bytes, well-formed arrays nested at most four
 * deep, tensor names of 1..64 bytes, 1..4 dimensions, sizes that match the type, a power-of-two
 * general.alignment. Tensors are laid out in the order they were added, each at the running
 * offset padded to the alignment, as ggml's reader requires.
 *
 * A writer belongs to one thread at a time. Little-endian hosts only (as the reader).
 */
#ifndef ADAPTREE_CORE_FORMAT_GGUF_WRITE_H
#define ADAPTREE_CORE_FORMAT_GGUF_WRITE_H

#include <stddef.h>
#include <stdint.h>

#include "core/format/gguf.h"

typedef struct core_gguf_writer core_gguf_writer;

/* A new empty writer: no keys, no tensors, alignment 32 until general.alignment is set. Owned by
 * the caller (free with core_gguf_writer_free); NULL when out of memory. */
core_gguf_writer *core_gguf_writer_new(void);
/* Frees the writer and its copies of the metadata; NULL is ignored. */
void core_gguf_writer_free(core_gguf_writer *w);

/* Sets a key to a value in the form the reader returns it (core_gguf_kv): scalars from v.u, v.i,
 * v.f or v.b as the type says, a string from v.s, an array from its element type, count and
 * encoded elements (v.arr.type, v.arr.n, v.arr.data, v.arr.bytes), which are checked. So a kv of
 * an open core_gguf copies as-is; key and value are copied and need not outlive the call. A key
 * that is already set is replaced where it stands, so metadata keeps its order. Returns 0,
 * -EINVAL with a message for a bad key, type or encoding (also for a general.alignment that is
 * not a power-of-two integer up to 2^30), or -ENOMEM. */
int core_gguf_writer_set_kv(core_gguf_writer *w, const core_gguf_kv *kv, char *err, size_t errlen);

/* Typed shorthands for core_gguf_writer_set_kv. key and the strings are copied. */
int core_gguf_writer_set_u32(core_gguf_writer *w, const char *key, uint32_t v, char *err,
                             size_t errlen);
int core_gguf_writer_set_f32(core_gguf_writer *w, const char *key, float v, char *err,
                             size_t errlen);
int core_gguf_writer_set_str(core_gguf_writer *w, const char *key, const char *v, char *err,
                             size_t errlen);
/* An array of n NUL-terminated strings. */
int core_gguf_writer_set_str_array(core_gguf_writer *w, const char *key, const char *const *v,
                                   size_t n, char *err, size_t errlen);

/* Number of keys set so far. */
size_t core_gguf_writer_n_kv(const core_gguf_writer *w);

/* Appends a tensor: name, ggml type (quant.h), n_dims (1..4) extents ne[0..n_dims-1] (ne[0]
 * fastest-varying, a multiple of the type's block size) and its data, size bytes. data is
 * borrowed: it must stay valid and unchanged until the last core_gguf_writer_write. Returns 0,
 * -EINVAL with a message (bad or duplicate name, unknown type, bad shape, size that does not
 * match the shape) or -ENOMEM. */
int core_gguf_writer_add_tensor(core_gguf_writer *w, const char *name, uint32_t type,
                                uint32_t n_dims, const uint64_t *ne, const void *data,
                                uint64_t size, char *err, size_t errlen);

/* Bytes the file will have: header, metadata, tensor infos, padding and data. */
uint64_t core_gguf_writer_file_size(const core_gguf_writer *w);

/* Writes the file: first to "<path>.tmp" (replaced if it exists), which is flushed to disk with
 * fsync and then renamed to path, so path either keeps what it held before or holds the whole
 * new file. On failure the temporary file is removed and a negative errno is returned (-ENOSPC,
 * -EIO, -EACCES, ...) with a message naming the file and the failing step. The writer is not
 * changed; it may be written again. */
int core_gguf_writer_write(const core_gguf_writer *w, const char *path, char *err, size_t errlen);

#endif
