/* The server's stderr log (server/log.h): the timestamp, the two formats, the escaping, and the
 * request ids that tie a request's lines together. */
#include "server/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>

srv_log_level srv_log_threshold = SRV_LOG_INFO;
srv_log_format srv_log_fmt = SRV_LOG_TEXT;

static const char *const names[] = {"error", "warn", "info", "debug"};

int srv_log_parse(const char *name)
{
    for (int i = 0; i < 4; i++)
        if (!strcmp(name, names[i]))
            return i;
    return -1;
}

int srv_log_parse_format(const char *name)
{
    return !strcmp(name, "text") ? SRV_LOG_TEXT : !strcmp(name, "json") ? SRV_LOG_JSON : -1;
}

void srv_log_timestamp(char out[32], const struct timespec *when)
{
    struct tm tm;
    time_t sec = when->tv_sec;
    gmtime_r(&sec, &tm);
    size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 32 - n, ".%03ldZ", (long)(when->tv_nsec / 1000000));
}

/* Text: s with control characters (and DEL) written as escapes, so it stays on its line. */
static void put_text(srv_buf *b, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c >= 0x20 && c != 0x7f)
            srv_buf_putc(b, (char)c);
        else if (c == '\n')
            srv_buf_puts(b, "\\n");
        else if (c == '\r')
            srv_buf_puts(b, "\\r");
        else if (c == '\t')
            srv_buf_puts(b, "\\t");
        else
            srv_buf_printf(b, "\\x%02x", c);
    }
}

/* Text: a field's value bare when it is a plain word, else quoted as a JSON string. */
static void put_text_value(srv_buf *b, const char *s)
{
    bool bare = *s != 0;
    for (const unsigned char *p = (const unsigned char *)s; *p && bare; p++)
        bare = *p > 0x20 && *p < 0x7f && *p != '"' && *p != '=' && *p != '\\';
    if (bare)
        srv_buf_puts(b, s);
    else
        srv_buf_json_str(b, s, strlen(s));
}

static void put_field(srv_buf *b, srv_log_format format, const srv_log_field *f)
{
    if ((f->kind == SRV_LOG_FIELD_STR && !f->str) || (f->kind == SRV_LOG_FIELD_MS && f->ms < 0))
        return;
    if (format == SRV_LOG_JSON) {
        srv_buf_printf(b, ",\"%s\":", f->key);
    } else {
        if (f->json_only)
            return;
        srv_buf_printf(b, " %s=", f->key);
    }
    switch (f->kind) {
    case SRV_LOG_FIELD_STR:
        if (format == SRV_LOG_JSON)
            srv_buf_json_str(b, f->str, strlen(f->str));
        else
            put_text_value(b, f->str);
        break;
    case SRV_LOG_FIELD_INT:
        srv_buf_printf(b, "%lld", f->i);
        break;
    case SRV_LOG_FIELD_MS:
        srv_buf_printf(b, "%.1f", f->ms);
        break;
    }
}

void srv_log_format_line(srv_buf *out, srv_log_format format, const struct timespec *when,
                         srv_log_level level, const char *msg, const srv_log_field *fields, int n)
{
    char ts[32];
    srv_log_timestamp(ts, when);
    if (format == SRV_LOG_JSON) {
        srv_buf_printf(out, "{\"ts\":\"%s\",\"level\":\"%s\",\"msg\":", ts, names[level]);
        srv_buf_json_str(out, msg, strlen(msg));
    } else {
        srv_buf_printf(out, "%s adaptree: %s: ", ts, names[level]);
        put_text(out, msg);
    }
    for (int i = 0; i < n; i++)
        put_field(out, format, &fields[i]);
    if (format == SRV_LOG_JSON)
        srv_buf_putc(out, '}');
}

static void vlog(srv_log_level level, const srv_log_field *fields, int n, const char *fmt,
                 va_list ap)
{
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    srv_buf b;
    srv_buf_init(&b);
    srv_log_format_line(&b, srv_log_fmt, &now, level, msg, fields, n);
    srv_buf_putc(&b, '\n');
    /* One fwrite per line: stdio locks the stream, so lines from threads do not interleave. */
    if (srv_buf_ok(&b))
        fwrite(b.data, 1, b.len, stderr);
    else
        fprintf(stderr, "adaptree: %s: out of memory writing a log line\n", names[level]);
    srv_buf_deinit(&b);
}

void srv_log(srv_log_level level, const char *fmt, ...)
{
    if (level > srv_log_threshold)
        return;
    va_list ap;
    va_start(ap, fmt);
    vlog(level, NULL, 0, fmt, ap);
    va_end(ap);
}

void srv_log_with(srv_log_level level, const srv_log_field *fields, int n, const char *fmt, ...)
{
    if (level > srv_log_threshold)
        return;
    va_list ap;
    va_start(ap, fmt);
    vlog(level, fields, n, fmt, ap);
    va_end(ap);
}

void srv_log_req(srv_log_level level, const char *request_id, const char *fmt, ...)
{
    if (level > srv_log_threshold)
        return;
    srv_log_field f = SRV_LOG_STR("request_id", request_id);
    va_list ap;
    va_start(ap, fmt);
    vlog(level, &f, 1, fmt, ap);
    va_end(ap);
}

bool srv_log_request_id(const char *given, char out[SRV_REQUEST_ID_MAX + 1])
{
    size_t n = 0;
    bool ok = given != NULL;
    for (; ok && given[n]; n++)
        ok = n < SRV_REQUEST_ID_MAX && given[n] >= 0x20 && given[n] < 0x7f;
    if (ok && n > 0) {
        memcpy(out, given, n + 1);
        return true;
    }
    uint8_t r[16];
    if (getrandom(r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r) {
        /* No entropy yet (early boot): unique is enough for an id. */
        static atomic_ullong counter;
        struct timespec t;
        clock_gettime(CLOCK_REALTIME, &t);
        uint64_t a = (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
        uint64_t c = atomic_fetch_add(&counter, 1) * 0x9E3779B97F4A7C15ull;
        memcpy(r, &a, 8);
        memcpy(r + 8, &c, 8);
    }
    for (int i = 0; i < 16; i++)
        snprintf(out + 2 * i, 3, "%02x", r[i]);
    return false;
}
