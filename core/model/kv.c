/* Per-sequence KV caches: a pool of slots, each a pair of (n_layer, cap, kv_dim) f32 (or f16)
 * arrays that grow geometrically up to n_ctx positions and are released when the sequence ends. */
#include "core/model/kv_internal.h"

#include "core/format/types.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

core_kv *core_kv_new(const core_config *cfg, int n_slots, int n_ctx, char *err, size_t errlen)
{
    if (n_slots <= 0 || n_slots > (1 << 16) || n_ctx <= 0 || n_ctx > (1 << 24)) {
        if (err && errlen)
            snprintf(err, errlen, "kv cache: bad size (%d slots, %d positions)", n_slots, n_ctx);
        return NULL;
    }
    core_kv *kv = calloc(1, sizeof *kv);
    if (kv)
        kv->slots = calloc((size_t)n_slots, sizeof *kv->slots);
    if (!kv || !kv->slots) {
        free(kv);
        if (err && errlen)
            snprintf(err, errlen, "kv cache: out of memory");
        return NULL;
    }
    kv->n_slots = n_slots;
    kv->n_ctx = n_ctx;
    kv->n_layer = cfg->n_layer;
    kv->kv_dim = cfg->n_head_kv * cfg->head_dim;
    kv->es = sizeof(float);
    return kv;
}

void core_kv_free(core_kv *kv)
{
    if (!kv)
        return;
    for (int s = 0; s < kv->n_slots; s++)
        core_kv_clear(kv, s);
    free(kv->slots);
    free(kv);
}

int core_kv_set_f16(core_kv *kv, int on)
{
    for (int s = 0; s < kv->n_slots; s++)
        if (kv->slots[s].cap)
            return -EBUSY;
    kv->f16 = on != 0;
    kv->es = on ? sizeof(uint16_t) : sizeof(float);
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

void core_kv_clear(core_kv *kv, int slot)
{
    if (slot < 0 || slot >= kv->n_slots)
        return;
    core_kv_slot *s = &kv->slots[slot];
    kv->bytes -= (size_t)s->cap * kv->n_layer * kv->kv_dim * 2 * kv->es;
    free(s->k);
    free(s->v);
    memset(s, 0, sizeof *s);
}

size_t core_kv_bytes(const core_kv *kv)
{
    return kv->bytes;
}

/* Grows a slot to hold at least n positions, keeping what it holds. */
int core__kv_reserve(core_kv *kv, int slot, int n)
{
    core_kv_slot *s = &kv->slots[slot];
    if (n <= s->cap)
        return 0;
    if (n > kv->n_ctx)
        return -ERANGE;
    int cap = s->cap ? s->cap : 64;
    while (cap < n)
        cap *= 2;
    if (cap > kv->n_ctx)
        cap = kv->n_ctx;
    size_t per = (size_t)kv->kv_dim;
    size_t total = (size_t)kv->n_layer * cap * per;
    char *k = malloc(total * kv->es);
    char *v = malloc(total * kv->es);
    if (!k || !v) {
        free(k);
        free(v);
        return -ENOMEM;
    }
    for (int l = 0; l < kv->n_layer && s->cap; l++) {
        size_t old = (size_t)l * s->cap * per * kv->es, now = (size_t)l * cap * per * kv->es;
        memcpy(k + now, (const char *)s->k + old, (size_t)s->n * per * kv->es);
        memcpy(v + now, (const char *)s->v + old, (size_t)s->n * per * kv->es);
    }
    free(s->k);
    free(s->v);
    kv->bytes += (size_t)(cap - s->cap) * kv->n_layer * per * 2 * kv->es;
    s->k = k;
    s->v = v;
    s->cap = cap;
    return 0;
}

int core_kv_fill_random(core_kv *kv, int slot, int n, uint32_t seed)
{
    if (slot < 0 || slot >= kv->n_slots || n < 0)
        return -EINVAL;
    int rc = core__kv_reserve(kv, slot, n);
    if (rc)
        return rc;
    core_kv_slot *sl = &kv->slots[slot];
    size_t count = (size_t)kv->n_layer * (size_t)sl->cap * (size_t)kv->kv_dim;
    uint32_t x = seed;
    for (size_t i = 0; i < count; i++) {
        x = x * 1664525u + 1013904223u;
        float v = (float)((int32_t)x >> 8) / (float)(1 << 23);
        if (kv->f16) {
            ((uint16_t *)sl->k)[i] = core_fp32_to_fp16(v);
            ((uint16_t *)sl->v)[i] = core_fp32_to_fp16(v * 0.5f);
        } else {
            ((float *)sl->k)[i] = v;
            ((float *)sl->v)[i] = v * 0.5f;
        }
    }
    sl->n = n;
    return 0;
}
