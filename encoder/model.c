/* model.c - ViT (2D and 3D) and BERT encoders behind enc_model / enc_state.
 *
 * One internal description serves the four architectures: a pre-norm ViT
 * (struct vit) with a 2D and/or 3D patch embedding, a post-norm BERT
 * (struct bert), and a projection into the shared space (struct proj,
 * linear or Linear-GELU-Linear).  What differs between medsem, M3D-CLIP and
 * BiomedCLIP is confined to three places: the config reader (cfg_*), the
 * parameter names (map_*), and a few flags (patch flattening order, whether
 * the position embedding covers [CLS], qkv bias, projection kind).  COLIPRI
 * adds more: its vision tower is an EVA trunk (struct eva_block, eva_forward:
 * 3-D RoPE, SwiGLU, layer scale, no [CLS]) and both towers end in an
 * attention pool (struct apool) instead of [CLS] and a projection.
 *
 * Weights are mapped in two passes over the same code (map_model): a COUNT
 * pass sums sizes and names, then a FILL pass takes each tensor from the
 * safetensors file (or draws it, for random models) and records it in the
 * parameter table.  Activations are planned the same way per state
 * (state_plan): a table of {name, count} summed, one allocation, carved.
 *
 * Training (at the end): trainable models keep their weights in one arena
 * in table order, so a gradient arena of the same layout maps weight to
 * gradient by offset (gof); ENC_STATE_TRAIN states keep per-layer slices of
 * what the forward computes, and vit_backward / bert_backward run the
 * forward in reverse through the backend's twins.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "encoder/internal.h"
#include "encoder/model.h"
#include "encoder/safetensors.h"

#define MAX_LAYERS 256
#define STEM_MAX 4      /* convolutions in a vision stem */
#define ALIGN_FLOATS 16 /* every carved buffer starts 64-byte aligned */

enum { ARCH_MEDSEM, ARCH_M3D, ARCH_BIOMEDCLIP, ARCH_COLIPRI };
static const char *const arch_names[] = {"medsem", "m3d-clip", "biomedclip", "colipri"};

/* ---- the model ----------------------------------------------------------------- */

/* A projection into the shared space: out = w1 x + b1 (hidden == 0), or
 * out = w2 gelu(w1 x + b1) + b2.  Biases may be NULL. */
typedef struct proj {
    int in, hidden, out;
    const float *w1, *b1, *w2, *b2;
} proj;

typedef struct vit_block {
    const float *ln1_w, *ln1_b, *qkv_w, *qkv_b, *out_w, *out_b;
    const float *ln2_w, *ln2_b, *fc1_w, *fc1_b, *fc2_w, *fc2_b;
} vit_block;

/* An EVA block (Primus, COLIPRI's vision tower): separate q, k, v
 * projections (k without bias), an optional LayerNorm inside attention
 * (scale_attn_inner) and layer scales gamma (init_values), and a SwiGLU MLP
 * with its own LayerNorm: fc2(norm(silu(fc1_g x) * fc1_x x)). */
typedef struct eva_block {
    const float *ln1_w, *ln1_b, *q_w, *q_b, *k_w, *v_w, *v_b, *an_w, *an_b, *out_w, *out_b, *g1;
    const float *ln2_w, *ln2_b, *fg_w, *fg_b, *fx_w, *fx_b, *mn_w, *mn_b, *fc2_w, *fc2_b, *g2;
} eva_block;

/* Attention pooling (colipri.pooling.AttentionPool1D): a MultiheadAttention
 * of embed dim E and H heads whose query is the mean of the tokens. */
typedef struct apool {
    int H;
    const float *w_in, *b_in, *w_out, *b_out;
} apool;

typedef struct vit {
    int present;
    int D, L, H, M;
    float eps;
    int has2d, has3d;
    enc_patch_geom g2, g3; /* the input: channels, sizes, patches (in input voxels) */
    /* The stem (medsem): stem_n convolutions (kernel stem_k, stride stem_s
     * on every axis the input extends along, padding stem_k / 2), each
     * followed by GELU, ahead of the patch embedding, whose own geometry
     * pe2 / pe3 is then the stem output's (channels stem_c[n - 1], sizes and
     * patches divided by stem_s^n).  stem_n = 0: pe = g. */
    int stem_n, stem_k, stem_s;
    int stem_c[STEM_MAX];
    enc_conv_geom sg2[STEM_MAX], sg3[STEM_MAX];
    const float *sw2[STEM_MAX], *sb2[STEM_MAX], *sw3[STEM_MAX], *sb3[STEM_MAX];
    enc_patch_geom pe2, pe3;
    int pos_has_cls;       /* 1: pos [1 + N, D] covers [CLS]; 0: pos [N, D] (MONAI) */
    int qkv_bias;
    const float *pw2, *pb2, *pw3, *pb3, *cls, *pos2, *pos3;
    vit_block *blk;
    const float *norm_w, *norm_b;
    proj head;
    /* COLIPRI (eva = 1): EVA blocks instead of blk, no [CLS] and no
     * absolute positions (3-D RoPE instead), the final norm on every token,
     * head a 1x1x1 convolution (a linear map per token), then pool */
    int eva, inner_norm, layer_scale;
    eva_block *eblk;
    apool pool;
} vit;

typedef struct bert_layer {
    const float *q_w, *q_b, *k_w, *k_b, *v_w, *v_b, *o_w, *o_b, *ln1_w, *ln1_b;
    const float *i_w, *i_b, *f_w, *f_b, *ln2_w, *ln2_b;
} bert_layer;

typedef struct bert {
    int present;
    int from_file; /* V, P and types come from the tensors' shapes (M3D-CLIP) */
    int depth_from_file; /* and L and I (COLIPRI's backbone without a config) */
    int V, D, L, H, I, P, types, max_len;
    float eps;
    const float *word, *pos, *type, *eln_w, *eln_b;
    bert_layer *lay;
    proj head;
    apool pool; /* COLIPRI: pool.w_in != NULL replaces [CLS] and head */
} bert;

struct enc_model {
    int arch;
    int E;
    int v_head_bias; /* biomedclip: timm_proj_bias */
    float logit_scale;
    char id[2 * UTIL_SHA256_SIZE + 1];
    enc_backend *be;
    int own_be;
    enc_st *st;      /* the weights file (NULL for random models) */
    float *host;     /* random weights (host memory) */
    float *dev;      /* weights uploaded to a non-host backend */
    vit v;
    bert t;
    enc_param *params;
    size_t nparams;
    char *names; /* the parameters' names, back to back */
    /* Training: every weight in one arena (host or dev), parameter i at
     * params[i].data, in table order with align_up gaps, so a gradient
     * arena of arena_floats has the same layout.  NULL when the weights
     * stay in the file mapping. */
    int trainable;
    float *arena;
    size_t arena_floats;
};

/* ---- errors --------------------------------------------------------------------- */


/* ---- config.json -------------------------------------------------------------------
 *
 * Readers take the object, its dotted path (for messages) and the key, and
 * accept a list of alternative keys where the real formats differ. */

typedef struct cfgx {
    const char *file;
    char *errbuf;
    size_t errlen;
} cfgx;

static const cJSON *jobj(const cJSON *o, const char *key)
{
    const cJSON *c = o ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
    return cJSON_IsObject(c) ? c : NULL;
}

/* The first of the NULL-terminated keys present in o, or NULL. */
static const cJSON *jfind(const cJSON *o, const char *const *keys, const char **which)
{
    for (; *keys; keys++) {
        const cJSON *c = o ? cJSON_GetObjectItemCaseSensitive(o, *keys) : NULL;
        if (c != NULL && !cJSON_IsNull(c)) {
            if (which)
                *which = *keys;
            return c;
        }
    }
    return NULL;
}

/* A positive integer (or >= 0 when min is 0): required unless def >= 0. */
static int cfg_int(cfgx *x, const cJSON *o, const char *path, const char *const *keys, int def,
                   int min, int *out)
{
    const char *k = keys[0];
    const cJSON *c = jfind(o, keys, &k);
    if (c == NULL) {
        if (def < 0)
            return enc__fail(x->errbuf, x->errlen, ENC_MISSING, "%s: %s%s: missing", x->file, path, k);
        *out = def;
        return ENC_OK;
    }
    double d = cJSON_IsNumber(c) ? c->valuedouble : NAN;
    if (!(d >= min && d <= 1 << 30) || d != floor(d))
        return enc__fail(x->errbuf, x->errlen, ENC_INVAL, "%s: %s%s: expected an integer >= %d",
                    x->file, path, k, min);
    *out = (int)d;
    return ENC_OK;
}

static int cfg_float(cfgx *x, const cJSON *o, const char *path, const char *const *keys,
                     double def, float *out)
{
    const char *k = keys[0];
    const cJSON *c = jfind(o, keys, &k);
    if (c == NULL) {
        *out = (float)def;
        return ENC_OK;
    }
    if (!cJSON_IsNumber(c) || !isfinite(c->valuedouble))
        return enc__fail(x->errbuf, x->errlen, ENC_INVAL, "%s: %s%s: expected a number", x->file, path,
                    k);
    *out = (float)c->valuedouble;
    return ENC_OK;
}

/* n positive integers: an array of n, or one number meaning all n equal.
 * *found = 0 (and out untouched) when absent; required when found is NULL. */
static int cfg_ints(cfgx *x, const cJSON *o, const char *path, const char *const *keys, int n,
                    int *out, int *found)
{
    const char *k = keys[0];
    const cJSON *c = jfind(o, keys, &k);
    if (found)
        *found = c != NULL;
    if (c == NULL) {
        if (found)
            return ENC_OK;
        return enc__fail(x->errbuf, x->errlen, ENC_MISSING, "%s: %s%s: missing", x->file, path, k);
    }
    int v[3];
    if (cJSON_IsNumber(c)) {
        for (int i = 0; i < n; i++)
            v[i] = (int)c->valuedouble;
        if (c->valuedouble != floor(c->valuedouble) || c->valuedouble < 1 ||
            c->valuedouble > 1 << 20)
            goto bad;
    } else if (cJSON_IsArray(c) && cJSON_GetArraySize(c) == n) {
        for (int i = 0; i < n; i++) {
            const cJSON *e = cJSON_GetArrayItem(c, i);
            if (!cJSON_IsNumber(e) || e->valuedouble != floor(e->valuedouble) ||
                e->valuedouble < 1 || e->valuedouble > 1 << 20)
                goto bad;
            v[i] = (int)e->valuedouble;
        }
    } else {
        goto bad;
    }
    memcpy(out, v, (size_t)n * sizeof(int));
    return ENC_OK;
bad:
    return enc__fail(x->errbuf, x->errlen, ENC_INVAL, "%s: %s%s: expected %d positive integer%s",
                x->file, path, k, n, n > 1 ? "s" : "");
}

static const char *cfg_str(const cJSON *o, const char *const *keys)
{
    const cJSON *c = jfind(o, keys, NULL);
    return cJSON_IsString(c) ? c->valuestring : NULL;
}

#define K(...) ((const char *const[]){__VA_ARGS__, NULL})

/* Checks that sizes divide into patches and D into heads. */
static int check_vit(cfgx *x, const vit *v, const char *path)
{
    if (v->D % v->H != 0)
        return enc__fail(x->errbuf, x->errlen, ENC_INVAL,
                    "%s: %shidden_size (%d) is not a multiple of num_heads (%d)",
                    x->file, path, v->D, v->H);
    const enc_patch_geom *g[2] = {v->has2d ? &v->g2 : NULL, v->has3d ? &v->g3 : NULL};
    for (int i = 0; i < 2; i++)
        for (int a = 0; g[i] && a < 3; a++)
            if (g[i]->size[a] % g[i]->patch[a] != 0)
                return enc__fail(x->errbuf, x->errlen, ENC_INVAL,
                            "%s: %s%s size %d is not a multiple of the patch size %d", x->file,
                            path, i ? "volume" : "image", g[i]->size[a], g[i]->patch[a]);
    if (!v->has2d && !v->has3d)
        return enc__fail(x->errbuf, x->errlen, ENC_MISSING, "%s: %sno image or volume size", x->file,
                    path);
    if (v->L > MAX_LAYERS)
        return enc__fail(x->errbuf, x->errlen, ENC_INVAL, "%s: %s%d layers (at most %d)", x->file,
                    path, v->L, MAX_LAYERS);
    return ENC_OK;
}

static int check_bert(cfgx *x, const bert *t, const char *path)
{
    if (t->D % t->H != 0)
        return enc__fail(x->errbuf, x->errlen, ENC_INVAL,
                    "%s: %shidden_size (%d) is not a multiple of num_heads (%d)",
                    x->file, path, t->D, t->H);
    if (t->L > MAX_LAYERS)
        return enc__fail(x->errbuf, x->errlen, ENC_INVAL, "%s: %s%d layers (at most %d)", x->file,
                    path, t->L, MAX_LAYERS);
    return ENC_OK;
}

/* BERT sizes from an object with Hugging Face BertConfig names, defaults
 * (bert-base) for what it does not say. */
static int cfg_hf_bert(cfgx *x, const cJSON *o, const char *path, bert *t, int vocab_def)
{
    int rc;
    if ((rc = cfg_int(x, o, path, K("vocab_size"), vocab_def, 1, &t->V)) ||
        (rc = cfg_int(x, o, path, K("hidden_size"), 768, 1, &t->D)) ||
        (rc = cfg_int(x, o, path, K("num_hidden_layers", "num_layers", "layers"), 12, 0,
                      &t->L)) ||
        (rc = cfg_int(x, o, path, K("num_attention_heads", "num_heads", "heads"), 12, 1,
                      &t->H)) ||
        (rc = cfg_int(x, o, path, K("intermediate_size"), 3072, 1, &t->I)) ||
        (rc = cfg_int(x, o, path, K("max_position_embeddings"), 512, 1, &t->P)) ||
        (rc = cfg_int(x, o, path, K("type_vocab_size"), 2, 1, &t->types)) ||
        (rc = cfg_float(x, o, path, K("layer_norm_eps"), 1e-12, &t->eps)))
        return rc;
    return ENC_OK;
}

/* medsem: our own schema (docs/encoder.md). */
/* The stem's geometry from g (2D when g->size[0] == 1 and patch[0] == 1):
 * convolution i reads the previous output, and the patch embedding reads
 * the last.  The total stride must divide every strided patch side. */
static int stem_geoms(cfgx *x, const vit *v, const enc_patch_geom *g, const char *what,
                      enc_conv_geom *cg, enc_patch_geom *pe)
{
    *pe = *g;
    if (v->stem_n == 0)
        return ENC_OK;
    int on[3], S = 1;
    for (int i = 0; i < v->stem_n; i++)
        S *= v->stem_s;
    for (int a = 0; a < 3; a++) {
        on[a] = !(a == 0 && g->size[0] == 1 && g->patch[0] == 1);
        if (on[a] && g->patch[a] % S != 0)
            return enc__fail(x->errbuf, x->errlen, ENC_INVAL,
                             "%s: vision.%s patch side %d is not a multiple of the stem's "
                             "total stride %d (stem_stride %d, %d convolutions)",
                             x->file, what, g->patch[a], S, v->stem_s, v->stem_n);
    }
    int size[3] = {g->size[0], g->size[1], g->size[2]}, cin = g->channels;
    for (int i = 0; i < v->stem_n; i++) {
        enc_conv_geom *c = &cg[i];
        c->cin = cin, c->cout = v->stem_c[i];
        for (int a = 0; a < 3; a++) {
            c->size[a] = size[a];
            c->kernel[a] = on[a] ? v->stem_k : 1;
            c->stride[a] = on[a] ? v->stem_s : 1;
            c->pad[a] = on[a] ? v->stem_k / 2 : 0;
        }
        enc_conv_out(c, size);
        cin = c->cout;
    }
    pe->channels = cin;
    for (int a = 0; a < 3; a++) {
        pe->size[a] = size[a];
        pe->patch[a] = on[a] ? g->patch[a] / S : 1;
    }
    pe->order = ENC_PATCH_CONV;
    return ENC_OK;
}

/* vision.stem_channels [c1, ..., cn] (absent or []: no stem), stem_kernel
 * (odd, default 3), stem_stride (default 2). */
