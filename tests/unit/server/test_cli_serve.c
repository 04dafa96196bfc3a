/* Tests for `adaptree serve` option parsing (server/serve_opts.c): defaults, every flag, both
 * spellings of a value, the environment, the config file, their precedence (flag > env > file >
 * default), and the refusals with their source. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "server/cli.h"
#include "server/cli_serve.h"
#include "server/log.h"
#include "tests/test.h"

static int parse(srv_serve_opts *o, char *err, ...)
{
    char *argv[64] = {"serve"};
    int argc = 1;
    va_list ap;
    va_start(ap, err);
    for (char *a; argc < 63 && (a = va_arg(ap, char *));)
        argv[argc++] = a;
    va_end(ap);
    return srv_serve_parse(argc, argv, o, err, 256);
}

TEST(serve_flags_defaults)
{
    unsetenv("ADAPTREE_API_KEY");
    unsetenv("ADAPTREE_ADMIN_KEY");
    srv_serve_opts o;
    char err[256];
    CHECK_EQ_INT(parse(&o, err, NULL), 0);
    CHECK_EQ_STR(o.host, "127.0.0.1");
    CHECK_EQ_INT(o.port, 8080);
    CHECK_EQ_STR(o.model, SRV_DEFAULT_MODEL);
    CHECK_EQ_STR(o.registry, "registry/");
    CHECK(!o.registry_given);
    CHECK_EQ_INT(o.max_body_kb, 1024);
    CHECK_EQ_INT(o.idle_timeout, 60);
    CHECK_EQ_INT(o.max_seqs, 32);
    CHECK_EQ_INT(o.queue_limit, 256);
    CHECK_EQ_INT(o.log_level, SRV_LOG_INFO);
    CHECK_EQ_INT(o.log_format, SRV_LOG_TEXT);
    CHECK(o.api_key == NULL && o.admin_key == NULL);
    CHECK(o.watch);
    CHECK(!o.int8 && !o.kv_f16);
    CHECK_EQ_INT(o.max_conns, 1024);
    CHECK_EQ_INT(o.per_ip_conns, 512); /* half of --max-connections */
    CHECK_EQ_INT(o.header_timeout, 10);
    CHECK_EQ_INT(o.body_timeout, 30);
    CHECK_EQ_INT(o.drain_timeout, 30);
    CHECK_EQ_INT(o.drain_delay, 0);
    CHECK(o.replica == NULL);       /* the host name, chosen at start */
    CHECK(o.chat_template == NULL); /* the GGUF's */
    CHECK_EQ_INT(parse(&o, err, "--max-connections", "100", NULL), 0);
    CHECK_EQ_INT(o.per_ip_conns, 50);
    CHECK_EQ_INT(parse(&o, err, "--max-connections", "1", NULL), 0);
    CHECK_EQ_INT(o.per_ip_conns, 1);
}

