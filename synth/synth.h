/* synth.h - the built-in chest benchmark: phantom CT volumes, radiographs,
 * reports and evaluation labels (`medsem synth`; see docs/synth.md).
 *
 *   synth_opts o = {.seed = 1, .volumes = 200, .images = 200, .rescans = 20};
 *   synth_stats st;  char err[512];
 *   if (synth_dataset_write("bench", &o, &st, err, sizeof err)) puts(err);
 *   // bench/labels.json, bench/train.jsonl, bench/train/vol_000000.nii.gz, ...
 *   synth_study s;  synth_req rq = {.patient_seed = 7, .acq_seed = 8, .kinds = SYNTH_VOLUME};
 *   if (!synth_study_make(&o, &rq, &s, err, sizeof err)) { ...; synth_study_free(&s); }
 *
 * A study is drawn from two seeds: the patient seed fixes the phantom (body
 * size, anatomy, findings and where they sit), the acquisition seed fixes
 * everything a scanner changes (pose, rotation, spacing, storage order,
 * noise, contrast) and the wording of the report.  Rescans share the
 * patient seed; a radiograph "paired" with a CT shares it too.  All
 * randomness comes from synth_rng (xoshiro256** seeded by splitmix64):
 * the same seeds give byte-identical files, whatever the thread count.
 *
 * Coordinates.  World millimetres are NIfTI RAS+ (+x = patient Right,
 * +y = Anterior, +z = Superior).  A volume's affine maps a voxel index
 * (i, j, k), the voxel's centre, to world mm.  A radiograph is a frontal
 * projection shown as a radiologist reads it: patient's right on the
 * image's left (column 0), superior at the top (row 0), bones bright.
 *
 * Library rules: nothing is printed and nothing exits; functions return a
 * synth_errno with a one-line message naming the file or
 * field in the caller's errbuf (may be NULL); out-params are written only
 * on success.  No global state: every function may run in parallel on
 * different arguments.
 */
#ifndef MEDSEM_SYNTH_H
#define MEDSEM_SYNTH_H

#include <stddef.h>
#include <stdint.h>

#define SYNTH_ERRNO_MAP(XX)                                                   \
    XX(OK, "success")                                                         \
    XX(NOMEM, "out of memory")                                                \
    XX(IO, "input/output error")                                              \
    XX(INVAL, "invalid argument")                                             \
    XX(TOOBIG, "output exceeds its buffer")

typedef enum {
#define SYNTH__ENUM(name, msg) SYNTH_##name,
    SYNTH_ERRNO_MAP(SYNTH__ENUM)
#undef SYNTH__ENUM
    SYNTH_NERR
} synth_errno;

const char *synth_strerror(int code);
const char *synth_errname(int code);

/* ---- random numbers ----------------------------------------------------- */

/* xoshiro256** (Blackman and Vigna 2018), seeded through splitmix64.  The
 * same seed gives the same sequence on every platform. */
typedef struct synth_rng {
    uint64_t s[4];
} synth_rng;

void synth_rng_seed(synth_rng *r, uint64_t seed);
uint64_t synth_rng_u64(synth_rng *r);
double synth_rng_uniform(synth_rng *r);           /* [0, 1), 53 bits */
uint32_t synth_rng_below(synth_rng *r, uint32_t n); /* [0, n), unbiased; n > 0 */
double synth_rng_normal(synth_rng *r);            /* N(0, 1), Box-Muller */

/* ---- the label vocabulary ------------------------------------------------ */

/* The canonical findings and locations.  A label is one (finding,
 * location) pair of this vocabulary plus attributes; the exact set of
 * pairs of an item is what label precision compares.  Valid pairs:
 *   normal: chest;  nodule, mass, consolidation: one of the five lobes;
 *   pleural effusion, pneumothorax: right or left;  cardiomegaly: heart;
 *   emphysema: lungs. */
