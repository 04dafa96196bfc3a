/* The adapter registry: the tree under the root, residency and versions (see registry.h).
 *
 * Design. The tree is an array of nodes sorted by id, rebuilt by merging a fresh scan of the
 * root into it (at start, on a debounced fs event, on a periodic timer). A node's file signature
 * (mtime, ctime, size, inode of its adapter files) tells when its files changed; a changed node
 * that is resident, loading or pinned gets a background reload. Loads are uv_work items that
 * carry the node's id and path, never a node pointer: when a load finishes the node is looked up
 * again, so a node deleted meanwhile simply drops the result. The mutex guards the nodes and the
 * counters; it is never held across a load or a callback into the server.
 *
 * Descriptions. Every adapter node whose description (adapter_probe) is missing or was made for
 * another signature is probed on the pool, like a load but at most PROBES_MAX at a time so that
 * a tree copied in at once does not queue thousands of probes ahead of the loads requests wait
 * for. A result is kept only if the node still has the signature the probe was started for;
 * otherwise the node is probed again. The periodic rescan finds unchanged signatures and probes
 * nothing.
 *
 * Confinement. Ids are paths beneath the root, and a symlink, to a directory or to a file, is
 * followed only when its real target stays inside the root. The scan applies the rule to what it
 * lists, with the file names the loader table gives (adapter_files): a directory leading out is
 * skipped, a directory whose config (adapter_config.json) leads out is a namespace, and a node
 * whose weight file (adapter_model.safetensors, adapter.gguf) leads out is listed as failed with
 * the reason, and no load starts for it until a rescan finds other files.
 * Loads and probes apply the rule again at every open (adapter_load_beneath), on the descriptor
 * actually opened, so a file swapped for a symlink after the scan cannot lead out either. Their
 * messages, kept as the node's error and shown to clients, name files relative to the root; the
 * server learns the absolute directory from on_loaded and on_event, for its log.
 */
#include "adapters/registry.h"
#include "core/base.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "adapters/adapter_internal.h"

#define DEBOUNCE_MS 100
#define PROBES_MAX 2 /* probes in flight at once */

/* An adapter_registry_load_then waiting for its load, and then its result. */
typedef struct reg_waiter {
    adapter_load_cb cb;
    void *ud;
    uint64_t gen; /* the load (reg_node.gen) that answers it; 0 until the loop thread decides */
    adapter_load_result res;
    char err[256];
    struct reg_waiter *next;
} reg_waiter;

typedef struct reg_node {
    char id[ADAPTER_ID_MAX + 1];
    char path[PATH_MAX];
    bool has_adapter;
    uint64_t sig;
    adapter *current; /* resident version, one reference */
    bool loading;
    bool reload;    /* files changed while loading: load again after */
    bool want_load; /* asked from another thread; the loop starts it */
    bool failed;
    char error[256];
    bool pinned;
    bool kept; /* seen by the current scan merge */
    /* what the files with signature desc_sig say (format 0: they cannot be described) */
    adapter_probe_info desc;
    uint64_t desc_sig;
    bool has_desc;
    const void *probe; /* the probe job in flight for this node, NULL if none */
    uint64_t last_used;
    uint64_t loads, load_failures, evictions, hits;
    uint64_t gen;     /* loads started */
    uint64_t cur_sig; /* the signature of the files current was loaded from */
    reg_waiter *waiters;
} reg_node;

typedef struct reg_watch {
    uv_fs_event_t h;
    char dir[PATH_MAX];
    bool seen; /* still in the tree after the latest scan */
    struct reg_watch *next;
} reg_watch;

struct adapter_registry {
    adapter_registry_opts o;
    core_config cfg;
    char root[PATH_MAX]; /* realpath */
    pthread_mutex_t mu;
    reg_node **nodes; /* (n_nodes) sorted by id */
    int n_nodes;
    uint64_t tick;
    size_t resident_bytes;
    uint64_t misses;
    uv_async_t kick;
    uv_timer_t rescan_timer, debounce;
    reg_watch *watches;
    int jobs;             /* loads and probes in flight */
    int probes;           /* probes in flight */
    int probe_from;       /* where the search for the next node to probe starts */
    bool closing;         /* adapter_registry_free has begun: start no probe */
    int open_handles;     /* handles not yet closed */
    reg_waiter *answered; /* waiters with their result, to call outside the lock (flush_answers) */
};

typedef struct load_job {
    uv_work_t req;
    adapter_registry *r;
    char id[ADAPTER_ID_MAX + 1];
    char path[PATH_MAX];
    uint64_t gen; /* the node's load number */
    uint64_t sig; /* the node's files' signature when the load started */
    adapter *result;
    double ms; /* reading and validating */
    char err[256];
} load_job;

typedef struct probe_job {
    uv_work_t req;
    adapter_registry *r;
    char id[ADAPTER_ID_MAX + 1];
    uint64_t sig; /* the node's signature when the probe started */
    int rc;
    adapter_probe_info info;
} probe_job;

/* A scanned entry before the merge. */
typedef struct scan_entry {
    char id[ADAPTER_ID_MAX + 1];
    char path[PATH_MAX];
    bool has_adapter;
    uint64_t sig;
    char bad[256]; /* why its files cannot be loaded (one leads out of the root), "" if none */
} scan_entry;

typedef struct scan_list {
    scan_entry *v;
    int n, cap;
    char **dirs; /* every directory of the tree, for the watchers */
    int n_dirs, cap_dirs;
} scan_list;

