/* trainer.c - contrastive pre-training of a medsem model: batches of volumes,
 * radiographs and UniMedI slice pseudo-images against their reports
 * (train/train.h, docs/train.md). */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "encoder/encoder.h"
#include "train/train.h"
#include "util/util.h"

/* ---- batch generator: xoshiro256** seeded through splitmix64 ---------------------- */

static uint64_t rng_next(uint64_t s[4]) { return util_xoshiro_next(s); }

/* Uniform in [0, n), n > 0, without modulo bias (Lemire's rejection). */
static size_t rng_below(uint64_t s[4], size_t n)
{
    uint64_t lim = UINT64_MAX - UINT64_MAX % n, r;
    do
        r = rng_next(s);
    while (r >= lim);
    return (size_t)(r % n);
}

/* Uniform in [-1, 1). */
static double rng_sym(uint64_t s[4]) { return (double)(rng_next(s) >> 11) * 0x1p-52 - 1.0; }

/* Augments one input in place: C planes of depth D, each H x W.  An in-plane
 * integer shift (edge values repeated), an intensity gain and offset, and
 * uniform noise, all drawn from s.  No flips: left and right are findings. */
static void augment(float *x, int C, int D, int H, int W, float a, uint64_t s[4], float *tmp)
{
    int r = (int)lrint(2.0 * a);
    int dy = r ? (int)rng_below(s, (size_t)(2 * r + 1)) - r : 0;
    int dx = r ? (int)rng_below(s, (size_t)(2 * r + 1)) - r : 0;
    float gain = (float)(1.0 + 0.1 * a * rng_sym(s)), off = (float)(0.1 * a * rng_sym(s));
    float amp = (float)(0.05 * a * 1.7320508075688772);
    size_t hw = (size_t)H * W;
    for (int p = 0; p < C * D; p++) {
        float *pl = x + (size_t)p * hw;
        memcpy(tmp, pl, hw * sizeof(float));
        for (int y = 0; y < H; y++) {
            int sy = y - dy < 0 ? 0 : y - dy >= H ? H - 1 : y - dy;
            for (int xx = 0; xx < W; xx++) {
                int sx = xx - dx < 0 ? 0 : xx - dx >= W ? W - 1 : xx - dx;
                float v = tmp[(size_t)sy * W + sx] * gain + off;
                if (amp > 0)
                    v += amp * (float)rng_sym(s);
                pl[(size_t)y * W + xx] = v;
            }
        }
    }
}

/* The default preset (docs/train.md): a volume's axial slice is directly a
 * 2D input (64 x 64), so slice selection needs no resampling.  The synthetic
 * chest CTs cover ~370-440 mm across and ~260-310 mm along z: 64 x 6.5 mm and
 * 16 x 17.5 mm hold the whole chest.  Inputs are centred ((x - 0.5) / 0.25
 * after the [0, 1] mapping).  text.vocab_size is set from vocab.txt. */
static const char DEFAULT_CONFIG[] =
    "{\"architecture\":\"medsem\",\"embed_dim\":128,\"logit_scale\":2.6592,"
    "\"vision\":{\"hidden_size\":128,\"num_layers\":4,\"num_heads\":4,\"mlp_dim\":256,"
    "\"layer_norm_eps\":1e-6,\"in_channels\":1,\"image_size\":[64,64],\"patch_size\":[8,8],"
    "\"volume_size\":[16,64,64],\"volume_patch_size\":[4,8,8]},"
    "\"text\":{\"vocab_size\":1000,\"hidden_size\":128,\"num_layers\":2,\"num_heads\":4,"
    "\"intermediate_size\":256,\"max_position_embeddings\":128,\"type_vocab_size\":2,"
    "\"layer_norm_eps\":1e-12,\"max_len\":128,\"lower_case\":true},"
    "\"preprocess\":{\"spacing_3d\":[6.5,6.5,17.5],\"ct_window\":[-1000,400],"
    "\"mr_percentiles\":[0.5,99.5],\"mean\":[0.5],\"std\":[0.25],\"slice_view\":\"display\"}}";

const char *trn_trainer_default_config(void) { return DEFAULT_CONFIG; }

/* ---- the trainer ------------------------------------------------------------------- */

/* The items of one kind: inputs, token ids and finding tags, each in one
 * growing array (items are only added before training). */
typedef struct itemset {
    float *x;
    int32_t *ids, *mask;
    int32_t *sids, *smask;  /* side_weight > 0: the report with right and left swapped */
    unsigned char *swapped; /* ... and whether that changed it (it names a side) */
    int32_t *lids, *lmask;  /* lobe_rate > 0: the report with upper and lower swapped */
    unsigned char *lswapped; /* ... and whether that changed it (it names a lobe) */
    char **text;            /* phrase_rate > 0: the reports, for trn_report_phrase */
    int32_t *tags;
    size_t *tag_off; /* n + 1 */
    size_t n, cap, ntags, tagcap;
} itemset;

#define NRNG 5 /* the generator's 4 words and the count of skipped updates */

struct trn_trainer {
    trn_trainer_opts o;
    char *config;
    const enc_tok *tok;
    enc_model *m;
    enc_grads *g;
    trn_adamw *opt;
    size_t nparam; /* model tensors; the optimizer has one more: the log temperature */
    size_t head[2]; /* the tag and visual tag heads' weight tensors in the optimizer
                       (bias next); 0: that head is off */
    float *P, *G;  /* flat parameter and gradient arenas in the optimizer's layout */
    enc_input_geom gv, gi, gt;
    int has_img, has_vol, E, L;
    int slice_display; /* preprocess.slice_view "display": slices cut as shown (enc_prep_slice) */
    size_t vcount, icount; /* floats per volume / image input */
    itemset set[2];        /* [ENC_IMAGE], [ENC_VOLUME] */
    uint64_t rng[NRNG];
    int started;
    /* per-step buffers, planned at the first step */
    enc_state *sv, *si, *st;
    float *vin, *iin, *ev, *ei, *et, *a, *b, *da, *db, *det, *targets, *t0, *work;
    float *augtmp; /* one H x W plane for augment() */
    enc_state *ss;           /* side_weight > 0: the side-swapped reports */
    float *es, *des;         /* their embeddings and gradients [nb, E] */
    float *bn, *dbn;         /* per visual row: its swapped report, and its gradient [N, E] */
    unsigned char *use;      /* per visual row: its report names a side */
    int32_t *sbids, *sbmask; /* their token ids in the batch */
    int32_t *bids, *bmask, *btags;
    int32_t *ttags;          /* the tags of the batch's texts (a phrase's own) */
    size_t *ttag_off;
    unsigned char *bswap;    /* side_weight > 0: the batch's text names a side */
    unsigned char *lobe_draw; /* lobe_rate > 0: row r's negative swaps lobes if it can */
    size_t *btag_off, *src, *cnt, *pick_v, *pick_i;
    int *slices;
    /* radiograph-volume pairs of one study (trn_trainer_pair) */
    struct {
        size_t img, vol;
    } *pairs;
    size_t npair, paircap;
    unsigned char *img_paired; /* per radiograph: paired already */
    size_t img_pairedcap;
    /* the multi-label tag head: the slots some training report has */
    unsigned char tag_seen[TRN_REPORT_TAG_SLOTS];
    int ntag_seen;
};

static int vol_slice_ok(const trn_trainer *t, char *errbuf, size_t errlen)
{
    if (t->o.slice_k <= 0)
        return ENC_OK;
    if (!t->has_img || !t->has_vol)
        return util_errf(errbuf, errlen, ENC_INVAL, "slice selection needs a 2D and a 3D input");
    if (t->gv.size[1] != t->gi.size[1] || t->gv.size[2] != t->gi.size[2] ||
        t->gv.channels != t->gi.channels)
        return util_errf(errbuf, errlen, ENC_INVAL,
                         "slice selection needs volume_size H, W (%d, %d) equal to image_size "
                         "(%d, %d)",
                         t->gv.size[1], t->gv.size[2], t->gi.size[1], t->gi.size[2]);
    if (t->o.slice_k > t->gv.size[0])
        return util_errf(errbuf, errlen, ENC_INVAL, "slice_k %d is more than the volume's %d slices",
                         t->o.slice_k, t->gv.size[0]);
    return ENC_OK;
}