#define SYNTH_FINDING_MAP(XX)                                                                 \
    XX(NORMAL, "normal")                                                                          \
    XX(NODULE, "nodule")                                                                          \
    XX(MASS, "mass")                                                                              \
    XX(EFFUSION, "pleural effusion")                                                              \
    XX(PNEUMOTHORAX, "pneumothorax")                                                              \
    XX(CONSOLIDATION, "consolidation")                                                            \
    XX(CARDIOMEGALY, "cardiomegaly")                                                              \
    XX(EMPHYSEMA, "emphysema")

#define SYNTH_LOCATION_MAP(XX)                                                                \
    XX(RUL, "right upper lobe")                                                                   \
    XX(RML, "right middle lobe")                                                                  \
    XX(RLL, "right lower lobe")                                                                   \
    XX(LUL, "left upper lobe")                                                                    \
    XX(LLL, "left lower lobe")                                                                    \
    XX(RIGHT, "right")                                                                            \
    XX(LEFT, "left")                                                                              \
    XX(HEART, "heart")                                                                            \
    XX(LUNGS, "lungs")                                                                            \
    XX(CHEST, "chest")

typedef enum {
#define SYNTH__F(name, str) SYNTH_##name,
    SYNTH_FINDING_MAP(SYNTH__F)
#undef SYNTH__F
        SYNTH_NFINDINGS
} synth_finding;

typedef enum {
#define SYNTH__L(name, str) SYNTH_LOC_##name,
    SYNTH_LOCATION_MAP(SYNTH__L)
#undef SYNTH__L
        SYNTH_NLOCATIONS
} synth_location;

/* Names as written in labels and labels.json ("pleural effusion",
 * "right upper lobe"); NULL for an out-of-range value. */
const char *synth_finding_name(int finding);
const char *synth_location_name(int location);
/* Whether (finding, location) is one of the valid pairs above. */
int synth_pair_valid(int finding, int location);
/* The word for a grade (1..3) of a finding: "small" "moderate" "large" for
 * pleural effusion and pneumothorax, "mild" "moderate" "severe" for
 * cardiomegaly and emphysema; NULL for findings without grades. */
const char *synth_grade_name(int finding, int grade);

#define SYNTH_MAX_LABELS 8

typedef struct synth_label {
    synth_finding finding;
    synth_location location;
    int size_mm; /* nodule: largest diameter (4..30); mass: diameter (30..80); else 0 */
    int count;   /* nodule: how many in that lobe (1..3); else 1 */
    int grade;   /* 1..3 for effusion, pneumothorax, cardiomegaly, emphysema; else 0 */
} synth_label;

enum { SYNTH_CT = 0, SYNTH_CR = 1 };

/* The findings of a study: a normal study has exactly one label, (normal,
 * chest).  Labels are sorted by finding, then location, and no pair
 * repeats.  `modality` is what the report describes (wording differs
 * between a CT and a radiograph report); it is not a label. */
typedef struct synth_findings {
    int n;
    synth_label label[SYNTH_MAX_LABELS];
    int modality; /* SYNTH_CT or SYNTH_CR */
} synth_findings;

/* Checks a findings set (pairs, attributes, ranges, no repeats, normal
 * alone).  SYNTH_INVAL naming the label. */
int synth_findings_check(const synth_findings *f, char *errbuf, size_t errlen);

/* The labels as a JSON array, one object per label with the keys
 * "finding", "location" and, where they apply, "size_mm", "count", "size"
 * (effusion, pneumothorax) and "severity" (cardiomegaly, emphysema).
 * Returns SYNTH_OK, or SYNTH_TOOBIG when buf is too short (buf then holds a
 * truncated, NUL-terminated string). */
int synth_labels_json(const synth_findings *f, char *buf, size_t len);

/* A radiology report for f: "Findings:" and "Impression:" sections (after
 * an optional "Technique:" line), synonyms and templates drawn from r,
 * measurements with units, explicit negations of some absent findings.
 * Every label is mentioned; no negation contradicts a label.  Returns
 * SYNTH_OK, SYNTH_INVAL (f fails synth_findings_check; buf gets ""), or
 * SYNTH_TOOBIG (truncated, NUL-terminated; 4096 bytes always suffice). */
int synth_report(const synth_findings *f, synth_rng *r, char *buf, size_t len);

