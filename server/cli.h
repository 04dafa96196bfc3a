/* Command-line subcommands of build/adaptree. Each takes argv with argv[0] = the command name and
 * returns the process exit status (0 ok, 1 failure, 2 usage error). Main thread only. */
#ifndef ADAPTREE_SERVER_CLI_H
#define ADAPTREE_SERVER_CLI_H

#define SRV_DEFAULT_MODEL "models/SmolLM2-135M-Instruct.Q4_1.gguf"

int srv_cli_generate(int argc, char **argv);
int srv_cli_inspect(int argc, char **argv);

/* Parses a whole decimal/float argument; 0 or -1 when it is not a number. */
int srv_parse_int(const char *s, long min, long max, long *out);
int srv_parse_float(const char *s, double *out);

#endif
