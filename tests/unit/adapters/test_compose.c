/* Tests for adapters/compose.c: lora sets and the per-batch plan, on a real PEFT adapter. */
#include <stdio.h>
#include <stdlib.h>

#include "adapters/compose.h"
#include "tests/shared_model.h"
#include "tests/test.h"

/* The same adapter named twice (a chain plus one of its nodes, or a list with a duplicate) is one
 * item with the summed weight, so a plan never holds a row twice in one group. */
TEST(compose_set_merges_duplicate_adapters)
{
    TEST_NEED_MODEL();
    core_model *m = test_shared_model();
    CHECK(m != NULL);
    char err[256];
    adapter *a = adapter_load("tests/golden/fixtures/adapters/qv_r4", &m->cfg, err, sizeof err);
    adapter *b =
        adapter_load("tests/golden/fixtures/adapters/regex_gate_up", &m->cfg, err, sizeof err);
    CHECK(a && b);
    adapter_set_item items[] = {{a, 1.0f}, {b, 0.5f}, {a, 0.25f}};
    adapter_set *dup = adapter_set_new(items, 3);
    adapter_set_item merged[] = {{a, 1.25f}, {b, 0.5f}};
    adapter_set *one = adapter_set_new(merged, 2);
    CHECK(dup && one);
    CHECK_EQ_INT(dup->n, 2);
    CHECK(dup->items[0].a == a && dup->items[0].weight == 1.25f);
    CHECK(dup->items[1].a == b && dup->items[1].weight == 0.5f);
    CHECK(dup->key == one->key);
    CHECK_EQ_INT(a->refs, 3); /* ours, dup's, one's */

    /* two rows on the duplicate set: every group holds each row once */
    const adapter_set *rows[2] = {dup, dup};
    adapter_plan *p = adapter_plan_new();
    const core_lora_plan *plan = NULL;
    CHECK(adapter_plan_build(p, m->cfg.n_layer, 2, rows, &plan) == 0);
    int worst = 0;
    for (int g = 0; plan && g < plan->n_groups; g++)
        worst = plan->groups[g].n_rows > worst ? plan->groups[g].n_rows : worst;
    printf("    %d groups, at most %d rows each (batch of 2)\n", plan ? plan->n_groups : 0, worst);
    CHECK_EQ_INT(worst, 2);
    adapter_plan_free(p);
    adapter_set_free(dup);
    adapter_set_free(one);
    adapter_unref(a);
    adapter_unref(b);
}
