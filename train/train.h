/* train.h - pre-training the encoder (`medsem train`, `medsem eval`): the
 * trainer, and the self-contained parts it is built from: contrastive
 * losses, AdamW with clipping, schedule and resumable checkpoints, retrieval
 * metrics, the WordPiece vocabulary builder, UniMedI slice selection and the
 * report tag parser.  train/ uses encoder/ (the models' backward passes);
 * nothing in the engine below uses train/.
 *
 *   float *work = malloc(trn_loss_clip_work_floats(B) * sizeof(float));
 *   float loss = trn_loss_clip_forward(img, txt, B, E, log_scale, NULL, work);
 *   trn_loss_clip_backward(img, txt, B, E, log_scale, NULL, 1.0f, work, dimg, dtxt, &dls);
 *   trn_adamw_clip_grad_norm(opt, grads, 1.0f);
 *   trn_adamw_step(opt, params, grads, trn_lr(&sched, trn_adamw_steps(opt)));
 *
 * The parts know nothing of the model: losses work on embeddings and their
 * gradients, the optimizer on flat float arenas laid out like a parameter
 * table (encoder/model.h's enc_param), the metrics on embeddings and ids.
 * All of it is CPU code (host memory).  Functions that cannot fail at run
 * time return their result; the rest return ENC_* codes (encoder/encoder.h)
 * with a message in a caller-supplied errbuf (may be NULL when errlen is 0).
 * Bad arguments (NULL arrays, B < 1, ...) are programmer errors: asserts.
 * Each function states its exact formula; tests/train/test_train_parts.c
 * checks them against PyTorch (tests/fixtures/make_train_fixtures.py).
 */
#ifndef MEDSEM_TRAIN_H
#define MEDSEM_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "encoder/encoder.h"

/* ---- losses ---------------------------------------------------------------------
 *
 * Backward functions ADD to the gradients they are given (llm.c style: zero
 * them once, then every loss and layer accumulates), scaled by dloss, the
 * gradient of the total objective with respect to this loss (its weight).
 */

/* Floats of scratch that trn_loss_clip_forward / _backward need for a batch
 * of B: 3 B^2. */
size_t trn_loss_clip_work_floats(int B);

/* Symmetric InfoNCE (CLIP) over a batch of B pairs.
 *   a, b      [B, E]  the two towers' embeddings, L2-normalised by the caller
 *   log_scale         learnable log temperature s; scale = min(exp(s), 100)
 *   targets   [B, B]  soft targets T (rows sum to 1), or NULL for the identity
 *   work      trn_loss_clip_work_floats(B) floats, caller-owned
 * logits L = scale * a b^T; returns
 *   loss = 1/2 [ 1/B sum_i CE(L[i, :], T[i, :]) + 1/B sum_j CE(L[:, j], T[j, :]) ]
 * with CE(z, t) = -sum_k t_k log softmax(z)_k: row i (a_i against every b)
 * and column j (b_j against every a) both target row i / j of T, which is
 * torch's (F.cross_entropy(L, T) + F.cross_entropy(L.t(), T)) / 2.
 * Leaves in work what _backward needs. */
float trn_loss_clip_forward(const float *a, const float *b, int B, int E, float log_scale,
                            const float *targets, float *work);

/* Gradients of trn_loss_clip_forward's loss times dloss, added to da [B, E],
 * db [B, E] and *dlog_scale (any may be NULL to skip it).  Call right after
 * the forward with the same arguments and work (which it overwrites).  The
 * clamp passes no gradient to log_scale when exp(s) > 100, as torch's
 * clamp(max=100) does (at exactly 100 it does). */
void trn_loss_clip_backward(const float *a, const float *b, int B, int E, float log_scale,
                            const float *targets, float dloss, float *work, float *da,
                            float *db, float *dlog_scale);

/* ASG-style soft targets from per-item finding-tag sets, into T [B, B].
 * Item i's tags are tags[off[i] .. off[i + 1]) (any order; repeats count
 * once); off has B + 1 entries.
 *   W_ij = 1                             if i == j
 *   W_ij = alpha * Jaccard(S_i, S_j)     otherwise
 *   T_ij = W_ij / sum_k W_ik
 * Jaccard(A, B) = |A n B| / |A u B|, and 1 for two empty sets (two normal
 * studies are alike).  So with alpha = 0, T = I; with alpha = 1 an item with
 * the same tag set as i is as much i's positive as i's own pair.  alpha >= 0.
 * O(B^2 k^2) for k tags per item; allocates nothing. */
