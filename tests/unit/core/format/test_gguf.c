/* Tests for core/format/gguf.c: the real SmolLM2 file parses with the expected metadata and tensor
 * table; small hand-built files exercise every value type and getter; and corrupted copies of
 * the real file (truncated, bad header, bad strings, bad tensor infos) fail with a message
 * instead of crashing. Corrupt inputs are opened from exact-size heap copies where the end of
 * the buffer matters, so ASan catches any read past it. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/format/gguf.h"
#include "core/kernels/dequant.h"
#include "tests/test.h"

/* --- the real model, read once ------------------------------------------------------------- */

static uint8_t *model_buf;
static size_t model_len;

/* The default model file in memory (kept until exit), or NULL. */
static const uint8_t *model_bytes(void)
{
    if (model_buf || !test_have_model())
        return model_buf;
    FILE *f = fopen(test_model_path(), "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = n > 0 ? malloc((size_t)n) : NULL;
    if (p && fread(p, 1, (size_t)n, f) == (size_t)n) {
        model_buf = p;
        model_len = (size_t)n;
    } else {
        free(p);
    }
    fclose(f);
    return model_buf;
}

/* A private writable copy of the model for mutation tests (caller frees). */
static uint8_t *model_copy(void)
{
    const uint8_t *m = model_bytes();
    uint8_t *p = m ? malloc(model_len) : NULL;
    if (p)
        memcpy(p, m, model_len);
    return p;
}

/* Opens len bytes of buf from an exact-size copy and expects failure with an error containing
 * want. On mismatch fills why and returns 0. */
static int expect_fail(const uint8_t *buf, size_t len, const char *want, char *why, size_t cap)
{
    uint8_t *copy = malloc(len ? len : 1);
    char err[512] = "";
    if (len)
        memcpy(copy, buf, len);
    core_gguf *g = core_gguf_open_memory(copy, len, err, sizeof err);
    int ok = !g && err[0] && strstr(err, want);
    if (!ok)
        snprintf(why, cap, "len %zu: want failure containing \"%s\", got %s \"%s\"", len, want,
                 g ? "success" : "error", err);
    core_gguf_close(g);
    free(copy);
    return ok;
}

/* Writes n bytes at off of the mutable model copy m, expects failure, restores them. */
static int mutate_fail(uint8_t *m, size_t off, const void *bytes, size_t n, const char *want,
                       char *why, size_t cap)
{
    uint8_t save[64];
    memcpy(save, m + off, n);
    memcpy(m + off, bytes, n);
    char err[512] = "";
    core_gguf *g = core_gguf_open_memory(m, model_len, err, sizeof err);
    int ok = !g && err[0] && strstr(err, want);
    if (!ok)
        snprintf(why, cap, "mutation at %zu: want failure containing \"%s\", got %s \"%s\"", off,
                 want, g ? "success" : "error", err);
    core_gguf_close(g);
    memcpy(m + off, save, n);
    return ok;
}

/* File offset of a tensor info's n_dims field (just after its name). */
static size_t tinfo_ndims_off(const core_gguf *g, const core_gguf_tensor *t)
{
    return (size_t)((const uint8_t *)t->name.ptr - g->base) + (size_t)t->name.len;
}

/* File offset of a tensor info's type field. */
static size_t tinfo_type_off(const core_gguf *g, const core_gguf_tensor *t)
{
    return tinfo_ndims_off(g, t) + 4 + 8 * (size_t)t->n_dims;
}

/* --- a tiny GGUF writer -------------------------------------------------------------------- */

typedef struct gbuf {
    uint8_t *p;
    size_t n, cap;
} gbuf;

static void put(gbuf *b, const void *d, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}

static void put_u8(gbuf *b, uint8_t v)
{
    put(b, &v, 1);
}
static void put_u32(gbuf *b, uint32_t v)
{
    put(b, &v, 4);
}
static void put_u64(gbuf *b, uint64_t v)
{
    put(b, &v, 8);
}

static void put_str(gbuf *b, const char *s)
{
    put_u64(b, strlen(s));
    put(b, s, strlen(s));
}

static void put_header(gbuf *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv)
{
    put(b, "GGUF", 4);
    put_u32(b, version);
    put_u64(b, n_tensors);
    put_u64(b, n_kv);
}

/* Key and value type of a metadata entry. */
static void put_key(gbuf *b, const char *key, uint32_t type)
{
    put_str(b, key);
    put_u32(b, type);
}

static void put_tinfo(gbuf *b, const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type,
                      uint64_t offset)
{
    put_str(b, name);
    put_u32(b, n_dims);
    for (uint32_t i = 0; i < n_dims; i++)
        put_u64(b, ne[i]);
    put_u32(b, type);
    put_u64(b, offset);
}

static void pad_to(gbuf *b, size_t align)
{
    while (b->n % align)
        put_u8(b, 0);
}

/* A small v2 file with every value type, nested arrays, alignment 64 and three tensors. */
static void build_small(gbuf *b)
{
    put_header(b, 2, 3, 17);
    put_key(b, "t.u8", CORE_GGUF_UINT8), put_u8(b, 200);
    put_key(b, "t.i8", CORE_GGUF_INT8), put_u8(b, (uint8_t)-5);
    put_key(b, "t.u16", CORE_GGUF_UINT16), put(b, &(uint16_t){60000}, 2);
    put_key(b, "t.i16", CORE_GGUF_INT16), put(b, &(int16_t){-300}, 2);
    put_key(b, "t.u32", CORE_GGUF_UINT32), put_u32(b, 70000);
    put_key(b, "t.i32", CORE_GGUF_INT32), put_u32(b, (uint32_t)-7);
    put_key(b, "t.f32", CORE_GGUF_FLOAT32), put(b, &(float){1.5f}, 4);
    put_key(b, "t.bool", CORE_GGUF_BOOL), put_u8(b, 1);
    put_key(b, "t.str", CORE_GGUF_STRING), put_str(b, "hello");
    put_key(b, "t.u64", CORE_GGUF_UINT64), put_u64(b, 1ull << 40);
    put_key(b, "t.i64", CORE_GGUF_INT64), put_u64(b, (uint64_t)(-(1ll << 40)));
    put_key(b, "t.f64", CORE_GGUF_FLOAT64), put(b, &(double){0.25}, 8);
    put_key(b, "t.arr_u64", CORE_GGUF_ARRAY), put_u32(b, CORE_GGUF_UINT64), put_u64(b, 3);
    put_u64(b, 1), put_u64(b, 2), put_u64(b, 3);
    put_key(b, "t.arr_str", CORE_GGUF_ARRAY), put_u32(b, CORE_GGUF_STRING), put_u64(b, 2);
    put_str(b, "a"), put_str(b, "bc");
    /* [[1, 2], [3]] as int32 */
    put_key(b, "t.nested", CORE_GGUF_ARRAY), put_u32(b, CORE_GGUF_ARRAY), put_u64(b, 2);
    put_u32(b, CORE_GGUF_INT32), put_u64(b, 2), put_u32(b, 1), put_u32(b, 2);
    put_u32(b, CORE_GGUF_INT32), put_u64(b, 1), put_u32(b, 3);
    put_key(b, "t.arr_i16", CORE_GGUF_ARRAY), put_u32(b, CORE_GGUF_INT16), put_u64(b, 2);
    put(b, &(int16_t){-2}, 2), put(b, &(int16_t){5}, 2);
    put_key(b, "general.alignment", CORE_GGUF_UINT32), put_u32(b, 64);
    put_tinfo(b, "a", 2, (uint64_t[]){4, 2}, CORE_TYPE_F32, 0);     /* 32 bytes */
    put_tinfo(b, "b", 1, (uint64_t[]){8}, CORE_TYPE_F16, 64);       /* 16 bytes */
    put_tinfo(b, "c", 2, (uint64_t[]){32, 2}, CORE_TYPE_Q8_0, 128); /* 68 bytes */
    pad_to(b, 64);
    size_t data = b->n;
    for (int i = 0; i < 8; i++)
        put(b, &(float){(float)i}, 4);
    pad_to(b, 64);
    for (int i = 0; i < 8; i++)
        put(b, &(uint16_t){core_fp32_to_fp16((float)-i)}, 2);
    pad_to(b, 64);
    for (int r = 0; r < 2; r++) {
        put(b, &(uint16_t){core_fp32_to_fp16(0.5f)}, 2);
        for (int i = 0; i < 32; i++)
            put_u8(b, (uint8_t)(int8_t)(r ? -i : i));
    }
    (void)data;
}

/* Opens a builder's bytes from an exact-size copy; *copy must be freed after close. */
static core_gguf *open_built(const gbuf *b, uint8_t **copy, char *err, size_t errlen)
{
    *copy = malloc(b->n);
    memcpy(*copy, b->p, b->n);
    return core_gguf_open_memory(*copy, b->n, err, errlen);
}

/* --- the real model ------------------------------------------------------------------------ */

TEST(gguf_real_model_parses)
{
    TEST_NEED_MODEL();
    char err[512] = "";
    core_gguf *g = core_gguf_open(test_model_path(), err, sizeof err);
    CHECK_MSG(g, "open: %s", err);
    CHECK_EQ_INT(g->version, 3);
    CHECK_EQ_INT(g->n_kv, 33);
    CHECK_EQ_INT(g->n_tensors, 272);
    CHECK_EQ_INT(g->alignment, 32);
    CHECK_EQ_INT(g->data_offset, 1785664);

    char arch[32];
    uint32_t u;
    float f;
    CHECK_EQ_INT(core_gguf_get_str(g, "general.architecture", arch, sizeof arch), 0);
    CHECK_EQ_STR(arch, "llama");
    CHECK_EQ_INT(core_gguf_get_str(g, "general.architecture", arch, 5), -ENOSPC);
    CHECK_EQ_INT(core_gguf_get_u32(g, "llama.block_count", &u), 0);
    CHECK_EQ_INT(u, 30);
    CHECK_EQ_INT(core_gguf_get_u32(g, "llama.embedding_length", &u), 0);
    CHECK_EQ_INT(u, 576);
    CHECK_EQ_INT(core_gguf_get_u32(g, "llama.attention.head_count_kv", &u), 0);
    CHECK_EQ_INT(u, 3);
    CHECK_EQ_INT(core_gguf_get_u32(g, "general.file_type", &u), 0);
    CHECK_EQ_INT(u, 3);
    CHECK_EQ_INT(core_gguf_get_f32(g, "llama.rope.freq_base", &f), 0);
    CHECK_NEAR(f, 100000.0, 0);
    CHECK_EQ_INT(core_gguf_get_f32(g, "llama.attention.layer_norm_rms_epsilon", &f), 0);
    CHECK_NEAR(f, 1e-5, 1e-12);
    CHECK_EQ_INT(core_gguf_get_u32(g, "general.architecture", &u), -EINVAL);
    CHECK_EQ_INT(core_gguf_get_u32(g, "no.such.key", &u), -ENOENT);

    core_gguf_str *toks = NULL;
    uint64_t n = 0;
    CHECK_EQ_INT(core_gguf_get_str_array(g, "tokenizer.ggml.tokens", &toks, &n), 0);
    int ok = n == 49152 && core_gguf_str_eq(toks[0], "<|endoftext|>") &&
             core_gguf_str_eq(toks[1], "<|im_start|>");
    free(toks);
    CHECK_MSG(ok, "tokens: n %llu", (unsigned long long)n);
    CHECK_EQ_INT(core_gguf_get_str_array(g, "tokenizer.ggml.merges", &toks, &n), 0);
    free(toks);
    CHECK_EQ_INT(n, 48900);
    int32_t *types = NULL;
    CHECK_EQ_INT(core_gguf_get_i32_array(g, "tokenizer.ggml.token_type", &types, &n), 0);
    ok = n == 49152 && types[0] == 3 && types[1000] == 1;
    free(types);
    CHECK_MSG(ok, "token_type: n %llu", (unsigned long long)n);
    CHECK_EQ_INT(core_gguf_get_str_array(g, "tokenizer.ggml.token_type", &toks, &n), -EINVAL);

    int count[CORE_TYPE_COUNT] = {0};
    uint64_t end = 0;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const core_gguf_tensor *t = &g->tensors[i];
        count[t->type]++;
        end = t->offset + t->size > end ? t->offset + t->size : end;
    }
    CHECK_EQ_INT(count[CORE_TYPE_Q4_1], 210);
    CHECK_EQ_INT(count[CORE_TYPE_Q8_0], 1);
    CHECK_EQ_INT(count[CORE_TYPE_F32], 61);
    CHECK_EQ_INT(end, 96576768); /* docs/FORMATS.md §3.3 */
    CHECK_EQ_INT(g->data_offset + end, g->size);

    const core_gguf_tensor *e = core_gguf_find_tensor(g, "token_embd.weight");
    CHECK(e);
    CHECK_EQ_INT(e->type, CORE_TYPE_Q8_0);
    CHECK_EQ_INT(e->n_dims, 2);
    CHECK_EQ_INT(e->ne[0], 576);
    CHECK_EQ_INT(e->ne[1], 49152);
    CHECK_EQ_INT(core_gguf_tensor_nelements(e), 576 * 49152);
    const core_gguf_tensor *k = core_gguf_find_tensor(g, "blk.29.attn_k.weight");
    CHECK(k && k->type == CORE_TYPE_Q4_1 && k->ne[0] == 576 && k->ne[1] == 192);
    CHECK(core_gguf_find_tensor(g, "output_norm.weight"));
    CHECK(!core_gguf_find_tensor(g, "output.weight")); /* tied embeddings */
    core_gguf_close(g);
}

