/* Command-line subcommands of build/adaptree. Each takes argv with argv[0] = the command name and
 * returns the process exit status (0 ok, 1 failure, 2 usage error). Main thread only. */
#ifndef ADAPTREE_SERVER_CLI_H
#define ADAPTREE_SERVER_CLI_H

#include <stddef.h>

#define SRV_DEFAULT_MODEL "models/SmolLM2-135M-Instruct.Q4_1.gguf"

int srv_cli_generate(int argc, char **argv);
/* `adaptree serve`: the HTTP server, until SIGINT or SIGTERM (then 0 after a graceful drain). */
int srv_cli_serve(int argc, char **argv);
int srv_cli_inspect(int argc, char **argv);
int srv_cli_merge(int argc, char **argv);

/* Type of the merged weights in `adaptree merge` (the general.file_type it writes). */
enum srv_merge_outtype { SRV_MERGE_F32 = 0, SRV_MERGE_F16 = 1 }; /* == ADAPTER_MERGE_* */

struct srv_cli_sel;

/* What `adaptree merge` does: loads the model at model_path, opens the adapter selection sel
 * (filled by srv_cli_sel_arg, not yet opened) against it, and writes out, a GGUF with the base's
 * metadata and tensors in their order, where every weight an adapter touches is
 * W + Σ weight·scale·B·A in outtype and every other tensor is copied as stored. out is written
 * through out.tmp and renamed when complete. Progress goes to stderr. sel is closed before
 * returning. Returns 0, or a negative errno with a message in err (a selection that fails to
 * open also prints its reason to stderr). Main thread. */
int srv_merge(const char *model_path, struct srv_cli_sel *sel, const char *out, int outtype,
              char *err, size_t errlen);

/* Parses a whole decimal/float argument; 0 or -1 when it is not a number. */
int srv_parse_int(const char *s, long min, long max, long *out);
int srv_parse_float(const char *s, double *out);

#endif