const char *adapter_state_name(adapter_state s)
{
    static const char *const names[] = {"namespace", "unloaded", "loading", "ready", "failed"};
    return (unsigned)s < sizeof names / sizeof *names ? names[s] : "?";
}

/* ---- ids and paths ----------------------------------------------------------------------------
 */

static bool seg_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
}

int adapter_id_check(const char *id, char *err, size_t errlen)
{
    size_t n = strlen(id);
    if (n == 0 || n > ADAPTER_ID_MAX) {
        snprintf(err, errlen, "adapter id must be 1..%d bytes", ADAPTER_ID_MAX);
        return -EINVAL;
    }
    int depth = 0;
    const char *seg = id;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && id[i] != '/') {
            if (!seg_char(id[i])) {
                snprintf(err, errlen,
                         "adapter id '%.64s': character 0x%02x is not allowed (use A-Z a-z 0-9 . _ "
                         "- and / between segments)",
                         id, (unsigned char)id[i]);
                return -EINVAL;
            }
            continue;
        }
        size_t len = (size_t)(id + i - seg);
        if (len == 0 || len > ADAPTER_SEG_MAX || (len == 1 && seg[0] == '.') ||
            (len == 2 && seg[0] == '.' && seg[1] == '.')) {
            snprintf(err, errlen,
                     "adapter id '%.64s': empty, '.', '..' or over-long (>%d) segments are not "
                     "allowed",
                     id, ADAPTER_SEG_MAX);
            return -EINVAL;
        }
        if (++depth > ADAPTER_DEPTH_MAX) {
            snprintf(err, errlen, "adapter id '%.64s': deeper than %d levels", id,
                     ADAPTER_DEPTH_MAX);
            return -EINVAL;
        }
        seg = id + i + 1;
    }
    return 0;
}

/* Folds a file's identity and times into a signature: 1, or 0 when it is missing or not a
 * regular file, or -1 when it leads out of the root (a mark is folded in instead, so that the
 * signature changes when that is fixed). */
static int file_sig(const adapter_registry *r, const char *path, uint64_t *sig)
{
    char real[PATH_MAX];
    struct stat st;
    int rc = adapter__resolve_beneath(r->root, path, real);
    if (rc == -EXDEV) {
        *sig = core_hash64(*sig, "leaves the root", 15);
        return -1;
    }
    if (rc || stat(real, &st) || !S_ISREG(st.st_mode))
        return 0;
    int64_t parts[6] = {st.st_mtim.tv_sec,  st.st_mtim.tv_nsec, st.st_ctim.tv_sec,
                        st.st_ctim.tv_nsec, st.st_size,         (int64_t)st.st_ino};
    *sig = core_hash64(*sig, parts, sizeof parts);
    return 1;
}

/* ---- scanning -----------------------------------------------------------------------------------
 */

static int scan_push(scan_list *l, const char *id, const char *path, bool has, uint64_t sig,
                     const char *bad)
{
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 32;
        scan_entry *v = realloc(l->v, (size_t)cap * sizeof *v);
        if (!v)
            return -ENOMEM;
        l->v = v;
        l->cap = cap;
    }
    scan_entry *e = &l->v[l->n++];
    snprintf(e->id, sizeof e->id, "%s", id);
    snprintf(e->path, sizeof e->path, "%s", path);
    e->has_adapter = has;
    e->sig = sig;
    snprintf(e->bad, sizeof e->bad, "%s", bad);
    return 0;
}

static int scan_dir_push(scan_list *l, const char *dir)
{
    if (l->n_dirs == l->cap_dirs) {
        int cap = l->cap_dirs ? l->cap_dirs * 2 : 32;
        char **v = realloc(l->dirs, (size_t)cap * sizeof *v);
        if (!v)
            return -ENOMEM;
        l->dirs = v;
        l->cap_dirs = cap;
    }
    l->dirs[l->n_dirs] = strdup(dir);
    return l->dirs[l->n_dirs++] ? 0 : -ENOMEM;
}

static void scan_free(scan_list *l)
{
    for (int i = 0; i < l->n_dirs; i++)
        free(l->dirs[i]);
    free(l->dirs);
    free(l->v);
}

/* Is dir (node id) an adapter directory? Asks the loader table, row by row in its order (as a
 * load's detection does), and sets the signature from the files of every row it looks at, and
 * bad to why the node cannot be loaded when its weight file leads out of the root ("" otherwise).
 * A marker that is not the weight file (PEFT's adapter_config.json) counts only when it is a
 * regular file beneath the root: one that leads out makes the directory no adapter of that format
 * (a namespace, unless a later row claims it). A weight file that is its own marker
 * (adapter.gguf) leading out makes a node, listed as failed. */
static bool adapter_files(const adapter_registry *r, const char *dir, const char *id, uint64_t *sig,
                          char *bad, size_t cap)
{
    char p[PATH_MAX + 64];
    *sig = CORE_HASH_INIT;
    bad[0] = 0;
    for (const adapter__loader *const *l = adapter__loaders; *l; l++) {
        const adapter__loader *f = *l;
        bool separate_marker = strcmp(f->marker, f->weights) != 0;
        if (separate_marker) {
            snprintf(p, sizeof p, "%s/%s", dir, f->marker);
            if (file_sig(r, p, sig) <= 0)
                continue;
        }
        snprintf(p, sizeof p, "%s/%s", dir, f->weights);
        int rc = file_sig(r, p, sig);
        if (rc == 0 && !separate_marker)
            continue;
        if (rc == 0 && f->weights_alt) { /* weights missing: still a node, its load says why */
            snprintf(p, sizeof p, "%s/%s", dir, f->weights_alt);
            file_sig(r, p, sig); /* only looked for, never read: no reason to refuse */
        }
        if (rc < 0) /* the message a load would give (the id cut to fit the node's error) */
            snprintf(bad, cap, "%.180s/%s: " ADAPTER__ESCAPES, id, f->weights);
        return true;
    }
    return false;
}

