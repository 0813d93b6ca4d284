/* dedup.h - near-duplicate detection: acquisition fingerprints of volumes
 * and radiographs (fingerprint.c), and clustering of items by fingerprint
 * or by embedding, with exact duplicates by content hash (cluster.c).
 *
 *   float fp[DEDUP_FP_VOLUME_DIM];  char err[512];
 *   if (dedup_fingerprint_volume("ct.nii.gz", ENC_MOD_CT, fp, err, sizeof err)) puts(err);
 *   // cosine(fp_a, fp_b) >= DEDUP_FP_THRESHOLD: the same anatomy scanned twice
 *   dedup_result *r;
 *   dedup_fingerprints(db, DEDUP_FP_TAG, DEDUP_FP_VOLUME_DIM, DEDUP_FP_THRESHOLD, &r, err, sizeof err);
 *
 * A fingerprint describes the anatomy of one image in physical space, not
 * its meaning: two acquisitions of one patient (new noise, contrast, a small
 * rotation or shift, another slice spacing, LPS or RAS storage) get nearly
 * the same vector, two patients with the same findings do not.  It is
 * deterministic, needs no model, and is L2-normalised and zero-mean, so the
 * cosine similarity of two fingerprints of one kind is their inner product.
 * Volume fingerprints are compared by their inner product; radiographs
 * (projections, cut by the frame at the top and bottom, shown through
 * unknown display curves) have no world frame and are compared by an
 * alignment search instead (dedup_fingerprint_image_score).  Compare only
 * fingerprints of the same tag (DEDUP_FP_TAG, DEDUP_FP_IMAGE_TAG).  See
 * docs/dedup.md for the method and the measured threshold.  Cosines of
 * fingerprints run close to 1 (every chest shares its gross shape), so
 * thresholds are like 0.997, not 0.9.
 *
 * Functions return a dedup_errno with a one-line message naming the file
 * or the failing part in errbuf (may be NULL); out-params are written only
 * on success.  The fingerprint functions keep no state and may run in
 * parallel; their codes are the readers' (imageio/imageio.h), passed
 * through by name and value (DEDUP_ERRNO_MAP begins with
 * IMG_ERRNO_MAP).  Ingest computes the fingerprints;
 * `medsem dedup` and POST /v1/dedup cluster them.
 */
#ifndef MEDSEM_DEDUP_H
#define MEDSEM_DEDUP_H

#include <stddef.h>
#include <stdint.h>

#include "encoder/encoder.h"
#include "imageio/imageio.h"
#include "indexer/indexer.h"
#include "store/store.h"

/* The readers' codes first (IMG_ERRNO_MAP, by name and value), then the
 * clustering's. */
#define DEDUP_ERRNO_MAP(XX)                                                   \
    IMG_ERRNO_MAP(XX)                                                         \
    XX(STORE, "store error")                                                  \
    XX(INDEX, "index error")

typedef enum {
#define DEDUP__ENUM(name, msg) DEDUP_##name,
    DEDUP_ERRNO_MAP(DEDUP__ENUM)
#undef DEDUP__ENUM
    DEDUP_NERR
} dedup_errno;

const char *dedup_strerror(int code);
const char *dedup_errname(int code);

/* ---- fingerprints (fingerprint.c) ------------------------------------------- */

/* Bumped whenever the method changes: fingerprints of another version are
 * not comparable. */
#define DEDUP_FP_VERSION 1

/* What the store keeps with a fingerprint to tell methods apart
 * ("FPv" + version). */
#define DEDUP_FP_TAG (0x76504600u + DEDUP_FP_VERSION)

/* Volumes: an 18 x 12 x 12 grid of 16 mm cells (288 x 192 x 192 mm) around
 * the centroid of the air inside the body (the lungs), rotated in the axial
 * plane to the lungs' principal axis. */
#define DEDUP_FP_VOL_NX 18
#define DEDUP_FP_VOL_NY 12
#define DEDUP_FP_VOL_NZ 12
#define DEDUP_FP_VOL_CELL 16.0f
#define DEDUP_FP_VOLUME_DIM (DEDUP_FP_VOL_NX * DEDUP_FP_VOL_NY * DEDUP_FP_VOL_NZ)

/* Default cosine threshold above which two fingerprints are near
 * duplicates (chosen on one synthetic seed, checked on another: see
 * docs/dedup.md). */
#define DEDUP_FP_THRESHOLD 0.9975f

/* The fingerprint of a volume file (NIfTI): DEDUP_FP_VOLUME_DIM floats. */
int dedup_fingerprint_volume(const char *path, enc_modality mod, float *out, char *errbuf,
                           size_t errlen);

/* The same from a volume already read by img_read_nifti (not
 * modified); path only names it in messages. */
int dedup_fingerprint_volume_vol(const img_vol *v, const char *path, enc_modality mod, float *out,
                               char *errbuf, size_t errlen);

/* Radiographs (and any 2D image): a 64 x 64 band-passed picture of the
 * intensity ranks, compared by alignment (dedup_fingerprint_image_score),
 * not by a plain inner product.  Versioned on its own. */
