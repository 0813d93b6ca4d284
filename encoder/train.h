/* train.h - the self-contained parts of training: contrastive losses, AdamW
 * with clipping, schedule and resumable checkpoints, retrieval metrics, and
 * the WordPiece vocabulary builder.
 *
 *   float *work = malloc(enc_loss_clip_work_floats(B) * sizeof(float));
 *   float loss = enc_loss_clip_forward(img, txt, B, E, log_scale, NULL, work);
 *   enc_loss_clip_backward(img, txt, B, E, log_scale, NULL, 1.0f, work, dimg, dtxt, &dls);
 *   enc_adamw_clip_grad_norm(opt, grads, 1.0f);
 *   enc_adamw_step(opt, params, grads, enc_train_lr(&sched, enc_adamw_steps(opt)));
 *
 * Nothing here knows the model: losses work on embeddings and their
 * gradients, the optimizer on flat float arenas laid out like a parameter
 * table (encoder/model.h's enc_param), the metrics on embeddings and ids.
 * All of it is CPU code (host memory).  Functions that cannot fail at run
 * time return their result; the rest return ENC_* codes (encoder/encoder.h)
 * with a message in a caller-supplied errbuf (may be NULL when errlen is 0).
 * Bad arguments (NULL arrays, B < 1, ...) are programmer errors: asserts.
 * Each function states its exact formula; tests/encoder/test_train_parts.c
 * checks them against PyTorch (tests/fixtures/make_train_fixtures.py).
 */
#ifndef MEDSEM_ENCODER_TRAIN_H
#define MEDSEM_ENCODER_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "encoder/encoder.h"
#include "encoder/model.h"

/* ---- losses ---------------------------------------------------------------------
 *
 * Backward functions ADD to the gradients they are given (llm.c style: zero
 * them once, then every loss and layer accumulates), scaled by dloss, the
 * gradient of the total objective with respect to this loss (its weight).
 */

/* Floats of scratch that enc_loss_clip_forward / _backward need for a batch
 * of B: 3 B^2. */
size_t enc_loss_clip_work_floats(int B);

/* Symmetric InfoNCE (CLIP) over a batch of B pairs.
 *   a, b      [B, E]  the two towers' embeddings, L2-normalised by the caller
 *   log_scale         learnable log temperature s; scale = min(exp(s), 100)
 *   targets   [B, B]  soft targets T (rows sum to 1), or NULL for the identity
 *   work      enc_loss_clip_work_floats(B) floats, caller-owned
 * logits L = scale * a b^T; returns
 *   loss = 1/2 [ 1/B sum_i CE(L[i, :], T[i, :]) + 1/B sum_j CE(L[:, j], T[j, :]) ]
 * with CE(z, t) = -sum_k t_k log softmax(z)_k: row i (a_i against every b)
 * and column j (b_j against every a) both target row i / j of T, which is
 * torch's (F.cross_entropy(L, T) + F.cross_entropy(L.t(), T)) / 2.
 * Leaves in work what _backward needs. */
float enc_loss_clip_forward(const float *a, const float *b, int B, int E, float log_scale,
                            const float *targets, float *work);

/* Gradients of enc_loss_clip_forward's loss times dloss, added to da [B, E],
 * db [B, E] and *dlog_scale (any may be NULL to skip it).  Call right after
 * the forward with the same arguments and work (which it overwrites).  The
 * clamp passes no gradient to log_scale when exp(s) > 100, as torch's
 * clamp(max=100) does (at exactly 100 it does). */
