/* `adaptree serve`: flags, then the engine and the HTTP transport, then the main thread waits
 * for a signal and drains.
 *
 * Signals. SIGINT and SIGTERM are blocked before any thread of ours starts, so every thread
 * inherits the mask and only the main thread sees them, through a signalfd. Threads that a
 * library started before main() (OpenBLAS starts its pool in a constructor) did not inherit the
 * mask, so a handler is installed as well: if the kernel hands the signal to one of those, the
 * handler writes its number into a pipe the main thread also polls. SIGPIPE is ignored (a client
 * that closes mid-answer must not kill the server).
 *
 * Shutdown. The first signal drains. With --drain-delay S, /health first answers 503 for S
 * seconds while every request is still served, so that a load balancer's health checks take the
 * replica out of rotation before it refuses anything (a second signal skips the rest). Then the
 * engine stops admitting (new generation requests get
 * 503, /health says "draining"), in-flight requests finish and are answered, for at most
 * --drain-timeout seconds (a second signal cuts the wait short). Requests still running then are
 * not dropped silently: the engine ends their jobs with an error (srv_engine_abort), which the
 * routes answer as a 503 or, mid-stream, as an error event and [DONE]; other waiting requests are
 * woken and answered 503. Then libmicrohttpd stops, the engine is freed, and the process exits 0,
 * or SRV_EXIT_CUT when requests were cut, so that a supervisor can tell.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/base.h"
#include "server/auth.h"
#include "server/cli.h"
#include "server/cli_serve.h"
#include "server/engine.h"
#include "server/http.h"
#include "server/log.h"
#include "server/routes.h"

#define SWEEP_MS 250
#define SRV_EXIT_CUT 3              /* exit status when the drain cut requests */
#define CHAT_TEMPLATE_MAX (1 << 20) /* the interpreter's own limit (core/text/jinja_internal.h) */

static void serve_usage(FILE *out)
{
    fprintf(
        out,
        "usage: adaptree serve [options]\n"
        "  -m, --model PATH          GGUF base model (default " SRV_DEFAULT_MODEL ")\n"
        "      --registry DIR        adapter registry root (default " SRV_DEFAULT_REGISTRY
        "; skipped\n"
        "                            with a warning when the default is missing)\n"
        "      --no-registry         serve the base model only\n"
        "      --no-watch            do not watch the registry for changes\n"
        "      --int8                int8 activations (Q4_1, Q8_0, Q4_K-Q6_K), as llama.cpp\n"
        "                            (AVX2 or AVX-512 VNNI): faster, logits further from\n"
        "                            the f32 reference (README, 'int8 activations')\n"
        "      --kv-f16              cache K and V as f16: half the KV memory, faster long\n"
        "                            contexts, logits slightly further from the reference\n"
        "      --host HOST           address to listen on (default 127.0.0.1)\n"
        "      --port PORT           port (default 8080; 0 = any free port)\n"
        "      --threads N           OpenBLAS threads (default 0 = all cores)\n"
        "      --http-threads N      HTTP polling threads (default 2)\n"
        "      --max-batch-tokens N  rows per forward step (default 512)\n"
        "      --max-step-ms MS      while streams decode, size prompt chunks so that a step\n"
        "                            takes about MS ms, by step costs learned as it runs\n"
        "                            (default: 2x the decode-only step, at least 25 ms; 0 =\n"
        "                            no target, prompt chunks fill --max-batch-tokens)\n"
        "      --prefill-chunk N     most prompt rows of one request per step (default 256)\n"
        "      --max-seqs N          sequences running at once (default 32)\n"
        "      --ctx N               context per sequence (default: the model's, at most "
        "2048)\n"
        "      --adapter-cache-mb N  memory for resident adapters (default 0 = unlimited)\n"
        "      --kv-cache-mb N       the KV cache's pool of 16-position blocks, shared by the\n"
        "                            running sequences and the prefix cache (default: every\n"
        "                            sequence at full context, at most a quarter of RAM;\n"
        "                            printed at start-up); at least one --ctx sequence\n"
        "      --no-prefix-cache     do not reuse the KV of earlier prompts (same tokens\n"
        "                            under the same adapters)\n"
        "      --queue-limit N       requests waiting beyond the running ones (default "
        "256);\n"
        "                            more get 429\n"
        "      --api-key KEY         require 'Authorization: Bearer KEY' on every route but\n"
        "                            /health (default $ADAPTREE_API_KEY, else none)\n"
        "      --admin-key KEY       require this key on /v1/adapters* and\n"
        "                            /v1/{load,unload}_lora_adapter (default\n"
        "                            $ADAPTREE_ADMIN_KEY, else the api key)\n"
        "      --chat-template FILE  render /v1/chat/completions with this Jinja chat template\n"
        "                            instead of the GGUF's tokenizer.chat_template; one\n"
        "                            outside the supported subset (README, 'Chat templates')\n"
        "                            or unreadable stops the start-up with the reason\n"
        "      --log-level LEVEL     error, warn, info or debug (default info)\n"
        "      --log-format FORMAT   text or json: one JSON object per line (default text)\n"
        "      --max-body-kb N       largest request body in KiB (default 1024); more gets "
        "413\n"
        "      --idle-timeout S      close connections idle for S seconds (default 60; 0 = "
        "never)\n"
        "      --max-connections N   connections for requests (default 1024); past it the one\n"
        "                            that has waited longest for a request head is closed,\n"
        "                            then N/16 (>= 8) more serve /health and keyed requests\n"
        "      --max-connections-per-ip N  connections from one address (default half of\n"
        "                            --max-connections; 0 = no cap)\n"
        "      --header-timeout S    a request head must arrive within S seconds, however\n"
        "                            slowly its bytes come (default 10; 0 = no limit)\n"
        "      --body-timeout S      a body must arrive within S seconds of its head (default\n"
        "                            30; 0 = no limit); later gets 408\n"
        "      --drain-timeout S     on SIGINT/SIGTERM, wait at most S seconds for running\n"
        "                            requests (default 30)\n"
        "      --drain-delay S       on SIGINT/SIGTERM, first answer /health with 503 for S\n"
        "                            seconds while still serving everything, so that load\n"
        "                            balancers take this replica out of rotation before it\n"
        "                            refuses anything; then drain (default 0)\n"
        "      --replica-name NAME   this server's name among replicas, in every answer's\n"
        "                            X-Adaptree-Replica header, system_fingerprint and\n"
        "                            /health (default: the host name; letters, digits and\n"
        "                            . _ : -, at most 63)\n"
        "SIGINT or SIGTERM drains: running requests finish, then it exits 0; requests still\n"
        "running after --drain-timeout (or at a second signal) end with an error (a 503, or\n"
        "an error event and [DONE] in a stream) and it exits %d.\n",
        SRV_EXIT_CUT);
}

