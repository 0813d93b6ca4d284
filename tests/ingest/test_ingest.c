/* test_ingest.c - several vectors per item in the store (slices), best slices,
 * and the ingest pipeline: bad items, idempotence, --strict, and SIGKILL at
 * random points followed by a rerun (nothing lost, nothing twice).
 *
 * The ingest tests use the reference fixture model (tests/fixtures/models/
 * medsem: 8 x 32 x 32 volumes, 32 x 32 images, so 8 slices per volume) on a
 * tiny synthetic set written by synth_dataset_write.  The kill test
 * re-executes this program with --child (as tests/indexer/test_crash does),
 * so no OpenMP or LMDB state crosses a fork.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <cmocka.h>

#include "encoder/encoder.h"
#include "dedup/dedup.h"
#include "synth/synth.h"
#include "indexer/indexer.h"
#include "ingest/ingest.h"
#include "searcher/searcher.h"
#include "store/store.h"
#include "testutil.h"

#define DIM 8
#define KILLS 16

static char self_exe[4096];

static store *new_store(const char *dir, uint32_t dim, const char *model)
{
    store *s = NULL;
    char err[512];
    store_opts o = {.create = 1, .dim = dim, .model_id = model};
    if (store_open(dir, &o, &s, err, sizeof err))
        fail_msg("%s", err);
    return s;
}

static void fill(float *v, int seed)
{
    for (int i = 0; i < DIM; i++)
        v[i] = (float)((seed * 7 + i * 3) % 11) - 5.0f + (i == seed % DIM ? 9.0f : 0.0f);
    float n = 0;
    for (int i = 0; i < DIM; i++)
        n += v[i] * v[i];
    for (int i = 0; i < DIM; i++)
        v[i] /= sqrtf(n);
}

typedef struct scan_acc {
    uint64_t ids[256];
    size_t n;
} scan_acc;

static int scan_cb(void *ctx, uint64_t id, uint64_t gen, const float *vec)
{
    scan_acc *a = ctx;
    if (a->n < 256)
        a->ids[a->n++] = id;
    return 0;
}

/* ---- the store: several vectors per item ------------------------------------ */

