/* internal.h - encoder module internals shared between its files. */
#ifndef MEDSEM_ENCODER_INTERNAL_H
#define MEDSEM_ENCODER_INTERNAL_H

#include <stddef.h>

/* Formats a one-line message into errbuf (may be NULL) and returns code. */
int enc__fail(char *errbuf, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