static int cfg_stem(cfgx *x, const cJSON *vo, vit *v)
{
    int rc;
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(vo, "stem_channels");
    v->stem_n = 0;
    if (c == NULL || cJSON_IsNull(c))
        return ENC_OK;
    int n = cJSON_IsArray(c) ? cJSON_GetArraySize(c) : -1;
    if (n < 0 || n > STEM_MAX)
        return enc__fail(x->errbuf, x->errlen, ENC_INVAL,
                         "%s: vision.stem_channels: expected an array of at most %d channel "
                         "counts", x->file, STEM_MAX);
    for (int i = 0; i < n; i++) {
        const cJSON *e = cJSON_GetArrayItem(c, i);
        if (!cJSON_IsNumber(e) || e->valuedouble != floor(e->valuedouble) ||
            e->valuedouble < 1 || e->valuedouble > 4096)
            return enc__fail(x->errbuf, x->errlen, ENC_INVAL,
                             "%s: vision.stem_channels[%d]: expected an integer in 1..4096",
                             x->file, i);
        v->stem_c[i] = (int)e->valuedouble;
    }
    v->stem_n = n;
    if ((rc = cfg_int(x, vo, "vision.", K("stem_kernel"), 3, 1, &v->stem_k)) ||
        (rc = cfg_int(x, vo, "vision.", K("stem_stride"), 2, 1, &v->stem_s)))
        return rc;
    if (v->stem_k % 2 == 0 || v->stem_k > 15)
        return enc__fail(x->errbuf, x->errlen, ENC_INVAL,
                         "%s: vision.stem_kernel: %d is not an odd size up to 15", x->file,
                         v->stem_k);
    if (v->stem_s > 8)
        return enc__fail(x->errbuf, x->errlen, ENC_INVAL,
                         "%s: vision.stem_stride: %d is larger than 8", x->file, v->stem_s);
    return ENC_OK;
}

static int cfg_medsem(cfgx *x, const cJSON *root, enc_model *m)
{
    int rc, found;
    vit *v = &m->v;
    bert *t = &m->t;
    if ((rc = cfg_int(x, root, "", K("embed_dim"), -1, 1, &m->E)) ||
        (rc = cfg_float(x, root, "", K("logit_scale"), log(1 / 0.07), &m->logit_scale)))
        return rc;
    const cJSON *vo = jobj(root, "vision"), *to = jobj(root, "text");
    if (vo == NULL && to == NULL)
        return enc__fail(x->errbuf, x->errlen, ENC_MISSING, "%s: neither vision nor text", x->file);
    if (vo != NULL) {
        v->present = 1;
        int C;
        if ((rc = cfg_int(x, vo, "vision.", K("hidden_size"), -1, 1, &v->D)) ||
            (rc = cfg_int(x, vo, "vision.", K("num_layers"), -1, 0, &v->L)) ||
            (rc = cfg_int(x, vo, "vision.", K("num_heads"), -1, 1, &v->H)) ||
            (rc = cfg_int(x, vo, "vision.", K("mlp_dim"), -1, 1, &v->M)) ||
            (rc = cfg_float(x, vo, "vision.", K("layer_norm_eps"), 1e-6, &v->eps)) ||
            (rc = cfg_int(x, vo, "vision.", K("in_channels"), 1, 1, &C)))
            return rc;
        v->g2 = (enc_patch_geom){C, {1, 0, 0}, {1, 0, 0}, ENC_PATCH_CONV};
        v->g3 = (enc_patch_geom){C, {0, 0, 0}, {0, 0, 0}, ENC_PATCH_CONV};
        if ((rc = cfg_ints(x, vo, "vision.", K("image_size"), 2, v->g2.size + 1, &found)))
            return rc;
        if (found) {
            v->has2d = 1;
            if ((rc = cfg_ints(x, vo, "vision.", K("patch_size"), 2, v->g2.patch + 1, NULL)))
                return rc;
        }
        if ((rc = cfg_ints(x, vo, "vision.", K("volume_size"), 3, v->g3.size, &found)))
            return rc;
        if (found) {
            v->has3d = 1;
            if ((rc = cfg_ints(x, vo, "vision.", K("volume_patch_size"), 3, v->g3.patch, NULL)))
                return rc;
        }
        v->pos_has_cls = 1;
        v->qkv_bias = 1;
        v->head = (proj){v->D, 0, m->E, NULL, NULL, NULL, NULL};
        if ((rc = check_vit(x, v, "vision.")) || (rc = cfg_stem(x, vo, v)) ||
            (v->has2d && (rc = stem_geoms(x, v, &v->g2, "patch_size", v->sg2, &v->pe2))) ||
            (v->has3d && (rc = stem_geoms(x, v, &v->g3, "volume_patch_size", v->sg3, &v->pe3))))
            return rc;
    }
    if (to != NULL) {
        t->present = 1;
        if ((rc = cfg_int(x, to, "text.", K("vocab_size"), -1, 1, &t->V)) ||
            (rc = cfg_int(x, to, "text.", K("hidden_size"), -1, 1, &t->D)) ||
            (rc = cfg_int(x, to, "text.", K("num_layers"), -1, 0, &t->L)) ||
            (rc = cfg_int(x, to, "text.", K("num_heads"), -1, 1, &t->H)) ||
            (rc = cfg_int(x, to, "text.", K("intermediate_size"), -1, 1, &t->I)) ||
            (rc = cfg_int(x, to, "text.", K("max_position_embeddings"), -1, 1, &t->P)) ||
            (rc = cfg_int(x, to, "text.", K("type_vocab_size"), 2, 1, &t->types)) ||
            (rc = cfg_float(x, to, "text.", K("layer_norm_eps"), 1e-12, &t->eps)) ||
            (rc = cfg_int(x, to, "text.", K("max_len"), t->P, 1, &t->max_len)))
            return rc;
        t->head = (proj){t->D, 0, m->E, NULL, NULL, NULL, NULL};
        if ((rc = check_bert(x, t, "text.")))
            return rc;
    }
    return ENC_OK;
}

/* M3D-CLIP: its own config.json (model_type "m3d_clip").  The config does
 * not describe the text tower (bert-base-uncased); since mm_language_proj is
 * Linear(hidden_size, hidden_size), it is BERT(hidden_size, num_layers,
 * num_heads, mlp_dim, eps 1e-12) - true of the real model and the fixture -
 * with the vocabulary, position and token type counts taken from the
 * tensors' shapes (resolve_from_file).  A "text_config" object (BertConfig
 * names) overrides any of these. */
static int cfg_m3d(cfgx *x, const cJSON *root, enc_model *m)
{
    int rc, C;
    vit *v = &m->v;
    bert *t = &m->t;
    v->present = t->present = 1;
    v->has3d = 1;
    if ((rc = cfg_int(x, root, "", K("hidden_size"), -1, 1, &v->D)) ||
        (rc = cfg_int(x, root, "", K("num_layers"), -1, 0, &v->L)) ||
        (rc = cfg_int(x, root, "", K("num_heads"), -1, 1, &v->H)) ||
        (rc = cfg_int(x, root, "", K("mlp_dim"), -1, 1, &v->M)) ||
        (rc = cfg_int(x, root, "", K("in_channels"), 1, 1, &C)) ||
        (rc = cfg_float(x, root, "", K("layer_norm_eps"), 1e-5, &v->eps)))
        return rc;
    int sd = 3;
    if ((rc = cfg_int(x, root, "", K("spatial_dims"), 3, 1, &sd)))
        return rc;
    if (sd != 3)
        return enc__fail(x->errbuf, x->errlen, ENC_UNSUPPORTED, "%s: spatial_dims %d (only 3)",
                    x->file, sd);
    v->g3 = (enc_patch_geom){C, {0, 0, 0}, {0, 0, 0}, ENC_PATCH_CLAST};
    if ((rc = cfg_ints(x, root, "", K("img_size"), 3, v->g3.size, NULL)) ||
        (rc = cfg_ints(x, root, "", K("patch_size"), 3, v->g3.patch, NULL)))
        return rc;
    const char *pe = cfg_str(root, K("pos_embed", "proj_type"));
    if (pe != NULL && strcmp(pe, "conv") == 0)
        v->g3.order = ENC_PATCH_CONV;
    else if (pe != NULL && strcmp(pe, "perceptron") != 0)
        return enc__fail(x->errbuf, x->errlen, ENC_UNSUPPORTED,
                    "%s: pos_embed \"%s\" (perceptron or conv)", x->file, pe);
    v->pos_has_cls = 0;
    v->qkv_bias = 0;
    if ((rc = check_vit(x, v, "")))
        return rc;

    const cJSON *tc = jobj(root, "text_config");
    const char *tp = tc ? "text_config." : "";
    t->from_file = tc == NULL || !jfind(tc, K("vocab_size", "max_position_embeddings",
                                              "type_vocab_size"), NULL);
    if ((rc = cfg_int(x, root, "", K("vocab_size"), 30522, 1, &t->V)) ||
        (rc = cfg_int(x, tc, tp, K("vocab_size"), t->V, 1, &t->V)) ||
        (rc = cfg_int(x, tc, tp, K("hidden_size"), v->D, 1, &t->D)) ||
        (rc = cfg_int(x, tc, tp, K("num_hidden_layers", "num_layers"), v->L, 0, &t->L)) ||
        (rc = cfg_int(x, tc, tp, K("num_attention_heads", "num_heads"), v->H, 1, &t->H)) ||
        (rc = cfg_int(x, tc, tp, K("intermediate_size"), v->M, 1, &t->I)) ||
        (rc = cfg_int(x, tc, tp, K("max_position_embeddings"), 512, 1, &t->P)) ||
        (rc = cfg_int(x, tc, tp, K("type_vocab_size"), 2, 1, &t->types)) ||
        (rc = cfg_float(x, tc, tp, K("layer_norm_eps"), 1e-12, &t->eps)) ||
        (rc = cfg_int(x, root, "", K("max_text_len"), 128, 1, &t->max_len)))
        return rc;
    if (t->D != v->D)
        return enc__fail(x->errbuf, x->errlen, ENC_INVAL,
                    "%s: text hidden size %d differs from hidden_size %d (the mm projections "
                    "are square)",
                    x->file, t->D, v->D);
    if ((rc = check_bert(x, t, "")))
        return rc;
    m->E = v->D;
    m->logit_scale = (float)log(1 / 0.07);
    v->head = (proj){v->D, 0, m->E, NULL, NULL, NULL, NULL};
    t->head = (proj){t->D, 0, m->E, NULL, NULL, NULL, NULL};
    return ENC_OK;
}

/* BiomedCLIP: open_clip's config (model_cfg.{embed_dim, vision_cfg,
 * text_cfg}, or those at the top level).  Vision sizes come from
 * timm_model_name (vit_{tiny,small,base,large}_patch{P}_{S}) unless given
 * (width/hidden_size, layers/depth, heads, mlp_ratio or mlp_dim,
 * patch_size, image_size); text sizes from an "hf_config" object, or the
 * text_cfg itself, with BertConfig names (PubMedBERT-base by default). */
static int cfg_biomedclip(cfgx *x, const cJSON *root, enc_model *m)
{
    int rc;
    vit *v = &m->v;
    bert *t = &m->t;
    const cJSON *mc = jobj(root, "model_cfg");
    if (mc == NULL)
        mc = root;
    const char *mp = mc == root ? "" : "model_cfg.";
    char path[64];
    if ((rc = cfg_int(x, mc, mp, K("embed_dim"), 512, 1, &m->E)))
        return rc;
    const cJSON *ls = jfind(root, K("logit_scale"), NULL);
    m->logit_scale = cJSON_IsNumber(ls) ? (float)ls->valuedouble : (float)log(1 / 0.07);

    const cJSON *vc = jobj(mc, "vision_cfg");
    const cJSON *tc = jobj(mc, "text_cfg");
    v->present = vc != NULL;
    t->present = tc != NULL;
    if (!v->present && !t->present)
        return enc__fail(x->errbuf, x->errlen, ENC_MISSING, "%s: %svision_cfg: missing", x->file, mp);
    if (v->present) {
        snprintf(path, sizeof path, "%svision_cfg.", mp);
        int D = 768, L = 12, H = 12, P = 16, S = 224, C;
        const char *tm = cfg_str(vc, K("timm_model_name"));
        if (tm != NULL) {
            char size[16];
            if (sscanf(tm, "vit_%15[a-z]_patch%d_%d", size, &P, &S) != 3)
                return enc__fail(x->errbuf, x->errlen, ENC_UNSUPPORTED,
                            "%s: %stimm_model_name \"%s\" (a vit_<size>_patch<P>_<S>)", x->file,
                            path, tm);
            if (strcmp(size, "tiny") == 0)
                D = 192, L = 12, H = 3;
            else if (strcmp(size, "small") == 0)
                D = 384, L = 12, H = 6;
            else if (strcmp(size, "base") == 0)
                D = 768, L = 12, H = 12;
            else if (strcmp(size, "large") == 0)
                D = 1024, L = 24, H = 16;
            else
                return enc__fail(x->errbuf, x->errlen, ENC_UNSUPPORTED,
                            "%s: %stimm_model_name \"%s\": unknown size", x->file, path, tm);
        }
        float ratio;
        if ((rc = cfg_int(x, vc, path, K("width", "hidden_size", "embed_dim"), D, 1, &v->D)) ||
            (rc = cfg_int(x, vc, path, K("layers", "depth", "num_layers"), L, 0, &v->L)) ||
            (rc = cfg_int(x, vc, path, K("heads", "num_heads"),
                          v->D == D ? H : (v->D >= 128 ? v->D / 64 : 1), 1, &v->H)) ||
            (rc = cfg_float(x, vc, path, K("mlp_ratio"), 4.0, &ratio)) ||
            (rc = cfg_int(x, vc, path, K("mlp_dim"), (int)lrintf(ratio * (float)v->D), 1,
                          &v->M)) ||
            (rc = cfg_int(x, vc, path, K("in_channels", "in_chans"), 3, 1, &C)) ||
            (rc = cfg_float(x, vc, path, K("layer_norm_eps"), 1e-6, &v->eps)))
            return rc;
        v->g2 = (enc_patch_geom){C, {1, S, S}, {1, P, P}, ENC_PATCH_CONV};
        int found;
        if ((rc = cfg_ints(x, vc, path, K("image_size"), 2, v->g2.size + 1, &found)) ||
            (rc = cfg_ints(x, vc, path, K("patch_size"), 2, v->g2.patch + 1, &found)))
            return rc;
        v->has2d = 1;
        v->pos_has_cls = 1;
        v->qkv_bias = 1;
        if ((rc = check_vit(x, v, path)))
            return rc;
        /* open_clip's TimmModel head: "linear" = head.proj, "mlp" =
         * head.mlp.fc1 (bias) - GELU - head.mlp.fc2, 2 * embed_dim wide;
         * timm_proj_bias is the bias of the last layer */
        const cJSON *pb = jfind(vc, K("timm_proj_bias", "proj_bias"), NULL);
        m->v_head_bias = cJSON_IsTrue(pb);
        const char *hp = cfg_str(vc, K("timm_proj", "proj"));
        if (hp == NULL || strcmp(hp, "linear") == 0)
            v->head = (proj){v->D, 0, m->E, NULL, NULL, NULL, NULL};
        else if (strcmp(hp, "mlp") == 0)
            v->head = (proj){v->D, 2 * m->E, m->E, NULL, NULL, NULL, NULL};
        else
            return enc__fail(x->errbuf, x->errlen, ENC_UNSUPPORTED,
                        "%s: %stimm_proj \"%s\" (linear or mlp)", x->file, path, hp);
    }
    if (t->present) {
        snprintf(path, sizeof path, "%stext_cfg.", mp);
        const cJSON *hc = jobj(tc, "hf_config");
        char hpath[80];
        snprintf(hpath, sizeof hpath, "%shf_config.", path);
        if ((rc = cfg_hf_bert(x, hc ? hc : tc, hc ? hpath : path, t, 30522)))
            return rc;
        int cl;
        if ((rc = cfg_int(x, tc, path, K("context_length"), t->P < 256 ? t->P : 256, 1, &cl)))
            return rc;
        t->max_len = cl;
        const char *pt = cfg_str(tc, K("hf_proj_type", "proj_type", "proj"));
        int hidden = (t->D + m->E) / 2;
        if (pt == NULL || strcmp(pt, "mlp") == 0)
            t->head = (proj){t->D, hidden, m->E, NULL, NULL, NULL, NULL};
        else if (strcmp(pt, "linear") == 0)
            t->head = (proj){t->D, 0, m->E, NULL, NULL, NULL, NULL};
        else
            return enc__fail(x->errbuf, x->errlen, ENC_UNSUPPORTED,
                        "%s: %shf_proj_type \"%s\" (mlp or linear)", x->file, path, pt);
        if ((rc = check_bert(x, t, path)))
            return rc;
    }
    return ENC_OK;
}

