/* Error messages for core/: functions that fail fill a caller-provided buffer. */
#ifndef ADAPTREE_CORE_ERROR_INTERNAL_H
#define ADAPTREE_CORE_ERROR_INTERNAL_H

#include <stddef.h>

/* printf-style message into err (errlen bytes, always NUL-terminated); no-op when err is NULL
 * or errlen is 0. */
void core__seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
