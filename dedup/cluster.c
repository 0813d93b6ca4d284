/* cluster.c - exact duplicates by data hash, near duplicates by range search
 * plus union-find. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <cblas.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dedup/dedup.h"
#include "util/util.h"

#define DEDUP_BLOCK 256

/* Union-find over dense slots; ids are mapped to slots through a sorted array. */
typedef struct uf {
    uint64_t *ids; /* sorted, one per slot */
    size_t *parent;
    float *minlink, *maxlink;
    size_t n, cap;
} uf;

static size_t uf_find(uf *u, size_t a)
{
    while (u->parent[a] != a) {
        u->parent[a] = u->parent[u->parent[a]];
        a = u->parent[a];
    }
    return a;
}

static void uf_union(uf *u, size_t a, size_t b, float score)
{
    a = uf_find(u, a);
    b = uf_find(u, b);
    float mn = score, mx = score;
    if (a != b) {
        if (u->minlink[a] < mn)
            mn = u->minlink[a];
        if (u->minlink[b] < mn)
            mn = u->minlink[b];
        if (u->maxlink[a] > mx)
            mx = u->maxlink[a];
        if (u->maxlink[b] > mx)
            mx = u->maxlink[b];
        if (a < b)
            u->parent[b] = a;
        else
            u->parent[a] = b;
        a = a < b ? a : b;
    } else {
        mn = u->minlink[a] < score ? u->minlink[a] : score;
        mx = u->maxlink[a] > score ? u->maxlink[a] : score;
    }
    u->minlink[a] = mn;
    u->maxlink[a] = mx;
}

/* Gives each of u->n slots its own set; -1 when out of memory (uf_free
 * then frees what was allocated). */
static int uf_init(uf *u)
{
    size_t n = u->n ? u->n : 1;
    u->parent = malloc(n * sizeof *u->parent);
    u->minlink = malloc(n * sizeof *u->minlink);
    u->maxlink = malloc(n * sizeof *u->maxlink);
    if (!u->parent || !u->minlink || !u->maxlink)
        return -1;
    for (size_t i = 0; i < u->n; i++) {
        u->parent[i] = i;
        u->minlink[i] = 2.0f;
        u->maxlink[i] = -2.0f;
    }
    return 0;
}

static void uf_free(uf *u)
{
    free(u->ids);
    free(u->parent);
    free(u->minlink);
    free(u->maxlink);
}

static long uf_slot(const uf *u, uint64_t id)
{
    size_t lo = 0, hi = u->n;
    while (lo < hi) {
        size_t m = lo + (hi - lo) / 2;
        if (u->ids[m] < id)
            lo = m + 1;
        else
            hi = m;
    }
    return lo < u->n && u->ids[lo] == id ? (long)lo : -1;
}

/* Gathers the space's vectors block by block and range-searches each block. */
typedef struct scan {
    idx_space *x;
    uf *u;
    uint32_t dim;
    float thr;
    float *v;
    int64_t *qid;
    size_t n, block;
    size_t pairs, scanned, max_pairs;
    int rc;
    char *errbuf;
    size_t errlen;
} scan;

static int collect_ids(void *ctx, uint64_t id, uint64_t gen, const float *vec)
{
    uf *u = ctx;
    if (u->n == u->cap) {
        size_t nc = u->cap ? u->cap * 2 : 4096;
        uint64_t *ni = realloc(u->ids, nc * sizeof *ni);
        if (!ni)
            return -1;
        u->ids = ni;
        u->cap = nc;
    }
    u->ids[u->n++] = id;
    return 0;
}

static int flush(scan *s)
{
    if (!s->n)
        return 0;
    size_t lims[DEDUP_BLOCK + 1];
    int64_t *ids = NULL;
    float *sc = NULL;
    if (idx_space_range(s->x, s->v, s->n, s->thr, lims, &ids, &sc)) {
        s->rc = util_errf(s->errbuf, s->errlen, DEDUP_INDEX, "%s", idx_space_errmsg(s->x));
        return -1;
    }
    for (size_t i = 0; i < s->n; i++) {
        long a = uf_slot(s->u, (uint64_t)s->qid[i]);
        for (size_t j = lims[i]; j < lims[i + 1]; j++) {
            /* Each unordered pair once: only from the lower id. */
            if (ids[j] <= s->qid[i])
                continue;
            long b = uf_slot(s->u, (uint64_t)ids[j]);
            if (a < 0 || b < 0)
                continue;
            s->pairs++;
            uf_union(s->u, (size_t)a, (size_t)b, sc[j]);
        }
    }
    if (s->max_pairs && s->pairs > s->max_pairs) {
        free(ids);
        free(sc);
        s->rc = util_errf(s->errbuf, s->errlen, DEDUP_TOOBIG,
                          "threshold %g links more than %zu near pairs (after %zu of %zu items): "
                          "raise the threshold, or the pair limit",
                          (double)s->thr, s->max_pairs, s->scanned + s->n, s->u->n);
        return -1;
    }
    s->scanned += s->n;
    free(ids);
    free(sc);
    s->n = 0;
    return 0;
}

