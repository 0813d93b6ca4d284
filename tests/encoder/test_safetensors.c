/* test_safetensors.c - the safetensors reader and writer, and the enc_errno
 * tables.
 *
 * Files are built byte by byte here (F16 and BF16 edge values, unaligned
 * F32, and every malformed case the reader must reject), round-tripped
 * through enc_st_write, fuzzed by flipping header bytes, and one fixture is
 * written by the reference Python package
 * (tests/fixtures/make_safetensors_fixture.py), so the test needs no Python.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <limits.h>
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

#include "encoder/encoder.h"
#include "encoder/safetensors.h"
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

static void tb_u16(tbuf *b, uint16_t v)
{
    unsigned char x[2] = {(unsigned char)v, (unsigned char)(v >> 8)};
    tb_put(b, x, 2);
}

static void tb_f32(tbuf *b, float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    unsigned char x[4] = {(unsigned char)u, (unsigned char)(u >> 8), (unsigned char)(u >> 16),
                          (unsigned char)(u >> 24)};
    tb_put(b, x, 4);
}

static void tb_u64(tbuf *b, uint64_t v)
{
    unsigned char x[8];
    for (int i = 0; i < 8; i++)
        x[i] = (unsigned char)(v >> (8 * i));
    tb_put(b, x, 8);
}

static void tb_zeros(tbuf *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        tb_put(b, "", 1);
}

/* The 8-byte length and the header text, unpadded. */
static void tb_header(tbuf *b, const char *json)
{
    tb_u64(b, strlen(json));
    tb_put(b, json, strlen(json));
}

