/* The prefix cache (server/prefix_cache.h): a hash table of block entries chained by parent, an
 * LRU list, and eviction of unread leaves. */
#include "server/prefix_cache.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "core/base.h"

typedef struct entry {
    uint64_t hash;      /* the chain's hash through this block */
    int32_t parent;     /* entry of the previous block, -1 for a context's first block */
    int32_t block;      /* the KV block (one reference held) */
    int32_t children;   /* cached entries whose parent this is */
    int32_t hnext;      /* next in the bucket; next free entry when free */
    int32_t prev, next; /* LRU list, most recent first */
    int32_t tokens[CORE_KV_BLOCK];
    uint8_t *ctx; /* first blocks: a copy of the context */
    size_t ctx_len;
} entry;

struct srv_prefix {
    core_kv *kv;
    entry *e;
    int cap, n;        /* entries allocated, in use */
    int32_t free_head; /* free entries, chained through hnext */
    int32_t *buckets;
    uint64_t mask;      /* buckets - 1 */
    int32_t head, tail; /* LRU */
    int32_t *walk;      /* (walk_cap) entries of the current lookup or insert */
    int walk_cap;
    srv_prefix_stats st;
};

static int reclaim(void *arg, core_kv *kv)
{
    (void)kv;
    return srv_prefix_evict(arg, 1);
}

srv_prefix *srv_prefix_new(core_kv *kv)
{
    srv_prefix *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->kv = kv;
    p->mask = 1023;
    p->buckets = malloc((p->mask + 1) * sizeof *p->buckets);
    if (!p->buckets) {
        free(p);
        return NULL;
    }
    memset(p->buckets, 0xff, (p->mask + 1) * sizeof *p->buckets);
    p->free_head = p->head = p->tail = -1;
    core_kv_set_reclaim(kv, reclaim, p);
    return p;
}

void srv_prefix_free(srv_prefix *p)
{
    if (!p)
        return;
    srv_prefix_clear(p);
    core_kv_set_reclaim(p->kv, NULL, NULL);
    free(p->e);
    free(p->buckets);
    free(p->walk);
    free(p);
}

uint64_t (*srv__prefix_hash)(uint64_t h, const void *p, size_t n) = core_hash64;

static uint64_t ctx_hash(const void *ctx, size_t len)
{
    uint64_t h = srv__prefix_hash(CORE_HASH_INIT, &len, sizeof len);
    return len ? srv__prefix_hash(h, ctx, len) : h;
}

static uint64_t block_hash(uint64_t h, const int32_t *tokens)
{
    return srv__prefix_hash(h, tokens, CORE_KV_BLOCK * sizeof(int32_t));
}

static int32_t find(const srv_prefix *p, uint64_t h, int32_t parent, const int32_t *tokens,
                    const void *ctx, size_t ctx_len)
{
    for (int32_t i = p->buckets[h & p->mask]; i >= 0; i = p->e[i].hnext) {
        const entry *x = &p->e[i];
        if (x->hash != h || x->parent != parent || memcmp(x->tokens, tokens, sizeof x->tokens) != 0)
            continue;
        if (parent < 0 && (x->ctx_len != ctx_len || (ctx_len && memcmp(x->ctx, ctx, ctx_len) != 0)))
            continue;
        return i;
    }
    return -1;
}

static void lru_unlink(srv_prefix *p, int32_t i)
{
    entry *x = &p->e[i];
    if (x->prev >= 0)
        p->e[x->prev].next = x->next;
    else
        p->head = x->next;
    if (x->next >= 0)
        p->e[x->next].prev = x->prev;
    else
        p->tail = x->prev;
    x->prev = x->next = -1;
}

static void lru_push(srv_prefix *p, int32_t i)
{
    entry *x = &p->e[i];
    x->prev = -1;
    x->next = p->head;
    if (p->head >= 0)
        p->e[p->head].prev = i;
    p->head = i;
    if (p->tail < 0)
        p->tail = i;
}

/* The walk's entries become the most recent, the first block most recent of all: a chain's
 * leaves are older than its root, so eviction takes leaves first. */
static void touch_walk(srv_prefix *p, int n)
{
    for (int k = n - 1; k >= 0; k--) {
        lru_unlink(p, p->walk[k]);
        lru_push(p, p->walk[k]);
    }
}

static int walk_room(srv_prefix *p, int n)
{
    if (n <= p->walk_cap)
        return 0;
    int32_t *w = realloc(p->walk, (size_t)n * sizeof *w);
    if (!w)
        return -ENOMEM;
    p->walk = w;
    p->walk_cap = n;
    return 0;
}

int srv_prefix_lookup(srv_prefix *p, const void *ctx, size_t ctx_len, const int32_t *tokens, int n,
                      int32_t *ids, int max_ids)
{
    int nb = n / CORE_KV_BLOCK;
    nb = nb < max_ids ? nb : max_ids;
    if (nb <= 0 || walk_room(p, nb))
        return 0;
    uint64_t h = ctx_hash(ctx, ctx_len);
    int32_t parent = -1;
    int k = 0;
    for (; k < nb; k++) {
        const int32_t *t = tokens + (size_t)k * CORE_KV_BLOCK;
        h = block_hash(h, t);
        int32_t i = find(p, h, parent, t, ctx, ctx_len);
        if (i < 0)
            break;
        ids[k] = p->e[i].block;
        p->walk[k] = parent = i;
    }
    touch_walk(p, k);
    return k;
}