static void test_store_slices(void **state)
{
    char *dir = tu_mkdtemp(), *db = tu_path(dir, "db");
    store *s = new_store(db, DIM, "m");
    float v[16][DIM];
    for (int i = 0; i < 16; i++)
        fill(v[i], i);
    store_item vol = {.kind = STORE_KIND_VOLUME, .report = "a nodule", .payload_json = "{\"p\":\"a\"}"};
    store_item img = {.kind = STORE_KIND_IMAGE, .payload_json = "{\"p\":\"b\"}"};
    vol.content_hash[0] = 1;
    img.content_hash[0] = 2;
    store_vec vv[6] = {{STORE_SPACE_REPORT, 0, v[1]}};
    for (int z = 0; z < 5; z++)
        vv[1 + z] = (store_vec){STORE_SPACE_SLICE, (uint32_t)z, v[2 + z]};
    store_put p[2] = {{.item = &vol, .has_vector = 1, .space = STORE_SPACE_VOLUME, .vector = v[0],
                       .vecs = vv, .nvecs = 6},
                      {.item = &img, .has_vector = 1, .space = STORE_SPACE_IMAGE, .vector = v[7]}};
    uint64_t ids[2];
    assert_int_equal(store_put_batch(s, p, 2, ids, NULL), STORE_OK);
    store_space_stat st;
    assert_int_equal(store_space_stat_get(s, STORE_SPACE_SLICE, &st), 0);
    assert_int_equal(st.count, 5);
    uint64_t gen1 = st.gen;
    assert_int_equal(store_space_stat_get(s, STORE_SPACE_REPORT, &st), 0);
    assert_int_equal(st.count, 1);

    /* Slices are read by label, all at once, and listed by label. */
    float got[16 * DIM];
    assert_int_equal(store_vector_get(s, STORE_SPACE_SLICE, STORE_SLICE_LABEL(ids[0], 3), got), 0);
    assert_memory_equal(got, v[5], sizeof v[5]);
    assert_int_equal(store_vector_get(s, STORE_SPACE_SLICE, STORE_SLICE_LABEL(ids[0], 7), got),
                     STORE_NOTFOUND);
    assert_non_null(strstr(store_errmsg(s), "no slice 7"));
    uint32_t zs[16];
    size_t n = 0;
    assert_int_equal(store_slices_get(s, ids[0], got, zs, 16, &n), 0);
    assert_int_equal(n, 5);
    for (int z = 0; z < 5; z++) {
        assert_int_equal(zs[z], z);
        assert_memory_equal(got + z * DIM, v[2 + z], sizeof v[0]);
    }
    assert_int_equal(store_slices_get(s, ids[1], got, zs, 16, &n), 0);
    assert_int_equal(n, 0);
    uint64_t *labels = NULL;
    assert_int_equal(store_slice_labels(s, ids, 2, &labels, &n), 0);
    assert_int_equal(n, 5);
    assert_int_equal(labels[4], STORE_SLICE_LABEL(ids[0], 4));
    free(labels);

    /* A second volume: the scan after the first generation sees only it. */
    store_item vol2 = vol;
    vol2.content_hash[0] = 3;
    store_vec v2[3] = {{STORE_SPACE_SLICE, 9, v[8]}, {STORE_SPACE_SLICE, 0, v[9]},
                       {STORE_SPACE_REPORT, 0, v[10]}};
    store_put p2 = {.item = &vol2, .has_vector = 1, .space = STORE_SPACE_VOLUME, .vector = v[11],
                    .vecs = v2, .nvecs = 3};
    uint64_t id2;
    assert_int_equal(store_put_batch(s, &p2, 1, &id2, NULL), 0);
    scan_acc a = {0};
    assert_int_equal(store_vectors_scan(s, STORE_SPACE_SLICE, gen1, scan_cb, &a), 0);
    assert_int_equal(a.n, 2);
    assert_int_equal(a.ids[0], STORE_SLICE_LABEL(id2, 0));
    assert_int_equal(a.ids[1], STORE_SLICE_LABEL(id2, 9));
    a.n = 0;
    assert_int_equal(store_vectors_scan(s, STORE_SPACE_SLICE, 0, scan_cb, &a), 0);
    assert_int_equal(a.n, 7);

    /* The slice index is keyed by labels and catches up. */
    char err[512];
    idx_space *x = NULL;
    assert_int_equal(idx_space_open(s, STORE_SPACE_SLICE, NULL, &x, err, sizeof err), 0);
    int64_t *xi = NULL;
    assert_int_equal(idx_space_ids(x, &xi, &n), 0);
    assert_int_equal(n, 7);
    assert_int_equal(xi[6], (int64_t)STORE_SLICE_LABEL(id2, 9));
    free(xi);
    assert_int_equal(idx_space_save(x), 0);
    idx_space_free(x);

    /* Bad batches write nothing. */
    store_item bad = vol;
    bad.content_hash[0] = 9;
    store_vec bv[2] = {{STORE_SPACE_SLICE, 1, v[0]}, {STORE_SPACE_SLICE, 1, v[1]}};
    store_put pb = {.item = &bad, .has_vector = 1, .space = STORE_SPACE_VOLUME, .vector = v[0],
                    .vecs = bv, .nvecs = 2};
    assert_int_equal(store_put_batch(s, &pb, 1, NULL, NULL), STORE_INVAL);
    assert_non_null(strstr(store_errmsg(s), "two vectors for slice 1"));
    bv[1] = (store_vec){STORE_SPACE_SLICE, STORE_SLICE_MAX, v[1]};
    assert_int_equal(store_put_batch(s, &pb, 1, NULL, NULL), STORE_INVAL);
    bv[1] = (store_vec){STORE_SPACE_VOLUME, 0, v[1]};
    assert_int_equal(store_put_batch(s, &pb, 1, NULL, NULL), STORE_INVAL);
    assert_non_null(strstr(store_errmsg(s), "two volume vectors"));
    bv[1] = (store_vec){STORE_SPACE_REPORT, 2, v[1]};
    assert_int_equal(store_put_batch(s, &pb, 1, NULL, NULL), STORE_INVAL);
    uint64_t items;
    assert_int_equal(store_item_count(s, &items), 0);
    assert_int_equal(items, 3);

    /* Deleting a volume removes its slices and moves the slice space on. */
    assert_int_equal(store_space_stat_get(s, STORE_SPACE_SLICE, &st), 0);
    uint64_t del = st.del_gen;
    assert_int_equal(store_item_delete(s, ids[0]), 0);
    assert_int_equal(store_space_stat_get(s, STORE_SPACE_SLICE, &st), 0);
    assert_int_equal(st.count, 2);
    assert_int_equal(st.del_gen, del + 1);
    assert_int_equal(store_slices_get(s, ids[0], got, zs, 16, &n), 0);
    assert_int_equal(n, 0);
    assert_int_equal(idx_space_open(s, STORE_SPACE_SLICE, NULL, &x, err, sizeof err), 0);
    idx_info info;
    idx_space_info(x, &info);
    assert_int_equal(info.ntotal, 2);
    idx_space_free(x);

    /* Attributes. */
    char *val = NULL;
    assert_int_equal(store_attr_get(s, "model_dir", &val), STORE_NOTFOUND);
    assert_int_equal(store_attr_put(s, "model_dir", "/models/default"), 0);
    assert_int_equal(store_attr_get(s, "model_dir", &val), 0);
    assert_string_equal(val, "/models/default");
    free(val);
    assert_int_equal(store_attr_put(s, "Bad Name", "x"), STORE_INVAL);
    store_close(s);
    tu_rmtree(dir);
    free(db);
    free(dir);
}

/* ---- best slices and the slice space in the searcher ---------------------------- */

