/* test_npy.c - the .npy reader and writer, and the idx_errno tables.
 *
 * Files are built byte by byte here (all three format versions, both byte
 * orders, float16 edge values, and every malformed case the reader must
 * reject), plus a few fixtures written by numpy itself
 * (tests/fixtures/make_npy_fixtures.py), so the test needs no Python.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "indexer/indexer.h"
#include "testutil.h"

/* ---- helpers ------------------------------------------------------------------ */

typedef struct tbuf {
    unsigned char *p;
    size_t n, cap;
} tbuf;

static void tb_put(tbuf *b, const void *src, size_t n)
{
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        assert_non_null(b->p);
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->n, src, n);
    b->n += n;
}

static void tb_byte(tbuf *b, unsigned c)
{
    unsigned char x = (unsigned char)c;
    tb_put(b, &x, 1);
}

static void tb_f32(tbuf *b, float f, int big)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    for (int i = 0; i < 4; i++)
        tb_byte(b, (unsigned)(u >> (big ? 24 - 8 * i : 8 * i)) & 0xff);
}

static void tb_u16(tbuf *b, uint16_t u, int big)
{
    tb_byte(b, big ? u >> 8 : u & 0xff);
    tb_byte(b, big ? u & 0xff : u >> 8);
}

/* Preamble and header for format major.0: dict (dlen bytes), then spaces
 * and '\n' up to a 64-byte boundary when pad (as numpy does), else just
 * '\n'. */
static void tb_header(tbuf *b, unsigned major, const char *dict, size_t dlen, int pad)
{
    size_t prefix = major == 1 ? 10 : 12;
    size_t total = prefix + dlen + 1;
    if (pad)
        total = (total + 63) / 64 * 64;
    size_t hlen = total - prefix;
    tb_put(b, "\x93NUMPY", 6);
    tb_byte(b, major);
    tb_byte(b, 0);
    tb_byte(b, hlen & 0xff);
    tb_byte(b, (hlen >> 8) & 0xff);
    if (major != 1) {
        tb_byte(b, (hlen >> 16) & 0xff);
        tb_byte(b, (hlen >> 24) & 0xff);
    }
    tb_put(b, dict, dlen);
    for (size_t i = prefix + dlen; i + 1 < total; i++)
        tb_byte(b, ' ');
    tb_byte(b, '\n');
}

