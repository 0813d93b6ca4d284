/* testutil.h - small helpers shared by the cmocka tests (libc only).
 *
 *   char *dir = tu_mkdtemp();
 *   tu_rng r;  tu_rng_seed(&r, 42);
 *   tu_fill_normal(&r, x, n * d);  tu_normalize_rows(x, n, d);
 *   tu_topk_ip(x, n, d, q, nq, k, ids, scores);
 *   tu_rmtree(dir); free(dir);
 *
 * Everything is static inline so each test program takes only what it uses
 * without unused-function warnings.  nftw and mkdtemp need POSIX 2008 / XSI:
 * include config.h (which defines _GNU_SOURCE through
 * AC_USE_SYSTEM_EXTENSIONS) or build with -D_GNU_SOURCE before any system
 * header.  No global state: the generator is an explicit tu_rng.
 */
#ifndef MEDSEM_TESTUTIL_H
#define MEDSEM_TESTUTIL_H

#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---- temporary directories ------------------------------------------------ */

/* Creates a fresh directory /tmp/medsem-test-XXXXXX (honouring $TMPDIR).
 * Returns a malloc'd path (free() it), or NULL on failure. */
static inline char *tu_mkdtemp(void)
{
    const char *base = getenv("TMPDIR");
    if (base == NULL || *base == '\0')
        base = "/tmp";
    size_t n = strlen(base) + sizeof "/medsem-test-XXXXXX";
    char *p = malloc(n);
    if (p == NULL)
        return NULL;
    snprintf(p, n, "%s/medsem-test-XXXXXX", base);
    if (mkdtemp(p) == NULL) {
        free(p);
        return NULL;
    }
    return p;
}

static inline int tu__rm_entry(const char *path, const struct stat *sb, int type,
                               struct FTW *ftw)
{
    (void)sb;
    (void)type;
    (void)ftw;
    return remove(path) != 0 ? -1 : 0;
}

/* Removes path and everything below it, without following symlinks.
 * Returns 0, or -1 with errno set.  A missing path is not an error. */
static inline int tu_rmtree(const char *path)
{
    if (path == NULL)
        return 0;
    int rc = nftw(path, tu__rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    if (rc != 0 && errno == ENOENT)
        return 0;
    return rc == 0 ? 0 : -1;
}

/* Joins dir and name into a malloc'd path. */
static inline char *tu_path(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p != NULL)
        snprintf(p, n, "%s/%s", dir, name);
    return p;
}

/* ---- deterministic random numbers ------------------------------------------ */

/* splitmix64 (Steele, Lea, Flood 2014): one 64-bit state, good enough for
 * test data, and the same sequence on every platform. */
typedef struct tu_rng {
    uint64_t s;
    int have_spare; /* Box-Muller makes normals in pairs */
    double spare;
} tu_rng;

static inline void tu_rng_seed(tu_rng *r, uint64_t seed)
{
    r->s = seed;
    r->have_spare = 0;
    r->spare = 0;
}

static inline uint64_t tu_rng_u64(tu_rng *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1), 53 random bits. */
static inline double tu_rng_uniform(tu_rng *r)
{
    return (double)(tu_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0);
}

/* Uniform integer in [0, n); n > 0.  The modulo bias is irrelevant here. */
static inline uint64_t tu_rng_below(tu_rng *r, uint64_t n)
{
    return tu_rng_u64(r) % n;
}

/* Standard normal (Box-Muller). */
static inline double tu_rng_normal(tu_rng *r)
{
    if (r->have_spare) {
        r->have_spare = 0;
        return r->spare;
    }
    double u1 = 1.0 - tu_rng_uniform(r); /* (0, 1]: log is finite */
    double u2 = tu_rng_uniform(r);
    double rad = sqrt(-2.0 * log(u1));
    double th = 6.283185307179586 * u2;
    r->spare = rad * sin(th);
    r->have_spare = 1;
    return rad * cos(th);
}

