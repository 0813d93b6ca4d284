/* test_index.c - the per-space index: kinds, tuning, snapshots, catch-up. */
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
#include <lmdb.h>

#include "indexer/indexer.h"
#include "store/store.h"
#include "testutil.h"

/* Random unit vectors, or points around a few centres when clustered. */
static float *make_vectors(size_t n, size_t d, int clusters, uint64_t seed)
{
    tu_rng r;
    tu_rng_seed(&r, seed);
    float *x = malloc(n * d * sizeof *x);
    assert_non_null(x);
    if (!clusters) {
        tu_fill_normal(&r, x, n * d);
    } else {
        float *c = malloc((size_t)clusters * d * sizeof *c);
        tu_fill_normal(&r, c, (size_t)clusters * d);
        tu_normalize_rows(c, (size_t)clusters, d);
        for (size_t i = 0; i < n; i++) {
            const float *ci = c + (tu_rng_below(&r, (uint64_t)clusters)) * d;
            for (size_t j = 0; j < d; j++)
                x[i * d + j] = ci[j] + 0.15f * (float)tu_rng_normal(&r);
        }
        free(c);
    }
    tu_normalize_rows(x, n, d);
    return x;
}

static void test_errnames(void **state)
{
    for (int c = 0; c < IDX_NERR; c++) {
        assert_true(strlen(idx_strerror(c)) > 0);
        assert_true(strncmp(idx_errname(c), "IDX_", 4) == 0);
    }
    assert_string_equal(idx_strerror(IDX_NERR + 5), "unknown error");
}

static void test_topk(void **state)
{
    float s[4];
    int64_t id[4];
    idx_topk t;
    idx_topk_init(&t, 4, s, id);
    float in[] = {0.1f, 0.9f, 0.5f, 0.9f, -1.0f, 0.7f, 0.2f};
    for (int i = 0; i < 7; i++)
        idx_topk_push(&t, in[i], 10 + i);
    assert_int_equal(idx_topk_finish(&t), 4);
    int64_t want[] = {11, 13, 15, 12}; /* ties go to the lower id */
    for (int i = 0; i < 4; i++)
        assert_int_equal(id[i], want[i]);
    idx_topk_init(&t, 4, s, id);
    idx_topk_push(&t, 0.3f, 1);
    assert_int_equal(idx_topk_finish(&t), 1);
    assert_int_equal(id[1], -1);
    assert_true(isinf(s[3]) && s[3] < 0);
}

static void test_normalize(void **state)
{
    float v[3] = {3, 4, 0};
    assert_int_equal(idx_l2_normalize(v, 3), 0);
    assert_float_equal(v[0], 0.6f, 1e-6);
    float z[2] = {0, 0};
    assert_int_equal(idx_l2_normalize(z, 2), -1);
    float n[3] = {1, NAN, 2};
    assert_int_equal(idx_first_nonfinite(n, 3), 1);
    assert_int_equal(idx_first_nonfinite(v, 3), 3);
}

