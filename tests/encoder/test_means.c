/* test_means.c - the modality means (encoder/means.h): the file round-trips,
 * the move is q - (mu_from - mu_to) normalised, only image and volume queries
 * move, a bad or foreign file is refused with its field named, and a
 * pipeline reads the file beside its weights. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <libgen.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "encoder/encoder.h"
#include "testutil.h"

#define D 8
#define ID "00c0ffee"

static const float mu_img[D] = {0.5f, 0.3f, 0, 0, 0, 0, 0, 0.1f};
static const float mu_vol[D] = {0, 0.6f, 0.2f, 0, 0, 0, -0.1f, 0};
static const float mu_txt[D] = {0, 0, 0, 0.4f, 0.1f, 0, 0, 0};

static void save_all(const char *dir)
{
    const float *mean[3] = {mu_img, mu_vol, mu_txt};
    size_t count[3] = {2000, 1500, 3500};
    char err[512];
    assert_int_equal(enc_means_save(dir, ID, D, mean, count, "train.jsonl", err, sizeof err),
                     ENC_OK);
}

static void write_file(const char *dir, const char *text)
{
    char *p = NULL;
    assert_true(asprintf(&p, "%s/%s", dir, ENC_MEANS_FILE) > 0);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    free(p);
}

static void test_round_trip(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp(), err[512];
    enc_means *m = NULL;
    /* no file: no means, and no error */
    assert_int_equal(enc_means_load(dir, ID, D, &m, err, sizeof err), ENC_OK);
    assert_null(m);
    save_all(dir);
    assert_int_equal(enc_means_load(dir, ID, D, &m, err, sizeof err), ENC_OK);
    assert_non_null(m);
    assert_int_equal(enc_means_count(m, ENC_IMAGE), 2000);
    assert_int_equal(enc_means_count(m, ENC_VOLUME), 1500);
    assert_int_equal(enc_means_count(m, ENC_TEXT), 3500);
    for (int i = 0; i < D; i++) {
        assert_true(enc_means_mean(m, ENC_IMAGE)[i] == mu_img[i]);
        assert_true(enc_means_mean(m, ENC_VOLUME)[i] == mu_vol[i]);
        assert_true(enc_means_mean(m, ENC_TEXT)[i] == mu_txt[i]);
    }
    enc_means_free(m);
    /* a kind left out is absent, and nothing moves toward it */
    const float *mean[3] = {mu_img, NULL, mu_txt};
    size_t count[3] = {10, 0, 20};
    assert_int_equal(enc_means_save(dir, ID, D, mean, count, NULL, err, sizeof err), ENC_OK);
    assert_int_equal(enc_means_load(dir, ID, D, &m, err, sizeof err), ENC_OK);
    assert_int_equal(enc_means_count(m, ENC_VOLUME), 0);
    assert_null(enc_means_mean(m, ENC_VOLUME));
    assert_false(enc_means_moves(m, ENC_IMAGE, ENC_VOLUME));
    assert_true(enc_means_moves(m, ENC_IMAGE, ENC_TEXT));
    enc_means_free(m);
    /* a folder that is not there: refused, naming the file and the step */
    char *gone = NULL;
    assert_true(asprintf(&gone, "%s/gone", dir) > 0);
    assert_int_equal(enc_means_save(gone, ID, D, mean, count, NULL, err, sizeof err), ENC_IO);
    assert_non_null(strstr(err, "gone/" ENC_MEANS_FILE ": create: "));
    free(gone);
    tu_rmtree(dir);
    free(dir);
}

