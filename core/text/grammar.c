/* Byte grammars, their pushdown matcher and token masks: see grammar.h for the approach. */
#include "core/text/grammar.h"

#include <errno.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "core/base.h"

/* An element is one int32: kind in the low two bits, argument (a set or a rule) above. */
enum { E_END = 0, E_SET = 1, E_REF = 2 };
#define E_KIND(c) ((c)&3)
#define E_ARG(c) ((c) >> 2)
#define E_MAKE(k, a) ((int32_t)(((uint32_t)(a) << 2) | (uint32_t)(k)))

/* Expansion levels (nested references and rule ends resolved while one byte is fed). */
#define LEVELS_MAX 256
#define MASK_CACHE 16
/* Work bounds (expansion calls): for one byte fed to a state, and for one token mask or one token
 * fed. A grammar that can derive the empty text in exponentially many ways (a ::= "" | "", root
 * ::= a a a ... a) would otherwise hang the matcher; past a bound the matcher fails (-E2BIG) and
 * the sequence ends with an error. JSON Schema grammars stay under a hundred per byte. */
#define EXPAND_MAX (1L << 14)
#define WALK_WORK_MAX (1L << 25)

/* --- building ------------------------------------------------------------------------------- */

struct balt {
    int32_t *e;
    size_t n, cap;
};

struct brule {
    struct balt *alt;
    size_t n, cap;
};

struct core_gbuild {
    struct brule *rule;
    size_t n_rule, cap_rule;
    core_gset *set;
    size_t n_set, cap_set;
    int32_t *set_slot; /* (set_slots) open addressing over set, -1 empty */
    size_t set_slots;
    size_t n_elems;
    int err; /* the first error; sticks */
};

struct core_grammar {
    atomic_int refs;
    int32_t *code; /* every alternative's elements, each followed by E_END */
    int32_t *alt_start;
    int32_t *rule_alt0; /* (n_rule) first alternative of each rule */
    int32_t *rule_nalt;
    int n_rule;
    core_gset *set;
    int root;
};

core_gbuild *core_gbuild_new(void)
{
    return calloc(1, sizeof(core_gbuild));
}

void core_gbuild_free(core_gbuild *b)
{
    if (!b)
        return;
    for (size_t r = 0; r < b->n_rule; r++) {
        for (size_t a = 0; a < b->rule[r].n; a++)
            free(b->rule[r].alt[a].e);
        free(b->rule[r].alt);
    }
    free(b->rule);
    free(b->set);
    free(b->set_slot);
    free(b);
}

static int stick(core_gbuild *b, int err)
{
    if (!b->err)
        b->err = err;
    return b->err;
}

int core_gbuild_rule(core_gbuild *b)
{
    if (b->err)
        return b->err;
    if (b->n_rule >= (size_t)INT32_MAX >> 3)
        return stick(b, -E2BIG);
    if (core_grow(&b->rule, &b->cap_rule, b->n_rule + 1, sizeof *b->rule))
        return stick(b, -ENOMEM);
    b->rule[b->n_rule] = (struct brule){0};
    return (int)b->n_rule++;
}

int core_gbuild_alt(core_gbuild *b, int r)
{
    if (b->err)
        return b->err;
    if (r < 0 || (size_t)r >= b->n_rule)
        return stick(b, -EINVAL);
    struct brule *br = &b->rule[r];
    if (core_grow(&br->alt, &br->cap, br->n + 1, sizeof *br->alt))
        return stick(b, -ENOMEM);
    br->alt[br->n++] = (struct balt){0};
    if (++b->n_elems > CORE_GRAMMAR_ELEMS_MAX) /* its E_END */
        return stick(b, -E2BIG);
    return 0;
}

static int append(core_gbuild *b, int r, int32_t code)
{
    if (b->err)
        return b->err;
    if (r < 0 || (size_t)r >= b->n_rule || !b->rule[r].n)
        return stick(b, -EINVAL);
    if (++b->n_elems > CORE_GRAMMAR_ELEMS_MAX)
        return stick(b, -E2BIG);
    struct balt *a = &b->rule[r].alt[b->rule[r].n - 1];
    if (core_grow(&a->e, &a->cap, a->n + 1, sizeof *a->e))
        return stick(b, -ENOMEM);
    a->e[a->n++] = code;
    return 0;
}

static uint64_t set_hash(const core_gset *s)
{
    return core_hash64(CORE_HASH_INIT, s->w, sizeof s->w);
}

/* The index of set s in the builder's table, added when new; negative on error. */
static int32_t set_index(core_gbuild *b, const core_gset *s)
{
    if (b->n_set * 2 >= b->set_slots) {
        size_t slots = b->set_slots ? b->set_slots * 2 : 64;
        int32_t *slot = malloc(slots * sizeof *slot);
        if (!slot)
            return -ENOMEM;
        memset(slot, 0xff, slots * sizeof *slot);
        for (size_t i = 0; i < b->n_set; i++) {
            size_t h = set_hash(&b->set[i]) & (slots - 1);
            while (slot[h] >= 0)
                h = (h + 1) & (slots - 1);
            slot[h] = (int32_t)i;
        }
        free(b->set_slot);
        b->set_slot = slot;
        b->set_slots = slots;
    }
    size_t h = set_hash(s) & (b->set_slots - 1);
    for (; b->set_slot[h] >= 0; h = (h + 1) & (b->set_slots - 1))
        if (!memcmp(&b->set[b->set_slot[h]], s, sizeof *s))
            return b->set_slot[h];
    if (core_grow(&b->set, &b->cap_set, b->n_set + 1, sizeof *b->set))
        return -ENOMEM;
    b->set[b->n_set] = *s;
    b->set_slot[h] = (int32_t)b->n_set;
    return (int32_t)b->n_set++;
}

