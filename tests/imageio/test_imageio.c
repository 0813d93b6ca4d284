/* test_imageio.c - cmocka tests for imageio/imageio.h: NIfTI-1/2 reading and
 * reorientation to RAS (hand-written headers with hand-computed
 * expectations), every refusal of a malformed file, resampling, intensity
 * scaling, and PNG input (files written here with libpng).  Every file case
 * also runs through the memory readers, which must agree.
 *
 * Each test writes its files into a fresh directory under /tmp (the
 * state), removed by the teardown. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "imageio/imageio.h"
#include "testutil.h"

#include <fcntl.h>
#include <float.h>
#include <math.h>
#include <nifti2_io.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

/* ---- fixtures --------------------------------------------------------------- */

static int setup_dir(void **state)
{
    char *d = tu_mkdtemp();
    *state = d;
    return d != NULL ? 0 : -1;
}

static int teardown_dir(void **state)
{
    tu_rmtree(*state);
    free(*state);
    return 0;
}

/* dir/name in a static buffer (one at a time is enough here). */
static const char *P(void **state, const char *name)
{
    static char buf[4][512];
    static int turn;
    char *b = buf[turn++ & 3];
    snprintf(b, sizeof buf[0], "%s/%s", (const char *)*state, name);
    return b;
}

static void write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (n > 0)
        assert_int_equal(fwrite(data, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

static unsigned char *read_whole(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long len = ftell(f);
    assert_true(len >= 0);
    rewind(f);
    unsigned char *b = malloc((size_t)len + 1);
    assert_non_null(b);
    assert_int_equal(fread(b, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    *n = (size_t)len;
    return b;
}

static void cut_file(const char *path, size_t len)
{
    assert_int_equal(truncate(path, (off_t)len), 0);
}

/* ---- a NIfTI writer of our own ------------------------------------------------ */

/* The header fields the reader looks at; everything else is zero.  Byte
 * layouts are written out offset by offset from the NIfTI-1 and NIfTI-2
 * specifications, independently of libnifti. */
typedef struct spec {
    int version; /* 1 or 2 */
    int big;     /* big-endian file */
    int64_t dim[8];
    double pixdim[8];
    int datatype;
    double slope, inter;
    int qform_code, sform_code;
    double quat[3], qoff[3];
    double srow[3][4];
    double vox_offset; /* 0: right after the header and the extension flag */
    const char *magic; /* NULL: "n+1" / "n+2" */
} spec;

static spec spec_new(int version, int nd, int64_t nx, int64_t ny, int64_t nz, int64_t nt,
                     int datatype)
{
    spec s;
    memset(&s, 0, sizeof s);
    s.version = version;
    s.dim[0] = nd;
    s.dim[1] = nx;
    s.dim[2] = ny;
    s.dim[3] = nz;
    s.dim[4] = nt;
    for (int i = 5; i < 8; i++)
        s.dim[i] = 1;
    for (int i = 0; i < 8; i++)
        s.pixdim[i] = 1;
    s.datatype = datatype;
    return s;
}

static int dt_size(int dt)
{
    switch (dt) {
    case DT_UINT8:
    case DT_INT8:
        return 1;
    case DT_INT16:
    case DT_UINT16:
        return 2;
    case DT_INT32:
    case DT_UINT32:
    case DT_FLOAT32:
        return 4;
    case DT_INT64:
    case DT_UINT64:
    case DT_FLOAT64:
    case DT_COMPLEX64:
        return 8;
    default:
        return 1;
    }
}

static void put(unsigned char *b, size_t off, const void *v, int n, int big)
{
    const unsigned char *p = v;
    for (int i = 0; i < n; i++)
        b[off + (size_t)i] = big ? p[n - 1 - i] : p[i]; /* the host is little-endian */
}

static void put_i16(unsigned char *b, size_t off, int64_t v, int big)
{
    int16_t x = (int16_t)v;
    put(b, off, &x, 2, big);
}
static void put_i32(unsigned char *b, size_t off, int64_t v, int big)
{
    int32_t x = (int32_t)v;
    put(b, off, &x, 4, big);
}
static void put_i64(unsigned char *b, size_t off, int64_t v, int big)
{
    put(b, off, &v, 8, big);
}
static void put_f32(unsigned char *b, size_t off, double v, int big)
{
    float x = (float)v;
    put(b, off, &x, 4, big);
}
static void put_f64(unsigned char *b, size_t off, double v, int big)
{
    put(b, off, &v, 8, big);
}

/* Header + extension flag + padding + data, in memory; *len gets the size. */
static unsigned char *nii_bytes(const spec *s, const void *data, size_t nbytes, size_t *len)
{
    int big = s->big;
    size_t hsz = s->version == 1 ? 348 : 540;
    size_t off = s->vox_offset > 0 ? (size_t)s->vox_offset : hsz + 4;
    size_t total = (off > hsz + 4 ? off : hsz + 4) + nbytes;
    unsigned char *b = calloc(1, total);
    assert_non_null(b);
    int esz = dt_size(s->datatype);
    if (s->version == 1) {
        put_i32(b, 0, 348, big);
        b[38] = 'r';
        for (int i = 0; i < 8; i++) {
            put_i16(b, 40 + 2 * (size_t)i, s->dim[i], big);
            put_f32(b, 76 + 4 * (size_t)i, s->pixdim[i], big);
        }
        put_i16(b, 70, s->datatype, big);
        put_i16(b, 72, 8 * esz, big);
        put_f32(b, 108, s->vox_offset > 0 ? s->vox_offset : (double)off, big);
        put_f32(b, 112, s->slope, big);
        put_f32(b, 116, s->inter, big);
        b[123] = 2 | 8; /* xyzt_units: mm, s */
        put_i16(b, 252, s->qform_code, big);
        put_i16(b, 254, s->sform_code, big);
        for (int i = 0; i < 3; i++) {
            put_f32(b, 256 + 4 * (size_t)i, s->quat[i], big);
            put_f32(b, 268 + 4 * (size_t)i, s->qoff[i], big);
            for (int c = 0; c < 4; c++)
                put_f32(b, 280 + 16 * (size_t)i + 4 * (size_t)c, s->srow[i][c], big);
        }
        memcpy(b + 344, s->magic ? s->magic : "n+1", 4);
    } else {
        put_i32(b, 0, 540, big);
        memcpy(b + 4, s->magic ? s->magic : "n+2\0\r\n\032\n", 8);
        put_i16(b, 12, s->datatype, big);
        put_i16(b, 14, 8 * esz, big);
        for (int i = 0; i < 8; i++) {
            put_i64(b, 16 + 8 * (size_t)i, s->dim[i], big);
            put_f64(b, 104 + 8 * (size_t)i, s->pixdim[i], big);
        }
        put_i64(b, 168, (int64_t)(s->vox_offset > 0 ? s->vox_offset : (double)off), big);
        put_f64(b, 176, s->slope, big);
        put_f64(b, 184, s->inter, big);
        put_i32(b, 344, s->qform_code, big);
        put_i32(b, 348, s->sform_code, big);
        for (int i = 0; i < 3; i++) {
            put_f64(b, 352 + 8 * (size_t)i, s->quat[i], big);
            put_f64(b, 376 + 8 * (size_t)i, s->qoff[i], big);
            for (int c = 0; c < 4; c++)
                put_f64(b, 400 + 32 * (size_t)i + 8 * (size_t)c, s->srow[i][c], big);
        }
        put_i32(b, 500, 2 | 8, big);
    }
    /* data, in the file's byte order */
    unsigned char *d = b + (total - nbytes);
    for (size_t i = 0; i + (size_t)esz <= nbytes; i += (size_t)esz)
        put(d, i, (const unsigned char *)data + i, esz, big);
    *len = total;
    return b;
}

static void write_nii(const char *path, const spec *s, const void *data, size_t nbytes)
{
    size_t len;
    unsigned char *b = nii_bytes(s, data, nbytes, &len);
    size_t pl = strlen(path);
    if (pl > 3 && strcasecmp(path + pl - 3, ".gz") == 0) {
        gzFile gz = gzopen(path, "wb");
        assert_non_null(gz);
        assert_int_equal(gzwrite(gz, b, (unsigned)len), (int)len);
        assert_int_equal(gzclose(gz), Z_OK);
    } else {
        write_file(path, b, len);
    }
    free(b);
}

/* ---- the 4 x 3 x 2 reference volume ------------------------------------------- */

#define NX 4
#define NY 3
#define NZ 2

/* Stored value of file voxel (i, j, k): every voxel distinct, readable. */
static float base(int i, int j, int k)
{
    return (float)(100 * k + 10 * j + i);
}

static void base_i16(int16_t d[NX * NY * NZ])
{
    for (int k = 0; k < NZ; k++)
        for (int j = 0; j < NY; j++)
            for (int i = 0; i < NX; i++)
                d[(k * NY + j) * NX + i] = (int16_t)base(i, j, k);
}

static void write_base(const char *path, const spec *s)
{
    int16_t d[NX * NY * NZ];
    base_i16(d);
    write_nii(path, s, d, sizeof d);
}

typedef int (*mem_reader)(const void *data, size_t len, const char *name,
                          const img_limits *lim, img_vol *out, char *errbuf, size_t errlen);

/* The file's bytes through the memory reader, named by the path, must
 * give what the path reader gave: the same image (want->data != NULL), or
 * the same code with a message that starts with the path and holds the
 * needle, the out-param untouched. */
static void same_from_memory(mem_reader rd, const char *path, const img_limits *lim,
                             const img_vol *want, int code, const char *needle)
{
    size_t len;
    unsigned char *bytes = read_whole(path, &len);
    img_vol v, before;
    memset(&v, 0x5a, sizeof v);
    before = v;
    char err[512] = "";
    int rc = rd(bytes, len, path, lim, &v, err, sizeof err);
    free(bytes);
    if (rc != code || (code && (strncmp(err, path, strlen(path)) || !strstr(err, needle))))
        print_message("%s from memory: rc %d (want %d), message \"%s\"\n", path, rc, code, err);
    assert_int_equal(rc, code);
    if (code) {
        assert_int_equal(strncmp(err, path, strlen(path)), 0);
        assert_non_null(strstr(err, needle));
        assert_memory_equal(&v, &before, sizeof v);
        return;
    }
    assert_int_equal(v.nx, want->nx);
    assert_int_equal(v.ny, want->ny);
    assert_int_equal(v.nz, want->nz);
    assert_int_equal(v.format, want->format);
    assert_memory_equal(v.spacing, want->spacing, sizeof v.spacing);
    assert_memory_equal(v.affine, want->affine, sizeof v.affine);
    assert_memory_equal(v.data, want->data, (size_t)v.nx * v.ny * v.nz * sizeof *v.data);
    img_vol_free(&v);
}

static void read_ok(const char *path, img_vol *v)
{
    char err[512] = "";
    int rc = img_read_nifti(path, NULL, v, err, sizeof err);
    if (rc != IMG_OK)
        print_message("unexpected error: %s\n", err);
    assert_int_equal(rc, IMG_OK);
    assert_non_null(v->data);
    assert_int_equal(v->format, IMG_FMT_NIFTI);
    same_from_memory(img_read_nifti_mem, path, NULL, v, IMG_OK, NULL);
}

static float at(const img_vol *v, int i, int j, int k)
{
    return v->data[((size_t)k * (size_t)v->ny + (size_t)j) * (size_t)v->nx + (size_t)i];
}

typedef float (*expect_fn)(int i, int j, int k);

static void check_values(const img_vol *v, int nx, int ny, int nz, expect_fn f)
{
    assert_int_equal(v->nx, nx);
    assert_int_equal(v->ny, ny);
    assert_int_equal(v->nz, nz);
    for (int k = 0; k < nz; k++)
        for (int j = 0; j < ny; j++)
            for (int i = 0; i < nx; i++) {
                if (at(v, i, j, k) != f(i, j, k))
                    print_message("voxel (%d,%d,%d): %g, expected %g\n", i, j, k, at(v, i, j, k),
                                  f(i, j, k));
                assert_true(at(v, i, j, k) == f(i, j, k));
            }
}

static void check_affine(const img_vol *v, const double want[3][4], double tol)
{
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 4; c++) {
            if (fabs(v->affine[r][c] - want[r][c]) > tol)
                print_message("affine[%d][%d] = %g, expected %g\n", r, c, v->affine[r][c],
                              want[r][c]);
            assert_true(fabs(v->affine[r][c] - want[r][c]) <= tol);
        }
    assert_true(v->affine[3][0] == 0 && v->affine[3][1] == 0 && v->affine[3][2] == 0 &&
                v->affine[3][3] == 1);
}

static void check_spacing(const img_vol *v, double sx, double sy, double sz)
{
    assert_float_equal(v->spacing[0], sx, 1e-5);
    assert_float_equal(v->spacing[1], sy, 1e-5);
    assert_float_equal(v->spacing[2], sz, 1e-5);
}

/* Every refusal: the code, a message that starts with the path and names
 * the field, and an out-param left exactly as it was. */
static void expect_fail(const char *path, const img_limits *lim, int code, const char *needle)
{
    img_vol v, before;
    memset(&v, 0x5a, sizeof v);
    before = v;
    char err[512] = "";
    int rc = img_read_nifti(path, lim, &v, err, sizeof err);
    if (rc != code || strncmp(err, path, strlen(path)) != 0 || strstr(err, needle) == NULL)
        print_message("%s: rc %d (want %d), message \"%s\" (want \"%s\")\n", path, rc, code, err,
                      needle);
    assert_int_equal(rc, code);
    assert_int_equal(strncmp(err, path, strlen(path)), 0);
    assert_non_null(strstr(err, needle));
    assert_memory_equal(&v, &before, sizeof v);
    /* What the content says fails the same from memory; a missing file, a
     * folder or a name's extension have no memory counterpart. */
    if (code != IMG_IO && !strstr(needle, "expected a"))
        same_from_memory(img_read_nifti_mem, path, lim, NULL, code, needle);
}

/* ---- orientation ------------------------------------------------------------- */

static float f_ras(int i, int j, int k)
{
    return base(i, j, k);
}

static void test_ras_sform(void **state)
{
    const char *p = P(state, "ras.nii");
    spec s = spec_new(1, 3, NX, NY, NZ, 1, DT_INT16);
    s.sform_code = 1;
    double m[3][4] = {{2, 0, 0, 10}, {0, 3, 0, 20}, {0, 0, 4, 30}};
    memcpy(s.srow, m, sizeof m);
    write_base(p, &s);
    img_vol v;
    read_ok(p, &v);
    check_values(&v, NX, NY, NZ, f_ras);
    check_spacing(&v, 2, 3, 4);
    check_affine(&v, m, 1e-9);
    img_vol_free(&v);
}

/* LPS storage (the DICOM habit): i runs toward Left, j toward Posterior. */
static float f_lps(int i, int j, int k)
{
    return base(NX - 1 - i, NY - 1 - j, k);
}

static void test_lps_sform(void **state)
{
    const char *p = P(state, "lps.nii");
    spec s = spec_new(1, 3, NX, NY, NZ, 1, DT_INT16);
    s.sform_code = 2;
    double m[3][4] = {{-2, 0, 0, 5}, {0, -3, 0, 6}, {0, 0, 4, 7}};
    memcpy(s.srow, m, sizeof m);
    write_base(p, &s);
    img_vol v;
    read_ok(p, &v);
    check_values(&v, NX, NY, NZ, f_lps);
    check_spacing(&v, 2, 3, 4);
    /* x: 5 + (-2)(NX-1) = -1; y: 6 + (-3)(NY-1) = 0 */
    double want[3][4] = {{2, 0, 0, -1}, {0, 3, 0, 0}, {0, 0, 4, 7}};
    check_affine(&v, want, 1e-9);
    img_vol_free(&v);
}

/* i -> z, j -> x, k -> -y: out (a, b, c) is file voxel (c, a, NZ-1-b). */
static float f_perm(int a, int b, int c)
{
    return base(c, a, NZ - 1 - b);
}

static void test_permuted_sform(void **state)
{
    const char *p = P(state, "perm.nii");
    spec s = spec_new(1, 3, NX, NY, NZ, 1, DT_INT16);
    s.sform_code = 1;
    double m[3][4] = {{0, 2, 0, 10}, {0, 0, -3, 20}, {4, 0, 0, 30}};
    memcpy(s.srow, m, sizeof m);
    write_base(p, &s);
    img_vol v;
    read_ok(p, &v);
    check_values(&v, NY, NZ, NX, f_perm);
    check_spacing(&v, 2, 3, 4);
    double want[3][4] = {{2, 0, 0, 10}, {0, 3, 0, 17}, {0, 0, 4, 30}};
    check_affine(&v, want, 1e-9);
    img_vol_free(&v);
}

/* quaternion (0, 0, 1) is 180 degrees about z, qfac -1 flips k too. */
static float f_qform(int i, int j, int k)
{
    return base(NX - 1 - i, NY - 1 - j, NZ - 1 - k);
}

static void test_qform_only(void **state)
{
    const char *p = P(state, "qform.nii");
    spec s = spec_new(1, 3, NX, NY, NZ, 1, DT_INT16);
    s.qform_code = 1;
    s.sform_code = 0;
    s.quat[2] = 1;
    s.qoff[0] = 5, s.qoff[1] = 6, s.qoff[2] = 7;
    s.pixdim[0] = -1, s.pixdim[1] = 2, s.pixdim[2] = 3, s.pixdim[3] = 4;
    for (int r = 0; r < 3; r++) /* an unset sform is ignored, whatever it holds */
        for (int c = 0; c < 4; c++)
            s.srow[r][c] = NAN;
    write_base(p, &s);
    img_vol v;
    read_ok(p, &v);
    check_values(&v, NX, NY, NZ, f_qform);
    check_spacing(&v, 2, 3, 4);
    double want[3][4] = {{2, 0, 0, -1}, {0, 3, 0, 0}, {0, 0, 4, 3}};
    check_affine(&v, want, 1e-6);
    img_vol_free(&v);
}

static void test_pixdim_only(void **state)
{
    const char *p = P(state, "pixdim.nii");
    spec s = spec_new(1, 3, NX, NY, NZ, 1, DT_INT16);
    s.pixdim[1] = 2, s.pixdim[2] = 3, s.pixdim[3] = 4;
    s.quat[0] = s.quat[1] = s.quat[2] = 5; /* unset: ignored */
    write_base(p, &s);
    img_vol v;
    read_ok(p, &v);
    check_values(&v, NX, NY, NZ, f_ras);
    check_spacing(&v, 2, 3, 4);
    double want[3][4] = {{2, 0, 0, 0}, {0, 3, 0, 0}, {0, 0, 4, 0}};
    check_affine(&v, want, 0);
    img_vol_free(&v);
}

/* An LPS volume turned 10 degrees about z: the closest axes are -x, -y,
 * +z, so it reads like test_lps_sform, and the rotation stays in the
 * affine. */
static void test_oblique(void **state)
{
    const char *p = P(state, "oblique.nii");
    double c = cos(10 * M_PI / 180), sn = sin(10 * M_PI / 180);
    spec s = spec_new(1, 3, NX, NY, NZ, 1, DT_INT16);
    s.sform_code = 1;
    double m[3][4] = {{-2 * c, 3 * sn, 0, 5}, {-2 * sn, -3 * c, 0, 6}, {0, 0, 4, 7}};
    memcpy(s.srow, m, sizeof m);
    write_base(p, &s);
    img_vol v;
    read_ok(p, &v);
    check_values(&v, NX, NY, NZ, f_lps);
    check_spacing(&v, 2, 3, 4);
    double want[3][4] = {{2 * c, -3 * sn, 0, 5 - 6 * c + 6 * sn},
                         {2 * sn, 3 * c, 0, 6 - 6 * sn - 6 * c},
                         {0, 0, 4, 7}};
    check_affine(&v, want, 1e-5); /* srow is float32 in NIfTI-1 */
    img_vol_free(&v);
}

static void test_inconsistent(void **state)
{
    const char *p = P(state, "twox.nii");
    spec s = spec_new(1, 3, NX, NY, NZ, 1, DT_INT16);
    s.sform_code = 1;
    double m[3][4] = {{2, 3, 0, 0}, {0, 0.5, 0, 0}, {0, 0, 4, 0}};
    memcpy(s.srow, m, sizeof m);
    write_base(p, &s);
    expect_fail(p, NULL, IMG_FORMAT, "sform voxel axes i and j both point mostly along x");

    /* columns on distinct axes, but k = (i + j) / 2: singular */
    const char *p2 = P(state, "singular.nii");
    double m2[3][4] = {{1, 0, 0.5, 0}, {0, 1, 0.5, 0}, {0.6, 0.6, 0.6, 0}};
    memcpy(s.srow, m2, sizeof m2);
    write_base(p2, &s);
    expect_fail(p2, NULL, IMG_FORMAT, "sform is singular");

    const char *p3 = P(state, "zerocol.nii");
    double m3[3][4] = {{1, 0, 0, 0}, {0, 0, 0, 0}, {0, 0, 1, 0}};
    memcpy(s.srow, m3, sizeof m3);
    write_base(p3, &s);
    expect_fail(p3, NULL, IMG_FORMAT, "sform maps voxel axis j to length 0");
}

/* ---- datatypes and scaling ---------------------------------------------------- */

static void fill_typed(int dt, void *buf, int n)
{
    for (int i = 0; i < n; i++) {
        int signed_t = dt != DT_UINT8 && dt != DT_UINT16 && dt != DT_UINT32 && dt != DT_UINT64;
        long long x = signed_t ? i - 12 : i;
        switch (dt) {
        case DT_UINT8: ((uint8_t *)buf)[i] = (uint8_t)x; break;
        case DT_INT8: ((int8_t *)buf)[i] = (int8_t)x; break;
        case DT_INT16: ((int16_t *)buf)[i] = (int16_t)x; break;
        case DT_UINT16: ((uint16_t *)buf)[i] = (uint16_t)x; break;
        case DT_INT32: ((int32_t *)buf)[i] = (int32_t)x; break;
        case DT_UINT32: ((uint32_t *)buf)[i] = (uint32_t)x; break;
        case DT_INT64: ((int64_t *)buf)[i] = (int64_t)x; break;
        case DT_UINT64: ((uint64_t *)buf)[i] = (uint64_t)x; break;
        case DT_FLOAT32: ((float *)buf)[i] = (float)x + 0.25f; break;
        case DT_FLOAT64: ((double *)buf)[i] = (double)x + 0.25; break;
        default: fail();
        }
    }
}

static void test_datatypes(void **state)
{
    static const int types[] = {DT_UINT8, DT_INT8,  DT_INT16, DT_UINT16,  DT_INT32,
                                DT_UINT32, DT_INT64, DT_UINT64, DT_FLOAT32, DT_FLOAT64};
    const int n = NX * NY * NZ;
    for (size_t t = 0; t < sizeof types / sizeof *types; t++) {
        int dt = types[t];
        int signed_t = dt != DT_UINT8 && dt != DT_UINT16 && dt != DT_UINT32 && dt != DT_UINT64;
        double frac = dt == DT_FLOAT32 || dt == DT_FLOAT64 ? 0.25 : 0;
        unsigned char buf[8 * NX * NY * NZ];
        fill_typed(dt, buf, n);
        for (int variant = 0; variant < 4; variant++) {
            /* 0: slope 2 inter -1; 1: slope 0 (none) inter 5; 2: slope NaN
             * (none); 3: NIfTI-2 big-endian with slope 0.5 inter 3 */
            double slope = variant == 0 ? 2 : variant == 1 ? 0 : variant == 2 ? NAN : 0.5;
            double inter = variant == 0 ? -1 : variant == 1 ? 5 : variant == 2 ? 7 : 3;
            char name[64];
            snprintf(name, sizeof name, "dt%d_%d.nii", dt, variant);
            const char *p = P(state, name);
            spec s = spec_new(variant == 3 ? 2 : 1, 3, NX, NY, NZ, 1, dt);
            s.big = variant == 3;
            s.slope = slope;
            s.inter = inter;
            write_nii(p, &s, buf, (size_t)n * (size_t)dt_size(dt));
            img_vol v;
            read_ok(p, &v);
            assert_int_equal(v.nx * v.ny * v.nz, n);
            for (int i = 0; i < n; i++) {
                double x = (signed_t ? i - 12 : i) + frac;
                double want = variant == 0 ? 2 * x - 1 : variant == 3 ? 0.5 * x + 3 : x;
                if (v.data[i] != (float)want)
                    print_message("datatype %d variant %d voxel %d: %g, expected %g\n", dt,
                                  variant, i, v.data[i], want);
                assert_true(v.data[i] == (float)want);
            }
            img_vol_free(&v);
        }
    }
}

/* Big values: INT64 and UINT64 beyond 2^53 lose precision but not sign. */
static void test_datatype_extremes(void **state)
{
    const char *p = P(state, "u64.nii");
    spec s = spec_new(1, 2, 2, 1, 1, 1, DT_UINT64);
    uint64_t d[2] = {UINT64_MAX, 1};
    write_nii(p, &s, d, sizeof d);
    img_vol v;
    read_ok(p, &v);
    assert_true(v.data[0] == 18446744073709551616.0f);
    assert_true(v.data[1] == 1.0f);
    img_vol_free(&v);

    const char *p2 = P(state, "i8.nii");
    spec s2 = spec_new(1, 2, 2, 1, 1, 1, DT_INT8);
    int8_t e[2] = {-128, 127};
    write_nii(p2, &s2, e, sizeof e);
    read_ok(p2, &v);
    assert_true(v.data[0] == -128.0f && v.data[1] == 127.0f);
    img_vol_free(&v);
}

/* ---- NIfTI-2, byte order, compression ------------------------------------------ */

static void test_nifti2(void **state)
{
    double d[NX * NY * NZ];
    for (int k = 0; k < NZ; k++)
        for (int j = 0; j < NY; j++)
            for (int i = 0; i < NX; i++)
                d[(k * NY + j) * NX + i] = base(i, j, k);
    for (int big = 0; big < 2; big++) {
        const char *p = P(state, big ? "n2be.nii" : "n2.nii");
        spec s = spec_new(2, 3, NX, NY, NZ, 1, DT_FLOAT64);
        s.big = big;
        s.sform_code = 1;
        double m[3][4] = {{0, 2, 0, 10}, {0, 0, -3, 20}, {4, 0, 0, 30}};
        memcpy(s.srow, m, sizeof m);
        write_nii(p, &s, d, sizeof d);
        img_vol v;
        read_ok(p, &v);
        check_values(&v, NY, NZ, NX, f_perm);
        double want[3][4] = {{2, 0, 0, 10}, {0, 3, 0, 17}, {0, 0, 4, 30}};
        check_affine(&v, want, 1e-12);
        img_vol_free(&v);
    }
}

static void test_big_endian_n1(void **state)
{
    const char *p = P(state, "be.nii");
    spec s = spec_new(1, 3, NX, NY, NZ, 1, DT_INT16);
    s.big = 1;
    s.sform_code = 1;
    double m[3][4] = {{-2, 0, 0, 5}, {0, -3, 0, 6}, {0, 0, 4, 7}};
    memcpy(s.srow, m, sizeof m);
    write_base(p, &s);
    img_vol v;
    read_ok(p, &v);
    check_values(&v, NX, NY, NZ, f_lps);
    img_vol_free(&v);
}

static void test_gz(void **state)
{
    const char *p = P(state, "lps.nii.gz");
    spec s = spec_new(1, 3, NX, NY, NZ, 1, DT_INT16);
    s.sform_code = 1;
    double m[3][4] = {{-2, 0, 0, 5}, {0, -3, 0, 6}, {0, 0, 4, 7}};
    memcpy(s.srow, m, sizeof m);
    write_base(p, &s);
    img_vol v;
    read_ok(p, &v);
    check_values(&v, NX, NY, NZ, f_lps);
    img_vol_free(&v);

    /* upper-case extensions are the same thing */
    const char *q = P(state, "UPPER.NII");
    write_base(q, &s);
    read_ok(q, &v);
    check_values(&v, NX, NY, NZ, f_lps);
    img_vol_free(&v);
    const char *qz = P(state, "UPPER.NII.GZ");
    write_base(qz, &s);
    read_ok(qz, &v);
    check_values(&v, NX, NY, NZ, f_lps);
    img_vol_free(&v);
}

/* A file written by libnifti itself (its .nii.gz writer, sform from
 * sto_xyz): x flipped, values 0.25 * index. */
static float f_libnifti(int i, int j, int k)
{
    return 0.25f * (float)((k * NY + j) * NX + (NX - 1 - i));
}

static void test_libnifti_written(void **state)
{
    const char *p = P(state, "by_libnifti.nii.gz");
    int64_t dims[8] = {3, NX, NY, NZ, 1, 1, 1, 1};
    nifti_image *nim = nifti_make_new_nim(dims, DT_FLOAT32, 1);
    assert_non_null(nim);
    float *d = nim->data;
    for (int i = 0; i < NX * NY * NZ; i++)
        d[i] = 0.25f * (float)i;
    nim->sform_code = NIFTI_XFORM_SCANNER_ANAT;
    memset(&nim->sto_xyz, 0, sizeof nim->sto_xyz);
    nim->sto_xyz.m[0][0] = -1.5, nim->sto_xyz.m[0][3] = 40;
    nim->sto_xyz.m[1][1] = 1.5, nim->sto_xyz.m[1][3] = -20;
    nim->sto_xyz.m[2][2] = 2.0, nim->sto_xyz.m[2][3] = 3;
    nim->sto_xyz.m[3][3] = 1;
    assert_int_equal(nifti_set_filenames(nim, p, 0, 1), 0);
    nifti_image_write(nim);
    nifti_image_free(nim);
    img_vol v;
    read_ok(p, &v);
    check_values(&v, NX, NY, NZ, f_libnifti);
    check_spacing(&v, 1.5, 1.5, 2);
    double want[3][4] = {{1.5, 0, 0, 40 - 1.5 * (NX - 1)}, {0, 1.5, 0, -20}, {0, 0, 2, 3}};
    check_affine(&v, want, 1e-6);
    img_vol_free(&v);
}

/* 4D: volume t holds base + 1000 t; only t = 0 comes back. */
static void test_4d_first_volume(void **state)
{
    int16_t d[NX * NY * NZ * 3];
    for (int t = 0; t < 3; t++) {
        base_i16(d + t * NX * NY * NZ);
        for (int i = 0; i < NX * NY * NZ; i++)
            d[t * NX * NY * NZ + i] = (int16_t)(d[t * NX * NY * NZ + i] + 1000 * t);
    }
    const char *names[2] = {"four.nii", "four.nii.gz"};
    for (int g = 0; g < 2; g++) {
        const char *p = P(state, names[g]);
        spec s = spec_new(1, 4, NX, NY, NZ, 3, DT_INT16);
        s.pixdim[4] = 2.5;
        write_nii(p, &s, d, sizeof d);
        img_vol v;
        read_ok(p, &v);
        check_values(&v, NX, NY, NZ, f_ras);
        img_vol_free(&v);
    }
    /* 5D as well */
    const char *p5 = P(state, "five.nii");
    spec s5 = spec_new(2, 5, NX, NY, NZ, 1, DT_INT16);
    s5.dim[5] = 3;
    write_nii(p5, &s5, d, sizeof d);
    img_vol v;
    read_ok(p5, &v);
    check_values(&v, NX, NY, NZ, f_ras);
    img_vol_free(&v);

    /* every declared volume must be in an uncompressed file */
    const char *p2 = P(state, "four_short.nii");
    spec s = spec_new(1, 4, NX, NY, NZ, 3, DT_INT16);
    write_nii(p2, &s, d, sizeof d - 2);
    expect_fail(p2, NULL, IMG_FORMAT, "truncated file");
}

static float f_2d(int i, int j, int k)
{
    (void)k;
    return base(i, j, 0);
}

static void test_2d(void **state)
{
    /* dim[0] = 2: dim[3] and pixdim[3] are unused whatever they say */
    const char *p = P(state, "flat.nii");
    spec s = spec_new(1, 2, NX, NY, 0, 0, DT_INT16);
    s.pixdim[3] = 0;
    s.pixdim[1] = 0.5, s.pixdim[2] = 0.25;
    write_base(p, &s); /* writes the 2 slices; the header covers one */
    img_vol v;
    read_ok(p, &v);
    check_values(&v, NX, NY, 1, f_2d);
    check_spacing(&v, 0.5, 0.25, 1);
    img_vol_free(&v);

    char err[512];
    assert_int_equal(img_read_2d(p, NULL, &v, err, sizeof err), IMG_OK);
    check_values(&v, NX, NY, 1, f_2d);
    img_vol_free(&v);

    /* A coronal image: i -> x, j -> z, k -> y.  As a volume it is
     * (NX, 1, NY); as a 2D image the singleton moves to k. */
    const char *c = P(state, "coronal.nii.gz");
    spec sc = spec_new(1, 2, NX, NY, 1, 1, DT_INT16);
    sc.sform_code = 1;
    double m[3][4] = {{1, 0, 0, 0}, {0, 0, 1, 0}, {0, 2, 0, 0}};
    memcpy(sc.srow, m, sizeof m);
    write_base(c, &sc);
    read_ok(c, &v);
    assert_int_equal(v.nx, NX);
    assert_int_equal(v.ny, 1);
    assert_int_equal(v.nz, NY);
    img_vol_free(&v);
    assert_int_equal(img_read_2d(c, NULL, &v, err, sizeof err), IMG_OK);
    check_values(&v, NX, NY, 1, f_2d);
    check_spacing(&v, 1, 2, 1);
    double want[3][4] = {{1, 0, 0, 0}, {0, 0, 1, 0}, {0, 2, 0, 0}};
    check_affine(&v, want, 0);
    img_vol_free(&v);

    /* a 2D sform that leaves k all zero: k is made the plane's normal */
    const char *z = P(state, "coronal0.nii");
    double m0[3][4] = {{1, 0, 0, 0}, {0, 0, 0, 0}, {0, 2, 0, 0}};
    memcpy(sc.srow, m0, sizeof m0);
    write_base(z, &sc);
    assert_int_equal(img_read_2d(z, NULL, &v, err, sizeof err), IMG_OK);
    check_values(&v, NX, NY, 1, f_2d);
    img_vol_free(&v);

    /* a real volume is not a 2D image */
    const char *vol = P(state, "vol.nii");
    spec s3 = spec_new(1, 3, NX, NY, NZ, 1, DT_INT16);
    write_base(vol, &s3);
    img_vol before;
    memset(&v, 0x5a, sizeof v);
    before = v;
    assert_int_equal(img_read_2d(vol, NULL, &v, err, sizeof err), IMG_INVAL);
    assert_int_equal(strncmp(err, vol, strlen(vol)), 0);
    assert_non_null(strstr(err, "4 x 3 x 2"));
    assert_memory_equal(&v, &before, sizeof v);

    const char *odd = P(state, "image.jpg");
    write_file(odd, "x", 1);
    assert_int_equal(img_read_2d(odd, NULL, &v, err, sizeof err), IMG_UNSUPPORTED);
    assert_int_equal(strncmp(err, odd, strlen(odd)), 0);
}

/* ---- refusals -------------------------------------------------------------------- */

static void test_truncated_nii(void **state)
{
    const char *p = P(state, "cut.nii");
    spec s = spec_new(1, 3, NX, NY, NZ, 1, DT_INT16);
    write_base(p, &s);
    cut_file(p, 352 + 20);
    expect_fail(p, NULL, IMG_FORMAT, "file holds 372 bytes, the header needs 400");
    cut_file(p, 200);
    expect_fail(p, NULL, IMG_FORMAT, "no NIfTI-1 or NIfTI-2 header");
    cut_file(p, 0);
    expect_fail(p, NULL, IMG_FORMAT, "no NIfTI-1 or NIfTI-2 header");
}

/* A gzip of incompressible voxels, cut everywhere that matters: in the
 * gzip header, in the NIfTI header, in the voxels, in the CRC trailer; and
 * one corrupted byte. */
static void test_truncated_gz(void **state)
{
    enum { N = 16 };
    static float d[N * N * N];
    tu_rng r;
    tu_rng_seed(&r, 7);
    tu_fill_normal(&r, d, N * N * N);
    const char *p = P(state, "cut.nii.gz");
    spec s = spec_new(1, 3, N, N, N, 1, DT_FLOAT32);
    write_nii(p, &s, d, sizeof d);
    size_t len;
    unsigned char *whole = read_whole(p, &len);
    assert_true(len > 10000);
    img_vol v;
    read_ok(p, &v);
    assert_true(v.data[5] == d[5]);
    img_vol_free(&v);

    const size_t cuts[] = {5, 30, 150, len / 2, len - 6, len - 1};
    const char *why[] = {"no NIfTI",         "no NIfTI",         "voxel data ends after",
                         "voxel data ends after", "after the voxels", "after the voxels"};
    for (size_t c = 0; c < sizeof cuts / sizeof *cuts; c++) {
        write_file(p, whole, cuts[c]);
        expect_fail(p, NULL, IMG_FORMAT, why[c]);
    }
    whole[len / 2] ^= 0x55;
    write_file(p, whole, len);
    expect_fail(p, NULL, IMG_FORMAT, "corrupt");
    free(whole);

    /* a gzip stream under a plain .nii name is still recognised */
    write_nii(P(state, "real.nii.gz"), &s, d, sizeof d);
    whole = read_whole(P(state, "real.nii.gz"), &len);
    const char *q = P(state, "gzip_inside.nii");
    write_file(q, whole, len);
    free(whole);
    /* the gzip magic decides, not the name: read as the .nii.gz it is */
    read_ok(q, &v);
    assert_true(v.data[5] == d[5]);
    img_vol_free(&v);
}

static void test_bad_dims(void **state)
{
    const char *p = P(state, "dims.nii");
    spec s = spec_new(1, 3, NX, NY, 0, 1, DT_INT16);
    write_base(p, &s);
    expect_fail(p, NULL, IMG_FORMAT, "dim[3] = 0");
    s = spec_new(1, 3, NX, -3, NZ, 1, DT_INT16);
    write_base(p, &s);
    expect_fail(p, NULL, IMG_FORMAT, "dim[2] = -3");
    s = spec_new(1, 0, NX, NY, NZ, 1, DT_INT16);
    write_base(p, &s);
    expect_fail(p, NULL, IMG_FORMAT, "dim[0] = 0");
    s = spec_new(1, 1, NX, NY, NZ, 1, DT_INT16);
    write_base(p, &s);
    expect_fail(p, NULL, IMG_FORMAT, "dim[0] = 1");
    s = spec_new(2, 8, NX, NY, NZ, 1, DT_INT16);
    write_base(p, &s);
    expect_fail(p, NULL, IMG_FORMAT, "dim[0] = 8");
    s = spec_new(1, 4, NX, NY, NZ, 0, DT_INT16);
    write_base(p, &s);
    expect_fail(p, NULL, IMG_FORMAT, "dim[4] = 0");
}

/* Sizes are refused from the header alone: none of these files holds more
 * than a few bytes of voxels, and under ASan an attempt to allocate what
 * they declare would abort the test. */
static void test_huge_dims(void **state)
{
    const char *p = P(state, "huge.nii");
    spec s = spec_new(1, 3, 30000, 30000, 30000, 1, DT_INT16);
    write_base(p, &s);
    expect_fail(p, NULL, IMG_TOOBIG, "dims 30000 x 30000 x 30000");

    const char *p2 = P(state, "huge2.nii");
    s = spec_new(2, 3, (int64_t)1 << 40, (int64_t)1 << 40, (int64_t)1 << 40, 1, DT_UINT8);
    write_base(p2, &s);
    expect_fail(p2, NULL, IMG_TOOBIG, "dims 1099511627776 x 1099511627776 x 1099511627776");

    /* a small first volume, but 2^62 of them */
    const char *p3 = P(state, "huge4d.nii");
    s = spec_new(2, 4, NX, NY, NZ, (int64_t)1 << 62, DT_INT16);
    write_base(p3, &s);
    expect_fail(p3, NULL, IMG_TOOBIG, "dim[1..4] multiply past 2^63");

    /* with the limit lifted, the file length still refuses it */
    img_limits lift = {.max_voxels = SIZE_MAX};
    const char *p4 = P(state, "long.nii");
    s = spec_new(1, 3, 2000, 2000, 2000, 1, DT_INT16);
    write_base(p4, &s);
    expect_fail(p4, &lift, IMG_FORMAT, "the header needs 16000000352");

    /* the limit itself: 24 voxels pass a limit of 24, not of 23 */
    const char *p5 = P(state, "small.nii");
    s = spec_new(1, 3, NX, NY, NZ, 1, DT_INT16);
    write_base(p5, &s);
    img_limits l23 = {.max_voxels = 23}, l24 = {.max_voxels = 24};
    expect_fail(p5, &l23, IMG_TOOBIG, "exceed the limit of 23");
    img_vol v;
    char err[256];
    assert_int_equal(img_read_nifti(p5, &l24, &v, err, sizeof err), IMG_OK);
    img_vol_free(&v);
}

static void test_not_finite(void **state)
{
    const char *p = P(state, "nan.nii");
    float d[NX * NY * NZ];
    for (int i = 0; i < NX * NY * NZ; i++)
        d[i] = (float)i;
    d[5] = NAN;
    d[7] = INFINITY;
    d[9] = -INFINITY;
    spec s = spec_new(1, 3, NX, NY, NZ, 1, DT_FLOAT32);
    write_nii(p, &s, d, sizeof d);
    expect_fail(p, NULL, IMG_FORMAT, "3 voxels are not finite");

    const char *p2 = P(state, "big64.nii");
    double e[2] = {1e300, 1};
    s = spec_new(1, 2, 2, 1, 1, 1, DT_FLOAT64);
    write_nii(p2, &s, e, sizeof e);
    expect_fail(p2, NULL, IMG_FORMAT, "1 voxels are not finite");

    const char *p3 = P(state, "slope.nii");
    s = spec_new(1, 3, NX, NY, NZ, 1, DT_INT16);
    s.slope = 1e38;
    write_base(p3, &s);
    expect_fail(p3, NULL, IMG_FORMAT, "voxels are not finite after scl_slope/scl_inter");

    const char *p4 = P(state, "inter.nii");
    s = spec_new(1, 3, NX, NY, NZ, 1, DT_INT16);
    s.slope = 1;
    s.inter = INFINITY;
    write_base(p4, &s);
    expect_fail(p4, NULL, IMG_FORMAT, "scl_slope = 1 but scl_inter = inf");
}

static void test_bad_geometry(void **state)
{
    const char *p = P(state, "geom.nii");
    spec s = spec_new(1, 3, NX, NY, NZ, 1, DT_INT16);
    s.pixdim[2] = -1;
    write_base(p, &s);
    expect_fail(p, NULL, IMG_FORMAT, "sform and qform are both unset and pixdim[2] = -1");

    s = spec_new(1, 3, NX, NY, NZ, 1, DT_INT16);
    s.pixdim[1] = INFINITY;
    write_base(p, &s);
    expect_fail(p, NULL, IMG_FORMAT, "pixdim[1] = inf");

    s = spec_new(2, 3, NX, NY, NZ, 1, DT_INT16);
    s.pixdim[3] = NAN;
    write_base(p, &s);
    expect_fail(p, NULL, IMG_FORMAT, "pixdim[3] = ");

    s = spec_new(1, 3, NX, NY, NZ, 1, DT_INT16);
    s.qform_code = 1;
    s.pixdim[3] = 0;
    write_base(p, &s);
    expect_fail(p, NULL, IMG_FORMAT, "qform_code = 1 but pixdim[3] = 0");

    s = spec_new(1, 3, NX, NY, NZ, 1, DT_INT16);
    s.qform_code = 1;
    s.quat[0] = s.quat[1] = s.quat[2] = 1;
    write_base(p, &s);
    expect_fail(p, NULL, IMG_FORMAT, "has norm > 1");

    s = spec_new(1, 3, NX, NY, NZ, 1, DT_INT16);
    s.qform_code = 1;
    s.qoff[1] = NAN;
    write_base(p, &s);
    expect_fail(p, NULL, IMG_FORMAT, "qoffset_y");

    s = spec_new(1, 3, NX, NY, NZ, 1, DT_INT16);
    s.sform_code = 1;
    s.srow[0][0] = s.srow[1][1] = s.srow[2][2] = 1;
    s.srow[1][1] = NAN;
    write_base(p, &s);
    expect_fail(p, NULL, IMG_FORMAT, "srow_y[1] = nan");

    /* pixdim does not matter when the sform is set */
    s.srow[1][1] = 1;
    s.pixdim[1] = -5;
    write_base(p, &s);
    img_vol v;
    read_ok(p, &v);
    img_vol_free(&v);
}

static void test_bad_datatype(void **state)
{
    const char *p = P(state, "dt.nii");
    spec s = spec_new(1, 3, NX, NY, NZ, 1, DT_COMPLEX64);
    write_base(p, &s);
    expect_fail(p, NULL, IMG_UNSUPPORTED, "datatype = 32 (COMPLEX64)");
    s.datatype = DT_RGB24;
    write_base(p, &s);
    expect_fail(p, NULL, IMG_UNSUPPORTED, "datatype = 128 (RGB24)");
    s.datatype = 9999;
    write_base(p, &s);
    expect_fail(p, NULL, IMG_UNSUPPORTED, "datatype = 9999 (unknown)");
    s.datatype = 0;
    write_base(p, &s);
    expect_fail(p, NULL, IMG_UNSUPPORTED, "datatype = 0");
}

static void test_bad_files(void **state)
{
    expect_fail(P(state, "missing.nii"), NULL, IMG_IO, "No such file");
    const char *dir = P(state, "dir.nii");
    assert_int_equal(mkdir(dir, 0700), 0);
    expect_fail(dir, NULL, IMG_IO, "not a regular file");
    const char *img = P(state, "x.img");
    write_file(img, "x", 1);
    expect_fail(img, NULL, IMG_UNSUPPORTED, "expected a .nii or .nii.gz");

    const char *g = P(state, "garbage.nii");
    char junk[1000];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (char)(i * 7 + 3);
    write_file(g, junk, sizeof junk);
    expect_fail(g, NULL, IMG_FORMAT, "no NIfTI");

    const char *p = P(state, "magic.nii");
    spec s = spec_new(1, 3, NX, NY, NZ, 1, DT_INT16);
    s.magic = "abc";
    write_base(p, &s);
    expect_fail(p, NULL, IMG_FORMAT, "magic is not \"n+1\"");
    s.magic = "ni1";
    write_base(p, &s);
    expect_fail(p, NULL, IMG_UNSUPPORTED, ".hdr/.img pair");
    s = spec_new(2, 3, NX, NY, NZ, 1, DT_INT16);
    s.magic = "ni2\0\r\n\032\n";
    write_base(p, &s);
    expect_fail(p, NULL, IMG_UNSUPPORTED, ".hdr/.img pair");

    s = spec_new(1, 3, NX, NY, NZ, 1, DT_INT16);
    s.vox_offset = 100;
    write_base(p, &s);
    expect_fail(p, NULL, IMG_FORMAT, "vox_offset = 100");
    s.vox_offset = 352.5;
    write_base(p, &s);
    expect_fail(p, NULL, IMG_FORMAT, "vox_offset = 352.5");

    /* a later vox_offset (extensions in between) is fine */
    s.vox_offset = 480;
    write_base(p, &s);
    img_vol v;
    read_ok(p, &v);
    check_values(&v, NX, NY, NZ, f_ras);
    img_vol_free(&v);

    /* NULL errbuf is allowed */
    assert_int_equal(img_read_nifti(P(state, "missing.nii"), NULL, &v, NULL, 0), IMG_IO);
}

/* libnifti and libpng both like stderr; neither may print through us. */
static void test_quiet(void **state)
{
    const char *log = P(state, "stderr.txt");
    char logpath[512];
    snprintf(logpath, sizeof logpath, "%s", log);
    /* the broken files */
    const char *tn = P(state, "q_cut.nii.gz");
    spec s = spec_new(1, 3, 16, 16, 16, 1, DT_FLOAT32);
    static float d[16 * 16 * 16];
    tu_rng r;
    tu_rng_seed(&r, 3);
    tu_fill_normal(&r, d, 16 * 16 * 16);
    write_nii(tn, &s, d, sizeof d);
    size_t len;
    unsigned char *whole = read_whole(tn, &len);
    write_file(tn, whole, len / 2);
    free(whole);
    const char *tp = P(state, "q_cut.png");
    write_file(tp, "\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0", 18);
    char tn_s[512], tp_s[512];
    snprintf(tn_s, sizeof tn_s, "%s", tn);
    snprintf(tp_s, sizeof tp_s, "%s", tp);

    fflush(stderr);
    int saved = dup(2);
    assert_true(saved >= 0);
    int fd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    dup2(fd, 2);
    close(fd);
    img_vol v;
    char err[256];
    int rc1 = img_read_nifti(tn_s, NULL, &v, err, sizeof err);
    int rc2 = img_read_png(tp_s, NULL, &v, err, sizeof err);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    assert_int_equal(rc1, IMG_FORMAT);
    assert_int_equal(rc2, IMG_FORMAT);
    struct stat st;
    assert_int_equal(stat(logpath, &st), 0);
    assert_int_equal(st.st_size, 0);
}

/* ---- resampling ---------------------------------------------------------------- */

static float ramp(double i, double j, double k)
{
    return (float)(1.5 * i + 2.0 * j - 0.5 * k + 3.0);
}

static img_vol make_ramp(int nx, int ny, int nz, float sp)
{
    img_vol v;
    memset(&v, 0, sizeof v);
    v.nx = nx, v.ny = ny, v.nz = nz;
    v.data = malloc((size_t)nx * ny * nz * sizeof *v.data);
    assert_non_null(v.data);
    for (int k = 0; k < nz; k++)
        for (int j = 0; j < ny; j++)
            for (int i = 0; i < nx; i++)
                v.data[((size_t)k * ny + j) * nx + i] = ramp(i, j, k);
    for (int a = 0; a < 3; a++) {
        v.spacing[a] = sp;
        v.affine[a][a] = sp;
    }
    v.affine[0][3] = 10, v.affine[1][3] = 20, v.affine[2][3] = 30;
    v.affine[3][3] = 1;
    return v;
}

/* Half the spacing over the same field of view: output voxel o sits at
 * input position o / 2 - 1/4, so every voxel but the outermost (which
 * clamp to the edge) reproduces the ramp exactly. */
static void test_resample_ramp(void **state)
{
    (void)state;
    img_vol in = make_ramp(6, 5, 4, 2), out;
    const float ts[3] = {1, 1, 1};
    char err[256];
    assert_int_equal(img_resample(&in, ts, 12, 10, 8, &out, err, sizeof err), IMG_OK);
    assert_int_equal(out.nx, 12);
    assert_int_equal(out.ny, 10);
    assert_int_equal(out.nz, 8);
    check_spacing(&out, 1, 1, 1);
    for (int k = 1; k < 7; k++)
        for (int j = 1; j < 9; j++)
            for (int i = 1; i < 11; i++)
                assert_float_equal(at(&out, i, j, k), ramp(i / 2.0 - 0.25, j / 2.0 - 0.25,
                                                           k / 2.0 - 0.25), 1e-4);
    /* the corner clamps to input voxel (0,0,0) */
    assert_float_equal(at(&out, 0, 0, 0), ramp(0, 0, 0), 1e-6);
    /* world position of output voxel o equals that of input position o/2 - 1/4 */
    double want[3][4] = {{1, 0, 0, 9.5}, {0, 1, 0, 19.5}, {0, 0, 1, 29.5}};
    check_affine(&out, want, 1e-9);
    img_vol_free(&out);

    /* a coarser grid: 3 mm from 2 mm, odd sizes; exact wherever it
     * interpolates between voxel centres */
    const float ts2[3] = {3, 3, 3};
    assert_int_equal(img_resample(&in, ts2, 4, 3, 3, &out, err, sizeof err), IMG_OK);
    for (int k = 0; k < 3; k++)
        for (int j = 0; j < 3; j++)
            for (int i = 0; i < 4; i++) {
                double ci = 2.5 + (i - 1.5) * 1.5, cj = 2 + (j - 1) * 1.5,
                       ck = 1.5 + (k - 1) * 1.5;
                int inside = ci >= 0 && ci <= 5 && cj >= 0 && cj <= 4 && ck >= 0 && ck <= 3;
                if (inside)
                    assert_float_equal(at(&out, i, j, k), ramp(ci, cj, ck), 1e-4);
            }
    img_vol_free(&out);
    img_vol_free(&in);
}

/* Same spacing, bigger and smaller grids: pure centre pad and crop. */
static void test_resample_crop_pad(void **state)
{
    (void)state;
    img_vol in = make_ramp(6, 5, 4, 1), out;
    const float ts[3] = {1, 1, 1};
    char err[256];
    float mn = ramp(0, 0, 3);
    /* pad by one on each side */
    assert_int_equal(img_resample(&in, ts, 8, 7, 6, &out, err, sizeof err), IMG_OK);
    for (int k = 0; k < 6; k++)
        for (int j = 0; j < 7; j++)
            for (int i = 0; i < 8; i++) {
                int in_fov = i >= 1 && i <= 6 && j >= 1 && j <= 5 && k >= 1 && k <= 4;
                float want = in_fov ? ramp(i - 1, j - 1, k - 1) : mn;
                assert_float_equal(at(&out, i, j, k), want, 1e-5);
            }
    double want[3][4] = {{1, 0, 0, 9}, {0, 1, 0, 19}, {0, 0, 1, 29}};
    check_affine(&out, want, 1e-12);
    img_vol_free(&out);
    /* crop by one on each side */
    assert_int_equal(img_resample(&in, ts, 4, 3, 2, &out, err, sizeof err), IMG_OK);
    for (int k = 0; k < 2; k++)
        for (int j = 0; j < 3; j++)
            for (int i = 0; i < 4; i++)
                assert_float_equal(at(&out, i, j, k), ramp(i + 1, j + 1, k + 1), 1e-5);
    img_vol_free(&out);
    /* a single slice: 2D input keeps working */
    img_vol flat = make_ramp(6, 5, 1, 1);
    assert_int_equal(img_resample(&flat, ts, 6, 5, 1, &out, err, sizeof err), IMG_OK);
    assert_memory_equal(out.data, flat.data, 30 * sizeof(float));
    img_vol_free(&out);
    img_vol_free(&flat);

    /* refusals */
    img_vol untouched;
    memset(&untouched, 0x5a, sizeof untouched);
    img_vol o2 = untouched;
    const float bad[3] = {1, 0, 1};
    assert_int_equal(img_resample(&in, bad, 4, 4, 4, &o2, err, sizeof err), IMG_INVAL);
    assert_non_null(strstr(err, "target spacing[1] = 0"));
    const float nanv[3] = {1, 1, NAN};
    assert_int_equal(img_resample(&in, nanv, 4, 4, 4, &o2, err, sizeof err), IMG_INVAL);
    assert_int_equal(img_resample(&in, ts, 0, 4, 4, &o2, err, sizeof err), IMG_INVAL);
    assert_non_null(strstr(err, "output size[0] = 0"));
    assert_int_equal(img_resample(&in, ts, INT32_MAX, INT32_MAX, INT32_MAX, &o2, err,
                                      sizeof err),
                     IMG_TOOBIG);
    assert_memory_equal(&o2, &untouched, sizeof o2);
    img_vol_free(&in);
}

/* ---- intensities ----------------------------------------------------------------- */

static void test_ct_window(void **state)
{
    (void)state;
    float d[6] = {-2000, -1000, 0, 400, 1000, NAN};
    img_vol v = {.data = d, .nx = 6, .ny = 1, .nz = 1};
    img_ct_window(&v, -1000, 400);
    assert_float_equal(d[0], 0, 0);
    assert_float_equal(d[1], 0, 0);
    assert_float_equal(d[2], 1000.0 / 1400.0, 1e-6);
    assert_float_equal(d[3], 1, 1e-7);
    assert_float_equal(d[4], 1, 0);
    assert_float_equal(d[5], 0, 0);
}

/* numpy's default percentile, on a sorted copy */
static double ref_percentile(const float *sorted, size_t m, double p)
{
    double pos = p / 100.0 * (double)(m - 1);
    size_t k = (size_t)floor(pos);
    if (k + 1 >= m)
        return sorted[m - 1];
    return sorted[k] + (pos - (double)k) * ((double)sorted[k + 1] - sorted[k]);
}

static int cmpf(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static void check_mr(float *d, size_t n, float plo, float phi)
{
    float *copy = malloc(n * sizeof *copy), *sorted = malloc(n * sizeof *sorted);
    assert_non_null(copy);
    assert_non_null(sorted);
    memcpy(copy, d, n * sizeof *d);
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (isfinite(d[i]))
            sorted[m++] = d[i];
    qsort(sorted, m, sizeof *sorted, cmpf);
    double lo = ref_percentile(sorted, m, plo), hi = ref_percentile(sorted, m, phi);
    img_vol v = {.data = d, .nx = (int)n, .ny = 1, .nz = 1};
    assert_int_equal(img_mr_scale(&v, plo, phi), IMG_OK);
    for (size_t i = 0; i < n; i++) {
        double want = isfinite(copy[i]) ? (copy[i] - lo) / (hi - lo) : 0;
        want = want < 0 ? 0 : want > 1 ? 1 : want;
        assert_float_equal(d[i], want, 1e-5);
    }
    free(copy);
    free(sorted);
}

static void test_mr_scale(void **state)
{
    (void)state;
    /* 0..100 shuffled, plus a NaN: percentiles 0.5 and 99.5 are 0.5, 99.5 */
    float d[102];
    tu_rng r;
    tu_rng_seed(&r, 11);
    for (int i = 0; i <= 100; i++)
        d[i] = (float)i;
    for (int i = 100; i > 0; i--) {
        int j = (int)tu_rng_below(&r, (uint64_t)i + 1);
        float t = d[i];
        d[i] = d[j];
        d[j] = t;
    }
    d[101] = NAN;
    float orig[102];
    memcpy(orig, d, sizeof d);
    img_vol v = {.data = d, .nx = 102, .ny = 1, .nz = 1};
    assert_int_equal(img_mr_scale(&v, 0.5f, 99.5f), IMG_OK);
    for (int i = 0; i < 101; i++) {
        double want = (orig[i] - 0.5) / 99.0;
        want = want < 0 ? 0 : want > 1 ? 1 : want;
        assert_float_equal(d[i], want, 1e-6);
    }
    assert_float_equal(d[101], 0, 0);

    /* random, sorted, reversed and duplicate-heavy inputs against a sort */
    enum { N = 100003 };
    float *big = malloc(N * sizeof *big);
    assert_non_null(big);
    tu_fill_normal(&r, big, N);
    check_mr(big, N, 0.5f, 99.5f);
    for (int i = 0; i < N; i++)
        big[i] = (float)i;
    check_mr(big, N, 1, 99);
    for (int i = 0; i < N; i++)
        big[i] = (float)(N - i);
    check_mr(big, N, 2.5f, 97.5f);
    for (int i = 0; i < N; i++)
        big[i] = (float)(tu_rng_below(&r, 3));
    check_mr(big, N, 10, 99.99f);
    free(big);

    /* constant: zeros, no division by zero */
    float c[5] = {7, 7, 7, 7, NAN};
    img_vol cv = {.data = c, .nx = 5, .ny = 1, .nz = 1};
    assert_int_equal(img_mr_scale(&cv, 0.5f, 99.5f), IMG_OK);
    for (int i = 0; i < 5; i++)
        assert_float_equal(c[i], 0, 0);
    /* nothing finite at all */
    float nn[2] = {NAN, INFINITY};
    img_vol nv = {.data = nn, .nx = 2, .ny = 1, .nz = 1};
    assert_int_equal(img_mr_scale(&nv, 0.5f, 99.5f), IMG_OK);
    assert_float_equal(nn[0], 0, 0);
    assert_float_equal(nn[1], 0, 0);
    /* bad percentiles */
    assert_int_equal(img_mr_scale(&cv, 50, 10), IMG_INVAL);
    assert_int_equal(img_mr_scale(&cv, -1, 10), IMG_INVAL);
    assert_int_equal(img_mr_scale(&cv, 1, 101), IMG_INVAL);
    assert_int_equal(img_mr_scale(&cv, 5, 5), IMG_INVAL);
    assert_int_equal(img_mr_scale(&cv, NAN, 5), IMG_INVAL);
}

/* ---- PNG ------------------------------------------------------------------------ */

/* rows: h rows of rowbytes each, already packed in PNG sample order. */
static void write_png(const char *path, int w, int h, int depth, int color, int interlace,
                      const unsigned char *rows, size_t rowbytes, const png_color *pal, int npal)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    assert_non_null(png);
    png_infop info = png_create_info_struct(png);
    assert_non_null(info);
    if (setjmp(png_jmpbuf(png)))
        fail_msg("libpng could not write %s", path);
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, depth, color,
                 interlace ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    if (pal != NULL)
        png_set_PLTE(png, info, pal, npal);
    png_bytep *rp = malloc((size_t)h * sizeof *rp);
    assert_non_null(rp);
    for (int y = 0; y < h; y++)
        rp[y] = (png_bytep)rows + (size_t)y * rowbytes;
    png_set_rows(png, info, rp);
    png_write_png(png, info, PNG_TRANSFORM_IDENTITY, NULL);
    png_destroy_write_struct(&png, &info);
    free(rp);
    assert_int_equal(fclose(f), 0);
}

static void read_png_ok(const char *path, img_vol *v, int w, int h)
{
    char err[512] = "";
    int rc = img_read_png(path, NULL, v, err, sizeof err);
    if (rc != IMG_OK)
        print_message("unexpected error: %s\n", err);
    assert_int_equal(rc, IMG_OK);
    assert_int_equal(v->nx, w);
    assert_int_equal(v->ny, h);
    assert_int_equal(v->nz, 1);
    check_spacing(v, 1, 1, 1);
    double id[3][4] = {{1, 0, 0, 0}, {0, 1, 0, 0}, {0, 0, 1, 0}};
    check_affine(v, id, 0);
    assert_int_equal(v->format, IMG_FMT_PNG);
    same_from_memory(img_read_png_mem, path, NULL, v, IMG_OK, NULL);
    same_from_memory(img_read_2d_mem, path, NULL, v, IMG_OK, NULL);
}

static void test_png_grey(void **state)
{
    enum { W = 5, H = 3 };
    unsigned char g8[H][W], g16[H][2 * W], ga[H][2 * W];
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            g8[y][x] = (unsigned char)((x + 5 * y) * 17);
            unsigned v16 = (unsigned)(x + 5 * y) * 4000u + 1u;
            g16[y][2 * x] = (unsigned char)(v16 >> 8);
            g16[y][2 * x + 1] = (unsigned char)(v16 & 0xff);
            ga[y][2 * x] = (unsigned char)(x * 20 + y);
            ga[y][2 * x + 1] = (unsigned char)(255 - x * 40); /* alpha: dropped */
        }
    img_vol v;
    const char *p8 = P(state, "g8.png");
    write_png(p8, W, H, 8, PNG_COLOR_TYPE_GRAY, 0, &g8[0][0], W, NULL, 0);
    read_png_ok(p8, &v, W, H);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            assert_float_equal(at(&v, x, y, 0), (x + 5 * y) * 17 / 255.0, 1e-6);
    img_vol_free(&v);

    /* the same, Adam7-interlaced, through the 2D dispatcher */
    const char *pi = P(state, "g8i.PNG");
    write_png(pi, W, H, 8, PNG_COLOR_TYPE_GRAY, 1, &g8[0][0], W, NULL, 0);
    char err[256];
    assert_int_equal(img_read_2d(pi, NULL, &v, err, sizeof err), IMG_OK);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            assert_float_equal(at(&v, x, y, 0), (x + 5 * y) * 17 / 255.0, 1e-6);
    img_vol_free(&v);

    const char *p16 = P(state, "g16.png");
    write_png(p16, W, H, 16, PNG_COLOR_TYPE_GRAY, 0, &g16[0][0], 2 * W, NULL, 0);
    read_png_ok(p16, &v, W, H);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            assert_float_equal(at(&v, x, y, 0), ((x + 5 * y) * 4000.0 + 1) / 65535.0, 1e-6);
    img_vol_free(&v);

    const char *pa = P(state, "ga.png");
    write_png(pa, W, H, 8, PNG_COLOR_TYPE_GRAY_ALPHA, 0, &ga[0][0], 2 * W, NULL, 0);
    read_png_ok(pa, &v, W, H);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            assert_float_equal(at(&v, x, y, 0), (x * 20 + y) / 255.0, 1e-6);
    img_vol_free(&v);
}

static void test_png_low_bits(void **state)
{
    /* 1-bit, 10 x 2: bits MSB first, row 0 = 1010110011, row 1 = its inverse */
    static const int bits[10] = {1, 0, 1, 0, 1, 1, 0, 0, 1, 1};
    unsigned char b1[2][2] = {{0, 0}, {0, 0}};
    for (int x = 0; x < 10; x++) {
        if (bits[x])
            b1[0][x / 8] |= (unsigned char)(0x80 >> (x % 8));
        else
            b1[1][x / 8] |= (unsigned char)(0x80 >> (x % 8));
    }
    const char *p1 = P(state, "g1.png");
    write_png(p1, 10, 2, 1, PNG_COLOR_TYPE_GRAY, 0, &b1[0][0], 2, NULL, 0);
    img_vol v;
    read_png_ok(p1, &v, 10, 2);
    for (int x = 0; x < 10; x++) {
        assert_float_equal(at(&v, x, 0, 0), bits[x], 0);
        assert_float_equal(at(&v, x, 1, 0), 1 - bits[x], 0);
    }
    img_vol_free(&v);

    /* 4-bit, 16 x 1: values 0..15 -> v / 15 */
    unsigned char b4[8];
    for (int x = 0; x < 16; x += 2)
        b4[x / 2] = (unsigned char)((x << 4) | (x + 1));
    const char *p4 = P(state, "g4.png");
    write_png(p4, 16, 1, 4, PNG_COLOR_TYPE_GRAY, 0, b4, 8, NULL, 0);
    read_png_ok(p4, &v, 16, 1);
    for (int x = 0; x < 16; x++)
        assert_float_equal(at(&v, x, 0, 0), x / 15.0, 1e-6);
    img_vol_free(&v);
}

static double luma(double r, double g, double b)
{
    return 0.299 * r + 0.587 * g + 0.114 * b;
}

static void test_png_colour(void **state)
{
    enum { W = 4, H = 3 };
    unsigned char rgb[H][3 * W], rgba16[H][8 * W];
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            rgb[y][3 * x] = (unsigned char)(x * 60);
            rgb[y][3 * x + 1] = (unsigned char)(y * 100);
            rgb[y][3 * x + 2] = 200;
            unsigned c16[4] = {(unsigned)x * 16000u, (unsigned)y * 30000u, 65535u, 1234u};
            for (int ch = 0; ch < 4; ch++) {
                rgba16[y][8 * x + 2 * ch] = (unsigned char)(c16[ch] >> 8);
                rgba16[y][8 * x + 2 * ch + 1] = (unsigned char)(c16[ch] & 0xff);
            }
        }
    img_vol v;
    const char *p = P(state, "rgb.png");
    write_png(p, W, H, 8, PNG_COLOR_TYPE_RGB, 0, &rgb[0][0], 3 * W, NULL, 0);
    read_png_ok(p, &v, W, H);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            assert_float_equal(at(&v, x, y, 0), luma(x * 60, y * 100, 200) / 255.0, 1e-5);
    img_vol_free(&v);

    const char *p16 = P(state, "rgba16.png");
    write_png(p16, W, H, 16, PNG_COLOR_TYPE_RGB_ALPHA, 0, &rgba16[0][0], 8 * W, NULL, 0);
    read_png_ok(p16, &v, W, H);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            assert_float_equal(at(&v, x, y, 0), luma(x * 16000.0, y * 30000.0, 65535) / 65535.0,
                               1e-5);
    img_vol_free(&v);

    /* palette, 8-bit and 2-bit indices */
    const png_color pal[4] = {{0, 0, 0}, {255, 0, 0}, {0, 255, 0}, {10, 20, 250}};
    unsigned char idx[H][W];
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            idx[y][x] = (unsigned char)((x + y) % 4);
    const char *pp = P(state, "pal.png");
    write_png(pp, W, H, 8, PNG_COLOR_TYPE_PALETTE, 0, &idx[0][0], W, pal, 4);
    read_png_ok(pp, &v, W, H);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            const png_color *c = &pal[(x + y) % 4];
            assert_float_equal(at(&v, x, y, 0), luma(c->red, c->green, c->blue) / 255.0, 1e-5);
        }
    img_vol_free(&v);

    unsigned char idx2[H][1];
    for (int y = 0; y < H; y++) {
        idx2[y][0] = 0;
        for (int x = 0; x < W; x++)
            idx2[y][0] |= (unsigned char)(((x + y) % 4) << (6 - 2 * x));
    }
    const char *pp2 = P(state, "pal2.png");
    write_png(pp2, W, H, 2, PNG_COLOR_TYPE_PALETTE, 0, &idx2[0][0], 1, pal, 4);
    read_png_ok(pp2, &v, W, H);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            const png_color *c = &pal[(x + y) % 4];
            assert_float_equal(at(&v, x, y, 0), luma(c->red, c->green, c->blue) / 255.0, 1e-5);
        }
    img_vol_free(&v);
}

