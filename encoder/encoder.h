/* encoder.h - images, volumes and report text to vectors of the shared space.
 *
 *   enc_pipeline *p;  enc_worker *w;  char err[512];  float v[512];
 *   if (enc_pipeline_open("models/default", 0, &p, err, sizeof err)) puts(err);
 *   enc_worker_new(p, 8, &w, err, sizeof err);
 *   const char *t = "8 mm nodule in the right upper lobe";
 *   enc_worker_text(w, &t, 1, v, err, sizeof err);
 *
 * The pipeline is a model directory made ready to use: weights
 * (encoder/model.h), tokenizer (encoder/tokenizer.h) and preprocessing
 * (encoder/preprocess.h) configured from its config.json.  It is read-only
 * and shared by threads; each thread encodes through its own worker.
 *
 * This is the encoder's one public header: code outside encoder/ includes
 * it and nothing else of encoder/.  It pulls in the parts, each in its own
 * file for reading: safetensors.h, tokenizer.h, preprocess.h, model.h, means.h and
 * the backend table model.h needs (backend.h); see docs/encoder.md.  Image
 * files are read by imageio/ (imageio/imageio.h), whose codes are the first
 * ENC_ codes by name and value (ENC_ERRNO_MAP begins with IMG_ERRNO_MAP).
 */
#ifndef MEDSEM_ENCODER_H
#define MEDSEM_ENCODER_H

#include <stddef.h>
#include <stdint.h>

#include "imageio/imageio.h"

/* The readers' codes first (IMG_ERRNO_MAP, by name and value), so that a
 * reader's code passes through the encoder unchanged; then the encoder's. */
#define ENC_ERRNO_MAP(XX)                                                     \
    IMG_ERRNO_MAP(XX)                                                         \
    XX(MISSING, "missing tensor or field")                                    \
    XX(SHAPE, "tensor shape does not match the configuration")

typedef enum {
#define ENC__ENUM(name, msg) ENC_##name,
    ENC_ERRNO_MAP(ENC__ENUM)
#undef ENC__ENUM
    ENC_NERR
} enc_errno;

const char *enc_strerror(int code);
const char *enc_errname(int code);

typedef struct enc_pipeline enc_pipeline;
typedef struct enc_worker enc_worker;
struct enc_model;
struct enc_tok;
struct enc_prep;
struct img_vol;
struct img_limits;

/* Opens the model directory dir (config.json, model.safetensors, vocab.txt,
 * and modality_means.json when there is one: encoder/means.h) with a CPU
 * backend of nthreads (<= 0: all cores).  Errors name the file and field. */
int enc_pipeline_open(const char *dir, int nthreads, enc_pipeline **out, char *errbuf,
                      size_t errlen);
void enc_pipeline_close(enc_pipeline *p); /* accepts NULL; workers first */
const struct enc_model *enc_pipeline_model(const enc_pipeline *p);
const struct enc_tok *enc_pipeline_tokenizer(const enc_pipeline *p);
const struct enc_prep *enc_pipeline_prep(const enc_pipeline *p);
int enc_pipeline_dim(const enc_pipeline *p);
/* The model id (SHA-256 of model.safetensors); owned by p. */
const char *enc_pipeline_model_id(const enc_pipeline *p);
/* Whether the model encodes images (2D), volumes (3D), text. */
int enc_pipeline_has_image(const enc_pipeline *p);
int enc_pipeline_has_volume(const enc_pipeline *p);
int enc_pipeline_has_text(const enc_pipeline *p);

/* A worker encodes up to batch inputs at a time; its activation memory for
 * each kind is planned on first use.  One per thread. */
int enc_worker_new(const enc_pipeline *p, int batch, enc_worker **out, char *errbuf,
                   size_t errlen);
void enc_worker_free(enc_worker *w); /* accepts NULL */