void enc_loss_clip_backward(const float *a, const float *b, int B, int E, float log_scale,
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
void enc_loss_soft_targets(const int32_t *tags, const size_t *off, int B, float alpha,
                           float *T);

/* The 2D-3D consistency term (UniMedI's slices against their volume):
 *   vol    [B, E]     volume embeddings
 *   slices [B, K, E]  the embeddings of each volume's K selected slices
 *   loss = 1/B sum_b (1 - cos(vol_b, m_b)),  m_b = 1/K sum_k slices_bk
 * cos(x, y) = x.y / (|x| |y|); a pair where |x| |y| < 1e-12 counts as cos 0
 * and passes no gradient.  The mean is taken before the cosine so the
 * slices agree with the volume as a set, not each one alone. */
float enc_loss_consistency_forward(const float *vol, const float *slices, int B, int K, int E);

/* Its gradient times dloss, added to dvol [B, E] and dslices [B, K, E]
 * (either may be NULL). */
void enc_loss_consistency_backward(const float *vol, const float *slices, int B, int K, int E,
                                   float dloss, float *dvol, float *dslices);

/* ---- AdamW ---------------------------------------------------------------------------- */

typedef struct enc_adamw enc_adamw;

/* Hyper-parameters in double, as torch holds them (1 - beta1 is computed in
 * double and then rounded, as torch does).  decay: 1 when parameter (name,
 * rank) gets weight decay; NULL means enc_adamw_default_decay. */
typedef struct enc_adamw_opts {
    double beta1, beta2, eps, weight_decay;
    int (*decay)(const char *name, int rank, void *ctx);
    void *decay_ctx;
} enc_adamw_opts;

/* torch.optim.AdamW's defaults. */
#define ENC_ADAMW_OPTS_INIT {0.9, 0.999, 1e-8, 1e-2, NULL, NULL}

/* The usual CLIP / BERT rule: no decay for tensors of rank < 2 (biases,
 * LayerNorm weights and biases, logit_scale) nor for embedding tables and
 * learned tokens: names containing "embeddings." (BERT),
 * "position_embeddings", "pos_embed", "cls_token", "vision.pos2d",
 * "vision.pos3d" or "logit_scale".  Patch embeddings are convolutions and do
 * decay.  Returns 1 (decay) or 0. */
int enc_adamw_default_decay(const char *name, int rank, void *ctx);

/* An optimizer for the n parameters of table (names, ranks, shapes and
 * counts are copied; the data pointers are ignored).  Parameters, gradients
 * and the state are flat arenas: tensor i at enc_adamw_offset(i), in table
 * order, enc_adamw_count() floats in all.  The state (m then v, each laid
 * out like that) is one zeroed allocation.  o NULL: ENC_ADAMW_OPTS_INIT.
 * Codes: ENC_INVAL (n == 0, a count that disagrees with its shape, a
 * negative hyper-parameter, beta outside [0, 1)), ENC_NOMEM. */
int enc_adamw_new(const enc_param *table, size_t n, const enc_adamw_opts *o, enc_adamw **out,
                  char *errbuf, size_t errlen);
void enc_adamw_free(enc_adamw *opt); /* accepts NULL */

size_t enc_adamw_count(const enc_adamw *opt);             /* floats in an arena */
size_t enc_adamw_ntensors(const enc_adamw *opt);
size_t enc_adamw_offset(const enc_adamw *opt, size_t i);  /* i < ntensors */
const char *enc_adamw_name(const enc_adamw *opt, size_t i); /* owned by opt */
int enc_adamw_decays(const enc_adamw *opt, size_t i);     /* 1 if tensor i decays */
int64_t enc_adamw_steps(const enc_adamw *opt);            /* updates taken so far */
/* The first and second moments, enc_adamw_count floats each; owned by opt,
 * valid until enc_adamw_free. */
const float *enc_adamw_m(const enc_adamw *opt);
const float *enc_adamw_v(const enc_adamw *opt);

/* One update of params [count] from grads [count] at learning rate lr
 * (double, as torch's param_group["lr"]), operation for operation torch
 * 1.13's _single_tensor_adamw in float32: step += 1; p *= 1 - lr wd (decaying
 * tensors only); m = beta1 m + (1 - beta1) g; v = beta2 v + (1 - beta2) g^2;
 * p -= lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps).
 * (torch 2.x writes the m update as lerp, the same up to rounding.)
 * Deterministic: the same inputs give the same bits, so a resumed run
 * matches an uninterrupted one exactly. */
void enc_adamw_step(enc_adamw *opt, float *params, const float *grads, double lr);

/* torch.nn.utils.clip_grad_norm_(max_norm, norm_type=2) over grads
 * [count]: the global norm is the L2 norm of the per-tensor L2 norms; when
 * it exceeds max_norm every gradient is scaled by max_norm / (norm + 1e-6).
 * Returns the norm before clipping.  Unlike torch, a non-finite norm leaves
 * the gradients untouched (torch would scale them all to NaN): the caller
 * should skip that step. */
float enc_adamw_clip_grad_norm(const enc_adamw *opt, float *grads, float max_norm);

/* ---- schedule ------------------------------------------------------------------------- */

/* Linear warmup from 0, then half a cosine down to floor * lr:
 *   step <  warmup:  lr * step / warmup
 *   otherwise:       p = clamp((step - warmup) / max(1, total - warmup), 0, 1)
 *                    lr * (floor + (1 - floor) * (1 + cos(pi p)) / 2)
 * step counts updates taken before this one (0 for the first, so the first
 * update of a warmup runs at lr 0, as in HF's cosine schedules); past total
 * it stays at floor * lr.  This is torch's LambdaLR(opt, f) with f the
 * factor above, read before each optimizer.step(). */
typedef struct enc_train_sched {
    double lr;      /* peak learning rate */
    int64_t warmup; /* steps of linear warmup, >= 0 */
    int64_t total;  /* step at which the cosine reaches the floor */
    double floor;   /* final lr as a fraction of lr, in [0, 1] */
} enc_train_sched;

double enc_train_lr(const enc_train_sched *s, int64_t step);

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
int enc_train_ckpt_write(const char *path, const enc_adamw *opt, const float *params,
                         const uint64_t *rng, size_t nrng, const char *hparams_json,
                         char *errbuf, size_t errlen);

/* Reads a checkpoint written by enc_train_ckpt_write into opt (m, v, step),
 * params [count] and rng [nrng]; *hparams_json (when not NULL) gets a
 * malloc'd copy of the JSON text (free() it).  Every tensor of opt's table
 * must be there with its shape; other tensors are ignored.  Everything is
 * checked before anything is written: on failure opt, params, rng and
 * *hparams_json are untouched.  After a read, further steps give the same
 * bits as if training had never stopped.
 * Codes: ENC_IO, ENC_FORMAT (a malformed file or field), ENC_MISSING (a
 * tensor; errbuf names it), ENC_SHAPE (a shape, or nrng, differs),
 * ENC_UNSUPPORTED (a tensor not F32), ENC_NOMEM. */
int enc_train_ckpt_read(const char *path, enc_adamw *opt, float *params, uint64_t *rng,
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
typedef struct enc_eval_set {
    const float *emb;
    size_t n;
    const int64_t *pair;
    const int64_t *item;
    const int32_t *labels;
    const size_t *label_off;
} enc_eval_set;

#define ENC_EVAL_NK 3 /* recall at 1, 5, 10 */

typedef struct enc_eval_metrics {
    double recall[ENC_EVAL_NK]; /* @1 @5 @10: share of queries with a match in the top k */
    double label_p10;           /* mean precision of the top 10 under label relevance */
    double map;                 /* mean average precision under label relevance */
    size_t n_queries;           /* queries with at least one candidate */
    size_t n_recall;            /* ... and at least one match: recall's denominator */
    size_t n_map;               /* ... and at least one label-relevant item: mAP's */
} enc_eval_metrics;

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
 * (enc_eval_chance_recall / enc_eval_chance_ap; precision: R / c).  Either
 * output may be NULL.  Working memory: 64 ng floats (at most 64 MB, more
 * only for a gallery over 2^24 items) plus 8 ng bytes and the labels; time
 * O(nq ng (E + log ng)): every query sorts its whole gallery (for AP).
 * Codes: ENC_INVAL (E < 1, a side with labels and the other without),
 * ENC_NOMEM. */
int enc_eval_retrieval(const enc_eval_set *queries, const enc_eval_set *gallery, int E,
                       enc_eval_metrics *model, enc_eval_metrics *chance, char *errbuf,
                       size_t errlen);

/* P(at least one of m marked items is in the top k of a uniformly random
 * order of n) = 1 - C(n - m, k) / C(n, k); 0 when m == 0. */
double enc_eval_chance_recall(size_t n, size_t m, size_t k);

/* E[AP] of a uniformly random order of n items of which R are relevant
 * (0 < R <= n): (1/n) [H_n + (R - 1)/(n - 1) (n - H_n)], H_n the n-th
 * harmonic number (1 when n == 1).  Derived from E[rel_k] = R/n and
 * E[rel_j rel_k] = R(R - 1) / (n(n - 1)) for j != k. */
double enc_eval_chance_ap(size_t n, size_t R);

/* ---- WordPiece vocabulary ----------------------------------------------------------------- */

typedef struct enc_vocab_opts {
    int lower_case;       /* 1 (default): as the tokenizer's uncased default */
    size_t min_count;     /* pairs seen fewer times are never merged (default 2) */
    int ascii_alphabet;   /* 1 (default): every printable ASCII character (and
                           * "##" + each letter and digit) is in the vocabulary
                           * even when the corpus lacks it, so user text in
                           * ASCII never meets [UNK] */
} enc_vocab_opts;

#define ENC_VOCAB_OPTS_INIT {1, 2, 1}

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
 * order (free with enc_vocab_free).  Codes: ENC_INVAL (invalid UTF-8),
 * ENC_NOMEM; *tokens and *ntok untouched on failure.  o NULL: defaults. */
int enc_vocab_build(const char *const *texts, size_t n, size_t vocab_size,
                    const enc_vocab_opts *o, char ***tokens, size_t *ntok);

/* Frees what enc_vocab_build returned.  Accepts NULL. */
void enc_vocab_free(char **tokens, size_t ntok);

/* Writes tokens as vocab.txt (one per line, "\n" after each) to path,
 * atomically (a temporary file renamed over path).  Codes: ENC_INVAL (a
 * token holding a line break), ENC_IO, ENC_NOMEM. */
int enc_vocab_write(const char *path, const char *const *tokens, size_t ntok, char *errbuf,
                    size_t errlen);

#endif
