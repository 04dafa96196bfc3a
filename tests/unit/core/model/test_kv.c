/* Tests for the paged KV cache's block pool (core/model/kv.c): accounting, the pool running out,
 * sharing and copy on write, the reclaim callback. The forward pass through block tables is
 * tested in test_forward.c. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "core/model/kv_internal.h"
#include "tests/test.h"

/* 2 layers, 2 KV heads of 4: a block is 2 x 2 x 16 x 8 floats = 2 KiB, in 8 planes. */
static core_config small_cfg(void)
{
    return (core_config){.n_layer = 2, .n_head = 2, .n_head_kv = 2, .head_dim = 4};
}

TEST(kv_pool_counts_blocks_and_runs_out_cleanly)
{
    core_config cfg = small_cfg();
    char err[200] = "";
    core_kv *kv = core_kv_new_pool(&cfg, 4, 100, 5 * 2048 + 100, err, sizeof err);
    CHECK_MSG(kv != NULL, "%s", err);
    CHECK_EQ_INT(core_kv_block_bytes(kv), 2048);
    CHECK_EQ_INT(core_kv_blocks_total(kv), 5);
    CHECK_EQ_INT(core_kv_blocks_needed(kv, 0, 33), 3);
    CHECK_EQ_INT(core_kv_reserve(kv, 0, 33), 0); /* 3 blocks */
    CHECK_EQ_INT(core_kv_blocks_free(kv), 2);
    CHECK_EQ_INT(core_kv_bytes(kv), 3 * 2048);
    CHECK_EQ_INT(core_kv_reserve(kv, 0, 20), 0); /* already held */
    CHECK_EQ_INT(core_kv_blocks_needed(kv, 1, 48), 3);
    CHECK_EQ_INT(core_kv_reserve(kv, 1, 48), -ENOSPC); /* takes 2, then the pool is empty */
    CHECK_EQ_INT(core_kv_blocks_free(kv), 0);
    CHECK_EQ_INT(core_kv_reserve(kv, 2, 101), -ERANGE);
    CHECK_EQ_INT(core_kv_reserve(kv, 9, 1), -EINVAL);
    CHECK_EQ_INT(core_kv_blocks_touched(kv), 5);
    core_kv_clear(kv, 1);
    CHECK_EQ_INT(core_kv_blocks_free(kv), 2);
    core_kv_clear(kv, 0);
    CHECK_EQ_INT(core_kv_blocks_free(kv), 5);
    CHECK_EQ_INT(core_kv_bytes(kv), 0);
    /* freed blocks come back first: nothing new is touched */
    CHECK_EQ_INT(core_kv_reserve(kv, 3, 64), 0);
    CHECK_EQ_INT(core_kv_blocks_touched(kv), 5);
    core_kv_clear(kv, 3);
    CHECK_EQ_INT(core_kv_set_f16(kv, 1), 0); /* twice the blocks in the same bytes */
    CHECK_EQ_INT(core_kv_blocks_total(kv), 10);
    CHECK_EQ_INT(core_kv_reserve(kv, 0, 1), 0);
    CHECK_EQ_INT(core_kv_set_f16(kv, 0), -EBUSY);
    core_kv_free(kv);
    CHECK(core_kv_new_pool(&cfg, 4, 100, 1000, err, sizeof err) == NULL);
    printf("    a pool smaller than a block: %s\n", err);
    CHECK(strstr(err, "block") != NULL);
}