static int scan_walk(const adapter_registry *r, scan_list *l, const char *dir, const char *id,
                     int depth)
{
    if (scan_dir_push(l, dir))
        return -ENOMEM;
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d)) && !rc && l->n < ADAPTER_NODES_MAX) {
        if (e->d_name[0] == '.')
            continue;
        char sub_id[ADAPTER_ID_MAX + 1], path[PATH_MAX + 1], real[PATH_MAX];
        int w = id[0] ? snprintf(sub_id, sizeof sub_id, "%s/%s", id, e->d_name)
                      : snprintf(sub_id, sizeof sub_id, "%s", e->d_name);
        if (w <= 0 || (size_t)w >= sizeof sub_id || adapter_id_check(sub_id, NULL, 0))
            continue;
        if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= sizeof path)
            continue;
        struct stat st;
        /* A symlink is followed only when its target stays inside the root. */
        if (adapter__resolve_beneath(r->root, path, real) || stat(real, &st) ||
            !S_ISDIR(st.st_mode))
            continue;
        uint64_t sig;
        char bad[256];
        bool has = adapter_files(r, real, sub_id, &sig, bad, sizeof bad);
        rc = scan_push(l, sub_id, real, has, has ? sig : 0, bad);
        if (!rc && depth + 1 < ADAPTER_DEPTH_MAX)
            rc = scan_walk(r, l, real, sub_id, depth + 1);
    }
    closedir(d);
    return rc;
}

static int cmp_entry(const void *a, const void *b)
{
    return strcmp(((const scan_entry *)a)->id, ((const scan_entry *)b)->id);
}

static int cmp_node(const void *a, const void *b)
{
    return strcmp((*(reg_node *const *)a)->id, (*(reg_node *const *)b)->id);
}

