/* search.c - query planning: filters, selectors and the exact fallback. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "searcher/searcher.h"
#include "util/util.h"

static const char *const srch_msgs[] = {
#define SRCH__MSG(name, msg) msg,
    SRCH_ERRNO_MAP(SRCH__MSG)
#undef SRCH__MSG
};
static const char *const srch_names[] = {
#define SRCH__NAME(name, msg) "SRCH_" #name,
    SRCH_ERRNO_MAP(SRCH__NAME)
#undef SRCH__NAME
};

const char *srch_strerror(int code)
{
    return code >= 0 && code < SRCH_NERR ? srch_msgs[code] : "unknown error";
}

const char *srch_errname(int code)
{
    return code >= 0 && code < SRCH_NERR ? srch_names[code] : "SRCH_UNKNOWN";
}

/* ---- filters ----------------------------------------------------------------- */

static int parse_number(const char *t, double *out)
{
    if (!*t || isspace((unsigned char)*t))
        return -1;
    char *end;
    errno = 0;
    double v = strtod(t, &end);
    if (*end || errno == ERANGE || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

/* KEY? and !KEY?: the key exists, or does not. */
static int parse_exists(const char *expr, srch_filter *out, char *errbuf, size_t errlen)
{
    int neg = expr[0] == '!';
    size_t n = strlen(expr) - (size_t)neg - 1;
    if (n == 0 || strcspn(expr + neg, "<>=!?") != n)
        return util_errf(errbuf, errlen, SRCH_INVAL, "filter '%s': expected KEY? or !KEY?", expr);
    memset(out, 0, sizeof *out);
    if (!(out->key = strndup(expr + neg, n)))
        return util_errf(errbuf, errlen, SRCH_NOMEM, "out of memory");
    out->f.key = out->key;
    out->f.op = neg ? STORE_OP_MISSING : STORE_OP_EXISTS;
    return SRCH_OK;
}

/* The values of KEY=A|B|C. */
static int split_any(srch_filter *f)
{
    size_t n = 1;
    for (const char *p = f->text; *p; p++)
        n += *p == '|';
    if (!(f->any = calloc(n, sizeof *f->any)))
        return -1;
    const char *p = f->text;
    for (size_t i = 0; i < n; i++) {
        size_t len = strcspn(p, "|");
        if (!(f->any[i] = strndup(p, len)))
            return -1;
        f->nany++;
        p += len + (p[len] == '|');
    }
    f->f.any = (const char *const *)f->any;
    f->f.nany = f->nany;
    return 0;
}

int srch_filter_parse(const char *expr, srch_filter *out, char *errbuf, size_t errlen)
{
    size_t el = strlen(expr);
    if (el && expr[el - 1] == '?')
        return parse_exists(expr, out, errbuf, errlen);
    static const struct {
        const char *tok;
        store_op op;
    } ops[] = {{">=", STORE_OP_GE}, {"<=", STORE_OP_LE}, {"!=", STORE_OP_NE},
               {">", STORE_OP_GT},  {"<", STORE_OP_LT},  {"=", STORE_OP_EQ}};
    /* The first operator character splits key and value. */
    size_t klen = strcspn(expr, "<>=!");
    if (!expr[klen])
        return util_errf(errbuf, errlen, SRCH_INVAL,
                         "filter '%s': expected KEY=VALUE, KEY!=VALUE, KEY=A|B, KEY>=N, KEY>N, "
                         "KEY<=N, KEY<N, KEY? or !KEY?", expr);
    if (klen == 0)
        return util_errf(errbuf, errlen, SRCH_INVAL, "filter '%s': missing key before the operator",
                   expr);
    store_op op = STORE_OP_EQ;
    size_t olen = 0;
    for (size_t i = 0; i < sizeof ops / sizeof *ops; i++)
        if (strncmp(expr + klen, ops[i].tok, strlen(ops[i].tok)) == 0) {
            op = ops[i].op;
            olen = strlen(ops[i].tok);
            break;
        }
    if (!olen)
        return util_errf(errbuf, errlen, SRCH_INVAL, "filter '%s': unknown operator", expr);
    srch_filter f;
    memset(&f, 0, sizeof f);
    f.key = strndup(expr, klen);
    f.text = strdup(expr + klen + olen);
    if (!f.key || !f.text) {
        srch_filter_clear(&f);
        return util_errf(errbuf, errlen, SRCH_NOMEM, "out of memory");
    }
    f.f.key = f.key;
    f.f.op = op;
    f.f.text = f.text;
    f.f.num_valid = parse_number(f.text, &f.f.num) == 0;
    if (op != STORE_OP_EQ && op != STORE_OP_NE && !f.f.num_valid) {
        srch_filter_clear(&f);
        return util_errf(errbuf, errlen, SRCH_INVAL, "filter '%s': a range needs a finite number", expr);
    }
    if (op == STORE_OP_EQ && strchr(f.text, '|')) {
        f.f.op = STORE_OP_ANY;
        if (split_any(&f)) {
            srch_filter_clear(&f);
            return util_errf(errbuf, errlen, SRCH_NOMEM, "out of memory");
        }
    }
    *out = f;
    return SRCH_OK;
}

void srch_filter_clear(srch_filter *f)
{
    if (!f)
        return;
    free(f->key);
    free(f->text);
    for (size_t i = 0; i < f->nany; i++)
        free(f->any[i]);
    free(f->any);
    memset(f, 0, sizeof *f);
}

int srch_filters_check(store *s, const srch_filter *f, size_t n, char *errbuf, size_t errlen)
{
    for (size_t i = 0; i < n; i++) {
        if (f[i].f.op == STORE_OP_EXISTS || f[i].f.op == STORE_OP_MISSING)
            continue;
        int e = store_payload_key_exists(s, f[i].f.key);
        if (e < 0)
            return util_errf(errbuf, errlen, SRCH_STORE, "%s", store_errmsg(s));
        if (e == 0)
            return util_errf(errbuf, errlen, SRCH_INVAL,
                             "filter on '%s': no item has this payload key (use '%s?' to ask "
                             "whether any has)", f[i].f.key, f[i].f.key);
    }
    return SRCH_OK;
}

/* ---- exact scan over ids ------------------------------------------------------- */

/* Whether a result is the query item (in the slice space: any of its slices). */
static int excluded(store_space sp, int64_t id, int64_t exclude_id)
{
    if (exclude_id < 0)
        return 0;
    if (sp == STORE_SPACE_SLICE)
        return STORE_SLICE_ITEM(id) == (uint64_t)exclude_id;
    return id == exclude_id;
}

int srch_exact_ids(store *s, store_space sp, const float *q, const uint64_t *ids, size_t n,
                   size_t k, int64_t exclude_id, srch_hit *hits, size_t *nhits, char *errbuf,
                   size_t errlen)
{
    uint32_t dim = store_dim(s);
    float *v = malloc(dim * sizeof *v);
    float *sc = malloc(k * sizeof *sc);
    int64_t *id = malloc(k * sizeof *id);
    if (!v || !sc || !id) {
        free(v);
        free(sc);
        free(id);
        return util_errf(errbuf, errlen, SRCH_NOMEM, "out of memory");
    }
    idx_topk t;
    idx_topk_init(&t, k, sc, id);
    int rc = SRCH_OK;
    for (size_t i = 0; i < n; i++) {
        if (excluded(sp, (int64_t)ids[i], exclude_id))
            continue;
        int r = store_vector_get(s, sp, ids[i], v);
        if (r == STORE_NOTFOUND)
            continue; /* an item without a vector in this space */
        if (r) {
            rc = util_errf(errbuf, errlen, SRCH_STORE, "%s", store_errmsg(s));
            break;
        }
        float dot = 0;
        for (uint32_t d = 0; d < dim; d++)
            dot += q[d] * v[d];
        idx_topk_push(&t, dot, (int64_t)ids[i]);
    }
    size_t m = idx_topk_finish(&t);
    if (!rc) {
        for (size_t i = 0; i < m; i++)
            hits[i] = (srch_hit){.id = id[i], .score = sc[i]};
        *nhits = m;
    }
    free(v);
    free(sc);
    free(id);
    return rc;
}

/* ---- search ---------------------------------------------------------------- */

int srch_search(store *s, idx_space *x, const srch_query *q, srch_hit *hits, size_t *nhits,
                srch_stats *st, char *errbuf, size_t errlen)
{
    srch_stats dummy;
    if (!st)
        st = &dummy;
    memset(st, 0, sizeof *st);
    if (q->k < 1 || q->k > SRCH_K_MAX)
        return util_errf(errbuf, errlen, SRCH_INVAL, "k must be between 1 and %d, not %zu", SRCH_K_MAX,
                   q->k);
    idx_info info;
    idx_space_info(x, &info);
    store_space sp = idx_space_which(x);
    uint64_t *allowed = NULL;
    size_t nallowed = 0;
    int rc = SRCH_OK;
    if (q->nfilters) {
        store_filter *fs = malloc(q->nfilters * sizeof *fs);
        if (!fs)
            return util_errf(errbuf, errlen, SRCH_NOMEM, "out of memory");
        for (size_t i = 0; i < q->nfilters; i++)
            fs[i] = q->filters[i].f;
        int r = srch_filters_check(s, q->filters, q->nfilters, errbuf, errlen);
        if (r) {
            free(fs);
            return r;
        }
        r = store_filter_ids(s, fs, q->nfilters, &allowed, &nallowed);
        free(fs);
        if (r)
            return util_errf(errbuf, errlen, SRCH_STORE, "%s", store_errmsg(s));
        /* The slice space is keyed by slice labels: the items' slices. */
        if (sp == STORE_SPACE_SLICE) {
            uint64_t *labels = NULL;
            size_t nl = 0;
            r = store_slice_labels(s, allowed, nallowed, &labels, &nl);
            free(allowed);
            if (r)
                return util_errf(errbuf, errlen, SRCH_STORE, "%s", store_errmsg(s));
            allowed = labels;
            nallowed = nl;
        }
        st->matching = nallowed;
        /* A small matching set is scanned exactly: cheaper than a selector
         * pass over a large index, and exact whatever the index kind. */
        size_t emax = q->exact_max ? q->exact_max : SRCH_EXACT_MAX;
        if (nallowed <= emax || (info.exact && 4 * nallowed < info.ntotal)) {
            st->plan = "exact-scan";
            st->exact = 1;
            rc = srch_exact_ids(s, sp, q->vec, allowed, nallowed, q->k,
                                q->exclude_id, hits, nhits, errbuf, errlen);
            free(allowed);
            return rc;
        }
    }
    /* One extra result in case the query item itself comes back (in the
     * slice space, one per slice of it). */
    size_t kk = q->k + (q->exclude_id >= 0);
    if (q->exclude_id >= 0 && sp == STORE_SPACE_SLICE) {
        size_t nsl = 0;
        if (store_slices_get(s, (uint64_t)q->exclude_id, NULL, NULL, 0, &nsl))
            return util_errf(errbuf, errlen, SRCH_STORE, "%s", store_errmsg(s));
        kk = q->k + nsl;
    }
    float *sc = malloc(kk * sizeof *sc);
    int64_t *id = malloc(kk * sizeof *id);
    if (!sc || !id) {
        rc = util_errf(errbuf, errlen, SRCH_NOMEM, "out of memory");
        goto out;
    }
    int r = idx_space_search(x, q->vec, 1, kk, allowed, nallowed, sc, id);
    if (r) {
        rc = util_errf(errbuf, errlen, SRCH_INDEX, "%s", idx_space_errmsg(x));
        goto out;
    }
    st->plan = allowed ? "index+selector" : "index";
    st->exact = info.exact;
    size_t m = 0;
    for (size_t i = 0; i < kk && m < q->k; i++) {
        if (id[i] < 0 || excluded(sp, id[i], q->exclude_id))
            continue;
        hits[m++] = (srch_hit){.id = id[i], .score = sc[i]};
    }
    *nhits = m;
    /* An ANN index can miss matching items under a selector (HNSW especially);
     * when it came back short, scan the matching items exactly. */
    if (allowed && m < q->k && m < nallowed) {
        st->plan = "exact-scan";
        st->exact = 1;
        rc = srch_exact_ids(s, sp, q->vec, allowed, nallowed, q->k, q->exclude_id,
                            hits, nhits, errbuf, errlen);
    }
out:
    free(sc);
    free(id);
    free(allowed);
    return rc;
}

/* ---- best slices --------------------------------------------------------------- */

int srch_best_slices(store *s, uint64_t id, const float *q, size_t k, srch_slice *out, size_t *n,
                     char *errbuf, size_t errlen)
{
    uint32_t dim = store_dim(s);
    size_t ns = 0;
    *n = 0;
    if (k == 0)
        return SRCH_OK;
    if (store_slices_get(s, id, NULL, NULL, 0, &ns))
        return util_errf(errbuf, errlen, SRCH_STORE, "%s", store_errmsg(s));
    if (ns == 0)
        return SRCH_OK;
    float *v = malloc(ns * dim * sizeof *v), *sc = malloc(k * sizeof *sc);
    uint32_t *zs = malloc(ns * sizeof *zs);
    int64_t *zi = malloc(k * sizeof *zi);
    int rc = SRCH_OK;
    if (!v || !sc || !zs || !zi) {
        rc = util_errf(errbuf, errlen, SRCH_NOMEM, "out of memory");
    } else if (store_slices_get(s, id, v, zs, ns, &ns)) {
        rc = util_errf(errbuf, errlen, SRCH_STORE, "%s", store_errmsg(s));
    } else {
        idx_topk t;
        idx_topk_init(&t, k, sc, zi);
        for (size_t i = 0; i < ns; i++) {
            float dot = 0;
            for (uint32_t d = 0; d < dim; d++)
                dot += q[d] * v[i * dim + d];
            idx_topk_push(&t, dot, (int64_t)zs[i]);
        }
        size_t m = idx_topk_finish(&t);
        for (size_t i = 0; i < m; i++)
            out[i] = (srch_slice){.z = (uint32_t)zi[i], .score = sc[i]};
        *n = m;
    }
    free(v);
    free(sc);
    free(zs);
    free(zi);
    return rc;
}