void trn_loss_soft_targets(const int32_t *tags, const size_t *off, int B, float alpha,
                           float *T);

/* The 2D-3D consistency term (UniMedI's slices against their volume):
 *   vol    [B, E]     volume embeddings
 *   slices [B, K, E]  the embeddings of each volume's K selected slices
 *   loss = 1/B sum_b (1 - cos(vol_b, m_b)),  m_b = 1/K sum_k slices_bk
 * cos(x, y) = x.y / (|x| |y|); a pair where |x| |y| < 1e-12 counts as cos 0
 * and passes no gradient.  The mean is taken before the cosine so the
 * slices agree with the volume as a set, not each one alone. */
float trn_loss_consistency_forward(const float *vol, const float *slices, int B, int K, int E);

/* Its gradient times dloss, added to dvol [B, E] and dslices [B, K, E]
 * (either may be NULL). */
void trn_loss_consistency_backward(const float *vol, const float *slices, int B, int K, int E,
                                   float dloss, float *dvol, float *dslices);

/* Mirror-image negatives: row i's visual embedding a_i [E] against its
 * report p_i and the same report with right and left swapped n_i (all
 * L2-normalised), for the rows with use[i] != 0 (use NULL: all):
 *   L = 1/R sum_i softplus(s (n_i . a_i - p_i . a_i)),  R = rows used
 * with s the CLIP scale, held constant.  The report must beat its mirror.
 * Backward adds dloss * dL/d{a, p, n} to da, dp, dn (any may be NULL);
 * 0 and no gradient when no row is used. */
float trn_loss_side_forward(const float *a, const float *p, const float *n,
                            const unsigned char *use, int B, int E, float scale);
void trn_loss_side_backward(const float *a, const float *p, const float *n,
                            const unsigned char *use, int B, int E, float scale, float dloss,
                            float *da, float *dp, float *dn);

/* ---- AdamW ---------------------------------------------------------------------------- */

typedef struct trn_adamw trn_adamw;

/* Hyper-parameters in double, as torch holds them (1 - beta1 is computed in
 * double and then rounded, as torch does).  decay: 1 when parameter (name,
 * rank) gets weight decay; NULL means trn_adamw_default_decay. */
typedef struct trn_adamw_opts {
    double beta1, beta2, eps, weight_decay;
    int (*decay)(const char *name, int rank, void *ctx);
    void *decay_ctx;
} trn_adamw_opts;

/* torch.optim.AdamW's defaults. */
#define TRN_ADAMW_OPTS_INIT {0.9, 0.999, 1e-8, 1e-2, NULL, NULL}

/* The usual CLIP / BERT rule: no decay for tensors of rank < 2 (biases,
 * LayerNorm weights and biases, logit_scale) nor for embedding tables and
 * learned tokens: names containing "embeddings." (BERT),
 * "position_embeddings", "pos_embed", "cls_token", "vision.pos2d",
 * "vision.pos3d" or "logit_scale".  Patch embeddings are convolutions and do
 * decay.  Returns 1 (decay) or 0. */
int trn_adamw_default_decay(const char *name, int rank, void *ctx);

/* An optimizer for the n parameters of table (names, ranks, shapes and
 * counts are copied; the data pointers are ignored).  Parameters, gradients
 * and the state are flat arenas: tensor i at trn_adamw_offset(i), in table
 * order, trn_adamw_count() floats in all.  The state (m then v, each laid
 * out like that) is one zeroed allocation.  o NULL: TRN_ADAMW_OPTS_INIT.
 * Codes: ENC_INVAL (n == 0, a count that disagrees with its shape, a
 * negative hyper-parameter, beta outside [0, 1)), ENC_NOMEM. */
int trn_adamw_new(const enc_param *table, size_t n, const trn_adamw_opts *o, trn_adamw **out,
                  char *errbuf, size_t errlen);
void trn_adamw_free(trn_adamw *opt); /* accepts NULL */

size_t trn_adamw_count(const trn_adamw *opt);             /* floats in an arena */
size_t trn_adamw_ntensors(const trn_adamw *opt);
size_t trn_adamw_offset(const trn_adamw *opt, size_t i);  /* i < ntensors */
const char *trn_adamw_name(const trn_adamw *opt, size_t i); /* owned by opt */
int trn_adamw_decays(const trn_adamw *opt, size_t i);     /* 1 if tensor i decays */
int64_t trn_adamw_steps(const trn_adamw *opt);            /* updates taken so far */
/* The first and second moments, trn_adamw_count floats each; owned by opt,
 * valid until trn_adamw_free. */