/* Binary search; caller holds the lock. */
static reg_node *find(const adapter_registry *r, const char *id)
{
    int lo = 0, hi = r->n_nodes - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2, c = strcmp(r->nodes[mid]->id, id);
        if (!c)
            return r->nodes[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return NULL;
}

/* ---- residency ----------------------------------------------------------------------------------
 */

static void drop_current(adapter_registry *r, reg_node *n)
{
    if (!n->current)
        return;
    r->resident_bytes -= n->current->bytes;
    adapter_unref(n->current);
    n->current = NULL;
}

/* Tells the server about ev (adapter_registry_opts.on_event). Lock held. */
static void emit(const adapter_registry *r, adapter_event ev)
{
    if (!r->o.on_event)
        return;
    if (!ev.err)
        ev.err = "";
    if (!ev.abs_dir)
        ev.abs_dir = "";
    r->o.on_event(r->o.ud, &ev);
}

/* Evicts least recently used, unpinned, unused versions until the budget holds. Lock held.
 * It runs only after an acquire has taken its references, never when a load finishes: a request
 * whose chain is being assembled would otherwise see its first members evicted by the later ones
 * whenever the chain is larger than the budget. */
static void evict(adapter_registry *r, const reg_node *keep)
{
    while (r->o.cache_bytes && r->resident_bytes > r->o.cache_bytes) {
        reg_node *victim = NULL;
        for (int i = 0; i < r->n_nodes; i++) {
            reg_node *n = r->nodes[i];
            if (!n->current || n->pinned || n == keep ||
                atomic_load_explicit(&n->current->refs, memory_order_acquire) > 1)
                continue;
            if (!victim || n->last_used < victim->last_used)
                victim = n;
        }
        if (!victim)
            break;
        emit(r, (adapter_event){.kind = ADAPTER_EVENT_EVICTED,
                                .id = victim->id,
                                .version = victim->current->hash,
                                .bytes = victim->current->bytes});
        drop_current(r, victim);
        victim->evictions++;
    }
}

/* ---- waiting for loads ---------------------------------------------------------------------- */

typedef enum which_waiters {
    PENDING, /* not yet given a load: the ones a load that starts now (or "unchanged") answers */
    UP_TO,   /* given a load numbered gen or earlier */
    EVERY    /* all of them (the node is gone, the registry closes) */
} which_waiters;

/* Moves the waiters of n that which (and gen) select onto r->answered, with the result; the
 * callbacks run later, outside the lock (flush_answers). Lock held. */
static void answer(adapter_registry *r, reg_node *n, which_waiters which, uint64_t gen, int rc,
                   bool unchanged, uint64_t version, const char *err)
{
    for (reg_waiter **pw = &n->waiters; *pw;) {
        reg_waiter *w = *pw;
        bool due = which == EVERY || (which == PENDING && w->gen == 0) ||
                   (which == UP_TO && w->gen != 0 && w->gen <= gen);
        if (!due) {
            pw = &w->next;
            continue;
        }
        *pw = w->next;
        w->res = (adapter_load_result){.rc = rc, .unchanged = unchanged, .version = version};
        snprintf(w->err, sizeof w->err, "%s", err ? err : "");
        w->next = r->answered;
        r->answered = w;
    }
}

/* Gives the waiters of n that have no load yet the load numbered gen. Lock held. */
static void assign(reg_node *n, uint64_t gen)
{
    for (reg_waiter *w = n->waiters; w; w = w->next)
        if (w->gen == 0)
            w->gen = gen;
}

/* Calls the callbacks of the answered waiters and frees them. Loop thread, lock not held. */
static void flush_answers(adapter_registry *r)
{
    pthread_mutex_lock(&r->mu);
    reg_waiter *w = r->answered;
    r->answered = NULL;
    pthread_mutex_unlock(&r->mu);
    while (w) {
        reg_waiter *next = w->next;
        w->res.err = w->res.rc ? w->err : NULL;
        w->cb(w->ud, &w->res);
        free(w);
        w = next;
    }
}

/* The signature of n's files now; *ok false when they are missing or lead out of the root. */
static uint64_t sig_now(const adapter_registry *r, const reg_node *n, bool *ok)
{
    uint64_t sig;
    char bad[256];
    *ok = adapter_files(r, n->path, n->id, &sig, bad, sizeof bad) && !bad[0];
    return sig;
}

/* Loads the node by its id beneath the root: the files are looked up and confined anew, so
 * whatever changed since the scan cannot lead out of the root. */
static void load_work(uv_work_t *req)
{
    load_job *j = req->data;
    double t0 = core_now();
    j->result = adapter_load_beneath(j->r->root, j->id, &j->r->cfg, j->err, sizeof j->err);
    j->ms = (core_now() - t0) * 1e3;
}

static void start_load(adapter_registry *r, reg_node *n);

static void load_done(uv_work_t *req, int status)
{
    load_job *j = req->data;
    adapter_registry *r = j->r;
    bool ok = false;
    pthread_mutex_lock(&r->mu);
    reg_node *n = find(r, j->id);
    if (status == UV_ECANCELED && !j->result)
        snprintf(j->err, sizeof j->err, "load cancelled");
    if (n && n->has_adapter) {
        n->loading = false;
        if (j->result) {
            /* The same content as the resident version: keep that one (its requests, its
             * identity); the copy just read is dropped below. */
            bool same = n->current && n->current->hash == j->result->hash;
            adapter_event ev = {.kind = same         ? ADAPTER_EVENT_UNCHANGED
                                        : n->current ? ADAPTER_EVENT_RELOADED
                                                     : ADAPTER_EVENT_LOADED,
                                .id = n->id,
                                .version = j->result->hash,
                                .old_version = n->current && !same ? n->current->hash : 0,
                                .bytes = j->result->bytes,
                                .ms = j->ms,
                                .abs_dir = j->path};
            emit(r, ev);
            if (!same) {
                drop_current(r, n);
                n->current = j->result;
                j->result = NULL;
                r->resident_bytes += n->current->bytes;
                n->loads++;
            }
            n->cur_sig = j->sig;
            n->failed = false;
            n->error[0] = 0;
            n->last_used = ++r->tick;
            ok = true;
            answer(r, n, UP_TO, j->gen, 0, same, n->current->hash, NULL);
        } else {
            n->failed = true;
            snprintf(n->error, sizeof n->error, "%s", j->err);
            n->load_failures++;
            emit(r, (adapter_event){.kind = ADAPTER_EVENT_FAILED,
                                    .id = n->id,
                                    .ms = j->ms,
                                    .err = j->err,
                                    .abs_dir = j->path});
            answer(r, n, UP_TO, j->gen, -EIO, false, 0, j->err);
        }
        if (n->reload) {
            n->reload = false;
            start_load(r, n);
        }
    }
    pthread_mutex_unlock(&r->mu);
    adapter_unref(j->result); /* the node vanished meanwhile, or the content was the same */
    flush_answers(r);
    r->jobs--;
    if (r->o.on_loaded)
        r->o.on_loaded(r->o.ud, j->id, ok, ok ? "" : j->err, j->path);
    free(j);
}

/* Queues a load of n on the loop's thread pool. Lock held, loop thread. */
static void start_load(adapter_registry *r, reg_node *n)
{
    n->want_load = false;
    if (n->loading) {
        n->reload = true;
        assign(n, n->gen + 1); /* the reload, which starts when this load ends */
        return;
    }
    load_job *j = calloc(1, sizeof *j);
    if (!j) {
        n->failed = true;
        snprintf(n->error, sizeof n->error, "out of memory");
        answer(r, n, EVERY, 0, -ENOMEM, false, 0, n->error);
        return;
    }
    j->r = r;
    j->req.data = j;
    snprintf(j->id, sizeof j->id, "%s", n->id);
    snprintf(j->path, sizeof j->path, "%s", n->path);
    bool ok;
    j->sig = sig_now(r, n, &ok);
    j->gen = n->gen + 1;
    if (uv_queue_work(r->o.loop, &j->req, load_work, load_done)) {
        free(j);
        n->failed = true;
        snprintf(n->error, sizeof n->error, "cannot queue the load");
        answer(r, n, EVERY, 0, -EAGAIN, false, 0, n->error);
        return;
    }
    n->gen = j->gen;
    assign(n, n->gen);
    n->loading = true;
    r->jobs++;
}

/* ---- descriptions -------------------------------------------------------------------------------
 */

static bool described(const reg_node *n)
{
    return n->has_desc && n->desc_sig == n->sig;
}

static void probe_work(uv_work_t *req)
{
    probe_job *j = req->data;
    char err[256];
    j->rc = adapter_probe_beneath(j->r->root, j->id, &j->r->cfg, &j->info, err, sizeof err);
}

static void probe_more(adapter_registry *r);

static void probe_done(uv_work_t *req, int status)
{
    probe_job *j = req->data;
    adapter_registry *r = j->r;
    pthread_mutex_lock(&r->mu);
    r->probes--;
    reg_node *n = find(r, j->id);
    if (n && n->probe == j) {
        n->probe = NULL;
        if (status == 0 && n->has_adapter && n->sig == j->sig) {
            n->desc = j->rc ? (adapter_probe_info){0} : j->info;
            n->desc_sig = j->sig;
            n->has_desc = true;
        }
    }
    probe_more(r);
    pthread_mutex_unlock(&r->mu);
    r->jobs--;
    free(j);
}

/* Starts probes of nodes that are not described for their current files, up to PROBES_MAX in
 * flight, resuming the search where the last one left off. Lock held, loop thread. */
static void probe_more(adapter_registry *r)
{
    for (int k = 0; k < r->n_nodes && r->probes < PROBES_MAX && !r->closing; k++) {
        int i = (r->probe_from + k) % r->n_nodes;
        reg_node *n = r->nodes[i];
        if (!n->has_adapter || n->probe || described(n))
            continue;
        probe_job *j = calloc(1, sizeof *j);
        if (!j)
            return; /* the next scan tries again */
        j->r = r;
        j->req.data = j;
        j->sig = n->sig;
        snprintf(j->id, sizeof j->id, "%s", n->id);
        if (uv_queue_work(r->o.loop, &j->req, probe_work, probe_done)) {
            free(j);
            return;
        }
        n->probe = j;
        r->probes++;
        r->jobs++;
        r->probe_from = i + 1;
    }
}

/* ---- merge a scan into the tree ---------------------------------------------------------------
 */

static void merge_scan(adapter_registry *r, scan_list *l)
{
    if (l->n > 1)
        qsort(l->v, (size_t)l->n, sizeof *l->v, cmp_entry);
    pthread_mutex_lock(&r->mu);
    reg_node **keep = calloc((size_t)l->n + 1, sizeof(reg_node *));
    int n_keep = 0;
    if (!keep) {
        pthread_mutex_unlock(&r->mu);
        return;
    }
    for (int i = 0; i < r->n_nodes; i++)
        r->nodes[i]->kept = false;
    for (int i = 0; i < l->n; i++) {
        const scan_entry *e = &l->v[i];
        reg_node *n = find(r, e->id);
        if (!n) {
            n = calloc(1, sizeof *n);
            if (!n)
                continue;
            snprintf(n->id, sizeof n->id, "%s", e->id);
        }
        if (e->has_adapter && !n->has_adapter)
            emit(r, (adapter_event){.kind = ADAPTER_EVENT_DISCOVERED, .id = n->id});
        else if (!e->has_adapter && n->has_adapter)
            emit(r, (adapter_event){.kind = ADAPTER_EVENT_REMOVED, .id = n->id});
        bool changed = n->sig != e->sig || n->has_adapter != e->has_adapter;
        snprintf(n->path, sizeof n->path, "%s", e->path);
        n->has_adapter = e->has_adapter;
        n->sig = e->sig;
        if (!n->has_adapter) {
            drop_current(r, n);
            n->failed = false;
            n->error[0] = 0;
            answer(r, n, EVERY, 0, -ENOENT, false, 0, "the node no longer holds an adapter");
        } else if (e->bad[0]) {
            /* Refused without reading anything; a resident version, loaded from good files,
             * serves on, as after any broken replacement. */
            n->failed = true;
            snprintf(n->error, sizeof n->error, "%s", e->bad);
        } else if (changed && (n->current || n->loading || n->pinned || n->failed)) {
            n->failed = false;
            start_load(r, n); /* a new version; the old one serves until it is ready */
        }
        n->kept = true;
        keep[n_keep++] = n;
    }
    /* Nodes gone from disk: drop their versions; sets in flight keep their references. */
    for (int i = 0; i < r->n_nodes; i++) {
        reg_node *n = r->nodes[i];
        if (!n->kept) {
            if (n->has_adapter)
                emit(r, (adapter_event){.kind = ADAPTER_EVENT_REMOVED, .id = n->id});
            drop_current(r, n);
            answer(r, n, EVERY, 0, -ENOENT, false, 0, "the node no longer exists");
            free(n);
        }
    }
    free(r->nodes);
    r->nodes = keep;
    r->n_nodes = n_keep;
    if (r->n_nodes > 1)
        qsort(r->nodes, (size_t)r->n_nodes, sizeof(reg_node *), cmp_node);
    probe_more(r);
    pthread_mutex_unlock(&r->mu);
}

/* ---- watching -----------------------------------------------------------------------------------
 */

static void on_handle_closed(uv_handle_t *h)
{
    adapter_registry *r = h->data;
    r->open_handles--;
    if (h->type == UV_FS_EVENT)
        free(h); /* a reg_watch: h is its first member */
}

static void on_debounce(uv_timer_t *t)
{
    adapter_registry_rescan(t->data);
}

static void on_fs_event(uv_fs_event_t *h, const char *name, int events, int status)
{
    (void)name;
    (void)events;
    (void)status;
    reg_watch *w = (reg_watch *)h;
    adapter_registry *r = w->h.data;
    uv_timer_start(&r->debounce, on_debounce, DEBOUNCE_MS, 0);
}

static void update_watches(adapter_registry *r, const scan_list *l)
{
    for (reg_watch *w = r->watches; w; w = w->next)
        w->seen = false;
    for (int i = 0; i < l->n_dirs; i++) {
        reg_watch *w = r->watches;
        while (w && strcmp(w->dir, l->dirs[i]) != 0)
            w = w->next;
        if (w) {
            w->seen = true;
            continue;
        }
        w = calloc(1, sizeof *w);
        if (!w)
            continue;
        snprintf(w->dir, sizeof w->dir, "%s", l->dirs[i]);
        uv_fs_event_init(r->o.loop, &w->h);
        w->h.data = r;
        r->open_handles++;
        if (uv_fs_event_start(&w->h, on_fs_event, w->dir, 0)) {
            uv_close((uv_handle_t *)&w->h, on_handle_closed);
            continue;
        }
        w->seen = true;
        w->next = r->watches;
        r->watches = w;
    }
    for (reg_watch **pw = &r->watches; *pw;) {
        reg_watch *w = *pw;
        if (w->seen) {
            pw = &w->next;
            continue;
        }
        *pw = w->next;
        uv_close((uv_handle_t *)&w->h, on_handle_closed);
    }
}

int adapter_registry_rescan(adapter_registry *r)
{
    scan_list l = {0};
    scan_walk(r, &l, r->root, "", 0);
    merge_scan(r, &l);
    if (r->o.watch)
        update_watches(r, &l);
    scan_free(&l);
    flush_answers(r);
    return r->n_nodes;
}

static void on_rescan_timer(uv_timer_t *t)
{
    adapter_registry_rescan(t->data);
}

/* Starts loads asked for from other threads; a node resident from files that have not changed
 * since is not read again ("unchanged"). */
static void on_kick(uv_async_t *a)
{
    adapter_registry *r = a->data;
    pthread_mutex_lock(&r->mu);
    for (int i = 0; i < r->n_nodes; i++) {
        reg_node *n = r->nodes[i];
        if (!n->want_load)
            continue;
        bool ok;
        if (n->current && !n->loading && sig_now(r, n, &ok) == n->cur_sig && ok) {
            n->want_load = false;
            n->failed = false;
            n->error[0] = 0;
            answer(r, n, PENDING, 0, 0, true, n->current->hash, NULL);
        } else {
            start_load(r, n);
        }
    }
    pthread_mutex_unlock(&r->mu);
    flush_answers(r);
}

/* ---- lifecycle ----------------------------------------------------------------------------------
 */

adapter_registry *adapter_registry_new(const adapter_registry_opts *o, char *err, size_t errlen)
{
    struct stat st;
    adapter_registry *r = calloc(1, sizeof *r);
    if (!r) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    r->o = *o;
    r->cfg = *o->cfg;
    errno = 0;
    if (!realpath(o->root, r->root) || stat(r->root, &st) || !S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "registry root '%s': %s", o->root,
                 errno ? strerror(errno) : "not a directory");
        free(r);
        return NULL;
    }
    pthread_mutex_init(&r->mu, NULL);
    uv_async_init(o->loop, &r->kick, on_kick);
    uv_timer_init(o->loop, &r->rescan_timer);
    uv_timer_init(o->loop, &r->debounce);
    r->kick.data = r->rescan_timer.data = r->debounce.data = r;
    r->open_handles = 3;
    adapter_registry_rescan(r);
    int every = o->rescan_ms == 0 ? 2000 : o->rescan_ms;
    if (every > 0)
        uv_timer_start(&r->rescan_timer, on_rescan_timer, (uint64_t)every, (uint64_t)every);
    return r;
}

