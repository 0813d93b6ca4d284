/* synth.h - the built-in chest benchmark: phantom CT volumes, radiographs,
 * reports and evaluation labels (`medsem synth`; see docs/synth.md).
 *
 *   enc_synth_opts o = {.seed = 1, .volumes = 200, .images = 200, .rescans = 20};
 *   enc_synth_stats st;  char err[512];
 *   if (enc_synth_dataset_write("bench", &o, &st, err, sizeof err)) puts(err);
 *   // bench/labels.json, bench/train.jsonl, bench/train/vol_000000.nii.gz, ...
 *   enc_synth_study s;  enc_synth_req rq = {.patient_seed = 7, .acq_seed = 8, .kinds = ENC_SYNTH_VOLUME};
 *   if (!enc_synth_study_make(&o, &rq, &s, err, sizeof err)) { ...; enc_synth_study_free(&s); }
 *
 * A study is drawn from two seeds: the patient seed fixes the phantom (body
 * size, anatomy, findings and where they sit), the acquisition seed fixes
 * everything a scanner changes (pose, rotation, spacing, storage order,
 * noise, contrast) and the wording of the report.  Rescans share the
 * patient seed; a radiograph "paired" with a CT shares it too.  All
 * randomness comes from enc_synth_rng (xoshiro256** seeded by splitmix64):
 * the same seeds give byte-identical files, whatever the thread count.
 *
 * Coordinates.  World millimetres are NIfTI RAS+ (+x = patient Right,
 * +y = Anterior, +z = Superior).  A volume's affine maps a voxel index
 * (i, j, k), the voxel's centre, to world mm.  A radiograph is a frontal
 * projection shown as a radiologist reads it: patient's right on the
 * image's left (column 0), superior at the top (row 0), bones bright.
 *
 * Library rules: nothing is printed and nothing exits; functions return an
 * enc_errno (encoder/encoder.h) with a one-line message naming the file or
 * field in the caller's errbuf (may be NULL); out-params are written only
 * on success.  No global state: every function may run in parallel on
 * different arguments.
 */
#ifndef MEDSEM_ENCODER_SYNTH_H
#define MEDSEM_ENCODER_SYNTH_H

#include <stddef.h>
#include <stdint.h>

#include "encoder/encoder.h"

/* ---- random numbers ----------------------------------------------------- */

/* xoshiro256** (Blackman and Vigna 2018), seeded through splitmix64.  The
 * same seed gives the same sequence on every platform. */
typedef struct enc_synth_rng {
    uint64_t s[4];
} enc_synth_rng;

void enc_synth_rng_seed(enc_synth_rng *r, uint64_t seed);
uint64_t enc_synth_rng_u64(enc_synth_rng *r);
double enc_synth_rng_uniform(enc_synth_rng *r);           /* [0, 1), 53 bits */
uint32_t enc_synth_rng_below(enc_synth_rng *r, uint32_t n); /* [0, n), unbiased; n > 0 */
double enc_synth_rng_normal(enc_synth_rng *r);            /* N(0, 1), Box-Muller */

/* ---- the label vocabulary ------------------------------------------------ */

/* The canonical findings and locations.  A label is one (finding,
 * location) pair of this vocabulary plus attributes; the exact set of
 * pairs of an item is what label precision compares.  Valid pairs:
 *   normal: chest;  nodule, mass, consolidation: one of the five lobes;
 *   pleural effusion, pneumothorax: right or left;  cardiomegaly: heart;
 *   emphysema: lungs. */
#define ENC_SYNTH_FINDING_MAP(XX)                                                                 \
    XX(NORMAL, "normal")                                                                          \
    XX(NODULE, "nodule")                                                                          \
    XX(MASS, "mass")                                                                              \
    XX(EFFUSION, "pleural effusion")                                                              \
    XX(PNEUMOTHORAX, "pneumothorax")                                                              \
    XX(CONSOLIDATION, "consolidation")                                                            \
    XX(CARDIOMEGALY, "cardiomegaly")                                                              \
    XX(EMPHYSEMA, "emphysema")

#define ENC_SYNTH_LOCATION_MAP(XX)                                                                \
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
#define ENC_SYNTH__F(name, str) ENC_SYNTH_##name,
    ENC_SYNTH_FINDING_MAP(ENC_SYNTH__F)
#undef ENC_SYNTH__F
        ENC_SYNTH_NFINDINGS
} enc_synth_finding;

typedef enum {
#define ENC_SYNTH__L(name, str) ENC_SYNTH_LOC_##name,
    ENC_SYNTH_LOCATION_MAP(ENC_SYNTH__L)
#undef ENC_SYNTH__L
        ENC_SYNTH_NLOCATIONS
} enc_synth_location;