int core_gbuild_set(core_gbuild *b, int r, const core_gset *s)
{
    if (b->err)
        return b->err;
    int32_t i = set_index(b, s);
    return i < 0 ? stick(b, i) : append(b, r, E_MAKE(E_SET, i));
}

int core_gbuild_ref(core_gbuild *b, int r, int sub)
{
    if (b->err)
        return b->err;
    if (sub < 0 || (size_t)sub >= b->n_rule)
        return stick(b, -EINVAL);
    return append(b, r, E_MAKE(E_REF, sub));
}

int core_gbuild_lit(core_gbuild *b, int r, const char *lit, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        core_gset s = {{0}};
        core_gset_add(&s, (unsigned char)lit[i], (unsigned char)lit[i]);
        int rc = core_gbuild_set(b, r, &s);
        if (rc)
            return rc;
    }
    return b->err;
}

int core_gbuild_repeat(core_gbuild *b, int x, long min, long max)
{
    int r = core_gbuild_rule(b);
    if (r < 0)
        return r;
    core_gbuild_alt(b, r);
    for (long i = 0; i < min && !b->err; i++)
        core_gbuild_ref(b, r, x);
    if (max < 0) {
        int star = core_gbuild_rule(b); /* star ::= ε | x star */
        core_gbuild_alt(b, star);
        core_gbuild_alt(b, star);
        core_gbuild_ref(b, star, x);
        core_gbuild_ref(b, star, star);
        core_gbuild_ref(b, r, star);
    } else if (max > min) {
        int t = core_gbuild_rule(b); /* t_0 ::= ε; t_k ::= ε | x t_(k-1) */
        core_gbuild_alt(b, t);
        for (long k = 1; k <= max - min && !b->err; k++) {
            int u = core_gbuild_rule(b);
            core_gbuild_alt(b, u);
            core_gbuild_alt(b, u);
            core_gbuild_ref(b, u, x);
            core_gbuild_ref(b, u, t);
            t = u;
        }
        core_gbuild_ref(b, r, t);
    }
    return b->err ? b->err : r;
}

typedef struct bstr {
    const char *s;
    size_t n;
} bstr;

static int bstr_cmp(const void *x, const void *y)
{
    const bstr *a = x, *b = y;
    size_t n = a->n < b->n ? a->n : b->n;
    int c = n ? memcmp(a->s, b->s, n) : 0;
    return c ? c : (a->n > b->n) - (a->n < b->n);
}

/* The trie rule for v[0..k) (sorted, sharing their first d bytes) from byte d on. Recursion
 * depth is bounded by the branch points, at most k. */
static int trie(core_gbuild *b, const bstr *v, size_t k, size_t d)
{
    int r = core_gbuild_rule(b);
    if (r < 0)
        return r;
    size_t i = 0;
    if (v[0].n == d) { /* sorted: the strings that end here come first */
        core_gbuild_alt(b, r);
        while (i < k && v[i].n == d)
            i++;
    }
    while (i < k && !b->err) {
        unsigned char c = (unsigned char)v[i].s[d];
        size_t j = i, e = d + 1;
        while (j < k && (unsigned char)v[j].s[d] == c)
            j++;
        /* sorted: what the first and last of the group share, all of it shares */
        while (e < v[i].n && e < v[j - 1].n && v[i].s[e] == v[j - 1].s[e])
            e++;
        core_gbuild_alt(b, r);
        core_gbuild_lit(b, r, v[i].s + d, e - d);
        if (v[j - 1].n > e) {
            int sub = trie(b, v + i, j - i, e);
            if (sub < 0)
                return sub;
            core_gbuild_ref(b, r, sub);
        }
        i = j;
    }
    return b->err ? b->err : r;
}

int core_gbuild_one_of(core_gbuild *b, const char *const *s, const size_t *len, size_t n)
{
    if (b->err)
        return b->err;
    if (n < 1)
        return stick(b, -EINVAL);
    bstr *v = malloc(n * sizeof *v);
    if (!v)
        return stick(b, -ENOMEM);
    for (size_t i = 0; i < n; i++)
        v[i] = (bstr){s[i], len[i]};
    qsort(v, n, sizeof *v, bstr_cmp);
    int r = trie(b, v, n, 0);
    free(v);
    return r;
}

size_t core_gbuild_size(const core_gbuild *b)
{
    return b->n_elems;
}

size_t core_gbuild_rules(const core_gbuild *b)
{
    return b->n_rule;
}

/* Which rules derive a string of bytes (sets_ok) or the empty string (!sets_ok), into yes[] (one
 * per rule), by a worklist: an alternative holds when its count of references not yet known to
 * hold drops to 0 (never, without sets_ok, when it holds a byte set). 0 or -ENOMEM. */
