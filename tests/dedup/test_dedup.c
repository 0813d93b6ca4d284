/* test_dedup.c - acquisition fingerprints: a rescan of a synthetic
 * phantom scores above the default threshold, another phantom below; for
 * volumes (inner product) and radiographs (alignment score).  Clusters of
 * embeddings: exact and near copies. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "dedup/dedup.h"
#include "imageio/imageio.h"
#include "indexer/indexer.h"
#include "store/store.h"
#include "synth/synth.h"
#include "testutil.h"

/* Writes the study of (patient, acquisition) to dir/name, the CT (kinds
 * SYNTH_VOLUME, NIfTI in the given storage order) or the radiograph
 * (SYNTH_IMAGE, PNG), and fingerprints it. */
static void fp_of(const char *dir, const char *name, uint64_t patient, uint64_t acq, int kinds,
                  int storage, float *fp)
{
    synth_opts o = {.size = SYNTH_SIZE_SMALL};
    synth_req rq = {.patient_seed = patient, .acq_seed = acq, .kinds = kinds,
                        .storage = storage};
    synth_study st;
    char err[512], *path = tu_path(dir, name);
    int vol = kinds == SYNTH_VOLUME;
    assert_int_equal(synth_study_make(&o, &rq, &st, err, sizeof err), SYNTH_OK);
    assert_int_equal(vol ? synth_write_nifti(&st, path, err, sizeof err)
                         : synth_write_png(&st, path, err, sizeof err),
                     SYNTH_OK);
    int rc = vol ? dedup_fingerprint_volume(path, ENC_MOD_CT, fp, err, sizeof err)
                 : dedup_fingerprint_image(path, fp, err, sizeof err);
    if (rc)
        fail_msg("%s", err);
    synth_study_free(&st);
    free(path);
}

static double dot(const float *a, const float *b) { return tu_dot(a, b, DEDUP_FP_VOLUME_DIM); }

