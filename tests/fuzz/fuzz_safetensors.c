/* libFuzzer target for core/format/safetensors.c: any input either fails with a message or opens,
 * and then every F32/F16/BF16 tensor of up to 1 << 16 elements converts to f32, every tensor
 * lies inside the input, and lookups find every name and metadata key. The input is also opened
 * header-only (core_st_open_header) from growing prefixes, as an adapter probe reads a file,
 * which must agree with the whole-file open in verdict, message and table.
 *
 *   clang -O1 -g -fsanitize=fuzzer,address,undefined -std=c11 -D_GNU_SOURCE -I. \
 *       tests/fuzz/fuzz_safetensors.c core/format/safetensors.c core/format/types.c and
 * core/kernels/dequant.c -lm -o /tmp/fuzz_st /tmp/fuzz_st -max_len=65536
 * tests/fuzz/corpus/fuzz_safetensors
 */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/format/safetensors.h"
#include "core/format/types.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Opens the input header-only from exact-size heap copies of growing prefixes (so that ASan
 * sees any read past one), starting at a size taken from the input, and checks it against the
 * whole-file result st (or its message werr). */
static void check_header_only(const uint8_t *data, size_t size, const core_st *st, const char *werr)
{
    char err[512] = "";
    size_t have = size ? data[size - 1] % 16 : 0;
    have = have < size ? have : size;
    uint8_t *copy = NULL;
    core_st *h;
    for (int reads = 0;; reads++) {
        uint64_t need = 0;
        free(copy);
        copy = malloc(have ? have : 1);
        if (have)
            memcpy(copy, data, have);
        h = core_st_open_header(copy, have, size, &need, err, sizeof err);
        if (h || need == 0)
            break;
        /* the length field, then exactly the header: at most two more reads */
        if (need <= have || need > size || reads == 2)
            abort();
        have = (size_t)need;
    }
    if (!st != !h || (!h && strcmp(err, werr) != 0))
        abort();
    if (h && (h->n_tensors != st->n_tensors || h->n_meta != st->n_meta))
        abort();
    for (size_t i = 0; h && i < st->n_tensors; i++) {
        const core_st_tensor *a = &st->tensors[i], *b = &h->tensors[i];
        if (strcmp(a->name, b->name) != 0 || a->dtype != b->dtype || a->offset != b->offset ||
            a->nbytes != b->nbytes || a->n_dims != b->n_dims ||
            memcmp(a->shape, b->shape, sizeof a->shape) != 0 || b->data)
            abort();
    }
    core_st_close(h);
    free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512];
    err[0] = '\0';
    core_st *st = core_st_open_memory(data, size, err, sizeof err);
    check_header_only(data, size, st, err);
    if (!st) {
        if (err[0] == '\0')
            abort(); /* every failure must say why */
        return 0;
    }
    static float buf[1 << 16];
    uint64_t covered = 0;
    for (size_t i = 0; i < st->n_tensors; i++) {
        const core_st_tensor *t = &st->tensors[i];
        const uint8_t *d = t->data;
        if (d < data || t->nbytes > size || d + t->nbytes > data + size)
            abort();
        if (core_st_find(st, t->name) != t)
            abort();
        covered += t->nbytes;
        uint64_t n = core_st_numel(t);
        bool convertible =
            t->dtype == CORE_TYPE_F32 || t->dtype == CORE_TYPE_F16 || t->dtype == CORE_TYPE_BF16;
        if (convertible && n <= (1u << 16) && core_st_to_f32(t, buf) != 0)
            abort();
        if (!convertible && core_st_to_f32(t, buf) != -EINVAL)
            abort();
    }
    if (st->n_tensors &&
        covered + (uint64_t)((const uint8_t *)st->tensors[0].data - st->tensors[0].offset - data) !=
            size)
        abort();
    for (size_t i = 0; i < st->n_meta; i++)
        if (!core_st_meta(st, st->meta_keys[i]))
            abort();
    core_st_close(st);
    return 0;
}