static int derives(const core_gbuild *b, bool sets_ok, bool *yes)
{
    size_t nr = b->n_rule, n_alt = 0, n_ref = 0;
    for (size_t r = 0; r < nr; r++) {
        n_alt += b->rule[r].n;
        for (size_t a = 0; a < b->rule[r].n; a++)
            n_ref += b->rule[r].alt[a].n;
    }
    int32_t *left = malloc((n_alt + 1) * sizeof *left);
    int32_t *alt_rule = malloc((n_alt + 1) * sizeof *alt_rule);
    int32_t *occ0 = calloc(nr + 1, sizeof *occ0), *occ = malloc((n_ref + 1) * sizeof *occ);
    int32_t *work = malloc((nr + 1) * sizeof *work);
    int rc = -ENOMEM;
    if (!left || !alt_rule || !occ0 || !occ || !work)
        goto out;
    memset(yes, 0, nr * sizeof *yes);
    size_t ai = 0, nw = 0;
    for (size_t r = 0; r < nr; r++)
        for (size_t a = 0; a < b->rule[r].n; a++, ai++) {
            const struct balt *al = &b->rule[r].alt[a];
            alt_rule[ai] = (int32_t)r;
            left[ai] = 0;
            for (size_t i = 0; i < al->n && left[ai] >= 0; i++)
                if (E_KIND(al->e[i]) == E_REF)
                    left[ai]++;
                else if (!sets_ok)
                    left[ai] = -1;
            for (size_t i = 0; i < al->n && left[ai] > 0; i++)
                if (E_KIND(al->e[i]) == E_REF)
                    occ0[E_ARG(al->e[i])]++;
            if (left[ai] == 0 && !yes[r]) {
                yes[r] = true;
                work[nw++] = (int32_t)r;
            }
        }
    for (size_t r = 0, sum = 0; r <= nr; r++) { /* occ0[r]: the end of r's uses, filled down */
        sum += r < nr ? (size_t)occ0[r] : 0;
        occ0[r] = (int32_t)sum;
    }
    ai = 0;
    for (size_t r = 0; r < nr; r++)
        for (size_t a = 0; a < b->rule[r].n; a++, ai++)
            for (size_t i = 0; i < b->rule[r].alt[a].n && left[ai] > 0; i++)
                if (E_KIND(b->rule[r].alt[a].e[i]) == E_REF)
                    occ[--occ0[E_ARG(b->rule[r].alt[a].e[i])]] = (int32_t)ai;
    for (size_t w = 0; w < nw; w++)
        for (int32_t k = occ0[work[w]]; k < occ0[work[w] + 1]; k++) {
            int32_t al = occ[k], r = alt_rule[al];
            if (--left[al] == 0 && !yes[r]) {
                yes[r] = true;
                work[nw++] = r;
            }
        }
    rc = 0;
out:
    free(left);
    free(alt_rule);
    free(occ0);
    free(occ);
    free(work);
    return rc;
}

int core_gbuild_left_recursive(const core_gbuild *b)
{
    size_t nr = b->n_rule, n_ref = 0;
    for (size_t r = 0; r < nr; r++)
        for (size_t a = 0; a < b->rule[r].n; a++)
            n_ref += b->rule[r].alt[a].n;
    bool *null = malloc((nr + 1) * sizeof *null);
    int32_t *work = malloc((nr + 1) * sizeof *work), *deg = calloc(nr + 1, sizeof *deg);
    int32_t *edge0 = calloc(nr + 1, sizeof *edge0), *edge = malloc((n_ref + 1) * sizeof *edge);
    int32_t *pred0 = calloc(nr + 1, sizeof *pred0), *pred = malloc((n_ref + 1) * sizeof *pred);
    int found = -ENOMEM;
    if (!null || !work || !deg || !edge0 || !edge || !pred0 || !pred || derives(b, false, null))
        goto out;
    /* the left graph: r -> s when an alternative of r can reach s before reading a byte; rules
     * with no way out of it (out-degree dropping to 0) are peeled off; what stays reaches a
     * cycle */
    size_t ne = 0;
    for (size_t r = 0; r < nr; r++) {
        edge0[r] = (int32_t)ne;
        for (size_t a = 0; a < b->rule[r].n; a++) {
            const struct balt *al = &b->rule[r].alt[a];
            for (size_t i = 0; i < al->n && E_KIND(al->e[i]) == E_REF; i++) {
                edge[ne++] = E_ARG(al->e[i]);
                if (!null[E_ARG(al->e[i])])
                    break;
            }
        }
        deg[r] = (int32_t)(ne - (size_t)edge0[r]);
    }
    edge0[nr] = (int32_t)ne;
    for (size_t e = 0; e < ne; e++)
        pred0[edge[e]]++;
    for (size_t r = 0, sum = 0; r <= nr; r++) {
        sum += r < nr ? (size_t)pred0[r] : 0;
        pred0[r] = (int32_t)sum;
    }
    for (size_t r = 0; r < nr; r++)
        for (int32_t e = edge0[r]; e < edge0[r + 1]; e++)
            pred[--pred0[edge[e]]] = (int32_t)r;
    size_t nw = 0;
    for (size_t r = 0; r < nr; r++)
        if (!deg[r])
            work[nw++] = (int32_t)r;
    for (size_t w = 0; w < nw; w++)
        for (int32_t k = pred0[work[w]]; k < pred0[work[w] + 1]; k++)
            if (--deg[pred[k]] == 0)
                work[nw++] = pred[k];
    found = -1;
    for (size_t r = 0; r < nr && found < 0; r++)
        if (deg[r] > 0)
            found = (int)r;
    if (found >= 0) /* walk inside the remaining rules until on the cycle itself */
        for (size_t step = 0; step < nr; step++)
            for (int32_t e = edge0[found]; e < edge0[found + 1]; e++)
                if (deg[edge[e]] > 0) {
                    found = edge[e];
                    break;
                }
out:
    free(null);
    free(work);
    free(deg);
    free(edge0);
    free(edge);
    free(pred0);
    free(pred);
    return found;
}

int core_gbuild_productive(const core_gbuild *b, int root)
{
    if (root < 0 || (size_t)root >= b->n_rule)
        return 0;
    bool *yes = malloc((b->n_rule + 1) * sizeof *yes);
    int rc = !yes ? -ENOMEM : derives(b, true, yes);
    if (!rc)
        rc = yes[root];
    free(yes);
    return rc;
}