static void test_rescan_and_other(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp();
    assert_non_null(dir);
    float *a = malloc(4 * DEDUP_FP_VOLUME_DIM * sizeof *a);
    assert_non_null(a);
    float *b = a + DEDUP_FP_VOLUME_DIM, *c = b + DEDUP_FP_VOLUME_DIM, *d = c + DEDUP_FP_VOLUME_DIM;
    fp_of(dir, "a.nii.gz", 7, 100, SYNTH_VOLUME, SYNTH_STORE_RAS, a);
    /* rescan, stored LPS */
    fp_of(dir, "b.nii.gz", 7, 101, SYNTH_VOLUME, SYNTH_STORE_LPS, b);
    fp_of(dir, "c.nii.gz", 8, 100, SYNTH_VOLUME, SYNTH_STORE_RAS, c); /* another patient */
    /* same scan, uncompressed */
    fp_of(dir, "d.nii", 7, 100, SYNTH_VOLUME, SYNTH_STORE_RAS, d);
    /* unit length, zero mean */
    double m = 0;
    for (int i = 0; i < DEDUP_FP_VOLUME_DIM; i++)
        m += a[i];
    assert_true(fabs(dot(a, a) - 1) < 1e-4);
    assert_true(fabs(m) < 1e-3);
    /* deterministic: the same voxels give the same vector */
    assert_memory_equal(a, d, DEDUP_FP_VOLUME_DIM * sizeof *a);
    double same = dot(a, b), other = dot(a, c);
    print_message("rescan %.5f, other patient %.5f, threshold %.4f\n", same, other,
                  (double)DEDUP_FP_THRESHOLD);
    assert_true(same >= DEDUP_FP_THRESHOLD);
    assert_true(other < DEDUP_FP_THRESHOLD);
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
    float fp[DEDUP_FP_VOLUME_DIM];
    char err[512] = "";
    fp[0] = 42;
    assert_int_not_equal(dedup_fingerprint_volume(path, ENC_MOD_CT, fp, err, sizeof err), DEDUP_OK);
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
    enum { D = DEDUP_FP_IMAGE_DIM, N = DEDUP_FP_IMG_N };
    float *a = malloc(5 * D * sizeof *a);
    assert_non_null(a);
    float *b = a + D, *c = b + D, *d = c + D, *m = d + D;
    fp_of(dir, "a.png", 7, 100, SYNTH_IMAGE, 0, a);
    /* rescan: new pose, exposure, display curve */
    fp_of(dir, "b.png", 7, 101, SYNTH_IMAGE, 0, b);
    /* another patient, the same acquisition draws */
    fp_of(dir, "c.png", 8, 100, SYNTH_IMAGE, 0, c);
    fp_of(dir, "d.png", 7, 100, SYNTH_IMAGE, 0, d); /* the same image again */
    double n2 = 0, mean = 0;
    for (int i = 0; i < D; i++) {
        n2 += (double)a[i] * a[i];
        mean += a[i];
    }
    assert_true(fabs(n2 - 1) < 1e-4);
    assert_true(fabs(mean) < 1e-3);
    assert_memory_equal(a, d, D * sizeof *a);
    assert_true(dedup_fingerprint_image_score(a, d, -1) > 0.999f);
    /* a copy moved 3 cells down and 2 across is found by the search */
    memset(m, 0, D * sizeof *m);
    for (int y = 3; y < N; y++)
        for (int x = 2; x < N; x++)
            m[y * N + x] = a[(y - 3) * N + x - 2];
    float moved = dedup_fingerprint_image_score(a, m, -1);
    float same = dedup_fingerprint_image_score(a, b, -1);
    float other = dedup_fingerprint_image_score(a, c, -1);
    print_message("moved copy %.4f, rescan %.4f, other patient %.4f, threshold %.3f\n", moved,
                  same, other, (double)DEDUP_FP_IMAGE_THRESHOLD);
    assert_true(moved > 0.99f);
    assert_true(same >= DEDUP_FP_IMAGE_THRESHOLD);
    assert_true(other < DEDUP_FP_IMAGE_THRESHOLD);
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
    float *fp = malloc(DEDUP_FP_IMAGE_DIM * sizeof *fp);
    char err[512] = "";
    assert_non_null(fp);
    fp[0] = 42;
    assert_int_not_equal(dedup_fingerprint_image(path, fp, err, sizeof err), DEDUP_OK);
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
    float *a = malloc(2 * DEDUP_FP_IMAGE_DIM * sizeof *a), *b = a + DEDUP_FP_IMAGE_DIM;
    assert_non_null(a);
    char err[512];
    for (int kind = 0; kind < 3; kind++) { /* CT, the CT read as MR, a radiograph */
        int vol = kind < 2;
        enc_modality mod = kind == 0 ? ENC_MOD_CT : ENC_MOD_MR;
        const char *name = vol ? "v.nii.gz" : "r.png";
        char *path = tu_path(dir, name);
        fp_of(dir, name, 9, 100, vol ? SYNTH_VOLUME : SYNTH_IMAGE, SYNTH_STORE_RAS,
              a);
        if (kind == 1)
            assert_int_equal(dedup_fingerprint_volume(path, mod, a, err, sizeof err), DEDUP_OK);
        img_vol v = {0};
        assert_int_equal(vol ? img_read_nifti(path, NULL, &v, err, sizeof err)
                             : img_read_2d(path, NULL, &v, err, sizeof err),
                         DEDUP_OK);
        size_t n = (size_t)v.nx * v.ny * v.nz;
        float *keep = malloc(n * sizeof *keep);
        assert_non_null(keep);
        memcpy(keep, v.data, n * sizeof *keep);
        assert_int_equal(vol ? dedup_fingerprint_volume_vol(&v, path, mod, b, err, sizeof err)
                             : dedup_fingerprint_image_vol(&v, path, b, err, sizeof err),
                         DEDUP_OK);
        assert_memory_equal(a, b, (vol ? DEDUP_FP_VOLUME_DIM : DEDUP_FP_IMAGE_DIM) * sizeof *a);
        assert_memory_equal(keep, v.data, n * sizeof *keep);
        if (!vol) {
            /* The same radiograph as a NIfTI gives it (RAS order: half a
             * turn from picture order) has the same fingerprint. */
            img_vol r = v;
            r.format = IMG_FMT_NIFTI;
            r.data = malloc(n * sizeof *r.data);
            assert_non_null(r.data);
            for (size_t i = 0; i < n; i++)
                r.data[i] = v.data[n - 1 - i];
            assert_int_equal(dedup_fingerprint_image_vol(&r, path, b, err, sizeof err), DEDUP_OK);
            assert_memory_equal(a, b, DEDUP_FP_IMAGE_DIM * sizeof *a);
            free(r.data);
        }
        free(keep);
        img_vol_free(&v);
        free(path);
    }
    /* too small for a fingerprint: named, out untouched */
    float px[16] = {0};
    img_vol tiny = {.data = px, .nx = 4, .ny = 4, .nz = 1};
    b[0] = 42;
    assert_int_equal(dedup_fingerprint_image_vol(&tiny, "tiny.png", b, err, sizeof err), DEDUP_INVAL);
    assert_non_null(strstr(err, "tiny.png"));
    assert_true(b[0] == 42);
    free(a);
    tu_rmtree(dir);
    free(dir);
}

#define D 16

/* Clusters of model embeddings: exact copies by data hash, near copies by
 * range search.  D-dimensional random vectors. */