static void test_best_slices(void **state)
{
    char *dir = tu_mkdtemp(), *db = tu_path(dir, "db");
    store *s = new_store(db, DIM, "m");
    float v[12][DIM];
    for (int i = 0; i < 12; i++)
        fill(v[i], i);
    store_item it[2] = {{.kind = STORE_KIND_VOLUME, .payload_json = "{\"site\":\"a\"}"},
                        {.kind = STORE_KIND_VOLUME, .payload_json = "{\"site\":\"b\"}"}};
    it[0].content_hash[0] = 1;
    it[1].content_hash[0] = 2;
    store_vec sv[2][4];
    for (int z = 0; z < 4; z++) {
        sv[0][z] = (store_vec){STORE_SPACE_SLICE, (uint32_t)z, v[z]};
        sv[1][z] = (store_vec){STORE_SPACE_SLICE, (uint32_t)z, v[4 + z]};
    }
    store_put p[2] = {{.item = &it[0], .has_vector = 1, .space = STORE_SPACE_VOLUME,
                       .vector = v[10], .vecs = sv[0], .nvecs = 4},
                      {.item = &it[1], .has_vector = 1, .space = STORE_SPACE_VOLUME,
                       .vector = v[11], .vecs = sv[1], .nvecs = 4}};
    uint64_t ids[2];
    assert_int_equal(store_put_batch(s, p, 2, ids, NULL), 0);
    char err[512];
    srch_slice best[4];
    size_t n;
    assert_int_equal(srch_best_slices(s, ids[0], v[2], 2, best, &n, err, sizeof err), 0);
    assert_int_equal(n, 2);
    assert_int_equal(best[0].z, 2);
    assert_true(best[0].score > 0.999f && best[0].score >= best[1].score);
    assert_int_equal(srch_best_slices(s, ids[0], v[2], 0, best, &n, err, sizeof err), 0);
    assert_int_equal(n, 0);

    /* Slice space: hits are labels; a filter keeps one item's slices, and
     * the query item's slices are all left out. */
    idx_space *x = NULL;
    assert_int_equal(idx_space_open(s, STORE_SPACE_SLICE, NULL, &x, err, sizeof err), 0);
    srch_hit h[8];
    srch_query q = {.vec = v[5], .k = 3, .exclude_id = -1};
    assert_int_equal(srch_search(s, x, &q, h, &n, NULL, err, sizeof err), 0);
    assert_int_equal(h[0].id, (int64_t)STORE_SLICE_LABEL(ids[1], 1));
    srch_filter f;
    assert_int_equal(srch_filter_parse("site=a", &f, err, sizeof err), 0);
    q.filters = &f;
    q.nfilters = 1;
    q.k = 8;
    assert_int_equal(srch_search(s, x, &q, h, &n, NULL, err, sizeof err), 0);
    assert_int_equal(n, 4);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(STORE_SLICE_ITEM(h[i].id), ids[0]);
    q.nfilters = 0;
    q.exclude_id = (int64_t)ids[1];
    q.k = 4;
    assert_int_equal(srch_search(s, x, &q, h, &n, NULL, err, sizeof err), 0);
    assert_int_equal(n, 4);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(STORE_SLICE_ITEM(h[i].id), ids[0]);
    srch_filter_clear(&f);
    idx_space_free(x);
    store_close(s);
    tu_rmtree(dir);
    free(db);
    free(dir);
}

/* ---- the pipeline -------------------------------------------------------------- */

typedef struct fixture {
    char *dir, *db, *manifest, *model;
    size_t good;    /* good items in the manifest */
    size_t volumes; /* of which volumes */
    size_t reports; /* items with a report */
    size_t bad_plan, bad_run;
    size_t bad_lines[8];
} fixture;

static void write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    fclose(f);
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    f->dir = tu_mkdtemp();
    f->db = tu_path(f->dir, "db");
    f->model = tu_fixture("models", "medsem");
    char *syn = tu_path(f->dir, "syn"), err[512];
    f->manifest = tu_path(syn, "all.jsonl");
    synth_opts so = {.seed = 5, .volumes = 12, .images = 8, .split = SYNTH_TRAIN,
                         .size = SYNTH_SIZE_SMALL, .threads = 1};
    if (synth_dataset_write(syn, &so, NULL, err, sizeof err))
        fail_msg("%s", err);
    /* A truncated and a garbage .nii.gz, a garbage .png. */
    char *src = tu_path(syn, "train/vol_000000.nii.gz"), *trunc = tu_path(syn, "trunc.nii.gz");
    char *junk = tu_path(syn, "junk.nii.gz"), *junkpng = tu_path(syn, "junk.png");
    FILE *in = fopen(src, "rb");
    char buf[300];
    assert_int_equal(fread(buf, 1, sizeof buf, in), sizeof buf);
    fclose(in);
    write_file(trunc, buf, sizeof buf);
    write_file(junk, "this is not a NIfTI file at all", 31);
    write_file(junkpng, "\x89PNG garbage", 12);
    /* The manifest: synth's lines, a report-only item, and bad lines. */
    char *tm = tu_path(syn, "train.jsonl");
    FILE *mi = fopen(tm, "r"), *mo = fopen(f->manifest, "w");
    char line[65536];
    size_t lineno = 0;
    while (fgets(line, sizeof line, mi)) {
        fputs(line, mo);
        lineno++;
        f->good++;
        f->reports++;
        if (strstr(line, "\"volume\""))
            f->volumes++;
    }
    fclose(mi);
    const char *extra[] = {
        "{\"kind\":\"report\",\"report\":\"Small left pleural effusion.\",\"patient\":\"X1\"}",
        "{\"kind\":\"volume\",\"file\":\"train/vol_000001.nii.gz\",\"modality\":\"CT\"", /* bad JSON */
        "{\"kind\":\"volume\",\"file\":\"missing.nii.gz\",\"modality\":\"CT\",\"report\":\"x\"}",
        "{\"kind\":\"volume\",\"file\":\"trunc.nii.gz\",\"modality\":\"CT\",\"report\":\"t\"}",
        "{\"kind\":\"report\",\"report\":\"  \"}",
        "{\"kind\":\"volume\",\"file\":\"junk.nii.gz\",\"modality\":\"CT\",\"report\":\"j\"}",
        "{\"kind\":\"image\",\"file\":\"junk.png\",\"modality\":\"CR\"}",
        "{\"kind\":\"image\",\"file\":\"train/img_000001.png\",\"modality\":\"CR\",\"n\":1}",
    };
    /* bad: 0 = plan, 1 = run, -1 = good */
    const int badness[] = {-1, 0, 0, 1, 0, 1, 1, -1};
    for (size_t i = 0; i < sizeof extra / sizeof *extra; i++) {
        fprintf(mo, "%s\n", extra[i]);
        lineno++;
        if (badness[i] < 0) {
            f->good++;
            f->reports += strstr(extra[i], "report") != NULL;
        } else {
            f->bad_lines[f->bad_plan + f->bad_run] = lineno;
            if (badness[i] == 0)
                f->bad_plan++;
            else
                f->bad_run++;
        }
    }
    fclose(mo);
    free(syn);
    free(src);
    free(trunc);
    free(junk);
    free(junkpng);
    free(tm);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    tu_rmtree(f->dir);
    free(f->dir);
    free(f->db);
    free(f->manifest);
    free(f->model);
    free(f);
    return 0;
}