/* A boolean (JSON true/false, or null meaning false when nullable);
 * def when absent. */
static int cfg_bool(cfgx *x, const cJSON *o, const char *path, const char *key, int def,
                    int *out)
{
    const cJSON *c = o ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
    if (c == NULL) {
        *out = def;
        return ENC_OK;
    }
    if (!cJSON_IsBool(c))
        return enc__fail(x->errbuf, x->errlen, ENC_INVAL, "%s: %s%s: expected true or false",
                         x->file, path, key);
    *out = cJSON_IsTrue(c);
    return ENC_OK;
}

/* A pooler object {embed_dim, num_heads}: embed_dim must be E. */
static int cfg_pool(cfgx *x, const cJSON *o, const char *path, int E, apool *p)
{
    int rc, e;
    if (o == NULL)
        return enc__fail(x->errbuf, x->errlen, ENC_MISSING, "%s: %s: missing", x->file, path);
    char pp[96];
    snprintf(pp, sizeof pp, "%s.", path);
    if ((rc = cfg_int(x, o, pp, K("embed_dim"), E, 1, &e)) ||
        (rc = cfg_int(x, o, pp, K("num_heads"), -1, 1, &p->H)))
        return rc;
    if (e != E || E % p->H != 0)
        return enc__fail(x->errbuf, x->errlen, ENC_INVAL,
                         "%s: %sembed_dim %d / num_heads %d: expected projection_dim %d in "
                         "whole heads", x->file, pp, e, p->H, E);
    return ENC_OK;
}

/* COLIPRI: the package's own config (colipri/configs/, resolved: hydra's
 * ${...} replaced by their values) as JSON.  projection_dim at the top;
 * model.image_encoder.{backbone (Primus's arguments), projector (Conv3d's),
 * pooler}; model.text_encoder.{backbone (BertConfig names: the CXR-BERT
 * checkpoint's own config.json; bert-base by default), pooler};
 * processor.tokenizer.model_max_length.  Either encoder may be absent or
 * null.  What medsem does not implement is refused by name: absolute
 * positions, register tokens, RoPE off. */
static int cfg_colipri(cfgx *x, const cJSON *root, enc_model *m)
{
    int rc;
    vit *v = &m->v;
    bert *t = &m->t;
    if ((rc = cfg_int(x, root, "", K("projection_dim"), -1, 1, &m->E)))
        return rc;
    m->logit_scale = 0; /* softmax_temperature 1, unless the file has one */
    const cJSON *mo = jobj(root, "model");
    const cJSON *io = jobj(mo, "image_encoder"), *to = jobj(mo, "text_encoder");
    if (io == NULL && to == NULL)
        return enc__fail(x->errbuf, x->errlen, ENC_MISSING,
                         "%s: model.image_encoder and model.text_encoder: both missing", x->file);
    if (io != NULL) {
        const char *bp = "model.image_encoder.backbone.";
        const cJSON *bo = jobj(io, "backbone");
        if (bo == NULL)
            return enc__fail(x->errbuf, x->errlen, ENC_MISSING, "%s: %.*s: missing", x->file,
                             (int)strlen(bp) - 1, bp);
        int C, reg, rope, abspos;
        double ratio = 4.0 * 2.0 / 3.0;
        const cJSON *iv = cJSON_GetObjectItemCaseSensitive(bo, "init_values");
        const cJSON *mr = cJSON_GetObjectItemCaseSensitive(bo, "mlp_ratio");
        if (mr != NULL && (!cJSON_IsNumber(mr) || !(mr->valuedouble > 0)))
            return enc__fail(x->errbuf, x->errlen, ENC_INVAL, "%s: %smlp_ratio: expected a "
                             "positive number", x->file, bp);
        if (mr != NULL)
            ratio = mr->valuedouble;
        v->present = v->has3d = v->eva = 1;
        if ((rc = cfg_int(x, bo, bp, K("embed_dim"), -1, 1, &v->D)) ||
            (rc = cfg_int(x, bo, bp, K("eva_depth"), 24, 0, &v->L)) ||
            (rc = cfg_int(x, bo, bp, K("eva_numheads"), 16, 1, &v->H)) ||
            (rc = cfg_int(x, bo, bp, K("input_channels"), 1, 1, &C)) ||
            (rc = cfg_int(x, bo, bp, K("num_register_tokens"), 0, 0, &reg)) ||
            (rc = cfg_bool(x, bo, bp, "use_rot_pos_emb", 1, &rope)) ||
            (rc = cfg_bool(x, bo, bp, "use_abs_pos_embed", 1, &abspos)) ||
            (rc = cfg_bool(x, bo, bp, "scale_attn_inner", 0, &v->inner_norm)) ||
            (rc = cfg_float(x, bo, bp, K("layer_norm_eps"), 1e-5, &v->eps)))
            return rc;
        if (iv != NULL && !cJSON_IsNull(iv) && !cJSON_IsNumber(iv))
            return enc__fail(x->errbuf, x->errlen, ENC_INVAL,
                             "%s: %sinit_values: expected a number or null", x->file, bp);
        v->layer_scale = iv != NULL && cJSON_IsNumber(iv);
        if (!rope || abspos || reg != 0)
            return enc__fail(x->errbuf, x->errlen, ENC_UNSUPPORTED,
                             "%s: %s%s (medsem implements Primus with RoPE, no absolute "
                             "position embedding and no register tokens, as COLIPRI uses it)",
                             x->file, bp,
                             !rope     ? "use_rot_pos_emb false"
                             : abspos ? "use_abs_pos_embed true (or absent: Primus's default)"
                                      : "num_register_tokens > 0");
        if (v->D % v->H != 0)
            return enc__fail(x->errbuf, x->errlen, ENC_INVAL,
                             "%s: %sembed_dim %d is not a multiple of eva_numheads %d", x->file,
                             bp, v->D, v->H);
        v->M = (int)(v->D * ratio); /* int(dim * mlp_ratio), as timm's EvaBlock */
        if (v->M < 1)
            return enc__fail(x->errbuf, x->errlen, ENC_INVAL, "%s: %smlp_ratio %g gives no "
                             "MLP", x->file, bp, ratio);
        v->g3 = (enc_patch_geom){C, {0, 0, 0}, {0, 0, 0}, ENC_PATCH_CONV};
        if ((rc = cfg_ints(x, bo, bp, K("input_shape"), 3, v->g3.size, NULL)) ||
            (rc = cfg_ints(x, bo, bp, K("patch_embed_size"), 3, v->g3.patch, NULL)) ||
            (rc = check_vit(x, v, bp)))
            return rc;
        /* Eva's rope_dim = head_dim / 1.5 must be a whole multiple of 4:
         * head_dim / 6 frequency bands per axis, three axes, in pairs */
        int hd = v->D / v->H;
        if (hd % 6 != 0)
            return enc__fail(x->errbuf, x->errlen, ENC_INVAL,
                             "%s: %sembed_dim %d / eva_numheads %d: the head size %d is not a "
                             "multiple of 6, as 3-D RoPE needs", x->file, bp, v->D, v->H, hd);
        const cJSON *po = jobj(io, "projector");
        int oc = m->E, ks[3] = {1, 1, 1};
        if (po != NULL &&
            ((rc = cfg_int(x, po, "model.image_encoder.projector.", K("out_channels"), m->E, 1,
                           &oc)) ||
             (rc = cfg_ints(x, po, "model.image_encoder.projector.", K("kernel_size"), 3, ks,
                            &(int){0}))))
            return rc;
        if (oc != m->E || ks[0] != 1 || ks[1] != 1 || ks[2] != 1)
            return enc__fail(x->errbuf, x->errlen, ENC_UNSUPPORTED,
                             "%s: model.image_encoder.projector: expected a 1x1x1 Conv3d to "
                             "projection_dim %d", x->file, m->E);
        v->head = (proj){v->D, 0, m->E, NULL, NULL, NULL, NULL};
        if ((rc = cfg_pool(x, jobj(io, "pooler"), "model.image_encoder.pooler", m->E,
                           &v->pool)))
            return rc;
    }
    if (to != NULL) {
        const cJSON *bo = jobj(to, "backbone");
        const char *bp = "model.text_encoder.backbone.";
        t->present = 1;
        if ((rc = cfg_hf_bert(x, bo, bp, t, 30522)) ||
            (rc = cfg_int(x, bo, bp, K("hidden_size"), m->E, 1, &t->D)) ||
            (rc = cfg_int(x, bo, bp, K("num_attention_heads"), t->D >= 128 ? t->D / 64 : 1, 1,
                          &t->H)))
            return rc;
        /* sizes the config leaves out are the checkpoint's (model_setup);
         * the heads, which no shape tells, are hidden_size / 64 (BERT's
         * rule: 12 for CXR-BERT's 768) */
        t->from_file = !jfind(bo, K("vocab_size"), NULL) ||
                       !jfind(bo, K("max_position_embeddings"), NULL) ||
                       !jfind(bo, K("type_vocab_size"), NULL);
        t->depth_from_file = !jfind(bo, K("num_hidden_layers"), NULL) ||
                             !jfind(bo, K("intermediate_size"), NULL);
        const cJSON *tk = jobj(jobj(root, "processor"), "tokenizer");
        if ((rc = cfg_int(x, tk, "processor.tokenizer.", K("model_max_length"),
                          t->P < 512 ? t->P : 512, 1, &t->max_len)))
            return rc;
        if (t->D != m->E)
            return enc__fail(x->errbuf, x->errlen, ENC_INVAL,
                             "%s: %shidden_size %d differs from projection_dim %d (COLIPRI "
                             "pools the text without a projection)", x->file, bp, t->D, m->E);
        if ((rc = check_bert(x, t, bp)) ||
            (rc = cfg_pool(x, jobj(to, "pooler"), "model.text_encoder.pooler", m->E,
                           &t->pool)))
            return rc;
    }
    return ENC_OK;
}

static int parse_config(const char *text, const char *file, enc_model *m, char *errbuf,
                        size_t errlen)
{
    cfgx x = {file, errbuf, errlen};
    cJSON *root = cJSON_Parse(text);
    if (root == NULL || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return enc__fail(errbuf, errlen, ENC_FORMAT, "%s: not a JSON object", file);
    }
    int rc;
    const char *a = cfg_str(root, K("architecture"));
    const char *mt = cfg_str(root, K("model_type"));
    if (a != NULL && strcmp(a, "medsem") == 0) {
        m->arch = ARCH_MEDSEM;
        rc = cfg_medsem(&x, root, m);
    } else if ((a != NULL && strcmp(a, "m3d-clip") == 0) ||
               (a == NULL && mt != NULL && strcmp(mt, "m3d_clip") == 0)) {
        m->arch = ARCH_M3D;
        rc = cfg_m3d(&x, root, m);
    } else if (a != NULL && strcmp(a, "biomedclip") == 0) {
        m->arch = ARCH_BIOMEDCLIP;
        rc = cfg_biomedclip(&x, root, m);
    } else if (a != NULL && strcmp(a, "colipri") == 0) {
        m->arch = ARCH_COLIPRI;
        rc = cfg_colipri(&x, root, m);
    } else if (a != NULL) {
        rc = enc__fail(errbuf, errlen, ENC_UNSUPPORTED,
                  "%s: architecture \"%s\" (medsem, m3d-clip, biomedclip or colipri)", file, a);
    } else {
        rc = enc__fail(errbuf, errlen, ENC_MISSING,
                  "%s: architecture: missing (and no model_type \"m3d_clip\")", file);
    }
    cJSON_Delete(root);
    if (rc == ENC_OK && m->v.stem_n == 0) {
        m->v.pe2 = m->v.g2; /* no stem: the patch embedding reads the input */
        m->v.pe3 = m->v.g3;
    }
    return rc;
}

/* ---- weights ------------------------------------------------------------------------ */

typedef struct rng {
    uint64_t s;
} rng;

