/* indexer.h - FAISS indexes kept in step with the store, and vector import.
 *
 *   idx_space *x;
 *   char err[512];
 *   if (idx_space_open(s, STORE_SPACE_IMAGE, NULL, &x, err, sizeof err)) puts(err);
 *   idx_space_search(x, q, 1, 10, NULL, 0, scores, ids);
 *   idx_space_free(x);
 *
 * One index per space: inner product over L2-normalised vectors, ids = item
 * ids (IndexIDMap2 around the FAISS index).  The kind is chosen from the size
 * (exact Flat while small, IVF when large) or forced with a FAISS factory
 * string; ANN parameters (nprobe, efSearch) are tuned to a target recall@10
 * measured against exact search on a held-out sample and stored with the
 * snapshot.  The store's `vectors` are the source of truth: a snapshot that is
 * missing, fails its checksum or predates a deletion is rebuilt from them; one
 * that is merely older is brought up to date.
 *
 * Threads: idx_space_search may run concurrently from many threads; sync,
 * add, save and free need exclusive access.
 */
#ifndef MEDSEM_INDEXER_H
#define MEDSEM_INDEXER_H

#include <stddef.h>
#include <stdint.h>

#include "store/store.h"

#define IDX_ERRNO_MAP(XX)                                                     \
    XX(OK, "success")                                                         \
    XX(NOMEM, "out of memory")                                                \
    XX(IO, "input/output error")                                              \
    XX(INVAL, "invalid argument")                                             \
    XX(FORMAT, "malformed input file")                                        \
    XX(STORE, "store error")                                                  \
    XX(FAISS, "FAISS error")                                                  \
    XX(EMPTY, "no vectors")

typedef enum {
#define IDX__ENUM(name, msg) IDX_##name,
    IDX_ERRNO_MAP(IDX__ENUM)
#undef IDX__ENUM
    IDX_NERR
} idx_errno;

const char *idx_strerror(int code);
const char *idx_errname(int code);

/* ---- .npy matrices ------------------------------------------------------- */

typedef struct idx_npy idx_npy;

/* Maps a 2-D C-order .npy file (format 1.0, 2.0 or 3.0) of float32 or float16
 * (either byte order).  Everything is checked against the file: magic,
 * header, dtype, fortran_order, shape, data size.  Errors name the file. */
int idx_npy_open(const char *path, idx_npy **out, char *errbuf, size_t errlen);
void idx_npy_close(idx_npy *m);
size_t idx_npy_rows(const idx_npy *m);
size_t idx_npy_cols(const idx_npy *m);
/* "float32" or "float16". */
const char *idx_npy_dtype(const idx_npy *m);
/* Converts row i to native float32 in out (cols floats). */
void idx_npy_row(const idx_npy *m, size_t i, float *out);
/* Writes a float32 2-D .npy (format 1.0); atomically (temp file + rename). */
int idx_npy_write(const char *path, const float *x, size_t rows, size_t cols, char *errbuf,
                  size_t errlen);

/* ---- vector maths ---------------------------------------------------------- */

/* Scales x (n floats) to unit L2 norm.  Returns -1 when the norm is zero or
 * not finite (x untouched), 0 otherwise. */
int idx_l2_normalize(float *x, size_t n);
/* Index of the first non-finite value, or n when all are finite. */
size_t idx_first_nonfinite(const float *x, size_t n);

/* Keeps the k best (score, id) pairs seen: a min-heap over caller memory.
 * Ties on score prefer the lower id, so results are deterministic. */
typedef struct idx_topk {
    size_t k, n;
    float *scores;
    int64_t *ids;
} idx_topk;
void idx_topk_init(idx_topk *t, size_t k, float *scores, int64_t *ids);
void idx_topk_push(idx_topk *t, float score, int64_t id);
/* Sorts best first and pads the tail with id -1, score -INFINITY; returns n. */
size_t idx_topk_finish(idx_topk *t);

/* ---- the per-space index ------------------------------------------------- */

typedef struct idx_space idx_space;

typedef struct idx_opts {
    const char *factory;  /* FAISS factory string, e.g. "HNSW32,Flat"; NULL = auto */
    double target_recall; /* recall@10 the ANN parameters are tuned to; 0 = 0.95 */
    uint64_t seed;        /* sampling seed for training and tuning; 0 = fixed default */
} idx_opts;

