/* The loader table (adapters/loaders.c): every row is complete, a directory or file is handed to
 * the row whose marker or suffix it has (the first row winning), and the messages for what is no
 * adapter are the ones the table spells, word for word, from the command line and beneath a
 * registry root. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "adapter_testutil.h"
#include "adapters/adapter.h"
#include "adapters/adapter_internal.h"
#include "tests/test.h"

#define FIXTURE_GGUF "tests/golden/fixtures/adapters/qv_r4.gguf"

/* Every row names its files, its load and its probe, and no two rows share a format or a marker
 * (detection could not tell them apart). */
TEST(loaders_table_rows_are_complete)
{
    int n = 0, single_file = 0;
    for (const adapter__loader *const *l = adapter__loaders; *l; l++, n++) {
        const adapter__loader *r = *l;
        CHECK_MSG(r->name && r->marker && r->weights && r->load && r->probe && r->format,
                  "row %d is incomplete", n);
        single_file += r->suffix != NULL;
        for (const adapter__loader *const *o = adapter__loaders; o != l; o++)
            CHECK_MSG((*o)->format != r->format && strcmp((*o)->marker, r->marker) != 0,
                      "rows %s and %s share a format or a marker", (*o)->name, r->name);
    }
    CHECK_EQ_INT(n, 2);
    CHECK_EQ_INT(single_file, 1);
}

/* Copies the file at from to to; 0 or -1. */
static int copy_file(const char *from, const char *to)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", from, to);
    return system(cmd) == 0 ? 0 : -1;
}

/* Probes rel beneath root and from the command line (root/rel): both give rc; the confined
 * message is want_beneath, the other names the whole path. 1 when so, else 0 with why. */
static int probe_says(const char *root, const char *rel, const core_config *cfg, int rc,
                      adapter_format format, const char *want_beneath, char *why, size_t cap)
{
    char full[512], err[512] = "", want[1024];
    adapter_probe_info info;
    int got = adapter_probe_beneath(root, rel, cfg, &info, err, sizeof err);
    if (got != rc || info.format != format || strcmp(err, want_beneath) != 0) {
        snprintf(why, cap, "%s beneath: rc %d format %d '%s', want %d %d '%s'", rel, got,
                 info.format, err, rc, format, want_beneath);
        return 0;
    }
    snprintf(full, sizeof full, "%s/%s", root, rel);
    snprintf(want, sizeof want, "%s/%s", root, want_beneath);
    err[0] = 0;
    got = adapter_probe(full, cfg, &info, err, sizeof err);
    if (got != rc || info.format != format || strcmp(err, rc ? want : "") != 0) {
        snprintf(why, cap, "%s: rc %d format %d '%s', want %d %d '%s'", full, got, info.format, err,
                 rc, format, rc ? want : "");
        return 0;
    }
    return 1;
}

/* A PEFT directory, adapter.gguf in a directory and a lone .gguf file reach their rows; a
 * directory with both markers is the first row's (PEFT); an empty directory, a file of no known
 * suffix and a directory whose marker leads out of the root are refused with the table's words. */
TEST(loaders_detect_each_format_and_say_what_was_expected)
{
    const char *tmp = tu_tmpdir();
    char root[256], out[256], p[512], q[1024], why[2048];
    snprintf(root, sizeof root, "%s/root", tmp);
    snprintf(out, sizeof out, "%s/out", tmp);
    core_config cfg = tu_config();
    cfg.n_layer = 30; /* SmolLM2-135M, which the GGUF fixture was converted for */
    const char *json = "{\"r\":4,\"target_modules\":[\"q_proj\"]}";
    snprintf(p, sizeof p, "%s/peft", root);
    CHECK(tu_write_peft_layers(p, json, &cfg, 1u << CORE_MOD_Q, 4, "F16", 1) == 0);
    snprintf(p, sizeof p, "%s/both", root);
    CHECK(tu_write_peft_layers(p, json, &cfg, 1u << CORE_MOD_Q, 4, "F16", 1) == 0);
    snprintf(p, sizeof p, "%s/both/adapter.gguf", root);
    CHECK(copy_file(FIXTURE_GGUF, p) == 0);
    snprintf(p, sizeof p, "%s/gg", root);
    CHECK(tu_mkdirs(p) == 0);
    snprintf(p, sizeof p, "%s/gg/adapter.gguf", root);
    CHECK(copy_file(FIXTURE_GGUF, p) == 0);
    snprintf(p, sizeof p, "%s/lone.gguf", root);
    CHECK(copy_file(FIXTURE_GGUF, p) == 0);
    snprintf(p, sizeof p, "%s/notes.txt", root);
    CHECK(copy_file(FIXTURE_GGUF, p) == 0);
    snprintf(p, sizeof p, "%s/empty", root);
    CHECK(tu_mkdirs(p) == 0);
    snprintf(p, sizeof p, "%s/w", out);
    CHECK(tu_write_peft_layers(p, json, &cfg, 1u << CORE_MOD_Q, 4, "F16", 1) == 0);
    snprintf(p, sizeof p, "%s/cfgout", root);
    CHECK(tu_mkdirs(p) == 0);
    snprintf(p, sizeof p, "%s/cfgout/adapter_config.json", root);
    snprintf(q, sizeof q, "%s/w/adapter_config.json", out);
    CHECK(symlink(q, p) == 0);

    CHECK_MSG(probe_says(root, "peft", &cfg, 0, ADAPTER_PEFT, "", why, sizeof why), "%s", why);
    CHECK_MSG(probe_says(root, "both", &cfg, 0, ADAPTER_PEFT, "", why, sizeof why), "%s", why);
    CHECK_MSG(probe_says(root, "gg", &cfg, 0, ADAPTER_GGUF, "", why, sizeof why), "%s", why);
    CHECK_MSG(probe_says(root, "lone.gguf", &cfg, 0, ADAPTER_GGUF, "", why, sizeof why), "%s", why);
    CHECK_MSG(probe_says(root, "empty", &cfg, -ENOENT, 0,
                         "empty: no adapter here (expected adapter_config.json + "
                         "adapter_model.safetensors, or adapter.gguf)",
                         why, sizeof why),
              "%s", why);
    CHECK_MSG(probe_says(root, "notes.txt", &cfg, -ENOENT, 0,
                         "notes.txt: not an adapter (expected a .gguf file or a directory)", why,
                         sizeof why),
              "%s", why);
    /* Beneath the root the config that leads out does not count, and is named; from the command
     * line it is followed, and the missing weight file is named. */
    char err[512] = "";
    adapter_probe_info info;
    CHECK_EQ_INT(adapter_probe_beneath(root, "cfgout", &cfg, &info, err, sizeof err), -ENOENT);
    CHECK_EQ_STR(err, "cfgout/adapter_config.json: symlink leaves the registry root");
    snprintf(p, sizeof p, "%s/cfgout", root);
    CHECK_EQ_INT(adapter_probe(p, &cfg, &info, err, sizeof err), -ENOENT);
    snprintf(q, sizeof q, "%s/adapter_model.safetensors: No such file or directory", p);
    CHECK_EQ_STR(err, q);
    tu_rmrf(tmp);
}
