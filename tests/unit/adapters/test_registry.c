/* The registry on a real directory tree: ids and chains, root confinement (.., absolute paths,
 * symlinks that leave the root), loads on the libuv pool, versions on change, a failed reload
 * keeping the good version, deletion while in use, LRU eviction and pinning. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
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

/* Runs the loop until every adapter node is described for its current files. */
static int wait_described(fixture *f)
{
    adapter_registry_stats st;
    for (int i = 0; i < 1000; i++) {
        adapter_registry_stats_get(f->reg, &st);
        if (st.probing == 0)
            return 0;
        uv_run(&f->loop, UV_RUN_ONCE);
    }
    printf("    %d nodes still not described\n", st.probing);
    return -1;
}

/* The listing entry of id (copied into *out); 0, or -1 when there is none. */
static int node_info(fixture *f, const char *id, adapter_node_info *out)
{
    adapter_node_info *info;
    size_t n;
    int rc = -1;
    if (adapter_registry_list(f->reg, &info, &n))
        return -1;
    for (size_t i = 0; i < n && rc; i++)
        if (!strcmp(info[i].id, id)) {
            *out = info[i];
            rc = 0;
        }
    free(info);
    return rc;
}

static int write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fputs(text, f);
    return fclose(f);
}

/* Unloaded nodes are described from their files: format, rank, alpha, rsLoRA, targets and the
 * bytes their weights will take, which equal the loaded version's; files that cannot be
 * described give unknown values and the load still says why. */
