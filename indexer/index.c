/* index.c - one FAISS index per space, kept in step with the store.
 *
 * The FAISS index is always IndexIDMap2 over the chosen kind, so labels are
 * item ids.  The store's vectors are the source of truth; the snapshot in
 * the store's `index` database is a cache that saves retraining.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <cblas.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "indexer/faiss_ext.h"
#include "indexer/indexer.h"

/* Below this many vectors an exact Flat index is both fast enough and exact. */
#define IDX_FLAT_MAX 50000
/* Queries used to tune ANN parameters, and the k they are tuned at. */
#define IDX_TUNE_QUERIES 400
#define IDX_TUNE_K 10
/* Training points per IVF list (FAISS warns below 39). */
#define IDX_TRAIN_PER_LIST 48

struct idx_space {
    store *s; /* NULL for an in-memory index */
    store_space sp;
    uint32_t dim;
    FaissIndex *ix; /* IndexIDMap2 owning its sub-index */
    char factory[64];
    int forced;
    int nlist;     /* IVF lists, 0 when not IVF */
    int hnsw;      /* HNSW graph */
    int nprobe;    /* tuned IVF parameter */
    int ef_search; /* tuned HNSW parameter */
    double recall;
    double target;
    uint64_t seed;
    uint64_t gen, del_gen;
    uint64_t max_id;  /* largest id added, for catch-up */
    uint64_t tuned_n; /* ntotal when last tuned / built */
    uint64_t ann_failed_n; /* size at which auto IVF could not reach the target */
    uint64_t removed, rebuilds; /* idx_info's counters */
    char loaded[96];
    char err[512];
};

/* ---- errors ------------------------------------------------------------------ */

static void seterr(idx_space *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void seterr(idx_space *x, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->err, sizeof x->err, fmt, ap);
    va_end(ap);
}

const char *idx_space_errmsg(const idx_space *x)
{
    return x ? x->err : "";
}

/* ---- vector maths ---------------------------------------------------------- */

int idx_l2_normalize(float *x, size_t n)
{
    double ss = 0;
    for (size_t i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    if (!(ss > 0) || !isfinite(ss))
        return -1;
    float inv = (float)(1.0 / sqrt(ss));
    for (size_t i = 0; i < n; i++)
        x[i] *= inv;
    return 0;
}

size_t idx_first_nonfinite(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return i;
    return n;
}

/* ---- top-k ------------------------------------------------------------------- */

/* a is worse than b: lower score, or equal score and higher id. */
static int worse(float sa, int64_t ia, float sb, int64_t ib)
{
    return sa < sb || (sa == sb && ia > ib);
}

void idx_topk_init(idx_topk *t, size_t k, float *scores, int64_t *ids)
{
    t->k = k;
    t->n = 0;
    t->scores = scores;
    t->ids = ids;
}

static void heap_swap(idx_topk *t, size_t a, size_t b)
{
    float s = t->scores[a];
    int64_t i = t->ids[a];
    t->scores[a] = t->scores[b];
    t->ids[a] = t->ids[b];
    t->scores[b] = s;
    t->ids[b] = i;
}

static void heap_down(idx_topk *t, size_t i, size_t n)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && worse(t->scores[l], t->ids[l], t->scores[m], t->ids[m]))
            m = l;
        if (r < n && worse(t->scores[r], t->ids[r], t->scores[m], t->ids[m]))
            m = r;
        if (m == i)
            return;
        heap_swap(t, i, m);
        i = m;
    }
}

void idx_topk_push(idx_topk *t, float score, int64_t id)
{
    if (t->k == 0)
        return;
    if (t->n < t->k) {
        size_t i = t->n++;
        t->scores[i] = score;
        t->ids[i] = id;
        while (i > 0) {
            size_t p = (i - 1) / 2;
            if (!worse(t->scores[i], t->ids[i], t->scores[p], t->ids[p]))
                break;
            heap_swap(t, i, p);
            i = p;
        }
        return;
    }
    if (!worse(t->scores[0], t->ids[0], score, id))
        return;
    t->scores[0] = score;
    t->ids[0] = id;
    heap_down(t, 0, t->n);
}

size_t idx_topk_finish(idx_topk *t)
{
    size_t n = t->n;
    for (size_t end = n; end > 1; end--) {
        heap_swap(t, 0, end - 1);
        heap_down(t, 0, end - 1);
    }
    for (size_t i = n; i < t->k; i++) {
        t->scores[i] = -INFINITY;
        t->ids[i] = -1;
    }
    return n;
}

/* ---- small helpers --------------------------------------------------------- */