/* Flat search returns exactly the brute-force top-k, with ids mapped. */
static void test_flat_exact(void **state)
{
    size_t n = 3000, d = 24, nq = 20, k = 10;
    float *x = make_vectors(n, d, 0, 1), *q = make_vectors(nq, d, 0, 2);
    int64_t *ids = malloc(n * sizeof *ids);
    for (size_t i = 0; i < n; i++)
        ids[i] = 1000 + 3 * (int64_t)i;
    idx_space *ix = NULL;
    char err[512];
    assert_int_equal(idx_space_build(x, ids, n, (uint32_t)d, NULL, &ix, err, sizeof err), 0);
    idx_info info;
    idx_space_info(ix, &info);
    assert_string_equal(info.factory, "Flat");
    assert_true(info.exact);
    float sc[200], rs[200];
    int64_t lab[200], ri[200];
    assert_int_equal(idx_space_search(ix, q, nq, k, NULL, 0, sc, lab), 0);
    tu_topk_ip(x, n, d, q, nq, k, ri, rs);
    for (size_t i = 0; i < nq * k; i++) {
        assert_int_equal(lab[i], 1000 + 3 * ri[i]);
        assert_float_equal(sc[i], rs[i], 1e-5);
    }
    /* Restricted to a subset: the brute-force top-k of the subset. */
    uint64_t allow[300];
    float *sub = malloc(300 * d * sizeof *sub);
    for (size_t i = 0; i < 300; i++) {
        allow[i] = (uint64_t)(1000 + 3 * (int64_t)(i * 7));
        memcpy(sub + i * d, x + i * 7 * d, d * sizeof(float));
    }
    assert_int_equal(idx_space_search(ix, q, nq, k, allow, 300, sc, lab), 0);
    tu_topk_ip(sub, 300, d, q, nq, k, ri, rs);
    for (size_t i = 0; i < nq * k; i++)
        assert_int_equal(lab[i], 1000 + 3 * (ri[i] * 7));
    /* k larger than the data: padded with -1. */
    float sc2[5000];
    int64_t lab2[5000];
    assert_int_equal(idx_space_search(ix, q, 1, 5000, NULL, 0, sc2, lab2), 0);
    assert_int_equal(lab2[2999] >= 0, 1);
    assert_int_equal(lab2[3000], -1);
    assert_int_not_equal(idx_space_search(ix, q, 1, 0, NULL, 0, sc2, lab2), 0);
    free(sub);
    idx_space_free(ix);
    free(x);
    free(q);
    free(ids);
}

/* Recall of an ANN index on fresh queries near the data. */
static double recall_on(idx_space *ix, const float *x, size_t n, size_t d, uint64_t seed)
{
    size_t nq = 100, k = 10;
    tu_rng r;
    tu_rng_seed(&r, seed);
    float *q = malloc(nq * d * sizeof *q);
    for (size_t i = 0; i < nq; i++) {
        const float *b = x + tu_rng_below(&r, n) * d;
        for (size_t j = 0; j < d; j++)
            q[i * d + j] = b[j] + 0.05f * (float)tu_rng_normal(&r);
    }
    tu_normalize_rows(q, nq, d);
    float *sc = malloc(nq * k * sizeof *sc), *rs = malloc(nq * k * sizeof *rs);
    int64_t *lab = malloc(nq * k * sizeof *lab), *ri = malloc(nq * k * sizeof *ri);
    assert_int_equal(idx_space_search(ix, q, nq, k, NULL, 0, sc, lab), 0);
    tu_topk_ip(x, n, d, q, nq, k, ri, rs);
    size_t hit = 0;
    for (size_t i = 0; i < nq; i++)
        for (size_t a = 0; a < k; a++)
            for (size_t b = 0; b < k; b++)
                if (lab[i * k + b] == ri[i * k + a]) {
                    hit++;
                    break;
                }
    free(q);
    free(sc);
    free(rs);
    free(lab);
    free(ri);
    return (double)hit / (double)(nq * k);
}

static void test_auto_ivf_tuned(void **state)
{
    size_t n = 60000, d = 16;
    float *x = make_vectors(n, d, 50, 3);
    int64_t *ids = malloc(n * sizeof *ids);
    for (size_t i = 0; i < n; i++)
        ids[i] = (int64_t)i;
    idx_space *ix = NULL;
    char err[512];
    idx_opts o = {.target_recall = 0.95};
    assert_int_equal(idx_space_build(x, ids, n, (uint32_t)d, &o, &ix, err, sizeof err), 0);
    idx_info info;
    idx_space_info(ix, &info);
    assert_true(strncmp(info.factory, "IVF", 3) == 0);
    assert_false(info.exact);
    assert_true(info.nprobe >= 1);
    assert_true(info.recall >= 0.95);
    assert_true(recall_on(ix, x, n, d, 9) >= 0.9);
    idx_space_free(ix);
    free(x);
    free(ids);
}

/* Uniformly random vectors in many dimensions have no structure for IVF to
 * use: the automatic choice falls back to exact Flat rather than scanning
 * most of the lists. */
