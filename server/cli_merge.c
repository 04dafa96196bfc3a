/* `adaptree merge`: loads the base and a selection of adapters and writes a GGUF with them baked
 * in (the merge itself is adapters/merge.c). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "adapters/merge.h"
#include "core/base.h"
#include "core/model/model.h"
#include "server/cli.h"
#include "server/cli_select.h"

typedef struct merge_opts {
    const char *model;
    const char *out;
    int outtype; /* SRV_MERGE_F32 or SRV_MERGE_F16 */
    srv_cli_sel sel;
} merge_opts;

static void merge_usage(FILE *out)
{
    fprintf(out,
            "usage: adaptree merge -o OUT.gguf (--select ID | --adapter ID[:S]...) [options]\n"
            "  -m, --model PATH        base GGUF model (default " SRV_DEFAULT_MODEL ")\n"
            "  -o, --output PATH       the merged GGUF to write (required)\n"
            "      --outtype T         f32 (default) or f16: type of the merged weights; every\n"
            "                          tensor no adapter touches keeps its stored type\n"
            "      --registry DIR      adapter registry (default registry/)\n"
            "      --select ID         merge the tree chain of node ID (e.g. fr/legal/alice)\n"
            "      --adapter ID[:S]    merge exactly node ID at scale S (default 1); repeatable\n");
}

/* True when both paths name the same existing file. */
static int same_file(const char *a, const char *b)
{
    struct stat sa, sb;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
}

int srv_merge(const char *model_path, struct srv_cli_sel *sel, const char *out, int outtype,
              char *err, size_t errlen)
{
    char e[512] = "";
    adapter_merge_report rep = {0};
    core_model *m = NULL;
    int rc = -EINVAL;
    double t0 = core_now();
    if (outtype != SRV_MERGE_F32 && outtype != SRV_MERGE_F16) {
        snprintf(err, errlen, "unknown output type %d", outtype);
        goto out;
    }
    if (!srv_cli_sel_wanted(sel)) {
        snprintf(err, errlen, "no adapter selected: use --select ID or --adapter ID[:SCALE]");
        goto out;
    }
    if (same_file(model_path, out)) {
        snprintf(err, errlen, "the output %s is the base model itself", out);
        goto out;
    }
    m = core_model_load(model_path, e, sizeof e);
    if (!m) {
        snprintf(err, errlen, "cannot load %s: %s", model_path, e);
        goto out;
    }
    if (srv_cli_sel_open(sel, &m->cfg, err, errlen) < 0)
        goto out;
    if (!sel->set || sel->set->n == 0) {
        snprintf(err, errlen, "the selection applies no adapter (a namespace without adapters?)");
        goto out;
    }
    srv_cli_sel_describe(sel, "merge");
    const char *names[ADAPTER_SEL_MAX];
    for (int i = 0; i < sel->set->n; i++)
        names[i] = sel->resolved.items[i].id;
    double t1 = core_now();
    rc = adapter_merge_export(m, sel->set, names, out, outtype, &rep, err, errlen);
    if (rc)
        goto out;
    fprintf(stderr,
            "merge: %d adapter(s), %d weights merged (%s) in %.2f s; wrote %s: %d tensors, %d as "
            "%s and %d as stored, %.1f MB, %.2f s in all\n",
            sel->set->n, rep.n_merged, rep.modules, core_now() - t1, out, rep.n_tensors,
            rep.n_merged, outtype == SRV_MERGE_F16 ? "f16" : "f32", rep.n_tensors - rep.n_merged,
            (double)rep.bytes / 1e6, core_now() - t0);
out:
    srv_cli_sel_close(sel);
    core_model_free(m);
    return rc;
}

/* Returns 0, 1 for --help, or 2 after printing a usage error. */
static int parse_opts(int argc, char **argv, merge_opts *o)
{
    memset(o, 0, sizeof *o);
    o->model = SRV_DEFAULT_MODEL;
    for (int i = 1; i < argc;) {
        const char *a = argv[i++];
        int r;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            merge_usage(stdout);
            return 1;
        }
        const char *v = i < argc ? argv[i++] : NULL;
        if (!v) {
            fprintf(stderr, "merge: %s needs a value\n", a);
            return 2;
        }
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            o->model = v;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
            o->out = v;
        } else if (!strcmp(a, "--outtype")) {
            if (strcmp(v, "f32") != 0 && strcmp(v, "f16") != 0) {
                fprintf(stderr, "merge: --outtype is f32 or f16, got '%s'\n", v);
                return 2;
            }
            o->outtype = strcmp(v, "f16") == 0 ? SRV_MERGE_F16 : SRV_MERGE_F32;
        } else if ((r = srv_cli_sel_arg(&o->sel, a, v)) == 0) {
            fprintf(stderr, "merge: unknown option '%s'\n", a);
            merge_usage(stderr);
            return 2;
        } else if (r < 0) {
            return 2;
        }
    }
    if (!o->out || !srv_cli_sel_wanted(&o->sel)) {
        fprintf(stderr, "merge: %s is required\n",
                o->out ? "--select ID or --adapter ID[:S]" : "-o OUT.gguf");
        merge_usage(stderr);
        return 2;
    }
    return 0;
}

int srv_cli_merge(int argc, char **argv)
{
    merge_opts o;
    int rc = parse_opts(argc, argv, &o);
    if (rc)
        return rc == 1 ? 0 : 2;
    char err[512];
    if (srv_merge(o.model, &o.sel, o.out, o.outtype, err, sizeof err) < 0) {
        fprintf(stderr, "merge: %s\n", err);
        return 1;
    }
    return 0;
}