TEST(gguf_real_model_print)
{
    TEST_NEED_MODEL();
    char err[512] = "";
    core_gguf *g = core_gguf_open(test_model_path(), err, sizeof err);
    CHECK_MSG(g, "open: %s", err);
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    core_gguf_print(g, out, false);
    fclose(out);
    core_gguf_close(g);
    static const char *const want[] = {
        "GGUF version 3",
        "general.architecture",
        "\"llama\"",
        "array    [string, 49152] [\"<|endoftext|>\", \"<|im_start|>\"",
        ", ...]",
        "q4_1: 210 tensors, 66355200 bytes",
        "q8_0: 1 tensors, 30081024 bytes",
        "f32: 61 tensors, 140544 bytes",
        "token_embd.weight",
        "[576, 49152]",
        "... (368 bytes)", /* the chat template, cut */
    };
    const char *missing = NULL;
    for (size_t i = 0; i < sizeof want / sizeof want[0] && !missing; i++)
        if (!strstr(text, want[i]))
            missing = want[i];
    int long_line = 0;
    for (const char *p = text; *p; p++) {
        const char *nl = strchr(p, '\n');
        if (!nl)
            break;
        long_line |= nl - p > 400;
        p = nl;
    }
    free(text);
    CHECK_MSG(!missing, "print output lacks \"%s\"", missing);
    CHECK_MSG(!long_line, "print output has a line over 400 characters without full");
}