static void write_bytes(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (n)
        assert_int_equal(fwrite(p, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

static unsigned char *read_bytes(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long len = ftell(f);
    assert_true(len >= 0);
    rewind(f);
    unsigned char *p = malloc((size_t)len + 1);
    assert_non_null(p);
    assert_int_equal(fread(p, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    *n = (size_t)len;
    return p;
}

static int same_bits(float a, float b)
{
    return memcmp(&a, &b, sizeof a) == 0;
}

/* 1 when p lies in a mapping of the file path (read from /proc/self/maps),
 * 0 when it does not, -1 when that cannot be told.  This is how the test
 * sees that aligned F32 data come straight from the mmap without the API
 * exposing the mapping. */
static int in_file_mapping(const void *p, const char *path)
{
    char *real = realpath(path, NULL);
    if (real == NULL)
        return -1;
    FILE *f = fopen("/proc/self/maps", "r");
    if (f == NULL) {
        free(real);
        return -1;
    }
    char line[4096];
    int found = 0;
    uintptr_t a = (uintptr_t)p;
    while (!found && fgets(line, sizeof line, f) != NULL) {
        unsigned long lo, hi;
        int off = 0;
        if (sscanf(line, "%lx-%lx %*s %*s %*s %*s %n", &lo, &hi, &off) < 2 || off == 0)
            continue;
        char *name = line + off;
        name[strcspn(name, "\n")] = '\0';
        if (strcmp(name, real) == 0 && a >= lo && a < hi)
            found = 1;
    }
    fclose(f);
    free(real);
    return found;
}

typedef struct fixture {
    char *dir;
    char err[1024];
} fixture;

static int setup(void **state)
{
    fixture *fx = calloc(1, sizeof *fx);
    if (fx == NULL)
        return -1;
    fx->dir = tu_mkdtemp();
    if (fx->dir == NULL) {
        free(fx);
        return -1;
    }
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fixture *fx = *state;
    tu_rmtree(fx->dir);
    free(fx->dir);
    free(fx);
    return 0;
}

/* Opens a file that must be rejected: checks the code, that *out was not
 * written, that the message starts with the path and contains each of the
 * NULL-terminated needles. */
static void expect_open_fail_at(fixture *fx, const char *path, int code, ...)
{
    enc_st *st = NULL;
    fx->err[0] = '\0';
    int rc = enc_st_open(path, &st, fx->err, sizeof fx->err);
    if (rc != code)
        fail_msg("%s: expected %s, got %s (%s)", path, enc_errname(code), enc_errname(rc),
                 fx->err);
    assert_null(st);
    assert_int_equal(strncmp(fx->err, path, strlen(path)), 0);
    va_list ap;
    va_start(ap, code);
    for (const char *s = va_arg(ap, const char *); s != NULL; s = va_arg(ap, const char *))
        if (strstr(fx->err, s) == NULL)
            fail_msg("message \"%s\" lacks \"%s\"", fx->err, s);
    va_end(ap);
}

/* Writes bytes to dir/bad.safetensors and expects that failure. */
#define EXPECT_FAIL(fx, bytes, n, code, ...)                                                      \
    do {                                                                                          \
        char *p_ = tu_path((fx)->dir, "bad.safetensors");                                         \
        assert_non_null(p_);                                                                      \
        write_bytes(p_, (bytes), (n));                                                            \
        expect_open_fail_at((fx), p_, (code), __VA_ARGS__, (const char *)NULL);                   \
        free(p_);                                                                                 \
    } while (0)

/* A header followed by datalen zero bytes. */
#define EXPECT_HDR_FAIL(fx, json, datalen, code, ...)                                             \
    do {                                                                                          \
        tbuf b_ = {0};                                                                            \
        tb_header(&b_, (json));                                                                   \
        tb_zeros(&b_, (datalen));                                                                 \
        EXPECT_FAIL((fx), b_.p, b_.n, (code), __VA_ARGS__);                                       \
        free(b_.p);                                                                               \
    } while (0)

/* Writes b to dir/name and opens it, which must succeed. */
static enc_st *open_ok(fixture *fx, const char *name, const tbuf *b, char **pathp)
{
    char *path = tu_path(fx->dir, name);
    assert_non_null(path);
    write_bytes(path, b->p, b->n);
    enc_st *st = NULL;
    int rc = enc_st_open(path, &st, fx->err, sizeof fx->err);
    if (rc != ENC_OK)
        fail_msg("%s: %s", enc_errname(rc), fx->err);
    assert_non_null(st);
    if (pathp)
        *pathp = path;
    else
        free(path);
    return st;
}

/* ---- error tables ---------------------------------------------------------------- */

static void test_errors(void **state)
{
    (void)state;
    static const struct {
        int code;
        const char *name, *msg;
    } want[] = {
#define T__ROW(n, m) {ENC_##n, "ENC_" #n, m},
        ENC_ERRNO_MAP(T__ROW)
#undef T__ROW
    };
    assert_int_equal(sizeof want / sizeof want[0], ENC_NERR);
    for (int c = 0; c < ENC_NERR; c++) {
        assert_int_equal(want[c].code, c);
        assert_string_equal(enc_errname(c), want[c].name);
        assert_string_equal(enc_strerror(c), want[c].msg);
        assert_true(strlen(enc_strerror(c)) > 0);
        for (int d = 0; d < c; d++)
            assert_string_not_equal(enc_errname(c), enc_errname(d));
    }
    assert_string_equal(enc_errname(ENC_OK), "ENC_OK");
    assert_string_equal(enc_strerror(ENC_OK), "success");
    assert_string_equal(enc_errname(ENC_SHAPE), "ENC_SHAPE");
    assert_string_equal(enc_errname(ENC_NERR), "ENC_UNKNOWN");
    assert_string_equal(enc_strerror(ENC_NERR), "unknown error");
    assert_string_equal(enc_errname(-1), "ENC_UNKNOWN");
    assert_string_equal(enc_strerror(-1), "unknown error");
    assert_string_equal(enc_errname(INT_MAX), "ENC_UNKNOWN");
}

/* ---- writer -> reader ------------------------------------------------------------- */

static void test_roundtrip(void **state)
{
    fixture *fx = *state;
    tu_rng r;
    tu_rng_seed(&r, 7);
    float a[6 * 5], s = 2.6592f, c[7];
    tu_fill_normal(&r, a, 30);
    tu_fill_uniform(&r, c, 7);
    const char *names[] = {"vit.blocks.0.attn.qkv.weight", "logit_scale", "empty", "b\"q\\\n"};
    const int ranks[] = {2, 0, 2, 1};
    const int64_t shapes[4][ENC_ST_MAX_RANK] = {{6, 5}, {0}, {0, 3}, {7}};
    const float *data[] = {a, &s, NULL, c};
    char *path = tu_path(fx->dir, "model.safetensors");
    assert_non_null(path);
    int rc = enc_st_write(path, 4, names, ranks, shapes, data, fx->err, sizeof fx->err);
    if (rc != ENC_OK)
        fail_msg("%s", fx->err);

    /* The layout: header padded to 8, tensors in order right after it. */
    size_t n;
    unsigned char *raw = read_bytes(path, &n);
    uint64_t hlen;
    memcpy(&hlen, raw, 8);
    assert_int_equal(hlen % 8, 0);
    assert_int_equal(n, 8 + hlen + (30 + 1 + 7) * 4);
    assert_int_equal(raw[8], '{');
    assert_int_equal(raw[8 + hlen - 1] == ' ' || raw[8 + hlen - 1] == '}', 1);
    assert_memory_equal(raw + 8 + hlen, a, sizeof a);
    assert_memory_equal(raw + 8 + hlen + sizeof a, &s, 4);
    assert_memory_equal(raw + 8 + hlen + sizeof a + 4, c, sizeof c);
    assert_non_null(strstr((const char *)raw + 8, "\"__metadata__\":{\"format\":\"pt\"}"));
    free(raw);

    enc_st *st = NULL;
    rc = enc_st_open(path, &st, fx->err, sizeof fx->err);
    if (rc != ENC_OK)
        fail_msg("%s", fx->err);
    assert_int_equal(enc_st_count(st), 4);
    /* strcmp order */
    assert_string_equal(enc_st_name(st, 0), "b\"q\\\n");
    assert_string_equal(enc_st_name(st, 1), "empty");
    assert_string_equal(enc_st_name(st, 2), "logit_scale");
    assert_string_equal(enc_st_name(st, 3), "vit.blocks.0.attn.qkv.weight");

    enc_st_info info;
    assert_int_equal(enc_st_info_get(st, "vit.blocks.0.attn.qkv.weight", &info), ENC_OK);
    assert_int_equal(info.dtype, ENC_ST_F32);
    assert_int_equal(info.rank, 2);
    assert_int_equal(info.shape[0], 6);
    assert_int_equal(info.shape[1], 5);
    assert_int_equal(info.shape[2], 0);
    assert_int_equal(info.nelem, 30);
    assert_int_equal(enc_st_info_get(st, "logit_scale", &info), ENC_OK);
    assert_int_equal(info.rank, 0);
    assert_int_equal(info.nelem, 1);
    assert_int_equal(enc_st_info_get(st, "empty", &info), ENC_OK);
    assert_int_equal(info.nelem, 0);

    const float *w = NULL, *w2 = NULL;
    const int64_t sh[2] = {6, 5};
    assert_int_equal(enc_st_get(st, names[0], 2, sh, &w, fx->err, sizeof fx->err), ENC_OK);
    assert_memory_equal(w, a, sizeof a);
    /* zero copy: the pointer is inside the file's mapping, and stays the same */
    assert_int_equal((uintptr_t)w % 4, 0);
    int in = in_file_mapping(w, path);
    if (in >= 0)
        assert_int_equal(in, 1);
    assert_int_equal(enc_st_get(st, names[0], 2, sh, &w2, fx->err, sizeof fx->err), ENC_OK);
    assert_ptr_equal(w, w2);

    assert_int_equal(enc_st_get(st, "logit_scale", 0, NULL, &w, fx->err, sizeof fx->err), ENC_OK);
    assert_true(same_bits(w[0], s));
    const int64_t sh7 = 7;
    assert_int_equal(enc_st_get(st, names[3], 1, &sh7, &w, fx->err, sizeof fx->err), ENC_OK);
    assert_memory_equal(w, c, sizeof c);
    const int64_t she[2] = {0, 3};
    w = NULL;
    assert_int_equal(enc_st_get(st, "empty", 2, she, &w, fx->err, sizeof fx->err), ENC_OK);
    assert_non_null(w);
    enc_st_close(st);

    /* Rewriting replaces the file whole and leaves no temporary behind. */
    rc = enc_st_write(path, 1, names + 1, ranks + 1, shapes + 1, data + 1, fx->err,
                      sizeof fx->err);
    assert_int_equal(rc, ENC_OK);
    rc = enc_st_open(path, &st, fx->err, sizeof fx->err);
    assert_int_equal(rc, ENC_OK);
    assert_int_equal(enc_st_count(st), 1);
    enc_st_close(st);
    DIR *d = opendir(fx->dir);
    assert_non_null(d);
    int entries = 0;
    for (struct dirent *de; (de = readdir(d)) != NULL;)
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0) {
            assert_string_equal(de->d_name, "model.safetensors");
            entries++;
        }
    closedir(d);
    assert_int_equal(entries, 1);

    /* No tensors at all is a valid file too. */
    assert_int_equal(enc_st_write(path, 0, NULL, NULL, NULL, NULL, fx->err, sizeof fx->err),
                     ENC_OK);
    assert_int_equal(enc_st_open(path, &st, fx->err, sizeof fx->err), ENC_OK);
    assert_int_equal(enc_st_count(st), 0);
    assert_int_equal(enc_st_info_get(st, "x", &info), ENC_MISSING);
    enc_st_close(st);
    enc_st_close(NULL);
    free(path);
}

static void test_write_errors(void **state)
{
    fixture *fx = *state;
    float v[4] = {1, 2, 3, 4};
    const float *data[] = {v, v};
    const int ranks[] = {1, 1};
    const int64_t shapes[2][ENC_ST_MAX_RANK] = {{4}, {4}};
    char *path = tu_path(fx->dir, "w.safetensors");
    assert_non_null(path);

    const char *dup[] = {"a", "a"};
    assert_int_equal(enc_st_write(path, 2, dup, ranks, shapes, data, fx->err, sizeof fx->err),
                     ENC_INVAL);
    assert_non_null(strstr(fx->err, "'a'"));
    const char *meta[] = {"__metadata__"};
    assert_int_equal(enc_st_write(path, 1, meta, ranks, shapes, data, fx->err, sizeof fx->err),
                     ENC_INVAL);
    const char *empty[] = {""};
    assert_int_equal(enc_st_write(path, 1, empty, ranks, shapes, data, fx->err, sizeof fx->err),
                     ENC_INVAL);
    const char *latin1[] = {"caf\xe9"};
    assert_int_equal(enc_st_write(path, 1, latin1, ranks, shapes, data, fx->err, sizeof fx->err),
                     ENC_INVAL);
    assert_non_null(strstr(fx->err, "not UTF-8"));
    const char *one[] = {"w"};
    const int bad_rank[] = {9};
    assert_int_equal(enc_st_write(path, 1, one, bad_rank, shapes, data, fx->err, sizeof fx->err),
                     ENC_INVAL);
    const int64_t neg[1][ENC_ST_MAX_RANK] = {{-4}};
    assert_int_equal(enc_st_write(path, 1, one, ranks, neg, data, fx->err, sizeof fx->err),
                     ENC_INVAL);
    assert_non_null(strstr(fx->err, "'w'"));
    const float *nodata[] = {NULL};
    assert_int_equal(enc_st_write(path, 1, one, ranks, shapes, nodata, fx->err, sizeof fx->err),
                     ENC_INVAL);
    const int64_t huge[1][ENC_ST_MAX_RANK] = {{INT64_MAX, INT64_MAX}};
    const int rank2[] = {2};
    assert_int_equal(enc_st_write(path, 1, one, rank2, huge, data, fx->err, sizeof fx->err),
                     ENC_INVAL);
    /* none of these left a file */
    struct stat sb;
    assert_int_equal(stat(path, &sb), -1);

    char *nodir = tu_path(fx->dir, "no/such/dir/w.safetensors");
    assert_int_equal(enc_st_write(nodir, 1, one, ranks, shapes, data, fx->err, sizeof fx->err),
                     ENC_IO);
    assert_int_equal(strncmp(fx->err, nodir, strlen(nodir)), 0);
    free(nodir);
    free(path);
}

/* ---- F16 / BF16 / unaligned F32 built by hand ---------------------------------------- */

/* Reference decoders written from the IEEE definitions (value = sign *
 * mantissa * 2^exponent via ldexp), independent of the bit shuffling in the
 * reader. */
static float ref_f16(uint16_t h)
{
    int sign = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v;
    if (e == 31)
        v = m ? NAN : INFINITY;
    else if (e == 0)
        v = ldexp(m, -24);
    else
        v = ldexp(1024 + m, e - 25);
    return (float)(sign ? -v : v);
}

static float ref_bf16(uint16_t h)
{
    int sign = h >> 15, e = (h >> 7) & 255, m = h & 127;
    double v;
    if (e == 255)
        v = m ? NAN : INFINITY;
    else if (e == 0)
        v = ldexp(m, -133);
    else
        v = ldexp(128 + m, e - 134);
    return (float)(sign ? -v : v);
}

static void test_half_types(void **state)
{
    fixture *fx = *state;
    /* Every one of the 65536 bit patterns of each type, plus a small F16
     * tensor of named edge cases. */
    static const uint16_t edge[] = {
        0x0001, /* smallest subnormal 2^-24 */
        0x03ff, /* largest subnormal */
        0x0400, /* smallest normal 2^-14 */
        0x3c00, /* 1 */
        0xc000, /* -2 */
        0x7bff, /* 65504 */
        0x7c00, /* inf */
        0xfc00, /* -inf */
        0x7e00, /* quiet NaN */
        0x7c01, /* signalling NaN */
        0x8000, /* -0 */
        0x8001, /* -2^-24 */
    };
    const size_t ne = sizeof edge / sizeof edge[0];
    char json[512];
    snprintf(json, sizeof json,
             "{\"all16\":{\"dtype\":\"F16\",\"shape\":[256,256],\"data_offsets\":[0,131072]},"
             "\"allbf\":{\"dtype\":\"BF16\",\"shape\":[65536],"
             "\"data_offsets\":[131072,262144]},"
             "\"edge\":{\"dtype\":\"F16\",\"shape\":[%zu],\"data_offsets\":[262144,%zu]}}",
             ne, 262144 + 2 * ne);
    tbuf b = {0};
    tb_header(&b, json);
    for (uint32_t h = 0; h < 65536; h++)
        tb_u16(&b, (uint16_t)h);
    for (uint32_t h = 0; h < 65536; h++)
        tb_u16(&b, (uint16_t)h);
    for (size_t i = 0; i < ne; i++)
        tb_u16(&b, edge[i]);
    char *path;
    enc_st *st = open_ok(fx, "half.safetensors", &b, &path);
    free(b.p);

    enc_st_info info;
    assert_int_equal(enc_st_info_get(st, "all16", &info), ENC_OK);
    assert_int_equal(info.dtype, ENC_ST_F16);
    assert_int_equal(enc_st_info_get(st, "allbf", &info), ENC_OK);
    assert_int_equal(info.dtype, ENC_ST_BF16);

    const float *x, *x2;
    const int64_t s16[2] = {256, 256};
    assert_int_equal(enc_st_get(st, "all16", 2, s16, &x, fx->err, sizeof fx->err), ENC_OK);
    for (uint32_t h = 0; h < 65536; h++) {
        float want = ref_f16((uint16_t)h);
        if (isnan(want)) {
            if (!isnan(x[h]))
                fail_msg("f16 0x%04x: got %g, want NaN", h, (double)x[h]);
            assert_int_equal(!!signbit(x[h]), h >> 15);
        } else if (!same_bits(x[h], want)) {
            fail_msg("f16 0x%04x: got %a, want %a", h, (double)x[h], (double)want);
        }
    }
    /* converted: a copy, owned by st, returned again on the next call */
    int in = in_file_mapping(x, path);
    if (in >= 0)
        assert_int_equal(in, 0);
    assert_int_equal(enc_st_get(st, "all16", 2, s16, &x2, fx->err, sizeof fx->err), ENC_OK);
    assert_ptr_equal(x, x2);

    const int64_t sbf = 65536;
    assert_int_equal(enc_st_get(st, "allbf", 1, &sbf, &x, fx->err, sizeof fx->err), ENC_OK);
    for (uint32_t h = 0; h < 65536; h++) {
        float want = ref_bf16((uint16_t)h);
        uint32_t bits;
        memcpy(&bits, &x[h], 4);
        assert_int_equal(bits, h << 16); /* NaN payloads survive too */
        if (isnan(want))
            assert_true(isnan(x[h]));
        else if (!same_bits(x[h], want))
            fail_msg("bf16 0x%04x: got %a, want %a", h, (double)x[h], (double)want);
    }

    const int64_t se = (int64_t)ne;
    assert_int_equal(enc_st_get(st, "edge", 1, &se, &x, fx->err, sizeof fx->err), ENC_OK);
    assert_true(same_bits(x[0], 0x1p-24f));
    assert_true(same_bits(x[1], 1023 * 0x1p-24f));
    assert_true(same_bits(x[2], 0x1p-14f));
    assert_true(same_bits(x[3], 1.0f));
    assert_true(same_bits(x[4], -2.0f));
    assert_true(same_bits(x[5], 65504.0f));
    assert_true(isinf(x[6]) && x[6] > 0);
    assert_true(isinf(x[7]) && x[7] < 0);
    assert_true(isnan(x[8]));
    assert_true(isnan(x[9]));
    assert_true(x[10] == 0 && signbit(x[10]));
    assert_true(same_bits(x[11], -0x1p-24f));
    enc_st_close(st);
    free(path);
}

static void test_unaligned_f32(void **state)
{
    fixture *fx = *state;
    /* A one-byte U8 tensor first puts the F32 data at an odd address. */
    tbuf b = {0};
    tb_header(&b, "{\"mask\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                  "\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[1,13]}}");
    size_t data_at = b.n;
    tb_put(&b, "\x01", 1);
    const float v[3] = {1.5f, -0.0f, 3.0e-41f /* a float subnormal */};
    for (int i = 0; i < 3; i++)
        tb_f32(&b, v[i]);
    assert_int_not_equal((data_at + 1) % 4, 0);
    char *path;
    enc_st *st = open_ok(fx, "odd.safetensors", &b, &path);
    free(b.p);
    const float *x, *x2;
    const int64_t s = 3;
    assert_int_equal(enc_st_get(st, "w", 1, &s, &x, fx->err, sizeof fx->err), ENC_OK);
    assert_int_equal((uintptr_t)x % 4, 0);
    for (int i = 0; i < 3; i++)
        assert_true(same_bits(x[i], v[i]));
    int in = in_file_mapping(x, path);
    if (in >= 0)
        assert_int_equal(in, 0);
    assert_int_equal(enc_st_get(st, "w", 1, &s, &x2, fx->err, sizeof fx->err), ENC_OK);
    assert_ptr_equal(x, x2);
    /* U8 is listed but cannot be read as float */
    enc_st_info info;
    assert_int_equal(enc_st_info_get(st, "mask", &info), ENC_OK);
    assert_int_equal(info.dtype, ENC_ST_OTHER);
    assert_int_equal(info.nelem, 1);
    assert_int_equal(enc_st_get(st, "mask", 1, &s, &x, fx->err, sizeof fx->err),
                     ENC_UNSUPPORTED);
    enc_st_close(st);
    free(path);
}

/* ---- the reference package's file ---------------------------------------------------- */

/* tests/fixtures/safetensors: from $top_srcdir when make check sets it, else
 * next to this source file. */
static char *fixture_path(const char *name)
{
    char *p = tu_fixture("safetensors", name);
    assert_non_null(p);
    return p;
}

static void test_reference_fixture(void **state)
{
    fixture *fx = *state;
    char *path = fixture_path("small.safetensors");
    enc_st *st = NULL;
    int rc = enc_st_open(path, &st, fx->err, sizeof fx->err);
    if (rc != ENC_OK)
        fail_msg("%s (set top_srcdir to the source tree)", fx->err);

    /* Values printed by tests/fixtures/make_safetensors_fixture.py. */
    assert_int_equal(enc_st_count(st), 5);
    assert_string_equal(enc_st_name(st, 0), "logit_scale");
    assert_string_equal(enc_st_name(st, 1), "text.position_ids");
    assert_string_equal(enc_st_name(st, 2), "text.proj.weight");
    assert_string_equal(enc_st_name(st, 3), "vit.norm.bias");
    assert_string_equal(enc_st_name(st, 4), "vit.patch_embed.weight");

    const float *x;
    const int64_t s23[2] = {2, 3};
    assert_int_equal(enc_st_get(st, "vit.patch_embed.weight", 2, s23, &x, fx->err,
                                sizeof fx->err),
                     ENC_OK);
    static const float want_f32[6] = {-1.25f, -0.75f, -0.25f, 0.25f, 0.75f, 1.25f};
    for (int i = 0; i < 6; i++)
        assert_true(same_bits(x[i], want_f32[i]));
    /* The package pads its header to 8 bytes, so this F32 is used in place. */
    int in = in_file_mapping(x, path);
    if (in >= 0)
        assert_int_equal(in, 1);

    const int64_t s24[2] = {2, 4};
    assert_int_equal(enc_st_get(st, "vit.norm.bias", 2, s24, &x, fx->err, sizeof fx->err),
                     ENC_OK);
    assert_true(same_bits(x[0], 1.0f));
    assert_true(same_bits(x[1], -2.5f));
    assert_true(same_bits(x[2], 5.960464477539063e-08f)); /* 2^-24 */
    assert_true(same_bits(x[3], 6.097555160522461e-05f)); /* 1023 * 2^-24 */
    assert_true(same_bits(x[4], 65504.0f));
    assert_true(isinf(x[5]) && x[5] < 0);
    assert_true(isnan(x[6]));
    assert_true(x[7] == 0 && signbit(x[7]));

    const int64_t s5 = 5;
    assert_int_equal(enc_st_get(st, "text.proj.weight", 1, &s5, &x, fx->err, sizeof fx->err),
                     ENC_OK);
    assert_true(same_bits(x[0], 1.0f));
    assert_true(same_bits(x[1], -3.140625f));
    assert_true(same_bits(x[2], 9.183549615799121e-41f)); /* 2^-133 */
    assert_true(isinf(x[3]) && x[3] > 0);
    assert_true(x[4] == 0 && signbit(x[4]));

    enc_st_info info;
    assert_int_equal(enc_st_info_get(st, "logit_scale", &info), ENC_OK);
    assert_int_equal(info.rank, 0);
    assert_int_equal(enc_st_get(st, "logit_scale", 0, NULL, &x, fx->err, sizeof fx->err),
                     ENC_OK);
    assert_true(same_bits(x[0], 2.5f));

    /* I64: present but unsupported, not missing */
    assert_int_equal(enc_st_info_get(st, "text.position_ids", &info), ENC_OK);
    assert_int_equal(info.dtype, ENC_ST_OTHER);
    assert_int_equal(info.rank, 1);
    assert_int_equal(info.shape[0], 4);
    const int64_t s4 = 4;
    assert_int_equal(enc_st_get(st, "text.position_ids", 1, &s4, &x, fx->err, sizeof fx->err),
                     ENC_UNSUPPORTED);
    assert_non_null(strstr(fx->err, "'text.position_ids'"));
    assert_non_null(strstr(fx->err, "unsupported dtype I64"));
    enc_st_close(st);
    free(path);
}

/* ---- lookups that fail ------------------------------------------------------------------ */

static void test_lookup_errors(void **state)
{
    fixture *fx = *state;
    tbuf b = {0};
    tb_header(&b, "{\"vit.head.weight\":{\"dtype\":\"F32\",\"shape\":[2,3],"
                  "\"data_offsets\":[0,24]},"
                  "\"ids\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[24,40]},"
                  "\"future\":{\"dtype\":\"Q7_X\",\"shape\":[2],\"data_offsets\":[40,41]}}");
    for (int i = 0; i < 41; i++)
        tb_put(&b, "", 1);
    char *path;
    enc_st *st = open_ok(fx, "model.safetensors", &b, &path);
    free(b.p);
    char want[2048];

    const float *x = (const float *)&want; /* must stay untouched on failure */
    const float *sentinel = x;
    const int64_t s33[2] = {3, 3};
    assert_int_equal(enc_st_get(st, "vit.head.weight", 2, s33, &x, fx->err, sizeof fx->err),
                     ENC_SHAPE);
    snprintf(want, sizeof want,
             "%s: tensor 'vit.head.weight' has shape [2, 3] but the configuration implies "
             "[3, 3]",
             path);
    assert_string_equal(fx->err, want);
    assert_ptr_equal(x, sentinel);
    const int64_t s6 = 6;
    assert_int_equal(enc_st_get(st, "vit.head.weight", 1, &s6, &x, fx->err, sizeof fx->err),
                     ENC_SHAPE);
    assert_non_null(strstr(fx->err, "implies [6]"));
    assert_int_equal(enc_st_get(st, "vit.head.weight", 0, NULL, &x, fx->err, sizeof fx->err),
                     ENC_SHAPE);
    assert_non_null(strstr(fx->err, "implies []"));

    assert_int_equal(enc_st_get(st, "vit.head.bias", 1, &s6, &x, fx->err, sizeof fx->err),
                     ENC_MISSING);
    snprintf(want, sizeof want, "%s: tensor 'vit.head.bias' is missing", path);
    assert_string_equal(fx->err, want);
    enc_st_info info;
    assert_int_equal(enc_st_info_get(st, "vit.head.bias", &info), ENC_MISSING);
    assert_int_equal(enc_st_info_get(st, "", &info), ENC_MISSING);

    const int64_t s2 = 2;
    assert_int_equal(enc_st_get(st, "ids", 1, &s2, &x, fx->err, sizeof fx->err),
                     ENC_UNSUPPORTED);
    assert_non_null(strstr(fx->err, "tensor 'ids' has unsupported dtype I64"));
    assert_int_equal(enc_st_get(st, "future", 1, &s2, &x, fx->err, sizeof fx->err),
                     ENC_UNSUPPORTED);
    assert_non_null(strstr(fx->err, "Q7_X"));
    assert_int_equal(enc_st_info_get(st, "future", &info), ENC_OK);
    assert_int_equal(info.dtype, ENC_ST_OTHER);

    const int64_t s9[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    assert_int_equal(enc_st_get(st, "vit.head.weight", 9, s9, &x, fx->err, sizeof fx->err),
                     ENC_INVAL);
    assert_int_equal(enc_st_get(st, "vit.head.weight", -1, s9, &x, fx->err, sizeof fx->err),
                     ENC_INVAL);
    assert_ptr_equal(x, sentinel);
    /* a NULL errbuf is fine */
    assert_int_equal(enc_st_get(st, "nope", 1, &s2, &x, NULL, 0), ENC_MISSING);
    enc_st_close(st);
    free(path);
}

/* ---- malformed files ----------------------------------------------------------------------- */

/* One F32 header entry, as a string literal. */
#define F32_ENTRY(name, shape, off)                                                               \
    "\"" name "\":{\"dtype\":\"F32\",\"shape\":" shape ",\"data_offsets\":" off "}"

static void test_malformed_preamble(void **state)
{
    fixture *fx = *state;
    EXPECT_FAIL(fx, "", 0, ENC_FORMAT, "empty file");
    EXPECT_FAIL(fx, "\x02\0\0\0\0", 5, ENC_FORMAT, "too short", "5 bytes");
    EXPECT_FAIL(fx, "\x00\0\0\0\0\0\0", 7, ENC_FORMAT, "too short");

    tbuf b = {0};
    tb_u64(&b, 100);
    tb_put(&b, "{}        ", 10);
    EXPECT_FAIL(fx, b.p, b.n, ENC_FORMAT, "header length 100", "past the end of the file");
    b.n = 0;
    tb_u64(&b, 1ull << 40);
    tb_put(&b, "{}", 2);
    EXPECT_FAIL(fx, b.p, b.n, ENC_TOOBIG, "header length 1099511627776");
    b.n = 0;
    tb_u64(&b, UINT64_MAX);
    EXPECT_FAIL(fx, b.p, b.n, ENC_TOOBIG, "header length");
    b.n = 0;
    tb_u64(&b, ENC_ST_MAX_HEADER + 1ull);
    tb_put(&b, "{}", 2);
    EXPECT_FAIL(fx, b.p, b.n, ENC_TOOBIG, "limit");
    free(b.p);

    /* not a file at all */
    char *missing = tu_path(fx->dir, "does-not-exist.safetensors");
    expect_open_fail_at(fx, missing, ENC_IO, "No such file", (const char *)NULL);
    free(missing);
    expect_open_fail_at(fx, fx->dir, ENC_IO, "not a regular file", (const char *)NULL);
    enc_st *st = NULL;
    assert_int_equal(enc_st_open(NULL, &st, fx->err, sizeof fx->err), ENC_INVAL);
    assert_null(st);
}

static void test_malformed_json(void **state)
{
    fixture *fx = *state;
    EXPECT_HDR_FAIL(fx, "", 0, ENC_FORMAT, "not valid JSON");
    EXPECT_HDR_FAIL(fx, "{\"a\": {", 0, ENC_FORMAT, "not valid JSON");
    EXPECT_HDR_FAIL(fx, "{\"a\" 1}", 0, ENC_FORMAT, "not valid JSON");
    EXPECT_HDR_FAIL(fx, "{} x", 0, ENC_FORMAT, "unexpected bytes after the JSON value");
    EXPECT_HDR_FAIL(fx, "{}{}", 0, ENC_FORMAT, "unexpected bytes");
    EXPECT_HDR_FAIL(fx, "[1, 2]", 0, ENC_FORMAT, "header is an array, not a JSON object");
    EXPECT_HDR_FAIL(fx, "\"text\"", 0, ENC_FORMAT, "not a JSON object");
    EXPECT_HDR_FAIL(fx, "42", 0, ENC_FORMAT, "not a JSON object");
    EXPECT_HDR_FAIL(fx, "null", 0, ENC_FORMAT, "not a JSON object");
    /* text the JSON parser must never see */
    EXPECT_HDR_FAIL(fx, "{\"a\xff\":1}", 0, ENC_FORMAT, "invalid UTF-8 at byte 3");
    EXPECT_HDR_FAIL(fx, "{\"\xc0\xaf\":1}", 0, ENC_FORMAT, "invalid UTF-8"); /* overlong '/' */
    EXPECT_HDR_FAIL(fx, "{\"\xed\xa0\x80\":1}", 0, ENC_FORMAT, "invalid UTF-8"); /* surrogate */
    EXPECT_HDR_FAIL(fx, "{\"\xe2\x82\":1}", 0, ENC_FORMAT, "invalid UTF-8");     /* cut short */
    EXPECT_HDR_FAIL(fx, "{\"a\x01\":1}", 0, ENC_FORMAT, "control character");
    {
        tbuf b = {0};
        tb_u64(&b, 4);
        tb_put(&b, "{\0}\n", 4);
        EXPECT_FAIL(fx, b.p, b.n, ENC_FORMAT, "control character at byte 1");
        free(b.p);
    }
    EXPECT_HDR_FAIL(fx, "{\"w\\u0000x\":1}", 0, ENC_FORMAT, "\\u0000");
    /* ... while an escaped backslash before u0000 is just text */
    EXPECT_HDR_FAIL(fx, "{\"w\\\\u0000\":1}", 0, ENC_FORMAT, "tensor 'w\\u0000'", "not an object");

    /* Names with UTF-8 and JSON escapes are fine. */
    tbuf b = {0};
    tb_header(&b, "{" F32_ENTRY("caf\xc3\xa9.\\u00e9\\n\\\"", "[1]", "[0,4]") "}   ");
    tb_f32(&b, 0.5f);
    enc_st *st = open_ok(fx, "utf8.safetensors", &b, NULL);
    assert_string_equal(enc_st_name(st, 0), "caf\xc3\xa9.\xc3\xa9\n\"");
    enc_st_close(st);
    /* ...and so is no tensor at all, with or without padding */
    b.n = 0;
    tb_header(&b, "{}");
    st = open_ok(fx, "none.safetensors", &b, NULL);
    assert_int_equal(enc_st_count(st), 0);
    enc_st_close(st);
    b.n = 0;
    tb_header(&b, " \n{ }\t\r\n      ");
    st = open_ok(fx, "none.safetensors", &b, NULL);
    enc_st_close(st);
    free(b.p);
}

static void test_malformed_entries(void **state)
{
    fixture *fx = *state;
    /* wrong kinds of entry */
    EXPECT_HDR_FAIL(fx, "{\"w\":3}", 0, ENC_FORMAT, "tensor 'w'", "a number, not an object");
    EXPECT_HDR_FAIL(fx, "{\"w\":[]}", 0, ENC_FORMAT, "tensor 'w'", "not an object");
    /* missing fields */
    EXPECT_HDR_FAIL(fx, "{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, ENC_FORMAT,
                    "tensor 'w'", "missing 'dtype'");
    EXPECT_HDR_FAIL(fx, "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, ENC_FORMAT,
                    "tensor 'w'", "missing 'shape'");
    EXPECT_HDR_FAIL(fx, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, ENC_FORMAT,
                    "tensor 'w'", "missing 'data_offsets'");
    EXPECT_HDR_FAIL(fx, "{\"w\":{\"DTYPE\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                    ENC_FORMAT, "missing 'dtype'");
    /* wrong types */
    EXPECT_HDR_FAIL(fx, "{\"w\":{\"dtype\":32,\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                    ENC_FORMAT, "tensor 'w'", "'dtype' is a number, not a string");
    EXPECT_HDR_FAIL(fx, "{\"w\":{\"dtype\":\"F32\",\"shape\":\"1\",\"data_offsets\":[0,4]}}", 4,
                    ENC_FORMAT, "tensor 'w'", "'shape' is a string, not an array");
    EXPECT_HDR_FAIL(fx, "{\"w\":{\"dtype\":\"F32\",\"shape\":{},\"data_offsets\":[0,4]}}", 4,
                    ENC_FORMAT, "'shape' is an object");
    EXPECT_HDR_FAIL(fx, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1,\"2\"],\"data_offsets\":[0,8]}}",
                    8, ENC_FORMAT, "tensor 'w'", "'shape'[1] is a string");
    EXPECT_HDR_FAIL(fx, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4,
                    ENC_FORMAT, "tensor 'w'", "'shape'[0] is 1.5");
    EXPECT_HDR_FAIL(fx, "{\"w\":{\"dtype\":\"F32\",\"shape\":[null],\"data_offsets\":[0,4]}}", 4,
                    ENC_FORMAT, "'shape'[0] is null");
    EXPECT_HDR_FAIL(fx, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":\"0-4\"}}", 4,
                    ENC_FORMAT, "tensor 'w'", "'data_offsets' is a string, not [begin, end]");
    EXPECT_HDR_FAIL(fx, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4]}}", 4,
                    ENC_FORMAT, "tensor 'w'", "'data_offsets' has length 1, not 2");
    EXPECT_HDR_FAIL(fx, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 8,
                    ENC_FORMAT, "'data_offsets' has length 3");
    EXPECT_HDR_FAIL(fx, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,\"4\"]}}", 4,
                    ENC_FORMAT, "tensor 'w'", "'data_offsets'[1] is a string");
    EXPECT_HDR_FAIL(fx, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[true,4]}}", 4,
                    ENC_FORMAT, "'data_offsets'[0] is a boolean");
    /* negative and oversized numbers */
    EXPECT_HDR_FAIL(fx, "{\"w\":{\"dtype\":\"F32\",\"shape\":[-3],\"data_offsets\":[0,4]}}", 4,
                    ENC_FORMAT, "tensor 'w'", "'shape'[0] is -3, not a non-negative integer");
    EXPECT_HDR_FAIL(fx, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 4,
                    ENC_FORMAT, "tensor 'w'", "'data_offsets'[0] is -4");
    EXPECT_HDR_FAIL(fx,
                    "{\"w\":{\"dtype\":\"F32\",\"shape\":[1e300],\"data_offsets\":[0,4]}}", 4,
                    ENC_FORMAT, "'shape'[0]");
    EXPECT_HDR_FAIL(fx,
                    "{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],"
                    "\"data_offsets\":[0,4]}}",
                    4, ENC_FORMAT, "tensor 'w'", "too many elements");
    EXPECT_HDR_FAIL(fx,
                    "{\"w\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904],"
                    "\"data_offsets\":[0,4]}}",
                    4, ENC_FORMAT, "'shape'[0]"); /* 2^62: past exact doubles */
    EXPECT_HDR_FAIL(fx,
                    "{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],"
                    "\"data_offsets\":[0,4]}}",
                    4, ENC_UNSUPPORTED, "tensor 'w'", "9 dimensions");
    /* offsets */
    EXPECT_HDR_FAIL(fx, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 8,
                    ENC_FORMAT, "tensor 'w'", "[8, 4] end before they begin");
    EXPECT_HDR_FAIL(fx, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1024],\"data_offsets\":[0,4096]}}",
                    16, ENC_FORMAT, "tensor 'w'",
                    "[0, 4096] run past the end of the data (16 bytes)");
    EXPECT_HDR_FAIL(fx, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 7,
                    ENC_FORMAT, "past the end of the data (7 bytes)");
    EXPECT_HDR_FAIL(fx, "{\"w\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[0,4]}}", 8,
                    ENC_FORMAT, "tensor 'w'", "do not match shape [3] of F16 (6 bytes)");
    EXPECT_HDR_FAIL(fx, "{\"w\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[0,8]}}", 16,
                    ENC_FORMAT, "do not match shape [2] of I64 (16 bytes)");
    EXPECT_HDR_FAIL(fx, "{\"w\":{\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[0,4]}}", 4,
                    ENC_FORMAT, "do not match shape [] of BF16 (2 bytes)");

    /* the size mismatch message, in full */
    {
        char *p = tu_path(fx->dir, "model.safetensors");
        tbuf b = {0};
        tb_header(&b, "{" F32_ENTRY("vit.blocks.0.attn.qkv.weight", "[3, 4]", "[0, 12]") "}");
        for (int i = 0; i < 48; i++)
            tb_put(&b, "", 1);
        write_bytes(p, b.p, b.n);
        free(b.p);
        expect_open_fail_at(fx, p, ENC_FORMAT, (const char *)NULL);
        char want[1024];
        snprintf(want, sizeof want,
                 "%s: tensor 'vit.blocks.0.attn.qkv.weight': data_offsets [0, 12] do not match "
                 "shape [3, 4] of F32 (48 bytes)",
                 p);
        assert_string_equal(fx->err, want);
        free(p);
    }

    /* overlapping and duplicate tensors */
    EXPECT_HDR_FAIL(fx, "{" F32_ENTRY("a", "[4]", "[0,16]") "," F32_ENTRY("b", "[4]", "[8,24]") "}",
                    24, ENC_FORMAT, "tensor 'b'", "[8, 24] overlap", "tensor 'a' [0, 16]");
    EXPECT_HDR_FAIL(fx, "{" F32_ENTRY("z", "[4]", "[8,24]") "," F32_ENTRY("y", "[2]", "[0,8]")
                    "," F32_ENTRY("x", "[1]", "[20,24]") "}",
                    24, ENC_FORMAT, "tensor 'x'", "overlap", "'z'");
    EXPECT_HDR_FAIL(fx, "{" F32_ENTRY("a", "[4]", "[0,16]") "," F32_ENTRY("b", "[4]", "[0,16]") "}",
                    16, ENC_FORMAT, "overlap");
    EXPECT_HDR_FAIL(fx, "{" F32_ENTRY("a", "[1]", "[0,4]") "," F32_ENTRY("a", "[1]", "[4,8]") "}",
                    8, ENC_FORMAT, "tensor 'a' appears more than once");

    /* __metadata__ */
    EXPECT_HDR_FAIL(fx, "{\"__metadata__\":{\"format\":\"pt\",\"step\":1000}}", 0, ENC_FORMAT,
                    "'__metadata__'", "'step' is a number, not a string");
    EXPECT_HDR_FAIL(fx, "{\"__metadata__\":{\"a\":{\"b\":\"c\"}}}", 0, ENC_FORMAT,
                    "'__metadata__'", "'a' is an object");
    EXPECT_HDR_FAIL(fx, "{\"__metadata__\":\"pt\"}", 0, ENC_FORMAT,
                    "'__metadata__' is a string, not an object of strings");
    EXPECT_HDR_FAIL(fx, "{\"__metadata__\":null}", 0, ENC_FORMAT, "'__metadata__' is null");

    /* What is allowed: empty tensors anywhere (they own no bytes), holes
     * between tensors, unknown dtypes, extra fields, and metadata. */
    tbuf b = {0};
    tb_header(&b, "{\"__metadata__\":{\"format\":\"pt\"},"
                  F32_ENTRY("a", "[4]", "[0,16]") ","
                  F32_ENTRY("e", "[0, 3]", "[8,8]") ","
                  F32_ENTRY("f", "[5, 0]", "[8,8]") ","
                  "\"u\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[16,18],\"x\":1},"
                  "\"n\":{\"dtype\":\"NEW\",\"shape\":[1000],\"data_offsets\":[20,21]},"
                  F32_ENTRY("h", "[1]", "[24,28]") "}");
    for (int i = 0; i < 28; i++)
        tb_put(&b, "", 1);
    enc_st *st = open_ok(fx, "ok.safetensors", &b, NULL);
    free(b.p);
    assert_int_equal(enc_st_count(st), 6);
    enc_st_info info;
    assert_int_equal(enc_st_info_get(st, "e", &info), ENC_OK);
    assert_int_equal(info.nelem, 0);
    assert_int_equal(info.rank, 2);
    assert_int_equal(info.shape[1], 3);
    assert_int_equal(enc_st_info_get(st, "__metadata__", &info), ENC_MISSING);
    enc_st_close(st);
}