static void test_shift(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp(), err[512];
    save_all(dir);
    enc_means *m = NULL;
    assert_int_equal(enc_means_load(dir, ID, D, &m, err, sizeof err), ENC_OK);
    tu_rng r;
    tu_rng_seed(&r, 7);
    float q[2 * D], orig[2 * D];
    tu_fill_normal(&r, q, 2 * D);
    tu_normalize_rows(q, 2, D);
    memcpy(orig, q, sizeof q);
    /* radiograph -> report: each row is q - (mu_img - mu_txt), at unit norm */
    assert_int_equal(enc_means_shift(m, ENC_IMAGE, ENC_TEXT, q, 2), 1);
    for (int row = 0; row < 2; row++) {
        double want[D], n2 = 0;
        for (int i = 0; i < D; i++) {
            want[i] = orig[row * D + i] - (mu_img[i] - mu_txt[i]);
            n2 += want[i] * want[i];
        }
        for (int i = 0; i < D; i++)
            assert_float_equal(q[row * D + i], want[i] / sqrt(n2), 1e-6);
    }
    /* volume -> radiograph moves too, by its own pair of means */
    memcpy(q, orig, sizeof q);
    assert_int_equal(enc_means_shift(m, ENC_VOLUME, ENC_IMAGE, q, 1), 1);
    assert_true(memcmp(q, orig, D * sizeof *q) != 0);
    assert_true(memcmp(q + D, orig + D, D * sizeof *q) == 0); /* n = 1: one row */
    /* what stays: text queries, the same kind, no means */
    static const int stay[][2] = {{ENC_TEXT, ENC_VOLUME}, {ENC_TEXT, ENC_IMAGE},
                                  {ENC_IMAGE, ENC_IMAGE}, {ENC_VOLUME, ENC_VOLUME}};
    for (size_t k = 0; k < sizeof stay / sizeof *stay; k++) {
        memcpy(q, orig, sizeof q);
        assert_int_equal(enc_means_shift(m, (enc_kind)stay[k][0], (enc_kind)stay[k][1], q, 2), 0);
        assert_memory_equal(q, orig, sizeof q);
    }
    assert_int_equal(enc_means_shift(NULL, ENC_IMAGE, ENC_TEXT, q, 2), 0);
    assert_memory_equal(q, orig, sizeof q);
    /* a row the move takes to zero stays as it was */
    float z[D];
    for (int i = 0; i < D; i++)
        z[i] = mu_img[i] - mu_txt[i];
    float z0[D];
    memcpy(z0, z, sizeof z);
    enc_means_shift(m, ENC_IMAGE, ENC_TEXT, z, 1);
    assert_memory_equal(z, z0, sizeof z);
    enc_means_free(m);
    tu_rmtree(dir);
    free(dir);
}

/* Loads dir's file and expects a refusal whose message holds want. */
static void refused(const char *dir, const char *want)
{
    enc_means *m = (enc_means *)1;
    char err[512] = "";
    assert_int_not_equal(enc_means_load(dir, ID, D, &m, err, sizeof err), ENC_OK);
    assert_null(m);
    if (!strstr(err, want) || !strstr(err, ENC_MEANS_FILE))
        fail_msg("want '%s' and the file named in: %s", want, err);
}

