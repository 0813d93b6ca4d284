/* util.c - see util.h. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <stdio.h>
#include <time.h>

#include "util/util.h"

int util_verrf(char *errbuf, size_t errlen, int code, const char *fmt, va_list ap)
{
    if (errbuf && errlen)
        vsnprintf(errbuf, errlen, fmt, ap);
    return code;
}

int util_errf(char *errbuf, size_t errlen, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    util_verrf(errbuf, errlen, code, fmt, ap);
    va_end(ap);
    return code;
}

double util_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}