/* Rows of the q8_0 embedding and a q4_1 projection dequantize to finite, small, non-constant
 * values. */
TEST(gguf_real_model_dequant)
{
    TEST_NEED_MODEL();
    char err[512] = "";
    core_gguf *g = core_gguf_open(test_model_path(), err, sizeof err);
    CHECK_MSG(g, "open: %s", err);
    static const char *const names[] = {"token_embd.weight", "blk.0.attn_q.weight",
                                        "blk.29.ffn_down.weight", "blk.3.attn_norm.weight"};
    float row[1536];
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        const core_gguf_tensor *t = core_gguf_find_tensor(g, names[k]);
        CHECK_MSG(t, "%s missing", names[k]);
        uint64_t n_rows = core_gguf_tensor_nelements(t) / t->ne[0];
        uint64_t rb = core_type_row_bytes(t->type, t->ne[0]);
        CHECK(t->ne[0] <= 1536 && rb * n_rows == t->size);
        for (uint64_t r = 0; r < n_rows; r += n_rows / 4 + 1) {
            const uint8_t *src = (const uint8_t *)t->data + r * rb;
            CHECK_EQ_INT(core_dequant_row(t->type, src, row, (int64_t)t->ne[0]), 0);
            double sum_abs = 0, mn = row[0], mx = row[0];
            for (uint64_t i = 0; i < t->ne[0]; i++) {
                CHECK_MSG(isfinite(row[i]) && fabsf(row[i]) < 20, "%s row %llu [%llu] = %g",
                          names[k], (unsigned long long)r, (unsigned long long)i, row[i]);
                sum_abs += fabs(row[i]);
                mn = row[i] < mn ? row[i] : mn;
                mx = row[i] > mx ? row[i] : mx;
            }
            double mean_abs = sum_abs / (double)t->ne[0];
            CHECK_MSG(mean_abs > 1e-3 && mean_abs < 5 && mx > mn,
                      "%s row %llu: mean |x| %g, range [%g, %g]", names[k], (unsigned long long)r,
                      mean_abs, mn, mx);
        }
    }
    core_gguf_close(g);
}

/* --- corruption of the real file ----------------------------------------------------------- */