int trn_trainer_new(const char *config_json, const enc_tok *tok, const trn_trainer_opts *o,
                    trn_trainer **out, char *errbuf, size_t errlen)
{
    trn_trainer_opts d = TRN_TRAINER_OPTS_INIT;
    if (o == NULL)
        o = &d;
    if (o->batch_volumes < 0 || o->batch_images < 0 || o->batch_volumes + o->batch_images < 2 ||
        o->slice_k < 0 || !(o->consistency >= 0) || !(o->soft_alpha >= 0) || !(o->lr >= 0) ||
        !(o->clip >= 0) || o->warmup < 0 || o->total_steps < 0 || !(o->lr_floor >= 0) ||
        o->lr_floor > 1 || o->soft_start < 0 || !(o->augment >= 0) || o->augment > 10 ||
        !(o->tag_weight >= 0) || !(o->vis_tag_weight >= 0) || !(o->side_weight >= 0) ||
        !(o->phrase_rate >= 0) || o->phrase_rate > 1 || !(o->lobe_rate >= 0) || o->lobe_rate > 1 ||
        (o->lobe_rate > 0 && !(o->side_weight > 0)) || !(o->pair_weight >= 0))
        return util_errf(errbuf, errlen, ENC_INVAL,
                         "trainer options out of range (batch sizes, slice_k, weights, lr)");
    trn_trainer *t = calloc(1, sizeof *t);
    if (!t)
        return util_errf(errbuf, errlen, ENC_NOMEM, "out of memory");
    t->o = *o;
    t->tok = tok;
    int rc = ENC_OK;
    enc_param *table = NULL;
    t->config = strdup(config_json);
    if (!t->config) {
        rc = util_errf(errbuf, errlen, ENC_NOMEM, "out of memory");
        goto bad;
    }
    enc_model_opts mo = {.nthreads = o->threads, .no_id = 1, .trainable = 1};
    if ((rc = enc_model_new_random(config_json, o->seed, &mo, &t->m, errbuf, errlen)))
        goto bad;
    if (strcmp(enc_model_arch(t->m), "medsem")) {
        rc = util_errf(errbuf, errlen, ENC_INVAL, "the trainer makes medsem models, not %s",
                       enc_model_arch(t->m));
        goto bad;
    }
    {
        cJSON *cfg = cJSON_Parse(config_json);
        const cJSON *pre = cJSON_GetObjectItemCaseSensitive(cfg, "preprocess");
        const cJSON *sv = cJSON_GetObjectItemCaseSensitive(pre, "slice_view");
        int view = !sv ? 0 : cJSON_IsString(sv) ? enc_prep_slice_view(sv->valuestring) : -1;
        cJSON_Delete(cfg);
        if (view < 0) {
            rc = util_errf(errbuf, errlen, ENC_INVAL,
                           "config: preprocess.slice_view: expected \"ras\" or \"display\"");
            goto bad;
        }
        t->slice_display = view;
    }
    t->has_img = !enc_model_geom(t->m, ENC_IMAGE, &t->gi);
    t->has_vol = !enc_model_geom(t->m, ENC_VOLUME, &t->gv);
    if (enc_model_geom(t->m, ENC_TEXT, &t->gt)) {
        rc = util_errf(errbuf, errlen, ENC_INVAL, "the model has no text encoder");
        goto bad;
    }
    if (tok && enc_tok_vocab_size(tok) != (size_t)t->gt.vocab_size) {
        rc = util_errf(errbuf, errlen, ENC_INVAL,
                       "the vocabulary has %zu tokens, the config's text.vocab_size %d",
                       enc_tok_vocab_size(tok), t->gt.vocab_size);
        goto bad;
    }
    if ((rc = vol_slice_ok(t, errbuf, errlen)))
        goto bad;
    t->E = enc_model_embed_dim(t->m);
    t->L = t->gt.tokens;
    t->vcount = t->has_vol ? (size_t)t->gv.channels * t->gv.size[0] * t->gv.size[1] * t->gv.size[2]
                           : 0;
    t->icount = t->has_img ? (size_t)t->gi.channels * t->gi.size[1] * t->gi.size[2] : 0;
    if ((rc = enc_grads_new(t->m, &t->g))) {
        rc = util_errf(errbuf, errlen, rc, "cannot allocate the gradients");
        goto bad;
    }
    t->nparam = enc_model_param_count(t->m);
    table = calloc(t->nparam + 5, sizeof *table);
    if (!table) {
        rc = util_errf(errbuf, errlen, ENC_NOMEM, "out of memory");
        goto bad;
    }
    for (size_t i = 0; i < t->nparam; i++)
        enc_model_param(t->m, i, &table[i]);
    table[t->nparam] = (enc_param){.name = "logit_scale", .rank = 1, .shape = {1}, .count = 1};
    size_t ntab = t->nparam + 1;
    static const char *const head_name[2][2] = {{"tag_head.weight", "tag_head.bias"},
                                                {"vis_head.weight", "vis_head.bias"}};
    for (int h = 0; h < 2; h++) {
        if (!((h ? o->vis_tag_weight : o->tag_weight) > 0))
            continue;
        t->head[h] = ntab;
        table[ntab++] = (enc_param){.name = head_name[h][0], .rank = 2,
                                    .shape = {TRN_REPORT_TAG_SLOTS, t->E},
                                    .count = (size_t)TRN_REPORT_TAG_SLOTS * t->E};
        table[ntab++] = (enc_param){.name = head_name[h][1], .rank = 1,
                                    .shape = {TRN_REPORT_TAG_SLOTS},
                                    .count = TRN_REPORT_TAG_SLOTS};
    }
    trn_adamw_opts ao = TRN_ADAMW_OPTS_INIT;
    ao.weight_decay = o->weight_decay;
    if ((rc = trn_adamw_new(table, ntab, &ao, &t->opt, errbuf, errlen)))
        goto bad;
    size_t count = trn_adamw_count(t->opt);
    t->P = malloc(count * sizeof *t->P);
    t->G = calloc(count, sizeof *t->G);
    if (!t->P || !t->G) {
        rc = util_errf(errbuf, errlen, ENC_NOMEM, "out of memory for %zu parameters", count);
        goto bad;
    }
    for (size_t i = 0; i < t->nparam; i++)
        memcpy(t->P + trn_adamw_offset(t->opt, i), table[i].data, table[i].count * sizeof(float));
    t->P[trn_adamw_offset(t->opt, t->nparam)] = enc_model_logit_scale(t->m);
    for (int hd = 0; hd < 2; hd++) {
        /* the heads: weights uniform with SD 0.1, bias 0 */
        size_t idx = t->head[hd];
        if (!idx)
            continue;
        uint64_t h = o->seed ^ (hd ? 0x7669732d68656164ULL   /* "vis-head" */
                                   : 0x7461672d68656164ULL); /* "tag-head" */
        float *w = t->P + trn_adamw_offset(t->opt, idx);
        for (size_t i = 0; i < (size_t)TRN_REPORT_TAG_SLOTS * t->E; i++)
            w[i] = (float)(0.1 * 1.7320508075688772 *
                           ((double)(util_splitmix64(&h) >> 11) * 0x1p-52 - 1.0));
        memset(t->P + trn_adamw_offset(t->opt, idx + 1), 0, TRN_REPORT_TAG_SLOTS * sizeof(float));
    }
    uint64_t x = o->seed ^ 0x6d656473656d7472ULL; /* "medsemtr" */
    for (int i = 0; i < 4; i++)
        t->rng[i] = util_splitmix64(&x);
    t->rng[4] = 0;
    free(table);
    *out = t;
    return ENC_OK;
bad:
    free(table);
    trn_trainer_free(t);
    return rc;
}

static void itemset_free(itemset *s)
{
    free(s->x);
    free(s->ids);
    free(s->mask);
    free(s->sids);
    free(s->smask);
    free(s->swapped);
    free(s->lids);
    free(s->lmask);
    free(s->lswapped);
    if (s->text)
        for (size_t i = 0; i < s->n; i++)
            free(s->text[i]);
    free(s->text);
    free(s->tags);
    free(s->tag_off);
}

void trn_trainer_free(trn_trainer *t)
{
    if (!t)
        return;
    enc_state_free(t->sv);
    enc_state_free(t->si);
    enc_state_free(t->st);
    enc_state_free(t->ss);
    free(t->es);
    free(t->des);
    free(t->bn);
    free(t->dbn);
    free(t->use);
    free(t->sbids);
    free(t->sbmask);
    float *fb[] = {t->vin, t->iin, t->ev, t->ei, t->et, t->a,       t->b,    t->da,
                   t->db,  t->det, t->targets, t->t0, t->work, t->augtmp, t->P, t->G};
    for (size_t i = 0; i < sizeof fb / sizeof *fb; i++)
        free(fb[i]);
    free(t->bids);
    free(t->bmask);
    free(t->btags);
    free(t->btag_off);
    free(t->ttags);
    free(t->ttag_off);
    free(t->bswap);
    free(t->lobe_draw);
    free(t->src);
    free(t->cnt);
    free(t->pick_v);
    free(t->pick_i);
    free(t->slices);
    free(t->pairs);
    free(t->img_paired);
    itemset_free(&t->set[0]);
    itemset_free(&t->set[1]);
    trn_adamw_free(t->opt);
    enc_grads_free(t->g);
    enc_model_free(t->m);
    free(t->config);
    free(t);
}

/* Grows the array *p to n bytes: 0, or -1 with *p as it was. */
static int grow(void **p, size_t n)
{
    void *q = realloc(*p, n);
    if (q == NULL)
        return -1;
    *p = q;
    return 0;
}

/* A word and what it becomes in a negative. */
typedef struct swap_pair {
    const char *from, *to;
} swap_pair;

static const swap_pair side_pairs[] = {{"right", "left"}, {"left", "right"}, {NULL, NULL}};
static const swap_pair lobe_pairs[] = {
    {"upper", "lower"}, {"lower", "upper"}, {"middle", "lower"}, {NULL, NULL}};

char *trn_report_swap(const char *text, trn_swap what)
{
    const swap_pair *pairs = what == TRN_SWAP_LOBE ? lobe_pairs : side_pairs;
    size_t n = strlen(text);
    char *o = malloc(2 * n + 1); /* a replacement at most doubles a word */
    if (!o)
        return NULL;
    size_t j = 0;
    for (size_t i = 0; i < n;) {
        if (!isalpha((unsigned char)text[i])) {
            o[j++] = text[i++];
            continue;
        }
        size_t e = i;
        while (e < n && isalpha((unsigned char)text[e]))
            e++;
        const char *rep = NULL;
        for (const swap_pair *p = pairs; p->from && !rep; p++)
            if (strlen(p->from) == e - i && !strncasecmp(text + i, p->from, e - i))
                rep = p->to;
        if (rep) {
            size_t m = strlen(rep);
            memcpy(o + j, rep, m);
            for (size_t k = 0; k < m && k < e - i; k++)
                if (isupper((unsigned char)text[i + k]))
                    o[j + k] = (char)toupper((unsigned char)o[j + k]);
            j += m;
        } else {
            memcpy(o + j, text + i, e - i);
            j += e - i;
        }
        i = e;
    }
    o[j] = '\0';
    return o;
}

/* Tokenizes text with pairs swapped into ids/mask; *changed: whether the
 * swap changed it (the text names a side, or a lobe). */
static int encode_swapped(const trn_trainer *t, const char *text, trn_swap what,
                          int32_t *ids, int32_t *mask, unsigned char *changed, char *errbuf,
                          size_t errlen)
{
    char *sw = trn_report_swap(text, what);
    if (!sw)
        return util_errf(errbuf, errlen, ENC_NOMEM, "out of memory");
    *changed = strcmp(sw, text) != 0;
    size_t got;
    int rc = enc_tok_encode(t->tok, sw, (size_t)t->L, ids, mask, &got, errbuf, errlen);
    free(sw);
    return rc;
}

/* Grows the arrays of t's items of kind to room for nc items (nc > cap): 0,
 * or -1 with the set as it was, its arrays perhaps larger. */