static void write_file(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (n)
        assert_int_equal(fwrite(p, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

static unsigned char *read_file(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    tbuf b = {0};
    unsigned char chunk[4096];
    size_t r;
    while ((r = fread(chunk, 1, sizeof chunk, f)) > 0)
        tb_put(&b, chunk, r);
    fclose(f);
    *n = b.n;
    return b.p;
}

static int same_bits(float a, float b)
{
    return memcmp(&a, &b, sizeof a) == 0;
}

/* Opening path must fail with code, leave *out alone, and say
 * "PATH: ...want..." in the message. */
static void expect_error(const char *label, const char *path, int code, const char *want)
{
    idx_npy *m = (idx_npy *)&m; /* sentinel: must stay untouched */
    idx_npy *sentinel = m;
    char err[512];
    err[0] = '\0';
    int rc = idx_npy_open(path, &m, err, sizeof err);
    if (rc != code)
        fail_msg("%s: expected %s, got %s (%s)", label, idx_errname(code), idx_errname(rc), err);
    if (m != sentinel)
        fail_msg("%s: *out was written on failure", label);
    size_t plen = strlen(path);
    if (strncmp(err, path, plen) != 0 || strncmp(err + plen, ": ", 2) != 0)
        fail_msg("%s: message does not start with the path: \"%s\"", label, err);
    if (want != NULL && strstr(err, want) == NULL)
        fail_msg("%s: message \"%s\" lacks \"%s\"", label, err, want);
    /* Also without an error buffer: same code, no crash. */
    m = sentinel;
    assert_int_equal(idx_npy_open(path, &m, NULL, 0), code);
    assert_ptr_equal(m, sentinel);
}

static int setup_dir(void **state)
{
    char *dir = tu_mkdtemp();
    if (dir == NULL)
        return -1;
    *state = dir;
    return 0;
}

static int teardown_dir(void **state)
{
    char *dir = *state;
    int rc = tu_rmtree(dir);
    free(dir);
    return rc;
}

/* ---- error tables ------------------------------------------------------------- */

static void test_errno_tables(void **state)
{
    (void)state;
    static const char *const names[] = {
#define NAME(name, msg) "IDX_" #name,
        IDX_ERRNO_MAP(NAME)
#undef NAME
    };
    assert_int_equal(sizeof names / sizeof names[0], IDX_NERR);
    assert_int_equal(IDX_OK, 0);
    for (int c = 0; c < IDX_NERR; c++) {
        const char *n = idx_errname(c), *s = idx_strerror(c);
        assert_non_null(n);
        assert_non_null(s);
        assert_string_equal(n, names[c]);
        assert_string_not_equal(n, "IDX_UNKNOWN");
        assert_string_not_equal(s, "unknown error");
        assert_true(strlen(s) > 0);
        for (int d = 0; d < c; d++)
            assert_string_not_equal(s, idx_strerror(d));
    }
    assert_string_equal(idx_errname(IDX_NERR), "IDX_UNKNOWN");
    assert_string_equal(idx_errname(-1), "IDX_UNKNOWN");
    assert_string_equal(idx_strerror(IDX_NERR), "unknown error");
    assert_string_equal(idx_strerror(-1), "unknown error");
    assert_string_equal(idx_strerror(IDX_FORMAT), "malformed input file");
}

/* ---- writing ------------------------------------------------------------------- */

static void test_roundtrip(void **state)
{
    const char *dir = *state;
    const size_t rows = 37, cols = 129;
    float *x = malloc(rows * cols * sizeof *x), *row = malloc(cols * sizeof *row);
    assert_non_null(x);
    assert_non_null(row);
    tu_rng r;
    tu_rng_seed(&r, 7);
    tu_fill_normal(&r, x, rows * cols);
    x[5] = -0.0f;
    x[6] = INFINITY;
    x[7] = 1e-40f; /* float32 subnormal */

    char *path = tu_path(dir, "rt.npy");
    char err[256];
    /* Twice: the second write replaces the first. */
    assert_int_equal(idx_npy_write(path, x, 3, 3, err, sizeof err), IDX_OK);
    assert_int_equal(idx_npy_write(path, x, rows, cols, err, sizeof err), IDX_OK);

    idx_npy *m = NULL;
    assert_int_equal(idx_npy_open(path, &m, err, sizeof err), IDX_OK);
    assert_int_equal(idx_npy_rows(m), rows);
    assert_int_equal(idx_npy_cols(m), cols);
    assert_string_equal(idx_npy_dtype(m), "float32");
    for (size_t i = 0; i < rows; i++) {
        idx_npy_row(m, i, row);
        assert_memory_equal(row, x + i * cols, cols * sizeof *row);
    }
    idx_npy_close(m);

    /* The layout numpy writes: version 1.0, data 64-byte aligned, header
     * ending in '\n', little-endian float32. */
    size_t n;
    unsigned char *f = read_file(path, &n);
    assert_memory_equal(f, "\x93NUMPY\x01\x00", 8);
    size_t hlen = (size_t)f[8] | (size_t)f[9] << 8;
    assert_int_equal((10 + hlen) % 64, 0);
    assert_int_equal(f[10 + hlen - 1], '\n');
    assert_int_equal(n, 10 + hlen + rows * cols * 4);
    assert_non_null(strstr((const char *)f + 10, "'descr': '<f4'"));
    assert_non_null(strstr((const char *)f + 10, "'shape': (37, 129)"));
    uint32_t u = (uint32_t)f[10 + hlen] | (uint32_t)f[11 + hlen] << 8 |
                 (uint32_t)f[12 + hlen] << 16 | (uint32_t)f[13 + hlen] << 24;
    float first;
    memcpy(&first, &u, 4);
    assert_true(same_bits(first, x[0]));
    free(f);

    /* No temporary file left behind. */
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strstr(e->d_name, ".tmp.") != NULL)
            fail_msg("temporary file left: %s", e->d_name);
    closedir(d);

    free(path);
    free(x);
    free(row);
}

static void test_write_empty(void **state)
{
    const char *dir = *state;
    char *path = tu_path(dir, "empty.npy");
    char err[256];
    assert_int_equal(idx_npy_write(path, NULL, 0, 16, err, sizeof err), IDX_OK);
    idx_npy *m = NULL;
    assert_int_equal(idx_npy_open(path, &m, err, sizeof err), IDX_OK);
    assert_int_equal(idx_npy_rows(m), 0);
    assert_int_equal(idx_npy_cols(m), 16);
    idx_npy_close(m);
    free(path);
}

static void test_write_errors(void **state)
{
    const char *dir = *state;
    char *path = tu_path(dir, "no/such/dir/x.npy");
    float x[4] = {1, 2, 3, 4};
    char err[512];
    assert_int_equal(idx_npy_write(path, x, 2, 2, err, sizeof err), IDX_IO);
    assert_non_null(strstr(err, path));
    assert_non_null(strstr(err, strerror(ENOENT)));
    assert_int_equal(idx_npy_write(path, x, 2, 2, NULL, 0), IDX_IO);
    assert_int_equal(idx_npy_write(path, x, SIZE_MAX / 2, 3, err, sizeof err), IDX_INVAL);
    free(path);
    idx_npy_close(NULL);
}

/* ---- reading hand-made files ------------------------------------------------------ */

static const float k6[6] = {1.0f, -2.5f, 0.125f, 3e-3f, -7.0f, 65536.0f};

static void check_k6(const char *label, const char *path, size_t rows, size_t cols)
{
    char err[512];
    idx_npy *m = NULL;
    int rc = idx_npy_open(path, &m, err, sizeof err);
    if (rc != IDX_OK)
        fail_msg("%s: %s", label, err);
    assert_int_equal(idx_npy_rows(m), rows);
    assert_int_equal(idx_npy_cols(m), cols);
    assert_string_equal(idx_npy_dtype(m), "float32");
    float row[6];
    for (size_t i = 0; i < rows; i++) {
        idx_npy_row(m, i, row);
        for (size_t j = 0; j < cols; j++)
            if (!same_bits(row[j], k6[i * cols + j]))
                fail_msg("%s: [%zu][%zu] = %g, want %g", label, i, j, row[j],
                         k6[i * cols + j]);
    }
    idx_npy_close(m);
}

static void test_versions_and_dicts(void **state)
{
    const char *dir = *state;
    static const char *const dicts[] = {
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
        "{'shape':(2,3),'fortran_order':False,'descr':'<f4'}",
        "{ \"descr\" : \"<f4\" ,\n  'fortran_order' :\tFalse , 'shape' : ( 2 , 3 , ) , }",
        "{'fortran_order': False, 'descr': '<f4', 'shape': (2L, 3L)}",
        "  {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }  \r",
    };
    char *path = tu_path(dir, "v.npy");
    char label[64];
    for (unsigned major = 1; major <= 3; major++) {
        for (size_t k = 0; k < sizeof dicts / sizeof dicts[0]; k++) {
            for (int pad = 0; pad <= 1; pad++) {
                tbuf b = {0};
                tb_header(&b, major, dicts[k], strlen(dicts[k]), pad);
                for (int i = 0; i < 6; i++)
                    tb_f32(&b, k6[i], 0);
                write_file(path, b.p, b.n);
                free(b.p);
                snprintf(label, sizeof label, "v%u.0 dict %zu pad %d", major, k, pad);
                check_k6(label, path, 2, 3);
            }
        }
    }

    /* '=' means the writer's native order; we read it as ours. */
    {
        const char *d = "{'descr': '=f4', 'fortran_order': False, 'shape': (3, 2), }";
        tbuf b = {0};
        tb_header(&b, 1, d, strlen(d), 1);
        uint16_t one = 1;
        unsigned char c;
        memcpy(&c, &one, 1);
        for (int i = 0; i < 6; i++)
            tb_f32(&b, k6[i], c != 1);
        write_file(path, b.p, b.n);
        free(b.p);
        check_k6("native order", path, 3, 2);
    }
    free(path);
}

static void test_big_endian_f32(void **state)
{
    const char *dir = *state;
    const char *d = "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }";
    tbuf b = {0};
    tb_header(&b, 1, d, strlen(d), 1);
    for (int i = 0; i < 6; i++)
        tb_f32(&b, k6[i], 1);
    char *path = tu_path(dir, "be.npy");
    write_file(path, b.p, b.n);
    free(b.p);
    check_k6("big-endian f4", path, 2, 3);
    free(path);
}

static void test_1d_and_zero_rows(void **state)
{
    const char *dir = *state;
    char *path = tu_path(dir, "s.npy");
    {
        const char *d = "{'descr': '<f4', 'fortran_order': False, 'shape': (6,), }";
        tbuf b = {0};
        tb_header(&b, 1, d, strlen(d), 1);
        for (int i = 0; i < 6; i++)
            tb_f32(&b, k6[i], 0);
        write_file(path, b.p, b.n);
        free(b.p);
        check_k6("1-D shape", path, 1, 6);
    }
    {
        const char *d = "{'descr': '<f2', 'fortran_order': False, 'shape': (0, 512), }";
        tbuf b = {0};
        tb_header(&b, 2, d, strlen(d), 1);
        write_file(path, b.p, b.n);
        free(b.p);
        idx_npy *m = NULL;
        char err[256];
        assert_int_equal(idx_npy_open(path, &m, err, sizeof err), IDX_OK);
        assert_int_equal(idx_npy_rows(m), 0);
        assert_int_equal(idx_npy_cols(m), 512);
        assert_string_equal(idx_npy_dtype(m), "float16");
        idx_npy_close(m);
    }
    free(path);
}

/* Half-precision bit patterns and the float32 each must become. */
static const struct {
    uint16_t h;
    float f;
} k_half[] = {
    {0x0000, 0.0f},
    {0x8000, -0.0f},
    {0x3c00, 1.0f},
    {0xc000, -2.0f},
    {0x3555, 0.333251953125f},
    {0x0001, 5.9604644775390625e-08f},  /* 2^-24, smallest subnormal */
    {0x8001, -5.9604644775390625e-08f},
    {0x0200, 3.0517578125e-05f},        /* 2^-15, a subnormal */
    {0x03ff, 6.097555160522461e-05f},   /* 1023 * 2^-24, largest subnormal */
    {0x0400, 6.103515625e-05f},         /* 2^-14, smallest normal */
    {0x7bff, 65504.0f},
    {0xfbff, -65504.0f},
    {0x7c00, INFINITY},
    {0xfc00, -INFINITY},
};

static void check_half(const char *label, const char *path)
{
    size_t n = sizeof k_half / sizeof k_half[0];
    char err[256];
    idx_npy *m = NULL;
    if (idx_npy_open(path, &m, err, sizeof err) != IDX_OK)
        fail_msg("%s: %s", label, err);
    assert_string_equal(idx_npy_dtype(m), "float16");
    assert_int_equal(idx_npy_rows(m), 2);
    assert_int_equal(idx_npy_cols(m), n + 2);
    float *row = malloc((n + 2) * sizeof *row);
    assert_non_null(row);
    for (size_t r = 0; r < 2; r++) {
        idx_npy_row(m, r, row);
        for (size_t i = 0; i < n; i++)
            if (!same_bits(row[i], k_half[i].f))
                fail_msg("%s: half 0x%04x -> %.10g, want %.10g", label, k_half[i].h, row[i],
                         k_half[i].f);
        /* NaNs: any NaN will do, with the sign kept. */
        assert_true(isnan(row[n]) && !signbit(row[n]));
        assert_true(isnan(row[n + 1]) && signbit(row[n + 1]));
    }
    assert_true(signbit(row[1]) && row[1] == 0.0f);
    free(row);
    idx_npy_close(m);
}

static void test_float16(void **state)
{
    const char *dir = *state;
    size_t n = sizeof k_half / sizeof k_half[0];
    char *path = tu_path(dir, "h.npy");
    for (int big = 0; big <= 1; big++) {
        char d[128];
        snprintf(d, sizeof d, "{'descr': '%cf2', 'fortran_order': False, 'shape': (2, %zu), }",
                 big ? '>' : '<', n + 2);
        tbuf b = {0};
        tb_header(&b, 1, d, strlen(d), 1);
        for (int r = 0; r < 2; r++) {
            for (size_t i = 0; i < n; i++)
                tb_u16(&b, k_half[i].h, big);
            tb_u16(&b, 0x7e00, big); /* quiet NaN */
            tb_u16(&b, 0xfc01, big); /* negative signalling NaN */
        }
        write_file(path, b.p, b.n);
        free(b.p);
        check_half(big ? "big-endian f2" : "little-endian f2", path);
    }

    /* Every finite half converts to a float that converts back exactly:
     * checked against the definition value = m * 2^(e-25) . */
    const char *d = "{'descr': '<f2', 'fortran_order': False, 'shape': (1, 65536), }";
    tbuf b = {0};
    tb_header(&b, 1, d, strlen(d), 1);
    for (uint32_t h = 0; h < 65536; h++)
        tb_u16(&b, (uint16_t)h, 0);
    write_file(path, b.p, b.n);
    free(b.p);
    idx_npy *m = NULL;
    assert_int_equal(idx_npy_open(path, &m, NULL, 0), IDX_OK);
    float *all = malloc(65536 * sizeof *all);
    assert_non_null(all);
    idx_npy_row(m, 0, all);
    for (uint32_t h = 0; h < 65536; h++) {
        unsigned e = (h >> 10) & 0x1f, man = h & 0x3ff;
        double want;
        if (e == 31) {
            if (man == 0)
                assert_true(isinf(all[h]));
            else
                assert_true(isnan(all[h]));
            assert_int_equal(!!signbit(all[h]), !!(h & 0x8000));
            continue;
        }
        if (e == 0)
            want = ldexp((double)man, -24);
        else
            want = ldexp((double)(man | 0x400), (int)e - 25);
        if (h & 0x8000)
            want = -want;
        if ((double)all[h] != want || !!signbit(all[h]) != !!(h & 0x8000))
            fail_msg("half 0x%04x -> %.10g, want %.10g", h, all[h], want);
    }
    free(all);
    idx_npy_close(m);
    free(path);
}

/* ---- malformed files ---------------------------------------------------------------- */

typedef struct bad_case {
    const char *label;
    unsigned major;
    const char *dict;
    long ndata; /* bytes of data after the header */
    const char *want;
} bad_case;

#define D(descr, fo, shape)                                                                   \
    "{'descr': '" descr "', 'fortran_order': " fo ", 'shape': " shape ", }"

static const bad_case k_bad[] = {
    {"truncated data", 1, D("<f4", "False", "(1000, 512)"), 1234,
     "truncated: header says 1000 x 512 float32 (2048000 bytes) but the file holds 1234 bytes "
     "of data"},
    {"no data", 1, D("<f2", "False", "(3, 4)"), 0,
     "truncated: header says 3 x 4 float16 (24 bytes) but the file holds 0 bytes of data"},
    {"one byte short", 3, D("<f4", "False", "(2, 2)"), 15, "truncated"},
    {"extra bytes", 1, D("<f4", "False", "(2, 2)"), 17, "1 unexpected bytes after the data"},
    {"float64", 1, D("<f8", "False", "(2, 2)"), 32, "dtype '<f8' (float64) is not supported"},
    {"int32", 2, D("<i4", "False", "(2, 2)"), 16, "dtype '<i4' (int32) is not supported"},
    {"uint8", 1, D("|u1", "False", "(2, 2)"), 4, "(uint8)"},
    {"float64 says what works", 1, D(">f8", "False", "(2, 2)"), 32, "float32"},
    {"float64 names float16", 1, D(">f8", "False", "(2, 2)"), 32, "float16"},
    {"pipe f4", 1, D("|f4", "False", "(2, 2)"), 16, "dtype '|f4' (float32) is not supported"},
    {"no byte order", 1, D("f4", "False", "(2, 2)"), 16, "dtype 'f4'"},
    {"descr with space", 1, D("<f4 ", "False", "(2, 2)"), 16, "is not supported"},
    {"empty descr", 1, D("", "False", "(2, 2)"), 16, "dtype ''"},
    {"long descr", 1,
     "{'descr': '<f4xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx', "
     "'fortran_order': False, 'shape': (2, 2), }",
     16, "is not supported"},
    {"structured dtype", 1,
     "{'descr': [('a', '<f4'), ('b', '<f4')], 'fortran_order': False, 'shape': (2,), }", 16,
     "structured dtype"},
    {"descr not a string", 1, D("\" + \"", "False", "(2, 2)"), 16, NULL},
    {"descr a number", 1, "{'descr': 5, 'fortran_order': False, 'shape': (2, 2), }", 16,
     "'descr' is not a quoted string"},
    {"fortran order", 1, D("<f4", "True", "(2, 2)"), 16,
     "fortran_order True is not supported; save with np.ascontiguousarray"},
    {"fortran order junk", 1, D("<f4", "0", "(2, 2)"), 16, "neither True nor False"},
    {"fortran order Falsehood", 1, D("<f4", "Falsehood", "(2, 2)"), 16,
     "neither True nor False"},
    {"3-D", 1, D("<f4", "False", "(2, 3, 4)"), 96, "shape has 3 dimensions"},
    {"0-D", 1, D("<f4", "False", "()"), 4, "shape has 0 dimensions"},
    {"too many dims", 1,
     D("<f4", "False",
       "(1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1)"),
     4, "more than 32 dimensions"},
    {"negative dim", 1, D("<f4", "False", "(5, -3)"), 0, "not a non-negative integer"},
    {"letters", 1, D("<f4", "False", "(a, b)"), 0, "not a non-negative integer"},
    {"float dim", 1, D("<f4", "False", "(2.0, 2)"), 16, "malformed 'shape'"},
    {"shape list", 1, D("<f4", "False", "[2, 2]"), 16, "'shape' is not a tuple"},
    {"shape unclosed", 1, D("<f4", "False", "(2, 2"), 16, NULL},
    {"shape double comma", 1, D("<f4", "False", "(2,, 2)"), 16, "not a non-negative integer"},
    {"huge shape", 1, D("<f4", "False", "(4611686018427387904, 4611686018427387904)"), 16,
     "too large"},
    {"huge rows", 2, D("<f2", "False", "(18446744073709551615, 2)"), 16, "too large"},
    {"size wraps to 16", 1, D("<f4", "False", "(2, 4611686018427387906)"), 16, "too large"},
    {"dim beyond 64 bits", 1, D("<f4", "False", "(99999999999999999999, 1)"), 16,
     "does not fit in 64 bits"},
    {"zero columns", 1, D("<f4", "False", "(4, 0)"), 0, "zero columns"},
    {"1-D empty", 1, D("<f4", "False", "(0,)"), 0, "zero columns"},
    {"missing shape", 1, "{'descr': '<f4', 'fortran_order': False, }", 0,
     "missing key 'shape'"},
    {"missing descr", 1, "{'fortran_order': False, 'shape': (1, 1)}", 4, "missing key 'descr'"},
    {"missing fortran", 1, "{'descr': '<f4', 'shape': (1, 1)}", 4,
     "missing key 'fortran_order'"},
    {"duplicate key", 1,
     "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (1, 1)}", 4,
     "duplicate 'descr'"},
    {"unknown key", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1), 'x': 1}", 4,
     "unexpected key 'x'"},
    {"hostile key", 1,
     "{'\x1b[31mred': 1, 'descr': '<f4', 'fortran_order': False, 'shape': (1, 1)}", 4,
     "unexpected key '?[31mred'"},
    {"not a dict", 1, "['descr', '<f4']", 4, "header is not a Python dict"},
    {"empty header", 1, "", 0, "header is not a Python dict"},
    {"empty dict", 1, "{}", 0, "missing key"},
    {"unterminated key", 1, "{'descr: '<f4'}", 0, NULL},
    {"unterminated dict", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1)", 4,
     "expected ',' or '}'"},
    {"missing colon", 1, "{'descr' '<f4', 'fortran_order': False, 'shape': (1, 1)}", 4,
     "expected ':'"},
    {"missing comma", 1, "{'descr': '<f4' 'fortran_order': False, 'shape': (1, 1)}", 4,
     "expected ',' or '}'"},
    {"bare key", 1, "{descr: '<f4', 'fortran_order': False, 'shape': (1, 1)}", 4,
     "expected a quoted key"},
    {"escaped string", 1, "{'des\\cr': '<f4', 'fortran_order': False, 'shape': (1, 1)}", 4,
     NULL},
    {"junk after dict", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1)} x", 4,
     "unexpected bytes after the dict"},
    {"two dicts", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1)}{}", 4,
     "unexpected bytes after the dict"},
};