static void test_auto_falls_back_on_random(void **state)
{
    size_t n = 52000, d = 64;
    float *x = make_vectors(n, d, 0, 12);
    int64_t *ids = malloc(n * sizeof *ids);
    for (size_t i = 0; i < n; i++)
        ids[i] = (int64_t)i;
    idx_space *ix = NULL;
    char err[512];
    assert_int_equal(idx_space_build(x, ids, n, (uint32_t)d, NULL, &ix, err, sizeof err), 0);
    idx_info info;
    idx_space_info(ix, &info);
    assert_string_equal(info.factory, "Flat");
    assert_true(info.exact);
    assert_true(recall_on(ix, x, n, d, 13) == 1.0);
    idx_space_free(ix);
    free(x);
    free(ids);
}

static void test_forced_hnsw(void **state)
{
    size_t n = 5000, d = 16;
    float *x = make_vectors(n, d, 0, 4);
    int64_t *ids = malloc(n * sizeof *ids);
    for (size_t i = 0; i < n; i++)
        ids[i] = (int64_t)i;
    idx_space *ix = NULL;
    char err[512];
    idx_opts o = {.factory = "HNSW16,Flat", .target_recall = 0.97};
    assert_int_equal(idx_space_build(x, ids, n, (uint32_t)d, &o, &ix, err, sizeof err), 0);
    idx_info info;
    idx_space_info(ix, &info);
    assert_string_equal(info.factory, "HNSW16,Flat");
    assert_true(info.forced);
    assert_true(info.ef_search >= 16);
    assert_true(info.recall >= 0.97);
    assert_true(recall_on(ix, x, n, d, 11) >= 0.9);
    idx_space_free(ix);
    free(x);
    free(ids);
}

static void test_bad_factory(void **state)
{
    float x[16] = {1};
    int64_t id = 0;
    idx_space *ix = NULL;
    char err[512] = "";
    idx_opts o = {.factory = "NoSuchIndex42"};
    assert_int_equal(idx_space_build(x, &id, 1, 16, &o, &ix, err, sizeof err), IDX_FAISS);
    assert_non_null(strstr(err, "cannot create the index"));
    assert_null(ix);
    idx_opts o2 = {.factory = "IDMap2,Flat"};
    assert_int_equal(idx_space_build(x, &id, 1, 16, &o2, &ix, err, sizeof err), IDX_INVAL);
    assert_non_null(strstr(err, "IDMap2,Flat"));
}

/* ---- store-backed ------------------------------------------------------------ */

static store *new_store(const char *dir, uint32_t d)
{
    store *s = NULL;
    char err[512];
    store_opts o = {.create = 1, .dim = d, .model_id = "test"};
    assert_int_equal(store_open(dir, &o, &s, err, sizeof err), 0);
    return s;
}

static void put_vectors(store *s, const float *x, size_t from, size_t n, size_t d, uint64_t *ids)
{
    store_item *it = calloc(n, sizeof *it);
    store_put *p = calloc(n, sizeof *p);
    for (size_t i = 0; i < n; i++) {
        it[i].kind = STORE_KIND_VECTOR;
        uint64_t tag = from + i;
        util_sha256(&tag, sizeof tag, it[i].content_hash);
        util_sha256(x + (from + i) * d, d * sizeof(float), it[i].data_hash);
        p[i] = (store_put){.item = &it[i], .has_vector = 1, .space = STORE_SPACE_IMAGE,
                           .vector = x + (from + i) * d};
    }
    assert_int_equal(store_put_batch(s, p, n, ids, NULL), 0);
    free(it);
    free(p);
}

/* The store's LMDB environment opened behind its back, a write transaction
 * begun on named database name (for tests that damage what the store wrote). */
static void raw_open(const char *dir, const char *name, MDB_env **env, MDB_txn **txn,
                     MDB_dbi *dbi)
{
    assert_int_equal(mdb_env_create(env), 0);
    mdb_env_set_maxdbs(*env, 16);
    mdb_env_set_mapsize(*env, (size_t)1 << 30);
    assert_int_equal(mdb_env_open(*env, dir, 0, 0644), 0);
    assert_int_equal(mdb_txn_begin(*env, NULL, 0, txn), 0);
    assert_int_equal(mdb_dbi_open(*txn, name, 0, dbi), 0);
}

