/* `adaptree serve` options: what the flags and the environment say, parsed without side
 * effects so that the parsing can be tested. */
#ifndef ADAPTREE_SERVER_CLI_SERVE_H
#define ADAPTREE_SERVER_CLI_SERVE_H

#include <stdbool.h>
#include <stddef.h>

#define SRV_DEFAULT_REGISTRY "registry/"

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
    const char *api_key;       /* --api-key, else $ADAPTREE_API_KEY; NULL = none */
    const char *admin_key;     /* --admin-key, else $ADAPTREE_ADMIN_KEY; NULL = none */
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
} srv_serve_opts;

/* Parses argv (argv[0] = "serve"); keys missing from the flags come from getenv. Returns 0, 1
 * for --help (usage printed to stdout), or 2 with a message in err. Main thread. */
/* 1 if s can name a replica (--replica-name): 1 to 63 of [A-Za-z0-9._:-]. Pure. */
int srv_replica_name_ok(const char *s);

int srv_serve_parse(int argc, char **argv, srv_serve_opts *o, char *err, size_t errlen);

#endif
