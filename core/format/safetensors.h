/* safetensors reader: the tensor table and metadata of a .safetensors file (docs/FORMATS.md §5).
 *
 * The file is mmapped read-only (or a caller buffer is borrowed) and validated completely
 * before anything is returned (core_st_open_header validates all but the data, from the header
 * alone): the header length, the JSON header (parsed by a strict parser
 * that accepts only the shape a safetensors header can have), every dtype, shape and
 * data_offsets pair, and the layout of the body (tensors cover it exactly, without holes or
 * overlaps). A corrupt or truncated file yields a message naming what is wrong and where,
 * never a crash. Tensor data points into the mapping; names and metadata are decoded copies
 * owned by the core_st object. Stricter than the reference implementation where the C API
 * needs it or the format gives no use: unknown keys in a tensor entry, more than 8 dimensions,
 * sub-byte dtypes (F4, F6_*), duplicate names or keys, and escaped NUL characters in strings
 * are rejected. Nothing here is thread-affine: distinct objects may be used from distinct
 * threads, and a finished object may be read from several threads at once.
 */
#ifndef ADAPTREE_CORE_FORMAT_SAFETENSORS_H
#define ADAPTREE_CORE_FORMAT_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* dtype of a tensor whose dtype string is valid but that core cannot convert (F64, I32, ...). */
#define CORE_ST_OTHER 0xffffffffu

#define CORE_ST_MAX_DIMS 8

/* Largest header the reader accepts, as in the reference implementation. */
#define CORE_ST_MAX_HEADER 100000000u

typedef struct core_st_tensor {
    char *name;          /* decoded UTF-8, NUL-terminated, no embedded NUL */
    uint32_t dtype;      /* CORE_TYPE_F32/F16/BF16 (core/format/types.h) or CORE_ST_OTHER */
    char dtype_name[16]; /* the dtype string as written: "F32", "BF16", "I64", ... */
    int n_dims;          /* 0 for a scalar */
    uint64_t shape[CORE_ST_MAX_DIMS]; /* row-major, shape[0] slowest; unused dims are 0 */
    uint64_t nbytes;                  /* END - BEGIN == numel * element size; may be 0 */
    const void *data; /* in the mapping; not aligned; NULL only after core_st_open_header */
    uint64_t offset;  /* BEGIN, relative to the start of the body */
} core_st_tensor;

typedef struct core_st {
    size_t n_tensors;
    core_st_tensor *tensors; /* (n_tensors), in header order */
    size_t n_meta;           /* entries of "__metadata__", in header order */
    char **meta_keys;        /* (n_meta) decoded UTF-8, NUL-terminated */
    char **meta_vals;        /* (n_meta) */
    const uint8_t *base;     /* the whole file (core_st_open_header: the bytes it was given) */
    size_t size;
    bool mapped; /* base is our mmap (unmapped on close) */
} core_st;

/* Opens, maps and fully validates a safetensors file. Returns a new object owned by the
 * caller (free with core_st_close), or NULL with a message in err (err may be NULL). */
core_st *core_st_open(const char *path, char *err, size_t errlen);

/* Same over a caller buffer, which is borrowed: it must stay unchanged and alive until
 * core_st_close. */
core_st *core_st_open_memory(const void *buf, size_t len, char *err, size_t errlen);

/* Validates a safetensors file of file_size bytes from its first len bytes (buf, borrowed as
 * by core_st_open_memory), without its data: the header length, the header and every tensor's
 * data_offsets and the layout of the body against file_size, exactly as core_st_open_memory
 * checks the whole file, so the one accepts what the other accepts. Every tensor's data is NULL
 * (core_st_to_f32 refuses it). For reading the header of a file that may change meanwhile: buf
 * needs only the 8-byte length and the header; bytes after it are ignored. Returns a new object
 * (free with core_st_close), or NULL with a message in err; then *need (need may be NULL) is the
 * prefix length the header takes when len was too short for it (need > len; read that much and
 * call again), and 0 when the file itself is refused. */
core_st *core_st_open_header(const void *buf, size_t len, uint64_t file_size, uint64_t *need,
                             char *err, size_t errlen);

/* Frees the object, its names and metadata, and unmaps the file. NULL is ignored. Every
 * pointer obtained from the object dies with it. */
void core_st_close(core_st *st);

/* The tensor with this name, or NULL. O(log n_tensors). */
const core_st_tensor *core_st_find(const core_st *st, const char *name);

/* The "__metadata__" value for key, or NULL when absent. */
const char *core_st_meta(const core_st *st, const char *key);

/* Number of elements (1 for a scalar, 0 for a zero-size tensor). Cannot overflow: open
 * checked it. */
uint64_t core_st_numel(const core_st_tensor *t);

/* Converts an F32, F16 or BF16 tensor to f32 into dst, which holds core_st_numel(t) floats.
 * Returns 0, or -EINVAL for any other dtype or a tensor without data. Assumes a little-endian host.
 */
int core_st_to_f32(const core_st_tensor *t, float *dst);

#endif