const float *trn_adamw_m(const trn_adamw *opt);
const float *trn_adamw_v(const trn_adamw *opt);

/* One update of params [count] from grads [count] at learning rate lr
 * (double, as torch's param_group["lr"]), operation for operation torch
 * 1.13's _single_tensor_adamw in float32: step += 1; p *= 1 - lr wd (decaying
 * tensors only); m = beta1 m + (1 - beta1) g; v = beta2 v + (1 - beta2) g^2;
 * p -= lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps).
 * (torch 2.x writes the m update as lerp, the same up to rounding.)
 * Deterministic: the same inputs give the same bits, so a resumed run
 * matches an uninterrupted one exactly. */
void trn_adamw_step(trn_adamw *opt, float *params, const float *grads, double lr);

/* torch.nn.utils.clip_grad_norm_(max_norm, norm_type=2) over grads
 * [count]: the global norm is the L2 norm of the per-tensor L2 norms; when
 * it exceeds max_norm every gradient is scaled by max_norm / (norm + 1e-6).
 * Returns the norm before clipping.  Unlike torch, a non-finite norm leaves
 * the gradients untouched (torch would scale them all to NaN): the caller
 * should skip that step. */
float trn_adamw_clip_grad_norm(const trn_adamw *opt, float *grads, float max_norm);

/* ---- schedule ------------------------------------------------------------------------- */

/* Linear warmup from 0, then half a cosine down to floor * lr:
 *   step <  warmup:  lr * step / warmup
 *   otherwise:       p = clamp((step - warmup) / max(1, total - warmup), 0, 1)
 *                    lr * (floor + (1 - floor) * (1 + cos(pi p)) / 2)
 * step counts updates taken before this one (0 for the first, so the first
 * update of a warmup runs at lr 0, as in HF's cosine schedules); past total
 * it stays at floor * lr.  This is torch's LambdaLR(opt, f) with f the
 * factor above, read before each optimizer.step(). */
typedef struct trn_sched {
    double lr;      /* peak learning rate */
    int64_t warmup; /* steps of linear warmup, >= 0 */
    int64_t total;  /* step at which the cosine reaches the floor */
    double floor;   /* final lr as a fraction of lr, in [0, 1] */
} trn_sched;

double trn_lr(const trn_sched *s, int64_t step);

/* ---- checkpoints ------------------------------------------------------------------------ */

/* Writes a resumable checkpoint to path (safetensors, atomically: a
 * temporary file renamed over path): every parameter under its own name
 * (so the file also loads as model weights), "adamw.m.<name>" and
 * "adamw.v.<name>", "train.step" [4], "train.rng" [nrng, 4] (each 64-bit
 * value as four 16-bit limbs, little end first, stored as exact floats) and
 * "train.hparams" [len] (the bytes of hparams_json, one float each).
 * params [count] is laid out like opt; rng may be NULL when nrng is 0;
 * hparams_json must be a JSON text (NULL: "{}").  Floats are stored bit
 * for bit.  Codes: ENC_INVAL (hparams not JSON, a name clash), ENC_IO,
 * ENC_NOMEM. */
int trn_ckpt_write(const char *path, const trn_adamw *opt, const float *params,
                         const uint64_t *rng, size_t nrng, const char *hparams_json,
                         char *errbuf, size_t errlen);

/* Reads a checkpoint written by trn_ckpt_write into opt (m, v, step),
 * params [count] and rng [nrng]; *hparams_json (when not NULL) gets a
 * malloc'd copy of the JSON text (free() it).  Every tensor of opt's table
 * must be there with its shape; other tensors are ignored.  Everything is
 * checked before anything is written: on failure opt, params, rng and
 * *hparams_json are untouched.  After a read, further steps give the same
 * bits as if training had never stopped.
 * Codes: ENC_IO, ENC_FORMAT (a malformed file or field), ENC_MISSING (a
 * tensor; errbuf names it), ENC_SHAPE (a shape, or nrng, differs),
 * ENC_UNSUPPORTED (a tensor not F32), ENC_NOMEM. */
int trn_ckpt_read(const char *path, trn_adamw *opt, float *params, uint64_t *rng,
                        size_t nrng, char **hparams_json, char *errbuf, size_t errlen);

/* ---- retrieval metrics ----------------------------------------------------------------- */

