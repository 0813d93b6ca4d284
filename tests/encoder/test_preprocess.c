/* test_preprocess.c - image files to model input tensors. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <nifti2_io.h>
#include <png.h>

#include "encoder/preprocess.h"
#include "testutil.h"

/* A 4x4x4 CT volume stored LPS (sform diag(-2,-2,2)), HU = 100 * (i + 4j + 16k) - 1000
 * in file voxel order. */
static void write_ct(const char *path)
{
    int64_t dims[8] = {3, 4, 4, 4, 1, 1, 1, 1};
    nifti_image *nim = nifti_make_new_nim(dims, DT_INT16, 1);
    assert_non_null(nim);
    int16_t *d = nim->data;
    for (int i = 0; i < 64; i++)
        d[i] = (int16_t)(10 * i - 300);
    nim->sform_code = NIFTI_XFORM_SCANNER_ANAT;
    memset(&nim->sto_xyz, 0, sizeof nim->sto_xyz);
    nim->sto_xyz.m[0][0] = -2;
    nim->sto_xyz.m[1][1] = -2;
    nim->sto_xyz.m[2][2] = 2;
    nim->sto_xyz.m[3][3] = 1;
    assert_int_equal(nifti_set_filenames(nim, path, 0, 1), 0);
    nifti_image_write(nim);
    nifti_image_free(nim);
}

static void test_volume_ct(void **state)
{
    char *dir = tu_mkdtemp();
    char *p = tu_path(dir, "ct.nii.gz");
    write_ct(p);
    enc_prep pp = ENC_PREP_INIT;
    pp.vol_size[0] = pp.vol_size[1] = pp.vol_size[2] = 4;
    pp.vol_spacing[0] = pp.vol_spacing[1] = pp.vol_spacing[2] = 2;
    pp.ct_window[0] = -300;
    pp.ct_window[1] = 330;
    float out[64];
    char err[256];
    assert_int_equal(enc_prep_volume(p, ENC_MOD_CT, &pp, out, err, sizeof err), 0);
    /* RAS order: x and y flipped relative to the LPS file. */
    for (int k = 0; k < 4; k++)
        for (int j = 0; j < 4; j++)
            for (int i = 0; i < 4; i++) {
                int fi = 3 - i, fj = 3 - j;
                float hu = (float)(10 * (fi + 4 * fj + 16 * k) - 300);
                assert_float_equal(out[(k * 4 + j) * 4 + i], (hu + 300) / 630, 1e-5);
            }
    /* Three normalised channels. */
    pp.channels = 3;
    float mean[3] = {0.5f, 0.25f, 0}, sd[3] = {2, 1, 0.5f};
    memcpy(pp.mean, mean, sizeof mean);
    memcpy(pp.std, sd, sizeof sd);
    float out3[192];
    assert_int_equal(enc_prep_volume(p, ENC_MOD_CT, &pp, out3, err, sizeof err), 0);
    for (int c = 0; c < 3; c++)
        assert_float_equal(out3[c * 64 + 5], (out[5] - mean[c]) / sd[c], 1e-5);
    /* Bad parameters and a missing file. */
    pp.std[1] = 0;
    assert_int_equal(enc_prep_volume(p, ENC_MOD_CT, &pp, out3, err, sizeof err), ENC_INVAL);
    pp.std[1] = 1;
    char *missing = tu_path(dir, "nope.nii");
    assert_int_not_equal(enc_prep_volume(missing, ENC_MOD_CT, &pp, out3, err, sizeof err), 0);
    assert_non_null(strstr(err, "nope.nii"));
    free(missing);
    tu_rmtree(dir);
    free(p);
    free(dir);
}

/* COLIPRI's torchio order: the same CT volume resampled first, then clamped
 * to [-1000, 1000] HU and rescaled to [-1, 1], written [X, Y, Z] (x toward
 * the patient's right, z fastest); an MR volume gets the same window. */