typedef struct badlog {
    char msgs[16][1024];
    size_t n;
} badlog;

static void log_bad(void *ctx, size_t line, const char *msg)
{
    badlog *b = ctx;
    if (b->n < 16)
        snprintf(b->msgs[b->n++], sizeof b->msgs[0], "%s", msg);
}

static int open_model(const fixture *f, enc_pipeline **p)
{
    char err[512];
    int rc = enc_pipeline_open(f->model, 1, p, err, sizeof err);
    if (rc)
        fail_msg("%s", err);
    return rc;
}

/* Consistency of an ingested database: each item has exactly its vectors,
 * the space counts and indexes agree, no content hash twice. */
static size_t check_db(const fixture *f, store *s, int D)
{
    uint64_t items = 0;
    assert_int_equal(store_item_count(s, &items), 0);
    size_t want[STORE_NSPACES] = {0};
    float *v = malloc((size_t)(D + 1) * store_dim(s) * sizeof *v);
    for (uint64_t id = 1; id < items + 64; id++) {
        store_item *it = NULL;
        int r = store_item_get(s, id, &it);
        if (r == STORE_NOTFOUND)
            continue;
        assert_int_equal(r, 0);
        uint64_t found = 0;
        assert_int_equal(store_hash_lookup(s, it->content_hash, &found), 0);
        assert_int_equal(found, id);
        store_space main = it->kind == STORE_KIND_VOLUME  ? STORE_SPACE_VOLUME
                           : it->kind == STORE_KIND_IMAGE ? STORE_SPACE_IMAGE
                                                          : STORE_SPACE_REPORT;
        assert_int_equal(store_vector_get(s, main, id, v), 0);
        want[main]++;
        if (main != STORE_SPACE_REPORT && it->report) {
            assert_int_equal(store_vector_get(s, STORE_SPACE_REPORT, id, v), 0);
            want[STORE_SPACE_REPORT]++;
        }
        size_t n = 0;
        assert_int_equal(store_slices_get(s, id, v, NULL, (size_t)D + 1, &n), 0);
        assert_int_equal(n, it->kind == STORE_KIND_VOLUME ? (size_t)D : 0);
        want[STORE_SPACE_SLICE] += n;
        store_item_free(it);
    }
    free(v);
    for (int sp = 0; sp < STORE_NSPACES; sp++) {
        store_space_stat st;
        assert_int_equal(store_space_stat_get(s, (store_space)sp, &st), 0);
        assert_int_equal(st.count, want[sp]);
        idx_space *x = NULL;
        char err[512];
        if (idx_space_open(s, (store_space)sp, NULL, &x, err, sizeof err))
            fail_msg("%s", err);
        idx_info info;
        idx_space_info(x, &info);
        assert_int_equal(info.ntotal, want[sp]);
        idx_space_free(x);
    }
    return (size_t)items;
}

/* The fingerprints ingest stored, collected by a scan (no store reads
 * inside its transaction) and checked afterwards. */
typedef struct fpset {
    size_t n;
    uint64_t id[64];
    uint32_t tag[64], dim[64];
    float *fp[64];
} fpset;

static int collect_fp(void *ctx, uint64_t id, uint32_t tag, uint32_t dim, const float *fp)
{
    fpset *c = ctx;
    assert_true(c->n < 64);
    c->id[c->n] = id;
    c->tag[c->n] = tag;
    c->dim[c->n] = dim;
    c->fp[c->n] = malloc(dim * sizeof(float));
    memcpy(c->fp[c->n], fp, dim * sizeof(float));
    c->n++;
    return 0;
}