/* One side of an evaluation (queries or gallery).
 *   emb       [n, E]  L2-normalised embeddings
 *   pair      [n]     pair ids: a query's matches are the gallery items with
 *                     its pair id (recall@k)
 *   item      [n] or NULL: item ids; when both sides have them, gallery
 *                     items with the query's own item id are left out of its
 *                     ranking (image-to-image: the query is not its own hit)
 *   labels, label_off: item i's (finding, location) label ids are
 *                     labels[label_off[i] .. label_off[i + 1]) (any order,
 *                     repeats count once); label_off has n + 1 entries.
 *                     Both NULL: no label metrics (they come out 0). */
typedef struct trn_eval_set {
    const float *emb;
    size_t n;
    const int64_t *pair;
    const int64_t *item;
    const int32_t *labels;
    const size_t *label_off;
} trn_eval_set;

#define TRN_EVAL_NK 3 /* recall at 1, 5, 10 */

typedef struct trn_eval_metrics {
    double recall[TRN_EVAL_NK]; /* @1 @5 @10: share of queries with a match in the top k */
    double label_p10;           /* mean precision of the top 10 under label relevance */
    double map;                 /* mean average precision under label relevance */
    size_t n_queries;           /* queries with at least one candidate */
    size_t n_recall;            /* ... and at least one match: recall's denominator */
    size_t n_map;               /* ... and at least one label-relevant item: mAP's */
} trn_eval_metrics;

/* Exact search (cblas_sgemm inner products) of every query against the
 * gallery, ranked by score descending, ties to the lower gallery index (NaN
 * scores rank last).  Label relevance: gallery item g is relevant to query q
 * iff their label sets are equal (two empty sets are equal).
 *   recall@k    over queries with a match (n_recall)
 *   label_p10   (relevant in the top min(10, c)) / min(10, c), c = the
 *               query's candidates, over all n_queries
 *   map         AP = 1/R sum over relevant ranks r of (relevant at or
 *               above r) / r, over queries with R > 0 (n_map)
 * *chance gets the expectations of the same numbers under a uniformly
 * random ranking of each query's candidates, computed exactly
 * (trn_eval_chance_recall / trn_eval_chance_ap; precision: R / c).  Either
 * output may be NULL.  Working memory: 64 ng floats (at most 64 MB, more
 * only for a gallery over 2^24 items) plus 8 ng bytes and the labels; time
 * O(nq ng (E + log ng)): every query sorts its whole gallery (for AP).
 * Codes: ENC_INVAL (E < 1, a side with labels and the other without),
 * ENC_NOMEM. */
int trn_eval_retrieval(const trn_eval_set *queries, const trn_eval_set *gallery, int E,
                       trn_eval_metrics *model, trn_eval_metrics *chance, char *errbuf,
                       size_t errlen);

/* The label precision@10 that an oracle reaches: one that knows every
 * item's labels except the `hidden` ones (hidden[id] != 0 for a label id
 * below nhidden; NULL hides nothing).  It ranks first, in a uniformly random
 * order, the gallery items whose visible labels equal the query's, so a
 * query with n_exact items of its exact set among G items of its visible
 * set scores n_exact / max(G, min(10, c)) in expectation (c the query's
 * candidates, as in trn_eval_retrieval: the query's own item is left out
 * when both sides carry items).  Hiding nothing gives the ceiling of a
 * perfect model, min(n_exact, 10) / 10 where c >= 10.  The mean over the
 * queries with candidates goes to *p10 (0 when there are none).  Both sides
 * must carry labels.  Codes: ENC_INVAL (a side without labels), ENC_NOMEM. */
int trn_eval_label_ceiling(const trn_eval_set *queries, const trn_eval_set *gallery,
                           const unsigned char *hidden, size_t nhidden, double *p10,
                           char *errbuf, size_t errlen);

/* P(at least one of m marked items is in the top k of a uniformly random
 * order of n) = 1 - C(n - m, k) / C(n, k); 0 when m == 0. */
double trn_eval_chance_recall(size_t n, size_t m, size_t k);

/* E[AP] of a uniformly random order of n items of which R are relevant
 * (0 < R <= n): (1/n) [H_n + (R - 1)/(n - 1) (n - H_n)], H_n the n-th
 * harmonic number (1 when n == 1).  Derived from E[rel_k] = R/n and
 * E[rel_j rel_k] = R(R - 1) / (n(n - 1)) for j != k. */
double trn_eval_chance_ap(size_t n, size_t R);