static void test_volume_torchio(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp();
    char *p = tu_path(dir, "ct.nii.gz");
    write_ct(p);
    enc_prep pp = ENC_PREP_INIT;
    pp.vol_size[0] = 4, pp.vol_size[1] = 4, pp.vol_size[2] = 4;
    pp.vol_spacing[0] = pp.vol_spacing[1] = pp.vol_spacing[2] = 2;
    pp.ct_window[0] = -1000, pp.ct_window[1] = 1000;
    pp.mean[0] = 0.5f, pp.std[0] = 0.5f;
    pp.torchio = pp.xyz = 1;
    float out[64], mr[64];
    char err[256];
    assert_int_equal(enc_prep_volume(p, ENC_MOD_CT, &pp, out, err, sizeof err), 0);
    for (int x = 0; x < 4; x++)
        for (int y = 0; y < 4; y++)
            for (int z = 0; z < 4; z++) {
                float hu = (float)(10 * ((3 - x) + 4 * (3 - y) + 16 * z) - 300);
                assert_float_equal(out[(x * 4 + y) * 4 + z], hu / 1000, 1e-5);
            }
    assert_int_equal(enc_prep_volume(p, ENC_MOD_MR, &pp, mr, err, sizeof err), 0);
    assert_memory_equal(out, mr, sizeof out);
    /* a window the values cross: clamped after resampling, so still exact
     * on the grid */
    pp.ct_window[0] = -100, pp.ct_window[1] = 100;
    assert_int_equal(enc_prep_volume(p, ENC_MOD_CT, &pp, out, err, sizeof err), 0);
    for (int x = 0; x < 4; x++)
        for (int z = 0; z < 4; z++) {
            float hu = (float)(10 * ((3 - x) + 16 * z) - 300); /* y = 3 */
            hu = hu < -100 ? -100 : hu > 100 ? 100 : hu;
            assert_float_equal(out[(x * 4 + 3) * 4 + z], hu / 100, 1e-5);
        }
    /* SAR: torchio's tensor is medsem's own [Z, Y, X] */
    pp.xyz = 0;
    assert_int_equal(enc_prep_volume(p, ENC_MOD_CT, &pp, out, err, sizeof err), 0);
    for (int z = 0; z < 4; z++)
        for (int y = 0; y < 4; y++)
            for (int x = 0; x < 4; x++) {
                float hu = (float)(10 * ((3 - x) + 4 * (3 - y) + 16 * z) - 300);
                hu = hu < -100 ? -100 : hu > 100 ? 100 : hu;
                assert_float_equal(out[(z * 4 + y) * 4 + x], hu / 100, 1e-5);
            }
    tu_rmtree(dir);
    free(p);
    free(dir);
}

static void write_png8(const char *path, int w, int h, const unsigned char *px)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    if (setjmp(png_jmpbuf(png)))
        fail_msg("libpng could not write %s", path);
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, PNG_COLOR_TYPE_GRAY,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_bytep rows[16];
    for (int y = 0; y < h; y++)
        rows[y] = (png_bytep)px + (size_t)y * w;
    png_set_rows(png, info, rows);
    png_write_png(png, info, PNG_TRANSFORM_IDENTITY, NULL);
    png_destroy_write_struct(&png, &info);
    assert_int_equal(fclose(f), 0);
}

static void test_image_png_aspect(void **state)
{
    char *dir = tu_mkdtemp();
    char *p = tu_path(dir, "cxr.png");
    /* 4 wide, 2 high: rows 0 (top) = 255, row 1 = 0. */
    unsigned char px[8] = {255, 255, 255, 255, 0, 0, 0, 0};
    write_png8(p, 4, 2, px);
    enc_prep pp = ENC_PREP_INIT;
    pp.img_size[0] = 4;
    pp.img_size[1] = 4;
    float out[16];
    char err[256];
    assert_int_equal(enc_prep_image(p, ENC_MOD_XRAY, &pp, out, err, sizeof err), 0);
    /* Width fills 4 columns at the same scale; height 2 is centred: rows 1
     * and 2 hold the image (top white, then black), rows 0 and 3 padding (0). */
    for (int i = 0; i < 4; i++) {
        assert_float_equal(out[0 * 4 + i], 0, 1e-6);
        assert_float_equal(out[1 * 4 + i], 1, 1e-6);
        assert_float_equal(out[2 * 4 + i], 0, 1e-6);
        assert_float_equal(out[3 * 4 + i], 0, 1e-6);
    }
    tu_rmtree(dir);
    free(p);
    free(dir);
}

/* The same radiograph as a PNG (picture order: row 0 the top, column 0 the
 * patient's right) and as a coronal 2-D NIfTI with a true affine comes out
 * the same way round: a bright spot at the patient's upper right lands at
 * the same place of the input tensor (it came out left-right mirrored when
 * only the rows were flipped). */
