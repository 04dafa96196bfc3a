/* Lora sets and the plan builder: rows grouped by distinct adapter, one core_lora_group per
 * (adapter, layer, module). */
#include "adapters/compose.h"
#include "core/base.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/adapter_internal.h"

adapter_set *adapter_set_new(const adapter_set_item *items, int n)
{
    adapter_set *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->items = calloc(n > 0 ? (size_t)n : 1, sizeof *s->items);
    if (!s->items) {
        free(s);
        return NULL;
    }
    /* The same adapter twice (a chain plus one of its own nodes, or a list naming a node twice)
     * is one item with the weights summed: W x + (w1 + w2) s B A x is what both terms add up
     * to, and the plan then holds every row at most once per group. */
    int m = 0;
    for (int i = 0; i < n; i++) {
        int k = 0;
        while (k < m && s->items[k].a != items[i].a)
            k++;
        if (k < m) {
            s->items[k].weight += items[i].weight;
            continue;
        }
        s->items[m].a = adapter_ref(items[i].a);
        s->items[m++].weight = items[i].weight;
    }
    s->n = m;
    uint64_t key = CORE_HASH_INIT;
    for (int i = 0; i < m; i++) {
        key = core_hash64(key, &s->items[i].a->hash, sizeof s->items[i].a->hash);
        key = core_hash64(key, &s->items[i].weight, sizeof s->items[i].weight);
    }
    s->key = key;
    return s;
}

void adapter_set_free(adapter_set *s)
{
    if (!s)
        return;
    for (int i = 0; i < s->n; i++)
        adapter_unref(s->items[i].a);
    free(s->items);
    free(s);
}

/* One distinct adapter of the batch with the rows that use it. */
typedef struct plan_use {
    const adapter *a;
    int n_rows;
    int first; /* offset of its rows / weights in the shared arrays */
} plan_use;

struct adapter_plan {
    core_lora_plan plan;
    plan_use *uses;
    size_t cap_uses;
    int32_t *rows;  /* rows of every use, back to back */
    float *weights; /* the user weight of each of those rows */
    size_t cap_rows, cap_weights;
    core_lora_group *groups;
    size_t cap_groups;
    float *scales; /* per group, per row */
    size_t cap_scales;
};

adapter_plan *adapter_plan_new(void)
{
    return calloc(1, sizeof(adapter_plan));
}

void adapter_plan_free(adapter_plan *p)
{
    if (!p)
        return;
    free(p->uses);
    free(p->rows);
    free(p->weights);
    free(p->groups);
    free(p->scales);
    free(p);
}

/* Finds or adds the use of adapter a. */
static int use_index(adapter_plan *p, int *n_uses, const adapter *a)
{
    for (int u = 0; u < *n_uses; u++)
        if (p->uses[u].a == a)
            return u;
    if (core_grow(&p->uses, &p->cap_uses, (size_t)*n_uses + 1, sizeof *p->uses))
        return -ENOMEM;
    p->uses[*n_uses] = (plan_use){.a = a};
    return (*n_uses)++;
}

int adapter_plan_build(adapter_plan *p, int n_layer, int n_rows, const adapter_set *const *row_sets,
                       const core_lora_plan **out)
{
    /* Pass 1: distinct adapters and how many rows use each. */
    int n_uses = 0;
    size_t n_pairs = 0;
    for (int i = 0; i < n_rows; i++) {
        const adapter_set *s = row_sets ? row_sets[i] : NULL;
        for (int k = 0; s && k < s->n; k++) {
            int u = use_index(p, &n_uses, s->items[k].a);
            if (u < 0)
                return -ENOMEM;
            p->uses[u].n_rows++;
            n_pairs++;
        }
    }
    /* Pass 2: rows and weights per use, contiguous. A row listing the same adapter twice gets
     * two entries, which add up, as the math wants. */
    if (core_grow(&p->rows, &p->cap_rows, n_pairs, sizeof *p->rows) ||
        core_grow(&p->weights, &p->cap_weights, n_pairs, sizeof *p->weights))
        return -ENOMEM;
    size_t n_groups = 0, n_scales = 0;
    int at = 0;
    for (int u = 0; u < n_uses; u++) {
        p->uses[u].first = at;
        at += p->uses[u].n_rows;
        p->uses[u].n_rows = 0;
        n_groups += (size_t)p->uses[u].a->n_mods;
    }
    for (int i = 0; i < n_rows; i++) {
        const adapter_set *s = row_sets ? row_sets[i] : NULL;
        for (int k = 0; s && k < s->n; k++) {
            plan_use *pu = &p->uses[use_index(p, &n_uses, s->items[k].a)];
            p->rows[pu->first + pu->n_rows] = i;
            p->weights[pu->first + pu->n_rows] = s->items[k].weight;
            pu->n_rows++;
        }
    }
    for (int u = 0; u < n_uses; u++)
        n_scales += (size_t)p->uses[u].a->n_mods * p->uses[u].n_rows;
    if (core_grow(&p->groups, &p->cap_groups, n_groups, sizeof *p->groups) ||
        core_grow(&p->scales, &p->cap_scales, n_scales, sizeof *p->scales))
        return -ENOMEM;
    /* Pass 3: one group per (use, layer, module). */
    size_t g = 0, sc = 0;
    for (int u = 0; u < n_uses; u++) {
        const plan_use *pu = &p->uses[u];
        const adapter *a = pu->a;
        for (int l = 0; l < n_layer && l < a->n_layer; l++) {
            for (int m = 0; m < CORE_MOD_COUNT; m++) {
                const adapter_mod *am = adapter_mod_at(a, l, m);
                if (!am->rank)
                    continue;
                float *scales = p->scales + sc;
                for (int r = 0; r < pu->n_rows; r++)
                    scales[r] = p->weights[pu->first + r] * am->scale;
                sc += (size_t)pu->n_rows;
                p->groups[g++] = (core_lora_group){.layer = l,
                                                   .module = m,
                                                   .dtype = a->dtype,
                                                   .A = am->A,
                                                   .Bt = am->Bt,
                                                   .rank = am->rank,
                                                   .n_rows = pu->n_rows,
                                                   .rows = p->rows + pu->first,
                                                   .scales = scales};
            }
        }
    }
    p->plan.n_groups = (int)g;
    p->plan.groups = p->groups;
    *out = &p->plan;
    return 0;
}