static uint64_t rng_u64(rng *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Uniform on [-sqrt 3, sqrt 3): mean 0, variance 1, and cheap enough for
 * the 200M weights of a benchmark model. */
static float rng_unit(rng *r)
{
    return (float)((double)(rng_u64(r) >> 11) * (3.4641016151377544 / 9007199254740992.0) -
                   1.7320508075688772);
}

enum { W_COUNT, W_FILE, W_RANDOM };

/* Where weights come from during one mapping pass. */
typedef struct wsrc {
    int mode;
    enc_model *m;
    char *errbuf;
    size_t errlen;
    /* W_COUNT results: floats (aligned per tensor), tensors, name bytes */
    size_t floats, count, name_bytes;
    /* W_FILE / W_RANDOM */
    float *host;  /* random weights are drawn here */
    float *dev;   /* non-host backends: weights are uploaded here */
    size_t used;  /* floats carved so far */
    size_t nused; /* name bytes used */
    int copy;     /* W_FILE into host: copy each tensor to host (trainable) */
    rng r;
} wsrc;

static size_t align_up(size_t n)
{
    return (n + ALIGN_FLOATS - 1) / ALIGN_FLOATS * ALIGN_FLOATS;
}

/* Random values for tensor name (unit-variance uniform, scaled): fan-in
 * scaled weights, LayerNorm weights near 1, small biases, [CLS] and
 * position tables of standard deviation 0.5. */
static void draw(rng *r, const char *name, int rank, const int64_t *shape, float *x, size_t n)
{
    size_t nl = strlen(name);
    int is_weight = nl > 7 && (strcmp(name + nl - 7, ".weight") == 0 ||
                               strcmp(name + nl - 7, "_weight") == 0);
    int is_norm = strstr(name, "norm") != NULL || strstr(name, "LayerNorm") != NULL;
    double mean = 0, sd;
    if (is_weight && rank >= 2) {
        double fan = 1;
        for (int i = 1; i < rank; i++)
            fan *= (double)shape[i];
        sd = 1 / sqrt(fan);
    } else if (is_weight && is_norm) {
        mean = 1, sd = 0.1;
    } else if (rank == 1) {
        sd = 0.1;
    } else {
        sd = 0.5;
    }
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(mean + sd * rng_unit(r));
}

/* Maps one tensor: *dst = its data, checked to be shape[0..rank).  The name
 * is printf-formatted. */
static int wget(wsrc *w, const float **dst, int rank, const int64_t *shape, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static int wget(wsrc *w, const float **dst, int rank, const int64_t *shape, const char *fmt, ...)
{
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    int nn = vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    if (nn < 0 || (size_t)nn >= sizeof name)
        return enc__fail(w->errbuf, w->errlen, ENC_INVAL, "tensor name too long: %s", name);
    size_t n = 1;
    for (int i = 0; i < rank; i++)
        n *= (size_t)shape[i];
    if (w->mode == W_COUNT) {
        w->floats += align_up(n);
        w->count++;
        w->name_bytes += (size_t)nn + 1;
        *dst = NULL;
        return ENC_OK;
    }
    enc_model *m = w->m;
    const float *host;
    if (w->mode == W_FILE) {
        int rc = enc_st_get(m->st, name, rank, shape, &host, w->errbuf, w->errlen);
        if (rc)
            return rc;
        if (w->copy) {
            float *h = w->host + w->used;
            memcpy(h, host, n * sizeof(float));
            host = h;
        }
    } else {
        float *h = w->host + w->used;
        draw(&w->r, name, rank, shape, h, n);
        host = h;
    }
    const float *data = host;
    if (w->dev != NULL) {
        float *d = w->dev + w->used;
        int rc = m->be->iface.upload(m->be, d, host, n * sizeof(float));
        if (rc)
            return enc__fail(w->errbuf, w->errlen, rc, "uploading %s to the %s backend failed", name,
                        m->be->iface.name);
        data = d;
    }
    w->used += align_up(n);
    enc_param *p = &m->params[m->nparams++];
    p->name = m->names + w->nused;
    memcpy(m->names + w->nused, name, (size_t)nn + 1);
    w->nused += (size_t)nn + 1;
    p->rank = rank;
    memset(p->shape, 0, sizeof p->shape);
    memcpy(p->shape, shape, (size_t)rank * sizeof(int64_t));
    p->count = n;
    p->data = data;
    *dst = data;
    return ENC_OK;
}

#define WGET(dst, ...)                                                                      \
    do {                                                                                    \
        if ((rc = wget(w, (dst), __VA_ARGS__)) != ENC_OK)                                   \
            return rc;                                                                      \
    } while (0)
#define S1(a) 1, (const int64_t[]){(a)}
#define S2(a, b) 2, (const int64_t[]){(a), (b)}
#define S3(a, b, c) 3, (const int64_t[]){(a), (b), (c)}

/* Parameter names of one ViT layout.  Block names are "<blocks><i>.<x>". */
typedef struct vit_names {
    const char *stem2d, *stem3d;   /* "<stem>.<i>.weight" of the convolution stems */
    const char *patch2d, *patch3d; /* weight/bias stem */
    const char *cls, *pos2d, *pos3d;
    const char *blocks;
    const char *norm1, *qkv, *out, *norm2, *fc1, *fc2;
    const char *norm;
} vit_names;

static const vit_names names_medsem = {
    "vision.stem2d", "vision.stem3d", "vision.patch2d", "vision.patch3d", "vision.cls_token", "vision.pos2d", "vision.pos3d",
    "vision.blocks.", "norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2",
    "vision.norm",
};
static const vit_names names_timm = {
    NULL, NULL, "visual.trunk.patch_embed.proj", NULL, "visual.trunk.cls_token", "visual.trunk.pos_embed",
    NULL, "visual.trunk.blocks.", "norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1",
    "mlp.fc2", "visual.trunk.norm",
};
static const vit_names names_monai = {
    NULL, NULL, NULL, "vision_encoder.patch_embedding.patch_embeddings.1", "vision_encoder.cls_token",
    NULL, "vision_encoder.patch_embedding.position_embeddings", "vision_encoder.blocks.",
    "norm1", "attn.qkv", "attn.out_proj", "norm2", "mlp.linear1", "mlp.linear2",
    "vision_encoder.norm",
};

/* A patch embedding's weight: conv order keeps the Conv weight's own rank
 * ([D, C, (pz,) py, px]); MONAI's perceptron is a Linear [D, K]. */
static int map_patch(wsrc *w, const vit *v, const enc_patch_geom *g, int dims, const char *stem,
                     const float **pw, const float **pb)
{
    int rc;
    int64_t shape[5] = {v->D, g->channels, g->patch[0], g->patch[1], g->patch[2]};
    if (g->order == ENC_PATCH_CLAST) {
        WGET(pw, S2(v->D, (int64_t)enc_patch_dim(g)), "%s.weight", stem);
    } else if (dims == 2) {
        shape[2] = g->patch[1];
        shape[3] = g->patch[2];
        WGET(pw, 4, shape, "%s.weight", stem);
    } else {
        WGET(pw, 5, shape, "%s.weight", stem);
    }
    WGET(pb, S1(v->D), "%s.bias", stem);
    return ENC_OK;
}

/* The stem's convolutions: <stem>.<i>.weight [cout, cin, (kz,) ky, kx] and
 * .bias [cout]. */
static int map_stem(wsrc *w, const vit *v, const enc_conv_geom *cg, int dims, const char *stem,
                    const float **sw, const float **sb)
{
    int rc;
    for (int i = 0; i < v->stem_n; i++) {
        const enc_conv_geom *c = &cg[i];
        int64_t shape[5] = {c->cout, c->cin, c->kernel[0], c->kernel[1], c->kernel[2]};
        if (dims == 2)
            shape[2] = c->kernel[1], shape[3] = c->kernel[2];
        WGET(&sw[i], dims + 2, shape, "%s.%d.weight", stem, i);
        WGET(&sb[i], S1(c->cout), "%s.%d.bias", stem, i);
    }
    return ENC_OK;
}

static int map_vit(wsrc *w, vit *v, const vit_names *n)
{
    int rc;
    const int64_t D = v->D, M = v->M;
    assert(v->stem_n == 0 || (n->stem2d != NULL && n->stem3d != NULL));
    if (v->has2d) {
        if ((rc = map_stem(w, v, v->sg2, 2, n->stem2d, v->sw2, v->sb2)) ||
            (rc = map_patch(w, v, &v->pe2, 2, n->patch2d, &v->pw2, &v->pb2)))
            return rc;
    }
    if (v->has3d) {
        if ((rc = map_stem(w, v, v->sg3, 3, n->stem3d, v->sw3, v->sb3)) ||
            (rc = map_patch(w, v, &v->pe3, 3, n->patch3d, &v->pw3, &v->pb3)))
            return rc;
    }
    WGET(&v->cls, S3(1, 1, D), "%s", n->cls);
    if (v->has2d)
        WGET(&v->pos2, S3(1, (int64_t)enc_patch_count(&v->g2) + v->pos_has_cls, D), "%s",
             n->pos2d);
    if (v->has3d)
        WGET(&v->pos3, S3(1, (int64_t)enc_patch_count(&v->g3) + v->pos_has_cls, D), "%s",
             n->pos3d);
    for (int i = 0; i < v->L; i++) {
        vit_block *b = &v->blk[i];
        const char *p = n->blocks;
        WGET(&b->ln1_w, S1(D), "%s%d.%s.weight", p, i, n->norm1);
        WGET(&b->ln1_b, S1(D), "%s%d.%s.bias", p, i, n->norm1);
        WGET(&b->qkv_w, S2(3 * D, D), "%s%d.%s.weight", p, i, n->qkv);
        b->qkv_b = NULL;
        if (v->qkv_bias)
            WGET(&b->qkv_b, S1(3 * D), "%s%d.%s.bias", p, i, n->qkv);
        WGET(&b->out_w, S2(D, D), "%s%d.%s.weight", p, i, n->out);
        WGET(&b->out_b, S1(D), "%s%d.%s.bias", p, i, n->out);
        WGET(&b->ln2_w, S1(D), "%s%d.%s.weight", p, i, n->norm2);
        WGET(&b->ln2_b, S1(D), "%s%d.%s.bias", p, i, n->norm2);
        WGET(&b->fc1_w, S2(M, D), "%s%d.%s.weight", p, i, n->fc1);
        WGET(&b->fc1_b, S1(M), "%s%d.%s.bias", p, i, n->fc1);
        WGET(&b->fc2_w, S2(D, M), "%s%d.%s.weight", p, i, n->fc2);
        WGET(&b->fc2_b, S1(D), "%s%d.%s.bias", p, i, n->fc2);
    }
    WGET(&v->norm_w, S1(D), "%s.weight", n->norm);
    WGET(&v->norm_b, S1(D), "%s.bias", n->norm);
    return ENC_OK;
}

/* A Hugging Face BertModel under prefix p ("text.", ...); the pooler is not
 * used and not required. */
static int map_bert(wsrc *w, bert *t, const char *p)
{
    int rc;
    const int64_t D = t->D, I = t->I;
    WGET(&t->word, S2(t->V, D), "%sembeddings.word_embeddings.weight", p);
    WGET(&t->pos, S2(t->P, D), "%sembeddings.position_embeddings.weight", p);
    WGET(&t->type, S2(t->types, D), "%sembeddings.token_type_embeddings.weight", p);
    WGET(&t->eln_w, S1(D), "%sembeddings.LayerNorm.weight", p);
    WGET(&t->eln_b, S1(D), "%sembeddings.LayerNorm.bias", p);
    for (int i = 0; i < t->L; i++) {
        bert_layer *l = &t->lay[i];
        const char *e = "encoder.layer.";
        WGET(&l->q_w, S2(D, D), "%s%s%d.attention.self.query.weight", p, e, i);
        WGET(&l->q_b, S1(D), "%s%s%d.attention.self.query.bias", p, e, i);
        WGET(&l->k_w, S2(D, D), "%s%s%d.attention.self.key.weight", p, e, i);
        WGET(&l->k_b, S1(D), "%s%s%d.attention.self.key.bias", p, e, i);
        WGET(&l->v_w, S2(D, D), "%s%s%d.attention.self.value.weight", p, e, i);
        WGET(&l->v_b, S1(D), "%s%s%d.attention.self.value.bias", p, e, i);
        WGET(&l->o_w, S2(D, D), "%s%s%d.attention.output.dense.weight", p, e, i);
        WGET(&l->o_b, S1(D), "%s%s%d.attention.output.dense.bias", p, e, i);
        WGET(&l->ln1_w, S1(D), "%s%s%d.attention.output.LayerNorm.weight", p, e, i);
        WGET(&l->ln1_b, S1(D), "%s%s%d.attention.output.LayerNorm.bias", p, e, i);
        WGET(&l->i_w, S2(I, D), "%s%s%d.intermediate.dense.weight", p, e, i);
        WGET(&l->i_b, S1(I), "%s%s%d.intermediate.dense.bias", p, e, i);
        WGET(&l->f_w, S2(D, I), "%s%s%d.output.dense.weight", p, e, i);
        WGET(&l->f_b, S1(D), "%s%s%d.output.dense.bias", p, e, i);
        WGET(&l->ln2_w, S1(D), "%s%s%d.output.LayerNorm.weight", p, e, i);
        WGET(&l->ln2_b, S1(D), "%s%s%d.output.LayerNorm.bias", p, e, i);
    }
    return ENC_OK;
}

/* Projection weights: w1 at stem1 (with bias when bias1), and for an MLP w2
 * at stem2. */
static int map_proj(wsrc *w, proj *h, const char *stem1, int bias1, const char *stem2,
                    int bias2)
{
    int rc;
    int mid = h->hidden ? h->hidden : h->out;
    WGET(&h->w1, S2(mid, h->in), "%s.weight", stem1);
    h->b1 = NULL;
    if (bias1)
        WGET(&h->b1, S1(mid), "%s.bias", stem1);
    if (h->hidden) {
        WGET(&h->w2, S2(h->out, h->hidden), "%s.weight", stem2);
        h->b2 = NULL;
        if (bias2)
            WGET(&h->b2, S1(h->out), "%s.bias", stem2);
    }
    return ENC_OK;
}

/* <stem><name>.weight, [rows] when cols is 0 (a LayerNorm) else [rows,
 * cols] (a Linear), and <stem><name>.bias [rows] unless b is NULL. */
static int wpair(wsrc *w, const char *stem, const char *name, int64_t rows, int64_t cols,
                 const float **wt, const float **b)
{
    int rc;
    if (cols)
        WGET(wt, S2(rows, cols), "%s%s.weight", stem, name);
    else
        WGET(wt, S1(rows), "%s%s.weight", stem, name);
    if (b != NULL)
        WGET(b, S1(rows), "%s%s.bias", stem, name);
    return ENC_OK;
}

/* Primus (dynamic_network_architectures) under p: the Conv3d patch
 * embedding down_projection.proj, the Eva trunk eva.blocks.<i> (timm's
 * EvaBlock names) and eva.norm; the decoder (up_projection) is not used and
 * COLIPRI removes it.  Then the projector (a 1x1x1 Conv3d, under pr). */
static int map_eva(wsrc *w, vit *v, const char *p, const char *pr)
{
    int rc;
    const int64_t D = v->D, M = v->M;
    char stem[160];
    snprintf(stem, sizeof stem, "%sdown_projection.proj", p);
    if ((rc = map_patch(w, v, &v->pe3, 3, stem, &v->pw3, &v->pb3)))
        return rc;
    for (int i = 0; i < v->L; i++) {
        eva_block *b = &v->eblk[i];
        snprintf(stem, sizeof stem, "%seva.blocks.%d.", p, i);
        b->an_w = b->an_b = b->g1 = b->g2 = NULL;
        if ((rc = wpair(w, stem, "norm1", D, 0, &b->ln1_w, &b->ln1_b)) ||
            (rc = wpair(w, stem, "attn.q_proj", D, D, &b->q_w, &b->q_b)) ||
            (rc = wpair(w, stem, "attn.k_proj", D, D, &b->k_w, NULL)) ||
            (rc = wpair(w, stem, "attn.v_proj", D, D, &b->v_w, &b->v_b)) ||
            (v->inner_norm && (rc = wpair(w, stem, "attn.norm", D, 0, &b->an_w, &b->an_b))) ||
            (rc = wpair(w, stem, "attn.proj", D, D, &b->out_w, &b->out_b)))
            return rc;
        if (v->layer_scale)
            WGET(&b->g1, S1(D), "%sgamma_1", stem);
        if ((rc = wpair(w, stem, "norm2", D, 0, &b->ln2_w, &b->ln2_b)) ||
            (rc = wpair(w, stem, "mlp.fc1_g", M, D, &b->fg_w, &b->fg_b)) ||
            (rc = wpair(w, stem, "mlp.fc1_x", M, D, &b->fx_w, &b->fx_b)) ||
            (rc = wpair(w, stem, "mlp.norm", M, 0, &b->mn_w, &b->mn_b)) ||
            (rc = wpair(w, stem, "mlp.fc2", D, M, &b->fc2_w, &b->fc2_b)))
            return rc;
        if (v->layer_scale)
            WGET(&b->g2, S1(D), "%sgamma_2", stem);
    }
    if ((rc = wpair(w, p, "eva.norm", D, 0, &v->norm_w, &v->norm_b)))
        return rc;
    proj *h = &v->head;
    WGET(&h->w1, 5, ((const int64_t[]){h->out, D, 1, 1, 1}), "%s.weight", pr);
    WGET(&h->b1, S1(h->out), "%s.bias", pr);
    return ENC_OK;
}

/* An AttentionPool1D's MultiheadAttention under p: in_proj_weight [3E, E],
 * in_proj_bias, out_proj.weight [E, E], out_proj.bias. */
static int map_pool(wsrc *w, apool *a, int64_t E, const char *p)
{
    int rc;
    WGET(&a->w_in, S2(3 * E, E), "%sattn.in_proj_weight", p);
    WGET(&a->b_in, S1(3 * E), "%sattn.in_proj_bias", p);
    WGET(&a->w_out, S2(E, E), "%sattn.out_proj.weight", p);
    WGET(&a->b_out, S1(E), "%sattn.out_proj.bias", p);
    return ENC_OK;
}

/* Walks every parameter of m's architecture, in a fixed order. */
static int map_model(wsrc *w)
{
    enc_model *m = w->m;
    int rc;
    switch (m->arch) {
    case ARCH_MEDSEM:
        if (m->v.present && ((rc = map_vit(w, &m->v, &names_medsem)) ||
                             (rc = map_proj(w, &m->v.head, "vision.proj", 0, NULL, 0))))
            return rc;
        if (m->t.present && ((rc = map_bert(w, &m->t, "text.")) ||
                             (rc = map_proj(w, &m->t.head, "text.proj", 0, NULL, 0))))
            return rc;
        break;
    case ARCH_M3D: {
        /* MONAI's "conv" patch embedding is a Conv3d without the Sequential */
        vit_names monai = names_monai;
        if (m->v.g3.order == ENC_PATCH_CONV)
            monai.patch3d = "vision_encoder.patch_embedding.patch_embeddings";
        if ((rc = map_vit(w, &m->v, &monai)) ||
            (rc = map_proj(w, &m->v.head, "mm_vision_proj", 1, NULL, 0)) ||
            (rc = map_bert(w, &m->t, "language_encoder.")) ||
            (rc = map_proj(w, &m->t.head, "mm_language_proj", 1, NULL, 0)))
            return rc;
        break;
    }
    case ARCH_BIOMEDCLIP:
        if (m->v.present && (rc = map_vit(w, &m->v, &names_timm)))
            return rc;
        if (m->v.present && m->v.head.hidden == 0 &&
            (rc = map_proj(w, &m->v.head, "visual.head.proj", m->v_head_bias, NULL, 0)))
            return rc;
        if (m->v.present && m->v.head.hidden != 0 &&
            (rc = map_proj(w, &m->v.head, "visual.head.mlp.fc1", 1, "visual.head.mlp.fc2",
                           m->v_head_bias)))
            return rc;
        /* open_clip's HFTextEncoder: "mlp" = proj.0 - GELU - proj.2, "linear" =
         * proj, no biases */
        if (m->t.present && ((rc = map_bert(w, &m->t, "text.transformer.")) ||
                             (rc = m->t.head.hidden
                                       ? map_proj(w, &m->t.head, "text.proj.0", 0, "text.proj.2", 0)
                                       : map_proj(w, &m->t.head, "text.proj", 0, NULL, 0))))
            return rc;
        break;
    case ARCH_COLIPRI:
        /* colipri.model.multimodal.Model's state dict */
        if (m->v.present &&
            ((rc = map_eva(w, &m->v, "image_encoder.backbone.", "image_encoder.projector")) ||
             (rc = map_pool(w, &m->v.pool, m->E, "image_encoder.pooler."))))
            return rc;
        if (m->t.present && ((rc = map_bert(w, &m->t, "text_encoder.backbone.")) ||
                             (rc = map_pool(w, &m->t.pool, m->E, "text_encoder.pooler."))))
            return rc;
        break;
    }
    return ENC_OK;
}

/* Sizes the config leaves to the tensors (M3D-CLIP's text tables): rows of
 * a [rows, D] table, when the file has one of that width.  Otherwise the
 * default stays, and mapping reports the tensor. */
static void resolve_rows(enc_st *st, const char *name, int64_t D, int *rows)
{
    enc_st_info info;
    if (enc_st_info_get(st, name, &info) == ENC_OK && info.rank == 2 && info.shape[1] == D &&
        info.shape[0] >= 1 && info.shape[0] <= 1 << 30)
        *rows = (int)info.shape[0];
}

/* After config: sizes from the file, layer arrays, backend.  Then the two
 * mapping passes. */
static int model_setup(enc_model *m, const enc_model_opts *o, int mode, uint64_t seed,
                       char *errbuf, size_t errlen)
{
    bert *t = &m->t;
    if (t->present && t->from_file && m->st != NULL) {
        const char *p = m->arch == ARCH_COLIPRI ? "text_encoder.backbone.embeddings."
                                                : "language_encoder.embeddings.";
        char name[96];
        snprintf(name, sizeof name, "%sword_embeddings.weight", p);
        resolve_rows(m->st, name, t->D, &t->V);
        snprintf(name, sizeof name, "%sposition_embeddings.weight", p);
        resolve_rows(m->st, name, t->D, &t->P);
        snprintf(name, sizeof name, "%stoken_type_embeddings.weight", p);
        resolve_rows(m->st, name, t->D, &t->types);
    }
    if (t->present && t->depth_from_file && m->st != NULL) {
        /* layers: as many as the file has queries for; I: the first
         * intermediate layer's rows */
        const char *p = "text_encoder.backbone.encoder.layer.";
        char name[128];
        enc_st_info info;
        int L = 0;
        for (; L < MAX_LAYERS; L++) {
            snprintf(name, sizeof name, "%s%d.attention.self.query.weight", p, L);
            if (enc_st_info_get(m->st, name, &info) != ENC_OK)
                break;
        }
        t->L = L;
        snprintf(name, sizeof name, "%s0.intermediate.dense.weight", p);
        if (L > 0 && enc_st_info_get(m->st, name, &info) == ENC_OK && info.rank == 2 &&
            info.shape[0] >= 1 && info.shape[0] <= 1 << 20)
            t->I = (int)info.shape[0];
    }
    if (t->present && m->arch == ARCH_COLIPRI && t->max_len > t->P)
        t->max_len = t->P; /* the tokenizer's 512 against a smaller table */
    if (t->present && t->max_len > t->P)
        return enc__fail(errbuf, errlen, ENC_INVAL,
                    "text max length %d exceeds the %d position embeddings", t->max_len, t->P);
    if (o != NULL && o->backend != NULL) {
        m->be = o->backend;
    } else {
        m->be = enc_backend_cpu_new(o ? o->nthreads : 0);
        if (m->be == NULL)
            return enc__fail(errbuf, errlen, ENC_NOMEM, "out of memory");
        m->own_be = 1;
    }
    if (m->v.present && m->v.L > 0 && !m->v.eva &&
        (m->v.blk = calloc((size_t)m->v.L, sizeof *m->v.blk)) == NULL)
        return enc__fail(errbuf, errlen, ENC_NOMEM, "out of memory");
    if (m->v.present && m->v.L > 0 && m->v.eva &&
        (m->v.eblk = calloc((size_t)m->v.L, sizeof *m->v.eblk)) == NULL)
        return enc__fail(errbuf, errlen, ENC_NOMEM, "out of memory");
    if (m->t.present && m->t.L > 0 &&
        (m->t.lay = calloc((size_t)m->t.L, sizeof *m->t.lay)) == NULL)
        return enc__fail(errbuf, errlen, ENC_NOMEM, "out of memory");

    wsrc w = {.mode = W_COUNT, .m = m, .errbuf = errbuf, .errlen = errlen};
    int rc = map_model(&w);
    if (rc)
        return rc;
    m->params = calloc(w.count ? w.count : 1, sizeof *m->params);
    m->names = malloc(w.name_bytes ? w.name_bytes : 1);
    if (m->params == NULL || m->names == NULL)
        return enc__fail(errbuf, errlen, ENC_NOMEM, "out of memory");
    size_t bytes = w.floats * sizeof(float);
    m->trainable = o != NULL && o->trainable;
    int copy = mode == W_FILE && m->trainable && m->be->iface.host_memory;
    if ((mode == W_RANDOM || copy) && (m->host = m->be->iface.host_memory
                                           ? m->be->iface.alloc(m->be, bytes)
                                           : malloc(bytes ? bytes : 1)) == NULL)
        return enc__fail(errbuf, errlen, ENC_NOMEM, "out of memory for %zu bytes of weights", bytes);
    if (!m->be->iface.host_memory && (m->dev = m->be->iface.alloc(m->be, bytes)) == NULL)
        return enc__fail(errbuf, errlen, ENC_NOMEM, "out of %s memory for %zu bytes of weights",
                    m->be->iface.name, bytes);
    wsrc f = {.mode = mode, .m = m, .errbuf = errbuf, .errlen = errlen, .host = m->host,
              .dev = m->dev, .copy = copy, .r = {seed}};
    if ((rc = map_model(&f)))
        return rc;
    m->arena = m->dev ? m->dev : m->host;
    m->arena_floats = w.floats;
    if (m->dev && (rc = m->be->iface.sync(m->be)))
        return enc__fail(errbuf, errlen, rc, "uploading weights to the %s backend failed",
                    m->be->iface.name);
    return ENC_OK;
}

/* Hex SHA-256 of a file's bytes, read in 1 MiB chunks. */
static int hash_file(const char *path, char hex[2 * UTIL_SHA256_SIZE + 1], char *errbuf,
                     size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return enc__fail(errbuf, errlen, ENC_IO, "%s: %s", path, strerror(errno));
    size_t cap = 1 << 20;
    unsigned char *buf = malloc(cap);
    if (buf == NULL) {
        fclose(f);
        return enc__fail(errbuf, errlen, ENC_NOMEM, "out of memory");
    }
    util_sha256_ctx c;
    util_sha256_init(&c);
    size_t n;
    while ((n = fread(buf, 1, cap, f)) > 0)
        util_sha256_update(&c, buf, n);
    int bad = ferror(f);
    fclose(f);
    free(buf);
    if (bad)
        return enc__fail(errbuf, errlen, ENC_IO, "%s: read error", path);
    uint8_t h[UTIL_SHA256_SIZE];
    util_sha256_final(&c, h);
    util_sha256_hex(h, hex);
    return ENC_OK;
}

static char *read_text(const char *path, int *code, char *errbuf, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        *code = enc__fail(errbuf, errlen, ENC_IO, "%s: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 4096, n = 0;
    char *s = malloc(cap);
    while (s != NULL) {
        n += fread(s + n, 1, cap - 1 - n, f);
        if (n < cap - 1 || ferror(f))
            break;
        if (cap >= (size_t)16 << 20) {
            free(s);
            fclose(f);
            *code = enc__fail(errbuf, errlen, ENC_TOOBIG, "%s: larger than 16 MiB", path);
            return NULL;
        }
        char *t = realloc(s, cap * 2);
        if (t == NULL) {
            free(s);
            s = NULL;
            break;
        }
        s = t;
        cap *= 2;
    }
    int bad = s != NULL && ferror(f);
    fclose(f);
    if (s == NULL) {
        *code = enc__fail(errbuf, errlen, ENC_NOMEM, "out of memory");
        return NULL;
    }
    if (bad) {
        free(s);
        *code = enc__fail(errbuf, errlen, ENC_IO, "%s: read error", path);
        return NULL;
    }
    s[n] = '\0';
    return s;
}

int enc_model_load(const char *dir, const enc_model_opts *o, enc_model **out, char *errbuf,
                   size_t errlen)
{
    size_t dl = strlen(dir);
    char *cfg_path = malloc(dl + 32), *st_path = malloc(dl + 32);
    enc_model *m = calloc(1, sizeof *m);
    int rc;
    if (cfg_path == NULL || st_path == NULL || m == NULL) {
        rc = enc__fail(errbuf, errlen, ENC_NOMEM, "out of memory");
        goto done;
    }
    snprintf(cfg_path, dl + 32, "%s/config.json", dir);
    snprintf(st_path, dl + 32, "%s/model.safetensors", dir);
    char *text = read_text(cfg_path, &rc, errbuf, errlen);
    if (text == NULL)
        goto done;
    rc = parse_config(text, cfg_path, m, errbuf, errlen);
    free(text);
    if (rc)
        goto done;
    if ((rc = enc_st_open(st_path, &m->st, errbuf, errlen)))
        goto done;
    if ((rc = model_setup(m, o, W_FILE, 0, errbuf, errlen)))
        goto done;
    /* A logit_scale tensor (open_clip, M3D-CLIP) overrides the default. */
    enc_st_info info;
    const float *ls;
    if (enc_st_info_get(m->st, "logit_scale", &info) == ENC_OK && info.nelem == 1 &&
        enc_st_get(m->st, "logit_scale", info.rank, info.shape, &ls, NULL, 0) == ENC_OK)
        m->logit_scale = ls[0];
    /* COLIPRI divides its similarities by softmax_temperature */
    if (m->arch == ARCH_COLIPRI && enc_st_info_get(m->st, "softmax_temperature", &info) == ENC_OK &&
        info.nelem == 1 &&
        enc_st_get(m->st, "softmax_temperature", info.rank, info.shape, &ls, NULL, 0) == ENC_OK &&
        ls[0] > 0)
        m->logit_scale = -logf(ls[0]);
    if ((o == NULL || !o->no_id) && (rc = hash_file(st_path, m->id, errbuf, errlen)))
        goto done;
done:
    free(cfg_path);
    free(st_path);
    if (rc) {
        enc_model_free(m);
        return rc;
    }
    *out = m;
    return ENC_OK;
}

int enc_model_new_random(const char *config_json, uint64_t seed, const enc_model_opts *o,
                         enc_model **out, char *errbuf, size_t errlen)
{
    enc_model *m = calloc(1, sizeof *m);
    if (m == NULL)
        return enc__fail(errbuf, errlen, ENC_NOMEM, "out of memory");
    int rc = parse_config(config_json, "config", m, errbuf, errlen);
    if (rc == ENC_OK)
        rc = model_setup(m, o, W_RANDOM, seed, errbuf, errlen);
    if (rc) {
        enc_model_free(m);
        return rc;
    }
    /* the weights are a function of the two */
    util_sha256_ctx c;
    util_sha256_init(&c);
    util_sha256_update(&c, "medsem-random\0", 14);
    util_sha256_update(&c, config_json, strlen(config_json) + 1);
    uint8_t sb[8], h[UTIL_SHA256_SIZE];
    for (int i = 0; i < 8; i++)
        sb[i] = (uint8_t)(seed >> (8 * i));
    util_sha256_update(&c, sb, sizeof sb);
    util_sha256_final(&c, h);
    util_sha256_hex(h, m->id);
    *out = m;
    return ENC_OK;
}

void enc_model_free(enc_model *m)
{
    if (m == NULL)
        return;
    if (m->be != NULL) {
        if (m->dev)
            m->be->iface.free(m->be, m->dev);
        if (m->host && m->be->iface.host_memory)
            m->be->iface.free(m->be, m->host);
        else
            free(m->host);
    }
    enc_st_close(m->st);
    free(m->v.blk);
    free(m->v.eblk);
    free(m->t.lay);
    free(m->params);
    free(m->names);
    if (m->own_be)
        enc_backend_free(m->be);
    free(m);
}

const char *enc_model_arch(const enc_model *m)
{
    return arch_names[m->arch];
}

const char *enc_model_id(const enc_model *m)
{
    return m->id;
}

int enc_model_embed_dim(const enc_model *m)
{
    return m->E;
}

float enc_model_logit_scale(const enc_model *m)
{
    return m->logit_scale;
}

int enc_model_has(const enc_model *m, enc_kind kind)
{
    switch (kind) {
    case ENC_IMAGE:
        return m->v.present && m->v.has2d;
    case ENC_VOLUME:
        return m->v.present && m->v.has3d;
    case ENC_TEXT:
        return m->t.present;
    }
    return 0;
}

int enc_model_geom(const enc_model *m, enc_kind kind, enc_input_geom *g)
{
    if (!enc_model_has(m, kind))
        return ENC_UNSUPPORTED;
    memset(g, 0, sizeof *g);
    if (kind == ENC_TEXT) {
        g->tokens = m->t.max_len;
        g->vocab_size = m->t.V;
        g->hidden_size = m->t.D;
        g->num_layers = m->t.L;
        g->num_heads = m->t.H;
        return ENC_OK;
    }
    const enc_patch_geom *pg = kind == ENC_IMAGE ? &m->v.g2 : &m->v.g3;
    g->channels = pg->channels;
    memcpy(g->size, pg->size, sizeof g->size);
    memcpy(g->patch, pg->patch, sizeof g->patch);
    g->tokens = !m->v.eva + (int)enc_patch_count(pg); /* [CLS], except in EVA */
    const enc_patch_geom *pe = kind == ENC_IMAGE ? &m->v.pe2 : &m->v.pe3;
    const enc_conv_geom *cg = kind == ENC_IMAGE ? m->v.sg2 : m->v.sg3;
    g->embed_macs = (double)enc_patch_count(pe) * enc_patch_dim(pe) * m->v.D;
    for (int i = 0; i < m->v.stem_n; i++)
        g->embed_macs += (double)enc_conv_count(&cg[i]) * enc_conv_dim(&cg[i]) * cg[i].cout;
    g->hidden_size = m->v.D;
    g->num_layers = m->v.L;
    g->num_heads = m->v.H;
    return ENC_OK;
}

size_t enc_model_param_count(const enc_model *m)
{
    return m->nparams;
}

void enc_model_param(const enc_model *m, size_t i, enc_param *p)
{
    *p = m->params[i];
}

float *enc_model_param_mut(enc_model *m, size_t i)
{
    if (!m->trainable || m->arena == NULL || i >= m->nparams)
        return NULL;
    return m->arena + (m->params[i].data - m->arena);
}

/* ---- gradients ---------------------------------------------------------------------------- */

struct enc_grads {
    const enc_model *m;
    float *mem; /* arena_floats, the weights' layout */
};

int enc_grads_new(const enc_model *m, enc_grads **out)
{
    if (!m->trainable || m->arena == NULL)
        return ENC_INVAL;
    if (m->be->train.zero == NULL)
        return ENC_UNSUPPORTED;
    enc_grads *g = calloc(1, sizeof *g);
    if (g == NULL)
        return ENC_NOMEM;
    g->m = m;
    g->mem = m->be->iface.alloc(m->be, (m->arena_floats ? m->arena_floats : 1) * sizeof(float));
    if (g->mem == NULL) {
        free(g);
        return ENC_NOMEM;
    }
    enc_grads_zero(g);
    *out = g;
    return ENC_OK;
}

void enc_grads_zero(enc_grads *g)
{
    g->m->be->train.zero(g->m->be, g->mem, g->m->arena_floats);
}

void enc_grads_free(enc_grads *g)
{
    if (g == NULL)
        return;
    g->m->be->iface.free(g->m->be, g->mem);
    free(g);
}

float *enc_grads_data(enc_grads *g, size_t i)
{
    assert(i < g->m->nparams);
    return g->mem + (g->m->params[i].data - g->m->arena);
}

size_t enc_grads_bytes(const enc_grads *g)
{
    return g->m->arena_floats * sizeof(float);
}

/* The gradient of the weight at w (a pointer into the model's arena), or
 * NULL for an absent weight (a bias the layout does not have). */
static float *gof(const enc_grads *g, const float *w)
{
    if (w == NULL)
        return NULL;
    assert(w >= g->m->arena && w < g->m->arena + g->m->arena_floats);
    return g->mem + (w - g->m->arena);
}

/* ---- state ------------------------------------------------------------------------------ */

struct enc_state {
    const enc_model *m;
    enc_backend *be;
    enc_kind kind;
    unsigned flags;
    int batch, tokens_max; /* planned */
    int B, T;              /* last encode */
    int nlayers, D, H;
    float *mem;
    size_t bytes;
    /* carved buffers (backend memory) */
    float *input;   /* vision [batch, C, Z, Y, X] */
    int32_t *ids;   /* text [batch, Lmax] */
    float *mask;    /* text [batch, Lmax], 1 keep / 0 pad */
    float *hidden;  /* [(nlayers + 1) or 1][batch, T, D] */
    float *ln;      /* [batch, T, D] vision norm output */
    float *qkv;     /* [batch, T, 3D] */
    float *att;     /* [batch, T, D] */
    float *mlp;     /* [batch, T, M] */
    float *probs;   /* [nlayers][batch, H, T, T] or NULL */
    float *ascr;    /* attention scratch */
    float *pscr;    /* patch scratch */
    /* vision stem: layer i's output [batch, c_i, N_i] at stem_out + stem_off[i]
     * (after GELU), its input to GELU at stem_pre + stem_off[i] (training; the
     * same buffer otherwise) */
    float *stem_out, *stem_pre, *sscr;
    size_t stem_off[STEM_MAX];
    float *dstem[2]; /* training: two [batch, max c_i N_i] gradient buffers */
    float *pooled;  /* [batch, D] */
    /* COLIPRI */
    float *gate;    /* [batch, T, M] SwiGLU's fc1_x half */
    float *rope;    /* [T, hd] cos | sin of the 3-D RoPE angles */
    float *poolscr; /* attn_pool scratch */
    float *phid;    /* [batch, hidden] MLP projection */
    float *emb;     /* [batch, E] */
    float *hmask;   /* host [batch, Lmax] staging for the float mask */
    /* ENC_STATE_CLSATT */
    float *clsatt;  /* [batch, T - 1] used: [CLS] attention, layer and head mean */
    float *cscr;    /* [T] its scratch */
    /* ENC_STATE_TRAIN: qkv, att and fch then hold one slice per layer
     * (slice()), hidden every layer; the rest is kept for the backward or
     * is its scratch. */
    int train;
    int ready;      /* the last encode succeeded: it can be differentiated */
    float *fch;     /* [nlayers][batch, T, M] fc1 / intermediate before GELU
                       (NULL when not training: GELU runs in place on mlp) */
    float *mid;     /* vision [nlayers][batch, T, D]: x + attention (norm2's input) */
    float *r1, *r2; /* text [nlayers][batch, T, D]: the sums before each LayerNorm */
    float *tok;     /* text [batch, T, D]: embeddings before their LayerNorm */
    float *embpre;  /* [batch, E] before l2norm */
    float *phpre;   /* [batch, hidden] MLP projection before GELU */
    float *pooled_in;                     /* [batch, D] vision [CLS] before the norm */
    float *dx, *dr, *datt, *dqkv, *dmlp;  /* [batch, T, D / D / D / 3D / M] */
    float *demb, *dembpre, *dpool, *dpool2, *dphid;
    float *lscr, *abscr; /* layernorm / attention backward scratch */
    char err[256];
};

/* One planned buffer: count floats at *ptr. */
typedef struct act {
    const char *name;
    size_t count;
    float **ptr;
} act;

/* The 3-D RoPE table of an EVA state, [T, hd]: cos in columns [0, hd/2),
 * sin in [hd/2, hd), as timm's RotaryEmbeddingCat builds it for Primus
 * (rope dim 2 hd / 3, in_pixels False, feat_shape = ref_feat_shape = the
 * patch grid): nb = hd / 6 bands per axis, band i = 10000^(-i / nb); pair p
 * = a * nb + i turns by the token's coordinate along grid axis a (0 the
 * slowest) times band i.  Every step in float as torch takes it (the
 * coordinate c / s * s, the band 1 / 10000^(i / nb), their product), the
 * sine and cosine of that float in double. */
static int rope_table(enc_state *s, const enc_patch_geom *g, int hd)
{
    int gs[3], nb = hd / 6, np = hd / 2;
    for (int a = 0; a < 3; a++)
        gs[a] = g->size[a] / g->patch[a];
    size_t T = (size_t)gs[0] * gs[1] * gs[2];
    float *h = malloc(T * (size_t)hd * sizeof *h);
    if (h == NULL)
        return ENC_NOMEM;
    for (size_t t = 0; t < T; t++) {
        int c[3] = {(int)(t / ((size_t)gs[1] * gs[2])), (int)(t / gs[2] % gs[1]),
                    (int)(t % gs[2])};
        for (int a = 0; a < 3; a++) {
            volatile float pos = (float)c[a] / (float)gs[a]; /* volatile: no fused c * (s / s) */
            pos = pos * (float)gs[a];
            for (int i = 0; i < nb; i++) {
                float e = (float)i / (float)nb;
                float band = 1.0f / powf(10000.0f, e);
                float ang = pos * band;
                h[t * hd + a * nb + i] = (float)cos((double)ang);
                h[t * hd + np + a * nb + i] = (float)sin((double)ang);
            }
        }
    }
    int rc = s->be->iface.upload(s->be, s->rope, h, T * (size_t)hd * sizeof *h);
    free(h);
    return rc;
}

int enc_state_new(const enc_model *m, enc_kind kind, int batch, const enc_state_opts *o,
                  enc_state **out, char *errbuf, size_t errlen)
{
    if (!enc_model_has(m, kind))
        return enc__fail(errbuf, errlen, ENC_UNSUPPORTED, "%s model has no %s encoder",
                    arch_names[m->arch],
                    kind == ENC_IMAGE ? "image" : kind == ENC_VOLUME ? "volume" : "text");
    if (batch < 1 || batch > 1 << 16)
        return enc__fail(errbuf, errlen, ENC_INVAL, "batch size %d out of range", batch);
    enc_state *s = calloc(1, sizeof *s);
    if (s == NULL)
        return enc__fail(errbuf, errlen, ENC_NOMEM, "out of memory");
    s->m = m;
    s->be = m->be;
    s->kind = kind;
    s->flags = o ? o->flags : 0;
    s->batch = batch;
    s->train = (s->flags & ENC_STATE_TRAIN) != 0;
    if (s->train)
        s->flags |= ENC_STATE_HIDDEN; /* the backward reads every layer's input */
    const enc_backend_train_i *tr = &m->be->train;
    if ((s->flags & (ENC_STATE_TRAIN | ENC_STATE_CLSATT)) &&
        (tr->matmul_backward == NULL || tr->cls_attention == NULL)) {
        free(s);
        return enc__fail(errbuf, errlen, ENC_UNSUPPORTED, "the %s backend cannot train",
                    m->be->iface.name);
    }
    if (s->train && !m->trainable) {
        free(s);
        return enc__fail(errbuf, errlen, ENC_INVAL,
                    "a training state needs a model made with opts.trainable");
    }
    if ((s->flags & (ENC_STATE_TRAIN | ENC_STATE_CLSATT)) && m->arch == ARCH_COLIPRI) {
        free(s);
        return enc__fail(errbuf, errlen, ENC_UNSUPPORTED,
                         "colipri models encode only: no training (its ops have no backward "
                         "twins yet) and no [CLS] attention (it has no [CLS])");
    }
    const size_t Bz = (size_t)batch;
    int keep = (s->flags & ENC_STATE_HIDDEN) != 0;
    act plan[48];
    int n = 0;
    size_t T, D, M, H, L, E = (size_t)m->E, ph = 0, qkvw;
    const apool *pool = NULL;
    float *ids_f = NULL;
    if (kind == ENC_TEXT) {
        const bert *t = &m->t;
        int Lmax = o && o->max_len ? o->max_len : t->max_len;
        if (Lmax < 1 || Lmax > t->P) {
            free(s);
            return enc__fail(errbuf, errlen, ENC_INVAL, "max_len %d out of range 1..%d", Lmax, t->P);
        }
        T = (size_t)Lmax, D = (size_t)t->D, M = (size_t)t->I, H = (size_t)t->H, L = (size_t)t->L;
        ph = (size_t)t->head.hidden;
        pool = m->arch == ARCH_COLIPRI ? &t->pool : NULL;
        plan[n++] = (act){"ids", Bz * T, &ids_f};
        plan[n++] = (act){"mask", Bz * T, &s->mask};
        if (s->train) {
            plan[n++] = (act){"tok", Bz * T * D, &s->tok};
            plan[n++] = (act){"ln", Bz * T * D, &s->ln};
            plan[n++] = (act){"r1", L * Bz * T * D, &s->r1};
            plan[n++] = (act){"r2", L * Bz * T * D, &s->r2};
        }
    } else {
        const vit *v = &m->v;
        const enc_patch_geom *g = kind == ENC_IMAGE ? &v->g2 : &v->g3;
        T = !v->eva + enc_patch_count(g), D = (size_t)v->D, M = (size_t)v->M, H = (size_t)v->H;
        L = (size_t)v->L;
        ph = (size_t)v->head.hidden;
        const enc_patch_geom *pe = kind == ENC_IMAGE ? &v->pe2 : &v->pe3;
        const enc_conv_geom *cg = kind == ENC_IMAGE ? v->sg2 : v->sg3;
        size_t in = (size_t)g->channels * g->size[0] * g->size[1] * g->size[2];
        plan[n++] = (act){"input", Bz * in, &s->input};
        plan[n++] = (act){"ln", Bz * T * D, &s->ln};
        plan[n++] = (act){"patch_scratch", s->be->iface.patch_scratch(s->be, pe, batch),
                          &s->pscr};
        if (v->stem_n > 0) {
            size_t tot = 0, big = 0, scr = 0;
            for (int i = 0; i < v->stem_n; i++) {
                size_t one = (size_t)cg[i].cout * enc_conv_count(&cg[i]);
                size_t sc = s->be->iface.conv_scratch(s->be, &cg[i]);
                s->stem_off[i] = Bz * tot;
                tot += one;
                big = one > big ? one : big;
                scr = sc > scr ? sc : scr;
            }
            plan[n++] = (act){"stem_out", Bz * tot, &s->stem_out};
            plan[n++] = (act){"stem_scratch", scr, &s->sscr};
            if (s->train) {
                plan[n++] = (act){"stem_pre", Bz * tot, &s->stem_pre};
                plan[n++] = (act){"d_stem_a", Bz * big, &s->dstem[0]};
                plan[n++] = (act){"d_stem_b", Bz * big, &s->dstem[1]};
            }
        }
        if (s->train) {
            plan[n++] = (act){"mid", L * Bz * T * D, &s->mid};
            plan[n++] = (act){"pooled_in", Bz * D, &s->pooled_in};
        }
        if (v->eva) {
            pool = &v->pool;
            plan[n++] = (act){"gate", Bz * T * M, &s->gate};
            plan[n++] = (act){"rope", T * (D / H), &s->rope};
        }
    }
    if (pool != NULL)
        plan[n++] = (act){"pool_scratch",
                          s->be->iface.attn_pool_scratch(s->be, (int)T, (int)E, pool->H),
                          &s->poolscr};
    s->tokens_max = (int)T;
    s->nlayers = (int)L, s->D = (int)D, s->H = (int)H;
    size_t per = s->train ? L : 1; /* slices of the per-layer activations */
    plan[n++] = (act){"hidden", (keep ? L + 1 : 1) * Bz * T * D, &s->hidden};
    qkvw = pool != NULL && kind != ENC_TEXT && E > 3 * D ? E : 3 * D; /* EVA: the projector's too */
    plan[n++] = (act){"qkv", per * Bz * T * qkvw, &s->qkv};
    plan[n++] = (act){"att", per * Bz * T * D, &s->att};
    plan[n++] = (act){"mlp", Bz * T * M, &s->mlp};
    if (s->train) {
        plan[n++] = (act){"fch", L * Bz * T * M, &s->fch};
        plan[n++] = (act){"embed_pre", Bz * E, &s->embpre};
        plan[n++] = (act){"proj_pre", Bz * ph, &s->phpre};
        /* the backward's own */
        plan[n++] = (act){"d_x", Bz * T * D, &s->dx};
        plan[n++] = (act){"d_r", Bz * T * D, &s->dr};
        plan[n++] = (act){"d_att", Bz * T * D, &s->datt};
        plan[n++] = (act){"d_qkv", Bz * T * 3 * D, &s->dqkv};
        plan[n++] = (act){"d_mlp", Bz * T * M, &s->dmlp};
        plan[n++] = (act){"d_embed", Bz * E, &s->demb};
        plan[n++] = (act){"d_embed_pre", Bz * E, &s->dembpre};
        plan[n++] = (act){"d_pooled", Bz * D, &s->dpool};
        plan[n++] = (act){"d_pooled_in", Bz * D, &s->dpool2};
        plan[n++] = (act){"d_proj_hidden", Bz * ph, &s->dphid};
        plan[n++] = (act){"ln_bwd_scratch",
                          tr->layernorm_backward_scratch(s->be, batch * (int)T, (int)D),
                          &s->lscr};
        plan[n++] = (act){"attn_bwd_scratch",
                          tr->attention_backward_scratch(s->be, batch, (int)T, (int)H),
                          &s->abscr};
    }
    if (s->flags & ENC_STATE_CLSATT) {
        plan[n++] = (act){"cls_attention", Bz * T, &s->clsatt};
        plan[n++] = (act){"cls_attention_scratch", T, &s->cscr};
    }
    if (s->flags & ENC_STATE_PROBS)
        plan[n++] = (act){"probs", L * Bz * H * T * T, &s->probs};
    else
        plan[n++] = (act){"attn_scratch", s->be->iface.attention_scratch(s->be, batch, (int)T,
                                                                           (int)H),
                          &s->ascr};
    plan[n++] = (act){"pooled", Bz * D, &s->pooled};
    plan[n++] = (act){"proj_hidden", Bz * ph, &s->phid};
    plan[n++] = (act){"embed", Bz * E, &s->emb};

    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += align_up(plan[i].count);
    assert(n <= (int)(sizeof plan / sizeof plan[0]));
    s->bytes = total * sizeof(float);
    s->mem = s->be->iface.alloc(s->be, s->bytes);
    if (s->mem == NULL) {
        free(s);
        return enc__fail(errbuf, errlen, ENC_NOMEM, "out of memory for %zu bytes of activations",
                    total * sizeof(float));
    }
    float *p = s->mem;
    for (int i = 0; i < n; i++) {
        *plan[i].ptr = plan[i].count ? p : NULL;
        p += align_up(plan[i].count);
    }
    s->ids = (int32_t *)(void *)ids_f;
    if (s->stem_pre == NULL)
        s->stem_pre = s->stem_out; /* GELU in place */
    if (kind == ENC_TEXT && (s->hmask = malloc(Bz * T * sizeof(float))) == NULL) {
        enc_state_free(s);
        return enc__fail(errbuf, errlen, ENC_NOMEM, "out of memory");
    }
    if (s->rope != NULL) {
        int rc = rope_table(s, &m->v.g3, (int)(D / H));
        if (rc) {
            enc_state_free(s);
            return enc__fail(errbuf, errlen, rc, "%s", rc == ENC_NOMEM ? "out of memory"
                                                                       : "rope table upload failed");
        }
    }
    *out = s;
    return ENC_OK;
}

void enc_state_free(enc_state *s)
{
    if (s == NULL)
        return;
    s->be->iface.free(s->be, s->mem);
    free(s->hmask);
    free(s);
}

size_t enc_state_bytes(const enc_state *s)
{
    return s->bytes;
}

static float *hid(const enc_state *s, int l)
{
    if (!(s->flags & ENC_STATE_HIDDEN))
        return s->hidden;
    return s->hidden + (size_t)l * s->batch * s->tokens_max * s->D;
}

const float *enc_state_hidden(const enc_state *s, int l)
{
    if (s->B == 0 || l < 0 || l > s->nlayers)
        return NULL;
    if (!(s->flags & ENC_STATE_HIDDEN) && l != s->nlayers)
        return NULL;
    return hid(s, l);
}

/* Layer l's slice of a per-layer activation (qkv, att, fch, mid, r1, r2)
 * of width floats per token: every layer has its own in a training state,
 * all share one otherwise. */
static float *slice(const enc_state *s, float *base, int l, size_t width)
{
    if (!s->train)
        return base;
    return base + (size_t)l * s->batch * s->tokens_max * width;
}

const float *enc_state_cls_attention(const enc_state *s)
{
    if (s->clsatt == NULL || s->B == 0)
        return NULL;
    return s->clsatt;
}

const float *enc_state_probs(const enc_state *s, int l)
{
    if (s->probs == NULL || s->B == 0 || l < 0 || l >= s->nlayers)
        return NULL;
    return s->probs + (size_t)l * s->batch * s->H * s->tokens_max * s->tokens_max;
}

int enc_state_batch(const enc_state *s)
{
    return s->B;
}

int enc_state_tokens(const enc_state *s)
{
    return s->T;
}

const char *enc_state_errmsg(const enc_state *s)
{
    return s->err;
}

static int state_fail(enc_state *s, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int state_fail(enc_state *s, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->err, sizeof s->err, fmt, ap);
    va_end(ap);
    return code;
}

/* ---- forward passes ------------------------------------------------------------------ */

/* out [B, h->out] = projection of in [B, h->in]; tmp [B, h->hidden] gets
 * the MLP's GELU output, pre [B, h->hidden] (training; NULL: GELU in place
 * in tmp) its input. */
static void proj_forward(enc_backend *be, const proj *h, float *out, const float *in, float *tmp,
                         float *pre, int B)
{
    if (h->hidden == 0) {
        be->iface.matmul(be, out, 0, in, h->w1, h->b1, B, h->in, h->out, 0);
        return;
    }
    float *a = pre != NULL ? pre : tmp;
    be->iface.matmul(be, a, 0, in, h->w1, h->b1, B, h->in, h->hidden, 0);
    be->iface.gelu(be, tmp, a, (size_t)B * h->hidden);
    be->iface.matmul(be, out, 0, tmp, h->w2, h->b2, B, h->hidden, h->out, 0);
}

/* Residual stream for layer l+1: a copy of layer l's when every layer is
 * kept, else the same buffer updated in place. */
static float *next_layer(enc_state *s, int l, size_t n)
{
    float *x = hid(s, l + 1), *prev = hid(s, l);
    if (x != prev)
        s->be->iface.copy(s->be, x, prev, n);
    return x;
}

/* The B inputs of geometry g into the state's input buffer; the encode is
 * then of B items of T tokens. */
static int vision_input(enc_state *s, const float *in, int B, const enc_patch_geom *g, int T)
{
    const enc_backend_i *f = &s->be->iface;
    size_t in_n = (size_t)B * g->channels * g->size[0] * g->size[1] * g->size[2];
    int rc = f->upload(s->be, s->input, in, in_n * sizeof(float));
    if (rc)
        return state_fail(s, rc, "upload to the %s backend failed", f->name);
    s->B = B, s->T = T;
    return ENC_OK;
}

/* Pre-norm ViT (timm, MONAI, medsem):
 *   x = [cls, patches(in) ] + pos
 *   x += out(attn(qkv(ln1(x))));  x += fc2(gelu(fc1(ln2(x))))   per block
 *   out = l2norm(head(norm(x[:, 0]))) */
static int vit_forward(enc_state *s, const float *in, int B, float *out)
{
    const vit *v = &s->m->v;
    enc_backend *be = s->be;
    const enc_backend_i *f = &be->iface;
    const int is3d = s->kind == ENC_VOLUME;
    const enc_patch_geom *g = is3d ? &v->g3 : &v->g2;
    const int N = (int)enc_patch_count(g), T = N + 1, D = v->D, H = v->H, M = v->M;
    const int R = B * T; /* rows of the token matrix */
    const size_t BTD = (size_t)R * D;
    int rc = vision_input(s, in, B, g, T);
    if (rc)
        return rc;

    float *x = hid(s, 0);
    const float *pin = s->input;
    for (int i = 0; i < v->stem_n; i++) {
        const enc_conv_geom *cg = is3d ? &v->sg3[i] : &v->sg2[i];
        float *pre = s->stem_pre + s->stem_off[i], *post = s->stem_out + s->stem_off[i];
        f->conv(be, pre, pin, is3d ? v->sw3[i] : v->sw2[i], is3d ? v->sb3[i] : v->sb2[i], cg,
                B, s->sscr);
        f->gelu(be, post, pre, (size_t)B * cg->cout * enc_conv_count(cg));
        pin = post;
    }
    f->patch_embed(be, x + D, (size_t)T * D, pin, is3d ? v->pw3 : v->pw2,
                   is3d ? v->pb3 : v->pb2, is3d ? &v->pe3 : &v->pe2, B, D, s->pscr);
    f->vit_tokens(be, x, v->cls, is3d ? v->pos3 : v->pos2, v->pos_has_cls, B, N, D);
    if (s->clsatt != NULL)
        be->train.zero(be, s->clsatt, (size_t)B * N);
    for (int l = 0; l < v->L; l++) {
        const vit_block *b = &v->blk[l];
        x = next_layer(s, l, BTD);
        float *probs = s->probs ? s->probs + (size_t)l * s->batch * H * s->tokens_max *
                                                 s->tokens_max
                                : NULL;
        float *qkv = slice(s, s->qkv, l, 3 * (size_t)D), *att = slice(s, s->att, l, D);
        float *fch = s->train ? slice(s, s->fch, l, M) : s->mlp;
        f->layernorm(be, s->ln, x, b->ln1_w, b->ln1_b, R, D, v->eps);
        f->matmul(be, qkv, 0, s->ln, b->qkv_w, b->qkv_b, R, D, 3 * D, 0);
        f->attention(be, att, probs, qkv, NULL, s->ascr, B, T, D, H);
        if (s->clsatt != NULL)
            be->train.cls_attention(be, s->clsatt, qkv, NULL, s->cscr, B, T, D, H, 1,
                                    1.0f / ((float)v->L * H));
        f->matmul(be, x, 0, att, b->out_w, b->out_b, R, D, D, 1);
        if (s->train)
            f->copy(be, slice(s, s->mid, l, D), x, BTD);
        f->layernorm(be, s->ln, x, b->ln2_w, b->ln2_b, R, D, v->eps);
        f->matmul(be, fch, 0, s->ln, b->fc1_w, b->fc1_b, R, D, M, 0);
        f->gelu(be, s->mlp, fch, (size_t)R * M);
        f->matmul(be, x, 0, s->mlp, b->fc2_w, b->fc2_b, R, M, D, 1);
    }
    f->cls_pool(be, s->pooled, x, B, T, D);
    f->layernorm(be, s->pooled, s->pooled, v->norm_w, v->norm_b, B, D, v->eps);
    float *e = s->train ? s->embpre : s->emb;
    proj_forward(be, &v->head, e, s->pooled, s->phid, s->phpre, B);
    f->l2norm(be, s->emb, e, B, s->m->E);
    if ((rc = f->download(be, out, s->emb, (size_t)B * s->m->E * sizeof(float))) ||
        (rc = f->sync(be)))
        return state_fail(s, rc, "the %s backend failed", f->name);
    s->ready = 1;
    return ENC_OK;
}

/* Primus's EVA trunk and COLIPRI's head (colipri.model.image.ImageEncoder
 * with project and pool), on [B, C, X, Y, Z] (torchio's axis order):
 *   x = patches(in)                     (no [CLS], no absolute positions)
 *   per block, with q and k turned by the 3-D RoPE:
 *     x += g1 * proj(norm_a(attn(rope(q), rope(k), v)))   (ln1 before q, k, v)
 *     x += g2 * fc2(norm_m(silu(fc1_g(ln2 x)) * fc1_x(ln2 x)))
 *   out = l2norm(pool(projector(norm(x))))
 * (norm_a, g1, g2 when the config has them).  The projector output goes
 * to the qkv buffer, free by then. */
/* x [R, D] += (in [R, K] w^T + b), scaled per channel by gamma (layer scale)
 * when gamma is not NULL; tmp [R, D] is scratch. */
static void add_projection(enc_backend *be, float *x, float *tmp, const float *in,
                           const float *w, const float *b, const float *gamma, int R, int K,
                           int D)
{
    const enc_backend_i *f = &be->iface;
    if (gamma) {
        f->matmul(be, tmp, 0, in, w, b, R, K, D, 0);
        f->scale_add(be, x, tmp, gamma, (size_t)R, D);
    } else {
        f->matmul(be, x, 0, in, w, b, R, K, D, 1);
    }
}

static int eva_forward(enc_state *s, const float *in, int B, float *out)
{
    const vit *v = &s->m->v;
    enc_backend *be = s->be;
    const enc_backend_i *f = &be->iface;
    const enc_patch_geom *g = &v->g3;
    const int T = (int)enc_patch_count(g), D = v->D, H = v->H, M = v->M, E = s->m->E;
    const int R = B * T;
    const size_t BTD = (size_t)R * D;
    int rc = vision_input(s, in, B, g, T);
    if (rc)
        return rc;

    float *x = hid(s, 0);
    f->patch_embed(be, x, (size_t)T * D, s->input, v->pw3, v->pb3, &v->pe3, B, D, s->pscr);
    for (int l = 0; l < v->L; l++) {
        const eva_block *b = &v->eblk[l];
        x = next_layer(s, l, BTD);
        float *probs = s->probs ? s->probs + (size_t)l * s->batch * H * s->tokens_max *
                                                 s->tokens_max
                                : NULL;
        f->layernorm(be, s->ln, x, b->ln1_w, b->ln1_b, R, D, v->eps);
        f->matmul(be, s->qkv, 3 * D, s->ln, b->q_w, b->q_b, R, D, D, 0);
        f->matmul(be, s->qkv + D, 3 * D, s->ln, b->k_w, NULL, R, D, D, 0);
        f->matmul(be, s->qkv + 2 * D, 3 * D, s->ln, b->v_w, b->v_b, R, D, D, 0);
        f->rope(be, s->qkv, 3 * D, s->rope, B, T, D, H);
        f->attention(be, s->att, probs, s->qkv, NULL, s->ascr, B, T, D, H);
        if (v->inner_norm)
            f->layernorm(be, s->att, s->att, b->an_w, b->an_b, R, D, v->eps);
        add_projection(be, x, s->ln, s->att, b->out_w, b->out_b, v->layer_scale ? b->g1 : NULL,
                       R, D, D);
        f->layernorm(be, s->ln, x, b->ln2_w, b->ln2_b, R, D, v->eps);
        f->matmul(be, s->mlp, 0, s->ln, b->fg_w, b->fg_b, R, D, M, 0);
        f->matmul(be, s->gate, 0, s->ln, b->fx_w, b->fx_b, R, D, M, 0);
        f->swiglu(be, s->mlp, s->mlp, s->gate, (size_t)R * M);
        f->layernorm(be, s->mlp, s->mlp, b->mn_w, b->mn_b, R, M, v->eps);
        add_projection(be, x, s->ln, s->mlp, b->fc2_w, b->fc2_b, v->layer_scale ? b->g2 : NULL,
                       R, M, D);
    }
    f->layernorm(be, s->ln, x, v->norm_w, v->norm_b, R, D, v->eps);
    f->matmul(be, s->qkv, 0, s->ln, v->head.w1, v->head.b1, R, D, E, 0);
    f->attn_pool(be, s->emb, s->qkv, NULL, v->pool.w_in, v->pool.b_in, v->pool.w_out,
                 v->pool.b_out, B, T, E, v->pool.H, s->poolscr);
    f->l2norm(be, s->emb, s->emb, B, E);
    if ((rc = f->download(be, out, s->emb, (size_t)B * E * sizeof(float))) ||
        (rc = f->sync(be)))
        return state_fail(s, rc, "the %s backend failed", f->name);
    s->ready = 1;
    return ENC_OK;
}

/* Post-norm BERT (Hugging Face):
 *   x = LN(word[ids] + pos + type[0])
 *   x = LN(x + out(attn(qkv(x), mask)));  x = LN(x + f(gelu(i(x))))   per layer
 *   out = l2norm(head(x[:, 0])) */
static int bert_forward(enc_state *s, int B, int Lt, float *out)
{
    const bert *t = &s->m->t;
    enc_backend *be = s->be;
    const enc_backend_i *f = &be->iface;
    const int D = t->D, H = t->H, I = t->I, R = B * Lt;
    const size_t BTD = (size_t)R * D;
    s->B = B, s->T = Lt;

    float *x = hid(s, 0);
    float *e0 = s->train ? s->tok : x; /* training keeps the sum before the LayerNorm */
    f->embedding(be, e0, s->ids, t->word, t->pos, t->type, B, Lt, D);
    f->layernorm(be, x, e0, t->eln_w, t->eln_b, R, D, t->eps);
    if (s->clsatt != NULL)
        be->train.zero(be, s->clsatt, (size_t)B * (Lt - 1));
    for (int l = 0; l < t->L; l++) {
        const bert_layer *y = &t->lay[l];
        x = next_layer(s, l, BTD);
        float *probs = s->probs ? s->probs + (size_t)l * s->batch * H * s->tokens_max *
                                                 s->tokens_max
                                : NULL;
        float *qkv = slice(s, s->qkv, l, 3 * (size_t)D), *att = slice(s, s->att, l, D);
        float *fch = s->train ? slice(s, s->fch, l, I) : s->mlp;
        f->matmul(be, qkv, 3 * D, x, y->q_w, y->q_b, R, D, D, 0);
        f->matmul(be, qkv + D, 3 * D, x, y->k_w, y->k_b, R, D, D, 0);
        f->matmul(be, qkv + 2 * D, 3 * D, x, y->v_w, y->v_b, R, D, D, 0);
        f->attention(be, att, probs, qkv, s->mask, s->ascr, B, Lt, D, H);
        if (s->clsatt != NULL)
            be->train.cls_attention(be, s->clsatt, qkv, s->mask, s->cscr, B, Lt, D, H, 1,
                                    1.0f / ((float)t->L * H));
        f->matmul(be, x, 0, att, y->o_w, y->o_b, R, D, D, 1);
        if (s->train)
            f->copy(be, slice(s, s->r1, l, D), x, BTD);
        f->layernorm(be, x, x, y->ln1_w, y->ln1_b, R, D, t->eps);
        f->matmul(be, fch, 0, x, y->i_w, y->i_b, R, D, I, 0);
        f->gelu(be, s->mlp, fch, (size_t)R * I);
        f->matmul(be, x, 0, s->mlp, y->f_w, y->f_b, R, I, D, 1);
        if (s->train)
            f->copy(be, slice(s, s->r2, l, D), x, BTD);
        f->layernorm(be, x, x, y->ln2_w, y->ln2_b, R, D, t->eps);
    }
    float *e = s->train ? s->embpre : s->emb;
    if (t->pool.w_in != NULL) { /* COLIPRI: attention pooling over the kept tokens */
        f->attn_pool(be, e, x, s->mask, t->pool.w_in, t->pool.b_in, t->pool.w_out,
                     t->pool.b_out, B, Lt, D, t->pool.H, s->poolscr);
    } else {
        f->cls_pool(be, s->pooled, x, B, Lt, D);
        proj_forward(be, &t->head, e, s->pooled, s->phid, s->phpre, B);
    }
    f->l2norm(be, s->emb, e, B, s->m->E);
    int rc;
    if ((rc = f->download(be, out, s->emb, (size_t)B * s->m->E * sizeof(float))) ||
        (rc = f->sync(be)))
        return state_fail(s, rc, "the %s backend failed", f->name);
    s->ready = 1;
    return ENC_OK;
}

static int check_call(enc_state *s, enc_kind kind, int B, const void *in, const float *out)
{
    static const char *const kinds[] = {"image", "volume", "text"};
    s->err[0] = '\0';
    s->ready = 0;
    if (s->kind != kind)
        return state_fail(s, ENC_INVAL, "a %s state cannot encode %s", kinds[s->kind],
                          kinds[kind]);
    if (B < 1 || B > s->batch)
        return state_fail(s, ENC_INVAL, "batch %d out of range 1..%d", B, s->batch);
    if (in == NULL || out == NULL)
        return state_fail(s, ENC_INVAL, "NULL input or output");
    return ENC_OK;
}

int enc_encode_image(enc_state *s, const float *image, int B, float *out)
{
    int rc = check_call(s, ENC_IMAGE, B, image, out);
    return rc ? rc : vit_forward(s, image, B, out);
}

int enc_encode_volume(enc_state *s, const float *volume, int B, float *out)
{
    int rc = check_call(s, ENC_VOLUME, B, volume, out);
    return rc ? rc : s->m->v.eva ? eva_forward(s, volume, B, out) : vit_forward(s, volume, B, out);
}

int enc_encode_text(enc_state *s, const int32_t *ids, const int32_t *mask, int B, int L,
                    float *out)
{
    int rc = check_call(s, ENC_TEXT, B, ids, out);
    if (rc)
        return rc;
    if (L < 1 || L > s->tokens_max)
        return state_fail(s, ENC_INVAL, "text length %d out of range 1..%d", L, s->tokens_max);
    const int V = s->m->t.V;
    for (size_t i = 0; i < (size_t)B * L; i++) {
        if (ids[i] < 0 || ids[i] >= V)
            return state_fail(s, ENC_INVAL, "token id %d at [%zu, %zu] outside the vocabulary (%d)",
                              (int)ids[i], i / (size_t)L, i % (size_t)L, V);
        s->hmask[i] = mask == NULL || mask[i] != 0 ? 1.0f : 0.0f;
    }
    enc_backend *be = s->be;
    if ((rc = be->iface.upload(be, s->ids, ids, (size_t)B * L * sizeof(int32_t))) ||
        (rc = be->iface.upload(be, s->mask, s->hmask, (size_t)B * L * sizeof(float))))
        return state_fail(s, rc, "upload to the %s backend failed", be->iface.name);
    return bert_forward(s, B, L, out);
}

/* ---- backward passes ---------------------------------------------------------------------
 *
 * The forward in reverse, op by op, each forward op answered by its twin
 * (encoder/backend.h) in mirrored order.  What the forward does not keep is
 * recomputed from what it does: LayerNorm outputs from their inputs, GELU
 * outputs from fch, the probabilities inside attention_backward.  dx is the
 * gradient of the residual stream, dr a second [B, T, D] gradient; parameter
 * gradients go straight into g (gof maps a weight to its gradient). */

/* Twin of proj_forward: din [B, h->in] += gradient of in, from dout
 * [B, h->out]; in is the forward's input. */
static void proj_backward(enc_state *s, const proj *h, enc_grads *g, float *din,
                          const float *dout, const float *in, int B)
{
    enc_backend *be = s->be;
    const enc_backend_train_i *t = &be->train;
    if (h->hidden == 0) {
        t->matmul_backward(be, din, gof(g, h->w1), gof(g, h->b1), dout, 0, in, h->w1, B, h->in,
                           h->out);
        return;
    }
    /* s->phid still holds gelu(phpre) from the forward */
    t->zero(be, s->dphid, (size_t)B * h->hidden);
    t->matmul_backward(be, s->dphid, gof(g, h->w2), gof(g, h->b2), dout, 0, s->phid, h->w2, B,
                       h->hidden, h->out);
    t->gelu_backward(be, s->dphid, s->phpre, s->dphid, (size_t)B * h->hidden);
    t->matmul_backward(be, din, gof(g, h->w1), gof(g, h->b1), s->dphid, 0, in, h->w1, B, h->in,
                       h->hidden);
}

static int check_backward(enc_state *s, enc_kind kind, const float *dembed, const enc_grads *g)
{
    static const char *const kinds[] = {"image", "volume", "text"};
    s->err[0] = '\0';
    if (s->kind != kind)
        return state_fail(s, ENC_INVAL, "a %s state cannot differentiate %s", kinds[s->kind],
                          kinds[kind]);
    if (!s->train)
        return state_fail(s, ENC_INVAL, "the state was not made with ENC_STATE_TRAIN");
    if (!s->ready)
        return state_fail(s, ENC_INVAL, "no successful encode to differentiate");
    if (g == NULL || g->m != s->m)
        return state_fail(s, ENC_INVAL, "gradients of another model");
    if (dembed == NULL)
        return state_fail(s, ENC_INVAL, "NULL gradient");
    return ENC_OK;
}

/* l2norm, projection and the part of the tower after the last layer, from
 * dembed (host) to the [CLS] row's gradient in pooled-space *dpool. */
static int head_backward(enc_state *s, const proj *h, const float *dembed, enc_grads *g,
                         int B)
{
    enc_backend *be = s->be;
    const enc_backend_train_i *t = &be->train;
    const int E = s->m->E;
    int rc = be->iface.upload(be, s->demb, dembed, (size_t)B * E * sizeof(float));
    if (rc)
        return state_fail(s, rc, "upload to the %s backend failed", be->iface.name);
    t->l2norm_backward(be, s->dembpre, s->embpre, s->demb, B, E);
    t->zero(be, s->dpool, (size_t)B * h->in);
    proj_backward(s, h, g, s->dpool, s->dembpre, s->pooled, B);
    return ENC_OK;
}

/* Twin of vit_forward. */
static int vit_backward(enc_state *s, const float *dembed, enc_grads *g)
{
    const vit *v = &s->m->v;
    enc_backend *be = s->be;
    const enc_backend_i *f = &be->iface;
    const enc_backend_train_i *t = &be->train;
    const int is3d = s->kind == ENC_VOLUME;
    const enc_patch_geom *pg = is3d ? &v->pe3 : &v->pe2;
    const int B = s->B, T = s->T, N = T - 1, D = v->D, H = v->H, M = v->M, R = B * T;
    const size_t BTD = (size_t)R * D, BTM = (size_t)R * M;
    int rc = head_backward(s, &v->head, dembed, g, B);
    if (rc)
        return rc;
    /* pooled = norm(x_L[:, 0]) */
    f->cls_pool(be, s->pooled_in, hid(s, v->L), B, T, D);
    t->zero(be, s->dpool2, (size_t)B * D);
    t->layernorm_backward(be, s->dpool2, gof(g, v->norm_w), gof(g, v->norm_b), s->dpool,
                          s->pooled_in, v->norm_w, B, D, v->eps, s->lscr);
    t->zero(be, s->dx, BTD);
    t->cls_pool_backward(be, s->dx, s->dpool2, B, T, D);
    for (int l = v->L - 1; l >= 0; l--) {
        const vit_block *b = &v->blk[l];
        const float *xl = hid(s, l), *mid = slice(s, s->mid, l, D);
        const float *qkv = slice(s, s->qkv, l, 3 * (size_t)D), *att = slice(s, s->att, l, D);
        const float *fch = slice(s, s->fch, l, M);
        /* x_{l+1} = mid + fc2(gelu(fc1(norm2(mid)))): dx is also mid's */
        f->gelu(be, s->mlp, fch, BTM);
        t->zero(be, s->dmlp, BTM);
        t->matmul_backward(be, s->dmlp, gof(g, b->fc2_w), gof(g, b->fc2_b), s->dx, 0, s->mlp,
                           b->fc2_w, R, M, D);
        t->gelu_backward(be, s->dmlp, fch, s->dmlp, BTM);
        f->layernorm(be, s->ln, mid, b->ln2_w, b->ln2_b, R, D, v->eps);
        t->zero(be, s->dr, BTD);
        t->matmul_backward(be, s->dr, gof(g, b->fc1_w), gof(g, b->fc1_b), s->dmlp, 0, s->ln,
                           b->fc1_w, R, D, M);
        t->layernorm_backward(be, s->dx, gof(g, b->ln2_w), gof(g, b->ln2_b), s->dr, mid,
                              b->ln2_w, R, D, v->eps, s->lscr);
        /* mid = x_l + out(attn(qkv(norm1(x_l)))): dx is also x_l's */
        t->zero(be, s->datt, BTD);
        t->matmul_backward(be, s->datt, gof(g, b->out_w), gof(g, b->out_b), s->dx, 0, att,
                           b->out_w, R, D, D);
        t->attention_backward(be, s->dqkv, s->datt, qkv, NULL, s->abscr, B, T, D, H);
        f->layernorm(be, s->ln, xl, b->ln1_w, b->ln1_b, R, D, v->eps);
        t->zero(be, s->dr, BTD);
        t->matmul_backward(be, s->dr, gof(g, b->qkv_w), gof(g, b->qkv_b), s->dqkv, 0, s->ln,
                           b->qkv_w, R, D, 3 * D);
        t->layernorm_backward(be, s->dx, gof(g, b->ln1_w), gof(g, b->ln1_b), s->dr, xl,
                              b->ln1_w, R, D, v->eps, s->lscr);
    }
    /* x_0 = [cls, patch_embed(input)] + pos */
    t->vit_tokens_backward(be, gof(g, v->cls), gof(g, is3d ? v->pos3 : v->pos2), s->dx,
                           v->pos_has_cls, B, N, D);
    /* the stem, last convolution first: dstem[k] holds the gradient of the
     * current layer's output, then (GELU twin, in place) of its input */
    const int ns = v->stem_n;
    const float *pin = ns ? s->stem_out + s->stem_off[ns - 1] : s->input;
    float *dcur = NULL;
    if (ns) {
        const enc_conv_geom *cg = is3d ? &v->sg3[ns - 1] : &v->sg2[ns - 1];
        dcur = s->dstem[0];
        t->zero(be, dcur, (size_t)B * cg->cout * enc_conv_count(cg));
    }
    t->patch_embed_backward(be, dcur, gof(g, is3d ? v->pw3 : v->pw2),
                            gof(g, is3d ? v->pb3 : v->pb2), s->dx + D, (size_t)T * D, pin,
                            is3d ? v->pw3 : v->pw2, pg, B, D, s->pscr);
    for (int i = ns - 1; i >= 0; i--) {
        const enc_conv_geom *cg = is3d ? &v->sg3[i] : &v->sg2[i];
        const size_t nout = (size_t)B * cg->cout * enc_conv_count(cg);
        t->gelu_backward(be, dcur, s->stem_pre + s->stem_off[i], dcur, nout);
        float *dprev = NULL;
        if (i > 0) {
            dprev = s->dstem[(ns - i) & 1];
            t->zero(be, dprev, (size_t)B * cg->cin * (cg->size[0] * cg->size[1] * cg->size[2]));
        }
        const float *w = is3d ? v->sw3[i] : v->sw2[i];
        t->conv_backward(be, dprev, gof(g, w), gof(g, is3d ? v->sb3[i] : v->sb2[i]), dcur,
                         i > 0 ? s->stem_out + s->stem_off[i - 1] : s->input, w, cg, B,
                         s->sscr);
        dcur = dprev;
    }
    if ((rc = f->sync(be)))
        return state_fail(s, rc, "the %s backend failed", f->name);
    return ENC_OK;
}

/* Twin of bert_forward. */
static int bert_backward(enc_state *s, const float *dembed, enc_grads *g)
{
    const bert *tb = &s->m->t;
    enc_backend *be = s->be;
    const enc_backend_i *f = &be->iface;
    const enc_backend_train_i *t = &be->train;
    const int B = s->B, Lt = s->T, D = tb->D, H = tb->H, I = tb->I, R = B * Lt;
    const size_t BTD = (size_t)R * D, BTI = (size_t)R * I;
    int rc = head_backward(s, &tb->head, dembed, g, B);
    if (rc)
        return rc;
    t->zero(be, s->dx, BTD);
    t->cls_pool_backward(be, s->dx, s->dpool, B, Lt, D);
    for (int l = tb->L - 1; l >= 0; l--) {
        const bert_layer *y = &tb->lay[l];
        const float *xl = hid(s, l), *r1 = slice(s, s->r1, l, D), *r2 = slice(s, s->r2, l, D);
        const float *qkv = slice(s, s->qkv, l, 3 * (size_t)D), *att = slice(s, s->att, l, D);
        const float *fch = slice(s, s->fch, l, I);
        /* x_{l+1} = LN2(r2), r2 = x1 + f(gelu(i(x1))), x1 = LN1(r1) */
        t->zero(be, s->dr, BTD);
        t->layernorm_backward(be, s->dr, gof(g, y->ln2_w), gof(g, y->ln2_b), s->dx, r2,
                              y->ln2_w, R, D, tb->eps, s->lscr);
        f->copy(be, s->dx, s->dr, BTD); /* the residual: dx is now x1's, in part */
        f->layernorm(be, s->ln, r1, y->ln1_w, y->ln1_b, R, D, tb->eps);
        f->gelu(be, s->mlp, fch, BTI);
        t->zero(be, s->dmlp, BTI);
        t->matmul_backward(be, s->dmlp, gof(g, y->f_w), gof(g, y->f_b), s->dr, 0, s->mlp, y->f_w,
                           R, I, D);
        t->gelu_backward(be, s->dmlp, fch, s->dmlp, BTI);
        t->matmul_backward(be, s->dx, gof(g, y->i_w), gof(g, y->i_b), s->dmlp, 0, s->ln, y->i_w,
                           R, D, I);
        /* x1 = LN1(r1), r1 = x_l + o(attn(q, k, v of x_l)) */
        t->zero(be, s->dr, BTD);
        t->layernorm_backward(be, s->dr, gof(g, y->ln1_w), gof(g, y->ln1_b), s->dx, r1,
                              y->ln1_w, R, D, tb->eps, s->lscr);
        f->copy(be, s->dx, s->dr, BTD);
        t->zero(be, s->datt, BTD);
        t->matmul_backward(be, s->datt, gof(g, y->o_w), gof(g, y->o_b), s->dr, 0, att, y->o_w, R,
                           D, D);
        t->attention_backward(be, s->dqkv, s->datt, qkv, s->mask, s->abscr, B, Lt, D, H);
        t->matmul_backward(be, s->dx, gof(g, y->q_w), gof(g, y->q_b), s->dqkv, 3 * D, xl, y->q_w,
                           R, D, D);
        t->matmul_backward(be, s->dx, gof(g, y->k_w), gof(g, y->k_b), s->dqkv + D, 3 * D, xl,
                           y->k_w, R, D, D);
        t->matmul_backward(be, s->dx, gof(g, y->v_w), gof(g, y->v_b), s->dqkv + 2 * D, 3 * D, xl,
                           y->v_w, R, D, D);
    }
    /* x_0 = LN(word[ids] + pos + type[0]) */
    t->zero(be, s->dr, BTD);
    t->layernorm_backward(be, s->dr, gof(g, tb->eln_w), gof(g, tb->eln_b), s->dx, s->tok,
                          tb->eln_w, R, D, tb->eps, s->lscr);
    t->embedding_backward(be, gof(g, tb->word), gof(g, tb->pos), gof(g, tb->type), s->dr, s->ids,
                          B, Lt, D);
    if ((rc = f->sync(be)))
        return state_fail(s, rc, "the %s backend failed", f->name);
    return ENC_OK;
}

int enc_backward_image(enc_state *s, const float *dembed, enc_grads *g)
{
    int rc = check_backward(s, ENC_IMAGE, dembed, g);
    return rc ? rc : vit_backward(s, dembed, g);
}

int enc_backward_volume(enc_state *s, const float *dembed, enc_grads *g)
{
    int rc = check_backward(s, ENC_VOLUME, dembed, g);
    return rc ? rc : vit_backward(s, dembed, g);
}

int enc_backward_text(enc_state *s, const float *dembed, enc_grads *g)
{
    int rc = check_backward(s, ENC_TEXT, dembed, g);
    return rc ? rc : bert_backward(s, dembed, g);
}