TEST(registry_describes_unloaded_nodes)
{
    fixture f;
    CHECK(setup(&f, 0) == 0);
    char dir[512], err[256];
    snprintf(dir, sizeof dir, "%s/rs", f.root);
    CHECK(tu_write_peft_layers(dir,
                               "{\"r\":8,\"lora_alpha\":16,\"use_rslora\":true,"
                               "\"target_modules\":[\"k_proj\",\"gate_proj\",\"down_proj\"],"
                               "\"rank_pattern\":{\"down_proj\":8}}",
                               &f.cfg,
                               (1u << CORE_MOD_K) | (1u << CORE_MOD_GATE) | (1u << CORE_MOD_DOWN),
                               8, "BF16", 6) == 0);
    snprintf(dir, sizeof dir, "%s/broken", f.root);
    CHECK(put(&f, "broken", 7) == 0);
    snprintf(dir, sizeof dir, "%s/broken/adapter_config.json", f.root);
    CHECK(write_file(dir, "{\"r\":4,\"lora_alpha\":") == 0);
    snprintf(dir, sizeof dir, "%s/wrong_rank", f.root);
    CHECK(tu_write_peft(dir,
                        "{\"r\":8,\"lora_alpha\":8,\"target_modules\":[\"q_proj\",\"v_proj\"]}",
                        &f.cfg, qv_mask, 4, "F16", 8) == 0);
    adapter_registry_rescan(f.reg);
    CHECK(wait_described(&f) == 0);

    adapter_node_info n;
    CHECK(node_info(&f, "fr", &n) == 0);
    CHECK_EQ_INT(n.state, ADAPTER_UNLOADED);
    CHECK_EQ_INT(n.format, ADAPTER_PEFT);
    CHECK_EQ_INT(n.r, 4);
    CHECK_NEAR(n.alpha, 8, 0);
    CHECK(!n.rslora);
    CHECK_EQ_INT(n.targets, (1u << CORE_MOD_Q) | (1u << CORE_MOD_V));
    CHECK_EQ_INT(n.weight_bytes, 30720); /* 2 layers x 4 x ((576 + 576) + (576 + 192)) x 2 */
    CHECK_EQ_INT(n.bytes, 0);
    CHECK(node_info(&f, "rs", &n) == 0);
    CHECK_EQ_INT(n.format, ADAPTER_PEFT);
    CHECK_EQ_INT(n.r, 8);
    CHECK_NEAR(n.alpha, 16, 0);
    CHECK(n.rslora);
    CHECK_EQ_INT(n.targets, (1u << CORE_MOD_K) | (1u << CORE_MOD_GATE) | (1u << CORE_MOD_DOWN));
    size_t rs_expected = n.weight_bytes;
    CHECK_EQ_INT(rs_expected, 2 * 8 * ((576 + 192) + (576 + 1536) + (1536 + 576)) * 2);
    CHECK(node_info(&f, "fr/legal", &n) == 0); /* a namespace */
    CHECK_EQ_INT(n.format, 0);
    CHECK_EQ_INT(n.weight_bytes, 0);
    static const char *const unknown[] = {"broken", "wrong_rank"};
    for (int i = 0; i < 2; i++) {
        CHECK(node_info(&f, unknown[i], &n) == 0);
        CHECK_MSG(n.state == ADAPTER_UNLOADED && n.format == 0 && n.r == 0 && n.alpha == 0 &&
                      n.targets == 0 && n.weight_bytes == 0 && !n.error[0],
                  "%s: state %d format %d r %d alpha %g targets %#x weight_bytes %zu error '%s'",
                  unknown[i], n.state, n.format, n.r, (double)n.alpha, n.targets, n.weight_bytes,
                  n.error);
    }

    /* Loaded, the listing shows the loaded version, whose bytes are what was expected. */
    adapter_set *s = NULL;
    CHECK_MSG(acquire(&f, "rs", &s, err, sizeof err) == 0, "%s", err);
    CHECK_EQ_INT(s->items[0].a->bytes, rs_expected);
    CHECK(node_info(&f, "rs", &n) == 0);
    CHECK_EQ_INT(n.state, ADAPTER_READY);
    CHECK_EQ_INT(n.bytes, rs_expected);
    CHECK_EQ_INT(n.weight_bytes, rs_expected);
    adapter_set_free(s);
    CHECK(acquire(&f, "de", &s, err, sizeof err) == 0);
    CHECK_EQ_INT(s->items[0].a->bytes, 30720);
    adapter_set_free(s);
    CHECK_EQ_INT(acquire(&f, "broken", &s, err, sizeof err), -EIO);
    CHECK_MSG(strstr(err, "invalid JSON"), "%s", err);
    CHECK(node_info(&f, "broken", &n) == 0);
    CHECK_EQ_INT(n.state, ADAPTER_FAILED);
    CHECK_EQ_INT(n.format, 0);
    CHECK_EQ_INT(acquire(&f, "wrong_rank", &s, err, sizeof err), -EIO);
    CHECK_MSG(strstr(err, "rank 8"), "%s", err);

    /* An unchanged tree is not probed again; a changed node is, and then describes its new
     * files (fixed broken: known values; fr replaced by rank 8: new values). */
    adapter_registry_rescan(f.reg);
    adapter_registry_stats st;
    adapter_registry_stats_get(f.reg, &st);
    CHECK_EQ_INT(st.probing, 0);
    CHECK(put(&f, "broken", 7) == 0);
    snprintf(dir, sizeof dir, "%s/fr", f.root);
    CHECK(tu_write_peft(dir,
                        "{\"r\":8,\"lora_alpha\":4,\"target_modules\":[\"q_proj\",\"v_proj\"]}",
                        &f.cfg, qv_mask, 8, "F32", 9) == 0);
    adapter_registry_rescan(f.reg);
    adapter_registry_stats_get(f.reg, &st);
    CHECK_EQ_INT(st.probing, 3);         /* broken, fr and fr_alias (its symlink) */
    CHECK(node_info(&f, "fr", &n) == 0); /* new files, not described yet: unknown */
    CHECK_EQ_INT(n.format, 0);
    CHECK(wait_described(&f) == 0);
    CHECK(node_info(&f, "broken", &n) == 0);
    CHECK_EQ_INT(n.format, ADAPTER_PEFT);
    CHECK_EQ_INT(n.weight_bytes, 30720);
    CHECK(node_info(&f, "fr", &n) == 0);
    CHECK_EQ_INT(n.r, 8);
    CHECK_NEAR(n.alpha, 4, 0);
    CHECK_EQ_INT(n.weight_bytes, 4 * 30720); /* twice the rank, twice the element size */
    teardown(&f);
}

/* A GGUF-LoRA node (llama.cpp's converter output for SmolLM2-135M) is described from its header:
 * alpha from adapter.lora.alpha, rank from lora_a, targets from the tensor names. */
