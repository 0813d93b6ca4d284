/* fingerprint.h - acquisition-invariant fingerprints of volumes and images,
 * for near-duplicate (rescan) detection.
 *
 *   float fp[ENC_FP_VOLUME_DIM];  char err[512];
 *   if (enc_fingerprint_volume("ct.nii.gz", ENC_MOD_CT, fp, err, sizeof err)) puts(err);
 *   // cosine(fp_a, fp_b) >= ENC_FP_THRESHOLD: the same anatomy scanned twice
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
 * alignment search instead (enc_fingerprint_image_score).  Compare only
 * fingerprints of the same tag (ENC_FP_TAG, ENC_FP_IMAGE_TAG).  See
 * docs/dedup.md for the method and the measured threshold.  Cosines of
 * fingerprints run close to 1 (every chest shares its gross shape), so
 * thresholds are like 0.997, not 0.9.
 *
 * Functions return an enc_errno (the readers' codes: ENC_IO, ENC_FORMAT,
 * ENC_UNSUPPORTED, ENC_TOOBIG, ENC_NOMEM) with a one-line message naming
 * the file in errbuf (may be NULL); out is written only on success.  They
 * keep no state and may run in parallel.
 */
#ifndef MEDSEM_ENCODER_FINGERPRINT_H
#define MEDSEM_ENCODER_FINGERPRINT_H

#include <stddef.h>

#include "encoder/image.h"
#include "encoder/preprocess.h"

/* Bumped whenever the method changes: fingerprints of another version are
 * not comparable. */
#define ENC_FP_VERSION 1

/* What the store keeps with a fingerprint to tell methods apart
 * ("FPv" + version). */
#define ENC_FP_TAG (0x76504600u + ENC_FP_VERSION)

/* Volumes: an 18 x 12 x 12 grid of 16 mm cells (288 x 192 x 192 mm) around
 * the centroid of the air inside the body (the lungs), rotated in the axial
 * plane to the lungs' principal axis. */
#define ENC_FP_VOL_NX 18
#define ENC_FP_VOL_NY 12
#define ENC_FP_VOL_NZ 12
#define ENC_FP_VOL_CELL 16.0f
#define ENC_FP_VOLUME_DIM (ENC_FP_VOL_NX * ENC_FP_VOL_NY * ENC_FP_VOL_NZ)

/* Default cosine threshold above which two fingerprints are near
 * duplicates (chosen on one synthetic seed, checked on another: see
 * docs/dedup.md). */
#define ENC_FP_THRESHOLD 0.9975f

/* The fingerprint of a volume file (NIfTI): ENC_FP_VOLUME_DIM floats. */
int enc_fingerprint_volume(const char *path, enc_modality mod, float *out, char *errbuf,
                           size_t errlen);

/* The same from a volume already read by enc_img_read_nifti (not
 * modified); path only names it in messages. */
int enc_fingerprint_volume_vol(const enc_vol *v, const char *path, enc_modality mod, float *out,
                               char *errbuf, size_t errlen);

/* Radiographs (and any 2D image): a 64 x 64 band-passed picture of the
 * intensity ranks, compared by alignment (enc_fingerprint_image_score),
 * not by a plain inner product.  Versioned on its own. */
#define ENC_FP_IMAGE_VERSION 1
#define ENC_FP_IMAGE_TAG (0x69504600u + ENC_FP_IMAGE_VERSION) /* "FPi" + version */
#define ENC_FP_IMG_N 64
#define ENC_FP_IMAGE_DIM (ENC_FP_IMG_N * ENC_FP_IMG_N)

/* Default score above which two radiographs are rescans of one patient
 * (docs/dedup.md). */
#define ENC_FP_IMAGE_THRESHOLD 0.915f

/* The fingerprint of a 2D image file (.png, or a NIfTI with one axis of
 * length 1): ENC_FP_IMAGE_DIM floats. */
int enc_fingerprint_image(const char *path, float *out, char *errbuf, size_t errlen);
/* The same from an image already read by enc_img_read_2d (not modified). */
int enc_fingerprint_image_vol(const enc_vol *v, const char *path, float *out, char *errbuf,
                              size_t errlen);

/* The alignment score of two image fingerprints, in [-1, 1].  b is aligned
 * to a by the best normalised cross-correlation over rotations of +-8
 * degrees and shifts of +-8 rows and +-4 columns (of 64), searched on a
 * 32 x 32 level and refined at 64 x 64; the score is then the NCC at that
 * alignment with each cell of a's window weighted by a map learned on
 * synthetic rescans (docs/dedup.md).  About 1 ms a pair on one core.
 * floor_ is accepted for srch_fp_score and not used: every pair is searched
 * in full.  Nearly symmetric: the weights sit in a's frame. */
float enc_fingerprint_image_score(const float *a, const float *b, float floor_);

#endif