typedef struct idx_info {
    char factory[64];     /* without the IDMap2 wrapper */
    int exact;            /* Flat: results are exact */
    int forced;           /* kind chosen by the user, not by size */
    uint64_t ntotal;
    uint64_t gen;         /* store generation the index covers */
    int nprobe;           /* 0 when not IVF */
    int ef_search;        /* 0 when not HNSW */
    double recall;        /* measured recall@10 at those parameters (1 when exact) */
    const char *loaded;   /* how it came to be: "snapshot", "rebuilt: <why>", "new" */
    uint64_t removed;     /* deleted items taken out in place since it was opened */
    uint64_t rebuilds;    /* rebuilds from the store's vectors since it was opened */
} idx_info;

/* Checks that FAISS can make an index of this factory string and dimension
 * (NULL = auto is always fine). */
int idx_factory_check(const char *factory, uint32_t dim, char *errbuf, size_t errlen);

/* Loads the snapshot of sp (or builds one from the store's vectors) and
 * brings it up to date.  o may be NULL. */
int idx_space_open(store *s, store_space sp, const idx_opts *o, idx_space **out, char *errbuf,
                   size_t errlen);
void idx_space_free(idx_space *x);
const char *idx_space_errmsg(const idx_space *x);
void idx_space_info(const idx_space *x, idx_info *info);
store_space idx_space_which(const idx_space *x);

/* An index over vectors held in memory, with no store behind it (tests,
 * benchmarks): sync and save fail with IDX_INVAL.  Vectors must be
 * normalised; ids are any non-negative int64. */
int idx_space_build(const float *vecs, const int64_t *ids, size_t n, uint32_t dim,
                    const idx_opts *o, idx_space **out, char *errbuf, size_t errlen);

/* Adds vectors committed after the index's generation (cheap when none). */
int idx_space_sync(idx_space *x);

/* Re-chooses the kind when auto and the size has outgrown it (rebuilding and
 * retraining from the store), re-tunes when the size has grown by half since
 * the last tuning, and writes the snapshot. */
int idx_space_save(idx_space *x);

/* k best of nq queries (normalised, dim floats each).  allowed (sorted
 * ascending, n_allowed ids) restricts the search to those ids when non-NULL;
 * missing results have id -1 and score -INFINITY.  scores and ids hold nq*k. */
int idx_space_search(idx_space *x, const float *q, size_t nq, size_t k, const uint64_t *allowed,
                     size_t n_allowed, float *scores, int64_t *ids);

/* The ids the index holds, sorted ascending (*ids malloc'd; free() it). */
int idx_space_ids(idx_space *x, int64_t **ids, size_t *n);

/* Every item whose similarity to each query is >= min_score.  lims gets
 * nq + 1 offsets into *ids / *scores (malloc'd; free() both). */
int idx_space_range(idx_space *x, const float *q, size_t nq, float min_score, size_t *lims,
                    int64_t **ids, float **scores);

/* ---- import of user embeddings -------------------------------------------- */

typedef struct idx_import idx_import;

typedef struct idx_import_opts {
    const char *vectors_path; /* .npy, float32/float16, 2-D */
    const char *meta_path;    /* JSONL, one object per row */
    store_space space;
    size_t batch;             /* items per transaction; 0 = 1024 */
    size_t save_every;        /* write the index snapshot every N batches; 0 = at the end only */
    idx_opts index;
    /* Called after each committed transaction with the running totals; ids of
     * that transaction's rows.  May be NULL. */
    void (*on_commit)(void *ctx, size_t done, size_t total, const uint64_t *ids, size_t n);
    void *ctx;
} idx_import_opts;

typedef struct idx_import_stats {
    size_t rows;
    size_t added;
    size_t existing;
    idx_info index; /* the space's index after the import (loaded = NULL) */
} idx_import_stats;

/* Reads and checks the whole input before anything is written: the .npy
 * (header, size), the JSONL (one object per line, line count = rows), every
 * value finite and every row of non-zero norm.  Errors name the file and the
 * line or row.  *out keeps both files open for idx_import_run. */
int idx_import_prepare(const idx_import_opts *o, idx_import **out, char *errbuf, size_t errlen);
uint32_t idx_import_dim(const idx_import *im);
size_t idx_import_rows(const idx_import *im);
/* Writes the rows in transactions of o->batch, skipping rows already present
 * (same content hash), keeps the space's index in step and saves it. */
int idx_import_run(idx_import *im, store *s, idx_import_stats *st, char *errbuf, size_t errlen);
void idx_import_free(idx_import *im);

#endif
