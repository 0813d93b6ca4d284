/* trainer.h - contrastive pre-training of a medsem model (`medsem train`).
 *
 *   enc_trainer_opts o = ENC_TRAINER_OPTS_INIT;  enc_trainer *t;  char err[512];
 *   enc_trainer_new(config_json, tok, &o, &t, err, sizeof err);
 *   enc_trainer_add(t, ENC_VOLUME, x, "Small right pleural effusion.", err, sizeof err);
 *   for (...) enc_trainer_step(t, &stats, err, sizeof err);
 *   enc_trainer_save(t, "models/mine", err, sizeof err);  enc_trainer_free(t);
 *
 * A trainer owns a trainable random medsem model (encoder/model.h), a copy of
 * every training item already preprocessed (model input tensors and token
 * ids), an AdamW optimizer (encoder/train.h) over the model's parameters plus
 * CLIP's learnable log temperature, and the random generator that draws the
 * batches.  One step (docs/training.md):
 *   1. draw batch_volumes volumes and batch_images radiographs (with
 *      replacement, from the trainer's generator);
 *   2. encode the volumes with [CLS] attention kept; UniMedI attentive slice
 *      selection (enc_slice_select) picks slice_k axial slices of each, which
 *      join the radiographs as 2D pseudo-images of the volume's report;
 *   3. symmetric InfoNCE over every (visual, report) pair with a learnable
 *      temperature; targets are the identity over reports (a volume and its
 *      slices share one report, so they share the target mass) or, with
 *      soft_alpha > 0, ASG-style soft targets from finding tags parsed out of
 *      the report text (enc_report_tags), plus consistency * the 2D-3D
 *      consistency loss between each volume and the mean of its slices;
 *   4. backward through the three towers, gradient clipping, AdamW with a
 *      warmup + cosine learning rate.
 * Everything is deterministic for a given thread count: the same seed and
 * items give the same bits, and a run resumed from enc_trainer_ckpt_write
 * continues exactly as if never stopped (tests/encoder/test_trainer.c).
 *
 * Library rules: nothing is printed; functions return ENC_* codes with a
 * message in a caller-supplied errbuf (may be NULL when errlen is 0).
 */
#ifndef MEDSEM_ENCODER_TRAINER_H
#define MEDSEM_ENCODER_TRAINER_H

#include <stddef.h>
#include <stdint.h>

#include "encoder/model.h"
#include "encoder/tokenizer.h"
#include "encoder/train.h"

typedef struct enc_trainer enc_trainer;

typedef struct enc_trainer_opts {
    uint64_t seed;       /* initial weights and batch draws */
    int threads;         /* CPU threads (<= 0: all cores) */
    int batch_volumes;   /* volumes per step (each with its report) */
    int batch_images;    /* radiographs per step (each with its report) */
    int slice_k;         /* slices selected per volume; 0 turns slice selection off */
    float consistency;   /* weight of the 2D-3D consistency term (needs slice_k > 0) */
    float soft_alpha;    /* ASG soft targets' alpha; 0: hard targets */
    double lr;           /* peak learning rate */
    double weight_decay; /* AdamW decoupled weight decay (default decay mask) */
    double clip;         /* max global gradient norm; 0: no clipping */
    int64_t warmup;      /* linear warmup steps */
    int64_t total_steps; /* where the cosine reaches lr_floor * lr */
    double lr_floor;     /* final learning rate as a fraction of lr */
    int64_t soft_start;  /* soft targets apply from this step on (hard before it) */
    float augment;       /* 0: off; else the strength of per-sample augmentation:
                            shifts of up to round(2 * augment) pixels in-plane,
                            gain 1 +- 0.1 augment, offset +- 0.1 augment, noise
                            SD 0.05 augment (in normalised units) */
    float tag_weight;    /* weight of the report-tag prediction loss; 0: off */
} enc_trainer_opts;

#define ENC_TRAINER_OPTS_INIT {1, 0, 16, 16, 2, 0.5f, 0.0f, 3e-4, 0.05, 1.0, 50, 1000, 0.05, 0, 0.0f, 0.0f}

/* What one step did. */
typedef struct enc_trainer_stats {
    int64_t step;          /* updates taken so far (after this one) */
    double loss;           /* clip + consistency * cons */
    double clip_loss, cons_loss;
    double tag_loss;       /* report-tag prediction (0 when off) */
    double lr;             /* the learning rate this update used */
    double grad_norm;      /* before clipping */
    double temperature;    /* 1 / min(exp(log_scale), 100) after the update */
    int samples;           /* visual inputs encoded: volumes + radiographs + slices */
    int skipped;           /* 1: non-finite gradient, update skipped */
} enc_trainer_stats;

/* The default preset's config.json text (docs/training.md): ViT 128 wide,
 * 4 layers, 4 heads, MLP 256 over 64 x 64 images (patch 8) and 16 x 64 x 64
 * volumes (patch 4 x 8 x 8), so an axial slice is directly an image input;
 * BERT 128 wide, 2 layers, 128 tokens; embedding 128.  text.vocab_size is a
 * placeholder (1000): set it to the vocabulary's size.  Static string. */
const char *enc_trainer_default_config(void);

/* Makes a trainer for the medsem model described by config_json (the text of
 * a config.json, architecture "medsem"; "logit_scale" is the initial log
 * temperature), with weights drawn from o->seed.  tok is borrowed (it must
 * outlive the trainer) and must match the config's text vocabulary.
 * slice_k > 0 needs volume and image geometries such that an axial slice of
 * a volume is an image input: volume_size (D, H, W) with H, W = image_size,
 * and slice_k <= D.  Codes: ENC_INVAL (options, geometry, a vocabulary of
 * another size), the codes of enc_model_new_random, ENC_NOMEM. */