/* n <= batch inputs each; out gets n rows of enc_pipeline_dim floats,
 * L2-normalised.  Modality strings ("CT", "MR", "CR", ...) pick the
 * intensity mapping; NULL entries or arrays mean unknown.  A failure names
 * the input (path, or text index) and writes nothing. */
int enc_worker_text(enc_worker *w, const char *const *texts, int n, float *out, char *errbuf,
                    size_t errlen);
int enc_worker_images(enc_worker *w, const char *const *paths, const char *const *modalities,
                      int n, float *out, char *errbuf, size_t errlen);
int enc_worker_volumes(enc_worker *w, const char *const *paths, const char *const *modalities,
                       int n, float *out, char *errbuf, size_t errlen);

/* The same for files held in memory (uploads), read by imageio's _mem
 * readers: the format is told by the content, name (may be NULL) stands
 * for the path in messages, and nothing touches the file system.  The
 * bytes are borrowed for the call. */
typedef struct enc_blob {
    const void *data;
    size_t len;
    const char *name;
} enc_blob;
int enc_worker_images_mem(enc_worker *w, const enc_blob *blobs, const char *const *modalities,
                          int n, float *out, char *errbuf, size_t errlen);
int enc_worker_volumes_mem(enc_worker *w, const enc_blob *blobs, const char *const *modalities,
                           int n, float *out, char *errbuf, size_t errlen);

/* A hook the worker calls on each file of later enc_worker_images(_mem),
 * enc_worker_volumes(_mem) and enc_worker_volume_slices calls, right after it is
 * read and before it is preprocessed: i is the file's index in that call's
 * paths, v the image as read (imageio/imageio.h: RAS, the stored
 * intensities; a radiograph as img_read_2d gives it).  Work that needs
 * the decoded file (a fingerprint, its geometry) is done here without
 * reading it again.  A nonzero return (an enc_errno, with a message in
 * errbuf that names the file) fails the call as the file's own error
 * would.  A retried call calls the hook again.  fn NULL removes it. */
typedef int (*enc_file_hook)(void *ctx, int i, const struct img_vol *v, char *errbuf,
                             size_t errlen);
void enc_worker_set_file_hook(enc_worker *w, enc_file_hook fn, void *ctx);

/* The limits every later read of the worker is held to (imageio's
 * img_limits: size caps and the admission hook a server budgets decodes
 * with), copied; NULL restores the defaults. */
void enc_worker_set_limits(enc_worker *w, const struct img_limits *lim);

/* Axial slices per volume that enc_worker_volume_slices encodes: the
 * volume input's depth D, when an axial plane of the preprocessed volume is
 * exactly an image input (same H, W and channels; the default preset's
 * 16 x 64 x 64 volumes and 64 x 64 images), the cut the trainer's slice
 * selection makes.  0 when the model's geometry does not allow it, with
 * the reason in errbuf (may be NULL). */
int enc_pipeline_slices(const enc_pipeline *p, char *errbuf, size_t errlen);

/* Encodes n <= batch volumes like enc_worker_volumes into vol_out (n rows)
 * and every axial slice z of each preprocessed volume through the image
 * tower (the 2D patch embedding on the plane [C, z, :, :]) into slice_out
 * (n * D rows, volume i's slice z at row i * D + z; D =
 * enc_pipeline_slices).  Each file is read and preprocessed once.
 * ENC_UNSUPPORTED when the model cannot encode slices (errbuf says why);
 * other failures name the file and write nothing. */
int enc_worker_volume_slices(enc_worker *w, const char *const *paths,
                             const char *const *modalities, int n, float *vol_out,
                             float *slice_out, char *errbuf, size_t errlen);

/* The parts of the encoder's API (see the top of this file). */
#include "encoder/means.h"
#include "encoder/model.h"
#include "encoder/preprocess.h"
#include "encoder/safetensors.h"
#include "encoder/tokenizer.h"
#include "encoder/torchfile.h"

#endif
