/* core-internal view of the KV cache, shared by kv.c and forward.c. */
#ifndef ADAPTREE_CORE_MODEL_KV_INTERNAL_H
#define ADAPTREE_CORE_MODEL_KV_INTERNAL_H

#include "core/kernels/attention_internal.h"
#include "core/model/model.h"

/* A sequence: the blocks that hold its positions, in order. */
typedef struct core_kv_slot {
    int n;          /* positions filled: 0..n-1 are valid */
    int n_blocks;   /* blocks held: room for n_blocks * CORE_KV_BLOCK positions */
    int32_t *table; /* (max_blocks) block ids */
} core_kv_slot;

/* Blocks of CORE_KV_BLOCK positions from one pool. A block is K then V, each (n_layer,
 * CORE_KV_BLOCK, kv_dim) elements, so one layer's rows of a block are contiguous. A block is
 * free or has references: one for each slot table holding it, and those taken with
 * core_kv_block_hold (the prefix cache). */
struct core_kv {
    int n_slots;
    int n_ctx;
    int n_layer;
    int kv_dim;
    int f16;          /* K and V stored as f16 (core_kv_set_f16) */
    size_t es;        /* bytes per element: 4, or 2 when f16 */
    size_t row_bytes; /* kv_dim * es */
    size_t block_bytes;
    size_t pool_bytes; /* what the pool may use; the arena's size */
    int n_blocks;      /* pool_bytes / block_bytes */
    int max_blocks;    /* per slot: ceil(n_ctx / CORE_KV_BLOCK) */
    char *arena;       /* mapped, not committed: a block's pages are touched on first use */
    int32_t *refs;     /* (n_blocks at f16, the most there can be) */
    int32_t *free_ids; /* stack of free blocks; the most recently freed is reused first */
    int n_free;
    int n_touched; /* blocks ever handed out (the arena's resident part) */
    core_kv_reclaim_fn reclaim;
    void *reclaim_arg;
    core_kv_slot *slots; /* (n_slots) */
};

/* The view of layer l's K (v = 0) or V (v = 1) rows of slot s, keys from position first. */
static inline core__kv_view core__kv_view_of(const core_kv *kv, const core_kv_slot *s, int l, int v,
                                             int first)
{
    size_t part = (size_t)(v ? kv->n_layer + l : l) * CORE_KV_BLOCK * kv->row_bytes;
    return (core__kv_view){.base = kv->arena + part,
                           .table = s->table,
                           .block_stride = kv->block_bytes,
                           .row_stride = kv->row_bytes,
                           .shift = CORE_KV_BLOCK_SHIFT,
                           .first = first};
}

/* Where layer l's K (v = 0) or V (v = 1) row of position pos of slot s lives. */
static inline char *core__kv_at(const core_kv *kv, const core_kv_slot *s, int l, int v, int pos)
{
    size_t blk = (size_t)s->table[pos >> CORE_KV_BLOCK_SHIFT];
    size_t row =
        (size_t)(v ? kv->n_layer + l : l) * CORE_KV_BLOCK + (size_t)(pos & (CORE_KV_BLOCK - 1));
    return kv->arena + blk * kv->block_bytes + row * kv->row_bytes;
}

#endif
