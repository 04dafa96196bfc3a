/* The server's stderr log (server/log.h). */
#include "server/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

srv_log_level srv_log_threshold = SRV_LOG_INFO;

static const char *const names[] = {"error", "warn", "info", "debug"};

int srv_log_parse(const char *name)
{
    for (int i = 0; i < 4; i++)
        if (!strcmp(name, names[i]))
            return i;
    return -1;
}

void srv_log(srv_log_level level, const char *fmt, ...)
{
    if (level > srv_log_threshold)
        return;
    /* One fprintf per line: stdio locks the stream, so lines from threads do not interleave. */
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "adaptree: %s: %s\n", names[level], line);
}
