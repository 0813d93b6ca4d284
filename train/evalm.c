/* evalm.c - retrieval metrics for `medsem eval`: recall@k by pair id, label
 * precision@10 and mAP by exact label-set equality, and their chance levels.
 * Definitions in train.h. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <assert.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "train/train.h"
#include "util/util.h"

/* Queries scored per sgemm: the score block is at most QBLOCK x ng floats,
 * and fewer rows for a gallery so large that it would pass BLOCK_FLOATS. */
#define QBLOCK 64
#define BLOCK_FLOATS ((size_t)1 << 24)

static const size_t KS[TRN_EVAL_NK] = {1, 5, 10};
#define PREC_K 10


double trn_eval_chance_recall(size_t n, size_t m, size_t k)
{
    if (m == 0 || n == 0)
        return 0.0;
    if (k >= n || m + k > n)
        return 1.0; /* every order puts a match in the top k */
    /* C(n - m, k) / C(n, k) = prod_{i < k} (n - m - i) / (n - i) */
    double none = 1.0;
    for (size_t i = 0; i < k; i++)
        none *= (double)(n - m - i) / (double)(n - i);
    return 1.0 - none;
}

double trn_eval_chance_ap(size_t n, size_t R)
{
    assert(R >= 1 && R <= n);
    if (n == 1)
        return 1.0;
    double h = 0;
    for (size_t k = n; k >= 1; k--) /* small terms first */
        h += 1.0 / (double)k;
    return (h + (double)(R - 1) / (double)(n - 1) * ((double)n - h)) / (double)n;
}

/* ---- label classes ---------------------------------------------------------------------- */

static int cmp_i32(const void *x, const void *y)
{
    int32_t a = *(const int32_t *)x, b = *(const int32_t *)y;
    return (a > b) - (a < b);
}

typedef struct hkey {
    uint64_t h;
    size_t i;
} hkey;

static int cmp_hkey(const void *x, const void *y)
{
    const hkey *a = x, *b = y;
    if (a->h != b->h)
        return a->h < b->h ? -1 : 1;
    return (a->i > b->i) - (a->i < b->i);
}

/* Gives each of the nq + ng items (queries first) a class: equal label sets
 * <=> equal class, the labels with hidden[id] != 0 (id < nhidden; hidden
 * may be NULL) left out of the sets.  Sets are sorted and deduplicated into
 * one buffer, hashed, and items grouped by hash; within a hash group (almost
 * always one set) sets are compared in full. */
static int label_classes(const trn_eval_set *q, const trn_eval_set *g,
                         const unsigned char *hidden, size_t nhidden, size_t *cls)
{
    size_t n = q->n + g->n, total = q->label_off[q->n] + g->label_off[g->n];
    int32_t *buf = malloc((total > 0 ? total : 1) * sizeof *buf);
    size_t *start = malloc((n + 1) * sizeof *start);
    size_t *len = malloc((n > 0 ? n : 1) * sizeof *len);
    hkey *keys = malloc((n > 0 ? n : 1) * sizeof *keys);
    int rc = ENC_OK;
    if (buf == NULL || start == NULL || len == NULL || keys == NULL) {
        rc = ENC_NOMEM;
        goto done;
    }
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        const trn_eval_set *s = i < q->n ? q : g;
        size_t k = i < q->n ? i : i - q->n;
        size_t c = 0;
        start[i] = at;
        for (size_t t = s->label_off[k]; t < s->label_off[k + 1]; t++) {
            int32_t id = s->labels[t];
            if (hidden == NULL || id < 0 || (size_t)id >= nhidden || !hidden[id])
                buf[at + c++] = id;
        }
        qsort(buf + at, c, sizeof *buf, cmp_i32);
        size_t u = 0;
        for (size_t j = 0; j < c; j++)
            if (u == 0 || buf[at + j] != buf[at + u - 1])
                buf[at + u++] = buf[at + j];
        len[i] = u;
        at += u;
        uint64_t h = 1469598103934665603ULL ^ u; /* FNV-1a over the length and ids */
        for (size_t j = 0; j < u; j++) {
            h ^= (uint32_t)buf[start[i] + j];
            h *= 1099511628211ULL;
        }
        keys[i].h = h;
        keys[i].i = i;
    }
    qsort(keys, n, sizeof *keys, cmp_hkey);
    size_t next = 0;
    for (size_t r = 0; r < n;) {
        size_t e = r;
        while (e < n && keys[e].h == keys[r].h)
            e++;
        size_t first = next; /* classes made in this hash group: first .. next */
        for (size_t a = r; a < e; a++) {
            size_t i = keys[a].i;
            cls[i] = SIZE_MAX;
            /* compare with one member of each class already in the group */
            for (size_t b = r; b < a && cls[i] == SIZE_MAX; b++) {
                size_t j = keys[b].i;
                if (cls[j] >= first && len[j] == len[i] &&
                    memcmp(buf + start[j], buf + start[i], len[i] * sizeof *buf) == 0)
                    cls[i] = cls[j];
            }
            if (cls[i] == SIZE_MAX)
                cls[i] = next++;
        }
        r = e;
    }