core_grammar *core_grammar_ref(core_grammar *g)
{
    if (g)
        atomic_fetch_add(&g->refs, 1);
    return g;
}

void core_grammar_free(core_grammar *g)
{
    if (!g || atomic_fetch_sub(&g->refs, 1) > 1)
        return;
    free(g->code);
    free(g->alt_start);
    free(g->rule_alt0);
    free(g->rule_nalt);
    free(g->set);
    free(g);
}

core_grammar *core_gbuild_finish(core_gbuild *b, int root, char *err, size_t errlen)
{
    if (b->err) {
        core_errf(err, errlen, "grammar: %s",
                  b->err == -E2BIG    ? "too large"
                  : b->err == -ENOMEM ? "out of memory"
                                      : "bad rule reference");
        return NULL;
    }
    if (root < 0 || (size_t)root >= b->n_rule) {
        core_errf(err, errlen, "grammar: no root rule");
        return NULL;
    }
    size_t n_alt = 0;
    for (size_t r = 0; r < b->n_rule; r++) {
        if (!b->rule[r].n) {
            core_errf(err, errlen, "grammar: rule %zu has no alternative", r);
            return NULL;
        }
        n_alt += b->rule[r].n;
    }
    core_grammar *g = calloc(1, sizeof *g);
    if (g) {
        g->code = malloc((b->n_elems + 1) * sizeof *g->code);
        g->alt_start = malloc(n_alt * sizeof *g->alt_start);
        g->rule_alt0 = malloc(b->n_rule * sizeof *g->rule_alt0);
        g->rule_nalt = malloc(b->n_rule * sizeof *g->rule_nalt);
        g->set = malloc((b->n_set ? b->n_set : 1) * sizeof *g->set);
    }
    if (!g || !g->code || !g->alt_start || !g->rule_alt0 || !g->rule_nalt || !g->set) {
        core_grammar_free(g);
        core_errf(err, errlen, "grammar: out of memory");
        return NULL;
    }
    size_t pos = 0, ai = 0;
    for (size_t r = 0; r < b->n_rule; r++) {
        g->rule_alt0[r] = (int32_t)ai;
        g->rule_nalt[r] = (int32_t)b->rule[r].n;
        for (size_t a = 0; a < b->rule[r].n; a++) {
            g->alt_start[ai++] = (int32_t)pos;
            if (b->rule[r].alt[a].n) /* an empty alternative has no array */
                memcpy(g->code + pos, b->rule[r].alt[a].e, b->rule[r].alt[a].n * sizeof *g->code);
            pos += b->rule[r].alt[a].n;
            g->code[pos++] = E_MAKE(E_END, 0);
        }
    }
    if (b->n_set)
        memcpy(g->set, b->set, b->n_set * sizeof *g->set);
    g->n_rule = (int)b->n_rule;
    g->root = root;
    atomic_init(&g->refs, 1);
    return g;
}

/* --- states --------------------------------------------------------------------------------- */

/* A set of stacks: d holds, for each, its length then its frames (bottom first). */
typedef struct gstate {
    int32_t *d;
    size_t n, cap;
    int n_stacks; /* more are dropped at CORE_GRAMMAR_STACKS_MAX */
} gstate;

/* What one expansion needs: the grammar, the state it writes and a scratch area of LEVELS_MAX
 * regions of CORE_GRAMMAR_DEPTH_MAX + 2 frames, one per nested level. */
typedef struct gexp {
    const core_grammar *g;
    gstate *out;
    int32_t *scratch;
    long work; /* expansion calls since the state step began */
    int oom;
    int over; /* work passed EXPAND_MAX: the state is incomplete */
} gexp;

#define REGION (CORE_GRAMMAR_DEPTH_MAX + 2)

static void state_clear(gstate *s)
{
    s->n = 0;
    s->n_stacks = 0;
}

static void state_add(gexp *x, const int32_t *fr, int n)
{
    gstate *s = x->out;
    for (size_t i = 0; i < s->n; i += 1 + (size_t)s->d[i])
        if (s->d[i] == n && !memcmp(s->d + i + 1, fr, (size_t)n * sizeof *fr))
            return;
    if (s->n_stacks >= CORE_GRAMMAR_STACKS_MAX) { /* dropping it would change the language */
        x->over = 1;
        return;
    }
    if (core_grow(&s->d, &s->cap, s->n + 1 + (size_t)n, sizeof *s->d)) {
        x->oom = 1;
        return;
    }
    s->d[s->n] = n;
    memcpy(s->d + s->n + 1, fr, (size_t)n * sizeof *fr);
    s->n += 1 + (size_t)n;
    s->n_stacks++;
}

/* Resolves references and alternative ends at the top of buf[0..n) (a region at level lv)
 * until every resulting stack's top is a byte set (or it is empty), adding them to x->out. */