static void test_malformed(void **state)
{
    const char *dir = *state;
    char *path = tu_path(dir, "bad.npy");
    for (size_t k = 0; k < sizeof k_bad / sizeof k_bad[0]; k++) {
        const bad_case *c = &k_bad[k];
        tbuf b = {0};
        tb_header(&b, c->major, c->dict, strlen(c->dict), 1);
        for (long i = 0; i < c->ndata; i++)
            tb_byte(&b, (unsigned)(i * 37) & 0xff);
        write_file(path, b.p, b.n);
        free(b.p);
        expect_error(c->label, path, IDX_FORMAT, c->want);
    }
    free(path);
}

/* Files broken below the header: magic, version, header length, size. */
static void test_malformed_raw(void **state)
{
    const char *dir = *state;
    char *path = tu_path(dir, "raw.npy");
    char err[512];

    write_file(path, "", 0);
    expect_error("empty file", path, IDX_FORMAT, "empty file");

    write_file(path, "hello, world\n", 13);
    expect_error("text file", path, IDX_FORMAT, "not a .npy file");

    write_file(path, "\x93NUM", 4);
    expect_error("short magic", path, IDX_FORMAT, "not a .npy file");

    write_file(path, "\x93NUMPY\x01", 7);
    expect_error("no minor version", path, IDX_FORMAT, "truncated");

    write_file(path, "\x93NUMPY\x01\x00\x10", 9);
    expect_error("half a header length", path, IDX_FORMAT, "truncated");

    write_file(path, "\x93NUMPY\x02\x00\x10\x00\x00", 11);
    expect_error("v2 half a header length", path, IDX_FORMAT, "truncated");

    const char *d = D("<f4", "False", "(1, 2)");
    static const struct {
        const char *label;
        unsigned char v[2];
        const char *want;
    } versions[] = {
        {"version 4.0", {4, 0}, "format version 4.0 is not supported"},
        {"version 1.1", {1, 1}, "format version 1.1 is not supported"},
        {"version 0.0", {0, 0}, "format version 0.0"},
        {"version 255.255", {255, 255}, "format version 255.255"},
    };
    for (size_t k = 0; k < sizeof versions / sizeof versions[0]; k++) {
        tbuf b = {0};
        tb_header(&b, 1, d, strlen(d), 1);
        tb_f32(&b, 1.0f, 0);
        tb_f32(&b, 2.0f, 0);
        b.p[6] = versions[k].v[0];
        b.p[7] = versions[k].v[1];
        write_file(path, b.p, b.n);
        free(b.p);
        expect_error(versions[k].label, path, IDX_FORMAT, versions[k].want);
    }

    {
        tbuf b = {0};
        tb_header(&b, 1, d, strlen(d), 1);
        b.p[0] = 0x92;
        write_file(path, b.p, b.n);
        free(b.p);
        expect_error("bad magic byte", path, IDX_FORMAT, "not a .npy file");
    }
    {
        tbuf b = {0};
        tb_header(&b, 1, d, strlen(d), 1);
        b.p[8] = 0xff;
        b.p[9] = 0xff;
        write_file(path, b.p, b.n);
        free(b.p);
        expect_error("v1 header length past EOF", path, IDX_FORMAT,
                     "header length 65535 runs past the end of the file");
    }
    {
        tbuf b = {0};
        tb_header(&b, 2, d, strlen(d), 1);
        b.p[8] = b.p[9] = b.p[10] = b.p[11] = 0xff;
        write_file(path, b.p, b.n);
        free(b.p);
        expect_error("v2 header length past EOF", path, IDX_FORMAT,
                     "header length 4294967295 runs past the end of the file");
    }
    {
        /* NUL bytes inside the header. */
        tbuf b = {0};
        tb_header(&b, 1, d, strlen(d), 1);
        b.p[20] = '\0';
        tb_f32(&b, 1.0f, 0);
        tb_f32(&b, 2.0f, 0);
        write_file(path, b.p, b.n);
        free(b.p);
        expect_error("NUL in header", path, IDX_FORMAT, NULL);
    }

    /* Not files: a missing path and a directory are I/O errors. */
    char *missing = tu_path(dir, "does-not-exist.npy");
    expect_error("missing file", missing, IDX_IO, strerror(ENOENT));
    free(missing);
    expect_error("directory", dir, IDX_IO, NULL);

    /* A tiny error buffer is still NUL-terminated. */
    write_file(path, "hello", 5);
    memset(err, 'x', sizeof err);
    assert_int_equal(idx_npy_open(path, &(idx_npy *){NULL}, err, 4), IDX_FORMAT);
    assert_int_equal(strlen(err), 3);
    free(path);
}