static void test_image_nifti_like_png(void **state)
{
    (void)state;
    enum { W = 8, H = 8 };
    unsigned char px[W * H];
    memset(px, 40, sizeof px);
    px[1 * W + 1] = 250; /* row 1 (near the top), column 1 (the patient's right) */
    px[6 * W + 2] = 140; /* a dimmer one lower down, same side */
    char *dir = tu_mkdtemp(), *pp_ = tu_path(dir, "cxr.png"), *pn = tu_path(dir, "cxr.nii");
    write_png8(pp_, W, H, px);
    /* The NIfTI stores the same pixels as (i, j) = (column, row) with a
     * coronal affine: i toward the patient's left (x = -i), j downward
     * (z = -j), and the single k toward anterior. */
    int64_t dims[8] = {3, W, H, 1, 1, 1, 1, 1};
    nifti_image *nim = nifti_make_new_nim(dims, DT_FLOAT32, 1);
    assert_non_null(nim);
    float *d = nim->data;
    for (int i = 0; i < W * H; i++)
        d[i] = px[i];
    nim->sform_code = NIFTI_XFORM_SCANNER_ANAT;
    memset(&nim->sto_xyz, 0, sizeof nim->sto_xyz);
    nim->sto_xyz.m[0][0] = -1; /* x = -i */
    nim->sto_xyz.m[2][1] = -1; /* z = -j */
    nim->sto_xyz.m[1][2] = 1;  /* y = k */
    nim->sto_xyz.m[3][3] = 1;
    assert_int_equal(nifti_set_filenames(nim, pn, 0, 1), 0);
    nifti_image_write(nim);
    nifti_image_free(nim);

    enc_prep pp = ENC_PREP_INIT;
    pp.img_size[0] = H;
    pp.img_size[1] = W;
    float a[W * H], b[W * H];
    char err[256];
    assert_int_equal(enc_prep_image(pp_, ENC_MOD_XRAY, &pp, a, err, sizeof err), 0);
    if (enc_prep_image(pn, ENC_MOD_XRAY, &pp, b, err, sizeof err))
        fail_msg("%s", err);
    int am = 0, bm = 0;
    for (int i = 1; i < W * H; i++) {
        am = a[i] > a[am] ? i : am;
        bm = b[i] > b[bm] ? i : bm;
    }
    assert_int_equal(am, 1 * W + 1);
    assert_int_equal(bm, 1 * W + 1);
    /* the whole picture agrees in order: the dimmer spot too */
    assert_true(b[6 * W + 2] > b[6 * W + 5] && b[6 * W + 2] > b[1 * W + 6]);
    tu_rmtree(dir);
    free(pp_);
    free(pn);
    free(dir);
}

/* Axial slices as image inputs: RAS order as stored, or half a turn (the
 * patient's right on the left, anterior at the top). */
static void test_slice(void **state)
{
    (void)state;
    enum { C = 2, D = 3, H = 2, W = 3 };
    float vol[C * D * H * W], out[C * H * W];
    for (int i = 0; i < C * D * H * W; i++)
        vol[i] = (float)i;
    enc_prep_slice(vol, C, D, H, W, 1, 0, out);
    for (int c = 0; c < C; c++)
        for (int i = 0; i < H * W; i++)
            assert_true(out[c * H * W + i] == vol[(c * D + 1) * H * W + i]);
    enc_prep_slice(vol, C, D, H, W, 2, 1, out);
    for (int c = 0; c < C; c++)
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++)
                assert_true(out[(c * H + y) * W + x] ==
                            vol[((c * D + 2) * H + (H - 1 - y)) * W + (W - 1 - x)]);
}

static void test_modality(void **state)
{
    assert_int_equal(enc_modality_parse("ct"), ENC_MOD_CT);
    assert_int_equal(enc_modality_parse("MRI"), ENC_MOD_MR);
    assert_int_equal(enc_modality_parse("CR"), ENC_MOD_XRAY);
    assert_int_equal(enc_modality_parse("PET"), ENC_MOD_OTHER);
    assert_int_equal(enc_modality_parse(NULL), ENC_MOD_OTHER);
}

int main(void)
{
    nifti_set_debug_level(0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_modality),
        cmocka_unit_test(test_volume_ct),
        cmocka_unit_test(test_volume_torchio),
        cmocka_unit_test(test_image_png_aspect),
        cmocka_unit_test(test_image_nifti_like_png),
        cmocka_unit_test(test_slice),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
