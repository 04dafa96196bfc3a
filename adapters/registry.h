/* The adapter registry: a directory tree of adapters (docs/ARCHITECTURE.md §4) and their residency.
 *
 * Every directory under the root that holds an adapter is a node; its id is its path relative to
 * the root ("fr", "fr/legal", "fr/legal/alice"). Directories without one are namespaces. A
 * selection resolves to (node, weight) items: "select" applies the whole chain root -> node of
 * nodes that have adapters, each at weight 1; an explicit list applies exactly the listed nodes.
 *
 * Threads. The registry is tied to one libuv loop (the engine's). adapter_registry_acquire runs
 * on that loop's thread; loads run on the loop's thread pool and are published back on the loop
 * thread; file-system events and the rescan timer run there too. Every other function may be
 * called from any thread (one mutex guards the tree).
 *
 * Versions and lifetimes. A node's resident version is an adapter with one reference held by the
 * registry; each acquired adapter_set holds its own references. When the files change, the new
 * version is loaded in the background and replaces the old one only if it loads and validates;
 * requests in flight keep the old one until they free their set. A failed load leaves the node
 * with its previous good version (if any) and the reason. Resident versions are evicted least
 * recently used when their bytes exceed the cache budget, unless pinned or in use.
 *
 * Descriptions. A node is described from its files (adapter_probe: the config and the weight
 * files' headers, no weights) in the background when it appears and whenever its files change,
 * so that listings show what an adapter is before it is loaded.
 *
 * Confinement. A symlink, to a directory or to a file, is followed only when its real target
 * stays inside the root: when the tree is listed (a node whose weight file leads out is listed
 * failed, with the reason) and again at every open of a load or probe (adapter_load_beneath),
 * so a file swapped for a symlink after a listing cannot be read either. Node errors, which
 * clients see, name files relative to the root ("fr/adapter_model.safetensors: not a regular
 * file"); on_loaded also gives the absolute directory, for the server's log.
 */
#ifndef ADAPTREE_ADAPTERS_REGISTRY_H
#define ADAPTREE_ADAPTERS_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "adapters/compose.h"
#include "core/model/model.h"

#define ADAPTER_ID_MAX 255  /* bytes */
#define ADAPTER_SEG_MAX 64  /* bytes per segment */
#define ADAPTER_DEPTH_MAX 8 /* segments */
#define ADAPTER_SEL_MAX 16  /* items in one selection */
#define ADAPTER_NODES_MAX 4096

typedef struct adapter_registry adapter_registry;

/* What happened to a node, for the server's log (adapter_registry_opts.on_event). */
typedef enum adapter_event_kind {
    ADAPTER_EVENT_LOADED,     /* a load made the node's first resident version */
    ADAPTER_EVENT_RELOADED,   /* a load replaced the resident version with a new one */
    ADAPTER_EVENT_UNCHANGED,  /* a load read files whose content is the resident version's */
    ADAPTER_EVENT_FAILED,     /* a load failed; a previous good version, if any, serves on */
    ADAPTER_EVENT_EVICTED,    /* the resident version was dropped to fit the cache budget */
    ADAPTER_EVENT_DISCOVERED, /* a scan found a new adapter node (the first scan: every one) */
    ADAPTER_EVENT_REMOVED     /* an adapter node left the tree, or no longer holds an adapter */
} adapter_event_kind;

typedef struct adapter_event {
    adapter_event_kind kind;
    const char *id;
    uint64_t version;     /* the content hash of the version loaded, kept or evicted; else 0 */
    uint64_t old_version; /* RELOADED: the version replaced; else 0 */
    size_t bytes;         /* the resident bytes of that version; else 0 */
    double ms;            /* loads (and failures): reading and validating the files; else 0 */
    const char *err;      /* FAILED: why, files named relative to the root; else "" */
    const char *abs_dir;  /* loads: the node directory's real path (for the log only); else "" */
} adapter_event;

