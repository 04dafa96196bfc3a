/* The registry on a real directory tree: ids and chains, root confinement (.., absolute paths,
 * directory and file symlinks that leave the root, at listing and at open, and the check of what
 * a confined open actually opened), loads on the libuv pool, versions on change, a failed reload
 * keeping the good version, deletion while in use, LRU eviction and pinning, and errors that name
 * files relative to the root. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "adapter_testutil.h"
#include "adapters/adapter_internal.h"
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

typedef void (*on_loaded_fn)(void *ud, const char *id, bool ok, const char *err,
                             const char *abs_dir);
static int open_registry(fixture *f, size_t cache_bytes, on_loaded_fn on_loaded);

/* The tree of most tests: fr, fr/legal (a namespace), fr/legal/alice, de, de/medical, fr_alias
 * (a symlink to fr) and evil (a symlink to a directory outside the root). */
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
    return open_registry(f, cache_bytes, NULL);
}

/* Opens the registry over f->root (no watcher, no periodic rescan); 0 or -1. */
static int open_registry(fixture *f, size_t cache_bytes, on_loaded_fn on_loaded)
{
    uv_loop_init(&f->loop);
    adapter_registry_opts o = {.root = f->root,
                               .cfg = &f->cfg,
                               .cache_bytes = cache_bytes,
                               .loop = &f->loop,
                               .rescan_ms = -1,
                               .watch = false,
                               .on_loaded = on_loaded};
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

/* adapter_registry_check_path (vLLM's lora_path): the path must lead to the node's own directory
 * inside the root, wherever symlinks and ".." take it. */
TEST(registry_check_path)
{
    fixture f;
    CHECK(setup(&f, 0) == 0);
    char err[256], p[512];
    static const struct {
        const char *id, *rel; /* rel: under the root, or an absolute path when it starts with / */
        int rc;
        const char *want; /* in err */
    } cases[] = {
        {"fr", "fr", 0, ""},
        {"fr", "fr/", 0, ""},
        {"fr", "de/../fr", 0, ""},
        {"fr/legal/alice", "fr/legal/alice", 0, ""},
        {"fr", "fr_alias", 0, ""}, /* a symlink inside the root to fr's directory */
        {"fr", "de", -EINVAL, "is not the directory of adapter 'fr'"},
        {"fr", "fr/legal/alice", -EINVAL, "is not the directory of adapter 'fr'"},
        {"fr", "", -EINVAL, "is not inside the adapter registry"}, /* the root itself */
        {"fr", "evil", -EINVAL, "is not inside the adapter registry"},
        {"fr", "fr/..", -EINVAL, "is not inside the adapter registry"},
        {"fr", "nope", -EINVAL, "No such file or directory"},
        {"fr", "/etc", -EINVAL, "is not inside the adapter registry"},
        {"../fr", "fr", -EINVAL, ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        if (cases[i].rel[0] == '/')
            snprintf(p, sizeof p, "%s", cases[i].rel);
        else
            snprintf(p, sizeof p, "%s/%s", f.root, cases[i].rel);
        err[0] = 0;
        int rc = adapter_registry_check_path(f.reg, cases[i].id, p, err, sizeof err);
        CHECK_MSG(rc == cases[i].rc && strstr(err, cases[i].want), "case %zu (%s, %s): %d '%s'", i,
                  cases[i].id, cases[i].rel, rc, err);
        /* the message names the path as given, never the root alone */
        CHECK_MSG(rc == 0 || !cases[i].want[0] || strstr(err, p), "case %zu: '%s'", i, err);
    }
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

/* The events on_event told, in order. */
static struct {
    adapter_event_kind kind;
    char id[ADAPTER_ID_MAX + 1];
    uint64_t version;
    size_t bytes;
    double ms;
} events[64];
static int n_events;

static void record_event(void *ud, const adapter_event *ev)
{
    (void)ud;
    if (n_events == 64)
        return;
    events[n_events].kind = ev->kind;
    snprintf(events[n_events].id, sizeof events[n_events].id, "%s", ev->id);
    events[n_events].version = ev->version;
    events[n_events].bytes = ev->bytes;
    events[n_events].ms = ev->ms;
    n_events++;
}

/* The index of the first event of kind about id at or after from, -1 if none. */
static int find_event(int from, adapter_event_kind kind, const char *id)
{
    for (int i = from; i < n_events; i++)
        if (events[i].kind == kind && !strcmp(events[i].id, id))
            return i;
    return -1;
}

TEST(registry_events_tell_discoveries_loads_evictions_removals)
{
    fixture f;
    const size_t one = 30720; /* one adapter's bytes: the budget holds one */
    CHECK(setup(&f, one) == 0);
    adapter_registry_free(f.reg);
    uv_loop_close(&f.loop);
    uv_loop_init(&f.loop);
    n_events = 0;
    adapter_registry_opts o = {.root = f.root,
                               .cfg = &f.cfg,
                               .cache_bytes = one,
                               .loop = &f.loop,
                               .rescan_ms = -1,
                               .on_event = record_event};
    char err[256];
    f.reg = adapter_registry_new(&o, err, sizeof err);
    CHECK_MSG(f.reg != NULL, "%s", err);
    /* The first scan discovers every adapter node, not the namespace. */
    CHECK(find_event(0, ADAPTER_EVENT_DISCOVERED, "fr") >= 0);
    CHECK(find_event(0, ADAPTER_EVENT_DISCOVERED, "de/medical") >= 0);
    CHECK_EQ_INT(find_event(0, ADAPTER_EVENT_DISCOVERED, "fr/legal"), -1);
    int from = n_events;
    adapter_set *s = NULL;
    CHECK(acquire(&f, "fr", &s, err, sizeof err) == 0);
    int i = find_event(from, ADAPTER_EVENT_LOADED, "fr");
    CHECK_MSG(i >= 0, "no load event among %d", n_events - from);
    uint64_t fr_version = s->items[0].a->hash;
    if (i >= 0) {
        CHECK(events[i].version == fr_version);
        CHECK_EQ_INT(events[i].bytes, one);
        CHECK(events[i].ms >= 0);
    }
    adapter_set_free(s);
    /* Loading de makes room: fr, unused, is evicted with its version and bytes. */
    from = n_events;
    CHECK(acquire(&f, "de", &s, err, sizeof err) == 0);
    adapter_set_free(s);
    CHECK(find_event(from, ADAPTER_EVENT_LOADED, "de") >= 0);
    i = find_event(from, ADAPTER_EVENT_EVICTED, "fr");
    CHECK_MSG(i >= 0, "no eviction of fr among %d events", n_events - from);
    if (i >= 0) {
        CHECK(events[i].version == fr_version);
        CHECK_EQ_INT(events[i].bytes, one);
    }
    /* A node gone from disk is told at the next scan. */
    char p[512];
    snprintf(p, sizeof p, "%s/de/medical", f.root);
    tu_rmrf(p);
    from = n_events;
    adapter_registry_rescan(f.reg);
    CHECK(find_event(from, ADAPTER_EVENT_REMOVED, "de/medical") >= 0);
    CHECK_EQ_INT(find_event(from, ADAPTER_EVENT_REMOVED, "de"), -1);
    teardown(&f);
}

/* What on_loaded said last. */
static int n_loaded;
static char loaded_err[256], loaded_dir[PATH_MAX];

static void count_loaded(void *ud, const char *id, bool ok, const char *err, const char *abs_dir)
{
    (void)ud;
    (void)id;
    n_loaded += ok;
    snprintf(loaded_err, sizeof loaded_err, "%s", err);
    snprintf(loaded_dir, sizeof loaded_dir, "%s", abs_dir);
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

static unsigned char *slurp(const char *path, size_t *len);

/* What adapter_registry_load_then reported, and how many times. */
typedef struct load_answer {
    int calls, rc;
    bool unchanged;
    uint64_t version;
    char err[256];
} load_answer;

static void on_load_answer(void *ud, const adapter_load_result *res)
{
    load_answer *a = ud;
    a->calls++;
    a->rc = res->rc;
    a->unchanged = res->unchanged;
    a->version = res->version;
    snprintf(a->err, sizeof a->err, "%s", res->err ? res->err : "");
}

/* Asks for a load of id and runs the loop until it is answered; the answer's rc, or -1000 when
 * the call refused or no answer came. */
static int load_and_wait(fixture *f, const char *id, bool pin, load_answer *a)
{
    char err[256];
    memset(a, 0, sizeof *a);
    if (adapter_registry_load_then(f->reg, id, pin, on_load_answer, a, err, sizeof err) != 0)
        return -1000;
    for (int i = 0; i < 500 && a->calls == 0; i++)
        uv_run(&f->loop, UV_RUN_ONCE);
    return a->calls == 1 ? a->rc : -1000;
}

/* An admin load waits for its result: the version loaded; "unchanged" without reading anything
 * when the files have not changed; "unchanged" and the same version when they were rewritten with
 * the same bytes; a new version when the bytes changed; the failure (relative names) when they
 * no longer load, the old version serving on; refusals without a callback; and a load still
 * waiting when the registry is freed gets -ECANCELED. */
TEST(registry_load_then_answers_and_skips_unchanged_files)
{
    fixture f;
    CHECK(setup(&f, 0) == 0);
    load_answer a;
    char err[256], path[512];
    CHECK_EQ_INT(load_and_wait(&f, "de", false, &a), 0);
    CHECK(!a.unchanged && a.version != 0);
    uint64_t v1 = a.version;
    adapter_node_info n;
    CHECK(node_info(&f, "de", &n) == 0);
    CHECK_EQ_STR(adapter_state_name(n.state), "ready");
    CHECK_EQ_INT(n.loads, 1);
    CHECK(n.version == v1);
    /* Same files: answered at once, nothing read. */
    CHECK_EQ_INT(load_and_wait(&f, "de", true, &a), 0);
    CHECK(a.unchanged && a.version == v1);
    CHECK(node_info(&f, "de", &n) == 0);
    CHECK_EQ_INT(n.loads, 1);
    CHECK(n.pinned);
    /* The same bytes written again (new times, maybe a new inode): read, found the same, kept. */
    snprintf(path, sizeof path, "%s/de/adapter_model.safetensors", f.root);
    size_t len;
    unsigned char *bytes = slurp(path, &len);
    CHECK(bytes);
    usleep(20000);
    FILE *fp = fopen(path, "wb");
    CHECK(fp && fwrite(bytes, 1, len, fp) == len);
    fclose(fp);
    free(bytes);
    CHECK_EQ_INT(load_and_wait(&f, "de", false, &a), 0);
    CHECK_MSG(a.unchanged && a.version == v1, "rewritten with the same bytes: unchanged %d",
              a.unchanged);
    CHECK(node_info(&f, "de", &n) == 0);
    CHECK_EQ_INT(n.loads, 1);
    /* Other bytes: a new version. */
    CHECK(put(&f, "de", 33) == 0);
    CHECK_EQ_INT(load_and_wait(&f, "de", false, &a), 0);
    CHECK(!a.unchanged && a.version != v1);
    uint64_t v2 = a.version;
    CHECK(node_info(&f, "de", &n) == 0);
    CHECK_EQ_INT(n.loads, 2);
    /* Broken bytes: the failure, relative names only; the good version serves on. */
    fp = fopen(path, "wb");
    CHECK(fp && fwrite("garbage", 1, 7, fp) == 7);
    fclose(fp);
    int rc = load_and_wait(&f, "de", false, &a);
    CHECK_MSG(rc < 0 && rc != -1000, "rc %d", rc);
    CHECK_MSG(strstr(a.err, "de/adapter_model.safetensors") && !strstr(a.err, f.root), "error: %s",
              a.err);
    CHECK(node_info(&f, "de", &n) == 0);
    CHECK_EQ_STR(adapter_state_name(n.state), "ready");
    CHECK(n.version == v2);
    /* Refused at once, the callback never called. */
    memset(&a, 0, sizeof a);
    CHECK_EQ_INT(
        adapter_registry_load_then(f.reg, "nope", false, on_load_answer, &a, err, sizeof err),
        -ENOENT);
    CHECK_EQ_INT(
        adapter_registry_load_then(f.reg, "fr/legal", false, on_load_answer, &a, err, sizeof err),
        -EINVAL);
    CHECK_EQ_INT(adapter_registry_check(f.reg, "../x", err, sizeof err), -EINVAL);
    CHECK_EQ_INT(adapter_registry_check(f.reg, "fr", err, sizeof err), 0);
    for (int i = 0; i < 20; i++)
        uv_run(&f.loop, UV_RUN_NOWAIT);
    CHECK_EQ_INT(a.calls, 0);
    /* Asked for, and the registry freed before the loop ran: answered, cancelled. */
    CHECK_EQ_INT(
        adapter_registry_load_then(f.reg, "fr", false, on_load_answer, &a, err, sizeof err), 0);
    adapter_registry_free(f.reg);
    f.reg = NULL;
    CHECK_EQ_INT(a.calls, 1);
    CHECK_MSG(a.rc == -ECANCELED || a.rc == 0, "rc %d", a.rc);
    uv_loop_close(&f.loop);
    tu_rmrf(f.root);
    tu_rmrf(f.outside);
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

/* ---- confinement of the files a node reads, and what its errors name ------------------------- */

/* An inotify descriptor watching path for opens and reads (the test fails if it cannot). */
static int watch_reads(const char *path)
{
    int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd >= 0 && inotify_add_watch(fd, path, IN_OPEN | IN_ACCESS) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* The opens and reads seen on a watch_reads descriptor since the last call. */
static int reads_seen(int fd)
{
    char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    int n = 0;
    ssize_t k;
    while ((k = read(fd, buf, sizeof buf)) > 0)
        for (char *p = buf; p < buf + k; p += sizeof(struct inotify_event))
            n++, p += ((struct inotify_event *)p)->len;
    return n;
}

/* Runs the loop until id is neither loading nor being described (a guard timer wakes the loop
 * every 50 ms, so a job that blocks shows as a timeout after about 10 s). 0 with its listing in
 * *n, or -1. */
static int settle(fixture *f, const char *id, adapter_node_info *n)
{
    uv_timer_t guard;
    uv_timer_init(&f->loop, &guard);
    int rc = -1;
    for (int i = 0; i < 200; i++) {
        adapter_registry_stats st;
        adapter_registry_stats_get(f->reg, &st);
        if (node_info(f, id, n))
            break;
        if (n->state != ADAPTER_LOADING && !n->reloading && st.probing == 0) {
            rc = 0;
            break;
        }
        uv_timer_start(&guard, stop_loop, 50, 0);
        uv_run(&f->loop, UV_RUN_ONCE);
    }
    uv_close((uv_handle_t *)&guard, NULL);
    uv_run(&f->loop, UV_RUN_NOWAIT); /* the guard lives on this stack: let it close */
    return rc;
}

/* Replaces path by a symlink to target. */
static int make_symlink(const char *target, const char *path)
{
    return unlink(path) == 0 || errno == ENOENT ? symlink(target, path) : -1;
}

/* A PEFT node whose weight file is a symlink to a good adapter's weights outside the root is
 * listed as failed with the reason and is never loaded nor described: the outside file is not
 * even opened. Replacing the symlink by a real file clears it through the usual rescan. */
TEST(registry_weight_symlink_leaving_the_root_is_failed_unread)
{
    fixture f;
    CHECK(setup(&f, 0) == 0);
    char p[512], target[512], err[512];
    snprintf(p, sizeof p, "%s/w", f.outside);
    CHECK(tu_write_peft(p, cfg_json, &f.cfg, qv_mask, 4, "F16", 12) == 0);
    snprintf(target, sizeof target, "%s/w/adapter_model.safetensors", f.outside);
    CHECK(put(&f, "ext", 11) == 0);
    snprintf(p, sizeof p, "%s/ext/adapter_model.safetensors", f.root);
    CHECK(make_symlink(target, p) == 0);
    int ino = watch_reads(target);
    CHECK(ino >= 0);
    adapter_registry_rescan(f.reg);
    adapter_node_info n;
    CHECK(settle(&f, "ext", &n) == 0);
    CHECK_MSG(
        n.state == ADAPTER_FAILED &&
            !strcmp(n.error, "ext/adapter_model.safetensors: symlink leaves the registry root"),
        "state %s, error '%s'", adapter_state_name(n.state), n.error);
    CHECK_EQ_INT(n.format, 0); /* not described from the outside file either */
    adapter_set *s = NULL;
    int rc = acquire(&f, "ext", &s, err, sizeof err);
    CHECK_MSG(rc == -EIO && strstr(err, "ext/adapter_model.safetensors: symlink leaves"),
              "acquire: %d '%s'", rc, err);
    /* Rescans and an explicit load change nothing. */
    adapter_registry_rescan(f.reg);
    CHECK(adapter_registry_load(f.reg, "ext", err, sizeof err) == 0);
    CHECK(settle(&f, "ext", &n) == 0);
    CHECK_MSG(n.state == ADAPTER_FAILED && strstr(n.error, "symlink leaves the registry root"),
              "after a load: state %s, error '%s'", adapter_state_name(n.state), n.error);
    int seen = reads_seen(ino);
    close(ino);
    CHECK_MSG(seen == 0, "the file outside the root was opened or read %d times", seen);

    /* Fixed: a real file in place of the symlink loads. */
    CHECK(unlink(p) == 0);
    CHECK(put(&f, "ext", 11) == 0);
    adapter_registry_rescan(f.reg);
    CHECK(settle(&f, "ext", &n) == 0);
    CHECK_MSG(n.state == ADAPTER_READY && !n.error[0] && n.format == ADAPTER_PEFT,
              "after the fix: state %s, error '%s'", adapter_state_name(n.state), n.error);
    CHECK_MSG(acquire(&f, "ext", &s, err, sizeof err) == 0, "%s", err);
    adapter_set_free(s);
    teardown(&f);
}

/* A directory whose adapter_config.json leads out of the root is not an adapter; a node whose
 * config is swapped for such a symlink after the listing is refused at load, unread. */
TEST(registry_config_symlink_leaving_the_root_is_not_read)
{
    fixture f;
    CHECK(setup(&f, 0) == 0);
    char p[512], target[512], err[512];
    snprintf(p, sizeof p, "%s/w", f.outside); /* rank 4 and alpha 16: tells it apart if loaded */
    CHECK(tu_write_peft(p, "{\"r\":4,\"lora_alpha\":16,\"target_modules\":[\"q_proj\",\"v_proj\"]}",
                        &f.cfg, qv_mask, 4, "F16", 12) == 0);
    snprintf(target, sizeof target, "%s/w/adapter_config.json", f.outside);
    CHECK(put(&f, "cfgout", 11) == 0);
    snprintf(p, sizeof p, "%s/cfgout/adapter_config.json", f.root);
    CHECK(make_symlink(target, p) == 0);
    CHECK(wait_described(&f) == 0);
    int ino = watch_reads(target);
    CHECK(ino >= 0);
    adapter_registry_rescan(f.reg);
    adapter_node_info n;
    CHECK(settle(&f, "cfgout", &n) == 0);
    CHECK_MSG(n.state == ADAPTER_NAMESPACE, "cfgout: state %s", adapter_state_name(n.state));

    /* fr listed and described, then its config swapped: the load refuses it. */
    CHECK(node_info(&f, "fr", &n) == 0 && n.format == ADAPTER_PEFT);
    snprintf(p, sizeof p, "%s/fr/adapter_config.json", f.root);
    CHECK(make_symlink(target, p) == 0);
    adapter_set *s = NULL;
    int rc = acquire(&f, "fr", &s, err, sizeof err);
    if (rc == 0) {
        float alpha = s->items[0].a->alpha;
        adapter_set_free(s);
        CHECK_MSG(rc != 0, "loaded the config outside the root (alpha %g)", (double)alpha);
    }
    CHECK_MSG(rc == -EIO && strstr(err, "fr/adapter_config.json: symlink leaves the registry root"),
              "acquire: %d '%s'", rc, err);
    int seen = reads_seen(ino);
    close(ino);
    CHECK_MSG(seen == 0, "the config outside the root was opened or read %d times", seen);
    teardown(&f);
}

/* The weight file of a listed node swapped for a symlink leaving the root before it loads: the
 * load refuses it unread. For a resident node the reload fails the same way and the version
 * loaded from the good files serves on. */
TEST(registry_weight_swapped_for_a_symlink_after_listing_is_refused)
{
    fixture f;
    CHECK(setup(&f, 0) == 0);
    char p[512], target[512], err[512];
    snprintf(p, sizeof p, "%s/w", f.outside);
    CHECK(tu_write_peft(p, cfg_json, &f.cfg, qv_mask, 4, "F16", 12) == 0);
    snprintf(target, sizeof target, "%s/w/adapter_model.safetensors", f.outside);
    CHECK(wait_described(&f) == 0);
    adapter_set *s = NULL, *old = NULL;
    CHECK_MSG(acquire(&f, "de", &old, err, sizeof err) == 0, "%s", err);
    uint64_t v1 = old->items[0].a->hash;
    int ino = watch_reads(target);
    CHECK(ino >= 0);

    adapter_node_info n;
    CHECK(node_info(&f, "fr", &n) == 0);
    CHECK_MSG(n.state == ADAPTER_UNLOADED && n.format == ADAPTER_PEFT, "fr: state %s format %d",
              adapter_state_name(n.state), n.format);
    snprintf(p, sizeof p, "%s/fr/adapter_model.safetensors", f.root);
    CHECK(make_symlink(target, p) == 0);
    int rc = acquire(&f, "fr", &s, err, sizeof err);
    if (rc == 0)
        adapter_set_free(s);
    CHECK_MSG(rc == -EIO &&
                  strstr(err, "fr/adapter_model.safetensors: symlink leaves the registry root"),
              "acquire: %d '%s'", rc, err);

    snprintf(p, sizeof p, "%s/de/adapter_model.safetensors", f.root);
    CHECK(make_symlink(target, p) == 0);
    CHECK(adapter_registry_load(f.reg, "de", err, sizeof err) == 0);
    CHECK(settle(&f, "de", &n) == 0);
    CHECK_MSG(n.state == ADAPTER_READY && n.version == v1 &&
                  strstr(n.error, "de/adapter_model.safetensors: symlink leaves"),
              "de: state %s version %016llx (had %016llx) error '%s'", adapter_state_name(n.state),
              (unsigned long long)n.version, (unsigned long long)v1, n.error);
    adapter_set_free(old);
    int seen = reads_seen(ino);
    close(ino);
    CHECK_MSG(seen == 0, "the file outside the root was opened or read %d times", seen);
    teardown(&f);
}

/* Symlinks to files elsewhere inside the root are followed, with relative and absolute targets,
 * as symlinked directories are. */
TEST(registry_file_symlinks_inside_the_root_load)
{
    fixture f;
    CHECK(setup(&f, 0) == 0);
    char p[512], target[512], err[512];
    snprintf(p, sizeof p, "%s/shared", f.root); /* a node too: it holds an adapter */
    CHECK(tu_write_peft(p, cfg_json, &f.cfg, qv_mask, 4, "F16", 12) == 0);
    CHECK(put(&f, "rel", 13) == 0 && put(&f, "abs", 14) == 0);
    snprintf(p, sizeof p, "%s/rel/adapter_model.safetensors", f.root);
    CHECK(make_symlink("../shared/adapter_model.safetensors", p) == 0);
    snprintf(p, sizeof p, "%s/abs/adapter_model.safetensors", f.root);
    snprintf(target, sizeof target, "%s/shared/adapter_model.safetensors", f.root);
    CHECK(make_symlink(target, p) == 0);
    snprintf(p, sizeof p, "%s/abs/adapter_config.json", f.root);
    snprintf(target, sizeof target, "%s/shared/adapter_config.json", f.root);
    CHECK(make_symlink(target, p) == 0);
    adapter_registry_rescan(f.reg);
    CHECK(wait_described(&f) == 0);
    adapter_set *s = NULL;
    CHECK_MSG(acquire(&f, "shared", &s, err, sizeof err) == 0, "%s", err);
    uint64_t want = s->items[0].a->hash;
    adapter_set_free(s);
    static const char *const ids[] = {"rel", "abs"};
    for (int i = 0; i < 2; i++) {
        adapter_node_info n;
        CHECK(node_info(&f, ids[i], &n) == 0);
        CHECK_MSG(n.format == ADAPTER_PEFT && n.weight_bytes == 30720 && !n.error[0],
                  "%s: format %d weight_bytes %zu error '%s'", ids[i], n.format, n.weight_bytes,
                  n.error);
        CHECK_MSG(acquire(&f, ids[i], &s, err, sizeof err) == 0, "%s: %s", ids[i], err);
        CHECK_EQ_INT(s->items[0].a->n_mods, 4);
        uint64_t got = s->items[0].a->hash;
        adapter_set_free(s);
        /* shared's weights (the node's own, written by put, were replaced by the symlink) */
        CHECK_MSG(got == want, "%s: version %016llx, shared's %016llx", ids[i],
                  (unsigned long long)got, (unsigned long long)want);
    }
    teardown(&f);
}

/* The check that makes a confined open race-free looks at what was opened: a descriptor of a
 * file outside the root is refused whatever path led to it (here, opened inside and then moved
 * out, as a swap after the path checks would leave it), as is one of a sibling directory whose
 * name starts with the root's, or of a pipe. Confined opens refuse the same files by path. */
TEST(registry_open_checks_where_the_descriptor_lies)
{
    char root[PATH_MAX], out[PATH_MAX], p[PATH_MAX + 64], q[PATH_MAX + 64], err[512];
    CHECK(realpath(tu_tmpdir(), root) != NULL);
    CHECK(realpath(tu_tmpdir(), out) != NULL);
    snprintf(p, sizeof p, "%s/a", root);
    CHECK(write_file(p, "inside") == 0);
    int fd = open(p, O_RDONLY);
    CHECK(fd >= 0);
    CHECK_EQ_INT(adapter__fd_beneath(fd, root, "a", err, sizeof err), 0);
    snprintf(q, sizeof q, "%s/a", out);
    CHECK(rename(p, q) == 0);
    int rc = adapter__fd_beneath(fd, root, "a", err, sizeof err);
    close(fd);
    CHECK_MSG(rc == -EXDEV && !strcmp(err, "a: symlink leaves the registry root"), "%d '%s'", rc,
              err);
    char sibling[PATH_MAX + 8];
    snprintf(sibling, sizeof sibling, "%s2", root); /* /tmp/x2 is not beneath /tmp/x */
    CHECK(tu_mkdirs(sibling) == 0);
    snprintf(q, sizeof q, "%s/b", sibling);
    CHECK(write_file(q, "sibling") == 0);
    fd = open(q, O_RDONLY);
    CHECK(fd >= 0);
    rc = adapter__fd_beneath(fd, root, "b", err, sizeof err);
    close(fd);
    tu_rmrf(sibling);
    CHECK_EQ_INT(rc, -EXDEV);
    int pipe_fd[2];
    CHECK(pipe(pipe_fd) == 0);
    rc = adapter__fd_beneath(pipe_fd[0], root, "p", err, sizeof err);
    close(pipe_fd[0]);
    close(pipe_fd[1]);
    CHECK_EQ_INT(rc, -EXDEV);

    /* By path: the file moved out, reached through a symlink or "..", is refused unopened. */
    snprintf(p, sizeof p, "%s/b", root);
    CHECK(write_file(p, "inside") == 0);
    snprintf(p, sizeof p, "%s/link", root);
    snprintf(q, sizeof q, "%s/a", out);
    CHECK(symlink(q, p) == 0);
    uint64_t size;
    fd = adapter__file_open(root, "b", &size, err, sizeof err);
    CHECK_MSG(fd >= 0 && size == 6, "b: %d '%s'", fd, err);
    close(fd);
    CHECK_EQ_INT(adapter__file_open(root, "link", &size, err, sizeof err), -EXDEV);
    CHECK_MSG(!strcmp(err, "link: symlink leaves the registry root"), "'%s'", err);
    snprintf(q, sizeof q, "../%s/a", strrchr(out, '/') + 1);
    CHECK_EQ_INT(adapter__file_open(root, q, &size, err, sizeof err), -EXDEV);
    /* Without a root (the command line), the same symlink is followed. */
    fd = adapter__file_open(NULL, p, &size, err, sizeof err);
    CHECK_MSG(fd >= 0 && size == 6, "%s: %d '%s'", p, fd, err);
    close(fd);
    tu_rmrf(root);
    tu_rmrf(out);
}

/* The same rules for GGUF-LoRA nodes (adapter.gguf): leading out of the root it is listed failed
 * and never opened, swapped in after the listing it is refused, inside the root (relative or
 * absolute target) it loads. */
TEST(registry_gguf_symlinks_are_confined)
{
    fixture f;
    memset(&f, 0, sizeof f);
    snprintf(f.root, sizeof f.root, "%s", tu_tmpdir());
    snprintf(f.outside, sizeof f.outside, "%s", tu_tmpdir());
    f.cfg = tu_config();
    f.cfg.n_layer = 30;
    const char *fix = "tests/golden/fixtures/adapters/qv_r4.gguf";
    char p[1024], target[512], err[512];
    static const char *const dirs[] = {"shared", "out", "in_rel", "in_abs", "swap"};
    for (int i = 0; i < 5; i++) {
        snprintf(p, sizeof p, "%s/%s", f.root, dirs[i]);
        CHECK(tu_mkdirs(p) == 0);
    }
    snprintf(p, sizeof p, "cp %s %s/shared/adapter.gguf && cp %s %s/swap/adapter.gguf && cp %s %s/",
             fix, f.root, fix, f.root, fix, f.outside);
    CHECK(system(p) == 0);
    snprintf(target, sizeof target, "%s/qv_r4.gguf", f.outside);
    snprintf(p, sizeof p, "%s/out/adapter.gguf", f.root);
    CHECK(make_symlink(target, p) == 0);
    snprintf(p, sizeof p, "%s/in_rel/adapter.gguf", f.root);
    CHECK(make_symlink("../shared/adapter.gguf", p) == 0);
    snprintf(p, sizeof p, "%s/in_abs/adapter.gguf", f.root);
    char abs[600];
    snprintf(abs, sizeof abs, "%s/shared/adapter.gguf", f.root);
    CHECK(make_symlink(abs, p) == 0);
    int ino = watch_reads(target);
    CHECK(ino >= 0);
    CHECK(open_registry(&f, 0, NULL) == 0);
    CHECK(wait_described(&f) == 0);
    adapter_node_info n;
    CHECK(settle(&f, "out", &n) == 0);
    CHECK_MSG(n.state == ADAPTER_FAILED &&
                  !strcmp(n.error, "out/adapter.gguf: symlink leaves the registry root"),
              "out: state %s, error '%s'", adapter_state_name(n.state), n.error);
    adapter_set *s = NULL;
    int rc = acquire(&f, "out", &s, err, sizeof err);
    CHECK_MSG(rc == -EIO && strstr(err, "symlink leaves"), "out: %d '%s'", rc, err);
    static const char *const inside[] = {"in_rel", "in_abs"};
    for (int i = 0; i < 2; i++) {
        CHECK(node_info(&f, inside[i], &n) == 0);
        CHECK_MSG(n.format == ADAPTER_GGUF && n.weight_bytes == 460800, "%s: format %d", inside[i],
                  n.format);
        CHECK_MSG(acquire(&f, inside[i], &s, err, sizeof err) == 0, "%s: %s", inside[i], err);
        CHECK_EQ_INT(s->items[0].a->bytes, 460800);
        adapter_set_free(s);
    }
    CHECK(node_info(&f, "swap", &n) == 0 && n.format == ADAPTER_GGUF);
    snprintf(p, sizeof p, "%s/swap/adapter.gguf", f.root);
    CHECK(make_symlink(target, p) == 0);
    rc = acquire(&f, "swap", &s, err, sizeof err);
    if (rc == 0)
        adapter_set_free(s);
    CHECK_MSG(rc == -EIO && strstr(err, "swap/adapter.gguf: symlink leaves the registry root"),
              "swap: %d '%s'", rc, err);
    int seen = reads_seen(ino);
    close(ino);
    CHECK_MSG(seen == 0, "the file outside the root was opened or read %d times", seen);
    teardown(&f);
}

/* Failed loads name files relative to the root, in the node's error and the acquire message
 * (both reach clients), never by an absolute path; on_loaded gives the absolute directory for
 * the log. A FIFO as a weight file or config is refused without blocking the loader. */
TEST(registry_errors_name_files_relative_to_the_root)
{
    fixture f;
    memset(&f, 0, sizeof f);
    snprintf(f.root, sizeof f.root, "%s", tu_tmpdir());
    f.cfg = tu_config();
    char p[512], real_root[PATH_MAX], err[512];
    CHECK(realpath(f.root, real_root) != NULL);
    CHECK(put(&f, "fifo", 1) == 0 && put(&f, "fr/cut", 2) == 0 && put(&f, "cfgfifo", 3) == 0);
    snprintf(p, sizeof p, "%s/fifo/adapter_model.safetensors", f.root);
    CHECK(unlink(p) == 0 && mkfifo(p, 0600) == 0);
    snprintf(p, sizeof p, "%s/fr/cut/adapter_model.safetensors", f.root);
    CHECK(truncate(p, 100) == 0);
    CHECK(open_registry(&f, 0, count_loaded) == 0);
    CHECK(wait_described(&f) == 0);
    /* A config that turns into a FIFO after the listing (as a FIFO it would not be listed). */
    snprintf(p, sizeof p, "%s/cfgfifo/adapter_config.json", f.root);
    CHECK(unlink(p) == 0 && mkfifo(p, 0600) == 0);
    static const struct {
        const char *id, *want;
    } cases[] = {{"fifo", "fifo/adapter_model.safetensors: not a regular file"},
                 {"fr/cut", "fr/cut/adapter_model.safetensors: "},
                 {"cfgfifo", "cfgfifo/adapter_config.json: not a regular file"}};
    for (int i = 0; i < 3; i++) {
        const char *id = cases[i].id;
        adapter_selection sel = {1, {{"", 1.0f}}};
        snprintf(sel.items[0].id, sizeof sel.items[0].id, "%s", id);
        adapter_set *s = NULL;
        loaded_err[0] = loaded_dir[0] = 0;
        CHECK_EQ_INT(adapter_registry_acquire(f.reg, &sel, &s, err, sizeof err), -EAGAIN);
        adapter_node_info n;
        if (settle(&f, id, &n)) {
            snprintf(p, sizeof p, "%s/%s/adapter_%s", f.root, id,
                     i == 2 ? "config.json" : "model.safetensors");
            int w = open(p, O_WRONLY | O_NONBLOCK); /* let a blocked reader go */
            if (w >= 0)
                close(w);
            CHECK(settle(&f, id, &n) == 0);
            CHECK_MSG(false, "%s: the load blocked on a FIFO", id);
        }
        int rc = adapter_registry_acquire(f.reg, &sel, &s, err, sizeof err);
        CHECK_MSG(rc == -EIO && strstr(err, cases[i].want) && !strstr(err, real_root) &&
                      !strstr(err, "/tmp/"),
                  "%s: acquire %d '%s'", id, rc, err);
        CHECK_MSG(n.state == ADAPTER_FAILED && strstr(n.error, cases[i].want) &&
                      !strstr(n.error, "/tmp/"),
                  "%s: state %s, error '%s'", id, adapter_state_name(n.state), n.error);
        char dir[PATH_MAX + 300];
        snprintf(dir, sizeof dir, "%s/%s", real_root, id);
        CHECK_MSG(!strcmp(loaded_err, n.error) && !strcmp(loaded_dir, dir),
                  "%s: on_loaded said '%s' from '%s' (want '%s' from '%s')", id, loaded_err,
                  loaded_dir, n.error, dir);
    }
    teardown(&f);
}