/* Precision at k of one query q [E] against a gallery g [n, E] (inner
 * products, ties to the lower index, NaN last): the share of the top
 * min(k, n) with rel[j] != 0.  k <= 64.  0 for an empty gallery. */
double trn_eval_precision_at(const float *q, const float *g, size_t n, int E,
                             const unsigned char *rel, size_t k);

/* The area under the ROC curve of score for telling positive[i] != 0 from
 * the rest: the Mann-Whitney statistic, P(a positive outscores a
 * negative) with ties counted as half.  NaN when either class is empty
 * (or on running out of memory). */
double trn_eval_auc(const float *score, const unsigned char *positive, size_t n);

/* ---- WordPiece vocabulary ----------------------------------------------------------------- */

typedef struct trn_vocab_opts {
    int lower_case;       /* 1 (default): as the tokenizer's uncased default */
    size_t min_count;     /* pairs seen fewer times are never merged (default 2) */
    int ascii_alphabet;   /* 1 (default): every printable ASCII character (and
                           * "##" + each letter and digit) is in the vocabulary
                           * even when the corpus lacks it, so user text in
                           * ASCII never meets [UNK] */
} trn_vocab_opts;

#define TRN_VOCAB_OPTS_INIT {1, 2, 1}

/* Builds a BERT WordPiece vocabulary of at most vocab_size tokens (more
 * only when the specials and the alphabet alone are more) from the n
 * NUL-terminated UTF-8 texts.
 *   1. Pre-tokenizing as encoder/tokenizer.c does for ASCII: the special
 *      token strings are cut out, ASCII controls other than \t \n \r
 *      dropped, ASCII letters lower-cased (lower_case), words split at
 *      white space and at each ASCII punctuation character (!-/ :-@ [-`
 *      {-~), which becomes a word of its own; words over 100 code points are
 *      skipped (the tokenizer makes them [UNK] whatever the vocabulary).
 *      Other code points pass through unchanged: the tokenizer also
 *      normalises non-ASCII text (NFC, Unicode case and punctuation, accent
 *      stripping), which this builder does not mirror, so a corpus that
 *      is not ASCII may leave some [UNK]s.
 *   2. Each word starts as its characters: the first as itself, the others
 *      "##"-prefixed.  The vocabulary starts as [PAD] [UNK] [CLS] [SEP]
 *      [MASK] (so [PAD] = 0), then that alphabet (sorted bytewise, word-
 *      initial characters first), whatever vocab_size says.
 *   3. Repeatedly the adjacent pair (x, y) with the highest likelihood
 *      score count(xy) / (count(x) count(y)) (counts weighted by word
 *      frequency, in the current segmentation) among pairs seen at least
 *      min_count times is merged everywhere into x + y (y without its
 *      "##"), and the new token appended; ties go to the higher count(xy),
 *      then to the bytewise smaller merged token, then smaller x.  It stops
 *      at vocab_size tokens or when no pair qualifies.
 * The result is deterministic: the same texts give the same tokens.  Time
 * is O(merges x (distinct words + distinct pairs)): seconds for a corpus of
 * 10^4 distinct words, not meant for web-scale text.
 * On success *tokens is a malloc'd array of *ntok malloc'd strings in id
 * order (free with trn_vocab_free).  Codes: ENC_INVAL (invalid UTF-8),
 * ENC_NOMEM; *tokens and *ntok untouched on failure.  o NULL: defaults. */
int trn_vocab_build(const char *const *texts, size_t n, size_t vocab_size,
                    const trn_vocab_opts *o, char ***tokens, size_t *ntok);

/* Frees what trn_vocab_build returned.  Accepts NULL. */
void trn_vocab_free(char **tokens, size_t ntok);

/* Writes tokens as vocab.txt (one per line, "\n" after each) to path,
 * atomically (a temporary file renamed over path).  Codes: ENC_INVAL (a
 * token holding a line break), ENC_IO, ENC_NOMEM. */
int trn_vocab_write(const char *path, const char *const *tokens, size_t ntok, char *errbuf,
                    size_t errlen);