TEST(kv_shared_blocks_are_copied_before_a_write)
{
    core_config cfg = small_cfg();
    char err[200] = "";
    core_kv *kv = core_kv_new_pool(&cfg, 3, 100, 8 * 2048, err, sizeof err);
    CHECK_MSG(kv != NULL, "%s", err);
    CHECK_EQ_INT(core_kv_fill_random(kv, 0, 24, 7), 0); /* blocks: 16 + 8 */
    const int32_t *ids;
    CHECK_EQ_INT(core_kv_slot_blocks(kv, 0, &ids), 2);
    int32_t a = ids[0], b = ids[1];
    core_kv_block_hold(kv, a); /* a prefix cache keeps the full block */
    CHECK_EQ_INT(core_kv_block_refs(kv, a), 2);
    CHECK_EQ_INT(core_kv_share(kv, 1, ids, 2, 20), 0);
    CHECK_EQ_INT(core_kv_share(kv, 1, ids, 2, 20), -EBUSY);
    CHECK_EQ_INT(core_kv_slot_len(kv, 1), 20);
    CHECK_EQ_INT(core_kv_block_refs(kv, b), 2);
    char before[2048], now[2048];
    CHECK_EQ_INT(kv->piece, 256);
    core__kv_block_read(kv, b, before);
    /* slot 1 writes position 20: into b, shared, so b is copied first; a stays shared */
    CHECK_EQ_INT(core_kv_blocks_needed(kv, 1, 21), 1);
    CHECK_EQ_INT(core_kv_reserve(kv, 1, 21), 0);
    CHECK_EQ_INT(core_kv_slot_blocks(kv, 1, &ids), 2);
    CHECK(ids[0] == a && ids[1] != b);
    CHECK_EQ_INT(core_kv_block_refs(kv, b), 1);
    core__kv_block_read(kv, ids[1], now);
    CHECK(memcmp(now, before, 2048) == 0);
    memset(core__kv_at(kv, &kv->slots[1], 1, 1, 1, 20), 0x55, kv->head_bytes);
    core__kv_block_read(kv, b, now);
    CHECK(memcmp(now, before, 2048) == 0);
    core__kv_block_read(kv, ids[1], now);
    CHECK(memcmp(now, before, 2048) != 0);
    /* the holder's reference outlives both slots */
    core_kv_clear(kv, 0);
    core_kv_clear(kv, 1);
    CHECK_EQ_INT(core_kv_block_refs(kv, a), 1);
    CHECK_EQ_INT(core_kv_blocks_free(kv), 7);
    core_kv_block_release(kv, a);
    CHECK_EQ_INT(core_kv_blocks_free(kv), 8);
    core_kv_block_release(kv, a); /* a free block: ignored */
    core_kv_block_hold(kv, 99);   /* out of range: ignored */
    CHECK_EQ_INT(core_kv_blocks_free(kv), 8);
    /* share refuses free blocks and impossible lengths */
    int32_t bad[2] = {0, 1};
    CHECK_EQ_INT(core_kv_share(kv, 2, bad, 2, 20), -EINVAL);
    CHECK_EQ_INT(core_kv_share(kv, 2, bad, 1, 17), -EINVAL);
    core_kv_free(kv);
}

typedef struct held {
    int32_t ids[8];
    int n, calls;
} held;

/* Gives back one held block per call, oldest first. */
static int give_back(void *arg, core_kv *kv)
{
    held *h = arg;
    h->calls++;
    if (h->n == 0)
        return 0;
    core_kv_block_release(kv, h->ids[0]);
    memmove(h->ids, h->ids + 1, (size_t)--h->n * sizeof h->ids[0]);
    return 1;
}

TEST(kv_reclaim_frees_held_blocks_when_the_pool_is_empty)
{
    core_config cfg = small_cfg();
    char err[200] = "";
    core_kv *kv = core_kv_new_pool(&cfg, 2, 200, 4 * 2048, err, sizeof err);
    CHECK_MSG(kv != NULL, "%s", err);
    held h = {0};
    core_kv_set_reclaim(kv, give_back, &h);
    CHECK_EQ_INT(core_kv_reserve(kv, 0, 48), 0);
    const int32_t *ids;
    core_kv_slot_blocks(kv, 0, &ids);
    for (int i = 0; i < 3; i++)
        core_kv_block_hold(kv, h.ids[h.n++] = ids[i]);
    core_kv_clear(kv, 0); /* the three stay held: one block free */
    CHECK_EQ_INT(core_kv_blocks_free(kv), 1);
    CHECK_EQ_INT(core_kv_reserve(kv, 1, 48), 0); /* one free, two reclaimed */
    CHECK_EQ_INT(h.n, 1);
    CHECK_EQ_INT(core_kv_reserve(kv, 1, 64), 0); /* the last one */
    CHECK_EQ_INT(core_kv_reserve(kv, 1, 80), -ENOSPC);
    CHECK(h.calls >= 4);
    core_kv_free(kv);
}
