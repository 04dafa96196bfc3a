/* The registry on a real directory tree: ids and chains, root confinement (.., absolute paths,
 * symlinks that leave the root), loads on the libuv pool, versions on change, a failed reload
 * keeping the good version, deletion while in use, LRU eviction and pinning. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "adapter_testutil.h"
#include "adapters/registry.h"
#include "tests/test.h"

#define BIT(l, m) (1ull << ((l)*CORE_MOD_COUNT + (m)))

static const char *cfg_json =
    "{\"r\":4,\"lora_alpha\":8,\"target_modules\":[\"q_proj\",\"v_proj\"]}";
static const uint64_t qv_mask =
    BIT(0, CORE_MOD_Q) | BIT(0, CORE_MOD_V) | BIT(1, CORE_MOD_Q) | BIT(1, CORE_MOD_V);

typedef struct fixture {
    char root[128];
    char outside[128]; /* holds the target of a symlink that leaves the root */
    core_config cfg;
    uv_loop_t loop;
    adapter_registry *reg;
} fixture;

static int put(fixture *f, const char *id, uint32_t seed)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", f->root, id);
    return tu_write_peft(dir, cfg_json, &f->cfg, qv_mask, 4, "F16", seed);
}

static int setup(fixture *f, size_t cache_bytes)
{
    memset(f, 0, sizeof *f);
    snprintf(f->root, sizeof f->root, "%s", tu_tmpdir());
    f->cfg = tu_config();
    if (put(f, "fr", 1) || put(f, "fr/legal/alice", 2) || put(f, "de", 3) ||
        put(f, "de/medical", 4))
        return -1;
    /* A symlink inside the root (allowed) and one leaving it (ignored). */
    char p[512];
    const char *outside = f->outside;
    snprintf(f->outside, sizeof f->outside, "%s", tu_tmpdir());
    snprintf(p, sizeof p, "%s/evil", outside);
    if (tu_write_peft(p, cfg_json, &f->cfg, qv_mask, 4, "F16", 5))
        return -1;
    snprintf(p, sizeof p, "%s/evil", f->root);
    char target[256];
    snprintf(target, sizeof target, "%s/evil", outside);
    if (symlink(target, p))
        return -1;
    snprintf(p, sizeof p, "%s/fr_alias", f->root);
    if (symlink("fr", p))
        return -1;
    uv_loop_init(&f->loop);
    adapter_registry_opts o = {.root = f->root,
                               .cfg = &f->cfg,
                               .cache_bytes = cache_bytes,
                               .loop = &f->loop,
                               .rescan_ms = -1,
                               .watch = false};
    char err[256];
    f->reg = adapter_registry_new(&o, err, sizeof err);
    if (!f->reg)
        printf("    registry: %s\n", err);
    return f->reg ? 0 : -1;
}

static void teardown(fixture *f)
{
    adapter_registry_free(f->reg);
    uv_loop_close(&f->loop);
    tu_rmrf(f->root);
    if (f->outside[0])
        tu_rmrf(f->outside);
}

static int acquire(fixture *f, const char *select, adapter_set **set, char *err, size_t errlen)
{
    adapter_selection sel;
    int rc = adapter_registry_resolve(f->reg, select, NULL, 0, &sel, err, errlen);
    if (rc)
        return rc;
    return adapter_registry_acquire_wait(f->reg, &sel, set, err, errlen);
}

TEST(registry_ids_chains_and_confinement)
{
    fixture f;
    CHECK(setup(&f, 0) == 0);
    char err[256];
    adapter_selection sel;
    CHECK_EQ_INT(adapter_registry_resolve(f.reg, "fr/legal/alice", NULL, 0, &sel, err, sizeof err),
                 0);
    CHECK_EQ_INT(sel.n, 2); /* fr/legal is a namespace: the chain is fr, fr/legal/alice */
    CHECK_EQ_STR(sel.items[0].id, "fr");
    CHECK_EQ_STR(sel.items[1].id, "fr/legal/alice");
    CHECK_EQ_INT(adapter_registry_resolve(f.reg, "fr/legal", NULL, 0, &sel, err, sizeof err), 0);
    CHECK_EQ_INT(sel.n, 1);
    adapter_sel_item list[2] = {{"de/medical", 0.5f}, {"fr", -1.0f}};
    CHECK_EQ_INT(adapter_registry_resolve(f.reg, "de", list, 2, &sel, err, sizeof err), 0);
    CHECK_EQ_INT(sel.n, 3);
    CHECK_EQ_STR(sel.items[1].id, "de/medical");
    CHECK_NEAR(sel.items[1].weight, 0.5, 0);
    /* The alias symlink stays inside the root; the evil one leaves it and is not a node. */
    CHECK_EQ_INT(adapter_registry_resolve(f.reg, "fr_alias", NULL, 0, &sel, err, sizeof err), 0);
    CHECK_EQ_INT(adapter_registry_resolve(f.reg, "evil", NULL, 0, &sel, err, sizeof err), -ENOENT);
    static const char *const hostile[] = {"../etc", "/etc/passwd", "fr/../de", "fr//de", "fr/./de",
                                          "",       "a b",         "fr/",      ".",      "x\ny",
                                          "%2e%2e"};
    for (size_t i = 0; i < sizeof hostile / sizeof *hostile; i++) {
        int rc = adapter_registry_resolve(f.reg, hostile[i], NULL, 0, &sel, err, sizeof err);
        CHECK_MSG(rc == -EINVAL || rc == -ENOENT, "id '%s' gave %d", hostile[i], rc);
        CHECK_MSG(rc != -ENOENT || strstr(err, "unknown"), "'%s': %s", hostile[i], err);
    }
    CHECK_EQ_INT(adapter_registry_resolve(f.reg, "../etc", NULL, 0, &sel, err, sizeof err),
                 -EINVAL);
    CHECK_EQ_INT(adapter_registry_resolve(f.reg, "nope", NULL, 0, &sel, err, sizeof err), -ENOENT);
    adapter_sel_item ns[1] = {{"fr/legal", 1.0f}};
    CHECK_EQ_INT(adapter_registry_resolve(f.reg, NULL, ns, 1, &sel, err, sizeof err), -ENOENT);
    adapter_sel_item nanw[1] = {{"fr", NAN}};
    CHECK_EQ_INT(adapter_registry_resolve(f.reg, NULL, nanw, 1, &sel, err, sizeof err), -EINVAL);
    teardown(&f);
}