static int set_room(trn_trainer *t, enc_kind kind, size_t nc)
{
    itemset *s = &t->set[kind];
    size_t per = kind == ENC_VOLUME ? t->vcount : t->icount, L = (size_t)t->L;
    int bad = grow((void **)&s->x, nc * per * sizeof *s->x) ||
              grow((void **)&s->ids, nc * L * sizeof *s->ids) ||
              grow((void **)&s->mask, nc * L * sizeof *s->mask) ||
              grow((void **)&s->tag_off, (nc + 1) * sizeof *s->tag_off);
    if (!bad && t->o.side_weight > 0)
        bad = grow((void **)&s->sids, nc * L * sizeof *s->sids) ||
              grow((void **)&s->smask, nc * L * sizeof *s->smask) ||
              grow((void **)&s->swapped, nc * sizeof *s->swapped);
    if (!bad && t->o.lobe_rate > 0)
        bad = grow((void **)&s->lids, nc * L * sizeof *s->lids) ||
              grow((void **)&s->lmask, nc * L * sizeof *s->lmask) ||
              grow((void **)&s->lswapped, nc * sizeof *s->lswapped);
    if (!bad && t->o.phrase_rate > 0)
        bad = grow((void **)&s->text, nc * sizeof *s->text);
    if (bad)
        return -1;
    s->cap = nc;
    if (s->n == 0)
        s->tag_off[0] = 0;
    return 0;
}

/* Whether items of kind can still be added: ENC_OK or ENC_INVAL, said. */
static int can_add(const trn_trainer *t, enc_kind kind, char *errbuf, size_t errlen)
{
    if (t->started)
        return util_errf(errbuf, errlen, ENC_INVAL, "items cannot be added after training started");
    if ((kind == ENC_IMAGE && !t->has_img) || (kind == ENC_VOLUME && !t->has_vol) ||
        kind == ENC_TEXT)
        return util_errf(errbuf, errlen, ENC_INVAL, "the model does not take this kind of input");
    return ENC_OK;
}

int trn_trainer_reserve(trn_trainer *t, enc_kind kind, size_t n, char *errbuf, size_t errlen)
{
    int rc = can_add(t, kind, errbuf, errlen);
    if (rc)
        return rc;
    if (n <= t->set[kind].cap)
        return ENC_OK;
    if (set_room(t, kind, n))
        return util_errf(errbuf, errlen, ENC_NOMEM, "out of memory for %zu items", n);
    return ENC_OK;
}

int trn_trainer_add(trn_trainer *t, enc_kind kind, const float *x, const char *report,
                    char *errbuf, size_t errlen)
{
    int rc = can_add(t, kind, errbuf, errlen);
    if (rc)
        return rc;
    if (!t->tok)
        return util_errf(errbuf, errlen, ENC_INVAL, "the trainer has no tokenizer");
    itemset *s = &t->set[kind];
    size_t per = kind == ENC_VOLUME ? t->vcount : t->icount, L = (size_t)t->L;
    if (s->n == s->cap && set_room(t, kind, s->cap ? 2 * s->cap : 64))
        return util_errf(errbuf, errlen, ENC_NOMEM, "out of memory for %zu items",
                         s->cap ? 2 * s->cap : 64);
    size_t got;
    rc = enc_tok_encode(t->tok, report ? report : "", L, s->ids + s->n * L, s->mask + s->n * L,
                        &got, errbuf, errlen);
    if (rc)
        return rc;
    if (t->o.side_weight > 0 &&
        (rc = encode_swapped(t, report ? report : "", TRN_SWAP_SIDE, s->sids + s->n * L,
                             s->smask + s->n * L, s->swapped + s->n, errbuf, errlen)))
        return rc;
    if (t->o.lobe_rate > 0 &&
        (rc = encode_swapped(t, report ? report : "", TRN_SWAP_LOBE, s->lids + s->n * L,
                             s->lmask + s->n * L, s->lswapped + s->n, errbuf, errlen)))
        return rc;
    int32_t tags[TRN_REPORT_MAX_TAGS];
    int nt = trn_report_tags(report ? report : "", tags, TRN_REPORT_MAX_TAGS);
    if (s->ntags + (size_t)nt > s->tagcap) {
        size_t nc = s->tagcap ? 2 * s->tagcap : 256;
        while (nc < s->ntags + (size_t)nt)
            nc *= 2;
        int32_t *ng = realloc(s->tags, nc * sizeof *ng);
        if (!ng)
            return util_errf(errbuf, errlen, ENC_NOMEM, "out of memory");
        s->tags = ng;
        s->tagcap = nc;
    }
    memcpy(s->tags + s->ntags, tags, (size_t)nt * sizeof *tags);
    s->ntags += (size_t)nt;
    if (t->o.phrase_rate > 0 && !(s->text[s->n] = strdup(report ? report : "")))
        return util_errf(errbuf, errlen, ENC_NOMEM, "out of memory");
    memcpy(s->x + s->n * per, x, per * sizeof *x);
    s->n++;
    s->tag_off[s->n] = s->ntags;
    return ENC_OK;
}

int trn_trainer_pair(trn_trainer *t, size_t image, size_t volume, char *errbuf, size_t errlen)
{
    if (t->started)
        return util_errf(errbuf, errlen, ENC_INVAL, "pairs cannot be added after training started");
    if (image >= t->set[ENC_IMAGE].n || volume >= t->set[ENC_VOLUME].n)
        return util_errf(errbuf, errlen, ENC_INVAL,
                         "pair: radiograph %zu and volume %zu (%zu and %zu added)", image, volume,
                         t->set[ENC_IMAGE].n, t->set[ENC_VOLUME].n);
    if (image >= t->img_pairedcap) {
        size_t nc = t->set[ENC_IMAGE].cap;
        unsigned char *f = realloc(t->img_paired, nc);
        if (!f)
            return util_errf(errbuf, errlen, ENC_NOMEM, "out of memory");
        memset(f + t->img_pairedcap, 0, nc - t->img_pairedcap);
        t->img_paired = f;
        t->img_pairedcap = nc;
    }
    if (t->img_paired[image])
        return util_errf(errbuf, errlen, ENC_INVAL, "pair: radiograph %zu is paired already",
                         image);
    if (t->npair == t->paircap) {
        size_t nc = t->paircap ? 2 * t->paircap : 64;
        void *np = realloc(t->pairs, nc * sizeof *t->pairs);
        if (!np)
            return util_errf(errbuf, errlen, ENC_NOMEM, "out of memory");
        t->pairs = np;
        t->paircap = nc;
    }
    t->pairs[t->npair].img = image;
    t->pairs[t->npair].vol = volume;
    t->npair++;
    t->img_paired[image] = 1;
    return ENC_OK;
}

size_t trn_trainer_items(const trn_trainer *t, enc_kind kind)
{
    return kind == ENC_TEXT ? 0 : t->set[kind].n;
}

int64_t trn_trainer_steps(const trn_trainer *t)
{
    return trn_adamw_steps(t->opt) + (int64_t)t->rng[4];
}

enc_model *trn_trainer_model(trn_trainer *t) { return t->m; }
const float *trn_trainer_params(const trn_trainer *t) { return t->P; }
const trn_adamw *trn_trainer_optimizer(const trn_trainer *t) { return t->opt; }

/* Batch shape of the next step: volumes, radiographs, slices per volume. */
static void batch_shape(const trn_trainer *t, int *nv, int *ni, int *k)
{
    *nv = t->set[ENC_VOLUME].n ? t->o.batch_volumes : 0;
    *ni = t->set[ENC_IMAGE].n ? t->o.batch_images : 0;
    *k = *nv ? t->o.slice_k : 0;
}

/* With pair_weight: the first min(nv, ni) volumes and radiographs of a batch
 * are drawn as pairs of one study. */
static int pair_rows(const trn_trainer *t, int nv, int ni)
{
    return t->o.pair_weight > 0 ? (nv < ni ? nv : ni) : 0;
}

/* Plans the states and buffers of a step once: everything the hot loop uses. */
static int plan(trn_trainer *t, char *errbuf, size_t errlen)
{
    int nv, ni, K;
    batch_shape(t, &nv, &ni, &K);
    int nb = nv + ni, nimg = ni + nv * K, N = nb + nv * K;
    if (nb < 2)
        return util_errf(errbuf, errlen, ENC_INVAL,
                         "a step needs at least two pairs (%d volumes, %d radiographs)", nv, ni);
    if (t->o.pair_weight > 0 && (t->npair == 0 || pair_rows(t, nv, ni) == 0))
        return util_errf(errbuf, errlen, ENC_INVAL,
                         "pair_weight needs radiographs paired with volumes (trn_trainer_pair; "
                         "%zu pairs) and both in the batch (%d volumes, %d radiographs)",
                         t->npair, nv, ni);
    int rc;
    memset(t->tag_seen, 0, sizeof t->tag_seen);
    t->ntag_seen = 0;
    for (int k = 0; k < 2; k++)
        for (size_t i = 0; i < t->set[k].ntags; i++)
            if (!t->tag_seen[t->set[k].tags[i]]++)
                t->ntag_seen++;
    enc_state_opts vo = {.flags = ENC_STATE_TRAIN | (K ? ENC_STATE_CLSATT : 0)};
    enc_state_opts so = {.flags = ENC_STATE_TRAIN};
    if (nv && (rc = enc_state_new(t->m, ENC_VOLUME, nv, &vo, &t->sv, errbuf, errlen)))
        return rc;
    if (nimg && (rc = enc_state_new(t->m, ENC_IMAGE, nimg, &so, &t->si, errbuf, errlen)))
        return rc;
    if ((rc = enc_state_new(t->m, ENC_TEXT, nb, &so, &t->st, errbuf, errlen)))
        return rc;
    if (t->o.side_weight > 0) {
        if ((rc = enc_state_new(t->m, ENC_TEXT, nb, &so, &t->ss, errbuf, errlen)))
            return rc;
        t->es = malloc((size_t)nb * t->E * sizeof(float));
        t->des = malloc((size_t)nb * t->E * sizeof(float));
        t->sbids = malloc((size_t)nb * t->L * sizeof(int32_t));
        t->sbmask = malloc((size_t)nb * t->L * sizeof(int32_t));
        t->bn = malloc((size_t)N * t->E * sizeof(float));
        t->dbn = malloc((size_t)N * t->E * sizeof(float));
        t->use = malloc((size_t)N);
        if (!t->es || !t->des || !t->sbids || !t->sbmask || !t->bn || !t->dbn || !t->use)
            return util_errf(errbuf, errlen, ENC_NOMEM, "out of memory");
    }
    size_t E = (size_t)t->E, L = (size_t)t->L;
    t->vin = malloc(((size_t)nv * t->vcount + 1) * sizeof(float));
    t->iin = malloc(((size_t)nimg * t->icount + 1) * sizeof(float));
    t->ev = malloc(((size_t)nv + 1) * E * sizeof(float));
    t->ei = malloc(((size_t)nimg + 1) * E * sizeof(float));
    t->et = malloc((size_t)nb * E * sizeof(float));
    t->a = malloc((size_t)N * E * sizeof(float));
    t->b = malloc((size_t)N * E * sizeof(float));
    t->da = malloc((size_t)N * E * sizeof(float));
    t->db = malloc((size_t)N * E * sizeof(float));
    t->det = malloc((size_t)nb * E * sizeof(float));
    t->targets = malloc((size_t)N * N * sizeof(float));
    t->t0 = malloc((size_t)nb * nb * sizeof(float));
    t->work = malloc(trn_loss_clip_work_floats(N) * sizeof(float));
    size_t plane = (size_t)t->gv.size[1] * t->gv.size[2];
    if ((size_t)t->gi.size[0] * t->gi.size[1] > plane)
        plane = (size_t)t->gi.size[0] * t->gi.size[1];
    t->augtmp = malloc((plane + 1) * sizeof(float));
    t->bids = malloc((size_t)nb * L * sizeof(int32_t));
    t->bmask = malloc((size_t)nb * L * sizeof(int32_t));
    t->btags = malloc((size_t)nb * TRN_REPORT_MAX_TAGS * sizeof(int32_t));
    t->btag_off = malloc(((size_t)nb + 1) * sizeof(size_t));
    t->ttags = malloc((size_t)nb * TRN_REPORT_MAX_TAGS * sizeof(int32_t));
    t->ttag_off = malloc(((size_t)nb + 1) * sizeof(size_t));
    t->bswap = malloc((size_t)nb);
    t->lobe_draw = calloc((size_t)nb, 1);
    t->src = malloc((size_t)N * sizeof(size_t));
    t->cnt = malloc((size_t)nb * sizeof(size_t));
    t->pick_v = malloc(((size_t)nv + 1) * sizeof(size_t));
    t->pick_i = malloc(((size_t)ni + 1) * sizeof(size_t));
    t->slices = malloc(((size_t)nv * K + 1) * sizeof(int));
    if (!t->vin || !t->iin || !t->ev || !t->ei || !t->et || !t->a || !t->b || !t->da || !t->db ||
        !t->det || !t->targets || !t->t0 || !t->work || !t->augtmp || !t->bids || !t->bmask || !t->btags ||
        !t->btag_off || !t->ttags || !t->ttag_off || !t->bswap || !t->lobe_draw || !t->src || !t->cnt || !t->pick_v || !t->pick_i || !t->slices)
        return util_errf(errbuf, errlen, ENC_NOMEM, "out of memory for the step buffers");
    t->started = 1;
    return ENC_OK;
}

