/* The prefix cache: full KV blocks of earlier prompts, found again by the tokens they hold and
 * the adapters that produced them.
 *
 * An entry is one block of CORE_KV_BLOCK positions. Its key is the chain of everything before
 * it: the context (the adapter set's identity: each adapter's content hash and weight, in order;
 * empty for the base model), the tokens of every earlier block, and its own tokens. Entries form
 * a tree: block i's parent is block i - 1 of the same prompt under the same context. A lookup
 * walks the prompt block by block from the root of its context and stops at the first block
 * that is not there. Hashes only find candidates: a hit compares the context bytes (at the root),
 * the parent and the block's tokens, so a hash collision is a miss, never a wrong hit.
 *
 * The cache holds one reference on each entry's block (core_kv_block_hold). Eviction takes
 * entries least recently used first, among leaves (no cached child) whose block no sequence is
 * reading (the cache's is the only reference): the pool's reclaim callback calls it when a block
 * is needed and none is free, so cached blocks use exactly the memory running sequences do not.
 *
 * Engine thread only.
 */
#ifndef ADAPTREE_SERVER_PREFIX_CACHE_H
#define ADAPTREE_SERVER_PREFIX_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "core/model/model.h"

typedef struct srv_prefix srv_prefix;

/* Lookups and hits are the scheduler's to count: it looks up again for a job that waits for
 * KV blocks, and counts the admission that used the lookup. */
typedef struct srv_prefix_stats {
    uint64_t evicted; /* entries evicted */
    int entries;      /* entries now (blocks the cache holds) */
} srv_prefix_stats;

/* A cache over kv's blocks; it installs itself as kv's reclaim callback. NULL on no memory. */
srv_prefix *srv_prefix_new(core_kv *kv);
/* Releases every entry's block and frees the cache (kv's reclaim callback is removed). */
void srv_prefix_free(srv_prefix *p);

/* The longest run of cached blocks that starts tokens (n tokens; only whole blocks count) under
 * the context ctx (ctx_len bytes): their block ids in ids (at most max_ids), in order; returns
 * how many. The blocks found become the most recently used. */
int srv_prefix_lookup(srv_prefix *p, const void *ctx, size_t ctx_len, const int32_t *tokens, int n,
                      int32_t *ids, int max_ids);
/* Records blocks ids[0..n_blocks) holding tokens[0 .. n_blocks * CORE_KV_BLOCK) under ctx.
 * Blocks already cached for the same key are left as they are (the cached one stays); the rest
 * get an entry and a reference. Returns the number of new entries, or -ENOMEM (what was added
 * stays). */
int srv_prefix_insert(srv_prefix *p, const void *ctx, size_t ctx_len, const int32_t *tokens,
                      int n_blocks, const int32_t *ids);
/* Evicts up to n entries (least recently used evictable leaves first); returns how many. */
int srv_prefix_evict(srv_prefix *p, int n);
/* Drops every entry (blocks still read by sequences stay theirs). */
void srv_prefix_clear(srv_prefix *p);
void srv_prefix_stats_get(const srv_prefix *p, srv_prefix_stats *out);

/* The hash behind the keys (core_hash64); tests swap in a constant one to make every key
 * collide. */
extern uint64_t (*srv__prefix_hash)(uint64_t h, const void *p, size_t n);

#endif
