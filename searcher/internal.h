/* internal.h - searcher module internals shared between its files. */
#ifndef MEDSEM_SEARCHER_INTERNAL_H
#define MEDSEM_SEARCHER_INTERNAL_H

#include <stddef.h>

/* Formats a one-line message into errbuf (may be NULL) and returns code. */
int srch__fail(char *errbuf, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