static void test_embeddings(void **state)
{
    char *dir = tu_mkdtemp();
    store *s = NULL;
    char err[512];
    store_opts o = {.create = 1, .dim = D, .model_id = "test"};
    assert_int_equal(store_open(dir, &o, &s, err, sizeof err), 0);
    /* 200 random items; items 10, 11, 12 near copies of item 5; 20 an exact
     * copy of 21's data with a different payload; 30 near 31. */
    enum { M = 200 };
    float *x = malloc((size_t)M * D * sizeof *x);
    tu_rng r;
    tu_rng_seed(&r, 8);
    tu_fill_normal(&r, x, (size_t)M * D);
    tu_normalize_rows(x, M, D);
    for (int c = 10; c <= 12; c++)
        for (int j = 0; j < D; j++)
            x[c * D + j] = x[5 * D + j] + 0.02f * (float)tu_rng_normal(&r);
    memcpy(x + 20 * D, x + 21 * D, D * sizeof(float));
    for (int j = 0; j < D; j++)
        x[30 * D + j] = x[31 * D + j] + 0.02f * (float)tu_rng_normal(&r);
    tu_normalize_rows(x, M, D);
    store_item it[M];
    store_put p[M];
    uint64_t ids[M];
    char buf[M][32];
    memset(it, 0, sizeof it);
    for (int i = 0; i < M; i++) {
        snprintf(buf[i], sizeof buf[i], "{\"i\":%d}", i);
        it[i].payload_json = buf[i];
        util_sha256(buf[i], strlen(buf[i]), it[i].content_hash);
        util_sha256(x + i * D, D * sizeof(float), it[i].data_hash);
        p[i] = (store_put){.item = &it[i], .has_vector = 1, .space = STORE_SPACE_IMAGE,
                           .vector = x + i * D};
    }
    assert_int_equal(store_put_batch(s, p, M, ids, NULL), 0);
    idx_space *ix = NULL;
    assert_int_equal(idx_space_open(s, STORE_SPACE_IMAGE, NULL, &ix, err, sizeof err), 0);
    dedup_result *res = NULL;
    assert_int_equal(dedup_embeddings(s, ix, 0.98f, 0, &res, err, sizeof err), 0);
    assert_int_equal(res->scanned, M);
    assert_int_equal(res->nexact, 1);
    assert_int_equal(res->exact[0].n, 2);
    assert_int_equal(res->exact[0].ids[0], ids[20]);
    assert_int_equal(res->exact[0].ids[1], ids[21]);
    assert_int_equal(res->nnear, 3);
    assert_int_equal(res->near[0].n, 4);
    uint64_t want0[] = {ids[5], ids[10], ids[11], ids[12]};
    for (int i = 0; i < 4; i++)
        assert_int_equal(res->near[0].ids[i], want0[i]);
    assert_int_equal(res->near[1].n, 2); /* 20, 21 (identical vectors) */
    assert_int_equal(res->near[1].ids[0], ids[20]);
    assert_int_equal(res->near[2].n, 2);
    assert_int_equal(res->near[2].ids[0], ids[30]);
    assert_true(res->near[0].min_score >= 0.98f);
    const size_t pairs = res->pairs;
    dedup_result_free(res);
    assert_int_equal(dedup_embeddings(s, ix, 1.5f, 0, &res, err, sizeof err), DEDUP_INVAL);
    /* the pair bound: the same search fits in its own pair count, not in one
     * fewer; a threshold that links everything is refused early, naming the
     * bound */
    assert_true(pairs >= 8); /* 6 among 5, 10, 11, 12; 20-21; 30-31 */
    assert_int_equal(dedup_embeddings(s, ix, 0.98f, pairs, &res, err, sizeof err), 0);
    assert_int_equal(res->pairs, pairs);
    dedup_result_free(res);
    res = NULL;
    assert_int_equal(dedup_embeddings(s, ix, 0.98f, pairs - 1, &res, err, sizeof err),
                     DEDUP_TOOBIG);
    assert_null(res);
    char want[64];
    snprintf(want, sizeof want, "more than %zu near pairs", pairs - 1);
    assert_non_null(strstr(err, want));
    assert_int_equal(dedup_embeddings(s, ix, 0.0001f, 1000, &res, err, sizeof err),
                     DEDUP_TOOBIG);
    assert_non_null(strstr(err, "threshold 0.0001 links more than 1000"));
    idx_space_free(ix);
    store_close(s);
    tu_rmtree(dir);
    free(dir);
    free(x);
}

static void test_errors(void **state)
{
    (void)state;
    for (int c = 0; c < DEDUP_NERR; c++) {
        assert_true(strlen(dedup_strerror(c)) > 0);
        assert_true(strncmp(dedup_errname(c), "DEDUP_", 6) == 0);
    }
    assert_string_equal(dedup_errname(DEDUP_NERR), "DEDUP_UNKNOWN");
    assert_string_equal(dedup_errname(DEDUP_FORMAT), "DEDUP_FORMAT");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rescan_and_other),
        cmocka_unit_test(test_bad_file),
        cmocka_unit_test(test_image_rescan_and_other),
        cmocka_unit_test(test_image_bad_file),
        cmocka_unit_test(test_from_decoded),
        cmocka_unit_test(test_embeddings),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
