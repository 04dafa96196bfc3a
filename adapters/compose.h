/* Composition: lora sets and the per-batch LoRA plan (docs/ARCHITECTURE.md §3).
 *
 * A lora set is an ordered list of (adapter, weight); a row applies every adapter of its set
 * additively, W x + Σ weight·scale·B·A x, which is PEFT's exact "cat" combination. The plan
 * builder groups the batch's rows by adapter and emits, for every (layer, module) an adapter
 * targets, one core_lora_group with those rows and their per-row scale (weight × the adapter's
 * module scale). Different ranks and dtypes mix freely.
 */
#ifndef ADAPTREE_ADAPTERS_COMPOSE_H
#define ADAPTREE_ADAPTERS_COMPOSE_H

#include <stdint.h>

#include "adapters/adapter.h"
#include "core/model/model.h"

typedef struct adapter_set_item {
    adapter *a;   /* a reference held by the set */
    float weight; /* the user's scale */
} adapter_set_item;

typedef struct adapter_set {
    int n;
    adapter_set_item *items;
    uint64_t key; /* hash of the items' content hashes and weights: equal sets, equal keys */
} adapter_set;

/* Makes a set of n items, taking a new reference on each adapter; items naming the same adapter
 * become one item whose weight is their sum. Returns NULL on no memory. */
adapter_set *adapter_set_new(const adapter_set_item *items, int n);
/* Drops the set's references and frees it; NULL is ignored. */
void adapter_set_free(adapter_set *s);

/* Reusable storage for plans; one per engine thread. */
typedef struct adapter_plan adapter_plan;

adapter_plan *adapter_plan_new(void);
void adapter_plan_free(adapter_plan *p);

/* Builds the plan of a batch of n_rows rows; row_sets[i] is row i's set (NULL or empty = base
 * only). *out points into p and stays valid until the next build or adapter_plan_free; it
 * borrows the adapters' weights, so the sets must outlive the forward call. Returns 0 or
 * -ENOMEM. */
int adapter_plan_build(adapter_plan *p, int n_layer, int n_rows, const adapter_set *const *row_sets,
                       const core_lora_plan **out);

#endif
