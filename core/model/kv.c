/* The paged KV cache (model.h): blocks of CORE_KV_BLOCK positions from one mapped pool, per-slot
 * block tables, references for sharing, copy on write. */
#include "core/model/kv_internal.h"

#include "core/base.h"
#include "core/format/types.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* K and V of every layer for CORE_KV_BLOCK positions of kv_dim elements of es bytes. */
static size_t block_size(int n_layer, int kv_dim, size_t es)
{
    return 2 * (size_t)n_layer * CORE_KV_BLOCK * (size_t)kv_dim * es;
}

size_t core_kv_block_size(const core_config *cfg, int f16)
{
    return block_size(cfg->n_layer, cfg->n_head_kv * cfg->head_dim,
                      f16 ? sizeof(uint16_t) : sizeof(float));
}

/* Sizes the blocks for the element size and refills the free stack: block 0 on top. Only with
 * no block in use. */
static void pool_reset(core_kv *kv)
{
    kv->row_bytes = (size_t)kv->kv_dim * kv->es;
    kv->head_bytes = kv->row_bytes / (size_t)kv->n_kv;
    kv->block_bytes = block_size(kv->n_layer, kv->kv_dim, kv->es);
    size_t n = kv->pool_bytes / kv->block_bytes;
    kv->n_blocks = n > (size_t)INT32_MAX ? INT32_MAX : (int)n;
    kv->piece = (size_t)CORE_KV_BLOCK * kv->head_bytes;
    kv->plane = (size_t)kv->n_blocks * kv->piece;
    kv->n_free = kv->n_blocks;
    for (int i = 0; i < kv->n_blocks; i++)
        kv->free_ids[i] = kv->n_blocks - 1 - i;
    memset(kv->refs, 0, (size_t)kv->n_blocks * sizeof *kv->refs);
    kv->n_touched = 0;
}

