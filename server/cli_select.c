/* --registry / --select / --adapter for the command-line tools: a registry on a private loop,
 * loaded synchronously. */
#include "server/cli_select.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/cli.h"

int srv_cli_sel_arg(srv_cli_sel *s, const char *flag, const char *value)
{
    if (!strcmp(flag, "--registry")) {
        s->registry = value;
        return 1;
    }
    if (!strcmp(flag, "--select")) {
        s->select = value;
        return 1;
    }
    if (strcmp(flag, "--adapter") != 0)
        return 0;
    if (s->n_items >= ADAPTER_SEL_MAX) {
        fprintf(stderr, "at most %d --adapter options\n", ADAPTER_SEL_MAX);
        return -1;
    }
    adapter_sel_item *it = &s->items[s->n_items];
    const char *colon = strrchr(value, ':');
    size_t n = colon ? (size_t)(colon - value) : strlen(value);
    double w = 1.0;
    if (n == 0 || n >= sizeof it->id || (colon && srv_parse_float(colon + 1, &w))) {
        fprintf(stderr, "--adapter takes ID or ID:SCALE, got '%s'\n", value);
        return -1;
    }
    memcpy(it->id, value, n);
    it->id[n] = 0;
    it->weight = (float)w;
    s->n_items++;
    return 1;
}

int srv_cli_sel_wanted(const srv_cli_sel *s)
{
    return s->select || s->n_items;
}

int srv_cli_sel_open(srv_cli_sel *s, const core_config *cfg, char *err, size_t errlen)
{
    if (!s->registry)
        s->registry = "registry";
    if (uv_loop_init(&s->loop)) {
        snprintf(err, errlen, "cannot start an event loop");
        return -1;
    }
    adapter_registry_opts o = {
        .root = s->registry, .cfg = cfg, .loop = &s->loop, .rescan_ms = -1, .watch = false};
    s->reg = adapter_registry_new(&o, err, errlen);
    if (!s->reg) {
        uv_loop_close(&s->loop);
        return -1;
    }
    if (adapter_registry_resolve(s->reg, s->select, s->items, s->n_items, &s->resolved, err,
                                 errlen) ||
        adapter_registry_acquire_wait(s->reg, &s->resolved, &s->set, err, errlen)) {
        srv_cli_sel_close(s);
        return -1;
    }
    return 0;
}

void srv_cli_sel_close(srv_cli_sel *s)
{
    adapter_set_free(s->set);
    s->set = NULL;
    if (s->reg) {
        adapter_registry_free(s->reg);
        s->reg = NULL;
        uv_loop_close(&s->loop);
    }
}

void srv_cli_sel_describe(const srv_cli_sel *s, const char *cmd)
{
    for (int i = 0; s->set && i < s->set->n; i++) {
        const adapter *a = s->set->items[i].a;
        char t[64];
        fprintf(stderr, "%s: adapter %s: weight %g, rank %d, alpha %g%s, targets %s, %zu bytes\n",
                cmd, s->resolved.items[i].id, (double)s->set->items[i].weight, a->r,
                (double)a->alpha, a->rslora ? " (rsLoRA)" : "",
                adapter_targets_str(a->targets, t, sizeof t), a->bytes);
    }
}
