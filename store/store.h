/* store.h - medsem's LMDB store: items, vectors, index snapshots, hashes.
 *
 *   store *s;
 *   store_opts o = { .create = 1, .dim = 512, .model_id = "imported" };
 *   char err[512];
 *   if (store_open("db", &o, &s, err, sizeof err) != STORE_OK) puts(err);
 *   ... store_put_batch(s, puts, n, ids, existed); ... store_close(s);
 *
 * One LMDB environment per database directory, with the named databases
 * meta, items, vectors, slices, hashes, datahash, payload, index and fprints (see
 * docs/store.md for the byte layouts).  Every write function is one
 * transaction: it either lands whole or not at all, and MDB_MAP_FULL grows
 * the map and retries the transaction.  Functions return a store_errno; the
 * handle keeps a one-line message for the last failure (store_errmsg).
 *
 * Threads: a store handle may be shared by threads for reading; writes are
 * serialised by LMDB.  Processes may share a database directory.
 */
#ifndef MEDSEM_STORE_H
#define MEDSEM_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "util/util.h"

#define STORE_SCHEMA_VERSION 1
#define STORE_HASH_SIZE 32 /* SHA-256 */
#define STORE_MODEL_ID_MAX 128
#define STORE_PARAMS_MAX 256

/* X-macro: name, message.  Generates the enum, store_strerror, store_errname. */
#define STORE_ERRNO_MAP(XX)                                                   \
    XX(OK, "success")                                                         \
    XX(NOMEM, "out of memory")                                                \
    XX(IO, "input/output error")                                              \
    XX(INVAL, "invalid argument")                                             \
    XX(NOTFOUND, "not found")                                                 \
    XX(NODB, "no medsem database in this directory")                          \
    XX(FOREIGN, "directory holds something that is not a medsem database")   \
    XX(SCHEMA, "unsupported schema version")                                  \
    XX(DIM, "vector dimension does not match the database")                   \
    XX(MODEL, "model does not match the database")                            \
    XX(CORRUPT, "corrupted record")                                           \
    XX(CHECKSUM, "checksum mismatch")                                         \
    XX(READONLY, "database opened read-only")                                 \
    XX(LMDB, "LMDB error")                                                    \
    XX(FULL, "disk full")

typedef enum {
#define STORE__ENUM(name, msg) STORE_##name,
    STORE_ERRNO_MAP(STORE__ENUM)
#undef STORE__ENUM
    STORE_NERR
} store_errno;

/* Static strings; never NULL (unknown codes give "unknown error"). */
const char *store_strerror(int code);
const char *store_errname(int code);

typedef enum {
    STORE_SPACE_IMAGE = 0,  /* 2D radiographs */
    STORE_SPACE_VOLUME = 1, /* 3D CT/MR volumes */
    STORE_SPACE_REPORT = 2, /* report text */
    STORE_SPACE_SLICE = 3,  /* axial slices of volumes (keyed by volume id, z) */
    STORE_NSPACES = 4
} store_space;

/* The slice space holds one vector per axial slice z of a volume item, in
 * the `slices` database keyed by (item id, z).  Its index, scans and
 * store_vector_get name a slice by one label: (item id << 12) | z, so z is
 * below 4096 and an item with slices has an id below 2^51 (labels fit in
 * FAISS's int64 ids).  A single vector put in the slice space (import) is
 * slice 0 of its item. */
#define STORE_SLICE_BITS 12
#define STORE_SLICE_MAX (1u << STORE_SLICE_BITS)
#define STORE_SLICE_ID_LIMIT ((uint64_t)1 << (63 - STORE_SLICE_BITS))
#define STORE_SLICE_LABEL(id, z) (((uint64_t)(id) << STORE_SLICE_BITS) | (uint64_t)(z))
#define STORE_SLICE_ITEM(label) ((uint64_t)(label) >> STORE_SLICE_BITS)
#define STORE_SLICE_Z(label) ((uint32_t)((uint64_t)(label) & (STORE_SLICE_MAX - 1)))

/* "image", "volume", "report", "slice"; NULL for an out-of-range value. */
const char *store_space_name(store_space sp);
/* Returns 0 and sets *out, or -1 for an unknown name. */
int store_space_parse(const char *name, store_space *out);

typedef enum {
    STORE_KIND_VECTOR = 0, /* imported embedding, no source data */
    STORE_KIND_IMAGE = 1,
    STORE_KIND_VOLUME = 2,
    STORE_KIND_REPORT = 3,
    STORE_NKINDS = 4
} store_kind;

const char *store_kind_name(store_kind k);
int store_kind_parse(const char *name, store_kind *out);

typedef struct store store;

typedef struct store_opts {
    int create;           /* create the directory and database if missing */
    int readonly;         /* open with MDB_RDONLY; writes fail STORE_READONLY */
    uint32_t dim;         /* expected dimension; 0 = accept what is there */
    const char *model_id; /* expected model id; NULL = accept what is there */
    size_t map_size;      /* initial map size in bytes; 0 = default (256 MiB) */
} store_opts;