static void expect_png_fail(const char *path, const img_limits *lim, int code,
                            const char *needle)
{
    img_vol v, before;
    memset(&v, 0x5a, sizeof v);
    before = v;
    char err[512] = "";
    int rc = img_read_png(path, lim, &v, err, sizeof err);
    if (rc != code || strncmp(err, path, strlen(path)) != 0 || strstr(err, needle) == NULL)
        print_message("%s: rc %d (want %d), message \"%s\" (want \"%s\")\n", path, rc, code, err,
                      needle);
    assert_int_equal(rc, code);
    assert_int_equal(strncmp(err, path, strlen(path)), 0);
    assert_non_null(strstr(err, needle));
    assert_memory_equal(&v, &before, sizeof v);
    if (code != IMG_IO)
        same_from_memory(img_read_png_mem, path, lim, NULL, code, needle);
}

static void test_png_broken(void **state)
{
    enum { W = 64, H = 64 };
    static unsigned char noise[H][W];
    tu_rng r;
    tu_rng_seed(&r, 5);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            noise[y][x] = (unsigned char)tu_rng_below(&r, 256);
    const char *p = P(state, "noise.png");
    write_png(p, W, H, 8, PNG_COLOR_TYPE_GRAY, 0, &noise[0][0], W, NULL, 0);
    size_t len;
    unsigned char *whole = read_whole(p, &len);
    img_vol v;
    read_png_ok(p, &v, W, H);
    assert_float_equal(at(&v, 3, 7, 0), noise[7][3] / 255.0, 1e-6);
    img_vol_free(&v);

    /* the limit */
    img_limits small = {.max_pixels = W * H - 1}, exact = {.max_pixels = W * H};
    expect_png_fail(p, &small, IMG_TOOBIG, "64 x 64 pixels exceed the limit of 4095");
    char err[256];
    assert_int_equal(img_read_png(p, &exact, &v, err, sizeof err), IMG_OK);
    img_vol_free(&v);

    /* cut in IHDR, in IDAT, and just before IEND */
    const size_t cuts[] = {20, len / 2, len - 12};
    for (size_t c = 0; c < sizeof cuts / sizeof *cuts; c++) {
        write_file(p, whole, cuts[c]);
        expect_png_fail(p, NULL, IMG_FORMAT, "corrupt or truncated PNG");
    }
    /* a flipped byte in IDAT: the CRC or zlib's check catches it */
    whole[len / 2] ^= 0x10;
    write_file(p, whole, len);
    expect_png_fail(p, NULL, IMG_FORMAT, "corrupt or truncated PNG");
    free(whole);

    const char *g = P(state, "garbage.png");
    write_file(g, "GIF89a garbage garbage garbage", 30);
    expect_png_fail(g, NULL, IMG_FORMAT, "not a PNG file");
    const char *e = P(state, "empty.png");
    write_file(e, "", 0);
    expect_png_fail(e, NULL, IMG_FORMAT, "not a PNG file");
    expect_png_fail(P(state, "missing.png"), NULL, IMG_IO, "No such file");
}

