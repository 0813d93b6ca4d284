/* model.h - the encoder architectures: one ViT for 2D images and 3D volumes,
 * one BERT for report text, both ending in the shared embedding space.
 *
 *   enc_model *m;  enc_state *s;  char err[512];
 *   if (enc_model_load("models/default", NULL, &m, err, sizeof err)) { puts(err); return; }
 *   if (enc_state_new(m, ENC_TEXT, 8, NULL, &s, err, sizeof err)) { puts(err); ... }
 *   enc_encode_text(s, ids, mask, 8, 32, vec);   (vec: 8 x enc_model_embed_dim(m) floats)
 *   enc_state_free(s);  enc_model_free(m);
 *
 * Training (docs/encoder.md, "Training: backward passes"): load with
 * opts.trainable = 1, make states with ENC_STATE_TRAIN, and after each
 * encode call enc_backward_text(s, dL_dvec, g) to add the gradients to an
 * enc_grads g; update enc_model_param_mut(m, i) from enc_grads_data(g, i).
 *
 * An enc_model is read-only once loaded and may be shared by any number of
 * threads; each thread encodes through its own enc_state, which owns every
 * activation buffer (planned once, one allocation, nothing allocated while
 * encoding).  Architectures, config.json schemas and parameter names are in
 * docs/encoder.md.  Functions return ENC_* codes (encoder/encoder.h); load
 * and state errors are explained in a caller-supplied errbuf (may be NULL),
 * encode errors by enc_state_errmsg.
 */
#ifndef MEDSEM_ENCODER_MODEL_H
#define MEDSEM_ENCODER_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "encoder/backend.h"
#include "encoder/encoder.h"

typedef struct enc_model enc_model;
typedef struct enc_state enc_state;

/* What a state encodes. */
typedef enum { ENC_IMAGE = 0, ENC_VOLUME = 1, ENC_TEXT = 2 } enc_kind;

typedef struct enc_model_opts {
    /* Backend to run on, borrowed: it must outlive the model and its
     * states.  NULL: the model makes (and owns) a CPU backend of nthreads. */
    enc_backend *backend;
    int nthreads; /* <= 0: all online cores; only used when backend is NULL */
    /* 1: do not hash model.safetensors (enc_model_id returns ""): saves
     * reading the whole file again (~4 s per GB) in tools that never store
     * vectors. */
    int no_id;
    /* 1: keep every weight in one writable arena (copied from the file when
     * loading; random weights already are), laid out in parameter-table
     * order, so enc_model_param_mut, enc_grads and the enc_backward_*
     * functions can be used.  Costs a copy of the weights in memory. */
    int trainable;
} enc_model_opts;

/* Loads the model directory dir (config.json, model.safetensors): parses the
 * config (architecture "medsem", "biomedclip" or "colipri", or M3D-CLIP's
 * model_type "m3d_clip"), maps every parameter by name and checks its shape against the
 * config, and hashes model.safetensors for enc_model_id (reads the whole
 * file once, unless o->no_id).  Weights stored as F32 stay in the read-only file mapping;
 * F16/BF16 are converted once.  o may be NULL (defaults).  On success *out
 * owns everything until enc_model_free.
 * Codes: ENC_IO, ENC_FORMAT (config.json unreadable or not JSON),
 * ENC_MISSING (a config field or tensor; errbuf names it), ENC_SHAPE (a
 * tensor disagrees with the config; errbuf shows both shapes), ENC_INVAL (a
 * config value out of range), ENC_UNSUPPORTED (unknown architecture, tensor
 * dtype), ENC_NOMEM. */
int enc_model_load(const char *dir, const enc_model_opts *o, enc_model **out, char *errbuf,
                   size_t errlen);

/* Builds a model from config_json (the text of a config.json) with random
 * weights drawn from seed (fan-in scaled, LayerNorm weights near 1), for
 * benchmarks and tests; nothing is read from disk.  The id is the SHA-256 of
 * "medsem-random", the config text and the seed, which determine the
 * weights.  Same codes as enc_model_load less ENC_IO. */
int enc_model_new_random(const char *config_json, uint64_t seed, const enc_model_opts *o,
                         enc_model **out, char *errbuf, size_t errlen);

/* Frees the model and its weights.  Every state made from it must be freed
 * first.  Accepts NULL. */
