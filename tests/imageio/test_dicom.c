/* DICOM through imageio: real files nobody on the team wrote (Debian's
 * python3-pydicom test files, every transfer syntax GDCM decodes) and our
 * own fixtures (tests/fixtures/make_dicom_fixtures.py: series written from
 * a NIfTI volume in LPS, reversed and oblique, an enhanced multi-frame CT,
 * MONOCHROME1/2 radiographs, a radiograph with its PNG twin). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include "imageio/imageio.h"
#include "testutil.h"

/* Debian's python3-pydicom ships its test files here (CI installs it). */
static const char *pydicom_dir(void)
{
    const char *e = getenv("MEDSEM_PYDICOM_FILES");
    return e && *e ? e : "/usr/lib/python3/dist-packages/pydicom/data/test_files";
}

static char *pyfile(const char *name)
{
    char *p = tu_path(pydicom_dir(), name);
    struct stat st;
    if (stat(p, &st)) {
        free(p);
        return NULL;
    }
    return p;
}

#define NEED_PYDICOM(p)                                                                            \
    do {                                                                                           \
        if (!(p)) {                                                                                \
            printf("# skipped: pydicom's test files are not in %s (apt-get install "               \
                   "python3-pydicom, or set MEDSEM_PYDICOM_FILES)\n", pydicom_dir());              \
            skip();                                                                                \
        }                                                                                          \
    } while (0)

static char *fixture(const char *name) { return tu_fixture_at(__FILE__, "dicom", name); }

static size_t nvox(const img_vol *v) { return (size_t)v->nx * v->ny * v->nz; }

static void assert_same_volume(const img_vol *a, const img_vol *b, double tol, double atol)
{
    assert_int_equal(a->nx, b->nx);
    assert_int_equal(a->ny, b->ny);
    assert_int_equal(a->nz, b->nz);
    for (size_t i = 0; i < nvox(a); i++)
        if (fabs(a->data[i] - b->data[i]) > tol)
            fail_msg("voxel %zu: %g against %g", i, a->data[i], b->data[i]);
    for (int r = 0; r < 4; r++)
        for (int c = 0; c < 4; c++)
            if (fabs(a->affine[r][c] - b->affine[r][c]) > atol)
                fail_msg("affine[%d][%d]: %.6f against %.6f", r, c, a->affine[r][c],
                         b->affine[r][c]);
}

static void read_vol(const char *path, img_vol *v, img_dicom_meta *m)
{
    char err[512];
    int rc = img_read_dicom(path, NULL, v, m, err, sizeof err);
    if (rc)
        fail_msg("%s: %s", path, err);
}

static void read_2d(const char *path, img_vol *v)
{
    char err[512];
    int rc = img_read_2d(path, NULL, v, err, sizeof err);
    if (rc)
        fail_msg("%s: %s", path, err);
}

