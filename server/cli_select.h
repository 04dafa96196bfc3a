/* Adapter selection on the command line, shared by generate and merge: --registry DIR,
 * --select ID (the tree chain of ID) and --adapter ID[:SCALE] (exactly that node, repeatable). */
#ifndef ADAPTREE_SERVER_CLI_SELECT_H
#define ADAPTREE_SERVER_CLI_SELECT_H

#include <uv.h>

#include "adapters/registry.h"

typedef struct srv_cli_sel {
    const char *registry;
    const char *select;
    adapter_sel_item items[ADAPTER_SEL_MAX];
    int n_items;
    /* filled by srv_cli_sel_open */
    adapter_selection resolved;
    uv_loop_t loop;
    adapter_registry *reg;
    adapter_set *set;
} srv_cli_sel;

/* Consumes flag (and its value) if it is one of the three: 1 consumed, 0 not ours, -1 bad value
 * (message printed). */
int srv_cli_sel_arg(srv_cli_sel *s, const char *flag, const char *value);

/* True when any adapter was asked for. */
int srv_cli_sel_wanted(const srv_cli_sel *s);

/* Opens the registry, resolves the selection and loads it (waiting). Returns 0 with s->set, or
 * -1 with the reason in err. */
int srv_cli_sel_open(srv_cli_sel *s, const core_config *cfg, char *err, size_t errlen);
void srv_cli_sel_close(srv_cli_sel *s);

/* Prints what the selection applies, one line per adapter, to stderr. */
void srv_cli_sel_describe(const srv_cli_sel *s, const char *cmd);

#endif
