/* npy.c - reading and writing NumPy .npy matrices, and the idx_errno tables.
 *
 * The .npy format (numpy/lib/format.py, NEP 1):
 *
 *   "\x93NUMPY" major minor  hlen  header ... '\n'  data
 *    6 bytes     1     1     u16 LE (1.0) or u32 LE (2.0, 3.0)
 *
 * header is a Python dict literal such as
 *   {'descr': '<f4', 'fortran_order': False, 'shape': (1000, 512), }
 * padded with spaces.  The file is untrusted input: every field is parsed by
 * hand with bounds checks, nothing is evaluated, and the data size must match
 * the shape exactly.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "indexer/indexer.h"

/* ---- error tables ---------------------------------------------------------- */

const char *idx_strerror(int code)
{
    switch (code) {
#define IDX__STRERROR(name, msg)                                                                  \
    case IDX_##name:                                                                              \
        return msg;
        IDX_ERRNO_MAP(IDX__STRERROR)
#undef IDX__STRERROR
    default:
        return "unknown error";
    }
}

const char *idx_errname(int code)
{
    switch (code) {
#define IDX__ERRNAME(name, msg)                                                                   \
    case IDX_##name:                                                                              \
        return "IDX_" #name;
        IDX_ERRNO_MAP(IDX__ERRNAME)
#undef IDX__ERRNAME
    default:
        return "IDX_UNKNOWN";
    }
}

/* ---- helpers ---------------------------------------------------------------- */

#if defined(__GNUC__)
#define NPY__PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define NPY__PRINTF(f, a)
#endif

/* Formats "PATH: reason" into errbuf (which may be NULL) and returns code. */
NPY__PRINTF(5, 6)
static int npy_fail(char *errbuf, size_t errlen, int code, const char *path, const char *fmt, ...)
{
    if (errbuf == NULL || errlen == 0)
        return code;
    int n = snprintf(errbuf, errlen, "%s: ", path);
    if (n < 0 || (size_t)n >= errlen)
        return code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errbuf + n, errlen - (size_t)n, fmt, ap);
    va_end(ap);
    return code;
}

static int errno_to_idx(int e)
{
    return e == ENOMEM ? IDX_NOMEM : IDX_IO;
}

static int host_is_little(void)
{
    const uint16_t one = 1;
    unsigned char b;
    memcpy(&b, &one, 1);
    return b == 1;
}

/* Copies up to cap-1 bytes of an untrusted string for an error message,
 * replacing anything unprintable with '?' so a hostile header cannot put
 * control characters on the user's terminal. */
