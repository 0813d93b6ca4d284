/* preprocess.h - from an image file to a model's input tensor.
 *
 *   enc_prep p = ENC_PREP_INIT;  p.vol_size = {32, 256, 256} ...
 *   float *x = malloc(enc_prep_volume_count(&p) * sizeof *x);
 *   enc_prep_volume("ct.nii.gz", ENC_MOD_CT, &p, x, err, sizeof err);
 *
 * Volumes: read (NIfTI), reoriented to RAS, intensities mapped by modality
 * (CT: HU window to [0, 1]; MR and others: percentile scaling to [0, 1]),
 * resampled trilinearly to the target spacing, centre-cropped or padded to
 * the model's size, and written as [C, D, H, W] in RAS voxel order: W grows
 * towards the patient's right, H towards anterior, D towards superior
 * (COLIPRI's differ: enc_prep.torchio).
 * Images (radiographs): PNG or 2-D NIfTI (from a path or from memory), put in picture order (row 0 at the
 * top), intensities to [0, 1] (PNG by bit depth, NIfTI by modality), scaled
 * to fit the model's size with the aspect ratio kept and the rest padded,
 * written as [C, H, W].  Grey is replicated to C channels and normalised per
 * channel as (x - mean) / std.
 */
#ifndef MEDSEM_ENCODER_PREPROCESS_H
#define MEDSEM_ENCODER_PREPROCESS_H

#include <stddef.h>

#include "encoder/encoder.h"
#include "imageio/imageio.h"

typedef enum { ENC_MOD_OTHER = 0, ENC_MOD_CT, ENC_MOD_MR, ENC_MOD_XRAY } enc_modality;

/* "CT", "MR"/"MRI", "CR"/"DX"/"XR" (any case); anything else is OTHER. */
enc_modality enc_modality_parse(const char *s);

typedef struct enc_prep {
    int channels;        /* 1, or 3 for RGB models (grey replicated) */
    int vol_size[3];     /* D, H, W */
    float vol_spacing[3]; /* target mm along W (x), H (y), D (z) */
    int img_size[2];     /* H, W */
    float ct_window[2];  /* HU */
    float mr_pct[2];     /* percentiles for MR and other modalities */
    float mean[3], std[3];
    int fit;        /* volumes: stretch the whole field of view to vol_size
                       (per-axis spacing) instead of vol_spacing + crop/pad */
    int no_window;  /* CT too gets percentile scaling (M3D-CLIP's min-max) */
    int slice_display; /* axial slices (enc_prep_slice) as displayed, not in RAS order
                          (config.json preprocess.slice_view "display") */
    /* COLIPRI (torchio's transform, in its order): resample the stored
     * intensities first, then the CT window, for every modality (its model
     * knows only Hounsfield units).  With xyz as well, write the volume as
     * [C, X, Y, Z] (torchio's tensor of an image oriented RAS: X toward the
     * patient's right, Z fastest) rather than [C, D, H, W] (which is
     * torchio's tensor of an image oriented SAR); vol_size stays (D, H, W)
     * = (Z, Y, X). */
    int torchio, xyz;
} enc_prep;

#define ENC_PREP_INIT                                                                     \
    {                                                                                     \
        1, {32, 256, 256}, {1.5f, 1.5f, 3.0f}, {224, 224}, {-1000.0f, 400.0f},         \
            {0.5f, 99.5f}, {0, 0, 0}, {1, 1, 1}, 0, 0, 0, 0, 0                         \
    }

size_t enc_prep_volume_count(const enc_prep *p); /* C*D*H*W */
size_t enc_prep_image_count(const enc_prep *p);  /* C*H*W */

/* Cuts axial slice z of a preprocessed volume vol [C, D, H, W] into out
 * [C, H, W], an image input of the same H and W.  display 0: in the
 * volume's RAS voxel order (W toward the patient's right, H toward
 * anterior); 1: as a radiologist shows an axial section, the patient's
 * right on the image's left (as on a radiograph) and anterior at the top,
 * which is half a turn of the plane.  Slice selection in training and the
 * slice space at ingest cut their slices here, from the model's
 * preprocess.slice_view. */
void enc_prep_slice(const float *vol, int C, int D, int H, int W, int z, int display, float *out);

/* The value of config.json's preprocess.slice_view: NULL (absent) or
 * "ras" 0, "display" 1, anything else -1.  The pipeline and the trainer
 * both read it here, so a model the trainer writes is one the pipeline
 * loads. */
int enc_prep_slice_view(const char *value);

/* The volume's own slice number (0 .. nz - 1) nearest to slice `slice` of
 * the model's grid, for a volume of nz slices spaced spacing_z mm (<= 0:
 * 1 mm) as read: the grid is the volume resampled to the model's z
 * spacing with centres aligned, or its whole extent stretched to D slices
 * (fit).  nz 0 (geometry unknown) gives slice back. */
int enc_prep_native_z(const enc_prep *p, uint32_t nz, double spacing_z, uint32_t slice);

/* Fills out (enc_prep_volume_count floats).  Errors name the file. */
int enc_prep_volume(const char *path, enc_modality mod, const enc_prep *p, float *out,
                    char *errbuf, size_t errlen);
/* Fills out (enc_prep_image_count floats).  Errors name the file. */
int enc_prep_image(const char *path, enc_modality mod, const enc_prep *p, float *out,
                   char *errbuf, size_t errlen);

/* Either of the above (volume: enc_prep_volume, else enc_prep_image), read
 * within lim (imageio's limits and admission hook; NULL: the defaults), and
 * when seen is not NULL it is called with the image as read (RAS, the
 * stored intensities), before preprocessing: work that needs the decoded
 * file is done there without reading it again.  Its nonzero return (an
 * enc_errno, message in errbuf) is the call's. */
typedef int (*enc_prep_seen)(void *ctx, const img_vol *v, char *errbuf, size_t errlen);
int enc_prep_file(int volume, const char *path, enc_modality mod, const enc_prep *p,
                  const img_limits *lim, float *out, enc_prep_seen seen, void *ctx, char *errbuf,
                  size_t errlen);
/* The same from a file's bytes in memory (an upload: imageio's _mem
 * readers, the format told by the content); name (may be NULL) stands for
 * the path in messages. */
int enc_prep_mem(int volume, const void *data, size_t len, const char *name, enc_modality mod,
                 const enc_prep *p, const img_limits *lim, float *out, enc_prep_seen seen,
                 void *ctx, char *errbuf, size_t errlen);

#endif