static void test_store_snapshot_cycle(void **state)
{
    size_t n = 2000, d = 8;
    float *x = make_vectors(n, d, 0, 5);
    uint64_t *ids = malloc(n * sizeof *ids);
    char *dir = tu_mkdtemp();
    store *s = new_store(dir, (uint32_t)d);
    put_vectors(s, x, 0, 1500, d, ids);

    idx_space *ix = NULL;
    char err[512];
    idx_info info;
    assert_int_equal(idx_space_open(s, STORE_SPACE_IMAGE, NULL, &ix, err, sizeof err), 0);
    idx_space_info(ix, &info);
    assert_non_null(strstr(info.loaded, "no snapshot"));
    assert_int_equal(info.ntotal, 1500);
    assert_int_equal(idx_space_save(ix), 0);
    idx_space_free(ix);

    /* Reopen: from the snapshot; more vectors since are caught up. */
    put_vectors(s, x, 1500, 500, d, ids + 1500);
    assert_int_equal(idx_space_open(s, STORE_SPACE_IMAGE, NULL, &ix, err, sizeof err), 0);
    idx_space_info(ix, &info);
    assert_string_equal(info.loaded, "snapshot");
    assert_int_equal(info.ntotal, 2000);
    float sc[10], rs[10];
    int64_t lab[10], ri[10];
    assert_int_equal(idx_space_search(ix, x + 1700 * d, 1, 10, NULL, 0, sc, lab), 0);
    tu_topk_ip(x, n, d, x + 1700 * d, 1, 10, ri, rs);
    for (int i = 0; i < 10; i++)
        assert_int_equal(lab[i], (int64_t)ids[ri[i]]);
    assert_int_equal(idx_space_save(ix), 0);
    idx_space_free(ix);

    /* A deletion is taken out of the snapshot in place (the store's deletion
     * log names the item): no rebuild. */
    assert_int_equal(store_item_delete(s, ids[1700]), 0);
    assert_int_equal(idx_space_open(s, STORE_SPACE_IMAGE, NULL, &ix, err, sizeof err), 0);
    idx_space_info(ix, &info);
    assert_string_equal(info.loaded, "snapshot");
    assert_int_equal(info.removed, 1);
    assert_int_equal(info.rebuilds, 0);
    assert_int_equal(info.ntotal, 1999);
    assert_int_equal(idx_space_search(ix, x + 1700 * d, 1, 1, NULL, 0, sc, lab), 0);
    assert_int_not_equal(lab[0], (int64_t)ids[1700]);
    /* ... and while open: two more, at the next sync; the results equal
     * exact search over what is left */
    assert_int_equal(store_item_delete(s, ids[10]), 0);
    assert_int_equal(store_item_delete(s, ids[11]), 0);
    assert_int_equal(idx_space_sync(ix), 0);
    idx_space_info(ix, &info);
    assert_int_equal(info.removed, 3);
    assert_int_equal(info.rebuilds, 0);
    assert_int_equal(info.ntotal, 1997);
    assert_int_equal(idx_space_search(ix, x + 10 * d, 1, 10, NULL, 0, sc, lab), 0);
    for (int i = 0; i < 10; i++)
        assert_true(lab[i] != (int64_t)ids[10] && lab[i] != (int64_t)ids[11] &&
                    lab[i] != (int64_t)ids[1700]);
    assert_int_equal(idx_space_save(ix), 0);
    idx_space_free(ix);
    store_close(s);

    /* Corrupt one byte of the snapshot with raw LMDB: detected, rebuilt. */
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_cursor *cur;
    MDB_val k, v;
    raw_open(dir, "index", &env, &txn, &dbi);
    assert_int_equal(mdb_cursor_open(txn, dbi, &cur), 0);
    int flipped = 0;
    while (mdb_cursor_get(cur, &k, &v, flipped ? MDB_NEXT : MDB_FIRST) == 0) {
        if (v.mv_size > 4096) { /* a chunk, not the header */
            char *copy = malloc(v.mv_size);
            memcpy(copy, v.mv_data, v.mv_size);
            copy[v.mv_size / 2] ^= 0x5a;
            MDB_val nv = {.mv_size = v.mv_size, .mv_data = copy};
            assert_int_equal(mdb_cursor_put(cur, &k, &nv, MDB_CURRENT), 0);
            free(copy);
            flipped = 1;
            break;
        }
        flipped = 1;
    }
    mdb_cursor_close(cur);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);

    s = new_store(dir, (uint32_t)d);
    assert_int_equal(idx_space_open(s, STORE_SPACE_IMAGE, NULL, &ix, err, sizeof err), 0);
    idx_space_info(ix, &info);
    assert_non_null(strstr(info.loaded, "checksum"));
    assert_int_equal(info.ntotal, 1997);
    assert_int_equal(idx_space_save(ix), 0);
    idx_space_free(ix);

    /* A log that cannot account for a deletion (one made before the log
     * existed: here the log is dropped between two deletions) means a
     * rebuild. */
    assert_int_equal(store_item_delete(s, ids[20]), 0);
    store_close(s);
    raw_open(dir, "dellog", &env, &txn, &dbi);
    assert_int_equal(mdb_drop(txn, dbi, 1), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
    s = new_store(dir, (uint32_t)d);
    assert_int_equal(store_item_delete(s, ids[21]), 0);
    assert_int_equal(idx_space_open(s, STORE_SPACE_IMAGE, NULL, &ix, err, sizeof err), 0);
    idx_space_info(ix, &info);
    assert_non_null(strstr(info.loaded, "deleted"));
    assert_int_equal(info.rebuilds, 1);
    assert_int_equal(info.ntotal, 1995);
    idx_space_free(ix);
    store_close(s);
    tu_rmtree(dir);
    free(dir);
    free(x);
    free(ids);
}

