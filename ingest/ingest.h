/* ingest.h - manifests of images, volumes and reports into a database.
 *
 *   ingest_plan *pl;  ingest_stats st;  char err[512];
 *   ingest_opts o = {.workers = 2};
 *   if (ingest_plan_read("data/train.jsonl", &o, &pl, err, sizeof err)) puts(err);
 *   if (ingest_run(pl, pipeline, db, &o, &st, err, sizeof err)) puts(err);
 *   ingest_plan_free(pl);
 *
 * A manifest is JSONL, one item per line, as `medsem synth` writes it: "file"
 * (relative to the manifest's folder), "kind" (volume, image or report),
 * "modality", "report" and any payload keys; a line without a file is a
 * report-only item.  Workers read, preprocess and encode items in batches in
 * parallel; the calling thread commits them in manifest order, many items per
 * store transaction, and keeps the indexes of the four spaces in step.  A
 * volume gets a volume vector, one slice vector per axial slice (when the
 * model can encode them) and a report vector; an image an image vector and a
 * report vector; a report a report vector.  Items are identified by a content
 * hash (the file's bytes and the manifest line), so a run that was killed is
 * finished by running it again, with nothing lost and nothing twice.
 * See docs/ingest.md.
 */
#ifndef MEDSEM_INGEST_H
#define MEDSEM_INGEST_H

#include <stddef.h>
#include <stdint.h>

#include "encoder/encoder.h"
#include "indexer/indexer.h"
#include "store/store.h"

#define INGEST_ERRNO_MAP(XX)                                                  \
    XX(OK, "success")                                                         \
    XX(NOMEM, "out of memory")                                                \
    XX(IO, "input/output error")                                              \
    XX(INVAL, "invalid argument")                                             \
    XX(INPUT, "bad manifest item")                                            \
    XX(MODEL, "the model does not fit the database")                          \
    XX(ENCODE, "encoder error")                                               \
    XX(STORE, "store error")                                                  \
    XX(INDEX, "index error")

typedef enum {
#define INGEST__ENUM(name, msg) INGEST_##name,
    INGEST_ERRNO_MAP(INGEST__ENUM)
#undef INGEST__ENUM
    INGEST_NERR
} ingest_errno;

const char *ingest_strerror(int code);
const char *ingest_errname(int code);

typedef struct ingest_opts {
    int workers;       /* encoding threads; <= 0: 1 */
    int batch;         /* inputs per forward pass; <= 0: 8 */
    size_t commit;     /* items per store transaction; 0: 256 */
    size_t save_every; /* write index snapshots every N transactions; 0: at the end only */
    int strict;        /* stop at the first bad item */
    idx_opts index;    /* index kind and tuning for every space */
    /* A bad item, skipped (or, with strict, the one that stops the run):
     * msg is "FILE:LINE: reason".  Called from the thread that called
     * ingest_plan_read or ingest_run, in manifest order within each.  May be
     * NULL. */
    void (*on_bad)(void *ctx, size_t line, const char *msg);
    /* After each commit: items finished (committed, found present or bad)
     * of total.  May be NULL. */
    void (*on_progress)(void *ctx, size_t done, size_t total);
    void *ctx;
    /* Encode on the calling thread with this worker (made for at least
     * `batch` inputs) instead of starting `workers` threads: for callers
     * with a pool of their own (the HTTP server).  Not freed.  May be NULL. */
    enc_worker *worker;
    /* Leave the indexes alone (no open, sync or snapshot): for callers that
     * keep their own idx_space handles and bring them up to date after the
     * run (idx_space_sync), as the HTTP server does under its locks. */
    int no_index;
    /* Record each new image's and volume's shape and spacing (in RAS, as
     * the encoder reads it) in its item, for previews and for best slices
     * at the volume's own z: taken from the file the encoder has just read
     * (no second read).  Off: the item has none (ndim 0).  medsem ingest
     * and the server set it. */
    int read_geometry;
} ingest_opts;

typedef struct ingest_plan ingest_plan;

/* Reads the whole manifest and checks each line: a JSON object, a known
 * kind, a file that exists (for volumes and images), a non-empty report
 * where one is given (and for report items).  Bad lines go to o->on_bad and
 * are skipped; with o->strict the first one fails the call with
 * INGEST_INPUT (errbuf names the line).  INGEST_IO when the manifest cannot
 * be read.  *out owns everything until ingest_plan_free. */