/* Opens (or with o->create, creates) the database in dir.  A new database
 * takes o->dim and o->model_id (both required to create one).  An existing
 * one is refused with STORE_DIM / STORE_MODEL when they differ from a
 * non-zero / non-NULL expectation; the message names both values.  A
 * directory that exists but holds no data.mdb gives STORE_NODB (or, with
 * create, becomes a database if it is empty; STORE_FOREIGN if it holds other
 * files), a data.mdb without medsem's meta gives STORE_FOREIGN.
 * On failure *out is untouched and errbuf (may be NULL) gets a message
 * naming the directory. */
int store_open(const char *dir, const store_opts *o, store **out, char *errbuf, size_t errlen);
/* Accepts NULL. */
void store_close(store *s);

/* The last failure's one-line message; valid until the next call on s. */
const char *store_errmsg(const store *s);

uint32_t store_dim(const store *s);
/* Valid for the life of s. */
const char *store_model_id(const store *s);
const char *store_dir(const store *s);

/* An item record.  In records returned by the store, strings are owned by
 * the record (free with store_item_free); NULL when absent. */
typedef struct store_item {
    uint64_t id;
    store_kind kind;
    char *modality;     /* "CT", "MR", "CR", ... */
    char *source;       /* source file path as given */
    char *dataset;
    char *report;       /* report text */
    char *payload_json; /* user payload: a JSON object (the whole metadata line) */
    uint32_t ndim;      /* 0..4 */
    uint32_t shape[4];
    float spacing[4];
    uint8_t content_hash[STORE_HASH_SIZE]; /* identity: re-putting it is a no-op */
    uint8_t data_hash[STORE_HASH_SIZE];    /* the data alone, for exact dedup */
} store_item;

void store_item_free(store_item *it);

/* One more vector of an item: z is the slice index in the slice space
 * (< STORE_SLICE_MAX) and must be 0 in the others. */
typedef struct store_vec {
    store_space space;
    uint32_t z;
    const float *vector; /* dim floats, finite */
} store_vec;

/* One item to write with its vectors: the single vector (has_vector), and
 * nvecs more in vecs (may be NULL when 0).  An item has at most one vector
 * in the image, volume and report spaces and at most one per slice z. */
typedef struct store_put {
    const store_item *item; /* id ignored: the store assigns ids */
    int has_vector;
    store_space space;
    const float *vector; /* dim floats, finite */
    const store_vec *vecs;
    size_t nvecs;
    /* An acquisition fingerprint (dedup/dedup.h), or NULL: fp_dim
     * (1..STORE_FP_DIM_MAX) finite floats, with its own dimension, not the
     * database's; fp_tag names the method (opaque to the store). */
    const float *fingerprint;
    uint32_t fp_dim;
    uint32_t fp_tag;
} store_put;

#define STORE_FP_DIM_MAX 65536

/* Writes n items in one transaction.  An item whose content_hash is already
 * present is skipped: ids[i] gets the existing id and existed[i] = 1.  New
 * items get fresh ids (monotonic, never reused), existed[i] = 0.  ids and
 * existed may be NULL.  Vectors carry the space's new generation (each
 * space's gen grows once per batch that adds to it).
 * Payload keys are indexed for store_filter_ids. */
int store_put_batch(store *s, const store_put *puts, size_t n, uint64_t *ids, int *existed);

/* Deletes an item with its vectors, hashes and payload entries; bumps the
 * deletion generation of every space it had a vector in. STORE_NOTFOUND if absent. */
int store_item_delete(store *s, uint64_t id);

/* Copies the record into a new store_item (free with store_item_free). */
int store_item_get(store *s, uint64_t id, store_item **out);
int store_hash_lookup(store *s, const uint8_t hash[STORE_HASH_SIZE], uint64_t *id);

/* Copies the vector into out (dim floats).  STORE_NOTFOUND if absent.  In
 * the slice space id is a slice label (STORE_SLICE_LABEL). */
int store_vector_get(store *s, store_space sp, uint64_t id, float *out);

/* The slice vectors of item id, in z order: up to max of them into out
 * (max * dim floats) and their z into zs (max entries; may be NULL); *n gets
 * how many the item has (which may exceed max).  0 slices is not an error. */
int store_slices_get(store *s, uint64_t id, float *out, uint32_t *zs, size_t max, size_t *n);

/* The slice labels of the given items (ids sorted ascending), in label
 * order: *labels is malloc'd (free() it), *n may be 0. */
int store_slice_labels(store *s, const uint64_t *ids, size_t nids, uint64_t **labels, size_t *n);

/* Calls cb for every vector of sp whose generation is > after_gen, in id
 * order (label order in the slice space, cb's id being the label), with an
 * aligned copy of the vector (valid during the call).  cb returning non-zero
 * stops the scan and that value is returned. */
typedef int (*store_vector_cb)(void *ctx, uint64_t id, uint64_t gen, const float *vec);
int store_vectors_scan(store *s, store_space sp, uint64_t after_gen, store_vector_cb cb, void *ctx);

/* Generation of the last write that added vectors to sp, the deletion
 * generation of sp, and the number of vectors in sp, all read in one
 * snapshot. */