/* n uniform floats in [-1, 1). */
static inline void tu_fill_uniform(tu_rng *r, float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(2.0 * tu_rng_uniform(r) - 1.0);
}

/* n standard normal floats; normalised rows of these are uniform on the
 * sphere. */
static inline void tu_fill_normal(tu_rng *r, float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = (float)tu_rng_normal(r);
}

/* Scales each of the n rows of x (d floats each) to unit L2 norm; rows of
 * zero norm are left as they are. */
static inline void tu_normalize_rows(float *x, size_t n, size_t d)
{
    for (size_t i = 0; i < n; i++) {
        float *v = x + i * d;
        double ss = 0;
        for (size_t j = 0; j < d; j++)
            ss += (double)v[j] * v[j];
        if (ss > 0) {
            double inv = 1.0 / sqrt(ss);
            for (size_t j = 0; j < d; j++)
                v[j] = (float)(v[j] * inv);
        }
    }
}

/* ---- reference search ------------------------------------------------------- */

/* Inner product of two d-vectors, accumulated in double. */
static inline float tu_dot(const float *a, const float *b, size_t d)
{
    double s = 0;
    for (size_t j = 0; j < d; j++)
        s += (double)a[j] * b[j];
    return (float)s;
}

/* Exact inner-product top-k of nq queries (d floats each) over n base
 * vectors: ids and scores hold nq*k, row-major, sorted by score descending
 * with ties going to the lower id.  Like idx_space_search, slots beyond n
 * get id -1 and score -INFINITY.  O(n k) per query: for tests only. */
static inline void tu_topk_ip(const float *base, size_t n, size_t d, const float *q, size_t nq,
                              size_t k, int64_t *ids, float *scores)
{
    for (size_t qi = 0; qi < nq; qi++) {
        int64_t *I = ids + qi * k;
        float *S = scores + qi * k;
        size_t have = 0;
        for (size_t i = 0; i < n; i++) {
            float s = tu_dot(base + i * d, q + qi * d, d);
            /* Ids arrive in ascending order, so an equal score never moves
             * ahead of an earlier one: ties keep the lower id. */
            size_t pos = have;
            while (pos > 0 && s > S[pos - 1])
                pos--;
            if (pos >= k)
                continue;
            size_t last = have < k ? have : k - 1;
            for (size_t j = last; j > pos; j--) {
                S[j] = S[j - 1];
                I[j] = I[j - 1];
            }
            S[pos] = s;
            I[pos] = (int64_t)i;
            if (have < k)
                have++;
        }
        for (size_t j = have; j < k; j++) {
            S[j] = -INFINITY;
            I[j] = -1;
        }
    }
}


/* tests/fixtures/<sub>/<name>: under $top_srcdir when make check sets it,
 * else relative to the test's source file srcfile (pass __FILE__: builds
 * in the source tree find their fixtures without make).  malloc'd. */
static inline char *tu_fixture_at(const char *srcfile, const char *sub, const char *name)
{
    const char *top = getenv("top_srcdir");
    char rel[512], *dir;
    if (top != NULL && *top != '\0') {
        snprintf(rel, sizeof rel, "tests/fixtures/%s", sub);
        dir = tu_path(top, rel);
    } else {
        const char *slash = strrchr(srcfile, '/');
        size_t n = slash ? (size_t)(slash - srcfile) : 1;
        char here[4096];
        if (n >= sizeof here)
            n = sizeof here - 1;
        memcpy(here, slash ? srcfile : ".", n);
        here[n] = '\0';
        snprintf(rel, sizeof rel, "../fixtures/%s", sub);
        dir = tu_path(here, rel);
    }
    if (dir == NULL)
        return NULL;
    char *p = tu_path(dir, name);
    free(dir);
    return p;
}
#define tu_fixture(sub, name) tu_fixture_at(__FILE__, (sub), (name))

#endif