TEST(serve_flags_all)
{
    unsetenv("ADAPTREE_API_KEY");
    srv_serve_opts o;
    char err[256];
    int rc =
        parse(&o, err, "--host", "0.0.0.0", "--port=9000", "-m", "m.gguf", "--registry", "/r",
              "--threads", "2", "--max-batch-tokens", "64", "--max-seqs", "4", "--ctx", "512",
              "--adapter-cache-mb", "100", "--queue-limit", "8", "--api-key", "k1",
              "--admin-key=k2", "--log-level", "debug", "--max-body-kb", "16", "--idle-timeout",
              "5", "--http-threads", "3", "--no-watch", "--int8", "--kv-f16", "--max-connections",
              "64", "--max-connections-per-ip=0", "--header-timeout", "3", "--body-timeout", "4",
              "--drain-timeout", "0", "--drain-delay", "3", "--replica-name", "pod-7.zone_a:1",
              "--chat-template", "t.jinja", "--max-step-ms", "40", "--prefill-chunk", "64", NULL);
    CHECK_MSG(rc == 0, "rc %d: %s", rc, err);
    CHECK_EQ_STR(o.host, "0.0.0.0");
    CHECK_EQ_INT(o.port, 9000);
    CHECK_EQ_STR(o.model, "m.gguf");
    CHECK_EQ_STR(o.registry, "/r");
    CHECK(o.registry_given);
    CHECK_EQ_INT(o.threads, 2);
    CHECK_EQ_INT(o.max_batch_tokens, 64);
    CHECK_EQ_INT(o.max_seqs, 4);
    CHECK_EQ_INT(o.n_ctx, 512);
    CHECK_EQ_INT(o.adapter_cache_mb, 100);
    CHECK_EQ_INT(o.queue_limit, 8);
    CHECK_EQ_STR(o.api_key, "k1");
    CHECK_EQ_STR(o.admin_key, "k2");
    CHECK_EQ_INT(o.log_level, SRV_LOG_DEBUG);
    CHECK_EQ_INT(o.max_body_kb, 16);
    CHECK_EQ_INT(o.idle_timeout, 5);
    CHECK_EQ_INT(o.http_threads, 3);
    CHECK(!o.watch);
    CHECK(o.int8 && o.kv_f16);
    CHECK_EQ_INT(o.max_conns, 64);
    CHECK_EQ_INT(o.per_ip_conns, 0);
    CHECK_EQ_INT(o.header_timeout, 3);
    CHECK_EQ_INT(o.body_timeout, 4);
    CHECK_EQ_INT(o.drain_timeout, 0);
    CHECK_EQ_INT(o.drain_delay, 3);
    CHECK_EQ_STR(o.replica, "pod-7.zone_a:1");
    CHECK_EQ_STR(o.chat_template, "t.jinja");
    CHECK_EQ_INT(o.max_step_ms, 40);
    CHECK_EQ_INT(o.prefill_chunk, 64);
    CHECK_EQ_INT(parse(&o, err, "--no-registry", NULL), 0);
    CHECK(o.registry == NULL);
    CHECK_EQ_INT(o.max_step_ms, -1); /* the learned default */
    CHECK_EQ_INT(o.prefill_chunk, 256);
    CHECK_EQ_INT(parse(&o, err, "--max-step-ms", "0", NULL), 0);
    CHECK_EQ_INT(o.max_step_ms, 0);
    CHECK_EQ_INT(parse(&o, err, "--max-step-ms", "-1", NULL), 2);
    CHECK_EQ_INT(parse(&o, err, "--prefill-chunk", "0", NULL), 2);
}

TEST(serve_flags_log_format)
{
    srv_serve_opts o;
    char err[256];
    int rc = parse(&o, err, "-m", "m.gguf", "--log-format", "json", NULL);
    CHECK_MSG(rc == 0, "rc %d: %s", rc, err);
    CHECK_EQ_INT(o.log_format, SRV_LOG_JSON);
}

TEST(serve_flags_env_keys)
{
    setenv("ADAPTREE_API_KEY", "envkey", 1);
    setenv("ADAPTREE_ADMIN_KEY", "envadm", 1);
    srv_serve_opts o;
    char err[256];
    CHECK_EQ_INT(parse(&o, err, NULL), 0);
    CHECK_EQ_STR(o.api_key, "envkey");
    CHECK_EQ_STR(o.admin_key, "envadm");
    CHECK_EQ_INT(parse(&o, err, "--api-key", "flag", NULL), 0);
    CHECK_EQ_STR(o.api_key, "flag");
    unsetenv("ADAPTREE_API_KEY");
    unsetenv("ADAPTREE_ADMIN_KEY");
}