static const struct {
    const char *flag;
    long min, max;
    size_t off;
} int_flags[] = {
    {"--port", 0, 65535, offsetof(srv_serve_opts, port)},
    {"--threads", 0, 1024, offsetof(srv_serve_opts, threads)},
    {"--http-threads", 1, 64, offsetof(srv_serve_opts, http_threads)},
    {"--max-batch-tokens", 1, 1 << 16, offsetof(srv_serve_opts, max_batch_tokens)},
    {"--max-step-ms", 0, 600000, offsetof(srv_serve_opts, max_step_ms)},
    {"--prefill-chunk", 1, 1 << 16, offsetof(srv_serve_opts, prefill_chunk)},
    {"--max-seqs", 1, 4096, offsetof(srv_serve_opts, max_seqs)},
    {"--ctx", 0, 1 << 20, offsetof(srv_serve_opts, n_ctx)},
    {"--adapter-cache-mb", 0, 1L << 30, offsetof(srv_serve_opts, adapter_cache_mb)},
    {"--kv-cache-mb", 0, 1L << 30, offsetof(srv_serve_opts, kv_cache_mb)},
    {"--queue-limit", 1, 1 << 20, offsetof(srv_serve_opts, queue_limit)},
    {"--max-body-kb", 1, 1 << 20, offsetof(srv_serve_opts, max_body_kb)},
    {"--idle-timeout", 0, 86400, offsetof(srv_serve_opts, idle_timeout)},
    {"--max-connections", 1, 1 << 16, offsetof(srv_serve_opts, max_conns)},
    {"--max-connections-per-ip", 0, 1 << 16, offsetof(srv_serve_opts, per_ip_conns)},
    {"--header-timeout", 0, 86400, offsetof(srv_serve_opts, header_timeout)},
    {"--body-timeout", 0, 86400, offsetof(srv_serve_opts, body_timeout)},
    {"--drain-timeout", 0, 86400, offsetof(srv_serve_opts, drain_timeout)},
    {"--drain-delay", 0, 3600, offsetof(srv_serve_opts, drain_delay)},
};

