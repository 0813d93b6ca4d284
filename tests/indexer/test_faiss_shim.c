/*
 * tests/indexer/test_faiss_shim.c - the FAISS C API subset medsem relies on,
 * exercised through C only, checked against a brute-force inner product.
 *
 * Runs against whichever implementation is linked: medsem's shim
 * (indexer/faiss_shim.cpp) or a system libfaiss_c. Checks of shim-only
 * behaviour are under #ifndef HAVE_FAISS_C.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#if !defined(_GNU_SOURCE) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L /* open_memstream, fmemopen */
#endif

#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "indexer/faiss_ext.h"

enum {
    DIM = 32,
    NB = 3000,          /* database vectors */
    NQ = 20,            /* queries */
    K = 10,
    NLIST = 16,
    ID_OFFSET = 1000,   /* user id of vector i is i + ID_OFFSET */
    SEL_STRIDE = 5      /* selectors keep every 5th vector */
};

#define EPS 1e-3f
#define RADIUS 4.5f

typedef struct fixture {
    float xb[NB * DIM];
    float xq[NQ * DIM];
    idx_t ids[NB];
    unsigned char keep[NB]; /* 1 for the vectors the test selector keeps */
    idx_t kept_ids[NB];
    size_t nkept;
} fixture;

/* ---- helpers ------------------------------------------------------------ */

static uint64_t rng_next(uint64_t *s)
{
    /* xorshift64*: deterministic, independent of libc's rand state */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ULL;
}

static float rng_uniform(uint64_t *s)
{
    return (float)((double)(rng_next(s) >> 11) / 9007199254740992.0) * 2.0f -
           1.0f;
}

static float dot(const float *a, const float *b)
{
    double acc = 0.0;
    for (int i = 0; i < DIM; i++)
        acc += (double)a[i] * (double)b[i];
    return (float)acc;
}

static int is_user_id(idx_t id)
{
    return id >= ID_OFFSET && id < ID_OFFSET + NB;
}

/* Top-k user ids by inner product among vectors with keep[i] (keep NULL =
 * all), best first. */
static void brute_topk(const fixture *f, const float *q,
                       const unsigned char *keep, idx_t k, idx_t *labels,
                       float *dists)
{
    idx_t filled = 0;
    for (int i = 0; i < NB; i++) {
        if (keep != NULL && !keep[i])
            continue;
        float s = dot(q, f->xb + (size_t)i * DIM);
        if (filled == k && s <= dists[k - 1])
            continue;
        idx_t j = filled < k ? filled++ : k - 1;
        while (j > 0 && dists[j - 1] < s) {
            dists[j] = dists[j - 1];
            labels[j] = labels[j - 1];
            j--;
        }
        dists[j] = s;
        labels[j] = f->ids[i];
    }
    for (idx_t j = filled; j < k; j++) {
        labels[j] = -1;
        dists[j] = -INFINITY;
    }
}

/* Asserts that (labels, dists), NQ x K, are the exact top-K among keep. A
 * different label is accepted only on a tie in score. */
static void assert_exact(const fixture *f, const unsigned char *keep,
                         const idx_t *labels, const float *dists)
{
    idx_t bl[K];
    float bd[K];
    for (int q = 0; q < NQ; q++) {
        brute_topk(f, f->xq + (size_t)q * DIM, keep, K, bl, bd);
        for (int j = 0; j < K; j++) {
            idx_t got = labels[q * K + j];
            assert_true(is_user_id(got));
            if (keep != NULL)
                assert_true(keep[got - ID_OFFSET]);
            assert_true(fabsf(dists[q * K + j] - bd[j]) < EPS);
            float real = dot(f->xq + (size_t)q * DIM,
                             f->xb + (size_t)(got - ID_OFFSET) * DIM);
            assert_true(fabsf(real - dists[q * K + j]) < EPS);
            if (got != bl[j])
                assert_true(fabsf(bd[j] - dists[q * K + j]) < EPS);
        }
    }
}

static FaissIndex *build(const fixture *f, const char *desc)
{
    FaissIndex *ix = NULL;
    assert_int_equal(faiss_index_factory(&ix, DIM, desc, METRIC_INNER_PRODUCT),
                     0);
    assert_non_null(ix);
    if (!faiss_Index_is_trained(ix))
        assert_int_equal(faiss_Index_train(ix, NB, f->xb), 0);
    assert_int_equal(faiss_Index_add_with_ids(ix, NB, f->xb, f->ids), 0);
    assert_int_equal(faiss_Index_ntotal(ix), NB);
    return ix;
}