/* ---- fuzz ------------------------------------------------------------------------------ */

static void test_fuzz_header(void **state)
{
    fixture *fx = *state;
    /* A small valid file with every readable dtype and a few shapes. */
    tbuf b = {0};
    const char *json =
        "{\"__metadata__\":{\"format\":\"pt\"},"
        "\"a.weight\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
        "\"b\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[24,32]},"
        "\"c\":{\"dtype\":\"BF16\",\"shape\":[2,1,2],\"data_offsets\":[32,40]},"
        "\"d\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[40,48]},"
        "\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[48,52]}}";
    tb_header(&b, json);
    size_t hlen = strlen(json);
    for (int i = 0; i < 52; i++)
        tb_put(&b, &(unsigned char){(unsigned char)(i * 37 + 11)}, 1);
    char *path;
    enc_st *st0 = open_ok(fx, "fuzz.safetensors", &b, &path);
    enc_st_close(st0);

    unsigned char *m = malloc(b.n);
    assert_non_null(m);
    tu_rng r;
    tu_rng_seed(&r, 2024);
    int ok = 0, bad = 0;
    for (int it = 0; it < 2000; it++) {
        memcpy(m, b.p, b.n);
        int flips = 1 + (int)tu_rng_below(&r, 4);
        for (int k = 0; k < flips; k++) {
            /* mostly the JSON, sometimes the length prefix */
            size_t at = tu_rng_below(&r, 10) == 0 ? tu_rng_below(&r, 8)
                                                  : 8 + tu_rng_below(&r, hlen);
            unsigned char v;
            switch (tu_rng_below(&r, 3)) {
            case 0: /* a random byte */
                v = (unsigned char)tu_rng_below(&r, 256);
                break;
            case 1: /* one bit */
                v = (unsigned char)(m[at] ^ (1u << tu_rng_below(&r, 8)));
                break;
            default: /* a JSON-significant character */
                v = (unsigned char)"{}[]\",:0123456789-.e \\u"[tu_rng_below(&r, 24)];
                break;
            }
            m[at] = v;
        }
        write_bytes(path, m, b.n);
        enc_st *st = NULL;
        fx->err[0] = '\0';
        int rc = enc_st_open(path, &st, fx->err, sizeof fx->err);
        if (rc != ENC_OK) {
            assert_null(st);
            assert_true(rc > ENC_OK && rc < ENC_NERR);
            assert_int_equal(strncmp(fx->err, path, strlen(path)), 0);
            bad++;
            continue;
        }
        ok++;
        /* Whatever survived must be readable through to its last byte. */
        for (size_t i = 0; i < enc_st_count(st); i++) {
            enc_st_info info;
            const char *name = enc_st_name(st, i);
            assert_int_equal(enc_st_info_get(st, name, &info), ENC_OK);
            const float *x;
            rc = enc_st_get(st, name, info.rank, info.shape, &x, fx->err, sizeof fx->err);
            if (info.dtype == ENC_ST_OTHER) {
                assert_int_equal(rc, ENC_UNSUPPORTED);
                continue;
            }
            assert_int_equal(rc, ENC_OK);
            volatile float sum = 0;
            for (size_t j = 0; j < info.nelem; j++)
                sum += x[j];
            (void)sum;
        }
        enc_st_close(st);
    }
    assert_true(bad > 0);
    assert_true(ok > 0); /* flips inside names and values often leave a valid file */
    free(m);
    free(b.p);
    free(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_errors),
        cmocka_unit_test_setup_teardown(test_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_half_types, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unaligned_f32, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reference_fixture, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lookup_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed_preamble, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed_json, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed_entries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fuzz_header, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