static int scan_cb(void *ctx, uint64_t id, uint64_t gen, const float *vec)
{
    scan *s = ctx;
    memcpy(s->v + s->n * s->dim, vec, s->dim * sizeof(float));
    s->qid[s->n++] = (int64_t)id;
    return s->n == s->block ? flush(s) : 0;
}

typedef struct groups {
    dedup_cluster *c;
    size_t n, cap;
} groups;

static int push_cluster(groups *g, const uint64_t *ids, size_t n, float mn, float mx)
{
    if (g->n == g->cap) {
        size_t nc = g->cap ? g->cap * 2 : 16;
        dedup_cluster *c = realloc(g->c, nc * sizeof *c);
        if (!c)
            return -1;
        g->c = c;
        g->cap = nc;
    }
    uint64_t *copy = malloc(n * sizeof *copy);
    if (!copy)
        return -1;
    memcpy(copy, ids, n * sizeof *copy);
    g->c[g->n++] = (dedup_cluster){.ids = copy, .n = n, .min_score = mn, .max_score = mx};
    return 0;
}

static int exact_cb(void *ctx, const uint64_t *ids, size_t n)
{
    return push_cluster(ctx, ids, n, 1.0f, 1.0f);
}

/* Appends the connected components of two or more items to g, each with its
 * ids in order.  Roots are the lowest slot of their component, so clusters
 * come out in id order.  -1 when out of memory. */
static int components(uf *u, groups *g)
{
    size_t *count = calloc(u->n ? u->n : 1, sizeof *count);
    uint64_t *ids = malloc((u->n ? u->n : 1) * sizeof *ids);
    int rc = 0;
    if (!count || !ids) {
        rc = -1;
        goto out;
    }
    for (size_t i = 0; i < u->n; i++)
        count[uf_find(u, i)]++;
    /* Bucket start offsets, then stable fill. */
    size_t off = 0;
    for (size_t i = 0; i < u->n; i++) {
        size_t c = count[i];
        count[i] = off;
        off += c;
    }
    for (size_t i = 0; i < u->n; i++)
        ids[count[uf_find(u, i)]++] = u->ids[i];
    off = 0;
    for (size_t i = 0; i < u->n && !rc; i++) {
        if (u->parent[i] != i)
            continue;
        /* Buckets are laid out in slot order and only roots have members,
         * so root i's bucket spans [end of the previous root's, count[i]). */
        size_t end = count[i], start = off;
        off = end;
        if (end - start >= 2 && push_cluster(g, ids + start, end - start, u->minlink[i],
                                             u->maxlink[i]))
            rc = -1;
    }
out:
    free(count);
    free(ids);
    return rc;
}

static void groups_free(groups *g)
{
    for (size_t i = 0; i < g->n; i++)
        free(g->c[i].ids);
    free(g->c);
}

/* Both searches end alike: the near clusters from the union-find, then the
 * exact and near groups handed over to r.  -1 when out of memory. */
static int dedup_finish(uf *u, groups *ex, groups *ne, dedup_result *r)
{
    if (components(u, ne))
        return -1;
    r->exact = ex->c;
    r->nexact = ex->n;
    r->near = ne->c;
    r->nnear = ne->n;
    ex->c = ne->c = NULL;
    ex->n = ne->n = 0;
    return 0;
}

/* A store call's failure: sr < 0 is out of memory, anything else the
 * store's own error. */
static int store_fail(store *st, int sr, char *errbuf, size_t errlen)
{
    return sr < 0 ? util_errf(errbuf, errlen, DEDUP_NOMEM, "out of memory")
                  : util_errf(errbuf, errlen, DEDUP_STORE, "%s", store_errmsg(st));
}

void dedup_result_free(dedup_result *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->nexact; i++)
        free(r->exact[i].ids);
    for (size_t i = 0; i < r->nnear; i++)
        free(r->near[i].ids);
    free(r->exact);
    free(r->near);
    free(r);
}

