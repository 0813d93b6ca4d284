/* test_pipeline.c - model directory to embeddings: the pipeline equals its
 * parts (preprocessing + tokenizer + model) and names bad inputs. */
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
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <nifti2_io.h>

#include "encoder/encoder.h"
#include "imageio/imageio.h"
#include "encoder/model.h"
#include "encoder/preprocess.h"
#include "encoder/tokenizer.h"
#include "testutil.h"
#include "util/util.h"

static char *fixture(const char *arch)
{
    const char *top = getenv("top_srcdir");
    char *p = NULL;
    if (top && asprintf(&p, "%s/tests/fixtures/models/%s", top, arch) >= 0)
        return p;
    if (asprintf(&p, "%s/../fixtures/models/%s", dirname(strdupa(__FILE__)), arch) >= 0)
        return p;
    return NULL;
}

static void write_ct(const char *path, int nx, int ny, int nz)
{
    int64_t dims[8] = {3, nx, ny, nz, 1, 1, 1, 1};
    nifti_image *nim = nifti_make_new_nim(dims, DT_INT16, 1);
    assert_non_null(nim);
    int16_t *d = nim->data;
    for (int i = 0; i < nx * ny * nz; i++)
        d[i] = (int16_t)((i * 37) % 1400 - 1000);
    nim->pixdim[1] = 1.2f;
    nim->pixdim[2] = 1.2f;
    nim->pixdim[3] = 2.5f;
    nim->dx = 1.2f;
    nim->dy = 1.2f;
    nim->dz = 2.5f;
    assert_int_equal(nifti_set_filenames(nim, path, 0, 1), 0);
    nifti_image_write(nim);
    nifti_image_free(nim);
}

static float maxdiff(const float *a, const float *b, size_t n)
{
    float m = 0;
    for (size_t i = 0; i < n; i++)
        m = fmaxf(m, fabsf(a[i] - b[i]));
    return m;
}

static void test_medsem_pipeline(void **state)
{
    char *dir = fixture("medsem");
    char err[1024];
    enc_pipeline *p = NULL;
    assert_int_equal(enc_pipeline_open(dir, 1, &p, err, sizeof err), 0);
    int d = enc_pipeline_dim(p);
    assert_int_equal(d, 32);
    assert_true(enc_pipeline_has_image(p) && enc_pipeline_has_volume(p) && enc_pipeline_has_text(p));
    assert_int_equal(strlen(enc_pipeline_model_id(p)), 64);
    enc_worker *w = NULL;
    assert_int_equal(enc_worker_new(p, 2, &w, err, sizeof err), 0);

    /* Text: the pipeline equals tokenizer + model. */
    const char *texts[2] = {"8 mm nodule in the right upper lobe.", "No pleural effusion."};
    float got[64], want[64];
    assert_int_equal(enc_worker_text(w, texts, 2, got, err, sizeof err), 0);
    const enc_model *m = enc_pipeline_model(p);
    enc_input_geom g;
    assert_int_equal(enc_model_geom(m, ENC_TEXT, &g), 0);
    int32_t *ids = calloc(2 * (size_t)g.tokens, sizeof *ids), *mask = calloc(2 * (size_t)g.tokens, sizeof *mask);
    size_t n;
    for (int i = 0; i < 2; i++)
        assert_int_equal(enc_tok_encode(enc_pipeline_tokenizer(p), texts[i], (size_t)g.tokens,
                                        ids + i * g.tokens, mask + i * g.tokens, &n, err, sizeof err), 0);
    enc_state *s = NULL;
    assert_int_equal(enc_state_new(m, ENC_TEXT, 2, NULL, &s, err, sizeof err), 0);
    assert_int_equal(enc_encode_text(s, ids, mask, 2, g.tokens, want), 0);
    assert_true(maxdiff(got, want, 64) == 0);
    enc_state_free(s);
    free(ids);
    free(mask);

    /* Volume: the pipeline equals preprocessing + model. */
    char *tmp = tu_mkdtemp();
    char *ct = tu_path(tmp, "ct.nii.gz");
    write_ct(ct, 20, 18, 6);
    const char *paths[1] = {ct}, *mods[1] = {"CT"};
    assert_int_equal(enc_worker_volumes(w, paths, mods, 1, got, err, sizeof err), 0);
    const enc_prep *pp = enc_pipeline_prep(p);
    float *x = malloc(enc_prep_volume_count(pp) * sizeof *x);
    assert_int_equal(enc_prep_volume(ct, ENC_MOD_CT, pp, x, err, sizeof err), 0);
    assert_int_equal(enc_state_new(m, ENC_VOLUME, 1, NULL, &s, err, sizeof err), 0);
    assert_int_equal(enc_encode_volume(s, x, 1, want), 0);
    assert_true(maxdiff(got, want, 32) == 0);
    double norm = 0;
    for (int i = 0; i < 32; i++)
        norm += (double)got[i] * got[i];
    assert_float_equal(norm, 1.0, 1e-5);
    enc_state_free(s);
    free(x);

    /* A missing file is named; nothing is written to out. */
    char *missing = tu_path(tmp, "missing.nii.gz");
    const char *bad[1] = {missing};
    float sentinel[32];
    for (int i = 0; i < 32; i++)
        sentinel[i] = got[i] = 7.0f;
    assert_int_not_equal(enc_worker_volumes(w, bad, mods, 1, got, err, sizeof err), 0);
    assert_non_null(strstr(err, "missing.nii.gz"));
    assert_true(maxdiff(got, sentinel, 32) == 0);
    /* Too many inputs for the worker. */
    const char *three[3] = {"a", "b", "c"};
    assert_int_equal(enc_worker_text(w, three, 3, got, err, sizeof err), ENC_INVAL);
    free(missing);
    free(ct);
    tu_rmtree(tmp);
    free(tmp);
    enc_worker_free(w);
    enc_pipeline_close(p);
    free(dir);
}