#define DEDUP_FP_IMAGE_VERSION 1
#define DEDUP_FP_IMAGE_TAG (0x69504600u + DEDUP_FP_IMAGE_VERSION) /* "FPi" + version */
#define DEDUP_FP_IMG_N 64
#define DEDUP_FP_IMAGE_DIM (DEDUP_FP_IMG_N * DEDUP_FP_IMG_N)

/* Default score above which two radiographs are rescans of one patient
 * (docs/dedup.md). */
#define DEDUP_FP_IMAGE_THRESHOLD 0.915f

/* The fingerprint of a 2D image file (.png, or a NIfTI with one axis of
 * length 1): DEDUP_FP_IMAGE_DIM floats. */
int dedup_fingerprint_image(const char *path, float *out, char *errbuf, size_t errlen);
/* The same from an image already read by img_read_2d (not modified). */
int dedup_fingerprint_image_vol(const img_vol *v, const char *path, float *out, char *errbuf,
                              size_t errlen);

/* The alignment score of two image fingerprints, in [-1, 1].  b is aligned
 * to a by the best normalised cross-correlation over rotations of +-8
 * degrees and shifts of +-8 rows and +-4 columns (of 64), searched on a
 * 32 x 32 level and refined at 64 x 64; the score is then the NCC at that
 * alignment with each cell of a's window weighted by a map learned on
 * synthetic rescans (docs/dedup.md).  About 1 ms a pair on one core.
 * floor_ is accepted for dedup_score_fn and not used: every pair is searched
 * in full.  Nearly symmetric: the weights sit in a's frame. */
float dedup_fingerprint_image_score(const float *a, const float *b, float floor_);

/* ---- clustering (cluster.c) ---------------------------------------------------- */

typedef struct dedup_cluster {
    uint64_t *ids;   /* sorted */
    size_t n;
    float min_score; /* weakest link that joined the cluster (1 for exact) */
    float max_score;
} dedup_cluster;

typedef struct dedup_result {
    dedup_cluster *exact; /* items with the same data hash */
    size_t nexact;
    dedup_cluster *near; /* connected components of similarity >= threshold */
    size_t nnear;
    size_t pairs;       /* near pairs found */
    size_t scanned;     /* vectors scanned */
} dedup_result;

/* Exact duplicates by data hash; near duplicates by range search of every
 * vector of x's space at threshold, joined by union-find.
 *
 * The cost is bounded: max_pairs (0: no bound) caps the near pairs found
 * (a threshold so low that it links more is refused with DEDUP_TOOBIG
 * naming both, as soon as the count passes it), and the vectors are
 * range-searched in blocks small enough that one block's results (at most
 * block x n) stay under DEDUP_RANGE_RESULTS, whatever the threshold. */
#define DEDUP_MAX_PAIRS 1000000
#define DEDUP_RANGE_RESULTS ((size_t)1 << 22)
int dedup_embeddings(store *s, idx_space *x, float threshold, size_t max_pairs,
                     dedup_result **out, char *errbuf, size_t errlen);
void dedup_result_free(dedup_result *r);

/* Moves from's near clusters into `into` (kept sorted by their first id)
 * and adds its pair and scan counts; from's exact clusters are dropped
 * (they come from the same data hashes).  Frees from, also on failure
 * (DEDUP_NOMEM, which leaves `into` as it was). */
int dedup_result_merge(dedup_result *into, dedup_result *from);

/* Exact duplicates as above; near duplicates from the items' acquisition
 * fingerprints (above) of this tag and dimension instead
 * of a model space: every pair whose cosine similarity is >= threshold,
 * found exactly (all pairs, BLAS), joined by union-find.  Fingerprints of
 * another tag or dimension are ignored.  r->scanned counts the
 * fingerprints compared (0 in a database made before fingerprints). */
int dedup_fingerprints(store *s, uint32_t tag, uint32_t dim, float threshold,
                       dedup_result **out, char *errbuf, size_t errlen);

/* The score of two fingerprints of one tag (higher: more alike).  It may
 * return early with any value below floor once the pair surely scores
 * below it.  Called from several threads at once. */
typedef float (*dedup_score_fn)(const float *a, const float *b, float floor, void *ctx);

/* As dedup_fingerprints, for fingerprints that are compared by a
 * scorer instead of an inner product (radiographs: an alignment search,
 * dedup_fingerprint_image_score): every pair is scored, on `threads` threads, and
 * pairs scoring >= threshold (in (-1, 1]) are joined.  Quadratic in the
 * number of fingerprints. */
typedef void (*dedup_progress_fn)(void *ctx, size_t done, size_t total);
/* progress (may be NULL) is called now and then, from the calling thread
 * only, with the pairs scored so far and in all. */
int dedup_fingerprints_scored(store *s, uint32_t tag, uint32_t dim, float threshold,
                              dedup_score_fn score, void *ctx, int threads,
                              dedup_progress_fn progress, void *pctx,
                              dedup_result **out, char *errbuf, size_t errlen);

#endif