static int cluster_first_cmp(const void *a, const void *b)
{
    const dedup_cluster *x = a, *y = b;
    uint64_t p = x->n ? x->ids[0] : 0, q = y->n ? y->ids[0] : 0;
    return p < q ? -1 : p > q;
}

int dedup_result_merge(dedup_result *into, dedup_result *from)
{
    if (!from)
        return DEDUP_OK;
    if (from->nnear) {
        dedup_cluster *n = realloc(into->near, (into->nnear + from->nnear) * sizeof *n);
        if (!n) {
            dedup_result_free(from);
            return DEDUP_NOMEM;
        }
        memcpy(n + into->nnear, from->near, from->nnear * sizeof *n);
        into->near = n;
        into->nnear += from->nnear;
        free(from->near);
        from->near = NULL;
        from->nnear = 0;
        qsort(into->near, into->nnear, sizeof *into->near, cluster_first_cmp);
    }
    into->pairs += from->pairs;
    into->scanned += from->scanned;
    dedup_result_free(from);
    return DEDUP_OK;
}

int dedup_embeddings(store *st, idx_space *x, float threshold, size_t max_pairs,
                     dedup_result **out, char *errbuf, size_t errlen)
{
    if (!(threshold > 0 && threshold <= 1))
        return util_errf(errbuf, errlen, DEDUP_INVAL, "threshold must be in (0, 1], not %g",
                   (double)threshold);
    dedup_result *r = calloc(1, sizeof *r);
    uf u = {0};
    scan s = {.x = x, .u = &u, .dim = store_dim(st), .thr = threshold, .max_pairs = max_pairs,
              .errbuf = errbuf, .errlen = errlen};
    groups ex = {0}, ne = {0};
    int rc = DEDUP_OK;
    if (!r) {
        rc = util_errf(errbuf, errlen, DEDUP_NOMEM, "out of memory");
        goto out;
    }
    int sr = store_datahash_groups(st, exact_cb, &ex);
    if (sr) {
        rc = store_fail(st, sr, errbuf, errlen);
        goto out;
    }
    store_space sp = idx_space_which(x);
    sr = store_vectors_scan(st, sp, 0, collect_ids, &u);
    if (sr) {
        rc = store_fail(st, sr, errbuf, errlen);
        goto out;
    }
    /* a block's range results are at most block x n */
    s.block = u.n && DEDUP_RANGE_RESULTS / u.n < DEDUP_BLOCK ? DEDUP_RANGE_RESULTS / u.n
                                                              : DEDUP_BLOCK;
    if (s.block < 1)
        s.block = 1;
    s.v = malloc((size_t)DEDUP_BLOCK * s.dim * sizeof *s.v);
    s.qid = malloc(DEDUP_BLOCK * sizeof *s.qid);
    if (uf_init(&u) || !s.v || !s.qid) {
        rc = util_errf(errbuf, errlen, DEDUP_NOMEM, "out of memory");
        goto out;
    }
    sr = store_vectors_scan(st, sp, 0, scan_cb, &s);
    if (!sr && !s.rc)
        flush(&s);
    if (s.rc) {
        rc = s.rc;
        goto out;
    }
    if (sr) {
        rc = util_errf(errbuf, errlen, DEDUP_STORE, "%s", store_errmsg(st));
        goto out;
    }
    if (dedup_finish(&u, &ex, &ne, r)) {
        rc = util_errf(errbuf, errlen, DEDUP_NOMEM, "out of memory");
        goto out;
    }
    r->pairs = s.pairs;
    r->scanned = s.scanned;
    *out = r;
    r = NULL;
out:
    groups_free(&ex);
    groups_free(&ne);
    dedup_result_free(r);
    uf_free(&u);
    free(s.v);
    free(s.qid);
    return rc;
}

/* ---- fingerprints ------------------------------------------------------------ */

typedef struct fpset {
    uint32_t tag, dim;
    float *v; /* n x dim */
    uint64_t *ids;
    size_t n, cap;
    size_t other; /* fingerprints of another tag or dimension, skipped */
} fpset;

static int fp_collect(void *ctx, uint64_t id, uint32_t tag, uint32_t dim, const float *fp)
{
    fpset *f = ctx;
    if (tag != f->tag || dim != f->dim) {
        f->other++;
        return 0;
    }
    if (f->n == f->cap) {
        size_t nc = f->cap ? 2 * f->cap : 1024;
        float *nv = realloc(f->v, nc * dim * sizeof *nv);
        if (nv)
            f->v = nv;
        uint64_t *ni = realloc(f->ids, nc * sizeof *ni);
        if (ni)
            f->ids = ni;
        if (!nv || !ni)
            return -1;
        f->cap = nc;
    }
    memcpy(f->v + f->n * dim, fp, dim * sizeof *fp);
    f->ids[f->n++] = id;
    return 0;
}