/* Every volume and radiograph has the fingerprint of its file, bit for
 * bit, though ingest makes it from the image its encoder worker already
 * decoded; reports have none.  Returns how many were checked. */
static size_t check_fingerprints(store *s)
{
    fpset c = {0};
    assert_int_equal(store_fingerprints_scan(s, collect_fp, &c), 0);
    float *want = malloc(DEDUP_FP_IMAGE_DIM * sizeof *want);
    char err[512];
    for (size_t i = 0; i < c.n; i++) {
        store_item *it = NULL;
        assert_int_equal(store_item_get(s, c.id[i], &it), 0);
        int vol = it->kind == STORE_KIND_VOLUME;
        assert_true(vol || it->kind == STORE_KIND_IMAGE);
        assert_int_equal(c.tag[i], vol ? DEDUP_FP_TAG : DEDUP_FP_IMAGE_TAG);
        assert_int_equal(c.dim[i], vol ? DEDUP_FP_VOLUME_DIM : DEDUP_FP_IMAGE_DIM);
        int rc = vol ? dedup_fingerprint_volume(it->source, enc_modality_parse(it->modality), want,
                                              err, sizeof err)
                     : dedup_fingerprint_image(it->source, want, err, sizeof err);
        if (rc)
            fail_msg("%s", err);
        assert_memory_equal(c.fp[i], want, c.dim[i] * sizeof *want);
        store_item_free(it);
        free(c.fp[i]);
    }
    free(want);
    return c.n;
}

static void test_ingest_run(void **state)
{
    fixture *f = *state;
    enc_pipeline *p = NULL;
    open_model(f, &p);
    int D = enc_pipeline_slices(p, NULL, 0);
    assert_int_equal(D, 8);
    badlog bl = {0};
    ingest_opts o = {.workers = 2, .batch = 3, .commit = 4, .on_bad = log_bad, .ctx = &bl};
    char err[1024];
    ingest_plan *pl = NULL;
    assert_int_equal(ingest_plan_read(f->manifest, &o, &pl, err, sizeof err), 0);
    assert_int_equal(ingest_plan_bad(pl), f->bad_plan);
    store *s = new_store(f->db, (uint32_t)enc_pipeline_dim(p), enc_pipeline_model_id(p));
    ingest_stats st;
    assert_int_equal(ingest_run(pl, p, s, &o, &st, err, sizeof err), 0);
    assert_int_equal(st.added, f->good);
    assert_int_equal(st.existing, 0);
    assert_int_equal(st.bad, f->bad_plan + f->bad_run);
    assert_int_equal(st.vectors[STORE_SPACE_SLICE], f->volumes * 8);
    assert_int_equal(st.vectors[STORE_SPACE_REPORT], f->reports);
    /* Every bad line is named, in manifest order within each phase. */
    assert_int_equal(bl.n, f->bad_plan + f->bad_run);
    for (size_t i = 0; i < bl.n; i++) {
        int named = 0;
        for (size_t k = 0; k < bl.n; k++) {
            char tag[32];
            snprintf(tag, sizeof tag, ".jsonl:%zu: ", f->bad_lines[k]);
            named |= strstr(bl.msgs[i], tag) != NULL;
        }
        if (!named)
            fail_msg("message names no bad line: %s", bl.msgs[i]);
    }
    assert_int_equal(check_db(f, s, D), f->good);
    assert_int_equal(check_fingerprints(s), f->good - 1); /* all but the report-only line */

    /* The same manifest again: nothing new. */
    assert_int_equal(ingest_run(pl, p, s, &o, &st, err, sizeof err), 0);
    assert_int_equal(st.added, 0);
    assert_int_equal(st.existing, f->good);
    assert_int_equal(check_db(f, s, D), f->good);

    /* Text search over report vectors finds the report-only item. */
    enc_worker *w = NULL;
    assert_int_equal(enc_worker_new(p, 1, &w, err, sizeof err), 0);
    const char *t = "Small left pleural effusion.";
    float q[64];
    assert_int_equal(enc_worker_text(w, &t, 1, q, err, sizeof err), 0);
    idx_space *x = NULL;
    assert_int_equal(idx_space_open(s, STORE_SPACE_REPORT, NULL, &x, err, sizeof err), 0);
    srch_hit h[1];
    size_t n;
    srch_query qq = {.vec = q, .k = 1, .exclude_id = -1};
    assert_int_equal(srch_search(s, x, &qq, h, &n, NULL, err, sizeof err), 0);
    store_item *it = NULL;
    assert_int_equal(store_item_get(s, (uint64_t)h[0].id, &it), 0);
    assert_string_equal(it->report, t);
    assert_int_equal(it->kind, STORE_KIND_REPORT);
    store_item_free(it);
    idx_space_free(x);
    enc_worker_free(w);
    store_close(s);
    ingest_plan_free(pl);

    /* --strict: the plan stops at the first bad line, before any write. */
    o.strict = 1;
    bl.n = 0;
    assert_int_equal(ingest_plan_read(f->manifest, &o, &pl, err, sizeof err), INGEST_INPUT);
    assert_non_null(strstr(err, "invalid JSON"));
    assert_int_equal(bl.n, 1);
    /* ... and a run stops at the first bad file, with what came before committed. */
    char *m2 = tu_path(f->dir, "strict.jsonl"), *db2 = tu_path(f->dir, "db2");
    FILE *mf = fopen(m2, "w");
    fprintf(mf, "{\"kind\":\"report\",\"report\":\"One.\"}\n"
                "{\"kind\":\"report\",\"report\":\"Two.\"}\n"
                "{\"kind\":\"volume\",\"file\":\"syn/junk.nii.gz\",\"modality\":\"CT\"}\n"
                "{\"kind\":\"report\",\"report\":\"Four.\"}\n");
    fclose(mf);
    assert_int_equal(ingest_plan_read(m2, &o, &pl, err, sizeof err), 0);
    s = new_store(db2, (uint32_t)enc_pipeline_dim(p), enc_pipeline_model_id(p));
    assert_int_equal(ingest_run(pl, p, s, &o, &st, err, sizeof err), INGEST_INPUT);
    assert_non_null(strstr(err, "strict.jsonl:3: "));
    uint64_t items;
    assert_int_equal(store_item_count(s, &items), 0);
    assert_int_equal(items, 2);
    store_close(s);
    ingest_plan_free(pl);

    /* A database of another model is refused. */
    char *db3 = tu_path(f->dir, "db3");
    s = new_store(db3, (uint32_t)enc_pipeline_dim(p), "another-model");
    free(db3);
    assert_int_equal(ingest_plan_read(m2, &(ingest_opts){0}, &pl, err, sizeof err), 0);
    assert_int_equal(ingest_run(pl, p, s, NULL, &st, err, sizeof err), INGEST_MODEL);
    store_close(s);
    ingest_plan_free(pl);
    free(m2);
    free(db2);
    enc_pipeline_close(p);
}