static void defaults(srv_serve_opts *o)
{
    memset(o, 0, sizeof *o);
    o->host = "127.0.0.1";
    o->port = 8080;
    o->model = SRV_DEFAULT_MODEL;
    o->registry = SRV_DEFAULT_REGISTRY;
    o->http_threads = 2;
    o->max_batch_tokens = 512;
    o->max_step_ms = -1;
    o->prefill_chunk = 256;
    o->max_seqs = 32;
    o->queue_limit = 256;
    o->log_level = SRV_LOG_INFO;
    o->max_body_kb = 1024;
    o->idle_timeout = 60;
    o->max_conns = 1024;
    o->per_ip_conns = -1; /* half of max_conns unless given */
    o->header_timeout = 10;
    o->body_timeout = 30;
    o->drain_timeout = 30;
    o->watch = true;
}

int srv_replica_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 63)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && !strchr("._:-", s[i]))
            return 0;
    return 1;
}

/* --replica-name, else the host name (cut at the first character a name may not hold), else
 * "adaptree". */
static const char *replica_name(const srv_serve_opts *o, char *buf, size_t cap)
{
    if (o->replica)
        return o->replica;
    if (gethostname(buf, cap) < 0)
        buf[0] = 0;
    buf[cap - 1] = 0;
    size_t n = 0;
    while (buf[n] && n < 63 && (isalnum((unsigned char)buf[n]) || strchr("._:-", buf[n])))
        n++;
    buf[n] = 0;
    return n ? buf : "adaptree";
}

/* A flag with a value: 1 taken, 0 not one of these, -1 bad value (message in err). */
static int value_flag(srv_serve_opts *o, const char *a, const char *v, char *err, size_t errlen)
{
    for (size_t i = 0; i < sizeof int_flags / sizeof *int_flags; i++) {
        if (strcmp(a, int_flags[i].flag) != 0)
            continue;
        long *dst = (long *)(void *)((char *)o + int_flags[i].off);
        if (srv_parse_int(v, int_flags[i].min, int_flags[i].max, dst) < 0) {
            snprintf(err, errlen, "bad value '%s' for %s: expected an integer in [%ld, %ld]", v, a,
                     int_flags[i].min, int_flags[i].max);
            return -1;
        }
        return 1;
    }
    if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
        o->model = v;
    } else if (!strcmp(a, "--registry")) {
        o->registry = v;
        o->registry_given = true;
    } else if (!strcmp(a, "--host")) {
        o->host = v;
    } else if (!strcmp(a, "--api-key")) {
        o->api_key = v;
    } else if (!strcmp(a, "--admin-key")) {
        o->admin_key = v;
    } else if (!strcmp(a, "--chat-template")) {
        o->chat_template = v;
    } else if (!strcmp(a, "--replica-name")) {
        if (v[0] && !srv_replica_name_ok(v)) {
            snprintf(err, errlen,
                     "bad value '%s' for --replica-name: expected 1 to 63 letters, digits, '.', "
                     "'_', ':' or '-'",
                     v);
            return -1;
        }
        o->replica = v;
    } else if (!strcmp(a, "--log-format")) {
        o->log_format = srv_log_parse_format(v);
        if (o->log_format < 0) {
            snprintf(err, errlen, "bad value '%s' for --log-format: expected text or json", v);
            return -1;
        }
    } else if (!strcmp(a, "--log-level")) {
        o->log_level = srv_log_parse(v);
        if (o->log_level < 0) {
            snprintf(err, errlen,
                     "bad value '%s' for --log-level: expected error, warn, info or "
                     "debug",
                     v);
            return -1;
        }
    } else {
        return 0;
    }
    if (!v[0]) {
        snprintf(err, errlen, "%s needs a non-empty value", a);
        return -1;
    }
    return 1;
}