core_kv *core_kv_new_pool(const core_config *cfg, int n_slots, int n_ctx, size_t pool_bytes,
                          char *err, size_t errlen)
{
    if (n_slots <= 0 || n_slots > (1 << 16) || n_ctx <= 0 || n_ctx > (1 << 24)) {
        core_errf(err, errlen, "kv cache: bad size (%d slots, %d positions)", n_slots, n_ctx);
        return NULL;
    }
    size_t f32_block = core_kv_block_size(cfg, 0);
    if (f32_block == 0 || pool_bytes < f32_block || pool_bytes / f32_block > (1u << 30)) {
        core_errf(err, errlen,
                  "kv cache: a pool of %zu bytes holds no block of %zu bytes (or too many)",
                  pool_bytes, f32_block);
        return NULL;
    }
    core_kv *kv = calloc(1, sizeof *kv);
    if (!kv) {
        core_errf(err, errlen, "kv cache: out of memory");
        return NULL;
    }
    kv->n_slots = n_slots;
    kv->n_ctx = n_ctx;
    kv->n_layer = cfg->n_layer;
    kv->kv_dim = cfg->n_head_kv * cfg->head_dim;
    kv->n_kv = cfg->n_head_kv;
    kv->es = sizeof(float);
    kv->max_blocks = (n_ctx + CORE_KV_BLOCK - 1) / CORE_KV_BLOCK;
    kv->pool_bytes = pool_bytes / f32_block * f32_block;
    size_t most = 2 * (kv->pool_bytes / f32_block); /* the block count at f16 */
    kv->slots = calloc((size_t)n_slots, sizeof *kv->slots);
    kv->refs = malloc(most * sizeof *kv->refs);
    kv->free_ids = malloc(most * sizeof *kv->free_ids);
    void *arena = mmap(NULL, kv->pool_bytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    kv->arena = arena == MAP_FAILED ? NULL : arena;
    bool ok = kv->slots && kv->refs && kv->free_ids && kv->arena;
    for (int s = 0; ok && s < n_slots; s++)
        ok = (kv->slots[s].table = malloc((size_t)kv->max_blocks * sizeof(int32_t))) != NULL;
    if (!ok) {
        core_kv_free(kv);
        core_errf(err, errlen, "kv cache: out of memory for a pool of %zu MB", pool_bytes >> 20);
        return NULL;
    }
    pool_reset(kv);
    return kv;
}

core_kv *core_kv_new(const core_config *cfg, int n_slots, int n_ctx, char *err, size_t errlen)
{
    size_t f32_block = core_kv_block_size(cfg, 0);
    size_t per_slot = n_ctx > 0 ? (size_t)(n_ctx + CORE_KV_BLOCK - 1) / CORE_KV_BLOCK : 1;
    size_t slots = n_slots > 0 ? (size_t)n_slots : 1;
    return core_kv_new_pool(cfg, n_slots, n_ctx, slots * per_slot * f32_block, err, errlen);
}

void core_kv_free(core_kv *kv)
{
    if (!kv)
        return;
    for (int s = 0; kv->slots && s < kv->n_slots; s++)
        free(kv->slots[s].table);
    free(kv->slots);
    free(kv->refs);
    free(kv->free_ids);
    if (kv->arena)
        munmap(kv->arena, kv->pool_bytes);
    free(kv);
}

int core_kv_set_f16(core_kv *kv, int on)
{
    if (kv->n_free != kv->n_blocks)
        return -EBUSY;
    kv->f16 = on != 0;
    kv->es = on ? sizeof(uint16_t) : sizeof(float);
    pool_reset(kv);
    return 0;
}

int core_kv_is_f16(const core_kv *kv)
{
    return kv->f16;
}

int core_kv_n_slots(const core_kv *kv)
{
    return kv->n_slots;
}

int core_kv_n_ctx(const core_kv *kv)
{
    return kv->n_ctx;
}

size_t core_kv_bytes(const core_kv *kv)
{
    return (size_t)(kv->n_blocks - kv->n_free) * kv->block_bytes;
}

size_t core_kv_block_bytes(const core_kv *kv)
{
    return kv->block_bytes;
}

int core_kv_blocks_total(const core_kv *kv)
{
    return kv->n_blocks;
}

int core_kv_blocks_free(const core_kv *kv)
{
    return kv->n_free;
}

int core_kv_blocks_touched(const core_kv *kv)
{
    return kv->n_touched;
}

void core_kv_set_reclaim(core_kv *kv, core_kv_reclaim_fn fn, void *arg)
{
    kv->reclaim = fn;
    kv->reclaim_arg = arg;
}

static bool valid_block(const core_kv *kv, int32_t id)
{
    return id >= 0 && id < kv->n_blocks && kv->refs[id] > 0;
}

void core_kv_block_hold(core_kv *kv, int32_t id)
{
    if (valid_block(kv, id))
        kv->refs[id]++;
}

void core_kv_block_release(core_kv *kv, int32_t id)
{
    if (!valid_block(kv, id))
        return;
    if (--kv->refs[id] == 0)
        kv->free_ids[kv->n_free++] = id;
}

int core_kv_block_refs(const core_kv *kv, int32_t id)
{
    return id >= 0 && id < kv->n_blocks ? kv->refs[id] : 0;
}

/* A free block with one reference, asking the reclaim callback when there is none; -1. */
static int32_t block_take(core_kv *kv)
{
    while (kv->n_free == 0)
        if (!kv->reclaim || kv->reclaim(kv->reclaim_arg, kv) <= 0 || kv->n_free == 0)
            return -1;
    int32_t id = kv->free_ids[--kv->n_free];
    kv->refs[id] = 1;
    if (id >= kv->n_touched) /* handed out in order 0, 1, ... until the first one comes back */
        kv->n_touched = id + 1;
    return id;
}

void core_kv_clear(core_kv *kv, int slot)
{
    if (slot < 0 || slot >= kv->n_slots)
        return;
    core_kv_slot *s = &kv->slots[slot];
    for (int b = 0; b < s->n_blocks; b++)
        core_kv_block_release(kv, s->table[b]);
    s->n = 0;
    s->n_blocks = 0;
}

int core_kv_slot_len(const core_kv *kv, int slot)
{
    return slot >= 0 && slot < kv->n_slots ? kv->slots[slot].n : 0;
}

int core_kv_slot_blocks(const core_kv *kv, int slot, const int32_t **ids)
{
    if (slot < 0 || slot >= kv->n_slots) {
        *ids = NULL;
        return 0;
    }
    *ids = kv->slots[slot].table;
    return kv->slots[slot].n_blocks;
}

int core_kv_blocks_needed(const core_kv *kv, int slot, int n)
{
    if (slot < 0 || slot >= kv->n_slots || n <= 0)
        return 0;
    const core_kv_slot *s = &kv->slots[slot];
    int want = (n + CORE_KV_BLOCK - 1) / CORE_KV_BLOCK,
        need = want > s->n_blocks ? want - s->n_blocks : 0;
    /* the held blocks it would write into: from the one holding position n on */
    for (int b = s->n / CORE_KV_BLOCK; b < s->n_blocks && b < want; b++)
        need += kv->refs[s->table[b]] > 1;
    return need;
}

int core_kv_reserve(core_kv *kv, int slot, int n)
{
    if (slot < 0 || slot >= kv->n_slots || n < 0)
        return -EINVAL;
    if (n > kv->n_ctx)
        return -ERANGE;
    core_kv_slot *s = &kv->slots[slot];
    int want = (n + CORE_KV_BLOCK - 1) / CORE_KV_BLOCK;
    for (int b = s->n / CORE_KV_BLOCK; b < s->n_blocks && b < want; b++) {
        int32_t old = s->table[b];
        if (kv->refs[old] <= 1)
            continue;
        int32_t id = block_take(kv);
        if (id < 0)
            return -ENOSPC;
        for (int p = 0; p < 2 * kv->n_layer * kv->n_kv; p++)
            memcpy(core__kv_piece(kv, p, id), core__kv_piece(kv, p, old), kv->piece);
        s->table[b] = id;
        core_kv_block_release(kv, old);
    }
    while (s->n_blocks < want) {
        int32_t id = block_take(kv);
        if (id < 0)
            return -ENOSPC;
        s->table[s->n_blocks++] = id;
    }
    return 0;
}

int core_kv_share(core_kv *kv, int slot, const int32_t *ids, int n_ids, int n)
{
    if (slot < 0 || slot >= kv->n_slots || n_ids < 0 || n_ids > kv->max_blocks || n < 0 ||
        n > n_ids * CORE_KV_BLOCK || n > kv->n_ctx)
        return -EINVAL;
    core_kv_slot *s = &kv->slots[slot];
    if (s->n_blocks > 0 || s->n > 0)
        return -EBUSY;
    for (int b = 0; b < n_ids; b++)
        if (!valid_block(kv, ids[b]))
            return -EINVAL;
    for (int b = 0; b < n_ids; b++) {
        kv->refs[ids[b]]++;
        s->table[b] = ids[b];
    }
    s->n_blocks = n_ids;
    s->n = n;
    return 0;
}

int core_kv_fill_random(core_kv *kv, int slot, int n, uint32_t seed)
{
    if (slot < 0 || slot >= kv->n_slots || n < 0)
        return -EINVAL;
    int rc = core_kv_reserve(kv, slot, n);
    if (rc)
        return rc;
    core_kv_slot *sl = &kv->slots[slot];
    int hd = kv->kv_dim / kv->n_kv;
    uint32_t x = seed;
    for (int l = 0; l < kv->n_layer; l++)
        for (int p = 0; p < n; p++)
            for (int g = 0; g < kv->n_kv; g++) { /* a position's row, KV head by KV head */
                char *k = core__kv_at(kv, sl, l, 0, g, p), *v = core__kv_at(kv, sl, l, 1, g, p);
                for (int e = 0; e < hd; e++) {
                    x = x * 1664525u + 1013904223u;
                    float f = (float)((int32_t)x >> 8) / (float)(1 << 23);
                    if (kv->f16) {
                        ((uint16_t *)k)[e] = core_fp32_to_fp16(f);
                        ((uint16_t *)v)[e] = core_fp32_to_fp16(f * 0.5f);
                    } else {
                        ((float *)k)[e] = f;
                        ((float *)v)[e] = f * 0.5f;
                    }
                }
            }
    sl->n = n;
    return 0;
}