/* Every proper prefix of a valid file must be rejected, none may crash. */
static void test_every_truncation(void **state)
{
    const char *dir = *state;
    char *path = tu_path(dir, "cut.npy");
    float x[12];
    for (int i = 0; i < 12; i++)
        x[i] = (float)i;
    assert_int_equal(idx_npy_write(path, x, 3, 4, NULL, 0), IDX_OK);
    size_t n;
    unsigned char *f = read_file(path, &n);
    char label[64];
    for (size_t len = 0; len < n; len++) {
        write_file(path, f, len);
        snprintf(label, sizeof label, "prefix of %zu bytes", len);
        expect_error(label, path, IDX_FORMAT, NULL);
    }
    free(f);
    free(path);
}

/* Random damage to the header: whatever the outcome, no crash, no read
 * outside the file (run under ASan), and a consistent result. */
static void test_header_fuzz(void **state)
{
    const char *dir = *state;
    char *path = tu_path(dir, "fuzz.npy");
    const char *d = D("<f4", "False", "(2, 3)");
    tbuf good = {0};
    tb_header(&good, 1, d, strlen(d), 0);
    for (int i = 0; i < 6; i++)
        tb_f32(&good, k6[i], 0);
    size_t hend = good.n - 24;
    static const char alphabet[] = "{}()[],:'\" 0123456789-LTFalseTrue<>=|f248\n\t\x93";
    tu_rng r;
    tu_rng_seed(&r, 1234);
    unsigned char *f = malloc(good.n + 8);
    assert_non_null(f);
    float row[16];
    for (int iter = 0; iter < 20000; iter++) {
        memcpy(f, good.p, good.n);
        size_t n = good.n;
        int edits = 1 + (int)tu_rng_below(&r, 3);
        for (int e = 0; e < edits; e++) {
            size_t at = (size_t)tu_rng_below(&r, hend);
            if (tu_rng_below(&r, 4) == 0)
                f[at] = (unsigned char)tu_rng_u64(&r);
            else
                f[at] = (unsigned char)alphabet[tu_rng_below(&r, sizeof alphabet - 1)];
        }
        if (tu_rng_below(&r, 8) == 0)
            n -= (size_t)tu_rng_below(&r, 5);
        write_file(path, f, n);
        idx_npy *m = NULL;
        char err[256];
        int rc = idx_npy_open(path, &m, err, sizeof err);
        if (rc == IDX_OK) {
            size_t item = strcmp(idx_npy_dtype(m), "float32") == 0 ? 4 : 2;
            assert_true(idx_npy_rows(m) * idx_npy_cols(m) * item <= n);
            assert_true(idx_npy_cols(m) <= 16 || idx_npy_rows(m) == 0);
            for (size_t i = 0; i < idx_npy_rows(m); i++)
                idx_npy_row(m, i, row);
            idx_npy_close(m);
        } else {
            assert_int_equal(rc, IDX_FORMAT);
            assert_int_equal(strncmp(err, path, strlen(path)), 0);
        }
    }
    free(f);
    free(good.p);
    free(path);
}