/* Names as written in labels and labels.json ("pleural effusion",
 * "right upper lobe"); NULL for an out-of-range value. */
const char *enc_synth_finding_name(int finding);
const char *enc_synth_location_name(int location);
/* Whether (finding, location) is one of the valid pairs above. */
int enc_synth_pair_valid(int finding, int location);
/* The word for a grade (1..3) of a finding: "small" "moderate" "large" for
 * pleural effusion and pneumothorax, "mild" "moderate" "severe" for
 * cardiomegaly and emphysema; NULL for findings without grades. */
const char *enc_synth_grade_name(int finding, int grade);

#define ENC_SYNTH_MAX_LABELS 8

typedef struct enc_synth_label {
    enc_synth_finding finding;
    enc_synth_location location;
    int size_mm; /* nodule: largest diameter (4..30); mass: diameter (30..80); else 0 */
    int count;   /* nodule: how many in that lobe (1..3); else 1 */
    int grade;   /* 1..3 for effusion, pneumothorax, cardiomegaly, emphysema; else 0 */
} enc_synth_label;

enum { ENC_SYNTH_CT = 0, ENC_SYNTH_CR = 1 };

/* The findings of a study: a normal study has exactly one label, (normal,
 * chest).  Labels are sorted by finding, then location, and no pair
 * repeats.  `modality` is what the report describes (wording differs
 * between a CT and a radiograph report); it is not a label. */
typedef struct enc_synth_findings {
    int n;
    enc_synth_label label[ENC_SYNTH_MAX_LABELS];
    int modality; /* ENC_SYNTH_CT or ENC_SYNTH_CR */
} enc_synth_findings;

/* Checks a findings set (pairs, attributes, ranges, no repeats, normal
 * alone).  ENC_INVAL naming the label. */
int enc_synth_findings_check(const enc_synth_findings *f, char *errbuf, size_t errlen);

/* The labels as a JSON array, one object per label with the keys
 * "finding", "location" and, where they apply, "size_mm", "count", "size"
 * (effusion, pneumothorax) and "severity" (cardiomegaly, emphysema).
 * Returns ENC_OK, or ENC_TOOBIG when buf is too short (buf then holds a
 * truncated, NUL-terminated string). */
int enc_synth_labels_json(const enc_synth_findings *f, char *buf, size_t len);

/* A radiology report for f: "Findings:" and "Impression:" sections (after
 * an optional "Technique:" line), synonyms and templates drawn from r,
 * measurements with units, explicit negations of some absent findings.
 * Every label is mentioned; no negation contradicts a label.  Returns
 * ENC_OK, ENC_INVAL (f fails enc_synth_findings_check; buf gets ""), or
 * ENC_TOOBIG (truncated, NUL-terminated; 4096 bytes always suffice). */
int enc_synth_report(const enc_synth_findings *f, enc_synth_rng *r, char *buf, size_t len);

/* ---- options -------------------------------------------------------------- */

typedef enum { ENC_SYNTH_TRAIN, ENC_SYNTH_VAL, ENC_SYNTH_TEST } enc_synth_split;
typedef enum { ENC_SYNTH_SIZE_DEFAULT, ENC_SYNTH_SIZE_SMALL } enc_synth_size;

const char *enc_synth_split_name(int split); /* "train" "val" "test"; NULL if out of range */
int enc_synth_split_parse(const char *s, enc_synth_split *out);  /* ENC_INVAL if unknown */
int enc_synth_size_parse(const char *s, enc_synth_size *out);    /* "default" "small" */

/* Progress: called after each item with the count done, from whichever
 * generating thread finished it, with a lock held (never concurrently). */
typedef void (*enc_synth_progress_fn)(void *ctx, size_t done, size_t total);

typedef struct enc_synth_opts {
    uint64_t seed;
    size_t volumes;        /* CT volumes (new patients) */
    size_t images;         /* radiographs; up to half of them project a volume's phantom */
    size_t rescans;        /* new acquisitions of earlier items of this split */
    enc_synth_split split; /* train (0), val, test */
    enc_synth_size size;   /* default: ~96x96x48 CT, 224x224 radiograph; small: 64x64x~32, 128x128 */
    int threads;           /* <= 0: the online CPUs (at most 64) */
    enc_synth_progress_fn progress; /* may be NULL */
    void *ctx;
} enc_synth_opts;

/* ---- one study in memory ------------------------------------------------- */

enum { ENC_SYNTH_VOLUME = 1, ENC_SYNTH_IMAGE = 2 };
enum { ENC_SYNTH_STORE_RANDOM = 0, ENC_SYNTH_STORE_RAS = 1, ENC_SYNTH_STORE_LPS = 2 };

