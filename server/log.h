/* The server's log: one line per event on stderr, "adaptree: LEVEL message", filtered by
 * --log-level. The level is set once at startup (before threads start) and read by every thread.
 */
#ifndef ADAPTREE_SERVER_LOG_H
#define ADAPTREE_SERVER_LOG_H

typedef enum srv_log_level {
    SRV_LOG_ERROR = 0,
    SRV_LOG_WARN = 1,
    SRV_LOG_INFO = 2,
    SRV_LOG_DEBUG = 3
} srv_log_level;

extern srv_log_level srv_log_threshold; /* default SRV_LOG_INFO */

/* "error", "warn", "info", "debug" -> the level; -1 for anything else. */
int srv_log_parse(const char *name);
/* Writes one line (a newline is added) when level <= srv_log_threshold. Any thread. */
void srv_log(srv_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