void trn_slice_select(const float *att, const int grid[3], int patch_d, int k, int *slices)
{
    int Dp = grid[0], per = grid[1] * grid[2];
    /* Dp is small (a volume has at most a few hundred slices): rank the
     * group scores by selection, ties to the lower group. */
    double score[1024];
    int rank[1024], used[1024];
    if (Dp > 1024)
        Dp = 1024;
    for (int g = 0; g < Dp; g++) {
        double s = 0;
        for (int j = 0; j < per; j++)
            s += att[(size_t)g * per + j];
        score[g] = s;
        used[g] = 0;
    }
    for (int r = 0; r < Dp; r++) {
        int best = -1;
        for (int g = 0; g < Dp; g++)
            if (!used[g] && (best < 0 || score[g] > score[best]))
                best = g;
        used[best] = 1;
        rank[r] = best;
    }
    for (int i = 0; i < k; i++) {
        int g = rank[i % Dp], r = i / Dp;
        /* offsets from the centre: 0, -1, +1, -2, +2, ... */
        int off = patch_d / 2 + (r % 2 ? -(r + 1) / 2 : r / 2);
        if (off < 0)
            off += patch_d;
        if (off >= patch_d)
            off -= patch_d;
        slices[i] = g * patch_d + off;
    }
}

/* The tag heads.  The report-tag head (tag_weight > 0): every visual row
 * and every report predicts its report's finding tags through one shared
 * linear map, z = 10 W e + b over TRN_REPORT_TAG_SLOTS classes
 * (knowledge-enhanced pre-training from the report text alone, never the
 * labels).  Sharing W puts the tags on the same axes in both towers.  Its
 * loss is either a softmax cross-entropy against the tags spread evenly, or
 * (tag_bce) a multi-label one: a sigmoid binary cross-entropy per slot,
 * averaged over the slots some training report has (ntag_seen), so that
 * every finding and every (finding, location) tag of a report is a target
 * of its own instead of a share of one distribution.
 *
 * The visual tag head (vis_tag_weight > 0) is a second map of the same
 * shape that only the volumes and radiographs use (rows 0 .. nb - 1, not
 * the slices: one axial slice rarely holds every finding of its volume),
 * always multi-label: each (finding, location) slot is a target of its own
 * on the image alone, as a supervised CNN has it, while the reports are
 * left to the contrastive terms.
 *
 * head_loss runs head idx (weight, then bias, in the optimizer) over the
 * first nvis visual rows and the first ntxt texts: adds the weighted
 * gradients to da and det and writes the head's gradients into G; returns
 * the mean loss over the rows. */
#define TAG_HEAD_SCALE 10.0
static float head_loss(trn_trainer *t, size_t idx, int nvis, int ntxt, int bce, float weight,
                       float *G)
{
    const int E = t->E, C = TRN_REPORT_TAG_SLOTS, R = nvis + ntxt;
    const float *W = t->P + trn_adamw_offset(t->opt, idx);
    const float *bias = t->P + trn_adamw_offset(t->opt, idx + 1);
    float *gW = G + trn_adamw_offset(t->opt, idx);
    float *gb = G + trn_adamw_offset(t->opt, idx + 1);
    memset(gW, 0, (size_t)C * E * sizeof(float));
    memset(gb, 0, (size_t)C * sizeof(float));
    double z[TRN_REPORT_TAG_SLOTS], loss = 0, w = (double)weight / R;
    for (int r = 0; r < R; r++) {
        int vis = r < nvis;
        size_t src = vis ? t->src[r] : (size_t)(r - nvis);
        const float *e = vis ? t->a + (size_t)r * E : t->et + (size_t)(r - nvis) * E;
        float *de = vis ? t->da + (size_t)r * E : t->det + (size_t)(r - nvis) * E;
        /* a visual row learns its report's tags, a text its own (a phrase's) */
        const int32_t *tags = vis ? t->btags : t->ttags;
        const size_t *off = vis ? t->btag_off : t->ttag_off;
        const int32_t *tg = tags + off[src];
        size_t nt = off[src + 1] - off[src];
        if (nt == 0)
            continue;
        double mx = -INFINITY, sum = 0;
        for (int c = 0; c < C; c++) {
            double acc = 0;
            for (int k = 0; k < E; k++)
                acc += (double)W[(size_t)c * E + k] * e[k];
            z[c] = TAG_HEAD_SCALE * acc + bias[c];
            if (z[c] > mx)
                mx = z[c];
        }
        if (bce) {
            /* z becomes dL/dz: sigmoid(z) - y on the seen slots, 0 elsewhere */
            double inv = 1.0 / (t->ntag_seen > 0 ? t->ntag_seen : 1);
            unsigned char y[TRN_REPORT_TAG_SLOTS] = {0};
            for (size_t q = 0; q < nt; q++)
                y[tg[q]] = 1;
            for (int c = 0; c < C; c++) {
                if (!t->tag_seen[c]) {
                    z[c] = 0;
                    continue;
                }
                /* -log sigmoid(+-z), stably: log1p(exp(-|z|)) + max(-+z, 0) */
                double zz = y[c] ? z[c] : -z[c];
                loss += inv * (log1p(exp(-fabs(zz))) + (zz < 0 ? -zz : 0));
                z[c] = inv * (1.0 / (1.0 + exp(-z[c])) - y[c]);
            }
        } else {
            for (int c = 0; c < C; c++)
                sum += exp(z[c] - mx);
            double lse = mx + log(sum), y = 1.0 / (double)nt;
            for (size_t q = 0; q < nt; q++)
                loss -= y * (z[tg[q]] - lse);
            for (int c = 0; c < C; c++)
                z[c] = exp(z[c] - lse); /* now the softmax */
            for (size_t q = 0; q < nt; q++)
                z[tg[q]] -= y;
        }
        for (int c = 0; c < C; c++) {
            double g = w * z[c];
            gb[c] += (float)g;
            for (int k = 0; k < E; k++) {
                gW[(size_t)c * E + k] += (float)(TAG_HEAD_SCALE * g * e[k]);
                de[k] += (float)(TAG_HEAD_SCALE * g * W[(size_t)c * E + k]);
            }
        }
    }
    return (float)(loss / R);
}

/* phrase_rate: each of the batch's reports is replaced, with that
 * probability, by a short phrase made from it (trn_report_phrase), as its
 * text row (and, with side_weight, its mirror image); the text's tags are
 * then the phrase's own.  Draws from the trainer's generator only when on,
 * so runs without it are unchanged. */
static int phrases(trn_trainer *t, int nv, int nb, char *errbuf, size_t errlen)
{
    memcpy(t->ttags, t->btags, t->btag_off[nb] * sizeof(int32_t));
    memcpy(t->ttag_off, t->btag_off, ((size_t)nb + 1) * sizeof(size_t));
    if (!(t->o.phrase_rate > 0))
        return ENC_OK;
    size_t L = (size_t)t->L, ntag = 0, got;
    int rc;
    t->ttag_off[0] = 0;
    for (int r = 0; r < nb; r++) {
        const itemset *s = &t->set[r < nv ? ENC_VOLUME : ENC_IMAGE];
        size_t j = r < nv ? t->pick_v[r] : t->pick_i[r - nv];
        double u = (double)(rng_next(t->rng) >> 11) * 0x1p-53;
        uint64_t seed = rng_next(t->rng);
        if (!(u < t->o.phrase_rate)) {
            size_t n = t->btag_off[r + 1] - t->btag_off[r];
            memmove(t->ttags + ntag, t->btags + t->btag_off[r], n * sizeof(int32_t));
            ntag += n;
            t->ttag_off[r + 1] = ntag;
            continue;
        }
        char ph[1024];
        trn_report_phrase(s->text[j], seed, ph, sizeof ph);
        if ((rc = enc_tok_encode(t->tok, ph, L, t->bids + r * L, t->bmask + r * L, &got, errbuf,
                                 errlen)))
            return rc;
        ntag += (size_t)trn_report_tags(ph, t->ttags + ntag, TRN_REPORT_MAX_TAGS);
        t->ttag_off[r + 1] = ntag;
        if (t->ss) {
            /* the lobe-swapped negative when drawn and the phrase names a
             * lobe, else the side-swapped one */
            int lobe = t->o.lobe_rate > 0 && t->lobe_draw[r];
            if (lobe && (rc = encode_swapped(t, ph, TRN_SWAP_LOBE, t->sbids + r * L,
                                             t->sbmask + r * L, t->bswap + r, errbuf, errlen)))
                return rc;
            if ((!lobe || !t->bswap[r]) &&
                (rc = encode_swapped(t, ph, TRN_SWAP_SIDE, t->sbids + r * L, t->sbmask + r * L,
                                     t->bswap + r, errbuf, errlen)))
                return rc;
        }
    }
    return ENC_OK;
}