static unsigned char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)n + 1);
    assert_int_equal(fread(b, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return b;
}

/* Every lossless variant of MR_small decodes to the same pixels, the same
 * geometry and the same header as the explicit little endian file, from a
 * path and from memory. */
static void test_mr_small_syntaxes(void **state)
{
    (void)state;
    char *ref = pyfile("MR_small.dcm");
    NEED_PYDICOM(ref);
    img_vol a = {0};
    img_dicom_meta ma;
    read_vol(ref, &a, &ma);
    assert_int_equal(a.nx, 64);
    assert_int_equal(a.ny, 64);
    assert_int_equal(a.nz, 1);
    assert_int_equal(a.format, IMG_FMT_DICOM);
    assert_string_equal(ma.modality, "MR");
    static const char *const variants[] = {"MR_small_implicit.dcm", "MR_small_bigendian.dcm",
                                           "MR_small_expb.dcm",     "MR_small_RLE.dcm",
                                           "MR_small_jp2klossless.dcm",
                                           "MR_small_jpeg_ls_lossless.dcm", "MR_small_padded.dcm"};
    for (size_t i = 0; i < sizeof variants / sizeof *variants; i++) {
        char *p = pyfile(variants[i]);
        assert_non_null(p);
        img_vol b = {0};
        img_dicom_meta mb;
        read_vol(p, &b, &mb);
        printf("# %s: same pixels as MR_small.dcm\n", variants[i]);
        assert_same_volume(&a, &b, 0, 1e-9);
        assert_string_equal(ma.series_uid, mb.series_uid);
        img_vol_free(&b);
        /* the same from memory */
        size_t len;
        unsigned char *buf = slurp(p, &len);
        char err[512];
        assert_int_equal(img_read_volume_mem(buf, len, variants[i], NULL, &b, err, sizeof err), 0);
        assert_same_volume(&a, &b, 0, 1e-9);
        img_vol_free(&b);
        free(buf);
        free(p);
    }
    img_vol_free(&a);
    free(ref);
}

/* A file cut short is refused, never padded; so is every cut of it. */
static void test_truncated(void **state)
{
    (void)state;
    char *p = pyfile("MR_truncated.dcm");
    NEED_PYDICOM(p);
    img_vol v = {0};
    char err[512] = "";
    assert_int_equal(img_read_dicom(p, NULL, &v, NULL, err, sizeof err), IMG_FORMAT);
    assert_non_null(strstr(err, "MR_truncated.dcm"));
    assert_non_null(strstr(err, "truncated"));
    assert_null(v.data);
    /* every prefix of a good file, from memory: refused, no crash, no leak */
    char *good = pyfile("MR_small.dcm");
    size_t len;
    unsigned char *buf = slurp(good, &len);
    int refused = 0;
    for (size_t cut = 0; cut < len; cut += cut < 1600 ? 97 : 331) {
        int rc = img_read_volume_mem(buf, cut, "cut.dcm", NULL, &v, err, sizeof err);
        if (rc == IMG_OK)
            fail_msg("MR_small.dcm cut at %zu of %zu bytes was accepted", cut, len);
        refused++;
    }
    printf("# %d cuts of MR_small.dcm refused\n", refused);
    free(buf);
    free(good);
    free(p);
}

/* CT_small: HU through RescaleSlope/Intercept, geometry from its header. */
static void test_ct_small(void **state)
{
    (void)state;
    char *p = pyfile("CT_small.dcm");
    NEED_PYDICOM(p);
    img_vol v = {0};
    img_dicom_meta m;
    read_vol(p, &v, &m);
    assert_int_equal(v.nx, 128);
    assert_int_equal(v.ny, 128);
    assert_string_equal(m.modality, "CT");
    assert_true(m.slice_thickness > 0);
    /* air outside the body is about -1000 HU or below, bone above +300 */
    float mn = v.data[0], mx = v.data[0];
    for (size_t i = 0; i < nvox(&v); i++) {
        mn = v.data[i] < mn ? v.data[i] : mn;
        mx = v.data[i] > mx ? v.data[i] : mx;
    }
    printf("# CT_small: %g to %g HU\n", mn, mx);
    assert_true(mn < -800 && mx > 300);
    /* spacing and the RAS affine: in-plane spacing 0.661 mm */
    assert_float_equal(v.spacing[0], 0.661468, 1e-4);
    assert_float_equal(v.spacing[1], 0.661468, 1e-4);
    img_vol_free(&v);
    free(p);
}

/* Colour to grey: JPEG baseline in RGB and in YBR (full, 4:2:2), RLE and
 * uncompressed 4:2:2 against the lossless RLE RGB file, within a lossy
 * tolerance; JPEG 2000 and JPEG lossless exactly. */
static void test_colour_and_lossy(void **state)
{
    (void)state;
    char *ref = pyfile("SC_rgb_rle.dcm");
    NEED_PYDICOM(ref);
    img_vol a = {0};
    read_2d(ref, &a);
    assert_int_equal(a.format, IMG_FMT_DISPLAY);
    static const struct {
        const char *name;
        double tol_max, tol_mean;
    } cases[] = {
        {"SC_rgb_jpeg_gdcm.dcm", 0, 0},               /* JPEG lossless */
        {"SC_rgb_gdcm_KY.dcm", 0, 0},                 /* JPEG 2000 */
        {"SC_rgb_dcmtk_+eb+cr.dcm", 0.05, 0.005},     /* JPEG baseline, RGB */
        {"SC_rgb_dcmtk_+eb+cy+n1.dcm", 0.05, 0.005},  /* YBR_FULL */
        {"SC_rgb_dcmtk_+eb+cy+np.dcm", 0.05, 0.005},  /* YBR_FULL_422 */
        {"SC_ybr_full_422_uncompressed.dcm", 0.05, 0.005},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *p = pyfile(cases[i].name);
        assert_non_null(p);
        img_vol b = {0};
        read_2d(p, &b);
        assert_int_equal(b.nx, a.nx);
        assert_int_equal(b.ny, a.ny);
        double mx = 0, mean = 0;
        for (size_t k = 0; k < nvox(&a); k++) {
            double d = fabs(a.data[k] - b.data[k]);
            mx = d > mx ? d : mx;
            mean += d / (double)nvox(&a);
        }
        printf("# %s against SC_rgb_rle.dcm: max |d| %.4f, mean %.5f\n", cases[i].name, mx, mean);
        assert_true(mx <= cases[i].tol_max + 1e-6);
        assert_true(mean <= cases[i].tol_mean + 1e-7);
        img_vol_free(&b);
        free(p);
    }
    img_vol_free(&a);
    free(ref);
}

/* Other syntaxes and refusals on real files. */
static void test_pydicom_others(void **state)
{
    (void)state;
    char *p = pyfile("image_dfl.dcm");
    NEED_PYDICOM(p);
    img_vol v = {0};
    read_2d(p, &v); /* deflated explicit VR little endian */
    assert_int_equal(v.nx, 512);
    img_vol_free(&v);
    free(p);
    static const char *const decodes[] = {"JPEG2000.dcm", "JPGExtended.dcm", "ExplVR_BigEnd.dcm",
                                          "693_J2KI.dcm", "SC_rgb_rle_16bit.dcm",
                                          "SC_rgb_rle_32bit.dcm", "GDCMJ2K_TextGBR.dcm"};
    for (size_t i = 0; i < sizeof decodes / sizeof *decodes; i++) {
        p = pyfile(decodes[i]);
        read_2d(p, &v);
        assert_true(v.nx > 0 && v.ny > 0);
        img_vol_free(&v);
        free(p);
    }
    char err[512];
    static const struct {
        const char *name, *says;
        int code;
    } bad[] = {
        {"rtplan.dcm", "not an image", IMG_FORMAT},
        {"test-SR.dcm", "not an image", IMG_FORMAT},
        {"SC_rgb_rle_2frame.dcm", "one frame", IMG_INVAL},
        {"rtplan_truncated.dcm", "rtplan_truncated.dcm", IMG_FORMAT},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        p = pyfile(bad[i].name);
        assert_int_equal(img_read_2d(p, NULL, &v, err, sizeof err), bad[i].code);
        printf("# %s: %s\n", bad[i].name, err);
        assert_non_null(strstr(err, bad[i].says));
        assert_null(v.data);
        free(p);
    }
    /* a multi-frame file without per-frame positions is no volume */
    p = pyfile("SC_rgb_rle_2frame.dcm");
    assert_int_equal(img_read_dicom(p, NULL, &v, NULL, err, sizeof err), IMG_UNSUPPORTED);
    assert_non_null(strstr(err, "PerFrameFunctionalGroupsSequence"));
    free(p);
    /* a slice without orientation is no volume */
    p = pyfile("JPEG2000.dcm");
    assert_int_equal(img_read_dicom(p, NULL, &v, NULL, err, sizeof err), IMG_FORMAT);
    assert_non_null(strstr(err, "ImageOrientationPatient"));
    free(p);
}

/* Every file among pydicom's test files, good and bad, as a volume and as
 * a radiograph: read or refused with a message, never a crash (GDCM
 * asserts on some: the RT Dose of one frame is refused first). */
static void test_every_pydicom_file(void **state)
{
    (void)state;
    char *probe = pyfile("MR_small.dcm");
    NEED_PYDICOM(probe);
    free(probe);
    DIR *d = opendir(pydicom_dir());
    assert_non_null(d);
    struct dirent *e;
    int files = 0, vols = 0, imgs = 0;
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (n < 5 || strcmp(e->d_name + n - 4, ".dcm"))
            continue;
        char *p = pyfile(e->d_name);
        img_vol v = {0};
        char err[512] = "";
        int rc = img_read_volume(p, NULL, &v, err, sizeof err);
        if (rc == IMG_OK)
            vols++, img_vol_free(&v);
        else
            assert_true(err[0] != '\0');
        err[0] = '\0';
        rc = img_read_2d(p, NULL, &v, err, sizeof err);
        if (rc == IMG_OK)
            imgs++, img_vol_free(&v);
        else
            assert_true(err[0] != '\0');
        files++;
        free(p);
    }
    closedir(d);
    printf("# %d pydicom files: %d read as volumes, %d as radiographs, the rest refused\n", files,
           vols, imgs);
    assert_true(files >= 60);
    char *p = pyfile("rtdose_1frame.dcm"), err[512];
    img_vol v = {0};
    assert_int_equal(img_read_2d(p, NULL, &v, err, sizeof err), IMG_UNSUPPORTED);
    assert_non_null(strstr(err, "RT Dose"));
    free(p);
}

