/* core-internal view of the KV cache, shared by kv.c and forward.c. */
#ifndef ADAPTREE_CORE_MODEL_KV_INTERNAL_H
#define ADAPTREE_CORE_MODEL_KV_INTERNAL_H

#include "core/model/model.h"

typedef struct core_kv_slot {
    int cap; /* positions allocated */
    int n;   /* positions filled: 0..n-1 are valid */
    void *k; /* (n_layer, cap, kv_dim) of f32, or f16 (uint16_t) when the cache is f16 */
    void *v; /* (n_layer, cap, kv_dim) */
} core_kv_slot;

struct core_kv {
    int n_slots;
    int n_ctx;
    int n_layer;
    int kv_dim;
    int f16;   /* K and V stored as f16 (core_kv_set_f16) */
    size_t es; /* bytes per element: 4, or 2 when f16 */
    size_t bytes;
    core_kv_slot *slots; /* (n_slots) */
};

/* Ensures the slot can hold n positions: 0, -ERANGE past n_ctx, -ENOMEM. */
int core__kv_reserve(core_kv *kv, int slot, int n);

#endif
