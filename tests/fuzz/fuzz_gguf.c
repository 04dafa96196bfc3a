/* libFuzzer target for the GGUF reader: opens the input from memory and, when it parses, reads
 * back every metadata value through the getters, prints the file, and dequantizes the first
 * row of every tensor whose type core/format/types.c and core/kernels/dequant.c converts. Any
 * failure must come with a message, and every tensor must lie inside the input; both are checked
 * with __builtin_trap. The input is also opened header-only (core_gguf_open_header) from growing
 * prefixes, as an adapter probe reads a file, which must agree with the whole-file open in verdict,
 * message and tables. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/format/gguf.h"
#include "core/kernels/dequant.h"

#define MAX_ROW (1 << 16)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static float row[MAX_ROW];
static volatile uint64_t sink;

/* Every getter on one key; results go to sink so nothing is optimized out. */
static void touch_kv(const core_gguf *g, const core_gguf_kv *kv)
{
    char key[256], s[64];
    uint32_t u32;
    uint64_t u64, n;
    int32_t i32;
    float f;
    bool b;
    core_gguf_str sv, *sa;
    int32_t *ia;
    if (kv->key.len >= sizeof key || memchr(kv->key.ptr, 0, kv->key.len))
        return; /* not addressable by a C-string lookup */
    memcpy(key, kv->key.ptr, kv->key.len);
    key[kv->key.len] = '\0';
    if (core_gguf_find(g, key) != kv)
        __builtin_trap();
    sink += (uint64_t)core_gguf_get_u32(g, key, &u32) + (uint64_t)core_gguf_get_u64(g, key, &u64) +
            (uint64_t)core_gguf_get_i32(g, key, &i32) + (uint64_t)core_gguf_get_f32(g, key, &f) +
            (uint64_t)core_gguf_get_bool(g, key, &b) +
            (uint64_t)core_gguf_get_str(g, key, s, sizeof s);
    if (core_gguf_get_strv(g, key, &sv) == 0 && sv.len)
        sink += (uint8_t)sv.ptr[sv.len - 1];
    if (core_gguf_get_str_array(g, key, &sa, &n) == 0) {
        for (uint64_t i = 0; i < n; i++)
            if (sa[i].len)
                sink += (uint8_t)sa[i].ptr[sa[i].len - 1];
        free(sa);
    }
    if (core_gguf_get_i32_array(g, key, &ia, &n) == 0) {
        for (uint64_t i = 0; i < n; i++)
            sink += (uint32_t)ia[i];
        free(ia);
    }
}

static void touch_tensor(const core_gguf *g, const core_gguf_tensor *t)
{
    const uint8_t *p = t->data;
    char name[128];
    if (p < g->base || t->size > g->size || p + t->size > g->base + g->size)
        __builtin_trap();
    if (core_gguf_tensor_nelements(t) == 0)
        __builtin_trap();
    if (t->name.len < sizeof name && !memchr(t->name.ptr, 0, t->name.len)) {
        memcpy(name, t->name.ptr, t->name.len);
        name[t->name.len] = '\0';
        if (core_gguf_find_tensor(g, name) != t || !core_gguf_str_eq(t->name, name))
            __builtin_trap();
    }
    if (!core_type_can_dequant(t->type) || t->ne[0] > MAX_ROW)
        return;
    if (core_dequant_row(t->type, t->data, row, (int64_t)t->ne[0]) != 0)
        __builtin_trap();
    for (uint64_t i = 0; i < t->ne[0]; i++) {
        uint32_t u;
        memcpy(&u, &row[i], 4);
        sink += u;
    }
}

static bool same_str(core_gguf_str a, core_gguf_str b)
{
    return a.len == b.len && memcmp(a.ptr, b.ptr, a.len) == 0;
}

/* Opens the input header-only from exact-size heap copies of growing prefixes (so that ASan
 * sees any read past one), starting at a size taken from the input, and checks it against the
 * whole-file result g (or its message werr). */
static void check_header_only(const uint8_t *data, size_t size, const core_gguf *g,
                              const char *werr)
{
    char err[512] = "";
    size_t have = size ? 1 + data[size - 1] % 64 : 0;
    have = have < size ? have : size;
    uint8_t *copy = NULL;
    core_gguf *h;
    for (;;) {
        uint64_t need = 0;
        free(copy);
        copy = malloc(have ? have : 1);
        if (have)
            memcpy(copy, data, have);
        h = core_gguf_open_header(copy, have, size, &need, err, sizeof err);
        if (h || need == 0)
            break;
        if (need <= have || need > size)
            __builtin_trap();
        have = need > 2 * have ? (size_t)need : 2 * have;
        have = have < size ? have : size;
    }
    if (!g != !h || (!h && strcmp(err, werr) != 0))
        __builtin_trap();
    if (h) {
        if (h->n_kv != g->n_kv || h->n_tensors != g->n_tensors || h->alignment != g->alignment ||
            h->data_offset != g->data_offset)
            __builtin_trap();
        for (uint64_t i = 0; i < g->n_kv; i++)
            if (!same_str(h->kv[i].key, g->kv[i].key) || h->kv[i].type != g->kv[i].type)
                __builtin_trap();
        for (uint64_t i = 0; i < g->n_tensors; i++) {
            const core_gguf_tensor *a = &g->tensors[i], *b = &h->tensors[i];
            if (!same_str(a->name, b->name) || a->type != b->type || a->offset != b->offset ||
                a->size != b->size || memcmp(a->ne, b->ne, sizeof a->ne) != 0 || b->data)
                __builtin_trap();
        }
    }
    core_gguf_close(h);
    free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static FILE *devnull;
    char err[512] = "";
    if (!devnull)
        devnull = fopen("/dev/null", "w");
    core_gguf *g = core_gguf_open_memory(data, size, err, sizeof err);
    check_header_only(data, size, g, err);
    if (!g) {
        if (err[0] == '\0')
            __builtin_trap();
        return 0;
    }
    for (uint64_t i = 0; i < g->n_kv; i++)
        touch_kv(g, &g->kv[i]);
    for (uint64_t i = 0; i < g->n_tensors; i++)
        touch_tensor(g, &g->tensors[i]);
    if (devnull)
        core_gguf_print(g, devnull, size < 4096);
    core_gguf_close(g);
    return 0;
}