typedef struct adapter_registry_opts {
    const char *root;
    const core_config *cfg; /* the base every adapter is validated against; borrowed */
    size_t cache_bytes;     /* budget for resident adapters; 0 = unlimited */
    uv_loop_t *loop;        /* borrowed; must outlive the registry */
    int rescan_ms;          /* periodic rescan as a fallback to fs events; 0 = 2000; < 0 off */
    bool watch;             /* watch directories with uv_fs_event */
    /* Called on the loop thread whenever a load finished (ok or not). err is why it failed ("" when
     * ok), the message the node's error keeps, which names files relative to the root; abs_dir is
     * the node directory's real path as the last scan saw it, for the server's log only (never
     * for clients). Both are valid during the call only. */
    void (*on_loaded)(void *ud, const char *id, bool ok, const char *err, const char *abs_dir);
    /* Called for each adapter_event, with the registry's lock held, on the thread that caused it
     * (the loop thread but for evictions, which follow acquires): it must be quick and must not
     * call the registry. The event's strings are valid during the call only. May be NULL. */
    void (*on_event)(void *ud, const adapter_event *ev);
    void *ud; /* for on_loaded and on_event */
} adapter_registry_opts;

/* Scans the root and starts watching it. Returns NULL with a message in err when the root is
 * not a readable directory. Loop thread. */
adapter_registry *adapter_registry_new(const adapter_registry_opts *o, char *err, size_t errlen);
/* Stops watching and frees every resident version (adapters still referenced by sets live on
 * until those sets are freed). Runs the loop until its handles have closed. Loop thread. */
void adapter_registry_free(adapter_registry *r);

/* Checks an id's syntax: segments of [A-Za-z0-9._-], no "." or ".." segments, bounded depth and
 * length. 0 or -EINVAL with a message. */
int adapter_id_check(const char *id, char *err, size_t errlen);

typedef struct adapter_sel_item {
    char id[ADAPTER_ID_MAX + 1];
    float weight;
} adapter_sel_item;

typedef struct adapter_selection {
    int n;
    adapter_sel_item items[ADAPTER_SEL_MAX];
} adapter_selection;

/* Resolves "select" (a node or namespace id: its chain; may be NULL) plus an explicit list of
 * (id, weight) into items. -EINVAL for a malformed id or weight (400), -ENOENT for an unknown
 * one (404), -E2BIG past ADAPTER_SEL_MAX items; the message names the id. */
int adapter_registry_resolve(adapter_registry *r, const char *select, const adapter_sel_item *list,
                             int n_list, adapter_selection *out, char *err, size_t errlen);

/* Turns a resolved selection into a set of resident adapters (*out, with references). Returns
 * 0 when all are resident, -EAGAIN when some are loading (they were started; on_loaded fires when
 * each finishes, then call again), -ENOENT when a node disappeared, -EIO when a node failed to
 * load and has no good version (message in err). Loop thread. */
int adapter_registry_acquire(adapter_registry *r, const adapter_selection *sel, adapter_set **out,
                             char *err, size_t errlen);

/* Convenience for command-line tools that own the loop: acquires, running the loop until the
 * loads finish. */
int adapter_registry_acquire_wait(adapter_registry *r, const adapter_selection *sel,
                                  adapter_set **out, char *err, size_t errlen);

/* Admin: load (or reload) a node now; unload its resident version; pin/unpin it (a pinned node is
 * never evicted and is loaded if needed). Any thread. -ENOENT unknown id, -EINVAL a namespace.
 *
 * A load of a node that is resident from files that have not changed since (same signature:
 * times, size, inode) reads nothing; a load whose files hash to the resident version's content
 * hash keeps that version (no new version, requests in flight undisturbed). Either way the load
 * reports "unchanged". */
int adapter_registry_load(adapter_registry *r, const char *id, char *err, size_t errlen);

