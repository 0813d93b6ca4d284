/* means.h - the modality means: where each kind's embeddings sit, and the
 * query move that closes the gap between two kinds.
 *
 *   enc_means *m;  char err[512];
 *   if (enc_means_load("models/default", id, 128, &m, err, sizeof err)) puts(err);
 *   enc_means_shift(m, ENC_IMAGE, ENC_TEXT, q, 1);   (m may be NULL: no move)
 *   enc_means_free(m);
 *
 * A contrastive model puts each kind's embeddings in a cone of its own: the
 * mean of its radiographs, of its volumes and of its reports each has a norm
 * far from 0, and they differ.  A radiograph query that searches reports then
 * ranks them partly by how near each report is to the radiographs' cone.
 * Moving the query by the difference of the two kinds' means, q - (mu_from -
 * mu_to), and normalising it again removes that part; the gallery's stored
 * vectors stay as they are.  docs/train.md ("The modality gap") has what it
 * buys.  The means come from a model's training studies, are written by
 * `medsem calibrate` to MODEL_DIR/modality_means.json and belong to the
 * weights they were computed with (the file records the model id).
 */
#ifndef MEDSEM_ENCODER_MEANS_H
#define MEDSEM_ENCODER_MEANS_H

#include <stddef.h>

#include "encoder/encoder.h"

#define ENC_MEANS_FILE "modality_means.json"

typedef struct enc_means enc_means;

/* Kinds are enc_kind values (encoder/model.h: ENC_IMAGE, ENC_VOLUME,
 * ENC_TEXT), passed as int so that this header needs nothing of model.h. */

/* Reads dir/modality_means.json for the model model_id (enc_model_id) of
 * dim dimensions.  ENC_OK with *out NULL when dir has no such file.  A file
 * made for other weights, of another dimension, or with a field out of
 * shape is refused, with the file and field named. */
int enc_means_load(const char *dir, const char *model_id, int dim, enc_means **out,
                   char *errbuf, size_t errlen);

/* Writes dir/modality_means.json atomically (a temporary file renamed over
 * it): for each enc_kind k with count[k] > 0, the mean mean[k] (dim floats)
 * of count[k] L2-normalised embeddings; source (may be NULL) says where
 * they came from. */
int enc_means_save(const char *dir, const char *model_id, int dim, const float *const mean[3],
                   const size_t count[3], const char *source, char *errbuf, size_t errlen);

void enc_means_free(enc_means *m); /* accepts NULL */

/* How many embeddings kind k's mean was made of (0: the file has none). */
size_t enc_means_count(const enc_means *m, int k);
/* Kind k's mean (dim floats), or NULL. */
const float *enc_means_mean(const enc_means *m, int k);

/* Whether a query of kind from that searches the embeddings of kind to
 * moves: only radiograph and volume queries do, toward another kind whose
 * mean the file holds as well.  Text queries stay where they are: moving
 * them gained nothing on held-out data (docs/train.md).  m may be NULL. */
int enc_means_moves(const enc_means *m, int from, int to);

/* Moves n rows of dim L2-normalised queries (row-major, dim as loaded) of
 * kind from toward kind to and normalises them again, when
 * enc_means_moves says so; a row the move would bring to zero stays as it
 * is.  Returns 1 when the rows moved, 0 when they stay. */
int enc_means_shift(const enc_means *m, int from, int to, float *q, size_t n);

/* The means of an open pipeline's model folder (read by enc_pipeline_open),
 * or NULL when it has none. */
const enc_means *enc_pipeline_means(const enc_pipeline *p);

#endif