static uint64_t splitmix(uint64_t *st)
{
    uint64_t z = (*st += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* First m entries of a random permutation of 0..n-1 (partial Fisher-Yates). */
static size_t *sample_positions(size_t n, size_t m, uint64_t seed)
{
    size_t *p = malloc((n ? n : 1) * sizeof *p);
    if (!p)
        return NULL;
    for (size_t i = 0; i < n; i++)
        p[i] = i;
    uint64_t st = seed;
    for (size_t i = 0; i < m && i < n; i++) {
        size_t j = i + (size_t)(splitmix(&st) % (n - i));
        size_t t = p[i];
        p[i] = p[j];
        p[j] = t;
    }
    return p;
}

/* FAISS messages carry the C++ function signature and source position;
 * users get the part after the last "Error: ", on one line. */
static void faiss_msg(char *out, size_t len)
{
    const char *m = faiss_get_last_error();
    if (!m || !*m)
        m = "unknown FAISS error";
    for (const char *p = m; (p = strstr(p, "Error: ")) != NULL; p += 7)
        m = p + 7;
    snprintf(out, len, "%s", m);
    for (char *c = out; *c; c++)
        if (*c == '\n' || *c == '\r')
            *c = ' ';
}

static int faiss_fail(idx_space *x, const char *what)
{
    char m[384];
    faiss_msg(m, sizeof m);
    seterr(x, "%s: %s", what, m);
    return IDX_FAISS;
}

static int pow2_near(double v)
{
    int p = 1;
    while (p * 2 <= v)
        p *= 2;
    return p;
}

/* The kind an index of n vectors gets when the user has not forced one. */
static void auto_factory(uint64_t n, char *out, size_t len)
{
    if (n <= IDX_FLAT_MAX) {
        snprintf(out, len, "Flat");
        return;
    }
    int nlist = pow2_near(sqrt((double)n));
    if (nlist < 64)
        nlist = 64;
    if (nlist > 16384)
        nlist = 16384;
    snprintf(out, len, "IVF%d,Flat", nlist);
}

static void parse_kind(idx_space *x)
{
    x->nlist = 0;
    x->hnsw = 0;
    const char *f = x->factory;
    if (strncmp(f, "IVF", 3) == 0)
        x->nlist = atoi(f + 3);
    else if (strstr(f, "IVF"))
        x->nlist = atoi(strstr(f, "IVF") + 3);
    if (strstr(f, "HNSW"))
        x->hnsw = 1;
}

static int is_exact(const idx_space *x)
{
    return strcmp(x->factory, "Flat") == 0;
}

static int new_faiss(idx_space *x, const char *factory)
{
    char desc[96];
    snprintf(desc, sizeof desc, "IDMap2,%s", factory);
    FaissIndex *ix = NULL;
    if (faiss_index_factory(&ix, (int)x->dim, desc, METRIC_INNER_PRODUCT))
        return faiss_fail(x, "cannot create the index");
    faiss_Index_free(x->ix);
    x->ix = ix;
    snprintf(x->factory, sizeof x->factory, "%s", factory);
    parse_kind(x);
    x->nprobe = x->nlist ? 1 : 0;
    x->ef_search = x->hnsw ? 16 : 0;
    x->recall = is_exact(x) ? 1.0 : 0.0;
    x->max_id = 0;
    return IDX_OK;
}

/* ---- searching ------------------------------------------------------------- */

static int search_with(idx_space *x, const float *q, size_t nq, size_t k, FaissIDSelector *sel,
                       int nprobe, int ef, float *scores, int64_t *ids)
{
    FaissSearchParameters *params = NULL;
    int rc = 0;
    if (x->nlist) {
        FaissSearchParametersIVF *p = NULL;
        rc = faiss_SearchParametersIVF_new_with(&p, sel, (size_t)nprobe, 0);
        params = (FaissSearchParameters *)p;
#ifdef MEDSEM_HAVE_HNSW_PARAMS
    } else if (x->hnsw) {
        FaissSearchParametersHNSW *p = NULL;
        rc = faiss_SearchParametersHNSW_new_with(&p, sel, ef);
        params = (FaissSearchParameters *)p;
#endif
    } else if (sel) {
        rc = faiss_SearchParameters_new(&params, sel);
    }
    if (rc)
        return faiss_fail(x, "search parameters");
    if (params)
        rc = faiss_Index_search_with_params(x->ix, (idx_t)nq, q, (idx_t)k, params, scores, ids);
    else
        rc = faiss_Index_search(x->ix, (idx_t)nq, q, (idx_t)k, scores, ids);
    faiss_SearchParameters_free(params);
    if (rc)
        return faiss_fail(x, "search");
    for (size_t i = 0; i < nq * k; i++)
        if (ids[i] < 0)
            scores[i] = -INFINITY;
    return IDX_OK;
}

int idx_space_search(idx_space *x, const float *q, size_t nq, size_t k, const uint64_t *allowed,
                     size_t n_allowed, float *scores, int64_t *ids)
{
    if (k == 0 || nq == 0) {
        seterr(x, "search needs k >= 1 and at least one query");
        return IDX_INVAL;
    }
    if (faiss_Index_ntotal(x->ix) == 0) {
        for (size_t i = 0; i < nq * k; i++) {
            scores[i] = -INFINITY;
            ids[i] = -1;
        }
        return IDX_OK;
    }
    FaissIDSelectorBatch *sel = NULL;
    if (allowed) {
        if (n_allowed == 0) {
            for (size_t i = 0; i < nq * k; i++) {
                scores[i] = -INFINITY;
                ids[i] = -1;
            }
            return IDX_OK;
        }
        if (faiss_IDSelectorBatch_new(&sel, n_allowed, (const idx_t *)allowed))
            return faiss_fail(x, "id selector");
    }
    int rc = search_with(x, q, nq, k, (FaissIDSelector *)sel, x->nprobe, x->ef_search, scores, ids);
    faiss_IDSelector_free((FaissIDSelector *)sel);
    return rc;
}

int idx_space_range(idx_space *x, const float *q, size_t nq, float min_score, size_t *lims,
                    int64_t **ids, float **scores)
{
    FaissRangeSearchResult *r = NULL;
    if (faiss_RangeSearchResult_new(&r, (idx_t)nq))
        return faiss_fail(x, "range search");
    if (faiss_Index_range_search(x->ix, (idx_t)nq, q, min_score, r)) {
        faiss_RangeSearchResult_free(r);
        return faiss_fail(x, "range search");
    }
    size_t *rl;
    idx_t *rlab;
    float *rd;
    faiss_RangeSearchResult_lims(r, &rl);
    faiss_RangeSearchResult_labels(r, &rlab, &rd);
    size_t tot = rl[nq];
    int64_t *oi = malloc((tot ? tot : 1) * sizeof *oi);
    float *os = malloc((tot ? tot : 1) * sizeof *os);
    if (!oi || !os) {
        free(oi);
        free(os);
        faiss_RangeSearchResult_free(r);
        seterr(x, "out of memory in range search");
        return IDX_NOMEM;
    }
    memcpy(lims, rl, (nq + 1) * sizeof *lims);
    for (size_t i = 0; i < tot; i++) {
        oi[i] = rlab[i];
        os[i] = rd[i];
    }
    faiss_RangeSearchResult_free(r);
    *ids = oi;
    *scores = os;
    return IDX_OK;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

int idx_space_ids(idx_space *x, int64_t **ids, size_t *n)
{
    FaissIndexIDMap2 *m = faiss_IndexIDMap2_cast(x->ix);
    if (!m) {
        seterr(x, "index is not an id map");
        return IDX_INVAL;
    }
    idx_t *map = NULL;
    size_t len = 0;
    faiss_IndexIDMap2_id_map(m, &map, &len);
    int64_t *out = malloc((len ? len : 1) * sizeof *out);
    if (!out) {
        seterr(x, "out of memory");
        return IDX_NOMEM;
    }
    for (size_t i = 0; i < len; i++)
        out[i] = map[i];
    qsort(out, len, sizeof *out, cmp_i64);
    *ids = out;
    *n = len;
    return IDX_OK;
}

/* ---- building and tuning --------------------------------------------------- */

/* Exact top-(k+1) of queries over a block source, for ground truth. */
typedef struct gt_ctx {
    const float *q;
    size_t nq;
    uint32_t dim;
    size_t kk;
    idx_topk *heaps;
    float *buf; /* nq x block */
} gt_ctx;

#define GT_BLOCK 2048

static void gt_block(gt_ctx *g, const float *v, const int64_t *ids, size_t n)
{
    /* buf (nq x n) = q (nq x d) * v^T (d x n) */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)g->nq, (int)n, (int)g->dim, 1.0f,
                g->q, (int)g->dim, v, (int)g->dim, 0.0f, g->buf, (int)n);
    for (size_t i = 0; i < g->nq; i++)
        for (size_t j = 0; j < n; j++)
            idx_topk_push(&g->heaps[i], g->buf[i * n + j], ids[j]);
}

/* Recall@k of the index at the given parameters against ground truth; the
 * query's own id is ignored in both lists. */
static double measure_recall(idx_space *x, const float *q, const int64_t *qid, size_t nq,
                             const int64_t *gt, size_t kk, int nprobe, int ef, float *sc,
                             int64_t *lab)
{
    if (search_with(x, q, nq, kk, NULL, nprobe, ef, sc, lab))
        return -1;
    size_t hit = 0, tot = 0;
    for (size_t i = 0; i < nq; i++) {
        const int64_t *g = gt + i * kk, *r = lab + i * kk;
        size_t ng = 0;
        for (size_t a = 0; a < kk && ng < IDX_TUNE_K; a++) {
            if (g[a] < 0 || g[a] == qid[i])
                continue;
            ng++;
            size_t nr = 0;
            for (size_t b = 0; b < kk && nr < IDX_TUNE_K; b++) {
                if (r[b] == qid[i] || r[b] < 0)
                    continue;
                nr++;
                if (r[b] == g[a]) {
                    hit++;
                    break;
                }
            }
        }
        tot += ng;
    }
    return tot ? (double)hit / (double)tot : 1.0;
}

/* Smallest parameter value in [lo, hi] whose recall reaches the target,
 * doubling first, then bisecting between the last two powers. */
static int tune_param(idx_space *x, int lo, int hi, const float *q, const int64_t *qid, size_t nq,
                      const int64_t *gt, size_t kk, float *sc, int64_t *lab, double *recall)
{
    int is_ivf = x->nlist > 0;
    double r = 0;
    int prev = lo, v = lo;
    for (;;) {
        r = measure_recall(x, q, qid, nq, gt, kk, is_ivf ? v : 0, is_ivf ? 0 : v, sc, lab);
        if (r < 0)
            return -1;
        if (r >= x->target || v >= hi)
            break;
        prev = v;
        v = v * 2 > hi ? hi : v * 2;
    }
    if (r >= x->target && v > lo) {
        int a = prev, b = v; /* recall(a) < target <= recall(b) */
        double rb = r;
        while (b - a > 1 && b - a > b / 16) {
            int m = a + (b - a) / 2;
            double rm = measure_recall(x, q, qid, nq, gt, kk, is_ivf ? m : 0, is_ivf ? 0 : m, sc, lab);
            if (rm < 0)
                return -1;
            if (rm >= x->target) {
                b = m;
                rb = rm;
            } else {
                a = m;
            }
        }
        v = b;
        r = rb;
    }
    *recall = r;
    return v;
}

/* A source of all vectors for ground truth: either memory or the store. */
typedef struct vsrc {
    const float *mem;
    const int64_t *mem_ids;
    size_t n;
    store *s;
    store_space sp;
} vsrc;

typedef struct scan_acc {
    gt_ctx *g;
    float *v;
    int64_t *ids;
    size_t n;
} scan_acc;

static int scan_acc_cb(void *ctx, uint64_t id, uint64_t gen, const float *vec)
{
    scan_acc *a = ctx;
    memcpy(a->v + a->n * a->g->dim, vec, a->g->dim * sizeof(float));
    a->ids[a->n++] = (int64_t)id;
    if (a->n == GT_BLOCK) {
        gt_block(a->g, a->v, a->ids, a->n);
        a->n = 0;
    }
    return 0;
}

static int ground_truth(idx_space *x, const vsrc *src, const float *q, size_t nq, size_t kk,
                        int64_t *gt)
{
    gt_ctx g = {.q = q, .nq = nq, .dim = x->dim, .kk = kk};
    float *gs = malloc(nq * kk * sizeof *gs);
    g.heaps = malloc(nq * sizeof *g.heaps);
    g.buf = malloc(nq * GT_BLOCK * sizeof *g.buf);
    float *v = malloc((size_t)GT_BLOCK * x->dim * sizeof *v);
    int64_t *vid = malloc(GT_BLOCK * sizeof *vid);
    int rc = IDX_OK;
    if (!gs || !g.heaps || !g.buf || !v || !vid) {
        rc = IDX_NOMEM;
        seterr(x, "out of memory while tuning");
        goto out;
    }
    for (size_t i = 0; i < nq; i++)
        idx_topk_init(&g.heaps[i], kk, gs + i * kk, gt + i * kk);
    if (src->mem) {
        for (size_t i = 0; i < src->n; i += GT_BLOCK) {
            size_t m = src->n - i < GT_BLOCK ? src->n - i : GT_BLOCK;
            gt_block(&g, src->mem + i * x->dim, src->mem_ids + i, m);
        }
    } else {
        scan_acc a = {.g = &g, .v = v, .ids = vid};
        int s = store_vectors_scan(src->s, src->sp, 0, scan_acc_cb, &a);
        if (s) {
            seterr(x, "reading vectors: %s", store_errmsg(src->s));
            rc = IDX_STORE;
            goto out;
        }
        if (a.n)
            gt_block(&g, v, vid, a.n);
    }
    for (size_t i = 0; i < nq; i++)
        idx_topk_finish(&g.heaps[i]);
out:
    free(gs);
    free(g.heaps);
    free(g.buf);
    free(v);
    free(vid);
    return rc;
}

/* Tunes nprobe / efSearch on queries q (ids qid) to the target recall. */
static int tune(idx_space *x, const vsrc *src, const float *q, const int64_t *qid, size_t nq)
{
    if (is_exact(x) || (!x->nlist && !x->hnsw) || nq == 0) {
        x->recall = is_exact(x) ? 1.0 : x->recall;
        x->tuned_n = (uint64_t)faiss_Index_ntotal(x->ix);
        return IDX_OK;
    }
    size_t kk = IDX_TUNE_K + 1;
    int64_t *gt = malloc(nq * kk * sizeof *gt);
    float *sc = malloc(nq * kk * sizeof *sc);
    int64_t *lab = malloc(nq * kk * sizeof *lab);
    int rc = IDX_OK;
    if (!gt || !sc || !lab) {
        seterr(x, "out of memory while tuning");
        rc = IDX_NOMEM;
        goto out;
    }
    rc = ground_truth(x, src, q, nq, kk, gt);
    if (rc)
        goto out;
    double r = 0;
    /* An automatic IVF that needs more than a quarter of its lists is no
     * faster than exact search (and the batch path of Flat is much faster):
     * stop there and let the caller fall back to Flat. */
    int hi = x->nlist ? (x->forced ? x->nlist : (x->nlist / 4 > 1 ? x->nlist / 4 : 1)) : 8192;
    int v = tune_param(x, x->nlist ? 1 : 16, hi, q, qid, nq, gt, kk, sc, lab, &r);
    if (v < 0) {
        rc = IDX_FAISS;
        goto out;
    }
    if (x->nlist)
        x->nprobe = v;
    else
        x->ef_search = v;
    x->recall = r;
    x->tuned_n = (uint64_t)faiss_Index_ntotal(x->ix);
out:
    free(gt);
    free(sc);
    free(lab);
    return rc;
}

/* Builds x->ix afresh over n vectors in memory: choose, train, add, tune. */
static int build_from(idx_space *x, const float *v, const int64_t *ids, size_t n, const vsrc *src)
{
    char fac[64];
    if (x->forced)
        snprintf(fac, sizeof fac, "%s", x->factory);
    else
        auto_factory(n, fac, sizeof fac);
    int rc = new_faiss(x, fac);
    if (rc)
        return rc;
    size_t ntrain = 0, ntune = 0;
    if (x->nlist) {
        ntrain = (size_t)x->nlist * IDX_TRAIN_PER_LIST;
        if (n == 0)
            return IDX_OK; /* trained when vectors arrive (idx_space_save) */
        if (n < (size_t)x->nlist) {
            seterr(x, "index '%s' needs at least %d vectors to train, the space has %zu", fac,
                   x->nlist, n);
            return IDX_INVAL;
        }
    }
    if (ntrain > n)
        ntrain = n;
    if (!is_exact(x))
        ntune = n / 10 < IDX_TUNE_QUERIES ? n / 10 : IDX_TUNE_QUERIES;
    size_t *perm = sample_positions(n, ntrain + ntune, x->seed);
    float *tv = malloc(((ntrain + ntune) ? (ntrain + ntune) : 1) * x->dim * sizeof *tv);
    int64_t *tid = malloc(((ntune) ? ntune : 1) * sizeof *tid);
    if (!perm || !tv || !tid) {
        free(perm);
        free(tv);
        free(tid);
        seterr(x, "out of memory building the index");
        return IDX_NOMEM;
    }
    /* Training points first, then the held-out tuning queries (disjoint). */
    for (size_t i = 0; i < ntrain + ntune && i < n; i++)
        memcpy(tv + i * x->dim, v + perm[i] * x->dim, x->dim * sizeof(float));
    for (size_t i = 0; i < ntune; i++)
        tid[i] = ids[perm[ntrain + i]];
    free(perm);
    if (ntrain && faiss_Index_train(x->ix, (idx_t)ntrain, tv)) {
        rc = faiss_fail(x, "training the index");
        goto out;
    }
    if (n && faiss_Index_add_with_ids(x->ix, (idx_t)n, v, (const idx_t *)ids)) {
        rc = faiss_fail(x, "adding vectors");
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        if ((uint64_t)ids[i] > x->max_id)
            x->max_id = (uint64_t)ids[i];
    rc = tune(x, src, tv + ntrain * x->dim, tid, ntune);
    if (!rc && !x->forced && x->nlist && x->recall < x->target) {
        /* The data has too little structure for IVF (uniformly random
         * vectors, say): exact search is as fast and exact. */
        uint64_t failed = n;
        rc = new_faiss(x, "Flat");
        if (!rc && faiss_Index_add_with_ids(x->ix, (idx_t)n, v, (const idx_t *)ids))
            rc = faiss_fail(x, "adding vectors");
        for (size_t i = 0; !rc && i < n; i++)
            if ((uint64_t)ids[i] > x->max_id)
                x->max_id = (uint64_t)ids[i];
        x->ann_failed_n = failed;
        x->tuned_n = n;
    }
out:
    free(tv);
    free(tid);
    return rc;
}

/* ---- in-memory index ----------------------------------------------------------- */

static idx_space *space_new(uint32_t dim, const idx_opts *o)
{
    idx_space *x = calloc(1, sizeof *x);
    if (!x)
        return NULL;
    x->dim = dim;
    x->target = o && o->target_recall > 0 ? o->target_recall : 0.95;
    x->seed = o && o->seed ? o->seed : 0x6d656473656dULL;
    if (o && o->factory && *o->factory) {
        snprintf(x->factory, sizeof x->factory, "%s", o->factory);
        x->forced = 1;
    }
    return x;
}

static void copy_err(char *errbuf, size_t errlen, const char *msg)
{
    if (errbuf && errlen)
        snprintf(errbuf, errlen, "%s", msg);
}

static int check_factory(const char *f, char *errbuf, size_t errlen)
{
    if (!f || !*f)
        return IDX_OK;
    if (strlen(f) >= 60 || strstr(f, "IDMap")) {
        if (errbuf)
            snprintf(errbuf, errlen,
                     "--index '%s': give the FAISS factory string of the index itself "
                     "(e.g. Flat, IVF1024,Flat, HNSW32,Flat); ids are mapped by medsem",
                     f);
        return IDX_INVAL;
    }
    return IDX_OK;
}

int idx_factory_check(const char *factory, uint32_t dim, char *errbuf, size_t errlen)
{
    if (!factory || !*factory)
        return IDX_OK;
    if (check_factory(factory, errbuf, errlen))
        return IDX_INVAL;
    char desc[96];
    snprintf(desc, sizeof desc, "IDMap2,%s", factory);
    FaissIndex *ix = NULL;
    if (faiss_index_factory(&ix, (int)dim, desc, METRIC_INNER_PRODUCT)) {
        char m[384];
        faiss_msg(m, sizeof m);
        if (errbuf)
            snprintf(errbuf, errlen, "--index '%s': cannot create the index: %s", factory, m);
        return IDX_INVAL;
    }
    faiss_Index_free(ix);
    return IDX_OK;
}

int idx_space_build(const float *vecs, const int64_t *ids, size_t n, uint32_t dim,
                    const idx_opts *o, idx_space **out, char *errbuf, size_t errlen)
{
    if (check_factory(o ? o->factory : NULL, errbuf, errlen))
        return IDX_INVAL;
    idx_space *x = space_new(dim, o);
    if (!x) {
        copy_err(errbuf, errlen, "out of memory");
        return IDX_NOMEM;
    }
    vsrc src = {.mem = vecs, .mem_ids = ids, .n = n};
    int rc = build_from(x, vecs, ids, n, &src);
    if (rc) {
        copy_err(errbuf, errlen, x->err);
        idx_space_free(x);
        return rc;
    }
    snprintf(x->loaded, sizeof x->loaded, "new");
    *out = x;
    return IDX_OK;
}

void idx_space_free(idx_space *x)
{
    if (!x)
        return;
    faiss_Index_free(x->ix);
    free(x);
}

void idx_space_info(const idx_space *x, idx_info *info)
{
    memset(info, 0, sizeof *info);
    snprintf(info->factory, sizeof info->factory, "%s", x->factory);
    info->exact = is_exact(x);
    info->forced = x->forced;
    info->ntotal = x->ix ? (uint64_t)faiss_Index_ntotal(x->ix) : 0;
    info->gen = x->gen;
    info->nprobe = x->nlist ? x->nprobe : 0;
    info->ef_search = x->hnsw ? x->ef_search : 0;
    info->recall = x->recall;
    info->loaded = x->loaded;
    info->removed = x->removed;
    info->rebuilds = x->rebuilds;
}

store_space idx_space_which(const idx_space *x)
{
    return x->sp;
}

/* ---- store-backed index ---------------------------------------------------- */

typedef struct collect {
    float *v;
    int64_t *ids;
    size_t n, cap;
    uint32_t dim;
    uint64_t max_gen;
} collect;

static int collect_cb(void *ctx, uint64_t id, uint64_t gen, const float *vec)
{
    collect *c = ctx;
    if (c->n == c->cap) {
        size_t nc = c->cap ? c->cap * 2 : 4096;
        float *nv = realloc(c->v, nc * c->dim * sizeof *nv);
        if (!nv)
            return -1;
        c->v = nv;
        int64_t *ni = realloc(c->ids, nc * sizeof *ni);
        if (!ni)
            return -1;
        c->ids = ni;
        c->cap = nc;
    }
    memcpy(c->v + c->n * c->dim, vec, c->dim * sizeof(float));
    c->ids[c->n++] = (int64_t)id;
    if (gen > c->max_gen)
        c->max_gen = gen;
    return 0;
}

/* Rebuilds from every vector of the space, as of one snapshot of the stats. */
static int rebuild(idx_space *x, const char *why)
{
    store_space_stat st;
    if (store_space_stat_get(x->s, x->sp, &st)) {
        seterr(x, "%s", store_errmsg(x->s));
        return IDX_STORE;
    }
    collect c = {.dim = x->dim};
    int s = store_vectors_scan(x->s, x->sp, 0, collect_cb, &c);
    if (s) {
        free(c.v);
        free(c.ids);
        if (s < 0) {
            seterr(x, "out of memory reading %s vectors", store_space_name(x->sp));
            return IDX_NOMEM;
        }
        seterr(x, "reading vectors: %s", store_errmsg(x->s));
        return IDX_STORE;
    }
    vsrc src = {.mem = c.v, .mem_ids = c.ids, .n = c.n};
    int rc = build_from(x, c.v, c.ids, c.n, &src);
    free(c.v);
    free(c.ids);
    if (rc)
        return rc;
    /* A writer may have committed between the stat and the scan: the scan saw
     * at least st.gen; catch-up by id picks up anything newer. */
    x->gen = c.max_gen > st.gen ? c.max_gen : st.gen;
    x->del_gen = st.del_gen;
    x->rebuilds++;
    snprintf(x->loaded, sizeof x->loaded, "rebuilt: %s", why);
    return IDX_OK;
}

/* Snapshot parameters: a short text, "key=value;..." */
static void params_format(const idx_space *x, store_index_hdr *h)
{
    int n = snprintf((char *)h->params, sizeof h->params,
                     "v=1;factory=%s;forced=%d;nprobe=%d;ef=%d;recall=%.6f;target=%.6f;tuned=%llu;maxid=%llu;"
                     "annfail=%llu",
                     x->factory, x->forced, x->nprobe, x->ef_search, x->recall, x->target,
                     (unsigned long long)x->tuned_n, (unsigned long long)x->max_id,
                     (unsigned long long)x->ann_failed_n);
    h->params_len = n < 0 ? 0 : (uint32_t)n;
}

static int params_parse(idx_space *x, const store_index_hdr *h)
{
    char buf[STORE_PARAMS_MAX + 1];
    size_t n = h->params_len < STORE_PARAMS_MAX ? h->params_len : STORE_PARAMS_MAX;
    memcpy(buf, h->params, n);
    buf[n] = 0;
    char fac[64] = "";
    int forced = 0, nprobe = 0, ef = 0, v = 0;
    double recall = 0, target = 0;
    unsigned long long tuned = 0, maxid = 0, annfail = 0;
    if (sscanf(buf,
               "v=%d;factory=%63[^;];forced=%d;nprobe=%d;ef=%d;recall=%lf;target=%lf;tuned=%llu;"
               "maxid=%llu;annfail=%llu",
               &v, fac, &forced, &nprobe, &ef, &recall, &target, &tuned, &maxid, &annfail) != 10 ||
        v != 1)
        return -1;
    snprintf(x->factory, sizeof x->factory, "%s", fac);
    parse_kind(x);
    x->forced = forced;
    x->nprobe = nprobe;
    x->ef_search = ef;
    x->recall = recall;
    x->tuned_n = tuned;
    x->max_id = maxid;
    x->ann_failed_n = annfail;
    return 0;
}

/* Tries the snapshot; returns 0 when loaded, else a reason for rebuilding. */
static const char *load_snapshot(idx_space *x, const idx_opts *o, int *fatal)
{
    store_index_hdr h;
    void *blob = NULL;
    size_t len = 0;
    int s = store_index_get(x->s, x->sp, &h, &blob, &len);
    if (s == STORE_NOTFOUND)
        return "no snapshot";
    if (s == STORE_CHECKSUM)
        return "snapshot failed its checksum";
    if (s) {
        *fatal = 1;
        seterr(x, "%s", store_errmsg(x->s));
        return "store error";
    }
    store_space_stat st;
    if (store_space_stat_get(x->s, x->sp, &st)) {
        free(blob);
        *fatal = 1;
        seterr(x, "%s", store_errmsg(x->s));
        return "store error";
    }
    char want[64];
    snprintf(want, sizeof want, "%s", x->factory);
    int want_forced = x->forced;
    const char *why = NULL;
    if (params_parse(x, &h))
        why = "snapshot parameters unreadable";
    else if (h.del_gen > st.del_gen)
        why = "snapshot newer than the deletions";
    /* deletions since the snapshot are taken out by the sync that follows
     * (in place when the deletion log names them, else by a rebuild) */
    else if (h.gen > st.gen)
        why = "snapshot newer than the vectors";
    else if (want_forced && (!x->forced || strcmp(want, x->factory) != 0))
        why = "a different index kind was asked for";
    if (!why) {
        FILE *f = fmemopen(blob, len, "rb");
        FaissIndex *ix = NULL;
        if (!f || faiss_read_index(f, 0, &ix)) {
            why = "snapshot unreadable by FAISS";
        } else if (faiss_Index_d(ix) != (int)x->dim || (uint64_t)faiss_Index_ntotal(ix) != h.count) {
            faiss_Index_free(ix);
            why = "snapshot does not match its header";
        } else {
            faiss_Index_free(x->ix);
            x->ix = ix;
            x->gen = h.gen;
            x->del_gen = h.del_gen;
            x->target = o && o->target_recall > 0 ? o->target_recall : x->target;
        }
        if (f)
            fclose(f);
    }
    free(blob);
    if (why) {
        /* Restore what the caller asked for before rebuilding. */
        snprintf(x->factory, sizeof x->factory, "%s", want);
        x->forced = want_forced;
        parse_kind(x);
    }
    return why;
}

int idx_space_open(store *s, store_space sp, const idx_opts *o, idx_space **out, char *errbuf,
                   size_t errlen)
{
    if (check_factory(o ? o->factory : NULL, errbuf, errlen))
        return IDX_INVAL;
    idx_space *x = space_new(store_dim(s), o);
    if (!x) {
        copy_err(errbuf, errlen, "out of memory");
        return IDX_NOMEM;
    }
    x->s = s;
    x->sp = sp;
    int fatal = 0;
    const char *why = load_snapshot(x, o, &fatal);
    int rc = IDX_OK;
    if (fatal)
        rc = IDX_STORE;
    else if (why)
        rc = rebuild(x, why);
    else {
        snprintf(x->loaded, sizeof x->loaded, "snapshot");
        rc = idx_space_sync(x);
    }
    if (rc) {
        copy_err(errbuf, errlen, x->err);
        idx_space_free(x);
        return rc;
    }
    *out = x;
    return IDX_OK;
}

typedef struct catchup {
    idx_space *x;
    float *v;
    int64_t *ids;
    size_t n;
    int rc;
    uint64_t max_gen;
} catchup;

#define CATCHUP_BLOCK 1024

static int catchup_flush(catchup *c)
{
    if (c->n && faiss_Index_add_with_ids(c->x->ix, (idx_t)c->n, c->v, (const idx_t *)c->ids)) {
        c->rc = faiss_fail(c->x, "adding vectors");
        return -1;
    }
    for (size_t i = 0; i < c->n; i++)
        if ((uint64_t)c->ids[i] > c->x->max_id)
            c->x->max_id = (uint64_t)c->ids[i];
    c->n = 0;
    return 0;
}

static int catchup_cb(void *ctx, uint64_t id, uint64_t gen, const float *vec)
{
    catchup *c = ctx;
    memcpy(c->v + c->n * c->x->dim, vec, c->x->dim * sizeof(float));
    c->ids[c->n++] = (int64_t)id;
    if (gen > c->max_gen)
        c->max_gen = gen;
    if (c->n == CATCHUP_BLOCK)
        return catchup_flush(c);
    return 0;
}

/* remove_deleted's answer when only a rebuild will do. */
#define IDX__REBUILD (-1)

typedef struct dellist {
    uint64_t *ids;
    size_t n, cap;
} dellist;

static int dellist_add(void *ctx, uint64_t gen, uint64_t id)
{
    (void)gen;
    dellist *d = ctx;
    if (d->n == d->cap) {
        size_t nc = d->cap ? 2 * d->cap : 64;
        uint64_t *ni = realloc(d->ids, nc * sizeof *ni);
        if (!ni)
            return -1;
        d->ids = ni;
        d->cap = nc;
    }
    d->ids[d->n++] = id;
    return 0;
}

/* Takes the deletions since x->del_gen out of the index by id (the store's
 * deletion log names them), instead of rebuilding it from every vector:
 * IndexIDMap2 over Flat and IVF removes ids in place.  IDX__REBUILD when
 * that cannot be done (HNSW, which FAISS cannot remove from; a log that
 * does not cover the range; FAISS refusing). */
static int remove_deleted(idx_space *x, const store_space_stat *st)
{
    if (x->hnsw || st->del_gen < x->del_gen)
        return IDX__REBUILD;
    dellist d = {0};
    int s = store_deleted_scan(x->s, x->sp, x->del_gen, st->del_gen, dellist_add, &d);
    if (s < 0) {
        free(d.ids);
        seterr(x, "out of memory reading the deletion log");
        return IDX_NOMEM;
    }
    if (s) {
        free(d.ids);
        return IDX__REBUILD;
    }
    int rc = IDX_OK;
    for (size_t i = 0; i < d.n && rc == IDX_OK; i++) {
        /* one selector per item: its id, or its slices' label range */
        FaissIDSelectorRange *sel = NULL;
        idx_t lo = x->sp == STORE_SPACE_SLICE ? (idx_t)STORE_SLICE_LABEL(d.ids[i], 0)
                                               : (idx_t)d.ids[i];
        idx_t hi = x->sp == STORE_SPACE_SLICE ? (idx_t)STORE_SLICE_LABEL(d.ids[i] + 1, 0)
                                               : lo + 1;
        size_t removed = 0;
        if (faiss_IDSelectorRange_new(&sel, lo, hi) ||
            faiss_Index_remove_ids(x->ix, (const FaissIDSelector *)sel, &removed))
            rc = IDX__REBUILD;
        faiss_IDSelector_free((FaissIDSelector *)sel);
    }
    free(d.ids);
    if (rc == IDX_OK) {
        x->del_gen = st->del_gen;
        x->removed += d.n;
    }
    return rc;
}

int idx_space_sync(idx_space *x)
{
    if (!x->s) {
        seterr(x, "this index has no store behind it");
        return IDX_INVAL;
    }
    store_space_stat st;
    if (store_space_stat_get(x->s, x->sp, &st)) {
        seterr(x, "%s", store_errmsg(x->s));
        return IDX_STORE;
    }
    if (st.del_gen != x->del_gen) {
        int rc = remove_deleted(x, &st);
        if (rc == IDX__REBUILD)
            return rebuild(x, "items deleted");
        if (rc)
            return rc;
    }
    if (st.gen == x->gen)
        return IDX_OK;
    /* An untrained index cannot take vectors: they wait for idx_space_save,
     * which trains on all of them.  A Flat that outgrew its size is likewise
     * replaced at the next save, not here. */
    if (!faiss_Index_is_trained(x->ix))
        return IDX_OK;
    catchup c = {.x = x};
    c.v = malloc((size_t)CATCHUP_BLOCK * x->dim * sizeof *c.v);
    c.ids = malloc(CATCHUP_BLOCK * sizeof *c.ids);
    if (!c.v || !c.ids) {
        free(c.v);
        free(c.ids);
        seterr(x, "out of memory");
        return IDX_NOMEM;
    }
    int s = store_vectors_scan(x->s, x->sp, x->gen, catchup_cb, &c);
    if (!s)
        catchup_flush(&c);
    free(c.v);
    free(c.ids);
    if (c.rc)
        return c.rc;
    if (s) {
        seterr(x, "reading vectors: %s", store_errmsg(x->s));
        return IDX_STORE;
    }
    x->gen = c.max_gen > st.gen ? c.max_gen : st.gen;
    return IDX_OK;
}

static int write_snapshot(idx_space *x)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) {
        seterr(x, "out of memory serialising the index");
        return IDX_NOMEM;
    }
    int frc = faiss_write_index(x->ix, f);
    if (fclose(f) || frc) {
        free(buf);
        return frc ? faiss_fail(x, "serialising the index") : IDX_IO;
    }
    store_index_hdr h;
    memset(&h, 0, sizeof h);
    h.gen = x->gen;
    h.del_gen = x->del_gen;
    h.count = (uint64_t)faiss_Index_ntotal(x->ix);
    params_format(x, &h);
    int s = store_index_put(x->s, x->sp, &h, buf, len);
    free(buf);
    if (s) {
        seterr(x, "saving the index: %s", store_errmsg(x->s));
        return IDX_STORE;
    }
    return IDX_OK;
}

