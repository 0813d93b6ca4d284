/* imageio/dicom_internal.h: the C face of the GDCM shim (dicom_gdcm.cpp).
 * Private to imageio/: dicom.c builds volumes, radiographs and series on
 * top of these two calls. */
#ifndef MEDSEM_IMAGEIO_DICOM_INTERNAL_H
#define MEDSEM_IMAGEIO_DICOM_INTERNAL_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Which optional attributes a file has (img__dcm.present). */
enum {
    IMG__DCM_IPP = 1 << 0,     /* ImagePositionPatient */
    IMG__DCM_IOP = 1 << 1,     /* ImageOrientationPatient */
    IMG__DCM_PS = 1 << 2,      /* PixelSpacing */
    IMG__DCM_IPS = 1 << 3,     /* ImagerPixelSpacing */
    IMG__DCM_THICK = 1 << 4,   /* SliceThickness */
    IMG__DCM_WINDOW = 1 << 5,  /* WindowCenter and WindowWidth (the first pair) */
    IMG__DCM_RESCALE = 1 << 6, /* RescaleSlope and RescaleIntercept */
    IMG__DCM_PIXELS = 1 << 7,  /* PixelData (or FloatPixelData) */
    IMG__DCM_VOILUT = 1 << 8,  /* VOILUTFunction is SIGMOID */
};

/* One file's header: strings trimmed of padding, "" when absent. */
typedef struct img__dcm {
    char sop_class[68], sop_uid[68], study_uid[68], series_uid[68], frame_uid[68];
    char modality[20], body_part[68], study_date[20], series_desc[68], manufacturer[68];
    char accession[20], photometric[20], tsyntax[68], image_type[68], tsyntax_name[80];
    int rows, cols, frames, samples, bits_alloc, bits_stored, high_bit, pixel_rep, planar, instance;
    unsigned present;
    double ipp[3], iop[6], ps[2], ips[2], thickness, slope, intercept, wc, ww;
    /* Enhanced multi-frame objects: per-frame position (3 per frame) and
     * rescale (2 per frame: slope, intercept), NULL when the file has no
     * per-frame functional groups; the shared groups fill iop, ps,
     * thickness and, when not per frame, slope and intercept. */
    double *fipp, *frescale;
} img__dcm;

/* Reads a DICOM file (path) or its bytes (mem, len; name stands for it in
 * messages).  pixels NULL: the header only, up to the pixel data; else
 * also the pixels, decoded by GDCM whatever the transfer syntax, as
 * frames * rows * cols floats (a copy the caller frees), the stored values
 * before any rescale, colour turned to grey (RGB: BT.601 luma; YBR: its
 * Y), MONOCHROME1 left as stored; max_values bounds frames * rows * cols
 * (0: none) and is checked before decoding.  Codes: IMG_IO, IMG_FORMAT
 * (not DICOM, truncated, inconsistent), IMG_UNSUPPORTED (a syntax or
 * photometric interpretation it cannot decode), IMG_TOOBIG, IMG_NOMEM;
 * the message names the file and the attribute. */
int img__dcm_read(const char *path, const void *mem, size_t len, const char *name, img__dcm *h,
                  float **pixels, size_t max_values, char *errbuf, size_t errlen);

/* The structural check of a Part 10 file's bytes (dicom_walk.c): every
 * element, sequence, item and fragment lies inside them.  IMG_FORMAT with
 * the byte and element where it does not. */
int img__dcm_walk(const unsigned char *b, size_t n, const char *name, char *errbuf, size_t errlen);

/* Frees what img__dcm_read allocated in h. */
void img__dcm_free(img__dcm *h);

#ifdef __cplusplus
}
#endif

#endif
