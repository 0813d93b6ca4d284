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
#include <stdint.h>

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

/* Writes len bytes to path atomically: into a temporary file beside it (mode
 * 0644), fsync'd, then renamed over path, so that path holds the old
 * contents or the new, never a part.  0, or an errno value with the
 * temporary file removed and *what (may be NULL) naming the step that
 * failed ("create", "write", "fsync", "close" or "rename"). */
int util_write_file_atomic(const char *path, const void *data, size_t len, const char **what);

/* Makes dir and any missing parents (mode 0777 less the umask), like
 * `mkdir -p`.  0 when dir is a directory afterwards; otherwise an errno value
 * (ENOTDIR when dir or a parent exists and is not a directory). */
int util_mkdir_p(const char *dir);

/* Whether s holds nothing but white space (an empty string included): the
 * one rule for a text that says nothing, which no command or endpoint
 * takes as a query or a report. */
int util_blank(const char *s);

/* Bytes free to an unprivileged writer on the file system holding path
 * (statvfs f_bavail x f_frsize), or -1 when it cannot be asked. */
long long util_disk_free(const char *path);

/* Below this many free bytes a failed write is taken for a full disk:
 * LMDB reports a short write as EIO, not ENOSPC. */
#define UTIL_DISK_FULL_BYTES ((long long)64 << 20)

/* Seconds on the monotonic clock: for durations only. */
double util_now(void);

/* The message or name of an error code from a module's table (generated
 * from its X-macro map, n entries); dflt for a code outside it. */
const char *util_errtab(const char *const *tab, int n, int code, const char *dflt);

/* ---- zip archives in memory (zip.c) ------------------------------------------ */

/* Codes of util_zip_read (each module maps them to its own). */
enum { UTIL_ZIP_FORMAT = 1, UTIL_ZIP_UNSUPPORTED, UTIL_ZIP_TOOBIG, UTIL_ZIP_NOMEM };
typedef struct util_zip_entry {
    char *name;          /* as in the archive */
    unsigned char *data; /* inflated */
    size_t len;
} util_zip_entry;
/* Whether bytes begin with a zip local header (PK\3\4). */
int util_is_zip(const void *data, size_t len);
/* The file entries of a zip in memory (folders, __MACOSX/, hidden files and
 * DICOMDIR left out), stored or deflated, inflated: at most max_entries
 * entries and max_total bytes in all (checked from the central directory
 * before inflating), each entry's length and CRC-32 checked; ZIP64,
 * encryption and other methods refused.  0, or a UTIL_ZIP_ code with a
 * message naming `name` and the entry. */
int util_zip_read(const unsigned char *b, size_t n, const char *name, size_t max_total,
                  int max_entries, util_zip_entry **out, int *count, char *errbuf, size_t errlen);
void util_zip_free(util_zip_entry *e, int n);

/* ---- SHA-256 (sha256.c) ----------------------------------------------------- */

#define UTIL_SHA256_SIZE 32

/* SHA-256 of a buffer, and an incremental form. */
typedef struct util_sha256_ctx {
    uint32_t h[8];
    uint64_t len;
    uint8_t buf[64];
    size_t nbuf;
} util_sha256_ctx;
void util_sha256_init(util_sha256_ctx *c);
void util_sha256_update(util_sha256_ctx *c, const void *data, size_t len);
void util_sha256_final(util_sha256_ctx *c, uint8_t out[UTIL_SHA256_SIZE]);
void util_sha256(const void *data, size_t len, uint8_t out[UTIL_SHA256_SIZE]);
/* Whether blocks go through the x86-64 SHA extensions (chosen on first use
 * when the processor has them).  For tests: on 0 forces the portable code,
 * 1 the extensions where present, -1 the default; returns what is used. */
int util__sha256_accel(int on);
/* 64 lower-case hex characters plus NUL. */
void util_sha256_hex(const uint8_t hash[UTIL_SHA256_SIZE], char out[2 * UTIL_SHA256_SIZE + 1]);

/* ---- random streams ---------------------------------------------------------- */

/* splitmix64 (Steele, Lea and Flood): the seeding stream. */
static inline uint64_t util_splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline uint64_t util__rotl64(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

/* One step of xoshiro256** (Blackman and Vigna) over s[4]. */
static inline uint64_t util_xoshiro_next(uint64_t s[4])
{
    uint64_t out = util__rotl64(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = util__rotl64(s[3], 45);
    return out;
}

#endif