/* ---- the trainer: contrastive pre-training of a medsem model (`medsem train`)
 *
 *   trn_trainer_opts o = TRN_TRAINER_OPTS_INIT;  trn_trainer *t;  char err[512];
 *   trn_trainer_new(config_json, tok, &o, &t, err, sizeof err);
 *   trn_trainer_add(t, ENC_VOLUME, x, "Small right pleural effusion.", err, sizeof err);
 *   for (...) trn_trainer_step(t, &stats, err, sizeof err);
 *   trn_trainer_save(t, "models/mine", err, sizeof err);  trn_trainer_free(t);
 *
 * A trainer owns a trainable random medsem model (encoder/model.h), a copy of
 * every training item already preprocessed (model input tensors and token
 * ids), an AdamW optimizer (above) over the model's parameters plus
 * CLIP's learnable log temperature, and the random generator that draws the
 * batches.  One step (docs/train.md):
 *   1. draw batch_volumes volumes and batch_images radiographs (with
 *      replacement, from the trainer's generator);
 *   2. encode the volumes with [CLS] attention kept; UniMedI attentive slice
 *      selection (trn_slice_select) picks slice_k axial slices of each, which
 *      join the radiographs as 2D pseudo-images of the volume's report;
 *   3. symmetric InfoNCE over every (visual, report) pair with a learnable
 *      temperature; targets are the identity over reports (a volume and its
 *      slices share one report, so they share the target mass) or, with
 *      soft_alpha > 0, ASG-style soft targets from finding tags parsed out of
 *      the report text (trn_report_tags), plus consistency * the 2D-3D
 *      consistency loss between each volume and the mean of its slices;
 *   4. backward through the three towers, gradient clipping, AdamW with a
 *      warmup + cosine learning rate.
 * Everything is deterministic for a given thread count: the same seed and
 * items give the same bits, and a run resumed from trn_trainer_ckpt_write
 * continues exactly as if never stopped (tests/train/test_trainer.c).
 *
 * Library rules: nothing is printed; functions return ENC_* codes with a
 * message in a caller-supplied errbuf (may be NULL when errlen is 0).
 */

typedef struct trn_trainer trn_trainer;

typedef struct trn_trainer_opts {
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
    int tag_bce;         /* 1: the tag loss is multi-label (a sigmoid per tag slot),
                            0: a softmax over the slots against the tags spread evenly */
    float side_weight;   /* weight of the side-swapped negatives (a report against
                            itself with right and left swapped); 0: off */
    float phrase_rate;   /* share of a batch's reports replaced by a short phrase made
                            from the report itself (trn_report_phrase); 0: off */
    float lobe_rate;     /* with side_weight: the share of texts naming a lobe whose
                            negative swaps "upper" and "lower" ("middle" becomes
                            "lower") instead of the sides; 0: off */
    float vis_tag_weight; /* weight of the visual tag head: volumes and radiographs (not
                             slices) predict their report's tags through a head of their
                             own, a sigmoid per tag slot; 0: off */
    float pair_weight;   /* > 0: each step draws radiographs with the volume of the same
                            study (trn_trainer_pair), makes each pair's two reports
                            positives of both its rows, and pulls the pair's
                            embeddings together, 1 - cos, with this weight; 0: off */
} trn_trainer_opts;

#define TRN_TRAINER_OPTS_INIT                                                                      \
    {1, 0, 16, 16, 2, 0.5f, 0.0f, 3e-4, 0.05, 1.0, 50, 1000, 0.05, 0, 0.0f, 0.0f, 0, 0.0f, 0.0f,    \
     0.0f, 0.0f, 0.0f}

/* What one step did. */
typedef struct trn_trainer_stats {
    int64_t step;          /* updates taken so far (after this one) */
    double loss;           /* clip + the weighted consistency, tag, visual tag and side terms */
    double clip_loss, cons_loss;
    double tag_loss;       /* report-tag prediction (0 when off) */
    double vis_tag_loss;   /* the visual tag head's (0 when off) */
    double side_loss;      /* side-swapped negatives (0 when off) */
    double pair_loss;      /* the radiograph-volume pairs' mean 1 - cos (0 when off) */
    double lr;             /* the learning rate this update used */
    double grad_norm;      /* before clipping */
    double temperature;    /* 1 / min(exp(log_scale), 100) after the update */
    int samples;           /* visual inputs encoded: volumes + radiographs + slices */
    int skipped;           /* 1: non-finite gradient, update skipped */
} trn_trainer_stats;

/* The default preset's config.json text (docs/train.md): ViT 128 wide,
 * 4 layers, 4 heads, MLP 256 over 64 x 64 images (patch 8) and 16 x 64 x 64
 * volumes (patch 4 x 8 x 8), so an axial slice is directly an image input;
 * BERT 128 wide, 2 layers, 128 tokens; embedding 128.  text.vocab_size is a
 * placeholder (1000): set it to the vocabulary's size.  Static string. */