/* A series written from a NIfTI volume reads back as that volume: stored
 * in LPS, in reverse order, oblique, and as one enhanced multi-frame file. */
static void test_series_equals_nifti(void **state)
{
    (void)state;
    char err[512];
    char *nii = fixture("vol.nii"), *obl = fixture("oblique.nii");
    img_vol ref = {0}, refo = {0};
    assert_int_equal(img_read_nifti(nii, NULL, &ref, err, sizeof err), 0);
    assert_int_equal(img_read_nifti(obl, NULL, &refo, err, sizeof err), 0);
    static const char *const same[] = {"series_axial", "series_reversed", "enhanced.dcm"};
    for (size_t i = 0; i < 3; i++) {
        char *p = fixture(same[i]);
        img_vol v = {0};
        img_dicom_meta m;
        read_vol(p, &v, &m);
        printf("# %s: %d x %d x %d, %d files, equals vol.nii\n", same[i], v.nx, v.ny, v.nz,
               m.files);
        assert_same_volume(&ref, &v, 0, 1e-4);
        assert_string_equal(m.modality, "CT");
        assert_string_equal(m.study_date, "20261207");
        assert_string_equal(m.accession, "ACC0001");
        assert_int_equal(m.frames, 6);
        /* img_read_volume tells DICOM from NIfTI by itself */
        img_vol w = {0};
        assert_int_equal(img_read_volume(p, NULL, &w, err, sizeof err), 0);
        assert_same_volume(&v, &w, 0, 0);
        img_vol_free(&w);
        img_vol_free(&v);
        free(p);
    }
    char *p = fixture("series_oblique");
    img_vol v = {0};
    read_vol(p, &v, NULL);
    assert_same_volume(&refo, &v, 0, 1e-4);
    img_vol_free(&v);
    free(p);
    /* the enhanced file from memory */
    p = fixture("enhanced.dcm");
    size_t len;
    unsigned char *buf = slurp(p, &len);
    assert_int_equal(img_read_volume_mem(buf, len, "enhanced.dcm", NULL, &v, err, sizeof err), 0);
    assert_same_volume(&ref, &v, 0, 1e-4);
    img_vol_free(&v);
    free(buf);
    free(p);
    img_vol_free(&ref);
    img_vol_free(&refo);
    free(nii);
    free(obl);
}

