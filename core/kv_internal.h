/* core-internal view of the KV cache, shared by kv.c and forward.c. */
#ifndef ADAPTREE_CORE_KV_INTERNAL_H
#define ADAPTREE_CORE_KV_INTERNAL_H

#include "model.h"

typedef struct core_kv_slot {
    int cap;  /* positions allocated */
    int n;    /* positions filled: 0..n-1 are valid */
    float *k; /* (n_layer, cap, kv_dim) */
    float *v; /* (n_layer, cap, kv_dim) */
} core_kv_slot;

struct core_kv {
    int n_slots;
    int n_ctx;
    int n_layer;
    int kv_dim;
    size_t bytes;
    core_kv_slot *slots; /* (n_slots) */
};

/* Ensures the slot can hold n positions: 0, -ERANGE past n_ctx, -ENOMEM. */
int core__kv_reserve(core_kv *kv, int slot, int n);

#endif