const char *trn_trainer_default_config(void);

/* Makes a trainer for the medsem model described by config_json (the text of
 * a config.json, architecture "medsem"; "logit_scale" is the initial log
 * temperature), with weights drawn from o->seed.  tok is borrowed (it must
 * outlive the trainer) and must match the config's text vocabulary.
 * slice_k > 0 needs volume and image geometries such that an axial slice of
 * a volume is an image input: volume_size (D, H, W) with H, W = image_size,
 * and slice_k <= D.  Codes: ENC_INVAL (options, geometry, a vocabulary of
 * another size), the codes of enc_model_new_random, ENC_NOMEM. */
int trn_trainer_new(const char *config_json, const enc_tok *tok, const trn_trainer_opts *o,
                    trn_trainer **out, char *errbuf, size_t errlen);
void trn_trainer_free(trn_trainer *t); /* accepts NULL */

/* Adds one training item: x is a preprocessed input of kind (ENC_VOLUME
 * [C, D, H, W] or ENC_IMAGE [C, H, W], as enc_prep_* write it), copied;
 * report is its text, tokenized now and parsed for finding tags.  Items can
 * be added until the first step.  Codes: ENC_INVAL (kind, after a step, a
 * bad text), ENC_NOMEM. */
int trn_trainer_add(trn_trainer *t, enc_kind kind, const float *x, const char *report,
                    char *errbuf, size_t errlen);
/* Makes room for n items of kind in all (those added so far included), so
 * that adding up to n allocates no more: without it the arrays double as
 * items come, and the inputs' arena (the bulk: 0.5 MB a volume on a 32 x 64
 * x 64 grid) may end up to twice the size it needs.  Room already there is
 * kept.  Codes: ENC_INVAL (kind, after a step), ENC_NOMEM (nothing lost). */
int trn_trainer_reserve(trn_trainer *t, enc_kind kind, size_t n, char *errbuf, size_t errlen);
/* Says that radiograph `image` and volume `volume` (their indices among the
 * items of their kind, in the order added) show one study, as a manifest's
 * "pair" names a volume's "study": with pair_weight > 0 the step draws them
 * together.  A radiograph has at most one volume; a volume may have several
 * radiographs.  Codes: ENC_INVAL (an index out of range, a radiograph paired
 * twice, after a step), ENC_NOMEM. */
int trn_trainer_pair(trn_trainer *t, size_t image, size_t volume, char *errbuf, size_t errlen);
/* Items of kind added so far. */
size_t trn_trainer_items(const trn_trainer *t, enc_kind kind);

/* One optimizer step (see the top of this file).  A kind without items is
 * left out of the batch; at least two pairs must be drawn in all.
 * *st (may be NULL) gets what happened.  Codes: ENC_INVAL (too few items),
 * encode and backward errors. */
int trn_trainer_step(trn_trainer *t, trn_trainer_stats *st, char *errbuf, size_t errlen);

/* Updates taken so far. */
int64_t trn_trainer_steps(const trn_trainer *t);

/* FLOPs of one step of the current options, counting the matrix products
 * of forward and backward (2 per multiply-add; the backward as twice the
 * forward) and the attention: for the throughput benchmark. */
double trn_trainer_step_flops(const trn_trainer *t);

/* Writes / reads a resumable checkpoint (trn_ckpt_write's format:
 * parameters incl. "logit_scale", AdamW moments and step, the batch
 * generator, and the options as JSON).  Reading needs a trainer made with
 * the same config; the options in the file are not applied (the caller
 * decides), except that the step count and generator continue.  Codes as
 * trn_ckpt_write / _read. */
int trn_trainer_ckpt_write(const trn_trainer *t, const char *path, char *errbuf, size_t errlen);
int trn_trainer_ckpt_read(trn_trainer *t, const char *path, char *errbuf, size_t errlen);

