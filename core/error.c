/* The one formatter behind every core/ error message. */
#include "core/error_internal.h"

#include <stdarg.h>
#include <stdio.h>

void core__seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}