int srv_serve_parse(int argc, char **argv, srv_serve_opts *o, char *err, size_t errlen)
{
    defaults(o);
    bool no_registry = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            serve_usage(stdout);
            return 1;
        }
        if (!strcmp(a, "--no-registry")) {
            no_registry = true;
            continue;
        }
        if (!strcmp(a, "--no-watch")) {
            o->watch = false;
            continue;
        }
        if (!strcmp(a, "--int8")) {
            o->int8 = true;
            continue;
        }
        if (!strcmp(a, "--kv-f16")) {
            o->kv_f16 = true;
            continue;
        }
        if (!strcmp(a, "--no-prefix-cache")) {
            o->no_prefix_cache = true;
            continue;
        }
        /* --flag=value as well as --flag value */
        char name[64];
        const char *v = NULL, *eq = strncmp(a, "--", 2) == 0 ? strchr(a, '=') : NULL;
        if (eq && (size_t)(eq - a) < sizeof name) {
            memcpy(name, a, (size_t)(eq - a));
            name[eq - a] = 0;
            a = name;
            v = eq + 1;
        } else if (i + 1 < argc) {
            v = argv[i + 1];
        }
        int rc = v ? value_flag(o, a, v, err, errlen) : 0;
        if (rc < 0)
            return 2;
        if (rc == 0) {
            if (!v && value_flag(o, a, "", err, errlen) != 0)
                snprintf(err, errlen, "%s needs a value", a);
            else
                snprintf(err, errlen, "unknown option '%s' (see adaptree serve --help)", argv[i]);
            return 2;
        }
        if (!eq)
            i++;
    }
    if (no_registry && o->registry_given) {
        snprintf(err, errlen, "--registry and --no-registry contradict each other");
        return 2;
    }
    if (no_registry)
        o->registry = NULL;
    if (o->per_ip_conns < 0)
        o->per_ip_conns = o->max_conns / 2 > 0 ? o->max_conns / 2 : 1;
    const char *env = getenv("ADAPTREE_API_KEY");
    if (!o->api_key && env && env[0])
        o->api_key = env;
    env = getenv("ADAPTREE_ADMIN_KEY");
    if (!o->admin_key && env && env[0])
        o->admin_key = env;
    return 0;
}

/* ---- signals -------------------------------------------------------------------------------- */

static int sig_pipe[2] = {-1, -1};

static void on_signal(int sig)
{
    int saved = errno;
    unsigned char c = (unsigned char)sig;
    if (write(sig_pipe[1], &c, 1) < 0) {
        /* the pipe is full: a signal is already waiting to be read */
    }
    errno = saved;
}

/* Blocks SIGINT/SIGTERM for the threads to come and opens the signalfd; -1 on failure. */
static int signals_setup(int *sfd)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    if (pthread_sigmask(SIG_BLOCK, &set, NULL) != 0)
        return -1;
    if (pipe2(sig_pipe, O_CLOEXEC | O_NONBLOCK) < 0)
        return -1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    *sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    return *sfd < 0 ? -1 : 0;
}

/* Waits up to ms for a signal; its number, or 0 on time-out. */
static int signal_wait(int sfd, int ms)
{
    struct pollfd p[2] = {{.fd = sfd, .events = POLLIN}, {.fd = sig_pipe[0], .events = POLLIN}};
    if (poll(p, 2, ms) <= 0)
        return 0;
    if (p[0].revents & POLLIN) {
        struct signalfd_siginfo si;
        if (read(sfd, &si, sizeof si) == (ssize_t)sizeof si)
            return (int)si.ssi_signo;
    }
    if (p[1].revents & POLLIN) {
        unsigned char c;
        if (read(sig_pipe[0], &c, 1) == 1)
            return c;
    }
    return 0;
}

/* ---- the command ---------------------------------------------------------------------------- */

/* The text of --chat-template FILE (malloc'd), or NULL with the reason printed. */
static char *read_chat_template(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        srv_log(SRV_LOG_ERROR, "serve: --chat-template %s: cannot read it: %s", path,
                strerror(errno));
        return NULL;
    }
    char *s = malloc(CHAT_TEMPLATE_MAX + 1);
    size_t n = s ? fread(s, 1, CHAT_TEMPLATE_MAX + 1, f) : 0;
    int bad = !s ? ENOMEM : ferror(f) ? EIO : 0;
    fclose(f);
    if (!s || bad || n > CHAT_TEMPLATE_MAX) {
        if (bad)
            srv_log(SRV_LOG_ERROR, "serve: --chat-template %s: cannot read it: %s", path,
                    strerror(bad));
        else
            srv_log(SRV_LOG_ERROR, "serve: --chat-template %s: larger than %d KiB", path,
                    CHAT_TEMPLATE_MAX >> 10);
        free(s);
        return NULL;
    }
    s[n] = '\0';
    if (strlen(s) != n) {
        srv_log(SRV_LOG_ERROR, "serve: --chat-template %s: holds a NUL byte", path);
        free(s);
        return NULL;
    }
    return s;
}

