/* Tests for `adaptree serve` flag parsing (server/cli_serve.c): defaults, every flag, both
 * spellings of a value, the environment's keys, and the refusals. */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

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