TEST(registry_describes_gguf_lora_nodes)
{
    fixture f;
    memset(&f, 0, sizeof f);
    snprintf(f.root, sizeof f.root, "%s", tu_tmpdir());
    f.cfg = tu_config();
    f.cfg.n_layer = 30;
    char p[512];
    snprintf(p, sizeof p, "%s/qv", f.root);
    CHECK(tu_mkdirs(p) == 0);
    snprintf(p, sizeof p, "cp tests/golden/fixtures/adapters/qv_r4.gguf %s/qv/adapter.gguf",
             f.root);
    CHECK(system(p) == 0);
    snprintf(p, sizeof p, "%s/cut", f.root);
    CHECK(tu_mkdirs(p) == 0);
    snprintf(p, sizeof p,
             "head -c 3000 tests/golden/fixtures/adapters/qv_r4.gguf > %s/cut/adapter.gguf",
             f.root);
    CHECK(system(p) == 0);
    uv_loop_init(&f.loop);
    adapter_registry_opts o = {.root = f.root, .cfg = &f.cfg, .loop = &f.loop, .rescan_ms = -1};
    char err[256];
    f.reg = adapter_registry_new(&o, err, sizeof err);
    CHECK_MSG(f.reg, "%s", err);
    CHECK(wait_described(&f) == 0);
    adapter_node_info n;
    CHECK(node_info(&f, "qv", &n) == 0);
    CHECK_EQ_INT(n.state, ADAPTER_UNLOADED);
    CHECK_EQ_INT(n.format, ADAPTER_GGUF);
    CHECK_EQ_INT(n.r, 4);
    CHECK_NEAR(n.alpha, 8, 0);
    CHECK_EQ_INT(n.targets, (1u << CORE_MOD_Q) | (1u << CORE_MOD_V));
    CHECK_EQ_INT(n.weight_bytes, 460800);
    CHECK(node_info(&f, "cut", &n) == 0);
    CHECK_EQ_INT(n.format, 0);
    CHECK_EQ_INT(n.weight_bytes, 0);
    adapter_set *s = NULL;
    CHECK_MSG(acquire(&f, "qv", &s, err, sizeof err) == 0, "%s", err);
    CHECK_EQ_INT(s->items[0].a->bytes, 460800);
    adapter_set_free(s);
    CHECK(node_info(&f, "qv", &n) == 0);
    CHECK_EQ_INT(n.bytes, 460800);
    teardown(&f);
}

/* An admin load shows "loading" at once (the loop starts it later), then "ready". */
TEST(registry_admin_load_is_loading_at_once)
{
    fixture f;
    CHECK(setup(&f, 0) == 0);
    char err[256];
    CHECK(adapter_registry_load(f.reg, "de", err, sizeof err) == 0);
    adapter_node_info n;
    CHECK(node_info(&f, "de", &n) == 0);
    CHECK_EQ_STR(adapter_state_name(n.state), "loading");
    adapter_registry_stats st;
    adapter_registry_stats_get(f.reg, &st);
    CHECK_EQ_INT(st.loading, 1);
    for (int i = 0; i < 200 && n.state == ADAPTER_LOADING; i++) {
        uv_run(&f.loop, UV_RUN_ONCE);
        CHECK(node_info(&f, "de", &n) == 0);
    }
    CHECK_EQ_STR(adapter_state_name(n.state), "ready");
    /* Asked again while resident: the old version serves, reloading. */
    CHECK(adapter_registry_load(f.reg, "de", err, sizeof err) == 0);
    CHECK(node_info(&f, "de", &n) == 0);
    CHECK_EQ_STR(adapter_state_name(n.state), "ready");
    CHECK(n.reloading);
    CHECK(adapter_registry_unload(f.reg, "de", err, sizeof err) == 0);
    CHECK(node_info(&f, "de", &n) == 0);
    CHECK_EQ_STR(adapter_state_name(n.state), "unloaded");
    teardown(&f);
}

/* Overwrites a file in place again and again, as cp does (truncate, then write in chunks),
 * alternating two contents, until stop; the last write leaves v[0] whole. */
typedef struct rewriter {
    char path[600];
    unsigned char *v[2];
    size_t n[2];
    atomic_bool stop;
    int rounds;
} rewriter;

static void *rewrite_loop(void *arg)
{
    rewriter *w = arg;
    for (int k = 1; !atomic_load(&w->stop) || k % 2 == 0; k++) {
        int i = k % 2, fd = open(w->path, O_WRONLY | O_TRUNC);
        if (fd < 0)
            break;
        for (size_t at = 0; at < w->n[i];) {
            size_t chunk = w->n[i] - at < (64 << 10) ? w->n[i] - at : (64 << 10);
            ssize_t m = write(fd, w->v[i] + at, chunk);
            if (m <= 0)
                break;
            at += (size_t)m;
        }
        close(fd);
        w->rounds++;
        usleep(1000); /* a moment with whole files, so that some loads succeed */
    }
    return NULL;
}

