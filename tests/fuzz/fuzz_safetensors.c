/* libFuzzer target for core/safetensors.c: any input either fails with a message or opens,
 * and then every F32/F16/BF16 tensor of up to 1 << 16 elements converts to f32, every tensor
 * lies inside the input, and lookups find every name and metadata key.
 *
 *   clang -O1 -g -fsanitize=fuzzer,address,undefined -std=c11 -D_GNU_SOURCE -I. \
 *       tests/fuzz/fuzz_safetensors.c core/safetensors.c core/quant.c -lm -o /tmp/fuzz_st
 *   /tmp/fuzz_st -max_len=65536 tests/fuzz/corpus/fuzz_safetensors
 */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/quant.h"
#include "core/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512];
    err[0] = '\0';
    core_st *st = core_st_open_memory(data, size, err, sizeof err);
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
