/* test_search.c - filtered search against brute force. */
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

#include "indexer/indexer.h"
#include "searcher/searcher.h"
#include "store/store.h"
#include "testutil.h"

#define N 6000
#define D 16

static const char *const modalities[] = {"CT", "MR", "CR"};

typedef struct fx {
    char *dir;
    store *s;
    float *x;
    uint64_t ids[N];
} fx;

/* Item i's payload, as in the store. */
static void payload(int i, char *buf, size_t len)
{
    snprintf(buf, len,
             "{\"name\":\"item-%d\",\"group\":\"g%d\",\"score\":%g,\"modality\":\"%s\","
             "\"tags\":[\"t%d\",\"t%d\"],\"flag\":%s,\"depth\":%d}",
             i, i % 10, (double)i / N, modalities[i % 3], i % 4, (i + 1) % 4,
             i % 2 ? "true" : "false", i % 7 - 3);
}

static int setup(void **state)
{
    fx *f = calloc(1, sizeof *f);
    f->dir = tu_mkdtemp();
    char err[512];
    store_opts o = {.create = 1, .dim = D, .model_id = "test"};
    if (store_open(f->dir, &o, &f->s, err, sizeof err))
        return -1;
    f->x = malloc((size_t)N * D * sizeof *f->x);
    tu_rng r;
    tu_rng_seed(&r, 5);
    tu_fill_normal(&r, f->x, (size_t)N * D);
    tu_normalize_rows(f->x, N, D);
    store_item *it = calloc(N, sizeof *it);
    store_put *p = calloc(N, sizeof *p);
    char buf[256];
    for (int i = 0; i < N; i++) {
        payload(i, buf, sizeof buf);
        it[i].kind = STORE_KIND_VECTOR;
        it[i].payload_json = strdup(buf);
        util_sha256(buf, strlen(buf), it[i].content_hash);
        util_sha256(f->x + (size_t)i * D, D * sizeof(float), it[i].data_hash);
        p[i] = (store_put){.item = &it[i], .has_vector = 1, .space = STORE_SPACE_IMAGE,
                           .vector = f->x + (size_t)i * D};
    }
    int rc = store_put_batch(f->s, p, N, f->ids, NULL);
    for (int i = 0; i < N; i++)
        free(it[i].payload_json);
    free(it);
    free(p);
    *state = f;
    return rc;
}

static int teardown(void **state)
{
    fx *f = *state;
    store_close(f->s);
    tu_rmtree(f->dir);
    free(f->dir);
    free(f->x);
    free(f);
    return 0;
}

/* Brute force over the rows for which keep(i) holds. */
typedef int (*keep_fn)(int i);

static size_t brute(fx *f, const float *q, keep_fn keep, size_t k, int64_t exclude, int64_t *ids,
                    float *sc)
{
    float *sub = malloc((size_t)N * D * sizeof *sub);
    int *map = malloc(N * sizeof *map);
    size_t m = 0;
    for (int i = 0; i < N; i++)
        if (keep(i) && (int64_t)f->ids[i] != exclude) {
            memcpy(sub + m * D, f->x + (size_t)i * D, D * sizeof(float));
            map[m++] = i;
        }
    tu_topk_ip(sub, m, D, q, 1, k, ids, sc);
    size_t n = 0;
    for (size_t j = 0; j < k; j++)
        if (ids[j] >= 0) {
            ids[j] = (int64_t)f->ids[map[ids[j]]];
            n++;
        }
    free(sub);
    free(map);
    return n;
}

static int keep_g3(int i) { return i % 10 == 3; }
static int keep_range(int i) { return (double)i / N >= 0.25 && (double)i / N < 0.3; }
static int keep_ct_low(int i) { return i % 3 == 0 && (double)i / N <= 0.2; }
static int keep_tag2(int i) { return i % 4 == 2 || (i + 1) % 4 == 2; }
static int keep_flag(int i) { return i % 2 == 1; }
static int keep_neg(int i) { return i % 7 - 3 < 0; }
static int keep_broad(int i) { return (double)i / N >= 0.2; }

static void check_filters(fx *f, idx_space *x, size_t exact_max)
{
    static const struct {
        const char *expr[2];
        keep_fn keep;
    } cases[] = {
        {{"group=g3", NULL}, keep_g3},
        {{"score>=0.25", "score<0.3"}, keep_range},
        {{"modality=CT", "score<=0.2"}, keep_ct_low},
        {{"tags=t2", NULL}, keep_tag2},
        {{"flag=true", NULL}, keep_flag},
        {{"depth<0", NULL}, keep_neg},
        {{"score>=0.2", NULL}, keep_broad},
    };
    tu_rng r;
    tu_rng_seed(&r, 99);
    char err[512];
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        srch_filter fl[2];
        size_t nf = 0;
        for (; nf < 2 && cases[c].expr[nf]; nf++)
            assert_int_equal(srch_filter_parse(cases[c].expr[nf], &fl[nf], err, sizeof err), 0);
        for (int t = 0; t < 5; t++) {
            float q[D];
            tu_fill_normal(&r, q, D);
            tu_normalize_rows(q, 1, D);
            size_t k = 10;
            srch_hit hits[10];
            size_t n = 0;
            srch_stats st;
            srch_query qq = {.vec = q, .k = k, .filters = fl, .nfilters = nf, .exclude_id = -1,
                             .exact_max = exact_max};
            assert_int_equal(srch_search(f->s, x, &qq, hits, &n, &st, err, sizeof err), 0);
            int64_t bid[10];
            float bsc[10];
            size_t bn = brute(f, q, cases[c].keep, k, -1, bid, bsc);
            assert_int_equal(n, bn);
            for (size_t i = 0; i < n; i++) {
                if (hits[i].id != bid[i])
                    fail_msg("filter %s: hit %zu is %lld, brute force says %lld (plan %s)",
                             cases[c].expr[0], i, (long long)hits[i].id, (long long)bid[i],
                             st.plan);
                assert_float_equal(hits[i].score, bsc[i], 1e-5);
            }
        }
        for (size_t i = 0; i < nf; i++)
            srch_filter_clear(&fl[i]);
    }
}