/* ---- options -------------------------------------------------------------- */

typedef enum { SYNTH_TRAIN, SYNTH_VAL, SYNTH_TEST } synth_split;
typedef enum { SYNTH_SIZE_DEFAULT, SYNTH_SIZE_SMALL } synth_size;

const char *synth_split_name(int split); /* "train" "val" "test"; NULL if out of range */
int synth_split_parse(const char *s, synth_split *out);  /* SYNTH_INVAL if unknown */
int synth_size_parse(const char *s, synth_size *out);    /* "default" "small" */

/* Progress: called after each item with the count done, from whichever
 * generating thread finished it, with a lock held (never concurrently). */
typedef void (*synth_progress_fn)(void *ctx, size_t done, size_t total);

typedef enum { SYNTH_FORMAT_NIFTI = 0, SYNTH_FORMAT_DICOM = 1 } synth_format;

typedef struct synth_opts {
    uint64_t seed;
    size_t volumes;        /* CT volumes (new patients) */
    size_t images;         /* radiographs; up to half of them project a volume's phantom */
    size_t rescans;        /* new acquisitions of earlier items of this split */
    synth_split split; /* train (0), val, test */
    synth_size size;   /* default: ~96x96x48 CT, 224x224 radiograph; small: 64x64x~32, 128x128 */
    int threads;           /* <= 0: the online CPUs (at most 64) */
    synth_progress_fn progress; /* may be NULL */
    void *ctx;
    synth_format format; /* NIfTI + PNG (default), or DICOM: a series folder per volume,
                            a DX file per radiograph, and <split>.reports.csv */
} synth_opts;

/* ---- one study in memory ------------------------------------------------- */

enum { SYNTH_VOLUME = 1, SYNTH_IMAGE = 2 };
enum { SYNTH_STORE_RANDOM = 0, SYNTH_STORE_RAS = 1, SYNTH_STORE_LPS = 2 };

typedef struct synth_req {
    uint64_t patient_seed; /* phantom, findings, their geometry */
    uint64_t acq_seed;     /* acquisition and report wording */
    unsigned kinds;        /* SYNTH_VOLUME and/or SYNTH_IMAGE (at least one) */
    const synth_findings *findings; /* NULL: drawn from patient_seed; else these
                                           labels (checked; modality ignored) */
    int storage;        /* SYNTH_STORE_*: voxel order of the volume (random: half each) */
    double ct_noise_sd; /* 0: drawn (about 7-20 HU); > 0: this SD in HU; < 0: no noise */
} synth_req;

/* Points kept for evaluation and tests (never written to the manifest). */
#define SYNTH_LANDMARK_MAP(XX)                                                                \
    XX(HEART, "heart")                                                                            \
    XX(SPINE, "vertebral body")                                                                   \
    XX(AORTA, "descending aorta")                                                                 \
    XX(LUNG_R, "right lung")                                                                      \
    XX(LUNG_L, "left lung")                                                                       \
    XX(TRACHEA, "trachea")                                                                        \
    XX(FAT, "subcutaneous fat")                                                                   \
    XX(LIVER, "liver")                                                                            \
    XX(OUTSIDE, "air outside the body")

typedef enum {
#define SYNTH__M(name, str) SYNTH_LM_##name,
    SYNTH_LANDMARK_MAP(SYNTH__M)
#undef SYNTH__M
        SYNTH_NLANDMARKS
} synth_landmark;

const char *synth_landmark_name(int landmark);