static void npy_quote(char *dst, size_t cap, const char *s, size_t n)
{
    size_t j = 0;
    for (size_t i = 0; i < n && j + 1 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        dst[j++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    if (cap > 0)
        dst[j] = '\0';
}

/* ---- the header parser ------------------------------------------------------ */

#define NPY_MAX_DIMS 32
#define NPY_DESCR_MAX 32

typedef struct npy_header {
    char descr[NPY_DESCR_MAX]; /* NUL-terminated, at most NPY_DESCR_MAX-1 chars */
    int have_descr, have_fortran, have_shape;
    int fortran;
    int ndim;
    uint64_t shape[NPY_MAX_DIMS];
} npy_header;

typedef struct npy_lexer {
    const char *p, *end;
    const char *path;
    char *errbuf;
    size_t errlen;
} npy_lexer;

static void lex_ws(npy_lexer *lx)
{
    while (lx->p < lx->end &&
           (*lx->p == ' ' || *lx->p == '\t' || *lx->p == '\n' || *lx->p == '\r'))
        lx->p++;
}

/* The position of the lexer as an offset into the header, for messages. */
static long lex_off(const npy_lexer *lx, const char *start)
{
    return (long)(lx->p - start);
}

/* Parses a quoted Python string without escapes (none of the keys or dtypes
 * numpy writes need them).  Sets *s / *n to the contents. */
static int lex_string(npy_lexer *lx, const char **s, size_t *n)
{
    if (lx->p >= lx->end || (*lx->p != '\'' && *lx->p != '"'))
        return -1;
    char q = *lx->p++;
    const char *b = lx->p;
    while (lx->p < lx->end && *lx->p != q) {
        if (*lx->p == '\\' || *lx->p == '\n')
            return -1;
        lx->p++;
    }
    if (lx->p >= lx->end)
        return -1;
    *s = b;
    *n = (size_t)(lx->p - b);
    lx->p++;
    return 0;
}

static int lex_word(npy_lexer *lx, const char *w)
{
    size_t n = strlen(w);
    if ((size_t)(lx->end - lx->p) < n || memcmp(lx->p, w, n) != 0)
        return 0;
    const char *after = lx->p + n;
    if (after < lx->end &&
        ((*after >= 'a' && *after <= 'z') || (*after >= 'A' && *after <= 'Z') ||
         (*after >= '0' && *after <= '9') || *after == '_'))
        return 0;
    lx->p = after;
    return 1;
}

/* A non-negative decimal integer; Python 2 era files may carry an 'L'. */
static int lex_uint(npy_lexer *lx, uint64_t *v)
{
    if (lx->p >= lx->end || *lx->p < '0' || *lx->p > '9')
        return -1;
    uint64_t x = 0;
    while (lx->p < lx->end && *lx->p >= '0' && *lx->p <= '9') {
        unsigned d = (unsigned)(*lx->p - '0');
        if (x > (UINT64_MAX - d) / 10)
            return -2;
        x = x * 10 + d;
        lx->p++;
    }
    if (lx->p < lx->end && *lx->p == 'L')
        lx->p++;
    *v = x;
    return 0;
}

/* '(' [int (',' int)* [',']] ')' */
static int parse_shape(npy_lexer *lx, const char *start, npy_header *h)
{
    if (lx->p >= lx->end || *lx->p != '(')
        return npy_fail(lx->errbuf, lx->errlen, IDX_FORMAT, lx->path,
                        "header: 'shape' is not a tuple (at offset %ld)", lex_off(lx, start));
    lx->p++;
    h->ndim = 0;
    for (;;) {
        lex_ws(lx);
        if (lx->p < lx->end && *lx->p == ')') {
            lx->p++;
            break;
        }
        if (h->ndim == NPY_MAX_DIMS)
            return npy_fail(lx->errbuf, lx->errlen, IDX_FORMAT, lx->path,
                            "header: 'shape' has more than %d dimensions", NPY_MAX_DIMS);
        uint64_t v;
        int r = lex_uint(lx, &v);
        if (r == -2)
            return npy_fail(lx->errbuf, lx->errlen, IDX_FORMAT, lx->path,
                            "header: 'shape' dimension %d does not fit in 64 bits", h->ndim);
        if (r != 0)
            return npy_fail(lx->errbuf, lx->errlen, IDX_FORMAT, lx->path,
                            "header: 'shape' dimension %d is not a non-negative integer "
                            "(at offset %ld)",
                            h->ndim, lex_off(lx, start));
        h->shape[h->ndim++] = v;
        lex_ws(lx);
        if (lx->p < lx->end && *lx->p == ',') {
            lx->p++;
            continue;
        }
        if (lx->p < lx->end && *lx->p == ')') {
            lx->p++;
            break;
        }
        return npy_fail(lx->errbuf, lx->errlen, IDX_FORMAT, lx->path,
                        "header: malformed 'shape' tuple (at offset %ld)", lex_off(lx, start));
    }
    /* A 1-tuple needs its comma in Python, "(5)" is just 5; be lenient, the
     * meaning is unambiguous. */
    return IDX_OK;
}

static int parse_header(const char *hdr, size_t len, const char *path, npy_header *h,
                        char *errbuf, size_t errlen)
{
    npy_lexer lx = {hdr, hdr + len, path, errbuf, errlen};
    memset(h, 0, sizeof *h);

    lex_ws(&lx);
    if (lx.p >= lx.end || *lx.p != '{')
        return npy_fail(errbuf, errlen, IDX_FORMAT, path, "header is not a Python dict");
    lx.p++;
    for (;;) {
        lex_ws(&lx);
        if (lx.p < lx.end && *lx.p == '}') {
            lx.p++;
            break;
        }
        const char *key;
        size_t klen;
        if (lex_string(&lx, &key, &klen) != 0)
            return npy_fail(errbuf, errlen, IDX_FORMAT, path,
                            "header: expected a quoted key at offset %ld", lex_off(&lx, hdr));
        lex_ws(&lx);
        if (lx.p >= lx.end || *lx.p != ':')
            return npy_fail(errbuf, errlen, IDX_FORMAT, path,
                            "header: expected ':' at offset %ld", lex_off(&lx, hdr));
        lx.p++;
        lex_ws(&lx);

        if (klen == 5 && memcmp(key, "descr", 5) == 0) {
            if (h->have_descr++)
                return npy_fail(errbuf, errlen, IDX_FORMAT, path, "header: duplicate 'descr'");
            if (lx.p < lx.end && *lx.p == '[')
                return npy_fail(errbuf, errlen, IDX_FORMAT, path,
                                "structured dtype is not supported; the array must be "
                                "float32 or float16");
            const char *s;
            size_t n;
            if (lex_string(&lx, &s, &n) != 0)
                return npy_fail(errbuf, errlen, IDX_FORMAT, path,
                                "header: 'descr' is not a quoted string (at offset %ld)",
                                lex_off(&lx, hdr));
            npy_quote(h->descr, sizeof h->descr, s, n);
            if (n >= sizeof h->descr) /* too long to be a supported dtype */
                h->descr[sizeof h->descr - 2] = '~';
        } else if (klen == 13 && memcmp(key, "fortran_order", 13) == 0) {
            if (h->have_fortran++)
                return npy_fail(errbuf, errlen, IDX_FORMAT, path,
                                "header: duplicate 'fortran_order'");
            if (lex_word(&lx, "False"))
                h->fortran = 0;
            else if (lex_word(&lx, "True"))
                h->fortran = 1;
            else
                return npy_fail(errbuf, errlen, IDX_FORMAT, path,
                                "header: 'fortran_order' is neither True nor False");
        } else if (klen == 5 && memcmp(key, "shape", 5) == 0) {
            if (h->have_shape++)
                return npy_fail(errbuf, errlen, IDX_FORMAT, path, "header: duplicate 'shape'");
            int rc = parse_shape(&lx, hdr, h);
            if (rc != IDX_OK)
                return rc;
        } else {
            char k[40];
            npy_quote(k, sizeof k, key, klen);
            return npy_fail(errbuf, errlen, IDX_FORMAT, path, "header: unexpected key '%s'", k);
        }

        lex_ws(&lx);
        if (lx.p < lx.end && *lx.p == ',') {
            lx.p++;
            continue;
        }
        if (lx.p < lx.end && *lx.p == '}') {
            lx.p++;
            break;
        }
        return npy_fail(errbuf, errlen, IDX_FORMAT, path,
                        "header: expected ',' or '}' at offset %ld", lex_off(&lx, hdr));
    }
    lex_ws(&lx);
    if (lx.p != lx.end)
        return npy_fail(errbuf, errlen, IDX_FORMAT, path,
                        "header: unexpected bytes after the dict at offset %ld",
                        lex_off(&lx, hdr));
    if (!h->have_descr || !h->have_fortran || !h->have_shape)
        return npy_fail(errbuf, errlen, IDX_FORMAT, path, "header: missing key '%s'",
                        !h->have_descr ? "descr" : !h->have_fortran ? "fortran_order" : "shape");
    return IDX_OK;
}

/* ---- reading ---------------------------------------------------------------- */

struct idx_npy {
    void *map;                 /* the whole file */
    size_t maplen;
    const unsigned char *data; /* rows*cols*itemsize bytes inside map */
    size_t rows, cols;
    size_t itemsize;           /* 4 or 2 */
    int little;                /* data byte order */
};

/* Friendly names for the dtypes people most often save by mistake. */
static const char *descr_name(const char *d)
{
    static const struct {
        const char *code, *name;
    } t[] = {
        {"f8", "float64"}, {"f4", "float32"}, {"f2", "float16"}, {"f16", "float128"},
        {"i8", "int64"},   {"i4", "int32"},   {"i2", "int16"},   {"i1", "int8"},
        {"u8", "uint64"},  {"u4", "uint32"},  {"u2", "uint16"},  {"u1", "uint8"},
        {"b1", "bool"},    {"c8", "complex64"}, {"c16", "complex128"},
    };
    const char *c = d;
    if (*c == '<' || *c == '>' || *c == '=' || *c == '|')
        c++;
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (strcmp(c, t[i].code) == 0)
            return t[i].name;
    return NULL;
}

/* Checks the header against the mapped file and fills m's shape fields. */
static int npy_check(const unsigned char *base, size_t size, const char *path, idx_npy *m,
                     char *errbuf, size_t errlen)
{
    static const unsigned char magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
    if (size == 0)
        return npy_fail(errbuf, errlen, IDX_FORMAT, path, "empty file, not a .npy file");
    if (size < sizeof magic || memcmp(base, magic, sizeof magic) != 0)
        return npy_fail(errbuf, errlen, IDX_FORMAT, path,
                        "not a .npy file (no \\x93NUMPY magic at the start)");
    if (size < 8)
        return npy_fail(errbuf, errlen, IDX_FORMAT, path, "truncated: ends inside the preamble");
    unsigned major = base[6], minor = base[7];
    size_t prefix;
    uint64_t hlen64;
    if (major == 1 && minor == 0) {
        prefix = 10;
        if (size < prefix)
            return npy_fail(errbuf, errlen, IDX_FORMAT, path,
                            "truncated: ends inside the preamble");
        hlen64 = (uint64_t)base[8] | (uint64_t)base[9] << 8;
    } else if ((major == 2 || major == 3) && minor == 0) {
        prefix = 12;
        if (size < prefix)
            return npy_fail(errbuf, errlen, IDX_FORMAT, path,
                            "truncated: ends inside the preamble");
        hlen64 = (uint64_t)base[8] | (uint64_t)base[9] << 8 | (uint64_t)base[10] << 16 |
                 (uint64_t)base[11] << 24;
    } else {
        return npy_fail(errbuf, errlen, IDX_FORMAT, path,
                        ".npy format version %u.%u is not supported (1.0, 2.0 and 3.0 are)",
                        major, minor);
    }
    if (hlen64 > (uint64_t)(size - prefix))
        return npy_fail(errbuf, errlen, IDX_FORMAT, path,
                        "header length %llu runs past the end of the file (%zu bytes)",
                        (unsigned long long)hlen64, size);
    size_t hlen = (size_t)hlen64;

    npy_header h;
    int rc = parse_header((const char *)base + prefix, hlen, path, &h, errbuf, errlen);
    if (rc != IDX_OK)
        return rc;

    /* '<' and '>' are what numpy writes; '=' (native) is accepted and read
     * as this host's order.  '|' means "no byte order", which numpy only
     * uses for one-byte types, so '|f4' is not a real numpy descr. */
    const char *d = h.descr;
    int little;
    if (d[0] == '<')
        little = 1;
    else if (d[0] == '>')
        little = 0;
    else if (d[0] == '=')
        little = host_is_little();
    else
        little = -1;
    size_t itemsize = 0;
    if (little >= 0 && strcmp(d + 1, "f4") == 0)
        itemsize = 4;
    else if (little >= 0 && strcmp(d + 1, "f2") == 0)
        itemsize = 2;
    if (itemsize == 0) {
        const char *name = descr_name(d);
        return npy_fail(errbuf, errlen, IDX_FORMAT, path,
                        "dtype '%s'%s%s%s is not supported; the array must be float32 "
                        "('<f4' or '>f4') or float16 ('<f2' or '>f2')",
                        d, name ? " (" : "", name ? name : "", name ? ")" : "");
    }
    const char *tname = itemsize == 4 ? "float32" : "float16";

    if (h.fortran)
        return npy_fail(errbuf, errlen, IDX_FORMAT, path,
                        "fortran_order True is not supported; save with np.ascontiguousarray");

    uint64_t rows, cols;
    if (h.ndim == 2) {
        rows = h.shape[0];
        cols = h.shape[1];
    } else if (h.ndim == 1) {
        /* A single vector saved as shape (d,) is read as 1 row of d columns:
         * np.save(f, v) on one embedding is common and unambiguous. */
        rows = 1;
        cols = h.shape[0];
    } else {
        return npy_fail(errbuf, errlen, IDX_FORMAT, path,
                        "shape has %d dimensions; a 2-D (rows, cols) matrix is required",
                        h.ndim);
    }
    if (rows > 0 && cols == 0)
        return npy_fail(errbuf, errlen, IDX_FORMAT, path,
                        "shape (%llu, 0): rows of zero columns", (unsigned long long)rows);
    if (rows > SIZE_MAX || cols > SIZE_MAX || (cols != 0 && rows > SIZE_MAX / cols) ||
        (rows * cols > SIZE_MAX / itemsize))
        return npy_fail(errbuf, errlen, IDX_FORMAT, path,
                        "shape %llu x %llu %s is too large to address",
                        (unsigned long long)rows, (unsigned long long)cols, tname);
    size_t need = (size_t)rows * (size_t)cols * itemsize;
    size_t have = size - prefix - hlen;
    if (have < need)
        return npy_fail(errbuf, errlen, IDX_FORMAT, path,
                        "truncated: header says %llu x %llu %s (%zu bytes) but the file holds "
                        "%zu bytes of data",
                        (unsigned long long)rows, (unsigned long long)cols, tname, need, have);
    if (have > need)
        return npy_fail(errbuf, errlen, IDX_FORMAT, path,
                        "%zu unexpected bytes after the data: header says %llu x %llu %s "
                        "(%zu bytes) but the file holds %zu bytes of data",
                        have - need, (unsigned long long)rows, (unsigned long long)cols, tname,
                        need, have);

    m->data = base + prefix + hlen;
    m->rows = (size_t)rows;
    m->cols = (size_t)cols;
    m->itemsize = itemsize;
    m->little = little;
    return IDX_OK;
}

int idx_npy_open(const char *path, idx_npy **out, char *errbuf, size_t errlen)
{
    if (path == NULL || out == NULL)
        return npy_fail(errbuf, errlen, IDX_INVAL, path ? path : "(null)", "invalid argument");

    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return npy_fail(errbuf, errlen, errno_to_idx(e), path, "%s", strerror(e));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return npy_fail(errbuf, errlen, errno_to_idx(e), path, "%s", strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return npy_fail(errbuf, errlen, IDX_IO, path, "not a regular file");
    }
    if ((uintmax_t)st.st_size > SIZE_MAX) {
        close(fd);
        return npy_fail(errbuf, errlen, IDX_FORMAT, path, "file too large to map");
    }
    size_t size = (size_t)st.st_size;
    void *map = NULL;
    if (size > 0) {
        map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            int e = errno;
            close(fd);
            return npy_fail(errbuf, errlen, errno_to_idx(e), path, "mmap: %s", strerror(e));
        }
    }
    /* The mapping keeps the file.  Like any mmap reader, a process that
     * truncates the file while it is mapped makes later row reads fault;
     * imports read from files nobody else is writing. */
    close(fd);

    idx_npy *m = calloc(1, sizeof *m);
    if (m == NULL) {
        if (map)
            munmap(map, size);
        return npy_fail(errbuf, errlen, IDX_NOMEM, path, "out of memory");
    }
    int rc = npy_check(map, size, path, m, errbuf, errlen);
    if (rc != IDX_OK) {
        if (map)
            munmap(map, size);
        free(m);
        return rc;
    }
    m->map = map;
    m->maplen = size;
    *out = m;
    return IDX_OK;
}

void idx_npy_close(idx_npy *m)
{
    if (m == NULL)
        return;
    if (m->map)
        munmap(m->map, m->maplen);
    free(m);
}

size_t idx_npy_rows(const idx_npy *m)
{
    return m->rows;
}

size_t idx_npy_cols(const idx_npy *m)
{
    return m->cols;
}

const char *idx_npy_dtype(const idx_npy *m)
{
    return m->itemsize == 4 ? "float32" : "float16";
}

/* IEEE 754 binary16 -> binary32, exact (every half is a float).
 * Subnormal halves (exponent 0) are m * 2^-24 and become normal floats:
 * shift the mantissa up until its leading 1 reaches the implicit-bit
 * position, lowering the exponent once per shift.  Inf and NaN keep their
 * sign and (for NaN) payload, widened into the top mantissa bits. */
static float half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + (127 - 15)) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign; /* +-0 */
    } else {
        uint32_t e = 127 - 15 + 1;
        while ((man & 0x400u) == 0) {
            man <<= 1;
            e--;
        }
        bits = sign | (e << 23) | ((man & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

void idx_npy_row(const idx_npy *m, size_t i, float *out)
{
    assert(i < m->rows);
    const unsigned char *p = m->data + i * m->cols * m->itemsize;
    size_t n = m->cols;
    if (m->itemsize == 4) {
        if (m->little == host_is_little()) {
            memcpy(out, p, n * sizeof(float));
            return;
        }
        for (size_t j = 0; j < n; j++, p += 4) {
            uint32_t u = m->little ? ((uint32_t)p[0] | (uint32_t)p[1] << 8 |
                                      (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24)
                                   : ((uint32_t)p[3] | (uint32_t)p[2] << 8 |
                                      (uint32_t)p[1] << 16 | (uint32_t)p[0] << 24);
            memcpy(&out[j], &u, sizeof u);
        }
    } else {
        for (size_t j = 0; j < n; j++, p += 2) {
            uint16_t u = m->little ? (uint16_t)(p[0] | p[1] << 8) : (uint16_t)(p[1] | p[0] << 8);
            out[j] = half_to_float(u);
        }
    }
}

/* ---- writing ---------------------------------------------------------------- */

static int write_all(int fd, const void *buf, size_t n)
{
    const unsigned char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Version 1.0 header padded with spaces and ending in '\n' so that the data
 * start at a multiple of 64 bytes, as numpy >= 1.23 does: readers that mmap
 * the file then get aligned rows.  Returns the header length (preamble
 * included), or 0 when it would not fit in cap. */
static size_t npy_build_header(unsigned char *buf, size_t cap, size_t rows, size_t cols)
{
    char dict[128];
    int n = snprintf(dict, sizeof dict,
                     "{'descr': '<f4', 'fortran_order': False, 'shape': (%zu, %zu), }", rows,
                     cols);
    if (n < 0 || (size_t)n >= sizeof dict)
        return 0;
    size_t total = 10 + (size_t)n + 1; /* + '\n' */
    total = (total + 63) / 64 * 64;
    if (total > cap || total - 10 > 0xffff)
        return 0;
    size_t hlen = total - 10;
    memcpy(buf, "\x93NUMPY\x01\x00", 8);
    buf[8] = (unsigned char)(hlen & 0xff);
    buf[9] = (unsigned char)(hlen >> 8);
    memcpy(buf + 10, dict, (size_t)n);
    memset(buf + 10 + n, ' ', total - 10 - (size_t)n - 1);
    buf[total - 1] = '\n';
    return total;
}

int idx_npy_write(const char *path, const float *x, size_t rows, size_t cols, char *errbuf,
                  size_t errlen)
{
    if (path == NULL)
        return npy_fail(errbuf, errlen, IDX_INVAL, "(null)", "invalid argument");
    if ((cols != 0 && rows > SIZE_MAX / cols) || rows * cols > SIZE_MAX / sizeof(float))
        return npy_fail(errbuf, errlen, IDX_INVAL, path, "%zu x %zu floats is too large",
                        rows, cols);
    if (x == NULL && rows * cols != 0)
        return npy_fail(errbuf, errlen, IDX_INVAL, path, "no data");

    unsigned char hdr[256];
    size_t hsize = npy_build_header(hdr, sizeof hdr, rows, cols);
    if (hsize == 0)
        return npy_fail(errbuf, errlen, IDX_INVAL, path, "header does not fit");

    size_t plen = strlen(path);
    char *tmp = malloc(plen + sizeof ".tmp.XXXXXX");
    if (tmp == NULL)
        return npy_fail(errbuf, errlen, IDX_NOMEM, path, "out of memory");
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp.XXXXXX", sizeof ".tmp.XXXXXX");
    int fd = mkstemp(tmp);
    if (fd < 0) {
        int e = errno;
        free(tmp);
        return npy_fail(errbuf, errlen, errno_to_idx(e), path, "creating a temporary file: %s",
                        strerror(e));
    }
    /* mkstemp makes the file 0600; a data file is not a secret, so give it
     * the usual 0644 (reading the umask would mean changing it, which is
     * process-wide and racy). */
    (void)fchmod(fd, 0644);

    const char *what = "write";
    int ok = write_all(fd, hdr, hsize) == 0;

    /* Little-endian float32 whatever the host: convert in chunks. */
    unsigned char chunk[16384];
    size_t total = rows * cols, done = 0;
    int little = host_is_little();
    while (ok && done < total) {
        size_t n = total - done;
        if (n > sizeof chunk / 4)
            n = sizeof chunk / 4;
        if (little) {
            memcpy(chunk, x + done, n * 4);
        } else {
            for (size_t j = 0; j < n; j++) {
                uint32_t u;
                memcpy(&u, &x[done + j], 4);
                chunk[4 * j] = (unsigned char)u;
                chunk[4 * j + 1] = (unsigned char)(u >> 8);
                chunk[4 * j + 2] = (unsigned char)(u >> 16);
                chunk[4 * j + 3] = (unsigned char)(u >> 24);
            }
        }
        ok = write_all(fd, chunk, n * 4) == 0;
        done += n;
    }
    if (ok) {
        what = "fsync";
        ok = fsync(fd) == 0;
    }
    int e = ok ? 0 : errno;
    if (close(fd) != 0 && ok) {
        e = errno;
        what = "close";
        ok = 0;
    }
    if (ok && rename(tmp, path) != 0) {
        e = errno;
        what = "rename";
        ok = 0;
    }
    if (!ok) {
        unlink(tmp);
        free(tmp);
        return npy_fail(errbuf, errlen, errno_to_idx(e), path, "%s: %s", what, strerror(e));
    }
    free(tmp);

    /* Make the rename itself durable.  Some file systems refuse fsync on a
     * directory (EINVAL); the data is already safe there, so that is fine. */
    char *dir = strdup(path);
    if (dir == NULL)
        return npy_fail(errbuf, errlen, IDX_NOMEM, path, "out of memory");
    char *slash = strrchr(dir, '/');
    const char *dname = ".";
    if (slash == dir)
        dname = "/";
    else if (slash != NULL) {
        *slash = '\0';
        dname = dir;
    }
    int dfd = open(dname, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int rc = IDX_OK;
    if (dfd >= 0) {
        if (fsync(dfd) != 0 && errno != EINVAL && errno != EROFS) {
            e = errno;
            rc = npy_fail(errbuf, errlen, errno_to_idx(e), path, "fsync of directory: %s",
                          strerror(e));
        }
        close(dfd);
    }
    free(dir);
    return rc;
}
