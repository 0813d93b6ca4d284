/* test_fingerprint.c - acquisition fingerprints: a rescan of a synthetic
 * phantom scores above the default threshold, another phantom below; for
 * volumes (inner product) and radiographs (alignment score). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "encoder/fingerprint.h"
#include "encoder/image.h"
#include "encoder/synth.h"
#include "testutil.h"

/* Writes the study of (patient, acquisition) to dir/name, the CT (kinds
 * ENC_SYNTH_VOLUME, NIfTI in the given storage order) or the radiograph
 * (ENC_SYNTH_IMAGE, PNG), and fingerprints it. */
static void fp_of(const char *dir, const char *name, uint64_t patient, uint64_t acq, int kinds,
                  int storage, float *fp)
{
    enc_synth_opts o = {.size = ENC_SYNTH_SIZE_SMALL};
    enc_synth_req rq = {.patient_seed = patient, .acq_seed = acq, .kinds = kinds,
                        .storage = storage};
    enc_synth_study st;
    char err[512], *path = tu_path(dir, name);
    int vol = kinds == ENC_SYNTH_VOLUME;
    assert_int_equal(enc_synth_study_make(&o, &rq, &st, err, sizeof err), ENC_OK);
    assert_int_equal(vol ? enc_synth_write_nifti(&st, path, err, sizeof err)
                         : enc_synth_write_png(&st, path, err, sizeof err),
                     ENC_OK);
    int rc = vol ? enc_fingerprint_volume(path, ENC_MOD_CT, fp, err, sizeof err)
                 : enc_fingerprint_image(path, fp, err, sizeof err);
    if (rc)
        fail_msg("%s", err);
    enc_synth_study_free(&st);
    free(path);
}

static double dot(const float *a, const float *b) { return tu_dot(a, b, ENC_FP_VOLUME_DIM); }

static void test_rescan_and_other(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp();
    assert_non_null(dir);
    float *a = malloc(4 * ENC_FP_VOLUME_DIM * sizeof *a);
    assert_non_null(a);
    float *b = a + ENC_FP_VOLUME_DIM, *c = b + ENC_FP_VOLUME_DIM, *d = c + ENC_FP_VOLUME_DIM;
    fp_of(dir, "a.nii.gz", 7, 100, ENC_SYNTH_VOLUME, ENC_SYNTH_STORE_RAS, a);
    /* rescan, stored LPS */
    fp_of(dir, "b.nii.gz", 7, 101, ENC_SYNTH_VOLUME, ENC_SYNTH_STORE_LPS, b);
    fp_of(dir, "c.nii.gz", 8, 100, ENC_SYNTH_VOLUME, ENC_SYNTH_STORE_RAS, c); /* another patient */
    /* same scan, uncompressed */
    fp_of(dir, "d.nii", 7, 100, ENC_SYNTH_VOLUME, ENC_SYNTH_STORE_RAS, d);
    /* unit length, zero mean */
    double m = 0;
    for (int i = 0; i < ENC_FP_VOLUME_DIM; i++)
        m += a[i];
    assert_true(fabs(dot(a, a) - 1) < 1e-4);
    assert_true(fabs(m) < 1e-3);
    /* deterministic: the same voxels give the same vector */
    assert_memory_equal(a, d, ENC_FP_VOLUME_DIM * sizeof *a);
    double same = dot(a, b), other = dot(a, c);
    print_message("rescan %.5f, other patient %.5f, threshold %.4f\n", same, other,
                  (double)ENC_FP_THRESHOLD);
    assert_true(same >= ENC_FP_THRESHOLD);
    assert_true(other < ENC_FP_THRESHOLD);
    free(a);
    tu_rmtree(dir);
    free(dir);
}

static void test_bad_file(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp(), *path = tu_path(dir, "junk.nii");
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs("not a nifti file at all", f);
    fclose(f);
    float fp[ENC_FP_VOLUME_DIM];
    char err[512] = "";
    fp[0] = 42;
    assert_int_not_equal(enc_fingerprint_volume(path, ENC_MOD_CT, fp, err, sizeof err), ENC_OK);
    assert_non_null(strstr(err, "junk.nii"));
    assert_true(fp[0] == 42); /* out untouched on failure */
    free(path);
    tu_rmtree(dir);
    free(dir);
}