void enc_model_free(enc_model *m);

/* "medsem", "m3d-clip", "biomedclip" or "colipri".  Static string. */
const char *enc_model_arch(const enc_model *m);

/* The model's identity: 64 lower-case hex digits, the SHA-256 of
 * model.safetensors exactly as on disk (what sha256sum prints), so a
 * database can refuse vectors of other weights; "" when loaded with no_id.
 * Owned by m. */
const char *enc_model_id(const enc_model *m);

/* Size of the shared embedding (the length of every output vector). */
int enc_model_embed_dim(const enc_model *m);

/* log of CLIP's logit scale: the file's "logit_scale" tensor when it has
 * one, else the config's "logit_scale", else log(1 / 0.07). */
float enc_model_logit_scale(const enc_model *m);

/* Whether the model encodes kind: 1 or 0. */
int enc_model_has(const enc_model *m, enc_kind kind);

/* Geometry of one input of kind.  For ENC_IMAGE size[0] = patch[0] = 1 and
 * size = (1, H, W); for ENC_VOLUME size = (D, H, W); channels is C of the
 * [B, C, ...] input.  tokens is the sequence length T of the transformer
 * (1 + patches for vision, the longest accepted text for ENC_TEXT, where
 * vocab_size is also set).  The rest is for the tower of kind: its width,
 * depth and heads.  COLIPRI's vision tower has no [CLS]: tokens = patches. */
typedef struct enc_input_geom {
    int channels;
    int size[3];
    int patch[3];
    int tokens;
    int vocab_size;
    int hidden_size, num_layers, num_heads;
    /* vision: multiply-adds per input of the stem's convolutions (if any)
     * and the patch embedding, what comes before the transformer */
    double embed_macs;
} enc_input_geom;

/* Fills *g for kind; ENC_UNSUPPORTED (g untouched) when the model has no
 * encoder for it. */
int enc_model_geom(const enc_model *m, enc_kind kind, enc_input_geom *g);

/* The parameter table: every tensor the model uses, in a fixed order
 * (training and checkpoint writers walk it).  Pointers are owned by m and
 * valid until enc_model_free; data is device memory of the model's backend
 * (host memory on the CPU). */
typedef struct enc_param {
    const char *name;
    int rank;
    int64_t shape[8];
    size_t count;
    const float *data;
} enc_param;
size_t enc_model_param_count(const enc_model *m);
/* Fills *p for parameter i < enc_model_param_count(m). */
void enc_model_param(const enc_model *m, size_t i, enc_param *p);

/* Parameter i's data, writable, or NULL unless the model was made with
 * opts.trainable.  Backend memory; the model's forward reads it in place,
 * so a change shows in the next encode (an optimizer step writes here).
 * Do not write while a state of the model is encoding. */
float *enc_model_param_mut(enc_model *m, size_t i);

/* ---- gradients ------------------------------------------------------------------ */

/* One arena of gradients laid out as the model's parameters (parameter i at
 * enc_grads_data(g, i), enc_model_param(m, i).count floats), allocated once
 * from the model's backend and zeroed.  The backward functions ACCUMULATE
 * into it: zero it per step.  m must be trainable and outlive g.
 * Codes: ENC_INVAL (m not trainable), ENC_NOMEM. */
typedef struct enc_grads enc_grads;
int enc_grads_new(const enc_model *m, enc_grads **out);
void enc_grads_zero(enc_grads *g);
void enc_grads_free(enc_grads *g); /* accepts NULL */
/* Gradient of parameter i (backend memory, owned by g). */
float *enc_grads_data(enc_grads *g, size_t i);
/* Bytes of the arena. */
size_t enc_grads_bytes(const enc_grads *g);

/* ---- per-worker state ---------------------------------------------------------- */

enum {
    ENC_STATE_HIDDEN = 1, /* keep the residual stream after every layer */
    ENC_STATE_PROBS = 2,  /* keep every layer's attention probabilities */
    /* keep every activation the backward needs (implies ENC_STATE_HIDDEN),
     * and plan the backward's scratch: enc_backward_* on the last encode */
    ENC_STATE_TRAIN = 4,
    /* accumulate the [CLS] -> token attention averaged over layers and heads
     * (enc_state_cls_attention), without keeping the probabilities */
    ENC_STATE_CLSATT = 8,
};