/* What the file hook saw. */
typedef struct seen {
    int calls, idx[4], nx[4], nz[4];
    float first[4]; /* the first voxel, as stored (before any windowing) */
    int fail_at;    /* index to fail with ENC_INVAL, or -1 */
} seen;

static int on_file(void *ctx, int i, const img_vol *v, char *errbuf, size_t errlen)
{
    seen *s = ctx;
    if (s->calls < 4) {
        s->idx[s->calls] = i;
        s->nx[s->calls] = v->nx;
        s->nz[s->calls] = v->nz;
        s->first[s->calls] = v->data[0];
    }
    s->calls++;
    if (i == s->fail_at) {
        snprintf(errbuf, errlen, "hook refuses file %d", i);
        return ENC_INVAL;
    }
    return ENC_OK;
}

/* The file hook sees each file as read, before preprocessing, with its
 * index in the call; its failure fails the call; the vectors are the same
 * with or without it. */
/* COLIPRI: the pipeline reads colipri's processor from config.json (2 mm,
 * [-1000, 1000] HU to [-1, 1], [C, X, Y, Z] of input_shape 16 x 12 x 20);
 * a 32 x 24 x 40 volume of 1 mm voxels resamples to exactly that grid,
 * each voxel the mean of a 2 x 2 x 2 block, and the pipeline equals its
 * parts. */