/* ---- items in memory (the HTTP server's path) -------------------------------------- */

/* The manifest's first volume line as an in-memory item: the line's keys
 * but file, kind, modality and report go to the payload.  Strings are
 * malloc'd into *keep (freed by the caller). */
static ingest_item item_from_line(const fixture *f, char *keep[3])
{
    FILE *mf = fopen(f->manifest, "r");
    char line[65536];
    cJSON *j = NULL;
    while (fgets(line, sizeof line, mf) && !j) {
        j = cJSON_Parse(line);
        const cJSON *k = cJSON_GetObjectItemCaseSensitive(j, "kind");
        if (!cJSON_IsString(k) || strcmp(k->valuestring, "volume")) {
            cJSON_Delete(j);
            j = NULL;
        }
    }
    fclose(mf);
    assert_non_null(j);
    char *syn = strdup(f->manifest);
    *strrchr(syn, '/') = '\0';
    keep[0] = tu_path(syn, cJSON_GetObjectItemCaseSensitive(j, "file")->valuestring);
    free(syn);
    keep[1] = strdup(cJSON_GetObjectItemCaseSensitive(j, "modality")->valuestring);
    keep[2] = strdup(cJSON_GetObjectItemCaseSensitive(j, "report")->valuestring);
    /* Another key order than the manifest's, and a dataset key: neither is
     * part of the identity. */
    cJSON *pay = cJSON_CreateObject();
    cJSON_AddStringToObject(pay, "dataset", "over-http");
    for (cJSON *c = j->child; c; c = c->next)
        if (strcmp(c->string, "file") && strcmp(c->string, "kind") &&
            strcmp(c->string, "modality") && strcmp(c->string, "report"))
            cJSON_AddItemToObject(pay, c->string, cJSON_Duplicate(c, 1));
    char *pj = cJSON_PrintUnformatted(pay);
    cJSON_Delete(pay);
    cJSON_Delete(j);
    return (ingest_item){.kind = STORE_KIND_VOLUME, .path = keep[0], .modality = keep[1],
                         .report = keep[2], .dataset = "over-http", .payload_json = pj};
}