done:
    free(buf);
    free(start);
    free(len);
    free(keys);
    return rc;
}

/* ---- ranking ---------------------------------------------------------------------------- */

typedef struct cand {
    float s;
    uint32_t i; /* gallery index */
} cand;

/* Score descending, then gallery index ascending. */
static int cmp_cand(const void *x, const void *y)
{
    const cand *a = x, *b = y;
    if (a->s != b->s)
        return a->s > b->s ? -1 : 1;
    return (a->i > b->i) - (a->i < b->i);
}

int trn_eval_retrieval(const trn_eval_set *queries, const trn_eval_set *gallery, int E,
                       trn_eval_metrics *model, trn_eval_metrics *chance, char *errbuf,
                       size_t errlen)
{
    const trn_eval_set *q = queries, *g = gallery;
    assert(q != NULL && g != NULL);
    assert((q->n == 0 || (q->emb != NULL && q->pair != NULL)) &&
           (g->n == 0 || (g->emb != NULL && g->pair != NULL)));
    if (E < 1)
        return util_errf(errbuf, errlen, ENC_INVAL, "eval: embedding size %d", E);
    if ((q->label_off == NULL) != (g->label_off == NULL))
        return util_errf(errbuf, errlen, ENC_INVAL,
                    "eval: the %s have labels and the %s do not",
                    q->label_off ? "queries" : "gallery items",
                    q->label_off ? "gallery items" : "queries");
    if (g->n > INT_MAX) /* BLAS dimensions are int */
        return util_errf(errbuf, errlen, ENC_INVAL, "eval: gallery of %zu items (at most %d)", g->n,
                    INT_MAX);
    int labelled = q->label_off != NULL;
    int self = q->item != NULL && g->item != NULL;

    size_t ncls = labelled ? q->n + g->n : 0;
    size_t qblock = g->n > 0 ? BLOCK_FLOATS / g->n : QBLOCK;
    qblock = qblock < 1 ? 1 : qblock > QBLOCK ? QBLOCK : qblock;
    size_t *cls = malloc((ncls > 0 ? ncls : 1) * sizeof *cls);
    float *S = malloc(qblock * (g->n > 0 ? g->n : 1) * sizeof *S);
    cand *c = malloc((g->n > 0 ? g->n : 1) * sizeof *c);
    int rc = ENC_OK;
    if (cls == NULL || S == NULL || c == NULL ||
        (labelled && label_classes(q, g, NULL, 0, cls) != ENC_OK)) {
        rc = util_errf(errbuf, errlen, ENC_NOMEM, "eval: out of memory (%zu gallery items)", g->n);
        goto done;
    }
    const size_t *qcls = cls, *gcls = cls + q->n;

    /* sums: [0] the model, [1] chance */
    double rec[2][TRN_EVAL_NK] = {{0}}, p10[2] = {0}, ap[2] = {0};
    size_t nq = 0, nrec = 0, nmap = 0;
    for (size_t q0 = 0; q0 < q->n; q0 += qblock) {
        size_t qb = q->n - q0 < qblock ? q->n - q0 : qblock;
        if (g->n > 0)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)qb, (int)g->n, E, 1.0f,
                        q->emb + q0 * (size_t)E, E, g->emb, E, 0.0f, S, (int)g->n);
        for (size_t qi = q0; qi < q0 + qb; qi++) {
            const float *row = S + (qi - q0) * g->n;
            size_t n = 0;
            for (size_t j = 0; j < g->n; j++) {
                if (self && g->item[j] == q->item[qi])
                    continue;
                c[n].s = isnan(row[j]) ? -INFINITY : row[j];
                c[n].i = (uint32_t)j;
                n++;
            }
            if (n == 0)
                continue;
            nq++;
            qsort(c, n, sizeof *c, cmp_cand);

            size_t matches = 0, first = 0; /* first: 1-based rank of the first match */
            size_t R = 0, top = 0, kp = n < PREC_K ? n : PREC_K;
            double apsum = 0;
            for (size_t r = 0; r < n; r++) {
                size_t j = c[r].i;
                if (g->pair[j] == q->pair[qi] && matches++ == 0)
                    first = r + 1;
                if (labelled && gcls[j] == qcls[qi]) {
                    R++;
                    apsum += (double)R / (double)(r + 1);
                    if (r < kp)
                        top++;
                }
            }
            if (matches > 0) {
                nrec++;
                for (int k = 0; k < TRN_EVAL_NK; k++) {
                    rec[0][k] += first <= KS[k];
                    rec[1][k] += trn_eval_chance_recall(n, matches, KS[k]);
                }
            }
            if (labelled) {
                p10[0] += (double)top / (double)kp;
                p10[1] += (double)R / (double)n;
                if (R > 0) {
                    nmap++;
                    ap[0] += apsum / (double)R;
                    ap[1] += trn_eval_chance_ap(n, R);
                }
            }
        }
    }
    trn_eval_metrics *out[2] = {model, chance};
    for (int w = 0; w < 2; w++) {
        if (out[w] == NULL)
            continue;
        trn_eval_metrics r = {{0}, 0, 0, nq, nrec, nmap};
        for (int k = 0; k < TRN_EVAL_NK; k++)
            r.recall[k] = nrec > 0 ? rec[w][k] / (double)nrec : 0.0;
        r.label_p10 = labelled && nq > 0 ? p10[w] / (double)nq : 0.0;
        r.map = nmap > 0 ? ap[w] / (double)nmap : 0.0;
        *out[w] = r;
    }