TEST(gguf_truncated_everywhere)
{
    TEST_NEED_MODEL();
    const uint8_t *m = model_bytes();
    CHECK(m);
    char why[768];
    const size_t data_off = 1785664;
    int n = 0;
    for (size_t cut = 0; cut < data_off + 64; cut += cut < 64 ? 1 : 997, n++) {
        const char *want = cut < data_off ? "truncated" : "extends past end of file";
        CHECK_MSG(expect_fail(m, cut, want, why, sizeof why), "%s", why);
    }
    const size_t in_data[] = {data_off + 1, data_off + 30081023, model_len / 2, model_len - 1};
    for (size_t i = 0; i < sizeof in_data / sizeof in_data[0]; i++, n++)
        CHECK_MSG(expect_fail(m, in_data[i], "extends past end of file", why, sizeof why), "%s",
                  why);
    printf("    %d truncated copies rejected\n", n);
}

TEST(gguf_corrupt_header)
{
    TEST_NEED_MODEL();
    uint8_t *m = model_copy();
    CHECK(m);
    char why[768];
    int ok =
        mutate_fail(m, 0, "GGUX", 4, "not a GGUF file", why, sizeof why) &&
        mutate_fail(m, 4, &(uint32_t){1}, 4, "version 1 is not supported", why, sizeof why) &&
        mutate_fail(m, 4, &(uint32_t){4}, 4, "unsupported GGUF version 4", why, sizeof why) &&
        mutate_fail(m, 4, &(uint32_t){0x03000000}, 4, "big-endian", why, sizeof why) &&
        mutate_fail(m, 8, &(uint64_t){UINT64_MAX}, 8, "implausible", why, sizeof why) &&
        mutate_fail(m, 8, &(uint64_t){4000000}, 8, "4000000 tensors", why, sizeof why) &&
        mutate_fail(m, 16, &(uint64_t){1ull << 40}, 8, "implausible", why, sizeof why) &&
        mutate_fail(m, 16, &(uint64_t){8000000}, 8, "8000000 metadata keys", why, sizeof why) &&
        /* more keys than there are: the first tensor info is read as a key */
        mutate_fail(m, 16, &(uint64_t){34}, 8, "tensor", why, sizeof why) &&
        /* more tensors than there are: the data section is read as tensor infos */
        mutate_fail(m, 8, &(uint64_t){273}, 8, "tensor", why, sizeof why);
    free(m);
    CHECK_MSG(ok, "%s", why);
    char err[256] = "";
    CHECK(!core_gguf_open_memory(NULL, 0, err, sizeof err) && strstr(err, "truncated"));
    CHECK(!core_gguf_open("/nonexistent/x.gguf", err, sizeof err) &&
          strstr(err, "/nonexistent/x.gguf"));
    CHECK(!core_gguf_open("/", err, sizeof err) && err[0]);
    CHECK(!core_gguf_open_memory("GGUF", 4, NULL, 0)); /* no error buffer is fine */
}

TEST(gguf_corrupt_strings)
{
    TEST_NEED_MODEL();
    uint8_t *m = model_copy();
    CHECK(m);
    char err[512] = "", why[768];
    core_gguf *g = core_gguf_open_memory(m, model_len, err, sizeof err);
    CHECK_MSG(g, "open: %s", err);
    const core_gguf_kv *arch = core_gguf_find(g, "general.architecture");
    const core_gguf_kv *toks = core_gguf_find(g, "tokenizer.ggml.tokens");
    size_t arch_val = (size_t)((const uint8_t *)arch->v.s.ptr - m) - 8;
    /* element 5's length: skip the first five strings */
    const uint8_t *p = toks->v.arr.data;
    for (int i = 0; i < 5; i++) {
        uint64_t len;
        memcpy(&len, p, 8);
        p += 8 + len;
    }
    size_t tok_5 = (size_t)(p - m);
    const core_gguf_kv *ttype = core_gguf_find(g, "tokenizer.ggml.token_type");
    size_t ttype_n = (size_t)(ttype->v.arr.data - m) - 8;
    size_t ttype_t = ttype_n - 4;
    size_t key5 = (size_t)((const uint8_t *)g->kv[5].key.ptr - m) - 8;
    core_gguf_close(g);
    uint64_t huge = 1ull << 62, big = model_len;
    int ok =
        mutate_fail(m, 24, &huge, 8, "metadata key 0 name needs", why, sizeof why) &&
        mutate_fail(m, 24, &(uint64_t){0}, 8, "name length 0", why, sizeof why) &&
        mutate_fail(m, 24, &(uint64_t){70000}, 8, "name length 70000", why, sizeof why) &&
        mutate_fail(m, arch_val, &huge, 8, "'general.architecture') value needs", why,
                    sizeof why) &&
        mutate_fail(m, arch_val, &big, 8, "truncated", why, sizeof why) &&
        mutate_fail(m, key5, &big, 8, "metadata key 5 name", why, sizeof why) &&
        mutate_fail(m, tok_5, &huge, 8, "string element 5", why, sizeof why) &&
        mutate_fail(m, ttype_n, &huge, 8, "('tokenizer.ggml.token_type') array of", why,
                    sizeof why) &&
        mutate_fail(m, ttype_t, &(uint32_t){13}, 4, "unknown element type 13", why, sizeof why) &&
        mutate_fail(m, arch_val - 4, &(uint32_t){99}, 4, "unknown value type 99", why, sizeof why);
    free(m);
    CHECK_MSG(ok, "%s", why);
}