/* Rows p and q of the soft targets T [B, B] (a volume and a radiograph of one
 * study) take each other's report as a positive as strong as their own: row
 * p's entries p and q become its own weight, and the row is normalised
 * again; the same for row q.  Hard targets become 1/2 on each. */
static void pair_targets(float *T, int B, int p, int q)
{
    int rows[2] = {p, q};
    for (int k = 0; k < 2; k++) {
        float *row = T + (size_t)rows[k] * B;
        float self = row[rows[k]];
        row[p] = row[q] = self;
        double sum = 0;
        for (int j = 0; j < B; j++)
            sum += row[j];
        for (int j = 0; j < B; j++)
            row[j] = (float)((double)row[j] / sum);
    }
}

int trn_trainer_step(trn_trainer *t, trn_trainer_stats *st, char *errbuf, size_t errlen)
{
    int rc;
    if (!t->started && (rc = plan(t, errbuf, errlen)))
        return rc;
    int nv, ni, K;
    batch_shape(t, &nv, &ni, &K);
    int nb = nv + ni, nimg = ni + nv * K, N = nb + nv * K, E = t->E, L = t->L;
    itemset *V = &t->set[ENC_VOLUME], *I = &t->set[ENC_IMAGE];

    /* 1. the batch: the pairs of one study first */
    int npr = pair_rows(t, nv, ni);
    for (int i = 0; i < npr; i++) {
        size_t p = rng_below(t->rng, t->npair);
        t->pick_v[i] = t->pairs[p].vol;
        t->pick_i[i] = t->pairs[p].img;
    }
    for (int i = npr; i < nv; i++)
        t->pick_v[i] = rng_below(t->rng, V->n);
    for (int i = npr; i < ni; i++)
        t->pick_i[i] = rng_below(t->rng, I->n);
    if (t->o.lobe_rate > 0)
        for (int r = 0; r < nb; r++)
            t->lobe_draw[r] = (double)(rng_next(t->rng) >> 11) * 0x1p-53 < t->o.lobe_rate;
    size_t ntag = 0;
    t->btag_off[0] = 0;
    for (int r = 0; r < nb; r++) {
        const itemset *s = r < nv ? V : I;
        size_t j = r < nv ? t->pick_v[r] : t->pick_i[r - nv];
        memcpy(t->bids + (size_t)r * L, s->ids + j * L, (size_t)L * sizeof(int32_t));
        memcpy(t->bmask + (size_t)r * L, s->mask + j * L, (size_t)L * sizeof(int32_t));
        if (t->ss) {
            memcpy(t->sbids + (size_t)r * L, s->sids + j * L, (size_t)L * sizeof(int32_t));
            memcpy(t->sbmask + (size_t)r * L, s->smask + j * L, (size_t)L * sizeof(int32_t));
        }
        size_t n = s->tag_off[j + 1] - s->tag_off[j];
        memcpy(t->btags + ntag, s->tags + s->tag_off[j], n * sizeof(int32_t));
        ntag += n;
        t->btag_off[r + 1] = ntag;
        if (t->ss)
            t->bswap[r] = s->swapped[j];
        if (t->ss && t->lobe_draw[r] && s->lswapped[j]) {
            memcpy(t->sbids + (size_t)r * L, s->lids + j * L, (size_t)L * sizeof(int32_t));
            memcpy(t->sbmask + (size_t)r * L, s->lmask + j * L, (size_t)L * sizeof(int32_t));
            t->bswap[r] = 1;
        }
    }
    if ((rc = phrases(t, nv, nb, errbuf, errlen)))
        return rc;
    for (int i = 0; i < nv; i++)
        memcpy(t->vin + (size_t)i * t->vcount, V->x + t->pick_v[i] * t->vcount,
               t->vcount * sizeof(float));
    for (int i = 0; i < ni; i++)
        memcpy(t->iin + (size_t)i * t->icount, I->x + t->pick_i[i] * t->icount,
               t->icount * sizeof(float));
    if (t->o.augment > 0) {
        for (int i = 0; i < nv; i++)
            augment(t->vin + (size_t)i * t->vcount, t->gv.channels, t->gv.size[0], t->gv.size[1],
                    t->gv.size[2], t->o.augment, t->rng, t->augtmp);
        for (int i = 0; i < ni; i++)
            augment(t->iin + (size_t)i * t->icount, t->gi.channels, 1, t->gi.size[0],
                    t->gi.size[1], t->o.augment, t->rng, t->augtmp);
    }

    /* 2. volumes, then the slices their attention picks */
    if (nv && (rc = enc_encode_volume(t->sv, t->vin, nv, t->ev)))
        return util_errf(errbuf, errlen, rc, "volumes: %s", enc_state_errmsg(t->sv));
    if (K) {
        const float *att = enc_state_cls_attention(t->sv);
        int grid[3] = {t->gv.size[0] / t->gv.patch[0], t->gv.size[1] / t->gv.patch[1],
                       t->gv.size[2] / t->gv.patch[2]};
        size_t np = (size_t)grid[0] * grid[1] * grid[2];
        int D = t->gv.size[0];
        for (int b = 0; b < nv; b++) {
            trn_slice_select(att + b * np, grid, t->gv.patch[0], K, t->slices + b * K);
            for (int k = 0; k < K; k++)
                enc_prep_slice(t->vin + (size_t)b * t->vcount, t->gv.channels, D, t->gv.size[1],
                               t->gv.size[2], t->slices[b * K + k], t->slice_display,
                               t->iin + ((size_t)ni + (size_t)b * K + k) * t->icount);
        }
    }
    if (nimg && (rc = enc_encode_image(t->si, t->iin, nimg, t->ei)))
        return util_errf(errbuf, errlen, rc, "images: %s", enc_state_errmsg(t->si));
    if ((rc = enc_encode_text(t->st, t->bids, t->bmask, nb, L, t->et)))
        return util_errf(errbuf, errlen, rc, "reports: %s", enc_state_errmsg(t->st));
    if (t->ss && (rc = enc_encode_text(t->ss, t->sbids, t->sbmask, nb, L, t->es)))
        return util_errf(errbuf, errlen, rc, "side-swapped reports: %s", enc_state_errmsg(t->ss));

    /* 3. the losses.  Rows: volumes, radiographs, slices (b, k) at nb + b K + k;
     * src = the report each row is paired with. */
    size_t es = (size_t)E * sizeof(float);
    memcpy(t->a, t->ev, (size_t)nv * es);
    memcpy(t->a + (size_t)nv * E, t->ei, (size_t)nimg * es);
    for (int r = 0; r < nb; r++)
        t->src[r] = (size_t)r;
    for (int b = 0; b < nv; b++)
        for (int k = 0; k < K; k++)
            t->src[nb + b * K + k] = (size_t)b;
    memset(t->cnt, 0, (size_t)nb * sizeof *t->cnt);
    for (int r = 0; r < N; r++) {
        t->cnt[t->src[r]]++;
        memcpy(t->b + (size_t)r * E, t->et + t->src[r] * E, es);
    }
    const float *targets = NULL;
    float alpha = trn_adamw_steps(t->opt) + (int64_t)t->rng[4] >= t->o.soft_start
                      ? t->o.soft_alpha
                      : 0.0f;
    if (K || alpha > 0 || npr) {
        /* Rows sharing a report share its target mass: T'_ij = T_s(i)s(j) / n_s(j),
         * which still sums to 1 over j. */
        trn_loss_soft_targets(t->btags, t->btag_off, nb, alpha, t->t0);
        for (int b = 0; b < npr; b++)
            pair_targets(t->t0, nb, b, nv + b);
        for (int i = 0; i < N; i++)
            for (int j = 0; j < N; j++)
                t->targets[(size_t)i * N + j] =
                    t->t0[t->src[i] * nb + t->src[j]] / (float)t->cnt[t->src[j]];
        targets = t->targets;
    }
    size_t ls_off = trn_adamw_offset(t->opt, t->nparam);
    float log_scale = t->P[ls_off], dls = 0;
    float clip_loss = trn_loss_clip_forward(t->a, t->b, N, E, log_scale, targets, t->work);
    memset(t->da, 0, (size_t)N * es);
    memset(t->db, 0, (size_t)N * es);
    trn_loss_clip_backward(t->a, t->b, N, E, log_scale, targets, 1.0f, t->work, t->da, t->db,
                           &dls);
    float cons = 0;
    if (K && t->o.consistency > 0) {
        const float *sl = t->a + (size_t)nb * E;
        cons = trn_loss_consistency_forward(t->a, sl, nv, K, E);
        trn_loss_consistency_backward(t->a, sl, nv, K, E, t->o.consistency, t->da,
                                      t->da + (size_t)nb * E);
    }
    float pairl = 0;
    if (npr) {
        const float *ra = t->a + (size_t)nv * E;
        pairl = trn_loss_consistency_forward(t->a, ra, npr, 1, E);
        trn_loss_consistency_backward(t->a, ra, npr, 1, E, t->o.pair_weight, t->da,
                                      t->da + (size_t)nv * E);
    }
    float sidel = 0;
    if (t->ss) {
        /* each visual row against its report (b) and the report's mirror
         * image (bn), when the report names a side */
        for (int r = 0; r < N; r++) {
            size_t src = t->src[r];
            t->use[r] = t->bswap[src];
            memcpy(t->bn + (size_t)r * E, t->es + src * E, es);
        }
        float sc = expf(log_scale);
        sc = sc > 100 ? 100 : sc;
        sidel = trn_loss_side_forward(t->a, t->b, t->bn, t->use, N, E, sc);
        memset(t->dbn, 0, (size_t)N * es);
        trn_loss_side_backward(t->a, t->b, t->bn, t->use, N, E, sc, t->o.side_weight, t->da,
                               t->db, t->dbn);
        memset(t->des, 0, (size_t)nb * es);
        for (int r = 0; r < N; r++)
            for (int e = 0; e < E; e++)
                t->des[t->src[r] * E + e] += t->dbn[(size_t)r * E + e];
    }
    memset(t->det, 0, (size_t)nb * es);
    for (int r = 0; r < N; r++)
        for (int e = 0; e < E; e++)
            t->det[t->src[r] * E + e] += t->db[(size_t)r * E + e];
    float tagl = t->o.tag_weight > 0 ? head_loss(t, t->head[0], N, nb, t->o.tag_bce,
                                                 t->o.tag_weight, t->G)
                                     : 0.0f;
    float vtagl = t->o.vis_tag_weight > 0
                      ? head_loss(t, t->head[1], nb, 0, 1, t->o.vis_tag_weight, t->G)
                      : 0.0f;

    /* 4. backward, clip, update */
    enc_grads_zero(t->g);
    if (nv && (rc = enc_backward_volume(t->sv, t->da, t->g)))
        return util_errf(errbuf, errlen, rc, "volumes: %s", enc_state_errmsg(t->sv));
    if (nimg && (rc = enc_backward_image(t->si, t->da + (size_t)nv * E, t->g)))
        return util_errf(errbuf, errlen, rc, "images: %s", enc_state_errmsg(t->si));
    if ((rc = enc_backward_text(t->st, t->det, t->g)))
        return util_errf(errbuf, errlen, rc, "reports: %s", enc_state_errmsg(t->st));
    if (t->ss && (rc = enc_backward_text(t->ss, t->des, t->g)))
        return util_errf(errbuf, errlen, rc, "side-swapped reports: %s", enc_state_errmsg(t->ss));
    for (size_t i = 0; i < t->nparam; i++) {
        enc_param p;
        enc_model_param(t->m, i, &p);
        memcpy(t->G + trn_adamw_offset(t->opt, i), enc_grads_data(t->g, i),
               p.count * sizeof(float));
    }
    t->G[ls_off] = dls;
    float norm = trn_adamw_clip_grad_norm(t->opt, t->G, t->o.clip > 0 ? (float)t->o.clip : INFINITY);
    trn_sched sched = {t->o.lr, t->o.warmup, t->o.total_steps, t->o.lr_floor};
    double lr = trn_lr(&sched, trn_adamw_steps(t->opt));
    int skipped = !isfinite(norm) || !isfinite(clip_loss) || !isfinite(cons) || !isfinite(tagl) ||
                  !isfinite(vtagl) || !isfinite(sidel) || !isfinite(pairl);
    if (skipped) {
        t->rng[4]++;
    } else {
        trn_adamw_step(t->opt, t->P, t->G, lr);
        for (size_t i = 0; i < t->nparam; i++) {
            enc_param p;
            enc_model_param(t->m, i, &p);
            memcpy(enc_model_param_mut(t->m, i), t->P + trn_adamw_offset(t->opt, i),
                   p.count * sizeof(float));
        }
    }
    if (st) {
        float s = expf(t->P[ls_off]);
        *st = (trn_trainer_stats){
            .step = trn_trainer_steps(t),
            .loss = (double)clip_loss + t->o.consistency * (double)cons +
                    t->o.tag_weight * (double)tagl + t->o.vis_tag_weight * (double)vtagl +
                    t->o.side_weight * (double)sidel + t->o.pair_weight * (double)pairl,
            .clip_loss = clip_loss,
            .cons_loss = cons,
            .tag_loss = tagl,
            .vis_tag_loss = vtagl,
            .side_loss = sidel,
            .pair_loss = pairl,
            .lr = lr,
            .grad_norm = norm,
            .temperature = 1.0 / (s > 100 ? 100 : s),
            .samples = nv + nimg,
            .skipped = skipped,
        };
    }
    return ENC_OK;
}