/* Auto kind grows out of Flat into IVF at save time; a forced kind stays. */
static void test_store_grows_to_ivf(void **state)
{
    size_t n = 52000, d = 8;
    float *x = make_vectors(n, d, 20, 6);
    uint64_t *ids = malloc(n * sizeof *ids);
    char *dir = tu_mkdtemp();
    store *s = new_store(dir, (uint32_t)d);
    idx_space *ix = NULL;
    char err[512];
    idx_info info;
    assert_int_equal(idx_space_open(s, STORE_SPACE_IMAGE, NULL, &ix, err, sizeof err), 0);
    for (size_t i = 0; i < n; i += 13000) {
        put_vectors(s, x, i, 13000, d, ids + i);
        assert_int_equal(idx_space_sync(ix), 0);
    }
    idx_space_info(ix, &info);
    assert_string_equal(info.factory, "Flat");
    assert_int_equal(idx_space_save(ix), 0);
    idx_space_info(ix, &info);
    assert_true(strncmp(info.factory, "IVF", 3) == 0);
    assert_int_equal(info.ntotal, n);
    assert_true(info.recall >= 0.95);
    idx_space_free(ix);
    assert_int_equal(idx_space_open(s, STORE_SPACE_IMAGE, NULL, &ix, err, sizeof err), 0);
    idx_space_info(ix, &info);
    assert_string_equal(info.loaded, "snapshot");
    assert_true(strncmp(info.factory, "IVF", 3) == 0);
    idx_space_free(ix);

    /* Forcing another kind rebuilds it. */
    idx_opts o = {.factory = "Flat"};
    assert_int_equal(idx_space_open(s, STORE_SPACE_IMAGE, &o, &ix, err, sizeof err), 0);
    idx_space_info(ix, &info);
    assert_string_equal(info.factory, "Flat");
    assert_true(info.forced);
    assert_non_null(strstr(info.loaded, "different index kind"));
    idx_space_free(ix);
    store_close(s);
    tu_rmtree(dir);
    free(dir);
    free(x);
    free(ids);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_errnames),
        cmocka_unit_test(test_topk),
        cmocka_unit_test(test_normalize),
        cmocka_unit_test(test_flat_exact),
        cmocka_unit_test(test_auto_ivf_tuned),
        cmocka_unit_test(test_auto_falls_back_on_random),
        cmocka_unit_test(test_forced_hnsw),
        cmocka_unit_test(test_bad_factory),
        cmocka_unit_test(test_store_snapshot_cycle),
        cmocka_unit_test(test_store_grows_to_ivf),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