/* ---- files written by numpy ----------------------------------------------------- */

/* tests/fixtures/npy: from $top_srcdir when make check sets it, else next
 * to this source file. */
static char *fixture_path(const char *name)
{
    char *p = tu_fixture("npy", name);
    assert_non_null(p);
    return p;
}

static idx_npy *open_fixture(const char *name, size_t rows, size_t cols, const char *dtype)
{
    char *path = fixture_path(name);
    char err[512];
    idx_npy *m = NULL;
    if (idx_npy_open(path, &m, err, sizeof err) != IDX_OK)
        fail_msg("%s (set top_srcdir to the source tree)", err);
    free(path);
    assert_int_equal(idx_npy_rows(m), rows);
    assert_int_equal(idx_npy_cols(m), cols);
    assert_string_equal(idx_npy_dtype(m), dtype);
    return m;
}

static void test_numpy_fixtures(void **state)
{
    (void)state;
    float row[4];

    idx_npy *m = open_fixture("f32_3x4.npy", 3, 4, "float32");
    for (size_t i = 0; i < 3; i++) {
        idx_npy_row(m, i, row);
        for (size_t j = 0; j < 4; j++)
            assert_true(row[j] == (float)(4 * i + j) * 0.5f - 1.25f);
    }
    idx_npy_close(m);

    m = open_fixture("f16_2x3.npy", 2, 3, "float16");
    idx_npy_row(m, 0, row);
    assert_true(row[0] == 1.0f);
    assert_true(row[1] == -2.5f);
    assert_true(row[2] == ldexpf(1.0f, -24));
    idx_npy_row(m, 1, row);
    assert_true(row[0] == 65504.0f);
    assert_true(isinf(row[1]) && row[1] < 0);
    assert_true(isnan(row[2]));
    idx_npy_close(m);

    m = open_fixture("be_f32_2x2.npy", 2, 2, "float32");
    idx_npy_row(m, 0, row);
    assert_true(row[0] == 1.5f && row[1] == -2.0f);
    idx_npy_row(m, 1, row);
    assert_true(row[0] == 3.25f && row[1] == 1e-3f);
    idx_npy_close(m);

    m = open_fixture("v2_f32_1x2.npy", 1, 2, "float32");
    idx_npy_row(m, 0, row);
    assert_true(row[0] == 0.25f && row[1] == -4.0f);
    idx_npy_close(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_errno_tables),
        cmocka_unit_test_setup_teardown(test_roundtrip, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_write_empty, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_write_errors, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_versions_and_dicts, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_big_endian_f32, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_1d_and_zero_rows, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_float16, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_malformed, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_malformed_raw, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_every_truncation, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_header_fuzz, setup_dir, teardown_dir),
        cmocka_unit_test(test_numpy_fixtures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