/* Re-tuning on the current index with queries sampled from the store. */
typedef struct reservoir {
    float *v;
    int64_t *ids;
    size_t m, seen;
    uint32_t dim;
    uint64_t rng;
} reservoir;

static int reservoir_cb(void *ctx, uint64_t id, uint64_t gen, const float *vec)
{
    reservoir *r = ctx;
    size_t slot = r->seen < r->m ? r->seen : (size_t)(splitmix(&r->rng) % (r->seen + 1));
    r->seen++;
    if (slot < r->m) {
        memcpy(r->v + slot * r->dim, vec, r->dim * sizeof(float));
        r->ids[slot] = (int64_t)id;
    }
    return 0;
}

static int retune(idx_space *x)
{
    uint64_t n = (uint64_t)faiss_Index_ntotal(x->ix);
    reservoir r = {.dim = x->dim, .rng = x->seed ^ n};
    r.m = n / 10 < IDX_TUNE_QUERIES ? (size_t)(n / 10) : IDX_TUNE_QUERIES;
    r.v = malloc((r.m ? r.m : 1) * x->dim * sizeof *r.v);
    r.ids = malloc((r.m ? r.m : 1) * sizeof *r.ids);
    int rc = IDX_OK;
    if (!r.v || !r.ids) {
        seterr(x, "out of memory while tuning");
        rc = IDX_NOMEM;
    } else if (store_vectors_scan(x->s, x->sp, 0, reservoir_cb, &r)) {
        seterr(x, "reading vectors: %s", store_errmsg(x->s));
        rc = IDX_STORE;
    } else {
        size_t m = r.seen < r.m ? r.seen : r.m;
        vsrc src = {.s = x->s, .sp = x->sp};
        rc = tune(x, &src, r.v, r.ids, m);
    }
    free(r.v);
    free(r.ids);
    return rc;
}