TEST(registry_loads_versions_and_failures)
{
    fixture f;
    CHECK(setup(&f, 0) == 0);
    char err[256];
    adapter_set *s1 = NULL, *s2 = NULL, *s3 = NULL;
    CHECK_MSG(acquire(&f, "fr/legal/alice", &s1, err, sizeof err) == 0, "%s", err);
    CHECK_EQ_INT(s1->n, 2);
    uint64_t v1 = s1->items[0].a->hash;
    adapter_registry_stats st;
    adapter_registry_stats_get(f.reg, &st);
    CHECK_EQ_INT(st.resident, 2);
    CHECK_EQ_INT(st.loads, 2);

    /* Replace fr on disk: a rescan loads a new version; s1 keeps the old one. */
    CHECK(put(&f, "fr", 77) == 0);
    adapter_registry_rescan(f.reg);
    CHECK(acquire(&f, "fr", &s2, err, sizeof err) == 0);
    /* The old version serves until the new one is published; run until it is. */
    for (int i = 0; i < 200 && s2->items[0].a->hash == v1; i++) {
        adapter_set_free(s2);
        uv_run(&f.loop, UV_RUN_ONCE);
        CHECK(acquire(&f, "fr", &s2, err, sizeof err) == 0);
    }
    CHECK_MSG(s2->items[0].a->hash != v1, "no new version after the file changed");
    CHECK_EQ_INT(s1->items[0].a->hash, v1); /* in flight: untouched */

    /* A broken replacement: the load fails, the good version stays and the reason is kept. */
    char p[512];
    snprintf(p, sizeof p, "%s/fr/adapter_model.safetensors", f.root);
    CHECK(truncate(p, 100) == 0);
    adapter_registry_rescan(f.reg);
    while (adapter_registry_acquire(f.reg, &(adapter_selection){1, {{"fr", 1.0f}}}, &s3, err,
                                    sizeof err) == 0) {
        adapter_node_info *info;
        size_t n;
        adapter_registry_list(f.reg, &info, &n);
        bool done = false;
        for (size_t i = 0; i < n; i++)
            if (!strcmp(info[i].id, "fr"))
                done = info[i].error[0] != 0;
        free(info);
        CHECK(s3->items[0].a->hash == s2->items[0].a->hash);
        adapter_set_free(s3);
        s3 = NULL;
        if (done)
            break;
        uv_run(&f.loop, UV_RUN_ONCE);
    }
    adapter_node_info *info;
    size_t n;
    CHECK(adapter_registry_list(f.reg, &info, &n) == 0);
    int found = 0;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(info[i].id, "fr"))
            continue;
        found = 1;
        CHECK_EQ_STR(adapter_state_name(info[i].state), "ready");
        CHECK_MSG(strstr(info[i].error, "safetensors"), "error: '%s'", info[i].error);
        CHECK_EQ_INT(info[i].load_failures, 1);
    }
    free(info);
    CHECK(found);

    /* Delete alice while s1 uses it: new requests get ENOENT, s1 still works and frees. */
    char dir[512];
    snprintf(dir, sizeof dir, "%s/fr/legal/alice/adapter_config.json", f.root);
    CHECK(unlink(dir) == 0);
    snprintf(dir, sizeof dir, "%s/fr/legal/alice/adapter_model.safetensors", f.root);
    CHECK(unlink(dir) == 0);
    adapter_registry_rescan(f.reg);
    adapter_selection sel = {1, {{"fr/legal/alice", 1.0f}}};
    CHECK_EQ_INT(adapter_registry_acquire(f.reg, &sel, &s3, err, sizeof err), -ENOENT);
    CHECK(s1->items[1].a->n_mods == 4);
    adapter_set_free(s1);
    adapter_set_free(s2);
    teardown(&f);
}