int ingest_plan_read(const char *manifest, const ingest_opts *o, ingest_plan **out,
                     char *errbuf, size_t errlen);
void ingest_plan_free(ingest_plan *pl); /* accepts NULL */
size_t ingest_plan_items(const ingest_plan *pl); /* good items */
size_t ingest_plan_bad(const ingest_plan *pl);   /* bad lines */
size_t ingest_plan_lines(const ingest_plan *pl); /* non-empty lines */

typedef struct ingest_stats {
    size_t items;    /* items of the plan */
    size_t added;    /* new items committed */
    size_t existing; /* items already in the database (same content hash) */
    size_t bad;      /* bad lines of the plan plus items that failed to read or encode */
    size_t vectors[STORE_NSPACES]; /* vectors added per space */
    int slices;      /* axial slices per volume (0: the model cannot encode slices) */
    double seconds;  /* wall time of the run */
} ingest_stats;

/* Encodes and commits the plan's items into s (whose dimension and model
 * must be p's: INGEST_MODEL otherwise).  s NULL: encode only, for
 * benchmarks (nothing is hashed or written).  Items whose content hash s
 * already holds are not encoded again.  A bad file is reported through
 * o->on_bad and skipped (with o->strict the run stops with INGEST_INPUT
 * after committing the items before it).  On any failure, everything
 * committed stays committed and consistent; running again resumes.  st may
 * be NULL; it is filled on failure too. */
int ingest_run(const ingest_plan *pl, const enc_pipeline *p, store *s, const ingest_opts *o,
               ingest_stats *st, char *errbuf, size_t errlen);

/* The content hash an ingested item gets: SHA-256 over "medsem-ingest-2",
 * the kind byte, the data hash (the file's bytes, or the report's text for
 * a report item) and the item's identity: its manifest line (a JSON object)
 * without the keys "file", "kind" and "dataset", keys sorted at every level,
 * printed without spaces.  So the same bytes with the same metadata are the
 * same item wherever the file lies, whichever manifest named it, and
 * whether it came from a manifest or from ingest_items (the HTTP server).
 * A line that is not a JSON object is hashed as it is.  INGEST_NOMEM or
 * INGEST_OK. */
int ingest_content_hash(store_kind kind, const uint8_t data_hash[STORE_HASH_SIZE],
                        const char *line_json, uint8_t out[STORE_HASH_SIZE]);

/* ---- items in memory ------------------------------------------------------
 * The manifest path for callers that hold their items as data (the HTTP
 * server): the same checks, hashes, vectors (slices included), commits and
 * bad-item reports as a manifest line that names the same file. */
typedef struct ingest_item {
    store_kind kind;          /* VOLUME, IMAGE or REPORT */
    const char *path;         /* the volume's or image's file (read, hashed, encoded and
                                 recorded as the item's source); NULL for a report */
    const char *modality;     /* may be NULL */
    const char *report;       /* may be NULL; a report item needs a non-empty one */
    const char *dataset;      /* the item's dataset (not part of its identity); may be NULL */
    const char *payload_json; /* a JSON object of further keys, or NULL */
} ingest_item;

enum { INGEST_ITEM_ADDED = 0, INGEST_ITEM_EXISTED, INGEST_ITEM_BAD };

typedef struct ingest_result {
    uint64_t id;     /* the item's id (0 when bad) */
    int status;      /* INGEST_ITEM_* */
    char error[512]; /* a bad item's "NAME[i]: reason"; "" otherwise */
} ingest_result;

/* Ingests items[0..n) like a manifest whose line i is the item's payload
 * with "kind", "modality" and "report" set from its fields (that object is
 * the stored payload and, through ingest_content_hash, the identity).
 * name labels the items in messages ("items" gives "items[3]: reason").
 * res[i] gets each item's id and status (res is written even on failure:
 * items not reached are BAD with an empty error).  A bad item is reported
 * in res, through o->on_bad (line = its index) and skipped; with o->strict
 * the first one stops the run (INGEST_INPUT, after committing the items
 * before it).  s must not be NULL.  Otherwise as ingest_run. */
int ingest_items(const ingest_item *items, size_t n, const char *name, const enc_pipeline *p,
                 store *s, const ingest_opts *o, ingest_result *res, ingest_stats *st,
                 char *errbuf, size_t errlen);

#endif