done:
    free(cls);
    free(S);
    free(c);
    return rc;
}

/* ---- the oracle's ceiling ------------------------------------------------------------- */

int trn_eval_label_ceiling(const trn_eval_set *queries, const trn_eval_set *gallery,
                           const unsigned char *hidden, size_t nhidden, double *p10,
                           char *errbuf, size_t errlen)
{
    const trn_eval_set *q = queries, *g = gallery;
    assert(q != NULL && g != NULL && p10 != NULL);
    *p10 = 0.0;
    if (q->label_off == NULL || g->label_off == NULL)
        return util_errf(errbuf, errlen, ENC_INVAL, "eval: the ceiling needs labels on both sides");
    int self = q->item != NULL && g->item != NULL;
    size_t n = q->n + g->n;
    size_t *cls = malloc((n ? n : 1) * sizeof *cls);
    size_t *vcls = malloc((n ? n : 1) * sizeof *vcls);
    size_t *cnt = calloc(n ? n : 1, sizeof *cnt);
    size_t *vcnt = calloc(n ? n : 1, sizeof *vcnt);
    hkey *refs = self ? malloc((g->n ? g->n : 1) * sizeof *refs) : NULL;
    int rc = ENC_OK;
    if (cls == NULL || vcls == NULL || cnt == NULL || vcnt == NULL || (self && refs == NULL) ||
        label_classes(q, g, NULL, 0, cls) != ENC_OK ||
        label_classes(q, g, hidden, nhidden, vcls) != ENC_OK)
        goto nomem;
    const size_t *gcls = cls + q->n, *gvcls = vcls + q->n;
    for (size_t j = 0; j < g->n; j++) {
        cnt[gcls[j]]++;
        vcnt[gvcls[j]]++;
    }
    if (self) {
        for (size_t j = 0; j < g->n; j++)
            refs[j] = (hkey){(uint64_t)g->item[j], j}; /* the gallery by item id */
        qsort(refs, g->n, sizeof *refs, cmp_hkey);
    }
    double sum = 0;
    size_t nq = 0;
    for (size_t i = 0; i < q->n; i++) {
        size_t exact = cnt[cls[i]], group = vcnt[vcls[i]], c = g->n;
        if (self) {
            /* the query's own item is no candidate (trn_eval_retrieval) */
            size_t lo = 0, hi = g->n;
            while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                if (refs[mid].h < (uint64_t)q->item[i])
                    lo = mid + 1;
                else
                    hi = mid;
            }
            for (; lo < g->n && refs[lo].h == (uint64_t)q->item[i]; lo++) {
                size_t j = refs[lo].i;
                c--;
                exact -= gcls[j] == cls[i];
                group -= gvcls[j] == vcls[i];
            }
        }
        if (c == 0)
            continue;
        nq++;
        size_t kp = c < PREC_K ? c : PREC_K;
        sum += group == 0 ? 0.0 : (double)exact / (double)(group > kp ? group : kp);
    }
    *p10 = nq > 0 ? sum / (double)nq : 0.0;
    goto done;