typedef struct enc_synth_req {
    uint64_t patient_seed; /* phantom, findings, their geometry */
    uint64_t acq_seed;     /* acquisition and report wording */
    unsigned kinds;        /* ENC_SYNTH_VOLUME and/or ENC_SYNTH_IMAGE (at least one) */
    const enc_synth_findings *findings; /* NULL: drawn from patient_seed; else these
                                           labels (checked; modality ignored) */
    int storage;        /* ENC_SYNTH_STORE_*: voxel order of the volume (random: half each) */
    double ct_noise_sd; /* 0: drawn (about 7-20 HU); > 0: this SD in HU; < 0: no noise */
} enc_synth_req;

/* Points kept for evaluation and tests (never written to the manifest). */
#define ENC_SYNTH_LANDMARK_MAP(XX)                                                                \
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
#define ENC_SYNTH__M(name, str) ENC_SYNTH_LM_##name,
    ENC_SYNTH_LANDMARK_MAP(ENC_SYNTH__M)
#undef ENC_SYNTH__M
        ENC_SYNTH_NLANDMARKS
} enc_synth_landmark;

const char *enc_synth_landmark_name(int landmark);

typedef struct enc_synth_study {
    enc_synth_findings findings; /* modality: CT when a volume was made, else CR */
    char *report;                /* owned, NUL-terminated */

    /* The CT (kinds & ENC_SYNTH_VOLUME), else vol == NULL.  HU = stored +
     * scl_inter (scl_slope 1).  data[(k * ny + j) * nx + i] in storage
     * order: with LPS storage i grows toward the patient's left. */
    int16_t *vol; /* owned */
    int nx, ny, nz;
    double spacing[3];
    double affine[4][4]; /* voxel centre -> RAS mm; written as both sform and qform */
    double scl_inter;    /* 0 or -1024 */

    /* The radiograph (kinds & ENC_SYNTH_IMAGE), else img == NULL: 16-bit
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
    double finding_ras[ENC_SYNTH_MAX_LABELS][3];
    double finding_px[ENC_SYNTH_MAX_LABELS][2];
    double landmark_ras[ENC_SYNTH_NLANDMARKS][3];
    double landmark_px[ENC_SYNTH_NLANDMARKS][2];
} enc_synth_study;

/* Generates one study into memory (o gives the size; its counts, split,
 * threads and progress are ignored).  Codes: ENC_INVAL (request or forced
 * findings), ENC_NOMEM.  Free with enc_synth_study_free. */
int enc_synth_study_make(const enc_synth_opts *o, const enc_synth_req *rq, enc_synth_study *out,
                         char *errbuf, size_t errlen);
void enc_synth_study_free(enc_synth_study *s); /* accepts NULL; zeroes *s */

/* Writes the volume as NIfTI-1 int16 (path ending in .nii.gz: gzip, else
 * plain .nii), 352-byte prologue, sform and qform (code 1, scanner anat).
 * A partial file is removed on failure.  Codes: ENC_INVAL (no volume),
 * ENC_IO naming the path. */
int enc_synth_write_nifti(const enc_synth_study *s, const char *path, char *errbuf,
                          size_t errlen);
/* Writes the radiograph as a 16-bit greyscale PNG.  Codes as above. */
int enc_synth_write_png(const enc_synth_study *s, const char *path, char *errbuf, size_t errlen);

/* ---- a whole dataset ------------------------------------------------------ */

typedef struct enc_synth_stats {
    size_t volumes, images, rescans; /* rescans are counted here only */
    size_t pairs;                    /* radiographs projected from a volume's phantom */
    uint64_t bytes;                  /* image and volume files */
} enc_synth_stats;

/* Writes dir/labels.json (the vocabulary), dir/<split>/ with
 * vol_NNNNNN.nii.gz and img_NNNNNN.png, and dir/<split>.jsonl (one JSON
 * object per item, written last through a temporary file and a rename, so
 * a manifest is never partial; the manifest of an earlier run of the split
 * is removed first).  dir is created when missing (its parent must exist);
 * existing files of the same names are replaced.  Items are made by
 * o->threads threads, each from its own seeds.  Codes:
 * ENC_INVAL (options: counts above the split's id range, unknown split or
 * size), ENC_IO naming the path, ENC_NOMEM. */
int enc_synth_dataset_write(const char *dir, const enc_synth_opts *o, enc_synth_stats *st,
                            char *errbuf, size_t errlen);

/* The vocabulary document written as labels.json (a NUL-terminated
 * string; ENC_TOOBIG as for enc_synth_labels_json; 8192 bytes suffice). */
int enc_synth_vocab_json(char *buf, size_t len);

#endif