static srv_engine *start_engine(const srv_serve_opts *o)
{
    srv_engine_opts eo;
    srv_engine_opts_default(&eo);
    eo.model_path = o->model;
    eo.registry_dir = o->registry;
    struct stat st;
    if (o->registry && !o->registry_given && stat(o->registry, &st) != 0) {
        srv_log(SRV_LOG_WARN, "no registry at %s; serving the base model only", o->registry);
        eo.registry_dir = NULL;
    }
    eo.n_threads = (int)o->threads;
    eo.max_batch_tokens = (int)o->max_batch_tokens;
    eo.max_step_ms = (double)o->max_step_ms;
    eo.prefill_chunk = (int)o->prefill_chunk;
    eo.max_seqs = (int)o->max_seqs;
    eo.n_ctx = (int)o->n_ctx;
    eo.cache_bytes = (size_t)o->adapter_cache_mb << 20;
    eo.queue_limit = (int)o->queue_limit;
    eo.watch = o->watch;
    eo.int8 = o->int8;
    eo.kv_f16 = o->kv_f16;
    eo.kv_cache_bytes = (size_t)o->kv_cache_mb << 20;
    eo.no_prefix_cache = o->no_prefix_cache;
    eo.verbose = o->log_level >= SRV_LOG_DEBUG ? 2 : o->log_level >= SRV_LOG_INFO ? 1 : 0;
    char err[512], *tmpl = NULL;
    if (o->chat_template && !(tmpl = read_chat_template(o->chat_template)))
        return NULL;
    eo.chat_template = tmpl;
    eo.chat_template_name = o->chat_template;
    srv_engine *e = srv_engine_new(&eo, err, sizeof err);
    free(tmpl);
    if (!e)
        srv_log(SRV_LOG_ERROR, "serve: %s", err);
    return e;
}

/* Raises the soft descriptor limit to what the connection caps need (Debian's default soft limit
 * is 1024, below the default caps); when the hard limit is lower, shrinks the caps to fit and
 * says so. */
static void fit_fd_limit(srv_http_opts *ho)
{
    const rlim_t spare = 256; /* model, adapters being read, the registry's watches, pipes */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    rlim_t need = srv_http_fd_need(ho) + spare;
    if (rl.rlim_cur >= need)
        return;
    rlim_t want = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= need ? need : rl.rlim_max;
    rl.rlim_cur = want;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0 && getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    if (rl.rlim_cur >= need)
        return;
    unsigned before = ho->max_conns;
    while (ho->max_conns > 16 && srv_http_fd_need(ho) + spare > rl.rlim_cur) {
        ho->max_conns = ho->max_conns * 7 / 8;
        ho->reserve_conns = 0; /* back to its default share */
    }
    if (ho->per_ip_conns > ho->max_conns)
        ho->per_ip_conns = ho->max_conns;
    srv_log(SRV_LOG_WARN,
            "the descriptor limit (ulimit -n) is %llu: --max-connections lowered from %u to %u",
            (unsigned long long)rl.rlim_cur, before, ho->max_conns);
}

/* Waits up to ms for the HTTP requests in progress to end, sweeping; false if some are left. */
static bool wait_requests(srv_http *http, int ms)
{
    double t0 = core_now();
    while (srv_http_active(http) > 0 && (core_now() - t0) * 1e3 < ms) {
        usleep(20 * 1000);
        srv_http_sweep(http);
    }
    return srv_http_active(http) == 0;
}

/* Drains (see the top of the file) once the first signal has come. Returns the number of
 * requests that were still running when the drain ran out of time (or a second signal came),
 * each of which got an error answer. */
static int drain(srv_app *app, srv_engine *e, srv_http *http, int sfd, long delay, long seconds)
{
    if (delay > 0) {
        /* Out of rotation first: /health says "draining" while every request is still served. */
        srv_log(SRV_LOG_INFO,
                "leaving rotation: /health answers 503 for %ld s, requests are still "
                "served; then the drain",
                delay);
        atomic_store(&app->unready, true);
        double t0 = core_now();
        while (core_now() - t0 < (double)delay) {
            if (signal_wait(sfd, SWEEP_MS)) {
                srv_log(SRV_LOG_WARN, "second signal: draining now");
                break;
            }
            srv_http_sweep(http);
        }
    }
    srv_log(SRV_LOG_INFO, "draining: %d request(s) in progress; at most %ld s",
            srv_http_active(http), seconds);
    atomic_store(&app->draining, true);
    srv_engine_drain(e);
    double t0 = core_now();
    while (srv_http_active(http) > 0 && core_now() - t0 < (double)seconds) {
        if (signal_wait(sfd, SWEEP_MS)) {
            srv_log(SRV_LOG_WARN, "second signal: stopping now");
            break;
        }
        srv_http_sweep(http);
    }
    int cut = srv_http_active(http);
    if (cut > 0) {
        /* Every job ends with an error the routes turn into a 503 or, in a stream, an error
         * event and [DONE]; then the requests that wait for anything else are woken (503). */
        srv_log(SRV_LOG_WARN,
                "the drain ran out of time: ending %d unfinished request(s) with an "
                "error",
                cut);
        char why[160];
        snprintf(why, sizeof why,
                 "the server is shutting down and this request did not finish within the drain "
                 "time (--drain-timeout %ld s)",
                 seconds);
        srv_engine_abort(e, why);
        wait_requests(http, 2000);
    }
    srv_http_stop_waiting(http);
    if (!wait_requests(http, 1000))
        srv_log(SRV_LOG_WARN, "closing %d request(s) that did not take their answer",
                srv_http_active(http));
    return cut;
}