/* A series as one zip: the same volume; every cut and a flipped byte are
 * refused, from memory and as a .zip file. */
static void test_zip(void **state)
{
    (void)state;
    char err[512];
    char *nii = fixture("vol.nii"), *zp = fixture("series_axial.zip");
    img_vol ref = {0}, v = {0};
    assert_int_equal(img_read_nifti(nii, NULL, &ref, err, sizeof err), 0);
    read_vol(zp, &v, NULL);
    assert_same_volume(&ref, &v, 0, 1e-4);
    img_vol_free(&v);
    size_t len;
    unsigned char *b = slurp(zp, &len);
    assert_int_equal(img_read_volume_mem(b, len, "up.zip", NULL, &v, err, sizeof err), 0);
    assert_same_volume(&ref, &v, 0, 1e-4);
    img_vol_free(&v);
    img_dicom_meta m;
    assert_int_equal(img_read_dicom_meta(zp, &m, err, sizeof err), 0);
    assert_int_equal(m.files, 6);
    assert_string_equal(m.modality, "CT");
    int refused = 0;
    for (size_t cut = 4; cut < len; cut += 53) {
        if (img_read_volume_mem(b, cut, "cut.zip", NULL, &v, err, sizeof err) == IMG_OK)
            fail_msg("the zip cut at %zu of %zu bytes was accepted", cut, len);
        refused++;
    }
    for (size_t at = 200; at < len - 200; at += 211) {
        b[at] ^= 0x5a;
        int rc = img_read_volume_mem(b, len, "flip.zip", NULL, &v, err, sizeof err);
        if (rc == IMG_OK) /* a flip in a header field the reader ignores: the same volume */
            img_vol_free(&v);
        else
            refused++;
        b[at] ^= 0x5a;
    }
    printf("# series_axial.zip: %d cuts and flips refused\n", refused);
    /* the limits hold before anything is inflated or decoded */
    img_limits lim = {.max_voxels = 100};
    assert_int_equal(img_read_volume_mem(b, len, "up.zip", &lim, &v, err, sizeof err), IMG_TOOBIG);
    free(b);
    img_vol_free(&ref);
    free(nii);
    free(zp);
}

