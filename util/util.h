/* util.h - small helpers the library's modules share; not part of any
 * module's API.
 *
 *   if (!f)
 *       return util_errf(errbuf, errlen, STORE_IO, "%s: %s", path, strerror(errno));
 *   double t0 = util_now();
 */
#ifndef MEDSEM_UTIL_H
#define MEDSEM_UTIL_H

#include <stdarg.h>
#include <stddef.h>

/* Formats a message into the caller's error buffer (nothing when errbuf is
 * NULL or errlen 0, truncated to fit otherwise) and returns code, so that a
 * failure is one return statement in every module's own error space. */
int util_errf(char *errbuf, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
int util_verrf(char *errbuf, size_t errlen, int code, const char *fmt, va_list ap)
    __attribute__((format(printf, 4, 0)));

/* The whole of a file, NUL-terminated (*len, may be NULL, gets its size without
 * the NUL); NULL with errno set when it cannot be opened or read, or on
 * running out of memory (ENOMEM).  Free with free(). */
char *util_read_file(const char *path, size_t *len);

/* Makes dir and any missing parents (mode 0777 less the umask), like
 * `mkdir -p`.  0 when dir is a directory afterwards; otherwise an errno value
 * (ENOTDIR when dir or a parent exists and is not a directory). */
int util_mkdir_p(const char *dir);

/* Seconds on the monotonic clock: for durations only. */
double util_now(void);

#endif