typedef struct store_space_stat {
    uint64_t gen;
    uint64_t del_gen;
    uint64_t count;
} store_space_stat;
int store_space_stat_get(store *s, store_space sp, store_space_stat *st);

/* The deletions of sp with generation in (after_gen, upto_gen], in
 * generation order: cb gets each generation and the id of the item it
 * removed (in the slice space: the item whose slices went, labels
 * STORE_SLICE_LABEL(id, 0..4095)).  cb's nonzero return stops the scan and
 * is returned.  STORE_NOTFOUND when the log cannot account for every
 * generation of the range (a database older than the log, or deletions
 * made before it existed): the caller then rebuilds from the vectors. */
typedef int (*store_deleted_cb)(void *ctx, uint64_t gen, uint64_t id);
int store_deleted_scan(store *s, store_space sp, uint64_t after_gen, uint64_t upto_gen,
                       store_deleted_cb cb, void *ctx);
/* Named text attributes of the database (in `meta` as "attr.NAME"), e.g.
 * the model directory an ingest used.  name: 1..64 characters of [a-z0-9_.];
 * value: up to 4096 bytes without NUL.  store_attr_get gives a malloc'd
 * copy (free() it), STORE_NOTFOUND when unset. */
int store_attr_put(store *s, const char *name, const char *value);
int store_attr_get(store *s, const char *name, char **value);

/* Total number of items. */
int store_item_count(store *s, uint64_t *n);

/* Calls cb for every item in id order (the record is valid during the call). */
typedef int (*store_item_cb)(void *ctx, const store_item *it);
int store_items_scan(store *s, store_item_cb cb, void *ctx);

/* Calls cb for every item's fingerprint, in id order, with an aligned copy
 * (valid during the call).  A database made before fingerprints has none
 * (not an error).  Runs inside a read transaction: cb must not write to s.
 * cb returning non-zero stops the scan and that value is returned. */
typedef int (*store_fprint_cb)(void *ctx, uint64_t id, uint32_t tag, uint32_t dim,
                               const float *fp);
int store_fingerprints_scan(store *s, store_fprint_cb cb, void *ctx);

/* Groups of items sharing a data hash (exact duplicates): cb gets each group
 * of n >= 2 ids, sorted. */
typedef int (*store_group_cb)(void *ctx, const uint64_t *ids, size_t n);
int store_datahash_groups(store *s, store_group_cb cb, void *ctx);

/* Payload filters.  The payload index holds every top-level scalar of an
 * item's payload (and every scalar element of a top-level array): strings
 * and booleans ("true"/"false") as text, numbers as numbers. */
typedef enum {
    STORE_OP_EQ = 0, /* text equal, or number equal when num_valid */
    STORE_OP_GE,
    STORE_OP_GT,
    STORE_OP_LE,
    STORE_OP_LT,
    STORE_OP_NE,      /* not EQ: every item the EQ does not match, those without the key too */
    STORE_OP_ANY,     /* EQ to any of any[0..nany) (each also as a number when it is one) */
    STORE_OP_EXISTS,  /* the item has the key (any indexed value) */
    STORE_OP_MISSING  /* the item has no indexed value under the key */
} store_op;

typedef struct store_filter {
    const char *key;
    store_op op;
    const char *text; /* for EQ and NE: the text to match (also matched as a string) */
    int num_valid;    /* text parses as a number; required for range ops */
    double num;
    const char *const *any; /* STORE_OP_ANY: the values */
    size_t nany;
} store_filter;

/* 1 when some item has an indexed payload value under key, 0 when none
 * does, or a negative store_errno. */
int store_payload_key_exists(store *s, const char *key);

/* Sorted ids of the items matching every filter (AND).  *ids is malloc'd,
 * free() it; *n may be 0. */
int store_filter_ids(store *s, const store_filter *f, size_t nf, uint64_t **ids, size_t *n);

/* Index snapshots.  A blob is stored in chunks with a CRC-32 over the whole
 * blob, the vector generation and deletion generation it covers, and up to
 * STORE_PARAMS_MAX bytes of indexer parameters (opaque to the store). */
typedef struct store_index_hdr {
    uint64_t gen;
    uint64_t del_gen;
    uint64_t count;
    uint32_t params_len;
    uint8_t params[STORE_PARAMS_MAX];
} store_index_hdr;

/* Replaces the snapshot of sp in one transaction. */
int store_index_put(store *s, store_space sp, const store_index_hdr *h, const void *blob, size_t len);
/* Reads and verifies the snapshot: STORE_NOTFOUND when none, STORE_CHECKSUM
 * when the chunks are missing, truncated or fail the CRC.  *blob is
 * malloc'd; free() it. */
int store_index_get(store *s, store_space sp, store_index_hdr *h, void **blob, size_t *len);
int store_index_drop(store *s, store_space sp);

/* Content hashes are SHA-256 (util/util.h: util_sha256, util_sha256_hex). */
_Static_assert(STORE_HASH_SIZE == UTIL_SHA256_SIZE, "store hashes are SHA-256 digests");

#endif
