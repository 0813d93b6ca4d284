/* searcher.h - query planning over one space: filters, exact fallback,
 * best slices (near-duplicate clustering is dedup/dedup.h).
 *
 *   srch_filter f;
 *   srch_filter_parse("modality=CT", &f, err, sizeof err);
 *   srch_query q = { .vec = v, .k = 10, .filters = &f, .nfilters = 1 };
 *   srch_hit hits[10]; size_t n;
 *   srch_search(s, x, &q, hits, &n, NULL, err, sizeof err);
 *
 * Filters on payload keys are resolved through the store's payload index to a
 * sorted id set, then applied inside the FAISS search through an ID selector.
 * When the matching set is small (or the index cannot honour it), the
 * searcher scans the matching vectors exactly instead, so a filtered query
 * returns the true top-k of the matching items whenever the index is exact or
 * the filter is selective.  Nothing is ever dropped after a top-k.
 */
#ifndef MEDSEM_SEARCHER_H
#define MEDSEM_SEARCHER_H

#include <stddef.h>
#include <stdint.h>

#include "indexer/indexer.h"
#include "store/store.h"

#define SRCH_ERRNO_MAP(XX)                                                    \
    XX(OK, "success")                                                         \
    XX(NOMEM, "out of memory")                                                \
    XX(INVAL, "invalid argument")                                             \
    XX(NOTFOUND, "not found")                                                 \
    XX(STORE, "store error")                                                  \
    XX(INDEX, "index error")

typedef enum {
#define SRCH__ENUM(name, msg) SRCH_##name,
    SRCH_ERRNO_MAP(SRCH__ENUM)
#undef SRCH__ENUM
    SRCH_NERR
} srch_errno;

const char *srch_strerror(int code);
const char *srch_errname(int code);

/* Filters matching at most this many items are answered by an exact scan. */
#define SRCH_EXACT_MAX 65536

/* Largest k a query may ask for. */
#define SRCH_K_MAX 10000

/* A parsed filter; owns its strings (srch_filter_clear frees them). */
typedef struct srch_filter {
    char *key;
    char *text;
    char **any;     /* STORE_OP_ANY: the values */
    size_t nany;
    store_filter f; /* points into key / text / any */
} srch_filter;

/* Parses KEY=VALUE, KEY!=VALUE, KEY=A|B|C (any of), KEY>=N, KEY>N, KEY<=N,
 * KEY<N, KEY? (the key exists) and !KEY? (it does not).  Range operators
 * need a finite number.  Errors quote the expression. */
int srch_filter_parse(const char *expr, srch_filter *out, char *errbuf, size_t errlen);
void srch_filter_clear(srch_filter *f);

/* Refuses filters on payload keys no item has (SRCH_INVAL naming the key),
 * but for KEY? and !KEY?, which ask exactly that: an unknown key is far
 * more often a typo than a question. */
int srch_filters_check(store *s, const srch_filter *f, size_t n, char *errbuf, size_t errlen);

typedef struct srch_hit {
    int64_t id;
    float score;
} srch_hit;

typedef struct srch_query {
    const float *vec; /* dim floats, L2-normalised */
    size_t k;         /* 1..SRCH_K_MAX */
    const srch_filter *filters;
    size_t nfilters;
    int64_t exclude_id; /* an id never to return (the query item); -1 = none */
    size_t exact_max;   /* filters matching at most this many items are scanned
                           exactly; 0 = SRCH_EXACT_MAX */
} srch_query;

typedef struct srch_stats {
    const char *plan;  /* "index", "index+selector", "exact-scan" */
    size_t matching;   /* items matching the filters (0 without filters) */
    int exact;         /* the results are the true top-k */
} srch_stats;

/* Fills up to q->k hits, best first; *nhits gets how many. st may be NULL. */
int srch_search(store *s, idx_space *x, const srch_query *q, srch_hit *hits, size_t *nhits,
                srch_stats *st, char *errbuf, size_t errlen);

/* Exact top-k over the given ids' vectors, read from the store (ids sorted,
 * missing ones skipped).  The reference the other plans are tested against. */
int srch_exact_ids(store *s, store_space sp, const float *q, const uint64_t *ids, size_t n,
                   size_t k, int64_t exclude_id, srch_hit *hits, size_t *nhits, char *errbuf,
                   size_t errlen);

/* ---- slices ----------------------------------------------------------------- */

/* In the slice space hits are slice labels (STORE_SLICE_LABEL: item id and
 * z); filters select items and so all their slices, and exclude_id leaves out
 * every slice of that item. */

typedef struct srch_slice {
    uint32_t z;  /* axial slice index, 0 = the most inferior */
    float score; /* cosine similarity to the query */
} srch_slice;

/* The k slices of item id that best match the query q (L2-normalised, dim
 * floats), best first (ties to the lower z): UniMedI's slice ranking at
 * query time, over the slice vectors stored with the volume.  *n gets how
 * many (0 when the item has no slices). */
int srch_best_slices(store *s, uint64_t id, const float *q, size_t k, srch_slice *out, size_t *n,
                     char *errbuf, size_t errlen);

#endif