nomem:
    rc = util_errf(errbuf, errlen, ENC_NOMEM, "eval: out of memory (%zu gallery items)", g->n);
done:
    free(cls);
    free(vcls);
    free(cnt);
    free(vcnt);
    free(refs);
    return rc;
}

double trn_eval_precision_at(const float *q, const float *g, size_t n, int E,
                             const unsigned char *rel, size_t k)
{
    assert(q != NULL && (n == 0 || (g != NULL && rel != NULL)) && E >= 1);
    if (n == 0 || k == 0)
        return 0.0;
    k = k < n ? k : n;
    /* The k best by a partial insertion: k is small (10), n is a gallery. */
    cand best[64];
    assert(k <= sizeof best / sizeof *best);
    size_t have = 0;
    for (size_t j = 0; j < n; j++) {
        double s = 0;
        for (int e = 0; e < E; e++)
            s += (double)q[e] * g[j * (size_t)E + e];
        cand c = {isnan(s) ? -INFINITY : (float)s, (uint32_t)j};
        if (have == k && cmp_cand(&c, &best[k - 1]) >= 0)
            continue;
        size_t at = have < k ? have++ : k - 1;
        while (at > 0 && cmp_cand(&c, &best[at - 1]) < 0) {
            best[at] = best[at - 1];
            at--;
        }
        best[at] = c;
    }
    size_t hits = 0;
    for (size_t r = 0; r < k; r++)
        hits += rel[best[r].i] != 0;
    return (double)hits / (double)k;
}

/* Score ascending: the AUC's ranks. */
static int cmp_score(const void *x, const void *y)
{
    const cand *a = x, *b = y;
    return (a->s > b->s) - (a->s < b->s);
}

double trn_eval_auc(const float *score, const unsigned char *positive, size_t n)
{
    assert(n == 0 || (score != NULL && positive != NULL));
    cand *c = malloc((n ? n : 1) * sizeof *c);
    if (c == NULL)
        return NAN;
    size_t npos = 0;
    for (size_t i = 0; i < n; i++) {
        c[i] = (cand){score[i], (uint32_t)i};
        npos += positive[i] != 0;
    }
    size_t nneg = n - npos;
    if (npos == 0 || nneg == 0) {
        free(c);
        return NAN;
    }
    /* Mann-Whitney: the positives' rank sum, ties at their mean rank. */
    qsort(c, n, sizeof *c, cmp_score);
    double rsum = 0;
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j < n && c[j].s == c[i].s)
            j++;
        double mid = (double)(i + 1 + j) / 2.0; /* ranks i+1 .. j */
        for (size_t t = i; t < j; t++)
            if (positive[c[t].i])
                rsum += mid;
        i = j;
    }
    free(c);
    return (rsum - (double)npos * (double)(npos + 1) / 2.0) / ((double)npos * (double)nneg);
}
