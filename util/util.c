/* util.c - see util.h. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <sys/stat.h>
#include <unistd.h>
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

char *util_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    size_t n = 0;
    FILE *m = open_memstream(&buf, &n);
    char chunk[8192];
    size_t r;
    while (m && (r = fread(chunk, 1, sizeof chunk, f)) > 0)
        if (fwrite(chunk, 1, r, m) != r)
            break;
    int bad = ferror(f);
    fclose(f);
    if (!m || fclose(m) || bad) {
        free(buf);
        errno = bad ? EIO : ENOMEM;
        return NULL;
    }
    if (len)
        *len = n;
    return buf;
}

int util_write_file_atomic(const char *path, const void *data, size_t len, const char **what)
{
    const char *step = "create";
    size_t n = strlen(path) + sizeof ".tmp.XXXXXX";
    char *tmp = malloc(n);
    if (!tmp) {
        if (what)
            *what = step;
        return ENOMEM;
    }
    snprintf(tmp, n, "%s.tmp.XXXXXX", path);
    int fd = mkstemp(tmp), e = 0;
    if (fd < 0) {
        e = errno;
        free(tmp);
        if (what)
            *what = step;
        return e;
    }
    (void)fchmod(fd, 0644); /* mkstemp makes 0600 */
    step = "write";
    const char *p = data;
    while (!e && len) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            e = w < 0 ? errno : EIO;
        else {
            p += w;
            len -= (size_t)w;
        }
    }
    if (!e && fsync(fd)) {
        step = "fsync";
        e = errno;
    }
    if (close(fd) && !e) {
        step = "close";
        e = errno;
    }
    if (!e && rename(tmp, path)) {
        step = "rename";
        e = errno;
    }
    if (e)
        unlink(tmp);
    free(tmp);
    if (e && what)
        *what = step;
    return e;
}

/* mkdir that counts an existing directory as success. */
static int mkdir_one(const char *p)
{
    if (mkdir(p, 0777) == 0)
        return 0;
    int e = errno;
    struct stat sb;
    if (e == EEXIST)
        return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode) ? 0 : ENOTDIR;
    return e;
}

int util_mkdir_p(const char *dir)
{
    if (!dir || !*dir)
        return ENOENT;
    char *p = strdup(dir);
    if (!p)
        return ENOMEM;
    int e = 0;
    for (char *q = p + 1; *q && !e; q++) {
        if (*q != '/' || q[-1] == '/')
            continue;
        *q = '\0';
        e = mkdir_one(p);
        *q = '/';
    }
    if (!e)
        e = mkdir_one(p);
    free(p);
    return e;
}

const char *util_errtab(const char *const *tab, int n, int code, const char *dflt)
{
    return code >= 0 && code < n ? tab[code] : dflt;
}

int util_blank(const char *s)
{
    for (; *s; s++)
        if (!isspace((unsigned char)*s))
            return 0;
    return 1;
}


long long util_disk_free(const char *path)
{
    struct statvfs st;
    if (statvfs(path, &st))
        return -1;
    return (long long)st.f_bavail * (long long)st.f_frsize;
}
