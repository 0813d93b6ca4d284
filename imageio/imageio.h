/* imageio.h - medical image files: NIfTI volumes, PNG images, from a path
 * or from memory; resampling and intensity mappings of what they hold.
 *
 *   img_vol v, r;
 *   char err[512];
 *   if (img_read_nifti("ct.nii.gz", NULL, &v, err, sizeof err)) puts(err);
 *   img_resample(&v, (float[3]){1, 1, 4}, 256, 256, 32, &r, err, sizeof err);
 *   img_ct_window(&r, -1000, 400); ... img_vol_free(&r); img_vol_free(&v);
 *
 * Every function returns an img_errno: IMG_OK, or a code
 * with a one-line message in the caller's errbuf (may be NULL) that starts
 * with the file path and names the offending field.  Out-params are written
 * only on success.  Nothing a file says is trusted: sizes are checked against
 * the limits and against the file before anything is allocated.
 *
 * Axis conventions.  A volume is float32, x fastest:
 *     data[(k * ny + j) * nx + i]
 * NIfTI volumes come out reoriented to RAS+, the NIfTI world convention
 * (+x = patient Right, +y = Anterior, +z = Superior): voxel index i grows
 * toward Right, j toward Anterior and k toward Superior.  `affine` maps a
 * voxel index (i, j, k) - the voxel's centre - to world millimetres, and
 * `spacing` holds the lengths of its three columns.  Oblique volumes are
 * only permuted and flipped to the closest axes, never rotated by
 * resampling: their affine keeps the residual rotation.
 *
 * The functions keep no state and may run in parallel on different
 * volumes.  libnifti keeps global options: the first NIfTI read sets its
 * debug level to 0 (once, with pthread_once) so that it prints nothing.
 */
#ifndef MEDSEM_IMAGEIO_H
#define MEDSEM_IMAGEIO_H

#include <stddef.h>

/* The encoder's and dedup's maps begin with this one (encoder/encoder.h,
 * dedup/dedup.h): a reader's code passes through them unchanged. */
#define IMG_ERRNO_MAP(XX)                                                     \
    XX(OK, "success")                                                         \
    XX(NOMEM, "out of memory")                                                \
    XX(IO, "input/output error")                                              \
    XX(INVAL, "invalid argument")                                             \
    XX(FORMAT, "malformed file")                                              \
    XX(UNSUPPORTED, "unsupported content")                                    \
    XX(TOOBIG, "input exceeds a size limit")

typedef enum {
#define IMG__ENUM(name, msg) IMG_##name,
    IMG_ERRNO_MAP(IMG__ENUM)
#undef IMG__ENUM
    IMG_NERR
} img_errno;

const char *img_strerror(int code);
const char *img_errname(int code);

#define IMG_MAX_VOXELS ((size_t)512 * 512 * 1024)
#define IMG_MAX_PIXELS ((size_t)16384 * 16384)

/* Hard caps on what a reader allocates.  NULL, or a field left 0, means
 * the defaults above.  max_voxels bounds nx*ny*nz of the volume kept (the
 * first one of a 4D+ file); max_pixels bounds width*height of a PNG.
 *
 * admit (optional) is asked once the header has been read and checked,
 * before the image's memory is allocated, with the bytes the reader is
 * about to allocate for it (the stored samples and their float copy): a
 * server uses it to keep all decodes in flight within one budget.  A
 * nonzero return (an img_errno, with a message in errbuf that names the
 * file) fails the read before any allocation; a read that was admitted
 * holds its bytes until the caller releases them (the callback's owner
 * does the accounting). */
typedef struct img_limits {
    size_t max_voxels;
    size_t max_pixels;
    int (*admit)(void *ctx, size_t bytes, const char *name, char *errbuf, size_t errlen);
    void *admit_ctx;
} img_limits;

/* Where an image came from (img_vol.format): RAS order for NIfTI, picture
 * order for PNG; IMG_FMT_PICTURE for a NIfTI image that img_picture_order
 * has put in picture order (its values are still the file's);
 * IMG_FMT_MEMORY (0, what a zeroed img_vol says) for one made in memory,
 * taken in the order it is given. */