static void expand(gexp *x, int32_t *buf, int n, int lv)
{
    if (++x->work > EXPAND_MAX) {
        x->over = 1;
        return;
    }
    if (n == 0) {
        state_add(x, buf, 0);
        return;
    }
    if (lv + 1 >= LEVELS_MAX)
        return; /* left recursion or a reference chain too deep: the branch dies */
    const core_grammar *g = x->g;
    int32_t top = buf[n - 1], c = g->code[top];
    if (E_KIND(c) == E_SET) {
        state_add(x, buf, n);
    } else if (E_KIND(c) == E_END) {
        if (n == 1) {
            state_add(x, buf, 0);
            return;
        }
        expand(x, buf, n - 1, lv); /* pop: the frame below is where the caller continues */
    } else {
        int32_t *nb = x->scratch + (size_t)(lv + 1) * REGION;
        memcpy(nb, buf, (size_t)n * sizeof *buf);
        int m = n;
        nb[m - 1] = top + 1;
        /* A reference last in its alternative is a tail call: pop the frames it would return
         * to only to end them, so right recursion keeps the stack flat. Every frame below the
         * top holds where its caller continues. */
        while (m > 0 && E_KIND(g->code[nb[m - 1]]) == E_END)
            m--;
        if (m >= CORE_GRAMMAR_DEPTH_MAX)
            return;
        int r = E_ARG(c);
        for (int a = 0; a < g->rule_nalt[r]; a++) {
            nb[m] = g->alt_start[g->rule_alt0[r] + a];
            expand(x, nb, m + 1, lv + 1);
        }
    }
}

/* out = the stacks of in that take byte c, advanced and expanded. */
static void state_step(gexp *x, const gstate *in, unsigned c, gstate *out)
{
    const core_grammar *g = x->g;
    x->out = out;
    x->work = 0;
    x->over = 0;
    state_clear(out);
    for (size_t i = 0; i < in->n; i += 1 + (size_t)in->d[i]) {
        int n = in->d[i];
        if (n == 0)
            continue;
        const int32_t *fr = in->d + i + 1;
        int32_t top = fr[n - 1];
        if (!core_gset_has(&g->set[E_ARG(g->code[top])], c))
            continue;
        memcpy(x->scratch, fr, (size_t)n * sizeof *fr);
        x->scratch[n - 1] = top + 1;
        expand(x, x->scratch, n, 0);
    }
}

static void state_start(gexp *x, gstate *out)
{
    const core_grammar *g = x->g;
    x->out = out;
    x->work = 0;
    x->over = 0;
    state_clear(out);
    for (int a = 0; a < g->rule_nalt[g->root]; a++) {
        x->scratch[0] = g->alt_start[g->rule_alt0[g->root] + a];
        expand(x, x->scratch, 1, 0);
    }
}

static bool state_accepting(const gstate *s)
{
    for (size_t i = 0; i < s->n; i += 1 + (size_t)s->d[i])
        if (s->d[i] == 0)
            return true;
    return false;
}

static bool state_done(const gstate *s)
{
    for (size_t i = 0; i < s->n; i += 1 + (size_t)s->d[i])
        if (s->d[i] > 0)
            return false;
    return true;
}

static int32_t *new_scratch(void)
{
    return malloc((size_t)LEVELS_MAX * REGION * sizeof(int32_t));
}

/* Runs g over text[0..n) from its start: 1 when it is a whole match (whole) or any stack is
 * alive at the end, else 0; -E2BIG when a step passed the work bound, -ENOMEM. */
static int run_text(const core_grammar *g, const char *text, size_t n, bool whole)
{
    gstate st[2] = {{0}};
    int32_t *scratch = new_scratch();
    gexp x = {.g = g, .scratch = scratch};
    int rc = -ENOMEM, cur = 0;
    if (scratch) {
        state_start(&x, &st[0]);
        for (size_t i = 0; i < n && st[cur].n_stacks && !x.over; i++) {
            state_step(&x, &st[cur], (unsigned char)text[i], &st[cur ^ 1]);
            cur ^= 1;
        }
        rc = x.oom    ? -ENOMEM
             : x.over ? -E2BIG
                      : (whole ? state_accepting(&st[cur]) : st[cur].n_stacks > 0);
    }
    free(st[0].d);
    free(st[1].d);
    free(scratch);
    return rc;
}

int core_grammar_start(const core_grammar *g)
{
    return run_text(g, "", 0, false);
}

bool core_grammar_viable(const core_grammar *g)
{
    return run_text(g, "", 0, false) == 1;
}

bool core_grammar_matches(const core_grammar *g, const char *text, size_t n)
{
    return run_text(g, text, n, true) == 1;
}

/* --- the vocabulary ----------------------------------------------------------------------------
 */

struct core_gvocab {
    int32_t n_vocab;
    int32_t n_sorted;
    int32_t *order;   /* (n_sorted) ids of the tokens with bytes, sorted by their bytes */
    uint32_t *lcp;    /* (n_sorted) bytes shared with the token before in order */
    uint32_t *off;    /* (n_vocab + 1) each token's bytes in bytes[] */
    uint8_t *bytes;   /* every token's bytes */
    uint8_t *eog;     /* (n_vocab) 1 for end-of-generation tokens */
    uint32_t max_len; /* longest token */
};

/* Merge sort by token bytes (no global context, so any thread may build a vocabulary). */
static void sort_ids(const core_gvocab *v, int32_t *a, int32_t *tmp, int32_t n)
{
    if (n < 2)
        return;
    int32_t h = n / 2;
    sort_ids(v, a, tmp, h);
    sort_ids(v, a + h, tmp, n - h);
    int32_t i = 0, j = h, k = 0;
    while (i < h && j < n) {
        int32_t x = a[i], y = a[j];
        uint32_t lx = v->off[x + 1] - v->off[x], ly = v->off[y + 1] - v->off[y];
        int c = memcmp(v->bytes + v->off[x], v->bytes + v->off[y], lx < ly ? lx : ly);
        if (!c)
            c = lx != ly ? (lx < ly ? -1 : 1) : (x < y ? -1 : 1);
        tmp[k++] = c <= 0 ? a[i++] : a[j++];
    }
    while (i < h)
        tmp[k++] = a[i++];
    while (j < n)
        tmp[k++] = a[j++];
    memcpy(a, tmp, (size_t)n * sizeof *a);
}