/* Picture order of a 2-D NIfTI image: half a turn, every pixel keeping
 * its world position; PNG images and volumes are left alone. */
static void test_picture_order(void **state)
{
    (void)state;
    enum { W = 3, H = 2 };
    img_vol v;
    memset(&v, 0, sizeof v);
    v.nx = W, v.ny = H, v.nz = 1, v.format = IMG_FMT_NIFTI;
    v.data = malloc(W * H * sizeof *v.data);
    assert_non_null(v.data);
    for (int i = 0; i < W * H; i++)
        v.data[i] = (float)i;
    /* RAS: i toward the right (x = 2 i + 5), j toward superior (z = 3 j - 4) */
    double A[4][4] = {{2, 0, 0, 5}, {0, 0, 1, 7}, {0, 3, 0, -4}, {0, 0, 0, 1}};
    memcpy(v.affine, A, sizeof A);
    img_vol w = v;
    w.data = malloc(W * H * sizeof *w.data);
    memcpy(w.data, v.data, W * H * sizeof *w.data);
    img_picture_order(&w);
    assert_int_equal(w.format, IMG_FMT_PICTURE);
    for (int j = 0; j < H; j++)
        for (int i = 0; i < W; i++) {
            /* the same value at the same world point */
            float val = w.data[j * W + i];
            int oi = (int)val % W, oj = (int)val / W;
            for (int r = 0; r < 3; r++)
                assert_float_equal(w.affine[r][0] * i + w.affine[r][1] * j + w.affine[r][3],
                                   A[r][0] * oi + A[r][1] * oj + A[r][3], 1e-12);
        }
    /* row 0 now holds the top (largest z), column 0 the right (largest x) */
    assert_float_equal(w.data[0], (float)(W * H - 1), 0);
    img_picture_order(&w); /* not NIfTI order any more: unchanged */
    assert_float_equal(w.data[0], (float)(W * H - 1), 0);
    v.format = IMG_FMT_PNG;
    img_picture_order(&v);
    assert_float_equal(v.data[0], 0, 0);
    img_vol_free(&v);
    img_vol_free(&w);
}