typedef enum {
    IMG_FMT_MEMORY = 0,
    IMG_FMT_NIFTI = 1,
    IMG_FMT_PNG = 2,
    IMG_FMT_PICTURE = 3,
    IMG_FMT_DISPLAY = 4, /* a DICOM radiograph: picture order, values in [0, 1] as displayed */
    IMG_FMT_DICOM = 5    /* a DICOM volume: RAS order, physical values (HU after rescale) */
} img_format;

typedef struct img_vol {
    float *data; /* owned, nx*ny*nz floats, x fastest; free with img_vol_free */
    int nx, ny, nz;
    float spacing[3];    /* mm, after reorientation: x=R, y=A, z=S */
    double affine[4][4]; /* voxel (i,j,k) centre -> RAS mm; last row 0 0 0 1 */
    img_format format;   /* the file's format (kept by img_resample) */
    char modality[16];   /* a DICOM file's Modality ("CT", "DX", ...); "" otherwise */
} img_vol;

/* Frees v->data and zeroes *v.  Accepts NULL and an already-freed volume. */
void img_vol_free(img_vol *v);

/* Reads a NIfTI-1 or NIfTI-2 single-file image (.nii or .nii.gz, any
 * letter case; either byte order) into *out as float32, reoriented to RAS.
 *
 * - The header is read and checked before any voxel memory is allocated:
 *   dim[0] in 2..7, dim[1..dim[0]] >= 1, nx*ny*nz <= max_voxels (IMG_TOOBIG),
 *   datatype one of UINT8 INT8 INT16 UINT16 INT32 UINT32 INT64 UINT64
 *   FLOAT32 FLOAT64 (else IMG_UNSUPPORTED), vox_offset a whole number past
 *   the header and its extension flag (352 / 544), and an uncompressed file
 *   long enough for every voxel it declares.  Gzip is recognised by its
 *   magic bytes; a truncated or corrupt stream is IMG_FORMAT.
 * - Geometry: the sform if sform_code > 0, else the qform if qform_code > 0,
 *   else diag(pixdim[1..3]) with no offset (NIfTI "method 1").  The numbers
 *   the chosen method uses must be finite and its spacings > 0 (IMG_FORMAT).
 *   Each voxel axis is assigned the world axis its column points at most;
 *   two columns on the same world axis (an exact 45-degree tie included),
 *   or a singular matrix, is an inconsistent header (IMG_FORMAT).
 * - 2D files (dim[0] = 2) have nz = 1 before reorientation.  For 4D and
 *   above only the first volume (t = u = v = w = 0) is read, and the rest
 *   of a .nii.gz is never decompressed (damage there goes unnoticed); a
 *   single-volume .nii.gz is read to its end, CRC included.
 * - Values are scl_slope * stored + scl_inter, unless scl_slope is 0 or not
 *   finite (then the stored values as they are).  Any voxel not finite
 *   after this is IMG_FORMAT.
 * - Plain or gzip is told by the gzip magic (1f 8b), whatever the name.
 * Codes: IMG_IO (cannot open), IMG_FORMAT, IMG_UNSUPPORTED (extension,
 * datatype, a two-file .hdr/.img pair), IMG_TOOBIG, IMG_NOMEM. */
int img_read_nifti(const char *path, const img_limits *lim, img_vol *out, char *errbuf,
                   size_t errlen);

/* Reads a PNG into a volume with nz = 1, spacing 1, identity affine (i =
 * column from the left, j = row from the top: picture order, no anatomy).
 * Grey (1, 2, 4, 8, 16 bit), grey+alpha, RGB, RGBA and palette images;
 * alpha and tRNS transparency are dropped, colour becomes BT.601 luma
 * 0.299 R + 0.587 G + 0.114 B, with no gamma correction.  Values are
 * sample / (2^bitdepth - 1), in [0, 1] (palette entries are 8-bit).
 * width*height above max_pixels is IMG_TOOBIG before any pixel memory.
 * The file is read to IEND: a corrupt or truncated file, cut anywhere, is
 * IMG_FORMAT with libpng's message (libpng never prints). */
int img_read_png(const char *path, const img_limits *lim, img_vol *out, char *errbuf,
                 size_t errlen);