void core_gvocab_free(core_gvocab *v)
{
    if (!v)
        return;
    free(v->order);
    free(v->lcp);
    free(v->off);
    free(v->bytes);
    free(v->eog);
    free(v);
}

int32_t core_gvocab_n_vocab(const core_gvocab *v)
{
    return v->n_vocab;
}

core_gvocab *core_gvocab_new(const core_tokenizer *t, char *err, size_t errlen)
{
    int32_t n = core_tokenizer_n_vocab(t);
    core_gvocab *v = calloc(1, sizeof *v);
    size_t cap = 0, used = 0;
    char buf[1024];
    if (!v || n <= 0)
        goto oom;
    v->n_vocab = n;
    v->off = malloc(((size_t)n + 1) * sizeof *v->off);
    v->eog = calloc((size_t)n, 1);
    v->order = malloc((size_t)n * sizeof *v->order);
    v->lcp = malloc((size_t)n * sizeof *v->lcp);
    if (!v->off || !v->eog || !v->order || !v->lcp)
        goto oom;
    for (int32_t id = 0; id < n; id++) {
        v->off[id] = (uint32_t)used;
        v->eog[id] = core_tokenizer_is_eog(t, id);
        int len = v->eog[id] ? 0 : core_token_to_bytes(t, id, false, buf, sizeof buf);
        if (len < 0 || (size_t)len > sizeof buf)
            len = 0; /* a token longer than 1 KiB is never proposed */
        if (core_grow(&v->bytes, &cap, used + (size_t)len + 1, 1))
            goto oom;
        memcpy(v->bytes + used, buf, (size_t)len);
        used += (size_t)len;
        if ((uint32_t)len > v->max_len)
            v->max_len = (uint32_t)len;
        if (len > 0)
            v->order[v->n_sorted++] = id;
    }
    v->off[n] = (uint32_t)used;
    int32_t *tmp = malloc((size_t)(v->n_sorted ? v->n_sorted : 1) * sizeof *tmp);
    if (!tmp)
        goto oom;
    sort_ids(v, v->order, tmp, v->n_sorted);
    free(tmp);
    for (int32_t i = 0; i < v->n_sorted; i++) {
        uint32_t l = 0;
        if (i > 0) {
            int32_t a = v->order[i - 1], b = v->order[i];
            uint32_t la = v->off[a + 1] - v->off[a], lb = v->off[b + 1] - v->off[b];
            while (l < la && l < lb && v->bytes[v->off[a] + l] == v->bytes[v->off[b] + l])
                l++;
        }
        v->lcp[i] = l;
    }
    return v;
oom:
    core_gvocab_free(v);
    core_errf(err, errlen, "grammar vocabulary: %s", n <= 0 ? "empty" : "out of memory");
    return NULL;
}

/* --- matching ----------------------------------------------------------------------------------
 *
 * A matcher interns the states it meets (each distinct set of stacks gets an id) and remembers
 * every transition it computed, (state, byte) -> state: the pushdown automaton becomes, lazily, a
 * DFA over the states this request reaches. A mask walk then costs a table lookup per trie edge
 * once its states are known (inside a string, every letter leads to the same state), and the
 * masks of the last MASK_CACHE states are kept whole. The tables are dropped and rebuilt from
 * the current state when they grow past FLUSH_STATES or FLUSH_EDGES (checked between walks).
 */

#define FLUSH_STATES 20000
#define FLUSH_EDGES (1u << 21)
#define DEAD (-1)

struct sinfo {
    size_t off; /* in sd */
    uint32_t n; /* ints */
    uint64_t hash;
    bool accepting, done;
};

struct mask_entry {
    int32_t state; /* interned id; -1 = empty */
    uint64_t *bits;
    int32_t count;
    uint64_t used; /* LRU clock */
};

struct core_gmatch {
    const core_grammar *g;
    const core_gvocab *v;
    gexp x;
    gstate tmp;
    /* interned states: contents, info, and an open-addressing index (-1 empty) */
    int32_t *sd;
    size_t sd_n, sd_cap;
    struct sinfo *st;
    size_t n_st, cap_st;
    int32_t *sidx;
    size_t sidx_cap;
    /* transitions: key (state << 8 | byte) + 1 (0 = empty slot), value the next state or DEAD */
    uint64_t *tkey;
    int32_t *tval;
    size_t t_n, t_cap;
    int32_t cur;
    int32_t *depth; /* (v->max_len + 1) state ids along the mask walk */
    struct mask_entry cache[MASK_CACHE];
    uint64_t clock, computed, cached;
    long walk_work; /* expansion calls in this mask walk or token feed */
    int oom;
    int over; /* a step passed a work bound: the matcher is unusable (sticky) */
};

void core_gmatch_free(core_gmatch *m)
{
    if (!m)
        return;
    free(m->x.scratch);
    free(m->tmp.d);
    free(m->sd);
    free(m->st);
    free(m->sidx);
    free(m->tkey);
    free(m->tval);
    free(m->depth);
    for (int i = 0; i < MASK_CACHE; i++)
        free(m->cache[i].bits);
    free(m);
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return x;
}