static void test_bad_files(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp();
    write_file(dir, "{\"model\": \"" ID "\", \"dim\": 8, ");
    refused(dir, "not a JSON object");
    write_file(dir, "[1, 2]");
    refused(dir, "not a JSON object");
    write_file(dir, "{\"dim\": 8}");
    refused(dir, "'model'");
    save_all(dir);
    enc_means *m = NULL;
    char err[512];
    /* made for other weights */
    assert_int_not_equal(enc_means_load(dir, "feedface", D, &m, err, sizeof err), ENC_OK);
    assert_non_null(strstr(err, "'model' is " ID));
    assert_non_null(strstr(err, "medsem calibrate"));
    /* of another dimension */
    assert_int_not_equal(enc_means_load(dir, ID, 16, &m, err, sizeof err), ENC_OK);
    assert_non_null(strstr(err, "'dim' must be 16"));
    write_file(dir, "{\"model\": \"" ID "\", \"dim\": 8, \"image\": {\"count\": 3, "
                    "\"mean\": [0, 0, 0]}}");
    refused(dir, "'image.mean' must be an array of 8 numbers");
    write_file(dir, "{\"model\": \"" ID "\", \"dim\": 8, \"volume\": {\"count\": 0, "
                    "\"mean\": [0, 0, 0, 0, 0, 0, 0, 0]}}");
    refused(dir, "'volume' must be an object with a positive integer 'count'");
    write_file(dir, "{\"model\": \"" ID "\", \"dim\": 8, \"report\": {\"count\": 2.5, "
                    "\"mean\": [0, 0, 0, 0, 0, 0, 0, 0]}}");
    refused(dir, "positive integer 'count'");
    write_file(dir, "{\"model\": \"" ID "\", \"dim\": 8, \"report\": {\"count\": 2, "
                    "\"mean\": [0, 0, \"x\", 0, 0, 0, 0, 0]}}");
    refused(dir, "'report.mean'[2] must be a number from -1 to 1");
    write_file(dir, "{\"model\": \"" ID "\", \"dim\": 8, \"report\": {\"count\": 2, "
                    "\"mean\": [0, 0, 0, 0, 0, 0, 0, 2]}}");
    refused(dir, "'report.mean'[7]");
    write_file(dir, "{\"model\": \"" ID "\", \"dim\": 8, \"image\": {\"count\": 2, "
                    "\"mean\": [0.6, 0.6, 0.6, 0, 0, 0, 0, 0]}}");
    refused(dir, "more than 1: not a mean of unit vectors");
    tu_rmtree(dir);
    free(dir);
}

static char *fixture_file(const char *name)
{
    const char *top = getenv("top_srcdir");
    char *p = NULL;
    if (top && asprintf(&p, "%s/tests/fixtures/models/medsem/%s", top, name) >= 0)
        return p;
    if (asprintf(&p, "%s/../fixtures/models/medsem/%s", dirname(strdupa(__FILE__)), name) >= 0)
        return p;
    return NULL;
}

/* A model folder reads its means on open, and refuses them after its
 * weights changed; a trainer's save would remove them (test_trainer). */
static void test_pipeline(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp(), err[1024];
    static const char *const files[] = {"config.json", "model.safetensors", "vocab.txt"};
    for (int i = 0; i < 3; i++) {
        char *src = fixture_file(files[i]), *dst = NULL;
        assert_true(asprintf(&dst, "%s/%s", dir, files[i]) > 0);
        assert_int_equal(symlink(src, dst), 0);
        free(src);
        free(dst);
    }
    enc_pipeline *p = NULL;
    assert_int_equal(enc_pipeline_open(dir, 1, &p, err, sizeof err), ENC_OK);
    assert_null(enc_pipeline_means(p));
    int d = enc_pipeline_dim(p);
    char *id = strdup(enc_pipeline_model_id(p));
    enc_pipeline_close(p);
    float *mu = calloc((size_t)d, sizeof *mu);
    mu[0] = 0.25f;
    const float *mean[3] = {mu, mu, mu};
    size_t count[3] = {1, 1, 1};
    assert_int_equal(enc_means_save(dir, id, d, mean, count, NULL, err, sizeof err), ENC_OK);
    assert_int_equal(enc_pipeline_open(dir, 1, &p, err, sizeof err), ENC_OK);
    assert_non_null(enc_pipeline_means(p));
    assert_int_equal(enc_means_count(enc_pipeline_means(p), ENC_TEXT), 1);
    enc_pipeline_close(p);
    /* means of other weights: the open fails and names the file */
    assert_int_equal(enc_means_save(dir, "0123abcd", d, mean, count, NULL, err, sizeof err),
                     ENC_OK);
    p = NULL;
    assert_int_not_equal(enc_pipeline_open(dir, 1, &p, err, sizeof err), ENC_OK);
    assert_null(p);
    assert_non_null(strstr(err, ENC_MEANS_FILE));
    free(mu);
    free(id);
    tu_rmtree(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_shift),
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_pipeline),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