static void test_ingest_items(void **state)
{
    fixture *f = *state;
    enc_pipeline *p = NULL;
    open_model(f, &p);
    int D = enc_pipeline_slices(p, NULL, 0);
    char err[1024];
    ingest_plan *pl = NULL;
    ingest_opts mo = {.workers = 1, .batch = 4};
    assert_int_equal(ingest_plan_read(f->manifest, &mo, &pl, err, sizeof err), 0);
    store *s = new_store(f->db, (uint32_t)enc_pipeline_dim(p), enc_pipeline_model_id(p));
    assert_int_equal(ingest_run(pl, p, s, &mo, NULL, err, sizeof err), 0);
    ingest_plan_free(pl);
    uint64_t before = 0;
    assert_int_equal(store_item_count(s, &before), 0);

    char *keep[3];
    ingest_item same = item_from_line(f, keep);
    char *syn = strdup(f->manifest);
    *strrchr(syn, '/') = '\0';
    char *junk = tu_path(syn, "junk.nii.gz");
    free(syn);
    ingest_item items[] = {
        same,
        {.kind = STORE_KIND_VOLUME, .path = junk, .modality = "CT", .report = "junk"},
        {.kind = STORE_KIND_REPORT, .report = "A new report over HTTP.", .dataset = "d",
         .payload_json = "{\"tags\":[\"x\"]}"},
        /* the same bytes with other metadata: a new item, with slices and geometry */
        {.kind = STORE_KIND_VOLUME, .path = same.path, .modality = same.modality,
         .report = "Another report.", .payload_json = "{\"copy\":1}"},
        {.kind = STORE_KIND_REPORT, .report = "   "},
    };
    size_t n = sizeof items / sizeof *items;
    ingest_result res[5];
    enc_worker *w = NULL;
    assert_int_equal(enc_worker_new(p, 1, &w, err, sizeof err), 0);
    badlog bl = {0};
    ingest_opts o = {.batch = 1, .worker = w, .no_index = 1, .read_geometry = 1,
                     .on_bad = log_bad, .ctx = &bl};
    ingest_stats st;
    assert_int_equal(ingest_items(items, n, "items", p, s, &o, res, &st, err, sizeof err), 0);

    /* The manifest's item, found by content: same id, nothing encoded. */
    assert_int_equal(res[0].status, INGEST_ITEM_EXISTED);
    uint64_t want = 0;
    for (uint64_t id = 1; id <= before && !want; id++) {
        store_item *it = NULL;
        if (store_item_get(s, id, &it))
            continue;
        if (it->source && !strcmp(it->source, keep[0]) && it->report && !strcmp(it->report, keep[2]) &&
            !strstr(it->payload_json, "\"n\""))
            want = id;
        store_item_free(it);
    }
    assert_int_equal(res[0].id, want);
    assert_int_equal(res[1].status, INGEST_ITEM_BAD);
    assert_int_equal(res[1].id, 0);
    assert_non_null(strstr(res[1].error, "items[1]: "));
    assert_int_equal(res[2].status, INGEST_ITEM_ADDED);
    assert_int_equal(res[3].status, INGEST_ITEM_ADDED);
    assert_int_equal(res[4].status, INGEST_ITEM_BAD);
    assert_non_null(strstr(res[4].error, "items[4]: blank 'report'"));
    assert_int_equal(bl.n, 2);
    assert_int_equal(st.added, 2);
    assert_int_equal(st.existing, 1);
    assert_int_equal(st.bad, 2);
    assert_int_equal(st.vectors[STORE_SPACE_SLICE], (size_t)D);

    store_item *it = NULL;
    assert_int_equal(store_item_get(s, res[3].id, &it), 0);
    assert_int_equal(it->ndim, 3);
    assert_true(it->shape[2] > 0 && it->spacing[2] > 0);
    assert_non_null(strstr(it->payload_json, "\"kind\":\"volume\""));
    store_item_free(it);
    assert_int_equal(store_item_get(s, res[2].id, &it), 0);
    assert_string_equal(it->dataset, "d");
    assert_int_equal(it->kind, STORE_KIND_REPORT);
    store_item_free(it);
    /* Again: everything good is there already. */
    assert_int_equal(ingest_items(items, 4, NULL, p, s, &o, res, &st, err, sizeof err), 0);
    assert_int_equal(res[0].status, INGEST_ITEM_EXISTED);
    assert_int_equal(res[2].status, INGEST_ITEM_EXISTED);
    assert_int_equal(res[3].status, INGEST_ITEM_EXISTED);
    assert_int_equal(st.added, 0);
    /* Indexes left alone (no_index) catch up on open: all consistent. */
    assert_int_equal(check_db(f, s, D), before + 2);

    /* strict: the bad item fails the call before anything is written. */
    o.strict = 1;
    assert_int_equal(ingest_items(items + 1, 2, "x", p, s, &o, res, &st, err, sizeof err),
                     INGEST_INPUT);
    assert_int_equal(res[0].status, INGEST_ITEM_BAD);
    assert_int_equal(res[1].status, INGEST_ITEM_BAD);
    store_close(s);

    /* A database from before medsem-ingest-2: its hash is found too. */
    char *db4 = tu_path(f->dir, "db4"), *m4 = tu_path(f->dir, "legacy.jsonl");
    s = new_store(db4, (uint32_t)enc_pipeline_dim(p), enc_pipeline_model_id(p));
    const char *line = "{\"kind\":\"report\",\"report\":\"Legacy.\"}";
    store_item old = {.kind = STORE_KIND_REPORT, .report = "Legacy.", .payload_json = (char *)line};
    util_sha256("Legacy.", 7, old.data_hash);
    util_sha256_ctx hc;
    uint8_t kb = STORE_KIND_REPORT;
    util_sha256_init(&hc);
    util_sha256_update(&hc, "medsem-ingest-1", 16);
    util_sha256_update(&hc, &kb, 1);
    util_sha256_update(&hc, old.data_hash, STORE_HASH_SIZE);
    util_sha256_update(&hc, line, strlen(line));
    util_sha256_final(&hc, old.content_hash);
    store_put sp = {.item = &old};
    assert_int_equal(store_put_batch(s, &sp, 1, NULL, NULL), 0);
    FILE *lf = fopen(m4, "w");
    fprintf(lf, "%s\n", line);
    fclose(lf);
    assert_int_equal(ingest_plan_read(m4, &mo, &pl, err, sizeof err), 0);
    assert_int_equal(ingest_run(pl, p, s, &mo, &st, err, sizeof err), 0);
    assert_int_equal(st.existing, 1);
    assert_int_equal(st.added, 0);
    ingest_plan_free(pl);
    store_close(s);
    free(db4);
    free(m4);

    enc_worker_free(w);
    free((char *)same.payload_json);
    for (int i = 0; i < 3; i++)
        free(keep[i]);
    free(junk);
    enc_pipeline_close(p);
}