int srv_cli_serve(int argc, char **argv)
{
    srv_serve_opts o;
    char err[512];
    int rc = srv_serve_parse(argc, argv, &o, err, sizeof err);
    if (rc) {
        if (rc == 2)
            fprintf(stderr, "serve: %s\n", err);
        return rc == 1 ? 0 : 2;
    }
    srv_log_threshold = (srv_log_level)o.log_level;
    srv_log_fmt = (srv_log_format)o.log_format;
    srv_auth auth;
    if (srv_auth_init(&auth, o.api_key, o.admin_key, err, sizeof err) < 0) {
        srv_log(SRV_LOG_ERROR, "serve: %s", err);
        return 2;
    }
    int sfd = -1;
    if (signals_setup(&sfd) < 0) {
        srv_log(SRV_LOG_ERROR, "serve: cannot set up signal handling: %s", strerror(errno));
        return 1;
    }
    int status = 1;
    srv_app app;
    srv_http *http = NULL;
    srv_engine *e = start_engine(&o);
    if (!e)
        goto out;
    srv_app_init(&app, e, &auth, (size_t)o.max_body_kb << 10);
    char host[256];
    app.replica = replica_name(&o, host, sizeof host);
    srv_http_handler h;
    srv_routes_handler(&app, &h);
    srv_http_opts ho = {.host = o.host,
                        .port = (int)o.port,
                        .threads = (int)o.http_threads,
                        .max_conns = (unsigned)o.max_conns,
                        .per_ip_conns = (unsigned)o.per_ip_conns,
                        .header_timeout_s = (double)o.header_timeout,
                        .body_timeout_s = (double)o.body_timeout,
                        .idle_timeout_s = (unsigned)o.idle_timeout,
                        .replica = app.replica};
    fit_fd_limit(&ho);
    http = srv_http_new(&ho, &h, err, sizeof err);
    if (!http) {
        srv_log(SRV_LOG_ERROR, "serve: %s", err);
        srv_app_deinit(&app);
        goto out;
    }
    atomic_store(&app.http, http);
    adapter_registry *reg = srv_engine_registry(e);
    adapter_registry_stats rs = {0};
    if (reg)
        adapter_registry_stats_get(reg, &rs);
    bool v6 = strchr(o.host, ':') != NULL;
    srv_log(SRV_LOG_INFO, "serving %s (%d registry nodes) on http://%s%s%s:%d as replica %s",
            srv_engine_model_id(e), rs.nodes, v6 ? "[" : "", o.host, v6 ? "]" : "",
            srv_http_port(http), app.replica);
    int sig;
    while (!(sig = signal_wait(sfd, SWEEP_MS)))
        srv_http_sweep(http);
    srv_log(SRV_LOG_INFO, "%s received", strsignal(sig));
    int cut = drain(&app, e, http, sfd, o.drain_delay, o.drain_timeout);
    srv_http_free(http);
    srv_engine_free(e);
    e = NULL;
    srv_app_deinit(&app);
    memset(&auth, 0, sizeof auth);
    if (cut > 0) {
        srv_log(SRV_LOG_WARN, "stopped; %d request(s) were cut by the drain time-out (exit %d)",
                cut, SRV_EXIT_CUT);
        status = SRV_EXIT_CUT;
    } else {
        srv_log(SRV_LOG_INFO, "stopped");
        status = 0;
    }
out:
    srv_engine_free(e);
    close(sfd);
    close(sig_pipe[0]);
    close(sig_pipe[1]);
    return status;
}
