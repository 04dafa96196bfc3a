/* GGUF v2/v3 reader: metadata key/values and the tensor table of a GGUF file.
 *
 * The file is mmapped read-only (or a caller buffer is borrowed) and every count, length,
 * offset and size is checked against the mapping before it is used, so a truncated or corrupt
 * file yields an error message naming the problem, never a crash. Strings and tensor data
 * point into the mapping; they live as long as the core_gguf object. core_gguf_open_header
 * reads all but the tensor data from a prefix of the file.
 */
#ifndef ADAPTREE_CORE_FORMAT_GGUF_H
#define ADAPTREE_CORE_FORMAT_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Metadata value types (GGUF spec). */
enum core_gguf_vtype {
    CORE_GGUF_UINT8 = 0,
    CORE_GGUF_INT8 = 1,
    CORE_GGUF_UINT16 = 2,
    CORE_GGUF_INT16 = 3,
    CORE_GGUF_UINT32 = 4,
    CORE_GGUF_INT32 = 5,
    CORE_GGUF_FLOAT32 = 6,
    CORE_GGUF_BOOL = 7,
    CORE_GGUF_STRING = 8,
    CORE_GGUF_ARRAY = 9,
    CORE_GGUF_UINT64 = 10,
    CORE_GGUF_INT64 = 11,
    CORE_GGUF_FLOAT64 = 12,
    CORE_GGUF_VTYPE_COUNT
};

/* A string inside the mapping: not NUL-terminated. */
typedef struct core_gguf_str {
    const char *ptr;
    uint64_t len;
} core_gguf_str;

typedef struct core_gguf_kv {
    core_gguf_str key;
    uint32_t type; /* enum core_gguf_vtype */
    union {
        uint64_t u;      /* UINT8..UINT64 */
        int64_t i;       /* INT8..INT64 */
        double f;        /* FLOAT32, FLOAT64 */
        bool b;          /* BOOL */
        core_gguf_str s; /* STRING */
        struct {
            uint32_t type;       /* element type */
            uint64_t n;          /* element count */
            const uint8_t *data; /* first element in the mapping */
            uint64_t bytes;      /* encoded size of all elements */
        } arr;                   /* ARRAY */
    } v;
} core_gguf_kv;

#define CORE_GGUF_MAX_DIMS 4

typedef struct core_gguf_tensor {
    core_gguf_str name;
    uint32_t n_dims;
    uint64_t ne[CORE_GGUF_MAX_DIMS]; /* ne[0] fastest-varying; unused dims are 1 */
    uint32_t type;                   /* ggml type id, see quant.h */
    uint64_t offset;                 /* relative to the data section */
    uint64_t size;                   /* bytes */
    const void *data;                /* in the mapping; NULL after core_gguf_open_header */
} core_gguf_tensor;

typedef struct core_gguf {
    uint32_t version;
    uint64_t n_kv;
    core_gguf_kv *kv; /* (n_kv) */
    uint64_t n_tensors;
    core_gguf_tensor *tensors; /* (n_tensors) */
    uint64_t alignment;
    uint64_t data_offset; /* start of the data section in the file */
    const uint8_t *base;  /* the whole file (core_gguf_open_header: the bytes it was given) */
    size_t size;
    bool mapped; /* base is our mmap (unmapped on close) */
} core_gguf;

/* Opens and fully validates a GGUF file. Returns a new object owned by the caller (free with
 * core_gguf_close), or NULL with a message in err. */
core_gguf *core_gguf_open(const char *path, char *err, size_t errlen);

/* Same over a caller buffer, which must outlive the returned object and stay unchanged. */
core_gguf *core_gguf_open_memory(const void *buf, size_t len, char *err, size_t errlen);

/* Validates a GGUF file of file_size bytes from its first len bytes (buf, borrowed as by
 * core_gguf_open_memory), without its tensor data: the header, metadata and tensor infos, and
 * every tensor's alignment and extent against file_size, exactly as core_gguf_open_memory checks
 * the whole file, so the one accepts what the other accepts. Every tensor's data is NULL. For
 * reading the header of a file that may change meanwhile, progressively: returns a new object
 * (free with core_gguf_close), or NULL with a message in err; then *need (need may be NULL) is
 * how many leading bytes the parse needs at least when it ran past len (need > len; read more
 * and call again), and 0 when the file itself is refused. */
core_gguf *core_gguf_open_header(const void *buf, size_t len, uint64_t file_size, uint64_t *need,
                                 char *err, size_t errlen);

void core_gguf_close(core_gguf *g);

/* Lookups. Return NULL when the key or tensor is absent. */
const core_gguf_kv *core_gguf_find(const core_gguf *g, const char *key);
const core_gguf_tensor *core_gguf_find_tensor(const core_gguf *g, const char *name);

/* Typed getters: 0 on success, -ENOENT when absent, -EINVAL when the stored type does not fit
 * (any integer type is accepted for integers when the value is in range; any float type for
 * floats). */
int core_gguf_get_u32(const core_gguf *g, const char *key, uint32_t *out);
int core_gguf_get_u64(const core_gguf *g, const char *key, uint64_t *out);
int core_gguf_get_i32(const core_gguf *g, const char *key, int32_t *out);
int core_gguf_get_f32(const core_gguf *g, const char *key, float *out);
int core_gguf_get_bool(const core_gguf *g, const char *key, bool *out);
/* Copies a string value into out (NUL-terminated); -ENOSPC when it does not fit. */
int core_gguf_get_str(const core_gguf *g, const char *key, char *out, size_t cap);
/* A string value as a view into the mapping. */
int core_gguf_get_strv(const core_gguf *g, const char *key, core_gguf_str *out);

/* An array of strings as views: *out is a new malloc'd array of n views (caller frees it;
 * the views point into the mapping). -EINVAL if the key is not an array of strings. */
int core_gguf_get_str_array(const core_gguf *g, const char *key, core_gguf_str **out, uint64_t *n);
/* An array of integers converted to int32 (each element must fit): *out malloc'd, caller
 * frees. */
int core_gguf_get_i32_array(const core_gguf *g, const char *key, int32_t **out, uint64_t *n);
/* An array of float32 values: *out malloc'd, caller frees. -EINVAL for any other element type. */
int core_gguf_get_f32_array(const core_gguf *g, const char *key, float **out, uint64_t *n);

/* Number of elements of a tensor. */
uint64_t core_gguf_tensor_nelements(const core_gguf_tensor *t);

/* Name of a metadata value type, for printing ("uint32", "array", ...). */
const char *core_gguf_vtype_name(uint32_t type);

/* Compares a view with a C string. */
bool core_gguf_str_eq(core_gguf_str s, const char *c);

/* Writes a human-readable description of the file to out (what `adaptree inspect` shows):
 * version, alignment, every metadata key with its type and value, the tensor table and a
 * per-type summary. Unless full, arrays show only their first elements and strings are cut at
 * about 120 characters. */
void core_gguf_print(const core_gguf *g, FILE *out, bool full);

#endif