TEST(gguf_corrupt_tensor_infos)
{
    TEST_NEED_MODEL();
    uint8_t *m = model_copy();
    CHECK(m);
    char err[512] = "", why[768];
    core_gguf *g = core_gguf_open_memory(m, model_len, err, sizeof err);
    CHECK_MSG(g, "open: %s", err);
    const core_gguf_tensor *q = core_gguf_find_tensor(g, "blk.0.attn_q.weight");
    const core_gguf_tensor *k = core_gguf_find_tensor(g, "blk.0.attn_k.weight");
    const core_gguf_tensor *last = &g->tensors[g->n_tensors - 1];
    size_t q_ndims = tinfo_ndims_off(g, q), q_type = tinfo_type_off(g, q);
    size_t last_off = tinfo_type_off(g, last) + 4;
    size_t k_name_last = (size_t)((const uint8_t *)k->name.ptr - m) + 11; /* the 'k' */
    size_t q_name_len = (size_t)((const uint8_t *)q->name.ptr - m) - 8;
    const core_gguf_kv *type_kv = core_gguf_find(g, "general.type");
    size_t type_key = (size_t)((const uint8_t *)type_kv->key.ptr - m) + 8; /* "type" */
    const core_gguf_kv *bc = core_gguf_find(g, "llama.block_count");
    size_t bc_key = (size_t)((const uint8_t *)bc->key.ptr - m);
    size_t bc_val = bc_key + 17 + 4;
    core_gguf_close(g);
    CHECK(m[k_name_last] == 'k');
    uint64_t huge = 1ull << 62;
    int ok =
        mutate_fail(m, last_off, &(uint64_t){1ull << 40}, 8,
                    "tensor 'output_norm.weight': data [offset 1099511627776, size 2304] "
                    "extends past end of file",
                    why, sizeof why) &&
        mutate_fail(m, last_off, &(uint64_t){96576768 - 2304 + 32}, 8, "extends past end of file",
                    why, sizeof why) &&
        mutate_fail(m, last_off, &(uint64_t){96576768 - 2304 + 4}, 8,
                    "not a multiple of the alignment 32", why, sizeof why) &&
        mutate_fail(m, q_type, &(uint32_t){16}, 4, "unsupported tensor type 16", why, sizeof why) &&
        mutate_fail(m, q_type, &(uint32_t){4}, 4, "unsupported tensor type 4", why, sizeof why) &&
        mutate_fail(m, q_type, &(uint32_t){CORE_TYPE_Q6_K}, 4,
                    "ne[0] = 576 is not a multiple of the q6_k block size 256", why, sizeof why) &&
        mutate_fail(m, q_ndims + 4, &(uint64_t){577}, 8, "is not a multiple of the q4_1 block", why,
                    sizeof why) &&
        mutate_fail(m, q_ndims + 4, &(uint64_t){0}, 8, "dimension 0 is 0", why, sizeof why) &&
        mutate_fail(m, q_ndims + 12, &huge, 8, "dimension 1 is", why, sizeof why) &&
        mutate_fail(m, q_ndims + 12, &(uint64_t){1ull << 50}, 8, "extends past end of file", why,
                    sizeof why) &&
        mutate_fail(m, q_ndims, &(uint32_t){5}, 4, "n_dims is 5", why, sizeof why) &&
        mutate_fail(m, q_ndims, &(uint32_t){0}, 4, "n_dims is 0", why, sizeof why) &&
        mutate_fail(m, q_name_len, &(uint64_t){65}, 8, "name length 65", why, sizeof why) &&
        mutate_fail(m, k_name_last, "q", 1, "duplicate tensor name 'blk.0.attn_q.weight'", why,
                    sizeof why) &&
        mutate_fail(m, type_key, "name", 4, "duplicate metadata key 'general.name'", why,
                    sizeof why) &&
        /* rename llama.block_count (same length) to general.alignment */
        mutate_fail(m, bc_key, "general.alignment", 17, "general.alignment is 30", why, sizeof why);
    if (ok) {
        memcpy(m + bc_key, "general.alignment", 17);
        ok = mutate_fail(m, bc_val, &(uint32_t){0}, 4, "general.alignment is 0", why, sizeof why) &&
             mutate_fail(m, bc_val, &(uint32_t){3}, 4, "must be a power of two", why, sizeof why) &&
             mutate_fail(m, bc_val - 4, &(uint32_t){CORE_GGUF_FLOAT32}, 4,
                         "general.alignment has type float32", why, sizeof why);
        /* alignment 64: every offset in this file is a multiple of 64, so it still opens */
        memcpy(m + bc_val, &(uint32_t){64}, 4);
        g = core_gguf_open_memory(m, model_len, err, sizeof err);
        if (!g || g->alignment != 64 || g->data_offset % 64 != 0) {
            ok = 0;
            snprintf(why, sizeof why, "alignment 64: %s", g ? "wrong alignment" : err);
        }
        core_gguf_close(g);
    }
    free(m);
    CHECK_MSG(ok, "%s", why);
}

/* --- hand-built files ---------------------------------------------------------------------- */