static void test_image_rescan_and_other(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp();
    assert_non_null(dir);
    enum { D = ENC_FP_IMAGE_DIM, N = ENC_FP_IMG_N };
    float *a = malloc(5 * D * sizeof *a);
    assert_non_null(a);
    float *b = a + D, *c = b + D, *d = c + D, *m = d + D;
    fp_of(dir, "a.png", 7, 100, ENC_SYNTH_IMAGE, 0, a);
    /* rescan: new pose, exposure, display curve */
    fp_of(dir, "b.png", 7, 101, ENC_SYNTH_IMAGE, 0, b);
    /* another patient, the same acquisition draws */
    fp_of(dir, "c.png", 8, 100, ENC_SYNTH_IMAGE, 0, c);
    fp_of(dir, "d.png", 7, 100, ENC_SYNTH_IMAGE, 0, d); /* the same image again */
    double n2 = 0, mean = 0;
    for (int i = 0; i < D; i++) {
        n2 += (double)a[i] * a[i];
        mean += a[i];
    }
    assert_true(fabs(n2 - 1) < 1e-4);
    assert_true(fabs(mean) < 1e-3);
    assert_memory_equal(a, d, D * sizeof *a);
    assert_true(enc_fingerprint_image_score(a, d, -1) > 0.999f);
    /* a copy moved 3 cells down and 2 across is found by the search */
    memset(m, 0, D * sizeof *m);
    for (int y = 3; y < N; y++)
        for (int x = 2; x < N; x++)
            m[y * N + x] = a[(y - 3) * N + x - 2];
    float moved = enc_fingerprint_image_score(a, m, -1);
    float same = enc_fingerprint_image_score(a, b, -1);
    float other = enc_fingerprint_image_score(a, c, -1);
    print_message("moved copy %.4f, rescan %.4f, other patient %.4f, threshold %.3f\n", moved,
                  same, other, (double)ENC_FP_IMAGE_THRESHOLD);
    assert_true(moved > 0.99f);
    assert_true(same >= ENC_FP_IMAGE_THRESHOLD);
    assert_true(other < ENC_FP_IMAGE_THRESHOLD);
    assert_true(other < same);
    free(a);
    tu_rmtree(dir);
    free(dir);
}

static void test_image_bad_file(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp(), *path = tu_path(dir, "cut.png");
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fwrite("\x89PNG\r\n\x1a\n\0\0\0\rIHDR", 1, 16, f); /* a PNG cut off in its header */
    fclose(f);
    float *fp = malloc(ENC_FP_IMAGE_DIM * sizeof *fp);
    char err[512] = "";
    assert_non_null(fp);
    fp[0] = 42;
    assert_int_not_equal(enc_fingerprint_image(path, fp, err, sizeof err), ENC_OK);
    assert_non_null(strstr(err, "cut.png"));
    assert_true(fp[0] == 42);
    free(fp);
    free(path);
    tu_rmtree(dir);
    free(dir);
}

/* From a file already read (the ingest path: the encoder's worker hands
 * over what it decoded): the same vector as from the file, bit for bit, and
 * the image is left as it was.  CT is windowed on the fly, MR scaled in a
 * copy; radiographs too. */
static void test_from_decoded(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp();
    assert_non_null(dir);
    float *a = malloc(2 * ENC_FP_IMAGE_DIM * sizeof *a), *b = a + ENC_FP_IMAGE_DIM;
    assert_non_null(a);
    char err[512];
    for (int kind = 0; kind < 3; kind++) { /* CT, the CT read as MR, a radiograph */
        int vol = kind < 2;
        enc_modality mod = kind == 0 ? ENC_MOD_CT : ENC_MOD_MR;
        const char *name = vol ? "v.nii.gz" : "r.png";
        char *path = tu_path(dir, name);
        fp_of(dir, name, 9, 100, vol ? ENC_SYNTH_VOLUME : ENC_SYNTH_IMAGE, ENC_SYNTH_STORE_RAS,
              a);
        if (kind == 1)
            assert_int_equal(enc_fingerprint_volume(path, mod, a, err, sizeof err), ENC_OK);
        enc_vol v = {0};
        assert_int_equal(vol ? enc_img_read_nifti(path, NULL, &v, err, sizeof err)
                             : enc_img_read_2d(path, NULL, &v, err, sizeof err),
                         ENC_OK);
        size_t n = (size_t)v.nx * v.ny * v.nz;
        float *keep = malloc(n * sizeof *keep);
        assert_non_null(keep);
        memcpy(keep, v.data, n * sizeof *keep);
        assert_int_equal(vol ? enc_fingerprint_volume_vol(&v, path, mod, b, err, sizeof err)
                             : enc_fingerprint_image_vol(&v, path, b, err, sizeof err),
                         ENC_OK);
        assert_memory_equal(a, b, (vol ? ENC_FP_VOLUME_DIM : ENC_FP_IMAGE_DIM) * sizeof *a);
        assert_memory_equal(keep, v.data, n * sizeof *keep);
        free(keep);
        enc_vol_free(&v);
        free(path);
    }
    /* too small for a fingerprint: named, out untouched */
    float px[16] = {0};
    enc_vol tiny = {.data = px, .nx = 4, .ny = 4, .nz = 1};
    b[0] = 42;
    assert_int_equal(enc_fingerprint_image_vol(&tiny, "tiny.png", b, err, sizeof err), ENC_INVAL);
    assert_non_null(strstr(err, "tiny.png"));
    assert_true(b[0] == 42);
    free(a);
    tu_rmtree(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rescan_and_other),
        cmocka_unit_test(test_bad_file),
        cmocka_unit_test(test_image_rescan_and_other),
        cmocka_unit_test(test_image_bad_file),
        cmocka_unit_test(test_from_decoded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