typedef struct synth_study {
    synth_findings findings; /* modality: CT when a volume was made, else CR */
    char *report;                /* owned, NUL-terminated */

    /* The CT (kinds & SYNTH_VOLUME), else vol == NULL.  HU = stored +
     * scl_inter (scl_slope 1).  data[(k * ny + j) * nx + i] in storage
     * order: with LPS storage i grows toward the patient's left. */
    int16_t *vol; /* owned */
    int nx, ny, nz;
    double spacing[3];
    double affine[4][4]; /* voxel centre -> RAS mm; written as both sform and qform */
    double scl_inter;    /* 0 or -1024 */

    /* The radiograph (kinds & SYNTH_IMAGE), else img == NULL: 16-bit
     * grey, row-major, row 0 at the top, column 0 the patient's right. */
    uint16_t *img; /* owned */
    int width, height;
    double pixel_mm;

    /* Evaluation geometry.  finding_ras[l]: a point inside label l's
     * finding (a nodule's or mass's centre, a point in the fluid, the air,
     * the consolidation, the heart; a bulla for emphysema; a lung point for
     * normal) in the volume's world frame; finding_px[l]: the same point
     * projected on the radiograph (column, row).  Landmarks likewise.
     * Values for a kind not made are 0. */
    double finding_ras[SYNTH_MAX_LABELS][3];
    double finding_px[SYNTH_MAX_LABELS][2];
    double landmark_ras[SYNTH_NLANDMARKS][3];
    double landmark_px[SYNTH_NLANDMARKS][2];
} synth_study;

/* Generates one study into memory (o gives the size; its counts, split,
 * threads and progress are ignored).  Codes: SYNTH_INVAL (request or forced
 * findings), SYNTH_NOMEM.  Free with synth_study_free. */
int synth_study_make(const synth_opts *o, const synth_req *rq, synth_study *out,
                         char *errbuf, size_t errlen);
void synth_study_free(synth_study *s); /* accepts NULL; zeroes *s */

/* Writes the volume as NIfTI-1 int16 (path ending in .nii.gz: gzip, else
 * plain .nii), 352-byte prologue, sform and qform (code 1, scanner anat).
 * A partial file is removed on failure.  Codes: SYNTH_INVAL (no volume),
 * SYNTH_IO naming the path. */
int synth_write_nifti(const synth_study *s, const char *path, char *errbuf,
                          size_t errlen);
/* Writes the radiograph as a 16-bit greyscale PNG.  Codes as above. */
int synth_write_png(const synth_study *s, const char *path, char *errbuf, size_t errlen);

/* Where a study sits, for its DICOM identifiers: UIDs under 2.25 derived
 * from (seed, study), AccessionNumber S<study>, PatientID P<patient>. */
typedef struct synth_dicom_ids {
    uint64_t seed, patient, study;
} synth_dicom_ids;
/* Writes the study as DICOM Part 10, explicit VR little endian: a volume
 * as a CT series, one file per slice (path: a folder, created; files
 * 0000.dcm ...; the stored int16 values with RescaleIntercept, the
 * geometry of the affine in LPS), a radiograph as one DX file (path)
 * with PixelSpacing, no window (its 16-bit range is the display range, so
 * it reads as the PNG does).  The headers carry a synthetic PatientName and
 * PatientID, which medsem must never keep.  Codes as above. */
int synth_write_dicom(const synth_study *s, const char *path, const synth_dicom_ids *ids,
                      char *errbuf, size_t errlen);

/* ---- a whole dataset ------------------------------------------------------ */

typedef struct synth_stats {
    size_t volumes, images, rescans; /* rescans are counted here only */
    size_t pairs;                    /* radiographs projected from a volume's phantom */
    uint64_t bytes;                  /* image and volume files */
} synth_stats;

/* Writes dir/labels.json (the vocabulary), dir/<split>/ with
 * vol_NNNNNN.nii.gz and img_NNNNNN.png, and dir/<split>.jsonl (one JSON
 * object per item, written last through a temporary file and a rename, so
 * a manifest is never partial; the manifest of an earlier run of the split
 * is removed first).  dir is created when missing (its parent must exist);
 * existing files of the same names are replaced.  Items are made by
 * o->threads threads, each from its own seeds.  Codes:
 * SYNTH_INVAL (options: counts above the split's id range, unknown split or
 * size), SYNTH_IO naming the path, SYNTH_NOMEM. */
int synth_dataset_write(const char *dir, const synth_opts *o, synth_stats *st,
                            char *errbuf, size_t errlen);

/* The vocabulary document written as labels.json (a NUL-terminated
 * string; SYNTH_TOOBIG as for synth_labels_json; 8192 bytes suffice). */
int synth_vocab_json(char *buf, size_t len);

#endif