/* ---- SIGKILL at random points ----------------------------------------------------- */

static int child_main(const char *model, const char *manifest, const char *db)
{
    enc_pipeline *p = NULL;
    char err[1024];
    ingest_plan *pl = NULL;
    ingest_opts o = {.workers = 2, .batch = 2, .commit = 2, .save_every = 2};
    if (enc_pipeline_open(model, 1, &p, err, sizeof err) ||
        ingest_plan_read(manifest, &o, &pl, err, sizeof err)) {
        fprintf(stderr, "child: %s\n", err);
        return 2;
    }
    store *s = NULL;
    store_opts so = {.create = 1, .dim = (uint32_t)enc_pipeline_dim(p),
                     .model_id = enc_pipeline_model_id(p)};
    if (store_open(db, &so, &s, err, sizeof err)) {
        fprintf(stderr, "child: %s\n", err);
        return 2;
    }
    int rc = ingest_run(pl, p, s, &o, NULL, err, sizeof err);
    store_close(s);
    ingest_plan_free(pl);
    enc_pipeline_close(p);
    return rc ? 1 : 0;
}

static int run_child(const fixture *f, int delay_ms)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        execl(self_exe, self_exe, "--child", f->model, f->manifest, f->db, (char *)NULL);
        _exit(127);
    }
    if (delay_ms >= 0) {
        struct timespec ts = {.tv_sec = delay_ms / 1000, .tv_nsec = (long)(delay_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
        kill(pid, SIGKILL);
    }
    int status;
    assert_true(waitpid(pid, &status, 0) == pid);
    return status;
}

static void verify(const fixture *f, size_t *items)
{
    store *s = NULL;
    char err[1024];
    store_opts so = {0};
    int rc = store_open(f->db, &so, &s, err, sizeof err);
    *items = 0;
    if (rc == STORE_NODB)
        return; /* killed before the database was made */
    if (rc)
        fail_msg("reopening after a kill: %s", err);
    *items = check_db(f, s, 8);
    assert_true(*items <= f->good);
    store_close(s);
}

static void test_kill_ingest(void **state)
{
    fixture *f = *state;
    tu_rmtree(f->db);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    int status = run_child(f, -1);
    clock_gettime(CLOCK_MONOTONIC, &b);
    assert_true(WIFEXITED(status)); /* exit 0, or 1 when bad files were skipped */
    size_t items;
    verify(f, &items);
    assert_int_equal(items, f->good);
    int span = (int)((b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000) + 1;
    print_message("full ingest: %d ms\n", span);
    tu_rng r;
    tu_rng_seed(&r, (uint64_t)time(NULL));
    /* The kill time is drawn from [lo, hi) and the window adapts, so the test
     * does not depend on how fast this machine is today: a fresh run that
     * finished before its kill lowers hi, a kill that left nothing committed
     * (still loading the model) raises lo.  Every other run resumes the last
     * one's partial database instead of starting afresh; such a run has less
     * to do, so its finishing early says nothing about a fresh run's length
     * (letting it lower hi once shrank the window to where nothing is ever
     * committed). */
    int lo = 0, hi = span + span / 3;
    size_t killed = 0, partial = 0, runs = 0;
    for (int i = 0; (killed < KILLS || partial < 2) && i < 4 * KILLS; i++, runs++) {
        if (i % 2 == 0)
            tu_rmtree(f->db);
        int d = lo + (int)tu_rng_below(&r, (uint64_t)(hi > lo + 1 ? hi - lo : 1));
        status = run_child(f, d);
        verify(f, &items);
        if (WIFSIGNALED(status)) {
            killed++;
            if (items == 0 && d < hi - 1)
                lo = d;
        } else if (i % 2 == 0 && d > lo) {
            hi = d;
        }
        partial += WIFSIGNALED(status) && items > 0 && items < f->good;
    }
    print_message("%zu of %zu runs killed (window %d-%d ms), %zu left a partial database\n",
                  killed, runs, lo, hi, partial);
    assert_true(killed >= 3);
    assert_true(partial >= 2);
    /* A rerun finishes the job: every good item once. */
    status = run_child(f, -1);
    assert_true(WIFEXITED(status));
    verify(f, &items);
    assert_int_equal(items, f->good);
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "--child") == 0)
        return child_main(argv[2], argv[3], argv[4]);
    ssize_t n = readlink("/proc/self/exe", self_exe, sizeof self_exe - 1);
    if (n <= 0)
        return 1;
    self_exe[n] = 0;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_store_slices),
        cmocka_unit_test(test_best_slices),
        cmocka_unit_test_setup_teardown(test_ingest_run, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ingest_items, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kill_ingest, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
