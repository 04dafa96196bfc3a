/* What this build is: the version, the git commit and the flags it was compiled with (generated
 * by the Makefile into build/build_info.c), and the kernels it runs on this CPU. Shown by
 * `adaptree --version`, GET /version and the adaptree_build_info metric. */
#ifndef ADAPTREE_SERVER_VERSION_H
#define ADAPTREE_SERVER_VERSION_H

#include "server/strbuf.h"

/* build/build_info.c (the Makefile writes it; "unknown" commit without git). */
extern const char srv_build_version[];    /* "0.1.0" */
extern const char srv_build_commit[];     /* short hash, "-dirty" with uncommitted changes */
extern const char srv_build_compiler[];   /* first line of `$(CC) --version` */
extern const char srv_build_opt[];        /* "-O2", "" when OPT has no -O */
extern const char srv_build_cflags[];     /* OPT, SAN and EXTRA_CFLAGS as given to make */
extern const char srv_build_sanitizers[]; /* "address,undefined", "" for none */

/* What `adaptree --version` prints: one "key: value" line each. Any thread. */
void srv_version_text(srv_buf *b);
/* The GET /version body: a JSON object with the same fields. Any thread. */
void srv_version_json(srv_buf *b);
/* The kernels in use, as one short string ("AVX2, OpenBLAS Haswell"). Static string, set on the
 * first call; any thread. */
const char *srv_version_kernels(void);

#endif
