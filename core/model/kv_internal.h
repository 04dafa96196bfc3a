/* core-internal view of the KV cache, shared by kv.c and forward.c. */
#ifndef ADAPTREE_CORE_MODEL_KV_INTERNAL_H
#define ADAPTREE_CORE_MODEL_KV_INTERNAL_H

#include "core/kernels/attention_internal.h"
#include "core/model/model.h"

#include <string.h>

/* A sequence: the blocks that hold its positions, in order. */
typedef struct core_kv_slot {
    int n;          /* positions filled: 0..n-1 are valid */
    int n_blocks;   /* blocks held: room for n_blocks * CORE_KV_BLOCK positions */
    int32_t *table; /* (max_blocks) block ids */
} core_kv_slot;

/* Blocks of CORE_KV_BLOCK positions from one pool. The pool is cut into planes, one for each
 * layer's K, then each layer's V, KV head by KV head: plane (v * n_layer + l) * n_kv + g holds,
 * block after block, that head's CORE_KV_BLOCK rows of head_dim elements (a block's piece of
 * it). Attention reads one KV head of one layer at a time, and a sequence's blocks are mostly
 * taken in order from a fresh pool, so it reads in order through memory, as the prefetchers and
 * the TLB like it, where blocks holding every layer and head made it jump between 2-4 KB pieces
 * (one row at position 2048 read its cache at 7 GB/s a core where a sequential read gets 12). A
 * block is free or has references: one for each slot table holding it, and those taken with
 * core_kv_block_hold (the prefix cache). */
struct core_kv {
    int n_slots;
    int n_ctx;
    int n_layer;
    int kv_dim;
    int n_kv;           /* KV heads: kv_dim = n_kv * head_dim */
    int f16;            /* K and V stored as f16 (core_kv_set_f16) */
    size_t es;          /* bytes per element: 4, or 2 when f16 */
    size_t row_bytes;   /* kv_dim * es: one position of one layer, all KV heads */
    size_t head_bytes;  /* head_dim * es */
    size_t piece;       /* CORE_KV_BLOCK * head_bytes: a block's part of a plane */
    size_t plane;       /* n_blocks * piece */
    size_t block_bytes; /* a block's pieces of all the planes: 2 * n_layer * n_kv * piece */
    size_t pool_bytes;  /* what the pool may use; the arena's size */
    int n_blocks;       /* pool_bytes / block_bytes */
    int max_blocks;     /* per slot: ceil(n_ctx / CORE_KV_BLOCK) */
    char *arena;        /* mapped, not committed: a block's pages are touched on first use */
    int32_t *refs;      /* (n_blocks at f16, the most there can be) */
    int32_t *free_ids;  /* stack of free blocks; the most recently freed is reused first */
    int n_free;
    int n_touched; /* blocks ever handed out (the arena's resident part) */
    core_kv_reclaim_fn reclaim;
    void *reclaim_arg;
    core_kv_slot *slots; /* (n_slots) */
};

/* The plane of layer l's K (v = 0) or V (v = 1) of KV head g. */
static inline char *core__kv_plane(const core_kv *kv, int l, int v, int g)
{
    return kv->arena + ((size_t)(v ? kv->n_layer + l : l) * kv->n_kv + (size_t)g) * kv->plane;
}

/* The view of layer l's K (v = 0) or V (v = 1) rows of KV head g of slot s, keys from position
 * first. */
static inline core__kv_view core__kv_view_of(const core_kv *kv, const core_kv_slot *s, int l, int v,
                                             int g, int first)
{
    return (core__kv_view){.base = core__kv_plane(kv, l, v, g),
                           .table = s->table,
                           .block_stride = kv->piece,
                           .row_stride = kv->head_bytes,
                           .shift = CORE_KV_BLOCK_SHIFT,
                           .first = first};
}

/* Where layer l's K (v = 0) or V (v = 1) of KV head g at position pos of slot s lives (head_dim
 * elements). */
static inline char *core__kv_at(const core_kv *kv, const core_kv_slot *s, int l, int v, int g,
                                int pos)
{
    size_t blk = (size_t)s->table[pos >> CORE_KV_BLOCK_SHIFT];
    return core__kv_plane(kv, l, v, g) + blk * kv->piece +
           (size_t)(pos & (CORE_KV_BLOCK - 1)) * kv->head_bytes;
}

/* Block id's piece of plane p (0 <= p < 2 * n_layer * n_kv). */
static inline char *core__kv_piece(const core_kv *kv, int p, int32_t id)
{
    return kv->arena + (size_t)p * kv->plane + (size_t)id * kv->piece;
}

/* Block id's block_bytes gathered from its pieces, plane after plane (for tests). */
static inline void core__kv_block_read(const core_kv *kv, int32_t id, char *out)
{
    for (int p = 0; p < 2 * kv->n_layer * kv->n_kv; p++)
        memcpy(out + (size_t)p * kv->piece, core__kv_piece(kv, p, id), kv->piece);
}

#endif