TEST(registry_lru_eviction_and_pinning)
{
    fixture f;
    /* Each adapter: 2 layers x (q: 4*(576+576) + v: 4*(576+192)) f16 values = 30720 bytes;
     * the budget holds one. */
    const size_t one = 30720;
    CHECK(setup(&f, one) == 0);
    char err[256];
    adapter_set *s = NULL, *s2 = NULL;
    CHECK(acquire(&f, "fr", &s, err, sizeof err) == 0);
    adapter_set_free(s);
    CHECK(adapter_registry_pin(f.reg, "fr", true, err, sizeof err) == 0);
    /* A chain larger than the budget still loads whole: members in use are never evicted. */
    CHECK(acquire(&f, "de/medical", &s, err, sizeof err) == 0);
    CHECK_EQ_INT(s->n, 2);
    adapter_registry_stats st;
    adapter_registry_stats_get(f.reg, &st);
    CHECK_EQ_INT(st.resident, 3);
    CHECK_EQ_INT(st.evictions, 0);
    adapter_set_free(s);
    /* The next acquire evicts the unused ones, least recently used first, never the pinned. */
    CHECK(acquire(&f, "fr/legal/alice", &s2, err, sizeof err) == 0);
    adapter_registry_stats_get(f.reg, &st);
    CHECK_EQ_INT(st.evictions, 2);
    CHECK_EQ_INT(st.resident, 2);
    CHECK_EQ_INT(st.resident_bytes, 2 * one);
    adapter_node_info *info;
    size_t n;
    CHECK(adapter_registry_list(f.reg, &info, &n) == 0);
    int seen = 0;
    for (size_t i = 0; i < n; i++) {
        if (!strcmp(info[i].id, "fr"))
            seen += info[i].state == ADAPTER_READY && info[i].pinned && info[i].in_use == 1;
        if (!strcmp(info[i].id, "de"))
            seen += info[i].state == ADAPTER_UNLOADED && info[i].evictions == 1;
        if (!strcmp(info[i].id, "de/medical"))
            seen += info[i].state == ADAPTER_UNLOADED && info[i].evictions == 1;
        if (!strcmp(info[i].id, "fr/legal/alice"))
            seen += info[i].state == ADAPTER_READY && info[i].bytes == one;
        if (!strcmp(info[i].id, "fr/legal"))
            seen += info[i].state == ADAPTER_NAMESPACE;
    }
    free(info);
    CHECK_EQ_INT(seen, 5);
    adapter_set_free(s2);
    CHECK(adapter_registry_unload(f.reg, "fr", err, sizeof err) == 0);
    CHECK_EQ_INT(adapter_registry_unload(f.reg, "fr/legal", err, sizeof err), -EINVAL);
    CHECK_EQ_INT(adapter_registry_unload(f.reg, "zz", err, sizeof err), -ENOENT);
    teardown(&f);
}

static int n_loaded;
static void count_loaded(void *ud, const char *id, bool ok)
{
    (void)ud;
    (void)id;
    n_loaded += ok;
}

static void stop_loop(uv_timer_t *t)
{
    uv_stop(t->loop);
}

/* A file copied into the tree is found by the fs watcher, without an explicit rescan. */
TEST(registry_watcher_sees_new_adapters)
{
    fixture f;
    memset(&f, 0, sizeof f);
    snprintf(f.root, sizeof f.root, "%s", tu_tmpdir());
    f.cfg = tu_config();
    CHECK(put(&f, "fr", 1) == 0);
    uv_loop_init(&f.loop);
    n_loaded = 0;
    adapter_registry_opts o = {.root = f.root,
                               .cfg = &f.cfg,
                               .loop = &f.loop,
                               .rescan_ms = -1,
                               .watch = true,
                               .on_loaded = count_loaded};
    char err[256];
    f.reg = adapter_registry_new(&o, err, sizeof err);
    CHECK(f.reg != NULL);
    CHECK(put(&f, "it", 9) == 0);
    adapter_selection sel;
    int rc = -ENOENT;
    uv_timer_t guard;
    uv_timer_init(&f.loop, &guard);
    for (int i = 0; i < 100 && rc == -ENOENT; i++) {
        uv_timer_start(&guard, stop_loop, 50, 0);
        uv_run(&f.loop, UV_RUN_ONCE);
        rc = adapter_registry_resolve(f.reg, "it", NULL, 0, &sel, err, sizeof err);
    }
    uv_close((uv_handle_t *)&guard, NULL);
    CHECK_MSG(rc == 0, "the watcher did not pick up a new adapter: %s", err);
    adapter_set *s = NULL;
    CHECK(adapter_registry_acquire_wait(f.reg, &sel, &s, err, sizeof err) == 0);
    CHECK_EQ_INT(n_loaded, 1);
    adapter_set_free(s);
    teardown(&f);
}