static unsigned char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *p = malloc(n > 0 ? (size_t)n : 1);
    if (p && n > 0 && fread(p, 1, (size_t)n, f) != (size_t)n) {
        free(p);
        p = NULL;
    }
    fclose(f);
    *len = p ? (size_t)n : 0;
    return p;
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* An adapter overwritten in place while the registry loads and probes it over and over on the
 * pool (about a second): the process survives (with mapped files, a page past the new end of
 * the file raised SIGBUS), each load either gives a good version or fails with a message, and
 * once the writes stop the node loads the final files. */
TEST(registry_survives_files_overwritten_while_loading)
{
    fixture f;
    memset(&f, 0, sizeof f);
    snprintf(f.root, sizeof f.root, "%s", tu_tmpdir());
    snprintf(f.outside, sizeof f.outside, "%s", tu_tmpdir());
    f.cfg = tu_config();
    /* Two versions of a 5 MB adapter (every module, rank 64, f32). */
    static const char *cfg_all = "{\"r\":64,\"lora_alpha\":64,\"target_modules\":\"all-linear\"}";
    rewriter *w = calloc(1, sizeof *w);
    char dir[512], p[600];
    for (int i = 0; i < 2; i++) {
        snprintf(dir, sizeof dir, "%s/v%d", f.outside, i);
        CHECK(tu_write_peft_layers(dir, cfg_all, &f.cfg, (1u << CORE_MOD_COUNT) - 1, 64, "F32",
                                   10 + (uint32_t)i) == 0);
        snprintf(p, sizeof p, "%s/adapter_model.safetensors", dir);
        w->v[i] = slurp(p, &w->n[i]);
        CHECK(w->v[i] && w->n[i] > (4u << 20));
    }
    snprintf(dir, sizeof dir, "%s/fr", f.root);
    CHECK(tu_write_peft_layers(dir, cfg_all, &f.cfg, (1u << CORE_MOD_COUNT) - 1, 64, "F32", 10) ==
          0);
    snprintf(w->path, sizeof w->path, "%s/adapter_model.safetensors", dir);
    uv_loop_init(&f.loop);
    adapter_registry_opts o = {.root = f.root, .cfg = &f.cfg, .loop = &f.loop, .rescan_ms = -1};
    char err[256];
    f.reg = adapter_registry_new(&o, err, sizeof err);
    CHECK_MSG(f.reg, "%s", err);

    pthread_t th;
    atomic_init(&w->stop, false);
    CHECK(pthread_create(&th, NULL, rewrite_loop, w) == 0);
    int loads = 0, changed = 0, other = 0;
    char other_err[256] = "";
    adapter_node_info n;
    for (double t0 = now_s(); now_s() - t0 < 1.0 && loads < 2000; loads++) {
        adapter_registry_rescan(f.reg); /* new signatures: probes, and a reload if resident */
        if (adapter_registry_load(f.reg, "fr", err, sizeof err))
            break;
        do {
            uv_run(&f.loop, UV_RUN_ONCE);
        } while (node_info(&f, "fr", &n) == 0 && (n.state == ADAPTER_LOADING || n.reloading));
        if (!n.error[0])
            continue;
        if (strstr(n.error, "file changed while reading, will retry"))
            changed++;
        else
            snprintf(other_err, sizeof other_err, "%s", n.error), other++;
    }
    atomic_store(&w->stop, true);
    pthread_join(th, NULL);
    printf("    %d rewrites, %d loads: %d failed as changed while reading, %d otherwise (%s)\n",
           w->rounds, loads, changed, other, other ? other_err : "-");

    /* The writes are over: the node loads the final files (v[0]), as a fresh load does. */
    adapter_registry_rescan(f.reg);
    CHECK(adapter_registry_load(f.reg, "fr", err, sizeof err) == 0);
    do {
        uv_run(&f.loop, UV_RUN_ONCE);
    } while (node_info(&f, "fr", &n) == 0 && (n.state == ADAPTER_LOADING || n.reloading));
    CHECK(wait_described(&f) == 0);
    CHECK(node_info(&f, "fr", &n) == 0);
    adapter *a = adapter_load(dir, &f.cfg, err, sizeof err);
    CHECK_MSG(a, "%s", err);
    uint64_t want = a->hash;
    size_t bytes = a->bytes;
    adapter_unref(a);
    CHECK_MSG(n.state == ADAPTER_READY && !n.error[0] && n.version == want &&
                  n.weight_bytes == bytes && n.format == ADAPTER_PEFT,
              "state %s error '%s' version %016llx (want %016llx)", adapter_state_name(n.state),
              n.error, (unsigned long long)n.version, (unsigned long long)want);
    CHECK(w->rounds > 2 && loads > 2);
    free(w->v[0]);
    free(w->v[1]);
    free(w);
    teardown(&f);
}