/* Matrix-product FLOPs of one forward of a transformer tower over B inputs
 * of T tokens (2 per multiply-add): qkv, projection, MLP, QK^T and PV. */
static double tower_flops(const enc_input_geom *g, int mlp, double B, double T)
{
    double D = g->hidden_size, M = mlp;
    return B * g->num_layers * (2 * T * (4 * D * D + 2 * D * M) + 4 * T * T * D);
}

double trn_trainer_step_flops(const trn_trainer *t)
{
    int nv, ni, K;
    batch_shape(t, &nv, &ni, &K);
    /* The MLP width is not in the geometry: read it from the parameter table
     * (the first fc1 weight is [M, D]). */
    int mv = 0, mt = 0;
    for (size_t i = 0; i < t->nparam; i++) {
        enc_param p;
        enc_model_param(t->m, i, &p);
        if (!mv && strstr(p.name, "vision.blocks.0.mlp.fc1.weight"))
            mv = (int)p.shape[0];
        if (!mt && strstr(p.name, "layer.0.intermediate.dense.weight"))
            mt = (int)p.shape[0];
    }
    double f = 0;
    if (nv)
        f += tower_flops(&t->gv, mv, nv, t->gv.tokens) + 2.0 * nv * t->gv.embed_macs;
    int nimg = ni + nv * K;
    if (nimg)
        f += tower_flops(&t->gi, mv, nimg, t->gi.tokens) + 2.0 * nimg * t->gi.embed_macs;
    f += tower_flops(&t->gt, mt, nv + ni, t->L);
    return 3 * f; /* forward + a backward of about twice its products */
}

/* ---- checkpoints and the model directory ------------------------------------------ */

static char *hparams(const trn_trainer *t)
{
    char *s = NULL, side[256] = "";
    if (t->o.side_weight > 0)
        snprintf(side, sizeof side, ",\"side_weight\":%.9g", t->o.side_weight);
    if (t->o.phrase_rate > 0)
        snprintf(side + strlen(side), sizeof side - strlen(side), ",\"phrase_rate\":%.9g",
                 t->o.phrase_rate);
    if (t->o.lobe_rate > 0)
        snprintf(side + strlen(side), sizeof side - strlen(side), ",\"lobe_rate\":%.9g",
                 t->o.lobe_rate);
    if (t->o.vis_tag_weight > 0)
        snprintf(side + strlen(side), sizeof side - strlen(side), ",\"vis_tag_weight\":%.9g",
                 t->o.vis_tag_weight);
    if (t->o.pair_weight > 0)
        snprintf(side + strlen(side), sizeof side - strlen(side), ",\"pair_weight\":%.9g",
                 t->o.pair_weight);
    if (asprintf(&s,
                 "{\"seed\":%llu,\"batch_volumes\":%d,\"batch_images\":%d,\"slice_k\":%d,"
                 "\"consistency\":%.9g,\"soft_alpha\":%.9g,\"lr\":%.17g,\"weight_decay\":%.17g,"
                 "\"clip\":%.17g,\"warmup\":%lld,\"total_steps\":%lld,\"lr_floor\":%.17g,"
                 "\"soft_start\":%lld,\"augment\":%.9g,\"tag_weight\":%.9g%s%s}",
                 (unsigned long long)t->o.seed, t->o.batch_volumes, t->o.batch_images,
                 t->o.slice_k, t->o.consistency, t->o.soft_alpha, t->o.lr, t->o.weight_decay,
                 t->o.clip, (long long)t->o.warmup, (long long)t->o.total_steps,
                 t->o.lr_floor, (long long)t->o.soft_start, t->o.augment,
                 t->o.tag_weight, t->o.tag_bce ? ",\"tag_bce\":1" : "", side) < 0)
        return NULL;
    return s;
}

int trn_trainer_ckpt_write(const trn_trainer *t, const char *path, char *errbuf, size_t errlen)
{
    char *hp = hparams(t);
    if (!hp)
        return util_errf(errbuf, errlen, ENC_NOMEM, "out of memory");
    int rc = trn_ckpt_write(path, t->opt, t->P, t->rng, NRNG, hp, errbuf, errlen);
    free(hp);
    return rc;
}

int trn_trainer_ckpt_read(trn_trainer *t, const char *path, char *errbuf, size_t errlen)
{
    int rc = trn_ckpt_read(path, t->opt, t->P, t->rng, NRNG, NULL, errbuf, errlen);
    if (rc)
        return rc;
    for (size_t i = 0; i < t->nparam; i++) {
        enc_param p;
        enc_model_param(t->m, i, &p);
        memcpy(enc_model_param_mut(t->m, i), t->P + trn_adamw_offset(t->opt, i),
               p.count * sizeof(float));
    }
    return ENC_OK;
}

