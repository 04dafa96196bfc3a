/* `adaptree serve` options: what the flags, the environment and the config file say, parsed
 * without side effects (but reading the file) so that the parsing can be tested
 * (server/serve_opts.c). */
#ifndef ADAPTREE_SERVER_CLI_SERVE_H
#define ADAPTREE_SERVER_CLI_SERVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "server/cors.h"

#define SRV_DEFAULT_REGISTRY "registry/"
#define SRV_EXIT_CUT 3        /* serve's exit status when the drain cut requests */
#define SRV_SERVE_MAX_OPTS 48 /* settings in the option table */

/* Where a setting came from, weakest first: a stronger source overrides a weaker one. */
typedef enum srv_opt_source {
    SRV_OPT_DEFAULT = 0,
    SRV_OPT_FILE = 1, /* --config FILE (or $ADAPTREE_CONFIG) */
    SRV_OPT_ENV = 2,  /* ADAPTREE_<FLAG> */
    SRV_OPT_FLAG = 3,
} srv_opt_source;

typedef struct srv_serve_opts {
    const char *host;          /* "127.0.0.1" */
    long port;                 /* 8080 */
    const char *model;         /* SRV_DEFAULT_MODEL */
    const char *registry;      /* SRV_DEFAULT_REGISTRY; NULL with --no-registry */
    bool registry_given;       /* --registry was on the command line (a missing one is an error) */
    long threads;              /* OpenBLAS threads, 0 = OpenBLAS's default */
    long http_threads;         /* libmicrohttpd polling threads, 2 */
    long max_batch_tokens;     /* 512 */
    long max_step_ms;          /* step latency target, ms; 0 = none; -1 (default) = learned */
    long prefill_chunk;        /* most prompt rows of one sequence per step, 256 */
    long max_seqs;             /* 32 */
    long n_ctx;                /* 0 = the model's, at most 2048 */
    long adapter_cache_mb;     /* 0 = unlimited */
    long kv_cache_mb;          /* the KV pool; 0 = the engine's default */
    long queue_limit;          /* 256 */
    const char *api_key;       /* --api-key; NULL = none */
    const char *admin_key;     /* --admin-key; NULL = none */
    int log_level;             /* srv_log_level, info */
    int log_format;            /* srv_log_format, text */
    long max_body_kb;          /* 1024 */
    long idle_timeout;         /* seconds, 60 */
    long max_conns;            /* --max-connections, 1024 */
    long per_ip_conns;         /* --max-connections-per-ip, half of max_conns; 0 = no cap */
    long header_timeout;       /* seconds to receive a request head, 10; 0 = no limit */
    long body_timeout;         /* seconds to receive a body after its head, 30; 0 = no limit */
    long drain_timeout;        /* seconds a drain waits for running requests, 30 */
    long drain_delay;          /* seconds /health says 503 before the drain starts, 0 */
    const char *replica;       /* --replica-name; NULL = the host name (srv_serve_replica) */
    const char *chat_template; /* --chat-template FILE; NULL = the GGUF's */
    bool watch;                /* watch the registry (--no-watch turns it off) */
    bool int8;                 /* --int8: int8 activations */
    bool kv_f16;               /* --kv-f16: f16 KV cache */
    bool no_prefix_cache;      /* --no-prefix-cache */
    long spec_k;               /* --spec-k: draft tokens per step for every request, 0 = off */
    long spec_ngram;           /* --spec-ngram: n-gram length of the prompt lookup */
    bool no_registry;          /* --no-registry (registry is then NULL) */
    const char *cors_origins[SRV_CORS_MAX]; /* --cors-origin, each "*", an origin or a
                                               comma-separated list of them */
    int n_cors_origins;                     /* 0: CORS off */
    bool print_config;                      /* --print-config: print the settings, do not serve */
    const char *config;                     /* --config FILE or $ADAPTREE_CONFIG; NULL = none */
    char *file_text; /* the config file's text, owned: its values point into it */
    unsigned char source[SRV_SERVE_MAX_OPTS]; /* srv_opt_source of each table row */
    int line[SRV_SERVE_MAX_OPTS];             /* its line in the config file, when from there */
} srv_serve_opts;

/* 1 if s can name a replica (--replica-name): 1 to 63 of [A-Za-z0-9._:-]. Pure. */
int srv_replica_name_ok(const char *s);

/* Fills o from, weakest first, the defaults, the config file (--config FILE, else
 * $ADAPTREE_CONFIG), the environment (ADAPTREE_ + the flag name upper-cased, '-' -> '_'; empty
 * means unset) and argv (argv[0] = "serve"). Returns 0, 1 for --help (usage printed to stdout),
 * or 2 with a message in err that starts with the source of a bad value ("ADAPTREE_PORT=abc: ",
 * "FILE:LINE: "). o's strings point into argv, the environment and o->file_text: call
 * srv_serve_opts_deinit when done (also after an error). Main thread (reads the environment). */
int srv_serve_parse(int argc, char **argv, srv_serve_opts *o, char *err, size_t errlen);
/* Frees what srv_serve_parse read from the config file; o's strings from it die with it. */
void srv_serve_opts_deinit(srv_serve_opts *o);
/* Prints every setting as "key = value  # source" (keys hidden), for --print-config. */
void srv_serve_print_config(const srv_serve_opts *o, FILE *out);

#endif
