/* The server's log: one line per event on stderr, filtered by --log-level, in one of two formats
 * (--log-format):
 *
 *   text  2026-12-07T01:02:03.456Z adaptree: info: message key=value key="a value"
 *   json  {"ts":"2026-12-07T01:02:03.456Z","level":"info","msg":"message","key":"value"}
 *
 * The timestamp is RFC 3339 UTC with milliseconds. Every string is escaped (control characters
 * in both formats; JSON escaping in json), so no input can forge a line. Every part of the server
 * logs through here. The level and format are set once at startup (before threads start) and
 * read by every thread.
 */
#ifndef ADAPTREE_SERVER_LOG_H
#define ADAPTREE_SERVER_LOG_H

#include <stdbool.h>
#include <time.h>

#include "server/strbuf.h"

typedef enum srv_log_level {
    SRV_LOG_ERROR = 0,
    SRV_LOG_WARN = 1,
    SRV_LOG_INFO = 2,
    SRV_LOG_DEBUG = 3
} srv_log_level;

typedef enum srv_log_format { SRV_LOG_TEXT = 0, SRV_LOG_JSON = 1 } srv_log_format;

extern srv_log_level srv_log_threshold; /* default SRV_LOG_INFO */
extern srv_log_format srv_log_fmt;      /* default SRV_LOG_TEXT */

/* "error", "warn", "info", "debug" -> the level; -1 for anything else. */
int srv_log_parse(const char *name);
/* "text", "json" -> the format; -1 for anything else. */
int srv_log_parse_format(const char *name);

/* A named value that goes with a line: a JSON field, or key=value after the text message. */
typedef enum srv_log_kind {
    SRV_LOG_FIELD_STR, /* str; NULL leaves the field out */
    SRV_LOG_FIELD_INT, /* i */
    SRV_LOG_FIELD_MS   /* ms: milliseconds, one decimal; negative leaves the field out */
} srv_log_kind;

typedef struct srv_log_field {
    const char *key; /* a literal of [a-z_]: written as is */
    srv_log_kind kind;
    bool json_only; /* the text line's message says it already */
    const char *str;
    long long i;
    double ms;
} srv_log_field;

#define SRV_LOG_STR(k, v) ((srv_log_field){.key = (k), .kind = SRV_LOG_FIELD_STR, .str = (v)})
#define SRV_LOG_INT(k, v) ((srv_log_field){.key = (k), .kind = SRV_LOG_FIELD_INT, .i = (v)})
#define SRV_LOG_MS(k, v) ((srv_log_field){.key = (k), .kind = SRV_LOG_FIELD_MS, .ms = (v)})

/* Writes one line (a newline is added) when level <= srv_log_threshold. Any thread. */
void srv_log(srv_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The same with fields (n of them). Any thread. */
void srv_log_with(srv_log_level level, const srv_log_field *fields, int n, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The same with one field, the request id of the request the line is about. Any thread. */
void srv_log_req(srv_log_level level, const char *request_id, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The formatter under srv_log_with, for tests: appends one line (no newline) to out. */
void srv_log_format_line(srv_buf *out, srv_log_format format, const struct timespec *when,
                         srv_log_level level, const char *msg, const srv_log_field *fields, int n);
/* Writes when as "2026-12-07T01:02:03.456Z" (24 bytes and a NUL) into out. */
void srv_log_timestamp(char out[32], const struct timespec *when);

#define SRV_REQUEST_ID_MAX 128 /* bytes */

/* A request's id into out: the client's (given, from X-Request-Id) when it is 1 to
 * SRV_REQUEST_ID_MAX bytes of printable ASCII (space to '~'), else 32 random hex digits.
 * Returns true when the client's was kept. Any thread. */
bool srv_log_request_id(const char *given, char out[SRV_REQUEST_ID_MAX + 1]);

#endif