TEST(serve_flags_refused)
{
    static const struct {
        const char *a, *b, *msg;
    } cases[] = {
        {"--port", "70000", "bad value '70000' for --port"},
        {"--port", "80x", "bad value '80x' for --port"},
        {"--max-seqs", "0", "bad value '0' for --max-seqs"},
        {"--max-body-kb", "-1", "bad value '-1' for --max-body-kb"},
        {"--drain-delay", "3601", "bad value '3601' for --drain-delay"},
        {"--log-level", "loud", "bad value 'loud' for --log-level"},
        {"--log-format", "xml", "bad value 'xml' for --log-format"},
        {"--frobnicate", NULL, "unknown option '--frobnicate'"},
        {"--port", NULL, "--port needs a value"},
        {"--model", "", "--model needs a non-empty value"},
        {"--replica-name", "a b", "bad value 'a b' for --replica-name"},
        {"--replica-name", "r\"1", "bad value 'r\"1' for --replica-name"},
        {"--replica-name", "x\r\nSet-Cookie:1", "for --replica-name"},
        {"--replica-name", "0123456789012345678901234567890123456789012345678901234567890123",
         "for --replica-name"},
        {"--replica-name", "", "--replica-name needs a non-empty value"},
        {"--registry", "r", NULL}, /* with --no-registry below */
    };
    srv_serve_opts o;
    char err[256];
    for (size_t i = 0; i + 1 < sizeof cases / sizeof *cases; i++) {
        err[0] = 0;
        int rc = parse(&o, err, cases[i].a, cases[i].b, NULL);
        CHECK_MSG(rc == 2, "case %zu: rc %d", i, rc);
        CHECK_MSG(strstr(err, cases[i].msg) != NULL, "case %zu: '%s' lacks '%s'", i, err,
                  cases[i].msg);
    }
    CHECK_EQ_INT(parse(&o, err, "--registry", "r", "--no-registry", NULL), 2);
    CHECK_MSG(strstr(err, "contradict") != NULL, "%s", err);
}

/* Writes text to a fresh file; its path into path (cap 64). */
static void write_conf(char *path, const char *text)
{
    snprintf(path, 64, "/tmp/adaptree-test-conf-XXXXXX");
    int fd = mkstemp(path);
    if (fd >= 0) {
        FILE *f = fdopen(fd, "w");
        fputs(text, f);
        fclose(f);
    }
}