/* Reads a 2D image (a radiograph) by extension: .png, or .nii / .nii.gz.
 * A NIfTI image is read as by img_read_nifti (RAS order, not picture
 * order); it must have one axis of length 1 after reorientation (else
 * IMG_INVAL), which becomes k so that nz = 1: a coronal image (nx, 1, nz)
 * comes back as (nx, nz, 1) with the affine's columns reordered to match.
 * Other extensions: IMG_UNSUPPORTED. */
int img_read_2d(const char *path, const img_limits *lim, img_vol *out, char *errbuf,
                size_t errlen);

/* ---- from memory --------------------------------------------------------------
 * The _mem readers take a file's bytes (an upload) instead of a path, with
 * the same checks, results and codes as the readers above, and never
 * touch the file system.  name (may be NULL: "(memory)") stands for the
 * path in messages; the format is told by the content, never by the name.
 * data is borrowed for the call only. */
int img_read_nifti_mem(const void *data, size_t len, const char *name, const img_limits *lim,
                       img_vol *out, char *errbuf, size_t errlen);
int img_read_png_mem(const void *data, size_t len, const char *name, const img_limits *lim,
                     img_vol *out, char *errbuf, size_t errlen);
/* A PNG (by its signature), else a 2-D NIfTI, as img_read_2d reads them. */
int img_read_2d_mem(const void *data, size_t len, const char *name, const img_limits *lim,
                    img_vol *out, char *errbuf, size_t errlen);

/* ---- DICOM (imageio/dicom.c, through GDCM) -----------------------------------
 * A volume is one DICOM file (a single slice, or an enhanced multi-frame CT
 * or MR whose frames are slices) or a folder holding one series, a file per
 * slice.  Slices are sorted along the normal of ImageOrientationPatient by
 * ImagePositionPatient; spacing must be uniform (a missing slice, two
 * slices at one position, a tilted stack or mixed orientations are refused,
 * naming the files); RescaleSlope/Intercept are applied per slice (HU for
 * CT); the LPS geometry becomes the RAS affine the NIfTI reader gives, and
 * the voxels are turned to RAS order the same way.  A radiograph (one
 * frame) is kept in picture order as stored (DICOM shows row 0 at the top
 * and, for a chest PA view, the patient's right at column 0, as PNG
 * radiographs are kept), mapped to [0, 1] through the file's window
 * (WindowCenter/Width, linear or SIGMOID) or else the stored bit range,
 * MONOCHROME1 inverted, colour (RGB, YBR) turned to grey; spacing from
 * PixelSpacing or ImagerPixelSpacing.  Every transfer syntax GDCM decodes
 * is read: implicit and explicit little endian, explicit big endian,
 * deflated, RLE, JPEG baseline / extended / lossless, JPEG-LS, JPEG 2000. */

/* The header attributes medsem keeps (an item's payload): never a patient-
 * identifying one (PS3.15 basic profile: names, IDs, dates of birth,
 * addresses and the rest are not read into this). Strings "" when absent. */
typedef struct img_dicom_meta {
    char study_uid[68], series_uid[68], modality[20], body_part[68], study_date[20];
    char series_desc[68], manufacturer[68], accession[20], sop_class[68];
    char image_type[68];    /* ImageType (LOCALIZER marks a scout) */
    double slice_thickness; /* mm; 0 when absent */
    int files, frames;      /* files read, and slices or frames in the image */
    int rows, cols;
    int has_pixels;         /* the file has PixelData (an image, not SR, RTSTRUCT, ...) */
    int has_position;       /* ImagePositionPatient and ImageOrientationPatient */
} img_dicom_meta;

/* Whether bytes are DICOM: "DICM" at offset 128 (Part 10). */
int img_is_dicom_mem(const void *data, size_t len);
/* Whether a path is DICOM: a directory (a series folder), a name ending
 * in .dcm / .dicom (any case), or a file with the Part 10 magic. */
int img_is_dicom_path(const char *path);

/* A DICOM volume from a file or a series folder (see above); meta may be
 * NULL.  max_voxels bounds the volume before any pixel is decoded.
 * Codes: IMG_IO, IMG_FORMAT, IMG_UNSUPPORTED, IMG_TOOBIG, IMG_NOMEM. */