/* Starts t from the weights of a trained medsem model instead of random ones
 * (fine-tuning): path is a model.safetensors or a model directory holding
 * one.  Every model parameter of t is read under its own name and must have
 * its shape, with two exceptions that let a model move to a finer volume
 * grid:
 *   - vision.patch3d.weight may be r times shallower along z (the patch's
 *     depth pz / r): each source slice's weights are repeated r times and
 *     divided by r, so a volume sampled r times finer along z gives each
 *     token the embedding the source gave the coarser volume;
 *   - vision.pos3d may have another number of z-token planes: resampled
 *     linearly along z (pixel centres aligned, PyTorch's
 *     interpolate(align_corners=False)); the [CLS] row and the y, x grid must
 *     match.
 * "logit_scale" is taken when present.  Trainer-only parameters (the tag
 * head) keep their random start, and the optimizer and step count are
 * untouched (call before the first step, not with a checkpoint).  Nothing
 * changes unless every tensor fits.  Codes: ENC_INVAL (after a step),
 * ENC_MISSING (a parameter not in the file), ENC_SHAPE (a shape that does not
 * fit; the message names the tensor and both shapes), the codes of
 * enc_st_open and enc_st_get, ENC_NOMEM. */
int trn_trainer_init_from(trn_trainer *t, const char *path, char *errbuf, size_t errlen);

/* Writes dir/model.safetensors (every parameter under the loader's names,
 * F32, plus "logit_scale" [1]) and dir/config.json (the config with
 * "logit_scale" set to the learnt value), each atomically; dir must exist.
 * A dir/modality_means.json of older weights is removed first (it would
 * not fit the new ones; encoder/means.h).  vocab.txt is the caller's.
 * Codes: ENC_IO, ENC_NOMEM. */
int trn_trainer_save(const trn_trainer *t, const char *dir, char *errbuf, size_t errlen);

/* The trained model (weights change with each step; owned by t), and the
 * flat parameter arena the optimizer updates (model parameters in table
 * order, then the log temperature): trn_adamw_count floats. */
enc_model *trn_trainer_model(trn_trainer *t);
const float *trn_trainer_params(const trn_trainer *t);
const trn_adamw *trn_trainer_optimizer(const trn_trainer *t);

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
void trn_slice_select(const float *att, const int grid[3], int patch_d, int k, int *slices);

/* ---- report finding tags (ASG soft targets) ------------------------------- */

#define TRN_REPORT_MAX_TAGS 32
/* Tag values are below this: findings 0..7, (finding, location) 8 + 16 f + loc. */
#define TRN_REPORT_TAG_SLOTS 136

/* Parses finding tags out of a report's text (never its labels): the text
 * is split into sentences ('.', ';', '\n'); in each, finding keywords and
 * synonyms (nodule, mass, pleural effusion / pleural fluid, pneumothorax,
 * consolidation / airspace opacity, cardiomegaly / enlarged heart or cardiac
 * silhouette, emphysema / bullae / hyperinflation) are found, and one that
 * follows a negation cue in its sentence ("no", "not", "without",
 * "negative for", "free of", "absence of") is negated, unless a "but" or
 * "however" comes between.  Each positive finding f gives tag f (1..7, the
 * order of SYNTH_FINDING_MAP) and, when its sentence names a location
 * (lobe, lung zone or base, or side; "bilateral" is both sides), tag
 * 8 + 16 f + location.  A report without a positive finding gets tag 0
 * (normal).  Writes at most cap sorted, distinct tags; returns how many. */
int trn_report_tags(const char *text, int32_t *tags, int cap);

/* A short, query-like phrase made from a report's own text, as a user
 * would type it (the trainer's phrase_rate): for a report with a positive
 * finding, either a random non-empty subset of its sentences that state one
 * (section headers such as "Findings:" and list numbers dropped), or one of
 * its positive findings by name, with or without one of its locations
 * ("Pleural effusion.", "Right pleural effusion.", "Nodule in the left upper
 * lobe."); for a report without one, one of its own sentences or a short
 * normal phrase ("No acute findings.").  Everything said comes from the
 * report's text (trn_report_tags' reading of it), so the phrase's tags are a
 * subset of the report's.  Deterministic in seed.  Writes at most cap bytes
 * (NUL included; a longer phrase is cut at a sentence); returns its length. */
size_t trn_report_phrase(const char *report, uint64_t seed, char *out, size_t cap);

/* What trn_report_swap exchanges. */
typedef enum trn_swap {
    TRN_SWAP_SIDE, /* "right" and "left" */
    TRN_SWAP_LOBE  /* "upper" and "lower"; "middle" becomes "lower" */
} trn_swap;

/* A report's minimal-pair negative (the trainer's side_weight and
 * lobe_rate): text with the words of what exchanged, whole words in any
 * letter case, each letter's case kept where old and new word overlap
 * ("Right" -> "Left", "LOWER" -> "UPPER"); everything else as it was.
 * malloc'd (free it); NULL when out of memory. */
char *trn_report_swap(const char *text, trn_swap what);

#endif