TEST(gguf_small_file_values)
{
    gbuf b = {0};
    build_small(&b);
    uint8_t *copy;
    char err[512] = "";
    core_gguf *g = open_built(&b, &copy, err, sizeof err);
    free(b.p);
    CHECK_MSG(g, "open: %s", err);
    uint32_t u32;
    uint64_t u64;
    int32_t i32;
    float f;
    bool bo;
    char s[16];
    core_gguf_str sv;
    int rc[] = {
        core_gguf_get_u32(g, "t.u8", &u32) == 0 && u32 == 200,
        core_gguf_get_u32(g, "t.i8", &u32) == -EINVAL,
        core_gguf_get_i32(g, "t.i8", &i32) == 0 && i32 == -5,
        core_gguf_get_u32(g, "t.u16", &u32) == 0 && u32 == 60000,
        core_gguf_get_i32(g, "t.i16", &i32) == 0 && i32 == -300,
        core_gguf_get_i32(g, "t.u32", &i32) == 0 && i32 == 70000,
        core_gguf_get_i32(g, "t.i32", &i32) == 0 && i32 == -7,
        core_gguf_get_u64(g, "t.u64", &u64) == 0 && u64 == 1ull << 40,
        core_gguf_get_u32(g, "t.u64", &u32) == -EINVAL,
        core_gguf_get_i32(g, "t.i64", &i32) == -EINVAL,
        core_gguf_get_u64(g, "t.i64", &u64) == -EINVAL,
        core_gguf_get_f32(g, "t.f32", &f) == 0 && f == 1.5f,
        core_gguf_get_f32(g, "t.f64", &f) == 0 && f == 0.25f,
        core_gguf_get_f32(g, "t.u32", &f) == -EINVAL,
        core_gguf_get_bool(g, "t.bool", &bo) == 0 && bo,
        core_gguf_get_bool(g, "t.u8", &bo) == -EINVAL,
        core_gguf_get_str(g, "t.str", s, sizeof s) == 0 && strcmp(s, "hello") == 0,
        core_gguf_get_str(g, "t.str", s, 5) == -ENOSPC,
        core_gguf_get_strv(g, "t.str", &sv) == 0 && core_gguf_str_eq(sv, "hello"),
        core_gguf_get_strv(g, "t.u8", &sv) == -EINVAL,
        core_gguf_get_u32(g, "missing", &u32) == -ENOENT,
        core_gguf_get_str(g, "missing", s, sizeof s) == -ENOENT,
        core_gguf_get_u32(g, "general.alignment", &u32) == 0 && u32 == 64,
    };
    for (size_t i = 0; i < sizeof rc / sizeof rc[0]; i++)
        CHECK_MSG(rc[i], "getter check %zu failed", i);

    int32_t *ia = NULL;
    core_gguf_str *sa = NULL;
    uint64_t n = 0;
    CHECK_EQ_INT(core_gguf_get_i32_array(g, "t.arr_u64", &ia, &n), 0);
    int ok = n == 3 && ia[0] == 1 && ia[2] == 3;
    free(ia);
    CHECK(ok);
    CHECK_EQ_INT(core_gguf_get_i32_array(g, "t.arr_i16", &ia, &n), 0);
    ok = n == 2 && ia[0] == -2 && ia[1] == 5;
    free(ia);
    CHECK(ok);
    CHECK_EQ_INT(core_gguf_get_i32_array(g, "t.arr_str", &ia, &n), -EINVAL);
    CHECK_EQ_INT(core_gguf_get_i32_array(g, "t.u8", &ia, &n), -EINVAL);
    CHECK_EQ_INT(core_gguf_get_str_array(g, "t.arr_str", &sa, &n), 0);
    ok = n == 2 && core_gguf_str_eq(sa[0], "a") && core_gguf_str_eq(sa[1], "bc");
    free(sa);
    CHECK(ok);
    const core_gguf_kv *nest = core_gguf_find(g, "t.nested");
    CHECK(nest && nest->type == CORE_GGUF_ARRAY && nest->v.arr.type == CORE_GGUF_ARRAY &&
          nest->v.arr.n == 2 && nest->v.arr.bytes == 2 * 12 + 3 * 4);
    CHECK_EQ_STR(core_gguf_vtype_name(CORE_GGUF_FLOAT64), "float64");
    CHECK_EQ_STR(core_gguf_vtype_name(77), "unknown");

    CHECK_EQ_INT(g->version, 2);
    CHECK_EQ_INT(g->alignment, 64);
    CHECK_EQ_INT(g->data_offset % 64, 0);
    const core_gguf_tensor *a = core_gguf_find_tensor(g, "a");
    const core_gguf_tensor *bt = core_gguf_find_tensor(g, "b");
    const core_gguf_tensor *c = core_gguf_find_tensor(g, "c");
    CHECK(a && bt && c && !core_gguf_find_tensor(g, "d"));
    CHECK_EQ_INT(a->size, 32);
    CHECK_EQ_INT(bt->size, 16);
    CHECK_EQ_INT(c->size, 68);
    CHECK(c->ne[0] == 32 && c->ne[1] == 2 && c->ne[2] == 1 && c->ne[3] == 1);
    CHECK((const uint8_t *)c->data == g->base + g->data_offset + 128);
    float row[32];
    CHECK_EQ_INT(core_dequant_row(a->type, a->data, row, 8), 0);
    CHECK_NEAR(row[7], 7.0, 0);
    CHECK_EQ_INT(core_dequant_row(bt->type, bt->data, row, 8), 0);
    CHECK_NEAR(row[5], -5.0, 0);
    CHECK_EQ_INT(core_dequant_row(c->type, (const uint8_t *)c->data + 34, row, 32), 0);
    CHECK_NEAR(row[31], -15.5, 0);

    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    core_gguf_print(g, out, true);
    fclose(out);
    ok = strstr(text, "[array, 2] [array[int32, 2], array[int32, 1]]") && strstr(text, "t.i64") &&
         strstr(text, "-1099511627776") && strstr(text, "[string, 2] [\"a\", \"bc\"]") &&
         strstr(text, "f16: 1 tensors, 16 bytes");
    if (!ok)
        printf("%s", text);
    free(text);
    core_gguf_close(g);
    free(copy);
    CHECK_MSG(ok, "print output of the small file is missing a value");
}

/* A file whose only kv is built by fn, no tensors; expects failure containing want (or
 * success when want is NULL). */
static int kv_case(void (*fn)(gbuf *), const char *want, char *why, size_t cap)
{
    gbuf b = {0};
    put_header(&b, 3, 0, 1);
    fn(&b);
    int ok;
    if (want) {
        ok = expect_fail(b.p, b.n, want, why, cap);
    } else {
        char err[512] = "";
        uint8_t *copy;
        core_gguf *g = open_built(&b, &copy, err, sizeof err);
        ok = g != NULL;
        if (!ok)
            snprintf(why, cap, "want success, got \"%s\"", err);
        core_gguf_close(g);
        free(copy);
    }
    free(b.p);
    return ok;
}

/* Arrays nested depth levels deep, the innermost holding one uint8. */
static void put_nested(gbuf *b, int depth)
{
    put_key(b, "nest", CORE_GGUF_ARRAY);
    for (int i = 1; i < depth; i++)
        put_u32(b, CORE_GGUF_ARRAY), put_u64(b, 1);
    put_u32(b, CORE_GGUF_UINT8), put_u64(b, 1), put_u8(b, 7);
}