/* The id of state s (its contents copied in when new), or -1 with m->oom set. */
static int32_t intern(core_gmatch *m, const gstate *s)
{
    uint64_t h = s->n ? core_hash64(CORE_HASH_INIT, s->d, s->n * sizeof *s->d) : 1;
    if ((m->n_st + 1) * 2 > m->sidx_cap) {
        size_t cap = m->sidx_cap ? m->sidx_cap * 2 : 1024;
        int32_t *idx = malloc(cap * sizeof *idx);
        if (!idx) {
            m->oom = 1;
            return -1;
        }
        memset(idx, 0xff, cap * sizeof *idx);
        for (size_t i = 0; i < m->n_st; i++) {
            size_t k = m->st[i].hash & (cap - 1);
            while (idx[k] >= 0)
                k = (k + 1) & (cap - 1);
            idx[k] = (int32_t)i;
        }
        free(m->sidx);
        m->sidx = idx;
        m->sidx_cap = cap;
    }
    size_t k = h & (m->sidx_cap - 1);
    for (; m->sidx[k] >= 0; k = (k + 1) & (m->sidx_cap - 1)) {
        const struct sinfo *e = &m->st[m->sidx[k]];
        if (e->hash == h && e->n == s->n &&
            (!s->n || !memcmp(m->sd + e->off, s->d, s->n * sizeof *s->d)))
            return m->sidx[k];
    }
    if (core_grow(&m->st, &m->cap_st, m->n_st + 1, sizeof *m->st) ||
        core_grow(&m->sd, &m->sd_cap, m->sd_n + s->n + 1, sizeof *m->sd)) {
        m->oom = 1;
        return -1;
    }
    if (s->n)
        memcpy(m->sd + m->sd_n, s->d, s->n * sizeof *s->d);
    m->st[m->n_st] = (struct sinfo){.off = m->sd_n,
                                    .n = (uint32_t)s->n,
                                    .hash = h,
                                    .accepting = state_accepting(s),
                                    .done = state_done(s)};
    m->sd_n += s->n;
    m->sidx[k] = (int32_t)m->n_st;
    return (int32_t)m->n_st++;
}

/* A read-only view of interned state id (valid until the next intern). */
static gstate view(const core_gmatch *m, int32_t id)
{
    const struct sinfo *e = &m->st[id];
    return (gstate){.d = m->sd + e->off, .n = e->n}; /* n_stacks unused: stepping reads d, n */
}

static int edge_grow(core_gmatch *m)
{
    size_t cap = m->t_cap ? m->t_cap * 2 : 4096;
    uint64_t *key = calloc(cap, sizeof *key);
    int32_t *val = malloc(cap * sizeof *val);
    if (!key || !val) {
        free(key);
        free(val);
        return -ENOMEM;
    }
    for (size_t i = 0; i < m->t_cap; i++) {
        if (!m->tkey[i])
            continue;
        size_t k = mix64(m->tkey[i]) & (cap - 1);
        while (key[k])
            k = (k + 1) & (cap - 1);
        key[k] = m->tkey[i];
        val[k] = m->tval[i];
    }
    free(m->tkey);
    free(m->tval);
    m->tkey = key;
    m->tval = val;
    m->t_cap = cap;
    return 0;
}

/* The state after byte c from state id: DEAD when no stack takes it; -2 with m->oom on no
 * memory. */
static int32_t step(core_gmatch *m, int32_t id, unsigned c)
{
    uint64_t key = ((uint64_t)id << 8 | c) + 1;
    if ((m->t_n + 1) * 2 > m->t_cap && edge_grow(m)) {
        m->oom = 1;
        return -2;
    }
    size_t k = mix64(key) & (m->t_cap - 1);
    for (; m->tkey[k]; k = (k + 1) & (m->t_cap - 1))
        if (m->tkey[k] == key)
            return m->tval[k];
    gstate in = view(m, id);
    m->x.oom = 0;
    state_step(&m->x, &in, c, &m->tmp);
    if (m->x.oom) {
        m->oom = 1;
        return -2;
    }
    if (m->x.over || (m->walk_work += m->x.work) > WALK_WORK_MAX) {
        m->over = 1;
        return -2;
    }
    int32_t to = DEAD;
    if (m->tmp.n_stacks && (to = intern(m, &m->tmp)) < 0)
        return -2;
    m->tkey[k] = key;
    m->tval[k] = to;
    m->t_n++;
    return to;
}

/* Drops every interned state and transition but the current state (between walks, when the
 * tables grew past their bounds). */
static int flush(core_gmatch *m)
{
    gstate cur = view(m, m->cur), keep = {0};
    if (core_grow(&keep.d, &keep.cap, cur.n ? cur.n : 1, sizeof *keep.d)) {
        m->oom = 1;
        return -ENOMEM;
    }
    if (cur.n)
        memcpy(keep.d, cur.d, cur.n * sizeof *cur.d);
    keep.n = cur.n;
    m->n_st = m->sd_n = m->t_n = 0;
    memset(m->sidx, 0xff, m->sidx_cap * sizeof *m->sidx);
    memset(m->tkey, 0, m->t_cap * sizeof *m->tkey);
    for (int i = 0; i < MASK_CACHE; i++)
        m->cache[i].state = -1;
    m->cur = intern(m, &keep);
    free(keep.d);
    return m->cur < 0 ? -ENOMEM : 0;
}