int img_read_dicom(const char *path, const img_limits *lim, img_vol *out, img_dicom_meta *meta,
                   char *errbuf, size_t errlen);
int img_read_dicom_mem(const void *data, size_t len, const char *name, const img_limits *lim,
                       img_vol *out, img_dicom_meta *meta, char *errbuf, size_t errlen);
/* A DICOM radiograph (one frame; format IMG_FMT_DISPLAY). */
int img_read_dicom_2d(const char *path, const img_limits *lim, img_vol *out,
                      img_dicom_meta *meta, char *errbuf, size_t errlen);
int img_read_dicom_2d_mem(const void *data, size_t len, const char *name, const img_limits *lim,
                          img_vol *out, img_dicom_meta *meta, char *errbuf, size_t errlen);
/* The files a series folder is read from: regular files, no hidden ones and
 * no DICOMDIR, as dir/name paths in name order (malloc'd, each and the
 * array).  Codes: IMG_IO, IMG_FORMAT (no files), IMG_NOMEM. */
int img_dicom_series_files(const char *dir, char ***paths, int *n, char *errbuf, size_t errlen);

/* Only the header attributes of a DICOM file, a series folder (from its
 * first file's header, in name order: the series is checked when it is
 * read, not here; files and frames are the folder's file count) or a zip
 * of a series.  A file without pixel data is read too: has_pixels says
 * which. */
int img_read_dicom_meta(const char *path, img_dicom_meta *meta, char *errbuf, size_t errlen);

/* A volume by content: DICOM (img_is_dicom_path / _mem) or NIfTI. */
int img_read_volume(const char *path, const img_limits *lim, img_vol *out, char *errbuf,
                    size_t errlen);
int img_read_volume_mem(const void *data, size_t len, const char *name, const img_limits *lim,
                        img_vol *out, char *errbuf, size_t errlen);

/* Trilinear resampling of `in` (taken as axis-aligned with its spacing) to
 * target_spacing (mm, each finite and > 0), then centre crop or pad to
 * exactly nx x ny x nz.
 *
 * Convention: samples are voxel centres and the centres of the two fields
 * of view coincide.  Along an axis with n input voxels of spacing s and N
 * output voxels of spacing t, output voxel o samples input position
 *     c(o) = (n - 1) / 2 + (o - (N - 1) / 2) * t / s      (in input voxels)
 * Positions inside the input's field of view [-0.5, n - 0.5] are
 * interpolated (clamped to the outermost centres); positions outside it
 * take the pad value, the minimum of the input.  Trilinear interpolation
 * is exact on linear functions, so a ramp stays a ramp.  out->spacing is
 * target_spacing and out->affine is in->affine composed with this mapping.
 * `in` is not modified.  Codes: IMG_INVAL, IMG_TOOBIG (size_t overflow),
 * IMG_NOMEM. */
int img_resample(const img_vol *in, const float target_spacing[3], int nx, int ny, int nz,
                     img_vol *out, char *errbuf, size_t errlen);

/* Puts a 2-D NIfTI image (nz = 1, RAS order: i toward the patient's
 * right, j toward superior or anterior) in picture order, as radiographs
 * are shown and PNG radiographs are stored: row 0 at the top, column 0 the
 * patient's right.  That is half a turn, done in place with the affine
 * kept true; format becomes IMG_FMT_PICTURE.  Anything else (a PNG, a
 * volume, an image already turned) is left as it is. */
void img_picture_order(img_vol *v);

/* CT intensities: clamps Hounsfield units to [lo, hi] (lo < hi) and scales
 * them to [0, 1] in place.  Non-finite values become 0. */
void img_ct_window(img_vol *v, float lo, float hi);

/* MR intensities: maps the p_lo and p_hi percentiles (0 <= p_lo < p_hi <=
 * 100, e.g. 0.5 and 99.5) of the finite voxels to 0 and 1 in place and
 * clamps to [0, 1].  Percentiles interpolate linearly between order
 * statistics (numpy's default).  Non-finite voxels become 0, and so does a
 * constant image.  Codes: IMG_INVAL (percentiles), IMG_NOMEM (one scratch
 * copy of the voxels). */
int img_mr_scale(img_vol *v, float p_lo, float p_hi);

#endif
