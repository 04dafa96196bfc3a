/* The loader table: every adapter format as one row (adapter_internal.h, adapter__loader), and
 * adapter_load / adapter_probe and their confined _beneath forms, which find the format of what
 * they are given by walking the table and hand it to that row.
 *
 * This is the only file that names the formats' rows. A format is added by writing its file,
 * which exports one row (its marker file, weight file, single-file suffix, load and probe), and
 * listing the row below (its extern line goes next to the others in adapter_internal.h); the order
 * of the rows decides between formats when a directory holds the markers of several. Detection, its
 * messages and the registry's listing (registry.c, adapter_files) read the rows, so none of them
 * names a format or a file either.
 *
 * Detection follows the registry's rule: a marker file leading out of the root does not make the
 * directory an adapter of that format; when no format is found, the first such marker is named
 * in the message. Every file the chosen loader then reads is opened confined again (adapter_io.c),
 * so what changed between the detection and the open cannot lead out either.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "adapters/adapter_internal.h"

/* The formats, in the order detection tries them: the first row whose marker a directory holds
 * wins. */
const adapter__loader *const adapter__loaders[] = {&adapter__loader_peft, &adapter__loader_gguf,
                                                   NULL};

/* Does s end in suf? */
static bool has_suffix(const char *s, const char *suf)
{
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && !strcmp(s + n - m, suf);
}

/* Appends s to the string in buf (*k bytes long, cap > *k) as far as it fits. */
static void append(char *buf, size_t cap, size_t *k, const char *s)
{
    size_t n = strlen(s);
    if (n > cap - 1 - *k)
        n = cap - 1 - *k;
    memcpy(buf + *k, s, n);
    *k += n;
    buf[*k] = 0;
}

/* What a directory may hold, for messages: "adapter_config.json + adapter_model.safetensors, or
 * adapter.gguf" (a row's marker, and its weight file when that is another file). */
static const char *dir_forms(char *buf, size_t cap)
{
    size_t k = 0;
    buf[0] = 0;
    for (const adapter__loader *const *l = adapter__loaders; *l; l++) {
        if (l != adapter__loaders)
            append(buf, cap, &k, l[1] ? ", " : ", or ");
        append(buf, cap, &k, (*l)->marker);
        if (strcmp((*l)->marker, (*l)->weights) != 0) {
            append(buf, cap, &k, " + ");
            append(buf, cap, &k, (*l)->weights);
        }
    }
    return buf;
}

/* What a path may be, for messages: "a .gguf file or a directory" (the rows with a single-file
 * form). */
static const char *path_forms(char *buf, size_t cap)
{
    size_t k = 0;
    buf[0] = 0;
    for (const adapter__loader *const *l = adapter__loaders; *l; l++) {
        if (!(*l)->suffix)
            continue;
        append(buf, cap, &k, k ? ", a " : "a ");
        append(buf, cap, &k, (*l)->suffix);
        append(buf, cap, &k, " file");
    }
    append(buf, cap, &k, k ? " or a directory" : "a directory");
    return buf;
}

/* The format of the directory dir (beneath root when set): its row, with the path its loader
 * takes (dir, or its marker file) in file, or NULL with a message. A marker leading out of the
 * root does not count, as in the registry's listing. */
static const adapter__loader *locate_in_dir(const char *root, const char *dir, char *file,
                                            size_t cap, char *err, size_t errlen)
{
    const adapter__loader *escapes = NULL;
    for (const adapter__loader *const *l = adapter__loaders; *l; l++) {
        snprintf(file, cap, "%s/%s", dir, (*l)->marker);
        int found = adapter__find_file(root, file);
        if (found == 0) {
            if ((*l)->loads_dir)
                snprintf(file, cap, "%s", dir);
            return *l;
        }
        if (!escapes && found == -EXDEV)
            escapes = *l;
    }
    char forms[256];
    if (escapes)
        snprintf(err, errlen, "%s/%s: " ADAPTER__ESCAPES, dir, escapes->marker);
    else
        snprintf(err, errlen, "%s: no adapter here (expected %s)", dir,
                 dir_forms(forms, sizeof forms));
    return NULL;
}

/* Finds the adapter at path (beneath root when root is set, see adapter_io.c): the row of its
 * format with the path its loader takes in file (relative to root as path is), or NULL with a
 * message in err that names path, never root. */
static const adapter__loader *locate(const char *root, const char *path, char *file, size_t cap,
                                     char *err, size_t errlen)
{
    struct stat st;
    if (adapter__stat_at(root, path, &st, err, errlen))
        return NULL;
    if (S_ISDIR(st.st_mode))
        return locate_in_dir(root, path, file, cap, err, errlen);
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: not a file or directory", path);
        return NULL;
    }
    for (const adapter__loader *const *l = adapter__loaders; *l; l++)
        if ((*l)->suffix && has_suffix(path, (*l)->suffix)) {
            snprintf(file, cap, "%s", path);
            return *l;
        }
    char forms[256];
    snprintf(err, errlen, "%s: not an adapter (expected %s)", path,
             path_forms(forms, sizeof forms));
    return NULL;
}

/* adapter_load and adapter_load_beneath: root is NULL or a real path. */
static adapter *load_at(const char *root, const char *path, const core_config *cfg, char *err,
                        size_t errlen)
{
    char file[PATH_MAX];
    const adapter__loader *l = locate(root, path, file, sizeof file, err, errlen);
    return l ? l->load(root, file, cfg, err, errlen) : NULL;
}

/* adapter_probe and adapter_probe_beneath: root is NULL or a real path. */
static int probe_at(const char *root, const char *path, const core_config *cfg,
                    adapter_probe_info *out, char *err, size_t errlen)
{
    char file[PATH_MAX];
    memset(out, 0, sizeof *out);
    const adapter__loader *l = locate(root, path, file, sizeof file, err, errlen);
    return l ? l->probe(root, file, cfg, out, err, errlen) : -ENOENT;
}

/* The real path of a registry root into real; rel "" means the root itself. 0, or a negative
 * errno with a message that does not name the root (messages reach API clients). */
static int real_root(const char *root, const char **rel, char *real, char *err, size_t errlen)
{
    if (!realpath(root, real)) {
        int e = errno > 0 ? errno : EIO;
        snprintf(err, errlen, "the registry root: %s", strerror(e));
        return -e;
    }
    if (!**rel)
        *rel = ".";
    return 0;
}

adapter *adapter_load(const char *path, const core_config *cfg, char *err, size_t errlen)
{
    return load_at(NULL, path, cfg, err, errlen);
}

adapter *adapter_load_beneath(const char *root, const char *rel, const core_config *cfg, char *err,
                              size_t errlen)
{
    char real[PATH_MAX];
    if (real_root(root, &rel, real, err, errlen))
        return NULL;
    return load_at(real, rel, cfg, err, errlen);
}

int adapter_probe(const char *path, const core_config *cfg, adapter_probe_info *out, char *err,
                  size_t errlen)
{
    return probe_at(NULL, path, cfg, out, err, errlen);
}

int adapter_probe_beneath(const char *root, const char *rel, const core_config *cfg,
                          adapter_probe_info *out, char *err, size_t errlen)
{
    char real[PATH_MAX];
    memset(out, 0, sizeof *out);
    int rc = real_root(root, &rel, real, err, errlen);
    return rc ? rc : probe_at(real, rel, cfg, out, err, errlen);
}