/* The IVF inside an "IDMap2,IVF..." index. */
static FaissIndexIVF *inner_ivf(FaissIndex *ix)
{
    FaissIndexIDMap2 *map = faiss_IndexIDMap2_cast(ix);
    assert_non_null(map);
    FaissIndexIVF *ivf = faiss_IndexIVF_cast(faiss_IndexIDMap2_sub_index(map));
    assert_non_null(ivf);
    return ivf;
}

static void set_param(FaissIndex *ix, const char *name, double v)
{
    FaissParameterSpace *ps = NULL;
    assert_int_equal(faiss_ParameterSpace_new(&ps), 0);
    assert_int_equal(faiss_ParameterSpace_set_index_parameter(ps, ix, name, v),
                     0);
    faiss_ParameterSpace_free(ps);
}

static void assert_failed(int rc)
{
    assert_true(rc == FAISS_EXCEPT || rc == STD_EXCEPT ||
                rc == UNKNOWN_EXCEPT);
    const char *msg = faiss_get_last_error();
    assert_non_null(msg);
    assert_true(msg[0] != '\0');
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (f == NULL)
        return -1;
    uint64_t s = 0x9E3779B97F4A7C15ULL;
    for (size_t i = 0; i < (size_t)NB * DIM; i++)
        f->xb[i] = rng_uniform(&s);
    for (size_t i = 0; i < (size_t)NQ * DIM; i++)
        f->xq[i] = rng_uniform(&s);
    for (int i = 0; i < NB; i++) {
        f->ids[i] = (idx_t)i + ID_OFFSET;
        f->keep[i] = i % SEL_STRIDE == 3;
        if (f->keep[i])
            f->kept_ids[f->nkept++] = f->ids[i];
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    free(*state);
    return 0;
}

/* ---- tests -------------------------------------------------------------- */

static void test_flat_exact(void **state)
{
    const fixture *f = *state;
    FaissIndex *ix = build(f, "IDMap2,Flat");
    idx_t labels[NQ * K];
    float dists[NQ * K];

    assert_int_equal(faiss_Index_d(ix), DIM);
    assert_int_equal(faiss_Index_metric_type(ix), METRIC_INNER_PRODUCT);
    assert_int_equal(faiss_Index_search(ix, NQ, f->xq, K, dists, labels), 0);
    assert_exact(f, NULL, labels, dists);

    /* The id map holds user ids; IDMap accessors work on an IDMap2. */
    FaissIndexIDMap *map = faiss_IndexIDMap_cast(ix);
    assert_non_null(map);
    idx_t *id_map = NULL;
    size_t nmap = 0;
    faiss_IndexIDMap_id_map(map, &id_map, &nmap);
    assert_int_equal(nmap, NB);
    assert_int_equal(id_map[7], 7 + ID_OFFSET);
    assert_true(faiss_IndexIDMap_own_fields(map));
    FaissIndex *sub = faiss_IndexIDMap_sub_index(map);
    assert_non_null(sub);
    assert_int_equal(faiss_Index_ntotal(sub), NB);
    assert_null(faiss_IndexIVF_cast(sub));

    /* reconstruct takes a user id on an IDMap2 */
    float rec[DIM];
    assert_int_equal(faiss_Index_reconstruct(ix, 42 + ID_OFFSET, rec), 0);
    assert_memory_equal(rec, f->xb + 42 * DIM, sizeof rec);

    faiss_Index_free(ix);
}

static void test_ivf_exact_with_full_nprobe(void **state)
{
    const fixture *f = *state;
    FaissIndex *ix = NULL;
    idx_t labels[NQ * K];
    float dists[NQ * K];

    assert_int_equal(faiss_index_factory(&ix, DIM, "IDMap2,IVF16,Flat",
                                         METRIC_INNER_PRODUCT),
                     0);
    assert_false(faiss_Index_is_trained(ix));
    assert_int_equal(faiss_Index_train(ix, NB, f->xb), 0);
    assert_true(faiss_Index_is_trained(ix));
    assert_int_equal(faiss_Index_add_with_ids(ix, NB, f->xb, f->ids), 0);

    FaissIndexIVF *ivf = inner_ivf(ix);
    assert_int_equal(faiss_IndexIVF_nlist(ivf), NLIST);
    assert_int_equal(faiss_IndexIVF_nprobe(ivf), 1);

    /* ParameterSpace reaches the IVF through the IDMap2 */
    set_param(ix, "nprobe", NLIST);
    assert_int_equal(faiss_IndexIVF_nprobe(ivf), NLIST);
    assert_int_equal(faiss_Index_search(ix, NQ, f->xq, K, dists, labels), 0);
    assert_exact(f, NULL, labels, dists);

    faiss_IndexIVF_set_nprobe(ivf, 2);
    assert_int_equal(faiss_IndexIVF_nprobe(ivf), 2);

    faiss_Index_free(ix);
}

static void test_hnsw_search(void **state)
{
    const fixture *f = *state;
    FaissIndex *ix = build(f, "IDMap2,HNSW16,Flat");
    idx_t labels[NQ * K], bl[K];
    float dists[NQ * K], bd[K];

    set_param(ix, "efSearch", 128);
    assert_int_equal(faiss_Index_search(ix, NQ, f->xq, K, dists, labels), 0);
    int hits = 0;
    for (int q = 0; q < NQ; q++) {
        brute_topk(f, f->xq + (size_t)q * DIM, NULL, K, bl, bd);
        for (int j = 0; j < K; j++) {
            assert_true(is_user_id(labels[q * K + j]));
            for (int m = 0; m < K; m++)
                hits += labels[q * K + j] == bl[m];
        }
    }
    assert_true(hits >= NQ * K * 8 / 10); /* recall@10 >= 0.8 */

    /* HNSW has no range search: an error code, not an abort */
    FaissRangeSearchResult *res = NULL;
    assert_int_equal(faiss_RangeSearchResult_new(&res, 1), 0);
    assert_failed(faiss_Index_range_search(ix, 1, f->xq, RADIUS, res));
    faiss_RangeSearchResult_free(res);

    faiss_Index_free(ix);
}

/* Filtered search through an IDMap2: the selector speaks user ids. */
static void test_search_with_selector(void **state)
{
    const fixture *f = *state;
    FaissIDSelectorBatch *batch = NULL;
    assert_int_equal(faiss_IDSelectorBatch_new(&batch, f->nkept, f->kept_ids),
                     0);
    FaissIDSelector *sel = (FaissIDSelector *)batch;
    idx_t labels[NQ * K];
    float dists[NQ * K];

    /* Flat with plain parameters: exact top-k among the kept ids */
    FaissIndex *flat = build(f, "IDMap2,Flat");
    FaissSearchParameters *sp = NULL;
    assert_int_equal(faiss_SearchParameters_new(&sp, sel), 0);
    assert_null(faiss_SearchParametersIVF_cast(sp));
    assert_int_equal(faiss_Index_search_with_params(flat, NQ, f->xq, K, sp,
                                                    dists, labels),
                     0);
    assert_exact(f, f->keep, labels, dists);

    /* NULL params is a plain search */
    assert_int_equal(faiss_Index_search_with_params(flat, NQ, f->xq, K, NULL,
                                                    dists, labels),
                     0);
    assert_exact(f, NULL, labels, dists);
    faiss_SearchParameters_free(sp);
    faiss_Index_free(flat);

    /* IVF with nprobe = nlist: exact among the kept ids as well */
    FaissIndex *ivf = build(f, "IDMap2,IVF16,Flat");
    FaissSearchParametersIVF *spi = NULL;
    assert_int_equal(faiss_SearchParametersIVF_new_with(&spi, sel, NLIST, 0),
                     0);
    assert_ptr_equal(faiss_SearchParametersIVF_cast(spi), spi);
    assert_ptr_equal(faiss_SearchParametersIVF_sel(spi), sel);
    assert_int_equal(faiss_SearchParametersIVF_nprobe(spi), NLIST);
    assert_int_equal(faiss_SearchParametersIVF_max_codes(spi), 0);
    assert_int_equal(faiss_Index_search_with_params(ivf, NQ, f->xq, K, spi,
                                                    dists, labels),
                     0);
    assert_exact(f, f->keep, labels, dists);
    /* the caller's params are not modified by the search */
    assert_ptr_equal(faiss_SearchParametersIVF_sel(spi), sel);
    assert_int_equal(faiss_IndexIVF_nprobe(inner_ivf(ivf)), 1);

    /* IVF params without a selector: nprobe alone, still exact */
    FaissSearchParametersIVF *spn = NULL;
    assert_int_equal(faiss_SearchParametersIVF_new(&spn), 0);
    assert_null(faiss_SearchParametersIVF_sel(spn));
    faiss_SearchParametersIVF_set_nprobe(spn, NLIST);
    faiss_SearchParametersIVF_set_max_codes(spn, 0);
    assert_int_equal(faiss_Index_search_with_params(ivf, NQ, f->xq, K, spn,
                                                    dists, labels),
                     0);
    assert_exact(f, NULL, labels, dists);
    faiss_SearchParametersIVF_free(spn);
    faiss_SearchParametersIVF_free(spi);
    faiss_Index_free(ivf);

#ifdef MEDSEM_HAVE_HNSW_PARAMS
    /* HNSW: approximate, but only kept ids may come back */
    FaissIndex *hnsw = build(f, "IDMap2,HNSW16,Flat");
    FaissSearchParametersHNSW *sph = NULL;
    assert_int_equal(faiss_SearchParametersHNSW_new_with(&sph, sel, 256), 0);
    assert_int_equal(faiss_Index_search_with_params(hnsw, NQ, f->xq, K, sph,
                                                    dists, labels),
                     0);
    int found = 0;
    for (int i = 0; i < NQ * K; i++) {
        if (labels[i] < 0)
            continue;
        assert_true(is_user_id(labels[i]));
        assert_true(f->keep[labels[i] - ID_OFFSET]);
        found++;
    }
    assert_true(found >= NQ * K * 9 / 10);
    faiss_SearchParametersHNSW_free(sph);
    faiss_Index_free(hnsw);
#endif

    faiss_IDSelector_free(sel);
}

static void test_selector_combinations(void **state)
{
    const fixture *f = *state;
    FaissIDSelectorBatch *batch = NULL;
    FaissIDSelectorRange *range = NULL;
    FaissIDSelectorNot *not_sel = NULL;
    FaissIDSelectorAnd *and_sel = NULL;
    FaissIDSelectorOr *or_sel = NULL;
    FaissIDSelectorXOr *xor_sel = NULL;

    assert_int_equal(faiss_IDSelectorBatch_new(&batch, f->nkept, f->kept_ids),
                     0);
    /* user ids [1000, 2000): the first 1000 vectors */
    assert_int_equal(faiss_IDSelectorRange_new(&range, ID_OFFSET,
                                               ID_OFFSET + 1000),
                     0);
    const FaissIDSelector *b = (const FaissIDSelector *)batch;
    const FaissIDSelector *r = (const FaissIDSelector *)range;
    assert_int_equal(faiss_IDSelectorNot_new(&not_sel, b), 0);
    assert_int_equal(faiss_IDSelectorAnd_new(&and_sel, b, r), 0);
    assert_int_equal(faiss_IDSelectorOr_new(&or_sel, b, r), 0);
    assert_int_equal(faiss_IDSelectorXOr_new(&xor_sel, b, r), 0);

    for (int i = 0; i < NB; i++) {
        idx_t id = f->ids[i];
        int in_b = f->keep[i], in_r = i < 1000;
        assert_int_equal(faiss_IDSelector_is_member(b, id), in_b);
        assert_int_equal(faiss_IDSelector_is_member(r, id), in_r);
        assert_int_equal(
            faiss_IDSelector_is_member((FaissIDSelector *)not_sel, id), !in_b);
        assert_int_equal(
            faiss_IDSelector_is_member((FaissIDSelector *)and_sel, id),
            in_b && in_r);
        assert_int_equal(
            faiss_IDSelector_is_member((FaissIDSelector *)or_sel, id),
            in_b || in_r);
        assert_int_equal(
            faiss_IDSelector_is_member((FaissIDSelector *)xor_sel, id),
            in_b != in_r);
    }

    /* a combined selector filters a search: Not(batch) excludes the batch */
    unsigned char keep_not[NB];
    for (int i = 0; i < NB; i++)
        keep_not[i] = !f->keep[i];
    FaissIndex *ix = build(f, "IDMap2,Flat");
    FaissSearchParameters *sp = NULL;
    assert_int_equal(faiss_SearchParameters_new(&sp, (FaissIDSelector *)not_sel),
                     0);
    idx_t labels[NQ * K];
    float dists[NQ * K];
    assert_int_equal(faiss_Index_search_with_params(ix, NQ, f->xq, K, sp,
                                                    dists, labels),
                     0);
    assert_exact(f, keep_not, labels, dists);
    faiss_SearchParameters_free(sp);
    faiss_Index_free(ix);

    /* combinations borrow their operands: free them first */
    faiss_IDSelector_free((FaissIDSelector *)xor_sel);
    faiss_IDSelector_free((FaissIDSelector *)or_sel);
    faiss_IDSelector_free((FaissIDSelector *)and_sel);
    faiss_IDSelector_free((FaissIDSelector *)not_sel);
    faiss_IDSelector_free((FaissIDSelector *)range);
    faiss_IDSelector_free((FaissIDSelector *)batch);
}

/* Range search returns user ids with score > radius, per query. */
static void check_range(const fixture *f, FaissIndex *ix)
{
    FaissRangeSearchResult *res = NULL;
    assert_int_equal(faiss_RangeSearchResult_new(&res, NQ), 0);
    assert_int_equal(faiss_RangeSearchResult_nq(res), NQ);
    assert_int_equal(faiss_Index_range_search(ix, NQ, f->xq, RADIUS, res), 0);

    size_t *lims = NULL;
    idx_t *labels = NULL;
    float *dists = NULL;
    faiss_RangeSearchResult_lims(res, &lims);
    faiss_RangeSearchResult_labels(res, &labels, &dists);
    assert_int_equal(lims[0], 0);
    assert_true(faiss_RangeSearchResult_buffer_size(res) > 0);

    size_t total = 0;
    for (int q = 0; q < NQ; q++) {
        const float *xq = f->xq + (size_t)q * DIM;
        unsigned char seen[NB] = {0};
        assert_true(lims[q] <= lims[q + 1]);
        for (size_t j = lims[q]; j < lims[q + 1]; j++) {
            assert_true(is_user_id(labels[j]));
            size_t i = (size_t)(labels[j] - ID_OFFSET);
            float s = dot(xq, f->xb + i * DIM);
            assert_true(fabsf(s - dists[j]) < EPS);
            assert_true(s > RADIUS - EPS);
            assert_false(seen[i]);
            seen[i] = 1;
        }
        for (size_t i = 0; i < NB; i++)
            if (dot(xq, f->xb + i * DIM) > RADIUS + EPS)
                assert_true(seen[i]);
        total += lims[q + 1] - lims[q];
    }
    assert_true(total > 0); /* the radius must actually select something */
    faiss_RangeSearchResult_free(res);
}

static void test_range_search(void **state)
{
    const fixture *f = *state;

    FaissIndex *flat = build(f, "IDMap2,Flat");
    check_range(f, flat);
    faiss_Index_free(flat);

    FaissIndex *ivf = build(f, "IDMap2,IVF16,Flat");
    faiss_IndexIVF_set_nprobe(inner_ivf(ivf), NLIST);
    check_range(f, ivf);
    faiss_Index_free(ivf);
}

static void test_remove_ids(void **state)
{
    const fixture *f = *state;
    /* Upstream FAISS corrupts an IDMap over an IVF on removal (and aborts
     * on the second one); only the shim makes that case work. */
#ifndef HAVE_FAISS_C
    const char *descs[] = {"IDMap2,Flat", "IDMap2,IVF16,Flat"};
#else
    const char *descs[] = {"IDMap2,Flat"};
#endif

    for (size_t d = 0; d < sizeof descs / sizeof descs[0]; d++) {
        FaissIndex *ix = build(f, descs[d]);
        FaissIndexIVF *ivf = d == 1 ? inner_ivf(ix) : NULL;
        if (ivf != NULL)
            faiss_IndexIVF_set_nprobe(ivf, NLIST);

        /* remove the kept ids, then user ids [1000, 1100) */
        FaissIDSelectorBatch *batch = NULL;
        FaissIDSelectorRange *range = NULL;
        size_t removed = 0;
        assert_int_equal(
            faiss_IDSelectorBatch_new(&batch, f->nkept, f->kept_ids), 0);
        assert_int_equal(faiss_Index_remove_ids(ix, (FaissIDSelector *)batch,
                                                &removed),
                         0);
        assert_int_equal(removed, f->nkept);
        assert_int_equal(faiss_IDSelectorRange_new(&range, ID_OFFSET,
                                                   ID_OFFSET + 100),
                         0);
        assert_int_equal(faiss_Index_remove_ids(ix, (FaissIDSelector *)range,
                                                &removed),
                         0);
        assert_int_equal(removed, 100 - 100 / SEL_STRIDE);
        assert_int_equal(faiss_Index_ntotal(ix),
                         NB - (idx_t)f->nkept - (100 - 100 / SEL_STRIDE));

        unsigned char left[NB];
        for (int i = 0; i < NB; i++)
            left[i] = !f->keep[i] && i >= 100;
        idx_t labels[NQ * K];
        float dists[NQ * K];
        assert_int_equal(faiss_Index_search(ix, NQ, f->xq, K, dists, labels),
                         0);
        assert_exact(f, left, labels, dists);

        if (ivf == NULL) {
            float rec[DIM];
            assert_failed(faiss_Index_reconstruct(ix, f->kept_ids[0], rec));
            assert_int_equal(faiss_Index_reconstruct(ix, 2999 + ID_OFFSET, rec),
                             0);
            assert_memory_equal(rec, f->xb + 2999 * DIM, sizeof rec);
        }

        /* adding after removals keeps ids and vectors paired */
        float *again = malloc(f->nkept * DIM * sizeof *again);
        assert_non_null(again);
        for (size_t j = 0; j < f->nkept; j++)
            memcpy(again + j * DIM, f->xb + (f->kept_ids[j] - ID_OFFSET) * DIM,
                   DIM * sizeof *again);
        assert_int_equal(faiss_Index_add_with_ids(ix, (idx_t)f->nkept, again,
                                                  f->kept_ids),
                         0);
        free(again);
        for (int i = 0; i < NB; i++)
            left[i] = f->keep[i] || i >= 100;
        assert_int_equal(faiss_Index_search(ix, NQ, f->xq, K, dists, labels),
                         0);
        assert_exact(f, left, labels, dists);
        /* a third removal, the one that aborts upstream over an IVF */
        assert_int_equal(faiss_Index_remove_ids(ix, (FaissIDSelector *)batch,
                                                &removed),
                         0);
        assert_int_equal(removed, f->nkept);
        for (int i = 0; i < NB; i++)
            left[i] = !f->keep[i] && i >= 100;
        assert_int_equal(faiss_Index_search(ix, NQ, f->xq, K, dists, labels),
                         0);
        assert_exact(f, left, labels, dists);

        faiss_IDSelector_free((FaissIDSelector *)range);
        faiss_IDSelector_free((FaissIDSelector *)batch);
        assert_int_equal(faiss_Index_reset(ix), 0);
        assert_int_equal(faiss_Index_ntotal(ix), 0);
        faiss_Index_free(ix);
    }
}

/* write_index / read_index through memory streams; the copy answers the
 * same queries with the same results, nprobe included. */
static void test_io_round_trip(void **state)
{
    const fixture *f = *state;
    const char *descs[] = {"IDMap2,Flat", "IDMap2,IVF16,Flat",
                           "IDMap2,HNSW16,Flat"};

    for (size_t d = 0; d < sizeof descs / sizeof descs[0]; d++) {
        FaissIndex *ix = build(f, descs[d]);
        if (d == 1)
            faiss_IndexIVF_set_nprobe(inner_ivf(ix), 4);

        char *buf = NULL;
        size_t len = 0;
        FILE *w = open_memstream(&buf, &len);
        assert_non_null(w);
        assert_int_equal(faiss_write_index(ix, w), 0);
        assert_int_equal(fclose(w), 0);
        assert_true(len > 0);

        FILE *r = fmemopen(buf, len, "rb");
        assert_non_null(r);
        FaissIndex *copy = NULL;
        assert_int_equal(faiss_read_index(r, 0, &copy), 0);
        fclose(r);
        assert_non_null(copy);
        assert_non_null(faiss_IndexIDMap2_cast(copy));
        assert_int_equal(faiss_Index_ntotal(copy), NB);
        assert_int_equal(faiss_Index_d(copy), DIM);
        assert_true(faiss_Index_is_trained(copy));
        if (d == 1)
            assert_int_equal(faiss_IndexIVF_nprobe(inner_ivf(copy)), 4);

        idx_t l1[NQ * K], l2[NQ * K];
        float d1[NQ * K], d2[NQ * K];
        assert_int_equal(faiss_Index_search(ix, NQ, f->xq, K, d1, l1), 0);
        assert_int_equal(faiss_Index_search(copy, NQ, f->xq, K, d2, l2), 0);
        assert_memory_equal(l1, l2, sizeof l1);
        assert_memory_equal(d1, d2, sizeof d1);

        faiss_Index_free(copy);
        faiss_Index_free(ix);
        free(buf);
    }

    /* a truncated or garbage stream is an error, and *p_out is untouched */
    char junk[64];
    memset(junk, 'x', sizeof junk);
    FILE *r = fmemopen(junk, sizeof junk, "rb");
    assert_non_null(r);
    FaissIndex *sentinel = (FaissIndex *)&junk;
    FaissIndex *out = sentinel;
    assert_failed(faiss_read_index(r, 0, &out));
    assert_ptr_equal(out, sentinel);
    fclose(r);
}

static void test_errors(void **state)
{
    const fixture *f = *state;
    idx_t labels[K];
    float dists[K];

    /* a bad factory string: an error code and a message, no abort */
    FaissIndex *sentinel = (FaissIndex *)&labels;
    FaissIndex *ix = sentinel;
    assert_failed(faiss_index_factory(&ix, DIM, "IDMap2,NoSuchIndex42",
                                      METRIC_INNER_PRODUCT));
    assert_ptr_equal(ix, sentinel);

    /* k <= 0 */
    ix = build(f, "IDMap2,Flat");
    assert_failed(faiss_Index_search(ix, 1, f->xq, 0, dists, labels));
    assert_failed(faiss_Index_search(ix, 1, f->xq, -3, dists, labels));
    assert_failed(
        faiss_Index_search_with_params(ix, 1, f->xq, 0, NULL, dists, labels));

    /* an unknown parameter name */
    FaissParameterSpace *ps = NULL;
    assert_int_equal(faiss_ParameterSpace_new(&ps), 0);
    assert_failed(
        faiss_ParameterSpace_set_index_parameter(ps, ix, "no_such_param", 1));
    faiss_ParameterSpace_free(ps);

    /* HNSW cannot remove: an error, and the index is left as it was */
    FaissIndex *hnsw = build(f, "IDMap2,HNSW16,Flat");
    FaissIDSelectorRange *range = NULL;
    size_t removed = 12345;
    assert_int_equal(faiss_IDSelectorRange_new(&range, ID_OFFSET,
                                               ID_OFFSET + 10),
                     0);
    assert_failed(
        faiss_Index_remove_ids(hnsw, (FaissIDSelector *)range, &removed));
    assert_int_equal(removed, 12345);
    assert_int_equal(faiss_Index_ntotal(hnsw), NB);
    faiss_IDSelector_free((FaissIDSelector *)range);
    faiss_Index_free(hnsw);

    /* reconstruct of an id that was never added */
    float rec[DIM];
    assert_failed(faiss_Index_reconstruct(ix, 5, rec));

#ifndef HAVE_FAISS_C
    /* shim-only: the result must be sized for the queries */
    FaissRangeSearchResult *res = NULL;
    assert_int_equal(faiss_RangeSearchResult_new(&res, 1), 0);
    assert_failed(faiss_Index_range_search(ix, 2, f->xq, RADIUS, res));
    faiss_RangeSearchResult_free(res);
#endif
    faiss_Index_free(ix);

    /* an untrained IVF: add and train-less use fail */
    ix = NULL;
    assert_int_equal(faiss_index_factory(&ix, DIM, "IDMap2,IVF16,Flat",
                                         METRIC_INNER_PRODUCT),
                     0);
    assert_failed(faiss_Index_add_with_ids(ix, NB, f->xb, f->ids));
    assert_int_equal(faiss_Index_ntotal(ix), 0);
#ifndef HAVE_FAISS_C
    /* shim-only: searching it is an error, not a page of -1 labels */
    assert_failed(faiss_Index_search(ix, 1, f->xq, K, dists, labels));
    FaissSearchParametersIVF *spi = NULL;
    assert_int_equal(faiss_SearchParametersIVF_new_with(&spi, NULL, NLIST, 0),
                     0);
    assert_failed(faiss_Index_search_with_params(ix, 1, f->xq, K, spi, dists,
                                                 labels));
    faiss_SearchParametersIVF_free(spi);
#endif
    faiss_Index_free(ix);

#ifdef MEDSEM_HAVE_HNSW_PARAMS
    FaissSearchParametersHNSW *sph = NULL;
    assert_failed(faiss_SearchParametersHNSW_new_with(&sph, NULL, 0));
    assert_null(sph);
    faiss_SearchParametersHNSW_free(NULL);
#endif

    /* every destructor accepts NULL */
    faiss_Index_free(NULL);
    faiss_IDSelector_free(NULL);
    faiss_RangeSearchResult_free(NULL);
    faiss_ParameterSpace_free(NULL);
    faiss_SearchParameters_free(NULL);
    faiss_SearchParametersIVF_free(NULL);
}

/* An IDMap built by hand over an index the caller keeps owning. */
static void test_idmap_new(void **state)
{
    const fixture *f = *state;
    FaissIndex *flat = NULL;
    FaissIndexIDMap *map = NULL;
    FaissIndexIDMap2 *map2 = NULL;

    assert_int_equal(faiss_index_factory(&flat, DIM, "Flat",
                                         METRIC_INNER_PRODUCT),
                     0);
    assert_null(faiss_IndexIDMap_cast(flat));
    assert_int_equal(faiss_IndexIDMap_new(&map, flat), 0);
    assert_false(faiss_IndexIDMap_own_fields(map));
    assert_null(faiss_IndexIDMap2_cast(map));
    assert_ptr_equal(faiss_IndexIDMap_sub_index(map), flat);
    assert_int_equal(faiss_Index_add_with_ids(map, NB, f->xb, f->ids), 0);
    assert_int_equal(faiss_Index_ntotal(flat), NB);

    FaissIDSelectorBatch *batch = NULL;
    assert_int_equal(faiss_IDSelectorBatch_new(&batch, f->nkept, f->kept_ids),
                     0);
    FaissSearchParameters *sp = NULL;
    assert_int_equal(faiss_SearchParameters_new(&sp, (FaissIDSelector *)batch),
                     0);
    idx_t labels[NQ * K];
    float dists[NQ * K];
    assert_int_equal(faiss_Index_search_with_params(map, NQ, f->xq, K, sp,
                                                    dists, labels),
                     0);
    assert_exact(f, f->keep, labels, dists);
    faiss_SearchParameters_free(sp);
    faiss_IDSelector_free((FaissIDSelector *)batch);
    faiss_Index_free(map); /* does not own flat */
    assert_int_equal(faiss_Index_ntotal(flat), NB);
    assert_int_equal(faiss_Index_reset(flat), 0);

    /* IDMap2 taking ownership */
    assert_int_equal(faiss_IndexIDMap2_new(&map2, flat), 0);
    assert_non_null(faiss_IndexIDMap2_cast(map2));
    faiss_IndexIDMap2_set_own_fields(map2, 1);
    assert_true(faiss_IndexIDMap2_own_fields(map2));
    assert_int_equal(faiss_Index_add_with_ids(map2, NB, f->xb, f->ids), 0);
    assert_int_equal(faiss_IndexIDMap2_construct_rev_map(map2), 0);
    idx_t *id_map = NULL;
    size_t nmap = 0;
    faiss_IndexIDMap2_id_map(map2, &id_map, &nmap);
    assert_int_equal(nmap, NB);
    assert_ptr_equal(faiss_IndexIDMap2_sub_index(map2), flat);
    faiss_Index_free(map2); /* frees flat too; ASan would flag a leak */
}

/* The last-error text is per thread. */
typedef struct thread_result {
    int initially_null;
    int failed;
    int has_message;
} thread_result;

static void *error_thread(void *arg)
{
    thread_result *tr = arg;
    FaissIndex *ix = NULL;
    tr->initially_null = faiss_get_last_error() == NULL;
    tr->failed = faiss_index_factory(&ix, DIM, "Bogus,Thread",
                                     METRIC_INNER_PRODUCT) != 0;
    const char *msg = faiss_get_last_error();
    tr->has_message = msg != NULL && strstr(msg, "Bogus") != NULL;
    return NULL;
}

static void test_error_is_thread_local(void **state)
{
    (void)state;
    FaissIndex *ix = NULL;
    assert_failed(faiss_index_factory(&ix, DIM, "MainThread,Bogus",
                                      METRIC_INNER_PRODUCT));
    assert_non_null(strstr(faiss_get_last_error(), "MainThread"));

    thread_result tr = {0, 0, 0};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, error_thread, &tr), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_true(tr.initially_null);
    assert_true(tr.failed);
    assert_true(tr.has_message);
    assert_non_null(strstr(faiss_get_last_error(), "MainThread"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_flat_exact),
        cmocka_unit_test(test_ivf_exact_with_full_nprobe),
        cmocka_unit_test(test_hnsw_search),
        cmocka_unit_test(test_search_with_selector),
        cmocka_unit_test(test_selector_combinations),
        cmocka_unit_test(test_range_search),
        cmocka_unit_test(test_remove_ids),
        cmocka_unit_test(test_io_round_trip),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_idmap_new),
        cmocka_unit_test(test_error_is_thread_local),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