/* Joins the pairs of fingerprints f (the union-find's slots, in id order)
 * that are near duplicates into u, counting them in r->pairs.  Returns 0 or
 * DEDUP_NOMEM. */
typedef int (*fp_join_fn)(const fpset *f, uf *u, dedup_result *r, void *ctx);

/* The frame both fingerprint dedups share: exact groups and the
 * fingerprints of (tag, dim) from the store, join, then clusters. */
static int dedup_fp_run(store *st, uint32_t tag, uint32_t dim, fp_join_fn join, void *ctx,
                        dedup_result **out, char *errbuf, size_t errlen)
{
    dedup_result *r = calloc(1, sizeof *r);
    fpset f = {.tag = tag, .dim = dim};
    uf u = {0};
    groups ex = {0}, ne = {0};
    int rc = DEDUP_OK;
    if (!r) {
        rc = util_errf(errbuf, errlen, DEDUP_NOMEM, "out of memory");
        goto out;
    }
    int sr = store_datahash_groups(st, exact_cb, &ex);
    if (!sr)
        sr = store_fingerprints_scan(st, fp_collect, &f);
    if (sr) {
        rc = store_fail(st, sr, errbuf, errlen);
        goto out;
    }
    /* Fingerprints come in id order: they are the union-find's slots. */
    u.ids = f.ids;
    u.n = f.n;
    f.ids = NULL;
    if (uf_init(&u) || join(&f, &u, r, ctx) || dedup_finish(&u, &ex, &ne, r)) {
        rc = util_errf(errbuf, errlen, DEDUP_NOMEM, "out of memory");
        goto out;
    }
    r->scanned = u.n;
    *out = r;
    r = NULL;
out:
    groups_free(&ex);
    groups_free(&ne);
    dedup_result_free(r);
    free(f.v);
    free(f.ids);
    uf_free(&u);
    return rc;
}

/* Exact all-pairs inner products, a block of rows at a time against the
 * rows after the block's first (each unordered pair once). */
static int join_cosine(const fpset *f, uf *u, dedup_result *r, void *ctx)
{
    const float threshold = *(const float *)ctx;
    const size_t dim = f->dim;
    float *sc = malloc((size_t)DEDUP_BLOCK * (u->n ? u->n : 1) * sizeof *sc);
    if (!sc)
        return DEDUP_NOMEM;
    for (size_t b0 = 0; b0 < u->n; b0 += DEDUP_BLOCK) {
        size_t nb = u->n - b0 < DEDUP_BLOCK ? u->n - b0 : DEDUP_BLOCK, ncol = u->n - b0;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nb, (int)ncol, (int)dim, 1.0f,
                    f->v + b0 * dim, (int)dim, f->v + b0 * dim, (int)dim, 0.0f, sc, (int)ncol);
        for (size_t i = 0; i < nb; i++)
            for (size_t j = i + 1; j < ncol; j++) {
                float s = sc[i * ncol + j];
                if (s >= threshold) {
                    r->pairs++;
                    uf_union(u, b0 + i, b0 + j, s > 1 ? 1 : s);
                }
            }
    }
    free(sc);
    return DEDUP_OK;
}

int dedup_fingerprints(store *st, uint32_t tag, uint32_t dim, float threshold,
                            dedup_result **out, char *errbuf, size_t errlen)
{
    if (!(threshold > 0 && threshold <= 1))
        return util_errf(errbuf, errlen, DEDUP_INVAL, "threshold must be in (0, 1], not %g",
                         (double)threshold);
    if (!dim)
        return util_errf(errbuf, errlen, DEDUP_INVAL, "fingerprint dimension 0");
    return dedup_fp_run(st, tag, dim, join_cosine, &threshold, out, errbuf, errlen);
}

/* ---- fingerprints compared by a scorer (radiographs) ------------------------------ */

typedef struct scored_pair {
    size_t a, b;
    float s;
} scored_pair;

typedef struct scored_job {
    const fpset *f;
    dedup_score_fn score;
    void *ctx;
    float threshold;
    size_t t, nt; /* rows t, t + nt, ... */
    scored_pair *p;
    size_t n, cap;
    int nomem;
    size_t done; /* pairs scored (read by job 0 for progress; atomic) */
    struct scored_job *all; /* job 0: every job, to sum their progress */
    dedup_progress_fn progress;
    void *pctx;
} scored_job;