int idx_space_save(idx_space *x)
{
    if (!x->s) {
        seterr(x, "this index has no store behind it");
        return IDX_INVAL;
    }
    int rc = idx_space_sync(x);
    if (rc)
        return rc;
    uint64_t n = (uint64_t)faiss_Index_ntotal(x->ix);
    if (!x->forced) {
        char want[64];
        auto_factory(n, want, sizeof want);
        /* Grow out of Flat, or into more IVF lists when the data has grown
         * fourfold past the size the lists were trained for. */
        int outgrown = strcmp(want, x->factory) != 0 &&
                       ((is_exact(x) && (!x->ann_failed_n || n >= 4 * x->ann_failed_n)) ||
                        (x->nlist && n >= 4 * x->tuned_n));
        if (outgrown && (rc = rebuild(x, "index kind outgrown")))
            return rc;
    } else if (x->nlist && !faiss_Index_is_trained(x->ix)) {
        rc = rebuild(x, "training the forced index kind");
        if (rc)
            return rc;
    }
    if (!is_exact(x) && n > 0 && (x->tuned_n == 0 || 2 * n >= 3 * x->tuned_n)) {
        rc = retune(x);
        if (!rc && !x->forced && x->nlist && x->recall < x->target)
            rc = rebuild(x, "IVF no longer reaches the target recall");
        if (rc)
            return rc;
    }
    return write_snapshot(x);
}