core_gmatch *core_gmatch_new(const core_grammar *g, const core_gvocab *v, char *err, size_t errlen)
{
    core_gmatch *m = calloc(1, sizeof *m);
    gstate start = {0};
    if (!m || !(m->x.scratch = new_scratch()) ||
        !(m->depth = calloc((size_t)v->max_len + 1, sizeof *m->depth)))
        goto oom;
    m->g = g;
    m->v = v;
    m->x.g = g;
    for (int i = 0; i < MASK_CACHE; i++)
        m->cache[i].state = -1;
    state_start(&m->x, &start);
    if (m->x.oom)
        goto oom;
    if (!start.n_stacks || m->x.over) {
        free(start.d);
        core_gmatch_free(m);
        core_errf(err, errlen, "grammar matcher: the grammar %s",
                  m->x.over ? "is too ambiguous to follow" : "matches nothing");
        return NULL;
    }
    if ((m->cur = intern(m, &start)) < 0 || edge_grow(m))
        goto oom;
    free(start.d);
    return m;
oom:
    free(start.d);
    core_gmatch_free(m);
    core_errf(err, errlen, "grammar matcher: out of memory");
    return NULL;
}

bool core_gmatch_accepting(const core_gmatch *m)
{
    return m->st[m->cur].accepting;
}

bool core_gmatch_done(const core_gmatch *m)
{
    return m->st[m->cur].done;
}

/* The state after token id's bytes from the current one: DEAD, or -2 on no memory. */
static int32_t feed_token(core_gmatch *m, int32_t id)
{
    const core_gvocab *v = m->v;
    const uint8_t *p = v->bytes + v->off[id];
    uint32_t len = v->off[id + 1] - v->off[id];
    int32_t s = len ? m->cur : DEAD;
    m->walk_work = 0;
    for (uint32_t i = 0; i < len && s >= 0; i++)
        s = step(m, s, p[i]);
    return s;
}

bool core_gmatch_allows(core_gmatch *m, int32_t id)
{
    if (id < 0 || id >= m->v->n_vocab)
        return false;
    if (m->v->eog[id])
        return core_gmatch_accepting(m);
    return feed_token(m, id) >= 0;
}

int core_gmatch_accept(core_gmatch *m, int32_t id)
{
    if (id < 0 || id >= m->v->n_vocab)
        return -EINVAL;
    if (m->v->eog[id])
        return core_gmatch_accepting(m) ? 0 : -EINVAL;
    int32_t s = feed_token(m, id);
    if (s == -2)
        return m->over ? -E2BIG : -ENOMEM;
    if (s < 0)
        return -EINVAL;
    m->cur = s;
    if ((m->n_st > FLUSH_STATES || m->t_n > FLUSH_EDGES) && flush(m) < 0)
        return -ENOMEM;
    return 0;
}

static int32_t walk_mask(core_gmatch *m, uint64_t *bits)
{
    const core_gvocab *v = m->v;
    size_t words = ((size_t)v->n_vocab + 63) / 64;
    memset(bits, 0, words * sizeof *bits);
    int32_t count = 0, *st = m->depth;
    st[0] = m->cur;
    m->walk_work = 0;
    uint32_t have = 0, dead = UINT32_MAX;
    for (int32_t i = 0; i < v->n_sorted; i++) {
        int32_t id = v->order[i];
        uint32_t p = v->lcp[i];
        if (dead <= p)
            continue;
        if (have > p)
            have = p;
        dead = UINT32_MAX;
        const uint8_t *b = v->bytes + v->off[id];
        uint32_t len = v->off[id + 1] - v->off[id];
        for (uint32_t d = have + 1; d <= len; d++) {
            st[d] = step(m, st[d - 1], b[d - 1]);
            if (st[d] < 0) {
                if (st[d] == -2)
                    return m->over ? -E2BIG : -ENOMEM;
                dead = d;
                break;
            }
        }
        if (dead != UINT32_MAX) {
            have = dead;
            continue;
        }
        have = len;
        bits[id >> 6] |= 1ULL << (id & 63);
        count++;
    }
    if (core_gmatch_accepting(m))
        for (int32_t id = 0; id < v->n_vocab; id++)
            if (v->eog[id]) {
                bits[id >> 6] |= 1ULL << (id & 63);
                count++;
            }
    return count;
}

int32_t core_gmatch_mask(core_gmatch *m, uint64_t *bits)
{
    size_t words = ((size_t)m->v->n_vocab + 63) / 64;
    struct mask_entry *e = NULL, *lru = &m->cache[0];
    for (int i = 0; i < MASK_CACHE; i++) {
        struct mask_entry *c = &m->cache[i];
        if (c->state == m->cur) {
            e = c;
            break;
        }
        if (c->state < 0 || (lru->state >= 0 && c->used < lru->used))
            lru = c;
    }
    if (e) {
        e->used = ++m->clock;
        memcpy(bits, e->bits, words * sizeof *bits);
        m->cached++;
        return e->count;
    }
    int32_t count = walk_mask(m, bits);
    if (count < 0)
        return count;
    m->computed++;
    e = lru;
    if (!e->bits && !(e->bits = malloc(words * sizeof *e->bits)))
        return count; /* not cached; the mask itself is right */
    memcpy(e->bits, bits, words * sizeof *bits);
    e->state = m->cur;
    e->count = count;
    e->used = ++m->clock;
    return count;
}

int core_gmatch_error(const core_gmatch *m)
{
    return m->over ? -E2BIG : m->oom ? -ENOMEM : 0;
}

#define STR_(x) #x
#define STR(x) STR_(x)

const char *core_gmatch_failure(const core_gmatch *m)
{
    return m->over ? "the grammar is too ambiguous to follow (more than " STR(
                         CORE_GRAMMAR_STACKS_MAX) " ways open at once, or one text derived in "
                                                  "too many ways)"
           : m->oom ? "out of memory"
                    : NULL;
}

void core_gmatch_counts(const core_gmatch *m, uint64_t *computed, uint64_t *cached)
{
    *computed = m->computed;
    *cached = m->cached;
}