static void *scored_rows(void *arg)
{
    scored_job *j = arg;
    const fpset *f = j->f;
    for (size_t i = j->t; i < f->n && !j->nomem; i += j->nt) {
        for (size_t k = i + 1; k < f->n; k++) {
            float s = j->score(f->v + i * f->dim, f->v + k * f->dim, j->threshold, j->ctx);
            if (!(s >= j->threshold))
                continue;
            if (j->n == j->cap) {
                size_t nc = j->cap ? 2 * j->cap : 256;
                scored_pair *np = realloc(j->p, nc * sizeof *np);
                if (!np) {
                    j->nomem = 1;
                    break;
                }
                j->p = np;
                j->cap = nc;
            }
            j->p[j->n++] = (scored_pair){i, k, s > 1 ? 1 : s};
        }
        __atomic_add_fetch(&j->done, f->n - 1 - i, __ATOMIC_RELAXED);
        if (j->progress) { /* job 0, on the calling thread */
            size_t sum = 0;
            for (size_t t = 0; t < j->nt; t++)
                sum += __atomic_load_n(&j->all[t].done, __ATOMIC_RELAXED);
            j->progress(j->pctx, sum, f->n * (f->n - 1) / 2);
        }
    }
    return NULL;
}

typedef struct scored_ctx {
    dedup_score_fn score;
    void *ctx;
    float threshold;
    int threads;
    dedup_progress_fn progress;
    void *pctx;
} scored_ctx;

/* Every unordered pair once, rows dealt round-robin to the threads (later
 * rows have fewer pairs); pairs are joined in a fixed order afterwards, so
 * the clusters do not depend on the thread count. */
static int join_scored(const fpset *f, uf *u, dedup_result *r, void *arg)
{
    const scored_ctx *sc = arg;
    const int threads = sc->threads;
    scored_job *jobs = calloc((size_t)threads, sizeof *jobs);
    pthread_t *th = calloc((size_t)threads, sizeof *th);
    int *running = calloc((size_t)threads, sizeof *running);
    int rc = DEDUP_OK;
    if (!jobs || !th || !running) {
        rc = DEDUP_NOMEM;
        goto out;
    }
    for (int t = 0; t < threads; t++)
        jobs[t] = (scored_job){f, sc->score, sc->ctx, sc->threshold, (size_t)t, (size_t)threads,
                               NULL, 0, 0, 0, 0, jobs, NULL, NULL};
    jobs[0].progress = sc->progress;
    jobs[0].pctx = sc->pctx;
    for (int t = 1; t < threads; t++)
        running[t] = !pthread_create(&th[t], NULL, scored_rows, &jobs[t]);
    scored_rows(&jobs[0]);
    for (int t = 1; t < threads; t++) {
        if (running[t])
            pthread_join(th[t], NULL);
        else
            scored_rows(&jobs[t]); /* a thread that could not start: its rows here */
    }
    for (int t = 0; t < threads && !rc; t++) {
        if (jobs[t].nomem)
            rc = DEDUP_NOMEM;
        for (size_t k = 0; k < jobs[t].n && !rc; k++) {
            r->pairs++;
            uf_union(u, jobs[t].p[k].a, jobs[t].p[k].b, jobs[t].p[k].s);
        }
    }
out:
    for (int t = 0; jobs && t < threads; t++)
        free(jobs[t].p);
    free(jobs);
    free(th);
    free(running);
    return rc;
}

int dedup_fingerprints_scored(store *st, uint32_t tag, uint32_t dim, float threshold,
                                   dedup_score_fn score, void *ctx, int threads,
                                   dedup_progress_fn progress, void *pctx,
                                   dedup_result **out, char *errbuf, size_t errlen)
{
    if (!(threshold > -1 && threshold <= 1))
        return util_errf(errbuf, errlen, DEDUP_INVAL, "threshold must be in (-1, 1], not %g",
                         (double)threshold);
    if (!dim || !score)
        return util_errf(errbuf, errlen, DEDUP_INVAL, "fingerprint dimension 0 or no scorer");
    scored_ctx sc = {score, ctx, threshold, threads < 1 ? 1 : threads > 64 ? 64 : threads,
                     progress, pctx};
    return dedup_fp_run(st, tag, dim, join_scored, &sc, out, errbuf, errlen);
}