static void unset_all(void)
{
    static const char *const names[] = {
        "ADAPTREE_PORT",     "ADAPTREE_MAX_SEQS",  "ADAPTREE_HOST",       "ADAPTREE_INT8",
        "ADAPTREE_NO_WATCH", "ADAPTREE_CONFIG",    "ADAPTREE_LOG_LEVEL",  "ADAPTREE_NO_REGISTRY",
        "ADAPTREE_API_KEY",  "ADAPTREE_ADMIN_KEY", "ADAPTREE_QUEUE_LIMIT"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        unsetenv(names[i]);
}

/* port is in all three sources, max-seqs in the file and the environment, host and log-level in
 * the file only, queue-limit nowhere: flag > env > file > default, and each remembers where it
 * came from (with the file's line). */
TEST(serve_config_precedence)
{
    unset_all();
    char path[64];
    write_conf(path, "# a comment, then a blank line\n"
                     "\n"
                     "port = 1111\n"
                     "  max-seqs=3   # trailing comment\n"
                     "host = 0.0.0.0\r\n"
                     "log-level = warn\n"
                     "int8 = yes\n"
                     "no-watch = true\n");
    setenv("ADAPTREE_PORT", "2222", 1);
    setenv("ADAPTREE_MAX_SEQS", "5", 1);
    setenv("ADAPTREE_INT8", "off", 1);
    srv_serve_opts o;
    char err[256] = "";
    int rc = parse(&o, err, "--config", path, "--port", "3333", NULL);
    CHECK_MSG(rc == 0, "rc %d: %s", rc, err);
    CHECK_EQ_INT(o.port, 3333);
    CHECK_EQ_INT(o.max_seqs, 5);
    CHECK_EQ_STR(o.host, "0.0.0.0");
    CHECK_EQ_INT(o.log_level, SRV_LOG_WARN);
    CHECK(!o.int8); /* the environment's off beats the file's yes */
    CHECK(!o.watch);
    CHECK_EQ_INT(o.queue_limit, 256);
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    srv_serve_print_config(&o, out);
    fclose(out);
    char want[5][160];
    snprintf(want[0], sizeof want[0], "host                    = 0.0.0.0%*s # file %s:5\n", 23, "",
             path);
    snprintf(want[1], sizeof want[1], "%s", "port                    = 3333");
    snprintf(want[2], sizeof want[2], "%s", "# env ADAPTREE_MAX_SEQS\n");
    snprintf(want[3], sizeof want[3], "%s", "queue-limit             = 256");
    snprintf(want[4], sizeof want[4], "= warn%*s # file %s:6\n", 26, "", path);
    for (int i = 0; i < 5; i++)
        CHECK_MSG(strstr(text, want[i]) != NULL, "'%s' not in:\n%s", want[i], text);
    CHECK_MSG(strstr(text, "# flag\n") && strstr(text, "# default\n"), "%s", text);
    free(text);
    srv_serve_opts_deinit(&o);
    /* without the flag, the environment; without that, the file; $ADAPTREE_CONFIG names it */
    setenv("ADAPTREE_CONFIG", path, 1);
    CHECK_EQ_INT(parse(&o, err, NULL), 0);
    CHECK_EQ_INT(o.port, 2222);
    srv_serve_opts_deinit(&o);
    unsetenv("ADAPTREE_PORT");
    CHECK_EQ_INT(parse(&o, err, NULL), 0);
    CHECK_EQ_INT(o.port, 1111);
    srv_serve_opts_deinit(&o);
    unset_all();
    CHECK_EQ_INT(parse(&o, err, NULL), 0);
    CHECK_EQ_INT(o.port, 8080);
    srv_serve_opts_deinit(&o);
    unlink(path);
}

/* A bad line stops the parse with its file and line number first; the value checks are the
 * flags' own. */
TEST(serve_config_file_errors)
{
    unset_all();
    static const struct {
        const char *text, *msg;
    } cases[] = {
        {"port = 80\n# c\nfrobnicate = 1\n", ":3: unknown key 'frobnicate'"},
        {"\n\nport = abc\n", ":3: bad value 'abc' for --port: expected an integer in [0, 65535]"},
        {"max-seqs = 4\njust words\n", ":2: expected 'key = value'"},
        {"model =\n", ":1: --model needs a non-empty value"},
        {"int8 = maybe\n", ":1: bad value 'maybe' for --int8: expected true or false"},
        {"log-level = loud\n", ":1: bad value 'loud' for --log-level"},
        {"--port = 80\n", ":1: unknown key '--port'"},
        {"replica-name = a b\n", ":1: bad value 'a b' for --replica-name"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char path[64], want[200], err[256] = "";
        write_conf(path, cases[i].text);
        snprintf(want, sizeof want, "%s%s", path, cases[i].msg);
        srv_serve_opts o;
        int rc = parse(&o, err, "--config", path, NULL);
        srv_serve_opts_deinit(&o);
        unlink(path);
        CHECK_MSG(rc == 2, "case %zu: rc %d", i, rc);
        CHECK_MSG(!strncmp(err, want, strlen(want)), "case %zu: '%s' is not '%s...'", i, err, want);
    }
    srv_serve_opts o;
    char err[256] = "";
    CHECK_EQ_INT(parse(&o, err, "--config", "/nonexistent/adaptree.conf", NULL), 2);
    CHECK_MSG(strstr(err, "--config /nonexistent/adaptree.conf: cannot read it") == err, "%s", err);
    srv_serve_opts_deinit(&o);
    CHECK_EQ_INT(parse(&o, err, "--config", NULL), 2);
    CHECK_MSG(strstr(err, "--config needs a value") != NULL, "%s", err);
}

/* The environment's values get the flags' checks, the message prefixed with NAME=value. */
TEST(serve_env_validation)
{
    unset_all();
    static const struct {
        const char *name, *value, *msg;
    } cases[] = {
        {"ADAPTREE_PORT", "abc",
         "ADAPTREE_PORT=abc: bad value 'abc' for --port: expected an integer in [0, 65535]"},
        {"ADAPTREE_MAX_SEQS", "0", "ADAPTREE_MAX_SEQS=0: bad value '0' for --max-seqs"},
        {"ADAPTREE_INT8", "2", "ADAPTREE_INT8=2: bad value '2' for --int8: expected true or false"},
        {"ADAPTREE_LOG_LEVEL", "loud", "ADAPTREE_LOG_LEVEL=loud: bad value 'loud' for --log-level"},
        {"ADAPTREE_PORT", "tcp://10.0.0.1:80", "ADAPTREE_PORT=tcp://10.0.0.1:80: bad value"},
    };
    srv_serve_opts o;
    char err[256];
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        setenv(cases[i].name, cases[i].value, 1);
        err[0] = 0;
        int rc = parse(&o, err, NULL);
        unsetenv(cases[i].name);
        CHECK_MSG(rc == 2, "case %zu: rc %d", i, rc);
        CHECK_MSG(!strncmp(err, cases[i].msg, strlen(cases[i].msg)),
                  "case %zu: '%s' is not '%s...'", i, err, cases[i].msg);
    }
    /* a bad environment value is refused even when a flag sets the same option */
    setenv("ADAPTREE_PORT", "abc", 1);
    CHECK_EQ_INT(parse(&o, err, "--port", "9000", NULL), 2);
    unsetenv("ADAPTREE_PORT");
    /* empty is unset; switches; --no-registry from the environment, --registry from a flag: the
     * flag wins */
    setenv("ADAPTREE_PORT", "", 1);
    setenv("ADAPTREE_INT8", "TRUE", 1);
    setenv("ADAPTREE_NO_WATCH", "1", 1);
    setenv("ADAPTREE_NO_REGISTRY", "on", 1);
    CHECK_EQ_INT(parse(&o, err, NULL), 0);
    CHECK_EQ_INT(o.port, 8080);
    CHECK(o.int8 && !o.watch && o.registry == NULL);
    CHECK_EQ_INT(parse(&o, err, "--registry", "/r", NULL), 0);
    CHECK_EQ_STR(o.registry, "/r");
    CHECK(o.registry_given);
    unset_all();
    /* --cors-origin: repeatable; the flags' list replaces the environment's */
    setenv("ADAPTREE_CORS_ORIGIN", "http://a.example,http://b.example", 1);
    CHECK_EQ_INT(parse(&o, err, NULL), 0);
    CHECK_EQ_INT(o.n_cors_origins, 1);
    CHECK_EQ_STR(o.cors_origins[0], "http://a.example,http://b.example");
    CHECK_EQ_INT(parse(&o, err, "--cors-origin", "*", "--cors-origin=https://c.example", NULL), 0);
    CHECK_EQ_INT(o.n_cors_origins, 2);
    CHECK_EQ_STR(o.cors_origins[1], "https://c.example");
    setenv("ADAPTREE_CORS_ORIGIN", "http://a.example/x", 1);
    CHECK_EQ_INT(parse(&o, err, NULL), 2);
    CHECK_MSG(strstr(err, "ADAPTREE_CORS_ORIGIN=http://a.example/x: bad value 'http://a.example/x' "
                          "for --cors-origin") == err,
              "%s", err);
    unsetenv("ADAPTREE_CORS_ORIGIN");
}

/* The config file is read through core_read_text: a NUL byte and more than 1 MiB are refused
 * with the file named, before any line is applied. */
TEST(serve_config_file_read_limits)
{
    unset_all();
    char path[64] = "/tmp/adaptree-test-conf-XXXXXX", err[256] = "", want[128];
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd < 0)
        return;
    CHECK_EQ_INT((int)write(fd, "port = 8081\n\0x\n", 15), 15);
    srv_serve_opts o;
    CHECK_EQ_INT(parse(&o, err, "--config", path, NULL), 2);
    srv_serve_opts_deinit(&o);
    snprintf(want, sizeof want, "--config %s: holds a NUL byte", path);
    CHECK_MSG(strstr(err, want) == err, "'%s' is not '%s'", err, want);
    CHECK_EQ_INT(ftruncate(fd, 0), 0);
    char *big = malloc((1 << 20) + 2);
    CHECK(big != NULL);
    if (big) {
        memset(big, '#', (1 << 20) + 1);
        CHECK_EQ_INT((int)pwrite(fd, big, (1 << 20) + 1, 0), (1 << 20) + 1);
        free(big);
    }
    CHECK_EQ_INT(parse(&o, err, "--config", path, NULL), 2);
    srv_serve_opts_deinit(&o);
    snprintf(want, sizeof want, "--config %s: larger than 1 MiB", path);
    CHECK_MSG(strstr(err, want) == err, "'%s' is not '%s'", err, want);
    close(fd);
    unlink(path);
}