typedef struct enc_state_opts {
    unsigned flags; /* ENC_STATE_* */
    int max_len;    /* ENC_TEXT: longest text, <= the model's; 0: the model's */
} enc_state_opts;

/* Plans and allocates the activations for encoding up to batch inputs of
 * kind with m: a table of named buffers, summed, allocated once from m's
 * backend and carved.  o may be NULL.  m must outlive the state.
 * Codes: ENC_UNSUPPORTED (m has no encoder for kind), ENC_INVAL (batch < 1,
 * max_len out of range), ENC_NOMEM (errbuf gives the size asked). */
int enc_state_new(const enc_model *m, enc_kind kind, int batch, const enc_state_opts *o,
                  enc_state **out, char *errbuf, size_t errlen);

/* Frees the state.  Accepts NULL. */
void enc_state_free(enc_state *s);

/* Bytes of activation memory the state holds. */
size_t enc_state_bytes(const enc_state *s);

/* Encode B <= batch inputs into out [B, E] (host memory, L2-normalised rows,
 * E = enc_model_embed_dim).  A state encodes one batch at a time and is not
 * thread-safe; the model is.
 *   image  [B, C, H, W], preprocessed (the state must be ENC_IMAGE)
 *   volume [B, C, D, H, W], preprocessed (ENC_VOLUME)
 *   ids, mask [B, L] int32: token ids in [0, vocab), mask 1 for tokens and
 *   0 for padding (NULL: all 1); L <= the state's max_len (ENC_TEXT).
 * Codes: ENC_INVAL (wrong kind, B or L out of range, an id outside the
 * vocabulary; see enc_state_errmsg), or a backend error. */
int enc_encode_image(enc_state *s, const float *image, int B, float *out);
int enc_encode_volume(enc_state *s, const float *volume, int B, float *out);
int enc_encode_text(enc_state *s, const int32_t *ids, const int32_t *mask, int B, int L,
                    float *out);

/* The last encode's residual stream after layer l, [B, T, D] (l = 0: the
 * embeddings, l = num_layers: after the last block, before any final
 * norm), or NULL unless the state was made with ENC_STATE_HIDDEN (then l
 * may be 0..num_layers; the last one is always available).  B and T are
 * those of the last call (for text T = its L).  Valid until the next encode
 * or enc_state_free; backend memory. */
const float *enc_state_hidden(const enc_state *s, int l);

/* The last encode's attention probabilities of layer l (0-based), [B, H, T, T],
 * or NULL unless the state was made with ENC_STATE_PROBS.  Same lifetime. */
const float *enc_state_probs(const enc_state *s, int l);

/* The last encode's attention of [CLS] to every other token, averaged over
 * layers and heads: [B, T - 1] (for vision, [B, N_patches] in patch order),
 * or NULL unless the state was made with ENC_STATE_CLSATT.  Row 0 of each
 * layer's and head's probabilities is computed next to the attention and
 * summed; nothing of size T x T is kept.  Same lifetime as
 * enc_state_hidden. */
const float *enc_state_cls_attention(const enc_state *s);

/* Backward passes of the last encode of an ENC_STATE_TRAIN state, whose
 * model is trainable: dembed [B, E] (host memory) is the gradient of a loss
 * with respect to the L2-normalised output of that encode (B as given to
 * it), and the gradient of the loss with respect to every parameter is
 * ADDED to g (made for the same model), so image, volume and text batches
 * can be summed into one g; the ViT that medsem shares between 2D and 3D
 * collects both.  The state's saved activations are only read: the same
 * encode can be differentiated again.  Codes: ENC_INVAL (wrong kind, not a
 * training state, no successful encode, model not trainable, g of another
 * model; see enc_state_errmsg), or a backend error. */
int enc_backward_image(enc_state *s, const float *dembed, enc_grads *g);
int enc_backward_volume(enc_state *s, const float *dembed, enc_grads *g);
int enc_backward_text(enc_state *s, const float *dembed, enc_grads *g);

/* B and T of the last encode (0 before the first). */
int enc_state_batch(const enc_state *s);
int enc_state_tokens(const enc_state *s);

/* Why the last encode failed ("" after a success).  Owned by s. */
const char *enc_state_errmsg(const enc_state *s);

#endif