static void kv_nest4(gbuf *b)
{
    put_nested(b, 4);
}
static void kv_nest5(gbuf *b)
{
    put_nested(b, 5);
}
static void kv_bad_bool(gbuf *b)
{
    put_key(b, "b", CORE_GGUF_BOOL), put_u8(b, 2);
}
static void kv_bad_bool_arr(gbuf *b)
{
    put_key(b, "b", CORE_GGUF_ARRAY), put_u32(b, CORE_GGUF_BOOL), put_u64(b, 3);
    put_u8(b, 1), put_u8(b, 0), put_u8(b, 9);
}
static void kv_huge_arr(gbuf *b)
{
    put_key(b, "a", CORE_GGUF_ARRAY), put_u32(b, CORE_GGUF_UINT64), put_u64(b, 1ull << 61);
}
static void kv_huge_str_arr(gbuf *b)
{
    put_key(b, "a", CORE_GGUF_ARRAY), put_u32(b, CORE_GGUF_STRING), put_u64(b, UINT64_MAX);
    put_str(b, "x");
}
static void kv_empty_arrays(gbuf *b)
{
    put_key(b, "a", CORE_GGUF_ARRAY), put_u32(b, CORE_GGUF_ARRAY), put_u64(b, 2);
    put_u32(b, CORE_GGUF_STRING), put_u64(b, 0);
    put_u32(b, CORE_GGUF_FLOAT64), put_u64(b, 0);
}

TEST(gguf_small_file_bad_values)
{
    char why[768];
    CHECK_MSG(kv_case(kv_nest4, NULL, why, sizeof why), "%s", why);
    CHECK_MSG(kv_case(kv_nest5, "nested deeper than 4", why, sizeof why), "%s", why);
    CHECK_MSG(kv_case(kv_bad_bool, "bool value 2", why, sizeof why), "%s", why);
    CHECK_MSG(kv_case(kv_bad_bool_arr, "bool element 2 has value 9", why, sizeof why), "%s", why);
    CHECK_MSG(kv_case(kv_huge_arr, "array of 2305843009213693952 uint64 needs", why, sizeof why),
              "%s", why);
    CHECK_MSG(kv_case(kv_huge_str_arr, "truncated", why, sizeof why), "%s", why);
    CHECK_MSG(kv_case(kv_empty_arrays, NULL, why, sizeof why), "%s", why);
}

/* Tensor infos built by hand: what a permissive reader must still refuse. */
TEST(gguf_small_file_bad_tensors)
{
    static const struct {
        uint32_t n_dims;
        uint64_t ne[4];
        uint32_t type;
        uint64_t offset;
        const char *want; /* NULL: opens */
    } cases[] = {
        {1, {32}, CORE_TYPE_Q4_K, 0, "not a multiple of the q4_k block size 256"},
        {1, {256}, CORE_TYPE_Q4_K, 0, "extends past end of file"},
        {1, {16}, CORE_TYPE_F32, 0, NULL},
        {1, {16}, CORE_TYPE_BF16, 32, NULL},
        {1, {16}, CORE_TYPE_F32, 16, "not a multiple of the alignment 32"},
        {4, {2, 2, 2, 2}, CORE_TYPE_F32, 0, NULL},
        {4, {1ull << 20, 1ull << 20, 1ull << 20, 1ull << 5}, CORE_TYPE_F32, 0, "dimension 3"},
        {2, {1ull << 62, 1}, CORE_TYPE_F32, 0, "byte size overflows"},
        {3, {256, 1ull << 50, 1}, CORE_TYPE_Q2_K, 0, "extends past end of file"},
        {1, {32}, CORE_TYPE_Q8_1, 0, NULL},
        {1, {32}, 31, 0, "unsupported tensor type 31"},
        {1, {32}, 1000, 0, "unsupported tensor type 1000"},
    };
    char why[768];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        gbuf b = {0};
        put_header(&b, 3, 1, 0);
        put_tinfo(&b, "w", cases[i].n_dims, cases[i].ne, cases[i].type, cases[i].offset);
        pad_to(&b, 32);
        for (int k = 0; k < 64; k++)
            put_u8(&b, 0);
        int ok;
        if (cases[i].want) {
            ok = expect_fail(b.p, b.n, cases[i].want, why, sizeof why);
        } else {
            char err[512] = "";
            uint8_t *copy;
            core_gguf *g = open_built(&b, &copy, err, sizeof err);
            ok = g != NULL;
            snprintf(why, sizeof why, "want success, got \"%s\"", err);
            core_gguf_close(g);
            free(copy);
        }
        free(b.p);
        CHECK_MSG(ok, "case %zu: %s", i, why);
    }
    /* No tensors and no padding after the metadata: opens, data section at the end. */
    gbuf b = {0};
    put_header(&b, 3, 0, 1);
    put_key(&b, "x", CORE_GGUF_UINT8), put_u8(&b, 1);
    uint8_t *copy;
    char err[512] = "";
    core_gguf *g = open_built(&b, &copy, err, sizeof err);
    size_t n = b.n;
    free(b.p);
    CHECK_MSG(g, "open: %s", err);
    int ok = g->n_tensors == 0 && g->data_offset == n;
    core_gguf_close(g);
    free(copy);
    CHECK(ok);
}

/* --- header-only opens --------------------------------------------------------------------- */

/* Opens the file buf[0..len) with core_gguf_open_header as a probe reads it: first bytes, then
 * what *need says or twice as many, whichever is more, each time from an exact-size heap copy of
 * the prefix (ASan catches a read past it). The object, or NULL with err; *copy holds the last
 * prefix (free it after closing), *reads counts the attempts. */
static core_gguf *open_header_progressive(const uint8_t *buf, size_t len, size_t first,
                                          uint8_t **copy, int *reads, char *err, size_t errlen)
{
    size_t have = first < len ? first : len;
    *copy = NULL;
    for (*reads = 1;; (*reads)++) {
        free(*copy);
        *copy = malloc(have ? have : 1);
        if (have)
            memcpy(*copy, buf, have);
        uint64_t need = 0;
        core_gguf *g = core_gguf_open_header(*copy, have, len, &need, err, errlen);
        if (g || need == 0)
            return g;
        if (need <= have || need > len) {
            snprintf(err, errlen, "need %llu after %zu of %zu bytes", (unsigned long long)need,
                     have, len);
            return NULL;
        }
        have = need > 2 * have ? (size_t)need : 2 * have;
        have = have < len ? have : len;
    }
}