int enc_trainer_new(const char *config_json, const enc_tok *tok, const enc_trainer_opts *o,
                    enc_trainer **out, char *errbuf, size_t errlen);
void enc_trainer_free(enc_trainer *t); /* accepts NULL */

/* Adds one training item: x is a preprocessed input of kind (ENC_VOLUME
 * [C, D, H, W] or ENC_IMAGE [C, H, W], as enc_prep_* write it), copied;
 * report is its text, tokenized now and parsed for finding tags.  Items can
 * be added until the first step.  Codes: ENC_INVAL (kind, after a step, a
 * bad text), ENC_NOMEM. */
int enc_trainer_add(enc_trainer *t, enc_kind kind, const float *x, const char *report,
                    char *errbuf, size_t errlen);
/* Items of kind added so far. */
size_t enc_trainer_items(const enc_trainer *t, enc_kind kind);

/* One optimizer step (see the top of this file).  A kind without items is
 * left out of the batch; at least two pairs must be drawn in all.
 * *st (may be NULL) gets what happened.  Codes: ENC_INVAL (too few items),
 * encode and backward errors. */
int enc_trainer_step(enc_trainer *t, enc_trainer_stats *st, char *errbuf, size_t errlen);

/* Updates taken so far. */
int64_t enc_trainer_steps(const enc_trainer *t);

/* FLOPs of one step of the current options, counting the matrix products
 * of forward and backward (2 per multiply-add; the backward as twice the
 * forward) and the attention: for the throughput benchmark. */
double enc_trainer_step_flops(const enc_trainer *t);

/* Writes / reads a resumable checkpoint (enc_train_ckpt_write's format:
 * parameters incl. "logit_scale", AdamW moments and step, the batch
 * generator, and the options as JSON).  Reading needs a trainer made with
 * the same config; the options in the file are not applied (the caller
 * decides), except that the step count and generator continue.  Codes as
 * enc_train_ckpt_write / _read. */
int enc_trainer_ckpt_write(const enc_trainer *t, const char *path, char *errbuf, size_t errlen);
int enc_trainer_ckpt_read(enc_trainer *t, const char *path, char *errbuf, size_t errlen);

/* Writes dir/model.safetensors (every parameter under the loader's names,
 * F32, plus "logit_scale" [1]) and dir/config.json (the config with
 * "logit_scale" set to the learnt value), each atomically; dir must exist.
 * vocab.txt is the caller's.  Codes: ENC_IO, ENC_NOMEM. */
int enc_trainer_save(const enc_trainer *t, const char *dir, char *errbuf, size_t errlen);

/* The trained model (weights change with each step; owned by t), and the
 * flat parameter arena the optimizer updates (model parameters in table
 * order, then the log temperature): enc_adamw_count floats. */
enc_model *enc_trainer_model(enc_trainer *t);
const float *enc_trainer_params(const enc_trainer *t);
const enc_adamw *enc_trainer_optimizer(const enc_trainer *t);

/* ---- UniMedI attentive slice selection ------------------------------------ */

/* Picks k axial slices of one volume from its [CLS] -> patch attention.
 *   att   [Dp * Hp * Wp] in patch order (z, then y, then x), as
 *         enc_state_cls_attention gives for one volume
 *   grid  {Dp, Hp, Wp}: patches along each axis; patch_d: slices per patch
 *         along z (Pd), so the volume has Dp * Pd slices
 * A patch covers Pd slices, so scores live per patch-depth group: group g's
 * score is the sum of the attention of its Hp * Wp patches.  Groups are
 * ranked by score (ties to the lower g); the i-th pick is group rank[i % Dp]
 * and, in round r = i / Dp, the slice at offset Pd / 2, Pd / 2 - 1,
 * Pd / 2 + 1, ... of it (the centre first), so the k slices come from k
 * different groups whenever k <= Dp (Dp <= 1024; groups past that are
 * ignored).  Writes k slice indices (z, 0-based)
 * to slices, in pick order.  k <= Dp * Pd. */
void enc_slice_select(const float *att, const int grid[3], int patch_d, int k, int *slices);

/* ---- report finding tags (ASG soft targets) ------------------------------- */

#define ENC_REPORT_MAX_TAGS 32
/* Tag values are below this: findings 0..7, (finding, location) 8 + 16 f + loc. */
#define ENC_REPORT_TAG_SLOTS 136

/* Parses finding tags out of a report's text (never its labels): the text
 * is split into sentences ('.', ';', '\n'); in each, finding keywords and
 * synonyms (nodule, mass, pleural effusion / pleural fluid, pneumothorax,
 * consolidation / airspace opacity, cardiomegaly / enlarged heart or cardiac
 * silhouette, emphysema / bullae / hyperinflation) are found, and one that
 * follows a negation cue in its sentence ("no", "not", "without",
 * "negative for", "free of", "absence of") is negated, unless a "but" or
 * "however" comes between.  Each positive finding f gives tag f (1..7, the
 * order of ENC_SYNTH_FINDING_MAP) and, when its sentence names a location
 * (lobe, lung zone or base, or side; "bilateral" is both sides), tag
 * 8 + 16 f + location.  A report without a positive finding gets tag 0
 * (normal).  Writes at most cap sorted, distinct tags; returns how many. */
int enc_report_tags(const char *text, int32_t *tags, int cap);

#endif
