/* Tests for server/prefix_cache.c: keys (context bytes, tokens, chain), collisions that must
 * miss, least-recently-used eviction of unread leaves, and the pool's reclaim callback. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "server/prefix_cache.h"
#include "tests/test.h"

enum { B = CORE_KV_BLOCK };

static core_config small_cfg(void)
{
    return (core_config){.n_layer = 1, .n_head = 1, .n_head_kv = 1, .head_dim = 4};
}

/* n tokens from seed: seed * 1000 + i. */
static void fill(int32_t *t, int n, int seed)
{
    for (int i = 0; i < n; i++)
        t[i] = seed * 1000 + i;
}

/* A slot's blocks for tokens[0..n) (reserved fresh), handed to the cache; the slot is cleared,
 * so the cache's are the only references. Returns the entries added. */
static int cache_prompt(srv_prefix *p, core_kv *kv, const void *ctx, size_t ctx_len,
                        const int32_t *t, int n)
{
    if (core_kv_reserve(kv, 0, n))
        return -1;
    const int32_t *ids;
    int nb = core_kv_slot_blocks(kv, 0, &ids);
    int rc = srv_prefix_insert(p, ctx, ctx_len, t, nb, ids);
    core_kv_clear(kv, 0);
    return rc;
}

static void keys_separate(void)
{
    core_config cfg = small_cfg();
    char err[128];
    core_kv *kv = core_kv_new(&cfg, 2, 256, err, sizeof err);
    srv_prefix *p = srv_prefix_new(kv);
    int32_t t[4 * B], ids[8];
    fill(t, 4 * B, 1);
    const char a[] = "adapter A v1 x1.0", a2[] = "adapter A v2 x1.0", a3[] = "adapter A v1 x0.5";
    CHECK_EQ_INT(cache_prompt(p, kv, a, sizeof a, t, 3 * B), 3);
    CHECK_EQ_INT(cache_prompt(p, kv, a, sizeof a, t, 3 * B), 0); /* already there */
    CHECK_EQ_INT(srv_prefix_lookup(p, a, sizeof a, t, 4 * B, ids, 8), 3);
    CHECK_EQ_INT(srv_prefix_lookup(p, a, sizeof a, t, 3 * B - 1, ids, 8), 2); /* whole blocks */
    CHECK_EQ_INT(srv_prefix_lookup(p, a, sizeof a, t, 4 * B, ids, 1), 1);
    CHECK_EQ_INT(srv_prefix_lookup(p, a2, sizeof a2, t, 4 * B, ids, 8), 0); /* another version */
    CHECK_EQ_INT(srv_prefix_lookup(p, a3, sizeof a3, t, 4 * B, ids, 8), 0); /* another scale */
    CHECK_EQ_INT(srv_prefix_lookup(p, NULL, 0, t, 4 * B, ids, 8), 0);       /* the base model */
    int32_t u[4 * B];
    memcpy(u, t, sizeof u);
    u[B + 3] = 7; /* the second block differs */
    CHECK_EQ_INT(srv_prefix_lookup(p, a, sizeof a, u, 4 * B, ids, 8), 1);
    u[B + 3] = t[B + 3];
    u[2] = 7; /* the first block differs: later blocks with the same tokens do not count */
    CHECK_EQ_INT(srv_prefix_lookup(p, a, sizeof a, u, 4 * B, ids, 8), 0);
    /* the base model is a context of its own */
    CHECK_EQ_INT(cache_prompt(p, kv, NULL, 0, t, 2 * B), 2);
    CHECK_EQ_INT(srv_prefix_lookup(p, NULL, 0, t, 4 * B, ids, 8), 2);
    srv_prefix_stats st;
    srv_prefix_stats_get(p, &st);
    CHECK_EQ_INT(st.entries, 5);
    CHECK_EQ_INT(core_kv_blocks_total(kv) - core_kv_blocks_free(kv), 5);
    srv_prefix_free(p);
    CHECK_EQ_INT(core_kv_blocks_free(kv), core_kv_blocks_total(kv));
    core_kv_free(kv);
}

TEST(prefix_cache_keys_are_context_and_tokens)
{
    keys_separate();
}

static uint64_t collide(uint64_t h, const void *p, size_t n)
{
    (void)h;
    (void)p;
    (void)n;
    return 42;
}

TEST(prefix_cache_hash_collisions_never_hit)
{
    uint64_t (*saved)(uint64_t, const void *, size_t) = srv__prefix_hash;
    srv__prefix_hash = collide; /* every key hashes alike: only the comparisons tell them apart */
    keys_separate();
    srv__prefix_hash = saved;
}

TEST(prefix_cache_evicts_unread_leaves_oldest_first)
{
    core_config cfg = small_cfg();
    char err[128];
    /* 8 blocks in the pool */
    size_t bb = core_kv_block_size(&cfg, 0);
    core_kv *kv = core_kv_new_pool(&cfg, 3, 256, 8 * bb, err, sizeof err);
    CHECK_MSG(kv != NULL, "%s", err);
    srv_prefix *p = srv_prefix_new(kv);
    int32_t t1[3 * B], t2[3 * B], ids[4];
    fill(t1, 3 * B, 1);
    fill(t2, 3 * B, 2);
    CHECK_EQ_INT(cache_prompt(p, kv, "x", 1, t1, 3 * B), 3); /* older */
    CHECK_EQ_INT(cache_prompt(p, kv, "x", 1, t2, 3 * B), 3);
    CHECK_EQ_INT(core_kv_blocks_free(kv), 2);
    /* a sequence reads t2's first two blocks */
    CHECK_EQ_INT(srv_prefix_lookup(p, "x", 1, t2, 2 * B, ids, 4), 2);
    CHECK_EQ_INT(core_kv_share(kv, 1, ids, 2, 2 * B), 0);
    /* a 5-block reservation takes the 2 free blocks, then reclaims 3: t1's chain, leaf first
       (t2's blocks being read or, for its leaf, more recent than t1's) */
    CHECK_EQ_INT(core_kv_reserve(kv, 2, 5 * B), 0);
    CHECK_EQ_INT(srv_prefix_lookup(p, "x", 1, t1, 3 * B, ids, 4), 0);
    CHECK_EQ_INT(srv_prefix_lookup(p, "x", 1, t2, 3 * B, ids, 4), 3);
    /* nothing more can go: t2's leaf is a leaf, but t2's first two are read by slot 1 */
    CHECK_EQ_INT(core_kv_reserve(kv, 2, 7 * B), -ENOSPC); /* takes t2's leaf, then runs out */
    CHECK_EQ_INT(srv_prefix_lookup(p, "x", 1, t2, 3 * B, ids, 4), 2);
    srv_prefix_stats st;
    srv_prefix_stats_get(p, &st);
    CHECK_EQ_INT(st.evicted, 4);
    CHECK_EQ_INT(st.entries, 2);
    core_kv_clear(kv, 1);
    CHECK_EQ_INT(srv_prefix_evict(p, 10), 2);
    core_kv_clear(kv, 2);
    CHECK_EQ_INT(core_kv_blocks_free(kv), 8);
    srv_prefix_free(p);
    core_kv_free(kv);
}