static void test_colipri_pipeline(void **state)
{
    (void)state;
    char *dir = fixture("colipri");
    char err[1024];
    enc_pipeline *p = NULL;
    int rc = enc_pipeline_open(dir, 1, &p, err, sizeof err);
    if (rc)
        print_error("%s\n", err);
    assert_int_equal(rc, 0);
    assert_true(enc_pipeline_has_volume(p) && enc_pipeline_has_text(p) &&
                !enc_pipeline_has_image(p));
    const enc_prep *pp = enc_pipeline_prep(p);
    assert_true(pp->torchio && pp->xyz);
    assert_int_equal(pp->vol_size[0], 20); /* (Z, Y, X): the model's input is (X, Y, Z) */
    assert_int_equal(pp->vol_size[1], 12);
    assert_int_equal(pp->vol_size[2], 16);
    char *tmp = tu_mkdtemp();
    char *ct = tu_path(tmp, "ct.nii.gz");
    const int nx = 32, ny = 24, nz = 40;
    int64_t dims[8] = {3, nx, ny, nz, 1, 1, 1, 1};
    nifti_image *nim = nifti_make_new_nim(dims, DT_INT16, 1);
    assert_non_null(nim);
    int16_t *raw = nim->data;
    for (int i = 0; i < nx * ny * nz; i++)
        raw[i] = (int16_t)((i * 37) % 2600 - 1300); /* past both ends of the window */
    nim->pixdim[1] = nim->pixdim[2] = nim->pixdim[3] = 1;
    nim->dx = nim->dy = nim->dz = 1;
    assert_int_equal(nifti_set_filenames(nim, ct, 0, 1), 0);
    nifti_image_write(nim);
    float *x = malloc(enc_prep_volume_count(pp) * sizeof *x);
    assert_non_null(x);
    assert_int_equal(enc_prep_volume(ct, ENC_MOD_CT, pp, x, err, sizeof err), 0);
    for (int X = 0; X < 16; X++)
        for (int Y = 0; Y < 12; Y++)
            for (int Z = 0; Z < 20; Z++) {
                double sum = 0;
                for (int c = 0; c < 8; c++)
                    sum += raw[((2 * Z + (c >> 2)) * ny + 2 * Y + (c >> 1 & 1)) * nx + 2 * X +
                               (c & 1)];
                double hu = fmin(1000, fmax(-1000, sum / 8)); /* clamped after resampling */
                assert_float_equal(x[(X * 12 + Y) * 20 + Z], hu / 1000, 1e-5);
            }
    nifti_image_free(nim);
    enc_worker *w = NULL;
    assert_int_equal(enc_worker_new(p, 1, &w, err, sizeof err), 0);
    const char *paths[1] = {ct}, *mods[1] = {"CT"};
    float got[32], want[32];
    assert_int_equal(enc_worker_volumes(w, paths, mods, 1, got, err, sizeof err), 0);
    enc_state *s = NULL;
    assert_int_equal(enc_state_new(enc_pipeline_model(p), ENC_VOLUME, 1, NULL, &s, err,
                                   sizeof err), 0);
    assert_int_equal(enc_encode_volume(s, x, 1, want), 0);
    assert_true(maxdiff(got, want, 32) == 0);
    enc_state_free(s);
    free(x);
    enc_worker_free(w);
    enc_pipeline_close(p);
    tu_rmtree(tmp);
    free(ct);
    free(tmp);
    free(dir);
}

static void test_file_hook(void **state)
{
    (void)state;
    char *dir = fixture("medsem");
    char err[1024];
    enc_pipeline *p = NULL;
    assert_int_equal(enc_pipeline_open(dir, 1, &p, err, sizeof err), 0);
    enc_worker *w = NULL;
    assert_int_equal(enc_worker_new(p, 2, &w, err, sizeof err), 0);
    char *tmp = tu_mkdtemp();
    char *a = tu_path(tmp, "a.nii.gz"), *b = tu_path(tmp, "b.nii");
    write_ct(a, 20, 18, 6);
    write_ct(b, 12, 10, 4);
    const char *paths[2] = {a, b}, *mods[2] = {"CT", "CT"};
    float plain[64], hooked[64];
    assert_int_equal(enc_worker_volumes(w, paths, mods, 2, plain, err, sizeof err), 0);

    seen s = {.fail_at = -1};
    enc_worker_set_file_hook(w, on_file, &s);
    assert_int_equal(enc_worker_volumes(w, paths, mods, 2, hooked, err, sizeof err), 0);
    assert_int_equal(s.calls, 2);
    assert_int_equal(s.idx[0], 0);
    assert_int_equal(s.idx[1], 1);
    assert_int_equal(s.nx[0], 20);
    assert_int_equal(s.nz[0], 6);
    assert_int_equal(s.nx[1], 12);
    assert_int_equal(s.nz[1], 4);
    assert_true(s.first[0] == -1000.0f); /* HU as stored: write_ct's voxel 0 */
    assert_true(maxdiff(plain, hooked, 64) == 0);

    /* The hook's failure is the call's, with its message. */
    s = (seen){.fail_at = 1};
    assert_int_equal(enc_worker_volumes(w, paths, mods, 2, hooked, err, sizeof err), ENC_INVAL);
    assert_string_equal(err, "hook refuses file 1");

    /* Removed: not called any more. */
    enc_worker_set_file_hook(w, NULL, NULL);
    s = (seen){.fail_at = -1};
    assert_int_equal(enc_worker_volumes(w, paths, mods, 2, hooked, err, sizeof err), 0);
    assert_int_equal(s.calls, 0);

    free(a);
    free(b);
    tu_rmtree(tmp);
    free(tmp);
    enc_worker_free(w);
    enc_pipeline_close(p);
    free(dir);
}

/* preprocess.slice_view: "display" cuts the slice space's slices half a
 * turn from RAS order (the volume vectors stay as they are); anything but
 * "ras" or "display" is refused naming the field.  On models/default,
 * whose axial slices are image inputs. */