static int same_str(core_gguf_str a, core_gguf_str b)
{
    return a.len == b.len && memcmp(a.ptr, b.ptr, a.len) == 0;
}

/* The header-only open of buf[0..len) (first bytes first) agrees with core_gguf_open_memory on
 * an exact-size copy: both fail with the same message, or both open with the same metadata and
 * tensor table, the header-only one without data. 0 with why on mismatch; *reads as above. */
static int header_agrees(const uint8_t *buf, size_t len, size_t first, int *reads, char *why,
                         size_t cap)
{
    char e1[512] = "", e2[512] = "";
    uint8_t *whole = malloc(len ? len : 1), *prefix;
    if (len)
        memcpy(whole, buf, len);
    core_gguf *w = core_gguf_open_memory(whole, len, e1, sizeof e1);
    core_gguf *h = open_header_progressive(buf, len, first, &prefix, reads, e2, sizeof e2);
    int ok = !w == !h;
    if (!w || !h) {
        ok = ok && !strcmp(e1, e2);
        snprintf(why, cap, "len %zu: whole \"%s\", header-only \"%s\"", len, w ? "opens" : e1,
                 h ? "opens" : e2);
        goto out;
    }
    snprintf(why, cap, "len %zu: tables differ", len);
    ok = w->version == h->version && w->alignment == h->alignment &&
         w->data_offset == h->data_offset && w->n_kv == h->n_kv && w->n_tensors == h->n_tensors;
    for (uint64_t i = 0; ok && i < w->n_kv; i++) {
        const core_gguf_kv *a = &w->kv[i], *b = &h->kv[i];
        ok = same_str(a->key, b->key) && a->type == b->type;
        if (ok && a->type == CORE_GGUF_STRING)
            ok = same_str(a->v.s, b->v.s);
        else if (ok && a->type == CORE_GGUF_ARRAY)
            ok = a->v.arr.type == b->v.arr.type && a->v.arr.n == b->v.arr.n &&
                 a->v.arr.bytes == b->v.arr.bytes &&
                 !memcmp(a->v.arr.data, b->v.arr.data, a->v.arr.bytes);
        else if (ok)
            ok = a->v.u == b->v.u; /* every scalar's 8 bytes, as both read them */
    }
    for (uint64_t i = 0; ok && i < w->n_tensors; i++) {
        const core_gguf_tensor *a = &w->tensors[i], *b = &h->tensors[i];
        ok = same_str(a->name, b->name) && a->n_dims == b->n_dims && a->type == b->type &&
             !memcmp(a->ne, b->ne, sizeof a->ne) && a->offset == b->offset && a->size == b->size &&
             a->data && !b->data;
    }
out:
    core_gguf_close(w);
    core_gguf_close(h);
    free(whole);
    free(prefix);
    return ok;
}

/* A header-only open accepts exactly what a whole-file open accepts, and says why in the same
 * words: the small file and the GGUF-LoRA fixture, read from any first size, and every
 * truncation of the small file. A prefix too short says how far to read. */
TEST(gguf_header_only_matches_whole_file)
{
    gbuf b = {0};
    build_small(&b);
    char why[1200];
    int reads;
    static const size_t firsts[] = {0, 1, 24, 40, 100, 1 << 20};
    for (size_t i = 0; i < sizeof firsts / sizeof firsts[0]; i++)
        CHECK_MSG(header_agrees(b.p, b.n, firsts[i], &reads, why, sizeof why), "first %zu: %s",
                  firsts[i], why);
    int n_ok = 0;
    for (size_t cut = 0; cut <= b.n; cut++) {
        int ok = header_agrees(b.p, cut, 16, &reads, why, sizeof why);
        if (!ok)
            free(b.p);
        CHECK_MSG(ok, "%s", why);
        n_ok++;
    }
    uint64_t need = 0;
    char err[512] = "";
    core_gguf *g = core_gguf_open_header(b.p, 30, b.n, &need, err, sizeof err);
    size_t n = b.n;
    free(b.p);
    CHECK(!g);
    CHECK_MSG(need > 30 && need <= n && strstr(err, "were read"), "need %llu: %s",
              (unsigned long long)need, err);

    FILE *f = fopen("tests/golden/fixtures/adapters/qv_r4.gguf", "rb");
    CHECK(f);
    uint8_t *lora = malloc(1 << 20);
    size_t len = fread(lora, 1, 1 << 20, f);
    fclose(f);
    int ok = header_agrees(lora, len, 64, &reads, why, sizeof why) && reads > 2 &&
             header_agrees(lora, len, 1 << 20, &reads, why, sizeof why) && reads == 1 &&
             header_agrees(lora, len - 1, 4096, &reads, why, sizeof why);
    free(lora);
    CHECK_MSG(ok, "qv_r4.gguf (%zu bytes, %d reads): %s", len, reads, why);
    printf("    %d truncations agree\n", n_ok);
}

/* The model's header (1.7 MB of tokenizer metadata) takes a second read after the first MiB. */
TEST(gguf_header_only_real_model)
{
    TEST_NEED_MODEL();
    const uint8_t *m = model_bytes();
    CHECK(m);
    char why[1200];
    int reads;
    CHECK_MSG(header_agrees(m, model_len, 1 << 20, &reads, why, sizeof why), "%s", why);
    CHECK_EQ_INT(reads, 2);
    CHECK_MSG(header_agrees(m, model_len - 1, 1 << 20, &reads, why, sizeof why), "%s", why);
    CHECK_MSG(header_agrees(m, 1785664 - 1, 1 << 20, &reads, why, sizeof why), "%s", why);
}