static void copy_file(const char *from, const char *dir, const char *name)
{
    size_t len;
    unsigned char *b = slurp(from, &len);
    char *to = tu_path(dir, name);
    FILE *f = fopen(to, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(b, 1, len, f), len);
    fclose(f);
    free(to);
    free(b);
}

/* A broken series folder is refused, naming the files: a missing slice,
 * two at one position, two series, a file that is not DICOM, a truncated
 * slice; an empty folder too. */
static void test_series_refusals(void **state)
{
    (void)state;
    char *ax = fixture("series_axial"), *ob = fixture("series_oblique");
    static const struct {
        const char *what;
        const char *files[8]; /* "a/NAME" from series_axial, "o/NAME" from series_oblique */
        const char *says;
    } cases[] = {
        {"missing", {"a/s000.dcm", "a/s001.dcm", "a/s003.dcm", "a/s004.dcm", NULL},
         "1 slice(s) missing between s001.dcm and s003.dcm"},
        {"duplicate", {"a/s000.dcm", "a/s001.dcm", "a/s001.dcm=x.dcm", NULL},
         "two slices at one position"},
        {"mixed", {"a/s000.dcm", "a/s001.dcm", "o/s002.dcm=t.dcm", NULL}, "mixed series"},
        {"not dicom", {"a/s000.dcm", "a/s001.dcm", "n/notes.txt", NULL}, "notes.txt"},
        {"truncated", {"a/s000.dcm", "a/s001.dcm", "t/s002.dcm", NULL}, "truncated"},
        {"empty", {NULL}, "no files"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        char *dir = tu_mkdtemp();
        for (int i = 0; cases[c].files[i]; i++) {
            const char *spec = cases[c].files[i];
            char name[64];
            const char *eq = strchr(spec, '=');
            snprintf(name, sizeof name, "%s", eq ? eq + 1 : spec + 2);
            char src[64];
            snprintf(src, sizeof src, "%.*s", (int)(eq ? eq - spec - 2 : (long)strlen(spec) - 2),
                     spec + 2);
            if (spec[0] == 'n') {
                char *to = tu_path(dir, name);
                FILE *f = fopen(to, "w");
                fputs("not an image\n", f);
                fclose(f);
                free(to);
                continue;
            }
            char *from = tu_path(spec[0] == 'o' ? ob : ax, src);
            copy_file(from, dir, name);
            if (spec[0] == 't') { /* cut the copy short */
                char *to = tu_path(dir, name);
                struct stat st;
                assert_int_equal(stat(to, &st), 0);
                assert_int_equal(truncate(to, st.st_size - 40), 0);
                free(to);
            }
            free(from);
        }
        img_vol v = {0};
        char err[512] = "";
        int rc = img_read_dicom(dir, NULL, &v, NULL, err, sizeof err);
        printf("# %s: %s\n", cases[c].what, err);
        assert_int_not_equal(rc, IMG_OK);
        assert_non_null(strstr(err, cases[c].says));
        assert_null(v.data);
        tu_rmtree(dir);
        free(dir);
    }
    /* the limits hold before any pixel is decoded */
    img_limits lim = {.max_voxels = 10 * 8 * 5};
    img_vol v = {0};
    char err[512];
    assert_int_equal(img_read_dicom(ax, &lim, &v, NULL, err, sizeof err), IMG_TOOBIG);
    free(ax);
    free(ob);
}

/* Radiographs: MONOCHROME1 is the inverse of MONOCHROME2 with the same
 * stored pixels; the window is the file's; an 8-bit radiograph without a
 * window reads as the same picture as its PNG (row 0 at the top, column 0
 * on the left); spacing from ImagerPixelSpacing. */
static void test_radiographs(void **state)
{
    (void)state;
    char *m1 = fixture("cr_mono1.dcm"), *m2 = fixture("cr_mono2.dcm");
    img_vol a = {0}, b = {0};
    read_2d(m1, &a);
    read_2d(m2, &b);
    assert_int_equal(a.nx, 9);
    assert_int_equal(a.ny, 12);
    assert_float_equal(a.spacing[0], 0.4, 1e-6); /* ImagerPixelSpacing 0.5\0.4: rows, columns */
    assert_float_equal(a.spacing[1], 0.5, 1e-6);
    int clipped = 0;
    for (size_t i = 0; i < nvox(&a); i++) {
        assert_float_equal(a.data[i], 1 - b.data[i], 1e-6);
        clipped += b.data[i] == 0 || b.data[i] == 1;
    }
    /* the window (1500, 2000) clips part of the 12-bit range */
    assert_true(clipped > 0 && clipped < (int)nvox(&a));
    img_vol_free(&a);
    img_vol_free(&b);
    char *d = fixture("dx8.dcm"), *png = fixture("dx8.png");
    read_2d(d, &a);
    read_2d(png, &b);
    assert_float_equal(a.spacing[0], 0.2, 1e-6); /* PixelSpacing */
    assert_int_equal(a.nx, b.nx);
    assert_int_equal(a.ny, b.ny);
    for (size_t i = 0; i < nvox(&a); i++)
        assert_float_equal(a.data[i], b.data[i], 1e-6);
    img_vol_free(&a);
    img_vol_free(&b);
    /* from memory, the same */
    size_t len;
    unsigned char *buf = slurp(d, &len);
    char err[512];
    read_2d(d, &b);
    assert_int_equal(img_read_2d_mem(buf, len, "dx8.dcm", NULL, &a, err, sizeof err), 0);
    for (size_t i = 0; i < nvox(&a); i++)
        assert_float_equal(a.data[i], b.data[i], 0);
    img_vol_free(&a);
    img_vol_free(&b);
    free(buf);
    /* the header, without patient identity */
    img_dicom_meta m;
    assert_int_equal(img_read_dicom_meta(d, &m, err, sizeof err), 0);
    assert_string_equal(m.modality, "DX");
    assert_string_equal(m.body_part, "CHEST");
    assert_string_equal(m.manufacturer, "medsem fixtures");
    assert_null(memmem(&m, sizeof m, "Fixture", 7));
    assert_null(memmem(&m, sizeof m, "PID-SHOULD", 10));
    assert_null(memmem(&m, sizeof m, "19700101", 8));
    free(m1);
    free(m2);
    free(d);
    free(png);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mr_small_syntaxes),  cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_ct_small),           cmocka_unit_test(test_colour_and_lossy),
        cmocka_unit_test(test_pydicom_others),     cmocka_unit_test(test_series_equals_nifti),
        cmocka_unit_test(test_series_refusals),    cmocka_unit_test(test_radiographs),
        cmocka_unit_test(test_zip),                cmocka_unit_test(test_every_pydicom_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