static int grow(srv_prefix *p)
{
    if (p->free_head >= 0)
        return 0;
    int cap = p->cap ? 2 * p->cap : 256;
    entry *v = realloc(p->e, (size_t)cap * sizeof *v);
    if (!v)
        return -ENOMEM;
    p->e = v;
    for (int i = cap - 1; i >= p->cap; i--) {
        p->e[i].hnext = p->free_head;
        p->free_head = i;
    }
    p->cap = cap;
    return 0;
}

/* Doubles the buckets when entries outnumber them. */
static void rehash(srv_prefix *p)
{
    if ((uint64_t)p->n <= p->mask + 1)
        return;
    uint64_t mask = 2 * (p->mask + 1) - 1;
    int32_t *b = malloc((mask + 1) * sizeof *b);
    if (!b)
        return; /* longer chains, still correct */
    memset(b, 0xff, (mask + 1) * sizeof *b);
    for (int32_t i = p->head; i >= 0; i = p->e[i].next) {
        p->e[i].hnext = b[p->e[i].hash & mask];
        b[p->e[i].hash & mask] = i;
    }
    free(p->buckets);
    p->buckets = b;
    p->mask = mask;
}

int srv_prefix_insert(srv_prefix *p, const void *ctx, size_t ctx_len, const int32_t *tokens,
                      int n_blocks, const int32_t *ids)
{
    if (n_blocks <= 0)
        return 0;
    if (walk_room(p, n_blocks))
        return -ENOMEM;
    uint64_t h = ctx_hash(ctx, ctx_len);
    int32_t parent = -1;
    int added = 0, k = 0, rc = 0;
    for (; k < n_blocks; k++) {
        const int32_t *t = tokens + (size_t)k * CORE_KV_BLOCK;
        h = block_hash(h, t);
        int32_t i = find(p, h, parent, t, ctx, ctx_len);
        if (i < 0) {
            uint8_t *copy = NULL;
            if (parent < 0 && ctx_len && !(copy = malloc(ctx_len))) {
                rc = -ENOMEM;
                break;
            }
            if (grow(p)) {
                free(copy);
                rc = -ENOMEM;
                break;
            }
            i = p->free_head;
            entry *x = &p->e[i];
            p->free_head = x->hnext;
            memset(x, 0, sizeof *x);
            x->hash = h;
            x->parent = parent;
            x->block = ids[k];
            memcpy(x->tokens, t, sizeof x->tokens);
            if (copy)
                memcpy(copy, ctx, ctx_len);
            x->ctx = copy;
            x->ctx_len = parent < 0 ? ctx_len : 0;
            x->hnext = p->buckets[h & p->mask];
            p->buckets[h & p->mask] = i;
            x->prev = x->next = -1;
            lru_push(p, i);
            core_kv_block_hold(p->kv, ids[k]);
            if (parent >= 0)
                p->e[parent].children++;
            p->n++;
            added++;
        }
        p->walk[k] = parent = i;
    }
    touch_walk(p, k);
    rehash(p);
    return rc ? rc : added;
}

static void drop(srv_prefix *p, int32_t i)
{
    entry *x = &p->e[i];
    int32_t *pp = &p->buckets[x->hash & p->mask];
    while (*pp != i)
        pp = &p->e[*pp].hnext;
    *pp = x->hnext;
    lru_unlink(p, i);
    if (x->parent >= 0)
        p->e[x->parent].children--;
    core_kv_block_release(p->kv, x->block);
    free(x->ctx);
    x->ctx = NULL;
    x->hnext = p->free_head;
    p->free_head = i;
    p->n--;
}

/* A parent is always more recent than its children (touch_walk), so the scan from the oldest
 * entry reaches a parent after the children whose eviction may make it a leaf. */
int srv_prefix_evict(srv_prefix *p, int n)
{
    int done = 0;
    for (int32_t i = p->tail; i >= 0 && done < n;) {
        int32_t prev = p->e[i].prev;
        if (p->e[i].children == 0 && core_kv_block_refs(p->kv, p->e[i].block) == 1) {
            drop(p, i);
            done++;
        }
        i = prev;
    }
    p->st.evicted += (uint64_t)done;
    return done;
}

void srv_prefix_clear(srv_prefix *p)
{
    while (p->tail >= 0) {
        /* leaves first, so every drop finds its parent alive */
        int32_t i = p->tail; /* the oldest entry is a leaf: its children would be older */
        while (i >= 0 && p->e[i].children > 0)
            i = p->e[i].prev;
        if (i < 0)
            break;
        drop(p, i);
    }
}

void srv_prefix_stats_get(const srv_prefix *p, srv_prefix_stats *out)
{
    *out = p->st;
    out->entries = p->n;
}