/* "[a, b, c]" of a shape, for messages. */
static void shape_str(const int64_t *shape, int rank, char *out, size_t cap)
{
    size_t k = (size_t)snprintf(out, cap, "[");
    for (int i = 0; i < rank && k < cap; i++)
        k += (size_t)snprintf(out + k, cap - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (k < cap)
        snprintf(out + k, cap - k, "]");
}

/* dst [D, C, pz, py, px] from src [D, C, pz / r, py, px]: each source slice
 * repeated r times, divided by r. */
static void expand_patch_z(float *dst, const float *src, const int64_t *shape, int r)
{
    const int64_t DC = shape[0] * shape[1], pz = shape[2], plane = shape[3] * shape[4];
    for (int64_t o = 0; o < DC; o++)
        for (int64_t z = 0; z < pz; z++) {
            const float *s = src + (o * (pz / r) + z / r) * plane;
            float *d = dst + (o * pz + z) * plane;
            for (int64_t k = 0; k < plane; k++)
                d[k] = s[k] / (float)r;
        }
}

/* dst [1, 1 + gz * gyx, D] from src [1, 1 + sz * gyx, D]: the [CLS] row
 * copied, the grid resampled linearly along z with pixel centres aligned. */
static void resample_pos_z(float *dst, const float *src, int64_t gz, int64_t sz, int64_t gyx,
                           int64_t D)
{
    memcpy(dst, src, (size_t)D * sizeof *dst);
    for (int64_t z = 0; z < gz; z++) {
        double f = ((double)z + 0.5) * (double)sz / (double)gz - 0.5;
        if (f < 0)
            f = 0;
        int64_t z0 = (int64_t)f, z1 = z0 + 1 < sz ? z0 + 1 : z0;
        float w = (float)(f - (double)z0);
        for (int64_t n = 0; n < gyx * D; n++) {
            float a = src[D + z0 * gyx * D + n], b = src[D + z1 * gyx * D + n];
            dst[D + z * gyx * D + n] = a + w * (b - a);
        }
    }
}

/* How parameter p is made from a source tensor of shape *in (0: copied,
 * 1: patch z-expanded by *r, 2: position z-resampled from *r planes), or an
 * ENC_SHAPE message. */
static int init_fit(const trn_trainer *t, const enc_param *p, const enc_st_info *in, int *how,
                    int *r, const char *file, char *errbuf, size_t errlen)
{
    int same = in->rank == p->rank;
    for (int k = 0; same && k < p->rank; k++)
        same = in->shape[k] == p->shape[k];
    *how = 0;
    if (same)
        return ENC_OK;
    const int64_t *s = in->shape, *d = p->shape;
    if (!strcmp(p->name, "vision.patch3d.weight") && p->rank == 5 && in->rank == 5 &&
        s[0] == d[0] && s[1] == d[1] && s[3] == d[3] && s[4] == d[4] && s[2] > 0 &&
        d[2] % s[2] == 0) {
        *how = 1;
        *r = (int)(d[2] / s[2]);
        return ENC_OK;
    }
    int64_t gyx = !t->has_vol || t->gv.patch[1] <= 0 || t->gv.patch[2] <= 0
                      ? 0
                      : (int64_t)(t->gv.size[1] / t->gv.patch[1]) * (t->gv.size[2] / t->gv.patch[2]);
    if (!strcmp(p->name, "vision.pos3d") && p->rank == 3 && in->rank == 3 && s[0] == d[0] &&
        s[2] == d[2] && gyx > 0 && (d[1] - 1) % gyx == 0 && s[1] > 1 && (s[1] - 1) % gyx == 0) {
        *how = 2;
        *r = (int)((s[1] - 1) / gyx);
        return ENC_OK;
    }
    char a[96], b[96];
    shape_str(s, in->rank, a, sizeof a);
    shape_str(d, p->rank, b, sizeof b);
    return util_errf(errbuf, errlen, ENC_SHAPE, "%s: tensor %s has shape %s, the config needs %s",
                     file, p->name, a, b);
}

int trn_trainer_init_from(trn_trainer *t, const char *path, char *errbuf, size_t errlen)
{
    if (t->started)
        return util_errf(errbuf, errlen, ENC_INVAL, "initial weights are set before the first step");
    char *file = NULL;
    size_t len = strlen(path);
    if (len >= 12 && !strcmp(path + len - 12, ".safetensors"))
        file = strdup(path);
    else if (asprintf(&file, "%s/model.safetensors", path) < 0)
        file = NULL;
    if (!file)
        return util_errf(errbuf, errlen, ENC_NOMEM, "out of memory");
    enc_st *st = NULL;
    int rc = enc_st_open(file, &st, errbuf, errlen);
    size_t count = trn_adamw_count(t->opt);
    float *P = rc ? NULL : malloc(count * sizeof *P);
    if (!rc && !P)
        rc = util_errf(errbuf, errlen, ENC_NOMEM, "out of memory");
    if (rc)
        goto done;
    memcpy(P, t->P, count * sizeof *P);
    /* every model parameter, then the log temperature (optional) */
    for (size_t i = 0; i <= t->nparam; i++) {
        enc_param p;
        if (i < t->nparam)
            enc_model_param(t->m, i, &p);
        else
            p = (enc_param){.name = "logit_scale", .rank = 1, .shape = {1}, .count = 1};
        enc_st_info in;
        if (enc_st_info_get(st, p.name, &in)) {
            if (i == t->nparam)
                break;
            rc = util_errf(errbuf, errlen, ENC_MISSING, "%s: no tensor %s (the config needs it)",
                           file, p.name);
            goto done;
        }
        int how, r = 1;
        const float *src;
        if ((rc = init_fit(t, &p, &in, &how, &r, file, errbuf, errlen)) ||
            (rc = enc_st_get(st, p.name, in.rank, in.shape, &src, errbuf, errlen)))
            goto done;
        float *dst = P + trn_adamw_offset(t->opt, i);
        if (how == 1)
            expand_patch_z(dst, src, p.shape, r);
        else if (how == 2) {
            int64_t gyx = (in.shape[1] - 1) / r; /* r: the source's z planes */
            resample_pos_z(dst, src, (p.shape[1] - 1) / gyx, r, gyx, p.shape[2]);
        }
        else
            memcpy(dst, src, p.count * sizeof *dst);
    }
    memcpy(t->P, P, count * sizeof *P);
    for (size_t i = 0; i < t->nparam; i++) {
        enc_param p;
        enc_model_param(t->m, i, &p);
        memcpy(enc_model_param_mut(t->m, i), t->P + trn_adamw_offset(t->opt, i),
               p.count * sizeof(float));
    }
done:
    free(P);
    enc_st_close(st);
    free(file);
    return rc;
}

int trn_trainer_save(const trn_trainer *t, const char *dir, char *errbuf, size_t errlen)
{
    size_t n = t->nparam + 1;
    const char **names = calloc(n, sizeof *names);
    int *ranks = calloc(n, sizeof *ranks);
    int64_t(*shapes)[ENC_ST_MAX_RANK] = calloc(n, sizeof *shapes);
    const float **data = calloc(n, sizeof *data);
    char *path = NULL, *text = NULL;
    cJSON *cfg = NULL;
    int rc = ENC_NOMEM;
    if (!names || !ranks || !shapes || !data ||
        asprintf(&path, "%s/model.safetensors", dir) < 0) {
        path = NULL;
        rc = util_errf(errbuf, errlen, ENC_NOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < t->nparam; i++) {
        enc_param p;
        enc_model_param(t->m, i, &p);
        names[i] = p.name;
        ranks[i] = p.rank;
        for (int k = 0; k < p.rank && k < ENC_ST_MAX_RANK; k++)
            shapes[i][k] = p.shape[k];
        data[i] = t->P + trn_adamw_offset(t->opt, i);
    }
    /* Modality means belong to the weights they were measured on: new
     * weights make any in dir stale, so they go first ('medsem calibrate'
     * measures them again). */
    char *mpath = NULL;
    if (asprintf(&mpath, "%s/%s", dir, ENC_MEANS_FILE) < 0) {
        rc = util_errf(errbuf, errlen, ENC_NOMEM, "out of memory");
        goto done;
    }
    if (unlink(mpath) && errno != ENOENT) {
        rc = util_errf(errbuf, errlen, ENC_IO, "%s: %s (it belongs to the old weights)", mpath,
                       strerror(errno));
        free(mpath);
        goto done;
    }
    free(mpath);
    size_t ls_off = trn_adamw_offset(t->opt, t->nparam);
    names[t->nparam] = "logit_scale";
    ranks[t->nparam] = 1;
    shapes[t->nparam][0] = 1;
    data[t->nparam] = t->P + ls_off;
    if ((rc = enc_st_write(path, n, names, ranks, (const int64_t(*)[ENC_ST_MAX_RANK])shapes,
                           data, errbuf, errlen)))
        goto done;
    cfg = cJSON_Parse(t->config);
    if (!cfg) {
        rc = util_errf(errbuf, errlen, ENC_FORMAT, "the config is not JSON");
        goto done;
    }
    cJSON_DeleteItemFromObjectCaseSensitive(cfg, "logit_scale");
    cJSON_AddNumberToObject(cfg, "logit_scale", (double)t->P[ls_off]);
    text = cJSON_Print(cfg);
    free(path);
    if (!text || asprintf(&path, "%s/config.json", dir) < 0) {
        path = NULL;
        rc = util_errf(errbuf, errlen, ENC_NOMEM, "out of memory");
        goto done;
    }
    size_t tl = strlen(text);
    char *withnl = malloc(tl + 2);
    if (!withnl) {
        rc = util_errf(errbuf, errlen, ENC_NOMEM, "out of memory");
        goto done;
    }
    memcpy(withnl, text, tl);
    withnl[tl] = '\n';
    withnl[tl + 1] = 0;
    const char *what = NULL;
    int e = util_write_file_atomic(path, withnl, tl + 1, &what);
    rc = e ? util_errf(errbuf, errlen, e == ENOMEM ? ENC_NOMEM : ENC_IO, "%s: %s: %s", path, what,
                       strerror(e))
           : ENC_OK;
    free(withnl);
done:
    cJSON_Delete(cfg);
    free(text);
    free(path);
    free(names);
    free(ranks);
    free(shapes);
    free(data);
    return rc;
}

/* ---- report finding tags ------------------------------------------------------------ */

enum { F_NODULE = 1, F_MASS, F_EFFUSION, F_PTX, F_CONS, F_CARDIO, F_EMPH };
enum { L_RUL = 0, L_RML, L_RLL, L_LUL, L_LLL, L_RIGHT, L_LEFT, L_BILAT = 100 };

static const struct {
    const char *word; /* matched at the start of a word */
    int finding;
} FINDING_WORDS[] = {
    {"nodul", F_NODULE},        {"mass", F_MASS},
    {"effusion", F_EFFUSION},   {"pleural fluid", F_EFFUSION},
    {"pneumothora", F_PTX},     {"consolidat", F_CONS},
    {"airspace opacit", F_CONS}, {"airspace disease", F_CONS},
    {"cardiomegaly", F_CARDIO}, {"emphysem", F_EMPH},
    {"bulla", F_EMPH},          {"hyperinflat", F_EMPH},
};

/* Longest first, so "right upper lobe" wins over "right". */
static const struct {
    const char *word;
    int loc;
} LOC_WORDS[] = {
    {"right upper lobe", L_RUL},   {"right upper lung", L_RUL},  {"right middle lobe", L_RML},
    {"right mid lung", L_RML},     {"right lower lobe", L_RLL},  {"right lower lung", L_RLL},
    {"right lung base", L_RLL},    {"right base", L_RLL},        {"left upper lobe", L_LUL},
    {"left upper lung", L_LUL},    {"left lower lobe", L_LLL},   {"left lower lung", L_LLL},
    {"left lung base", L_LLL},     {"left base", L_LLL},         {"bilateral", L_BILAT},
    {"right", L_RIGHT},            {"left", L_LEFT},
};

static const char *const NEG_CUES[] = {"no", "not", "without", "negative for", "free of",
                                       "absence of"};
static const char *const SCOPE_ENDS[] = {"but", "however"};

/* Whether s[i..] starts word w (w may hold spaces) at a word boundary. */
static int word_at(const char *s, size_t i, size_t n, const char *w, int whole)
{
    size_t l = strlen(w);
    if (i + l > n || memcmp(s + i, w, l))
        return 0;
    if (i > 0 && isalnum((unsigned char)s[i - 1]))
        return 0;
    if (whole && i + l < n && isalnum((unsigned char)s[i + l]))
        return 0;
    return 1;
}

static int add_tag(int32_t *tags, int n, int cap, int32_t tag)
{
    for (int i = 0; i < n; i++)
        if (tags[i] == tag)
            return n;
    if (n >= cap)
        return n;
    tags[n] = tag;
    return n + 1;
}

/* One sentence s[0..n), lower-cased: its positive findings and locations. */
static int sentence_tags(const char *s, size_t n, int32_t *tags, int nt, int cap, int *any)
{
    int found[16] = {0}, locs[8] = {0}, nloc = 0;
    int heart = 0;
    for (size_t i = 0; i < n; i++)
        if (word_at(s, i, n, "heart", 0) || word_at(s, i, n, "cardiac", 0))
            heart = 1;
    for (size_t i = 0; i < n; i++) {
        int f = 0;
        for (size_t w = 0; w < sizeof FINDING_WORDS / sizeof *FINDING_WORDS && !f; w++)
            if (word_at(s, i, n, FINDING_WORDS[w].word, 0))
                f = FINDING_WORDS[w].finding;
        if (!f && heart && word_at(s, i, n, "enlarge", 0))
            f = F_CARDIO;
        if (!f)
            continue;
        /* negated when a cue comes before it in the sentence with no scope
         * end ("but", "however") in between */
        int neg = 0;
        for (size_t j = 0; j < i; j++) {
            for (size_t c = 0; c < sizeof NEG_CUES / sizeof *NEG_CUES; c++)
                if (word_at(s, j, n, NEG_CUES[c], 1))
                    neg = 1;
            for (size_t c = 0; c < sizeof SCOPE_ENDS / sizeof *SCOPE_ENDS; c++)
                if (word_at(s, j, n, SCOPE_ENDS[c], 1))
                    neg = 0;
        }
        if (!neg)
            found[f] = 1;
    }
    for (size_t i = 0; i < n;) {
        size_t adv = 1;
        for (size_t w = 0; w < sizeof LOC_WORDS / sizeof *LOC_WORDS; w++)
            if (word_at(s, i, n, LOC_WORDS[w].word, 1)) {
                int l = LOC_WORDS[w].loc;
                if (l == L_BILAT) {
                    if (nloc < 7)
                        locs[nloc++] = L_RIGHT;
                    l = L_LEFT;
                }
                if (nloc < 8)
                    locs[nloc++] = l;
                adv = strlen(LOC_WORDS[w].word);
                break;
            }
        i += adv;
    }
    for (int f = 1; f <= F_EMPH; f++) {
        if (!found[f])
            continue;
        *any = 1;
        nt = add_tag(tags, nt, cap, f);
        /* cardiomegaly and emphysema have one place each: no location tag */
        if (f == F_CARDIO || f == F_EMPH)
            continue;
        for (int l = 0; l < nloc; l++)
            nt = add_tag(tags, nt, cap, 8 + 16 * f + locs[l]);
    }
    return nt;
}

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

int trn_report_tags(const char *text, int32_t *tags, int cap)
{
    char buf[1024];
    int nt = 0, any = 0;
    size_t n = 0;
    for (const char *p = text;; p++) {
        int end = !*p || *p == ';' || *p == '\n' ||
                  (*p == '.' && (!p[1] || isspace((unsigned char)p[1])));
        if (!end && n < sizeof buf - 1) {
            buf[n++] = (char)tolower((unsigned char)*p);
            continue;
        }
        if (end) {
            nt = sentence_tags(buf, n, tags, nt, cap, &any);
            n = 0;
            if (!*p)
                break;
        }
    }
    if (!any)
        nt = add_tag(tags, nt, cap, 0);
    qsort(tags, (size_t)nt, sizeof *tags, cmp_i32);
    return nt;
}

/* ---- query-like phrases from a report ---------------------------------------------- */

static const char *const FINDING_NAME[] = {"",          "nodule",        "mass",
                                           "pleural effusion", "pneumothorax", "consolidation",
                                           "cardiomegaly", "emphysema"};
static const char *const LOC_NAME[] = {"right upper lobe", "right middle lobe", "right lower lobe",
                                       "left upper lobe",  "left lower lobe",   "right",
                                       "left"};
static const char *const NORMAL_PHRASES[] = {"Normal.", "Normal study.", "No acute findings.",
                                             "No acute abnormality."};

#define PHRASE_MAX_SENTENCES 48

/* Appends s[0..n) to out (length *len, capacity cap) with a space before it
 * when out is not empty; 0 when it does not fit (out unchanged). */
static int phrase_put(char *out, size_t cap, size_t *len, const char *s, size_t n)
{
    size_t sep = *len ? 1 : 0;
    if (*len + sep + n + 1 > cap)
        return 0;
    if (sep)
        out[(*len)++] = ' ';
    memcpy(out + *len, s, n);
    *len += n;
    out[*len] = '\0';
    return 1;
}

/* The same for a sentence, with its period. */
static int phrase_sentence(char *out, size_t cap, size_t *len, const char *s, size_t n)
{
    if (*len + 1 + n + 2 > cap || !phrase_put(out, cap, len, s, n))
        return 0;
    out[(*len)++] = '.';
    out[*len] = '\0';
    return 1;
}

size_t trn_report_phrase(const char *report, uint64_t seed, char *out, size_t cap)
{
    if (cap == 0)
        return 0;
    out[0] = '\0';
    if (!report)
        report = "";
    uint64_t st = seed;
    /* the sentences, as trn_report_tags splits them, each without a section
     * header ("Findings:") or a list number, with its own final period */
    struct {
        const char *p;
        size_t n;
        int pos;
    } sen[PHRASE_MAX_SENTENCES];
    int ns = 0, npos = 0;
    for (const char *p = report, *b = report; ns < PHRASE_MAX_SENTENCES; p++) {
        int end = !*p || *p == ';' || *p == '\n' ||
                  (*p == '.' && (!p[1] || isspace((unsigned char)p[1])));
        if (!end)
            continue;
        const char *s = b, *e = p;
        b = p + 1;
        const char *colon = memchr(s, ':', (size_t)(e - s));
        if (colon && colon - s < 24)
            s = colon + 1;
        while (s < e && (isspace((unsigned char)*s) || isdigit((unsigned char)*s)))
            s++;
        while (e > s && isspace((unsigned char)e[-1]))
            e--;
        size_t n = (size_t)(e - s), letters = 0;
        for (size_t i = 0; i < n; i++)
            letters += isalpha((unsigned char)s[i]) != 0;
        if (letters >= 3 && n < 512) {
            char buf[520];
            memcpy(buf, s, n);
            buf[n] = '\0';
            int32_t tg[TRN_REPORT_MAX_TAGS];
            int nt = trn_report_tags(buf, tg, TRN_REPORT_MAX_TAGS);
            sen[ns].p = s;
            sen[ns].n = n;
            sen[ns].pos = nt > 0 && tg[0] != 0;
            npos += sen[ns].pos;
            ns++;
        }
        if (!*p)
            break;
    }
    size_t len = 0;
    uint64_t r = util_splitmix64(&st);
    if (npos == 0) {
        /* a normal report: one of its own sentences, or a normal phrase */
        if (ns && (r & 1)) {
            int i = (int)((r >> 1) % (uint64_t)ns);
            phrase_sentence(out, cap, &len, sen[i].p, sen[i].n);
        }
        if (!len) {
            const char *ph = NORMAL_PHRASES[(r >> 8) % (sizeof NORMAL_PHRASES / sizeof *NORMAL_PHRASES)];
            phrase_put(out, cap, &len, ph, strlen(ph));
        }
        return len;
    }
    if (r & 1) {
        /* a subset of the sentences that state a finding, in report order */
        uint64_t keep = util_splitmix64(&st);
        int any = 0;
        for (int i = 0, k = 0; i < ns; i++)
            if (sen[i].pos && ((keep >> (k++ % 64)) & 1))
                any = 1;
        int only = any ? -1 : (int)((r >> 1) % (uint64_t)npos);
        for (int i = 0, k = 0; i < ns; i++) {
            if (!sen[i].pos)
                continue;
            int take = only < 0 ? (int)((keep >> (k % 64)) & 1) : k == only;
            k++;
            if (take)
                phrase_sentence(out, cap, &len, sen[i].p, sen[i].n);
        }
        if (len)
            return len;
    }
    /* one positive finding by name, with or without one of its locations */
    int32_t tg[TRN_REPORT_MAX_TAGS];
    int nt = trn_report_tags(report, tg, TRN_REPORT_MAX_TAGS), nf = 0, f = 0;
    for (int i = 0; i < nt; i++)
        nf += tg[i] >= 1 && tg[i] <= F_EMPH;
    if (nf == 0)
        return len; /* cannot happen: npos > 0 means a positive finding */
    int want = (int)((r >> 1) % (uint64_t)nf);
    for (int i = 0; i < nt; i++)
        if (tg[i] >= 1 && tg[i] <= F_EMPH && want-- == 0)
            f = tg[i];
    int locs[TRN_REPORT_MAX_TAGS], nl = 0;
    for (int i = 0; i < nt; i++)
        if (tg[i] >= 8 + 16 * f && tg[i] < 8 + 16 * f + L_LEFT + 1)
            locs[nl++] = tg[i] - 8 - 16 * f;
    char buf[96];
    const char *fn = FINDING_NAME[f];
    uint64_t r2 = util_splitmix64(&st);
    if (nl && (r2 & 1)) {
        int l = locs[(r2 >> 1) % (uint64_t)nl];
        const char *ln = LOC_NAME[l];
        int side = l == L_RIGHT || l == L_LEFT, alt = (int)((r2 >> 16) & 1);
        if (side && !alt)
            snprintf(buf, sizeof buf, "%c%s %s.", toupper((unsigned char)ln[0]), ln + 1, fn);
        else if (side)
            snprintf(buf, sizeof buf, "%c%s on the %s.", toupper((unsigned char)fn[0]), fn + 1, ln);
        else if (!alt)
            snprintf(buf, sizeof buf, "%c%s in the %s.", toupper((unsigned char)fn[0]), fn + 1, ln);
        else
            snprintf(buf, sizeof buf, "%c%s %s.", toupper((unsigned char)ln[0]), ln + 1, fn);
    } else {
        snprintf(buf, sizeof buf, "%c%s.", toupper((unsigned char)fn[0]), fn + 1);
    }
    phrase_put(out, cap, &len, buf, strlen(buf));
    return len;
}
