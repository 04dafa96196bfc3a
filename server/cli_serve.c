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
#define CHAT_TEMPLATE_MAX (1 << 20) /* the interpreter's own limit (core/text/jinja_internal.h) */

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
    char err[160];
    char *s = core_read_text(path, CHAT_TEMPLATE_MAX, NULL, err, sizeof err);
    if (!s)
        srv_log(SRV_LOG_ERROR, "serve: --chat-template %s: %s", path, err);
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
    eo.spec_k = (int)o->spec_k;
    eo.spec_ngram = (int)o->spec_ngram;
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

static int serve(const srv_serve_opts *o);

int srv_cli_serve(int argc, char **argv)
{
    srv_serve_opts o;
    char err[512];
    int rc = srv_serve_parse(argc, argv, &o, err, sizeof err);
    if (rc || o.print_config) {
        if (rc == 2)
            fprintf(stderr, "serve: %s\n", err);
        else if (o.print_config)
            srv_serve_print_config(&o, stdout);
        srv_serve_opts_deinit(&o);
        return rc == 2 ? 2 : 0;
    }
    int status = serve(&o);
    srv_serve_opts_deinit(&o);
    return status;
}

/* Runs the server with options o until a signal and the drain; the exit status. */
static int serve(const srv_serve_opts *o)
{
    char err[512];
    srv_log_threshold = (srv_log_level)o->log_level;
    srv_log_fmt = (srv_log_format)o->log_format;
    srv_cors cors;
    if (srv_cors_init(&cors, o->cors_origins, o->n_cors_origins, err, sizeof err) < 0) {
        srv_log(SRV_LOG_ERROR, "serve: %s", err);
        return 2;
    }
    srv_auth auth;
    if (srv_auth_init(&auth, o->api_key, o->admin_key, err, sizeof err) < 0) {
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
    srv_engine *e = start_engine(o);
    if (!e)
        goto out;
    srv_app_init(&app, e, &auth, (size_t)o->max_body_kb << 10);
    app.cors = cors.n ? &cors : NULL;
    char host[256];
    app.replica = replica_name(o, host, sizeof host);
    srv_http_handler h;
    srv_routes_handler(&app, &h);
    srv_http_opts ho = {.host = o->host,
                        .port = (int)o->port,
                        .threads = (int)o->http_threads,
                        .max_conns = (unsigned)o->max_conns,
                        .per_ip_conns = (unsigned)o->per_ip_conns,
                        .header_timeout_s = (double)o->header_timeout,
                        .body_timeout_s = (double)o->body_timeout,
                        .idle_timeout_s = (unsigned)o->idle_timeout,
                        .replica = app.replica,
                        .cors = app.cors};
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
    bool v6 = strchr(o->host, ':') != NULL;
    srv_log(SRV_LOG_INFO, "serving %s (%d registry nodes) on http://%s%s%s:%d as replica %s",
            srv_engine_model_id(e), rs.nodes, v6 ? "[" : "", o->host, v6 ? "]" : "",
            srv_http_port(http), app.replica);
    int sig;
    while (!(sig = signal_wait(sfd, SWEEP_MS)))
        srv_http_sweep(http);
    srv_log(SRV_LOG_INFO, "%s received", strsignal(sig));
    int cut = drain(&app, e, http, sfd, o->drain_delay, o->drain_timeout);
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