/* What a load asked for with adapter_registry_load_then came to. */
typedef struct adapter_load_result {
    int rc;           /* 0: the node is resident from its files as they were when the load was
                         asked for (or later); -ENOENT the node is gone; -ECANCELED the registry
                         is closing; any other negative: the files do not load (err says why;
                         a previous good version, if any, keeps serving) */
    bool unchanged;   /* rc 0 and nothing was reloaded (see adapter_registry_load) */
    uint64_t version; /* rc 0: the resident version's content hash */
    const char *err;  /* rc < 0: why, files named relative to the root; valid during the call */
} adapter_load_result;

typedef void (*adapter_load_cb)(void *ud, const adapter_load_result *res);

/* adapter_registry_load (and pin, with pin), then cb(ud, result) on the loop thread once a load
 * started at or after this call has finished (or the files were found unchanged). Returns 0, and
 * cb is then called exactly once (at the latest when the registry is freed); or -ENOENT / -EINVAL
 * as adapter_registry_load, and cb is never called. Any thread. */
int adapter_registry_load_then(adapter_registry *r, const char *id, bool pin, adapter_load_cb cb,
                               void *ud, char *err, size_t errlen);
/* The refusals of adapter_registry_load, without loading: 0 when id names an adapter node, else
 * -EINVAL (malformed id, a namespace) or -ENOENT with a message. Any thread. */
int adapter_registry_check(adapter_registry *r, const char *id, char *err, size_t errlen);
/* Is path (absolute, or relative to the working directory) the directory of node id? Both are
 * resolved with realpath, so symlinks and ".." count where they lead. 0 when path leads inside
 * the root to the directory id names; else -EINVAL with a message naming path as given (never the
 * root), or adapter_id_check's refusal. Whether id is a node is adapter_registry_check's to say.
 * Any thread; reads the file system. */
int adapter_registry_check_path(adapter_registry *r, const char *id, const char *path, char *err,
                                size_t errlen);
int adapter_registry_unload(adapter_registry *r, const char *id, char *err, size_t errlen);
int adapter_registry_pin(adapter_registry *r, const char *id, bool pin, char *err, size_t errlen);

/* Rescans the tree now (loop thread); returns the number of nodes. */
int adapter_registry_rescan(adapter_registry *r);

typedef enum adapter_state {
    ADAPTER_NAMESPACE = 0, /* a directory without an adapter */
    ADAPTER_UNLOADED,
    ADAPTER_LOADING,
    ADAPTER_READY,
    ADAPTER_FAILED
} adapter_state;

const char *adapter_state_name(adapter_state s);

typedef struct adapter_node_info {
    char id[ADAPTER_ID_MAX + 1];
    char parent[ADAPTER_ID_MAX + 1]; /* the parent directory's id, "" at the top */
    adapter_state state;
    char error[256]; /* the last failed load's reason (files named relative to the root), or why
                        its files cannot be loaded; "" if none */
    bool pinned;
    bool reloading; /* a new version is loading (or asked for) while the old one serves */
    /* What the adapter is: the resident version's values, else what its files say (described in
     * the background when the node appears or its files change). format 0 = not known: not
     * described yet, or the files cannot be described (a load would fail and say why); the
     * fields up to weight_bytes are then 0. */
    int format; /* adapter_format */
    int r;
    float alpha;
    bool rslora;
    unsigned targets;
    size_t weight_bytes; /* the weights' bytes once resident (= bytes when resident) */
    size_t bytes;        /* resident bytes, 0 if not resident */
    int in_use;          /* references held by requests */
    uint64_t version;    /* content hash of the resident version */
    uint64_t loads, load_failures, evictions, hits;
} adapter_node_info;

/* Copies the tree (sorted by id) into *out (malloc'd, caller frees). Any thread. */
int adapter_registry_list(adapter_registry *r, adapter_node_info **out, size_t *n);

typedef struct adapter_registry_stats {
    size_t resident_bytes, cache_bytes;
    int nodes, resident;
    int loading; /* nodes whose load is running or asked for */
    int probing; /* adapter nodes not yet described for their current files */
    uint64_t loads, load_failures, evictions, hits, misses;
} adapter_registry_stats;

void adapter_registry_stats_get(adapter_registry *r, adapter_registry_stats *out);

#endif