static void test_filters_flat(void **state)
{
    fx *f = *state;
    idx_space *x = NULL;
    char err[512];
    assert_int_equal(idx_space_open(f->s, STORE_SPACE_IMAGE, NULL, &x, err, sizeof err), 0);
    check_filters(f, x, 0); /* exact scans */
    check_filters(f, x, 1); /* selectors inside the FAISS search where the set is large */
    idx_space_free(x);
}

static void test_filters_ivf(void **state)
{
    fx *f = *state;
    idx_space *x = NULL;
    char err[512];
    idx_opts o = {.factory = "IVF32,Flat"};
    assert_int_equal(idx_space_open(f->s, STORE_SPACE_IMAGE, &o, &x, err, sizeof err), 0);
    check_filters(f, x, 0); /* selective filters fall back to exact scans */
    idx_space_free(x);
}

static void test_filters_hnsw_fallback(void **state)
{
    /* HNSW under a selective selector comes back short; the searcher then
     * scans exactly, so results still equal brute force. */
    fx *f = *state;
    idx_space *x = NULL;
    char err[512];
    idx_opts o = {.factory = "HNSW16,Flat"};
    assert_int_equal(idx_space_open(f->s, STORE_SPACE_IMAGE, &o, &x, err, sizeof err), 0);
    check_filters(f, x, 0);
    idx_space_free(x);
}

static void test_unfiltered_and_exclude(void **state)
{
    fx *f = *state;
    idx_space *x = NULL;
    char err[512];
    assert_int_equal(idx_space_open(f->s, STORE_SPACE_IMAGE, NULL, &x, err, sizeof err), 0);
    const float *q = f->x + 100 * D;
    srch_hit hits[5];
    size_t n;
    srch_query qq = {.vec = q, .k = 5, .exclude_id = (int64_t)f->ids[100]};
    assert_int_equal(srch_search(f->s, x, &qq, hits, &n, NULL, err, sizeof err), 0);
    assert_int_equal(n, 5);
    for (size_t i = 0; i < n; i++)
        assert_int_not_equal(hits[i].id, (int64_t)f->ids[100]);
    /* Without the exclusion the item itself comes first with score 1. */
    qq.exclude_id = -1;
    assert_int_equal(srch_search(f->s, x, &qq, hits, &n, NULL, err, sizeof err), 0);
    assert_int_equal(hits[0].id, (int64_t)f->ids[100]);
    assert_float_equal(hits[0].score, 1.0, 1e-5);
    /* k out of range. */
    qq.k = 0;
    assert_int_equal(srch_search(f->s, x, &qq, hits, &n, NULL, err, sizeof err), SRCH_INVAL);
    assert_non_null(strstr(err, "k must be"));
    qq.k = SRCH_K_MAX + 1;
    assert_int_equal(srch_search(f->s, x, &qq, hits, &n, NULL, err, sizeof err), SRCH_INVAL);
    idx_space_free(x);
}

static void test_filter_parse(void **state)
{
    srch_filter fl;
    char err[256];
    assert_int_equal(srch_filter_parse("a=b=c", &fl, err, sizeof err), 0);
    assert_string_equal(fl.key, "a");
    assert_string_equal(fl.text, "b=c");
    assert_int_equal(fl.f.op, STORE_OP_EQ);
    assert_false(fl.f.num_valid);
    srch_filter_clear(&fl);
    assert_int_equal(srch_filter_parse("size>=8.5", &fl, err, sizeof err), 0);
    assert_int_equal(fl.f.op, STORE_OP_GE);
    assert_true(fl.f.num_valid);
    assert_float_equal(fl.f.num, 8.5, 0);
    srch_filter_clear(&fl);
    assert_int_equal(srch_filter_parse("n<-2", &fl, err, sizeof err), 0);
    assert_int_equal(fl.f.op, STORE_OP_LT);
    assert_float_equal(fl.f.num, -2, 0);
    srch_filter_clear(&fl);
    const char *bad[] = {"novalue", "=x", "size>=big", "size<", "x>nan"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_int_equal(srch_filter_parse(bad[i], &fl, err, sizeof err), SRCH_INVAL);
        assert_non_null(strstr(err, bad[i]));
    }
    for (int c = 0; c < SRCH_NERR; c++) {
        assert_true(strlen(srch_strerror(c)) > 0);
        assert_true(strncmp(srch_errname(c), "SRCH_", 5) == 0);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_filter_parse),
        cmocka_unit_test_setup_teardown(test_filters_flat, setup, teardown),
        cmocka_unit_test_setup_teardown(test_filters_ivf, setup, teardown),
        cmocka_unit_test_setup_teardown(test_filters_hnsw_fallback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unfiltered_and_exclude, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