static void test_vol_free(void **state)
{
    (void)state;
    img_vol_free(NULL);
    img_vol v;
    memset(&v, 0, sizeof v);
    img_vol_free(&v);
    v.data = malloc(16);
    v.nx = 4;
    img_vol_free(&v);
    assert_null(v.data);
    assert_int_equal(v.nx, 0);
    img_vol_free(&v); /* twice is fine */
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup_dir, teardown_dir)
    const struct CMUnitTest tests[] = {
        T(test_ras_sform),       T(test_lps_sform),       T(test_permuted_sform),
        T(test_qform_only),      T(test_pixdim_only),     T(test_oblique),
        T(test_inconsistent),    T(test_datatypes),       T(test_datatype_extremes),
        T(test_nifti2),          T(test_big_endian_n1),   T(test_gz),
        T(test_libnifti_written), T(test_4d_first_volume), T(test_2d),
        T(test_truncated_nii),   T(test_truncated_gz),    T(test_bad_dims),
        T(test_huge_dims),       T(test_not_finite),      T(test_bad_geometry),
        T(test_bad_datatype),    T(test_bad_files),       T(test_quiet),
        T(test_resample_ramp),   T(test_resample_crop_pad), T(test_ct_window),
        T(test_mr_scale),        T(test_png_grey),        T(test_png_low_bits),
        T(test_png_colour),      T(test_png_broken),      T(test_vol_free), T(test_picture_order),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