static void test_slice_view(void **state)
{
    (void)state;
    const char *top = getenv("top_srcdir");
    char *src = NULL, *tmp = tu_mkdtemp(), err[1024];
    assert_true(asprintf(&src, "%s/models/default", top ? top : "..") > 0);
    char *ct = tu_path(tmp, "ct.nii.gz");
    write_ct(ct, 30, 28, 12);
    const char *views[3] = {"ras", "display", "sideways"};
    float vol[2][128], sl[2][64 * 128];
    int ns = 0; /* the model's slices per volume (its volume grid's depth) */
    for (int v = 0; v < 3; v++) {
        char *mdir = tu_path(tmp, views[v]);
        assert_int_equal(mkdir(mdir, 0777), 0);
        char *cfgp = NULL, *cfg = NULL;
        assert_true(asprintf(&cfgp, "%s/config.json", src) > 0);
        size_t len;
        assert_non_null(cfg = util_read_file(cfgp, &len));
        /* "preprocess": { ... } gets "slice_view" as its first key */
        char *at = strstr(cfg, "\"preprocess\"");
        assert_non_null(at);
        at = strchr(at, '{') + 1;
        char *out = tu_path(mdir, "config.json");
        FILE *f = fopen(out, "w");
        assert_non_null(f);
        fprintf(f, "%.*s\"slice_view\": \"%s\", %s", (int)(at - cfg), cfg, views[v], at);
        fclose(f);
        for (int k = 0; k < 2; k++) {
            const char *name = k ? "vocab.txt" : "model.safetensors";
            char *from = NULL, *to = tu_path(mdir, name);
            assert_true(asprintf(&from, "%s/%s", src, name) > 0);
            assert_int_equal(symlink(from, to), 0);
            free(from);
            free(to);
        }
        enc_pipeline *p = NULL;
        int rc = enc_pipeline_open(mdir, 1, &p, err, sizeof err);
        if (v == 2) {
            assert_int_equal(rc, ENC_INVAL);
            assert_non_null(strstr(err, "preprocess.slice_view"));
        } else {
            assert_int_equal(rc, 0);
            ns = enc_pipeline_slices(p, NULL, 0);
            assert_true(ns >= 16 && ns <= 64);
            enc_worker *w = NULL;
            assert_int_equal(enc_worker_new(p, 4, &w, err, sizeof err), 0);
            const char *paths[1] = {ct}, *mods[1] = {"CT"};
            assert_int_equal(enc_worker_volume_slices(w, paths, mods, 1, vol[v], sl[v], err,
                                                      sizeof err), 0);
            enc_worker_free(w);
        }
        enc_pipeline_close(p);
        free(cfg);
        free(cfgp);
        free(out);
        free(mdir);
    }
    assert_true(maxdiff(vol[0], vol[1], 128) == 0);
    assert_true(maxdiff(sl[0], sl[1], (size_t)ns * 128) > 1e-3);
    tu_rmtree(tmp);
    free(tmp);
    free(ct);
    free(src);
}

static void test_kinds_and_errors(void **state)
{
    char err[1024];
    enc_pipeline *p = NULL;
    char *dir = fixture("m3d-clip");
    assert_int_equal(enc_pipeline_open(dir, 1, &p, err, sizeof err), 0);
    assert_false(enc_pipeline_has_image(p));
    enc_worker *w = NULL;
    assert_int_equal(enc_worker_new(p, 1, &w, err, sizeof err), 0);
    const char *img[1] = {"x.png"};
    float v[64];
    assert_int_equal(enc_worker_images(w, img, NULL, 1, v, err, sizeof err), ENC_UNSUPPORTED);
    assert_non_null(strstr(err, "does not encode images"));
    enc_worker_free(w);
    enc_pipeline_close(p);
    free(dir);
    /* A directory that is not a model. */
    char *tmp = tu_mkdtemp();
    assert_int_not_equal(enc_pipeline_open(tmp, 1, &p, err, sizeof err), 0);
    assert_non_null(strstr(err, tmp));
    tu_rmtree(tmp);
    free(tmp);
}

int main(void)
{
    nifti_set_debug_level(0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_medsem_pipeline),
        cmocka_unit_test(test_colipri_pipeline),
        cmocka_unit_test(test_file_hook),
        cmocka_unit_test(test_slice_view),
        cmocka_unit_test(test_kinds_and_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