void adapter_registry_free(adapter_registry *r)
{
    if (!r)
        return;
    r->closing = true;
    uv_close((uv_handle_t *)&r->kick, on_handle_closed);
    uv_close((uv_handle_t *)&r->rescan_timer, on_handle_closed);
    uv_close((uv_handle_t *)&r->debounce, on_handle_closed);
    for (reg_watch *w = r->watches, *next; w; w = next) {
        next = w->next;
        uv_close((uv_handle_t *)&w->h, on_handle_closed);
    }
    r->watches = NULL;
    while (r->jobs > 0 || r->open_handles > 0)
        uv_run(r->o.loop, UV_RUN_ONCE);
    pthread_mutex_lock(&r->mu);
    for (int i = 0; i < r->n_nodes; i++)
        answer(r, r->nodes[i], EVERY, 0, -ECANCELED, false, 0, "the registry is shutting down");
    pthread_mutex_unlock(&r->mu);
    flush_answers(r);
    for (int i = 0; i < r->n_nodes; i++) {
        drop_current(r, r->nodes[i]);
        free(r->nodes[i]);
    }
    free(r->nodes);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

/* ---- selection and acquisition ------------------------------------------------------------------
 */

static int add_item(adapter_selection *out, const char *id, float w, char *err, size_t errlen)
{
    if (out->n >= ADAPTER_SEL_MAX) {
        snprintf(err, errlen, "more than %d adapters in one request", ADAPTER_SEL_MAX);
        return -E2BIG;
    }
    snprintf(out->items[out->n].id, sizeof out->items[out->n].id, "%s", id);
    out->items[out->n++].weight = w;
    return 0;
}

int adapter_registry_resolve(adapter_registry *r, const char *select, const adapter_sel_item *list,
                             int n_list, adapter_selection *out, char *err, size_t errlen)
{
    out->n = 0;
    if (select && adapter_id_check(select, err, errlen))
        return -EINVAL;
    for (int i = 0; i < n_list; i++) {
        if (adapter_id_check(list[i].id, err, errlen))
            return -EINVAL;
        if (!isfinite(list[i].weight) || fabsf(list[i].weight) > 1000.0f) {
            snprintf(err, errlen, "adapter '%s': scale must be a finite number in [-1000, 1000]",
                     list[i].id);
            return -EINVAL;
        }
    }
    int rc = 0;
    pthread_mutex_lock(&r->mu);
    if (select) {
        if (!find(r, select)) {
            snprintf(err, errlen, "unknown adapter '%s'", select);
            rc = -ENOENT;
        }
        /* The chain: every prefix of the id that is an adapter node, root first. */
        char prefix[ADAPTER_ID_MAX + 1];
        for (size_t i = 0; !rc; i++) {
            if (select[i] != '/' && select[i] != 0)
                continue;
            memcpy(prefix, select, i);
            prefix[i] = 0;
            const reg_node *n = find(r, prefix);
            if (n && n->has_adapter)
                rc = add_item(out, prefix, 1.0f, err, errlen);
            if (!select[i])
                break;
        }
    }
    for (int i = 0; i < n_list && !rc; i++) {
        const reg_node *n = find(r, list[i].id);
        if (!n || !n->has_adapter) {
            snprintf(err, errlen,
                     n ? "'%s' is a namespace, not an adapter" : "unknown adapter '%s'",
                     list[i].id);
            rc = -ENOENT;
        } else {
            rc = add_item(out, list[i].id, list[i].weight, err, errlen);
        }
    }
    pthread_mutex_unlock(&r->mu);
    return rc;
}

int adapter_registry_acquire(adapter_registry *r, const adapter_selection *sel, adapter_set **out,
                             char *err, size_t errlen)
{
    adapter_set_item items[ADAPTER_SEL_MAX];
    int rc = 0, n = sel->n < ADAPTER_SEL_MAX ? sel->n : ADAPTER_SEL_MAX;
    bool waiting = false;
    *out = NULL;
    pthread_mutex_lock(&r->mu);
    for (int i = 0; i < n && rc == 0; i++) {
        reg_node *node = find(r, sel->items[i].id);
        if (!node || !node->has_adapter) {
            snprintf(err, errlen, "adapter '%s' no longer exists", sel->items[i].id);
            rc = -ENOENT;
        } else if (node->current) {
            items[i] = (adapter_set_item){node->current, sel->items[i].weight};
        } else if (node->failed && !node->loading) {
            snprintf(err, errlen, "adapter '%s' failed to load: %s", node->id, node->error);
            rc = -EIO;
        } else {
            if (!node->loading)
                start_load(r, node);
            waiting = true;
        }
    }
    if (rc == 0 && waiting) {
        r->misses++;
        rc = -EAGAIN;
    }
    if (rc == 0) {
        for (int i = 0; i < n; i++) {
            reg_node *node = find(r, sel->items[i].id);
            node->hits++;
            node->last_used = ++r->tick;
        }
        *out = adapter_set_new(items, n);
        if (!*out) {
            snprintf(err, errlen, "out of memory");
            rc = -ENOMEM;
        }
        evict(r, NULL);
    }
    pthread_mutex_unlock(&r->mu);
    return rc;
}

int adapter_registry_acquire_wait(adapter_registry *r, const adapter_selection *sel,
                                  adapter_set **out, char *err, size_t errlen)
{
    int rc;
    while ((rc = adapter_registry_acquire(r, sel, out, err, errlen)) == -EAGAIN)
        uv_run(r->o.loop, UV_RUN_ONCE);
    return rc;
}

/* ---- admin --------------------------------------------------------------------------------------
 */

static reg_node *admin_node(adapter_registry *r, const char *id, char *err, size_t errlen, int *rc)
{
    *rc = adapter_id_check(id, err, errlen);
    if (*rc)
        return NULL;
    reg_node *n = find(r, id);
    if (!n || !n->has_adapter) {
        snprintf(err, errlen, n ? "'%s' is a namespace, not an adapter" : "unknown adapter '%s'",
                 id);
        *rc = n ? -EINVAL : -ENOENT;
        return NULL;
    }
    return n;
}

int adapter_registry_load(adapter_registry *r, const char *id, char *err, size_t errlen)
{
    return adapter_registry_load_then(r, id, false, NULL, NULL, err, errlen);
}

int adapter_registry_load_then(adapter_registry *r, const char *id, bool pin, adapter_load_cb cb,
                               void *ud, char *err, size_t errlen)
{
    reg_waiter *w = cb ? calloc(1, sizeof *w) : NULL;
    if (cb && !w) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    int rc;
    pthread_mutex_lock(&r->mu);
    reg_node *n = admin_node(r, id, err, errlen, &rc);
    if (n) {
        n->failed = false;
        n->want_load = true;
        n->pinned |= pin;
        if (w) {
            w->cb = cb;
            w->ud = ud;
            w->next = n->waiters;
            n->waiters = w;
            w = NULL;
        }
    }
    pthread_mutex_unlock(&r->mu);
    free(w);
    if (n)
        uv_async_send(&r->kick);
    return rc;
}

int adapter_registry_check(adapter_registry *r, const char *id, char *err, size_t errlen)
{
    int rc;
    pthread_mutex_lock(&r->mu);
    admin_node(r, id, err, errlen, &rc);
    pthread_mutex_unlock(&r->mu);
    return rc;
}

int adapter_registry_check_path(adapter_registry *r, const char *id, const char *path, char *err,
                                size_t errlen)
{
    char real[PATH_MAX], node[2 * PATH_MAX], want[PATH_MAX];
    int rc = adapter_id_check(id, err, errlen);
    if (rc)
        return rc;
    if (!realpath(path, real)) {
        snprintf(err, errlen, "'%.200s': %s", path, strerror(errno));
        return -EINVAL;
    }
    /* r->root is a realpath set once by adapter_registry_new: no lock needed. */
    size_t n = strlen(r->root);
    if (strncmp(real, r->root, n) != 0 || real[n] != '/') {
        snprintf(err, errlen, "'%.200s' is not inside the adapter registry", path);
        return -EINVAL;
    }
    snprintf(node, sizeof node, "%s/%s", r->root, id);
    if (!realpath(node, want) || strcmp(real, want) != 0) {
        snprintf(err, errlen, "'%.200s' is not the directory of adapter '%s'", path, id);
        return -EINVAL;
    }
    return 0;
}

int adapter_registry_unload(adapter_registry *r, const char *id, char *err, size_t errlen)
{
    int rc;
    pthread_mutex_lock(&r->mu);
    reg_node *n = admin_node(r, id, err, errlen, &rc);
    if (n) {
        n->pinned = false;
        n->want_load = false;
        drop_current(r, n);
    }
    pthread_mutex_unlock(&r->mu);
    return rc;
}

int adapter_registry_pin(adapter_registry *r, const char *id, bool pin, char *err, size_t errlen)
{
    int rc;
    bool kick = false;
    pthread_mutex_lock(&r->mu);
    reg_node *n = admin_node(r, id, err, errlen, &rc);
    if (n) {
        n->pinned = pin;
        if (pin && !n->current && !n->loading)
            kick = n->want_load = true;
    }
    pthread_mutex_unlock(&r->mu);
    if (kick)
        uv_async_send(&r->kick);
    return rc;
}

/* ---- listing ------------------------------------------------------------------------------------
 */

int adapter_registry_list(adapter_registry *r, adapter_node_info **out, size_t *n_out)
{
    pthread_mutex_lock(&r->mu);
    adapter_node_info *v = calloc((size_t)r->n_nodes + 1, sizeof *v);
    if (!v) {
        pthread_mutex_unlock(&r->mu);
        return -ENOMEM;
    }
    for (int i = 0; i < r->n_nodes; i++) {
        const reg_node *n = r->nodes[i];
        adapter_node_info *o = &v[i];
        snprintf(o->id, sizeof o->id, "%s", n->id);
        const char *slash = strrchr(n->id, '/');
        if (slash)
            snprintf(o->parent, sizeof o->parent, "%.*s", (int)(slash - n->id), n->id);
        bool loading = n->loading || n->want_load;
        o->state = !n->has_adapter ? ADAPTER_NAMESPACE
                   : n->current    ? ADAPTER_READY
                   : loading       ? ADAPTER_LOADING
                   : n->failed     ? ADAPTER_FAILED
                                   : ADAPTER_UNLOADED;
        o->reloading = n->current && loading;
        snprintf(o->error, sizeof o->error, "%s", n->error);
        o->pinned = n->pinned;
        if (n->current) {
            const adapter *a = n->current;
            o->format = a->format;
            o->r = a->r;
            o->alpha = a->alpha;
            o->rslora = a->rslora;
            o->targets = a->targets;
            o->weight_bytes = a->bytes;
            o->bytes = a->bytes;
            o->in_use = atomic_load(&n->current->refs) - 1;
            o->version = a->hash;
        } else if (n->has_adapter && described(n) && n->desc.format) {
            const adapter_probe_info *d = &n->desc;
            o->format = d->format;
            o->r = d->r;
            o->alpha = d->alpha;
            o->rslora = d->rslora;
            o->targets = d->targets;
            o->weight_bytes = d->bytes;
        }
        o->loads = n->loads;
        o->load_failures = n->load_failures;
        o->evictions = n->evictions;
        o->hits = n->hits;
    }
    *n_out = (size_t)r->n_nodes;
    pthread_mutex_unlock(&r->mu);
    *out = v;
    return 0;
}

void adapter_registry_stats_get(adapter_registry *r, adapter_registry_stats *s)
{
    memset(s, 0, sizeof *s);
    pthread_mutex_lock(&r->mu);
    s->resident_bytes = r->resident_bytes;
    s->cache_bytes = r->o.cache_bytes;
    s->misses = r->misses;
    for (int i = 0; i < r->n_nodes; i++) {
        const reg_node *n = r->nodes[i];
        s->nodes += n->has_adapter;
        s->resident += n->current != NULL;
        s->loading += n->has_adapter && (n->loading || n->want_load);
        s->probing += n->has_adapter && !described(n);
        s->loads += n->loads;
        s->load_failures += n->load_failures;
        s->evictions += n->evictions;
        s->hits += n->hits;
    }
    pthread_mutex_unlock(&r->mu);
}
